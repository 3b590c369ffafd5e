package main

import (
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// The label sets the series carry (README "Alerts and dashboards"): the operator's per-CameraTuning
// gauges are labelled namespace and cameratuning by the operator itself (its ServiceMonitor
// honours them); the workers' series get the same two labels from the chart's PodMonitor, from
// the pod's namespace and app.kubernetes.io/instance. The operator's gauges are aggregated with
// max: each replica that led (one after another) leaves a series of its own.
const (
	camera = `namespace="$namespace", cameratuning="$cameratuning"`
	// The annotators serve every CameraTuning of their namespace with the same teacher.
	namespace = `namespace="$namespace", component="annotator"`
	rate      = "[$__rate_interval]"
)

// fleet: every CameraTuning at a glance, the shared annotators and the operator.
func fleet() *dashboard.DashboardBuilder {
	return base("edge-autotuner-fleet", "Edge AutoTuner / Fleet",
		"Every CameraTuning by phase, failures and drift, the teacher annotators' load and the operator.").
		WithRow(dashboard.NewRowBuilder("CameraTunings")).
		WithPanel(graph("CameraTunings by phase",
			"How many CameraTunings are in each phase (the leader's count).", "short",
			q(`sum by (phase) (autotuner_cameratunings)`, "{{phase}}")).
			Stacking(stackNormal())).
		WithPanel(graph("Failed and degraded",
			"CameraTunings Failed, and Degraded by reason: TrainingFailed, ModelRolledBack, ModelRefused... `kubectl describe cameratuning` says what to do.",
			"short",
			q(`count(autotuner_cameratuning_phase{phase="Failed"} == 1) or vector(0)`, "Failed"),
			q(`count by (reason) (autotuner_cameratuning_condition{type="Degraded", status="true"} == 1)`, "Degraded: {{reason}}"))).
		WithPanel(graph("Drift detected",
			"CameraTunings whose served student fell below spec.drift.minRelativeAccuracy: each retrains on what its camera shows now.",
			"short",
			q(`count(autotuner_cameratuning_condition{type="DriftDetected", status="true"} == 1) or vector(0)`, "drift detected"))).
		WithPanel(graph("Drift checks",
			"Drift checks per hour over the fleet, by outcome (checked; no_samples: none labelled yet; no_reference: the model has no AP@0.5 from its promotion; failed).",
			"short",
			q(`sum by (outcome) (rate(autotuner_drift_checks_total`+rate+`)) * 3600`, "{{outcome}}"))).
		WithPanel(graph("Relative accuracy by camera",
			"The last drift check of each CameraTuning: AP@0.5 against the teacher over the model's AP@0.5 at promotion (1 = as good as when deployed).",
			"percentunit",
			q(`max by (namespace, cameratuning) (autotuner_cameratuning_drift_relative_accuracy)`, "{{namespace}}/{{cameratuning}}"))).
		WithRow(dashboard.NewRowBuilder("Teacher annotators")).
		WithPanel(graph("Annotator requests by code",
			"Requests to the teacher's HTTP API; 429: the queue was full and the capture worker retries later.", "reqps",
			q(`sum by (code) (rate(autotuner_annotator_requests_total`+rate+`))`, "{{code}}"))).
		WithPanel(graph("Annotator saturation",
			"Share of requests refused with 429, and the requests queued and in flight.", "short",
			q(`sum(rate(autotuner_annotator_requests_total{code="429"}`+rate+`)) / sum(rate(autotuner_annotator_requests_total`+rate+`))`, "429 share"),
			q(`sum(autotuner_annotator_queue_depth)`, "queued"),
			q(`sum(autotuner_annotator_requests_in_flight)`, "in flight"))).
		WithPanel(graph("Annotator latency",
			"Request and teacher inference time, 50th and 95th percentile.", "s",
			q(`histogram_quantile(0.5, sum by (le) (rate(autotuner_annotator_request_duration_seconds_bucket`+rate+`)))`, "request p50"),
			q(`histogram_quantile(0.95, sum by (le) (rate(autotuner_annotator_request_duration_seconds_bucket`+rate+`)))`, "request p95"),
			q(`histogram_quantile(0.95, sum by (le) (rate(autotuner_annotator_inference_duration_seconds_bucket`+rate+`)))`, "inference p95"))).
		WithPanel(graph("Images labelled",
			"Crops and frames the teachers labelled per second.", "short",
			q(`sum(rate(autotuner_annotator_images_total`+rate+`))`, "images/s"))).
		WithRow(dashboard.NewRowBuilder("Operator")).
		WithPanel(number("Leader",
			"Replicas holding the leader Lease: 1 in a healthy install, 0 means nothing reconciles.", "short",
			q(`sum(autotuner_operator_leader)`, "leaders"))).
		WithPanel(graph("Reconciliations",
			"Reconciliations per second, failures by kind of error, and failed watches by resource (the API server out of reach).", "ops",
			q(`sum(rate(autotuner_operator_reconciliations_total`+rate+`))`, "reconciliations"),
			q(`sum by (error) (rate(autotuner_operator_reconcile_errors_total`+rate+`))`, "error: {{error}}"),
			q(`sum by (resource) (rate(autotuner_operator_watch_errors_total`+rate+`))`, "watch errors: {{resource}}"))).
		WithPanel(graph("Reconciliation duration",
			"50th and 95th percentile.", "s",
			q(`histogram_quantile(0.5, sum by (le) (rate(autotuner_operator_reconcile_duration_seconds_bucket`+rate+`)))`, "p50"),
			q(`histogram_quantile(0.95, sum by (le) (rate(autotuner_operator_reconcile_duration_seconds_bucket`+rate+`)))`, "p95")))
}

// camera: one CameraTuning, from frames to drift.
func cameraDashboard() *dashboard.DashboardBuilder {
	return base("edge-autotuner-camera", "Edge AutoTuner / Camera",
		"One CameraTuning: dataset progress, capture, training and models, drift and edge inference.").
		WithVariable(labelVariable("namespace", "Namespace",
			`label_values(autotuner_cameratuning_phase, namespace)`)).
		WithVariable(labelVariable("cameratuning", "CameraTuning",
			`label_values(autotuner_cameratuning_phase{namespace="$namespace"}, cameratuning)`)).
		WithRow(dashboard.NewRowBuilder("Dataset")).
		WithPanel(graph("Dataset against its target",
			"Annotated images by split, and spec.dataset.trainSize and evalSize: the round trains when train reaches its target or at the deadline.",
			"short",
			q(`max by (split) (autotuner_dataset_images{`+camera+`})`, "{{split}}"),
			q(`max by (split) (autotuner_cameratuning_dataset_target_images{`+camera+`})`, "target {{split}}"))).
		WithPanel(number("Time to the deadline",
			"When the round trains even short of its target (spec.dataset.deadline after the round began).", "s",
			q(`max(autotuner_cameratuning_deadline_timestamp_seconds{`+camera+`}) - time()`, "deadline"))).
		WithPanel(number("Phase", "The phase the CameraTuning is in.", "short",
			q(`max by (phase) (autotuner_cameratuning_phase{`+camera+`}) == 1`, "{{phase}}")).
			TextMode(textName())).
		WithRow(dashboard.NewRowBuilder("Capture")).
		WithPanel(graph("Frames by outcome",
			"Decoded, examined, skipped without motion or over the upload budget, dropped by a slow pipeline, corrupt.", "fps",
			q(`sum by (outcome) (rate(autotuner_capture_frames_total{`+camera+`}`+rate+`))`, "{{outcome}}"))).
		WithPanel(graph("Upload: crops against whole frames",
			"JPEG bytes sent to the teacher as motion crops, and what the same frames would have cost whole.", "Bps",
			q(`sum by (kind) (rate(autotuner_capture_upload_bytes_total{`+camera+`}`+rate+`))`, "{{kind}}"))).
		WithPanel(graph("Upload saved by crops",
			"The share of the teacher's upload that sending motion crops instead of whole frames saves.", "percentunit",
			q(`1 - sum(rate(autotuner_capture_upload_bytes_total{`+camera+`, kind="crops"}`+rate+`)) / sum(rate(autotuner_capture_upload_bytes_total{`+camera+`, kind="full_frames"}`+rate+`))`, "saved"))).
		WithPanel(graph("Annotation",
			"Frames labelled, and failures by kind (refused: the annotator said 429; unavailable: it could not be reached).", "short",
			q(`sum(rate(autotuner_capture_annotated_total{`+camera+`}`+rate+`))`, "labelled/s"),
			q(`sum by (kind) (rate(autotuner_capture_annotate_errors_total{`+camera+`}`+rate+`))`, "failed/s: {{kind}}"))).
		WithPanel(graph("Annotators of the namespace",
			"The teacher's API as this camera's annotator serves it (annotators are shared by the CameraTunings of a namespace with the same teacher): latency, queue and 429s.",
			"short",
			q(`histogram_quantile(0.95, sum by (le) (rate(autotuner_annotator_request_duration_seconds_bucket{`+namespace+`}`+rate+`)))`, "request p95 (s)"),
			q(`sum(autotuner_annotator_queue_depth{`+namespace+`})`, "queued"),
			q(`sum(rate(autotuner_annotator_requests_total{`+namespace+`, code="429"}`+rate+`)) or vector(0)`, "429/s"))).
		WithPanel(graph("Spool",
			"Frames waiting on the node for the teacher, and those dropped or superseded because the spool was full.", "short",
			q(`sum(autotuner_capture_spool_entries{`+camera+`})`, "waiting"),
			q(`sum(increase(autotuner_capture_spool_dropped_total{`+camera+`}`+rate+`))`, "dropped"),
			q(`sum(increase(autotuner_capture_spool_superseded_total{`+camera+`}`+rate+`))`, "superseded"))).
		WithRow(dashboard.NewRowBuilder("Training and models")).
		WithPanel(graph("mAP by model",
			"COCO mAP@[.5:.95] on the eval split: the current model, the model it was trained from (baseline), the candidate being judged and the previous one (kept for rollback).",
			"percentunit",
			q(`max by (model) (autotuner_cameratuning_model_map{`+camera+`})`, "{{model}}"))).
		WithPanel(graph("Training and evaluation",
			"1 while a training Job runs or its candidate is judged: each step's width is the Job's duration; the model version steps up on promotion.",
			"short",
			q(`max by (phase) (autotuner_cameratuning_phase{`+camera+`, phase=~"Training|Evaluating|Retraining"})`, "{{phase}}"),
			q(`max(autotuner_cameratuning_model_version{`+camera+`})`, "model version"))).
		WithRow(dashboard.NewRowBuilder("Drift")).
		WithPanel(graph("Relative accuracy against its threshold",
			"The served student's AP@0.5 against the teacher's labels on the latest drift samples, over its AP@0.5 at promotion; below spec.drift.minRelativeAccuracy the loop retrains.",
			"percentunit",
			q(`max(autotuner_cameratuning_drift_relative_accuracy{`+camera+`})`, "relative accuracy"),
			q(`max(autotuner_cameratuning_drift_min_relative_accuracy{`+camera+`})`, "threshold")).
			Thresholds(redBelow(0.8))).
		WithPanel(graph("Drift checks",
			"Checks per hour by outcome (checked, no_samples, no_reference), and how long one takes.", "short",
			q(`sum by (outcome) (increase(autotuner_drift_checks_total{`+camera+`}[1h]))`, "{{outcome}}"),
			q(`sum(rate(autotuner_drift_check_duration_seconds_sum{`+camera+`}`+rate+`)) / sum(rate(autotuner_drift_check_duration_seconds_count{`+camera+`}`+rate+`))`, "seconds per check"))).
		WithRow(dashboard.NewRowBuilder("Edge inference")).
		WithPanel(graph("Frames offered to the student",
			"Inferred, skipped by spec.inference.maxFramesPerSecond, dropped (inference was behind), no model yet, error.", "fps",
			q(`sum by (outcome) (rate(autotuner_edge_frames_total{`+camera+`}`+rate+`))`, "{{outcome}}"))).
		WithPanel(graph("Inference latency",
			"Time to detect the objects of one frame on the camera's node (preprocessing, model, decoding, NMS).", "s",
			q(`histogram_quantile(0.5, sum by (le) (rate(autotuner_edge_inference_duration_seconds_bucket{`+camera+`}`+rate+`)))`, "p50"),
			q(`histogram_quantile(0.95, sum by (le) (rate(autotuner_edge_inference_duration_seconds_bucket{`+camera+`}`+rate+`)))`, "p95"))).
		WithPanel(graph("Detections by class",
			"Objects detected per second, and in view at the last frame.", "short",
			q(`sum by (class) (rate(autotuner_edge_detections_total{`+camera+`}`+rate+`))`, "{{class}}/s"),
			q(`sum by (class) (autotuner_edge_objects{`+camera+`})`, "{{class}} in view"))).
		WithPanel(graph("Serving",
			"The model version served, model loads by outcome, and MQTT messages by outcome.", "short",
			q(`max by (version) (autotuner_edge_model_info{`+camera+`})`, "serving v{{version}}"),
			q(`sum by (outcome) (increase(autotuner_edge_model_loads_total{`+camera+`}`+rate+`))`, "loads: {{outcome}}"),
			q(`sum by (outcome) (rate(autotuner_edge_mqtt_messages_total{`+camera+`}`+rate+`))`, "mqtt/s: {{outcome}}")))
}

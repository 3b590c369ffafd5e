//! The capture worker's Prometheus metrics (`autotuner_capture_*`).

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Frames by what happened to them: decoded, examined, selected, drift, no_motion, budget,
    /// dropped (the pipeline fell behind a live stream), corrupt (skipped).
    pub frames: IntCounterVec,
    /// Bytes of JPEG: `crops` (sent to the teacher) and `full_frames` (had whole frames been sent).
    pub upload_bytes: IntCounterVec,
    pub annotated: IntCounter,
    pub annotate_errors: IntCounterVec,
    pub reconnects: IntCounter,
    pub spool_entries: IntGauge,
    pub spool_dropped: IntCounter,
    pub spool_superseded: IntCounter,
    pub dataset_images: IntGaugeVec,
    /// Samples ever stored by split, those a rolling dataset replaced since included.
    pub dataset_stored: IntCounterVec,
    /// Edge inference: frames by outcome (inferred, dropped: inference was behind a live stream,
    /// skipped: above the configured rate, no_model, error).
    pub edge_frames: IntCounterVec,
    /// Detections published, by class.
    pub detections: IntCounterVec,
    /// Objects in view at the last inferred frame, by class (the people-counting gauge).
    pub objects: IntGaugeVec,
    pub inference_seconds: Histogram,
    /// 1 for the model serving now, labelled with its version and URI.
    pub model_info: IntGaugeVec,
    /// Model switches by outcome (loaded, refused).
    pub model_loads: IntCounterVec,
    /// MQTT messages by outcome (published, dropped: the broker was away or slow).
    pub mqtt_messages: IntCounterVec,
    pub mqtt_connected: IntGauge,
    /// Drift checks by outcome (checked, no_samples: no labelled drift sample yet, no_reference:
    /// the served model has no AP@0.5 from its promotion, failed).
    pub drift_checks: IntCounterVec,
    /// The last check's accuracy relative to the model's at promotion (1: as good).
    pub drift_relative_accuracy: Gauge,
    /// The last check's AP@0.5 against the teacher, of the `current` model and, during a new
    /// model's probation, of the `previous` one on the same samples.
    pub drift_ap50: GaugeVec,
    pub drift_check_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let frames = IntCounterVec::new(
            Opts::new("autotuner_capture_frames_total", "Frames by outcome."),
            &["outcome"],
        )
        .expect("metric");
        let upload_bytes = IntCounterVec::new(
            Opts::new(
                "autotuner_capture_upload_bytes_total",
                "JPEG bytes of the crops sent to the teacher, and of the same frames whole.",
            ),
            &["kind"],
        )
        .expect("metric");
        let annotated = IntCounter::new(
            "autotuner_capture_annotated_total",
            "Selected frames the teacher labelled.",
        )
        .expect("metric");
        let annotate_errors = IntCounterVec::new(
            Opts::new(
                "autotuner_capture_annotate_errors_total",
                "Failed labelling attempts by kind.",
            ),
            &["kind"],
        )
        .expect("metric");
        let reconnects = IntCounter::new(
            "autotuner_capture_reconnects_total",
            "Reconnections to the stream.",
        )
        .expect("metric");
        let spool_entries = IntGauge::new(
            "autotuner_capture_spool_entries",
            "Selected frames waiting for the teacher.",
        )
        .expect("metric");
        let spool_dropped = IntCounter::new(
            "autotuner_capture_spool_dropped_total",
            "Spooled frames dropped because the spool was full (or damaged).",
        )
        .expect("metric");
        let spool_superseded = IntCounter::new(
            "autotuner_capture_spool_superseded_total",
            "Spooled frames replaced by newer ones of their kind before the teacher labelled them: \
             labelling lags behind selection, and more waited than the rolling dataset keeps.",
        )
        .expect("metric");
        let dataset_images = IntGaugeVec::new(
            Opts::new(
                "autotuner_capture_dataset_images",
                "Images in the dataset by split.",
            ),
            &["split"],
        )
        .expect("metric");
        let dataset_stored = IntCounterVec::new(
            Opts::new(
                "autotuner_capture_dataset_images_stored_total",
                "Images stored in the dataset by split, including those newer ones have replaced.",
            ),
            &["split"],
        )
        .expect("metric");
        let edge_frames = IntCounterVec::new(
            Opts::new(
                "autotuner_edge_frames_total",
                "Frames offered to the student on the camera's node, by outcome.",
            ),
            &["outcome"],
        )
        .expect("metric");
        let detections = IntCounterVec::new(
            Opts::new(
                "autotuner_edge_detections_total",
                "Objects the student detected, by class.",
            ),
            &["class"],
        )
        .expect("metric");
        let objects = IntGaugeVec::new(
            Opts::new(
                "autotuner_edge_objects",
                "Objects in view at the last inferred frame, by class.",
            ),
            &["class"],
        )
        .expect("metric");
        let inference_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "autotuner_edge_inference_duration_seconds",
                "Time to detect the objects of one frame (preprocessing, model, decoding, NMS).",
            )
            .buckets(vec![
                0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0,
            ]),
        )
        .expect("metric");
        let model_info = IntGaugeVec::new(
            Opts::new(
                "autotuner_edge_model_info",
                "The student serving detections: 1, labelled with its version (iteration) and URI.",
            ),
            &["version", "uri"],
        )
        .expect("metric");
        let model_loads = IntCounterVec::new(
            Opts::new(
                "autotuner_edge_model_loads_total",
                "Models the edge switched to (loaded) or refused.",
            ),
            &["outcome"],
        )
        .expect("metric");
        let mqtt_messages = IntCounterVec::new(
            Opts::new(
                "autotuner_edge_mqtt_messages_total",
                "Detection messages for the MQTT broker, by outcome (published, dropped).",
            ),
            &["outcome"],
        )
        .expect("metric");
        let mqtt_connected = IntGauge::new(
            "autotuner_edge_mqtt_connected",
            "1 while connected to the MQTT broker.",
        )
        .expect("metric");
        let drift_checks = IntCounterVec::new(
            Opts::new(
                "autotuner_drift_checks_total",
                "Drift checks of the served student against the teacher's labels, by outcome.",
            ),
            &["outcome"],
        )
        .expect("metric");
        let drift_relative_accuracy = Gauge::new(
            "autotuner_drift_relative_accuracy",
            "The served student's AP@0.5 against the teacher on the latest drift samples, divided by its AP@0.5 at promotion.",
        )
        .expect("metric");
        let drift_ap50 = GaugeVec::new(
            Opts::new(
                "autotuner_drift_ap50",
                "AP@0.5 against the teacher on the latest drift samples: the current model, and the previous one during probation.",
            ),
            &["model"],
        )
        .expect("metric");
        let drift_check_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "autotuner_drift_check_duration_seconds",
                "Time of one drift check.",
            )
            .buckets(vec![0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
        )
        .expect("metric");
        for c in [
            Box::new(drift_checks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(drift_relative_accuracy.clone()),
            Box::new(drift_ap50.clone()),
            Box::new(drift_check_seconds.clone()),
            Box::new(frames.clone()),
            Box::new(upload_bytes.clone()),
            Box::new(annotated.clone()),
            Box::new(annotate_errors.clone()),
            Box::new(reconnects.clone()),
            Box::new(spool_entries.clone()),
            Box::new(spool_dropped.clone()),
            Box::new(spool_superseded.clone()),
            Box::new(dataset_images.clone()),
            Box::new(dataset_stored.clone()),
            Box::new(edge_frames.clone()),
            Box::new(detections.clone()),
            Box::new(objects.clone()),
            Box::new(inference_seconds.clone()),
            Box::new(model_info.clone()),
            Box::new(model_loads.clone()),
            Box::new(mqtt_messages.clone()),
            Box::new(mqtt_connected.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        // Every outcome the chart's dashboards and alerts read exists from the start, at 0: a
        // series that appears only with its first event plots as "no data", not as "none yet".
        for (counter, values) in [
            (
                &frames,
                &[
                    "decoded",
                    "examined",
                    "selected",
                    "drift",
                    "no_motion",
                    "budget",
                    "dropped",
                    "corrupt",
                    "invalid",
                ][..],
            ),
            (&upload_bytes, &["crops", "full_frames"]),
            (&annotate_errors, &["store", "refused", "unavailable"]),
            (&dataset_stored, &["train", "eval"]),
            (
                &edge_frames,
                &["inferred", "skipped", "dropped", "no_model", "error"],
            ),
            (&model_loads, &["loaded", "refused"]),
            (&mqtt_messages, &["published", "dropped"]),
            (
                &drift_checks,
                &["checked", "no_samples", "no_reference", "failed"],
            ),
        ] {
            for value in values {
                counter.with_label_values(&[value]);
            }
        }
        Self {
            registry,
            frames,
            upload_bytes,
            annotated,
            annotate_errors,
            reconnects,
            spool_entries,
            spool_dropped,
            spool_superseded,
            dataset_images,
            dataset_stored,
            edge_frames,
            detections,
            objects,
            inference_seconds,
            model_info,
            model_loads,
            mqtt_messages,
            mqtt_connected,
            drift_checks,
            drift_relative_accuracy,
            drift_ap50,
            drift_check_seconds,
        }
    }

    pub fn edge_frames(&self, outcome: &str) -> u64 {
        self.edge_frames.with_label_values(&[outcome]).get()
    }

    pub fn frames(&self, outcome: &str) -> u64 {
        self.frames.with_label_values(&[outcome]).get()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding");
        out
    }
}

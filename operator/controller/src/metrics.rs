//! Prometheus metrics, with the conventional `_total`, `_seconds` names.

use autotuner_api::{CameraTuning, CameraTuningStatus, Phase};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub reconciliations: IntCounter,
    pub failures: IntCounterVec,
    /// Failed watch requests by resource (the API server unreachable, a 410 Gone to relist
    /// after), each retried by its own watch.
    pub watch_errors: IntCounterVec,
    pub duration: Histogram,
    tunings: IntGaugeVec,
    dataset: IntGaugeVec,
    per_tuning: PerTuning,
    leader: IntGauge,
    /// Held by a render from its reset to its gather, so two scrapes at once (a pair of
    /// Prometheus replicas) never see each other's half-rebuilt gauges.
    rendering: Arc<Mutex<()>>,
}

/// Gauges of each CameraTuning's status, what the chart's alert rules read.
#[derive(Debug, Clone)]
struct PerTuning {
    /// 1 for the phase it is in.
    phase: IntGaugeVec,
    /// The round's training deadline.
    deadline: GaugeVec,
    /// 1 for each condition's status (true, false or unknown) and reason.
    condition: IntGaugeVec,
    /// `spec.dataset.trainSize` and `evalSize`: what the dashboards plot progress against.
    dataset_target: IntGaugeVec,
    /// mAP@[.5:.95] on the eval split of the current, candidate and previous model, and of the
    /// model the current one was trained from (`baseline`): before and after, per iteration.
    model_map: GaugeVec,
    /// The version (iteration) of the current model.
    model_version: IntGaugeVec,
    /// `status.lastDriftCheck.relativeAccuracy` and the `spec.drift.minRelativeAccuracy` it is
    /// held to.
    relative_accuracy: GaugeVec,
    min_relative_accuracy: GaugeVec,
}

impl PerTuning {
    fn new() -> Self {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).unwrap()
        };
        let float_gauge =
            |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels).unwrap();
        Self {
            phase: gauge(
                "autotuner_cameratuning_phase",
                "1 for the phase each CameraTuning is in",
                &["namespace", "cameratuning", "phase"],
            ),
            deadline: float_gauge(
                "autotuner_cameratuning_deadline_timestamp_seconds",
                "When the current round trains even short of dataset.trainSize",
                &["namespace", "cameratuning"],
            ),
            condition: gauge(
                "autotuner_cameratuning_condition",
                "1 for the status (true, false, unknown) and reason of each CameraTuning condition",
                &["namespace", "cameratuning", "type", "status", "reason"],
            ),
            dataset_target: gauge(
                "autotuner_cameratuning_dataset_target_images",
                "Images a round collects before training (spec.dataset.trainSize, evalSize), by split",
                &["namespace", "cameratuning", "split"],
            ),
            model_map: float_gauge(
                "autotuner_cameratuning_model_map",
                "COCO mAP@[.5:.95] on the eval split, by model (current, candidate, previous, and \
                 baseline: the model the current one was trained from)",
                &["namespace", "cameratuning", "model"],
            ),
            model_version: gauge(
                "autotuner_cameratuning_model_version",
                "The iteration that produced the current model",
                &["namespace", "cameratuning"],
            ),
            relative_accuracy: float_gauge(
                "autotuner_cameratuning_drift_relative_accuracy",
                "The last drift check's AP@0.5 against the teacher over the model's AP@0.5 at promotion",
                &["namespace", "cameratuning"],
            ),
            min_relative_accuracy: float_gauge(
                "autotuner_cameratuning_drift_min_relative_accuracy",
                "spec.drift.minRelativeAccuracy: below it the loop retrains",
                &["namespace", "cameratuning"],
            ),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.phase.clone()),
            Box::new(self.deadline.clone()),
            Box::new(self.condition.clone()),
            Box::new(self.dataset_target.clone()),
            Box::new(self.model_map.clone()),
            Box::new(self.model_version.clone()),
            Box::new(self.relative_accuracy.clone()),
            Box::new(self.min_relative_accuracy.clone()),
        ]
    }

    fn reset(&self) {
        self.phase.reset();
        self.deadline.reset();
        self.condition.reset();
        self.dataset_target.reset();
        self.model_map.reset();
        self.model_version.reset();
        self.relative_accuracy.reset();
        self.min_relative_accuracy.reset();
    }

    fn set(&self, tuning: &CameraTuning, status: &CameraTuningStatus) {
        let (ns, name) = (tuning.namespace().unwrap_or_default(), tuning.name_any());
        let (ns, name) = (ns.as_str(), name.as_str());
        let spec = &tuning.spec;
        for (split, target) in [
            ("train", spec.dataset.train_size),
            ("eval", spec.dataset.eval_size),
        ] {
            self.dataset_target
                .with_label_values(&[ns, name, split])
                .set(i64::from(target));
        }
        self.min_relative_accuracy
            .with_label_values(&[ns, name])
            .set(spec.drift.min_relative_accuracy);
        let models = [
            ("current", status.current_model.as_ref().map(|m| m.map)),
            ("candidate", status.candidate_model.as_ref().map(|m| m.map)),
            ("previous", status.previous_model.as_ref().map(|m| m.map)),
            (
                "baseline",
                status.current_model.as_ref().and_then(|m| m.baseline_map),
            ),
        ];
        for (model, map) in models {
            if let Some(map) = map {
                self.model_map.with_label_values(&[ns, name, model]).set(map);
            }
        }
        if let Some(current) = &status.current_model {
            self.model_version
                .with_label_values(&[ns, name])
                .set(i64::from(current.version));
        }
        if let Some(check) = &status.last_drift_check {
            self.relative_accuracy
                .with_label_values(&[ns, name])
                .set(check.relative_accuracy);
        }
        let phase = format!("{:?}", status.phase.unwrap_or_default());
        self.phase.with_label_values(&[ns, name, phase.as_str()]).set(1);
        let deadline = status.dataset.as_ref().and_then(|d| d.deadline.as_ref());
        if let Some(deadline) = deadline {
            let seconds = deadline.0.as_millisecond() as f64 / 1000.0;
            self.deadline.with_label_values(&[ns, name]).set(seconds);
        }
        for condition in &status.conditions {
            let value = condition.status.to_ascii_lowercase();
            let labels: [&str; 5] = [ns, name, &condition.type_, &value, &condition.reason];
            self.condition.with_label_values(&labels).set(1);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounter::new(
            "autotuner_operator_reconciliations_total",
            "CameraTuning reconciliations",
        )
        .unwrap();
        let failures = IntCounterVec::new(
            Opts::new(
                "autotuner_operator_reconcile_errors_total",
                "Failed reconciliations, by kind of error",
            ),
            &["error"],
        )
        .unwrap();
        let watch_errors = IntCounterVec::new(
            Opts::new(
                "autotuner_operator_watch_errors_total",
                "Failed watch or list requests of the operator's caches, by resource; each is retried",
            ),
            &["resource"],
        )
        .unwrap();
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "autotuner_operator_reconcile_duration_seconds",
                "Duration of one reconciliation",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .unwrap();
        let tunings = IntGaugeVec::new(
            Opts::new("autotuner_cameratunings", "CameraTunings by phase"),
            &["phase"],
        )
        .unwrap();
        let dataset = IntGaugeVec::new(
            Opts::new(
                "autotuner_dataset_images",
                "Annotated images in each CameraTuning's dataset, by split",
            ),
            &["namespace", "cameratuning", "split"],
        )
        .unwrap();
        // At 0 from the start, so "no errors" plots as 0 rather than as no data.
        for label in crate::Error::METRIC_LABELS {
            failures.with_label_values(&[label]);
        }
        let per_tuning = PerTuning::new();
        let leader = IntGauge::new(
            "autotuner_operator_leader",
            "Whether this replica holds the leader Lease and reconciles (1) or stands by (0)",
        )
        .unwrap();
        for collector in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(watch_errors.clone()),
            Box::new(duration.clone()),
            Box::new(tunings.clone()),
            Box::new(dataset.clone()),
            Box::new(leader.clone()),
        ]
        .into_iter()
        .chain(per_tuning.collectors())
        {
            registry.register(collector).unwrap();
        }
        Self {
            registry,
            reconciliations,
            failures,
            watch_errors,
            duration,
            tunings,
            dataset,
            per_tuning,
            leader,
            rendering: Arc::default(),
        }
    }
}

impl Metrics {
    /// The text exposition, with the gauges recomputed from the cache (cheaper than keeping
    /// them current on every reconciliation, and never stale for deleted resources). `tunings`
    /// is the leader's cache: a standby replica has none, and reports no CameraTuning.
    pub fn render(&self, tunings: Option<&Store<CameraTuning>>) -> String {
        let _rendering = self.rendering.lock();
        self.tunings.reset();
        self.dataset.reset();
        self.per_tuning.reset();
        self.leader.set(i64::from(tunings.is_some()));
        const PHASES: [Phase; 8] = [
            Phase::Pending,
            Phase::Capturing,
            Phase::Training,
            Phase::Evaluating,
            Phase::Deployed,
            Phase::Monitoring,
            Phase::Retraining,
            Phase::Failed,
        ];
        for phase in PHASES {
            self.tunings
                .with_label_values(&[format!("{phase:?}").as_str()])
                .set(0);
        }
        for tuning in tunings.map(Store::state).unwrap_or_default() {
            let status = tuning.status.clone().unwrap_or_default();
            let (ns, name) = (tuning.namespace().unwrap_or_default(), tuning.name_any());
            self.per_tuning.set(&tuning, &status);
            let phase = status.phase.unwrap_or_default();
            self.tunings
                .with_label_values(&[format!("{phase:?}").as_str()])
                .inc();
            let dataset = status.dataset.unwrap_or_default();
            for (split, count) in [("train", dataset.train), ("eval", dataset.eval)] {
                self.dataset
                    .with_label_values(&[ns.as_str(), name.as_str(), split])
                    .set(i64::try_from(count.unwrap_or(0)).unwrap_or(i64::MAX));
            }
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exposition(status: serde_json::Value) -> String {
        let tuning = entrance();
        let status: CameraTuningStatus = serde_json::from_value(status).unwrap();
        let metrics = Metrics::default();
        metrics.per_tuning.set(&tuning, &status);
        TextEncoder::new()
            .encode_to_string(&metrics.registry.gather())
            .unwrap()
    }

    fn entrance() -> CameraTuning {
        serde_json::from_value(json!({
            "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
            "metadata": { "name": "entrance", "namespace": "cams" },
            "spec": {
                "camera": { "url": "rtsp://cam/stream", "nodeName": "edge-1" },
                "classes": ["person"],
                "annotation": { "teacher": { "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" } } },
                "dataset": { "trainSize": 300, "evalSize": 60 },
                "drift": { "minRelativeAccuracy": 0.8 },
                "training": { "student": { "uri": "file:///m/ssd.onnx", "family": "ssdRaw" } }
            },
        }))
        .unwrap()
    }

    #[test]
    fn scrapes_at_the_same_time_each_see_every_camera_tuning() {
        let (store, mut writer) = kube::runtime::reflector::store::<CameraTuning>();
        let mut tuning = entrance();
        tuning.status = Some(serde_json::from_value(json!({ "phase": "Monitoring" })).unwrap());
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(tuning));
        let metrics = Metrics::default();
        let line = "autotuner_cameratuning_phase{cameratuning=\"entrance\",namespace=\"cams\",phase=\"Monitoring\"} 1";
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..300 {
                        let text = metrics.render(Some(&store));
                        assert!(has(&text, line), "a scrape missed the CameraTuning:\n{text}");
                    }
                });
            }
        });
    }

    fn has(exposition: &str, line: &str) -> bool {
        exposition.lines().any(|l| l == line)
    }

    #[test]
    fn the_dashboards_see_targets_models_and_drift_of_each_camera_tuning() {
        let text = exposition(json!({
            "currentModel": { "version": 2, "uri": "s3://b/2.onnx", "map": 0.31, "baselineMap": 0.22 },
            "previousModel": { "version": 1, "uri": "s3://b/1.onnx", "map": 0.22 },
            "lastDriftCheck": { "time": "2026-12-03T10:00:00Z", "relativeAccuracy": 0.75 },
        }));
        let labels = "cameratuning=\"entrance\",namespace=\"cams\"";
        for line in [
            format!("autotuner_cameratuning_dataset_target_images{{{labels},split=\"train\"}} 300"),
            format!("autotuner_cameratuning_dataset_target_images{{{labels},split=\"eval\"}} 60"),
            "autotuner_cameratuning_model_map{cameratuning=\"entrance\",model=\"current\",namespace=\"cams\"} 0.31".to_string(),
            "autotuner_cameratuning_model_map{cameratuning=\"entrance\",model=\"baseline\",namespace=\"cams\"} 0.22".to_string(),
            "autotuner_cameratuning_model_map{cameratuning=\"entrance\",model=\"previous\",namespace=\"cams\"} 0.22".to_string(),
            format!("autotuner_cameratuning_model_version{{{labels}}} 2"),
            format!("autotuner_cameratuning_drift_relative_accuracy{{{labels}}} 0.75"),
            format!("autotuner_cameratuning_drift_min_relative_accuracy{{{labels}}} 0.8"),
        ] {
            assert!(has(&text, &line), "{line} missing from:\n{text}");
        }
        assert!(
            !text.contains("model=\"candidate\""),
            "no candidate, no series:\n{text}"
        );
    }

    #[test]
    fn every_kind_of_reconcile_error_is_a_series_from_the_start() {
        let metrics = Metrics::default();
        let text = metrics.render(None);
        for label in crate::Error::METRIC_LABELS {
            let line = format!("autotuner_operator_reconcile_errors_total{{error=\"{label}\"}} 0");
            assert!(has(&text, &line), "{line} missing from:\n{text}");
        }
        // One error of each kind gives each label, and none gives another.
        use kube::runtime::finalizer::Error as Finalizer;
        let errors = [
            crate::Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
            crate::Error::Finalizer(Box::new(Finalizer::UnnamedObject)),
            crate::Error::InvalidSpec(crate::plan::InvalidSpec("a bad field".into())),
            crate::Error::NotNamespaced,
            crate::Error::Timeout(std::time::Duration::ZERO),
        ];
        let labels: Vec<&str> = errors.iter().map(crate::Error::metric_label).collect();
        assert_eq!(labels, crate::Error::METRIC_LABELS);
        // A failed apply is labelled by what failed inside it.
        let inside = crate::Error::Finalizer(Box::new(Finalizer::ApplyFailed(crate::Error::NotNamespaced)));
        assert_eq!(inside.metric_label(), "not_namespaced");
    }

    #[test]
    fn a_camera_tuning_without_a_model_or_a_drift_check_exports_only_its_targets() {
        let text = exposition(json!({}));
        assert!(has(
            &text,
            "autotuner_cameratuning_dataset_target_images{cameratuning=\"entrance\",namespace=\"cams\",split=\"train\"} 300"
        ));
        for absent in [
            "autotuner_cameratuning_model_map{",
            "autotuner_cameratuning_model_version{",
            "autotuner_cameratuning_drift_relative_accuracy{",
        ] {
            assert!(!text.contains(absent), "{absent} without a value:\n{text}");
        }
    }
}

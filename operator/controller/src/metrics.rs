//! Prometheus metrics, with the conventional `_total`, `_seconds` names.

use autotuner_api::{CameraTuning, Phase};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub reconciliations: IntCounter,
    pub failures: IntCounterVec,
    pub duration: Histogram,
    tunings: IntGaugeVec,
    dataset: IntGaugeVec,
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
        for collector in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(tunings.clone()),
            Box::new(dataset.clone()),
        ] {
            registry.register(collector).unwrap();
        }
        Self {
            registry,
            reconciliations,
            failures,
            duration,
            tunings,
            dataset,
        }
    }
}

impl Metrics {
    /// The text exposition, with the gauges recomputed from the cache (cheaper than keeping
    /// them current on every reconciliation, and never stale for deleted resources).
    pub fn render(&self, tunings: &Store<CameraTuning>) -> String {
        self.tunings.reset();
        self.dataset.reset();
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
        for tuning in tunings.state() {
            let status = tuning.status.clone().unwrap_or_default();
            let phase = status.phase.unwrap_or_default();
            self.tunings
                .with_label_values(&[format!("{phase:?}").as_str()])
                .inc();
            let dataset = status.dataset.unwrap_or_default();
            let (ns, name) = (tuning.namespace().unwrap_or_default(), tuning.name_any());
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

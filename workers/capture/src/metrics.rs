//! The capture worker's Prometheus metrics (`autotuner_capture_*`).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

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
    pub dataset_images: IntGaugeVec,
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
        let dataset_images = IntGaugeVec::new(
            Opts::new(
                "autotuner_capture_dataset_images",
                "Images in the dataset by split.",
            ),
            &["split"],
        )
        .expect("metric");
        for c in [
            Box::new(frames.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upload_bytes.clone()),
            Box::new(annotated.clone()),
            Box::new(annotate_errors.clone()),
            Box::new(reconnects.clone()),
            Box::new(spool_entries.clone()),
            Box::new(spool_dropped.clone()),
            Box::new(dataset_images.clone()),
        ] {
            registry.register(c).expect("unique metric");
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
            dataset_images,
        }
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

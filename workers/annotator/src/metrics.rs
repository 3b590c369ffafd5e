//! Prometheus metrics of the annotator (`/metrics`).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status code.
    pub requests: IntCounterVec,
    /// End-to-end request latency by route.
    pub request_seconds: HistogramVec,
    /// Inference time per batch (preprocessing, model, NMS).
    pub inference_seconds: Histogram,
    /// Images per batch.
    pub batch_images: Histogram,
    /// Requests waiting for the model.
    pub queue_depth: IntGauge,
    /// Images labelled.
    pub images: IntCounter,
    /// Requests being served.
    pub in_flight: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "autotuner_annotator_requests_total",
                "HTTP requests by route and status code.",
            ),
            &["route", "code"],
        )
        .expect("metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "autotuner_annotator_request_duration_seconds",
                "HTTP request latency by route.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )
        .expect("metric");
        let inference_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "autotuner_annotator_inference_duration_seconds",
                "Model time per batch.",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("metric");
        let batch_images = Histogram::with_opts(
            HistogramOpts::new("autotuner_annotator_batch_images", "Images per inference batch.")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .expect("metric");
        let queue_depth = IntGauge::new(
            "autotuner_annotator_queue_depth",
            "Requests waiting for the model.",
        )
        .expect("metric");
        let images = IntCounter::new("autotuner_annotator_images_total", "Images labelled.").expect("metric");
        let in_flight = IntGauge::new(
            "autotuner_annotator_requests_in_flight",
            "HTTP requests being served.",
        )
        .expect("metric");
        registry.register(Box::new(in_flight.clone())).expect("register");
        registry.register(Box::new(requests.clone())).expect("register");
        registry
            .register(Box::new(request_seconds.clone()))
            .expect("register");
        registry
            .register(Box::new(inference_seconds.clone()))
            .expect("register");
        registry
            .register(Box::new(batch_images.clone()))
            .expect("register");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("register");
        registry.register(Box::new(images.clone())).expect("register");
        Self {
            registry,
            requests,
            request_seconds,
            inference_seconds,
            batch_images,
            queue_depth,
            images,
            in_flight,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encode metrics");
        String::from_utf8(out).expect("utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

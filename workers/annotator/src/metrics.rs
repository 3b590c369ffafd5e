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
        // The labelling routes' answers the dashboards and alerts read, at 0 from the start: "no
        // 429 yet" plots as 0, not as no data.
        for route in LABELLING_ROUTES {
            for code in ["200", "429"] {
                requests.with_label_values(&[route, code]);
            }
        }
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

/// The routes that label images, as the router names them.
pub const LABELLING_ROUTES: [&str; 3] = [
    "/v1/annotate",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_a_series_at_zero_before_the_first_one() {
        let text = Metrics::new().render();
        for route in LABELLING_ROUTES {
            for code in ["200", "429"] {
                let line =
                    format!("autotuner_annotator_requests_total{{code=\"{code}\",route=\"{route}\"}} 0");
                assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
            }
        }
    }
}

//! What the capture tests share: the assets and a real annotator service.
#![allow(dead_code)]

use std::path::PathBuf;

use autotuner_annotator::api::ModelInfo;
use autotuner_annotator::batcher::{BatchConfig, Batcher};
use autotuner_annotator::metrics::Metrics;
use autotuner_annotator::server::{ServerConfig, router};
use autotuner_detect::{Detector, DevicePreference, Family, Runtime};

pub fn assets() -> PathBuf {
    autotuner_detect::assets::dir()
}

/// The annotator service on `port`; dropping it stops it (its runtime, and with it every
/// connection, goes away: to a client, the annotator is gone).
pub struct Annotator(Option<tokio::runtime::Runtime>);

impl Annotator {
    pub fn start(port: u16) -> Annotator {
        Self::start_with_token(port, None)
    }

    /// With a bearer token required (requests without it get 401).
    pub fn start_with_token(port: u16, token: Option<&str>) -> Annotator {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ort = Runtime::load(&assets().join("libonnxruntime.so")).unwrap();
        let detector = Detector::load(
            &ort,
            &assets().join("models/yolov12n.onnx"),
            Family::Yolo,
            DevicePreference::Cpu,
        )
        .unwrap();
        let metrics = Metrics::new();
        let (batcher, _worker) = Batcher::start(detector, BatchConfig::default(), metrics.clone());
        let model = ModelInfo {
            name: "yolov12n".into(),
            version: "test".into(),
            device: "cpu".into(),
        };
        let config = ServerConfig {
            token: token.map(String::from),
            ..ServerConfig::new(model)
        };
        let app = router(config, batcher, metrics);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Annotator(Some(runtime))
    }
}

impl Drop for Annotator {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.shutdown_background();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

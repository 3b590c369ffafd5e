//! What the capture tests share: the assets and a real annotator service.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autotuner_annotator::api::ModelInfo;
use autotuner_annotator::batcher::BatchConfig;
use autotuner_annotator::server::{ServerConfig, serve_model};
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
        let model = ModelInfo {
            name: "yolov12n".into(),
            version: "test".into(),
            device: "cpu".into(),
        };
        let config = ServerConfig {
            token: token.map(String::from),
            ..ServerConfig::new(model)
        };
        let (app, _, _worker) = serve_model(detector, BatchConfig::default(), config);
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

/// A child process (a server the test started), killed on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for_port(port: u16) {
    autotuner_tests::workers::wait_for_listener(port, "the server");
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub use autotuner_tests::workers::encode_vtest;

/// An H.264 Matroska clip of vtest.avi's first `frames` frames.
pub fn h264_clip(dir: &Path, frames: u32) -> PathBuf {
    encode_vtest(dir, "clip.mkv", &["-frames:v", &frames.to_string()])
}

pub fn rtsp_server(clip: &Path, port: u16, credentials: Option<(&str, &str)>) -> Process {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/video/rtsp_server.py");
    // Debian's Python: GStreamer's bindings (python3-gi) live there.
    let mut command = Command::new("/usr/bin/python3");
    command.arg(script).arg(clip).arg(port.to_string());
    if let Some((user, password)) = credentials {
        command.args([user, password]);
    }
    let child = command
        .stdout(Stdio::null())
        .spawn()
        .expect("start the RTSP server");
    wait_for_port(port);
    Process(child)
}

/// The value of the series `series` (name and labels, as exposed) in a `/metrics` text; 0 when
/// absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A plain HTTP/1.1 GET on loopback: the status line, headers and body as text.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: capture\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut stream, &mut body).unwrap();
    body
}

/// The capture binary as the operator's pod runs it for the CameraTuning `name` in `ns`: the
/// contract's environment, the worker identity of `kubeconfig`, its files under `dir`, the
/// annotator on `annotator_port`. Callers add flags and standard streams.
pub fn capture_in_cluster(
    kubeconfig: &Path,
    ns: &str,
    name: &str,
    annotator_port: u16,
    dir: &Path,
) -> Command {
    use autotuner_api::contract;
    let mut command = Command::new(env!("CARGO_BIN_EXE_capture"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", kubeconfig)
        .env(contract::ENV_NAME, name)
        .env(contract::ENV_NAMESPACE, ns)
        .env(contract::ENV_DATASET_URI, dir.join("data"))
        .env(
            contract::ENV_ANNOTATOR_URL,
            format!("http://127.0.0.1:{annotator_port}"),
        )
        .env(contract::ENV_ONNXRUNTIME, assets().join("libonnxruntime.so"))
        .env(contract::ENV_WORK_DIR, dir.join("work"));
    command
}

/// The off-the-shelf student (the raw-head SSD-MobileNetV2).
pub fn student() -> PathBuf {
    assets().join("models/ssd_mobilenet_v2_coco_raw.onnx")
}

/// The student with every box it predicts moved off the object it found (each box predictor's
/// centre offsets shifted by one anchor size down and to the right), written to `out`: it finds
/// as many objects with the same scores, in the wrong places. A worse model made on purpose, so
/// that a test of what catches one does not depend on training one badly.
pub fn student_with_misplaced_boxes(out: &Path) -> PathBuf {
    use autotuner_trainer::{OnnxGraph, serialize};
    let graph = OnnxGraph::load(&student(), &burn::prelude::Device::flex()).unwrap();
    let mut weights = std::collections::HashMap::new();
    for conv in graph.convs() {
        if !conv.name.contains("/BoxEncodingPredictor/") {
            continue;
        }
        let bias = conv.bias.expect("box predictors have a bias");
        let (mut values, _) = graph.initializer(&bias).unwrap();
        // Per anchor (ty, tx, th, tw); the box coder divides the centre offsets by 10.
        for (row, value) in values.iter_mut().enumerate() {
            if row % 4 < 2 {
                *value += 10.0;
            }
        }
        weights.insert(bias, values);
    }
    assert_eq!(weights.len(), 6, "one box predictor per feature map");
    std::fs::write(out, serialize(&graph.with_weights(&weights).unwrap()).unwrap()).unwrap();
    out.to_path_buf()
}

//! The student on the camera's node, through the real `capture` binary on real footage: its
//! detections on Server-Sent Events, MQTT (a real Mosquitto broker, Debian's) and the metrics,
//! equal to the `detect` crate's own; and, against the real API server as the CameraTuning's
//! worker identity, a promoted model swapped in without a restart while bad ones are refused.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autotuner_api::contract::OPERATOR_FIELD_MANAGER;
use autotuner_api::{CameraTuning, InferenceSpec, MqttSpec};
use autotuner_capture::source::{Source, SourceConfig};
use autotuner_detect::{DetectOptions, Detector, DevicePreference, Family, RgbImage, Runtime};
use autotuner_tests::workers::{Mosquitto, tuning_with_worker_identity, worker_kubeconfig};
use autotuner_tests::{Options, install_crd, shared, test_namespace};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

mod common;
use common::{
    Annotator, Process, assets, capture_in_cluster, free_port, h264_clip, http_get, metric, rtsp_server,
    wait_for_port, wait_until,
};

fn student() -> PathBuf {
    assets().join("models/ssd_mobilenet_v2_coco_raw.onnx")
}

/// Server-Sent Events from `/v1/detections/stream`, collected in the background.
fn sse(port: u16) -> Arc<Mutex<Vec<Value>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(
            b"GET /v1/detections/stream HTTP/1.1\r\nHost: capture\r\nAccept: text/event-stream\r\n\r\n",
        )
        .unwrap();
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if let Some(kind) = line.strip_prefix("event: ") {
                event = kind.to_string();
            } else if let Some(data) = line.strip_prefix("data: ")
                && event == "detections"
            {
                sink.lock().unwrap().push(serde_json::from_str(data).unwrap());
            }
        }
    });
    got
}

#[test]
fn every_frame_of_a_file_is_published_with_the_detect_crates_own_detections() {
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let _broker = Mosquitto::start(dir.path(), broker_port);
    let messages = Mosquitto::subscribe(broker_port, "cams/hall/detections");
    // The teacher labels what motion selects (a file run ends once all of it is labelled).
    let annotator_port = free_port();
    let _annotator = Annotator::start(annotator_port);
    let frames = 60u64;
    let out = Command::new(env!("CARGO_BIN_EXE_capture"))
        .arg("--url")
        .arg(assets().join("vtest.avi"))
        .args(["--annotator-url", &format!("http://127.0.0.1:{annotator_port}")])
        .args(["--max-frames", &frames.to_string(), "--uploads-per-minute", "10"])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--inference-threads",
            "1",
            "--cpu",
        ])
        .arg("--dataset")
        .arg(dir.path().join("data"))
        .arg("--model")
        .arg(format!("file://{}", student().display()))
        .arg("--onnxruntime")
        .arg(assets().join("libonnxruntime.so"))
        .args([
            "--mqtt-url",
            &format!("mqtt://127.0.0.1:{broker_port}"),
            "--mqtt-qos",
            "1",
        ])
        .args(["--mqtt-topic-prefix", "cams/hall"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("every frame is on MQTT", Duration::from_secs(20), || {
        messages.lock().unwrap().len() as u64 >= frames
    });
    let messages = messages.lock().unwrap().clone();

    // Every frame of the file, once, in order, from the off-the-shelf student (version 0).
    let indices: Vec<u64> = messages.iter().map(|m| m["frame"].as_u64().unwrap()).collect();
    assert_eq!(indices, (0..frames).collect::<Vec<_>>());
    assert!(
        messages
            .iter()
            .all(|m| m["modelVersion"] == 0 && m["width"] == 768)
    );

    // The detect crate on the same frames, converted to RGB first and run through its batch
    // API: the same detections.
    let runtime = Runtime::load(&assets().join("libonnxruntime.so")).unwrap();
    let mut detector = Detector::load(&runtime, &student(), Family::SsdRaw, DevicePreference::Cpu).unwrap();
    let options = DetectOptions {
        min_score: 0.5,
        classes: Some(vec![1]),
        ..DetectOptions::default()
    };
    let source = Source::start(SourceConfig::new(
        assets().join("vtest.avi").display().to_string(),
    ))
    .unwrap();
    let mut rgb = Vec::new();
    let mut compared = 0;
    for message in &messages {
        let frame = source.next_frame().unwrap();
        frame.image().unwrap().to_rgb(&mut rgb);
        let image = RgbImage::new(&rgb, frame.width, frame.height).unwrap();
        let expected = detector.detect(&[image], &options).unwrap().remove(0);
        let got = message["objects"].as_array().unwrap();
        assert_eq!(got.len(), expected.len(), "frame {}", frame.index);
        for (g, e) in got.iter().zip(&expected) {
            let score = g["score"].as_f64().unwrap();
            assert!(
                (score - e.score as f64).abs() < 1e-4,
                "frame {}: {score} vs {}",
                frame.index,
                e.score
            );
            let b: Vec<f64> = g["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (got, want) in b.iter().zip([e.bbox.x0, e.bbox.y0, e.bbox.x1, e.bbox.y1]) {
                assert!(
                    (got - want as f64).abs() < 1e-2,
                    "frame {}: {b:?} vs {:?}",
                    frame.index,
                    e.bbox
                );
            }
            assert_eq!(g["class"], "person");
            compared += 1;
        }
        source.recycle(frame);
    }
    assert!(compared > 100, "people in view: {compared} detections compared");
}

async fn set_current_model(tunings: &Api<CameraTuning>, version: u32, uri: &str) {
    let body = json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "status": { "currentModel": { "version": version, "uri": uri, "map": 0.3 + version as f64 / 100.0 } },
    });
    tunings
        .patch_status(
            "gate",
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

async fn inference_status(tunings: &Api<CameraTuning>) -> Value {
    let t = tunings.get("gate").await.unwrap();
    serde_json::to_value(t.status.and_then(|s| s.inference)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_model_is_swapped_in_without_a_restart_and_bad_ones_are_refused() {
    let plane = shared(Options::default()).await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "edge").await.unwrap();
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), &ns);
    let dir = tempfile::tempdir().unwrap();

    // The camera: GStreamer's RTSP server playing vtest.avi (32 s) as H.264.
    let (rtsp_port, broker_port, annotator_port, http_port) =
        (free_port(), free_port(), free_port(), free_port());
    let clip = h264_clip(dir.path(), 795);
    let _camera = rtsp_server(&clip, rtsp_port, None);
    let mut broker = Some(Mosquitto::start(dir.path(), broker_port));
    let messages = Mosquitto::subscribe(broker_port, &format!("autotuner/{ns}/gate/detections"));
    let _annotator = tokio::task::spawn_blocking(move || Annotator::start(annotator_port))
        .await
        .unwrap();

    // Models: the off-the-shelf student from the spec, a "tuned" copy, and two bad ones.
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let tuned = models.join("1.onnx");
    std::fs::copy(student(), &tuned).unwrap();
    let bytes = std::fs::read(student()).unwrap();
    let truncated = models.join("2.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let wrong_outputs = assets().join("models/yolov12n.onnx");

    let (_, account) = tuning_with_worker_identity(&admin, &ns, "gate", None, |t| {
        t.spec.camera.url = format!("rtsp://127.0.0.1:{rtsp_port}/live");
        t.spec.training.student.uri = format!("file://{}", student().display());
        t.spec.sampling.max_uploads_per_minute = 6;
        t.spec.inference = InferenceSpec {
            max_frames_per_second: Some(8.0),
            mqtt: Some(MqttSpec {
                url: format!("mqtt://127.0.0.1:{broker_port}"),
                topic_prefix: None,
                credentials_secret_ref: None,
                qos: 0,
            }),
            ..InferenceSpec::default()
        };
    })
    .await;
    let kubeconfig = worker_kubeconfig(plane, &ns, &account, dir.path()).await;
    let capture = Process(
        capture_in_cluster(&kubeconfig, &ns, "gate", annotator_port, dir.path())
            .args(["--metrics-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--inference-threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = capture.0.id();
    wait_for_port(http_port);
    let events = sse(http_port);

    // The off-the-shelf student serves, and says so in the status.
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = inference_status(&tunings).await;
            if s["model"]["version"] == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("status.inference.model reported");
    assert_eq!(status["model"]["uri"], format!("file://{}", student().display()));
    let count = |v: u64| {
        move |events: &Arc<Mutex<Vec<Value>>>| {
            events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e["modelVersion"] == v)
                .count()
        }
    };
    let v0 = count(0);
    wait_until("detections of version 0 on SSE", Duration::from_secs(30), || {
        v0(&events) >= 5
    });

    // Promotion: the operator writes status.currentModel; the worker swaps without a restart.
    set_current_model(&tunings, 1, &format!("file://{}", tuned.display())).await;
    let v1 = count(1);
    wait_until("detections of version 1 on SSE", Duration::from_secs(60), || {
        v1(&events) >= 10
    });
    wait_until("version 1 on MQTT", Duration::from_secs(20), || {
        messages.lock().unwrap().iter().any(|m| m["modelVersion"] == 1)
    });
    assert_eq!(capture.0.id(), pid);
    let swap = events.lock().unwrap().clone();
    let first_v1 = swap.iter().position(|e| e["modelVersion"] == 1).unwrap();
    assert!(first_v1 > 0, "version 0 served before");
    // Around the swap no stretch of the stream goes without a result beyond the configured rate
    // (8 per s: one every 125 ms of stream time; a frame more or less on this busy machine).
    for pair in swap[first_v1.saturating_sub(5)..(first_v1 + 5).min(swap.len())].windows(2) {
        let gap = pair[1]["timeMs"].as_i64().unwrap() - pair[0]["timeMs"].as_i64().unwrap();
        assert!(
            (0..=400).contains(&gap),
            "{gap} ms without a result around the swap: {pair:?}"
        );
    }
    assert!(
        swap[first_v1..].iter().all(|e| e["modelVersion"] == 1),
        "no going back"
    );

    // A truncated file and a model with the wrong outputs are refused; version 1 keeps serving.
    for (version, path, reason) in [
        (2, &truncated, "does not load"),
        (3, &wrong_outputs, "does not look like"),
    ] {
        set_current_model(&tunings, version, &format!("file://{}", path.display())).await;
        let refused = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let s = inference_status(&tunings).await;
                if s["refusedModel"]["version"] == version {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("version {version} refused in the status"));
        assert!(
            refused["refusedModel"]["reason"]
                .as_str()
                .unwrap()
                .contains(reason),
            "{refused}"
        );
        assert_eq!(refused["model"]["version"], 1, "{refused}");
        let before = v1(&events);
        wait_until("version 1 goes on serving", Duration::from_secs(20), || {
            v1(&events) > before + 3
        });
    }

    // The broker goes away and comes back: the worker goes on, then publishes again.
    broker.take();
    let served = events.lock().unwrap().len();
    wait_until(
        "detections go on without the broker",
        Duration::from_secs(20),
        || events.lock().unwrap().len() > served + 10,
    );
    let received = messages.lock().unwrap().len();
    broker = Some(Mosquitto::start(dir.path(), broker_port));
    wait_until("MQTT messages again", Duration::from_secs(40), || {
        messages.lock().unwrap().len() > received + 5
    });

    let metrics = http_get(http_port, "/metrics");
    assert_eq!(
        metric(&metrics, "autotuner_edge_model_loads_total{outcome=\"loaded\"}"),
        2.0
    );
    assert_eq!(
        metric(&metrics, "autotuner_edge_model_loads_total{outcome=\"refused\"}"),
        2.0
    );
    assert_eq!(
        metric(&metrics, "autotuner_edge_frames_total{outcome=\"error\"}"),
        0.0
    );
    assert!(
        metric(&metrics, "autotuner_edge_frames_total{outcome=\"inferred\"}") > 20.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "autotuner_edge_frames_total{outcome=\"skipped\"}") > 20.0);
    assert!(metric(&metrics, "autotuner_edge_detections_total{class=\"person\"}") > 20.0);
    assert!(metrics.contains("autotuner_edge_objects{class=\"person\"}"));
    assert!(metrics.contains("autotuner_edge_inference_duration_seconds_bucket"));
    assert!(
        metrics.contains(&format!(
            "autotuner_edge_model_info{{uri=\"file://{}\",version=\"1\"}} 1",
            tuned.display()
        )),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "autotuner_edge_mqtt_connected"), 1.0);
    let latest: Value = serde_json::from_str(
        http_get(http_port, "/v1/detections/latest")
            .split("\r\n\r\n")
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(latest["modelVersion"], 1);
    drop(broker);
}

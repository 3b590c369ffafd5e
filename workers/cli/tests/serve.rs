//! `autotuner serve`: the student on a video with the camera node's outputs, without a cluster;
//! every frame's detections on a real MQTT broker (Debian's Mosquitto), and bad input refused
//! with a message that says what to fix.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use autotuner_tests::workers::Mosquitto;

fn assets() -> PathBuf {
    autotuner_detect::assets::dir()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autotuner"))
        .arg("serve")
        .args(args)
        .arg("--onnxruntime")
        .arg(assets().join("libonnxruntime.so"))
        .output()
        .unwrap()
}

#[test]
fn serve_publishes_every_frame_of_a_file_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), port);
    let messages = Mosquitto::subscribe(port, "yard/detections");
    let video = assets().join("vtest.avi").display().to_string();
    let model = assets()
        .join("models/ssd_mobilenet_v2_coco_raw.onnx")
        .display()
        .to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let mqtt = format!("mqtt://127.0.0.1:{port}");
    let out = serve(&[
        "--video",
        &video,
        "--model",
        &model,
        "--max-frames",
        "25",
        "--listen",
        &listen,
        "--mqtt-url",
        &mqtt,
        "--mqtt-topic-prefix",
        "yard",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while messages.lock().unwrap().len() < 25 {
        assert!(
            Instant::now() < deadline,
            "{} of 25 frames on MQTT",
            messages.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let messages = messages.lock().unwrap().clone();
    let frames: Vec<u64> = messages.iter().map(|m| m["frame"].as_u64().unwrap()).collect();
    assert_eq!(frames, (0..25).collect::<Vec<_>>());
    let people: usize = messages
        .iter()
        .map(|m| m["objects"].as_array().unwrap().len())
        .sum();
    assert!(people > 25, "people in view: {people}");

    // Bad input: each says what is wrong.
    for (args, says) in [
        (
            vec!["--video", &video, "--model", "/no/such/model.onnx"],
            "no such file",
        ),
        (
            vec!["--video", &video, "--model", &model, "--classes", "unicorn"],
            "not a COCO class name",
        ),
        (
            vec!["--video", "/no/such/video.mp4", "--model", &model],
            "/no/such/video.mp4",
        ),
        (
            vec!["--video", &video, "--model", &model, "--mqtt-url", "tcp://broker"],
            "mqtt://",
        ),
        (
            vec!["--video", &video, "--model", &model, "--min-score", "2"],
            "--min-score",
        ),
    ] {
        let out = serve(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
}

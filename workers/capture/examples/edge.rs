//! Edge inference throughput: this worker's path (FFmpeg decode to 4:2:0, the student's input
//! sampled from the planes, ONNX Runtime, decoding and NMS) against the Python baseline
//! (tests/edge/reference.py: OpenCV decode and resize, onnxruntime, numpy decoding, OpenCV NMS)
//! on the same frames of vtest.avi, one after the other in one run, on one core and on two
//! (taskset, and as many ONNX Runtime threads). Writes bench-results/edge-inference.json.
//!
//! `cargo run --release -p autotuner-capture --example edge` (or `scripts/bench-edge`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use autotuner_capture::source::{Source, SourceConfig};
use autotuner_detect::{DetectOptions, Detector, DevicePreference, Family, Runtime, Threads};

const FRAMES: usize = 300;

fn rust_images_per_second(runtime: &Runtime, model: &Path, video: &str, threads: usize) -> (f64, usize) {
    let mut detector = Detector::load_with(
        runtime,
        model,
        Family::SsdRaw,
        DevicePreference::Cpu,
        Threads {
            intra_op: threads,
            spinning: false,
        },
    )
    .unwrap();
    let options = DetectOptions {
        min_score: 0.5,
        classes: Some(vec![1]),
        ..DetectOptions::default()
    };
    let mut run = || {
        let mut source_config = SourceConfig::new(video);
        source_config.decoder_threads = 1;
        let source = Source::start(source_config).unwrap();
        let mut found = Vec::new();
        let (mut n, mut total) = (0, 0);
        while n < FRAMES {
            let Some(frame) = source.next_frame() else { break };
            let image = frame.image().unwrap();
            detector.detect_frame(&image, &options, &mut found).unwrap();
            total += found.len();
            source.recycle(frame);
            n += 1;
        }
        (n, total)
    };
    run();
    let started = Instant::now();
    let (n, found) = run();
    (n as f64 / started.elapsed().as_secs_f64(), found)
}

fn main() {
    let assets = autotuner_detect::assets::dir();
    let model = assets.join("models/ssd_mobilenet_v2_coco_raw.onnx");
    let video = assets.join("vtest.avi").display().to_string();
    let runtime = Runtime::load(&assets.join("libonnxruntime.so")).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/edge/reference.py");
    let cores = std::env::var("EDGE_BENCH_CORES").unwrap_or_else(|_| "1,2".into());
    let mut rows = Vec::new();
    println!(
        "{:<8} {:>12} {:>14} {:>7}",
        "cores", "rust img/s", "python img/s", "ratio"
    );
    for threads in cores.split(',').map(|c| c.parse::<usize>().unwrap()) {
        let (rust, found) = rust_images_per_second(&runtime, &model, &video, threads);
        let out = Command::new(assets.join("python"))
            .arg(&script)
            .args([
                &video,
                model.to_str().unwrap(),
                &FRAMES.to_string(),
                &threads.to_string(),
            ])
            .output()
            .expect("the Python reference");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let python: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let py = python["images_per_second"].as_f64().unwrap();
        println!("{threads:<8} {rust:>12.1} {py:>14.1} {:>6.2}x", rust / py);
        rows.push(serde_json::json!({
            "onnxruntime_threads": threads, "rust_images_per_second": rust, "python_images_per_second": py,
            "ratio": rust / py, "rust_detections": found, "python_detections": python["detections"],
        }));
    }
    let out = serde_json::json!({
        "command": "scripts/bench-edge (taskset -c 0 for 1 thread, -c 0,1 for 2)",
        "video": "vtest.avi 768x576", "frames": FRAMES, "model": "SSD-MobileNetV2 raw head, person, min score 0.5",
        "results": rows,
    });
    let results = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench-results");
    let name = std::env::var("EDGE_BENCH_OUT").unwrap_or_else(|_| "edge-inference.json".into());
    std::fs::write(
        results.join(name),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
}

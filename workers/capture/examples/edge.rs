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
use autotuner_detect::{DetectOptions, Detector, DevicePreference, Family, LoadOptions, Runtime, Threads};

const FRAMES: usize = 300;

fn rust_images_per_second(
    runtime: &Runtime,
    model: &Path,
    video: &str,
    threads: usize,
    classes: Option<Vec<u32>>,
) -> (f64, usize) {
    let options = LoadOptions {
        device: DevicePreference::Cpu,
        threads: Threads {
            intra_op: threads,
            spinning: false,
        },
        classes,
    };
    let mut detector = Detector::load_for(runtime, model, Family::SsdRaw, &options).unwrap();
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
            detector.detect_yuv420(&image, &options, &mut found).unwrap();
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
        "{:<6} {:>18} {:>20} {:>14} {:>7}",
        "cores", "worker img/s", "full head img/s", "python img/s", "ratio"
    );
    for threads in cores.split(',').map(|c| c.parse::<usize>().unwrap()) {
        // The worker computes only the classes it publishes (person); the same path with the
        // model's whole class head shows what that part is worth.
        let (rust, found) = rust_images_per_second(&runtime, &model, &video, threads, Some(vec![1]));
        let (full, found_full) = rust_images_per_second(&runtime, &model, &video, threads, None);
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
        assert_eq!(found, found_full, "cutting the class head changed the detections");
        println!(
            "{threads:<6} {rust:>18.1} {full:>20.1} {py:>14.1} {:>6.2}x",
            rust / py
        );
        rows.push(serde_json::json!({
            "onnxruntime_threads": threads, "rust_images_per_second": rust,
            "rust_full_class_head_images_per_second": full, "python_images_per_second": py,
            "ratio": rust / py, "ratio_full_class_head": full / py,
            "rust_detections": found, "python_detections": python["detections"],
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

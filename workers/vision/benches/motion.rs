//! Throughput of the Rust motion detector against the OpenCV reference (tests/vision/reference.py),
//! on the same frames in one run, single-threaded each, at 768x576 (vtest.avi as decoded) and
//! upscaled to 1920x1080 and 3840x2160 (nearest neighbour, the same index rule on both sides).
//! Two settings: the reference method (median background, rebuilt at every sample, every 10th
//! frame: its cost is part of the throughput) and the per-frame path alone (first-frame
//! background). Each side's boxes are compared frame by frame. Writes bench-results/vision.json.
//!
//! `cargo bench -p autotuner-vision --bench motion` (after `scripts/fetch-assets`), or
//! `scripts/bench-vision`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use autotuner_vision::{Background, GrayImage, MotionConfig, MotionDetector};
use common::*;

fn scale_nearest(src: &[u8], w: usize, h: usize, dw: usize, dh: usize) -> Vec<u8> {
    let cols: Vec<usize> = (0..dw).map(|x| x * w / dw).collect();
    let mut out = Vec::with_capacity(dw * dh);
    for y in 0..dh {
        let row = &src[(y * h / dh) * w..][..w];
        out.extend(cols.iter().map(|&x| row[x]));
    }
    out
}

struct Run {
    fps: f64,
    /// The slowest frame: a background rebuild done at once would show here.
    max_frame_ms: f64,
    regions: Vec<Vec<autotuner_vision::Rect>>,
}

fn run_rust(frames: &[Vec<u8>], w: usize, h: usize, config: &MotionConfig) -> Run {
    let mut detector = MotionDetector::new(w, h, config.clone()).expect("config");
    let mut regions = Vec::with_capacity(frames.len());
    let mut slowest = 0.0f64;
    let start = Instant::now();
    for frame in frames {
        let t0 = Instant::now();
        let report = detector.process(GrayImage::new(frame, w, h).unwrap()).unwrap();
        slowest = slowest.max(t0.elapsed().as_secs_f64());
        regions.push(report.regions.clone());
    }
    let seconds = start.elapsed().as_secs_f64();
    Run {
        fps: frames.len() as f64 / seconds,
        max_frame_ms: slowest * 1e3,
        regions,
    }
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported.
    let (file, w, h) = VTEST;
    let all = frames(file, w, h);
    let frames_path = assets().join(file);
    let results_dir = common::manifest_dir().join("../../bench-results");
    std::fs::create_dir_all(&results_dir).unwrap();
    let tmp = std::env::temp_dir().join(format!("autotuner-vision-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    let settings = [
        (
            "reference method (median background, rebuilt every 10th frame)",
            MotionConfig::default(),
        ),
        (
            "per-frame path only (first-frame background)",
            MotionConfig {
                background: Background::FirstFrame,
                ..MotionConfig::default()
            },
        ),
    ];
    let sizes = [
        (768usize, 576usize, 795usize),
        (1920, 1080, 300),
        (3840, 2160, 100),
    ];
    let mut rows = Vec::new();
    println!(
        "{:<66} {:>10} {:>9} {:>10} {:>7} {:>13} {:>15}  same boxes",
        "setting", "size", "rust fps", "opencv fps", "ratio", "rust max ms", "opencv max ms"
    );
    for (label, config) in &settings {
        for &(dw, dh, count) in &sizes {
            let frames: Vec<Vec<u8>> = all
                .chunks_exact(w * h)
                .take(count)
                .map(|f| {
                    if (dw, dh) == (w, h) {
                        f.to_vec()
                    } else {
                        scale_nearest(f, w, h, dw, dh)
                    }
                })
                .collect();
            let rust = run_rust(&frames, dw, dh, config);
            drop(frames);
            let jsonl = tmp.join("bench.jsonl");
            let summary = reference(&[
                "bench",
                frames_path.to_str().unwrap(),
                &w.to_string(),
                &h.to_string(),
                &config_json(config),
                &dw.to_string(),
                &dh.to_string(),
                &count.to_string(),
                jsonl.to_str().unwrap(),
            ]);
            let summary: serde_json::Value = serde_json::from_str(summary.trim()).expect("summary");
            let opencv_fps = summary["fps"].as_f64().unwrap();
            let reference = parse_reports(&std::fs::read_to_string(&jsonl).unwrap());
            let same = rust
                .regions
                .iter()
                .zip(&reference)
                .filter(|(a, b)| boxes_match(a, &b.regions, 0))
                .count();
            let ratio = rust.fps / opencv_fps;
            let opencv_max = summary["max_frame_ms"].as_f64().unwrap();
            println!(
                "{label:<66} {:>10} {:>9.1} {:>10.1} {:>6.2}x {:>13.1} {:>15.1}  {same}/{count}",
                format!("{dw}x{dh}"),
                rust.fps,
                opencv_fps,
                ratio,
                rust.max_frame_ms,
                opencv_max,
            );
            rows.push(serde_json::json!({
                "setting": label, "width": dw, "height": dh, "frames": count,
                "rust_fps": rust.fps, "opencv_fps": opencv_fps, "ratio": ratio,
                "rust_max_frame_ms": rust.max_frame_ms, "opencv_max_frame_ms": opencv_max,
                "frames_with_identical_boxes": same,
                "opencv": summary["opencv"], "numpy": summary["numpy"],
            }));
        }
    }
    let level = MotionDetector::new(w, h, MotionConfig::default())
        .unwrap()
        .level();
    let cpu = autotuner_vision::cpu_model();
    let out = serde_json::json!({
        "command": "cargo bench -p autotuner-vision --bench motion",
        "threads": "1 each (cv2.setNumThreads(1); the Rust detector is single-threaded)",
        "rust_instruction_set": format!("{level:?}"),
        "cpu": cpu,
        "results": rows,
    });
    std::fs::write(
        results_dir.join("vision.json"),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
    std::fs::remove_dir_all(&tmp).ok();
    println!("wrote bench-results/vision.json");
}

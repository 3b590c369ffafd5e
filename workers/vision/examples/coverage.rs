//! How the crops cover the ground-truth people, and what they cost in frame area, over a sweep of
//! threshold and minimum region area, on PETS09-S2L1 (vtest.avi) and TUD-Campus. Writes
//! bench-results/vision-coverage.json.
//!
//! `cargo run --release -p autotuner-vision --example coverage` (after `scripts/fetch-assets`).

#[path = "../tests/common/mod.rs"]
mod common;

use autotuner_vision::{Background, MotionConfig};
use common::*;

fn main() {
    let sequences = [
        // name, frames file, size, warm-up, background
        (
            "PETS09-S2L1",
            "vtest-768x576.gray",
            768usize,
            576usize,
            250usize,
            MotionConfig::default().background,
        ),
        // 71 frames: a short window that warms up in 10 frames.
        (
            "TUD-Campus",
            "tud-campus-640x480.gray",
            640,
            480,
            10,
            Background::Median {
                frames: 9,
                skip: 1,
                history: 3,
            },
        ),
    ];
    let mut rows = Vec::new();
    println!(
        "{:<12} {:>9} {:>8} {:>6} {:>9} {:>14} {:>15} {:>14}",
        "sequence",
        "threshold",
        "min area",
        "boxes",
        "selected",
        "crop coverage",
        "union coverage",
        "crop area frac"
    );
    for (name, file, w, h, warmup, background) in sequences {
        let frames = frames(file, w, h);
        let truth = ground_truth(name, w as u32, h as u32);
        for threshold in [15u8, 25, 35, 50] {
            for min_region_area in [250u32, 500, 1000, 2000] {
                let config = MotionConfig {
                    background,
                    threshold,
                    min_region_area,
                    ..MotionConfig::default()
                };
                let c = coverage(&frames, w, h, &truth, config, warmup);
                println!(
                    "{name:<12} {threshold:>9} {min_region_area:>8} {:>6} {:>4}/{:<4} {:>14.4} {:>15.4} {:>14.4}",
                    c.boxes,
                    c.selected_frames,
                    c.frames,
                    c.crop_coverage,
                    c.union_coverage,
                    c.mean_crop_area_fraction
                );
                rows.push(serde_json::json!({
                    "sequence": name, "threshold": threshold, "min_region_area": min_region_area,
                    "warmup_frames": warmup, "background": format!("{background:?}"), "result": c,
                }));
            }
        }
    }
    let dir = common::manifest_dir().join("../../bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let out = serde_json::json!({
        "command": "cargo run --release -p autotuner-vision --example coverage",
        "coverage": "a ground-truth box (flag 1, clipped) counts as covered when at least half of it is inside the crop",
        "results": rows,
    });
    std::fs::write(
        dir.join("vision-coverage.json"),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
    println!("wrote bench-results/vision-coverage.json");
}

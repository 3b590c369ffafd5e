//! Person AP of the teacher and the student on PETS09-S2L1 frames 401-795, on full frames and
//! on the motion detector's crops. Writes bench-results/detectors-pets09.json.
//!
//! `cargo run --release -p autotuner-detect --example detectors_pets09` (after `scripts/fetch-assets`).

#[path = "../tests/common/mod.rs"]
mod common;

use autotuner_detect::Family;
use common::*;

fn main() {
    let crops = motion_crops();
    let mut rows = Vec::new();
    println!(
        "{:<36} {:>8} {:>8} {:>11} {:>9}",
        "detector / input", "AP", "AP50", "detections", "seconds"
    );
    for (name, family) in [
        ("teacher YOLOv12n", Family::Yolo),
        ("student SSD-MobileNetV2 (raw head)", Family::SsdRaw),
    ] {
        for (input, c) in [("full frames", None), ("motion crops", Some(crops.as_slice()))] {
            let r = pets09_person_ap(family, c, 1);
            println!(
                "{:<36} {:>8.4} {:>8.4} {:>11} {:>9.1}",
                format!("{name}, {input}"),
                r.ap,
                r.ap50,
                r.detections,
                r.seconds
            );
            rows.push(serde_json::json!({ "detector": name, "input": input, "result": r }));
        }
    }
    let dir = manifest_dir().join("../../bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let out = serde_json::json!({
        "command": "cargo run --release -p autotuner-detect --example detectors_pets09",
        "data": "PETS09-S2L1 (vtest.avi) frames 401-795, person, flag-1 boxes (flag 0 as ignore), COCO AP@[.5:.95] and AP@.5, min score 0.05",
        "results": rows,
    });
    std::fs::write(
        dir.join("detectors-pets09.json"),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
    println!("wrote bench-results/detectors-pets09.json");
}

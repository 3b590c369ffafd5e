//! The reference experiment on PETS09-S2L1 (frames = vtest.avi): train on frames 1-400, evaluate
//! on frames 401-795 (people, flag-1 boxes, ignore regions honoured), with the ground truth as
//! labels (the upper bound of manual annotation) and with the teacher's (YOLOv12n) labels at
//! confidence 0.3 and 0.5, for each trainable-layer mode. Writes the datasets to
//! `target/pets09/` and the figures to `bench-results/trainer-pets09.json`.
//!
//! cargo run --release -p autotuner-trainer --example pets09 -- [modes] [labels] [epochs]
//!   modes: comma-separated, default boxRegression,top; labels: gt,teacher0.3,teacher0.5;
//!   `datasets` instead of the modes only writes the datasets. LR and VIEWS (environment) change
//!   the learning rate (default 1e-4) and the views per image (default 2).

use std::path::{Path, PathBuf};

use autotuner_detect::{DetectOptions, Detector, DevicePreference, Family, RgbImage, Runtime};
use autotuner_trainer::model::Trainable;
use autotuner_trainer::train::{self, Progress, TrainConfig};
use serde_json::{Value, json};

const WIDTH: f64 = 768.0;
const HEIGHT: f64 = 576.0;

fn frame_path(assets: &Path, frame: usize) -> PathBuf {
    assets.join(format!("vtest-frames/{frame:06}.png"))
}

/// A COCO file for frames `first..=last` with `boxes(frame)`: (x, y, w, h, crowd).
fn write_coco(path: &Path, assets: &Path, first: usize, last: usize, boxes: &dyn Fn(usize) -> Vec<[f64; 5]>) {
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for frame in first..=last {
        images
            .push(json!({"id": frame, "file_name": frame_path(assets, frame), "width": 768, "height": 576}));
        for b in boxes(frame) {
            annotations.push(json!({
                "id": annotations.len() + 1, "image_id": frame, "category_id": 1,
                "bbox": [b[0], b[1], b[2], b[3]], "iscrowd": b[4] as u8,
            }));
        }
    }
    let coco =
        json!({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]});
    std::fs::write(path, serde_json::to_vec(&coco).unwrap()).unwrap();
}

fn ground_truth(assets: &Path) -> Vec<(usize, [f64; 5])> {
    let text =
        std::fs::read_to_string(assets.join("data/PETS09-S2L1/gt/gt.txt")).expect("PETS09 ground truth");
    text.lines()
        .map(|line| {
            let f: Vec<f64> = line.split(',').map(|v| v.trim().parse().unwrap()).collect();
            let (x0, y0) = (f[2].max(0.0), f[3].max(0.0));
            let (x1, y1) = ((f[2] + f[4]).min(WIDTH), (f[3] + f[5]).min(HEIGHT));
            (
                f[0] as usize,
                [x0, y0, x1 - x0, y1 - y0, if f[6] == 0.0 { 1.0 } else { 0.0 }],
            )
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only_datasets = args.first().map(String::as_str) == Some("datasets");
    let modes: Vec<Trainable> = args
        .first()
        .filter(|_| !only_datasets)
        .map_or("boxRegression,top", String::as_str)
        .split(',')
        .map(|m| m.parse().unwrap())
        .collect();
    let labels: Vec<String> = args
        .get(1)
        .map_or("gt,teacher0.3,teacher0.5", String::as_str)
        .split(',')
        .map(String::from)
        .collect();
    let epochs: usize = args.get(2).map_or(12, |e| e.parse().unwrap());
    let assets = autotuner_detect::assets::dir();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let work = root.join("target/pets09");
    std::fs::create_dir_all(&work).unwrap();

    let gt = ground_truth(&assets);
    let gt_of = |frame: usize| {
        gt.iter()
            .filter(|(f, _)| *f == frame)
            .map(|(_, b)| *b)
            .collect::<Vec<_>>()
    };
    write_coco(&work.join("eval.json"), &assets, 401, 795, &gt_of);
    write_coco(&work.join("train-gt.json"), &assets, 1, 400, &gt_of);

    // The teacher's labels on the training frames: people at confidence >= 0.3.
    let teacher_file = work.join("teacher-0.3.json");
    if !teacher_file.exists() {
        let runtime = Runtime::load(&assets.join("libonnxruntime.so")).unwrap();
        let mut teacher = Detector::load(
            &runtime,
            &assets.join("models/yolov12n.onnx"),
            Family::Yolo,
            DevicePreference::Cpu,
        )
        .unwrap();
        let options = DetectOptions {
            min_score: 0.3,
            classes: Some(vec![1]),
            ..DetectOptions::default()
        };
        let mut all = Vec::new();
        for frame in 1..=400 {
            let rgb = image::open(frame_path(&assets, frame)).unwrap().into_rgb8();
            let image = RgbImage::new(rgb.as_raw(), 768, 576).unwrap();
            for d in teacher.detect(&[image], &options).unwrap().remove(0) {
                all.push(json!([
                    frame,
                    d.bbox.x0,
                    d.bbox.y0,
                    d.bbox.width(),
                    d.bbox.height(),
                    d.score
                ]));
            }
        }
        std::fs::write(&teacher_file, serde_json::to_vec(&all).unwrap()).unwrap();
    }
    let teacher: Vec<[f64; 6]> = serde_json::from_slice(&std::fs::read(&teacher_file).unwrap()).unwrap();
    for conf in [0.3, 0.5] {
        let of = |frame: usize| {
            teacher
                .iter()
                .filter(|t| t[0] as usize == frame && t[5] >= conf)
                .map(|t| [t[1], t[2], t[3], t[4], 0.0])
                .collect::<Vec<_>>()
        };
        write_coco(
            &work.join(format!("train-teacher{conf}.json")),
            &assets,
            1,
            400,
            &of,
        );
    }

    if only_datasets {
        eprintln!("datasets in {}", work.display());
        return;
    }
    let mut results = Vec::new();
    for label in &labels {
        for &mode in &modes {
            let output = work.join(format!("run-{label}-{}", mode.as_str()));
            std::fs::remove_dir_all(&output).ok();
            let config = TrainConfig {
                trainable: mode,
                epochs,
                learning_rate: std::env::var("LR")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1e-4),
                schedule: Default::default(),
                views: std::env::var("VIEWS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2),
                patience: 4,
                ..TrainConfig::new(
                    work.join(format!("train-{label}.json")),
                    work.join("eval.json"),
                    assets.join("models/ssd_mobilenet_v2_coco_raw.onnx"),
                    output.clone(),
                    assets.join("libonnxruntime.so"),
                )
            };
            let report = train::run(&config, &mut Progress::new()).unwrap();
            let (b, a) = (&report.before, &report.after);
            eprintln!(
                "{label} {}: AP {:.3} -> {:.3}, AP50 {:.3} -> {:.3}, {:.0} s",
                mode.as_str(),
                b.ap.unwrap(),
                a.ap.unwrap(),
                b.ap50.unwrap(),
                a.ap50.unwrap(),
                report.timing.total_seconds
            );
            results.push(json!({
                "labels": label, "trainableLayers": mode.as_str(),
                "before": {"ap": b.ap, "ap50": b.ap50}, "after": {"ap": a.ap, "ap50": a.ap50},
                "apRelativeGain": a.ap.unwrap() / b.ap.unwrap() - 1.0,
                "selectedEpoch": report.selected_epoch,
                "timing": report.timing, "trainBoxes": report.train.boxes,
                "epochs": report.epochs,
            }));
        }
    }
    let out = root.join("bench-results/trainer-pets09.json");
    let mut all: Value = std::fs::read(&out)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(json!({}));
    all["command"] = json!(format!(
        "cargo run --release -p autotuner-trainer --example pets09 -- {}",
        args.join(" ")
    ));
    all["teacherOffTheShelf"] =
        json!({"ap": 0.424, "ap50": 0.91, "source": "workers/detect/tests/pets09.rs"});
    let runs = all["runs"].as_array().cloned().unwrap_or_default();
    let mut merged: Vec<Value> = runs
        .into_iter()
        .filter(|r| {
            !results
                .iter()
                .any(|n| n["labels"] == r["labels"] && n["trainableLayers"] == r["trainableLayers"])
        })
        .collect();
    merged.extend(results);
    all["runs"] = json!(merged);
    std::fs::write(&out, serde_json::to_vec_pretty(&all).unwrap()).unwrap();
}

//! The fine-tuning job on real footage (vtest.avi frames, PETS09 ground truth) with the real
//! student: it trains (how well is a benchmark's subject: `scripts/bench-trainer`), its export
//! is what it trained (checked independently with ONNX Runtime
//! and the `detect` crate), it resumes from checkpoints, and it refuses bad datasets clearly.

use std::path::{Path, PathBuf};
use std::process::Command;

use autotuner_detect::eval::{self, GroundTruth, ImageDetection};
use autotuner_detect::{BBox, DetectOptions, Detector, DevicePreference, Family, RgbImage, Runtime};
use autotuner_trainer::model::Trainable;
use autotuner_trainer::train::{self, Progress, TrainConfig};
use burn::prelude::Device;
use serde_json::json;

fn assets() -> PathBuf {
    let dir = autotuner_detect::assets::dir();
    assert!(
        dir.join("vtest-frames/000795.png").is_file()
            && dir.join("models/ssd_mobilenet_v2_coco_raw.onnx").is_file(),
        "run scripts/fetch-assets (scripts/test does)"
    );
    dir
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("autotuner-trainer-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// PETS09 people (flag 1) and ignore regions (flag 0, as crowd) of `frames`.
fn truth(frames: &[usize]) -> Vec<(usize, [f64; 4], bool)> {
    let text = std::fs::read_to_string(assets().join("data/PETS09-S2L1/gt/gt.txt")).unwrap();
    text.lines()
        .filter_map(|line| {
            let f: Vec<f64> = line.split(',').map(|v| v.trim().parse().unwrap()).collect();
            let frame = f[0] as usize;
            frames.contains(&frame).then(|| {
                let (x0, y0) = (f[2].max(0.0), f[3].max(0.0));
                let (x1, y1) = ((f[2] + f[4]).min(768.0), (f[3] + f[5]).min(576.0));
                (frame, [x0, y0, x1 - x0, y1 - y0], f[6] == 0.0)
            })
        })
        .collect()
}

/// A COCO dataset of `frames` with their ground truth; the images are copied next to it.
fn coco(dir: &Path, name: &str, frames: &[usize]) -> PathBuf {
    let images: Vec<_> = frames
        .iter()
        .map(|f| {
            let file = format!("{f:06}.png");
            if !dir.join(&file).exists() {
                std::fs::copy(assets().join("vtest-frames").join(&file), dir.join(&file)).unwrap();
            }
            json!({"id": f, "file_name": file, "width": 768, "height": 576})
        })
        .collect();
    let annotations: Vec<_> = truth(frames)
        .iter()
        .enumerate()
        .map(|(i, (f, b, crowd))| json!({"id": i + 1, "image_id": f, "category_id": 1, "bbox": b, "iscrowd": *crowd as u8}))
        .collect();
    let path = dir.join(name);
    let body =
        json!({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]});
    std::fs::write(&path, body.to_string()).unwrap();
    path
}

fn config(dir: &Path, train: PathBuf, eval: PathBuf, trainable: Trainable, epochs: usize) -> TrainConfig {
    TrainConfig {
        trainable,
        epochs,
        batch_size: 8,
        learning_rate: 3e-4,
        schedule: Default::default(),
        seed: 7,
        cache_budget_bytes: 1 << 30,
        ..TrainConfig::new(
            train,
            eval,
            assets().join("models/ssd_mobilenet_v2_coco_raw.onnx"),
            dir.join("out"),
            assets().join("libonnxruntime.so"),
        )
    }
}

/// Frames spread over the first half of PETS09 (training) and the second (evaluation): as few
/// as show the path (two views each, two epochs of batches, the best epoch exported).
const TRAIN: [usize; 12] = [10, 40, 70, 100, 130, 160, 190, 220, 250, 280, 310, 340];
const EVAL: [usize; 6] = [410, 470, 530, 590, 650, 710];

/// AP of a model file run by the `detect` crate on ONNX Runtime, on the eval frames.
fn independent_ap(model: &Path) -> (f64, f64) {
    let runtime = Runtime::load(&assets().join("libonnxruntime.so")).unwrap();
    let mut detector = Detector::load(&runtime, model, Family::SsdRaw, DevicePreference::Cpu).unwrap();
    let options = DetectOptions {
        min_score: 0.05,
        iou_threshold: 0.5,
        max_detections: 100,
        classes: Some(vec![1]),
    };
    let mut detections = Vec::new();
    for &f in &EVAL {
        let rgb = image::open(assets().join(format!("vtest-frames/{f:06}.png")))
            .unwrap()
            .into_rgb8();
        let found = detector
            .detect(&[RgbImage::new(rgb.as_raw(), 768, 576).unwrap()], &options)
            .unwrap();
        detections.extend(found[0].iter().map(|d| ImageDetection {
            image_id: f as u64,
            detection: *d,
        }));
    }
    let gt: Vec<GroundTruth> = truth(&EVAL)
        .iter()
        .map(|(f, b, crowd)| GroundTruth {
            image_id: *f as u64,
            class_id: 1,
            bbox: BBox::xywh(b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32),
            crowd: *crowd,
        })
        .collect();
    let images: Vec<u64> = EVAL.iter().map(|&f| f as u64).collect();
    let e = eval::evaluate(&images, &[1], &gt, &detections);
    (e.ap.unwrap(), e.ap50.unwrap())
}

#[test]
fn the_job_trains_and_exports_what_it_trained() {
    let dir = temp("trains");
    let train_file = coco(&dir, "train.json", &TRAIN);
    let eval_file = coco(&dir, "eval.json", &EVAL);
    let c = config(&dir, train_file, eval_file, Trainable::BoxRegression, 2);
    let report = train::run(&c, &mut Progress::new()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report.epochs).unwrap());
    eprintln!("{:?}", report.timing);

    assert_eq!(report.train.images, 12);
    assert_eq!(report.train.views, 2);
    assert_eq!(report.cache.as_ref().unwrap().items, 24);
    assert_eq!(report.epochs.len(), 2);
    assert!(
        report.epochs.iter().all(|e| e.loss.is_finite() && e.loss > 0.0),
        "{:?}",
        report.epochs
    );

    // The figures the job reports are what ONNX Runtime gets from the original and the exported
    // model, computed independently by the detect crate.
    let original = independent_ap(&c.model);
    let exported = independent_ap(Path::new(&report.export.path));
    eprintln!("independent: original {original:?}, exported {exported:?}");
    assert!(
        (report.before.ap.unwrap() - original.0).abs() < 2e-3,
        "{:?} vs {original:?}",
        report.before
    );
    assert!(
        (report.after.ap.unwrap() - exported.0).abs() < 2e-3,
        "{:?} vs {exported:?}",
        report.after
    );
    assert!((report.after.ap50.unwrap() - exported.1).abs() < 2e-3);
    assert!(report.export.max_difference <= 1e-3);
    let head = autotuner_trainer::OnnxGraph::load(&c.model, &Device::flex())
        .unwrap()
        .convs()
        .into_iter()
        .find(|conv| conv.name.starts_with("BoxPredictor_0/BoxEncoding"))
        .unwrap()
        .weight;
    assert_ne!(
        initializer(Path::new(&report.export.path), &head),
        initializer(&c.model, &head),
        "training changed the model"
    );
    let selected = &report.epochs[report.selected_epoch - 1];
    assert_eq!(selected.ap, report.after.ap, "the best epoch is exported");
    assert!(dir.join("out/report.json").is_file() && dir.join("out/checkpoint.bin").is_file());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_restarted_job_resumes_from_its_checkpoint() {
    let dir = temp("resume");
    let train_file = coco(&dir, "train.json", &TRAIN[..12]);
    let eval_file = coco(&dir, "eval.json", &EVAL[..4]);
    // Interrupted after one epoch, then restarted for two.
    let one = config(
        &dir,
        train_file.clone(),
        eval_file.clone(),
        Trainable::BoxRegression,
        1,
    );
    train::run(&one, &mut Progress::new()).unwrap();
    let resumed = train::run(
        &config(
            &dir,
            train_file.clone(),
            eval_file.clone(),
            Trainable::BoxRegression,
            2,
        ),
        &mut Progress::new(),
    )
    .unwrap();
    assert_eq!(resumed.resumed_from_epoch, Some(1));
    assert_eq!(resumed.epochs.len(), 2);
    assert_eq!(resumed.timing.steps, 2, "only the second epoch's 2 batches ran");

    // The same two epochs without interruption end at the same place.
    let mut straight = config(&dir, train_file, eval_file, Trainable::BoxRegression, 2);
    straight.output = dir.join("straight");
    let straight = train::run(&straight, &mut Progress::new()).unwrap();
    assert_eq!(straight.resumed_from_epoch, None);
    for (a, b) in resumed.epochs.iter().zip(&straight.epochs) {
        assert!((a.loss - b.loss).abs() < 1e-4 * b.loss.abs(), "{a:?} vs {b:?}");
        assert!((a.ap.unwrap() - b.ap.unwrap()).abs() < 1e-3, "{a:?} vs {b:?}");
    }

    // A checkpoint of other settings is not resumed.
    let mut other = config(
        &dir,
        dir.join("train.json"),
        dir.join("eval.json"),
        Trainable::BoxRegression,
        1,
    );
    other.learning_rate = 1e-5;
    let fresh = train::run(&other, &mut Progress::new()).unwrap();
    assert_eq!(fresh.resumed_from_epoch, None);
    std::fs::remove_dir_all(dir).ok();
}

/// The exported model's initializer `name`, as floats.
fn initializer(model: &Path, name: &str) -> Vec<f32> {
    let graph = autotuner_trainer::OnnxGraph::load(model, &Device::flex()).unwrap();
    graph.initializer(name).unwrap().0
}

#[test]
fn top_upper_most_and_unfrozen_train_the_feature_extractor_from_where_they_say() {
    let dir = temp("modes");
    // One step of two images in each mode: whether the layers change is settled by the first.
    let train_file = coco(&dir, "train.json", &TRAIN[..2]);
    let eval_file = coco(&dir, "eval.json", &EVAL[..1]);
    let original = assets().join("models/ssd_mobilenet_v2_coco_raw.onnx");
    let graph = autotuner_trainer::OnnxGraph::load(&original, &Device::flex()).unwrap();
    let convs = graph.convs();
    let weight_of = |found: Option<&autotuner_trainer::ConvNode>| found.unwrap().weight.clone();
    // The 1280-channel layer of the feature extractor (every head below 19x19 depends on it).
    let last_body = weight_of(convs.iter().find(|c| c.weight.contains("MobilenetV2/Conv_1/")));
    // The first convolution of block 6 (it reads `upper`'s cut) and the last of block 5; the
    // same for block 3 (it reads `most`'s cut) and block 2.
    let first_reading = |cut: &str| weight_of(convs.iter().find(|c| c.input == cut));
    let last_of = |block: &str| {
        weight_of(
            convs
                .iter()
                .find(|c| c.input.contains(&format!("MobilenetV2/{block}/depthwise/"))),
        )
    };
    let block6 = first_reading(autotuner_trainer::model::UPPER_CUT);
    let block5 = last_of("expanded_conv_5");
    let block3 = first_reading(autotuner_trainer::model::MOST_CUT);
    let block2 = last_of("expanded_conv_2");
    let first = convs[0].weight.clone();
    let head = weight_of(
        convs
            .iter()
            .find(|c| c.name.starts_with("BoxPredictor_0/BoxEncoding")),
    );
    // Per mode: whether blocks 6, 5, 3 and 2 and the first convolution change, in that order
    // (the head and the last layer change in all of them).
    let watched = [&block6, &block5, &block3, &block2, &first];
    for (mode, changes) in [
        (Trainable::Top, [false, false, false, false, false]),
        (Trainable::Upper, [true, false, false, false, false]),
        (Trainable::Most, [true, true, true, false, false]),
        (Trainable::Unfrozen, [true, true, true, true, true]),
    ] {
        let mut c = config(&dir, train_file.clone(), eval_file.clone(), mode, 1);
        c.batch_size = 2;
        c.views = 1;
        c.output = dir.join(mode.as_str());
        let report = train::run(&c, &mut Progress::new()).unwrap();
        eprintln!("{mode:?}: {:?}", report.timing);
        let model = PathBuf::from(&report.export.path);
        assert!(report.export.max_difference <= 1e-3);
        let always = [(&head, true), (&last_body, true)];
        for (name, changes) in always.into_iter().chain(watched.into_iter().zip(changes)) {
            let changed = initializer(&model, name) != initializer(&original, name);
            assert_eq!(changed, changes, "{mode:?}: {name} changed {changed}");
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

fn trainer(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .env(
            autotuner_api::contract::ENV_ONNXRUNTIME,
            assets().join("libonnxruntime.so"),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_trainer_killed_mid_epoch_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_does() {
    let dir = temp("killed");
    let train_file = coco(&dir, "train.json", &TRAIN);
    let eval_file = coco(&dir, "eval.json", &EVAL[..4]);
    let args = |out: &Path| -> Vec<String> {
        [
            "--train",
            train_file.to_str().unwrap(),
            "--eval",
            eval_file.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--trainable-layers",
            "boxRegression",
            "--epochs",
            "4",
            "--batch-size",
            "4",
            "--eval-every",
            "1",
        ]
        .map(String::from)
        .to_vec()
    };
    let command = |out: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
        c.args(args(out))
            .env(
                autotuner_api::contract::ENV_ONNXRUNTIME,
                assets().join("libonnxruntime.so"),
            )
            .stderr(std::process::Stdio::null());
        c
    };
    // Killed (SIGKILL, as a pod's container is when its node fails it) once the first epoch's
    // checkpoint is written, while a later epoch is under way.
    let killed = dir.join("killed");
    let checkpoint = killed.join(train::CHECKPOINT_FILE);
    let mut child = command(&killed).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !checkpoint.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the trainer ended before its first checkpoint"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 5 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = autotuner_trainer::checkpoint::load(&checkpoint)
        .unwrap()
        .expect("a whole checkpoint")
        .header
        .epoch;
    assert!((1..4).contains(&at_kill), "killed after epoch {at_kill} of 4");
    assert!(
        !killed.join("report.json").exists(),
        "killed before the job ended"
    );

    // Restarted with the same inputs and settings, it goes on from the checkpoint.
    assert!(command(&killed).status().unwrap().success());
    let report = |out: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
    };
    let resumed = report(&killed);
    assert_eq!(resumed["resumedFromEpoch"], json!(at_kill));
    assert_eq!(
        resumed["timing"]["steps"],
        json!((4 - at_kill) * 3),
        "only the epochs left ran (3 batches of 4 each)"
    );

    // An unbroken run of the same job ends at the same place: the same history and export.
    let unbroken = dir.join("unbroken");
    assert!(command(&unbroken).status().unwrap().success());
    let straight = report(&unbroken);
    let epochs = |r: &serde_json::Value| r["epochs"].as_array().unwrap().clone();
    assert_eq!(epochs(&resumed).len(), 4);
    for (a, b) in epochs(&resumed).iter().zip(epochs(&straight)) {
        let close = |key: &str| (a[key].as_f64().unwrap() - b[key].as_f64().unwrap()).abs() < 1e-3;
        assert!(close("loss") && close("ap"), "{a} vs {b}");
    }
    assert_eq!(resumed["selectedEpoch"], straight["selectedEpoch"]);
    assert!(
        (resumed["after"]["ap"].as_f64().unwrap() - straight["after"]["ap"].as_f64().unwrap()).abs() < 1e-3
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_datasets_fail_clearly_and_bad_samples_are_skipped_and_counted() {
    let dir = temp("bad");
    let eval = coco(&dir, "eval.json", &EVAL[..2]);
    let write = |name: &str, body: serde_json::Value| {
        std::fs::write(dir.join(name), body.to_string()).unwrap();
        dir.join(name).display().to_string()
    };
    let out = dir.join("out").display().to_string();
    let run = |train: &str| {
        trainer(&[
            "--train",
            train,
            "--eval",
            eval.to_str().unwrap(),
            "--output",
            &out,
            "--epochs",
            "1",
        ])
    };

    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let (ok, err) = run(garbage.to_str().unwrap());
    assert!(!ok && err.contains("cannot read the dataset"), "{err}");

    let img = |id: u64, file: &str| json!({"id": id, "file_name": file, "width": 768, "height": 576});
    let unknown = write(
        "unknown.json",
        json!({"images": [img(10, "000410.png")],
               "annotations": [{"id": 1, "image_id": 10, "category_id": 5, "bbox": [10, 10, 50, 80]}],
               "categories": [{"id": 5, "name": "forklift"}]}),
    );
    let (ok, err) = run(&unknown);
    assert!(
        !ok && err.contains("forklift") && err.contains("--skip-unknown-classes"),
        "{err}"
    );

    let missing = write(
        "missing.json",
        json!({"images": [img(1, "nope1.png"), img(2, "nope2.png"), img(3, "000410.png")],
               "annotations": [], "categories": [{"id": 1, "name": "person"}]}),
    );
    let (ok, err) = run(&missing);
    assert!(!ok && err.contains("2 of 3 images unusable"), "{err}");

    // One missing image, one box outside its image, one degenerate box, one clipped box: the
    // job runs on the rest and says what it dropped.
    let mixed = write(
        "mixed.json",
        json!({"images": [img(10, "000410.png"), img(11, "000470.png"), img(12, "gone.png")],
               "annotations": [
                   {"id": 1, "image_id": 10, "category_id": 1, "bbox": [100, 100, 40, 100]},
                   {"id": 2, "image_id": 10, "category_id": 1, "bbox": [900, 100, 40, 100]},
                   {"id": 3, "image_id": 11, "category_id": 1, "bbox": [100, 100, 0, 100]},
                   {"id": 4, "image_id": 11, "category_id": 1, "bbox": [-20, 100, 60, 100]},
                   {"id": 5, "image_id": 12, "category_id": 1, "bbox": [100, 100, 40, 100]}],
               "categories": [{"id": 1, "name": "person"}]}),
    );
    let (ok, err) = run(&mixed);
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/report.json")).unwrap()).unwrap();
    let skipped = &report["train"]["skipped"];
    assert_eq!(report["train"]["images"], 2);
    assert_eq!(report["train"]["boxes"], 2);
    assert_eq!(skipped["missingImages"], 1);
    assert_eq!(skipped["boxesOutsideImage"], 1);
    assert_eq!(skipped["degenerateBoxes"], 1);
    assert_eq!(skipped["boxesClipped"], 1);
    std::fs::remove_dir_all(dir).ok();
}

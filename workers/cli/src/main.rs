//! `autotuner`: the standalone mode. `autotuner tune` runs the whole loop on one machine, with
//! no cluster: the capture pipeline over the first part of a video with the teacher in this
//! process (or at a URL), the dataset, the fine-tune, and the evaluation of the off-the-shelf and
//! the tuned student on the held-out rest of the video; then a report (JSON and HTML).
//! `autotuner detect` runs a model over footage, `autotuner eval` scores detections or a model
//! against ground truth, `autotuner serve` serves a student's detections as the edge does.

mod detect;
mod evaluate;
mod footage;
mod footage_args;
mod heldout;
mod html;
mod serve;
mod video_out;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use autotuner_api::contract::defaults;
use autotuner_capture::dataset::DatasetConfig;
use autotuner_capture::metrics::Metrics;
use autotuner_capture::select::Sampling;
use autotuner_capture::source::SourceConfig;
use autotuner_capture::teacher::Teacher;
use autotuner_capture::{CaptureConfig, CaptureSummary};
use autotuner_detect::{DetectOptions, Detector, DevicePreference, Family, Runtime};
use autotuner_trainer::dataset::LoadOptions;
use autotuner_trainer::model::Trainable;
use autotuner_trainer::train::{self, Progress, Schedule, TrainConfig};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "autotuner", about = "Edge AutoTuner on one machine, no cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tune the student on the first part of a video and evaluate it on the rest.
    Tune(TuneArgs),
    /// Run a model over a video, a stream or a folder of images: detections as COCO JSON or
    /// CSV, and an annotated MP4.
    Detect(detect::DetectArgs),
    /// Score detections, or a model, against ground truth (COCO JSON, MOTChallenge, YOLO).
    Eval(evaluate::EvalArgs),
    /// Run a student on a video or stream and serve its detections like the camera's node
    /// does: metrics, JSON, Server-Sent Events, MQTT.
    Serve(serve::ServeArgs),
}

#[derive(Debug, clap::Args)]
struct TuneArgs {
    /// The video (any FFmpeg input: a path, file://, rtsp://, http(s)://). Default: vtest.avi
    /// (PETS09-S2L1) from the assets step.
    #[arg(long)]
    video: Option<String>,
    /// Ground truth of the video (COCO JSON, MOTChallenge gt.txt or YOLO labels): the held-out
    /// part is then also scored against it.
    #[command(flatten)]
    truth: footage_args::TruthArgs,
    /// Where the dataset, the training run and the report go.
    #[arg(long, default_value = "autotuner-tune")]
    output: PathBuf,
    /// The part of the video to tune on (the rest is held out for evaluation).
    #[arg(long, default_value_t = 0.5)]
    tune_fraction: f64,
    /// Or: the number of frames to tune on.
    #[arg(long)]
    tune_frames: Option<u64>,
    /// Use only the first this many frames of the video (short runs).
    #[arg(long)]
    max_frames: Option<u64>,
    /// Target classes (COCO names).
    #[arg(long, default_value = "person", value_delimiter = ',')]
    classes: Vec<String>,
    /// The teacher's confidence threshold for a label.
    #[arg(long, default_value_t = 0.5)]
    min_score: f32,
    /// The teacher's uncertain band: its detections scored from this up to --min-score are
    /// ignore regions in training, taught neither as objects nor as background. Default: no
    /// band (on PETS09 a band from 0.25 changed nothing, bench-results/tune-default.json).
    #[arg(long)]
    uncertain_min_score: Option<f32>,
    /// Label through an annotator at this URL instead of running the teacher here.
    #[arg(long)]
    teacher_url: Option<String>,
    /// How much the teacher in this process may enlarge a small crop: crops are packed at up to
    /// this scale into canvases of the teacher's input size, one call per canvas.
    #[arg(long, default_value_t = autotuner_capture::teacher::DEFAULT_MAX_SCALE)]
    teacher_crop_scale: f32,
    /// Send the teacher each selected frame whole instead of the crops around its motion (a
    /// CameraTuning's `annotation.cropToMotion: false`): more bytes per label.
    #[arg(long)]
    whole_frames: bool,
    /// The teacher (YOLO family ONNX). Default: YOLOv12n from the assets step.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// The student (SSD-MobileNetV2 raw-head ONNX). Default: from the assets step.
    #[arg(long)]
    student: Option<PathBuf>,
    /// Layers trained, epochs, learning rate and batch size default to the CRD's defaults (one
    /// source: `autotuner_api::contract::defaults` and `TrainableLayers::default()`).
    #[arg(long, default_value = Trainable::default().as_str())]
    trainable_layers: Trainable,
    #[arg(long, default_value_t = defaults::EPOCHS as usize)]
    epochs: usize,
    #[arg(long, default_value_t = defaults::LEARNING_RATE)]
    learning_rate: f64,
    /// Default: cosine when the feature extractor trains (`upper`, `most`, `unfrozen`), constant
    /// otherwise.
    #[arg(long)]
    lr_schedule: Option<Schedule>,
    #[arg(long, default_value_t = defaults::BATCH_SIZE as usize)]
    batch_size: usize,
    /// Judge and export a moving average of the weights with this decay per step, started at
    /// the starting weights (0: the last step's weights).
    #[arg(long, default_value_t = train::DEFAULT_WEIGHT_AVERAGE, value_parser = train::parse_weight_average)]
    weight_average: f64,
    /// Every how many frames the motion detector looks at (1: all).
    #[arg(long, default_value_t = 1)]
    frame_step: u32,
    /// Share of the tuning part's time kept for the trainer's own evaluation split.
    #[arg(long, default_value_t = 0.2)]
    eval_share: f64,
    /// Reuse the dataset in `--output` when an earlier run captured it with the same settings
    /// (video, tuning part, classes, teacher and its thresholds, crops, frame step, eval share):
    /// a training experiment then costs no capture.
    #[arg(long)]
    reuse_capture: bool,
    /// Evaluate every this many held-out frames (1: all). Two by default: neighbouring frames
    /// of a static camera are near copies, and on PETS09 every second frame gave the same AP
    /// within 0.001 (AP@0.5 within 0.011) for half the time (bench-results/tune-eval-step.json).
    #[arg(long, default_value_t = 2)]
    eval_step: u64,
    /// ONNX Runtime's library. Default: from the assets step.
    #[arg(long, env = autotuner_api::contract::ENV_ONNXRUNTIME)]
    onnxruntime: Option<PathBuf>,
}

fn main() -> ExitCode {
    autotuner_api::logging::init(false, "warn");
    let args = match Cli::parse().command {
        Command::Tune(args) => {
            // `tune` trains in this process, which ends with it; `serve` runs for long and keeps
            // glibc's policy of returning memory.
            autotuner_trainer::memory::keep_freed_memory();
            args
        }
        Command::Detect(args) => {
            return match detect::detect(&args) {
                Ok(done) => {
                    eprintln!(
                        "autotuner detect: {} detections in {} frames{}",
                        done.detections,
                        done.frames,
                        done.annotated_codec
                            .map_or(String::new(), |c| format!(", annotated video in {c}"))
                    );
                    println!("{}", done.output.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("autotuner detect: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Eval(args) => {
            return match evaluate::run(&args) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("autotuner eval: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Serve(args) => {
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
            return match runtime.block_on(serve::serve(args)) {
                Ok(frames) => {
                    eprintln!("autotuner serve: {frames} frames");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("autotuner serve: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match tune(&args) {
        Ok(report) => {
            println!("{}", report.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("autotuner tune: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn stage(text: &str) {
    eprintln!("autotuner tune: {text}");
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Motion {
    #[serde(flatten)]
    capture: CaptureSummary,
    /// Full-frame JPEG bytes of the selected frames over the crops' bytes.
    upload_reduction_selected_frames: f64,
    /// Full-frame JPEG bytes had every decoded frame gone to the teacher (estimated from the
    /// selected frames' mean) over the crops' bytes.
    upload_reduction_all_frames: f64,
    /// Ground-truth boxes of the selected frames with at least half their area inside a crop.
    ground_truth_coverage: Option<f64>,
    seconds: f64,
}

fn tune(args: &TuneArgs) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    let assets = autotuner_detect::assets::dir();
    let video = args
        .video
        .clone()
        .unwrap_or_else(|| assets.join("vtest.avi").display().to_string());
    let onnxruntime = args
        .onnxruntime
        .clone()
        .unwrap_or_else(|| assets.join("libonnxruntime.so"));
    let teacher_model = args
        .teacher
        .clone()
        .unwrap_or_else(|| assets.join("models/yolov12n.onnx"));
    let student_model = args
        .student
        .clone()
        .unwrap_or_else(|| assets.join("models/ssd_mobilenet_v2_coco_raw.onnx"));
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.min_score),
        "--min-score must be in [0, 1], got {}",
        args.min_score
    );
    // The lowest score the teacher is asked for: the band's low edge, or the label threshold.
    let teacher_min_score = args.uncertain_min_score.unwrap_or(args.min_score);
    anyhow::ensure!(
        (0.0..=args.min_score).contains(&teacher_min_score),
        "--uncertain-min-score must be in [0, --min-score ({})], got {teacher_min_score}",
        args.min_score
    );
    anyhow::ensure!(
        args.teacher_crop_scale > 0.0 && args.teacher_crop_scale.is_finite(),
        "--teacher-crop-scale must be a positive number, got {}",
        args.teacher_crop_scale
    );
    anyhow::ensure!(
        args.eval_share > 0.0 && args.eval_share <= 0.5,
        "--eval-share must be in (0, 0.5], got {}",
        args.eval_share
    );
    anyhow::ensure!(
        args.tune_fraction > 0.0 && args.tune_fraction < 1.0,
        "--tune-fraction must be between 0 and 1, got {}",
        args.tune_fraction
    );
    let class_ids = footage_args::class_ids(&args.classes)?;
    std::fs::create_dir_all(&args.output).with_context(|| format!("create {}", args.output.display()))?;
    let output = args.output.canonicalize()?;
    let dataset_dir = output.join("dataset");

    stage(&format!(
        "counting the frames of {}",
        autotuner_capture::source::redact(&video)
    ));
    let probe = footage::Footage::Video(video.clone()).probe(args.max_frames)?;
    let ground_truth = args.truth.read(&probe).context("the ground truth")?;
    let (total, times) = (probe.frames(), probe.times_ms);
    let split = args
        .tune_frames
        .unwrap_or((total as f64 * args.tune_fraction).round() as u64)
        .min(total);
    anyhow::ensure!(
        split >= 10 && total > split,
        "{total} frames: need at least 10 to tune on and one to evaluate on (see --tune-fraction)"
    );

    let runtime = Runtime::load(&onnxruntime).context("load ONNX Runtime")?;
    let teacher_detector = Arc::new(Mutex::new(
        Detector::load(&runtime, &teacher_model, Family::Yolo, DevicePreference::Auto)
            .with_context(|| format!("load the teacher {}", teacher_model.display()))?,
    ));
    let teacher = match &args.teacher_url {
        Some(url) => Teacher::Http {
            client: autotuner_annotator::client::Client::new(
                url,
                None,
                Duration::from_secs(60),
                Default::default(),
            )?,
            classes: args.classes.clone(),
            min_score: teacher_min_score,
        },
        None => Teacher::InProcess {
            detector: teacher_detector.clone(),
            options: DetectOptions {
                min_score: teacher_min_score,
                classes: Some(class_ids.clone()),
                ..DetectOptions::default()
            },
            max_scale: args.teacher_crop_scale,
        },
    };

    // 1. Capture over the tuning part: motion, crops, teacher, dataset.
    let capture_key = CaptureKey {
        video: video.clone(),
        tuning_frames: split,
        classes: args.classes.clone(),
        min_score: args.min_score,
        teacher_min_score,
        teacher: args
            .teacher_url
            .clone()
            .unwrap_or_else(|| teacher_model.display().to_string()),
        teacher_crop_scale: args.teacher_crop_scale,
        whole_frames: args.whole_frames,
        frame_step: args.frame_step,
        eval_share: args.eval_share,
    };
    let reused = args
        .reuse_capture
        .then(|| CaptureKey::reuse(&dataset_dir, &capture_key))
        .flatten();
    let motion = match reused {
        Some(motion) => {
            stage("capture: the dataset of an earlier run with the same capture settings (--reuse-capture)");
            motion
        }
        None => {
            // A fresh dataset and spool: the split point and the teacher may differ from the
            // last run's.
            let _ = std::fs::remove_dir_all(&dataset_dir);
            let _ = std::fs::remove_dir_all(output.join("spool"));
            stage(&format!(
                "capture: frames 1-{split} of {total} (motion, crops, teacher labels)"
            ));
            let motion = capture(
                args,
                &CapturePart {
                    video: &video,
                    frames: split,
                    times_ms: &times,
                    output: &output,
                },
                teacher,
                ground_truth.as_ref(),
            )?;
            capture_key.store(&dataset_dir, &motion)?;
            motion
        }
    };
    anyhow::ensure!(
        motion.capture.train_images > 0 && motion.capture.eval_images > 0,
        "capture selected {} training and {} evaluation frames: too little motion to tune on (a longer video, or a lower --min-score)",
        motion.capture.train_images,
        motion.capture.eval_images
    );

    // 2. Fine-tune.
    stage(&format!(
        "fine-tune ({}, {} epochs) on {} frames, {} for epoch selection",
        args.trainable_layers.as_str(),
        args.epochs,
        motion.capture.train_images,
        motion.capture.eval_images
    ));
    let training_dir = output.join("training");
    let _ = std::fs::remove_dir_all(&training_dir);
    let train_config = TrainConfig {
        trainable: args.trainable_layers,
        epochs: args.epochs,
        batch_size: args.batch_size.max(1),
        learning_rate: args.learning_rate,
        schedule: args
            .lr_schedule
            .unwrap_or(Schedule::default_for(args.trainable_layers)),
        weight_average: (args.weight_average > 0.0).then_some(args.weight_average),
        load: LoadOptions {
            skip_unknown_classes: true,
            object_min_score: (teacher_min_score < args.min_score).then_some(args.min_score),
            ..LoadOptions::default()
        },
        ..TrainConfig::new(
            dataset_dir.join("train/annotations.json"),
            dataset_dir.join("eval/annotations.json"),
            student_model.clone(),
            training_dir.clone(),
            onnxruntime.clone(),
        )
    };
    let training = train::run(&train_config, &mut Progress::new()).context("fine-tune")?;
    let tuned_model = PathBuf::from(&training.export.path);

    // 3. The held-out part.
    stage(&format!(
        "evaluation on the held-out frames {}-{total}",
        split + 1
    ));
    let held_out_started = Instant::now();
    let held_out = heldout::evaluate(&heldout::HeldOut {
        video: &video,
        first: split,
        last: total,
        step: args.eval_step.max(1),
        runtime: &runtime,
        student: &student_model,
        tuned: &tuned_model,
        teacher: &teacher_detector,
        classes: &class_ids,
        teacher_min_score: args.min_score,
        ground_truth: ground_truth.as_ref(),
        pictures: &output,
    })?;

    let report = json!({
        "video": autotuner_capture::source::redact(&video),
        "groundTruth": args.truth.ground_truth.as_ref().map(|p| p.display().to_string()),
        "classes": args.classes,
        "teacherMinScore": args.min_score,
        "teacherUncertainMinScore": teacher_min_score,
        "teacherCropScale": args.teacher_crop_scale,
        "teacherWholeFrames": args.whole_frames,
        "frames": {"total": total, "tuning": [1, split], "heldOut": [split + 1, total], "evalStep": args.eval_step},
        "motion": motion,
        "training": training_summary(&training),
        "gate": gate(&training, &held_out),
        "heldOut": held_out,
        "stages": {
            "capture": motion.seconds,
            "training": training.timing.total_seconds,
            "heldOut": held_out_started.elapsed().as_secs_f64(),
        },
        "seconds": started.elapsed().as_secs_f64(),
    });
    let json_path = output.join("report.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    let html_path = output.join("report.html");
    std::fs::write(&html_path, html::render(&report))?;
    print_summary(&report);
    Ok(html_path)
}

/// The tuning part of the footage, which capture runs over.
struct CapturePart<'a> {
    video: &'a str,
    /// Frames 1 to this.
    frames: u64,
    /// The decode time of every frame of the footage, in ms.
    times_ms: &'a [i64],
    output: &'a Path,
}

/// Capture over the tuning part: motion, crops, the teacher's labels, the dataset (in
/// `<output>/dataset`).
fn capture(
    args: &TuneArgs,
    part: &CapturePart<'_>,
    teacher: Teacher,
    ground_truth: Option<&autotuner_detect::truth::Truth>,
) -> anyhow::Result<Motion> {
    let (video, split, times, output) = (part.video.to_string(), part.frames, part.times_ms, part.output);
    let dataset_dir = output.join("dataset");
    let capture_started = Instant::now();
    let mut source = SourceConfig::new(video.clone());
    source.queue = 8;
    // The trainer's own eval split: whole time blocks, about a tenth of the tuning part each.
    let tune_ms = (times[split as usize - 1] - times[0]).max(10);
    let config = CaptureConfig {
        source,
        sampling: Sampling {
            frame_step: args.frame_step,
            ..Sampling::default()
        },
        dataset: DatasetConfig {
            // Sizes in the proportion of the shares (the splits alternate by time block in that
            // proportion); neither can be reached by the tuning part's frames.
            train_size: split as usize,
            eval_size: (split as f64 * args.eval_share / (1.0 - args.eval_share))
                .round()
                .max(1.0) as usize,
            block_ms: tune_ms / 10,
            rolling: None,
        },
        spool_dir: output.join("spool"),
        spool_max_entries: 100_000,
        spool_max_bytes: 8 << 30,
        classes: args.classes.clone(),
        max_frames: Some(split),
        crop_to_motion: !args.whole_frames,
        ..CaptureConfig::new(&video, dataset_dir.clone())
    };
    let metrics = Metrics::new();
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let capture = {
        let progress = metrics.clone();
        let done = Arc::new(AtomicBool::new(false));
        let ticker = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut bar = Progress::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    bar.update(
                        "capture",
                        progress.frames("decoded").min(split) as usize,
                        split as usize,
                        &format!(
                            "selected {}, labelled {}",
                            progress.frames("selected"),
                            progress.annotated.get()
                        ),
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        let result = tokio.block_on(autotuner_capture::run(
            config.clone(),
            teacher,
            metrics.clone(),
            Arc::new(AtomicBool::new(false)),
        ));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = ticker.join();
        eprintln!();
        result?
    };
    let coverage = ground_truth
        .as_ref()
        .map(|gt| heldout::coverage(&dataset_dir, gt))
        .transpose()?
        .flatten();
    let selected_bytes = capture.full_frame_bytes as f64;
    Ok(Motion {
        upload_reduction_selected_frames: selected_bytes / capture.crop_bytes.max(1) as f64,
        upload_reduction_all_frames: selected_bytes / capture.frames_selected.max(1) as f64 * split as f64
            / capture.crop_bytes.max(1) as f64,
        ground_truth_coverage: coverage,
        seconds: capture_started.elapsed().as_secs_f64(),
        capture,
    })
}

/// What a capture ran with: `--reuse-capture` takes an earlier run's dataset only when all of it
/// is the same (the file beside the dataset says).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct CaptureKey {
    video: String,
    tuning_frames: u64,
    classes: Vec<String>,
    min_score: f32,
    teacher_min_score: f32,
    teacher: String,
    teacher_crop_scale: f32,
    whole_frames: bool,
    frame_step: u32,
    eval_share: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CaptureRecord {
    key: CaptureKey,
    motion: Motion,
}

impl CaptureKey {
    const FILE: &str = "capture.json";

    /// The capture statistics of the dataset in `dataset`, if it was captured with `self`'s
    /// settings (and finished: the record is written last).
    fn reuse(dataset: &Path, key: &Self) -> Option<Motion> {
        let record: CaptureRecord =
            serde_json::from_slice(&std::fs::read(dataset.join(Self::FILE)).ok()?).ok()?;
        (record.key == *key).then_some(record.motion)
    }

    fn store(self, dataset: &Path, motion: &Motion) -> anyhow::Result<()> {
        let record = serde_json::json!({ "key": self, "motion": motion });
        let path = dataset.join(Self::FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(&record)?)
            .with_context(|| format!("write {}", path.display()))
    }
}

/// What a CameraTuning with the defaults would do with the tuned student, beside what the
/// held-out ground truth says, when there is one. The operator trains only once the eval split
/// holds `training.minEvalSize` images, and its gate judges the candidate on that split against
/// the teacher's labels at `rollout.minImprovement`. Where the gate and the ground truth disagree,
/// the gate was fooled (its judge, the teacher, can share the student's errors).
fn gate(training: &autotuner_trainer::report::Report, held_out: &Value) -> Value {
    use autotuner_api::contract::defaults::{MIN_EVAL_SIZE, MIN_IMPROVEMENT};
    let margin = MIN_IMPROVEMENT;
    let (Some(before), Some(after)) = (training.before.ap, training.after.ap) else {
        return Value::Null;
    };
    let gain = after - before;
    let lower_bound = training.gain.map(|g| g.ap_lower_bound);
    let eval_images = training.eval.images;
    let judged = eval_images >= MIN_EVAL_SIZE as usize;
    let truth = &held_out["againstGroundTruth"];
    // Better by the ground truth: not worse in AP@[.5:.95] nor in AP@0.5.
    let better = |key: &str| Some(truth["tuned"][key].as_f64()? >= truth["offTheShelf"][key].as_f64()?);
    let truth_says = match (better("ap"), better("ap50")) {
        (Some(ap), Some(ap50)) => json!(ap && ap50),
        _ => Value::Null,
    };
    // The same rule with the held-out frames as the eval split (against the teacher too): what the
    // gate would decide on a longer capture.
    let held_out_gain = &held_out["againstTeacher"]["gain"];
    let on_held_out = match (
        held_out_gain["ap"].as_f64(),
        held_out_gain["apLowerBound"].as_f64(),
    ) {
        (Some(gain), bound) => json!({
            "images": held_out["frames"], "gain": gain, "gainLowerBound": bound,
            "promotes": autotuner_api::promotion::clears(gain, bound, margin),
        }),
        _ => Value::Null,
    };
    json!({
        "minImprovement": margin,
        "minEvalSize": MIN_EVAL_SIZE,
        "onHeldOutFrames": on_held_out,
        "evalImages": eval_images,
        "gain": gain,
        "gainLowerBound": lower_bound,
        "promotes": judged && autotuner_api::promotion::clears(gain, lower_bound, margin),
        "reason": if !judged {
            format!("the eval split holds {eval_images} images, fewer than training.minEvalSize ({MIN_EVAL_SIZE}): \
                     the operator would keep capturing, not judge on so few (a longer video, or --eval-share)")
        } else if autotuner_api::promotion::clears(gain, lower_bound, margin) {
            "the gain and its 95% lower bound clear rollout.minImprovement".into()
        } else {
            "the gain, or its 95% lower bound over the eval images, is below rollout.minImprovement".into()
        },
        "groundTruthSaysBetter": truth_says,
    })
}

fn training_summary(report: &autotuner_trainer::report::Report) -> Value {
    let mut v = serde_json::to_value(report).expect("report serialises");
    // The full report is in training/report.json; keep the figures a reader compares.
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| {
            matches!(
                k.as_str(),
                "trainableLayers"
                    | "epochsRequested"
                    | "learningRate"
                    | "schedule"
                    | "train"
                    | "eval"
                    | "timing"
                    | "epochs"
                    | "selectedEpoch"
                    | "before"
                    | "after"
                    | "gain"
                    | "export"
            )
        });
    }
    v
}

fn print_summary(report: &Value) {
    let f = |v: &Value| v.as_f64().map_or("n/a".into(), |v| format!("{v:.3}"));
    for (name, key) in [
        ("ground truth", "againstGroundTruth"),
        ("teacher labels", "againstTeacher"),
    ] {
        let r = &report["heldOut"][key];
        if r.is_null() {
            continue;
        }
        eprintln!(
            "held-out frames vs {name}: AP {} -> {} ({}), AP@0.5 {} -> {}",
            f(&r["offTheShelf"]["ap"]),
            f(&r["tuned"]["ap"]),
            r["apRelativeGain"]
                .as_f64()
                .map_or("n/a".into(), |g| format!("{:+.1}%", g * 100.0)),
            f(&r["offTheShelf"]["ap50"]),
            f(&r["tuned"]["ap50"]),
        );
    }
    let g = &report["gate"];
    if let Some(promotes) = g["promotes"].as_bool() {
        eprintln!(
            "a CameraTuning's gate would {} it ({}): eval-split AP gain {} (95% lower bound {}){}",
            if promotes { "promote" } else { "reject" },
            g["reason"].as_str().unwrap_or_default(),
            f(&g["gain"]),
            f(&g["gainLowerBound"]),
            match g["groundTruthSaysBetter"].as_bool() {
                Some(better) if better == promotes => "; the ground truth agrees",
                Some(_) => "; the ground truth disagrees",
                None => "",
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CaptureKey {
        CaptureKey {
            video: "vtest.avi".into(),
            tuning_frames: 398,
            classes: vec!["person".into()],
            min_score: 0.5,
            teacher_min_score: 0.5,
            teacher: "yolov12n.onnx".into(),
            teacher_crop_scale: 2.0,
            whole_frames: false,
            frame_step: 1,
            eval_share: 0.2,
        }
    }

    #[test]
    fn a_capture_is_reused_only_with_every_capture_setting_the_same() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            CaptureKey::reuse(dir.path(), &key()).is_none(),
            "nothing captured yet"
        );
        let motion = Motion {
            capture: CaptureSummary {
                frames_selected: 7,
                ..CaptureSummary::default()
            },
            upload_reduction_selected_frames: 5.0,
            upload_reduction_all_frames: 6.0,
            ground_truth_coverage: Some(0.99),
            seconds: 12.0,
        };
        key().store(dir.path(), &motion).unwrap();
        let reused = CaptureKey::reuse(dir.path(), &key()).expect("the same settings");
        assert_eq!(reused.capture.frames_selected, 7);
        assert_eq!(reused.ground_truth_coverage, Some(0.99));
        for other in [
            CaptureKey {
                min_score: 0.4,
                ..key()
            },
            CaptureKey {
                whole_frames: true,
                ..key()
            },
            CaptureKey {
                tuning_frames: 397,
                ..key()
            },
            CaptureKey {
                teacher: "other.onnx".into(),
                ..key()
            },
        ] {
            assert!(CaptureKey::reuse(dir.path(), &other).is_none(), "{other:?}");
        }
    }
}

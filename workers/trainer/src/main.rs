//! `trainer`: the fine-tuning Job. Reads a COCO dataset (train and eval splits), fine-tunes the
//! student, and writes `model.onnx`, `report.json` and `checkpoint.bin` to the output folder.
//! Restarted with the same inputs, it resumes from the last checkpoint.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use autotuner_api::contract::{self, TrainingSettings};
use autotuner_store::Location;
use autotuner_trainer::cluster::{self, JobContext, PrepareError};
use autotuner_trainer::dataset::LoadOptions;
use autotuner_trainer::model::Trainable;
use autotuner_trainer::report::Report;
use autotuner_trainer::train::{self, CheckpointHook, Progress, Schedule, TrainConfig};
use burn::prelude::Device;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Fine-tunes the student detector on a camera's labelled images"
)]
struct Args {
    /// COCO JSON of the training split (image paths relative to it). Started by the operator,
    /// the dataset volume's train split.
    #[arg(long)]
    train: Option<PathBuf>,
    /// COCO JSON of the eval split, from a different time span than the training split.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// The student: SSD-MobileNetV2's raw-head ONNX (default: the operator's model URI, else the
    /// one the assets step fetched).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where the model, report and checkpoints go (started by the operator: `runs/<iteration>`
    /// in the dataset volume).
    #[arg(long)]
    output: Option<PathBuf>,
    /// boxRegression (the heads only), top (heads and the last blocks), upper (from 1/16
    /// resolution on), most (everything but the stem, the default) or unfrozen (everything).
    /// These four default to the operator's settings for the Job (the CameraTuning's
    /// `spec.training`), else to the project's defaults (`autotuner_api::contract::defaults`).
    #[arg(long)]
    trainable_layers: Option<Trainable>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    learning_rate: Option<f64>,
    /// `constant`, or `cosine` (decays to zero over the job's steps). Default: cosine when the
    /// feature extractor trains (`upper`, `most`, `unfrozen`), constant otherwise.
    #[arg(long)]
    lr_schedule: Option<Schedule>,
    /// Views of each training image: the image and `views - 1` random crops and flips.
    #[arg(long, default_value_t = 2)]
    views: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Evaluate on the eval split after every this many epochs (and after the last), exporting
    /// the best; 0: only after the last, which is exported. 0 by default: the figure that gates
    /// promotion, and that drift checks divide by, must not be the best of several looks at the
    /// same eval images (that picks noise, and the deployed model then seems to drift from a
    /// figure it never had).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Stop after this many epochs without a better eval AP (0: run every epoch). Needs
    /// `--eval-every`: with only the evaluation after the last epoch, every epoch runs.
    #[arg(long, default_value_t = 4)]
    patience: usize,
    /// Judge and export a moving average of the weights with this decay per step, started at
    /// the starting weights (0: the last step's weights).
    #[arg(long, default_value_t = train::DEFAULT_WEIGHT_AVERAGE, value_parser = train::parse_weight_average)]
    weight_average: f64,
    /// Stop after this many optimiser steps (for benchmarks and smoke runs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Memory for the frozen-feature cache, in MiB: f32 while it fits, then f16, then a file.
    #[arg(long, default_value_t = 2048)]
    cache_mib: usize,
    /// Drop boxes of classes the student has no output for instead of failing.
    #[arg(long)]
    skip_unknown_classes: bool,
    /// Fail when more than this fraction of a split's images is unusable.
    #[arg(long, default_value_t = 0.5)]
    max_bad_fraction: f64,
    /// ONNX Runtime's shared library (default: the one the assets step fetched).
    #[arg(long, env = contract::ENV_ONNXRUNTIME)]
    onnxruntime: Option<PathBuf>,
    /// Where burn trains: `cpu` (the `flex` backend) or `gpu` (wgpu; builds with `--features wgpu`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Log lines as JSON (for log collectors).
    #[arg(long, env = contract::ENV_LOG_JSON)]
    log_json: bool,
}

/// Publishes the model and reports it as the CameraTuning's candidate.
/// What to train with: a flag when given, else the operator's settings for the Job, else the
/// project's defaults (the same the CRD writes into a spec).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Settings {
    trainable: Trainable,
    epochs: usize,
    batch_size: usize,
    learning_rate: f64,
}

impl Settings {
    fn of(args: &Args, job: Option<&TrainingSettings>) -> Self {
        Self {
            trainable: args
                .trainable_layers
                .unwrap_or_else(|| job.map_or(Trainable::default(), |j| j.trainable_layers)),
            epochs: args
                .epochs
                .unwrap_or_else(|| job.map_or(contract::defaults::EPOCHS, |j| j.epochs) as usize),
            batch_size: args
                .batch_size
                .unwrap_or_else(|| job.map_or(contract::defaults::BATCH_SIZE, |j| j.batch_size) as usize)
                .max(1),
            learning_rate: args
                .learning_rate
                .unwrap_or_else(|| job.map_or(contract::defaults::LEARNING_RATE, |j| j.learning_rate)),
        }
    }
}

fn report_to_cluster(
    runtime: &tokio::runtime::Runtime,
    job: &JobContext,
    report: &Report,
    location: Option<&Location>,
) -> Result<(), String> {
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("no Kubernetes client: {e}"))?;
        let candidate = cluster::publish(client, job, report, location).await?;
        tracing::info!(uri = %candidate.uri, map = candidate.map, iteration = candidate.version, "candidate reported");
        Ok(())
    })
}

fn device(name: &str) -> Result<(Device, String), String> {
    match name {
        "cpu" => Ok((Device::flex(), "burn flex (CPU)".into())),
        #[cfg(feature = "wgpu")]
        "gpu" => Ok((
            Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            "burn wgpu (GPU)".into(),
        )),
        #[cfg(not(feature = "wgpu"))]
        "gpu" => Err("this trainer was built without a GPU backend: build with `--features wgpu`".into()),
        other => Err(format!("--device {other}: expected cpu or gpu")),
    }
}

fn main() -> ExitCode {
    autotuner_trainer::memory::keep_freed_memory();
    let args = Args::parse();
    autotuner_api::logging::init(args.log_json, "info");
    let (device, backend) = match device(&args.device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("trainer: {e}");
            return ExitCode::from(2);
        }
    };
    let job = match JobContext::from_env() {
        Ok(job) => job,
        Err(e) => {
            eprintln!("trainer: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => Arc::new(runtime),
        Err(e) => {
            eprintln!("trainer: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A dataset in object storage is mirrored into the work folder first.
    let location = match &job {
        Some(job) => match runtime.block_on(job.prepare()) {
            Ok(location) => location,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("trainer: {e}");
                return match e {
                    PrepareError::Incomplete { .. } => {
                        ExitCode::from(contract::EXIT_DATASET_INCOMPLETE as u8)
                    }
                    PrepareError::Other(_) => ExitCode::FAILURE,
                };
            }
        },
        None => None,
    };
    let after_checkpoint = match (&job, &location) {
        (Some(job), Some(location)) => {
            let (runtime, location, key) = (
                runtime.clone(),
                location.clone(),
                job.run_key(train::CHECKPOINT_FILE),
            );
            Some(CheckpointHook(Arc::new(move |path: &Path| {
                runtime
                    .block_on(location.put_file(&key, path))
                    .map_err(|e| e.to_string())
            })))
        }
        _ => None,
    };
    let assets = autotuner_detect::assets::dir();
    let settings = Settings::of(&args, job.as_ref().map(|j| &j.settings));
    let (Some(train), Some(eval), Some(output)) = (
        args.train.or(job.as_ref().map(JobContext::train_file)),
        args.eval.or(job.as_ref().map(JobContext::eval_file)),
        args.output.or(job.as_ref().map(JobContext::output)),
    ) else {
        eprintln!("trainer: --train, --eval and --output are needed (or the operator's environment)");
        return ExitCode::from(2);
    };
    let model = match (args.model.clone(), &job) {
        (Some(path), _) => path,
        (None, Some(job)) => match runtime.block_on(job.fetch_student()) {
            Ok(path) => path,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("trainer: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => assets.join("models/ssd_mobilenet_v2_coco_raw.onnx"),
    };
    let onnxruntime = args
        .onnxruntime
        .unwrap_or_else(|| assets.join("libonnxruntime.so"));
    let config = TrainConfig {
        trainable: settings.trainable,
        epochs: settings.epochs,
        batch_size: settings.batch_size,
        learning_rate: settings.learning_rate,
        schedule: args
            .lr_schedule
            .unwrap_or(Schedule::default_for(settings.trainable)),
        views: args.views.max(1),
        seed: args.seed,
        eval_every: args.eval_every,
        patience: args.patience,
        weight_average: (args.weight_average > 0.0).then_some(args.weight_average),
        max_steps: args.max_steps,
        max_train_images: job.as_ref().map(|j| j.settings.dataset_cap as usize),
        eval_since_ms: job
            .as_ref()
            .and_then(|j| j.settings.round_started_at.as_ref())
            .and_then(contract::epoch_ms),
        cache_budget_bytes: args.cache_mib << 20,
        load: LoadOptions {
            skip_unknown_classes: args.skip_unknown_classes,
            max_bad_fraction: args.max_bad_fraction,
            ..LoadOptions::default()
        },
        device,
        backend,
        after_checkpoint,
        ..TrainConfig::new(train, eval, model, output, onnxruntime)
    };
    match train::run(&config, &mut Progress::new()) {
        Ok(report) => {
            let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
            tracing::info!(
                before_ap = %fmt(report.before.ap),
                after_ap = %fmt(report.after.ap),
                before_ap50 = %fmt(report.before.ap50),
                after_ap50 = %fmt(report.after.ap50),
                seconds = report.timing.total_seconds,
                model = %report.export.path,
                "fine-tune done"
            );
            match job {
                Some(job) => match report_to_cluster(&runtime, &job, &report, location.as_ref()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e}");
                        eprintln!("trainer: {e}");
                        ExitCode::FAILURE
                    }
                },
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            tracing::error!("fine-tune failed: {e}");
            eprintln!("trainer: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_trains_with_the_spec_settings_unless_a_flag_overrides_them() {
        let spec: autotuner_api::CameraTuningSpec = serde_json::from_value(serde_json::json!({
            "camera": { "url": "rtsp://c/s", "nodeName": "n" }, "classes": ["person"],
            "annotation": { "teacher": { "model": { "uri": "file:///t.onnx", "family": "yolo" } } },
            "training": { "student": { "uri": "file:///s.onnx", "family": "ssdRaw" },
                "epochs": 3, "batchSize": 5, "learningRate": 0.02, "trainableLayers": "unfrozen" },
        }))
        .unwrap();
        let job = TrainingSettings::new(&spec, 2, "file:///s.onnx", None);
        let settings = TrainingSettings::from_env_value(&job.to_env_value()).unwrap();
        let none = Args::parse_from(["trainer"]);
        assert_eq!(
            Settings::of(&none, Some(&settings)),
            Settings {
                trainable: Trainable::Unfrozen,
                epochs: 3,
                batch_size: 5,
                learning_rate: 0.02
            }
        );
        let flags = Args::parse_from(["trainer", "--epochs", "1", "--batch-size", "4"]);
        let overridden = Settings::of(&flags, Some(&settings));
        assert_eq!((overridden.epochs, overridden.batch_size), (1, 4));
        assert_eq!(overridden.learning_rate, 0.02);
        // Outside a Job: the defaults the CRD also writes.
        let standalone = Settings::of(&none, None);
        assert_eq!(standalone.epochs, spec_default().training.epochs as usize);
        assert_eq!(standalone.learning_rate, spec_default().training.learning_rate);
        assert_eq!(standalone.batch_size, spec_default().training.batch_size as usize);
    }

    /// A spec with every training default the API server writes.
    fn spec_default() -> autotuner_api::CameraTuningSpec {
        serde_json::from_value(serde_json::json!({
            "camera": { "url": "rtsp://c/s", "nodeName": "n" }, "classes": ["person"],
            "annotation": { "teacher": { "model": { "uri": "file:///t.onnx", "family": "yolo" } } },
            "training": { "student": { "uri": "file:///s.onnx", "family": "ssdRaw" } },
        }))
        .unwrap()
    }
}

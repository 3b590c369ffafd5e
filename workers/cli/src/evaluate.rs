//! `autotuner eval`: detections (a file `autotuner detect` wrote, or any COCO results list) or a
//! model run here, scored against ground truth in COCO JSON, MOTChallenge or YOLO text: COCO AP
//! per class and mean, as pycocotools computes it, with the ground truth's ignore regions.

use std::path::PathBuf;

use anyhow::Context;
use autotuner_detect::eval::{self, Evaluation, ImageDetection};
use autotuner_detect::{DetectOptions, RgbImage, labels};
use autotuner_trainer::progress::Progress;
use serde_json::{Value, json};

use crate::footage::Footage;
use crate::footage_args::{ModelArgs, TruthArgs, class_ids};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The footage the ground truth is of (a video or a folder of images): its frame size and
    /// length check the ground truth, and a model runs on it.
    #[arg(long)]
    input: String,
    #[command(flatten)]
    truth: TruthArgs,
    /// The detections to score: a COCO file or CSV from `autotuner detect`, or a COCO results
    /// list (image_id = frame number). Without it, --model runs over the footage.
    #[arg(long)]
    detections: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Classes to score (COCO names). Default: every class of the ground truth.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Only the first this many frames.
    #[arg(long)]
    max_frames: Option<u64>,
    /// Score every this many frames (1: all).
    #[arg(long, default_value_t = 1)]
    step: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.step >= 1, "--step must be at least 1");
    anyhow::ensure!(
        args.truth.ground_truth.is_some(),
        "--ground-truth is required: a COCO JSON file, a MOTChallenge gt.txt or a folder of YOLO label files"
    );
    let footage = Footage::open(&args.input)?;
    let probe = footage.probe(args.max_frames)?;
    let truth = args.truth.read(&probe)?.expect("checked above");
    let classes = if args.classes.is_empty() {
        let present: Vec<u32> = truth.class_counts().into_keys().collect();
        anyhow::ensure!(
            !present.is_empty(),
            "the ground truth has no box to score against"
        );
        present
    } else {
        class_ids(&args.classes)?
    };
    let frames: Vec<u64> = (0..probe.frames())
        .step_by(args.step as usize)
        .filter(|&f| truth.covers(f))
        .collect();
    anyhow::ensure!(
        !frames.is_empty(),
        "the ground truth covers none of the footage's frames (see --first-frame-number)"
    );
    let detections = match &args.detections {
        Some(path) => {
            let read = crate::detect::read_detections(path, 1)?;
            let last = read.iter().map(|(f, _)| *f).max();
            if let Some(last) = last.filter(|&l| l >= probe.frames() && args.max_frames.is_none()) {
                anyhow::bail!(
                    "{}: detections of frame {}, the footage has {} frames: are they of another video?",
                    path.display(),
                    last + 1,
                    probe.frames()
                );
            }
            read.into_iter()
                .filter(|(f, d)| frames.binary_search(f).is_ok() && classes.contains(&d.class_id))
                .map(|(f, detection)| ImageDetection {
                    image_id: f + 1,
                    detection,
                })
                .collect()
        }
        None => run_model(args, &footage, &classes, &frames)?,
    };
    let images: Vec<u64> = frames.iter().map(|f| f + 1).collect();
    let ground_truth: Vec<_> = frames
        .iter()
        .flat_map(|&f| truth.ground_truth(f, &classes))
        .collect();
    let scored = eval::evaluate(&images, &classes, &ground_truth, &detections);
    let report = json!({
        "footage": footage.describe(),
        "groundTruth": args.truth.ground_truth.as_ref().map(|p| p.display().to_string()),
        "detections": match &args.detections {
            Some(p) => p.display().to_string(),
            None => args.model.model_path().display().to_string(),
        },
        "frames": images.len(),
        "classes": classes.iter().map(|&c| labels::name(c)).collect::<Vec<_>>(),
        "scores": scores_json(&scored),
    });
    print_table(&scored);
    if let Some(path) = &args.json {
        autotuner_store::write_atomically(path, &serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(report)
}

/// The model over the frames, with the evaluation's settings (every detection from 0.05, as
/// COCO AP expects; the same as `autotuner tune` and the trainer use).
fn run_model(
    args: &EvalArgs,
    footage: &Footage,
    classes: &[u32],
    frames: &[u64],
) -> anyhow::Result<Vec<ImageDetection>> {
    let runtime = args.model.runtime()?;
    let mut detector = args.model.load(&runtime)?;
    let options = DetectOptions::for_evaluation(classes);
    let mut progress = Progress::new();
    let (mut out, mut done) = (Vec::new(), 0usize);
    let end = frames.last().map_or(0, |l| l + 1);
    footage.for_each(
        end,
        |i| frames.binary_search(&i).is_ok(),
        |frame| {
            let image = RgbImage::new(frame.rgb, frame.width, frame.height)?;
            for detection in detector.detect(&[image], &options)?.remove(0) {
                out.push(ImageDetection {
                    image_id: frame.index + 1,
                    detection,
                });
            }
            done += 1;
            progress.update("eval", done, frames.len(), "");
            Ok(true)
        },
    )?;
    Ok(out)
}

pub fn scores_json(e: &Evaluation) -> Value {
    json!({
        "ap": e.ap, "ap50": e.ap50, "ap75": e.ap75,
        "perClass": e.per_class.iter().map(|c| json!({
            "class": labels::name(c.class_id), "groundTruth": c.ground_truth,
            "ap": c.ap, "ap50": c.ap50, "ap75": c.ap75,
        })).collect::<Vec<_>>(),
        // Precision at IoU 0.5 at recall 0, 0.01, ..., 1: the precision-recall curve per class.
        "pr50": e.curves50.iter().map(|(class, precision)| json!({
            "class": labels::name(*class),
            "precision": precision.iter().map(|p| (p * 1e4).round() / 1e4).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_table(e: &Evaluation) {
    let f = |v: Option<f64>| v.map_or("   n/a".to_string(), |v| format!("{v:6.3}"));
    println!(
        "{:<16} {:>8} {:>6} {:>6} {:>6}",
        "class", "objects", "AP", "AP50", "AP75"
    );
    for c in &e.per_class {
        println!(
            "{:<16} {:>8} {} {} {}",
            labels::name(c.class_id).unwrap_or("?"),
            c.ground_truth,
            f(c.ap),
            f(c.ap50),
            f(c.ap75)
        );
    }
    println!("{:<16} {:>8} {} {} {}", "mean", "", f(e.ap), f(e.ap50), f(e.ap75));
}

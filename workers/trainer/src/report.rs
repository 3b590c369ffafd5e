//! The job's report (`report.json`): what was trained on, how it went, and what it bought.

use autotuner_detect::eval::{Evaluation, Gain};
use serde::{Deserialize, Serialize};

use crate::cache::CacheKind;
use crate::dataset::{Dataset, Skipped};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub classification_loss: f64,
    pub localization_loss: f64,
    /// Eval AP after the epoch; `None` for epochs not evaluated (`--eval-every`).
    pub ap: Option<f64>,
    pub ap50: Option<f64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClassReport {
    pub class: String,
    pub class_id: u32,
    pub ground_truth: usize,
    pub ap: Option<f64>,
    pub ap50: Option<f64>,
    pub ap75: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvalReport {
    pub ap: Option<f64>,
    pub ap50: Option<f64>,
    pub ap75: Option<f64>,
    pub per_class: Vec<ClassReport>,
}

impl From<&Evaluation> for EvalReport {
    fn from(e: &Evaluation) -> Self {
        Self {
            ap: e.ap,
            ap50: e.ap50,
            ap75: e.ap75,
            per_class: e
                .per_class
                .iter()
                .map(|c| ClassReport {
                    class: autotuner_detect::labels::name(c.class_id)
                        .unwrap_or("?")
                        .to_string(),
                    class_id: c.class_id,
                    ground_truth: c.ground_truth,
                    ap: c.ap,
                    ap50: c.ap50,
                    ap75: c.ap75,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SplitReport {
    pub images: usize,
    pub boxes: usize,
    pub ignore_regions: usize,
    /// Training views per image (the image and its augmented copies).
    pub views: usize,
    pub skipped: Skipped,
}

impl SplitReport {
    pub fn of(d: &Dataset, views: usize) -> Self {
        Self {
            images: d.samples.len(),
            boxes: d.boxes(),
            ignore_regions: d.samples.iter().map(|s| s.ignore.len()).sum(),
            views,
            skipped: d.skipped.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheReport {
    pub kind: CacheKind,
    pub items: usize,
    pub bytes: usize,
    pub budget_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    pub load_seconds: f64,
    pub features_seconds: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub export_seconds: f64,
    pub total_seconds: f64,
    pub steps: u64,
    pub seconds_per_step: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    pub path: String,
    /// Largest difference between ONNX Runtime on the exported model and the burn model, over
    /// the box encodings and the trained classes' logits.
    pub max_difference: f32,
    pub verified_images: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub trainable_layers: String,
    pub backend: String,
    pub frozen_features: String,
    pub classes: Vec<String>,
    pub epochs_requested: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub schedule: String,
    /// The decay of the weight average that was judged and exported (absent: the last step's
    /// weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_average: Option<f64>,
    pub train: SplitReport,
    pub eval: SplitReport,
    /// The eval split was cut to the frames decoded since then (the round's), in ms since the
    /// epoch; unset when it was judged whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_since_ms: Option<u64>,
    pub cache: Option<CacheReport>,
    pub timing: Timing,
    pub epochs: Vec<EpochRecord>,
    pub resumed_from_epoch: Option<usize>,
    /// The epoch whose weights were exported (the best on the eval split).
    pub selected_epoch: usize,
    pub before: EvalReport,
    pub after: EvalReport,
    /// `after` over `before` on the same images, with how much of it the images support.
    /// `None` without ground truth in the eval split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gain: Option<GainReport>,
    pub export: ExportReport,
}

/// The candidate's gain over the model the run started from, on the eval split, and its
/// one-sided 95% lower bound from a paired bootstrap over the split's images: the figure the
/// promotion gate holds against `spec.rollout.minImprovement` (a gain that rests on a few lucky
/// images of a small split does not clear it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GainReport {
    pub ap: f64,
    pub ap_lower_bound: f64,
    pub ap50: f64,
    pub ap50_lower_bound: f64,
    pub draws: usize,
}

impl From<Gain> for GainReport {
    fn from(g: Gain) -> Self {
        Self {
            ap: g.ap,
            ap_lower_bound: g.ap_lower_bound,
            ap50: g.ap50,
            ap50_lower_bound: g.ap50_lower_bound,
            draws: g.draws,
        }
    }
}

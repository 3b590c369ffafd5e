//! The observed state of one camera's tuning loop, written through the status subresource.
//!
//! Bounded by design: conditions are a map keyed by type (one entry per type, updated in place),
//! and history lives in Events and the trainer's reports, not here.
//!
//! Several writers share it by server-side apply, each sending only the fields it owns (hence
//! every field is optional and omitted when unset): the operator owns the phase, conditions,
//! iteration, deadline and current model; the capture worker the dataset counts and drift
//! checks; the trainer the candidate model. See [`crate::contract`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a CameraTuning is in its loop.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Not reconciled yet (what a CameraTuning without a status counts as).
    #[default]
    Pending,
    /// Selecting frames and collecting teacher labels.
    Capturing,
    /// A fine-tuning Job runs.
    Training,
    /// The tuned student is being compared with the deployed one.
    Evaluating,
    /// A tuned student runs on the camera's node.
    Deployed,
    /// The deployed student is checked against the teacher periodically.
    Monitoring,
    /// Drift was detected; a new iteration trains on the accumulated data.
    Retraining,
    /// Stopped; the Degraded condition says why and what to do.
    Failed,
}

/// Observed state of a CameraTuning.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CameraTuningStatus {
    /// Current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Progressing, Degraded and DriftDetected; one entry per type. Also Reconciling and
    /// Stalled, the two conditions kstatus (Flux, kpt) reads: Reconciling is True while the loop
    /// works towards a tuned student, Stalled when it stopped and needs a person.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Progress of frame selection and annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetStatus>,

    /// The student deployed on the camera's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_model: Option<ModelStatus>,

    /// The model `currentModel` replaced: the operator rolls back to it when the edge refuses
    /// the new one or the new one's first drift checks fall behind it (`spec.rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_model: Option<ModelStatus>,

    /// The last model the operator rolled back, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_model: Option<RefusedModel>,

    /// The last comparison of the deployed student with the teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drift_check: Option<DriftCheckStatus>,

    /// The last model a training Job reported (written by the trainer); it replaces
    /// `currentModel` only when better by `spec.rollout.minImprovement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_model: Option<ModelStatus>,

    /// What the camera's node serves (written by the capture worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<InferenceStatus>,

    /// Finished training iterations (the first tuning is iteration 1; each retraining adds one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub iteration: Option<u32>,
}

/// Counts reported by the capture worker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// Decoded frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_seen: Option<u64>,
    /// Frames with motion that were selected for annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_selected: Option<u64>,
    /// Selected frames the teacher has labelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated: Option<u64>,
    /// Images in the training split now (at most `drift.maxDatasetSize`: newer images replace
    /// the oldest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<u64>,
    /// Images in the evaluation split now (the latest `dataset.evalSize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<u64>,
    /// Training images stored since capture began, those replaced since included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_stored: Option<u64>,
    /// When this round of collection began, by the camera node's clock: the time of the drift
    /// check that started it (written by the operator). Unset in the first round, which counts
    /// every image. A round counts, and its Job judges on, only frames decoded since: frames
    /// selected before, still waiting for the teacher when the round began, are of the scene
    /// that drifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_started_at: Option<Time>,
    /// The images of this round, as the capture worker counted them for `roundStartedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<RoundImages>,
    /// The round trains at this time even if it has not collected `dataset.trainSize` training
    /// and `dataset.evalSize` evaluation images (with at least `training.minTrainSize` and
    /// `training.minEvalSize`). Unset while a training Job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
}

/// The images of a round of collection in each split, those decoded since `since`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoundImages {
    /// The `roundStartedAt` these counts are for.
    pub since: Time,
    pub train: u64,
    pub eval: u64,
}

impl DatasetStatus {
    /// Training images of this round: every stored one in the first round; after a drift, those
    /// the capture worker counted since the round began (none until it has counted for this
    /// round, so a count of the last round never starts training early).
    pub fn round_images(&self) -> u64 {
        match &self.round_started_at {
            None => self.train_stored.or(self.train).unwrap_or(0),
            Some(started) => self.round_count(started).map_or(0, |r| r.train),
        }
    }

    /// Evaluation images of this round, on the volume now: the whole split in the first round;
    /// after a drift, those the capture worker counted since the round began (the Job judges its
    /// candidate on these).
    pub fn round_eval_images(&self) -> u64 {
        match &self.round_started_at {
            None => self.eval.unwrap_or(0),
            Some(started) => self.round_count(started).map_or(0, |r| r.eval),
        }
    }

    /// The worker's count, when it is for the round that began at `started`.
    fn round_count(&self, started: &Time) -> Option<&RoundImages> {
        self.round.as_ref().filter(|r| r.since == *started)
    }
}

/// A trained student and how good it is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// Iteration that produced the model.
    pub version: u32,
    /// Where the exported ONNX model is.
    #[schemars(length(max = 2048))]
    pub uri: String,
    /// COCO mAP@[.5:.95] on the eval split.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub map: f64,
    /// mAP@0.5 on the eval split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub map50: Option<f64>,
    /// mAP@[.5:.95] on the same split of the model the Job started from (the deployed student,
    /// or the off-the-shelf one the first time): the bar a candidate must clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub baseline_map: Option<f64>,
    /// mAP@0.5 on the same split of the model the Job started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub baseline_map50: Option<f64>,
    /// The one-sided 95% lower bound of `map` minus `baselineMap`, from a paired bootstrap over
    /// the eval split's images: what the gate holds against `spec.rollout.minImprovement` (with
    /// the gain itself, whichever is lower). Unset: the gain alone decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1.0, max = 1.0))]
    pub map_gain_lower_bound: Option<f64>,
    /// When training finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_at: Option<Time>,
}

/// One drift check, written by the capture worker.
///
/// Over the last `spec.drift.sampleSize` drift samples (frames the teacher labelled that are never
/// trained on), the served student's AP@0.5 against the teacher's labels (`ap50`), divided by the
/// AP@0.5 the same model reached on the eval split when it was promoted (`currentModel.map50`):
/// 1.0 means as good as when deployed; below `spec.drift.minRelativeAccuracy` the loop retrains.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftCheckStatus {
    /// When the check ran.
    pub time: Time,
    /// `ap50` divided by the model's AP@0.5 at promotion (1 = as good as when deployed).
    #[schemars(range(min = 0.0))]
    pub relative_accuracy: f64,
    /// Frames compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_size: Option<u32>,
    /// The version of the model checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<u32>,
    /// Its AP@0.5 against the teacher's labels on the samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ap50: Option<f64>,
    /// During a new model's probation (`spec.rollout.probationChecks`): the previous model's
    /// AP@0.5 on the same samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub previous_model_ap50: Option<f64>,
}

/// The student on the camera's node, as the capture worker reports it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferenceStatus {
    /// The model serving detections now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ServedModel>,
    /// The last model the node refused (it could not be fetched or loaded, or it failed its
    /// check on a frame); the previous model kept serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_model: Option<RefusedModel>,
}

/// A model the camera's node serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServedModel {
    /// The iteration that produced it (0: the off-the-shelf student).
    pub version: u32,
    /// Where it came from.
    #[schemars(length(max = 2048))]
    pub uri: String,
    /// When it started serving.
    pub since: Time,
}

/// A model the camera's node refused.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RefusedModel {
    /// The iteration that produced it.
    pub version: u32,
    #[schemars(length(max = 2048))]
    pub uri: String,
    /// Why, and what to check.
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// The node could not fetch it and tries again every 30 s (a model that does not load is not
    /// tried again); the operator rolls back only a refusal that is not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrying: Option<bool>,
    /// When it was refused.
    pub time: Time,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn the_first_round_counts_every_stored_image_and_a_later_one_only_its_own() {
        let mut dataset = DatasetStatus {
            train: Some(40),
            train_stored: Some(130),
            eval: Some(7),
            ..DatasetStatus::default()
        };
        assert_eq!(dataset.round_images(), 130);
        assert_eq!(dataset.round_eval_images(), 7);
        dataset.round_started_at = Some(at(1_000));
        assert_eq!(dataset.round_images(), 0, "not counted for this round yet");
        assert_eq!(dataset.round_eval_images(), 0, "not counted for this round yet");
        dataset.round = Some(RoundImages {
            since: at(900),
            train: 40,
            eval: 20,
        });
        assert_eq!(dataset.round_images(), 0, "a count of the last round");
        assert_eq!(dataset.round_eval_images(), 0, "a count of the last round");
        dataset.round = Some(RoundImages {
            since: at(1_000),
            train: 12,
            eval: 5,
        });
        assert_eq!(dataset.round_images(), 12);
        assert_eq!(dataset.round_eval_images(), 5);
    }
}

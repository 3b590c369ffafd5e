//! Which layers of the student a fine-tuning run trains: a setting of the CRD
//! (`spec.training.trainableLayers`), the trainer's Job and the standalone run alike, so it lives
//! outside the Kubernetes types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which layers of the student are fine-tuned.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum TrainableLayers {
    /// Only the box-predictor heads: cheapest (the backbone's features are cached), but on
    /// PETS09 it closes about a third of the gap to the teacher.
    BoxRegression,
    /// The heads and the last blocks of the feature extractor.
    Top,
    /// The heads and the feature extractor from its first block at 1/16 of the input's
    /// resolution on: the six blocks before it (most of the per-step cost at full resolution)
    /// keep their pretrained weights and are computed once per image.
    Upper,
    /// Every layer but the stem: the feature extractor from its first block at 1/8 of the
    /// input's resolution on. The first convolution and blocks 0-2 (1/2 and 1/4 resolution) keep
    /// their pretrained weights and are computed once per image. The default: on PETS09 and
    /// TUD-Campus as accurate as `unfrozen`, at 0.6x the time per step
    /// (bench-results/trainer-most.json).
    #[default]
    Most,
    /// Every layer.
    Unfrozen,
}

impl TrainableLayers {
    /// The name the CRD and the workers' flags use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BoxRegression => "boxRegression",
            Self::Top => "top",
            Self::Upper => "upper",
            Self::Most => "most",
            Self::Unfrozen => "unfrozen",
        }
    }
}

impl std::str::FromStr for TrainableLayers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "boxRegression" => Ok(Self::BoxRegression),
            "top" => Ok(Self::Top),
            "upper" => Ok(Self::Upper),
            "most" => Ok(Self::Most),
            "unfrozen" => Ok(Self::Unfrozen),
            other => Err(format!(
                "trainable layers {other:?}: expected boxRegression, top, upper, most or unfrozen"
            )),
        }
    }
}

//! The contract between the operator and the workers it starts: how a worker learns what to do
//! (environment variables) and how it reports back (server-side apply of its own status fields,
//! under its own field manager, with a Role that allows exactly that on its own CameraTuning).
//!
//! Every environment variable a worker reads is named here and nowhere else.

#[cfg(feature = "crd")]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
#[cfg(feature = "crd")]
use serde::{Deserialize, Serialize};

#[cfg(feature = "crd")]
use crate::{CameraTuningSpec, TrainableLayers};

/// Name of the CameraTuning a worker serves.
pub const ENV_NAME: &str = "AUTOTUNER_CAMERATUNING";
/// Its namespace.
pub const ENV_NAMESPACE: &str = "AUTOTUNER_NAMESPACE";
/// Base URL of the annotator (the teacher's HTTP API).
pub const ENV_ANNOTATOR_URL: &str = "AUTOTUNER_ANNOTATOR_URL";
/// Bearer token for the annotator, from the Secret the spec names.
pub const ENV_ANNOTATOR_TOKEN: &str = "AUTOTUNER_ANNOTATOR_TOKEN";
/// The annotator's CA certificate(s), PEM, for an `https://` annotator (from the Secret the spec
/// names): the capture worker trusts these alone for it.
pub const ENV_ANNOTATOR_CA: &str = "AUTOTUNER_ANNOTATOR_CA";
/// The stream's user name and password, from the Secret the spec names.
pub const ENV_CAMERA_USERNAME: &str = "AUTOTUNER_CAMERA_USERNAME";
pub const ENV_CAMERA_PASSWORD: &str = "AUTOTUNER_CAMERA_PASSWORD";
/// What a training Job is asked to do: a [`TrainingSettings`] as JSON. (The capture worker reads
/// its settings and the model it serves from its CameraTuning, so that an edit or a new model
/// takes effect without a second copy of the spec.)
pub const ENV_TRAINING: &str = "AUTOTUNER_TRAINING";
/// The MQTT broker's user name and password, from the Secret `spec.inference.mqtt` names.
pub const ENV_MQTT_USERNAME: &str = "AUTOTUNER_MQTT_USERNAME";
pub const ENV_MQTT_PASSWORD: &str = "AUTOTUNER_MQTT_PASSWORD";
/// Object storage credentials: the standard AWS names, in the pod's environment and as the keys
/// of the Secret `dataset.storage.s3.credentialsSecretRef` names.
pub const ENV_AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// The operator's own settings (the chart and `manifests/operator` set the image).
pub const ENV_WORKER_IMAGE: &str = "AUTOTUNER_WORKER_IMAGE";
pub const ENV_METRICS_ADDRESS: &str = "AUTOTUNER_METRICS_ADDRESS";
pub const ENV_CONCURRENCY: &str = "AUTOTUNER_CONCURRENCY";
pub const ENV_WATCH_NAMESPACE: &str = "AUTOTUNER_WATCH_NAMESPACE";

/// Development knobs read by crates that know nothing of this contract (`detect`, `vision`) and
/// by the test harness; never set in a pod. Listed so that the check that every other name lives
/// here can tell them apart.
pub const DEVELOPMENT_VARIABLES: &[&str] = &[
    "AUTOTUNER_ASSETS",
    "AUTOTUNER_CONTROLPLANE_BIN",
    "AUTOTUNER_IMAGES",
    "AUTOTUNER_PROMETHEUS_BIN",
    "AUTOTUNER_VISION_SIMD",
];

/// JSON log lines (for a cluster's log pipeline) instead of text.
pub const ENV_LOG_JSON: &str = "AUTOTUNER_LOG_JSON";
/// ONNX Runtime's shared library in worker images (the variable the `ort` crate reads).
pub const ENV_ONNXRUNTIME: &str = "ORT_DYLIB_PATH";
/// The teacher model the annotator serves, and its detector family.
pub const ENV_TEACHER_URI: &str = "AUTOTUNER_TEACHER_URI";
pub const ENV_TEACHER_FAMILY: &str = "AUTOTUNER_TEACHER_FAMILY";
/// Where the dataset lives: a directory (a mounted volume) or an `s3://bucket/prefix` URI.
pub const ENV_DATASET_URI: &str = "AUTOTUNER_DATASET_URI";
/// S3 endpoint and region, when the dataset is in object storage.
pub const ENV_S3_ENDPOINT: &str = "AUTOTUNER_S3_ENDPOINT";
pub const ENV_S3_REGION: &str = "AUTOTUNER_S3_REGION";
/// Where a worker keeps what must survive a restart of its process but need not outlive the pod
/// (the trainer's mirror of a remote dataset; the capture worker's spool when the operator mounts
/// no volume for it).
pub const ENV_WORK_DIR: &str = "AUTOTUNER_WORK_DIR";
/// The capture worker's spool of selected frames awaiting the teacher. In S3 mode the operator
/// mounts a claim here, so frames not yet labelled outlive the pod.
pub const ENV_SPOOL_DIR: &str = "AUTOTUNER_SPOOL_DIR";
/// Mount point of the capture worker's claim in S3 mode: the spool ([`SPOOL_MOUNT`]`/entries`)
/// and the work folder ([`SPOOL_MOUNT`]`/work`: the working copy of the dataset, drift samples
/// included, and the fetched models), so none of it goes with the pod.
pub const SPOOL_MOUNT: &str = "/spool";

/// The settings of one training Job, rendered by the operator from the spec into [`ENV_TRAINING`]
/// (one typed value, so the two sides cannot disagree on a name or a unit).
#[cfg(feature = "crd")]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSettings {
    /// The iteration this Job trains (1: the first tuning).
    pub iteration: u32,
    /// The student it starts from: the deployed model, or `training.student` the first time.
    pub base_model_uri: String,
    /// At most this many training images, the most recent (`drift.maxDatasetSize`).
    pub dataset_cap: u32,
    /// `training.epochs`, `training.batchSize`, `training.learningRate`,
    /// `training.trainableLayers`.
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub trainable_layers: TrainableLayers,
    /// `status.dataset.roundStartedAt` of the round this Job trains on (unset for the first):
    /// the Job judges the candidate, and the model it starts from, on the eval images selected
    /// since, the scene the camera shows now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_started_at: Option<Time>,
}

#[cfg(feature = "crd")]
impl TrainingSettings {
    pub fn new(
        spec: &CameraTuningSpec,
        iteration: u32,
        base_model_uri: &str,
        round_started_at: Option<&Time>,
    ) -> Self {
        Self {
            iteration,
            base_model_uri: base_model_uri.to_string(),
            dataset_cap: spec.drift.max_dataset_size,
            epochs: spec.training.epochs,
            batch_size: spec.training.batch_size,
            learning_rate: spec.training.learning_rate,
            trainable_layers: spec.training.trainable_layers,
            round_started_at: round_started_at.cloned(),
        }
    }

    /// The value of [`ENV_TRAINING`].
    pub fn to_env_value(&self) -> String {
        serde_json::to_string(self).expect("settings serialise")
    }

    pub fn from_env_value(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("{ENV_TRAINING}: {e}"))
    }
}

/// A time as the workers record when a frame was decoded: milliseconds since the Unix epoch
/// (`None` before it).
#[cfg(feature = "crd")]
pub fn epoch_ms(time: &Time) -> Option<u64> {
    u64::try_from(time.0.as_millisecond()).ok()
}

/// The inverse of [`epoch_ms`] (`None` past the range of a Kubernetes time).
#[cfg(feature = "crd")]
pub fn time_at_epoch_ms(ms: u64) -> Option<Time> {
    let ms = i64::try_from(ms).ok()?;
    k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok().map(Time)
}

/// The defaults the CRD writes into a spec and the standalone run (`autotuner tune`) and the
/// trainer's flags use: one source, chosen from the measurements in `bench-results/`
/// (`tune-default.json`: every layer, 2 epochs of a cosine schedule from 1e-4, batch 16, closes
/// 53% of the AP gap and 61% of the AP@0.5 gap to the teacher on PETS09, where the heads alone
/// for 8 epochs close about a third; every measured run used 1e-4).
pub mod defaults {
    /// With every layer trained (`TrainableLayers::default()`), the second epoch of a cosine
    /// schedule was the best of four on PETS09; eight epochs are for the heads alone.
    pub const EPOCHS: u32 = 2;
    pub const BATCH_SIZE: u32 = 16;
    pub const LEARNING_RATE: f64 = 1e-4;
    /// `rollout.minImprovement`: how much mAP a candidate must gain (its lower bound, see
    /// [`crate::promotion::clears`]) over the model it started from.
    pub const MIN_IMPROVEMENT: f64 = 0.01;
    /// `training.minEvalSize`: the fewest eval images a round trains with (at its deadline), so
    /// the fewest a candidate is ever judged on. On fewer a bootstrap bound says little.
    pub const MIN_EVAL_SIZE: u32 = 20;
}

/// The dataset's layout under [`ENV_DATASET_URI`]: COCO JSON per split, the capture worker writes
/// them and the trainer reads them (image paths are relative to each file). Beside each, a
/// journal of the changes since it was last written whole (`annotations.jsonl`,
/// `autotuner_store::journal`), which readers replay.
pub const DATASET_TRAIN_FILE: &str = "train/annotations.json";
pub const DATASET_EVAL_FILE: &str = "eval/annotations.json";
/// Every split a training Job needs: it trains on one and judges its candidate on the other.
pub const DATASET_SPLIT_FILES: [&str; 2] = [DATASET_TRAIN_FILE, DATASET_EVAL_FILE];

/// The trainer's exit status when the dataset lacks a split it needs (capture has not written
/// it yet). The Job's pod failure policy does not count such an attempt against
/// `training.maxRetries`: the next attempt takes a new snapshot (EX_TEMPFAIL of sysexits.h).
pub const EXIT_DATASET_INCOMPLETE: i32 = 75;

/// Where the trainer of `iteration` keeps its checkpoints and report, under the dataset.
pub fn training_run_dir(iteration: u32) -> String {
    format!("runs/{iteration}")
}

/// Where the trainer of `iteration` writes the tuned model, under the dataset.
pub fn model_file(iteration: u32) -> String {
    format!("models/{iteration}.onnx")
}

/// Mount point of the dataset volume in worker pods.
pub const DATASET_MOUNT: &str = "/data";

/// Field manager of the capture worker: owns `status.dataset` counts and `status.lastDriftCheck`.
pub const CAPTURE_FIELD_MANAGER: &str = "autotuner-capture";
/// Field manager of the trainer: owns `status.candidateModel`.
pub const TRAINER_FIELD_MANAGER: &str = "autotuner-trainer";
/// Field manager of the operator: owns everything else in the status.
pub const OPERATOR_FIELD_MANAGER: &str = "autotuner-operator";

/// Port of the capture worker's HTTP server: `/metrics`, the detections, health.
pub const CAPTURE_PORT: u16 = 9090;

/// Port of the annotator's HTTP API (HTTPS with `annotation.teacher.tlsSecretName`).
pub const ANNOTATOR_PORT: u16 = 8080;
/// With an HTTPS API, the annotator's probes and `/metrics` over plain HTTP.
pub const ANNOTATOR_PLAIN_PORT: u16 = 9090;
/// Where the annotator's TLS Secret is mounted (`tls.crt`, `tls.key`).
pub const ANNOTATOR_TLS_MOUNT: &str = "/tls";

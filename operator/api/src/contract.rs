//! The contract between the operator and the workers it starts: how a worker learns what to do
//! (environment variables) and how it reports back (server-side apply of its own status fields,
//! under its own field manager, with a Role that allows exactly that on its own CameraTuning).

/// Name of the CameraTuning a worker serves.
pub const ENV_NAME: &str = "AUTOTUNER_CAMERATUNING";
/// Its namespace.
pub const ENV_NAMESPACE: &str = "AUTOTUNER_NAMESPACE";
/// Base URL of the annotator (the teacher's HTTP API).
pub const ENV_ANNOTATOR_URL: &str = "AUTOTUNER_ANNOTATOR_URL";
/// Bearer token for the annotator, from the Secret the spec names.
pub const ENV_ANNOTATOR_TOKEN: &str = "AUTOTUNER_ANNOTATOR_TOKEN";
/// The stream's user name and password, from the Secret the spec names.
pub const ENV_CAMERA_USERNAME: &str = "AUTOTUNER_CAMERA_USERNAME";
pub const ENV_CAMERA_PASSWORD: &str = "AUTOTUNER_CAMERA_PASSWORD";
/// The student a training Job starts from. (The capture worker reads the model it serves from
/// its CameraTuning, so that a new one is swapped in without restarting the pod.)
pub const ENV_MODEL_URI: &str = "AUTOTUNER_MODEL_URI";
/// The MQTT broker's user name and password, from the Secret `spec.inference.mqtt` names.
pub const ENV_MQTT_USERNAME: &str = "AUTOTUNER_MQTT_USERNAME";
pub const ENV_MQTT_PASSWORD: &str = "AUTOTUNER_MQTT_PASSWORD";
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
/// The training iteration a Job runs, and the cap on the training images it uses.
pub const ENV_ITERATION: &str = "AUTOTUNER_ITERATION";
pub const ENV_DATASET_CAP: &str = "AUTOTUNER_DATASET_CAP";

/// The dataset's layout under [`ENV_DATASET_URI`]: COCO JSON per split, the capture worker writes
/// them and the trainer reads them (image paths are relative to each file).
pub const DATASET_TRAIN_FILE: &str = "train/annotations.json";
pub const DATASET_EVAL_FILE: &str = "eval/annotations.json";

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

/// Port of the annotator's HTTP API.
pub const ANNOTATOR_PORT: u16 = 8080;

//! The desired state of one camera's tuning loop.
//!
//! Every field is validated by the API server: bounds live in the schema (schemars attributes),
//! rules that relate fields to each other are CEL `x-kubernetes-validations` (the `x_kube`
//! attributes), each with a message that says what to change. Defaults are the reference
//! method's values and are written into the schema, so the server applies them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::TrainableLayers;
use crate::status::CameraTuningStatus;

/// A Go-style duration ("90s", "15m", "24h", "1h30m"): what `duration()` in CEL accepts. It is
/// pasted into CEL string literals, hence `[.]` rather than a backslash escape.
const DURATION_PATTERN: &str = "^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$";

/// Tunes the small student detector of one static camera on labels from a large teacher.
// clippy reads the repeated `type_` keys of separate `printcolumn(...)` groups as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "autotuner.io",
    version = "v1alpha1",
    kind = "CameraTuning",
    plural = "cameratunings",
    singular = "cameratuning",
    shortname = "camtune",
    category = "autotuner",
    namespaced,
    status = "CameraTuningStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Train",
        type_ = "integer",
        json_path = ".status.dataset.train",
        description = "Annotated training images collected so far"
    ),
    printcolumn(
        name = "Target",
        type_ = "integer",
        json_path = ".spec.dataset.trainSize",
        description = "Training images wanted before fine-tuning starts"
    ),
    printcolumn(
        name = "mAP",
        type_ = "number",
        json_path = ".status.currentModel.map",
        description = "COCO mAP@[.5:.95] of the deployed student on the eval split"
    ),
    printcolumn(
        name = "Drift",
        type_ = "number",
        json_path = ".status.lastDriftCheck.relativeAccuracy",
        description = "Student accuracy relative to the teacher at the last drift check"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40")
        .message("metadata.name must be at most 40 characters: the names of the Jobs and Pods made for it derive from it")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("self.dataset.evalSize < self.dataset.trainSize")
        .message("dataset.evalSize must be smaller than dataset.trainSize")
        .field_path(".dataset.evalSize")
        .reason(Reason::FieldValueInvalid),
    validation = Rule::new("self.training.minTrainSize <= self.dataset.trainSize")
        .message("training.minTrainSize (images needed to train at the deadline) must not exceed dataset.trainSize")
        .field_path(".training.minTrainSize")
        .reason(Reason::FieldValueInvalid),
    validation = Rule::new("self.drift.maxDatasetSize >= self.dataset.trainSize")
        .message("drift.maxDatasetSize caps the accumulated dataset and must be at least dataset.trainSize")
        .field_path(".drift.maxDatasetSize")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct CameraTuningSpec {
    /// The video source and the node it is reachable from.
    pub camera: CameraSpec,

    /// Object classes to tune for, as the teacher names them (COCO names such as `person`, `car`).
    #[schemars(
        length(min = 1, max = 80),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([a-z0-9 _-]*[a-z0-9])?$")
        )
    )]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub classes: Vec<String>,

    /// Motion detection on the camera's node: which frames and regions go to the teacher.
    #[serde(default)]
    pub motion: MotionSpec,

    /// How many frames are looked at and how many crops may be uploaded (the bandwidth budget).
    #[serde(default)]
    pub sampling: SamplingSpec,

    /// Who labels the selected crops: a teacher model the operator serves, or an existing endpoint.
    pub annotation: AnnotationSpec,

    /// How many labelled images to collect, and where to keep them.
    #[serde(default)]
    pub dataset: DatasetSpec,

    /// The student model and how it is fine-tuned.
    pub training: TrainingSpec,

    /// Periodic comparison of the deployed student with the teacher; retraining when it falls behind.
    #[serde(default)]
    pub drift: DriftSpec,

    /// When a newly tuned student replaces the deployed one.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// The deployed student on the camera's node: how often it runs and where its detections go.
    #[serde(default)]
    pub inference: InferenceSpec,
}

/// The camera's stream and placement of the capture workload.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.nodeName) != has(self.nodeSelector)")
        .message("set exactly one of camera.nodeName or camera.nodeSelector: the capture pod must run on the camera's node")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.credentialsSecretRef) || !self.url.startsWith('file://')")
        .message("camera.credentialsSecretRef is only used with network streams; remove it for file:// URLs")
        .field_path(".credentialsSecretRef")
        .reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct CameraSpec {
    /// Stream URL: `rtsp://` or `rtsps://`, `http(s)://` (MJPEG, HLS or a video file), or `file://`.
    /// Credentials never go into the URL: use `credentialsSecretRef`.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.matches('^(rtsps?|https?|file)://.+')")
            .message("camera.url must start with rtsp://, rtsps://, http://, https:// or file://")
            .reason(Reason::FieldValueInvalid),
        validation = Rule::new("!self.matches('^[a-z]+://[^/]*@')")
            .message("camera.url must not contain user:password@; put the credentials in a Secret and reference it in camera.credentialsSecretRef")
            .reason(Reason::FieldValueForbidden),
    )]
    pub url: String,

    /// A Secret in this namespace holding the stream's user name and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,

    /// The camera's node, by name. Exactly one of `nodeName` and `nodeSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node_name: Option<String>,

    /// Labels that select the camera's node. Exactly one of `nodeName` and `nodeSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minProperties" = 1, "maxProperties" = 16))]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Compute resources of the capture pod (decoding, motion detection, edge inference). Unset:
    /// requests 250m CPU and 256Mi, memory limit 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// A Secret with a user name and a password, for a camera stream.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the CameraTuning's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key of the user name in the Secret.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// One key of a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the CameraTuning's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// How the background is modelled.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum BackgroundModel {
    /// Pixel-wise median of recent sampled frames, smoothed by a median of recent backgrounds.
    /// Robust to objects passing through; stationary objects fold in after a while.
    #[default]
    Median,
    /// The first frame is the background (only for scenes that start empty and never change light).
    FirstFrame,
}

/// Motion detection: blur, difference against the background, threshold, dilate, contours.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MotionSpec {
    /// Background model.
    #[serde(default)]
    pub background: BackgroundModel,

    /// Frames in one median background (N).
    #[serde(default = "default_median_frames")]
    #[schemars(range(min = 1, max = 255))]
    pub median_frames: u32,

    /// Take one frame into the median every `medianFrameSkip` frames.
    #[serde(default = "default_median_frame_skip")]
    #[schemars(range(min = 1, max = 10000))]
    pub median_frame_skip: u32,

    /// Backgrounds in the moving median that is actually used (M).
    #[serde(default = "default_background_history")]
    #[schemars(range(min = 1, max = 32))]
    pub background_history: u32,

    /// Rebuild the background from scratch this often (a Go duration such as `10m`).
    #[serde(default = "default_background_reset_interval")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DURATION_PATTERN}') && duration(self) >= duration('1s')"))
        .message("motion.backgroundResetInterval must be a duration of at least 1s, such as 90s, 10m or 1h")
        .reason(Reason::FieldValueInvalid))]
    pub background_reset_interval: String,

    /// Rebuild the background when more than this fraction of the frame changes at once
    /// (lighting change, camera shake).
    #[serde(default = "default_reset_changed_fraction")]
    #[schemars(range(min = 0.01, max = 1.0))]
    pub reset_changed_fraction: f64,

    /// Side of the square Gaussian blur kernel, in pixels at processing resolution; odd.
    #[serde(default = "default_blur_kernel")]
    #[schemars(range(min = 1, max = 99))]
    #[x_kube(validation = Rule::new("self % 2 == 1")
        .message("motion.blurKernel must be odd, such as 21")
        .reason(Reason::FieldValueInvalid))]
    pub blur_kernel: u32,

    /// Gray-level difference above which a pixel counts as changed.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1, max = 254))]
    pub threshold: u32,

    /// Dilations of the changed-pixel mask with a 5x5 kernel, to join the parts of one object.
    #[serde(default = "default_dilate_iterations")]
    #[schemars(range(min = 0, max = 10))]
    pub dilate_iterations: u32,

    /// Regions smaller than this many pixels (at full resolution) are ignored.
    #[serde(default = "default_min_region_area")]
    #[schemars(range(min = 0, max = 100000000))]
    pub min_region_area: u32,

    /// Process frames scaled down to this width (boxes are mapped back to full resolution).
    /// Unset: full resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 7680))]
    pub processing_width: Option<u32>,

    /// Areas to ignore (a clock overlay, trees in the wind), as polygons in coordinates
    /// relative to the frame (0..1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Atomic)]
    pub masks: Vec<MaskPolygon>,
}

// The reference method's parameters.
fn default_median_frames() -> u32 {
    25
}
fn default_median_frame_skip() -> u32 {
    10
}
fn default_background_history() -> u32 {
    5
}
fn default_background_reset_interval() -> String {
    "10m".into()
}
fn default_reset_changed_fraction() -> f64 {
    0.6
}
fn default_blur_kernel() -> u32 {
    21
}
fn default_threshold() -> u32 {
    25
}
fn default_dilate_iterations() -> u32 {
    2
}
fn default_min_region_area() -> u32 {
    500
}

impl Default for MotionSpec {
    fn default() -> Self {
        Self {
            background: BackgroundModel::default(),
            median_frames: default_median_frames(),
            median_frame_skip: default_median_frame_skip(),
            background_history: default_background_history(),
            background_reset_interval: default_background_reset_interval(),
            reset_changed_fraction: default_reset_changed_fraction(),
            blur_kernel: default_blur_kernel(),
            threshold: default_threshold(),
            dilate_iterations: default_dilate_iterations(),
            min_region_area: default_min_region_area(),
            processing_width: None,
            masks: Vec::new(),
        }
    }
}

/// A polygon in frame-relative coordinates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaskPolygon {
    /// Vertices in order, at least 3, each `[x, y]` relative to the frame: `[0, 0]` is the
    /// top-left corner, `[1, 1]` the bottom-right one. (Pairs rather than `x:`/`y:` keys, which
    /// YAML 1.1 parsers such as kubectl's read as booleans.)
    #[schemars(length(min = 3, max = 64), inner(inner(range(min = 0.0, max = 1.0))))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Atomic)]
    pub points: Vec<[f64; 2]>,
}

/// Frame sampling and the upload budget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SamplingSpec {
    /// Run motion detection on every `frameSkip`-th decoded frame.
    #[serde(default = "default_frame_skip")]
    #[schemars(range(min = 1, max = 1000))]
    pub frame_skip: u32,

    /// At most this many crops are sent to the teacher per minute.
    #[serde(default = "default_max_uploads_per_minute")]
    #[schemars(range(min = 1, max = 6000))]
    pub max_uploads_per_minute: u32,
}

fn default_frame_skip() -> u32 {
    1
}
fn default_max_uploads_per_minute() -> u32 {
    60
}

impl Default for SamplingSpec {
    fn default() -> Self {
        Self {
            frame_skip: default_frame_skip(),
            max_uploads_per_minute: default_max_uploads_per_minute(),
        }
    }
}

/// Detector output layouts the workers understand.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum DetectorFamily {
    /// YOLO v8/v11/v12 layout: one tensor of box centre, size and class scores per anchor point.
    Yolo,
    /// SSD raw heads (box encodings and class logits); anchors and decoding are the workers'.
    SsdRaw,
    /// TensorFlow Object Detection API graphs with post-processing inside (boxes, scores, classes).
    TfObjectDetection,
}

/// An ONNX model artifact.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelRef {
    /// Where the ONNX file is: `file://` (a path in the worker's volume), `http(s)://` or `s3://`.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(file|https?|s3)://.+')")
        .message("model uri must start with file://, http://, https:// or s3://")
        .reason(Reason::FieldValueInvalid))]
    pub uri: String,

    /// How to read the model's outputs.
    pub family: DetectorFamily,
}

/// Labelling of the selected crops.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.teacher) != has(self.endpoint)")
        .message("set exactly one of annotation.teacher (the operator serves this model) or annotation.endpoint (an annotator that already runs)")
        .reason(Reason::FieldValueRequired),
)]
#[serde(rename_all = "camelCase")]
pub struct AnnotationSpec {
    /// A teacher model for the operator to serve; CameraTunings of a namespace that name the same
    /// teacher share one annotator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherSpec>,

    /// An annotator that already runs, used instead of creating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointSpec>,

    /// Teacher detections below this score are not used as labels; strictly between 0 and 1.
    #[serde(default = "default_confidence_threshold")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0")
        .message("annotation.confidenceThreshold must be strictly between 0 and 1, such as 0.5")
        .reason(Reason::FieldValueInvalid))]
    pub confidence_threshold: f64,

    /// Send the teacher the union of the motion regions (padded to its aspect ratio) instead of the
    /// whole frame: fewer bytes, and more pixels on the objects.
    #[serde(default = "default_true")]
    pub crop_to_motion: bool,
}

fn default_confidence_threshold() -> f64 {
    0.5
}

fn default_true() -> bool {
    true
}

/// A teacher detector served by the operator on GPU nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeacherSpec {
    /// The teacher model.
    pub model: ModelRef,

    /// GPUs (`nvidia.com/gpu`) per annotator pod; 0 runs the teacher on CPU.
    #[serde(default = "default_teacher_gpus")]
    #[schemars(range(min = 0, max = 8))]
    pub gpus: u32,

    /// Labels of the nodes the annotator may run on (GPU nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16))]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Compute resources of the annotator pod, besides the GPUs. Unset: requests 500m CPU and
    /// 512Mi, memory limit 2Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Serve the teacher over HTTPS with the certificate of this `kubernetes.io/tls` Secret in
    /// the namespace: `tls.crt`, `tls.key` and its issuer's `ca.crt`, as cert-manager writes
    /// them, valid for `*.<namespace>.svc` (the annotator's Service is named after a hash of
    /// this spec). The capture workers trust that issuer alone for it; a renewed certificate is
    /// served without a restart. The probes and `/metrics` stay on plain HTTP (port `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub tls_secret_name: Option<String>,
}

fn default_teacher_gpus() -> u32 {
    1
}

/// An annotator that already runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.caSecretRef) || self.url.startsWith('https://')")
        .message("annotation.endpoint.caSecretRef is only used with an https:// url")
        .field_path(".caSecretRef")
        .reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    /// Base URL of the annotator's HTTP API.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/@]+(/.*)?$')")
        .message("annotation.endpoint.url must be an http:// or https:// URL without credentials; use tokenSecretRef for the token")
        .reason(Reason::FieldValueInvalid))]
    pub url: String,

    /// A Secret key holding the bearer token the annotator expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,

    /// For an `https://` url: a Secret key holding the PEM certificate(s) of the annotator's
    /// issuer (`ca.crt` of a cert-manager Secret), trusted instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// Size and storage of the accumulated dataset.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Annotated training images a round collects before fine-tuning starts: the first round,
    /// and each one drift starts (counted from the drift).
    #[serde(default = "default_train_size")]
    #[schemars(range(min = 10, max = 1000000))]
    pub train_size: u32,

    /// Annotated images kept out of training for evaluation, taken from other time spans. The
    /// split keeps the latest this many, so a candidate is judged on the scene as it is now.
    #[serde(default = "default_eval_size")]
    #[schemars(range(min = 1, max = 100000))]
    pub eval_size: u32,

    /// Where images and labels are kept; by default a 10Gi claim the operator creates.
    #[serde(default)]
    pub storage: StorageSpec,
}

fn default_train_size() -> u32 {
    1000
}
fn default_eval_size() -> u32 {
    200
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            train_size: default_train_size(),
            eval_size: default_eval_size(),
            storage: StorageSpec::default(),
        }
    }
}

/// Dataset storage: a PersistentVolumeClaim (one node) or S3-compatible object storage (many nodes).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.persistentVolumeClaim) != has(self.s3)")
    .message("set exactly one of dataset.storage.persistentVolumeClaim or dataset.storage.s3")
    .reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// A PersistentVolumeClaim: an existing one, or one the operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcStorage>,

    /// S3-compatible object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            persistent_volume_claim: Some(PvcStorage {
                claim_name: None,
                size: Some(Quantity("10Gi".into())),
                storage_class_name: None,
            }),
            s3: None,
        }
    }
}

/// A PersistentVolumeClaim for the dataset.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.claimName) != (has(self.size) || has(self.storageClassName))")
    .message("set either claimName (an existing claim) or size and optionally storageClassName (a claim the operator creates)")
    .reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct PvcStorage {
    /// An existing claim in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub claim_name: Option<String>,

    /// Size of the claim the operator creates, such as `10Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))")
        .message("dataset.storage.persistentVolumeClaim.size must be a positive quantity such as 10Gi")
        .reason(Reason::FieldValueInvalid))]
    pub size: Option<Quantity>,

    /// Storage class of the claim the operator creates; unset: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// S3-compatible object storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"))]
    pub bucket: String,

    /// Key prefix under which this camera's dataset is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,

    /// Endpoint of an S3-compatible service (MinIO, Ceph); unset: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/@]+(/.*)?$')")
        .message("dataset.storage.s3.endpoint must be an http:// or https:// URL without credentials")
        .reason(Reason::FieldValueInvalid))]
    pub endpoint: Option<String>,

    /// Region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,

    /// A Secret with the keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret_ref: LocalSecretRef,
}

/// A Secret in the CameraTuning's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LocalSecretRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// Fine-tuning of the student.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.student.family == 'ssdRaw'")
    .message("training.student.family must be ssdRaw: the trainer fine-tunes the raw SSD heads (export the student without post-processing)")
    .field_path(".student.family")
    .reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct TrainingSpec {
    /// The off-the-shelf student (an SSD-MobileNetV2-class detector).
    pub student: ModelRef,

    /// Layers that are trained.
    #[serde(default)]
    pub trainable_layers: TrainableLayers,

    /// Passes over the training split.
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1, max = 1000))]
    pub epochs: u32,

    /// Images per optimisation step.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1024))]
    pub batch_size: u32,

    /// Optimiser learning rate, in (0, 1].
    #[serde(default = "default_learning_rate")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0")
        .message("training.learningRate must be greater than 0 and at most 1, such as 0.0001")
        .reason(Reason::FieldValueInvalid))]
    pub learning_rate: f64,

    /// Train anyway this long after a round of collection started (capture's start, or the
    /// drift that started a retraining), when `dataset.trainSize` is not reached by then (a Go
    /// duration such as `24h`).
    #[serde(default = "default_deadline")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DURATION_PATTERN}') && duration(self) >= duration('1m')"))
        .message("training.deadline must be a duration of at least 1m, such as 90m or 24h")
        .reason(Reason::FieldValueInvalid))]
    pub deadline: String,

    /// At the deadline, train only when at least this many training images exist; otherwise keep
    /// capturing.
    #[serde(default = "default_min_train_size")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_train_size: u32,

    /// At the deadline, train only when the evaluation split holds at least this many of the
    /// round's images as well (at most `dataset.evalSize` are asked for): a candidate is judged
    /// on them, and a Job without them could not judge it. Otherwise the round keeps capturing,
    /// and the Progressing condition says which split is short. Before the deadline a round
    /// waits for `dataset.trainSize` training and `dataset.evalSize` evaluation images.
    #[serde(default = "default_min_eval_size")]
    #[schemars(range(min = 1, max = 100000))]
    pub min_eval_size: u32,

    /// Failed training attempts retried before the CameraTuning fails.
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub max_retries: u32,

    /// Compute resources of the fine-tuning Job. Unset: requests 500m CPU and 1Gi, memory limit 6Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_epochs() -> u32 {
    crate::contract::defaults::EPOCHS
}

fn default_batch_size() -> u32 {
    crate::contract::defaults::BATCH_SIZE
}

fn default_learning_rate() -> f64 {
    crate::contract::defaults::LEARNING_RATE
}

fn default_deadline() -> String {
    "24h".into()
}

fn default_min_train_size() -> u32 {
    100
}

fn default_min_eval_size() -> u32 {
    crate::contract::defaults::MIN_EVAL_SIZE
}

fn default_max_retries() -> u32 {
    2
}

/// Drift monitoring of the deployed student.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftSpec {
    /// Compare the student with the teacher: every `checkInterval` the capture worker scores the
    /// served student against the teacher's labels on the latest `sampleSize` drift samples
    /// (selected frames the teacher labelled that are never trained on) and reports
    /// `status.lastDriftCheck`.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// How often a drift check runs (a Go duration such as `1h`; at least `10s`: a check scores
    /// `sampleSize` frames with the student on one core).
    #[serde(default = "default_check_interval")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DURATION_PATTERN}') && duration(self) >= duration('10s')"))
        .message("drift.checkInterval must be a duration of at least 10s, such as 30m or 1h")
        .reason(Reason::FieldValueInvalid))]
    pub check_interval: String,

    /// Drift samples a check scores: the latest ones stored.
    #[serde(default = "default_sample_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub sample_size: u32,

    /// Retrain when the relative accuracy falls below this, in (0, 1]. Relative accuracy: the
    /// served student's AP@0.5 against the teacher's labels on the drift samples, divided by the
    /// AP@0.5 it reached on the eval split when it was promoted (1 = as good as when deployed).
    #[serde(default = "default_min_relative_accuracy")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0")
        .message("drift.minRelativeAccuracy must be greater than 0 and at most 1, such as 0.8")
        .reason(Reason::FieldValueInvalid))]
    pub min_relative_accuracy: f64,

    /// Training images kept across rounds: once the split holds this many, each new image
    /// replaces the oldest. A retraining trains on them all (old scene and new).
    #[serde(default = "default_max_dataset_size")]
    #[schemars(range(min = 10, max = 10000000))]
    pub max_dataset_size: u32,
}

fn default_check_interval() -> String {
    "1h".into()
}
fn default_sample_size() -> u32 {
    50
}
fn default_min_relative_accuracy() -> f64 {
    0.8
}
fn default_max_dataset_size() -> u32 {
    5000
}

impl Default for DriftSpec {
    fn default() -> Self {
        Self {
            enabled: default_true(),
            check_interval: default_check_interval(),
            sample_size: default_sample_size(),
            min_relative_accuracy: default_min_relative_accuracy(),
            max_dataset_size: default_max_dataset_size(),
        }
    }
}

/// Promotion of a newly tuned student.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Deploy a new student only when its mAP beats, by at least this much (absolute), the mAP
    /// of the model its Job started from on the same eval split, and the one-sided 95% lower
    /// bound of that gain over the split's images (`candidateModel.mapGainLowerBound`) does too:
    /// a gain that a few lucky images of a small split make is not enough. Otherwise keep the
    /// deployed one.
    /// A negative value also deploys a candidate up to that much worse (-1 deploys every
    /// candidate, and leaves guarding the camera to the probation checks and `rollbackMargin`:
    /// for an eval split too small to judge by, or to always serve the newest scene).
    #[serde(default = "default_min_improvement")]
    #[schemars(range(min = -1.0, max = 1.0))]
    pub min_improvement: f64,

    /// Roll a newly promoted student back to the previous one when, in one of its first
    /// `probationChecks` drift checks, its AP@0.5 against the teacher on the drift samples falls
    /// below the previous model's on the same samples by more than this (absolute, 0..1).
    #[serde(default = "default_rollback_margin")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub rollback_margin: f64,

    /// Drift checks during which a newly promoted student is compared with the previous one
    /// (each such check also runs the previous model on the same samples).
    #[serde(default = "default_probation_checks")]
    #[schemars(range(min = 0, max = 100))]
    pub probation_checks: u32,
}

fn default_rollback_margin() -> f64 {
    0.05
}

fn default_probation_checks() -> u32 {
    3
}

fn default_min_improvement() -> f64 {
    crate::contract::defaults::MIN_IMPROVEMENT
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            min_improvement: default_min_improvement(),
            rollback_margin: default_rollback_margin(),
            probation_checks: default_probation_checks(),
        }
    }
}

/// Where inference runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum InferenceDevice {
    /// CUDA when the node's ONNX Runtime and a GPU allow it, else the CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
}

/// The student on the camera's node. The capture pod runs the deployed model (the tuned one, or
/// `training.student` before the first tuning) on the frames it decodes anyway, and publishes
/// every inferred frame's detections: Prometheus metrics and HTTP (`/v1/detections/latest`, and
/// Server-Sent Events on `/v1/detections/stream`) on port 9090, and MQTT when configured. A newly
/// promoted model is loaded, checked and swapped in between two frames, without a restart.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferenceSpec {
    /// Run the student and publish its detections.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// At most this many frames per second are inferred. Unset: every frame the CPU allows; when
    /// inference falls behind, the oldest waiting frame is dropped (counted in
    /// `autotuner_edge_frames_total{outcome="dropped"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 240.0))]
    pub max_frames_per_second: Option<f64>,

    /// Detections below this score are not published; strictly between 0 and 1.
    #[serde(default = "default_inference_min_score")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0")
        .message("inference.minScore must be strictly between 0 and 1, such as 0.5")
        .reason(Reason::FieldValueInvalid))]
    pub min_score: f64,

    /// Where the student runs.
    #[serde(default)]
    pub device: InferenceDevice,

    /// Publish every inferred frame's detections to an MQTT broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSpec>,
}

fn default_inference_min_score() -> f64 {
    0.5
}

impl Default for InferenceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_frames_per_second: None,
            min_score: default_inference_min_score(),
            device: InferenceDevice::default(),
            mqtt: None,
        }
    }
}

/// An MQTT broker for the detections (MQTT 3.1.1).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttSpec {
    /// The broker: `mqtt://host:port` (port 1883 when left out). Credentials never go into the
    /// URL: use `credentialsSecretRef`.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^mqtt://[^/@:]+(:[0-9]{1,5})?/?$')")
        .message("inference.mqtt.url must be mqtt://host or mqtt://host:port, without credentials (use credentialsSecretRef)")
        .reason(Reason::FieldValueInvalid))]
    pub url: String,

    /// Detections are published to `<topicPrefix>/detections`; unset:
    /// `autotuner/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.contains('#') && !self.contains('+')")
        .message("inference.mqtt.topicPrefix must not contain the MQTT wildcards # or +")
        .reason(Reason::FieldValueInvalid))]
    pub topic_prefix: Option<String>,

    /// A Secret in this namespace with the broker's user name and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,

    /// MQTT quality of service: 0 (at most once) or 1 (at least once).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1))]
    pub qos: u8,
}

//! The annotator's JSON, shared by the server and the client.

use serde::{Deserialize, Serialize};

/// The request header naming the caller (the capture worker's camera, `namespace/name`): the
/// annotator shares its queue and its request slots fairly between callers.
pub const CALLER_HEADER: &str = "autotuner-caller";

/// One detected object, in the coordinates of the frame the crop came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// `[x0, y0, x1, y1]` in pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// COCO category id.
    pub class_id: u32,
    /// COCO class name.
    pub class: String,
    pub score: f32,
}

/// The labels of one image of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageLabels {
    /// Position of the image in the request.
    pub index: usize,
    /// Where the crop sits in its frame (added to every box).
    pub offset: [u32; 2],
    pub width: u32,
    pub height: u32,
    pub labels: Vec<Label>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// `cpu` or `cuda`.
    pub device: String,
}

/// The answer to `POST /v1/annotate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotateResponse {
    pub model: ModelInfo,
    /// Inference time of the batches this request's images ran in (preprocessing, model, NMS).
    pub inference_ms: f64,
    /// Images in the largest of those batches (from this and other requests).
    pub batch_images: usize,
    pub images: Vec<ImageLabels>,
}

/// Every error answer: what went wrong and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

//! Object detectors for Edge AutoTuner: ONNX models (YOLO as the teacher, SSD-MobileNetV2 as the
//! student) on ONNX Runtime, their pre- and post-processing, and COCO-style evaluation. Nothing of
//! Kubernetes.

pub mod anchors;
pub mod assets;
mod detector;
pub mod eval;
mod geometry;
pub mod labels;
pub mod mosaic;
mod network;
pub mod onnx;
mod preprocess;
pub mod truth;

pub use detector::{
    DetectError, DetectOptions, Detector, Device, DevicePreference, Family, LoadOptions, RawOutput, Runtime,
    Threads, decode_ssd_raw, decode_yolo,
};
pub use geometry::{BBox, Detection, nms};
pub use network::Network;
pub use preprocess::{
    Fit, ImageSizeError, Layout, Placement, PlaneSizeError, Preprocess, Resampling, RgbImage, Yuv420Image,
    yuv_to_rgb,
};

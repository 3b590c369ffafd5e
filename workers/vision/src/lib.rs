//! Motion detection for static cameras: which frames changed, and where.
//!
//! Frames in, regions and decisions out; no I/O, nothing of Kubernetes. The method is the
//! reference's (a median background, Gaussian blur, absolute difference, binary threshold, dilation,
//! outer contours, a minimum area), bit-exact with the OpenCV implementation of it in
//! `tests/vision/reference.py`, and faster: integer kernels that compilers vectorise, a background
//! median computed by a selection network a band of rows per frame, and contours found by labelling
//! runs of a bit-packed mask.

mod bits;
mod blur;
mod detector;
mod image;
mod median;
mod regions;
mod resize;
mod simd;

pub use bits::BitMask;
pub use blur::gaussian_kernel;
pub use detector::{
    Background, ConfigError, FrameReport, FrameState, MIN_PROCESSING_WIDTH, MotionConfig, MotionDetector,
    ResetCause, crop_for,
};
pub use image::{GrayImage, ImageError, Rect};
pub use simd::{Level, cpu_model};

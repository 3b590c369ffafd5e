//! The trainer: fine-tunes the student (SSD-MobileNetV2) on a camera's own labels with burn.
//!
//! [`OnnxGraph`] runs the student's ONNX graph itself in burn, with its weights read from the
//! ONNX file at run time (a fresh clone builds with no model file present). Running the original
//! graph, rather than a hand-written copy of the network, makes forward parity hold by
//! construction and lets export write trained weights back into the same graph. [`train`] is the
//! fine-tuning job: dataset, frozen-feature cache, SSD loss, evaluation, checkpoints and export.

pub mod augment;
pub mod cache;
pub mod checkpoint;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod dataset;
mod graph;
pub mod layers;
pub mod loss;
pub mod memory;
pub mod model;
pub mod progress;
pub mod report;
pub mod train;

pub use graph::{ConvNode, GraphError, OnnxGraph, serialize};

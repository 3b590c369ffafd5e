//! The trainer: fine-tunes the student (SSD-MobileNetV2) on a camera's own labels with burn.
//!
//! So far it has the foundation the rest builds on: [`OnnxGraph`] runs the student's ONNX graph
//! itself in burn, with its weights read from the ONNX file at run time (a fresh clone builds with
//! no model file present). Running the original graph, rather than a hand-written copy of the
//! network, makes forward parity hold by construction and lets export write trained weights back
//! into the same graph.

mod graph;

pub use graph::{GraphError, OnnxGraph};

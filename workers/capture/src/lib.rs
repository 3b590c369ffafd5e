//! The capture worker: decoded video -> motion -> crops -> teacher (through a durable spool) ->
//! dataset. No Kubernetes here except the status report in the binary; the standalone `tune` run
//! uses the same pieces.

pub mod cluster;
pub mod dataset;
pub mod metrics;
pub mod picture;
pub mod pipeline;
pub mod select;
pub mod source;
pub mod spool;
pub mod teacher;

pub use pipeline::{CaptureConfig, CaptureSummary, run};

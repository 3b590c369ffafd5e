//! The capture worker: decoded video -> motion -> crops -> teacher (through a durable spool) ->
//! dataset, and the deployed student on the same frames (`edge`). No Kubernetes here except the status report in the binary; the standalone `tune` run
//! uses the same pieces.

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod dataset;
pub mod drift;
pub mod edge;
pub mod metrics;
pub mod mqtt;
pub mod picture;
pub mod pipeline;
pub mod remote;
pub mod round;
pub mod select;
pub mod serve;
pub mod source;
pub mod spool;
pub mod teacher;

pub use pipeline::{CaptureConfig, CaptureSummary, infer_stream, run};

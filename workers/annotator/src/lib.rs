//! The annotator: a teacher detector behind an HTTP API (`/v1/annotate` and the Open Inference
//! Protocol v2), with dynamic batching, limits, auth and metrics; and the client the capture
//! worker uses.

pub mod admission;
pub mod api;
pub mod batcher;
pub mod client;
pub mod images;
pub mod metrics;
pub mod server;
pub mod tls;

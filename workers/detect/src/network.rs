//! Any ONNX model on ONNX Runtime, given as bytes, with its outputs returned by name: for callers
//! that compute more than detections, such as the trainer reading a frozen backbone's feature
//! maps (a model with extra graph outputs it writes in memory).

use std::path::PathBuf;

use ort::session::Session;

use crate::detector::{DetectError, RawOutput, Runtime, run_named};

/// A model run on the CPU: batch-parallel work sized by ONNX Runtime's own thread pool.
pub struct Network {
    session: Session,
    input_name: String,
    output_names: Vec<String>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("input", &self.input_name)
            .field("outputs", &self.output_names)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Loads the serialized ONNX model `bytes`; `name` is only for error messages.
    pub fn from_bytes(runtime: &Runtime, bytes: &[u8], name: &str) -> Result<Self, DetectError> {
        let model_error = |source| DetectError::Model {
            path: PathBuf::from(name),
            source,
        };
        let session = Session::builder(runtime.environment())
            .map_err(model_error)?
            .commit_from_memory(bytes)
            .map_err(model_error)?;
        let input_name = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or_else(|| DetectError::Output(format!("{name} has no input")))?;
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect();
        Ok(Self {
            session,
            input_name,
            output_names,
        })
    }

    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs the model on `input` (`shape` in the model's layout) and returns every output, in the
    /// order of [`output_names`](Self::output_names), with its shape.
    pub fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<RawOutput>, DetectError> {
        run_named(
            &mut self.session,
            &self.input_name,
            &self.output_names,
            input,
            shape,
        )
    }
}

//! The trainer as the operator's fine-tuning Job: its inputs from the environment the operator
//! sets (see `autotuner_api::contract`), and its result reported back by server-side applying
//! `status.candidateModel` of its CameraTuning under its own field manager, which its Role
//! allows and nothing else.

use std::path::{Path, PathBuf};

use autotuner_api::contract;
use autotuner_api::{CameraTuning, ModelStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::report::Report;

/// What the operator asks of one training Job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobContext {
    pub name: String,
    pub namespace: String,
    /// The dataset folder (the mounted volume).
    pub dataset: PathBuf,
    pub iteration: u32,
    /// The student to start from, when the operator names one.
    pub model: Option<PathBuf>,
    /// At most this many training images (the most recent).
    pub dataset_cap: Option<usize>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A `file://` URI or a plain path as a path; other schemes are refused.
pub fn local_path(uri: &str) -> Result<PathBuf, String> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    if uri.contains("://") {
        return Err(format!(
            "{uri}: only local paths and file:// URIs are supported by the trainer so far (mount the dataset as a volume)"
        ));
    }
    Ok(PathBuf::from(uri))
}

impl JobContext {
    /// The context from the environment, `Ok(None)` when not started by the operator.
    pub fn from_env() -> Result<Option<Self>, String> {
        let Some(name) = var(contract::ENV_NAME) else {
            return Ok(None);
        };
        let namespace =
            var(contract::ENV_NAMESPACE).ok_or(format!("{} is not set", contract::ENV_NAMESPACE))?;
        let dataset = local_path(
            &var(contract::ENV_DATASET_URI).ok_or(format!("{} is not set", contract::ENV_DATASET_URI))?,
        )?;
        let iteration = var(contract::ENV_ITERATION)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|e| format!("{}: {e}", contract::ENV_ITERATION))
            })
            .transpose()?
            .unwrap_or(1);
        let model = var(contract::ENV_MODEL_URI).map(|u| local_path(&u)).transpose()?;
        let dataset_cap = var(contract::ENV_DATASET_CAP)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|e| format!("{}: {e}", contract::ENV_DATASET_CAP))
            })
            .transpose()?;
        Ok(Some(Self {
            name,
            namespace,
            dataset,
            iteration,
            model,
            dataset_cap,
        }))
    }

    pub fn train_file(&self) -> PathBuf {
        self.dataset.join(contract::DATASET_TRAIN_FILE)
    }

    pub fn eval_file(&self) -> PathBuf {
        self.dataset.join(contract::DATASET_EVAL_FILE)
    }

    pub fn output(&self) -> PathBuf {
        self.dataset.join(contract::training_run_dir(self.iteration))
    }

    pub fn model_file(&self) -> PathBuf {
        self.dataset.join(contract::model_file(self.iteration))
    }
}

/// Publishes the run's model where the operator expects it (atomically) and reports it as the
/// CameraTuning's candidate.
pub async fn publish(client: Client, job: &JobContext, report: &Report) -> Result<ModelStatus, String> {
    let target = job.model_file();
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let tmp = target.with_extension("onnx.tmp");
    std::fs::copy(Path::new(&report.export.path), &tmp).map_err(|e| format!("copy the model: {e}"))?;
    std::fs::rename(&tmp, &target).map_err(|e| format!("publish the model: {e}"))?;
    let candidate = ModelStatus {
        version: job.iteration,
        uri: format!("file://{}", target.display()),
        map: report.after.ap.unwrap_or(0.0).clamp(0.0, 1.0),
        map50: report.after.ap50.map(|v| v.clamp(0.0, 1.0)),
        baseline_map: report.before.ap.map(|v| v.clamp(0.0, 1.0)),
        trained_at: Some(Time(k8s_openapi::jiff::Timestamp::now())),
    };
    let body = json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "status": { "candidateModel": candidate },
    });
    let api: Api<CameraTuning> = Api::namespaced(client, &job.namespace);
    api.patch_status(
        &job.name,
        &PatchParams::apply(contract::TRAINER_FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| {
        format!(
            "report the candidate model to {}/{}: {e}",
            job.namespace, job.name
        )
    })?;
    Ok(candidate)
}

//! The trainer as the operator's fine-tuning Job: its inputs from the environment the operator
//! sets (see `autotuner_api::contract`), and its result reported back by server-side applying
//! `status.candidateModel` of its CameraTuning under its own field manager, which its Role
//! allows and nothing else.
//!
//! The dataset is a mounted volume or an `s3://bucket/prefix`. In object storage it is mirrored
//! into a local work folder first (only what the folder lacks, so a restarted pod resumes
//! cheaply), each checkpoint is copied back as it is written, and the model and report are
//! stored next to the dataset as on a volume.

use std::path::{Path, PathBuf};

use autotuner_api::contract;
use autotuner_api::contract::TrainingSettings;
use autotuner_api::{CameraTuning, ModelStatus};
use autotuner_store::{Location, Mirrored, S3Options};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::report::Report;
use crate::train::CHECKPOINT_FILE;

/// What the operator asks of one training Job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobContext {
    pub name: String,
    pub namespace: String,
    /// The dataset folder: the mounted volume, or the local mirror of a remote dataset.
    pub dataset: PathBuf,
    /// The dataset's URI when it is in object storage (`s3://bucket/prefix`).
    pub remote: Option<String>,
    pub s3: S3Options,
    /// The spec's training settings, the iteration and the student to start from.
    pub settings: TrainingSettings,
    /// Where the student is fetched to (and other local scratch).
    pub work: PathBuf,
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
        return Err(format!("{uri}: expected a path, a file:// URI or an s3:// URI"));
    }
    Ok(PathBuf::from(uri))
}

impl JobContext {
    /// The context from the environment, `Ok(None)` when not started by the operator.
    pub fn from_env() -> Result<Option<Self>, String> {
        let Some(name) = var(contract::ENV_NAME) else {
            return Ok(None);
        };
        let required = |n: &str| var(n).ok_or(format!("{n} is not set"));
        let namespace = required(contract::ENV_NAMESPACE)?;
        let dataset_uri = required(contract::ENV_DATASET_URI)?;
        let settings = TrainingSettings::from_env_value(&required(contract::ENV_TRAINING)?)?;
        let work = var(contract::ENV_WORK_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("autotuner-trainer"));
        let (dataset, remote) = if dataset_uri.starts_with("s3://") {
            (work.join("dataset"), Some(dataset_uri))
        } else {
            (local_path(&dataset_uri)?, None)
        };
        let s3 = S3Options {
            endpoint: var(contract::ENV_S3_ENDPOINT),
            region: var(contract::ENV_S3_REGION),
        };
        Ok(Some(Self {
            name,
            namespace,
            dataset,
            remote,
            s3,
            settings,
            work,
        }))
    }

    pub fn iteration(&self) -> u32 {
        self.settings.iteration
    }

    /// The splits this Job trains and judges on: the mirror of a remote dataset, or for a
    /// volume a snapshot under the run's folder. The capture worker keeps writing while the Job
    /// runs (full splits replace their oldest images), so the candidate and its baseline must be
    /// scored on one fixed eval split.
    fn inputs(&self) -> PathBuf {
        match self.remote {
            Some(_) => self.dataset.clone(),
            None => self.output().join("dataset"),
        }
    }

    pub fn train_file(&self) -> PathBuf {
        self.inputs().join(contract::DATASET_TRAIN_FILE)
    }

    pub fn eval_file(&self) -> PathBuf {
        self.inputs().join(contract::DATASET_EVAL_FILE)
    }

    pub fn output(&self) -> PathBuf {
        self.dataset.join(contract::training_run_dir(self.iteration()))
    }

    pub fn model_file(&self) -> PathBuf {
        self.dataset.join(contract::model_file(self.iteration()))
    }

    /// Fetches the student to start from (`file://`, `http(s)://` or `s3://`, through the one
    /// fetcher every worker uses) and returns its local path.
    pub async fn fetch_student(&self) -> Result<PathBuf, String> {
        autotuner_store::fetch_model(
            &self.settings.base_model_uri,
            None,
            &self.s3,
            &self.work.join("student"),
        )
        .await
        .map_err(|e| format!("the student to start from: {e}"))
    }

    /// For a dataset in object storage: mirrors it (and the checkpoint of an earlier attempt of
    /// this iteration) into the local folders and returns its location; `None` for a volume.
    /// A dataset that lacks a split is looked at again a few times before the attempt ends with
    /// [`PrepareError::Incomplete`].
    pub async fn prepare(&self) -> Result<Option<Location>, PrepareError> {
        let mut tries = 0;
        loop {
            match self.prepare_once().await {
                Err(PrepareError::Incomplete { .. }) if tries < INCOMPLETE_TRIES => {
                    tries += 1;
                    tokio::time::sleep(INCOMPLETE_WAIT).await;
                }
                other => return other,
            }
        }
    }

    async fn prepare_once(&self) -> Result<Option<Location>, PrepareError> {
        let Some(uri) = &self.remote else {
            snapshot(&self.dataset, &self.inputs(), &self.s3).await?;
            return Ok(None);
        };
        let other = |e: autotuner_store::StoreError| PrepareError::Other(e.to_string());
        let location = Location::parse(uri, &self.s3).map_err(other)?;
        let mirrored = location
            .mirror_dataset(&contract::DATASET_SPLIT_FILES, &self.dataset)
            .await
            .map_err(other)?;
        PrepareError::check(&mirrored)?;
        tracing::info!(
            dataset = %uri,
            fetched = mirrored.images_fetched,
            already_here = mirrored.images_present,
            missing = mirrored.images_missing,
            "dataset mirrored from object storage"
        );
        let checkpoint = self.output().join(CHECKPOINT_FILE);
        if !checkpoint.is_file()
            && location
                .get_file(&self.run_key(CHECKPOINT_FILE), &checkpoint)
                .await
                .map_err(other)?
        {
            tracing::info!("fetched the checkpoint of an earlier attempt");
        }
        Ok(Some(location))
    }

    /// The key of a run file under the dataset location.
    pub fn run_key(&self, file: &str) -> String {
        format!("{}/{file}", contract::training_run_dir(self.iteration()))
    }
}

/// Looks at a dataset this many more times, [`INCOMPLETE_WAIT`] apart, before the attempt ends.
const INCOMPLETE_TRIES: u32 = 3;
const INCOMPLETE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a Job cannot train on the dataset.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A split the Job needs is not in the dataset yet. Nothing of this attempt is kept: the
    /// next one (which the Job does not count as a retry, see
    /// [`contract::EXIT_DATASET_INCOMPLETE`]) takes a new snapshot.
    #[error(
        "the dataset is incomplete: {} not there yet (the capture worker writes a split with its first image). \
         This attempt ends without counting as a failure; the next one takes a new snapshot",
        missing.join(" and ")
    )]
    Incomplete { missing: Vec<String> },
    #[error("{0}")]
    Other(String),
}

impl PrepareError {
    fn check(mirrored: &Mirrored) -> Result<(), PrepareError> {
        if mirrored.annotations_missing.is_empty() {
            Ok(())
        } else {
            Err(PrepareError::Incomplete {
                missing: mirrored.annotations_missing.clone(),
            })
        }
    }
}

/// The volume's splits as they are now, hard-linked into `to` (nothing is copied): the capture
/// worker keeps writing while the Job runs. A snapshot with every split is marked complete, and
/// the restarted attempts of the same Job resume on it; one without is thrown away, so the next
/// attempt takes a new one.
pub async fn snapshot(volume: &Path, to: &Path, s3: &S3Options) -> Result<(), PrepareError> {
    let complete = to.join(".complete");
    if complete.is_file() {
        tracing::info!(snapshot = %to.display(), "training on the snapshot of an earlier attempt");
        return Ok(());
    }
    let other = |e: String| PrepareError::Other(format!("snapshot of the dataset: {e}"));
    match std::fs::remove_dir_all(to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(other(format!("remove the incomplete {}: {e}", to.display())));
        }
        _ => {}
    }
    let volume = Location::parse(&volume.to_string_lossy(), s3).map_err(|e| other(e.to_string()))?;
    let taken = volume
        .mirror_dataset(&contract::DATASET_SPLIT_FILES, to)
        .await
        .map_err(|e| other(e.to_string()))?;
    PrepareError::check(&taken)?;
    std::fs::write(&complete, b"").map_err(|e| other(format!("{}: {e}", complete.display())))?;
    tracing::info!(
        snapshot = %to.display(),
        images = taken.images_fetched + taken.images_present,
        missing = taken.images_missing,
        "training on a snapshot of the dataset volume"
    );
    Ok(())
}

/// Publishes the run's model where the operator expects it (atomically: a rename on a volume, one
/// PUT in object storage), with the run's report, and reports it as the CameraTuning's candidate.
pub async fn publish(
    client: Client,
    job: &JobContext,
    report: &Report,
    location: Option<&Location>,
) -> Result<ModelStatus, String> {
    let exported = Path::new(&report.export.path);
    let uri = match location {
        Some(location) => {
            let put = |key: String, file: PathBuf| async move {
                location.put_file(&key, &file).await.map_err(|e| e.to_string())
            };
            put(job.run_key("report.json"), job.output().join("report.json")).await?;
            put(job.run_key("model.onnx"), exported.to_path_buf()).await?;
            let key = contract::model_file(job.iteration());
            put(key.clone(), exported.to_path_buf()).await?;
            location.uri_of(&key)
        }
        None => {
            let target = job.model_file();
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            }
            let tmp = target.with_extension("onnx.tmp");
            std::fs::copy(exported, &tmp).map_err(|e| format!("copy the model: {e}"))?;
            std::fs::rename(&tmp, &target).map_err(|e| format!("publish the model: {e}"))?;
            format!("file://{}", target.display())
        }
    };
    let candidate = ModelStatus {
        version: job.iteration(),
        uri,
        map: report.after.ap.unwrap_or(0.0).clamp(0.0, 1.0),
        map50: report.after.ap50.map(|v| v.clamp(0.0, 1.0)),
        baseline_map: report.before.ap.map(|v| v.clamp(0.0, 1.0)),
        baseline_map50: report.before.ap50.map(|v| v.clamp(0.0, 1.0)),
        map_gain_lower_bound: report.gain.map(|g| g.ap_lower_bound.clamp(-1.0, 1.0)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes as the capture worker does: a new file renamed over the old one (a snapshot holds
    /// hard links, which an in-place write would change under it).
    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        autotuner_store::write_atomically(path, bytes).unwrap();
    }

    fn coco(image: &str) -> Vec<u8> {
        format!(r#"{{"images": [{{"id": 1, "file_name": "images/{image}"}}], "annotations": [], "categories": []}}"#)
            .into_bytes()
    }

    #[tokio::test]
    async fn a_snapshot_without_the_eval_split_is_not_kept_and_the_next_attempt_takes_a_new_one() {
        let (volume_dir, run_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (volume, to) = (volume_dir.path(), run_dir.path().join("dataset"));
        let s3 = S3Options::default();
        write(&volume.join("train/images/a.jpg"), b"a");
        write(&volume.join(contract::DATASET_TRAIN_FILE), &coco("a.jpg"));

        // The ordering CI met: the training split is there, the eval split not yet.
        let first = snapshot(volume, &to, &s3).await.unwrap_err();
        match &first {
            PrepareError::Incomplete { missing } => assert_eq!(missing, &[contract::DATASET_EVAL_FILE]),
            other => panic!("expected an incomplete dataset, got {other}"),
        }
        assert!(
            first.to_string().contains("eval/annotations.json not there yet"),
            "{first}"
        );
        assert!(
            !to.join(".complete").exists(),
            "an incomplete snapshot is not marked complete"
        );

        // The capture worker writes the eval split and replaces the training split meanwhile.
        write(&volume.join("eval/images/e.jpg"), b"e");
        write(&volume.join(contract::DATASET_EVAL_FILE), &coco("e.jpg"));
        write(&volume.join("train/images/b.jpg"), b"b");
        write(&volume.join(contract::DATASET_TRAIN_FILE), &coco("b.jpg"));
        snapshot(volume, &to, &s3).await.unwrap();
        assert!(to.join(".complete").is_file());
        assert_eq!(
            std::fs::read(to.join(contract::DATASET_TRAIN_FILE)).unwrap(),
            coco("b.jpg")
        );
        assert_eq!(std::fs::read(to.join("eval/images/e.jpg")).unwrap(), b"e");
        assert!(
            !to.join("train/images/a.jpg").exists(),
            "nothing of the incomplete snapshot is left"
        );

        // A restarted attempt resumes on the complete snapshot, whatever the volume holds now.
        write(&volume.join(contract::DATASET_EVAL_FILE), &coco("f.jpg"));
        snapshot(volume, &to, &s3).await.unwrap();
        assert_eq!(
            std::fs::read(to.join(contract::DATASET_EVAL_FILE)).unwrap(),
            coco("e.jpg")
        );
    }
}

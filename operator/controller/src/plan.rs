//! The loop of one CameraTuning as a pure function: from the resource and what exists now to
//! the objects that should exist, the next status and the events to tell. No client in here, so
//! every transition is unit-tested directly.

use std::collections::BTreeMap;
use std::time::Duration;

use autotuner_api::{CameraTuning, CameraTuningStatus, DatasetStatus, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::Config;
use crate::children::{self, Children, Rollout, names};

/// What the reconciler read from the cluster, reduced to what decides the next step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// Training Jobs of this CameraTuning by iteration (Jobs being deleted are left out).
    pub jobs: BTreeMap<u32, JobState>,
    /// Iterations whose Job is being deleted: nothing with that name can be made until it is gone.
    pub jobs_terminating: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Succeeded,
    /// The Job gave up after its retries; the message is the Job's own.
    Failed {
        message: String,
    },
}

/// An event to publish on the CameraTuning.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The outcome of planning.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub children: Children,
    /// The fields of the status the operator owns (the workers' fields are left out).
    pub status: CameraTuningStatus,
    pub notes: Vec<Note>,
    /// Failed Jobs to delete before training again.
    pub delete_jobs: Vec<String>,
    pub requeue_after: Duration,
}

/// A spec the API server accepted but the operator cannot act on (an old CRD without the CEL
/// rules, say). Waits for the next change of the resource instead of retrying.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

/// Periodic re-check of a CameraTuning with nothing pending.
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check while waiting on something that should settle soon (a report, a deletion).
const SHORT: Duration = Duration::from_secs(5);

pub fn plan(
    tuning: &CameraTuning,
    observed: &Observed,
    now: Timestamp,
    config: &Config,
) -> Result<Plan, InvalidSpec> {
    let spec = &tuning.spec;
    let name = tuning.name_any();
    let old = tuning.status.clone().unwrap_or_default();
    let generation = tuning.metadata.generation;
    let spec_changed = old.observed_generation != generation;
    let deadline_after = parse_duration(&spec.training.deadline).ok_or_else(|| {
        InvalidSpec(format!(
            "training.deadline {:?} is not a duration such as 24h",
            spec.training.deadline
        ))
    })?;

    let iteration = old.iteration.unwrap_or(0);
    let next = iteration + 1;
    let dataset = old.dataset.clone().unwrap_or_default();
    let train_images = dataset.train.unwrap_or(0);
    // The deadline counts from the first reconcile, when capture starts, and then stays put.
    let deadline = dataset
        .deadline
        .as_ref()
        .map_or_else(|| now + deadline_after, |d| d.0);
    let mut current_model = old.current_model.clone();
    let mut finished_iteration = iteration;
    let mut notes = Vec::new();
    let mut delete_jobs = Vec::new();
    let mut requeue_after = RESYNC;
    let mut train_iteration = None;
    let mut waiting = None::<String>;
    let mut failure = None::<String>;
    let mut drift = false;

    let phase = match observed.jobs.get(&next) {
        _ if observed.jobs_terminating.contains(&next) => {
            requeue_after = SHORT;
            old.phase.unwrap_or(Phase::Pending)
        }
        Some(JobState::Running) => {
            train_iteration = Some(next);
            if iteration == 0 {
                Phase::Training
            } else {
                Phase::Retraining
            }
        }
        Some(JobState::Succeeded) => match old.candidate_model.as_ref().filter(|c| c.version == next) {
            Some(candidate) => {
                finished_iteration = next;
                let bar = current_model
                    .as_ref()
                    .map_or(candidate.baseline_map, |m| Some(m.map));
                let margin = spec.rollout.min_improvement;
                match bar {
                    Some(bar) if candidate.map < bar + margin => {
                        notes.push(note(false, "CandidateRejected", format!(
                            "iteration {next} reached mAP {:.3}, not {margin} above the deployed {bar:.3}; keeping the deployed student",
                            candidate.map
                        )));
                        if current_model.is_some() {
                            Phase::Monitoring
                        } else {
                            Phase::Capturing
                        }
                    }
                    _ => {
                        notes.push(note(false, "ModelPromoted", format!(
                            "iteration {next} reached mAP {:.3} (off-the-shelf {}); rolling it out to the camera",
                            candidate.map,
                            candidate.baseline_map.map_or("unknown".into(), |b| format!("{b:.3}"))
                        )));
                        current_model = Some(candidate.clone());
                        Phase::Deployed
                    }
                }
            }
            None => {
                train_iteration = Some(next);
                waiting = Some(format!(
                    "Job {} succeeded; waiting for the trainer's report",
                    names::training_job(&name, next)
                ));
                requeue_after = SHORT;
                Phase::Evaluating
            }
        },
        Some(JobState::Failed { message }) if !(spec_changed && old.phase == Some(Phase::Failed)) => {
            let job = names::training_job(&name, next);
            failure = Some(format!(
                "training Job {job} failed after {} retries: {message}. See `kubectl logs job/{job}`; \
                 fix the cause and edit the CameraTuning to train again",
                spec.training.max_retries
            ));
            Phase::Failed
        }
        Some(JobState::Failed { .. }) => {
            // The spec changed since the failure: clear the failed Job, then train again.
            delete_jobs.push(names::training_job(&name, next));
            requeue_after = SHORT;
            if iteration == 0 {
                Phase::Capturing
            } else {
                Phase::Monitoring
            }
        }
        None if iteration == 0 => {
            let min = u64::from(spec.training.min_train_size);
            let target = u64::from(spec.dataset.train_size);
            if train_images >= target {
                train_iteration = Some(next);
                notes.push(note(
                    false,
                    "TrainingStarted",
                    format!("the training split reached {train_images} of {target} images"),
                ));
                Phase::Training
            } else if now >= deadline && train_images >= min {
                train_iteration = Some(next);
                notes.push(note(false, "TrainingStarted", format!(
                    "the deadline passed with {train_images} of {target} images (at least {min} needed): training on what there is"
                )));
                Phase::Training
            } else {
                if now >= deadline {
                    waiting = Some(format!(
                        "the deadline passed with only {train_images} of the {min} images training needs; still capturing. \
                         Check that the camera sees motion (motion.threshold, motion.minRegionArea) or lower training.minTrainSize"
                    ));
                } else {
                    requeue_after =
                        requeue_after.min(Duration::try_from(deadline.duration_since(now)).unwrap_or(SHORT));
                }
                Phase::Capturing
            }
        }
        None => {
            let check = old.last_drift_check.as_ref();
            let fresh = check.is_some_and(|c| {
                current_model
                    .as_ref()
                    .and_then(|m| m.trained_at.as_ref())
                    .is_none_or(|t| c.time.0 > t.0)
            });
            let relative = check.map_or(1.0, |c| c.relative_accuracy);
            if spec.drift.enabled && fresh && relative < spec.drift.min_relative_accuracy {
                drift = true;
                train_iteration = Some(next);
                notes.push(note(true, "DriftDetected", format!(
                    "the student agrees with the teacher at {relative:.2}, below {}: retraining on the accumulated data (iteration {next})",
                    spec.drift.min_relative_accuracy
                )));
                Phase::Retraining
            } else if current_model.is_none() {
                Phase::Capturing
            } else if serves(&old, current_model.as_ref()) {
                if spec.drift.enabled {
                    Phase::Monitoring
                } else {
                    Phase::Deployed
                }
            } else {
                Phase::Deployed
            }
        }
    };

    if old.phase != Some(phase) {
        match phase {
            Phase::Capturing if old.phase.is_none() || old.phase == Some(Phase::Pending) => {
                notes.push(note(
                    false,
                    "CaptureStarted",
                    format!("capturing on the camera's node until {deadline}"),
                ));
            }
            Phase::Failed => notes.push(note(true, "TrainingFailed", failure.clone().unwrap_or_default())),
            _ => {}
        }
    }
    if phase == Phase::Retraining && old.phase == Some(Phase::Retraining) {
        drift = true;
    }

    let deployed_uri = current_model
        .as_ref()
        .map_or(spec.training.student.uri.as_str(), |m| m.uri.as_str());
    let children = children::build(
        tuning,
        &Rollout {
            deployed_model_uri: deployed_uri,
            train_iteration,
        },
        config,
    );

    let status = CameraTuningStatus {
        phase: Some(phase),
        observed_generation: generation,
        conditions: conditions(
            &old.conditions,
            phase,
            &Reasons {
                waiting,
                failure,
                drift,
                train_images,
                spec_target: spec.dataset.train_size,
            },
            now,
        ),
        dataset: Some(DatasetStatus {
            deadline: Some(Time(deadline)),
            ..DatasetStatus::default()
        }),
        current_model,
        last_drift_check: None,
        candidate_model: None,
        inference: None,
        iteration: Some(finished_iteration),
    };
    Ok(Plan {
        children,
        status,
        notes,
        delete_jobs,
        requeue_after,
    })
}

/// Whether the camera's node reports serving `model` (the capture worker swaps models in
/// without a restart and says which one serves in `status.inference.model`).
fn serves(status: &CameraTuningStatus, model: Option<&autotuner_api::ModelStatus>) -> bool {
    let served = status.inference.as_ref().and_then(|i| i.model.as_ref());
    matches!((served, model), (Some(s), Some(m)) if s.version == m.version && s.uri == m.uri)
}

fn note(warning: bool, reason: &'static str, message: String) -> Note {
    Note {
        warning,
        reason,
        message,
    }
}

struct Reasons {
    waiting: Option<String>,
    failure: Option<String>,
    drift: bool,
    train_images: u64,
    spec_target: u32,
}

/// Ready, Progressing, Degraded and DriftDetected for this phase; a condition whose status does
/// not change keeps its lastTransitionTime.
fn conditions(old: &[Condition], phase: Phase, why: &Reasons, now: Timestamp) -> Vec<Condition> {
    let phase_name = format!("{phase:?}");
    let ready = matches!(phase, Phase::Deployed | Phase::Monitoring);
    let progressing = matches!(
        phase,
        Phase::Pending | Phase::Capturing | Phase::Training | Phase::Evaluating | Phase::Retraining
    );
    let progress_message = why.waiting.clone().unwrap_or_else(|| match phase {
        Phase::Capturing => format!("{} of {} training images", why.train_images, why.spec_target),
        Phase::Pending => "creating the capture workload".into(),
        Phase::Training | Phase::Retraining => "a training Job runs".into(),
        _ => phase_name.clone(),
    });
    let wanted = [
        (
            "Ready",
            ready,
            if ready {
                "TunedStudentDeployed".to_string()
            } else {
                phase_name.clone()
            },
            if ready {
                "a tuned student runs on the camera's node".to_string()
            } else {
                "no tuned student deployed yet".to_string()
            },
        ),
        ("Progressing", progressing, phase_name.clone(), progress_message),
        (
            "Degraded",
            why.failure.is_some(),
            if why.failure.is_some() {
                "TrainingFailed".into()
            } else {
                "AsExpected".into()
            },
            why.failure.clone().unwrap_or_else(|| "no failure".into()),
        ),
        (
            "DriftDetected",
            why.drift,
            if why.drift {
                "BelowThreshold".into()
            } else {
                "WithinThreshold".into()
            },
            if why.drift {
                "the student fell behind the teacher; retraining".into()
            } else {
                "no drift below the threshold".into()
            },
        ),
    ];
    wanted
        .into_iter()
        .map(|(type_, on, reason, message)| {
            let status = if on { "True" } else { "False" }.to_string();
            let since = old
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.into(),
                status,
                reason,
                message,
                last_transition_time: since,
                observed_generation: None,
            }
        })
        .collect()
}

/// A Go duration ("1h30m", "90s", "1.5h"), as the CRD's CEL rule admits them.
pub fn parse_duration(text: &str) -> Option<SignedDuration> {
    let mut rest = text;
    let mut total = 0.0_f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    SignedDuration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use autotuner_api::DriftCheckStatus;
    use serde_json::json;

    fn tuning(status: serde_json::Value) -> CameraTuning {
        serde_json::from_value(json!({
            "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
            "metadata": { "name": "entrance", "namespace": "cams", "uid": "u-1", "generation": 1 },
            "spec": {
                "camera": { "url": "rtsp://cam/stream", "nodeName": "edge-1" },
                "classes": ["person"],
                "annotation": { "teacher": { "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" } } },
                "training": { "student": { "uri": "file:///m/ssd.onnx", "family": "ssdRaw" } }
            },
            "status": status
        }))
        .unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const NOW: &str = "2026-11-26T12:00:00Z";

    fn run(tuning: &CameraTuning, observed: &Observed) -> Plan {
        plan(tuning, observed, at(NOW), &Config::default()).unwrap()
    }

    fn capturing() -> Observed {
        Observed::default()
    }

    fn with_job(iteration: u32, state: JobState) -> Observed {
        Observed {
            jobs: BTreeMap::from([(iteration, state)]),
            ..capturing()
        }
    }

    fn condition<'a>(plan: &'a Plan, type_: &str) -> &'a Condition {
        plan.status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn reasons(plan: &Plan) -> Vec<&'static str> {
        plan.notes.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn a_new_tuning_creates_its_workloads_and_starts_capturing_with_a_deadline() {
        let plan = run(&tuning(json!(null)), &Observed::default());
        // The status is written after the workloads are, so it can say Capturing at once.
        assert_eq!(plan.status.phase, Some(Phase::Capturing));
        assert_eq!(reasons(&plan), ["CaptureStarted"]);
        assert!(plan.children.annotator.is_some() && plan.children.dataset_claim.is_some());
        assert!(plan.children.training_job.is_none());
        // 24h after the first reconciliation.
        assert_eq!(
            plan.status.dataset.unwrap().deadline.unwrap().0,
            at("2026-11-27T12:00:00Z")
        );
        assert_eq!(plan.status.iteration, Some(0));
    }

    #[test]
    fn capturing_waits_for_the_train_size_and_wakes_up_at_the_deadline() {
        let t = tuning(
            json!({ "phase": "Pending", "dataset": { "train": 10, "deadline": "2026-11-26T13:00:00Z" } }),
        );
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Capturing));
        assert_eq!(reasons(&plan), ["CaptureStarted"]);
        assert!(plan.children.training_job.is_none());
        assert_eq!(plan.requeue_after, Duration::from_secs(300));
        assert_eq!(
            condition(&plan, "Progressing").message,
            "10 of 1000 training images"
        );

        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 10, "deadline": "2026-11-26T12:01:00Z" } }),
        );
        assert_eq!(run(&t, &capturing()).requeue_after, Duration::from_secs(60));
    }

    #[test]
    fn reaching_the_train_size_starts_iteration_one() {
        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 1000, "deadline": "2026-11-27T00:00:00Z" } }),
        );
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Training));
        assert_eq!(reasons(&plan), ["TrainingStarted"]);
        let job = plan.children.training_job.unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("entrance-train-1"));
    }

    #[test]
    fn the_deadline_trains_on_enough_images_and_explains_when_there_are_too_few() {
        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 150, "deadline": "2026-11-26T11:00:00Z" } }),
        );
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Training));
        assert!(plan.notes[0].message.contains("deadline passed with 150 of 1000"));

        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 20, "deadline": "2026-11-26T11:00:00Z" } }),
        );
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Capturing));
        assert!(plan.children.training_job.is_none());
        let progressing = condition(&plan, "Progressing");
        assert!(
            progressing.message.contains("only 20 of the 100 images"),
            "{}",
            progressing.message
        );
    }

    #[test]
    fn a_running_job_keeps_training_and_stays_desired() {
        let t = tuning(
            json!({ "phase": "Training", "dataset": { "train": 1000, "deadline": "2026-11-27T00:00:00Z" } }),
        );
        let plan = run(&t, &with_job(1, JobState::Running));
        assert_eq!(plan.status.phase, Some(Phase::Training));
        assert!(plan.children.training_job.is_some());
        assert!(plan.notes.is_empty());
    }

    #[test]
    fn a_better_candidate_is_promoted_in_the_status_without_touching_the_capture_pod() {
        let t = tuning(json!({
            "phase": "Training", "iteration": 0,
            "candidateModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.40, "baselineMap": 0.28, "trainedAt": "2026-11-26T11:59:00Z" }
        }));
        let plan = run(&t, &with_job(1, JobState::Succeeded));
        assert_eq!(plan.status.phase, Some(Phase::Deployed));
        assert_eq!(plan.status.iteration, Some(1));
        assert_eq!(plan.status.current_model.as_ref().unwrap().map, 0.40);
        assert_eq!(reasons(&plan), ["ModelPromoted"]);
        assert!(plan.children.training_job.is_none());
        // The capture worker reads the deployed model from the status and swaps it in: its pod
        // template names no model, so a promotion restarts nothing.
        assert_eq!(
            plan.status.current_model.as_ref().unwrap().uri,
            "file:///data/models/1.onnx"
        );
        let template = serde_json::to_string(&plan.children.capture.spec.template).unwrap();
        assert!(
            !template.contains("onnx") && !template.contains("AUTOTUNER_MODEL_URI"),
            "{template}"
        );
        assert_eq!(condition(&plan, "Ready").status, "True");
    }

    #[test]
    fn a_candidate_below_the_margin_is_rejected() {
        let t = tuning(json!({
            "phase": "Retraining", "iteration": 1,
            "currentModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.40 },
            "candidateModel": { "version": 2, "uri": "file:///data/models/2.onnx", "map": 0.405 }
        }));
        let plan = run(&t, &with_job(2, JobState::Succeeded));
        assert_eq!(reasons(&plan), ["CandidateRejected"]);
        assert_eq!(plan.status.current_model.unwrap().version, 1);
        assert_eq!(plan.status.iteration, Some(2));
        assert_eq!(plan.status.phase, Some(Phase::Monitoring));
    }

    #[test]
    fn a_finished_job_without_a_report_is_evaluating() {
        let t = tuning(json!({ "phase": "Training", "iteration": 0 }));
        let plan = run(&t, &with_job(1, JobState::Succeeded));
        assert_eq!(plan.status.phase, Some(Phase::Evaluating));
        assert_eq!(plan.requeue_after, SHORT);
    }

    #[test]
    fn a_failed_job_fails_the_tuning_until_the_spec_changes() {
        let t = tuning(json!({ "phase": "Training", "observedGeneration": 1 }));
        let failed = with_job(
            1,
            JobState::Failed {
                message: "Job has reached the specified backoff limit".into(),
            },
        );
        let plan = run(&t, &failed);
        assert_eq!(plan.status.phase, Some(Phase::Failed));
        let degraded = condition(&plan, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "TrainingFailed")
        );
        assert!(degraded.message.contains("kubectl logs job/entrance-train-1"));
        assert_eq!(reasons(&plan), ["TrainingFailed"]);
        assert!(plan.delete_jobs.is_empty());

        // Failed and unchanged: stays failed, says nothing new.
        let t = tuning(
            json!({ "phase": "Failed", "observedGeneration": 1, "conditions": plan.status.conditions }),
        );
        let again = run(&t, &failed);
        assert_eq!(again.status.phase, Some(Phase::Failed));
        assert!(again.notes.is_empty());
        assert_eq!(
            condition(&again, "Degraded").last_transition_time,
            degraded.last_transition_time
        );

        // After an edit (generation 2), the failed Job is cleared for a new attempt.
        let mut edited = t.clone();
        edited.metadata.generation = Some(2);
        let retry = run(&edited, &failed);
        assert_eq!(retry.delete_jobs, ["entrance-train-1"]);
        assert_ne!(retry.status.phase, Some(Phase::Failed));
        assert_eq!(retry.status.observed_generation, Some(2));
    }

    #[test]
    fn a_terminating_job_is_waited_for() {
        let t = tuning(json!({ "phase": "Capturing", "dataset": { "train": 1000 } }));
        let observed = Observed {
            jobs_terminating: vec![1],
            ..capturing()
        };
        let plan = run(&t, &observed);
        assert!(plan.children.training_job.is_none());
        assert_eq!(plan.requeue_after, SHORT);
    }

    fn deployed(check: Option<DriftCheckStatus>) -> CameraTuning {
        let mut t = tuning(json!({
            "phase": "Deployed", "iteration": 1,
            "currentModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.4, "trainedAt": "2026-11-26T10:00:00Z" }
        }));
        t.status.as_mut().unwrap().last_drift_check = check;
        t
    }

    /// The capture worker reports serving the deployed model.
    fn serving(mut t: CameraTuning) -> CameraTuning {
        t.status.as_mut().unwrap().inference = Some(
            serde_json::from_value(json!({ "model": {
                "version": 1, "uri": "file:///data/models/1.onnx", "since": "2026-11-26T10:05:00Z" } }))
            .unwrap(),
        );
        t
    }

    fn check(time: &str, relative_accuracy: f64) -> Option<DriftCheckStatus> {
        Some(DriftCheckStatus {
            time: Time(at(time)),
            relative_accuracy,
            sample_size: Some(50),
        })
    }

    #[test]
    fn a_model_the_camera_serves_is_monitored() {
        assert_eq!(
            run(&deployed(None), &capturing()).status.phase,
            Some(Phase::Deployed)
        );
        assert_eq!(
            run(&serving(deployed(None)), &capturing()).status.phase,
            Some(Phase::Monitoring)
        );
        assert_eq!(
            run(
                &serving(deployed(check("2026-11-26T11:00:00Z", 0.95))),
                &capturing()
            )
            .status
            .phase,
            Some(Phase::Monitoring)
        );
    }

    #[test]
    fn drift_below_the_threshold_starts_the_next_iteration() {
        let plan = run(
            &serving(deployed(check("2026-11-26T11:00:00Z", 0.6))),
            &capturing(),
        );
        assert_eq!(plan.status.phase, Some(Phase::Retraining));
        assert_eq!(reasons(&plan), ["DriftDetected"]);
        assert_eq!(condition(&plan, "DriftDetected").status, "True");
        let job = plan.children.training_job.unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("entrance-train-2"));
        let env = serde_json::to_string(&job.spec.unwrap().template).unwrap();
        assert!(env.contains(r#""AUTOTUNER_DATASET_CAP","value":"5000""#), "{env}");

        // A check older than the deployed model says nothing about it.
        let plan = run(
            &serving(deployed(check("2026-11-26T09:00:00Z", 0.6))),
            &capturing(),
        );
        assert_eq!(plan.status.phase, Some(Phase::Monitoring));
        // Nor does one when drift monitoring is off.
        let mut off = serving(deployed(check("2026-11-26T11:00:00Z", 0.6)));
        off.spec.drift.enabled = false;
        assert_eq!(run(&off, &capturing()).status.phase, Some(Phase::Deployed));
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_holds() {
        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 10, "deadline": "2026-11-27T00:00:00Z" } }),
        );
        let first = plan(&t, &capturing(), at("2026-11-26T10:00:00Z"), &Config::default()).unwrap();
        let mut t2 = t.clone();
        t2.status.as_mut().unwrap().conditions = first.status.conditions.clone();
        let second = plan(&t2, &capturing(), at("2026-11-26T11:00:00Z"), &Config::default()).unwrap();
        assert_eq!(first.status.conditions, second.status.conditions);
        assert_eq!(
            condition(&second, "Progressing").last_transition_time.0,
            at("2026-11-26T10:00:00Z")
        );
    }

    #[test]
    fn durations_parse_like_go() {
        let secs = |t: &str| parse_duration(t).map(|d| d.as_secs_f64());
        assert_eq!(secs("24h"), Some(86400.0));
        assert_eq!(secs("1h30m"), Some(5400.0));
        assert_eq!(secs("1.5h"), Some(5400.0));
        assert_eq!(secs("90s"), Some(90.0));
        assert_eq!(secs("250ms"), Some(0.25));
        for bad in ["", "10", "tomorrow", "10 minutes", "5d", "h"] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }
}

//! The loop of one CameraTuning as a pure function: from the resource and what exists now to
//! the objects that should exist, the next status and the events to tell. No client in here, so
//! every transition is unit-tested directly.

use std::collections::BTreeMap;
use std::time::Duration;

use autotuner_api::{
    CameraTuning, CameraTuningStatus, DatasetStatus, DriftCheckStatus, ModelStatus, Phase, RefusedModel,
    promotion,
};
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
    let collected = Collected::of(&dataset);
    // A round's deadline counts from its start (the first reconcile, when capture starts, or
    // the drift that starts a retraining) and then stays put.
    let mut deadline = dataset
        .deadline
        .as_ref()
        .map_or_else(|| now + deadline_after, |d| d.0);
    let mut round_started_at = dataset.round_started_at.clone();
    let mut models = Models {
        current: old.current_model.clone(),
        previous: old.previous_model.clone(),
        rolled_back: old.rolled_back_model.clone(),
    };
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
            if models.current.is_none() {
                Phase::Training
            } else {
                Phase::Retraining
            }
        }
        Some(JobState::Succeeded) => match old.candidate_model.as_ref().filter(|c| c.version == next) {
            Some(candidate) => {
                finished_iteration = next;
                match judge(candidate, spec.rollout.min_improvement, models.current.as_ref()) {
                    Err(message) if models.current.is_some() => {
                        notes.push(note(false, "CandidateRejected", message));
                        Phase::Monitoring
                    }
                    Err(message) => {
                        // Only the off-the-shelf student serves, and no drift check watches it:
                        // nothing else would start another round. One starts now and trains on
                        // what the camera sees from here on, with the older images.
                        round_started_at = Some(Time(now));
                        deadline = now + deadline_after;
                        notes.push(note(
                            false,
                            "CandidateRejected",
                            format!(
                                "{message}. The camera keeps the off-the-shelf student; a new round collects {} \
                                 training images (or what there is at {deadline}) to train iteration {} on",
                                spec.dataset.train_size,
                                next + 1
                            ),
                        ));
                        Phase::Capturing
                    }
                    Ok(message) => {
                        notes.push(note(false, "ModelPromoted", message));
                        models.promote(candidate, &spec.training.student.uri);
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
            if models.current.is_none() {
                Phase::Capturing
            } else {
                Phase::Monitoring
            }
        }
        // Collecting a round: one before any model was promoted (the first, or the one after a
        // rejected candidate), or the one drift started (Retraining with no Job yet).
        None if models.current.is_none() || old.phase == Some(Phase::Retraining) => {
            let (collecting, training) = if models.current.is_none() {
                (Phase::Capturing, Phase::Training)
            } else {
                (Phase::Retraining, Phase::Retraining)
            };
            let mut images = collected;
            if iteration > 0 && round_started_at.is_none() {
                // A drift round an operator before `roundStartedAt` began (it counted stored
                // images): it restarts now rather than count every image and train at once.
                round_started_at = Some(Time(now));
                images = Collected { train: 0, eval: 0 };
            }
            match round(spec, images, now, deadline) {
                Round::Ready(message) => {
                    train_iteration = Some(next);
                    notes.push(note(false, "TrainingStarted", message));
                    training
                }
                Round::Collecting { stuck, wake_in } => {
                    waiting = stuck;
                    requeue_after = requeue_after.min(wake_in);
                    collecting
                }
            }
        }
        None => {
            let check = old.last_drift_check.as_ref();
            // A check that already started a round (whose candidate was then rejected) does not
            // start another on the frames that round trained on: the next check decides.
            let fresh = check.is_some_and(|c| {
                checks(c, models.current.as_ref())
                    && round_started_at
                        .as_ref()
                        .is_none_or(|started| c.time.0 > started.0)
            });
            let relative = check.map_or(1.0, |c| c.relative_accuracy);
            if let Some(reason) = rollback_reason(&old, &models, spec.rollout.rollback_margin) {
                let (bad, back) = models.roll_back(&reason, now);
                notes.push(note(
                    true,
                    "ModelRolledBack",
                    format!(
                        "iteration {bad} rolled back to iteration {back}: {reason}. \
                     The camera serves iteration {back} again; the next retraining starts from it"
                    ),
                ));
                Phase::Deployed
            } else if spec.drift.enabled && fresh && relative < spec.drift.min_relative_accuracy {
                // The loop runs again: a new round collects what the camera sees now.
                drift = true;
                // The round begins at the check that saw the drift, by the camera node's clock
                // (the worker compares it with its own frames' times, so no clock skew between
                // the nodes matters): frames selected before it are of the scene that drifted.
                round_started_at = check.map(|c| c.time.clone());
                deadline = now + deadline_after;
                notes.push(note(true, "DriftDetected", format!(
                    "the student agrees with the teacher at {relative:.2}, below {}: collecting {} new training images \
                     (or what there is at {deadline}) to retrain on, with the older ones (iteration {next})",
                    spec.drift.min_relative_accuracy, spec.dataset.train_size
                )));
                Phase::Retraining
            } else if serves(&old, models.current.as_ref()) {
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

    let deployed_uri = models
        .current
        .as_ref()
        .map_or(spec.training.student.uri.as_str(), |m| m.uri.as_str());
    let children = children::build(
        tuning,
        &Rollout {
            deployed_model_uri: deployed_uri,
            train_iteration,
            round_started_at: round_started_at.as_ref(),
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
                collected: collected.describe(spec),
                drift_round: phase == Phase::Retraining && train_iteration.is_none(),
                rolled_back: models.rolled_back_reason(),
            },
            now,
            generation,
        ),
        dataset: Some(DatasetStatus {
            // While a Job trains, no round collects and no deadline applies (an alert on a
            // passed deadline would otherwise fire on a round that trained at it).
            deadline: train_iteration.is_none().then_some(Time(deadline)),
            round_started_at,
            ..DatasetStatus::default()
        }),
        current_model: models.current,
        previous_model: models.previous,
        rolled_back_model: models.rolled_back,
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

/// Where a round of collection stands.
enum Round {
    /// Train now; the message says why.
    Ready(String),
    /// Keep collecting; `stuck` says why when the deadline passed without enough images.
    Collecting {
        stuck: Option<String>,
        wake_in: Duration,
    },
}

/// The images a round has collected so far, in each split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Collected {
    train: u64,
    eval: u64,
}

impl Collected {
    fn of(dataset: &DatasetStatus) -> Self {
        Self {
            train: dataset.round_images(),
            eval: dataset.round_eval_images(),
        }
    }

    fn describe(&self, spec: &autotuner_api::CameraTuningSpec) -> String {
        format!(
            "{} of {} training images, {} of {} evaluation images",
            self.train, spec.dataset.train_size, self.eval, spec.dataset.eval_size
        )
    }
}

/// A round trains once it holds `dataset.trainSize` training and `dataset.evalSize` evaluation
/// images, or at its deadline with at least `training.minTrainSize` and `training.minEvalSize`
/// (at most `dataset.evalSize`). Never without evaluation images: the Job judges its candidate on
/// them, and could not without.
fn round(
    spec: &autotuner_api::CameraTuningSpec,
    images: Collected,
    now: Timestamp,
    deadline: Timestamp,
) -> Round {
    let min_train = u64::from(spec.training.min_train_size);
    let min_eval = u64::from(spec.training.min_eval_size.min(spec.dataset.eval_size)).max(1);
    let (train_target, eval_target) = (
        u64::from(spec.dataset.train_size),
        u64::from(spec.dataset.eval_size),
    );
    let collected = images.describe(spec);
    if images.train >= train_target && images.eval >= eval_target {
        Round::Ready(format!("the round collected {collected}"))
    } else if now >= deadline && images.train >= min_train && images.eval >= min_eval {
        Round::Ready(format!(
            "the deadline passed with {collected} (at least {min_train} and {min_eval} needed): training on what there is"
        ))
    } else if now >= deadline {
        let advice = if images.train < min_train {
            "Check that the camera sees motion (motion.threshold, motion.minRegionArea) or lower training.minTrainSize"
                .to_string()
        } else {
            format!(
                "The evaluation split fills from its own time spans (one in every {} by dataset.trainSize and \
                 dataset.evalSize); wait for them or lower training.minEvalSize",
                (train_target + eval_target).div_ceil(eval_target.max(1))
            )
        };
        Round::Collecting {
            stuck: Some(format!(
                "the deadline passed with only {collected}, and training needs at least {min_train} and {min_eval}; \
                 still capturing. {advice}"
            )),
            wake_in: RESYNC,
        }
    } else {
        let wake_in = Duration::try_from(deadline.duration_since(now)).unwrap_or(SHORT);
        let stuck = (images.train >= train_target).then(|| {
            format!("{collected}: the training split is full; waiting for the evaluation split to judge a candidate on")
        });
        Round::Collecting { stuck, wake_in }
    }
}

/// The deployed model, the one it replaced, and the last one rolled back.
struct Models {
    current: Option<ModelStatus>,
    previous: Option<ModelStatus>,
    rolled_back: Option<RefusedModel>,
}

impl Models {
    /// `candidate` becomes current; the model it replaces (the off-the-shelf student the first
    /// time, scored by the candidate's own baseline) is kept to roll back to.
    fn promote(&mut self, candidate: &ModelStatus, student_uri: &str) {
        let replaced = self.current.take().unwrap_or_else(|| ModelStatus {
            version: 0,
            uri: student_uri.to_string(),
            map: candidate.baseline_map.unwrap_or(0.0),
            map50: candidate.baseline_map50,
            baseline_map: None,
            baseline_map50: None,
            map_gain_lower_bound: None,
            trained_at: None,
        });
        self.previous = Some(replaced);
        self.current = Some(candidate.clone());
    }

    /// The previous model serves again; returns the versions (rolled back, restored).
    fn roll_back(&mut self, reason: &str, now: Timestamp) -> (u32, u32) {
        let bad = self.current.take().expect("a rollback needs a current model");
        let back = self.previous.take().expect("a rollback needs a previous model");
        let versions = (bad.version, back.version);
        self.rolled_back = Some(RefusedModel {
            version: bad.version,
            uri: bad.uri,
            reason: reason.chars().take(1000).collect(),
            time: Time(now),
            retrying: None,
        });
        self.current = Some(back);
        versions
    }

    /// Why the last rollback happened, while no newer model has been promoted since.
    fn rolled_back_reason(&self) -> Option<String> {
        let rolled = self.rolled_back.as_ref()?;
        let current = self.current.as_ref().map_or(0, |c| c.version);
        (rolled.version > current).then(|| {
            format!(
                "iteration {} was rolled back: {}. Iteration {current} serves; check the footage of the \
                 camera and the teacher's labels, or lower spec.rollout.rollbackMargin if the comparison is too strict",
                rolled.version, rolled.reason
            )
        })
    }
}

/// Whether a candidate beats the model its Job started from, on the same eval split: the
/// trainer scores the starting model (the deployed one, or the off-the-shelf student the first
/// time) on that split as the candidate's baseline, and bounds the gain over the split's images
/// (`autotuner_api::promotion`). `Ok` says why it is promoted, `Err` why not and what to do.
fn judge(candidate: &ModelStatus, margin: f64, current: Option<&ModelStatus>) -> Result<String, String> {
    let next = candidate.version;
    // The bound is of the gain over the Job's own baseline; a bar from elsewhere has none.
    let (bar, lower_bound) = match candidate.baseline_map {
        Some(bar) => (Some(bar), candidate.map_gain_lower_bound),
        None => (current.map(|m| m.map), None),
    };
    let Some(bar) = bar else {
        return Ok(format!(
            "iteration {next} reached mAP {:.3} (the model it started from: unknown); rolling it out to the camera",
            candidate.map
        ));
    };
    let gain = candidate.map - bar;
    if promotion::clears(gain, lower_bound, margin) {
        return Ok(format!(
            "iteration {next} reached mAP {:.3} (the model it started from: {bar:.3}); rolling it out to the camera",
            candidate.map
        ));
    }
    Err(match lower_bound {
        Some(low) if gain >= margin => format!(
            "iteration {next} reached mAP {:.3}, {gain:.3} above the {bar:.3} of the model it started from on the same \
             eval split, but the split's images support only {low:.3} of that gain (95% lower bound), not \
             spec.rollout.minImprovement {margin}; keeping the deployed student (a larger eval split, \
             spec.dataset.evalSize, makes the bound tighter)",
            candidate.map
        ),
        _ => format!(
            "iteration {next} reached mAP {:.3}, not {margin} above the {bar:.3} of the model it started from on the same \
             eval split; keeping the deployed student",
            candidate.map
        ),
    })
}

/// Why the current model must give way to the previous one, if it must: the camera's node
/// refused it, or in its probation a drift check scored it more than `margin` below the
/// previous model on the same samples.
fn rollback_reason(status: &CameraTuningStatus, models: &Models, margin: f64) -> Option<String> {
    let (current, _) = (models.current.as_ref()?, models.previous.as_ref()?);
    let refused = status
        .inference
        .as_ref()
        .and_then(|i| i.refused_model.as_ref())
        .filter(|r| r.version == current.version && r.uri == current.uri)
        // A model the node could not fetch is tried again: the store may be back in a moment.
        .filter(|r| r.retrying != Some(true));
    if let Some(refused) = refused {
        return Some(format!("the camera's node refused it ({})", refused.reason));
    }
    let check = status.last_drift_check.as_ref()?;
    let (ap50, previous) = (check.ap50?, check.previous_model_ap50?);
    (check.model_version == Some(current.version) && previous - ap50 > margin).then(|| {
        format!(
            "on {} drift samples its AP@0.5 against the teacher is {ap50:.3}, {:.3} below the previous model's {previous:.3} \
             (spec.rollout.rollbackMargin {margin})",
            check.sample_size.unwrap_or(0),
            previous - ap50
        )
    })
}

/// Whether a drift check measured `model`: the check names its version (a check of a model
/// rolled back since says nothing about the one serving now); older checks without a version
/// count when they are newer than the model.
fn checks(check: &DriftCheckStatus, model: Option<&ModelStatus>) -> bool {
    match (check.model_version, model) {
        (Some(version), Some(model)) => version == model.version,
        (_, model) => model
            .and_then(|m| m.trained_at.as_ref())
            .is_none_or(|t| check.time.0 > t.0),
    }
}

/// Whether the camera's node reports serving `model` (the capture worker swaps models in
/// without a restart and says which one serves in `status.inference.model`).
fn serves(status: &CameraTuningStatus, model: Option<&ModelStatus>) -> bool {
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
    /// What the round has collected, against its targets.
    collected: String,
    /// Retraining, still collecting the round drift started (no Job yet).
    drift_round: bool,
    /// A rollback no newer model has superseded yet.
    rolled_back: Option<String>,
}

/// Ready, Progressing, Degraded and DriftDetected for this phase, and kstatus' two abnormal-true
/// conditions (Reconciling: the loop is working towards a tuned student; Stalled: it stopped
/// and needs a person), from which Flux and Argo CD compute health without custom code. A
/// condition whose status does not change keeps its lastTransitionTime; every one says which
/// generation of the spec it describes.
fn conditions(
    old: &[Condition],
    phase: Phase,
    why: &Reasons,
    now: Timestamp,
    generation: Option<i64>,
) -> Vec<Condition> {
    let phase_name = format!("{phase:?}");
    let ready = matches!(phase, Phase::Deployed | Phase::Monitoring);
    let progressing = matches!(
        phase,
        Phase::Pending | Phase::Capturing | Phase::Training | Phase::Evaluating | Phase::Retraining
    );
    let progress_message = why.waiting.clone().unwrap_or_else(|| match phase {
        Phase::Capturing => why.collected.clone(),
        Phase::Pending => "creating the capture workload".into(),
        Phase::Retraining if why.drift_round => format!("since the drift: {}", why.collected),
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
        (
            "Progressing",
            progressing,
            phase_name.clone(),
            progress_message.clone(),
        ),
        match (&why.failure, &why.rolled_back) {
            (Some(failure), _) => ("Degraded", true, "TrainingFailed".into(), failure.clone()),
            (None, Some(rollback)) => ("Degraded", true, "ModelRolledBack".into(), rollback.clone()),
            (None, None) => ("Degraded", false, "AsExpected".into(), "no failure".into()),
        },
        (
            "Reconciling",
            progressing,
            phase_name.clone(),
            progress_message.clone(),
        ),
        (
            "Stalled",
            phase == Phase::Failed,
            if phase == Phase::Failed {
                "TrainingFailed".to_string()
            } else {
                "AsExpected".to_string()
            },
            match (phase, &why.failure) {
                (Phase::Failed, Some(failure)) => failure.clone(),
                (Phase::Failed, None) => "stopped".into(),
                _ => "not stalled".into(),
            },
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
                "the student fell behind the teacher; collecting what the camera sees now to retrain".into()
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
                observed_generation: generation,
            }
        })
        .collect()
}

/// A spec duration as the operator's clock counts.
pub fn parse_duration(text: &str) -> Option<SignedDuration> {
    SignedDuration::try_from(autotuner_api::duration::parse(text)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use autotuner_api::{DriftCheckStatus, RoundImages};
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
            "10 of 1000 training images, 0 of 200 evaluation images"
        );

        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 10, "deadline": "2026-11-26T12:01:00Z" } }),
        );
        assert_eq!(run(&t, &capturing()).requeue_after, Duration::from_secs(60));
    }

    #[test]
    fn reaching_the_train_and_eval_sizes_starts_iteration_one() {
        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 1000, "eval": 200, "deadline": "2026-11-27T00:00:00Z" } }),
        );
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Training));
        assert_eq!(reasons(&plan), ["TrainingStarted"]);
        let job = plan.children.training_job.unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("entrance-train-1"));
        assert_eq!(
            plan.notes[0].message,
            "the round collected 1000 of 1000 training images, 200 of 200 evaluation images"
        );
    }

    #[test]
    fn a_full_training_split_waits_for_the_evaluation_split_and_says_so() {
        // The ordering CI met: the training split filled while the evaluation split, which fills
        // from its own time spans, had nothing on the volume yet. A Job now could not judge.
        for eval in [json!(null), json!(0), json!(199)] {
            let t = tuning(json!({ "phase": "Capturing",
                "dataset": { "train": 1000, "eval": eval, "deadline": "2026-11-27T00:00:00Z" } }));
            let plan = run(&t, &capturing());
            assert_eq!(plan.status.phase, Some(Phase::Capturing), "eval {eval}");
            assert!(plan.children.training_job.is_none(), "eval {eval}");
            assert!(plan.notes.is_empty(), "eval {eval}");
            let progressing = condition(&plan, "Progressing");
            let shown = eval.as_u64().unwrap_or(0);
            assert_eq!(
                progressing.message,
                format!(
                    "1000 of 1000 training images, {shown} of 200 evaluation images: the training split is full; \
                     waiting for the evaluation split to judge a candidate on"
                )
            );
            assert_eq!(progressing.status, "True");
        }
    }

    #[test]
    fn the_deadline_never_trains_without_min_eval_size_evaluation_images() {
        let past = "2026-11-26T11:00:00Z";
        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 1000, "eval": 19, "deadline": past } }),
        );
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Capturing));
        assert!(plan.children.training_job.is_none());
        let message = &condition(&plan, "Progressing").message;
        assert!(
            message.contains("only 1000 of 1000 training images, 19 of 200 evaluation images")
                && message.contains("at least 100 and 20")
                && message.contains("lower training.minEvalSize"),
            "{message}"
        );

        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 150, "eval": 20, "deadline": past } }),
        );
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Training));
        assert!(plan.children.training_job.is_some());

        // minEvalSize asks for at most dataset.evalSize.
        let mut t =
            tuning(json!({ "phase": "Capturing", "dataset": { "train": 150, "eval": 5, "deadline": past } }));
        t.spec.dataset.eval_size = 5;
        assert_eq!(run(&t, &capturing()).status.phase, Some(Phase::Training));
        t.spec.training.min_eval_size = 3;
        t.spec.dataset.eval_size = 200;
        t.status.as_mut().unwrap().dataset.as_mut().unwrap().eval = Some(2);
        assert_eq!(run(&t, &capturing()).status.phase, Some(Phase::Capturing));
        t.status.as_mut().unwrap().dataset.as_mut().unwrap().eval = Some(3);
        assert_eq!(run(&t, &capturing()).status.phase, Some(Phase::Training));
    }

    #[test]
    fn the_deadline_trains_on_enough_images_and_explains_when_there_are_too_few() {
        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 150, "eval": 30, "deadline": "2026-11-26T11:00:00Z" } }),
        );
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Training));
        assert!(plan.notes[0].message.contains("deadline passed with 150 of 1000"));

        let t = tuning(
            json!({ "phase": "Capturing", "dataset": { "train": 20, "eval": 30, "deadline": "2026-11-26T11:00:00Z" } }),
        );
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Capturing));
        assert!(plan.children.training_job.is_none());
        let progressing = condition(&plan, "Progressing");
        assert!(
            progressing
                .message
                .contains("only 20 of 1000 training images, 30 of 200 evaluation images")
                && progressing.message.contains("at least 100 and 20")
                && progressing.message.contains("sees motion"),
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
        // The round is over: its deadline no longer applies.
        assert_eq!(plan.status.dataset.unwrap().deadline, None);
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
            !template.contains("onnx") && !template.contains(autotuner_api::contract::ENV_TRAINING),
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
    fn a_rejected_first_candidate_starts_a_new_round_that_trains_on_the_images_it_collects() {
        // Iteration 1 scored below the off-the-shelf student it started from: nothing is
        // promoted, and no drift check watches the off-the-shelf student.
        let t = tuning(json!({
            "phase": "Training", "iteration": 0,
            "dataset": { "train": 1000, "eval": 200 },
            "candidateModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.20, "baselineMap": 0.25 }
        }));
        let plan = run(&t, &with_job(1, JobState::Succeeded));
        assert_eq!(reasons(&plan), ["CandidateRejected"]);
        assert!(
            plan.notes[0]
                .message
                .contains("a new round collects 1000 training images")
                && plan.notes[0].message.contains("to train iteration 2 on"),
            "{}",
            plan.notes[0].message
        );
        assert_eq!(plan.status.phase, Some(Phase::Capturing));
        assert_eq!(plan.status.iteration, Some(1));
        assert!(plan.status.current_model.is_none());
        let dataset = plan.status.dataset.clone().unwrap();
        assert_eq!(dataset.round_started_at, Some(Time(at(NOW))));
        assert_eq!(dataset.deadline, Some(Time(at("2026-11-27T12:00:00Z"))));
        assert!(plan.children.training_job.is_none());

        // The new round counts its own images: the 1000 iteration 1 trained on are not enough.
        let mut next = tuning(serde_json::to_value(&plan.status).unwrap());
        let collecting = run(&next, &capturing());
        assert_eq!(collecting.status.phase, Some(Phase::Capturing));
        assert!(collecting.children.training_job.is_none());
        assert_eq!(
            condition(&collecting, "Progressing").message,
            "0 of 1000 training images, 0 of 200 evaluation images"
        );

        // Once the worker counted a full round since it began, iteration 2 trains.
        next.status.as_mut().unwrap().dataset.as_mut().unwrap().round = Some(RoundImages {
            since: Time(at(NOW)),
            train: 1000,
            eval: 200,
        });
        let training = run(&next, &capturing());
        assert_eq!(reasons(&training), ["TrainingStarted"]);
        let job = training.children.training_job.unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("entrance-train-2"));
        let running = run(&next, &with_job(2, JobState::Running));
        assert_eq!(running.status.phase, Some(Phase::Training));
    }

    #[test]
    fn a_negative_margin_deploys_a_candidate_up_to_that_much_worse() {
        let t = |margin: f64| {
            let mut t = tuning(json!({
                "phase": "Training", "iteration": 0,
                "candidateModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.25, "baselineMap": 0.28 }
            }));
            t.spec.rollout.min_improvement = margin;
            t
        };
        let judged = |margin| run(&t(margin), &with_job(1, JobState::Succeeded));
        assert_eq!(reasons(&judged(0.0)), ["CandidateRejected"]);
        assert_eq!(reasons(&judged(-0.02)), ["CandidateRejected"]);
        assert_eq!(reasons(&judged(-0.04)), ["ModelPromoted"]);
        let every = judged(-1.0);
        assert_eq!(reasons(&every), ["ModelPromoted"]);
        assert_eq!(every.status.current_model.unwrap().version, 1);
    }

    #[test]
    fn a_gain_the_eval_images_do_not_support_is_rejected_and_the_event_says_why() {
        // 0.05 above the bar, but the paired bootstrap over the split's images bounds it at -0.01.
        let judged = |lower_bound: Option<f64>| {
            let t = tuning(json!({
                "phase": "Training", "iteration": 0,
                "candidateModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.33,
                                    "baselineMap": 0.28, "mapGainLowerBound": lower_bound }
            }));
            run(&t, &with_job(1, JobState::Succeeded))
        };
        let rejected = judged(Some(-0.01));
        assert_eq!(reasons(&rejected), ["CandidateRejected"]);
        let message = &rejected.notes[0].message;
        assert!(
            message.contains("support only -0.010") && message.contains("evalSize"),
            "{message}"
        );
        assert_eq!(rejected.status.current_model, None);
        // Bounded above the margin, or not bounded (a trainer from before the bound): promoted.
        assert_eq!(reasons(&judged(Some(0.02))), ["ModelPromoted"]);
        assert_eq!(reasons(&judged(None)), ["ModelPromoted"]);
    }

    #[test]
    fn a_finished_job_without_a_report_is_evaluating() {
        let t = tuning(json!({ "phase": "Training", "iteration": 0 }));
        let plan = run(&t, &with_job(1, JobState::Succeeded));
        assert_eq!(plan.status.phase, Some(Phase::Evaluating));
        assert_eq!(plan.requeue_after, SHORT);
    }

    #[test]
    fn kstatus_reads_a_collecting_tuning_as_reconciling_a_failed_one_as_stalled_and_a_serving_one_as_neither()
    {
        let holds = |plan: &Plan, type_: &str| condition(plan, type_).status == "True";
        let capturing = run(&tuning(json!({})), &capturing());
        assert_eq!(capturing.status.phase, Some(Phase::Capturing));
        assert!(holds(&capturing, "Reconciling") && !holds(&capturing, "Stalled"));
        assert_eq!(
            condition(&capturing, "Reconciling").message,
            condition(&capturing, "Progressing").message
        );
        let failed = run(
            &tuning(json!({ "phase": "Training", "observedGeneration": 1 })),
            &with_job(
                1,
                JobState::Failed {
                    message: "backoff limit".into(),
                },
            ),
        );
        assert_eq!(failed.status.phase, Some(Phase::Failed));
        assert!(holds(&failed, "Stalled") && !holds(&failed, "Reconciling"));
        assert!(condition(&failed, "Stalled").message.contains("kubectl logs"));
        let serving = run(
            &tuning(json!({ "phase": "Training", "iteration": 0,
                            "candidateModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.40,
                                                "baselineMap": 0.28, "trainedAt": "2026-11-26T11:59:00Z" } })),
            &with_job(1, JobState::Succeeded),
        );
        assert_eq!(serving.status.phase, Some(Phase::Deployed));
        assert!(holds(&serving, "Ready") && !holds(&serving, "Reconciling") && !holds(&serving, "Stalled"));
        // Every condition says which spec it describes.
        assert!(
            serving
                .status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(1))
        );
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
            model_version: None,
            ap50: None,
            previous_model_ap50: None,
        })
    }

    /// A check the capture worker made of `version` during its probation.
    fn probation_check(version: u32, ap50: f64, previous: f64) -> Option<DriftCheckStatus> {
        Some(DriftCheckStatus {
            model_version: Some(version),
            ap50: Some(ap50),
            previous_model_ap50: Some(previous),
            ..check("2026-11-26T11:30:00Z", ap50 / 0.8).unwrap()
        })
    }

    /// Iteration 2 was promoted over iteration 1 and serves.
    fn promoted_second() -> CameraTuning {
        serving_version(
            tuning(json!({
                "phase": "Monitoring", "iteration": 2,
                "currentModel": { "version": 2, "uri": "file:///data/models/2.onnx", "map": 0.45, "map50": 0.8,
                                  "trainedAt": "2026-11-26T11:00:00Z" },
                "previousModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.4, "map50": 0.78 },
            })),
            2,
        )
    }

    fn serving_version(mut t: CameraTuning, version: u32) -> CameraTuning {
        t.status.as_mut().unwrap().inference = Some(
            serde_json::from_value(json!({ "model": {
                "version": version, "uri": format!("file:///data/models/{version}.onnx"), "since": "2026-11-26T11:05:00Z" } }))
            .unwrap(),
        );
        t
    }

    #[test]
    fn the_first_promotion_keeps_the_off_the_shelf_student_to_roll_back_to() {
        let t = tuning(json!({
            "phase": "Training", "iteration": 0,
            "candidateModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.40, "map50": 0.82,
                                "baselineMap": 0.28, "baselineMap50": 0.77 }
        }));
        let plan = run(&t, &with_job(1, JobState::Succeeded));
        let previous = plan.status.previous_model.unwrap();
        assert_eq!(
            (
                previous.version,
                previous.uri.as_str(),
                previous.map,
                previous.map50
            ),
            (0, "file:///m/ssd.onnx", 0.28, Some(0.77))
        );
    }

    #[test]
    fn a_candidate_is_judged_against_the_model_it_started_from_on_the_same_split() {
        // The deployed model scored 0.40 on its own (older) eval split, but 0.30 on the split the
        // candidate was evaluated on: the candidate's 0.36 beats it there.
        let t = tuning(json!({
            "phase": "Retraining", "iteration": 1,
            "currentModel": { "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.40 },
            "candidateModel": { "version": 2, "uri": "file:///data/models/2.onnx", "map": 0.36, "baselineMap": 0.30 }
        }));
        let plan = run(&t, &with_job(2, JobState::Succeeded));
        assert_eq!(reasons(&plan), ["ModelPromoted"]);
        assert_eq!(plan.status.current_model.unwrap().version, 2);
        assert_eq!(plan.status.previous_model.unwrap().version, 1);
    }

    #[test]
    fn a_model_the_edge_refuses_is_rolled_back_at_once() {
        let mut t = promoted_second();
        t.status.as_mut().unwrap().inference = Some(
            serde_json::from_value(json!({
                "model": { "version": 1, "uri": "file:///data/models/1.onnx", "since": "2026-11-26T10:00:00Z" },
                "refusedModel": { "version": 2, "uri": "file:///data/models/2.onnx",
                                  "reason": "the model does not load: bad graph", "time": "2026-11-26T11:06:00Z" } }))
            .unwrap(),
        );
        let mut retried = t.clone();
        let refused = &mut retried
            .status
            .as_mut()
            .unwrap()
            .inference
            .as_mut()
            .unwrap()
            .refused_model;
        refused.as_mut().unwrap().retrying = Some(true);
        assert!(
            run(&retried, &capturing()).notes.is_empty(),
            "a model the node could not fetch yet is not rolled back"
        );
        let plan = run(&t, &capturing());
        assert_eq!(reasons(&plan), ["ModelRolledBack"]);
        assert!(plan.notes[0].warning);
        assert!(
            plan.notes[0]
                .message
                .contains("refused it (the model does not load: bad graph)")
        );
        assert_eq!(plan.status.current_model.as_ref().unwrap().version, 1);
        assert_eq!(plan.status.previous_model, None, "one step back only");
        let rolled = plan.status.rolled_back_model.clone().unwrap();
        assert_eq!((rolled.version, rolled.time.0), (2, at(NOW)));
        let degraded = condition(&plan, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ModelRolledBack")
        );
        assert!(
            degraded.message.contains("Iteration 1 serves"),
            "{}",
            degraded.message
        );
        // The node already serves iteration 1 again: Monitoring, still Degraded, no new event.
        let mut after = t.clone();
        after.status = Some(plan.status.clone());
        after.status.as_mut().unwrap().inference = t.status.as_ref().unwrap().inference.clone();
        let again = run(&after, &capturing());
        assert_eq!(again.status.phase, Some(Phase::Monitoring));
        assert!(again.notes.is_empty());
        assert_eq!(condition(&again, "Degraded").reason, "ModelRolledBack");
    }

    #[test]
    fn a_new_model_behind_the_previous_one_in_probation_is_rolled_back() {
        // Within the margin (0.05): kept.
        let mut t = promoted_second();
        t.status.as_mut().unwrap().last_drift_check = probation_check(2, 0.74, 0.78);
        let plan = run(&t, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Monitoring));
        assert_eq!(plan.status.current_model.unwrap().version, 2);
        // 0.10 behind the previous model on the same samples: rolled back.
        t.status.as_mut().unwrap().last_drift_check = probation_check(2, 0.68, 0.78);
        let plan = run(&t, &capturing());
        assert_eq!(reasons(&plan), ["ModelRolledBack"]);
        assert!(
            plan.notes[0]
                .message
                .contains("0.100 below the previous model's 0.780"),
            "{}",
            plan.notes[0].message
        );
        assert_eq!(plan.status.current_model.as_ref().unwrap().version, 1);
        assert_eq!(plan.status.phase, Some(Phase::Deployed));
        // The check of the rolled-back model says nothing about iteration 1: no retraining on it.
        let mut next = t.clone();
        next.status = Some(CameraTuningStatus {
            inference: serving_version(t.clone(), 1).status.unwrap().inference,
            last_drift_check: t.status.as_ref().unwrap().last_drift_check.clone(),
            ..plan.status.clone()
        });
        let plan = run(&next, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Monitoring));
        assert!(plan.children.training_job.is_none());
        // A wider margin keeps the new model.
        t.spec.rollout.rollback_margin = 0.2;
        assert_eq!(run(&t, &capturing()).status.current_model.unwrap().version, 2);
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
    fn drift_below_the_threshold_starts_a_new_round_of_collection() {
        let mut drifted = serving(deployed(check("2026-11-26T11:00:00Z", 0.6)));
        drifted.status.as_mut().unwrap().dataset = Some(DatasetStatus {
            train: Some(1000),
            train_stored: Some(1400),
            deadline: Some(Time(at("2026-11-25T12:00:00Z"))),
            ..DatasetStatus::default()
        });
        let plan = run(&drifted, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Retraining));
        assert_eq!(reasons(&plan), ["DriftDetected"]);
        assert_eq!(condition(&plan, "DriftDetected").status, "True");
        // No Job yet: the round begins at the check that saw the drift, with a deadline of its own.
        assert!(plan.children.training_job.is_none());
        let dataset = plan.status.dataset.clone().unwrap();
        assert_eq!(dataset.round_started_at, Some(Time(at("2026-11-26T11:00:00Z"))));
        assert_eq!(dataset.deadline.unwrap().0, at("2026-11-27T12:00:00Z"));

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
    fn a_drift_round_from_before_round_times_restarts_instead_of_training_on_everything() {
        let mut upgraded = serving(deployed(check("2026-11-26T11:00:00Z", 0.6)));
        let status = upgraded.status.as_mut().unwrap();
        status.phase = Some(Phase::Retraining);
        status.dataset = Some(DatasetStatus {
            train: Some(1000),
            train_stored: Some(2400),
            deadline: Some(Time(at("2026-11-27T12:00:00Z"))),
            ..DatasetStatus::default()
        });
        let plan = run(&upgraded, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Retraining));
        assert!(plan.children.training_job.is_none(), "{:?}", plan.notes);
        let dataset = plan.status.dataset.unwrap();
        assert_eq!(dataset.round_started_at, Some(Time(at("2026-11-26T12:00:00Z"))));
        assert_eq!(dataset.deadline.unwrap().0, at("2026-11-27T12:00:00Z"));
    }

    #[test]
    fn a_rejected_candidate_waits_for_a_newer_check_before_another_round_starts() {
        // Iteration 2, trained on the round the 11:00 check started, was rejected: iteration 1
        // serves on and the check that started that round is still the latest.
        let mut rejected = serving(deployed(check("2026-11-26T11:00:00Z", 0.6)));
        let status = rejected.status.as_mut().unwrap();
        status.phase = Some(Phase::Monitoring);
        status.iteration = Some(2);
        status.dataset = Some(DatasetStatus {
            train: Some(1000),
            train_stored: Some(2400),
            round_started_at: Some(Time(at("2026-11-26T11:00:00Z"))),
            round: Some(RoundImages {
                since: Time(at("2026-11-26T11:00:00Z")),
                train: 1000,
                eval: 200,
            }),
            ..DatasetStatus::default()
        });
        let plan = run(&rejected, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Monitoring), "{:?}", plan.notes);
        assert!(reasons(&plan).is_empty(), "{:?}", plan.notes);
        assert!(plan.children.training_job.is_none());

        // A newer check that still sees the drift starts a round of its own, counted from zero.
        rejected.status.as_mut().unwrap().last_drift_check = check("2026-11-26T12:00:00Z", 0.6);
        let plan = run(&rejected, &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Retraining));
        assert_eq!(reasons(&plan), ["DriftDetected"]);
        let dataset = plan.status.dataset.unwrap();
        assert_eq!(dataset.round_started_at, Some(Time(at("2026-11-26T12:00:00Z"))));
        assert_eq!(dataset.round_images(), 0);
    }

    #[test]
    fn the_round_drift_started_trains_once_it_has_collected_the_train_size_of_its_own_frames() {
        let started = Time(at("2026-11-26T11:00:00Z"));
        let collecting = |round: Option<RoundImages>| {
            let mut t = serving(deployed(check("2026-11-26T11:00:00Z", 0.6)));
            let status = t.status.as_mut().unwrap();
            status.phase = Some(Phase::Retraining);
            status.dataset = Some(DatasetStatus {
                train: Some(1000),
                train_stored: Some(2400),
                round_started_at: Some(started.clone()),
                round,
                deadline: Some(Time(at("2026-11-27T12:00:00Z"))),
                ..DatasetStatus::default()
            });
            t
        };
        let counted = |since: &Time, train: u64| {
            Some(RoundImages {
                since: since.clone(),
                train,
                eval: train / 5,
            })
        };
        let plan = run(&collecting(counted(&started, 999)), &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Retraining));
        assert!(plan.children.training_job.is_none());
        assert!(reasons(&plan).is_empty(), "{:?}", plan.notes);
        assert_eq!(
            condition(&plan, "Progressing").message,
            "since the drift: 999 of 1000 training images, 199 of 200 evaluation images"
        );
        // The round's start and deadline stay put while it collects.
        let dataset = plan.status.dataset.clone().unwrap();
        assert_eq!(dataset.round_started_at, Some(started.clone()));
        assert_eq!(dataset.deadline.unwrap().0, at("2026-11-27T12:00:00Z"));
        // However many images were stored since (2400 in all), only a count for this round's
        // start says how many are of it: the worker's count of the last round does not train.
        let last_round = Time(at("2026-11-20T08:00:00Z"));
        let plan = run(&collecting(counted(&last_round, 1000)), &capturing());
        assert!(plan.children.training_job.is_none());
        assert!(
            run(&collecting(None), &capturing())
                .children
                .training_job
                .is_none()
        );

        // A full training split of the round's own frames still waits for the round's own
        // evaluation images: the candidate is judged on the scene as it is now.
        let mut full_train = counted(&started, 1000);
        full_train.as_mut().unwrap().eval = 150;
        let plan = run(&collecting(full_train), &capturing());
        assert!(plan.children.training_job.is_none(), "{:?}", plan.notes);
        assert!(
            condition(&plan, "Progressing")
                .message
                .contains("waiting for the evaluation split")
        );

        let plan = run(&collecting(counted(&started, 1000)), &capturing());
        assert_eq!(plan.status.phase, Some(Phase::Retraining));
        assert_eq!(reasons(&plan), ["TrainingStarted"]);
        let job = plan.children.training_job.unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("entrance-train-2"));
        let env = serde_json::to_string(&job.spec.unwrap().template).unwrap();
        assert!(env.contains(r#"\"datasetCap\":5000"#), "{env}");
        assert!(
            env.contains("file:///data/models/1.onnx"),
            "starts from the deployed model: {env}"
        );
        assert!(
            env.contains(r#"\"roundStartedAt\":\"2026-11-26T11:00:00Z\""#),
            "judges on the round's frames: {env}"
        );
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
}

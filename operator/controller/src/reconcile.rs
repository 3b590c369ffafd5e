//! The one impure step: read what exists, plan, then apply children, status and events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autotuner_api::contract::OPERATOR_FIELD_MANAGER;
use autotuner_api::{CameraTuning, CameraTuningStatus, Phase};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use crate::children::{self, Children, labels, names};
use crate::plan::{self, JobState, Observed};
use crate::{Config, Error, Metrics};

/// Removes the shared annotator when its last CameraTuning goes.
pub const FINALIZER: &str = "autotuner.io/annotator-cleanup";
/// Annotation with the hash of what the operator last applied, to skip applies that change nothing.
const APPLIED_HASH: &str = "autotuner.io/applied-hash";

/// Caches of what the operator watches, kept by reflectors.
#[derive(Debug, Clone)]
pub struct Stores {
    pub tunings: Store<CameraTuning>,
    pub deployments: Store<Deployment>,
    pub jobs: Store<Job>,
    ready: Arc<tokio::sync::OnceCell<()>>,
}

impl Stores {
    pub fn new(tunings: Store<CameraTuning>, deployments: Store<Deployment>, jobs: Store<Job>) -> Self {
        Self {
            tunings,
            deployments,
            jobs,
            ready: Arc::default(),
        }
    }

    /// Resolves once every cache holds its initial list.
    async fn wait_until_ready(&self) {
        // `Store::wait_until_ready` wakes only the last of several concurrent waiters (it polls a
        // oneshot channel), so reconciliations running side by side could wait forever: one
        // task waits on the stores, the others on this cell.
        self.ready
            .get_or_init(|| async {
                // Err only when a reflector's writer is gone, i.e. the controller is stopping.
                let _ = futures::future::join3(
                    self.tunings.wait_until_ready(),
                    self.deployments.wait_until_ready(),
                    self.jobs.wait_until_ready(),
                )
                .await;
            })
            .await;
    }
}

/// Shared by every reconciliation.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub stores: Stores,
    /// Hashes of children applied recently that no reflector watches (ServiceAccounts, Roles,
    /// claims, Services), so that a steady state costs no writes. Entries expire, so a child
    /// deleted by hand comes back within `config.reapply_after`.
    applied: Mutex<HashMap<String, (String, Instant)>>,
    /// Consecutive failures per CameraTuning, for the error backoff.
    failures: Mutex<HashMap<ObjectRef<CameraTuning>, u32>>,
}

impl Context {
    pub fn new(client: Client, config: Config, recorder: Recorder, metrics: Metrics, stores: Stores) -> Self {
        Self {
            client,
            config,
            recorder,
            metrics,
            stores,
            applied: Mutex::default(),
            failures: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub async fn reconcile(tuning: Arc<CameraTuning>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Decisions read the caches (which annotators are still used, which Jobs exist): never act on
    // a cache that has not finished its initial list, or a restarted operator could delete an
    // annotator in use or start a Job twice. Instant once they are filled.
    ctx.stores.wait_until_ready().await;
    let started = Instant::now();
    ctx.metrics.reconciliations.inc();
    let namespace = tuning.namespace().ok_or(Error::NotNamespaced)?;
    let api: Api<CameraTuning> = Api::namespaced(ctx.client.clone(), &namespace);
    let work = finalizer(&api, FINALIZER, tuning, |event| async {
        match event {
            Finalizer::Apply(tuning) => apply(&tuning, &ctx).await,
            Finalizer::Cleanup(tuning) => cleanup(&tuning, &ctx).await,
        }
    });
    let timeout = ctx.config.reconcile_timeout;
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(done) => done.map_err(|e| Error::Finalizer(Box::new(e))),
        Err(_) => Err(Error::Timeout(timeout)),
    };
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    result
}

/// Transient errors back off exponentially per CameraTuning (5 s doubling to 5 min); an invalid
/// spec waits for the next change instead of retrying.
pub fn error_policy(tuning: Arc<CameraTuning>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .with_label_values(&[error.metric_label()])
        .inc();
    warn!(name = %tuning.name_any(), namespace = ?tuning.namespace(), error = %error, "reconcile failed");
    if error.is_invalid_spec() {
        return Action::await_change();
    }
    let mut failures = ctx.failures.lock();
    let count = failures.entry(ObjectRef::from_obj(&*tuning)).or_insert(0);
    *count = (*count + 1).min(10);
    Action::requeue(Duration::from_secs(5 * 2u64.pow(*count - 1)).min(Duration::from_secs(300)))
}

async fn apply(tuning: &CameraTuning, ctx: &Context) -> Result<Action, Error> {
    let observed = observe(tuning, &ctx.stores);
    let plan = match plan::plan(tuning, &observed, Timestamp::now(), &ctx.config) {
        Ok(plan) => plan,
        Err(invalid) => {
            publish(ctx, tuning, EventType::Warning, "InvalidSpec", &invalid.0).await;
            return Err(Error::InvalidSpec(invalid));
        }
    };
    let namespace = tuning.namespace().ok_or(Error::NotNamespaced)?;
    // Two rounds of concurrent writes, so that a reconciliation costs two API round trips however
    // many children it writes (at scale the API server is the bottleneck, and each sequential
    // round trip is paid in its queue). First every child but the RoleBinding, which the API
    // server checks against the Role it grants (no privilege escalation), so the Role must exist
    // first. Then the RoleBinding, the retired Jobs and the status (with its events) side by side:
    // the status only once the workloads it reports are in place, and the workers' pods, which
    // need the binding, are started by other controllers and retry until it exists.
    apply_children(ctx, &namespace, &plan.children).await?;
    let (binding, retired, status) = futures::future::join3(
        apply_object(ctx, &namespace, &plan.children.role_binding, None),
        retire(ctx, tuning, &namespace, &plan.delete_jobs),
        update_status(ctx, tuning, &namespace, &plan),
    )
    .await;
    binding?;
    retired?;
    status?;
    ctx.failures.lock().remove(&ObjectRef::from_obj(tuning));
    Ok(Action::requeue(plan.requeue_after))
}

/// Deletes the Jobs the plan retires and, when the spec changed, the annotators no one uses.
async fn retire(ctx: &Context, tuning: &CameraTuning, namespace: &str, jobs: &[String]) -> Result<(), Error> {
    for job in jobs {
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        api.delete(job, &params)
            .await
            .map(|_| ())
            .or_else(ignore_not_found)?;
    }
    // Outside deletion (see `cleanup`), an annotator loses a user only when a spec changes its
    // teacher: look for unused ones then, not on every reconciliation.
    if tuning.status.as_ref().and_then(|s| s.observed_generation) != tuning.metadata.generation {
        remove_unused_annotators(ctx, namespace, None).await?;
    }
    Ok(())
}

/// Records the plan's events, then server-side applies the operator's part of the status when the
/// plan changes it. Events first: an operator stopped between the two (a rollout, a crash) repeats
/// the events on its next reconciliation, which sees the same transition again, instead of losing
/// them, since a reconciliation after the status write no longer sees the transition. A repeated
/// event becomes a series with a count (a second event after a restart); a lost one is gone.
async fn update_status(
    ctx: &Context,
    tuning: &CameraTuning,
    namespace: &str,
    plan: &plan::Plan,
) -> Result<(), Error> {
    let old = operator_view(tuning.status.as_ref());
    // Every phase change is an event; the plan's notes explain most of them, so a bare phase
    // event is only published when no note does (fewer writes at scale).
    if old.phase != plan.status.phase {
        let phase = plan.status.phase.unwrap_or_default();
        info!(name = %tuning.name_any(), %namespace, from = ?old.phase, to = ?phase, "phase changed");
        if plan.notes.is_empty() {
            let from = old.phase.map_or("none".into(), |p| format!("{p:?}"));
            let note = format!("phase {from} -> {phase:?}");
            let type_ = if phase == Phase::Failed {
                EventType::Warning
            } else {
                EventType::Normal
            };
            publish(ctx, tuning, type_, &format!("{phase:?}"), &note).await;
        }
    }
    for note in &plan.notes {
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(ctx, tuning, type_, note.reason, &note.message).await;
    }
    if old != plan.status {
        let api: Api<CameraTuning> = Api::namespaced(ctx.client.clone(), namespace);
        let body =
            json!({ "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning", "status": plan.status });
        api.patch_status(
            &tuning.name_any(),
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    }
    Ok(())
}

/// The status fields the operator owns, as they stand (the workers' fields removed).
fn operator_view(status: Option<&CameraTuningStatus>) -> CameraTuningStatus {
    let mut view = status.cloned().unwrap_or_default();
    view.dataset = view.dataset.map(|d| autotuner_api::DatasetStatus {
        deadline: d.deadline,
        ..Default::default()
    });
    view.last_drift_check = None;
    view.candidate_model = None;
    view
}

fn observe(tuning: &CameraTuning, stores: &Stores) -> Observed {
    let name = tuning.name_any();
    let namespace = tuning.namespace().unwrap_or_default();
    let mut observed = Observed::default();
    for job in stores.jobs.state() {
        let ours = job.namespace().as_deref() == Some(namespace.as_str())
            && job.labels().get(labels::INSTANCE) == Some(&name)
            && job.labels().get(labels::COMPONENT).map(String::as_str) == Some("trainer");
        let Some(iteration) = job
            .labels()
            .get(labels::ITERATION)
            .and_then(|i| i.parse().ok())
            .filter(|_| ours)
        else {
            continue;
        };
        if job.metadata.deletion_timestamp.is_some() {
            observed.jobs_terminating.push(iteration);
            continue;
        }
        observed.jobs.insert(iteration, job_state(&job));
    }
    observed
}

fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let holds = |type_: &str| conditions.iter().find(|c| c.type_ == type_ && c.status == "True");
    if holds("Complete").is_some() {
        JobState::Succeeded
    } else if let Some(failed) = holds("Failed") {
        JobState::Failed {
            message: failed
                .message
                .clone()
                .unwrap_or_else(|| failed.reason.clone().unwrap_or_default()),
        }
    } else {
        JobState::Running
    }
}

/// Applies every child but the RoleBinding (see `apply`) concurrently. Every write runs to
/// completion even when one fails: cancelling a write in flight could leave it half done and the
/// same race to lose on every retry.
async fn apply_children(ctx: &Context, namespace: &str, children: &Children) -> Result<(), Error> {
    let deployments = Some(&ctx.stores.deployments);
    let mut writes: Vec<futures::future::BoxFuture<'_, Result<(), Error>>> = vec![
        Box::pin(apply_object(ctx, namespace, &children.role, None)),
        Box::pin(apply_object(ctx, namespace, &children.service_account, None)),
        Box::pin(apply_object(ctx, namespace, &children.capture, deployments)),
    ];
    for claim in children.dataset_claim.iter().chain(&children.spool_claim) {
        writes.push(Box::pin(apply_object(ctx, namespace, claim, None)));
    }
    if let Some(annotator) = &children.annotator {
        writes.push(Box::pin(apply_object(
            ctx,
            namespace,
            &annotator.deployment,
            deployments,
        )));
        writes.push(Box::pin(apply_object(ctx, namespace, &annotator.service, None)));
        match &annotator.network_policy {
            Some(policy) => writes.push(Box::pin(apply_object(ctx, namespace, policy, None))),
            // Turned off (`--annotator-ingress-from` unset): a policy left from before would
            // still refuse the clients it no longer names.
            None => writes.push(Box::pin(remove_object::<NetworkPolicy>(
                ctx,
                namespace,
                annotator.deployment.name_any(),
            ))),
        }
    }
    if let Some(job) = &children.training_job {
        writes.push(Box::pin(apply_object(
            ctx,
            namespace,
            job,
            Some(&ctx.stores.jobs),
        )));
    }
    futures::future::join_all(writes).await.into_iter().collect()
}

/// Server-side applies `object` unless it is known to be in place already: for watched kinds the
/// cached object carries the same hash, for the others it was applied recently.
async fn apply_object<K>(
    ctx: &Context,
    namespace: &str,
    object: &K,
    watched: Option<&Store<K>>,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let hash = children::object_hash(object);
    let name = object.meta().name.clone().unwrap_or_default();
    let key = format!("{}/{namespace}/{name}", K::kind(&()));
    let in_place = match watched {
        Some(store) => store
            .get(&ObjectRef::new(&name).within(namespace))
            .is_some_and(|o| o.annotations().get(APPLIED_HASH) == Some(&hash)),
        None => ctx
            .applied
            .lock()
            .get(&key)
            .is_some_and(|(h, at)| *h == hash && at.elapsed() < ctx.config.reapply_after),
    };
    if in_place {
        return Ok(());
    }
    let mut object = object.clone();
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_HASH.into(), hash.clone());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await?;
    ctx.applied.lock().insert(key, (hash, Instant::now()));
    Ok(())
}

/// What `applied` records for a child deleted because nothing asks for it any more.
const ABSENT: &str = "absent";

/// Deletes a child nothing asks for any more, unless it was deleted recently: the counterpart of
/// [`apply_object`], so a child that stays off costs one request per `reapply_after`, not one
/// per reconciliation.
async fn remove_object<K>(ctx: &Context, namespace: &str, name: String) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let key = format!("{}/{namespace}/{name}", K::kind(&()));
    let removed = ctx
        .applied
        .lock()
        .get(&key)
        .is_some_and(|(h, at)| h == ABSENT && at.elapsed() < ctx.config.reapply_after);
    if !removed {
        delete_if_present::<K>(ctx, namespace, &name).await?;
        ctx.applied.lock().insert(key, (ABSENT.into(), Instant::now()));
    }
    Ok(())
}

/// On deletion: the children with owner references go by garbage collection; the shared
/// annotator goes here when no other CameraTuning uses it.
async fn cleanup(tuning: &CameraTuning, ctx: &Context) -> Result<Action, Error> {
    let namespace = tuning.namespace().ok_or(Error::NotNamespaced)?;
    remove_unused_annotators(ctx, &namespace, Some(tuning)).await?;
    publish(
        ctx,
        tuning,
        EventType::Normal,
        "Deleted",
        "removed the annotator if no other CameraTuning used it",
    )
    .await;
    Ok(Action::await_change())
}

/// Deletes the annotators of `namespace` whose teacher no live CameraTuning (other than `leaving`)
/// names any more.
async fn remove_unused_annotators(
    ctx: &Context,
    namespace: &str,
    leaving: Option<&CameraTuning>,
) -> Result<(), Error> {
    let in_use: Vec<String> = ctx
        .stores
        .tunings
        .state()
        .iter()
        .filter(|t| t.namespace().as_deref() == Some(namespace) && t.metadata.deletion_timestamp.is_none())
        .filter(|t| leaving.is_none_or(|l| l.uid() != t.uid()))
        .filter_map(|t| t.spec.annotation.teacher.as_ref().map(children::teacher_hash))
        .collect();
    let unused: Vec<String> = ctx
        .stores
        .deployments
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace))
        .filter(|d| d.metadata.deletion_timestamp.is_none())
        .filter_map(|d| d.labels().get(labels::TEACHER).cloned())
        .filter(|hash| !in_use.contains(hash))
        .collect();
    for hash in unused {
        let name = names::annotator(&hash);
        info!(%namespace, %name, "removing an annotator no CameraTuning uses any more");
        delete_if_present::<Deployment>(ctx, namespace, &name).await?;
        delete_if_present::<Service>(ctx, namespace, &name).await?;
        delete_if_present::<NetworkPolicy>(ctx, namespace, &name).await?;
        let mut applied = ctx.applied.lock();
        applied.remove(&format!("Service/{namespace}/{name}"));
        applied.remove(&format!("NetworkPolicy/{namespace}/{name}"));
    }
    Ok(())
}

/// Deletes `name` in the background; one already gone is not an error.
async fn delete_if_present<K>(ctx: &Context, namespace: &str, name: &str) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    api.delete(name, &DeleteParams::background())
        .await
        .map(|_| ())
        .or_else(ignore_not_found)
}

fn ignore_not_found(error: kube::Error) -> Result<(), kube::Error> {
    match error {
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        other => Err(other),
    }
}

/// Events are best effort and off the reconciliation's path: a failure to record one is logged,
/// never fails or slows the reconciliation.
async fn publish(ctx: &Context, tuning: &CameraTuning, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let recorder = ctx.recorder.clone();
    let reference = tuning.object_ref(&());
    let reason = reason.to_string();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(error = %e, reason, "could not record an event");
        }
    });
}

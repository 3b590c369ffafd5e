//! The Edge AutoTuner operator: reconciles each `CameraTuning` into its capture workload, the
//! shared annotator of its teacher, fine-tuning Jobs and its status.
//!
//! Reconciliation is [`plan::plan`] (pure: what exists + the resource -> desired objects, next
//! status, events) wrapped by [`reconcile`] (read caches, one server-side apply per changed
//! object, one status apply, events). Workers report progress by applying their own status
//! fields; the operator never calls a pod.

pub mod children;
pub mod http;
mod metrics;
pub mod plan;
pub mod rbac;
mod reconcile;

use std::sync::Arc;
use std::time::Duration;

use autotuner_api::CameraTuning;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tracing::{error, info, warn};

pub use metrics::Metrics;
pub use reconcile::{Context, FINALIZER, Stores};

/// The operator's settings (command-line flags of the binary).
#[derive(Debug, Clone)]
pub struct Config {
    /// Image with the worker binaries (capture, annotator, trainer).
    pub worker_image: String,
    /// Re-apply children that no reflector watches this often, so hand-deleted ones come back.
    pub reapply_after: Duration,
    /// CameraTunings reconciled at once. Each reconciliation already sends its writes side by
    /// side, and the API server, not the operator, is what saturates: more at once only queue
    /// there, so the default is 1 (lowest latency per reconciliation; see the operator-scale
    /// benchmark for the trade-off). A larger API server can take more.
    pub concurrency: u16,
    /// A reconciliation that takes longer (a stuck call) gives up and is retried with backoff,
    /// so it cannot hold up the others.
    pub reconcile_timeout: Duration,
    /// Watch only this namespace (a namespace-scoped install); `None`: every namespace.
    pub namespace: Option<String>,
    /// With `Some`, each annotator gets a NetworkPolicy that admits the capture pods of its
    /// namespace and these peers (its metrics scraper) and nothing else; `None`: no policy.
    pub annotator_ingress_from: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
    /// The workers log as the operator does: JSON lines (`--log-json`) or text.
    pub log_json: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            worker_image: format!("ghcr.io/edge-autotuner/workers:{}", env!("CARGO_PKG_VERSION")),
            reapply_after: Duration::from_secs(600),
            concurrency: 1,
            reconcile_timeout: Duration::from_secs(30),
            namespace: None,
            annotator_ingress_from: None,
            log_json: false,
        }
    }
}

/// One error type for the whole reconciliation; its variants label the error metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] plan::InvalidSpec),
    #[error("CameraTuning has no namespace")]
    NotNamespaced,
    #[error("reconciliation took longer than {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// Every value [`Error::metric_label`] gives, so the error metric has each series from the
    /// start.
    pub const METRIC_LABELS: [&'static str; 5] =
        ["kube", "finalizer", "invalid_spec", "not_namespaced", "timeout"];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Error::InvalidSpec(_) => "invalid_spec",
            Error::NotNamespaced => "not_namespaced",
            Error::Timeout(_) => "timeout",
        }
    }

    pub fn is_invalid_spec(&self) -> bool {
        match self {
            Error::InvalidSpec(_) => true,
            Error::Finalizer(inner) => matches!(
                &**inner,
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e)
                    if e.is_invalid_spec()
            ),
            _ => false,
        }
    }
}

/// How long a watch waits before it tries again after an error: from 0.8 s, doubling, with
/// jitter, to at most 5 s. kube-runtime's default (client-go's) grows to 30 s plus as much jitter,
/// and counts the 410 Gone that ends each watch after an outage as one more error: after a
/// minute without the API server, a watch could take two more minutes to relist. Three watches
/// per replica are no load to spare the API server.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// Watches with the fields the operator never reads (managedFields) stripped, to keep the caches
/// small with thousands of objects. A failed request is logged, counted and retried by this
/// watch alone ([`watch_backoff`]) and never reaches the controller: its own backoff is shared
/// by every watch, so one error paused all three, and the 410 Gone of each watch after an outage
/// paused them again (a change made after a 60 s cut waited over two minutes; the fault test
/// `after_a_60_s_cut_...`).
fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    metrics: &Metrics,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + use<K>,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    // Made here, at 0, so that "no errors" plots as 0 from the controller's start.
    let errors = metrics.watch_errors.with_label_values(&[resource]);
    let stream = watcher(api, config)
        .backoff(watch_backoff())
        .modify(|object| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .filter_map(move |event| {
            let object = match event {
                Ok(object) => Some(Ok(object)),
                Err(error) => {
                    errors.inc();
                    warn!(resource, %error, "watch failed; retrying");
                    None
                }
            };
            futures::future::ready(object)
        });
    (store, stream)
}

fn scoped<K>(client: &Client, config: &Config) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match &config.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The controller: the cache of CameraTunings (for the metrics endpoint) and the future that
/// runs reconciliations until `shutdown` resolves.
pub fn controller(
    client: Client,
    config: Config,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (Store<CameraTuning>, impl std::future::Future<Output = ()> + Send) {
    let managed = watcher::Config::default().labels(children::labels::MANAGED_SELECTOR);
    let (tunings, tuning_stream) = cached(
        scoped::<CameraTuning>(&client, &config),
        watcher::Config::default(),
        "cameratunings",
        &metrics,
    );
    let (deployments, deployment_stream) = cached(
        scoped::<Deployment>(&client, &config),
        managed.clone(),
        "deployments",
        &metrics,
    );
    let (jobs, job_stream) = cached(scoped::<Job>(&client, &config), managed, "jobs", &metrics);
    let reporter = Reporter {
        controller: "autotuner-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let stores = Stores::new(tunings.clone(), deployments, jobs);
    let context = Arc::new(Context::new(client, config.clone(), recorder, metrics, stores));
    let run = Controller::for_stream(tuning_stream, tunings.clone())
        .owns_stream(deployment_stream)
        .owns_stream(job_stream)
        .with_config(ControllerConfig::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            match result {
                // Reconciler failures are logged and counted by the error policy.
                Ok(_) | Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                Err(other) => error!(error = %other, "controller"),
            }
        });
    info!(
        concurrency = config.concurrency,
        "CameraTuning controller configured"
    );
    (tunings, run)
}

/// How a leader-elected run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for; the Lease was released for the next replica.
    Shutdown,
    /// Another replica took the Lease (this one stalled): the caller should exit so that
    /// nothing acts on stale state.
    LostLeadership,
}

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct Election {
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Seconds a Lease is valid without renewal.
    pub lease_seconds: u64,
}

/// Waits for the Lease, runs the controller while holding it, and releases it on shutdown, so
/// that of several replicas exactly one reconciles.
pub async fn run_elected(
    client: Client,
    config: Config,
    probes: http::Probes,
    election: Election,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Ended> {
    use kube_lease_manager::LeaseManagerBuilder;
    let manager = LeaseManagerBuilder::new(client.clone(), &election.lease_name)
        .with_namespace(&election.lease_namespace)
        .with_identity(&election.identity)
        .with_duration(election.lease_seconds)
        .with_grace(election.lease_seconds.div_ceil(3).max(1))
        .build()
        .await?;
    // A standby replica is healthy and ready: it serves probes and waits.
    probes.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut leading, lease_task) = manager.watch().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let became_leader = tokio::select! {
        result = leading.wait_for(|leader| *leader) => result.is_ok(),
        () = stopped(stop_rx.clone()) => false,
    };
    if !became_leader {
        drop(leading);
        let _ = lease_task.await;
        return Ok(Ended::Shutdown);
    }
    info!(identity = %election.identity, "acquired the leader Lease");
    let mut follower = leading.clone();
    let lost = async move {
        let _ = follower.wait_for(|leader| !*leader).await;
    };
    let lost_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = lost_flag.clone();
    let stop = stopped(stop_rx);
    let until = async move {
        tokio::select! {
            () = lost => flag.store(true, std::sync::atomic::Ordering::Relaxed),
            () = stop => {}
        }
    };
    let (tunings, run) = controller(client, config, probes.metrics.clone(), until);
    *probes.tunings.write() = Some(tunings);
    run.await;
    if lost_flag.load(std::sync::atomic::Ordering::Relaxed) {
        error!(identity = %election.identity, "lost the leader Lease");
        return Ok(Ended::LostLeadership);
    }
    drop(leading); // releases the Lease
    let _ = lease_task.await;
    Ok(Ended::Shutdown)
}

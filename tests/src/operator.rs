//! The operator in-process, as its own ServiceAccount bound to the generated RBAC, scoped to one
//! test namespace (and its own Lease), and what a kubelet would do for a Job's pod.

use std::time::Duration;

use autotuner_operator::{Config, Election, Ended, Metrics, http};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::{ControlPlane, expect_success, repo_root, service_account_client, wait_for};

pub const OPERATOR_NAMESPACE: &str = "autotuner-system";
pub const WORKER_IMAGE: &str = "registry.example.invalid/edge-autotuner/workers:test";

/// An operator replica running in the caller's runtime.
#[allow(missing_debug_implementations)] // the controller's handles are not Debug
pub struct Operator {
    pub task: JoinHandle<anyhow::Result<Ended>>,
    pub metrics: Metrics,
    pub probes: http::Probes,
}

/// The operator's namespace, ServiceAccount and RBAC (`manifests/operator/rbac.yaml`), once per
/// control plane (a test binary may run its own beside the shared one).
pub async fn install_rbac(plane: &ControlPlane) {
    static INSTALLED: tokio::sync::Mutex<Vec<String>> = tokio::sync::Mutex::const_new(Vec::new());
    let mut installed = INSTALLED.lock().await;
    if installed.iter().any(|server| server == plane.server()) {
        return;
    }
    let _ = plane.kubectl(["create", "namespace", OPERATOR_NAMESPACE]);
    let rbac = repo_root().join("manifests/operator/rbac.yaml");
    let args = ["apply", "--server-side", "-f", rbac.to_str().unwrap()];
    expect_success(plane.kubectl(args).unwrap(), "applying the operator RBAC").unwrap();
    installed.push(plane.server().to_string());
}

/// Starts a replica that reconciles `namespace` only.
pub async fn start(plane: &ControlPlane, namespace: &str, identity: &str) -> Operator {
    start_configured(plane, namespace, identity, |_| {}).await
}

/// [`start`], with the test's configuration changed by `configure` first.
pub async fn start_configured(
    plane: &ControlPlane,
    namespace: &str,
    identity: &str,
    configure: impl FnOnce(&mut Config),
) -> Operator {
    install_rbac(plane).await;
    // The operator's logs, shown with a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .try_init();
    let client = service_account_client(plane, OPERATOR_NAMESPACE, "autotuner-operator")
        .await
        .unwrap();
    let mut config = Config {
        worker_image: WORKER_IMAGE.into(),
        namespace: Some(namespace.to_string()),
        ..Config::default()
    };
    configure(&mut config);
    let election = Election {
        lease_namespace: OPERATOR_NAMESPACE.into(),
        lease_name: format!("operator-{namespace}"),
        identity: identity.into(),
        lease_seconds: 3,
    };
    let metrics = Metrics::default();
    let probes = http::Probes::new(metrics.clone());
    let task = tokio::spawn(autotuner_operator::run_elected(
        client,
        config,
        probes.clone(),
        election,
        std::future::pending(),
    ));
    Operator {
        task,
        metrics,
        probes,
    }
}

/// Plays the kubelet for a Job's pod: its container exits with `phase` (`Succeeded` or
/// `Failed`); the real Job controller then completes or fails the Job.
pub async fn finish_job_pod(admin: &Client, namespace: &str, job: &str, phase: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let pod = wait_for(Duration::from_secs(90), || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed"))
    })
    .await
    .unwrap_or_else(|_| panic!("no running pod of Job {job}"));
    let exit_code = if phase == "Succeeded" { 0 } else { 1 };
    let now = Timestamp::now().to_string();
    let status = json!({ "status": {
        "phase": phase,
        "startTime": now,
        "containerStatuses": [{
            "name": "trainer", "image": WORKER_IMAGE, "imageID": "",
            "ready": false, "restartCount": 0,
            "state": { "terminated": { "exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" },
                                       "startedAt": now, "finishedAt": now } }
        }]
    }});
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

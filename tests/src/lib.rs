//! Test support for everything that talks to Kubernetes: a real control plane (etcd +
//! kube-apiserver, optionally kube-controller-manager + kube-scheduler) on loopback, and helpers
//! for the integration tests in `tests/tests/`.
//!
//! The binaries come from `tests/controlplane/build.sh` (built from the Go module proxy at the
//! versions pinned in `tests/controlplane/go.mod`, cached outside the repository). Set
//! `AUTOTUNER_CONTROLPLANE_BIN` to a directory holding them to skip the build step.

mod controlplane;
mod node;
pub mod operator;
mod pki;
pub mod plot;
mod process;
pub mod prometheus;
pub mod workers;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::OnceCell;

pub use controlplane::{ControlPlane, Options};
pub use node::{DNS_IP, DNS_REFUSED, NODE_IP, NODE_NAME, NODE_SYSCTLS, dns_query, pod_resolv_confs};
pub use pki::ServingCertificate;

/// The repository's root directory.
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(&manifest_dir())
            .parent()
            .expect("tests/ is inside the repository")
            .to_path_buf()
    })
}

/// The directory holding the control-plane binaries, building the missing ones first.
pub fn binaries(components: &[&str]) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AUTOTUNER_CONTROLPLANE_BIN") {
        let dir = PathBuf::from(dir);
        for c in components {
            if !dir.join(c).is_file() {
                bail!("AUTOTUNER_CONTROLPLANE_BIN={} has no {c}", dir.display());
            }
        }
        return Ok(dir);
    }
    let script = repo_root().join("tests/controlplane/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(components)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    let dir = String::from_utf8(output.stdout)?.trim().to_string();
    Ok(PathBuf::from(dir))
}

/// The Prometheus Operator release whose CRDs (ServiceMonitor, PodMonitor, PrometheusRule...)
/// the chart's monitoring objects are checked against.
pub const PROMETHEUS_OPERATOR: &str = "github.com/prometheus-operator/prometheus-operator@v0.85.0";

/// The directory of the Prometheus Operator's CRDs (`example/prometheus-operator-crd` of its
/// module, from the Go module proxy into Go's module cache, so fetched once per machine).
pub fn prometheus_operator_crds() -> Result<PathBuf> {
    let outside_any_module = std::env::temp_dir();
    let output = Command::new("go")
        .args(["mod", "download", "-json", PROMETHEUS_OPERATOR])
        .current_dir(outside_any_module)
        .output()
        .context("running go mod download")?;
    let module: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "go mod download {PROMETHEUS_OPERATOR}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    match module["Dir"].as_str() {
        Some(dir) => Ok(Path::new(dir).join("example/prometheus-operator-crd")),
        None => bail!("go mod download {PROMETHEUS_OPERATOR}: {}", module["Error"]),
    }
}

/// The directory holding Debian's `prometheus` and `promtool`: `AUTOTUNER_PROMETHEUS_BIN`, else
/// what `scripts/prometheus` unpacks into the cache.
pub fn prometheus_binaries() -> Result<PathBuf> {
    directory_from_env_or_script("AUTOTUNER_PROMETHEUS_BIN", "scripts/prometheus", &[])
}

/// The directory holding the project's image archives (`operator.oci.tar`, `workers.oci.tar`):
/// `AUTOTUNER_IMAGES`, else `scripts/images --profile dev` builds them (the binaries the tests
/// build anyway).
pub fn images() -> Result<PathBuf> {
    directory_from_env_or_script("AUTOTUNER_IMAGES", "scripts/images", &["--profile", "dev"])
}

/// The directory `variable` names, else the one the repository's `script` prints on stdout (its
/// progress goes to the test's stderr).
fn directory_from_env_or_script(variable: &str, script: &str, args: &[&str]) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(variable) {
        return Ok(PathBuf::from(dir));
    }
    let script = repo_root().join(script);
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

/// The control plane shared by the tests of one test binary: started by the first test that asks,
/// stopped when the test process exits (the processes are tied to it, see `process`). Tests that
/// share it work in namespaces of their own.
pub async fn shared(options: Options) -> &'static ControlPlane {
    static API_ONLY: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();
    static WITH_CONTROLLERS: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();
    // A shared plane lives until the process exits and is never dropped: a node (which puts the
    // machine back when dropped) must belong to one test.
    assert!(!options.node, "a control plane with a node cannot be shared");
    let cell = if options.controllers {
        &WITH_CONTROLLERS
    } else {
        &API_ONLY
    };
    let plane = cell
        .get_or_init(|| async { ControlPlane::start(options).await.map_err(|e| format!("{e:#}")) })
        .await;
    match plane {
        Ok(plane) => plane,
        // Every test that shares it fails with the same, complete reason.
        Err(e) => panic!("the shared test control plane did not start: {e}"),
    }
}

/// Installs (server-side applies) the generated CameraTuning CRD from `crds/` and waits until the
/// API server serves it.
pub async fn install_crd(client: &kube::Client) -> Result<CustomResourceDefinition> {
    let path = repo_root().join(autotuner_api::CRD_PATH);
    let yaml = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&yaml)?;
    let name = crd.metadata.name.clone().context("the CRD has no name")?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply("autotuner-tests").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    established(client, &name).await
}

/// Waits (up to 30 s) until the API server serves the CRD `name`, and returns it.
pub async fn established(client: &kube::Client, name: &str) -> Result<CustomResourceDefinition> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(Duration::from_secs(30), || async {
        let crd = api.get(name).await.ok()?;
        let established = crd
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(crd)
    })
    .await
    .with_context(|| format!("CRD {name} not established"))
}

/// Polls `probe` every 100 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a namespace with a unique name for one test and returns its name.
pub async fn test_namespace(client: &kube::Client, prefix: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "generateName": format!("{prefix}-") }
    }))?;
    let created = api.create(&Default::default(), &ns).await?;
    created.metadata.name.context("the API server named no namespace")
}

/// Fails with kubectl's output unless it succeeded; returns its stdout.
pub fn expect_success(output: Output, what: &str) -> Result<String> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs the pinned helm against a control plane, with helm's own state in a temporary directory
/// (nothing written to the user's home).
pub fn helm(plane: &ControlPlane, args: &[&str]) -> Result<Output> {
    let bin = binaries(&["helm"])?;
    let state = plane.dir().join("helm");
    Command::new(bin.join("helm"))
        .args(args)
        .env("KUBECONFIG", plane.kubeconfig())
        .env("HELM_CACHE_HOME", state.join("cache"))
        .env("HELM_CONFIG_HOME", state.join("config"))
        .env("HELM_DATA_HOME", state.join("data"))
        .output()
        .context("running helm")
}

/// A client that authenticates as a ServiceAccount (with a token from the TokenRequest API), so
/// that a test exercises exactly the permissions its RBAC grants.
pub async fn service_account_client(
    plane: &ControlPlane,
    namespace: &str,
    name: &str,
) -> Result<kube::Client> {
    let token = expect_success(
        plane.kubectl(["create", "token", name, "-n", namespace, "--duration=2h"])?,
        "kubectl create token",
    )?;
    let kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.auth_info = serde_json::from_value(serde_json::json!({ "token": token.trim() }))?;
    Ok(kube::Client::try_from(config)?)
}

/// A Node object as a kubelet would report it: Ready, with capacity; with `gpus` > 0 it also
/// offers `nvidia.com/gpu` and carries the usual GPU-node taint. (No kubelet runs: the object is
/// what the scheduler reads.)
pub async fn ready_node(
    client: &kube::Client,
    name: &str,
    labels: serde_json::Value,
    gpus: u32,
) -> Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut spec = json!({});
    if gpus > 0 {
        spec["taints"] = json!([{ "key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule" }]);
    }
    let node: Node =
        serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels }, "spec": spec }))?;
    nodes.create(&Default::default(), &node).await?;
    let mut capacity = json!({ "cpu": "8", "memory": "32Gi", "pods": "110" });
    if gpus > 0 {
        capacity["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({ "status": { "capacity": capacity, "allocatable": capacity,
        "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node",
                         "lastHeartbeatTime": now, "lastTransitionTime": now }] } });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// This package's directory: from cargo at run time (`cargo run`/`test`/`bench` set it), which
/// stays right when a build directory is shared between checkouts; else where it was built.
/// This crate's folder, found from the running test's package (which may be another crate of the
/// workspace), else the path it was compiled at.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .and_then(|dir| {
            dir.ancestors()
                .map(|d| {
                    if d.ends_with("tests") {
                        d.to_path_buf()
                    } else {
                        d.join("tests")
                    }
                })
                .find(|d| d.join("controlplane/build.sh").is_file())
        })
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

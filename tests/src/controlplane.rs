//! A real Kubernetes control plane on loopback: etcd and kube-apiserver, plus
//! kube-controller-manager and kube-scheduler when asked, from the binaries that
//! `tests/controlplane/build.sh` builds and caches.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::node::{self, Node};
use crate::pki::{self, Pki};
use crate::process::{self, Component};

/// What to run besides etcd and the API server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Also run kube-controller-manager and kube-scheduler, so that Deployments make Pods, Jobs
    /// run their controller, garbage collection follows owner references and Pods are bound to
    /// Nodes. There is no kubelet: Nodes are objects the tests create and mark Ready themselves
    /// (see `--node-monitor-grace-period` below), and Pods are bound but never run.
    pub controllers: bool,
    /// Also run a real node (implies `controllers`): containerd, the kubelet, kube-proxy and
    /// CoreDNS, with the project's images (`scripts/images`) imported, labelled as a camera node
    /// and offering one `nvidia.com/gpu` (the annotator's placement; it runs on the CPU). The API
    /// server then listens on the node's bridge address so that pods reach it. Needs root; one
    /// node per machine at a time. See `node`.
    pub node: bool,
}

/// How many times startup is retried when a port picked as free was taken in the meantime.
const START_ATTEMPTS: u32 = 5;
/// How long each component may take to become ready. Generous: CI machines are shared.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running control plane. Dropping it stops every process; its directory (certificates, etcd
/// data, logs) is removed unless the dropping thread is panicking, so a failed test keeps the
/// logs and says where they are.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    bin: PathBuf,
    /// In start order; stopped in reverse.
    components: Vec<Component>,
    /// Stopped before the control plane.
    node: Option<Node>,
}

impl ControlPlane {
    /// Starts a control plane and waits until it is ready.
    pub async fn start(options: Options) -> Result<Self> {
        let mut wanted = vec!["etcd", "kube-apiserver", "kubectl"];
        if options.controllers || options.node {
            wanted.extend(["kube-controller-manager", "kube-scheduler"]);
        }
        let coredns = format!("coredns-{}", node::coredns_version());
        if options.node {
            wanted.extend(["kubelet", "kube-proxy", "pause", &coredns]);
        }
        let bin = crate::binaries(&wanted)?;
        let images = if options.node {
            Some(crate::images()?)
        } else {
            None
        };
        let dir = new_run_dir()?;
        let pki = Pki::generate().context("generating certificates")?;
        pki.write(&dir)?;
        // The node's bridge comes first: the API server listens on its address.
        let mut network = if options.node {
            Some(node::Network::create()?)
        } else {
            None
        };
        let address = if options.node { node::NODE_IP } else { "127.0.0.1" };

        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            match Self::start_core(&bin, &dir, &pki, address).await {
                Ok(mut plane) => {
                    if options.controllers || options.node {
                        plane.start_controllers().await?;
                    }
                    if let (Some(network), Some(images)) = (network.take(), &images) {
                        plane.start_node(network, images).await?;
                    }
                    return Ok(plane);
                }
                Err(StartError::PortTaken(e)) => {
                    eprintln!(
                        "control plane: attempt {attempt}: a port was taken ({e}); retrying on new ports"
                    );
                    last_error = Some(e);
                }
                Err(StartError::Failed(e)) => {
                    return Err(e.context(format!(
                        "control plane failed to start; logs kept in {}",
                        dir.display()
                    )));
                }
            }
        }
        Err(anyhow!("{}", last_error.unwrap_or_default()).context(format!(
            "control plane: no free ports after {START_ATTEMPTS} attempts; logs kept in {}",
            dir.display()
        )))
    }

    async fn start_core(bin: &Path, dir: &Path, pki: &Pki, address: &str) -> Result<Self, StartError> {
        let [etcd_client, etcd_peer, apiserver_port] = free_ports()?;
        let etcd_data = dir.join("etcd");
        let _ = std::fs::remove_dir_all(&etcd_data); // from a failed attempt
        let mut etcd = Component::start(
            "etcd",
            &bin.join("etcd"),
            &[
                "--name=default".into(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                // Throwaway data: durability only costs time.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            dir.join("etcd.log"),
        )?;
        wait_until(&mut etcd, || async {
            TcpStream::connect(("127.0.0.1", etcd_client)).is_ok()
        })
        .await?;

        let server = format!("https://{address}:{apiserver_port}");
        let d = |name: &str| dir.join(name).display().to_string();
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            format!("--bind-address={address}"),
            format!("--advertise-address={address}"),
            format!("--secure-port={apiserver_port}"),
            format!("--cert-dir={}", d("apiserver-certs")),
            format!("--tls-cert-file={}", d(pki::SERVER_CERT)),
            format!("--tls-private-key-file={}", d(pki::SERVER_KEY)),
            format!("--client-ca-file={}", d(pki::CA_CERT)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", d(pki::SA_PUBLIC_KEY)),
            format!("--service-account-signing-key-file={}", d(pki::SA_KEY)),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=RBAC".into(),
            "--profiling=false".into(),
        ];
        if address == "127.0.0.1" {
            // The loopback address cannot be the `kubernetes` Service's endpoint.
            args.push("--endpoint-reconciler-type=none".into());
        } else {
            // logs and exec reach the kubelet by its address (its name would go to the machine's
            // resolver), as the administrator, whom the kubelet's webhook authorises.
            args.extend([
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--kubelet-client-certificate={}", d(pki::ADMIN_CERT)),
                format!("--kubelet-client-key={}", d(pki::ADMIN_KEY)),
            ]);
        }
        let mut apiserver = Component::start(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &args,
            dir.join("kube-apiserver.log"),
        )?;

        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server, pki))
            .map_err(|e| StartError::Failed(anyhow!("writing kubeconfig: {e}")))?;
        let client = client_from(&kubeconfig).await.map_err(StartError::Failed)?;
        wait_until(&mut apiserver, || async { readyz(&client).await }).await?;

        Ok(Self {
            dir: dir.to_path_buf(),
            kubeconfig,
            server,
            bin: bin.to_path_buf(),
            components: vec![etcd, apiserver],
            node: None,
        })
    }

    /// Starts the node and waits until it is Ready, offers its GPU and cluster DNS runs.
    async fn start_node(&mut self, network: node::Network, images: &Path) -> Result<()> {
        let archives = ["operator.oci.tar", "workers.oci.tar"].map(|a| images.join(a));
        let access = node::ControlPlaneAccess {
            bin: &self.bin,
            dir: &self.dir,
            kubeconfig: &self.kubeconfig,
        };
        let started = Instant::now();
        self.node = Some(Node::start(network, access, &archives, node::NODE_LABELS).await?);
        let client = self.client().await?;
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = nodes
                .get_opt(node::NODE_NAME)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            if ready {
                break;
            }
            self.node.as_mut().expect("started").check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "the node was not Ready after {READY_TIMEOUT:?}; logs in {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("node: Ready {:.1} s after start", started.elapsed().as_secs_f64());
        // A GPU-shaped node for the annotator's placement (an extended resource, as a device
        // plugin would advertise it); nothing uses a GPU.
        let gpu = serde_json::json!({ "status": {
            "capacity": { node::GPU_RESOURCE: "1" }, "allocatable": { node::GPU_RESOURCE: "1" } } });
        nodes
            .patch_status(
                node::NODE_NAME,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&gpu),
            )
            .await?;
        let output = self.kubectl_stdin(["apply", "-f", "-"], &Node::coredns_manifest())?;
        crate::expect_success(output, "applying CoreDNS")?;
        let output = self.kubectl([
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            "--timeout=120s",
        ])?;
        crate::expect_success(output, "waiting for CoreDNS")?;
        // kube-proxy programs the DNS Service's rules a moment after CoreDNS is ready.
        let deadline = Instant::now() + READY_TIMEOUT;
        while !matches!(
            node::dns_query("kubernetes.default.svc.cluster.local"),
            Some(Ok(_))
        ) {
            if Instant::now() > deadline {
                bail!("cluster DNS does not resolve the kubernetes Service");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!(
            "node: cluster DNS up {:.1} s after start",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Runs `ctr` against the node's containerd (`None` without a node).
    pub fn ctr(&self, args: &[&str]) -> Option<Result<String>> {
        self.node.as_ref().map(|n| n.ctr(args))
    }

    async fn start_controllers(&mut self) -> Result<()> {
        let kubeconfig = self.kubeconfig.display().to_string();
        let d = |name: &str| self.dir.join(name).display().to_string();
        let controller_manager = Component::start(
            "kube-controller-manager",
            &self.bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={kubeconfig}"),
                format!("--service-account-private-key-file={}", d(pki::SA_KEY)),
                format!("--root-ca-file={}", d(pki::CA_CERT)),
                // No kubelet posts heartbeats for the tests' Nodes: a day of grace keeps a Node the
                // tests marked Ready from turning Unknown (and tainted) mid-test, while the
                // node-lifecycle controller still lifts the not-ready taint that admission puts
                // on every new Node, as in a real cluster.
                "--node-monitor-grace-period=24h".into(),
                "--node-startup-grace-period=24h".into(),
                "--secure-port=0".into(),
                "--cluster-name=edge-autotuner-test".into(),
            ],
            self.dir.join("kube-controller-manager.log"),
        )?;
        self.components.push(controller_manager);
        let scheduler = Component::start(
            "kube-scheduler",
            &self.bin.join("kube-scheduler"),
            &[format!("--kubeconfig={kubeconfig}"), "--secure-port=0".into()],
            self.dir.join("kube-scheduler.log"),
        )?;
        self.components.push(scheduler);

        // Both take their leader-election Lease once they run; the controller manager's
        // service-account controller then creates the `default` ServiceAccount that Pods need.
        let client = self.client().await?;
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = leases
                .get_opt("kube-controller-manager")
                .await
                .ok()
                .flatten()
                .is_some()
                && leases.get_opt("kube-scheduler").await.ok().flatten().is_some()
                && accounts.get_opt("default").await.ok().flatten().is_some();
            if ready {
                return Ok(());
            }
            process::fail_if_any_exited(&mut self.components, &self.dir)?;
            if Instant::now() > deadline {
                bail!(
                    "controller manager and scheduler not ready after {READY_TIMEOUT:?}; logs kept in {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A new client for the calling test's runtime (a client must not outlive the runtime that
    /// created it, and each `#[tokio::test]` has its own).
    pub async fn client(&self) -> Result<Client> {
        client_from(&self.kubeconfig).await
    }

    /// The kubeconfig file (administrator credentials).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The directory holding certificates, data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs kubectl against this control plane.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.kubectl_stdin(args, "")
    }

    /// Runs kubectl with `stdin` as its standard input.
    pub fn kubectl_stdin<I, S>(&self, args: I, stdin: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        use std::io::Write as _;
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        // Dropping the pipe after writing closes kubectl's stdin.
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())?;
        child.wait_with_output().context("running kubectl")
    }

    /// Fault injection: kills a control-plane process (`etcd`, `kube-apiserver`, ...) as a crash
    /// would, leaving the others running. [`ControlPlane::start_again`] brings it back.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        self.component(name)?.kill();
        Ok(())
    }

    /// Starts a killed process again with its arguments and ports, and waits until the API
    /// server is ready again (its readiness covers etcd).
    pub async fn start_again(&mut self, name: &str) -> Result<()> {
        self.component(name)?.start_again()?;
        let client = client_from(&self.kubeconfig).await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while !readyz(&client).await {
            if Instant::now() > deadline {
                bail!("the API server was not ready within {READY_TIMEOUT:?} of starting {name} again");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    fn component(&mut self, name: &str) -> Result<&mut Component> {
        self.components
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| anyhow!("no control-plane process named {name}"))
    }

    /// Stops every process and removes the directory.
    pub fn stop(mut self) {
        self.stop_processes();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn stop_processes(&mut self) {
        if let Some(mut node) = self.node.take() {
            node.stop(std::thread::panicking());
        }
        while let Some(mut component) = self.components.pop() {
            component.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_processes();
        if std::thread::panicking() {
            eprintln!("control plane logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Why one startup attempt failed.
enum StartError {
    /// A port chosen as free was bound by someone else first: retry on other ports.
    PortTaken(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Failed(e)
    }
}

/// Polls `ready` until it holds, failing early when the process exits.
async fn wait_until<F, Fut>(component: &mut Component, ready: F) -> Result<(), StartError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = component.exited() {
            let tail = component.log_tail(40);
            if tail.contains("address already in use") {
                return Err(StartError::PortTaken(format!(
                    "{} exited: address already in use",
                    component.name
                )));
            }
            return Err(StartError::Failed(anyhow!(
                "{} exited with {status}:\n{tail}",
                component.name
            )));
        }
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            let tail = component.log_tail(40);
            component.stop(Duration::from_secs(5));
            return Err(StartError::Failed(anyhow!(
                "{} not ready after {READY_TIMEOUT:?}:\n{tail}",
                component.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(client: &Client) -> bool {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("static request");
    matches!(client.request_text(request).await, Ok(body) if body.trim() == "ok")
}

async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn kubeconfig_yaml(server: &str, pki: &Pki) -> String {
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: edge-autotuner-test
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: edge-autotuner-test
  context:
    cluster: edge-autotuner-test
    user: admin
current-context: edge-autotuner-test
",
        ca = b64(&pki.ca_cert),
        cert = b64(&pki.admin_cert),
        key = b64(&pki.admin_key),
    )
}

/// Three ports that were free a moment ago (the caller retries when one gets taken).
fn free_ports() -> Result<[u16; 3], StartError> {
    let listeners = (0..3)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| StartError::Failed(anyhow!("binding a loopback port: {e}")))?;
    let port = |i: usize| listeners[i].local_addr().map(|a| a.port());
    Ok([
        port(0).map_err(|e| StartError::Failed(e.into()))?,
        port(1).map_err(|e| StartError::Failed(e.into()))?,
        port(2).map_err(|e| StartError::Failed(e.into()))?,
    ])
}

/// A fresh directory `<tmp>/edge-autotuner-controlplane/<pid>-<n>`, after removing those of
/// processes that no longer exist (runs that were killed, and shared control planes, which
/// live until their test process exits).
fn new_run_dir() -> Result<PathBuf> {
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir().join("edge-autotuner-controlplane");
    std::fs::create_dir_all(&base)?;
    for entry in std::fs::read_dir(&base)?.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok());
        if let Some(pid) = pid
            && !process::alive(pid)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!(
        "{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

//! A real node for the end-to-end tests: containerd (Debian's, with its own config, root, state
//! and socket), the kubelet, the CNI bridge, kube-proxy in iptables mode and CoreDNS as a pod,
//! with the project's images imported. See `../shared/DESIGN.md`, "A real node on this machine".
//!
//! One node at a time on a machine: its names are fixed (the bridge, the iptables chain, the
//! cgroup root, the directory), a lock file serialises users, and a node left behind by a killed
//! run is swept before a new one starts.
//!
//! **Network rule**: everything stays on loopback and on the node's bridge. The API server
//! listens on the bridge's address, which pods reach directly; a FORWARD rule drops whatever
//! would leave the bridge for another interface; CoreDNS serves the cluster zone only, with no
//! `forward` to the machine's resolver; the pods' resolv.conf names only the cluster DNS.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pki;
use crate::process::{self, Component};

/// The node's name, and the address it and the API server use, on [`BRIDGE`].
pub const NODE_NAME: &str = "edge-node-0";
pub const NODE_IP: &str = "10.244.0.1";
/// The cluster DNS Service's address (in the API server's service range).
pub const DNS_IP: &str = "10.96.0.10";
/// The node's labels: it is the camera node.
pub const NODE_LABELS: &[(&str, &str)] = &[("autotuner.io/camera-node", "true")];
/// The extended resource it offers one of, so that a GPU-requesting annotator lands on it.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
const POD_SUBNET: &str = "10.244.0.0/24";
const NODE_PREFIX: u8 = 24;
const BRIDGE: &str = "eatnode0";
const ISOLATION_CHAIN: &str = "EDGE-AUTOTUNER-ISOLATE";
const CGROUP_ROOT: &str = "edge-autotuner-node";
const CNI_NETWORK: &str = "edge-autotuner";
const CONTAINERD_NAMESPACE: &str = "k8s.io";
/// Kernel settings the kubelet, kube-proxy and the bridge change; put back at teardown.
pub const NODE_SYSCTLS: [&str; 6] = [
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/conf/all/route_localnet",
];
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The images a node offers besides the cluster's own (pause and CoreDNS): OCI archives.
pub fn pause_image() -> String {
    format!("localhost/edge-autotuner/pause:{}", k8s_version())
}

fn coredns_image() -> String {
    format!("localhost/edge-autotuner/coredns:{}", coredns_version())
}

/// The node's fixed directory (sockets have short path limits; only one node runs at a time).
fn node_dir() -> PathBuf {
    std::env::temp_dir().join("edge-autotuner-node")
}

/// The host side of the node, made before the API server starts (which listens on the bridge):
/// the bridge with the node's address, forwarding, and the isolation rule.
#[derive(Debug)]
pub(crate) struct Network {
    netns_before: BTreeSet<String>,
    links_before: BTreeSet<String>,
    _lock: File,
}

/// What the machine looked like before a node: kernel settings and firewall tables, kept in a
/// file beside the node's directory so that a node whose run was killed is put back too.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    sysctls: Vec<(PathBuf, String)>,
    /// `iptables-save` and `ip6tables-save`: the kubelet and kube-proxy add chains of their own.
    iptables: String,
    ip6tables: String,
}

impl Saved {
    fn path() -> PathBuf {
        std::env::temp_dir().join("edge-autotuner-node.saved.json")
    }

    fn take() -> Result<Self> {
        let sysctls = NODE_SYSCTLS
            .iter()
            .filter_map(|name| {
                let path = Path::new("/proc/sys").join(name);
                std::fs::read_to_string(&path)
                    .ok()
                    .map(|v| (path, v.trim().to_string()))
            })
            .collect();
        let saved = Self {
            sysctls,
            iptables: run("iptables-save", &[])?,
            ip6tables: run("ip6tables-save", &[])?,
        };
        std::fs::write(Self::path(), serde_json::to_vec(&saved)?)?;
        Ok(saved)
    }

    /// Puts the machine back as it was, once (the file goes with it).
    fn restore() {
        let Ok(text) = std::fs::read(Self::path()) else {
            return;
        };
        let Ok(saved) = serde_json::from_slice::<Self>(&text) else {
            return;
        };
        for (path, value) in &saved.sysctls {
            let _ = std::fs::write(path, value);
        }
        for (program, save, rules) in [
            ("iptables-restore", "iptables-save", &saved.iptables),
            ("ip6tables-restore", "ip6tables-save", &saved.ip6tables),
        ] {
            // iptables-restore replaces only the tables its input names: a table the node's
            // components brought in (on a machine whose firewall was empty, all of them) is
            // named empty, which flushes it and deletes its chains.
            let now = run(save, &[]).unwrap_or_default();
            let rules = with_empty_tables(rules, &now);
            let restored = Command::new(program)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write as _;
                    child.stdin.take().expect("piped").write_all(rules.as_bytes())?;
                    child.wait()
                });
            if !restored.is_ok_and(|s| s.success()) {
                eprintln!("node: {program} failed; the firewall may keep the node's chains");
            }
        }
        let _ = std::fs::remove_file(Self::path());
    }
}

impl Network {
    pub(crate) fn create() -> Result<Self> {
        if !is_root() {
            bail!("a real node needs root (containerd, the kubelet and the bridge)");
        }
        let lock = File::create(std::env::temp_dir().join("edge-autotuner-node.lock"))?;
        lock_exclusive(&lock)?;
        // A node a killed run left behind (the lock is free, so its process is gone).
        sweep();
        std::fs::create_dir_all(node_dir())?;
        Saved::take()?;
        let network = Self {
            netns_before: netns(),
            links_before: links(),
            _lock: lock,
        };
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/{NODE_PREFIX}"), "dev", BRIDGE],
        )?;
        run("ip", &["link", "set", BRIDGE, "up"])?;
        write_sysctl("net/ipv4/ip_forward", "1")?;
        write_sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
        // Pods may talk to each other, to Services and to the host on the bridge; nothing is
        // forwarded between the bridge and any other interface, in either direction. In the
        // mangle table, which runs before filter and which kube-proxy leaves alone (its filter
        // FORWARD rules accept service traffic ahead of anything added there).
        for rule in [
            vec!["-N", ISOLATION_CHAIN],
            vec![
                "-A",
                ISOLATION_CHAIN,
                "-i",
                BRIDGE,
                "!",
                "-o",
                BRIDGE,
                "-j",
                "DROP",
            ],
            vec![
                "-A",
                ISOLATION_CHAIN,
                "-o",
                BRIDGE,
                "!",
                "-i",
                BRIDGE,
                "-j",
                "DROP",
            ],
            vec!["-I", "FORWARD", "1", "-j", ISOLATION_CHAIN],
        ] {
            run("iptables", &[&["-t", "mangle"], rule.as_slice()].concat())?;
        }
        Ok(network)
    }

    /// Puts back what [`Network::create`] and the node changed.
    fn restore(&self) {
        for name in netns().difference(&self.netns_before) {
            let _ = run("ip", &["netns", "delete", name]);
        }
        remove_network_objects();
        self.remove_links_left();
        Saved::restore();
    }

    /// Deletes the links the node made until none is left. A pod's veth outlives its sandbox
    /// for as long as the kernel takes to free the sandbox's namespace (asynchronously, after
    /// its last process exits), and a CNI call still running when containerd stopped may make
    /// the bridge again after it was deleted.
    fn remove_links_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left: Vec<String> = links().difference(&self.links_before).cloned().collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("node: network links still there 30 s after the node stopped: {left:?}");
                return;
            }
            for name in &left {
                let _ = run("ip", &["link", "delete", name]);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The running node: containerd, the kubelet and kube-proxy (CoreDNS runs as a pod).
#[derive(Debug)]
pub(crate) struct Node {
    dir: PathBuf,
    network: Network,
    /// In start order; stopped in reverse.
    components: Vec<Component>,
    bin: PathBuf,
    kubeconfig: PathBuf,
}

/// What the node needs from the control plane.
pub(crate) struct ControlPlaneAccess<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub kubeconfig: &'a Path,
}

impl Node {
    /// Starts containerd, imports `images` (OCI archives), starts the kubelet and kube-proxy and
    /// deploys CoreDNS; returns once the node is Ready and cluster DNS answers.
    pub(crate) async fn start(
        network: Network,
        plane: ControlPlaneAccess<'_>,
        images: &[PathBuf],
        labels: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = node_dir();
        let mut node = Self {
            dir: dir.clone(),
            network,
            components: Vec::new(),
            bin: plane.bin.to_path_buf(),
            kubeconfig: plane.kubeconfig.to_path_buf(),
        };
        node.start_containerd().await?;
        let started = Instant::now();
        let infrastructure = node.infrastructure_images()?;
        for image in infrastructure.iter().chain(images) {
            node.ctr(&["images", "import", &image.display().to_string()])
                .with_context(|| format!("importing {}", image.display()))?;
        }
        eprintln!(
            "node: images imported in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        node.start_kubelet(plane.dir, labels)?;
        node.start_kube_proxy()?;
        Ok(node)
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    async fn start_containerd(&mut self) -> Result<()> {
        let d = |name: &str| self.dir.join(name).display().to_string();
        std::fs::create_dir_all(self.dir.join("cni"))?;
        std::fs::write(
            self.dir.join("cni/10-edge-autotuner.conflist"),
            serde_json::to_string_pretty(&serde_json::json!({
                "cniVersion": "0.4.0",
                "name": CNI_NETWORK,
                "plugins": [{
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    // No masquerade: pod traffic never leaves the bridge (see the isolation chain).
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": POD_SUBNET, "rangeStart": "10.244.0.10", "gateway": NODE_IP }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": d("cni-ipam"),
                    },
                }],
            }))?,
        )?;
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails in runc.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
            root = d("containerd-root"),
            state = d("containerd-state"),
            socket = self.containerd_socket().display(),
            opt = d("containerd-opt"),
            pause = pause_image(),
            runc = d("runc"),
            cni = d("cni"),
        );
        std::fs::write(self.dir.join("containerd.toml"), config)?;
        let containerd = Component::start(
            "containerd",
            Path::new("containerd"),
            &[format!("--config={}", d("containerd.toml"))],
            self.dir.join("containerd.log"),
        )?;
        self.components.push(containerd);
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.ctr(&["version"]).is_err() {
            self.fail_if_exited()?;
            if Instant::now() > deadline {
                bail!("containerd did not answer on its socket in {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The pause and CoreDNS images, written once per version next to the binaries.
    fn infrastructure_images(&self) -> Result<Vec<PathBuf>> {
        let script = crate::repo_root().join("scripts/image/oci_archive.py");
        let mut archives = Vec::new();
        for (reference, binary, args) in [
            (pause_image(), "pause".to_string(), vec!["/pause"]),
            (
                coredns_image(),
                format!("coredns-{}", coredns_version()),
                vec!["/coredns", "-conf", "/etc/coredns/Corefile"],
            ),
        ] {
            let archive = self.bin.join(format!("{binary}.oci.tar"));
            if !archive.is_file() {
                let files = self.dir.join(format!("{binary}.files"));
                let target = args[0];
                std::fs::write(
                    &files,
                    format!("{}\t{target}\n", self.bin.join(&binary).display()),
                )?;
                let config = self.dir.join(format!("{binary}.config.json"));
                std::fs::write(
                    &config,
                    serde_json::json!({ "User": "65532:65532", "Entrypoint": args }).to_string(),
                )?;
                let output = Command::new("python3")
                    .arg(&script)
                    .args(["--name", &reference, "--out"])
                    .arg(&archive)
                    .arg("--files")
                    .arg(&files)
                    .arg("--config")
                    .arg(&config)
                    .output()?;
                crate::expect_success(output, "writing an infrastructure image")?;
            }
            archives.push(archive);
        }
        Ok(archives)
    }

    fn start_kubelet(&mut self, plane_dir: &Path, labels: &[(&str, &str)]) -> Result<()> {
        let d = |name: &str| self.dir.join(name).display().to_string();
        // The "host" resolv.conf the kubelet hands to pods with `dnsPolicy: Default` (and whose
        // search domains it adds for the others): the cluster DNS, never the machine's resolver.
        // (An empty file would not do: containerd then copies the machine's /etc/resolv.conf.)
        std::fs::write(self.dir.join("resolv.conf"), format!("nameserver {DNS_IP}\n"))?;
        for controller in cgroup_controllers() {
            std::fs::create_dir_all(controller.join(CGROUP_ROOT))?;
        }
        give_the_node_its_share_of_cpu();
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{CGROUP_ROOT}
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
podLogsDir: {logs}
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
clusterDNS: [{DNS_IP}]
clusterDomain: cluster.local
resolvConf: {resolv}
staticPodPath: ""
authentication:
  anonymous: {{ enabled: false }}
  webhook: {{ enabled: true }}
  x509: {{ clientCAFile: {ca} }}
authorization:
  mode: Webhook
# This machine's disk is shared and often over 85% full: evict only when it is really full, and
# never collect the imported images (there is no registry to pull them again from).
evictionHard: {{ "memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%" }}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
"#,
            socket = self.containerd_socket().display(),
            logs = d("pod-logs"),
            resolv = d("resolv.conf"),
            ca = plane_dir.join(pki::CA_CERT).display(),
        );
        std::fs::write(self.dir.join("kubelet.yaml"), config)?;
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let kubelet = Component::start(
            "kubelet",
            &self.bin.join("kubelet"),
            &[
                format!("--config={}", d("kubelet.yaml")),
                // The administrator's credentials: the test cluster has no node bootstrap.
                format!("--kubeconfig={}", self.kubeconfig.display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                format!("--node-labels={labels}"),
                format!("--root-dir={}", d("kubelet")),
                format!("--cert-dir={}", d("kubelet-pki")),
                "--v=1".into(),
            ],
            self.dir.join("kubelet.log"),
        )?;
        self.components.push(kubelet);
        Ok(())
    }

    fn start_kube_proxy(&mut self) -> Result<()> {
        let config = format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: {NODE_NAME}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: {POD_SUBNET}
clientConnection:
  kubeconfig: {kubeconfig}
conntrack:
  maxPerCore: 0
  min: 0
iptables:
  # Pods on one bridge reach each other's Services without br_netfilter hairpin tricks.
  masqueradeAll: true
  localhostNodePorts: false
nodePortAddresses: ["{NODE_IP}/32"]
"#,
            kubeconfig = self.kubeconfig.display(),
        );
        std::fs::write(self.dir.join("kube-proxy.yaml"), config)?;
        let proxy = Component::start(
            "kube-proxy",
            &self.bin.join("kube-proxy"),
            &[format!("--config={}", self.dir.join("kube-proxy.yaml").display())],
            self.dir.join("kube-proxy.log"),
        )?;
        self.components.push(proxy);
        Ok(())
    }

    /// The CoreDNS manifest (ServiceAccount, RBAC, Corefile, Deployment, Service), for the caller
    /// to apply once the node is Ready.
    pub(crate) fn coredns_manifest() -> String {
        std::fs::read_to_string(crate::repo_root().join("tests/node/coredns.yaml"))
            .expect("tests/node/coredns.yaml")
            .replace("COREDNS_IMAGE", &coredns_image())
            .replace("DNS_IP", DNS_IP)
    }

    /// Runs `ctr` against this node's containerd, in the kubelet's namespace.
    pub(crate) fn ctr(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("ctr")
            .arg(format!("--address={}", self.containerd_socket().display()))
            .args(["--namespace", CONTAINERD_NAMESPACE])
            .args(args)
            .output()
            .context("running ctr")?;
        crate::expect_success(output, "ctr")
    }

    fn fail_if_exited(&mut self) -> Result<()> {
        process::fail_if_any_exited(&mut self.components, &self.dir)
    }

    /// Fails when a node process has exited (for the caller's readiness loops).
    pub(crate) fn check_running(&mut self) -> Result<()> {
        self.fail_if_exited()
    }

    /// Stops the pods' containers, the node's processes, and puts the machine back.
    pub(crate) fn stop(&mut self, keep_logs: bool) {
        // The kubelet stops first so that it restarts nothing; then every task in containerd is
        // killed (their shims and processes outlive containerd otherwise).
        while let Some(mut component) = self.components.pop() {
            if component.name == "containerd" {
                self.kill_containers();
            }
            component.stop(Duration::from_secs(10));
        }
        let _ = Command::new(self.bin.join("kube-proxy"))
            .arg("--cleanup")
            .output();
        sweep_processes_and_mounts();
        self.network.restore();
        if keep_logs {
            eprintln!("node logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn kill_containers(&self) {
        let Ok(tasks) = self.ctr(&["tasks", "list", "-q"]) else {
            return;
        };
        for task in tasks.lines().filter(|t| !t.is_empty()) {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", task]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let running = self.ctr(&["tasks", "list"]).unwrap_or_default();
            if !running.lines().skip(1).any(|l| l.contains("RUNNING")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Deleting the sandboxes through the kubelet is gone with it; their network namespaces
        // are removed by `Network::restore`.
        for task in tasks.lines().filter(|t| !t.is_empty()) {
            let _ = self.ctr(&["tasks", "delete", "--force", task]);
        }
    }
}

/// DNS's "refused" response code.
pub const DNS_REFUSED: u8 = 5;

/// One A query to the cluster DNS Service from this host (UDP, through kube-proxy's rules): the
/// first address of the answer, or the response code when there is none; `None` when nothing
/// answers within 5 tries.
pub fn dns_query(name: &str) -> Option<Result<[u8; 4], u8>> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(u8::try_from(label.len()).expect("a DNS label"));
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut answer = [0u8; 512];
    let length = (0..5).find_map(|_| {
        // A new socket each time: a UDP flow sent before kube-proxy's rules existed keeps
        // its untranslated conntrack entry for as long as it is reused.
        let socket = std::net::UdpSocket::bind((NODE_IP, 0)).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        socket.send_to(&query, (DNS_IP, 53)).ok()?;
        socket.recv(&mut answer).ok()
    })?;
    let (rcode, answers) = (answer[3] & 0x0f, u16::from_be_bytes([answer[6], answer[7]]));
    if answers == 0 {
        return Some(Err(rcode));
    }
    // The answer follows the question: its name (labels, or a pointer to the question's), then
    // type, class, TTL and length, then the address.
    let mut at = query.len();
    while at < length {
        match answer[at] {
            0 => {
                at += 1;
                break;
            }
            pointer if pointer & 0xc0 == 0xc0 => {
                at += 2;
                break;
            }
            label => at += 1 + usize::from(label),
        }
    }
    let rdata = at + 2 + 2 + 4 + 2;
    assert!(length >= rdata + 4, "a short answer: {:?}", &answer[..length]);
    Some(Ok(answer[rdata..rdata + 4].try_into().expect("4 bytes")))
}

/// The resolv.conf containerd wrote for each pod sandbox of the running node: (sandbox, text).
pub fn pod_resolv_confs() -> Vec<(String, String)> {
    let sandboxes = node_dir().join("containerd-root/io.containerd.grpc.v1.cri/sandboxes");
    std::fs::read_dir(sandboxes)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("resolv.conf")).ok()?;
            let hostname = std::fs::read_to_string(e.path().join("hostname")).unwrap_or_default();
            Some((
                format!("{} ({})", e.file_name().to_string_lossy(), hostname.trim()),
                text,
            ))
        })
        .collect()
}

/// `saved` (an `iptables-save` dump) followed by an empty entry for every table that `now` has
/// and `saved` lacks.
fn with_empty_tables(saved: &str, now: &str) -> String {
    let tables = |dump: &str| -> BTreeSet<String> {
        dump.lines()
            .filter_map(|l| l.strip_prefix('*'))
            .map(str::to_string)
            .collect()
    };
    let before = tables(saved);
    let mut rules = saved.to_string();
    for table in tables(now).difference(&before) {
        rules.push_str(&format!("*{table}\nCOMMIT\n"));
    }
    rules
}

/// Removes whatever a node left on this machine: its processes (shims and containers), mounts,
/// cgroups, bridge, iptables chains, CNI state and directory. Safe when there is nothing.
fn sweep() {
    sweep_processes_and_mounts();
    for name in netns().into_iter().filter(|n| n.starts_with("cni-")) {
        let _ = run("ip", &["netns", "delete", &name]);
    }
    remove_network_objects();
    Saved::restore();
    let _ = std::fs::remove_dir_all(node_dir());
}

fn sweep_processes_and_mounts() {
    let dir = node_dir();
    let dir_text = dir.display().to_string();
    // Shims carry the containerd socket's path on their command line; containers live in the
    // node's cgroup root.
    for _ in 0..3 {
        let mut pids: BTreeSet<i32> = BTreeSet::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            if (cmdline.contains("containerd-shim") && cmdline.contains(&dir_text))
                || cgroup.contains(&format!("/{CGROUP_ROOT}/"))
            {
                pids.insert(pid);
            }
        }
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            kill(*pid);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Deepest first: volumes inside the kubelet's root, overlay roots inside containerd's state.
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .filter(|point| point.starts_with(&dir_text) || point.starts_with("/run/netns/cni-"))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for point in mounts {
        unmount(&point);
    }
    for controller in cgroup_controllers() {
        remove_cgroup_tree(&controller.join(CGROUP_ROOT));
    }
}

/// The bridge, the isolation chain and kube-proxy's chains, the CNI plugin's state.
fn remove_network_objects() {
    let _ = run("ip", &["link", "delete", BRIDGE]);
    while run(
        "iptables",
        &["-t", "mangle", "-D", "FORWARD", "-j", ISOLATION_CHAIN],
    )
    .is_ok()
    {}
    let _ = run("iptables", &["-t", "mangle", "-F", ISOLATION_CHAIN]);
    let _ = run("iptables", &["-t", "mangle", "-X", ISOLATION_CHAIN]);
    for entry in std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Ours, and containerd's loopback network (no other CNI user runs here).
        if name.starts_with(&format!("{CNI_NETWORK}-")) || name.starts_with("cni-loopback-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn remove_cgroup_tree(path: &Path) {
    if !path.is_dir() {
        return;
    }
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(path);
}

/// Under cgroup v1 every thread of the machine's root cgroup weighs as much as the node's whole
/// cgroup: with other tests busy on the host (scripts/run-tests runs two binaries at a time), the
/// pods of the node shared the CPU of one host thread, and a training Job took five times as
/// long. A real node's pods have their machine to themselves; here the node's cgroup weighs as
/// much as 8 busy host threads (v1 `cpu.shares`; `cpu.weight` where the cpu controller is on a
/// v2 hierarchy). Best effort: a machine without the file keeps its default.
fn give_the_node_its_share_of_cpu() {
    for (file, value) in [
        (
            Path::new("/sys/fs/cgroup/cpu")
                .join(CGROUP_ROOT)
                .join("cpu.shares"),
            "8192",
        ),
        (
            Path::new("/sys/fs/cgroup").join(CGROUP_ROOT).join("cpu.weight"),
            "800",
        ),
        (
            Path::new("/sys/fs/cgroup/unified")
                .join(CGROUP_ROOT)
                .join("cpu.weight"),
            "800",
        ),
    ] {
        if file.is_file()
            && let Err(e) = std::fs::write(&file, value)
        {
            eprintln!("node: could not set {}: {e}", file.display());
        }
    }
}

fn cgroup_controllers() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The machine's network links by name (without the `@peer` suffix of a veth).
fn links() -> BTreeSet<String> {
    run("ip", &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or_default().to_string())
        .collect()
}

fn netns() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn write_sysctl(name: &str, value: &str) -> Result<()> {
    std::fs::write(Path::new("/proc/sys").join(name), value).with_context(|| format!("setting {name}"))
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    crate::expect_success(output, &format!("{program} {}", args.join(" ")))
}

fn k8s_version() -> String {
    required_version("tests/controlplane/go.mod", "k8s.io/kubernetes")
}

pub(crate) fn coredns_version() -> String {
    required_version("tests/coredns/go.mod", "github.com/coredns/coredns")
}

/// The version a go.mod requires of a module (as `tests/controlplane/build.sh` reads it).
fn required_version(go_mod: &str, module: &str) -> String {
    let text = std::fs::read_to_string(crate::repo_root().join(go_mod)).expect("go.mod");
    text.lines()
        .map(|l| l.trim().trim_start_matches("require ").trim())
        .find_map(|l| {
            l.strip_prefix(module)
                .and_then(|rest| rest.trim().split(' ').next())
        })
        .filter(|v| v.starts_with('v'))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{go_mod} requires no {module}"))
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[allow(unsafe_code)]
fn kill(pid: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[allow(unsafe_code)]
fn unmount(point: &str) {
    let Ok(path) = std::ffi::CString::new(point) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; MNT_DETACH only detaches.
    unsafe {
        libc::umount2(path.as_ptr(), libc::MNT_DETACH);
    }
}

#[allow(unsafe_code)]
fn lock_exclusive(file: &File) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a file descriptor we own; released when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the node");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_the_node_brought_in_are_restored_empty_and_the_saved_ones_as_saved() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.1.0.0/16 -j DROP\nCOMMIT\n";
        let now = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n*filter\n:KUBE-FIREWALL - [0:0]\nCOMMIT\n\
                   *nat\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
        assert_eq!(
            with_empty_tables(saved, now),
            format!("{saved}*mangle\nCOMMIT\n*nat\nCOMMIT\n")
        );
        // An empty firewall before: every table is named empty.
        assert_eq!(
            with_empty_tables("", now),
            "*filter\nCOMMIT\n*mangle\nCOMMIT\n*nat\nCOMMIT\n"
        );
    }
}

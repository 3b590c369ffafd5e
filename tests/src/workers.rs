//! Support for testing the workers as the operator runs them: a CameraTuning with its worker
//! identity exactly as the operator builds it, a kubeconfig for that identity, a real S3
//! server and a real MQTT broker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autotuner_api::CameraTuning;
use autotuner_operator::Config;
use autotuner_operator::children::{self, Rollout};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::{ControlPlane, repo_root, service_account_client};

/// `manifests/examples/minimal.yaml` as `ns/name`, changed by `edit`, created; then the worker
/// ServiceAccount, Role and RoleBinding the operator's own code builds for it, applied. Returns
/// the CameraTuning and the ServiceAccount's name.
pub async fn tuning_with_worker_identity(
    admin: &Client,
    ns: &str,
    name: &str,
    train_iteration: Option<u32>,
    edit: impl FnOnce(&mut CameraTuning),
) -> (CameraTuning, String) {
    let example: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("manifests/examples/minimal.yaml")).unwrap(),
    )
    .unwrap();
    let mut tuning: CameraTuning = serde_json::from_value(example).unwrap();
    tuning.metadata.namespace = Some(ns.to_string());
    tuning.metadata.name = Some(name.to_string());
    edit(&mut tuning);
    let tuning = Api::<CameraTuning>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &tuning)
        .await
        .unwrap();
    let built = children::build(
        &tuning,
        &Rollout {
            deployed_model_uri: "file:///m/ssd.onnx",
            train_iteration,
            round_started_at: None,
        },
        &Config::default(),
    );
    apply(admin, ns, &built.service_account).await;
    apply(admin, ns, &built.role).await;
    apply(admin, ns, &built.role_binding).await;
    (tuning, built.service_account.name_any())
}

/// Server-side applies `object` in `ns` as the test's admin.
pub async fn apply<K>(admin: &Client, ns: &str, object: &K)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(admin.clone(), ns)
        .patch(
            &object.name_any(),
            &PatchParams::apply("test").force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap();
}

/// A kubeconfig file in `dir` that authenticates with the ServiceAccount's token, for a worker
/// binary started by a test.
pub async fn worker_kubeconfig(plane: &ControlPlane, ns: &str, sa: &str, dir: &Path) -> PathBuf {
    // A client as that ServiceAccount proves the token works; the binary gets it as a file.
    service_account_client(plane, ns, sa).await.unwrap();
    let token = plane
        .kubectl(["create", "token", sa, "-n", ns, "--duration=1h"])
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap();
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(plane.kubeconfig()).unwrap()).unwrap();
    for user in config["users"].as_sequence_mut().unwrap() {
        user["user"] = serde_yaml_ng::to_value(json!({ "token": token.trim() })).unwrap();
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    path
}

/// A real S3 server (gofakes3: the S3 REST API over memory; it does not check signatures) built
/// by `tests/controlplane/build.sh s3`, with one bucket. Killed on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start(bucket: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(bucket, port)
    }

    /// On a port chosen beforehand (a client may be pointed at it before the store is up).
    pub fn start_on(bucket: &str, port: u16) -> Self {
        let bin_dir = PathBuf::from(
            std::env::var("AUTOTUNER_CONTROLPLANE_BIN")
                .expect("AUTOTUNER_CONTROLPLANE_BIN: run tests/controlplane/build.sh (scripts/test does)"),
        );
        let bin = std::fs::read_dir(&bin_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("gofakes3-"))
            .expect("no gofakes3 in the control-plane bin folder: run tests/controlplane/build.sh s3");
        let child = Command::new(bin)
            .args(["-backend", "memory", "-initialbucket", bucket, "-quiet"])
            .arg(format!("-host=127.0.0.1:{port}"))
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// One plain HTTP request (a client independent of the code under test): the status code
    /// and the body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut body = response[split + 4..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = unchunk(&body);
        }
        (code, body)
    }

    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.request("GET", path, b"")
    }
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's Mosquitto (an MQTT broker) on `127.0.0.1:port`, nothing kept on disk. Killed on drop.
#[derive(Debug)]
pub struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Mosquitto {
    pub fn start(dir: &Path, port: u16) -> Self {
        let config = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/setup installs Debian's)");
        wait_for_listener(port, "Mosquitto");
        Self(child)
    }

    /// Every message on `topic` of the broker on `port`, as JSON, collected in the background
    /// (subscribing again whenever the broker comes back). Returns once subscribed.
    pub fn subscribe(port: u16, topic: &str) -> Arc<Mutex<Vec<Value>>> {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (sink, topic) = (got.clone(), topic.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut options = rumqttc::MqttOptions::new(format!("test-{port}"), "127.0.0.1", port);
            options.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut connection) = rumqttc::Client::new(options, 64);
            let mut told = false;
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        client
                            .subscribe(topic.as_str(), rumqttc::QoS::AtLeastOnce)
                            .unwrap();
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) if !told => {
                        told = true;
                        let _ = tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        sink.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&p.payload).unwrap());
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20)).expect("subscribed");
        got
    }
}

/// Python's `http.server` serving `dir` on `127.0.0.1` (a model server for `http://` model
/// URIs), or on another local address with [`FileServer::start_on`]. Killed on drop.
#[derive(Debug)]
pub struct FileServer {
    child: Child,
    pub port: u16,
    address: String,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FileServer {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, "127.0.0.1")
    }

    /// Serves on `address` (a local one, such as a test node's bridge address pods reach).
    pub fn start_on(dir: &Path, address: &str) -> Self {
        let port = std::net::TcpListener::bind((address, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("/usr/bin/python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                address,
                &port.to_string(),
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        wait_for_listener_on(address, port, "http.server");
        Self {
            child,
            port,
            address: address.to_string(),
        }
    }

    /// The URL of `path` below the served folder.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}/{path}", self.address, self.port)
    }
}

/// A binary of another workspace package, from the build directory of the running test (a test
/// binary lives in `<target>/<profile>/deps/`, binaries in `<target>/<profile>/`). Cargo gives a
/// test only its own package's binaries; `cargo test --workspace` builds them all.
pub fn workspace_binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test's path");
    let path = test
        .parent()
        .and_then(Path::parent)
        .expect("a test binary in <target>/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test --workspace` (scripts/test does)",
        path.display()
    );
    path
}

/// Waits until `what` accepts connections on `127.0.0.1:port` (at most 20 s).
pub fn wait_for_listener(port: u16, what: &str) {
    wait_for_listener_on("127.0.0.1", port, what);
}

/// Waits until `what` accepts connections on `address:port` (at most 20 s).
pub fn wait_for_listener_on(address: &str, port: u16, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect((address, port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} does not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// vtest.avi (from `AUTOTUNER_ASSETS`) through ffmpeg with `args` (what to keep, filters) into
/// the H.264 Matroska file `dir/name` (High profile, as cameras send; a keyframe every 10 frames),
/// for the RTSP server to play.
pub fn encode_vtest(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let assets = PathBuf::from(std::env::var_os("AUTOTUNER_ASSETS").expect("AUTOTUNER_ASSETS"));
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(assets.join("vtest.avi"))
        .args(args)
        .args(["-c:v", "libx264", "-profile:v", "high", "-preset", "ultrafast"])
        .args(["-g", "10", "-pix_fmt", "yuv420p"])
        .arg(&out)
        .status()
        .expect("the ffmpeg CLI (scripts/setup --tests installs it)");
    assert!(status.success());
    out
}

/// What a training Job's pod gets from the operator's pod spec besides the Job's variables: the
/// worker identity (as a kubeconfig here), its namespace (downward API), the dataset and a
/// writable work folder (volumes).
#[derive(Debug)]
pub struct JobPod<'a> {
    pub kubeconfig: &'a Path,
    pub namespace: &'a str,
    pub dataset_uri: &'a Path,
    pub work_dir: &'a Path,
}

/// The trainer binary run as a training Job's pod runs it: none of this process's environment but
/// PATH and HOME, the Job container's variables (`job_env`, from [`container_env`]), what
/// [`JobPod`] gives, and ONNX Runtime where the workers image has it (here: the assets').
pub fn job_pod_command<K, V>(
    trainer: &Path,
    pod: &JobPod,
    job_env: impl IntoIterator<Item = (K, V)>,
) -> Command
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    use autotuner_api::contract;
    let assets = PathBuf::from(std::env::var_os("AUTOTUNER_ASSETS").expect("AUTOTUNER_ASSETS"));
    let mut command = Command::new(trainer);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("AUTOTUNER_ASSETS", &assets)
        .env("KUBECONFIG", pod.kubeconfig)
        .envs(job_env)
        .env(contract::ENV_NAMESPACE, pod.namespace)
        .env(contract::ENV_DATASET_URI, pod.dataset_uri)
        .env(contract::ENV_WORK_DIR, pod.work_dir)
        .env(contract::ENV_ONNXRUNTIME, assets.join("libonnxruntime.so"));
    command
}

/// The plain `value` variables of a pod template's first container: what the kubelet would set.
pub fn container_env(
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
) -> std::collections::BTreeMap<String, String> {
    template.spec.as_ref().expect("a pod spec").containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

//! The trainer as the operator runs it: configured only by the Job's environment, on the dataset
//! volume's layout, authenticated as the CameraTuning's worker ServiceAccount with the Role the
//! operator gives it (built by the operator's own code), against the real test API server. It
//! publishes the model where the contract says and reports `status.candidateModel` under its
//! own field manager; it cannot write another CameraTuning's status.

use std::path::{Path, PathBuf};
use std::process::Command;

use autotuner_api::CameraTuning;
use autotuner_api::contract::{self, TRAINER_FIELD_MANAGER};
use autotuner_operator::Config;
use autotuner_operator::children::{self, Rollout};
use autotuner_tests::{Options, install_crd, repo_root, service_account_client, shared, test_namespace};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

fn assets() -> PathBuf {
    let dir = autotuner_detect::assets::dir();
    assert!(
        dir.join("vtest-frames/000795.png").is_file(),
        "run scripts/fetch-assets (scripts/test does)"
    );
    dir
}

/// A split of the dataset volume: frames with PETS09's people, as the capture worker writes it.
fn split(dataset: &Path, file: &str, frames: &[usize]) {
    let path = dataset.join(file);
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let gt = std::fs::read_to_string(assets().join("data/PETS09-S2L1/gt/gt.txt")).unwrap();
    let mut annotations = Vec::new();
    for line in gt.lines() {
        let f: Vec<f64> = line.split(',').map(|v| v.trim().parse().unwrap()).collect();
        if frames.contains(&(f[0] as usize)) && f[6] == 1.0 {
            annotations.push(
                json!({"id": annotations.len() + 1, "image_id": f[0] as u64, "category_id": 1,
                                    "bbox": [f[2].max(0.0), f[3].max(0.0), f[4], f[5]]}),
            );
        }
    }
    let images: Vec<Value> = frames
        .iter()
        .map(|f| {
            let name = format!("images/{f:06}.png");
            std::fs::copy(assets().join(format!("vtest-frames/{f:06}.png")), dir.join(&name)).unwrap();
            json!({"id": f, "file_name": name, "width": 768, "height": 576})
        })
        .collect();
    let body =
        json!({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]});
    std::fs::write(path, body.to_string()).unwrap();
}

/// A kubeconfig that authenticates with the worker ServiceAccount's token.
async fn worker_kubeconfig(plane: &autotuner_tests::ControlPlane, ns: &str, sa: &str, dir: &Path) -> PathBuf {
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

fn run_trainer(kubeconfig: &Path, ns: &str, name: &str, dataset: &Path) -> (bool, String) {
    run_trainer_with(kubeconfig, ns, name, dataset.to_str().unwrap(), 1, &[])
}

fn run_trainer_with(
    kubeconfig: &Path,
    ns: &str,
    name: &str,
    dataset_uri: &str,
    epochs: usize,
    env: &[(&str, String)],
) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["--max-steps", "1", "--batch-size", "4", "--views", "1"])
        .arg(format!("--epochs={epochs}"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("AUTOTUNER_ASSETS", assets())
        .env("KUBECONFIG", kubeconfig)
        .env(contract::ENV_NAME, name)
        .env(contract::ENV_NAMESPACE, ns)
        .env(contract::ENV_DATASET_URI, dataset_uri)
        .env(contract::ENV_ITERATION, "3")
        .env(contract::ENV_DATASET_CAP, "4")
        .env(
            contract::ENV_MODEL_URI,
            format!(
                "file://{}",
                assets().join("models/ssd_mobilenet_v2_coco_raw.onnx").display()
            ),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A CameraTuning and its worker identity exactly as the operator builds it.
async fn tuning_with_worker_identity(admin: &Client, ns: &str, name: &str) -> (CameraTuning, String) {
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), ns);
    let example: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("manifests/examples/minimal.yaml")).unwrap(),
    )
    .unwrap();
    let mut tuning: CameraTuning = serde_json::from_value(example).unwrap();
    tuning.metadata.namespace = Some(ns.to_string());
    tuning.metadata.name = Some(name.to_string());
    let tuning = tunings.create(&PostParams::default(), &tuning).await.unwrap();
    let built = children::build(
        &tuning,
        &Rollout {
            deployed_model_uri: "file:///m/ssd.onnx",
            train_iteration: Some(3),
        },
        &Config::default(),
    );
    apply(admin, ns, &built.service_account).await;
    apply(admin, ns, &built.role).await;
    apply(admin, ns, &built.role_binding).await;
    (tuning, built.service_account.name_any())
}

/// Server-side applies `object` in `ns` as the test's admin.
async fn apply<K>(admin: &Client, ns: &str, object: &K)
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

/// A real S3 server (gofakes3: the S3 REST API over memory; it does not check signatures) built
/// by tests/controlplane/build.sh, with one bucket. Killed on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start(bucket: &str) -> Self {
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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

    /// One plain HTTP request (a client independent of the code under test); the status code
    /// and body.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
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

/// Every file under `dir`, as paths relative to it.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(
                files_below(&path)
                    .into_iter()
                    .map(|p| Path::new(&entry.file_name()).join(p)),
            );
        } else {
            out.push(PathBuf::from(entry.file_name()));
        }
    }
    out
}

#[tokio::test]
async fn the_job_reports_its_candidate_model_as_the_worker_identity() {
    let plane = shared(Options::default()).await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "trainer").await.unwrap();
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), &ns);
    let (tuning, account) = tuning_with_worker_identity(&admin, &ns, "lobby").await;
    let mut other: CameraTuning = tuning.clone();
    other.metadata = kube::api::ObjectMeta {
        name: Some("other".into()),
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    tunings.create(&PostParams::default(), &other).await.unwrap();

    let dir = std::env::temp_dir().join(format!("autotuner-trainer-cluster-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let dataset = dir.join("data");
    split(
        &dataset,
        contract::DATASET_TRAIN_FILE,
        &[20, 60, 100, 140, 180, 220],
    );
    split(&dataset, contract::DATASET_EVAL_FILE, &[450, 500]);
    let kubeconfig = worker_kubeconfig(plane, &ns, &account, &dir).await;

    let (ok, err) = run_trainer(&kubeconfig, &ns, &tuning.name_any(), &dataset);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_slice(
        &std::fs::read(dataset.join(contract::training_run_dir(3)).join("report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        report["train"]["images"], 4,
        "the dataset cap keeps the 4 most recent images"
    );
    let model = dataset.join(contract::model_file(3));
    assert!(model.is_file());

    let status = tunings.get_status(&tuning.name_any()).await.unwrap();
    let candidate = status
        .status
        .unwrap()
        .candidate_model
        .expect("candidateModel reported");
    assert_eq!(candidate.version, 3);
    assert_eq!(candidate.uri, format!("file://{}", model.display()));
    assert!((candidate.map - report["after"]["ap"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(candidate.baseline_map, report["before"]["ap"].as_f64());
    assert!(candidate.trained_at.is_some());
    let fresh = tunings.get(&tuning.name_any()).await.unwrap();
    let managers: Vec<_> = fresh
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&TRAINER_FIELD_MANAGER.to_string()),
        "{managers:?}"
    );

    // The same identity may not report for another camera.
    let (ok, err) = run_trainer(&kubeconfig, &ns, "other", &dataset);
    assert!(!ok && err.contains("other") && err.contains("forbidden"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn an_s3_dataset_is_mirrored_and_the_results_and_checkpoint_go_back_to_it() {
    let plane = shared(Options::default()).await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "trainer-s3").await.unwrap();
    let (tuning, account) = tuning_with_worker_identity(&admin, &ns, "dock").await;
    let dir = std::env::temp_dir().join(format!("autotuner-trainer-s3-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = worker_kubeconfig(plane, &ns, &account, &dir).await;

    // The capture worker's dataset, in a bucket.
    let s3 = S3Server::start("datasets");
    let source = dir.join("source");
    split(&source, contract::DATASET_TRAIN_FILE, &[20, 60, 100, 140, 180]);
    split(&source, contract::DATASET_EVAL_FILE, &[450, 500]);
    for file in files_below(&source) {
        let key = file.to_str().unwrap();
        let (code, _) = s3.request(
            "PUT",
            &format!("/datasets/site/dock/{key}"),
            &std::fs::read(source.join(&file)).unwrap(),
        );
        assert_eq!(code, 200, "{key}");
    }
    let env = |work: &str| {
        vec![
            (contract::ENV_S3_ENDPOINT, s3.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test-secret".to_string()),
            ("AUTOTUNER_WORK_DIR", dir.join(work).display().to_string()),
        ]
    };

    // A first pod does one epoch, then "loses its disk"; a second pod on a fresh disk resumes
    // from the checkpoint the first one stored.
    let uri = "s3://datasets/site/dock";
    let (ok, err) = run_trainer_with(&kubeconfig, &ns, &tuning.name_any(), uri, 1, &env("pod-1"));
    assert!(ok, "{err}");
    let (code, _) = s3.request("GET", "/datasets/site/dock/runs/3/checkpoint.bin", b"");
    assert_eq!(code, 200, "the checkpoint is stored after each epoch");
    std::fs::remove_dir_all(dir.join("pod-1")).unwrap();
    let (ok, err) = run_trainer_with(&kubeconfig, &ns, &tuning.name_any(), uri, 2, &env("pod-2"));
    assert!(ok, "{err}");
    let mirror = dir.join("pod-2/dataset");
    assert!(
        mirror.join("train/images/000100.png").is_file(),
        "the dataset is mirrored"
    );

    let (code, stored_report) = s3.request("GET", "/datasets/site/dock/runs/3/report.json", b"");
    assert_eq!(code, 200);
    let report: Value = serde_json::from_slice(&stored_report).unwrap();
    assert_eq!(report["resumedFromEpoch"], 1, "the second pod resumed");
    assert_eq!(report["train"]["images"], 4, "the dataset cap still applies");
    let (code, model) = s3.request("GET", "/datasets/site/dock/models/3.onnx", b"");
    assert_eq!(code, 200);
    assert_eq!(
        model,
        std::fs::read(mirror.join("runs/3/model.onnx")).unwrap(),
        "the published model is the exported one"
    );
    let status = Api::<CameraTuning>::namespaced(admin.clone(), &ns)
        .get_status(&tuning.name_any())
        .await
        .unwrap();
    let candidate = status
        .status
        .unwrap()
        .candidate_model
        .expect("candidateModel reported");
    assert_eq!(candidate.uri, "s3://datasets/site/dock/models/3.onnx");

    // A dataset that is not there fails the Job with a message that names it.
    let (ok, err) = run_trainer_with(
        &kubeconfig,
        &ns,
        &tuning.name_any(),
        "s3://datasets/nowhere",
        1,
        &env("pod-3"),
    );
    assert!(!ok && err.contains("annotations.json"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

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
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "--epochs",
            "1",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--views",
            "1",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("AUTOTUNER_ASSETS", assets())
        .env("KUBECONFIG", kubeconfig)
        .env(contract::ENV_NAME, name)
        .env(contract::ENV_NAMESPACE, ns)
        .env(contract::ENV_DATASET_URI, dataset)
        .env(contract::ENV_ITERATION, "3")
        .env(contract::ENV_DATASET_CAP, "4")
        .env(
            contract::ENV_MODEL_URI,
            format!(
                "file://{}",
                assets().join("models/ssd_mobilenet_v2_coco_raw.onnx").display()
            ),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_job_reports_its_candidate_model_as_the_worker_identity() {
    let plane = shared(Options::default()).await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "trainer").await.unwrap();
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), &ns);
    let example: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("manifests/examples/minimal.yaml")).unwrap(),
    )
    .unwrap();
    let mut tuning: CameraTuning = serde_json::from_value(example).unwrap();
    tuning.metadata.namespace = Some(ns.clone());
    let tuning = tunings.create(&PostParams::default(), &tuning).await.unwrap();
    let mut other: CameraTuning = tuning.clone();
    other.metadata = kube::api::ObjectMeta {
        name: Some("other".into()),
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    tunings.create(&PostParams::default(), &other).await.unwrap();

    // The worker identity exactly as the operator builds it.
    let built = children::build(
        &tuning,
        &Rollout {
            deployed_model_uri: "file:///m/ssd.onnx",
            train_iteration: Some(3),
        },
        &Config::default(),
    );
    let apply = PatchParams::apply("test").force();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), &ns)
        .patch(
            &built.service_account.name_any(),
            &apply,
            &Patch::Apply(&built.service_account),
        )
        .await
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), &ns)
        .patch(&built.role.name_any(), &apply, &Patch::Apply(&built.role))
        .await
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), &ns)
        .patch(
            &built.role_binding.name_any(),
            &apply,
            &Patch::Apply(&built.role_binding),
        )
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(format!("autotuner-trainer-cluster-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let dataset = dir.join("data");
    split(
        &dataset,
        contract::DATASET_TRAIN_FILE,
        &[20, 60, 100, 140, 180, 220],
    );
    split(&dataset, contract::DATASET_EVAL_FILE, &[450, 500]);
    let kubeconfig = worker_kubeconfig(plane, &ns, &built.service_account.name_any(), &dir).await;

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

//! The capture worker as the operator runs it: its settings from its CameraTuning's spec, read
//! as the CameraTuning's worker ServiceAccount with the Role the operator gives it (built by the
//! operator's own code), against the real test API server; its progress in `status.dataset`
//! under its own field manager.

use std::process::Command;
use std::time::Duration;

use autotuner_api::CameraTuning;
use autotuner_api::contract::{self, CAPTURE_FIELD_MANAGER};
use autotuner_tests::workers::{tuning_with_worker_identity, worker_kubeconfig};
use autotuner_tests::{Options, install_crd, shared, test_namespace};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

mod common;
use common::{Annotator, assets, free_port};

#[tokio::test(flavor = "multi_thread")]
async fn capture_takes_its_spec_from_the_cameratuning_and_reports_the_dataset_counts() {
    let plane = shared(Options::default()).await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "capture").await.unwrap();
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), &ns);

    let (_, account) = tuning_with_worker_identity(&admin, &ns, "hall", None, |t| {
        t.spec.camera.url = format!("file://{}", assets().join("vtest.avi").display());
        // A budget of 30 uploads a minute: over 4 s of video, a handful of frames.
        t.spec.sampling.max_uploads_per_minute = 30;
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = worker_kubeconfig(plane, &ns, &account, dir.path()).await;
    let port = free_port();
    let _annotator = tokio::task::spawn_blocking(move || Annotator::start(port))
        .await
        .unwrap();
    let dataset = dir.path().join("data");
    let out = tokio::task::spawn_blocking({
        let (kubeconfig, dataset, ns) = (kubeconfig.clone(), dataset.clone(), ns.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_capture"))
                .args(["--max-frames", "40", "--metrics-listen", "127.0.0.1:0"])
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("KUBECONFIG", &kubeconfig)
                .env(contract::ENV_NAME, "hall")
                .env(contract::ENV_NAMESPACE, &ns)
                .env(contract::ENV_DATASET_URI, &dataset)
                .env(contract::ENV_ANNOTATOR_URL, format!("http://127.0.0.1:{port}"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let selected = summary["framesSelected"].as_u64().unwrap();
    assert!((2..=5).contains(&selected), "the spec's budget holds: {summary}");

    let mut status = Value::Null;
    for _ in 0..50 {
        let t = tunings.get("hall").await.unwrap();
        status = serde_json::to_value(&t.status).unwrap();
        if !status["dataset"]["framesSelected"].is_null() {
            let managers: Vec<String> = t
                .managed_fields()
                .iter()
                .filter_map(|m| m.manager.clone())
                .collect();
            assert!(
                managers.iter().any(|m| m == CAPTURE_FIELD_MANAGER),
                "{managers:?}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = &status["dataset"];
    assert_eq!(counts["framesSelected"], selected, "{status}");
    assert_eq!(counts["annotated"], summary["annotated"]);
    assert_eq!(counts["framesSeen"], summary["framesDecoded"]);
    assert_eq!(
        counts["train"].as_u64().unwrap() + counts["eval"].as_u64().unwrap(),
        summary["trainImages"].as_u64().unwrap() + summary["evalImages"].as_u64().unwrap()
    );
}

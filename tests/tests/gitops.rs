//! GitOps health of a CameraTuning, computed by what Flux uses (kstatus, sigs.k8s.io/cli-utils)
//! and by the Argo CD health check this repository ships (manifests/gitops/argocd/health.lua, run
//! in gopher-lua, Argo CD's interpreter), on CameraTunings read back from a real API server whose
//! statuses are the operator's own plans for each phase.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use autotuner_api::CameraTuning;
use autotuner_operator::Config;
use autotuner_operator::plan::{JobState, Observed, plan};
use autotuner_tests::{Options, expect_success, install_crd, repo_root, shared, test_namespace};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const HEALTH_LUA: &str = "manifests/gitops/argocd/health.lua";

fn tuning(name: &str, status: Value) -> CameraTuning {
    serde_json::from_value(json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "metadata": { "name": name, "generation": 1 },
        "spec": {
            "camera": { "url": "rtsp://cam/stream", "nodeName": "edge-1" },
            "classes": ["person"],
            "annotation": { "teacher": { "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" } } },
            "training": { "student": { "uri": "file:///m/ssd.onnx", "family": "ssdRaw" } }
        },
        "status": status
    }))
    .unwrap()
}

/// The status the operator writes for a CameraTuning with `status` when it sees `jobs`.
fn planned(status: Value, jobs: &[(u32, JobState)]) -> Value {
    let observed = Observed {
        jobs: jobs.iter().cloned().collect::<BTreeMap<_, _>>(),
        ..Observed::default()
    };
    let now: Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
    // As the operator reads it from the API server: with a namespace and a uid.
    let mut stored = tuning("x", status);
    stored.metadata.namespace = Some("cams".into());
    stored.metadata.uid = Some("u-1".into());
    let plan = plan(&stored, &observed, now, &Config::default()).unwrap();
    serde_json::to_value(plan.status).unwrap()
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    name: String,
    kstatus: String,
    kstatus_message: String,
    argocd: String,
    argocd_message: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn flux_and_argo_cd_read_each_phase_from_the_conditions() {
    let plane = shared(Options::default()).await;
    let client = plane.client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = test_namespace(&client, "gitops").await.unwrap();
    let api: Api<CameraTuning> = Api::namespaced(client.clone(), &ns);
    let candidate = json!({ "version": 1, "uri": "file:///data/models/1.onnx", "map": 0.40,
                            "baselineMap": 0.28, "trainedAt": "2026-12-02T11:59:00Z" });
    let deployed = planned(
        json!({ "phase": "Training", "iteration": 0, "candidateModel": candidate }),
        &[(1, JobState::Succeeded)],
    );
    // (name, status the operator wrote, kstatus, Argo CD)
    let cases = [
        ("capturing", planned(json!({}), &[]), "InProgress", "Progressing"),
        (
            "training",
            planned(
                json!({ "phase": "Capturing", "dataset": { "train": 1000 } }),
                &[(1, JobState::Running)],
            ),
            "InProgress",
            "Progressing",
        ),
        ("deployed", deployed.clone(), "Current", "Healthy"),
        (
            "failed",
            planned(
                json!({ "phase": "Training", "observedGeneration": 1 }),
                &[(
                    1,
                    JobState::Failed {
                        message: "Job has reached the specified backoff limit".into(),
                    },
                )],
            ),
            "Failed",
            "Degraded",
        ),
        // Deployed, but the spec was edited since: neither tool trusts the status yet.
        ("edited", deployed, "InProgress", "Progressing"),
    ];
    let ssa = PatchParams::apply("autotuner-operator").force();
    for (name, status, _, _) in &cases {
        api.create(&PostParams::default(), &tuning(name, Value::Null))
            .await
            .unwrap();
        let patch = json!({ "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
                            "metadata": { "name": name }, "status": status });
        api.patch_status(name, &ssa, &Patch::Apply(&patch)).await.unwrap();
    }
    let edit = json!({ "spec": { "dataset": { "trainSize": 500 } } });
    let edited = api
        .patch("edited", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    assert_eq!(edited.metadata.generation, Some(2));
    // One not reconciled at all: no status.
    api.create(&PostParams::default(), &tuning("new", Value::Null))
        .await
        .unwrap();

    let listed = expect_success(
        plane
            .kubectl(["get", "camtune", "-n", &ns, "-o", "json"])
            .unwrap(),
        "kubectl get",
    )
    .unwrap();
    let items = serde_json::from_str::<Value>(&listed).unwrap()["items"].clone();
    let tool = autotuner_tests::binaries(&["gitops-health"])
        .unwrap()
        .join("gitops-health");
    let mut child = Command::new(tool)
        .arg(repo_root().join(HEALTH_LUA))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(items.to_string().as_bytes())
        .unwrap();
    let out = expect_success(child.wait_with_output().unwrap(), "gitops-health").unwrap();
    let health: BTreeMap<String, Health> = out
        .lines()
        .map(|line| serde_json::from_str::<Health>(line).unwrap())
        .map(|h| (h.name.clone(), h))
        .collect();
    for (name, _, kstatus, argocd) in &cases {
        let h = &health[*name];
        assert_eq!(
            (h.kstatus.as_str(), h.argocd.as_str()),
            (*kstatus, *argocd),
            "{name}: {h:?}"
        );
    }
    // What each says is what a person needs: the progress, or the way out of a failure.
    assert!(
        health["capturing"].argocd_message.contains("training images"),
        "{:?}",
        health["capturing"]
    );
    assert!(
        health["capturing"].kstatus_message.contains("training images"),
        "{:?}",
        health["capturing"]
    );
    for message in [
        &health["failed"].argocd_message,
        &health["failed"].kstatus_message,
    ] {
        assert!(message.contains("kubectl logs"), "{:?}", health["failed"]);
    }
    // kstatus calls an object without any status Current (it has nothing to read); Argo CD's
    // check waits for the operator. The operator writes a status on its first reconcile.
    assert_eq!(health["new"].argocd, "Progressing");
}

/// The ConfigMap users merge into Argo CD carries exactly health.lua, and the GitOps examples
/// are well-formed objects of the kinds they claim.
#[test]
fn the_argo_cd_config_carries_the_tested_script_and_the_examples_parse() {
    let dir = repo_root().join("manifests/gitops");
    let cm: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("argocd/argocd-cm.yaml")).unwrap())
            .unwrap();
    let script = std::fs::read_to_string(repo_root().join(HEALTH_LUA)).unwrap();
    assert_eq!(
        cm["data"]["resource.customizations.health.autotuner.io_CameraTuning"],
        script.as_str()
    );
    let mut kinds = Vec::new();
    for file in ["argocd/application.yaml", "flux/edge-autotuner.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
            kinds.push(format!(
                "{}/{}",
                doc["apiVersion"].as_str().unwrap(),
                doc["kind"].as_str().unwrap()
            ));
        }
    }
    assert_eq!(
        kinds,
        [
            "argoproj.io/v1alpha1/Application",
            "source.toolkit.fluxcd.io/v1/GitRepository",
            "kustomize.toolkit.fluxcd.io/v1/Kustomization",
            "kustomize.toolkit.fluxcd.io/v1/Kustomization",
        ]
    );
}

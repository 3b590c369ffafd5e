//! Faults of the control plane under the operator: the API server killed while CameraTunings are
//! reconciled, etcd killed, and the operator cut off from the API server for 60 s. Each time the test checks that nothing was lost or duplicated and that the status
//! tells the truth: every CameraTuning Capturing, its spec's generation observed.
//!
//! This binary runs its own control plane (the shared one of the other binaries must not go
//! down under their tests), with the controller manager and the scheduler; no node (see
//! `operator.rs` for what the test then plays).

use std::time::Duration;

use autotuner_api::{CameraTuning, Phase};
use autotuner_tests::operator::{self, Operator};
use autotuner_tests::{ControlPlane, Options, install_crd, test_namespace, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const CAMERAS: [&str; 3] = ["cam-a", "cam-b", "cam-c"];

fn tuning(name: &str) -> CameraTuning {
    serde_json::from_value(json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning", "metadata": { "name": name },
        "spec": {
            "camera": { "url": "rtsp://camera.example.invalid/stream", "nodeName": "camera-without-a-node-object" },
            "classes": ["person"],
            "annotation": { "teacher": { "model": { "uri": "file:///models/yolov12n.onnx", "family": "yolo" }, "gpus": 0 } },
            "dataset": { "trainSize": 10, "evalSize": 2,
                         "storage": { "s3": { "bucket": "datasets", "credentialsSecretRef": { "name": "s3" } } } },
            "training": { "student": { "uri": "file:///models/ssd.onnx", "family": "ssdRaw" }, "minTrainSize": 5 },
            "drift": { "maxDatasetSize": 1000 }
        }
    }))
    .unwrap()
}

/// Names of the objects of kind `K` in `ns` with the labels of `selector`.
async fn names<K>(client: &Client, ns: &str, selector: &str) -> Vec<String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    names.sort();
    names
}

/// Every camera is Capturing with its spec's generation observed, and each has exactly what the
/// operator makes for it: one capture Deployment and spool claim, no Job; one annotator (and
/// its Service) in all.
async fn assert_whole(client: &Client, ns: &str, cameras: &[&str], when: &str) {
    let api: Api<CameraTuning> = Api::namespaced(client.clone(), ns);
    for name in cameras {
        let settled = wait_for(WAIT, || async {
            let t = api.get(name).await.ok()?;
            let status = t.status.as_ref()?;
            (status.phase == Some(Phase::Capturing) && status.observed_generation == t.metadata.generation)
                .then_some(())
        })
        .await;
        if settled.is_err() {
            let t = api.get(name).await;
            panic!("{when}: {name} never reached Capturing with its generation observed: {t:?}");
        }
        let selector = format!("app.kubernetes.io/instance={name}");
        assert_eq!(
            names::<Deployment>(client, ns, &selector).await.len(),
            1,
            "{when}: one capture Deployment for {name}"
        );
        assert_eq!(
            names::<PersistentVolumeClaim>(client, ns, &selector).await.len(),
            1,
            "{when}: one spool claim for {name}"
        );
        assert!(
            names::<Job>(client, ns, &selector).await.is_empty(),
            "{when}: no training Job for {name} (no images were captured)"
        );
    }
    let annotators = names::<Deployment>(client, ns, "app.kubernetes.io/component=annotator").await;
    assert_eq!(
        annotators.len(),
        1,
        "{when}: one shared annotator: {annotators:?}"
    );
    let services = names::<Service>(client, ns, "app.kubernetes.io/component=annotator").await;
    assert_eq!(services.len(), 1, "{when}: one annotator Service: {services:?}");
}

/// Kills a control-plane process, waits `down`, and starts it again (until the API server is
/// ready).
async fn outage(plane: &mut ControlPlane, name: &str, down: Duration) {
    plane.kill(name).unwrap();
    tokio::time::sleep(down).await;
    plane.start_again(name).await.unwrap();
}

/// Nothing the operator made was made twice, under any name: a capture Deployment per camera and
/// the one annotator.
async fn assert_nothing_made_twice(client: &Client, ns: &str) {
    let all = names::<Deployment>(client, ns, "app.kubernetes.io/managed-by=autotuner-operator").await;
    assert_eq!(all.len(), CAMERAS.len() + 1, "{all:?}");
}

/// The operator replica after a fault: the same one when it kept its Lease, else (it stopped
/// when it could no longer tell whether it led, as it must) a new one, as its Deployment's pod
/// would be restarted.
async fn running_replica(plane: &ControlPlane, ns: &str, op: Operator, identity: &str) -> (Operator, bool) {
    if !op.task.is_finished() {
        return (op, false);
    }
    let ended = op.task.await.expect("the operator task did not panic");
    eprintln!("the operator ended with {ended:?}: starting a replacement");
    assert!(ended.is_ok(), "the operator failed: {ended:?}");
    (operator::start(plane, ns, identity).await, true)
}

/// A control plane of this test's own, a namespace in it, and the operator for that namespace.
async fn plane_with_operator(prefix: &str) -> (ControlPlane, Client, String, Operator) {
    let plane = ControlPlane::start(Options {
        controllers: true,
        node: false,
    })
    .await
    .unwrap();
    let admin = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, prefix).await.unwrap();
    let op = operator::start(&plane, &ns, "first").await;
    (plane, admin, ns, op)
}

async fn create_cameras(admin: &Client, ns: &str) {
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), ns);
    for name in CAMERAS {
        tunings
            .create(&PostParams::default(), &tuning(name))
            .await
            .unwrap();
    }
}

async fn set_train_size(admin: &Client, ns: &str, name: &str, size: u32) {
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), ns);
    let patch = json!({ "spec": { "dataset": { "trainSize": size } } });
    tunings
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_operator_rides_out_an_api_server_and_an_etcd_restart_without_duplicating_anything() {
    let (mut plane, admin, ns, op) = plane_with_operator("restarts").await;

    // The API server dies while three new CameraTunings are being reconciled.
    create_cameras(&admin, &ns).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    outage(&mut plane, "kube-apiserver", Duration::from_secs(2)).await;
    let (op, _) = running_replica(&plane, &ns, op, "second").await;
    assert_whole(&admin, &ns, &CAMERAS, "after the API server restart").await;

    // etcd dies; a change made once it is back is acted on.
    outage(&mut plane, "etcd", Duration::from_secs(3)).await;
    let (op, _) = running_replica(&plane, &ns, op, "third").await;
    set_train_size(&admin, &ns, "cam-a", 12).await;
    assert_whole(&admin, &ns, &CAMERAS, "after the etcd restart").await;

    assert_nothing_made_twice(&admin, &ns).await;
    op.task.abort();
}

/// After the API server has been down for 60 s, a CameraTuning changed once it is back is
/// reconciled (within `WAIT`; a few seconds here). Before the fix it was not within 2 minutes in
/// 8 of 8 runs: every watch error went on to the controller, whose one backoff (kube-runtime's
/// default, up to a minute with jitter) paused all three watches at once, and after the outage
/// the 410 Gone of each watch paused them all again, one after another. Now each watch retries
/// on its own (5 s at most between tries) and counts its errors
/// (`autotuner_operator_watch_errors_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_60_s_cut_the_operator_acts_on_a_change_within_two_minutes() {
    let (mut plane, admin, ns, op) = plane_with_operator("cut").await;
    create_cameras(&admin, &ns).await;
    assert_whole(&admin, &ns, &CAMERAS, "before the cut").await;

    // The operator is cut off from the API server for 60 s (the API server is down: to the
    // operator the same as a cut network). Its 3 s Lease runs out meanwhile.
    let reconciled_before = op.metrics.reconciliations.get();
    let watch_errors = |op: &Operator| {
        op.metrics
            .watch_errors
            .with_label_values(&["cameratunings"])
            .get()
    };
    assert_eq!(watch_errors(&op), 0, "no watch failed before the cut");
    outage(&mut plane, "kube-apiserver", Duration::from_secs(60)).await;
    assert!(watch_errors(&op) > 0, "the failed watches of the cut are counted");
    let (op, replaced) = running_replica(&plane, &ns, op, "second").await;
    set_train_size(&admin, &ns, "cam-b", 14).await;
    assert_whole(&admin, &ns, &CAMERAS, "after a 60 s cut").await;
    if !replaced {
        assert!(
            op.metrics.reconciliations.get() > reconciled_before,
            "the replica that kept running reconciles again after the cut"
        );
    }
    assert_nothing_made_twice(&admin, &ns).await;
    op.task.abort();
}

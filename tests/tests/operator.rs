//! The operator against a real control plane with the controller manager and scheduler running.
//!
//! The operator runs in-process as its ServiceAccount (a token from the TokenRequest API), bound
//! to the generated RBAC: a permission the code uses but the manifests lack fails these tests.
//! Each test scopes its operator to its own namespace and Lease, so tests run side by side.
//!
//! What cannot run here is played by the test: there is no kubelet, so the test marks Nodes
//! Ready, and sets a pod's phase the way a kubelet would when its container exits; the real Job
//! controller then completes or fails the Job. The workers' reports are written with their own
//! field managers, as the capture worker and the trainer will.

use std::collections::BTreeSet;
use std::time::Duration;

use autotuner_api::contract::{CAPTURE_FIELD_MANAGER, TRAINER_FIELD_MANAGER};
use autotuner_api::{CameraTuning, Phase};
use autotuner_operator::http;
use autotuner_tests::operator::{self, OPERATOR_NAMESPACE, Operator};
use autotuner_tests::{
    ControlPlane, Options, install_crd, ready_node, service_account_client, shared, test_namespace, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, Pod, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

struct Harness {
    plane: &'static ControlPlane,
    admin: Client,
    ns: String,
}

async fn setup(prefix: &str) -> Harness {
    let plane = shared(Options {
        controllers: true,
        node: false,
    })
    .await;
    let admin = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    operator::install_rbac(plane).await;
    let ns = test_namespace(&admin, prefix).await.unwrap();
    // Every pod the operator makes must pass the restricted Pod Security Standard: enforced.
    let label = json!({ "metadata": { "labels": { "pod-security.kubernetes.io/enforce": "restricted" } } });
    Api::<Namespace>::all(admin.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    Harness { plane, admin, ns }
}

impl Harness {
    async fn operator(&self, identity: &str) -> Operator {
        operator::start(self.plane, &self.ns, identity).await
    }

    fn tunings(&self) -> Api<CameraTuning> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    async fn apply(&self, name: &str, spec: Value) {
        let object = json!({ "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning", "metadata": { "name": name }, "spec": spec });
        let tuning: CameraTuning = serde_json::from_value(object).unwrap();
        self.tunings()
            .create(&PostParams::default(), &tuning)
            .await
            .unwrap();
    }

    async fn phase(&self, name: &str, phase: Phase) -> CameraTuning {
        let api = self.tunings();
        wait_for(WAIT, || async {
            let t = api.get(name).await.ok()?;
            (t.status.as_ref()?.phase == Some(phase)).then_some(t)
        })
        .await
        .unwrap_or_else(|_| panic!("{name} never reached {phase:?}"))
    }

    /// A worker's report: a server-side apply of its own status fields under its field manager.
    async fn report(&self, name: &str, manager: &str, status: Value) {
        let body = json!({ "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning", "status": status });
        self.tunings()
            .patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&body))
            .await
            .unwrap();
    }

    async fn jobs(&self, tuning: &str) -> Vec<String> {
        let api: Api<Job> = Api::namespaced(self.admin.clone(), &self.ns);
        let list = api
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={tuning}")))
            .await
            .unwrap();
        list.items.iter().map(|j| j.name_any()).collect()
    }

    async fn deployments(&self, selector: &str) -> Vec<String> {
        let api: Api<Deployment> = Api::namespaced(self.admin.clone(), &self.ns);
        api.list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .iter()
            .map(|d| d.name_any())
            .collect()
    }

    /// The capture worker's count of the current round: `train` images selected since it began.
    async fn round(&self, name: &str, train: u64) -> Value {
        let status = self.tunings().get(name).await.unwrap().status.unwrap_or_default();
        let since = status
            .dataset
            .and_then(|d| d.round_started_at)
            .expect("a round after drift");
        json!({ "since": since, "train": train, "eval": 2 })
    }

    /// Plays the kubelet for a Job's pod: its container exits with `phase`.
    async fn finish_job_pod(&self, job: &str, phase: &str) {
        operator::finish_job_pod(&self.admin, &self.ns, job, phase).await
    }

    async fn event_reasons(&self, tuning: &str) -> BTreeSet<String> {
        let api: Api<Event> = Api::namespaced(self.admin.clone(), &self.ns);
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(tuning))
            .filter_map(|e| e.reason)
            .collect()
    }
}

/// A spec whose capture pod stays unscheduled: its node has no Node object. A kubelet-less
/// cluster can still delete such pods at once, so Deployments roll out and the phases that wait
/// for a rollout are reached. (Placement itself is tested with real Node objects below.)
fn spec(train_size: u32) -> Value {
    json!({
        "camera": { "url": "rtsp://camera.example.invalid/stream", "nodeName": "camera-without-a-node-object" },
        "classes": ["person"],
        "annotation": { "teacher": { "model": { "uri": "file:///models/yolov12n.onnx", "family": "yolo" }, "gpus": 0 } },
        "dataset": { "trainSize": train_size, "evalSize": 2,
                     "storage": { "s3": { "bucket": "datasets", "credentialsSecretRef": { "name": "s3" } } } },
        "training": { "student": { "uri": "file:///models/ssd.onnx", "family": "ssdRaw" }, "minTrainSize": 5, "maxRetries": 1 },
        "drift": { "maxDatasetSize": 1000 }
    })
}

/// Kills the operator the hard way (no Lease release, no cleanup) and starts a new one, then
/// checks that the new one found what the old one made instead of duplicating it.
async fn restart(h: &Harness, op: Operator, name: &str, expected_jobs: usize) -> Operator {
    op.task.abort();
    let _ = op.task.await;
    let before = h.tunings().get(name).await.unwrap().status;
    let op = h.operator("replacement").await;
    // Long enough for the Lease to expire and the new leader to reconcile everything.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        h.deployments(&format!("app.kubernetes.io/instance={name}"))
            .await
            .len(),
        1,
        "one capture Deployment"
    );
    assert_eq!(h.jobs(name).await.len(), expected_jobs, "one Job per iteration");
    let after = h.tunings().get(name).await.unwrap().status;
    assert_eq!(
        after.as_ref().and_then(|s| s.phase),
        before.as_ref().and_then(|s| s.phase),
        "phase intact"
    );
    assert_eq!(
        after.as_ref().and_then(|s| s.iteration),
        before.as_ref().and_then(|s| s.iteration),
        "iteration intact"
    );
    op
}

#[tokio::test]
async fn the_loop_follows_worker_reports_and_survives_restarts_in_every_phase() {
    let h = setup("loop").await;
    let mut op = h.operator("first").await;
    h.apply("gate", spec(10)).await;

    let t = h.phase("gate", Phase::Capturing).await;
    let status = t.status.unwrap();
    assert!(status.dataset.unwrap().deadline.is_some());
    assert_eq!(
        h.deployments("app.kubernetes.io/component=annotator").await.len(),
        1
    );
    op = restart(&h, op, "gate", 0).await;

    // The capture worker reports a full training split.
    h.report("gate", CAPTURE_FIELD_MANAGER, json!({ "dataset": { "framesSeen": 900, "framesSelected": 40, "annotated": 12, "train": 10, "eval": 2 } })).await;
    h.phase("gate", Phase::Training).await;
    assert_eq!(h.jobs("gate").await, ["gate-train-1"]);
    op = restart(&h, op, "gate", 1).await;

    // The trainer reports its candidate, and its pod exits 0: the Job controller completes the Job.
    h.report("gate", TRAINER_FIELD_MANAGER, json!({ "candidateModel": {
        "version": 1, "uri": "s3://datasets/models/gate-1.onnx", "map": 0.41, "map50": 0.83, "baselineMap": 0.28,
        "trainedAt": Timestamp::now().to_string() } })).await;
    let capture: Api<Deployment> = Api::namespaced(h.admin.clone(), &h.ns);
    let template_before = capture.get("gate-capture").await.unwrap().spec.template;
    h.finish_job_pod("gate-train-1", "Succeeded").await;
    let t = h.phase("gate", Phase::Deployed).await;
    assert_eq!(t.status.unwrap().current_model.unwrap().version, 1);
    // The capture worker swaps the model in itself: the pod is not restarted for it.
    assert_eq!(
        capture.get("gate-capture").await.unwrap().spec.template,
        template_before,
        "a promotion leaves the capture pod alone"
    );
    // Once the worker reports serving it, the loop monitors it.
    h.report("gate", CAPTURE_FIELD_MANAGER, json!({
        "dataset": { "framesSeen": 900, "framesSelected": 40, "annotated": 12, "train": 10, "eval": 2 },
        "inference": { "model": { "version": 1, "uri": "s3://datasets/models/gate-1.onnx", "since": Timestamp::now().to_string() } } })).await;
    let t = h.phase("gate", Phase::Monitoring).await;
    let status = t.status.unwrap();
    let model = status.current_model.unwrap();
    assert_eq!((model.version, model.map), (1, 0.41));
    assert_eq!(status.iteration, Some(1));
    // The workers' own fields are untouched by the operator's status writes.
    assert_eq!(status.dataset.unwrap().frames_seen, Some(900));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
    op = restart(&h, op, "gate", 1).await;

    // A drift check below the threshold starts a new round of collection: iteration 2 trains
    // once the capture worker counts `trainSize` (10) training images selected since the round
    // began (at the check that saw the drift).
    let checked_at = Timestamp::now().to_string();
    let drifted = |round: Value| {
        json!({
        "dataset": { "framesSeen": 2000, "framesSelected": 90, "annotated": 30, "train": 25, "eval": 2,
                     "trainStored": 60, "round": round },
        "inference": { "model": { "version": 1, "uri": "s3://datasets/models/gate-1.onnx", "since": Timestamp::now().to_string() } },
        "lastDriftCheck": { "time": checked_at, "relativeAccuracy": 0.55, "sampleSize": 50 } })
    };
    h.report("gate", CAPTURE_FIELD_MANAGER, drifted(Value::Null))
        .await;
    let t = h.phase("gate", Phase::Retraining).await;
    let status = t.status.unwrap();
    let drift = status
        .conditions
        .iter()
        .find(|c| c.type_ == "DriftDetected")
        .unwrap();
    assert_eq!(drift.status, "True");
    let started = status
        .dataset
        .unwrap()
        .round_started_at
        .expect("the round's start");
    // Kubernetes times have second precision.
    assert_eq!(
        Some(started.0.as_second()),
        status.last_drift_check.as_ref().map(|c| c.time.0.as_second()),
        "the round begins at the check that saw the drift"
    );
    // 60 images stored in all, 9 of them selected since the round began: not yet.
    h.report(
        "gate",
        CAPTURE_FIELD_MANAGER,
        drifted(json!({ "since": started, "train": 9, "eval": 2 })),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.jobs("gate").await,
        ["gate-train-1"],
        "no Job before the round is full"
    );
    op = restart(&h, op, "gate", 1).await;
    h.report(
        "gate",
        CAPTURE_FIELD_MANAGER,
        drifted(json!({ "since": started, "train": 10, "eval": 2 })),
    )
    .await;
    let api = h.tunings();
    wait_for(WAIT, || async { (h.jobs("gate").await.len() == 2).then_some(()) })
        .await
        .expect("iteration 2's Job once the round is full");
    assert_eq!(
        api.get("gate").await.unwrap().status.unwrap().phase,
        Some(Phase::Retraining)
    );
    let mut jobs = h.jobs("gate").await;
    jobs.sort();
    assert_eq!(jobs, ["gate-train-1", "gate-train-2"]);
    op = restart(&h, op, "gate", 2).await;

    let reasons = h.event_reasons("gate").await;
    for reason in [
        "CaptureStarted",
        "TrainingStarted",
        "ModelPromoted",
        "Monitoring",
        "DriftDetected",
    ] {
        assert!(reasons.contains(reason), "no {reason} event among {reasons:?}");
    }
    assert!(op.metrics.reconciliations.get() > 0);
    op.task.abort();
}

/// A candidate trains, is reported and its Job's pod exits 0; the operator promotes it.
async fn promote(h: &Harness, name: &str, version: u32, map: f64, baseline: f64) {
    h.report(name, TRAINER_FIELD_MANAGER, json!({ "candidateModel": {
        "version": version, "uri": format!("s3://datasets/models/{name}-{version}.onnx"), "map": map, "map50": map + 0.4,
        "baselineMap": baseline, "baselineMap50": baseline + 0.4, "trainedAt": Timestamp::now().to_string() } }))
        .await;
    h.finish_job_pod(&format!("{name}-train-{version}"), "Succeeded")
        .await;
    let api = h.tunings();
    wait_for(WAIT, || async {
        let t = api.get(name).await.ok()?;
        (t.status?.current_model?.version == version).then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("iteration {version} never promoted"));
}

/// The capture worker's report: what it serves, what it refused, its last drift check.
fn capture_report(serving: u32, refused: Option<u32>, round: Value, check: Value) -> Value {
    let model = |v: u32| format!("s3://datasets/models/roll-{v}.onnx");
    let mut inference = json!({ "model": { "version": serving, "uri": model(serving), "since": Timestamp::now().to_string() } });
    if let Some(v) = refused {
        inference["refusedModel"] = json!({ "version": v, "uri": model(v),
            "reason": "the model does not load: protobuf parsing failed", "time": Timestamp::now().to_string() });
    }
    json!({ "dataset": { "train": 10, "eval": 2, "trainStored": 10, "round": round }, "inference": inference, "lastDriftCheck": check })
}

#[tokio::test]
async fn a_new_model_is_rolled_back_when_the_node_refuses_it_or_it_falls_behind_the_old_one() {
    let h = setup("rollback").await;
    let op = h.operator("first").await;
    h.apply("roll", spec(10)).await;
    h.phase("roll", Phase::Capturing).await;
    h.report(
        "roll",
        CAPTURE_FIELD_MANAGER,
        json!({ "dataset": { "train": 10, "eval": 2 } }),
    )
    .await;
    h.phase("roll", Phase::Training).await;
    promote(&h, "roll", 1, 0.40, 0.28).await;
    let now = || Timestamp::now().to_string();
    h.report("roll", CAPTURE_FIELD_MANAGER, capture_report(1, None, Value::Null,
        json!({ "time": now(), "relativeAccuracy": 0.95, "sampleSize": 50, "modelVersion": 1, "ap50": 0.76 }))).await;
    h.phase("roll", Phase::Monitoring).await;

    // Drift on iteration 1: a round collects 10 new images, then iteration 2 trains, is
    // promoted, and the node refuses it.
    let drifting = || json!({ "time": now(), "relativeAccuracy": 0.5, "sampleSize": 50, "modelVersion": 1, "ap50": 0.4 });
    h.report(
        "roll",
        CAPTURE_FIELD_MANAGER,
        capture_report(1, None, Value::Null, drifting()),
    )
    .await;
    h.phase("roll", Phase::Retraining).await;
    h.report(
        "roll",
        CAPTURE_FIELD_MANAGER,
        capture_report(1, None, h.round("roll", 10).await, drifting()),
    )
    .await;
    promote(&h, "roll", 2, 0.45, 0.41).await;
    let t = h.tunings().get("roll").await.unwrap();
    assert_eq!(t.status.unwrap().previous_model.unwrap().version, 1);
    h.report(
        "roll",
        CAPTURE_FIELD_MANAGER,
        capture_report(1, Some(2), h.round("roll", 10).await, drifting()),
    )
    .await;
    let api = h.tunings();
    let rolled = wait_for(WAIT, || async {
        let t = api.get("roll").await.ok()?;
        (t.status.as_ref()?.rolled_back_model.as_ref()?.version == 2).then_some(t)
    })
    .await
    .expect("iteration 2 rolled back");
    let status = rolled.status.unwrap();
    assert_eq!(status.current_model.unwrap().version, 1);
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ModelRolledBack")
    );
    assert!(degraded.message.contains("refused"), "{}", degraded.message);

    // Iteration 1 still drifts: iteration 3 trains and is promoted; in its probation it scores
    // far below iteration 1 on the same samples, and is rolled back too.
    h.phase("roll", Phase::Retraining).await;
    h.report(
        "roll",
        CAPTURE_FIELD_MANAGER,
        capture_report(1, None, h.round("roll", 10).await, drifting()),
    )
    .await;
    promote(&h, "roll", 3, 0.47, 0.41).await;
    h.report(
        "roll",
        CAPTURE_FIELD_MANAGER,
        capture_report(
            3,
            None,
            h.round("roll", 10).await,
            json!({ "time": now(), "relativeAccuracy": 0.6, "sampleSize": 50, "modelVersion": 3, "ap50": 0.52,
                "previousModelAp50": 0.74 }),
        ),
    )
    .await;
    let rolled = wait_for(WAIT, || async {
        let t = api.get("roll").await.ok()?;
        (t.status.as_ref()?.rolled_back_model.as_ref()?.version == 3).then_some(t)
    })
    .await
    .expect("iteration 3 rolled back");
    assert_eq!(rolled.status.unwrap().current_model.unwrap().version, 1);
    assert!(h.event_reasons("roll").await.contains("ModelRolledBack"));
    op.task.abort();
}

#[tokio::test]
async fn the_deadline_trains_on_enough_images_and_says_when_there_are_too_few() {
    let h = setup("deadline").await;
    let op = h.operator("only").await;
    h.apply("yard", spec(1000)).await;
    h.phase("yard", Phase::Capturing).await;

    // The deadline has passed (written as if a day went by) with 3 images, fewer than minTrainSize 5.
    let past = (Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1)).to_string();
    h.report("yard", "test-clock", json!({ "dataset": { "deadline": past } }))
        .await;
    h.report(
        "yard",
        CAPTURE_FIELD_MANAGER,
        json!({ "dataset": { "train": 3, "eval": 2 } }),
    )
    .await;
    let api = h.tunings();
    // The Progressing condition once its message says what `says` accepts.
    let progressing_once = |says: fn(&str) -> bool| {
        let api = api.clone();
        async move {
            wait_for(WAIT, || async {
                let t = api.get("yard").await.ok()?;
                let c = t
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Progressing")?;
                says(&c.message).then_some(c)
            })
            .await
        }
    };
    // Both reports must have reached the operator (they may arrive in either order).
    let progressing = progressing_once(|m| m.contains("deadline passed") && m.contains("only 3 "))
        .await
        .expect("the status explains why training has not started");
    assert!(
        progressing
            .message
            .contains("only 3 of 1000 training images, 2 of 2 evaluation images")
            && progressing.message.contains("at least 5 and 2"),
        "{}",
        progressing.message
    );
    assert!(h.jobs("yard").await.is_empty());

    // Enough training images, but the evaluation split lost one: still no Job, and the status
    // says which split is short.
    h.report(
        "yard",
        CAPTURE_FIELD_MANAGER,
        json!({ "dataset": { "train": 6, "eval": 1 } }),
    )
    .await;
    progressing_once(|m| m.contains("1 of 2 evaluation images"))
        .await
        .expect("the status says the evaluation split is short");
    assert!(h.jobs("yard").await.is_empty());

    h.report(
        "yard",
        CAPTURE_FIELD_MANAGER,
        json!({ "dataset": { "train": 6, "eval": 2 } }),
    )
    .await;
    h.phase("yard", Phase::Training).await;
    assert_eq!(h.jobs("yard").await, ["yard-train-1"]);
    op.task.abort();
}

#[tokio::test]
async fn a_failing_job_is_retried_then_the_tuning_fails_with_an_explanation() {
    let h = setup("failure").await;
    let op = h.operator("only").await;
    h.apply("dock", spec(10)).await;
    h.phase("dock", Phase::Capturing).await;
    h.report(
        "dock",
        CAPTURE_FIELD_MANAGER,
        json!({ "dataset": { "train": 10, "eval": 2 } }),
    )
    .await;
    h.phase("dock", Phase::Training).await;

    // maxRetries 1: the Job controller starts a second pod after the first fails.
    h.finish_job_pod("dock-train-1", "Failed").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.tunings().get("dock").await.unwrap().status.unwrap().phase,
        Some(Phase::Training),
        "one retry left"
    );
    h.finish_job_pod("dock-train-1", "Failed").await;

    let t = h.phase("dock", Phase::Failed).await;
    let degraded = t
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "TrainingFailed")
    );
    assert!(
        degraded.message.contains("kubectl logs job/dock-train-1"),
        "{}",
        degraded.message
    );
    wait_for(WAIT, || async {
        h.event_reasons("dock")
            .await
            .contains("TrainingFailed")
            .then_some(())
    })
    .await
    .expect("a TrainingFailed event");

    // Editing the spec clears the failed Job and trains again.
    let edit = json!({ "spec": { "training": { "learningRate": 0.0005 } } });
    h.tunings()
        .patch("dock", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    h.phase("dock", Phase::Training).await;
    let jobs: Api<Job> = Api::namespaced(h.admin.clone(), &h.ns);
    let job = wait_for(WAIT, || async {
        let job = jobs.get("dock-train-1").await.ok()?;
        let failed = job.status.as_ref()?.failed.unwrap_or(0);
        (failed == 0 && job.metadata.deletion_timestamp.is_none()).then_some(job)
    })
    .await
    .expect("a fresh training Job");
    assert_eq!(job.spec.unwrap().backoff_limit, Some(1));
    op.task.abort();
}

#[tokio::test]
async fn capture_lands_on_the_camera_node_and_the_annotator_on_the_gpu_node() {
    let h = setup("placement").await;
    let camera_node = format!("{}-camera", h.ns);
    let gpu_node = format!("{}-gpu", h.ns);
    ready_node(&h.admin, &camera_node, json!({ "autotuner.io/test": h.ns }), 0)
        .await
        .unwrap();
    ready_node(
        &h.admin,
        &gpu_node,
        json!({ "autotuner.io/test": h.ns, "accelerator": "nvidia" }),
        1,
    )
    .await
    .unwrap();
    // The default storage: a claim the operator creates; a volume for it as a provisioner would make.
    let volume: PersistentVolume = serde_json::from_value(json!({
        "metadata": { "name": format!("{}-dataset", h.ns) },
        "spec": { "capacity": { "storage": "10Gi" }, "accessModes": ["ReadWriteOnce"], "hostPath": { "path": "/tmp/dataset" },
                  "claimRef": { "namespace": h.ns, "name": "porch-dataset" } }
    }))
    .unwrap();
    Api::<PersistentVolume>::all(h.admin.clone())
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();

    let op = h.operator("only").await;
    h.apply(
        "porch",
        json!({
            "camera": { "url": "rtsp://porch.example.invalid/stream", "nodeName": camera_node,
                        "credentialsSecretRef": { "name": "porch-camera" } },
            "classes": ["person", "car"],
            "annotation": { "teacher": { "model": { "uri": "file:///models/yolov12n.onnx", "family": "yolo" },
                                         "gpus": 1, "nodeSelector": { "accelerator": "nvidia" } } },
            "training": { "student": { "uri": "file:///models/ssd.onnx", "family": "ssdRaw" } }
        }),
    )
    .await;
    h.phase("porch", Phase::Capturing).await;

    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), &h.ns);
    for (component, expected) in [("capture", &camera_node), ("annotator", &gpu_node)] {
        let bound = wait_for(WAIT, || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}")))
                .await
                .ok()?;
            list.items.into_iter().find_map(|p| p.spec?.node_name)
        })
        .await
        .unwrap_or_else(|_| panic!("the {component} pod was not scheduled"));
        assert_eq!(&bound, expected, "{component}");
    }
    // The credentials reach the pod only as a reference to the Secret.
    let capture = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=capture"))
        .await
        .unwrap();
    let text = serde_json::to_string(&capture.items[0].spec).unwrap();
    assert!(
        text.contains(r#""secretKeyRef":{"key":"password","name":"porch-camera"}"#),
        "{text}"
    );
    op.task.abort();
}

#[tokio::test]
async fn tunings_share_an_annotator_and_deletion_removes_everything_they_made() {
    let h = setup("sharing").await;
    let op = h.operator("only").await;
    h.apply("north", spec(10)).await;
    h.apply("south", spec(10)).await;
    h.phase("north", Phase::Capturing).await;
    h.phase("south", Phase::Capturing).await;
    let annotators = h.deployments("app.kubernetes.io/component=annotator").await;
    assert_eq!(annotators.len(), 1, "{annotators:?}");
    let services: Api<Service> = Api::namespaced(h.admin.clone(), &h.ns);
    assert!(services.get_opt(&annotators[0]).await.unwrap().is_some());

    h.tunings()
        .delete("north", &DeleteParams::default())
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(h.admin.clone(), &h.ns);
    wait_for(WAIT, || async {
        let gone = h.tunings().get_opt("north").await.ok()?.is_none()
            && h.deployments("app.kubernetes.io/instance=north").await.is_empty()
            && accounts.get_opt("north-worker").await.ok()?.is_none();
        gone.then_some(())
    })
    .await
    .expect("north and what it owned are gone");
    assert_eq!(
        h.deployments("app.kubernetes.io/component=annotator").await,
        annotators,
        "south still uses it"
    );

    h.tunings()
        .delete("south", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(WAIT, || async {
        let gone = h
            .deployments("app.kubernetes.io/component=annotator")
            .await
            .is_empty()
            && services.get_opt(&annotators[0]).await.ok()?.is_none()
            && h.tunings().get_opt("south").await.ok()?.is_none();
        gone.then_some(())
    })
    .await
    .expect("the annotator goes with its last user");
    op.task.abort();
}

#[tokio::test]
async fn the_annotator_admits_capture_pods_and_scrapers_only_and_its_policy_goes_when_turned_off() {
    let h = setup("annotator-policy").await;
    let scrapers: Vec<NetworkPolicyPeer> = serde_json::from_value(json!([
        { "namespaceSelector": {}, "podSelector": { "matchLabels": { "app.kubernetes.io/name": "prometheus" } } }
    ]))
    .unwrap();
    let op = operator::start_configured(h.plane, &h.ns, "policy", |config| {
        config.annotator_ingress_from = Some(scrapers.clone());
    })
    .await;
    h.apply("gate", spec(10)).await;
    h.phase("gate", Phase::Capturing).await;
    let annotator = h
        .deployments("app.kubernetes.io/component=annotator")
        .await
        .remove(0);
    let policies: Api<NetworkPolicy> = Api::namespaced(h.admin.clone(), &h.ns);
    let policy = wait_for(WAIT, || async { policies.get_opt(&annotator).await.ok()? })
        .await
        .expect("the annotator's NetworkPolicy");
    let spec = policy.spec.unwrap();
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let peers: Vec<NetworkPolicyPeer> = spec
        .ingress
        .unwrap()
        .into_iter()
        .flat_map(|rule| rule.from.unwrap_or_default())
        .collect();
    assert!(peers.contains(&scrapers[0]), "{peers:#?}");
    assert_eq!(peers.len(), 2, "the capture pods and the scrapers: {peers:#?}");

    // The operator restarted without the option: the policy goes, the annotator stays.
    op.task.abort();
    let op = h.operator("policy").await;
    wait_for(WAIT, || async {
        policies.get_opt(&annotator).await.ok()?.is_none().then_some(())
    })
    .await
    .expect("the policy is deleted once nothing asks for it");
    assert_eq!(
        h.deployments("app.kubernetes.io/component=annotator").await,
        [annotator]
    );
    op.task.abort();
}

#[tokio::test]
async fn one_replica_leads_and_a_standby_takes_over_when_it_dies() {
    let h = setup("election").await;
    let first = h.operator("replica-a").await;
    let leases: Api<Lease> = Api::namespaced(h.admin.clone(), OPERATOR_NAMESPACE);
    let lease_name = format!("operator-{}", h.ns);
    wait_for(WAIT, || async {
        let holder = leases.get(&lease_name).await.ok()?.spec?.holder_identity?;
        (holder == "replica-a").then_some(())
    })
    .await
    .unwrap();
    let second = h.operator("replica-b").await;
    h.apply("east", spec(10)).await;
    h.phase("east", Phase::Capturing).await;
    assert!(first.metrics.reconciliations.get() > 0);
    assert_eq!(
        second.metrics.reconciliations.get(),
        0,
        "the standby does not reconcile"
    );
    assert!(
        second.probes.ready.load(std::sync::atomic::Ordering::Relaxed),
        "the standby is ready"
    );
    let leader = |op: &Operator| {
        let cache = op.probes.tunings.read().clone();
        op.probes
            .metrics
            .render(cache.as_ref())
            .lines()
            .any(|line| line == "autotuner_operator_leader 1")
    };
    assert!(
        leader(&first) && !leader(&second),
        "only the leader says it leads"
    );

    first.task.abort();
    wait_for(WAIT, || async {
        let holder = leases.get(&lease_name).await.ok()?.spec?.holder_identity?;
        (holder == "replica-b").then_some(())
    })
    .await
    .expect("the standby takes the Lease");
    h.apply("west", spec(10)).await;
    h.phase("west", Phase::Capturing).await;
    assert!(second.metrics.reconciliations.get() > 0);
    assert!(leader(&second), "the new leader says it leads");
    second.task.abort();
}

#[tokio::test]
async fn metrics_and_probes_are_served() {
    let h = setup("metrics").await;
    let op = h.operator("only").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(http::serve_on(listener, op.probes.clone()));
    h.apply("lobby", spec(10)).await;
    h.phase("lobby", Phase::Capturing).await;
    h.report(
        "lobby",
        CAPTURE_FIELD_MANAGER,
        json!({ "dataset": { "train": 4, "eval": 1 } }),
    )
    .await;

    let expected = [
        "autotuner_cameratunings{phase=\"Capturing\"} 1".to_string(),
        "autotuner_cameratunings{phase=\"Failed\"} 0".to_string(),
        format!(
            "autotuner_dataset_images{{cameratuning=\"lobby\",namespace=\"{}\",split=\"train\"}} 4",
            h.ns
        ),
        // What the chart's alert rules read.
        format!(
            "autotuner_cameratuning_phase{{cameratuning=\"lobby\",namespace=\"{}\",phase=\"Capturing\"}} 1",
            h.ns
        ),
        format!(
            "autotuner_cameratuning_condition{{cameratuning=\"lobby\",namespace=\"{}\",reason=\"Capturing\",status=\"false\",type=\"Ready\"}} 1",
            h.ns
        ),
        "autotuner_operator_leader 1".to_string(),
    ];
    let count = |body: &str, name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    // The gauges follow the operator's cache, which sees the report a moment after it is written,
    // and a reconciliation is timed when it ends, which can be after its status write is seen.
    wait_for(WAIT, || async {
        let (status, body) = get(address, "/metrics").await;
        (status == 200
            && expected.iter().all(|line| body.lines().any(|l| l == line))
            && count(&body, "autotuner_operator_reconciliations_total") >= 2.0
            && count(&body, "autotuner_operator_reconcile_duration_seconds_count") >= 2.0)
            .then_some(body)
    })
    .await
    .unwrap_or_else(|_| panic!("/metrics never showed {expected:?} and two timed reconciliations"));
    let deadline = h
        .tunings()
        .get("lobby")
        .await
        .unwrap()
        .status
        .unwrap()
        .dataset
        .unwrap()
        .deadline;
    let deadline = deadline.expect("the round has a deadline").0.as_second() as f64;
    let (_, body) = get(address, "/metrics").await;
    let series = format!(
        "autotuner_cameratuning_deadline_timestamp_seconds{{cameratuning=\"lobby\",namespace=\"{}\"}}",
        h.ns
    );
    assert_eq!(count(&body, &series), deadline, "{body}");
    assert_eq!(get(address, "/healthz").await.0, 200);
    assert_eq!(get(address, "/readyz").await.0, 200);
    op.task.abort();
}

/// A worker may write its own CameraTuning's status and nothing else.
#[tokio::test]
async fn a_worker_can_report_only_on_its_own_cameratuning() {
    let h = setup("worker-rbac").await;
    let op = h.operator("only").await;
    h.apply("mine", spec(10)).await;
    h.apply("other", spec(10)).await;
    h.phase("mine", Phase::Capturing).await;
    h.phase("other", Phase::Capturing).await;

    let worker = service_account_client(h.plane, &h.ns, "mine-worker")
        .await
        .unwrap();
    let api: Api<CameraTuning> = Api::namespaced(worker, &h.ns);
    let report = |train: u64| json!({ "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning", "status": { "dataset": { "train": train } } });
    let params = PatchParams::apply(CAPTURE_FIELD_MANAGER).force();
    // The API server's authorizer learns of a new RoleBinding a moment after it is stored.
    wait_for(WAIT, || async {
        api.patch_status("mine", &params, &Patch::Apply(&report(7)))
            .await
            .ok()
    })
    .await
    .expect("its own status");
    assert!(api.get("mine").await.is_ok());
    for denied in [
        api.patch_status("other", &params, &Patch::Apply(&report(7))).await.map(|_| ()),
        api.get("other").await.map(|_| ()),
        api.patch("mine", &params, &Patch::Apply(&json!({ "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning", "spec": { "classes": ["car"] } }))).await.map(|_| ()),
        api.delete("mine", &DeleteParams::default()).await.map(|_| ()),
    ] {
        assert!(matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403), "{denied:?}");
    }
    op.task.abort();
}

/// A plain HTTP/1.1 GET.
async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

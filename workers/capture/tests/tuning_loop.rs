//! The loop, live, from end to end on real parts: an RTSP camera (GStreamer's server), the real
//! capture binary as the CameraTuning's worker identity, the real annotator (YOLOv12n), the real
//! operator on the test control plane with its Job controller, and the real trainer binary run
//! as each training Job's pod would run it (its environment, its ServiceAccount, the dataset
//! volume at a local folder shared with the capture worker).
//!
//! The camera shows PETS09 (vtest.avi); iteration 1 is tuned on it and promoted, and its drift
//! checks hold. Then the camera zooms out at dusk (the same place at 70% of the scale, darker),
//! the checks fall, and the operator starts a new round of collection on what the camera sees
//! now; iteration 2 trains on it from iteration 1, beats it on the new scene's eval split, is
//! promoted, and its checks recover.
//!
//! What is played: the kubelet (the test starts the processes a pod would run, and tells the
//! API server a Job's pod exited) and time, compressed: small splits, 2-second split blocks,
//! a check every 10 s.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use autotuner_api::contract::{self, TrainingSettings};
use autotuner_api::{CameraTuning, CameraTuningStatus, DriftCheckStatus, Phase};
use autotuner_tests::operator;
use autotuner_tests::workers::{JobPod, container_env, job_pod_command, worker_kubeconfig};
use autotuner_tests::{Options, install_crd, shared, test_namespace, wait_for};
use common::{Annotator, Process, assets, capture_in_cluster, free_port, h264_clip, rtsp_server};
use k8s_openapi::api::batch::v1::Job;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

const NAME: &str = "lobby";
/// `drift.minRelativeAccuracy`: the checks of the same scene sit near 1.0, those after the change
/// near 0.75.
const THRESHOLD: f64 = 0.85;

/// vtest.avi's first 24 seconds at 70% of the scale in the middle of a grey frame of the same
/// size, a little darker: the camera zoomed out at dusk. Its people stay within the sizes the
/// student's anchors cover, so retraining can win them back (at half the scale they fall below
/// the smallest anchor, which no fine-tuning recovers: `drift.rs` uses that change to show the
/// check falling). The server plays it in a loop, so the 16 drift samples a check reads (one
/// every 1.5 s) cover the scene as the eval split does, and the check measures the model rather
/// than which part of the footage happened to play.
fn zoomed_out(dir: &Path) -> PathBuf {
    common::encode_vtest(
        dir,
        "zoomed-out.mkv",
        &[
            "-frames:v",
            "240",
            "-vf",
            "scale=538:404,pad=768:576:115:86:gray,eq=brightness=-0.1:contrast=0.7",
        ],
    )
}

/// A line of the capture worker's `/metrics`.
fn metric(port: u16, name: &str) -> String {
    common::http_get(port, "/metrics")
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default()
        .to_string()
}

/// The trainer binary beside this crate's: `cargo test --workspace` builds every worker.
fn trainer_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_capture")).with_file_name("trainer");
    assert!(
        path.is_file(),
        "{} is missing: run the workspace's tests (cargo test --workspace) or cargo build -p autotuner-trainer",
        path.display()
    );
    path
}

struct Loop {
    admin: Client,
    ns: String,
    tunings: Api<CameraTuning>,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Loop {
    async fn status(&self) -> CameraTuningStatus {
        self.tunings.get(NAME).await.unwrap().status.unwrap_or_default()
    }

    async fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        test: impl Fn(&CameraTuningStatus) -> Option<T>,
    ) -> T {
        let found = wait_for(timeout, || async {
            let status = self.tunings.get(NAME).await.ok()?.status?;
            test(&status)
        })
        .await;
        match found {
            Ok(found) => found,
            Err(_) => {
                let log = std::fs::read_to_string(self.dir.join("capture.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "timed out waiting until {what}: {:#?}\ncapture worker's log (last lines, newest first):\n{}",
                    self.status().await,
                    tail.join("\n")
                )
            }
        }
    }

    /// The next drift check of `version` on a full sample, after `after` (its time).
    async fn next_check(&self, version: u32, after: Option<&DriftCheckStatus>) -> DriftCheckStatus {
        self.until(
            &format!("a drift check of iteration {version}"),
            Duration::from_secs(120),
            |s| {
                let check = s.last_drift_check.clone()?;
                let newer = after.is_none_or(|a| check.time.0 > a.time.0);
                (newer && check.model_version == Some(version) && check.sample_size == Some(16))
                    .then_some(check)
            },
        )
        .await
    }

    /// Runs the training Job of `iteration` as its pod would, then reports the pod's exit.
    async fn train(&self, iteration: u32) -> TrainingSettings {
        let jobs: Api<Job> = Api::namespaced(self.admin.clone(), &self.ns);
        let job_name = format!("{NAME}-train-{iteration}");
        let job = wait_for(Duration::from_secs(240), || async {
            jobs.get(&job_name).await.ok()
        })
        .await
        .unwrap_or_else(|_| panic!("no Job {job_name}"));
        let env = container_env(&job.spec.unwrap().template);
        let settings = TrainingSettings::from_env_value(&env[contract::ENV_TRAINING]).unwrap();
        let (dataset, work) = (self.dir.join("data"), self.dir.join("trainer"));
        let pod = JobPod {
            kubeconfig: &self.kubeconfig,
            namespace: &self.ns,
            dataset_uri: &dataset,
            work_dir: &work,
        };
        let mut command = job_pod_command(&trainer_binary(), &pod, &env);
        let out = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "iteration {iteration}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        operator::finish_job_pod(&self.admin, &self.ns, &job_name, "Succeeded").await;
        settings
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_drift_the_loop_retrains_on_the_new_scene_and_the_check_recovers() {
    let plane = shared(Options {
        controllers: true,
        node: false,
    })
    .await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "loop").await.unwrap();
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), &ns);
    let dir = tempfile::tempdir().unwrap();
    let (rtsp_port, annotator_port, metrics_port) = (free_port(), free_port(), free_port());
    let (day, zoomed) = (h264_clip(dir.path(), 795), zoomed_out(dir.path()));
    let mut camera = rtsp_server(&day, rtsp_port, None);
    let _annotator = tokio::task::spawn_blocking(move || Annotator::start(annotator_port))
        .await
        .unwrap();
    let model = |file: &str| format!("file://{}", assets().join("models").join(file).display());
    let tuning: CameraTuning = serde_json::from_value(json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "metadata": { "name": NAME, "namespace": ns },
        "spec": {
            "camera": { "url": format!("rtsp://127.0.0.1:{rtsp_port}/live"), "nodeName": "edge-1" },
            "classes": ["person"],
            "sampling": { "maxUploadsPerMinute": 120 },
            "annotation": { "teacher": { "model": { "uri": model("yolov12n.onnx"), "family": "yolo" } } },
            "dataset": { "trainSize": 40, "evalSize": 20 },
            "training": {
                "student": { "uri": model("ssd_mobilenet_v2_coco_raw.onnx"), "family": "ssdRaw" },
                // The heads alone, as this test has always trained (it is of the loop and its
                // timing, not of accuracy; the default trains every layer).
                "trainableLayers": "boxRegression",
                "minTrainSize": 10, "epochs": 2, "batchSize": 8, "learningRate": 0.001,
            },
            "inference": { "maxFramesPerSecond": 2 },
            "drift": { "checkInterval": "10s", "sampleSize": 16, "minRelativeAccuracy": THRESHOLD, "maxDatasetSize": 40 },
            // 16 samples make a noisy comparison in probation; rollback has tests of its own.
            "rollout": { "minImprovement": 0.0, "probationChecks": 1, "rollbackMargin": 0.2 },
        },
    }))
    .unwrap();
    tunings.create(&PostParams::default(), &tuning).await.unwrap();
    let op = operator::start(plane, &ns, "loop").await;
    // Capturing: the operator made the workloads and the worker identity.
    wait_for(Duration::from_secs(60), || async {
        let status = tunings.get(NAME).await.ok()?.status?;
        (status.phase == Some(Phase::Capturing)).then_some(())
    })
    .await
    .expect("Capturing");
    let kubeconfig = worker_kubeconfig(plane, &ns, &format!("{NAME}-worker"), dir.path()).await;
    let started = std::time::Instant::now();
    let stage = |what: &str| eprintln!("{:>4} s: {what}", started.elapsed().as_secs());
    let lp = Loop {
        admin: admin.clone(),
        ns: ns.clone(),
        tunings,
        dir: dir.path().to_path_buf(),
        kubeconfig,
    };

    // The capture pod: the operator's environment, with time compressed (2-second split blocks,
    // one selected frame in 2 a drift sample instead of 1 in 10). At 120 uploads a minute that is
    // a new drift sample a second, so a check's 16 samples are all of the new scene about 16 s
    // (under two checks) after the switch; at 1 in 3 it took 24 s plus the labelling, and a CI
    // run saw the fourth check still at 0.87.
    let capture_log = std::fs::File::create(dir.path().join("capture.log")).unwrap();
    let _capture = Process(
        capture_in_cluster(&lp.kubeconfig, &ns, NAME, annotator_port, dir.path())
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args([
                "--split-block-seconds",
                "2",
                "--drift-every",
                "2",
                "--inference-threads",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(capture_log)
            .spawn()
            .unwrap(),
    );

    // Round 1: the training split fills; iteration 1 trains from the off-the-shelf student.
    lp.until("iteration 1 trains", Duration::from_secs(240), |s| {
        (s.phase == Some(Phase::Training)).then_some(())
    })
    .await;
    stage("round 1 collected; iteration 1 trains");
    let first = lp.train(1).await;
    assert_eq!(first.base_model_uri, model("ssd_mobilenet_v2_coco_raw.onnx"));
    lp.until("iteration 1 serves", Duration::from_secs(120), |s| {
        (s.phase == Some(Phase::Monitoring) && s.current_model.as_ref()?.version == 1).then_some(())
    })
    .await;

    stage("iteration 1 serves");
    // The same scene: the checks hold and the loop keeps monitoring.
    let mut same = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let check = lp.next_check(1, last.as_ref()).await;
        same.push(check.relative_accuracy);
        last = Some(check);
    }
    let status = lp.status().await;
    eprintln!("iteration 1 on the day scene: {same:.2?}");
    assert_eq!(status.phase, Some(Phase::Monitoring), "{same:.2?}");
    assert!(same.iter().all(|&r| r >= THRESHOLD), "{same:.2?}");

    stage("the camera zooms out at dusk");
    // The camera zooms out at dusk (the server restarts on the same address with the other view).
    drop(camera);
    camera = rtsp_server(&zoomed, rtsp_port, None);
    let stored_at_switch = lp.status().await.dataset.unwrap().train_stored.unwrap();
    let mut after = Vec::new();
    while lp.status().await.phase == Some(Phase::Monitoring) {
        assert!(
            after.len() < 4,
            "no drift within 3 checks of the switch: {after:.2?}"
        );
        let check = lp.next_check(1, last.as_ref()).await;
        eprintln!(
            "after the switch: {:.2}; {}",
            check.relative_accuracy,
            metric(metrics_port, "autotuner_capture_spool_entries")
        );
        after.push(check.relative_accuracy);
        last = Some(check);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("iteration 1 after the switch: {after:.2?}");

    // Round 2: drift starts a new round, counted from the images stored by then; iteration 2
    // trains once it has 40 of its own, from iteration 1 (on the latest 40: `maxDatasetSize`
    // equals `trainSize` here to keep the test short; by default older images stay in).
    let status = lp
        .until("drift starts a round", Duration::from_secs(30), |s| {
            (s.phase == Some(Phase::Retraining)).then(|| s.clone())
        })
        .await;
    let round_start = status.dataset.as_ref().unwrap().round_start.unwrap();
    assert!(
        round_start >= stored_at_switch,
        "{round_start} < {stored_at_switch}"
    );
    let drift = status
        .conditions
        .iter()
        .find(|c| c.type_ == "DriftDetected")
        .unwrap();
    assert_eq!(drift.status, "True", "{drift:?}");
    stage("round 2 started");
    let second = lp.train(2).await;
    let dataset = lp.status().await.dataset.unwrap();
    assert!(
        dataset.train_stored.unwrap() >= round_start + 40,
        "the round collected its own images: {dataset:?}"
    );
    assert_eq!(
        second.base_model_uri,
        format!(
            "file://{}",
            dir.path().join("data").join(contract::model_file(1)).display()
        ),
        "iteration 2 starts from the model that serves"
    );
    stage("iteration 2 trained");
    let promoted = lp
        .until("iteration 2 is judged", Duration::from_secs(120), |s| {
            (s.iteration == Some(2) && s.phase != Some(Phase::Evaluating)).then(|| s.clone())
        })
        .await;
    let current = promoted.current_model.clone().unwrap();
    stage("iteration 2 judged");
    // Judged against iteration 1 on the same eval split, the new scene's.
    let candidate = promoted.candidate_model.clone().expect("iteration 2 reported");
    let baseline = candidate
        .baseline_map
        .expect("the baseline scored on the same split");
    if current.version == 1 {
        // Fine-tuning on 40 images does not always beat the model it starts from: the gate
        // keeps iteration 1 and, as it still drifts, the loop collects another round.
        eprintln!(
            "iteration 2 rejected: mAP {:.3} against iteration 1's {baseline:.3} on the new scene's eval split",
            candidate.map
        );
        assert!(candidate.map < baseline, "{promoted:#?}");
        lp.until("another round", Duration::from_secs(60), |s| {
            let start = s.dataset.as_ref()?.round_start?;
            (s.phase == Some(Phase::Retraining) && start > round_start).then_some(())
        })
        .await;
        return;
    }
    assert_eq!(current.version, 2, "{promoted:#?}");
    // Iteration 2 serves, and its checks on the zoomed-out scene are back above the threshold.
    let recovered = lp.next_check(2, last.as_ref()).await;
    let later = lp.next_check(2, Some(&recovered)).await;
    eprintln!(
        "iteration 2: promoted at AP@0.5 {:.3} (iteration 1 on the same eval split: {:.3}); checks {:.2}, {:.2}; \
         on the first one's samples AP@0.5 {:.3} (iteration 1: {:.3})",
        current.map50.unwrap_or_default(),
        current.baseline_map50.unwrap_or_default(),
        recovered.relative_accuracy,
        later.relative_accuracy,
        recovered.ap50.unwrap_or_default(),
        recovered.previous_model_ap50.unwrap_or_default(),
    );
    // Its probation check, on the same samples as the model it replaced: within the spec's
    // rollback margin (0.2), so it stays; whether it is also ahead there varies from run to run
    // (0.595 against 0.501 in one, 0.540 against 0.543 in another) ...
    let (ap50, previous) = (recovered.ap50.unwrap(), recovered.previous_model_ap50.unwrap());
    assert!(previous - ap50 <= 0.2, "{recovered:?}");
    // ... and as good as its promotion said.
    assert!(
        recovered.relative_accuracy >= THRESHOLD && later.relative_accuracy >= THRESHOLD,
        "{recovered:?} {later:?}"
    );
    let status = lp.status().await;
    assert_eq!(status.phase, Some(Phase::Monitoring));
    assert!(status.rolled_back_model.is_none(), "{status:#?}");
    drop(camera);
    op.task.abort();
}

//! The loop, live, from end to end on real parts: an RTSP camera (GStreamer's server), the real
//! capture binary as the CameraTuning's worker identity, the real annotator (YOLOv12n), the real
//! operator on the test control plane with its Job controller, and the real trainer binary run
//! as each training Job's pod would run it (its environment, its ServiceAccount, the dataset
//! volume at a local folder shared with the capture worker).
//!
//! The camera shows PETS09 (vtest.avi's first 24 s, in a loop); iteration 1 is tuned on it and
//! promoted, and 20 drift checks hold. Then the camera zooms out at dusk (the same place at 70% of
//! the scale, darker), the checks fall, and the operator starts a new round of collection on what
//! the camera sees now; iteration 2 trains on it from iteration 1 and is judged against it on the
//! new scene's eval images: promoted, its checks recover; rejected, iteration 1 serves on and the
//! next check starts another round.
//!
//! What is played: the kubelet (the test starts the processes a pod would run, and tells the
//! API server a Job's pod exited) and time, compressed: small splits, 2-second split blocks,
//! a check every 10 s.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use autotuner_api::contract::{self, TrainingSettings};
use autotuner_api::promotion;
use autotuner_api::{CameraTuning, CameraTuningStatus, DriftCheckStatus, ModelStatus, Phase};
use autotuner_tests::operator;
use autotuner_tests::workers::{JobPod, container_env, job_pod_command, worker_kubeconfig};
use autotuner_tests::{Options, install_crd, shared, test_namespace, wait_for};
use common::{Annotator, Process, assets, capture_in_cluster, free_port, h264_clip, rtsp_server};
use k8s_openapi::api::batch::v1::Job;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

const NAME: &str = "lobby";
/// `drift.minRelativeAccuracy` (set when the test trained the heads alone for 8 epochs; it has
/// held for the default training since). Runs that played all
/// of vtest.avi (80 s) put the unchanged scene's checks anywhere from 0.83 to 1.30, while each
/// run's own checks agreed within about 0.1: a check's 16 samples (16 s of the loop) and the
/// promotion's 20 eval images (the first minute or so) saw different stretches of the footage, so
/// the reference, not the model, decided where a run's checks sat. Both scenes are now the same
/// 24-second loop, so the samples and the eval split are drawn from the same frames: 20 checks of
/// the unchanged scene 0.86-1.10, and the first check of the changed scene alone 0.68
/// (bench-results/tuning-loop-retrain.json). The threshold sits between them.
const THRESHOLD: f64 = 0.78;
/// Checks of the unchanged scene that must all hold (about 10 s each).
const SAME_SCENE_CHECKS: usize = 20;
/// Frames of each scene's clip (24 s at 10 fps), played in a loop by the camera.
const SCENE_FRAMES: u32 = 240;

/// vtest.avi's first 24 seconds at 70% of the scale in the middle of a grey frame of the same
/// size, a little darker: the camera zoomed out at dusk. Its people stay within the sizes the
/// student's anchors cover, so retraining can win them back (at half the scale they fall below
/// the smallest anchor, which no fine-tuning recovers: `drift.rs` uses that change to show the
/// check falling). The server plays it in a loop, so the 16 drift samples a check reads (one a
/// second) cover most of the scene, as the eval split does, and the check measures the model
/// rather than which part of the footage happened to play.
fn zoomed_out(dir: &Path) -> PathBuf {
    common::encode_vtest(
        dir,
        "zoomed-out.mkv",
        &[
            "-frames:v",
            &SCENE_FRAMES.to_string(),
            "-vf",
            "scale=538:404,pad=768:576:115:86:gray,eq=brightness=-0.1:contrast=0.7",
        ],
    )
}

/// A trained model scores differently from the one it started from on the same eval images:
/// the same figure to 1e-9 is the starting weights exported again (a trainer that stopped before
/// its one evaluation did that, and the gate at `minImprovement` 0 promoted it).
fn assert_learned(model: &ModelStatus) {
    let baseline = model.baseline_map.expect("the baseline scored on the same split");
    assert!(
        (model.map - baseline).abs() > 1e-9,
        "iteration {} scores exactly as the model it started from (mAP {}): nothing was trained",
        model.version,
        model.map
    );
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

/// A benchmark, not a CI test: whether iteration 2 wins the new scene back depends on how well
/// it trains. Run it with `scripts/bench-tuning-loop`. Where each of its assertions is checked in
/// CI instead: the drift check holding on the same scene, falling after a change and catching a
/// worse model (`drift.rs`); the worker checking the promoted model in a cluster and reporting it
/// (`drift.rs`, `tests/tests/e2e.rs`); drift starting a round at the check's time and a second Job
/// in pods (`tests/tests/e2e.rs`); the round counting frames decoded since it began
/// (`src/round.rs`, `src/dataset.rs`, `operator/api/src/status.rs`); a round training only on its
/// own images, a rejected candidate waiting for a newer check, probation and rollback
/// (`operator/controller/src/plan.rs`, `tests/tests/operator.rs`); the Job judging on the round's
/// eval images (`workers/trainer/src/dataset.rs`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark of retraining (its outcome depends on learning): scripts/bench-tuning-loop"]
async fn after_drift_the_loop_retrains_on_the_new_scene_and_serves_only_a_better_model() {
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
    let (day, zoomed) = (h264_clip(dir.path(), SCENE_FRAMES), zoomed_out(dir.path()));
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
            // A round of 80 + 40 images: of 40 + 20, iteration 2 trained with the defaults was ahead
            // by about 0.01 mAP, and 20 eval images could not support that (a bound of -0.004 in
            // one run); on the same change played offline, 80 + 40 took the bound from +0.001 to
            // +0.008 (bench-results/tuning-loop-retrain.json).
            "dataset": { "trainSize": 80, "evalSize": 40 },
            "training": {
                "student": { "uri": model("ssd_mobilenet_v2_coco_raw.onnx"), "family": "ssdRaw" },
                // The default training (most layers, 2 epochs from 1e-4, the weight average):
                // the heads alone for 8 epochs at 1e-3, which this test trained before, did worse
                // on the new scene against its ground truth (AP@0.5 +0.001 against +0.011).
                "minTrainSize": 10,
            },
            "inference": { "maxFramesPerSecond": 2 },
            "drift": { "checkInterval": "10s", "sampleSize": 16, "minRelativeAccuracy": THRESHOLD, "maxDatasetSize": 80 },
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
    let served = lp.status().await.current_model.unwrap();
    assert_learned(&served);
    // The same scene: the checks hold and the loop keeps monitoring.
    let mut same = Vec::new();
    let mut last = None;
    for _ in 0..SAME_SCENE_CHECKS {
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
    let switched_at = k8s_openapi::jiff::Timestamp::now();
    let mut after = Vec::new();
    while lp.status().await.phase == Some(Phase::Monitoring) {
        // The first check can come before a sample of the new scene is labelled (checks run
        // every 10 s, the teacher's labels lag): drift must show in the 3 checks after it.
        assert!(
            after.len() < 4,
            "no drift within 3 checks after the first one since the switch: {after:.2?}"
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

    // Round 2: drift starts a new round at the time of the check that saw it, and counts only
    // the frames decoded since; iteration 2 trains once it has 80 of its own, from iteration 1
    // (on the latest 80: `maxDatasetSize` equals `trainSize` here to keep the test short; by
    // default older images stay in).
    let status = lp
        .until("drift starts a round", Duration::from_secs(30), |s| {
            (s.phase == Some(Phase::Retraining)).then(|| s.clone())
        })
        .await;
    let round_started_at = status
        .dataset
        .as_ref()
        .and_then(|d| d.round_started_at.clone())
        .expect("drift starts a round");
    // It starts at a check after the switch (second precision, as the API server stores times).
    let last_check = last.as_ref().expect("checks after the switch");
    assert!(
        round_started_at.0.as_second() >= switched_at.as_second() && round_started_at.0 <= last_check.time.0,
        "{round_started_at:?} is not a check after the switch at {switched_at}: {last_check:?}"
    );
    let drift = status
        .conditions
        .iter()
        .find(|c| c.type_ == "DriftDetected")
        .unwrap();
    assert_eq!(drift.status, "True", "{drift:?}");
    stage("round 2 started");
    let second = lp.train(2).await;
    let round = lp.status().await.dataset.unwrap().round.unwrap();
    assert_eq!(round.since, round_started_at, "{round:?}");
    assert!(
        round.train >= 80 && round.eval >= 1,
        "the round collected its own images: {round:?}"
    );
    assert_eq!(
        second.round_started_at.as_ref(),
        Some(&round_started_at),
        "the Job judges on the round's eval images"
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
    // Judged against iteration 1 on the same eval split, the new scene's frames only.
    let candidate = promoted.candidate_model.clone().expect("iteration 2 reported");
    let baseline = candidate
        .baseline_map
        .expect("the baseline scored on the same split");
    eprintln!(
        "iteration 2: mAP {:.3} against iteration 1's {baseline:.3} on the round's eval images (gain's lower bound {:?})",
        candidate.map, candidate.map_gain_lower_bound
    );
    assert_learned(&candidate);
    if current.version == 2 {
        // Ahead there, so promoted: its checks on the zoomed-out scene are back above the
        // threshold.
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
        // rollback margin (0.2), so it stays ...
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
    } else {
        // Not supported as ahead (runs with smaller rounds or the heads alone: see
        // bench-results/tuning-loop-retrain.json), so rejected: iteration 1
        // serves on. The check that started the round does not start another on the frames it
        // trained on; the next one, of the same changed scene, does, counted from its own time,
        // so no Job trains at once.
        assert_eq!(current.version, 1, "{promoted:#?}");
        // Rejected by the gate's rule: the gain its eval images support (the bootstrap's lower
        // bound) is under the spec's minImprovement (0), whatever the mean gain (a run with the
        // default training was ahead by 0.008 with a bound of -0.004).
        assert!(
            promotion::supported_gain(candidate.map - baseline, candidate.map_gain_lower_bound) < 0.0,
            "{promoted:#?}"
        );
        let again = lp
            .until(
                "a newer check starts another round",
                Duration::from_secs(120),
                |s| {
                    let started = s.dataset.as_ref()?.round_started_at.clone()?;
                    (s.phase == Some(Phase::Retraining) && started.0 > round_started_at.0).then(|| s.clone())
                },
            )
            .await;
        let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns);
        assert!(
            jobs.get_opt(&format!("{NAME}-train-3")).await.unwrap().is_none(),
            "the new round has collected nothing yet: {again:#?}"
        );
        eprintln!(
            "iteration 2 rejected; a newer check ({:.2}) started another round",
            again.last_drift_check.unwrap().relative_accuracy
        );
    }

    drop(camera);
    op.task.abort();
}

//! The drift check on real footage: vtest.avi's first 400 frames (PETS09) and then the same
//! place with the camera zoomed out to half the scale, as one stream. The real capture binary
//! selects frames and has the real annotator (YOLOv12n over HTTP) label them, every selected
//! frame a drift sample; then every check the capture worker would have made is replayed in the order the
//! samples were stored, each over the `sampleSize` samples before it. The promoted model is the
//! off-the-shelf student, its reference its AP@0.5 on the day's samples (a check measures
//! whichever model serves; how well one trains is a benchmark's subject, not this test's). A
//! worse candidate, made so on purpose (the student with its boxes moved off their objects), is
//! then caught in its probation, on the same samples as the model it replaced, and the
//! operator's plan rolls it back. Nothing here depends on training.
//!
//! What is played: the clock. Checks run every `drift.checkInterval` in the worker; here they
//! run back to back over the windows of samples the worker would have seen.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use autotuner_api::CameraTuning;
use autotuner_api::contract::{self, OPERATOR_FIELD_MANAGER};
use autotuner_capture::drift::{DriftChecker, DriftSettings, Samples, Scored};
use autotuner_detect::{Family, Runtime};
use autotuner_operator::plan;
use autotuner_tests::workers::{tuning_with_worker_identity, worker_kubeconfig};
use autotuner_tests::{Options, install_crd, shared, test_namespace, wait_for};
use common::{Annotator, Process, assets, capture_in_cluster, free_port, h264_clip, rtsp_server};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// The first [`DAY_FRAMES`] frames of vtest.avi, then its first 300 as if the camera had zoomed
/// out to half the scale (the people a quarter of their area), as one H.264 file: the same place,
/// another view. The teacher (YOLOv12n at 640 on the crops) still finds them; the student (SSD at
/// 300x300 on the frame) loses most of them.
fn day_then_zoomed_out(dir: &Path) -> PathBuf {
    common::encode_vtest(
        dir,
        "day-then-zoomed-out.mkv",
        &[
            "-filter_complex",
            &format!(
                "[0:v]split[d][z];[d]trim=end_frame={DAY_FRAMES}[day];\
                 [z]trim=end_frame=300,setpts=PTS-STARTPTS,scale=384:288,pad=768:576:192:144:gray[zoomed];\
                 [day][zoomed]concat=n=2:v=1[out]"
            ),
            "-map",
            "[out]",
        ],
    )
}

/// Frames of the scene before the change: about 100 drift samples, 11 checks of 16.
const DAY_FRAMES: u64 = 400;

#[test]
fn the_check_holds_on_the_same_scene_falls_after_a_change_and_catches_a_worse_model() {
    let dir = tempfile::tempdir().unwrap();
    let clip = day_then_zoomed_out(dir.path());
    let annotator_port = free_port();
    let _annotator = Annotator::start(annotator_port);
    let data = dir.path().join("data");
    // Every fourth frame examined and every selected frame a drift sample: nothing here trains,
    // so the teacher labels drift samples only.
    let out = Command::new(env!("CARGO_BIN_EXE_capture"))
        .arg("--url")
        .arg(&clip)
        .args(["--annotator-url", &format!("http://127.0.0.1:{annotator_port}")])
        .arg("--dataset")
        .arg(&data)
        .args(["--frame-step", "4", "--drift-every", "1"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let runtime = Runtime::load(&assets().join("libonnxruntime.so")).unwrap();
    let settings = DriftSettings {
        interval: std::time::Duration::from_secs(60),
        sample_size: 16,
        probation_checks: 1,
    };
    let checker = DriftChecker::new(settings.clone(), runtime, Family::SsdRaw, data.clone());
    let coco: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("drift/annotations.json")).unwrap()).unwrap();
    let frames: Vec<u64> = coco["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sample"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    let switch = frames
        .iter()
        .position(|&f| f >= DAY_FRAMES)
        .expect("samples after the switch");

    // The promoted model and its reference: what a promotion records, its AP@0.5 on the scene it
    // was judged on (here every sample of the day).
    let day = Samples::stored_before(&data, switch, switch).unwrap();
    let unscaled = Scored {
        version: 1,
        path: common::student(),
        reference_ap50: Some(1.0),
    };
    let reference = checker.check_on(&day, &unscaled, None).unwrap().ap50;
    assert!(
        reference > 0.2,
        "the student finds the day's people: AP@0.5 {reference}"
    );
    let promoted = Scored {
        reference_ap50: Some(reference),
        ..unscaled
    };

    // The checks, over the drift samples in the order they were stored: each over the 16
    // before it, one every 8 samples.
    let window = settings.sample_size;
    let (mut same, mut after) = (Vec::new(), Vec::new());
    let mut end = window;
    while end <= frames.len() {
        let samples = Samples::stored_before(&data, end, window).unwrap();
        let checked = checker.check_on(&samples, &promoted, None).unwrap();
        if end <= switch {
            same.push(checked.relative_accuracy);
        } else {
            after.push(checked.relative_accuracy);
        }
        end += window / 2;
    }
    // Between the measured figures of this footage (deterministic: the same frames, labels and
    // model every run): the checks of the same scene 0.91-1.11 of the reference; after the
    // switch 1.05 (still mostly day samples), then 0.50, 0.28, 0.21 (the zoomed-out view's later
    // frames, with fewer people, rise to 0.5-0.63: only the first three after it are asserted).
    let threshold = 0.6;
    eprintln!("promoted AP@0.5 {reference:.3}; same scene {same:.2?}; after the switch {after:.2?}");
    assert!(same.len() >= 10, "{} checks of the same scene", same.len());
    assert!(
        same.iter().all(|&r| r >= threshold),
        "no drift on the same scene: {same:.2?}"
    );
    assert!(
        after.iter().take(3).any(|&r| r < threshold),
        "drift within 3 checks of the switch: {after:.2?}"
    );

    // A worse candidate: its boxes are off their objects. Promoted over the student, its first
    // check (the latest day samples, both models on the same ones) falls far behind, and the
    // operator's plan rolls it back.
    let bad = Scored {
        version: 2,
        path: common::student_with_misplaced_boxes(&dir.path().join("misplaced.onnx")),
        reference_ap50: Some(reference),
    };
    let day_samples = Samples::stored_before(&data, switch, window).unwrap();
    let checked = checker.check_on(&day_samples, &bad, Some(&promoted)).unwrap();
    let previous = checked
        .previous_ap50
        .expect("the previous model scored in probation");
    eprintln!("probation: candidate {:.3}, previous {previous:.3}", checked.ap50);
    assert!(previous - checked.ap50 > 0.05, "{checked:?}");
    // `probationChecks` (1 here) checks of a version score the previous model; the next does not.
    assert!(
        checker.on_probation(3),
        "a version not checked yet is on probation"
    );
    let after_probation = checker.check_on(&day_samples, &bad, Some(&promoted)).unwrap();
    assert_eq!(after_probation.previous_ap50, None, "{after_probation:?}");
    assert!(!checker.on_probation(2));
    let status = json!({
        "phase": "Monitoring", "iteration": 2,
        "currentModel": { "version": 2, "uri": "file:///m/2.onnx", "map": 0.3, "map50": reference },
        "previousModel": { "version": 1, "uri": "file:///m/1.onnx", "map": 0.3, "map50": reference },
        "inference": { "model": { "version": 2, "uri": "file:///m/2.onnx", "since": "2026-11-29T10:00:00Z" } },
        "lastDriftCheck": autotuner_capture::cluster::drift_check_status(&checked),
    });
    let tuning: CameraTuning = serde_json::from_value(json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "metadata": { "name": "gate", "namespace": "cams", "uid": "u-1", "generation": 1 },
        "spec": {
            "camera": { "url": "rtsp://cam/stream", "nodeName": "edge-1" }, "classes": ["person"],
            "annotation": { "teacher": { "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" } } },
            "training": { "student": { "uri": "file:///m/ssd.onnx", "family": "ssdRaw" } },
        },
        "status": status,
    }))
    .unwrap();
    let planned = plan::plan(
        &tuning,
        &plan::Observed::default(),
        k8s_openapi::jiff::Timestamp::now(),
        &autotuner_operator::Config::default(),
    )
    .unwrap();
    assert_eq!(planned.notes[0].reason, "ModelRolledBack", "{:?}", planned.notes);
    assert_eq!(planned.status.current_model.unwrap().version, 1);
}

/// The worker's own loop, in a cluster: against the real API server as the CameraTuning's worker
/// identity, on an RTSP camera (GStreamer's server playing vtest.avi) with the real annotator,
/// the promoted model is checked every `drift.checkInterval` on the latest drift samples, the
/// model it replaced is scored beside it during its probation, and the result is in
/// `status.lastDriftCheck` (under the worker's field manager) and on `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn in_a_cluster_the_worker_checks_the_promoted_model_and_reports_it() {
    let plane = shared(Options::default()).await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "drift").await.unwrap();
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), &ns);
    let dir = tempfile::tempdir().unwrap();
    let (rtsp_port, annotator_port, http_port) = (free_port(), free_port(), free_port());
    let clip = h264_clip(dir.path(), 795);
    let _camera = rtsp_server(&clip, rtsp_port, None);
    let _annotator = tokio::task::spawn_blocking(move || Annotator::start(annotator_port))
        .await
        .unwrap();
    let student = assets().join("models/ssd_mobilenet_v2_coco_raw.onnx");
    let promoted = dir.path().join("1.onnx");
    std::fs::copy(&student, &promoted).unwrap();
    let (_, account) = tuning_with_worker_identity(&admin, &ns, "gate", None, |t| {
        t.spec.camera.url = format!("rtsp://127.0.0.1:{rtsp_port}/live");
        t.spec.training.student.uri = format!("file://{}", student.display());
        t.spec.sampling.max_uploads_per_minute = 240;
        t.spec.drift.check_interval = "10s".into();
        t.spec.drift.sample_size = 6;
        t.spec.inference.max_frames_per_second = Some(2.0);
        // Every check of this test is on probation, however many run before the drift samples
        // reach `sampleSize` (more on a loaded machine: checks come by the clock, samples by the
        // teacher's pace). Probation's end by count: the_check_holds_on_the_same_scene_falls_...
        t.spec.rollout.probation_checks = 100;
    })
    .await;
    // The operator's promotion: iteration 1 current, the off-the-shelf student kept behind it.
    let status = json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "status": {
            "currentModel": { "version": 1, "uri": format!("file://{}", promoted.display()), "map": 0.3, "map50": 0.7 },
            "previousModel": { "version": 0, "uri": format!("file://{}", student.display()), "map": 0.28, "map50": 0.74 },
        },
    });
    tunings
        .patch_status(
            "gate",
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let kubeconfig = worker_kubeconfig(plane, &ns, &account, dir.path()).await;
    let _capture = Process(
        capture_in_cluster(&kubeconfig, &ns, "gate", annotator_port, dir.path())
            .args(["--metrics-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--drift-every", "2", "--inference-threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Early checks score the few samples there are; once there are more, `sampleSize` of them.
    let check = wait_for(Duration::from_secs(180), || async {
        let t = tunings.get("gate").await.ok()?;
        let check = t.status?.last_drift_check?;
        assert!(
            check.sample_size.is_some_and(|n| (1..=6).contains(&n)),
            "{check:?}"
        );
        (check.model_version == Some(1) && check.sample_size == Some(6)).then_some(check)
    })
    .await
    .expect("status.lastDriftCheck of iteration 1 on 6 samples");
    let ap50 = check.ap50.unwrap();
    assert!((0.0..=1.0).contains(&ap50), "{check:?}");
    assert!((check.relative_accuracy - ap50 / 0.7).abs() < 1e-6, "{check:?}");
    // Iteration 1 is a copy of the student: the same score, on the same samples.
    let previous = check
        .previous_model_ap50
        .expect("the previous model scored during probation");
    assert!((previous - ap50).abs() < 1e-9, "{check:?}");
    let fresh = tunings.get("gate").await.unwrap();
    let owner = fresh
        .managed_fields()
        .iter()
        .find(|m| {
            m.subresource.as_deref() == Some("status")
                && m.manager.as_deref() == Some(contract::CAPTURE_FIELD_MANAGER)
        })
        .and_then(|m| m.fields_v1.as_ref())
        .map(|f| f.0.to_string())
        .unwrap_or_default();
    assert!(owner.contains("lastDriftCheck"), "{owner}");
    let metrics = common::http_get(http_port, "/metrics");
    assert!(
        metrics.contains("autotuner_drift_checks_total{outcome=\"checked\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("autotuner_drift_relative_accuracy "),
        "{metrics}"
    );
}

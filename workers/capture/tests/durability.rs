//! The spool's promise: an annotator that goes away mid-run, and a capture process killed mid-run
//! and started again, lose nothing and duplicate nothing. The capture worker is the real binary;
//! the annotator is the real HTTP service (the annotator crate's router around the real teacher,
//! YOLOv12n on ONNX Runtime), started, stopped and restarted in this process.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Annotator, assets, free_port, wait_until};

fn capture(dataset: &Path, port: u16, max_frames: u32) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capture"));
    c.arg("--url")
        .arg(assets().join("vtest.avi"))
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--max-frames",
            &max_frames.to_string(),
        ])
        .arg("--annotator-url")
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--dataset")
        .arg(dataset)
        .args(["--drift-every", "5"])
        .env("RUST_LOG", "warn");
    c
}

fn sample_ids(dataset: &Path) -> Vec<String> {
    split_ids(dataset, &["train", "eval", "drift"])
}

fn split_ids(dataset: &Path, splits: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for split in splits {
        // With its journal, as every reader of a split takes it (a killed capture leaves one).
        let Some(coco) =
            autotuner_store::journal::read(&dataset.join(split).join("annotations.json")).unwrap()
        else {
            continue;
        };
        for image in coco["images"].as_array().unwrap() {
            ids.push(image["sample"].as_str().unwrap().to_string());
            assert!(
                dataset
                    .join(split)
                    .join(image["file_name"].as_str().unwrap())
                    .exists()
            );
        }
    }
    ids
}

fn spooled(dataset: &Path) -> usize {
    std::fs::read_dir(dataset.join("spool"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".entry"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn an_annotator_outage_and_a_killed_capture_lose_nothing_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("dataset");
    let port = free_port();
    let annotator = Annotator::start(port);

    let mut first = capture(&dataset, port, 48).stdout(Stdio::null()).spawn().unwrap();
    wait_until("some frames are labelled", Duration::from_secs(120), || {
        sample_ids(&dataset).len() >= 4
    });
    // The annotator goes away: selection goes on into the spool.
    drop(annotator);
    let labelled_before_outage = sample_ids(&dataset).len();
    wait_until("frames pile up in the spool", Duration::from_secs(60), || {
        spooled(&dataset) >= 8
    });
    // And the capture process dies without warning.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(spooled(&dataset) >= 8);
    assert!(
        sample_ids(&dataset).len() < labelled_before_outage + 2,
        "nothing labelled while it was away"
    );

    let _annotator = Annotator::start(port);
    let out = capture(&dataset, port, 48).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();

    let ids = sample_ids(&dataset);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a sample stored twice");
    // The second run examined the file from its start: every frame it selected is stored, once.
    let selected = summary["framesSelected"].as_u64().unwrap() as usize;
    assert!(selected >= 40, "{summary}");
    assert_eq!(ids.len(), selected, "{summary}");
    assert_eq!(spooled(&dataset), 0, "the spool is drained");
    // Every 5th selected frame is a drift sample: labelled, kept apart from training.
    let drift = split_ids(&dataset, &["drift"]).len();
    assert_eq!(
        drift as u64,
        summary["driftSamples"].as_u64().unwrap(),
        "{summary}"
    );
    assert_eq!(drift, selected / 5, "{summary}");
    assert_eq!(summary["spoolDropped"], 0);
}

#[test]
fn sigterm_stores_the_batch_in_hand_and_exits_cleanly_leaving_the_rest_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("dataset");
    let port = free_port();
    let _annotator = Annotator::start(port);
    let child = capture(&dataset, port, 400)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("some frames are labelled", Duration::from_secs(120), || {
        sample_ids(&dataset).len() >= 2
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "a clean exit on SIGTERM");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = sample_ids(&dataset).len() as u64;
    // Nothing selected is lost: either stored or still spooled for the next start.
    assert_eq!(
        stored + spooled(&dataset) as u64,
        summary["framesSelected"].as_u64().unwrap(),
        "{summary}"
    );
    assert!(
        summary["framesDecoded"].as_u64().unwrap() < 400,
        "it stopped early: {summary}"
    );
}

#[test]
fn an_annotator_that_refuses_the_credentials_keeps_the_frames_spooled_instead_of_dropping_them() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("dataset");
    let port = free_port();
    // The annotator wants a token this worker does not have (a rotated Secret): 401.
    let _annotator = Annotator::start_with_token(port, Some("rotated"));
    let child = capture(&dataset, port, 20)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the selected frames are spooled", Duration::from_secs(60), || {
        spooled(&dataset) >= 15
    });
    std::thread::sleep(Duration::from_secs(2));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["spoolDropped"], 0, "{summary}");
    assert_eq!(sample_ids(&dataset).len(), 0);
    assert_eq!(
        spooled(&dataset) as u64,
        summary["framesSelected"].as_u64().unwrap(),
        "{summary}"
    );
}

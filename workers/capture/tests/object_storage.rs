//! The dataset in object storage: the capture worker writes it to a real S3 server (gofakes3),
//! and a restarted pod on a fresh disk continues it without duplicating a sample.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use autotuner_tests::workers::S3Server;
use common::{Annotator, Process, assets, free_port, http_get, metric, wait_until};

fn capture(uri: &str, s3: &S3Server, port: u16, work: &Path, flags: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_capture"))
        .args(flags)
        .arg("--url")
        .arg(assets().join("vtest.avi"))
        .args([
            "--max-frames",
            "24",
            "--metrics-listen",
            "127.0.0.1:0",
            "--dataset",
            uri,
        ])
        .arg("--annotator-url")
        .arg(format!("http://127.0.0.1:{port}"))
        .env(autotuner_api::contract::ENV_S3_ENDPOINT, &s3.endpoint)
        .env(autotuner_api::contract::ENV_AWS_ACCESS_KEY_ID, "test")
        .env(autotuner_api::contract::ENV_AWS_SECRET_ACCESS_KEY, "test-secret")
        .env(autotuner_api::contract::ENV_WORK_DIR, work)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_dataset_goes_to_s3_and_a_pod_on_a_fresh_disk_continues_it() {
    let s3 = S3Server::start("datasets");
    let port = free_port();
    let _annotator = Annotator::start(port);
    let dir = tempfile::tempdir().unwrap();
    let uri = "s3://datasets/site/hall";

    let first = capture(uri, &s3, port, &dir.path().join("pod-1"), &[]);
    let selected = first["framesSelected"].as_u64().unwrap();
    assert!(selected >= 20, "{first}");
    let (code, body) = s3.get("/datasets/site/hall/train/annotations.json");
    assert_eq!(code, 200);
    let coco: Value = serde_json::from_slice(&body).unwrap();
    let images = coco["images"].as_array().unwrap();
    assert_eq!(
        images.len() as u64,
        selected,
        "every selected frame is in the store"
    );
    for image in images {
        let name = image["file_name"].as_str().unwrap();
        let (code, jpeg) = s3.get(&format!("/datasets/site/hall/train/{name}"));
        assert_eq!(code, 200, "{name}");
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "{name} is a JPEG");
    }
    assert!(
        !dir.path()
            .join("pod-1/dataset/train/images")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "stored images leave the working copy"
    );

    // A new pod, a new disk: it learns what the store has and adds nothing twice.
    let second = capture(uri, &s3, port, &dir.path().join("pod-2"), &[]);
    assert_eq!(second["trainImages"].as_u64().unwrap(), selected, "{second}");
    let (_, body) = s3.get("/datasets/site/hall/train/annotations.json");
    let again: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(again["images"], coco["images"]);

    // A rolling dataset (as in a cluster) of 10 training images: the newest replace the oldest,
    // in the store too, where the replaced images are deleted.
    let rolling = [
        "--rolling-drift-samples",
        "5",
        "--train-size",
        "10",
        "--split-block-seconds",
        "1000",
    ];
    let fresh = "s3://datasets/site/lobby";
    capture(fresh, &s3, port, &dir.path().join("pod-3"), &rolling);
    let (_, body) = s3.get("/datasets/site/lobby/train/annotations.json");
    let kept: Value = serde_json::from_slice(&body).unwrap();
    let kept = kept["images"].as_array().unwrap();
    assert_eq!(kept.len(), 10);
    assert!(
        kept[0]["id"].as_u64().unwrap() > 10,
        "the oldest were replaced: {kept:?}"
    );
    for image in kept {
        let name = image["file_name"].as_str().unwrap();
        assert_eq!(
            s3.get(&format!("/datasets/site/lobby/train/{name}")).0,
            200,
            "{name}"
        );
    }
    let oldest = images[0]["file_name"].as_str().unwrap();
    assert_eq!(
        s3.get(&format!("/datasets/site/lobby/train/{oldest}")).0,
        404,
        "{oldest} was replaced and deleted"
    );
}

#[test]
fn images_are_counted_only_once_object_storage_holds_them() {
    // The store is up while capture starts (it continues what the store holds), then goes down:
    // capture labels and flushes to its working copy, and its uploads fail. The count the status
    // reports (and a Job starts on) is the store's: nothing yet.
    let s3_port = free_port();
    let s3 = S3Server::start_on("datasets", s3_port);
    let port = free_port();
    let _annotator = Annotator::start(port);
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_capture"))
        .arg("--url")
        .arg(assets().join("vtest.avi"))
        .args(["--max-frames", "24", "--dataset", "s3://datasets/site/gate"])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--annotator-url")
        .arg(format!("http://127.0.0.1:{port}"))
        .env(autotuner_api::contract::ENV_S3_ENDPOINT, &s3.endpoint)
        .env(autotuner_api::contract::ENV_AWS_ACCESS_KEY_ID, "test")
        .env(autotuner_api::contract::ENV_AWS_SECRET_ACCESS_KEY, "test-secret")
        .env(autotuner_api::contract::ENV_WORK_DIR, dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("capture.log")).unwrap())
        .spawn()
        .unwrap();
    let mut capture = Process(child);
    let scrape = || {
        std::net::TcpStream::connect(("127.0.0.1", metrics_port))
            .map(|_| http_get(metrics_port, "/metrics"))
            .unwrap_or_default()
    };
    let train_images = "autotuner_capture_dataset_images{split=\"train\"}";
    // The gauge appears once the dataset is open, after what the store held was read back; the
    // first batch is labelled seconds later.
    wait_until("the dataset is open", Duration::from_secs(60), || {
        scrape().contains(train_images)
    });
    drop(s3);
    let mut seen = String::new();
    wait_until(
        "a batch is labelled and its upload failed",
        Duration::from_secs(120),
        || {
            seen = scrape();
            metric(&seen, "autotuner_capture_annotated_total") > 0.0
                && metric(&seen, "autotuner_capture_annotate_errors_total{kind=\"store\"}") > 0.0
        },
    );
    assert_eq!(
        metric(&seen, train_images),
        0.0,
        "counted before the store held it:\n{seen}"
    );
    assert_eq!(
        metric(
            &seen,
            "autotuner_capture_dataset_images_stored_total{split=\"train\"}"
        ),
        0.0,
        "{seen}"
    );

    // The store is back (empty: gofakes3 keeps it in memory): the spooled batches go, and only
    // then are they counted.
    let s3 = S3Server::start_on("datasets", s3_port);
    let mut status = None;
    wait_until("capture ends", Duration::from_secs(120), || {
        status = capture.0.try_wait().unwrap();
        status.is_some()
    });
    let log = std::fs::read_to_string(dir.path().join("capture.log")).unwrap();
    assert!(status.unwrap().success(), "{log}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut capture.0.stdout.take().unwrap(), &mut stdout).unwrap();
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    let selected = summary["framesSelected"].as_u64().unwrap();
    assert!(selected > 0, "{summary}");
    assert_eq!(summary["trainImages"].as_u64().unwrap(), selected, "{summary}");
    let (code, body) = s3.get("/datasets/site/gate/train/annotations.json");
    assert_eq!(code, 200, "{log}");
    let coco: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(coco["images"].as_array().unwrap().len() as u64, selected);
}

/// The environment of [`journal_segments_body`]: the S3 server's URL. Private to that test and
/// its child process, not configuration (hence not in `autotuner_api::contract`).
const TEST_S3_ENDPOINT: &str = "OBJECT_STORAGE_TEST_S3_ENDPOINT";

#[test]
fn each_batch_puts_its_own_journal_segment_and_a_file_put_whole_deletes_those_it_holds() {
    // The object store client takes its credentials from the environment only (as a pod's
    // Secret gives them): the body runs in this test binary again, with them set.
    let s3 = S3Server::start("datasets");
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "journal_segments_body", "--ignored", "--nocapture"])
        .env(TEST_S3_ENDPOINT, &s3.endpoint)
        .env(autotuner_api::contract::ENV_AWS_ACCESS_KEY_ID, "test")
        .env(autotuner_api::contract::ENV_AWS_SECRET_ACCESS_KEY, "test-secret")
        .status()
        .unwrap();
    assert!(status.success(), "the body failed: {status}");
    // Never the journal whole: an earlier version's object is all that key ever held.
    let (code, _) = s3.get("/datasets/site/hall/train/annotations.jsonl");
    assert_eq!(code, 404);
}

#[tokio::test]
#[ignore = "run with S3 credentials by each_batch_puts_its_own_journal_segment_and_a_file_put_whole_deletes_those_it_holds"]
async fn journal_segments_body() {
    use autotuner_capture::dataset::{Dataset, DatasetConfig, LabelBox, Sample, Split};
    use autotuner_capture::remote::{self, Unsent, Uploaded};
    use autotuner_store::{Location, S3Options};

    let endpoint = std::env::var(TEST_S3_ENDPOINT).expect("run by the outer test");
    let remote = Location::parse(
        "s3://datasets/site/hall",
        &S3Options {
            endpoint: Some(endpoint),
            region: None,
        },
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = DatasetConfig {
        train_size: 100_000,
        ..DatasetConfig::default()
    };
    let classes = vec![(1, "person".to_string())];
    let labels = [LabelBox {
        class: "person".into(),
        bbox: [10.0, 20.0, 30.0, 80.0],
        score: 0.9,
    }];
    // Stores samples `range` in batches of eight, each uploaded as the capture worker does.
    let store = |dataset: &mut Dataset, range: std::ops::Range<usize>| {
        let mut batches = Vec::new();
        for first in range.step_by(8) {
            let mut stored = Vec::new();
            for i in first..first + 8 {
                let id = format!("f{i:08}");
                let sample = Sample {
                    id: &id,
                    time_ms: 0,
                    decoded_at_ms: i as u64,
                    width: 64,
                    height: 48,
                    jpeg: b"jpeg",
                    labels: &labels,
                    unlabelled: &[],
                };
                dataset.add(&sample, false).unwrap();
                stored.push((Split::Train, id));
            }
            let mut unsent = Unsent::default();
            unsent.add(stored, dataset.flush().unwrap());
            batches.push(unsent);
        }
        batches
    };
    let upload = async |dir: &Path, batches: Vec<Unsent>| {
        let mut uploads = Vec::new();
        for unsent in batches {
            uploads.push(remote::upload(&remote, dir, &unsent).await.unwrap());
        }
        uploads
    };

    let pod_1 = work.path().join("pod-1");
    let mut dataset = Dataset::open(&pod_1, config.clone(), classes.clone()).unwrap();
    let batches = store(&mut dataset, 0..600);
    let uploads: Vec<Uploaded> = upload(&pod_1, batches).await;
    assert!(uploads.iter().all(|u| u.images == 8));
    // Under 256 images the file goes whole each time; then a batch is one segment of its own
    // eight entries, the same size at 300 images as at 600, until the file is rewritten (504
    // images), which deletes the segments it holds.
    let (small, large) = uploads.split_at(31);
    assert!(small.iter().all(|u| (u.files, u.segments) == (1, 0)), "{small:?}");
    let rewrites: Vec<usize> = (31..uploads.len()).filter(|&i| uploads[i].files == 1).collect();
    assert_eq!(rewrites, [62], "{large:?}");
    assert_eq!(
        uploads[62].compacted,
        62 - 31,
        "the segments since the last rewrite"
    );
    let segment_bytes: Vec<usize> = large
        .iter()
        .filter(|u| u.files == 0)
        .map(|u| u.segment_bytes)
        .collect();
    assert!(large.iter().filter(|u| u.files == 0).all(|u| u.segments == 1));
    let (least, most) = (
        segment_bytes.iter().min().unwrap(),
        segment_bytes.iter().max().unwrap(),
    );
    assert!(
        most - least <= 16,
        "a batch's cost does not grow: {least}..{most} bytes"
    );

    // A reader (the trainer's mirror) sees every sample, images included.
    let mirror = work.path().join("mirror");
    let mirrored = remote
        .mirror_dataset(&["train/annotations.json"], &mirror)
        .await
        .unwrap();
    assert_eq!((mirrored.images_fetched, mirrored.images_missing), (600, 0));
    let ids = |path: &Path| -> Vec<u64> {
        let coco: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        coco["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        ids(&mirror.join("train/annotations.json")),
        (1..=600).collect::<Vec<_>>()
    );

    // A pod on a fresh disk continues the dataset: nothing lost, ids go on.
    let pod_2 = work.path().join("pod-2");
    remote::restore(&remote, &pod_2).await.unwrap();
    let mut dataset = Dataset::open(&pod_2, config, classes).unwrap();
    assert_eq!(
        (dataset.len(Split::Train), dataset.stored(Split::Train)),
        (600, 600)
    );
    let batches = store(&mut dataset, 600..608);
    upload(&pod_2, batches).await;
    remote
        .mirror_dataset(&["train/annotations.json"], &mirror)
        .await
        .unwrap();
    assert_eq!(
        ids(&mirror.join("train/annotations.json")),
        (1..=608).collect::<Vec<_>>()
    );
}

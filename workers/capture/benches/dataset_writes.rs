//! What storing a labelled batch costs as a split grows: 10,000 samples stored in batches of 8
//! (three boxes and two ignore regions each, as the capture worker stores them), each batch's
//! `flush` timed. Beside it, at the same sizes, the cost of writing the split's file whole, which
//! is what every batch cost before the journal (`autotuner_store::journal`). And what each batch
//! puts in object storage: the file when it was written whole, else the batch's journal segment;
//! beside it what was put before segments (the journal object whole, after every batch). Images
//! are a few bytes here: their writes do not depend on the split's size. Writes
//! bench-results/dataset-writes.json.
//!
//!     cargo bench -p autotuner-capture --bench dataset_writes

use std::path::Path;
use std::time::Instant;

use autotuner_capture::dataset::{Dataset, DatasetConfig, LabelBox, Sample, Split, StoreWrite};
use autotuner_vision::Rect;

const SAMPLES: usize = 10_000;
const BATCH: usize = 8;

fn labels(i: usize) -> Vec<LabelBox> {
    (0..3)
        .map(|k| {
            let x = (i * 7 + k * 90) as f32 % 600.0;
            LabelBox {
                class: "person".into(),
                bbox: [x, 100.0 + k as f32, x + 40.0, 200.5],
                score: 0.5 + 0.1 * k as f32,
            }
        })
        .collect()
}

/// Stores sample `i` as the capture worker would: three boxes, two ignore regions.
fn add(dataset: &mut Dataset, i: usize) {
    let id = format!("f{i:08}");
    let labels = labels(i);
    let unlabelled = [Rect::new(0, 0, 100, 576), Rect::new(600, 0, 168, 576)];
    let sample = Sample {
        id: &id,
        time_ms: 0,
        decoded_at_ms: i as u64,
        width: 768,
        height: 576,
        jpeg: b"jpeg",
        labels: &labels,
        unlabelled: &unlabelled,
    };
    dataset.add(&sample, false).unwrap();
}

/// Median and largest of `values`, in milliseconds.
fn spread(values: &mut [f64]) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    serde_json::json!({
        "medianMs": (values[values.len() / 2] * 1e3 * 1000.0).round() / 1000.0,
        "maxMs": (values[values.len() - 1] * 1e3 * 1000.0).round() / 1000.0,
    })
}

/// VmHWM of /proc/self/status, in MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let config = DatasetConfig {
        train_size: SAMPLES * 2,
        ..DatasetConfig::default()
    };
    let classes = vec![(1, "person".to_string())];
    let mut dataset = Dataset::open(dir.path(), config.clone(), classes.clone()).unwrap();
    // Seconds each flush took, by the split's size after it.
    let mut flushes: Vec<(usize, f64)> = Vec::new();
    let mut journal_bytes: Vec<(usize, u64)> = Vec::new();
    // Bytes each batch puts in object storage, now (segments) and before (the journal whole).
    let mut put_bytes: Vec<(usize, u64, u64)> = Vec::new();
    let journal = dir.path().join("train/annotations.jsonl");
    let file = dir.path().join("train/annotations.json");
    for i in 0..SAMPLES {
        add(&mut dataset, i);
        if (i + 1) % BATCH == 0 {
            let before = file_bytes(&journal);
            let started = Instant::now();
            let flushed = dataset.flush().unwrap();
            flushes.push((i + 1, started.elapsed().as_secs_f64()));
            journal_bytes.push((i + 1, file_bytes(&journal).saturating_sub(before)));
            let (segments, whole_journal) = match flushed.for_store.as_slice() {
                [StoreWrite::Whole { .. }] => (file_bytes(&file), file_bytes(&file)),
                [StoreWrite::Segment(s)] => (s.lines.len() as u64, file_bytes(&journal)),
                other => panic!("one split changed: {other:?}"),
            };
            put_bytes.push((i + 1, segments, whole_journal));
        }
    }
    assert_eq!(dataset.len(Split::Train), SAMPLES);
    // The process's peak so far: the split is held in memory as JSON, bounded by its size
    // (trainSize, evalSize, drift.maxDatasetSize), not by how long the capture runs.
    let peak_rss = peak_rss_mib();
    // The flushes of the 10 batches up to 100 images and of the last 10, and the mean of all
    // the second half's (the occasional whole rewrite included: the amortised cost).
    let near = |size: usize| -> Vec<f64> {
        flushes
            .iter()
            .filter(|(n, _)| *n <= size && *n + 10 * BATCH > size)
            .map(|(_, s)| *s)
            .collect()
    };
    let second_half: Vec<f64> = flushes
        .iter()
        .filter(|(n, _)| *n > SAMPLES / 2)
        .map(|(_, s)| *s)
        .collect();
    // A whole write leaves the journal as it was or empties it.
    let rewrites = journal_bytes.iter().filter(|(n, b)| *n > 256 && *b == 0).count();
    // Writing the file whole at 100 and at 10,000 images: what each batch cost before.
    let whole_at = |count: usize| -> Vec<f64> {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Dataset::open(dir.path(), config.clone(), classes.clone()).unwrap();
        (0..count - 10).for_each(|i| add(&mut d, i));
        // Ten batches of one more sample each, every one written whole.
        (count - 10..count)
            .map(|i| {
                add(&mut d, i);
                let started = Instant::now();
                d.write_whole().unwrap();
                started.elapsed().as_secs_f64()
            })
            .collect()
    };
    let mean = second_half.iter().sum::<f64>() / second_half.len() as f64;
    let put = |at: usize, pick: fn(&(usize, u64, u64)) -> u64| -> Vec<u64> {
        put_bytes
            .iter()
            .filter(|(n, ..)| *n <= at && *n + 10 * BATCH > at)
            .map(pick)
            .collect()
    };
    let mean_put = |pick: fn(&(usize, u64, u64)) -> u64| -> u64 {
        let half: Vec<u64> = put_bytes
            .iter()
            .filter(|(n, ..)| *n > SAMPLES / 2)
            .map(pick)
            .collect();
        half.iter().sum::<u64>() / half.len() as u64
    };
    let median = |mut v: Vec<u64>| {
        v.sort();
        v[v.len() / 2]
    };
    let object_storage = serde_json::json!({
        "what": "bytes a batch puts in object storage (the annotation file when written whole, else the batch's journal segment); before: the journal object put whole after every batch",
        "medianAt100Images": median(put(100, |p| p.1)),
        "medianAt10000Images": median(put(SAMPLES, |p| p.1)),
        "meanOfTheSecondHalf": mean_put(|p| p.1),
        "beforeMedianAt10000Images": median(put(SAMPLES, |p| p.2)),
        "beforeMeanOfTheSecondHalf": mean_put(|p| p.2),
    });
    dataset.write_whole().unwrap();
    let out = serde_json::json!({
        "command": "cargo bench -p autotuner-capture --bench dataset_writes",
        "machine": autotuner_vision::cpu_model(),
        "what": format!("{SAMPLES} samples stored in batches of {BATCH} (3 boxes and 2 ignore regions each); each batch's flush (annotations to the journal, or the file whole while the split is under 256 images and when the journal reaches half of it), an fsync each; beside it, the file written whole at the same size, which every batch cost before the journal"),
        "flushAt100Images": spread(&mut near(100)),
        "flushAt10000Images": spread(&mut near(SAMPLES)),
        "meanFlushOfTheSecondHalfMs": (mean * 1e6).round() / 1000.0,
        "journalBytesPerBatch": journal_bytes.last().map(|(_, b)| *b),
        "wholeRewritesAfter256Images": rewrites,
        "wholeFileAt100Images": spread(&mut whole_at(100)),
        "wholeFileAt10000Images": spread(&mut whole_at(SAMPLES)),
        "fileBytesAt10000Images": file_bytes(&file),
        "peakRssMiBWith10000Images": peak_rss,
        "objectStorageBytesPerBatch": object_storage,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-results/dataset-writes.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap() + "\n").unwrap();
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

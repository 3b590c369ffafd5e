//! A dataset's annotation file and its journal as the capture worker finds them on its volume at
//! start (written by an older version, edited, damaged, cut short by a crash): opening them and
//! storing a sample give a clear error or a valid COCO file, never a panic. With bit 16 of the
//! first byte set, the input is the file and the journal, split at the first 0xFF byte.
#![no_main]

use autotuner_capture::dataset::{Dataset, DatasetConfig, LabelBox, Rolling, Sample};
use autotuner_vision::Rect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let split = ["train", "eval", "drift"][selector as usize % 3];
    std::fs::create_dir_all(dir.path().join(split)).expect("the split's directory");
    let (file, journal) = match file.iter().position(|&b| b == 0xFF) {
        Some(at) if selector & 16 != 0 => (&file[..at], Some(&file[at + 1..])),
        _ => (file, None),
    };
    std::fs::write(dir.path().join(split).join("annotations.json"), file).expect("write the file");
    if let Some(journal) = journal {
        std::fs::write(dir.path().join(split).join("annotations.jsonl"), journal).expect("write the journal");
    }
    let config = DatasetConfig {
        rolling: (selector & 4 != 0).then_some(Rolling {
            train: 1,
            eval: 1,
            drift: 1,
        }),
        ..DatasetConfig::default()
    };
    let Ok(mut dataset) = Dataset::open(dir.path(), config, vec![(1, "person".into())]) else {
        return;
    };
    let labels = [LabelBox {
        class: "person".into(),
        bbox: [1.0, 2.0, 30.0, 60.0],
        score: 0.9,
    }];
    let sample = Sample {
        id: "f00000001",
        time_ms: 0,
        decoded_at_ms: 0,
        width: 64,
        height: 64,
        jpeg: b"not decoded here",
        labels: &labels,
        unlabelled: &[Rect::new(40, 0, 24, 24)],
    };
    if dataset.add(&sample, selector & 8 != 0).is_ok() {
        let _ = dataset.flush();
    }
});

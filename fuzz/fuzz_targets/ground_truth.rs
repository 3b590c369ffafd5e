//! Ground-truth files as `autotuner eval` and `autotuner tune --ground-truth` read them (MOTChallenge
//! `gt.txt`, COCO JSON, YOLO labels with `data.yaml`): any bytes give boxes or a clear error.
#![no_main]

use autotuner_detect::truth::{Truth, TruthFormat, TruthOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (format, path) = match selector % 3 {
        0 => (TruthFormat::Mot, dir.path().join("gt.txt")),
        1 => (TruthFormat::Coco, dir.path().join("annotations.json")),
        _ => {
            // YOLO: a data.yaml beside one label file per frame.
            std::fs::write(dir.path().join("data.yaml"), "names: [person, car]\n").expect("write data.yaml");
            (TruthFormat::Yolo, dir.path().join("labels"))
        }
    };
    if format == TruthFormat::Yolo {
        std::fs::create_dir_all(&path).expect("the labels directory");
        std::fs::write(path.join("000001.txt"), file).expect("write a label file");
    } else {
        std::fs::write(&path, file).expect("write the file");
    }
    let mut options = TruthOptions::new((768, 576));
    options.format = Some(format);
    options.frame_count = Some(795);
    if let Ok(truth) = Truth::read(&path, &options) {
        for index in 0..4 {
            for b in truth.frame(index) {
                assert!(b.bbox.area() > 0.0, "a kept box has an area");
            }
        }
    }
});

//! The student cut down to the classes a camera needs: on real frames of vtest.avi, the same
//! logits for the kept classes and the same box encodings as the whole model, the same
//! detections, and clear refusals for what it cannot cut.

mod common;

use autotuner_detect::{DetectOptions, Detector, DevicePreference, Family, LoadOptions, Network, Threads};
use common::*;

#[test]
fn the_cut_head_computes_the_same_logits_and_detections_for_the_kept_classes() {
    let runtime = runtime();
    let bytes = std::fs::read(model_file(Family::SsdRaw)).unwrap();
    let (cut, columns) = autotuner_detect::onnx::keep_ssd_classes(&bytes, &[3, 1, 3]).unwrap();
    assert_eq!(
        columns,
        [0, 1, 3],
        "background, then the classes in order, once each"
    );
    let mut full = Network::from_bytes(&runtime, &bytes, "full").unwrap();
    let mut small = Network::from_bytes(&runtime, &cut, "cut").unwrap();
    let frames = colour_frames();
    let pre = autotuner_detect::Preprocess {
        width: 300,
        height: 300,
        fit: autotuner_detect::Fit::Stretch,
        layout: autotuner_detect::Layout::Nhwc,
        bgr: false,
        scale: 2.0 / 255.0,
        offset: -1.0,
    };
    let mut input = vec![0.0; pre.len()];
    pre.apply(image(&frames, 10), &mut input);
    let a = full.run(&input, [1, 300, 300, 3]).unwrap();
    let b = small.run(&input, [1, 300, 300, 3]).unwrap();
    assert_eq!(a[0], b[0], "box encodings unchanged");
    assert_eq!(a[1].0, [1, 1917, 91]);
    assert_eq!(b[1].0, [1, 1917, 3]);
    let worst = (0..1917)
        .flat_map(|j| columns.iter().enumerate().map(move |(k, &c)| (j, k, c as usize)))
        .map(|(j, k, c)| (a[1].1[j * 91 + c] - b[1].1[j * 3 + k]).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "kept logits differ by {worst}");

    // Loaded for person and car: the same detections as the whole model asked for those.
    let options = DetectOptions {
        min_score: 0.3,
        classes: Some(vec![1, 3]),
        ..DetectOptions::default()
    };
    let load = LoadOptions {
        device: DevicePreference::Cpu,
        threads: Threads::default(),
        classes: Some(vec![1, 3]),
    };
    let mut whole = detector(Family::SsdRaw);
    let mut cut = Detector::load_for(&runtime, &model_file(Family::SsdRaw), Family::SsdRaw, &load).unwrap();
    let mut found = Vec::new();
    let mut total = 0;
    for i in [0, 100, 200, 300] {
        let expected = whole.detect(&[image(&frames, i)], &options).unwrap().remove(0);
        cut.detect_frame(image(&frames, i), &options, &mut found).unwrap();
        assert_eq!(found.len(), expected.len(), "frame {i}");
        for (g, e) in found.iter().zip(&expected) {
            assert_eq!(g.class_id, e.class_id);
            assert!((g.score - e.score).abs() < 1e-4 && (g.bbox.x0 - e.bbox.x0).abs() < 1e-3);
        }
        total += found.len();
    }
    assert!(total > 10, "{total} detections compared");
}

#[test]
fn what_cannot_be_cut_is_refused_with_a_reason() {
    let bytes = std::fs::read(model_file(Family::SsdRaw)).unwrap();
    let err = autotuner_detect::onnx::keep_ssd_classes(&bytes, &[91]).unwrap_err();
    assert!(err.contains("not among the model's 91 columns"), "{err}");
    let yolo = std::fs::read(model_file(Family::Yolo)).unwrap();
    let err = autotuner_detect::onnx::keep_ssd_classes(&yolo, &[1]).unwrap_err();
    assert!(err.contains("second output"), "{err}");
    let err = autotuner_detect::onnx::keep_ssd_classes(&bytes[..bytes.len() / 2], &[1]).unwrap_err();
    assert!(err.contains("not an ONNX model"), "{err}");
}

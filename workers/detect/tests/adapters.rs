//! Each detector family against a Python onnxruntime reference of the same model on the same
//! frames of vtest.avi: same detections after NMS (count, classes), boxes within 1e-3 px, scores
//! within 1e-4.

mod common;

use autotuner_detect::{DetectOptions, Detection, Family};
use common::*;

fn compare(family: Family, name: &str) {
    let frames = colour_frames();
    let count = 6;
    // Frames spread over the held-out part: 401, 466, 531, ...
    let picked: Vec<usize> = (0..count).map(|k| k * 65).collect();
    let mut batch = Vec::with_capacity(count * FRAME_BYTES);
    for &i in &picked {
        batch.extend_from_slice(&frames[i * FRAME_BYTES..(i + 1) * FRAME_BYTES]);
    }
    let options = DetectOptions {
        min_score: 0.3,
        iou_threshold: 0.5,
        max_detections: 100,
        classes: None,
    };
    let expected = reference_detections(family, &batch, &options, name);
    let mut detector = detector(family);
    let images: Vec<_> = (0..count).map(|i| image(&batch, i)).collect();
    let got = detector.detect(&images, &options).unwrap();
    let mut total = 0;
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.len(), e.len(), "{name} frame {i}: {g:?}\nvs {e:?}");
        for (a, b) in g.iter().zip(e) {
            assert_eq!(a.class_id, b.class_id, "{name} frame {i}");
            assert!(
                (a.score - b.score).abs() < 1e-4,
                "{name} frame {i}: score {} vs {}",
                a.score,
                b.score
            );
            let d = [
                a.bbox.x0 - b.bbox.x0,
                a.bbox.y0 - b.bbox.y0,
                a.bbox.x1 - b.bbox.x1,
                a.bbox.y1 - b.bbox.y1,
            ];
            assert!(
                d.iter().all(|v| v.abs() <= 1e-3),
                "{name} frame {i}: {a:?} vs {b:?}"
            );
        }
        total += g.len();
    }
    // PETS09 is pedestrians (with bags and umbrellas): people are found in every frame.
    for (i, frame) in got.iter().enumerate() {
        let people = frame.iter().filter(|d: &&Detection| d.class_id == 1).count();
        assert!(people >= 3, "{name} frame {i}: {people} people in {frame:?}");
    }
    eprintln!("{name}: {total} detections in {count} frames agree with the Python reference");
}

#[test]
fn yolo_matches_onnxruntime_in_python() {
    compare(Family::Yolo, "yolo");
}

#[test]
fn ssd_raw_head_matches_onnxruntime_in_python() {
    compare(Family::SsdRaw, "ssd-raw");
}

#[test]
fn ssd_with_graph_postprocessing_matches_onnxruntime_in_python() {
    compare(Family::SsdPostprocessed, "ssd-post");
}

#[test]
fn class_filter_and_limits_apply_to_every_family() {
    let frames = colour_frames();
    let images = [image(&frames, 0)];
    for family in [Family::Yolo, Family::SsdRaw, Family::SsdPostprocessed] {
        let mut d = detector(family);
        let people = DetectOptions {
            classes: Some(vec![1]),
            min_score: 0.3,
            ..DetectOptions::default()
        };
        let found = d.detect(&images, &people).unwrap().remove(0);
        assert!(
            !found.is_empty() && found.iter().all(|x| x.class_id == 1),
            "{family:?}: {found:?}"
        );
        // Other classes are there unfiltered (bags, umbrellas, a car); filtering on one of them
        // keeps that class only, and all of it.
        let everything = DetectOptions {
            min_score: 0.05,
            ..DetectOptions::default()
        };
        let all = d.detect(&images, &everything).unwrap().remove(0);
        let other = all
            .iter()
            .find(|x| x.class_id != 1)
            .expect("another class")
            .class_id;
        let only = DetectOptions {
            classes: Some(vec![other]),
            ..everything.clone()
        };
        let filtered = d.detect(&images, &only).unwrap().remove(0);
        assert!(
            !filtered.is_empty() && filtered.iter().all(|x| x.class_id == other),
            "{family:?}"
        );
        assert!(
            filtered.len() >= all.iter().filter(|x| x.class_id == other).count(),
            "{family:?}"
        );
        let one = DetectOptions {
            max_detections: 1,
            min_score: 0.3,
            ..DetectOptions::default()
        };
        assert_eq!(d.detect(&images, &one).unwrap()[0].len(), 1, "{family:?}");
        let none = DetectOptions {
            min_score: 0.9999,
            ..DetectOptions::default()
        };
        assert!(d.detect(&images, &none).unwrap()[0].is_empty(), "{family:?}");
    }
}

#[test]
fn a_model_of_another_family_is_refused_with_the_reason() {
    let err = autotuner_detect::Detector::load(
        &runtime(),
        &model_file(Family::SsdRaw),
        Family::Yolo,
        autotuner_detect::DevicePreference::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("is not N x 3 x H x W"), "{err}");
    let missing = autotuner_detect::Detector::load(
        &runtime(),
        std::path::Path::new("/nonexistent.onnx"),
        Family::Yolo,
        autotuner_detect::DevicePreference::Cpu,
    )
    .unwrap_err();
    assert!(missing.to_string().contains("/nonexistent.onnx"), "{missing}");
}

#[test]
fn sliced_inference_finds_what_the_full_frame_finds_in_frame_coordinates() {
    let frames = colour_frames();
    let frame = image(&frames, 100);
    let options = DetectOptions {
        min_score: 0.4,
        classes: Some(vec![1]),
        ..DetectOptions::default()
    };
    let mut teacher = detector(Family::Yolo);
    let whole = teacher.detect(&[frame], &options).unwrap().remove(0);
    let sliced = teacher.detect_sliced(frame, (384, 384), 0.25, &options).unwrap();
    assert!(whole.len() >= 3, "{whole:?}");
    assert!(
        sliced.len() >= whole.len(),
        "sliced {} vs whole {}",
        sliced.len(),
        whole.len()
    );
    for d in &whole {
        assert!(
            sliced.iter().any(|s| s.bbox.iou(&d.bbox) > 0.5),
            "{d:?} missing from the sliced result"
        );
    }
    assert!(
        sliced
            .iter()
            .all(|s| s.bbox.x1 <= WIDTH as f32 && s.bbox.y1 <= HEIGHT as f32)
    );
}

#[test]
fn without_a_usable_gpu_auto_falls_back_to_the_cpu_and_says_why() {
    let d = autotuner_detect::Detector::load(
        &runtime(),
        &model_file(Family::Yolo),
        Family::Yolo,
        autotuner_detect::DevicePreference::Auto,
    )
    .unwrap();
    // The CPU library of the onnxruntime wheel has no CUDA provider (and this machine no GPU).
    assert_eq!(d.device(), autotuner_detect::Device::Cpu);
    let reason = d.cuda_unavailable().expect("a reason");
    assert!(!reason.is_empty());
}

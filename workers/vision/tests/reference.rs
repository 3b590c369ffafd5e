//! The Rust detector against the OpenCV reference (tests/vision/reference.py) on vtest.avi
//! (PETS09-S2L1), frame by frame: the same state, final masks agreeing on >= 99.5% of pixels,
//! the same boxes within 2 px.

mod common;

use autotuner_vision::{Background, FrameState, GrayImage, Level, MotionConfig, MotionDetector};
use common::*;

/// Frames compared per setting: the first 300 of vtest.avi's 795 hold warm-up, resets every 100
/// frames and people in every part of the view; the reference (OpenCV from Python) is most of the
/// time, so the whole file made these tests the slowest of the crate for no more coverage.
const COMPARED_FRAMES: usize = 300;

fn compare(config: MotionConfig, name: &str) {
    let (file, w, h) = VTEST;
    let frames = frames(file, w, h);
    let frames = &frames[..COMPARED_FRAMES * w * h];
    let dir = tempfile_dir(name);
    let jsonl = dir.join("reference.jsonl");
    let masks = dir.join("reference.bits");
    let frames_path = dir.join("frames.gray");
    std::fs::write(&frames_path, frames).unwrap();
    reference(&[
        "detect",
        frames_path.to_str().unwrap(),
        &w.to_string(),
        &h.to_string(),
        &config_json(&config),
        jsonl.to_str().unwrap(),
        masks.to_str().unwrap(),
    ]);
    let expected = parse_reports(&std::fs::read_to_string(&jsonl).unwrap());
    let mask_bits = std::fs::read(&masks).unwrap();
    let mask_bytes = (w * h).div_ceil(8);
    assert_eq!(expected.len(), frames.len() / (w * h));

    let mut detector = MotionDetector::new(w, h, config).unwrap();
    let (mut worst, mut differing_pixels, mut box_mismatches, mut detected, mut selected) =
        (1.0f64, 0u64, 0, 0, 0);
    for (i, (frame, want)) in frames.chunks_exact(w * h).zip(&expected).enumerate() {
        let got = detector
            .process(GrayImage::new(frame, w, h).unwrap())
            .unwrap()
            .clone();
        let state = match got.state {
            FrameState::Warming => "warming",
            FrameState::Detected => "detected",
            FrameState::Reset => "reset",
        };
        assert_eq!(state, want.state, "frame {i}: state");
        assert_eq!(got.reset.is_some(), want.reset.is_some(), "frame {i}: reset");
        if got.state != FrameState::Detected {
            continue;
        }
        detected += 1;
        let reference_mask = &mask_bits[i * mask_bytes..(i + 1) * mask_bytes];
        let mask = detector.foreground();
        let mut differ = 0u64;
        for y in 0..h {
            for x in 0..w {
                let p = y * w + x;
                let want_on = reference_mask[p / 8] >> (p % 8) & 1 == 1;
                differ += (mask.get(x, y) != want_on) as u64;
            }
        }
        differing_pixels += differ;
        worst = worst.min(1.0 - differ as f64 / (w * h) as f64);
        assert_eq!(
            detector.changed().count_ones(),
            want.changed,
            "frame {i}: changed pixels"
        );
        if !boxes_match(&got.regions, &want.regions, 2) {
            box_mismatches += 1;
            eprintln!(
                "frame {i}: boxes differ:\n  rust   {:?}\n  opencv {:?}",
                got.regions, want.regions
            );
        }
        assert_eq!(got.crop, want.crop, "frame {i}: crop");
        selected += got.selected as usize;
    }
    eprintln!(
        "{name}: {detected} frames compared ({selected} selected), worst mask agreement {:.6}, {differing_pixels} pixels differ in all, {box_mismatches} frames with different boxes",
        worst
    );
    assert!(worst >= 0.995, "mask agreement {worst} < 99.5%");
    // The goal is 99.5%; the implementation is bit-exact with the pinned OpenCV, so hold it to that.
    assert_eq!(differing_pixels, 0, "not bit-exact any more");
    assert_eq!(box_mismatches, 0);
    assert!(
        detected > 200 && selected > 150,
        "the footage has motion: {detected} detected, {selected} selected"
    );
    std::fs::remove_dir_all(dir).ok();
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("autotuner-vision-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn default_median_method_matches_opencv() {
    compare(MotionConfig::default(), "median");
}

#[test]
fn first_frame_with_interval_resets_and_other_settings_match_opencv() {
    let config = MotionConfig {
        background: Background::FirstFrame,
        reset_interval_frames: Some(100),
        blur_kernel: 11,
        threshold: 15,
        dilate_iterations: 1,
        min_region_area: 200,
        crop_margin: 0.25,
        crop_aspect: Some(4.0 / 3.0),
        ..MotionConfig::default()
    };
    compare(config, "first-frame");
}

#[test]
fn short_median_window_without_dilation_matches_opencv() {
    // Even sample counts (mean of the middle two), every frame sampled, many small regions.
    let config = MotionConfig {
        background: Background::Median {
            frames: 6,
            skip: 1,
            history: 2,
        },
        dilate_iterations: 0,
        min_region_area: 0,
        crop_aspect: None,
        ..MotionConfig::default()
    };
    compare(config, "short-median");
}

#[test]
fn every_instruction_set_gives_the_same_result() {
    let (file, w, h) = VTEST;
    let frames = frames(file, w, h);
    let frames = &frames[..300 * w * h];
    let run = |level: Level| {
        let mut d = MotionDetector::with_level(w, h, MotionConfig::default(), level).unwrap();
        let mut out = Vec::new();
        for frame in frames.chunks_exact(w * h) {
            let r = d.process(GrayImage::new(frame, w, h).unwrap()).unwrap();
            out.push((r.regions.clone(), r.changed_fraction));
        }
        (out, d.background().to_vec())
    };
    let levels = Level::available();
    let first = run(levels[0]);
    for &level in &levels[1..] {
        assert!(run(level) == first, "{level:?} differs from {:?}", levels[0]);
    }
}

//! The reference method's crops against the PETS09-S2L1 ground truth (vtest.avi): after the
//! background has warmed up (the first full 25-sample median is in use from frame 250), at least
//! 95% of the evaluated person boxes must be at least half inside the crop sent to the teacher.
//! `cargo run --release -p autotuner-vision --example coverage` prints the sweep over threshold
//! and minimum area.

mod common;

use autotuner_vision::MotionConfig;
use common::*;

#[test]
fn crops_cover_the_people_of_pets09() {
    let (file, w, h) = VTEST;
    let frames = frames(file, w, h);
    let truth = ground_truth("PETS09-S2L1", w as u32, h as u32);
    assert!(truth.len() > 4000, "{} ground-truth boxes", truth.len());
    let c = coverage(&frames, w, h, &truth, MotionConfig::default(), 250);
    eprintln!("PETS09-S2L1, reference settings: {c:?}");
    assert_eq!(c.frames, 545);
    assert!(c.boxes > 3000, "{c:?}");
    assert!(
        c.crop_coverage >= 0.95,
        "crop coverage {:.4} < 95%",
        c.crop_coverage
    );
    // Not by sending whole frames: the crop is a part of the frame.
    assert!(c.mean_crop_area_fraction < 0.9, "{c:?}");
    assert!(c.union_coverage <= c.crop_coverage);
}

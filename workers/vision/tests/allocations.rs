//! The per-frame path allocates nothing once the detector's buffers have grown: counted with a
//! global allocator over real footage, for each background model and with a reduced processing
//! width and an ignore mask.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use autotuner_vision::{Background, GrayImage, MotionConfig, MotionDetector};
use common::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations while the detector looks at `frames` a second time (the first pass grows buffers).
fn allocations_in_steady_state(config: MotionConfig) -> (u64, usize) {
    let (file, w, h) = VTEST;
    let frames = frames(file, w, h);
    let mut detector = MotionDetector::new(w, h, config).unwrap();
    let mut selected = 0;
    for frame in frames.chunks_exact(w * h) {
        detector.process(GrayImage::new(frame, w, h).unwrap()).unwrap();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for frame in frames.chunks_exact(w * h) {
        let report = detector.process(GrayImage::new(frame, w, h).unwrap()).unwrap();
        selected += report.selected as usize;
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before, selected)
}

// One test, so that no other test's allocations land in the count.
#[test]
fn the_per_frame_path_does_not_allocate() {
    let configs = [
        MotionConfig::default(),
        MotionConfig {
            background: Background::FirstFrame,
            reset_interval_frames: Some(50),
            ..MotionConfig::default()
        },
        MotionConfig {
            processing_width: Some(320),
            masks: vec![vec![[0.0, 0.0], [0.3, 0.0], [0.0, 0.3]]],
            ..MotionConfig::default()
        },
    ];
    for config in configs {
        let label = format!("{:?} width {:?}", config.background, config.processing_width);
        let (allocations, selected) = allocations_in_steady_state(config);
        assert!(
            selected > 500,
            "{label}: the footage has motion ({selected} frames selected)"
        );
        assert_eq!(
            allocations, 0,
            "{label}: {allocations} allocations over 795 frames"
        );
    }
    // The counter does count: a detector's construction allocates.
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let _ = MotionDetector::new(64, 64, MotionConfig::default()).unwrap();
    assert!(ALLOCATIONS.load(Ordering::Relaxed) > before);
}

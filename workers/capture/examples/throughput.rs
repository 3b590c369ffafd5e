//! Capture throughput on one core: decode, then decode + motion, then decode + motion + crops
//! (the crops of selected frames cut and JPEG-encoded, what goes to the teacher), for each video
//! given. Run it pinned to one core (`scripts/bench-capture` does, with `taskset`); the decoder
//! runs single-threaded.
//!
//! cargo run --release -p autotuner-capture --example throughput -- VIDEO...

use std::time::Instant;

use autotuner_capture::picture;
use autotuner_capture::select::{Sampling, Selector};
use autotuner_capture::source::{Source, SourceConfig};
use autotuner_vision::{GrayImage, MotionConfig, MotionDetector};
use serde_json::json;

#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Decode,
    Motion,
    Crops,
}

fn run(video: &str, stage: Stage) -> (u64, f64, u64, String) {
    let mut config = SourceConfig::new(video);
    config.decoder_threads = 1;
    let source = Source::start(config).expect("open the video");
    let started = Instant::now();
    let mut detector: Option<MotionDetector> = None;
    let selector = Selector::new(Sampling::default());
    let mut scratch = Vec::new();
    let (mut frames, mut selected, mut size) = (0u64, 0u64, String::new());
    while let Some(frame) = source.next_frame() {
        frames += 1;
        if stage != Stage::Decode {
            let d = detector.get_or_insert_with(|| {
                size = format!("{}x{}", frame.width, frame.height);
                MotionDetector::new(frame.width, frame.height, MotionConfig::default()).unwrap()
            });
            let report = d
                .process(GrayImage::new(&frame.y, frame.width, frame.height).unwrap())
                .unwrap();
            if report.selected {
                selected += 1;
                if stage == Stage::Crops {
                    for c in selector.crops(report, frame.width as u32, frame.height as u32) {
                        std::hint::black_box(picture::jpeg(&frame, c, 90, &mut scratch));
                    }
                }
            }
        }
        source.recycle(frame);
    }
    (frames, started.elapsed().as_secs_f64(), selected, size)
}

fn main() {
    let mut results = Vec::new();
    for video in std::env::args().skip(1) {
        for (name, stage) in [
            ("decode", Stage::Decode),
            ("decode+motion", Stage::Motion),
            ("decode+motion+crops", Stage::Crops),
        ] {
            let (frames, seconds, selected, size) = run(&video, stage);
            let fps = frames as f64 / seconds;
            eprintln!(
                "{video} {size} {name}: {frames} frames in {seconds:.2} s = {fps:.1} fps ({selected} selected)"
            );
            results.push(
                json!({"video": video, "size": size, "stage": name, "frames": frames, "seconds": seconds,
                "fps": fps, "selected": selected}),
            );
        }
    }
    println!("{}", serde_json::to_string_pretty(&results).unwrap());
}

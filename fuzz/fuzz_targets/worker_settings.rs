//! The settings a capture worker reads from its CameraTuning (as JSON, the way the API server
//! serves it, schema or not) and the training Job's settings the operator renders from it: the
//! worker's configuration is derived without a panic, the motion detector it configures is built
//! or refused with an error and, built, processes a frame; the training settings read back equal.
#![no_main]

use std::path::PathBuf;

use autotuner_api::CameraTuningSpec;
use autotuner_api::contract::TrainingSettings;
use autotuner_capture::CaptureConfig;
use autotuner_capture::cluster;
use autotuner_capture::edge::EdgeSettings;
use autotuner_vision::{GrayImage, MotionDetector};
use libfuzzer_sys::fuzz_target;

const WIDTH: usize = 64;
const HEIGHT: usize = 48;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<CameraTuningSpec>(data) else { return };
    let mut config = CaptureConfig::new("rtsp://camera/stream", PathBuf::from("/nonexistent"));
    let mut min_score = 0.5;
    cluster::apply_spec(&spec, &mut config, &mut min_score);
    let _ = cluster::edge_settings(&spec, &EdgeSettings::default());
    let _ = cluster::drift_settings(&spec);
    // Frames as small as a camera may send; the spec's processing width and masks are the
    // spec's. Built, the detector takes frames (the first is the background).
    if let Ok(mut detector) = MotionDetector::new(WIDTH, HEIGHT, config.motion.clone()) {
        let frame = vec![0u8; WIDTH * HEIGHT];
        let moved: Vec<u8> = (0..WIDTH * HEIGHT).map(|i| (i * 7 % 251) as u8).collect();
        for pixels in [&frame, &moved] {
            let image = GrayImage::new(pixels, WIDTH, HEIGHT).expect("a whole frame");
            detector.process(image).expect("a frame of the detector's size");
        }
    }
    let settings = TrainingSettings::new(&spec, 1, "s3://models/student.onnx", None);
    let read = TrainingSettings::from_env_value(&settings.to_env_value());
    // NaN is not equal to itself: compare what serialises.
    assert_eq!(
        read.map(|s| s.to_env_value()),
        Ok(settings.to_env_value()),
        "the training settings read back as rendered"
    );
});

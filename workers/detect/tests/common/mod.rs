//! Models, footage, ground truth and the Python references for the detector tests.
//! `scripts/fetch-assets` prepares all of it (the test scripts run it first).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use autotuner_detect::eval::GroundTruth;
use autotuner_detect::{
    BBox, DetectOptions, Detection, Detector, DevicePreference, Family, RgbImage, Runtime,
};

pub const WIDTH: usize = 768;
pub const HEIGHT: usize = 576;
/// The colour frames file holds frames 401..=795 (1-based) of vtest.avi.
pub const FIRST_FRAME: usize = 401;
pub const FRAME_BYTES: usize = WIDTH * HEIGHT * 3;

pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn assets() -> PathBuf {
    let dir = autotuner_detect::assets::dir();
    assert!(
        dir.join("models/yolov12n.onnx").is_file() && dir.join("libonnxruntime.so").exists(),
        "models missing in {}: run scripts/fetch-assets (scripts/test does)",
        dir.display()
    );
    dir
}

pub fn runtime() -> Runtime {
    Runtime::load(&assets().join("libonnxruntime.so")).expect("ONNX Runtime")
}

pub fn model_file(family: Family) -> PathBuf {
    assets().join("models").join(match family {
        Family::Yolo => "yolov12n.onnx",
        Family::SsdRaw => "ssd_mobilenet_v2_coco_raw.onnx",
        Family::SsdPostprocessed => "ssd_mobilenet_v2_coco_post.onnx",
    })
}

pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::Yolo => "yolo",
        Family::SsdRaw => "ssdRaw",
        Family::SsdPostprocessed => "ssdPostprocessed",
    }
}

pub fn detector(family: Family) -> Detector {
    Detector::load(&runtime(), &model_file(family), family, DevicePreference::Cpu).expect("load detector")
}

/// The colour frames 401..=795 of vtest.avi, back to back.
pub fn colour_frames() -> Vec<u8> {
    let data = std::fs::read(assets().join("vtest-768x576-401-795.rgb")).expect("colour frames");
    assert_eq!(data.len(), 395 * FRAME_BYTES);
    data
}

pub fn image(frames: &[u8], i: usize) -> RgbImage<'_> {
    RgbImage::new(&frames[i * FRAME_BYTES..(i + 1) * FRAME_BYTES], WIDTH, HEIGHT).unwrap()
}

pub fn reference(args: &[&str]) -> String {
    let script = manifest_dir().join("../../tests/detect/reference.py");
    let out = Command::new(assets().join("python"))
        .arg(script)
        .args(args)
        .output()
        .expect("run the Python reference");
    assert!(
        out.status.success(),
        "reference.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("autotuner-detect-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Python reference's detections of `family` on the given frames.
pub fn reference_detections(
    family: Family,
    frames: &[u8],
    options: &DetectOptions,
    name: &str,
) -> Vec<Vec<Detection>> {
    let dir = temp_dir(name);
    let frames_path = dir.join("frames.rgb");
    std::fs::write(&frames_path, frames).unwrap();
    let out = dir.join("detections.json");
    let opts = serde_json::json!({
        "minScore": options.min_score, "iouThreshold": options.iou_threshold, "maxDetections": options.max_detections,
    });
    reference(&[
        "detect",
        family_name(family),
        model_file(family).to_str().unwrap(),
        frames_path.to_str().unwrap(),
        &WIDTH.to_string(),
        &HEIGHT.to_string(),
        &opts.to_string(),
        out.to_str().unwrap(),
    ]);
    let parsed: Vec<Vec<Vec<f64>>> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_dir_all(dir).ok();
    parsed
        .into_iter()
        .map(|frame| {
            frame
                .into_iter()
                .map(|d| Detection {
                    bbox: BBox::new(d[0] as f32, d[1] as f32, d[2] as f32, d[3] as f32),
                    class_id: d[4] as u32,
                    score: d[5] as f32,
                })
                .collect()
        })
        .collect()
}

/// PETS09-S2L1 ground truth for frames `first..=last` (1-based): people (flag 1), and the
/// ignore regions (flag 0) as crowd boxes. Image ids are frame numbers.
pub fn pets09_truth(first: usize, last: usize) -> Vec<GroundTruth> {
    let path = assets().join("data/PETS09-S2L1/gt/gt.txt");
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let f: Vec<f64> = line.split(',').map(|v| v.trim().parse().unwrap()).collect();
            let frame = f[0] as usize;
            if frame < first || frame > last {
                return None;
            }
            let bbox = BBox::new(
                f[2].max(0.0) as f32,
                f[3].max(0.0) as f32,
                (f[2] + f[4]).min(WIDTH as f64) as f32,
                (f[3] + f[5]).min(HEIGHT as f64) as f32,
            );
            (bbox.area() > 0.0).then_some(GroundTruth {
                image_id: frame as u64,
                class_id: 1,
                bbox,
                crowd: f[6] == 0.0,
            })
        })
        .collect()
}

/// Person AP on PETS09-S2L1 frames 401..=795 (the held-out part), for full frames or motion crops.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PersonAp {
    pub ap: f64,
    pub ap50: f64,
    pub detections: usize,
    pub seconds: f64,
}

/// Runs `family` on every frame 401..=795 (or, with `crops`, on the motion crop of each frame
/// only, boxes moved back to the frame) and scores people against the ground truth.
/// Every `step`-th held-out frame is scored (1: all 395).
pub fn pets09_person_ap(
    family: Family,
    crops: Option<&[Option<autotuner_vision::Rect>]>,
    step: usize,
) -> PersonAp {
    use autotuner_detect::eval::{ImageDetection, evaluate};
    let frames = colour_frames();
    let mut detector = detector(family);
    let options = DetectOptions {
        min_score: 0.05,
        classes: Some(vec![1]),
        ..DetectOptions::default()
    };
    let mut dets = Vec::new();
    let images: Vec<u64> = (FIRST_FRAME as u64..=795).step_by(step).collect();
    let started = std::time::Instant::now();
    let mut crop_pixels = Vec::new();
    for i in (0..395).step_by(step) {
        let frame_number = (FIRST_FRAME + i) as u64;
        let found = match crops {
            None => detector.detect(&[image(&frames, i)], &options).unwrap().remove(0),
            Some(crops) => match crops[FIRST_FRAME + i - 1] {
                None => Vec::new(),
                Some(r) => {
                    let frame = &frames[i * FRAME_BYTES..(i + 1) * FRAME_BYTES];
                    crop_pixels.clear();
                    for y in r.y as usize..r.bottom() as usize {
                        let row =
                            &frame[(y * WIDTH + r.x as usize) * 3..(y * WIDTH + r.right() as usize) * 3];
                        crop_pixels.extend_from_slice(row);
                    }
                    let crop = RgbImage::new(&crop_pixels, r.width as usize, r.height as usize).unwrap();
                    let mut found = detector.detect(&[crop], &options).unwrap().remove(0);
                    for d in &mut found {
                        d.bbox = d.bbox.offset(r.x as f32, r.y as f32);
                    }
                    found
                }
            },
        };
        dets.extend(found.into_iter().map(|d| ImageDetection {
            image_id: frame_number,
            detection: d,
        }));
    }
    let seconds = started.elapsed().as_secs_f64();
    let truth: Vec<GroundTruth> = pets09_truth(FIRST_FRAME, 795)
        .into_iter()
        .filter(|t| images.contains(&t.image_id))
        .collect();
    let e = evaluate(&images, &[1], &truth, &dets);
    PersonAp {
        ap: e.ap.unwrap(),
        ap50: e.ap50.unwrap(),
        detections: dets.len(),
        seconds,
    }
}

/// The reference motion detector's crop for every frame of vtest.avi (index = frame number - 1).
pub fn motion_crops() -> Vec<Option<autotuner_vision::Rect>> {
    use autotuner_vision::{GrayImage, MotionConfig, MotionDetector};
    let gray = std::fs::read(assets().join("vtest-768x576.gray")).unwrap();
    let mut motion = MotionDetector::new(WIDTH, HEIGHT, MotionConfig::default()).unwrap();
    gray.chunks_exact(WIDTH * HEIGHT)
        .map(|f| {
            motion
                .process(GrayImage::new(f, WIDTH, HEIGHT).unwrap())
                .unwrap()
                .crop
        })
        .collect()
}

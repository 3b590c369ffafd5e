//! Bytes sent to the teacher against whole frames, and the ground truth the crops hold, over
//! vtest.avi (PETS09-S2L1) for several crop margins: the trade-off behind `Sampling::crop_margin`.
//! A ground-truth box (flag 1, clipped) counts as held when at least half of it is inside a crop.
//!
//! cargo run --release -p autotuner-capture --example upload -- [frames] [margins,...]

use autotuner_capture::picture;
use autotuner_capture::select::{Sampling, Selector};
use autotuner_capture::source::{Source, SourceConfig};
use autotuner_vision::{GrayImage, MotionConfig, MotionDetector, Rect};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let frames: u64 = args.first().map_or(795, |a| a.parse().unwrap());
    let margins: Vec<f32> = args
        .get(1)
        .map_or("0,0.05,0.1,0.15".to_string(), Clone::clone)
        .split(',')
        .map(|m| m.parse().unwrap())
        .collect();
    let assets = autotuner_detect::assets::dir();
    let gt = std::fs::read_to_string(assets.join("data/PETS09-S2L1/gt/gt.txt")).unwrap();
    let gt: Vec<(u64, [f64; 4])> = gt
        .lines()
        .filter_map(|l| {
            let f: Vec<f64> = l.split(',').map(|v| v.trim().parse().unwrap()).collect();
            (f[6] != 0.0).then(|| {
                let (x0, y0) = (f[2].max(0.0), f[3].max(0.0));
                (
                    f[0] as u64,
                    [x0, y0, (f[2] + f[4]).min(768.0), (f[3] + f[5]).min(576.0)],
                )
            })
        })
        .collect();
    let mut results = Vec::new();
    for margin in margins {
        let source =
            Source::start(SourceConfig::new(assets.join("vtest.avi").display().to_string())).unwrap();
        let selector = Selector::new(Sampling {
            crop_margin: margin,
            ..Sampling::default()
        });
        let mut detector = MotionDetector::new(768, 576, MotionConfig::default()).unwrap();
        let mut scratch = Vec::new();
        let (mut crop_bytes, mut frame_bytes, mut selected, mut held, mut boxes, mut area) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0.0f64);
        while let Some(frame) = source.next_frame() {
            if frame.index >= frames {
                break;
            }
            let report = detector
                .process(GrayImage::new(&frame.y, 768, 576).unwrap())
                .unwrap();
            if report.selected {
                let crops: Vec<Rect> = selector.crops(report, 768, 576);
                selected += 1;
                area += crops.iter().map(|c| c.area() as f64).sum::<f64>() / (768.0 * 576.0);
                for c in &crops {
                    crop_bytes += picture::jpeg(&frame, *c, 90, &mut scratch).len() as u64;
                }
                frame_bytes += picture::frame_jpeg(&frame, 90, &mut scratch).len() as u64;
                for (_, b) in gt.iter().filter(|(f, _)| *f == frame.index + 1) {
                    boxes += 1;
                    let size = (b[2] - b[0]) * (b[3] - b[1]);
                    let inside: f64 = crops
                        .iter()
                        .map(|c| {
                            let w = (b[2].min(c.right() as f64) - b[0].max(c.x as f64)).max(0.0);
                            let h = (b[3].min(c.bottom() as f64) - b[1].max(c.y as f64)).max(0.0);
                            w * h
                        })
                        .sum();
                    if inside >= size / 2.0 {
                        held += 1;
                    }
                }
            }
            source.recycle(frame);
        }
        let r = json!({"cropMargin": margin, "selectedFrames": selected, "meanCropArea": area / selected as f64,
            "cropBytes": crop_bytes, "fullFrameBytes": frame_bytes, "reduction": frame_bytes as f64 / crop_bytes as f64,
            "groundTruthBoxes": boxes, "coverage": held as f64 / boxes as f64});
        eprintln!("{r}");
        results.push(r);
    }
    println!("{}", serde_json::to_string_pretty(&json!({"command": "cargo run --release -p autotuner-capture --example upload", "frames": frames, "jpegQuality": 90, "results": results})).unwrap());
}

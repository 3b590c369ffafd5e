//! The teacher in this process packs a batch's crops into canvases of its input size (one call
//! per canvas instead of one per crop). On real frames of PETS09 with their ground truth: the
//! packed labels find the people in the crops as well as labelling each crop alone does, every
//! label lies inside a crop of its own frame, and none goes to the wrong frame.

mod common;

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use autotuner_annotator::client::Crop;
use autotuner_capture::dataset::LabelBox;
use autotuner_capture::teacher::{DEFAULT_MAX_SCALE, Teacher};
use autotuner_detect::{BBox, DetectOptions, Detector, DevicePreference, Family, Runtime};

/// PETS09's people in a frame (1-based, as gt.txt numbers them), as corners.
fn people(frame: u32) -> Vec<BBox> {
    let text = std::fs::read_to_string(common::assets().join("data/PETS09-S2L1/gt/gt.txt")).unwrap();
    text.lines()
        .filter_map(|line| {
            let v: Vec<f32> = line.split(',').map(|f| f.trim().parse().unwrap()).collect();
            (v[0] as u32 == frame).then(|| BBox::xywh(v[2], v[3], v[4], v[5]).clip(768.0, 576.0))
        })
        .collect()
}

/// A crop around each of the first `n` people, with a margin, as JPEG with its frame offset.
fn crops_around(frame: u32, n: usize) -> (Vec<Crop>, Vec<BBox>) {
    let path = common::assets().join(format!("vtest-frames/{frame:06}.png"));
    let image = image::open(path).unwrap().into_rgb8();
    let mut crops = Vec::new();
    let mut regions = Vec::new();
    for person in people(frame).into_iter().take(n) {
        let margin = 30.0;
        let x0 = (person.x0 - margin).max(0.0) as u32;
        let y0 = (person.y0 - margin).max(0.0) as u32;
        let x1 = ((person.x1 + margin) as u32).min(image.width());
        let y1 = ((person.y1 + margin) as u32).min(image.height());
        let part = image::imageops::crop_imm(&image, x0, y0, x1 - x0, y1 - y0).to_image();
        let mut jpeg = Vec::new();
        part.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        crops.push(Crop {
            image: jpeg,
            content_type: "image/jpeg",
            offset: [x0, y0],
        });
        regions.push(BBox::new(x0 as f32, y0 as f32, x1 as f32, y1 as f32));
    }
    (crops, regions)
}

fn found(labels: &[LabelBox], truth: &[BBox]) -> usize {
    truth
        .iter()
        .filter(|t| {
            labels
                .iter()
                .any(|l| BBox::new(l.bbox[0], l.bbox[1], l.bbox[2], l.bbox[3]).iou(t) >= 0.5)
        })
        .count()
}

#[tokio::test]
async fn packed_crops_find_the_people_crop_by_crop_labelling_finds_and_stay_in_their_frame() {
    let assets = common::assets();
    let runtime = Runtime::load(&assets.join("libonnxruntime.so")).unwrap();
    let detector = Arc::new(Mutex::new(
        Detector::load(
            &runtime,
            &assets.join("models/yolov12n.onnx"),
            Family::Yolo,
            DevicePreference::Cpu,
        )
        .unwrap(),
    ));
    let teacher = |max_scale| Teacher::InProcess {
        detector: detector.clone(),
        options: DetectOptions {
            min_score: 0.5,
            classes: Some(vec![1]),
            ..DetectOptions::default()
        },
        max_scale,
    };

    // Two frames in one batch, four people each.
    let frames = [200, 500];
    let batch: Vec<(Vec<Crop>, Vec<BBox>)> = frames.iter().map(|&f| crops_around(f, 4)).collect();
    let crops: Vec<Vec<Crop>> = batch.iter().map(|(c, _)| c.clone()).collect();
    let packed = teacher(DEFAULT_MAX_SCALE).label(&crops, "test").await.unwrap();
    assert_eq!(packed.len(), 2, "an answer per frame");

    for (i, &frame) in frames.iter().enumerate() {
        let regions = &batch[i].1;
        // The people wholly inside a crop: what the teacher was shown.
        let shown: Vec<BBox> = people(frame)
            .into_iter()
            .filter(|p| regions.iter().any(|r| r.intersection(p) >= 0.99 * p.area()))
            .collect();
        assert!(shown.len() >= 4, "frame {frame}: {} people shown", shown.len());

        // Each crop alone, letterboxed to the whole input (what labelling did before packing).
        let mut alone = Vec::new();
        for crop in &batch[i].0 {
            alone.extend(
                teacher(f32::MAX)
                    .label(&[vec![crop.clone()]], "test")
                    .await
                    .unwrap()
                    .remove(0),
            );
        }
        let (by_packing, by_crop) = (found(&packed[i], &shown), found(&alone, &shown));
        assert!(
            by_packing + 1 >= by_crop && by_packing * 4 >= shown.len() * 3,
            "frame {frame}: packed found {by_packing}, crop by crop {by_crop}, of {} people",
            shown.len()
        );
        // Every label is inside a crop of its own frame (mapped back through its placement).
        for label in &packed[i] {
            let b = BBox::new(label.bbox[0], label.bbox[1], label.bbox[2], label.bbox[3]);
            assert!(
                regions.iter().any(|r| r.intersection(&b) >= 0.999 * b.area()),
                "frame {frame}: {b:?} lies outside its crops {regions:?}"
            );
        }
    }
}

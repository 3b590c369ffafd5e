//! The mAP evaluation against pycocotools on the same detections and ground truth: real teacher
//! detections on PETS09-S2L1 (with its ignore regions as crowd boxes), and a synthetic multi-class
//! set with crowds, ties and empty images. Every figure must agree within 1e-4.

mod common;

use autotuner_detect::eval::{GroundTruth, ImageDetection, evaluate, xywh};
use autotuner_detect::{BBox, DetectOptions, Detection, Family};
use common::*;

fn compare_with_pycocotools(
    images: &[u64],
    classes: &[u32],
    truth: &[GroundTruth],
    dets: &[ImageDetection],
    name: &str,
) {
    let dir = temp_dir(name);
    let gt_json = serde_json::json!({
        "images": images,
        "categories": classes,
        "annotations": truth.iter().map(|g| serde_json::json!({
            "image_id": g.image_id, "category_id": g.class_id, "bbox": xywh(&g.bbox), "iscrowd": g.crowd as u8,
        })).collect::<Vec<_>>(),
    });
    let dt_json: Vec<_> = dets
        .iter()
        .map(|d| {
            serde_json::json!({
                "image_id": d.image_id, "category_id": d.detection.class_id,
                "bbox": xywh(&d.detection.bbox), "score": d.detection.score as f64,
            })
        })
        .collect();
    let (g, d, o) = (dir.join("gt.json"), dir.join("dt.json"), dir.join("out.json"));
    std::fs::write(&g, gt_json.to_string()).unwrap();
    std::fs::write(&d, serde_json::Value::from(dt_json).to_string()).unwrap();
    reference(&[
        "coco",
        g.to_str().unwrap(),
        d.to_str().unwrap(),
        o.to_str().unwrap(),
    ]);
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&o).unwrap()).unwrap();
    std::fs::remove_dir_all(dir).ok();

    let got = evaluate(images, classes, truth, dets);
    let check = |label: &str, a: Option<f64>, b: &serde_json::Value| match (a, b.as_f64()) {
        (None, None) => {}
        (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-4, "{name} {label}: {a} vs pycocotools {b}"),
        (a, _) => panic!("{name} {label}: {a:?} vs pycocotools {b}"),
    };
    check("AP", got.ap, &want["ap"]);
    check("AP50", got.ap50, &want["ap50"]);
    check("AP75", got.ap75, &want["ap75"]);
    for c in &got.per_class {
        let w = &want["perClass"][c.class_id.to_string()];
        check(&format!("class {} AP", c.class_id), c.ap, &w[0]);
        check(&format!("class {} AP50", c.class_id), c.ap50, &w[1]);
        check(&format!("class {} AP75", c.class_id), c.ap75, &w[2]);
    }
    eprintln!(
        "{name}: AP {:?} AP50 {:?} AP75 {:?} agree with pycocotools",
        got.ap, got.ap50, got.ap75
    );
}

#[test]
fn teacher_detections_on_pets09_agree_with_pycocotools() {
    let frames = colour_frames();
    let mut teacher = detector(Family::Yolo);
    let options = DetectOptions {
        min_score: 0.05,
        ..DetectOptions::default()
    };
    let mut dets = Vec::new();
    let mut images = Vec::new();
    // Every 8th frame of 401..=795.
    for i in (0..395).step_by(8) {
        let frame_number = (FIRST_FRAME + i) as u64;
        images.push(frame_number);
        for d in teacher.detect(&[image(&frames, i)], &options).unwrap().remove(0) {
            dets.push(ImageDetection {
                image_id: frame_number,
                detection: d,
            });
        }
    }
    let truth: Vec<GroundTruth> = pets09_truth(FIRST_FRAME, 795)
        .into_iter()
        .filter(|g| images.contains(&g.image_id))
        .collect();
    // (PETS09's ignore regions are in frames 147-244; the synthetic test covers crowds.)
    assert!(truth.len() > 200);
    // Person has ground truth; car, handbag and umbrella have detections only.
    compare_with_pycocotools(&images, &[1, 3, 27, 28, 31], &truth, &dets, "pets09-teacher");
}

#[test]
fn synthetic_multiclass_set_with_crowds_and_ties_agrees_with_pycocotools() {
    let mut seed = 7u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 10_000) as f32 / 10_000.0
    };
    let (mut truth, mut dets) = (Vec::new(), Vec::new());
    let images: Vec<u64> = (1..=40).collect();
    for &image in &images {
        if image % 10 == 0 {
            continue; // images with nothing at all
        }
        for _ in 0..(rand() * 6.0) as usize {
            let class_id = 1 + (rand() * 3.0) as u32;
            let (x, y, w, h) = (
                rand() * 500.0,
                rand() * 400.0,
                10.0 + rand() * 80.0,
                10.0 + rand() * 120.0,
            );
            let crowd = rand() < 0.1;
            truth.push(GroundTruth {
                image_id: image,
                class_id,
                bbox: BBox::xywh(x, y, w, h),
                crowd,
            });
            // A detection near most objects, some displaced, with coarse (often tied) scores.
            if rand() < 0.8 {
                let jitter = |v: f32, r: f32| v + (r - 0.5) * 0.3 * w;
                let bbox = BBox::xywh(
                    jitter(x, rand()),
                    jitter(y, rand()),
                    w * (0.8 + 0.4 * rand()),
                    h * (0.8 + 0.4 * rand()),
                );
                let score = (rand() * 10.0).floor() / 10.0 + 0.05;
                dets.push(ImageDetection {
                    image_id: image,
                    detection: Detection {
                        bbox,
                        class_id,
                        score,
                    },
                });
            }
        }
        // False positives, some of them inside crowd regions.
        for _ in 0..(rand() * 3.0) as usize {
            let bbox = BBox::xywh(rand() * 600.0, rand() * 450.0, 20.0, 30.0);
            let detection = Detection {
                bbox,
                class_id: 1 + (rand() * 3.0) as u32,
                score: (rand() * 10.0).floor() / 10.0,
            };
            dets.push(ImageDetection {
                image_id: image,
                detection,
            });
        }
    }
    // Class 4 has detections but no ground truth.
    dets.push(ImageDetection {
        image_id: 1,
        detection: Detection {
            bbox: BBox::xywh(1.0, 1.0, 5.0, 5.0),
            class_id: 4,
            score: 0.9,
        },
    });
    assert!(truth.iter().filter(|g| g.crowd).count() >= 3);
    compare_with_pycocotools(&images, &[1, 2, 3, 4], &truth, &dets, "synthetic");
}

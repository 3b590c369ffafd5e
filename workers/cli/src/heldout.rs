//! The held-out part of the video: the off-the-shelf and the tuned student (and the teacher) on
//! frames none of them was tuned on, scored against the ground truth when there is one and
//! against the teacher's labels always; a few frames drawn before and after.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use autotuner_capture::picture;
use autotuner_capture::source::{Source, SourceConfig};
use autotuner_detect::eval::{self, Evaluation, GroundTruth, ImageDetection};
use autotuner_detect::{
    BBox, DetectOptions, Detection, Detector, DevicePreference, Family, RgbImage, Runtime,
};
use autotuner_vision::Rect;
use serde_json::{Value, json};

/// Ground-truth boxes by frame (1-based), MOTChallenge's `gt.txt`: frame, id, x, y, w, h, flag,
/// ...; flag 0 marks a region to ignore. Every box is a person (MOT's sequences).
#[derive(Debug, Clone)]
pub struct MotTruth {
    pub boxes: Vec<(u64, BBox, bool)>,
}

pub fn read_mot(path: &Path) -> anyhow::Result<MotTruth> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut boxes = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}:{}: not a MOT line", path.display(), n + 1))?;
        anyhow::ensure!(f.len() >= 7, "{}:{}: fewer than 7 fields", path.display(), n + 1);
        let b = BBox::xywh(f[2] as f32, f[3] as f32, f[4] as f32, f[5] as f32);
        boxes.push((f[0] as u64, b, f[6] == 0.0));
    }
    Ok(MotTruth { boxes })
}

impl MotTruth {
    fn of_frame(&self, frame: u64, width: f32, height: f32) -> impl Iterator<Item = (BBox, bool)> + '_ {
        self.boxes
            .iter()
            .filter(move |(f, _, _)| *f == frame)
            .map(move |(_, b, crowd)| (b.clip(width, height), *crowd))
            .filter(|(b, _)| b.area() > 0.0)
    }
}

/// Of the ground-truth boxes (not ignore regions) in the dataset's frames, the share with at least
/// half its area inside the crops the teacher saw (the complement of the ignore boxes written for
/// what it did not see). `None` when no frame has ground truth.
pub fn coverage(dataset: &Path, truth: &MotTruth) -> anyhow::Result<Option<f64>> {
    let (mut covered, mut total) = (0usize, 0usize);
    for split in ["train", "eval"] {
        let path = dataset.join(split).join("annotations.json");
        let coco: Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
        )?;
        for image in coco["images"].as_array().into_iter().flatten() {
            let id = image["id"].as_u64().unwrap_or(0);
            let frame_index: u64 = image["sample"]
                .as_str()
                .and_then(|s| s.strip_prefix('f'))
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            let (w, h) = (
                image["width"].as_f64().unwrap_or(0.0) as f32,
                image["height"].as_f64().unwrap_or(0.0) as f32,
            );
            let unseen: Vec<BBox> = coco["annotations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["image_id"].as_u64() == Some(id) && a["iscrowd"].as_u64() == Some(1))
                .filter_map(|a| {
                    let b: Vec<f32> = a["bbox"]
                        .as_array()?
                        .iter()
                        .filter_map(|v| v.as_f64().map(|v| v as f32))
                        .collect();
                    Some(BBox::xywh(b[0], b[1], b[2], b[3]))
                })
                .collect();
            for (b, crowd) in truth.of_frame(frame_index + 1, w, h) {
                if crowd {
                    continue;
                }
                total += 1;
                let outside: f32 = unseen.iter().map(|u| b.intersection(u)).sum();
                if outside <= b.area() / 2.0 {
                    covered += 1;
                }
            }
        }
    }
    Ok((total > 0).then(|| covered as f64 / total as f64))
}

pub struct HeldOut<'a> {
    pub video: &'a str,
    /// 0-based index of the first held-out frame; `last` is one past the end.
    pub first: u64,
    pub last: u64,
    pub step: u64,
    pub runtime: &'a Runtime,
    pub student: &'a Path,
    pub tuned: &'a Path,
    pub teacher: &'a Mutex<Detector>,
    pub classes: &'a [u32],
    pub teacher_min_score: f32,
    pub ground_truth: Option<&'a MotTruth>,
    pub pictures: &'a Path,
}

fn scored(e: &Evaluation) -> Value {
    json!({
        "ap": e.ap, "ap50": e.ap50, "ap75": e.ap75,
        "perClass": e.per_class.iter().map(|c| json!({
            "class": autotuner_detect::labels::name(c.class_id), "groundTruth": c.ground_truth,
            "ap": c.ap, "ap50": c.ap50, "ap75": c.ap75,
        })).collect::<Vec<_>>(),
    })
}

fn gain(before: &Evaluation, after: &Evaluation) -> Option<f64> {
    Some(after.ap? / before.ap? - 1.0)
}

pub fn evaluate(h: &HeldOut<'_>) -> anyhow::Result<Value> {
    // The trainer's evaluation settings: every detection down to 0.05, as COCO AP expects.
    let options = DetectOptions::for_evaluation(h.classes);
    let mut student = Detector::load(h.runtime, h.student, Family::SsdRaw, DevicePreference::Cpu)?;
    let mut tuned = Detector::load(h.runtime, h.tuned, Family::SsdRaw, DevicePreference::Cpu)?;
    let mut teacher = h.teacher.lock().unwrap_or_else(|e| e.into_inner());
    let source = Source::start(SourceConfig::new(h.video))?;
    let (mut images, mut truth, mut pseudo) = (Vec::new(), Vec::new(), Vec::new());
    let (mut before, mut after, mut by_teacher) = (Vec::new(), Vec::new(), Vec::new());
    let evaluated = (h.last - h.first).div_ceil(h.step);
    let drawn: Vec<usize> = (1..=3).map(|k| evaluated as usize * k / 4).collect();
    let mut rgb = Vec::new();
    let mut progress = autotuner_trainer::train::Progress::new();
    let mut done = 0usize;
    std::fs::create_dir_all(h.pictures.join("pictures"))?;
    let mut pictures: Vec<Value> = Vec::new();
    while let Some(frame) = source.next_frame() {
        let index = frame.index;
        if index >= h.last {
            source.recycle(frame);
            break;
        }
        if index < h.first || !(index - h.first).is_multiple_of(h.step) {
            source.recycle(frame);
            continue;
        }
        let (w, hgt) = (frame.width, frame.height);
        picture::region_rgb(&frame, Rect::new(0, 0, w as u32, hgt as u32), &mut rgb);
        source.recycle(frame);
        let image = RgbImage::new(&rgb, w, hgt)?;
        let id = index + 1;
        images.push(id);
        let found_before = student.detect(&[image], &options)?.remove(0);
        let found_after = tuned.detect(&[image], &options)?.remove(0);
        let found_teacher = teacher.detect(&[image], &options)?.remove(0);
        for d in found_teacher.iter().filter(|d| d.score >= h.teacher_min_score) {
            pseudo.push(GroundTruth {
                image_id: id,
                class_id: d.class_id,
                bbox: d.bbox,
                crowd: false,
            });
        }
        if let Some(gt) = h.ground_truth {
            for (bbox, crowd) in gt.of_frame(id, w as f32, hgt as f32) {
                truth.push(GroundTruth {
                    image_id: id,
                    class_id: 1,
                    bbox,
                    crowd,
                });
            }
        }
        let tag = |list: &mut Vec<ImageDetection>, found: &[Detection]| {
            list.extend(found.iter().map(|&detection| ImageDetection {
                image_id: id,
                detection,
            }))
        };
        tag(&mut before, &found_before);
        tag(&mut after, &found_after);
        tag(&mut by_teacher, &found_teacher);
        if drawn.contains(&done) {
            pictures.push(draw(h.pictures, id, &rgb, w, hgt, &found_before, &found_after)?);
        }
        done += 1;
        progress.update("held-out evaluation", done, evaluated as usize, "");
    }
    eprintln!();
    if let Some(e) = source.take_error() {
        return Err(e).context("read the held-out frames");
    }
    anyhow::ensure!(!images.is_empty(), "no held-out frame was decoded");
    let teacher_view =
        |detections: &[ImageDetection]| eval::evaluate(&images, h.classes, &pseudo, detections);
    let (b, a) = (teacher_view(&before), teacher_view(&after));
    let mut out = json!({
        "frames": images.len(),
        "againstTeacher": {
            "note": "the teacher's own labels on the held-out frames (at the labelling threshold) taken as the truth",
            "offTheShelf": scored(&b), "tuned": scored(&a), "apRelativeGain": gain(&b, &a),
        },
        "pictures": pictures,
    });
    if h.ground_truth.is_some() {
        let gt_view = |detections: &[ImageDetection]| eval::evaluate(&images, &[1], &truth, detections);
        let (b, a, t) = (gt_view(&before), gt_view(&after), gt_view(&by_teacher));
        let gap_closed = match (b.ap50, a.ap50, t.ap50) {
            (Some(b), Some(a), Some(t)) if t > b => Some((a - b) / (t - b)),
            _ => None,
        };
        out["againstGroundTruth"] = json!({
            "offTheShelf": scored(&b), "tuned": scored(&a), "teacher": scored(&t),
            "apRelativeGain": gain(&b, &a), "ap50GapClosed": gap_closed,
        });
    }
    Ok(out)
}

/// Draws the detections (score >= 0.5) of both students on a frame; returns the pictures' names.
fn draw(
    dir: &Path,
    id: u64,
    rgb: &[u8],
    width: usize,
    height: usize,
    before: &[Detection],
    after: &[Detection],
) -> anyhow::Result<Value> {
    let mut names = Vec::new();
    for (kind, found, colour) in [
        ("before", before, [230u8, 60, 40]),
        ("after", after, [40u8, 200, 60]),
    ] {
        let mut img =
            image::RgbImage::from_raw(width as u32, height as u32, rgb.to_vec()).context("frame buffer")?;
        for d in found.iter().filter(|d| d.score >= 0.5) {
            let b = d.bbox.clip(width as f32, height as f32);
            let (x0, y0, x1, y1) = (
                b.x0 as u32,
                b.y0 as u32,
                (b.x1 as u32).min(width as u32 - 1),
                (b.y1 as u32).min(height as u32 - 1),
            );
            for t in 0..2u32 {
                for x in x0..=x1 {
                    img.put_pixel(x, (y0 + t).min(y1), image::Rgb(colour));
                    img.put_pixel(x, y1.saturating_sub(t).max(y0), image::Rgb(colour));
                }
                for y in y0..=y1 {
                    img.put_pixel((x0 + t).min(x1), y, image::Rgb(colour));
                    img.put_pixel(x1.saturating_sub(t).max(x0), y, image::Rgb(colour));
                }
            }
        }
        let name = format!("pictures/frame-{id:06}-{kind}.png");
        img.save(dir.join(&name))
            .with_context(|| format!("write {name}"))?;
        names.push(name);
    }
    Ok(json!({"frame": id, "before": names[0], "after": names[1],
        "detectionsBefore": before.iter().filter(|d| d.score >= 0.5).count(),
        "detectionsAfter": after.iter().filter(|d| d.score >= 0.5).count()}))
}

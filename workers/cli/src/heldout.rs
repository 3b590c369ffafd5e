//! The held-out part of the video: the off-the-shelf and the tuned student (and the teacher) on
//! frames none of them was tuned on, scored against the ground truth when there is one and
//! against the teacher's labels always; a few frames drawn before and after.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use autotuner_detect::eval::{self, Evaluation, GroundTruth, ImageDetection};
use autotuner_detect::truth::Truth;
use autotuner_detect::{
    BBox, DetectOptions, Detection, Detector, DevicePreference, Family, RgbImage, Runtime,
};
use serde_json::{Value, json};

use crate::footage::Footage;

/// Of the ground-truth boxes (not ignore regions) in the dataset's frames, the share with at least
/// half its area inside the crops the teacher saw (the complement of the ignore boxes written for
/// what it did not see). `None` when no frame has ground truth.
pub fn coverage(dataset: &Path, truth: &Truth) -> anyhow::Result<Option<f64>> {
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
            for b in truth.frame(frame_index).iter().filter(|b| !b.ignore) {
                let b = b.bbox;
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

/// The bootstrap of the held-out gain against the teacher: as many draws as the trainer's gate
/// takes, from a fixed seed (the same frames give the same bound).
const GAIN_DRAWS: usize = 1000;
const GAIN_SEED: u64 = 0x5eed;

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
    pub ground_truth: Option<&'a Truth>,
    pub pictures: &'a Path,
}

fn scored(e: &Evaluation) -> Value {
    crate::evaluate::scores_json(e)
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
    let (mut images, mut truth, mut pseudo) = (Vec::new(), Vec::new(), Vec::new());
    let (mut before, mut after, mut by_teacher) = (Vec::new(), Vec::new(), Vec::new());
    let evaluated = (h.last - h.first).div_ceil(h.step);
    let typical = evaluated as usize / 2;
    let mut examples = Examples::default();
    let mut progress = autotuner_trainer::progress::Progress::new();
    let mut done = 0usize;
    std::fs::create_dir_all(h.pictures.join("pictures"))?;
    let held_out = |index: u64| index >= h.first && (index - h.first).is_multiple_of(h.step);
    Footage::Video(h.video.to_string())
        .for_each(h.last, held_out, |frame| {
            let (index, w, hgt) = (frame.index, frame.width, frame.height);
            let image = RgbImage::new(frame.rgb, w, hgt)?;
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
                truth.extend(gt.ground_truth(index, h.classes));
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
            // What tuning fixed and what it broke, judged on this frame against the ground
            // truth when it covers the frame, else against the teacher's labels.
            let reference: Vec<GroundTruth> = match h.ground_truth {
                Some(gt) if gt.covers(index) => gt.ground_truth(index, h.classes),
                _ => pseudo.iter().filter(|g| g.image_id == id).copied().collect(),
            };
            let judged = Judged {
                frame: id,
                before: FrameErrors::of(&reference, &found_before),
                after: FrameErrors::of(&reference, &found_after),
            };
            examples.offer(judged, done == typical, frame.rgb, (w, hgt));
            done += 1;
            progress.update("held-out evaluation", done, evaluated as usize, "");
            Ok(true)
        })
        .context("read the held-out frames")?;
    eprintln!();
    anyhow::ensure!(!images.is_empty(), "no held-out frame was decoded");
    let pictures = examples.draw(h.pictures)?;
    let teacher_view =
        |detections: &[ImageDetection]| eval::evaluate(&images, h.classes, &pseudo, detections);
    let (b, a) = (teacher_view(&before), teacher_view(&after));
    // The gate's judgement (against the teacher, with its bootstrap bound) had the held-out frames
    // been its eval split: the same judge on many more images than a short video's split holds.
    let held_out_gain = eval::paired_gain(
        &images, h.classes, &pseudo, &before, &after, GAIN_DRAWS, GAIN_SEED,
    )
    .map(autotuner_trainer::report::GainReport::from);
    let mut out = json!({
        "frames": images.len(),
        "againstTeacher": {
            "note": "the teacher's own labels on the held-out frames (at the labelling threshold) taken as the truth",
            "offTheShelf": scored(&b), "tuned": scored(&a), "apRelativeGain": gain(&b, &a),
            "gain": held_out_gain,
        },
        "pictures": pictures,
    });
    if h.ground_truth.is_some() {
        // Only the frames the ground truth covers (a COCO or YOLO ground truth may list a few).
        let covered: Vec<u64> = images
            .iter()
            .copied()
            .filter(|&id| h.ground_truth.is_some_and(|gt| gt.covers(id - 1)))
            .collect();
        anyhow::ensure!(
            !covered.is_empty(),
            "the ground truth covers none of the held-out frames"
        );
        let gt_view = |detections: &[ImageDetection]| eval::evaluate(&covered, h.classes, &truth, detections);
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

/// Detections at a working threshold (score >= 0.5) matched to a frame's reference boxes at IoU
/// 0.5, greedily by score as COCO does: hits, false boxes and missed objects. Detections mostly
/// inside an ignore region are none of these.
#[derive(Debug, Clone, Default)]
struct FrameErrors {
    hits: Vec<BBox>,
    false_boxes: Vec<BBox>,
    missed: Vec<BBox>,
}

impl FrameErrors {
    fn of(reference: &[GroundTruth], found: &[Detection]) -> Self {
        let mut found: Vec<&Detection> = found.iter().filter(|d| d.score >= 0.5).collect();
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut taken = vec![false; reference.len()];
        let mut out = Self::default();
        for d in found {
            let best = reference
                .iter()
                .enumerate()
                .filter(|(i, g)| !taken[*i] && !g.crowd && g.class_id == d.class_id)
                .map(|(i, g)| (i, g.bbox.iou(&d.bbox)))
                .filter(|&(_, iou)| iou >= 0.5)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((i, _)) = best {
                taken[i] = true;
                out.hits.push(d.bbox);
            } else if !reference
                .iter()
                .any(|g| g.crowd && g.bbox.intersection(&d.bbox) >= 0.5 * d.bbox.area())
            {
                out.false_boxes.push(d.bbox);
            }
        }
        out.missed = reference
            .iter()
            .zip(&taken)
            .filter(|(g, taken)| !g.crowd && !**taken)
            .map(|(g, _)| g.bbox)
            .collect();
        out
    }

    fn errors(&self) -> usize {
        self.false_boxes.len() + self.missed.len()
    }
}

#[derive(Clone)]
struct Judged {
    frame: u64,
    before: FrameErrors,
    after: FrameErrors,
}

impl Judged {
    /// Errors tuning removed from this frame (negative: added).
    fn fixed(&self) -> i64 {
        self.before.errors() as i64 - self.after.errors() as i64
    }
}

/// The held-out frames worth looking at, kept while the frames stream by: the one tuning fixed
/// most, the one it broke most, and one from the middle.
#[derive(Default)]
struct Examples {
    fixed: Option<(Judged, Vec<u8>)>,
    broke: Option<(Judged, Vec<u8>)>,
    typical: Option<(Judged, Vec<u8>)>,
    size: (usize, usize),
}

impl Examples {
    fn offer(&mut self, frame: Judged, typical: bool, rgb: &[u8], size: (usize, usize)) {
        self.size = size;
        let delta = frame.fixed();
        if delta > 0 && self.fixed.as_ref().is_none_or(|(f, _)| delta > f.fixed()) {
            self.fixed = Some((frame.clone(), rgb.to_vec()));
        }
        if delta < 0 && self.broke.as_ref().is_none_or(|(f, _)| delta < f.fixed()) {
            self.broke = Some((frame.clone(), rgb.to_vec()));
        }
        if typical {
            self.typical = Some((frame, rgb.to_vec()));
        }
    }

    /// Writes each kept frame twice (off-the-shelf, tuned) with hits green, false boxes red and
    /// missed objects yellow; returns what the report shows.
    fn draw(self, dir: &Path) -> anyhow::Result<Vec<Value>> {
        let (width, height) = self.size;
        let mut out = Vec::new();
        for (kind, kept) in [
            ("fixed", self.fixed),
            ("broke", self.broke),
            ("typical", self.typical),
        ] {
            let Some((judged, rgb)) = kept else { continue };
            let mut names = Vec::new();
            for (side, errors) in [("before", &judged.before), ("after", &judged.after)] {
                let mut img = image::RgbImage::from_raw(width as u32, height as u32, rgb.clone())
                    .context("frame buffer")?;
                let corners =
                    |boxes: &[BBox]| boxes.iter().map(|b| [b.x0, b.y0, b.x1, b.y1]).collect::<Vec<_>>();
                crate::video_out::draw_boxes(
                    &mut img,
                    width,
                    height,
                    corners(&errors.missed),
                    [250, 210, 20],
                    2,
                );
                crate::video_out::draw_boxes(
                    &mut img,
                    width,
                    height,
                    corners(&errors.hits),
                    [40, 200, 60],
                    2,
                );
                crate::video_out::draw_boxes(
                    &mut img,
                    width,
                    height,
                    corners(&errors.false_boxes),
                    [230, 40, 40],
                    2,
                );
                let name = format!("pictures/frame-{:06}-{side}.png", judged.frame);
                img.save(dir.join(&name))
                    .with_context(|| format!("write {name}"))?;
                names.push(name);
            }
            let counts = |e: &FrameErrors| json!({"hits": e.hits.len(), "falseBoxes": e.false_boxes.len(), "missed": e.missed.len()});
            out.push(json!({
                "kind": kind, "frame": judged.frame, "before": names[0], "after": names[1],
                "errorsBefore": counts(&judged.before), "errorsAfter": counts(&judged.after),
            }));
        }
        Ok(out)
    }
}

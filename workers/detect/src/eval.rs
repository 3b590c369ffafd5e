//! COCO-style average precision (AP@[.5:.95], AP@.5, AP@.75), per class and mean, computed exactly
//! as pycocotools' `COCOeval` does for boxes (area range "all", at most 100 detections per image):
//! crowd ground truth (MOT's ignore regions, flag 0) is matched by intersection over the
//! detection's area and makes a detection neither a true nor a false positive; precision is
//! interpolated at 101 recall points. A test compares every figure with pycocotools.

use crate::geometry::{BBox, Detection};

/// A ground-truth object of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundTruth {
    pub image_id: u64,
    pub class_id: u32,
    pub bbox: BBox,
    /// An ignore region: detections inside it count for nothing.
    pub crowd: bool,
}

/// A detection on one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageDetection {
    pub image_id: u64,
    pub detection: Detection,
}

/// AP of one class. `None` when the class has no (non-crowd) ground truth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassAp {
    pub class_id: u32,
    pub ground_truth: usize,
    pub ap: Option<f64>,
    pub ap50: Option<f64>,
    pub ap75: Option<f64>,
}

/// The means over the classes that have ground truth (`-1` in pycocotools when none has).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub ap: Option<f64>,
    pub ap50: Option<f64>,
    pub ap75: Option<f64>,
    pub per_class: Vec<ClassAp>,
    /// Per class with ground truth: the interpolated precision at IoU 0.5 at the 101 recall
    /// points 0, 0.01, ..., 1 (0 past the highest recall reached): the precision-recall curve.
    pub curves50: Vec<(u32, Vec<f64>)>,
}

const MAX_DETECTIONS: usize = 100;
const RECALL_POINTS: usize = 101;

/// pycocotools' thresholds: numpy.linspace(.5, .95, 10) and numpy.linspace(0, 1, 101).
fn iou_thresholds() -> [f64; 10] {
    let step = (0.95 - 0.5) / 9.0;
    let mut t = [0.0; 10];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f64 * step + 0.5;
    }
    t[9] = 0.95;
    t
}

fn recall_thresholds() -> [f64; RECALL_POINTS] {
    let mut r = [0.0; RECALL_POINTS];
    for (i, v) in r.iter_mut().enumerate() {
        *v = i as f64 * 0.01;
    }
    r[RECALL_POINTS - 1] = 1.0;
    r
}

/// `[x, y, w, h]` in f64, as a detector's output is written for pycocotools.
pub fn xywh(b: &BBox) -> [f64; 4] {
    let (x0, y0) = (b.x0 as f64, b.y0 as f64);
    [x0, y0, b.x1 as f64 - x0, b.y1 as f64 - y0]
}

/// pycocotools' bbIou: IoU, or intersection over the detection's area for crowd ground truth.
fn iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// One image and class: detection scores, and per IoU threshold which detections matched and which
/// are ignored.
struct ImageResult {
    scores: Vec<f64>,
    matched: Vec<Vec<bool>>,
    ignored: Vec<Vec<bool>>,
    counted_ground_truth: usize,
}

fn evaluate_image(gts: &[&GroundTruth], dts: &[&ImageDetection], thresholds: &[f64; 10]) -> ImageResult {
    // Ground truth: non-crowd first (stable); detections: by descending score (stable), capped.
    let mut g: Vec<&GroundTruth> = gts.to_vec();
    g.sort_by_key(|gt| gt.crowd);
    let mut d: Vec<&ImageDetection> = dts.to_vec();
    d.sort_by(|a, b| (b.detection.score as f64).total_cmp(&(a.detection.score as f64)));
    d.truncate(MAX_DETECTIONS);
    let gb: Vec<[f64; 4]> = g.iter().map(|gt| xywh(&gt.bbox)).collect();
    let db: Vec<[f64; 4]> = d.iter().map(|dt| xywh(&dt.detection.bbox)).collect();
    let ious: Vec<Vec<f64>> = db
        .iter()
        .map(|dbox| {
            gb.iter()
                .zip(&g)
                .map(|(gbox, gt)| iou(dbox, gbox, gt.crowd))
                .collect()
        })
        .collect();
    let mut matched = vec![vec![false; d.len()]; thresholds.len()];
    let mut ignored = vec![vec![false; d.len()]; thresholds.len()];
    for (t, &threshold) in thresholds.iter().enumerate() {
        let mut gt_taken = vec![false; g.len()];
        for di in 0..d.len() {
            let mut best = threshold.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for gi in 0..g.len() {
                if gt_taken[gi] && !g[gi].crowd {
                    continue;
                }
                // Once matched to real ground truth, crowd regions (sorted last) cannot win.
                if let Some(mi) = m
                    && !g[mi].crowd
                    && g[gi].crowd
                {
                    break;
                }
                if ious[di][gi] < best {
                    continue;
                }
                best = ious[di][gi];
                m = Some(gi);
            }
            if let Some(mi) = m {
                ignored[t][di] = g[mi].crowd;
                matched[t][di] = true;
                gt_taken[mi] = true;
            }
        }
    }
    ImageResult {
        scores: d.iter().map(|dt| dt.detection.score as f64).collect(),
        matched,
        ignored,
        counted_ground_truth: g.iter().filter(|gt| !gt.crowd).count(),
    }
}

/// Evaluates `detections` against `ground_truth` over `images` (detections on other images are
/// ignored) for `classes`.
pub fn evaluate(
    images: &[u64],
    classes: &[u32],
    ground_truth: &[GroundTruth],
    detections: &[ImageDetection],
) -> Evaluation {
    let thresholds = iou_thresholds();
    let recalls = recall_thresholds();
    let mut images: Vec<u64> = images.to_vec();
    images.sort_unstable();
    images.dedup();
    let mut classes: Vec<u32> = classes.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let mut per_class = Vec::new();
    let mut curves50 = Vec::new();
    // precision[t][k][r], -1 where a class has no ground truth (pycocotools' convention).
    let mut precision = vec![vec![[-1.0f64; RECALL_POINTS]; classes.len()]; thresholds.len()];
    for (k, &class) in classes.iter().enumerate() {
        // Per image in `images`' order (one pass over each list, not one per image: the paired
        // bootstrap evaluates a thousand draws).
        let mut gts_of: Vec<Vec<&GroundTruth>> = vec![Vec::new(); images.len()];
        for g in ground_truth.iter().filter(|g| g.class_id == class) {
            if let Ok(i) = images.binary_search(&g.image_id) {
                gts_of[i].push(g);
            }
        }
        let mut dts_of: Vec<Vec<&ImageDetection>> = vec![Vec::new(); images.len()];
        for d in detections.iter().filter(|d| d.detection.class_id == class) {
            if let Ok(i) = images.binary_search(&d.image_id) {
                dts_of[i].push(d);
            }
        }
        let mut results = Vec::new();
        for (gts, dts) in gts_of.iter().zip(&dts_of) {
            if gts.is_empty() && dts.is_empty() {
                continue;
            }
            results.push(evaluate_image(gts, dts, &thresholds));
        }
        let counted: usize = results.iter().map(|r| r.counted_ground_truth).sum();
        if counted == 0 {
            per_class.push(ClassAp {
                class_id: class,
                ground_truth: 0,
                ap: None,
                ap50: None,
                ap75: None,
            });
            continue;
        }
        // All detections of the class, by descending score (stable over image order).
        let mut order: Vec<(usize, usize)> = results
            .iter()
            .enumerate()
            .flat_map(|(i, r)| (0..r.scores.len()).map(move |j| (i, j)))
            .collect();
        order.sort_by(|a, b| results[b.0].scores[b.1].total_cmp(&results[a.0].scores[a.1]));
        for (t, precision_t) in precision.iter_mut().enumerate() {
            let (mut tp, mut fp) = (0.0f64, 0.0f64);
            let mut rc = Vec::with_capacity(order.len());
            let mut pr = Vec::with_capacity(order.len());
            for &(i, j) in &order {
                if results[i].ignored[t][j] {
                    // Neither true nor false positive: the cumulative sums repeat.
                } else if results[i].matched[t][j] {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
                rc.push(tp / counted as f64);
                pr.push(tp / (fp + tp + f64::EPSILON));
            }
            for i in (1..pr.len()).rev() {
                if pr[i] > pr[i - 1] {
                    pr[i - 1] = pr[i];
                }
            }
            let q = &mut precision_t[k];
            *q = [0.0; RECALL_POINTS];
            for (ri, &r) in recalls.iter().enumerate() {
                // numpy.searchsorted(rc, r, side="left"): the first index with rc >= r.
                let pi = rc.partition_point(|&v| v < r);
                if pi >= pr.len() {
                    break;
                }
                q[ri] = pr[pi];
            }
        }
        let mean = |ts: &[usize]| {
            let values: Vec<f64> = ts.iter().flat_map(|&t| precision[t][k].iter().copied()).collect();
            values.iter().sum::<f64>() / values.len() as f64
        };
        curves50.push((class, precision[0][k].to_vec()));
        per_class.push(ClassAp {
            class_id: class,
            ground_truth: counted,
            ap: Some(mean(&(0..thresholds.len()).collect::<Vec<_>>())),
            ap50: Some(mean(&[0])),
            ap75: Some(mean(&[5])),
        });
    }
    let overall = |ts: &[usize]| {
        let values: Vec<f64> = ts
            .iter()
            .flat_map(|&t| precision[t].iter().flat_map(|q| q.iter().copied()))
            .filter(|&v| v > -1.0)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    Evaluation {
        ap: overall(&(0..thresholds.len()).collect::<Vec<_>>()),
        ap50: overall(&[0]),
        ap75: overall(&[5]),
        per_class,
        curves50,
    }
}

/// How far a comparison of two detectors on the same images can be trusted: the gain of `b` over
/// `a` in AP@[.5:.95] and AP@.5, and its one-sided 95% lower bound from a paired bootstrap over
/// the images (each draw takes as many images as there are, with replacement, and scores both
/// detectors on the same draw). On a small split a gain can be the luck of which images were
/// drawn; the lower bound says how much of it the images themselves support.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gain {
    pub ap: f64,
    pub ap50: f64,
    /// The 5th percentile of the draws' gains.
    pub ap_lower_bound: f64,
    pub ap50_lower_bound: f64,
    pub draws: usize,
}

/// The paired bootstrap of [`Gain`], `draws` times, reproducible from `seed`. `None` when either
/// detector has no AP on these images (no ground truth).
pub fn paired_gain(
    images: &[u64],
    classes: &[u32],
    ground_truth: &[GroundTruth],
    a: &[ImageDetection],
    b: &[ImageDetection],
    draws: usize,
    seed: u64,
) -> Option<Gain> {
    let mut images: Vec<u64> = images.to_vec();
    images.sort_unstable();
    images.dedup();
    let gain = |truth: &[GroundTruth], a: &[ImageDetection], b: &[ImageDetection], ids: &[u64]| {
        let (ea, eb) = (evaluate(ids, classes, truth, a), evaluate(ids, classes, truth, b));
        Some((eb.ap? - ea.ap?, eb.ap50? - ea.ap50?))
    };
    let (ap, ap50) = gain(ground_truth, a, b, &images)?;
    // Everything of one image, so that a draw is cheap to assemble: the drawn image gets the id
    // of its place in the draw (an image drawn twice counts twice).
    let per_image = |items: &[ImageDetection]| {
        let mut of: Vec<Vec<Detection>> = vec![Vec::new(); images.len()];
        for d in items {
            if let Ok(i) = images.binary_search(&d.image_id) {
                of[i].push(d.detection);
            }
        }
        of
    };
    let (a_of, b_of) = (per_image(a), per_image(b));
    let mut truth_of: Vec<Vec<GroundTruth>> = vec![Vec::new(); images.len()];
    for g in ground_truth {
        if let Ok(i) = images.binary_search(&g.image_id) {
            truth_of[i].push(*g);
        }
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let ids: Vec<u64> = (0..images.len() as u64).collect();
    let (mut ap_gains, mut ap50_gains) = (Vec::with_capacity(draws), Vec::with_capacity(draws));
    let (mut truth, mut da, mut db) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..draws {
        truth.clear();
        da.clear();
        db.clear();
        for &id in &ids {
            let i = rng.usize(..images.len());
            truth.extend(truth_of[i].iter().map(|g| GroundTruth { image_id: id, ..*g }));
            let tag = |d: &Detection| ImageDetection {
                image_id: id,
                detection: *d,
            };
            da.extend(a_of[i].iter().map(tag));
            db.extend(b_of[i].iter().map(tag));
        }
        // A draw without ground truth has no AP: it says nothing, and is left out.
        if let Some((g, g50)) = gain(&truth, &da, &db, &ids) {
            ap_gains.push(g);
            ap50_gains.push(g50);
        }
    }
    let fifth = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 20).copied()
    };
    let drawn = ap_gains.len();
    Some(Gain {
        ap,
        ap50,
        ap_lower_bound: fifth(ap_gains).unwrap_or(ap),
        ap50_lower_bound: fifth(ap50_gains).unwrap_or(ap50),
        draws: drawn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(image_id: u64, x: f32, crowd: bool) -> GroundTruth {
        GroundTruth {
            image_id,
            class_id: 1,
            bbox: BBox::xywh(x, 0.0, 10.0, 10.0),
            crowd,
        }
    }

    fn dt(image_id: u64, x: f32, score: f32) -> ImageDetection {
        ImageDetection {
            image_id,
            detection: Detection {
                bbox: BBox::xywh(x, 0.0, 10.0, 10.0),
                class_id: 1,
                score,
            },
        }
    }

    fn close(v: Option<f64>, want: f64) -> bool {
        v.is_some_and(|v| (v - want).abs() < 1e-9)
    }

    #[test]
    fn perfect_detections_score_one() {
        let e = evaluate(
            &[1, 2],
            &[1],
            &[gt(1, 0.0, false), gt(2, 50.0, false)],
            &[dt(1, 0.0, 0.9), dt(2, 50.0, 0.8)],
        );
        assert!(close(e.ap, 1.0) && close(e.ap50, 1.0), "{e:?}");
    }

    #[test]
    fn misses_and_false_positives_lower_precision_and_recall() {
        // One hit, one miss: recall tops at 0.5 -> AP@.5 = 51/101 points of precision 1.
        let e = evaluate(
            &[1],
            &[1],
            &[gt(1, 0.0, false), gt(1, 100.0, false)],
            &[dt(1, 0.0, 0.9)],
        );
        assert!((e.ap50.unwrap() - 51.0 / 101.0).abs() < 1e-12, "{e:?}");
        // Its curve: precision 1 up to recall 0.5, nothing past it.
        let (class, curve) = &e.curves50[0];
        assert_eq!((*class, curve.len()), (1, 101));
        assert!(
            curve[..=50].iter().all(|&p| (p - 1.0).abs() < 1e-9) && curve[51..].iter().all(|&p| p == 0.0),
            "{curve:?}"
        );
        // A higher-scored false positive halves the precision at every recall.
        let e = evaluate(
            &[1],
            &[1],
            &[gt(1, 0.0, false)],
            &[dt(1, 0.0, 0.5), dt(1, 300.0, 0.9)],
        );
        assert!((e.ap50.unwrap() - 0.5).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn detections_in_ignore_regions_count_for_nothing() {
        let truth = [
            gt(1, 0.0, false),
            GroundTruth {
                bbox: BBox::xywh(100.0, 0.0, 50.0, 50.0),
                ..gt(1, 0.0, true)
            },
        ];
        let with_ignored = evaluate(&[1], &[1], &truth, &[dt(1, 0.0, 0.5), dt(1, 110.0, 0.9)]);
        assert!(close(with_ignored.ap50, 1.0), "{with_ignored:?}");
        assert_eq!(with_ignored.per_class[0].ground_truth, 1);
    }

    /// Ten images of one person each; `found` says on which the detector finds them.
    fn ten_images(found: impl Fn(u64) -> bool) -> (Vec<u64>, Vec<GroundTruth>, Vec<ImageDetection>) {
        let images: Vec<u64> = (1..=10).collect();
        let truth = images.iter().map(|&i| gt(i, 0.0, false)).collect();
        let detections = images
            .iter()
            .filter(|&&i| found(i))
            .map(|&i| dt(i, 0.0, 0.9))
            .collect();
        (images, truth, detections)
    }

    #[test]
    fn the_same_detector_gains_nothing_and_its_lower_bound_is_nothing() {
        let (images, truth, a) = ten_images(|i| i % 2 == 0);
        let g = paired_gain(&images, &[1], &truth, &a, &a, 200, 7).unwrap();
        assert_eq!(
            (g.ap, g.ap_lower_bound, g.ap50, g.ap50_lower_bound, g.draws),
            (0.0, 0.0, 0.0, 0.0, 200)
        );
    }

    #[test]
    fn a_gain_on_most_images_has_a_lower_bound_above_nothing() {
        // a finds 3 of 10 people, b 9 of 10.
        let (images, truth, a) = ten_images(|i| i <= 3);
        let (_, _, b) = ten_images(|i| i <= 9);
        let g = paired_gain(&images, &[1], &truth, &a, &b, 1000, 7).unwrap();
        assert!((g.ap50 - (91.0 - 31.0) / 101.0).abs() < 1e-9, "{g:?}");
        assert!(g.ap50_lower_bound > 0.2 && g.ap50_lower_bound < g.ap50, "{g:?}");
        assert!(g.ap_lower_bound > 0.2, "{g:?}");
    }

    #[test]
    fn a_gain_that_rests_on_one_image_of_ten_has_a_lower_bound_of_nothing() {
        // b finds one more person than a: a tenth of the recall, all of it on image 10, which
        // a third of the draws leave out.
        let (images, truth, a) = ten_images(|i| i <= 5);
        let (_, _, b) = ten_images(|i| i <= 5 || i == 10);
        let g = paired_gain(&images, &[1], &truth, &a, &b, 1000, 7).unwrap();
        assert!(g.ap50 > 0.09, "{g:?}");
        assert!(g.ap50_lower_bound <= 0.0, "{g:?}");
        // Seeded: the same figures every time.
        assert_eq!(paired_gain(&images, &[1], &truth, &a, &b, 1000, 7), Some(g));
    }

    #[test]
    fn no_ground_truth_means_no_gain_to_bound() {
        let (images, _, a) = ten_images(|_| true);
        assert_eq!(paired_gain(&images, &[1], &[], &a, &a, 100, 7), None);
    }

    #[test]
    fn classes_without_ground_truth_are_left_out_of_the_mean() {
        let e = evaluate(&[1], &[1, 3], &[gt(1, 0.0, false)], &[dt(1, 0.0, 0.9)]);
        assert_eq!(e.per_class[1].ap, None);
        assert!(close(e.ap, 1.0), "{e:?}");
        assert_eq!(evaluate(&[1], &[3], &[], &[]).ap, None);
    }
}

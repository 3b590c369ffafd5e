//! SSD targets and loss as the pretrained SSD-MobileNetV2 was trained (TF Object Detection API
//! config `ssd_mobilenet_v2_coco`): argmax matching at IoU 0.5 with a forced best anchor per box,
//! the Faster R-CNN box coder (scales 10, 10, 5, 5), sigmoid cross-entropy for the classes,
//! smooth L1 for the boxes, hard-negative mining (at most 3 negatives per positive, at least 3 per
//! image), both losses normalised by the number of matched anchors.
//!
//! Only the dataset's classes are scored: the student keeps its other 90 outputs as they were, and
//! with sigmoid scores the background column plays no part at inference.

use autotuner_detect::anchors::{self, Anchor};
use burn::prelude::*;

/// Per-anchor targets of one training view.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// `-1` ignored, `0` background, `k + 1`: the dataset's class `k`.
    pub class: Vec<i8>,
    /// The encoded box of each matched anchor (zeros elsewhere), 4 per anchor.
    pub boxes: Vec<f32>,
}

impl Targets {
    pub fn positives(&self) -> usize {
        self.class.iter().filter(|&&c| c > 0).count()
    }
}

const MATCH_IOU: f32 = 0.5;
/// An anchor mostly inside an ignore region is neither object nor background.
const IGNORE_IOA: f32 = 0.5;

/// Assigns `boxes` (relative `(ymin, xmin, ymax, xmax)` with the index of their class among the
/// dataset's classes) to `anchors`.
pub fn assign(anchors: &[Anchor], boxes: &[([f32; 4], usize)], ignore: &[[f32; 4]]) -> Targets {
    let coords: Vec<[f32; 4]> = boxes.iter().map(|(b, _)| *b).collect();
    let matched = anchors::match_anchors(anchors, &coords, MATCH_IOU);
    let mut class = vec![0i8; anchors.len()];
    let mut encoded = vec![0.0f32; anchors.len() * 4];
    for (j, (m, a)) in matched.iter().zip(anchors).enumerate() {
        match m {
            Some(g) => {
                class[j] = boxes[*g].1 as i8 + 1;
                encoded[4 * j..4 * j + 4].copy_from_slice(&anchors::encode(boxes[*g].0, a));
            }
            None => {
                let (y0, x0, y1, x1) = (
                    a.cy - a.h / 2.0,
                    a.cx - a.w / 2.0,
                    a.cy + a.h / 2.0,
                    a.cx + a.w / 2.0,
                );
                let covered = ignore.iter().any(|r| {
                    let ih = (y1.min(r[2]) - y0.max(r[0])).max(0.0);
                    let iw = (x1.min(r[3]) - x0.max(r[1])).max(0.0);
                    ih * iw >= IGNORE_IOA * a.h * a.w
                });
                if covered {
                    class[j] = -1;
                }
            }
        }
    }
    Targets {
        class,
        boxes: encoded,
    }
}

const NEGATIVES_PER_POSITIVE: usize = 3;
const MIN_NEGATIVES: usize = 3;

/// The loss of a batch, and its parts for the report.
#[derive(Debug)]
pub struct Loss {
    pub total: Tensor<1>,
    pub classification: f32,
    pub localization: f32,
}

/// Sigmoid cross-entropy with logits, elementwise: `max(x, 0) - x t + log(1 + exp(-|x|))`.
fn sigmoid_cross_entropy(logits: Tensor<3>, targets: Tensor<3>) -> Tensor<3> {
    let relu = logits.clone().clamp_min(0.0);
    let soft = logits.clone().abs().neg().exp().add_scalar(1.0).log();
    relu - logits * targets + soft
}

/// Smooth L1 (Huber, delta 1), elementwise.
fn smooth_l1(diff: Tensor<3>) -> Tensor<3> {
    let abs = diff.abs();
    let quadratic = abs.clone().clamp_max(1.0);
    // 0.5 q^2 + (|d| - q): quadratic below 1, linear above.
    quadratic.clone().powi_scalar(2).mul_scalar(0.5) + (abs - quadratic)
}

/// The SSD loss of predicted `boxes` `[B, anchors, 4]` and `logits` `[B, anchors, K]` against
/// `targets` (one per image).
pub fn ssd_loss(boxes: Tensor<3>, logits: Tensor<3>, targets: &[&Targets]) -> Loss {
    let device = logits.device();
    let [b, n, k] = logits.dims();
    let mut onehot = vec![0.0f32; b * n * k];
    let mut positive = vec![0.0f32; b * n];
    let mut box_targets = vec![0.0f32; b * n * 4];
    for (i, t) in targets.iter().enumerate() {
        for (j, &c) in t.class.iter().enumerate() {
            if c > 0 {
                onehot[(i * n + j) * k + c as usize - 1] = 1.0;
                positive[i * n + j] = 1.0;
            }
        }
        box_targets[i * n * 4..(i + 1) * n * 4].copy_from_slice(&t.boxes);
    }
    let onehot = Tensor::<3>::from_data(TensorData::new(onehot, [b, n, k]), &device);
    let per_anchor: Tensor<2> = sigmoid_cross_entropy(logits, onehot).sum_dim(2).squeeze_dim(2);

    // Hard-negative mining on the current losses (no gradient through the choice).
    let values: Vec<f32> = per_anchor
        .clone()
        .inner()
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 losses");
    let mut weight = positive.clone();
    let mut matched = 0usize;
    for (i, t) in targets.iter().enumerate() {
        let positives = t.positives();
        matched += positives;
        let mut negatives: Vec<usize> = (0..n).filter(|&j| t.class[j] == 0).collect();
        let keep = (positives * NEGATIVES_PER_POSITIVE)
            .max(MIN_NEGATIVES)
            .min(negatives.len());
        if keep > 0 && keep < negatives.len() {
            // The `keep` largest losses first.
            negatives
                .select_nth_unstable_by(keep - 1, |&a, &b| values[i * n + b].total_cmp(&values[i * n + a]));
        }
        for &j in &negatives[..keep] {
            weight[i * n + j] = 1.0;
        }
    }
    let normaliser = matched.max(1) as f32;
    let weight = Tensor::<2>::from_data(TensorData::new(weight, [b, n]), &device);
    let classification = (per_anchor * weight).sum().div_scalar(normaliser);

    let positive = Tensor::<3>::from_data(TensorData::new(positive, [b, n, 1]), &device);
    let box_targets = Tensor::<3>::from_data(TensorData::new(box_targets, [b, n, 4]), &device);
    let localization = (smooth_l1(boxes - box_targets) * positive)
        .sum()
        .div_scalar(normaliser);

    let parts = |t: &Tensor<1>| t.clone().inner().into_scalar::<f32>();
    Loss {
        classification: parts(&classification),
        localization: parts(&localization),
        total: classification + localization,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autotuner_detect::anchors::SsdAnchorConfig;

    #[test]
    fn a_box_gets_its_anchors_and_ignore_regions_their_own() {
        let anchors = SsdAnchorConfig::mobilenet_v2_300().anchors();
        let person = [0.2, 0.4, 0.6, 0.5];
        let t = assign(&anchors, &[(person, 0)], &[[0.0, 0.0, 0.2, 0.2]]);
        assert!(t.positives() >= 1);
        let j = t.class.iter().position(|&c| c == 1).unwrap();
        let back = anchors::decode(t.boxes[4 * j..4 * j + 4].try_into().unwrap(), &anchors[j]);
        for (a, b) in back.iter().zip(person) {
            assert!((a - b).abs() < 1e-5, "the target decodes to the box");
        }
        assert!(t.class.contains(&-1), "anchors in the ignore region are ignored");
        assert!(t.class.iter().filter(|&&c| c == 0).count() > 1800);
    }

    #[test]
    fn the_loss_mines_hard_negatives_and_falls_when_predictions_improve() {
        let device = Device::flex();
        let anchors = SsdAnchorConfig::mobilenet_v2_300().anchors();
        let t = assign(&anchors, &[([0.2, 0.4, 0.6, 0.5], 0)], &[]);
        let n = anchors.len();
        let logits = |good: bool| {
            let v: Vec<f32> = t
                .class
                .iter()
                .map(|&c| match (c > 0, good) {
                    (true, true) => 5.0,
                    (false, true) => -5.0,
                    _ => 0.0,
                })
                .collect();
            Tensor::<3>::from_data(TensorData::new(v, [1, n, 1]), &device)
        };
        let boxes = |v: f32| Tensor::<3>::from_data(TensorData::new(vec![v; n * 4], [1, n, 4]), &device);
        let bad = ssd_loss(boxes(3.0), logits(false), &[&t]);
        let good = ssd_loss(boxes(0.0), logits(true), &[&t]);
        // All-zero logits: ln 2 per scored anchor, positives + 3x as many negatives, over positives.
        let p = t.positives() as f32;
        assert!(
            (bad.classification - 4.0 * p * 2f32.ln() / p).abs() < 1e-4,
            "{}",
            bad.classification
        );
        assert!(good.classification < 0.05 && good.classification < bad.classification);
        assert!(bad.localization > good.localization);
        // A wrong prediction of 3 for a target 0.8 costs 3 - 0.8 - 0.5 in smooth L1.
        let total = bad.total.into_scalar::<f32>();
        assert!((total - bad.classification - bad.localization).abs() < 1e-4);
    }
}

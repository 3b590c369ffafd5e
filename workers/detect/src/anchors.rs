//! The anchors of the TF Object Detection API's SSD (`ssd_anchor_generator`), and its box coder.

/// An anchor: centre and size, relative to the image (0..1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    pub cy: f32,
    pub cx: f32,
    pub h: f32,
    pub w: f32,
}

/// The SSD anchor layout.
#[derive(Debug, Clone, PartialEq)]
pub struct SsdAnchorConfig {
    /// Feature-map side per layer (square maps), e.g. 19, 10, 5, 3, 2, 1 for 300x300 MobileNetV2.
    pub grids: Vec<usize>,
    pub min_scale: f32,
    pub max_scale: f32,
    pub aspect_ratios: Vec<f32>,
    /// One more box per cell at scale sqrt(s_i s_i+1) with this aspect ratio (0: none).
    pub interpolated_scale_aspect_ratio: f32,
    /// The first layer gets only (0.1, 1), (s0, 2), (s0, 1/2).
    pub reduce_boxes_in_lowest_layer: bool,
}

impl SsdAnchorConfig {
    /// `ssd_mobilenet_v2_coco_2018_03_29`'s pipeline.config.
    pub fn mobilenet_v2_300() -> Self {
        Self {
            grids: vec![19, 10, 5, 3, 2, 1],
            min_scale: 0.2,
            max_scale: 0.95,
            aspect_ratios: vec![1.0, 2.0, 0.5, 3.0, 0.3333],
            interpolated_scale_aspect_ratio: 1.0,
            reduce_boxes_in_lowest_layer: true,
        }
    }

    /// All anchors, in the order of the model's box predictions: layer by layer, cell by cell
    /// (row-major), box by box.
    pub fn anchors(&self) -> Vec<Anchor> {
        let n = self.grids.len();
        let mut scales: Vec<f32> = (0..n)
            .map(|i| {
                self.min_scale + (self.max_scale - self.min_scale) * i as f32 / (n as f32 - 1.0).max(1.0)
            })
            .collect();
        scales.push(1.0);
        let mut anchors = Vec::new();
        for (layer, &grid) in self.grids.iter().enumerate() {
            let (scale, next) = (scales[layer], scales[layer + 1]);
            let specs: Vec<(f32, f32)> = if layer == 0 && self.reduce_boxes_in_lowest_layer {
                vec![(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
            } else {
                let mut s: Vec<(f32, f32)> = self.aspect_ratios.iter().map(|&a| (scale, a)).collect();
                if self.interpolated_scale_aspect_ratio > 0.0 {
                    s.push(((scale * next).sqrt(), self.interpolated_scale_aspect_ratio));
                }
                s
            };
            let stride = 1.0 / grid as f32;
            for y in 0..grid {
                for x in 0..grid {
                    for &(s, ar) in &specs {
                        let root = ar.sqrt();
                        anchors.push(Anchor {
                            cy: (y as f32 + 0.5) * stride,
                            cx: (x as f32 + 0.5) * stride,
                            h: s / root,
                            w: s * root,
                        });
                    }
                }
            }
        }
        anchors
    }
}

/// Decodes a box prediction `(ty, tx, th, tw)` against its anchor with the Faster R-CNN box coder
/// (scales 10, 10, 5, 5): `(ymin, xmin, ymax, xmax)` relative to the image.
pub fn decode(code: [f32; 4], a: &Anchor) -> [f32; 4] {
    let cy = code[0] / 10.0 * a.h + a.cy;
    let cx = code[1] / 10.0 * a.w + a.cx;
    let h = (code[2] / 5.0).exp() * a.h;
    let w = (code[3] / 5.0).exp() * a.w;
    [cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0]
}

/// Encodes a box `(ymin, xmin, ymax, xmax)` (relative) against its anchor: the training target,
/// the inverse of [`decode`].
pub fn encode(b: [f32; 4], a: &Anchor) -> [f32; 4] {
    let (h, w) = ((b[2] - b[0]).max(1e-8), (b[3] - b[1]).max(1e-8));
    let (cy, cx) = (b[0] + h / 2.0, b[1] + w / 2.0);
    [
        (cy - a.cy) / a.h * 10.0,
        (cx - a.cx) / a.w * 10.0,
        (h / a.h).ln() * 5.0,
        (w / a.w).ln() * 5.0,
    ]
}

fn iou(a: &Anchor, b: &[f32; 4]) -> f32 {
    let (ay0, ax0, ay1, ax1) = (
        a.cy - a.h / 2.0,
        a.cx - a.w / 2.0,
        a.cy + a.h / 2.0,
        a.cx + a.w / 2.0,
    );
    let ih = (ay1.min(b[2]) - ay0.max(b[0])).max(0.0);
    let iw = (ax1.min(b[3]) - ax0.max(b[1])).max(0.0);
    let inter = ih * iw;
    let union = a.h * a.w + (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// SSD target assignment, as the pretrained model was trained (the TF Object Detection API's
/// argmax matcher, threshold 0.5, with a forced match per box): an anchor takes the box it
/// overlaps most when that IoU reaches `threshold`; then every box takes its best anchor, so that
/// no box goes untrained. `None`: a background anchor.
pub fn match_anchors(anchors: &[Anchor], boxes: &[[f32; 4]], threshold: f32) -> Vec<Option<usize>> {
    let mut matched = vec![None; anchors.len()];
    if boxes.is_empty() {
        return matched;
    }
    let mut best_anchor = vec![(f32::MIN, 0usize); boxes.len()];
    for (j, a) in anchors.iter().enumerate() {
        let mut best = (0.0f32, None);
        for (g, b) in boxes.iter().enumerate() {
            let v = iou(a, b);
            if v > best.0 {
                best = (v, Some(g));
            }
            if v > best_anchor[g].0 {
                best_anchor[g] = (v, j);
            }
        }
        if best.0 >= threshold {
            matched[j] = best.1;
        }
    }
    for (g, &(_, j)) in best_anchor.iter().enumerate() {
        matched[j] = Some(g);
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mobilenet_v2_has_1917_anchors() {
        let anchors = SsdAnchorConfig::mobilenet_v2_300().anchors();
        assert_eq!(anchors.len(), 19 * 19 * 3 + (100 + 25 + 9 + 4 + 1) * 6);
        // The first cell of the first layer: the small square box.
        let a = anchors[0];
        assert!((a.cy - 0.5 / 19.0).abs() < 1e-6 && (a.h - 0.1).abs() < 1e-6 && (a.w - 0.1).abs() < 1e-6);
        // The last layer is one cell at the centre; its interpolated box has scale sqrt(0.95 * 1).
        let last = anchors[anchors.len() - 1];
        assert!((last.cx - 0.5).abs() < 1e-6 && (last.h - 0.95f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn zero_codes_decode_to_the_anchor() {
        let a = Anchor {
            cy: 0.5,
            cx: 0.25,
            h: 0.2,
            w: 0.1,
        };
        let b = decode([0.0; 4], &a);
        assert!((b[0] - 0.4).abs() < 1e-6 && (b[1] - 0.2).abs() < 1e-6);
        assert!((b[2] - 0.6).abs() < 1e-6 && (b[3] - 0.3).abs() < 1e-6);
    }

    #[test]
    fn encoding_inverts_decoding() {
        let anchors = SsdAnchorConfig::mobilenet_v2_300().anchors();
        let b = [0.21f32, 0.33, 0.58, 0.47];
        for a in [&anchors[0], &anchors[500], &anchors[1916]] {
            let back = decode(encode(b, a), a);
            for k in 0..4 {
                assert!((back[k] - b[k]).abs() < 1e-5, "{back:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn every_box_gets_anchors_and_the_rest_is_background() {
        let anchors = SsdAnchorConfig::mobilenet_v2_300().anchors();
        // A person-shaped box, and a tiny one no anchor overlaps by 0.5.
        let boxes = [[0.2f32, 0.4, 0.7, 0.55], [0.9, 0.9, 0.91, 0.905]];
        let m = match_anchors(&anchors, &boxes, 0.5);
        let first: Vec<usize> = (0..m.len()).filter(|&j| m[j] == Some(0)).collect();
        assert!(first.len() >= 2, "{first:?}");
        // Matched by overlap, except at most the one forced anchor.
        assert!(
            first
                .iter()
                .filter(|&&j| iou(&anchors[j], &boxes[0]) < 0.5)
                .count()
                <= 1
        );
        assert_eq!(
            m.iter().filter(|x| **x == Some(1)).count(),
            1,
            "the tiny box is forced onto its best anchor"
        );
        let background = m.iter().filter(|x| x.is_none()).count();
        assert!(background > 1800, "{background}");
        assert!(match_anchors(&anchors, &[], 0.5).iter().all(Option::is_none));
    }
}

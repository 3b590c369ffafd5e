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
}

//! Boxes, detections and non-maximum suppression.

/// An axis-aligned box in pixels: `x0..x1` by `y0..y1`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl BBox {
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> Self {
        Self { x0, y0, x1, y1 }
    }

    /// From `x, y, width, height`.
    pub fn xywh(x: f32, y: f32, w: f32, h: f32) -> Self {
        Self::new(x, y, x + w, y + h)
    }

    pub fn width(&self) -> f32 {
        (self.x1 - self.x0).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y1 - self.y0).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    pub fn intersection(&self, other: &BBox) -> f32 {
        let w = (self.x1.min(other.x1) - self.x0.max(other.x0)).max(0.0);
        let h = (self.y1.min(other.y1) - self.y0.max(other.y0)).max(0.0);
        w * h
    }

    pub fn iou(&self, other: &BBox) -> f32 {
        let inter = self.intersection(other);
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    /// Clipped to `0..width` by `0..height`.
    pub fn clip(&self, width: f32, height: f32) -> BBox {
        BBox::new(
            self.x0.clamp(0.0, width),
            self.y0.clamp(0.0, height),
            self.x1.clamp(0.0, width),
            self.y1.clamp(0.0, height),
        )
    }

    /// Moved by `(dx, dy)`: from a crop's coordinates to the frame's.
    pub fn offset(&self, dx: f32, dy: f32) -> BBox {
        BBox::new(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)
    }
}

/// One detected object: a box, a COCO category id and a score in 0..1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub bbox: BBox,
    pub class_id: u32,
    pub score: f32,
}

/// Class-aware greedy non-maximum suppression: keeps the highest-scoring detection of every
/// cluster of same-class boxes overlapping by more than `iou_threshold`, at most `max_detections`,
/// sorted by descending score (ties keep their input order).
pub fn nms(detections: &mut Vec<Detection>, iou_threshold: f32, max_detections: usize) {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    // In place: the kept ones move to the front (never past the one being looked at).
    let mut kept = 0;
    for i in 0..detections.len() {
        if kept == max_detections {
            break;
        }
        let d = detections[i];
        let suppressed = detections[..kept]
            .iter()
            .any(|k| k.class_id == d.class_id && k.bbox.iou(&d.bbox) > iou_threshold);
        if !suppressed {
            detections[kept] = d;
            kept += 1;
        }
    }
    detections.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, class_id: u32, score: f32) -> Detection {
        Detection {
            bbox: BBox::xywh(x, 0.0, 10.0, 10.0),
            class_id,
            score,
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = BBox::xywh(0.0, 0.0, 10.0, 10.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BBox::xywh(5.0, 0.0, 10.0, 10.0)), 50.0 / 150.0);
        assert_eq!(a.iou(&BBox::xywh(20.0, 0.0, 10.0, 10.0)), 0.0);
        assert_eq!(
            BBox::new(5.0, 5.0, 1.0, 1.0).area(),
            0.0,
            "inverted boxes are empty"
        );
        assert_eq!(
            BBox::new(-5.0, 2.0, 700.0, 9.0).clip(640.0, 480.0),
            BBox::new(0.0, 2.0, 640.0, 9.0)
        );
    }

    #[test]
    fn nms_suppresses_within_a_class_only() {
        let mut d = vec![
            det(0.0, 1, 0.5),
            det(1.0, 1, 0.9),
            det(1.0, 3, 0.8),
            det(40.0, 1, 0.7),
        ];
        nms(&mut d, 0.5, 100);
        assert_eq!(d, vec![det(1.0, 1, 0.9), det(1.0, 3, 0.8), det(40.0, 1, 0.7)]);
        nms(&mut d, 0.5, 2);
        assert_eq!(d.len(), 2);
    }
}

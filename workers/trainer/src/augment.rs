//! Light augmentation that keeps boxes valid: a random crop of 80-100% of each side (the objects
//! appear larger and shifted) and a horizontal flip. A box cut to less than half its area by the
//! crop becomes an ignore region, so the student is neither taught a fragment nor punished for
//! finding the person. Deterministic from a seed, so a resumed job sees the same images.

use autotuner_detect::{BBox, Fit, Layout, Preprocess, RgbImage};

use crate::dataset::{Label, Sample};

/// SplitMix64: small, fast and good enough to draw crops and shuffle batches.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// One way of showing an image: the part of it used and whether it is mirrored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub crop: BBox,
    pub flip: bool,
}

impl View {
    pub fn whole(width: u32, height: u32) -> Self {
        Self {
            crop: BBox::new(0.0, 0.0, width as f32, height as f32),
            flip: false,
        }
    }

    /// View `variant` of a sample: variant 0 is the image itself, the others are random crops,
    /// mirrored half of the time.
    pub fn of(sample: &Sample, variant: usize, seed: u64) -> Self {
        let (w, h) = (sample.width as f32, sample.height as f32);
        if variant == 0 {
            return Self::whole(sample.width, sample.height);
        }
        let mut rng = Rng::new(seed ^ sample.id.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (variant as u64) << 56);
        let (sw, sh) = (0.8 + 0.2 * rng.unit(), 0.8 + 0.2 * rng.unit());
        let (cw, ch) = ((w * sw).round().max(1.0), (h * sh).round().max(1.0));
        let (x0, y0) = (((w - cw) * rng.unit()).round(), ((h - ch) * rng.unit()).round());
        Self {
            crop: BBox::new(x0, y0, x0 + cw, y0 + ch),
            flip: rng.unit() < 0.5,
        }
    }
}

/// The training view of a sample: its labels and ignore regions in relative
/// `(ymin, xmin, ymax, xmax)` coordinates of the view.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewLabels {
    pub boxes: Vec<([f32; 4], u32)>,
    pub ignore: Vec<[f32; 4]>,
}

fn relative(b: &BBox, view: &View) -> [f32; 4] {
    let (cw, ch) = (view.crop.width(), view.crop.height());
    let (mut x0, mut x1) = ((b.x0 - view.crop.x0) / cw, (b.x1 - view.crop.x0) / cw);
    if view.flip {
        (x0, x1) = (1.0 - x1, 1.0 - x0);
    }
    [(b.y0 - view.crop.y0) / ch, x0, (b.y1 - view.crop.y0) / ch, x1]
}

/// The part of `b` inside `crop` (empty boxes have a width or height of zero or less).
fn within(b: &BBox, crop: &BBox) -> BBox {
    BBox::new(
        b.x0.max(crop.x0),
        b.y0.max(crop.y0),
        b.x1.min(crop.x1),
        b.y1.min(crop.y1),
    )
}

/// The labels of `sample` as seen through `view`.
pub fn view_labels(sample: &Sample, view: &View) -> ViewLabels {
    let mut out = ViewLabels {
        boxes: Vec::new(),
        ignore: Vec::new(),
    };
    let crop = view.crop;
    for Label { bbox, class_id } in &sample.labels {
        let inside = within(bbox, &crop);
        if inside.width() <= 0.0 || inside.height() <= 0.0 {
            continue;
        }
        if inside.area() >= 0.5 * bbox.area() {
            out.boxes.push((relative(&inside, view), *class_id));
        } else {
            out.ignore.push(relative(&inside, view));
        }
    }
    for region in &sample.ignore {
        let inside = within(region, &crop);
        if inside.width() > 0.0 && inside.height() > 0.0 {
            out.ignore.push(relative(&inside, view));
        }
    }
    out
}

/// The student's input preparation (300x300, RGB scaled to -1..1, NHWC).
pub fn student_preprocess() -> Preprocess {
    Preprocess {
        width: 300,
        height: 300,
        fit: Fit::Stretch,
        layout: Layout::Nhwc,
        bgr: false,
        scale: 2.0 / 255.0,
        offset: -1.0,
    }
}

/// Writes the student's input for `view` of an RGB image into `out` (`student_preprocess().len()`
/// values); `scratch` holds the cropped pixels.
pub fn prepare(rgb: &[u8], width: usize, height: usize, view: &View, scratch: &mut Vec<u8>, out: &mut [f32]) {
    let pre = student_preprocess();
    let whole = view.crop == BBox::new(0.0, 0.0, width as f32, height as f32);
    if whole {
        let image = RgbImage::new(rgb, width, height).expect("sample size checked at load");
        pre.apply(image, out);
    } else {
        let (x0, y0) = (view.crop.x0 as usize, view.crop.y0 as usize);
        let (cw, ch) = (view.crop.width() as usize, view.crop.height() as usize);
        scratch.clear();
        for y in y0..y0 + ch {
            scratch.extend_from_slice(&rgb[(y * width + x0) * 3..(y * width + x0 + cw) * 3]);
        }
        let image = RgbImage::new(scratch, cw, ch).expect("crop inside the image");
        pre.apply(image, out);
    }
    if view.flip {
        // Bilinear resizing with half-pixel centres is mirror-symmetric: flipping the resized
        // input equals resizing the flipped image.
        let (w, c) = (pre.width, 3);
        for row in out.chunks_exact_mut(w * c) {
            for x in 0..w / 2 {
                for k in 0..c {
                    row.swap(x * c + k, (w - 1 - x) * c + k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            id: 7,
            file: "x.jpg".into(),
            width: 200,
            height: 100,
            decoded_at_ms: None,
            labels: vec![
                Label {
                    bbox: BBox::new(10.0, 10.0, 50.0, 90.0),
                    class_id: 1,
                },
                Label {
                    bbox: BBox::new(190.0, 10.0, 200.0, 30.0),
                    class_id: 1,
                },
            ],
            ignore: vec![BBox::new(100.0, 0.0, 120.0, 20.0)],
        }
    }

    #[test]
    fn the_whole_view_keeps_every_box() {
        let s = sample();
        let l = view_labels(&s, &View::whole(200, 100));
        assert_eq!(l.boxes.len(), 2);
        assert_eq!(l.boxes[0], ([0.1, 0.05, 0.9, 0.25], 1));
        assert_eq!(l.ignore.len(), 1);
    }

    #[test]
    fn crops_and_flips_keep_boxes_valid_and_inside() {
        let s = sample();
        for variant in 1..200 {
            let v = View::of(&s, variant, 42);
            assert!(v.crop.x0 >= 0.0 && v.crop.y0 >= 0.0 && v.crop.x1 <= 200.0 && v.crop.y1 <= 100.0);
            assert!(v.crop.width() >= 159.0 && v.crop.height() >= 79.0);
            let l = view_labels(&s, &v);
            for (b, _) in l
                .boxes
                .iter()
                .map(|(b, c)| (b, c))
                .chain(l.ignore.iter().map(|b| (b, &0)))
            {
                assert!(b.iter().all(|&x| (0.0..=1.0).contains(&x)), "{b:?} in {v:?}");
                assert!(b[0] < b[2] && b[1] < b[3], "{b:?}");
            }
            // The tall box stays a label exactly when at least half of it is in the view.
            let b = s.labels[0].bbox;
            let visible = (b.x1.min(v.crop.x1) - b.x0.max(v.crop.x0)).max(0.0)
                * (b.y1.min(v.crop.y1) - b.y0.max(v.crop.y0)).max(0.0);
            let labelled = l
                .boxes
                .iter()
                .any(|(r, _)| (r[2] - r[0]) * v.crop.height() > 60.0);
            assert_eq!(labelled, visible >= 0.5 * b.area(), "{v:?}");
        }
        assert_eq!(View::of(&s, 3, 42), View::of(&s, 3, 42), "deterministic");
        assert_ne!(View::of(&s, 3, 42), View::of(&s, 4, 42));
    }

    #[test]
    fn a_flip_mirrors_boxes_and_pixels() {
        let s = sample();
        let view = View {
            crop: BBox::new(0.0, 0.0, 200.0, 100.0),
            flip: true,
        };
        let l = view_labels(&s, &view);
        assert_eq!(l.boxes[0].0, [0.1, 0.75, 0.9, 0.95]);
        // A left-bright image becomes right-bright.
        let mut rgb = vec![0u8; 200 * 100 * 3];
        for y in 0..100 {
            for x in 0..100 {
                rgb[(y * 200 + x) * 3..(y * 200 + x) * 3 + 3].fill(255);
            }
        }
        let pre = student_preprocess();
        let (mut a, mut b) = (vec![0.0; pre.len()], vec![0.0; pre.len()]);
        let mut scratch = Vec::new();
        prepare(&rgb, 200, 100, &View::whole(200, 100), &mut scratch, &mut a);
        prepare(&rgb, 200, 100, &view, &mut scratch, &mut b);
        assert_eq!(a[0], 1.0);
        assert_eq!(b[0], -1.0);
        assert_eq!(a[(150 * 300 + 10) * 3], b[(150 * 300 + 289) * 3]);
    }
}

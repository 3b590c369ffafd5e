//! Many small crops, few detector calls: the crops are packed side by side into canvases of the
//! model's input size, and each detection is given back to the crop its centre lies in.
//!
//! A detector with a fixed input (YOLO's 640x640) costs the same per call whatever the canvas
//! holds, and a frame's motion crops cover a small part of it (about 15% of PETS09's frames), so
//! labelling crop by crop paid one full call for each. Packed, a frame's crops usually take one
//! call. A crop keeps its own scale up to `max_scale`, so small crops are still enlarged, only
//! less than a crop letterboxed alone (which fills the whole input).

use crate::geometry::BBox;

/// Where one crop goes: its canvas, its top-left corner there, and its size there (its own size
/// times `scale`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub canvas: usize,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub scale: f32,
}

impl Placement {
    fn contains(&self, x: f32, y: f32) -> bool {
        x >= self.x as f32
            && y >= self.y as f32
            && x < (self.x + self.width) as f32
            && y < (self.y + self.height) as f32
    }

    /// A box in canvas pixels, clipped to this placement, in the crop's own pixels.
    pub fn to_crop(&self, b: &BBox) -> BBox {
        let (x0, y0) = (self.x as f32, self.y as f32);
        let (x1, y1) = (x0 + self.width as f32, y0 + self.height as f32);
        BBox {
            x0: (b.x0.clamp(x0, x1) - x0) / self.scale,
            y0: (b.y0.clamp(y0, y1) - y0) / self.scale,
            x1: (b.x1.clamp(x0, x1) - x0) / self.scale,
            y1: (b.y1.clamp(y0, y1) - y0) / self.scale,
        }
    }
}

/// The layout of crops of `sizes` (width, height) on canvases of `canvas` (width, height):
/// each crop scaled by at most `max_scale` (and down to fit a canvas alone), `gap` pixels of
/// background between crops so that no object spans two. Shelf packing, tallest first; the
/// answer is in the order of `sizes`, and the canvases are numbered from 0.
pub fn pack(sizes: &[(u32, u32)], canvas: (u32, u32), max_scale: f32, gap: u32) -> Vec<Placement> {
    let (cw, ch) = canvas;
    let scaled: Vec<(u32, u32, f32)> = sizes
        .iter()
        .map(|&(w, h)| {
            let (w, h) = (w.max(1), h.max(1));
            let scale = max_scale.min(cw as f32 / w as f32).min(ch as f32 / h as f32);
            let fit = |v: u32, limit: u32| ((v as f32 * scale).round() as u32).clamp(1, limit);
            (fit(w, cw), fit(h, ch), scale)
        })
        .collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(scaled[i].1));

    /// A row of crops: its top, its height, and how far along it is filled.
    struct Shelf {
        canvas: usize,
        y: u32,
        height: u32,
        used: u32,
    }
    let mut shelves: Vec<Shelf> = Vec::new();
    // Per canvas: the height its shelves take.
    let mut filled: Vec<u32> = Vec::new();
    let mut out = vec![
        Placement {
            canvas: 0,
            x: 0,
            y: 0,
            width: 0,
            height: 0,
            scale: 1.0
        };
        sizes.len()
    ];
    for i in order {
        let (w, h, scale) = scaled[i];
        let place = |shelf: &mut Shelf| {
            let x = if shelf.used == 0 { 0 } else { shelf.used + gap };
            (x + w <= cw && h <= shelf.height).then(|| {
                shelf.used = x + w;
                (shelf.canvas, x, shelf.y)
            })
        };
        let spot = shelves.iter_mut().find_map(place).unwrap_or_else(|| {
            // A new shelf under the last one of the first canvas with room, else a new canvas.
            let room = filled.iter().position(|&f| f + gap + h <= ch);
            let (canvas, y) = match room {
                Some(c) => (c, filled[c] + gap),
                None => {
                    filled.push(0);
                    (filled.len() - 1, 0)
                }
            };
            filled[canvas] = y + h;
            shelves.push(Shelf {
                canvas,
                y,
                height: h,
                used: w,
            });
            (canvas, 0, y)
        });
        out[i] = Placement {
            canvas: spot.0,
            x: spot.1,
            y: spot.2,
            width: w,
            height: h,
            scale,
        };
    }
    out
}

/// The number of canvases a layout uses.
pub fn canvases(placements: &[Placement]) -> usize {
    placements.iter().map(|p| p.canvas + 1).max().unwrap_or(0)
}

/// The crop a detection on canvas `canvas` belongs to: the one its centre lies in (none when it
/// lies in the gap between crops).
pub fn owner(placements: &[Placement], canvas: usize, b: &BBox) -> Option<usize> {
    let (cx, cy) = ((b.x0 + b.x1) / 2.0, (b.y0 + b.y1) / 2.0);
    placements
        .iter()
        .position(|p| p.canvas == canvas && p.contains(cx, cy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: &Placement, b: &Placement) -> bool {
        a.canvas == b.canvas
            && a.x < b.x + b.width
            && b.x < a.x + a.width
            && a.y < b.y + b.height
            && b.y < a.y + a.height
    }

    #[test]
    fn crops_that_fit_share_one_canvas_without_overlapping() {
        let sizes = [(120, 260), (90, 200), (200, 150), (60, 60), (300, 280)];
        let placed = pack(&sizes, (640, 640), 1.0, 8);
        assert_eq!(canvases(&placed), 1);
        for (i, a) in placed.iter().enumerate() {
            assert_eq!((a.width, a.height), sizes[i], "scale 1 keeps the size");
            assert!(a.x + a.width <= 640 && a.y + a.height <= 640);
            for b in &placed[i + 1..] {
                assert!(!overlaps(a, b), "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn small_crops_are_enlarged_up_to_the_maximum_and_large_ones_shrunk_to_fit() {
        let placed = pack(&[(100, 50), (1280, 720)], (640, 640), 2.0, 8);
        assert_eq!(
            (placed[0].width, placed[0].height, placed[0].scale),
            (200, 100, 2.0)
        );
        assert_eq!((placed[1].width, placed[1].height), (640, 360));
        assert_eq!(placed[1].scale, 0.5);
        assert_eq!(
            (placed[0].canvas, placed[0].x, placed[0].y),
            (0, 0, 368),
            "the small one goes on a shelf under the wide one"
        );
    }

    #[test]
    fn crops_beyond_one_canvas_open_another() {
        let placed = pack(&[(400, 400); 3], (640, 640), 1.0, 8);
        assert_eq!(canvases(&placed), 3);
        let placed = pack(&[(300, 300); 4], (640, 640), 1.0, 8);
        assert_eq!(
            canvases(&placed),
            1,
            "four 300x300 crops with 8 px gaps fit 640x640"
        );
    }

    #[test]
    fn a_detection_goes_back_to_the_crop_its_centre_is_in_in_that_crops_pixels() {
        let placed = pack(&[(100, 200), (50, 100)], (640, 640), 2.0, 10);
        // The taller crop is placed first, at the origin, enlarged twice.
        assert_eq!((placed[0].x, placed[0].y, placed[0].width), (0, 0, 200));
        let second = placed[1];
        assert_eq!((second.x, second.y), (210, 0));
        let in_second = BBox::new(220.0, 20.0, 260.0, 100.0);
        assert_eq!(owner(&placed, 0, &in_second), Some(1));
        assert_eq!(second.to_crop(&in_second), BBox::new(5.0, 10.0, 25.0, 50.0));
        // Spilling over the crop's edge is clipped to it; a centre in the gap belongs to none.
        let spill = BBox::new(150.0, 0.0, 230.0, 40.0);
        assert_eq!(owner(&placed, 0, &spill), Some(0));
        assert_eq!(placed[0].to_crop(&spill).x1, 100.0);
        let gap = BBox::new(200.0, 0.0, 210.0, 10.0);
        assert_eq!(owner(&placed, 0, &gap), None);
        assert_eq!(owner(&placed, 1, &in_second), None, "another canvas");
    }
}

//! Regions of a binary mask: the bounding boxes of its outer contours, the way OpenCV's
//! `findContours(RETR_EXTERNAL)` + `boundingRect` give them, found by labelling runs instead of
//! tracing borders.
//!
//! An outer contour belongs to an 8-connected component of set pixels that is not inside a hole of
//! another component (holes are 4-connected unset areas; the image is surrounded by unset pixels).
//! Its bounding box is the component's bounding box. A component lies in a hole exactly when the
//! unset pixel just left of its leftmost pixel is not connected to the outside, which is what the
//! (rarely needed) second labelling checks.

use crate::bits::BitMask;
use crate::image::Rect;

/// A horizontal run of pixels `start..end` in row `row`.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    start: u32,
    end: u32,
    row: u32,
}

/// Working memory of the labelling, reused frame after frame; it grows to the largest mask seen.
#[derive(Debug, Default)]
pub struct RegionFinder {
    runs: Vec<Run>,
    /// Index of each row's first run in `runs` (one more entry than rows).
    row_first: Vec<u32>,
    parent: Vec<u32>,
    /// Component of each root run, or `u32::MAX`.
    component: Vec<u32>,
    components: Vec<Component>,
    gaps: Vec<Run>,
    gap_first: Vec<u32>,
    gap_parent: Vec<u32>,
    gap_outside: Vec<bool>,
}

#[derive(Debug, Clone, Copy)]
struct Component {
    bbox: Rect,
    /// A run that starts at the component's leftmost column.
    leftmost_run: u32,
    outer: bool,
}

fn find(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        let grand = parent[parent[i as usize] as usize];
        parent[i as usize] = grand;
        i = grand;
    }
    i
}

fn unite(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        // The older run stays the root, so roots are first runs in raster order.
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi as usize] = lo;
    }
}

impl RegionFinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the bounding boxes of the outer contours of `mask` to `out` (which is cleared first),
    /// in raster order of their first pixel.
    pub fn find(&mut self, mask: &BitMask, out: &mut Vec<Rect>) {
        out.clear();
        self.label_runs(mask);
        if self.runs.is_empty() {
            return;
        }
        self.collect_components();
        if self.may_nest() {
            self.mark_outer_components(mask);
        }
        out.extend(self.components.iter().filter(|c| c.outer).map(|c| c.bbox));
    }

    fn label_runs(&mut self, mask: &BitMask) {
        self.runs.clear();
        self.row_first.clear();
        self.parent.clear();
        let width = mask.width() as u32;
        for y in 0..mask.height() {
            self.row_first.push(self.runs.len() as u32);
            let row = mask.row(y);
            let mut x = 0u32;
            while x < width {
                // Next set bit at or after x.
                let Some(start) = next_bit(row, x, true, width) else {
                    break;
                };
                let end = next_bit(row, start, false, width).unwrap_or(width);
                self.runs.push(Run {
                    start,
                    end,
                    row: y as u32,
                });
                x = end;
            }
        }
        self.row_first.push(self.runs.len() as u32);
        self.parent.extend(0..self.runs.len() as u32);
        // 8-connectivity: runs of adjacent rows touch when their column ranges overlap or meet
        // diagonally.
        for y in 1..mask.height() {
            let (mut i, i_end) = (self.row_first[y - 1], self.row_first[y]);
            let (mut j, j_end) = (self.row_first[y], self.row_first[y + 1]);
            while i < i_end && j < j_end {
                let (above, below) = (self.runs[i as usize], self.runs[j as usize]);
                if above.start <= below.end && below.start <= above.end {
                    unite(&mut self.parent, i, j);
                }
                if above.end < below.end {
                    i += 1;
                } else {
                    j += 1;
                }
            }
        }
    }

    fn collect_components(&mut self) {
        self.components.clear();
        self.component.clear();
        self.component.resize(self.runs.len(), u32::MAX);
        for i in 0..self.runs.len() as u32 {
            let root = find(&mut self.parent, i);
            let run = self.runs[i as usize];
            let slot = &mut self.component[root as usize];
            if *slot == u32::MAX {
                *slot = self.components.len() as u32;
                self.components.push(Component {
                    bbox: Rect::from_corners(run.start, run.row, run.end, run.row + 1),
                    leftmost_run: i,
                    outer: true,
                });
            } else {
                let c = &mut self.components[*slot as usize];
                if run.start < c.bbox.x {
                    c.leftmost_run = i;
                }
                c.bbox = c
                    .bbox
                    .union(&Rect::from_corners(run.start, run.row, run.end, run.row + 1));
            }
        }
    }

    /// Whether some component's box lies strictly inside another's (a precondition for it to
    /// sit in a hole). Usually false, which spares the background labelling.
    fn may_nest(&self) -> bool {
        let c = &self.components;
        if c.len() > 64 {
            return true;
        }
        c.iter()
            .any(|outer| c.iter().any(|inner| outer.bbox.strictly_contains(&inner.bbox)))
    }

    /// Labels the unset gaps between runs with 4-connectivity, marks those connected to the
    /// outside, and keeps only components whose left neighbour pixel is outside.
    fn mark_outer_components(&mut self, mask: &BitMask) {
        let width = mask.width() as u32;
        let height = mask.height() as u32;
        self.gaps.clear();
        self.gap_first.clear();
        // Gap j of a row is the unset span just before run j of that row; one more after the last.
        for y in 0..mask.height() {
            self.gap_first.push(self.gaps.len() as u32);
            let runs = &self.runs[self.row_first[y] as usize..self.row_first[y + 1] as usize];
            let mut previous_end = 0;
            for run in runs {
                self.gaps.push(Run {
                    start: previous_end,
                    end: run.start,
                    row: y as u32,
                });
                previous_end = run.end;
            }
            self.gaps.push(Run {
                start: previous_end,
                end: width,
                row: y as u32,
            });
        }
        self.gap_first.push(self.gaps.len() as u32);
        self.gap_parent.clear();
        self.gap_parent.extend(0..self.gaps.len() as u32);
        for y in 1..mask.height() {
            let (mut i, i_end) = (self.gap_first[y - 1], self.gap_first[y]);
            let (mut j, j_end) = (self.gap_first[y], self.gap_first[y + 1]);
            while i < i_end && j < j_end {
                let (above, below) = (self.gaps[i as usize], self.gaps[j as usize]);
                let empty = above.start == above.end || below.start == below.end;
                if !empty && above.start < below.end && below.start < above.end {
                    unite(&mut self.gap_parent, i, j);
                }
                if above.end < below.end {
                    i += 1;
                } else {
                    j += 1;
                }
            }
        }
        self.gap_outside.clear();
        self.gap_outside.resize(self.gaps.len(), false);
        for g in 0..self.gaps.len() as u32 {
            let gap = self.gaps[g as usize];
            let touches_border = gap.start == 0 || gap.end == width || gap.row == 0 || gap.row + 1 == height;
            if gap.start < gap.end && touches_border {
                let root = find(&mut self.gap_parent, g);
                self.gap_outside[root as usize] = true;
            }
        }
        for c in 0..self.components.len() {
            let run_index = self.components[c].leftmost_run;
            let run = self.runs[run_index as usize];
            if run.start == 0 {
                continue; // touches the left border: outside is right there
            }
            // The gap before run j of its row has the same index within the row.
            let j = run_index - self.row_first[run.row as usize];
            let gap = self.gap_first[run.row as usize] + j;
            let root = find(&mut self.gap_parent, gap);
            self.components[c].outer = self.gap_outside[root as usize];
        }
    }
}

/// Column of the next bit equal to `value` at or after `from` in a packed row, if any before `width`.
#[inline(always)]
fn next_bit(row: &[u64], from: u32, value: bool, width: u32) -> Option<u32> {
    let mut k = (from / 64) as usize;
    let flip = if value { 0 } else { u64::MAX };
    let mut word = (row[k] ^ flip) & (u64::MAX << (from % 64));
    loop {
        if word != 0 {
            let x = k as u32 * 64 + word.trailing_zeros();
            return (x < width).then_some(x);
        }
        k += 1;
        if k == row.len() {
            return None;
        }
        word = row[k] ^ flip;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_from(rows: &[&str]) -> BitMask {
        let mut m = BitMask::new(rows[0].len(), rows.len());
        for (y, r) in rows.iter().enumerate() {
            for (x, c) in r.chars().enumerate() {
                m.set(x, y, c == '#');
            }
        }
        m
    }

    fn regions(rows: &[&str]) -> Vec<Rect> {
        let mut out = Vec::new();
        RegionFinder::new().find(&mask_from(rows), &mut out);
        out
    }

    #[test]
    fn separate_and_diagonal_components() {
        let boxes = regions(&[
            "##....#", //
            "##.....", //
            "..#....", // diagonal to the first blob: same component
            ".......", //
            "....###", //
        ]);
        assert_eq!(
            boxes,
            [
                Rect::new(0, 0, 3, 3),
                Rect::new(6, 0, 1, 1),
                Rect::new(4, 4, 3, 1)
            ]
        );
    }

    #[test]
    fn u_shapes_merge_below() {
        let boxes = regions(&["#...#", "#...#", "#####"]);
        assert_eq!(boxes, [Rect::new(0, 0, 5, 3)]);
    }

    #[test]
    fn components_inside_holes_are_not_outer_contours() {
        let boxes = regions(&[
            "#######..", //
            "#.....#..", //
            "#.##..#.#", // the inner blob sits in the ring's hole
            "#.....#..", //
            "#######..", //
        ]);
        assert_eq!(boxes, [Rect::new(0, 0, 7, 5), Rect::new(8, 2, 1, 1)]);
    }

    #[test]
    fn a_ring_open_to_the_outside_has_no_hole() {
        // The gap at the top connects the inside with the outside: the blob is outer.
        let boxes = regions(&["###.###", "#.....#", "#..#..#", "#.....#", "#######"]);
        assert_eq!(boxes.len(), 2);
        // A diagonal gap does not: background is 4-connected.
        let closed = regions(&["##.####", "#.#...#", "#..#..#", "#.....#", "#######"]);
        assert_eq!(closed, [Rect::new(0, 0, 7, 5)]);
    }

    #[test]
    fn borders_and_full_masks() {
        assert_eq!(regions(&["###", "###"]), [Rect::new(0, 0, 3, 2)]);
        assert!(regions(&["...", "..."]).is_empty());
        assert_eq!(regions(&["#"]), [Rect::new(0, 0, 1, 1)]);
        let mut wide = BitMask::new(200, 3);
        wide.set(63, 1, true);
        wide.set(64, 1, true);
        wide.set(199, 2, true);
        let mut out = Vec::new();
        RegionFinder::new().find(&wide, &mut out);
        assert_eq!(out, [Rect::new(63, 1, 2, 1), Rect::new(199, 2, 1, 1)]);
    }

    #[test]
    fn many_components_take_the_general_path() {
        // 100 separate dots plus a ring around one of them.
        let mut m = BitMask::new(300, 40);
        for i in 0..100 {
            m.set(3 * i, 0, true);
        }
        for x in 10..20 {
            m.set(x, 10, true);
            m.set(x, 20, true);
        }
        for y in 10..=20 {
            m.set(10, y, true);
            m.set(19, y, true);
        }
        m.set(15, 15, true);
        let mut out = Vec::new();
        RegionFinder::new().find(&m, &mut out);
        assert_eq!(out.len(), 101);
        assert!(out.contains(&Rect::new(10, 10, 10, 11)));
        assert!(!out.contains(&Rect::new(15, 15, 1, 1)));
    }
}

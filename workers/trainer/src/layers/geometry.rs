//! A convolution's geometry and the row loops the CPU kernels share: which input each kernel
//! tap reads for each output, padding left out.

/// A convolution's geometry: kernel size, stride and padding (top, left, bottom, right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pads: [usize; 4],
}

impl Geometry {
    /// A square stride, as the student's convolutions have.
    pub fn new(kh: usize, kw: usize, stride: usize, pads: [usize; 4]) -> Self {
        Geometry {
            kernel: [kh, kw],
            stride: [stride, stride],
            pads,
        }
    }

    /// Output height and width for an input of `h` × `w`.
    pub fn output(&self, h: usize, w: usize) -> [usize; 2] {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        [
            (h + self.pads[0] + self.pads[2] - kh) / sh + 1,
            (w + self.pads[1] + self.pads[3] - kw) / sw + 1,
        ]
    }

    /// For kernel offset `k` along an axis of input size `n`, output size `out`, stride `s` and
    /// leading pad `pad`: the outputs whose input `o * s + k - pad` lies inside the image.
    pub(super) fn valid(k: usize, n: usize, out: usize, s: usize, pad: usize) -> std::ops::Range<usize> {
        // o * s + k >= pad  and  o * s + k - pad < n
        let lo = pad.saturating_sub(k).div_ceil(s);
        let hi = if n + pad > k {
            (n + pad - k).div_ceil(s).min(out)
        } else {
            0
        };
        lo..hi.max(lo)
    }

    /// Calls `f` for each kernel tap and each output row that tap reads inside an `h` × `w`
    /// image: every kernel below walks the same (tap, row) pairs, padding left out.
    pub(super) fn for_each_tap_row(&self, [h, w]: [usize; 2], mut f: impl FnMut(TapRow)) {
        let [oh, ow] = self.output(h, w);
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        for i in 0..kh {
            let rows = Self::valid(i, h, oh, sh, self.pads[0]);
            for j in 0..kw {
                let columns = Self::valid(j, w, ow, sw, self.pads[1]);
                for output_row in rows.clone() {
                    f(TapRow {
                        tap: i * kw + j,
                        input_row: output_row * sh + i - self.pads[0],
                        output_row,
                        first_input_column: columns.start * sw + j - self.pads[1],
                        columns: columns.clone(),
                    });
                }
            }
        }
    }
}

/// One kernel tap over a whole plane, when the output is as large as the input (stride 1,
/// "same" padding): output position `p` (row-major) reads input position `p + shift`, for `p` in
/// `run` but for the positions in `wrapped`, whose column `p + shift` falls off the row's edge
/// onto the next or the previous row (a read of the padding). One long run per tap instead of a
/// short one per row: the loops vectorise whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlaneTap {
    pub tap: usize,
    pub shift: isize,
    pub run: std::ops::Range<usize>,
    pub wrapped: Vec<usize>,
}

impl PlaneTap {
    /// The input position output position `p` reads.
    pub fn source(&self, p: usize) -> usize {
        p.wrapping_add_signed(self.shift)
    }
}

impl Geometry {
    /// Each tap as a run over the whole plane ([`PlaneTap`]), when the output of an `h` × `w`
    /// input is `h` × `w`; else `None`.
    pub(super) fn plane_taps(&self, [h, w]: [usize; 2]) -> Option<Vec<PlaneTap>> {
        if self.stride != [1, 1] || self.output(h, w) != [h, w] {
            return None;
        }
        let [kh, kw] = self.kernel;
        let mut taps = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            let rows = Self::valid(i, h, h, 1, self.pads[0]);
            for j in 0..kw {
                let columns = Self::valid(j, w, w, 1, self.pads[1]);
                if rows.is_empty() || columns.is_empty() {
                    continue;
                }
                let (dy, dx) = (
                    i as isize - self.pads[0] as isize,
                    j as isize - self.pads[1] as isize,
                );
                let shift = dy * w as isize + dx;
                // Output positions whose input lies inside the plane, the rows' edges aside.
                let start = ((rows.start * w) as isize).max(-shift) as usize;
                let end = ((rows.end * w) as isize).min((h * w) as isize - shift) as usize;
                if start >= end {
                    continue;
                }
                let wrapped = rows
                    .clone()
                    .flat_map(|y| (0..columns.start).chain(columns.end..w).map(move |x| y * w + x))
                    .filter(|p| (start..end).contains(p))
                    .collect();
                taps.push(PlaneTap {
                    tap: i * kw + j,
                    shift,
                    run: start..end,
                    wrapped,
                });
            }
        }
        Some(taps)
    }
}

/// One kernel tap over one output row: output `(output_row, c)` for `c` in `columns` reads input
/// `(input_row, first_input_column + (c - columns.start) * stride)`.
pub(super) struct TapRow {
    pub tap: usize,
    pub input_row: usize,
    pub output_row: usize,
    pub columns: std::ops::Range<usize>,
    pub first_input_column: usize,
}

/// `f(values)`, with the values at the positions `kept` as they were before: a [`PlaneTap`]'s
/// run writes its wrapped positions too, and puts them back this way.
pub(super) fn keeping(
    values: &mut [f32],
    kept: impl Iterator<Item = usize> + Clone,
    saved: &mut Vec<f32>,
    f: impl FnOnce(&mut [f32]),
) {
    saved.clear();
    saved.extend(kept.clone().map(|p| values[p]));
    f(values);
    for (p, &v) in kept.zip(saved.iter()) {
        values[p] = v;
    }
}

/// `out[k] += a * input[first + k * stride]` (for stride 1 a contiguous multiply-add, which the
/// compiler vectorises).
pub(super) fn add_scaled(out: &mut [f32], a: f32, input: &[f32], first: usize, stride: usize) {
    if stride == 1 {
        let len = out.len();
        for (y, x) in out.iter_mut().zip(&input[first..first + len]) {
            *y += a * x;
        }
    } else {
        for (k, y) in out.iter_mut().enumerate() {
            *y += a * input[first + k * stride];
        }
    }
}

/// `out[first + k * stride] += a * values[k]`: the adjoint of [`add_scaled`].
pub(super) fn scatter_scaled(out: &mut [f32], first: usize, stride: usize, a: f32, values: &[f32]) {
    if stride == 1 {
        for (x, y) in out[first..first + values.len()].iter_mut().zip(values) {
            *x += a * y;
        }
    } else {
        for (k, y) in values.iter().enumerate() {
            out[first + k * stride] += a * y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (tap, output position, input position) for every read inside the image, row by row.
    fn reads_by_rows(g: &Geometry, [h, w]: [usize; 2]) -> BTreeSet<(usize, usize, usize)> {
        let ow = g.output(h, w)[1];
        let mut reads = BTreeSet::new();
        g.for_each_tap_row([h, w], |t| {
            for (k, x) in t.columns.clone().enumerate() {
                let input = t.input_row * w + t.first_input_column + k * g.stride[1];
                reads.insert((t.tap, t.output_row * ow + x, input));
            }
        });
        reads
    }

    #[test]
    fn plane_taps_read_what_the_row_loops_read() {
        let cases = [
            (Geometry::new(3, 3, 1, [1, 1, 1, 1]), [7, 9]),
            (Geometry::new(3, 3, 1, [1, 1, 1, 1]), [2, 1]),
            (Geometry::new(3, 3, 1, [1, 1, 1, 1]), [1, 5]),
            (Geometry::new(5, 5, 1, [2, 2, 2, 2]), [6, 4]),
            (Geometry::new(3, 3, 1, [0, 0, 2, 2]), [5, 6]),
            (Geometry::new(1, 1, 1, [0, 0, 0, 0]), [3, 4]),
        ];
        for (g, size) in cases {
            let taps = g.plane_taps(size).expect("output as large as the input");
            let mut reads = BTreeSet::new();
            for t in &taps {
                for p in t.run.clone().filter(|p| !t.wrapped.contains(p)) {
                    assert!(
                        reads.insert((t.tap, p, t.source(p))),
                        "{g:?} {size:?}: read twice"
                    );
                }
            }
            assert_eq!(reads, reads_by_rows(&g, size), "{g:?} {size:?}");
        }
        assert_eq!(Geometry::new(3, 3, 2, [0, 0, 1, 1]).plane_taps([8, 8]), None);
        assert_eq!(Geometry::new(3, 3, 1, [0, 0, 0, 0]).plane_taps([8, 8]), None);
    }
}

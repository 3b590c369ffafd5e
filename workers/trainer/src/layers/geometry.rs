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

/// One kernel tap over a whole plane of the output's size: output position `p` (row-major)
/// reads position `p + shift` of the plane the taps read ([`PlaneTaps::split`]), for `p` in
/// `run` but for the positions in `wrapped`, whose column falls off the row's edge onto the next
/// or the previous row (a read of the padding). One long run per tap instead of a short one per
/// row: the loops vectorise whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlaneTap {
    pub tap: usize,
    pub shift: isize,
    pub run: std::ops::Range<usize>,
    pub wrapped: Vec<usize>,
}

impl PlaneTap {
    /// The position output position `p` reads.
    pub fn source(&self, p: usize) -> usize {
        p.wrapping_add_signed(self.shift)
    }
}

/// A convolution's taps as [`PlaneTap`]s. With stride `s` the input is first split into `s × s`
/// phases of the output's size, phase `(a, b)` holding the input's rows `s·r + a` and columns
/// `s·x + b`: a tap then reads one phase at a constant offset, as with stride 1. With stride 1
/// and an output as large as the input, the input itself is the one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlaneTaps {
    pub taps: Vec<PlaneTap>,
    stride: usize,
    input: [usize; 2],
    output: [usize; 2],
    /// Whether the taps read the input where it lies (no phases to split).
    in_place: bool,
}

impl Geometry {
    /// The taps over whole planes ([`PlaneTaps`]) for an `h` × `w` input, when every input
    /// position falls in a phase of the output's size (the output covers the input: "same"
    /// padding); else `None`.
    pub(super) fn plane_taps(&self, [h, w]: [usize; 2]) -> Option<PlaneTaps> {
        let s = self.stride[0];
        let [oh, ow] = self.output(h, w);
        if self.stride[1] != s || s * oh < h || s * ow < w {
            return None;
        }
        let in_place = s == 1 && [oh, ow] == [h, w];
        let [kh, kw] = self.kernel;
        let mut taps = Vec::with_capacity(kh * kw);
        // Along one axis, kernel offset `k` reads phase `k - pad mod s`, `(k - pad) div s` on.
        let split = |k: usize, pad: usize| {
            let u = k as isize - pad as isize;
            (u.rem_euclid(s as isize) as usize, u.div_euclid(s as isize))
        };
        // Outputs `o` whose phase position `o + d` lies in `0..n`.
        let inside =
            |d: isize, n: usize| (-d).max(0) as usize..(n as isize - d).clamp(0, n as isize) as usize;
        for i in 0..kh {
            let (a, dy) = split(i, self.pads[0]);
            let rows = inside(dy, oh);
            for j in 0..kw {
                let (b, dx) = split(j, self.pads[1]);
                let columns = inside(dx, ow);
                let plane = if in_place { 0 } else { (a * s + b) * oh * ow };
                let offset = dy * ow as isize + dx;
                // Output positions that read inside their phase, the rows' edges aside.
                let start = ((rows.start * ow) as isize).max(-offset) as usize;
                let end = ((rows.end * ow) as isize).min((oh * ow) as isize - offset);
                if rows.is_empty() || columns.is_empty() || end <= start as isize {
                    continue;
                }
                let run = start..end as usize;
                let wrapped = rows
                    .clone()
                    .flat_map(|y| (0..columns.start).chain(columns.end..ow).map(move |x| y * ow + x))
                    .filter(|p| run.contains(p))
                    .collect();
                taps.push(PlaneTap {
                    tap: i * kw + j,
                    shift: plane as isize + offset,
                    run,
                    wrapped,
                });
            }
        }
        Some(PlaneTaps {
            taps,
            stride: s,
            input: [h, w],
            output: [oh, ow],
            in_place,
        })
    }
}

impl PlaneTaps {
    /// The plane the taps read: `input` itself, or its phases written to `phases`.
    pub fn split<'a>(&self, input: &'a [f32], phases: &'a mut Vec<f32>) -> &'a [f32] {
        if self.in_place {
            return input;
        }
        let (s, [h, w], [oh, ow]) = (self.stride, self.input, self.output);
        phases.clear();
        phases.resize(s * s * oh * ow, 0.0);
        for a in 0..s {
            for r in (0..oh).take_while(|r| s * r + a < h) {
                let row = &input[(s * r + a) * w..][..w];
                for b in 0..s {
                    let phase_row = &mut phases[((a * s + b) * oh + r) * ow..][..ow];
                    for (value, &x) in phase_row.iter_mut().zip(row[b.min(w)..].iter().step_by(s)) {
                        *value = x;
                    }
                }
            }
        }
        phases
    }

    /// The plane to accumulate an input's gradient in: `out` itself (zeroed), or `phases`
    /// zeroed, to [`merge`](Self::merge) into `out` after.
    pub fn gradient_plane<'a>(&self, out: &'a mut [f32], phases: &'a mut Vec<f32>) -> &'a mut [f32] {
        if self.in_place {
            return out;
        }
        let [oh, ow] = self.output;
        phases.clear();
        phases.resize(self.stride * self.stride * oh * ow, 0.0);
        phases
    }

    /// The adjoint of [`split`](Self::split): each phase value written back to its input
    /// position (nothing to do when the taps read the input in place).
    pub fn merge(&self, phases: &[f32], out: &mut [f32]) {
        if self.in_place {
            return;
        }
        let (s, [h, w], [oh, ow]) = (self.stride, self.input, self.output);
        for a in 0..s {
            for r in (0..oh).take_while(|r| s * r + a < h) {
                let row = &mut out[(s * r + a) * w..][..w];
                for b in 0..s {
                    let phase_row = &phases[((a * s + b) * oh + r) * ow..][..ow];
                    for (x, &value) in row[b.min(w)..].iter_mut().step_by(s).zip(phase_row) {
                        *x = value;
                    }
                }
            }
        }
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
            // An output larger than the input: one phase, zero-padded.
            (Geometry::new(3, 3, 1, [2, 2, 2, 2]), [4, 5]),
            // TF's SAME at stride 2: the odd pixel last on even sizes, both sides on odd ones.
            (Geometry::new(3, 3, 2, [0, 0, 1, 1]), [8, 10]),
            (Geometry::new(3, 3, 2, [1, 1, 1, 1]), [7, 9]),
            (Geometry::new(3, 3, 2, [0, 0, 1, 1]), [2, 2]),
            (Geometry::new(3, 3, 3, [1, 1, 1, 1]), [7, 8]),
        ];
        for (g, size) in cases {
            let planes = g.plane_taps(size).expect("the output covers the input");
            let mut reads = BTreeSet::new();
            // The phases hold each input position once; the rest of them is padding (zero).
            let input: Vec<f32> = (1..=size[0] * size[1]).map(|v| v as f32).collect();
            let source = planes.split(&input, &mut Vec::new()).to_vec();
            for t in &planes.taps {
                for p in t.run.clone().filter(|p| !t.wrapped.contains(p)) {
                    let value = source[t.source(p)];
                    if value != 0.0 {
                        let read = (t.tap, p, value as usize - 1);
                        assert!(reads.insert(read), "{g:?} {size:?}: read twice");
                    }
                }
            }
            assert_eq!(reads, reads_by_rows(&g, size), "{g:?} {size:?}");
            if !planes.in_place {
                let mut merged = vec![0.0; input.len()];
                planes.merge(&source, &mut merged);
                assert_eq!(merged, input, "{g:?} {size:?}: merge undoes split");
            }
        }
        // Inputs the output does not cover.
        assert_eq!(Geometry::new(3, 3, 2, [0, 0, 1, 1]).plane_taps([7, 7]), None);
        assert_eq!(Geometry::new(3, 3, 1, [0, 0, 0, 0]).plane_taps([8, 8]), None);
    }
}

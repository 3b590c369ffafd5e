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

/// One kernel tap over one output row: output `(output_row, c)` for `c` in `columns` reads input
/// `(input_row, first_input_column + (c - columns.start) * stride)`.
pub(super) struct TapRow {
    pub tap: usize,
    pub input_row: usize,
    pub output_row: usize,
    pub columns: std::ops::Range<usize>,
    pub first_input_column: usize,
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

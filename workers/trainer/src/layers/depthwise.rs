//! Depthwise convolution (one filter per channel) on the CPU backend, forward and backward, as a
//! burn backend extension with a hand-written backward pass.
//!
//! burn computes a grouped convolution's weight gradient one group at a time, each a convolution
//! of one channel with its output gradient as an H×W kernel: for MobileNetV2's depthwise layers
//! (144 to 960 groups) that is thousands of small unfolds per step, most of the backward pass.
//! Here each gradient is one pass over the activations, with the channels in parallel.
//!
//! Tensors are contiguous NCHW f32. Padding is (top, left, bottom, right), as in ONNX (TF's SAME
//! puts the odd pixel last).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::clip::Bounds;
use super::tracked::{self, ConvKernels};

use super::flex::{contiguous, dims4, from_values, new_tensor};
use super::lanes::{dot, sum};

/// A depthwise convolution's geometry: kernel size, stride and padding (top, left, bottom,
/// right).
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

#[backend_extension(Flex, Autodiff)]
pub trait DepthwiseBackend: Backend {
    /// `x` [N, C, H, W], `weight` [C, 1, KH, KW], `bias` [C] -> [N, C, OH, OW], clamped to
    /// `clamp` when given.
    fn depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geometry: Geometry,
        clamp: Option<Bounds>,
    ) -> FloatTensor<Self>;
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

/// The forward pass: each (image, channel) plane in parallel, tap by tap, a row at a time, then
/// clamped.
pub fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    g: Geometry,
    clamp: Option<Bounds>,
) -> FlexTensor {
    let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
    let [n, c, h, w] = dims4(&x);
    let [oh, ow] = g.output(h, w);
    let (xs, ws, bs) = (
        x.as_slice::<f32>().expect("contiguous"),
        weight.as_slice::<f32>().expect("contiguous"),
        bias.as_slice::<f32>().expect("contiguous"),
    );
    let taps = g.kernel[0] * g.kernel[1];
    new_tensor(&[n, c, oh, ow], |out| {
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            let input = &xs[plane * h * w..][..h * w];
            out.fill(bs[ch]);
            g.for_each_tap_row([h, w], |t| {
                let out_row = &mut out[t.output_row * ow..][..ow];
                add_scaled(
                    &mut out_row[t.columns],
                    ws[ch * taps + t.tap],
                    &input[t.input_row * w..][..w],
                    t.first_input_column,
                    g.stride[1],
                );
            });
            if let Some(bounds) = clamp {
                bounds.apply(out);
            }
        });
    })
}

/// The input's gradient: each output gradient scattered back through the taps that read it.
pub fn input_gradient(grad: &FlexTensor, weight: &FlexTensor, input: [usize; 4], g: Geometry) -> FlexTensor {
    let (grad, weight) = (contiguous(grad), contiguous(weight));
    let [_, c, h, w] = input;
    let [_, _, oh, ow] = dims4(&grad);
    let (gs, ws) = (
        grad.as_slice::<f32>().expect("contiguous"),
        weight.as_slice::<f32>().expect("contiguous"),
    );
    let taps = g.kernel[0] * g.kernel[1];
    new_tensor(&input, |out| {
        out.par_chunks_mut(h * w).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            let grad = &gs[plane * oh * ow..][..oh * ow];
            g.for_each_tap_row([h, w], |t| {
                scatter_scaled(
                    &mut out[t.input_row * w..][..w],
                    t.first_input_column,
                    g.stride[1],
                    ws[ch * taps + t.tap],
                    &grad[t.output_row * ow..][..ow][t.columns],
                );
            });
        });
    })
}

/// The weight's and the bias's gradients: per channel (in parallel), the sum over images and
/// positions of each tap's input times the output gradient.
pub fn weight_and_bias_gradients(x: &FlexTensor, grad: &FlexTensor, g: Geometry) -> (FlexTensor, FlexTensor) {
    let (x, grad) = (contiguous(x), contiguous(grad));
    let [n, c, h, w] = dims4(&x);
    let [_, _, oh, ow] = dims4(&grad);
    let (xs, gs) = (
        x.as_slice::<f32>().expect("contiguous"),
        grad.as_slice::<f32>().expect("contiguous"),
    );
    let [kh, kw] = g.kernel;
    let per_channel: Vec<(Vec<f32>, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            // f64 sums: a channel's gradient adds up N * OH * OW products.
            let mut taps = vec![0f64; kh * kw];
            let mut bias = 0f64;
            for image in 0..n {
                let plane = image * c + ch;
                let input = &xs[plane * h * w..][..h * w];
                let grad = &gs[plane * oh * ow..][..oh * ow];
                bias += sum(grad) as f64;
                g.for_each_tap_row([h, w], |t| {
                    let values = &grad[t.output_row * ow..][..ow][t.columns];
                    let row = &input[t.input_row * w..][..w];
                    taps[t.tap] += dot(values, row, t.first_input_column, g.stride[1]) as f64;
                });
            }
            (taps.into_iter().map(|v| v as f32).collect(), bias as f32)
        })
        .collect();
    let weight = new_tensor(&[c, 1, kh, kw], |out| {
        for (ch, (taps, _)) in per_channel.iter().enumerate() {
            out[ch * kh * kw..(ch + 1) * kh * kw].copy_from_slice(taps);
        }
    });
    let bias = from_values(per_channel.iter().map(|(_, b)| *b).collect(), &[c]);
    (weight, bias)
}

impl DepthwiseBackend for Flex {
    fn depthwise_conv(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        geometry: Geometry,
        clamp: Option<Bounds>,
    ) -> FlexTensor {
        forward(&x, &weight, &bias, geometry, clamp)
    }
}

/// The kernels [`tracked::conv`] records.
#[derive(Debug)]
pub struct Depthwise;

impl ConvKernels for Depthwise {
    type Geometry = Geometry;

    fn forward(
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: &FlexTensor,
        g: Geometry,
        clamp: Option<Bounds>,
    ) -> FlexTensor {
        forward(x, weight, bias, g, clamp)
    }

    fn input_gradient(grad: &FlexTensor, weight: &FlexTensor, input: [usize; 4], g: Geometry) -> FlexTensor {
        input_gradient(grad, weight, input, g)
    }

    fn weight_and_bias_gradients(x: &FlexTensor, grad: &FlexTensor, g: Geometry) -> (FlexTensor, FlexTensor) {
        weight_and_bias_gradients(x, grad, g)
    }
}

impl<C: CheckpointStrategy> DepthwiseBackend for Autodiff<Flex, C> {
    fn depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        g: Geometry,
        clamp: Option<Bounds>,
    ) -> FloatTensor<Self> {
        tracked::conv::<Depthwise, C>(x, weight, bias, g, clamp)
    }
}

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
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};
use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;
use rayon::prelude::*;

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
}

#[backend_extension(Flex, Autodiff)]
pub trait DepthwiseBackend: Backend {
    /// `x` [N, C, H, W], `weight` [C, 1, KH, KW], `bias` [C] -> [N, C, OH, OW]. The geometry
    /// travels as plain integers: kernel (2), stride (2), pads (4).
    #[allow(clippy::too_many_arguments)]
    fn depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        kh: usize,
        kw: usize,
        stride: usize,
        pads: [usize; 4],
    ) -> FloatTensor<Self>;
}

pub(super) fn dims4(t: &FlexTensor) -> [usize; 4] {
    let shape = burn::backend::TensorMetadata::shape(t);
    [shape[0], shape[1], shape[2], shape[3]]
}

pub(super) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

fn new_tensor(shape: [usize; 4], fill: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut t = FlexTensor::zeros(Shape::new(shape), DType::F32);
    fill(t.try_storage_mut::<f32>().expect("a new tensor is unique"));
    t
}

/// The forward pass: each (image, channel) plane in parallel, tap by tap, a row at a time (a
/// contiguous multiply-add for stride 1, which the compiler vectorises).
pub fn forward(x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor, g: Geometry) -> FlexTensor {
    let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
    let [n, c, h, w] = dims4(&x);
    let [oh, ow] = g.output(h, w);
    let (xs, ws, bs) = (
        x.as_slice::<f32>().expect("contiguous"),
        weight.as_slice::<f32>().expect("contiguous"),
        bias.as_slice::<f32>().expect("contiguous"),
    );
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    new_tensor([n, c, oh, ow], |out| {
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            let input = &xs[plane * h * w..(plane + 1) * h * w];
            out.fill(bs[ch]);
            for i in 0..kh {
                let rows = Geometry::valid(i, h, oh, sh, g.pads[0]);
                for j in 0..kw {
                    let cols = Geometry::valid(j, w, ow, sw, g.pads[1]);
                    let tap = ws[(ch * kh + i) * kw + j];
                    for o in rows.clone() {
                        let row = &input[(o * sh + i - g.pads[0]) * w..][..w];
                        let out_row = &mut out[o * ow..(o + 1) * ow];
                        let first = cols.start * sw + j - g.pads[1];
                        if sw == 1 {
                            let len = cols.len();
                            for (y, x) in out_row[cols.clone()].iter_mut().zip(&row[first..first + len]) {
                                *y += tap * x;
                            }
                        } else {
                            for (k, y) in out_row[cols.clone()].iter_mut().enumerate() {
                                *y += tap * row[first + k * sw];
                            }
                        }
                    }
                }
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
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    new_tensor(input, |out| {
        out.par_chunks_mut(h * w).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            let grad = &gs[plane * oh * ow..(plane + 1) * oh * ow];
            for i in 0..kh {
                let rows = Geometry::valid(i, h, oh, sh, g.pads[0]);
                for j in 0..kw {
                    let cols = Geometry::valid(j, w, ow, sw, g.pads[1]);
                    let tap = ws[(ch * kh + i) * kw + j];
                    for o in rows.clone() {
                        let out_row = &mut out[(o * sh + i - g.pads[0]) * w..][..w];
                        let grad_row = &grad[o * ow..(o + 1) * ow];
                        let first = cols.start * sw + j - g.pads[1];
                        if sw == 1 {
                            let len = cols.len();
                            for (x, y) in out_row[first..first + len]
                                .iter_mut()
                                .zip(&grad_row[cols.clone()])
                            {
                                *x += tap * y;
                            }
                        } else {
                            for (k, y) in grad_row[cols.clone()].iter().enumerate() {
                                out_row[first + k * sw] += tap * y;
                            }
                        }
                    }
                }
            }
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
    let [sh, sw] = g.stride;
    let per_channel: Vec<(Vec<f32>, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            // f64 sums: a channel's gradient adds up N * OH * OW products.
            let mut taps = vec![0f64; kh * kw];
            let mut bias = 0f64;
            for image in 0..n {
                let plane = image * c + ch;
                let input = &xs[plane * h * w..(plane + 1) * h * w];
                let grad = &gs[plane * oh * ow..(plane + 1) * oh * ow];
                bias += grad.iter().map(|&v| v as f64).sum::<f64>();
                for i in 0..kh {
                    let rows = Geometry::valid(i, h, oh, sh, g.pads[0]);
                    for j in 0..kw {
                        let cols = Geometry::valid(j, w, ow, sw, g.pads[1]);
                        let mut sum = 0f32;
                        for o in rows.clone() {
                            let row = &input[(o * sh + i - g.pads[0]) * w..][..w];
                            let grad_row = &grad[o * ow..(o + 1) * ow];
                            let first = cols.start * sw + j - g.pads[1];
                            if sw == 1 {
                                let len = cols.len();
                                sum += grad_row[cols.clone()]
                                    .iter()
                                    .zip(&row[first..first + len])
                                    .map(|(a, b)| a * b)
                                    .sum::<f32>();
                            } else {
                                sum += grad_row[cols.clone()]
                                    .iter()
                                    .enumerate()
                                    .map(|(k, a)| a * row[first + k * sw])
                                    .sum::<f32>();
                            }
                        }
                        taps[i * kw + j] += sum as f64;
                    }
                }
            }
            (taps.into_iter().map(|v| v as f32).collect(), bias as f32)
        })
        .collect();
    let weight = new_tensor([c, 1, kh, kw], |out| {
        for (ch, (taps, _)) in per_channel.iter().enumerate() {
            out[ch * kh * kw..(ch + 1) * kh * kw].copy_from_slice(taps);
        }
    });
    let mut bias = FlexTensor::zeros(Shape::new([c]), DType::F32);
    let storage = bias.try_storage_mut::<f32>().expect("a new tensor is unique");
    for (ch, (_, b)) in per_channel.iter().enumerate() {
        storage[ch] = *b;
    }
    (weight, bias)
}

impl DepthwiseBackend for Flex {
    fn depthwise_conv(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        kh: usize,
        kw: usize,
        stride: usize,
        pads: [usize; 4],
    ) -> FlexTensor {
        forward(&x, &weight, &bias, Geometry::new(kh, kw, stride, pads))
    }
}

#[derive(Debug)]
struct DepthwiseConvBackward;

impl Backward<Flex, 3> for DepthwiseConvBackward {
    /// The input, the weight and the geometry.
    type State = (FlexTensor, FlexTensor, Geometry);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, weight, g) = ops.state;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, input_gradient(&grad, &weight, dims4(&x), g));
        }
        if node_weight.is_some() || node_bias.is_some() {
            let (weight_grad, bias_grad) = weight_and_bias_gradients(&x, &grad, g);
            if let Some(node) = node_weight {
                grads.register::<Flex>(node.id, weight_grad);
            }
            if let Some(node) = node_bias {
                grads.register::<Flex>(node.id, bias_grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> DepthwiseBackend for Autodiff<Flex, C> {
    fn depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        kh: usize,
        kw: usize,
        stride: usize,
        pads: [usize; 4],
    ) -> FloatTensor<Self> {
        let g = Geometry::new(kh, kw, stride, pads);
        match DepthwiseConvBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight, bias) = (
                    x.primitive().clone(),
                    weight.primitive().clone(),
                    bias.into_primitive(),
                );
                let output = forward(&x, &weight, &bias, g);
                prep.finish((x, weight, g), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(x.primitive(), weight.primitive(), bias.primitive(), g))
            }
        }
    }
}

//! Depthwise convolution (one filter per channel) on the CPU backend, forward and backward, as a
//! burn backend extension ([`super::kernels`]) with a hand-written backward pass.
//!
//! burn computes a grouped convolution's weight gradient one group at a time, each a convolution
//! of one channel with its output gradient as an H×W kernel: for MobileNetV2's depthwise layers
//! (144 to 960 groups) that is thousands of small unfolds per step, most of the backward pass.
//! Here each gradient is one pass over the activations, with the channels in parallel.
//!
//! Tensors are contiguous NCHW f32. Padding is (top, left, bottom, right), as in ONNX (TF's SAME
//! puts the odd pixel last).

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::clip::Bounds;
use super::flex::{contiguous, dims4, from_values, new_tensor};
use super::geometry::{Geometry, add_scaled, keeping, scatter_scaled};
use super::lanes::{dot, sum};
use super::tracked::ConvKernels;

/// The kernels, which the CPU backend runs and [`super::tracked::conv`] records with autodiff.
#[derive(Debug)]
pub struct Depthwise;

impl ConvKernels for Depthwise {
    type Geometry = Geometry;

    /// The forward pass: each (image, channel) plane in parallel, tap by tap (over the whole plane
    /// when the output covers the input, else a row at a time), then clamped.
    fn forward(
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
        let plane_taps = g.plane_taps([h, w]);
        new_tensor(&[n, c, oh, ow], |out| {
            out.par_chunks_mut(oh * ow).enumerate().for_each_init(
                Default::default,
                |(saved, phases), (plane, out)| {
                    let ch = plane % c;
                    let input = &xs[plane * h * w..][..h * w];
                    out.fill(bs[ch]);
                    if let Some(plane_taps) = &plane_taps {
                        let source = plane_taps.split(input, phases);
                        for t in &plane_taps.taps {
                            keeping(out, t.wrapped.iter().copied(), saved, |out| {
                                let a = ws[ch * taps + t.tap];
                                add_scaled(&mut out[t.run.clone()], a, source, t.source(t.run.start), 1);
                            });
                        }
                    } else {
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
                    }
                    if let Some(bounds) = clamp {
                        bounds.apply(out);
                    }
                },
            );
        })
    }

    /// The input's gradient: each output gradient scattered back through the taps that read it.
    fn input_gradient(grad: &FlexTensor, weight: &FlexTensor, input: [usize; 4], g: Geometry) -> FlexTensor {
        let (grad, weight) = (contiguous(grad), contiguous(weight));
        let [_, c, h, w] = input;
        let [_, _, oh, ow] = dims4(&grad);
        let (gs, ws) = (
            grad.as_slice::<f32>().expect("contiguous"),
            weight.as_slice::<f32>().expect("contiguous"),
        );
        let taps = g.kernel[0] * g.kernel[1];
        let plane_taps = g.plane_taps([h, w]);
        new_tensor(&input, |out| {
            out.par_chunks_mut(h * w).enumerate().for_each_init(
                Default::default,
                |(saved, phases), (plane, out)| {
                    let ch = plane % c;
                    let grad = &gs[plane * oh * ow..][..oh * ow];
                    let Some(plane_taps) = &plane_taps else {
                        g.for_each_tap_row([h, w], |t| {
                            scatter_scaled(
                                &mut out[t.input_row * w..][..w],
                                t.first_input_column,
                                g.stride[1],
                                ws[ch * taps + t.tap],
                                &grad[t.output_row * ow..][..ow][t.columns],
                            );
                        });
                        return;
                    };
                    let target = plane_taps.gradient_plane(out, phases);
                    for t in &plane_taps.taps {
                        let sources = t.wrapped.iter().map(|&p| t.source(p));
                        keeping(target, sources, saved, |target| {
                            let a = ws[ch * taps + t.tap];
                            scatter_scaled(target, t.source(t.run.start), 1, a, &grad[t.run.clone()]);
                        });
                    }
                    plane_taps.merge(phases, out);
                },
            );
        })
    }

    /// The weight's and the bias's gradients: per channel (in parallel), the sum over images and
    /// positions of each tap's input times the output gradient.
    fn weight_and_bias_gradients(x: &FlexTensor, grad: &FlexTensor, g: Geometry) -> (FlexTensor, FlexTensor) {
        let (x, grad) = (contiguous(x), contiguous(grad));
        let [n, c, h, w] = dims4(&x);
        let [_, _, oh, ow] = dims4(&grad);
        let (xs, gs) = (
            x.as_slice::<f32>().expect("contiguous"),
            grad.as_slice::<f32>().expect("contiguous"),
        );
        let [kh, kw] = g.kernel;
        let plane_taps = g.plane_taps([h, w]);
        let per_channel: Vec<(Vec<f32>, f32)> = (0..c)
            .into_par_iter()
            .map_init(Vec::new, |phases, ch| {
                // f64 sums: a channel's gradient adds up N * OH * OW products.
                let mut taps = vec![0f64; kh * kw];
                let mut bias = 0f64;
                for image in 0..n {
                    let plane = image * c + ch;
                    let input = &xs[plane * h * w..][..h * w];
                    let grad = &gs[plane * oh * ow..][..oh * ow];
                    bias += sum(grad) as f64;
                    let Some(plane_taps) = &plane_taps else {
                        g.for_each_tap_row([h, w], |t| {
                            let values = &grad[t.output_row * ow..][..ow][t.columns];
                            let row = &input[t.input_row * w..][..w];
                            taps[t.tap] += dot(values, row, t.first_input_column, g.stride[1]) as f64;
                        });
                        continue;
                    };
                    let source = plane_taps.split(input, phases);
                    for t in &plane_taps.taps {
                        let run = dot(&grad[t.run.clone()], source, t.source(t.run.start), 1) as f64;
                        let wrapped: f64 = t
                            .wrapped
                            .iter()
                            .map(|&p| (grad[p] * source[t.source(p)]) as f64)
                            .sum();
                        taps[t.tap] += run - wrapped;
                    }
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
}

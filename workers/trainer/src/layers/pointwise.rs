//! 1×1 convolution (stride 1, no padding, one group) on the CPU backend as matrix products per
//! image, forward and backward, as a burn backend extension ([`super::kernels`]) with a hand-written backward pass.
//!
//! burn's `matmul` with the weight broadcast over the batch computes the same products, but adds
//! the bias as a second pass over a second tensor, keeps a weight gradient per image to sum
//! afterwards, and allocates each result twice (`FlexTensor::empty` copies into an aligned
//! buffer). Here the bias is the product's starting value, the weight gradient accumulates in
//! one buffer per thread, and each result is allocated once.
//!
//! Tensors are contiguous NCHW f32.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::clip::Bounds;
use super::tracked::ConvKernels;

use super::flex::{contiguous, dims4, from_values, new_tensor};
use super::lanes;
use super::matrix::{Matrix, multiply};

/// The kernels, which the CPU backend runs and [`super::tracked::conv`] records with autodiff.
#[derive(Debug)]
pub struct Pointwise;

impl ConvKernels for Pointwise {
    type Geometry = ();

    /// The forward pass: the images in parallel, each output plane starting from its bias, each
    /// image's output clamped once computed.
    fn forward(
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: &FlexTensor,
        _: (),
        clamp: Option<Bounds>,
    ) -> FlexTensor {
        let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
        let [n, c_in, h, w] = dims4(&x);
        let c_out = dims4(&weight)[0];
        let (xs, ws, bs) = (
            x.as_slice::<f32>().expect("contiguous"),
            weight.as_slice::<f32>().expect("contiguous"),
            bias.as_slice::<f32>().expect("contiguous"),
        );
        let plane = h * w;
        new_tensor(&[n, c_out, h, w], |out| {
            out.par_chunks_mut((c_out * plane).max(1))
                .enumerate()
                .for_each(|(image, out)| {
                    for (row, &b) in out.chunks_mut(plane).zip(bs) {
                        row.fill(b);
                    }
                    let input = Matrix::rows(&xs[image * c_in * plane..], c_in, plane);
                    multiply(out, Matrix::rows(ws, c_out, c_in), input, true);
                    if let Some(bounds) = clamp {
                        bounds.apply(out);
                    }
                });
        })
    }

    /// The input's gradient: `weightᵀ · grad` per image.
    fn input_gradient(grad: &FlexTensor, weight: &FlexTensor, input: [usize; 4], _: ()) -> FlexTensor {
        let c_in = input[1];
        let (grad, weight) = (contiguous(grad), contiguous(weight));
        let [n, c_out, h, w] = dims4(&grad);
        let (gs, ws) = (
            grad.as_slice::<f32>().expect("contiguous"),
            weight.as_slice::<f32>().expect("contiguous"),
        );
        let plane = h * w;
        new_tensor(&[n, c_in, h, w], |out| {
            out.par_chunks_mut((c_in * plane).max(1))
                .enumerate()
                .for_each(|(image, out)| {
                    let grad = Matrix::rows(&gs[image * c_out * plane..], c_out, plane);
                    multiply(out, Matrix::rows(ws, c_out, c_in).transposed(), grad, false);
                });
        })
    }

    /// The weight's and the bias's gradients: `Σ grad · xᵀ` and the sum of `grad` over the images
    /// (each thread sums its images into one buffer, then the buffers are added).
    fn weight_and_bias_gradients(x: &FlexTensor, grad: &FlexTensor, _: ()) -> (FlexTensor, FlexTensor) {
        let (x, grad) = (contiguous(x), contiguous(grad));
        let [n, c_in, h, w] = dims4(&x);
        let c_out = dims4(&grad)[1];
        let (xs, gs) = (
            x.as_slice::<f32>().expect("contiguous"),
            grad.as_slice::<f32>().expect("contiguous"),
        );
        let plane = h * w;
        let zero = || (vec![0f32; c_out * c_in], vec![0f64; c_out]);
        let (weight, bias) = (0..n)
            .into_par_iter()
            .fold(zero, |(mut weight, mut bias), image| {
                let grad = &gs[image * c_out * plane..][..c_out * plane];
                let input = Matrix::rows(&xs[image * c_in * plane..], c_in, plane);
                multiply(
                    &mut weight,
                    Matrix::rows(grad, c_out, plane),
                    input.transposed(),
                    true,
                );
                for (sum, row) in bias.iter_mut().zip(grad.chunks(plane.max(1))) {
                    *sum += lanes::sum(row) as f64;
                }
                (weight, bias)
            })
            .reduce(zero, |(mut w1, mut b1), (w2, b2)| {
                w1.iter_mut().zip(w2).for_each(|(a, b)| *a += b);
                b1.iter_mut().zip(b2).for_each(|(a, b)| *a += b);
                (w1, b1)
            });
        (
            from_values(weight, &[c_out, c_in, 1, 1]),
            from_values(bias.into_iter().map(|v| v as f32).collect(), &[c_out]),
        )
    }
}

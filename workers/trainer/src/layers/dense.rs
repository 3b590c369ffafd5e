//! A one-group K×K convolution (the box predictors, the first convolution) on the CPU backend:
//! each image unfolded into columns and multiplied by the weight, forward and backward, as a
//! burn backend extension ([`super::kernels`]) with a hand-written backward pass.
//!
//! burn computes this convolution's weight gradient as a convolution with the output's gradient
//! as an OH×OW kernel (unfolding each activation by it) and its input gradient as a transposed
//! convolution. Here both gradients are matrix products with the same columns the forward pass
//! multiplies, unfolded again from the input (cheaper to redo than to keep: C×K×K×OH×OW values
//! per image).
//!
//! Tensors are contiguous NCHW f32; the geometry is the depthwise kernels' [`Geometry`].

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::clip::Bounds;
use super::tracked::ConvKernels;

use super::flex::{contiguous, dims4, from_values, new_tensor};
use super::geometry::{Geometry, add_scaled, scatter_scaled};
use super::lanes;
use super::matrix::{Matrix, multiply};

/// One image's input (`[C, H, W]`) and the convolution's shape.
#[derive(Clone, Copy)]
struct Shape {
    channels: usize,
    size: [usize; 2],
    geometry: Geometry,
}

impl Shape {
    fn taps(&self) -> usize {
        self.geometry.kernel[0] * self.geometry.kernel[1]
    }

    /// Output positions per image.
    fn positions(&self) -> usize {
        let [oh, ow] = self.geometry.output(self.size[0], self.size[1]);
        oh * ow
    }

    /// Rows of the columns: one per (channel, tap).
    fn rows(&self) -> usize {
        self.channels * self.taps()
    }

    fn image_len(&self) -> usize {
        self.channels * self.size[0] * self.size[1]
    }

    /// `cols` [C·K·K, OH·OW]: row (c, tap) holds the input that tap reads at each output
    /// position, zero where it falls in the padding.
    fn unfold(&self, image: &[f32], cols: &mut [f32]) {
        let [h, w] = self.size;
        let ow = self.geometry.output(h, w)[1];
        let (taps, positions) = (self.taps(), self.positions());
        cols.fill(0.0);
        for (c, input) in image.chunks(h * w).enumerate() {
            self.geometry.for_each_tap_row([h, w], |t| {
                let row = &mut cols[(c * taps + t.tap) * positions..][..positions];
                let out = &mut row[t.output_row * ow..][..ow][t.columns];
                add_scaled(
                    out,
                    1.0,
                    &input[t.input_row * w..][..w],
                    t.first_input_column,
                    self.geometry.stride[1],
                );
            });
        }
    }

    /// The adjoint of [`unfold`](Self::unfold): each column value added back to the input
    /// position it came from (`image` must start zeroed).
    fn fold(&self, cols: &[f32], image: &mut [f32]) {
        let [h, w] = self.size;
        let ow = self.geometry.output(h, w)[1];
        let (taps, positions) = (self.taps(), self.positions());
        for (c, input) in image.chunks_mut(h * w).enumerate() {
            self.geometry.for_each_tap_row([h, w], |t| {
                let row = &cols[(c * taps + t.tap) * positions..][..positions];
                scatter_scaled(
                    &mut input[t.input_row * w..][..w],
                    t.first_input_column,
                    self.geometry.stride[1],
                    1.0,
                    &row[t.output_row * ow..][..ow][t.columns],
                );
            });
        }
    }
}

fn shape_of(x: &FlexTensor, g: Geometry) -> (usize, Shape) {
    let [n, c, h, w] = dims4(x);
    (
        n,
        Shape {
            channels: c,
            size: [h, w],
            geometry: g,
        },
    )
}

/// The kernels, which the CPU backend runs and [`super::tracked::conv`] records with autodiff.
#[derive(Debug)]
pub struct Dense;

impl ConvKernels for Dense {
    type Geometry = Geometry;

    /// The forward pass: the images in parallel, each output plane starting from its bias, each
    /// image's output clamped once computed.
    fn forward(
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: &FlexTensor,
        g: Geometry,
        clamp: Option<Bounds>,
    ) -> FlexTensor {
        let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
        let (n, s) = shape_of(&x, g);
        let c_out = dims4(&weight)[0];
        let [oh, ow] = g.output(s.size[0], s.size[1]);
        let (xs, ws, bs) = (
            x.as_slice::<f32>().expect("contiguous"),
            weight.as_slice::<f32>().expect("contiguous"),
            bias.as_slice::<f32>().expect("contiguous"),
        );
        let positions = s.positions();
        new_tensor(&[n, c_out, oh, ow], |out| {
            out.par_chunks_mut((c_out * positions).max(1))
                .enumerate()
                .for_each_init(
                    || vec![0f32; s.rows() * positions],
                    |cols, (image, out)| {
                        s.unfold(&xs[image * s.image_len()..][..s.image_len()], cols);
                        for (row, &b) in out.chunks_mut(positions.max(1)).zip(bs) {
                            row.fill(b);
                        }
                        let columns = Matrix::rows(cols, s.rows(), positions);
                        multiply(out, Matrix::rows(ws, c_out, s.rows()), columns, true);
                        if let Some(bounds) = clamp {
                            bounds.apply(out);
                        }
                    },
                );
        })
    }

    /// The input's gradient: per image, `weightᵀ · grad` folded back onto the input.
    fn input_gradient(grad: &FlexTensor, weight: &FlexTensor, input: [usize; 4], g: Geometry) -> FlexTensor {
        let (grad, weight) = (contiguous(grad), contiguous(weight));
        let [_, c_in, h, w] = input;
        let s = Shape {
            channels: c_in,
            size: [h, w],
            geometry: g,
        };
        let c_out = dims4(&grad)[1];
        let (gs, ws) = (
            grad.as_slice::<f32>().expect("contiguous"),
            weight.as_slice::<f32>().expect("contiguous"),
        );
        let positions = s.positions();
        new_tensor(&input, |out| {
            out.par_chunks_mut(s.image_len().max(1))
                .enumerate()
                .for_each_init(
                    || vec![0f32; s.rows() * positions],
                    |cols, (image, out)| {
                        let grad = Matrix::rows(&gs[image * c_out * positions..], c_out, positions);
                        multiply(cols, Matrix::rows(ws, c_out, s.rows()).transposed(), grad, false);
                        s.fold(cols, out);
                    },
                );
        })
    }

    /// The weight's and the bias's gradients: `Σ grad · colsᵀ` and the sum of `grad` over the
    /// images (each thread sums its images into one buffer, then the buffers are added).
    fn weight_and_bias_gradients(x: &FlexTensor, grad: &FlexTensor, g: Geometry) -> (FlexTensor, FlexTensor) {
        let (x, grad) = (contiguous(x), contiguous(grad));
        let (n, s) = shape_of(&x, g);
        let c_out = dims4(&grad)[1];
        let (xs, gs) = (
            x.as_slice::<f32>().expect("contiguous"),
            grad.as_slice::<f32>().expect("contiguous"),
        );
        let positions = s.positions();
        let zero = || {
            (
                vec![0f32; c_out * s.rows()],
                vec![0f64; c_out],
                vec![0f32; s.rows() * positions],
            )
        };
        let (weight, bias, _) = (0..n)
            .into_par_iter()
            .fold(zero, |(mut weight, mut bias, mut cols), image| {
                s.unfold(&xs[image * s.image_len()..][..s.image_len()], &mut cols);
                let grad = &gs[image * c_out * positions..][..c_out * positions];
                let columns = Matrix::rows(&cols, s.rows(), positions);
                multiply(
                    &mut weight,
                    Matrix::rows(grad, c_out, positions),
                    columns.transposed(),
                    true,
                );
                for (sum, row) in bias.iter_mut().zip(grad.chunks(positions.max(1))) {
                    *sum += lanes::sum(row) as f64;
                }
                (weight, bias, cols)
            })
            .reduce(zero, |(mut w1, mut b1, cols), (w2, b2, _)| {
                w1.iter_mut().zip(w2).for_each(|(a, b)| *a += b);
                b1.iter_mut().zip(b2).for_each(|(a, b)| *a += b);
                (w1, b1, cols)
            });
        let [kh, kw] = g.kernel;
        (
            from_values(weight, &[c_out, s.channels, kh, kw]),
            from_values(bias.into_iter().map(|v| v as f32).collect(), &[c_out]),
        )
    }
}

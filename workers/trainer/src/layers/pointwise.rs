//! 1×1 convolution (stride 1, no padding, one group) on the CPU backend as matrix products per
//! image, forward and backward, as a burn backend extension with a hand-written backward pass.
//!
//! burn's `matmul` with the weight broadcast over the batch computes the same products, but adds
//! the bias as a second pass over a second tensor, keeps a weight gradient per image to sum
//! afterwards, and allocates each result twice (`FlexTensor::empty` copies into an aligned
//! buffer). Here the bias is the product's starting value, the weight gradient accumulates in
//! one buffer per thread, and each result is allocated once.
//!
//! Tensors are contiguous NCHW f32.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::clip::Bounds;
use super::tracked::{self, ConvKernels};

use super::flex::{contiguous, dims4, from_values, new_tensor};
use super::lanes;

#[backend_extension(Flex, Autodiff)]
pub trait PointwiseBackend: Backend {
    /// `x` [N, C_in, H, W], `weight` [C_out, C_in, 1, 1], `bias` [C_out] -> [N, C_out, H, W],
    /// clamped to `clamp` when given.
    fn pointwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        clamp: Option<Bounds>,
    ) -> FloatTensor<Self>;
}

/// A matrix read from a slice: element (r, c) at `r * row_stride + c * column_stride`.
#[derive(Clone, Copy)]
pub(super) struct Matrix<'a> {
    values: &'a [f32],
    rows: usize,
    columns: usize,
    row_stride: usize,
    column_stride: usize,
}

impl<'a> Matrix<'a> {
    /// The first `rows` × `columns` values of `values`, row after row.
    pub(super) fn rows(values: &'a [f32], rows: usize, columns: usize) -> Self {
        Matrix {
            values: &values[..rows * columns],
            rows,
            columns,
            row_stride: columns,
            column_stride: 1,
        }
    }

    pub(super) fn transposed(self) -> Self {
        Matrix {
            rows: self.columns,
            columns: self.rows,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
            ..self
        }
    }
}

/// `out = a · b` (or `out += a · b` with `accumulate`), `out` row-major, on this thread: the
/// one call into `gemm`'s raw-pointer interface, behind bounds checks.
#[allow(unsafe_code)]
pub(super) fn multiply(out: &mut [f32], a: Matrix, b: Matrix, accumulate: bool) {
    assert_eq!(a.columns, b.rows, "inner dimensions");
    assert_eq!(out.len(), a.rows * b.columns, "output size");
    for m in [a, b] {
        let last = (m.rows.max(1) - 1) * m.row_stride + (m.columns.max(1) - 1) * m.column_stride;
        assert!(
            m.rows * m.columns == 0 || last < m.values.len(),
            "matrix outside its slice"
        );
    }
    if out.is_empty() {
        return;
    }
    // SAFETY: the asserts above keep every index gemm reads or writes inside the slices, and
    // `out` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            a.rows,
            b.columns,
            a.columns,
            out.as_mut_ptr(),
            1,
            b.columns as isize,
            accumulate,
            a.values.as_ptr(),
            a.column_stride as isize,
            a.row_stride as isize,
            b.values.as_ptr(),
            b.column_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The forward pass: the images in parallel, each output plane starting from its bias, each
/// image's output clamped once computed.
pub fn forward(x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor, clamp: Option<Bounds>) -> FlexTensor {
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
pub fn input_gradient(grad: &FlexTensor, weight: &FlexTensor, c_in: usize) -> FlexTensor {
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
pub fn weight_and_bias_gradients(x: &FlexTensor, grad: &FlexTensor) -> (FlexTensor, FlexTensor) {
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

impl PointwiseBackend for Flex {
    fn pointwise_conv(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        clamp: Option<Bounds>,
    ) -> FlexTensor {
        forward(&x, &weight, &bias, clamp)
    }
}

/// The kernels [`tracked::conv`] records.
#[derive(Debug)]
pub struct Pointwise;

impl ConvKernels for Pointwise {
    type Geometry = ();

    fn forward(
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: &FlexTensor,
        _: (),
        clamp: Option<Bounds>,
    ) -> FlexTensor {
        forward(x, weight, bias, clamp)
    }

    fn input_gradient(grad: &FlexTensor, weight: &FlexTensor, input: [usize; 4], _: ()) -> FlexTensor {
        input_gradient(grad, weight, input[1])
    }

    fn weight_and_bias_gradients(x: &FlexTensor, grad: &FlexTensor, _: ()) -> (FlexTensor, FlexTensor) {
        weight_and_bias_gradients(x, grad)
    }
}

impl<C: CheckpointStrategy> PointwiseBackend for Autodiff<Flex, C> {
    fn pointwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        clamp: Option<Bounds>,
    ) -> FloatTensor<Self> {
        tracked::conv::<Pointwise, C>(x, weight, bias, (), clamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiply_computes_and_accumulates_a_product_with_a_transposed_operand() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 × 3
        let b = [1.0, 0.0, 2.0, 1.0, 0.0, 1.0]; // read transposed: 3 × 2 [[1, 1], [0, 0], [2, 1]]
        let mut out = [10.0; 4];
        multiply(
            &mut out,
            Matrix::rows(&a, 2, 3),
            Matrix::rows(&b, 2, 3).transposed(),
            false,
        );
        assert_eq!(out, [7.0, 4.0, 16.0, 10.0]);
        multiply(
            &mut out,
            Matrix::rows(&a, 2, 3),
            Matrix::rows(&b, 2, 3).transposed(),
            true,
        );
        assert_eq!(out, [14.0, 8.0, 32.0, 20.0]);
    }

    #[test]
    #[should_panic(expected = "matrix outside its slice")]
    fn multiply_refuses_a_matrix_that_reads_past_its_slice() {
        let a = [1.0; 4];
        let wide = Matrix {
            row_stride: 3,
            ..Matrix::rows(&a, 2, 2)
        };
        multiply(&mut [0.0; 4], wide, Matrix::rows(&a, 2, 2), false);
    }
}

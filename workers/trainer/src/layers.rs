//! The student's convolutions in the form the CPU backend computes fastest, values and gradients
//! equal to `conv2d`'s.
//!
//! burn-flex computes a convolution's weight gradient as a convolution of the input with the
//! output's gradient as its kernel (an H×W kernel unfolded over the whole image): for
//! SSD-MobileNetV2's 1×1 convolutions, most of its multiply-adds, that is a copy of every
//! activation before a matrix product. A 1×1 convolution is a matrix product itself, and so are
//! both of its gradients: forward and backward together take a third to a half of the time
//! (`examples/layer_timings.rs`).

use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

/// `conv2d(x, weight, bias, options)`, computed as a matrix product where that is the same
/// operation (a 1×1 kernel, stride 1, no padding, one group).
pub fn conv(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, options: ConvOptions<2>) -> Tensor<4> {
    let [c_out, c_in, kh, kw] = weight.dims();
    let pointwise = kh == 1
        && kw == 1
        && options.stride == [1, 1]
        && options.padding == [(0, 0), (0, 0)]
        && options.dilation == [1, 1]
        && options.groups == 1;
    if !pointwise {
        return conv2d(x, weight, bias, options);
    }
    let [n, _, h, w] = x.dims();
    // [1, C_out, C_in] x [N, C_in, H*W]: the weight broadcasts over the batch.
    let y = weight
        .reshape([1, c_out, c_in])
        .matmul(x.reshape([n, c_in, h * w]));
    let y = match bias {
        Some(b) => y + b.reshape([1, c_out, 1]),
        None => y,
    };
    y.reshape([n, c_out, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn options(stride: usize, pad: usize, groups: usize) -> ConvOptions<2> {
        ConvOptions {
            stride: [stride, stride],
            padding: [(pad, pad), (pad, pad)],
            dilation: [1, 1],
            groups,
        }
    }

    fn assert_close(a: Tensor<4>, b: Tensor<4>, what: &str) {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "{what}: relative difference {worst}");
    }

    /// The value and the three gradients of `conv` and of burn's `conv2d` on the same inputs.
    fn compare(x_shape: [usize; 4], w_shape: [usize; 4], options: ConvOptions<2>) {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random(x_shape, Distribution::Default, &device);
        let w = Tensor::<4>::random(w_shape, Distribution::Default, &device);
        let b = Tensor::<1>::random([w_shape[0]], Distribution::Default, &device);
        // A weighting of the output that differs per element, so that a gradient in the wrong
        // place shows.
        let out = |size: usize, k: usize| (size + 2 * options.padding[0].0 - k) / options.stride[0] + 1;
        let out_shape = [
            x_shape[0],
            w_shape[0],
            out(x_shape[2], w_shape[2]),
            out(x_shape[3], w_shape[3]),
        ];
        let weighting = Tensor::<4>::random(out_shape, Distribution::Default, &device);
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, ConvOptions<2>) -> Tensor<4>| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = f(x.clone(), w.clone(), Some(b.clone()), options.clone());
            let grads = (y.clone() * weighting.clone()).sum().backward();
            (
                y.inner(),
                x.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
                b.grad(&grads).unwrap().reshape([1, 1, 1, -1]),
            )
        };
        let ours = run(&|x, w, b, o| conv(x, w, b, o));
        let reference = run(&|x, w, b, o| conv2d(x, w, b, o));
        assert_close(ours.0, reference.0, "output");
        assert_close(ours.1, reference.1, "input gradient");
        assert_close(ours.2, reference.2, "weight gradient");
        assert_close(ours.3, reference.3, "bias gradient");
    }

    #[test]
    fn a_pointwise_convolution_as_a_matrix_product_has_conv2d_values_and_gradients() {
        compare([3, 5, 4, 6], [7, 5, 1, 1], options(1, 0, 1));
    }

    #[test]
    fn other_convolutions_are_conv2d() {
        compare([2, 4, 7, 7], [6, 4, 3, 3], options(2, 1, 1));
        compare([2, 4, 7, 7], [4, 1, 3, 3], options(1, 1, 4));
    }
}

//! The student's convolutions and ReLU6 in the forms the CPU backend runs and trains fastest,
//! values and gradients equal to burn's `conv2d` and `clamp` (the tests below compare them).
//!
//! On burn-flex, with autodiff or without (evaluation):
//! - a 1×1 convolution is a matrix product per image, and so are both its gradients
//!   ([`pointwise`]; on other backends burn's `matmul`): burn computes its weight gradient as a
//!   convolution with the output's gradient as an H×W kernel, unfolding every activation first;
//! - a depthwise convolution runs [`depthwise`]'s kernels: burn's weight gradient loops over
//!   the channels, one small convolution each;
//! - ReLU6 runs [`clip`]: one pass each way instead of masked fills, written over the
//!   convolution's output (and over the gradient on the way back); after one of the
//!   convolutions above, the convolution's kernels clamp each part of the output as they write
//!   it (`conv`'s `clamp`), and its backward pass masks the gradient first.
//!
//! Without the clamp burn's forward kernels were as fast; with it ours are faster (the trainer's
//! evaluation 3.9 -> 2.9 s). Other backends run burn's own, but for a 1×1 convolution with
//! autodiff (burn's `matmul`). Per layer: `cargo run --release -p autotuner-trainer --example
//! layer_timings` (bench-results/trainer-layers.json).

pub mod clip;
pub mod dense;
pub mod depthwise;
mod flex;
pub mod geometry;
mod kernels;
mod lanes;
mod matrix;
pub mod pointwise;
mod tracked;

use burn::backend::Dispatch;
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

pub use clip::Bounds;
use clip::ClipBackend;
use geometry::Geometry;
use kernels::{Kernel, KernelBackend};

/// `x.clamp(min, max)`, on the CPU backend in one pass forward and one backward, in place when
/// `x` was the only reference to its values ([`clip`]).
pub fn clip(x: Tensor<4>, min: f32, max: f32) -> Tensor<4> {
    if !on_cpu_backend(&x) {
        return x.clamp(min, max);
    }
    Tensor::from_dispatch(<Dispatch as ClipBackend>::clip(x.into_dispatch(), min, max))
}

/// How [`conv`] computes a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// On the CPU backend (with autodiff or without), one of its kernels: a 1×1 convolution
    /// (stride 1, no padding, one group) as a matrix product, one filter per channel with
    /// [`depthwise`]'s, any other one-group convolution with [`dense`]'s.
    Kernel(Kernel),
    /// A 1×1 convolution with autodiff on another backend: burn's `matmul`.
    Matmul,
    /// burn's `conv2d`.
    Burn,
}

fn route(x: &Tensor<4>, weight: &Tensor<4>, options: &ConvOptions<2>) -> Route {
    let [c_out, c_in, kh, kw] = weight.dims();
    let channels = x.dims()[1];
    let plain = options.dilation == [1, 1] && options.stride[0] == options.stride[1];
    let cpu = on_cpu_backend(x);
    let tracked = x.device().is_autodiff() || weight.device().is_autodiff();
    let one_by_one = options.groups == 1
        && [kh, kw] == [1, 1]
        && options.stride == [1, 1]
        && options.padding == [(0, 0), (0, 0)];
    let [(top, bottom), (left, right)] = options.padding;
    let geometry = Geometry::new(kh, kw, options.stride[0], [top, left, bottom, right]);
    if plain && one_by_one && cpu {
        return Route::Kernel(Kernel::Pointwise);
    }
    if plain && one_by_one && tracked {
        return Route::Matmul;
    }
    if plain && cpu && c_in == 1 && options.groups == channels && c_out == channels {
        return Route::Kernel(Kernel::Depthwise(geometry));
    }
    if plain && cpu && options.groups == 1 && c_in == channels {
        return Route::Kernel(Kernel::Dense(geometry));
    }
    Route::Burn
}

/// `conv2d(x, weight, bias, options)`, then clamped to `clamp` when given: on the CPU backend
/// with its own kernels, each clamping its output as it writes it ([`Route`]); with autodiff on
/// other backends, a 1×1 convolution as a matrix product.
pub fn conv(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    clamp: Option<Bounds>,
) -> Tensor<4> {
    let clamped = |y: Tensor<4>| match clamp {
        Some(b) => clip(y, b.min, b.max),
        None => y,
    };
    match route(&x, &weight, &options) {
        Route::Kernel(kernel) => {
            // The kernels take a bias; a zero one stands in for none (a constant: no gradient
            // kept).
            let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &x.device()));
            Tensor::from_dispatch(<Dispatch as KernelBackend>::kernel_conv(
                x.into_dispatch(),
                weight.into_dispatch(),
                bias.into_dispatch(),
                kernel,
                clamp,
            ))
        }
        Route::Matmul => clamped(pointwise_as_matmul(x, weight, bias)),
        Route::Burn => clamped(conv2d(x, weight, bias, options)),
    }
}

/// A 1×1 convolution as burn's `matmul`, for the backends [`pointwise`] does not extend.
fn pointwise_as_matmul(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let [n, c_in, h, w] = x.dims();
    let c_out = weight.dims()[0];
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

/// Whether `x` lives on burn-flex (with autodiff or without): the backend [`depthwise`] extends.
fn on_cpu_backend(x: &Tensor<4>) -> bool {
    matches!(
        x.device().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    )
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

    /// TF's SAME padding of a 3x3 kernel at stride 2 on an even size: the odd pixel last.
    fn tf_same_stride_2(groups: usize) -> ConvOptions<2> {
        ConvOptions {
            stride: [2, 2],
            padding: [(0, 1), (0, 1)],
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

    /// The value and the three gradients of `conv` and of burn's `conv2d` on the same inputs,
    /// with a bias and without, and clamped.
    fn compare(x_shape: [usize; 4], w_shape: [usize; 4], options: ConvOptions<2>) {
        for (with_bias, clamped) in [(true, false), (false, false), (true, true)] {
            compare_with(x_shape, w_shape, options.clone(), with_bias, clamped, &conv);
        }
    }

    type ConvFn =
        dyn Fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, ConvOptions<2>, Option<Bounds>) -> Tensor<4>;

    /// With `clamped`, both outputs are clamped to bounds that cut off some values at each end.
    fn compare_with(
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        options: ConvOptions<2>,
        with_bias: bool,
        clamped: bool,
        ours: &ConvFn,
    ) {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random(x_shape, Distribution::Default, &device);
        let w = Tensor::<4>::random(w_shape, Distribution::Default, &device);
        let b = Tensor::<1>::random([w_shape[0]], Distribution::Default, &device);
        let clamp = clamped.then(|| {
            let y = conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone());
            let mut values = y.into_data().try_to_vec::<f32>().unwrap();
            values.sort_by(f32::total_cmp);
            // A bound in the widest gap between neighbouring values near a quartile: no value
            // lies close enough to it that a rounding difference would put it on the other side.
            let cut = |at: usize| {
                let at = at.min(values.len().saturating_sub(2));
                let end = (at + (values.len() / 8).clamp(1, 8)).min(values.len() - 1);
                let i = (at..end.max(at + 1))
                    .max_by(|&i, &j| (values[i + 1] - values[i]).total_cmp(&(values[j + 1] - values[j])))
                    .unwrap();
                (values[i] + values[i + 1]) / 2.0
            };
            let bounds = Bounds {
                min: cut(values.len() / 4),
                max: cut(values.len() * 3 / 4),
            };
            assert!(bounds.min < bounds.max, "bounds inside the output's range");
            bounds
        });
        // A weighting of the output that differs per element, so that a gradient in the wrong
        // place shows.
        let out = |axis: usize| {
            let (begin, end) = options.padding[axis];
            (x_shape[2 + axis] + begin + end - w_shape[2 + axis]) / options.stride[axis] + 1
        };
        let out_shape = [x_shape[0], w_shape[0], out(0), out(1)];
        let weighting = Tensor::<4>::random(out_shape, Distribution::Default, &device);
        let run = |f: &ConvFn| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = f(
                x.clone(),
                w.clone(),
                with_bias.then(|| b.clone()),
                options.clone(),
                clamp,
            );
            let grads = (y.clone() * weighting.clone()).sum().backward();
            (
                y.inner(),
                x.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
                b.grad(&grads).map(|g| g.reshape([1, 1, 1, -1])),
            )
        };
        let reference_fn = |x, w, b, o, clamp: Option<Bounds>| {
            let y = conv2d(x, w, b, o);
            match clamp {
                Some(bounds) => y.clamp(bounds.min, bounds.max),
                None => y,
            }
        };
        // Without autodiff (evaluation).
        let plain = |f: &ConvFn| {
            let b = with_bias.then(|| b.clone().inner());
            f(x.clone().inner(), w.clone().inner(), b, options.clone(), clamp)
        };
        assert_close(plain(ours), plain(&reference_fn), "output without autodiff");
        let ours = run(ours);
        let reference = run(&reference_fn);
        assert_close(ours.0, reference.0, "output");
        assert_close(ours.1, reference.1, "input gradient");
        assert_close(ours.2, reference.2, "weight gradient");
        match (ours.3, reference.3) {
            (Some(ours), Some(reference)) => assert_close(ours, reference, "bias gradient"),
            (ours, reference) => assert_eq!(ours.is_some(), reference.is_some(), "a bias gradient"),
        }
    }

    #[test]
    fn a_pointwise_convolution_has_conv2d_values_and_gradients() {
        compare([3, 5, 4, 6], [7, 5, 1, 1], options(1, 0, 1));
        compare([1, 16, 3, 3], [24, 16, 1, 1], options(1, 0, 1));
        compare([5, 9, 1, 1], [2, 9, 1, 1], options(1, 0, 1));
    }

    #[test]
    fn a_pointwise_convolution_as_burns_matmul_has_conv2d_values_and_gradients() {
        // The form other backends (the GPU) train 1×1 convolutions with.
        for with_bias in [true, false] {
            compare_with(
                [3, 5, 4, 6],
                [7, 5, 1, 1],
                options(1, 0, 1),
                with_bias,
                false,
                &|x, w, b, _, _| pointwise_as_matmul(x, w, b),
            );
        }
    }

    #[test]
    fn a_depthwise_convolution_has_conv2d_values_and_gradients() {
        compare([2, 4, 7, 9], [4, 1, 3, 3], options(1, 1, 4));
        compare([3, 5, 8, 8], [5, 1, 3, 3], options(2, 1, 5));
        compare([2, 6, 10, 6], [6, 1, 3, 3], tf_same_stride_2(6));
        // Images smaller than the kernel, and no padding.
        compare([2, 3, 2, 1], [3, 1, 3, 3], options(1, 1, 3));
        compare([1, 2, 5, 5], [2, 1, 3, 3], options(2, 0, 2));
        // Rows longer than the kernels' sixteen partial sums, with a remainder.
        compare([2, 3, 5, 37], [3, 1, 3, 3], options(1, 1, 3));
        compare([2, 3, 6, 70], [3, 1, 3, 3], tf_same_stride_2(3));
    }

    #[test]
    fn the_cpu_backend_runs_its_own_kernels_with_autodiff_and_without() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 4, 5, 5], &device);
        let depthwise = Tensor::<4>::zeros([4, 1, 3, 3], &device);
        let pointwise = Tensor::<4>::zeros([6, 4, 1, 1], &device);
        let depthwise_3x3 = Route::Kernel(Kernel::Depthwise(Geometry::new(3, 3, 1, [1; 4])));
        let pointwise_route = Route::Kernel(Kernel::Pointwise);
        assert_eq!(route(&x, &depthwise, &options(1, 1, 4)), depthwise_3x3);
        assert_eq!(route(&x, &pointwise, &options(1, 0, 1)), pointwise_route);
        let tracked = Tensor::<4>::zeros([1, 4, 5, 5], &device.clone().autodiff()).require_grad();
        assert_eq!(route(&tracked, &depthwise, &options(1, 1, 4)), depthwise_3x3);
        assert_eq!(route(&tracked, &pointwise, &options(1, 0, 1)), pointwise_route);
        let dense = Tensor::<4>::zeros([6, 4, 3, 3], &device);
        assert_eq!(
            route(&x, &dense, &options(1, 1, 1)),
            Route::Kernel(Kernel::Dense(Geometry::new(3, 3, 1, [1; 4])))
        );
        assert_eq!(
            route(&tracked, &dense, &options(2, 1, 1)),
            Route::Kernel(Kernel::Dense(Geometry::new(3, 3, 2, [1; 4])))
        );
        let grouped = Tensor::<4>::zeros([4, 2, 3, 3], &device);
        assert_eq!(route(&tracked, &grouped, &options(1, 1, 2)), Route::Burn);
    }

    #[test]
    fn clip_has_the_values_and_gradient_of_clamp() {
        let device = Device::flex().autodiff();
        // Values on both sides of both bounds; the weighting puts each gradient in its place.
        let x = Tensor::<4>::random([2, 3, 40, 50], Distribution::Uniform(-3.0, 9.0), &device);
        let weighting = Tensor::<4>::random([2, 3, 40, 50], Distribution::Default, &device);
        let run = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
            let x = x.clone().require_grad();
            let y = f(x.clone());
            let grads = (y.clone() * weighting.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        // A shared input (written to a new tensor) and a fresh one (written over).
        let ours = run(&|x| clip(x, 0.0, 6.0));
        let reference = run(&|x| x.clamp(0.0, 6.0));
        assert_close(ours.0, reference.0, "output");
        assert_close(ours.1, reference.1, "gradient");
        let ours = run(&|x| clip(x * 2.0, 0.0, 6.0));
        let reference = run(&|x| (x * 2.0).clamp(0.0, 6.0));
        assert_close(ours.0, reference.0, "output of a fresh input");
        assert_close(ours.1, reference.1, "gradient through a fresh input");
        let plain = x.inner();
        assert_close(
            clip(plain.clone(), 0.0, 6.0),
            plain.clone().clamp(0.0, 6.0),
            "output without autodiff",
        );
        assert_close(
            clip(plain.clone() * 2.0, 0.0, 6.0),
            (plain * 2.0).clamp(0.0, 6.0),
            "output of a fresh input without autodiff",
        );
    }

    #[test]
    fn a_one_group_convolution_has_conv2d_values_and_gradients() {
        compare([2, 4, 7, 7], [6, 4, 3, 3], options(2, 1, 1));
        // A box predictor's shape, smaller: few outputs from many channels.
        compare([3, 40, 10, 10], [12, 40, 3, 3], options(1, 1, 1));
        compare([3, 5, 9, 8], [7, 5, 3, 3], options(1, 1, 1));
        // The student's first convolution.
        compare([2, 3, 12, 10], [8, 3, 3, 3], tf_same_stride_2(1));
        compare([2, 6, 1, 1], [5, 6, 3, 3], options(1, 1, 1));
        compare([2, 4, 6, 6], [3, 4, 1, 1], options(2, 0, 1));
    }

    #[test]
    fn a_clamped_convolution_without_an_input_gradient_has_conv2d_weight_gradients() {
        // The backward pass masks the output gradient by the kept output whichever gradients
        // it computes.
        let device = Device::flex().autodiff();
        let bounds = Bounds { min: 1.0, max: 2.5 };
        for (x_shape, w_shape, options) in [
            ([2, 4, 6, 6], [4, 1, 3, 3], options(1, 1, 4)),
            ([2, 4, 6, 6], [5, 4, 1, 1], options(1, 0, 1)),
            ([2, 3, 6, 6], [5, 3, 3, 3], options(2, 1, 1)),
        ] {
            let x = Tensor::<4>::random(x_shape, Distribution::Default, &device);
            let w = Tensor::<4>::random(w_shape, Distribution::Default, &device);
            let b = Tensor::<1>::random([w_shape[0]], Distribution::Default, &device);
            let y = conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone());
            let weighting = Tensor::<4>::random(y.dims(), Distribution::Default, &device);
            let run = |clamped: &dyn Fn(Tensor<4>, Tensor<4>, Tensor<1>) -> Tensor<4>| {
                let (w, b) = (w.clone().require_grad(), b.clone().require_grad());
                let y = clamped(x.clone(), w.clone(), b.clone());
                let grads = (y * weighting.clone()).sum().backward();
                (
                    w.grad(&grads).unwrap(),
                    b.grad(&grads).unwrap().reshape([1, 1, 1, -1]),
                )
            };
            let ours = run(&|x, w, b| conv(x, w, Some(b), options.clone(), Some(bounds)));
            let reference =
                run(&|x, w, b| conv2d(x, w, Some(b), options.clone()).clamp(bounds.min, bounds.max));
            assert_close(ours.0, reference.0, "weight gradient");
            assert_close(ours.1, reference.1, "bias gradient");
        }
    }

    #[test]
    fn other_convolutions_are_conv2d() {
        compare([2, 4, 7, 7], [4, 2, 3, 3], options(1, 1, 2));
    }
}

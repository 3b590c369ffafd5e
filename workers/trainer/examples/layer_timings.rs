//! Forward and backward time of SSD-MobileNetV2's convolution shapes, burn's `conv2d` beside
//! `autotuner_trainer::layers`, on the CPU backend with autodiff (batch 32: 16 images, 2 views).
//!
//! `cargo run --release -p autotuner-trainer --example layer_timings`

use std::time::Instant;

use autotuner_trainer::layers;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

/// Milliseconds per forward and backward pass, the mean of 3 after a warm-up.
fn millis(mut pass: impl FnMut()) -> f64 {
    pass();
    let start = Instant::now();
    for _ in 0..3 {
        pass();
    }
    start.elapsed().as_secs_f64() * 1000.0 / 3.0
}

type Conv = fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, ConvOptions<2>) -> Tensor<4>;

fn main() {
    let device = Device::flex().autodiff();
    let batch = 32;
    // (input channels, output channels, kernel, groups, stride, input size): the expansion and
    // projection 1x1s and the depthwise 3x3s of blocks at 1/4, 1/8 and 1/16 resolution.
    let shapes = [
        (24, 144, 1, 1, 1, 75),
        (144, 24, 1, 1, 1, 75),
        (192, 32, 1, 1, 1, 38),
        (96, 576, 1, 1, 1, 19),
        (576, 96, 1, 1, 1, 19),
        (144, 144, 3, 144, 1, 75),
        (144, 144, 3, 144, 2, 75),
        (192, 192, 3, 192, 1, 38),
        (576, 576, 3, 576, 1, 19),
        (960, 960, 3, 960, 1, 10),
    ];
    println!(
        "{:44} {:>12} {:>12} {:>7}",
        "convolution (forward + backward)", "conv2d ms", "layers ms", "ratio"
    );
    for (c_in, c_out, k, groups, stride, size) in shapes {
        let x = Tensor::<4>::random([batch, c_in, size, size], Distribution::Default, &device).require_grad();
        let w =
            Tensor::<4>::random([c_out, c_in / groups, k, k], Distribution::Default, &device).require_grad();
        let b = Tensor::<1>::random([c_out], Distribution::Default, &device).require_grad();
        let pad = k / 2;
        let options = ConvOptions {
            stride: [stride, stride],
            padding: [(pad, pad), (pad, pad)],
            dilation: [1, 1],
            groups,
        };
        let time = |conv: Conv| {
            millis(|| {
                let y = conv(x.clone(), w.clone(), Some(b.clone()), options.clone());
                let _grads = y.sum().backward();
            })
        };
        let reference = time(conv2d);
        let ours = time(layers::conv);
        let name = format!("{c_in}->{c_out} {k}x{k} groups {groups} stride {stride} at {size}");
        println!("{name:44} {reference:12.1} {ours:12.1} {:7.2}", ours / reference);
    }
}

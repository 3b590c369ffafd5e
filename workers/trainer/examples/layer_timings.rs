//! Time of SSD-MobileNetV2's convolution shapes and of its ReLU6, burn's own operations beside
//! `autotuner_trainer::layers`, on the CPU backend: forward and backward with autodiff (training),
//! and forward alone without (the frozen features, evaluation). Batch 16, as a training step.
//!
//! `cargo run --release -p autotuner-trainer --example layer_timings`

use std::time::Instant;

use autotuner_trainer::layers;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

/// Milliseconds per call of `pass`, the mean of 3 after a warm-up.
fn millis(mut pass: impl FnMut()) -> f64 {
    pass();
    let start = Instant::now();
    for _ in 0..3 {
        pass();
    }
    start.elapsed().as_secs_f64() * 1000.0 / 3.0
}

/// Forward and backward with autodiff, then forward alone, of `op` on `inputs`.
fn times(inputs: &[Tensor<4>], op: &dyn Fn(&[Tensor<4>]) -> Tensor<4>) -> (f64, f64) {
    let tracked: Vec<Tensor<4>> = inputs.iter().map(|t| t.clone().require_grad()).collect();
    let plain: Vec<Tensor<4>> = inputs.iter().map(|t| t.clone().inner()).collect();
    (
        millis(|| {
            let _grads = op(&tracked).sum().backward();
        }),
        millis(|| {
            let _y = op(&plain);
        }),
    )
}

fn row(name: &str, burn: (f64, f64), ours: (f64, f64)) {
    println!(
        "{name:46} {:9.1} {:9.1} {:6.2} {:9.1} {:9.1} {:6.2}",
        burn.0,
        ours.0,
        ours.0 / burn.0,
        burn.1,
        ours.1,
        ours.1 / burn.1
    );
}

fn main() {
    // The trainer's allocator settings: without them every fresh buffer is page-faulted, which
    // the training step does not pay (ReLU6 looked 1.1-1.4x slower alone than it is).
    autotuner_trainer::memory::keep_freed_memory();
    let device = Device::flex().autodiff();
    let batch = 16;
    println!(
        "{:46} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6}",
        "ms (burn, layers, ratio)", "train", "train", "", "forward", "forward", ""
    );
    // (input channels, output channels, kernel, groups, stride, input size): MobileNetV2's
    // expansions, projections and depthwise layers, the first convolution, two box predictors
    // and an extra layer.
    let shapes = [
        (24, 144, 1, 1, 1, 75),
        (144, 24, 1, 1, 1, 75),
        (96, 576, 1, 1, 1, 19),
        (144, 144, 3, 144, 1, 75),
        (144, 144, 3, 144, 2, 75),
        (576, 576, 3, 576, 1, 19),
        (960, 960, 3, 960, 1, 10),
        (32, 32, 3, 32, 1, 150),
        (96, 96, 3, 96, 2, 150),
        (192, 192, 3, 192, 1, 38),
    ];
    for (c_in, c_out, k, groups, stride, size) in shapes {
        let x = Tensor::<4>::random([batch, c_in, size, size], Distribution::Default, &device);
        let w = Tensor::<4>::random([c_out, c_in / groups, k, k], Distribution::Default, &device);
        let b = Tensor::<4>::random([1, 1, 1, c_out], Distribution::Default, &device);
        let options = ConvOptions {
            stride: [stride, stride],
            padding: [(k / 2, k / 2), (k / 2, k / 2)],
            dilation: [1, 1],
            groups,
        };
        let burn = times(&[x.clone(), w.clone(), b.clone()], &|t| {
            conv2d(
                t[0].clone(),
                t[1].clone(),
                Some(t[2].clone().reshape([-1])),
                options.clone(),
            )
        });
        let ours = times(&[x, w, b], &|t| {
            layers::conv(
                t[0].clone(),
                t[1].clone(),
                Some(t[2].clone().reshape([-1])),
                options.clone(),
                None,
            )
        });
        row(
            &format!("{c_in}->{c_out} {k}x{k} groups {groups} stride {stride} at {size}"),
            burn,
            ours,
        );
    }
    for (channels, size) in [(144, 75), (576, 19)] {
        let x = Tensor::<4>::random(
            [batch, channels, size, size],
            Distribution::Uniform(-3.0, 9.0),
            &device,
        );
        let burn = times(std::slice::from_ref(&x), &|t| t[0].clone().clamp(0.0, 6.0));
        let ours = times(&[x], &|t| layers::clip(t[0].clone(), 0.0, 6.0));
        row(&format!("ReLU6 {channels} at {size}"), burn, ours);
    }
}

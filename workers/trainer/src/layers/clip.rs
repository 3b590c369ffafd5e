//! Clip (MobileNetV2's ReLU6) on the CPU backend, forward and backward in one pass each.
//!
//! burn's `clamp` is two comparisons and two masked fills forward, and a masked fill per bound
//! backward, each one thread over the whole activation: after the convolutions, the largest
//! cost of a training step (a sixth of it in a profile of the unfrozen step).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::depthwise::contiguous;

/// Elements per parallel task: large enough that scheduling is noise.
const CHUNK: usize = 1 << 15;

#[backend_extension(Flex, Autodiff)]
pub trait ClipBackend: Backend {
    /// `x` clamped to `[min, max]`, as burn's `clamp`: NaN stays NaN.
    fn clip(x: FloatTensor<Self>, min: f32, max: f32) -> FloatTensor<Self>;
}

/// Applies `f` to each element of `a` (and `b`, element for element) into a new tensor of
/// `a`'s shape.
fn map(a: &FlexTensor, b: Option<&FlexTensor>, f: impl Fn(f32, f32) -> f32 + Sync) -> FlexTensor {
    let a = contiguous(a);
    let b = b.map(contiguous);
    let mut out = FlexTensor::zeros(a.shape(), DType::F32);
    let xs = a.as_slice::<f32>().expect("contiguous");
    let ys = b.as_ref().map(|b| b.as_slice::<f32>().expect("contiguous"));
    out.try_storage_mut::<f32>()
        .expect("a new tensor is unique")
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, out)| {
            let xs = &xs[i * CHUNK..][..out.len()];
            match ys {
                Some(ys) => {
                    let ys = &ys[i * CHUNK..][..out.len()];
                    for ((o, &x), &y) in out.iter_mut().zip(xs).zip(ys) {
                        *o = f(x, y);
                    }
                }
                None => {
                    for (o, &x) in out.iter_mut().zip(xs) {
                        *o = f(x, 0.0);
                    }
                }
            }
        });
    out
}

pub fn forward(x: &FlexTensor, min: f32, max: f32) -> FlexTensor {
    map(x, None, |x, _| {
        if x < min {
            min
        } else if x > max {
            max
        } else {
            x
        }
    })
}

/// The gradient passes where the input was inside `[min, max]` (burn's `clamp` masks only
/// what lies strictly outside).
pub fn backward(x: &FlexTensor, grad: &FlexTensor, min: f32, max: f32) -> FlexTensor {
    map(x, Some(grad), |x, g| if x < min || x > max { 0.0 } else { g })
}

impl ClipBackend for Flex {
    fn clip(x: FlexTensor, min: f32, max: f32) -> FlexTensor {
        forward(&x, min, max)
    }
}

#[derive(Debug)]
struct ClipBackward;

impl Backward<Flex, 1> for ClipBackward {
    /// The input and the bounds.
    type State = (FlexTensor, f32, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node {
            let (x, min, max) = ops.state;
            grads.register::<Flex>(node.id, backward(&x, &grad, min, max));
        }
    }
}

impl<C: CheckpointStrategy> ClipBackend for Autodiff<Flex, C> {
    fn clip(x: FloatTensor<Self>, min: f32, max: f32) -> FloatTensor<Self> {
        match ClipBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = x.primitive().clone();
                let output = forward(&x, min, max);
                prep.finish((x, min, max), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), min, max)),
        }
    }
}

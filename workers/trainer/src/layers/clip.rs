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
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::flex::{contiguous, in_place, new_tensor};

/// Elements per parallel task: large enough that scheduling is noise.
const CHUNK: usize = 1 << 15;

/// The bounds a value is clamped to (MobileNetV2's ReLU6: 0 and 6), as burn's `clamp`: NaN
/// stays NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub min: f32,
    pub max: f32,
}

impl Bounds {
    pub fn clamp(self, x: f32) -> f32 {
        if x < self.min {
            self.min
        } else if x > self.max {
            self.max
        } else {
            x
        }
    }

    /// Each value clamped, in place: a convolution that ends in ReLU6 applies it to each part
    /// of its output while that part is still in cache.
    pub fn apply(self, values: &mut [f32]) {
        values.iter_mut().for_each(|v| *v = self.clamp(*v));
    }

    /// Whether a gradient passes an output `y`: strictly inside the bounds, as PyTorch's
    /// `hardtanh_backward`.
    pub fn passes(self, y: f32) -> bool {
        y > self.min && y < self.max
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait ClipBackend: Backend {
    /// `x` clamped to `[min, max]`, as burn's `clamp`: NaN stays NaN.
    fn clip(x: FloatTensor<Self>, min: f32, max: f32) -> FloatTensor<Self>;
}

/// `f(a, b)` element for element (`a` is `b` when absent), written over `b` when nothing else
/// holds it (a convolution's fresh output, a gradient), else into a new tensor.
fn map(a: Option<&FlexTensor>, mut b: FlexTensor, f: impl Fn(f32, f32) -> f32 + Sync) -> FlexTensor {
    let a = a.map(contiguous);
    let xs = a.as_ref().map(|a| a.as_slice::<f32>().expect("contiguous"));
    // `ys` is `b`'s values when they are not the output itself.
    let apply = |out: &mut [f32], ys: Option<&[f32]>| {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
            let range = i * CHUNK..i * CHUNK + out.len();
            // One loop per case, so that each vectorises.
            match (xs.map(|xs| &xs[range.clone()]), ys.map(|ys| &ys[range])) {
                (None, None) => out.iter_mut().for_each(|o| *o = f(*o, *o)),
                (None, Some(ys)) => out.iter_mut().zip(ys).for_each(|(o, &y)| *o = f(y, y)),
                (Some(xs), None) => out.iter_mut().zip(xs).for_each(|(o, &x)| *o = f(x, *o)),
                (Some(xs), Some(ys)) => out
                    .iter_mut()
                    .zip(xs)
                    .zip(ys)
                    .for_each(|((o, &x), &y)| *o = f(x, y)),
            }
        })
    };
    if let Some(out) = in_place(&mut b) {
        apply(out, None);
        return b;
    }
    let b = contiguous(&b);
    new_tensor(&b.shape(), |out| apply(out, b.as_slice::<f32>()))
}

/// The input clamped to `[min, max]`, in place when the caller held the only reference to it
/// (a convolution's fresh output, in the student).
pub fn forward(x: FlexTensor, bounds: Bounds) -> FlexTensor {
    map(None, x, |x, _| bounds.clamp(x))
}

/// The gradient passes where the output lies strictly inside `(min, max)`, as PyTorch's
/// `hardtanh_backward`: kept as the backward's state, the output costs no memory of its own
/// (the next convolution keeps it too), and the input it came from can be written over.
pub fn backward(output: &FlexTensor, grad: FlexTensor, bounds: Bounds) -> FlexTensor {
    map(Some(output), grad, |y, g| if bounds.passes(y) { g } else { 0.0 })
}

impl ClipBackend for Flex {
    fn clip(x: FlexTensor, min: f32, max: f32) -> FlexTensor {
        forward(x, Bounds { min, max })
    }
}

#[derive(Debug)]
struct ClipBackward;

impl Backward<Flex, 1> for ClipBackward {
    /// The output and the bounds.
    type State = (FlexTensor, Bounds);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node {
            let (output, bounds) = ops.state;
            grads.register::<Flex>(node.id, backward(&output, grad, bounds));
        }
    }
}

impl<C: CheckpointStrategy> ClipBackend for Autodiff<Flex, C> {
    fn clip(x: FloatTensor<Self>, min: f32, max: f32) -> FloatTensor<Self> {
        let (x, node) = x.into_parts();
        let bounds = Bounds { min, max };
        match ClipBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = forward(x, bounds);
                prep.finish((output.clone(), bounds), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x, bounds)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::flex::from_values;

    fn values(t: &FlexTensor) -> Vec<f32> {
        t.as_slice::<f32>().unwrap().to_vec()
    }

    const RELU6: Bounds = Bounds { min: 0.0, max: 6.0 };

    #[test]
    fn clip_writes_over_an_input_nothing_else_holds_and_copies_a_shared_one() {
        let input = || from_values(vec![-1.0, 0.5, 7.0, 6.0], &[1, 1, 2, 2]);
        let owned = input();
        let address = owned.bytes().as_ptr();
        let out = forward(owned, RELU6);
        assert_eq!(values(&out), [0.0, 0.5, 6.0, 6.0]);
        assert_eq!(out.bytes().as_ptr(), address, "written in place");

        let shared = input();
        let out = forward(shared.clone(), RELU6);
        assert_eq!(values(&out), [0.0, 0.5, 6.0, 6.0]);
        assert_eq!(
            values(&shared),
            [-1.0, 0.5, 7.0, 6.0],
            "the shared input is untouched"
        );
    }

    #[test]
    fn the_gradient_passes_strictly_inside_the_bounds_of_the_output() {
        let output = from_values(vec![0.0, 0.5, 6.0, 3.0], &[1, 1, 2, 2]);
        let grad = from_values(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
        assert_eq!(
            values(&backward(&output, grad.clone(), RELU6)),
            [0.0, 2.0, 0.0, 4.0]
        );
        assert_eq!(
            values(&grad),
            [1.0, 2.0, 3.0, 4.0],
            "a shared gradient is untouched"
        );
    }
}

//! The autodiff side of the convolution kernels, written once: a convolution's backward pass
//! registers the input gradient and the weight and bias gradients its [`ConvKernels`] compute,
//! and [`conv`] records the operation with the input and the weight as its state.
//!
//! A convolution may end in a clamp (the ReLU6 that follows most of the student's
//! convolutions), applied by the kernels to each part of the output as they write it: a separate
//! pass over an activation of a few hundred megabytes reads and writes it all from memory again.
//! The backward pass then keeps the output and masks the gradient by it first.

use std::fmt::Debug;
use std::marker::PhantomData;

use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn_flex::FlexTensor;

use super::clip::{self, Bounds};
use super::flex::dims4;

/// A convolution's CPU kernels on contiguous NCHW f32 tensors.
pub trait ConvKernels: Debug + Send + Sync + 'static {
    /// What the kernels need besides the tensors (kernel size, stride, padding).
    type Geometry: Copy + Debug + Send + Sync + 'static;

    /// The convolution, each output value clamped to `clamp` when given.
    fn forward(
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: &FlexTensor,
        g: Self::Geometry,
        clamp: Option<Bounds>,
    ) -> FlexTensor;

    /// The gradient of an input of dimensions `input`.
    fn input_gradient(
        grad: &FlexTensor,
        weight: &FlexTensor,
        input: [usize; 4],
        g: Self::Geometry,
    ) -> FlexTensor;

    fn weight_and_bias_gradients(
        x: &FlexTensor,
        grad: &FlexTensor,
        g: Self::Geometry,
    ) -> (FlexTensor, FlexTensor);
}

#[derive(Debug)]
struct ConvBackward<K>(PhantomData<K>);

/// What a convolution's backward pass keeps.
#[derive(Debug, Clone)]
struct ConvState<G> {
    input: FlexTensor,
    weight: FlexTensor,
    geometry: G,
    /// The (clamped) output and the bounds, when the convolution clamps.
    clamped: Option<(FlexTensor, Bounds)>,
}

impl<K: ConvKernels> Backward<Flex, 3> for ConvBackward<K> {
    type State = ConvState<K::Geometry>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let ConvState {
            input: x,
            weight,
            geometry: g,
            clamped,
        } = ops.state;
        let grad = match clamped {
            Some((output, bounds)) => clip::backward(&output, grad, bounds),
            None => grad,
        };
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, K::input_gradient(&grad, &weight, dims4(&x), g));
        }
        if node_weight.is_some() || node_bias.is_some() {
            let (weight_grad, bias_grad) = K::weight_and_bias_gradients(&x, &grad, g);
            if let Some(node) = node_weight {
                grads.register::<Flex>(node.id, weight_grad);
            }
            if let Some(node) = node_bias {
                grads.register::<Flex>(node.id, bias_grad);
            }
        }
    }
}

/// `K`'s convolution (clamped to `clamp` when given) with autodiff: recorded with its backward
/// pass when a gradient is wanted.
pub fn conv<K: ConvKernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    bias: FloatTensor<Autodiff<Flex, C>>,
    g: K::Geometry,
    clamp: Option<Bounds>,
) -> FloatTensor<Autodiff<Flex, C>> {
    match ConvBackward::<K>(PhantomData)
        .prepare::<C>([x.node(), weight.node(), bias.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (x, weight, bias) = (
                x.primitive().clone(),
                weight.primitive().clone(),
                bias.into_primitive(),
            );
            let output = K::forward(&x, &weight, &bias, g, clamp);
            let state = ConvState {
                input: x,
                weight,
                geometry: g,
                clamped: clamp.map(|bounds| (output.clone(), bounds)),
            };
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(K::forward(
            x.primitive(),
            weight.primitive(),
            bias.primitive(),
            g,
            clamp,
        )),
    }
}

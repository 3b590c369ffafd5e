//! The CPU backend's convolution kernels ([`pointwise`], [`depthwise`], [`dense`]) as one burn
//! backend extension: burn-flex runs them, and with autodiff [`tracked::conv`] records them with
//! their hand-written backward passes.
//!
//! [`pointwise`]: super::pointwise
//! [`depthwise`]: super::depthwise
//! [`dense`]: super::dense

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};
use burn_flex::FlexTensor;

use super::clip::Bounds;
use super::dense::Dense;
use super::depthwise::Depthwise;
use super::geometry::Geometry;
use super::pointwise::Pointwise;
use super::tracked::{self, ConvKernels};

/// Which kernels run a convolution, with what they need besides the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// 1×1, stride 1, no padding, one group: `weight` [C_out, C_in, 1, 1].
    Pointwise,
    /// One filter per channel: `weight` [C, 1, KH, KW].
    Depthwise(Geometry),
    /// One group, any kernel size: `weight` [C_out, C_in, KH, KW].
    Dense(Geometry),
}

#[backend_extension(Flex, Autodiff)]
pub trait KernelBackend: Backend {
    /// `x` [N, C_in, H, W], `weight` as `kernel` takes it, `bias` [C_out] -> [N, C_out, OH, OW],
    /// clamped to `clamp` when given.
    fn kernel_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        kernel: Kernel,
        clamp: Option<Bounds>,
    ) -> FloatTensor<Self>;
}

impl KernelBackend for Flex {
    fn kernel_conv(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        kernel: Kernel,
        clamp: Option<Bounds>,
    ) -> FlexTensor {
        match kernel {
            Kernel::Pointwise => Pointwise::forward(&x, &weight, &bias, (), clamp),
            Kernel::Depthwise(g) => Depthwise::forward(&x, &weight, &bias, g, clamp),
            Kernel::Dense(g) => Dense::forward(&x, &weight, &bias, g, clamp),
        }
    }
}

impl<C: CheckpointStrategy> KernelBackend for Autodiff<Flex, C> {
    fn kernel_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        kernel: Kernel,
        clamp: Option<Bounds>,
    ) -> FloatTensor<Self> {
        match kernel {
            Kernel::Pointwise => tracked::conv::<Pointwise, C>(x, weight, bias, (), clamp),
            Kernel::Depthwise(g) => tracked::conv::<Depthwise, C>(x, weight, bias, g, clamp),
            Kernel::Dense(g) => tracked::conv::<Dense, C>(x, weight, bias, g, clamp),
        }
    }
}

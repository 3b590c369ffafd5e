//! burn-flex tensor plumbing the kernels share: contiguous f32 views, new tensors and in-place
//! access.
//!
//! New tensors are built from a `Vec<f32>` the tensor then owns: `FlexTensor::zeros` allocates
//! a byte vector and copies it into a second, 16-byte aligned one (burn-flex 0.22), which a
//! profile of the unfrozen step put at an eighth of the step.

use burn::backend::TensorMetadata;
use burn::tensor::TensorData;
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// Values from which a new tensor is zeroed by all threads: one thread zeroing an activation
/// (hundreds of megabytes) left the other idle for a tenth of a training step.
const PARALLEL_ZEROING: usize = 1 << 16;

/// `[N, C, H, W]` of a 4-d tensor.
pub fn dims4(t: &FlexTensor) -> [usize; 4] {
    let shape = t.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// `t` itself when its values lie contiguous (a cheap clone of the shared buffer), else a
/// contiguous copy.
pub fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// A tensor of `shape` owning `values` (no copy).
pub fn from_values(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// A zeroed tensor of `shape`, then `fill`ed.
pub fn new_tensor(shape: &[usize], fill: impl FnOnce(&mut [f32])) -> FlexTensor {
    let len = shape.iter().product();
    let mut values = if len < PARALLEL_ZEROING {
        vec![0f32; len]
    } else {
        let mut values = Vec::with_capacity(len);
        values.par_extend(rayon::iter::repeat_n(0f32, len).with_min_len(PARALLEL_ZEROING / 2));
        values
    };
    fill(&mut values);
    from_values(values, shape)
}

/// The values of `t` to overwrite, when nothing else holds its buffer and its values lie
/// contiguous: an operation that consumes `t` may then write its result in place.
pub fn in_place(t: &mut FlexTensor) -> Option<&mut [f32]> {
    let (start, end) = t.layout().contiguous_offsets()?;
    t.try_storage_mut::<f32>().map(|values| &mut values[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_tensor_starts_zeroed_small_or_large() {
        for len in [5, PARALLEL_ZEROING * 3 + 7] {
            let t = new_tensor(&[1, 1, 1, len], |values| {
                assert_eq!(values.len(), len);
                assert!(values.iter().all(|&v| v == 0.0), "zeroed");
                values[len - 1] = 2.0;
            });
            assert_eq!(t.as_slice::<f32>().unwrap()[len - 1], 2.0);
        }
    }

    #[test]
    fn a_tensor_owned_once_is_written_in_place_and_a_shared_one_is_not() {
        let mut owned = from_values(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
        in_place(&mut owned).expect("owned once")[0] = 9.0;
        assert_eq!(owned.as_slice::<f32>().unwrap(), &[9.0, 2.0, 3.0, 4.0]);

        let mut shared = owned.clone();
        assert!(
            in_place(&mut shared).is_none(),
            "another tensor reads the same buffer"
        );
        assert_eq!(dims4(&shared), [1, 1, 2, 2]);
    }
}

//! Reductions in sixteen partial sums: one running sum is a chain of additions the compiler
//! may not reorder, so it would neither use vector registers nor overlap the additions.

const LANES: usize = 16;

/// `Σ values[k] * input[first + k * stride]`.
pub fn dot(values: &[f32], input: &[f32], first: usize, stride: usize) -> f32 {
    let mut lanes = [0f32; LANES];
    let (chunks, rest) = values.as_chunks::<LANES>();
    if stride == 1 {
        let (inputs, _) = input[first..first + values.len()].as_chunks::<LANES>();
        for (v, x) in chunks.iter().zip(inputs) {
            for l in 0..LANES {
                lanes[l] += v[l] * x[l];
            }
        }
    } else {
        for (c, v) in chunks.iter().enumerate() {
            let base = first + c * LANES * stride;
            for l in 0..LANES {
                lanes[l] += v[l] * input[base + l * stride];
            }
        }
    }
    let done = chunks.len() * LANES;
    let tail: f32 = rest
        .iter()
        .enumerate()
        .map(|(k, a)| a * input[first + (done + k) * stride])
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// `Σ values`.
pub fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (chunks, rest) = values.as_chunks::<LANES>();
    for v in chunks {
        for l in 0..LANES {
            lanes[l] += v[l];
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_sum_add_every_product_with_and_without_a_stride() {
        let values: Vec<f32> = (0..37).map(|k| k as f32).collect();
        let input: Vec<f32> = (0..100).map(|k| (k % 7) as f32).collect();
        for (first, stride) in [(0, 1), (3, 1), (1, 2)] {
            let expected: f32 = values
                .iter()
                .enumerate()
                .map(|(k, v)| v * input[first + k * stride])
                .sum();
            assert_eq!(
                dot(&values, &input, first, stride),
                expected,
                "first {first} stride {stride}"
            );
        }
        assert_eq!(sum(&values), 666.0);
        assert_eq!(sum(&values[..5]), 10.0);
    }
}

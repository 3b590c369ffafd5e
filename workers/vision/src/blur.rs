//! Gaussian blur, bit-exact with OpenCV's 8-bit `GaussianBlur` (default border `BORDER_REFLECT_101`).
//!
//! OpenCV blurs 8-bit images in fixed point: the kernel is rounded to 8 fractional bits (summing to
//! exactly 256), rows are filtered into 16-bit sums and columns into 32-bit sums, and the result is
//! rounded once. Every step is exact integer arithmetic, so the order of the two passes does not
//! matter; we filter columns first because 255 * 256 fits in `u16`, which doubles the SIMD width of
//! the first pass.

/// Weights of a `size`-tap Gaussian with OpenCV's default sigma, in 1/256ths, summing to 256.
pub fn gaussian_kernel(size: usize) -> Vec<u16> {
    assert!(size % 2 == 1, "Gaussian kernel size must be odd");
    // OpenCV's fixed table for the small kernels when sigma is derived from the size.
    let exact: Vec<f64> = match size {
        1 => vec![1.0],
        3 => vec![0.25, 0.5, 0.25],
        5 => vec![0.0625, 0.25, 0.375, 0.25, 0.0625],
        7 => vec![0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
        _ => {
            let sigma = 0.3 * ((size as f64 - 1.0) * 0.5 - 1.0) + 0.8;
            let center = (size as f64 - 1.0) / 2.0;
            let raw: Vec<f64> = (0..size)
                .map(|i| (-((i as f64 - center).powi(2)) / (2.0 * sigma * sigma)).exp())
                .collect();
            let sum: f64 = raw.iter().sum();
            raw.iter().map(|v| v / sum).collect()
        }
    };
    // Round from the tails inwards, carrying each rounding error to the next tap (error
    // diffusion); the centre takes whatever makes the sum exactly 256.
    let half = size / 2;
    let mut weights = vec![0u16; size];
    let mut carried = 0.0f64;
    let mut tails = 0u16;
    for i in 0..half {
        let wanted = exact[i] * 256.0 + carried;
        let rounded = wanted.round_ties_even();
        carried = wanted - rounded;
        weights[i] = rounded as u16;
        weights[size - 1 - i] = rounded as u16;
        tails += 2 * rounded as u16;
    }
    weights[half] = 256 - tails;
    weights
}

/// `p` reflected into `0..n` the way `BORDER_REFLECT_101` does (`gfedcb|abcdefgh|gfedcba`).
pub fn reflect101(mut p: isize, n: usize) -> usize {
    let n = n as isize;
    // One pixel (or none: never asked, but a loop must not hang on it) reflects onto itself.
    if n <= 1 {
        return 0;
    }
    loop {
        if p < 0 {
            p = -p;
        } else if p >= n {
            p = 2 * n - 2 - p;
        } else {
            return p as usize;
        }
    }
}

/// A blur for one image size and kernel, with its border tables computed once.
#[derive(Debug, Clone)]
pub struct BlurPlan {
    pub width: usize,
    pub height: usize,
    pub radius: usize,
    center: u16,
    /// (distance from the centre, weight) of the non-zero symmetric taps.
    taps: Vec<(usize, u16)>,
    /// Source row of padded row `k` (`k - radius` reflected into the image).
    row_index: Vec<usize>,
    /// Source column (within the row) of each of the `2 * radius` padding columns.
    left_pad: Vec<usize>,
    right_pad: Vec<usize>,
}

/// Per-row working memory of a blur (owned by its user, reused every row).
#[derive(Debug, Clone)]
pub struct BlurScratch {
    /// Column sums, with `radius` padding cells either side.
    columns: Vec<u16>,
    sums: Vec<u32>,
    /// The blurred row.
    pub out: Vec<u8>,
}

impl BlurPlan {
    pub fn new(width: usize, height: usize, kernel_size: usize) -> Self {
        let weights = gaussian_kernel(kernel_size);
        let radius = kernel_size / 2;
        let taps = (1..=radius)
            .map(|d| (d, weights[radius + d]))
            .filter(|&(_, w)| w != 0)
            .collect();
        let row_index = (0..height + 2 * radius)
            .map(|k| reflect101(k as isize - radius as isize, height))
            .collect();
        let left_pad = (0..radius)
            .map(|i| reflect101(i as isize - radius as isize, width))
            .collect();
        let right_pad = (0..radius)
            .map(|i| reflect101((width + i) as isize, width))
            .collect();
        Self {
            width,
            height,
            radius,
            center: weights[radius],
            taps,
            row_index,
            left_pad,
            right_pad,
        }
    }

    pub fn scratch(&self) -> BlurScratch {
        BlurScratch {
            columns: vec![0; self.width + 2 * self.radius],
            sums: vec![0; self.width],
            out: vec![0; self.width],
        }
    }

    /// The highest source row that blurring row `y` reads.
    pub fn last_source_row(&self, y: usize) -> usize {
        (y + self.radius).min(self.height - 1)
    }

    /// Blurs row `y` of the image whose rows `row(i)` gives into `scratch.out`.
    #[inline(always)]
    pub fn blur_row<'a>(&self, row: impl Fn(usize) -> &'a [u8], y: usize, scratch: &mut BlurScratch) {
        let (w, r) = (self.width, self.radius);
        // Vertical pass into u16: sum(w) = 256, so a sum is at most 255 * 256 and never wraps.
        let columns = &mut scratch.columns[r..r + w];
        let center = self.center;
        for (acc, &p) in columns.iter_mut().zip(row(self.row_index[y + r])) {
            *acc = center * p as u16;
        }
        for &(d, weight) in &self.taps {
            let above = row(self.row_index[y + r - d]);
            let below = row(self.row_index[y + r + d]);
            for ((acc, &a), &b) in columns.iter_mut().zip(above).zip(below) {
                *acc = acc.wrapping_add(weight.wrapping_mul(a as u16 + b as u16));
            }
        }
        // Reflect the column sums into the padding.
        for (i, &src) in self.left_pad.iter().enumerate() {
            scratch.columns[i] = scratch.columns[r + src];
        }
        for (i, &src) in self.right_pad.iter().enumerate() {
            scratch.columns[r + w + i] = scratch.columns[r + src];
        }
        // Horizontal pass into u32 (at most 255 * 256 * 256), then one rounding.
        let columns = &scratch.columns;
        let sums = &mut scratch.sums[..w];
        let center = self.center as u32;
        for (acc, &c) in sums.iter_mut().zip(&columns[r..r + w]) {
            *acc = center * c as u32;
        }
        for &(d, weight) in &self.taps {
            let left = &columns[r - d..r - d + w];
            let right = &columns[r + d..r + d + w];
            let weight = weight as u32;
            for ((acc, &a), &b) in sums.iter_mut().zip(left).zip(right) {
                *acc = acc.wrapping_add(weight * (a as u32 + b as u32));
            }
        }
        for (out, &acc) in scratch.out.iter_mut().zip(sums.iter()) {
            *out = ((acc + (1 << 15)) >> 16) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_or_one_pixel_line_reflects_onto_its_start_without_looping() {
        assert_eq!(super::reflect101(-5, 1), 0);
        assert_eq!(super::reflect101(-5, 0), 0);
        assert_eq!(super::reflect101(7, 0), 0);
        assert_eq!(super::reflect101(-2, 5), 2);
        assert_eq!(super::reflect101(6, 5), 2);
    }

    use super::*;

    /// Direct 2-D convolution with the same integer kernel: the definition the fast path must meet.
    fn blur_direct(img: &[u8], w: usize, h: usize, k: usize) -> Vec<u8> {
        let weights = gaussian_kernel(k);
        let r = k / 2;
        let mut out = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0u64;
                for (j, &wy) in weights.iter().enumerate() {
                    let sy = reflect101(y as isize + j as isize - r as isize, h);
                    for (i, &wx) in weights.iter().enumerate() {
                        let sx = reflect101(x as isize + i as isize - r as isize, w);
                        acc += wy as u64 * wx as u64 * img[sy * w + sx] as u64;
                    }
                }
                out[y * w + x] = ((acc + (1 << 15)) >> 16) as u8;
            }
        }
        out
    }

    #[test]
    fn kernels_match_opencv_fixed_point_weights() {
        // Printed by the OpenCV reference (tests/vision/reference.py blur check) for ksize 21.
        assert_eq!(
            gaussian_kernel(21),
            [
                0, 2, 2, 4, 6, 11, 15, 20, 25, 28, 30, 28, 25, 20, 15, 11, 6, 4, 2, 2, 0
            ]
        );
        assert_eq!(gaussian_kernel(3), [64, 128, 64]);
        for k in (1..=99).step_by(2) {
            let w = gaussian_kernel(k);
            assert_eq!(w.iter().map(|&v| v as u32).sum::<u32>(), 256, "kernel {k}");
            assert!(
                w.iter().zip(w.iter().rev()).all(|(a, b)| a == b),
                "kernel {k} symmetric"
            );
        }
    }

    #[test]
    fn reflect101_matches_opencv_border() {
        let got: Vec<usize> = (-4..9).map(|p| reflect101(p, 5)).collect();
        assert_eq!(got, [4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0]);
        assert_eq!(reflect101(-7, 1), 0);
        assert_eq!(reflect101(5, 2), 1);
    }

    #[test]
    fn separable_blur_equals_direct_convolution() {
        // Odd sizes, images smaller than the kernel, and saturated values.
        for &(w, h, k) in &[
            (37, 23, 21),
            (5, 3, 21),
            (1, 1, 5),
            (64, 2, 7),
            (70, 65, 3),
            (9, 40, 31),
        ] {
            let img: Vec<u8> = (0..w * h)
                .map(|i| ((i * 7919 + i / w * 104729) % 256) as u8)
                .collect();
            let plan = BlurPlan::new(w, h, k);
            let mut scratch = plan.scratch();
            let expected = blur_direct(&img, w, h, k);
            for y in 0..h {
                plan.blur_row(|r| &img[r * w..(r + 1) * w], y, &mut scratch);
                assert_eq!(
                    &scratch.out[..],
                    &expected[y * w..(y + 1) * w],
                    "{w}x{h} k{k} row {y}"
                );
            }
        }
        let white = vec![255u8; 30 * 30];
        let plan = BlurPlan::new(30, 30, 21);
        let mut scratch = plan.scratch();
        plan.blur_row(|r| &white[r * 30..(r + 1) * 30], 0, &mut scratch);
        assert!(scratch.out.iter().all(|&v| v == 255));
    }
}

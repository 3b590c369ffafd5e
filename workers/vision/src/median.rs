//! Pixel-wise medians of a stack of images, with a selection network run on SIMD lanes.
//!
//! `numpy.median(stack, axis=0)` sorts every pixel's values; here one comparator network (Batcher's
//! odd-even merge sort, pruned to the comparators that can reach the middle outputs) runs on tiles
//! of pixels at once as byte-wise min/max, which compilers turn into SIMD instructions.

/// Pixels per tile: the tile of every input (n x TILE bytes) stays in L1.
pub const TILE: usize = 128;

/// A comparator network whose outputs `lo` and `hi` are the lower and upper median of `n` inputs.
#[derive(Debug, Clone)]
pub struct MedianNetwork {
    n: usize,
    comparators: Vec<(usize, usize)>,
    lo: usize,
    hi: usize,
}

impl MedianNetwork {
    pub fn new(n: usize) -> Self {
        assert!(n >= 1);
        let size = n.next_power_of_two();
        let mut all = Vec::new();
        let mut p = 1;
        while p < size {
            let mut k = p;
            while k >= 1 {
                let mut j = k % p;
                while j + k < size {
                    for i in 0..k.min(size - j - k) {
                        if (i + j) / (2 * p) == (i + j + k) / (2 * p) {
                            all.push((i + j, i + j + k));
                        }
                    }
                    j += 2 * k;
                }
                k /= 2;
            }
            p *= 2;
        }
        // Missing inputs count as +infinity: they never move, so comparators touching them go.
        all.retain(|&(_, b)| b < n);
        let (lo, hi) = ((n - 1) / 2, n / 2);
        // Keep only comparators that can influence the two middle outputs.
        let mut needed = vec![false; n];
        needed[lo] = true;
        needed[hi] = true;
        let mut kept = Vec::new();
        for &(a, b) in all.iter().rev() {
            if needed[a] || needed[b] {
                needed[a] = true;
                needed[b] = true;
                kept.push((a, b));
            }
        }
        kept.reverse();
        Self {
            n,
            comparators: kept,
            lo,
            hi,
        }
    }

    pub fn inputs(&self) -> usize {
        self.n
    }

    #[cfg(test)]
    pub fn comparators(&self) -> usize {
        self.comparators.len()
    }

    /// Medians of `n` rows of `TILE` bytes in `tile` (row `i` at `i * TILE`), into `out`
    /// (`out.len() <= TILE`). An even count gives the mean of the two middle values, rounded half
    /// up, which is what `floor(numpy.median + 0.5)` gives.
    #[inline(always)]
    pub fn run(&self, tile: &mut [u8], out: &mut [u8]) {
        for &(a, b) in &self.comparators {
            let (first, second) = tile.split_at_mut(b * TILE);
            let ra = &mut first[a * TILE..(a + 1) * TILE];
            let rb = &mut second[..TILE];
            for (x, y) in ra.iter_mut().zip(rb.iter_mut()) {
                let (small, large) = ((*x).min(*y), (*x).max(*y));
                *x = small;
                *y = large;
            }
        }
        let lo = &tile[self.lo * TILE..(self.lo + 1) * TILE];
        if self.lo == self.hi {
            out.copy_from_slice(&lo[..out.len()]);
        } else {
            let hi = &tile[self.hi * TILE..(self.hi + 1) * TILE];
            for ((o, &a), &b) in out.iter_mut().zip(lo).zip(hi) {
                *o = ((a as u16 + b as u16 + 1) >> 1) as u8;
            }
        }
    }
}

/// Row `y` of the pixel-wise median of the images stacked in `stack` (`network.inputs()` images
/// of `image_size` bytes, rows `width` bytes), into `out`. `tile` is scratch of at least
/// `network.inputs() * TILE` bytes.
#[inline(always)]
pub fn median_row(
    network: &MedianNetwork,
    stack: &[u8],
    image_size: usize,
    width: usize,
    y: usize,
    tile: &mut [u8],
    out: &mut [u8],
) {
    let row = y * width;
    let mut x = 0;
    while x < width {
        let len = TILE.min(width - x);
        for i in 0..network.inputs() {
            let start = i * image_size + row + x;
            tile[i * TILE..i * TILE + len].copy_from_slice(&stack[start..start + len]);
        }
        network.run(tile, &mut out[x..x + len]);
        x += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_median(values: &mut [u8]) -> u8 {
        values.sort_unstable();
        let n = values.len();
        (values[(n - 1) / 2] as u16 + values[n / 2] as u16).div_ceil(2) as u8
    }

    #[test]
    fn networks_give_the_median_for_every_count() {
        let mut seed = 12345u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 256) as u8
        };
        for n in 1..=40 {
            let network = MedianNetwork::new(n);
            let mut tile = vec![0u8; n * TILE];
            for v in tile.iter_mut() {
                // Few distinct values too, so ties are exercised.
                *v = if n % 3 == 0 { next() % 4 } else { next() };
            }
            let expected: Vec<u8> = (0..TILE)
                .map(|x| reference_median(&mut (0..n).map(|i| tile[i * TILE + x]).collect::<Vec<_>>()))
                .collect();
            let mut out = vec![0u8; TILE];
            network.run(&mut tile, &mut out);
            assert_eq!(out, expected, "n = {n}");
        }
    }

    #[test]
    fn pruning_keeps_the_network_small() {
        // A full Batcher sort of 32 inputs has 191 comparators; the median of 25 needs far fewer.
        let network = MedianNetwork::new(25);
        assert!(network.comparators() < 160, "{}", network.comparators());
        assert_eq!(MedianNetwork::new(1).comparators(), 0);
    }

    #[test]
    fn median_rows_cover_partial_tiles() {
        let width = TILE + 37;
        let images: Vec<Vec<u8>> = (0..5u8)
            .map(|k| (0..width * 2).map(|i| (i as u8).wrapping_mul(k + 1)).collect())
            .collect();
        let stack: Vec<u8> = images.concat();
        let network = MedianNetwork::new(5);
        let mut tile = vec![0u8; 5 * TILE];
        let mut out = vec![0u8; width];
        median_row(&network, &stack, width * 2, width, 1, &mut tile, &mut out);
        for x in 0..width {
            let mut v: Vec<u8> = images.iter().map(|im| im[width + x]).collect();
            assert_eq!(out[x], reference_median(&mut v), "x = {x}");
        }
    }
}

//! Area-averaging downscale (each output pixel is the mean of the source area it covers), in
//! fixed point, for processing frames at a reduced width.

use crate::image::GrayImage;

/// Source indices and weights (1/256ths, summing to 256) of each output pixel along one axis.
#[derive(Debug, Clone)]
struct Axis {
    /// `first[i]..first[i + 1]` index `taps` for output `i`.
    first: Vec<usize>,
    taps: Vec<(usize, u16)>,
}

impl Axis {
    fn new(src: usize, dst: usize) -> Self {
        let scale = src as f64 / dst as f64;
        let mut first = vec![0];
        let mut taps = Vec::new();
        for i in 0..dst {
            let (lo, hi) = (i as f64 * scale, (i + 1) as f64 * scale);
            let mut carried = 0.0;
            let mut total = 0u16;
            let start = taps.len();
            for s in lo.floor() as usize..(hi.ceil() as usize).min(src) {
                let overlap = (hi.min(s as f64 + 1.0) - lo.max(s as f64)).max(0.0);
                let wanted = overlap / scale * 256.0 + carried;
                let w = wanted.round() as u16;
                carried = wanted - w as f64;
                if w > 0 {
                    taps.push((s, w));
                    total += w;
                }
            }
            // Rounding may leave the sum a unit off: give it to the largest tap.
            if let Some(big) = taps[start..].iter_mut().max_by_key(|t| t.1) {
                big.1 = (big.1 as i32 + 256 - total as i32) as u16;
            }
            first.push(taps.len());
        }
        Self { first, taps }
    }

    fn taps(&self, i: usize) -> &[(usize, u16)] {
        &self.taps[self.first[i]..self.first[i + 1]]
    }
}

/// Downscales frames of one size to another.
#[derive(Debug, Clone)]
pub struct Resizer {
    width: usize,
    height: usize,
    columns: Axis,
    rows: Axis,
    row_sums: Vec<u32>,
}

impl Resizer {
    pub fn new(src_width: usize, src_height: usize, width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            columns: Axis::new(src_width, width),
            rows: Axis::new(src_height, height),
            row_sums: vec![0; src_width],
        }
    }

    /// Writes the downscaled `src` into `out` (`width * height` bytes).
    pub fn resize(&mut self, src: GrayImage<'_>, out: &mut [u8]) {
        for y in 0..self.height {
            self.row_sums.fill(0);
            for &(sy, w) in self.rows.taps(y) {
                for (acc, &p) in self.row_sums.iter_mut().zip(src.row(sy)) {
                    *acc += w as u32 * p as u32;
                }
            }
            let out_row = &mut out[y * self.width..(y + 1) * self.width];
            for (x, o) in out_row.iter_mut().enumerate() {
                let sum: u32 = self
                    .columns
                    .taps(x)
                    .iter()
                    .map(|&(sx, w)| w as u32 * self.row_sums[sx])
                    .sum();
                *o = ((sum + (1 << 15)) >> 16) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_averages_2x2_blocks() {
        let src: Vec<u8> = vec![0, 100, 200, 200, 50, 50, 0, 0, 10, 10, 10, 10, 10, 10, 10, 10];
        let mut r = Resizer::new(4, 4, 2, 2);
        let mut out = vec![0u8; 4];
        r.resize(GrayImage::new(&src, 4, 4).unwrap(), &mut out);
        assert_eq!(out, [50, 100, 10, 10]);
    }

    #[test]
    fn uneven_scales_keep_flat_images_flat() {
        let src = vec![77u8; 97 * 61];
        let mut r = Resizer::new(97, 61, 40, 25);
        let mut out = vec![0u8; 40 * 25];
        r.resize(GrayImage::new(&src, 97, 61).unwrap(), &mut out);
        assert!(out.iter().all(|&v| v == 77));
    }
}

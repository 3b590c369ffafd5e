//! Binary masks packed 64 pixels to a word (bit `i` of word `k` is column `64 k + i`), and the
//! morphology the detector needs on them.

/// A binary image, one bit per pixel, rows padded to whole words (padding bits are always 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitMask {
    width: usize,
    height: usize,
    words_per_row: usize,
    words: Vec<u64>,
}

impl BitMask {
    pub fn new(width: usize, height: usize) -> Self {
        let words_per_row = width.div_ceil(64);
        Self {
            width,
            height,
            words_per_row,
            words: vec![0; words_per_row * height],
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn words_per_row(&self) -> usize {
        self.words_per_row
    }

    #[inline(always)]
    pub fn row(&self, y: usize) -> &[u64] {
        &self.words[y * self.words_per_row..(y + 1) * self.words_per_row]
    }

    #[inline(always)]
    pub fn row_mut(&mut self, y: usize) -> &mut [u64] {
        &mut self.words[y * self.words_per_row..(y + 1) * self.words_per_row]
    }

    pub fn get(&self, x: usize, y: usize) -> bool {
        self.row(y)[x / 64] >> (x % 64) & 1 == 1
    }

    pub fn set(&mut self, x: usize, y: usize, on: bool) {
        let word = &mut self.row_mut(y)[x / 64];
        if on {
            *word |= 1 << (x % 64);
        } else {
            *word &= !(1 << (x % 64));
        }
    }

    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }

    pub fn fill(&mut self, on: bool) {
        self.words.fill(0);
        if on {
            let tail = self.tail_mask();
            for y in 0..self.height {
                let row = self.row_mut(y);
                row.fill(u64::MAX);
                *row.last_mut().expect("width > 0") = tail;
            }
        }
    }

    /// The valid bits of a row's last word.
    pub fn tail_mask(&self) -> u64 {
        match self.width % 64 {
            0 => u64::MAX,
            bits => (1 << bits) - 1,
        }
    }

    /// Writes the mask as one byte per pixel, 0 or 255 (OpenCV's convention), for inspection.
    pub fn to_bytes(&self, out: &mut Vec<u8>) {
        out.clear();
        for y in 0..self.height {
            out.extend((0..self.width).map(|x| if self.get(x, y) { 255 } else { 0 }));
        }
    }

    /// Sets `self` to the dilation of `src` by a `(2 r + 1)`-pixel square, pixels outside the image
    /// counting as unset (OpenCV's `dilate` border). `rows` is scratch with the same geometry.
    pub fn dilate_from(&mut self, src: &BitMask, radius: usize, rows: &mut BitMask) {
        debug_assert_eq!((src.width, src.height), (self.width, self.height));
        if radius == 0 {
            self.words.copy_from_slice(&src.words);
            return;
        }
        let tail = src.tail_mask();
        // Horizontal: OR of the row shifted by -r..=r columns, carrying bits across words.
        for y in 0..src.height {
            let input = src.row(y);
            let output = rows.row_mut(y);
            let n = input.len();
            for k in 0..n {
                let mut acc = input[k];
                let previous = if k > 0 { input[k - 1] } else { 0 };
                let next = if k + 1 < n { input[k + 1] } else { 0 };
                let mut s = 1;
                while s <= radius {
                    // Towards higher columns (shift left) brings in the previous word's top bits.
                    let (up, down) = if s < 64 {
                        (
                            input[k] << s | previous >> (64 - s),
                            input[k] >> s | next << (64 - s),
                        )
                    } else {
                        (previous << (s - 64), next >> (s - 64))
                    };
                    acc |= up | down;
                    s += 1;
                }
                output[k] = acc;
            }
            output[n - 1] &= tail;
        }
        // Vertical: OR of rows y-r..=y+r that exist.
        for y in 0..self.height {
            let first = y.saturating_sub(radius);
            let last = (y + radius).min(self.height - 1);
            let wpr = self.words_per_row;
            let out = &mut self.words[y * wpr..(y + 1) * wpr];
            out.copy_from_slice(rows.row(first));
            for yy in first + 1..=last {
                for (o, &v) in out.iter_mut().zip(rows.row(yy)) {
                    *o |= v;
                }
            }
        }
    }

    /// Rasterises polygons (vertices relative to the frame, 0..1) into the mask: a pixel is inside
    /// when its centre is (even-odd rule).
    pub fn fill_polygons(&mut self, polygons: &[Vec<[f64; 2]>]) {
        let (w, h) = (self.width as f64, self.height as f64);
        let mut crossings: Vec<f64> = Vec::new();
        for polygon in polygons.iter().filter(|p| p.len() >= 3) {
            for y in 0..self.height {
                let cy = (y as f64 + 0.5) / h;
                crossings.clear();
                for (i, a) in polygon.iter().enumerate() {
                    let b = polygon[(i + 1) % polygon.len()];
                    if (a[1] <= cy) != (b[1] <= cy) {
                        crossings.push(a[0] + (cy - a[1]) / (b[1] - a[1]) * (b[0] - a[0]));
                    }
                }
                crossings.sort_by(f64::total_cmp);
                for pair in crossings.chunks_exact(2) {
                    // Pixel x is inside when its centre (x + 0.5) / w lies in [left, right).
                    let first = (pair[0] * w - 0.5).ceil().max(0.0) as usize;
                    let end = ((pair[1] * w - 0.5).ceil().max(0.0) as usize).min(self.width);
                    for x in first..end {
                        self.set(x, y, true);
                    }
                }
            }
        }
    }
}

/// Packs 64 bytes that are each 0 or 1 into a word (byte `i` becomes bit `i`).
#[inline(always)]
pub fn pack_bits(bytes: &[u8; 64]) -> u64 {
    let mut word = 0u64;
    for (k, chunk) in bytes.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // Multiplying gathers byte k's low bit at bit 56 + k (see the test); the rest falls below.
        word |= (v.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * k);
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_bits_puts_byte_i_at_bit_i() {
        for i in 0..64 {
            let mut bytes = [0u8; 64];
            bytes[i] = 1;
            assert_eq!(pack_bits(&bytes), 1 << i);
        }
        assert_eq!(pack_bits(&[1; 64]), u64::MAX);
        let mut alternating = [0u8; 64];
        for (i, b) in alternating.iter_mut().enumerate() {
            *b = (i % 2) as u8;
        }
        assert_eq!(pack_bits(&alternating), 0xAAAA_AAAA_AAAA_AAAA);
    }

    fn dilate_direct(src: &BitMask, r: usize) -> BitMask {
        let mut out = BitMask::new(src.width, src.height);
        for y in 0..src.height {
            for x in 0..src.width {
                let hit = (y.saturating_sub(r)..=(y + r).min(src.height - 1))
                    .any(|yy| (x.saturating_sub(r)..=(x + r).min(src.width - 1)).any(|xx| src.get(xx, yy)));
                out.set(x, y, hit);
            }
        }
        out
    }

    #[test]
    fn dilation_equals_the_definition_across_word_edges() {
        for &(w, h) in &[(130, 9), (64, 5), (1, 1), (7, 30), (200, 3)] {
            let mut src = BitMask::new(w, h);
            for (x, y) in [(0, 0), (63, 1), (64, 2), (w - 1, h - 1), (w / 2, h / 2)] {
                if x < w && y < h {
                    src.set(x, y, true);
                }
            }
            for r in [0, 1, 4, 20, 70] {
                let mut out = BitMask::new(w, h);
                let mut rows = BitMask::new(w, h);
                out.dilate_from(&src, r, &mut rows);
                assert_eq!(out, dilate_direct(&src, r), "{w}x{h} r{r}");
            }
        }
    }

    #[test]
    fn polygons_fill_pixel_centres_inside() {
        let mut mask = BitMask::new(10, 10);
        // The left half of the frame.
        mask.fill_polygons(&[vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]]);
        assert_eq!(mask.count_ones(), 50);
        assert!(mask.get(4, 9) && !mask.get(5, 0));
        let mut tri = BitMask::new(100, 100);
        tri.fill_polygons(&[vec![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]);
        let n = tri.count_ones();
        assert!((4900..=5100).contains(&n), "{n}");
    }

    #[test]
    fn fill_respects_the_row_tail() {
        let mut mask = BitMask::new(70, 2);
        mask.fill(true);
        assert_eq!(mask.count_ones(), 140);
        assert_eq!(mask.row(0)[1], (1 << 6) - 1);
    }
}

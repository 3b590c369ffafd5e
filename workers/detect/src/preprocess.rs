//! Turning an RGB image into a detector's input tensor: resize (stretched, or letterboxed to keep
//! the aspect ratio), channel order, scaling, and layout. The resize is bilinear with half-pixel
//! centres in f32, written so that the Python reference (tests/detect/reference.py) can do exactly
//! the same arithmetic.

use thiserror::Error;

/// An 8-bit RGB image, pixels packed (`width * 3` bytes per row).
#[derive(Debug, Clone, Copy)]
pub struct RgbImage<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("an RGB image of {width}x{height} needs {} bytes, got {len}", width * height * 3)]
pub struct ImageSizeError {
    pub width: usize,
    pub height: usize,
    pub len: usize,
}

impl<'a> RgbImage<'a> {
    pub fn new(data: &'a [u8], width: usize, height: usize) -> Result<Self, ImageSizeError> {
        if width == 0 || height == 0 || data.len() != width * height * 3 {
            return Err(ImageSizeError {
                width,
                height,
                len: data.len(),
            });
        }
        Ok(Self { data, width, height })
    }
}

/// How the image is fitted to the input size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fit {
    /// Stretched to the input size.
    Stretch,
    /// Scaled to fit inside, centred, the rest filled with `pad` (YOLO's letterbox).
    Letterbox { pad: f32 },
}

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// The preprocessing a model expects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub width: usize,
    pub height: usize,
    pub fit: Fit,
    pub layout: Layout,
    /// BGR instead of RGB channel order.
    pub bgr: bool,
    /// Each 0..255 value becomes `value * scale + offset`.
    pub scale: f32,
    pub offset: f32,
}

/// Where the image landed in the input: input = image * `scale` + (`left`, `top`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub scale_x: f32,
    pub scale_y: f32,
    pub left: f32,
    pub top: f32,
}

impl Placement {
    /// A point of the input tensor in the image's pixel coordinates.
    pub fn to_image(&self, x: f32, y: f32) -> (f32, f32) {
        ((x - self.left) / self.scale_x, (y - self.top) / self.scale_y)
    }
}

/// Source sample positions of a bilinear resize along one axis.
fn taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let ratio = src as f32 / dst as f32;
    (0..dst)
        .map(|i| {
            let s = ((i as f32 + 0.5) * ratio - 0.5).clamp(0.0, (src - 1) as f32);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(src - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

impl Preprocess {
    pub fn len(&self) -> usize {
        self.width * self.height * 3
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the input tensor of `image` into `out` (`self.len()` values) and says where the
    /// image landed.
    pub fn apply(&self, image: RgbImage<'_>, out: &mut [f32]) -> Placement {
        assert_eq!(out.len(), self.len());
        let (iw, ih) = (image.width, image.height);
        let (placed_w, placed_h, left, top, pad) = match self.fit {
            Fit::Stretch => (self.width, self.height, 0usize, 0usize, 0.0),
            Fit::Letterbox { pad } => {
                let r = (self.width as f32 / iw as f32).min(self.height as f32 / ih as f32);
                let w = ((iw as f32 * r).round() as usize).clamp(1, self.width);
                let h = ((ih as f32 * r).round() as usize).clamp(1, self.height);
                let left = ((self.width - w) as f32 / 2.0 - 0.1).round().max(0.0) as usize;
                let top = ((self.height - h) as f32 / 2.0 - 0.1).round().max(0.0) as usize;
                (w, h, left, top, pad)
            }
        };
        let xs = taps(iw, placed_w);
        let ys = taps(ih, placed_h);
        let padded = pad * self.scale + self.offset;
        let plane = self.width * self.height;
        let channel_of = |c: usize| if self.bgr { 2 - c } else { c };
        for y in 0..self.height {
            let inside_y = y >= top && y < top + placed_h;
            for x in 0..self.width {
                let inside = inside_y && x >= left && x < left + placed_w;
                let mut rgb = [padded; 3];
                if inside {
                    let (y0, y1, fy) = ys[y - top];
                    let (x0, x1, fx) = xs[x - left];
                    let p = |yy: usize, xx: usize, c: usize| image.data[(yy * iw + xx) * 3 + c] as f32;
                    for (c, v) in rgb.iter_mut().enumerate() {
                        let upper = (1.0 - fx) * p(y0, x0, c) + fx * p(y0, x1, c);
                        let lower = (1.0 - fx) * p(y1, x0, c) + fx * p(y1, x1, c);
                        *v = ((1.0 - fy) * upper + fy * lower) * self.scale + self.offset;
                    }
                }
                for (c, &v) in rgb.iter().enumerate() {
                    let c = channel_of(c);
                    match self.layout {
                        Layout::Nchw => out[c * plane + y * self.width + x] = v,
                        Layout::Nhwc => out[(y * self.width + x) * 3 + c] = v,
                    }
                }
            }
        }
        Placement {
            scale_x: placed_w as f32 / iw as f32,
            scale_y: placed_h as f32 / ih as f32,
            left: left as f32,
            top: top as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_centres_and_pads() {
        let data = vec![200u8; 40 * 20 * 3];
        let image = RgbImage::new(&data, 40, 20).unwrap();
        let p = Preprocess {
            width: 8,
            height: 8,
            fit: Fit::Letterbox { pad: 114.0 },
            layout: Layout::Nchw,
            bgr: false,
            scale: 1.0 / 255.0,
            offset: 0.0,
        };
        let mut out = vec![0.0; p.len()];
        let placement = p.apply(image, &mut out);
        assert_eq!(
            placement,
            Placement {
                scale_x: 0.2,
                scale_y: 0.2,
                left: 0.0,
                top: 2.0
            }
        );
        // Rows 0-1 and 6-7 are padding, 2-5 the image.
        assert!((out[0] - 114.0 / 255.0).abs() < 1e-6);
        assert!((out[2 * 8] - 200.0 / 255.0).abs() < 1e-6);
        assert!((out[7 * 8 + 7] - 114.0 / 255.0).abs() < 1e-6);
        assert_eq!(placement.to_image(4.0, 4.0), (20.0, 10.0));
    }

    #[test]
    fn stretch_nhwc_bgr_and_scaling() {
        // A 2x1 image: red, blue.
        let data = [255u8, 0, 0, 0, 0, 255];
        let image = RgbImage::new(&data, 2, 1).unwrap();
        let p = Preprocess {
            width: 2,
            height: 1,
            fit: Fit::Stretch,
            layout: Layout::Nhwc,
            bgr: true,
            scale: 2.0 / 255.0,
            offset: -1.0,
        };
        let mut out = vec![0.0; p.len()];
        p.apply(image, &mut out);
        assert_eq!(out, [-1.0, -1.0, 1.0, 1.0, -1.0, -1.0]);
        assert!(RgbImage::new(&data, 3, 1).is_err());
    }
}

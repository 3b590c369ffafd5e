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

/// A frame as a video decoder gives it: 8-bit 4:2:0 planes, each tightly packed (chroma planes
/// of `ceil(width / 2) x ceil(height / 2)`). Detectors read it without converting the whole frame
/// to RGB: only the pixels the model's input samples are converted.
#[derive(Debug, Clone, Copy)]
pub struct Yuv420Image<'a> {
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub width: usize,
    pub height: usize,
    /// JPEG-style full range; otherwise Y is 16-235 (limited range, what cameras send).
    pub full_range: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("a 4:2:0 image of {width}x{height} needs planes of {luma} and 2 x {chroma} bytes, got {got:?}")]
pub struct PlaneSizeError {
    pub width: usize,
    pub height: usize,
    pub luma: usize,
    pub chroma: usize,
    pub got: [usize; 3],
}

impl<'a> Yuv420Image<'a> {
    pub fn new(
        y: &'a [u8],
        u: &'a [u8],
        v: &'a [u8],
        width: usize,
        height: usize,
        full_range: bool,
    ) -> Result<Self, PlaneSizeError> {
        let luma = width * height;
        let chroma = width.div_ceil(2) * height.div_ceil(2);
        if luma == 0 || y.len() != luma || u.len() != chroma || v.len() != chroma {
            return Err(PlaneSizeError {
                width,
                height,
                luma,
                chroma,
                got: [y.len(), u.len(), v.len()],
            });
        }
        Ok(Self {
            y,
            u,
            v,
            width,
            height,
            full_range,
        })
    }

    /// The pixel at `(x, y)` as RGB.
    #[inline]
    pub fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let c = (y / 2) * self.width.div_ceil(2) + x / 2;
        yuv_to_rgb(self.y[y * self.width + x], self.u[c], self.v[c], self.full_range)
    }

    /// The whole frame as packed RGB into `out` (reused: no allocation once it has the size).
    pub fn to_rgb(&self, out: &mut Vec<u8>) {
        let (w, cw) = (self.width, self.width.div_ceil(2));
        out.resize(w * self.height * 3, 0);
        let k = Coefficients::of(self.full_range);
        for (y, row) in out.chunks_exact_mut(w * 3).enumerate() {
            let luma = &self.y[y * w..(y + 1) * w];
            let (u, v) = (&self.u[(y / 2) * cw..][..cw], &self.v[(y / 2) * cw..][..cw]);
            // Two pixels share a chroma sample: a loop the compiler can keep branch-free.
            for ((pair, rgb), (&u, &v)) in luma.chunks(2).zip(row.chunks_mut(6)).zip(u.iter().zip(v)) {
                for (&y, px) in pair.iter().zip(rgb.chunks_exact_mut(3)) {
                    px.copy_from_slice(&k.rgb(y, u, v));
                }
            }
        }
    }
}

/// BT.601 YCbCr to RGB in 16-bit fixed point, in either range: 16 -> 0 and 235 -> 255 in
/// limited range, grey stays grey.
#[derive(Debug, Clone, Copy)]
struct Coefficients {
    y_offset: i32,
    y: i32,
    r_v: i32,
    g_u: i32,
    g_v: i32,
    b_u: i32,
}

const LIMITED_RANGE: Coefficients = Coefficients::new(false);
const FULL_RANGE: Coefficients = Coefficients::new(true);

impl Coefficients {
    fn of(full_range: bool) -> &'static Self {
        if full_range { &FULL_RANGE } else { &LIMITED_RANGE }
    }

    const fn new(full_range: bool) -> Self {
        // (255 / 219) for luma and (255 / 224) for chroma expand limited range.
        const ONE: f64 = 65536.0;
        let (y, c) = if full_range {
            (1.0, 1.0)
        } else {
            (255.0 / 219.0, 255.0 / 224.0)
        };
        Self {
            y_offset: if full_range { 0 } else { 16 },
            y: (y * ONE + 0.5) as i32,
            r_v: (1.402 * c * ONE + 0.5) as i32,
            g_u: (0.344_136 * c * ONE + 0.5) as i32,
            g_v: (0.714_136 * c * ONE + 0.5) as i32,
            b_u: (1.772 * c * ONE + 0.5) as i32,
        }
    }

    #[inline(always)]
    fn rgb(&self, y: u8, u: u8, v: u8) -> [u8; 3] {
        let y = (y as i32 - self.y_offset) * self.y + (1 << 15);
        let (u, v) = (u as i32 - 128, v as i32 - 128);
        let clamp = |x: i32| (x >> 16).clamp(0, 255) as u8;
        [
            clamp(y + self.r_v * v),
            clamp(y - self.g_u * u - self.g_v * v),
            clamp(y + self.b_u * u),
        ]
    }
}

/// BT.601 YCbCr to RGB (what SD cameras and most H.264 streams signal), in either range. The one
/// conversion of the project: pictures, crops for the teacher and the student's input all use it.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8, full_range: bool) -> [u8; 3] {
    Coefficients::of(full_range).rgb(y, u, v)
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
fn taps_into(src: usize, dst: usize, out: &mut Vec<(usize, usize, f32)>) {
    let ratio = src as f32 / dst as f32;
    out.clear();
    out.extend((0..dst).map(|i| {
        let s = ((i as f32 + 0.5) * ratio - 0.5).clamp(0.0, (src - 1) as f32);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(src - 1);
        (i0, i1, s - i0 as f32)
    }));
}

/// Where an image of one size lands in the input, and the taps that sample it: computed once per
/// image size, so that a stream of same-sized frames resamples without allocating.
#[derive(Debug, Clone, Default)]
pub struct Resampling {
    source: (usize, usize),
    placed: (usize, usize),
    left: usize,
    top: usize,
    xs: Vec<(usize, usize, f32)>,
    ys: Vec<(usize, usize, f32)>,
}

impl Resampling {
    fn fit(&mut self, pre: &Preprocess, width: usize, height: usize) {
        if self.source == (width, height) && !self.xs.is_empty() {
            return;
        }
        let (placed_w, placed_h, left, top) = match pre.fit {
            Fit::Stretch => (pre.width, pre.height, 0usize, 0usize),
            Fit::Letterbox { .. } => {
                let r = (pre.width as f32 / width as f32).min(pre.height as f32 / height as f32);
                let w = ((width as f32 * r).round() as usize).clamp(1, pre.width);
                let h = ((height as f32 * r).round() as usize).clamp(1, pre.height);
                let left = ((pre.width - w) as f32 / 2.0 - 0.1).round().max(0.0) as usize;
                let top = ((pre.height - h) as f32 / 2.0 - 0.1).round().max(0.0) as usize;
                (w, h, left, top)
            }
        };
        taps_into(width, placed_w, &mut self.xs);
        taps_into(height, placed_h, &mut self.ys);
        *self = Self {
            source: (width, height),
            placed: (placed_w, placed_h),
            left,
            top,
            xs: std::mem::take(&mut self.xs),
            ys: std::mem::take(&mut self.ys),
        };
    }
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
        self.apply_with(image, out, &mut Resampling::default())
    }

    /// [`apply`](Self::apply), with the taps kept in `resampling` for the next image of the same
    /// size.
    pub fn apply_with(&self, image: RgbImage<'_>, out: &mut [f32], resampling: &mut Resampling) -> Placement {
        assert_eq!(out.len(), self.len());
        let (iw, ih) = (image.width, image.height);
        resampling.fit(self, iw, ih);
        let Resampling {
            placed: (placed_w, placed_h),
            left,
            top,
            ref xs,
            ref ys,
            ..
        } = *resampling;
        let pad = match self.fit {
            Fit::Stretch => 0.0,
            Fit::Letterbox { pad } => pad,
        };
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

    #[test]
    fn a_420_frame_converts_pixel_for_pixel_with_shared_chroma() {
        let (w, h) = (37usize, 23usize);
        let y: Vec<u8> = (0..w * h).map(|i| (i * 7 % 251) as u8).collect();
        let u: Vec<u8> = (0..19 * 12).map(|i| (i * 13 % 241) as u8).collect();
        let v: Vec<u8> = (0..19 * 12).map(|i| (255 - i * 5 % 239) as u8).collect();
        for full_range in [false, true] {
            let frame = Yuv420Image::new(&y, &u, &v, w, h, full_range).unwrap();
            let mut rgb = vec![7; 3];
            frame.to_rgb(&mut rgb);
            assert_eq!(rgb.len(), w * h * 3);
            for (yy, xx) in [(0, 0), (0, 36), (22, 0), (22, 36), (11, 17)] {
                let i = (yy * w + xx) * 3;
                assert_eq!(rgb[i..i + 3], frame.rgb(xx, yy), "({xx}, {yy})");
                let c = (yy / 2) * 19 + xx / 2;
                assert_eq!(
                    frame.rgb(xx, yy),
                    yuv_to_rgb(y[yy * w + xx], u[c], v[c], full_range)
                );
            }
        }
        assert!(Yuv420Image::new(&y, &u, &v, w, h + 2, false).is_err());
    }

    #[test]
    fn limited_range_black_and_white_map_to_the_ends_and_grey_has_no_tint() {
        assert_eq!(yuv_to_rgb(16, 128, 128, false), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128, false), [255, 255, 255]);
        assert_eq!(yuv_to_rgb(128, 128, 128, true), [128, 128, 128]);
        // Strong red in BT.601 limited range.
        let [r, g, b] = yuv_to_rgb(81, 90, 240, false);
        assert!(r > 250 && g < 5 && b < 5, "{r} {g} {b}");
    }
}

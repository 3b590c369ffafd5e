//! Borrowed gray images and pixel rectangles.

use thiserror::Error;

/// Why an image view could not be made (a frame of the wrong size, say).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    #[error("image is empty ({width}x{height})")]
    Empty { width: usize, height: usize },
    #[error("stride {stride} is smaller than the width {width}")]
    Stride { width: usize, stride: usize },
    #[error("{len} bytes cannot hold {height} rows of stride {stride} (width {width})")]
    Short {
        len: usize,
        width: usize,
        height: usize,
        stride: usize,
    },
    #[error("image is {got_width}x{got_height}, the detector was made for {width}x{height}")]
    Size {
        width: usize,
        height: usize,
        got_width: usize,
        got_height: usize,
    },
}

/// An 8-bit gray image borrowed from its owner: a decoder's luma plane, rows `stride` bytes apart.
#[derive(Clone, Copy, Debug)]
pub struct GrayImage<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
    stride: usize,
}

impl<'a> GrayImage<'a> {
    /// A tightly packed image (stride = width).
    pub fn new(data: &'a [u8], width: usize, height: usize) -> Result<Self, ImageError> {
        Self::with_stride(data, width, height, width)
    }

    /// An image whose rows are `stride` bytes apart (decoders pad rows).
    pub fn with_stride(
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
    ) -> Result<Self, ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::Empty { width, height });
        }
        if stride < width {
            return Err(ImageError::Stride { width, stride });
        }
        let needed = (height - 1) * stride + width;
        if data.len() < needed {
            return Err(ImageError::Short {
                len: data.len(),
                width,
                height,
                stride,
            });
        }
        Ok(Self {
            data,
            width,
            height,
            stride,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// Row `y`, exactly `width` bytes.
    #[inline(always)]
    pub fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width]
    }
}

/// A rectangle of pixels: `x..x + width` by `y..y + height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self { x, y, width, height }
    }

    /// From corners, `right` and `bottom` exclusive.
    pub const fn from_corners(x: u32, y: u32, right: u32, bottom: u32) -> Self {
        Self {
            x,
            y,
            width: right - x,
            height: bottom - y,
        }
    }

    pub const fn right(&self) -> u32 {
        self.x + self.width
    }

    pub const fn bottom(&self) -> u32 {
        self.y + self.height
    }

    pub const fn area(&self) -> u64 {
        self.width as u64 * self.height as u64
    }

    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The smallest rectangle holding both.
    pub fn union(&self, other: &Rect) -> Rect {
        Rect::from_corners(
            self.x.min(other.x),
            self.y.min(other.y),
            self.right().max(other.right()),
            self.bottom().max(other.bottom()),
        )
    }

    /// Area of the overlap of the two rectangles.
    pub fn intersection_area(&self, other: &Rect) -> u64 {
        let w = self
            .right()
            .min(other.right())
            .saturating_sub(self.x.max(other.x));
        let h = self
            .bottom()
            .min(other.bottom())
            .saturating_sub(self.y.max(other.y));
        w as u64 * h as u64
    }

    /// Whether `other` lies inside this rectangle without touching its edges.
    pub fn strictly_contains(&self, other: &Rect) -> bool {
        other.x > self.x && other.y > self.y && other.right() < self.right() && other.bottom() < self.bottom()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_check_their_geometry() {
        let data = [0u8; 12];
        assert!(GrayImage::new(&data, 4, 3).is_ok());
        assert!(GrayImage::with_stride(&data, 3, 3, 4).is_ok());
        assert_eq!(
            GrayImage::new(&data, 4, 4).unwrap_err(),
            ImageError::Short {
                len: 12,
                width: 4,
                height: 4,
                stride: 4
            }
        );
        assert!(matches!(
            GrayImage::new(&data, 0, 3),
            Err(ImageError::Empty { .. })
        ));
        assert!(matches!(
            GrayImage::with_stride(&data, 4, 2, 3),
            Err(ImageError::Stride { .. })
        ));
        let view = GrayImage::with_stride(&data, 3, 3, 4).unwrap();
        assert_eq!(view.row(2).len(), 3);
    }

    #[test]
    fn rect_geometry() {
        let a = Rect::new(0, 0, 10, 10);
        let b = Rect::new(5, 5, 10, 10);
        assert_eq!(a.union(&b), Rect::new(0, 0, 15, 15));
        assert_eq!(a.intersection_area(&b), 25);
        assert_eq!(a.intersection_area(&Rect::new(20, 20, 1, 1)), 0);
        assert!(a.strictly_contains(&Rect::new(1, 1, 8, 8)));
        assert!(!a.strictly_contains(&Rect::new(0, 1, 8, 8)));
        assert!(!a.strictly_contains(&Rect::new(1, 1, 9, 8)));
    }
}

//! Decoding uploaded images with limits: the format is sniffed (JPEG or PNG only), the pixel count
//! is checked from the header before any pixel is decoded, and a truncated or corrupt file is an
//! error, not a partial image.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("the body is not a JPEG or PNG image")]
    NotAnImage,
    #[error("the image is {width}x{height} = {pixels} pixels; the limit is {limit}")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("the image cannot be decoded (truncated or corrupt): {0}")]
    Corrupt(String),
}

/// A decoded RGB image.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbBuffer {
    pub data: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Width and height from the header, without decoding pixels.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), DecodeError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| DecodeError::NotAnImage)?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png) => {}
        _ => return Err(DecodeError::NotAnImage),
    }
    reader
        .into_dimensions()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))
}

pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbBuffer, DecodeError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| DecodeError::NotAnImage)?;
    match reader.format() {
        // The JPEG decoder fills a cut-off file with gray instead of failing: a JPEG must end
        // with its end-of-image marker (allowing a little trailing padding).
        Some(ImageFormat::Jpeg) => {
            let tail = &bytes[bytes.len().saturating_sub(64)..];
            if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
                return Err(DecodeError::Corrupt(
                    "the JPEG has no end-of-image marker: truncated".into(),
                ));
            }
        }
        Some(ImageFormat::Png) => {}
        _ => return Err(DecodeError::NotAnImage),
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(DecodeError::TooManyPixels {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| DecodeError::NotAnImage)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let rgb = image.into_rgb8();
    Ok(RgbBuffer {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(width, height, image::Rgb([10, 20, 30]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_and_refuses_what_it_should() {
        let ok = decode(&png(4, 3), 100).unwrap();
        assert_eq!((ok.width, ok.height, ok.data.len()), (4, 3, 36));
        assert_eq!(&ok.data[..3], &[10, 20, 30]);
        assert!(matches!(
            decode(&png(20, 10), 100),
            Err(DecodeError::TooManyPixels { pixels: 200, .. })
        ));
        assert_eq!(decode(b"hello world", 100), Err(DecodeError::NotAnImage));
        let full = png(40, 40);
        assert!(matches!(
            decode(&full[..full.len() / 2], 10_000),
            Err(DecodeError::Corrupt(_))
        ));
        let mut jpeg = Cursor::new(Vec::new());
        image::RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3]))
            .write_to(&mut jpeg, ImageFormat::Jpeg)
            .unwrap();
        let jpeg = jpeg.into_inner();
        assert!(decode(&jpeg, 10_000).is_ok());
        assert!(matches!(
            decode(&jpeg[..jpeg.len() - 40], 10_000),
            Err(DecodeError::Corrupt(_))
        ));
    }
}

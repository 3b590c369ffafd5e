//! Colour for the few pictures that leave the node: a region of a 4:2:0 frame as RGB, encoded as
//! JPEG. Only selected frames pay for this.

use autotuner_detect::yuv_to_rgb;
use autotuner_vision::Rect;
use image::codecs::jpeg::JpegEncoder;

use crate::source::Frame;

/// The pixels of `region` (clipped to the frame) as packed RGB into `out`; returns its size.
pub fn region_rgb(frame: &Frame, region: Rect, out: &mut Vec<u8>) -> (u32, u32) {
    let x0 = (region.x as usize).min(frame.width);
    let y0 = (region.y as usize).min(frame.height);
    let x1 = (region.right() as usize).min(frame.width);
    let y1 = (region.bottom() as usize).min(frame.height);
    let (cw, _) = frame.chroma_size();
    out.clear();
    out.reserve((x1 - x0) * (y1 - y0) * 3);
    for y in y0..y1 {
        let luma = &frame.y[y * frame.width..(y + 1) * frame.width];
        let u = &frame.u[(y / 2) * cw..(y / 2 + 1) * cw];
        let v = &frame.v[(y / 2) * cw..(y / 2 + 1) * cw];
        for x in x0..x1 {
            out.extend_from_slice(&yuv_to_rgb(luma[x], u[x / 2], v[x / 2], frame.full_range));
        }
    }
    ((x1 - x0) as u32, (y1 - y0) as u32)
}

/// `region` of `frame` as a JPEG.
pub fn jpeg(frame: &Frame, region: Rect, quality: u8, scratch: &mut Vec<u8>) -> Vec<u8> {
    let (w, h) = region_rgb(frame, region, scratch);
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode(scratch, w, h, image::ExtendedColorType::Rgb8)
        .expect("JPEG encoding into memory cannot fail for a valid RGB buffer");
    bytes
}

/// The whole frame as a JPEG.
pub fn frame_jpeg(frame: &Frame, quality: u8, scratch: &mut Vec<u8>) -> Vec<u8> {
    jpeg(
        frame,
        Rect::new(0, 0, frame.width as u32, frame.height as u32),
        quality,
        scratch,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_cut_with_its_own_size_and_clipped_to_the_frame() {
        let frame = Frame {
            width: 6,
            height: 4,
            full_range: true,
            y: (0..24).map(|i| i as u8 * 10).collect(),
            u: vec![128; 6],
            v: vec![128; 6],
            ..Frame::default()
        };
        let mut out = Vec::new();
        assert_eq!(region_rgb(&frame, Rect::new(4, 2, 10, 10), &mut out), (2, 2));
        assert_eq!(
            out,
            vec![160, 160, 160, 170, 170, 170, 220, 220, 220, 230, 230, 230]
        );
    }
}

//! An MP4 of RGB frames (the annotated output of `autotuner detect`): H.264 when FFmpeg's
//! libraries have an encoder for it (Debian's link libx264), MPEG-4 part 2 otherwise, which
//! every FFmpeg build has.

use std::path::Path;

use anyhow::Context;
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{Dictionary, Packet, Rational, codec, encoder, frame};
use ffmpeg_next as ffmpeg;

pub struct Mp4Writer {
    output: ffmpeg::format::context::Output,
    encoder: encoder::Video,
    scaler: scaling::Context,
    rgb: frame::Video,
    yuv: frame::Video,
    time_base: Rational,
    next_pts: i64,
    /// The codec used, for the report.
    pub codec: &'static str,
}

impl Mp4Writer {
    /// An MP4 at `path` of `width`x`height` frames (odd sizes are scaled to the even size 4:2:0
    /// needs) at `fps` frames per second.
    pub fn create(path: &Path, width: u32, height: u32, fps: f64) -> anyhow::Result<Self> {
        ffmpeg::init().context("FFmpeg")?;
        let (out_w, out_h) = (width & !1, height & !1);
        anyhow::ensure!(
            out_w > 0 && out_h > 0,
            "a {width}x{height} frame is too small to encode"
        );
        let mut output =
            ffmpeg::format::output(path).with_context(|| format!("create {}", path.display()))?;
        let global_header = output
            .format()
            .flags()
            .contains(ffmpeg::format::Flags::GLOBAL_HEADER);
        let (codec, name) = match encoder::find(codec::Id::H264) {
            Some(c) => (c, "h264"),
            None => (
                encoder::find(codec::Id::MPEG4)
                    .context("FFmpeg has neither an H.264 nor an MPEG-4 encoder")?,
                "mpeg4",
            ),
        };
        let fps_whole = fps.round().clamp(1.0, 240.0) as i32;
        let time_base = Rational::new(1, fps_whole);
        let mut stream = output.add_stream(codec)?;
        let mut video = codec::context::Context::new_with_codec(codec).encoder().video()?;
        video.set_width(out_w);
        video.set_height(out_h);
        video.set_format(Pixel::YUV420P);
        video.set_time_base(time_base);
        video.set_frame_rate(Some(Rational::new(fps_whole, 1)));
        // No B-frames: every frame decodes in order, and players and probes count them all.
        video.set_max_b_frames(0);
        if global_header {
            video.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut options = Dictionary::new();
        if name == "h264" {
            // Fast and small enough for a review copy; the detections are in the JSON or CSV.
            options.set("preset", "veryfast");
            options.set("crf", "26");
        } else {
            video.set_bit_rate(4_000_000);
        }
        let encoder = video.open_with(options).context("open the video encoder")?;
        stream.set_parameters(&encoder);
        output.write_header().context("write the MP4 header")?;
        let scaler = scaling::Context::get(
            Pixel::RGB24,
            width,
            height,
            Pixel::YUV420P,
            out_w,
            out_h,
            scaling::Flags::BILINEAR,
        )?;
        Ok(Self {
            output,
            encoder,
            scaler,
            rgb: frame::Video::new(Pixel::RGB24, width, height),
            yuv: frame::Video::new(Pixel::YUV420P, out_w, out_h),
            time_base,
            next_pts: 0,
            codec: name,
        })
    }

    /// Appends one frame of packed RGB of the size given at creation.
    pub fn push(&mut self, rgb: &[u8]) -> anyhow::Result<()> {
        let (w, h) = (self.rgb.width() as usize, self.rgb.height() as usize);
        anyhow::ensure!(
            rgb.len() == w * h * 3,
            "a frame of another size than the video's {w}x{h}"
        );
        let stride = self.rgb.stride(0);
        let data = self.rgb.data_mut(0);
        for (row, src) in rgb.chunks_exact(w * 3).enumerate() {
            data[row * stride..row * stride + w * 3].copy_from_slice(src);
        }
        self.scaler.run(&self.rgb, &mut self.yuv)?;
        self.yuv.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.encoder.send_frame(&self.yuv)?;
        self.drain()
    }

    fn drain(&mut self) -> anyhow::Result<()> {
        let stream_time_base = self.output.stream(0).context("the video stream")?.time_base();
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            // One frame long: without a duration the muxer ends the video at the last frame's
            // start, and players drop that frame.
            packet.set_duration(1);
            packet.rescale_ts(self.time_base, stream_time_base);
            packet.write_interleaved(&mut self.output)?;
        }
        Ok(())
    }

    /// Flushes the encoder and writes the MP4's index; returns the frames written.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        self.encoder.send_eof()?;
        self.drain()?;
        self.output.write_trailer().context("finish the MP4")?;
        Ok(self.next_pts as u64)
    }
}

/// Draws `boxes` (x0, y0, x1, y1 in pixels) as `thickness`-pixel rectangles of `colour` into a
/// packed RGB frame; boxes are clipped to the frame.
pub fn draw_boxes(
    rgb: &mut [u8],
    width: usize,
    height: usize,
    boxes: impl IntoIterator<Item = [f32; 4]>,
    colour: [u8; 3],
    thickness: usize,
) {
    if width == 0 || height == 0 {
        return;
    }
    let mut put = |x: usize, y: usize| {
        let at = (y * width + x) * 3;
        rgb[at..at + 3].copy_from_slice(&colour);
    };
    for [x0, y0, x1, y1] in boxes {
        let clamp = |v: f32, max: usize| (v.max(0.0) as usize).min(max - 1);
        let (x0, x1) = (clamp(x0, width), clamp(x1, width));
        let (y0, y1) = (clamp(y0, height), clamp(y1, height));
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        for t in 0..thickness.min((x1 - x0) / 2).min((y1 - y0) / 2).max(1) {
            for x in x0..=x1 {
                put(x, y0 + t);
                put(x, y1 - t);
            }
            for y in y0..=y1 {
                put(x0 + t, y);
                put(x1 - t, y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_is_drawn_as_its_outline_and_clipped_to_the_frame() {
        let (w, h) = (8, 6);
        let mut rgb = vec![0u8; w * h * 3];
        draw_boxes(&mut rgb, w, h, [[2.0, 1.0, 20.0, 4.0]], [255, 0, 0], 1);
        let red = |x: usize, y: usize| rgb[(y * w + x) * 3] == 255;
        assert!(red(2, 1) && red(7, 1) && red(2, 4) && red(7, 4) && red(2, 2) && red(7, 3));
        assert!(!red(3, 2) && !red(1, 1) && !red(2, 5), "inside and outside stay");
    }
}

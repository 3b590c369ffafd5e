//! What the CLI's commands read: a video or a stream (any FFmpeg input, through the capture
//! worker's decoder) or a folder of images, as RGB frames in order, numbered from 0.

use std::path::{Path, PathBuf};

use anyhow::Context;
use autotuner_capture::picture;
use autotuner_capture::source::{Source, SourceConfig};
use autotuner_vision::Rect;

/// One frame, as packed RGB.
pub struct RgbFrame<'a> {
    /// 0-based position in the footage.
    pub index: u64,
    /// The image's file name, for a folder of images.
    pub name: Option<&'a str>,
    pub rgb: &'a [u8],
    pub width: usize,
    pub height: usize,
}

/// A video, a stream, or a folder of images (sorted by name).
pub enum Footage {
    Video(String),
    Images(Vec<PathBuf>),
}

const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

impl Footage {
    /// A folder is a sequence of images; anything else is given to FFmpeg.
    pub fn open(input: &str) -> anyhow::Result<Self> {
        let path = Path::new(input);
        if !path.is_dir() {
            return Ok(Self::Video(input.to_string()));
        }
        let mut images: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("read {input}"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        images.sort();
        anyhow::ensure!(
            !images.is_empty(),
            "{input}: a folder with no image (expected {} files, a frame each, named in order)",
            IMAGE_EXTENSIONS.join(", ")
        );
        Ok(Self::Images(images))
    }

    /// What a user sees in messages: a stream's credentials are redacted.
    pub fn describe(&self) -> String {
        match self {
            Self::Video(url) => autotuner_capture::source::redact(url),
            Self::Images(images) => format!(
                "{} images in {}",
                images.len(),
                images[0].parent().unwrap_or(Path::new(".")).display()
            ),
        }
    }

    /// The frame size and the number of frames (decoding a video whole: container frame counts
    /// are often missing or wrong), at most `limit`.
    pub fn probe(&self, limit: Option<u64>) -> anyhow::Result<Probe> {
        match self {
            Self::Video(url) => {
                let source = Source::start(SourceConfig::new(url.as_str()))
                    .with_context(|| format!("open {}", self.describe()))?;
                let mut probe = Probe::default();
                while let Some(frame) = source.next_frame() {
                    probe.size = (frame.width as u32, frame.height as u32);
                    probe
                        .times_ms
                        .push(frame.pts_ms.unwrap_or(frame.index as i64 * 40));
                    source.recycle(frame);
                    if limit.is_some_and(|l| probe.frames() >= l) {
                        probe.cut_short = true;
                        break;
                    }
                }
                if let Some(e) = source.take_error() {
                    return Err(e).with_context(|| format!("decode {}", self.describe()));
                }
                anyhow::ensure!(
                    probe.frames() > 0,
                    "{}: no frame decoded: is it a video FFmpeg can read?",
                    self.describe()
                );
                Ok(probe)
            }
            Self::Images(images) => {
                let first = image::image_dimensions(&images[0])
                    .with_context(|| format!("read {}", images[0].display()))?;
                let count = limit.map_or(images.len(), |l| images.len().min(l as usize));
                Ok(Probe {
                    size: first,
                    times_ms: (0..count as i64).map(|i| i * 40).collect(),
                    cut_short: count < images.len(),
                })
            }
        }
    }

    /// Calls `each` with every frame before `end` (0-based) that `wanted` picks, in order; stops
    /// early when `each` returns false. Frames not picked are decoded (a video is read in order)
    /// but not converted.
    pub fn for_each(
        &self,
        end: u64,
        wanted: impl Fn(u64) -> bool,
        mut each: impl FnMut(RgbFrame<'_>) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut rgb = Vec::new();
        match self {
            Self::Video(url) => {
                let source = Source::start(SourceConfig::new(url.as_str()))
                    .with_context(|| format!("open {}", self.describe()))?;
                while let Some(frame) = source.next_frame() {
                    let index = frame.index;
                    if index >= end {
                        source.recycle(frame);
                        break;
                    }
                    if !wanted(index) {
                        source.recycle(frame);
                        continue;
                    }
                    let (w, h) = (frame.width, frame.height);
                    picture::region_rgb(&frame, Rect::new(0, 0, w as u32, h as u32), &mut rgb);
                    source.recycle(frame);
                    let more = each(RgbFrame {
                        index,
                        name: None,
                        rgb: &rgb,
                        width: w,
                        height: h,
                    })?;
                    if !more {
                        return Ok(());
                    }
                }
                if let Some(e) = source.take_error() {
                    return Err(e).with_context(|| format!("decode {}", self.describe()));
                }
            }
            Self::Images(images) => {
                for (index, path) in images.iter().enumerate() {
                    let index = index as u64;
                    if index >= end {
                        break;
                    }
                    if !wanted(index) {
                        continue;
                    }
                    let image = image::open(path)
                        .with_context(|| format!("read {}", path.display()))?
                        .into_rgb8();
                    let name = path.file_name().and_then(|n| n.to_str());
                    let more = each(RgbFrame {
                        index,
                        name,
                        rgb: image.as_raw(),
                        width: image.width() as usize,
                        height: image.height() as usize,
                    })?;
                    if !more {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A video's frame size and the stream time of each frame.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub size: (u32, u32),
    pub times_ms: Vec<i64>,
    /// Stopped at the limit asked for: the footage may be longer.
    pub cut_short: bool,
}

impl Probe {
    pub fn frames(&self) -> u64 {
        self.times_ms.len() as u64
    }

    /// Frames per second from the stream times (25 when they say nothing).
    pub fn frame_rate(&self) -> f64 {
        let n = self.times_ms.len();
        if n < 2 {
            return 25.0;
        }
        let span = (self.times_ms[n - 1] - self.times_ms[0]) as f64 / 1000.0;
        if span > 0.0 { (n - 1) as f64 / span } else { 25.0 }
    }
}

//! The motion detector: one per camera, fed every frame it should look at.

use thiserror::Error;

use crate::bits::{BitMask, pack_bits};
use crate::blur::{BlurPlan, BlurScratch};
use crate::image::{GrayImage, ImageError, Rect};
use crate::median::{MedianNetwork, TILE};
use crate::regions::RegionFinder;
use crate::resize::Resizer;
use crate::simd::{Level, multiversion};

/// How the background is modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    /// Every `skip`-th frame is sampled; each sample makes a background, the pixel-wise median of
    /// the last `frames` samples; the background in use is the pixel-wise median of the last
    /// `history` such backgrounds. Objects that stop fold into it after about half the window and
    /// leave it as soon after they go; passers-by never enter it.
    Median { frames: u32, skip: u32, history: u32 },
    /// The first frame (after each reset) is the background.
    FirstFrame,
}

/// Motion-detector settings; `Default` is the reference method's.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionConfig {
    pub background: Background,
    /// Rebuild the background from the current frame every this many frames.
    pub reset_interval_frames: Option<u64>,
    /// Rebuild the background from the current frame when more than this fraction of the pixels
    /// changed at once (lighting change, camera shake); such a frame selects nothing.
    pub reset_changed_fraction: f32,
    /// Side of the square Gaussian kernel, odd, at processing resolution.
    pub blur_kernel: u32,
    /// Blurred gray-level difference above which a pixel has changed.
    pub threshold: u8,
    /// Dilations of the changed pixels with a 5x5 square.
    pub dilate_iterations: u32,
    /// Regions whose box covers fewer pixels (at full resolution) are dropped.
    pub min_region_area: u32,
    /// Process frames scaled down to this width; boxes are mapped back to full resolution.
    pub processing_width: Option<u32>,
    /// Areas to ignore, as polygons with vertices relative to the frame (`[0, 0]` top left,
    /// `[1, 1]` bottom right).
    pub masks: Vec<Vec<[f64; 2]>>,
    /// The crop grows the union of the regions by this fraction of its size on every side...
    pub crop_margin: f32,
    /// ...and then to this width/height ratio (the teacher's input), staying inside the frame.
    pub crop_aspect: Option<f32>,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            background: Background::Median {
                frames: 25,
                skip: 10,
                history: 5,
            },
            reset_interval_frames: None,
            reset_changed_fraction: 0.6,
            blur_kernel: 21,
            threshold: 25,
            dilate_iterations: 2,
            min_region_area: 500,
            processing_width: None,
            masks: Vec::new(),
            crop_margin: 0.1,
            crop_aspect: Some(1.0),
        }
    }
}

/// A setting the detector cannot work with.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfigError {
    #[error("blur kernel must be odd and between 1 and 99, got {0}")]
    BlurKernel(u32),
    #[error(
        "median background needs frames in 1..=255, skip >= 1 and history in 1..=32, got {frames}, {skip}, {history}"
    )]
    Median { frames: u32, skip: u32, history: u32 },
    #[error("dilate iterations must be at most 10, got {0}")]
    Dilate(u32),
    #[error("reset changed fraction must be in (0, 1], got {0}")]
    ResetFraction(f32),
    #[error("crop margin must be in [0, 10] and crop aspect positive, got {margin} and {aspect:?}")]
    Crop { margin: f32, aspect: Option<f32> },
    #[error("this CPU cannot run the {0:?} instruction set")]
    Level(Level),
    #[error("frame size {width}x{height} is not usable")]
    FrameSize { width: usize, height: usize },
    #[error("processing width must be at least {MIN_PROCESSING_WIDTH} pixels, got {0}")]
    ProcessingWidth(u32),
}

/// The narrowest frames are processed at: below it a blur's border is wider than the image.
pub const MIN_PROCESSING_WIDTH: u32 = 16;

/// What happened to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameState {
    /// No background yet (the first frame after start): nothing detected.
    Warming,
    /// Compared with the background.
    Detected,
    /// Too much of the frame changed: the background was rebuilt from it, nothing selected.
    Reset,
}

/// Why the background was rebuilt from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    Start,
    Interval,
    ChangedArea,
}

/// The detector's verdict on one frame. Boxes are in full-resolution pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameReport {
    /// Frames given to the detector before this one.
    pub index: u64,
    pub state: FrameState,
    /// Set when the background was rebuilt from this frame.
    pub reset: Option<ResetCause>,
    /// Fraction of the (unmasked) pixels whose blurred difference exceeds the threshold.
    pub changed_fraction: f32,
    /// Boxes of the regions that survived the minimum area.
    pub regions: Vec<Rect>,
    /// The union of `regions`.
    pub union: Option<Rect>,
    /// What goes to the teacher: the union, padded and grown to the teacher's aspect ratio.
    pub crop: Option<Rect>,
    /// `crop` area over frame area (0 when nothing is selected).
    pub crop_area_fraction: f32,
    /// At least one region survived.
    pub selected: bool,
    /// Samples the background in use was built from (1 right after a reset).
    pub background_samples: u32,
}

/// The median model's memory: recent samples and recent backgrounds, each a ring of images.
#[derive(Debug)]
struct MedianModel {
    frames: usize,
    skip: u64,
    history: usize,
    samples: Vec<u8>,
    sample_count: usize,
    sample_next: usize,
    backgrounds: Vec<u8>,
    background_count: usize,
    background_next: usize,
    /// `networks[n - 1]` takes the median of n images.
    networks: Vec<MedianNetwork>,
    tile: Vec<u8>,
    next_sample: u64,
    /// The background being built from the latest sample, a band of rows per frame.
    rebuild: Option<Rebuild>,
    rebuilt: Vec<u8>,
    rebuilt_blurred: Vec<u8>,
    blur_scratch: BlurScratch,
}

#[derive(Debug, Clone, Copy)]
struct Rebuild {
    /// First frame that uses the new background: one sampling period after its sample.
    effective_at: u64,
    slot: usize,
    median_rows: usize,
    blurred_rows: usize,
    samples_used: u32,
}

/// Finds the moving regions of a static camera's frames. Make one per camera and frame size; the
/// per-frame path reuses the detector's buffers and allocates nothing once they have grown to the
/// scene's largest number of regions.
#[derive(Debug)]
pub struct MotionDetector {
    config: MotionConfig,
    level: Level,
    width: usize,
    height: usize,
    /// Processing resolution.
    pw: usize,
    ph: usize,
    resizer: Option<Resizer>,
    small: Vec<u8>,
    blur: BlurPlan,
    blur_scratch: BlurScratch,
    diff_bytes: Vec<u8>,
    keep: Option<BitMask>,
    kept_pixels: u64,
    changed: BitMask,
    dilated: BitMask,
    dilate_rows: BitMask,
    finder: RegionFinder,
    found: Vec<Rect>,
    /// The blurred background in use.
    background: Vec<u8>,
    has_background: bool,
    background_samples: u32,
    median: Option<MedianModel>,
    frame_index: u64,
    last_reset: u64,
    /// A reset asked for by the caller (a time-based interval), done at the next frame.
    reset_requested: bool,
    report: FrameReport,
}

impl MotionDetector {
    /// A detector for `width` x `height` frames, with the best instruction set of this CPU.
    pub fn new(width: usize, height: usize, config: MotionConfig) -> Result<Self, ConfigError> {
        Self::with_level(width, height, config, Level::detect())
    }

    /// As `new`, with a chosen instruction set (tests compare them).
    pub fn with_level(
        width: usize,
        height: usize,
        config: MotionConfig,
        level: Level,
    ) -> Result<Self, ConfigError> {
        validate(&config)?;
        if !Level::available().contains(&level) {
            // Running code compiled for instructions the CPU lacks would be undefined behaviour.
            return Err(ConfigError::Level(level));
        }
        if width == 0 || height == 0 || width > u16::MAX as usize || height > u16::MAX as usize {
            return Err(ConfigError::FrameSize { width, height });
        }
        let (pw, ph) = match config.processing_width {
            Some(pw) if (pw as usize) < width => {
                let pw = pw as usize;
                (pw, ((height * pw + width / 2) / width).max(1))
            }
            _ => (width, height),
        };
        let resizer = (pw != width).then(|| Resizer::new(width, height, pw, ph));
        let blur = BlurPlan::new(pw, ph, config.blur_kernel as usize);
        let keep = (!config.masks.is_empty()).then(|| {
            let mut ignored = BitMask::new(pw, ph);
            ignored.fill_polygons(&config.masks);
            let mut keep = BitMask::new(pw, ph);
            keep.fill(true);
            for y in 0..ph {
                let ignored_row = ignored.row(y).to_vec();
                for (k, i) in keep.row_mut(y).iter_mut().zip(ignored_row) {
                    *k &= !i;
                }
            }
            keep
        });
        let kept_pixels = keep.as_ref().map_or((pw * ph) as u64, |k| k.count_ones());
        let size = pw * ph;
        let median = match config.background {
            Background::Median {
                frames,
                skip,
                history,
            } => Some(MedianModel {
                frames: frames as usize,
                skip: skip as u64,
                history: history as usize,
                samples: vec![0; frames as usize * size],
                sample_count: 0,
                sample_next: 0,
                backgrounds: vec![0; history as usize * size],
                background_count: 0,
                background_next: 0,
                networks: (1..=frames.max(history) as usize)
                    .map(MedianNetwork::new)
                    .collect(),
                tile: vec![0; frames.max(history) as usize * TILE],
                next_sample: 0,
                rebuild: None,
                rebuilt: vec![0; size],
                rebuilt_blurred: vec![0; size],
                blur_scratch: blur.scratch(),
            }),
            Background::FirstFrame => None,
        };
        Ok(Self {
            level,
            width,
            height,
            pw,
            ph,
            resizer,
            small: vec![0; if pw != width { size } else { 0 }],
            blur_scratch: blur.scratch(),
            blur,
            diff_bytes: vec![0; pw.div_ceil(64) * 64],
            keep,
            kept_pixels,
            changed: BitMask::new(pw, ph),
            dilated: BitMask::new(pw, ph),
            dilate_rows: BitMask::new(pw, ph),
            finder: RegionFinder::new(),
            found: Vec::with_capacity(64),
            background: vec![0; size],
            has_background: false,
            background_samples: 0,
            median,
            frame_index: 0,
            last_reset: 0,
            reset_requested: false,
            report: FrameReport {
                index: 0,
                state: FrameState::Warming,
                reset: None,
                changed_fraction: 0.0,
                regions: Vec::with_capacity(64),
                union: None,
                crop: None,
                crop_area_fraction: 0.0,
                selected: false,
                background_samples: 0,
            },
            config,
        })
    }

    pub fn config(&self) -> &MotionConfig {
        &self.config
    }

    /// The resolution frames are processed at.
    pub fn processing_size(&self) -> (usize, usize) {
        (self.pw, self.ph)
    }

    /// The instruction set in use.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The final mask of the last detected frame (changed pixels, dilated), at processing size.
    pub fn foreground(&self) -> &BitMask {
        &self.dilated
    }

    /// The changed pixels of the last detected frame before dilation.
    pub fn changed(&self) -> &BitMask {
        &self.changed
    }

    /// The blurred background in use, at processing size.
    pub fn background(&self) -> &[u8] {
        &self.background
    }

    /// Looks at the next frame. A frame of the wrong size is refused (and changes nothing).
    pub fn process(&mut self, frame: GrayImage<'_>) -> Result<&FrameReport, ImageError> {
        if (frame.width(), frame.height()) != (self.width, self.height) {
            return Err(ImageError::Size {
                width: self.width,
                height: self.height,
                got_width: frame.width(),
                got_height: frame.height(),
            });
        }
        let index = self.frame_index;
        self.frame_index += 1;
        let report = &mut self.report;
        report.index = index;
        report.reset = None;
        report.changed_fraction = 0.0;
        report.regions.clear();
        report.union = None;
        report.crop = None;
        report.crop_area_fraction = 0.0;
        report.selected = false;

        // Moved out for the call so that `image` may borrow it while `self` changes (moving a
        // Vec allocates nothing).
        let mut small = std::mem::take(&mut self.small);
        let image = match &mut self.resizer {
            Some(resizer) => {
                resizer.resize(frame, &mut small);
                GrayImage::new(&small, self.pw, self.ph).expect("sized at construction")
            }
            None => frame,
        };
        self.detect(image, index);
        self.small = small;
        Ok(&self.report)
    }

    fn detect(&mut self, image: GrayImage<'_>, index: u64) {
        // A background built from an earlier sample takes over when its time comes.
        if let Some(model) = &mut self.median
            && let Some(rebuild) = model.rebuild
            && index >= rebuild.effective_at
        {
            model.advance(self.level, &self.blur, usize::MAX);
            std::mem::swap(&mut self.background, &mut model.rebuilt_blurred);
            self.background_samples = rebuild.samples_used;
            model.rebuild = None;
        }

        let mut reset = None;
        if !self.has_background {
            self.report.state = FrameState::Warming;
            reset = Some(ResetCause::Start);
        } else {
            let changed = frame_pass(
                self.level,
                &self.blur,
                image,
                &self.background,
                self.config.threshold,
                self.keep.as_ref(),
                &mut self.blur_scratch,
                &mut self.diff_bytes,
                &mut self.changed,
            );
            let fraction = changed as f32 / self.kept_pixels.max(1) as f32;
            self.report.changed_fraction = fraction;
            if fraction > self.config.reset_changed_fraction {
                self.report.state = FrameState::Reset;
                reset = Some(ResetCause::ChangedArea);
            } else {
                self.report.state = FrameState::Detected;
                self.select();
                let interval_due = self
                    .config
                    .reset_interval_frames
                    .is_some_and(|interval| index - self.last_reset >= interval);
                if interval_due || self.reset_requested {
                    reset = Some(ResetCause::Interval);
                }
            }
        }
        self.report.reset = reset;

        if reset.is_some() {
            self.reset_to(image, index);
        } else if let Some(model) = &mut self.median
            && index == model.next_sample
        {
            model.add_sample(image, index);
        }
        if let Some(model) = &mut self.median
            && model.rebuild.is_some()
        {
            let budget = self.ph.div_ceil(model.skip as usize);
            model.advance(self.level, &self.blur, budget);
        }
        self.report.background_samples = self.background_samples;
    }

    /// Dilates, finds the regions, and chooses the crop of a detected frame.
    fn select(&mut self) {
        let radius = 2 * self.config.dilate_iterations as usize;
        self.dilated
            .dilate_from(&self.changed, radius, &mut self.dilate_rows);
        self.finder.find(&self.dilated, &mut self.found);
        let (w, h, pw, ph) = (
            self.width as u64,
            self.height as u64,
            self.pw as u64,
            self.ph as u64,
        );
        let report = &mut self.report;
        for r in &self.found {
            // Back to full resolution: the smallest box that covers the processed one.
            let full = if pw == w && ph == h {
                *r
            } else {
                Rect::from_corners(
                    (r.x as u64 * w / pw) as u32,
                    (r.y as u64 * h / ph) as u32,
                    (r.right() as u64 * w).div_ceil(pw).min(w) as u32,
                    (r.bottom() as u64 * h).div_ceil(ph).min(h) as u32,
                )
            };
            if full.area() >= self.config.min_region_area as u64 {
                report.regions.push(full);
                report.union = Some(report.union.map_or(full, |u| u.union(&full)));
            }
        }
        if let Some(union) = report.union {
            let crop = crop_for(
                union,
                self.width as u32,
                self.height as u32,
                self.config.crop_margin,
                self.config.crop_aspect,
            );
            report.crop = Some(crop);
            report.crop_area_fraction = (crop.area() as f64 / (w * h) as f64) as f32;
            report.selected = true;
        }
    }

    /// Rebuilds the background from the next frame (after that frame's regions are reported), as
    /// `reset_interval_frames` does; for callers that count the interval in time, not frames.
    pub fn reset_at_next_frame(&mut self) {
        self.reset_requested = true;
    }

    /// Makes `image` the background, forgetting every earlier sample.
    fn reset_to(&mut self, image: GrayImage<'_>, index: u64) {
        self.reset_requested = false;
        blur_image(
            self.level,
            &self.blur,
            image,
            &mut self.background,
            &mut self.blur_scratch,
        );
        self.has_background = true;
        self.background_samples = 1;
        self.last_reset = index;
        if let Some(model) = &mut self.median {
            let size = self.pw * self.ph;
            copy_image(image, &mut model.samples[..size]);
            model.backgrounds[..size].copy_from_slice(&model.samples[..size]);
            model.sample_count = 1;
            model.sample_next = 1 % model.frames;
            model.background_count = 1;
            model.background_next = 1 % model.history;
            model.rebuild = None;
            model.next_sample = index + model.skip;
        }
    }
}

impl MedianModel {
    fn add_sample(&mut self, image: GrayImage<'_>, index: u64) {
        let size = image.width() * image.height();
        let slot = self.sample_next;
        copy_image(image, &mut self.samples[slot * size..(slot + 1) * size]);
        self.sample_next = (slot + 1) % self.frames;
        self.sample_count = (self.sample_count + 1).min(self.frames);
        let background_slot = self.background_next;
        self.background_next = (background_slot + 1) % self.history;
        self.background_count = (self.background_count + 1).min(self.history);
        self.next_sample = index + self.skip;
        self.rebuild = Some(Rebuild {
            effective_at: index + self.skip,
            slot: background_slot,
            median_rows: 0,
            blurred_rows: 0,
            samples_used: self.sample_count as u32,
        });
    }

    /// Builds up to `budget` more rows of the pending background (median of the samples, then
    /// median of the backgrounds) and blurs the rows whose neighbourhood is complete.
    fn advance(&mut self, level: Level, plan: &BlurPlan, budget: usize) {
        let Some(mut rebuild) = self.rebuild else { return };
        let (w, h) = (plan.width, plan.height);
        let size = w * h;
        let rows_end = rebuild.median_rows.saturating_add(budget).min(h);
        median_rows(
            level,
            &self.networks[self.sample_count - 1],
            &self.networks[self.background_count - 1],
            &self.samples[..self.sample_count * size],
            &mut self.backgrounds[..self.history * size],
            self.background_count,
            rebuild.slot,
            &mut self.rebuilt,
            w,
            rebuild.median_rows..rows_end,
            &mut self.tile,
        );
        rebuild.median_rows = rows_end;
        let blur_end = if rows_end == h {
            h
        } else {
            (rebuild.blurred_rows..h)
                .find(|&y| plan.last_source_row(y) >= rows_end)
                .unwrap_or(h)
        };
        if blur_end > rebuild.blurred_rows {
            let source = GrayImage::new(&self.rebuilt, w, h).expect("sized at construction");
            blur_rows(
                level,
                plan,
                source,
                &mut self.rebuilt_blurred,
                &mut self.blur_scratch,
                rebuild.blurred_rows..blur_end,
            );
            rebuild.blurred_rows = blur_end;
        }
        self.rebuild = Some(rebuild);
    }
}

/// The crop for the teacher: `union` grown by `margin` of its size on each side, then to the
/// `aspect` ratio around its centre, then shifted (and if need be clipped) into the frame.
pub fn crop_for(union: Rect, width: u32, height: u32, margin: f32, aspect: Option<f32>) -> Rect {
    let (uw, uh) = (union.width as f64, union.height as f64);
    let margin = margin as f64;
    let mut cw = uw + 2.0 * (uw * margin + 0.5).floor();
    let mut ch = uh + 2.0 * (uh * margin + 0.5).floor();
    if let Some(aspect) = aspect {
        let aspect = aspect as f64;
        if cw < ch * aspect {
            cw = (ch * aspect).ceil();
        } else {
            ch = (cw / aspect).ceil();
        }
    }
    let cw = cw.min(width as f64);
    let ch = ch.min(height as f64);
    let cx = union.x as f64 + uw / 2.0;
    let cy = union.y as f64 + uh / 2.0;
    let x = (cx - cw / 2.0).floor().clamp(0.0, width as f64 - cw);
    let y = (cy - ch / 2.0).floor().clamp(0.0, height as f64 - ch);
    Rect::new(x as u32, y as u32, cw as u32, ch as u32)
}

fn validate(c: &MotionConfig) -> Result<(), ConfigError> {
    if c.blur_kernel.is_multiple_of(2) || !(1..=99).contains(&c.blur_kernel) {
        return Err(ConfigError::BlurKernel(c.blur_kernel));
    }
    if let Background::Median {
        frames,
        skip,
        history,
    } = c.background
        && (!(1..=255).contains(&frames) || skip == 0 || !(1..=32).contains(&history))
    {
        return Err(ConfigError::Median {
            frames,
            skip,
            history,
        });
    }
    if c.dilate_iterations > 10 {
        return Err(ConfigError::Dilate(c.dilate_iterations));
    }
    if let Some(width) = c.processing_width.filter(|&w| w < MIN_PROCESSING_WIDTH) {
        return Err(ConfigError::ProcessingWidth(width));
    }
    if !(c.reset_changed_fraction > 0.0 && c.reset_changed_fraction <= 1.0) {
        return Err(ConfigError::ResetFraction(c.reset_changed_fraction));
    }
    let aspect_ok = c.crop_aspect.is_none_or(|a| a.is_finite() && a > 0.0);
    if !(0.0..=10.0).contains(&c.crop_margin) || !aspect_ok {
        return Err(ConfigError::Crop {
            margin: c.crop_margin,
            aspect: c.crop_aspect,
        });
    }
    Ok(())
}

fn copy_image(image: GrayImage<'_>, out: &mut [u8]) {
    let w = image.width();
    for (y, row) in out.chunks_exact_mut(w).enumerate() {
        row.copy_from_slice(image.row(y));
    }
}

// The hot loops, compiled once per instruction set (see `simd`).

multiversion!(fn frame_pass(
    plan: &BlurPlan,
    image: GrayImage<'_>,
    background: &[u8],
    threshold: u8,
    keep: Option<&BitMask>,
    scratch: &mut BlurScratch,
    bytes: &mut [u8],
    changed: &mut BitMask,
) -> u64 => frame_pass_generic);

/// Blurs each row of the frame, compares it with the blurred background and packs the pixels
/// that differ by more than `threshold` into `changed`; returns how many there are.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn frame_pass_generic(
    plan: &BlurPlan,
    image: GrayImage<'_>,
    background: &[u8],
    threshold: u8,
    keep: Option<&BitMask>,
    scratch: &mut BlurScratch,
    bytes: &mut [u8],
    changed: &mut BitMask,
) -> u64 {
    let w = plan.width;
    let mut count = 0u64;
    for y in 0..plan.height {
        plan.blur_row(|r| image.row(r), y, scratch);
        let bg = &background[y * w..(y + 1) * w];
        for ((b, &a), &g) in bytes.iter_mut().zip(&scratch.out).zip(bg) {
            *b = (a.abs_diff(g) > threshold) as u8;
        }
        let row = changed.row_mut(y);
        for (word, chunk) in row.iter_mut().zip(bytes.chunks_exact(64)) {
            *word = pack_bits(chunk.try_into().expect("64 bytes"));
        }
        if let Some(keep) = keep {
            for (word, &k) in row.iter_mut().zip(keep.row(y)) {
                *word &= k;
            }
        }
        count += row.iter().map(|word| word.count_ones() as u64).sum::<u64>();
    }
    count
}

multiversion!(fn blur_rows(
    plan: &BlurPlan,
    image: GrayImage<'_>,
    out: &mut [u8],
    scratch: &mut BlurScratch,
    rows: std::ops::Range<usize>,
) => blur_rows_generic);

#[inline(always)]
fn blur_rows_generic(
    plan: &BlurPlan,
    image: GrayImage<'_>,
    out: &mut [u8],
    scratch: &mut BlurScratch,
    rows: std::ops::Range<usize>,
) {
    let w = plan.width;
    for y in rows {
        plan.blur_row(|r| image.row(r), y, scratch);
        out[y * w..(y + 1) * w].copy_from_slice(&scratch.out);
    }
}

fn blur_image(level: Level, plan: &BlurPlan, image: GrayImage<'_>, out: &mut [u8], s: &mut BlurScratch) {
    blur_rows(level, plan, image, out, s, 0..plan.height);
}

multiversion!(fn median_rows(
    sample_network: &MedianNetwork,
    background_network: &MedianNetwork,
    samples: &[u8],
    backgrounds: &mut [u8],
    background_count: usize,
    slot: usize,
    out: &mut [u8],
    width: usize,
    rows: std::ops::Range<usize>,
    tile: &mut [u8],
) => median_rows_generic);

/// Rows of the new background: the median of the samples into background slot `slot`, then the
/// median of the first `background_count` backgrounds into `out`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn median_rows_generic(
    sample_network: &MedianNetwork,
    background_network: &MedianNetwork,
    samples: &[u8],
    backgrounds: &mut [u8],
    background_count: usize,
    slot: usize,
    out: &mut [u8],
    width: usize,
    rows: std::ops::Range<usize>,
    tile: &mut [u8],
) {
    let size = out.len();
    for y in rows {
        let row = y * width..(y + 1) * width;
        {
            let target = &mut backgrounds[slot * size..(slot + 1) * size];
            crate::median::median_row(
                sample_network,
                samples,
                size,
                width,
                y,
                tile,
                &mut target[row.clone()],
            );
        }
        crate::median::median_row(
            background_network,
            &backgrounds[..background_count * size],
            size,
            width,
            y,
            tile,
            &mut out[row],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gray frame of `value` with bright squares `(x, y, side)`.
    fn frame(w: usize, h: usize, value: u8, squares: &[(usize, usize, usize)]) -> Vec<u8> {
        let mut f = vec![value; w * h];
        for &(x0, y0, side) in squares {
            for y in y0..(y0 + side).min(h) {
                for x in x0..(x0 + side).min(w) {
                    f[y * w + x] = 220;
                }
            }
        }
        f
    }

    fn run(d: &mut MotionDetector, f: &[u8]) -> FrameReport {
        let (w, h) = (d.width, d.height);
        d.process(GrayImage::new(f, w, h).unwrap()).unwrap().clone()
    }

    fn first_frame() -> MotionConfig {
        MotionConfig {
            background: Background::FirstFrame,
            ..MotionConfig::default()
        }
    }

    #[test]
    fn an_empty_scene_selects_nothing() {
        let mut d = MotionDetector::new(64, 48, MotionConfig::default()).unwrap();
        let empty = frame(64, 48, 0, &[]);
        let first = run(&mut d, &empty);
        assert_eq!(
            (first.state, first.reset),
            (FrameState::Warming, Some(ResetCause::Start))
        );
        for _ in 0..30 {
            let r = run(&mut d, &empty);
            assert_eq!(r.state, FrameState::Detected);
            assert!(!r.selected && r.regions.is_empty() && r.crop.is_none());
            assert_eq!(r.changed_fraction, 0.0);
        }
    }

    #[test]
    fn an_object_is_found_where_it_is() {
        let mut d = MotionDetector::new(320, 240, first_frame()).unwrap();
        run(&mut d, &frame(320, 240, 40, &[]));
        let r = run(&mut d, &frame(320, 240, 40, &[(100, 60, 40)]));
        assert!(r.selected);
        assert_eq!(r.regions.len(), 1);
        let b = r.regions[0];
        // The blur and the dilation widen the square by a few pixels on each side.
        assert!((88..100).contains(&b.x) && (48..60).contains(&b.y), "{b:?}");
        assert!(
            (140..152).contains(&b.right()) && (100..112).contains(&b.bottom()),
            "{b:?}"
        );
        let crop = r.crop.unwrap();
        assert_eq!(crop.width, crop.height, "square teacher input");
        assert!(crop.intersection_area(&b) == b.area());
        assert!((r.crop_area_fraction - crop.area() as f32 / (320.0 * 240.0)).abs() < 1e-6);
    }

    #[test]
    fn regions_touching_the_borders_and_odd_sizes() {
        for &(w, h) in &[(37, 23), (101, 67), (640, 480)] {
            let mut d = MotionDetector::new(
                w,
                h,
                MotionConfig {
                    min_region_area: 0,
                    blur_kernel: 5,
                    ..first_frame()
                },
            )
            .unwrap();
            run(&mut d, &frame(w, h, 30, &[]));
            let r = run(&mut d, &frame(w, h, 30, &[(0, 0, 6), (w - 6, h - 6, 6)]));
            assert_eq!(r.regions.len(), 2, "{w}x{h}: {:?}", r.regions);
            assert!(r.regions.iter().any(|b| b.x == 0 && b.y == 0), "{w}x{h}");
            assert!(
                r.regions
                    .iter()
                    .any(|b| b.right() == w as u32 && b.bottom() == h as u32),
                "{w}x{h}"
            );
            let crop = r.crop.unwrap();
            assert!(crop.right() <= w as u32 && crop.bottom() <= h as u32);
        }
    }

    #[test]
    fn an_all_changed_frame_resets_the_background() {
        let mut d = MotionDetector::new(64, 48, MotionConfig::default()).unwrap();
        run(&mut d, &frame(64, 48, 0, &[]));
        run(&mut d, &frame(64, 48, 0, &[]));
        let lights_on = frame(64, 48, 200, &[]);
        let r = run(&mut d, &lights_on);
        assert_eq!(
            (r.state, r.reset),
            (FrameState::Reset, Some(ResetCause::ChangedArea))
        );
        assert!(r.changed_fraction > 0.99 && !r.selected);
        // The new background is the bright frame: nothing changes afterwards.
        let r = run(&mut d, &lights_on);
        assert_eq!(
            (r.state, r.changed_fraction, r.selected),
            (FrameState::Detected, 0.0, false)
        );
        assert_eq!(r.background_samples, 1);

        // Allowed to change everything, the whole frame is one region.
        let mut d = MotionDetector::new(
            64,
            48,
            MotionConfig {
                reset_changed_fraction: 1.0,
                ..first_frame()
            },
        )
        .unwrap();
        run(&mut d, &frame(64, 48, 0, &[]));
        let r = run(&mut d, &lights_on);
        assert_eq!(r.regions, [Rect::new(0, 0, 64, 48)]);
        assert_eq!(r.crop, Some(Rect::new(0, 0, 64, 48)));
        assert_eq!(r.crop_area_fraction, 1.0);
    }

    #[test]
    fn the_interval_rebuilds_the_background() {
        let config = MotionConfig {
            reset_interval_frames: Some(5),
            ..first_frame()
        };
        let mut d = MotionDetector::new(64, 48, config).unwrap();
        run(&mut d, &frame(64, 48, 0, &[]));
        let parked = frame(64, 48, 0, &[(20, 20, 12)]);
        let resets: Vec<u64> = (1..=12)
            .filter_map(|_| {
                let r = run(&mut d, &parked);
                r.reset.map(|_| r.index)
            })
            .collect();
        assert_eq!(resets, [5, 10]);
        // The parked object went into the background at frame 5.
        assert!(!run(&mut d, &parked).selected);
    }

    #[test]
    fn stopped_objects_fold_into_the_median_and_leave_it() {
        let config = MotionConfig {
            background: Background::Median {
                frames: 5,
                skip: 1,
                history: 3,
            },
            min_region_area: 50,
            ..MotionConfig::default()
        };
        let mut d = MotionDetector::new(96, 64, config).unwrap();
        let empty = frame(96, 64, 50, &[]);
        let parked = frame(96, 64, 50, &[(30, 20, 16)]);
        for _ in 0..10 {
            run(&mut d, &empty);
        }
        let seen: Vec<bool> = (0..12).map(|_| run(&mut d, &parked).selected).collect();
        // Seen while it is new; part of the background once it is in most of the window.
        assert!(seen[0] && seen[1], "{seen:?}");
        let folded = seen.iter().position(|s| !s).expect("folds in");
        assert!(
            (3..=8).contains(&folded),
            "folded in after {folded} frames: {seen:?}"
        );
        assert!(seen[folded..].iter().all(|s| !s), "{seen:?}");
        // When it drives off, its ghost shows, then the background heals as quickly.
        let ghost: Vec<bool> = (0..12).map(|_| run(&mut d, &empty).selected).collect();
        assert!(ghost[0], "{ghost:?}");
        let healed = ghost.iter().position(|s| !s).expect("heals");
        assert!(
            (3..=8).contains(&healed),
            "healed after {healed} frames: {ghost:?}"
        );
    }

    #[test]
    fn passers_by_never_enter_the_background() {
        let config = MotionConfig {
            background: Background::Median {
                frames: 9,
                skip: 2,
                history: 3,
            },
            ..MotionConfig::default()
        };
        let mut d = MotionDetector::new(128, 64, config).unwrap();
        let empty = frame(128, 64, 70, &[]);
        run(&mut d, &empty);
        let mut expected_background = vec![0u8; 128 * 64];
        let plan = BlurPlan::new(128, 64, 21);
        blur_image(
            Level::Portable,
            &plan,
            GrayImage::new(&empty, 128, 64).unwrap(),
            &mut expected_background,
            &mut plan.scratch(),
        );
        for i in 0..60 {
            // A walker crossing the frame, one position per frame.
            let r = run(&mut d, &frame(128, 64, 70, &[((i * 2) % 112, 24, 14)]));
            assert!(r.selected, "frame {i}");
        }
        assert_eq!(d.background(), &expected_background[..]);
    }

    #[test]
    fn a_rebuild_is_spread_over_the_sampling_period() {
        let config = MotionConfig {
            background: Background::Median {
                frames: 25,
                skip: 10,
                history: 5,
            },
            ..MotionConfig::default()
        };
        let (w, h) = (200, 100);
        let mut d = MotionDetector::new(w, h, config).unwrap();
        let f = frame(w, h, 10, &[]);
        for i in 0..=10 {
            run(&mut d, &f);
            let model = d.median.as_ref().unwrap();
            if i == 10 {
                // Frame 10 is a sample: its background is under way, a tenth of the rows per frame.
                let rebuild = model.rebuild.expect("rebuilding");
                assert_eq!(rebuild.median_rows, h.div_ceil(10));
                assert_eq!(rebuild.effective_at, 20);
            }
        }
        for i in 11..20 {
            run(&mut d, &f);
            let rebuild = d.median.as_ref().unwrap().rebuild.expect("rebuilding");
            assert_eq!(
                rebuild.median_rows,
                (h.div_ceil(10) * (i - 9)).min(h),
                "frame {i}"
            );
        }
        run(&mut d, &f);
        assert!(
            d.median.as_ref().unwrap().rebuild.is_some(),
            "frame 20 is the next sample"
        );
        assert_eq!(d.report.background_samples, 2);
    }

    #[test]
    fn reduced_processing_width_maps_boxes_back() {
        let config = MotionConfig {
            processing_width: Some(320),
            min_region_area: 0,
            ..first_frame()
        };
        let mut d = MotionDetector::new(1280, 720, config).unwrap();
        assert_eq!(d.processing_size(), (320, 180));
        run(&mut d, &frame(1280, 720, 20, &[]));
        let r = run(&mut d, &frame(1280, 720, 20, &[(640, 360, 120)]));
        assert_eq!(r.regions.len(), 1);
        let b = r.regions[0];
        // At quarter size the blur reaches 10 px = 40 full-size px around the object.
        assert!(b.x < 640 && b.x > 560 && b.y < 360 && b.y > 280, "{b:?}");
        assert!(
            b.right() > 760 && b.right() < 840 && b.bottom() > 480 && b.bottom() < 560,
            "{b:?}"
        );
        assert_eq!(b.x % 4, 0, "processed pixels map to 4x4 blocks");
    }

    #[test]
    fn masks_hide_motion_in_their_area() {
        let config = MotionConfig {
            masks: vec![vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]],
            min_region_area: 0,
            ..first_frame()
        };
        let mut d = MotionDetector::new(200, 100, config).unwrap();
        run(&mut d, &frame(200, 100, 20, &[]));
        let r = run(&mut d, &frame(200, 100, 20, &[(20, 40, 20), (150, 40, 20)]));
        assert_eq!(r.regions.len(), 1);
        assert!(r.regions[0].x > 120, "{:?}", r.regions);
    }

    #[test]
    fn frames_of_the_wrong_size_are_refused_without_effect() {
        let mut d = MotionDetector::new(64, 48, first_frame()).unwrap();
        run(&mut d, &frame(64, 48, 0, &[]));
        let small = vec![0u8; 32 * 24];
        let err = d.process(GrayImage::new(&small, 32, 24).unwrap()).unwrap_err();
        assert!(matches!(err, ImageError::Size { got_width: 32, .. }), "{err}");
        assert_eq!(run(&mut d, &frame(64, 48, 0, &[])).index, 1);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = |c: MotionConfig| MotionDetector::new(64, 48, c).unwrap_err();
        // Found by fuzzing a CameraTuning's settings (`fuzz/fuzz_targets/worker_settings.rs`): a
        // processing width of 0 hung the detector's construction in the blur's border table.
        for width in [0, 1, MIN_PROCESSING_WIDTH - 1] {
            assert_eq!(
                bad(MotionConfig {
                    processing_width: Some(width),
                    ..Default::default()
                }),
                ConfigError::ProcessingWidth(width)
            );
        }
        assert!(
            MotionDetector::new(
                64,
                48,
                MotionConfig {
                    processing_width: Some(MIN_PROCESSING_WIDTH),
                    ..Default::default()
                }
            )
            .is_ok()
        );
        assert_eq!(
            bad(MotionConfig {
                blur_kernel: 4,
                ..Default::default()
            }),
            ConfigError::BlurKernel(4)
        );
        assert!(matches!(
            bad(MotionConfig {
                background: Background::Median {
                    frames: 0,
                    skip: 1,
                    history: 1
                },
                ..Default::default()
            }),
            ConfigError::Median { .. }
        ));
        assert_eq!(
            bad(MotionConfig {
                dilate_iterations: 11,
                ..Default::default()
            }),
            ConfigError::Dilate(11)
        );
        assert!(matches!(
            bad(MotionConfig {
                reset_changed_fraction: 0.0,
                ..Default::default()
            }),
            ConfigError::ResetFraction(_)
        ));
        assert!(matches!(
            bad(MotionConfig {
                crop_aspect: Some(-1.0),
                ..Default::default()
            }),
            ConfigError::Crop { .. }
        ));
        assert!(matches!(
            MotionDetector::new(0, 48, MotionConfig::default()),
            Err(ConfigError::FrameSize { .. })
        ));
    }

    #[test]
    fn crops_grow_to_the_aspect_ratio_inside_the_frame() {
        // 100x50 union, 10% margin -> 120x60, square -> 120x120, centred, shifted inside.
        assert_eq!(
            crop_for(Rect::new(10, 10, 100, 50), 640, 480, 0.1, Some(1.0)),
            Rect::new(0, 0, 120, 120)
        );
        assert_eq!(
            crop_for(Rect::new(300, 200, 100, 50), 640, 480, 0.1, Some(1.0)),
            Rect::new(290, 165, 120, 120)
        );
        // Taller than the frame allows: clipped to the frame height.
        assert_eq!(
            crop_for(Rect::new(0, 0, 600, 100), 640, 480, 0.0, Some(1.0)),
            Rect::new(0, 0, 600, 480)
        );
        // No aspect: margin only.
        assert_eq!(
            crop_for(Rect::new(100, 100, 10, 20), 640, 480, 0.5, None),
            Rect::new(95, 90, 20, 40)
        );
        // At the bottom-right corner.
        assert_eq!(
            crop_for(Rect::new(600, 440, 40, 40), 640, 480, 0.0, Some(2.0)),
            Rect::new(560, 440, 80, 40)
        );
    }
}

//! Which frames go to the teacher and which parts of them: the motion detector's regions, the
//! sampling budget, the drift samples, and the crops (one per cluster of nearby regions, so a
//! scene with people in two corners does not upload the whole frame between them).

use autotuner_vision::{FrameReport, Rect, crop_for};

/// The bandwidth budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Look at every `frame_step`-th frame only (1: every frame), as the spec's `frameSkip`.
    pub frame_step: u32,
    /// At most this many selected frames per minute of stream time (None: no limit).
    pub uploads_per_minute: Option<f64>,
    /// Every `drift_every`-th selected frame is a drift sample instead of a training sample.
    pub drift_every: Option<u32>,
    /// Grow each cluster of regions by this fraction of its size on every side.
    pub crop_margin: f32,
    /// More clusters than this: send their union as one crop instead.
    pub max_crops: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            frame_step: 1,
            uploads_per_minute: None,
            drift_every: None,
            crop_margin: 0.15,
            max_crops: 4,
        }
    }
}

/// What a selected frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Training,
    /// Labelled by the teacher to compare with the student; never trained on.
    Drift,
}

/// Why a frame was not selected (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    NoMotion,
    Budget,
}

/// Decides per frame; keeps the budget's state.
#[derive(Debug, Clone)]
pub struct Selector {
    sampling: Sampling,
    /// Token bucket in uploads, refilled by stream time.
    tokens: f64,
    last_ms: Option<i64>,
    selected: u64,
}

impl Selector {
    pub fn new(sampling: Sampling) -> Self {
        Self {
            tokens: 1.0,
            sampling,
            last_ms: None,
            selected: 0,
        }
    }

    /// Is frame `index` looked at all (before motion detection)?
    pub fn examines(&self, index: u64) -> bool {
        index.is_multiple_of(self.sampling.frame_step.max(1) as u64)
    }

    /// The verdict on an examined frame at stream time `time_ms`.
    pub fn decide(&mut self, report: &FrameReport, time_ms: i64) -> Result<Purpose, Skipped> {
        if let Some(per_minute) = self.sampling.uploads_per_minute {
            let elapsed = self.last_ms.map_or(0, |last| (time_ms - last).max(0));
            self.last_ms = Some(time_ms);
            // Burst of at most one minute's budget.
            self.tokens = (self.tokens + elapsed as f64 * per_minute / 60_000.0).min(per_minute.max(1.0));
        }
        if !report.selected {
            return Err(Skipped::NoMotion);
        }
        if self.sampling.uploads_per_minute.is_some() {
            if self.tokens < 1.0 {
                return Err(Skipped::Budget);
            }
            self.tokens -= 1.0;
        }
        self.selected += 1;
        Ok(match self.sampling.drift_every {
            Some(k) if k > 0 && self.selected.is_multiple_of(k as u64) => Purpose::Drift,
            _ => Purpose::Training,
        })
    }

    /// The crops of a selected frame: nearby regions clustered, each cluster padded. Clusters
    /// whose padded boxes touch are merged; beyond `max_crops`, the pair whose merge adds the
    /// least area is merged, until few enough remain.
    pub fn crops(&self, report: &FrameReport, width: u32, height: u32) -> Vec<Rect> {
        let margin = self.sampling.crop_margin;
        let pad = |r: &Rect| crop_for(*r, width, height, margin, None);
        // Clusters keep their unpadded union; the padding is applied when comparing and at the end.
        let mut clusters: Vec<Rect> = report.regions.clone();
        let max = self.sampling.max_crops.max(1);
        loop {
            // Few regions per frame: quadratic is fine.
            let mut best: Option<(usize, usize, i64)> = None;
            for i in 0..clusters.len() {
                for j in i + 1..clusters.len() {
                    let (a, b) = (pad(&clusters[i]), pad(&clusters[j]));
                    let cost = if a.intersection_area(&b) > 0 {
                        i64::MIN
                    } else {
                        pad(&clusters[i].union(&clusters[j])).area() as i64
                            - a.area() as i64
                            - b.area() as i64
                    };
                    if best.is_none_or(|(_, _, c)| cost < c) {
                        best = Some((i, j, cost));
                    }
                }
            }
            match best {
                Some((i, j, cost)) if cost == i64::MIN || clusters.len() > max => {
                    clusters[i] = clusters[i].union(&clusters[j]);
                    clusters.swap_remove(j);
                }
                _ => break,
            }
        }
        let mut crops: Vec<Rect> = clusters.iter().map(pad).collect();
        crops.sort_by_key(|r| (r.y, r.x));
        crops
    }
}

/// The parts of the `width` x `height` frame outside every crop, as rectangles: the teacher did
/// not look there, so training must neither reward nor punish detections in them.
pub fn outside(crops: &[Rect], width: u32, height: u32) -> Vec<Rect> {
    let mut xs: Vec<u32> = vec![0, width];
    let mut ys: Vec<u32> = vec![0, height];
    for c in crops {
        xs.extend([c.x.min(width), c.right().min(width)]);
        ys.extend([c.y.min(height), c.bottom().min(height)]);
    }
    xs.sort_unstable();
    xs.dedup();
    ys.sort_unstable();
    ys.dedup();
    let mut out: Vec<Rect> = Vec::new();
    for band in ys.windows(2) {
        let (y0, y1) = (band[0], band[1]);
        let mut run: Option<(u32, u32)> = None;
        for cell in xs.windows(2) {
            let (x0, x1) = (cell[0], cell[1]);
            let cx = (x0 + x1) / 2;
            let cy = (y0 + y1) / 2;
            let covered = crops
                .iter()
                .any(|c| cx >= c.x && cx < c.right() && cy >= c.y && cy < c.bottom());
            run = match (covered, run) {
                (false, Some((start, _))) => Some((start, x1)),
                (false, None) => Some((x0, x1)),
                (true, Some((start, end))) => {
                    out.push(Rect::from_corners(start, y0, end, y1));
                    None
                }
                (true, None) => None,
            };
        }
        if let Some((start, end)) = run {
            out.push(Rect::from_corners(start, y0, end, y1));
        }
    }
    // Join vertically stacked strips with the same span.
    let mut joined: Vec<Rect> = Vec::new();
    for r in out {
        match joined
            .iter_mut()
            .find(|j| j.x == r.x && j.width == r.width && j.bottom() == r.y)
        {
            Some(j) => j.height += r.height,
            None => joined.push(r),
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use autotuner_vision::FrameState;

    fn report(regions: Vec<Rect>) -> FrameReport {
        let union = regions.iter().copied().reduce(|a, b| a.union(&b));
        FrameReport {
            index: 0,
            state: FrameState::Detected,
            reset: None,
            changed_fraction: 0.1,
            selected: !regions.is_empty(),
            crop: union,
            union,
            regions,
            crop_area_fraction: 0.0,
            background_samples: 1,
        }
    }

    #[test]
    fn distant_regions_get_their_own_crops_and_touching_ones_merge() {
        let s = Selector::new(Sampling::default());
        let r = report(vec![
            Rect::new(10, 10, 40, 80),
            Rect::new(45, 20, 30, 60),
            Rect::new(600, 400, 40, 80),
        ]);
        let crops = s.crops(&r, 768, 576);
        assert_eq!(crops.len(), 2, "{crops:?}");
        assert!(crops[0].x <= 10 && crops[0].right() >= 75);
        assert!(crops[1].x <= 600 && crops[1].bottom() >= 480);
        let total: u64 = crops.iter().map(Rect::area).sum();
        assert!(total < 768 * 576 / 4);
    }

    #[test]
    fn the_outside_of_the_crops_tiles_the_rest_of_the_frame_exactly() {
        let crops = [Rect::new(100, 50, 200, 100), Rect::new(400, 300, 100, 200)];
        let rest = outside(&crops, 768, 576);
        let area: u64 = rest.iter().map(Rect::area).sum();
        assert_eq!(area, 768 * 576 - 200 * 100 - 100 * 200);
        for r in &rest {
            for c in &crops {
                assert_eq!(r.intersection_area(c), 0, "{r:?} overlaps {c:?}");
            }
        }
        assert!(outside(&[Rect::new(0, 0, 768, 576)], 768, 576).is_empty());
        assert_eq!(outside(&[], 768, 576), vec![Rect::new(0, 0, 768, 576)]);
    }

    #[test]
    fn the_budget_limits_uploads_per_minute_of_stream_time_and_drift_takes_every_kth() {
        let mut s = Selector::new(Sampling {
            uploads_per_minute: Some(60.0),
            drift_every: Some(3),
            ..Sampling::default()
        });
        let moving = report(vec![Rect::new(0, 0, 50, 50)]);
        // 10 frames per second for 10 s: 10 uploads allowed (one per second, plus the first).
        let mut purposes = Vec::new();
        for i in 0..100 {
            if let Ok(p) = s.decide(&moving, i * 100) {
                purposes.push(p);
            }
        }
        assert!((10..=11).contains(&purposes.len()), "{}", purposes.len());
        assert_eq!(purposes[2], Purpose::Drift);
        assert_eq!(purposes[0], Purpose::Training);
        assert_eq!(s.decide(&report(vec![]), 20_000), Err(Skipped::NoMotion));
        assert!(
            !Selector::new(Sampling {
                frame_step: 3,
                ..Sampling::default()
            })
            .examines(1)
        );
    }
}

//! Footage, ground truth and the OpenCV reference for the vision tests and benchmark.
//! `scripts/fetch-assets` prepares all of it (the test scripts run it first).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use autotuner_vision::{Background, MotionConfig, Rect};

pub const VTEST: (&str, usize, usize) = ("vtest-768x576.gray", 768, 576);

/// The assets folder `scripts/fetch-assets` fills, or a panic that says how to get it.
pub fn assets() -> PathBuf {
    let dir = autotuner_detect::assets::dir();
    assert!(
        dir.join(VTEST.0).is_file() && dir.join("python").is_file(),
        "footage missing in {}: run scripts/fetch-assets (scripts/test does)",
        dir.display()
    );
    dir
}

/// Raw gray frames `width` x `height`, back to back.
pub fn frames(name: &str, width: usize, height: usize) -> Vec<u8> {
    let bytes = std::fs::read(assets().join(name)).expect("read frames");
    assert_eq!(
        bytes.len() % (width * height),
        0,
        "{name} is not a whole number of frames"
    );
    bytes
}

/// The detector settings as the reference script's JSON.
pub fn config_json(c: &MotionConfig) -> String {
    let (background, frames, skip, history) = match c.background {
        Background::Median {
            frames,
            skip,
            history,
        } => ("median", frames, skip, history),
        Background::FirstFrame => ("firstFrame", 1, 1, 1),
    };
    serde_json::json!({
        "background": background,
        "medianFrames": frames,
        "medianFrameSkip": skip,
        "backgroundHistory": history,
        "resetIntervalFrames": c.reset_interval_frames,
        "resetChangedFraction": c.reset_changed_fraction,
        "blurKernel": c.blur_kernel,
        "threshold": c.threshold,
        "dilateIterations": c.dilate_iterations,
        "minRegionArea": c.min_region_area,
        "cropMargin": c.crop_margin,
        "cropAspect": c.crop_aspect,
    })
    .to_string()
}

/// Runs `tests/vision/reference.py` with `args`, returning its standard output.
pub fn reference(args: &[&str]) -> String {
    let script = manifest_dir().join("../../tests/vision/reference.py");
    let out = Command::new(assets().join("python"))
        .arg(script)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .output()
        .expect("run the OpenCV reference");
    assert!(
        out.status.success(),
        "reference.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// One frame's verdict from the reference.
#[derive(Debug, Clone)]
pub struct ReferenceFrame {
    pub state: String,
    pub reset: Option<String>,
    pub changed: u64,
    pub regions: Vec<Rect>,
    pub crop: Option<Rect>,
}

fn rect(v: &serde_json::Value) -> Rect {
    let n = |i: usize| v[i].as_u64().expect("number") as u32;
    Rect::new(n(0), n(1), n(2), n(3))
}

pub fn parse_reports(jsonl: &str) -> Vec<ReferenceFrame> {
    jsonl
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            ReferenceFrame {
                state: v["state"].as_str().expect("state").to_string(),
                reset: v["reset"].as_str().map(str::to_string),
                changed: v["changed"].as_u64().expect("changed"),
                regions: v["regions"]
                    .as_array()
                    .expect("regions")
                    .iter()
                    .map(rect)
                    .collect(),
                crop: (!v["crop"].is_null()).then(|| rect(&v["crop"])),
            }
        })
        .collect()
}

/// Whether every box of `a` has a box of `b` with all four edges within `tolerance` pixels, and
/// the other way round.
pub fn boxes_match(a: &[Rect], b: &[Rect], tolerance: u32) -> bool {
    let close = |p: &Rect, q: &Rect| {
        p.x.abs_diff(q.x) <= tolerance
            && p.y.abs_diff(q.y) <= tolerance
            && p.right().abs_diff(q.right()) <= tolerance
            && p.bottom().abs_diff(q.bottom()) <= tolerance
    };
    a.len() == b.len()
        && a.iter().all(|p| b.iter().any(|q| close(p, q)))
        && b.iter().all(|q| a.iter().any(|p| close(p, q)))
}

/// A MOTChallenge ground-truth box to evaluate (flag 1), clipped to the frame.
#[derive(Debug, Clone, Copy)]
pub struct TruthBox {
    /// 1-based frame number: frame N is the Nth decoded frame.
    pub frame: usize,
    pub rect: Rect,
}

pub fn ground_truth(sequence: &str, width: u32, height: u32) -> Vec<TruthBox> {
    let path = assets().join("data").join(sequence).join("gt/gt.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|line| {
            let f: Vec<f64> = line
                .split(',')
                .map(|v| v.trim().parse().expect("number"))
                .collect();
            if f[6] != 1.0 {
                return None;
            }
            let x0 = f[2].max(0.0);
            let y0 = f[3].max(0.0);
            let x1 = (f[2] + f[4]).min(width as f64);
            let y1 = (f[3] + f[5]).min(height as f64);
            (x1 > x0 && y1 > y0).then(|| TruthBox {
                frame: f[0] as usize,
                rect: Rect::from_corners(
                    x0.round() as u32,
                    y0.round() as u32,
                    x1.round() as u32,
                    y1.round() as u32,
                ),
            })
        })
        .collect()
}

/// How well the crops cover the ground-truth people of a sequence.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Coverage {
    /// Frames evaluated (after the warm-up).
    pub frames: usize,
    pub selected_frames: usize,
    /// Ground-truth boxes (flag 1) in the evaluated frames.
    pub boxes: usize,
    /// Fraction of boxes at least half inside the crop sent to the teacher.
    pub crop_coverage: f64,
    /// The same for the bare union of the regions (no margin, no aspect).
    pub union_coverage: f64,
    /// Mean crop area over frame area, over evaluated frames (0 for frames not selected).
    pub mean_crop_area_fraction: f64,
    /// Mean union area over frame area, likewise.
    pub mean_union_area_fraction: f64,
}

/// Runs the detector over raw frames and scores its crops against the ground truth from frame
/// `warmup` on (0-based; ground-truth frame numbers are 1-based).
pub fn coverage(
    frames: &[u8],
    width: usize,
    height: usize,
    truth: &[TruthBox],
    config: autotuner_vision::MotionConfig,
    warmup: usize,
) -> Coverage {
    use autotuner_vision::{GrayImage, MotionDetector};
    let mut detector = MotionDetector::new(width, height, config).expect("config");
    let frame_area = (width * height) as f64;
    let (mut frames_seen, mut selected, mut boxes, mut crop_hits, mut union_hits) = (0, 0, 0, 0, 0);
    let (mut crop_area, mut union_area) = (0.0, 0.0);
    let mut by_frame: Vec<Vec<Rect>> = Vec::new();
    for t in truth {
        if by_frame.len() < t.frame + 1 {
            by_frame.resize(t.frame + 1, Vec::new());
        }
        by_frame[t.frame].push(t.rect);
    }
    for (i, frame) in frames.chunks_exact(width * height).enumerate() {
        let report = detector
            .process(GrayImage::new(frame, width, height).unwrap())
            .unwrap();
        if i < warmup {
            continue;
        }
        frames_seen += 1;
        selected += report.selected as usize;
        let crop = report.crop.unwrap_or_default();
        let union = report.union.unwrap_or_default();
        crop_area += crop.area() as f64 / frame_area;
        union_area += union.area() as f64 / frame_area;
        for person in by_frame.get(i + 1).map(Vec::as_slice).unwrap_or(&[]) {
            boxes += 1;
            crop_hits += (2 * crop.intersection_area(person) >= person.area()) as usize;
            union_hits += (2 * union.intersection_area(person) >= person.area()) as usize;
        }
    }
    Coverage {
        frames: frames_seen,
        selected_frames: selected,
        boxes,
        crop_coverage: crop_hits as f64 / boxes.max(1) as f64,
        union_coverage: union_hits as f64 / boxes.max(1) as f64,
        mean_crop_area_fraction: crop_area / frames_seen.max(1) as f64,
        mean_union_area_fraction: union_area / frames_seen.max(1) as f64,
    }
}

/// This package's directory: from cargo at run time (`cargo run`/`test`/`bench` set it), which
/// stays right when a build directory is shared between checkouts; else where it was built.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

//! `autotuner detect`: a model over a video, a stream or a folder of images; the detections as a
//! COCO file or CSV, and optionally an MP4 with the boxes drawn.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use autotuner_detect::{DetectOptions, Detection, RgbImage, labels};
use autotuner_trainer::progress::Progress;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::footage::{Footage, RgbFrame};
use crate::footage_args::{ModelArgs, class_ids};
use crate::video_out::{Mp4Writer, draw_boxes};

#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    /// A video or a stream (a path, file://, rtsp://, http(s)://) or a folder of images (one frame
    /// each, in name order).
    #[arg(long)]
    input: String,
    #[command(flatten)]
    model: ModelArgs,
    /// Classes to keep (COCO names, comma-separated). Default: every class the model finds.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Keep detections from this score up (0.05 keeps what COCO AP integrates over; see
    /// `autotuner eval`).
    #[arg(long, default_value_t = 0.3)]
    min_score: f32,
    /// Where the detections go: `.json` a COCO file (images, annotations with scores,
    /// categories), `.csv` a row per detection.
    #[arg(long, default_value = "detections.json")]
    output: PathBuf,
    /// Also an MP4 of the footage with the boxes drawn.
    #[arg(long)]
    annotated: Option<PathBuf>,
    /// The annotated MP4's frame rate. Default: the video's (25 for a stream or images).
    #[arg(long)]
    fps: Option<f64>,
    /// Stop after this many frames of the footage.
    #[arg(long)]
    max_frames: Option<u64>,
    /// Run on every this many frames (1: all).
    #[arg(long, default_value_t = 1)]
    step: u64,
}

/// Where the detections of one frame are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Coco,
    Csv,
}

/// What `detect` did.
pub struct Detected {
    pub frames: u64,
    pub detections: usize,
    pub output: PathBuf,
    /// The annotated MP4's codec, when one was written.
    pub annotated_codec: Option<&'static str>,
}

pub fn detect(args: &DetectArgs) -> anyhow::Result<Detected> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.min_score),
        "--min-score must be in [0, 1], got {}",
        args.min_score
    );
    anyhow::ensure!(args.step >= 1, "--step must be at least 1");
    if let Some(fps) = args.fps {
        anyhow::ensure!(fps > 0.0 && fps.is_finite(), "--fps must be positive, got {fps}");
    }
    let sink = match args.output.extension().and_then(|e| e.to_str()) {
        Some("json") => Sink::Coco,
        Some("csv") => Sink::Csv,
        _ => anyhow::bail!("--output {}: name it .json (COCO) or .csv", args.output.display()),
    };
    let classes = (!args.classes.is_empty())
        .then(|| class_ids(&args.classes))
        .transpose()?;
    let footage = Footage::open(&args.input)?;
    let runtime = args.model.runtime()?;
    let mut detector = args.model.load(&runtime)?;
    let options = DetectOptions {
        min_score: args.min_score,
        classes,
        ..DetectOptions::default()
    };
    // A file's length, for the progress bar and to fail on an unreadable one before any work; a
    // stream is not probed (it may not end).
    let (total, fps) = match &footage {
        Footage::Video(url) if !autotuner_capture::source::is_file(url) => (args.max_frames, 25.0),
        _ => {
            let probe = footage.probe(args.max_frames)?;
            (Some(probe.frames()), probe.frame_rate())
        }
    };
    let fps = args.fps.unwrap_or(fps);
    let mut writer = OutputFile::create(&args.output, sink)?;
    let mut annotated: Option<Mp4Writer> = None;
    let mut progress = Progress::new();
    let (mut frames, mut detections) = (0u64, 0usize);
    let mut canvas = Vec::new();
    let end = args.max_frames.unwrap_or(u64::MAX);
    footage.for_each(
        end,
        |i| i.is_multiple_of(args.step),
        |frame| {
            let image = RgbImage::new(frame.rgb, frame.width, frame.height)?;
            let found = detector.detect(&[image], &options)?.remove(0);
            writer.frame(&frame, &found)?;
            if let Some(path) = &args.annotated {
                let mp4 = match &mut annotated {
                    Some(mp4) => mp4,
                    None => annotated.insert(Mp4Writer::create(
                        path,
                        frame.width as u32,
                        frame.height as u32,
                        fps / args.step as f64,
                    )?),
                };
                canvas.clear();
                canvas.extend_from_slice(frame.rgb);
                for d in &found {
                    let b = d.bbox;
                    draw_boxes(
                        &mut canvas,
                        frame.width,
                        frame.height,
                        [[b.x0, b.y0, b.x1, b.y1]],
                        class_colour(d.class_id),
                        2,
                    );
                }
                mp4.push(&canvas)?;
            }
            frames += 1;
            detections += found.len();
            let total = total.map_or(0, |t| t.div_ceil(args.step)) as usize;
            progress.update(
                "detect",
                frames as usize,
                total.max(frames as usize),
                &format!("{detections} detections"),
            );
            Ok(true)
        },
    )?;
    anyhow::ensure!(frames > 0, "{}: no frame was read", footage.describe());
    writer.finish()?;
    let annotated_codec = annotated
        .map(|mp4| (mp4.codec, mp4.finish()))
        .map(|(codec, done)| done.map(|_| codec))
        .transpose()?;
    Ok(Detected {
        frames,
        detections,
        output: args.output.clone(),
        annotated_codec,
    })
}

/// A colour per class, far apart for the first few COCO ids.
fn class_colour(class_id: u32) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 8] = [
        [40, 200, 60],
        [230, 60, 40],
        [40, 120, 230],
        [240, 200, 30],
        [200, 60, 220],
        [30, 210, 210],
        [250, 140, 30],
        [160, 160, 160],
    ];
    PALETTE[class_id as usize % PALETTE.len()]
}

/// The detections file, written as frames come (a CSV row by row; a COCO file at the end).
enum OutputFile {
    Coco {
        path: PathBuf,
        images: Vec<Value>,
        annotations: Vec<Value>,
        classes: std::collections::BTreeSet<u32>,
    },
    Csv {
        path: PathBuf,
        out: std::io::BufWriter<std::fs::File>,
    },
}

/// The header of the CSV `detect` writes and `eval` reads.
pub const CSV_HEADER: &str = "frame,file,class,score,x,y,width,height";

impl OutputFile {
    fn create(path: &Path, sink: Sink) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        Ok(match sink {
            Sink::Coco => Self::Coco {
                path: path.to_path_buf(),
                images: Vec::new(),
                annotations: Vec::new(),
                classes: Default::default(),
            },
            Sink::Csv => {
                let file =
                    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
                let mut out = std::io::BufWriter::new(file);
                writeln!(out, "{CSV_HEADER}")?;
                Self::Csv {
                    path: path.to_path_buf(),
                    out,
                }
            }
        })
    }

    fn frame(&mut self, frame: &RgbFrame<'_>, found: &[Detection]) -> anyhow::Result<()> {
        // Frames are numbered from 1 in what `detect` writes, as in MOTChallenge's ground truth.
        let number = frame.index + 1;
        match self {
            Self::Coco {
                images,
                annotations,
                classes,
                ..
            } => {
                images.push(json!({
                    "id": number, "frame": number, "file_name": frame.name.map_or_else(|| format!("frame_{number:06}"), String::from),
                    "width": frame.width, "height": frame.height,
                }));
                for d in found {
                    classes.insert(d.class_id);
                    let b = d.bbox;
                    annotations.push(json!({
                        "id": annotations.len() + 1, "image_id": number, "category_id": d.class_id,
                        "bbox": [b.x0, b.y0, b.width(), b.height()], "area": b.area(),
                        "score": d.score, "iscrowd": 0,
                    }));
                }
            }
            Self::Csv { out, .. } => {
                for d in found {
                    let b = d.bbox;
                    writeln!(
                        out,
                        "{number},{},{},{:.4},{:.2},{:.2},{:.2},{:.2}",
                        frame.name.unwrap_or(""),
                        labels::name(d.class_id).unwrap_or("unknown"),
                        d.score,
                        b.x0,
                        b.y0,
                        b.width(),
                        b.height()
                    )?;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Self::Coco {
                path,
                images,
                annotations,
                classes,
            } => {
                let categories: Vec<Value> = classes
                    .iter()
                    .map(|&id| json!({"id": id, "name": labels::name(id).unwrap_or("unknown")}))
                    .collect();
                let coco = json!({"images": images, "annotations": annotations, "categories": categories});
                autotuner_store::write_atomically(&path, &serde_json::to_vec(&coco)?)
                    .with_context(|| format!("write {}", path.display()))
            }
            Self::Csv { path, mut out } => out.flush().with_context(|| format!("write {}", path.display())),
        }
    }
}

/// Detections read back from a COCO file (a dataset with `images`, or a bare results list) or a
/// CSV that `detect` wrote, by 0-based frame index.
pub fn read_detections(path: &Path, first_frame_number: u64) -> anyhow::Result<Vec<(u64, Detection)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let index = |number: u64, what: &str| {
        number.checked_sub(first_frame_number).with_context(|| {
            format!(
                "{}: {what}: frame {number} is before the first frame",
                path.display()
            )
        })
    };
    let mut out = Vec::new();
    if path.extension().is_some_and(|e| e == "csv") {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        anyhow::ensure!(
            header.trim() == CSV_HEADER,
            "{}: not a detections CSV of `autotuner detect` (its header is {CSV_HEADER})",
            path.display()
        );
        for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = || format!("{}:{}: not a detection row: {line:?}", path.display(), n + 2);
            let f: Vec<&str> = line.split(',').collect();
            anyhow::ensure!(f.len() == 8, bad());
            let number: u64 = f[0].parse().with_context(bad)?;
            let class_id = labels::id(f[2])
                .with_context(|| format!("{}: class {:?} is not a COCO class", bad(), f[2]))?;
            let v: Vec<f32> = f[3..]
                .iter()
                .map(|v| v.parse())
                .collect::<Result<_, _>>()
                .with_context(bad)?;
            out.push((
                index(number, "row")?,
                detection(class_id, v[0], [v[1], v[2], v[3], v[4]]),
            ));
        }
        return Ok(out);
    }
    #[derive(Deserialize)]
    struct Result_ {
        image_id: u64,
        category_id: u32,
        bbox: [f32; 4],
        score: f32,
    }
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let (results, frame_of): (Value, std::collections::BTreeMap<u64, u64>) = match value {
        Value::Array(_) => (value, Default::default()),
        Value::Object(ref o) if o.contains_key("annotations") => {
            let frames = o
                .get("images")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    let id = i["id"].as_u64()?;
                    let frame = i["frame"].as_u64().or_else(|| {
                        i["file_name"]
                            .as_str()
                            .and_then(autotuner_detect::truth::trailing_number)
                    })?;
                    Some((id, frame))
                })
                .collect();
            (o["annotations"].clone(), frames)
        }
        _ => anyhow::bail!(
            "{}: neither a COCO results list nor a COCO file with \"annotations\"",
            path.display()
        ),
    };
    let results: Vec<Result_> = serde_json::from_value(results).with_context(|| {
        format!(
            "{}: detections need image_id, category_id, bbox and score",
            path.display()
        )
    })?;
    for r in results {
        let number = frame_of.get(&r.image_id).copied().unwrap_or(r.image_id);
        out.push((
            index(number, "detection")?,
            detection(r.category_id, r.score, r.bbox),
        ));
    }
    Ok(out)
}

fn detection(class_id: u32, score: f32, [x, y, w, h]: [f32; 4]) -> Detection {
    Detection {
        bbox: autotuner_detect::BBox::xywh(x, y, w, h),
        class_id,
        score,
    }
}

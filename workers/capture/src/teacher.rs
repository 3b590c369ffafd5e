//! Who labels the crops: the annotator over HTTP (the cluster's way), or the teacher model in
//! this process (the standalone run's way). Both see the same JPEG crops.

use std::sync::{Arc, Mutex};

use autotuner_annotator::client::{Client, ClientError, Crop};
use autotuner_detect::{DetectOptions, Detector, RgbImage, mosaic};
use image::imageops::FilterType;
use thiserror::Error;

use crate::dataset::LabelBox;

#[derive(Debug, Error)]
pub enum TeacherError {
    /// Worth retrying later: the entries stay in the spool.
    #[error("the teacher is unavailable: {0}")]
    Unavailable(String),
    /// The request itself is refused: retrying the same crops will not help.
    #[error("the teacher refused the crops: {0}")]
    Refused(String),
}

#[derive(Debug, Clone)]
pub enum Teacher {
    Http {
        client: Client,
        classes: Vec<String>,
        min_score: f32,
    },
    InProcess {
        detector: Arc<Mutex<Detector>>,
        options: DetectOptions,
        /// How much a small crop may be enlarged on the teacher's canvas (see [`mosaic`]).
        max_scale: f32,
    },
}

/// The default of `max_scale`: small crops enlarged up to twice. Measured on PETS09 at this value
/// only (bench-results/tune-default.json): 3.5 crops per frame then fit about one canvas, and the
/// tuned student scored as with crop-by-crop labels. Other values are not measured yet.
pub const DEFAULT_MAX_SCALE: f32 = 2.0;
/// Background between packed crops, in canvas pixels: enough that the teacher sees no object
/// spanning two crops.
const MOSAIC_GAP: u32 = 8;
/// YOLO's letterbox grey, for the canvas around the crops.
const MOSAIC_BACKGROUND: [u8; 3] = [114, 114, 114];

impl Teacher {
    /// Labels every crop of every frame: `frames[i]` is the crops of frame i with their offsets;
    /// the answer has, per frame, the labels in frame pixels.
    pub async fn label(&self, frames: &[Vec<Crop>], key: &str) -> Result<Vec<Vec<LabelBox>>, TeacherError> {
        match self {
            Teacher::Http {
                client,
                classes,
                min_score,
            } => {
                let crops: Vec<Crop> = frames.iter().flatten().cloned().collect();
                let answer = client
                    .annotate(&crops, classes, Some(*min_score), key)
                    .await
                    .map_err(|e| match e {
                        // Only answers about the crops themselves condemn them; an auth,
                        // routing or conflict answer (401, 403, 404, 409, ...) is the
                        // service's state, and the crops wait in the spool for it to change.
                        ClientError::Refused {
                            status: 400 | 413 | 415 | 422,
                            ..
                        } => TeacherError::Refused(e.to_string()),
                        other => TeacherError::Unavailable(other.to_string()),
                    })?;
                if answer.images.len() != crops.len() {
                    return Err(TeacherError::Unavailable(format!(
                        "{} answers for {} crops",
                        answer.images.len(),
                        crops.len()
                    )));
                }
                let mut out = Vec::with_capacity(frames.len());
                let mut images = answer.images.into_iter();
                for frame in frames {
                    let mut labels = Vec::new();
                    for image in images.by_ref().take(frame.len()) {
                        labels.extend(image.labels.into_iter().map(|l| LabelBox {
                            class: l.class,
                            bbox: l.bbox,
                            score: l.score,
                        }));
                    }
                    out.push(labels);
                }
                Ok(out)
            }
            Teacher::InProcess {
                detector,
                options,
                max_scale,
            } => {
                let (detector, options, frames) = (detector.clone(), options.clone(), frames.to_vec());
                let max_scale = *max_scale;
                tokio::task::spawn_blocking(move || label_locally(&detector, &options, max_scale, &frames))
                    .await
                    .map_err(|e| TeacherError::Unavailable(e.to_string()))?
            }
        }
    }
}

/// A crop of the batch, decoded: the frame it is of and where it was in that frame.
struct DecodedCrop {
    frame: usize,
    offset: [f32; 2],
    rgb: image::RgbImage,
}

/// The teacher in this process, on every crop of a batch of frames. With a fixed-input model
/// (YOLO) the crops are packed into canvases of its input size (`mosaic`): one call per canvas
/// instead of one per crop. A model without one sees each crop alone.
fn label_locally(
    detector: &Mutex<Detector>,
    options: &DetectOptions,
    max_scale: f32,
    frames: &[Vec<Crop>],
) -> Result<Vec<Vec<LabelBox>>, TeacherError> {
    let mut crops = Vec::new();
    for (frame, list) in frames.iter().enumerate() {
        for crop in list {
            let rgb = image::load_from_memory(&crop.image)
                .map_err(|e| TeacherError::Refused(format!("undecodable crop: {e}")))?
                .into_rgb8();
            crops.push(DecodedCrop {
                frame,
                offset: crop.offset.map(|v| v as f32),
                rgb,
            });
        }
    }
    let mut detector = detector.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = vec![Vec::new(); frames.len()];
    let mut keep = |crop: &DecodedCrop, d: &autotuner_detect::Detection, b: autotuner_detect::BBox| {
        let [dx, dy] = crop.offset;
        out[crop.frame].push(LabelBox {
            class: autotuner_detect::labels::name(d.class_id)
                .unwrap_or("?")
                .to_string(),
            bbox: [b.x0 + dx, b.y0 + dy, b.x1 + dx, b.y1 + dy],
            score: d.score,
        });
    };
    let Some((width, height)) = detector.input_size() else {
        for crop in &crops {
            for d in detect_one(&mut detector, &crop.rgb, options)? {
                keep(crop, &d, d.bbox);
            }
        }
        return Ok(out);
    };
    let sizes: Vec<(u32, u32)> = crops.iter().map(|c| c.rgb.dimensions()).collect();
    let canvas_size = (width as u32, height as u32);
    let placed = mosaic::pack(&sizes, canvas_size, max_scale, MOSAIC_GAP);
    for canvas_index in 0..mosaic::canvases(&placed) {
        let mut canvas =
            image::RgbImage::from_pixel(canvas_size.0, canvas_size.1, image::Rgb(MOSAIC_BACKGROUND));
        for (crop, p) in crops
            .iter()
            .zip(&placed)
            .filter(|(_, p)| p.canvas == canvas_index)
        {
            let (x, y) = (i64::from(p.x), i64::from(p.y));
            if (p.width, p.height) == crop.rgb.dimensions() {
                image::imageops::replace(&mut canvas, &crop.rgb, x, y);
            } else {
                let scaled = image::imageops::resize(&crop.rgb, p.width, p.height, FilterType::Triangle);
                image::imageops::replace(&mut canvas, &scaled, x, y);
            }
        }
        for d in detect_one(&mut detector, &canvas, options)? {
            if let Some(owner) = mosaic::owner(&placed, canvas_index, &d.bbox) {
                keep(&crops[owner], &d, placed[owner].to_crop(&d.bbox));
            }
        }
    }
    Ok(out)
}

fn detect_one(
    detector: &mut Detector,
    rgb: &image::RgbImage,
    options: &DetectOptions,
) -> Result<Vec<autotuner_detect::Detection>, TeacherError> {
    let (w, h) = rgb.dimensions();
    let image = RgbImage::new(rgb.as_raw(), w as usize, h as usize)
        .map_err(|e| TeacherError::Refused(e.to_string()))?;
    let mut found = detector
        .detect(&[image], options)
        .map_err(|e| TeacherError::Unavailable(e.to_string()))?;
    Ok(found.pop().unwrap_or_default())
}

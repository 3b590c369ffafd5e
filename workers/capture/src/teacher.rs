//! Who labels the crops: the annotator over HTTP (the cluster's way), or the teacher model in
//! this process (the standalone run's way). Both see the same JPEG crops.

use std::sync::{Arc, Mutex};

use autotuner_annotator::client::{Client, ClientError, Crop};
use autotuner_detect::{DetectOptions, Detector, RgbImage};
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
    },
}

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
            Teacher::InProcess { detector, options } => {
                let (detector, options, frames) = (detector.clone(), options.clone(), frames.to_vec());
                tokio::task::spawn_blocking(move || label_locally(&detector, &options, &frames))
                    .await
                    .map_err(|e| TeacherError::Unavailable(e.to_string()))?
            }
        }
    }
}

fn label_locally(
    detector: &Mutex<Detector>,
    options: &DetectOptions,
    frames: &[Vec<Crop>],
) -> Result<Vec<Vec<LabelBox>>, TeacherError> {
    let mut detector = detector.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::with_capacity(frames.len());
    for frame in frames {
        let mut labels = Vec::new();
        for crop in frame {
            let rgb = image::load_from_memory(&crop.image)
                .map_err(|e| TeacherError::Refused(format!("undecodable crop: {e}")))?
                .into_rgb8();
            let (w, h) = rgb.dimensions();
            let image = RgbImage::new(rgb.as_raw(), w as usize, h as usize)
                .map_err(|e| TeacherError::Refused(e.to_string()))?;
            let found = detector
                .detect(&[image], options)
                .map_err(|e| TeacherError::Unavailable(e.to_string()))?;
            let [dx, dy] = crop.offset.map(|v| v as f32);
            for d in found.into_iter().flatten() {
                labels.push(LabelBox {
                    class: autotuner_detect::labels::name(d.class_id)
                        .unwrap_or("?")
                        .to_string(),
                    bbox: [d.bbox.x0 + dx, d.bbox.y0 + dy, d.bbox.x1 + dx, d.bbox.y1 + dy],
                    score: d.score,
                });
            }
        }
        out.push(labels);
    }
    Ok(out)
}

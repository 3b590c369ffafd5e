//! The drift check: is the student the node serves still as good as when it was promoted?
//!
//! Drift samples are frames the teacher labelled that are never trained on (every k-th selected
//! frame, stored under `drift/`). Every `drift.checkInterval`, over the latest `drift.sampleSize`
//! of them, the served model's AP@0.5 against the teacher's labels is divided by the AP@0.5 the
//! same model reached on the eval split when it was promoted: 1.0 means "as good as when
//! deployed". The parts of a frame the teacher did not see (outside the crops) are ignore regions,
//! as in training. During a new model's probation the previous model is scored on the same
//! samples, so the operator can roll back on a like-for-like comparison.
//!
//! No Kubernetes here: [`crate::cluster`] schedules the checks and reports them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use autotuner_detect::eval::{self, GroundTruth, ImageDetection};
use autotuner_detect::{BBox, DetectOptions, Detector, Family, LoadOptions, RgbImage, Runtime, Threads};

use crate::dataset::Split;

/// When and on what the checks run (from `spec.drift` and `spec.rollout`).
#[derive(Debug, Clone, PartialEq)]
pub struct DriftSettings {
    pub interval: Duration,
    pub sample_size: usize,
    /// Checks of a newly promoted model that also score the previous one.
    pub probation_checks: u32,
}

/// The labelled drift samples of one check, decoded.
#[derive(Debug, Default)]
pub struct Samples {
    images: Vec<(u64, Vec<u8>, usize, usize)>,
    truth: Vec<GroundTruth>,
    classes: Vec<u32>,
}

impl Samples {
    /// The latest `count` drift samples of the dataset at `root` (in the order they were stored:
    /// stream times restart with every file and camera reconnection).
    pub fn latest(root: &Path, count: usize) -> Result<Self, String> {
        Self::stored_before(root, usize::MAX, count)
    }

    /// The `count` drift samples stored before the `end`-th one (0-based): the samples the
    /// check of that moment saw (tests replay a stream's checks from one dataset).
    pub fn stored_before(root: &Path, end: usize, count: usize) -> Result<Self, String> {
        let file = root.join(Split::Drift.dir()).join("annotations.json");
        let Some(coco) = autotuner_store::journal::read(&file).map_err(|e| e.to_string())? else {
            return Ok(Self::default());
        };
        let list = |key: &str| coco[key].as_array().cloned().unwrap_or_default();
        let mut images = list("images");
        images.sort_by_key(|i| i["id"].as_u64().unwrap_or(0));
        images.truncate(end);
        let latest = &images[images.len().saturating_sub(count)..];
        let mut samples = Self {
            classes: list("categories")
                .iter()
                .filter_map(|c| c["id"].as_u64().map(|id| id as u32))
                .collect(),
            ..Self::default()
        };
        for image in latest {
            let (Some(id), Some(name)) = (image["id"].as_u64(), image["file_name"].as_str()) else {
                continue;
            };
            let path = root.join(Split::Drift.dir()).join(name);
            let decoded = match image::open(&path) {
                Ok(decoded) => decoded.to_rgb8(),
                // A sample whose image is missing (a working copy of a remote dataset after a
                // restart) is left out rather than scored as a miss.
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "drift sample left out");
                    continue;
                }
            };
            let (width, height) = (decoded.width() as usize, decoded.height() as usize);
            samples.images.push((id, decoded.into_raw(), width, height));
        }
        let kept: std::collections::HashSet<u64> = samples.images.iter().map(|i| i.0).collect();
        for a in list("annotations") {
            let (Some(image_id), Some(class_id)) = (a["image_id"].as_u64(), a["category_id"].as_u64()) else {
                continue;
            };
            let b: Vec<f32> = a["bbox"]
                .as_array()
                .map(|b| b.iter().filter_map(|v| v.as_f64()).map(|v| v as f32).collect())
                .unwrap_or_default();
            if !kept.contains(&image_id) || b.len() != 4 {
                continue;
            }
            let crowd = a["iscrowd"].as_u64() == Some(1);
            let bbox = BBox {
                x0: b[0],
                y0: b[1],
                x1: b[0] + b[2],
                y1: b[1] + b[3],
            };
            // An ignore region counts for every class, as in the trainer's evaluation.
            let classes = if crowd {
                samples.classes.clone()
            } else {
                vec![class_id as u32]
            };
            for class_id in classes {
                samples.truth.push(GroundTruth {
                    image_id,
                    class_id,
                    bbox,
                    crowd,
                });
            }
        }
        Ok(samples)
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Whether the teacher labelled any object in them (AP is undefined otherwise).
    pub fn has_objects(&self) -> bool {
        self.truth.iter().any(|t| !t.crowd)
    }

    /// `model`'s AP@0.5 against the teacher's labels; `None` when there is nothing to score.
    pub fn ap50(&self, detector: &mut Detector) -> Result<Option<f64>, String> {
        let options = DetectOptions::for_evaluation(&self.classes);
        let mut detections = Vec::new();
        for (id, rgb, width, height) in &self.images {
            let image = RgbImage::new(rgb, *width, *height).map_err(|e| e.to_string())?;
            let found = detector
                .detect(&[image], &options)
                .map_err(|e| e.to_string())?
                .remove(0);
            detections.extend(found.into_iter().map(|detection| ImageDetection {
                image_id: *id,
                detection,
            }));
        }
        let ids: Vec<u64> = self.images.iter().map(|i| i.0).collect();
        Ok(eval::evaluate(&ids, &self.classes, &self.truth, &detections).ap50)
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub model_version: u32,
    pub samples: usize,
    pub ap50: f64,
    /// `ap50` over the model's AP@0.5 at promotion.
    pub relative_accuracy: f64,
    pub previous_ap50: Option<f64>,
}

/// Why a check produced no figure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Skipped {
    #[error("no labelled drift sample with an object yet")]
    NoSamples,
    #[error("the served model has no AP@0.5 from its promotion to compare with")]
    NoReference,
    #[error("{0}")]
    Failed(String),
}

impl Skipped {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NoSamples => "no_samples",
            Self::NoReference => "no_reference",
            Self::Failed(_) => "failed",
        }
    }
}

/// A model to score: its version, local file and AP@0.5 at promotion.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub version: u32,
    pub path: PathBuf,
    pub reference_ap50: Option<f64>,
}

/// Runs checks with one ONNX Runtime and remembers the probation count of the current model.
#[derive(Debug)]
pub struct DriftChecker {
    pub settings: DriftSettings,
    runtime: Runtime,
    family: Family,
    dataset: PathBuf,
    /// (model version, checks of it so far).
    probation: Mutex<(u32, u32)>,
}

impl DriftChecker {
    pub fn new(settings: DriftSettings, runtime: Runtime, family: Family, dataset: PathBuf) -> Self {
        Self {
            settings,
            runtime,
            family,
            dataset,
            probation: Mutex::new((u32::MAX, 0)),
        }
    }

    /// Whether the next check of model `version` also scores the previous model.
    pub fn on_probation(&self, version: u32) -> bool {
        let p = self.probation.lock().unwrap_or_else(|e| e.into_inner());
        p.0 != version || p.1 < self.settings.probation_checks
    }

    /// One check of `current` (and of `previous` while `current` is on probation) on the latest
    /// samples. Blocking: it decodes the samples and runs the models on them.
    pub fn check(&self, current: &Scored, previous: Option<&Scored>) -> Result<Checked, Skipped> {
        let samples = Samples::latest(&self.dataset, self.settings.sample_size).map_err(Skipped::Failed)?;
        self.check_on(&samples, current, previous)
    }

    /// One check on given samples.
    pub fn check_on(
        &self,
        samples: &Samples,
        current: &Scored,
        previous: Option<&Scored>,
    ) -> Result<Checked, Skipped> {
        let reference = current
            .reference_ap50
            .filter(|r| *r > 0.0)
            .ok_or(Skipped::NoReference)?;
        if !samples.has_objects() {
            return Err(Skipped::NoSamples);
        }
        let ap50 = self.score(&current.path, samples)?.ok_or(Skipped::NoSamples)?;
        let on_probation = {
            let mut p = self.probation.lock().unwrap_or_else(|e| e.into_inner());
            if p.0 != current.version {
                *p = (current.version, 0);
            }
            p.1 += 1;
            p.1 <= self.settings.probation_checks
        };
        let previous_ap50 = match previous.filter(|_| on_probation) {
            Some(previous) => self.score(&previous.path, samples)?,
            None => None,
        };
        Ok(Checked {
            model_version: current.version,
            samples: samples.len(),
            ap50,
            relative_accuracy: ap50 / reference,
            previous_ap50,
        })
    }

    fn score(&self, model: &Path, samples: &Samples) -> Result<Option<f64>, Skipped> {
        let options = LoadOptions {
            device: autotuner_detect::DevicePreference::Cpu,
            // One thread: the check must not take the cores the live inference needs.
            threads: Threads {
                intra_op: 1,
                spinning: false,
            },
            classes: Some(samples.classes.clone()),
        };
        let started = Instant::now();
        let mut detector = Detector::load_for(&self.runtime, model, self.family, &options)
            .map_err(|e| Skipped::Failed(format!("load {}: {e}", model.display())))?;
        let ap50 = samples.ap50(&mut detector).map_err(Skipped::Failed)?;
        tracing::debug!(model = %model.display(), seconds = started.elapsed().as_secs_f64(), ?ap50, "drift samples scored");
        Ok(ap50)
    }
}

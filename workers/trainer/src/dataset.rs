//! The annotated dataset: COCO JSON (images, annotations, categories) with the image files next to
//! it. Categories are mapped onto the pretrained student's COCO classes by name; crowd
//! annotations (`iscrowd: 1`) are ignore regions. Individual bad samples are skipped and counted;
//! a dataset with nothing usable, or with classes the student has no output for, is an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use autotuner_detect::BBox;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("cannot read the dataset {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "the dataset {path} has classes the student has no output for: {names:?}. The student's head keeps its \
         pretrained COCO classes (so the exported model has the same outputs); map these to COCO names, or pass \
         --skip-unknown-classes to drop their boxes"
    )]
    UnknownClasses { path: PathBuf, names: Vec<String> },
    #[error("the dataset {path} has no usable image ({skipped})")]
    Empty { path: PathBuf, skipped: String },
    #[error("the dataset {path} is mostly broken: {bad} of {total} images unusable ({skipped})")]
    MostlyBroken {
        path: PathBuf,
        bad: usize,
        total: usize,
        skipped: String,
    },
}

#[derive(Debug, Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Debug, Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
    /// When the capture worker decoded the frame (ms since the epoch, its node's clock).
    #[serde(default)]
    decoded_at_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: u8,
    /// The teacher's confidence, on labels the capture worker wrote.
    #[serde(default)]
    score: Option<f32>,
}

#[derive(Debug, Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// A labelled object, in the image's pixels, with its class as the student's COCO id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label {
    pub bbox: BBox,
    pub class_id: u32,
}

/// One usable image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: u64,
    pub file: PathBuf,
    pub width: u32,
    pub height: u32,
    /// When the frame was decoded, where the capture worker recorded it.
    pub decoded_at_ms: Option<u64>,
    pub labels: Vec<Label>,
    /// Regions where anything found counts for nothing (crowds, MOT ignore regions).
    pub ignore: Vec<BBox>,
}

/// What was skipped while loading, by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub missing_images: usize,
    pub unreadable_sizes: usize,
    pub boxes_outside_image: usize,
    pub boxes_clipped: usize,
    pub degenerate_boxes: usize,
    pub unknown_image_ids: usize,
    pub unknown_class_boxes: usize,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} missing images, {} images of the wrong size, {} boxes outside their image, {} degenerate boxes, \
             {} boxes of unknown images, {} boxes of unknown classes",
            self.missing_images,
            self.unreadable_sizes,
            self.boxes_outside_image,
            self.degenerate_boxes,
            self.unknown_image_ids,
            self.unknown_class_boxes
        )
    }
}

/// A loaded dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub samples: Vec<Sample>,
    /// The COCO ids of the classes it labels, sorted.
    pub classes: Vec<u32>,
    pub skipped: Skipped,
}

impl Dataset {
    pub fn boxes(&self) -> usize {
        self.samples.iter().map(|s| s.labels.len()).sum()
    }

    /// Keeps only the samples of frames decoded at or after `since_ms` (a round of collection's
    /// own), unless there are none: then everything stays and this returns false.
    pub fn keep_decoded_since(&mut self, since_ms: u64) -> bool {
        let recent = |s: &Sample| s.decoded_at_ms.is_some_and(|t| t >= since_ms);
        if !self.samples.iter().any(recent) {
            return false;
        }
        self.samples.retain(recent);
        true
    }
}

/// How strict loading is.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Drop boxes of classes the student does not know instead of failing.
    pub skip_unknown_classes: bool,
    /// Fail when more than this fraction of the images is unusable.
    pub max_bad_fraction: f64,
    /// Labels the teacher scored below this are ignore regions, neither objects nor
    /// background: its uncertain band (small, partly hidden or ambiguous objects), which taught
    /// as background would train the student to miss them. Labels without a score are objects.
    pub object_min_score: Option<f32>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            skip_unknown_classes: false,
            max_bad_fraction: 0.5,
            object_min_score: None,
        }
    }
}

/// Boxes smaller than this (pixels, either side) after clipping teach nothing.
const MIN_SIDE: f32 = 2.0;

/// Loads the COCO JSON at `path`; image files are relative to its folder. Checks that every
/// image exists and has the size the JSON says (from its header, without decoding it).
pub fn load(path: &Path, options: LoadOptions) -> Result<Dataset, DatasetError> {
    let read = |message: String| DatasetError::Read {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
    let coco: CocoFile = serde_json::from_str(&text).map_err(|e| read(e.to_string()))?;
    let root = path.parent().unwrap_or(Path::new("."));

    let mut class_of: HashMap<u64, Option<u32>> = HashMap::new();
    for c in &coco.categories {
        class_of.insert(c.id, autotuner_detect::labels::id(&c.name));
    }
    let used_unknown: Vec<String> = coco
        .categories
        .iter()
        .filter(|c| class_of[&c.id].is_none())
        .filter(|c| coco.annotations.iter().any(|a| a.category_id == c.id))
        .map(|c| c.name.clone())
        .collect();
    if !used_unknown.is_empty() && !options.skip_unknown_classes {
        return Err(DatasetError::UnknownClasses {
            path: path.to_path_buf(),
            names: used_unknown,
        });
    }

    let mut skipped = Skipped::default();
    let mut samples: Vec<Sample> = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    for image in &coco.images {
        let file = root.join(&image.file_name);
        match image::image_dimensions(&file) {
            Err(_) => skipped.missing_images += 1,
            Ok((w, h)) if (w, h) != (image.width, image.height) => skipped.unreadable_sizes += 1,
            Ok(_) => {
                index.insert(image.id, samples.len());
                samples.push(Sample {
                    id: image.id,
                    file,
                    width: image.width,
                    height: image.height,
                    decoded_at_ms: image.decoded_at_ms,
                    labels: Vec::new(),
                    ignore: Vec::new(),
                });
            }
        }
    }
    let total = coco.images.len();
    let bad = total - samples.len();

    for a in &coco.annotations {
        let known_image = coco.images.iter().any(|i| i.id == a.image_id);
        let Some(&s) = index.get(&a.image_id) else {
            if !known_image {
                skipped.unknown_image_ids += 1;
            }
            continue;
        };
        let sample = &mut samples[s];
        let (w, h) = (sample.width as f32, sample.height as f32);
        let [x, y, bw, bh] = a.bbox.map(|v| v as f32);
        if !(x.is_finite() && y.is_finite() && bw.is_finite() && bh.is_finite()) || bw <= 0.0 || bh <= 0.0 {
            skipped.degenerate_boxes += 1;
            continue;
        }
        let raw = BBox::xywh(x, y, bw, bh);
        let clipped = raw.clip(w, h);
        if clipped.width() < MIN_SIDE || clipped.height() < MIN_SIDE {
            skipped.boxes_outside_image += 1;
            continue;
        }
        if clipped != raw {
            skipped.boxes_clipped += 1;
        }
        let uncertain = a
            .score
            .zip(options.object_min_score)
            .is_some_and(|(score, min)| score < min);
        if a.iscrowd != 0 || uncertain {
            sample.ignore.push(clipped);
            continue;
        }
        match class_of.get(&a.category_id).copied().flatten() {
            Some(class_id) => sample.labels.push(Label {
                bbox: clipped,
                class_id,
            }),
            None => skipped.unknown_class_boxes += 1,
        }
    }

    if samples.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
            skipped: skipped.to_string(),
        });
    }
    if total > 0 && bad as f64 / total as f64 > options.max_bad_fraction {
        return Err(DatasetError::MostlyBroken {
            path: path.to_path_buf(),
            bad,
            total,
            skipped: skipped.to_string(),
        });
    }
    let mut classes: Vec<u32> = samples
        .iter()
        .flat_map(|s| s.labels.iter().map(|l| l.class_id))
        .collect();
    classes.sort_unstable();
    classes.dedup();
    Ok(Dataset {
        samples,
        classes,
        skipped,
    })
}

/// Decodes a sample's image to RGB.
pub fn read_rgb(sample: &Sample) -> Result<Vec<u8>, String> {
    let image = image::open(&sample.file).map_err(|e| format!("{}: {e}", sample.file.display()))?;
    let rgb = image.into_rgb8();
    if rgb.dimensions() != (sample.width, sample.height) {
        return Err(format!("{}: size changed", sample.file.display()));
    }
    Ok(rgb.into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_in_the_teachers_uncertain_band_are_ignore_regions() {
        let dir = tempfile::tempdir().unwrap();
        image::RgbImage::new(64, 48)
            .save(dir.path().join("frame.png"))
            .unwrap();
        let coco = serde_json::json!({
            "images": [{"id": 1, "file_name": "frame.png", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [
                {"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 20], "score": 0.9},
                {"image_id": 1, "category_id": 1, "bbox": [20, 1, 10, 20], "score": 0.3},
                {"image_id": 1, "category_id": 1, "bbox": [40, 1, 10, 20]},
            ],
        });
        let path = dir.path().join("annotations.json");
        std::fs::write(&path, coco.to_string()).unwrap();
        let load = |object_min_score| {
            let dataset = super::load(
                &path,
                LoadOptions {
                    object_min_score,
                    ..LoadOptions::default()
                },
            )
            .unwrap();
            let sample = &dataset.samples[0];
            (sample.labels.len(), sample.ignore.len())
        };
        assert_eq!(load(None), (3, 0), "without a threshold every label is an object");
        assert_eq!(
            load(Some(0.5)),
            (2, 1),
            "the 0.3 label is ignored; the unscored one stays an object"
        );
    }

    #[test]
    fn a_rounds_eval_images_are_those_decoded_since_it_began_or_all_when_it_has_none() {
        let dir = tempfile::tempdir().unwrap();
        image::RgbImage::new(8, 8).save(dir.path().join("f.png")).unwrap();
        let coco = serde_json::json!({
            "images": [
                {"id": 1, "file_name": "f.png", "width": 8, "height": 8},
                {"id": 2, "file_name": "f.png", "width": 8, "height": 8, "decoded_at_ms": 1_000},
                {"id": 3, "file_name": "f.png", "width": 8, "height": 8, "decoded_at_ms": 5_000},
                {"id": 4, "file_name": "f.png", "width": 8, "height": 8, "decoded_at_ms": 6_000},
            ],
            "categories": [{"id": 1, "name": "person"}],
        });
        let path = dir.path().join("annotations.json");
        std::fs::write(&path, coco.to_string()).unwrap();
        let loaded = super::load(&path, LoadOptions::default()).unwrap();
        let ids = |d: &Dataset| d.samples.iter().map(|s| s.id).collect::<Vec<_>>();
        let mut round = loaded.clone();
        assert!(round.keep_decoded_since(5_000));
        assert_eq!(ids(&round), [3, 4]);
        let mut later = loaded.clone();
        assert!(!later.keep_decoded_since(9_000));
        assert_eq!(ids(&later), [1, 2, 3, 4], "no image of the round: judged on all");
    }
}

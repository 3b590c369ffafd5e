//! Ground truth of a video in the formats people have it in: COCO JSON, MOTChallenge `gt.txt`
//! (MOT15, every box a person; MOT16 and later, with a class column) and YOLO text (one file per
//! frame, named by frame, with a class-names file). Every format is read into one shape: boxes in
//! pixels of the video's frames, by 0-based frame index, with COCO class ids and ignore regions.
//!
//! Bad input fails with a message that says what to fix: a file that is not of the format, class
//! names that are not COCO classes (map them with a class map), boxes or image sizes that do not
//! fit the video's frames, frames past the video's end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::eval::GroundTruth;
use crate::geometry::BBox;
use crate::labels;

/// How the ground truth is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TruthFormat {
    /// A COCO dataset file: `images` (each with a `frame` number or a file name ending in one),
    /// `annotations` (`bbox` in pixels, `iscrowd` 1 for an ignore region), `categories` (names).
    Coco,
    /// MOTChallenge `gt.txt`: frame, id, left, top, width, height, flag (0: ignore region), and in
    /// MOT16 and later a class column (1 pedestrian, 3 car, 4 bicycle, 5 motorbike; 2, 7, 8, 12
    /// and 13, people who are not to be detected as pedestrians, are ignore regions). MOT15 has
    /// world coordinates instead of a class: every box is a person.
    Mot,
    /// A folder of YOLO text files, one per frame, named by frame number (`000001.txt`,
    /// `frame_000001.txt`): `class cx cy w h` relative to the frame; the class names from
    /// `classes.txt`, `obj.names` or `data.yaml` in the folder or the one above.
    Yolo,
}

impl TruthFormat {
    /// The format a path's shape suggests: a folder is YOLO, `.json` is COCO, anything else MOT.
    pub fn guess(path: &Path) -> Self {
        if path.is_dir() {
            Self::Yolo
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            Self::Coco
        } else {
            Self::Mot
        }
    }
}

impl std::str::FromStr for TruthFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "coco" => Ok(Self::Coco),
            "mot" | "motchallenge" => Ok(Self::Mot),
            "yolo" => Ok(Self::Yolo),
            other => Err(format!(
                "ground-truth format {other:?}: expected coco, mot or yolo"
            )),
        }
    }
}

/// What the reader needs to know besides the file.
#[derive(Debug, Clone)]
pub struct TruthOptions {
    /// `None`: guessed from the path ([`TruthFormat::guess`]).
    pub format: Option<TruthFormat>,
    /// The number the ground truth gives the video's first frame: 1 in MOTChallenge and in
    /// FFmpeg's `%06d` image names, 0 in CVAT's exports.
    pub first_frame_number: u64,
    /// The ground truth's class names mapped to COCO names (`pedestrian=person`), or to `-` to
    /// leave a class out. Names that are already COCO names need no entry.
    pub class_map: Vec<(String, String)>,
    /// Width and height of the video's frames: YOLO boxes are relative to them, and every format
    /// is checked against them.
    pub frame_size: (u32, u32),
    /// The number of frames of the video, when known: ground truth past it is refused.
    pub frame_count: Option<u64>,
}

impl TruthOptions {
    pub fn new(frame_size: (u32, u32)) -> Self {
        Self {
            format: None,
            first_frame_number: 1,
            class_map: Vec::new(),
            frame_size,
            frame_count: None,
        }
    }
}

/// Parses `name=coco-name` (a class-map entry).
pub fn parse_class_mapping(s: &str) -> Result<(String, String), String> {
    let (from, to) = s
        .split_once('=')
        .ok_or_else(|| format!("class mapping {s:?}: expected NAME=COCO_NAME (or NAME=- to leave it out)"))?;
    Ok((from.trim().to_string(), to.trim().to_string()))
}

/// One ground-truth box in the video's pixels, clipped to the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TruthBox {
    /// COCO category id.
    pub class_id: u32,
    pub bbox: BBox,
    /// A region detections are not scored in (counts neither as a miss nor as a false positive).
    pub ignore: bool,
}

#[derive(Debug, Error)]
pub enum TruthError {
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{path}: class {names} is not a COCO class the student knows: map it with --class-map NAME=COCO_NAME (e.g. pedestrian=person), or NAME=- to leave it out"
    )]
    UnknownClasses { path: PathBuf, names: String },
    #[error("{path}: {message}: is the ground truth for another video, or another resolution?")]
    DoesNotFit { path: PathBuf, message: String },
}

/// Ground truth by 0-based frame index.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    frames: BTreeMap<u64, Vec<TruthBox>>,
    /// The frames the ground truth covers, when it lists them (COCO's images, YOLO's files);
    /// `None`: every frame (MOTChallenge, where a frame without a line has no object).
    listed: Option<std::collections::BTreeSet<u64>>,
}

impl Truth {
    /// Reads `path` (a file, or a folder for YOLO) as `options` say.
    pub fn read(path: &Path, options: &TruthOptions) -> Result<Self, TruthError> {
        let format = options.format.unwrap_or_else(|| TruthFormat::guess(path));
        let reader = Reader { path, options };
        let mut truth = match format {
            TruthFormat::Coco => reader.coco()?,
            TruthFormat::Mot => reader.mot()?,
            TruthFormat::Yolo => reader.yolo()?,
        };
        reader.check(&truth)?;
        let (width, height) = (options.frame_size.0 as f32, options.frame_size.1 as f32);
        for boxes in truth.frames.values_mut() {
            for b in boxes.iter_mut() {
                b.bbox = b.bbox.clip(width, height);
            }
            boxes.retain(|b| b.bbox.area() > 0.0);
        }
        Ok(truth)
    }

    /// The boxes of frame `index` (0-based).
    pub fn frame(&self, index: u64) -> &[TruthBox] {
        self.frames.get(&index).map_or(&[], Vec::as_slice)
    }

    /// Whether frame `index` was annotated: detections on a frame the ground truth does not
    /// cover are not false positives, so such frames are not scored.
    pub fn covers(&self, index: u64) -> bool {
        self.listed.as_ref().is_none_or(|listed| listed.contains(&index))
    }

    /// Boxes per COCO class id, ignore regions left out.
    pub fn class_counts(&self) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for b in self.frames.values().flatten().filter(|b| !b.ignore) {
            *counts.entry(b.class_id).or_insert(0) += 1;
        }
        counts
    }

    /// The boxes of frame `index` of `classes` as the evaluation takes them, with image id
    /// `index + 1`. Ignore regions count for every class.
    pub fn ground_truth(&self, index: u64, classes: &[u32]) -> Vec<GroundTruth> {
        let mut out = Vec::new();
        for b in self.frame(index) {
            if b.ignore {
                // An ignore region of one class also hides the detections of the others there:
                // a person on a bicycle is a person and a bicycle.
                out.extend(classes.iter().map(|&class_id| GroundTruth {
                    image_id: index + 1,
                    class_id,
                    bbox: b.bbox,
                    crowd: true,
                }));
            } else if classes.contains(&b.class_id) {
                out.push(GroundTruth {
                    image_id: index + 1,
                    class_id: b.class_id,
                    bbox: b.bbox,
                    crowd: false,
                });
            }
        }
        out
    }
}

struct Reader<'a> {
    path: &'a Path,
    options: &'a TruthOptions,
}

/// A class as the ground truth names it: kept as a COCO id, or left out.
enum Class {
    Coco(u32),
    Ignore,
    LeftOut,
}

impl Reader<'_> {
    fn invalid(&self, message: impl Into<String>) -> TruthError {
        TruthError::Invalid {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn read_text(&self, path: &Path) -> Result<String, TruthError> {
        std::fs::read_to_string(path).map_err(|source| TruthError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The 0-based index of the frame the ground truth numbers `number`.
    fn index(&self, number: u64, what: &str) -> Result<u64, TruthError> {
        number
            .checked_sub(self.options.first_frame_number)
            .ok_or_else(|| {
                self.invalid(format!(
                "{what}: frame {number} comes before the first frame, numbered {} (see --first-frame-number)",
                self.options.first_frame_number
            ))
            })
    }

    /// Resolves class names through the class map to COCO ids; every unknown name is reported.
    fn classes(&self, names: &[String]) -> Result<Vec<Class>, TruthError> {
        let mut unknown = Vec::new();
        let classes = names
            .iter()
            .map(|name| {
                let mapped = self
                    .options
                    .class_map
                    .iter()
                    .find(|(from, _)| from.eq_ignore_ascii_case(name))
                    .map_or(name.as_str(), |(_, to)| to.as_str());
                if mapped == "-" {
                    return Class::LeftOut;
                }
                labels::id(mapped).map(Class::Coco).unwrap_or_else(|| {
                    unknown.push(format!("{name:?}"));
                    Class::LeftOut
                })
            })
            .collect();
        if unknown.is_empty() {
            Ok(classes)
        } else {
            Err(TruthError::UnknownClasses {
                path: self.path.to_path_buf(),
                names: unknown.join(", "),
            })
        }
    }

    fn coco(&self) -> Result<Truth, TruthError> {
        let text = self.read_text(self.path)?;
        let coco: Value = serde_json::from_str(&text).map_err(|e| self.invalid(format!("not JSON: {e}")))?;
        let list = |key: &str| {
            coco.get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| self.invalid(format!("not a COCO dataset file: no {key:?} list")))
        };
        let (images, annotations, categories) = (list("images")?, list("annotations")?, list("categories")?);
        let names: Vec<String> = categories
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
        let resolved = self.classes(&names)?;
        let by_category: BTreeMap<u64, &Class> = categories
            .iter()
            .zip(&resolved)
            .filter_map(|(c, class)| Some((c["id"].as_u64()?, class)))
            .collect();
        let (width, height) = self.options.frame_size;
        let mut frame_of_image = BTreeMap::new();
        for image in images {
            let id = image["id"]
                .as_u64()
                .ok_or_else(|| self.invalid("an image without a numeric \"id\""))?;
            let number = match image.get("frame").and_then(Value::as_u64) {
                Some(n) => n,
                None => image["file_name"]
                    .as_str()
                    .and_then(trailing_number)
                    .ok_or_else(|| {
                        self.invalid(format!(
                            "image {id} has no frame number: give it a \"frame\" field, or a file name that ends in its frame number (frame_000001.jpg)"
                        ))
                    })?,
            };
            let size = (image["width"].as_u64(), image["height"].as_u64());
            if let (Some(w), Some(h)) = size
                && (w, h) != (width as u64, height as u64)
            {
                return Err(TruthError::DoesNotFit {
                    path: self.path.to_path_buf(),
                    message: format!("image {id} is {w}x{h}, the video's frames are {width}x{height}"),
                });
            }
            frame_of_image.insert(id, self.index(number, &format!("image {id}"))?);
        }
        let mut truth = Truth {
            listed: Some(frame_of_image.values().copied().collect()),
            ..Truth::default()
        };
        for a in annotations {
            let image = a["image_id"].as_u64().unwrap_or(u64::MAX);
            let &frame = frame_of_image.get(&image).ok_or_else(|| {
                self.invalid(format!(
                    "an annotation of image {image}, which \"images\" does not list"
                ))
            })?;
            let category = a["category_id"].as_u64().unwrap_or(u64::MAX);
            let class = by_category.get(&category).ok_or_else(|| {
                self.invalid(format!(
                    "an annotation of category {category}, which \"categories\" does not list"
                ))
            })?;
            let b: Vec<f32> = a["bbox"]
                .as_array()
                .map(|b| b.iter().filter_map(|v| v.as_f64().map(|v| v as f32)).collect())
                .unwrap_or_default();
            if b.len() != 4 || b.iter().any(|v| !v.is_finite()) || b[2] < 0.0 || b[3] < 0.0 {
                return Err(self.invalid(format!(
                    "image {image}: bbox {} is not [x, y, width, height]",
                    a["bbox"]
                )));
            }
            let crowd = a["iscrowd"].as_u64() == Some(1);
            push(
                &mut truth,
                frame,
                class,
                BBox::xywh(b[0], b[1], b[2], b[3]),
                crowd,
            );
        }
        Ok(truth)
    }

    fn mot(&self) -> Result<Truth, TruthError> {
        let text = self.read_text(self.path)?;
        let mut truth = Truth::default();
        // MOT16+ class ids: 1 pedestrian, 2 person on vehicle, 3 car, 4 bicycle, 5 motorbike,
        // 6 non-motorised vehicle, 7 static person, 8 distractor, 9-11 occluders, 12 reflection,
        // 13 crowd.
        let class_of = |id: i64| match id {
            1 => Class::Coco(1),
            3 => Class::Coco(3),
            4 => Class::Coco(2),
            5 => Class::Coco(4),
            2 | 7 | 8 | 12 | 13 => Class::Ignore,
            _ => Class::LeftOut,
        };
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let at = || format!("line {}", n + 1);
            let f: Vec<f64> = line
                .split(',')
                .map(|v| v.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .map_err(|_| self.invalid(format!("{}: not a MOTChallenge line (frame, id, left, top, width, height, flag, ...): {line:?}", at())))?;
            if f.len() < 7 || f[..6].iter().any(|v| !v.is_finite()) || f[0] < 0.0 || f[4] < 0.0 || f[5] < 0.0
            {
                return Err(self.invalid(format!(
                    "{}: not a MOTChallenge line (frame, id, left, top, width, height, flag, ...): {line:?}",
                    at()
                )));
            }
            let frame = self.index(f[0] as u64, &at())?;
            // MOT16 and later have 9 columns, the 8th the class; MOT15's 10 end in world x, y, z.
            let class = if f.len() == 9 {
                class_of(f[7] as i64)
            } else {
                Class::Coco(1)
            };
            let bbox = BBox::xywh(f[2] as f32, f[3] as f32, f[4] as f32, f[5] as f32);
            push(&mut truth, frame, &class, bbox, f[6] == 0.0);
        }
        Ok(truth)
    }

    fn yolo(&self) -> Result<Truth, TruthError> {
        let names = self.yolo_names()?;
        let resolved = self.classes(&names)?;
        let (width, height) = (self.options.frame_size.0 as f32, self.options.frame_size.1 as f32);
        let entries = std::fs::read_dir(self.path).map_err(|source| TruthError::Io {
            path: self.path.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .filter(|p| !is_names_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(self.invalid("no YOLO label file (*.txt, one per frame)"));
        }
        let mut truth = Truth::default();
        for file in files {
            let name = file.file_name().unwrap_or_default().to_string_lossy().to_string();
            let number = file
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(trailing_number)
                .ok_or_else(|| {
                    self.invalid(format!(
                        "{name}: a YOLO label file's name must end in its frame number (000001.txt)"
                    ))
                })?;
            let frame = self.index(number, &name)?;
            // A frame with a file but no boxes is a frame that was looked at: it is listed.
            truth.listed.get_or_insert_default().insert(frame);
            for (n, line) in self
                .read_text(&file)?
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let bad = || {
                    self.invalid(format!(
                        "{name}:{}: not a YOLO line (class cx cy w h, relative to the frame): {line:?}",
                        n + 1
                    ))
                };
                let f: Vec<f32> = line
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad())?;
                if f.len() < 5 || f.iter().any(|v| !v.is_finite()) || f[0] < 0.0 || f[0].fract() != 0.0 {
                    return Err(bad());
                }
                if f[1..5].iter().any(|v| !(0.0..=1.0001).contains(v)) {
                    return Err(TruthError::DoesNotFit {
                        path: self.path.to_path_buf(),
                        message: format!(
                            "{name}:{}: YOLO coordinates are relative to the frame, in 0..1: {line:?}",
                            n + 1
                        ),
                    });
                }
                let class = resolved.get(f[0] as usize).ok_or_else(|| {
                    self.invalid(format!(
                        "{name}:{}: class {} of {} named classes",
                        n + 1,
                        f[0],
                        names.len()
                    ))
                })?;
                let (cx, cy, w, h) = (f[1] * width, f[2] * height, f[3] * width, f[4] * height);
                push(
                    &mut truth,
                    frame,
                    class,
                    BBox::xywh(cx - w / 2.0, cy - h / 2.0, w, h),
                    false,
                );
            }
        }
        Ok(truth)
    }

    /// The class names of a YOLO folder: `classes.txt` or `obj.names` (a name per line), or the
    /// `names` of `data.yaml` (a list, inline or one `- name` per line, or `index: name` lines),
    /// in the folder or the one above it.
    fn yolo_names(&self) -> Result<Vec<String>, TruthError> {
        let dirs = [Some(self.path), self.path.parent()];
        for dir in dirs.into_iter().flatten() {
            for file in ["classes.txt", "obj.names"] {
                let path = dir.join(file);
                if path.is_file() {
                    let text = self.read_text(&path)?;
                    return Ok(text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from)
                        .collect());
                }
            }
            for file in ["data.yaml", "dataset.yaml"] {
                let path = dir.join(file);
                if path.is_file() {
                    return yaml_names(&self.read_text(&path)?)
                        .ok_or_else(|| self.invalid(format!("{}: no \"names\" list", path.display())));
                }
            }
        }
        Err(self.invalid(
            "YOLO labels need their class names: a classes.txt (one name per line, in class order) in the folder or the one above",
        ))
    }

    /// Every box inside the frame (boxes may reach past its edges, as MOT's do, but not lie wholly
    /// outside), and no frame past the video's end.
    fn check(&self, truth: &Truth) -> Result<(), TruthError> {
        let (width, height) = (self.options.frame_size.0 as f32, self.options.frame_size.1 as f32);
        let does_not_fit = |message: String| TruthError::DoesNotFit {
            path: self.path.to_path_buf(),
            message,
        };
        let last = truth
            .frames
            .keys()
            .next_back()
            .into_iter()
            .chain(truth.listed.iter().flat_map(|l| l.iter().next_back()))
            .max();
        if let (Some(count), Some(&last)) = (self.options.frame_count, last)
            && last >= count
        {
            return Err(does_not_fit(format!(
                "it has boxes in frame {} (numbered from {}), the video has {count} frames",
                last + self.options.first_frame_number,
                self.options.first_frame_number
            )));
        }
        for (&frame, boxes) in &truth.frames {
            if let Some(b) = boxes
                .iter()
                .find(|b| b.bbox.clip(width, height).area() <= 0.0 && b.bbox.area() > 0.0)
            {
                return Err(does_not_fit(format!(
                    "frame {}: box [{:.0}, {:.0}, {:.0}, {:.0}] lies outside the video's {width}x{height} frame",
                    frame + self.options.first_frame_number,
                    b.bbox.x0,
                    b.bbox.y0,
                    b.bbox.x1,
                    b.bbox.y1
                )));
            }
        }
        Ok(())
    }
}

/// Adds a box as written (clipped to the frame once every box is checked); empty boxes are kept
/// out.
fn push(truth: &mut Truth, frame: u64, class: &Class, bbox: BBox, ignore: bool) {
    if bbox.area() <= 0.0 {
        return;
    }
    let entry = truth.frames.entry(frame).or_default();
    match class {
        Class::Coco(id) => entry.push(TruthBox {
            class_id: *id,
            bbox,
            ignore,
        }),
        Class::Ignore => entry.push(TruthBox {
            class_id: 0,
            bbox,
            ignore: true,
        }),
        Class::LeftOut => {}
    }
}

fn is_names_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "classes.txt")
}

/// The number a file name ends in, before its extension (`frame_000123.jpg` -> 123).
pub fn trailing_number(name: &str) -> Option<u64> {
    let stem = Path::new(name).file_stem()?.to_str()?;
    let start = stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    stem[start..].parse().ok()
}

/// `names` of a YOLO `data.yaml`: a list (`names: [a, b]` or `- a` lines) or a map from class
/// index to name (`0: a` lines).
fn yaml_names(text: &str) -> Option<Vec<String>> {
    use serde_yaml_ng::Value;
    let doc: Value = serde_yaml_ng::from_str(text).ok()?;
    match doc.get("names")? {
        Value::Sequence(items) => items.iter().map(|v| v.as_str().map(str::to_string)).collect(),
        Value::Mapping(map) => {
            let mut indexed = map
                .iter()
                .map(|(k, v)| Some((k.as_u64()?, v.as_str()?.to_string())))
                .collect::<Option<Vec<_>>>()?;
            indexed.sort();
            Some(indexed.into_iter().map(|(_, name)| name).collect())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> TruthOptions {
        TruthOptions {
            frame_count: Some(10),
            ..TruthOptions::new((640, 480))
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("autotuner-truth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_three_formats_of_one_ground_truth_read_the_same() {
        let dir = tempdir("same");
        // Frame 2 (1-based): a person and a car; frame 3: an ignore region.
        let mot = write(
            &dir,
            "gt.txt",
            "2,1,100,50,40,80,1,1,1\n2,2,300,200,120,60,1,3,1\n3,3,10,10,20,20,0,1,1\n",
        );
        let coco = write(
            &dir,
            "gt.json",
            r#"{"images": [{"id": 7, "file_name": "frame_000002.jpg", "width": 640, "height": 480},
                           {"id": 8, "frame": 3, "width": 640, "height": 480}],
                "annotations": [{"image_id": 7, "category_id": 1, "bbox": [100, 50, 40, 80]},
                                {"image_id": 7, "category_id": 3, "bbox": [300, 200, 120, 60]},
                                {"image_id": 8, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 1}],
                "categories": [{"id": 1, "name": "pedestrian"}, {"id": 3, "name": "car"}]}"#,
        );
        let yolo = dir.join("labels");
        std::fs::create_dir_all(&yolo).unwrap();
        write(&yolo, "classes.txt", "person\ncar\n");
        write(
            &yolo,
            "frame_000002.txt",
            "0 0.1875 0.1875 0.0625 0.1666667\n1 0.5625 0.479166667 0.1875 0.125\n",
        );
        let mut map = options();
        map.class_map = vec![("pedestrian".into(), "person".into())];
        let read = |path: &Path| Truth::read(path, &map).unwrap();
        let (m, c, y) = (read(&mot), read(&coco), read(&yolo));
        for t in [&m, &c, &y] {
            let boxes = t.frame(1);
            assert_eq!(boxes.len(), 2, "{boxes:?}");
            assert_eq!((boxes[0].class_id, boxes[1].class_id), (1, 3));
            let b = boxes[1].bbox;
            assert!(
                (b.x0 - 300.0).abs() < 0.01 && (b.y1 - 260.0).abs() < 0.01,
                "{b:?}"
            );
        }
        assert!(m.frame(2)[0].ignore && c.frame(2)[0].ignore);
        // COCO and YOLO cover the frames they list; MOT every frame.
        assert!(c.covers(1) && c.covers(2) && !c.covers(4) && y.covers(1) && !y.covers(2));
        assert!(m.covers(4));
        assert_eq!(m.class_counts(), BTreeMap::from([(1, 1), (3, 1)]));
        // An ignore region hides the detections of every class scored.
        let gt = m.ground_truth(2, &[1, 3]);
        assert_eq!(gt.len(), 2);
        assert!(gt.iter().all(|g| g.crowd && g.image_id == 3));
    }

    #[test]
    fn mot15_lines_are_all_people_and_flag_zero_is_an_ignore_region() {
        let dir = tempdir("mot15");
        let mot = write(
            &dir,
            "gt.txt",
            "1,9,499,158,31.03,75.17,1,-4.15,-7.35,0\n1,10,10,10,5,5,0,-1,-1,-1\n",
        );
        let t = Truth::read(&mot, &options()).unwrap();
        assert_eq!(t.frame(0).len(), 2);
        assert_eq!((t.frame(0)[0].class_id, t.frame(0)[0].ignore), (1, false));
        assert!(t.frame(0)[1].ignore);
    }

    #[test]
    fn class_names_that_are_not_coco_classes_are_refused_with_the_way_to_map_them() {
        let dir = tempdir("classes");
        let yolo = dir.join("labels");
        std::fs::create_dir_all(&yolo).unwrap();
        write(&yolo, "classes.txt", "person\nforklift\n");
        write(&yolo, "000001.txt", "1 0.5 0.5 0.1 0.1\n");
        let e = Truth::read(&yolo, &options()).unwrap_err().to_string();
        assert!(e.contains("\"forklift\"") && e.contains("--class-map"), "{e}");
        let mut left_out = options();
        left_out.class_map = vec![parse_class_mapping("forklift=-").unwrap()];
        let t = Truth::read(&yolo, &left_out).unwrap();
        assert!(t.frame(0).is_empty());
    }

    #[test]
    fn ground_truth_for_another_video_is_refused_before_any_work() {
        let dir = tempdir("fit");
        let past_end = write(&dir, "a.txt", "11,1,10,10,5,5,1,-1,-1,-1\n");
        let e = Truth::read(&past_end, &options()).unwrap_err().to_string();
        assert!(e.contains("frame 11") && e.contains("10 frames"), "{e}");
        let outside = write(&dir, "b.txt", "1,1,700,10,5,5,1,-1,-1,-1\n");
        let e = Truth::read(&outside, &options()).unwrap_err().to_string();
        assert!(e.contains("outside the video's 640x480 frame"), "{e}");
        let coco = write(
            &dir,
            "c.json",
            r#"{"images": [{"id": 1, "frame": 1, "width": 1280, "height": 720}], "annotations": [], "categories": []}"#,
        );
        let e = Truth::read(&coco, &options()).unwrap_err().to_string();
        assert!(e.contains("1280x720") && e.contains("640x480"), "{e}");
        let zero = write(&dir, "d.txt", "0,1,10,10,5,5,1,-1,-1,-1\n");
        let e = Truth::read(&zero, &options()).unwrap_err().to_string();
        assert!(e.contains("--first-frame-number"), "{e}");
        let garbage = write(&dir, "e.txt", "frame,id,x\n");
        let e = Truth::read(&garbage, &options()).unwrap_err().to_string();
        assert!(e.contains("line 1: not a MOTChallenge line"), "{e}");
    }

    #[test]
    fn names_end_in_their_frame_number_and_yaml_lists_name_the_classes() {
        assert_eq!(trailing_number("frame_000123.jpg"), Some(123));
        assert_eq!(trailing_number("000001"), Some(1));
        assert_eq!(trailing_number("cam2_frame.png"), None);
        assert_eq!(
            yaml_names("path: x\nnames: [person, 'car']\n"),
            Some(vec!["person".into(), "car".into()])
        );
        assert_eq!(
            yaml_names("names:\n  - person\n  - car\nnc: 2\n"),
            Some(vec!["person".into(), "car".into()])
        );
        assert_eq!(
            yaml_names("names:\n  0: person\n  1: car\n"),
            Some(vec!["person".into(), "car".into()])
        );
    }
}

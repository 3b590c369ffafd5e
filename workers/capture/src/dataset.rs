//! The dataset the trainer reads (`operator/api`'s contract): per split a COCO file
//! (`<split>/annotations.json`) with the images beside it (`<split>/images/<sample>.jpg`).
//! Training and evaluation samples come from different time spans: time is cut into blocks and
//! every `period`-th block goes to evaluation, so both splits see the whole day yet no eval image
//! has a near-duplicate neighbour in training. Adding a sample that is already there does
//! nothing, so replaying the spool after a crash never duplicates one.
//!
//! Standalone, a split stops at its size. In a cluster the dataset rolls: a full split replaces
//! its oldest sample with each new one, so after drift the scene the camera sees now reaches the
//! next round of training and the eval split that judges it.
//!
//! A flush appends the batch's changes to the split's journal (`annotations.jsonl`,
//! `autotuner_store::journal`) and writes the COCO file whole only while the split is small or
//! once the journal has reached half its images, so the cost of a batch stays the same however
//! large the split grows. Readers replay the journal (the trainer's mirror does); a clean stop
//! ([`Dataset::write_whole`]) leaves each file whole.

use autotuner_store::journal::{self, Change, Entry};

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use autotuner_vision::Rect;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("dataset {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dataset {path} is not a COCO file this worker wrote: {message}")]
    Format { path: PathBuf, message: String },
    #[error("dataset: {0}")]
    Write(#[from] autotuner_store::StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Eval,
    /// Drift samples: labelled by the teacher, never trained on.
    Drift,
}

impl Split {
    pub fn dir(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
            Split::Drift => "drift",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetConfig {
    pub train_size: usize,
    pub eval_size: usize,
    /// Length of the time blocks the splits are cut from.
    pub block_ms: i64,
    /// `None`: a split stops at its size. `Some`: the splits keep the latest this many samples.
    pub rolling: Option<Rolling>,
}

/// How many samples each split keeps when the dataset rolls (the oldest go first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rolling {
    pub train: usize,
    pub eval: usize,
    pub drift: usize,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            train_size: 1000,
            eval_size: 200,
            block_ms: 20_000,
            rolling: None,
        }
    }
}

impl DatasetConfig {
    /// The split of a sample taken at `time_ms`.
    pub fn split_at(&self, time_ms: i64) -> Split {
        if self.eval_size == 0 {
            return Split::Train;
        }
        let period = ((self.train_size + self.eval_size) as f64 / self.eval_size as f64)
            .round()
            .max(2.0) as i64;
        let block = time_ms.max(0) / self.block_ms.max(1);
        if block % period == period - 1 {
            Split::Eval
        } else {
            Split::Train
        }
    }
}

/// One labelled box, in frame pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelBox {
    pub class: String,
    pub bbox: [f32; 4],
    pub score: f32,
}

/// A sample to store.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub id: &'a str,
    pub time_ms: i64,
    /// When the frame was decoded, by this node's clock (ms since the epoch).
    pub decoded_at_ms: u64,
    pub width: u32,
    pub height: u32,
    pub jpeg: &'a [u8],
    pub labels: &'a [LabelBox],
    /// Parts of the frame the teacher did not see: ignore regions for training.
    pub unlabelled: &'a [Rect],
}

/// Below this many images a split's file is written whole at every flush (a few hundred KiB at
/// most): its readers then need no journal, and the journal is for long captures.
const WHOLE_BELOW: usize = 256;

#[derive(Debug)]
struct SplitFile {
    path: PathBuf,
    coco: Value,
    /// Changes since the last flush, for the journal.
    pending: Vec<Entry>,
    /// The sequence number of the last change.
    seq: u64,
    /// Complete lines in the journal file.
    journal_lines: usize,
    /// Write the file whole at the next flush (its journal ended in a torn line).
    whole_next: bool,
    samples: HashSet<String>,
    /// Samples ever stored in this split, those replaced since included (kept in the file's
    /// `info.stored`, so it survives restarts): image ids and the operator's round count.
    stored: u64,
    next_annotation_id: u64,
    /// Images of replaced samples, deleted once the annotation file no longer names them.
    replaced: Vec<PathBuf>,
    dirty: bool,
}

impl SplitFile {
    fn open(root: &Path, split: Split, classes: &[(u32, String)]) -> Result<SplitFile, DatasetError> {
        let path = root.join(split.dir()).join("annotations.json");
        std::fs::create_dir_all(root.join(split.dir()).join("images")).map_err(io(root))?;
        let mut coco: Value = match autotuner_store::read_if_present(&path)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| DatasetError::Format {
                path: path.clone(),
                message: e.to_string(),
            })?,
            None => json!({
                "info": {"description": "Edge AutoTuner capture: teacher labels of selected frames"},
                "images": [], "annotations": [],
                "categories": classes.iter().map(|(id, name)| json!({"id": id, "name": name})).collect::<Vec<_>>(),
            }),
        };
        let format = |message: &str| DatasetError::Format {
            path: path.clone(),
            message: message.into(),
        };
        // Every field this file's writer indexes into is checked here, so that a file edited or
        // damaged on the volume is refused at open, not a panic at the next sample.
        let root = coco.as_object_mut().ok_or_else(|| format("not a JSON object"))?;
        for (key, empty) in [("annotations", json!([])), ("info", json!({}))] {
            match root.get(key) {
                None => {
                    root.insert(key.into(), empty);
                }
                Some(v) if v.is_array() == empty.is_array() && v.is_object() == empty.is_object() => {}
                Some(_) => {
                    let kind = if empty.is_array() { "array" } else { "object" };
                    return Err(format(&format!("{key} is not a JSON {kind}")));
                }
            }
        }
        if !coco["images"].is_array() {
            return Err(format("no images array"));
        }
        let journal_path = journal::path_of(&path);
        let replayed = match autotuner_store::read_if_present(&journal_path)? {
            Some(bytes) => journal::replay(&mut coco, &bytes).map_err(|e| DatasetError::Format {
                path: journal_path.clone(),
                message: e.to_string(),
            })?,
            None => journal::Replayed {
                seq: journal::file_seq(&coco),
                ..journal::Replayed::default()
            },
        };
        if replayed.torn {
            tracing::warn!(journal = %journal_path.display(), "the journal's last line was cut short (a crash mid-write): left out");
        }
        let samples = coco["images"]
            .as_array()
            .ok_or_else(|| format("no images array"))?
            .iter()
            .filter_map(|i| i["sample"].as_str().map(String::from))
            .collect();
        let max_id = |key: &str| {
            coco[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["id"].as_u64())
                .max()
                .unwrap_or(0)
        };
        let stored = coco["info"]["stored"].as_u64().unwrap_or(0).max(max_id("images"));
        let next_annotation_id = max_id("annotations") + 1;
        Ok(SplitFile {
            path,
            coco,
            pending: Vec::new(),
            seq: replayed.seq,
            journal_lines: replayed.lines,
            whole_next: replayed.torn,
            samples,
            stored,
            next_annotation_id,
            replaced: Vec::new(),
            dirty: false,
        })
    }

    /// Drops the oldest sample: its entry and boxes now, its image after the next flush.
    fn drop_oldest(&mut self) {
        let images = self.coco["images"].as_array_mut().expect("images");
        if images.is_empty() {
            return;
        }
        let oldest = images.remove(0);
        let id = oldest["id"].as_u64();
        if let Some(image_id) = id {
            self.record(Change::Drop { image_id });
        }
        if let Some(sample) = oldest["sample"].as_str() {
            self.samples.remove(sample);
        }
        if let Some(file) = oldest["file_name"].as_str() {
            self.replaced
                .push(self.path.parent().expect("split dir").join(file));
        }
        if let Some(list) = self.coco["annotations"].as_array_mut() {
            list.retain(|a| a["image_id"].as_u64() != id);
        }
        self.dirty = true;
    }

    fn images(&self) -> usize {
        self.samples.len()
    }

    fn record(&mut self, change: Change) {
        self.seq += 1;
        self.pending.push(Entry {
            seq: self.seq,
            change,
        });
    }

    /// Writes this flush's changes: appended to the journal, or the file whole (see the module
    /// notes). Records the files written, relative to the dataset's root, and what object
    /// storage needs for the same changes, in `flushed`.
    fn write(&mut self, root: &Path, whole: bool, flushed: &mut Flushed) -> Result<(), DatasetError> {
        let relative = |path: &Path| Some(path.strip_prefix(root).ok()?.to_string_lossy().into_owned());
        let key = relative(&self.path).expect("a split's file is below the dataset's root");
        let journal_path = journal::path_of(&self.path);
        let whole = whole
            || self.whole_next
            || self.images() < WHOLE_BELOW
            || self.journal_lines + self.pending.len() > self.images() / 2;
        let mut written = vec![];
        if whole {
            journal::set_file_seq(&mut self.coco, self.seq);
            let bytes = serde_json::to_vec(&self.coco).expect("COCO serialises");
            autotuner_store::write_atomically(&self.path, &bytes)?;
            written.push(self.path.clone());
            flushed.for_store.push(StoreWrite::Whole { key, seq: self.seq });
            // Emptied after the file is written: a reader holding the old journal finds its
            // entries in the new file.
            if self.journal_lines > 0 || self.whole_next {
                autotuner_store::write_atomically(&journal_path, b"")?;
                written.push(journal_path);
            }
            self.journal_lines = 0;
        } else if let Some(segment) = journal::Segment::of(&key, &self.pending) {
            use std::io::Write;
            let lines = &segment.lines;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&journal_path)
                .map_err(io(&journal_path))?;
            file.write_all(lines).map_err(io(&journal_path))?;
            file.sync_data().map_err(io(&journal_path))?;
            self.journal_lines += self.pending.len();
            written.push(journal_path);
            flushed.for_store.push(StoreWrite::Segment(segment));
        }
        self.pending.clear();
        self.whole_next = false;
        self.dirty = false;
        flushed.written.extend(written.iter().filter_map(|p| relative(p)));
        Ok(())
    }
}

/// The dataset on a local path (the camera node's volume).
#[derive(Debug)]
pub struct Dataset {
    root: PathBuf,
    config: DatasetConfig,
    classes: Vec<(u32, String)>,
    train: SplitFile,
    eval: SplitFile,
    drift: SplitFile,
}

/// What [`Dataset::flush`] wrote and deleted, as paths below the dataset's root (an object store
/// holding a copy puts and deletes the same).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// Annotation files and journals on the volume, each file before its journal.
    pub written: Vec<String>,
    /// The same changes as object storage holds them (it cannot append), in order.
    pub for_store: Vec<StoreWrite>,
    /// Images of the samples replaced since the last flush.
    pub removed: Vec<String>,
}

/// A change to an annotation file as object storage holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreWrite {
    /// The file at `key` was written whole; it holds the journal's entries up to `seq`.
    Whole { key: String, seq: u64 },
    /// The journal entries a flush appended: an object of their own.
    Segment(journal::Segment),
}

/// What [`Dataset::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Stored(Split),
    /// The sample is already in the dataset (a replay).
    Duplicate,
    /// Its split has reached its size.
    Full(Split),
}

impl Dataset {
    /// Opens the dataset at `root`, continuing what is there. `classes`: COCO id and name.
    pub fn open(
        root: &Path,
        config: DatasetConfig,
        classes: Vec<(u32, String)>,
    ) -> Result<Dataset, DatasetError> {
        Ok(Dataset {
            train: SplitFile::open(root, Split::Train, &classes)?,
            eval: SplitFile::open(root, Split::Eval, &classes)?,
            drift: SplitFile::open(root, Split::Drift, &classes)?,
            root: root.to_path_buf(),
            config,
            classes,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn len(&self, split: Split) -> usize {
        self.file(split).images()
    }

    /// Samples ever stored in `split`, those a rolling dataset has since replaced included.
    pub fn stored(&self, split: Split) -> u64 {
        self.file(split).stored
    }

    pub fn config(&self) -> &DatasetConfig {
        &self.config
    }

    fn file(&self, split: Split) -> &SplitFile {
        match split {
            Split::Train => &self.train,
            Split::Eval => &self.eval,
            Split::Drift => &self.drift,
        }
    }

    fn file_mut(&mut self, split: Split) -> &mut SplitFile {
        match split {
            Split::Train => &mut self.train,
            Split::Eval => &mut self.eval,
            Split::Drift => &mut self.drift,
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        [Split::Train, Split::Eval, Split::Drift]
            .iter()
            .any(|&s| self.file(s).samples.contains(id))
    }

    /// Stores a sample (its image now, its annotations at the next [`Dataset::flush`]).
    pub fn add(&mut self, sample: &Sample<'_>, drift: bool) -> Result<Added, DatasetError> {
        if self.contains(sample.id) {
            return Ok(Added::Duplicate);
        }
        let split = if drift {
            Split::Drift
        } else {
            self.config.split_at(sample.time_ms)
        };
        let cap = match (split, self.config.rolling) {
            (Split::Train, None) => self.config.train_size,
            (Split::Eval, None) => self.config.eval_size,
            (Split::Drift, None) => usize::MAX,
            (Split::Train, Some(r)) => r.train,
            (Split::Eval, Some(r)) => r.eval,
            (Split::Drift, Some(r)) => r.drift,
        };
        if self.len(split) >= cap {
            if self.config.rolling.is_none() || cap == 0 {
                return Ok(Added::Full(split));
            }
            while self.len(split) >= cap {
                self.file_mut(split).drop_oldest();
            }
        }
        let file_name = format!("images/{}.jpg", sample.id);
        let image_path = self.root.join(split.dir()).join(&file_name);
        autotuner_store::write_atomically(&image_path, sample.jpeg)?;
        let category = |name: &str| self.classes.iter().find(|(_, n)| n == name).map(|(id, _)| *id);
        let first_class = self.classes.first().map_or(1, |(id, _)| *id);
        let mut annotations = Vec::new();
        for label in sample.labels {
            let Some(category) = category(&label.class) else {
                continue;
            };
            let [x0, y0, x1, y1] = label.bbox;
            annotations.push(json!({
                "category_id": category, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0, "score": label.score,
            }));
        }
        for r in sample.unlabelled {
            annotations.push(json!({
                "category_id": first_class, "bbox": [r.x, r.y, r.width, r.height], "area": r.area(),
                "iscrowd": 1,
            }));
        }
        let file = self.file_mut(split);
        file.stored += 1;
        let image_id = file.stored;
        let first_annotation = file.next_annotation_id;
        file.next_annotation_id += annotations.len() as u64;
        file.coco["info"]["stored"] = json!(file.stored);
        let image = json!({
            "id": image_id, "file_name": file_name, "width": sample.width, "height": sample.height,
            "sample": sample.id, "time_ms": sample.time_ms, "decoded_at_ms": sample.decoded_at_ms,
        });
        let annotations: Vec<Value> = (first_annotation..)
            .zip(annotations)
            .map(|(id, mut a)| {
                a["id"] = json!(id);
                a["image_id"] = json!(image_id);
                a
            })
            .collect();
        file.coco["images"]
            .as_array_mut()
            .expect("images")
            .push(image.clone());
        file.coco["annotations"]
            .as_array_mut()
            .expect("annotations")
            .extend(annotations.iter().cloned());
        file.record(Change::Add { image, annotations });
        file.samples.insert(sample.id.to_string());
        file.dirty = true;
        Ok(Added::Stored(split))
    }

    /// Writes what changed in the annotation files (to their journals, or whole: see the module
    /// notes), then deletes the images of the samples replaced since the last flush.
    pub fn flush(&mut self) -> Result<Flushed, DatasetError> {
        self.write(false)
    }

    /// [`Dataset::flush`], with every split's file written whole and its journal emptied: for a
    /// clean stop, so that the files alone are the dataset.
    pub fn write_whole(&mut self) -> Result<Flushed, DatasetError> {
        for split in [Split::Train, Split::Eval, Split::Drift] {
            let file = self.file_mut(split);
            file.dirty |= file.journal_lines > 0 || file.whole_next;
        }
        self.write(true)
    }

    fn write(&mut self, whole: bool) -> Result<Flushed, DatasetError> {
        let mut flushed = Flushed::default();
        let root = self.root.clone();
        for split in [Split::Train, Split::Eval, Split::Drift] {
            let file = self.file_mut(split);
            if file.dirty {
                file.write(&root, whole, &mut flushed)?;
            }
            // A crash before this leaves an image nothing names: harmless, and the next
            // replacement of a sample does not look for it.
            for image in file.replaced.drain(..) {
                match std::fs::remove_file(&image) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&image)(e)),
                    _ => {}
                }
                if let Ok(key) = image.strip_prefix(&root) {
                    flushed.removed.push(key.to_string_lossy().into_owned());
                }
            }
        }
        Ok(flushed)
    }

    /// Images in `split` of frames decoded at or after `since_ms` (this node's clock): a round
    /// of collection's own.
    pub fn count_since(&self, split: Split, since_ms: u64) -> u64 {
        let images = self.file(split).coco["images"].as_array();
        images
            .into_iter()
            .flatten()
            .filter(|i| i["decoded_at_ms"].as_u64().unwrap_or(0) >= since_ms)
            .count() as u64
    }

    /// The annotation file of a split.
    pub fn annotations_path(&self, split: Split) -> PathBuf {
        self.file(split).path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `scripts/fuzz capture_dataset`: a file without an annotations array opened, and
    /// the next stored sample panicked.
    #[test]
    fn an_annotation_file_the_writer_cannot_extend_is_refused_at_open_never_a_panic() {
        let classes = vec![(1, "person".to_string())];
        let open_with = |file: &str| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("train")).unwrap();
            std::fs::write(dir.path().join("train/annotations.json"), file).unwrap();
            let opened = Dataset::open(dir.path(), DatasetConfig::default(), classes.clone());
            (dir, opened)
        };
        for (file, error) in [
            (
                r#"{"images": [], "annotations": {}}"#,
                "annotations is not a JSON array",
            ),
            (
                r#"{"images": [], "annotations": [], "info": 5}"#,
                "info is not a JSON object",
            ),
            (r#"[{"images": []}]"#, "not a JSON object"),
            (r#"{"annotations": []}"#, "no images array"),
        ] {
            let (_dir, opened) = open_with(file);
            let err = opened.unwrap_err().to_string();
            assert!(err.contains(error), "{file}: {err}");
        }
        // What a writer can complete, it completes: the missing arrays and objects start empty.
        let (dir, opened) = open_with(r#"{"images": [], "categories": [{"id": 1, "name": "person"}]}"#);
        let mut dataset = opened.unwrap();
        let labels = [LabelBox {
            class: "person".into(),
            bbox: [1.0, 2.0, 30.0, 60.0],
            score: 0.9,
        }];
        let sample = Sample {
            id: "f00000001",
            time_ms: 0,
            decoded_at_ms: 0,
            width: 64,
            height: 64,
            jpeg: b"jpeg",
            labels: &labels,
            unlabelled: &[],
        };
        assert_eq!(dataset.add(&sample, false).unwrap(), Added::Stored(Split::Train));
        dataset.flush().unwrap();
        let written: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("train/annotations.json")).unwrap())
                .unwrap();
        assert_eq!(written["annotations"].as_array().unwrap().len(), 1, "{written}");
        assert_eq!(written["info"]["stored"], 1, "{written}");
    }

    #[test]
    fn splits_come_from_different_time_blocks_in_the_configured_proportion() {
        let config = DatasetConfig {
            train_size: 800,
            eval_size: 200,
            block_ms: 10_000,
            rolling: None,
        };
        let splits: Vec<Split> = (0..100).map(|s| config.split_at(s * 1000)).collect();
        let eval = splits.iter().filter(|&&s| s == Split::Eval).count();
        assert_eq!(eval, 20);
        // Whole blocks: ten consecutive seconds share a split.
        assert!(splits.chunks(10).all(|c| c.iter().all(|s| *s == c[0])));
    }

    #[test]
    fn a_replayed_sample_is_stored_once_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let classes = vec![(1, "person".to_string())];
        let mut d = Dataset::open(dir.path(), DatasetConfig::default(), classes.clone()).unwrap();
        let labels = [
            LabelBox {
                class: "person".into(),
                bbox: [10.0, 20.0, 30.0, 80.0],
                score: 0.9,
            },
            LabelBox {
                class: "dog".into(),
                bbox: [1.0, 1.0, 2.0, 2.0],
                score: 0.9,
            },
        ];
        let sample = Sample {
            id: "f00000007",
            time_ms: 700,
            decoded_at_ms: 1_700_000_000_700,
            width: 64,
            height: 48,
            jpeg: b"jpeg",
            labels: &labels,
            unlabelled: &[Rect::new(40, 0, 24, 48)],
        };
        assert_eq!(d.add(&sample, false).unwrap(), Added::Stored(Split::Train));
        assert_eq!(d.add(&sample, false).unwrap(), Added::Duplicate);
        d.flush().unwrap();
        let mut d = Dataset::open(dir.path(), DatasetConfig::default(), classes).unwrap();
        assert_eq!(d.add(&sample, false).unwrap(), Added::Duplicate);
        let coco: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("train/annotations.json")).unwrap())
                .unwrap();
        assert_eq!(coco["images"].as_array().unwrap().len(), 1);
        let annotations = coco["annotations"].as_array().unwrap();
        assert_eq!(
            annotations.len(),
            2,
            "the dog is not a target class: {annotations:?}"
        );
        assert_eq!(annotations[0]["bbox"], json!([10.0, 20.0, 20.0, 60.0]));
        assert_eq!(annotations[1]["iscrowd"], json!(1));
        assert!(dir.path().join("train/images/f00000007.jpg").exists());
    }

    #[test]
    fn a_rolling_split_keeps_the_latest_samples_and_counts_every_one_stored() {
        let dir = tempfile::tempdir().unwrap();
        let classes = vec![(1, "person".to_string())];
        let config = DatasetConfig {
            rolling: Some(Rolling {
                train: 3,
                eval: 1,
                drift: 2,
            }),
            ..DatasetConfig::default()
        };
        let labels = [LabelBox {
            class: "person".into(),
            bbox: [10.0, 20.0, 30.0, 80.0],
            score: 0.9,
        }];
        let mut d = Dataset::open(dir.path(), config.clone(), classes.clone()).unwrap();
        let ids: Vec<String> = (0..5).map(|i| format!("f{i:08}")).collect();
        let mut removed = Vec::new();
        for id in &ids {
            let sample = Sample {
                id,
                time_ms: 0,
                decoded_at_ms: 0,
                width: 64,
                height: 48,
                jpeg: b"jpeg",
                labels: &labels,
                unlabelled: &[],
            };
            assert_eq!(d.add(&sample, false).unwrap(), Added::Stored(Split::Train));
            removed.extend(d.flush().unwrap().removed);
        }
        assert_eq!(
            removed,
            ["train/images/f00000000.jpg", "train/images/f00000001.jpg"]
        );
        assert_eq!(d.len(Split::Train), 3);
        assert_eq!(d.stored(Split::Train), 5);
        // The two oldest are gone, images and boxes; ids stay unique after a reopen.
        let d = Dataset::open(dir.path(), config, classes).unwrap();
        assert_eq!(d.stored(Split::Train), 5);
        let coco: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("train/annotations.json")).unwrap())
                .unwrap();
        let kept: Vec<&str> = coco["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["sample"].as_str().unwrap())
            .collect();
        assert_eq!(kept, ["f00000002", "f00000003", "f00000004"]);
        let image_ids: Vec<u64> = coco["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect();
        assert_eq!(image_ids, [3, 4, 5]);
        let boxes: Vec<u64> = coco["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["image_id"].as_u64().unwrap())
            .collect();
        assert_eq!(boxes, [3, 4, 5]);
        assert!(!dir.path().join("train/images/f00000001.jpg").exists());
        assert!(dir.path().join("train/images/f00000002.jpg").exists());
    }

    #[test]
    fn a_round_counts_the_images_of_frames_decoded_since_it_began_whenever_they_were_stored() {
        let dir = tempfile::tempdir().unwrap();
        let classes = vec![(1, "person".to_string())];
        let config = DatasetConfig {
            eval_size: 0,
            ..DatasetConfig::default()
        };
        let mut d = Dataset::open(dir.path(), config.clone(), classes.clone()).unwrap();
        // Stored in this order: the last two were decoded before the round began (at 5000) and
        // waited for the teacher.
        for (i, decoded_at_ms) in [1000, 6000, 7000, 4000, 4999].into_iter().enumerate() {
            let id = format!("f{i:08}");
            let sample = Sample {
                id: &id,
                time_ms: 0,
                decoded_at_ms,
                width: 64,
                height: 48,
                jpeg: b"jpeg",
                labels: &[],
                unlabelled: &[],
            };
            d.add(&sample, false).unwrap();
        }
        assert_eq!(d.count_since(Split::Train, 5000), 2);
        assert_eq!(d.count_since(Split::Train, 0), 5);
        d.flush().unwrap();
        let d = Dataset::open(dir.path(), config, classes).unwrap();
        assert_eq!(d.count_since(Split::Train, 5000), 2, "after a reopen");
        assert_eq!(d.count_since(Split::Eval, 0), 0);
    }

    /// Adds `count` samples with ids from `first` (all in the train split: time 0), flushing
    /// every 8 like the capture worker's batches; returns each flush's files.
    fn add_batches(d: &mut Dataset, first: usize, count: usize) -> Vec<Flushed> {
        let labels = [LabelBox {
            class: "person".into(),
            bbox: [10.0, 20.0, 30.0, 80.0],
            score: 0.9,
        }];
        let mut flushes = Vec::new();
        for i in first..first + count {
            let id = format!("f{i:08}");
            let sample = Sample {
                id: &id,
                time_ms: 0,
                decoded_at_ms: i as u64,
                width: 64,
                height: 48,
                jpeg: b"jpeg",
                labels: &labels,
                unlabelled: &[],
            };
            assert!(matches!(
                d.add(&sample, false).unwrap(),
                Added::Stored(Split::Train)
            ));
            if (i + 1) % 8 == 0 {
                flushes.push(d.flush().unwrap());
            }
        }
        flushes
    }

    fn sample_ids(coco: &Value) -> Vec<String> {
        coco["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["sample"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_large_split_appends_each_batch_to_its_journal_and_is_rewritten_whole_only_now_and_then() {
        let dir = tempfile::tempdir().unwrap();
        let classes = vec![(1, "person".to_string())];
        let config = DatasetConfig {
            train_size: 100_000,
            ..DatasetConfig::default()
        };
        let mut d = Dataset::open(dir.path(), config.clone(), classes.clone()).unwrap();
        let flushed = add_batches(&mut d, 0, 2000);
        let flushes: Vec<Vec<String>> = flushed.iter().map(|f| f.written.clone()).collect();
        let whole = |f: &&Vec<String>| f.contains(&"train/annotations.json".to_string());
        // Small (under 256 images after the flush), the file is written whole each time, with no
        // journal for readers to know of ...
        let small = WHOLE_BELOW / 8 - 1;
        assert!(
            flushes[..small].iter().all(|f| f == &["train/annotations.json"]),
            "{:?}",
            &flushes[..small]
        );
        // ... large, a batch is one append to the journal, and the file is rewritten only when
        // the journal reaches half of it, that is each time the split has about doubled: at 504
        // and 1016 images on the way to 2000 (the cost per image stays the same however large the
        // split grows).
        let rewrites: Vec<usize> = (small..flushes.len()).filter(|&i| whole(&&flushes[i])).collect();
        assert_eq!(
            rewrites,
            [62, 126],
            "the flushes (of 8 images each) that rewrote the file"
        );
        assert!(
            flushes[small..]
                .iter()
                .filter(|f| !whole(f))
                .all(|f| f == &["train/annotations.jsonl"]),
            "{:?}",
            &flushes[small..]
        );
        let journal = std::fs::read_to_string(dir.path().join("train/annotations.jsonl")).unwrap();
        assert!(
            !journal.is_empty() && journal.lines().count() <= 1000,
            "{} lines",
            journal.lines().count()
        );
        // For object storage, which cannot append: the file whole when it was written whole
        // (holding every entry so far), else the flush's own entries as a segment, the same
        // eight lines however large the split: the segments since the last rewrite are the
        // journal.
        let mut seq = 0;
        let mut since_rewrite = Vec::new();
        for (i, f) in flushed.iter().enumerate() {
            seq += 8;
            match f.for_store.as_slice() {
                [StoreWrite::Whole { key, seq: held }] if whole(&&flushes[i]) => {
                    assert_eq!(
                        (key.as_str(), *held),
                        ("train/annotations.json", seq),
                        "flush {i}"
                    );
                    since_rewrite.clear();
                }
                [StoreWrite::Segment(segment)] if !whole(&&flushes[i]) => {
                    assert_eq!(segment.file, "train/annotations.json");
                    assert_eq!((segment.first, segment.last), (seq - 7, seq), "flush {i}");
                    assert_eq!(segment.lines.split(|&b| b == b'\n').count(), 9, "eight lines");
                    since_rewrite.extend_from_slice(&segment.lines);
                }
                other => panic!("flush {i}: {other:?}"),
            }
        }
        assert_eq!(since_rewrite, journal.as_bytes());
        // A reader (the drift check, the trainer's mirror) and a reopening writer see every sample.
        let read = autotuner_store::journal::read(&dir.path().join("train/annotations.json"))
            .unwrap()
            .unwrap();
        assert_eq!(sample_ids(&read).len(), 2000);
        assert_eq!(read["annotations"].as_array().unwrap().len(), 2000);
        let mut reopened = Dataset::open(dir.path(), config.clone(), classes.clone()).unwrap();
        assert_eq!(reopened.len(Split::Train), 2000);
        assert_eq!(reopened.stored(Split::Train), 2000);
        // It goes on where it stopped: ids continue, nothing is doubled.
        add_batches(&mut reopened, 2000, 8);
        let read = autotuner_store::journal::read(&dir.path().join("train/annotations.json"))
            .unwrap()
            .unwrap();
        let ids: Vec<u64> = read["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (1..=2008).collect::<Vec<_>>());
        // A clean stop leaves the file whole and the journal empty.
        let flushed = reopened.write_whole().unwrap();
        assert_eq!(
            flushed.written,
            ["train/annotations.json", "train/annotations.jsonl"]
        );
        let file: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("train/annotations.json")).unwrap())
                .unwrap();
        assert_eq!(sample_ids(&file).len(), 2008);
        assert!(
            std::fs::read(dir.path().join("train/annotations.jsonl"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_rolling_split_replays_its_drops_and_a_journal_line_cut_short_loses_only_what_was_cut() {
        let dir = tempfile::tempdir().unwrap();
        let classes = vec![(1, "person".to_string())];
        let config = DatasetConfig {
            rolling: Some(Rolling {
                train: 300,
                eval: 1,
                drift: 1,
            }),
            ..DatasetConfig::default()
        };
        let mut d = Dataset::open(dir.path(), config.clone(), classes.clone()).unwrap();
        let flushes = add_batches(&mut d, 0, 400);
        assert!(
            flushes.last().unwrap().written == ["train/annotations.jsonl"],
            "{flushes:?}"
        );
        let journal_path = dir.path().join("train/annotations.jsonl");
        let read = autotuner_store::journal::read(&dir.path().join("train/annotations.json"))
            .unwrap()
            .unwrap();
        let latest: Vec<String> = (100..400).map(|i| format!("f{i:08}")).collect();
        assert_eq!(sample_ids(&read), latest, "the latest 300, the oldest dropped");
        // A crash in the middle of the last batch's append: its lines are cut short.
        let journal = std::fs::read(&journal_path).unwrap();
        let last_line = journal[..journal.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        std::fs::write(&journal_path, &journal[..last_line + 10]).unwrap();
        let mut reopened = Dataset::open(dir.path(), config, classes).unwrap();
        // The cut line was the last sample's (a drop, then an add, per sample): it is left out,
        // its batch was never acknowledged, and the spool gives it again.
        assert_eq!(reopened.len(Split::Train), 299);
        assert!(reopened.contains("f00000398") && !reopened.contains("f00000399"));
        // The next flush writes the file whole (an append would follow the torn line).
        let flushes = add_batches(&mut reopened, 399, 1);
        assert_eq!(
            flushes[0].written,
            ["train/annotations.json", "train/annotations.jsonl"]
        );
        let read = autotuner_store::journal::read(&dir.path().join("train/annotations.json"))
            .unwrap()
            .unwrap();
        assert_eq!(sample_ids(&read), latest);
    }
}

//! The journal beside a COCO annotation file: the images added and dropped since the file was
//! last written whole, one JSON line each, appended.
//!
//! Rewriting a split's `annotations.json` after every labelled batch costs the size of the whole
//! split, so a long capture's writes grew with its square. The capture worker now appends each
//! batch's changes to `annotations.jsonl` (one fsync, the size of the batch) and writes the file
//! whole only when the journal has grown to a share of it (amortised, a constant cost per image)
//! or the file is small. A reader takes the journal first and the file second, and replays the
//! journal's entries the file does not hold yet: each entry has a sequence number and the file
//! records the last one it holds (`info.journal`), so whichever file it read, old or rewritten
//! since, the result is the split as it was when the journal was read, or later.
//!
//! Object storage cannot append, and putting the journal whole after each batch cost the
//! journal's size (up to half the split) per batch. There each flush's entries are an object of
//! their own, a [`Segment`] named by the first and last sequence number it holds
//! (`annotations.json.journal/<first>-<last>.jsonl`, zero-padded so that names sort in sequence
//! order): a batch costs its own size, however large the split. Writing the file whole puts the
//! file first and then deletes the segments it holds. A reader lists and reads the segments, then
//! reads the file: a segment deleted between the two is held by the file it reads after, and
//! replay skips the entries a newer file holds already.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

/// One change to the split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// An image and its boxes (COCO objects, with their ids).
    Add { image: Value, annotations: Vec<Value> },
    /// The image with this id and its boxes are gone (a rolling split replaced it).
    Drop { image_id: u64 },
}

/// A line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    #[serde(flatten)]
    pub change: Change,
}

impl Entry {
    /// The entry as a journal line, newline included.
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a journal entry serialises");
        line.push(b'\n');
        line
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum JournalError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the annotation file is not a COCO object with images and annotations arrays")]
    NotCoco,
}

/// What [`replay`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Entries applied (those the file held already are skipped).
    pub applied: usize,
    /// Complete lines in the journal.
    pub lines: usize,
    /// The last sequence number the file now holds.
    pub seq: u64,
    /// The journal ended in a part of a line (a write cut short by a crash): left out.
    pub torn: bool,
}

/// The journal of the annotation file at `annotations` (`annotations.json` -> `.jsonl`).
pub fn path_of(annotations: &Path) -> PathBuf {
    let mut path = annotations.as_os_str().to_owned();
    path.push("l");
    PathBuf::from(path)
}

/// The object key of the journal of the annotation file at `key`.
pub fn key_of(key: &str) -> String {
    format!("{key}l")
}

/// The folder of the segments of the annotation file at `key` in object storage.
pub fn segments_of(key: &str) -> String {
    format!("{key}.journal")
}

/// A flush's journal entries, as object storage keeps them: one object per flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The annotation file's key (`train/annotations.json`).
    pub file: String,
    /// The sequence numbers of its first and last entry.
    pub first: u64,
    pub last: u64,
    /// The entries' lines, as in the journal file.
    pub lines: Vec<u8>,
}

impl Segment {
    /// The segment of `entries` (in sequence order) of the annotation file at `file`; `None` for
    /// no entries.
    pub fn of(file: &str, entries: &[Entry]) -> Option<Segment> {
        Some(Segment {
            file: file.to_string(),
            first: entries.first()?.seq,
            last: entries.last()?.seq,
            lines: entries.iter().flat_map(Entry::line).collect(),
        })
    }

    /// Its object key.
    pub fn key(&self) -> String {
        format!(
            "{}/{:020}-{:020}.jsonl",
            segments_of(&self.file),
            self.first,
            self.last
        )
    }
}

/// The first and last sequence number of the segment named `name` (the last part of its key);
/// `None` for a name that is not a segment's.
pub fn segment_range(name: &str) -> Option<(u64, u64)> {
    let (first, last) = name.strip_suffix(".jsonl")?.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(first) && digits(last)) {
        return None;
    }
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// The last sequence number an annotation file holds (0: none).
pub fn file_seq(coco: &Value) -> u64 {
    coco["info"]["journal"].as_u64().unwrap_or(0)
}

/// Records in `coco` that it holds every entry up to `seq`.
pub fn set_file_seq(coco: &mut Value, seq: u64) {
    if let Some(info) = info_mut(coco) {
        info.insert("journal".into(), json!(seq));
    }
}

fn info_mut(coco: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    let root = coco.as_object_mut()?;
    root.entry("info").or_insert_with(|| json!({})).as_object_mut()
}

/// The split whose annotation file is at `annotations`, its journal replayed; `None` when there
/// is no file. The journal is read first, then the file: consistent while the capture worker
/// appends to one and rewrites the other (the module notes).
pub fn read(annotations: &Path) -> Result<Option<Value>, crate::StoreError> {
    let journal_path = path_of(annotations);
    let journal = crate::read_if_present(&journal_path)?;
    let Some(file) = crate::read_if_present(annotations)? else {
        return Ok(None);
    };
    let mut coco: Value = serde_json::from_slice(&file).map_err(|source| crate::StoreError::Annotations {
        uri: annotations.display().to_string(),
        source,
    })?;
    if let Some(journal) = journal {
        replay(&mut coco, &journal).map_err(|source| crate::StoreError::Journal {
            uri: journal_path.display().to_string(),
            source,
        })?;
    }
    Ok(Some(coco))
}

/// Applies the entries of `journal` that `coco` does not hold yet (sequence numbers above its
/// own), in order, and records the last. A final part of a line is left out (a crash cut its
/// write short: the batch it belonged to was not acknowledged); any other line that does not
/// parse is an error naming it.
pub fn replay(coco: &mut Value, journal: &[u8]) -> Result<Replayed, JournalError> {
    if !(coco["images"].is_array() && coco["annotations"].is_array()) {
        return Err(JournalError::NotCoco);
    }
    let mut replayed = Replayed {
        seq: file_seq(coco),
        ..Replayed::default()
    };
    let complete = match journal.iter().rposition(|&b| b == b'\n') {
        Some(end) => &journal[..=end],
        None => &journal[..0],
    };
    replayed.torn = complete.len() < journal.len();
    for (number, line) in complete.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let entry: Entry = serde_json::from_slice(line).map_err(|e| JournalError::Line {
            line: number + 1,
            message: e.to_string(),
        })?;
        replayed.lines += 1;
        if entry.seq <= replayed.seq {
            continue;
        }
        apply(coco, entry.change).map_err(|message| JournalError::Line {
            line: number + 1,
            message,
        })?;
        replayed.seq = entry.seq;
        replayed.applied += 1;
    }
    set_file_seq(coco, replayed.seq);
    Ok(replayed)
}

fn apply(coco: &mut Value, change: Change) -> Result<(), String> {
    let id_of = |v: &Value| v["id"].as_u64();
    match change {
        Change::Add { image, annotations } => {
            let id = id_of(&image).ok_or("an added image without a numeric id")?;
            let images = coco["images"].as_array_mut().expect("checked");
            if images.iter().any(|i| id_of(i) == Some(id)) {
                return Ok(());
            }
            images.push(image);
            coco["annotations"]
                .as_array_mut()
                .expect("checked")
                .extend(annotations);
            // Image ids are the split's storage sequence (1 to `info.stored`, the count of samples
            // ever stored, replaced ones included): a reader of the replayed file sees the count
            // its writer had.
            if let Some(info) = info_mut(coco) {
                let stored = info.get("stored").and_then(Value::as_u64).unwrap_or(0);
                info.insert("stored".into(), json!(stored.max(id)));
            }
        }
        Change::Drop { image_id } => {
            coco["images"]
                .as_array_mut()
                .expect("checked")
                .retain(|i| id_of(i) != Some(image_id));
            coco["annotations"]
                .as_array_mut()
                .expect("checked")
                .retain(|a| a["image_id"].as_u64() != Some(image_id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coco() -> Value {
        json!({ "info": {}, "images": [], "annotations": [], "categories": [] })
    }

    fn add(seq: u64, id: u64) -> Entry {
        Entry {
            seq,
            change: Change::Add {
                image: json!({ "id": id, "file_name": format!("images/{id}.jpg") }),
                annotations: vec![json!({ "id": id * 10, "image_id": id, "bbox": [0, 0, 1, 1] })],
            },
        }
    }

    fn drop(seq: u64, image_id: u64) -> Entry {
        Entry {
            seq,
            change: Change::Drop { image_id },
        }
    }

    fn journal(entries: &[Entry]) -> Vec<u8> {
        entries.iter().flat_map(Entry::line).collect()
    }

    fn ids(coco: &Value) -> Vec<u64> {
        coco["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn adds_and_drops_replay_in_order_and_the_file_records_the_last() {
        let mut file = coco();
        let replayed = replay(
            &mut file,
            &journal(&[add(1, 1), add(2, 2), drop(3, 1), add(4, 3)]),
        )
        .unwrap();
        assert_eq!(ids(&file), [2, 3]);
        assert_eq!(
            file["annotations"].as_array().unwrap().len(),
            2,
            "image 1's box went with it"
        );
        assert_eq!(
            (replayed.applied, replayed.lines, replayed.seq, replayed.torn),
            (4, 4, 4, false)
        );
        assert_eq!(file_seq(&file), 4);
        assert_eq!(
            file["info"]["stored"], 3,
            "the count of samples ever stored is the largest id added, dropped ones included"
        );
    }

    #[test]
    fn entries_a_rewritten_file_holds_already_are_skipped() {
        // The writer rewrote the file after entry 3 (holding 2 and 3) and appended 4; a reader
        // that took the old journal (1-3) and then the new file gets the new file unchanged,
        // and one with the new journal (4) gets 4 on top.
        let mut rewritten = coco();
        replay(&mut rewritten, &journal(&[add(1, 1), add(2, 2), drop(3, 1)])).unwrap();
        let mut from_old_journal = rewritten.clone();
        let replayed = replay(
            &mut from_old_journal,
            &journal(&[add(1, 1), add(2, 2), drop(3, 1)]),
        )
        .unwrap();
        assert_eq!(replayed.applied, 0);
        assert_eq!(from_old_journal, rewritten, "image 1 is not brought back");
        let mut from_new_journal = rewritten.clone();
        replay(&mut from_new_journal, &journal(&[add(4, 3)])).unwrap();
        assert_eq!(ids(&from_new_journal), [2, 3]);
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_left_out_and_any_other_bad_line_is_an_error() {
        let mut bytes = journal(&[add(1, 1)]);
        let cut = add(2, 2).line();
        bytes.extend_from_slice(&cut[..cut.len() / 2]);
        let mut file = coco();
        let replayed = replay(&mut file, &bytes).unwrap();
        assert_eq!((ids(&file), replayed.torn), (vec![1], true));

        let mut bad = journal(&[add(1, 1)]);
        bad.extend_from_slice(b"{\"seq\": 2, \"add\": 7}\n");
        bad.extend(add(3, 3).line());
        assert!(matches!(
            replay(&mut coco(), &bad),
            Err(JournalError::Line { line: 2, .. })
        ));
        assert_eq!(
            replay(&mut json!({ "images": 1 }), b""),
            Err(JournalError::NotCoco)
        );
    }

    #[test]
    fn a_segment_is_named_by_its_entries_and_names_sort_in_sequence_order() {
        let segment = Segment::of("train/annotations.json", &[add(9, 1), drop(10, 1), add(11, 2)]).unwrap();
        assert_eq!((segment.first, segment.last), (9, 11));
        assert_eq!(segment.lines, journal(&[add(9, 1), drop(10, 1), add(11, 2)]));
        assert_eq!(
            segment.key(),
            "train/annotations.json.journal/00000000000000000009-00000000000000000011.jsonl"
        );
        let later = Segment::of("train/annotations.json", &[add(100, 3)]).unwrap();
        assert!(segment.key() < later.key(), "9-11 sorts before 100-100");
        assert_eq!(Segment::of("train/annotations.json", &[]), None);
        let name = |s: &Segment| s.key().rsplit_once('/').unwrap().1.to_string();
        assert_eq!(segment_range(&name(&segment)), Some((9, 11)));
        for other in [
            "annotations.jsonl",
            "9-11.jsonl",
            "0000000000000000000x-00000000000000000011.jsonl",
            "",
        ] {
            assert_eq!(segment_range(other), None, "{other}");
        }
    }

    #[test]
    fn the_journal_sits_beside_its_file() {
        assert_eq!(
            path_of(Path::new("/data/train/annotations.json")),
            Path::new("/data/train/annotations.jsonl")
        );
        assert_eq!(key_of("train/annotations.json"), "train/annotations.jsonl");
    }
}

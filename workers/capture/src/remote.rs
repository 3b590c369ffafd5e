//! The dataset in object storage: what a pod on a fresh disk restores from it, and the upload of
//! what the volume's working copy stored since the last one.
//!
//! Object storage cannot append: a split's annotation file goes whole when the writer rewrote it,
//! and the journal entries of each flush go as a segment of their own (`autotuner_store::journal`),
//! so that a batch costs its own size however large the split has grown.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use autotuner_store::{Location, journal};

use crate::dataset::{Flushed, Split, StoreWrite};

const SPLITS: [Split; 3] = [Split::Train, Split::Eval, Split::Drift];

/// The key of a split's annotation file.
fn annotation_key(split: Split) -> String {
    format!("{}/annotations.json", split.dir())
}

/// Replaces the working copy's annotation files and journals in `dir` by the store's: a pod on a
/// fresh disk (or a restarted one) continues the dataset the store holds.
pub async fn restore(remote: &Location, dir: &Path) -> anyhow::Result<()> {
    for split in SPLITS {
        let key = annotation_key(split);
        std::fs::create_dir_all(dir.join(split.dir())).context("create the dataset's working copy")?;
        let (file, journal_file) = (dir.join(&key), journal::path_of(&dir.join(&key)));
        for local in [&file, &journal_file] {
            let _ = std::fs::remove_file(local);
        }
        // The journal before the file (autotuner_store::journal: the order readers keep).
        let journal = remote
            .get_journal(&key)
            .await
            .context("read the dataset's journal from object storage")?;
        if let Some(lines) = journal {
            autotuner_store::write_atomically(&journal_file, &lines)?;
        }
        if remote
            .get_file(&key, &file)
            .await
            .context("read the dataset from object storage")?
        {
            tracing::info!(key, "continuing the dataset in object storage");
        }
    }
    Ok(())
}

/// What the working copy stored that object storage does not hold yet (an upload failed, or is
/// about to be made).
#[derive(Debug, Default)]
pub struct Unsent {
    /// Each stored sample's split and id.
    pub samples: Vec<(Split, String)>,
    /// The annotation files' changes, in the order they were made.
    pub writes: Vec<StoreWrite>,
    /// Images of samples a rolling split replaced.
    pub replaced: Vec<String>,
}

impl Unsent {
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.writes.is_empty() && self.replaced.is_empty()
    }

    /// Adds a stored batch: its samples and what its flush wrote.
    pub fn add(&mut self, samples: Vec<(Split, String)>, flushed: Flushed) {
        self.samples.extend(samples);
        self.writes.extend(flushed.for_store);
        self.replaced.extend(flushed.removed);
    }
}

/// What an [`upload`] put and deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    pub images: usize,
    /// Annotation files put whole.
    pub files: usize,
    /// Journal segments put, and the bytes they held.
    pub segments: usize,
    pub segment_bytes: usize,
    /// Journal objects a file put whole made redundant, deleted.
    pub compacted: usize,
}

/// Puts what `unsent` names from the working copy in `dir`: the images first, then each
/// annotation file written whole (once: the working copy holds its latest), then the journal
/// segments it does not hold, so that no annotation ever names a missing image and a reader
/// (segments, then the file) always sees a consistent split. Then the segments the files hold and
/// the replaced images are deleted, and the uploaded images leave the working copy.
pub async fn upload(remote: &Location, dir: &Path, unsent: &Unsent) -> anyhow::Result<Uploaded> {
    let mut uploaded = Uploaded::default();
    for (split, id) in &unsent.samples {
        let key = format!("{}/images/{id}.jpg", split.dir());
        let path = dir.join(&key);
        if path.exists() {
            remote.put_file(&key, &path).await?;
            uploaded.images += 1;
        }
    }
    // Each file written whole and the last journal entry it holds (the latest write's).
    let mut whole: BTreeMap<&str, u64> = BTreeMap::new();
    for write in &unsent.writes {
        if let StoreWrite::Whole { key, seq } = write {
            whole.insert(key, *seq);
        }
    }
    for key in whole.keys() {
        remote.put_file(key, &dir.join(key)).await?;
        uploaded.files += 1;
    }
    for write in &unsent.writes {
        if let StoreWrite::Segment(segment) = write
            && whole
                .get(segment.file.as_str())
                .is_none_or(|&held| segment.last > held)
        {
            remote.put_segment(segment).await?;
            uploaded.segments += 1;
            uploaded.segment_bytes += segment.lines.len();
        }
    }
    for (split, id) in &unsent.samples {
        let _ = std::fs::remove_file(dir.join(format!("{}/images/{id}.jpg", split.dir())));
    }
    // Garbage at worst when a delete fails (a segment the file holds is skipped by its readers
    // and deleted by the next compaction; an image nothing names), never a dangling reference.
    for (key, held) in whole {
        match remote.compact_journal(key, held).await {
            Ok(deleted) => uploaded.compacted += deleted,
            Err(e) => {
                tracing::warn!(key, error = %e, "could not delete the journal a rewritten annotation file holds")
            }
        }
    }
    for key in &unsent.replaced {
        if let Err(e) = remote.delete(key).await {
            tracing::warn!(key, error = %e, "could not delete a replaced image from object storage");
        }
    }
    Ok(uploaded)
}

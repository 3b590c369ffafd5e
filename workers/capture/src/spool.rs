//! The durable queue of selected frames waiting for the teacher. An entry is written (to a
//! temporary name, synced, renamed) before anything is sent, and removed only once its labels
//! are in the dataset, so an annotator outage, a network cut or a restart loses nothing. Entries
//! are named by their sample id: selecting the same frame again after a restart rewrites the same
//! entry instead of adding one. When the bound is reached the oldest entries go, counted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use autotuner_vision::Rect;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a selected frame is, besides its pictures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryMeta {
    /// Stable across restarts: the same frame always gets the same id.
    pub id: String,
    pub drift: bool,
    /// Stream time (files) or wall-clock time (live), milliseconds.
    pub time_ms: i64,
    /// When the frame was decoded, by this node's clock (milliseconds since the epoch; 0 in
    /// entries spooled before it was recorded): a round of collection counts the frames decoded
    /// after it began.
    #[serde(default)]
    pub decoded_at_ms: u64,
    pub frame_index: u64,
    pub width: u32,
    pub height: u32,
    /// `[x, y, width, height]` of each crop, in frame pixels.
    pub crops: Vec<[u32; 4]>,
}

impl EntryMeta {
    pub fn crop_rects(&self) -> Vec<Rect> {
        self.crops
            .iter()
            .map(|c| Rect::new(c[0], c[1], c[2], c[3]))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub meta: EntryMeta,
    /// One JPEG per crop, what the teacher sees.
    pub crops: Vec<Vec<u8>>,
    /// The whole frame as JPEG, what the dataset keeps.
    pub frame: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    meta: EntryMeta,
    crop_bytes: Vec<usize>,
    frame_bytes: usize,
}

const MAGIC: &[u8; 8] = b"ATSPOOL1";
const SUFFIX: &str = ".entry";

/// How many entries of each kind may wait for the teacher before a newer one replaces the
/// oldest of its kind (counted as superseded, not dropped). With a rolling dataset, labelling
/// more than a split keeps would only have the newer ones replace the older ones once stored:
/// when labelling lags behind selection (a slow or shared annotator), the frames labelled next
/// are the latest the camera showed, not minutes of backlog, so a drift check scores what the
/// camera shows now and a round after a drift trains on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Drift samples (labelled first).
    pub drift: usize,
    /// Training and evaluation samples.
    pub samples: usize,
}

impl Waiting {
    /// Every entry waits its turn (a file is labelled whole).
    pub const UNBOUNDED: Waiting = Waiting {
        drift: usize::MAX,
        samples: usize::MAX,
    };
}

/// A header names an id, times and a few crops: anything larger is damage.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Counters of what the bound and damage cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    pub dropped: u64,
    pub corrupt: u64,
    /// Entries replaced by newer ones of their kind before they were labelled (see [`Waiting`]).
    pub superseded: u64,
}

/// The one capture process that may use a spool (and, on a volume, the dataset beside it). A
/// replaced pod's successor starts while the old one still stores its last batch; two writers
/// would lose each other's annotation files and delete each other's half-written entries. The
/// kernel releases the lock when its holder exits, however it exits, so it never goes stale.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

/// What [`WriterLock::acquire`] found.
#[derive(Debug)]
pub enum Acquired {
    Held(WriterLock),
    /// `stop` returned true before the other writer let go.
    Stopped,
}

impl WriterLock {
    pub const FILE: &'static str = ".writer.lock";

    /// Takes the spool's writer lock in `dir`, waiting (and saying so once in the log) while
    /// another process holds it; gives up when `stop()` is true, checked every `poll`.
    pub fn acquire(
        dir: &Path,
        poll: std::time::Duration,
        stop: impl Fn() -> bool,
    ) -> Result<Acquired, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(Self::FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut said = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Acquired::Held(WriterLock { _file: file })),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
            if stop() {
                return Ok(Acquired::Stopped);
            }
            if !said {
                tracing::info!(
                    spool = %dir.display(),
                    "another capture process still uses this spool (a replaced pod storing its last batch): waiting for it to exit"
                );
                said = true;
            }
            std::thread::sleep(poll);
        }
    }
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_entries: usize,
    max_bytes: u64,
    /// id -> file size, in id order (ids sort by time).
    entries: BTreeMap<String, u64>,
    /// The ids of the entries that are drift samples.
    drift: BTreeSet<String>,
    waiting: Waiting,
    bytes: u64,
    stats: SpoolStats,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, finding what an earlier run left.
    /// Drift samples are handed out first, and at most `waiting` of each kind wait (see
    /// [`Waiting`]).
    pub fn open(
        dir: &Path,
        max_entries: usize,
        max_bytes: u64,
        waiting: Waiting,
    ) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir.join("tmp")).map_err(io(dir))?;
        let mut entries = BTreeMap::new();
        let mut drift = BTreeSet::new();
        let mut bytes = 0;
        for item in std::fs::read_dir(dir).map_err(io(dir))? {
            let item = item.map_err(io(dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(SUFFIX) {
                let size = item.metadata().map_err(io(&item.path()))?.len();
                // An unreadable header is found again (and set aside) when the entry is read.
                if read_header(&item.path()).is_ok_and(|h| h.meta.drift) {
                    drift.insert(id.to_string());
                }
                entries.insert(id.to_string(), size);
                bytes += size;
            }
        }
        // Half-written entries of a crash: their frames will be selected again or are lost with
        // the crash itself (they were never acknowledged to anyone).
        for item in std::fs::read_dir(dir.join("tmp")).map_err(io(dir))?.flatten() {
            let _ = std::fs::remove_file(item.path());
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_entries: max_entries.max(1),
            max_bytes,
            entries,
            drift,
            waiting: Waiting {
                drift: waiting.drift.max(1),
                samples: waiting.samples.max(1),
            },
            bytes,
            stats: SpoolStats::default(),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// Stores an entry durably; drops the oldest entries while over the bound. When the
    /// spool's volume is full, the oldest entries make room (each counted as dropped), and an
    /// entry larger than all the spool holds is itself dropped (counted): capture goes on
    /// selecting, never stops on a full disk, and no entry is left half-written.
    pub fn push(&mut self, entry: &Entry) -> Result<(), SpoolError> {
        let header = Header {
            meta: entry.meta.clone(),
            crop_bytes: entry.crops.iter().map(Vec::len).collect(),
            frame_bytes: entry.frame.len(),
        };
        let header = serde_json::to_vec(&header).expect("header serialises");
        let tmp = self.dir.join("tmp").join(&entry.meta.id);
        let path = self.path(&entry.meta.id);
        let size = (MAGIC.len()
            + 4
            + header.len()
            + entry.crops.iter().map(Vec::len).sum::<usize>()
            + entry.frame.len()) as u64;
        loop {
            match write_entry(&tmp, &path, &header, entry) {
                Ok(()) => break,
                Err(e) if is_full(&e) => {
                    // Emptying the whole spool for one entry is never worth it (and need not
                    // be enough: the volume may hold other files).
                    let Some(oldest) = self.entries.keys().next().cloned().filter(|_| size <= self.bytes)
                    else {
                        tracing::warn!(
                            id = entry.meta.id,
                            bytes = size,
                            "spool volume full: dropping this entry, larger than what the spool holds"
                        );
                        self.stats.dropped += 1;
                        return Ok(());
                    };
                    tracing::warn!(id = oldest, "spool volume full: dropping its oldest entry");
                    self.remove(&oldest)?;
                    self.stats.dropped += 1;
                }
                Err(e) => return Err(io(&tmp)(e)),
            }
        }
        sync_dir(&self.dir);
        let size = std::fs::metadata(&path).map_err(io(&path))?.len();
        if let Some(old) = self.entries.insert(entry.meta.id.clone(), size) {
            self.bytes -= old;
        }
        self.bytes += size;
        if entry.meta.drift {
            self.drift.insert(entry.meta.id.clone());
        }
        loop {
            let oldest = if entry.meta.drift {
                (self.drift.len() > self.waiting.drift).then(|| self.drift.first().cloned())
            } else {
                (self.entries.len() - self.drift.len() > self.waiting.samples)
                    .then(|| self.entries.keys().find(|id| !self.drift.contains(*id)).cloned())
            };
            let Some(Some(oldest)) = oldest else { break };
            tracing::debug!(
                id = oldest,
                "a newer frame replaces the oldest of its kind waiting"
            );
            self.remove(&oldest)?;
            self.stats.superseded += 1;
        }
        while self.entries.len() > self.max_entries || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            let (oldest, _) = self.entries.first_key_value().expect("not empty");
            let oldest = oldest.clone();
            tracing::warn!(id = oldest, "spool full: dropping its oldest entry");
            self.remove(&oldest)?;
            self.stats.dropped += 1;
        }
        Ok(())
    }

    /// Up to `n` entries to label next, each kind in time order: the drift samples first, but
    /// no more than half of the batch while other entries wait, so that an annotator that cannot
    /// keep up still labels training frames; unreadable ones are set aside and counted.
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<Entry>, SpoolError> {
        let drift: Vec<&String> = self.drift.iter().take(n).collect();
        let others: Vec<&String> = self
            .entries
            .keys()
            .filter(|id| !self.drift.contains(*id))
            .take(n)
            .collect();
        let from_drift = drift.len().min(n.div_ceil(2).max(n - others.len()));
        let ids: Vec<String> = drift[..from_drift]
            .iter()
            .chain(&others[..others.len().min(n - from_drift)])
            .map(|id| (*id).clone())
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let path = self.path(&id);
            match read_entry(&path) {
                Ok(entry) => out.push(entry),
                Err(e) => {
                    tracing::warn!(id, error = %e, "unreadable spool entry: set aside in spool/corrupt");
                    let aside = self.dir.join("corrupt");
                    std::fs::create_dir_all(&aside).map_err(io(&aside))?;
                    let _ = std::fs::rename(&path, aside.join(format!("{id}{SUFFIX}")));
                    if let Some(size) = self.entries.remove(&id) {
                        self.bytes -= size;
                    }
                    self.drift.remove(&id);
                    self.stats.corrupt += 1;
                }
            }
        }
        Ok(out)
    }

    /// Drops an entry that can never be labelled (counted as dropped).
    pub fn discard(&mut self, id: &str) -> Result<(), SpoolError> {
        self.remove(id)?;
        self.stats.dropped += 1;
        Ok(())
    }

    /// Forgets an entry whose labels are stored.
    pub fn remove(&mut self, id: &str) -> Result<(), SpoolError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        if let Some(size) = self.entries.remove(id) {
            self.bytes -= size;
        }
        self.drift.remove(id);
        Ok(())
    }
}

/// Writes an entry to `tmp`, syncs it and renames it to `path`; on failure nothing is left
/// at `tmp` (a full volume gets its space back).
fn write_entry(tmp: &Path, path: &Path, header: &[u8], entry: &Entry) -> std::io::Result<()> {
    let written = (|| {
        let mut file = File::create(tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&(header.len() as u32).to_le_bytes())?;
        file.write_all(header)?;
        for crop in &entry.crops {
            file.write_all(crop)?;
        }
        file.write_all(&entry.frame)?;
        file.sync_all()?;
        std::fs::rename(tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// The volume (or the user's quota on it) is full.
fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The header's length from an entry's first 12 bytes (magic, then a little-endian u32).
fn header_len(start: &[u8]) -> std::io::Result<usize> {
    if start.len() < 12 || &start[..8] != MAGIC {
        return Err(bad("not a spool entry"));
    }
    let len = u32::from_le_bytes(start[8..12].try_into().expect("4 bytes")) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(bad("header too large"));
    }
    Ok(len)
}

/// The header at the start of `bytes`, and where the pictures begin.
fn parse_header(bytes: &[u8]) -> std::io::Result<(Header, usize)> {
    let end = 12 + header_len(bytes)?;
    let header: Header = serde_json::from_slice(bytes.get(12..end).ok_or_else(|| bad("truncated"))?)
        .map_err(|e| bad(&e.to_string()))?;
    Ok((header, end))
}

/// An entry's header alone, without reading its pictures.
fn read_header(path: &Path) -> std::io::Result<Header> {
    let mut file = File::open(path)?;
    let mut bytes = vec![0u8; 12];
    file.read_exact(&mut bytes)?;
    bytes.resize(12 + header_len(&bytes)?, 0);
    file.read_exact(&mut bytes[12..])?;
    parse_header(&bytes).map(|(header, _)| header)
}

fn read_entry(path: &Path) -> std::io::Result<Entry> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    parse_entry(&bytes)
}

/// An entry from the bytes of its file: the header, then each crop and the frame. An entry that
/// does not parse is damaged (set aside by [`Spool::open`]), whatever its bytes say.
pub fn parse_entry(bytes: &[u8]) -> std::io::Result<Entry> {
    let (header, pictures) = parse_header(bytes)?;
    let mut at = pictures;
    let mut take = |n: usize| -> std::io::Result<Vec<u8>> {
        let end = at.checked_add(n).ok_or_else(|| bad("truncated"))?;
        let part = bytes.get(at..end).ok_or_else(|| bad("truncated"))?.to_vec();
        at = end;
        Ok(part)
    };
    let crops = header
        .crop_bytes
        .iter()
        .map(|&n| take(n))
        .collect::<std::io::Result<Vec<_>>>()?;
    let frame = take(header.frame_bytes)?;
    Ok(Entry {
        meta: header.meta,
        crops,
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, size: usize) -> Entry {
        Entry {
            meta: EntryMeta {
                id: id.into(),
                drift: false,
                time_ms: 0,
                decoded_at_ms: 0,
                frame_index: 0,
                width: 8,
                height: 8,
                crops: vec![[0, 0, 4, 4]],
            },
            crops: vec![vec![1; size]],
            frame: vec![2; size],
        }
    }

    fn drift_entry(id: &str) -> Entry {
        let mut e = entry(id, 10);
        e.meta.drift = true;
        e
    }

    #[test]
    fn drift_samples_go_first_and_only_the_latest_of_each_kind_wait_when_labelling_lags() {
        let dir = tempfile::tempdir().unwrap();
        let waiting = Waiting { drift: 2, samples: 3 };
        let mut spool = Spool::open(dir.path(), 100, 1 << 20, waiting).unwrap();
        for id in ["f00000001", "f00000002", "f00000004", "f00000006"] {
            spool.push(&entry(id, 10)).unwrap();
        }
        for id in ["f00000003", "f00000005", "f00000007"] {
            spool.push(&drift_entry(id)).unwrap();
        }
        // The oldest of each kind was replaced by a newer one, not dropped for lack of room.
        assert_eq!(spool.stats().superseded, 2);
        assert_eq!(spool.stats().dropped, 0);
        assert_eq!(spool.len(), 5);
        let ids = |batch: Vec<Entry>| batch.into_iter().map(|e| e.meta.id).collect::<Vec<_>>();
        assert_eq!(
            ids(spool.next_batch(3).unwrap()),
            ["f00000005", "f00000007", "f00000002"]
        );
        // A restart finds the same: which entries are drift samples is read back from disk.
        drop(spool);
        let mut spool = Spool::open(dir.path(), 100, 1 << 20, waiting).unwrap();
        assert_eq!(
            ids(spool.next_batch(10).unwrap()),
            ["f00000005", "f00000007", "f00000002", "f00000004", "f00000006"]
        );
        spool.remove("f00000005").unwrap();
        assert_eq!(ids(spool.next_batch(1).unwrap()), ["f00000007"]);
        spool.push(&entry("f00000008", 10)).unwrap();
        assert_eq!(
            ids(spool.next_batch(10).unwrap()),
            ["f00000007", "f00000004", "f00000006", "f00000008"]
        );
        // Unbounded (a file, labelled whole): drift samples still go first, nothing is replaced.
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 20, Waiting::UNBOUNDED).unwrap();
        for id in ["f00000001", "f00000002", "f00000004"] {
            spool.push(&entry(id, 10)).unwrap();
        }
        for id in ["f00000003", "f00000005", "f00000007"] {
            spool.push(&drift_entry(id)).unwrap();
        }
        assert_eq!(spool.stats().superseded, 0);
        // Half of a batch at most while others wait; the whole of it once none do.
        assert_eq!(
            ids(spool.next_batch(4).unwrap()),
            ["f00000003", "f00000005", "f00000001", "f00000002"]
        );
        for id in ["f00000001", "f00000002", "f00000004"] {
            spool.remove(id).unwrap();
        }
        assert_eq!(
            ids(spool.next_batch(4).unwrap()),
            ["f00000003", "f00000005", "f00000007"]
        );
    }

    #[test]
    fn a_second_writer_waits_until_the_first_lets_go_of_the_spool() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let poll = std::time::Duration::from_millis(5);
        let Acquired::Held(first) = WriterLock::acquire(dir.path(), poll, || false).unwrap() else {
            panic!("an unused spool is free");
        };
        // While the first holds it, a second gives up when told to stop, having waited.
        let polls = AtomicUsize::new(0);
        let stopped =
            WriterLock::acquire(dir.path(), poll, || polls.fetch_add(1, Ordering::SeqCst) >= 3).unwrap();
        assert!(matches!(stopped, Acquired::Stopped));
        assert_eq!(polls.load(Ordering::SeqCst), 4);
        // Once the first exits (here: drops it), the waiting one gets it.
        let waiter = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || WriterLock::acquire(&dir, poll, || false).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the second writer must wait");
        drop(first);
        assert!(matches!(waiter.join().unwrap(), Acquired::Held(_)));
        // The lock file is not mistaken for an entry.
        assert!(
            Spool::open(dir.path(), 10, 1 << 20, Waiting::UNBOUNDED)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn entries_survive_a_reopen_in_order_and_a_rewrite_does_not_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10, 1 << 20, Waiting::UNBOUNDED).unwrap();
        spool.push(&entry("f00000002", 10)).unwrap();
        spool.push(&entry("f00000001", 10)).unwrap();
        spool.push(&entry("f00000002", 10)).unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), 10, 1 << 20, Waiting::UNBOUNDED).unwrap();
        let got = spool.next_batch(5).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], entry("f00000001", 10));
        spool.remove("f00000001").unwrap();
        assert_eq!(spool.next_batch(5).unwrap()[0].meta.id, "f00000002");
    }

    /// An entry's bytes with a header saying anything (a damaged or foreign file).
    fn entry_bytes(header: &str, pictures: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend((header.len() as u32).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(pictures);
        bytes
    }

    #[test]
    fn an_entry_whose_sizes_do_not_fit_its_bytes_is_refused_not_a_panic() {
        let meta =
            r#"{"id":"f1","drift":false,"timeMs":0,"frameIndex":1,"width":8,"height":8,"crops":[[0,0,4,4]]}"#;
        let ok = entry_bytes(
            &format!(r#"{{"meta":{meta},"crop_bytes":[2],"frame_bytes":3}}"#),
            b"ab123",
        );
        let entry = parse_entry(&ok).unwrap();
        assert_eq!(
            (entry.crops, entry.frame),
            (vec![b"ab".to_vec()], b"123".to_vec())
        );
        for (crops, frame) in [
            // A size past the end of usize: the sum would wrap around (and panic in debug builds).
            (format!("[{}]", usize::MAX), 0),
            (format!("[2,{}]", usize::MAX - 1), 0),
            ("[2]".to_string(), usize::MAX),
            ("[6]".to_string(), 0),
        ] {
            let bytes = entry_bytes(
                &format!(r#"{{"meta":{meta},"crop_bytes":{crops},"frame_bytes":{frame}}}"#),
                b"ab123",
            );
            let err = parse_entry(&bytes).unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::InvalidData,
                "{crops} {frame}: {err}"
            );
        }
        assert!(parse_entry(b"ATSPOOL1").is_err());
        assert!(parse_entry(&entry_bytes("{", b"")).is_err());
    }

    /// The environment of [`full_volume_body`]: the tmpfs it works in, and a file outside it
    /// that it writes when every assertion held. Private to this test and its child process,
    /// not configuration (hence not in `autotuner_api::contract`).
    const SMALL_VOLUME: &str = "SPOOL_TEST_SMALL_VOLUME";
    const SMALL_VOLUME_DONE: &str = "SPOOL_TEST_SMALL_VOLUME_DONE";

    #[test]
    fn on_a_full_volume_the_oldest_entries_make_room_and_none_is_half_written() {
        // A real full volume: a 256 KiB tmpfs, which needs a mount namespace. The body runs in
        // this test binary again, under `unshare` (a user namespace in which it may mount).
        let volume = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let done = outside.path().join("done");
        let status = std::process::Command::new("unshare")
            .args(["--map-root-user", "--mount", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size=256k tmpfs "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(volume.path())
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "spool::tests::full_volume_body",
                "--ignored",
                "--nocapture",
            ])
            .env(SMALL_VOLUME, volume.path())
            .env(SMALL_VOLUME_DONE, &done)
            .status()
            .expect("unshare (util-linux) runs");
        assert!(status.success(), "the body failed: {status}");
        assert!(done.is_file(), "the body did not run to its end");
    }

    #[test]
    #[ignore = "run inside a 256 KiB tmpfs by on_a_full_volume_the_oldest_entries_make_room_and_none_is_half_written"]
    fn full_volume_body() {
        let volume = PathBuf::from(std::env::var_os(SMALL_VOLUME).expect("run by the outer test"));
        let dir = volume.join("spool");
        // No bound of the spool's own: only the volume limits it.
        let mut spool = Spool::open(&dir, usize::MAX, u64::MAX, Waiting::UNBOUNDED).unwrap();
        let id = |i: usize| format!("f{i:08}");
        // 30 entries of 40 KiB: a handful fit.
        for i in 0..30 {
            spool.push(&entry(&id(i), 20 << 10)).unwrap();
        }
        let kept = spool.len();
        assert!((3..30).contains(&kept), "{kept} entries kept");
        assert_eq!(spool.stats().dropped as usize, 30 - kept);
        // The newest are kept, whole, in order; nothing half-written is left behind.
        let expected: Vec<String> = (30 - kept..30).map(id).collect();
        let assert_whole = |spool: &mut Spool| {
            let got = spool.next_batch(100).unwrap();
            assert_eq!(
                got.iter().map(|e| e.meta.id.clone()).collect::<Vec<_>>(),
                expected
            );
            for e in &got {
                assert_eq!(*e, entry(&e.meta.id, 20 << 10));
            }
            assert_eq!(spool.stats().corrupt, 0);
            assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        };
        assert_whole(&mut spool);
        // An entry larger than all the spool holds is dropped, not paid for with the others.
        spool.push(&entry(&id(99), 200 << 10)).unwrap();
        assert_eq!(spool.stats().dropped as usize, 30 - kept + 1);
        assert_whole(&mut spool);
        // What a restart finds is the same.
        drop(spool);
        let mut reopened = Spool::open(&dir, usize::MAX, u64::MAX, Waiting::UNBOUNDED).unwrap();
        assert_whole(&mut reopened);
        std::fs::write(std::env::var_os(SMALL_VOLUME_DONE).unwrap(), b"ok").unwrap();
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_and_damage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3, 1 << 20, Waiting::UNBOUNDED).unwrap();
        for i in 0..5 {
            spool.push(&entry(&format!("f{i:08}"), 10)).unwrap();
        }
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.stats().dropped, 2);
        assert_eq!(spool.next_batch(1).unwrap()[0].meta.id, "f00000002");
        std::fs::write(dir.path().join("f00000002.entry"), b"ATSPOOL1garbage").unwrap();
        let got = spool.next_batch(3).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(spool.stats().corrupt, 1);
        assert!(dir.path().join("corrupt/f00000002.entry").exists());
    }
}

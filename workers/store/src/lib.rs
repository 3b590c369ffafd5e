//! Where the workers keep datasets and models: a local directory (a mounted volume; the default)
//! or a prefix in S3-compatible object storage. It knows nothing of Kubernetes: the workers read
//! the contract's environment and pass what they found in [`S3Options`].
//!
//! The trainer works on local files (image decoding, memory-mapped caches, checkpoints), so a
//! remote dataset is mirrored into a local folder first ([`Location::mirror_dataset`]) and its
//! results are put back object by object. Every write goes to a temporary name first (local) or
//! is a single PUT (S3), so a reader never sees half a file.

pub mod journal;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use serde::Deserialize;
use sha2::Digest;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{uri}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("object storage ({uri}): {source}")]
    Store {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{uri}: {message}")]
    Download { uri: String, message: String },
    #[error("{uri}: expected sha256 {expected}, the file has {actual}")]
    Checksum {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("{uri}: not a COCO annotation file: {source}")]
    Annotations {
        uri: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{uri}: {source}")]
    Journal {
        uri: String,
        #[source]
        source: journal::JournalError,
    },
}

/// How to reach an S3-compatible service; credentials come from the standard `AWS_*`
/// environment (set from a Secret reference by the operator), never from here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// The service's URL (MinIO, Ceph, ...); `None`: AWS. `http://` is allowed for in-cluster
    /// services.
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// A URI for logs and errors: no user information, no query or fragment (presigned URLs and
/// cameras carry credentials there).
///
/// Everything up to the last `@` goes, not only a well-formed authority's user information: a
/// password typed with a `/` in it (`rtsp://admin:pa/ss@cam/stream`) must not show either,
/// whatever a URL parser would make of it. An `@` after a `?` or `#` is either in a query or in
/// a password with one of those: nothing but the scheme shows then.
pub fn redact_uri(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => match (rest.find(['?', '#']), rest.rfind('@')) {
            (Some(query), Some(at)) if query < at => format!("{scheme}://…"),
            (_, at) => {
                let rest = at.map_or(rest, |at| &rest[at + 1..]);
                let hidden = if rest.contains(['?', '#']) { "?…" } else { "" };
                let rest = rest.split(['?', '#']).next().unwrap_or("");
                format!("{scheme}://{rest}{hidden}")
            }
        },
        None => uri.to_string(),
    }
}

/// The one way a worker gets a model file: `file://` or a plain path (used where it is),
/// `http(s)://` (downloaded) or `s3://bucket/key` (fetched with the `AWS_*` credentials), each
/// download written into `dir` whole or not at all. With `sha256`, a file whose digest differs
/// is refused.
pub async fn fetch_model(
    uri: &str,
    sha256: Option<&str>,
    s3: &S3Options,
    dir: &Path,
) -> Result<PathBuf, StoreError> {
    let shown = redact_uri(uri);
    let bad = |reason: &str| StoreError::BadUri {
        uri: shown.clone(),
        reason: reason.to_string(),
    };
    let file_name = |key: &str| {
        let name = key
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("model.onnx");
        // One file per URI: two models named model.onnx at two places must not overwrite
        // each other while one of them is in use.
        let digest = format!("{:x}", sha2::Sha256::digest(uri.as_bytes()));
        format!("{}-{name}", &digest[..16])
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let path = if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected s3://bucket/key"))?;
        if key.is_empty() {
            return Err(bad("expected s3://bucket/key"));
        }
        let location = Location::parse(&format!("s3://{bucket}"), s3)?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let target = dir.join(file_name(key));
        if !location.get_file(key, &target).await? {
            return Err(StoreError::Download {
                uri: shown,
                message: "no such object".into(),
            });
        }
        target
    } else if uri.starts_with("http://") || uri.starts_with("https://") {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let failed = |e: reqwest::Error| StoreError::Download {
            uri: shown.clone(),
            // reqwest's errors name the URL, query and all: the redacted one is in `uri`.
            message: e.without_url().to_string(),
        };
        let response = reqwest::get(uri)
            .await
            .and_then(|r| r.error_for_status())
            .map_err(failed)?;
        let bytes = response.bytes().await.map_err(failed)?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = uri.split(['?', '#']).next().unwrap_or(uri);
        let target = dir.join(file_name(path));
        write_atomically(&target, &bytes)?;
        target
    } else if uri.contains("://") && !uri.starts_with("file://") {
        return Err(bad("a model URI must be file://, http://, https:// or s3://"));
    } else {
        let path = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
        if !path.is_file() {
            return Err(StoreError::Download {
                uri: shown,
                message: "no such file".into(),
            });
        }
        path
    };
    if let Some(expected) = sha256 {
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let actual = format!("{:x}", sha2::Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(StoreError::Checksum {
                uri: shown,
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(path)
}

/// A dataset or model location: a directory, or a bucket and prefix.
#[derive(Debug, Clone)]
pub struct Location {
    uri: String,
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    local: Option<PathBuf>,
}

/// What [`Location::mirror_dataset`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrored {
    pub annotation_files: usize,
    /// Annotation files asked for that the store does not have.
    pub annotations_missing: Vec<String>,
    /// Images fetched now.
    pub images_fetched: usize,
    /// Images already in the mirror from an earlier run (a restarted pod).
    pub images_present: usize,
    /// Images the annotations name that the store does not have (the trainer counts and skips
    /// them as bad samples).
    pub images_missing: usize,
}

#[derive(Deserialize)]
struct Coco {
    #[serde(default)]
    images: Vec<CocoImage>,
}

#[derive(Deserialize)]
struct CocoImage {
    file_name: String,
}

impl Location {
    /// `s3://bucket/prefix`, `file:///dir` or a plain directory path.
    pub fn parse(uri: &str, s3: &S3Options) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(s3.region.clone().unwrap_or_else(|| "us-east-1".into()));
            if let Some(endpoint) = &s3.endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            let store = builder.build().map_err(|e| bad(&e.to_string()))?;
            return Ok(Self {
                uri: uri.trim_end_matches('/').to_string(),
                store: Arc::new(store),
                prefix: Key::from(prefix.trim_matches('/')),
                local: None,
            });
        }
        if uri.contains("://") && !uri.starts_with("file://") {
            return Err(bad("expected s3://bucket/prefix, file:///path or a path"));
        }
        let dir = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            uri: uri.to_string(),
            store: Arc::new(store),
            prefix: Key::default(),
            local: Some(dir),
        })
    }

    /// The directory, when the location is one.
    pub fn local_dir(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// The URI of `key` (a `/`-separated path below the location).
    pub fn uri_of(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.uri.trim_end_matches('/'),
            key.trim_start_matches('/')
        )
    }

    fn key(&self, key: &str) -> Key {
        self.prefix.parts().chain(Key::from(key).parts()).collect()
    }

    fn error(&self, key: &str, source: object_store::Error) -> StoreError {
        StoreError::Store {
            uri: self.uri_of(key),
            source,
        }
    }

    /// Copies `key` to the file `dest` (written whole or not at all); `Ok(false)` when there is
    /// no such object.
    pub async fn get_file(&self, key: &str, dest: &Path) -> Result<bool, StoreError> {
        if let Some(linked) = self.link_local(key, dest)? {
            return Ok(linked);
        }
        let object = match self.store.get(&self.key(key)).await {
            Ok(object) => object,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.error(key, e)),
        };
        let bytes = object.bytes().await.map_err(|e| self.error(key, e))?;
        write_atomically(dest, &bytes)?;
        Ok(true)
    }

    /// The bytes of `key`; `None` when there is no such object. Read, not linked: for files
    /// their writer appends to (a link would follow the appends).
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(dir) = &self.local {
            return read_if_present(&dir.join(key));
        }
        match self.store.get(&self.key(key)).await {
            Ok(object) => Ok(Some(
                object.bytes().await.map_err(|e| self.error(key, e))?.to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// The journal of the annotation file at `key` (see [`journal`]): in a directory the file
    /// its writer appends to; in object storage its segments in sequence order, after the
    /// journal object an earlier version put whole, if any. `None` when there is none.
    pub async fn get_journal(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let whole = self.get_bytes(&journal::key_of(key)).await?;
        if self.local.is_some() {
            return Ok(whole);
        }
        let segments = self.segments(key).await?;
        if whole.is_none() && segments.is_empty() {
            return Ok(None);
        }
        let mut lines = whole.unwrap_or_default();
        for (segment, _) in segments {
            // `None`: a writer that put the file whole deleted it since the listing; the file,
            // read after the journal, holds its entries.
            if let Some(bytes) = self.get_bytes(&segment).await? {
                lines.extend_from_slice(&bytes);
            }
        }
        Ok(Some(lines))
    }

    /// Stores a flush's journal entries as a segment of their own (object storage cannot append).
    pub async fn put_segment(&self, segment: &journal::Segment) -> Result<(), StoreError> {
        let key = segment.key();
        self.store
            .put(&self.key(&key), PutPayload::from(segment.lines.clone()))
            .await
            .map_err(|e| self.error(&key, e))?;
        Ok(())
    }

    /// Deletes the journal entries that the annotation file at `key`, just put whole, holds
    /// (those up to sequence number `held`): the segments that end there or before, and a
    /// journal object an earlier version put whole. Returns how many objects it deleted.
    pub async fn compact_journal(&self, key: &str, held: u64) -> Result<usize, StoreError> {
        if self.local.is_some() {
            // A directory's journal is the file its writer appends to and empties itself.
            return Ok(0);
        }
        let mut held_objects: Vec<String> = self
            .segments(key)
            .await?
            .into_iter()
            .filter(|(_, (_, last))| *last <= held)
            .map(|(segment, _)| segment)
            .collect();
        let legacy = journal::key_of(key);
        match self.store.head(&self.key(&legacy)).await {
            Ok(_) => held_objects.push(legacy),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.error(&legacy, e)),
        }
        for object in &held_objects {
            self.delete(object).await?;
        }
        Ok(held_objects.len())
    }

    /// The journal segments of the annotation file at `key` in object storage, in sequence
    /// order: each one's key and the first and last sequence number it holds.
    async fn segments(&self, key: &str) -> Result<Vec<(String, (u64, u64))>, StoreError> {
        let folder = journal::segments_of(key);
        let mut segments = Vec::new();
        let mut listing = self.store.list(Some(&self.key(&folder)));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.error(&folder, e))?;
            if let Some(name) = meta.location.filename()
                && let Some(range) = journal::segment_range(name)
            {
                segments.push((format!("{folder}/{name}"), range));
            }
        }
        segments.sort_by_key(|(_, range)| *range);
        Ok(segments)
    }

    /// In a directory, `key` hard-linked at `dest` on the same filesystem: nothing is copied,
    /// and since every writer replaces files by renaming, the link keeps the content it had.
    /// `None` when that cannot be done here (not a directory, another filesystem).
    fn link_local(&self, key: &str, dest: &Path) -> Result<Option<bool>, StoreError> {
        let Some(dir) = &self.local else {
            return Ok(None);
        };
        if !Path::new(key)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Ok(None);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match std::fs::remove_file(dest) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(dest)(e)),
            _ => {}
        }
        let source = dir.join(key);
        // link(2) fails with ENOENT when a writer renames a new file over `key` between the
        // lookup and the link (the old inode has no name left), although `key` never stops
        // existing: try again while it is there, then fall back to reading it.
        for _ in 0..LINK_ATTEMPTS {
            match std::fs::hard_link(&source, dest) {
                Ok(()) => return Ok(Some(true)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.exists() => {
                    return Ok(Some(false));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Deletes `key`; an object that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(&self.key(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Stores the file `src` as `key`, replacing any object there.
    pub async fn put_file(&self, key: &str, src: &Path) -> Result<(), StoreError> {
        let bytes = tokio::fs::read(src).await.map_err(|source| StoreError::Io {
            path: src.to_path_buf(),
            source,
        })?;
        self.store
            .put(&self.key(key), PutPayload::from(bytes))
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(())
    }

    /// Mirrors COCO annotation files (keys such as `train/annotations.json`) and the images they
    /// name (relative to each file's folder) into `dir`, fetching only what the mirror lacks, so
    /// a restarted Job resumes cheaply. Image names that would leave the dataset (absolute, or
    /// with `..`) are not fetched; the trainer reports them missing.
    pub async fn mirror_dataset(&self, annotation_keys: &[&str], dir: &Path) -> Result<Mirrored, StoreError> {
        let mut mirrored = Mirrored::default();
        let mut images: Vec<String> = Vec::new();
        for &key in annotation_keys {
            let dest = dir.join(key);
            // The journal before the file: see `journal` for why that order is consistent.
            let journal_key = match self.local {
                Some(_) => journal::key_of(key),
                None => journal::segments_of(key),
            };
            let journal = self.get_journal(key).await?;
            if !self.get_file(key, &dest).await? {
                mirrored.annotations_missing.push(key.to_string());
                continue;
            }
            mirrored.annotation_files += 1;
            let text = std::fs::read(&dest).map_err(|source| StoreError::Io {
                path: dest.clone(),
                source,
            })?;
            let not_coco = |source| StoreError::Annotations {
                uri: self.uri_of(key),
                source,
            };
            let coco: Coco = match journal.filter(|j| !j.is_empty()) {
                None => serde_json::from_slice(&text).map_err(not_coco)?,
                // The split whole in the mirror, so that the trainer reads one file.
                Some(journal) => {
                    let mut whole: serde_json::Value = serde_json::from_slice(&text).map_err(not_coco)?;
                    journal::replay(&mut whole, &journal).map_err(|source| StoreError::Journal {
                        uri: self.uri_of(&journal_key),
                        source,
                    })?;
                    write_atomically(&dest, &serde_json::to_vec(&whole).expect("JSON serialises"))?;
                    serde_json::from_value(whole).map_err(not_coco)?
                }
            };
            let folder = key.rsplit_once('/').map_or("", |(folder, _)| folder);
            for image in coco.images {
                let inside = Path::new(&image.file_name)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
                if inside {
                    images.push(
                        format!("{folder}/{}", image.file_name)
                            .trim_start_matches('/')
                            .to_string(),
                    );
                }
            }
        }
        images.sort();
        images.dedup();
        let results: Vec<Result<Option<bool>, StoreError>> = futures::stream::iter(images)
            .map(|key| async move {
                let dest = dir.join(&key);
                if dest.is_file() {
                    return Ok(None);
                }
                self.get_file(&key, &dest).await.map(Some)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for result in results {
            match result? {
                None => mirrored.images_present += 1,
                Some(true) => mirrored.images_fetched += 1,
                Some(false) => mirrored.images_missing += 1,
            }
        }
        Ok(mirrored)
    }
}

/// Links tried while a writer keeps replacing the file, before reading it instead.
const LINK_ATTEMPTS: usize = 8;

/// The bytes of the file at `path`; `None` when there is none. Any other failure is an error
/// naming the path.
pub fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename: a reader sees the old file
/// or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        // On disk before the rename, so that a crash leaves the old content or the new one,
        // never an empty file under the final name.
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shown_uri_has_no_user_information_query_or_fragment() {
        use super::redact_uri;
        assert_eq!(
            redact_uri("rtsp://admin:s3cret@cam.local:554/stream1"),
            "rtsp://cam.local:554/stream1"
        );
        assert_eq!(
            redact_uri("https://h/model.onnx?X-Amz-Signature=abc"),
            "https://h/model.onnx?…"
        );
        assert_eq!(redact_uri("s3://bucket/key#frag"), "s3://bucket/key?…");
        // A password with the characters a URL would have percent-encoded.
        assert_eq!(redact_uri("rtsp://admin:pa/ss@cam/stream"), "rtsp://cam/stream");
        assert_eq!(redact_uri("rtsp://admin:p@ss@cam/s"), "rtsp://cam/s");
        assert_eq!(redact_uri("rtsp://admin:pa?ss@cam/s"), "rtsp://…");
        assert_eq!(redact_uri("http://cam/s?token=ab@cd"), "http://…");
        assert_eq!(redact_uri("/data/video.mp4"), "/data/video.mp4");
    }

    use super::*;

    /// The capture worker rewrites a split's annotation file (a rename over it) after every
    /// batch while a training Job takes its snapshot: each link finds the file, old or new (a bare
    /// link(2) failed with ENOENT when the rename came between its lookup and the link, and a
    /// Job then trained on a snapshot without its eval split).
    #[tokio::test]
    async fn a_file_renamed_over_while_it_is_linked_is_always_found() {
        let dir = tempfile::tempdir().unwrap();
        let (volume, snapshot) = (dir.path().join("volume"), dir.path().join("snapshot"));
        std::fs::create_dir_all(volume.join("eval")).unwrap();
        let file = volume.join("eval/annotations.json");
        write_atomically(&file, b"{}").unwrap();
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let (stop, rewrites) = (
            std::sync::Arc::new(AtomicBool::new(false)),
            std::sync::Arc::new(AtomicU64::new(0)),
        );
        let writer = {
            let (file, stop, rewrites) = (file.clone(), stop.clone(), rewrites.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = rewrites.fetch_add(1, Ordering::Relaxed);
                    write_atomically(&file, format!("{{\"n\": {n}}}").as_bytes()).unwrap();
                }
            })
        };
        let location = Location::parse(volume.to_str().unwrap(), &S3Options::default()).unwrap();
        let dest = snapshot.join("eval/annotations.json");
        let (mut links, mut lost) = (0, 0);
        // Linked over and over while the writer replaces the file 300 times (each write syncs).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while rewrites.load(Ordering::Relaxed) < 300 && std::time::Instant::now() < deadline {
            if !location.get_file("eval/annotations.json", &dest).await.unwrap() {
                lost += 1;
            }
            assert!(std::fs::read_to_string(&dest).is_ok_and(|t| t.starts_with('{')));
            links += 1;
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(links > 300, "{links} links");
        assert_eq!(lost, 0, "links that did not find a file that was always there");
    }

    #[tokio::test]
    async fn a_local_dataset_is_mirrored_by_hard_links_that_keep_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let (volume, snapshot) = (dir.path().join("volume"), dir.path().join("snapshot"));
        std::fs::create_dir_all(volume.join("train/images")).unwrap();
        let coco = r#"{"images": [{"file_name": "images/a.jpg"}, {"file_name": "images/gone.jpg"}, {"file_name": "../../etc/passwd"}]}"#;
        std::fs::write(volume.join("train/annotations.json"), coco).unwrap();
        std::fs::write(volume.join("train/images/a.jpg"), b"jpeg a").unwrap();
        let location = Location::parse(volume.to_str().unwrap(), &S3Options::default()).unwrap();
        let mirrored = location
            .mirror_dataset(&["train/annotations.json"], &snapshot)
            .await
            .unwrap();
        assert_eq!((mirrored.images_fetched, mirrored.images_missing), (1, 1));
        use std::os::unix::fs::MetadataExt;
        let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            inode(&volume.join("train/images/a.jpg")),
            inode(&snapshot.join("train/images/a.jpg")),
            "linked, not copied"
        );
        // The writer replaces the annotation file by a rename: the snapshot keeps what it took.
        std::fs::write(volume.join("train/annotations.json.tmp"), "{}").unwrap();
        std::fs::rename(
            volume.join("train/annotations.json.tmp"),
            volume.join("train/annotations.json"),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(snapshot.join("train/annotations.json")).unwrap(),
            coco
        );
        assert!(!dir.path().join("etc").exists());
    }

    /// Object storage held in memory: listing, puts and deletes as a bucket's (the capture's
    /// tests run the same against a real S3 server).
    fn in_memory() -> Location {
        Location {
            uri: "s3://datasets/site/hall".into(),
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: Key::from("site/hall"),
            local: None,
        }
    }

    fn added(range: std::ops::RangeInclusive<u64>) -> Vec<journal::Entry> {
        range
            .map(|seq| journal::Entry {
                seq,
                change: journal::Change::Add {
                    image: serde_json::json!({ "id": seq, "file_name": format!("images/{seq}.jpg") }),
                    annotations: vec![],
                },
            })
            .collect()
    }

    fn lines(entries: &[journal::Entry]) -> Vec<u8> {
        entries.iter().flat_map(journal::Entry::line).collect()
    }

    #[tokio::test]
    async fn a_journal_in_object_storage_is_its_segments_in_order_and_a_file_put_whole_deletes_those_it_holds()
     {
        let store = in_memory();
        let key = "train/annotations.json";
        assert_eq!(store.get_journal(key).await.unwrap(), None);
        let put = |key: String, bytes: Vec<u8>| {
            let store = &store;
            async move {
                store
                    .store
                    .put(&store.key(&key), PutPayload::from(bytes))
                    .await
                    .unwrap()
            }
        };
        // A journal an earlier version put whole (1-2), segments put in any order, and an object
        // in their folder that is not one.
        put(journal::key_of(key), lines(&added(1..=2))).await;
        for range in [5..=5, 3..=4, 6..=8] {
            store
                .put_segment(&journal::Segment::of(key, &added(range)).unwrap())
                .await
                .unwrap();
        }
        put(format!("{}/notes.txt", journal::segments_of(key)), b"x".to_vec()).await;
        assert_eq!(
            store.get_journal(key).await.unwrap().unwrap(),
            lines(&added(1..=8))
        );

        // The file put whole, holding 1-5: the old journal and the segments up to 5 go.
        let file = serde_json::json!({
            "info": { "journal": 5 },
            "images": added(1..=5).iter().map(|e| match &e.change {
                journal::Change::Add { image, .. } => image.clone(),
                journal::Change::Drop { .. } => unreachable!(),
            }).collect::<Vec<_>>(),
            "annotations": [],
        });
        put(key.into(), serde_json::to_vec(&file).unwrap()).await;
        assert_eq!(store.compact_journal(key, 5).await.unwrap(), 3);
        assert_eq!(
            store.get_journal(key).await.unwrap().unwrap(),
            lines(&added(6..=8))
        );
        assert_eq!(
            store.compact_journal(key, 5).await.unwrap(),
            0,
            "nothing more it holds"
        );

        // The trainer's mirror: the file with the segments it does not hold.
        let mirror = tempfile::tempdir().unwrap();
        let mirrored = store.mirror_dataset(&[key], mirror.path()).await.unwrap();
        assert_eq!((mirrored.annotation_files, mirrored.images_missing), (1, 8));
        let whole: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mirror.path().join(key)).unwrap()).unwrap();
        let ids: Vec<u64> = whole["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (1..=8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_directory_keeps_its_appended_journal_and_has_nothing_to_compact() {
        let dir = tempfile::tempdir().unwrap();
        let key = "train/annotations.json";
        std::fs::create_dir_all(dir.path().join("train")).unwrap();
        std::fs::write(dir.path().join(journal::key_of(key)), lines(&added(1..=3))).unwrap();
        let location = Location::parse(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        assert_eq!(
            location.get_journal(key).await.unwrap().unwrap(),
            lines(&added(1..=3))
        );
        assert_eq!(location.compact_journal(key, 3).await.unwrap(), 0);
        assert!(
            dir.path().join(journal::key_of(key)).exists(),
            "its writer empties it"
        );
    }

    #[test]
    fn uris_are_parsed_or_refused_with_a_reason() {
        let s3 = Location::parse("s3://datasets/site/cam-1/", &S3Options::default()).unwrap();
        assert!(s3.local_dir().is_none());
        assert_eq!(
            s3.key("train/annotations.json").as_ref(),
            "site/cam-1/train/annotations.json"
        );
        assert_eq!(
            s3.uri_of("models/1.onnx"),
            "s3://datasets/site/cam-1/models/1.onnx"
        );
        let bucket_only = Location::parse("s3://datasets", &S3Options::default()).unwrap();
        assert_eq!(bucket_only.key("models/1.onnx").as_ref(), "models/1.onnx");
        for bad in ["s3://", "gs://bucket/x", "http://example.com/data"] {
            let e = Location::parse(bad, &S3Options::default()).unwrap_err();
            assert!(matches!(e, StoreError::BadUri { .. }), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn a_local_dataset_is_mirrored_once_and_names_outside_it_are_not_fetched() {
        let (source_dir, mirror_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, mirror) = (source_dir.path(), mirror_dir.path());
        std::fs::create_dir_all(source.join("train/images")).unwrap();
        std::fs::write(source.join("train/images/a.jpg"), b"a").unwrap();
        std::fs::write(source.join("secret"), b"s").unwrap();
        let coco = r#"{"images": [{"file_name": "images/a.jpg"}, {"file_name": "images/gone.jpg"},
                                  {"file_name": "../secret"}, {"file_name": "/etc/passwd"}]}"#;
        std::fs::write(source.join("train/annotations.json"), coco).unwrap();
        let location = Location::parse(source.to_str().unwrap(), &S3Options::default()).unwrap();
        let keys = ["train/annotations.json", "eval/annotations.json"];
        let first = location.mirror_dataset(&keys, mirror).await.unwrap();
        assert_eq!(
            first,
            Mirrored {
                annotation_files: 1,
                annotations_missing: vec!["eval/annotations.json".into()],
                images_fetched: 1,
                images_present: 0,
                images_missing: 1
            }
        );
        assert_eq!(std::fs::read(mirror.join("train/images/a.jpg")).unwrap(), b"a");
        assert!(!mirror.join("secret").exists());
        let again = location.mirror_dataset(&keys, mirror).await.unwrap();
        assert_eq!((again.images_fetched, again.images_present), (0, 1));
    }

    #[tokio::test]
    async fn a_split_with_a_journal_is_mirrored_whole_and_the_writers_files_are_left_alone() {
        let (source_dir, mirror_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, mirror) = (source_dir.path(), mirror_dir.path());
        std::fs::create_dir_all(source.join("train/images")).unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(source.join(format!("train/images/{name}.jpg")), name).unwrap();
        }
        // The file holds a and b (entries up to 2); the journal repeats those, drops a, adds c.
        let file = r#"{"info": {"journal": 2}, "images": [{"id": 1, "file_name": "images/a.jpg"},
                       {"id": 2, "file_name": "images/b.jpg"}], "annotations": []}"#;
        std::fs::write(source.join("train/annotations.json"), file).unwrap();
        let add = |seq: u64, id: u64, name: &str| journal::Entry {
            seq,
            change: journal::Change::Add {
                image: serde_json::json!({ "id": id, "file_name": format!("images/{name}.jpg") }),
                annotations: vec![],
            },
        };
        let drop_a = journal::Entry {
            seq: 3,
            change: journal::Change::Drop { image_id: 1 },
        };
        let lines: Vec<u8> = [add(1, 1, "a"), add(2, 2, "b"), drop_a, add(4, 3, "c")]
            .iter()
            .flat_map(journal::Entry::line)
            .collect();
        std::fs::write(source.join("train/annotations.jsonl"), &lines).unwrap();
        let location = Location::parse(source.to_str().unwrap(), &S3Options::default()).unwrap();
        let mirrored = location
            .mirror_dataset(&["train/annotations.json"], mirror)
            .await
            .unwrap();
        assert_eq!(
            (mirrored.images_fetched, mirrored.images_missing),
            (2, 0),
            "b and c, not a"
        );
        let whole: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mirror.join("train/annotations.json")).unwrap()).unwrap();
        let names: Vec<&str> = whole["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["file_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["images/b.jpg", "images/c.jpg"]);
        assert_eq!(whole["info"]["journal"], 4);
        assert!(
            !mirror.join("train/annotations.jsonl").exists(),
            "the trainer reads one file"
        );
        assert_eq!(
            std::fs::read_to_string(source.join("train/annotations.json")).unwrap(),
            file
        );
        assert_eq!(
            std::fs::read(source.join("train/annotations.jsonl")).unwrap(),
            lines
        );
    }
}

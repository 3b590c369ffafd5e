//! The frozen-feature cache: the cut values of every training view, computed once and read every
//! epoch. Items are stored as f32 while they fit the memory budget, as f16 (half the memory,
//! a relative rounding error below 1e-3 on the features) when only that fits, and otherwise in a
//! file of f32 that is read back for every batch (disk reads instead of memory).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::f16;
use serde::Serialize;

#[derive(Debug)]
enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Spill { file: File, path: PathBuf },
}

/// How the cache holds its items, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CacheKind {
    F32,
    F16,
    Spill,
}

#[derive(Debug)]
pub struct FeatureCache {
    item_len: usize,
    items: usize,
    storage: Storage,
}

impl FeatureCache {
    /// A cache for `capacity` items of `item_len` values within `budget_bytes` of memory;
    /// `spill_dir` holds the file when memory is not enough.
    pub fn new(
        item_len: usize,
        capacity: usize,
        budget_bytes: usize,
        spill_dir: &Path,
    ) -> std::io::Result<Self> {
        let values = item_len * capacity;
        let storage = if values * 4 <= budget_bytes {
            Storage::F32(Vec::with_capacity(values))
        } else if values * 2 <= budget_bytes {
            Storage::F16(Vec::with_capacity(values))
        } else {
            std::fs::create_dir_all(spill_dir)?;
            // One file per cache: a job holds two (training and eval views).
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = spill_dir.join(format!("features-{}-{n}.f32", std::process::id()));
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            Storage::Spill { file, path }
        };
        Ok(Self {
            item_len,
            items: 0,
            storage,
        })
    }

    pub fn kind(&self) -> CacheKind {
        match self.storage {
            Storage::F32(_) => CacheKind::F32,
            Storage::F16(_) => CacheKind::F16,
            Storage::Spill { .. } => CacheKind::Spill,
        }
    }

    /// Bytes held in memory or on disk.
    pub fn bytes(&self) -> usize {
        self.items * self.item_len * if self.kind() == CacheKind::F16 { 2 } else { 4 }
    }

    pub fn len(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    pub fn item_len(&self) -> usize {
        self.item_len
    }

    pub fn push(&mut self, item: &[f32]) -> std::io::Result<()> {
        assert_eq!(item.len(), self.item_len, "cache items have one size");
        match &mut self.storage {
            Storage::F32(v) => v.extend_from_slice(item),
            Storage::F16(v) => v.extend(item.iter().map(|&x| f16::from_f32(x))),
            Storage::Spill { file, .. } => {
                let bytes: Vec<u8> = item.iter().flat_map(|v| v.to_le_bytes()).collect();
                file.write_all(&bytes)?;
            }
        }
        self.items += 1;
        Ok(())
    }

    /// Copies item `i` into `out`.
    pub fn get(&self, i: usize, out: &mut [f32]) -> std::io::Result<()> {
        assert!(i < self.items && out.len() == self.item_len);
        let range = i * self.item_len..(i + 1) * self.item_len;
        match &self.storage {
            Storage::F32(v) => out.copy_from_slice(&v[range]),
            Storage::F16(v) => {
                for (o, x) in out.iter_mut().zip(&v[range]) {
                    *o = x.to_f32();
                }
            }
            Storage::Spill { file, .. } => {
                let mut bytes = vec![0u8; self.item_len * 4];
                file.read_exact_at(&mut bytes, (range.start * 4) as u64)?;
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes(c.try_into().expect("4 bytes"));
                }
            }
        }
        Ok(())
    }
}

impl Drop for FeatureCache {
    fn drop(&mut self) {
        if let Storage::Spill { path, .. } = &self.storage {
            std::fs::remove_file(path).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_storage_returns_what_was_stored() {
        let dir = std::env::temp_dir().join(format!("autotuner-cache-{}", std::process::id()));
        let items: Vec<Vec<f32>> = (0..5)
            .map(|i| (0..1000).map(|j| (i * 1000 + j) as f32 * 0.01 - 3.0).collect())
            .collect();
        for (budget, kind) in [
            (1 << 20, CacheKind::F32),
            (12_000, CacheKind::F16),
            (100, CacheKind::Spill),
        ] {
            let mut cache = FeatureCache::new(1000, 5, budget, &dir).unwrap();
            assert_eq!(cache.kind(), kind);
            for item in &items {
                cache.push(item).unwrap();
            }
            let mut out = vec![0.0; 1000];
            for (i, item) in items.iter().enumerate().rev() {
                cache.get(i, &mut out).unwrap();
                let worst = out
                    .iter()
                    .zip(item)
                    .map(|(a, b)| ((a - b) / b.abs().max(1.0)).abs())
                    .fold(0.0, f32::max);
                let tolerance = if kind == CacheKind::F16 { 1e-3 } else { 0.0 };
                assert!(worst <= tolerance, "{kind:?}: {worst}");
            }
        }
        // Two spilled caches side by side keep their own items.
        let mut a = FeatureCache::new(1000, 5, 100, &dir).unwrap();
        let mut b = FeatureCache::new(1000, 5, 100, &dir).unwrap();
        a.push(&items[0]).unwrap();
        b.push(&items[1]).unwrap();
        let mut out = vec![0.0; 1000];
        a.get(0, &mut out).unwrap();
        assert_eq!(out, items[0]);
        drop((a, b));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "spill files are removed"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}

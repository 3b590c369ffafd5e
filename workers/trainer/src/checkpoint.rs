//! Checkpoints: after every epoch the trainable tensors, the optimiser's moments, the best
//! tensors so far and the history go to one file, written to a temporary name and renamed, so a
//! pod killed at any moment leaves the previous checkpoint whole. A restarted job with the same
//! inputs and settings continues from the next epoch.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::report::EpochRecord;

const MAGIC: &[u8; 8] = b"ATCKPT01";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// Inputs and settings the checkpoint belongs to.
    pub fingerprint: String,
    /// Epochs done.
    pub epoch: usize,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_ap: f64,
    /// The length of each tensor, in the order they follow the header (four groups: values,
    /// first moments, second moments, best values).
    pub lengths: Vec<usize>,
    pub adam_step: u64,
    /// Whether a fifth group follows: the weight average (absent in checkpoints of jobs without
    /// one, and in those written before it existed).
    #[serde(default)]
    pub averaged: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub header: Header,
    pub values: Vec<Vec<f32>>,
    pub first_moments: Vec<Vec<f32>>,
    pub second_moments: Vec<Vec<f32>>,
    pub best: Vec<Vec<f32>>,
    /// The weight average, for a job that keeps one.
    pub averaged: Option<Vec<Vec<f32>>>,
}

pub fn save(path: &Path, c: &Checkpoint) -> std::io::Result<()> {
    let header = Header {
        averaged: c.averaged.is_some(),
        ..c.header.clone()
    };
    let header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(MAGIC)?;
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        let groups = [&c.values, &c.first_moments, &c.second_moments, &c.best];
        for group in groups.into_iter().chain(c.averaged.as_ref()) {
            for t in group {
                for v in t {
                    f.write_all(&v.to_le_bytes())?;
                }
            }
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

/// The checkpoint at `path`, `Ok(None)` when there is none.
pub fn load(path: &Path) -> std::io::Result<Option<Checkpoint>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |m: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {m}", path.display()),
        )
    };
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad("not a trainer checkpoint"));
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let header: Header = serde_json::from_slice(bytes.get(16..16 + n).ok_or_else(|| bad("truncated"))?)
        .map_err(|e| bad(&e.to_string()))?;
    let mut floats = bytes[16 + n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
    let groups = 4 + usize::from(header.averaged);
    let total: usize = header.lengths.iter().sum::<usize>() * groups;
    if bytes.len() - 16 - n != total * 4 {
        return Err(bad("truncated tensors"));
    }
    let mut group = || -> Vec<Vec<f32>> {
        header
            .lengths
            .iter()
            .map(|&l| floats.by_ref().take(l).collect())
            .collect()
    };
    let (values, first_moments, second_moments, best) = (group(), group(), group(), group());
    let averaged = header.averaged.then(group);
    Ok(Some(Checkpoint {
        header,
        values,
        first_moments,
        second_moments,
        best,
        averaged,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_and_a_torn_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("autotuner-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("checkpoint.bin");
        assert_eq!(load(&path).unwrap(), None);
        let c = Checkpoint {
            header: Header {
                fingerprint: "abc".into(),
                epoch: 2,
                history: vec![],
                best_epoch: 1,
                best_ap: 0.3,
                lengths: vec![3, 1],
                adam_step: 20,
                averaged: true,
            },
            values: vec![vec![1.0, 2.0, 3.0], vec![4.0]],
            first_moments: vec![vec![0.1, 0.2, 0.3], vec![0.4]],
            second_moments: vec![vec![0.5, 0.6, 0.7], vec![0.8]],
            best: vec![vec![9.0, 8.0, 7.0], vec![6.0]],
            averaged: Some(vec![vec![1.5, 2.5, 3.5], vec![4.5]]),
        };
        save(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap(), Some(c.clone()));
        // A job without a weight average writes four groups and reads back none.
        let plain = Checkpoint {
            header: Header {
                averaged: false,
                ..c.header.clone()
            },
            averaged: None,
            ..c
        };
        save(&path, &plain).unwrap();
        assert_eq!(load(&path).unwrap(), Some(plain));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(load(&path).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}

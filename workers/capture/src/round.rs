//! The round of collection the operator declared (`status.dataset.roundStartedAt`) and this
//! worker's count of its images. The round is told by the time it began, on this node's clock,
//! and counts the frames decoded since, however long they waited for the teacher: a frame
//! selected before a drift and labelled after it is of the scene that drifted.

use std::sync::Mutex;

use crate::dataset::{Dataset, Split};

/// Images of the round in each split, counted for the round that began at `since_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub since_ms: u64,
    pub train: u64,
    pub eval: u64,
}

/// Shared by the status reporter, which learns when the round began, and the labelling loop,
/// which counts its images as it stores them.
#[derive(Debug, Default)]
pub struct RoundCounter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    since_ms: Option<u64>,
    counted: Option<Counted>,
}

impl RoundCounter {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The round began at `since_ms` (`None`: the first round, which is not counted here).
    pub fn begin(&self, since_ms: Option<u64>) {
        self.state().since_ms = since_ms;
    }

    /// Whether a round began that has not been counted yet.
    pub fn stale(&self) -> bool {
        let state = self.state();
        state.since_ms.is_some() && state.counted.map(|c| c.since_ms) != state.since_ms
    }

    /// Counts the round's images in `dataset`.
    pub fn count(&self, dataset: &Dataset) {
        let Some(since_ms) = self.state().since_ms else {
            return;
        };
        let counted = Counted {
            since_ms,
            train: dataset.count_since(Split::Train, since_ms),
            eval: dataset.count_since(Split::Eval, since_ms),
        };
        let mut state = self.state();
        // The round may have moved on while counting; the next count catches up.
        if state.since_ms == Some(since_ms) {
            state.counted = Some(counted);
        }
    }

    /// The count of the round now under way, once there is one.
    pub fn counted(&self) -> Option<Counted> {
        let state = self.state();
        state.counted.filter(|c| Some(c.since_ms) == state.since_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{DatasetConfig, Sample};

    #[test]
    fn a_new_round_is_not_counted_until_the_dataset_is_counted_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = DatasetConfig {
            eval_size: 0,
            ..DatasetConfig::default()
        };
        let mut dataset = Dataset::open(dir.path(), config, vec![(1, "person".into())]).unwrap();
        for (id, decoded_at_ms) in [("a", 1_000), ("b", 3_000)] {
            let sample = Sample {
                id,
                time_ms: 0,
                decoded_at_ms,
                width: 8,
                height: 8,
                jpeg: b"jpeg",
                labels: &[],
                unlabelled: &[],
            };
            dataset.add(&sample, false).unwrap();
        }
        let round = RoundCounter::default();
        round.count(&dataset);
        assert_eq!(
            round.counted(),
            None,
            "the first round is the operator's to count"
        );
        assert!(!round.stale());
        round.begin(Some(2_000));
        assert!(round.stale());
        round.count(&dataset);
        assert_eq!(
            round.counted(),
            Some(Counted {
                since_ms: 2_000,
                train: 1,
                eval: 0
            })
        );
        // A later round: the last count no longer speaks for it.
        round.begin(Some(4_000));
        assert_eq!(round.counted(), None);
        round.count(&dataset);
        assert_eq!(round.counted().map(|c| c.train), Some(0));
    }
}

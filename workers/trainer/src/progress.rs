//! Progress of a long stage: a bar with the time spent and an estimate of the time left on a
//! terminal, a log line every few seconds otherwise (a pod's log, CI). Shared by the trainer and
//! `autotuner` (capture, fine-tune, evaluation), so every stage reads the same.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the log line repeats when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// No estimate before this much of a stage has run: the first items are not typical (caches
/// warm, threads start).
const ESTIMATE_AFTER: Duration = Duration::from_secs(2);

/// Shows progress: a bar on a terminal, a log line every few seconds otherwise.
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    last_log: Instant,
    stage: String,
    /// When the stage (re)started, and its count then: the pace is measured from there, so a
    /// stage that comes back (the fine-tune after an evaluation, a resumed job) is not credited
    /// with the items done before.
    started: Instant,
    started_at: usize,
    last_done: usize,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            terminal: std::io::stderr().is_terminal(),
            last_log: now,
            stage: String::new(),
            started: now,
            started_at: 0,
            last_done: 0,
        }
    }

    /// `done` of `total` items of `stage`. A new stage name, or a count that goes back, starts
    /// the stage's clock anew.
    pub fn update(&mut self, stage: &str, done: usize, total: usize, detail: &str) {
        if stage != self.stage || done < self.last_done {
            self.stage = stage.to_string();
            self.started = Instant::now();
            self.started_at = done;
        }
        self.last_done = done;
        let elapsed = self.started.elapsed();
        let left = time_left(
            elapsed,
            done.saturating_sub(self.started_at),
            total.saturating_sub(self.started_at),
        );
        if self.terminal {
            let width = 30;
            let filled = (done.min(total) * width).checked_div(total).unwrap_or(width);
            eprint!(
                "\r{stage:>10} [{}{}] {done}/{total} {detail}{}\x1b[K",
                "#".repeat(filled),
                "-".repeat(width - filled),
                timing(elapsed, left, done >= total)
            );
            if done >= total {
                eprintln!();
            }
        } else if self.last_log.elapsed() >= LOG_EVERY || done >= total {
            self.last_log = Instant::now();
            tracing::info!(
                stage,
                done,
                total,
                detail,
                elapsed_seconds = elapsed.as_secs(),
                left_seconds = left.map(|l| l.as_secs()),
                "progress"
            );
        }
    }
}

/// The time `total - done` more items take at the pace of the `done` so far, once the stage has
/// run long enough to tell.
pub fn time_left(elapsed: Duration, done: usize, total: usize) -> Option<Duration> {
    if done == 0 || done >= total || elapsed < ESTIMATE_AFTER {
        return None;
    }
    Some(elapsed.mul_f64((total - done) as f64 / done as f64))
}

/// " · 1m05s, about 2m10s left", " · 12s", or " · done in 3m02s".
fn timing(elapsed: Duration, left: Option<Duration>, finished: bool) -> String {
    match (finished, left) {
        (true, _) => format!(" · done in {}", short(elapsed)),
        (false, Some(left)) => format!(" · {}, about {} left", short(elapsed), short(left)),
        (false, None) => format!(" · {}", short(elapsed)),
    }
}

/// A duration as a person reads it on a progress line: "42s", "3m05s", "1h02m".
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_is_the_pace_so_far_times_the_items_left() {
        let left = time_left(Duration::from_secs(30), 10, 40).unwrap();
        assert_eq!(left, Duration::from_secs(90));
    }

    #[test]
    fn there_is_no_estimate_before_the_first_item_nor_in_the_first_seconds_nor_at_the_end() {
        assert_eq!(time_left(Duration::from_secs(30), 0, 40), None);
        assert_eq!(time_left(Duration::from_millis(500), 10, 40), None);
        assert_eq!(time_left(Duration::from_secs(30), 40, 40), None);
    }

    #[test]
    fn durations_read_as_seconds_minutes_or_hours() {
        assert_eq!(short(Duration::from_secs(42)), "42s");
        assert_eq!(short(Duration::from_secs(185)), "3m05s");
        assert_eq!(short(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn the_line_says_elapsed_and_left_while_running_and_the_total_when_done() {
        let running = timing(Duration::from_secs(65), Some(Duration::from_secs(130)), false);
        assert_eq!(running, " · 1m05s, about 2m10s left");
        assert_eq!(timing(Duration::from_secs(182), None, true), " · done in 3m02s");
    }

    #[test]
    fn a_new_stage_or_a_count_that_goes_back_restarts_the_clock() {
        let mut p = Progress::new();
        p.terminal = false;
        p.update("features", 5, 10, "");
        let first = p.started;
        std::thread::sleep(Duration::from_millis(5));
        p.update("features", 6, 10, "");
        assert_eq!(p.started, first);
        p.update("eval", 1, 10, "");
        assert!(p.started > first);
        let second = p.started;
        std::thread::sleep(Duration::from_millis(5));
        p.update("eval", 0, 10, "");
        assert!(p.started > second);
    }

    #[test]
    fn a_stage_that_comes_back_is_paced_only_by_what_it_does_after() {
        let mut p = Progress::new();
        p.terminal = false;
        p.update("fine-tune", 20, 40, "");
        p.update("evaluate", 5, 5, "");
        p.update("fine-tune", 21, 40, "");
        assert_eq!(p.started_at, 21);
        // Its clock counts from 21: 10 more items in 10 s leave 9 items, about 9 s.
        p.started -= Duration::from_secs(10);
        p.update("fine-tune", 31, 40, "");
        let left = time_left(p.started.elapsed(), 31 - p.started_at, 40 - p.started_at).unwrap();
        assert!((8.9..9.5).contains(&left.as_secs_f64()), "{left:?}");
    }
}

//! Stragglers: blocks that run far longer than their task's blocks usually take.
//!
//! # Ownership
//! The actor owns one [`BlockTimes`] per task, fed with the measured time of every
//! successful attempt it applies, and asks [`StragglerRule::threshold`] whether a block
//! workers report as running has run too long.
//!
//! # Why a window of recent times
//! The median is taken over the last [`WINDOW`] successful attempts: bounded memory
//! whatever the block count (no per-block growth), exact over the window, and it follows a
//! task whose blocks get slower or faster as the run goes on. A P² estimator would use less
//! memory but never forgets; 4 KiB per task is nothing, and the median is only computed a
//! few times a second while blocks of the task run.

use std::time::Duration;

/// Successful attempts the median is taken over (the most recent ones).
pub(crate) const WINDOW: usize = 1024;

/// Successful attempts needed before anything counts as a straggler: a median of two
/// blocks says little.
pub(crate) const MIN_SAMPLES: usize = 5;

/// The shortest running time that counts as a straggler, whatever the median: workers
/// report what runs at most four times a second, so a fast block may still be listed as
/// running a fraction of a second after it ended.
pub(crate) const STRAGGLER_FLOOR: Duration = Duration::from_secs(1);

/// The default factor: a block running 5× its task's median block time is a straggler.
pub const DEFAULT_STRAGGLER_FACTOR: f64 = 5.0;

/// The recent block times of one task.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockTimes {
    /// A ring of the last [`WINDOW`] times, in seconds.
    samples: Vec<f32>,
    /// Where the next sample goes once the ring is full.
    next: usize,
    /// Reused buffer for the selection.
    scratch: Vec<f32>,
}

impl BlockTimes {
    /// Feeds the time of one successful attempt.
    pub(crate) fn observe(&mut self, seconds: f32) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        if self.samples.len() < WINDOW {
            self.samples.push(seconds);
        } else {
            self.samples[self.next] = seconds;
            self.next = (self.next + 1) % WINDOW;
        }
    }

    /// The median of the recent times, once there are [`MIN_SAMPLES`].
    pub(crate) fn median(&mut self) -> Option<f64> {
        if self.samples.len() < MIN_SAMPLES {
            return None;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.samples);
        let middle = self.scratch.len() / 2;
        let (_, median, _) = self.scratch.select_nth_unstable_by(middle, f32::total_cmp);
        Some(f64::from(*median))
    }
}

/// When a running block is a straggler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StragglerRule {
    /// A block is a straggler once it ran this many times its task's median.
    pub(crate) factor: f64,
}

impl StragglerRule {
    /// How long a block of a task with `median` may run before it is a straggler.
    pub(crate) fn threshold(&self, median: f64) -> Duration {
        let scaled = Duration::try_from_secs_f64(median * self.factor).unwrap_or(Duration::MAX);
        scaled.max(STRAGGLER_FLOOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_needs_a_few_samples_and_follows_the_recent_ones() {
        let mut times = BlockTimes::default();
        for _ in 0..MIN_SAMPLES - 1 {
            times.observe(0.5);
        }
        assert_eq!(times.median(), None);
        times.observe(0.5);
        assert_eq!(times.median(), Some(0.5));
        for _ in 0..WINDOW {
            times.observe(2.0);
        }
        assert_eq!(times.median(), Some(2.0), "old times leave the window");
        assert_eq!(times.samples.len(), WINDOW, "memory stays bounded");
        times.observe(f32::NAN);
        assert_eq!(times.median(), Some(2.0));
    }

    #[test]
    fn the_threshold_is_the_factor_times_the_median_but_never_below_the_floor() {
        let rule = StragglerRule { factor: 5.0 };
        assert_eq!(rule.threshold(2.0), Duration::from_secs(10));
        assert_eq!(rule.threshold(0.001), STRAGGLER_FLOOR);
    }
}

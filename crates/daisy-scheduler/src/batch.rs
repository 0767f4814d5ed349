//! Batch sizing from measured block durations.

/// Tracks how long a task's blocks take and sizes dispatch batches.
#[derive(Debug, Clone)]
pub(crate) struct BatchSizer {
    /// Exponentially weighted mean seconds per block; `None` until measured.
    mean_seconds: Option<f64>,
}

impl BatchSizer {
    pub(crate) fn new() -> Self {
        Self { mean_seconds: None }
    }

    /// Feeds the measured duration of one attempt.
    pub(crate) fn observe(&mut self, seconds: f64) {
        let seconds = seconds.max(1e-7);
        self.mean_seconds = Some(match self.mean_seconds {
            None => seconds,
            Some(mean) => 0.9 * mean + 0.1 * seconds,
        });
    }

    /// How many blocks the next batch should hold: about `target_seconds`
    /// of work, at most `max_batch`, and at most a fair share of `ready`
    /// among `workers` (so no worker idles while another holds a backlog).
    pub(crate) fn batch_size(
        &self,
        target_seconds: f64,
        max_batch: usize,
        ready: u64,
        workers: u32,
    ) -> usize {
        let by_time = match self.mean_seconds {
            // Unknown block time: start small, grow once measured.
            None => 1,
            Some(mean) => (target_seconds / mean).floor().max(1.0) as usize,
        };
        let fair_share = (ready / u64::from(workers.max(1)) / 2).max(1) as usize;
        by_time.min(max_batch).min(fair_share).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_blocks_go_one_at_a_time_and_fast_blocks_in_batches() {
        let mut slow = BatchSizer::new();
        assert_eq!(slow.batch_size(0.1, 512, 1_000_000, 2), 1);
        slow.observe(5.0);
        assert_eq!(slow.batch_size(0.1, 512, 1_000_000, 2), 1);
        let mut fast = BatchSizer::new();
        fast.observe(1e-6);
        assert_eq!(fast.batch_size(0.1, 512, 1_000_000, 2), 512);
        assert_eq!(fast.batch_size(0.1, 512, 40, 2), 10, "a fair share of the ready blocks");
        assert_eq!(fast.batch_size(0.1, 512, 1, 2), 1);
    }
}

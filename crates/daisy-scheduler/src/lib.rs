//! daisy-scheduler.

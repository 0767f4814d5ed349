//! daisy-telemetry.

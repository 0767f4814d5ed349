//! daisy.

//! daisy-array.

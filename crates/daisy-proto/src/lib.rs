//! daisy-proto.

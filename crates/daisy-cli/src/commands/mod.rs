//! One module per `daisy` subcommand.

pub mod plan;

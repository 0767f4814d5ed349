//! One module per `daisy` subcommand.

pub mod plan;
pub mod run;

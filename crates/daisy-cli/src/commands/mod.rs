//! One module per subcommand.

pub mod cancel;
pub mod plan;
pub mod replica;
pub mod retry;
pub mod run;
pub mod runs;
pub mod status;
pub mod trace;
pub mod worker;

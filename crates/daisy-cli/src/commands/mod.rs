//! One module per subcommand.

pub mod plan;
pub mod replica;
pub mod run;
pub mod worker;

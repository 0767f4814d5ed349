//! Tests of daisy-worker with real child processes (Python and sh), one module per area.

mod command_process;
mod python_helper;
mod support;
mod worker_process;

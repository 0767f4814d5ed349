//! `daisy`: plan and run blockwise pipelines over huge nD volumes.

fn main() -> std::process::ExitCode {
    daisy_cli::daisy_main()
}

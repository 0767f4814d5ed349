//! `daisy-scheduler`: one scheduler replica of a run over NATS JetStream.

fn main() -> std::process::ExitCode {
    daisy_cli::scheduler_main()
}

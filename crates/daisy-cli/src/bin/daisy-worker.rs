//! `daisy-worker`: processes blocks of runs over NATS JetStream, anywhere.

fn main() -> std::process::ExitCode {
    daisy_cli::worker_main()
}

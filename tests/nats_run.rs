//! `daisy::nats::NatsRun` as a library user drives it: a TOML pipeline with
//! command processes, an embedded server, resume and the state dir's lock.

use std::sync::Arc;

use daisy::nats::embedded::EmbeddedServerError;
use daisy::nats::{NatsRun, NatsRunError, NatsRunOptions, ServerChoice};
use daisy::run_lock::LockHolder;
use daisy_core::{Pipeline, parse_pipeline};
use daisy_proto::RunId;
use daisy_worker::factory::{ChildEnvironment, check_processes, pipeline_processors};
use tokio_util::sync::CancellationToken;

const PIPELINE: &str = r#"
[[task]]
id = "touch"
total_roi = { offset = [0, 0], shape = [12, 12] }
read_roi = { offset = [0, 0], shape = [4, 4] }
write_roi = { offset = [1, 1], shape = [2, 2] }
max_workers = 2
command = ["sh", "-c", "touch \"block-$DAISY_BLOCK_ID\""]
"#;

fn embedded(state_dir: &std::path::Path) -> NatsRunOptions {
    let server = ServerChoice::Embedded {
        state_dir: state_dir.to_path_buf(),
        connection_name: None,
        holder: LockHolder::this_process("the nats_run test", "embedded NATS"),
    };
    NatsRunOptions::new(server, RunId::new("touch").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toml_pipeline_runs_on_an_embedded_server_and_resumes_with_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join(".daisy");
    let work_dir = dir.path().join("work");
    std::fs::create_dir_all(&work_dir).unwrap();
    let pipeline = Arc::new(Pipeline::new(parse_pipeline(PIPELINE).unwrap()).unwrap());
    check_processes(&pipeline, &work_dir).unwrap();
    let factory = pipeline_processors(ChildEnvironment::new(dir.path().join("logs"), &work_dir));

    let first = NatsRun::prepare(pipeline.clone(), embedded(&state_dir)).await.unwrap();
    assert!(!first.existed());
    let url_file = state_dir.join(daisy::nats::embedded::EMBEDDED_URL_FILE);
    assert_eq!(std::fs::read_to_string(&url_file).unwrap(), first.url());
    let refused = NatsRun::prepare(pipeline.clone(), embedded(&state_dir)).await;
    assert!(
        matches!(refused, Err(NatsRunError::EmbeddedServer(EmbeddedServerError::InUse { .. }))),
        "a second run of the state dir must be refused"
    );

    let report = first.run(Some(factory.clone()), CancellationToken::new()).await.unwrap();
    assert!(report.all_succeeded(), "{report:?}");
    let blocks = pipeline.num_blocks();
    assert_eq!(report.tasks[0].counters.completed, blocks);
    let touched = std::fs::read_dir(&work_dir).unwrap().count() as u64;
    assert_eq!(touched, blocks, "every block's command ran in the work dir");

    let again = NatsRun::prepare(pipeline.clone(), embedded(&state_dir)).await.unwrap();
    assert!(again.existed(), "the store under the state dir keeps the run");
    let report = again.run(Some(factory), CancellationToken::new()).await.unwrap();
    assert!(report.all_succeeded(), "{report:?}");
    assert_eq!(report.tasks[0].counters.skipped, blocks, "{report:?}");
}

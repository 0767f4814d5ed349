//! The run's spec and status in KV, written by the leader only, and only while its lease is
//! valid: the status by compare-and-set, refused once a later leader wrote it.

use std::time::Duration;

use daisy_core::{Pipeline, parse_pipeline};
use daisy_nats::{MetaError, RunStatus, RunStreams, TaskStatus};
use daisy_proto::layout_hash;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::election::LeaseGuard;
use super::{ReplicaError, ReplicaOptions};
use crate::RunSnapshot;

/// Publishes the spec if the run has none, or checks that the recorded one has our layout.
/// Returns whether the recorded text differs (a leader publishes ours then).
pub(super) async fn check_spec(
    streams: &RunStreams,
    options: &ReplicaOptions,
) -> Result<bool, ReplicaError> {
    let recorded =
        streams.get_spec().await.map_err(|e| ReplicaError::nats("reading the run's spec", e))?;
    let Some(text) = recorded else {
        streams
            .put_spec(&options.spec_toml)
            .await
            .map_err(|e| ReplicaError::nats("publishing the run's spec", e))?;
        return Ok(false);
    };
    let same = parse_pipeline(&text)
        .ok()
        .and_then(|specs| Pipeline::new(specs).ok())
        .is_some_and(|recorded| layout_hash(&recorded) == layout_hash(&options.pipeline));
    if !same {
        return Err(ReplicaError::LayoutChanged { run: options.run.clone() });
    }
    Ok(text != options.spec_toml)
}

/// Publishes the leader's spec: same blocks, other settings (workers, commands); workers
/// that start from now on use them.
pub(super) async fn publish_spec(
    streams: &RunStreams,
    options: &ReplicaOptions,
    guard: &LeaseGuard,
) -> Result<(), ReplicaError> {
    guard
        .check()
        .map_err(|_| ReplicaError::LeaseLost { run: options.run.clone(), epoch: guard.epoch() })?;
    streams
        .put_spec(&options.spec_toml)
        .await
        .map_err(|e| ReplicaError::nats("publishing the run's spec", e))?;
    Ok(())
}

/// Claims the run status for a new leader (its epoch; not finished; `daisy cancel`'s mark
/// cleared, so that workers serve the run again), before anything else is written: from
/// then on a deposed leader's status writes are refused.
pub(super) async fn claim_status(
    streams: &RunStreams,
    guard: &LeaseGuard,
) -> Result<(), ReplicaError> {
    let mut status = match streams.get_status().await {
        Ok(Some(status)) => status,
        Ok(None) => RunStatus::default(),
        Err(err) => {
            debug!(error = %err, "the run status is unreadable: writing a new one");
            RunStatus::default()
        }
    };
    if status.cancelled {
        info!(run = %streams.run(), "resuming a cancelled run");
    }
    status.cancelled = false;
    status.finished = false;
    status.epoch = guard.epoch();
    status.updated_unix_ms = crate::unix_ms_now();
    write_fenced(streams, guard, &status)
        .await
        .map_err(|e| ReplicaError::nats("claiming the run status", e))
}

/// Writes `status` if the lease is valid and no later leader wrote one; a later leader's
/// status deposes this one.
pub(super) async fn write_fenced(
    streams: &RunStreams,
    guard: &LeaseGuard,
    status: &RunStatus,
) -> Result<(), MetaError> {
    if guard.check().is_err() {
        return Err(MetaError::Deposed { ours: guard.epoch(), recorded: guard.epoch() });
    }
    match streams.put_status_fenced(status).await {
        Ok(_) => Ok(()),
        Err(err @ MetaError::Deposed { .. }) => {
            guard.lose("a later leader wrote the run status");
            Err(err)
        }
        Err(err) => Err(err),
    }
}

/// The status of `snapshot` as the leader of `epoch` writes it.
pub(super) fn status_of(
    snapshot: &RunSnapshot,
    epoch: u64,
    finished: bool,
    cancelled: bool,
) -> RunStatus {
    let tasks = snapshot
        .tasks
        .iter()
        .map(|task| {
            let c = task.counters;
            TaskStatus {
                id: task.id.clone(),
                counters: c,
                pending: c.pending(),
                first_error: task.first_error.as_ref().map(|e| {
                    format!(
                        "block {} attempt {} ({}): {}",
                        e.block_id, e.attempt, e.kind, e.message
                    )
                }),
                abandoned: task.abandoned.clone(),
                stragglers: task.stragglers.clone(),
            }
        })
        .collect();
    RunStatus {
        finished,
        succeeded: snapshot.all_succeeded(),
        epoch,
        updated_unix_ms: crate::unix_ms_now(),
        tasks,
        cancelled,
    }
}

/// Writes the live status every second until `stop`.
pub(super) async fn write_status(
    streams: RunStreams,
    mut snapshots: watch::Receiver<RunSnapshot>,
    guard: LeaseGuard,
    cancel_requested: CancellationToken,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let cancelled = cancel_requested.is_cancelled();
        let status = status_of(&snapshots.borrow_and_update(), guard.epoch(), false, cancelled);
        if status.tasks.is_empty() {
            // No counters yet: keep the last known ones (an earlier leader's) standing.
            continue;
        }
        match write_fenced(&streams, &guard, &status).await {
            Ok(()) => {}
            Err(MetaError::Deposed { .. }) => return,
            Err(err) => debug!(error = %err, "could not write the run status"),
        }
    }
}

/// Writes the final status of a leader (finished, or cancelled); logs a failure.
pub(super) async fn write_final_status(
    streams: &RunStreams,
    guard: &LeaseGuard,
    status: &RunStatus,
    what: &'static str,
) {
    if let Err(err) = write_fenced(streams, guard, status).await {
        warn!(run = %streams.run(), error = %err, "could not record that the run {what}");
    }
}

//! Stage: start-up, before the queue. **Restart reconciliation** and the
//! periodic reaper.
//!
//! After a restart (clean or `kill -9`), every unfinished execution gets an
//! answer:
//! - `queued`: nothing to do, the queue runs it;
//! - `running` with its container still running: taken back; the agent
//!   reconnects with its session key and resends what was not acknowledged;
//! - `running` with its container stopped: the container's end decides
//!   (`oom` if the OOM killer fired, else `agent_lost` / `sandbox_crashed`),
//!   with a detail saying the controller was down;
//! - `running` without a container: `agent_lost`.
//!
//! Then orphans (containers labelled with this instance and socket
//! directories with no live execution) are reaped. The same reaper, plus the
//! retention purge, runs periodically.

use std::collections::HashSet;
use std::time::Duration;

use protocol::{ControllerEvent, EventBody, FinalStatus};

use crate::launcher::{Launcher, Tasks};
use crate::queue::Slots;
use crate::relay::Relay;
use crate::sandbox::ContainerHandle;
use crate::store::{Execution, ExecutionStatus, StoreError};

/// How often the reaper and the retention purge run.
pub const REAP_INTERVAL: Duration = Duration::from_secs(60);

/// What reconciliation did, for the start-up log and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub n_queued: usize,
    pub taken_back: Vec<String>,
    pub finished: Vec<(String, FinalStatus)>,
    pub n_containers_reaped: usize,
    pub n_socket_dirs_reaped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("list unfinished executions")]
    ListUnfinished(#[source] StoreError),
}

/// Reconcile the store with Docker. Executions taken back are spawned on `tasks`.
pub async fn reconcile(
    launcher: &Launcher,
    slots: &Slots,
    tasks: &Tasks,
) -> Result<ReconcileReport, ReconcileError> {
    let mut report = ReconcileReport::default();
    let unfinished = launcher
        .store
        .list_unfinished()
        .await
        .map_err(ReconcileError::ListUnfinished)?;
    let mut live: HashSet<String> = HashSet::new();
    for execution in unfinished {
        match execution.status {
            ExecutionStatus::Queued => {
                report.n_queued += 1;
                live.insert(execution.id.clone());
            }
            _ => match decide(launcher, &execution).await {
                Decision::TakeBack => {
                    live.insert(execution.id.clone());
                    report.taken_back.push(execution.id.clone());
                    let permit = slots.try_acquire();
                    let span = tracing::info_span!("execution", execution_id = %execution.id);
                    let launcher = launcher.clone();
                    let shutdown = tasks.shutdown_token();
                    tasks.spawn(span, async move {
                        launcher.take_back(execution, shutdown).await;
                        drop(permit);
                    });
                }
                Decision::Finish { status, detail } => {
                    finish(launcher, &execution, status, &detail).await;
                    report.finished.push((execution.id.clone(), status));
                }
            },
        }
    }
    match launcher
        .sandbox
        .reap(&live, &launcher.instance, &launcher.config.server.run_dir)
        .await
    {
        Ok(reaped) => {
            report.n_containers_reaped = reaped.containers_removed.len();
            report.n_socket_dirs_reaped = reaped.socket_dirs_removed.len();
        }
        Err(error) => tracing::error!(%error, "start-up reaper failed"),
    }
    Ok(report)
}

enum Decision {
    TakeBack,
    Finish { status: FinalStatus, detail: String },
}

async fn decide(launcher: &Launcher, execution: &Execution) -> Decision {
    let Some(container_id) = &execution.container_id else {
        return Decision::Finish {
            status: FinalStatus::AgentLost,
            detail: "the controller stopped before the container was created".to_owned(),
        };
    };
    let handle = ContainerHandle {
        execution_id: execution.id.clone(),
        container_id: container_id.clone(),
    };
    match launcher.sandbox.is_running(&handle).await {
        Ok(true) => return Decision::TakeBack,
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(%error, execution_id = %execution.id, "cannot inspect the container");
        }
    }
    match launcher.sandbox.inspect_outcome(&handle).await {
        Ok(exit) if exit.oom_killed => Decision::Finish {
            status: FinalStatus::Oom,
            detail: "the memory limit was exceeded while the controller was down".to_owned(),
        },
        Ok(exit) if exit.exit_code == 2 || exit.exit_code == 137 => Decision::Finish {
            status: FinalStatus::SandboxCrashed,
            detail: format!(
                "the container ended with exit code {} while the controller was down",
                exit.exit_code
            ),
        },
        Ok(exit) => Decision::Finish {
            status: FinalStatus::AgentLost,
            detail: format!(
                "the container ended (exit code {}) while the controller was down",
                exit.exit_code
            ),
        },
        Err(_) => Decision::Finish {
            status: FinalStatus::AgentLost,
            detail: "the container disappeared while the controller was down".to_owned(),
        },
    }
}

async fn finish(launcher: &Launcher, execution: &Execution, status: FinalStatus, detail: &str) {
    tracing::info!(execution_id = %execution.id, status = status.as_str(), %detail, "reconciled");
    if let Some(container_id) = &execution.container_id {
        let handle = ContainerHandle {
            execution_id: execution.id.clone(),
            container_id: container_id.clone(),
        };
        if let Err(error) = launcher.sandbox.remove(&handle).await {
            tracing::warn!(%error, "cannot remove the container (the reaper will)");
        }
    }
    match Relay::open(
        launcher.store.clone(),
        launcher.hub.clone(),
        &execution.id,
        0,
    )
    .await
    {
        Ok(mut relay) => {
            let finished = EventBody::Controller(ControllerEvent::Finished {
                status,
                reason: Some(detail.to_owned()),
            });
            if let Err(error) = relay.record(vec![finished]).await {
                tracing::error!(%error, "cannot record the finished event");
            }
        }
        Err(error) => tracing::error!(%error, "cannot open the relay"),
    }
    if let Err(error) = launcher
        .store
        .set_status(&execution.id, ExecutionStatus::from(status), Some(detail))
        .await
    {
        tracing::error!(%error, "cannot store the final status");
    }
    launcher.hub.finish(&execution.id);
}

/// Every [`REAP_INTERVAL`]: remove orphans and purge old executions.
pub async fn reap_periodically(launcher: Launcher, tasks: Tasks) {
    let shutdown = tasks.shutdown_token();
    let mut interval = tokio::time::interval(REAP_INTERVAL);
    interval.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        // Exclusive: no execution is between claim and container creation.
        let _gate = launcher.creation_gate.write().await;
        let live: HashSet<String> = match launcher.store.list_unfinished().await {
            Ok(unfinished) => unfinished
                .into_iter()
                .map(|execution| execution.id)
                .collect(),
            Err(error) => {
                tracing::error!(%error, "reaper cannot list unfinished executions");
                continue;
            }
        };
        if let Err(error) = launcher
            .sandbox
            .reap(&live, &launcher.instance, &launcher.config.server.run_dir)
            .await
        {
            tracing::error!(%error, "periodic reaper failed");
        }
        launcher.control.retain_early_cancels(&live);
        let retention = &launcher.config.retention;
        let cutoff_ms = crate::store::now_ms() - i64::from(retention.days) * 86_400_000;
        match launcher
            .store
            .purge(cutoff_ms, retention.max_executions)
            .await
        {
            Ok(purged) if purged.n_executions > 0 => {
                tracing::info!(n_executions = purged.n_executions, "retention purge");
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "retention purge failed"),
        }
    }
}

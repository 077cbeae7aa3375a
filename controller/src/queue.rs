//! Stage: store → **queue** → launcher.
//!
//! The queue is durable because it is the store: an execution is `queued`
//! until [`Store::claim_next_queued`](crate::store::Store::claim_next_queued)
//! atomically moves it to `running`. This loop only decides *when* to claim:
//! never more than `queue.concurrency` executions run at once (a semaphore
//! permit travels with each execution task), and claiming stops as soon as
//! shutdown begins.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::launcher::{Launcher, Tasks};

/// How often the queue looks at the store even when nobody woke it (for
/// executions submitted through another controller process or missed wakes).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Back-off after the store failed to answer.
pub const STORE_RETRY: Duration = Duration::from_secs(1);

/// The concurrency limit shared by the queue and restart reconciliation.
#[derive(Clone)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
}

impl Slots {
    pub fn new(concurrency: u32) -> Slots {
        Slots {
            semaphore: Arc::new(Semaphore::new(concurrency.max(1) as usize)),
        }
    }

    /// Wait for a free slot.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.semaphore)
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed")
    }

    /// A slot if one is free now (reconciliation takes back what already
    /// runs, even past the limit).
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.semaphore).try_acquire_owned().ok()
    }

    pub fn n_free(&self) -> usize {
        self.semaphore.available_permits()
    }
}

/// Claim and launch executions until shutdown.
pub async fn run(launcher: Launcher, slots: Slots, tasks: Tasks) {
    let shutdown = tasks.shutdown_token();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.acquire() => permit,
        };
        let pass = launcher.creation_pass().await;
        let claimed = tokio::select! {
            () = shutdown.cancelled() => break,
            claimed = launcher.store.claim_next_queued() => claimed,
        };
        match claimed {
            Ok(Some(execution)) => {
                let span = tracing::info_span!("execution", execution_id = %execution.id);
                let launcher = launcher.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(span, async move {
                    launcher.run(execution, pass, shutdown).await;
                    drop(permit);
                });
            }
            Ok(None) => {
                drop((permit, pass));
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = launcher.control.woken() => {}
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            }
            Err(error) => {
                drop((permit, pass));
                tracing::error!(%error, "cannot claim queued executions");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(STORE_RETRY) => {}
                }
            }
        }
    }
    tracing::info!("queue stopped claiming");
}

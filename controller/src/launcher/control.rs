//! The launcher's remote control: how the API reaches running executions.
//!
//! The API never touches a container or an agent. It calls [`Control`], which
//! forwards a [`Command`] to the task that runs the execution. The registry
//! here is the single place that knows which executions run in this process
//! and which approval gates are waiting, so "approve twice" and "approve after
//! deny" are refused here, whatever the agent says.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

/// A person's answer to an approval gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub approve: bool,
    pub message: Option<String>,
    /// Who decided (token name or id); recorded in the event and the audit log.
    pub by: String,
}

/// What the API asks of a running execution's task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Cancel { reason: String },
    Approval { stage: String, decision: Decision },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("execution {execution_id} has no approval gate waiting at stage {stage:?}")]
    NotPending { execution_id: String, stage: String },
    #[error("approval gate {stage:?} of execution {execution_id} was already decided")]
    AlreadyDecided { execution_id: String, stage: String },
}

/// Outcome of [`Control::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The execution runs here; its task got the cancel and will finish it as
    /// `cancelled` (unless it already finished for another reason).
    Signalled,
    /// Nothing runs under that id in this process. If the launcher claims it
    /// later, it is cancelled before any container is created.
    NotRunning,
}

/// Cheap to clone; every clone talks to the same launcher.
#[derive(Clone, Default)]
pub struct Control {
    registry: Arc<Mutex<Registry>>,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    running: HashMap<String, mpsc::Sender<Command>>,
    /// Cancels that arrived before the launcher registered the execution.
    cancel_before_start: HashSet<String>,
    /// (execution, stage) gates waiting for a decision.
    pending_gates: HashSet<(String, String)>,
    /// (execution, stage) gates already decided; a second decision is a 409.
    decided_gates: HashSet<(String, String)>,
}

/// Capacity of each execution's command channel (cancels and decisions are rare).
const COMMAND_BUFFER: usize = 16;

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tell the queue to look for work now (a new execution was submitted).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves after the next [`Control::wake`] (or at once if one is pending).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Ask the execution to stop. It ends as `cancelled`.
    pub async fn cancel(&self, execution_id: &str) -> CancelOutcome {
        let sender = {
            let mut registry = self.lock();
            match registry.running.get(execution_id) {
                Some(sender) => sender.clone(),
                None => {
                    registry.cancel_before_start.insert(execution_id.to_owned());
                    return CancelOutcome::NotRunning;
                }
            }
        };
        let command = Command::Cancel {
            reason: "cancelled by request".to_owned(),
        };
        match sender.send(command).await {
            Ok(()) => CancelOutcome::Signalled,
            // The task ended between the lookup and the send.
            Err(_) => CancelOutcome::NotRunning,
        }
    }

    /// Forward a person's decision to the gate `stage` of a running execution.
    pub async fn decide_approval(
        &self,
        execution_id: &str,
        stage: &str,
        decision: Decision,
    ) -> Result<(), ApprovalError> {
        let key = (execution_id.to_owned(), stage.to_owned());
        let sender = {
            let mut registry = self.lock();
            if registry.decided_gates.contains(&key) {
                return Err(ApprovalError::AlreadyDecided {
                    execution_id: key.0,
                    stage: key.1,
                });
            }
            let sender = match registry.running.get(execution_id) {
                Some(sender) if registry.pending_gates.contains(&key) => sender.clone(),
                _ => {
                    return Err(ApprovalError::NotPending {
                        execution_id: key.0,
                        stage: key.1,
                    });
                }
            };
            registry.pending_gates.remove(&key);
            registry.decided_gates.insert(key.clone());
            sender
        };
        let command = Command::Approval {
            stage: stage.to_owned(),
            decision,
        };
        sender
            .send(command)
            .await
            .map_err(|_| ApprovalError::NotPending {
                execution_id: key.0,
                stage: key.1,
            })
    }

    /// Launcher side: the execution starts running in this process. Returns
    /// its command receiver, and whether a cancel arrived before it started.
    pub fn register(&self, execution_id: &str) -> (mpsc::Receiver<Command>, bool) {
        let (sender, receiver) = mpsc::channel(COMMAND_BUFFER);
        let mut registry = self.lock();
        let was_cancelled = registry.cancel_before_start.remove(execution_id);
        registry.running.insert(execution_id.to_owned(), sender);
        (receiver, was_cancelled)
    }

    /// Launcher side: the execution finished; forget its gates and channel.
    pub fn unregister(&self, execution_id: &str) {
        let mut registry = self.lock();
        registry.running.remove(execution_id);
        registry.cancel_before_start.remove(execution_id);
        registry.pending_gates.retain(|(id, _)| id != execution_id);
        registry.decided_gates.retain(|(id, _)| id != execution_id);
    }

    /// Launcher side: the agent asked for approval at `stage`.
    pub fn gate_opened(&self, execution_id: &str, stage: &str) {
        let key = (execution_id.to_owned(), stage.to_owned());
        let mut registry = self.lock();
        if !registry.decided_gates.contains(&key) {
            registry.pending_gates.insert(key);
        }
    }

    /// Launcher side: the gate was decided without the API (its timeout
    /// fired), so a late decision is refused as already decided.
    pub fn gate_closed(&self, execution_id: &str, stage: &str) {
        let key = (execution_id.to_owned(), stage.to_owned());
        let mut registry = self.lock();
        registry.pending_gates.remove(&key);
        registry.decided_gates.insert(key);
    }

    /// Forget early cancels of executions that are no longer queued or
    /// running (the API finished them itself while they were queued).
    pub fn retain_early_cancels(&self, unfinished: &HashSet<String>) {
        self.lock()
            .cancel_before_start
            .retain(|execution_id| unfinished.contains(execution_id));
    }

    /// Is a gate waiting for a decision? (For the API's execution view.)
    pub fn is_gate_pending(&self, execution_id: &str, stage: &str) -> bool {
        self.lock()
            .pending_gates
            .contains(&(execution_id.to_owned(), stage.to_owned()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .expect("control registry lock is never poisoned")
    }
}

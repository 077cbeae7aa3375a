//! Stage: queue → **launcher** → sandbox → agent_link → relay.
//!
//! The launcher turns one claimed execution into one container and back into
//! a final status:
//!
//! ```text
//! allocate step uid → socket dir + one-time token → sandbox::profile → create
//!   → start → session (agent ⇄ relay, commands, gates, hard deadline)
//!   → usage + inspect (OOMKilled) → verdict → `finished` event + final status
//!   → remove container + socket dir
//! ```
//!
//! [`Control`] is how the API reaches a running execution (cancel, approval
//! decisions) and wakes the queue. [`Tasks`] is the one place that spawns
//! background work, each task in a tracing span named after what it runs.

mod control;
mod session;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{ControllerEvent, ExecutionEvent, FinalStatus, Job, JobLimits, SandboxEvent};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use control::{ApprovalError, CancelOutcome, Command, Control, Decision};
pub use session::{CANCEL_GRACE, EXIT_GRACE, MAX_BATCH};

use crate::agent_link::{self, LinkEndpoint};
use crate::config::{ClassConfig, Config, RuntimeKind};
use crate::gateway::Gateway;
use crate::relay::{Hub, Relay};
use crate::sandbox::{
    ContainerHandle, ContainerSpec, ExitReport, Runtime, Sandbox, SandboxLimits, SandboxVerdict,
    VerdictInputs,
};
use crate::store::{Execution, ExecutionStatus, LaunchRecord, Store};
use session::{Ending, SessionParts};

/// The one place that spawns background tasks. Shutdown: cancel the token
/// (everything stops claiming and detaches), then [`Tasks::drain`].
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Tasks {
    pub fn new(shutdown: CancellationToken) -> Tasks {
        Tasks {
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawn `task` inside `span`, tracked for the drain.
    pub fn spawn<F>(&self, span: tracing::Span, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task.instrument(span));
    }

    /// Number of tasks still running.
    pub fn n_running(&self) -> usize {
        self.tracker.len()
    }

    /// Wait up to `grace` for every task to end; true when all did.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Per-execution step uids from the configured range, distinct among the
/// executions this controller runs (so no execution's processes count
/// against, or can signal, another's).
#[derive(Clone, Default)]
pub struct UidPool {
    range: (u32, u32),
    in_use: Arc<Mutex<BTreeSet<u32>>>,
}

impl UidPool {
    pub fn new(first: u32, last: u32) -> UidPool {
        UidPool {
            range: (first, last),
            in_use: Arc::default(),
        }
    }

    /// The lowest free uid, or None when every uid of the range is in use.
    pub fn allocate(&self) -> Option<u32> {
        let mut in_use = self.in_use.lock().expect("uid pool lock is never poisoned");
        let uid = (self.range.0..=self.range.1).find(|uid| !in_use.contains(uid))?;
        in_use.insert(uid);
        Some(uid)
    }

    /// Mark a uid as used (an execution taken back after a restart).
    pub fn reserve(&self, uid: u32) {
        self.in_use
            .lock()
            .expect("uid pool lock is never poisoned")
            .insert(uid);
    }

    pub fn release(&self, uid: u32) {
        self.in_use
            .lock()
            .expect("uid pool lock is never poisoned")
            .remove(&uid);
    }
}

/// Everything the launcher needs. Cheap to clone.
#[derive(Clone)]
pub struct Launcher {
    pub config: Arc<Config>,
    pub store: Store,
    pub sandbox: Sandbox,
    pub hub: Hub<ExecutionEvent>,
    pub control: Control,
    pub uids: UidPool,
    /// The `kiln.instance` label of every container this controller creates.
    pub instance: String,
    /// Held (shared) from claiming an execution until its container exists,
    /// and (exclusive) by the periodic reaper while it decides what is an
    /// orphan: a container being created is never mistaken for one.
    pub creation_gate: Arc<tokio::sync::RwLock<()>>,
    /// The model gateway every session's agent steps call through.
    pub gateway: Arc<Gateway>,
}

/// A shared hold on [`Launcher::creation_gate`].
pub type CreationPass = tokio::sync::OwnedRwLockReadGuard<()>;

/// Why an execution ended without a container verdict.
struct EarlyEnd {
    status: FinalStatus,
    detail: String,
}

impl Launcher {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        sandbox: Sandbox,
        hub: Hub<ExecutionEvent>,
        control: Control,
        instance: String,
        gateway: Arc<Gateway>,
    ) -> Launcher {
        let uids = UidPool::new(config.sandbox.uid_range_start, config.sandbox.uid_range_end);
        Launcher {
            config,
            store,
            sandbox,
            hub,
            control,
            uids,
            instance,
            creation_gate: Arc::default(),
            gateway,
        }
    }

    /// Take before claiming an execution; [`Launcher::run`] releases it once
    /// the container exists.
    pub async fn creation_pass(&self) -> CreationPass {
        Arc::clone(&self.creation_gate).read_owned().await
    }

    /// Run a freshly claimed execution to its end (or until shutdown detaches it).
    pub async fn run(&self, execution: Execution, pass: CreationPass, shutdown: CancellationToken) {
        let execution_id = execution.id.clone();
        let (commands, cancel_before_start) = self.control.register(&execution_id);
        let started = std::time::Instant::now();
        let step_uid = self.uids.allocate();
        let ending = match step_uid {
            Some(step_uid) => {
                self.launch(
                    execution,
                    step_uid,
                    commands,
                    cancel_before_start,
                    pass,
                    shutdown,
                )
                .await
            }
            None => Err(EarlyEnd {
                status: FinalStatus::SandboxCrashed,
                detail: "no free step uid in the configured range".to_owned(),
            }),
        };
        if let Err(early) = ending {
            self.finalize(&execution_id, early.status, Some(&early.detail), None, None)
                .await;
        }
        if let Some(uid) = step_uid {
            self.uids.release(uid);
        }
        self.control.unregister(&execution_id);
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "execution task ended"
        );
    }

    async fn launch(
        &self,
        execution: Execution,
        step_uid: u32,
        commands: tokio::sync::mpsc::Receiver<Command>,
        cancel_before_start: bool,
        pass: CreationPass,
        shutdown: CancellationToken,
    ) -> Result<(), EarlyEnd> {
        let execution_id = execution.id.clone();
        let (class_name, class) = self.class_of(&execution)?;
        let mut relay = self.open_relay(&execution_id, class).await?;
        if self.store.last_event_seq(&execution_id).await.unwrap_or(0) == 0 {
            relay
                .record_controller(ControllerEvent::Queued {})
                .await
                .map_err(|error| crashed(format!("relay: {error}")))?;
        }
        if cancel_before_start {
            return Err(EarlyEnd {
                status: FinalStatus::Cancelled,
                detail: "cancelled before start".to_owned(),
            });
        }

        let run_dir = &self.config.server.run_dir;
        let mut endpoint = LinkEndpoint::create(run_dir, &execution_id)
            .map_err(|error| crashed(format!("agent link: {error}")))?;
        let deadline = self.deadline_of(class);
        let spec = ContainerSpec {
            execution_id: execution_id.clone(),
            image: class.image.clone(),
            runtime: runtime_of(class.runtime),
            limits: sandbox_limits(class, deadline),
            step_uid,
            step_gid: step_uid,
            socket_dir: endpoint.dir().to_path_buf(),
            instance_label: self.instance.clone(),
            seccomp_json: crate::sandbox::image::SECCOMP_PROFILE_JSON.to_owned(),
        };
        let profile = crate::sandbox::profile(&spec);
        let created_at = std::time::Instant::now();
        let handle = match self.sandbox.create(&profile).await {
            Ok(handle) => handle,
            Err(error) => {
                tracing::error!(%error, "cannot create the container");
                drop(endpoint);
                let _ = agent_link::remove_socket_dir(run_dir, &execution_id);
                return Err(crashed("the container could not be created".to_owned()));
            }
        };
        endpoint.set_container_id(&handle.container_id);
        let launch = LaunchRecord {
            container_id: handle.container_id.clone(),
            step_uid,
            deadline_at_ms: crate::store::now_ms()
                + i64::try_from(deadline.as_millis()).unwrap_or(i64::MAX / 2),
        };
        if let Err(error) = self.store.record_launch(&execution_id, &launch).await {
            tracing::error!(%error, "cannot record the launch");
            self.remove_container(&handle).await;
            return Err(crashed("internal error".to_owned()));
        }
        drop(pass);
        if let Err(error) = self.sandbox.start(&handle).await {
            tracing::error!(%error, "cannot start the container");
            self.remove_container(&handle).await;
            return Err(crashed("the container could not be started".to_owned()));
        }
        tracing::info!(container_id = %handle.container_id, class = class_name, step_uid, "container started");
        relay
            .record_controller(ControllerEvent::ContainerStarted {
                runtime: spec.runtime.docker_name().to_owned(),
            })
            .await
            .map_err(|error| crashed(format!("relay: {error}")))?;

        let job = Job {
            recipe_source: execution.recipe_source.clone(),
            inputs: execution.inputs.clone(),
            files: execution.files.clone(),
            limits: job_limits(&self.config, class),
            step_uid,
            step_gid: step_uid,
        };
        let parts = SessionParts {
            store: self.store.clone(),
            sandbox: self.sandbox.clone(),
            control: self.control.clone(),
            endpoint,
            relay,
            handle: handle.clone(),
            commands,
            job: Some(job),
            last_acked_seq: 0,
            deadline,
            max_artifact_bytes: self.max_artifact_bytes(),
            gateway: Arc::clone(&self.gateway),
            owner_token_id: execution.owner_token_id.clone(),
            cancel_before_start: false,
        };
        let ending = session::run(parts, shutdown).await;
        self.conclude(&handle, spec.runtime, ending).await;
        tracing::info!(
            create_to_removed_ms = created_at.elapsed().as_millis() as u64,
            "container lifecycle done"
        );
        Ok(())
    }

    /// After a restart: take back a running execution whose container is
    /// still alive. The agent reconnects with its session key and resends
    /// what was not acknowledged.
    pub async fn take_back(&self, execution: Execution, shutdown: CancellationToken) {
        let execution_id = execution.id.clone();
        let (commands, cancel_before_start) = self.control.register(&execution_id);
        if let Some(uid) = execution.step_uid {
            self.uids.reserve(uid);
        }
        if let Err(early) = self
            .take_back_inner(execution.clone(), commands, cancel_before_start, shutdown)
            .await
        {
            self.finalize(&execution_id, early.status, Some(&early.detail), None, None)
                .await;
            if let Some(container_id) = &execution.container_id {
                self.remove_container(&ContainerHandle {
                    execution_id: execution_id.clone(),
                    container_id: container_id.clone(),
                })
                .await;
            }
        }
        if let Some(uid) = execution.step_uid {
            self.uids.release(uid);
        }
        self.control.unregister(&execution_id);
    }

    async fn take_back_inner(
        &self,
        execution: Execution,
        commands: tokio::sync::mpsc::Receiver<Command>,
        cancel_before_start: bool,
        shutdown: CancellationToken,
    ) -> Result<(), EarlyEnd> {
        let execution_id = execution.id.clone();
        let (_, class) = self.class_of(&execution)?;
        let container_id = execution.container_id.clone().ok_or_else(|| EarlyEnd {
            status: FinalStatus::AgentLost,
            detail: "controller restarted before the container existed".to_owned(),
        })?;
        let handle = ContainerHandle {
            execution_id: execution_id.clone(),
            container_id: container_id.clone(),
        };
        let relay = self.open_relay(&execution_id, class).await?;
        let endpoint = LinkEndpoint::reopen(
            &self.config.server.run_dir,
            &execution_id,
            execution.agent_session_sha256.clone(),
            Some(container_id),
        )
        .map_err(|error| EarlyEnd {
            status: FinalStatus::AgentLost,
            detail: format!("controller restarted and could not reopen the agent socket: {error}"),
        })?;
        let remaining_ms = execution
            .deadline_at_ms
            .map_or(0, |deadline| deadline - crate::store::now_ms())
            .max(0);
        let parts = SessionParts {
            store: self.store.clone(),
            sandbox: self.sandbox.clone(),
            control: self.control.clone(),
            endpoint,
            relay,
            handle: handle.clone(),
            commands,
            job: None,
            last_acked_seq: execution.last_acked_seq,
            deadline: Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0)),
            max_artifact_bytes: self.max_artifact_bytes(),
            gateway: Arc::clone(&self.gateway),
            owner_token_id: execution.owner_token_id.clone(),
            cancel_before_start,
        };
        tracing::info!("taking back a running execution");
        let ending = session::run(parts, shutdown).await;
        self.conclude(&handle, runtime_of(class.runtime), ending)
            .await;
        Ok(())
    }

    /// Turn a session's ending into the final status, then clean up.
    async fn conclude(&self, handle: &ContainerHandle, runtime: Runtime, ending: Ending) {
        let execution_id = handle.execution_id.as_str();
        match ending {
            Ending::Detached => {
                // Shutdown: the container keeps running; the socket file goes
                // with the listener, the directory stays for the next start.
                tracing::info!("detached: the next start takes this execution back");
            }
            Ending::Failed { detail } => {
                tracing::error!(%detail, "execution failed inside the controller");
                self.finalize(
                    execution_id,
                    FinalStatus::SandboxCrashed,
                    Some("internal error"),
                    None,
                    Some(handle),
                )
                .await;
            }
            Ending::Exited {
                exit,
                agent_done,
                protocol_error,
                cancel_requested,
            } => {
                let agent_said = agent_done
                    .as_ref()
                    .map(|outcome| verdict_of(outcome.status));
                let verdict = crate::sandbox::verdict(&VerdictInputs {
                    runtime,
                    exit: &exit,
                    agent_done: agent_said,
                    protocol_error: protocol_error.is_some(),
                    cancel_requested,
                });
                let status = final_of(verdict);
                let detail = describe_end(
                    status,
                    &exit,
                    agent_done.as_ref(),
                    protocol_error.as_deref(),
                );
                self.finalize(
                    execution_id,
                    status,
                    detail.as_deref(),
                    Some(&exit),
                    Some(handle),
                )
                .await;
            }
        }
    }

    /// The last steps of every execution, in this order: container and
    /// socket directory removed (usage was sampled before), usage event,
    /// `finished` event, final status in the store, watchers released. So a
    /// final status always means the sandbox is gone.
    async fn finalize(
        &self,
        execution_id: &str,
        status: FinalStatus,
        detail: Option<&str>,
        exit: Option<&ExitReport>,
        handle: Option<&ContainerHandle>,
    ) {
        if let Some(handle) = handle {
            self.remove_container(handle).await;
        }
        if let Err(error) = agent_link::remove_socket_dir(&self.config.server.run_dir, execution_id)
        {
            tracing::warn!(%error, "cannot remove the socket directory (the reaper will)");
        }
        let output_cap = self
            .config
            .sandbox
            .classes
            .values()
            .map(|class| class.output_cap_bytes)
            .max()
            .unwrap_or(0);
        match Relay::open(
            self.store.clone(),
            self.hub.clone(),
            execution_id,
            output_cap,
        )
        .await
        {
            Ok(mut relay) => {
                let mut bodies = Vec::new();
                if let Some(usage) = exit.and_then(|exit| exit.usage.as_ref()) {
                    bodies.push(protocol::EventBody::Sandbox(SandboxEvent::ResourceUsage {
                        peak_memory_bytes: usage.memory_peak_bytes,
                        cpu_time_ms: usage.cpu_time_ns / 1_000_000,
                        pids_peak: usage.pids_peak.unwrap_or(usage.pids_current),
                        oom_kills: usage.oom_kills,
                    }));
                }
                bodies.push(protocol::EventBody::Controller(ControllerEvent::Finished {
                    status,
                    reason: detail.map(str::to_owned),
                }));
                if let Err(error) = relay.record(bodies).await {
                    tracing::error!(%error, "cannot record the finished event");
                }
            }
            Err(error) => tracing::error!(%error, "cannot open the relay to finish"),
        }
        match self
            .store
            .set_status(execution_id, ExecutionStatus::from(status), detail)
            .await
        {
            Ok(_) => tracing::info!(status = status.as_str(), "execution finished"),
            Err(error) => tracing::error!(%error, "cannot store the final status"),
        }
        self.hub.finish(execution_id);
        // Its usage is in the store; the ledger keeps only live executions.
        self.gateway
            .ledger()
            .lock()
            .expect("budget ledger lock poisoned")
            .forget_execution(execution_id);
    }

    async fn remove_container(&self, handle: &ContainerHandle) {
        if let Err(error) = self.sandbox.remove(handle).await {
            tracing::warn!(%error, "cannot remove the container (the reaper will)");
        }
    }

    fn class_of<'a>(
        &'a self,
        execution: &Execution,
    ) -> Result<(&'a str, &'a ClassConfig), EarlyEnd> {
        self.config
            .class(Some(&execution.class))
            .ok_or_else(|| EarlyEnd {
                status: FinalStatus::SandboxCrashed,
                detail: format!("execution class {:?} is not configured", execution.class),
            })
    }

    async fn open_relay(&self, execution_id: &str, class: &ClassConfig) -> Result<Relay, EarlyEnd> {
        Relay::open(
            self.store.clone(),
            self.hub.clone(),
            execution_id,
            class.output_cap_bytes,
        )
        .await
        .map_err(|error| crashed(format!("relay: {error}")))
    }

    fn deadline_of(&self, class: &ClassConfig) -> Duration {
        class.wall_timeout().min(Duration::from_secs(
            self.config.limits.max_execution_deadline_secs,
        ))
    }

    fn max_artifact_bytes(&self) -> u64 {
        self.config
            .limits
            .max_artifact_bytes
            .min(protocol::MAX_ARTIFACT_BYTES)
    }
}

fn crashed(detail: String) -> EarlyEnd {
    EarlyEnd {
        status: FinalStatus::SandboxCrashed,
        detail,
    }
}

fn runtime_of(kind: RuntimeKind) -> Runtime {
    match kind {
        RuntimeKind::Runc => Runtime::Runc,
        RuntimeKind::Runsc => Runtime::Runsc,
    }
}

fn sandbox_limits(class: &ClassConfig, deadline: Duration) -> SandboxLimits {
    SandboxLimits {
        memory_mib: class.memory_mib,
        cpus_milli: u64::from(class.cpus_milli),
        pids: u64::from(class.pids),
        work_mib: class.work_mib,
        tmp_mib: class.tmp_mib,
        shm_mib: class.shm_mib,
        nofile: class.nofile,
        fsize_mib: class.fsize_mib,
        wall_timeout: deadline,
    }
}

fn job_limits(config: &Config, class: &ClassConfig) -> JobLimits {
    let defaults = JobLimits::default();
    let max_artifact_bytes = config
        .limits
        .max_artifact_bytes
        .min(protocol::MAX_ARTIFACT_BYTES);
    JobLimits {
        max_output_bytes: class.output_cap_bytes,
        max_step_output_bytes: defaults.max_step_output_bytes.min(class.output_cap_bytes),
        max_artifacts: protocol::MAX_ARTIFACTS,
        max_artifact_bytes,
        max_total_artifact_bytes: protocol::MAX_TOTAL_ARTIFACT_BYTES,
        rlimit_nofile: Some(class.nofile),
        rlimit_fsize_bytes: Some(class.fsize_mib.saturating_mul(1024 * 1024)),
        rlimit_nproc: None,
    }
}

fn verdict_of(status: FinalStatus) -> SandboxVerdict {
    match status {
        FinalStatus::Succeeded => SandboxVerdict::Succeeded,
        FinalStatus::Failed => SandboxVerdict::Failed,
        FinalStatus::TimedOut => SandboxVerdict::TimedOut,
        FinalStatus::Oom => SandboxVerdict::Oom,
        FinalStatus::Cancelled => SandboxVerdict::Cancelled,
        FinalStatus::AgentLost => SandboxVerdict::AgentLost,
        FinalStatus::SandboxCrashed => SandboxVerdict::SandboxCrashed,
        FinalStatus::ProtocolError => SandboxVerdict::ProtocolError,
        FinalStatus::Denied => SandboxVerdict::Denied,
    }
}

fn final_of(verdict: SandboxVerdict) -> FinalStatus {
    match verdict {
        SandboxVerdict::Succeeded => FinalStatus::Succeeded,
        SandboxVerdict::Failed => FinalStatus::Failed,
        SandboxVerdict::TimedOut => FinalStatus::TimedOut,
        SandboxVerdict::Oom => FinalStatus::Oom,
        SandboxVerdict::Cancelled => FinalStatus::Cancelled,
        SandboxVerdict::AgentLost => FinalStatus::AgentLost,
        SandboxVerdict::SandboxCrashed => FinalStatus::SandboxCrashed,
        SandboxVerdict::ProtocolError => FinalStatus::ProtocolError,
        SandboxVerdict::Denied => FinalStatus::Denied,
    }
}

/// A short, user-facing reason for the final status (no Docker details).
fn describe_end(
    status: FinalStatus,
    exit: &ExitReport,
    agent_done: Option<&protocol::Outcome>,
    protocol_error: Option<&str>,
) -> Option<String> {
    match status {
        FinalStatus::ProtocolError => protocol_error.map(|detail| {
            // The detail names the violation, never the hostile payload.
            detail.chars().take(200).collect()
        }),
        FinalStatus::Oom => Some("the memory limit was exceeded".to_owned()),
        FinalStatus::TimedOut if exit.killed_by.is_some() => {
            Some("the execution's hard deadline passed".to_owned())
        }
        FinalStatus::AgentLost => Some(format!(
            "the agent ended without reporting (container exit code {})",
            exit.exit_code
        )),
        FinalStatus::SandboxCrashed => Some(format!(
            "the sandbox runtime crashed (exit code {})",
            exit.exit_code
        )),
        _ => agent_done.and_then(|outcome| outcome.reason.clone()),
    }
}

#[cfg(test)]
#[path = "launcher_tests.rs"]
mod tests;

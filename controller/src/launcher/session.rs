//! One execution's life with its agent: the event loop that connects the
//! container, the agent link, the relay, the model gateway and the API's
//! commands.
//!
//! The loop `select!`s over a closed set of [`Wake`]s: the container stopped,
//! an agent connected, a message arrived, a command came from the API, an
//! approval gate timed out, a model call streamed or finished, a heartbeat is
//! due, a grace period ran out, or the controller shuts down.
//!
//! Model calls: each `ModelRequest` runs in its own task (the one place this
//! session spawns, in a `JoinSet` it owns, so every call is aborted when the
//! session ends). The task streams token batches back to the loop, which
//! forwards them to the agent (when it asked for chunks) and records them as
//! live `step_output` events; then the completion or the error. Requests are
//! deduplicated by `request_id`; `ModelCancel` and an execution cancel abort
//! the call, and the provider sees the connection close. Every path ends in [`Ending`]; the caller turns it
//! into a final status (or, on shutdown, leaves the container running for the
//! next controller to take back).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use protocol::{
    AgentMessage, ApprovalChoice, ArtifactChunk, ArtifactRejectReason, ControllerEvent,
    ControllerMessage, EngineEvent, EventBody, Job, ModelCallOutcome, ModelErrorCode, ModelRequest,
    ModelResponse, ModelResponseBody, Outcome, SandboxEvent,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::control::{Command, Control};
use crate::agent_link::{Accepted, Admission, AgentConnection, LinkEndpoint, LinkError, Received};
use crate::gateway::{
    CallError, CallOutcome, CallScope, ChunkBatcher, Gateway, ProviderError, ResolveInput, Usage,
};
use crate::relay::{Relay, RelayError};
use crate::sandbox::{ContainerHandle, ExitReport, Sandbox, SandboxError};
use crate::store::{
    ApprovalDecision, AuditEntry, ModelCallEnd, ModelCallStatus, NewApproval, NewModelCall, Store,
    StoreError,
};

/// Most messages read before one batched store write.
pub const MAX_BATCH: usize = 256;
/// After a cancel, how long the agent gets to stop its steps and say `Done`.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// After `Done` (or a protocol error), how long the container gets to exit.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);
/// After the container exited, how long we still read what the agent sent.
pub const FINAL_READ_GRACE: Duration = Duration::from_secs(2);
/// Most model calls of one execution in flight at once; more are refused
/// with `invalid_request` (the agent runs at most a few agent steps at once).
pub const MAX_MODEL_CALLS_IN_FLIGHT: usize = 16;
/// Most answered model calls remembered (to answer a request the agent
/// resends after a reconnect); the oldest are forgotten first.
pub const MAX_MODEL_ANSWERS_KEPT: usize = 32;
/// When the container stops, how long cancelled model calls get to report
/// their own ending before they are recorded `interrupted`.
pub const MODEL_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Live token batches: flushed at this size...
pub const LIVE_MIN_BYTES: usize = 256;
/// ...never larger than this...
pub const LIVE_MAX_BYTES: usize = 16 * 1024;
/// ...and at the latest this long after their first token.
pub const LIVE_MAX_DELAY: Duration = Duration::from_millis(250);

/// What the loop needs that outlives it.
pub struct SessionParts {
    pub store: Store,
    pub sandbox: Sandbox,
    pub control: Control,
    pub endpoint: LinkEndpoint,
    pub relay: Relay,
    pub handle: ContainerHandle,
    pub commands: mpsc::Receiver<Command>,
    /// Sent on each connection until the agent's first reliable message;
    /// None when taking an agent back.
    pub job: Option<Job>,
    /// The agent's last wire seq we persisted (0 for a new execution).
    pub last_acked_seq: u64,
    pub deadline: Duration,
    pub max_artifact_bytes: u64,
    pub cancel_before_start: bool,
    /// Answers the agent's model requests.
    pub gateway: Arc<Gateway>,
    /// Who model calls are billed to (the execution owner's token id).
    pub owner_token_id: String,
}

/// How the loop ended.
pub enum Ending {
    /// The container stopped: decide the final status from this.
    Exited {
        exit: ExitReport,
        agent_done: Option<Outcome>,
        protocol_error: Option<String>,
        cancel_requested: bool,
    },
    /// The controller is shutting down: the container keeps running and
    /// the next start takes its agent back.
    Detached,
    /// Docker or the store failed under us.
    Failed { detail: String },
}

enum Wake {
    ContainerStopped(Result<ExitReport, SandboxError>),
    Incoming(Result<tokio::net::UnixStream, LinkError>),
    Received(Result<Received, LinkError>),
    Command(Option<Command>),
    GateTimeout(u64),
    Model(ModelUpdate),
    ModelTaskEnded(Result<(), tokio::task::JoinError>),
    Heartbeat,
    GraceOver,
    Shutdown,
}

struct Gate {
    stage: String,
    default: ApprovalChoice,
    timeout_at: Option<Instant>,
    decision: Option<protocol::ApprovalDecision>,
}

/// What a model call task tells the session loop, in this order:
/// `Started` (or straight to `Finished` when refused), `Tokens`, `Note`s,
/// `Finished`.
enum ModelUpdate {
    /// Admitted (resolved, within budget): the provider call starts.
    Started {
        request_id: u64,
        step_id: String,
        provider: String,
        model: String,
        profile: String,
    },
    /// A batch of streamed answer text.
    Tokens {
        request_id: u64,
        step_id: String,
        text: String,
    },
    /// A note from resolution (a dropped override, a fallback).
    Note { step_id: String, message: String },
    /// The call is over: `event` says how (`model_call_finished` or
    /// `model_call_refused`); `body` is the final response, or None when it
    /// was cancelled (the agent no longer waits for it).
    Finished {
        request_id: u64,
        event: ControllerEvent,
        body: Option<ModelResponseBody>,
    },
}

/// A model request the session knows, by the agent's `request_id`.
enum ModelCall {
    Running {
        cancel: CancellationToken,
        /// The agent asked for `chunk` responses.
        wants_chunks: bool,
        /// Set once the call is admitted and sent to the provider.
        started: Option<StartedCall>,
    },
    /// Kept to answer the same request again after a reconnect.
    Answered { body: ModelResponseBody },
}

/// A model call at the provider: what its ending must name.
struct StartedCall {
    /// Its row in the store.
    row_id: i64,
    step_id: String,
    provider: String,
    model: String,
    at: Instant,
}

/// An artifact being received, chunk by chunk, in memory (bounded).
struct PartialArtifact {
    name: String,
    data: Vec<u8>,
}

struct Session {
    parts: SessionParts,
    connection: Option<AgentConnection>,
    next_agent_seq: u64,
    agent_done: Option<Outcome>,
    protocol_error: Option<String>,
    cancel_requested: bool,
    cancel_sent: bool,
    gates: BTreeMap<u64, Gate>,
    artifact: Option<PartialArtifact>,
    n_artifacts: u32,
    last_heard: Instant,
    grace_until: Option<Instant>,
    kill: CancellationToken,
    models: BTreeMap<u64, ModelCall>,
    /// The model call tasks; dropping the set (the session ended) aborts them.
    model_tasks: tokio::task::JoinSet<()>,
    /// Unbounded, but bounded in total: a call's text is at most the
    /// gateway's `max_answer_bytes`, and at most
    /// [`MAX_MODEL_CALLS_IN_FLIGHT`] calls run at once.
    model_updates_sender: mpsc::UnboundedSender<ModelUpdate>,
    model_updates: mpsc::UnboundedReceiver<ModelUpdate>,
}

/// Run the loop until the container stops or the controller shuts down.
pub async fn run(parts: SessionParts, shutdown: CancellationToken) -> Ending {
    let kill = CancellationToken::new();
    let sandbox = parts.sandbox.clone();
    let handle = parts.handle.clone();
    let deadline = parts.deadline;
    let wait_kill = kill.clone();
    let container = async move {
        sandbox
            .wait_with_deadline(&handle, deadline, &wait_kill)
            .await
    };
    tokio::pin!(container);

    let (model_updates_sender, model_updates) = mpsc::unbounded_channel();
    let mut session = Session {
        next_agent_seq: parts.last_acked_seq + 1,
        cancel_requested: parts.cancel_before_start,
        parts,
        connection: None,
        agent_done: None,
        protocol_error: None,
        cancel_sent: false,
        gates: BTreeMap::new(),
        artifact: None,
        n_artifacts: 0,
        last_heard: Instant::now(),
        grace_until: None,
        kill,
        models: BTreeMap::new(),
        model_tasks: tokio::task::JoinSet::new(),
        model_updates_sender,
        model_updates,
    };
    if session.cancel_requested {
        session.arm_grace(CANCEL_GRACE);
    }
    let mut heartbeat =
        tokio::time::interval(Duration::from_millis(protocol::HEARTBEAT_INTERVAL_MS));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut commands_open = true;
    loop {
        let gate_timeout = session.next_gate_timeout();
        let grace_until = session.grace_until;
        let wake = tokio::select! {
            biased;
            () = shutdown.cancelled() => Wake::Shutdown,
            exit = &mut container => Wake::ContainerStopped(exit),
            command = session.parts.commands.recv(), if commands_open => Wake::Command(command),
            received = recv_or_pending(session.connection.as_mut()) => Wake::Received(received),
            incoming = session.parts.endpoint.incoming(), if session.connection.is_none() => {
                Wake::Incoming(incoming)
            }
            request_id = sleep_until_gate(gate_timeout) => Wake::GateTimeout(request_id),
            Some(update) = session.model_updates.recv() => Wake::Model(update),
            Some(ended) = session.model_tasks.join_next(), if !session.model_tasks.is_empty() => {
                Wake::ModelTaskEnded(ended)
            }
            () = sleep_until(grace_until) => Wake::GraceOver,
            _ = heartbeat.tick() => Wake::Heartbeat,
        };
        let step = match wake {
            Wake::Shutdown => {
                if let Some(connection) = session.connection.take() {
                    connection.close_normal("controller_shutdown").await;
                }
                session.close_model_calls(false).await;
                return Ending::Detached;
            }
            Wake::ContainerStopped(exit) => return session.finish(exit).await,
            Wake::Command(Some(command)) => session.on_command(command).await,
            // The control registry dropped our sender: nothing more can come.
            Wake::Command(None) => {
                commands_open = false;
                Ok(())
            }
            Wake::Received(received) => session.on_received(received).await,
            Wake::Incoming(Ok(stream)) => {
                // Outside the select!: a handshake is never cut in half by
                // another wake (it is bounded by HANDSHAKE_TIMEOUT itself).
                let accepted = session.parts.endpoint.handshake(stream).await;
                session.on_accepted(Ok(accepted)).await
            }
            Wake::Incoming(Err(error)) => session.on_accepted(Err(error)).await,
            Wake::GateTimeout(request_id) => session.on_gate_timeout(request_id).await,
            Wake::Model(update) => session.on_model_update(update).await,
            Wake::ModelTaskEnded(ended) => {
                if let Err(error) = ended
                    && error.is_panic()
                {
                    tracing::error!(%error, "a model call task panicked");
                }
                Ok(())
            }
            Wake::GraceOver => {
                tracing::info!("grace period over: killing the container");
                session.grace_until = None;
                session.kill.cancel();
                Ok(())
            }
            Wake::Heartbeat => session.on_heartbeat().await,
        };
        if let Err(detail) = step {
            tracing::error!(%detail, "execution session failed");
            session.kill.cancel();
            session.close_model_calls(false).await;
            if let Some(connection) = session.connection.take() {
                connection.close_normal("controller_error").await;
            }
            // Still wait for the container to stop, so it can be removed.
            let _ = (&mut container).await;
            return Ending::Failed { detail };
        }
    }
}

async fn recv_or_pending(connection: Option<&mut AgentConnection>) -> Result<Received, LinkError> {
    match connection {
        Some(connection) => connection.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_gate(next: Option<(u64, Instant)>) -> u64 {
    match next {
        Some((request_id, at)) => {
            tokio::time::sleep_until(at).await;
            request_id
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn store_error(error: StoreError) -> String {
    format!("store: {error}")
}

fn relay_error(error: RelayError) -> String {
    format!("relay: {error}")
}

impl Session {
    fn execution_id(&self) -> &str {
        &self.parts.handle.execution_id
    }

    fn arm_grace(&mut self, grace: Duration) {
        let at = Instant::now() + grace;
        self.grace_until = Some(self.grace_until.map_or(at, |earlier| earlier.min(at)));
    }

    fn next_gate_timeout(&self) -> Option<(u64, Instant)> {
        self.gates
            .iter()
            .filter(|(_, gate)| gate.decision.is_none())
            .filter_map(|(request_id, gate)| gate.timeout_at.map(|at| (*request_id, at)))
            .min_by_key(|(_, at)| *at)
    }

    async fn send(&mut self, message: ControllerMessage) {
        if let Some(connection) = self.connection.as_mut()
            && let Err(error) = connection.send(&message).await
        {
            tracing::info!(%error, "agent connection lost while sending");
            self.connection = None;
        }
    }

    async fn audit_rejection(&self, reason: &str, detail: &str) {
        let entry = AuditEntry {
            actor: "agent_socket".to_owned(),
            action: "connection_rejected".to_owned(),
            execution_id: Some(self.execution_id().to_owned()),
            detail: format!("{reason}: {detail}"),
        };
        if let Err(error) = self.parts.store.audit(&entry).await {
            tracing::warn!(%error, "cannot write audit entry");
        }
    }

    async fn on_accepted(&mut self, accepted: Result<Accepted, LinkError>) -> Result<(), String> {
        let (connection, admission, session_sha256) = match accepted {
            Ok(Accepted::Connected {
                connection,
                admission,
                session_sha256,
            }) => (connection, admission, session_sha256),
            Ok(Accepted::Rejected(rejection)) => {
                tracing::warn!(reason = rejection.reason, detail = %rejection.detail, "agent connection rejected");
                self.audit_rejection(rejection.reason, &rejection.detail)
                    .await;
                return Ok(());
            }
            Err(error) => return Err(error.to_string()),
        };
        self.parts
            .store
            .record_agent_session(self.execution_id(), &session_sha256)
            .await
            .map_err(store_error)?;
        self.connection = Some(*connection);
        self.last_heard = Instant::now();
        tracing::info!(?admission, "agent connected");
        // The job goes on every connection until the agent's first reliable
        // message shows it arrived: a connection lost right after the
        // Welcome must not leave the agent waiting for it until the deadline
        // (the agent ignores a second copy).
        if self.next_agent_seq == 1
            && let Some(job) = self.parts.job.clone()
        {
            self.send(ControllerMessage::Job(Box::new(job))).await;
        }
        if let Admission::Resumed { .. } = admission {
            // Tell the agent what is already stored; it resends the rest.
            self.send(ControllerMessage::Ack {
                seq: self.next_agent_seq - 1,
            })
            .await;
        }
        self.parts
            .relay
            .record_controller(ControllerEvent::AgentConnected {})
            .await
            .map_err(relay_error)?;
        if self.cancel_requested {
            self.cancel_sent = false;
            self.send_cancel().await;
        }
        // Decisions the agent may have missed while disconnected.
        let decided: Vec<protocol::ApprovalDecision> = self
            .gates
            .values()
            .filter_map(|gate| gate.decision.clone())
            .collect();
        for decision in decided {
            self.send(ControllerMessage::ApprovalDecision(decision))
                .await;
        }
        Ok(())
    }

    async fn send_cancel(&mut self) {
        if !self.cancel_sent && self.connection.is_some() {
            self.cancel_sent = true;
            self.send(ControllerMessage::Cancel {
                reason: "cancelled by request".to_owned(),
            })
            .await;
        }
    }

    /// One message arrived: read what else is ready (up to [`MAX_BATCH`]),
    /// persist the batch in one transaction, publish, then ack.
    async fn on_received(&mut self, first: Result<Received, LinkError>) -> Result<(), String> {
        let mut batch: Vec<EventBody> = Vec::new();
        let mut next = Some(first);
        let mut n_read = 0;
        while let Some(received) = next.take() {
            match received {
                Ok(Received::Message {
                    message,
                    frame_bytes,
                }) => {
                    self.last_heard = Instant::now();
                    if let Err(error) = self.parts.endpoint.charge(frame_bytes) {
                        self.on_link_error(error, &mut batch).await?;
                        break;
                    }
                    if let Err(violation) = self.on_message(message, &mut batch).await? {
                        let error = LinkError::Protocol {
                            execution_id: self.execution_id().to_owned(),
                            error: protocol::ProtocolError::InvalidMessage { detail: violation },
                        };
                        self.on_link_error(error, &mut batch).await?;
                        break;
                    }
                }
                Ok(Received::Closed) => {
                    tracing::info!("agent connection closed");
                    self.connection = None;
                    break;
                }
                Err(error) => {
                    self.on_link_error(error, &mut batch).await?;
                    break;
                }
            }
            n_read += 1;
            if n_read >= MAX_BATCH {
                break;
            }
            if let Some(connection) = self.connection.as_mut() {
                next = connection.recv().now_or_never();
            }
        }
        self.flush(batch).await
    }

    /// Persist the batch and the acked position in one transaction, publish
    /// (inside the relay), then ack: a crash in between makes the agent
    /// resend exactly what was not stored.
    async fn flush(&mut self, batch: Vec<EventBody>) -> Result<(), String> {
        let acked = self.next_agent_seq - 1;
        let acked_seq = (acked > 0).then_some(acked);
        self.parts
            .relay
            .record_and_ack(batch, acked_seq)
            .await
            .map_err(relay_error)?;
        if let Some(seq) = acked_seq {
            self.send(ControllerMessage::Ack { seq }).await;
        }
        Ok(())
    }

    async fn on_link_error(
        &mut self,
        error: LinkError,
        batch: &mut Vec<EventBody>,
    ) -> Result<(), String> {
        let connection = self.connection.take();
        if !error.is_protocol_violation() {
            tracing::info!(%error, "agent connection failed; waiting for a reconnect");
            return Ok(());
        }
        tracing::warn!(%error, "agent broke the protocol");
        // What arrived before the violation is kept (persisted by the caller).
        let detail = error.to_string();
        batch.push(EventBody::Controller(ControllerEvent::AgentDisconnected {
            reason: protocol_reason(&error).to_owned(),
        }));
        self.protocol_error = Some(detail.clone());
        if let Some(connection) = connection {
            connection.close_for(&error).await;
        }
        self.audit_rejection("protocol_error", &detail).await;
        // Nothing it says is trusted any more: the container goes now.
        self.kill.cancel();
        Ok(())
    }

    /// Handle one message; `Ok(Err(reason))` is a protocol violation.
    async fn on_message(
        &mut self,
        message: AgentMessage,
        batch: &mut Vec<EventBody>,
    ) -> Result<Result<(), String>, String> {
        if self.protocol_error.is_some() {
            return Ok(Ok(()));
        }
        match message {
            AgentMessage::Hello(_) => Ok(Err("hello after the handshake".to_owned())),
            AgentMessage::Heartbeat { .. } => Ok(Ok(())),
            AgentMessage::ModelCancel { request_id } => {
                if let Some(ModelCall::Running { cancel, .. }) = self.models.get(&request_id) {
                    tracing::info!(request_id, "model call cancelled by the agent");
                    cancel.cancel();
                }
                Ok(Ok(()))
            }
            AgentMessage::Event(event) => Ok(self.check_seq(event.seq).map(|is_new| {
                if is_new {
                    batch.push(event.body.into());
                }
            })),
            AgentMessage::ArtifactChunk(chunk) => match self.check_seq(chunk.seq) {
                Ok(true) => self.on_artifact_chunk(chunk, batch).await,
                Ok(false) => Ok(Ok(())),
                Err(violation) => Ok(Err(violation)),
            },
            AgentMessage::Done(done) => match self.check_seq(done.seq) {
                Ok(true) => {
                    self.agent_done = Some(done.outcome);
                    self.arm_grace(EXIT_GRACE);
                    Ok(Ok(()))
                }
                Ok(false) => Ok(Ok(())),
                Err(violation) => Ok(Err(violation)),
            },
            AgentMessage::ApprovalRequest(request) => {
                self.on_approval_request(request).await.map(Ok)
            }
            AgentMessage::ModelRequest(request) => {
                self.on_model_request(*request).await?;
                Ok(Ok(()))
            }
        }
    }

    /// Receiving rule: `seq == next` is new, `seq < next` a duplicate after
    /// a resume (dropped), `seq > next` a gap (protocol error). Nothing is
    /// accepted after `Done`.
    fn check_seq(&mut self, seq: u64) -> Result<bool, String> {
        if seq < self.next_agent_seq {
            return Ok(false);
        }
        if seq > self.next_agent_seq {
            return Err(format!(
                "sequence gap: got {seq}, expected {}",
                self.next_agent_seq
            ));
        }
        if self.agent_done.is_some() {
            return Err(format!("message {seq} after done"));
        }
        self.next_agent_seq += 1;
        // The agent has its job: it is never sent again.
        self.parts.job = None;
        Ok(true)
    }

    async fn on_artifact_chunk(
        &mut self,
        chunk: ArtifactChunk,
        batch: &mut Vec<EventBody>,
    ) -> Result<Result<(), String>, String> {
        // The codec validated the name lexically; check again here, because
        // this is the last stop before the store. The name is only ever a
        // key in the database: no host path is built from it.
        if protocol::validate_artifact_name(&chunk.name).is_err()
            || crate::store::check_artifact_name(&chunk.name).is_err()
        {
            return Ok(Err(format!("invalid artifact name {:?}", chunk.name)));
        }
        let Ok(data) = chunk.decode_data() else {
            return Ok(Err("artifact chunk is not valid base64".to_owned()));
        };
        if chunk.offset == 0 {
            // A (re)start: an artifact whose first chunk is sent again
            // after a reconnect starts from scratch.
            self.artifact = Some(PartialArtifact {
                name: chunk.name.clone(),
                data: Vec::new(),
            });
        }
        let Some(artifact) = self.artifact.as_mut() else {
            return Ok(Err("artifact chunk without a first chunk".to_owned()));
        };
        if artifact.name != chunk.name || artifact.data.len() as u64 != chunk.offset {
            return Ok(Err(format!(
                "artifact chunk of {:?} at offset {} does not continue {:?}",
                chunk.name, chunk.offset, artifact.name
            )));
        }
        let max = self.parts.max_artifact_bytes;
        if artifact.data.len() as u64 + data.len() as u64 > max {
            let name = chunk.name.clone();
            self.artifact = None;
            batch.push(EventBody::Sandbox(SandboxEvent::ArtifactRejected {
                name,
                reason: ArtifactRejectReason::TooLarge,
            }));
            return Ok(Ok(()));
        }
        artifact.data.extend_from_slice(&data);
        if !chunk.last {
            return Ok(Ok(()));
        }
        let Some(artifact) = self.artifact.take() else {
            return Ok(Ok(()));
        };
        let sha256 = hex::encode(Sha256::digest(&artifact.data));
        if chunk.sha256.as_deref() != Some(sha256.as_str()) {
            batch.push(EventBody::Sandbox(SandboxEvent::ArtifactRejected {
                name: artifact.name,
                reason: ArtifactRejectReason::ReadFailed,
            }));
            return Ok(Ok(()));
        }
        if self.n_artifacts >= protocol::MAX_ARTIFACTS {
            batch.push(EventBody::Sandbox(SandboxEvent::ArtifactRejected {
                name: artifact.name,
                reason: ArtifactRejectReason::TooMany,
            }));
            return Ok(Ok(()));
        }
        match self
            .parts
            .store
            .put_artifact(self.execution_id(), &artifact.name, &artifact.data)
            .await
        {
            Ok(info) => {
                self.n_artifacts += 1;
                batch.push(EventBody::Sandbox(SandboxEvent::ArtifactStored {
                    name: info.name,
                    size_bytes: info.size_bytes,
                    sha256: info.sha256,
                }));
            }
            Err(StoreError::ArtifactTooLarge { .. }) => {
                batch.push(EventBody::Sandbox(SandboxEvent::ArtifactRejected {
                    name: artifact.name,
                    reason: ArtifactRejectReason::TooLarge,
                }));
            }
            Err(error) => return Err(store_error(error)),
        }
        Ok(Ok(()))
    }

    async fn on_approval_request(
        &mut self,
        request: protocol::ApprovalRequest,
    ) -> Result<(), String> {
        if let Some(gate) = self.gates.get(&request.request_id) {
            // Resent after a reconnect: answer again if already decided.
            if let Some(decision) = gate.decision.clone() {
                self.send(ControllerMessage::ApprovalDecision(decision))
                    .await;
            }
            return Ok(());
        }
        let default = match request.default {
            ApprovalChoice::Approve => ApprovalDecision::Approve,
            ApprovalChoice::Deny => ApprovalDecision::Deny,
        };
        let gate = NewApproval {
            stage: request.stage.clone(),
            prompt: request.prompt.clone(),
            timeout_secs: (request.timeout_secs > 0).then_some(request.timeout_secs),
            default_decision: Some(default),
        };
        match self
            .parts
            .store
            .request_approval(self.execution_id(), &gate)
            .await
        {
            Ok(_) | Err(StoreError::ApprovalExists { .. }) => {}
            Err(error) => return Err(store_error(error)),
        }
        let timeout_at = (request.timeout_secs > 0).then(|| {
            Instant::now() + Duration::from_secs(request.timeout_secs.min(30 * 24 * 3600))
        });
        self.parts
            .control
            .gate_opened(self.execution_id(), &request.stage);
        self.gates.insert(
            request.request_id,
            Gate {
                stage: request.stage,
                default: request.default,
                timeout_at,
                decision: None,
            },
        );
        Ok(())
    }

    async fn decide(
        &mut self,
        request_id: u64,
        choice: ApprovalChoice,
        by: String,
        message: Option<String>,
    ) -> Result<(), String> {
        let Some(gate) = self.gates.get_mut(&request_id) else {
            return Ok(());
        };
        if gate.decision.is_some() {
            return Ok(());
        }
        let stage = gate.stage.clone();
        let decision = protocol::ApprovalDecision {
            request_id,
            decision: choice,
            by: by.clone(),
            message: message.clone(),
        };
        gate.decision = Some(decision.clone());
        let stored_choice = match choice {
            ApprovalChoice::Approve => ApprovalDecision::Approve,
            ApprovalChoice::Deny => ApprovalDecision::Deny,
        };
        let execution_id = self.execution_id().to_owned();
        match self
            .parts
            .store
            .decide_approval(
                &execution_id,
                &stage,
                stored_choice,
                &by,
                message.as_deref(),
            )
            .await
        {
            Ok(_) | Err(StoreError::ApprovalAlreadyDecided { .. }) => {}
            Err(error) => return Err(store_error(error)),
        }
        self.send(ControllerMessage::ApprovalDecision(decision))
            .await;
        Ok(())
    }

    async fn on_gate_timeout(&mut self, request_id: u64) -> Result<(), String> {
        let Some(gate) = self.gates.get(&request_id) else {
            return Ok(());
        };
        let (stage, default) = (gate.stage.clone(), gate.default);
        tracing::info!(%stage, ?default, "approval gate timed out");
        self.parts.control.gate_closed(self.execution_id(), &stage);
        self.decide(request_id, default, "timeout".to_owned(), None)
            .await
    }

    async fn on_command(&mut self, command: Command) -> Result<(), String> {
        match command {
            Command::Cancel { reason } => {
                // After `Done` the run is over: a late cancel changes nothing.
                if self.cancel_requested || self.agent_done.is_some() {
                    return Ok(());
                }
                tracing::info!(%reason, "cancel requested");
                self.cancel_requested = true;
                // Model calls stop now, not when the agent gets to them.
                for call in self.models.values() {
                    if let ModelCall::Running { cancel, .. } = call {
                        cancel.cancel();
                    }
                }
                self.parts
                    .relay
                    .record_controller(ControllerEvent::CancelRequested {
                        by: "api".to_owned(),
                    })
                    .await
                    .map_err(relay_error)?;
                self.send_cancel().await;
                // Whatever the agent does, the container is gone after the grace.
                self.arm_grace(CANCEL_GRACE);
                Ok(())
            }
            Command::Approval { stage, decision } => {
                let request_id = self
                    .gates
                    .iter()
                    .find(|(_, gate)| gate.stage == stage && gate.decision.is_none())
                    .map(|(request_id, _)| *request_id);
                let Some(request_id) = request_id else {
                    return Ok(());
                };
                let choice = if decision.approve {
                    ApprovalChoice::Approve
                } else {
                    ApprovalChoice::Deny
                };
                self.decide(request_id, choice, decision.by, decision.message)
                    .await
            }
        }
    }

    /// A model request: answered again if known, else one gateway call in
    /// its own task.
    async fn on_model_request(&mut self, request: ModelRequest) -> Result<(), String> {
        let request_id = request.request_id;
        match self.models.get(&request_id) {
            // Resent after a reconnect while the call still runs: the
            // answer comes when it is ready.
            Some(ModelCall::Running { .. }) => return Ok(()),
            Some(ModelCall::Answered { body }) => {
                let body = body.clone();
                self.send(ControllerMessage::ModelResponse(ModelResponse {
                    request_id,
                    body,
                }))
                .await;
                return Ok(());
            }
            None => {}
        }
        if self.cancel_requested {
            // The run is being cancelled: no new provider call (nor budget).
            return Ok(());
        }
        let n_running = self
            .models
            .values()
            .filter(|call| matches!(call, ModelCall::Running { .. }))
            .count();
        if n_running >= MAX_MODEL_CALLS_IN_FLIGHT {
            let code = ModelErrorCode::InvalidRequest;
            let message =
                format!("too many model calls in flight (at most {MAX_MODEL_CALLS_IN_FLIGHT})");
            return self
                .on_model_update(ModelUpdate::Finished {
                    request_id,
                    event: ControllerEvent::ModelCallRefused {
                        step_id: request.step_id,
                        request_id,
                        code,
                        message: message.clone(),
                    },
                    body: Some(ModelResponseBody::Error { code, message }),
                })
                .await;
        }
        let cancel = self.kill.child_token();
        self.models.insert(
            request_id,
            ModelCall::Running {
                cancel: cancel.clone(),
                wants_chunks: request.stream,
                started: None,
            },
        );
        let scope = CallScope {
            user: self.parts.owner_token_id.clone(),
            execution: self.execution_id().to_owned(),
            step_id: request.step_id.clone(),
        };
        let gateway = Arc::clone(&self.parts.gateway);
        let updates = self.model_updates_sender.clone();
        let span = tracing::info_span!("model_call", request_id, step_id = %request.step_id);
        self.model_tasks.spawn(tracing::Instrument::instrument(
            run_model_call(gateway, scope, request, cancel, updates),
            span,
        ));
        Ok(())
    }

    async fn on_model_update(&mut self, update: ModelUpdate) -> Result<(), String> {
        match update {
            ModelUpdate::Started {
                request_id,
                step_id,
                provider,
                model,
                profile,
            } => {
                let call = NewModelCall {
                    execution_id: self.execution_id().to_owned(),
                    request_id,
                    step_id: step_id.clone(),
                    user_id: self.parts.owner_token_id.clone(),
                    provider: provider.clone(),
                    model: model.clone(),
                    profile: profile.clone(),
                    started_at_ms: crate::store::now_ms(),
                };
                let row_id = self
                    .parts
                    .store
                    .begin_model_call(&call)
                    .await
                    .map_err(store_error)?;
                if let Some(ModelCall::Running { started, .. }) = self.models.get_mut(&request_id) {
                    *started = Some(StartedCall {
                        row_id,
                        step_id: step_id.clone(),
                        provider: provider.clone(),
                        model: model.clone(),
                        at: Instant::now(),
                    });
                }
                self.record(ControllerEvent::ModelCallStarted {
                    step_id,
                    request_id,
                    provider,
                    model,
                    profile,
                })
                .await
            }
            ModelUpdate::Tokens {
                request_id,
                step_id,
                text,
            } => {
                let Some(ModelCall::Running { wants_chunks, .. }) = self.models.get(&request_id)
                else {
                    return Ok(());
                };
                if *wants_chunks {
                    let body = ModelResponseBody::Chunk { text: text.clone() };
                    self.send(ControllerMessage::ModelResponse(ModelResponse {
                        request_id,
                        body,
                    }))
                    .await;
                }
                self.record(ControllerEvent::ModelOutput {
                    step_id,
                    request_id,
                    text,
                })
                .await
            }
            ModelUpdate::Note { step_id, message } => {
                self.record_engine(EngineEvent::Warning {
                    step_id: Some(step_id),
                    message,
                })
                .await
            }
            ModelUpdate::Finished {
                request_id,
                event,
                body,
            } => {
                let row_id = match self.models.get(&request_id) {
                    Some(ModelCall::Running {
                        started: Some(started),
                        ..
                    }) => Some(started.row_id),
                    _ => None,
                };
                if let (Some(id), Some(end)) = (row_id, model_call_end(&event)) {
                    self.parts
                        .store
                        .finish_model_call(id, &end)
                        .await
                        .map_err(store_error)?;
                }
                self.record(event).await?;
                let Some(body) = body else {
                    self.models.remove(&request_id);
                    return Ok(());
                };
                self.models
                    .insert(request_id, ModelCall::Answered { body: body.clone() });
                self.forget_old_answers();
                self.send(ControllerMessage::ModelResponse(ModelResponse {
                    request_id,
                    body,
                }))
                .await;
                Ok(())
            }
        }
    }

    /// Persist and publish one controller event.
    async fn record(&mut self, event: ControllerEvent) -> Result<(), String> {
        self.parts
            .relay
            .record_controller(event)
            .await
            .map_err(relay_error)
    }

    /// Persist and publish one engine event the controller produces.
    async fn record_engine(&mut self, event: EngineEvent) -> Result<(), String> {
        self.parts
            .relay
            .record(vec![EventBody::Engine(event)])
            .await
            .map_err(relay_error)?;
        Ok(())
    }

    /// Ends every model call still running when the session ends, so none
    /// stays `running` in the store or open in the events. The calls are
    /// cancelled; with `wait` (the container stopped) their own endings are
    /// recorded, bounded by [`MODEL_CLOSE_GRACE`]; what is left (or
    /// everything, when the controller stops and an agent taken back will
    /// ask again) is recorded `interrupted`. Best effort: the session is
    /// over, so failures are logged, not returned.
    async fn close_model_calls(&mut self, wait: bool) {
        for call in self.models.values() {
            if let ModelCall::Running { cancel, .. } = call {
                cancel.cancel();
            }
        }
        let is_running = |models: &BTreeMap<u64, ModelCall>| {
            models
                .values()
                .any(|call| matches!(call, ModelCall::Running { .. }))
        };
        let deadline = Instant::now() + MODEL_CLOSE_GRACE;
        while wait && is_running(&self.models) {
            let Ok(Some(update)) =
                tokio::time::timeout_at(deadline, self.model_updates.recv()).await
            else {
                break;
            };
            if let Err(detail) = self.on_model_update(update).await {
                tracing::warn!(%detail, "cannot record a model call's ending");
                break;
            }
        }
        self.model_tasks.abort_all();
        let models = std::mem::take(&mut self.models);
        for (request_id, call) in models {
            let ModelCall::Running {
                started: Some(started),
                ..
            } = call
            else {
                continue;
            };
            let end = ModelCallEnd {
                status: ModelCallStatus::Interrupted,
                provider: None,
                model: None,
                error_code: None,
                input_tokens: 0,
                output_tokens: 0,
                finished_at_ms: crate::store::now_ms(),
            };
            if let Err(error) = self
                .parts
                .store
                .finish_model_call(started.row_id, &end)
                .await
            {
                tracing::warn!(%error, "cannot record an interrupted model call");
            }
            let event = ControllerEvent::ModelCallFinished {
                step_id: started.step_id,
                request_id,
                outcome: ModelCallOutcome::Interrupted,
                provider: started.provider,
                model: started.model,
                code: None,
                message: Some("the call ended with its session".to_owned()),
                input_tokens: 0,
                output_tokens: 0,
                duration_ms: u64::try_from(started.at.elapsed().as_millis()).unwrap_or(u64::MAX),
            };
            if let Err(detail) = self.record(event).await {
                tracing::warn!(%detail, "cannot record an interrupted model call");
            }
        }
    }

    fn forget_old_answers(&mut self) {
        let answered: Vec<u64> = self
            .models
            .iter()
            .filter(|(_, call)| matches!(call, ModelCall::Answered { .. }))
            .map(|(request_id, _)| *request_id)
            .collect();
        let n_extra = answered.len().saturating_sub(MAX_MODEL_ANSWERS_KEPT);
        for request_id in answered.into_iter().take(n_extra) {
            self.models.remove(&request_id);
        }
    }

    async fn on_heartbeat(&mut self) -> Result<(), String> {
        if self.connection.is_none() {
            return Ok(());
        }
        let silence = self.last_heard.elapsed();
        if silence > Duration::from_millis(protocol::HEARTBEAT_TIMEOUT_MS) {
            tracing::info!(
                silence_ms = silence.as_millis() as u64,
                "agent silent: dropping the connection"
            );
            if let Some(connection) = self.connection.take() {
                connection.close_normal("heartbeat_timeout").await;
            }
            return Ok(());
        }
        self.send(ControllerMessage::Heartbeat {}).await;
        Ok(())
    }

    /// The container stopped: read what the agent still had in flight
    /// (bounded), persist it, and report.
    async fn finish(mut self, exit: Result<ExitReport, SandboxError>) -> Ending {
        let deadline = Instant::now() + FINAL_READ_GRACE;
        while let Some(connection) = self.connection.as_mut() {
            match tokio::time::timeout_at(deadline, connection.recv()).await {
                Ok(received) => {
                    if let Err(detail) = self.on_received(received).await {
                        return Ending::Failed { detail };
                    }
                }
                Err(_) => break,
            }
        }
        // Drop the stream now (engineering-facts: never keep it while waiting).
        self.connection = None;
        self.close_model_calls(true).await;
        match exit {
            Ok(exit) => Ending::Exited {
                exit,
                agent_done: self.agent_done,
                protocol_error: self.protocol_error,
                cancel_requested: self.cancel_requested,
            },
            Err(error) => Ending::Failed {
                detail: format!("sandbox: {error}"),
            },
        }
    }
}

/// One model call: admit (resolve, budget), stream from the provider (token
/// batches to the loop as they come), then the final response. Every update
/// goes to the session loop, which persists and publishes it.
async fn run_model_call(
    gateway: Arc<Gateway>,
    scope: CallScope,
    request: ModelRequest,
    cancel: CancellationToken,
    updates: mpsc::UnboundedSender<ModelUpdate>,
) {
    let request_id = request.request_id;
    let step_id = scope.step_id.clone();
    let mut notes = Vec::new();
    let input = ResolveInput::from_model_request(&request, &mut notes);
    let send_notes = |notes: Vec<String>| {
        for message in notes {
            let _ = updates.send(ModelUpdate::Note {
                step_id: step_id.clone(),
                message,
            });
        }
    };
    let resolution = match gateway.admit(&scope, &input) {
        Ok(resolution) => resolution,
        Err(error) => {
            tracing::info!(code = ?error.code(), %error, "model call refused");
            send_notes(notes);
            let _ = updates.send(ModelUpdate::Finished {
                request_id,
                event: ControllerEvent::ModelCallRefused {
                    step_id: step_id.clone(),
                    request_id,
                    code: error.code(),
                    message: error.to_string(),
                },
                body: Some(error.to_wire()),
            });
            return;
        }
    };
    // Notes about what the step asked for come before the call; notes
    // added while streaming (fallbacks) after it.
    let n_notes = resolution.notes.len();
    send_notes(std::mem::take(&mut notes));
    send_notes(resolution.notes.clone());
    let _ = updates.send(ModelUpdate::Started {
        request_id,
        step_id: step_id.clone(),
        provider: resolution.request.provider.clone(),
        model: resolution.request.model.clone(),
        profile: resolution.profile.clone(),
    });
    let started = Instant::now();
    let batcher = std::sync::Mutex::new(ChunkBatcher::new(
        LIVE_MIN_BYTES,
        LIVE_MAX_BYTES,
        LIVE_MAX_DELAY,
    ));
    let send_tokens = |batches: Vec<String>| {
        for text in batches {
            let _ = updates.send(ModelUpdate::Tokens {
                request_id,
                step_id: step_id.clone(),
                text,
            });
        }
    };
    let mut on_chunk = |text: &str| {
        let ready = batcher
            .lock()
            .expect("chunk batcher lock poisoned")
            .push(text, std::time::Instant::now());
        send_tokens(ready);
    };
    let mut on_retry = |notice: &crate::gateway::retry::RetryNotice| {
        tracing::info!(
            attempt = notice.attempt,
            delay_ms = notice.delay.as_millis() as u64,
            error = %notice.error,
            "model call retried"
        );
    };
    let call = gateway.stream(&scope, resolution, &cancel, &mut on_chunk, &mut on_retry);
    tokio::pin!(call);
    let result = loop {
        let deadline = batcher
            .lock()
            .expect("chunk batcher lock poisoned")
            .next_deadline();
        tokio::select! {
            result = &mut call => break result,
            () = sleep_until(deadline.map(Instant::from_std)) => {
                let ready = batcher
                    .lock()
                    .expect("chunk batcher lock poisoned")
                    .flush_due(std::time::Instant::now());
                send_tokens(ready);
            }
        }
    };
    let rest = batcher
        .lock()
        .expect("chunk batcher lock poisoned")
        .finish();
    send_tokens(rest.into_iter().collect());
    if let Ok(outcome) = &result {
        send_notes(
            outcome
                .resolution
                .notes
                .iter()
                .skip(n_notes)
                .cloned()
                .collect(),
        );
    }
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (event, body) = call_ending(step_id.clone(), request_id, result, duration_ms);
    let _ = updates.send(ModelUpdate::Finished {
        request_id,
        event,
        body,
    });
}

/// The `model_call_finished` event of a streamed call, and the answer for
/// the agent (None when the call was cancelled: nobody waits for it).
fn call_ending(
    step_id: String,
    request_id: u64,
    result: Result<CallOutcome, CallError>,
    duration_ms: u64,
) -> (ControllerEvent, Option<ModelResponseBody>) {
    let finished = |outcome, provider, model, error: Option<&CallError>, usage: Usage| {
        ControllerEvent::ModelCallFinished {
            step_id,
            request_id,
            outcome,
            provider,
            model,
            code: error.map(CallError::code),
            message: error.map(ToString::to_string),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            duration_ms,
        }
    };
    match result {
        Ok(done) => {
            let usage = done.completion.usage;
            tracing::info!(
                provider = %done.resolution.request.provider,
                model = %done.completion.model,
                input_tokens = usage.input_tokens,
                output_tokens = usage.output_tokens,
                "model call completed"
            );
            let body = done.to_wire();
            let event = finished(
                ModelCallOutcome::Completed,
                done.resolution.request.provider,
                done.completion.model,
                None,
                usage,
            );
            (event, Some(body))
        }
        // `Gateway::stream` fails only at a provider (the call was admitted).
        Err(CallError::Provider {
            provider,
            model,
            error: ProviderError::Cancelled,
        }) => {
            tracing::info!("model call cancelled");
            let event = finished(
                ModelCallOutcome::Cancelled,
                provider,
                model,
                None,
                Usage::default(),
            );
            (event, None)
        }
        Err(error) => {
            tracing::info!(code = ?error.code(), %error, "model call failed");
            let (provider, model) = match &error {
                CallError::Provider {
                    provider, model, ..
                } => (provider.clone(), model.clone()),
                CallError::Resolve(_) | CallError::Budget(_) => (String::new(), String::new()),
            };
            let body = error.to_wire();
            let event = finished(
                ModelCallOutcome::Failed,
                provider,
                model,
                Some(&error),
                Usage::default(),
            );
            (event, Some(body))
        }
    }
}

/// What the store keeps of a finished call (None for a refused one, which
/// has no row).
fn model_call_end(event: &ControllerEvent) -> Option<ModelCallEnd> {
    let ControllerEvent::ModelCallFinished {
        outcome,
        provider,
        model,
        code,
        input_tokens,
        output_tokens,
        ..
    } = event
    else {
        return None;
    };
    Some(ModelCallEnd {
        status: match outcome {
            ModelCallOutcome::Completed => ModelCallStatus::Completed,
            ModelCallOutcome::Failed => ModelCallStatus::Failed,
            ModelCallOutcome::Cancelled => ModelCallStatus::Cancelled,
            ModelCallOutcome::Interrupted => ModelCallStatus::Interrupted,
        },
        provider: Some(provider.clone()),
        model: Some(model.clone()),
        error_code: code.map(|code| {
            serde_json::to_value(code)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default()
        }),
        input_tokens: *input_tokens,
        output_tokens: *output_tokens,
        finished_at_ms: crate::store::now_ms(),
    })
}

fn protocol_reason(error: &LinkError) -> &'static str {
    match error {
        LinkError::Protocol { error, .. } => error.reason(),
        LinkError::BudgetExceeded { .. } => "budget_exceeded",
        _ => "transport_error",
    }
}

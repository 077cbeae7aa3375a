//! The agent's end of the agent link (see the `protocol` crate doc).
//!
//! One connection task owns the WebSocket. It connects to the Unix socket,
//! says hello, and then runs two halves concurrently: the writer sends what
//! is pending (unacked reliable messages, approval and model requests,
//! heartbeats), the reader handles acks and commands and watches the
//! controller's silence (the reader never waits for the writer). When the
//! connection drops, it reconnects with [`Backoff`] and resumes with the
//! session key; everything not acknowledged is sent again, in order.
//!
//! The rest of the agent talks to it through [`Link`]:
//! - [`Link::send_event`] / [`Link::send_artifact_chunk`] / [`Link::send_done`]
//!   assign the next seq and wait for room in the bounded unacked buffer
//!   (count and bytes): this is the backpressure that bounds memory;
//! - [`Link::request_approval`] and [`Link::request_model`] register a
//!   request that is (re)sent on every connection until answered;
//! - [`Link::cancelled`] fires when the controller sends `cancel`;
//! - [`Link::close`] performs the close handshake once everything is acked.
//!
//! Close handshake (engineering-facts.md, "two deadlocks"): after sending
//! Close the agent keeps reading until the reply arrives or the stream ends
//! (never waiting for the server to close the socket), and when the
//! controller sends Close the agent keeps polling so tungstenite flushes the
//! reply.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use protocol::{
    AgentEventBody, AgentMessage, ApprovalDecision, ApprovalRequest, ArtifactChunk,
    ControllerMessage, Done, Hello, Job, MAX_FRAME_BYTES, MAX_UNACKED_BYTES, MAX_UNACKED_MESSAGES,
    ModelRequest, ModelResponseBody, Outcome, PROTOCOL_VERSION, ProtocolError, RejectReason,
    Resume, SandboxEvent, WireEvent, decode_controller_message, encode_agent_message,
};
use tokio::net::UnixStream;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// How to reach the controller and how patient to be.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub socket: PathBuf,
    pub execution_id: String,
    pub token: String,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Give up when no connection could be (re)established for this long.
    pub give_up_after: Duration,
}

/// Why the link is gone for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkFailure {
    #[error("controller rejected the hello: {reason:?}")]
    Rejected { reason: RejectReason },
    #[error("no connection to the controller for {secs} s")]
    GaveUp { secs: u64 },
}

/// A reliable message could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("encode message: {0}")]
    Encode(#[from] ProtocolError),
    #[error("the link is closed")]
    Closed,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HELLO_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

struct PendingModel {
    frame: Arc<str>,
    responses: mpsc::Sender<ModelResponseBody>,
}

struct PendingApproval {
    frame: Arc<str>,
    decision: oneshot::Sender<ApprovalDecision>,
}

#[derive(Default)]
struct State {
    unacked: VecDeque<(u64, Arc<str>)>,
    approvals: BTreeMap<u64, PendingApproval>,
    models: BTreeMap<u64, PendingModel>,
    /// Unreliable one-shot frames (model cancel), dropped on disconnect.
    control: VecDeque<Arc<str>>,
    session_key: Option<String>,
    job: Option<oneshot::Sender<Job>>,
    is_closing: bool,
}

struct SendOrder {
    next_seq: u64,
    /// Set once `done` is queued: nothing reliable may follow it.
    is_done_queued: bool,
}

struct Shared {
    config: LinkConfig,
    state: Mutex<State>,
    /// Serialises seq assignment with buffer admission.
    send_order: tokio::sync::Mutex<SendOrder>,
    slots: Semaphore,
    bytes: Semaphore,
    outgoing: Notify,
    acked: watch::Sender<u64>,
    failure: watch::Sender<Option<LinkFailure>>,
    cancel: CancellationToken,
    next_request_id: Mutex<u64>,
}

/// Handle to the agent link; cheap to clone.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

/// What a started link gives the agent.
pub struct Started {
    pub link: Link,
    pub job: oneshot::Receiver<Job>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

impl Link {
    /// Starts the connection task.
    pub fn start(config: LinkConfig) -> Started {
        let (job_sender, job_receiver) = oneshot::channel();
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                job: Some(job_sender),
                ..State::default()
            }),
            send_order: tokio::sync::Mutex::new(SendOrder {
                next_seq: 1,
                is_done_queued: false,
            }),
            slots: Semaphore::new(MAX_UNACKED_MESSAGES),
            bytes: Semaphore::new(MAX_UNACKED_BYTES),
            outgoing: Notify::new(),
            acked: watch::Sender::new(0),
            failure: watch::Sender::new(None),
            cancel: CancellationToken::new(),
            next_request_id: Mutex::new(1),
        });
        let task = tokio::spawn(connection_loop(shared.clone()));
        Started {
            link: Link { shared },
            job: job_receiver,
            task,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .expect("link state lock is never poisoned")
    }

    /// Fires when the controller sent `cancel`.
    pub fn cancelled(&self) -> CancellationToken {
        self.shared.cancel.clone()
    }

    /// Resolves when the link failed for good.
    pub async fn failed(&self) -> LinkFailure {
        let mut failure = self.shared.failure.subscribe();
        loop {
            if let Some(reason) = failure.borrow_and_update().clone() {
                return reason;
            }
            if failure.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn failure(&self) -> Option<LinkFailure> {
        self.shared.failure.borrow().clone()
    }

    /// Queues an event; waits while the unacked buffer is full.
    pub async fn send_event(&self, body: AgentEventBody) -> Result<u64, SendError> {
        self.send_reliable(|seq| {
            AgentMessage::Event(WireEvent {
                seq,
                at_ms: now_ms(),
                body,
            })
        })
        .await
    }

    /// Queues an event only if that needs no waiting; gives it back otherwise.
    fn try_send_event_now(&self, body: AgentEventBody) -> Option<AgentEventBody> {
        let Ok(mut order) = self.shared.send_order.try_lock() else {
            return Some(body);
        };
        if order.is_done_queued {
            return None;
        }
        let seq = order.next_seq;
        let message = AgentMessage::Event(WireEvent {
            seq,
            at_ms: now_ms(),
            body,
        });
        let Ok(frame) = encode_agent_message(&message) else {
            return None;
        };
        let AgentMessage::Event(WireEvent { body, .. }) = message else {
            return None;
        };
        let n_bytes = u32::try_from(frame.len().min(MAX_UNACKED_BYTES))
            .expect("bounded by MAX_UNACKED_BYTES");
        let Ok(slot) = self.shared.slots.try_acquire() else {
            return Some(body);
        };
        let Ok(bytes) = self.shared.bytes.try_acquire_many(n_bytes) else {
            return Some(body);
        };
        slot.forget();
        bytes.forget();
        self.state().unacked.push_back((seq, Arc::from(frame)));
        order.next_seq = seq + 1;
        self.shared.outgoing.notify_one();
        None
    }

    /// Queues an artifact chunk (its `seq` is assigned here).
    pub async fn send_artifact_chunk(&self, mut chunk: ArtifactChunk) -> Result<u64, SendError> {
        self.send_reliable(move |seq| {
            chunk.seq = seq;
            AgentMessage::ArtifactChunk(chunk)
        })
        .await
    }

    /// Queues `done`, the last reliable message.
    pub async fn send_done(&self, outcome: Outcome) -> Result<u64, SendError> {
        self.send_reliable(|seq| AgentMessage::Done(Done { seq, outcome }))
            .await
    }

    async fn send_reliable(
        &self,
        build: impl FnOnce(u64) -> AgentMessage,
    ) -> Result<u64, SendError> {
        let mut order = self.shared.send_order.lock().await;
        if order.is_done_queued {
            // `done` is the last reliable message, always.
            return Err(SendError::Closed);
        }
        let seq = order.next_seq;
        let message = build(seq);
        let is_done = matches!(message, AgentMessage::Done(_));
        let frame: Arc<str> = Arc::from(encode_agent_message(&message)?);
        let n_bytes = u32::try_from(frame.len().min(MAX_UNACKED_BYTES))
            .expect("bounded by MAX_UNACKED_BYTES");
        let slot = self
            .shared
            .slots
            .acquire()
            .await
            .map_err(|_| SendError::Closed)?;
        let bytes = self
            .shared
            .bytes
            .acquire_many(n_bytes)
            .await
            .map_err(|_| SendError::Closed)?;
        slot.forget();
        bytes.forget();
        self.state().unacked.push_back((seq, frame));
        order.next_seq = seq + 1;
        order.is_done_queued = is_done;
        self.shared.outgoing.notify_one();
        Ok(seq)
    }

    /// Waits until everything up to `seq` is acknowledged, or the link failed.
    pub async fn wait_acked(&self, seq: u64) -> Result<(), LinkFailure> {
        let mut acked = self.shared.acked.subscribe();
        loop {
            if *acked.borrow_and_update() >= seq {
                return Ok(());
            }
            tokio::select! {
                changed = acked.changed() => {
                    if changed.is_err() {
                        return Err(self.failure().unwrap_or(LinkFailure::GaveUp { secs: 0 }));
                    }
                }
                failure = self.failed() => return Err(failure),
            }
        }
    }

    fn next_request_id(&self) -> u64 {
        let mut next = self
            .shared
            .next_request_id
            .lock()
            .expect("request id lock is never poisoned");
        let id = *next;
        *next += 1;
        id
    }

    /// Sends an approval request (again after every reconnect) and waits for
    /// the decision. Dropping the future withdraws the request locally.
    pub async fn request_approval(
        &self,
        mut request: ApprovalRequest,
    ) -> Result<ApprovalDecision, SendError> {
        let request_id = self.next_request_id();
        request.request_id = request_id;
        let frame: Arc<str> = Arc::from(encode_agent_message(&AgentMessage::ApprovalRequest(
            request,
        ))?);
        let (sender, receiver) = oneshot::channel();
        self.state().approvals.insert(
            request_id,
            PendingApproval {
                frame,
                decision: sender,
            },
        );
        self.shared.outgoing.notify_one();
        let guard = RequestGuard {
            link: self.clone(),
            request_id,
            is_model: false,
        };
        let decision = receiver.await.map_err(|_| SendError::Closed);
        drop(guard);
        decision
    }

    /// Sends a model request; returns its id and the stream of responses
    /// (chunks, then `completed` or `error`). Call [`Link::end_model_request`]
    /// when done with it.
    pub fn request_model(
        &self,
        mut request: ModelRequest,
    ) -> Result<(u64, mpsc::Receiver<ModelResponseBody>), SendError> {
        let request_id = self.next_request_id();
        request.request_id = request_id;
        let frame: Arc<str> = Arc::from(encode_agent_message(&AgentMessage::ModelRequest(
            Box::new(request),
        ))?);
        let (sender, receiver) = mpsc::channel(64);
        self.state().models.insert(
            request_id,
            PendingModel {
                frame,
                responses: sender,
            },
        );
        self.shared.outgoing.notify_one();
        Ok((request_id, receiver))
    }

    /// Forgets a model request; if it was unanswered, tells the controller.
    pub fn end_model_request(&self, request_id: u64, is_answered: bool) {
        let mut state = self.state();
        state.models.remove(&request_id);
        if !is_answered
            && let Ok(frame) = encode_agent_message(&AgentMessage::ModelCancel { request_id })
        {
            state.control.push_back(Arc::from(frame));
        }
        drop(state);
        self.shared.outgoing.notify_one();
    }

    /// Once everything queued is acknowledged, closes the WebSocket cleanly
    /// and stops reconnecting. Returns when the connection task ended or
    /// after `timeout`.
    pub async fn close(&self, task: tokio::task::JoinHandle<()>, timeout: Duration) {
        self.state().is_closing = true;
        self.shared.outgoing.notify_one();
        let _ = tokio::time::timeout(timeout, task).await;
    }
}

/// Removes a pending request when its waiter goes away.
struct RequestGuard {
    link: Link,
    request_id: u64,
    is_model: bool,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut state = self.link.state();
        if self.is_model {
            state.models.remove(&self.request_id);
        } else {
            state.approvals.remove(&self.request_id);
        }
    }
}

type Ws = WebSocketStream<UnixStream>;

/// How one connection ended.
enum Ended {
    /// Dropped, timed out, or broke the protocol: reconnect.
    Lost,
    /// Closed cleanly after everything was acknowledged: stop.
    Closed,
}

/// Why a connection attempt failed.
enum ConnectError {
    Retry,
    Rejected(RejectReason),
}

async fn connection_loop(shared: Arc<Shared>) {
    let mut backoff = Backoff::for_reconnect();
    let mut down_since: Option<Instant> = None;
    let mut n_attempts: u32 = 0;
    let mut has_connected = false;
    loop {
        n_attempts += 1;
        match connect(&shared).await {
            Ok(ws) => {
                backoff.reset();
                if has_connected {
                    let down_ms = down_since
                        .map(|since| since.elapsed().as_millis() as u64)
                        .unwrap_or(0);
                    let link = Link {
                        shared: shared.clone(),
                    };
                    let event = AgentEventBody::Sandbox(SandboxEvent::AgentReconnected {
                        attempts: n_attempts,
                        down_ms,
                    });
                    // Queued before anything of the new session, unless the
                    // buffer is full; then later, from a task (waiting here
                    // would block the acks that free the buffer).
                    if let Some(event) = link.try_send_event_now(event) {
                        tokio::spawn(async move {
                            let _ = link.send_event(event).await;
                        });
                    }
                }
                has_connected = true;
                n_attempts = 0;
                down_since = None;
                match run_session(&shared, ws).await {
                    Ended::Closed => return,
                    Ended::Lost => {}
                }
            }
            Err(ConnectError::Rejected(reason)) => {
                shared
                    .failure
                    .send_replace(Some(LinkFailure::Rejected { reason }));
                shared.slots.close();
                shared.bytes.close();
                return;
            }
            Err(ConnectError::Retry) => {}
        }
        let since = *down_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= shared.config.give_up_after {
            let secs = shared.config.give_up_after.as_secs();
            shared
                .failure
                .send_replace(Some(LinkFailure::GaveUp { secs }));
            shared.slots.close();
            shared.bytes.close();
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// Connects, says hello, and waits for welcome.
async fn connect(shared: &Shared) -> Result<Ws, ConnectError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&shared.config.socket))
        .await
        .map_err(|_| ConnectError::Retry)?
        .map_err(|_| ConnectError::Retry)?;
    let handshake = tokio_tungstenite::client_async_with_config(
        "ws://kiln-agent/agent",
        stream,
        Some(ws_config()),
    );
    let (mut ws, _response) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| ConnectError::Retry)?
        .map_err(|_| ConnectError::Retry)?;
    let resume = {
        let state = shared
            .state
            .lock()
            .expect("link state lock is never poisoned");
        state.session_key.clone().map(|session_key| Resume {
            session_key,
            last_acked_seq: *shared.acked.borrow(),
        })
    };
    let hello = AgentMessage::Hello(Hello {
        version: PROTOCOL_VERSION,
        execution_id: shared.config.execution_id.clone(),
        token: if resume.is_some() {
            String::new()
        } else {
            shared.config.token.clone()
        },
        resume,
    });
    let frame = encode_agent_message(&hello).map_err(|_| ConnectError::Retry)?;
    ws.send(Message::text(frame))
        .await
        .map_err(|_| ConnectError::Retry)?;
    let reply = tokio::time::timeout(HELLO_REPLY_TIMEOUT, next_controller_message(&mut ws))
        .await
        .map_err(|_| ConnectError::Retry)?;
    match reply {
        Some(Ok(ControllerMessage::Welcome { session_key })) => {
            let mut state = shared
                .state
                .lock()
                .expect("link state lock is never poisoned");
            state.session_key = Some(session_key);
            Ok(ws)
        }
        Some(Ok(ControllerMessage::Reject { reason })) => {
            close_quietly(ws, CloseCode::Normal, "rejected").await;
            Err(ConnectError::Rejected(reason))
        }
        Some(Err(error)) => {
            close_quietly(ws, CloseCode::from(error.close_code()), error.reason()).await;
            Err(ConnectError::Retry)
        }
        Some(Ok(_)) => {
            close_quietly(ws, CloseCode::Policy, "expected welcome").await;
            Err(ConnectError::Retry)
        }
        None => Err(ConnectError::Retry),
    }
}

/// The next protocol message; `None` when the stream ended or broke.
/// Ping/pong are handled by tungstenite; a Close is answered by polling on.
async fn next_controller_message<S>(ws: &mut S) -> Option<Result<ControllerMessage, ProtocolError>>
where
    S: futures::Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return Some(decode_controller_message(text.as_str())),
            Ok(Message::Binary(_)) => return Some(Err(ProtocolError::BinaryFrame)),
            Ok(Message::Close(_)) => {
                drain_after_close(ws).await;
                return None;
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// After receiving Close: keep polling so the reply is flushed, until the
/// stream ends (deadlock 1), bounded in time.
async fn drain_after_close<S>(ws: &mut S)
where
    S: futures::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Sends Close and waits briefly for the reply; never waits for the server
/// to shut the socket (deadlock 2).
async fn close_quietly(mut ws: Ws, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_string().into(),
    };
    let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, async {
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
        }
    })
    .await;
}

/// How the reading half of a session ended.
enum ReadEnd {
    /// The stream ended or broke (or the controller closed).
    Lost,
    /// The controller broke the protocol.
    Protocol(ProtocolError),
    /// Nothing heard for the heartbeat timeout.
    Silent,
}

/// How the writing half of a session ended.
enum WriteEnd {
    Lost,
    /// Everything is acknowledged and the Close frame is sent.
    CloseSent,
}

/// One connected session. Reading and writing run concurrently (two futures
/// over the split WebSocket): the agent never stops reading acks while a
/// write waits, so a controller that writes acks from the same task that
/// reads events cannot deadlock with it (on Unix sockets, a few hundred
/// small unread acks already fill the socket buffer).
async fn run_session(shared: &Arc<Shared>, ws: Ws) -> Ended {
    {
        // Control frames from an earlier connection are stale.
        let mut state = shared
            .state
            .lock()
            .expect("link state lock is never poisoned");
        state.control.clear();
    }
    let sent_upto = AtomicU64::new(*shared.acked.borrow());
    let (mut sink, mut stream) = ws.split();
    let read_end = tokio::select! {
        read_end = read_half(shared, &mut stream, &sent_upto) => read_end,
        write_end = write_half(shared, &mut sink, &sent_upto) => match write_end {
            WriteEnd::Lost => return Ended::Lost,
            WriteEnd::CloseSent => {
                // Wait briefly for the close reply; never for the server to
                // shut the socket (deadlock 2).
                let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, async {
                    while let Some(Ok(message)) = stream.next().await {
                        if matches!(message, Message::Close(_)) {
                            return;
                        }
                    }
                })
                .await;
                return Ended::Closed;
            }
        },
    };
    let (code, reason, patience) = match &read_end {
        ReadEnd::Lost => return Ended::Lost,
        ReadEnd::Protocol(error) => (
            CloseCode::from(error.close_code()),
            error.reason(),
            CLOSE_REPLY_TIMEOUT,
        ),
        // A silent peer will not answer a close either: do not wait.
        ReadEnd::Silent => (
            CloseCode::Away,
            "heartbeat timeout",
            Duration::from_millis(100),
        ),
    };
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(patience, sink.send(Message::Close(Some(frame)))).await;
    Ended::Lost
}

async fn read_half<S>(shared: &Shared, stream: &mut S, sent_upto: &AtomicU64) -> ReadEnd
where
    S: futures::Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let heard = tokio::time::timeout(
            shared.config.heartbeat_timeout,
            next_controller_message(stream),
        )
        .await;
        match heard {
            Err(_) => return ReadEnd::Silent,
            Ok(None) => return ReadEnd::Lost,
            Ok(Some(Err(error))) => return ReadEnd::Protocol(error),
            Ok(Some(Ok(message))) => {
                handle_message(shared, message, sent_upto.load(Ordering::SeqCst))
            }
        }
    }
}

async fn write_half<K>(shared: &Shared, sink: &mut K, sent_upto: &AtomicU64) -> WriteEnd
where
    K: futures::Sink<Message> + Unpin,
{
    let mut sent_requests: BTreeSet<u64> = BTreeSet::new();
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (frames, should_close) =
            due_frames(shared, sent_upto.load(Ordering::SeqCst), &mut sent_requests);
        for (seq, frame) in frames {
            if sink.send(Message::text(frame.to_string())).await.is_err() {
                return WriteEnd::Lost;
            }
            // Stored right after the write completed: an ack for `seq` can
            // only be read after this.
            if let Some(seq) = seq {
                sent_upto.store(seq, Ordering::SeqCst);
            }
        }
        if should_close {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            };
            if sink.send(Message::Close(Some(frame))).await.is_err() {
                return WriteEnd::Lost;
            }
            return WriteEnd::CloseSent;
        }
        tokio::select! {
            _ = shared.outgoing.notified() => {}
            _ = heartbeat.tick() => {
                let seq_sent = sent_upto.load(Ordering::SeqCst);
                let frame = encode_agent_message(&AgentMessage::Heartbeat { seq_sent })
                    .expect("a heartbeat always encodes");
                if sink.send(Message::text(frame)).await.is_err() {
                    return WriteEnd::Lost;
                }
            }
        }
    }
}

/// Frames to send now: unsent reliable messages, requests not yet sent on
/// this connection, control frames. Also whether to close now (closing was
/// asked and everything is acknowledged).
/// A frame to send, with its reliable seq if it has one.
type DueFrame = (Option<u64>, Arc<str>);

fn due_frames(
    shared: &Shared,
    sent_upto: u64,
    sent_requests: &mut BTreeSet<u64>,
) -> (Vec<DueFrame>, bool) {
    let mut state = shared
        .state
        .lock()
        .expect("link state lock is never poisoned");
    let mut frames = Vec::new();
    for (seq, frame) in &state.unacked {
        if *seq > sent_upto {
            frames.push((Some(*seq), frame.clone()));
        }
    }
    for (request_id, approval) in &state.approvals {
        if sent_requests.insert(*request_id) {
            frames.push((None, approval.frame.clone()));
        }
    }
    for (request_id, model) in &state.models {
        if sent_requests.insert(*request_id) {
            frames.push((None, model.frame.clone()));
        }
    }
    frames.extend(state.control.drain(..).map(|frame| (None, frame)));
    let should_close = state.is_closing && state.unacked.is_empty();
    (frames, should_close)
}

fn handle_message(shared: &Shared, message: ControllerMessage, sent_upto: u64) {
    match message {
        ControllerMessage::Ack { seq } => {
            // A hostile or confused controller cannot ack what was not sent.
            let seq = seq.min(sent_upto);
            let mut state = shared
                .state
                .lock()
                .expect("link state lock is never poisoned");
            let mut n_released = 0usize;
            let mut n_bytes = 0usize;
            while let Some((front_seq, frame)) = state.unacked.front() {
                if *front_seq > seq {
                    break;
                }
                n_released += 1;
                n_bytes += frame.len().min(MAX_UNACKED_BYTES);
                state.unacked.pop_front();
            }
            drop(state);
            shared.slots.add_permits(n_released);
            shared.bytes.add_permits(n_bytes);
            shared.acked.send_if_modified(|acked| {
                if seq > *acked {
                    *acked = seq;
                    true
                } else {
                    false
                }
            });
            shared.outgoing.notify_one();
        }
        ControllerMessage::Job(job) => {
            let mut state = shared
                .state
                .lock()
                .expect("link state lock is never poisoned");
            if let Some(sender) = state.job.take() {
                let _ = sender.send(*job);
            }
        }
        ControllerMessage::Cancel { .. } => shared.cancel.cancel(),
        ControllerMessage::ApprovalDecision(decision) => {
            let mut state = shared
                .state
                .lock()
                .expect("link state lock is never poisoned");
            if let Some(pending) = state.approvals.remove(&decision.request_id) {
                let _ = pending.decision.send(decision);
            }
        }
        ControllerMessage::ModelResponse(response) => {
            let state = shared
                .state
                .lock()
                .expect("link state lock is never poisoned");
            if let Some(pending) = state.models.get(&response.request_id) {
                if matches!(response.body, ModelResponseBody::Chunk { .. }) {
                    // A full channel means the step is not reading streamed
                    // chunks: drop them rather than block the link.
                    let _ = pending.responses.try_send(response.body);
                } else {
                    let responses = pending.responses.clone();
                    tokio::spawn(async move {
                        let _ = responses.send(response.body).await;
                    });
                }
            }
        }
        ControllerMessage::Heartbeat {}
        | ControllerMessage::Welcome { .. }
        | ControllerMessage::Reject { .. } => {}
    }
}

//! Stage: sandbox (container) → **agent_link** → relay.
//!
//! The controller's end of the agent protocol (see the `protocol` crate doc).
//! This is a trust boundary: everything that arrives here comes from a
//! container that runs a stranger's code, so this file is deliberately small
//! and boring. What it guarantees:
//!
//! - **Identity comes from the socket, never the payload.** Each execution
//!   gets its own listener at `<run_dir>/<execution_id>/agent.sock`; a
//!   connection on that listener can only be about that execution. The peer
//!   must be root (the agent is uid 0 in a container without a user
//!   namespace; steps run as other uids and get EACCES on the 0600 socket),
//!   and once the container exists its id must appear in the peer's
//!   `/proc/<pid>/cgroup`. `Hello.execution_id` is compared, not trusted.
//! - **The token is one-time.** 32 random bytes, hex, written to a 0400 root
//!   file that the agent reads once; the controller keeps only its SHA-256.
//!   The first accepted hello consumes it (and deletes the file); a replay is
//!   rejected and reported for the audit log.
//! - **Reconnects use a session key**, rotated on every `Welcome`, of which
//!   only the SHA-256 is kept (and persisted, so a restarted controller can
//!   take the agent back).
//! - **Everything is bounded.** The WebSocket refuses messages and frames over
//!   `protocol::MAX_FRAME_BYTES` (close 1009); invalid UTF-8 closes with 1007,
//!   binary frames 1003, other violations 1008 (codes from
//!   `ProtocolError::close_code`). A handshake (upgrade + hello) that does not
//!   finish in [`HANDSHAKE_TIMEOUT`] is dropped, so a half-open connection
//!   cannot hold the listener. Messages are rate limited by a token bucket:
//!   when it is empty we simply stop reading (backpressure through the
//!   socket buffer); past the per-execution message and byte budgets the
//!   link ends as a protocol error.
//! - **Closing follows the two deadlocks in engineering-facts.md:** after a
//!   Close we keep polling until the stream ends, and the stream is dropped
//!   right after, never kept while waiting for the container.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{AgentMessage, ControllerMessage, Hello, ProtocolError, RejectReason};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// Socket file name inside the per-execution directory.
pub const SOCKET_FILE: &str = "agent.sock";
/// Token file name inside the per-execution directory.
pub const TOKEN_FILE: &str = "token";
/// Upgrade plus hello must finish within this time (half-open handshakes).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// After we send or receive a Close, how long we keep draining the stream.
pub const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Sustained messages per second accepted from one agent.
pub const MESSAGES_PER_SEC: u32 = 5_000;
/// Burst above the sustained rate.
pub const MESSAGE_BURST: u32 = 10_000;
/// Hard budget of messages one execution may send; beyond it the link ends
/// as a protocol error (a flood that backpressure alone would let run until
/// the wall deadline).
pub const MAX_MESSAGES_PER_EXECUTION: u64 = 2_000_000;
/// Hard budget of frame bytes one execution may send.
pub const MAX_BYTES_PER_EXECUTION: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("create socket directory {path}")]
    CreateSocketDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bind agent socket {path}")]
    BindSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write token file {path}")]
    WriteToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("accept on agent socket of execution {execution_id}")]
    Accept {
        execution_id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("agent of execution {execution_id} broke the protocol: {error}")]
    Protocol {
        execution_id: String,
        error: ProtocolError,
    },
    #[error("agent of execution {execution_id} exceeded its {budget} budget")]
    BudgetExceeded {
        execution_id: String,
        budget: &'static str,
    },
    #[error("agent connection of execution {execution_id} failed: {detail}")]
    Transport {
        execution_id: String,
        detail: String,
    },
}

impl LinkError {
    /// True when the agent broke the protocol (the execution ends as
    /// `protocol_error`), false for a plain transport failure (the agent may
    /// reconnect).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            LinkError::Protocol { .. } | LinkError::BudgetExceeded { .. }
        )
    }
}

/// Why a connection attempt was refused. Reported for the audit log; the
/// execution itself continues (a refused stranger must not be able to end it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable snake_case reason (`bad_token`, `wrong_execution`, ...).
    pub reason: &'static str,
    pub detail: String,
}

/// How a connection was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// First connection, authenticated by the one-time token: send the Job.
    Fresh,
    /// A reconnect with the session key: the agent resends after this seq.
    Resumed { last_acked_seq: u64 },
}

/// The result of waiting for one incoming connection.
pub enum Accepted {
    Connected {
        /// Boxed: a WebSocket is large next to a rejection.
        connection: Box<AgentConnection>,
        admission: Admission,
        /// SHA-256 (hex) of the new session key: persist it.
        session_sha256: String,
    },
    Rejected(Rejection),
}

/// The directory holding one execution's socket and token.
pub fn socket_dir(run_dir: &Path, execution_id: &str) -> PathBuf {
    run_dir.join(execution_id)
}

/// Remove an execution's socket directory (missing is fine).
pub fn remove_socket_dir(run_dir: &Path, execution_id: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(socket_dir(run_dir, execution_id)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// SHA-256 in lower-case hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn is_same_secret(presented: &str, expected_sha256: &str) -> bool {
    sha256_hex(presented)
        .as_bytes()
        .ct_eq(expected_sha256.as_bytes())
        .into()
}

/// One execution's listener plus what authenticates its agent.
pub struct LinkEndpoint {
    execution_id: String,
    dir: PathBuf,
    listener: UnixListener,
    /// SHA-256 of the one-time token until the first hello consumes it.
    token_sha256: Option<String>,
    /// SHA-256 of the current session key (after the first Welcome).
    session_sha256: Option<String>,
    /// Docker's container id, once the container exists.
    container_id: Option<String>,
    /// The controller's own uid: only a peer with the same uid (root) is the agent.
    own_uid: u32,
    /// Messages and bytes received over every connection of this execution.
    n_messages: u64,
    n_bytes: u64,
}

impl LinkEndpoint {
    /// For a new execution, BEFORE its container is created: make
    /// `<run_dir>/<id>/` (0711 root: the agent needs only `x`), bind
    /// `agent.sock` (0600 root) and write `token` (0400 root).
    pub fn create(run_dir: &Path, execution_id: &str) -> Result<LinkEndpoint, LinkError> {
        let dir = socket_dir(run_dir, execution_id);
        let dir_error = |source| LinkError::CreateSocketDir {
            path: dir.clone(),
            source,
        };
        // create_dir (not _all) fails on a leftover: never reuse a directory
        // we did not just make.
        std::fs::create_dir(&dir).map_err(dir_error)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(dir_error)?;

        let token = random_secret();
        let token_path = dir.join(TOKEN_FILE);
        let write_token = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&token_path)?;
            file.write_all(token.as_bytes())?;
            file.sync_all()
        };
        write_token().map_err(|source| LinkError::WriteToken {
            path: token_path.clone(),
            source,
        })?;

        let mut endpoint = LinkEndpoint::bind(dir, execution_id)?;
        endpoint.token_sha256 = Some(sha256_hex(&token));
        Ok(endpoint)
    }

    /// After a controller restart, for an execution whose container still
    /// runs: bind a fresh listener on the same path. Only a resume with the
    /// persisted session key is admitted (the token was consumed long ago).
    pub fn reopen(
        run_dir: &Path,
        execution_id: &str,
        session_sha256: Option<String>,
        container_id: Option<String>,
    ) -> Result<LinkEndpoint, LinkError> {
        let dir = socket_dir(run_dir, execution_id);
        let socket_path = dir.join(SOCKET_FILE);
        // The old socket inode is dead with the old process; the directory
        // (bind-mounted into the running container) must stay the same inode,
        // so only the socket file is replaced.
        match std::fs::remove_file(&socket_path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(LinkError::BindSocket {
                    path: socket_path,
                    source,
                });
            }
            _ => {}
        }
        // A token file still present was never consumed: it stays unusable.
        let _ = std::fs::remove_file(dir.join(TOKEN_FILE));
        let mut endpoint = LinkEndpoint::bind(dir, execution_id)?;
        endpoint.session_sha256 = session_sha256;
        endpoint.container_id = container_id;
        Ok(endpoint)
    }

    fn bind(dir: PathBuf, execution_id: &str) -> Result<LinkEndpoint, LinkError> {
        let socket_path = dir.join(SOCKET_FILE);
        let bind_error = |source| LinkError::BindSocket {
            path: socket_path.clone(),
            source,
        };
        let listener = UnixListener::bind(&socket_path).map_err(bind_error)?;
        // Connecting needs write permission on the socket inode: 0600 root
        // lets the agent (uid 0) in and gives every step uid EACCES.
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        let own_uid = std::fs::metadata("/proc/self").map_or(0, |meta| meta.uid());
        Ok(LinkEndpoint {
            execution_id: execution_id.to_owned(),
            dir,
            listener,
            token_sha256: None,
            session_sha256: None,
            container_id: None,
            own_uid,
            n_messages: 0,
            n_bytes: 0,
        })
    }

    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The container now exists: from here on, a peer must live in its cgroup.
    pub fn set_container_id(&mut self, container_id: &str) {
        self.container_id = Some(container_id.to_owned());
    }

    /// Whether the token was consumed (a first hello was accepted).
    pub fn is_token_consumed(&self) -> bool {
        self.token_sha256.is_none()
    }

    /// Wait for the next connection and run its handshake (bounded by
    /// [`HANDSHAKE_TIMEOUT`]). NOT cancel-safe as a whole; an event loop
    /// should `select!` on [`LinkEndpoint::incoming`] and then await
    /// [`LinkEndpoint::handshake`] outside the `select!`.
    pub async fn accept(&mut self) -> Result<Accepted, LinkError> {
        let stream = self.incoming().await?;
        Ok(self.handshake(stream).await)
    }

    /// The next raw connection. Cancel-safe.
    pub async fn incoming(&mut self) -> Result<UnixStream, LinkError> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|source| LinkError::Accept {
                execution_id: self.execution_id.clone(),
                source,
            })?;
        Ok(stream)
    }

    /// Check the peer and run the WebSocket upgrade and hello, bounded by
    /// [`HANDSHAKE_TIMEOUT`] (a half-open handshake is dropped).
    pub async fn handshake(&mut self, stream: UnixStream) -> Accepted {
        if let Err(rejection) = self.check_peer(&stream) {
            return Accepted::Rejected(rejection);
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.upgrade_and_admit(stream)).await {
            Ok(accepted) => accepted,
            Err(_) => Accepted::Rejected(Rejection {
                reason: "handshake_timeout",
                detail: format!("no hello within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            }),
        }
    }

    /// Who is on the other end, from the kernel (SO_PEERCRED), not the payload.
    fn check_peer(&self, stream: &UnixStream) -> Result<(), Rejection> {
        let credentials = stream.peer_cred().map_err(|error| Rejection {
            reason: "peer_unknown",
            detail: format!("SO_PEERCRED failed: {error}"),
        })?;
        if credentials.uid() != self.own_uid {
            return Err(Rejection {
                reason: "peer_not_agent",
                detail: format!("peer uid {} is not the agent's", credentials.uid()),
            });
        }
        let Some(container_id) = &self.container_id else {
            return Ok(());
        };
        let Some(pid) = credentials.pid() else {
            return Err(Rejection {
                reason: "peer_unknown",
                detail: "peer pid unavailable".to_owned(),
            });
        };
        let cgroup =
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|error| Rejection {
                reason: "peer_unknown",
                detail: format!("cannot read cgroup of peer pid {pid}: {error}"),
            })?;
        if cgroup.contains(container_id.as_str()) {
            Ok(())
        } else {
            Err(Rejection {
                reason: "peer_not_in_container",
                detail: format!("peer pid {pid} is not in the execution's container"),
            })
        }
    }

    async fn upgrade_and_admit(&mut self, stream: UnixStream) -> Accepted {
        let mut websocket =
            match tokio_tungstenite::accept_async_with_config(stream, Some(websocket_config()))
                .await
            {
                Ok(websocket) => websocket,
                Err(error) => {
                    return Accepted::Rejected(Rejection {
                        reason: "websocket_upgrade_failed",
                        detail: error.to_string(),
                    });
                }
            };
        let hello = match read_hello(&mut websocket).await {
            Ok(hello) => hello,
            Err(error) => {
                close_with(&mut websocket, error.close_code(), error.reason()).await;
                return Accepted::Rejected(Rejection {
                    reason: error.reason(),
                    detail: error.to_string(),
                });
            }
        };
        let admission = match self.admit(&hello) {
            Ok(admission) => admission,
            Err((reject_reason, rejection)) => {
                let reject = ControllerMessage::Reject {
                    reason: reject_reason,
                };
                if let Ok(text) = protocol::encode_controller_message(&reject) {
                    let _ = websocket.send(Message::text(text)).await;
                }
                close_with(&mut websocket, 1008, rejection.reason).await;
                return Accepted::Rejected(rejection);
            }
        };
        // Rotate the session key on every Welcome; only its hash is kept.
        let session_key = random_secret();
        let session_sha256 = sha256_hex(&session_key);
        let welcome = ControllerMessage::Welcome { session_key };
        let mut connection = AgentConnection {
            execution_id: self.execution_id.clone(),
            websocket,
            bucket: TokenBucket::new(MESSAGES_PER_SEC, MESSAGE_BURST),
        };
        if let Err(error) = connection.send(&welcome).await {
            return Accepted::Rejected(Rejection {
                reason: "welcome_failed",
                detail: error.to_string(),
            });
        }
        // Only now is the admission final: burn the token, keep the new key.
        if admission == Admission::Fresh {
            self.token_sha256 = None;
            let _ = std::fs::remove_file(self.dir.join(TOKEN_FILE));
        }
        self.session_sha256 = Some(session_sha256.clone());
        Accepted::Connected {
            connection: Box::new(connection),
            admission,
            session_sha256,
        }
    }

    /// Decide whether a hello may connect. Never trusts its execution id.
    fn admit(&self, hello: &Hello) -> Result<Admission, (RejectReason, Rejection)> {
        let reject = |reason: RejectReason, code: &'static str, detail: String| {
            Err((
                reason,
                Rejection {
                    reason: code,
                    detail,
                },
            ))
        };
        if hello.version != protocol::PROTOCOL_VERSION {
            return reject(
                RejectReason::VersionMismatch,
                "version_mismatch",
                format!("hello version {}", hello.version),
            );
        }
        if hello.execution_id != self.execution_id {
            return reject(
                RejectReason::WrongExecution,
                "wrong_execution",
                format!(
                    "hello names execution {:?} on the socket of {}",
                    truncate_for_log(&hello.execution_id),
                    self.execution_id
                ),
            );
        }
        match &hello.resume {
            None => match &self.token_sha256 {
                Some(expected) if is_same_secret(&hello.token, expected) => Ok(Admission::Fresh),
                Some(_) => reject(RejectReason::BadToken, "bad_token", "wrong token".into()),
                None => reject(
                    RejectReason::BadToken,
                    "token_replay",
                    "the one-time token was already used".into(),
                ),
            },
            Some(resume) => match &self.session_sha256 {
                Some(expected) if is_same_secret(&resume.session_key, expected) => {
                    Ok(Admission::Resumed {
                        last_acked_seq: resume.last_acked_seq,
                    })
                }
                _ => reject(
                    RejectReason::BadSessionKey,
                    "bad_session_key",
                    "wrong or expired session key".into(),
                ),
            },
        }
    }

    /// Count one received frame against the execution's hard budgets.
    pub fn charge(&mut self, frame_bytes: usize) -> Result<(), LinkError> {
        self.n_messages += 1;
        self.n_bytes += frame_bytes as u64;
        let budget = if self.n_messages > MAX_MESSAGES_PER_EXECUTION {
            "message"
        } else if self.n_bytes > MAX_BYTES_PER_EXECUTION {
            "byte"
        } else {
            return Ok(());
        };
        Err(LinkError::BudgetExceeded {
            execution_id: self.execution_id.clone(),
            budget,
        })
    }
}

impl Drop for LinkEndpoint {
    fn drop(&mut self) {
        // The socket file is useless without this listener; the directory
        // itself is removed by the launcher together with the container.
        let _ = std::fs::remove_file(self.dir.join(SOCKET_FILE));
    }
}

fn truncate_for_log(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The WebSocket limits: the protocol's frame bound for both a whole
/// message and a single frame (fragmented messages cannot add up past it).
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(protocol::MAX_FRAME_BYTES))
        .max_frame_size(Some(protocol::MAX_FRAME_BYTES))
}

async fn read_hello<S>(websocket: &mut WebSocketStream<S>) -> Result<Hello, ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = match websocket.next().await {
            Some(message) => message,
            None => {
                return Err(ProtocolError::InvalidMessage {
                    detail: "connection closed before hello".into(),
                });
            }
        };
        let text = match message.map_err(classify_tungstenite_error) {
            Ok(Message::Text(text)) => text,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Binary(_)) => return Err(ProtocolError::BinaryFrame),
            Ok(_) => {
                return Err(ProtocolError::InvalidMessage {
                    detail: "connection closed before hello".into(),
                });
            }
            Err(Some(error)) => return Err(error),
            Err(None) => {
                return Err(ProtocolError::InvalidMessage {
                    detail: "connection failed before hello".into(),
                });
            }
        };
        return match protocol::decode_agent_message(text.as_str())? {
            AgentMessage::Hello(hello) => Ok(hello),
            _ => Err(ProtocolError::InvalidMessage {
                detail: "first message must be hello".into(),
            }),
        };
    }
}

/// The protocol error behind a tungstenite read error, or None for plain
/// transport failures (connection reset and the like).
fn classify_tungstenite_error(error: tungstenite::Error) -> Option<ProtocolError> {
    match error {
        tungstenite::Error::Capacity(capacity) => Some(ProtocolError::FrameTooLarge {
            size: match capacity {
                tungstenite::error::CapacityError::MessageTooLong { size, .. } => size,
                _ => 0,
            },
            max: protocol::MAX_FRAME_BYTES,
        }),
        tungstenite::Error::Utf8(_) => Some(ProtocolError::InvalidUtf8),
        // The peer vanished without a Close frame. That is what a container
        // killed at its deadline, OOM-killed or crashed (runsc exit 2) looks
        // like from here, so it is a lost connection, not a violation: the
        // verdict then comes from the container's exit (timed_out, oom,
        // sandbox_crashed, agent_lost), found by the security suite (case 9).
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        tungstenite::Error::Protocol(detail) => Some(ProtocolError::InvalidMessage {
            detail: detail.to_string(),
        }),
        _ => None,
    }
}

/// Send a Close with `code`, then keep polling until the peer's reply ends
/// the stream (bounded), so the reply is flushed and nobody waits forever.
async fn close_with<S>(websocket: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    };
    let _ = websocket.send(Message::Close(Some(frame))).await;
    drain(websocket).await;
}

async fn drain<S>(websocket: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, async {
        while let Some(Ok(_)) = websocket.next().await {}
    })
    .await;
}

/// What one read from an agent connection gave.
#[derive(Debug)]
pub enum Received {
    Message {
        message: AgentMessage,
        frame_bytes: usize,
    },
    /// The agent closed the connection (cleanly or not); it may reconnect.
    Closed,
}

/// One admitted agent connection.
pub struct AgentConnection {
    execution_id: String,
    websocket: WebSocketStream<UnixStream>,
    bucket: TokenBucket,
}

impl AgentConnection {
    /// The next message. Cancel-safe: when the rate limit holds us back we
    /// wait BEFORE reading, so a cancelled call loses nothing. A protocol
    /// violation is returned as an error; the caller then calls
    /// [`AgentConnection::close_for`].
    pub async fn recv(&mut self) -> Result<Received, LinkError> {
        loop {
            // Backpressure: not reading lets the socket buffer fill and the
            // agent's writes block; its engine then blocks on its own bound.
            self.bucket.wait_for_token().await;
            let Some(message) = self.websocket.next().await else {
                return Ok(Received::Closed);
            };
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Binary(_)) => return Err(self.protocol(ProtocolError::BinaryFrame)),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => {
                    // Keep polling so tungstenite flushes its Close reply.
                    drain(&mut self.websocket).await;
                    return Ok(Received::Closed);
                }
                Err(error) => {
                    let detail = error.to_string();
                    return match classify_tungstenite_error(error) {
                        Some(protocol_error) => Err(self.protocol(protocol_error)),
                        None => Err(LinkError::Transport {
                            execution_id: self.execution_id.clone(),
                            detail,
                        }),
                    };
                }
            };
            self.bucket.take();
            let frame_bytes = text.len();
            let message = protocol::decode_agent_message(text.as_str())
                .map_err(|error| self.protocol(error))?;
            return Ok(Received::Message {
                message,
                frame_bytes,
            });
        }
    }

    pub async fn send(&mut self, message: &ControllerMessage) -> Result<(), LinkError> {
        let text =
            protocol::encode_controller_message(message).map_err(|error| LinkError::Transport {
                execution_id: self.execution_id.clone(),
                detail: error.to_string(),
            })?;
        self.websocket
            .send(Message::text(text))
            .await
            .map_err(|error| LinkError::Transport {
                execution_id: self.execution_id.clone(),
                detail: error.to_string(),
            })
    }

    /// End the connection because of `error`: the matching close code
    /// (1009, 1007, 1003, 1008), then drain and drop.
    pub async fn close_for(mut self, error: &LinkError) {
        let (code, reason) = match error {
            LinkError::Protocol { error, .. } => (error.close_code(), error.reason()),
            LinkError::BudgetExceeded { .. } => (1008, "budget_exceeded"),
            _ => (1011, "internal_error"),
        };
        close_with(&mut self.websocket, code, reason).await;
    }

    /// Normal end (after `Done` was acked, or on shutdown): Close 1000, drain, drop.
    pub async fn close_normal(mut self, reason: &str) {
        close_with(&mut self.websocket, 1000, reason).await;
    }

    fn protocol(&self, error: ProtocolError) -> LinkError {
        LinkError::Protocol {
            execution_id: self.execution_id.clone(),
            error,
        }
    }
}

/// A classic token bucket: `rate` tokens per second, at most `burst` saved.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled_at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled_at = now;
    }

    async fn wait_for_token(&mut self) {
        self.refill();
        if self.tokens < 1.0 {
            let missing = 1.0 - self.tokens;
            tokio::time::sleep(Duration::from_secs_f64(missing / self.rate)).await;
            self.refill();
        }
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
#[path = "agent_link_tests.rs"]
mod tests;

//! The agent link: wire types between Kiln's sandbox agent and the controller,
//! and the events users see.
//!
//! # Transport
//!
//! One WebSocket per execution, over the per-execution Unix socket
//! `/run/kiln/agent.sock` (host: `<run_dir>/<execution_id>/agent.sock`, mode
//! 0600, root, bind-mounted read-only). The agent is the WebSocket client.
//! Every message is one JSON **text** frame of at most [`MAX_FRAME_BYTES`]
//! (1 MiB). A bigger frame closes the connection with 1009, invalid UTF-8 with
//! 1007, a binary frame with 1003, any other violation with 1008; see
//! [`ProtocolError::close_code`]. JSON deeper than [`MAX_JSON_DEPTH`] is
//! refused before parsing. Unknown fields are errors on both sides.
//! permessage-deflate is not negotiated.
//!
//! The controller identifies the execution by the socket the connection came
//! in on (and the peer's cgroup), never by what the payload claims.
//!
//! # Handshake
//!
//! ```text
//! agent                                   controller
//!   Hello{version, execution_id, token} ──▶
//!                                        ◀── Welcome{session_key} | Reject{reason}
//!                                        ◀── Job{recipe_source, inputs, files, limits, step_uid, step_gid}
//! ```
//!
//! - `version` must equal [`PROTOCOL_VERSION`], else `Reject{version_mismatch}`.
//! - `token` is read once from `/run/kiln/token` (mode 0400, root) and is
//!   one-time: the controller burns it on the first successful hello.
//! - `Welcome.session_key` authenticates later reconnects. The controller
//!   sends the `Job` after the first `Welcome`, and again after a resume
//!   whose `last_acked_seq` is 0 while it has received nothing reliable (the
//!   job may have been lost with the first connection). The agent runs the
//!   first `Job` it receives and ignores any later one.
//! - After `Reject` the controller closes; the agent exits (see the agent's
//!   exit codes).
//!
//! # Reliable stream: events, artifact chunks, done
//!
//! [`AgentMessage::Event`], [`AgentMessage::ArtifactChunk`] and
//! [`AgentMessage::Done`] carry a `seq` from one counter: 1, 2, 3, ...
//! without gaps. The controller stores them in order and answers with a
//! cumulative [`ControllerMessage::Ack`]`{seq}` ("everything up to `seq` is
//! stored"). The agent keeps every unacknowledged message in a bounded buffer
//! ([`MAX_UNACKED_MESSAGES`], [`MAX_UNACKED_BYTES`]); when it is full the
//! engine's event sink blocks, which is the backpressure that keeps memory
//! bounded on both sides.
//!
//! Receiving rule for the controller: `seq == next` is stored; `seq < next` is
//! a duplicate (after a resume) and dropped; `seq > next` is a gap and a
//! protocol error.
//!
//! # Reconnect and resend
//!
//! If the connection drops (or the controller is silent beyond
//! [`HEARTBEAT_TIMEOUT_MS`]), the agent reconnects with backoff (100 ms
//! doubling to 5 s, for up to [`RECONNECT_GIVE_UP_MS`]) and sends
//! `Hello{token: "", resume: {session_key, last_acked_seq}}`. On `Welcome` it
//! resends every unacknowledged reliable message in order, then any pending
//! approval and model requests (the controller deduplicates those by
//! `request_id`), and emits a `sandbox/agent_reconnected` event. Nothing is
//! lost across a controller restart as long as the controller persisted what
//! it acknowledged.
//!
//! # Heartbeats
//!
//! Each side sends a heartbeat every [`HEARTBEAT_INTERVAL_MS`] when idle. The
//! agent's carries `seq_sent`, the highest reliable seq it has sent.
//!
//! # Cancel
//!
//! [`ControllerMessage::Cancel`]`{reason}`: the agent cancels the engine,
//! terminates running step process groups (SIGTERM, SIGKILL after a grace),
//! and finishes with `Done{status: cancelled}`.
//!
//! # Approvals
//!
//! At a gate the agent sends [`ApprovalRequest`]`{request_id, stage, prompt,
//! timeout_secs, default}`; the controller runs the timer and answers
//! [`ApprovalDecision`]`{request_id, decision, by, message}` (`by: "timeout"`
//! for a timeout default). The engine records both as engine events.
//!
//! # Model calls
//!
//! An agent step sends [`ModelRequest`]`{request_id, step_id, agent,
//! messages, provider?, model?, provider_preferences?, model_role?,
//! agent_config?, parameters, stream, timeout_secs}`: the step's whole model
//! selection as the recipe wrote it (after templating), `provider_preferences`
//! entries tagged by `kind` ([`ModelPreference`]`::Provider{provider, model?}`
//! or `::Class{class}`), and `agent_config` untouched. The controller (which
//! alone holds provider keys) resolves the selection against the agent's
//! profile and its own configuration, and applies the `agent_config`
//! allowlist; explicit `parameters` override the same keys of `agent_config`.
//! Selector strings are at most [`MAX_MODEL_SELECTOR_BYTES`], the preference
//! list at most [`MAX_MODEL_PREFERENCES`] entries, `agent_config` at most
//! [`MAX_AGENT_CONFIG_BYTES`] as JSON; both encoding and decoding check them.
//!
//! The controller answers with [`ModelResponse`]s for that id: zero or more
//! `chunk{text}` when `stream` is true, then exactly one `completed{text,
//! provider, model, usage, finish_reason}` or `error{code, message}`.
//! [`AgentMessage::ModelCancel`] tells the controller the answer is no longer
//! needed.
//!
//! # Artifacts
//!
//! After the run, regular files under `/work/out/` are sent as
//! [`ArtifactChunk`]`{seq, name, offset, data_b64, last, sha256}`: names are
//! relative `/`-paths checked by [`validate_artifact_name`], chunks carry at
//! most [`ARTIFACT_CHUNK_BYTES`] and have contiguous offsets, the last chunk
//! carries the sha256 of the whole file. Chunks are reliable messages
//! (resent after a reconnect like events). An artifact without a `last`
//! chunk by `Done` is incomplete and must be discarded (the agent follows it
//! with an `artifact_rejected{reason: read_failed}` event). Per-file, count and total caps come
//! from [`JobLimits`] (clamped to [`MAX_ARTIFACT_BYTES`], [`MAX_ARTIFACTS`],
//! [`MAX_TOTAL_ARTIFACT_BYTES`]). Files that are refused are reported as
//! `sandbox/artifact_rejected{name, reason}` events. The controller validates
//! names again and never opens anything on the host filesystem by that name.
//!
//! # Done and closing
//!
//! [`AgentMessage::Done`]`{seq, outcome}` is the last reliable message. When
//! it is acked, the agent sends a WebSocket Close and waits for the reply
//! (briefly) before exiting. The controller must keep reading after it sees
//! Close until the stream ends, and drop the stream as soon as it ends (the
//! two close-handshake deadlocks in engineering-facts.md).
//!
//! # User-visible events
//!
//! The controller stores [`ExecutionEvent`]`{seq, at_ms, body}` where `body`
//! is adjacently tagged: `{"source": "engine"|"sandbox"|"controller",
//! "event": {...}}`. An agent can only send [`AgentEventBody`], and only the
//! sandbox events for which [`SandboxEvent::can_agent_emit`] holds.

mod artifact_name;
mod codec;
mod event;
mod limits;
mod message;

/// Version of this protocol; bumped on any incompatible change.
///
/// - 2: `ModelRequest` carries the step's whole model selection (`provider`,
///   `model`, `provider_preferences` with `class` entries, `model_role`,
///   `agent_config`) instead of a `preferences` list.
pub const PROTOCOL_VERSION: u32 = 2;

pub use artifact_name::{ArtifactNameError, validate_artifact_name};
pub use codec::{
    ProtocolError, decode_agent_frame, decode_agent_message, decode_controller_frame,
    decode_controller_message, encode_agent_message, encode_artifact_data,
    encode_controller_message, json_depth_exceeds,
};
pub use event::{
    AgentEventBody, ArtifactRejectReason, ControllerEvent, EngineEvent, EventBody, ExecutionEvent,
    FinalStatus, KillReason, ModelCallOutcome, SandboxEvent,
};
pub use limits::*;
pub use message::{
    AgentMessage, ApprovalChoice, ApprovalDecision, ApprovalRequest, ArtifactChunk,
    ControllerMessage, Done, Hello, Job, JobLimits, MAX_AGENT_CONFIG_BYTES, MAX_MODEL_PREFERENCES,
    MAX_MODEL_SELECTOR_BYTES, ModelErrorCode, ModelMessage, ModelParameters, ModelPreference,
    ModelRequest, ModelResponse, ModelResponseBody, ModelRole, ModelUsage, Outcome, RejectReason,
    Resume, WireEvent,
};

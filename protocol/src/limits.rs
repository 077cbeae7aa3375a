//! Bounds on everything that crosses the agent link.
//!
//! Everything that comes out of a container is hostile input, so every frame,
//! string, event and artifact has a hard upper bound. The decode functions in
//! [`crate::codec`] enforce the frame-level ones before parsing; the agent
//! enforces the rest before sending, and the controller checks them again.

/// Largest WebSocket message (text frame payload) either side accepts.
/// Exceeding it closes the connection with code 1009.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Deepest JSON nesting accepted in a frame (objects and arrays together).
/// serde_json's own recursion limit is 128; this is checked first by a
/// linear pre-scan that cannot overflow the stack.
pub const MAX_JSON_DEPTH: usize = 64;

/// Largest serialized [`crate::WireEvent`] body. An output chunk of
/// [`MAX_OUTPUT_CHUNK_BYTES`] escapes to at most 6x its size in JSON.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Largest text in one `step_output` event: output is chunked at this size
/// (or earlier, at a newline or after a short flush interval).
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 16 * 1024;

/// Largest raw (decoded) payload of one artifact chunk. Base64 grows it by a
/// third, which keeps a chunk frame well under [`MAX_FRAME_BYTES`].
pub const ARTIFACT_CHUNK_BYTES: usize = 256 * 1024;

/// Default and hard cap for the size of one artifact.
pub const MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;

/// Default and hard cap for the number of artifacts of one execution.
pub const MAX_ARTIFACTS: u32 = 256;

/// Default and hard cap for the total artifact bytes of one execution.
pub const MAX_TOTAL_ARTIFACT_BYTES: u64 = 256 * 1024 * 1024;

/// Longest artifact name (a relative path under `/work/out/`), in bytes.
pub const MAX_ARTIFACT_NAME_BYTES: usize = 255;

/// Deepest artifact path (number of `/`-separated components).
pub const MAX_ARTIFACT_PATH_COMPONENTS: usize = 16;

/// Longest token, session key and execution id, in bytes.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Longest execution id, in bytes.
pub const MAX_EXECUTION_ID_BYTES: usize = 128;

/// Longest free-text reason or message in a control message, in bytes.
pub const MAX_REASON_BYTES: usize = 4 * 1024;

/// How often each side sends a heartbeat when otherwise idle.
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;

/// A peer silent for longer than this is considered gone: the agent
/// reconnects, the controller drops the connection and waits for a resume.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 20_000;

/// How long the agent keeps trying to reconnect before giving up
/// (the controller marks the execution `agent_lost` long before that
/// if its own deadline passes).
pub const RECONNECT_GIVE_UP_MS: u64 = 5 * 60 * 1_000;

/// Most reliable messages (events, artifact chunks, done) the agent keeps
/// unacknowledged; when full, the engine's event sink blocks (backpressure).
pub const MAX_UNACKED_MESSAGES: usize = 1024;

/// Most bytes of reliable messages the agent keeps unacknowledged.
pub const MAX_UNACKED_BYTES: usize = 16 * 1024 * 1024;

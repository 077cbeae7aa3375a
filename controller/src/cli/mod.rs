//! Stage: the user's terminal. The `kiln` commands other than `serve`:
//! `run` (against a server or an embedded controller), `validate`,
//! `image build`, `token create`. They talk to a controller only through the
//! public HTTP + WebSocket API, so what works here works for any client.

pub mod image;
pub mod run;
pub mod token;
pub mod validate;

use protocol::FinalStatus;

/// Exit statuses of `kiln`. `run` mirrors the execution's final status.
pub mod exit {
    /// The execution succeeded; the recipe is valid; the command worked.
    pub const OK: u8 = 0;
    /// The execution failed (a step failed).
    pub const FAILED: u8 = 1;
    // 2 is clap's usage error.
    /// An approval gate denied.
    pub const DENIED: u8 = 3;
    /// The hard deadline (or a step timeout) ended it.
    pub const TIMED_OUT: u8 = 4;
    /// The memory limit was exceeded.
    pub const OOM: u8 = 5;
    /// Cancelled (by a person or Ctrl-C).
    pub const CANCELLED: u8 = 6;
    /// The agent disappeared without reporting.
    pub const AGENT_LOST: u8 = 7;
    /// The sandbox runtime crashed.
    pub const SANDBOX_CRASHED: u8 = 8;
    /// The agent broke the protocol.
    pub const PROTOCOL_ERROR: u8 = 9;
    /// Invalid configuration (names the key) or command-line input (EX_USAGE).
    pub const CONFIG: u8 = 64;
    /// The recipe has errors, or the server refused the input (EX_DATAERR).
    pub const INVALID: u8 = 65;
    /// Docker, the store or the server is unreachable (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// A bug or an unexpected answer (EX_SOFTWARE).
    pub const INTERNAL: u8 = 70;
}

/// The exit status that mirrors a final status.
pub fn exit_code_of(status: FinalStatus) -> u8 {
    match status {
        FinalStatus::Succeeded => exit::OK,
        FinalStatus::Failed => exit::FAILED,
        FinalStatus::Denied => exit::DENIED,
        FinalStatus::TimedOut => exit::TIMED_OUT,
        FinalStatus::Oom => exit::OOM,
        FinalStatus::Cancelled => exit::CANCELLED,
        FinalStatus::AgentLost => exit::AGENT_LOST,
        FinalStatus::SandboxCrashed => exit::SANDBOX_CRASHED,
        FinalStatus::ProtocolError => exit::PROTOCOL_ERROR,
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default level (`quiet`: errors only,
/// for commands whose own output is the point, like `kiln run`).
pub fn init_tracing(quiet: bool) {
    let default = if quiet { "error" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// An error with its sources, `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

//! Command line of `kiln-agent`. Defaults are the in-container paths; the
//! flags exist so tests can run the real binary outside a container.
//!
//! ```text
//! kiln-agent [--socket PATH] [--token-file PATH] [--work-dir PATH]
//!            [--execution-id ID] [--no-drop] [--kill-grace-ms N]
//!            [--heartbeat-ms N] [--heartbeat-timeout-ms N] [--give-up-ms N]
//! kiln-agent --exec-step | --collect-artifacts     (internal trampolines)
//! kiln-agent --version
//! ```

use std::path::PathBuf;
use std::time::Duration;

/// What the process was asked to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Agent(AgentArgs),
    ExecStep,
    CollectArtifacts,
    Version,
}

/// Flags of the agent proper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentArgs {
    pub socket: PathBuf,
    pub token_file: PathBuf,
    pub work_dir: PathBuf,
    /// From `--execution-id`, else `KILN_EXECUTION_ID`.
    pub execution_id: Option<String>,
    /// Run steps with the agent's own credentials (tests outside a container).
    pub is_no_drop: bool,
    pub kill_grace: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub give_up_after: Duration,
}

impl Default for AgentArgs {
    fn default() -> AgentArgs {
        AgentArgs {
            socket: PathBuf::from("/run/kiln/agent.sock"),
            token_file: PathBuf::from("/run/kiln/token"),
            work_dir: PathBuf::from("/work"),
            execution_id: None,
            is_no_drop: false,
            kill_grace: Duration::from_secs(2),
            heartbeat_interval: Duration::from_millis(protocol::HEARTBEAT_INTERVAL_MS),
            heartbeat_timeout: Duration::from_millis(protocol::HEARTBEAT_TIMEOUT_MS),
            give_up_after: Duration::from_millis(protocol::RECONNECT_GIVE_UP_MS),
        }
    }
}

/// A command line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{flag} needs a positive number of milliseconds, got {value:?}")]
    BadMillis { flag: &'static str, value: String },
    #[error("{0} must be the only argument")]
    NotAlone(&'static str),
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Mode, UsageError> {
    for (flag, mode) in [
        ("--exec-step", Mode::ExecStep),
        ("--collect-artifacts", Mode::CollectArtifacts),
        ("--version", Mode::Version),
    ] {
        if args.iter().any(|arg| arg == flag) {
            return if args.len() == 1 {
                Ok(mode)
            } else {
                Err(UsageError::NotAlone(flag))
            };
        }
    }
    let mut parsed = AgentArgs::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value =
            |flag: &'static str| rest.next().cloned().ok_or(UsageError::MissingValue(flag));
        match arg.as_str() {
            "--socket" => parsed.socket = PathBuf::from(value("--socket")?),
            "--token-file" => parsed.token_file = PathBuf::from(value("--token-file")?),
            "--work-dir" => parsed.work_dir = PathBuf::from(value("--work-dir")?),
            "--execution-id" => parsed.execution_id = Some(value("--execution-id")?),
            "--no-drop" => parsed.is_no_drop = true,
            "--kill-grace-ms" => {
                parsed.kill_grace = millis("--kill-grace-ms", &value("--kill-grace-ms")?)?
            }
            "--heartbeat-ms" => {
                parsed.heartbeat_interval = millis("--heartbeat-ms", &value("--heartbeat-ms")?)?
            }
            "--heartbeat-timeout-ms" => {
                parsed.heartbeat_timeout =
                    millis("--heartbeat-timeout-ms", &value("--heartbeat-timeout-ms")?)?;
            }
            "--give-up-ms" => {
                parsed.give_up_after = millis("--give-up-ms", &value("--give-up-ms")?)?
            }
            other => return Err(UsageError::Unknown(other.to_string())),
        }
    }
    Ok(Mode::Agent(parsed))
}

fn millis(flag: &'static str, value: &str) -> Result<Duration, UsageError> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_millis(n)),
        _ => Err(UsageError::BadMillis {
            flag,
            value: value.to_string(),
        }),
    }
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;

//! Runs one bash step as a process group and streams its output.
//!
//! The agent spawns itself as a trampoline (`--exec-step`, see
//! [`crate::trampoline`]) that sets up the session, limits and credentials and
//! execs the shell. This module owns the parent side:
//! - the [`ExecSpec`] goes to the trampoline's stdin as JSON;
//! - the first stderr line is the trampoline's verdict (exec OK, or a setup
//!   error with a stable reason);
//! - stdout and stderr are read concurrently, capped by [`OutputBudget`] and
//!   chunked by [`Chunker`] (flushed at newlines, at 16 KiB, or after 50 ms);
//!   past a cap, reading goes on (the child must never block on a full pipe)
//!   but nothing is forwarded, and the result says the stream was truncated
//!   (the engine then emits exactly one `output_truncated` marker);
//! - timeout and cancel send SIGTERM to the whole process group, then SIGKILL
//!   after a grace period; background grandchildren die with the group;
//! - when the shell exits, what is left of its group is SIGKILLed and the
//!   pipes are drained for at most [`DRAIN_AFTER_EXIT`] (a process that
//!   escaped into its own session cannot keep the step open);
//! - if the future is dropped (the engine timed out or cancelled first), a
//!   guard terminates the group the same way.

use std::collections::BTreeSet;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::chunker::{Chunker, OutputBudget};
use crate::reaper::{ExitCode, Reaper};
use crate::step_spec::{EXEC_ERROR_MARKER, EXEC_OK_MARKER, ExecSpec};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Partial lines are flushed after this long.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// How long pipes are drained after the shell exited and its group was killed.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// How long the trampoline may take to report exec or failure.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where output chunks go (the engine's `StepIo` in the agent). The
/// truncation marker is not sent from here: the engine emits exactly one
/// `output_truncated` per stream from [`StepResult`]'s `*_truncated` flags.
pub trait OutputSink: Send + Sync {
    fn output(&self, stream: Stream, text: String) -> BoxFuture<'_, ()>;
}

/// Per-step limits.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    pub timeout: Duration,
    /// Per stream.
    pub max_output_bytes: u64,
    /// SIGTERM → SIGKILL grace.
    pub kill_grace: Duration,
}

/// Why the agent ended a step early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Timeout,
    Cancelled,
}

/// What a step process did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// Exit code, or 128 + signal.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub terminated: Option<Termination>,
}

/// A step could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("spawn step trampoline: {source}")]
    Spawn { source: std::io::Error },
    #[error("step setup failed ({reason}): {message}")]
    Setup { reason: String, message: String },
}

/// Spawns and supervises step processes.
#[derive(Clone)]
pub struct ProcessRunner {
    reaper: Reaper,
    /// Process groups of steps that are running or being terminated.
    live_groups: Arc<Mutex<BTreeSet<i32>>>,
    self_exe: PathBuf,
    execution_output_remaining: Arc<AtomicU64>,
    execution_output_limit: u64,
}

impl ProcessRunner {
    /// `self_exe` is the agent binary (usually `/proc/self/exe`).
    pub fn new(reaper: Reaper, self_exe: PathBuf, execution_output_limit: u64) -> ProcessRunner {
        ProcessRunner {
            reaper,
            live_groups: Arc::default(),
            self_exe,
            execution_output_remaining: Arc::new(AtomicU64::new(execution_output_limit)),
            execution_output_limit,
        }
    }

    /// Runs one step to completion (or timeout/cancel).
    pub async fn run(
        &self,
        spec: &ExecSpec,
        limits: StepLimits,
        sink: &dyn OutputSink,
        cancel: &CancellationToken,
    ) -> Result<StepResult, StepError> {
        let spec_json = serde_json::to_vec(spec).expect("an ExecSpec always serializes");
        let (child, pipes, mut exit_receiver) =
            spawn_trampoline(&self.reaper, &self.self_exe, "--exec-step")?;
        let mut guard = GroupGuard {
            pgid: child,
            grace: limits.kill_grace,
            is_armed: true,
            live_groups: self.live_groups.clone(),
        };
        self.live_groups
            .lock()
            .expect("live groups lock is never poisoned")
            .insert(child);
        tokio::spawn(write_and_close(pipes.stdin, spec_json));
        let mut stdout = pipes.stdout;
        let mut stderr = pipes.stderr;

        let setup = tokio::time::timeout(SETUP_TIMEOUT, read_verdict(&mut stderr)).await;
        let stderr_leftover = match setup {
            Ok(Ok(Verdict::Exec { leftover })) => leftover,
            Ok(Ok(Verdict::Failed { reason, message })) => {
                let _ = (&mut exit_receiver).await;
                guard.is_armed = false;
                return Err(StepError::Setup { reason, message });
            }
            Ok(Err(message)) => {
                signal_group(child, Signal::SIGKILL);
                let code = (&mut exit_receiver).await.map(|code| code.0).unwrap_or(-1);
                guard.is_armed = false;
                return Err(StepError::Setup {
                    reason: "trampoline".to_string(),
                    message: format!("{message} (exit {code})"),
                });
            }
            Err(_) => {
                signal_group(child, Signal::SIGKILL);
                guard.is_armed = false;
                return Err(StepError::Setup {
                    reason: "trampoline".to_string(),
                    message: "no verdict from the step trampoline".to_string(),
                });
            }
        };

        let mut out = StreamState::new(Stream::Stdout, self.budget(limits));
        let mut err = StreamState::new(Stream::Stderr, self.budget(limits));
        err.accept(&stderr_leftover, sink).await;

        let mut stdout_buffer = vec![0u8; READ_BUFFER_BYTES];
        let mut stderr_buffer = vec![0u8; READ_BUFFER_BYTES];
        let timeout_at = Instant::now() + limits.timeout;
        let mut exit: Option<ExitCode> = None;
        let mut terminated: Option<Termination> = None;
        let mut kill_at: Option<Instant> = None;
        let mut drain_until: Option<Instant> = None;
        let far_future = Instant::now() + Duration::from_secs(365 * 24 * 3600);

        loop {
            if exit.is_some() && !out.is_open && !err.is_open {
                break;
            }
            let flush_at = match (out.flush_at, err.flush_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                read = stdout.read(&mut stdout_buffer), if out.is_open => {
                    let n_read = read.unwrap_or(0);
                    out.on_read(&stdout_buffer[..n_read], sink).await;
                }
                read = stderr.read(&mut stderr_buffer), if err.is_open => {
                    let n_read = read.unwrap_or(0);
                    err.on_read(&stderr_buffer[..n_read], sink).await;
                }
                code = &mut exit_receiver, if exit.is_none() => {
                    exit = Some(code.unwrap_or(ExitCode(-1)));
                    // Leftover background jobs die with the step.
                    signal_group(child, Signal::SIGKILL);
                    drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                }
                _ = tokio::time::sleep_until(timeout_at), if terminated.is_none() && exit.is_none() => {
                    terminated = Some(Termination::Timeout);
                    signal_group(child, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + limits.kill_grace);
                }
                _ = cancel.cancelled(), if terminated.is_none() && exit.is_none() => {
                    terminated = Some(Termination::Cancelled);
                    signal_group(child, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + limits.kill_grace);
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or(far_future)), if kill_at.is_some() => {
                    signal_group(child, Signal::SIGKILL);
                    kill_at = None;
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or(far_future)), if flush_at.is_some() => {
                    out.on_flush_timer(sink).await;
                    err.on_flush_timer(sink).await;
                }
                _ = tokio::time::sleep_until(drain_until.unwrap_or(far_future)), if drain_until.is_some() => {
                    break;
                }
            }
        }
        guard.is_armed = false;
        out.finish(sink).await;
        err.finish(sink).await;
        Ok(StepResult {
            exit_code: exit.map(|code| code.0).unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.collected).into_owned(),
            stderr: String::from_utf8_lossy(&err.collected).into_owned(),
            stdout_truncated: out.budget.is_truncated(),
            stderr_truncated: err.budget.is_truncated(),
            terminated,
        })
    }

    /// SIGKILLs every step group still alive (run over, cancelled or
    /// abandoned): nothing of a step outlives the run.
    pub fn kill_live_groups(&self) {
        let pgids: Vec<i32> = std::mem::take(
            &mut *self
                .live_groups
                .lock()
                .expect("live groups lock is never poisoned"),
        )
        .into_iter()
        .collect();
        for pgid in pgids {
            signal_group(pgid, Signal::SIGKILL);
        }
    }

    fn budget(&self, limits: StepLimits) -> OutputBudget {
        OutputBudget::new(
            limits.max_output_bytes,
            self.execution_output_remaining.clone(),
            self.execution_output_limit,
        )
    }
}

/// Async ends of a trampoline's stdio.
pub struct TrampolinePipes {
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Spawns `self_exe <mode>` with a clean environment and piped stdio,
/// registered with the reaper. Returns the pid (also the future pgid).
pub fn spawn_trampoline(
    reaper: &Reaper,
    self_exe: &PathBuf,
    mode: &str,
) -> Result<
    (
        i32,
        TrampolinePipes,
        tokio::sync::oneshot::Receiver<ExitCode>,
    ),
    StepError,
> {
    let mut command = Command::new(self_exe);
    command
        .arg(mode)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, exit_receiver) = reaper
        .spawn(&mut command)
        .map_err(|source| StepError::Spawn { source })?;
    let pid = i32::try_from(child.id()).expect("pids fit in i32");
    let missing = || StepError::Spawn {
        source: std::io::Error::other("child stdio missing"),
    };
    let stdin = OwnedFd::from(child.stdin.take().ok_or_else(missing)?);
    let stdout = OwnedFd::from(child.stdout.take().ok_or_else(missing)?);
    let stderr = OwnedFd::from(child.stderr.take().ok_or_else(missing)?);
    let to_spawn_error = |source| StepError::Spawn { source };
    let pipes = TrampolinePipes {
        stdin: pipe::Sender::from_owned_fd(stdin).map_err(to_spawn_error)?,
        stdout: pipe::Receiver::from_owned_fd(stdout).map_err(to_spawn_error)?,
        stderr: pipe::Receiver::from_owned_fd(stderr).map_err(to_spawn_error)?,
    };
    Ok((pid, pipes, exit_receiver))
}

/// Writes `bytes` and closes the pipe (the trampoline reads to EOF).
pub async fn write_and_close(mut sender: pipe::Sender, bytes: Vec<u8>) {
    let _ = sender.write_all(&bytes).await;
}

/// Signals the process and its group: before `setsid` the child is not yet
/// a group leader, after it the group holds every background job.
pub fn signal_group(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
    let _ = killpg(Pid::from_raw(pid), signal);
}

/// Terminates the group if a step future is dropped while running.
struct GroupGuard {
    pgid: i32,
    grace: Duration,
    is_armed: bool,
    live_groups: Arc<Mutex<BTreeSet<i32>>>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let pgid = self.pgid;
        if !self.is_armed {
            self.live_groups
                .lock()
                .expect("live groups lock is never poisoned")
                .remove(&pgid);
            return;
        }
        signal_group(pgid, Signal::SIGTERM);
        let grace = self.grace;
        let live_groups = self.live_groups.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tokio::time::sleep(grace).await;
                    signal_group(pgid, Signal::SIGKILL);
                    live_groups
                        .lock()
                        .expect("live groups lock is never poisoned")
                        .remove(&pgid);
                });
            }
            Err(_) => {
                signal_group(pgid, Signal::SIGKILL);
                live_groups
                    .lock()
                    .expect("live groups lock is never poisoned")
                    .remove(&pgid);
            }
        }
    }
}

enum Verdict {
    Exec { leftover: Vec<u8> },
    Failed { reason: String, message: String },
}

/// Reads the trampoline's first stderr line (bounded).
async fn read_verdict(stderr: &mut pipe::Receiver) -> Result<Verdict, String> {
    const MAX_VERDICT_BYTES: usize = 4096;
    let mut line = Vec::new();
    let mut buffer = [0u8; 512];
    loop {
        if let Some(newline_idx) = line.iter().position(|&b| b == b'\n') {
            let leftover = line.split_off(newline_idx + 1);
            line.truncate(newline_idx);
            let text = String::from_utf8_lossy(&line).into_owned();
            if text == EXEC_OK_MARKER {
                return Ok(Verdict::Exec { leftover });
            }
            if let Some(rest) = text.strip_prefix(EXEC_ERROR_MARKER) {
                let (reason, message) = rest.split_once(' ').unwrap_or((rest, ""));
                return Ok(Verdict::Failed {
                    reason: reason.to_string(),
                    message: message.to_string(),
                });
            }
            return Err(format!(
                "unexpected trampoline output: {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        if line.len() > MAX_VERDICT_BYTES {
            return Err("trampoline verdict too long".to_string());
        }
        let n_read = stderr
            .read(&mut buffer)
            .await
            .map_err(|error| error.to_string())?;
        if n_read == 0 {
            return Err("trampoline exited before exec".to_string());
        }
        line.extend_from_slice(&buffer[..n_read]);
    }
}

/// One output stream of a running step.
struct StreamState {
    stream: Stream,
    budget: OutputBudget,
    chunker: Chunker,
    collected: Vec<u8>,
    is_open: bool,
    flush_at: Option<Instant>,
}

impl StreamState {
    fn new(stream: Stream, budget: OutputBudget) -> StreamState {
        StreamState {
            stream,
            budget,
            chunker: Chunker::new(),
            collected: Vec::new(),
            is_open: true,
            flush_at: None,
        }
    }

    async fn on_read(&mut self, bytes: &[u8], sink: &dyn OutputSink) {
        if bytes.is_empty() {
            self.is_open = false;
            return;
        }
        self.accept(bytes, sink).await;
    }

    /// Forwards what the budget allows; drops (but has read) the rest.
    async fn accept(&mut self, bytes: &[u8], sink: &dyn OutputSink) {
        if bytes.is_empty() {
            return;
        }
        let admission = self.budget.admit(bytes.len());
        let allowed = &bytes[..admission.n_allowed];
        self.collected.extend_from_slice(allowed);
        for chunk in self.chunker.push(allowed) {
            sink.output(self.stream, chunk).await;
        }
        if admission.truncated_at.is_some()
            && let Some(rest) = self.chunker.finish()
        {
            sink.output(self.stream, rest).await;
        }
        self.flush_at = match (self.chunker.has_pending(), self.flush_at) {
            (false, _) => None,
            (true, Some(at)) => Some(at),
            (true, None) => Some(Instant::now() + FLUSH_INTERVAL),
        };
    }

    async fn on_flush_timer(&mut self, sink: &dyn OutputSink) {
        match self.flush_at {
            Some(at) if at <= Instant::now() => {}
            _ => return,
        }
        if let Some(text) = self.chunker.flush() {
            sink.output(self.stream, text).await;
        }
        self.flush_at = self
            .chunker
            .has_pending()
            .then(|| Instant::now() + FLUSH_INTERVAL);
    }

    async fn finish(&mut self, sink: &dyn OutputSink) {
        if let Some(text) = self.chunker.finish() {
            sink.output(self.stream, text).await;
        }
    }
}

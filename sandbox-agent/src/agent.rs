//! The agent's run, start to finish: connect, get the job, run the recipe,
//! stream artifacts, report `done`, close.
//!
//! Exit codes (documented in the crate doc of `main.rs` too):
//! - [`EXIT_OK`] 0: the outcome was delivered and acknowledged (whatever the
//!   recipe's status);
//! - [`EXIT_USAGE`] 64: bad command line or missing execution id;
//! - [`EXIT_NO_TOKEN`] 66: the token file is missing, empty or malformed;
//! - [`EXIT_LINK_LOST`] 69: no connection to the controller within the give-up window;
//! - [`EXIT_INTERNAL`] 70: the agent could not set itself up (runtime);
//! - [`EXIT_STOPPED_BEFORE_JOB`] 75: SIGTERM/SIGINT before a job arrived;
//! - [`EXIT_REJECTED`] 77: the controller rejected the hello;
//! - 125: a trampoline child failed before exec (internal modes only).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use protocol::{
    AgentEventBody, FinalStatus, Job, MAX_ARTIFACT_BYTES, MAX_ARTIFACTS, MAX_REASON_BYTES,
    MAX_TOTAL_ARTIFACT_BYTES, Outcome, SandboxEvent,
};
use recipe::event::{Event, EventSink, RunStatus};
use tokio_util::sync::CancellationToken;

use crate::artifacts::send_artifacts;
use crate::cli::AgentArgs;
use crate::link::{Link, LinkConfig, LinkFailure, SendError, Started};
use crate::reaper::Reaper;
use crate::runners::{AgentRunners, EventOrder, default_shell};
use crate::step_process::ProcessRunner;
use crate::step_spec::{CollectSpec, Credentials, StepRlimits};

pub const EXIT_OK: i32 = 0;
pub const EXIT_USAGE: i32 = 64;
pub const EXIT_NO_TOKEN: i32 = 66;
pub const EXIT_LINK_LOST: i32 = 69;
pub const EXIT_INTERNAL: i32 = 70;
pub const EXIT_STOPPED_BEFORE_JOB: i32 = 75;
pub const EXIT_REJECTED: i32 = 77;

/// How long to wait for step processes to be gone after the run.
const REAP_PATIENCE: Duration = Duration::from_secs(5);
/// How long to wait for the final acknowledgement and close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

fn exit_code_for(failure: &LinkFailure) -> i32 {
    match failure {
        LinkFailure::Rejected { .. } => EXIT_REJECTED,
        LinkFailure::GaveUp { .. } => EXIT_LINK_LOST,
    }
}

/// Runs the agent; returns the process exit code.
pub async fn run(args: AgentArgs, token: String, execution_id: String) -> i32 {
    let reaper = Reaper::new();
    tokio::spawn(reaper.clone().run());
    let stop = CancellationToken::new();
    tokio::spawn(watch_signals(stop.clone()));

    let Started { link, job, task } = Link::start(LinkConfig {
        socket: args.socket.clone(),
        execution_id: execution_id.clone(),
        token,
        heartbeat_interval: args.heartbeat_interval,
        heartbeat_timeout: args.heartbeat_timeout,
        give_up_after: args.give_up_after,
    });
    let job = tokio::select! {
        job = job => match job {
            Ok(job) => job,
            Err(_) => return link.failure().as_ref().map(exit_code_for).unwrap_or(EXIT_INTERNAL),
        },
        failure = link.failed() => {
            eprintln!("kiln-agent: {failure}");
            return exit_code_for(&failure);
        }
        _ = stop.cancelled() => return EXIT_STOPPED_BEFORE_JOB,
    };
    let started = SandboxEvent::AgentStarted {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let _ = link.send_event(AgentEventBody::Sandbox(started)).await;

    let run_cancel = CancellationToken::new();
    tokio::spawn(forward_cancel(
        link.cancelled(),
        stop.clone(),
        run_cancel.clone(),
    ));
    let self_exe = PathBuf::from("/proc/self/exe");
    let credentials = (!args.is_no_drop).then_some(Credentials {
        uid: job.step_uid,
        gid: job.step_gid,
    });
    // The engine's event channel exists before the runners, so a runner can
    // keep its requests behind the events emitted before them.
    let (sink, events) = EventSink::channel(64);
    let (forwarded, forwarded_count) = tokio::sync::watch::channel(0u64);
    let runners = Arc::new(AgentRunners {
        process: ProcessRunner::new(
            reaper.clone(),
            self_exe.clone(),
            job.limits.max_output_bytes,
        ),
        link: link.clone(),
        files: job.files.clone(),
        work_dir: args.work_dir.clone(),
        default_shell: default_shell(),
        credentials,
        rlimits: StepRlimits {
            nofile: job.limits.rlimit_nofile,
            fsize_bytes: job.limits.rlimit_fsize_bytes,
            nproc: job.limits.rlimit_nproc,
        },
        max_step_output_bytes: job.limits.max_step_output_bytes,
        kill_grace: args.kill_grace,
        execution_id,
        started_iso: iso_utc(crate::link::now_ms() / 1000),
        step_counter: AtomicU64::new(0),
        event_order: EventOrder {
            emitted: sink.clone(),
            forwarded: forwarded_count,
        },
    });
    let outcome = tokio::select! {
        outcome = run_job(&job, runners.clone(), &link, run_cancel, (sink, events, forwarded)) => outcome,
        failure = link.failed() => {
            eprintln!("kiln-agent: {failure}");
            return exit_code_for(&failure);
        }
    };
    runners.process.kill_live_groups();
    kill_leftover_processes();
    if !reaper.reap_until_childless(REAP_PATIENCE).await {
        eprintln!("kiln-agent: step processes outlived the run");
    }

    let collect = CollectSpec {
        out_dir: args.work_dir.join("out"),
        credentials,
        max_artifacts: job.limits.max_artifacts.min(MAX_ARTIFACTS),
        max_artifact_bytes: job.limits.max_artifact_bytes.min(MAX_ARTIFACT_BYTES),
        max_total_bytes: job
            .limits
            .max_total_artifact_bytes
            .min(MAX_TOTAL_ARTIFACT_BYTES),
    };
    let summary = send_artifacts(&reaper, &self_exe, &link, collect).await;
    if let Some(reason) = &summary.aborted {
        eprintln!("kiln-agent: artifact collection stopped: {reason}");
    }
    let done_seq = match link.send_done(outcome).await {
        Ok(seq) => seq,
        Err(_) => {
            return link
                .failure()
                .as_ref()
                .map(exit_code_for)
                .unwrap_or(EXIT_INTERNAL);
        }
    };
    if let Err(failure) = link.wait_acked(done_seq).await {
        eprintln!("kiln-agent: {failure}");
        return exit_code_for(&failure);
    }
    link.close(task, CLOSE_TIMEOUT).await;
    EXIT_OK
}

async fn watch_signals(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    stop.cancel();
}

async fn forward_cancel(
    from_controller: CancellationToken,
    from_signal: CancellationToken,
    run_cancel: CancellationToken,
) {
    tokio::select! {
        _ = from_controller.cancelled() => {}
        _ = from_signal.cancelled() => {}
    }
    run_cancel.cancel();
}

/// As PID 1 of the container, SIGKILL every other process (step leftovers
/// that escaped their group) before collecting artifacts. Outside a
/// container (tests) this would hit the host, so only PID 1 does it.
fn kill_leftover_processes() {
    if std::process::id() == 1 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-1),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn bounded(text: String) -> String {
    if text.len() <= MAX_REASON_BYTES {
        return text;
    }
    let mut end = MAX_REASON_BYTES - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The engine's event sink, its receiving end, and the count of events
/// handed to the link (read by [`crate::runners::EventOrder`]).
type EngineEvents = (
    EventSink,
    tokio::sync::mpsc::Receiver<recipe::event::SequencedEvent>,
    tokio::sync::watch::Sender<u64>,
);

/// Checks and runs the recipe; engine events stream to the link.
async fn run_job(
    job: &Job,
    runners: Arc<AgentRunners>,
    link: &Link,
    cancel: CancellationToken,
    (sink, mut receiver, forwarded): EngineEvents,
) -> Outcome {
    let options = recipe::CheckOptions {
        known_agents: None,
        available_recipes: Some(job.files.keys().cloned().collect()),
    };
    let checked = recipe::check(&job.recipe_source, &options);
    let recipe = match (checked.has_errors(), checked.recipe) {
        (false, Some(recipe)) => recipe,
        _ => {
            let first_error = checked
                .diagnostics
                .iter()
                .find(|diagnostic| diagnostic.severity == recipe::diagnostic::Severity::Error)
                .map(|diagnostic| {
                    format!(
                        "{} at {}:{}: {}",
                        diagnostic.code, diagnostic.line, diagnostic.column, diagnostic.message
                    )
                })
                .unwrap_or_else(|| "the recipe could not be loaded".to_string());
            return Outcome {
                status: FinalStatus::Failed,
                reason: Some("recipe_invalid".to_string()),
                message: Some(bounded(first_error)),
            };
        }
    };
    let forward_link = link.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(sequenced) = receiver.recv().await {
            forward_engine_event(&forward_link, sequenced.event).await;
            forwarded.send_replace(sequenced.seq + 1);
        }
    });
    let closer = sink.clone();
    let outcome = recipe::engine::run(&recipe, job.inputs.clone(), runners, sink, cancel).await;
    // The runners hold a clone of the sink (for `EventOrder`): close the
    // channel so the forwarder ends after the last event.
    closer.close().await;
    let _ = forwarder.await;
    let (status, reason) = match outcome.status {
        RunStatus::Succeeded => (FinalStatus::Succeeded, None),
        RunStatus::Partial => (FinalStatus::Succeeded, Some("partial")),
        RunStatus::Failed => (FinalStatus::Failed, Some("step_failed")),
        RunStatus::Denied => (FinalStatus::Denied, Some("approval_denied")),
        RunStatus::Cancelled => (FinalStatus::Cancelled, Some("cancelled")),
    };
    Outcome {
        status,
        reason: reason.map(str::to_string),
        message: outcome.error.map(bounded),
    }
}

/// Sends an engine event; one too large for the protocol is replaced by a
/// warning so the stream stays complete.
async fn forward_engine_event(link: &Link, event: Event) {
    match link.send_event(AgentEventBody::Engine(event)).await {
        Ok(_) | Err(SendError::Closed) => {}
        Err(SendError::Encode(error)) => {
            let warning = Event::Warning {
                step_id: None,
                message: format!("an event was dropped: {error}"),
            };
            let _ = link.send_event(AgentEventBody::Engine(warning)).await;
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
pub fn iso_utc(epoch_secs: u64) -> String {
    let days = (epoch_secs / 86_400) as i64;
    let secs_of_day = epoch_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3_600,
        secs_of_day % 3_600 / 60,
        secs_of_day % 60
    )
}

/// Reads and checks the one-time token (never from the environment).
pub fn read_token(path: &Path) -> Result<String, String> {
    let bytes =
        std::fs::read(path).map_err(|error| format!("read token {}: {error}", path.display()))?;
    let token =
        String::from_utf8(bytes).map_err(|_| format!("token {} is not utf-8", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty()
        || token.len() > protocol::MAX_TOKEN_BYTES
        || token.chars().any(char::is_control)
    {
        return Err(format!(
            "token {} is empty, too long or malformed",
            path.display()
        ));
    }
    Ok(token)
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;

//! The engine's `StepRunner`, implemented with real processes and the link.
//!
//! - `bash`: resolves shell, cwd, environment and injection-free variables,
//!   then runs the step through [`ProcessRunner`] (trampoline + process group).
//! - `agent`: a model call through the controller (the sandbox holds no keys).
//! - `load_recipe`: only the job's submitted files.
//! - `wait_approval`: an approval request through the controller.
//!
//! Working directory rule: a step's `cwd` is resolved against the work dir
//! and must stay under it lexically (no `..`, absolute paths only inside the
//! work dir). The step cannot gain anything by escaping, it could `cd`
//! anywhere itself, but a cwd outside `/work` is almost always a recipe bug.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::{
    AgentEventBody, KillReason, ModelErrorCode, ModelMessage, ModelParameters, ModelPreference,
    ModelRequest, ModelResponseBody, ModelRole, SandboxEvent,
};
use recipe::event::{Decision, OutputStream};
use recipe::model::{ApprovalDefault, ProviderPreference};
use recipe::runner::{
    AgentOutcome, AgentRequest, ApprovalDecision, ApprovalRequest, BashOutcome, BashRequest,
    BoxFuture, RunnerError, SessionInfo, StepIo, StepRunner,
};
use serde_json::Value;

use crate::link::{Link, now_ms};
use crate::step_process::{OutputSink, ProcessRunner, StepError, StepLimits, Stream, Termination};
use crate::step_spec::{Credentials, ExecSpec, StepRlimits};

/// Values at most this long are also exported as `KILN_VAR_<name>`.
pub const MAX_ENV_VAR_VALUE_BYTES: usize = 32 * 1024;
/// PATH given to steps.
pub const STEP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything fixed for one execution.
pub struct AgentRunners {
    pub process: ProcessRunner,
    pub link: Link,
    pub files: BTreeMap<String, String>,
    pub work_dir: PathBuf,
    pub default_shell: String,
    pub credentials: Option<Credentials>,
    pub rlimits: StepRlimits,
    /// Clamp for a step's per-stream `max_output_bytes`.
    pub max_step_output_bytes: u64,
    pub kill_grace: Duration,
    pub execution_id: String,
    pub started_iso: String,
    pub step_counter: AtomicU64,
    /// The engine's events, to order requests after them (see [`EventOrder`]).
    pub event_order: EventOrder,
}

/// Keeps a model or approval request behind the engine events emitted
/// before it. Engine events reach the link through a forwarding task, while
/// a runner sends its request directly, so without this a request could
/// overtake its own step's `step_started` (measured: a `model_call_started`
/// stored before the `step_started` of its step).
pub struct EventOrder {
    /// A clone of the engine's sink: its `next_seq` counts what was emitted.
    pub emitted: recipe::event::EventSink,
    /// How many engine events the forwarder has handed to the link.
    pub forwarded: tokio::sync::watch::Receiver<u64>,
}

impl EventOrder {
    /// Waits until every engine event emitted so far is in the link's
    /// reliable queue (which is sent before any request).
    async fn wait_forwarded(&self) {
        let emitted = self.emitted.next_seq().await;
        let mut forwarded = self.forwarded.clone();
        // An error means the forwarder is gone: nothing more to wait for.
        let _ = forwarded.wait_for(|count| *count >= emitted).await;
    }
}

/// `/bin/bash` when the image has it, else `/bin/sh`.
pub fn default_shell() -> String {
    if Path::new("/bin/bash").exists() {
        "/bin/bash".to_string()
    } else {
        "/bin/sh".to_string()
    }
}

/// Resolves a step's cwd under `work_dir` (lexically; see the module doc).
pub fn resolve_cwd(work_dir: &Path, cwd: Option<&str>) -> Result<PathBuf, String> {
    let Some(cwd) = cwd.map(str::trim).filter(|cwd| !cwd.is_empty()) else {
        return Ok(work_dir.to_path_buf());
    };
    if cwd.contains('\0') {
        return Err("cwd contains a NUL byte".to_string());
    }
    let path = Path::new(cwd);
    if path
        .components()
        .any(|component| component == Component::ParentDir)
    {
        return Err(format!("cwd {cwd:?} must not contain '..'"));
    }
    if path.is_absolute() {
        if path.starts_with(work_dir) {
            return Ok(path.to_path_buf());
        }
        return Err(format!("cwd {cwd:?} is outside {}", work_dir.display()));
    }
    Ok(work_dir.join(path))
}

/// Whether `name` can be a file name under `$KILN_VARS`.
pub fn is_var_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

/// `KILN_VAR_<name>` with dots as `__`, if that is a valid env name.
pub fn var_env_name(name: &str) -> Option<String> {
    let env_name = format!("KILN_VAR_{}", name.replace('.', "__"));
    let is_valid = env_name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    is_valid.then_some(env_name)
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// The step's complete environment: PATH, HOME, LANG, the recipe's `env`,
/// then `KILN_VARS` and the small variables (these win over the recipe).
pub fn step_env(
    work_dir: &Path,
    recipe_env: &BTreeMap<String, String>,
    vars_dir: &Path,
    vars: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), STEP_PATH.to_string());
    env.insert("HOME".to_string(), work_dir.display().to_string());
    env.insert("LANG".to_string(), "C.UTF-8".to_string());
    for (name, value) in recipe_env {
        if !is_env_name(name) {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        if value.contains('\0') {
            return Err(format!("environment variable {name} contains a NUL byte"));
        }
        env.insert(name.clone(), value.clone());
    }
    env.insert("KILN_VARS".to_string(), vars_dir.display().to_string());
    for (name, value) in vars {
        if value.len() > MAX_ENV_VAR_VALUE_BYTES || value.contains('\0') {
            continue;
        }
        if let Some(env_name) = var_env_name(name) {
            env.insert(env_name, value.clone());
        }
    }
    Ok(env)
}

struct StepIoSink<'a> {
    io: &'a StepIo,
}

fn to_output_stream(stream: Stream) -> OutputStream {
    match stream {
        Stream::Stdout => OutputStream::Stdout,
        Stream::Stderr => OutputStream::Stderr,
    }
}

impl OutputSink for StepIoSink<'_> {
    fn output(&self, stream: Stream, text: String) -> BoxFuture<'_, ()> {
        Box::pin(self.io.output(to_output_stream(stream), text))
    }
}

fn failed(message: impl Into<String>) -> RunnerError {
    RunnerError::Failed {
        message: message.into(),
    }
}

impl AgentRunners {
    async fn run_bash(&self, request: BashRequest, io: StepIo) -> Result<BashOutcome, RunnerError> {
        let cwd = resolve_cwd(&self.work_dir, request.cwd.as_deref()).map_err(failed)?;
        let shell = match request.shell.as_deref().map(str::trim) {
            Some(shell) if !shell.is_empty() => {
                if !shell.starts_with('/') || shell.contains('\0') {
                    return Err(failed(format!("shell {shell:?} must be an absolute path")));
                }
                shell.to_string()
            }
            _ => self.default_shell.clone(),
        };
        for name in request.vars.keys() {
            if !is_var_file_name(name) {
                return Err(failed(format!("variable name {name:?} cannot be exported")));
            }
        }
        let step_number = self.step_counter.fetch_add(1, Ordering::SeqCst) + 1;
        let vars_dir = self
            .work_dir
            .join(".kiln")
            .join("vars")
            .join(step_number.to_string());
        let env =
            step_env(&self.work_dir, &request.env, &vars_dir, &request.vars).map_err(failed)?;
        let spec = ExecSpec {
            shell,
            script: request.script,
            env,
            cwd,
            vars_dir,
            vars: request.vars,
            credentials: self.credentials,
            rlimits: self.rlimits.clone(),
            oom_score_adj: 1000,
        };
        let limits = StepLimits {
            timeout: request.timeout,
            max_output_bytes: request.max_output_bytes.min(self.max_step_output_bytes),
            kill_grace: self.kill_grace,
        };
        let sink = StepIoSink { io: &io };
        // The engine races the step against its timeout and the run's cancel
        // and drops this future when either wins; the report says so then.
        let mut kill_report = KillReport {
            link: self.link.clone(),
            step_id: request.step_id.clone(),
            started: tokio::time::Instant::now(),
            timeout: request.timeout,
            is_armed: true,
        };
        let result = self.process.run(&spec, limits, &sink, io.cancel()).await;
        kill_report.is_armed = false;
        let result = match result {
            Ok(result) => result,
            Err(StepError::Setup { reason, message }) => {
                return Err(failed(format!(
                    "step could not start ({reason}): {message}"
                )));
            }
            Err(error) => return Err(failed(error.to_string())),
        };
        if let Some(termination) = result.terminated {
            let reason = match termination {
                Termination::Timeout => KillReason::Timeout,
                Termination::Cancelled => KillReason::Cancelled,
            };
            let signal = match result.exit_code {
                137 => "SIGKILL",
                _ => "SIGTERM",
            };
            let event = SandboxEvent::StepKilled {
                step_id: request.step_id.clone(),
                reason,
                signal: signal.to_string(),
            };
            let _ = self.link.send_event(AgentEventBody::Sandbox(event)).await;
            if termination == Termination::Cancelled {
                return Err(RunnerError::Cancelled);
            }
        }
        Ok(BashOutcome {
            exit_code: result.exit_code,
            stdout: result.stdout,
            stderr: result.stderr,
            stdout_truncated: result.stdout_truncated,
            stderr_truncated: result.stderr_truncated,
            timed_out: result.terminated == Some(Termination::Timeout),
        })
    }

    async fn run_agent(&self, request: AgentRequest) -> Result<AgentOutcome, RunnerError> {
        let model_request = model_request_of(&request);
        self.event_order.wait_forwarded().await;
        let (request_id, mut responses) = self
            .link
            .request_model(model_request)
            .map_err(|error| failed(format!("model request: {error}")))?;
        let mut guard = ModelRequestGuard {
            link: &self.link,
            request_id,
            is_answered: false,
        };
        while let Some(body) = responses.recv().await {
            match body {
                ModelResponseBody::Chunk { .. } => continue,
                ModelResponseBody::Completed { text, .. } => {
                    guard.is_answered = true;
                    return Ok(AgentOutcome {
                        output: Value::String(text),
                    });
                }
                ModelResponseBody::Error { code, message } => {
                    guard.is_answered = true;
                    return Err(match code {
                        ModelErrorCode::RateLimited => RunnerError::RateLimited { message },
                        _ => failed(format!("model call failed ({code:?}): {message}")),
                    });
                }
            }
        }
        Err(failed("model request abandoned: the link closed"))
    }

    async fn run_approval(&self, request: ApprovalRequest) -> ApprovalDecision {
        self.event_order.wait_forwarded().await;
        let wire_request = protocol::ApprovalRequest {
            request_id: 0,
            stage: request.stage,
            prompt: request.prompt,
            timeout_secs: request.timeout_secs,
            default: match request.default {
                ApprovalDefault::Approve => protocol::ApprovalChoice::Approve,
                ApprovalDefault::Deny => protocol::ApprovalChoice::Deny,
            },
        };
        match self.link.request_approval(wire_request).await {
            Ok(decision) => ApprovalDecision {
                decision: match decision.decision {
                    protocol::ApprovalChoice::Approve => Decision::Approve,
                    protocol::ApprovalChoice::Deny => Decision::Deny,
                },
                by: decision.by,
                message: decision.message.unwrap_or_default(),
            },
            // The link is gone for good; the agent is shutting down and the
            // engine is cancelled. Never decide on nobody's behalf.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The wire request for an agent step: the step's whole model selection as
/// the engine gives it (templated `provider`/`model`, `provider_preferences`
/// with `class` entries, `model_role`, `agent_config`), nothing dropped. The
/// controller resolves it and applies the `agent_config` allowlist; the
/// sandbox holds no configuration to judge it by. `request_id` is assigned
/// by the link.
///
/// `stream` is false: the controller streams the live tokens to watchers
/// itself (as `model_output` events), and the step only needs the final
/// answer, so chunks sent here would only cost frames.
pub fn model_request_of(request: &AgentRequest) -> ModelRequest {
    let provider_preferences = request.provider_preferences.as_ref().map(|entries| {
        entries
            .iter()
            .map(|entry| match entry {
                ProviderPreference::Provider { provider, model } => ModelPreference::Provider {
                    provider: provider.clone(),
                    model: model.clone(),
                },
                ProviderPreference::Class { class } => ModelPreference::Class {
                    class: class.clone(),
                },
            })
            .collect()
    });
    ModelRequest {
        request_id: 0,
        step_id: request.step_id.clone(),
        agent: request.agent.clone(),
        messages: vec![ModelMessage {
            role: ModelRole::User,
            content: request.prompt.clone(),
        }],
        provider: request.provider.clone(),
        model: request.model.clone(),
        provider_preferences,
        model_role: request.model_role.clone(),
        agent_config: request.agent_config.clone(),
        parameters: ModelParameters::default(),
        stream: false,
        timeout_secs: request.timeout.as_secs(),
    }
}

/// Reports `step_killed` when a running bash step's future is dropped (its
/// process group is terminated by the process runner's own guard).
struct KillReport {
    link: Link,
    step_id: String,
    started: tokio::time::Instant,
    timeout: Duration,
    is_armed: bool,
}

impl Drop for KillReport {
    fn drop(&mut self) {
        if !self.is_armed {
            return;
        }
        let reason = if self.started.elapsed() >= self.timeout {
            KillReason::Timeout
        } else {
            KillReason::Cancelled
        };
        let event = SandboxEvent::StepKilled {
            step_id: std::mem::take(&mut self.step_id),
            reason,
            signal: "SIGTERM".to_string(),
        };
        let link = self.link.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = link.send_event(AgentEventBody::Sandbox(event)).await;
            });
        }
    }
}

/// Tells the controller when an unanswered model call is abandoned.
struct ModelRequestGuard<'a> {
    link: &'a Link,
    request_id: u64,
    is_answered: bool,
}

impl Drop for ModelRequestGuard<'_> {
    fn drop(&mut self) {
        self.link
            .end_model_request(self.request_id, self.is_answered);
    }
}

impl StepRunner for AgentRunners {
    fn bash(
        &self,
        request: BashRequest,
        io: StepIo,
    ) -> BoxFuture<'_, Result<BashOutcome, RunnerError>> {
        Box::pin(self.run_bash(request, io))
    }

    fn agent(
        &self,
        request: AgentRequest,
        _io: StepIo,
    ) -> BoxFuture<'_, Result<AgentOutcome, RunnerError>> {
        Box::pin(self.run_agent(request))
    }

    fn load_recipe<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, RunnerError>> {
        Box::pin(async move {
            self.files
                .get(name)
                .cloned()
                .ok_or_else(|| RunnerError::RecipeNotFound {
                    name: name.to_string(),
                })
        })
    }

    fn wait_approval(&self, request: ApprovalRequest) -> BoxFuture<'_, ApprovalDecision> {
        Box::pin(self.run_approval(request))
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn session(&self) -> SessionInfo {
        SessionInfo {
            id: self.execution_id.clone(),
            started: self.started_iso.clone(),
            project: self.work_dir.display().to_string(),
        }
    }
}

#[cfg(test)]
#[path = "runners_tests.rs"]
mod tests;

//! `kiln run recipe.yaml [--input k=v]... [--file path]... [--class c]
//! [--server URL --token T] [--json]`.
//!
//! Submits through the HTTP API and watches through the WebSocket stream,
//! either on a server or on an embedded controller started here (same code
//! path as `kiln serve`: temp data dir, API on 127.0.0.1:0). Live progress on
//! a terminal (a spinner per step, elapsed time, streamed output, the final
//! status), plain lines otherwise, JSON lines with `--json`. Ctrl-C cancels
//! the execution and waits for its end. The exit status mirrors the
//! execution (see [`super::exit`]).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::{EventBody, ExecutionEvent, FinalStatus};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::exit;
use crate::api::executions::{SubmitBody, Submitted};
use crate::api::stream::StreamMessage;
use crate::config::Config;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The recipe YAML file.
    pub recipe: PathBuf,
    /// A recipe input, `name=value`; the value is JSON when it parses as JSON.
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// An extra file (a sub-recipe), sent under its file name.
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// The execution class (operator-defined; default: the server's default).
    #[arg(long)]
    pub class: Option<String>,
    /// A Kiln server, e.g. http://127.0.0.1:8700; omitted: an embedded controller.
    #[arg(long, env = "KILN_SERVER")]
    pub server: Option<String>,
    /// The bearer token for --server.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the event stream as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// A failure of the command itself (not of the execution).
struct Failure {
    code: u8,
    message: String,
}

fn failure(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

pub async fn run(args: RunArgs) -> u8 {
    match run_inner(args).await {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            failure.code
        }
    }
}

async fn run_inner(args: RunArgs) -> Result<u8, Failure> {
    let body = submission(&args)?;
    match args.server.clone() {
        Some(server) => {
            let token = args
                .token
                .clone()
                .ok_or_else(|| failure(exit::CONFIG, "--server needs --token (or KILN_TOKEN)"))?;
            let server = server.trim_end_matches('/').to_owned();
            if !server.starts_with("http://") {
                return Err(failure(
                    exit::CONFIG,
                    "--server must be an http:// URL (put TLS in a reverse proxy)",
                ));
            }
            watch_run(&server, &token, &body, args.json).await
        }
        None => run_embedded(&body, args.json).await,
    }
}

fn submission(args: &RunArgs) -> Result<SubmitBody, Failure> {
    let recipe = std::fs::read_to_string(&args.recipe).map_err(|error| {
        failure(
            exit::CONFIG,
            format!("cannot read {}: {error}", args.recipe.display()),
        )
    })?;
    let mut inputs = serde_json::Map::new();
    for input in &args.inputs {
        let (name, text) = input
            .split_once('=')
            .ok_or_else(|| failure(exit::CONFIG, format!("--input {input:?} is not NAME=VALUE")))?;
        let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
        inputs.insert(name.to_owned(), value);
    }
    let mut files = BTreeMap::new();
    for path in &args.files {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(|| {
                failure(
                    exit::CONFIG,
                    format!("--file {} has no file name", path.display()),
                )
            })?;
        let content = std::fs::read_to_string(path).map_err(|error| {
            failure(
                exit::CONFIG,
                format!("cannot read {}: {error}", path.display()),
            )
        })?;
        files.insert(name, content);
    }
    Ok(SubmitBody {
        recipe: Some(recipe),
        gallery: None,
        inputs,
        files,
        class: args.class.clone(),
    })
}

/// The embedded controller: a private data dir, the same start-up as
/// `kiln serve`, the API on 127.0.0.1:0, torn down after the run.
async fn run_embedded(body: &SubmitBody, json: bool) -> Result<u8, Failure> {
    super::init_tracing(true);
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let data_dir = tempfile::Builder::new()
        .prefix("kiln-run-")
        .tempdir_in(base)
        .map_err(|error| {
            failure(
                exit::UNAVAILABLE,
                format!("cannot create a data dir: {error}"),
            )
        })?;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut config =
        Config::load(None, &env).map_err(|error| failure(exit::CONFIG, error.to_string()))?;
    config.server.data_dir = data_dir.path().join("data");
    config.server.run_dir = data_dir.path().join("run");
    let config = Arc::new(config);

    let shutdown = CancellationToken::new();
    let controller = crate::serve::start(Arc::clone(&config), shutdown.clone())
        .await
        .map_err(|error| failure(exit::UNAVAILABLE, super::error_chain(&error)))?;
    let token = controller
        .new_admin_token
        .clone()
        .ok_or_else(|| failure(exit::INTERNAL, "the embedded store has no admin token"))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|error| failure(exit::UNAVAILABLE, format!("cannot listen: {error}")))?;
    let address = listener
        .local_addr()
        .map_err(|error| failure(exit::UNAVAILABLE, format!("cannot listen: {error}")))?;
    let server_task = tokio::spawn(crate::serve::serve(controller, listener));

    let outcome = watch_run(&format!("http://{address}"), &token, body, json).await;

    shutdown.cancel();
    let _ = server_task.await;
    drop(data_dir);
    outcome
}

/// Submit, then watch until the end; Ctrl-C asks for a cancel once.
async fn watch_run(
    server: &str,
    token: &str,
    body: &SubmitBody,
    json: bool,
) -> Result<u8, Failure> {
    let client = reqwest::Client::new();
    let submitted = submit(&client, server, token, body).await?;
    let started = Instant::now();
    let mut view = View::new(json);
    view.note(&format!("execution {}", submitted.id));

    let mut after = 0;
    let mut cancel_sent = false;
    let mut n_failed_connects = 0;
    loop {
        let mut request = format!(
            "{}{}?after={after}",
            server.replacen("http", "ws", 1),
            submitted.stream_url
        )
        .into_client_request()
        .map_err(|error| failure(exit::CONFIG, format!("bad server url: {error}")))?;
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| failure(exit::CONFIG, "the token is not a valid header value"))?;
        request.headers_mut().insert("authorization", bearer);
        let host = server
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut stream = match open_stream(&host, request).await {
            Ok(stream) => {
                n_failed_connects = 0;
                stream
            }
            // A server restart: keep trying for a while, then give up.
            Err(message) if n_failed_connects < MAX_RECONNECTS => {
                n_failed_connects += 1;
                if n_failed_connects == 1 {
                    view.note(&format!("{message}; retrying"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(message) => return Err(failure(exit::UNAVAILABLE, message)),
        };
        let mut spinner = tokio::time::interval(Duration::from_millis(120));
        loop {
            let message = tokio::select! {
                message = stream.next() => message,
                _ = spinner.tick() => {
                    view.tick();
                    continue;
                }
                _ = tokio::signal::ctrl_c(), if !cancel_sent => {
                    cancel_sent = true;
                    view.note("cancelling (Ctrl-C)");
                    cancel(&client, server, token, &submitted.id).await;
                    continue;
                }
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            };
            let Ok(message) = serde_json::from_str::<StreamMessage>(text.as_str()) else {
                continue;
            };
            match message {
                StreamMessage::Event { event } => {
                    after = after.max(event.seq);
                    view.event(&event);
                }
                StreamMessage::Heartbeat { .. } => {}
                StreamMessage::End { status, detail, .. } => {
                    let code = status
                        .final_status()
                        .map_or(exit::INTERNAL, super::exit_code_of);
                    view.end(status.as_str(), detail.as_deref(), started.elapsed());
                    return Ok(code);
                }
            }
        }
        // Lagged, server restart or a dropped connection: resume after the
        // last event seen (no gap, no duplicate).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many times (one second apart) the stream is reopened after failures.
const MAX_RECONNECTS: u32 = 60;

type EventStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open_stream(
    host: &str,
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<EventStream, String> {
    let tcp = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|error| format!("cannot reach {host}: {error}"))?;
    let (stream, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|error| format!("cannot open the event stream: {error}"))?;
    Ok(stream)
}

async fn submit(
    client: &reqwest::Client,
    server: &str,
    token: &str,
    body: &SubmitBody,
) -> Result<Submitted, Failure> {
    let response = client
        .post(format!("{server}/api/v1/executions"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|error| failure(exit::UNAVAILABLE, format!("cannot reach {server}: {error}")))?;
    let status = response.status();
    let text = response.text().await.map_err(|error| {
        failure(
            exit::UNAVAILABLE,
            format!("cannot read the answer: {error}"),
        )
    })?;
    if status.is_success() {
        return serde_json::from_str(&text)
            .map_err(|error| failure(exit::INTERNAL, format!("unexpected answer: {error}")));
    }
    let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = error["error"]["code"].as_str().unwrap_or("unknown");
    let message = error["error"]["message"].as_str().unwrap_or(&text);
    let mut lines = format!("the server refused the execution ({status}, {code}): {message}");
    if let Some(diagnostics) = error["error"]["details"]["diagnostics"].as_array() {
        for diagnostic in diagnostics {
            lines.push_str(&format!(
                "\n  {}:{}: {} [{}] at {}",
                diagnostic["line"],
                diagnostic["column"],
                diagnostic["message"].as_str().unwrap_or(""),
                diagnostic["code"].as_str().unwrap_or(""),
                diagnostic["path"].as_str().unwrap_or("")
            ));
        }
    }
    let exit_code = if status.is_client_error() {
        exit::INVALID
    } else {
        exit::UNAVAILABLE
    };
    Err(failure(exit_code, lines))
}

async fn cancel(client: &reqwest::Client, server: &str, token: &str, id: &str) {
    let result = client
        .post(format!("{server}/api/v1/executions/{id}/cancel"))
        .bearer_auth(token)
        .send()
        .await;
    if let Err(error) = result {
        eprintln!("warning: cancel failed: {error}");
    }
}

/// How events are shown: JSON lines, plain lines, or a live terminal view.
struct View {
    json: bool,
    is_tty: bool,
    /// Running steps and when they started (a spinner line each, in order).
    running: Vec<(String, Instant)>,
    spinner_idx: usize,
    /// Whether the spinner line is currently drawn (and must be cleared).
    is_drawn: bool,
    /// Live model text not yet ended by a newline, per model request id.
    model_lines: std::collections::BTreeMap<u64, String>,
    /// Model calls seen finished, and their input and output tokens.
    model_totals: (u64, u64, u64),
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl View {
    fn new(json: bool) -> View {
        View {
            json,
            is_tty: std::io::stdout().is_terminal(),
            running: Vec::new(),
            spinner_idx: 0,
            is_drawn: false,
            model_lines: std::collections::BTreeMap::new(),
            model_totals: (0, 0, 0),
        }
    }

    fn note(&mut self, text: &str) {
        if !self.json {
            self.print_line(&format!("· {text}"));
        }
    }

    fn print_line(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        if self.is_drawn {
            let _ = write!(out, "\r\x1b[2K");
            self.is_drawn = false;
        }
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// One line of live model text (dimmed on a terminal).
    fn print_model_line(&mut self, line: &str) {
        let line = printable(line);
        let shown = if self.is_tty {
            format!("  \x1b[2m│ {line}\x1b[0m")
        } else {
            format!("  │ {line}")
        };
        self.print_line(&shown);
    }

    fn tick(&mut self) {
        if self.json || !self.is_tty {
            return;
        }
        let Some((step_id, started)) = self.running.last() else {
            return;
        };
        self.spinner_idx = (self.spinner_idx + 1) % SPINNER.len();
        let line = format!(
            "\r\x1b[2K{} {step_id}  {:.1}s",
            SPINNER[self.spinner_idx],
            started.elapsed().as_secs_f64()
        );
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{line}");
        let _ = out.flush();
        self.is_drawn = true;
    }

    fn event(&mut self, event: &ExecutionEvent) {
        if self.json {
            if let Ok(line) = serde_json::to_string(event) {
                self.print_line(&line);
            }
            return;
        }
        let Ok(body) = serde_json::to_value(&event.body) else {
            return;
        };
        let kind = body["event"]["type"].as_str().unwrap_or("").to_owned();
        let payload = &body["event"];
        let step_id = payload["step_id"].as_str().unwrap_or("").to_owned();
        match (&event.body, kind.as_str()) {
            (EventBody::Engine(_), "step_started") => {
                self.running.push((step_id.clone(), Instant::now()));
                if !self.is_tty {
                    self.print_line(&format!("▶ {step_id}"));
                }
                self.tick();
            }
            (EventBody::Engine(_), "step_output") => {
                let text = payload["text"].as_str().unwrap_or("");
                let is_stderr = payload["stream"].as_str() == Some("stderr");
                for line in text.lines() {
                    let line = printable(line);
                    let shown = if is_stderr && self.is_tty {
                        format!("  \x1b[33m{line}\x1b[0m")
                    } else {
                        format!("  {line}")
                    };
                    self.print_line(&shown);
                }
                self.tick();
            }
            (EventBody::Engine(_), "step_completed" | "step_failed" | "step_skipped") => {
                let started = self
                    .running
                    .iter()
                    .position(|(id, _)| *id == step_id)
                    .map(|idx| self.running.remove(idx).1);
                let elapsed = started.map_or(String::new(), |at| {
                    format!(" ({:.1}s)", at.elapsed().as_secs_f64())
                });
                let mark = match kind.as_str() {
                    "step_completed" => "✓",
                    "step_failed" => "✗",
                    _ => "↷",
                };
                let extra = match kind.as_str() {
                    "step_failed" => format!(" {}", payload["error"].as_str().unwrap_or("")),
                    "step_skipped" => {
                        format!(" {}", payload["reason"]["kind"].as_str().unwrap_or(""))
                    }
                    _ => String::new(),
                };
                self.print_line(&format!("{mark} {step_id}{elapsed}{extra}"));
            }
            (EventBody::Engine(_), "approval_requested") => {
                let stage = payload["stage"].as_str().unwrap_or("");
                let prompt = payload["prompt"].as_str().unwrap_or("");
                self.print_line(&format!(
                    "? approval needed at stage {stage}: {prompt}\n  approve: POST /api/v1/executions/<id>/approvals/{stage}"
                ));
            }
            (EventBody::Engine(_), "output_truncated") => {
                self.print_line(&format!("  … output of {step_id} truncated"));
            }
            (EventBody::Controller(_), "model_call_started") => {
                self.print_line(&format!(
                    "· {step_id}: model {}/{} ({})",
                    payload["provider"].as_str().unwrap_or(""),
                    payload["model"].as_str().unwrap_or(""),
                    payload["profile"].as_str().unwrap_or("")
                ));
                self.tick();
            }
            (EventBody::Controller(_), "model_output") => {
                // Whole lines as they complete; the rest when the call ends.
                let request_id = payload["request_id"].as_u64().unwrap_or(0);
                let text = payload["text"].as_str().unwrap_or("");
                let pending = self.model_lines.entry(request_id).or_default();
                pending.push_str(text);
                let mut lines = Vec::new();
                while let Some(end) = pending.find('\n') {
                    lines.push(pending[..end].to_owned());
                    pending.drain(..=end);
                }
                for line in lines {
                    self.print_model_line(&line);
                }
                self.tick();
            }
            (EventBody::Controller(_), "model_call_finished") => {
                let request_id = payload["request_id"].as_u64().unwrap_or(0);
                if let Some(rest) = self.model_lines.remove(&request_id)
                    && !rest.is_empty()
                {
                    self.print_model_line(&rest);
                }
                let (calls, input, output) = &mut self.model_totals;
                *calls += 1;
                *input += payload["input_tokens"].as_u64().unwrap_or(0);
                *output += payload["output_tokens"].as_u64().unwrap_or(0);
                let ms = payload["duration_ms"].as_u64().unwrap_or(0);
                let detail = match payload["outcome"].as_str().unwrap_or("") {
                    "completed" => format!(
                        "{} in / {} out tokens",
                        payload["input_tokens"], payload["output_tokens"]
                    ),
                    other => format!("{other}: {}", payload["message"].as_str().unwrap_or("")),
                };
                self.print_line(&format!(
                    "· {step_id}: model call {detail} ({:.1}s)",
                    ms as f64 / 1000.0
                ));
                self.tick();
            }
            (EventBody::Controller(_), "model_call_refused") => {
                let message = payload["message"].as_str().unwrap_or("");
                self.print_line(&format!("✗ {step_id}: model call refused: {message}"));
            }
            (EventBody::Sandbox(_), "artifact_stored") => {
                let name = payload["name"].as_str().unwrap_or("");
                self.print_line(&format!(
                    "· artifact {name} ({} bytes)",
                    payload["size_bytes"]
                ));
            }
            (EventBody::Sandbox(_), "artifact_rejected") => {
                let name = payload["name"].as_str().unwrap_or("");
                let reason = payload["reason"].as_str().unwrap_or("");
                self.print_line(&format!("· artifact {name} rejected: {reason}"));
            }
            _ => {}
        }
    }

    fn end(&mut self, status: &str, detail: Option<&str>, elapsed: Duration) {
        if self.json {
            let end = serde_json::json!({"type": "end", "status": status, "detail": detail});
            self.print_line(&end.to_string());
            return;
        }
        let mark = if status == FinalStatus::Succeeded.as_str() {
            "✓"
        } else {
            "✗"
        };
        let detail = detail.map_or(String::new(), |detail| format!(": {detail}"));
        let models = match self.model_totals {
            (0, _, _) => String::new(),
            (calls, input, output) => {
                format!(" ({calls} model calls, {input} in / {output} out tokens)")
            }
        };
        self.print_line(&format!(
            "{mark} {status}{detail} in {:.1}s{models}",
            elapsed.as_secs_f64()
        ));
    }
}

/// `line` with control characters (escape sequences included) shown as
/// `\u{..}` escapes: recipe and model output must not drive the terminal.
fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut shown = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;

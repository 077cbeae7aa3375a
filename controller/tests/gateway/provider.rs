//! A scripted model provider for tests: a real HTTP server on 127.0.0.1:0
//! that speaks OpenAI-compatible Chat Completions (`POST /v1/chat/completions`,
//! so `base_url = http://<addr>/v1`) and Anthropic Messages
//! (`POST /v1/messages`, `base_url = http://<addr>`).
//!
//! Each request takes the next [`Script`]: a streamed answer in N chunks
//! (optionally slow, optionally cut into tiny TCP pieces), an error status
//! (with `Retry-After`), or a raw body for malformed streams. Every request is
//! recorded (path, headers, body), and so is whether the client went away
//! before the response body was finished.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Script {
    /// A streamed answer in the route's protocol.
    Stream {
        chunks: Vec<String>,
        input_tokens: u64,
        output_tokens: u64,
        model: String,
        /// Pause before each chunk event.
        delay: Duration,
        /// Cut the body into pieces of this many bytes.
        piece_bytes: Option<usize>,
    },
    /// An error status with a JSON body.
    Status {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
    /// Exactly these body pieces with this content type (malformed streams).
    Raw {
        content_type: String,
        pieces: Vec<Vec<u8>>,
    },
}

impl Script {
    pub fn stream(chunks: &[&str], input_tokens: u64, output_tokens: u64) -> Script {
        Script::Stream {
            chunks: chunks.iter().map(|c| c.to_string()).collect(),
            input_tokens,
            output_tokens,
            model: "served-model".to_string(),
            delay: Duration::ZERO,
            piece_bytes: None,
        }
    }

    pub fn status(status: u16, body: &str) -> Script {
        Script::Status {
            status,
            body: body.to_string(),
            retry_after: None,
        }
    }

    pub fn raw(content_type: &str, body: &str) -> Script {
        Script::Raw {
            content_type: content_type.to_string(),
            pieces: vec![body.as_bytes().to_vec()],
        }
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    /// Lower-cased names.
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<VecDeque<Script>>,
    requests: Mutex<Vec<Recorded>>,
    /// Per request index: `Some(true)` = the client went away mid-body,
    /// `Some(false)` = the body was sent in full.
    endings: Mutex<BTreeMap<usize, bool>>,
    ended: Notify,
    /// Streamed bodies not yet ended, and the most there ever were at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// The running server; stops when dropped.
pub struct TestProvider {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestProvider {
    pub async fn start(scripts: Vec<Script>) -> TestProvider {
        let shared = Arc::new(Shared::default());
        shared.scripts.lock().expect("scripts lock").extend(scripts);
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/v1/messages", post(handle))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test provider");
        let addr = listener.local_addr().expect("local addr");
        // Streamed chunks go out as they are written, as a real provider's do.
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            let _ = stream.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serve test provider");
        });
        TestProvider { addr, shared, task }
    }

    /// `base_url` for an OpenAI-compatible provider config.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `base_url` for an Anthropic provider config.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The most streamed answers that were ever in progress at once.
    #[allow(
        dead_code,
        reason = "tests/service.rs uses it; tests/gateway.rs does not"
    )]
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// Wait until request `idx`'s response body ended; true = the client
    /// disconnected before the end.
    pub async fn wait_ending(&self, idx: usize) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.ended.notified();
                if let Some(&disconnected) =
                    self.shared.endings.lock().expect("endings lock").get(&idx)
                {
                    return disconnected;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the response body of the request ended within 30 s")
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let recorded = Recorded {
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let idx = {
        let mut requests = shared.requests.lock().expect("requests lock");
        requests.push(recorded);
        requests.len() - 1
    };
    let script = shared.scripts.lock().expect("scripts lock").pop_front();
    let is_anthropic = path == "/v1/messages";
    match script {
        None => plain(500, "{\"error\":{\"message\":\"script exhausted\"}}", None),
        Some(Script::Status {
            status,
            body,
            retry_after,
        }) => plain(status, &body, retry_after.as_deref()),
        Some(Script::Raw {
            content_type,
            pieces,
        }) => streamed(shared, idx, &content_type, pieces, Duration::ZERO, None),
        Some(Script::Stream {
            chunks,
            input_tokens,
            output_tokens,
            model,
            delay,
            piece_bytes,
        }) => {
            let events = if is_anthropic {
                anthropic_events(&chunks, input_tokens, output_tokens, &model)
            } else {
                openai_events(&chunks, input_tokens, output_tokens, &model)
            };
            streamed(shared, idx, "text/event-stream", events, delay, piece_bytes)
        }
    }
}

fn plain(status: u16, body: &str, retry_after: Option<&str>) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).expect("scripted status is valid"))
        .header("content-type", "application/json");
    if let Some(retry_after) = retry_after {
        builder = builder.header("retry-after", retry_after);
    }
    builder
        .body(Body::from(body.to_string()))
        .expect("valid response")
}

/// Records the end of a body: finished, or dropped early (client gone).
struct EndGuard {
    shared: Arc<Shared>,
    idx: usize,
    finished: bool,
}

impl EndGuard {
    fn mark_finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.shared
            .endings
            .lock()
            .expect("endings lock")
            .insert(self.idx, !self.finished);
        self.shared.ended.notify_waiters();
    }
}

fn streamed(
    shared: Arc<Shared>,
    idx: usize,
    content_type: &str,
    events: Vec<Vec<u8>>,
    delay: Duration,
    piece_bytes: Option<usize>,
) -> Response {
    // (bytes, delay before sending them)
    let mut pieces: VecDeque<(Vec<u8>, Duration)> = VecDeque::new();
    for event in events {
        let mut first = true;
        let size = piece_bytes.unwrap_or(usize::MAX).max(1);
        for piece in event.chunks(size) {
            pieces.push_back((piece.to_vec(), if first { delay } else { Duration::ZERO }));
            first = false;
        }
    }
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let guard = EndGuard {
        shared,
        idx,
        finished: false,
    };
    let stream = futures::stream::unfold((pieces, guard), |(mut pieces, mut guard)| async move {
        match pieces.pop_front() {
            Some((bytes, delay)) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from(bytes)),
                    (pieces, guard),
                ))
            }
            None => {
                guard.mark_finished();
                None
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .expect("valid response")
}

fn sse(event: Option<&str>, data: &Value) -> Vec<u8> {
    let mut text = String::new();
    if let Some(event) = event {
        text.push_str(&format!("event: {event}\n"));
    }
    text.push_str(&format!("data: {data}\n\n"));
    text.into_bytes()
}

fn openai_events(chunks: &[String], input: u64, output: u64, model: &str) -> Vec<Vec<u8>> {
    let mut events = vec![sse(
        None,
        &json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
    )];
    for chunk in chunks {
        events.push(sse(
            None,
            &json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": chunk}, "finish_reason": null}]}),
        ));
    }
    events.push(sse(
        None,
        &json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ));
    events.push(sse(
        None,
        &json!({"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [],
                "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}}),
    ));
    events.push(b"data: [DONE]\n\n".to_vec());
    events
}

fn anthropic_events(chunks: &[String], input: u64, output: u64, model: &str) -> Vec<Vec<u8>> {
    let mut events = vec![
        sse(
            Some("message_start"),
            &json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                    "role": "assistant", "model": model, "content": [], "stop_reason": null,
                    "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        sse(Some("ping"), &json!({"type": "ping"})),
    ];
    for chunk in chunks {
        events.push(sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}}),
        ));
    }
    events.push(sse(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(sse(
        Some("message_delta"),
        &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": output}}),
    ));
    events.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    events
}

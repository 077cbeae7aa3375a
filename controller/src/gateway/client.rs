//! Stage: agent_link → gateway (resolve, budget) → **client** → provider.
//!
//! One HTTP client per configured provider. It sends a [`ResolvedRequest`]
//! as a streaming call (OpenAI-compatible Chat Completions or Anthropic
//! Messages, see `openai` and `anthropic`), feeds each text delta to a
//! callback as it arrives and returns the assembled [`Completion`].
//!
//! Every failure is classified into a [`ProviderError`]. Cancelling the token,
//! the timeout expiring or dropping the future drops the response body, which
//! closes the connection: the provider sees the client go away.
//!
//! The API key goes into exactly one header and nowhere else: errors carry the
//! provider's own message with any occurrence of the key replaced by
//! `[redacted]`, and the base URL cannot hold credentials (config validation).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::config::{ApiKey, ProviderConfig, ProviderKind, ResponseLimits};
use super::sse::{SseDecoder, SseEvent};
use super::{anthropic, openai};

/// Longest provider error message kept (characters).
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

/// Who said a message (the system prompt travels separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    User,
    Assistant,
}

impl ChatRole {
    /// The role's name in both provider protocols.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

/// Sampling parameters; `None` = the provider's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
}

impl Parameters {
    /// Set `temperature`, `top_p` and the stop list (named `stop_key`) on a
    /// request body; `max_tokens` differs per protocol and is left out.
    pub(crate) fn write_sampling(&self, body: &mut serde_json::Value, stop_key: &str) {
        if let Some(temperature) = self.temperature {
            body["temperature"] = serde_json::json!(temperature);
        }
        if let Some(top_p) = self.top_p {
            body["top_p"] = serde_json::json!(top_p);
        }
        if !self.stop.is_empty() {
            body[stop_key] = serde_json::json!(self.stop);
        }
    }
}

/// A model call ready to send: provider and model chosen, aliases resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolvedRequest {
    /// Name of the configured provider.
    pub provider: String,
    /// Model id at the provider (never an alias).
    pub model: String,
    pub system: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub parameters: Parameters,
    /// Bound on this call (the step's timeout); the provider's own
    /// `request_timeout_secs` applies too, whichever is shorter.
    pub timeout: Option<Duration>,
}

/// Token accounting of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A finished answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
    /// The model that answered, as the provider named it.
    pub model: String,
    pub finish_reason: Option<String>,
}

/// Why a provider call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("provider rate limited the request (http 429){}", retry_after_text(*.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    #[error("provider failed with http {status}")]
    Server { status: u16 },
    #[error("provider refused the request with http {status}: {message}")]
    Client { status: u16, message: String },
    #[error("provider reported an error mid-stream: {message}")]
    Stream { message: String },
    #[error("provider call timed out")]
    Timeout,
    #[error("provider unreachable: {detail}")]
    Unreachable { detail: String },
    #[error("provider answer is malformed: {detail}")]
    Malformed { detail: String },
    #[error("provider call cancelled")]
    Cancelled,
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(delay) => format!(", retry after {}s", delay.as_secs()),
        None => String::new(),
    }
}

impl ProviderError {
    /// Worth trying again: rate limiting and server-side failures.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. } | ProviderError::Server { .. }
        )
    }

    /// The wire code the agent receives for this failure.
    pub fn code(&self) -> protocol::ModelErrorCode {
        use protocol::ModelErrorCode;
        match self {
            ProviderError::RateLimited { .. } => ModelErrorCode::RateLimited,
            ProviderError::Timeout => ModelErrorCode::Timeout,
            ProviderError::Client {
                status: 400 | 413 | 422,
                ..
            } => ModelErrorCode::InvalidRequest,
            _ => ModelErrorCode::ProviderError,
        }
    }
}

/// Building a provider's HTTP client failed.
#[derive(Debug, thiserror::Error)]
#[error("build http client for provider `{provider}`: {source}")]
pub struct BuildClientError {
    pub provider: String,
    #[source]
    pub source: reqwest::Error,
}

/// What a protocol decoder says after an event.
pub(crate) enum Decoded {
    More,
    Finished,
}

/// Assembles the answer from a provider's stream events (one per protocol).
pub(crate) trait StreamDecoder {
    /// Handle one SSE event; text deltas go through `emit`.
    fn on_event(
        &mut self,
        event: &SseEvent,
        emit: &mut dyn FnMut(&str) -> Result<(), ProviderError>,
    ) -> Result<Decoded, ProviderError>;

    /// The stream ended (after `Finished`, or at end of body).
    fn finish(self: Box<Self>, saw_end: bool) -> Result<Completion, ProviderError>;
}

/// The HTTP client of one configured provider.
#[derive(Clone, Debug)]
pub struct ProviderClient {
    config: ProviderConfig,
    key: Option<ApiKey>,
    limits: ResponseLimits,
    http: reqwest::Client,
}

impl ProviderClient {
    pub fn new(
        config: ProviderConfig,
        key: Option<ApiKey>,
        limits: ResponseLimits,
    ) -> Result<ProviderClient, BuildClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout())
            // Never follow a redirect with the key to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            // Deterministic routing: the operator's base_url is where calls go.
            .no_proxy()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| BuildClientError {
                provider: config.name.clone(),
                source,
            })?;
        Ok(ProviderClient {
            config,
            key,
            limits,
            http,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// One streamed call. `on_chunk` sees each text delta in order.
    pub async fn stream(
        &self,
        request: &ResolvedRequest,
        cancel: &CancellationToken,
        on_chunk: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, ProviderError> {
        let limit = match request.timeout {
            Some(step_timeout) => step_timeout.min(self.config.request_timeout()),
            None => self.config.request_timeout(),
        };
        let work = tokio::time::timeout(limit, self.call(request, on_chunk));
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(ProviderError::Cancelled),
            result = work => result.unwrap_or(Err(ProviderError::Timeout)),
        }
    }

    async fn call(
        &self,
        request: &ResolvedRequest,
        on_chunk: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, ProviderError> {
        let base = self.config.base_url.trim_end_matches('/');
        let (url, body, mut decoder): (String, serde_json::Value, Box<dyn StreamDecoder + Send>) =
            match self.config.kind {
                ProviderKind::OpenAi => (
                    format!("{base}/chat/completions"),
                    openai::request_body(request),
                    Box::new(openai::Decoder::new(&request.model)),
                ),
                ProviderKind::Anthropic => (
                    format!("{base}/v1/messages"),
                    anthropic::request_body(request),
                    Box::new(anthropic::Decoder::new(&request.model)),
                ),
            };
        let body = serde_json::to_vec(&body).map_err(|err| ProviderError::Malformed {
            detail: format!("cannot encode request: {err}"),
        })?;
        let mut response = self
            .http
            .post(url)
            .headers(self.headers()?)
            .body(body)
            .send()
            .await
            .map_err(|err| self.classify_send_error(&err))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.error_from_response(response).await);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !content_type.starts_with("text/event-stream") {
            return Err(ProviderError::Malformed {
                detail: format!("expected text/event-stream, got `{content_type}`"),
            });
        }

        let mut sse = SseDecoder::new(self.limits.max_line_bytes, self.limits.max_event_bytes);
        let mut events = Vec::new();
        let mut answer_bytes = 0usize;
        let max_answer_bytes = self.limits.max_answer_bytes;
        let mut emit = |text: &str| -> Result<(), ProviderError> {
            answer_bytes += text.len();
            if answer_bytes > max_answer_bytes {
                return Err(ProviderError::Malformed {
                    detail: format!("answer longer than {max_answer_bytes} bytes"),
                });
            }
            on_chunk(text);
            Ok(())
        };
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|err| ProviderError::Unreachable {
                    detail: format!("stream interrupted: {}", self.describe(&err)),
                })?;
            let Some(bytes) = chunk else {
                return decoder.finish(false);
            };
            sse.push(&bytes, &mut events)
                .map_err(|err| ProviderError::Malformed {
                    detail: err.to_string(),
                })?;
            for event in events.drain(..) {
                if let Decoded::Finished = decoder.on_event(&event, &mut emit)? {
                    return decoder.finish(true);
                }
            }
        }
    }

    fn headers(&self) -> Result<HeaderMap, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let invalid_key = || ProviderError::Malformed {
            detail: "api key is not a valid header value".to_string(),
        };
        match self.config.kind {
            ProviderKind::OpenAi => {
                if let Some(key) = &self.key {
                    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                        .map_err(|_| invalid_key())?;
                    value.set_sensitive(true);
                    headers.insert(reqwest::header::AUTHORIZATION, value);
                }
            }
            ProviderKind::Anthropic => {
                headers.insert(
                    "anthropic-version",
                    HeaderValue::from_static(anthropic::API_VERSION),
                );
                if let Some(key) = &self.key {
                    let mut value =
                        HeaderValue::from_str(key.expose()).map_err(|_| invalid_key())?;
                    value.set_sensitive(true);
                    headers.insert("x-api-key", value);
                }
            }
        }
        Ok(headers)
    }

    fn classify_send_error(&self, err: &reqwest::Error) -> ProviderError {
        if err.is_connect() {
            let detail = if err.is_timeout() {
                "connect timed out".to_string()
            } else {
                self.describe(err)
            };
            return ProviderError::Unreachable { detail };
        }
        if err.is_timeout() {
            return ProviderError::Timeout;
        }
        ProviderError::Unreachable {
            detail: self.describe(err),
        }
    }

    async fn error_from_response(&self, mut response: reqwest::Response) -> ProviderError {
        let status = response.status().as_u16();
        if status == 429 {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, std::time::SystemTime::now()));
            return ProviderError::RateLimited { retry_after };
        }
        if status >= 500 {
            return ProviderError::Server { status };
        }
        // Read a bounded prefix of the error body for the message.
        let mut body = Vec::new();
        while body.len() < self.limits.max_error_body_bytes {
            match response.chunk().await {
                Ok(Some(bytes)) => body.extend_from_slice(&bytes),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(self.limits.max_error_body_bytes);
        let text = String::from_utf8_lossy(&body);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|value| {
                value
                    .pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.trim().to_string());
        let message: String = message.chars().take(MAX_ERROR_MESSAGE_CHARS).collect();
        ProviderError::Client {
            status,
            message: self.redact(&message),
        }
    }

    /// Replace any occurrence of the key (a provider may echo it back).
    /// A transport error's chain, without the provider's URL (the message
    /// reaches the agent, and no provider URL may be inside a sandbox) and
    /// without the key.
    fn describe(&self, err: &reqwest::Error) -> String {
        let mut text = error_chain(err);
        if let Some(url) = err.url() {
            text = text.replace(url.as_str(), "[provider url]");
        }
        let base_url = self.config.base_url.trim_end_matches('/');
        if !base_url.is_empty() {
            text = text.replace(base_url, "[provider url]");
        }
        self.redact(&text)
    }

    fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(key) if !key.expose().is_empty() => text.replace(key.expose(), "[redacted]"),
            _ => text.to_string(),
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP date (relative to `now`; a
/// date in the past means "now").
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Parse one event's JSON, classifying failure as malformed.
pub(crate) fn parse_event_json(event: &SseEvent) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_str(&event.data).map_err(|err| ProviderError::Malformed {
        detail: format!("event data is not json: {err}"),
    })
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;

//! Anthropic Messages, streamed: the request body and the decoder of its SSE
//! answer (`{base_url}/v1/messages`, headers `x-api-key` and
//! `anthropic-version`).
//!
//! Events: `message_start` (model, input tokens), `content_block_start`,
//! `content_block_delta` with `text_delta` pieces, `content_block_stop`,
//! `message_delta` (stop reason, output tokens), `message_stop`; `ping` is
//! ignored; `error` is a mid-stream failure (`overloaded_error` counts as a
//! server failure, `rate_limit_error` as rate limiting).

use serde_json::{Value, json};

use super::client::{
    Completion, Decoded, ProviderError, ResolvedRequest, StreamDecoder, Usage, parse_event_json,
};
use super::sse::SseEvent;

/// The `anthropic-version` header sent with every call.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` is required by the Messages API; used when nothing set it.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The JSON body of a streamed Messages call.
pub fn request_body(request: &ResolvedRequest) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|message| json!({"role": message.role.as_str(), "content": message.content}))
        .collect();
    let params = &request.parameters;
    let mut body = json!({
        "model": request.model,
        "max_tokens": params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
        "stream": true,
    });
    if let Some(system) = &request.system {
        body["system"] = json!(system);
    }
    params.write_sampling(&mut body, "stop_sequences");
    body
}

/// Assembles a Messages stream.
#[derive(Debug)]
pub(crate) struct Decoder {
    text: String,
    model: String,
    started: bool,
    stop_reason: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl Decoder {
    pub(crate) fn new(requested_model: &str) -> Decoder {
        Decoder {
            text: String::new(),
            model: requested_model.to_string(),
            started: false,
            stop_reason: None,
            input_tokens: None,
            output_tokens: None,
        }
    }

    fn take_usage(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage else { return };
        // Prompt caching bills cache writes and reads as input too; a budget
        // on input tokens counts all of them.
        if let Some(input) = usage.get("input_tokens").and_then(Value::as_u64) {
            let cached: u64 = ["cache_creation_input_tokens", "cache_read_input_tokens"]
                .iter()
                .filter_map(|key| usage.get(*key).and_then(Value::as_u64))
                .fold(0, u64::saturating_add);
            self.input_tokens = Some(input.saturating_add(cached));
        }
        if let Some(output) = usage.get("output_tokens").and_then(Value::as_u64) {
            self.output_tokens = Some(output);
        }
    }
}

fn malformed(detail: &str) -> ProviderError {
    ProviderError::Malformed {
        detail: detail.to_string(),
    }
}

impl StreamDecoder for Decoder {
    fn on_event(
        &mut self,
        event: &SseEvent,
        emit: &mut dyn FnMut(&str) -> Result<(), ProviderError>,
    ) -> Result<Decoded, ProviderError> {
        let data = parse_event_json(event)?;
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("");
        if let Some(name) = &event.event
            && name != kind
        {
            return Err(ProviderError::Malformed {
                detail: format!("event `{name}` carries data of type `{kind}`"),
            });
        }
        match kind {
            "message_start" => {
                let message = data
                    .get("message")
                    .ok_or_else(|| malformed("message_start without `message`"))?;
                if let Some(model) = message.get("model").and_then(Value::as_str) {
                    self.model = model.to_string();
                }
                self.take_usage(message.get("usage"));
                self.started = true;
            }
            "content_block_delta" => {
                if !self.started {
                    return Err(malformed("content before message_start"));
                }
                let delta = data
                    .get("delta")
                    .ok_or_else(|| malformed("content_block_delta without `delta`"))?;
                if delta.get("type").and_then(Value::as_str) == Some("text_delta") {
                    let text = delta
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| malformed("text_delta without a string `text`"))?;
                    if !text.is_empty() {
                        emit(text)?;
                        self.text.push_str(text);
                    }
                }
            }
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_string());
                }
                self.take_usage(data.get("usage"));
            }
            "message_stop" => return Ok(Decoded::Finished),
            "content_block_start" | "content_block_stop" | "ping" => {}
            "error" => {
                let error_type = data.pointer("/error/type").and_then(Value::as_str);
                let message = data
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(match error_type {
                    Some("overloaded_error") => ProviderError::Server { status: 529 },
                    Some("api_error") => ProviderError::Server { status: 500 },
                    Some("rate_limit_error") => ProviderError::RateLimited { retry_after: None },
                    _ => ProviderError::Stream {
                        message: message.chars().take(500).collect(),
                    },
                });
            }
            // New event types are allowed by the API's versioning policy.
            _ => {}
        }
        Ok(Decoded::More)
    }

    fn finish(self: Box<Self>, saw_end: bool) -> Result<Completion, ProviderError> {
        if !saw_end {
            return Err(malformed("stream ended before message_stop"));
        }
        let (Some(input_tokens), Some(output_tokens)) = (self.input_tokens, self.output_tokens)
        else {
            return Err(malformed("stream reported no usage"));
        };
        Ok(Completion {
            text: self.text,
            usage: Usage {
                input_tokens,
                output_tokens,
            },
            model: self.model,
            finish_reason: self.stop_reason,
        })
    }
}

#[cfg(test)]
#[path = "anthropic_tests.rs"]
mod tests;

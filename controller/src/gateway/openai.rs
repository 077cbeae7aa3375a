//! OpenAI-compatible Chat Completions, streamed: the request body and the
//! decoder of its SSE answer. Covers OpenAI, Azure OpenAI, vLLM, llama.cpp
//! server and Ollama (`{base_url}/chat/completions`).
//!
//! The stream is `data: {chunk}` events whose `choices[0].delta.content`
//! carries text, `choices[0].finish_reason` the reason, and (thanks to
//! `stream_options.include_usage`) a last chunk with `usage` and no choices;
//! `data: [DONE]` ends it. A chunk with an `error` object is a mid-stream
//! failure. Servers that ignore `include_usage` report no usage: the call
//! then fails as malformed, because budgets need exact figures.

use serde_json::{Value, json};

use super::client::{
    Completion, Decoded, ProviderError, ResolvedRequest, StreamDecoder, Usage, parse_event_json,
};
use super::sse::SseEvent;

/// The JSON body of a streamed Chat Completions call.
pub fn request_body(request: &ResolvedRequest) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        messages.push(json!({"role": message.role.as_str(), "content": message.content}));
    }
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let params = &request.parameters;
    params.write_sampling(&mut body, "stop");
    if let Some(max_tokens) = params.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

/// Assembles a Chat Completions stream.
#[derive(Debug)]
pub(crate) struct Decoder {
    text: String,
    model: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Decoder {
    pub(crate) fn new(requested_model: &str) -> Decoder {
        Decoder {
            text: String::new(),
            model: requested_model.to_string(),
            finish_reason: None,
            usage: None,
        }
    }
}

impl StreamDecoder for Decoder {
    fn on_event(
        &mut self,
        event: &SseEvent,
        emit: &mut dyn FnMut(&str) -> Result<(), ProviderError>,
    ) -> Result<Decoded, ProviderError> {
        if event.data.trim() == "[DONE]" {
            return Ok(Decoded::Finished);
        }
        let chunk = parse_event_json(event)?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            return Err(ProviderError::Stream {
                message: message.chars().take(500).collect(),
            });
        }
        if let Some(model) = chunk.get("model").and_then(Value::as_str)
            && !model.is_empty()
        {
            self.model = model.to_string();
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            let input = usage.get("prompt_tokens").and_then(Value::as_u64);
            let output = usage.get("completion_tokens").and_then(Value::as_u64);
            match (input, output) {
                (Some(input_tokens), Some(output_tokens)) => {
                    self.usage = Some(Usage {
                        input_tokens,
                        output_tokens,
                    });
                }
                _ => {
                    return Err(ProviderError::Malformed {
                        detail: "usage without prompt_tokens/completion_tokens".to_string(),
                    });
                }
            }
        }
        let choices = match chunk.get("choices") {
            Some(Value::Array(choices)) => choices.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => {
                return Err(ProviderError::Malformed {
                    detail: "`choices` is not a list".to_string(),
                });
            }
        };
        // Only the first choice is asked for (no `n`), so only index 0 counts.
        for choice in choices {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            if let Some(content) = choice.pointer("/delta/content") {
                match content {
                    Value::String(text) if !text.is_empty() => {
                        emit(text)?;
                        self.text.push_str(text);
                    }
                    Value::String(_) | Value::Null => {}
                    _ => {
                        return Err(ProviderError::Malformed {
                            detail: "`delta.content` is not a string".to_string(),
                        });
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_string());
            }
        }
        Ok(Decoded::More)
    }

    fn finish(self: Box<Self>, saw_end: bool) -> Result<Completion, ProviderError> {
        if !saw_end {
            return Err(ProviderError::Malformed {
                detail: "stream ended before `data: [DONE]`".to_string(),
            });
        }
        let Some(usage) = self.usage else {
            return Err(ProviderError::Malformed {
                detail: "stream reported no usage (is stream_options.include_usage supported?)"
                    .to_string(),
            });
        };
        Ok(Completion {
            text: self.text,
            usage,
            model: self.model,
            finish_reason: self.finish_reason,
        })
    }
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;

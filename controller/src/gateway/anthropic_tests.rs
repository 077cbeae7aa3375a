//! Unit tests of the Anthropic stream decoder.

#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::gateway::client::{ChatMessage, ChatRole, Parameters};

fn event(name: &str, data: serde_json::Value) -> SseEvent {
    SseEvent {
        event: Some(name.to_string()),
        data: data.to_string(),
    }
}

fn run(events: &[SseEvent]) -> (Result<Completion, ProviderError>, Vec<String>) {
    let mut decoder = Box::new(Decoder::new("requested"));
    let mut chunks = Vec::new();
    let mut emit = |text: &str| -> Result<(), ProviderError> {
        chunks.push(text.to_string());
        Ok(())
    };
    for event in events {
        match decoder.on_event(event, &mut emit) {
            Ok(Decoded::More) => {}
            Ok(Decoded::Finished) => return (decoder.finish(true), chunks),
            Err(err) => return (Err(err), chunks),
        }
    }
    (decoder.finish(false), chunks)
}

#[test]
fn cached_input_counts_and_unknown_events_are_ignored() {
    let (result, chunks) = run(&[
        event(
            "message_start",
            json!({"type": "message_start", "message": {"model": "claude-x",
                   "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100,
                             "cache_read_input_tokens": 1000, "output_tokens": 1}}}),
        ),
        event("future_event", json!({"type": "future_event"})),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "input_json_delta", "partial_json": "{"}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "hi"}}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                   "usage": {"output_tokens": 7}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]);
    assert_eq!(
        result.unwrap(),
        Completion {
            text: "hi".into(),
            usage: Usage {
                input_tokens: 1110,
                output_tokens: 7
            },
            model: "claude-x".into(),
            finish_reason: Some("max_tokens".into()),
        }
    );
    assert_eq!(chunks, vec!["hi"]);
}

#[test]
fn stream_errors_are_classified() {
    let cases = [
        ("overloaded_error", ProviderError::Server { status: 529 }),
        ("api_error", ProviderError::Server { status: 500 }),
        (
            "rate_limit_error",
            ProviderError::RateLimited { retry_after: None },
        ),
        (
            "invalid_request_error",
            ProviderError::Stream {
                message: "bad".into(),
            },
        ),
    ];
    for (kind, expected) in cases {
        let (result, _) = run(&[event(
            "error",
            json!({"type": "error", "error": {"type": kind, "message": "bad"}}),
        )]);
        assert_eq!(result.unwrap_err(), expected, "{kind}");
    }
}

#[test]
fn body_defaults_max_tokens_and_names_stop_sequences() {
    let request = ResolvedRequest {
        provider: "a".into(),
        model: "m".into(),
        system: None,
        messages: vec![ChatMessage {
            role: ChatRole::Assistant,
            content: "x".into(),
        }],
        parameters: Parameters {
            stop: vec!["END".into()],
            top_p: Some(0.5),
            ..Parameters::default()
        },
        timeout: None,
    };
    assert_eq!(
        request_body(&request),
        json!({"model": "m", "max_tokens": 4096, "stream": true, "top_p": 0.5,
               "messages": [{"role": "assistant", "content": "x"}], "stop_sequences": ["END"]})
    );
}

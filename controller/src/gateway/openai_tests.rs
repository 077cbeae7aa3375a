//! Unit tests of the Chat Completions stream decoder.

#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn data(value: serde_json::Value) -> SseEvent {
    SseEvent {
        event: None,
        data: value.to_string(),
    }
}

#[test]
fn only_the_first_choice_counts_and_usage_may_come_last() {
    let mut decoder = Box::new(Decoder::new("requested"));
    let mut chunks = Vec::new();
    let mut emit = |text: &str| -> Result<(), ProviderError> {
        chunks.push(text.to_string());
        Ok(())
    };
    let events = [
        data(json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": null}}]})),
        data(
            json!({"choices": [{"index": 1, "delta": {"content": "other"}},
                                {"index": 0, "delta": {"content": "a", "reasoning_content": "hmm"}}]}),
        ),
        data(
            json!({"model": "m-2024", "choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": "length"}]}),
        ),
        data(json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})),
    ];
    for event in &events {
        assert!(matches!(
            decoder.on_event(event, &mut emit).unwrap(),
            Decoded::More
        ));
    }
    let done = SseEvent {
        event: None,
        data: "[DONE]".into(),
    };
    assert!(matches!(
        decoder.on_event(&done, &mut emit).unwrap(),
        Decoded::Finished
    ));
    assert_eq!(
        decoder.finish(true).unwrap(),
        Completion {
            text: "ab".into(),
            usage: Usage {
                input_tokens: 3,
                output_tokens: 2
            },
            model: "m-2024".into(),
            finish_reason: Some("length".into()),
        }
    );
    assert_eq!(chunks, vec!["a", "b"]);
}

#[test]
fn bad_chunks_are_malformed() {
    let cases = [
        (
            json!({"choices": [{"delta": {"content": 5}}]}),
            "`delta.content` is not a string",
        ),
        (
            json!({"usage": {"prompt_tokens": 1}}),
            "usage without prompt_tokens/completion_tokens",
        ),
    ];
    for (value, needle) in cases {
        let mut decoder = Decoder::new("m");
        let err = decoder
            .on_event(&data(value), &mut |_: &str| Ok(()))
            .err()
            .unwrap();
        assert_eq!(
            err,
            ProviderError::Malformed {
                detail: needle.into()
            }
        );
    }
}

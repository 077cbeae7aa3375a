//! Unit tests of the SSE decoder.

#![allow(clippy::unwrap_used)]

use super::*;

fn ev(event: Option<&str>, data: &str) -> SseEvent {
    SseEvent {
        event: event.map(str::to_string),
        data: data.to_string(),
    }
}

fn decode_all(input: &[u8], split_every: usize) -> Result<Vec<SseEvent>, SseError> {
    let mut decoder = SseDecoder::new(64, 128);
    let mut out = Vec::new();
    for piece in input.chunks(split_every.max(1)) {
        decoder.push(piece, &mut out)?;
    }
    Ok(out)
}

#[test]
fn events_decode_the_same_at_every_split() {
    let cases: Vec<(&str, Vec<SseEvent>)> = vec![
        ("data: a\n\n", vec![ev(None, "a")]),
        ("data:a\r\n\r\n", vec![ev(None, "a")]),
        ("data: a\ndata: b\n\n", vec![ev(None, "a\nb")]),
        ("event: x\ndata: {}\n\n", vec![ev(Some("x"), "{}")]),
        (
            ": comment\nid: 4\nretry: 10\ndata: z\n\n",
            vec![ev(None, "z")],
        ),
        ("data\n\n", vec![ev(None, "")]),
        ("event: ping\n\n", vec![]),
        ("data: a\n\ndata: b\n\n", vec![ev(None, "a"), ev(None, "b")]),
        ("data: unfinished\n", vec![]),
        ("data:  two spaces\n\n", vec![ev(None, " two spaces")]),
        ("data: é ü\n\n", vec![ev(None, "é ü")]),
    ];
    for (input, expected) in cases {
        for split in 1..=input.len() {
            assert_eq!(
                decode_all(input.as_bytes(), split).unwrap(),
                expected,
                "{input:?} split {split}"
            );
        }
    }
}

#[test]
fn bounds_and_encoding_are_enforced() {
    let long_line = format!("data: {}\n\n", "x".repeat(64));
    assert_eq!(
        decode_all(long_line.as_bytes(), 7).unwrap_err(),
        SseError::LineTooLong { max_bytes: 64 }
    );
    // A line that never ends is still bounded.
    assert_eq!(
        decode_all("x".repeat(1000).as_bytes(), 10).unwrap_err(),
        SseError::LineTooLong { max_bytes: 64 }
    );
    let big_event = "data: 0123456789012345678901234567890123456789\n".repeat(4);
    assert_eq!(
        decode_all(big_event.as_bytes(), 5).unwrap_err(),
        SseError::EventTooLarge { max_bytes: 128 }
    );
    assert_eq!(
        decode_all(b"data: \xff\xfe\n\n", 3).unwrap_err(),
        SseError::NotUtf8
    );
}

//! Chunking and caps, case by case.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn complete_lines_flush_at_once_and_partial_lines_wait() {
    let mut chunker = Chunker::new();
    assert_eq!(chunker.push(b"one\ntwo\nthr"), ["one\ntwo\n"]);
    assert!(chunker.has_pending());
    assert_eq!(chunker.push(b"ee"), Vec::<String>::new());
    assert_eq!(chunker.flush().as_deref(), Some("three"));
    assert_eq!(chunker.flush(), None);
    assert_eq!(chunker.finish(), None);
}

#[test]
fn a_line_without_newline_is_cut_into_bounded_chunks() {
    let mut chunker = Chunker::new();
    let flood = vec![b'a'; MAX_OUTPUT_CHUNK_BYTES * 2 + 10];
    let chunks = chunker.push(&flood);
    assert_eq!(chunks.len(), 2);
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk.len() == MAX_OUTPUT_CHUNK_BYTES)
    );
    assert_eq!(chunker.finish().unwrap().len(), 10);
}

#[test]
fn full_chunks_prefer_to_end_at_a_newline() {
    let mut chunker = Chunker::new();
    let mut bytes = vec![b'x'; 100];
    bytes.push(b'\n');
    bytes.extend(vec![b'y'; MAX_OUTPUT_CHUNK_BYTES + 100]);
    let chunks = chunker.push(&bytes);
    assert_eq!(chunks[0].len(), 101);
    assert_eq!(chunks[1].len(), MAX_OUTPUT_CHUNK_BYTES);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunker.finish().unwrap().len(), 100);
}

#[test]
fn utf8_sequences_are_never_split() {
    let snowman = "☃".as_bytes(); // 3 bytes
    let mut chunker = Chunker::new();
    assert_eq!(chunker.push(&snowman[..2]), Vec::<String>::new());
    assert_eq!(chunker.flush(), None);
    assert_eq!(chunker.push(&snowman[2..]), Vec::<String>::new());
    assert_eq!(chunker.flush().as_deref(), Some("☃"));
    // A chunk boundary falling inside a sequence moves before it.
    let mut bytes = vec![b'a'; MAX_OUTPUT_CHUNK_BYTES - 1];
    bytes.extend_from_slice(snowman);
    let chunks = chunker.push(&bytes);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].len(), MAX_OUTPUT_CHUNK_BYTES - 1);
    assert_eq!(chunker.finish().as_deref(), Some("☃"));
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    let mut chunker = Chunker::new();
    assert_eq!(chunker.push(b"a\xffb\n"), ["a\u{fffd}b\n"]);
    assert_eq!(utf8_cut(b"ab\xff"), 3);
    assert_eq!(utf8_cut(b"ab\xe2\x98"), 2);
    assert_eq!(utf8_cut(b"ab\xe2\x98\x83"), 5);
    assert_eq!(utf8_cut(b""), 0);
}

#[test]
fn step_cap_truncates_exactly_once() {
    let execution = Arc::new(AtomicU64::new(1_000));
    let mut budget = OutputBudget::new(10, execution.clone(), 1_000);
    assert_eq!(
        budget.admit(6),
        Admission {
            n_allowed: 6,
            truncated_at: None
        }
    );
    assert_eq!(
        budget.admit(6),
        Admission {
            n_allowed: 4,
            truncated_at: Some(10)
        }
    );
    assert!(budget.is_truncated());
    assert_eq!(
        budget.admit(6),
        Admission {
            n_allowed: 0,
            truncated_at: None
        }
    );
    assert_eq!(execution.load(Ordering::SeqCst), 990);
}

#[test]
fn exact_fit_is_not_truncation() {
    let execution = Arc::new(AtomicU64::new(100));
    let mut budget = OutputBudget::new(5, execution, 100);
    assert_eq!(budget.admit(5).truncated_at, None);
    assert_eq!(budget.admit(1).truncated_at, Some(5));
}

#[test]
fn execution_cap_is_shared_between_streams() {
    let execution = Arc::new(AtomicU64::new(8));
    let mut stdout = OutputBudget::new(100, execution.clone(), 8);
    let mut stderr = OutputBudget::new(100, execution.clone(), 8);
    assert_eq!(stdout.admit(5).n_allowed, 5);
    assert_eq!(
        stderr.admit(5),
        Admission {
            n_allowed: 3,
            truncated_at: Some(8)
        }
    );
    assert_eq!(
        stdout.admit(1),
        Admission {
            n_allowed: 0,
            truncated_at: Some(8)
        }
    );
}

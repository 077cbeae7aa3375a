//! Unit tests of live token batching.

use std::time::{Duration, Instant};

use super::*;

#[test]
fn batches_by_size_time_and_end() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut batcher = ChunkBatcher::new(5, 8, Duration::from_millis(100));
    // The first text goes out at once: the watcher sees the model start.
    assert_eq!(batcher.push("0", at(0)), vec!["0"]);
    assert_eq!(batcher.next_deadline(), None);
    assert_eq!(batcher.push("ab", at(0)), Vec::<String>::new());
    assert_eq!(batcher.next_deadline(), Some(at(100)));
    assert_eq!(batcher.push("cd", at(10)), Vec::<String>::new());
    assert_eq!(batcher.push("e", at(20)), vec!["abcde"]);
    assert_eq!(batcher.next_deadline(), None);
    assert_eq!(batcher.push("f", at(30)), Vec::<String>::new());
    assert_eq!(batcher.flush_due(at(129)), Vec::<String>::new());
    assert_eq!(batcher.flush_due(at(130)), vec!["f"]);
    assert_eq!(batcher.push("g", at(200)), Vec::<String>::new());
    // Late text flushes with what waited.
    assert_eq!(batcher.push("h", at(400)), vec!["gh"]);
    assert_eq!(batcher.push("ij", at(401)), Vec::<String>::new());
    assert_eq!(batcher.finish(), Some("ij".to_string()));
    assert_eq!(batcher.finish(), None);
}

#[test]
fn oversized_text_splits_on_char_boundaries() {
    let now = Instant::now();
    // A batcher past its first text (which goes out at once).
    let started = |min_bytes, max_bytes| {
        let mut batcher = ChunkBatcher::new(min_bytes, max_bytes, Duration::from_secs(1));
        assert_eq!(batcher.push("0", now), vec!["0"]);
        batcher
    };
    let mut batcher = started(100, 8);
    // "é" is 2 bytes: 5 of them = 10 bytes, cut at 8.
    assert_eq!(batcher.push("ééééé", now), vec!["éééé"]);
    assert_eq!(batcher.finish(), Some("é".to_string()));
    let mut batcher = started(100, 4);
    // 7 bytes, cut at 4 ("a€"); the last "€" (3 bytes) waits.
    assert_eq!(batcher.push("a€€", now), vec!["a€"]);
    assert_eq!(batcher.finish(), Some("€".to_string()));
    let joined: String = ["x".repeat(9), "y".repeat(3)].concat();
    let mut batcher = started(1, 4);
    assert_eq!(batcher.push(&joined, now), vec!["xxxx", "xxxx", "xyyy"]);
    // A first text over max_bytes is split too, and all of it goes out.
    let mut batcher = ChunkBatcher::new(100, 4, Duration::from_secs(1));
    assert_eq!(batcher.push("abcdef", now), vec!["abcd", "ef"]);
}

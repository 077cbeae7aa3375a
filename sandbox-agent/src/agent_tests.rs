//! Pure helpers of the run.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn iso_dates() {
    assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(iso_utc(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(iso_utc(1_763_861_045), "2025-11-23T01:24:05Z");
}

#[test]
fn reasons_are_bounded_at_char_boundaries() {
    let text = "é".repeat(MAX_REASON_BYTES);
    let cut = bounded(text);
    assert!(cut.len() <= MAX_REASON_BYTES);
    assert!(cut.ends_with("..."));
    assert_eq!(bounded("short".to_string()), "short");
}

#[test]
fn tokens_are_read_trimmed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "abc123\n").unwrap();
    assert_eq!(read_token(&path).unwrap(), "abc123");
    std::fs::write(&path, "\n").unwrap();
    assert!(read_token(&path).is_err());
    std::fs::write(&path, "a\u{1}b").unwrap();
    assert!(read_token(&path).is_err());
    std::fs::write(&path, b"\xff").unwrap();
    assert!(read_token(&path).is_err());
    assert!(read_token(&dir.path().join("missing")).is_err());
}

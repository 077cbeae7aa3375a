//! Output chunking and output caps for step processes.
//!
//! A step's stdout and stderr are read as raw bytes and turned into bounded
//! text chunks for `step_output` events. Pure: the caller owns the pipes and
//! the 50 ms flush timer.
//!
//! - A chunk is at most [`protocol::MAX_OUTPUT_CHUNK_BYTES`] bytes of text.
//! - Complete lines are flushed as soon as they arrive (everything up to the
//!   last newline of what was read); a partial line waits for more bytes or
//!   for the caller's flush timer, so a line without a newline (catalogue
//!   case 7) is still chunked and streamed.
//! - Chunks never split a UTF-8 sequence; invalid bytes become U+FFFD.
//!
//! [`OutputBudget`] enforces the per-stream step cap and the per-execution cap
//! shared by every stream of every step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::MAX_OUTPUT_CHUNK_BYTES;

/// Turns a byte stream into bounded text chunks.
#[derive(Debug, Default)]
pub struct Chunker {
    pending: Vec<u8>,
}

impl Chunker {
    pub fn new() -> Chunker {
        Chunker::default()
    }

    /// True when bytes wait for a newline or the flush timer.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Adds bytes; returns the chunks that are ready (full chunks, and all
    /// complete lines).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut chunks = Vec::new();
        while self.pending.len() >= MAX_OUTPUT_CHUNK_BYTES {
            let window = &self.pending[..MAX_OUTPUT_CHUNK_BYTES];
            let cut = match window.iter().rposition(|&b| b == b'\n') {
                Some(newline_idx) => newline_idx + 1,
                None => utf8_cut(window),
            };
            chunks.push(self.take(cut));
        }
        if let Some(newline_idx) = self.pending.iter().rposition(|&b| b == b'\n') {
            chunks.push(self.take(newline_idx + 1));
        }
        chunks
    }

    /// Flushes a partial line (the flush timer fired). Keeps an incomplete
    /// UTF-8 sequence at the end for the next bytes.
    pub fn flush(&mut self) -> Option<String> {
        let cut = utf8_cut(&self.pending);
        if cut == 0 {
            return None;
        }
        Some(self.take(cut))
    }

    /// Flushes everything (end of stream or truncation).
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let n_bytes = self.pending.len();
        Some(self.take(n_bytes))
    }

    fn take(&mut self, n_bytes: usize) -> String {
        let rest = self.pending.split_off(n_bytes);
        let head = std::mem::replace(&mut self.pending, rest);
        String::from_utf8_lossy(&head).into_owned()
    }
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 sequence
/// (at most 3 bytes are held back). When the tail is invalid anyway, or the
/// whole window would be held back, it cuts at the end.
fn utf8_cut(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=3.min(len) {
        let byte = bytes[len - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let sequence_len = match byte {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return len,
        };
        return if sequence_len > back { len - back } else { len };
    }
    len
}

/// Bytes a stream may still forward: the step's per-stream cap, and the
/// execution's cap shared by all streams.
#[derive(Debug)]
pub struct OutputBudget {
    step_limit: u64,
    step_used: u64,
    execution_remaining: Arc<AtomicU64>,
    execution_limit: u64,
    is_truncated: bool,
}

/// Result of offering bytes to an [`OutputBudget`].
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// How many of the offered bytes may be forwarded.
    pub n_allowed: usize,
    /// Set exactly once, on the first refusal: the limit that was hit.
    pub truncated_at: Option<u64>,
}

impl OutputBudget {
    pub fn new(
        step_limit: u64,
        execution_remaining: Arc<AtomicU64>,
        execution_limit: u64,
    ) -> OutputBudget {
        OutputBudget {
            step_limit,
            step_used: 0,
            execution_remaining,
            execution_limit,
            is_truncated: false,
        }
    }

    pub fn is_truncated(&self) -> bool {
        self.is_truncated
    }

    /// Offers `n_bytes`; once truncated, nothing more is allowed.
    pub fn admit(&mut self, n_bytes: usize) -> Admission {
        if self.is_truncated {
            return Admission {
                n_allowed: 0,
                truncated_at: None,
            };
        }
        let wanted = n_bytes as u64;
        let step_left = self.step_limit - self.step_used;
        let mut granted_by_execution = 0u64;
        let _ = self.execution_remaining.fetch_update(
            Ordering::SeqCst,
            Ordering::SeqCst,
            |remaining| {
                granted_by_execution = remaining.min(wanted).min(step_left);
                Some(remaining - granted_by_execution)
            },
        );
        self.step_used += granted_by_execution;
        if granted_by_execution == wanted {
            return Admission {
                n_allowed: n_bytes,
                truncated_at: None,
            };
        }
        self.is_truncated = true;
        let limit = if step_left <= granted_by_execution {
            self.step_limit
        } else {
            self.execution_limit
        };
        Admission {
            n_allowed: granted_by_execution as usize,
            truncated_at: Some(limit),
        }
    }
}

#[cfg(test)]
#[path = "chunker_tests.rs"]
mod tests;

//! Live tokens: streamed model text batched into watcher events, so people
//! see the model think without one event per token. Pure: the caller passes
//! the clock and runs the timer (`next_deadline`).
//!
//! The first text of an answer goes out at once, so a watcher sees the model
//! start as soon as the provider does. After that a batch is flushed when it
//! reaches `min_bytes`, when the oldest pending text is `max_delay` old, or
//! at the end. No batch exceeds `max_bytes` (events are bounded); long text
//! is split on character boundaries.

use std::time::{Duration, Instant};

/// Batches streamed text.
#[derive(Clone, Debug)]
pub struct ChunkBatcher {
    min_bytes: usize,
    max_bytes: usize,
    max_delay: Duration,
    pending: String,
    pending_since: Option<Instant>,
    /// Some text went out already (the first goes out at once).
    has_flushed: bool,
}

impl ChunkBatcher {
    /// `max_bytes` is raised to at least 4 (one UTF-8 character always fits).
    pub fn new(min_bytes: usize, max_bytes: usize, max_delay: Duration) -> ChunkBatcher {
        ChunkBatcher {
            min_bytes,
            max_bytes: max_bytes.max(4),
            max_delay,
            pending: String::new(),
            pending_since: None,
            has_flushed: false,
        }
    }

    /// Add text; returns the batches that are ready, in order.
    pub fn push(&mut self, text: &str, now: Instant) -> Vec<String> {
        if text.is_empty() {
            return self.flush_due(now);
        }
        if self.pending.is_empty() {
            self.pending_since = Some(now);
        }
        self.pending.push_str(text);
        let mut ready = self.split_oversized();
        if !self.has_flushed || self.pending.len() >= self.min_bytes || self.is_due(now) {
            ready.extend(self.take());
        }
        ready
    }

    /// The pending text if it has waited `max_delay` (call at `next_deadline`).
    pub fn flush_due(&mut self, now: Instant) -> Vec<String> {
        if self.is_due(now) {
            self.take().into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// Whatever is pending (end of the answer).
    pub fn finish(&mut self) -> Option<String> {
        self.take()
    }

    /// When the pending text must be flushed, if any is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|since| since + self.max_delay)
    }

    fn is_due(&self, now: Instant) -> bool {
        self.next_deadline().is_some_and(|deadline| now >= deadline)
    }

    fn take(&mut self) -> Option<String> {
        self.pending_since = None;
        if self.pending.is_empty() {
            None
        } else {
            self.has_flushed = true;
            Some(std::mem::take(&mut self.pending))
        }
    }

    fn split_oversized(&mut self) -> Vec<String> {
        let mut ready = Vec::new();
        while self.pending.len() > self.max_bytes {
            let mut cut = self.max_bytes;
            while !self.pending.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = self.pending.split_off(cut);
            ready.push(std::mem::replace(&mut self.pending, rest));
        }
        ready
    }
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;

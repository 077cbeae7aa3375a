//! A small Server-Sent Events decoder for provider streams.
//!
//! Provider output is untrusted input: lines and events are bounded, bytes
//! must be UTF-8, and exceeding a bound is an error rather than a larger
//! buffer. Only what the two provider protocols use is kept: `event:` and
//! `data:` fields (several `data:` lines join with `\n`); `id:`, `retry:` and
//! comment lines are ignored. Lines end with `\n` or `\r\n`. An event is
//! dispatched at a blank line; an unfinished event at the end of the stream is
//! dropped, as the SSE specification says.

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `None` means the default type `message`.
    pub event: Option<String>,
    pub data: String,
}

/// The stream broke a bound or was not text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("sse line longer than {max_bytes} bytes")]
    LineTooLong { max_bytes: usize },
    #[error("sse event larger than {max_bytes} bytes")]
    EventTooLarge { max_bytes: usize },
    #[error("sse stream is not valid utf-8")]
    NotUtf8,
}

/// Incremental decoder: feed bytes as they arrive, take events out.
#[derive(Debug)]
pub struct SseDecoder {
    max_line_bytes: usize,
    max_event_bytes: usize,
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    pub fn new(max_line_bytes: usize, max_event_bytes: usize) -> SseDecoder {
        SseDecoder {
            max_line_bytes,
            max_event_bytes,
            line: Vec::new(),
            event: None,
            data: String::new(),
            has_data: false,
        }
    }

    /// Decode `bytes`, appending every completed event to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(newline);
            self.extend_line(head)?;
            rest = &tail[1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let text = String::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
            if let Some(event) = self.take_line(&text)? {
                out.push(event);
            }
        }
        self.extend_line(rest)
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_line_bytes {
            return Err(SseError::LineTooLong {
                max_bytes: self.max_line_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn take_line(&mut self, line: &str) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                let added = value.len() + usize::from(self.has_data);
                if self.data.len() + added > self.max_event_bytes {
                    return Err(SseError::EventTooLarge {
                        max_bytes: self.max_event_bytes,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;

//! Encoding and bounded decoding of frames.
//!
//! Decoding checks, in this order and before allocating anything
//! proportional to the input: the frame size, UTF-8 (for byte frames), the
//! JSON nesting depth (a linear scan, no recursion), then the schema
//! (`deny_unknown_fields`), then the per-field bounds and semantic rules
//! (protocol version, artifact names and sizes, which sandbox events an agent
//! may send). Every failure is a [`ProtocolError`] with a stable
//! [`ProtocolError::reason`] and the WebSocket close code to use.

use base64::Engine as _;
use serde::Deserialize;

use crate::event::AgentEventBody;
use crate::limits::{
    ARTIFACT_CHUNK_BYTES, MAX_EVENT_BYTES, MAX_EXECUTION_ID_BYTES, MAX_FRAME_BYTES, MAX_JSON_DEPTH,
    MAX_REASON_BYTES, MAX_TOKEN_BYTES,
};
use crate::message::{
    AgentMessage, ArtifactChunk, ControllerMessage, MAX_AGENT_CONFIG_BYTES, MAX_MODEL_PREFERENCES,
    MAX_MODEL_SELECTOR_BYTES, ModelPreference, ModelRequest,
};
use crate::{PROTOCOL_VERSION, validate_artifact_name};

/// Longest serde error detail kept in [`ProtocolError::InvalidMessage`]
/// (the detail may quote hostile input such as an unknown field name).
const MAX_ERROR_DETAIL_CHARS: usize = 200;

/// A frame or message that breaks the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("frame is not valid utf-8")]
    InvalidUtf8,
    #[error("binary frames are not part of the protocol")]
    BinaryFrame,
    #[error("json nesting exceeds depth {max}")]
    TooDeep { max: usize },
    #[error("invalid message: {detail}")]
    InvalidMessage { detail: String },
    #[error("protocol version {got} is not supported (expected {expected})")]
    VersionMismatch { got: u32, expected: u32 },
    #[error("field {field} of {size} bytes exceeds the limit of {max} bytes")]
    FieldTooLarge {
        field: &'static str,
        size: usize,
        max: usize,
    },
    #[error("field {field} has {count} entries, over the limit of {max}")]
    TooManyEntries {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("an agent may not send the sandbox event {kind}")]
    ForbiddenEvent { kind: &'static str },
    #[error("invalid artifact chunk: {detail}")]
    InvalidArtifactChunk { detail: String },
    #[error("invalid job: {detail}")]
    InvalidJob { detail: String },
    #[error("encode message: {detail}")]
    Encode { detail: String },
}

impl ProtocolError {
    /// Stable snake_case reason, for events, logs and close frames.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::FrameTooLarge { .. } => "frame_too_large",
            ProtocolError::InvalidUtf8 => "invalid_utf8",
            ProtocolError::BinaryFrame => "binary_frame",
            ProtocolError::TooDeep { .. } => "json_too_deep",
            ProtocolError::InvalidMessage { .. } => "invalid_message",
            ProtocolError::VersionMismatch { .. } => "version_mismatch",
            ProtocolError::FieldTooLarge { .. } => "field_too_large",
            ProtocolError::TooManyEntries { .. } => "too_many_entries",
            ProtocolError::ForbiddenEvent { .. } => "forbidden_event",
            ProtocolError::InvalidArtifactChunk { .. } => "invalid_artifact_chunk",
            ProtocolError::InvalidJob { .. } => "invalid_job",
            ProtocolError::Encode { .. } => "encode_failed",
        }
    }

    /// The WebSocket close code to send before dropping the connection:
    /// 1009 (message too big), 1007 (invalid payload data), 1003 (unsupported
    /// data) or 1008 (policy violation).
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::FrameTooLarge { .. } => 1009,
            ProtocolError::InvalidUtf8 => 1007,
            ProtocolError::BinaryFrame => 1003,
            _ => 1008,
        }
    }

    fn invalid_message(error: &serde_json::Error) -> ProtocolError {
        let detail: String = error
            .to_string()
            .chars()
            .take(MAX_ERROR_DETAIL_CHARS)
            .collect();
        ProtocolError::InvalidMessage { detail }
    }
}

/// Returns true when `text` nests arrays/objects deeper than `max_depth`.
/// Brackets inside strings (including escaped quotes) are ignored. Linear,
/// constant memory: safe on hostile input of any shape.
pub fn json_depth_exceeds(text: &str, max_depth: usize) -> bool {
    let mut depth = 0usize;
    let mut is_in_string = false;
    let mut is_escaped = false;
    for byte in text.bytes() {
        if is_in_string {
            if is_escaped {
                is_escaped = false;
            } else if byte == b'\\' {
                is_escaped = true;
            } else if byte == b'"' {
                is_in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => is_in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn check_frame(text: &str) -> Result<(), ProtocolError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge {
            size: text.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    if json_depth_exceeds(text, MAX_JSON_DEPTH) {
        return Err(ProtocolError::TooDeep {
            max: MAX_JSON_DEPTH,
        });
    }
    Ok(())
}

fn frame_to_str(bytes: &[u8]) -> Result<&str, ProtocolError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge {
            size: bytes.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8)
}

fn check_field(field: &'static str, value: &str, max: usize) -> Result<(), ProtocolError> {
    if value.len() > max {
        return Err(ProtocolError::FieldTooLarge {
            field,
            size: value.len(),
            max,
        });
    }
    Ok(())
}

/// Lenient view of a hello, used to report a version mismatch even when a
/// future version changed the hello's other fields.
#[derive(Deserialize)]
struct HelloVersion {
    #[serde(rename = "type")]
    kind: String,
    version: u32,
}

/// Decodes and validates one text frame from an agent.
pub fn decode_agent_message(text: &str) -> Result<AgentMessage, ProtocolError> {
    check_frame(text)?;
    let message: AgentMessage = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(error) => {
            if let Ok(hello) = serde_json::from_str::<HelloVersion>(text)
                && hello.kind == "hello"
                && hello.version != PROTOCOL_VERSION
            {
                return Err(ProtocolError::VersionMismatch {
                    got: hello.version,
                    expected: PROTOCOL_VERSION,
                });
            }
            return Err(ProtocolError::invalid_message(&error));
        }
    };
    validate_agent_message(&message, text.len())?;
    Ok(message)
}

/// Decodes a frame from an agent given as bytes (checks UTF-8 first).
pub fn decode_agent_frame(bytes: &[u8]) -> Result<AgentMessage, ProtocolError> {
    decode_agent_message(frame_to_str(bytes)?)
}

/// Decodes and validates one text frame from the controller.
pub fn decode_controller_message(text: &str) -> Result<ControllerMessage, ProtocolError> {
    check_frame(text)?;
    let message: ControllerMessage =
        serde_json::from_str(text).map_err(|error| ProtocolError::invalid_message(&error))?;
    validate_controller_message(&message)?;
    Ok(message)
}

/// Decodes a frame from the controller given as bytes (checks UTF-8 first).
pub fn decode_controller_frame(bytes: &[u8]) -> Result<ControllerMessage, ProtocolError> {
    decode_controller_message(frame_to_str(bytes)?)
}

/// Encodes an agent message, refusing one that the controller would refuse
/// for its size (the frame, an event, a model request's fields).
pub fn encode_agent_message(message: &AgentMessage) -> Result<String, ProtocolError> {
    if let AgentMessage::ModelRequest(request) = message {
        validate_model_request(request)?;
    }
    let text = serde_json::to_string(message).map_err(|error| ProtocolError::Encode {
        detail: error.to_string(),
    })?;
    check_frame(&text)?;
    if matches!(message, AgentMessage::Event(_)) && text.len() > MAX_EVENT_BYTES {
        return Err(ProtocolError::FieldTooLarge {
            field: "event",
            size: text.len(),
            max: MAX_EVENT_BYTES,
        });
    }
    Ok(text)
}

/// Encodes a controller message, refusing one over the frame size.
pub fn encode_controller_message(message: &ControllerMessage) -> Result<String, ProtocolError> {
    let text = serde_json::to_string(message).map_err(|error| ProtocolError::Encode {
        detail: error.to_string(),
    })?;
    check_frame(&text)?;
    Ok(text)
}

fn validate_agent_message(message: &AgentMessage, frame_len: usize) -> Result<(), ProtocolError> {
    match message {
        AgentMessage::Hello(hello) => {
            if hello.version != PROTOCOL_VERSION {
                return Err(ProtocolError::VersionMismatch {
                    got: hello.version,
                    expected: PROTOCOL_VERSION,
                });
            }
            check_field("execution_id", &hello.execution_id, MAX_EXECUTION_ID_BYTES)?;
            check_field("token", &hello.token, MAX_TOKEN_BYTES)?;
            if let Some(resume) = &hello.resume {
                check_field("session_key", &resume.session_key, MAX_TOKEN_BYTES)?;
            }
        }
        AgentMessage::Event(event) => {
            if frame_len > MAX_EVENT_BYTES {
                return Err(ProtocolError::FieldTooLarge {
                    field: "event",
                    size: frame_len,
                    max: MAX_EVENT_BYTES,
                });
            }
            if let AgentEventBody::Sandbox(sandbox_event) = &event.body
                && !sandbox_event.can_agent_emit()
            {
                return Err(ProtocolError::ForbiddenEvent {
                    kind: sandbox_event.kind(),
                });
            }
        }
        AgentMessage::ArtifactChunk(chunk) => {
            chunk.decode_data()?;
        }
        AgentMessage::Done(done) => {
            if let Some(reason) = &done.outcome.reason {
                check_field("reason", reason, MAX_REASON_BYTES)?;
            }
            if let Some(message) = &done.outcome.message {
                check_field("message", message, MAX_REASON_BYTES)?;
            }
        }
        AgentMessage::ModelRequest(request) => validate_model_request(request)?,
        AgentMessage::Heartbeat { .. }
        | AgentMessage::ApprovalRequest(_)
        | AgentMessage::ModelCancel { .. } => {}
    }
    Ok(())
}

/// The bounds of a model request's selection (the frame bounds the rest).
fn validate_model_request(request: &ModelRequest) -> Result<(), ProtocolError> {
    check_field("agent", &request.agent, MAX_MODEL_SELECTOR_BYTES)?;
    let selectors = [
        ("provider", &request.provider),
        ("model", &request.model),
        ("model_role", &request.model_role),
    ];
    for (field, value) in selectors {
        if let Some(value) = value {
            check_field(field, value, MAX_MODEL_SELECTOR_BYTES)?;
        }
    }
    if let Some(preferences) = &request.provider_preferences {
        if preferences.len() > MAX_MODEL_PREFERENCES {
            return Err(ProtocolError::TooManyEntries {
                field: "provider_preferences",
                count: preferences.len(),
                max: MAX_MODEL_PREFERENCES,
            });
        }
        for preference in preferences {
            match preference {
                ModelPreference::Provider { provider, model } => {
                    check_field(
                        "provider_preferences.provider",
                        provider,
                        MAX_MODEL_SELECTOR_BYTES,
                    )?;
                    if let Some(model) = model {
                        check_field(
                            "provider_preferences.model",
                            model,
                            MAX_MODEL_SELECTOR_BYTES,
                        )?;
                    }
                }
                ModelPreference::Class { class } => {
                    check_field(
                        "provider_preferences.class",
                        class,
                        MAX_MODEL_SELECTOR_BYTES,
                    )?;
                }
            }
        }
    }
    if let Some(agent_config) = &request.agent_config {
        let size = serde_json::to_string(agent_config)
            .map(|text| text.len())
            .unwrap_or(usize::MAX);
        if size > MAX_AGENT_CONFIG_BYTES {
            return Err(ProtocolError::FieldTooLarge {
                field: "agent_config",
                size,
                max: MAX_AGENT_CONFIG_BYTES,
            });
        }
    }
    Ok(())
}

fn validate_controller_message(message: &ControllerMessage) -> Result<(), ProtocolError> {
    match message {
        ControllerMessage::Welcome { session_key } => {
            check_field("session_key", session_key, MAX_TOKEN_BYTES)?;
        }
        ControllerMessage::Job(job) => {
            // Steps never run as root: the agent is uid 0 inside the container.
            if job.step_uid == 0 || job.step_gid == 0 {
                return Err(ProtocolError::InvalidJob {
                    detail: "step_uid and step_gid must not be 0".to_string(),
                });
            }
        }
        ControllerMessage::Cancel { reason } => check_field("reason", reason, MAX_REASON_BYTES)?,
        ControllerMessage::ApprovalDecision(decision) => {
            if let Some(message) = &decision.message {
                check_field("message", message, MAX_REASON_BYTES)?;
            }
        }
        ControllerMessage::Ack { .. }
        | ControllerMessage::Heartbeat {}
        | ControllerMessage::ModelResponse(_)
        | ControllerMessage::Reject { .. } => {}
    }
    Ok(())
}

/// Standard base64 (with padding) of artifact bytes.
pub fn encode_artifact_data(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl ArtifactChunk {
    /// Validates the chunk (name, sha256 iff last, size) and returns its bytes.
    pub fn decode_data(&self) -> Result<Vec<u8>, ProtocolError> {
        let invalid = |detail: String| ProtocolError::InvalidArtifactChunk { detail };
        validate_artifact_name(&self.name)
            .map_err(|error| invalid(format!("name: {}", error.reason())))?;
        let max_b64_len = ARTIFACT_CHUNK_BYTES.div_ceil(3) * 4;
        if self.data_b64.len() > max_b64_len {
            return Err(invalid(format!(
                "data of {} base64 bytes exceeds {max_b64_len}",
                self.data_b64.len()
            )));
        }
        match (&self.sha256, self.last) {
            (Some(sha256), true) => {
                let is_hex = sha256.len() == 64
                    && sha256
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !is_hex {
                    return Err(invalid(
                        "sha256 is not 64 lower-case hex digits".to_string(),
                    ));
                }
            }
            (None, false) => {}
            (Some(_), false) => {
                return Err(invalid("sha256 on a chunk that is not last".to_string()));
            }
            (None, true) => return Err(invalid("last chunk without sha256".to_string())),
        }
        base64::engine::general_purpose::STANDARD
            .decode(&self.data_b64)
            .map_err(|_| invalid("data is not valid base64".to_string()))
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;

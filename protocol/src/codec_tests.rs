//! Round trips, exact JSON shapes and rejections of hostile frames.

#![allow(clippy::unwrap_used)]

use expect_test::expect;

use super::*;
use crate::event::{ArtifactRejectReason, KillReason, SandboxEvent};
use crate::message::*;
use crate::{ControllerEvent, EventBody, ExecutionEvent, FinalStatus};

fn sha_hex() -> String {
    "0123456789abcdef".repeat(4)
}

fn agent_messages() -> Vec<AgentMessage> {
    vec![
        AgentMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            execution_id: "ex-1".into(),
            token: "tok".into(),
            resume: None,
        }),
        AgentMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            execution_id: "ex-1".into(),
            token: String::new(),
            resume: Some(Resume {
                session_key: "sk".into(),
                last_acked_seq: 41,
            }),
        }),
        AgentMessage::Event(WireEvent {
            seq: 3,
            at_ms: 1_700_000_000_000,
            body: AgentEventBody::Sandbox(SandboxEvent::ArtifactRejected {
                name: "../x".into(),
                reason: ArtifactRejectReason::InvalidName,
            }),
        }),
        AgentMessage::Event(WireEvent {
            seq: 4,
            at_ms: 5,
            body: AgentEventBody::Sandbox(SandboxEvent::StepKilled {
                step_id: "s".into(),
                reason: KillReason::Timeout,
                signal: "SIGKILL".into(),
            }),
        }),
        AgentMessage::Heartbeat { seq_sent: 9 },
        AgentMessage::ApprovalRequest(ApprovalRequest {
            request_id: 1,
            stage: "review".into(),
            prompt: "ok?".into(),
            timeout_secs: 60,
            default: ApprovalChoice::Deny,
        }),
        AgentMessage::ModelRequest(Box::new(ModelRequest {
            request_id: 2,
            step_id: "ask".into(),
            agent: "zen-architect".into(),
            messages: vec![
                ModelMessage {
                    role: ModelRole::System,
                    content: "be brief".into(),
                },
                ModelMessage {
                    role: ModelRole::User,
                    content: "hi".into(),
                },
            ],
            provider: Some("anthropic".into()),
            model: Some("claude-*".into()),
            provider_preferences: Some(vec![
                ModelPreference::Class {
                    class: "reasoning".into(),
                },
                ModelPreference::Provider {
                    provider: "local".into(),
                    model: None,
                },
            ]),
            model_role: Some("coding".into()),
            agent_config: Some(serde_json::Map::from_iter([
                ("temperature".to_string(), serde_json::json!(0.7)),
                ("tools".to_string(), serde_json::json!([{"module": "x"}])),
            ])),
            parameters: ModelParameters {
                temperature: Some(0.5),
                max_tokens: Some(100),
                top_p: None,
                stop: vec!["END".into()],
            },
            stream: true,
            timeout_secs: 600,
        })),
        AgentMessage::ModelCancel { request_id: 2 },
        AgentMessage::ModelRequest(Box::new(minimal_model_request())),
        AgentMessage::ArtifactChunk(ArtifactChunk {
            seq: 10,
            name: "out/report.txt".into(),
            offset: 0,
            data_b64: encode_artifact_data(b"hello"),
            last: true,
            sha256: Some(sha_hex()),
        }),
        AgentMessage::Done(Done {
            seq: 11,
            outcome: Outcome {
                status: FinalStatus::Failed,
                reason: Some("step_failed".into()),
                message: Some("step 'b' exited with 3".into()),
            },
        }),
        AgentMessage::Event(WireEvent {
            seq: 12,
            at_ms: 6,
            body: AgentEventBody::Engine(recipe::event::Event::StepOutput {
                step_id: "build".into(),
                stream: recipe::event::OutputStream::Stdout,
                text: "hello\n".into(),
            }),
        }),
    ]
}

/// A model request with no selection at all (the operator's default).
fn minimal_model_request() -> ModelRequest {
    ModelRequest {
        request_id: 3,
        step_id: "plain".into(),
        agent: "self".into(),
        messages: vec![ModelMessage {
            role: ModelRole::User,
            content: "q".into(),
        }],
        provider: None,
        model: None,
        provider_preferences: None,
        model_role: None,
        agent_config: None,
        parameters: ModelParameters::default(),
        stream: false,
        timeout_secs: 0,
    }
}

fn controller_messages() -> Vec<ControllerMessage> {
    vec![
        ControllerMessage::Welcome {
            session_key: "sk".into(),
        },
        ControllerMessage::Job(Box::new(Job {
            recipe_source: "name: x\n".into(),
            inputs: serde_json::Map::from_iter([("a".to_string(), serde_json::json!(1))]),
            files: [("sub.yaml".to_string(), "name: sub\n".to_string())].into(),
            limits: JobLimits::default(),
            step_uid: 200_001,
            step_gid: 200_001,
        })),
        ControllerMessage::Ack { seq: 7 },
        ControllerMessage::Heartbeat {},
        ControllerMessage::Cancel {
            reason: "user".into(),
        },
        ControllerMessage::ApprovalDecision(ApprovalDecision {
            request_id: 1,
            decision: ApprovalChoice::Approve,
            by: "alice".into(),
            message: Some("go".into()),
        }),
        ControllerMessage::ModelResponse(ModelResponse {
            request_id: 2,
            body: ModelResponseBody::Chunk { text: "he".into() },
        }),
        ControllerMessage::ModelResponse(ModelResponse {
            request_id: 2,
            body: ModelResponseBody::Completed {
                text: "hello".into(),
                provider: "anthropic".into(),
                model: "claude".into(),
                usage: ModelUsage {
                    input_tokens: 3,
                    output_tokens: 1,
                },
                finish_reason: Some("stop".into()),
            },
        }),
        ControllerMessage::ModelResponse(ModelResponse {
            request_id: 3,
            body: ModelResponseBody::Error {
                code: ModelErrorCode::Unavailable,
                message: "no gateway".into(),
            },
        }),
        ControllerMessage::Reject {
            reason: RejectReason::BadToken,
        },
    ]
}

#[test]
fn every_agent_message_round_trips() {
    for message in agent_messages() {
        let text = encode_agent_message(&message).unwrap();
        assert_eq!(decode_agent_message(&text).unwrap(), message, "{text}");
        assert_eq!(decode_agent_frame(text.as_bytes()).unwrap(), message);
    }
}

#[test]
fn every_controller_message_round_trips() {
    for message in controller_messages() {
        let text = encode_controller_message(&message).unwrap();
        assert_eq!(decode_controller_message(&text).unwrap(), message, "{text}");
        assert_eq!(decode_controller_frame(text.as_bytes()).unwrap(), message);
    }
}

#[test]
fn exact_json_shapes() {
    let messages = agent_messages();
    expect![[r#"{"type":"hello","version":2,"execution_id":"ex-1","token":"tok"}"#]]
        .assert_eq(&encode_agent_message(&messages[0]).unwrap());
    expect![[r#"{"type":"hello","version":2,"execution_id":"ex-1","token":"","resume":{"session_key":"sk","last_acked_seq":41}}"#]]
        .assert_eq(&encode_agent_message(&messages[1]).unwrap());
    expect![[r#"{"type":"event","seq":3,"at_ms":1700000000000,"body":{"source":"sandbox","event":{"type":"artifact_rejected","name":"../x","reason":"invalid_name"}}}"#]]
        .assert_eq(&encode_agent_message(&messages[2]).unwrap());
    expect![[r#"{"type":"heartbeat","seq_sent":9}"#]]
        .assert_eq(&encode_agent_message(&messages[4]).unwrap());
    expect![[r#"{"type":"artifact_chunk","seq":10,"name":"out/report.txt","offset":0,"data_b64":"aGVsbG8=","last":true,"sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}"#]]
        .assert_eq(&encode_agent_message(&messages[9]).unwrap());
    expect![[r#"{"type":"done","seq":11,"outcome":{"status":"failed","reason":"step_failed","message":"step 'b' exited with 3"}}"#]]
        .assert_eq(&encode_agent_message(&messages[10]).unwrap());

    expect![[r#"{"type":"event","seq":12,"at_ms":6,"body":{"source":"engine","event":{"type":"step_output","step_id":"build","stream":"stdout","text":"hello\n"}}}"#]]
        .assert_eq(&encode_agent_message(&messages[11]).unwrap());

    expect![[r#"{"type":"model_request","request_id":2,"step_id":"ask","agent":"zen-architect","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"provider":"anthropic","model":"claude-*","provider_preferences":[{"kind":"class","class":"reasoning"},{"kind":"provider","provider":"local"}],"model_role":"coding","agent_config":{"temperature":0.7,"tools":[{"module":"x"}]},"parameters":{"temperature":0.5,"max_tokens":100,"stop":["END"]},"stream":true,"timeout_secs":600}"#]]
        .assert_eq(&encode_agent_message(&messages[6]).unwrap());
    expect![[r#"{"type":"model_request","request_id":3,"step_id":"plain","agent":"self","messages":[{"role":"user","content":"q"}],"parameters":{},"stream":false,"timeout_secs":0}"#]]
        .assert_eq(&encode_agent_message(&messages[8]).unwrap());

    let messages = controller_messages();
    expect![[r#"{"type":"job","recipe_source":"name: x\n","inputs":{"a":1},"files":{"sub.yaml":"name: sub\n"},"limits":{"max_output_bytes":67108864,"max_step_output_bytes":10485760,"max_artifacts":256,"max_artifact_bytes":67108864,"max_total_artifact_bytes":268435456,"rlimit_nofile":1024},"step_uid":200001,"step_gid":200001}"#]]
        .assert_eq(&encode_controller_message(&messages[1]).unwrap());
    expect![[r#"{"type":"ack","seq":7}"#]]
        .assert_eq(&encode_controller_message(&messages[2]).unwrap());
    expect![[r#"{"type":"heartbeat"}"#]]
        .assert_eq(&encode_controller_message(&messages[3]).unwrap());
    expect![[r#"{"type":"model_response","request_id":2,"body":{"kind":"completed","text":"hello","provider":"anthropic","model":"claude","usage":{"input_tokens":3,"output_tokens":1},"finish_reason":"stop"}}"#]]
        .assert_eq(&encode_controller_message(&messages[7]).unwrap());
    expect![[r#"{"type":"reject","reason":"bad_token"}"#]]
        .assert_eq(&encode_controller_message(&messages[9]).unwrap());
}

#[test]
fn execution_event_shape_and_round_trip() {
    let event = ExecutionEvent {
        seq: 1,
        at_ms: 2,
        body: EventBody::Controller(ControllerEvent::Finished {
            status: FinalStatus::AgentLost,
            reason: None,
        }),
    };
    let text = serde_json::to_string(&event).unwrap();
    expect![[r#"{"seq":1,"at_ms":2,"body":{"source":"controller","event":{"type":"finished","status":"agent_lost"}}}"#]]
        .assert_eq(&text);
    assert_eq!(
        serde_json::from_str::<ExecutionEvent>(&text).unwrap(),
        event
    );
    let agent_body = AgentEventBody::Sandbox(SandboxEvent::AgentReconnected {
        attempts: 2,
        down_ms: 300,
    });
    let as_event_body = EventBody::from(agent_body.clone());
    assert_eq!(
        serde_json::to_string(&agent_body).unwrap(),
        serde_json::to_string(&as_event_body).unwrap()
    );
}

#[test]
fn final_status_names_are_stable() {
    let all = [
        (FinalStatus::Succeeded, "succeeded"),
        (FinalStatus::Failed, "failed"),
        (FinalStatus::TimedOut, "timed_out"),
        (FinalStatus::Oom, "oom"),
        (FinalStatus::Cancelled, "cancelled"),
        (FinalStatus::AgentLost, "agent_lost"),
        (FinalStatus::SandboxCrashed, "sandbox_crashed"),
        (FinalStatus::ProtocolError, "protocol_error"),
        (FinalStatus::Denied, "denied"),
    ];
    for (status, name) in all {
        assert_eq!(status.as_str(), name);
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            format!("\"{name}\"")
        );
    }
}

fn agent_reason(text: &str) -> &'static str {
    decode_agent_message(text).unwrap_err().reason()
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let huge = format!(
        r#"{{"type":"heartbeat","seq_sent":1,"x":"{}"}}"#,
        "a".repeat(MAX_FRAME_BYTES)
    );
    let error = decode_agent_message(&huge).unwrap_err();
    assert_eq!(
        error,
        ProtocolError::FrameTooLarge {
            size: huge.len(),
            max: MAX_FRAME_BYTES
        }
    );
    assert_eq!(error.close_code(), 1009);
    assert_eq!(
        decode_controller_frame(huge.as_bytes())
            .unwrap_err()
            .close_code(),
        1009
    );
    // An unbounded array is refused by size too, never parsed.
    let array = format!("[{}1]", "1,".repeat(MAX_FRAME_BYTES / 2));
    assert_eq!(agent_reason(&array), "frame_too_large");
}

#[test]
fn deep_nesting_is_refused_without_recursion() {
    let deep = "[".repeat(10_000);
    let error = decode_agent_message(&deep).unwrap_err();
    assert_eq!(
        error,
        ProtocolError::TooDeep {
            max: MAX_JSON_DEPTH
        }
    );
    assert_eq!(error.close_code(), 1008);
    let deep_object = format!("{}{}", "{\"a\":".repeat(65), "}".repeat(65));
    assert_eq!(
        decode_controller_message(&deep_object)
            .unwrap_err()
            .reason(),
        "json_too_deep"
    );
    // Brackets in strings do not count; 64 levels are fine for the scanner.
    assert!(!json_depth_exceeds(
        r#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}"#,
        2
    ));
    assert!(!json_depth_exceeds(r#"{"a":"\"[[[["}"#, 1));
    assert!(!json_depth_exceeds(&"[".repeat(64), 64));
    assert!(json_depth_exceeds(&"[".repeat(65), 64));
}

#[test]
fn invalid_utf8_is_refused_with_1007() {
    let error = decode_agent_frame(b"{\"type\":\"heartbeat\",\"seq_sent\":\xff}").unwrap_err();
    assert_eq!(error, ProtocolError::InvalidUtf8);
    assert_eq!(error.close_code(), 1007);
    assert_eq!(
        decode_controller_frame(b"\xc3\x28").unwrap_err().reason(),
        "invalid_utf8"
    );
}

#[test]
fn unknown_fields_and_types_are_refused() {
    let cases = [
        r#"{"type":"heartbeat","seq_sent":1,"extra":true}"#,
        r#"{"type":"hello","version":2,"execution_id":"e","token":"t","tokne":"x"}"#,
        r#"{"type":"event","seq":1,"at_ms":1,"body":{"source":"sandbox","event":{"type":"agent_started","agent_version":"1","x":1}}}"#,
        r#"{"type":"event","seq":1,"at_ms":1,"body":{"source":"controller","event":{"type":"queued"}}}"#,
        r#"{"type":"nonsense"}"#,
        r#"{"seq_sent":1}"#,
        r#"not json"#,
        r#"{"type":"heartbeat","seq_sent":-1}"#,
    ];
    for case in cases {
        assert_eq!(agent_reason(case), "invalid_message", "{case}");
    }
    let controller_cases = [
        r#"{"type":"ack","seq":1,"extra":1}"#,
        r#"{"type":"welcome","session_key":"k","job":{}}"#,
        r#"{"type":"cancel"}"#,
    ];
    for case in controller_cases {
        let reason = decode_controller_message(case).unwrap_err().reason();
        assert_eq!(reason, "invalid_message", "{case}");
    }
}

#[test]
fn wrong_version_is_reported_as_such() {
    let v1 = r#"{"type":"hello","version":1,"execution_id":"e","token":"t"}"#;
    assert_eq!(
        decode_agent_message(v1).unwrap_err(),
        ProtocolError::VersionMismatch {
            got: 1,
            expected: 2
        }
    );
    // Even when a future hello has fields this version does not know.
    let v9 = r#"{"type":"hello","version":9,"execution_id":"e","token":"t","new_field":{}}"#;
    assert_eq!(agent_reason(v9), "version_mismatch");
}

#[test]
fn field_bounds_are_enforced() {
    let long_token = format!(
        r#"{{"type":"hello","version":2,"execution_id":"e","token":"{}"}}"#,
        "t".repeat(MAX_TOKEN_BYTES + 1)
    );
    assert_eq!(agent_reason(&long_token), "field_too_large");
    let big_event = format!(
        r#"{{"type":"event","seq":1,"at_ms":1,"body":{{"source":"sandbox","event":{{"type":"agent_started","agent_version":"{}"}}}}}}"#,
        "v".repeat(MAX_EVENT_BYTES)
    );
    assert_eq!(agent_reason(&big_event), "field_too_large");
    let long_cancel = format!(
        r#"{{"type":"cancel","reason":"{}"}}"#,
        "r".repeat(MAX_REASON_BYTES + 1)
    );
    assert_eq!(
        decode_controller_message(&long_cancel)
            .unwrap_err()
            .reason(),
        "field_too_large"
    );
    let root_job = r#"{"type":"job","recipe_source":"","limits":{"max_output_bytes":1,"max_step_output_bytes":1,"max_artifacts":1,"max_artifact_bytes":1,"max_total_artifact_bytes":1},"step_uid":0,"step_gid":5}"#;
    assert_eq!(
        decode_controller_message(root_job).unwrap_err().reason(),
        "invalid_job"
    );
}

#[test]
fn agents_cannot_forge_controller_observed_events() {
    let forged = r#"{"type":"event","seq":1,"at_ms":1,"body":{"source":"sandbox","event":{"type":"resource_usage","peak_memory_bytes":1,"cpu_time_ms":1,"pids_peak":1,"oom_kills":0}}}"#;
    assert_eq!(
        decode_agent_message(forged).unwrap_err(),
        ProtocolError::ForbiddenEvent {
            kind: "resource_usage"
        }
    );
    let stored = r#"{"type":"event","seq":1,"at_ms":1,"body":{"source":"sandbox","event":{"type":"artifact_stored","name":"a","size_bytes":1,"sha256":"x"}}}"#;
    assert_eq!(agent_reason(stored), "forbidden_event");
}

#[test]
fn artifact_chunks_are_validated() {
    let chunk = |name: &str, data_b64: &str, last: bool, sha256: Option<String>| {
        let message = AgentMessage::ArtifactChunk(ArtifactChunk {
            seq: 1,
            name: name.into(),
            offset: 0,
            data_b64: data_b64.into(),
            last,
            sha256,
        });
        serde_json::to_string(&message).unwrap()
    };
    let ok = chunk("a.txt", "aGk=", true, Some(sha_hex()));
    let AgentMessage::ArtifactChunk(decoded) = decode_agent_message(&ok).unwrap() else {
        panic!("not a chunk");
    };
    assert_eq!(decoded.decode_data().unwrap(), b"hi");
    let cases = [
        chunk("../etc/passwd", "aGk=", false, None),
        chunk("/etc/passwd", "aGk=", false, None),
        chunk("a\nb", "aGk=", false, None),
        chunk("a.txt", "!!!", false, None),
        chunk("a.txt", "aGk=", true, None),
        chunk("a.txt", "aGk=", false, Some(sha_hex())),
        chunk("a.txt", "aGk=", true, Some("ABC".into())),
        chunk(
            "a.txt",
            &"A".repeat(ARTIFACT_CHUNK_BYTES / 3 * 4 + 8),
            false,
            None,
        ),
    ];
    for case in &cases {
        assert_eq!(agent_reason(case), "invalid_artifact_chunk", "{case:.200}");
    }
}

#[test]
fn encoding_refuses_oversized_events() {
    let message = AgentMessage::Event(WireEvent {
        seq: 1,
        at_ms: 1,
        body: AgentEventBody::Sandbox(SandboxEvent::AgentStarted {
            agent_version: "v".repeat(MAX_EVENT_BYTES),
        }),
    });
    assert_eq!(
        encode_agent_message(&message).unwrap_err().reason(),
        "field_too_large"
    );
}

#[test]
fn unit_messages_refuse_extra_fields() {
    let reason = decode_controller_message(r#"{"type":"heartbeat","x":1}"#)
        .unwrap_err()
        .reason();
    assert_eq!(reason, "invalid_message");
}

#[test]
fn model_requests_refuse_unknown_and_old_fields() {
    let base = r#""request_id":1,"step_id":"s","agent":"a","messages":[],"timeout_secs":1"#;
    // The smallest request decodes, every selection field absent.
    let minimal = format!(r#"{{"type":"model_request",{base}}}"#);
    let AgentMessage::ModelRequest(request) = decode_agent_message(&minimal).unwrap() else {
        panic!("not a model request");
    };
    assert_eq!(
        (
            request.provider,
            request.provider_preferences,
            request.model_role,
            request.agent_config,
            request.stream
        ),
        (None, None, None, None, false)
    );
    let cases = [
        // Protocol 1's list is gone.
        format!(r#"{{"type":"model_request",{base},"preferences":[{{"provider":"p"}}]}}"#),
        // Entries are tagged, and each kind has exactly its own fields.
        format!(r#"{{"type":"model_request",{base},"provider_preferences":[{{"provider":"p"}}]}}"#),
        format!(
            r#"{{"type":"model_request",{base},"provider_preferences":[{{"kind":"provider","provider":"p","class":"c"}}]}}"#
        ),
        format!(
            r#"{{"type":"model_request",{base},"provider_preferences":[{{"kind":"class","class":"c","model":"m"}}]}}"#
        ),
        format!(
            r#"{{"type":"model_request",{base},"provider_preferences":[{{"kind":"role","role":"r"}}]}}"#
        ),
        format!(r#"{{"type":"model_request",{base},"agent_config":[1]}}"#),
        format!(r#"{{"type":"model_request",{base},"model_role":7}}"#),
        format!(r#"{{"type":"model_request",{base},"parameters":{{"seed":1}}}}"#),
    ];
    for case in &cases {
        assert_eq!(agent_reason(case), "invalid_message", "{case}");
    }
}

#[test]
fn model_request_selection_is_bounded_both_ways() {
    let long = "x".repeat(MAX_MODEL_SELECTOR_BYTES + 1);
    let at_limit = "x".repeat(MAX_MODEL_SELECTOR_BYTES);
    let with = |edit: &dyn Fn(&mut ModelRequest)| {
        let mut request = minimal_model_request();
        edit(&mut request);
        AgentMessage::ModelRequest(Box::new(request))
    };
    let refused: Vec<(AgentMessage, ProtocolError)> = vec![
        (
            with(&|r| r.agent = long.clone()),
            ProtocolError::FieldTooLarge {
                field: "agent",
                size: 257,
                max: 256,
            },
        ),
        (
            with(&|r| r.provider = Some(long.clone())),
            ProtocolError::FieldTooLarge {
                field: "provider",
                size: 257,
                max: 256,
            },
        ),
        (
            with(&|r| r.model = Some(long.clone())),
            ProtocolError::FieldTooLarge {
                field: "model",
                size: 257,
                max: 256,
            },
        ),
        (
            with(&|r| r.model_role = Some(long.clone())),
            ProtocolError::FieldTooLarge {
                field: "model_role",
                size: 257,
                max: 256,
            },
        ),
        (
            with(&|r| {
                r.provider_preferences = Some(vec![ModelPreference::Class {
                    class: long.clone(),
                }])
            }),
            ProtocolError::FieldTooLarge {
                field: "provider_preferences.class",
                size: 257,
                max: 256,
            },
        ),
        (
            with(&|r| {
                r.provider_preferences = Some(vec![ModelPreference::Provider {
                    provider: "p".into(),
                    model: Some(long.clone()),
                }])
            }),
            ProtocolError::FieldTooLarge {
                field: "provider_preferences.model",
                size: 257,
                max: 256,
            },
        ),
        (
            with(&|r| {
                r.provider_preferences = Some(vec![
                    ModelPreference::Class { class: "c".into() };
                    MAX_MODEL_PREFERENCES + 1
                ])
            }),
            ProtocolError::TooManyEntries {
                field: "provider_preferences",
                count: 33,
                max: 32,
            },
        ),
        (
            with(&|r| {
                r.agent_config = Some(serde_json::Map::from_iter([(
                    "system_prompt".to_string(),
                    serde_json::json!("p".repeat(MAX_AGENT_CONFIG_BYTES)),
                )]))
            }),
            ProtocolError::FieldTooLarge {
                field: "agent_config",
                size: MAX_AGENT_CONFIG_BYTES + 20,
                max: MAX_AGENT_CONFIG_BYTES,
            },
        ),
    ];
    for (message, error) in refused {
        // The agent refuses to send it, and the controller to accept it.
        assert_eq!(encode_agent_message(&message).unwrap_err(), error);
        let text = serde_json::to_string(&message).unwrap();
        assert_eq!(decode_agent_message(&text).unwrap_err(), error);
        assert_eq!(error.close_code(), 1008);
    }
    assert_eq!(
        ProtocolError::TooManyEntries {
            field: "provider_preferences",
            count: 33,
            max: 32
        }
        .reason(),
        "too_many_entries"
    );
    let accepted = with(&|r| {
        r.agent = at_limit.clone();
        r.provider = Some(at_limit.clone());
        r.model = Some(at_limit.clone());
        r.model_role = Some(at_limit.clone());
        r.provider_preferences = Some(vec![
            ModelPreference::Provider {
                provider: at_limit.clone(),
                model: Some(at_limit.clone()),
            };
            MAX_MODEL_PREFERENCES
        ]);
    });
    let text = encode_agent_message(&accepted).unwrap();
    assert_eq!(decode_agent_message(&text).unwrap(), accepted);
}

#[test]
fn the_documented_model_request_decodes() {
    // The ```json block of docs/model-gateway.md's "The wire request".
    let doc = include_str!("../../docs/model-gateway.md");
    let start = doc.find("```json\n").unwrap() + "```json\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let AgentMessage::ModelRequest(request) = decode_agent_message(&doc[start..end]).unwrap()
    else {
        panic!("not a model request");
    };
    assert_eq!(
        request.provider_preferences,
        Some(vec![
            ModelPreference::Class {
                class: "reasoning".into()
            },
            ModelPreference::Provider {
                provider: "local".into(),
                model: Some("fast".into())
            },
        ])
    );
    assert_eq!(
        request.agent_config.unwrap().keys().collect::<Vec<_>>(),
        ["temperature", "tools"]
    );
}

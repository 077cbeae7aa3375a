//! A minimal controller for running `kiln-agent` by hand (for example inside
//! a container built from a Kiln image): serves one job on a Unix socket,
//! prints every message from the agent as JSON lines, acks, approves every
//! gate, and answers model requests with a fixed text.
//!
//! ```text
//! cargo run -p sandbox-agent --example dev_controller -- \
//!     <socket> <recipe.yaml> [step_uid] [token]
//! ```
//! The token defaults to `dev-token`; write it to the agent's token file.

#![allow(clippy::unwrap_used)]

use futures::{SinkExt, StreamExt};
use protocol::{
    AgentMessage, ApprovalChoice, ApprovalDecision, ControllerMessage, Job, JobLimits,
    ModelResponse, ModelResponseBody, ModelUsage, decode_agent_message, encode_controller_message,
};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(socket), Some(recipe_path)) = (args.first(), args.get(1)) else {
        eprintln!("usage: dev_controller <socket> <recipe.yaml> [step_uid] [token]");
        std::process::exit(64);
    };
    let step_uid: u32 = args.get(2).map(|uid| uid.parse().unwrap()).unwrap_or(65534);
    let token = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "dev-token".to_string());
    let job = Job {
        recipe_source: std::fs::read_to_string(recipe_path).unwrap(),
        inputs: serde_json::Map::new(),
        files: Default::default(),
        limits: JobLimits::default(),
        step_uid,
        step_gid: step_uid,
    };
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let send = |message: ControllerMessage| {
            Message::text(encode_controller_message(&message).unwrap())
        };
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            println!("{}", text.as_str());
            let replies = match decode_agent_message(text.as_str()) {
                Ok(AgentMessage::Hello(hello)) => {
                    if hello.resume.is_none() && hello.token != token {
                        vec![ControllerMessage::Reject {
                            reason: protocol::RejectReason::BadToken,
                        }]
                    } else {
                        vec![
                            ControllerMessage::Welcome {
                                session_key: "dev-session".to_string(),
                            },
                            ControllerMessage::Job(Box::new(job.clone())),
                        ]
                    }
                }
                Ok(AgentMessage::Event(event)) => vec![ControllerMessage::Ack { seq: event.seq }],
                Ok(AgentMessage::ArtifactChunk(chunk)) => {
                    vec![ControllerMessage::Ack { seq: chunk.seq }]
                }
                Ok(AgentMessage::Done(done)) => vec![ControllerMessage::Ack { seq: done.seq }],
                Ok(AgentMessage::ApprovalRequest(request)) => {
                    vec![ControllerMessage::ApprovalDecision(ApprovalDecision {
                        request_id: request.request_id,
                        decision: ApprovalChoice::Approve,
                        by: "dev".to_string(),
                        message: None,
                    })]
                }
                Ok(AgentMessage::ModelRequest(request)) => {
                    vec![ControllerMessage::ModelResponse(ModelResponse {
                        request_id: request.request_id,
                        body: ModelResponseBody::Completed {
                            text: "dev answer".to_string(),
                            provider: "dev".to_string(),
                            model: "dev".to_string(),
                            usage: ModelUsage::default(),
                            finish_reason: None,
                        },
                    })]
                }
                Ok(_) => vec![],
                Err(error) => {
                    eprintln!("protocol error: {error}");
                    vec![]
                }
            };
            for reply in replies {
                if ws.send(send(reply)).await.is_err() {
                    break;
                }
            }
        }
        // The stream ended: drop it at once (deadlock 2), wait for a resume.
        drop(ws);
        eprintln!("connection ended");
    }
}

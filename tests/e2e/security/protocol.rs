//! Catalogue cases 38-42 from the host side: a hostile client connects to a
//! LIVE execution's agent socket (`<run_dir>/<id>/agent.sock`) while its real
//! agent is running, and tries a forged execution id, a replayed/guessed
//! token, an oversized frame, invalid UTF-8, deeply nested JSON and a
//! half-open handshake. Each attempt is refused, and the execution finishes
//! `succeeded` with nothing forged in its events.
//!
//! The same attacks against the link endpoint alone (exact reject reasons,
//! token burning, session keys, handshake timeout) are covered by
//! `controller/tests/service.rs`; from inside a sandbox a step cannot even
//! open the socket (cases 38, 39, 41 in `cases.rs`: EACCES).

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{AgentMessage, Hello};
use tokio::net::UnixStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::runner::{step_output, wait_for_gone};
use super::{Runtime, SUITE_LOCK, start_server};

const SLOW_RECIPE: &str = "name: live-victim\ndescription: runs long enough to be attacked\nversion: 1.0.0\nsteps:\n  - id: wait\n    type: bash\n    timeout: 60\n    command: |\n      sleep 8\n      echo still-here\n";

type Client = WebSocketStream<UnixStream>;

async fn connect(socket: &Path) -> Option<Client> {
    let stream = UnixStream::connect(socket).await.ok()?;
    tokio_tungstenite::client_async("ws://localhost/agent", stream)
        .await
        .ok()
        .map(|(client, _)| client)
}

/// What the server answered: a text message, a close code, or nothing.
#[derive(Debug, PartialEq)]
enum Reply {
    Text(String),
    Closed(Option<u16>),
    Silent,
}

async fn reply(client: &mut Client) -> Reply {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), client.next()).await {
            Err(_) => return Reply::Silent,
            Ok(Some(Ok(Message::Text(text)))) => return Reply::Text(text.as_str().to_owned()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Reply::Closed(frame.map(|frame| u16::from(frame.code)));
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Reply::Closed(None),
        }
    }
}

fn hello(execution_id: &str, token: &str) -> String {
    protocol::encode_agent_message(&AgentMessage::Hello(Hello {
        version: protocol::PROTOCOL_VERSION,
        execution_id: execution_id.to_owned(),
        token: token.to_owned(),
        resume: None,
    }))
    .expect("encode a hello")
}

/// Not welcomed: either a `reject` message or a closed connection.
fn is_refused(reply: &Reply) -> bool {
    match reply {
        Reply::Text(text) => text.contains("\"reject\"") && !text.contains("welcome"),
        Reply::Closed(_) => true,
        Reply::Silent => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_host_client_on_a_live_execution_socket_is_refused() {
    let _suite = SUITE_LOCK.lock().await;
    let server = start_server("kiln-proto").await;
    let id = server
        .submit(SLOW_RECIPE, Runtime::Runc.class())
        .await
        .expect("submit");
    let socket = server.run_dir.join(&id).join("agent.sock");
    // Wait for the real agent to be connected.
    let mut connected = false;
    for _ in 0..200 {
        let events = server.events(&id).await.expect("events");
        if events
            .iter()
            .any(|event| event["body"]["event"]["type"] == "agent_connected")
        {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connected, "the agent connects:\n{}", server.log_text());

    let mut attempts = Vec::new();
    // 38: a second connection claiming another execution.
    if let Some(mut client) = connect(&socket).await {
        let _ = client
            .send(Message::text(hello("ex_forged", "forged")))
            .await;
        attempts.push(("forged execution id", reply(&mut client).await));
    }
    // 41: this execution's id with a guessed/replayed token (the real one is burnt).
    if let Some(mut client) = connect(&socket).await {
        let _ = client
            .send(Message::text(hello(&id, "kiln-replayed-token")))
            .await;
        attempts.push(("token replay", reply(&mut client).await));
    }
    // 39: an oversized frame (2 MiB > MAX_FRAME_BYTES).
    if let Some(mut client) = connect(&socket).await {
        let huge = "x".repeat(protocol::MAX_FRAME_BYTES * 2);
        let _ = client.send(Message::text(huge)).await;
        attempts.push(("oversized frame", reply(&mut client).await));
    }
    // 40: invalid UTF-8 in a text frame, then 10k-deep JSON.
    if let Some(mut client) = connect(&socket).await {
        let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            vec![b'{', 0xff, 0xfe, b'}'],
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
            ),
            true,
        );
        let _ = client.send(Message::Frame(frame)).await;
        attempts.push(("invalid UTF-8", reply(&mut client).await));
    }
    if let Some(mut client) = connect(&socket).await {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let _ = client.send(Message::text(deep)).await;
        attempts.push(("10k-deep JSON", reply(&mut client).await));
    }
    // 42: half-open: connect and say nothing while the execution finishes.
    let half_open = UnixStream::connect(&socket).await.ok();

    let execution = server
        .wait(&id, Duration::from_secs(120))
        .await
        .expect("final status");
    drop(half_open);
    let events = server.events(&id).await.expect("events");
    let output = step_output(&events);
    let finished: Vec<_> = events
        .iter()
        .filter(|event| event["body"]["event"]["type"] == "finished")
        .collect();
    wait_for_gone(&server, &id, Duration::from_secs(30))
        .await
        .expect("nothing left behind");

    eprintln!("host-side hostile attempts: {attempts:?}");
    // A step-less host root may find the listener closed once the agent is
    // connected; then every attempt is refused at connect, which is fine.
    for (name, reply) in &attempts {
        assert!(is_refused(reply), "{name}: {reply:?}");
    }
    for (name, code) in [("oversized frame", 1009), ("invalid UTF-8", 1007)] {
        if let Some((_, reply)) = attempts.iter().find(|(found, _)| *found == name) {
            assert!(
                matches!(reply, Reply::Closed(Some(found)) if *found == code)
                    || matches!(reply, Reply::Closed(None)),
                "{name}: expected close {code}, got {reply:?}"
            );
        }
    }
    assert_eq!(execution["status"], "succeeded", "{execution}");
    assert!(output.contains("still-here"), "{output}");
    assert_eq!(finished.len(), 1, "exactly one finished event");
}

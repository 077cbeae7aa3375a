//! Catalogue cases 38-42 from the host side: a hostile client connects to a
//! LIVE execution's agent socket (`<run_dir>/<id>/agent.sock`) while its real
//! agent is running, and tries a forged execution id, a replayed/guessed
//! token, an oversized frame, invalid UTF-8, deeply nested JSON and a
//! half-open handshake. Each attempt is refused, and the execution finishes
//! `succeeded` with nothing forged in its events.
//!
//! An event flood from a compromised agent (the link's token bucket) can
//! only come from the admitted peer, so it belongs to the controller's own
//! tests; from a step, the reachable flood is output (case 42, 20k lines).
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

/// A WebSocket client on `socket`, or the reply that refused it.
async fn connect(socket: &Path) -> Result<Client, Reply> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| Reply::ConnectRefused(error.to_string()))?;
    match tokio_tungstenite::client_async("ws://localhost/agent", stream).await {
        Ok((client, _)) => Ok(client),
        Err(error) => Err(Reply::HandshakeRefused(error.to_string())),
    }
}

/// What the server answered: a text message, a close code, or nothing.
#[derive(Debug, PartialEq)]
enum Reply {
    Text(String),
    Closed(Option<u16>),
    Silent,
    /// The socket accepted no second connection (the listener stops once
    /// its agent is connected).
    ConnectRefused(String),
    HandshakeRefused(String),
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

/// Connects, sends `message`, and returns how the server answered.
async fn attempt(socket: &Path, message: Message) -> Reply {
    match connect(socket).await {
        Err(refused) => refused,
        Ok(mut client) => {
            if client.send(message).await.is_err() {
                return Reply::Closed(None);
            }
            reply(&mut client).await
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
    attempts.push((
        "forged execution id",
        attempt(&socket, Message::text(hello("ex_forged", "forged"))).await,
    ));
    // 41: this execution's id with a guessed/replayed token (the real one is burnt).
    attempts.push((
        "token replay",
        attempt(&socket, Message::text(hello(&id, "kiln-replayed-token"))).await,
    ));
    // 39: an oversized frame (2 MiB > MAX_FRAME_BYTES).
    let huge = "x".repeat(protocol::MAX_FRAME_BYTES * 2);
    attempts.push((
        "oversized frame",
        attempt(&socket, Message::text(huge)).await,
    ));
    // 40: invalid UTF-8 in a text frame, then 10k-deep JSON.
    let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    attempts.push((
        "invalid UTF-8",
        attempt(&socket, Message::Frame(frame)).await,
    ));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    attempts.push(("10k-deep JSON", attempt(&socket, Message::text(deep)).await));
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
    // A connection from outside the execution's container (another peer
    // cgroup) is dropped before the WebSocket handshake, whatever it would
    // have sent: identity comes from the socket and the peer, never the
    // payload. The close codes for frames from an admitted peer (1009, 1007,
    // deep JSON, half-open timeout) are asserted in controller/tests/service.rs.
    assert_eq!(attempts.len(), 5);
    for (name, reply) in &attempts {
        assert!(
            matches!(reply, Reply::HandshakeRefused(_)),
            "{name}: expected the connection dropped before the handshake, got {reply:?}"
        );
    }
    assert_eq!(execution["status"], "succeeded", "{execution}");
    assert!(output.contains("still-here"), "{output}");
    assert_eq!(finished.len(), 1, "exactly one finished event");
}

//! The controller's service tests, one binary: the agent link against a fake
//! agent over a real Unix socket, the relay's ordering and batching, the
//! queue's concurrency limit, and restart reconciliation against real Docker.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use controller::agent_link::{
    Accepted, Admission, AgentConnection, LinkEndpoint, LinkError, Received,
};
use futures::{SinkExt, StreamExt};
use protocol::{AgentMessage, ControllerMessage, Hello, RejectReason, Resume};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const EXECUTION_ID: &str = "0b6f9d8e-1c1a-4c5e-9d55-6f2f1b1a0c01";
const WAIT: Duration = Duration::from_secs(20);

/// What the server side of the link reports to a test.
#[derive(Debug)]
enum Seen {
    Connected(Admission),
    Rejected(&'static str),
    Message(AgentMessage),
    Closed,
    Violation(String, bool),
}

struct Server {
    /// Keeps the run dir alive for the test's duration.
    _run_dir: std::sync::Arc<tempfile::TempDir>,
    socket_dir: std::path::PathBuf,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve one execution's link: report every accept and every message.
fn serve(mut endpoint: LinkEndpoint, run_dir: std::sync::Arc<tempfile::TempDir>) -> Server {
    let socket_dir = endpoint.dir().to_path_buf();
    let (report, seen) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match endpoint.accept().await.unwrap() {
                Accepted::Rejected(rejection) => {
                    let _ = report.send(Seen::Rejected(rejection.reason));
                }
                Accepted::Connected {
                    connection,
                    admission,
                    ..
                } => {
                    let _ = report.send(Seen::Connected(admission));
                    relay_messages(*connection, &report).await;
                }
            }
        }
    });
    Server {
        _run_dir: run_dir,
        socket_dir,
        seen,
        task,
    }
}

async fn relay_messages(mut connection: AgentConnection, report: &mpsc::UnboundedSender<Seen>) {
    loop {
        match connection.recv().await {
            Ok(Received::Message { message, .. }) => {
                let _ = report.send(Seen::Message(message));
            }
            Ok(Received::Closed) => {
                let _ = report.send(Seen::Closed);
                return;
            }
            Err(error) => {
                let is_violation = error.is_protocol_violation();
                let reason = match &error {
                    LinkError::Protocol { error, .. } => error.reason().to_owned(),
                    other => other.to_string(),
                };
                connection.close_for(&error).await;
                let _ = report.send(Seen::Violation(reason, is_violation));
                return;
            }
        }
    }
}

fn new_server() -> (Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = LinkEndpoint::create(dir.path(), EXECUTION_ID).unwrap();
    let token = std::fs::read_to_string(dir.path().join(EXECUTION_ID).join("token")).unwrap();
    (serve(endpoint, std::sync::Arc::new(dir)), token)
}

impl Server {
    fn socket_dir(&self) -> std::path::PathBuf {
        self.socket_dir.clone()
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the server reports within the wait")
            .expect("the server task is alive")
    }
}

type Client = WebSocketStream<UnixStream>;

async fn connect(socket_dir: &Path) -> Client {
    let stream = UnixStream::connect(socket_dir.join("agent.sock"))
        .await
        .unwrap();
    let (websocket, _) = tokio_tungstenite::client_async("ws://localhost/agent", stream)
        .await
        .unwrap();
    websocket
}

fn hello(execution_id: &str, token: &str, resume: Option<Resume>) -> String {
    protocol::encode_agent_message(&AgentMessage::Hello(Hello {
        version: protocol::PROTOCOL_VERSION,
        execution_id: execution_id.to_owned(),
        token: token.to_owned(),
        resume,
    }))
    .unwrap()
}

/// The next controller message, or the close code the server sent.
async fn read_reply(client: &mut Client) -> Result<ControllerMessage, Option<u16>> {
    loop {
        let message = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("the server answers within the wait");
        match message {
            Some(Ok(Message::Text(text))) => {
                return Ok(protocol::decode_controller_message(text.as_str()).unwrap());
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map(|frame| u16::from(frame.code)));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

async fn handshake(client: &mut Client, token: &str, resume: Option<Resume>) -> ControllerMessage {
    client
        .send(Message::text(hello(EXECUTION_ID, token, resume)))
        .await
        .unwrap();
    read_reply(client).await.unwrap()
}

fn session_key_of(welcome: &ControllerMessage) -> String {
    match welcome {
        ControllerMessage::Welcome { session_key } => session_key.clone(),
        other => panic!("expected welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn socket_dir_socket_and_token_have_the_documented_modes() {
    let (server, token) = new_server();
    let mode = |name: &str| {
        std::fs::metadata(server.socket_dir().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(""), 0o711);
    assert_eq!(mode("agent.sock"), 0o600);
    assert_eq!(mode("token"), 0o400);
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|byte| byte.is_ascii_hexdigit()));
}

#[tokio::test]
async fn handshake_with_the_token_is_welcomed_and_burns_the_token() {
    let (mut server, token) = new_server();
    let mut client = connect(&server.socket_dir()).await;
    let welcome = handshake(&mut client, &token, None).await;
    assert_eq!(session_key_of(&welcome).len(), 64);
    assert!(matches!(
        server.next().await,
        Seen::Connected(Admission::Fresh)
    ));
    assert!(!server.socket_dir().join("token").exists());

    // Events flow once connected.
    let event = r#"{"type":"heartbeat","seq_sent":0}"#;
    client.send(Message::text(event)).await.unwrap();
    assert!(matches!(
        server.next().await,
        Seen::Message(AgentMessage::Heartbeat { seq_sent: 0 })
    ));
}

#[tokio::test]
async fn wrong_token_is_rejected() {
    let (mut server, _token) = new_server();
    let mut client = connect(&server.socket_dir()).await;
    let reply = handshake(&mut client, &"0".repeat(64), None).await;
    assert_eq!(
        reply,
        ControllerMessage::Reject {
            reason: RejectReason::BadToken
        }
    );
    assert_eq!(read_reply(&mut client).await, Err(Some(1008)));
    assert!(matches!(server.next().await, Seen::Rejected("bad_token")));
}

#[tokio::test]
async fn token_replay_is_rejected() {
    let (mut server, token) = new_server();
    let mut first = connect(&server.socket_dir()).await;
    handshake(&mut first, &token, None).await;
    assert!(matches!(
        server.next().await,
        Seen::Connected(Admission::Fresh)
    ));
    first.close(None).await.unwrap();
    drop(first);
    assert!(matches!(server.next().await, Seen::Closed));

    let mut replay = connect(&server.socket_dir()).await;
    let reply = handshake(&mut replay, &token, None).await;
    assert_eq!(
        reply,
        ControllerMessage::Reject {
            reason: RejectReason::BadToken
        }
    );
    assert!(matches!(
        server.next().await,
        Seen::Rejected("token_replay")
    ));
}

#[tokio::test]
async fn forged_execution_id_is_rejected() {
    let (mut server, token) = new_server();
    let mut client = connect(&server.socket_dir()).await;
    client
        .send(Message::text(hello(
            "11111111-2222-3333-4444-555555555555",
            &token,
            None,
        )))
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut client).await,
        Ok(ControllerMessage::Reject {
            reason: RejectReason::WrongExecution
        })
    );
    assert!(matches!(
        server.next().await,
        Seen::Rejected("wrong_execution")
    ));
    // The token was not burnt by the forged hello.
    assert!(server.socket_dir().join("token").exists());
}

#[tokio::test]
async fn wrong_protocol_version_is_rejected() {
    let (mut server, token) = new_server();
    let mut client = connect(&server.socket_dir()).await;
    let text = hello(EXECUTION_ID, &token, None).replace(
        &format!("\"version\":{}", protocol::PROTOCOL_VERSION),
        "\"version\":999",
    );
    client.send(Message::text(text)).await.unwrap();
    // The codec refuses the version before a hello exists: close 1008.
    assert_eq!(read_reply(&mut client).await, Err(Some(1008)));
    assert!(matches!(
        server.next().await,
        Seen::Rejected("version_mismatch")
    ));
}

async fn connected_client() -> (Server, Client) {
    let (mut server, token) = new_server();
    let mut client = connect(&server.socket_dir()).await;
    handshake(&mut client, &token, None).await;
    assert!(matches!(
        server.next().await,
        Seen::Connected(Admission::Fresh)
    ));
    (server, client)
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let (mut server, mut client) = connected_client().await;
    let huge = "x".repeat(protocol::MAX_FRAME_BYTES + 1);
    // The client may see the close before it finishes writing.
    let _ = client.send(Message::text(huge)).await;
    assert_eq!(read_reply(&mut client).await, Err(Some(1009)));
    match server.next().await {
        Seen::Violation(reason, true) => assert_eq!(reason, "frame_too_large"),
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let (mut server, mut client) = connected_client().await;
    let frame = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
    client.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(read_reply(&mut client).await, Err(Some(1007)));
    match server.next().await {
        Seen::Violation(reason, true) => assert_eq!(reason, "invalid_utf8"),
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[tokio::test]
async fn too_deep_json_is_a_protocol_error() {
    let (mut server, mut client) = connected_client().await;
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    client.send(Message::text(deep)).await.unwrap();
    assert_eq!(read_reply(&mut client).await, Err(Some(1008)));
    match server.next().await {
        Seen::Violation(reason, true) => assert_eq!(reason, "json_too_deep"),
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[tokio::test]
async fn binary_frame_closes_with_1003() {
    let (mut server, mut client) = connected_client().await;
    client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(read_reply(&mut client).await, Err(Some(1003)));
    match server.next().await {
        Seen::Violation(reason, true) => assert_eq!(reason, "binary_frame"),
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[tokio::test]
async fn half_open_handshake_times_out_and_frees_the_listener() {
    let (mut server, token) = new_server();
    // Connect and say nothing at all.
    let _silent = UnixStream::connect(server.socket_dir().join("agent.sock"))
        .await
        .unwrap();
    assert!(matches!(
        server.next().await,
        Seen::Rejected("handshake_timeout")
    ));
    // The real agent still gets in afterwards.
    let mut client = connect(&server.socket_dir()).await;
    session_key_of(&handshake(&mut client, &token, None).await);
    assert!(matches!(
        server.next().await,
        Seen::Connected(Admission::Fresh)
    ));
}

#[tokio::test]
async fn reconnect_with_the_session_key_resumes_and_keys_rotate() {
    let (mut server, token) = new_server();
    let mut first = connect(&server.socket_dir()).await;
    let first_key = session_key_of(&handshake(&mut first, &token, None).await);
    assert!(matches!(
        server.next().await,
        Seen::Connected(Admission::Fresh)
    ));
    drop(first);
    assert!(matches!(
        server.next().await,
        Seen::Closed | Seen::Violation(..)
    ));

    let mut second = connect(&server.socket_dir()).await;
    let resume = Resume {
        session_key: first_key.clone(),
        last_acked_seq: 7,
    };
    let second_key = session_key_of(&handshake(&mut second, "", Some(resume)).await);
    assert_ne!(second_key, first_key);
    assert!(matches!(
        server.next().await,
        Seen::Connected(Admission::Resumed { last_acked_seq: 7 })
    ));
    drop(second);
    assert!(matches!(
        server.next().await,
        Seen::Closed | Seen::Violation(..)
    ));

    // The first key was rotated away.
    let mut stale = connect(&server.socket_dir()).await;
    let stale_resume = Resume {
        session_key: first_key,
        last_acked_seq: 7,
    };
    assert_eq!(
        handshake(&mut stale, "", Some(stale_resume)).await,
        ControllerMessage::Reject {
            reason: RejectReason::BadSessionKey
        }
    );
    assert!(matches!(
        server.next().await,
        Seen::Rejected("bad_session_key")
    ));
}

#[tokio::test]
async fn reopened_endpoint_admits_only_the_persisted_session_key() {
    let run_dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let endpoint = LinkEndpoint::create(run_dir.path(), EXECUTION_ID).unwrap();
    let token = std::fs::read_to_string(run_dir.path().join(EXECUTION_ID).join("token")).unwrap();
    let mut server = serve(endpoint, run_dir.clone());
    let mut first = connect(&server.socket_dir()).await;
    let key = session_key_of(&handshake(&mut first, &token, None).await);
    assert!(matches!(
        server.next().await,
        Seen::Connected(Admission::Fresh)
    ));
    drop(first);

    // "Restart": the old listener dies; a new one on the same path knows
    // only the session key's hash.
    server.task.abort();
    let _ = (&mut server.task).await;
    drop(server);
    let reopened = LinkEndpoint::reopen(
        run_dir.path(),
        EXECUTION_ID,
        Some(controller::agent_link::sha256_hex(&key)),
        None,
    )
    .unwrap();
    let mut server = serve(reopened, run_dir.clone());
    let mut token_again = connect(&server.socket_dir()).await;
    assert_eq!(
        handshake(&mut token_again, &token, None).await,
        ControllerMessage::Reject {
            reason: RejectReason::BadToken
        }
    );
    assert!(matches!(
        server.next().await,
        Seen::Rejected("token_replay")
    ));
    let mut resumed = connect(&server.socket_dir()).await;
    let resume = Resume {
        session_key: key,
        last_acked_seq: 3,
    };
    session_key_of(&handshake(&mut resumed, "", Some(resume)).await);
    assert!(matches!(
        server.next().await,
        Seen::Connected(Admission::Resumed { last_acked_seq: 3 })
    ));
}

#[tokio::test]
async fn socket_refuses_other_uids() {
    // A step runs as an unprivileged uid: connecting to the 0600 root socket
    // is EACCES. Checked with a real setuid child, as on the host.
    let (server, _token) = new_server();
    let socket = server.socket_dir().join("agent.sock");
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import socket,errno\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect({:?})\n  print('connected')\nexcept OSError as e:\n  print(errno.errorcode[e.errno])",
            socket.display().to_string()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "EACCES");
}

// ---------------------------------------------------------------- relay

use controller::relay::{Hub, OUTPUT_CAP_SLACK_BYTES, Relay};
use controller::store::{ExecutionStatus, ModelCallStatus, NewExecution, Store};
use protocol::{ControllerEvent, EventBody, ExecutionEvent, FinalStatus};

async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("kiln.db"), 1024 * 1024)
        .await
        .unwrap();
    (dir, store)
}

async fn new_execution(store: &Store) -> String {
    let token = store.create_token("test", true).await.unwrap();
    store
        .create_execution(NewExecution {
            owner_token_id: token.info.id,
            recipe_source: "name: x\n".to_owned(),
            gallery_name: None,
            inputs: serde_json::Map::new(),
            files: std::collections::BTreeMap::new(),
            class: "default".to_owned(),
        })
        .await
        .unwrap()
        .id
}

fn output(step_id: &str, text: &str) -> EventBody {
    EventBody::Engine(
        serde_json::from_value(serde_json::json!({
            "type": "step_output", "step_id": step_id, "stream": "stdout", "text": text,
        }))
        .unwrap(),
    )
}

fn kinds(events: &[ExecutionEvent]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|event| {
            let body = serde_json::to_value(&event.body).unwrap();
            (
                event.seq,
                format!(
                    "{}/{}",
                    body["source"].as_str().unwrap(),
                    body["event"]["type"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn relay_persists_in_order_then_publishes_the_same_events() {
    let (_dir, store) = temp_store().await;
    let execution_id = new_execution(&store).await;
    let hub: Hub<ExecutionEvent> = Hub::new(1024);
    let mut watcher = hub.subscribe(&execution_id);
    let mut relay = Relay::open(store.clone(), hub.clone(), &execution_id, 1 << 20)
        .await
        .unwrap();
    relay
        .record_controller(ControllerEvent::Queued {})
        .await
        .unwrap();
    // One batch of 300 (one transaction), then two more single events.
    let batch: Vec<EventBody> = (0..300)
        .map(|idx| output("a", &format!("line {idx}\n")))
        .collect();
    assert_eq!(relay.record(batch).await.unwrap(), 300);
    relay.record(vec![output("b", "x")]).await.unwrap();
    relay
        .record_controller(ControllerEvent::Finished {
            status: FinalStatus::Succeeded,
            reason: None,
        })
        .await
        .unwrap();

    let stored = store.events_after(&execution_id, 0, 1000).await.unwrap();
    assert_eq!(stored.len(), 303);
    let seqs: Vec<u64> = stored.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (1..=303).collect::<Vec<u64>>());
    assert_eq!(kinds(&stored)[0], (1, "controller/queued".to_owned()));
    assert_eq!(kinds(&stored)[302], (303, "controller/finished".to_owned()));
    let mut published = Vec::new();
    while let Ok(event) = watcher.try_recv() {
        published.push(event);
    }
    assert_eq!(published, stored);

    // A new writer (after a restart) continues the sequence.
    let mut reopened = Relay::open(store.clone(), hub, &execution_id, 1 << 20)
        .await
        .unwrap();
    reopened.record(vec![output("c", "y")]).await.unwrap();
    assert_eq!(store.last_event_seq(&execution_id).await.unwrap(), 304);
}

#[tokio::test]
async fn relay_output_cap_truncates_once_with_an_explicit_event() {
    let (_dir, store) = temp_store().await;
    let execution_id = new_execution(&store).await;
    let cap = 1000;
    let mut relay = Relay::open(store.clone(), Hub::new(8), &execution_id, cap)
        .await
        .unwrap();
    let chunk = "z".repeat(usize::try_from((cap + OUTPUT_CAP_SLACK_BYTES) / 2).unwrap());
    let bodies = vec![
        output("flood", &chunk),
        output("flood", &chunk),
        output("flood", &chunk),
        output("flood", &chunk),
        EventBody::Controller(ControllerEvent::Finished {
            status: FinalStatus::Succeeded,
            reason: None,
        }),
    ];
    assert_eq!(relay.record(bodies).await.unwrap(), 4);
    let stored = store.events_after(&execution_id, 0, 100).await.unwrap();
    assert_eq!(
        kinds(&stored),
        vec![
            (1, "engine/step_output".to_owned()),
            (2, "engine/step_output".to_owned()),
            (3, "engine/output_truncated".to_owned()),
            (4, "controller/finished".to_owned()),
        ]
    );
    let truncated = serde_json::to_value(&stored[2].body).unwrap();
    assert_eq!(truncated["event"]["limit_bytes"], 1000);
    assert_eq!(truncated["event"]["step_id"], "flood");
}

// ---------------------------------------------------------------- queue

#[tokio::test]
async fn queue_slots_honour_the_concurrency_limit() {
    let slots = controller::queue::Slots::new(2);
    let first = slots.acquire().await;
    let _second = slots.acquire().await;
    assert!(slots.try_acquire().is_none());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), slots.acquire())
            .await
            .is_err()
    );
    drop(first);
    assert!(slots.try_acquire().is_some());
}

#[tokio::test]
async fn uid_pool_gives_distinct_uids_and_reuses_released_ones() {
    let pool = controller::launcher::UidPool::new(200_000, 200_002);
    pool.reserve(200_001);
    assert_eq!(pool.allocate(), Some(200_000));
    assert_eq!(pool.allocate(), Some(200_002));
    assert_eq!(pool.allocate(), None);
    pool.release(200_000);
    assert_eq!(pool.allocate(), Some(200_000));
}

#[tokio::test]
async fn final_status_is_immutable_and_reconcile_leaves_it_alone() {
    let (_dir, store) = temp_store().await;
    let execution_id = new_execution(&store).await;
    let claimed = store.claim_next_queued().await.unwrap().unwrap();
    assert_eq!(claimed.id, execution_id);
    store
        .set_status(&execution_id, ExecutionStatus::Succeeded, None)
        .await
        .unwrap();
    assert!(
        store
            .set_status(&execution_id, ExecutionStatus::AgentLost, Some("late"))
            .await
            .is_err()
    );
    assert!(store.list_unfinished().await.unwrap().is_empty());
    let execution = store
        .get_execution(&execution_id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(execution.status, ExecutionStatus::Succeeded);
}

// ---------------------------------------------------- end to end (Docker)
//
// A real controller (the same `serve::start` as `kiln serve`), real dockerd,
// the real agent in `kiln-minimal`. Each test uses its own data dir, so its
// own `kiln.instance` label; every container is checked gone at the end.

use std::sync::Arc;

use controller::config::Config;
use controller::launcher::CancelOutcome;
use controller::serve::{self, Controller};
use tokio_util::sync::CancellationToken;

const THREE_STEPS: &str = r#"name: three-steps
description: Three bash steps.
version: 1.0.0
steps:
  - id: one
    type: bash
    command: echo one
  - id: two
    type: bash
    command: echo two >&2
  - id: three
    type: bash
    command: printf three
"#;

const SLEEPER: &str = r#"name: sleeper
description: A step that sleeps long enough to be cancelled or outlive a restart.
version: 1.0.0
steps:
  - id: first
    type: bash
    command: echo first
  - id: nap
    type: bash
    command: sleep SECONDS; echo awake
"#;

struct Embedded {
    controller: Controller,
    shutdown: CancellationToken,
    /// Removes the test's containers even when the test fails.
    guard: ContainerGuard,
}

/// The kiln-minimal image built from THIS tree's agent, by its content tag
/// (`:latest` may point at another build on a shared machine).
async fn minimal_image() -> String {
    static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    IMAGE
        .get_or_init(|| async {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let agent = workspace.join("target/x86_64-unknown-linux-gnu/release/kiln-agent");
            assert!(
                agent.exists(),
                "build the agent first: RUSTFLAGS='-C target-feature=+crt-static' cargo build -p sandbox-agent --release --target x86_64-unknown-linux-gnu"
            );
            let sandbox = controller::sandbox::Sandbox::connect()
                .await
                .expect("dockerd is reachable");
            let inputs = controller::sandbox::image::ImageInputs::new(agent, workspace.join("runtime-image"));
            controller::sandbox::image::ensure_image(
                sandbox.docker(),
                controller::sandbox::image::ImageKind::Minimal,
                &inputs,
            )
            .await
            .expect("kiln-minimal builds")
            .tag
        })
        .await
        .clone()
}

async fn test_config(root: &Path) -> Arc<Config> {
    let mut config = Config::load(None, &std::collections::BTreeMap::new()).unwrap();
    config.server.data_dir = root.join("data");
    config.server.run_dir = root.join("run");
    let image = minimal_image().await;
    for class in config.sandbox.classes.values_mut() {
        class.image = image.clone();
    }
    Arc::new(config)
}

async fn start_embedded(root: &Path) -> Embedded {
    controller::cli::init_tracing(true);
    let shutdown = CancellationToken::new();
    let controller = serve::start(test_config(root).await, shutdown.clone())
        .await
        .expect("the controller starts (needs dockerd and the kiln-minimal image)");
    let guard = ContainerGuard {
        instance: controller.launcher.instance.clone(),
    };
    Embedded {
        controller,
        shutdown,
        guard,
    }
}

impl Embedded {
    async fn submit(&self, recipe: &str) -> String {
        let store = &self.controller.launcher.store;
        let token = store.create_token("e2e", true).await.unwrap();
        self.submit_as(&token.info.id, recipe).await
    }

    /// Submit as the owner of the token with id `token_id`.
    async fn submit_as(&self, token_id: &str, recipe: &str) -> String {
        let store = &self.controller.launcher.store;
        let execution = store
            .create_execution(NewExecution {
                owner_token_id: token_id.to_owned(),
                recipe_source: recipe.to_owned(),
                gallery_name: None,
                inputs: serde_json::Map::new(),
                files: std::collections::BTreeMap::new(),
                class: "default".to_owned(),
            })
            .await
            .unwrap();
        self.controller.launcher.control.wake();
        execution.id
    }

    /// `GET path` through the API router with `token`; asserts 200 and
    /// returns the body.
    async fn api_get(&self, path: &str, token: &str) -> Vec<u8> {
        let request = axum::http::Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = tower::ServiceExt::oneshot(
            controller::api::app(self.controller.state.clone()),
            request,
        )
        .await
        .unwrap();
        assert_eq!(response.status(), axum::http::StatusCode::OK, "GET {path}");
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    async fn wait_for_event(&self, execution_id: &str, kind: &str, step_id: &str) {
        for _ in 0..600 {
            let events = self
                .controller
                .launcher
                .store
                .events_after(execution_id, 0, 1000)
                .await
                .unwrap();
            let found = events.iter().any(|event| {
                let body = serde_json::to_value(&event.body).unwrap();
                body["event"]["type"] == kind && body["event"]["step_id"] == step_id
            });
            if found {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {kind} event for step {step_id}");
    }

    async fn wait_final(&self, execution_id: &str) -> ExecutionStatus {
        for _ in 0..1200 {
            let execution = self
                .controller
                .launcher
                .store
                .get_execution(execution_id, None)
                .await
                .unwrap()
                .unwrap();
            if execution.status.is_final() {
                return execution.status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("execution {execution_id} did not finish");
    }

    async fn n_containers(&self) -> usize {
        let launcher = &self.controller.launcher;
        launcher
            .sandbox
            .list_labelled(&launcher.instance)
            .await
            .unwrap()
            .len()
    }

    /// Stop like SIGTERM (containers keep running); the returned guard
    /// still removes them when the test ends.
    async fn stop(self) -> ContainerGuard {
        self.shutdown.cancel();
        serve::drain(&self.controller.tasks).await;
        self.guard
    }
}

/// Removes every container of the test's instance even when the test fails.
struct ContainerGuard {
    instance: String,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=kiln.instance={}", self.instance))
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", id])
                .output();
        }
    }
}

async fn all_events(embedded: &Embedded, execution_id: &str) -> Vec<ExecutionEvent> {
    embedded
        .controller
        .launcher
        .store
        .events_after(execution_id, 0, 1000)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_bash_steps_give_the_exact_event_sequence() {
    let root = tempfile::tempdir().unwrap();
    let embedded = start_embedded(root.path()).await;
    let execution_id = embedded.submit(THREE_STEPS).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let events = all_events(&embedded, &execution_id).await;
    let expected: Vec<(u64, String)> = [
        "controller/queued",
        "controller/container_started",
        "controller/agent_connected",
        "sandbox/agent_started",
        "engine/execution_started",
        "engine/step_started",
        "engine/step_output",
        "engine/step_completed",
        "engine/step_started",
        "engine/step_output",
        "engine/step_completed",
        "engine/step_started",
        "engine/step_output",
        "engine/step_completed",
        "engine/execution_completed",
        "sandbox/resource_usage",
        "controller/finished",
    ]
    .iter()
    .enumerate()
    .map(|(idx, kind)| (idx as u64 + 1, (*kind).to_owned()))
    .collect();
    assert_eq!(kinds(&events), expected);
    let outputs: Vec<(String, String, String)> = events
        .iter()
        .filter_map(|event| {
            let body = serde_json::to_value(&event.body).unwrap();
            (body["event"]["type"] == "step_output").then(|| {
                (
                    body["event"]["step_id"].as_str().unwrap().to_owned(),
                    body["event"]["stream"].as_str().unwrap().to_owned(),
                    body["event"]["text"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("one".into(), "stdout".into(), "one\n".into()),
            ("two".into(), "stderr".into(), "two\n".into()),
            ("three".into(), "stdout".into(), "three".into()),
        ]
    );
    let finished = serde_json::to_value(&events.last().unwrap().body).unwrap();
    assert_eq!(finished["event"]["status"], "succeeded");
    assert_eq!(embedded.n_containers().await, 0);
    assert!(!root.path().join("run").join(&execution_id).exists());
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_step_gives_cancelled_and_removes_the_container() {
    let root = tempfile::tempdir().unwrap();
    let embedded = start_embedded(root.path()).await;
    let execution_id = embedded.submit(&SLEEPER.replace("SECONDS", "60")).await;
    embedded
        .wait_for_event(&execution_id, "step_started", "nap")
        .await;
    assert_eq!(
        embedded
            .controller
            .launcher
            .control
            .cancel(&execution_id)
            .await,
        CancelOutcome::Signalled
    );
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Cancelled
    );
    let events = all_events(&embedded, &execution_id).await;
    let kinds = kinds(&events);
    assert!(
        kinds
            .iter()
            .any(|(_, kind)| kind == "controller/cancel_requested")
    );
    assert_eq!(kinds.last().unwrap().1, "controller/finished");
    assert!(!kinds.iter().any(|(_, kind)| kind == "engine/step_output"
        && serde_json::to_value(&events[0].body).unwrap()["event"]["text"] == "awake\n"));
    assert_eq!(embedded.n_containers().await, 0);
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_takes_the_agent_back_without_gap_or_duplicate() {
    let root = tempfile::tempdir().unwrap();
    let (execution_id, _guard) = nap_then_stop(root.path(), 4).await;

    // The container outlived its controller.
    let second = start_embedded(root.path()).await;
    assert_eq!(
        second.controller.reconciled.taken_back,
        vec![execution_id.clone()]
    );
    assert_eq!(
        second.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let events = all_events(&second, &execution_id).await;
    assert_contiguous(&events);
    let kinds = kinds(&events);
    let count = |wanted: &str| kinds.iter().filter(|(_, kind)| kind == wanted).count();
    assert_eq!(count("engine/step_started"), 2);
    assert_eq!(count("engine/step_completed"), 2);
    assert_eq!(count("engine/execution_completed"), 1);
    assert_eq!(count("controller/agent_connected"), 2);
    assert_eq!(count("sandbox/agent_reconnected"), 1);
    assert_eq!(kinds.last().unwrap().1, "controller/finished");
    assert_eq!(second.n_containers().await, 0);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_finishes_a_running_execution_whose_container_is_gone() {
    let root = tempfile::tempdir().unwrap();
    let first = start_embedded(root.path()).await;
    let execution_id = first.submit(&SLEEPER.replace("SECONDS", "60")).await;
    first
        .wait_for_event(&execution_id, "step_started", "nap")
        .await;
    let container_id = first
        .controller
        .launcher
        .store
        .get_execution(&execution_id, None)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    let _guard = first.stop().await;
    // Simulate the container dying while no controller runs.
    let removed = std::process::Command::new("docker")
        .args(["rm", "-f", &container_id])
        .output()
        .unwrap();
    assert!(removed.status.success());

    let second = start_embedded(root.path()).await;
    assert_eq!(
        second.controller.reconciled.finished,
        vec![(execution_id.clone(), FinalStatus::AgentLost)]
    );
    let execution = second
        .controller
        .launcher
        .store
        .get_execution(&execution_id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(execution.status, ExecutionStatus::AgentLost);
    assert_eq!(
        execution.status_detail.as_deref(),
        Some("the container disappeared while the controller was down")
    );
    // The socket directory was an orphan and is gone.
    assert_eq!(second.controller.reconciled.n_socket_dirs_reaped, 1);
    second.stop().await;
    // A third start changes nothing: final statuses are final.
    let third = start_embedded(root.path()).await;
    assert!(third.controller.reconciled.finished.is_empty());
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_call_left_open_by_a_killed_controller_is_closed_at_the_next_start() {
    let root = tempfile::tempdir().unwrap();
    let (execution_id, _guard) = nap_then_stop(root.path(), 4).await;
    // What a controller killed in mid-call leaves behind: a row still
    // `running`, and a `model_call_started` with no end.
    let config = test_config(root.path()).await;
    let store = Store::open_sqlite(&config.database_path(), 1 << 20)
        .await
        .unwrap();
    let call = controller::store::NewModelCall {
        execution_id: execution_id.clone(),
        request_id: 7,
        step_id: "nap".to_owned(),
        user_id: "someone".to_owned(),
        provider: "scripted".to_owned(),
        model: "test-model".to_owned(),
        profile: "self".to_owned(),
        started_at_ms: controller::store::now_ms(),
    };
    store.begin_model_call(&call).await.unwrap();
    drop(store);

    let second = start_embedded(root.path()).await;
    assert_eq!(
        second.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let events = all_events(&second, &execution_id).await;
    assert_contiguous(&events);
    assert_eq!(
        events_of(&events, "model_call_finished"),
        vec![serde_json::json!({
            "type": "model_call_finished", "step_id": "nap", "request_id": 7,
            "outcome": "interrupted", "provider": "scripted", "model": "test-model",
            "message": "the controller stopped during the call",
            "input_tokens": 0, "output_tokens": 0, "duration_ms": 0,
        })]
    );
    let calls = second
        .controller
        .launcher
        .store
        .model_calls(&execution_id)
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, ModelCallStatus::Interrupted);
    second.stop().await;
}

/// Starts a controller, submits [`SLEEPER`] napping `seconds`, and stops the
/// controller once the nap began: the container outlives it. The guard
/// removes the container when the test ends.
async fn nap_then_stop(root: &Path, seconds: u32) -> (String, ContainerGuard) {
    let first = start_embedded(root).await;
    let execution_id = first
        .submit(&SLEEPER.replace("SECONDS", &seconds.to_string()))
        .await;
    first
        .wait_for_event(&execution_id, "step_started", "nap")
        .await;
    (execution_id, first.stop().await)
}

/// Stored events are numbered 1..=n: no gap, no duplicate.
fn assert_contiguous(events: &[ExecutionEvent]) {
    let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<u64>>());
}

const RELEASE_APPROVAL: &str = include_str!("../../gallery/release-approval.yaml");

impl Embedded {
    async fn wait_gate(&self, execution_id: &str, stage: &str) {
        for _ in 0..600 {
            if self
                .controller
                .launcher
                .control
                .is_gate_pending(execution_id, stage)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gate {stage} never opened");
    }
}

fn decision(approve: bool, message: Option<&str>) -> controller::launcher::Decision {
    controller::launcher::Decision {
        approve,
        message: message.map(str::to_owned),
        by: "alice".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gate_pauses_and_approve_continues() {
    let root = tempfile::tempdir().unwrap();
    let embedded = start_embedded(root.path()).await;
    let execution_id = embedded.submit(RELEASE_APPROVAL).await;
    embedded.wait_gate(&execution_id, "build").await;
    let control = &embedded.controller.launcher.control;
    control
        .decide_approval(&execution_id, "build", decision(true, Some("ship it")))
        .await
        .unwrap();
    assert!(matches!(
        control
            .decide_approval(&execution_id, "build", decision(false, None))
            .await,
        Err(controller::launcher::ApprovalError::AlreadyDecided { .. })
            | Err(controller::launcher::ApprovalError::NotPending { .. })
    ));
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let events = all_events(&embedded, &execution_id).await;
    let published = events.iter().any(|event| {
        let body = serde_json::to_value(&event.body).unwrap();
        body["event"]["type"] == "step_output"
            && body["event"]["text"] == "published 1.4.0 (ship it)\n"
    });
    assert!(published);
    let gate = embedded
        .controller
        .launcher
        .store
        .get_approval(&execution_id, "build")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gate.decided_by.as_deref(), Some("alice"));
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_deny_is_final() {
    let root = tempfile::tempdir().unwrap();
    let embedded = start_embedded(root.path()).await;
    let execution_id = embedded.submit(RELEASE_APPROVAL).await;
    embedded.wait_gate(&execution_id, "build").await;
    let control = &embedded.controller.launcher.control;
    control
        .decide_approval(&execution_id, "build", decision(false, Some("not today")))
        .await
        .unwrap();
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Denied
    );
    assert!(
        control
            .decide_approval(&execution_id, "build", decision(true, None))
            .await
            .is_err()
    );
    assert_eq!(embedded.n_containers().await, 0);
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gate_timeout_fires_on_its_own() {
    let root = tempfile::tempdir().unwrap();
    let embedded = start_embedded(root.path()).await;
    let recipe = RELEASE_APPROVAL.replace("timeout: 3600", "timeout: 1");
    let execution_id = embedded.submit(&recipe).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Denied
    );
    let gate = embedded
        .controller
        .launcher
        .store
        .get_approval(&execution_id, "build")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gate.decided_by.as_deref(), Some("timeout"));
    assert_eq!(
        gate.decision,
        Some(controller::store::ApprovalDecision::Deny)
    );
    embedded.stop().await;
}

// ---------------------------------------------------------------- the CLI

fn kiln() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    command
}

#[test]
fn cli_validate_exits_65_on_errors_and_0_on_a_valid_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: x\nversion: 1.0.0\nsteps:\n  - id: a\n    type: bash\n    timout: 3\n",
    )
    .unwrap();
    let output = kiln().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(output.status.code(), Some(65));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("unknown-field"), "{text}");
    assert!(text.contains(":6:5"), "{text}");

    let json = kiln()
        .args(["validate", "--json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(65));
    let diagnostics: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        diagnostics
            .as_array()
            .unwrap()
            .iter()
            .any(|diagnostic| diagnostic["code"] == "unknown-field" && diagnostic["line"] == 6)
    );

    let good = kiln()
        .args(["validate", "gallery/hello-world.yaml"])
        .output()
        .unwrap();
    assert_eq!(good.status.code(), Some(0));
}

#[test]
fn cli_validate_warns_about_unknown_agents_and_a_missing_provider() {
    // Issue 6 item 6: validation judges the recipe itself; the missing
    // provider is a warning there (a server refuses such a submission).
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("agent.yaml");
    std::fs::write(
        &recipe,
        "name: x\ndescription: d\nversion: 1.0.0\nsteps:\n  - id: ask\n    agent: foundation:nonexistent\n    prompt: hi\n",
    )
    .unwrap();
    let output = kiln()
        .args(["validate", "--json"])
        .arg(&recipe)
        .env_remove("KILN_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "warnings only");
    let diagnostics: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let found: Vec<(String, String)> = diagnostics
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap().to_owned(),
                d["severity"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("unknown-agent".to_owned(), "warning".to_owned()),
            ("no-model-provider".to_owned(), "warning".to_owned()),
        ]
    );
}

#[test]
fn cli_serve_exits_64_naming_the_key_before_touching_docker() {
    let output = kiln()
        .arg("serve")
        .env("KILN_QUEUE__CONCURENCY", "3")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("`queue.concurency`"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_embedded_mirrors_the_execution_status() {
    let image = minimal_image().await;
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing.yaml");
    std::fs::write(
        &failing,
        "name: failing\ndescription: Fails.\nversion: 1.0.0\nsteps:\n  - id: boom\n    type: bash\n    command: echo before; exit 3\n",
    )
    .unwrap();
    let run = |recipe: std::path::PathBuf| {
        let image = image.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                kiln()
                    .args(["run", "--json"])
                    .arg(recipe)
                    .env("KILN_SANDBOX__CLASSES__DEFAULT__IMAGE", &image)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let hello = run(Path::new("gallery/hello-world.yaml").to_path_buf()).await;
    assert_eq!(
        hello.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&hello.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&hello.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.last().unwrap()["status"], "succeeded");
    assert_eq!(lines[0]["body"]["event"]["type"], "queued");

    let failed = run(failing).await;
    assert_eq!(
        failed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_runs_no_more_than_the_concurrency_limit() {
    let root = tempfile::tempdir().unwrap();
    let mut config = (*test_config(root.path()).await).clone();
    config.queue.concurrency = 1;
    let shutdown = CancellationToken::new();
    let controller = serve::start(Arc::new(config), shutdown.clone())
        .await
        .unwrap();
    let embedded = Embedded {
        guard: ContainerGuard {
            instance: controller.launcher.instance.clone(),
        },
        controller,
        shutdown,
    };
    let sleeper = SLEEPER.replace("SECONDS", "2");
    let first = embedded.submit(&sleeper).await;
    let second = embedded.submit(&sleeper).await;
    embedded.wait_for_event(&first, "step_started", "nap").await;
    let waiting = embedded
        .controller
        .launcher
        .store
        .get_execution(&second, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waiting.status, ExecutionStatus::Queued);
    assert_eq!(embedded.n_containers().await, 1);
    assert_eq!(
        embedded.wait_final(&first).await,
        ExecutionStatus::Succeeded
    );
    assert_eq!(
        embedded.wait_final(&second).await,
        ExecutionStatus::Succeeded
    );
    assert_eq!(embedded.n_containers().await, 0);
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_reaps_containers_without_a_live_execution() {
    let root = tempfile::tempdir().unwrap();
    let first = start_embedded(root.path()).await;
    let instance = first.controller.launcher.instance.clone();
    let _guard = first.stop().await;
    // A container with our labels but no execution row (e.g. a crash between
    // create and the store write).
    let created = std::process::Command::new("docker")
        .args(["create", "--network", "none", "--label"])
        .arg(format!("kiln.instance={instance}"))
        .args(["--label", "kiln.execution=ex_ghost", &minimal_image().await])
        .output()
        .unwrap();
    assert!(created.status.success());
    std::fs::create_dir(root.path().join("run").join("ex_ghost")).unwrap();

    let second = start_embedded(root.path()).await;
    assert_eq!(second.controller.reconciled.n_containers_reaped, 1);
    assert_eq!(second.controller.reconciled.n_socket_dirs_reaped, 1);
    assert_eq!(second.n_containers().await, 0);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_arrive_verified_and_stored_by_name() {
    let root = tempfile::tempdir().unwrap();
    let embedded = start_embedded(root.path()).await;
    let recipe = include_str!("../../gallery/artifacts.yaml");
    let execution_id = embedded.submit(recipe).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let store = &embedded.controller.launcher.store;
    let names: Vec<(String, u64)> = store
        .list_artifacts(&execution_id)
        .await
        .unwrap()
        .into_iter()
        .map(|artifact| (artifact.name, artifact.size_bytes))
        .collect();
    assert_eq!(
        names,
        vec![
            ("report.txt".to_owned(), 16),
            ("squares.csv".to_owned(), 31)
        ]
    );
    let (_, csv) = store
        .get_artifact(&execution_id, "squares.csv")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(csv, b"n,square\n1,1\n2,4\n3,9\n4,16\n5,25\n");
    let events = all_events(&embedded, &execution_id).await;
    let n_stored = kinds(&events)
        .iter()
        .filter(|(_, kind)| kind == "sandbox/artifact_stored")
        .count();
    assert_eq!(n_stored, 2);
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_of_a_step_is_reported_as_oom_even_though_the_agent_survives() {
    let root = tempfile::tempdir().unwrap();
    let mut config = (*test_config(root.path()).await).clone();
    for class in config.sandbox.classes.values_mut() {
        class.memory_mib = 64;
    }
    let shutdown = CancellationToken::new();
    let controller = serve::start(Arc::new(config), shutdown.clone())
        .await
        .unwrap();
    let embedded = Embedded {
        guard: ContainerGuard {
            instance: controller.launcher.instance.clone(),
        },
        controller,
        shutdown,
    };
    let hog = "name: hog\ndescription: Fills memory.\nversion: 1.0.0\nsteps:\n  - id: hog\n    type: bash\n    command: tail /dev/zero\n";
    let execution_id = embedded.submit(hog).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Oom
    );
    let events = all_events(&embedded, &execution_id).await;
    let kinds = kinds(&events);
    // The agent lived to report the step's death; the verdict still says oom.
    assert!(kinds.iter().any(|(_, kind)| kind == "engine/step_failed"));
    assert!(
        kinds
            .iter()
            .any(|(_, kind)| kind == "engine/execution_completed")
    );
    // The verdict comes from Docker's State.OOMKilled (the cgroup v1 counter
    // that the usage event carries is not reliable on this kernel).
    assert!(
        kinds
            .iter()
            .any(|(_, kind)| kind == "sandbox/resource_usage")
    );
    let finished = serde_json::to_value(&events.last().unwrap().body).unwrap();
    assert_eq!(finished["event"]["status"], "oom");
    assert_eq!(finished["event"]["reason"], "the memory limit was exceeded");
    assert_eq!(embedded.n_containers().await, 0);
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_class_connects_through_the_socket_identity_checks() {
    let root = tempfile::tempdir().unwrap();
    let mut config = (*test_config(root.path()).await).clone();
    for class in config.sandbox.classes.values_mut() {
        class.runtime = controller::config::RuntimeKind::Runsc;
        class.pids = 512;
    }
    let shutdown = CancellationToken::new();
    let controller = serve::start(Arc::new(config), shutdown.clone())
        .await
        .unwrap();
    let embedded = Embedded {
        guard: ContainerGuard {
            instance: controller.launcher.instance.clone(),
        },
        controller,
        shutdown,
    };
    let execution_id = embedded.submit(THREE_STEPS).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let events = all_events(&embedded, &execution_id).await;
    let started = serde_json::to_value(&events[1].body).unwrap();
    assert_eq!(started["event"]["type"], "container_started");
    assert_eq!(started["event"]["runtime"], "runsc");
    // No connection was refused on the way (peer uid and cgroup checks hold under gVisor).
    let audit = embedded
        .controller
        .launcher
        .store
        .list_audit(Some(&execution_id), 100)
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .all(|entry| entry.action != "connection_rejected")
    );
    assert_eq!(embedded.n_containers().await, 0);
    embedded.stop().await;
}

// ------------------------------------------- model gateway (end to end)
//
// Agent steps through the real controller, the real agent in Docker and the
// scripted provider server (a real local HTTP server, configured exactly as an
// operator configures one). The sandbox never holds the key: the canary key
// is checked absent from the events, the step's environment and the logs.

#[path = "gateway/provider.rs"]
#[allow(dead_code)]
mod provider;

use controller::gateway::{ProviderConfig, ProviderKind};
use provider::{Script, TestProvider};

const CANARY_KEY: &str = "sk-kiln-canary-7d3f9a1c2b4e6f80";
const CANARY_ENV: &str = "KILN_E2E_CANARY_KEY";

fn scripted_provider(base_url: String) -> ProviderConfig {
    ProviderConfig {
        name: "scripted".to_owned(),
        kind: ProviderKind::OpenAi,
        base_url,
        api_key_env: Some(CANARY_ENV.to_owned()),
        api_key_file: None,
        models: std::collections::BTreeMap::new(),
        default_model: "test-model".to_owned(),
        allow_unlisted_models: false,
        request_timeout_secs: 120,
        connect_timeout_secs: 5,
    }
}

/// A controller whose gateway has one provider at `base_url`, with the
/// canary key passed as the operator would (an environment variable).
async fn start_with_provider(
    root: &Path,
    base_url: String,
    tune: impl FnOnce(&mut Config),
) -> Embedded {
    controller::cli::init_tracing(true);
    let mut config = (*test_config(root).await).clone();
    config.gateway.providers = vec![scripted_provider(base_url)];
    // Fast retries: the test asserts that they happen, not how long they take.
    config.gateway.retry.initial_backoff_ms = 20;
    config.gateway.retry.max_backoff_ms = 100;
    tune(&mut config);
    let env: std::collections::BTreeMap<String, String> =
        [(CANARY_ENV.to_owned(), CANARY_KEY.to_owned())].into();
    let gateway = serve::build_gateway(&config, &env).expect("the gateway builds");
    let shutdown = CancellationToken::new();
    let controller = serve::start_with_gateway(
        Arc::new(config),
        shutdown.clone(),
        serve::StartOptions::default(),
        gateway,
    )
    .await
    .expect("the controller starts (needs dockerd and the kiln-minimal image)");
    let guard = ContainerGuard {
        instance: controller.launcher.instance.clone(),
    };
    Embedded {
        controller,
        shutdown,
        guard,
    }
}

/// `(step_id, text)` of every step_output event, in order.
fn step_outputs(events: &[ExecutionEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|event| {
            let body = serde_json::to_value(&event.body).unwrap();
            (body["event"]["type"] == "step_output").then(|| {
                (
                    body["event"]["step_id"].as_str().unwrap().to_owned(),
                    body["event"]["text"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect()
}

/// All output of one step, joined (live token batches may split anywhere).
fn output_of(events: &[ExecutionEvent], step_id: &str) -> String {
    step_outputs(events)
        .into_iter()
        .filter(|(id, _)| id == step_id)
        .map(|(_, text)| text)
        .collect()
}

/// The live model text of one step, joined (token batches split anywhere).
fn model_output_of(events: &[ExecutionEvent], step_id: &str) -> String {
    events_of(events, "model_output")
        .into_iter()
        .filter(|event| event["step_id"] == step_id)
        .map(|event| event["text"].as_str().unwrap().to_owned())
        .collect()
}

/// The payloads of every event of one type, in order.
fn events_of(events: &[ExecutionEvent], kind: &str) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|event| serde_json::to_value(&event.body).unwrap())
        .filter(|body| body["event"]["type"] == kind)
        .map(|body| body["event"].clone())
        .collect()
}

/// Every model-call event lies inside its step: after the step's
/// `step_started`, before its `step_completed` / `step_failed`.
fn assert_model_events_inside_their_steps(events: &[ExecutionEvent]) {
    let mut open = std::collections::BTreeSet::new();
    for event in events {
        let body = serde_json::to_value(&event.body).unwrap();
        let kind = body["event"]["type"].as_str().unwrap().to_owned();
        let step_id = body["event"]["step_id"].as_str().unwrap_or("").to_owned();
        match kind.as_str() {
            "step_started" => {
                open.insert(step_id);
            }
            "step_completed" | "step_failed" => {
                open.remove(&step_id);
            }
            _ if kind.starts_with("model_") => assert!(
                open.contains(&step_id),
                "{kind} of {step_id} (seq {}) outside its step: {:?}",
                event.seq,
                kinds(events)
            ),
            _ => {}
        }
    }
}

/// A `model_call_finished` payload without its (unasserted) duration.
fn without_duration(mut event: serde_json::Value) -> serde_json::Value {
    assert!(event["duration_ms"].is_u64(), "{event}");
    event.as_object_mut().unwrap().remove("duration_ms");
    event
}

/// The `error` of the step_failed event of `step_id`.
fn step_error(events: &[ExecutionEvent], step_id: &str) -> String {
    events
        .iter()
        .find_map(|event| {
            let body = serde_json::to_value(&event.body).unwrap();
            (body["event"]["type"] == "step_failed" && body["event"]["step_id"] == step_id)
                .then(|| body["event"]["error"].as_str().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("no step_failed for {step_id}: {:?}", kinds(events)))
}

/// Kinds without the live output and the resource figures, for sequences.
fn kinds_without_output(events: &[ExecutionEvent]) -> Vec<String> {
    kinds(events)
        .into_iter()
        .map(|(_, kind)| kind)
        .filter(|kind| {
            !matches!(
                kind.as_str(),
                "engine/step_output" | "controller/model_output" | "sandbox/resource_usage"
            )
        })
        .collect()
}

const MIXED: &str = r#"name: mixed
description: Agent and bash steps pass outputs both ways.
version: 1.0.0
steps:
  - id: count
    type: bash
    command: printf 'three files'
    output: listing
  - id: summarize
    agent: foundation:explorer
    prompt: "Summarize: {{listing}}"
    output: summary
  - id: use
    type: bash
    command: printf 'got=%s' "$SUMMARY"
    env:
      SUMMARY: "{{summary}}"
  - id: environment
    type: bash
    command: env
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_bash_steps_pass_outputs_both_ways_and_no_key_reaches_the_sandbox() {
    let provider = TestProvider::start(vec![Script::stream(
        &["It has ", "three ", "files."],
        12,
        5,
    )])
    .await;
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |_| {}).await;
    let execution_id = embedded.submit(MIXED).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let events = all_events(&embedded, &execution_id).await;
    assert_eq!(
        kinds_without_output(&events),
        vec![
            "controller/queued",
            "controller/container_started",
            "controller/agent_connected",
            "sandbox/agent_started",
            "engine/execution_started",
            "engine/step_started",
            "engine/step_completed",
            "engine/step_started",
            "engine/warning",
            "controller/model_call_started",
            "controller/model_call_finished",
            "engine/step_completed",
            "engine/step_started",
            "engine/step_completed",
            "engine/step_started",
            "engine/step_completed",
            "engine/execution_completed",
            "controller/finished",
        ]
    );
    assert_model_events_inside_their_steps(&events);
    // The call's start and end, with the provider's exact token counts.
    let started = events_of(&events, "model_call_started");
    let request_id = started[0]["request_id"].clone();
    assert_eq!(
        started,
        vec![serde_json::json!({
            "type": "model_call_started", "step_id": "summarize", "request_id": request_id,
            "provider": "scripted", "model": "test-model", "profile": "foundation:explorer",
        })]
    );
    assert_eq!(
        without_duration(events_of(&events, "model_call_finished").remove(0)),
        serde_json::json!({
            "type": "model_call_finished", "step_id": "summarize", "request_id": request_id,
            // The model id the provider says answered (the request named `test-model`).
            "outcome": "completed", "provider": "scripted", "model": "served-model",
            "input_tokens": 12, "output_tokens": 5,
        })
    );
    // Resolution notes reach watchers as warnings of the step.
    assert_eq!(
        events_of(&events, "warning"),
        vec![
            serde_json::json!({ "type": "warning", "step_id": "summarize", "message": "model role `fast` is not configured" })
        ]
    );
    // Bash output into the prompt...
    let requests = provider.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(
        requests[0].headers["authorization"],
        format!("Bearer {CANARY_KEY}")
    );
    let messages = requests[0].body["messages"].as_array().unwrap();
    assert_eq!(messages.last().unwrap()["role"], "user");
    assert_eq!(
        messages.last().unwrap()["content"],
        "Summarize: three files"
    );
    assert_eq!(requests[0].body["model"], "test-model");
    assert_eq!(requests[0].body["stream"], true);
    // ...the model's answer streamed live to watchers, and into a bash step.
    assert_eq!(model_output_of(&events, "summarize"), "It has three files.");
    assert_eq!(output_of(&events, "use"), "got=It has three files.");
    // The key is nowhere in the sandbox's environment or in any event.
    let environment = output_of(&events, "environment");
    assert!(environment.contains("PATH="), "{environment}");
    for event in &events {
        let text = serde_json::to_string(event).unwrap();
        assert!(!text.contains(CANARY_KEY), "the key leaked into {text}");
        assert!(
            !text.contains(CANARY_ENV),
            "the key's variable leaked into {text}"
        );
    }
    assert_eq!(embedded.n_containers().await, 0);
    embedded.stop().await;
}

const PARSE_JSON: &str = r#"name: parse-json
description: Each extraction strategy on streamed answers.
version: 1.0.0
steps:
  - id: whole
    agent: self
    prompt: give a number
    parse_json: true
    output: whole
  - id: fenced
    agent: self
    prompt: give an object in a fence
    parse_json: true
    output: fenced
  - id: scanned
    agent: self
    prompt: give an object in prose
    parse_json: true
    output: scanned
  - id: show
    type: bash
    command: printf '%s|%s|%s' "$A" "$B" "$C"
    env:
      A: "{{whole.n}}"
      B: "{{fenced.names}}"
      C: "{{scanned.k}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_json_extracts_from_streamed_answers() {
    let provider = TestProvider::start(vec![
        Script::stream(&["{\"n\"", ": 4", "2}"], 5, 3),
        Script::stream(
            &[
                "Here it is:\n```js",
                "on\n{\"names\": [\"a\", ",
                "\"b\"]}\n```\nDone.",
            ],
            5,
            9,
        ),
        Script::stream(&["I think {\"k\": ", "\"v\"} is right."], 5, 7),
    ])
    .await;
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |_| {}).await;
    let execution_id = embedded.submit(PARSE_JSON).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let events = all_events(&embedded, &execution_id).await;
    assert_model_events_inside_their_steps(&events);
    // Lists are stringified the reference's way (`["a", "b"]`).
    assert_eq!(output_of(&events, "show"), r#"42|["a", "b"]|v"#);
    assert_eq!(provider.requests().len(), 3);
    assert_eq!(embedded.n_containers().await, 0);
    embedded.stop().await;
}

const ONE_AGENT: &str = r#"name: one-agent
description: One agent step.
version: 1.0.0
steps:
  - id: ask
    agent: self
    prompt: say something
"#;

/// 200 chunks `{prefix}0 `, `{prefix}1 `, ..., one every 200 ms.
fn slow_stream(prefix: &str) -> Script {
    Script::Stream {
        chunks: (0..200).map(|idx| format!("{prefix}{idx} ")).collect(),
        input_tokens: 5,
        output_tokens: 200,
        model: "served-model".to_owned(),
        delay: Duration::from_millis(200),
        piece_bytes: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_stream_stops_the_request_at_the_provider() {
    let provider = TestProvider::start(vec![slow_stream("token")]).await;
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |_| {}).await;
    let execution_id = embedded.submit(ONE_AGENT).await;
    // Live tokens reach watchers while the answer is still streaming.
    embedded
        .wait_for_event(&execution_id, "model_output", "ask")
        .await;
    assert_eq!(
        embedded
            .controller
            .launcher
            .control
            .cancel(&execution_id)
            .await,
        CancelOutcome::Signalled
    );
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Cancelled
    );
    // The provider saw the client go away before the end of its answer.
    assert!(provider.wait_ending(0).await);
    assert_eq!(provider.requests().len(), 1);
    let events = all_events(&embedded, &execution_id).await;
    assert!(model_output_of(&events, "ask").starts_with("token0 "));
    assert!(!model_output_of(&events, "ask").contains("token199"));
    // The call ended `cancelled`, in the events and in the store.
    let finished = events_of(&events, "model_call_finished");
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0]["outcome"], "cancelled");
    assert_eq!(finished[0]["input_tokens"], 0);
    assert!(finished[0].get("code").is_none(), "{}", finished[0]);
    let calls = embedded
        .controller
        .launcher
        .store
        .model_calls(&execution_id)
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, ModelCallStatus::Cancelled);
    assert_eq!(embedded.n_containers().await, 0);
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_step_timeout_abandons_the_call_at_the_provider() {
    let provider = TestProvider::start(vec![slow_stream("slow")]).await;
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |_| {}).await;
    let recipe = ONE_AGENT.replace(
        "prompt: say something",
        "prompt: say something\n    timeout: 2",
    );
    let execution_id = embedded.submit(&recipe).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Failed
    );
    // The step's deadline ended the request at the provider, not its end.
    assert!(provider.wait_ending(0).await);
    let events = all_events(&embedded, &execution_id).await;
    let error = step_error(&events, "ask");
    // The engine's deadline started first, so it normally wins (the agent
    // then sends ModelCancel); the gateway's own deadline is the backstop.
    assert!(
        error == "agent 'self' timed out after 2s"
            || error
                == "model call failed (Timeout): model call to provider `scripted` failed: provider call timed out",
        "{error}"
    );
    assert!(!model_output_of(&events, "ask").contains("slow199"));
    assert_eq!(embedded.n_containers().await, 0);
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_then_success_is_retried() {
    let provider = TestProvider::start(vec![
        Script::Status {
            status: 429,
            body: "{\"error\":{\"message\":\"slow down\"}}".to_owned(),
            retry_after: Some("0".to_owned()),
        },
        Script::status(503, "{\"error\":{\"message\":\"busy\"}}"),
        Script::stream(&["fine ", "now"], 3, 2),
    ])
    .await;
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |_| {}).await;
    let execution_id = embedded.submit(ONE_AGENT).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    assert_eq!(provider.requests().len(), 3);
    let events = all_events(&embedded, &execution_id).await;
    assert_eq!(model_output_of(&events, "ask"), "fine now");
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_down_fails_the_step_precisely() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), format!("http://{addr}/v1"), |_| {}).await;
    let execution_id = embedded.submit(ONE_AGENT).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Failed
    );
    let events = all_events(&embedded, &execution_id).await;
    let error = step_error(&events, "ask");
    assert!(
        error.starts_with(
            "model call failed (ProviderError): model call to provider `scripted` failed: "
        ),
        "{error}"
    );
    // Neither the provider's URL nor its address reaches the sandbox.
    assert_eq!(
        error,
        "model call failed (ProviderError): model call to provider `scripted` failed: provider unreachable: error sending request for url ([provider url]): client error (Connect): tcp connect error: Connection refused (os error 111)"
    );
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_fails_the_step_with_its_own_code() {
    let provider = TestProvider::start(vec![Script::stream(&["one"], 4, 1)]).await;
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |config| {
        config.gateway.budgets.per_execution.max_requests = Some(1);
    })
    .await;
    let two = ONE_AGENT.to_owned() + "  - id: again\n    agent: self\n    prompt: more\n";
    let execution_id = embedded.submit(&two).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Failed
    );
    let events = all_events(&embedded, &execution_id).await;
    assert_eq!(model_output_of(&events, "ask"), "one");
    let message = "budget_exhausted: execution max_requests is 1, used 1";
    assert_eq!(
        step_error(&events, "again"),
        format!("model call failed (QuotaExceeded): {message}")
    );
    // The refusal is its own event; no call started for it.
    let refused = events_of(&events, "model_call_refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["step_id"], "again");
    assert_eq!(refused[0]["code"], "quota_exceeded");
    assert_eq!(refused[0]["message"], message);
    assert_eq!(events_of(&events, "model_call_started").len(), 1);
    // No provider call for the refused request; usage is exact, and
    // persisted: the ledger forgot the finished execution, the store not.
    assert_eq!(provider.requests().len(), 1);
    let store = &embedded.controller.launcher.store;
    let (total, steps) = store.model_usage_of_execution(&execution_id).await.unwrap();
    assert_eq!(
        (total.requests, total.input_tokens, total.output_tokens),
        (1, 4, 1)
    );
    assert_eq!(steps.keys().collect::<Vec<_>>(), vec!["ask"]);
    let calls = store.model_calls(&execution_id).await.unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, ModelCallStatus::Completed);
    assert_eq!(
        (calls[0].provider.as_str(), calls[0].model.as_str()),
        ("scripted", "served-model")
    );
    let gateway = &embedded.controller.launcher.gateway;
    let ledger_usage = gateway
        .ledger()
        .lock()
        .unwrap()
        .execution_usage(&execution_id);
    assert_eq!(ledger_usage.requests, 0);
    // The same figures in the API, in total and per step (the refused call
    // counts nothing).
    let admin = embedded
        .controller
        .launcher
        .store
        .create_token("admin", true)
        .await
        .unwrap();
    let bytes = embedded
        .api_get(&format!("/api/v1/executions/{execution_id}"), &admin.token)
        .await;
    let view: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        view["model_usage"],
        serde_json::json!({
            "requests": 1, "input_tokens": 4, "output_tokens": 1,
            "steps": { "ask": { "requests": 1, "input_tokens": 4, "output_tokens": 1 } },
        })
    );
    // And for Prometheus: the one completed call and its tokens.
    let metrics = String::from_utf8(embedded.api_get("/metrics", &admin.token).await).unwrap();
    for line in [
        r#"kiln_model_calls_total{provider="scripted",model="served-model",status="completed"} 1"#,
        r#"kiln_model_input_tokens_total{provider="scripted",model="served-model"} 4"#,
        r#"kiln_model_output_tokens_total{provider="scripted",model="served-model"} 1"#,
        r#"kiln_executions{status="failed"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|seen| seen == line),
            "no `{line}` in\n{metrics}"
        );
    }
    embedded.stop().await;
}

const SELECTION: &str = r#"name: selection
description: The step's whole model selection crosses the wire.
version: 1.0.0
steps:
  - id: by-class
    agent: self
    prompt: think hard
    provider_preferences:
      - class: reasoning
    agent_config:
      temperature: 0.25
      tools: [shell]
  - id: by-role
    agent: self
    prompt: code it
    model_role: coding
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_entries_model_roles_and_agent_config_reach_the_provider_from_the_sandbox() {
    let provider = TestProvider::start(vec![
        Script::stream(&["deep"], 2, 1),
        Script::stream(&["quick"], 2, 1),
    ])
    .await;
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |config| {
        let scripted = &mut config.gateway.providers[0];
        scripted.models = [
            ("big".to_owned(), "big-model".to_owned()),
            ("fast".to_owned(), "small-model".to_owned()),
        ]
        .into();
        let reasoning: controller::gateway::config::ModelTarget =
            serde_json::from_value(serde_json::json!({ "provider": "scripted", "model": "big" }))
                .unwrap();
        config
            .gateway
            .classes
            .insert("reasoning".to_owned(), reasoning);
        let coding = serde_json::from_value(
            serde_json::json!([{ "provider": "scripted", "model": "fast" }]),
        )
        .unwrap();
        config.gateway.roles.insert("coding".to_owned(), coding);
    })
    .await;
    let execution_id = embedded.submit(SELECTION).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let requests = provider.requests();
    assert_eq!(requests.len(), 2);
    // The class entry chose the class's model, with the allowed override.
    assert_eq!(requests[0].body["model"], "big-model");
    assert_eq!(requests[0].body["temperature"], 0.25);
    assert!(
        requests[0].body.get("tools").is_none(),
        "{}",
        requests[0].body
    );
    // The role's entry chose the alias's model.
    assert_eq!(requests[1].body["model"], "small-model");
    let events = all_events(&embedded, &execution_id).await;
    let warnings: Vec<(String, String)> = events_of(&events, "warning")
        .into_iter()
        .map(|event| {
            (
                event["step_id"].as_str().unwrap().to_owned(),
                event["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        warnings,
        vec![(
            "by-class".to_owned(),
            "agent_config.tools ignored: only temperature, max_tokens, top_p can be overridden"
                .to_owned()
        ),]
    );
    let started: Vec<serde_json::Value> = events_of(&events, "model_call_started")
        .into_iter()
        .map(|event| event["model"].clone())
        .collect();
    assert_eq!(started, vec!["big-model", "small-model"]);
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_provider_with_a_key_file_answers_an_agent_step_in_a_sandbox() {
    let provider = TestProvider::start(vec![Script::stream(&["Bon", "jour"], 9, 2)]).await;
    let root = tempfile::tempdir().unwrap();
    let key_file = root.path().join("anthropic.key");
    std::fs::write(&key_file, format!("{CANARY_KEY}\n")).unwrap();
    let base_url = provider.anthropic_base_url();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |config| {
        config.gateway.providers = vec![
            toml::from_str(&format!(
                r#"
                name = "claude"
                kind = "anthropic"
                base_url = "{base_url}"
                api_key_file = "{}"
                default_model = "claude-test"
                "#,
                key_file.display()
            ))
            .unwrap(),
        ];
    })
    .await;
    let execution_id = embedded.submit(ASK_THEN_SHOW).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let requests = provider.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/messages");
    assert_eq!(requests[0].headers["x-api-key"], CANARY_KEY);
    assert_eq!(requests[0].body["model"], "claude-test");
    let events = all_events(&embedded, &execution_id).await;
    assert_eq!(model_output_of(&events, "ask"), "Bonjour");
    assert_eq!(output_of(&events, "show"), "got=Bonjour");
    let finished = events_of(&events, "model_call_finished");
    assert_eq!(
        (
            &finished[0]["provider"],
            &finished[0]["input_tokens"],
            &finished[0]["output_tokens"]
        ),
        (
            &serde_json::json!("claude"),
            &serde_json::json!(9),
            &serde_json::json!(2)
        )
    );
    for event in &events {
        let text = serde_json::to_string(event).unwrap();
        assert!(!text.contains(CANARY_KEY), "the key leaked into {text}");
    }
    embedded.stop().await;
}

const FAN_OUT: &str = r#"name: fan-out
description: Parallel agent calls under the recipe's concurrency limit.
version: 1.0.0
rate_limiting:
  max_concurrent_llm: 1
context:
  items: [a, b, c]
steps:
  - id: fan
    agent: self
    foreach: "{{items}}"
    as: item
    parallel: true
    prompt: "say {{item}}"
    collect: answers
  - id: show
    type: bash
    command: printf '%s' "$ANSWERS"
    env:
      ANSWERS: "{{answers}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipes_llm_concurrency_limit_holds_at_the_provider() {
    // Slow answers: three parallel calls would overlap without the limit.
    let slow = |text: &str| Script::Stream {
        chunks: vec![text.to_owned(); 3],
        input_tokens: 1,
        output_tokens: 3,
        model: "served-model".to_owned(),
        delay: Duration::from_millis(150),
        piece_bytes: None,
    };
    let provider = TestProvider::start(vec![slow("x"), slow("y"), slow("z")]).await;
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |_| {}).await;
    let execution_id = embedded.submit(FAN_OUT).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    assert_eq!(provider.requests().len(), 3);
    assert_eq!(provider.max_in_flight(), 1);
    let events = all_events(&embedded, &execution_id).await;
    assert_model_events_inside_their_steps(&events);
    let mut answers: Vec<String> = serde_json::from_str(&output_of(&events, "show")).unwrap();
    answers.sort();
    assert_eq!(answers, vec!["xxx", "yyy", "zzz"]);
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_events_stay_inside_their_steps_over_many_calls() {
    // Quick answers back to back: the agent's next request races the
    // events of the step before it.
    let n_steps = 12;
    let provider = TestProvider::start(
        (0..n_steps)
            .map(|_| Script::stream(&["ok"], 1, 1))
            .collect(),
    )
    .await;
    let root = tempfile::tempdir().unwrap();
    let embedded = start_with_provider(root.path(), provider.openai_base_url(), |_| {}).await;
    let mut recipe =
        "name: many\ndescription: Agent steps back to back.\nversion: 1.0.0\nsteps:\n".to_owned();
    for idx in 0..n_steps {
        recipe += &format!("  - id: s{idx}\n    agent: self\n    prompt: go\n");
    }
    let execution_id = embedded.submit(&recipe).await;
    assert_eq!(
        embedded.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let events = all_events(&embedded, &execution_id).await;
    assert_eq!(events_of(&events, "model_call_finished").len(), n_steps);
    assert_model_events_inside_their_steps(&events);
    embedded.stop().await;
}

const ASK_THEN_SHOW: &str = r#"name: ask-then-show
description: An agent step whose answer a bash step prints.
version: 1.0.0
steps:
  - id: ask
    agent: self
    prompt: say something
    output: answer
  - id: show
    type: bash
    command: printf 'got=%s' "$A"
    env:
      A: "{{answer}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_model_call_asks_again_and_the_answer_arrives_once() {
    let provider = TestProvider::start(vec![
        slow_stream("first"),
        Script::stream(&["second ", "answer"], 5, 2),
    ])
    .await;
    let root = tempfile::tempdir().unwrap();
    let first = start_with_provider(root.path(), provider.openai_base_url(), |_| {}).await;
    let execution_id = first.submit(ASK_THEN_SHOW).await;
    first
        .wait_for_event(&execution_id, "model_output", "ask")
        .await;
    let _guard = first.stop().await;
    // The stopped controller's call ended at the provider with it.
    assert!(provider.wait_ending(0).await);

    let second = start_with_provider(root.path(), provider.openai_base_url(), |_| {}).await;
    assert_eq!(
        second.controller.reconciled.taken_back,
        vec![execution_id.clone()]
    );
    assert_eq!(
        second.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    // The agent asked again on its new connection; the step got the second
    // call's answer, exactly once.
    assert_eq!(provider.requests().len(), 2);
    let events = all_events(&second, &execution_id).await;
    assert_contiguous(&events);
    assert_eq!(output_of(&events, "show"), "got=second answer");
    let outcomes: Vec<serde_json::Value> = events_of(&events, "model_call_finished")
        .into_iter()
        .map(|event| event["outcome"].clone())
        .collect();
    assert_eq!(outcomes, vec!["interrupted", "completed"]);
    assert_eq!(events_of(&events, "model_call_started").len(), 2);
    let count = |kind: &str| {
        kinds(&events)
            .into_iter()
            .filter(|(_, seen)| seen == kind)
            .count()
    };
    assert_eq!(count("engine/step_completed"), 2);
    let calls = second
        .controller
        .launcher
        .store
        .model_calls(&execution_id)
        .await
        .unwrap();
    let statuses: Vec<ModelCallStatus> = calls.iter().map(|call| call.status).collect();
    assert_eq!(
        statuses,
        vec![ModelCallStatus::Interrupted, ModelCallStatus::Completed]
    );
    assert_eq!(second.n_containers().await, 0);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_model_budget_survives_a_controller_restart() {
    let provider = TestProvider::start(vec![
        Script::stream(&["once"], 3, 1),
        Script::stream(&["twice"], 3, 1),
    ])
    .await;
    let root = tempfile::tempdir().unwrap();
    let per_user = |config: &mut Config| {
        config.gateway.budgets.per_user.max_requests = Some(1);
    };
    let first = start_with_provider(root.path(), provider.openai_base_url(), per_user).await;
    let user = first
        .controller
        .launcher
        .store
        .create_token("budgeted", false)
        .await
        .unwrap();
    let execution_id = first.submit_as(&user.info.id, ONE_AGENT).await;
    assert_eq!(
        first.wait_final(&execution_id).await,
        ExecutionStatus::Succeeded
    );
    let _guard = first.stop().await;

    // A new controller on the same store still counts the first call.
    let second = start_with_provider(root.path(), provider.openai_base_url(), per_user).await;
    let execution_id = second.submit_as(&user.info.id, ONE_AGENT).await;
    assert_eq!(
        second.wait_final(&execution_id).await,
        ExecutionStatus::Failed
    );
    let events = all_events(&second, &execution_id).await;
    let refused = events_of(&events, "model_call_refused");
    assert_eq!(refused.len(), 1, "{:?}", kinds(&events));
    assert_eq!(
        refused[0]["message"],
        "budget_exhausted: user max_requests is 1, used 1"
    );
    assert_eq!(provider.requests().len(), 1);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_agent_steps_are_refused_at_submission_and_validation_warns() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    let root = tempfile::tempdir().unwrap();
    let embedded = start_embedded(root.path()).await;
    let token = embedded
        .controller
        .launcher
        .store
        .create_token("alice", false)
        .await
        .unwrap();
    let post = |uri: &str, body: serde_json::Value| {
        Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", token.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let app = || controller::api::app(embedded.controller.state.clone());
    let read = |response: axum::response::Response| async move {
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
        )
    };

    let (status, body) = read(
        app()
            .oneshot(post(
                "/api/v1/executions",
                serde_json::json!({ "recipe": MIXED }),
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_recipe");
    let diagnostics = body["error"]["details"]["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 1, "{body}");
    assert_eq!(diagnostics[0]["code"], "no-model-provider");
    assert_eq!(diagnostics[0]["severity"], "error");
    assert_eq!(
        diagnostics[0]["message"],
        "no model provider is configured on this server, so agent step(s) `summarize` cannot run"
    );
    assert_eq!(diagnostics[0]["path"], "steps[1]");
    // Nothing was queued.
    let listed = embedded
        .controller
        .launcher
        .store
        .list_executions(&controller::store::ExecutionFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(listed.items.is_empty());

    let (status, body) = read(
        app()
            .oneshot(post(
                "/api/v1/validate",
                serde_json::json!({ "recipe": MIXED }),
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["valid"], true);
    let diagnostics = body["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 1, "{body}");
    assert_eq!(diagnostics[0]["code"], "no-model-provider");
    assert_eq!(diagnostics[0]["severity"], "warning");
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_keeps_the_canary_key_out_of_the_sandbox_events_and_logs() {
    let image = minimal_image().await;
    let provider = TestProvider::start(vec![Script::stream(&["hello ", "there"], 3, 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("mixed.yaml");
    std::fs::write(&recipe, MIXED).unwrap();
    let providers = format!(
        "[{{ name = \"scripted\", kind = \"openai\", base_url = \"{}\", default_model = \"test-model\", api_key_env = \"{CANARY_ENV}\" }}]",
        provider.openai_base_url()
    );
    let output = tokio::task::spawn_blocking(move || {
        kiln()
            .args(["run", "--json"])
            .arg(recipe)
            .env("KILN_SANDBOX__CLASSES__DEFAULT__IMAGE", &image)
            .env("KILN_GATEWAY__PROVIDERS", providers)
            .env(CANARY_ENV, CANARY_KEY)
            // Every log line the controller can write, dependencies included.
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let requests = provider.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].headers["authorization"],
        format!("Bearer {CANARY_KEY}")
    );
    assert!(stdout.contains("got=hello there"), "{stdout}");
    assert!(stdout.contains("PATH="), "the env step printed: {stdout}");
    assert!(!stdout.contains(CANARY_KEY), "the key is in the events");
    assert!(
        !stdout.contains(CANARY_ENV),
        "the key's variable is in the sandbox"
    );
    assert!(!stderr.is_empty(), "trace logging produced nothing");
    assert!(!stderr.contains(CANARY_KEY), "the key is in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_shows_model_calls_and_passes_no_control_character_to_the_terminal() {
    let image = minimal_image().await;
    // The answer tries to clear the screen and set the window title.
    let provider = TestProvider::start(vec![Script::stream(
        &["first line\n", "\x1b[2J\x1b]0;pwned\x07second"],
        7,
        4,
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("one-agent.yaml");
    std::fs::write(&recipe, ONE_AGENT).unwrap();
    let providers = format!(
        "[{{ name = \"scripted\", kind = \"openai\", base_url = \"{}\", default_model = \"test-model\" }}]",
        provider.openai_base_url()
    );
    let output = tokio::task::spawn_blocking(move || {
        kiln()
            .arg("run")
            .arg(recipe)
            .env("KILN_SANDBOX__CLASSES__DEFAULT__IMAGE", &image)
            .env("KILN_GATEWAY__PROVIDERS", providers)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        !stdout.contains('\x1b') && !stdout.contains('\x07'),
        "{stdout:?}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {stdout}"))
    };
    let started = at("· ask: model scripted/test-model (self)");
    let first = at("  │ first line");
    let second = at("  │ \\u{1b}[2J\\u{1b}]0;pwned\\u{7}second");
    let finished = at("· ask: model call 7 in / 4 out tokens (");
    assert!(
        started < first && first < second && second < finished,
        "{stdout}"
    );
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("✓ succeeded in ")
            && last.ends_with("s (1 model calls, 7 in / 4 out tokens)"),
        "{last}"
    );
}

#[test]
fn cli_serve_exits_64_naming_a_missing_key_source_before_touching_docker() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[[gateway.providers]]\nname = \"hosted\"\nkind = \"anthropic\"\nbase_url = \"https://api.anthropic.com\"\napi_key_env = \"{CANARY_ENV}\"\ndefault_model = \"claude-sonnet-4-5\"\n"
        ),
    )
    .unwrap();
    let output = kiln()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove(CANARY_ENV)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "error: invalid configuration at `gateway.providers[0].api_key_env`: api key for provider `hosted`: environment variable `{CANARY_ENV}` is missing\n"
        )
    );
    // An empty key is refused the same way, and the key never printed.
    let output = kiln()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env(CANARY_ENV, " ")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "error: invalid configuration at `gateway.providers[0].api_key_env`: api key for provider `hosted`: environment variable `{CANARY_ENV}` is empty\n"
        )
    );
}

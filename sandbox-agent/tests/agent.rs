//! End-to-end tests of the real `kiln-agent` binary, outside Docker, against
//! an in-test controller: a WebSocket server on a temporary Unix socket.
//!
//! Most tests pass `--no-drop` (steps keep the test's credentials); one runs
//! a step as uid 65534 for real (the tests run as root).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{
    AgentMessage, ControllerMessage, FinalStatus, Job, JobLimits, RejectReason,
    decode_agent_message, encode_controller_message,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::{UnixListener, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "one-time-token-1";
const SESSION_KEY: &str = "session-key-1";
const EXECUTION_ID: &str = "ex-test";
/// Generous bound on any single wait, so a broken agent fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

struct Harness {
    dir: tempfile::TempDir,
    listener: UnixListener,
    agent: tokio::process::Child,
}

impl Harness {
    fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    async fn start(extra_args: &[&str]) -> Harness {
        Harness::start_with(extra_args, |_| {}).await
    }

    async fn start_with(extra_args: &[&str], prepare: impl FnOnce(&Path)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let token = dir.path().join("token");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        prepare(dir.path());
        let listener = UnixListener::bind(&socket).unwrap();
        let agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
            .arg("--socket")
            .arg(&socket)
            .arg("--token-file")
            .arg(&token)
            .arg("--work-dir")
            .arg(&work)
            .args(["--execution-id", EXECUTION_ID, "--kill-grace-ms", "300"])
            .args(extra_args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Harness {
            dir,
            listener,
            agent,
        }
    }

    async fn accept(&self) -> Conn {
        let (stream, _) = tokio::time::timeout(PATIENCE, self.listener.accept())
            .await
            .unwrap()
            .unwrap();
        let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        Conn { ws }
    }

    /// Waits for the agent to exit; returns its exit code and stderr.
    async fn exit(self) -> (i32, String) {
        let output = tokio::time::timeout(PATIENCE, self.agent.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "agent panicked: {stderr}");
        (output.status.code().unwrap_or(-1), stderr)
    }
}

struct Conn {
    ws: WebSocketStream<UnixStream>,
}

impl Conn {
    async fn recv(&mut self) -> Option<AgentMessage> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .unwrap()?;
            match message.ok()? {
                Message::Text(text) => return Some(decode_agent_message(text.as_str()).unwrap()),
                Message::Close(_) => {
                    // Deadlock 1: keep polling so the close reply is flushed.
                    while let Some(Ok(_)) = self.ws.next().await {}
                    return None;
                }
                _ => continue,
            }
        }
    }

    /// Next message that is not a heartbeat (heartbeats are answered).
    async fn recv_significant(&mut self) -> Option<AgentMessage> {
        loop {
            match self.recv().await? {
                AgentMessage::Heartbeat { .. } => self.send(&ControllerMessage::Heartbeat {}).await,
                message => return Some(message),
            }
        }
    }

    async fn send(&mut self, message: &ControllerMessage) {
        let text = encode_controller_message(message).unwrap();
        self.ws.send(Message::text(text)).await.unwrap();
    }

    async fn send_raw(&mut self, message: Message) {
        let _ = self.ws.send(message).await;
    }

    /// Checks the hello and answers welcome + job.
    async fn handshake(&mut self, job: &Job) {
        match self.recv().await.unwrap() {
            AgentMessage::Hello(hello) => {
                assert_eq!(hello.version, protocol::PROTOCOL_VERSION);
                assert_eq!(hello.execution_id, EXECUTION_ID);
                assert_eq!(hello.token, TOKEN);
                assert_eq!(hello.resume, None);
            }
            other => panic!("expected hello, got {other:?}"),
        }
        self.welcome_and_job(job).await;
    }

    async fn welcome_and_job(&mut self, job: &Job) {
        self.send(&ControllerMessage::Welcome {
            session_key: SESSION_KEY.to_string(),
        })
        .await;
        self.send(&ControllerMessage::Job(Box::new(job.clone())))
            .await;
    }

    /// Receives and acks everything up to and including `done`, then lets
    /// the agent close. Returns the reliable messages in order.
    async fn run_to_done(
        &mut self,
        mut on_message: impl FnMut(&AgentMessage) -> Option<ControllerMessage>,
    ) -> Vec<AgentMessage> {
        let mut received = Vec::new();
        loop {
            let Some(message) = self.recv_significant().await else {
                panic!("connection ended before done; got {received:?}");
            };
            if let Some(reply) = on_message(&message) {
                self.send(&reply).await;
            }
            let seq = reliable_seq(&message);
            let is_done = matches!(message, AgentMessage::Done(_));
            received.push(message);
            if let Some(seq) = seq {
                self.send(&ControllerMessage::Ack { seq }).await;
            }
            if is_done {
                break;
            }
        }
        // The agent closes; keep reading until the stream ends.
        while let Some(message) = self.recv().await {
            assert!(
                matches!(message, AgentMessage::Heartbeat { .. }),
                "after done: {message:?}"
            );
        }
        received
    }
}

/// Runs `job` with `--no-drop` against a well-behaved controller; checks that
/// the agent exits 0 and returns the reliable messages.
async fn run_to_done_unprivileged(job: &Job) -> Vec<AgentMessage> {
    let harness = Harness::start(&["--no-drop"]).await;
    let mut conn = harness.accept().await;
    conn.handshake(job).await;
    let messages = conn.run_to_done(|_| None).await;
    drop(conn);
    assert_eq!(harness.exit().await.0, 0);
    messages
}

fn reliable_seq(message: &AgentMessage) -> Option<u64> {
    match message {
        AgentMessage::Event(event) => Some(event.seq),
        AgentMessage::ArtifactChunk(chunk) => Some(chunk.seq),
        AgentMessage::Done(done) => Some(done.seq),
        _ => None,
    }
}

fn job(recipe: &str) -> Job {
    Job {
        recipe_source: recipe.to_string(),
        inputs: serde_json::Map::new(),
        files: BTreeMap::new(),
        limits: JobLimits::default(),
        step_uid: 65534,
        step_gid: 65534,
    }
}

/// A compact line per event: `source:type[:step][:stream][:text]`.
fn describe(message: &AgentMessage) -> String {
    match message {
        AgentMessage::Event(event) => {
            let body = serde_json::to_value(&event.body).unwrap();
            let mut parts = vec![
                body["source"].as_str().unwrap().to_string(),
                body["event"]["type"].as_str().unwrap().to_string(),
            ];
            for key in ["step_id", "stream", "text", "reason", "status", "name"] {
                match &body["event"][key] {
                    Value::String(text) => parts.push(text.clone()),
                    Value::Null => {}
                    other => parts.push(other.to_string()),
                }
            }
            parts.join(":")
        }
        AgentMessage::ArtifactChunk(chunk) => format!("artifact:{}:{}", chunk.name, chunk.offset),
        AgentMessage::Done(done) => match (&done.outcome.reason, done.outcome.status) {
            (_, FinalStatus::Succeeded) => "done:succeeded".to_string(),
            (reason, status) => format!(
                "done:{}:{reason:?}:{:?}",
                status.as_str(),
                done.outcome.message
            ),
        },
        other => format!("{other:?}"),
    }
}

fn done_status(messages: &[AgentMessage]) -> FinalStatus {
    match messages.last() {
        Some(AgentMessage::Done(done)) => done.outcome.status,
        other => panic!("last message is not done: {other:?}"),
    }
}

fn assert_contiguous(messages: &[AgentMessage]) {
    let seqs: Vec<u64> = messages.iter().filter_map(reliable_seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected);
}

/// Engine output text of one step and stream, concatenated.
fn output_of(messages: &[AgentMessage], step: &str, stream: &str) -> String {
    let mut text = String::new();
    for message in messages {
        if let AgentMessage::Event(event) = message {
            let body = serde_json::to_value(&event.body).unwrap();
            if body["event"]["type"] == "step_output"
                && body["event"]["step_id"] == step
                && body["event"]["stream"] == stream
            {
                text.push_str(body["event"]["text"].as_str().unwrap());
            }
        }
    }
    text
}

/// Pids whose process group is `pgid` (from /proc/*/stat).
fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        if fields.get(2).and_then(|field| field.parse::<i32>().ok()) == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

async fn wait_until_group_gone(pgid: i32) -> Vec<i32> {
    for _ in 0..100 {
        let pids = processes_in_group(pgid);
        if pids.is_empty() {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    processes_in_group(pgid)
}

const TWO_STEPS: &str = r#"
name: two-steps
description: test
version: 1.0.0
context:
  who: "Kiln; rm -rf /"
steps:
  - id: greet
    type: bash
    command: echo "hello"
    output: greeting
  - id: report
    type: bash
    command: |
      # Only stderr here, so the event order is exact (two pipes race).
      printf '%s|%s|%s\n' "$KILN_VAR_greeting" "$(cat "$KILN_VARS/who")" "{{greeting}} raw" >&2  # reads {{who}}
"#;

#[tokio::test]
async fn handshake_and_exact_event_sequence_for_two_bash_steps() {
    let messages = run_to_done_unprivileged(&job(TWO_STEPS)).await;
    assert_contiguous(&messages);
    let lines: Vec<String> = messages.iter().map(describe).collect();
    let mut sequence: Vec<String> = lines
        .iter()
        .filter(|line| {
            !line.starts_with("engine:execution_started")
                && !line.starts_with("engine:execution_completed")
        })
        .cloned()
        .collect();
    // Durations vary; the rest is exact.
    for line in &mut sequence {
        if line.starts_with("engine:step_completed") {
            *line = line.split(':').take(3).collect::<Vec<_>>().join(":");
        }
    }
    assert_eq!(
        sequence,
        [
            "sandbox:agent_started",
            "engine:step_started:greet",
            "engine:step_output:greet:stdout:hello\n",
            "engine:step_completed:greet",
            "engine:step_started:report",
            "engine:step_output:report:stderr:hello|Kiln; rm -rf /|hello raw\n",
            "engine:step_completed:report",
            "done:succeeded",
        ],
        "all: {lines:#?}"
    );
    assert!(
        lines[1].starts_with("engine:execution_started"),
        "{lines:#?}"
    );
    assert!(
        lines[lines.len() - 2].starts_with("engine:execution_completed"),
        "{lines:#?}"
    );
    assert!(lines[lines.len() - 2].contains("succeeded"), "{lines:#?}");
}

#[tokio::test]
async fn a_5mb_flood_is_truncated_at_the_cap_with_one_marker() {
    let recipe = r#"
name: flood
description: test
version: 1.0.0
steps:
  - id: flood
    type: bash
    max_output_size: 1000000
    command: head -c 5000000 /dev/zero | tr '\0' a; echo; echo tail >&2
"#;
    let flood_job = job(recipe);
    let messages = run_to_done_unprivileged(&flood_job).await;
    assert_contiguous(&messages);
    let stdout = output_of(&messages, "flood", "stdout");
    assert_eq!(stdout.len(), 1_000_000);
    assert!(stdout.bytes().all(|b| b == b'a'));
    assert_eq!(output_of(&messages, "flood", "stderr"), "tail\n");
    let markers: Vec<String> = messages
        .iter()
        .map(describe)
        .filter(|line| line.contains("output_truncated"))
        .collect();
    assert_eq!(markers, ["engine:output_truncated:flood:stdout"]);
    let limits: Vec<u64> = messages
        .iter()
        .filter_map(|message| match message {
            AgentMessage::Event(event) => {
                let body = serde_json::to_value(&event.body).unwrap();
                body["event"]["limit_bytes"].as_u64()
            }
            _ => None,
        })
        .collect();
    assert_eq!(limits, [1_000_000]);
    for message in &messages {
        if let AgentMessage::Event(event) = message {
            let body = serde_json::to_value(&event.body).unwrap();
            if let Some(text) = body["event"]["text"].as_str() {
                assert!(text.len() <= protocol::MAX_OUTPUT_CHUNK_BYTES);
            }
        }
    }
    assert_eq!(done_status(&messages), FinalStatus::Succeeded);
}

#[tokio::test]
async fn timeout_kills_background_grandchildren() {
    let recipe = r#"
name: sleepy
description: test
version: 1.0.0
steps:
  - id: sleepy
    type: bash
    timeout: 1
    command: |
      echo "pgid $(ps -o pgid= $$ 2>/dev/null || cut -d' ' -f5 /proc/$$/stat)"
      sleep 100 &
      sleep 100
"#;
    let messages = run_to_done_unprivileged(&job(recipe)).await;
    let stdout = output_of(&messages, "sleepy", "stdout");
    let pgid: i32 = stdout
        .trim()
        .trim_start_matches("pgid")
        .trim()
        .parse()
        .unwrap();
    assert!(pgid > 1);
    assert_eq!(wait_until_group_gone(pgid).await, Vec::<i32>::new());
    let lines: Vec<String> = messages.iter().map(describe).collect();
    assert!(
        lines
            .iter()
            .any(|line| line == "sandbox:step_killed:sleepy:timeout"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("engine:step_failed:sleepy")),
        "{lines:#?}"
    );
    assert_eq!(done_status(&messages), FinalStatus::Failed);
}

#[tokio::test]
async fn cancel_mid_step_terminates_the_group_and_reports_cancelled() {
    let recipe = r#"
name: cancel-me
description: test
version: 1.0.0
steps:
  - id: long
    type: bash
    command: |
      cut -d' ' -f5 /proc/$$/stat
      sleep 100 &
      sleep 100
  - id: never
    type: bash
    command: echo never
"#;
    let harness = Harness::start(&["--no-drop"]).await;
    let mut conn = harness.accept().await;
    conn.handshake(&job(recipe)).await;
    let messages = conn
        .run_to_done(|message| {
            let line = describe(message);
            line.starts_with("engine:step_output:long:stdout")
                .then(|| ControllerMessage::Cancel {
                    reason: "user asked".to_string(),
                })
        })
        .await;
    drop(conn);
    let pgid: i32 = output_of(&messages, "long", "stdout")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wait_until_group_gone(pgid).await, Vec::<i32>::new());
    let lines: Vec<String> = messages.iter().map(describe).collect();
    assert!(
        lines
            .iter()
            .any(|line| line == "sandbox:step_killed:long:cancelled"),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|line| line.contains(":never")),
        "{lines:#?}"
    );
    assert_eq!(done_status(&messages), FinalStatus::Cancelled);
    assert_eq!(harness.exit().await.0, 0);
}

#[tokio::test]
async fn reconnect_resends_everything_unacknowledged() {
    let recipe = r#"
name: reconnect
description: test
version: 1.0.0
steps:
  - id: first
    type: bash
    command: echo one
  - id: second
    type: bash
    command: sleep 1; echo two
"#;
    let harness = Harness::start(&["--no-drop"]).await;
    let mut first = harness.accept().await;
    first.handshake(&job(recipe)).await;
    // Take three reliable messages, ack only the first two, then drop.
    let mut seen = BTreeMap::new();
    while seen.len() < 3 {
        let message = first.recv_significant().await.unwrap();
        if let Some(seq) = reliable_seq(&message) {
            seen.insert(seq, describe(&message));
        }
    }
    // The ack may or may not be read before the drop: either way the agent
    // must resend from its last acked seq, and the union must be complete.
    first.send(&ControllerMessage::Ack { seq: 2 }).await;
    drop(first);

    let mut second = harness.accept().await;
    match second.recv().await.unwrap() {
        AgentMessage::Hello(hello) => {
            assert_eq!(hello.token, "");
            let resume = hello.resume.unwrap();
            assert_eq!(resume.session_key, SESSION_KEY);
            assert!(resume.last_acked_seq <= 2);
        }
        other => panic!("expected resume hello, got {other:?}"),
    }
    second.welcome_and_job(&job("name: ignored\n")).await;
    let rest = second.run_to_done(|_| None).await;
    drop(second);
    let first_resent = rest.iter().find_map(reliable_seq).unwrap();
    assert!(first_resent <= 3, "resend starts at {first_resent}");
    let mut all: BTreeMap<u64, String> = seen;
    for message in &rest {
        let seq = reliable_seq(message).unwrap();
        let line = describe(message);
        if let Some(previous) = all.get(&seq) {
            assert_eq!(previous, &line, "seq {seq} changed on resend");
        }
        all.insert(seq, line);
    }
    let seqs: Vec<u64> = all.keys().copied().collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let lines: Vec<&String> = all.values().collect();
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("sandbox:agent_reconnected")),
        "{lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.starts_with("engine:step_output"))
            .count(),
        2,
        "{lines:#?}"
    );
    assert_eq!(lines.last().unwrap().as_str(), "done:succeeded");
    assert_eq!(harness.exit().await.0, 0);
}

#[tokio::test]
async fn artifacts_are_delivered_byte_exact_and_hostile_files_rejected() {
    let recipe = r#"
name: artifacts
description: test
version: 1.0.0
steps:
  - id: write
    type: bash
    command: |
      mkdir -p out/sub
      printf 'line one\n\000\001\377binary' > out/report.bin
      echo nested > out/sub/nested.txt
      : > out/empty.txt
      ln -s /etc/passwd out/link
      mkfifo out/fifo
      head -c 2000 /dev/zero > out/big.bin
      echo h > out/h1 && ln out/h1 out/h2
      touch "out/bad
      name"
      touch 'out/back\slash'
"#;
    let mut artifacts_job = job(recipe);
    artifacts_job.limits.max_artifact_bytes = 1000;
    let messages = run_to_done_unprivileged(&artifacts_job).await;
    assert_contiguous(&messages);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    for message in &messages {
        if let AgentMessage::ArtifactChunk(chunk) = message {
            let data = chunk.decode_data().unwrap();
            let file = files.entry(chunk.name.clone()).or_default();
            assert_eq!(chunk.offset, file.len() as u64);
            file.extend_from_slice(&data);
            if chunk.last {
                digests.insert(chunk.name.clone(), chunk.sha256.clone().unwrap());
            }
        }
    }
    let expected_files = BTreeMap::from([
        ("empty.txt".to_string(), Vec::new()),
        (
            "report.bin".to_string(),
            b"line one\n\x00\x01\xffbinary".to_vec(),
        ),
        ("sub/nested.txt".to_string(), b"nested\n".to_vec()),
    ]);
    assert_eq!(files, expected_files);
    for (name, bytes) in &files {
        assert_eq!(
            digests[name],
            format!("{:x}", Sha256::digest(bytes)),
            "{name}"
        );
    }
    let rejected: BTreeMap<String, String> = messages
        .iter()
        .filter_map(|message| match message {
            AgentMessage::Event(event) => {
                let body = serde_json::to_value(&event.body).unwrap();
                (body["event"]["type"] == "artifact_rejected").then(|| {
                    (
                        body["event"]["name"].as_str().unwrap().to_string(),
                        body["event"]["reason"].as_str().unwrap().to_string(),
                    )
                })
            }
            _ => None,
        })
        .collect();
    let expected_rejections: BTreeMap<String, String> = [
        ("back\\slash", "invalid_name"),
        ("bad\nname", "invalid_name"),
        ("big.bin", "too_large"),
        ("fifo", "not_regular_file"),
        ("h1", "hardlink"),
        ("h2", "hardlink"),
        ("link", "symlink"),
    ]
    .into_iter()
    .map(|(name, reason)| (name.to_string(), reason.to_string()))
    .collect();
    assert_eq!(rejected, expected_rejections);
    assert_eq!(done_status(&messages), FinalStatus::Succeeded);
}

#[tokio::test]
async fn steps_run_as_the_job_uid_with_a_clean_environment() {
    let recipe = r#"
name: whoami
description: test
version: 1.0.0
steps:
  - id: who
    type: bash
    env:
      EXTRA: "x"
    command: |
      id -u; id -g; id -G
      cat /proc/self/oom_score_adj
      env | cut -d= -f1 | sort | tr '\n' ' '
"#;
    let harness = Harness::start_with(&[], |dir| {
        std::os::unix::fs::chown(dir.join("work"), Some(65534), Some(65534)).unwrap();
        let mut permissions = std::fs::metadata(dir.join("work")).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o700);
        std::fs::set_permissions(dir.join("work"), permissions).unwrap();
        // The temp dir itself must be traversable by the step user.
        let mut permissions = std::fs::metadata(dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o711);
        std::fs::set_permissions(dir, permissions).unwrap();
    })
    .await;
    let mut conn = harness.accept().await;
    conn.handshake(&job(recipe)).await;
    let messages = conn.run_to_done(|_| None).await;
    drop(conn);
    assert_eq!(
        output_of(&messages, "who", "stdout"),
        "65534\n65534\n65534\n1000\nEXTRA HOME KILN_VARS LANG PATH PWD SHLVL _ "
    );
    assert_eq!(done_status(&messages), FinalStatus::Succeeded);
    assert!(harness.work_dir().join(".kiln/vars/1").is_dir());
    assert_eq!(harness.exit().await.0, 0);
}

#[tokio::test]
async fn hostile_controller_frames_cause_reconnects_not_panics() {
    let recipe = "name: calm\ndescription: test\nversion: 1.0.0\nsteps:\n  - id: a\n    type: bash\n    command: echo ok\n";
    let harness = Harness::start(&["--no-drop"]).await;
    let hostile = [
        Message::text("{not json"),
        Message::binary(vec![0u8, 1, 2]),
        Message::text("[".repeat(10_000)),
        Message::text(r#"{"type":"ack","seq":1,"surprise":true}"#),
        Message::text(
            r#"{"type":"job","recipe_source":"","limits":{"max_output_bytes":1,"max_step_output_bytes":1,"max_artifacts":1,"max_artifact_bytes":1,"max_total_artifact_bytes":1},"step_uid":0,"step_gid":0}"#,
        ),
    ];
    for (attempt, frame) in hostile.into_iter().enumerate() {
        let mut conn = harness.accept().await;
        let hello = conn.recv().await.unwrap();
        let AgentMessage::Hello(hello) = hello else {
            panic!("expected hello")
        };
        // The first hello carries the token; it is never burned here, since
        // the welcome only comes later.
        assert_eq!(hello.token, TOKEN, "attempt {attempt}");
        conn.send_raw(frame).await;
        // The agent refuses the frame (close) and comes back.
        assert!(conn.recv().await.is_none(), "attempt {attempt}");
    }
    let mut conn = harness.accept().await;
    conn.handshake(&job(recipe)).await;
    let messages = conn.run_to_done(|_| None).await;
    drop(conn);
    assert_eq!(done_status(&messages), FinalStatus::Succeeded);
    assert_eq!(harness.exit().await.0, 0);
}

#[tokio::test]
async fn a_rejected_hello_exits_77() {
    let harness = Harness::start(&["--no-drop"]).await;
    let mut conn = harness.accept().await;
    assert!(matches!(conn.recv().await, Some(AgentMessage::Hello(_))));
    conn.send(&ControllerMessage::Reject {
        reason: RejectReason::BadToken,
    })
    .await;
    while conn.recv().await.is_some() {}
    drop(conn);
    assert_eq!(harness.exit().await.0, 77);
}

#[tokio::test]
async fn a_missing_token_exits_66_and_an_invalid_recipe_fails_cleanly() {
    let harness = Harness::start_with(&["--no-drop"], |dir| {
        std::fs::remove_file(dir.join("token")).unwrap()
    })
    .await;
    let (code, stderr) = harness.exit().await;
    assert_eq!(code, 66, "{stderr}");

    let messages = run_to_done_unprivileged(&job("name: broken\nsteps: 3\n")).await;
    match messages.last().unwrap() {
        AgentMessage::Done(done) => {
            assert_eq!(done.outcome.status, FinalStatus::Failed);
            assert_eq!(done.outcome.reason.as_deref(), Some("recipe_invalid"));
        }
        other => panic!("expected done, got {other:?}"),
    }
}

#[tokio::test]
async fn approval_gates_and_model_calls_go_through_the_controller() {
    let recipe = r#"
name: gate-and-model
description: test
version: 1.0.0
stages:
  - name: ask
    steps:
      - id: think
        agent: helper
        prompt: "say hi"
        output: answer
    approval:
      required: true
      prompt: "ship {{answer}}?"
      timeout: 60
      default: deny
  - name: use
    steps:
      - id: echo
        type: bash
        env:
          ANSWER: "{{answer}}"
          MESSAGE: "{{_approval_message}}"
        command: echo "$ANSWER/$MESSAGE"
"#;
    let harness = Harness::start(&["--no-drop"]).await;
    let mut conn = harness.accept().await;
    conn.handshake(&job(recipe)).await;
    let mut requests = Vec::new();
    let messages = conn
        .run_to_done(|message| match message {
            AgentMessage::ModelRequest(request) => {
                requests.push(format!(
                    "model:{}:{}:{}",
                    request.step_id, request.agent, request.messages[0].content
                ));
                Some(ControllerMessage::ModelResponse(protocol::ModelResponse {
                    request_id: request.request_id,
                    body: protocol::ModelResponseBody::Completed {
                        text: "hi there".to_string(),
                        provider: "test".to_string(),
                        model: "test-1".to_string(),
                        usage: protocol::ModelUsage::default(),
                        finish_reason: None,
                    },
                }))
            }
            AgentMessage::ApprovalRequest(request) => {
                requests.push(format!(
                    "approval:{}:{}:{:?}",
                    request.stage, request.prompt, request.default
                ));
                Some(ControllerMessage::ApprovalDecision(
                    protocol::ApprovalDecision {
                        request_id: request.request_id,
                        decision: protocol::ApprovalChoice::Approve,
                        by: "alice".to_string(),
                        message: Some("go".to_string()),
                    },
                ))
            }
            _ => None,
        })
        .await;
    drop(conn);
    assert_eq!(
        requests,
        [
            "model:think:helper:say hi",
            "approval:ask:ship hi there?:Deny"
        ]
    );
    assert_eq!(output_of(&messages, "echo", "stdout"), "hi there/go\n");
    assert_eq!(done_status(&messages), FinalStatus::Succeeded);
    assert_eq!(harness.exit().await.0, 0);
}

#[tokio::test]
async fn orphaned_grandchildren_are_reaped() {
    // Catalogue case 12: 40 orphans; the agent (subreaper here, PID 1 in a
    // container) reaps them all, so none is left as a zombie.
    let recipe = r#"
name: zombies
description: test
version: 1.0.0
steps:
  - id: orphans
    type: bash
    command: |
      agent=$PPID
      for i in $(seq 40); do sh -c 'sleep 0.2 &'; done
      sleep 1.5
      n=0
      for stat in /proc/[0-9]*/stat; do
        set -- $(sed 's/.*) //' "$stat" 2>/dev/null)
        if [ "$1" = Z ] && [ "$2" = "$agent" ]; then n=$((n + 1)); fi
      done
      echo "zombies $n"
"#;
    let messages = run_to_done_unprivileged(&job(recipe)).await;
    assert_eq!(output_of(&messages, "orphans", "stdout"), "zombies 0\n");
    assert_eq!(done_status(&messages), FinalStatus::Succeeded);
}

#[tokio::test]
async fn a_silent_controller_triggers_a_reconnect() {
    let recipe = "name: calm\ndescription: test\nversion: 1.0.0\nsteps:\n  - id: a\n    type: bash\n    command: sleep 2; echo ok\n";
    let harness = Harness::start(&[
        "--no-drop",
        "--heartbeat-ms",
        "100",
        "--heartbeat-timeout-ms",
        "400",
    ])
    .await;
    let mut silent = harness.accept().await;
    silent.handshake(&job(recipe)).await;
    // Say nothing more and read nothing: the agent must give up on this
    // connection and resume on a new one.
    let mut second = harness.accept().await;
    match second.recv().await.unwrap() {
        AgentMessage::Hello(hello) => assert_eq!(
            hello.resume.map(|resume| resume.session_key).as_deref(),
            Some(SESSION_KEY)
        ),
        other => panic!("expected resume hello, got {other:?}"),
    }
    drop(silent);
    second.welcome_and_job(&job(recipe)).await;
    let messages = second.run_to_done(|_| None).await;
    drop(second);
    assert_contiguous(&messages);
    let lines: Vec<String> = messages.iter().map(describe).collect();
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("sandbox:agent_reconnected")),
        "{lines:#?}"
    );
    assert_eq!(done_status(&messages), FinalStatus::Succeeded);
    assert_eq!(harness.exit().await.0, 0);
}

#[tokio::test]
async fn sigterm_cancels_the_run_and_still_reports_done() {
    let recipe = "name: term\ndescription: test\nversion: 1.0.0\nsteps:\n  - id: long\n    type: bash\n    command: echo started; sleep 100\n";
    let harness = Harness::start(&["--no-drop"]).await;
    let agent_pid = harness.agent.id().unwrap() as i32;
    let mut conn = harness.accept().await;
    conn.handshake(&job(recipe)).await;
    let messages = conn
        .run_to_done(|message| {
            if describe(message).starts_with("engine:step_output:long") {
                nix_kill_term(agent_pid);
            }
            None
        })
        .await;
    drop(conn);
    assert_eq!(done_status(&messages), FinalStatus::Cancelled);
    assert_eq!(harness.exit().await.0, 0);
}

fn nix_kill_term(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn setup_failures_are_step_errors_with_their_reason() {
    let recipe = r#"
name: bad-setup
description: test
version: 1.0.0
steps:
  - id: missing-cwd
    type: bash
    cwd: does/not/exist
    on_error: continue
    command: echo unreachable
  - id: escaping-cwd
    type: bash
    cwd: ../..
    on_error: continue
    command: echo unreachable
  - id: no-shell
    type: bash
    shell: /nonexistent/shell
    command: echo unreachable
"#;
    let messages = run_to_done_unprivileged(&job(recipe)).await;
    let failures: Vec<String> = messages
        .iter()
        .filter_map(|message| match message {
            AgentMessage::Event(event) => {
                let body = serde_json::to_value(&event.body).unwrap();
                (body["event"]["type"] == "step_failed").then(|| {
                    format!(
                        "{}: {}",
                        body["event"]["step_id"].as_str().unwrap(),
                        body["event"]["error"].as_str().unwrap()
                    )
                })
            }
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 3, "{failures:#?}");
    assert!(
        failures[0].starts_with("missing-cwd: step could not start (cwd): "),
        "{failures:#?}"
    );
    assert!(
        failures[1].starts_with("escaping-cwd: cwd \"../..\" must not contain '..'"),
        "{failures:#?}"
    );
    assert!(failures[2].contains("127"), "{failures:#?}");
    assert!(!output_of(&messages, "missing-cwd", "stdout").contains("unreachable"));
    assert_eq!(done_status(&messages), FinalStatus::Failed);
}

#[tokio::test]
async fn acks_written_by_the_reading_task_never_deadlock_the_agent() {
    // This harness reads a frame and writes its ack from one task. On a Unix
    // socket a few hundred small unread acks fill the buffer, so an agent
    // that stopped reading while writing deadlocked here (measured: stuck
    // after ~320 output chunks). 10 MiB of output is ~640 chunks.
    let recipe = r#"
name: many-chunks
description: test
version: 1.0.0
steps:
  - id: flood
    type: bash
    command: head -c 12000000 /dev/zero | tr '\0' b
"#;
    let messages = run_to_done_unprivileged(&job(recipe)).await;
    let stdout = output_of(&messages, "flood", "stdout");
    assert_eq!(
        stdout.len() as u64,
        recipe::runner::DEFAULT_MAX_OUTPUT_BYTES
    );
    assert_contiguous(&messages);
    assert_eq!(done_status(&messages), FinalStatus::Succeeded);
}

//! API tests: `app(state).oneshot(req)` for every route and the bad-input
//! matrix, and the WebSocket stream over a real socket (axum bound on
//! 127.0.0.1:0, tokio-tungstenite client). No Docker: the launcher side is a
//! real `Control` and `Hub` driven by the test.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use controller::api::{AppState, ReadinessCheck, StreamMessage, app};
use controller::config::Config;
use controller::launcher::{Command, Control};
use controller::relay::Hub;
use controller::store::{
    ApprovalDecision, ExecutionStatus, ModelCallEnd, ModelCallStatus, NewApproval, NewModelCall,
    Store,
};
use futures::StreamExt;
use protocol::{ControllerEvent, EventBody, ExecutionEvent};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower::ServiceExt;

const GOOD: &str = "name: hello\ndescription: says hello\nversion: 1.0.0\nsteps:\n  - id: greet\n    type: bash\n    command: echo hi\n";
/// Guard against hangs only; nothing asserts on time.
const HANG_GUARD: Duration = Duration::from_secs(30);

struct Harness {
    state: AppState,
    store: Store,
    hub: Hub<ExecutionEvent>,
    control: Control,
    admin: String,
    alice: String,
    alice_id: String,
    bob: String,
    _dir: tempfile::TempDir,
}

fn small_limits_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.server.data_dir = dir.to_path_buf();
    config.server.gallery_dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gallery");
    config.limits.max_recipe_bytes = 4096;
    config.limits.max_inputs_bytes = 1024;
    config.limits.max_files = 2;
    config.limits.max_file_bytes = 4096;
    config.validate().unwrap();
    config
}

async fn harness_with(watcher_buffer: usize, docker_ready: ReadinessCheck) -> Harness {
    harness_configured(watcher_buffer, docker_ready, |_| {}).await
}

async fn harness_configured(
    watcher_buffer: usize,
    docker_ready: ReadinessCheck,
    adjust: impl FnOnce(&mut Config),
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_limits_config(dir.path());
    adjust(&mut config);
    config.validate().unwrap();
    let store = Store::open_sqlite(&config.database_path(), 1 << 20)
        .await
        .unwrap();
    let admin = store.bootstrap_admin_token().await.unwrap().unwrap();
    let alice = store.create_token("alice", false).await.unwrap();
    let bob = store.create_token("bob", false).await.unwrap();
    let hub = Hub::new(watcher_buffer);
    let control = Control::new();
    let state = AppState::new(
        Arc::new(config),
        store.clone(),
        hub.clone(),
        control.clone(),
        docker_ready,
    );
    Harness {
        state,
        store,
        hub,
        control,
        admin,
        alice: alice.token,
        alice_id: alice.info.id,
        bob: bob.token,
        _dir: dir,
    }
}

fn docker_ok() -> ReadinessCheck {
    Arc::new(|| Box::pin(async { Ok(()) }))
}

async fn harness() -> Harness {
    harness_with(1024, docker_ok()).await
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    bytes: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|err| {
            panic!("not JSON ({err}): {}", String::from_utf8_lossy(&self.bytes))
        })
    }

    #[track_caller]
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            (self.status, self.error_code().as_str()),
            (status, code),
            "{}",
            String::from_utf8_lossy(&self.bytes)
        );
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Harness {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(body.map_or_else(Body::empty, |text| Body::from(text.to_string())))
            .unwrap();
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply {
            status,
            headers,
            bytes,
        }
    }

    async fn get(&self, uri: &str, token: &str) -> Reply {
        self.send("GET", uri, Some(token), None).await
    }

    async fn post(&self, uri: &str, token: &str, body: &str) -> Reply {
        self.send("POST", uri, Some(token), Some(body)).await
    }

    async fn submit_as(&self, token: &str, body: Value) -> String {
        let reply = self
            .send(
                "POST",
                "/api/v1/executions",
                Some(token),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "{}",
            String::from_utf8_lossy(&reply.bytes)
        );
        reply.json()["id"].as_str().unwrap().to_string()
    }

    async fn submit_good(&self) -> String {
        self.submit_as(&self.alice, json!({ "recipe": GOOD })).await
    }

    /// Persists then publishes, as the relay does.
    async fn emit(
        &self,
        execution_id: &str,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Vec<ExecutionEvent> {
        let events: Vec<_> = seqs.map(test_event).collect();
        self.store
            .append_events(execution_id, &events, None)
            .await
            .unwrap();
        for event in &events {
            self.hub.publish(execution_id, event.clone());
        }
        events
    }

    async fn finish(&self, execution_id: &str, status: ExecutionStatus) {
        self.store
            .set_status(execution_id, status, None)
            .await
            .unwrap();
        self.hub.finish(execution_id);
    }
}

fn test_event(seq: u64) -> ExecutionEvent {
    ExecutionEvent {
        seq,
        at_ms: 1_700_000_000_000 + seq,
        body: EventBody::Controller(ControllerEvent::AgentDisconnected {
            reason: format!("event {seq}"),
        }),
    }
}

// ---------------------------------------------------------------- health

#[tokio::test]
async fn health_needs_no_token_and_readyz_checks_store_and_docker() {
    let h = harness().await;
    let reply = h.send("GET", "/healthz", None, None).await;
    assert_eq!(
        (reply.status, reply.json()),
        (StatusCode::OK, json!({ "status": "ok" }))
    );
    let reply = h.send("GET", "/readyz", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({ "status": "ready", "checks": { "store": "ok", "docker": "ok" } })
    );

    let down: ReadinessCheck =
        Arc::new(|| Box::pin(async { Err("dial unix /var/run/docker.sock: refused".to_string()) }));
    let h = harness_with(1024, down).await;
    let reply = h.send("GET", "/readyz", None, None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.json(),
        json!({ "status": "not_ready", "checks": { "store": "ok", "docker": "unavailable" } })
    );
    assert!(
        !String::from_utf8_lossy(&reply.bytes).contains("docker.sock"),
        "docker details leaked"
    );
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn every_api_route_needs_a_valid_bearer_token() {
    let h = harness().await;
    let routes = [
        ("POST", "/api/v1/executions"),
        ("GET", "/api/v1/executions"),
        ("GET", "/api/v1/executions/ex_x"),
        ("GET", "/api/v1/executions/ex_x/events"),
        ("GET", "/api/v1/executions/ex_x/stream"),
        ("POST", "/api/v1/executions/ex_x/cancel"),
        ("POST", "/api/v1/executions/ex_x/approvals/deploy"),
        ("GET", "/api/v1/executions/ex_x/artifacts"),
        ("GET", "/api/v1/executions/ex_x/artifacts/out/a.txt"),
        ("GET", "/api/v1/executions/ex_x/model-calls"),
        ("GET", "/api/v1/usage"),
        ("POST", "/api/v1/validate"),
        ("GET", "/metrics"),
    ];
    let last = if h.alice.ends_with('0') { "1" } else { "0" };
    let tampered = format!("{}{last}", &h.alice[..h.alice.len() - 1]);
    for (method, uri) in routes {
        for token in [None, Some("wrong"), Some(tampered.as_str()), Some("")] {
            let reply = h.send(method, uri, token, Some("{}")).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}"
            );
            assert_eq!(reply.error_code(), "unauthorized");
            assert_eq!(
                reply.headers[header::WWW_AUTHENTICATE],
                "Bearer realm=\"kiln\""
            );
        }
    }
    // A non-Bearer scheme is refused too.
    let request = Request::builder()
        .uri("/api/v1/executions")
        .header(header::AUTHORIZATION, format!("Basic {}", h.alice))
        .body(Body::empty())
        .unwrap();
    let response = app(h.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_submissions_get_precise_4xx_codes() {
    let h = harness().await;
    let oversized_recipe = json!({ "recipe": format!("{GOOD}#{}", "x".repeat(5000)) }).to_string();
    let over_body_limit = json!({ "recipe": "x".repeat(200_000) }).to_string();
    let invalid_yaml = json!({ "recipe": "name: [unclosed\nsteps:\n  - {id: a" }).to_string();
    let too_many_files =
        json!({ "recipe": GOOD, "files": { "a.yaml": GOOD, "b.yaml": GOOD, "c.yaml": GOOD } })
            .to_string();
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "malformed json",
            "{\"recipe\": ".to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "trailing garbage",
            format!("{} x", json!({ "recipe": GOOD })),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "not an object",
            "[1, 2]".to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "recipe not a string",
            "{\"recipe\": 5}".to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "inputs not an object",
            json!({ "recipe": GOOD, "inputs": "x" }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "files values not strings",
            json!({ "recipe": GOOD, "files": { "a.yaml": 1 } }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "unknown field",
            json!({ "recipe": GOOD, "timeout": 3 }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_field",
        ),
        (
            "neither recipe nor gallery",
            "{}".to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "both recipe and gallery",
            json!({ "recipe": GOOD, "gallery": "hello-world" }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "invalid yaml",
            invalid_yaml,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_recipe",
        ),
        (
            "oversized recipe",
            oversized_recipe,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "body over the limit",
            over_body_limit,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "too many files",
            too_many_files,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "unknown gallery",
            json!({ "gallery": "nope" }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_gallery_recipe",
        ),
        (
            "unknown class",
            json!({ "recipe": GOOD, "class": "gpu" }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_class",
        ),
        (
            "bad file name",
            json!({ "recipe": GOOD, "files": { "../x.yaml": GOOD } }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_file_name",
        ),
    ];
    for (what, body, status, code) in cases {
        let reply = h.post("/api/v1/executions", &h.alice, &body).await;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (status, code),
            "{what}: {}",
            String::from_utf8_lossy(&reply.bytes)
        );
    }
    // Nothing was queued by any of them.
    let list = h.get("/api/v1/executions", &h.admin).await.json();
    assert_eq!(list["executions"], json!([]));

    // The wrong content type.
    let request = Request::builder()
        .method("POST")
        .uri("/api/v1/executions")
        .header(header::AUTHORIZATION, format!("Bearer {}", h.alice))
        .header(header::CONTENT_TYPE, "text/yaml")
        .body(Body::from(GOOD))
        .unwrap();
    let response = app(h.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn error_details_name_the_field_and_every_diagnostic() {
    let h = harness().await;
    let reply = h
        .post(
            "/api/v1/executions",
            &h.alice,
            &json!({ "recipe": GOOD, "inputs": [] }).to_string(),
        )
        .await;
    assert_eq!(reply.json()["error"]["details"]["field"], "inputs");
    let reply = h
        .post(
            "/api/v1/executions",
            &h.alice,
            &json!({ "recipe": GOOD, "clas": "x" }).to_string(),
        )
        .await;
    assert_eq!(reply.error_code(), "unknown_field");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `clas`")
    );

    // Two independent problems: both are reported, each with path and line:col.
    let source = "name: hello\ndescription: x\nversion: one\nsteps:\n  - id: a\n    type: bash\n    command: echo\n    timout: 3\n";
    let reply = h
        .post(
            "/api/v1/executions",
            &h.alice,
            &json!({ "recipe": source }).to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let diagnostics = reply.json()["error"]["details"]["diagnostics"]
        .as_array()
        .unwrap()
        .clone();
    let positions: Vec<(String, String, u64, u64)> = diagnostics
        .iter()
        .map(|diag| {
            (
                diag["file"].as_str().unwrap().to_string(),
                diag["path"].as_str().unwrap().to_string(),
                diag["line"].as_u64().unwrap(),
                diag["column"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        positions,
        vec![
            ("recipe".to_string(), "version".to_string(), 3, 10),
            ("recipe".to_string(), "steps[0].timout".to_string(), 8, 5),
        ]
    );
    assert!(
        diagnostics
            .iter()
            .all(|diag| diag["severity"] == "error" && diag["code"].is_string())
    );

    let reply = h
        .post(
            "/api/v1/executions",
            &h.alice,
            &json!({ "recipe": format!("{GOOD}#{}", "x".repeat(5000)) }).to_string(),
        )
        .await;
    assert_eq!(reply.json()["error"]["details"]["field"], "recipe");
    assert_eq!(reply.json()["error"]["details"]["max_bytes"], 4096);
}

#[tokio::test]
async fn unknown_ids_routes_and_methods_are_precise() {
    let h = harness().await;
    for (method, uri) in [
        ("GET", "/api/v1/executions/ex_nope"),
        ("GET", "/api/v1/executions/ex_nope/events"),
        ("GET", "/api/v1/executions/ex_nope/stream"),
        ("POST", "/api/v1/executions/ex_nope/cancel"),
        ("GET", "/api/v1/executions/ex_nope/artifacts"),
        ("GET", "/api/v1/executions/ex_nope/artifacts/a.txt"),
    ] {
        let reply = h.send(method, uri, Some(&h.alice), None).await;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{method} {uri}"
        );
    }
    let approve = json!({ "decision": "approve" }).to_string();
    let reply = h
        .post("/api/v1/executions/ex_nope/approvals/s", &h.alice, &approve)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = h.get("/api/v1/nothing", &h.alice).await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    let reply = h
        .send("DELETE", "/api/v1/executions", Some(&h.alice), None)
        .await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let reply = h.get("/api/v1/executions/%FF", &h.alice).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_path");
    let reply = h.get("/api/v1/executions?limit=many", &h.alice).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    let reply = h.get("/api/v1/executions?status=done", &h.alice).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    let reply = h.get("/api/v1/executions?cursor=zzz", &h.alice).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    let reply = h.get("/api/v1/executions?colour=red", &h.alice).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
}

#[tokio::test]
async fn another_tokens_execution_is_indistinguishable_from_a_missing_one() {
    let h = harness().await;
    let id = h.submit_good().await;
    h.store.put_artifact(&id, "a.txt", b"secret").await.unwrap();
    let approve = json!({ "decision": "approve" }).to_string();
    for (method, suffix, body) in [
        ("GET", "", None),
        ("GET", "/events", None),
        ("GET", "/stream", None),
        ("POST", "/cancel", None),
        ("POST", "/approvals/deploy", Some(approve.as_str())),
        ("GET", "/artifacts", None),
        ("GET", "/artifacts/a.txt", None),
        ("GET", "/model-calls", None),
    ] {
        let theirs = h
            .send(
                method,
                &format!("/api/v1/executions/{id}{suffix}"),
                Some(&h.bob),
                body,
            )
            .await;
        let missing = h
            .send(
                method,
                &format!("/api/v1/executions/ex_00000000000000000000000000000000{suffix}"),
                Some(&h.bob),
                body,
            )
            .await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{method} {suffix}");
        let mut theirs_json = theirs.json();
        let mut missing_json = missing.json();
        theirs_json["error"]["details"]["id"] = Value::Null;
        missing_json["error"]["details"]["id"] = Value::Null;
        assert_eq!(
            theirs_json, missing_json,
            "{method} {suffix}: the 404s differ"
        );
    }
    // Bob's cancel did nothing.
    assert_eq!(
        h.store
            .get_execution(&id, None)
            .await
            .unwrap()
            .unwrap()
            .status,
        ExecutionStatus::Queued
    );
    let bobs = h.get("/api/v1/executions", &h.bob).await.json();
    assert_eq!(bobs["executions"], json!([]));
    let admins = h.get("/api/v1/executions", &h.admin).await.json();
    assert_eq!(
        admins["executions"][0]["id"],
        id.as_str(),
        "admins see every execution"
    );
}

// ---------------------------------------------------------------- submit, get, list

#[tokio::test]
async fn submit_queues_a_row_and_wakes_the_launcher() {
    let h = harness().await;
    let body = json!({ "recipe": GOOD, "inputs": { "who": "kiln" }, "files": { "lib.yaml": GOOD }, "class": "standard" });
    let reply = h
        .post("/api/v1/executions", &h.alice, &body.to_string())
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let submitted = reply.json();
    let id = submitted["id"].as_str().unwrap().to_string();
    assert_eq!(submitted["status"], "queued");
    assert_eq!(
        submitted["stream_url"],
        format!("/api/v1/executions/{id}/stream")
    );
    assert_eq!(
        submitted["events_url"],
        format!("/api/v1/executions/{id}/events")
    );
    tokio::time::timeout(HANG_GUARD, h.control.woken())
        .await
        .expect("submit must wake the launcher");

    let row = h
        .store
        .get_execution(&id, Some(&h.alice_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, ExecutionStatus::Queued);
    assert_eq!(row.recipe_source, GOOD);
    assert_eq!(row.class, "standard");
    assert_eq!(row.inputs["who"], "kiln");
    assert_eq!(row.files.keys().collect::<Vec<_>>(), vec!["lib.yaml"]);
    let audit = h.store.list_audit(Some(&id), 10).await.unwrap();
    assert_eq!(audit[0].action, "execution_submitted");
    assert_eq!(audit[0].actor, h.alice_id);

    let view = h
        .get(&format!("/api/v1/executions/{id}"), &h.alice)
        .await
        .json();
    assert_eq!(view["status"], "queued");
    assert_eq!(view["class"], "standard");
    assert_eq!(view["recipe"], GOOD);
    assert_eq!(view["files"], json!(["lib.yaml"]));
    assert_eq!(view["approvals"], json!([]));
    assert_eq!(
        view["links"]["stream"],
        format!("/api/v1/executions/{id}/stream")
    );
}

#[tokio::test]
async fn gallery_submissions_carry_their_sub_recipes() {
    let h = harness().await;
    let id = h.submit_as(&h.alice, json!({ "gallery": "compose" })).await;
    let row = h.store.get_execution(&id, None).await.unwrap().unwrap();
    assert_eq!(row.gallery_name.as_deref(), Some("compose"));
    assert!(
        row.files.contains_key("lib-word-stats.yaml"),
        "{:?}",
        row.files.keys()
    );
}

#[tokio::test]
async fn list_is_paginated_newest_first_and_filterable() {
    let h = harness().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(h.submit_good().await);
    }
    h.store
        .set_status(&ids[1], ExecutionStatus::Failed, Some("exit 1"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut uri = "/api/v1/executions?limit=2".to_string();
    loop {
        let page = h.get(&uri, &h.alice).await.json();
        seen.extend(
            page["executions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ex| ex["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/v1/executions?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().cloned().collect::<Vec<_>>());
    let failed = h
        .get("/api/v1/executions?status=failed", &h.alice)
        .await
        .json();
    assert_eq!(failed["executions"].as_array().unwrap().len(), 1);
    assert_eq!(failed["executions"][0]["id"], ids[1].as_str());
    assert_eq!(failed["executions"][0]["status_detail"], "exit 1");
}

// ---------------------------------------------------------------- events

#[tokio::test]
async fn events_are_paged_by_seq() {
    let h = harness().await;
    let id = h.submit_good().await;
    let stored = h.emit(&id, 1..=5).await;
    let page = h
        .get(
            &format!("/api/v1/executions/{id}/events?after=0&limit=2"),
            &h.alice,
        )
        .await
        .json();
    assert_eq!(page["events"], serde_json::to_value(&stored[..2]).unwrap());
    assert_eq!(
        (page["next_after"].as_u64(), page["status"].as_str()),
        (Some(2), Some("queued"))
    );
    let page = h
        .get(&format!("/api/v1/executions/{id}/events?after=2"), &h.alice)
        .await
        .json();
    assert_eq!(page["events"], serde_json::to_value(&stored[2..]).unwrap());
    assert_eq!(page["next_after"], 5);
    let page = h
        .get(&format!("/api/v1/executions/{id}/events?after=5"), &h.alice)
        .await
        .json();
    assert_eq!(
        (page["events"].clone(), page["next_after"].as_u64()),
        (json!([]), Some(5))
    );
    // The documented event shape.
    assert_eq!(
        serde_json::to_value(&stored[0]).unwrap(),
        json!({ "seq": 1, "at_ms": 1_700_000_000_001_u64, "body": { "source": "controller", "event": { "type": "agent_disconnected", "reason": "event 1" } } })
    );
    for bad in ["after=-1", "after=x", "limit=0x", "seq=1"] {
        let reply = h
            .get(&format!("/api/v1/executions/{id}/events?{bad}"), &h.alice)
            .await;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "invalid_query"),
            "{bad}"
        );
    }
}

// ---------------------------------------------------------------- cancel

#[tokio::test]
async fn cancel_a_queued_execution_finishes_it_and_a_running_one_is_signalled() {
    let h = harness().await;
    let queued = h.submit_good().await;
    let reply = h
        .send(
            "POST",
            &format!("/api/v1/executions/{queued}/cancel"),
            Some(&h.alice),
            None,
        )
        .await;
    assert_eq!(
        (reply.status, reply.json()),
        (
            StatusCode::ACCEPTED,
            json!({ "id": queued, "status": "cancelled" })
        )
    );
    assert_eq!(
        h.store
            .get_execution(&queued, None)
            .await
            .unwrap()
            .unwrap()
            .status,
        ExecutionStatus::Cancelled
    );
    assert!(
        h.store.claim_next_queued().await.unwrap().is_none(),
        "a cancelled execution is never claimed"
    );
    let again = h
        .send(
            "POST",
            &format!("/api/v1/executions/{queued}/cancel"),
            Some(&h.alice),
            None,
        )
        .await;
    assert_eq!(
        (
            again.status,
            again.json()["error"]["details"]["reason"].as_str()
        ),
        (StatusCode::CONFLICT, Some("execution_finished"))
    );

    let running = h.submit_good().await;
    h.store.claim_next_queued().await.unwrap().unwrap();
    let (mut commands, _) = h.control.register(&running);
    let reply = h
        .send(
            "POST",
            &format!("/api/v1/executions/{running}/cancel"),
            Some(&h.alice),
            None,
        )
        .await;
    assert_eq!(
        (reply.status, reply.json()["status"].as_str()),
        (StatusCode::ACCEPTED, Some("running"))
    );
    assert!(matches!(
        commands.recv().await,
        Some(Command::Cancel { .. })
    ));
    let actions: Vec<_> = h
        .store
        .list_audit(Some(&running), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    assert_eq!(actions, vec!["execution_cancelled", "execution_submitted"]);
}

// ---------------------------------------------------------------- approvals

#[tokio::test]
async fn approvals_decide_once_and_refuse_with_409() {
    let h = harness().await;
    let id = h.submit_good().await;
    let uri = |stage: &str| format!("/api/v1/executions/{id}/approvals/{stage}");
    let approve = json!({ "decision": "approve", "message": "ship it" }).to_string();
    let deny = json!({ "decision": "deny" }).to_string();

    // No gate open yet.
    let reply = h.post(&uri("deploy"), &h.alice, &approve).await;
    assert_eq!(
        (
            reply.status,
            reply.json()["error"]["details"]["reason"].as_str()
        ),
        (StatusCode::CONFLICT, Some("not_pending"))
    );

    h.store.claim_next_queued().await.unwrap().unwrap();
    let (mut commands, _) = h.control.register(&id);
    for stage in ["deploy", "release"] {
        let gate = NewApproval {
            stage: stage.into(),
            prompt: "go?".into(),
            timeout_secs: Some(60),
            default_decision: Some(ApprovalDecision::Deny),
        };
        h.store.request_approval(&id, &gate).await.unwrap();
        h.control.gate_opened(&id, stage);
    }
    let view = h
        .get(&format!("/api/v1/executions/{id}"), &h.alice)
        .await
        .json();
    assert_eq!(view["approvals"][0]["pending"], true);

    let reply = h.post(&uri("deploy"), &h.alice, &approve).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.bytes)
    );
    assert_eq!(
        reply.json(),
        json!({ "id": id, "stage": "deploy", "decision": "approve", "by": h.alice_id })
    );
    match commands.recv().await {
        Some(Command::Approval { stage, decision }) => {
            assert_eq!(
                (
                    stage.as_str(),
                    decision.approve,
                    decision.message.as_deref()
                ),
                ("deploy", true, Some("ship it"))
            );
        }
        other => panic!("expected an approval command, got {other:?}"),
    }
    let reply = h.post(&uri("deploy"), &h.alice, &approve).await;
    assert_eq!(
        (
            reply.status,
            reply.json()["error"]["details"]["reason"].as_str()
        ),
        (StatusCode::CONFLICT, Some("already_decided"))
    );

    // Deny is final: a later approve of the same gate is refused.
    let reply = h.post(&uri("release"), &h.alice, &deny).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = h.post(&uri("release"), &h.alice, &approve).await;
    assert_eq!(
        (
            reply.status,
            reply.json()["error"]["details"]["decision"].as_str()
        ),
        (StatusCode::CONFLICT, Some("deny"))
    );
    let stored = h.store.get_approval(&id, "release").await.unwrap().unwrap();
    assert_eq!(
        (stored.decision, stored.decided_by.as_deref()),
        (Some(ApprovalDecision::Deny), Some(h.alice_id.as_str()))
    );

    // Bad bodies.
    for (body, code) in [
        (json!({ "decision": "maybe" }), "invalid_field"),
        (
            json!({ "decision": "approve", "by": "someone-else" }),
            "unknown_field",
        ),
        (json!({ "message": "hi" }), "invalid_field"),
        (
            json!({ "decision": "approve", "message": "x".repeat(5000) }),
            "invalid_field",
        ),
    ] {
        let reply = h.post(&uri("other"), &h.alice, &body.to_string()).await;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, code),
            "{body}"
        );
    }

    // Once the execution is final, nothing can be decided.
    h.store
        .set_status(&id, ExecutionStatus::Denied, None)
        .await
        .unwrap();
    let reply = h.post(&uri("other"), &h.alice, &approve).await;
    assert_eq!(
        (
            reply.status,
            reply.json()["error"]["details"]["reason"].as_str()
        ),
        (StatusCode::CONFLICT, Some("execution_finished"))
    );
    let actions: Vec<_> = h
        .store
        .list_audit(Some(&id), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    assert_eq!(
        actions,
        vec![
            "approval_decided",
            "approval_decided",
            "execution_submitted"
        ]
    );
}

// ---------------------------------------------------------------- artifacts

#[tokio::test]
async fn artifacts_are_listed_and_downloaded_as_attachments() {
    let h = harness().await;
    let id = h.submit_good().await;
    let info = h
        .store
        .put_artifact(&id, "out/report.txt", b"<html>hello</html>")
        .await
        .unwrap();
    let list = h
        .get(&format!("/api/v1/executions/{id}/artifacts"), &h.alice)
        .await
        .json();
    assert_eq!(
        list,
        json!({ "artifacts": [{
            "name": "out/report.txt", "size_bytes": 18, "sha256": info.sha256,
            "created_at_ms": info.created_at_ms, "url": format!("/api/v1/executions/{id}/artifacts/out/report.txt"),
        }]})
    );
    let reply = h
        .get(
            &format!("/api/v1/executions/{id}/artifacts/out/report.txt"),
            &h.alice,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.bytes, b"<html>hello</html>");
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert_eq!(
        reply.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"report.txt\""
    );
    assert_eq!(reply.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let missing = h
        .get(
            &format!("/api/v1/executions/{id}/artifacts/out/none.txt"),
            &h.alice,
        )
        .await;
    missing.assert_error(StatusCode::NOT_FOUND, "not_found");
}

// ---------------------------------------------------------------- validate

#[tokio::test]
async fn validate_returns_every_diagnostic_with_200() {
    let h = harness().await;
    let reply = h
        .post(
            "/api/v1/validate",
            &h.alice,
            &json!({ "recipe": GOOD }).to_string(),
        )
        .await;
    assert_eq!(
        (reply.status, reply.json()),
        (StatusCode::OK, json!({ "valid": true, "diagnostics": [] }))
    );

    let source = "name: hello\ndescription: x\nversion: one\nsteps:\n  - id: a\n    type: recipe\n    recipe: missing.yaml\n";
    let reply = h
        .post(
            "/api/v1/validate",
            &h.alice,
            &json!({ "recipe": source }).to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["valid"], false);
    let paths: Vec<_> = body["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|diag| diag["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, vec!["version", "steps[0].recipe"]);
    // The same sub-recipe, submitted as a file, resolves.
    let body = json!({ "recipe": source.replace("version: one", "version: 1.0.0"), "files": { "missing.yaml": GOOD } });
    let reply = h
        .post("/api/v1/validate", &h.alice, &body.to_string())
        .await;
    assert_eq!(reply.json(), json!({ "valid": true, "diagnostics": [] }));
    // Gallery recipes resolve as sub-recipes.
    let body = json!({ "recipe": source.replace("version: one", "version: 1.0.0").replace("missing.yaml", "lib-word-stats.yaml") });
    let reply = h
        .post("/api/v1/validate", &h.alice, &body.to_string())
        .await;
    assert_eq!(reply.json()["valid"], true, "{}", reply.json());

    let reply = h
        .post(
            "/api/v1/validate",
            &h.alice,
            &json!({ "recipe": "x".repeat(5000) }).to_string(),
        )
        .await;
    reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let reply = h
        .post("/api/v1/validate", &h.alice, "{\"recipe\": 1}")
        .await;
    reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
}

// ---------------------------------------------------------------- WebSocket stream, real socket

struct Server {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(h: &Harness) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(h.state.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Server { addr, task }
}

type Client = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(server: &Server, token: &str, execution_id: &str, after: Option<u64>) -> Client {
    let query = after.map(|seq| format!("?after={seq}")).unwrap_or_default();
    let url = format!(
        "ws://{}/api/v1/executions/{execution_id}/stream{query}",
        server.addr
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (client, _response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    client
}

/// What a watcher saw: events in order, the `end` message, and the close frame.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<ExecutionEvent>,
    end: Option<StreamMessage>,
    close: Option<(u16, String)>,
}

impl Seen {
    fn seqs(&self) -> Vec<u64> {
        self.events.iter().map(|event| event.seq).collect()
    }
}

/// Reads until `n_events` more events arrived (None = until the server closes).
async fn read(client: &mut Client, seen: &mut Seen, n_events: Option<usize>) {
    let target = n_events.map(|n| seen.events.len() + n);
    tokio::time::timeout(HANG_GUARD, async {
        while target.is_none_or(|target| seen.events.len() < target) {
            let Some(message) = client.next().await else {
                return;
            };
            match message.unwrap() {
                WsMessage::Text(text) => {
                    match serde_json::from_str::<StreamMessage>(&text).unwrap() {
                        StreamMessage::Event { event } => seen.events.push(event),
                        StreamMessage::Heartbeat { .. } => {}
                        end @ StreamMessage::End { .. } => seen.end = Some(end),
                    }
                }
                WsMessage::Close(frame) => {
                    seen.close =
                        frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()));
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the stream stalled");
}

#[tokio::test]
async fn stream_replays_then_tails_live_with_no_gap_or_duplicate() {
    let h = harness().await;
    let server = serve(&h).await;
    let id = h.submit_good().await;
    let mut all = h.emit(&id, 1..=3).await;

    let mut first = connect(&server, &h.alice, &id, None).await;
    let mut first_seen = Seen::default();
    read(&mut first, &mut first_seen, Some(3)).await;
    all.extend(h.emit(&id, 4..=6).await);
    read(&mut first, &mut first_seen, Some(3)).await;

    // A second watcher joining midway gets the identical sequence from the start.
    let mut second = connect(&server, &h.alice, &id, Some(0)).await;
    let mut second_seen = Seen::default();
    read(&mut second, &mut second_seen, Some(6)).await;
    all.extend(h.emit(&id, 7..=8).await);
    h.finish(&id, ExecutionStatus::Succeeded).await;
    read(&mut first, &mut first_seen, None).await;
    read(&mut second, &mut second_seen, None).await;

    let expected_end = StreamMessage::End {
        status: ExecutionStatus::Succeeded,
        detail: None,
        last_seq: 8,
    };
    for seen in [&first_seen, &second_seen] {
        assert_eq!(seen.events, all);
        assert_eq!(seen.end.as_ref(), Some(&expected_end));
        assert_eq!(seen.close, Some((1000, "finished".to_string())));
    }

    // Resuming after a seq gives exactly the rest, then the end.
    let mut resumed = connect(&server, &h.alice, &id, Some(5)).await;
    let mut resumed_seen = Seen::default();
    read(&mut resumed, &mut resumed_seen, None).await;
    assert_eq!(resumed_seen.seqs(), vec![6, 7, 8]);
    assert_eq!(resumed_seen.end, Some(expected_end.clone()));

    // A finished execution with everything already seen: just the end.
    let mut caught_up = connect(&server, &h.alice, &id, Some(8)).await;
    let mut caught_up_seen = Seen::default();
    read(&mut caught_up, &mut caught_up_seen, None).await;
    assert!(caught_up_seen.events.is_empty());
    assert_eq!(caught_up_seen.end, Some(expected_end));
}

#[tokio::test]
async fn lagging_watcher_is_closed_with_a_reason_and_resumes_without_gap() {
    let h = harness_with(4, docker_ok()).await;
    let server = serve(&h).await;
    let id = h.submit_good().await;
    let mut all = h.emit(&id, 1..=1).await;
    let mut client = connect(&server, &h.alice, &id, None).await;
    let mut seen = Seen::default();
    read(&mut client, &mut seen, Some(1)).await;

    // Persist 49 events, then publish them in one burst into a 4-slot channel:
    // the watcher's receiver overflows whatever it was doing.
    let burst: Vec<_> = (2..=50).map(test_event).collect();
    h.store.append_events(&id, &burst, None).await.unwrap();
    for event in &burst {
        h.hub.publish(&id, event.clone());
    }
    all.extend(burst);
    read(&mut client, &mut seen, None).await;
    let (code, reason) = seen
        .close
        .clone()
        .expect("a lagging watcher gets a close frame");
    assert_eq!(code, 4008);
    let last_seq = seen.events.last().map_or(0, |event| event.seq);
    assert_eq!(reason, format!("lagged; resume with after={last_seq}"));
    assert_eq!(
        seen.events,
        all[..last_seq as usize],
        "what it got before the close is gap-free"
    );
    assert!(seen.end.is_none());

    let mut resumed = connect(&server, &h.alice, &id, Some(last_seq)).await;
    let mut resumed_seen = Seen::default();
    read(
        &mut resumed,
        &mut resumed_seen,
        Some(50 - last_seq as usize),
    )
    .await;
    h.finish(&id, ExecutionStatus::Failed).await;
    read(&mut resumed, &mut resumed_seen, None).await;
    let mut joined = seen.events.clone();
    joined.extend(resumed_seen.events.clone());
    assert_eq!(joined, all, "close + resume loses and repeats nothing");
    assert_eq!(
        resumed_seen.end,
        Some(StreamMessage::End {
            status: ExecutionStatus::Failed,
            detail: None,
            last_seq: 50
        })
    );
}

#[tokio::test]
async fn stream_of_a_queued_execution_cancelled_by_the_api_ends() {
    let h = harness().await;
    let server = serve(&h).await;
    let id = h.submit_good().await;
    let mut client = connect(&server, &h.alice, &id, None).await;
    // Make sure the watcher is live (a heartbeat-free way: an event round-trip).
    h.emit(&id, 1..=1).await;
    let mut seen = Seen::default();
    read(&mut client, &mut seen, Some(1)).await;
    let reply = h
        .send(
            "POST",
            &format!("/api/v1/executions/{id}/cancel"),
            Some(&h.alice),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    read(&mut client, &mut seen, None).await;
    assert_eq!(
        seen.end,
        Some(StreamMessage::End {
            status: ExecutionStatus::Cancelled,
            detail: Some("cancelled before it started".into()),
            last_seq: 1
        })
    );
}

#[tokio::test]
async fn stream_refuses_before_upgrading() {
    let h = harness().await;
    let server = serve(&h).await;
    let id = h.submit_good().await;
    let url = format!("ws://{}/api/v1/executions/{id}/stream", server.addr);
    for token in [None, Some(h.bob.as_str())] {
        let mut request = url.clone().into_client_request().unwrap();
        if let Some(token) = token {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
        }
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let err = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("expected an HTTP refusal, got {err:?}")
        };
        let expected = if token.is_none() { 401 } else { 404 };
        assert_eq!(response.status().as_u16(), expected);
    }
    // A plain GET (no upgrade) gets a JSON 426.
    let reply = h
        .get(&format!("/api/v1/executions/{id}/stream"), &h.alice)
        .await;
    reply.assert_error(StatusCode::UPGRADE_REQUIRED, "websocket_required");
}

#[tokio::test]
async fn idle_streams_get_heartbeats_with_the_last_seq() {
    let h = harness_configured(1024, docker_ok(), |config| {
        config.server.ws_heartbeat_secs = 1
    })
    .await;
    let server = serve(&h).await;
    let id = h.submit_good().await;
    h.emit(&id, 1..=2).await;
    let mut client = connect(&server, &h.alice, &id, None).await;
    let mut n_events = 0;
    let heartbeat = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let message = client.next().await.unwrap().unwrap();
            let WsMessage::Text(text) = message else {
                continue;
            };
            match serde_json::from_str::<StreamMessage>(&text).unwrap() {
                StreamMessage::Event { .. } => n_events += 1,
                other => return other,
            }
        }
    })
    .await
    .expect("no heartbeat arrived");
    assert_eq!(n_events, 2);
    assert_eq!(heartbeat, StreamMessage::Heartbeat { last_seq: 2 });
}

#[tokio::test]
async fn server_shutdown_closes_live_watchers_with_a_resume_point() {
    let mut h = harness().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    h.state = h.state.clone().with_shutdown(shutdown.clone());
    let server = serve(&h).await;
    let id = h.submit_good().await;
    h.emit(&id, 1..=3).await;
    let mut client = connect(&server, &h.alice, &id, None).await;
    let mut seen = Seen::default();
    read(&mut client, &mut seen, Some(3)).await;
    shutdown.cancel();
    read(&mut client, &mut seen, None).await;
    assert_eq!(seen.seqs(), vec![1, 2, 3]);
    assert!(seen.end.is_none());
    assert_eq!(
        seen.close,
        Some((1012, "server stopping; resume with after=3".to_string()))
    );
}

// ---------------------------------------------------------------- model usage

impl Harness {
    /// Records one model call as the gateway does; `end: None` leaves it running.
    async fn model_call(
        &self,
        execution_id: &str,
        user_id: &str,
        request_id: u64,
        step_id: &str,
        provider_model: (&str, &str),
        end: Option<(ModelCallStatus, Option<&str>, u64, u64)>,
    ) -> i64 {
        let call = NewModelCall {
            execution_id: execution_id.to_string(),
            request_id,
            step_id: step_id.to_string(),
            user_id: user_id.to_string(),
            provider: provider_model.0.to_string(),
            model: provider_model.1.to_string(),
            profile: "self".to_string(),
            started_at_ms: 1_700_000_000_000 + i64::try_from(request_id).unwrap(),
        };
        let id = self.store.begin_model_call(&call).await.unwrap();
        if let Some((status, error_code, input_tokens, output_tokens)) = end {
            let end = ModelCallEnd {
                status,
                provider: None,
                model: None,
                error_code: error_code.map(str::to_string),
                input_tokens,
                output_tokens,
                finished_at_ms: 1_700_000_001_000 + i64::try_from(request_id).unwrap(),
            };
            self.store.finish_model_call(id, &end).await.unwrap();
        }
        id
    }
}

const LOCAL: (&str, &str) = ("local", "qwen");

#[tokio::test]
async fn model_usage_and_model_calls_of_an_execution_come_from_the_store() {
    let h = harness().await;
    let id = h.submit_good().await;
    let view = h.get(&format!("/api/v1/executions/{id}"), &h.alice).await;
    assert_eq!(view.status, StatusCode::OK);
    assert_eq!(
        view.json()["model_usage"],
        json!({ "requests": 0, "input_tokens": 0, "output_tokens": 0, "steps": {} })
    );
    let reply = h
        .get(&format!("/api/v1/executions/{id}/model-calls"), &h.alice)
        .await;
    assert_eq!(
        (reply.status, reply.json()),
        (StatusCode::OK, json!({ "model_calls": [] }))
    );

    let first = h
        .model_call(
            &id,
            &h.alice_id,
            1,
            "ask",
            LOCAL,
            Some((ModelCallStatus::Completed, None, 12, 5)),
        )
        .await;
    let second = h
        .model_call(
            &id,
            &h.alice_id,
            2,
            "ask",
            ("anthropic", "claude-\"x\""),
            Some((ModelCallStatus::Failed, Some("provider_unavailable"), 0, 0)),
        )
        .await;
    let third = h
        .model_call(&id, &h.alice_id, 3, "review", LOCAL, None)
        .await;

    let view = h
        .get(&format!("/api/v1/executions/{id}"), &h.alice)
        .await
        .json();
    assert_eq!(
        view["model_usage"],
        json!({
            "requests": 3, "input_tokens": 12, "output_tokens": 5,
            "steps": {
                "ask": { "requests": 2, "input_tokens": 12, "output_tokens": 5 },
                "review": { "requests": 1, "input_tokens": 0, "output_tokens": 0 },
            },
        })
    );
    let expected = json!({ "model_calls": [
        {
            "id": first, "request_id": 1, "step_id": "ask", "provider": "local", "model": "qwen",
            "profile": "self", "status": "completed", "error_code": null,
            "input_tokens": 12, "output_tokens": 5,
            "started_at_ms": 1_700_000_000_001_i64, "finished_at_ms": 1_700_000_001_001_i64,
        },
        {
            "id": second, "request_id": 2, "step_id": "ask", "provider": "anthropic",
            "model": "claude-\"x\"", "profile": "self", "status": "failed",
            "error_code": "provider_unavailable", "input_tokens": 0, "output_tokens": 0,
            "started_at_ms": 1_700_000_000_002_i64, "finished_at_ms": 1_700_000_001_002_i64,
        },
        {
            "id": third, "request_id": 3, "step_id": "review", "provider": "local", "model": "qwen",
            "profile": "self", "status": "running", "error_code": null,
            "input_tokens": 0, "output_tokens": 0,
            "started_at_ms": 1_700_000_000_003_i64, "finished_at_ms": null,
        },
    ]});
    let uri = format!("/api/v1/executions/{id}/model-calls");
    let reply = h.get(&uri, &h.alice).await;
    assert_eq!(
        (reply.status, reply.json()),
        (StatusCode::OK, expected.clone())
    );
    // Admins see every execution's calls; another user gets the same 404 as a missing execution.
    let reply = h.get(&uri, &h.admin).await;
    assert_eq!((reply.status, reply.json()), (StatusCode::OK, expected));
    h.get(&uri, &h.bob)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.get("/api/v1/executions/ex_missing/model-calls", &h.alice)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn usage_shows_the_callers_own_totals_limits_and_what_remains() {
    let h = harness_configured(1024, docker_ok(), |config| {
        config.gateway.budgets.per_user = controller::gateway::Budget {
            max_requests: Some(3),
            max_input_tokens: Some(100),
            max_output_tokens: None,
        };
    })
    .await;
    let first = h.submit_good().await;
    let second = h.submit_good().await;
    let bobs = h.submit_as(&h.bob, json!({ "recipe": GOOD })).await;
    let bob_id = h
        .store
        .get_execution(&bobs, None)
        .await
        .unwrap()
        .unwrap()
        .owner_token_id;
    let done = Some((ModelCallStatus::Completed, None, 70, 9));
    h.model_call(&first, &h.alice_id, 1, "ask", LOCAL, done)
        .await;
    h.model_call(&second, &h.alice_id, 1, "ask", LOCAL, done)
        .await;
    h.model_call(
        &bobs,
        &bob_id,
        1,
        "ask",
        LOCAL,
        Some((ModelCallStatus::Cancelled, None, 4, 1)),
    )
    .await;

    // Input tokens went over the limit (the call that crossed it was admitted): 0 remain.
    let reply = h.get("/api/v1/usage", &h.alice).await;
    assert_eq!(
        (reply.status, reply.json()),
        (
            StatusCode::OK,
            json!({
                "user_id": h.alice_id,
                "usage": { "requests": 2, "input_tokens": 140, "output_tokens": 18 },
                "limits": { "requests": 3, "input_tokens": 100, "output_tokens": null },
                "remaining": { "requests": 1, "input_tokens": 0, "output_tokens": null },
            })
        )
    );
    let reply = h.get("/api/v1/usage", &h.bob).await;
    assert_eq!(
        reply.json(),
        json!({
            "user_id": bob_id,
            "usage": { "requests": 1, "input_tokens": 4, "output_tokens": 1 },
            "limits": { "requests": 3, "input_tokens": 100, "output_tokens": null },
            "remaining": { "requests": 2, "input_tokens": 96, "output_tokens": null },
        })
    );

    // Without configured budgets every limit is null (unlimited).
    let h = harness().await;
    let reply = h.get("/api/v1/usage", &h.alice).await;
    assert_eq!(
        reply.json(),
        json!({
            "user_id": h.alice_id,
            "usage": { "requests": 0, "input_tokens": 0, "output_tokens": 0 },
            "limits": { "requests": null, "input_tokens": null, "output_tokens": null },
            "remaining": { "requests": null, "input_tokens": null, "output_tokens": null },
        })
    );
}

#[tokio::test]
async fn metrics_need_an_admin_token_and_are_computed_from_the_store() {
    let h = harness().await;
    let reply = h.send("GET", "/metrics", None, None).await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = h.send("GET", "/metrics", Some("kiln_nope"), None).await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = h.get("/metrics", &h.alice).await;
    reply.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert!(!String::from_utf8_lossy(&reply.bytes).contains("kiln_executions"));

    let queued = h.submit_good().await;
    let running = h.submit_good().await;
    let failed = h.submit_good().await;
    h.store
        .set_status(&running, ExecutionStatus::Running, None)
        .await
        .unwrap();
    h.store
        .set_status(&failed, ExecutionStatus::Failed, None)
        .await
        .unwrap();
    let done = Some((ModelCallStatus::Completed, None, 10, 4));
    h.model_call(&running, &h.alice_id, 1, "ask", LOCAL, done)
        .await;
    h.model_call(&failed, &h.alice_id, 1, "ask", LOCAL, done)
        .await;
    h.model_call(
        &failed,
        &h.alice_id,
        2,
        "ask",
        ("anthropic", "claude-\"x\"\\y\nz"),
        Some((ModelCallStatus::Failed, Some("rate_limited"), 3, 0)),
    )
    .await;
    h.model_call(&running, &h.alice_id, 2, "ask", LOCAL, None)
        .await;
    h.model_call(&queued, &h.alice_id, 1, "ask", LOCAL, None)
        .await;

    let reply = h.get("/metrics", &h.admin).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    let version = env!("CARGO_PKG_VERSION");
    let expected = format!(
        "\
# HELP kiln_build_info Always 1; the version label is the controller's version.
# TYPE kiln_build_info gauge
kiln_build_info{{version=\"{version}\"}} 1
# HELP kiln_executions Executions in the store, by status.
# TYPE kiln_executions gauge
kiln_executions{{status=\"queued\"}} 1
kiln_executions{{status=\"running\"}} 1
kiln_executions{{status=\"succeeded\"}} 0
kiln_executions{{status=\"failed\"}} 1
kiln_executions{{status=\"timed_out\"}} 0
kiln_executions{{status=\"oom\"}} 0
kiln_executions{{status=\"cancelled\"}} 0
kiln_executions{{status=\"agent_lost\"}} 0
kiln_executions{{status=\"sandbox_crashed\"}} 0
kiln_executions{{status=\"protocol_error\"}} 0
kiln_executions{{status=\"denied\"}} 0
# HELP kiln_model_calls_total Model calls that ended, by provider, model and status.
# TYPE kiln_model_calls_total counter
kiln_model_calls_total{{provider=\"anthropic\",model=\"claude-\\\"x\\\"\\\\y\\nz\",status=\"failed\"}} 1
kiln_model_calls_total{{provider=\"local\",model=\"qwen\",status=\"completed\"}} 2
# HELP kiln_model_calls_running Model calls in flight, by provider and model.
# TYPE kiln_model_calls_running gauge
kiln_model_calls_running{{provider=\"local\",model=\"qwen\"}} 2
# HELP kiln_model_input_tokens_total Input (prompt) tokens of model calls, by provider and model.
# TYPE kiln_model_input_tokens_total counter
kiln_model_input_tokens_total{{provider=\"anthropic\",model=\"claude-\\\"x\\\"\\\\y\\nz\"}} 3
kiln_model_input_tokens_total{{provider=\"local\",model=\"qwen\"}} 20
# HELP kiln_model_output_tokens_total Output (completion) tokens of model calls, by provider and model.
# TYPE kiln_model_output_tokens_total counter
kiln_model_output_tokens_total{{provider=\"anthropic\",model=\"claude-\\\"x\\\"\\\\y\\nz\"}} 0
kiln_model_output_tokens_total{{provider=\"local\",model=\"qwen\"}} 8
"
    );
    assert_eq!(String::from_utf8(reply.bytes).unwrap(), expected);
}

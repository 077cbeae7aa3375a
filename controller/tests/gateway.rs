//! Model gateway against a real local HTTP provider (tests/gateway/provider.rs):
//! streaming assembly for both protocols, retries with recorded backoff,
//! failure classification, cancellation seen by the provider, key handling
//! and budgets through `Gateway::call`.

#![allow(clippy::unwrap_used)]

#[path = "gateway/provider.rs"]
mod provider;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller::gateway::budget::{Budget, BudgetLimit, BudgetScope, BudgetUsage};
use controller::gateway::client::{
    ChatMessage, ChatRole, Completion, Parameters, ProviderClient, ProviderError, ResolvedRequest,
    Usage,
};
use controller::gateway::config::{
    GatewayConfig, PreferenceEntry, ProviderConfig, ResponseLimits, load_api_key,
};
use controller::gateway::profiles::AgentProfiles;
use controller::gateway::resolve::{ResolveInput, StepSelection};
use controller::gateway::retry::{RetryClock, RetryNotice, RetryPolicy, stream_with_retry};
use controller::gateway::{CallError, CallScope, Gateway};
use provider::{Script, TestProvider};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const OPENAI_CANARY: &str = "sk-canary-openai-5f2d9c";
const ANTHROPIC_CANARY: &str = "sk-ant-canary-7a41e0";

/// Records sleeps instead of sleeping; jitter fixed at 1 (full backoff).
#[derive(Default)]
struct RecordingClock {
    sleeps: Mutex<Vec<Duration>>,
}

impl RetryClock for RecordingClock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.sleeps.lock().unwrap().push(duration);
        Box::pin(async {})
    }

    fn jitter(&self) -> f64 {
        1.0
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The config an operator would write for the test server.
fn openai_config(base_url: String) -> ProviderConfig {
    toml::from_str(&format!(
        r#"
        name = "local"
        kind = "openai"
        base_url = "{base_url}"
        api_key_env = "LOCAL_KEY"
        default_model = "llama3.2"
        models = {{ fast = "llama3.2:1b" }}
        request_timeout_secs = 60
        connect_timeout_secs = 5
        "#
    ))
    .unwrap()
}

fn anthropic_config(base_url: String, key_file: &std::path::Path) -> ProviderConfig {
    toml::from_str(&format!(
        r#"
        name = "anthropic"
        kind = "anthropic"
        base_url = "{base_url}"
        api_key_file = "{}"
        default_model = "claude-sonnet-4-5"
        "#,
        key_file.display()
    ))
    .unwrap()
}

fn openai_client(server: &TestProvider) -> ProviderClient {
    let config = openai_config(server.openai_base_url());
    let key = load_api_key(&config, &env(&[("LOCAL_KEY", OPENAI_CANARY)])).unwrap();
    ProviderClient::new(config, key, ResponseLimits::default()).unwrap()
}

fn anthropic_client(server: &TestProvider, dir: &tempfile::TempDir) -> ProviderClient {
    let key_file = dir.path().join("anthropic.key");
    std::fs::write(&key_file, format!("{ANTHROPIC_CANARY}\n")).unwrap();
    let config = anthropic_config(server.anthropic_base_url(), &key_file);
    let key = load_api_key(&config, &env(&[])).unwrap();
    ProviderClient::new(config, key, ResponseLimits::default()).unwrap()
}

fn request(provider: &str, model: &str) -> ResolvedRequest {
    ResolvedRequest {
        provider: provider.to_string(),
        model: model.to_string(),
        system: Some("be brief".to_string()),
        messages: vec![ChatMessage {
            role: ChatRole::User,
            content: "say hello".to_string(),
        }],
        parameters: Parameters {
            temperature: Some(0.5),
            max_tokens: Some(64),
            top_p: None,
            stop: vec![],
        },
        timeout: None,
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(30),
        max_retry_after: Duration::from_secs(60),
    }
}

/// `stream_with_retry` with the default test policy, discarding chunks and notices.
async fn call_with_retry(
    client: &ProviderClient,
    clock: &RecordingClock,
) -> Result<Completion, ProviderError> {
    stream_with_retry(
        client,
        &request("local", "llama3.2"),
        &CancellationToken::new(),
        &policy(),
        clock,
        &mut |_: &str| {},
        &mut |_: &RetryNotice| {},
    )
    .await
}

async fn collect(
    client: &ProviderClient,
    request: &ResolvedRequest,
    cancel: &CancellationToken,
) -> (Result<Completion, ProviderError>, Vec<String>) {
    let mut chunks = Vec::new();
    let result = client
        .stream(request, cancel, &mut |text: &str| {
            chunks.push(text.to_string())
        })
        .await;
    (result, chunks)
}

#[tokio::test]
async fn openai_stream_assembles_text_usage_and_sends_the_key() {
    let server = TestProvider::start(vec![Script::stream(&["Hel", "lo", ", world"], 11, 3)]).await;
    let client = openai_client(&server);
    let (result, chunks) = collect(
        &client,
        &request("local", "llama3.2"),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(chunks, vec!["Hel", "lo", ", world"]);
    assert_eq!(
        result.unwrap(),
        Completion {
            text: "Hello, world".into(),
            usage: Usage {
                input_tokens: 11,
                output_tokens: 3
            },
            model: "served-model".into(),
            finish_reason: Some("stop".into()),
        }
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let recorded = &requests[0];
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert_eq!(
        recorded.headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {OPENAI_CANARY}").as_str())
    );
    assert_eq!(recorded.headers.get("x-api-key"), None);
    assert_eq!(
        recorded.body,
        json!({
            "model": "llama3.2",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "say hello"}
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.5,
            "max_tokens": 64
        })
    );
    assert!(!server.wait_ending(0).await, "body was sent in full");
}

#[tokio::test]
async fn anthropic_stream_assembles_text_usage_and_sends_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestProvider::start(vec![Script::stream(&["Bon", "jour", "!"], 25, 4)]).await;
    let client = anthropic_client(&server, &dir);
    let (result, chunks) = collect(
        &client,
        &request("anthropic", "claude-sonnet-4-5"),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(chunks, vec!["Bon", "jour", "!"]);
    assert_eq!(
        result.unwrap(),
        Completion {
            text: "Bonjour!".into(),
            usage: Usage {
                input_tokens: 25,
                output_tokens: 4
            },
            model: "served-model".into(),
            finish_reason: Some("end_turn".into()),
        }
    );

    let recorded = &server.requests()[0];
    assert_eq!(recorded.path, "/v1/messages");
    assert_eq!(
        recorded.headers.get("x-api-key").map(String::as_str),
        Some(ANTHROPIC_CANARY)
    );
    assert_eq!(
        recorded
            .headers
            .get("anthropic-version")
            .map(String::as_str),
        Some("2023-06-01")
    );
    assert_eq!(recorded.headers.get("authorization"), None);
    assert_eq!(
        recorded.body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "say hello"}],
            "stream": true,
            "system": "be brief",
            "temperature": 0.5
        })
    );
}

#[tokio::test]
async fn streams_cut_into_one_byte_pieces_decode_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut script = Script::stream(&["a", "é", "\n", "{\"k\": [1]}"], 7, 9);
    if let Script::Stream { piece_bytes, .. } = &mut script {
        *piece_bytes = Some(1);
    }
    let server = TestProvider::start(vec![script.clone(), script]).await;
    for client in [openai_client(&server), anthropic_client(&server, &dir)] {
        let (result, chunks) =
            collect(&client, &request("x", "m"), &CancellationToken::new()).await;
        let completion = result.unwrap();
        assert_eq!(chunks, vec!["a", "é", "\n", "{\"k\": [1]}"]);
        assert_eq!(completion.text, "aé\n{\"k\": [1]}");
        assert_eq!(
            (
                completion.usage.input_tokens,
                completion.usage.output_tokens
            ),
            (7, 9)
        );
    }
}

#[tokio::test]
async fn rate_limited_then_success_is_retried_with_backoff() {
    let mut limited = Script::status(429, "{\"error\":{\"message\":\"slow down\"}}");
    if let Script::Status { retry_after, .. } = &mut limited {
        *retry_after = Some("2".to_string());
    }
    let server = TestProvider::start(vec![
        limited,
        Script::status(429, "{}"),
        Script::stream(&["ok"], 1, 1),
    ])
    .await;
    let client = openai_client(&server);
    let clock = RecordingClock::default();
    let mut chunks = Vec::new();
    let mut notices: Vec<RetryNotice> = Vec::new();
    let completion = stream_with_retry(
        &client,
        &request("local", "llama3.2"),
        &CancellationToken::new(),
        &policy(),
        &clock,
        &mut |text: &str| chunks.push(text.to_string()),
        &mut |notice: &RetryNotice| notices.push(notice.clone()),
    )
    .await
    .unwrap();
    assert_eq!(completion.text, "ok");
    assert_eq!(chunks, vec!["ok"]);
    assert_eq!(server.requests().len(), 3);
    assert_eq!(
        *clock.sleeps.lock().unwrap(),
        vec![Duration::from_secs(2), Duration::from_millis(1000)]
    );
    assert_eq!(
        notices
            .iter()
            .map(|n| (n.attempt, n.error.clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                1,
                ProviderError::RateLimited {
                    retry_after: Some(Duration::from_secs(2))
                }
            ),
            (2, ProviderError::RateLimited { retry_after: None }),
        ]
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let server = TestProvider::start(vec![
        Script::status(500, "{}"),
        Script::status(502, "{}"),
        Script::status(503, "{}"),
        Script::status(500, "{}"),
        Script::stream(&["never reached"], 1, 1),
    ])
    .await;
    let client = openai_client(&server);
    let clock = RecordingClock::default();
    let err = call_with_retry(&client, &clock).await.unwrap_err();
    assert_eq!(err, ProviderError::Server { status: 500 });
    assert_eq!(err.to_string(), "provider failed with http 500");
    assert_eq!(server.requests().len(), 4);
    assert_eq!(
        *clock.sleeps.lock().unwrap(),
        vec![
            Duration::from_millis(500),
            Duration::from_millis(1000),
            Duration::from_millis(2000)
        ]
    );
}

#[tokio::test]
async fn retry_after_beyond_the_operator_bound_is_not_waited_for() {
    let mut limited = Script::status(429, "{}");
    if let Script::Status { retry_after, .. } = &mut limited {
        *retry_after = Some("3600".to_string());
    }
    let server = TestProvider::start(vec![limited]).await;
    let clock = RecordingClock::default();
    let err = call_with_retry(&openai_client(&server), &clock)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(3600))
        }
    );
    assert_eq!(server.requests().len(), 1);
    assert!(clock.sleeps.lock().unwrap().is_empty());
}

#[tokio::test]
async fn client_errors_are_not_retried_and_never_show_the_key() {
    let body = format!(
        "{{\"error\":{{\"message\":\"Incorrect API key provided: {OPENAI_CANARY}\",\"type\":\"invalid_request_error\"}}}}"
    );
    let server = TestProvider::start(vec![Script::status(401, &body)]).await;
    let client = openai_client(&server);
    let clock = RecordingClock::default();
    let err = call_with_retry(&client, &clock).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Client {
            status: 401,
            message: "Incorrect API key provided: [redacted]".to_string()
        }
    );
    assert_eq!(server.requests().len(), 1);
    for text in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
        assert!(!text.contains(OPENAI_CANARY), "{text}");
        assert!(!text.contains("canary"), "{text}");
    }
}

#[tokio::test]
async fn provider_down_is_unreachable() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = openai_config(format!("http://{addr}/v1"));
    let key = load_api_key(&config, &env(&[("LOCAL_KEY", OPENAI_CANARY)])).unwrap();
    let client = ProviderClient::new(config, key, ResponseLimits::default()).unwrap();
    let clock = RecordingClock::default();
    let err = call_with_retry(&client, &clock).await.unwrap_err();
    let ProviderError::Unreachable { detail } = &err else {
        panic!("expected unreachable, got {err:?}");
    };
    assert!(detail.contains("Connection refused"), "{detail}");
    assert!(clock.sleeps.lock().unwrap().is_empty(), "not retried");
    assert!(!format!("{err} {err:?}").contains("canary"));
}

#[tokio::test]
async fn malformed_streams_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(bool, Script, &str)> = vec![
        (
            false,
            Script::raw("text/event-stream", "data: {not json}\n\n"),
            "event data is not json",
        ),
        (
            false,
            Script::raw(
                "text/event-stream",
                "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
            ),
            "stream ended before `data: [DONE]`",
        ),
        (
            false,
            Script::raw(
                "text/event-stream",
                "data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
            ),
            "stream reported no usage",
        ),
        (
            false,
            Script::raw("text/event-stream", "data: {\"choices\": 5}\n\n"),
            "`choices` is not a list",
        ),
        (
            false,
            Script::raw("application/json", "{\"choices\":[]}"),
            "expected text/event-stream, got `application/json`",
        ),
        (
            false,
            Script::Raw {
                content_type: "text/event-stream".into(),
                pieces: vec![b"data: \xff\n\n".to_vec()],
            },
            "sse stream is not valid utf-8",
        ),
        (
            false,
            Script::raw(
                "text/event-stream",
                &format!("data: {}\n\n", "x".repeat(300 * 1024)),
            ),
            "sse line longer than 262144 bytes",
        ),
        (
            true,
            Script::raw(
                "text/event-stream",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n",
            ),
            "content before message_start",
        ),
        (
            true,
            Script::raw(
                "text/event-stream",
                "event: message_start\ndata: {\"type\":\"message_stop\"}\n\n",
            ),
            "event `message_start` carries data of type `message_stop`",
        ),
        (
            true,
            Script::raw(
                "text/event-stream",
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\n",
            ),
            "stream ended before message_stop",
        ),
    ];
    let scripts = cases.iter().map(|(_, script, _)| script.clone()).collect();
    let server = TestProvider::start(scripts).await;
    let openai = openai_client(&server);
    let anthropic = anthropic_client(&server, &dir);
    for (idx, (is_anthropic, _, needle)) in cases.iter().enumerate() {
        let client = if *is_anthropic { &anthropic } else { &openai };
        let (result, _) = collect(client, &request("x", "m"), &CancellationToken::new()).await;
        let err = result.unwrap_err();
        let ProviderError::Malformed { detail } = &err else {
            panic!("case {idx}: expected malformed, got {err:?}");
        };
        assert!(detail.contains(needle), "case {idx}: {detail}");
    }
}

#[tokio::test]
async fn mid_stream_errors_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestProvider::start(vec![
        Script::raw("text/event-stream", "data: {\"error\":{\"message\":\"model crashed\"}}\n\n"),
        Script::raw("text/event-stream", "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"),
    ])
    .await;
    let (result, _) = collect(
        &openai_client(&server),
        &request("x", "m"),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(
        result.unwrap_err(),
        ProviderError::Stream {
            message: "model crashed".into()
        }
    );
    let (result, _) = collect(
        &anthropic_client(&server, &dir),
        &request("x", "m"),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(result.unwrap_err(), ProviderError::Server { status: 529 });
}

fn slow_script() -> Script {
    let chunks: Vec<String> = (0..50).map(|i| format!("tok{i} ")).collect();
    Script::Stream {
        chunks,
        input_tokens: 1,
        output_tokens: 50,
        model: "slow".into(),
        delay: Duration::from_millis(200),
        piece_bytes: None,
    }
}

#[tokio::test]
async fn cancel_mid_stream_closes_the_connection_at_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestProvider::start(vec![slow_script(), slow_script()]).await;
    for (idx, client) in [openai_client(&server), anthropic_client(&server, &dir)]
        .into_iter()
        .enumerate()
    {
        let cancel = CancellationToken::new();
        let mut chunks = Vec::new();
        let result = client
            .stream(&request("x", "m"), &cancel, &mut |text: &str| {
                chunks.push(text.to_string());
                cancel.cancel();
            })
            .await;
        assert_eq!(result.unwrap_err(), ProviderError::Cancelled);
        assert_eq!(chunks, vec!["tok0 "]);
        assert!(
            server.wait_ending(idx).await,
            "provider saw the client go away"
        );
    }
}

#[tokio::test]
async fn timeout_mid_stream_is_timeout_and_closes_the_connection() {
    let mut script = slow_script();
    if let Script::Stream { delay, .. } = &mut script {
        *delay = Duration::from_secs(20);
    }
    let server = TestProvider::start(vec![script]).await;
    let mut req = request("local", "m");
    req.timeout = Some(Duration::from_millis(300));
    let (result, chunks) = collect(&openai_client(&server), &req, &CancellationToken::new()).await;
    assert_eq!(result.unwrap_err(), ProviderError::Timeout);
    assert!(chunks.is_empty());
    assert!(server.wait_ending(0).await);
}

fn gateway_config(server: &TestProvider, per_execution: Budget) -> GatewayConfig {
    let mut config: GatewayConfig = toml::from_str(&format!(
        r#"
        [[providers]]
        name = "local"
        kind = "openai"
        base_url = "{}"
        api_key_env = "LOCAL_KEY"
        default_model = "llama3.2"
        models = {{ fast = "llama3.2:1b" }}

        [roles]
        fast = [{{ provider = "local", model = "fast" }}]
        "#,
        server.openai_base_url()
    ))
    .unwrap();
    config.budgets.per_execution = per_execution;
    config
}

#[tokio::test]
async fn gateway_call_resolves_budgets_and_records_usage() {
    let server = TestProvider::start(vec![
        Script::stream(&["one"], 10, 3),
        Script::stream(&["two"], 20, 2),
        Script::stream(&["never"], 1, 1),
    ])
    .await;
    let budget = Budget {
        max_requests: None,
        max_input_tokens: None,
        max_output_tokens: Some(5),
    };
    let gateway = Gateway::new(
        gateway_config(&server, budget),
        AgentProfiles::builtin(),
        &env(&[("LOCAL_KEY", OPENAI_CANARY)]),
    )
    .unwrap()
    .with_clock(Arc::new(RecordingClock::default()));
    let scope = CallScope {
        user: "alice".into(),
        execution: "exec-1".into(),
        step_id: "explore".into(),
    };
    let input = ResolveInput {
        agent: "foundation:explorer",
        messages: vec![ChatMessage {
            role: ChatRole::User,
            content: "look".into(),
        }],
        selection: StepSelection::default(),
        agent_config: None,
        stop: vec![],
        timeout: Some(Duration::from_secs(30)),
    };
    let cancel = CancellationToken::new();
    let mut chunks = Vec::new();
    let outcome = gateway
        .call(
            &scope,
            &input,
            &cancel,
            &mut |t: &str| chunks.push(t.to_string()),
            &mut |_: &RetryNotice| {},
        )
        .await
        .unwrap();
    assert_eq!(outcome.completion.text, "one");
    // foundation:explorer has model_role `fast`, which the operator mapped.
    assert_eq!(outcome.resolution.request.model, "llama3.2:1b");
    let outcome = gateway
        .call(
            &scope,
            &input,
            &cancel,
            &mut |t: &str| chunks.push(t.to_string()),
            &mut |_: &RetryNotice| {},
        )
        .await
        .unwrap();
    assert_eq!(outcome.completion.text, "two");
    assert_eq!(
        serde_json::to_value(outcome.to_wire()).unwrap(),
        json!({"kind": "completed", "text": "two", "provider": "local", "model": "served-model",
               "usage": {"input_tokens": 20, "output_tokens": 2}, "finish_reason": "stop"})
    );
    assert_eq!(chunks, vec!["one", "two"]);

    // max_tokens was capped to what the budget still allowed: 5, then 5 - 3.
    let requests = server.requests();
    // The profile asks for 4096; the execution budget allows only 5, then 2.
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body["max_tokens"], json!(5));
    assert_eq!(requests[1].body["max_tokens"], json!(2));
    assert_eq!(requests[0].body["model"], json!("llama3.2:1b"));
    assert_eq!(requests[0].body["temperature"], json!(0.3));
    assert_eq!(requests[0].body["messages"][0]["role"], json!("system"));
    assert!(
        requests[0].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("explorer")
    );
    assert_eq!(
        requests[0].body["messages"][1],
        json!({"role": "user", "content": "look"})
    );

    let err = gateway
        .call(
            &scope,
            &input,
            &cancel,
            &mut |_: &str| {},
            &mut |_: &RetryNotice| {},
        )
        .await
        .unwrap_err();
    let CallError::Budget(exhausted) = &err else {
        panic!("expected budget exhaustion, got {err:?}");
    };
    assert_eq!(
        (
            exhausted.scope,
            exhausted.limit,
            exhausted.max,
            exhausted.used
        ),
        (BudgetScope::Execution, BudgetLimit::OutputTokens, 5, 5)
    );
    assert_eq!(
        err.to_string(),
        "budget_exhausted: execution max_output_tokens is 5, used 5"
    );
    assert_eq!(err.code(), protocol::ModelErrorCode::QuotaExceeded);
    assert_eq!(
        serde_json::to_value(err.to_wire()).unwrap(),
        json!({"kind": "error", "code": "quota_exceeded",
               "message": "budget_exhausted: execution max_output_tokens is 5, used 5"})
    );
    assert_eq!(server.requests().len(), 2, "no call after exhaustion");
    let ledger = gateway.ledger().lock().unwrap();
    assert_eq!(
        ledger.execution_usage("exec-1"),
        BudgetUsage {
            requests: 2,
            input_tokens: 30,
            output_tokens: 5
        }
    );
    assert_eq!(ledger.user_usage("alice"), ledger.execution_usage("exec-1"));
    assert_eq!(ledger.step_usage("exec-1", "explore").output_tokens, 5);
}

#[tokio::test]
async fn gateway_setup_errors_name_the_key_source() {
    let server = TestProvider::start(vec![]).await;
    let err = Gateway::new(
        gateway_config(&server, Budget::default()),
        AgentProfiles::builtin(),
        &env(&[]),
    )
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "api key for provider `local`: environment variable `LOCAL_KEY` is missing"
    );
    let mut config = gateway_config(&server, Budget::default());
    config.providers[0].base_url = "https://key:secret@example.com/v1".into();
    let err = Gateway::new(
        config,
        AgentProfiles::builtin(),
        &env(&[("LOCAL_KEY", "k")]),
    )
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "invalid configuration at `gateway.providers[0].base_url`: must not carry credentials; use api_key_env or api_key_file"
    );
}

#[tokio::test]
async fn gateway_falls_back_to_the_next_preference_when_a_provider_is_down() {
    let server = TestProvider::start(vec![Script::stream(&["from local"], 4, 2)]).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = gateway_config(&server, Budget::default());
    let mut down = config.providers[0].clone();
    down.name = "down".into();
    down.base_url = format!("http://{down_addr}/v1");
    config.providers.push(down);
    let clock = Arc::new(RecordingClock::default());
    let gateway = Gateway::new(
        config,
        AgentProfiles::builtin(),
        &env(&[("LOCAL_KEY", OPENAI_CANARY)]),
    )
    .unwrap()
    .with_clock(clock.clone());
    let input = ResolveInput {
        agent: "self",
        messages: vec![ChatMessage {
            role: ChatRole::User,
            content: "hi".into(),
        }],
        selection: StepSelection {
            provider_preferences: Some(vec![
                PreferenceEntry::Provider {
                    provider: "down".into(),
                    model: None,
                },
                PreferenceEntry::Provider {
                    provider: "local".into(),
                    model: Some("fast".into()),
                },
            ]),
            ..StepSelection::default()
        },
        agent_config: None,
        stop: vec![],
        timeout: None,
    };
    let scope = CallScope {
        user: "bob".into(),
        execution: "exec-2".into(),
        step_id: "s".into(),
    };
    let outcome = gateway
        .call(
            &scope,
            &input,
            &CancellationToken::new(),
            &mut |_: &str| {},
            &mut |_: &RetryNotice| {},
        )
        .await
        .unwrap();
    assert_eq!(outcome.completion.text, "from local");
    assert_eq!(outcome.resolution.request.provider, "local");
    assert_eq!(outcome.resolution.request.model, "llama3.2:1b");
    assert_eq!(outcome.resolution.notes.len(), 1);
    assert!(
        outcome.resolution.notes[0].starts_with("provider `down` failed (provider unreachable: "),
        "{:?}",
        outcome.resolution.notes
    );
    assert!(
        clock.sleeps.lock().unwrap().is_empty(),
        "unreachable is not retried"
    );
    assert_eq!(server.requests().len(), 1);
    assert_eq!(
        gateway.ledger().lock().unwrap().execution_usage("exec-2"),
        BudgetUsage {
            requests: 1,
            input_tokens: 4,
            output_tokens: 2
        }
    );
}

#[tokio::test]
async fn gateway_is_shared_by_concurrent_tasks() {
    let server = TestProvider::start(vec![
        Script::stream(&["a"], 1, 1),
        Script::stream(&["b"], 1, 1),
    ])
    .await;
    let gateway = Arc::new(
        Gateway::new(
            gateway_config(&server, Budget::default()),
            AgentProfiles::builtin(),
            &env(&[("LOCAL_KEY", OPENAI_CANARY)]),
        )
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for step in ["one", "two"] {
        let gateway = Arc::clone(&gateway);
        tasks.push(tokio::spawn(async move {
            let input = ResolveInput {
                agent: "self",
                messages: vec![ChatMessage {
                    role: ChatRole::User,
                    content: step.to_string(),
                }],
                selection: StepSelection::default(),
                agent_config: None,
                stop: vec![],
                timeout: None,
            };
            let scope = CallScope {
                user: "carol".into(),
                execution: "exec-3".into(),
                step_id: step.into(),
            };
            let mut chunks = Vec::new();
            gateway
                .call(
                    &scope,
                    &input,
                    &CancellationToken::new(),
                    &mut |t: &str| chunks.push(t.to_string()),
                    &mut |_: &RetryNotice| {},
                )
                .await
                .map(|outcome| (outcome.completion.text, chunks))
        }));
    }
    let mut texts = Vec::new();
    for task in tasks {
        let (text, chunks) = task.await.unwrap().unwrap();
        assert_eq!(chunks, vec![text.clone()]);
        texts.push(text);
    }
    texts.sort();
    assert_eq!(texts, vec!["a", "b"]);
    let ledger = gateway.ledger().lock().unwrap();
    assert_eq!(
        ledger.execution_usage("exec-3"),
        BudgetUsage {
            requests: 2,
            input_tokens: 2,
            output_tokens: 2
        }
    );
    assert_eq!(ledger.step_usage("exec-3", "one").requests, 1);
}

//! What the model gateway adds to a model call: one `Gateway::call` (resolve,
//! budget check, streamed OpenAI-compatible request, SSE decoding, usage
//! recorded) against the scripted provider on loopback, next to the same
//! HTTP request made directly with reqwest and read to the end. The
//! difference is the gateway's overhead per call; the batcher that turns
//! streamed text into watcher events is measured on its own.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use controller::gateway::{
    AgentProfiles, CallScope, ChatMessage, ChatRole, ChunkBatcher, Gateway, GatewayConfig,
    ResolveInput, StepSelection,
};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

#[path = "../tests/gateway/provider.rs"]
#[allow(dead_code)]
mod provider;

use provider::{Script, TestProvider};

/// Calls one benchmark run may make (criterion decides how many it uses).
const SCRIPTED_CALLS: usize = 60_000;

/// A 20-chunk answer of about 1 KB, like a short agent step's.
fn answer() -> Script {
    let chunks: Vec<String> = (0..20)
        .map(|idx| format!("token-{idx:02} {}", "x".repeat(40)))
        .collect();
    let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
    Script::stream(&chunks, 120, 20)
}

fn gateway_for(provider: &TestProvider) -> Gateway {
    let config: GatewayConfig = toml::from_str(&format!(
        r#"
        [[providers]]
        name = "local"
        kind = "openai"
        base_url = "{}"
        default_model = "bench-model"
        "#,
        provider.openai_base_url()
    ))
    .unwrap();
    Gateway::new(config, AgentProfiles::builtin(), &BTreeMap::new()).unwrap()
}

fn model_call(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let provider = runtime.block_on(TestProvider::start(vec![answer(); SCRIPTED_CALLS]));
    let gateway = gateway_for(&provider);
    let scope = CallScope {
        user: "bench".to_owned(),
        execution: "ex_bench".to_owned(),
        step_id: "ask".to_owned(),
    };
    let input = ResolveInput {
        agent: "self",
        messages: vec![ChatMessage {
            role: ChatRole::User,
            content: "Summarize the three files in one line.".to_owned(),
        }],
        selection: StepSelection::default(),
        agent_config: None,
        stop: Vec::new(),
        timeout: Some(Duration::from_secs(30)),
    };
    let cancel = CancellationToken::new();
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", provider.openai_base_url());
    let body = serde_json::json!({
        "model": "bench-model",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Summarize the three files in one line."}],
    });

    let mut group = c.benchmark_group("model_call");
    group.bench_function("direct reqwest, 20-chunk SSE answer", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let response = http.post(&url).json(&body).send().await.unwrap();
                let bytes = response.bytes().await.unwrap();
                assert!(bytes.len() > 1000);
            })
        })
    });
    group.bench_function("Gateway::call, 20-chunk SSE answer", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let outcome = gateway
                    .call(&scope, &input, &cancel, &mut |_| {}, &mut |_| {})
                    .await
                    .unwrap();
                assert_eq!(outcome.completion.usage.output_tokens, 20);
            })
        })
    });
    group.finish();
}

fn live_batches(c: &mut Criterion) {
    // 1 000 provider chunks of 12 bytes into watcher batches.
    let chunk = "token-token ";
    c.bench_function("ChunkBatcher, 1000 chunks of 12 B", |b| {
        b.iter(|| {
            let mut batcher = ChunkBatcher::new(256, 16 * 1024, Duration::from_millis(250));
            let now = Instant::now();
            let mut n_batches = 0;
            for _ in 0..1000 {
                n_batches += batcher.push(chunk, now).len();
            }
            n_batches += batcher.finish().into_iter().count();
            assert_eq!(n_batches, 47);
        })
    });
}

criterion_group!(benches, model_call, live_batches);
criterion_main!(benches);

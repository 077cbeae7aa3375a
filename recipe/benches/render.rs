//! Template rendering, condition evaluation and result extraction on a
//! typical prompt (numbers recorded in docs/benchmarks.md).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use recipe::{expr, extract, template};
use serde_json::{Map, Value, json};

fn context() -> Map<String, Value> {
    let value = json!({
        "recipe": {"name": "code-review", "version": "1.2.0", "description": "Review a change"},
        "session": {"id": "0123456789abcdef-20260101-000000_recipe", "started": "2026-01-01T00:00:00", "project": "/work"},
        "step": {"id": "review", "index": 3},
        "repo_path": "/work/repo",
        "language": "rust",
        "severity": "high",
        "diff_summary": "12 files changed, 340 insertions(+), 120 deletions(-)",
        "files": ["src/lib.rs", "src/engine/mod.rs", "src/engine/step.rs", "tests/engine.rs"],
        "analysis": {"risk": "medium", "areas": ["concurrency", "error handling"], "score": 7.5,
                     "notes": "Check cancellation paths and the retry backoff."},
        "guidelines": "Prefer small functions. Name errors after the failed operation. No unwrap outside tests.",
        "attempt": 2,
        "approved": true,
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("the literal is a mapping"),
    }
}

const PROMPT: &str =
    "You are reviewing a change to {{recipe.name}} (v{{recipe.version}}) in {{repo_path}}.
Language: {{language}}. Severity threshold: {{severity}}.

Summary of the diff: {{diff_summary}}
Files touched: {{files}}

Earlier analysis (risk {{analysis.risk}}, score {{analysis.score}}): {{analysis.notes}}
Areas to focus on: {{analysis.areas}}

Team guidelines:
{{guidelines}}

This is attempt {{attempt}} of the review for session {{session.id}}, step {{step.id}}.
Write a short verdict first, then a list of concrete findings with file and line,
then suggested fixes. Keep it under 400 words. Approved upstream: {{approved}}.
";

fn bench_render(c: &mut Criterion) {
    let ctx = context();
    c.bench_function("render typical prompt (16 placeholders, 1 KB)", |b| {
        b.iter(|| template::render(black_box(PROMPT), black_box(&ctx)).expect("renders"))
    });
    c.bench_function("placeholders typical prompt", |b| {
        b.iter(|| template::placeholders(black_box(PROMPT)))
    });
    let condition = "{{severity}} == 'high' and ({{analysis.score}} > 5 or 'concurrency' in {{analysis.areas}}) and not {{approved}} == false";
    let parsed = expr::parse(condition).expect("parses");
    c.bench_function("parse condition", |b| {
        b.iter(|| expr::parse(black_box(condition)).expect("parses"))
    });
    c.bench_function("evaluate parsed condition", |b| {
        b.iter(|| parsed.eval(black_box(&ctx)).expect("evaluates"))
    });
    let answer = format!(
        "Here is my review.\n\n```json\n{}\n```\nThanks!",
        serde_json::to_string(&json!({"verdict": "changes requested", "findings": (0..20).map(|i| json!({"file": "src/lib.rs", "line": i, "text": "consider renaming"})).collect::<Vec<_>>()})).expect("serialises")
    );
    c.bench_function("extract fenced JSON from a 1.5 KB answer", |b| {
        b.iter(|| {
            extract::post_process(
                Value::String(black_box(answer.clone())),
                extract::ResultSource::Agent,
                true,
            )
        })
    });
}

criterion_group!(benches, bench_render);
criterion_main!(benches);

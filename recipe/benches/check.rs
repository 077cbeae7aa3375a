//! `check()` throughput: a typical 10-step recipe (target < 1 ms) and a
//! generated 300-step recipe, both load + full validation.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use recipe::CheckOptions;

/// Ten steps of every kind, with templates, a condition, a loop and a sub-recipe.
fn typical_recipe() -> String {
    let mut source = String::from(
        "name: typical\ndescription: A typical ten-step recipe\nversion: 1.0.0\ncontext:\n  topic: sandboxes\n  files: [a.txt, b.txt, c.txt]\n  config:\n    depth: 2\nsteps:\n",
    );
    for idx in 0..10 {
        let step = match idx % 5 {
            0 => format!(
                "  - id: research{idx}\n    agent: dev\n    prompt: \"Research {{{{topic}}}} at depth {{{{config.depth}}}} for {{{{recipe.name}}}}\"\n    output: out{idx}\n    timeout: 120\n    retry:\n      max_attempts: 2\n"
            ),
            1 => format!(
                "  - id: shell{idx}\n    type: bash\n    command: |\n      set -eu\n      echo \"{{{{out{prev}}}}}\" | wc -c\n    output: out{idx}\n    output_exit_code: rc{idx}\n    env:\n      MODE: fast\n",
                prev = idx - 1
            ),
            2 => format!(
                "  - id: check{idx}\n    agent: dev\n    prompt: \"Check {{{{out{prev}}}}}\"\n    condition: \"{{{{rc{prev}}}}} == '0' and {{{{config.depth}}}} > 1\"\n    output: out{idx}\n",
                prev = idx - 1
            ),
            3 => format!(
                "  - id: loop{idx}\n    foreach: \"{{{{files}}}}\"\n    as: file\n    agent: dev\n    prompt: \"Summarise {{{{file}}}} using {{{{out{prev}}}}}\"\n    collect: out{idx}\n    parallel: 2\n",
                prev = idx - 1
            ),
            _ => format!(
                "  - id: sub{idx}\n    type: recipe\n    recipe: child.yaml\n    context:\n      input: \"{{{{out{prev}}}}}\"\n    output: out{idx}\n",
                prev = idx - 1
            ),
        };
        source.push_str(&step);
    }
    source
}

/// `n` agent/bash steps, each reading the previous output.
fn generated_recipe(n: usize) -> String {
    let mut source = String::from(
        "name: generated\ndescription: Generated steps\nversion: 1.0.0\ncontext:\n  seed: start\nsteps:\n",
    );
    for idx in 0..n {
        let input = if idx == 0 {
            "seed".to_string()
        } else {
            format!("out{}", idx - 1)
        };
        if idx % 2 == 0 {
            source.push_str(&format!(
                "  - id: step{idx}\n    agent: dev\n    prompt: \"Continue from {{{{{input}}}}} in {{{{recipe.name}}}}\"\n    condition: \"{{{{{input}}}}} != ''\"\n    output: out{idx}\n"
            ));
        } else {
            source.push_str(&format!(
                "  - id: step{idx}\n    type: bash\n    command: \"echo {{{{{input}}}}}\"\n    output: out{idx}\n"
            ));
        }
    }
    source
}

/// A hostile ~1 MiB recipe: tens of thousands of context keys, anchors and
/// aliases, and a prompt full of undefined placeholders (worst cases found
/// while hardening; each was quadratic once).
fn hostile_recipe() -> String {
    let mut source =
        String::from("name: hostile\ndescription: d\nversion: 1.0.0\ncontext:\n  first: &a0 x\n");
    for idx in 1..15_000 {
        source.push_str(&format!("  k{idx}: &a{idx} y\n"));
    }
    for idx in 0..15_000 {
        source.push_str(&format!("  r{idx}: *a0\n"));
    }
    source.push_str("steps:\n  - id: a\n    agent: dev\n    prompt: \"");
    for idx in 0..40_000 {
        source.push_str(&format!("{{{{v{idx}}}}}"));
    }
    source.push_str("\"\n");
    source
}

fn bench_check(c: &mut Criterion) {
    let options = CheckOptions {
        known_agents: Some(vec!["dev".to_string()]),
        available_recipes: Some(vec!["child.yaml".to_string()]),
    };
    let typical = typical_recipe();
    let checked = recipe::check(&typical, &options);
    assert!(
        checked.diagnostics.is_empty(),
        "typical recipe must be clean: {:?}",
        checked.diagnostics
    );
    let large = generated_recipe(300);
    let checked = recipe::check(&large, &options);
    assert!(
        checked.diagnostics.is_empty(),
        "generated recipe must be clean: {:?}",
        checked.diagnostics
    );

    c.bench_function("check typical 10-step recipe", |b| {
        b.iter(|| recipe::check(black_box(&typical), &options))
    });
    c.bench_function("check generated 300-step recipe", |b| {
        b.iter(|| recipe::check(black_box(&large), &options))
    });
    let hostile = hostile_recipe();
    assert!(
        hostile.len() < 1024 * 1024,
        "must stay under the size bound"
    );
    let mut group = c.benchmark_group("hostile");
    group.sample_size(10);
    group.bench_function("check hostile 1 MiB recipe", |b| {
        b.iter(|| recipe::check(black_box(&hostile), &options))
    });
    group.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);

//! Gallery recipes through the engine, with a fake bash that computes what
//! the real commands print (the real runs are the sandbox's end-to-end tests).

use recipe::event::RunStatus;
use serde_json::json;

use super::harness::*;

fn gallery(name: &str) -> recipe::model::Recipe {
    let path = format!("{}/../gallery/{name}", env!("CARGO_MANIFEST_DIR"));
    load(&std::fs::read_to_string(&path).expect("gallery file exists"))
}

#[tokio::test(start_paused = true)]
async fn loops_gallery_recipe() {
    let recipe = gallery("loops.yaml");
    let fake = Fake::new()
        .bash(|request, _| {
            if let Some(fruit) = request.env.get("FRUIT") {
                exit(0, &format!("{}\n", fruit.len()))
            } else {
                let n: i64 = request.env.get("N").unwrap().parse().unwrap();
                exit(0, &format!("{}\n", n - 1))
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded, "{}", ran.error());
    assert_eq!(ran.ctx("lengths"), Some(&json!([5, 6, 6])));
    assert_eq!(ran.ctx("remaining"), Some(&json!("0")));
    assert_eq!(fake.scripts().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn resilient_gallery_recipe() {
    let recipe = gallery("resilient.yaml");
    let fake = Fake::new()
        .bash(|request, n| {
            if request.script.contains("exit 3") {
                exit(3, "")
            } else if request.script.contains("cache") {
                exit(0, "fell back to the cache\n")
            } else if n == 2 {
                exit(1, "")
            } else {
                exit(0, "ok on attempt 2\n")
            }
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded, "{}", ran.error());
    assert_eq!(ran.ctx("probe_exit"), Some(&json!("3")));
    assert_eq!(ran.ctx("recovery"), Some(&json!("fell back to the cache")));
    assert_eq!(ran.ctx("flaky"), Some(&json!("ok on attempt 2")));
}

#[tokio::test(start_paused = true)]
async fn compose_gallery_recipe() {
    let recipe = gallery("compose.yaml");
    let child = std::fs::read_to_string(format!(
        "{}/../gallery/lib-word-stats.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let fake = Fake::new()
        .recipe("lib-word-stats.yaml", &child)
        .bash(|request, _| {
            let text = request.env.get("TEXT").unwrap();
            let count = if request.script.contains("wc -w") {
                text.split_whitespace().count()
            } else {
                text.lines().count()
            };
            exit(0, &format!("{count}\n"))
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded, "{}", ran.error());
    assert_eq!(
        ran.ctx("stats"),
        Some(&json!([{"words": 3, "lines": 1}, {"words": 4, "lines": 2}]))
    );
}

#[tokio::test(start_paused = true)]
async fn release_approval_gallery_recipe() {
    let recipe = gallery("release-approval.yaml");
    let fake = Fake::new()
        .plan(approve("ship it"))
        .bash(|request, _| {
            let script = request.script.replace(
                "$MESSAGE",
                request.env.get("MESSAGE").map_or("", String::as_str),
            );
            let echoed = script
                .trim_start_matches("echo ")
                .trim_matches('"')
                .to_string();
            exit(0, &format!("{echoed}\n"))
        })
        .arc();
    let ran = run(&recipe, json!({}), &fake).await;
    assert_eq!(ran.outcome.status, RunStatus::Succeeded, "{}", ran.error());
    assert_eq!(
        ran.ctx("published"),
        Some(&json!("published 1.4.0 (ship it)"))
    );
    let request = fake.approval_requests.lock().unwrap()[0].clone();
    assert_eq!(
        request.prompt,
        "Publish 1.4.0? Notes: release 1.4.0: 3 fixes, 1 feature"
    );
    assert_eq!(request.timeout_secs, 3600);
}

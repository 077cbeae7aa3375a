//! The gallery: every curated recipe validates and documents itself.

use kiln_e2e::gallery;

/// Metadata every gallery recipe must carry (issue 4, item 7).
const REQUIRED_METADATA: [&str; 7] = [
    "title",
    "summary",
    "category",
    "difficulty",
    "tags",
    "image",
    "expected",
];

#[test]
fn every_gallery_recipe_validates_without_errors_or_warnings() {
    let recipes = gallery().expect("read the gallery");
    assert!(recipes.len() >= 8, "the gallery needs at least 8 recipes");
    let names: Vec<String> = recipes.iter().map(|r| r.file_name.clone()).collect();
    let options = recipe::CheckOptions {
        known_agents: None,
        available_recipes: Some(names),
    };
    for entry in &recipes {
        let checked = recipe::check(&entry.source, &options);
        let rendered: Vec<String> = checked.diagnostics.iter().map(|d| d.to_string()).collect();
        assert!(
            rendered.is_empty(),
            "{} has diagnostics:\n{}",
            entry.file_name,
            rendered.join("\n")
        );
        assert!(checked.recipe.is_some(), "{} did not load", entry.file_name);
    }
}

#[test]
fn every_gallery_recipe_has_complete_metadata() {
    for entry in gallery().expect("read the gallery") {
        for key in REQUIRED_METADATA {
            assert!(
                !entry.metadata[key].is_null(),
                "{}: metadata.{key} is missing",
                entry.file_name
            );
        }
        let image = entry.metadata["image"].as_str().unwrap_or_default();
        assert!(
            ["kiln-minimal", "kiln-standard"].contains(&image),
            "{}: metadata.image must be kiln-minimal or kiln-standard, not {image:?}",
            entry.file_name
        );
        assert!(
            entry.expected()["status"].is_string(),
            "{}: metadata.expected.status is missing",
            entry.file_name
        );
    }
}

#[test]
fn the_gallery_covers_the_features_it_promises() {
    let recipes = gallery().expect("read the gallery");
    let all_sources: String = recipes.iter().map(|r| r.source.as_str()).collect();
    for feature in [
        "foreach:",
        "while_condition:",
        "condition:",
        "approval:",
        "type: recipe",
        "parse_json: true",
        "/work/out/",
        "python3",
        "on_error: continue",
        "retry:",
    ] {
        assert!(
            all_sources.contains(feature),
            "no gallery recipe shows `{feature}`"
        );
    }
}

// ---------------------------------------------------------------------------
// Running the gallery: every recipe gives its documented output.
// ---------------------------------------------------------------------------

mod runs {
    use std::collections::BTreeMap;
    use std::process::Command;
    use std::time::Duration;

    use kiln_e2e::server::{KilnServer, kiln_binary, require_docker_and_images};
    use kiln_e2e::{GalleryRecipe, gallery, gallery_dir};
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};

    /// What a run showed: its final status, the last preview of each output
    /// variable of a top-level step, failed steps' exit codes, and artifacts.
    #[derive(Debug, Default)]
    struct Observed {
        status: String,
        outputs: BTreeMap<String, String>,
        failed_steps: BTreeMap<String, i64>,
        artifacts: BTreeMap<String, String>,
    }

    fn observe(events: &[Value]) -> Observed {
        let mut observed = Observed::default();
        for event in events {
            let body = &event["body"]["event"];
            match body["type"].as_str().unwrap_or_default() {
                // Step ids with '/' are steps inside sub-recipes.
                "step_completed" if !body["step_id"].as_str().unwrap_or("/").contains('/') => {
                    if let (Some(var), Some(preview)) =
                        (body["output_var"].as_str(), body["preview"].as_str())
                    {
                        observed.outputs.insert(var.to_owned(), preview.to_owned());
                    }
                }
                "step_failed" => {
                    observed.failed_steps.insert(
                        body["step_id"].as_str().unwrap_or_default().to_owned(),
                        body["exit_code"].as_i64().unwrap_or(-1),
                    );
                }
                "artifact_stored" => {
                    observed.artifacts.insert(
                        body["name"].as_str().unwrap_or_default().to_owned(),
                        body["sha256"].as_str().unwrap_or_default().to_owned(),
                    );
                }
                "finished" => {
                    observed.status = body["status"].as_str().unwrap_or_default().to_owned();
                }
                _ => {}
            }
        }
        observed
    }

    /// An expected value matches a preview when the preview is exactly the
    /// expected text, or when it parses as JSON equal to the expected value.
    fn preview_matches(expected: &Value, preview: &str) -> bool {
        match expected {
            Value::String(text) => text == preview,
            other => serde_json::from_str::<Value>(preview).is_ok_and(|parsed| &parsed == other),
        }
    }

    fn assert_documented(entry: &GalleryRecipe, observed: &Observed) {
        let expected = entry.expected();
        let name = &entry.file_name;
        assert_eq!(
            observed.status,
            expected["status"].as_str().unwrap_or("?"),
            "{name}: status"
        );
        for (var, value) in expected["outputs"].as_object().into_iter().flatten() {
            let preview = observed.outputs.get(var).unwrap_or_else(|| {
                panic!(
                    "{name}: no step produced `{var}`; outputs: {:?}",
                    observed.outputs
                )
            });
            assert!(
                preview_matches(value, preview),
                "{name}: `{var}` is {preview:?}, documented {value}"
            );
        }
        for (step, code) in expected["failed_steps"].as_object().into_iter().flatten() {
            assert_eq!(
                observed.failed_steps.get(step).copied(),
                code.as_i64(),
                "{name}: exit code of {step}"
            );
        }
        for (artifact, content) in expected["artifacts"].as_object().into_iter().flatten() {
            let digest = hex::encode(Sha256::digest(content.as_str().unwrap_or_default()));
            assert_eq!(
                observed.artifacts.get(artifact),
                Some(&digest),
                "{name}: artifact {artifact}"
            );
        }
    }

    fn class_of(entry: &GalleryRecipe) -> &'static str {
        match entry.metadata["image"].as_str() {
            Some("kiln-standard") => "standard",
            _ => "default",
        }
    }

    /// Every gallery recipe that needs no person in the loop runs through
    /// `kiln run --json` on an embedded controller, exits 0, and shows its
    /// documented outputs and artifacts.
    #[test]
    fn gallery_recipes_run_through_kiln_run_with_their_documented_output() {
        require_docker_and_images(&["kiln-minimal", "kiln-standard"]).expect("docker and images");
        let kiln = kiln_binary().expect("the kiln binary");
        let recipes = gallery().expect("read the gallery");
        let libraries: Vec<String> = recipes
            .iter()
            .filter(|r| r.file_name.starts_with("lib-"))
            .map(|r| gallery_dir().join(&r.file_name).display().to_string())
            .collect();
        let mut n_run = 0;
        for entry in recipes
            .iter()
            .filter(|r| r.expected()["approve_with"].is_null())
        {
            let mut command = Command::new(&kiln);
            command
                .arg("run")
                .arg("--json")
                .arg(gallery_dir().join(&entry.file_name));
            command.args(["--class", class_of(entry)]);
            for library in &libraries {
                command.args(["--file", library]);
            }
            let output = command.output().expect("run kiln");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let lines: Vec<Value> = stdout
                .lines()
                .map(|line| serde_json::from_str(line).expect("kiln run --json prints JSON lines"))
                .collect();
            let end = lines.last().expect("at least the end line");
            assert_eq!(
                end["type"], "end",
                "{}: last line is the end message",
                entry.file_name
            );
            assert_eq!(
                output.status.code(),
                Some(0),
                "{}: exit status mirrors `succeeded`; stderr:\n{}",
                entry.file_name,
                String::from_utf8_lossy(&output.stderr)
            );
            let events: Vec<Value> = lines
                .iter()
                .filter(|line| line.get("seq").is_some())
                .cloned()
                .collect();
            let seqs: Vec<u64> = events
                .iter()
                .filter_map(|event| event["seq"].as_u64())
                .collect();
            let contiguous: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(
                seqs, contiguous,
                "{}: events are numbered 1..n with no gap",
                entry.file_name
            );
            assert_documented(entry, &observe(&events));
            n_run += 1;
        }
        assert!(n_run >= 8, "only {n_run} gallery recipes ran");
    }

    /// The staged recipe pauses at its gate; approving with a message through
    /// the API continues it, and the message reaches the next stage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_approval_recipe_pauses_and_continues_when_approved() {
        require_docker_and_images(&["kiln-minimal"]).expect("docker and images");
        let entry = gallery()
            .expect("read the gallery")
            .into_iter()
            .find(|r| !r.expected()["approve_with"].is_null())
            .expect("a gallery recipe with an approval gate");
        let server = KilnServer::start("gallery-gate", "")
            .await
            .expect("start kiln serve");
        let id = server
            .submit(&entry.source, "default")
            .await
            .expect("submit");

        // Wait for the gate to be requested.
        let mut waited = Duration::ZERO;
        let stage = loop {
            let events = server.events(&id).await.expect("events");
            if let Some(request) = events
                .iter()
                .find(|event| event["body"]["event"]["type"] == "approval_requested")
            {
                break request["body"]["event"]["stage"]
                    .as_str()
                    .expect("stage")
                    .to_owned();
            }
            assert!(
                waited < Duration::from_secs(60),
                "no approval_requested event"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            waited += Duration::from_millis(200);
        };
        assert_eq!(stage, "build");

        let message = entry.expected()["approve_with"].clone();
        let response = server
            .http
            .post(format!(
                "{}/api/v1/executions/{id}/approvals/{stage}",
                server.base_url
            ))
            .bearer_auth(&server.token)
            .json(&json!({ "decision": "approve", "message": message }))
            .send()
            .await
            .expect("approve");
        assert_eq!(
            response.status().as_u16(),
            200,
            "approve answered {}",
            response.status()
        );

        server
            .wait(&id, Duration::from_secs(60))
            .await
            .expect("finish");
        let events = server.events(&id).await.expect("events");
        assert_documented(&entry, &observe(&events));
    }
}

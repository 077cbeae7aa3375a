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

//! Data-driven fixtures under `recipe/tests/fixtures/`.
//!
//! * `valid/*.yaml`: recipes covering every field of the format. Each must
//!   check without errors; its diagnostics (usually none) must equal
//!   `<name>.expected`, and its model (as JSON) must equal `<name>.model.json`,
//!   which shows that every field reaches the model.
//! * `invalid/*.yaml`: each with `<name>.expected`, one diagnostic per line:
//!   `severity code path line:col message`.
//!
//! Run with `UPDATE_EXPECT=1` to rewrite the expected files, then review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use recipe::CheckOptions;

fn fixture_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn options(dir: &Path) -> CheckOptions {
    let recipes = yaml_files(dir)
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    CheckOptions {
        known_agents: Some(
            [
                "dev",
                "self",
                "foundation:researcher",
                "foundation:reviewer",
            ]
            .map(String::from)
            .to_vec(),
        ),
        available_recipes: Some(recipes),
    }
}

/// Compares `actual` with the file, or rewrites the file under UPDATE_EXPECT.
fn compare(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        fs::write(path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ));
    }
}

fn render(checked: &recipe::Checked) -> String {
    checked
        .diagnostics
        .iter()
        .map(|d| format!("{d}\n"))
        .collect()
}

#[test]
fn valid_fixtures_check_cleanly_and_fill_the_model() {
    let dir = fixture_dir("valid");
    let options = options(&dir);
    let mut failures = Vec::new();
    let files = yaml_files(&dir);
    assert!(files.len() >= 6, "fixtures missing");
    for path in files {
        let source = fs::read_to_string(&path).unwrap();
        let checked = recipe::check(&source, &options);
        if checked.has_errors() {
            failures.push(format!(
                "{} has errors:\n{}",
                path.display(),
                render(&checked)
            ));
            continue;
        }
        compare(
            &path.with_extension("expected"),
            &render(&checked),
            &mut failures,
        );
        let model = serde_json::to_string_pretty(&checked.recipe.unwrap()).unwrap() + "\n";
        compare(&path.with_extension("model.json"), &model, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_fixtures_give_exactly_the_expected_diagnostics() {
    let dir = fixture_dir("invalid");
    let options = options(&dir);
    let mut failures = Vec::new();
    let files = yaml_files(&dir);
    assert!(files.len() >= 6, "fixtures missing");
    for path in files {
        let source = fs::read_to_string(&path).unwrap();
        let checked = recipe::check(&source, &options);
        assert!(checked.has_errors(), "{} has no errors", path.display());
        compare(
            &path.with_extension("expected"),
            &render(&checked),
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn model_round_trips_through_serde() {
    for path in yaml_files(&fixture_dir("valid")) {
        let recipe = super::recipe(&fs::read_to_string(&path).unwrap());
        let json = serde_json::to_string(&recipe).unwrap();
        let back: recipe::model::Recipe = serde_json::from_str(&json).unwrap();
        assert_eq!(back, recipe, "{}", path.display());
    }
}

#[test]
fn every_gallery_recipe_checks_without_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gallery");
    let files = yaml_files(&dir);
    assert!(
        !files.is_empty(),
        "no gallery recipes found in {}",
        dir.display()
    );
    let options = CheckOptions {
        known_agents: None,
        available_recipes: Some(
            files
                .iter()
                .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
                .collect(),
        ),
    };
    let mut failures = Vec::new();
    for path in &files {
        let checked = recipe::check(&fs::read_to_string(path).unwrap(), &options);
        if checked.has_errors() || checked.recipe.is_none() {
            failures.push(format!("{}:\n{}", path.display(), render(&checked)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

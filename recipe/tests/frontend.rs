//! Front-end tests: loading, diagnostics and validation (`recipe::check`).
//!
//! Grouped like `recipe-behaviours.md`: one submodule per reference test file
//! (test_models.py, test_approval_gates.py, test_bash_steps.py,
//! test_recipe_validator.py, test_fix3, loops/checkpointing/model_role/spawn_mode
//! validation), plus Kiln-only groups (YAML dialect and bounds, fixtures,
//! property tests). Where Kiln deliberately differs from the reference (Part A
//! of the format spec), the test asserts Kiln's behaviour and a comment names
//! the reference behaviour it replaces.
//!
//! Diagnostics are compared as one line each: `severity code path line:col message`.
#![allow(clippy::unwrap_used)]

#[path = "frontend/approval.rs"]
mod approval;
#[path = "frontend/bash.rs"]
mod bash;
#[path = "frontend/depends.rs"]
mod depends;
#[path = "frontend/fixtures.rs"]
mod fixtures;
#[path = "frontend/loops.rs"]
mod loops;
#[path = "frontend/models.rs"]
mod models;
#[path = "frontend/props.rs"]
mod props;
#[path = "frontend/validator.rs"]
mod validator;
#[path = "frontend/yaml.rs"]
mod yaml;

use recipe::model::{Recipe, Step};
use recipe::{CheckOptions, Checked, check};

/// Three header lines; a following `steps:` is line 4, the first step line 5.
pub const HEADER: &str = "name: test-recipe\ndescription: a test\nversion: 1.0.0\n";

/// A flat recipe whose `steps:` list is `steps` (already indented by two spaces).
pub fn flat(steps: &str) -> String {
    format!("{HEADER}steps:\n{steps}")
}

pub fn checked(source: &str) -> Checked {
    check(source, &CheckOptions::default())
}

/// All diagnostics, one line each.
pub fn diags(source: &str) -> String {
    diags_with(source, &CheckOptions::default())
}

pub fn diags_with(source: &str, options: &CheckOptions) -> String {
    let checked = check(source, options);
    let lines: Vec<String> = checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    lines.join("\n")
}

/// Only the `code path` of each diagnostic (for tests about what, not wording).
pub fn codes(source: &str) -> Vec<String> {
    checked(source)
        .diagnostics
        .iter()
        .map(|d| format!("{} {}", d.code, d.path))
        .collect()
}

pub fn recipe(source: &str) -> Recipe {
    let checked = checked(source);
    checked
        .recipe
        .unwrap_or_else(|| panic!("no recipe: {:?}", checked.diagnostics))
}

pub fn first_step(source: &str) -> Step {
    recipe(source).all_steps()[0].clone()
}

/// Asserts the recipe checks without any diagnostic.
pub fn assert_clean(source: &str) {
    let out = diags(source);
    assert!(out.is_empty(), "expected no diagnostics, got:\n{out}");
}

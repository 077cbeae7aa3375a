//! Intake tests: size limits, gallery resolution, refusal with every
//! diagnostic, and the rustc-style rendering (expect-test snapshots).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use expect_test::expect;
use recipe::diagnostic::{Diagnostic, Severity, Span};

use super::*;

const GOOD: &str = "name: hello\ndescription: says hello\nversion: 1.0.0\nsteps:\n  - id: greet\n    type: bash\n    command: echo hi\n";

fn gallery_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.yaml"), GOOD).unwrap();
    std::fs::write(
        dir.path().join("outer.yaml"),
        "name: outer\ndescription: calls lib\nversion: 1.0.0\nsteps:\n  - id: sub\n    type: recipe\n    recipe: lib.yaml\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("lib.yaml"), GOOD.replace("hello", "lib")).unwrap();
    std::fs::write(dir.path().join("README.md"), "not a recipe").unwrap();
    dir
}

fn submission(recipe: &str) -> Submission {
    Submission {
        recipe: Some(recipe.to_string()),
        ..Submission::default()
    }
}

#[test]
fn good_recipe_is_accepted_with_default_class() {
    let dir = gallery_dir();
    let accepted = check_submission(
        &Config::default(),
        &Gallery::new(dir.path()),
        submission(GOOD),
        "tok",
    )
    .unwrap();
    assert_eq!(accepted.execution.class, "default");
    assert_eq!(accepted.execution.owner_token_id, "tok");
    assert_eq!(accepted.execution.recipe_source, GOOD);
    assert_eq!(accepted.execution.gallery_name, None);
}

#[test]
fn gallery_names_resolve_and_bring_their_sub_recipes() {
    let dir = gallery_dir();
    let gallery = Gallery::new(dir.path());
    assert_eq!(
        gallery.file_names().unwrap(),
        vec!["hello.yaml", "lib.yaml", "outer.yaml"]
    );
    let outer = Submission {
        gallery: Some("outer".into()),
        ..Submission::default()
    };
    let accepted = check_submission(&Config::default(), &gallery, outer, "tok").unwrap();
    assert_eq!(accepted.execution.gallery_name.as_deref(), Some("outer"));
    assert_eq!(
        accepted.execution.files.keys().collect::<Vec<_>>(),
        vec!["lib.yaml"]
    );
    for bad in ["nope", "../etc/passwd", "Hello", ""] {
        let result = check_submission(
            &Config::default(),
            &gallery,
            Submission {
                gallery: Some(bad.into()),
                ..Submission::default()
            },
            "tok",
        );
        assert!(
            matches!(result, Err(IntakeError::UnknownGalleryRecipe { .. })),
            "{bad:?}: {result:?}"
        );
    }
}

#[test]
fn refusals() {
    let dir = gallery_dir();
    let gallery = Gallery::new(dir.path());
    let config = Config::default();
    let check = |submission: Submission| {
        check_submission(&config, &gallery, submission, "tok").unwrap_err()
    };

    let huge = "#".repeat(config.limits.max_recipe_bytes as usize + 1);
    assert!(
        matches!(check(submission(&huge)), IntakeError::TooLarge { ref what, .. } if what == "recipe")
    );
    let both = Submission {
        gallery: Some("hello".into()),
        ..submission(GOOD)
    };
    assert_eq!(check(both), IntakeError::RecipeSourceAmbiguous);
    assert_eq!(
        check(Submission::default()),
        IntakeError::RecipeSourceAmbiguous
    );
    let class = Submission {
        class: Some("gpu".into()),
        ..submission(GOOD)
    };
    assert!(matches!(check(class), IntakeError::UnknownClass { ref name, .. } if name == "gpu"));
    let many: BTreeMap<_, _> = (0..=config.limits.max_files)
        .map(|idx| (format!("f{idx}.yaml"), GOOD.to_string()))
        .collect();
    assert!(matches!(
        check(Submission {
            files: many,
            ..submission(GOOD)
        }),
        IntakeError::TooManyFiles { .. }
    ));
    for bad in ["../x.yaml", "/abs.yaml", "a b.yaml", "a//b.yaml"] {
        let files = BTreeMap::from([(bad.to_string(), GOOD.to_string())]);
        assert!(
            matches!(
                check(Submission {
                    files,
                    ..submission(GOOD)
                }),
                IntakeError::InvalidFileName { .. }
            ),
            "{bad}"
        );
    }
    let mut inputs = serde_json::Map::new();
    inputs.insert(
        "big".into(),
        serde_json::json!("x".repeat(config.limits.max_inputs_bytes as usize)),
    );
    assert!(
        matches!(check(Submission { inputs, ..submission(GOOD) }), IntakeError::TooLarge { ref what, .. } if what == "inputs")
    );
}

#[test]
fn invalid_recipe_reports_every_diagnostic_with_its_file() {
    let dir = gallery_dir();
    let bad_sub = BTreeMap::from([("sub.yaml".to_string(), "name: [\n".to_string())]);
    let source = "name: hello\ndescription: x\nversion: 1.0.0\nsteps:\n  - id: a\n    type: bash\n    command: echo\n    timout: 3\n  - id: a\n    type: bash\n    command: echo\n";
    let err = check_submission(
        &Config::default(),
        &Gallery::new(dir.path()),
        Submission {
            files: bad_sub,
            ..submission(source)
        },
        "tok",
    )
    .unwrap_err();
    let IntakeError::InvalidRecipe { diagnostics } = err else {
        panic!("expected InvalidRecipe, got {err:?}")
    };
    let files: Vec<_> = diagnostics.iter().map(|item| item.file.as_str()).collect();
    assert!(
        files.contains(&"recipe") && files.contains(&"sub.yaml"),
        "{files:?}"
    );
    assert!(
        diagnostics
            .iter()
            .filter(|item| item.file == "recipe" && item.diagnostic.is_error())
            .count()
            >= 2
    );
}

fn diag(
    severity: Severity,
    code: &str,
    message: &str,
    path: &str,
    source: &str,
    start: usize,
    end: usize,
) -> Diagnostic {
    let (line, column) = LineIndex::new(source).line_col(source, start);
    Diagnostic {
        code: code.into(),
        severity,
        message: message.into(),
        path: path.into(),
        line,
        column,
        span: Span::new(start, end),
    }
}

#[test]
fn renders_rustc_style() {
    let source = "name: hello\nsteps:\n  - id: greet\n    timout: 3\n";
    let start = source.find("timout").unwrap();
    let diags = vec![
        diag(
            Severity::Error,
            "unknown-step-field",
            "unknown field `timout`",
            "steps[0].timout",
            source,
            start,
            start + 6,
        ),
        diag(
            Severity::Warning,
            "missing-description",
            "recipe has no description",
            "",
            source,
            0,
            0,
        ),
    ];
    expect![[r#"
        error[unknown-step-field]: unknown field `timout`
         --> recipe.yaml:4:5
          |
        4 |     timout: 3
          |     ^^^^^^
          = at steps[0].timout

        warning[missing-description]: recipe has no description
         --> recipe.yaml:1:1
          |
        1 | name: hello
          | -

        error: recipe.yaml has 1 error and 1 warning
    "#]]
    .assert_eq(&render_diagnostics(source, "recipe.yaml", &diags));
}

#[test]
fn renders_real_check_output() {
    let source = "name: hello\ndescription: x\nversion: one\nsteps:\n  - id: a\n    type: bash\n    command: echo\n    timout: 3\n";
    let checked = recipe::check(source, &recipe::CheckOptions::default());
    // The recipe crate owns the messages; only the layout is asserted here.
    let rendered = render_diagnostics(source, "bad.yaml", &checked.diagnostics);
    assert!(
        rendered.contains(" --> bad.yaml:3:10\n  |\n3 | version: one\n  |          ^^^\n"),
        "{rendered}"
    );
    assert!(
        rendered.contains(" --> bad.yaml:8:5\n  |\n8 |     timout: 3\n  |     ^^^^^^\n"),
        "{rendered}"
    );
    assert!(
        rendered.ends_with("error: bad.yaml has 2 errors and 0 warnings\n"),
        "{rendered}"
    );
    assert_eq!(render_diagnostics(GOOD, "good.yaml", &[]), "");
}

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

/// [`check_submission_with_agents`] against the built-in profiles.
fn check_submission(
    config: &Config,
    gallery: &Gallery,
    submission: Submission,
    owner_token_id: &str,
) -> Result<Accepted, IntakeError> {
    check_submission_with_agents(
        config,
        gallery,
        &known_agents_of(None),
        submission,
        owner_token_id,
    )
}

/// [`check_recipe_files_with_agents`] against the built-in profiles.
fn check_recipe_files(
    main_file: &str,
    source: &str,
    files: &BTreeMap<String, String>,
    gallery_files: &[String],
) -> Vec<FileDiagnostic> {
    check_recipe_files_with_agents(
        main_file,
        source,
        files,
        gallery_files,
        &known_agents_of(None),
    )
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

const AGENTS: &str = "name: mixed\ndescription: agent and bash\nversion: 1.0.0\nsteps:\n  - id: list\n    type: bash\n    command: ls\n  - id: think\n    agent: foundation:explorer\n    prompt: what is here\n  - id: review\n    agent: self\n    prompt: review it\n";

fn with_local_provider() -> Config {
    let mut config = Config::default();
    config
        .gateway
        .providers
        .push(crate::gateway::ProviderConfig {
            name: "local".into(),
            kind: crate::gateway::ProviderKind::OpenAi,
            base_url: "http://127.0.0.1:9/v1".into(),
            api_key_env: None,
            api_key_file: None,
            models: BTreeMap::new(),
            default_model: "m".into(),
            allow_unlisted_models: false,
            request_timeout_secs: 60,
            connect_timeout_secs: 5,
        });
    config
}

#[test]
fn agent_steps_without_a_provider_are_refused_naming_them() {
    let dir = gallery_dir();
    let gallery = Gallery::new(dir.path());
    let error = check_submission(&Config::default(), &gallery, submission(AGENTS), "tok")
        .expect_err("no provider is configured");
    let IntakeError::InvalidRecipe { diagnostics } = error else {
        panic!("expected InvalidRecipe, got {error:?}");
    };
    let found: Vec<String> = diagnostics
        .iter()
        .map(|item| format!("{} {}", item.file, item.diagnostic))
        .collect();
    assert_eq!(
        found,
        vec![
            "recipe error no-model-provider steps[1] 8:5 no model provider is configured on this server, so agent step(s) `think`, `review` cannot run"
        ]
    );

    // A sub-recipe with an agent step counts too.
    let mut files = BTreeMap::new();
    files.insert("sub.yaml".to_string(), AGENTS.replace("mixed", "sub"));
    let outer = "name: outer\ndescription: d\nversion: 1.0.0\nsteps:\n  - id: call\n    type: recipe\n    recipe: sub.yaml\n";
    let error = check_submission(
        &Config::default(),
        &gallery,
        Submission {
            files,
            ..submission(outer)
        },
        "tok",
    )
    .expect_err("the sub-recipe has agent steps");
    let IntakeError::InvalidRecipe { diagnostics } = error else {
        panic!("expected InvalidRecipe, got {error:?}");
    };
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].file, "sub.yaml");
    assert_eq!(diagnostics[0].diagnostic.code, NO_MODEL_PROVIDER);

    // Bash-only recipes are unaffected.
    check_submission(&Config::default(), &gallery, submission(GOOD), "tok").unwrap();
}

#[test]
fn agent_steps_with_a_provider_are_accepted_and_unknown_agents_warned() {
    let dir = gallery_dir();
    let recipe = AGENTS.replace("agent: self", "agent: nobody:knows");
    let accepted = check_submission(
        &with_local_provider(),
        &Gallery::new(dir.path()),
        submission(&recipe),
        "tok",
    )
    .unwrap();
    let codes: Vec<(&str, Severity)> = accepted
        .warnings
        .iter()
        .map(|item| (item.diagnostic.code.as_str(), item.diagnostic.severity))
        .collect();
    assert_eq!(codes.len(), 1, "{:?}", accepted.warnings);
    assert_eq!(codes[0].1, Severity::Warning);
    assert!(
        accepted.warnings[0]
            .diagnostic
            .message
            .contains("nobody:knows"),
        "{:?}",
        accepted.warnings
    );
}

#[test]
fn validation_reports_a_missing_provider_as_a_warning() {
    let diagnostics =
        no_model_provider_diagnostics("recipe", AGENTS, &BTreeMap::new(), Severity::Warning);
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].diagnostic.severity, Severity::Warning);
    assert!(
        no_model_provider_diagnostics("recipe", GOOD, &BTreeMap::new(), Severity::Warning)
            .is_empty()
    );
}

#[test]
fn operator_profiles_decide_which_agents_are_known() {
    let profiles_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles_dir.path().join("reviewer.yaml"),
        "name: 'acme:reviewer'\nsystem_prompt: review\n",
    )
    .unwrap();
    let mut config = with_local_provider();
    config.gateway.profiles_dir = Some(profiles_dir.path().to_path_buf());
    let gateway = Gateway::new(
        config.gateway.clone(),
        config.gateway.load_profiles().unwrap(),
        &BTreeMap::new(),
    )
    .unwrap();
    let server_agents = known_agents_of(Some(&gateway));
    assert!(server_agents.contains(&"acme:reviewer".to_string()));
    assert_eq!(
        known_agents_of(None),
        AgentProfiles::builtin().known_agents()
    );

    let dir = gallery_dir();
    let gallery = Gallery::new(dir.path());
    let recipe = AGENTS.replace("agent: self", "agent: acme:reviewer");
    let warned = |known_agents: &[String]| -> Vec<String> {
        check_submission_with_agents(&config, &gallery, known_agents, submission(&recipe), "tok")
            .unwrap()
            .warnings
            .iter()
            .map(|item| format!("{} {}", item.file, item.diagnostic.code))
            .collect()
    };
    assert_eq!(warned(&server_agents), Vec::<String>::new());
    assert_eq!(warned(&known_agents_of(None)), vec!["recipe unknown-agent"]);
    // The transitional entry points judge by the built-in profiles.
    let accepted = check_submission(&config, &gallery, submission(&recipe), "tok").unwrap();
    assert_eq!(accepted.warnings.len(), 1);

    // Sub-recipes are judged by the same names.
    let files = BTreeMap::from([("sub.yaml".to_string(), recipe.replace("mixed", "sub"))]);
    let codes = |known_agents: &[String]| -> Vec<String> {
        check_recipe_files_with_agents("recipe", GOOD, &files, &[], known_agents)
            .iter()
            .map(|item| format!("{} {}", item.file, item.diagnostic.code))
            .collect()
    };
    assert_eq!(codes(&server_agents), Vec::<String>::new());
    assert_eq!(
        codes(&known_agents_of(None)),
        vec!["sub.yaml unknown-agent"]
    );
    assert_eq!(check_recipe_files("recipe", GOOD, &files, &[]).len(), 1);
}

//! Pure parts of the runners: the bash runner's cwd, variable names and
//! environment; the agent runner's wire request.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn cwd_stays_under_the_work_dir() {
    let work = Path::new("/work");
    let cases: &[(Option<&str>, Result<&str, ()>)] = &[
        (None, Ok("/work")),
        (Some(""), Ok("/work")),
        (Some("src"), Ok("/work/src")),
        (Some("a/b"), Ok("/work/a/b")),
        (Some("/work"), Ok("/work")),
        (Some("/work/x"), Ok("/work/x")),
        (Some("/workshop"), Err(())),
        (Some("/etc"), Err(())),
        (Some(".."), Err(())),
        (Some("a/../../etc"), Err(())),
        (Some("/work/../etc"), Err(())),
        (Some("a\0b"), Err(())),
    ];
    for (cwd, expected) in cases {
        let got = resolve_cwd(work, *cwd)
            .map(|path| path.display().to_string())
            .map_err(|_| ());
        assert_eq!(got, expected.map(str::to_string), "cwd {cwd:?}");
    }
}

#[test]
fn variable_names_map_to_files_and_env() {
    assert!(is_var_file_name("step1.output"));
    assert!(!is_var_file_name("a/b"));
    assert!(!is_var_file_name(".."));
    assert!(!is_var_file_name(""));
    assert_eq!(
        var_env_name("step1.output").as_deref(),
        Some("KILN_VAR_step1__output")
    );
    assert_eq!(var_env_name("name").as_deref(), Some("KILN_VAR_name"));
    assert_eq!(var_env_name("with-dash"), None);
    assert_eq!(var_env_name("ünï"), None);
}

#[test]
fn step_env_is_clean_and_kiln_vars_win() {
    let recipe_env = BTreeMap::from([
        ("GREETING".to_string(), "hi".to_string()),
        ("KILN_VAR_x".to_string(), "forged".to_string()),
    ]);
    let vars = BTreeMap::from([
        ("x".to_string(), "real".to_string()),
        ("big".to_string(), "b".repeat(MAX_ENV_VAR_VALUE_BYTES + 1)),
    ]);
    let env = step_env(
        Path::new("/work"),
        &recipe_env,
        Path::new("/work/.kiln/vars/1"),
        &vars,
    )
    .unwrap();
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "GREETING",
            "HOME",
            "KILN_VARS",
            "KILN_VAR_x",
            "LANG",
            "PATH"
        ]
    );
    assert_eq!(env["KILN_VAR_x"], "real");
    assert_eq!(env["HOME"], "/work");
    let bad = BTreeMap::from([("A=B".to_string(), "x".to_string())]);
    assert!(step_env(Path::new("/work"), &bad, Path::new("/v"), &BTreeMap::new()).is_err());
}

fn agent_request() -> AgentRequest {
    AgentRequest {
        step_id: "ask".into(),
        agent: "foundation:explorer".into(),
        prompt: "MODE: plan\n\nhello".into(),
        agent_config: None,
        provider: None,
        model: None,
        provider_preferences: None,
        model_role: None,
        orchestrator_config: None,
        timeout: Duration::from_millis(30_900),
        metadata: recipe::runner::AgentMetadata {
            recipe_name: "r".into(),
            step_id: "ask".into(),
            step_index: 2,
            parallel_group_id: None,
        },
    }
}

#[test]
fn agent_request_without_selection_leaves_it_to_the_controller() {
    let wire = model_request_of(&agent_request());
    assert_eq!(
        wire,
        ModelRequest {
            request_id: 0,
            step_id: "ask".into(),
            agent: "foundation:explorer".into(),
            messages: vec![ModelMessage {
                role: ModelRole::User,
                content: "MODE: plan\n\nhello".into(),
            }],
            provider: None,
            model: None,
            provider_preferences: None,
            model_role: None,
            agent_config: None,
            parameters: ModelParameters::default(),
            stream: false,
            timeout_secs: 30,
        }
    );
}

#[test]
fn agent_request_selection_crosses_the_wire_whole() {
    let agent_config = serde_json::json!({
        "temperature": 0.4,
        "providers": [{"module": "provider-x"}],
    });
    let mut request = agent_request();
    request.provider = Some("anthropic".into());
    request.model = Some("claude-sonnet-*".into());
    request.provider_preferences = Some(vec![
        ProviderPreference::Class {
            class: "reasoning".into(),
        },
        ProviderPreference::Provider {
            provider: "local".into(),
            model: None,
        },
        ProviderPreference::Provider {
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
        },
    ]);
    request.model_role = Some("coding".into());
    request.agent_config = agent_config.as_object().cloned();
    let wire = model_request_of(&request);
    assert_eq!(wire.provider.as_deref(), Some("anthropic"));
    assert_eq!(wire.model.as_deref(), Some("claude-sonnet-*"));
    assert_eq!(
        wire.provider_preferences,
        Some(vec![
            ModelPreference::Class {
                class: "reasoning".into()
            },
            ModelPreference::Provider {
                provider: "local".into(),
                model: None
            },
            ModelPreference::Provider {
                provider: "openai".into(),
                model: Some("gpt-4o".into())
            },
        ])
    );
    assert_eq!(wire.model_role.as_deref(), Some("coding"));
    // Kept as written, disallowed keys included: the controller judges them.
    assert_eq!(
        wire.agent_config.map(serde_json::Value::Object),
        Some(agent_config)
    );
    assert_eq!(wire.parameters, ModelParameters::default());
    assert!(!wire.stream);
    // An empty preference list stays an empty list (not "absent").
    request.provider_preferences = Some(Vec::new());
    assert_eq!(
        model_request_of(&request).provider_preferences,
        Some(Vec::new())
    );
}

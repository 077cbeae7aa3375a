//! Unit tests of the gateway configuration and API key loading.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;

const EXAMPLE: &str = r#"
default_provider = "local"
max_tokens_cap = 8192

[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:11434/v1"
default_model = "llama3.2"
models = { fast = "llama3.2:1b" }

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"
default_model = "claude-sonnet-4-5"
request_timeout_secs = 300

[classes.reasoning]
provider = "anthropic"

[roles]
coding = [{ class = "reasoning" }, { provider = "local", model = "fast" }]

[budgets.per_user]
max_requests = 100

[budgets.per_execution]
max_output_tokens = 20000
"#;

fn example() -> GatewayConfig {
    toml::from_str(EXAMPLE).unwrap()
}

#[test]
fn example_parses_and_validates() {
    let config = example();
    config.validate().unwrap();
    assert_eq!(config.providers.len(), 2);
    assert_eq!(config.providers[0].kind, ProviderKind::OpenAi);
    assert_eq!(config.providers[0].request_timeout_secs, 600);
    assert_eq!(config.providers[0].connect_timeout_secs, 10);
    assert_eq!(config.providers[1].request_timeout_secs, 300);
    assert_eq!(config.default_provider().unwrap().name, "local");
    assert_eq!(
        config.roles["coding"],
        vec![
            PreferenceEntry::Class {
                class: "reasoning".into()
            },
            PreferenceEntry::Provider {
                provider: "local".into(),
                model: Some("fast".into())
            }
        ]
    );
    assert_eq!(config.budgets.per_user.max_requests, Some(100));
    assert_eq!(config.budgets.per_execution.max_output_tokens, Some(20000));
    assert_eq!(config.retry, RetryConfig::default());
}

#[test]
fn misspelled_keys_are_rejected() {
    for (text, needle) in [
        (
            "[[providers]]\nname='a'\nkind='openai'\nbase_url='http://x'\ndefault_model='m'\ntimeout=5\n",
            "unknown field `timeout`",
        ),
        (
            "defualt_provider = 'a'\n",
            "unknown field `defualt_provider`",
        ),
        ("[retry]\nmax_attempt = 2\n", "unknown field `max_attempt`"),
        (
            "[budgets.per_user]\nmax_request = 2\n",
            "unknown field `max_request`",
        ),
        (
            "[[providers]]\nname='a'\nkind='azure'\nbase_url='http://x'\ndefault_model='m'\n",
            "unknown variant `azure`",
        ),
    ] {
        let err = toml::from_str::<GatewayConfig>(text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

fn provider(name: &str) -> ProviderConfig {
    ProviderConfig {
        name: name.to_string(),
        kind: ProviderKind::OpenAi,
        base_url: "http://127.0.0.1:8080/v1".to_string(),
        api_key_env: None,
        api_key_file: None,
        models: BTreeMap::new(),
        default_model: "m".to_string(),
        allow_unlisted_models: false,
        request_timeout_secs: 600,
        connect_timeout_secs: 10,
    }
}

#[test]
fn validation_names_the_key() {
    type Edit = fn(&mut GatewayConfig);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |c| c.providers[1].name = "local".into(),
            "gateway.providers[1].name",
        ),
        (
            |c| c.providers[0].name = "class:a".into(),
            "gateway.providers[0].name",
        ),
        (
            |c| c.providers[0].name = "a b".into(),
            "gateway.providers[0].name",
        ),
        (
            |c| c.providers[0].base_url = "ftp://x".into(),
            "gateway.providers[0].base_url",
        ),
        (
            |c| c.providers[0].base_url = "not a url".into(),
            "gateway.providers[0].base_url",
        ),
        (
            |c| c.providers[0].base_url = "https://user:sk-1@x/v1".into(),
            "gateway.providers[0].base_url",
        ),
        (
            |c| c.providers[0].base_url = "http://x/v1?k=1".into(),
            "gateway.providers[0].base_url",
        ),
        (
            |c| {
                c.providers[0].api_key_env = Some("K".into());
                c.providers[0].api_key_file = Some("/k".into());
            },
            "gateway.providers[0].api_key_env",
        ),
        (
            |c| c.providers[0].api_key_file = Some("k.txt".into()),
            "gateway.providers[0].api_key_file",
        ),
        (
            |c| c.providers[0].default_model = " ".into(),
            "gateway.providers[0].default_model",
        ),
        (
            |c| c.providers[0].request_timeout_secs = 0,
            "gateway.providers[0].request_timeout_secs",
        ),
        (
            |c| c.providers[0].connect_timeout_secs = 0,
            "gateway.providers[0].connect_timeout_secs",
        ),
        (
            |c| c.default_provider = Some("nope".into()),
            "gateway.default_provider",
        ),
        (
            |c| {
                c.classes.insert(
                    "fast".into(),
                    ModelTarget {
                        provider: "nope".into(),
                        model: None,
                    },
                );
            },
            "gateway.classes.fast.provider",
        ),
        (
            |c| {
                c.roles.insert(
                    "r".into(),
                    vec![PreferenceEntry::Class { class: "x".into() }],
                );
            },
            "gateway.roles.r[0]",
        ),
        (
            |c| {
                c.roles.insert("r".into(), vec![]);
            },
            "gateway.roles.r",
        ),
        (|c| c.retry.max_attempts = 0, "gateway.retry.max_attempts"),
        (
            |c| c.retry.max_backoff_ms = 1,
            "gateway.retry.max_backoff_ms",
        ),
        (|c| c.max_tokens_cap = Some(0), "gateway.max_tokens_cap"),
        (
            |c| c.response_limits.max_line_bytes = 0,
            "gateway.response_limits",
        ),
    ];
    for (idx, (edit, key)) in cases.into_iter().enumerate() {
        let mut config = GatewayConfig {
            providers: vec![provider("local"), provider("other")],
            ..GatewayConfig::default()
        };
        config.validate().unwrap();
        edit(&mut config);
        let err = config.validate().unwrap_err();
        assert_eq!(err.key, key, "case {idx}: {err}");
    }
}

#[test]
fn profiles_dir_overrides_the_builtin_profiles() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("explorer.yaml"),
        "name: 'foundation:explorer'\nsystem_prompt: operator prompt\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("reviewer.yml"),
        "name: 'acme:reviewer'\nsystem_prompt: review\n",
    )
    .unwrap();
    let text = format!("profiles_dir = {:?}\n", dir.path().display().to_string());
    let config: GatewayConfig = toml::from_str(&text).unwrap();
    assert_eq!(config.profiles_dir.as_deref(), Some(dir.path()));
    config.validate().unwrap();
    let profiles = config.load_profiles().unwrap();
    assert_eq!(
        profiles.lookup("foundation:explorer").profile.system_prompt,
        "operator prompt"
    );
    assert!(profiles.is_known("acme:reviewer"));
    // The built-ins that were not replaced stay.
    assert!(profiles.is_known("self"));
    assert_eq!(
        profiles.known_agents().len(),
        AgentProfiles::builtin().known_agents().len() + 1
    );
    // Without the key: exactly the built-ins.
    assert_eq!(
        GatewayConfig::default()
            .load_profiles()
            .unwrap()
            .known_agents(),
        AgentProfiles::builtin().known_agents()
    );
}

#[test]
fn bad_profiles_dir_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad_profile = dir.path().join("bad");
    std::fs::create_dir(&bad_profile).unwrap();
    std::fs::write(
        bad_profile.join("x.yaml"),
        "name: x\nsystem_prompt: hi\ntemprature: 1\n",
    )
    .unwrap();
    let file = dir.path().join("file.yaml");
    std::fs::write(&file, "").unwrap();
    let missing = dir.path().join("missing");
    // (profiles_dir, expected message)
    let cases = [
        (
            PathBuf::from("agents"),
            "must be an absolute path".to_string(),
        ),
        (
            missing.clone(),
            format!(
                "read agent profile directory `{}`: No such file or directory (os error 2)",
                missing.display()
            ),
        ),
        (
            file.clone(),
            format!(
                "read agent profile directory `{}`: Not a directory (os error 20)",
                file.display()
            ),
        ),
        (
            bad_profile.clone(),
            format!(
                "parse agent profile `{}`: ",
                bad_profile.join("x.yaml").display()
            ),
        ),
    ];
    for (path, message) in cases {
        let config = GatewayConfig {
            profiles_dir: Some(path.clone()),
            ..GatewayConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.key, "gateway.profiles_dir", "{}", path.display());
        assert!(
            err.message.starts_with(&message),
            "{}: {err}",
            path.display()
        );
        assert!(
            err.to_string()
                .starts_with("invalid configuration at `gateway.profiles_dir`: "),
            "{err}"
        );
        assert_eq!(config.load_profiles().unwrap_err(), err);
    }
}

#[test]
fn empty_config_has_no_providers() {
    let config = GatewayConfig::default();
    config.validate().unwrap();
    assert!(!config.has_providers());
    assert!(config.default_provider().is_none());
}

#[test]
fn api_key_never_prints_itself() {
    let key = ApiKey::new("sk-canary-123".to_string());
    assert_eq!(format!("{key}"), "[redacted]");
    assert_eq!(format!("{key:?}"), "[redacted]");
    assert_eq!(format!("{:?}", Some(&key)), "Some([redacted])");
    assert_eq!(key.expose(), "sk-canary-123");
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn key_from_env() {
    let mut config = provider("p");
    config.api_key_env = Some("P_KEY".into());
    let key = load_api_key(&config, &env(&[("P_KEY", " sk-canary-env\n")]))
        .unwrap()
        .unwrap();
    assert_eq!(key.expose(), "sk-canary-env");
    let err = load_api_key(&config, &env(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "api key for provider `p`: environment variable `P_KEY` is missing"
    );
    let err = load_api_key(&config, &env(&[("P_KEY", "  ")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "api key for provider `p`: environment variable `P_KEY` is empty"
    );
    let err = load_api_key(&config, &env(&[("P_KEY", "sk-canary with space")])).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("canary"), "{text}");
    assert!(text.contains("P_KEY"), "{text}");
}

#[test]
fn key_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "sk-canary-file\n").unwrap();
    let mut config = provider("p");
    config.api_key_file = Some(path.clone());
    let key = load_api_key(&config, &env(&[])).unwrap().unwrap();
    assert_eq!(key.expose(), "sk-canary-file");

    std::fs::write(&path, "sk-canary\u{7}bell").unwrap();
    let err = load_api_key(&config, &env(&[])).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("canary"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");

    std::fs::write(&path, vec![b'a'; (MAX_API_KEY_FILE_BYTES + 1) as usize]).unwrap();
    let err = load_api_key(&config, &env(&[])).unwrap_err();
    assert!(matches!(err, LoadKeyError::TooLarge { .. }), "{err}");

    config.api_key_file = Some(dir.path().join("missing"));
    let err = load_api_key(&config, &env(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "api key for provider `p`: file `{}` is missing",
            dir.path().join("missing").display()
        )
    );
}

#[test]
fn no_key_source_means_no_key() {
    assert!(load_api_key(&provider("p"), &env(&[])).unwrap().is_none());
}

#[test]
fn the_documented_configuration_is_valid() {
    // Every ```toml block of docs/model-gateway.md, in order, is one config.
    let doc = include_str!("../../../docs/model-gateway.md");
    let mut text = String::new();
    let mut in_block = false;
    for line in doc.lines() {
        match (in_block, line.trim_start()) {
            (false, "```toml") => in_block = true,
            (true, "```") => in_block = false,
            (true, _) => {
                text.push_str(line);
                text.push('\n');
            }
            _ => {}
        }
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Document {
        gateway: GatewayConfig,
    }
    let document: Document = toml::from_str(&text).unwrap();
    let config = document.gateway;
    config.validate().unwrap();
    let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["local", "openai", "anthropic"]);
    assert_eq!(config.retry.max_attempts, 4);
    assert_eq!(config.budgets.per_execution.max_requests, Some(100));
    assert_eq!(config.roles.len(), 2);
}

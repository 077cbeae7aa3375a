//! Tests for config loading: defaults, overrides, and one line per rejected key.

use std::collections::BTreeMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::load(Some(text), &BTreeMap::new())
}

fn error_key(text: &str) -> String {
    load(text).expect_err("config should be rejected").key
}

#[test]
fn empty_config_gives_valid_defaults() {
    let config = Config::load(None, &BTreeMap::new()).expect("defaults are valid");
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8700");
    assert!(config.queue.concurrency >= 1);
    assert_eq!(config.sandbox.default_class, "default");
    assert_eq!(config.class(None).map(|(name, _)| name), Some("default"));
    assert_eq!(
        config
            .class(Some("standard"))
            .map(|(_, class)| class.image.as_str()),
        Some("kiln-standard")
    );
    assert!(config.class(Some("nope")).is_none());
}

#[test]
fn example_file_is_valid() {
    let text = include_str!("../../deploy/kiln.example.toml");
    let config = load(text).expect("deploy/kiln.example.toml must be valid");
    assert_eq!(config.queue.concurrency, 2);
    assert!(config.sandbox.classes.contains_key("gvisor"));
}

#[test]
fn env_overrides_set_nested_keys_with_types() {
    let config = Config::load(
        Some("[queue]\nconcurrency = 3\n"),
        &env(&[
            ("KILN_SERVER__LISTEN", "0.0.0.0:9000"),
            ("KILN_QUEUE__CONCURRENCY", "5"),
            ("KILN_SANDBOX__CLASSES__DEFAULT__MEMORY_MIB", "1024"),
            ("KILN_CONFIG", "/ignored/because/no/double/underscore"),
            ("OTHER__THING", "ignored"),
        ]),
    )
    .expect("valid");
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.queue.concurrency, 5);
    assert_eq!(config.sandbox.classes["default"].memory_mib, 1024);
}

#[test]
fn env_override_with_wrong_type_names_the_key() {
    let err =
        Config::load(None, &env(&[("KILN_QUEUE__CONCURRENCY", "many")])).expect_err("rejected");
    assert_eq!(err.key, "queue.concurrency");
}

#[test]
fn env_override_with_unknown_key_names_it() {
    let err =
        Config::load(None, &env(&[("KILN_SERVER__LISTN", "0.0.0.0:1")])).expect_err("rejected");
    assert_eq!(err.key, "server.listn");
}

#[test]
fn rejected_keys_are_named() {
    let cases: &[(&str, &str)] = &[
        ("[server]\ntimeout = 3\n", "server.timeout"),
        ("bogus = 1\n", "bogus"),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[server]\nlisten = \"127.0.0.1:0\"\n", "server.listen"),
        ("[server]\nrun_dir = \"relative\"\n", "server.run_dir"),
        ("[server]\ndata_dir = \"\"\n", "server.data_dir"),
        ("[queue]\nconcurrency = 0\n", "queue.concurrency"),
        ("[queue]\nconcurrency = -1\n", "queue.concurrency"),
        (
            "[limits]\nmax_recipe_bytes = 1\n",
            "limits.max_recipe_bytes",
        ),
        ("[retention]\ndays = 0\n", "retention.days"),
        (
            "[sandbox]\nuid_range_start = 1000\n",
            "sandbox.uid_range_start",
        ),
        (
            "[sandbox]\nuid_range_end = 300000\n",
            "sandbox.uid_range_end",
        ),
        (
            "[sandbox]\nuid_range_start = 200010\nuid_range_end = 200000\n",
            "sandbox.uid_range_end",
        ),
        (
            "[queue]\nconcurrency = 8\n[sandbox]\nuid_range_start = 200000\nuid_range_end = 200003\n",
            "sandbox.uid_range_end",
        ),
        (
            "[sandbox]\ndefault_class = \"huge\"\n",
            "sandbox.default_class",
        ),
        (
            "[sandbox.classes.default]\nmemory_mib = 1\n",
            "sandbox.classes.default.memory_mib",
        ),
        (
            "[sandbox.classes.default]\nmemroy_mib = 64\n",
            "sandbox.classes.default.memroy_mib",
        ),
        (
            "[sandbox.classes.default]\nruntime = \"kata\"\n",
            "sandbox.classes.default.runtime",
        ),
        (
            "[sandbox.classes.default]\nruntime = \"runsc\"\npids = 128\n",
            "sandbox.classes.default.pids",
        ),
        (
            "[sandbox.classes.default]\nimage = \" \"\n",
            "sandbox.classes.default.image",
        ),
        (
            "[sandbox.classes.default]\nwall_timeout_secs = 0\n",
            "sandbox.classes.default.wall_timeout_secs",
        ),
        (
            "[limits]\nmax_execution_deadline_secs = 60\n[sandbox.classes.default]\nwall_timeout_secs = 61\n",
            "sandbox.classes.default.wall_timeout_secs",
        ),
        ("[sandbox.classes.Big]\n", "sandbox.classes.Big"),
        ("[server\n", "<file>:1"),
        ("\n\n[queue]\nconcurrency = = 2\n", "<file>:4"),
    ];
    for (text, key) in cases {
        assert_eq!(error_key(text), *key, "for config:\n{text}");
    }
}

#[test]
fn request_body_limit_covers_the_largest_valid_submission() {
    let limits = LimitsConfig::default();
    let largest = limits.max_recipe_bytes
        + limits.max_inputs_bytes
        + u64::from(limits.max_files) * limits.max_file_bytes;
    assert!(limits.request_body_bytes() as u64 > largest);
}

const LOCAL_PROVIDER: &str = "[[gateway.providers]]\nname = \"local\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:11434/v1\"\ndefault_model = \"llama3.2\"\n";

#[test]
fn gateway_defaults_to_no_providers() {
    let config = Config::load(None, &BTreeMap::new()).expect("defaults are valid");
    assert!(!config.gateway.has_providers());
}

#[test]
fn gateway_section_is_read_and_validated() {
    let config = load(LOCAL_PROVIDER).expect("a local provider needs no key");
    assert!(config.gateway.has_providers());
    assert_eq!(config.gateway.providers[0].name, "local");
    let cases: &[(&str, &str)] = &[
        (
            "[[gateway.providers]]\nname = \"local\"\nkind = \"openai\"\nbase_url = \"ftp://x\"\ndefault_model = \"m\"\n",
            "gateway.providers[0].base_url",
        ),
        (
            "[[gateway.providers]]\nname = \"local\"\nkind = \"openai\"\nbase_url = \"http://x\"\ndefault_model = \"m\"\ntimeout = 3\n",
            "gateway.providers[0].timeout",
        ),
        (
            "[gateway]\ndefault_provider = \"nope\"\n",
            "gateway.default_provider",
        ),
        (
            "[gateway.retry]\nmax_attempts = 0\n",
            "gateway.retry.max_attempts",
        ),
    ];
    for (text, key) in cases {
        assert_eq!(error_key(text), *key, "for config:\n{text}");
    }
}

#[test]
fn a_missing_key_source_names_the_source_never_the_key() {
    let text = format!("{LOCAL_PROVIDER}api_key_env = \"KILN_TEST_CANARY_KEY\"\n");
    let error = Config::load(Some(&text), &BTreeMap::new()).expect_err("the key is missing");
    assert_eq!(error.key, "gateway.providers[0].api_key_env");
    assert_eq!(
        error.to_string(),
        "invalid configuration at `gateway.providers[0].api_key_env`: api key for provider `local`: environment variable `KILN_TEST_CANARY_KEY` is missing"
    );
    let canary = "sk-canary-0123456789";
    let ok = Config::load(Some(&text), &env(&[("KILN_TEST_CANARY_KEY", canary)]))
        .expect("the key is there");
    assert!(!format!("{ok:?}").contains(canary));

    let file = format!("{LOCAL_PROVIDER}api_key_file = \"/nonexistent/kiln/key\"\n");
    let error = Config::load(Some(&file), &BTreeMap::new()).expect_err("the file is missing");
    assert_eq!(error.key, "gateway.providers[0].api_key_file");
    assert_eq!(
        error.message,
        "api key for provider `local`: file `/nonexistent/kiln/key` is missing"
    );
}

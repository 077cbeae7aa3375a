//! `kiln validate --config`: the recipe judged by the configured server's
//! agent profiles and providers.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;

const RECIPE: &str = "name: r\ndescription: d\nversion: 1.0.0\nsteps:\n  - id: review\n    agent: acme:reviewer\n    prompt: review it\n";

fn config_with_profiles_dir(dir: &std::path::Path) -> Result<Config, crate::config::ConfigError> {
    let toml = format!(
        "[gateway]\nprofiles_dir = {:?}\n\n[[gateway.providers]]\nname = \"local\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\ndefault_model = \"m\"\n",
        dir.display().to_string()
    );
    Config::load(Some(&toml), &BTreeMap::new())
}

fn codes(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics
        .iter()
        .map(|diagnostic| format!("{} {}", diagnostic.severity.as_str(), diagnostic.code))
        .collect()
}

#[test]
fn agents_of_the_configured_profiles_dir_are_known() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reviewer.yaml"),
        "name: 'acme:reviewer'\nsystem_prompt: review\n",
    )
    .unwrap();
    let config = config_with_profiles_dir(dir.path()).unwrap();
    assert_eq!(
        codes(&judge(RECIPE, "r.yaml", &config).unwrap()),
        Vec::<String>::new()
    );
    // Without the directory and without a provider: both are warnings.
    assert_eq!(
        codes(&judge(RECIPE, "r.yaml", &Config::default()).unwrap()),
        vec!["warning unknown-agent", "warning no-model-provider"]
    );
}

#[test]
fn a_bad_profile_in_the_directory_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reviewer.yaml"),
        "name: 'acme:reviewer'\nsystem_prompt: ''\n",
    )
    .unwrap();
    let error = config_with_profiles_dir(dir.path()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "invalid configuration at `gateway.profiles_dir`: agent profile `{}`: `system_prompt` must not be empty",
            dir.path().join("reviewer.yaml").display()
        )
    );
}

//! Unit tests of agent profile loading.

#![allow(clippy::unwrap_used)]

use super::*;

fn src(origin: &str, text: &str) -> (String, String) {
    (origin.to_string(), text.to_string())
}

#[test]
fn builtin_profiles_load() {
    let profiles = AgentProfiles::builtin();
    assert_eq!(
        profiles.known_agents(),
        vec![
            "default",
            "foundation:explorer",
            "foundation:zen-architect",
            "recipes:recipe-author",
            "self"
        ]
    );
    let explorer = profiles.lookup("foundation:explorer");
    assert!(!explorer.is_fallback);
    assert_eq!(explorer.profile.name, "foundation:explorer");
    assert_eq!(explorer.profile.model_role.as_deref(), Some("fast"));
    assert_eq!(explorer.profile.parameters.temperature, Some(0.3));
    assert!(profiles.is_known("self"));
}

#[test]
fn unknown_agent_gets_the_default_profile() {
    let profiles = AgentProfiles::builtin();
    for name in ["foundation:bug-hunter", "", "SELF", "default:"] {
        let found = profiles.lookup(name);
        assert!(found.is_fallback, "{name}");
        assert_eq!(found.profile.name, DEFAULT_PROFILE);
        assert!(!profiles.is_known(name));
    }
}

#[test]
fn operator_directory_overrides_and_adds() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("explorer.yaml"),
        "name: 'foundation:explorer'\nsystem_prompt: operator prompt\nprovider_preferences:\n  - provider: local\n    model: fast\n  - class: reasoning\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bug.yml"),
        "name: 'foundation:bug-hunter'\naliases: [bugs]\nsystem_prompt: find bugs\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a profile").unwrap();
    let profiles = AgentProfiles::load_dir(dir.path()).unwrap();
    let explorer = profiles.lookup("foundation:explorer").profile;
    assert_eq!(explorer.system_prompt, "operator prompt");
    assert_eq!(
        explorer.provider_preferences,
        vec![
            PreferenceEntry::Provider {
                provider: "local".into(),
                model: Some("fast".into())
            },
            PreferenceEntry::Class {
                class: "reasoning".into()
            }
        ]
    );
    assert_eq!(explorer.model_role, None);
    assert_eq!(
        profiles.lookup("bugs").profile.name,
        "foundation:bug-hunter"
    );
    assert!(profiles.is_known("foundation:bug-hunter"));
    assert!(profiles.is_known("self"));
}

#[test]
fn bad_profiles_are_rejected_with_their_origin() {
    let default = src("d.yaml", "name: default\nsystem_prompt: hi\n");
    let cases = [
        (
            src("a.yaml", "name: a\nsystem_prompt: hi\ntemprature: 1\n"),
            "parse agent profile `a.yaml`",
        ),
        (
            src("a.yaml", "name: a\nsystem_prompt: ' '\n"),
            "agent profile `a.yaml`: `system_prompt` must not be empty",
        ),
        (
            src(
                "a.yaml",
                "name: a\nsystem_prompt: x\nparameters:\n  temperature: 3\n",
            ),
            "agent profile `a.yaml`: `parameters.temperature` must be within 0..=2",
        ),
        (
            src(
                "a.yaml",
                "name: a\nsystem_prompt: x\nparameters:\n  top_p: 1.5\n",
            ),
            "`parameters.top_p` must be within 0..=1",
        ),
        (
            src("a.yaml", "name: 'a b'\nsystem_prompt: x\n"),
            "`a b` is not an agent name",
        ),
        (
            src("a.yaml", "name: default\nsystem_prompt: x\n"),
            "agent name `default` is defined by both `d.yaml` and `a.yaml`",
        ),
        (src("a.yaml", "- 1\n- 2\n"), "parse agent profile `a.yaml`"),
    ];
    for ((origin, text), needle) in cases {
        let err = AgentProfiles::from_sources(&[default.clone(), (origin, text.clone())], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let err = AgentProfiles::from_sources(&[src("a.yaml", "name: a\nsystem_prompt: x\n")], &[])
        .unwrap_err();
    assert!(matches!(err, ProfileError::NoDefault), "{err}");
}

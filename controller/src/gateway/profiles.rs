//! Agent profiles: what a recipe's `agent:` name (`foundation:explorer`,
//! `recipes:recipe-author`, `self`, ...) means to this controller. A profile
//! holds the system prompt, the agent's own model selection (preference list
//! or model role) and default sampling parameters.
//!
//! Profiles are YAML files. The ones in `controller/agents/` are compiled in;
//! an operator directory (`gateway.profiles_dir`, loaded by
//! `GatewayConfig::load_profiles`) may add more or replace them by name. An unknown agent
//! name gets the `default` profile (validation warns about it: pass
//! [`AgentProfiles::known_agents`] as `CheckOptions::known_agents`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::PreferenceEntry;

/// The profile every unknown agent name maps to.
pub const DEFAULT_PROFILE: &str = "default";

/// Largest profile file read.
pub const MAX_PROFILE_BYTES: u64 = 64 * 1024;

/// The profiles shipped in `controller/agents/`.
const BUILTIN: [(&str, &str); 5] = [
    (
        "agents/default.yaml",
        include_str!("../../agents/default.yaml"),
    ),
    ("agents/self.yaml", include_str!("../../agents/self.yaml")),
    (
        "agents/foundation-explorer.yaml",
        include_str!("../../agents/foundation-explorer.yaml"),
    ),
    (
        "agents/foundation-zen-architect.yaml",
        include_str!("../../agents/foundation-zen-architect.yaml"),
    ),
    (
        "agents/recipes-recipe-author.yaml",
        include_str!("../../agents/recipes-recipe-author.yaml"),
    ),
];

/// Default sampling parameters of a profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileParameters {
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub top_p: Option<f64>,
}

/// One agent profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    /// The agent name recipes use.
    pub name: String,
    /// More names for the same profile.
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub description: String,
    pub system_prompt: String,
    /// The agent's own preferences (after the step's own selection).
    #[serde(default)]
    pub provider_preferences: Vec<PreferenceEntry>,
    /// The agent's own role (after its preferences).
    #[serde(default)]
    pub model_role: Option<String>,
    #[serde(default)]
    pub parameters: ProfileParameters,
}

/// Loading profiles failed; names the file.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("read agent profile directory `{}`: {source}", path.display())]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read agent profile `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent profile `{origin}` is larger than {MAX_PROFILE_BYTES} bytes")]
    TooLarge { origin: String },
    #[error("parse agent profile `{origin}`: {message}")]
    Parse { origin: String, message: String },
    #[error("agent profile `{origin}`: {message}")]
    Invalid { origin: String, message: String },
    #[error("agent name `{name}` is defined by both `{first}` and `{second}`")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("no `{DEFAULT_PROFILE}` agent profile")]
    NoDefault,
}

/// The profile chosen for an agent name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProfileMatch<'a> {
    pub profile: &'a AgentProfile,
    /// The name was unknown and the default profile stands in.
    pub is_fallback: bool,
}

/// All profiles by agent name (names and aliases).
#[derive(Clone, Debug)]
pub struct AgentProfiles {
    by_name: BTreeMap<String, Arc<AgentProfile>>,
    default: Arc<AgentProfile>,
}

impl AgentProfiles {
    /// The compiled-in profiles of `controller/agents/`.
    pub fn builtin() -> AgentProfiles {
        let sources: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(origin, text)| (origin.to_string(), text.to_string()))
            .collect();
        AgentProfiles::from_sources(&sources, &[])
            .expect("built-in agent profiles are valid (tested in profiles_tests)")
    }

    /// Build from `(origin, yaml)` pairs; `overrides` replace earlier
    /// profiles of the same name, duplicates within one list are errors.
    pub fn from_sources(
        base: &[(String, String)],
        overrides: &[(String, String)],
    ) -> Result<AgentProfiles, ProfileError> {
        let mut profiles: BTreeMap<String, (String, Arc<AgentProfile>)> = BTreeMap::new();
        for layer in [base, overrides] {
            let mut layer_names: BTreeMap<String, String> = BTreeMap::new();
            for (origin, text) in layer {
                let profile = Arc::new(parse_profile(origin, text)?);
                for name in std::iter::once(&profile.name).chain(&profile.aliases) {
                    validate_agent_name(origin, name)?;
                    if let Some(first) = layer_names.insert(name.clone(), origin.clone()) {
                        return Err(ProfileError::Duplicate {
                            name: name.clone(),
                            first,
                            second: origin.clone(),
                        });
                    }
                    profiles.insert(name.clone(), (origin.clone(), Arc::clone(&profile)));
                }
            }
        }
        let by_name: BTreeMap<String, Arc<AgentProfile>> = profiles
            .into_iter()
            .map(|(name, (_, profile))| (name, profile))
            .collect();
        let default = by_name
            .get(DEFAULT_PROFILE)
            .cloned()
            .ok_or(ProfileError::NoDefault)?;
        Ok(AgentProfiles { by_name, default })
    }

    /// The built-in profiles, overridden by every `*.yaml` file in `dir`.
    pub fn load_dir(dir: &Path) -> Result<AgentProfiles, ProfileError> {
        let entries = std::fs::read_dir(dir).map_err(|source| ProfileError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ProfileError::ReadDir {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
            {
                paths.push(path);
            }
        }
        paths.sort();
        let mut overrides = Vec::new();
        for path in paths {
            let origin = path.display().to_string();
            let metadata = std::fs::metadata(&path).map_err(|source| ProfileError::Read {
                path: path.clone(),
                source,
            })?;
            if metadata.len() > MAX_PROFILE_BYTES {
                return Err(ProfileError::TooLarge { origin });
            }
            let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Read {
                path: path.clone(),
                source,
            })?;
            overrides.push((origin, text));
        }
        let base: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(origin, text)| (origin.to_string(), text.to_string()))
            .collect();
        AgentProfiles::from_sources(&base, &overrides)
    }

    /// The profile for `agent`, or the default one.
    pub fn lookup(&self, agent: &str) -> ProfileMatch<'_> {
        match self.by_name.get(agent) {
            Some(profile) => ProfileMatch {
                profile,
                is_fallback: false,
            },
            None => ProfileMatch {
                profile: &self.default,
                is_fallback: true,
            },
        }
    }

    pub fn is_known(&self, agent: &str) -> bool {
        self.by_name.contains_key(agent)
    }

    /// Every agent name with its own profile (names and aliases, sorted),
    /// for `recipe::check::CheckOptions::known_agents`.
    pub fn known_agents(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}

fn parse_profile(origin: &str, text: &str) -> Result<AgentProfile, ProfileError> {
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(ProfileError::TooLarge {
            origin: origin.to_string(),
        });
    }
    let profile: AgentProfile =
        serde_saphyr::from_str(text).map_err(|err| ProfileError::Parse {
            origin: origin.to_string(),
            message: err.to_string(),
        })?;
    let invalid = |message: &str| ProfileError::Invalid {
        origin: origin.to_string(),
        message: message.to_string(),
    };
    if profile.system_prompt.trim().is_empty() {
        return Err(invalid("`system_prompt` must not be empty"));
    }
    let params = &profile.parameters;
    if params
        .temperature
        .is_some_and(|t| !(0.0..=2.0).contains(&t))
    {
        return Err(invalid("`parameters.temperature` must be within 0..=2"));
    }
    if params.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(invalid("`parameters.top_p` must be within 0..=1"));
    }
    if params.max_tokens == Some(0) {
        return Err(invalid("`parameters.max_tokens` must be at least 1"));
    }
    Ok(profile)
}

fn validate_agent_name(origin: &str, name: &str) -> Result<(), ProfileError> {
    let is_valid = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.'));
    if is_valid {
        Ok(())
    } else {
        Err(ProfileError::Invalid {
            origin: origin.to_string(),
            message: format!("`{name}` is not an agent name (1-128 of [A-Za-z0-9:._-])"),
        })
    }
}

#[cfg(test)]
#[path = "profiles_tests.rs"]
mod tests;

//! Resolution: from what an agent step asks for, plus its agent profile and
//! the operator's configuration, to one [`ResolvedRequest`] (provider, model,
//! system prompt, messages, parameters) and an ordered list of fallbacks.
//! Pure functions, no I/O.
//!
//! The order follows recipe-format.md Part B 5.2, first match wins:
//!
//! 1. step `provider_preferences`;
//! 2. step `model_role`;
//! 3. step `provider` + `model`;
//! 4. step `provider`;
//! 5. step `model` alone, on the default provider (section 17);
//! 6. the profile's `provider_preferences`;
//! 7. the profile's `model_role`;
//! 8. the operator's default provider.
//!
//! A level that names nothing usable (unconfigured provider, unknown class or
//! role, unlisted model) is skipped with a note, as the reference host falls
//! back to its default when no preferred provider is mounted. `class:` entries
//! and roles map through the operator's `classes` / `roles`; model aliases
//! through each provider's `models`.
//!
//! `agent_config` may override `temperature`, `max_tokens` and `top_p`
//! only; every other key is ignored with a note (it could otherwise choose
//! tools, providers or endpoints). A wire request's explicit `parameters`
//! override the same keys of its `agent_config` before that check.
//!
//! The engine's `AgentRequest` and the wire's `ModelRequest` carry the same
//! selection fields and map through one function (`StepSelection::from_fields`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::client::{ChatMessage, ChatRole, Parameters, ResolvedRequest};
use super::config::{GatewayConfig, PreferenceEntry, ProviderConfig};
use super::profiles::AgentProfiles;

/// `agent_config` keys a recipe may set.
pub const AGENT_CONFIG_ALLOWLIST: [&str; 3] = ["temperature", "max_tokens", "top_p"];

/// The step's own model selection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSelection {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub provider_preferences: Option<Vec<PreferenceEntry>>,
    pub model_role: Option<String>,
}

impl StepSelection {
    /// From the engine's agent request.
    pub fn from_agent_request(request: &recipe::runner::AgentRequest) -> StepSelection {
        StepSelection::from_fields(
            &request.provider,
            &request.model,
            request.provider_preferences.as_deref(),
            &request.model_role,
        )
    }

    /// From the wire's model request, which carries the step's selection as
    /// the recipe wrote it: the same mapping as [`Self::from_agent_request`].
    pub fn from_model_request(request: &protocol::ModelRequest) -> StepSelection {
        StepSelection::from_fields(
            &request.provider,
            &request.model,
            request.provider_preferences.as_deref(),
            &request.model_role,
        )
    }

    /// The one mapping behind both constructors: the four selection fields
    /// as they are, each preference entry converted.
    fn from_fields<'e, E>(
        provider: &Option<String>,
        model: &Option<String>,
        provider_preferences: Option<&'e [E]>,
        model_role: &Option<String>,
    ) -> StepSelection
    where
        &'e E: Into<PreferenceEntry>,
    {
        StepSelection {
            provider: provider.clone(),
            model: model.clone(),
            provider_preferences: provider_preferences
                .map(|entries| entries.iter().map(Into::into).collect()),
            model_role: model_role.clone(),
        }
    }
}

impl From<&recipe::model::ProviderPreference> for PreferenceEntry {
    fn from(entry: &recipe::model::ProviderPreference) -> PreferenceEntry {
        match entry {
            recipe::model::ProviderPreference::Provider { provider, model } => {
                PreferenceEntry::Provider {
                    provider: provider.clone(),
                    model: model.clone(),
                }
            }
            recipe::model::ProviderPreference::Class { class } => PreferenceEntry::Class {
                class: class.clone(),
            },
        }
    }
}

impl From<&protocol::ModelPreference> for PreferenceEntry {
    fn from(entry: &protocol::ModelPreference) -> PreferenceEntry {
        match entry {
            protocol::ModelPreference::Provider { provider, model } => PreferenceEntry::Provider {
                provider: provider.clone(),
                model: model.clone(),
            },
            protocol::ModelPreference::Class { class } => PreferenceEntry::Class {
                class: class.clone(),
            },
        }
    }
}

/// Everything resolution needs from one agent step.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolveInput<'a> {
    pub agent: &'a str,
    pub messages: Vec<ChatMessage>,
    pub selection: StepSelection,
    /// The step's `agent_config` (only the allowlisted keys are used).
    pub agent_config: Option<Map<String, Value>>,
    /// Stop sequences (wire requests only; recipes cannot set them).
    pub stop: Vec<String>,
    pub timeout: Option<Duration>,
}

impl<'a> ResolveInput<'a> {
    /// From the engine's agent request (prompt already has its `MODE:`
    /// prefix and `parse_json` suffix: recipe::engine adds them).
    pub fn from_agent_request(request: &'a recipe::runner::AgentRequest) -> ResolveInput<'a> {
        ResolveInput {
            agent: &request.agent,
            messages: vec![ChatMessage {
                role: ChatRole::User,
                content: request.prompt.clone(),
            }],
            selection: StepSelection::from_agent_request(request),
            agent_config: request.agent_config.clone(),
            stop: Vec::new(),
            timeout: Some(request.timeout),
        }
    }

    /// From the wire's model request. The selection maps as in
    /// [`Self::from_agent_request`]. System messages from the sandbox are
    /// dropped (the system prompt is the profile's; `notes` says so). The
    /// explicit `parameters` override the same keys of the step's
    /// `agent_config`, and the result goes through the allowlist in
    /// [`resolve`] (a note per dropped key). `timeout_secs` (0 = none)
    /// bounds the call.
    pub fn from_model_request(
        request: &'a protocol::ModelRequest,
        notes: &mut Vec<String>,
    ) -> ResolveInput<'a> {
        let mut messages = Vec::new();
        for message in &request.messages {
            let role = match message.role {
                protocol::ModelRole::User => ChatRole::User,
                protocol::ModelRole::Assistant => ChatRole::Assistant,
                protocol::ModelRole::System => {
                    notes.push(
                        "a system message from the sandbox was dropped: the agent profile sets the system prompt"
                            .to_string(),
                    );
                    continue;
                }
            };
            messages.push(ChatMessage {
                role,
                content: message.content.clone(),
            });
        }
        let params = &request.parameters;
        let mut agent_config = request.agent_config.clone().unwrap_or_default();
        if let Some(temperature) = params.temperature {
            agent_config.insert("temperature".to_string(), Value::from(temperature));
        }
        if let Some(max_tokens) = params.max_tokens {
            agent_config.insert("max_tokens".to_string(), Value::from(max_tokens));
        }
        if let Some(top_p) = params.top_p {
            agent_config.insert("top_p".to_string(), Value::from(top_p));
        }
        ResolveInput {
            agent: &request.agent,
            messages,
            selection: StepSelection::from_model_request(request),
            agent_config: (!agent_config.is_empty()).then_some(agent_config),
            stop: params.stop.clone(),
            timeout: (request.timeout_secs > 0).then(|| Duration::from_secs(request.timeout_secs)),
        }
    }
}

/// Which level of the resolution order chose the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionSource {
    StepPreferences,
    StepModelRole,
    StepProviderModel,
    StepProvider,
    StepModel,
    ProfilePreferences,
    ProfileModelRole,
    OperatorDefault,
}

/// A concrete provider and model id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub provider: String,
    pub model: String,
}

/// The outcome of resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// The call to make (first target).
    pub request: ResolvedRequest,
    /// Further usable targets of the same level, in preference order.
    pub fallbacks: Vec<Target>,
    pub source: SelectionSource,
    /// The profile used (`default` when the agent name is unknown).
    pub profile: String,
    pub profile_is_fallback: bool,
    /// Why something the step asked for was not used; for events and logs.
    pub notes: Vec<String>,
}

/// Resolution found nothing to call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no model provider is configured")]
    NoProviders,
    #[error("no usable model: {}", notes.join("; "))]
    NoUsableModel { notes: Vec<String> },
}

/// Resolve one agent step.
pub fn resolve(
    config: &GatewayConfig,
    profiles: &AgentProfiles,
    input: &ResolveInput<'_>,
) -> Result<Resolution, ResolveError> {
    if !config.has_providers() {
        return Err(ResolveError::NoProviders);
    }
    let found = profiles.lookup(input.agent);
    let profile = found.profile;
    let mut notes = Vec::new();
    if found.is_fallback {
        notes.push(format!(
            "agent `{}` has no profile; using `{}`",
            input.agent, profile.name
        ));
    }

    let selection = &input.selection;
    let mut levels: Vec<(SelectionSource, Vec<PreferenceEntry>)> = Vec::new();
    if let Some(entries) = &selection.provider_preferences {
        levels.push((SelectionSource::StepPreferences, entries.clone()));
    }
    if let Some(role) = &selection.model_role {
        levels.push((
            SelectionSource::StepModelRole,
            role_entries(config, role, &mut notes),
        ));
    }
    match (&selection.provider, &selection.model) {
        (Some(provider), Some(model)) => levels.push((
            SelectionSource::StepProviderModel,
            vec![PreferenceEntry::Provider {
                provider: provider.clone(),
                model: Some(model.clone()),
            }],
        )),
        (Some(provider), None) => levels.push((
            SelectionSource::StepProvider,
            vec![PreferenceEntry::Provider {
                provider: provider.clone(),
                model: None,
            }],
        )),
        (None, Some(model)) => {
            if let Some(default) = config.default_provider() {
                levels.push((
                    SelectionSource::StepModel,
                    vec![PreferenceEntry::Provider {
                        provider: default.name.clone(),
                        model: Some(model.clone()),
                    }],
                ));
            }
        }
        (None, None) => {}
    }
    if !profile.provider_preferences.is_empty() {
        levels.push((
            SelectionSource::ProfilePreferences,
            profile.provider_preferences.clone(),
        ));
    }
    if let Some(role) = &profile.model_role {
        levels.push((
            SelectionSource::ProfileModelRole,
            role_entries(config, role, &mut notes),
        ));
    }
    if let Some(default) = config.default_provider() {
        levels.push((
            SelectionSource::OperatorDefault,
            vec![PreferenceEntry::Provider {
                provider: default.name.clone(),
                model: None,
            }],
        ));
    }

    let mut chosen = None;
    for (source, entries) in levels {
        let targets: Vec<Target> = entries
            .iter()
            .filter_map(|entry| expand_entry(config, entry, &mut notes))
            .collect();
        if !targets.is_empty() {
            chosen = Some((source, targets));
            break;
        }
    }
    let Some((source, mut targets)) = chosen else {
        return Err(ResolveError::NoUsableModel { notes });
    };
    let first = targets.remove(0);

    let mut parameters =
        resolve_parameters(config, profile, input.agent_config.as_ref(), &mut notes);
    parameters.stop = input.stop.clone();
    let messages = input.messages.clone();
    Ok(Resolution {
        request: ResolvedRequest {
            provider: first.provider,
            model: first.model,
            system: Some(profile.system_prompt.clone()),
            messages,
            parameters,
            timeout: input.timeout,
        },
        fallbacks: targets,
        source,
        profile: profile.name.clone(),
        profile_is_fallback: found.is_fallback,
        notes,
    })
}

fn role_entries(
    config: &GatewayConfig,
    role: &str,
    notes: &mut Vec<String>,
) -> Vec<PreferenceEntry> {
    match config.roles.get(role) {
        Some(entries) => entries.clone(),
        None => {
            notes.push(format!("model role `{role}` is not configured"));
            Vec::new()
        }
    }
}

fn expand_entry(
    config: &GatewayConfig,
    entry: &PreferenceEntry,
    notes: &mut Vec<String>,
) -> Option<Target> {
    let (provider_name, model) = match entry {
        PreferenceEntry::Provider { provider, model } => (provider.as_str(), model.as_deref()),
        PreferenceEntry::Class { class } => match config.classes.get(class) {
            Some(target) => (target.provider.as_str(), target.model.as_deref()),
            None => {
                notes.push(format!("model class `{class}` is not configured"));
                return None;
            }
        },
    };
    let Some(provider) = config.provider(provider_name) else {
        notes.push(format!("provider `{provider_name}` is not configured"));
        return None;
    };
    let model = match model {
        None => Some(provider.default_model.clone()),
        Some(model) => resolve_model(provider, model),
    };
    match model {
        Some(model) => Some(Target {
            provider: provider.name.clone(),
            model,
        }),
        None => {
            notes.push(format!(
                "model `{}` is not offered by provider `{}`",
                match entry {
                    PreferenceEntry::Provider { model, .. } => model.clone().unwrap_or_default(),
                    PreferenceEntry::Class { class } => format!("class:{class}"),
                },
                provider.name
            ));
            None
        }
    }
}

/// An alias, a listed model id, a glob over listed ids and aliases (the
/// greatest match, so `claude-sonnet-*` picks the newest dated id), or, when
/// the operator allows it, any id.
pub fn resolve_model(provider: &ProviderConfig, requested: &str) -> Option<String> {
    if let Some(model) = provider.models.get(requested) {
        return Some(model.clone());
    }
    let listed = provider.listed_models();
    if listed.contains(requested) {
        return Some(requested.to_string());
    }
    if requested.contains('*') || requested.contains('?') {
        let mut candidates: Vec<&str> = listed
            .iter()
            .copied()
            .filter(|model| glob_matches(requested, model))
            .collect();
        for (alias, model) in &provider.models {
            if glob_matches(requested, alias) {
                candidates.push(model);
            }
        }
        return candidates.into_iter().max().map(str::to_string);
    }
    if provider.allow_unlisted_models && !requested.trim().is_empty() {
        return Some(requested.to_string());
    }
    None
}

/// `*` matches any run of characters, `?` one character.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

fn resolve_parameters(
    config: &GatewayConfig,
    profile: &super::profiles::AgentProfile,
    agent_config: Option<&Map<String, Value>>,
    notes: &mut Vec<String>,
) -> Parameters {
    let mut parameters = Parameters {
        temperature: profile.parameters.temperature,
        max_tokens: profile.parameters.max_tokens,
        top_p: profile.parameters.top_p,
        stop: Vec::new(),
    };
    if let Some(overrides) = agent_config {
        for (key, value) in overrides {
            match key.as_str() {
                "temperature" => match value.as_f64() {
                    Some(t) if (0.0..=2.0).contains(&t) => parameters.temperature = Some(t),
                    _ => notes.push(format!(
                        "agent_config.temperature ignored: {value} is not a number within 0..=2"
                    )),
                },
                "top_p" => match value.as_f64() {
                    Some(p) if (0.0..=1.0).contains(&p) => parameters.top_p = Some(p),
                    _ => notes.push(format!(
                        "agent_config.top_p ignored: {value} is not a number within 0..=1"
                    )),
                },
                "max_tokens" => match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    Some(n) if n >= 1 => parameters.max_tokens = Some(n),
                    _ => notes.push(format!(
                        "agent_config.max_tokens ignored: {value} is not a positive integer"
                    )),
                },
                _ => notes.push(format!(
                    "agent_config.{key} ignored: only {} can be overridden",
                    AGENT_CONFIG_ALLOWLIST.join(", ")
                )),
            }
        }
    }
    if let Some(cap) = config.max_tokens_cap {
        match parameters.max_tokens {
            Some(n) if n > cap => {
                notes.push(format!(
                    "max_tokens {n} lowered to the operator's cap {cap}"
                ));
                parameters.max_tokens = Some(cap);
            }
            None => parameters.max_tokens = Some(cap),
            Some(_) => {}
        }
    }
    parameters
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;

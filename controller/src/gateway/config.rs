//! The operator's model-gateway configuration: providers (base URL, where the
//! API key comes from, model aliases, timeouts), model classes and roles,
//! retry policy and budgets. Read and validated at startup, before any port is
//! bound; the API keys are loaded here too, from an environment variable or a
//! file, into [`ApiKey`] values that never print themselves.
//!
//! Nothing in a recipe can add a provider, a base URL or a key: a recipe only
//! *chooses* among what this configuration offers (see `resolve`).
//!
//! TOML shape (as a `[gateway]` section of the controller's configuration):
//!
//! ```toml
//! [gateway]
//! default_provider = "local"
//! profiles_dir = "/etc/kiln/agents"   # optional: *.yaml agent profiles
//!
//! [[gateway.providers]]
//! name = "local"
//! kind = "openai"
//! base_url = "http://127.0.0.1:11434/v1"
//! default_model = "llama3.2"
//! models = { fast = "llama3.2:1b" }
//!
//! [gateway.classes.reasoning]
//! provider = "local"
//! model = "llama3.2"
//!
//! [gateway.roles]
//! coding = [{ class = "reasoning" }, { provider = "local" }]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::budget::Budget;
use super::profiles::AgentProfiles;

/// Largest API key file read (a key is a few hundred bytes at most).
pub const MAX_API_KEY_FILE_BYTES: u64 = 16 * 1024;

/// Which wire protocol a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderKind {
    /// OpenAI-compatible Chat Completions: OpenAI, Azure OpenAI, vLLM,
    /// llama.cpp server, Ollama.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages.
    #[serde(rename = "anthropic")]
    Anthropic,
}

/// One model provider the operator offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The name recipes use in `provider:` / `provider_preferences`. It has
    /// no `:`, so it never collides with a `class:<name>` wire entry.
    pub name: String,
    pub kind: ProviderKind,
    /// `http(s)://host[:port][/prefix]`; OpenAI-compatible requests go to
    /// `{base_url}/chat/completions`, Anthropic ones to `{base_url}/v1/messages`.
    pub base_url: String,
    /// Environment variable holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// File holding the API key (trailing whitespace is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Model aliases: alias -> model id at the provider.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// The model used when a recipe names only the provider.
    pub default_model: String,
    /// Let recipes name models that are neither the default nor an alias
    /// target. Off by default: a recipe must not pick an expensive model the
    /// operator did not list.
    #[serde(default)]
    pub allow_unlisted_models: bool,
    /// Bound on one whole call, streaming included.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Bound on establishing the connection.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
}

fn default_request_timeout_secs() -> u64 {
    600
}

fn default_connect_timeout_secs() -> u64 {
    10
}

impl ProviderConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Where this provider's key comes from, if it has one.
    pub fn key_source(&self) -> Option<KeySource> {
        match (&self.api_key_env, &self.api_key_file) {
            (Some(var), _) => Some(KeySource::Env(var.clone())),
            (None, Some(path)) => Some(KeySource::File(path.clone())),
            (None, None) => None,
        }
    }

    /// Every model id this provider offers to recipes (default + alias targets).
    pub fn listed_models(&self) -> BTreeSet<&str> {
        let mut models: BTreeSet<&str> = self.models.values().map(String::as_str).collect();
        models.insert(self.default_model.as_str());
        models
    }
}

/// A concrete provider and (optionally) model, as classes map to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTarget {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// One entry of a role's preference list (and of a profile's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum PreferenceEntry {
    Provider {
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    Class {
        class: String,
    },
}

/// Retrying a provider call on 429 and 5xx.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A `Retry-After` longer than this is not waited for: the call fails
    /// with `rate_limited` instead.
    pub max_retry_after_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            max_attempts: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            max_retry_after_secs: 120,
        }
    }
}

/// Budgets per user and per execution (absent limit = unlimited).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    pub per_user: Budget,
    pub per_execution: Budget,
}

/// Bounds on what a provider may send back (provider output is untrusted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseLimits {
    /// Longest SSE line.
    pub max_line_bytes: usize,
    /// Largest SSE event (all its `data:` lines together).
    pub max_event_bytes: usize,
    /// Largest assembled answer text.
    pub max_answer_bytes: usize,
    /// Largest error body read from a failed response.
    pub max_error_body_bytes: usize,
}

impl Default for ResponseLimits {
    fn default() -> ResponseLimits {
        ResponseLimits {
            max_line_bytes: 256 * 1024,
            max_event_bytes: 1024 * 1024,
            max_answer_bytes: 4 * 1024 * 1024,
            max_error_body_bytes: 16 * 1024,
        }
    }
}

/// The whole `[gateway]` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub providers: Vec<ProviderConfig>,
    /// Used when neither the step nor the agent profile selects a model.
    /// Default: the first provider.
    pub default_provider: Option<String>,
    /// `class:` preference entries map through here.
    pub classes: BTreeMap<String, ModelTarget>,
    /// `model_role` values map to preference lists through here.
    pub roles: BTreeMap<String, Vec<PreferenceEntry>>,
    /// Upper bound on `max_tokens` of any call.
    pub max_tokens_cap: Option<u32>,
    pub retry: RetryConfig,
    pub budgets: BudgetsConfig,
    pub response_limits: ResponseLimits,
    /// A directory of `*.yaml` / `*.yml` agent profiles that add to the
    /// built-in ones and replace them by name (absolute path). None: the
    /// built-in profiles only.
    pub profiles_dir: Option<PathBuf>,
}

/// The operator key of the profiles directory, as errors name it.
pub const PROFILES_DIR_KEY: &str = "gateway.profiles_dir";

/// A configuration problem, naming the key (`gateway.providers[0].base_url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration at `{key}`: {message}")]
pub struct GatewayConfigError {
    pub key: String,
    pub message: String,
}

fn config_error(key: impl Into<String>, message: impl Into<String>) -> GatewayConfigError {
    GatewayConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl GatewayConfig {
    /// True when at least one provider is configured (agent steps can run).
    pub fn has_providers(&self) -> bool {
        !self.providers.is_empty()
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|provider| provider.name == name)
    }

    /// The provider used when nothing else selects one.
    pub fn default_provider(&self) -> Option<&ProviderConfig> {
        match &self.default_provider {
            Some(name) => self.provider(name),
            None => self.providers.first(),
        }
    }

    /// The agent profiles this configuration gives: the built-in ones,
    /// overridden by every profile in `profiles_dir` when it is set. An error
    /// names the key `gateway.profiles_dir` and the file at fault.
    pub fn load_profiles(&self) -> Result<AgentProfiles, GatewayConfigError> {
        let Some(dir) = &self.profiles_dir else {
            return Ok(AgentProfiles::builtin());
        };
        if !dir.is_absolute() {
            return Err(config_error(PROFILES_DIR_KEY, "must be an absolute path"));
        }
        AgentProfiles::load_dir(dir)
            .map_err(|error| config_error(PROFILES_DIR_KEY, error.to_string()))
    }

    /// Check every cross-reference and bound; the first problem wins.
    ///
    /// The one check that reads files: with `profiles_dir` set, every
    /// profile in it is loaded ([`Self::load_profiles`]), so a bad directory
    /// or profile stops start-up (exit 64) rather than the first agent step.
    pub fn validate(&self) -> Result<(), GatewayConfigError> {
        let mut names = BTreeSet::new();
        for (idx, provider) in self.providers.iter().enumerate() {
            let key = format!("gateway.providers[{idx}]");
            validate_name(&provider.name, &format!("{key}.name"))?;
            if !names.insert(provider.name.as_str()) {
                return Err(config_error(
                    format!("{key}.name"),
                    format!("duplicate provider name `{}`", provider.name),
                ));
            }
            validate_base_url(&provider.base_url, &format!("{key}.base_url"))?;
            if provider.api_key_env.is_some() && provider.api_key_file.is_some() {
                return Err(config_error(
                    format!("{key}.api_key_env"),
                    "set at most one of `api_key_env` and `api_key_file`",
                ));
            }
            if let Some(var) = &provider.api_key_env
                && (var.is_empty() || var.contains('='))
            {
                return Err(config_error(
                    format!("{key}.api_key_env"),
                    "must be an environment variable name",
                ));
            }
            if let Some(path) = &provider.api_key_file
                && !path.is_absolute()
            {
                return Err(config_error(
                    format!("{key}.api_key_file"),
                    "must be an absolute path",
                ));
            }
            if provider.default_model.trim().is_empty() {
                return Err(config_error(
                    format!("{key}.default_model"),
                    "must not be empty",
                ));
            }
            for (alias, model) in &provider.models {
                if alias.is_empty() || model.trim().is_empty() {
                    return Err(config_error(
                        format!("{key}.models.{alias}"),
                        "aliases and model ids must not be empty",
                    ));
                }
            }
            if provider.request_timeout_secs == 0 {
                return Err(config_error(
                    format!("{key}.request_timeout_secs"),
                    "must be at least 1",
                ));
            }
            if provider.connect_timeout_secs == 0 {
                return Err(config_error(
                    format!("{key}.connect_timeout_secs"),
                    "must be at least 1",
                ));
            }
        }
        if let Some(name) = &self.default_provider
            && self.provider(name).is_none()
        {
            return Err(config_error(
                "gateway.default_provider",
                format!("no provider named `{name}`"),
            ));
        }
        for (class, target) in &self.classes {
            if self.provider(&target.provider).is_none() {
                return Err(config_error(
                    format!("gateway.classes.{class}.provider"),
                    format!("no provider named `{}`", target.provider),
                ));
            }
        }
        for (role, entries) in &self.roles {
            if entries.is_empty() {
                return Err(config_error(
                    format!("gateway.roles.{role}"),
                    "must list at least one preference",
                ));
            }
            for (idx, entry) in entries.iter().enumerate() {
                let key = format!("gateway.roles.{role}[{idx}]");
                match entry {
                    PreferenceEntry::Provider { provider, .. } => {
                        if self.provider(provider).is_none() {
                            return Err(config_error(
                                key,
                                format!("no provider named `{provider}`"),
                            ));
                        }
                    }
                    PreferenceEntry::Class { class } => {
                        if !self.classes.contains_key(class) {
                            return Err(config_error(key, format!("no class named `{class}`")));
                        }
                    }
                }
            }
        }
        if self.max_tokens_cap == Some(0) {
            return Err(config_error("gateway.max_tokens_cap", "must be at least 1"));
        }
        let retry = &self.retry;
        if retry.max_attempts == 0 || retry.max_attempts > 10 {
            return Err(config_error(
                "gateway.retry.max_attempts",
                "must be between 1 and 10",
            ));
        }
        if retry.initial_backoff_ms == 0 || retry.max_backoff_ms < retry.initial_backoff_ms {
            return Err(config_error(
                "gateway.retry.max_backoff_ms",
                "need 0 < initial_backoff_ms <= max_backoff_ms",
            ));
        }
        let limits = &self.response_limits;
        if limits.max_line_bytes == 0
            || limits.max_event_bytes == 0
            || limits.max_answer_bytes == 0
            || limits.max_error_body_bytes == 0
        {
            return Err(config_error(
                "gateway.response_limits",
                "every limit must be at least 1",
            ));
        }
        if self.profiles_dir.is_some() {
            self.load_profiles()?;
        }
        Ok(())
    }
}

fn validate_name(name: &str, key: &str) -> Result<(), GatewayConfigError> {
    let is_valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if is_valid {
        Ok(())
    } else {
        Err(config_error(
            key,
            format!("`{name}` is not a provider name (1-64 of [A-Za-z0-9._-])"),
        ))
    }
}

fn validate_base_url(base_url: &str, key: &str) -> Result<(), GatewayConfigError> {
    let url = reqwest::Url::parse(base_url)
        .map_err(|err| config_error(key, format!("not a URL: {err}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(config_error(key, "scheme must be http or https"));
    }
    if url.host_str().is_none() {
        return Err(config_error(key, "needs a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // A key in the URL would show up in every error that prints the URL.
        return Err(config_error(
            key,
            "must not carry credentials; use api_key_env or api_key_file",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config_error(key, "must not have a query or fragment"));
    }
    Ok(())
}

/// A provider API key. Never printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wrap a key (already validated as header-safe by [`load_api_key`]).
    pub fn new(key: String) -> ApiKey {
        ApiKey(key)
    }

    /// The secret itself, for the one place that puts it in a header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a key is read from. Printed in errors instead of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(var) => write!(f, "environment variable `{var}`"),
            KeySource::File(path) => write!(f, "file `{}`", path.display()),
        }
    }
}

/// Loading a provider's API key failed. Names the source, never the key.
#[derive(Debug, thiserror::Error)]
pub enum LoadKeyError {
    #[error("api key for provider `{provider}`: {origin} is missing")]
    Missing { provider: String, origin: KeySource },
    #[error("api key for provider `{provider}`: cannot read {origin}: {error}")]
    Unreadable {
        provider: String,
        origin: KeySource,
        error: std::io::Error,
    },
    #[error("api key for provider `{provider}`: {origin} is empty")]
    Empty { provider: String, origin: KeySource },
    #[error("api key for provider `{provider}`: {origin} is larger than {max_bytes} bytes")]
    TooLarge {
        provider: String,
        origin: KeySource,
        max_bytes: u64,
    },
    #[error(
        "api key for provider `{provider}`: {origin} holds characters not allowed in an http header"
    )]
    Invalid { provider: String, origin: KeySource },
}

/// Load one provider's key from its environment variable or file.
/// `Ok(None)` when the provider needs no key (a local server).
pub fn load_api_key(
    provider: &ProviderConfig,
    env: &BTreeMap<String, String>,
) -> Result<Option<ApiKey>, LoadKeyError> {
    let Some(origin) = provider.key_source() else {
        return Ok(None);
    };
    let raw = match &origin {
        KeySource::Env(var) => match env.get(var) {
            Some(value) => value.clone(),
            None => {
                return Err(LoadKeyError::Missing {
                    provider: provider.name.clone(),
                    origin,
                });
            }
        },
        KeySource::File(path) => read_key_file(path).map_err(|err| match err {
            KeyFileError::Io(error) if error.kind() == std::io::ErrorKind::NotFound => {
                LoadKeyError::Missing {
                    provider: provider.name.clone(),
                    origin: origin.clone(),
                }
            }
            KeyFileError::Io(error) => LoadKeyError::Unreadable {
                provider: provider.name.clone(),
                origin: origin.clone(),
                error,
            },
            KeyFileError::TooLarge => LoadKeyError::TooLarge {
                provider: provider.name.clone(),
                origin: origin.clone(),
                max_bytes: MAX_API_KEY_FILE_BYTES,
            },
            KeyFileError::NotUtf8 => LoadKeyError::Invalid {
                provider: provider.name.clone(),
                origin: origin.clone(),
            },
        })?,
    };
    let key = raw.trim();
    if key.is_empty() {
        return Err(LoadKeyError::Empty {
            provider: provider.name.clone(),
            origin,
        });
    }
    // Visible ASCII only: anything else could split or corrupt the header.
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(LoadKeyError::Invalid {
            provider: provider.name.clone(),
            origin,
        });
    }
    Ok(Some(ApiKey(key.to_string())))
}

/// Load the keys of every provider, by provider name.
pub fn load_api_keys(
    config: &GatewayConfig,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, ApiKey>, LoadKeyError> {
    let mut keys = BTreeMap::new();
    for provider in &config.providers {
        if let Some(key) = load_api_key(provider, env)? {
            keys.insert(provider.name.clone(), key);
        }
    }
    Ok(keys)
}

enum KeyFileError {
    Io(std::io::Error),
    TooLarge,
    NotUtf8,
}

fn read_key_file(path: &Path) -> Result<String, KeyFileError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(KeyFileError::Io)?;
    let mut bytes = Vec::new();
    file.take(MAX_API_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(KeyFileError::Io)?;
    if bytes.len() as u64 > MAX_API_KEY_FILE_BYTES {
        return Err(KeyFileError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| KeyFileError::NotUtf8)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

//! Stage: before everything. The operator's configuration: a TOML file plus
//! `KILN_*` environment overrides, read and validated in full before the
//! controller touches Docker or binds a port.
//!
//! Only this configuration can choose an execution's image, runtime, limits and
//! UID range; nothing in a recipe can. Every struct denies unknown fields
//! (a misspelled, silently ignored `timeout` is a security bug) and every unit is
//! in the key's name (`memory_mib`, `wall_timeout_secs`).
//!
//! Environment overrides: `KILN_SECTION__KEY=value` sets `section.key`
//! (`__` separates levels, names are lower-cased), e.g. `KILN_SERVER__LISTEN=0.0.0.0:8700`
//! or `KILN_SANDBOX__CLASSES__DEFAULT__MEMORY_MIB=1024`. The value is read as a
//! TOML value when it parses as one (`4`, `true`, `"x"`), otherwise as a string.
//! Variables without `__` (such as `KILN_CONFIG`) are not overrides.
//! The environment reaches [`Config::load`] as a plain map, so tests pass a map.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::gateway::GatewayConfig;
use crate::gateway::config::{KeySource, LoadKeyError, load_api_key};

/// The lowest UID Kiln may give a step: the reserved range is 200000..=265535.
pub const UID_RANGE_MIN: u32 = 200_000;
/// The highest UID Kiln may give a step.
pub const UID_RANGE_MAX: u32 = 265_535;
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "KILN_";

/// A configuration problem, naming the offending key (`sandbox.classes.default.memory_mib`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration at `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration. Every section has defaults, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub queue: QueueConfig,
    pub retention: RetentionConfig,
    pub sandbox: SandboxConfig,
    /// Model providers for agent steps (none by default: agent steps are
    /// then refused at intake). See `docs/model-gateway.md`.
    pub gateway: GatewayConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API binds to.
    pub listen: SocketAddr,
    /// Where the SQLite database (`kiln.db`) and stored artifacts live.
    pub data_dir: PathBuf,
    /// Host directory holding one socket directory per execution (absolute).
    pub run_dir: PathBuf,
    /// Directory of curated `*.yaml` recipes that submissions may name.
    pub gallery_dir: PathBuf,
    /// Seconds between heartbeats on a user's WebSocket stream.
    pub ws_heartbeat_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            data_dir: PathBuf::from("/var/lib/kiln"),
            run_dir: PathBuf::from("/run/kiln"),
            gallery_dir: PathBuf::from("gallery"),
            ws_heartbeat_secs: 15,
        }
    }
}

/// Size limits on what a user may submit, and the hard ceiling on any deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest recipe source accepted (bytes).
    pub max_recipe_bytes: u64,
    /// Largest `inputs` object accepted, measured as compact JSON (bytes).
    pub max_inputs_bytes: u64,
    /// Most extra files (sub-recipes) in one submission.
    pub max_files: u32,
    /// Largest single extra file (bytes).
    pub max_file_bytes: u64,
    /// Largest single artifact kept by the store (bytes).
    pub max_artifact_bytes: u64,
    /// Ceiling on every class's `wall_timeout_secs`.
    pub max_execution_deadline_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_recipe_bytes: 256 * 1024,
            max_inputs_bytes: 64 * 1024,
            max_files: 16,
            max_file_bytes: 256 * 1024,
            max_artifact_bytes: 16 * 1024 * 1024,
            max_execution_deadline_secs: 6 * 3600,
        }
    }
}

impl LimitsConfig {
    /// The HTTP body limit for a submission: everything a valid one can hold,
    /// plus room for JSON framing and escaping. Larger bodies get 413.
    pub fn request_body_bytes(&self) -> usize {
        let files = u64::from(self.max_files).saturating_mul(self.max_file_bytes);
        let total = self
            .max_recipe_bytes
            .saturating_add(self.max_inputs_bytes)
            .saturating_add(files)
            // JSON escaping can double text (`\n`, `\"`); framing is small.
            .saturating_mul(2)
            .saturating_add(64 * 1024);
        usize::try_from(total).unwrap_or(usize::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Executions running at once. Default: the host's CPU count (at least 1).
    pub concurrency: u32,
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        QueueConfig {
            concurrency: u32::try_from(cores).unwrap_or(1).max(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Finished executions older than this are purged with their events and artifacts.
    pub days: u32,
    /// At most this many finished executions are kept (the oldest go first).
    pub max_executions: u64,
}

impl Default for RetentionConfig {
    fn default() -> RetentionConfig {
        RetentionConfig {
            days: 30,
            max_executions: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// First UID handed to steps (inclusive), within 200000..=265535.
    pub uid_range_start: u32,
    /// Last UID handed to steps (inclusive), within 200000..=265535.
    pub uid_range_end: u32,
    /// The class used when a submission names none.
    pub default_class: String,
    /// Execution classes by name.
    pub classes: BTreeMap<String, ClassConfig>,
}

impl Default for SandboxConfig {
    fn default() -> SandboxConfig {
        let mut classes = BTreeMap::new();
        classes.insert("default".to_string(), ClassConfig::default());
        classes.insert(
            "standard".to_string(),
            ClassConfig {
                image: "kiln-standard".to_string(),
                ..ClassConfig::default()
            },
        );
        SandboxConfig {
            uid_range_start: UID_RANGE_MIN,
            uid_range_end: UID_RANGE_MAX,
            default_class: "default".to_string(),
            classes,
        }
    }
}

/// The container runtime of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Runc,
    Runsc,
}

/// One execution class: everything about a container that the operator chooses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassConfig {
    /// Image tag or id (`kiln-minimal`, `kiln-standard`, or an operator image built on them).
    pub image: String,
    pub runtime: RuntimeKind,
    /// Memory limit; swap is set equal so nothing swaps.
    pub memory_mib: u64,
    /// CPU limit in thousandths of a CPU (1000 = one core).
    pub cpus_milli: u32,
    /// pids cgroup limit. Under runsc it counts host threads, so it must be large (>= 512).
    pub pids: u32,
    /// Size of the `/work` tmpfs.
    pub work_mib: u64,
    /// Size of the `/tmp` tmpfs.
    pub tmp_mib: u64,
    /// Size of `/dev/shm`.
    pub shm_mib: u64,
    /// `nofile` ulimit.
    pub nofile: u64,
    /// `fsize` ulimit.
    pub fsize_mib: u64,
    /// Total step output kept per execution; beyond it output is truncated with an event.
    pub output_cap_bytes: u64,
    /// Hard wall-clock deadline of one execution, enforced from outside the container.
    pub wall_timeout_secs: u64,
}

impl Default for ClassConfig {
    fn default() -> ClassConfig {
        ClassConfig {
            image: "kiln-minimal".to_string(),
            runtime: RuntimeKind::Runc,
            memory_mib: 512,
            cpus_milli: 1000,
            pids: 128,
            work_mib: 256,
            tmp_mib: 64,
            shm_mib: 16,
            nofile: 1024,
            fsize_mib: 256,
            output_cap_bytes: 16 * 1024 * 1024,
            wall_timeout_secs: 3600,
        }
    }
}

impl ClassConfig {
    pub fn wall_timeout(&self) -> Duration {
        Duration::from_secs(self.wall_timeout_secs)
    }
}

impl Config {
    /// Parses `toml_text` (None = no file), applies the `KILN_*` overrides found
    /// in `env`, and validates the result.
    pub fn load(
        toml_text: Option<&str>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut table = match toml_text {
            Some(text) => text.parse::<toml::Table>().map_err(|err| {
                ConfigError::new(toml_error_key(text, &err), err.message().to_string())
            })?,
            None => toml::Table::new(),
        };
        apply_env_overrides(&mut table, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
                let path = err.path().to_string();
                let message = err.inner().to_string();
                ConfigError::new(key_of_serde_error(&path), message)
            })?;
        config.validate()?;
        check_api_keys(&config.gateway, env)?;
        Ok(config)
    }

    /// Reads the file at `path` (if any) and the process environment, then [`Config::load`].
    pub fn from_process(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|err| {
                ConfigError::new("<file>", format!("cannot read {}: {err}", path.display()))
            })?),
            None => None,
        };
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Config::load(text.as_deref(), &env)
    }

    /// The class a submission gets: `requested`, or the default class.
    pub fn class(&self, requested: Option<&str>) -> Option<(&str, &ClassConfig)> {
        let name = requested.unwrap_or(&self.sandbox.default_class);
        self.sandbox
            .classes
            .get_key_value(name)
            .map(|(name, class)| (name.as_str(), class))
    }

    /// Path of the SQLite database inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.server.data_dir.join("kiln.db")
    }

    /// Checks every value; the error names the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        if server.listen.port() == 0 {
            return Err(ConfigError::new("server.listen", "port must not be 0"));
        }
        if server.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("server.data_dir", "must not be empty"));
        }
        if !server.run_dir.is_absolute() {
            return Err(ConfigError::new(
                "server.run_dir",
                "must be an absolute path (it is bind-mounted)",
            ));
        }
        if server.gallery_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("server.gallery_dir", "must not be empty"));
        }
        check_range(
            "server.ws_heartbeat_secs",
            server.ws_heartbeat_secs,
            1,
            3600,
        )?;

        let limits = &self.limits;
        check_range(
            "limits.max_recipe_bytes",
            limits.max_recipe_bytes,
            64,
            16 << 20,
        )?;
        check_range(
            "limits.max_inputs_bytes",
            limits.max_inputs_bytes,
            2,
            16 << 20,
        )?;
        check_range("limits.max_files", u64::from(limits.max_files), 0, 1024)?;
        check_range("limits.max_file_bytes", limits.max_file_bytes, 64, 16 << 20)?;
        check_range(
            "limits.max_artifact_bytes",
            limits.max_artifact_bytes,
            1,
            1 << 30,
        )?;
        check_range(
            "limits.max_execution_deadline_secs",
            limits.max_execution_deadline_secs,
            1,
            7 * 86400,
        )?;

        check_range(
            "queue.concurrency",
            u64::from(self.queue.concurrency),
            1,
            1024,
        )?;
        check_range("retention.days", u64::from(self.retention.days), 1, 36500)?;
        check_range(
            "retention.max_executions",
            self.retention.max_executions,
            1,
            u64::MAX,
        )?;

        let sandbox = &self.sandbox;
        for (key, uid) in [
            ("sandbox.uid_range_start", sandbox.uid_range_start),
            ("sandbox.uid_range_end", sandbox.uid_range_end),
        ] {
            if !(UID_RANGE_MIN..=UID_RANGE_MAX).contains(&uid) {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{uid} is outside the reserved range {UID_RANGE_MIN}..={UID_RANGE_MAX}"
                    ),
                ));
            }
        }
        if sandbox.uid_range_start > sandbox.uid_range_end {
            return Err(ConfigError::new(
                "sandbox.uid_range_end",
                "must not be below sandbox.uid_range_start",
            ));
        }
        let n_uids = u64::from(sandbox.uid_range_end - sandbox.uid_range_start) + 1;
        if n_uids < u64::from(self.queue.concurrency) {
            return Err(ConfigError::new(
                "sandbox.uid_range_end",
                format!(
                    "the range holds {n_uids} UIDs, fewer than queue.concurrency ({})",
                    self.queue.concurrency
                ),
            ));
        }
        if sandbox.classes.is_empty() {
            return Err(ConfigError::new(
                "sandbox.classes",
                "at least one execution class is required",
            ));
        }
        for (name, class) in &sandbox.classes {
            self.validate_class(name, class)?;
        }
        if !sandbox.classes.contains_key(&sandbox.default_class) {
            return Err(ConfigError::new(
                "sandbox.default_class",
                format!(
                    "no class named `{}` in sandbox.classes",
                    sandbox.default_class
                ),
            ));
        }
        self.gateway
            .validate()
            .map_err(|error| ConfigError::new(error.key, error.message))?;
        Ok(())
    }

    fn validate_class(&self, name: &str, class: &ClassConfig) -> Result<(), ConfigError> {
        let prefix = format!("sandbox.classes.{name}");
        if !is_valid_class_name(name) {
            return Err(ConfigError::new(
                prefix,
                "class names are 1-32 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit",
            ));
        }
        if class.image.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{prefix}.image"),
                "must not be empty",
            ));
        }
        check_range(
            &format!("{prefix}.memory_mib"),
            class.memory_mib,
            16,
            1 << 20,
        )?;
        check_range(
            &format!("{prefix}.cpus_milli"),
            u64::from(class.cpus_milli),
            10,
            1024 * 1000,
        )?;
        // Measured: runsc's pids limit counts host threads and its Sentry panics below ~512.
        let min_pids = match class.runtime {
            RuntimeKind::Runc => 16,
            RuntimeKind::Runsc => 512,
        };
        check_range(
            &format!("{prefix}.pids"),
            u64::from(class.pids),
            min_pids,
            1 << 20,
        )?;
        check_range(&format!("{prefix}.work_mib"), class.work_mib, 1, 1 << 20)?;
        check_range(&format!("{prefix}.tmp_mib"), class.tmp_mib, 1, 1 << 20)?;
        check_range(&format!("{prefix}.shm_mib"), class.shm_mib, 1, 1 << 20)?;
        check_range(&format!("{prefix}.nofile"), class.nofile, 64, 1 << 20)?;
        check_range(&format!("{prefix}.fsize_mib"), class.fsize_mib, 1, 1 << 20)?;
        check_range(
            &format!("{prefix}.output_cap_bytes"),
            class.output_cap_bytes,
            1024,
            1 << 40,
        )?;
        check_range(
            &format!("{prefix}.wall_timeout_secs"),
            class.wall_timeout_secs,
            1,
            self.limits.max_execution_deadline_secs,
        )?;
        Ok(())
    }
}

/// Every provider's API key can be loaded from its source. The key itself is
/// dropped at once (the gateway loads it again when it starts); an error
/// names the key's source and its configuration key, never the key.
fn check_api_keys(
    gateway: &GatewayConfig,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (idx, provider) in gateway.providers.iter().enumerate() {
        if let Err(error) = load_api_key(provider, env) {
            let field = match &error {
                LoadKeyError::Missing { origin, .. }
                | LoadKeyError::Unreadable { origin, .. }
                | LoadKeyError::Empty { origin, .. }
                | LoadKeyError::TooLarge { origin, .. }
                | LoadKeyError::Invalid { origin, .. } => match origin {
                    KeySource::Env(_) => "api_key_env",
                    KeySource::File(_) => "api_key_file",
                },
            };
            return Err(ConfigError::new(
                format!("gateway.providers[{idx}].{field}"),
                error.to_string(),
            ));
        }
    }
    Ok(())
}

fn is_valid_class_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 32
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        let message = if max == u64::MAX {
            format!("{value} is below the minimum {min}")
        } else {
            format!("{value} is outside {min}..={max}")
        };
        return Err(ConfigError::new(key, message));
    }
    Ok(())
}

/// A TOML syntax error has no key yet: name its line, as `<file>:LINE`.
fn toml_error_key(text: &str, err: &toml::de::Error) -> String {
    match err.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("<file>:{line}")
        }
        None => "<file>".to_string(),
    }
}

/// serde_path_to_error's path already ends at the offending (or unknown) field.
fn key_of_serde_error(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        path.to_string()
    }
}

fn apply_env_overrides(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, raw_value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let key = segments.join(".");
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                key,
                format!("environment variable {name} has an empty key segment"),
            ));
        }
        let value = parse_env_value(raw_value);
        let (last, parents) = segments
            .split_last()
            .expect("split of a non-empty string has one segment");
        let mut current = &mut *table;
        for segment in parents {
            let entry = current
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            current = match entry {
                toml::Value::Table(inner) => inner,
                _ => {
                    return Err(ConfigError::new(
                        key,
                        format!(
                            "environment variable {name} descends into `{segment}`, which is not a table"
                        ),
                    ));
                }
            };
        }
        current.insert(last.clone(), value);
    }
    Ok(())
}

/// `4` → integer, `true` → bool, `"x"` → string, anything else → the raw string.
fn parse_env_value(raw: &str) -> toml::Value {
    let document = format!("value = {raw}");
    match document.parse::<toml::Table>() {
        Ok(mut parsed) => parsed
            .remove("value")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

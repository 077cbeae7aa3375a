//! Resource accounting for one sandbox, read from its cgroup while it runs.
//!
//! The cgroup vanishes when the container exits, so the driver samples it
//! periodically and once more just before a deadline kill, and keeps the
//! maxima (`ResourceUsage::merge_later`). When the cgroup cannot be reached
//! (another cgroup driver or layout), `Sandbox::sample_usage` falls back to
//! Docker's one-shot stats.
//!
//! Why not cgroups-rs 0.5.1: evaluated with `cargo tree` on this machine, it
//! pulls 92 crates into the build, including zbus 5 (D-Bus, unconditional:
//! its only optional feature is `oci`, so default features cannot be trimmed)
//! and a second, older nix (0.25 next to our 0.31) and thiserror 1. Its
//! `memory_stat()` also returns zeros for a missing cgroup, which hides the
//! exact case we must detect. What Kiln needs is six small text files per
//! hierarchy; reading them directly is the boring option.
//!
//! Counters worth knowing on this kernel (6.18, cgroup v1 hybrid):
//! - `memory.failcnt` stayed 0 after an OOM kill, so OOM kills come from
//!   `memory.oom_control`'s `oom_kill` (v1) / `memory.events`'s `oom_kill` (v2);
//! - `pids.events`' `max` counts forks refused at the pids limit (fork bombs).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a usage sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    CgroupV1,
    CgroupV2,
    /// Docker's stats endpoint: no OOM or pids-limit counters.
    DockerStats,
}

/// Resource usage of one sandbox (all processes in its cgroup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// Peak memory charged to the cgroup (incl. tmpfs pages), bytes. On cgroup
    /// v2 kernels without `memory.peak` this is the current usage.
    pub memory_peak_bytes: u64,
    /// Total CPU time of the cgroup, nanoseconds.
    pub cpu_time_ns: u64,
    /// Tasks in the pids cgroup now. Under runsc these are host threads.
    pub pids_current: u64,
    /// Highest task count seen, when the kernel exposes `pids.peak`.
    pub pids_peak: Option<u64>,
    /// Processes killed by the memory cgroup's OOM killer.
    pub oom_kills: u64,
    /// Forks refused because the pids limit was reached.
    pub pids_limit_hits: u64,
    pub source: UsageSource,
}

impl ResourceUsage {
    /// Fold a later sample into this one: peaks and counters keep their
    /// maximum (a sample read while the cgroup was being torn down can be
    /// lower), `pids_current` and `source` come from the later sample.
    pub fn merge_later(&mut self, later: &ResourceUsage) {
        self.memory_peak_bytes = self.memory_peak_bytes.max(later.memory_peak_bytes);
        self.cpu_time_ns = self.cpu_time_ns.max(later.cpu_time_ns);
        self.pids_current = later.pids_current;
        self.pids_peak = match (self.pids_peak, later.pids_peak) {
            (Some(earlier), Some(newer)) => Some(earlier.max(newer)),
            (earlier, newer) => earlier.or(newer),
        };
        self.oom_kills = self.oom_kills.max(later.oom_kills);
        self.pids_limit_hits = self.pids_limit_hits.max(later.pids_limit_hits);
        self.source = later.source;
    }
}

/// Why a cgroup sample failed.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("container id {container_id:?} is not 64 lower-case hex characters")]
    InvalidContainerId { container_id: String },
    #[error("no cgroup for container {container_id} under {mount}")]
    CgroupMissing {
        container_id: String,
        mount: PathBuf,
    },
    #[error("read cgroup file {path}")]
    ReadCgroupFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse cgroup file {path}: unexpected content {content:?}")]
    ParseCgroupFile { path: PathBuf, content: String },
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One hierarchy per controller: `<mount>/<controller>/<group>`
    /// (this host: `/sys/fs/cgroup/memory/docker/<id>`, cgroupfs driver).
    V1 { mount: PathBuf },
    /// Unified hierarchy: `<mount>/<group>`.
    V2 { mount: PathBuf },
}

/// Group paths Docker uses, relative to a hierarchy root: the cgroupfs
/// driver, then the systemd driver.
fn group_candidates(container_id: &str) -> [String; 2] {
    [
        format!("docker/{container_id}"),
        format!("system.slice/docker-{container_id}.scope"),
    ]
}

impl CgroupLayout {
    /// Detect the layout mounted at `mount` (normally `/sys/fs/cgroup`).
    /// A v1 hybrid (v1 controllers plus an empty `unified` v2 mount) is V1.
    pub fn detect(mount: &Path) -> Option<CgroupLayout> {
        if mount.join("cgroup.controllers").is_file() {
            Some(CgroupLayout::V2 {
                mount: mount.to_path_buf(),
            })
        } else if mount.join("memory").is_dir() {
            Some(CgroupLayout::V1 {
                mount: mount.to_path_buf(),
            })
        } else {
            None
        }
    }

    /// Read the current usage of a container's cgroup. Fails with
    /// `CgroupMissing` when the container has no cgroup (exited, or another
    /// cgroup driver), so the caller can fall back to Docker stats.
    pub fn read_usage(&self, container_id: &str) -> Result<ResourceUsage, UsageError> {
        // The id comes from Docker, but it becomes part of a host path: accept
        // nothing but a full id.
        let is_full_id = container_id.len() == 64
            && container_id
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !is_full_id {
            return Err(UsageError::InvalidContainerId {
                container_id: container_id.to_string(),
            });
        }
        match self {
            CgroupLayout::V1 { mount } => read_v1(mount, container_id),
            CgroupLayout::V2 { mount } => read_v2(mount, container_id),
        }
    }
}

fn find_group(root: &Path, container_id: &str, mount: &Path) -> Result<PathBuf, UsageError> {
    group_candidates(container_id)
        .iter()
        .map(|relative| root.join(relative))
        .find(|path| path.is_dir())
        .ok_or_else(|| UsageError::CgroupMissing {
            container_id: container_id.to_string(),
            mount: mount.to_path_buf(),
        })
}

fn read_v1(mount: &Path, container_id: &str) -> Result<ResourceUsage, UsageError> {
    let memory = find_group(&mount.join("memory"), container_id, mount)?;
    let cpuacct = find_group(&mount.join("cpuacct"), container_id, mount)?;
    let pids = find_group(&mount.join("pids"), container_id, mount)?;
    Ok(ResourceUsage {
        memory_peak_bytes: read_u64(&memory.join("memory.max_usage_in_bytes"))?,
        cpu_time_ns: read_u64(&cpuacct.join("cpuacct.usage"))?,
        pids_current: read_u64(&pids.join("pids.current"))?,
        pids_peak: read_optional_u64(&pids.join("pids.peak"))?,
        oom_kills: read_keyed(&memory.join("memory.oom_control"), "oom_kill")?,
        pids_limit_hits: read_keyed(&pids.join("pids.events"), "max")?,
        source: UsageSource::CgroupV1,
    })
}

fn read_v2(mount: &Path, container_id: &str) -> Result<ResourceUsage, UsageError> {
    let group = find_group(mount, container_id, mount)?;
    // memory.peak exists from Linux 5.19; before that only the current value.
    let memory_peak_bytes = match read_optional_u64(&group.join("memory.peak"))? {
        Some(peak) => peak,
        None => read_u64(&group.join("memory.current"))?,
    };
    let cpu_usage_usec = read_keyed(&group.join("cpu.stat"), "usage_usec")?;
    Ok(ResourceUsage {
        memory_peak_bytes,
        cpu_time_ns: cpu_usage_usec.saturating_mul(1000),
        pids_current: read_u64(&group.join("pids.current"))?,
        pids_peak: read_optional_u64(&group.join("pids.peak"))?,
        oom_kills: read_keyed(&group.join("memory.events"), "oom_kill")?,
        pids_limit_hits: read_keyed(&group.join("pids.events"), "max")?,
        source: UsageSource::CgroupV2,
    })
}

fn read_text(path: &Path) -> Result<String, UsageError> {
    std::fs::read_to_string(path).map_err(|source| UsageError::ReadCgroupFile {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, UsageError> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| UsageError::ParseCgroupFile {
            path: path.to_path_buf(),
            content: text.chars().take(64).collect(),
        })
}

/// A file holding a single number.
fn read_u64(path: &Path) -> Result<u64, UsageError> {
    parse_u64(path, &read_text(path)?)
}

/// A single-number file that older kernels do not have.
fn read_optional_u64(path: &Path) -> Result<Option<u64>, UsageError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_u64(path, &text).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UsageError::ReadCgroupFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A flat-keyed file (`key value` per line). A missing key reads as 0: older
/// kernels lack `oom_kill` in `memory.oom_control`.
fn read_keyed(path: &Path, key: &str) -> Result<u64, UsageError> {
    let text = read_text(path)?;
    parse_keyed(path, &text, key)
}

fn parse_keyed(path: &Path, text: &str, key: &str) -> Result<u64, UsageError> {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some(key) {
            let value = fields.next().unwrap_or("");
            return parse_u64(path, value);
        }
    }
    Ok(0)
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;

//! What the agent hands to a trampoline child: one JSON document on the
//! child's stdin (never argv, so no E2BIG and nothing in `ps`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest spec a trampoline reads (script plus injected variables).
pub const MAX_SPEC_BYTES: usize = 128 * 1024 * 1024;

/// The uid/gid a child drops to before doing anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// Resource limits of a step process (soft = hard).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRlimits {
    pub nofile: Option<u64>,
    pub fsize_bytes: Option<u64>,
    pub nproc: Option<u64>,
}

/// One bash step, fully resolved by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// Absolute path of the shell to exec.
    pub shell: String,
    /// The script; the shell reads it from a memfd (or pipe), not argv.
    pub script: String,
    /// The complete environment of the shell.
    pub env: BTreeMap<String, String>,
    /// Working directory (checked by the agent to be under the work dir).
    pub cwd: PathBuf,
    /// Directory to create (as the step user) and fill with one file per var.
    pub vars_dir: PathBuf,
    pub vars: BTreeMap<String, String>,
    /// None: keep the agent's credentials (`--no-drop`, tests only).
    pub credentials: Option<Credentials>,
    pub rlimits: StepRlimits,
    /// Written to /proc/self/oom_score_adj so the kernel kills steps first.
    pub oom_score_adj: i32,
}

/// What to collect from `/work/out`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectSpec {
    pub out_dir: PathBuf,
    pub credentials: Option<Credentials>,
    pub max_artifacts: u32,
    pub max_artifact_bytes: u64,
    pub max_total_bytes: u64,
}

/// The first line a step trampoline writes on stderr, right before exec.
pub const EXEC_OK_MARKER: &str = "\u{0}kiln-exec-ok";
/// Prefix of the first stderr line when the trampoline failed before exec:
/// `<prefix><reason> <message>`.
pub const EXEC_ERROR_MARKER: &str = "\u{0}kiln-exec-error ";

/// One header line of the collector's stream (JSON, newline-terminated).
/// A `file` header is followed by exactly `size` raw bytes, then a
/// `file_end` line (`ok: false` if the file shrank while being read; the
/// missing bytes were sent as zeros and the artifact must be dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CollectRecord {
    File {
        name: String,
        size: u64,
    },
    FileEnd {
        ok: bool,
    },
    Rejected {
        name: String,
        reason: protocol::ArtifactRejectReason,
    },
    End,
}

/// Longest collector header line the agent reads.
pub const MAX_COLLECT_HEADER_BYTES: usize = 4096;

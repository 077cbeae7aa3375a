//! The reaper: removes what a crashed or restarted controller left behind.
//! Invariant: every container Kiln creates has a database row and a label;
//! anything labelled for this instance without a live execution is removed,
//! and so is every socket directory under the run dir without one.
//!
//! The service calls `Sandbox::reap` at start-up (before accepting work) and
//! periodically. The live set must include executions that are being created
//! right now (row written before the socket dir and container), otherwise a
//! starting execution could be reaped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::docker::{Sandbox, SandboxError};

/// What one reaper pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReapReport {
    /// Containers removed: (container id, execution label if any).
    pub containers_removed: Vec<ReapedContainer>,
    /// Socket directories removed.
    pub socket_dirs_removed: Vec<PathBuf>,
    /// Entries under the run dir left alone because Kiln did not create
    /// them (not a plain directory, or a name that is not an execution id).
    pub entries_skipped: Vec<PathBuf>,
    /// Removals that failed (logged; retried on the next pass).
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReapedContainer {
    pub container_id: String,
    pub execution_id: Option<String>,
}

/// Execution ids are controller-generated (UUIDs); a run-dir entry with any
/// other name was not made by Kiln.
fn is_execution_id_like(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Socket directories under `run_dir` with no live execution, and entries to
/// leave alone. A missing run dir has nothing to reap.
pub fn orphan_socket_dirs(
    run_dir: &Path,
    live_execution_ids: &HashSet<String>,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), SandboxError> {
    let entries = match std::fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), Vec::new()));
        }
        Err(source) => {
            return Err(SandboxError::ReadRunDir {
                path: run_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut orphans = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SandboxError::ReadRunDir {
            path: run_dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        // file_type() does not follow symlinks: a symlink is never treated
        // as a directory to delete.
        let is_plain_dir = entry
            .file_type()
            .map(|file_type| file_type.is_dir())
            .unwrap_or(false);
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|name| is_execution_id_like(name)) else {
            skipped.push(path);
            continue;
        };
        if !is_plain_dir {
            skipped.push(path);
            continue;
        }
        if !live_execution_ids.contains(name) {
            orphans.push(path);
        }
    }
    orphans.sort();
    skipped.sort();
    Ok((orphans, skipped))
}

impl Sandbox {
    /// Remove containers labelled `kiln.instance=<instance>` whose
    /// `kiln.execution` is not in `live_execution_ids` (or missing), then
    /// socket directories under `run_dir` with no live execution. Individual
    /// removal failures are collected in the report, not fatal; listing
    /// failures are.
    pub async fn reap(
        &self,
        live_execution_ids: &HashSet<String>,
        instance: &str,
        run_dir: &Path,
    ) -> Result<ReapReport, SandboxError> {
        let mut report = ReapReport::default();

        for container in self.list_labelled(instance).await? {
            let is_live = container
                .execution_id
                .as_ref()
                .is_some_and(|execution_id| live_execution_ids.contains(execution_id));
            if is_live {
                continue;
            }
            let execution_id = container.execution_id.clone().unwrap_or_default();
            match self
                .remove_container_id(&execution_id, &container.container_id)
                .await
            {
                Ok(()) => report.containers_removed.push(ReapedContainer {
                    container_id: container.container_id,
                    execution_id: container.execution_id,
                }),
                Err(error) => {
                    tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "reaper could not remove a container");
                    report.failures.push(error.to_string());
                }
            }
        }

        let (orphans, skipped) = orphan_socket_dirs(run_dir, live_execution_ids)?;
        report.entries_skipped = skipped;
        for path in orphans {
            // remove_dir_all does not follow symlinks inside the directory.
            match std::fs::remove_dir_all(&path) {
                Ok(()) => report.socket_dirs_removed.push(path),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    let error = SandboxError::RemoveSocketDir { path, source };
                    tracing::warn!(error = %error, "reaper could not remove a socket directory");
                    report.failures.push(error.to_string());
                }
            }
        }

        if !report.containers_removed.is_empty() || !report.socket_dirs_removed.is_empty() {
            tracing::info!(
                containers = report.containers_removed.len(),
                socket_dirs = report.socket_dirs_removed.len(),
                "reaper removed orphans"
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
#[path = "reaper_tests.rs"]
mod tests;

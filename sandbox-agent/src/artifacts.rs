//! Streams the files under `/work/out/` to the controller after the run.
//!
//! The agent cannot read `/work` itself (root without CAP_DAC_*, and `/work`
//! is 0700 for the step user), so a trampoline child running as the step user
//! (`--collect-artifacts`) walks the directory without following links and
//! writes a framed stream (see [`CollectRecord`]). That child runs the step
//! user's code path, so its stream is hostile input too: the agent checks
//! every name, size and count again and stops reading at the first breach.
//!
//! Each accepted file becomes [`ArtifactChunk`]s of at most
//! [`ARTIFACT_CHUNK_BYTES`]; the last one is held back until the collector
//! confirms the file was read whole, and carries the sha256. Refused files
//! become `artifact_rejected` events.

use protocol::{
    ARTIFACT_CHUNK_BYTES, AgentEventBody, ArtifactChunk, ArtifactRejectReason,
    MAX_ARTIFACT_NAME_BYTES, SandboxEvent, encode_artifact_data, validate_artifact_name,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;

use crate::link::Link;
use crate::reaper::Reaper;
use crate::step_process::{signal_group, spawn_trampoline, write_and_close};
use crate::step_spec::{CollectRecord, CollectSpec, MAX_COLLECT_HEADER_BYTES};

/// Totals of one collection, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CollectSummary {
    pub n_sent: u32,
    pub n_rejected: u32,
    pub bytes_sent: u64,
    /// Set when the collector broke its contract and reading stopped.
    pub aborted: Option<String>,
}

/// Why reading the collector's stream stopped early.
#[derive(Debug, thiserror::Error)]
enum CollectError {
    #[error("collector stream ended early")]
    Truncated,
    #[error("collector sent an invalid record: {0}")]
    BadRecord(String),
    #[error("collector broke a limit: {0}")]
    Limit(String),
    #[error("the link is closed")]
    LinkClosed,
}

/// Names in events are bounded like artifact names.
fn bounded_name(name: &str) -> String {
    if name.len() <= MAX_ARTIFACT_NAME_BYTES {
        return name.to_string();
    }
    let mut end = MAX_ARTIFACT_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

async fn reject(
    link: &Link,
    summary: &mut CollectSummary,
    name: &str,
    reason: ArtifactRejectReason,
) -> Result<(), CollectError> {
    summary.n_rejected += 1;
    let event = SandboxEvent::ArtifactRejected {
        name: bounded_name(name),
        reason,
    };
    link.send_event(AgentEventBody::Sandbox(event))
        .await
        .map(drop)
        .map_err(|_| CollectError::LinkClosed)
}

/// Runs the collector and streams what it finds.
pub async fn send_artifacts(
    reaper: &Reaper,
    self_exe: &std::path::PathBuf,
    link: &Link,
    spec: CollectSpec,
) -> CollectSummary {
    let mut summary = CollectSummary::default();
    let spawned = spawn_trampoline(reaper, self_exe, "--collect-artifacts");
    let (pid, pipes, exit_receiver) = match spawned {
        Ok(spawned) => spawned,
        Err(error) => {
            summary.aborted = Some(error.to_string());
            return summary;
        }
    };
    let spec_json = serde_json::to_vec(&spec).expect("a CollectSpec always serializes");
    tokio::spawn(write_and_close(pipes.stdin, spec_json));
    tokio::spawn(discard(pipes.stderr));
    let mut reader = BufReader::with_capacity(64 * 1024, pipes.stdout);
    if let Err(error) = read_stream(&mut reader, link, &spec, &mut summary).await {
        summary.aborted = Some(error.to_string());
    }
    drop(reader);
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = exit_receiver.await;
    summary
}

async fn discard(mut stderr: pipe::Receiver) {
    let mut buffer = vec![0u8; 4096];
    while let Ok(n_read) = stderr.read(&mut buffer).await {
        if n_read == 0 {
            break;
        }
    }
}

async fn read_header(
    reader: &mut BufReader<pipe::Receiver>,
) -> Result<CollectRecord, CollectError> {
    let mut line = Vec::new();
    let mut limited = (&mut *reader).take(MAX_COLLECT_HEADER_BYTES as u64 + 1);
    let n_read = limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(|_| CollectError::Truncated)?;
    if n_read == 0 || line.last() != Some(&b'\n') {
        if line.len() > MAX_COLLECT_HEADER_BYTES {
            return Err(CollectError::BadRecord("header too long".to_string()));
        }
        return Err(CollectError::Truncated);
    }
    serde_json::from_slice(&line)
        .map_err(|error| CollectError::BadRecord(error.to_string().chars().take(200).collect()))
}

async fn read_stream(
    reader: &mut BufReader<pipe::Receiver>,
    link: &Link,
    spec: &CollectSpec,
    summary: &mut CollectSummary,
) -> Result<(), CollectError> {
    let mut total_bytes = 0u64;
    loop {
        match read_header(reader).await? {
            CollectRecord::End => return Ok(()),
            CollectRecord::FileEnd { .. } => {
                return Err(CollectError::BadRecord(
                    "file_end outside a file".to_string(),
                ));
            }
            CollectRecord::Rejected { name, reason } => {
                reject(link, summary, &name, reason).await?
            }
            CollectRecord::File { name, size } => {
                if validate_artifact_name(&name).is_err() {
                    return Err(CollectError::Limit(format!(
                        "invalid name {:?}",
                        bounded_name(&name)
                    )));
                }
                if summary.n_sent >= spec.max_artifacts
                    || size > spec.max_artifact_bytes
                    || total_bytes.saturating_add(size) > spec.max_total_bytes
                {
                    return Err(CollectError::Limit(format!(
                        "{} over the caps",
                        bounded_name(&name)
                    )));
                }
                total_bytes += size;
                match send_file(reader, link, &name, size).await {
                    Ok(true) => {
                        summary.n_sent += 1;
                        summary.bytes_sent += size;
                    }
                    Ok(false) => {
                        reject(link, summary, &name, ArtifactRejectReason::ReadFailed).await?
                    }
                    Err(error) => {
                        let _ =
                            reject(link, summary, &name, ArtifactRejectReason::ReadFailed).await;
                        return Err(error);
                    }
                }
            }
        }
    }
}

/// Streams one file's bytes as chunks; returns whether it was complete.
async fn send_file(
    reader: &mut BufReader<pipe::Receiver>,
    link: &Link,
    name: &str,
    size: u64,
) -> Result<bool, CollectError> {
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    let mut buffer = vec![0u8; ARTIFACT_CHUNK_BYTES];
    loop {
        let n_want = (size - offset).min(ARTIFACT_CHUNK_BYTES as u64) as usize;
        reader
            .read_exact(&mut buffer[..n_want])
            .await
            .map_err(|_| CollectError::Truncated)?;
        hasher.update(&buffer[..n_want]);
        let is_last = offset + n_want as u64 == size;
        let mut chunk = ArtifactChunk {
            seq: 0,
            name: name.to_string(),
            offset,
            data_b64: encode_artifact_data(&buffer[..n_want]),
            last: false,
            sha256: None,
        };
        if !is_last {
            link.send_artifact_chunk(chunk)
                .await
                .map_err(|_| CollectError::LinkClosed)?;
            offset += n_want as u64;
            continue;
        }
        // The last chunk waits for the collector's word that the file was whole.
        let CollectRecord::FileEnd { ok } = read_header(reader).await? else {
            return Err(CollectError::BadRecord("expected file_end".to_string()));
        };
        if !ok {
            return Ok(false);
        }
        chunk.last = true;
        chunk.sha256 = Some(format!("{:x}", hasher.finalize()));
        link.send_artifact_chunk(chunk)
            .await
            .map_err(|_| CollectError::LinkClosed)?;
        return Ok(true);
    }
}

#[cfg(test)]
#[path = "artifacts_tests.rs"]
mod tests;

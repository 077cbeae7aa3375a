//! The container lifecycle over bollard: create, start, wait (with a hard wall
//! deadline enforced from outside), inspect, kill, remove, list.
//!
//! Rules this module keeps:
//! - Kill means SIGKILL, never `stop` with a grace period: a PID 1 that
//!   ignores SIGTERM made `docker stop -t 3` wait the full 3 s (measured).
//! - OOM is read from `State.OOMKilled`, never inferred from the exit code:
//!   under runc an OOM-killed step leaves the container exiting 0 with
//!   `OOMKilled=true` (measured).
//! - Nothing is ever copied out of a container (`docker cp` of a symlink
//!   artifact read the host's /etc/shadow, measured) and nothing is exec'd in.
//! - Error variants name the operation and execution; their messages carry no
//!   Docker detail, which stays in the `source` chain for logs only.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
    WaitContainerOptions,
};
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::profile::{ContainerProfile, LABEL_EXECUTION, LABEL_INSTANCE};
use super::usage::{CgroupLayout, ResourceUsage, UsageSource};

/// How often `wait_with_deadline` samples the cgroup while the container
/// runs. The cgroup disappears on exit, so the last sample is at most this old
/// (plus the final sample taken right before a deadline or cancel kill).
pub const USAGE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// How long `wait_with_deadline` waits for Docker to report the exit after a
/// SIGKILL before giving up with `StillRunningAfterKill` (then the caller
/// force-removes the container).
pub const KILL_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where cgroup hierarchies are mounted on Linux hosts.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// A failed sandbox operation. Display strings name the operation and the
/// execution only; the Docker error is the `source`, for logs, and the API
/// layer maps every variant to a 500 without showing it.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("connect to the docker daemon")]
    ConnectDocker {
        #[source]
        source: DockerError,
    },
    #[error("create container for execution {execution_id}")]
    CreateContainer {
        execution_id: String,
        #[source]
        source: DockerError,
    },
    #[error("start container for execution {execution_id}")]
    StartContainer {
        execution_id: String,
        #[source]
        source: DockerError,
    },
    #[error("wait for container of execution {execution_id}")]
    WaitContainer {
        execution_id: String,
        #[source]
        source: DockerError,
    },
    #[error("wait for container of execution {execution_id}: stream ended without a status")]
    WaitEndedEarly { execution_id: String },
    #[error("inspect container of execution {execution_id}")]
    InspectContainer {
        execution_id: String,
        #[source]
        source: DockerError,
    },
    #[error("inspect container of execution {execution_id}: no state reported")]
    MissingState { execution_id: String },
    #[error("kill container of execution {execution_id}")]
    KillContainer {
        execution_id: String,
        #[source]
        source: DockerError,
    },
    #[error("container of execution {execution_id} still running after kill")]
    StillRunningAfterKill { execution_id: String },
    #[error("remove container of execution {execution_id}")]
    RemoveContainer {
        execution_id: String,
        #[source]
        source: DockerError,
    },
    #[error("sample resource usage of execution {execution_id}")]
    SampleUsage {
        execution_id: String,
        #[source]
        source: DockerError,
    },
    #[error("sample resource usage of execution {execution_id}: no stats reported")]
    MissingStats { execution_id: String },
    #[error("list containers of instance {instance}")]
    ListContainers {
        instance: String,
        #[source]
        source: DockerError,
    },
    #[error("read run directory {path}")]
    ReadRunDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remove socket directory {path}")]
    RemoveSocketDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One created container: the execution it belongs to and Docker's full id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerHandle {
    pub execution_id: String,
    pub container_id: String,
}

/// Why the controller killed a container from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// The hard wall deadline passed.
    Deadline,
    /// The caller's kill token fired (cancel escalation, shutdown, lost agent).
    Requested,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitReport {
    /// `State.ExitCode`: 137 after SIGKILL.
    pub exit_code: i64,
    /// `State.OOMKilled`: true whenever the memory cgroup's OOM killer fired,
    /// even if the container exited 0 (runc kills only the step).
    pub oom_killed: bool,
    /// `State.Error` from Docker, for logs only; never shown to users.
    pub error: Option<String>,
    /// Set when the controller killed the container.
    pub killed_by: Option<KillReason>,
    /// The last cgroup sample before exit, merged over the run.
    pub usage: Option<ResourceUsage>,
}

/// A container carrying Kiln's labels, as listed by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelledContainer {
    pub container_id: String,
    /// The `kiln.execution` label; `None` if someone stripped it.
    pub execution_id: Option<String>,
    /// Docker's state string (`created`, `running`, `exited`, ...).
    pub state: Option<String>,
}

/// The Docker driver. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sandbox {
    docker: Docker,
    cgroup: Option<CgroupLayout>,
}

/// Docker answers 404 for a container that no longer exists.
fn is_not_found(error: &DockerError) -> bool {
    matches!(
        error,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Docker answers 409 when killing a container that is not running.
fn is_conflict(error: &DockerError) -> bool {
    matches!(
        error,
        DockerError::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

impl Sandbox {
    /// Connect with the local defaults (`DOCKER_HOST` or the Unix socket),
    /// negotiate the API version (1.41 on Docker 20.10), and detect the
    /// cgroup layout for accounting.
    pub async fn connect() -> Result<Sandbox, SandboxError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|source| SandboxError::ConnectDocker { source })?;
        // bollard 0.21.1 sends unversioned paths, so the daemon answers at its
        // own version anyway; negotiate in case that ever changes.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| SandboxError::ConnectDocker { source })?;
        Ok(Sandbox {
            docker,
            cgroup: CgroupLayout::detect(Path::new(CGROUP_MOUNT)),
        })
    }

    /// The bollard client, for the image builder in this module
    /// (`image::ensure_image(sandbox.docker(), ..)`). Callers outside
    /// `sandbox` only pass it through; they never name bollard types.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The detected cgroup layout, if any.
    pub fn cgroup_layout(&self) -> Option<&CgroupLayout> {
        self.cgroup.as_ref()
    }

    /// Create the container described by `profile` (not started).
    pub async fn create(
        &self,
        profile: &ContainerProfile,
    ) -> Result<ContainerHandle, SandboxError> {
        let execution_id = profile
            .body
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_EXECUTION))
            .cloned()
            .unwrap_or_default();
        let options = CreateContainerOptionsBuilder::default()
            .name(&profile.name)
            .build();
        let response = self
            .docker
            .create_container(Some(options), profile.body.clone())
            .await
            .map_err(|source| SandboxError::CreateContainer {
                execution_id: execution_id.clone(),
                source,
            })?;
        Ok(ContainerHandle {
            execution_id,
            container_id: response.id,
        })
    }

    pub async fn start(&self, handle: &ContainerHandle) -> Result<(), SandboxError> {
        self.docker
            .start_container(&handle.container_id, None)
            .await
            .map_err(|source| SandboxError::StartContainer {
                execution_id: handle.execution_id.clone(),
                source,
            })
    }

    /// Wait until the container is not running and return its exit code.
    pub async fn wait(&self, handle: &ContainerHandle) -> Result<i64, SandboxError> {
        let mut stream = self
            .docker
            .wait_container(&handle.container_id, None::<WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard turns a non-zero exit status into this error variant.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(source)) => Err(SandboxError::WaitContainer {
                execution_id: handle.execution_id.clone(),
                source,
            }),
            None => Err(SandboxError::WaitEndedEarly {
                execution_id: handle.execution_id.clone(),
            }),
        }
    }

    /// Exit code, `OOMKilled` and Docker's error string of a stopped
    /// container. `killed_by` and `usage` are left empty (see
    /// `wait_with_deadline`).
    pub async fn inspect_outcome(
        &self,
        handle: &ContainerHandle,
    ) -> Result<ExitReport, SandboxError> {
        let response = self
            .docker
            .inspect_container(&handle.container_id, None::<InspectContainerOptions>)
            .await
            .map_err(|source| SandboxError::InspectContainer {
                execution_id: handle.execution_id.clone(),
                source,
            })?;
        let state = response.state.ok_or_else(|| SandboxError::MissingState {
            execution_id: handle.execution_id.clone(),
        })?;
        Ok(ExitReport {
            exit_code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.filter(|error| !error.is_empty()),
            killed_by: None,
            usage: None,
        })
    }

    /// SIGKILL the container, no stop grace. Killing a container that has
    /// already stopped is not an error.
    pub async fn kill(&self, handle: &ContainerHandle) -> Result<(), SandboxError> {
        let options = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        match self
            .docker
            .kill_container(&handle.container_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if is_conflict(&error) => Ok(()),
            Err(source) => Err(SandboxError::KillContainer {
                execution_id: handle.execution_id.clone(),
                source,
            }),
        }
    }

    /// Remove the container (force, with its anonymous volumes). Removing a
    /// container that is already gone is not an error.
    pub async fn remove(&self, handle: &ContainerHandle) -> Result<(), SandboxError> {
        self.remove_container_id(&handle.execution_id, &handle.container_id)
            .await
    }

    pub(super) async fn remove_container_id(
        &self,
        execution_id: &str,
        container_id: &str,
    ) -> Result<(), SandboxError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self
            .docker
            .remove_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(source) => Err(SandboxError::RemoveContainer {
                execution_id: execution_id.to_string(),
                source,
            }),
        }
    }

    /// Whether the container is running now (false if it is gone).
    pub async fn is_running(&self, handle: &ContainerHandle) -> Result<bool, SandboxError> {
        match self
            .docker
            .inspect_container(&handle.container_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(response) => Ok(response
                .state
                .and_then(|state| state.running)
                .unwrap_or(false)),
            Err(error) if is_not_found(&error) => Ok(false),
            Err(source) => Err(SandboxError::InspectContainer {
                execution_id: handle.execution_id.clone(),
                source,
            }),
        }
    }

    /// Every container (any state) labelled `kiln.instance=<instance>`.
    pub async fn list_labelled(
        &self,
        instance: &str,
    ) -> Result<Vec<LabelledContainer>, SandboxError> {
        let label_filter = format!("{LABEL_INSTANCE}={instance}");
        let filters = HashMap::from([("label", vec![label_filter.as_str()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| SandboxError::ListContainers {
                instance: instance.to_string(),
                source,
            })?;
        Ok(summaries
            .into_iter()
            .filter_map(|summary| {
                let container_id = summary.id?;
                Some(LabelledContainer {
                    container_id,
                    execution_id: summary
                        .labels
                        .and_then(|mut labels| labels.remove(LABEL_EXECUTION)),
                    state: summary.state.map(|state| state.to_string()),
                })
            })
            .collect())
    }

    /// Current resource usage: from the cgroup when it can be reached,
    /// otherwise from Docker's one-shot stats (no OOM or pids-limit counters
    /// there; the verdict still has `State.OOMKilled`).
    pub async fn sample_usage(
        &self,
        handle: &ContainerHandle,
    ) -> Result<ResourceUsage, SandboxError> {
        if let Some(layout) = &self.cgroup {
            match layout.read_usage(&handle.container_id) {
                Ok(usage) => return Ok(usage),
                Err(error) => {
                    tracing::debug!(
                        execution_id = %handle.execution_id,
                        error = %error,
                        "cgroup unreachable, falling back to docker stats"
                    );
                }
            }
        }
        self.docker_stats_usage(handle).await
    }

    async fn docker_stats_usage(
        &self,
        handle: &ContainerHandle,
    ) -> Result<ResourceUsage, SandboxError> {
        let options = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stream = self.docker.stats(&handle.container_id, Some(options));
        let stats = match stream.next().await {
            Some(Ok(stats)) => stats,
            Some(Err(source)) => {
                return Err(SandboxError::SampleUsage {
                    execution_id: handle.execution_id.clone(),
                    source,
                });
            }
            None => {
                return Err(SandboxError::MissingStats {
                    execution_id: handle.execution_id.clone(),
                });
            }
        };
        let memory = stats.memory_stats.unwrap_or_default();
        Ok(ResourceUsage {
            // max_usage exists on cgroup v1 only.
            memory_peak_bytes: memory.max_usage.or(memory.usage).unwrap_or(0),
            cpu_time_ns: stats
                .cpu_stats
                .and_then(|cpu| cpu.cpu_usage)
                .and_then(|usage| usage.total_usage)
                .unwrap_or(0),
            pids_current: stats.pids_stats.and_then(|pids| pids.current).unwrap_or(0),
            pids_peak: None,
            oom_kills: 0,
            pids_limit_hits: 0,
            source: UsageSource::DockerStats,
        })
    }

    /// Wait for the container to stop, enforcing a hard wall `deadline` from
    /// outside: when it passes, or when `kill` is cancelled, the container is
    /// SIGKILLed whatever the agent says. Usage is sampled every
    /// `USAGE_SAMPLE_INTERVAL` and once more right before a kill, because the
    /// cgroup vanishes on exit. Returns the inspected outcome with
    /// `killed_by` and the merged `usage`. Does not remove the container.
    /// `deadline` counts from this call. On any error the container may
    /// still exist: the caller removes it (force) and the reaper is the
    /// backstop.
    pub async fn wait_with_deadline(
        &self,
        handle: &ContainerHandle,
        deadline: Duration,
        kill: &CancellationToken,
    ) -> Result<ExitReport, SandboxError> {
        let wait = self.wait(handle);
        tokio::pin!(wait);
        let deadline_sleep = tokio::time::sleep(deadline);
        tokio::pin!(deadline_sleep);
        let mut sampler = tokio::time::interval(USAGE_SAMPLE_INTERVAL);
        sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        // Armed after a kill, so a daemon that never reports the exit cannot
        // hang the caller.
        let stuck_after_kill = tokio::time::sleep(Duration::MAX);
        tokio::pin!(stuck_after_kill);

        let mut usage: Option<ResourceUsage> = None;
        let mut killed_by: Option<KillReason> = None;
        loop {
            let reason = tokio::select! {
                biased;
                result = &mut wait => {
                    result?;
                    break;
                }
                () = &mut deadline_sleep, if killed_by.is_none() => KillReason::Deadline,
                () = kill.cancelled(), if killed_by.is_none() => KillReason::Requested,
                () = &mut stuck_after_kill, if killed_by.is_some() => {
                    return Err(SandboxError::StillRunningAfterKill {
                        execution_id: handle.execution_id.clone(),
                    });
                }
                _ = sampler.tick() => {
                    self.sample_into(handle, &mut usage).await;
                    continue;
                }
            };
            self.sample_into(handle, &mut usage).await;
            tracing::info!(execution_id = %handle.execution_id, ?reason, "killing sandbox");
            self.kill(handle).await?;
            killed_by = Some(reason);
            stuck_after_kill
                .as_mut()
                .reset(tokio::time::Instant::now() + KILL_EXIT_TIMEOUT);
        }

        let mut report = self.inspect_outcome(handle).await?;
        report.killed_by = killed_by;
        report.usage = usage;
        Ok(report)
    }

    async fn sample_into(&self, handle: &ContainerHandle, usage: &mut Option<ResourceUsage>) {
        match self.sample_usage(handle).await {
            Ok(sample) => match usage {
                Some(merged) => merged.merge_later(&sample),
                None => *usage = Some(sample),
            },
            Err(error) => {
                tracing::debug!(execution_id = %handle.execution_id, error = %error, "usage sample failed");
            }
        }
    }
}

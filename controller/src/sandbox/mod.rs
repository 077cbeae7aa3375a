//! Stage: launcher → **sandbox** → container. The only module that imports
//! bollard: it turns operator configuration into one hardened container per
//! execution, watches it, and removes it.
//!
//! - `profile`: pure `ContainerSpec` → hardened create body (golden-snapshotted);
//! - `docker`: the lifecycle over bollard, with the hard wall deadline;
//! - `usage`: resource accounting read from the container's cgroup;
//! - `reaper`: removes labelled containers and socket dirs with no live execution;
//! - `verdict`: pure mapping from what was observed to the final status.

pub mod docker;
pub mod image;
pub mod preflight;
pub mod profile;
pub mod reaper;
pub mod usage;
pub mod verdict;

pub use docker::{
    ContainerHandle, ExitReport, KillReason, LabelledContainer, Sandbox, SandboxError,
};
pub use profile::{ContainerProfile, ContainerSpec, Runtime, SandboxLimits, profile};
pub use reaper::{ReapReport, ReapedContainer};
pub use usage::{CgroupLayout, ResourceUsage, UsageError, UsageSource};
pub use verdict::{SandboxVerdict, VerdictInputs, verdict};

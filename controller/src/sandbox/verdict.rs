//! The final status of an execution, decided from what the controller saw
//! from outside the container (exit report, cgroup counters, deadline,
//! cancel) and what the agent said (its final `Done`, if any). Pure.
//!
//! `SandboxVerdict` mirrors `protocol::FinalStatus` variant for variant (same
//! snake_case names); it is local so this module does not depend on the wire
//! crate. The service converts one into the other.
//!
//! Precedence, first match wins:
//! 1. the agent link broke the protocol → `protocol_error` (nothing it said
//!    is trusted, including its `Done`);
//! 2. a cancel was requested → `cancelled`;
//! 3. the OOM killer fired (`State.OOMKilled` or the cgroup's `oom_kill`
//!    counter) → `oom`, even if the container exited 0 and even if the agent
//!    reported success: under runc only the step dies (measured);
//! 4. the agent sent `Done` → its status, but only a status the agent can
//!    observe (succeeded, failed, timed_out, cancelled, denied); claiming a
//!    controller-only status is a protocol error;
//! 5. the controller killed at the wall deadline → `timed_out`;
//! 6. the controller killed for another reason (lost agent, shutdown) →
//!    `agent_lost`;
//! 7. runsc exited 2 (Sentry panic, e.g. at a low pids limit) or 137 with no
//!    final event → `sandbox_crashed`;
//! 8. otherwise the agent died or exited without `Done` → `agent_lost`.

use serde::{Deserialize, Serialize};

use super::docker::{ExitReport, KillReason};
use super::profile::Runtime;

/// How an execution ended (mirrors `protocol::FinalStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxVerdict {
    Succeeded,
    Failed,
    TimedOut,
    Oom,
    Cancelled,
    AgentLost,
    SandboxCrashed,
    ProtocolError,
    Denied,
}

/// Everything the verdict depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictInputs<'a> {
    pub runtime: Runtime,
    /// The container's end, from `Sandbox::wait_with_deadline`.
    pub exit: &'a ExitReport,
    /// The status in the agent's final `Done`, if one arrived.
    pub agent_done: Option<SandboxVerdict>,
    /// The agent link closed for a protocol violation (bad frame, bad UTF-8,
    /// oversized message, forged identity).
    pub protocol_error: bool,
    /// A user or the service asked to cancel this execution.
    pub cancel_requested: bool,
}

/// Statuses an agent can know from inside; anything else in a `Done` is a
/// protocol violation.
fn is_agent_observable(status: SandboxVerdict) -> bool {
    matches!(
        status,
        SandboxVerdict::Succeeded
            | SandboxVerdict::Failed
            | SandboxVerdict::TimedOut
            | SandboxVerdict::Cancelled
            | SandboxVerdict::Denied
    )
}

/// Decide the final status (see the module doc for the precedence).
pub fn verdict(inputs: &VerdictInputs<'_>) -> SandboxVerdict {
    let exit = inputs.exit;
    let cgroup_oom_kills = exit.usage.as_ref().map_or(0, |usage| usage.oom_kills);
    if inputs.protocol_error {
        return SandboxVerdict::ProtocolError;
    }
    if inputs.cancel_requested {
        return SandboxVerdict::Cancelled;
    }
    if exit.oom_killed || cgroup_oom_kills > 0 {
        return SandboxVerdict::Oom;
    }
    if let Some(status) = inputs.agent_done {
        return if is_agent_observable(status) {
            status
        } else {
            SandboxVerdict::ProtocolError
        };
    }
    match exit.killed_by {
        Some(KillReason::Deadline) => return SandboxVerdict::TimedOut,
        Some(KillReason::Requested) => return SandboxVerdict::AgentLost,
        None => {}
    }
    if inputs.runtime == Runtime::Runsc && matches!(exit.exit_code, 2 | 137) {
        return SandboxVerdict::SandboxCrashed;
    }
    SandboxVerdict::AgentLost
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;

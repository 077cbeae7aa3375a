//! The status mapping table, one line per case.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::sandbox::usage::{ResourceUsage, UsageSource};

use KillReason::{Deadline, Requested};
use Runtime::{Runc, Runsc};
use SandboxVerdict::*;

struct Case {
    name: &'static str,
    runtime: Runtime,
    exit_code: i64,
    oom_killed: bool,
    cgroup_oom_kills: u64,
    killed_by: Option<KillReason>,
    agent_done: Option<SandboxVerdict>,
    protocol_error: bool,
    cancel_requested: bool,
    expected: SandboxVerdict,
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    // name                                   runtime exit  oom    cg  killed_by        done                  proto  cancel expected
    Case { name: "agent reports success",      runtime: Runc,  exit_code: 0,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: Some(Succeeded),      protocol_error: false, cancel_requested: false, expected: Succeeded },
    Case { name: "agent reports failure",      runtime: Runc,  exit_code: 0,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: Some(Failed),         protocol_error: false, cancel_requested: false, expected: Failed },
    Case { name: "gate denied",                runtime: Runc,  exit_code: 0,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: Some(Denied),         protocol_error: false, cancel_requested: false, expected: Denied },
    Case { name: "engine timeout via agent",   runtime: Runc,  exit_code: 0,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: Some(TimedOut),       protocol_error: false, cancel_requested: false, expected: TimedOut },
    Case { name: "runc step oom, exit 0",      runtime: Runc,  exit_code: 0,   oom_killed: true,  cgroup_oom_kills: 1, killed_by: None,           agent_done: Some(Failed),         protocol_error: false, cancel_requested: false, expected: Oom },
    Case { name: "oom beats reported success", runtime: Runc,  exit_code: 0,   oom_killed: true,  cgroup_oom_kills: 0, killed_by: None,           agent_done: Some(Succeeded),      protocol_error: false, cancel_requested: false, expected: Oom },
    Case { name: "cgroup counter alone is oom",runtime: Runc,  exit_code: 0,   oom_killed: false, cgroup_oom_kills: 3, killed_by: None,           agent_done: Some(Failed),         protocol_error: false, cancel_requested: false, expected: Oom },
    Case { name: "runc pid1 oom, 137",         runtime: Runc,  exit_code: 137, oom_killed: true,  cgroup_oom_kills: 1, killed_by: None,           agent_done: None,                 protocol_error: false, cancel_requested: false, expected: Oom },
    Case { name: "runsc whole-sandbox oom",    runtime: Runsc, exit_code: 137, oom_killed: true,  cgroup_oom_kills: 0, killed_by: None,           agent_done: None,                 protocol_error: false, cancel_requested: false, expected: Oom },
    Case { name: "deadline kill",              runtime: Runc,  exit_code: 137, oom_killed: false, cgroup_oom_kills: 0, killed_by: Some(Deadline), agent_done: None,                 protocol_error: false, cancel_requested: false, expected: TimedOut },
    Case { name: "deadline kill on runsc",     runtime: Runsc, exit_code: 137, oom_killed: false, cgroup_oom_kills: 0, killed_by: Some(Deadline), agent_done: None,                 protocol_error: false, cancel_requested: false, expected: TimedOut },
    Case { name: "done then lingering kill",   runtime: Runc,  exit_code: 137, oom_killed: false, cgroup_oom_kills: 0, killed_by: Some(Deadline), agent_done: Some(Succeeded),      protocol_error: false, cancel_requested: false, expected: Succeeded },
    Case { name: "cancel requested",           runtime: Runc,  exit_code: 137, oom_killed: false, cgroup_oom_kills: 0, killed_by: Some(Requested),agent_done: None,                 protocol_error: false, cancel_requested: true,  expected: Cancelled },
    Case { name: "cancel acked by agent",      runtime: Runc,  exit_code: 0,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: Some(Cancelled),      protocol_error: false, cancel_requested: true,  expected: Cancelled },
    Case { name: "cancel beats oom",           runtime: Runc,  exit_code: 0,   oom_killed: true,  cgroup_oom_kills: 1, killed_by: None,           agent_done: None,                 protocol_error: false, cancel_requested: true,  expected: Cancelled },
    Case { name: "kill without cancel",        runtime: Runc,  exit_code: 137, oom_killed: false, cgroup_oom_kills: 0, killed_by: Some(Requested),agent_done: None,                 protocol_error: false, cancel_requested: false, expected: AgentLost },
    Case { name: "agent killed, runc",         runtime: Runc,  exit_code: 137, oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: None,                 protocol_error: false, cancel_requested: false, expected: AgentLost },
    Case { name: "agent exits 0 without done", runtime: Runc,  exit_code: 0,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: None,                 protocol_error: false, cancel_requested: false, expected: AgentLost },
    Case { name: "runc exit 2 is agent lost",  runtime: Runc,  exit_code: 2,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: None,                 protocol_error: false, cancel_requested: false, expected: AgentLost },
    Case { name: "sentry panic",               runtime: Runsc, exit_code: 2,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: None,                 protocol_error: false, cancel_requested: false, expected: SandboxCrashed },
    Case { name: "runsc 137 without oom flag", runtime: Runsc, exit_code: 137, oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: None,                 protocol_error: false, cancel_requested: false, expected: SandboxCrashed },
    Case { name: "runsc kill -9 1 exit 1",     runtime: Runsc, exit_code: 1,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: None,                 protocol_error: false, cancel_requested: false, expected: AgentLost },
    Case { name: "protocol error wins",        runtime: Runc,  exit_code: 0,   oom_killed: true,  cgroup_oom_kills: 1, killed_by: None,           agent_done: Some(Succeeded),      protocol_error: true,  cancel_requested: true,  expected: ProtocolError },
    Case { name: "agent claims oom",           runtime: Runc,  exit_code: 0,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: Some(Oom),            protocol_error: false, cancel_requested: false, expected: ProtocolError },
    Case { name: "agent claims crash",         runtime: Runsc, exit_code: 0,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: Some(SandboxCrashed), protocol_error: false, cancel_requested: false, expected: ProtocolError },
    Case { name: "agent claims agent lost",    runtime: Runc,  exit_code: 0,   oom_killed: false, cgroup_oom_kills: 0, killed_by: None,           agent_done: Some(AgentLost),      protocol_error: false, cancel_requested: false, expected: ProtocolError },
];

#[test]
fn verdict_table() {
    for case in CASES {
        let exit = ExitReport {
            exit_code: case.exit_code,
            oom_killed: case.oom_killed,
            error: None,
            killed_by: case.killed_by,
            usage: Some(ResourceUsage {
                memory_peak_bytes: 1,
                cpu_time_ns: 1,
                pids_current: 0,
                pids_peak: None,
                oom_kills: case.cgroup_oom_kills,
                pids_limit_hits: 0,
                source: UsageSource::CgroupV1,
            }),
        };
        let inputs = VerdictInputs {
            runtime: case.runtime,
            exit: &exit,
            agent_done: case.agent_done,
            protocol_error: case.protocol_error,
            cancel_requested: case.cancel_requested,
        };
        assert_eq!(verdict(&inputs), case.expected, "case {:?}", case.name);
    }
}

#[test]
fn missing_usage_relies_on_the_oom_flag() {
    let exit = ExitReport {
        exit_code: 0,
        oom_killed: true,
        error: None,
        killed_by: None,
        usage: None,
    };
    let inputs = VerdictInputs {
        runtime: Runc,
        exit: &exit,
        agent_done: None,
        protocol_error: false,
        cancel_requested: false,
    };
    assert_eq!(verdict(&inputs), Oom);
}

#[test]
fn serde_names_match_final_status() {
    let names: Vec<String> = [
        Succeeded,
        Failed,
        TimedOut,
        Oom,
        Cancelled,
        AgentLost,
        SandboxCrashed,
        ProtocolError,
        Denied,
    ]
    .iter()
    .map(|verdict| serde_json::to_string(verdict).unwrap())
    .collect();
    assert_eq!(
        names,
        [
            "\"succeeded\"",
            "\"failed\"",
            "\"timed_out\"",
            "\"oom\"",
            "\"cancelled\"",
            "\"agent_lost\"",
            "\"sandbox_crashed\"",
            "\"protocol_error\"",
            "\"denied\"",
        ]
    );
}

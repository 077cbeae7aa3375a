//! The hardening profile: a pure function from the operator's per-execution
//! [`ContainerSpec`] to the exact Docker create body (Config + HostConfig +
//! name + labels). Nothing in a recipe reaches this function; only the
//! operator's configuration and controller-chosen values (execution id, step
//! uid, socket dir) do.
//!
//! Every security-relevant field is commented with *why*, citing the facts
//! measured on this machine (`shared/spec/security-catalogue.md`, section 4 and
//! `shared/spec/engineering-facts.md`). A golden snapshot
//! (`snapshots/profile_runc.json`, `snapshots/profile_runsc.json`) makes any
//! change to a security field a reviewable diff.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount,
    MountBindOptions, MountBindOptionsPropagationEnum, MountType, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum,
};
use serde::{Deserialize, Serialize};

/// Label carrying the execution id on every container Kiln creates.
pub const LABEL_EXECUTION: &str = "kiln.execution";
/// Label carrying the Kiln instance id, so several controllers can share a
/// daemon and each reaps only its own containers.
pub const LABEL_INSTANCE: &str = "kiln.instance";

/// The agent binary, PID 1 in every Kiln image (CONTRACTS section C).
pub const AGENT_PATH: &str = "/kiln/kiln-agent";
/// Where the per-execution socket directory appears inside the container.
pub const SOCKET_MOUNT_TARGET: &str = "/run/kiln";
/// The step working directory and `HOME`.
pub const WORK_DIR: &str = "/work";

/// `PATH` given to the agent; steps get theirs from the agent.
const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MIB: i64 = 1024 * 1024;

/// The lowest `PidsLimit` Kiln gives a runsc sandbox. Under runsc the pids
/// cgroup counts gVisor's own host threads, not guest processes. Measured
/// here (ptrace platform, 2022-12-19 build): an idle `sh` sandbox peaked at
/// 60 host tasks (the catalogue saw 43-49), and 10, 20 and 40 background
/// `sleep`s peaked at 170, 255 and 466, i.e. ~60 + ~10 per guest process. At
/// 64 or 128 the Sentry panics (exit 2) on ordinary pipelines (10 background
/// sleeps panicked at 128 and passed at 192). 512 leaves room for about 45
/// guest processes; the operator's config may go higher, never lower.
pub const RUNSC_MIN_PIDS_LIMIT: i64 = 512;

/// Which OCI runtime runs the sandbox. Chosen per execution class by the
/// operator, never by a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// runc: kernel namespaces + seccomp + cgroups. The default.
    Runc,
    /// gVisor's runsc, registered in daemon.json with
    /// `--network=none --host-uds=open --oci-seccomp` (without
    /// `--host-uds=open` the agent's `connect()` to the bind-mounted socket
    /// gets EPERM; without `--oci-seccomp` Kiln's seccomp profile is not
    /// applied inside the sandbox).
    Runsc,
}

impl Runtime {
    /// The runtime name as registered with dockerd.
    pub fn docker_name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Runsc => "runsc",
        }
    }
}

/// Per-execution resource limits, from the operator's execution class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxLimits {
    /// Memory limit; swap is disabled (memory + swap = memory).
    pub memory_mib: u64,
    /// CPU quota in thousandths of a CPU (1000 = one core).
    pub cpus_milli: u64,
    /// The pids cgroup limit. runc: processes. runsc: host threads of the
    /// sandbox (see [`host_pids_limit`]; never below 512).
    pub pids: u64,
    /// Size of the `/work` tmpfs.
    pub work_mib: u64,
    /// Size of the `/tmp` tmpfs.
    pub tmp_mib: u64,
    /// Size of `/dev/shm`.
    pub shm_mib: u64,
    /// `RLIMIT_NOFILE`, soft = hard.
    pub nofile: u64,
    /// `RLIMIT_FSIZE`, soft = hard.
    pub fsize_mib: u64,
    /// Hard wall-clock deadline, enforced from outside by the controller
    /// (see `Sandbox::wait_with_deadline`); not part of the container config.
    pub wall_timeout: Duration,
}

/// Everything the profile depends on. Built by the launcher from operator
/// configuration and controller-chosen values; no recipe field appears here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Controller-generated execution id (used in the container name, so it
    /// must match `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; UUIDs do).
    pub execution_id: String,
    /// Operator-chosen image (tag or id), e.g. from `image::ensure_image`.
    pub image: String,
    pub runtime: Runtime,
    pub limits: SandboxLimits,
    /// Per-execution UID for steps, from the reserved range 200000..=265535.
    /// Owns the `/work` tmpfs. Nothing runs as this uid with capabilities:
    /// the container user is 0 and the agent drops to this uid for steps,
    /// and `no-new-privileges` + CapAdd limited to SETUID/SETGID/KILL means
    /// an exec'd step keeps an empty capability set.
    pub step_uid: u32,
    /// Per-execution GID for steps (same reserved range).
    pub step_gid: u32,
    /// Host directory `<run_dir>/<execution_id>/` holding `agent.sock` and
    /// `token`; mounted read-only at `/run/kiln`.
    pub socket_dir: PathBuf,
    /// The Kiln instance id, stored in the `kiln.instance` label.
    pub instance_label: String,
    /// The text of the custom seccomp profile
    /// (`runtime-image/seccomp/kiln.json`), passed in so `profile` stays pure.
    pub seccomp_json: String,
}

/// The complete create request for one execution's container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerProfile {
    /// Container name, `kiln-<execution_id>`.
    pub name: String,
    /// The create body, including `HostConfig` and labels.
    pub body: ContainerCreateBody,
}

impl ContainerProfile {
    /// The profile as pretty JSON with every object's keys sorted, so the
    /// golden snapshot does not depend on `HashMap` iteration order.
    pub fn to_snapshot_json(&self) -> String {
        let value = serde_json::to_value(self).expect("profile types always serialise to json");
        let mut text = serde_json::to_string_pretty(&sort_keys(value))
            .expect("a json value always serialises");
        text.push('\n');
        text
    }
}

fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|left, right| left.0.cmp(&right.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(key, inner)| (key, sort_keys(inner)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

/// The container name for an execution.
pub fn container_name(execution_id: &str) -> String {
    format!("kiln-{execution_id}")
}

/// The value for Docker's `PidsLimit` (tasks in the container's pids
/// cgroup) for the operator's configured `pids`.
///
/// runc: the cgroup counts the container's own processes, so the configured
/// value is the limit (a fork bomb then gets EAGAIN: 62 children at limit 64,
/// measured).
///
/// runsc: the cgroup counts host threads of the Sentry, so the configured
/// value (operator config validates it as host tasks, >= 512) is raised to at
/// least [`RUNSC_MIN_PIDS_LIMIT`]. It is only a host-side backstop: a fork
/// flood under runsc ends in exit 2 (Sentry panic) or 137 (whole-sandbox
/// OOM), which the verdict maps to `sandbox_crashed` / `oom`.
pub fn host_pids_limit(runtime: Runtime, pids: u64) -> i64 {
    let pids = i64::try_from(pids).unwrap_or(i64::MAX);
    match runtime {
        Runtime::Runc => pids,
        Runtime::Runsc => pids.max(RUNSC_MIN_PIDS_LIMIT),
    }
}

/// Syscalls that Kiln's profile answers with `ENOSYS` (`errnoRet: 38`) so that
/// libc falls back to an older, filterable syscall, and that gVisor's Sentry
/// does not implement (it answers `ENOSYS` itself: measured with the probe).
const RUNSC_SENTRY_ENOSYS: &[&str] = &["clone3"];

/// `ENOSYS` on x86-64.
const ENOSYS: u64 = 38;

/// The seccomp profile text Docker gets for `runtime`.
///
/// runc: Kiln's profile verbatim.
///
/// runsc (registered with `--oci-seccomp`, so gVisor applies the profile to
/// every guest syscall before the Sentry sees it): gVisor's OCI seccomp
/// ignores `errnoRet` and answers EPERM for every `SCMP_ACT_ERRNO` rule
/// (runsc 0.0~20221219, `runsc/specutils/seccomp`; measured: a `keyctl` rule
/// with `errnoRet: 38` gives ENOSYS under runc and EPERM under runsc). The
/// clone3 rule exists only to make libc fall back to `clone()`; glibc falls
/// back on ENOSYS alone, so with EPERM every `pthread_create` failed (Python:
/// "can't start new thread", measured). Under runsc such rules therefore
/// allow the syscall instead, for the syscalls in [`RUNSC_SENTRY_ENOSYS`]
/// only: the Sentry does not implement them and answers ENOSYS itself, and
/// the host kernel is never reached either way. Every other rule is
/// unchanged. A profile that is not valid JSON is passed on verbatim (Docker
/// rejects it at create time).
pub fn seccomp_for_runtime(runtime: Runtime, seccomp_json: &str) -> String {
    if runtime == Runtime::Runc {
        return seccomp_json.to_string();
    }
    let Ok(mut profile) = serde_json::from_str::<serde_json::Value>(seccomp_json) else {
        return seccomp_json.to_string();
    };
    let mut n_rewritten = 0;
    if let Some(rules) = profile
        .get_mut("syscalls")
        .and_then(serde_json::Value::as_array_mut)
    {
        for rule in rules.iter_mut() {
            if !is_sentry_enosys_rule(rule) {
                continue;
            }
            if let Some(fields) = rule.as_object_mut() {
                fields.insert("action".to_string(), "SCMP_ACT_ALLOW".into());
                fields.remove("errnoRet");
                fields.insert(
                    "comment".to_string(),
                    "runsc: gVisor's OCI seccomp ignores errnoRet (EPERM would break \
                     libc's clone3 -> clone fallback); allowed, so the Sentry, which does \
                     not implement it, answers ENOSYS"
                        .into(),
                );
                n_rewritten += 1;
            }
        }
    }
    if n_rewritten == 0 {
        return seccomp_json.to_string();
    }
    serde_json::to_string(&profile).expect("a json value always serialises")
}

/// An argument-less `SCMP_ACT_ERRNO` rule with `errnoRet: 38` naming only
/// syscalls in [`RUNSC_SENTRY_ENOSYS`].
fn is_sentry_enosys_rule(rule: &serde_json::Value) -> bool {
    let names_are_sentry_enosys = rule
        .get("names")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|names| {
            !names.is_empty()
                && names.iter().all(|name| {
                    name.as_str()
                        .is_some_and(|name| RUNSC_SENTRY_ENOSYS.contains(&name))
                })
        });
    let has_no_args = rule
        .get("args")
        .is_none_or(|args| args.is_null() || args.as_array().is_some_and(Vec::is_empty));
    names_are_sentry_enosys
        && has_no_args
        && rule.get("action").and_then(serde_json::Value::as_str) == Some("SCMP_ACT_ERRNO")
        && rule.get("errnoRet").and_then(serde_json::Value::as_u64) == Some(ENOSYS)
}

fn mib_to_bytes(mib: u64) -> i64 {
    i64::try_from(mib).unwrap_or(i64::MAX).saturating_mul(MIB)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Build the hardened create body for one execution. Pure: same spec, same
/// profile, no I/O.
pub fn profile(spec: &ContainerSpec) -> ContainerProfile {
    let limits = &spec.limits;
    let memory_bytes = mib_to_bytes(limits.memory_mib);

    let labels = HashMap::from([
        (LABEL_EXECUTION.to_string(), spec.execution_id.clone()),
        (LABEL_INSTANCE.to_string(), spec.instance_label.clone()),
    ]);

    let tmpfs = HashMap::from([
        // /tmp: scratch space, never executable. Docker adds
        // noexec,nosuid,nodev by default; they are spelled out so the snapshot
        // shows them. Sized, because tmpfs pages are charged to the memory
        // cgroup and the size caps disk-like use (ENOSPC at exactly the size,
        // measured).
        (
            "/tmp".to_string(),
            format!("rw,noexec,nosuid,nodev,size={}m,mode=1777", limits.tmp_mib),
        ),
        // /work: the step's cwd and HOME. `exec` because recipes build and
        // run binaries there (Docker would add noexec otherwise). nosuid/nodev
        // so nothing written there gains privilege. mode 0700 owned by the
        // per-execution step uid: only this execution's steps can read it.
        // Measured: runc re-applies the mode of an existing mountpoint, and
        // Docker creates a missing WorkingDir as 0755 at create time, so the
        // image must ship /work as 0700 (kiln images do) or /work ends up
        // 0755; runsc applies mode=0700 either way.
        (
            WORK_DIR.to_string(),
            format!(
                "rw,exec,nosuid,nodev,size={}m,mode=0700,uid={},gid={}",
                limits.work_mib, spec.step_uid, spec.step_gid
            ),
        ),
    ]);

    let socket_mount = Mount {
        target: Some(SOCKET_MOUNT_TARGET.to_string()),
        source: Some(spec.socket_dir.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        // Read-only: steps cannot create, rename or unlink anything in the
        // socket dir (EROFS, measured). connect() still works on a read-only
        // bind (the ro check does not apply to sockets); the socket itself is
        // mode 0600 root, so steps get EACCES.
        read_only: Some(true),
        bind_options: Some(MountBindOptions {
            // rprivate: no mount events propagate in either direction.
            propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
            ..Default::default()
        }),
        ..Default::default()
    };

    let ulimits = vec![
        // Inherited nofile was 20000 (19 997 fds opened, measured); 1024
        // bounds kernel memory per execution.
        ResourcesUlimits {
            name: Some("nofile".to_string()),
            soft: Some(to_i64(limits.nofile)),
            hard: Some(to_i64(limits.nofile)),
        },
        // No core dumps: they would land in /work (memory) and could hold the
        // agent's memory if it ever crashed.
        ResourcesUlimits {
            name: Some("core".to_string()),
            soft: Some(0),
            hard: Some(0),
        },
        // RLIMIT_FSIZE in bytes: no single file larger than this anywhere.
        ResourcesUlimits {
            name: Some("fsize".to_string()),
            soft: Some(mib_to_bytes(limits.fsize_mib)),
            hard: Some(mib_to_bytes(limits.fsize_mib)),
        },
        // No nproc ulimit on purpose: RLIMIT_NPROC is per UID across
        // containers (a neighbour holding 31 processes cut another's budget
        // from 38 to 7, measured). Per-execution UIDs + the pids cgroup do it.
    ];

    let host_config = HostConfig {
        // --- runtime ---------------------------------------------------
        runtime: Some(spec.runtime.docker_name().to_string()),

        // --- network ---------------------------------------------------
        // No interfaces but lo ("Network is unreachable" for 1.1.1.1,
        // measured).
        network_mode: Some("none".to_string()),
        // With network none alone Docker still copies the host's resolv.conf
        // (measured: `nameserver 10.255.255.53`). With NetworkDisabled (set
        // below) Docker 20.10 writes no resolv.conf or hosts at all: both
        // are empty files inside (measured, runc and runsc). As a second
        // layer, should a daemon ignore NetworkDisabled, DNS points at
        // loopback where nothing listens and "." drops the host's search
        // domains (measured without NetworkDisabled: exactly
        // "nameserver 127.0.0.1").
        dns: Some(vec!["127.0.0.1".to_string()]),
        dns_search: Some(vec![".".to_string()]),

        // --- privilege -------------------------------------------------
        privileged: Some(false),
        // Start from nothing.
        cap_drop: Some(vec!["ALL".to_string()]),
        // The agent runs as uid 0 in the container (Docker 20.10 gives a
        // non-root container user no capabilities at all) and needs exactly:
        cap_add: Some(vec![
            // SETUID: setresuid() to the per-execution step uid before exec.
            "SETUID".to_string(),
            // SETGID: setresgid()/setgroups([]) to the step gid before exec.
            "SETGID".to_string(),
            // KILL: signal step process groups that now run under another uid
            // (timeouts: SIGTERM then SIGKILL to the whole group).
            "KILL".to_string(),
        ]),
        security_opt: Some(vec![
            // Steps exec with an empty capability set and can never regain
            // one through setuid/file-capability binaries (`su`: "must be
            // suid", measured).
            "no-new-privileges:true".to_string(),
            // Docker's default minus io_uring, AF_VSOCK/AF_ALG/AF_PACKET,
            // ptrace/process_vm_*/pidfd_getfd, the new mount API, and non
            // x86-64 arches. Needed because 20.10's default allows io_uring
            // and socket(AF_VSOCK) (both measured OK under runc).
            // Under runsc it applies inside the Sentry too (runsc registered
            // with --oci-seccomp), with the clone3 rule adapted: see
            // `seccomp_for_runtime`.
            // No `apparmor=` entry: this host's kernel has no AppArmor, and
            // Docker rejects the option when it is unavailable.
            format!(
                "seccomp={}",
                seccomp_for_runtime(spec.runtime, &spec.seccomp_json)
            ),
        ]),
        // Rootfs writes get EROFS; without it a 200 MB write landed in the
        // host's overlay upperdir with no quota (measured).
        readonly_rootfs: Some(true),
        // No host devices.
        devices: Some(Vec::new()),
        // MaskedPaths / ReadonlyPaths are left unset (None), so Docker's
        // defaults apply; an empty list would unmask /proc/kcore and friends.

        // --- namespaces ------------------------------------------------
        // Own SysV IPC: shmget(key) of a neighbour gives ENOENT (measured).
        ipc_mode: Some("private".to_string()),
        // Own cgroup namespace: /proc/self/cgroup shows "/" not the host path.
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        // PidMode / UTSMode / UsernsMode unset: never "host".

        // --- filesystems -----------------------------------------------
        tmpfs: Some(tmpfs),
        // /dev/shm defaults to 64 MiB (ENOSPC at 64 MiB, measured); size it
        // from the execution class like the other tmpfs mounts.
        shm_size: Some(mib_to_bytes(limits.shm_mib)),
        mounts: Some(vec![socket_mount]),

        // --- resources -------------------------------------------------
        memory: Some(memory_bytes),
        // Memory == MemorySwap: no swap, so the memory limit is the limit.
        memory_swap: Some(memory_bytes),
        // The OOM killer must stay on: OOMKilled + the cgroup oom_kill counter
        // are how `oom` is reported.
        oom_kill_disable: Some(false),
        // The agent (PID 1) gets 500; it raises each step to 1000 (raising
        // needs no capability), so inside the memory cgroup the kernel kills
        // steps before the agent, and under global pressure sandboxes die
        // before host services.
        oom_score_adj: Some(500),
        nano_cpus: Some(to_i64(limits.cpus_milli).saturating_mul(1_000_000)),
        pids_limit: Some(host_pids_limit(spec.runtime, limits.pids)),
        ulimits: Some(ulimits),

        // --- lifecycle -------------------------------------------------
        // json-file logs let one execution write 595 MB (runc) / 455 MB
        // (runsc) of host disk in ~14 s. The agent streams bounded output over
        // the socket instead.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        // A dead sandbox stays dead: the controller decides what happens.
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        // The controller must inspect State.OOMKilled and the exit code before
        // removing the container (force, volumes).
        auto_remove: Some(false),
        // The agent is PID 1 and reaps with waitpid(-1). With tini/--init a
        // step's `kill -9 -1` killed the agent on both runtimes (measured).
        init: Some(false),
        ..Default::default()
    };

    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        // Fixed, so an operator image built on ours cannot change PID 1.
        entrypoint: Some(vec![AGENT_PATH.to_string()]),
        cmd: None,
        // Container user root: Docker 20.10 grants no capabilities to a
        // non-root container user, and the agent needs SETUID/SETGID/KILL to
        // run steps as `step_uid`. Steps never run as 0.
        user: Some("0:0".to_string()),
        working_dir: Some(WORK_DIR.to_string()),
        // Only these four. No secrets: the one-time token is a 0400 file in
        // the socket dir, never in the environment.
        env: Some(vec![
            format!("PATH={SANDBOX_PATH}"),
            format!("HOME={WORK_DIR}"),
            "LANG=C.UTF-8".to_string(),
            format!("KILN_EXECUTION_ID={}", spec.execution_id),
        ]),
        // A neutral hostname instead of the container id.
        hostname: Some("sandbox".to_string()),
        // No network stack setup at all; also means Docker writes no
        // resolv.conf or hosts content (see `dns` above).
        network_disabled: Some(true),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        open_stdin: Some(false),
        tty: Some(false),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    };

    ContainerProfile {
        name: container_name(&spec.execution_id),
        body,
    }
}

#[cfg(test)]
#[path = "profile_tests.rs"]
mod tests;

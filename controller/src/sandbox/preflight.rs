//! Stage: start-up, before the sandbox launches anything. Checks the host's
//! container stack (Docker, runc, the kernel, runsc) against the escape
//! classes of the security catalogue (section 2) and the version gates of its
//! section 5, item 9, and reports one precise `Finding` per known problem.
//!
//! Shape: `gather` (bollard + `runsc`/`runc --version`, the only I/O) →
//! `HostFacts` → `assess` (pure rules) → `Vec<Finding>` → `log_findings` and
//! `decide` (strict mode refuses to start on any critical finding).
//!
//! Severities:
//! - `Critical`: an escape path is open and nothing in Kiln closes it, or a
//!   runtime Kiln is configured to use cannot work safely; strict mode refuses.
//! - `Warning`: the host is exposed but a Kiln layer (its own seccomp
//!   profile, operator-pinned images, no CAP_SYS_ADMIN) mitigates it, or a
//!   defence-in-depth layer is missing, or a version could not be read.
//! - `Info`: a known issue that is fixed by a backport or mitigated for sure.
//!
//! Where the fixed version of a distribution kernel or package cannot be
//! told from its version string, the finding says "check your distribution's
//! advisory" rather than guessing.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bollard::models::{SystemInfo, SystemInfoCgroupVersionEnum, SystemVersion};
use serde::Serialize;

use super::docker::Sandbox;
use super::profile::Runtime;

/// How long `gather` waits for `runsc`/`runc` to print their versions.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime name Kiln's runsc classes use (`daemon.json` `runtimes` key).
fn runsc_name() -> &'static str {
    Runtime::Runsc.docker_name()
}

/// What `gather` learned about the host's container stack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    /// The Docker engine version, e.g. `20.10.24+dfsg1`.
    pub docker_version: Option<String>,
    /// The daemon's API version, e.g. `1.41`.
    pub api_version: Option<String>,
    /// runc's upstream version, e.g. `1.1.5+ds1`.
    pub runc_version: Option<String>,
    /// runc's distribution package version when the daemon reports one as the
    /// runc commit, e.g. `1.1.5+ds1-1+deb12u1`.
    pub runc_package_version: Option<String>,
    /// The daemon host's kernel release, e.g. `6.18.44-fc-v669`.
    pub kernel_release: String,
    /// The daemon's cgroup version, if reported.
    pub cgroup_version: Option<CgroupVersion>,
    /// The daemon reports seccomp support (`name=seccomp` security option).
    pub seccomp: bool,
    /// The daemon reports AppArmor (`name=apparmor`).
    pub apparmor: bool,
    /// The daemon runs with userns-remap (`name=userns`).
    pub userns_remap: bool,
    /// Names of the runtimes registered with the daemon, sorted.
    pub runtimes: Vec<String>,
    /// Some configured execution class uses runsc (passed to `gather` by
    /// `serve`, from the config); runsc rules apply only then.
    pub runsc_required: bool,
    /// `runsc --version`, e.g. `0.0~20221219.0` or `release-20240807.0`.
    pub runsc_version: Option<String>,
    /// The platform runsc runs with (`--platform` in its runtime args, else
    /// the binary's default), e.g. `ptrace`, `systrap`, `kvm`.
    pub runsc_platform: Option<String>,
    /// The `runtimeArgs` runsc is registered with in `daemon.json`.
    pub runsc_runtime_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Docker,
    Runc,
    Kernel,
    Runsc,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Component::Docker => "docker",
            Component::Runc => "runc",
            Component::Kernel => "kernel",
            Component::Runsc => "runsc",
        };
        f.write_str(name)
    }
}

/// One problem with the host. `id` is stable (logs, alerts, tests); the
/// message names the version found, the CVE, the fixed version and what
/// Kiln does about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub component: Component,
    pub message: String,
}

/// The host failed the strict start-up check.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "strict host preflight refused to start on {} critical finding(s): {}",
        findings.len(),
        describe(findings)
    )]
    CriticalFindings { findings: Vec<Finding> },
}

fn describe(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|finding| format!("[{}] {}", finding.id, finding.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Strict mode refuses to start on any critical finding; otherwise the host
/// is accepted (the caller has logged every finding with `log_findings`).
pub fn decide(findings: &[Finding], strict: bool) -> Result<(), PreflightError> {
    let critical: Vec<Finding> = findings
        .iter()
        .filter(|finding| finding.severity == Severity::Critical)
        .cloned()
        .collect();
    if strict && !critical.is_empty() {
        return Err(PreflightError::CriticalFindings { findings: critical });
    }
    Ok(())
}

/// Log each finding once, with its stable id: critical as `error`, warning as
/// `warn`, info as `info`.
pub fn log_findings(findings: &[Finding]) {
    for finding in findings {
        let id = finding.id;
        let component = finding.component;
        match finding.severity {
            Severity::Critical => {
                tracing::error!(finding = id, %component, "host preflight: {}", finding.message)
            }
            Severity::Warning => {
                tracing::warn!(finding = id, %component, "host preflight: {}", finding.message)
            }
            Severity::Info => {
                tracing::info!(finding = id, %component, "host preflight: {}", finding.message)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------

/// A pre-release stage; any pre-release orders before the final release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Alpha(u64),
    Beta(u64),
    Rc(u64),
    Final,
}

/// A dotted release number, enough to order the releases the rules name.
/// Build metadata and distribution suffixes (`+ds1`, `+dfsg1`,
/// `-1+deb12u1`, `-ce`, `-fc-v669`) are ignored; `-rc7`, `~rc93`,
/// `-beta.1` become a pre-release stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub stage: Stage,
}

impl Release {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Release {
        Release {
            major,
            minor,
            patch,
            stage: Stage::Final,
        }
    }

    pub const fn rc(major: u64, minor: u64, patch: u64, rc: u64) -> Release {
        Release {
            major,
            minor,
            patch,
            stage: Stage::Rc(rc),
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        match self.stage {
            Stage::Alpha(n) => write!(f, "-alpha.{n}"),
            Stage::Beta(n) => write!(f, "-beta.{n}"),
            Stage::Rc(n) => write!(f, "-rc{n}"),
            Stage::Final => Ok(()),
        }
    }
}

/// Split `text` (after an optional leading `v`) into its dotted numeric
/// prefix and the rest.
fn split_numeric_prefix(text: &str) -> (&str, &str) {
    let text = text.trim();
    let text = text.strip_prefix('v').unwrap_or(text);
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Parse a version string; `None` when it does not start with at least
/// `major.minor` (never panics).
pub fn parse_release(text: &str) -> Option<Release> {
    let (numeric, rest) = split_numeric_prefix(text);
    let numeric = numeric.strip_suffix('.').unwrap_or(numeric);
    let parts: Vec<&str> = numeric.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|part| part.is_empty()) {
        return None;
    }
    let mut numbers = [0u64; 3];
    for (slot, part) in numbers.iter_mut().zip(&parts) {
        *slot = part.parse().ok()?;
    }
    Some(Release {
        major: numbers[0],
        minor: numbers[1],
        patch: numbers[2],
        stage: parse_stage(rest),
    })
}

/// `-rc7`, `~rc93+ds1`, `-rc.3`, `-beta.1`, `~alpha2` → pre-release; anything
/// else (build metadata, distro revisions, `-ce`) → final.
fn parse_stage(rest: &str) -> Stage {
    let Some(tail) = rest.strip_prefix(['-', '~', '.']) else {
        return Stage::Final;
    };
    let tail = tail.to_ascii_lowercase();
    let number_after = |word: &str| {
        let after = &tail[word.len()..];
        let after = after.strip_prefix('.').unwrap_or(after);
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap_or(0)
    };
    if tail.starts_with("alpha") {
        Stage::Alpha(number_after("alpha"))
    } else if tail.starts_with("beta") {
        Stage::Beta(number_after("beta"))
    } else if tail.starts_with("rc") {
        Stage::Rc(number_after("rc"))
    } else {
        Stage::Final
    }
}

/// A distribution kernel whose release names the ABI, not the patch level
/// (Debian `5.10.0-28-amd64`, Ubuntu `5.15.0-91-generic`, RHEL
/// `4.18.0-513.el8.x86_64`): `X.Y.0` followed by `-<digit>`.
pub fn is_distro_abi_kernel(release: &str) -> bool {
    let (numeric, rest) = split_numeric_prefix(release);
    let parts: Vec<&str> = numeric.split('.').collect();
    parts.len() == 3
        && parts[2] == "0"
        && rest
            .strip_prefix('-')
            .is_some_and(|tail| tail.starts_with(|c: char| c.is_ascii_digit()))
}

/// The release date (`YYYYMMDD`) of a gVisor build: Debian `0.0~20221219.0`,
/// upstream `release-20240807.0` or `runsc version release-20240807.0`.
pub fn runsc_release_date(version: &str) -> Option<u32> {
    let bytes = version.as_bytes();
    let start = (0..bytes.len().saturating_sub(7)).find(|&idx| {
        bytes[idx..idx + 8].iter().all(u8::is_ascii_digit)
            && bytes.get(idx + 8).is_none_or(|b| !b.is_ascii_digit())
            && (idx == 0 || !bytes[idx - 1].is_ascii_digit())
    })?;
    let date: u32 = version.get(start..start + 8)?.parse().ok()?;
    let (year, month, day) = (date / 10_000, date / 100 % 100, date % 100);
    let plausible =
        (2015..=2100).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day);
    plausible.then_some(date)
}

// ---------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------

/// runc package versions known to carry the CVE-2024-21626 fix although their
/// upstream version is older than 1.1.12: (upstream version, Debian revision
/// prefix, first fixed update number). Debian 12's `1.1.5+ds1-1+deb12u1`
/// was measured: `-w /proc/self/fd/3..9` was rejected for every fd.
const RUNC_21626_BACKPORTS: &[(&str, &str, u32)] = &[("1.1.5+ds1", "1+deb12u", 1)];

/// The runc package carries a known backport of the CVE-2024-21626 fix.
pub fn is_runc_21626_backport(upstream: &str, package: &str) -> bool {
    let Some(revision) = package
        .strip_prefix(upstream)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    RUNC_21626_BACKPORTS.iter().any(|&(known, prefix, first)| {
        known == upstream
            && revision
                .strip_prefix(prefix)
                .and_then(|update| update.parse::<u32>().ok())
                .is_some_and(|update| update >= first)
    })
}

fn finding(id: &'static str, severity: Severity, component: Component, message: String) -> Finding {
    Finding {
        id,
        severity,
        component,
        message,
    }
}

/// Every finding for these facts, in a fixed order (docker, runc, kernel,
/// runsc). Pure: the same facts always give the same findings.
pub fn assess(facts: &HostFacts) -> Vec<Finding> {
    let mut findings = Vec::new();
    assess_docker(facts, &mut findings);
    assess_runc(facts, &mut findings);
    assess_kernel(facts, &mut findings);
    assess_runsc(facts, &mut findings);
    findings
}

fn assess_docker(facts: &HostFacts, findings: &mut Vec<Finding>) {
    use Component::Docker;
    match facts
        .docker_version
        .as_deref()
        .map(|text| (text, parse_release(text)))
    {
        None => findings.push(finding(
            "docker-version-unknown",
            Severity::Warning,
            Docker,
            "the docker daemon did not report its version, so Kiln cannot check it against \
             CVE-2019-5736 (fixed in 18.09.2) or the default-seccomp gaps closed in 25.0"
                .to_string(),
        )),
        Some((text, None)) => findings.push(finding(
            "docker-version-unparsable",
            Severity::Warning,
            Docker,
            format!(
                "cannot parse docker version {text:?}, so Kiln cannot check it against \
                 CVE-2019-5736 (fixed in 18.09.2) or the default-seccomp gaps closed in 25.0"
            ),
        )),
        Some((text, Some(version))) => {
            if version < Release::new(18, 9, 2) {
                findings.push(finding(
                    "docker-cve-2019-5736",
                    Severity::Critical,
                    Docker,
                    format!(
                        "docker {text} predates 18.09.2, the first release shipping the runc fix \
                         for CVE-2019-5736 (a container root rewrites the host runc binary via \
                         /proc/self/exe); Kiln runs steps as non-root with no-new-privileges, \
                         but upgrade docker"
                    ),
                ));
            }
            if version < Release::new(25, 0, 0) {
                findings.push(finding(
                    "docker-default-seccomp-pre-25",
                    Severity::Warning,
                    Docker,
                    format!(
                        "docker {text} predates 25.0: its default seccomp profile allows \
                         io_uring (moby#46762) and AF_VSOCK sockets (moby#44562); mitigated: \
                         Kiln always passes its own seccomp profile, which denies io_uring_* \
                         and every socket family but AF_UNIX/AF_INET/AF_INET6; upgrade to \
                         docker >= 25 so containers started outside Kiln are covered too"
                    ),
                ));
            }
        }
    }
    if !facts.seccomp {
        findings.push(finding(
            "docker-seccomp-unavailable",
            Severity::Critical,
            Docker,
            "the docker daemon does not report seccomp support, so Kiln's custom profile \
             (io_uring, AF_VSOCK, AF_ALG, ptrace and the new mount API denied) cannot apply; \
             use a daemon and kernel built with seccomp"
                .to_string(),
        ));
    }
    if !facts.apparmor {
        findings.push(finding(
            "docker-apparmor-unavailable",
            Severity::Info,
            Docker,
            "the docker daemon does not report AppArmor, so containers run without the \
             docker-default AppArmor profile; Kiln relies on seccomp, CapDrop ALL, \
             no-new-privileges and a read-only rootfs"
                .to_string(),
        ));
    }
    if !facts.userns_remap {
        findings.push(finding(
            "docker-userns-remap-disabled",
            Severity::Warning,
            Docker,
            "the docker daemon runs without userns-remap: a runc escape would land on a real \
             host uid; Kiln runs every execution as its own unprivileged uid, but enable \
             userns-remap as defence in depth"
                .to_string(),
        ));
    }
}

fn assess_runc(facts: &HostFacts, findings: &mut Vec<Finding>) {
    use Component::Runc;
    let Some(text) = facts.runc_version.as_deref() else {
        findings.push(finding(
            "runc-version-unknown",
            Severity::Warning,
            Runc,
            "the runc version is unknown (not reported by the daemon, `runc --version` \
             failed), so Kiln cannot check it against CVE-2019-5736, CVE-2024-21626 or \
             CVE-2025-31133/52565/52881"
                .to_string(),
        ));
        return;
    };
    let Some(version) = parse_release(text) else {
        findings.push(finding(
            "runc-version-unparsable",
            Severity::Warning,
            Runc,
            format!(
                "cannot parse runc version {text:?}, so Kiln cannot check it against \
                 CVE-2019-5736, CVE-2024-21626 or CVE-2025-31133/52565/52881"
            ),
        ));
        return;
    };
    let package = facts.runc_package_version.as_deref();
    let found = match package {
        Some(package) => format!("runc {text} (package {package})"),
        None => format!("runc {text}"),
    };

    if version < Release::rc(1, 0, 0, 7) {
        findings.push(finding(
            "runc-cve-2019-5736",
            Severity::Critical,
            Runc,
            format!(
                "{found} predates 1.0.0-rc7: CVE-2019-5736 lets a container root rewrite the \
                 host runc binary via /proc/self/exe; Kiln runs steps as non-root with \
                 no-new-privileges, but upgrade runc"
            ),
        ));
    }

    if version < Release::new(1, 1, 12) {
        if package.is_some_and(|package| is_runc_21626_backport(text, package)) {
            findings.push(finding(
                "runc-cve-2024-21626-backported",
                Severity::Info,
                Runc,
                format!(
                    "{found} predates 1.1.12 but carries the distribution backport of the \
                     CVE-2024-21626 (Leaky Vessels) fix (measured: WorkingDir \
                     /proc/self/fd/N is rejected); Kiln also never lets a recipe choose \
                     WorkingDir, image, mounts or user"
                ),
            ));
        } else {
            findings.push(finding(
                "runc-cve-2024-21626",
                Severity::Critical,
                Runc,
                format!(
                    "{found} predates 1.1.12 and is not a known backport: CVE-2024-21626 \
                     (Leaky Vessels) lets WorkingDir=/proc/self/fd/N land on a leaked host \
                     fd; Kiln never lets a recipe choose WorkingDir or the image, but upgrade \
                     runc to >= 1.1.12 (or check your distribution's advisory for a backport)"
                ),
            ));
        }
    }

    // Fixed in 1.2.8, 1.3.3 and 1.4.0-rc.3.
    let mount_races_fixed = match (version.major, version.minor) {
        (1, 0..=2) | (0, _) => version >= Release::new(1, 2, 8),
        (1, 3) => version >= Release::new(1, 3, 3),
        (1, 4) => version >= Release::rc(1, 4, 0, 3),
        _ => true,
    };
    if !mount_races_fixed {
        findings.push(finding(
            "runc-cve-2025-31133",
            Severity::Warning,
            Runc,
            format!(
                "{found} is affected by the runc mount races CVE-2025-31133, CVE-2025-52565 \
                 and CVE-2025-52881 (maskedPaths /dev/null, /dev/console, procfs writes; \
                 fixed in 1.2.8, 1.3.3 and 1.4.0-rc.3, or check your distribution's \
                 advisory); mitigated: exploitation needs a malicious image or container \
                 config, and Kiln only runs operator-pinned images and never lets a recipe \
                 choose one; upgrade runc"
            ),
        ));
    }
}

fn assess_kernel(facts: &HostFacts, findings: &mut Vec<Finding>) {
    use Component::Kernel;
    let release = facts.kernel_release.trim();
    let Some(version) = parse_release(release) else {
        findings.push(finding(
            "kernel-version-unparsable",
            Severity::Warning,
            Kernel,
            format!(
                "cannot parse kernel release {release:?}, so Kiln cannot check it against \
                 Dirty COW (CVE-2016-5195), Dirty Pipe (CVE-2022-0847) or CVE-2022-0492"
            ),
        ));
        return;
    };
    // A distribution kernel's release (`5.10.0-28-amd64`) names its ABI, not
    // its patch level: a range hit there is unproven, so it is a warning.
    let distro_abi = is_distro_abi_kernel(release);
    let (severity, unsure) = if distro_abi {
        (
            Severity::Warning,
            " (a distribution kernel: its release does not carry the patch level, so check \
             your distribution's advisory)",
        )
    } else {
        (Severity::Critical, "")
    };

    // Dirty COW: fixed in 4.8.3 and the 4.7.9 / 4.4.26 stable releases.
    let dirty_cow_fixed = version >= Release::new(4, 8, 3)
        || (version.major, version.minor) == (4, 7) && version.patch >= 9
        || (version.major, version.minor) == (4, 4) && version.patch >= 26;
    if !dirty_cow_fixed {
        findings.push(finding(
            "kernel-cve-2016-5195",
            severity,
            Kernel,
            format!(
                "kernel {release} is affected by Dirty COW (CVE-2016-5195, fixed in 4.8.3, \
                 4.7.9 and 4.4.26){unsure}: an unprivileged process can write read-only \
                 files such as shared image layers; Kiln's seccomp profile does not close \
                 this under runc, so patch the kernel (runsc classes do not reach the host \
                 kernel)"
            ),
        ));
    }

    // Dirty Pipe: introduced in 5.8, fixed in 5.16.11, 5.15.25 and 5.10.102.
    let dirty_pipe_affected = version >= Release::new(5, 8, 0)
        && version < Release::new(5, 16, 11)
        && !((version.major, version.minor) == (5, 15) && version.patch >= 25)
        && !((version.major, version.minor) == (5, 10) && version.patch >= 102);
    if dirty_pipe_affected {
        findings.push(finding(
            "kernel-cve-2022-0847",
            severity,
            Kernel,
            format!(
                "kernel {release} is affected by Dirty Pipe (CVE-2022-0847, 5.8 to 5.16.10; \
                 fixed in 5.16.11, 5.15.25 and 5.10.102){unsure}: an unprivileged process \
                 can overwrite read-only files through a pipe, including runc and image \
                 layers shared across containers; Kiln's seccomp profile does not close this \
                 under runc, so patch the kernel (runsc classes do not reach the host kernel)"
            ),
        ));
    }

    if facts.cgroup_version == Some(CgroupVersion::V1) && version < Release::new(5, 17, 0) {
        findings.push(finding(
            "kernel-cve-2022-0492",
            Severity::Warning,
            Kernel,
            format!(
                "kernel {release} with cgroup v1 predates 5.17, where the cgroup v1 \
                 release_agent escape (CVE-2022-0492) was fixed in mainline (stable and \
                 distribution backports exist: check your distribution's advisory); \
                 mitigated: Kiln's seccomp profile denies unshare and mount and containers \
                 have no CAP_SYS_ADMIN; cgroup v2 removes release_agent"
            ),
        ));
    }

    findings.push(finding(
        "kernel-cve-2026-31431",
        Severity::Info,
        Kernel,
        format!(
            "kernel {release}: whether it carries the fix for Copy Fail (CVE-2026-31431, \
             page-cache writes through AF_ALG sockets) cannot be told from the release, so \
             check your distribution's advisory; mitigated: Kiln's seccomp profile denies \
             AF_ALG sockets (family 38) and runsc classes do not reach the host kernel"
        ),
    ));
}

/// `--flag=value` or `-flag=value` in a runtime's args.
fn runtime_flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(idx, arg)| {
        let name = arg.trim_start_matches('-');
        if !arg.starts_with('-') {
            return None;
        }
        match name.split_once('=') {
            Some((key, value)) if key == flag => Some(value),
            // `-flag value`; a bare boolean flag (`--oci-seccomp`) is followed
            // by the next flag or nothing.
            None if name == flag => Some(
                args.get(idx + 1)
                    .filter(|next| !next.starts_with('-'))
                    .map_or("true", String::as_str),
            ),
            _ => None,
        }
    })
}

/// The platform named in runsc's registered args (`--platform=systrap`).
pub fn runsc_platform_from_args(args: &[String]) -> Option<String> {
    runtime_flag_value(args, "platform").map(str::to_string)
}

fn assess_runsc(facts: &HostFacts, findings: &mut Vec<Finding>) {
    use Component::Runsc;
    if !facts.runsc_required {
        return;
    }
    if !facts.runtimes.iter().any(|name| name == runsc_name()) {
        findings.push(finding(
            "runsc-missing",
            Severity::Critical,
            Runsc,
            format!(
                "an execution class uses runsc but the docker daemon has no runtime named \
                 {:?} (registered: {}); register it in daemon.json with runtimeArgs \
                 [\"--network=none\", \"--host-uds=open\", \"--oci-seccomp\"] \
                 (deploy/host-setup.sh does)",
                runsc_name(),
                facts.runtimes.join(", ")
            ),
        ));
        return;
    }

    match facts.runsc_version.as_deref() {
        None => findings.push(finding(
            "runsc-version-unknown",
            Severity::Warning,
            Runsc,
            "`runsc --version` failed, so Kiln cannot check the gVisor release date; use a \
             current release (2023 or later) with the systrap platform"
                .to_string(),
        )),
        Some(text) => match runsc_release_date(text) {
            None => findings.push(finding(
                "runsc-version-unparsable",
                Severity::Warning,
                Runsc,
                format!(
                    "cannot read a release date from runsc version {text:?}; use a current \
                     release (2023 or later) with the systrap platform"
                ),
            )),
            Some(date) if date < 20230101 => findings.push(finding(
                "runsc-release-old",
                Severity::Warning,
                Runsc,
                format!(
                    "runsc {text} is a release from {}-{:02}-{:02}, older than 2023: it \
                     predates systrap and years of Sentry fixes (measured with Debian's \
                     2022 build: Sentry panics at low pids limits, which Kiln reports as \
                     sandbox_crashed); use a current gVisor release",
                    date / 10_000,
                    date / 100 % 100,
                    date % 100
                ),
            )),
            Some(_) => {}
        },
    }

    match facts.runsc_platform.as_deref() {
        Some("ptrace") => findings.push(finding(
            "runsc-platform-ptrace",
            Severity::Warning,
            Runsc,
            "runsc runs on the ptrace platform, which is not designed for fork-bomb \
             containment (google/gvisor#3942; measured: fork floods end in a Sentry panic or \
             a whole-sandbox OOM kill, never EAGAIN); Kiln counts guest processes in the \
             agent and sizes the pids limit as a host backstop; register runsc with \
             --platform=systrap (or kvm on bare metal)"
                .to_string(),
        )),
        Some(_) => {}
        None => findings.push(finding(
            "runsc-platform-unknown",
            Severity::Warning,
            Runsc,
            "cannot tell which platform runsc runs on (no --platform in its runtimeArgs and \
             `runsc flags` failed); register runsc with --platform=systrap (or kvm on bare \
             metal), not ptrace (google/gvisor#3942)"
                .to_string(),
        )),
    }

    let args = &facts.runsc_runtime_args;
    let shown_args = format!("[{}]", args.join(" "));
    let host_uds = runtime_flag_value(args, "host-uds");
    if !matches!(host_uds, Some("open" | "all")) {
        findings.push(finding(
            "runsc-host-uds-closed",
            Severity::Critical,
            Runsc,
            format!(
                "runsc is registered with runtimeArgs {shown_args}, without --host-uds=open: \
                 inside gVisor the agent's connect() to its bind-mounted socket gets EPERM \
                 (measured), so every runsc execution would fail; add --host-uds=open \
                 (google/gvisor#6211)"
            ),
        ));
    }
    if runtime_flag_value(args, "network") != Some("none") {
        findings.push(finding(
            "runsc-network-not-none",
            Severity::Critical,
            Runsc,
            format!(
                "runsc is registered with runtimeArgs {shown_args}, without --network=none: \
                 Kiln's sandboxes must have no network and gVisor's netstack would otherwise \
                 be configured from the container's network namespace; add --network=none"
            ),
        ));
    }
    if !matches!(runtime_flag_value(args, "oci-seccomp"), Some("true" | "")) {
        findings.push(finding(
            "runsc-oci-seccomp-off",
            Severity::Warning,
            Runsc,
            format!(
                "runsc is registered with runtimeArgs {shown_args}, without --oci-seccomp: \
                 Kiln's custom seccomp profile does not apply inside gVisor (the Sentry \
                 implements the syscalls, so the host kernel stays out of reach); add \
                 --oci-seccomp to enforce the profile inside the sandbox as well \
                 (deploy/host-setup.sh does; measured with Debian's runsc 2022: io_uring, \
                 ptrace, unshare, AF_VSOCK and the rest of the profile's denials then get \
                 EPERM inside gVisor)"
            ),
        ));
    }
}

// ---------------------------------------------------------------------------
// Gathering
// ---------------------------------------------------------------------------

/// What the host commands printed; `None` when a command failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutputs {
    /// `runc --version`.
    pub runc_version: Option<String>,
    /// `<runsc path> --version`.
    pub runsc_version: Option<String>,
    /// `<runsc path> flags` (lists `-platform ... (default "ptrace")`).
    pub runsc_flags: Option<String>,
}

/// Read the host's container stack. Never fails: whatever cannot be read
/// stays `None`/empty (and is logged), and `assess` reports it as unknown.
/// `runsc_required`: some configured execution class uses runsc.
pub async fn gather(sandbox: &Sandbox, runsc_required: bool) -> HostFacts {
    let docker = sandbox.docker();
    let version = match docker.version().await {
        Ok(version) => Some(version),
        Err(error) => {
            tracing::warn!(%error, "host preflight: docker version failed");
            None
        }
    };
    let info = match docker.info().await {
        Ok(info) => Some(info),
        Err(error) => {
            tracing::warn!(%error, "host preflight: docker info failed");
            None
        }
    };
    let runsc_path = info
        .as_ref()
        .and_then(|info| info.runtimes.as_ref())
        .and_then(|runtimes| runtimes.get(runsc_name()))
        .and_then(|runtime| runtime.path.clone());
    let mut outputs = CommandOutputs {
        runc_version: run_command("runc", &["--version"]).await,
        ..CommandOutputs::default()
    };
    if let Some(path) = runsc_path.as_deref() {
        outputs.runsc_version = run_command(path, &["--version"]).await;
        outputs.runsc_flags = run_command(path, &["flags"]).await;
    }
    facts_from(version.as_ref(), info.as_ref(), &outputs, runsc_required)
}

/// The whole start-up check in one call: gather, assess, log every finding
/// (with its id), then `decide`. Returns the findings so the caller can also
/// expose them (e.g. in a health report). `serve` calls this right after
/// `Sandbox::connect` and before reconciling or accepting work.
pub async fn check_host(
    sandbox: &Sandbox,
    runsc_required: bool,
    strict: bool,
) -> Result<Vec<Finding>, PreflightError> {
    let facts = gather(sandbox, runsc_required).await;
    let findings = assess(&facts);
    log_findings(&findings);
    decide(&findings, strict)?;
    Ok(findings)
}

/// Run a host binary and return its stdout then stderr, or `None` if it
/// failed.
async fn run_command(program: &str, args: &[&str]) -> Option<String> {
    let mut command = tokio::process::Command::new(program);
    command.args(args).kill_on_drop(true);
    match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
        // `runsc flags` prints to stderr, the version commands to stdout.
        Ok(Ok(output)) if output.status.success() => Some(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )),
        Ok(Ok(output)) => {
            tracing::warn!(program, status = %output.status, "host preflight: command failed");
            None
        }
        Ok(Err(error)) => {
            tracing::warn!(program, %error, "host preflight: command did not run");
            None
        }
        Err(_) => {
            tracing::warn!(program, "host preflight: command timed out");
            None
        }
    }
}

/// Pure mapping of what the daemon and commands reported into `HostFacts`.
pub fn facts_from(
    version: Option<&SystemVersion>,
    info: Option<&SystemInfo>,
    outputs: &CommandOutputs,
    runsc_required: bool,
) -> HostFacts {
    let components = version
        .and_then(|version| version.components.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let runc_component = components.iter().find(|component| component.name == "runc");
    let runc_command = outputs.runc_version.as_deref().map(parse_runc_command);

    let runc_version = runc_component
        .map(|component| component.version.clone())
        .or_else(|| {
            runc_command
                .as_ref()
                .and_then(|(version, _)| version.clone())
        });
    let commit_candidates = [
        runc_component
            .and_then(|component| component.details.as_ref())
            .and_then(|details| details.get("GitCommit").cloned()),
        info.and_then(|info| info.runc_commit.as_ref())
            .and_then(|commit| commit.id.clone()),
        runc_command.and_then(|(_, commit)| commit),
    ];
    // Debian reports its package version as the runc commit
    // (`1.1.5+ds1-1+deb12u1`); an upstream commit (`v1.1.12-0-g51d5e94`)
    // does not start with `<version>-`.
    let runc_package_version = runc_version.as_deref().and_then(|runc_version| {
        commit_candidates.into_iter().flatten().find(|commit| {
            commit
                .strip_prefix(runc_version)
                .is_some_and(|rest| rest.starts_with('-'))
        })
    });

    let security_options = info
        .and_then(|info| info.security_options.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has_option = |name: &str| {
        security_options.iter().any(|option| {
            option
                .split(',')
                .any(|field| field == format!("name={name}"))
        })
    };

    let empty = HashMap::new();
    let runtimes = info
        .and_then(|info| info.runtimes.as_ref())
        .unwrap_or(&empty);
    let mut runtime_names: Vec<String> = runtimes.keys().cloned().collect();
    runtime_names.sort();
    let runsc_runtime_args = runtimes
        .get(runsc_name())
        .and_then(|runtime| runtime.runtime_args.clone())
        .unwrap_or_default();
    let runsc_platform = runsc_platform_from_args(&runsc_runtime_args).or_else(|| {
        outputs
            .runsc_flags
            .as_deref()
            .and_then(default_platform_from_flags)
    });

    let runsc_version = outputs.runsc_version.as_deref().and_then(|text| {
        let first_line = text.lines().next()?.trim();
        let version = first_line
            .strip_prefix("runsc version ")
            .unwrap_or(first_line);
        (!version.is_empty()).then(|| version.to_string())
    });

    HostFacts {
        docker_version: version.and_then(|version| version.version.clone()),
        api_version: version.and_then(|version| version.api_version.clone()),
        runc_version,
        runc_package_version,
        kernel_release: info
            .and_then(|info| info.kernel_version.clone())
            .or_else(|| version.and_then(|version| version.kernel_version.clone()))
            .unwrap_or_default(),
        cgroup_version: match info.and_then(|info| info.cgroup_version) {
            Some(SystemInfoCgroupVersionEnum::_1) => Some(CgroupVersion::V1),
            Some(SystemInfoCgroupVersionEnum::_2) => Some(CgroupVersion::V2),
            _ => None,
        },
        seccomp: has_option("seccomp"),
        apparmor: has_option("apparmor"),
        userns_remap: has_option("userns"),
        runtimes: runtime_names,
        runsc_required,
        runsc_version,
        runsc_platform,
        runsc_runtime_args,
    }
}

/// `runc --version` → (version, commit):
/// `runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\n...`.
fn parse_runc_command(text: &str) -> (Option<String>, Option<String>) {
    let mut version = None;
    let mut commit = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(value) = line.strip_prefix("runc version ") {
            version = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("commit: ") {
            commit = Some(value.trim().to_string());
        }
    }
    (version, commit)
}

/// The default platform in `runsc flags` output:
/// `  -platform string\n    \tspecifies ... (default "ptrace")`.
fn default_platform_from_flags(text: &str) -> Option<String> {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"-platform") {
            let help = lines.next()?;
            let (_, tail) = help.rsplit_once("(default \"")?;
            let (platform, _) = tail.split_once('"')?;
            return Some(platform.to_string());
        }
    }
    None
}

#[cfg(test)]
#[path = "preflight_tests.rs"]
mod tests;

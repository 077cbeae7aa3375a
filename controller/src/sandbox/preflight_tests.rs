//! Host preflight: version parsing, every `assess` rule as a table row, this
//! machine's real facts, `decide`, the pure daemon-answer mapping (from the
//! JSON this machine's dockerd really returns), and one `gather` against the
//! real local Docker (fails loudly without it).

#![allow(clippy::unwrap_used)]

use bollard::models::{SystemInfo, SystemVersion};

use super::*;
use Severity::{Critical, Info, Warning};

// --- version parsing -------------------------------------------------------

#[test]
fn parses_releases() {
    let cases: &[(&str, Option<Release>)] = &[
        ("20.10.24+dfsg1", Some(Release::new(20, 10, 24))),
        ("18.09.2", Some(Release::new(18, 9, 2))),
        ("17.03.0-ce", Some(Release::new(17, 3, 0))),
        ("v1.1.12", Some(Release::new(1, 1, 12))),
        ("1.1.5+ds1", Some(Release::new(1, 1, 5))),
        ("1.1.5+ds1-1+deb12u1", Some(Release::new(1, 1, 5))),
        ("1.0.0-rc7", Some(Release::rc(1, 0, 0, 7))),
        ("1.0.0~rc93+ds1", Some(Release::rc(1, 0, 0, 93))),
        ("1.0.0-rc.3", Some(Release::rc(1, 0, 0, 3))),
        ("1.4.0-rc.3", Some(Release::rc(1, 4, 0, 3))),
        (
            "25.0.0-beta.1",
            Some(Release {
                major: 25,
                minor: 0,
                patch: 0,
                stage: Stage::Beta(1),
            }),
        ),
        (
            "1.2.0~alpha2",
            Some(Release {
                major: 1,
                minor: 2,
                patch: 0,
                stage: Stage::Alpha(2),
            }),
        ),
        ("6.18.44-fc-v669", Some(Release::new(6, 18, 44))),
        ("5.10.0-28-amd64", Some(Release::new(5, 10, 0))),
        ("4.18.0-513.el8.x86_64", Some(Release::new(4, 18, 0))),
        ("6.5.6-300.fc39.x86_64", Some(Release::new(6, 5, 6))),
        ("5.16", Some(Release::new(5, 16, 0))),
        ("5.16.", Some(Release::new(5, 16, 0))),
        ("1.2.3.4", Some(Release::new(1, 2, 3))),
        (" 27.3.1 ", Some(Release::new(27, 3, 1))),
        ("", None),
        ("v", None),
        (".", None),
        ("1", None),
        ("1..2", None),
        ("unknown", None),
        ("é1.2", None),
        ("99999999999999999999999.1", None),
        ("0.0~20221219.0", Some(Release::new(0, 0, 0))),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_release(text), *expected, "{text:?}");
    }
}

#[test]
fn orders_pre_releases_before_the_release() {
    assert!(Release::rc(1, 0, 0, 6) < Release::rc(1, 0, 0, 7));
    assert!(Release::rc(1, 0, 0, 93) < Release::new(1, 0, 0));
    assert!(parse_release("25.0.0-beta.1").unwrap() < Release::new(25, 0, 0));
    assert!(parse_release("1.4.0-rc.2").unwrap() < Release::rc(1, 4, 0, 3));
    assert!(Release::new(1, 1, 5) < Release::new(1, 1, 12));
    assert_eq!(Release::rc(1, 0, 0, 7).to_string(), "1.0.0-rc7");
}

#[test]
fn distro_abi_kernels() {
    let cases = [
        ("5.10.0-28-amd64", true),
        ("5.15.0-91-generic", true),
        ("4.18.0-513.el8.x86_64", true),
        ("6.18.44-fc-v669", false),
        ("6.5.6-300.fc39.x86_64", false),
        ("5.16.0", false),
        ("5.16.0-rc3", false),
        ("garbage", false),
    ];
    for (release, expected) in cases {
        assert_eq!(is_distro_abi_kernel(release), expected, "{release}");
    }
}

#[test]
fn runsc_release_dates() {
    let cases = [
        ("0.0~20221219.0", Some(20221219)),
        ("release-20240807.0", Some(20240807)),
        ("runsc version release-20230417.0", Some(20230417)),
        ("0.0~20221319.0", None),
        ("123456789", None),
        ("2022121", None),
        ("", None),
        ("é", None),
    ];
    for (text, expected) in cases {
        assert_eq!(runsc_release_date(text), expected, "{text:?}");
    }
}

#[test]
fn runc_21626_backports() {
    let cases = [
        ("1.1.5+ds1", "1.1.5+ds1-1+deb12u1", true),
        ("1.1.5+ds1", "1.1.5+ds1-1+deb12u2", true),
        ("1.1.5+ds1", "1.1.5+ds1-1", false),
        ("1.1.5+ds1", "1.1.5+ds1-1+deb12u0", false),
        ("1.1.5+ds1", "1.1.5+ds1-2", false),
        ("1.1.4+ds1", "1.1.4+ds1-1+deb12u1", false),
        ("1.1.5", "v1.1.5-0-gf19387a", false),
        ("1.1.5+ds1", "", false),
    ];
    for (upstream, package, expected) in cases {
        assert_eq!(
            is_runc_21626_backport(upstream, package),
            expected,
            "{upstream} {package}"
        );
    }
}

#[test]
fn runtime_flags() {
    let args = |list: &[&str]| list.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
    assert_eq!(
        runsc_platform_from_args(&args(&["--network=none", "--platform=systrap"])),
        Some("systrap".to_string())
    );
    assert_eq!(
        runsc_platform_from_args(&args(&["-platform", "kvm"])),
        Some("kvm".to_string())
    );
    assert_eq!(runsc_platform_from_args(&args(&["--network=none"])), None);
    assert_eq!(runsc_platform_from_args(&args(&["platform=kvm"])), None);
}

#[test]
fn parses_command_outputs() {
    let runc = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";
    assert_eq!(
        parse_runc_command(runc),
        (
            Some("1.1.5+ds1".to_string()),
            Some("1.1.5+ds1-1+deb12u1".to_string())
        )
    );
    assert_eq!(parse_runc_command("garbage"), (None, None));
    let flags = "  -pidfile string\n    \tfile path\n  -platform string\n    \tspecifies \
                 which platform to use: ptrace (default), kvm. (default \"ptrace\")\n  \
                 -platform_device_path string\n";
    assert_eq!(
        default_platform_from_flags(flags),
        Some("ptrace".to_string())
    );
    assert_eq!(default_platform_from_flags("-platform string"), None);
    assert_eq!(default_platform_from_flags(""), None);
}

// --- assess ----------------------------------------------------------------

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|item| item.to_string()).collect()
}

/// This machine, as measured: Docker 20.10.24+dfsg1 (API 1.41), runc
/// 1.1.5+ds1 (deb12u1), kernel 6.18.44-fc-v669, cgroup v1, seccomp only, no
/// userns-remap, Debian's runsc 0.0~20221219.0 on ptrace.
fn this_machine() -> HostFacts {
    HostFacts {
        docker_version: Some("20.10.24+dfsg1".to_string()),
        api_version: Some("1.41".to_string()),
        runc_version: Some("1.1.5+ds1".to_string()),
        runc_package_version: Some("1.1.5+ds1-1+deb12u1".to_string()),
        kernel_release: "6.18.44-fc-v669".to_string(),
        cgroup_version: Some(CgroupVersion::V1),
        seccomp: true,
        apparmor: false,
        userns_remap: false,
        runtimes: strings(&[
            "io.containerd.runc.v2",
            "io.containerd.runtime.v1.linux",
            "runc",
            "runsc",
        ]),
        runsc_required: true,
        runsc_version: Some("0.0~20221219.0".to_string()),
        runsc_platform: Some("ptrace".to_string()),
        runsc_runtime_args: strings(&["--network=none", "--host-uds=open", "--oci-seccomp"]),
    }
}

/// A host with nothing to report but the always-present Copy Fail note.
fn current_host() -> HostFacts {
    HostFacts {
        docker_version: Some("27.3.1".to_string()),
        api_version: Some("1.47".to_string()),
        runc_version: Some("1.3.3".to_string()),
        runc_package_version: None,
        kernel_release: "6.8.12".to_string(),
        cgroup_version: Some(CgroupVersion::V2),
        seccomp: true,
        apparmor: true,
        userns_remap: true,
        runtimes: strings(&["runc", "runsc"]),
        runsc_required: true,
        runsc_version: Some("release-20240807.0".to_string()),
        runsc_platform: Some("systrap".to_string()),
        runsc_runtime_args: strings(&[
            "--network=none",
            "--host-uds=open",
            "--oci-seccomp",
            "--platform=systrap",
        ]),
    }
}

fn ids(findings: &[Finding]) -> Vec<(&'static str, Severity)> {
    findings
        .iter()
        .map(|finding| (finding.id, finding.severity))
        .collect()
}

const COPY_FAIL: (&str, Severity) = ("kernel-cve-2026-31431", Info);

#[test]
fn this_machine_findings() {
    let findings = assess(&this_machine());
    assert_eq!(
        ids(&findings),
        vec![
            ("docker-default-seccomp-pre-25", Warning),
            ("docker-apparmor-unavailable", Info),
            ("docker-userns-remap-disabled", Warning),
            ("runc-cve-2024-21626-backported", Info),
            ("runc-cve-2025-31133", Warning),
            COPY_FAIL,
            ("runsc-release-old", Warning),
            ("runsc-platform-ptrace", Warning),
        ]
    );
    let message = |id: &str| {
        findings
            .iter()
            .find(|finding| finding.id == id)
            .unwrap()
            .message
            .clone()
    };
    assert_eq!(
        message("runc-cve-2025-31133"),
        "runc 1.1.5+ds1 (package 1.1.5+ds1-1+deb12u1) is affected by the runc mount races \
         CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881 (maskedPaths /dev/null, \
         /dev/console, procfs writes; fixed in 1.2.8, 1.3.3 and 1.4.0-rc.3, or check your \
         distribution's advisory); mitigated: exploitation needs a malicious image or \
         container config, and Kiln only runs operator-pinned images and never lets a recipe \
         choose one; upgrade runc"
    );
    assert!(
        message("docker-default-seccomp-pre-25").starts_with("docker 20.10.24+dfsg1 predates 25.0")
    );
    assert!(
        message("runsc-release-old")
            .starts_with("runsc 0.0~20221219.0 is a release from 2022-12-19, older than 2023")
    );
    assert!(message("runc-cve-2024-21626-backported").contains("CVE-2024-21626"));
    assert!(message("runsc-platform-ptrace").contains("google/gvisor#3942"));
    // Nothing critical here, so strict mode starts on this machine.
    assert!(decide(&findings, true).is_ok());
}

#[test]
fn current_host_has_only_the_copy_fail_note() {
    assert_eq!(ids(&assess(&current_host())), vec![COPY_FAIL]);
}

/// Each row: a change to `current_host()` and the exact findings it yields.
#[test]
fn every_rule() {
    type Change = fn(&mut HostFacts);
    type Expected = &'static [(&'static str, Severity)];
    let cases: &[(&str, Change, Expected)] = &[
        // docker
        (
            "docker 24",
            |f| f.docker_version = Some("24.0.7".into()),
            &[("docker-default-seccomp-pre-25", Warning), COPY_FAIL],
        ),
        (
            "docker 25 beta",
            |f| f.docker_version = Some("25.0.0-beta.1".into()),
            &[("docker-default-seccomp-pre-25", Warning), COPY_FAIL],
        ),
        (
            "docker 25.0.0",
            |f| f.docker_version = Some("25.0.0".into()),
            &[COPY_FAIL],
        ),
        (
            "docker 18.09.1",
            |f| f.docker_version = Some("18.09.1".into()),
            &[
                ("docker-cve-2019-5736", Critical),
                ("docker-default-seccomp-pre-25", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "docker 18.09.2",
            |f| f.docker_version = Some("18.09.2".into()),
            &[("docker-default-seccomp-pre-25", Warning), COPY_FAIL],
        ),
        (
            "docker 17.03 ce",
            |f| f.docker_version = Some("17.03.0-ce".into()),
            &[
                ("docker-cve-2019-5736", Critical),
                ("docker-default-seccomp-pre-25", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "docker unknown",
            |f| f.docker_version = None,
            &[("docker-version-unknown", Warning), COPY_FAIL],
        ),
        (
            "docker unparsable",
            |f| f.docker_version = Some("master-dockerproject".into()),
            &[("docker-version-unparsable", Warning), COPY_FAIL],
        ),
        (
            "no seccomp",
            |f| f.seccomp = false,
            &[("docker-seccomp-unavailable", Critical), COPY_FAIL],
        ),
        (
            "no apparmor",
            |f| f.apparmor = false,
            &[("docker-apparmor-unavailable", Info), COPY_FAIL],
        ),
        (
            "no userns-remap",
            |f| f.userns_remap = false,
            &[("docker-userns-remap-disabled", Warning), COPY_FAIL],
        ),
        // runc
        (
            "runc 1.0.0-rc6",
            |f| f.runc_version = Some("1.0.0-rc6".into()),
            &[
                ("runc-cve-2019-5736", Critical),
                ("runc-cve-2024-21626", Critical),
                ("runc-cve-2025-31133", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "runc 1.0.0-rc7",
            |f| f.runc_version = Some("1.0.0-rc7".into()),
            &[
                ("runc-cve-2024-21626", Critical),
                ("runc-cve-2025-31133", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "debian 11 runc tilde rc",
            |f| f.runc_version = Some("1.0.0~rc93+ds1".into()),
            &[
                ("runc-cve-2024-21626", Critical),
                ("runc-cve-2025-31133", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "runc 1.1.11",
            |f| f.runc_version = Some("1.1.11".into()),
            &[
                ("runc-cve-2024-21626", Critical),
                ("runc-cve-2025-31133", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "runc 1.1.5+ds1 without a package version",
            |f| f.runc_version = Some("1.1.5+ds1".into()),
            &[
                ("runc-cve-2024-21626", Critical),
                ("runc-cve-2025-31133", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "runc 1.1.5+ds1 unpatched debian package",
            |f| {
                f.runc_version = Some("1.1.5+ds1".into());
                f.runc_package_version = Some("1.1.5+ds1-1".into());
            },
            &[
                ("runc-cve-2024-21626", Critical),
                ("runc-cve-2025-31133", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "runc 1.1.5+ds1 deb12u1 backport",
            |f| {
                f.runc_version = Some("1.1.5+ds1".into());
                f.runc_package_version = Some("1.1.5+ds1-1+deb12u1".into());
            },
            &[
                ("runc-cve-2024-21626-backported", Info),
                ("runc-cve-2025-31133", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "runc 1.1.12",
            |f| f.runc_version = Some("1.1.12".into()),
            &[("runc-cve-2025-31133", Warning), COPY_FAIL],
        ),
        (
            "runc 1.2.7",
            |f| f.runc_version = Some("1.2.7".into()),
            &[("runc-cve-2025-31133", Warning), COPY_FAIL],
        ),
        (
            "runc 1.2.8",
            |f| f.runc_version = Some("1.2.8".into()),
            &[COPY_FAIL],
        ),
        (
            "runc 1.3.2",
            |f| f.runc_version = Some("1.3.2".into()),
            &[("runc-cve-2025-31133", Warning), COPY_FAIL],
        ),
        (
            "runc 1.4.0-rc.2",
            |f| f.runc_version = Some("1.4.0-rc.2".into()),
            &[("runc-cve-2025-31133", Warning), COPY_FAIL],
        ),
        (
            "runc 1.4.0-rc.3",
            |f| f.runc_version = Some("1.4.0-rc.3".into()),
            &[COPY_FAIL],
        ),
        (
            "runc 1.4.1",
            |f| f.runc_version = Some("v1.4.1".into()),
            &[COPY_FAIL],
        ),
        (
            "runc unknown",
            |f| f.runc_version = None,
            &[("runc-version-unknown", Warning), COPY_FAIL],
        ),
        (
            "runc unparsable",
            |f| f.runc_version = Some("commit-abc".into()),
            &[("runc-version-unparsable", Warning), COPY_FAIL],
        ),
        // kernel
        (
            "dirty pipe 5.16.10",
            |f| f.kernel_release = "5.16.10".into(),
            &[("kernel-cve-2022-0847", Critical), COPY_FAIL],
        ),
        (
            "dirty pipe fixed 5.16.11",
            |f| f.kernel_release = "5.16.11".into(),
            &[COPY_FAIL],
        ),
        (
            "dirty pipe 5.8.0",
            |f| f.kernel_release = "5.8.0".into(),
            &[("kernel-cve-2022-0847", Critical), COPY_FAIL],
        ),
        (
            "before dirty pipe 5.7.19",
            |f| f.kernel_release = "5.7.19".into(),
            &[COPY_FAIL],
        ),
        (
            "dirty pipe 5.15.24",
            |f| f.kernel_release = "5.15.24-custom".into(),
            &[("kernel-cve-2022-0847", Critical), COPY_FAIL],
        ),
        (
            "dirty pipe fixed 5.15.25",
            |f| f.kernel_release = "5.15.25".into(),
            &[COPY_FAIL],
        ),
        (
            "dirty pipe 5.10.101",
            |f| f.kernel_release = "5.10.101".into(),
            &[("kernel-cve-2022-0847", Critical), COPY_FAIL],
        ),
        (
            "dirty pipe fixed 5.10.102",
            |f| f.kernel_release = "5.10.102".into(),
            &[COPY_FAIL],
        ),
        (
            "dirty pipe on a debian abi kernel is unproven",
            |f| f.kernel_release = "5.10.0-28-amd64".into(),
            &[("kernel-cve-2022-0847", Warning), COPY_FAIL],
        ),
        (
            "dirty pipe 5.16 rc",
            |f| f.kernel_release = "5.16.0-rc3".into(),
            &[("kernel-cve-2022-0847", Critical), COPY_FAIL],
        ),
        (
            "dirty cow 4.8.2",
            |f| f.kernel_release = "4.8.2".into(),
            &[("kernel-cve-2016-5195", Critical), COPY_FAIL],
        ),
        (
            "dirty cow fixed 4.8.3",
            |f| f.kernel_release = "4.8.3".into(),
            &[COPY_FAIL],
        ),
        (
            "dirty cow fixed 4.4.26",
            |f| f.kernel_release = "4.4.26".into(),
            &[COPY_FAIL],
        ),
        (
            "dirty cow 4.4.25",
            |f| f.kernel_release = "4.4.25".into(),
            &[("kernel-cve-2016-5195", Critical), COPY_FAIL],
        ),
        (
            "dirty cow fixed 4.7.9",
            |f| f.kernel_release = "4.7.9".into(),
            &[COPY_FAIL],
        ),
        (
            "release_agent: cgroup v1 on 5.16.20",
            |f| {
                f.kernel_release = "5.16.20".into();
                f.cgroup_version = Some(CgroupVersion::V1);
            },
            &[("kernel-cve-2022-0492", Warning), COPY_FAIL],
        ),
        (
            "release_agent: cgroup v2 on 5.16.20",
            |f| f.kernel_release = "5.16.20".into(),
            &[COPY_FAIL],
        ),
        (
            "release_agent: cgroup v1 on 5.17.0",
            |f| {
                f.kernel_release = "5.17.0".into();
                f.cgroup_version = Some(CgroupVersion::V1);
            },
            &[COPY_FAIL],
        ),
        (
            "old kernel hits everything",
            |f| {
                f.kernel_release = "4.4.0-21-generic".into();
                f.cgroup_version = Some(CgroupVersion::V1);
            },
            &[
                ("kernel-cve-2016-5195", Warning),
                ("kernel-cve-2022-0492", Warning),
                COPY_FAIL,
            ],
        ),
        (
            "kernel unparsable",
            |f| f.kernel_release = "".into(),
            &[("kernel-version-unparsable", Warning)],
        ),
        // runsc
        (
            "runsc not required: nothing checked",
            |f| {
                f.runsc_required = false;
                f.runtimes = strings(&["runc"]);
                f.runsc_version = None;
                f.runsc_platform = Some("ptrace".into());
                f.runsc_runtime_args = Vec::new();
            },
            &[COPY_FAIL],
        ),
        (
            "runsc required but not registered",
            |f| f.runtimes = strings(&["runc", "runsc-sandbox"]),
            &[COPY_FAIL, ("runsc-missing", Critical)],
        ),
        (
            "runsc ptrace",
            |f| f.runsc_platform = Some("ptrace".into()),
            &[COPY_FAIL, ("runsc-platform-ptrace", Warning)],
        ),
        (
            "runsc kvm",
            |f| f.runsc_platform = Some("kvm".into()),
            &[COPY_FAIL],
        ),
        (
            "runsc platform unknown",
            |f| f.runsc_platform = None,
            &[COPY_FAIL, ("runsc-platform-unknown", Warning)],
        ),
        (
            "runsc 2022 release",
            |f| f.runsc_version = Some("release-20221231.0".into()),
            &[COPY_FAIL, ("runsc-release-old", Warning)],
        ),
        (
            "runsc 2023 release",
            |f| f.runsc_version = Some("release-20230101.0".into()),
            &[COPY_FAIL],
        ),
        (
            "runsc version unknown",
            |f| f.runsc_version = None,
            &[COPY_FAIL, ("runsc-version-unknown", Warning)],
        ),
        (
            "runsc version unparsable",
            |f| f.runsc_version = Some("0.0~git".into()),
            &[COPY_FAIL, ("runsc-version-unparsable", Warning)],
        ),
        (
            "runsc without host-uds",
            |f| f.runsc_runtime_args = strings(&["--network=none", "--oci-seccomp"]),
            &[COPY_FAIL, ("runsc-host-uds-closed", Critical)],
        ),
        (
            "runsc with host-uds=create only",
            |f| {
                f.runsc_runtime_args =
                    strings(&["--network=none", "--host-uds=create", "--oci-seccomp"])
            },
            &[COPY_FAIL, ("runsc-host-uds-closed", Critical)],
        ),
        (
            "runsc with host-uds=all",
            |f| {
                f.runsc_runtime_args =
                    strings(&["--network=none", "--host-uds=all", "--oci-seccomp"])
            },
            &[COPY_FAIL],
        ),
        (
            "runsc without network=none",
            |f| f.runsc_runtime_args = strings(&["--host-uds=open", "--oci-seccomp"]),
            &[COPY_FAIL, ("runsc-network-not-none", Critical)],
        ),
        (
            "runsc with network=sandbox",
            |f| {
                f.runsc_runtime_args =
                    strings(&["--network=sandbox", "--host-uds=open", "--oci-seccomp"])
            },
            &[COPY_FAIL, ("runsc-network-not-none", Critical)],
        ),
        (
            "runsc without oci-seccomp",
            |f| f.runsc_runtime_args = strings(&["--network=none", "--host-uds=open"]),
            &[COPY_FAIL, ("runsc-oci-seccomp-off", Warning)],
        ),
        (
            "runsc with oci-seccomp=false",
            |f| {
                f.runsc_runtime_args =
                    strings(&["--network=none", "--host-uds=open", "--oci-seccomp=false"])
            },
            &[COPY_FAIL, ("runsc-oci-seccomp-off", Warning)],
        ),
        (
            "runsc with single-dash flags",
            |f| {
                f.runsc_runtime_args =
                    strings(&["-network=none", "-host-uds=open", "-oci-seccomp=true"])
            },
            &[COPY_FAIL],
        ),
        (
            "runsc registered with no args",
            |f| f.runsc_runtime_args = Vec::new(),
            &[
                COPY_FAIL,
                ("runsc-host-uds-closed", Critical),
                ("runsc-network-not-none", Critical),
                ("runsc-oci-seccomp-off", Warning),
            ],
        ),
    ];
    for (name, change, expected) in cases {
        let mut facts = current_host();
        change(&mut facts);
        assert_eq!(ids(&assess(&facts)), expected.to_vec(), "{name}");
    }
}

#[test]
fn messages_name_version_cve_and_fix() {
    let mut facts = current_host();
    facts.runc_version = Some("1.1.11".into());
    facts.kernel_release = "5.10.101".into();
    facts.runsc_runtime_args = strings(&["--network=none", "--oci-seccomp"]);
    let findings = assess(&facts);
    let runc = &findings[0];
    assert_eq!(runc.id, "runc-cve-2024-21626");
    assert_eq!(runc.component, Component::Runc);
    assert!(
        runc.message.starts_with("runc 1.1.11 predates 1.1.12"),
        "{}",
        runc.message
    );
    let kernel = &findings[2];
    assert_eq!(kernel.id, "kernel-cve-2022-0847");
    assert!(
        kernel
            .message
            .starts_with("kernel 5.10.101 is affected by Dirty Pipe (CVE-2022-0847")
    );
    assert!(
        kernel
            .message
            .contains("fixed in 5.16.11, 5.15.25 and 5.10.102")
    );
    let uds = findings.last().unwrap();
    assert_eq!(
        uds.message,
        "runsc is registered with runtimeArgs [--network=none --oci-seccomp], without \
         --host-uds=open: inside gVisor the agent's connect() to its bind-mounted socket \
         gets EPERM (measured), so every runsc execution would fail; add --host-uds=open \
         (google/gvisor#6211)"
    );
}

#[test]
fn never_panics_on_odd_facts() {
    let odd = [
        "", " ", "v", "-", "~rc", "1.", ".1", "é", "1.2.3-rc", "00000000", "x.y.z",
    ];
    for text in odd {
        let facts = HostFacts {
            docker_version: Some(text.to_string()),
            runc_version: Some(text.to_string()),
            runc_package_version: Some(text.to_string()),
            kernel_release: text.to_string(),
            runsc_required: true,
            runtimes: strings(&["runsc"]),
            runsc_version: Some(text.to_string()),
            runsc_platform: Some(text.to_string()),
            runsc_runtime_args: strings(&[text, "--platform"]),
            ..HostFacts::default()
        };
        let findings = assess(&facts);
        assert!(!findings.is_empty(), "{text:?}");
    }
}

// --- decide ----------------------------------------------------------------

#[test]
fn strict_refuses_on_critical_only() {
    let mut facts = this_machine();
    facts.runsc_runtime_args = strings(&["--network=none"]);
    facts.kernel_release = "5.10.101".into();
    let findings = assess(&facts);

    assert!(decide(&findings, false).is_ok());
    let error = decide(&findings, true).unwrap_err();
    let PreflightError::CriticalFindings { findings: critical } = &error;
    assert_eq!(
        ids(critical),
        vec![
            ("kernel-cve-2022-0847", Critical),
            ("runsc-host-uds-closed", Critical)
        ]
    );
    let text = error.to_string();
    assert!(
        text.starts_with(
            "strict host preflight refused to start on 2 critical finding(s): \
             [kernel-cve-2022-0847] kernel 5.10.101 is affected by Dirty Pipe"
        ),
        "{text}"
    );
    assert!(
        text.contains("; [runsc-host-uds-closed] runsc is registered"),
        "{text}"
    );

    let warnings_only = assess(&this_machine());
    assert!(decide(&warnings_only, true).is_ok());
    assert!(decide(&[], true).is_ok());
}

// --- facts_from: the daemon's answers as this machine's dockerd sends them --

const THIS_MACHINE_VERSION_JSON: &str = r#"{"Platform":{"Name":""},"Components":[{"Name":"Engine","Version":"20.10.24+dfsg1","Details":{"ApiVersion":"1.41","Arch":"amd64","BuildTime":"Thu May  7 21:09:36 2026","Experimental":"false","GitCommit":"5d6db84","GoVersion":"go1.19.8","KernelVersion":"6.18.44-fc-v669","MinAPIVersion":"1.12","Os":"linux"}},{"Name":"containerd","Version":"1.6.20~ds1","Details":{"GitCommit":"1.6.20~ds1-1+deb12u3"}},{"Name":"runc","Version":"1.1.5+ds1","Details":{"GitCommit":"1.1.5+ds1-1+deb12u1"}},{"Name":"docker-init","Version":"0.19.0","Details":{"GitCommit":""}}],"Version":"20.10.24+dfsg1","ApiVersion":"1.41","MinAPIVersion":"1.12","GitCommit":"5d6db84","GoVersion":"go1.19.8","Os":"linux","Arch":"amd64","KernelVersion":"6.18.44-fc-v669","BuildTime":"2026-05-07T21:09:36.000000000+00:00"}"#;

const THIS_MACHINE_INFO_JSON: &str = r#"{"KernelVersion": "6.18.44-fc-v669", "CgroupVersion": "1", "SecurityOptions": ["name=seccomp,profile=default"], "Runtimes": {"io.containerd.runc.v2": {"path": "runc"}, "io.containerd.runtime.v1.linux": {"path": "runc"}, "runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=open", "--oci-seccomp"]}}, "RuncCommit": {"ID": "1.1.5+ds1-1+deb12u1", "Expected": "1.1.5+ds1-1+deb12u1"}, "DefaultRuntime": "runc"}"#;

const RUNSC_FLAGS: &str = "  -platform string\n    \tspecifies which platform to use: ptrace \
                           (default), kvm. (default \"ptrace\")\n";

fn this_machine_outputs() -> CommandOutputs {
    CommandOutputs {
        runc_version: Some(
            "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n".into(),
        ),
        runsc_version: Some("runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n".into()),
        runsc_flags: Some(RUNSC_FLAGS.into()),
    }
}

#[test]
fn maps_this_machines_daemon_answers() {
    let version: SystemVersion = serde_json::from_str(THIS_MACHINE_VERSION_JSON).unwrap();
    let info: SystemInfo = serde_json::from_str(THIS_MACHINE_INFO_JSON).unwrap();
    let facts = facts_from(Some(&version), Some(&info), &this_machine_outputs(), true);
    assert_eq!(facts, this_machine());
}

#[test]
fn maps_without_version_components() {
    // Older daemons report no Components: runc comes from `runc --version`.
    let version = SystemVersion {
        version: Some("19.03.15".into()),
        ..SystemVersion::default()
    };
    let info: SystemInfo = serde_json::from_str(
        r#"{"CgroupVersion": "2", "SecurityOptions": ["name=apparmor", "name=seccomp,profile=default", "name=userns"], "RuncCommit": {"ID": "v1.1.12-0-g51d5e94"}, "Runtimes": {"runsc": {"path": "/usr/local/bin/runsc", "runtimeArgs": ["--platform=systrap", "--network=none"]}}}"#,
    )
    .unwrap();
    let outputs = CommandOutputs {
        runc_version: Some("runc version 1.1.12\ncommit: v1.1.12-0-g51d5e94\n".into()),
        runsc_version: None,
        runsc_flags: Some(RUNSC_FLAGS.into()),
    };
    let facts = facts_from(Some(&version), Some(&info), &outputs, false);
    assert_eq!(
        facts,
        HostFacts {
            docker_version: Some("19.03.15".into()),
            api_version: None,
            runc_version: Some("1.1.12".into()),
            runc_package_version: None,
            kernel_release: String::new(),
            cgroup_version: Some(CgroupVersion::V2),
            seccomp: true,
            apparmor: true,
            userns_remap: true,
            runtimes: strings(&["runsc"]),
            runsc_required: false,
            runsc_version: None,
            runsc_platform: Some("systrap".into()),
            runsc_runtime_args: strings(&["--platform=systrap", "--network=none"]),
        }
    );
}

#[test]
fn maps_an_unreachable_daemon_to_unknowns() {
    let facts = facts_from(None, None, &CommandOutputs::default(), true);
    assert_eq!(
        facts,
        HostFacts {
            runsc_required: true,
            ..HostFacts::default()
        }
    );
    assert_eq!(
        ids(&assess(&facts)),
        vec![
            ("docker-version-unknown", Warning),
            ("docker-seccomp-unavailable", Critical),
            ("docker-apparmor-unavailable", Info),
            ("docker-userns-remap-disabled", Warning),
            ("runc-version-unknown", Warning),
            ("kernel-version-unparsable", Warning),
            ("runsc-missing", Critical),
        ]
    );
}

// --- gather against the real local Docker ----------------------------------

#[tokio::test]
async fn gathers_from_the_real_docker() {
    let sandbox = Sandbox::connect()
        .await
        .expect("this test needs the local docker daemon (deploy/host-setup.sh starts it)");
    let mut facts = gather(&sandbox, true).await;
    // dockerd 20.10 lists the legacy `io.containerd.*` runtime aliases after a
    // start but drops them after a SIGHUP reload (measured: host-setup.sh
    // reloads to register runsc's flags); they are never Kiln's runtimes.
    facts
        .runtimes
        .retain(|name| !name.starts_with("io.containerd."));
    let mut expected = this_machine();
    expected
        .runtimes
        .retain(|name| !name.starts_with("io.containerd."));
    let docker_version = facts
        .docker_version
        .clone()
        .expect("docker reports its version");
    assert!(docker_version.starts_with("20.10"), "{docker_version}");
    assert!(
        facts.runtimes.iter().any(|name| name == "runsc"),
        "{:?}",
        facts.runtimes
    );
    assert!(facts.seccomp);
    assert_eq!(facts, expected);
}

#[tokio::test]
async fn checks_the_real_host_strictly() {
    let sandbox = Sandbox::connect()
        .await
        .expect("this test needs the local docker daemon (deploy/host-setup.sh starts it)");
    // Nothing on this machine is critical, so strict mode starts.
    let findings = check_host(&sandbox, true, true).await.unwrap();
    assert_eq!(findings, assess(&this_machine()));
}

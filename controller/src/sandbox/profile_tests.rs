//! Tests for the hardening profile: a golden snapshot per runtime (review and
//! update with `UPDATE_EXPECT=1 cargo test -p controller profile`) and
//! field-by-field assertions of the security posture.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{
    HostConfigCgroupnsModeEnum, MountBindOptionsPropagationEnum, MountType, RestartPolicyNameEnum,
};
use expect_test::expect_file;

use super::*;

/// A stand-in seccomp profile: the snapshot pins the profile's own fields;
/// `runtime-image/seccomp/kiln.json` is reviewed in its own diff. Its one rule
/// is kiln.json's clone3 rule, which runsc gets adapted
/// ([`seccomp_for_runtime`]).
const FIXTURE_SECCOMP: &str = r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],"syscalls":[{"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"comment":"libc falls back to clone()"}]}"#;

fn fixture_spec(runtime: Runtime) -> ContainerSpec {
    ContainerSpec {
        execution_id: "0b7f6c2e-5a9d-4c1e-9f3a-2d8e7b6a5c41".to_string(),
        image: "kiln-minimal:latest".to_string(),
        runtime,
        limits: SandboxLimits {
            memory_mib: 512,
            cpus_milli: 1000,
            pids: 128,
            work_mib: 256,
            tmp_mib: 64,
            shm_mib: 16,
            nofile: 1024,
            fsize_mib: 256,
            wall_timeout: Duration::from_secs(600),
        },
        step_uid: 200_123,
        step_gid: 200_123,
        socket_dir: PathBuf::from("/run/kiln/0b7f6c2e-5a9d-4c1e-9f3a-2d8e7b6a5c41"),
        instance_label: "kiln-test-instance".to_string(),
        seccomp_json: FIXTURE_SECCOMP.to_string(),
    }
}

#[test]
fn golden_profile_runc() {
    let text = profile(&fixture_spec(Runtime::Runc)).to_snapshot_json();
    expect_file!["snapshots/profile_runc.json"].assert_eq(&text);
}

#[test]
fn golden_profile_runsc() {
    let text = profile(&fixture_spec(Runtime::Runsc)).to_snapshot_json();
    expect_file!["snapshots/profile_runsc.json"].assert_eq(&text);
}

#[test]
fn profile_is_pure() {
    let spec = fixture_spec(Runtime::Runc);
    assert_eq!(profile(&spec), profile(&spec));
    assert_eq!(
        profile(&spec).to_snapshot_json(),
        profile(&spec).to_snapshot_json()
    );
}

#[test]
fn security_fields_one_by_one() {
    for runtime in [Runtime::Runc, Runtime::Runsc] {
        let spec = fixture_spec(runtime);
        let profile = profile(&spec);
        let body = &profile.body;
        let host = body.host_config.as_ref().unwrap();

        assert_eq!(profile.name, "kiln-0b7f6c2e-5a9d-4c1e-9f3a-2d8e7b6a5c41");
        assert_eq!(body.image.as_deref(), Some("kiln-minimal:latest"));
        assert_eq!(body.entrypoint, Some(vec!["/kiln/kiln-agent".to_string()]));
        assert_eq!(body.cmd, None);
        assert_eq!(body.user.as_deref(), Some("0:0"));
        assert_eq!(body.working_dir.as_deref(), Some("/work"));
        assert_eq!(
            body.env,
            Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                "HOME=/work".to_string(),
                "LANG=C.UTF-8".to_string(),
                "KILN_EXECUTION_ID=0b7f6c2e-5a9d-4c1e-9f3a-2d8e7b6a5c41".to_string(),
            ])
        );
        assert_eq!(body.network_disabled, Some(true));
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(
            labels.get("kiln.execution").map(String::as_str),
            Some("0b7f6c2e-5a9d-4c1e-9f3a-2d8e7b6a5c41")
        );
        assert_eq!(
            labels.get("kiln.instance").map(String::as_str),
            Some("kiln-test-instance")
        );

        assert_eq!(host.runtime.as_deref(), Some(runtime.docker_name()));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.dns, Some(vec!["127.0.0.1".to_string()]));
        assert_eq!(host.dns_search, Some(vec![".".to_string()]));
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            host.cap_add,
            Some(vec![
                "SETUID".to_string(),
                "SETGID".to_string(),
                "KILL".to_string()
            ])
        );
        let security_opt = host.security_opt.as_ref().unwrap();
        assert_eq!(security_opt.len(), 2);
        assert_eq!(security_opt[0], "no-new-privileges:true");
        assert_eq!(
            security_opt[1],
            format!("seccomp={}", seccomp_for_runtime(runtime, FIXTURE_SECCOMP))
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.devices, Some(Vec::new()));
        assert_eq!(host.device_cgroup_rules, None);
        assert_eq!(host.masked_paths, None);
        assert_eq!(host.readonly_paths, None);
        assert_eq!(host.ipc_mode.as_deref(), Some("private"));
        assert_eq!(
            host.cgroupns_mode,
            Some(HostConfigCgroupnsModeEnum::PRIVATE)
        );
        assert_eq!(host.pid_mode, None);
        assert_eq!(host.uts_mode, None);
        assert_eq!(host.userns_mode, None);
        assert_eq!(host.binds, None);
        assert_eq!(host.sysctls, None);

        let tmpfs = host.tmpfs.as_ref().unwrap();
        assert_eq!(tmpfs.len(), 2);
        assert_eq!(
            tmpfs.get("/tmp").map(String::as_str),
            Some("rw,noexec,nosuid,nodev,size=64m,mode=1777")
        );
        assert_eq!(
            tmpfs.get("/work").map(String::as_str),
            Some("rw,exec,nosuid,nodev,size=256m,mode=0700,uid=200123,gid=200123")
        );
        assert_eq!(host.shm_size, Some(16 * 1024 * 1024));

        let mounts = host.mounts.as_ref().unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
        assert_eq!(mounts[0].target.as_deref(), Some("/run/kiln"));
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("/run/kiln/0b7f6c2e-5a9d-4c1e-9f3a-2d8e7b6a5c41")
        );
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(
            mounts[0].bind_options.as_ref().unwrap().propagation,
            Some(MountBindOptionsPropagationEnum::RPRIVATE)
        );

        assert_eq!(host.memory, Some(512 * 1024 * 1024));
        assert_eq!(host.memory_swap, host.memory);
        assert_eq!(host.oom_kill_disable, Some(false));
        assert_eq!(host.oom_score_adj, Some(500));
        assert_eq!(host.nano_cpus, Some(1_000_000_000));
        let expected_pids = match runtime {
            Runtime::Runc => 128,
            Runtime::Runsc => 512,
        };
        assert_eq!(host.pids_limit, Some(expected_pids));
        let ulimits: Vec<(String, i64, i64)> = host
            .ulimits
            .as_ref()
            .unwrap()
            .iter()
            .map(|limit| {
                (
                    limit.name.clone().unwrap(),
                    limit.soft.unwrap(),
                    limit.hard.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ulimits,
            vec![
                ("nofile".to_string(), 1024, 1024),
                ("core".to_string(), 0, 0),
                ("fsize".to_string(), 256 * 1024 * 1024, 256 * 1024 * 1024),
            ]
        );

        assert_eq!(
            host.log_config.as_ref().unwrap().typ.as_deref(),
            Some("none")
        );
        assert_eq!(
            host.restart_policy.as_ref().unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        assert_eq!(host.auto_remove, Some(false));
        assert_eq!(host.init, Some(false));
        assert_eq!(host.port_bindings, None);
        assert_eq!(host.volumes_from, None);
    }
}

#[test]
fn runsc_pids_limit_is_sized_from_measurement() {
    // runc: the configured limit is the cgroup limit.
    assert_eq!(host_pids_limit(Runtime::Runc, 64), 64);
    assert_eq!(host_pids_limit(Runtime::Runc, 256), 256);
    // runsc: never in the 64/128 host-task range where the Sentry panics.
    assert_eq!(host_pids_limit(Runtime::Runsc, 0), 512);
    assert_eq!(host_pids_limit(Runtime::Runsc, 128), 512);
    assert_eq!(host_pids_limit(Runtime::Runsc, 512), 512);
    assert_eq!(host_pids_limit(Runtime::Runsc, 1024), 1024);
    // Saturates instead of overflowing.
    assert_eq!(host_pids_limit(Runtime::Runsc, u64::MAX), i64::MAX);
    assert_eq!(host_pids_limit(Runtime::Runc, u64::MAX), i64::MAX);
}

#[test]
fn snapshot_keys_are_sorted() {
    let text = profile(&fixture_spec(Runtime::Runc)).to_snapshot_json();
    let cap_add = text.find("\"CapAdd\"").unwrap();
    let cap_drop = text.find("\"CapDrop\"").unwrap();
    let readonly = text.find("\"ReadonlyRootfs\"").unwrap();
    assert!(cap_add < cap_drop && cap_drop < readonly);
    assert!(text.ends_with("}\n"));
}

/// The rules of a seccomp profile text, for comparing runc's and runsc's.
fn seccomp_rules(text: &str) -> Vec<serde_json::Value> {
    let profile: serde_json::Value = serde_json::from_str(text).unwrap();
    profile["syscalls"].as_array().unwrap().clone()
}

#[test]
fn runc_gets_kilns_seccomp_profile_verbatim() {
    let kiln = crate::sandbox::image::SECCOMP_PROFILE_JSON;
    assert_eq!(seccomp_for_runtime(Runtime::Runc, kiln), kiln);
}

/// Under runsc exactly one rule differs from kiln.json: clone3 is allowed
/// (the Sentry answers ENOSYS itself) instead of `errnoRet: 38`, which
/// gVisor's OCI seccomp would turn into EPERM.
#[test]
fn runsc_gets_kilns_profile_with_clone3_left_to_the_sentry() {
    let kiln = crate::sandbox::image::SECCOMP_PROFILE_JSON;
    let runc_rules = seccomp_rules(kiln);
    let runsc_rules = seccomp_rules(&seccomp_for_runtime(Runtime::Runsc, kiln));
    assert_eq!(runc_rules.len(), runsc_rules.len());
    let differing: Vec<(&serde_json::Value, &serde_json::Value)> = runc_rules
        .iter()
        .zip(&runsc_rules)
        .filter(|(runc, runsc)| runc != runsc)
        .collect();
    assert_eq!(differing.len(), 1, "{differing:#?}");
    let (runc_rule, runsc_rule) = differing[0];
    assert_eq!(runc_rule["names"], serde_json::json!(["clone3"]));
    assert_eq!(runc_rule["errnoRet"], serde_json::json!(38));
    assert_eq!(runsc_rule["names"], serde_json::json!(["clone3"]));
    assert_eq!(runsc_rule["action"], serde_json::json!("SCMP_ACT_ALLOW"));
    assert_eq!(runsc_rule.get("errnoRet"), None);
    let runc_profile: serde_json::Value = serde_json::from_str(kiln).unwrap();
    let runsc_profile: serde_json::Value =
        serde_json::from_str(&seccomp_for_runtime(Runtime::Runsc, kiln)).unwrap();
    for key in ["defaultAction", "defaultErrnoRet", "architectures"] {
        assert_eq!(runc_profile[key], runsc_profile[key], "{key}");
    }
}

/// Only argument-less ENOSYS rules naming Sentry-unimplemented syscalls are
/// rewritten; EPERM rules, other syscalls, rules with args, and text that is
/// not JSON pass through untouched.
#[test]
fn runsc_rewrites_nothing_else() {
    for text in [
        r#"{"syscalls":[{"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        r#"{"syscalls":[{"names":["keyctl"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        r#"{"syscalls":[{"names":["clone3","keyctl"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        r#"{"syscalls":[{"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        r#"{"syscalls":[]}"#,
        "not json",
    ] {
        assert_eq!(seccomp_for_runtime(Runtime::Runsc, text), text);
    }
    assert_eq!(
        seccomp_for_runtime(
            Runtime::Runsc,
            r#"{"syscalls":[{"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"args":[]}]}"#
        ),
        r#"{"syscalls":[{"names":["clone3"],"action":"SCMP_ACT_ALLOW","args":[],"comment":"runsc: gVisor's OCI seccomp ignores errnoRet (EPERM would break libc's clone3 -> clone fallback); allowed, so the Sentry, which does not implement it, answers ENOSYS"}]}"#
    );
}

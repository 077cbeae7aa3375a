//! Cgroup accounting against fake cgroup trees in a temporary directory,
//! with file contents copied from this host (v1) and from the kernel docs (v2).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use super::*;

const ID: &str = "bb13eacbc5e575df3829cd501562262ce7b7376a3e147fced61bc4875f7e11a1";

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn fake_v1(mount: &Path, group: &str, with_peak: bool) {
    let memory = mount.join("memory").join(group);
    write(&memory.join("memory.max_usage_in_bytes"), "15687680\n");
    write(
        &memory.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    );
    write(&memory.join("memory.failcnt"), "0\n");
    write(
        &mount.join("cpuacct").join(group).join("cpuacct.usage"),
        "123456789\n",
    );
    let pids = mount.join("pids").join(group);
    write(&pids.join("pids.current"), "38\n");
    if with_peak {
        write(&pids.join("pids.peak"), "64\n");
    }
    write(&pids.join("pids.events"), "max 17\n");
}

fn fake_v2(mount: &Path, group: &str, with_peak: bool) {
    write(&mount.join("cgroup.controllers"), "cpu memory pids\n");
    let dir = mount.join(group);
    if with_peak {
        write(&dir.join("memory.peak"), "104857600\n");
    }
    write(&dir.join("memory.current"), "52428800\n");
    write(
        &dir.join("memory.events"),
        "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n",
    );
    write(
        &dir.join("cpu.stat"),
        "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
    );
    write(&dir.join("pids.current"), "3\n");
    if with_peak {
        write(&dir.join("pids.peak"), "7\n");
    }
    write(&dir.join("pids.events"), "max 0\n");
}

#[test]
fn detects_layouts() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(CgroupLayout::detect(dir.path()), None);
    fs::create_dir(dir.path().join("memory")).unwrap();
    assert_eq!(
        CgroupLayout::detect(dir.path()),
        Some(CgroupLayout::V1 {
            mount: dir.path().to_path_buf()
        })
    );
    write(&dir.path().join("cgroup.controllers"), "memory\n");
    assert_eq!(
        CgroupLayout::detect(dir.path()),
        Some(CgroupLayout::V2 {
            mount: dir.path().to_path_buf()
        })
    );
}

#[test]
fn reads_v1_cgroupfs() {
    let dir = tempfile::tempdir().unwrap();
    fake_v1(dir.path(), &format!("docker/{ID}"), true);
    let layout = CgroupLayout::V1 {
        mount: dir.path().to_path_buf(),
    };
    assert_eq!(
        layout.read_usage(ID).unwrap(),
        ResourceUsage {
            memory_peak_bytes: 15_687_680,
            cpu_time_ns: 123_456_789,
            pids_current: 38,
            pids_peak: Some(64),
            oom_kills: 2,
            pids_limit_hits: 17,
            source: UsageSource::CgroupV1,
        }
    );
}

#[test]
fn reads_v1_systemd_without_pids_peak() {
    let dir = tempfile::tempdir().unwrap();
    fake_v1(
        dir.path(),
        &format!("system.slice/docker-{ID}.scope"),
        false,
    );
    let layout = CgroupLayout::V1 {
        mount: dir.path().to_path_buf(),
    };
    let usage = layout.read_usage(ID).unwrap();
    assert_eq!(usage.pids_peak, None);
    assert_eq!(usage.oom_kills, 2);
}

#[test]
fn reads_v2_with_and_without_peaks() {
    let dir = tempfile::tempdir().unwrap();
    fake_v2(dir.path(), &format!("docker/{ID}"), true);
    let layout = CgroupLayout::V2 {
        mount: dir.path().to_path_buf(),
    };
    assert_eq!(
        layout.read_usage(ID).unwrap(),
        ResourceUsage {
            memory_peak_bytes: 104_857_600,
            cpu_time_ns: 2_500_000,
            pids_current: 3,
            pids_peak: Some(7),
            oom_kills: 1,
            pids_limit_hits: 0,
            source: UsageSource::CgroupV2,
        }
    );

    let old_kernel = tempfile::tempdir().unwrap();
    fake_v2(old_kernel.path(), &format!("docker/{ID}"), false);
    let layout = CgroupLayout::V2 {
        mount: old_kernel.path().to_path_buf(),
    };
    let usage = layout.read_usage(ID).unwrap();
    assert_eq!(usage.memory_peak_bytes, 52_428_800);
    assert_eq!(usage.pids_peak, None);
}

#[test]
fn missing_cgroup_is_reported_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("memory/docker")).unwrap();
    let layout = CgroupLayout::V1 {
        mount: dir.path().to_path_buf(),
    };
    assert!(matches!(
        layout.read_usage(ID),
        Err(UsageError::CgroupMissing { .. })
    ));
}

#[test]
fn rejects_ids_that_are_not_full_hex() {
    let layout = CgroupLayout::V1 {
        mount: "/sys/fs/cgroup".into(),
    };
    for bad in [
        "",
        "abc",
        "../../../../etc/passwd",
        &ID.to_uppercase(),
        &format!("{}/", &ID[..63]),
        &format!("{ID}0"),
    ] {
        assert!(
            matches!(
                layout.read_usage(bad),
                Err(UsageError::InvalidContainerId { .. })
            ),
            "{bad:?} was accepted"
        );
    }
}

#[test]
fn garbage_is_a_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    fake_v1(dir.path(), &format!("docker/{ID}"), true);
    write(
        &dir.path()
            .join("memory/docker")
            .join(ID)
            .join("memory.max_usage_in_bytes"),
        "lots\n",
    );
    let layout = CgroupLayout::V1 {
        mount: dir.path().to_path_buf(),
    };
    assert!(matches!(
        layout.read_usage(ID),
        Err(UsageError::ParseCgroupFile { .. })
    ));
}

#[test]
fn keyed_parsing() {
    let path = Path::new("x");
    assert_eq!(parse_keyed(path, "max 3\n", "max").unwrap(), 3);
    assert_eq!(parse_keyed(path, "maxx 3\nmax 4\n", "max").unwrap(), 4);
    assert_eq!(
        parse_keyed(path, "oom_kill_disable 0\n", "oom_kill").unwrap(),
        0
    );
    assert_eq!(parse_keyed(path, "", "max").unwrap(), 0);
    assert!(parse_keyed(path, "max\n", "max").is_err());
    assert!(parse_keyed(path, "max -1\n", "max").is_err());
}

#[test]
fn merge_keeps_maxima_and_latest_current() {
    let mut earlier = ResourceUsage {
        memory_peak_bytes: 100,
        cpu_time_ns: 50,
        pids_current: 9,
        pids_peak: Some(12),
        oom_kills: 1,
        pids_limit_hits: 4,
        source: UsageSource::CgroupV1,
    };
    let later = ResourceUsage {
        memory_peak_bytes: 80,
        cpu_time_ns: 70,
        pids_current: 2,
        pids_peak: None,
        oom_kills: 0,
        pids_limit_hits: 6,
        source: UsageSource::DockerStats,
    };
    earlier.merge_later(&later);
    assert_eq!(
        earlier,
        ResourceUsage {
            memory_peak_bytes: 100,
            cpu_time_ns: 70,
            pids_current: 2,
            pids_peak: Some(12),
            oom_kills: 1,
            pids_limit_hits: 6,
            source: UsageSource::DockerStats,
        }
    );
}

//! Runtime images and the seccomp profile against the real Docker daemon.
//!
//! - the seccomp profile (`runtime-image/seccomp/kiln.json`) is well-formed data;
//! - kiln-minimal is under 5 MB, and building twice reuses the image;
//! - a fresh build (unique inputs) really builds, then is reused;
//! - kiln-probe under a hardened container with Kiln's profile gets the exact
//!   errno of every rule, while Docker's default profile allows io_uring,
//!   AF_VSOCK and ia32 syscalls (so the custom profile is what closes them);
//! - kiln-standard has the tools real recipes need;
//! - under runsc (registered with `--oci-seccomp`) the profile applies inside
//!   gVisor too, with the exact errno of every rule, and threads still work;
//! - pruning removes exactly the old images of a family, keeping the current
//!   one, what current images are built on, and what containers use.
//!
//! Inputs come from the environment that xtask sets (`KILN_AGENT_BINARY`,
//! `KILN_PROBE_BINARY`, `KILN_RUNTIME_IMAGE_DIR`), with checkout defaults.
//! Every container a test creates is labelled `kiln.test=<unique>` and removed
//! on drop, even when the test fails. The cached kiln images stay.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListImagesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, WaitContainerOptionsBuilder,
};
use controller::sandbox::image::{
    INPUTS_HASH_LABEL, ImageInputs, ImageKind, ImageRef, SECCOMP_PROFILE_JSON, ensure_image,
    ensure_image_with_progress,
};
use controller::sandbox::profile::{Runtime, seccomp_for_runtime};
use futures::StreamExt;

/// Serialises image builds between the tests of this binary: two parallel
/// builds of the same inputs would both build.
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const STEP_UID: u32 = 200_001;
const WORK_BYTES: u64 = 32 * 1024 * 1024;

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn runtime_image_dir() -> PathBuf {
    std::env::var_os("KILN_RUNTIME_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| checkout().join("runtime-image"))
}

fn agent_binary() -> PathBuf {
    let path = std::env::var_os("KILN_AGENT_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| checkout().join("target/x86_64-unknown-linux-gnu/release/kiln-agent"));
    assert!(
        path.is_file(),
        "no static agent at {} (run `cargo xtask build-agent` or set KILN_AGENT_BINARY)",
        path.display()
    );
    path
}

/// The static probe: `KILN_PROBE_BINARY`, or compiled here with gcc.
fn probe_binary() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("KILN_PROBE_BINARY") {
                return PathBuf::from(path);
            }
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-probe");
            let status = std::process::Command::new("sh")
                .arg(runtime_image_dir().join("probe/build.sh"))
                .arg(&out)
                .status()
                .expect("run runtime-image/probe/build.sh (is gcc installed?)");
            assert!(status.success(), "building the probe failed: {status}");
            out
        })
        .clone()
}

fn inputs() -> ImageInputs {
    ImageInputs::new(agent_binary(), runtime_image_dir()).with_probe(probe_binary())
}

async fn docker() -> Docker {
    let docker = Docker::connect_with_local_defaults().expect("connect to dockerd");
    docker
        .negotiate_version()
        .await
        .expect("dockerd must be running for this test (run deploy/host-setup.sh)")
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Removes containers and images on drop (the test may have panicked), and
/// every container and image labelled `kiln.test=<label>` for each label.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    images: Vec<String>,
    labels: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let containers = std::mem::take(&mut self.containers);
        let images = std::mem::take(&mut self.images);
        let labels = std::mem::take(&mut self.labels);
        // Drop cannot await; a fresh runtime on its own thread can.
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async {
                let docker = docker().await;
                for id in containers {
                    let options = RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .v(true)
                        .build();
                    let _ = docker.remove_container(&id, Some(options)).await;
                }
                for image in images {
                    let options = RemoveImageOptionsBuilder::new().force(true).build();
                    let _ = docker.remove_image(&image, Some(options), None).await;
                }
                for label in labels {
                    remove_labelled(&docker, &label).await;
                }
            });
        });
        let _ = cleaner.join();
    }
}

/// kiln-probe for the current inputs (built once, then reused).
async fn probe_image(docker: &Docker) -> ImageRef {
    let _guard = BUILD_LOCK.lock().await;
    ensure_image(docker, ImageKind::Probe, &inputs())
        .await
        .unwrap()
}

/// Which seccomp profile and runtime a test container runs under.
enum Seccomp {
    /// Kiln's profile, runc.
    Kiln,
    /// Docker's built-in default profile, runc.
    DockerDefault,
    /// Kiln's profile as the controller passes it to runsc
    /// (`seccomp_for_runtime`: clone3 left to the Sentry), applied inside
    /// gVisor because runsc is registered with `--oci-seccomp`.
    KilnOnRunsc,
    /// kiln.json verbatim under runsc: what the controller must not do.
    KilnVerbatimOnRunsc,
}

/// Runs `/kiln/kiln-probe <args>` in a hardened container and returns its output.
async fn run_probe(
    docker: &Docker,
    image: &str,
    seccomp: Seccomp,
    args: &[&str],
    cleanup: &mut Cleanup,
) -> String {
    let mut command = vec!["/kiln/kiln-probe"];
    command.extend_from_slice(args);
    run_hardened(docker, image, seccomp, None, &command, cleanup).await
}

/// Runs `command` as the entrypoint of a hardened container (as the sandbox
/// profile does: step uid, no caps, no-new-privileges, read-only rootfs,
/// network none, tmpfs /work and /tmp, memory and pids limits), asserts that
/// it exits 0 and returns its stdout and stderr. `socket_dir` is bind-mounted
/// read-only at `/run/kiln`, as the agent's socket directory is.
async fn run_hardened(
    docker: &Docker,
    image: &str,
    seccomp: Seccomp,
    socket_dir: Option<&Path>,
    command: &[&str],
    cleanup: &mut Cleanup,
) -> String {
    let test_label = unique("images");
    let mut security_opt = vec!["no-new-privileges:true".to_owned()];
    match seccomp {
        Seccomp::Kiln | Seccomp::KilnVerbatimOnRunsc => {
            security_opt.push(format!("seccomp={SECCOMP_PROFILE_JSON}"));
        }
        Seccomp::KilnOnRunsc => security_opt.push(format!(
            "seccomp={}",
            seccomp_for_runtime(Runtime::Runsc, SECCOMP_PROFILE_JSON)
        )),
        Seccomp::DockerDefault => {}
    }
    let (runtime, pids_limit) = match seccomp {
        // runsc's ptrace platform counts its own host threads against the
        // pids limit and panics at 64-128 (measured): give it room.
        Seccomp::KilnOnRunsc | Seccomp::KilnVerbatimOnRunsc => (Some("runsc".to_owned()), 1024),
        Seccomp::Kiln | Seccomp::DockerDefault => (None, 128),
    };
    let host_config = HostConfig {
        network_mode: Some("none".to_owned()),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(security_opt),
        tmpfs: Some(HashMap::from([
            (
                "/work".to_owned(),
                format!(
                    "rw,exec,nosuid,nodev,size={WORK_BYTES},mode=0700,uid={STEP_UID},gid={STEP_UID}"
                ),
            ),
            (
                "/tmp".to_owned(),
                "rw,noexec,nosuid,nodev,size=16m,mode=1777".to_owned(),
            ),
        ])),
        memory: Some(256 * 1024 * 1024),
        memory_swap: Some(256 * 1024 * 1024),
        pids_limit: Some(pids_limit),
        nano_cpus: Some(1_000_000_000),
        runtime,
        mounts: socket_dir.map(|dir| {
            vec![Mount {
                target: Some("/run/kiln".to_owned()),
                source: Some(dir.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }]
        }),
        // The daemon's default log driver is `none`; this test reads the
        // probe's few KB of output back through the logs.
        log_config: Some(bollard::models::HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([("max-size".to_owned(), "1m".to_owned())])),
        }),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        user: Some(format!("{STEP_UID}:{STEP_UID}")),
        entrypoint: Some(command.iter().map(|part| (*part).to_owned()).collect()),
        env: Some(vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
            "HOME=/work".to_owned(),
            "LANG=C.UTF-8".to_owned(),
        ]),
        working_dir: Some("/work".to_owned()),
        network_disabled: Some(true),
        labels: Some(HashMap::from([(
            "kiln.test".to_owned(),
            test_label.clone(),
        )])),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new()
        .name(&test_label)
        .build();
    let created = docker
        .create_container(Some(options), body)
        .await
        .expect("create test container");
    cleanup.containers.push(created.id.clone());
    docker
        .start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .expect("start test container");
    let wait = async {
        let mut stream = docker.wait_container(
            &created.id,
            Some(
                WaitContainerOptionsBuilder::new()
                    .condition("not-running")
                    .build(),
            ),
        );
        let mut exit_code = None;
        while let Some(item) = stream.next().await {
            exit_code = Some(match item {
                Ok(response) => response.status_code,
                Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => code,
                Err(error) => panic!("wait for test container: {error}"),
            });
        }
        exit_code
    };
    let exit_code = tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .expect("test container finished within 120 s");
    assert_eq!(exit_code, Some(0), "exit code of {command:?}");
    let mut logs = docker.logs(
        &created.id,
        Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
    );
    let mut output = String::new();
    while let Some(chunk) = logs.next().await {
        output.push_str(&chunk.expect("read container logs").to_string());
    }
    output
}

/// `check <name> <outcome>` and `info <name> <value>` lines, by name.
/// Removes every container, then every image, labelled `kiln.test=<label>`.
/// Images built on others must go first: passes repeat while one removes
/// something.
async fn remove_labelled(docker: &Docker, label: &str) {
    let filters = HashMap::from([("label".to_owned(), vec![format!("kiln.test={label}")])]);
    let containers = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_default();
    for container in containers.into_iter().filter_map(|container| container.id) {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let _ = docker.remove_container(&container, Some(options)).await;
    }
    loop {
        let images = docker
            .list_images(Some(
                ListImagesOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        let mut n_removed = 0;
        for image in &images {
            let options = RemoveImageOptionsBuilder::new().force(true).build();
            if docker
                .remove_image(&image.id, Some(options), None)
                .await
                .is_ok()
            {
                n_removed += 1;
            }
        }
        if n_removed == 0 {
            break;
        }
    }
}

fn parse_probe(output: &str) -> BTreeMap<String, String> {
    let mut lines = BTreeMap::new();
    for line in output.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(kind), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if kind == "check" || kind == "info" {
            lines.insert(name.to_owned(), value.to_owned());
        }
    }
    lines
}

fn assert_outcomes(results: &BTreeMap<String, String>, expected: &[(&str, &str)], profile: &str) {
    let mut wrong = Vec::new();
    for (name, outcome) in expected {
        match results.get(*name) {
            Some(actual) if actual == outcome => {}
            actual => wrong.push(format!("{name}: expected {outcome}, got {actual:?}")),
        }
    }
    assert!(wrong.is_empty(), "under {profile}:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------

/// Names that Kiln's profile denies outright; none may appear in an allow rule.
const KILN_DENIED: &[&str] = &[
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "socketcall",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    "name_to_handle_at",
];

#[test]
fn seccomp_profile_is_commented_data_that_denies_what_it_says() {
    let profile: serde_json::Value = serde_json::from_str(SECCOMP_PROFILE_JSON).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(profile["defaultErrnoRet"], 1);
    assert_eq!(
        profile["architectures"],
        serde_json::json!(["SCMP_ARCH_X86_64"])
    );
    assert!(
        profile.get("archMap").is_none(),
        "archMap would re-add x86/x32"
    );
    let rules = profile["syscalls"].as_array().unwrap();
    let mut socket_families = Vec::new();
    for rule in rules {
        let comment = rule["comment"].as_str().unwrap_or("");
        assert!(comment.len() > 20, "rule without a real comment: {rule}");
        assert!(
            rule.get("includes").is_none() && rule.get("excludes").is_none(),
            "{rule}"
        );
        let names: Vec<&str> = rule["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        if rule["action"] == "SCMP_ACT_ALLOW" {
            for denied in KILN_DENIED {
                assert!(!names.contains(denied), "{denied} is allowed by {rule}");
            }
            if names.contains(&"socket") {
                let args = rule["args"]
                    .as_array()
                    .expect("socket is only allowed with argument checks");
                assert_eq!(args[0]["index"], 0);
                assert_eq!(args[0]["op"], "SCMP_CMP_EQ");
                socket_families.push(args[0]["value"].as_u64().unwrap());
                if args[0]["value"] == 16 {
                    assert_eq!(
                        args[1],
                        serde_json::json!({"index": 2, "value": 0, "op": "SCMP_CMP_EQ"})
                    );
                } else {
                    assert_eq!(args.len(), 1);
                }
            }
        }
    }
    assert_eq!(
        socket_families,
        vec![1, 2, 10, 16],
        "AF_UNIX, AF_INET, AF_INET6, AF_NETLINK(route)"
    );
    for denied in KILN_DENIED {
        let explicit = rules.iter().any(|rule| {
            rule["action"] == "SCMP_ACT_ERRNO"
                && rule["errnoRet"] == 1
                && rule["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|name| name == denied)
        });
        assert!(explicit, "{denied} has no explicit, commented EPERM rule");
    }
}

#[tokio::test]
async fn minimal_image_is_under_5_mb_and_reused_when_unchanged() {
    let docker = docker().await;
    let _guard = BUILD_LOCK.lock().await;
    let inputs = inputs();
    let first = ensure_image(&docker, ImageKind::Minimal, &inputs)
        .await
        .unwrap();
    let second = ensure_image(&docker, ImageKind::Minimal, &inputs)
        .await
        .unwrap();
    assert!(second.reused, "second ensure_image must reuse the image");
    assert_eq!(second.id, first.id);
    assert_eq!(second.tag, first.tag);
    assert_eq!(
        first.tag,
        format!("kiln-minimal:{}", &first.inputs_hash[..12])
    );
    let inspected = docker.inspect_image(&first.tag).await.unwrap();
    assert_eq!(inspected.id.as_deref(), Some(first.id.as_str()));
    let size = inspected.size.unwrap();
    let agent_bytes = std::fs::metadata(agent_binary()).unwrap().len();
    assert!(
        size < 5_000_000,
        "kiln-minimal is {size} bytes, of which the agent is {agent_bytes}: busybox takes 2.0 MB, \
         so the agent must stay under ~3.0 MB (measured: opt-level=\"s\", lto=\"fat\", \
         codegen-units=1, strip=\"symbols\" give 2.57 MB; see runtime-image/README.md)"
    );
    let labels = inspected.config.unwrap().labels.unwrap();
    assert_eq!(labels.get(INPUTS_HASH_LABEL), Some(&first.inputs_hash));
    assert_eq!(
        labels.get("kiln.image").map(String::as_str),
        Some("minimal")
    );
    let latest = docker.inspect_image("kiln-minimal:latest").await.unwrap();
    assert_eq!(latest.id.as_deref(), Some(first.id.as_str()));
}

/// A Dockerfile no other run has seen forces a real build; the next call
/// reuses it. The test image is labelled kiln.test and removed.
#[tokio::test]
async fn fresh_inputs_build_once_then_reuse() {
    let docker = docker().await;
    let _guard = BUILD_LOCK.lock().await;
    let test_label = unique("images-fresh");
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime-image");
    std::fs::create_dir_all(runtime.join("minimal")).unwrap();
    for file in ["Dockerfile", "passwd", "group"] {
        std::fs::copy(
            runtime_image_dir().join("minimal").join(file),
            runtime.join("minimal").join(file),
        )
        .unwrap();
    }
    let dockerfile = runtime.join("minimal/Dockerfile");
    let mut text = std::fs::read_to_string(&dockerfile).unwrap();
    text.push_str(&format!("LABEL kiln.test={test_label}\n"));
    std::fs::write(&dockerfile, text).unwrap();
    let inputs = ImageInputs::new(agent_binary(), &runtime);

    let mut progress = Vec::new();
    let built =
        ensure_image_with_progress(&docker, ImageKind::Minimal, &inputs, &mut |line: &str| {
            progress.push(line.to_owned())
        })
        .await
        .unwrap();
    let _cleanup = Cleanup {
        containers: Vec::new(),
        images: vec![built.id.clone()],
        labels: Vec::new(),
    };
    assert!(!built.reused, "unique inputs must be built: {progress:#?}");
    assert_eq!(
        progress.first().map(String::as_str),
        Some(format!("kiln-minimal: building {}", built.tag).as_str())
    );
    assert!(
        progress.iter().any(|line| line.contains("Step 1/")),
        "build output is reported: {progress:#?}"
    );
    assert_eq!(
        progress.last().map(String::as_str),
        Some(format!("kiln-minimal: built {} ({})", built.tag, built.id).as_str())
    );

    let again = ensure_image(&docker, ImageKind::Minimal, &inputs)
        .await
        .unwrap();
    assert!(again.reused);
    assert_eq!(again.id, built.id);
    let labels = docker
        .inspect_image(&built.id)
        .await
        .unwrap()
        .config
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(labels.get("kiln.test"), Some(&test_label));
    // `latest` moved to the test image; put it back on the real inputs' image.
    ensure_image(&docker, ImageKind::Minimal, &self::inputs())
        .await
        .unwrap();
}

/// Expected outcomes of `kiln-probe seccomp net abi` under Kiln's profile, as
/// the step uid with no capabilities (catalogue rows 17-22, 31-33).
const KILN_PROFILE_OUTCOMES: &[(&str, &str)] = &[
    // Kiln's additions to Docker's default.
    ("io_uring_setup", "errno=EPERM"),
    ("io_uring_enter", "errno=EPERM"),
    ("io_uring_register", "errno=EPERM"),
    ("socket.vsock", "errno=EPERM"),
    ("socket.alg", "errno=EPERM"),
    ("socket.packet", "errno=EPERM"),
    ("socket.bluetooth", "errno=EPERM"),
    ("socket.xdp", "errno=EPERM"),
    ("socket.key", "errno=EPERM"),
    ("socket.tipc", "errno=EPERM"),
    ("socket.rds", "errno=EPERM"),
    ("socket.netlink_netfilter", "errno=EPERM"),
    ("socket.netlink_audit", "errno=EPERM"),
    ("socket.netlink_uevent", "errno=EPERM"),
    ("ptrace.traceme", "errno=EPERM"),
    ("ptrace.attach_child", "errno=EPERM"),
    ("process_vm_readv", "errno=EPERM"),
    ("process_vm_writev", "errno=EPERM"),
    ("kcmp", "errno=EPERM"),
    ("pidfd_getfd", "errno=EPERM"),
    ("name_to_handle_at", "errno=EPERM"),
    ("fsopen", "errno=EPERM"),
    ("fsconfig", "errno=EPERM"),
    ("fsmount", "errno=EPERM"),
    ("fspick", "errno=EPERM"),
    ("open_tree", "errno=EPERM"),
    ("move_mount", "errno=EPERM"),
    ("mount_setattr", "errno=EPERM"),
    ("ia32.getpid", "killed=SIGSYS"),
    ("ia32.unshare", "killed=SIGSYS"),
    ("ia32.keyctl", "killed=SIGSYS"),
    ("ia32.setuid32", "killed=SIGSYS"),
    ("ia32.socketcall", "killed=SIGSYS"),
    ("ia32.io_uring_setup", "killed=SIGSYS"),
    ("x32.getpid", "killed=SIGSYS"),
    ("x32.unshare", "killed=SIGSYS"),
    // Still allowed: what ordinary programs need.
    ("socket.unix", "ok"),
    ("socket.inet", "ok"),
    ("socket.inet6", "ok"),
    ("socket.netlink_route", "ok"),
    ("tcp.loopback_port_9", "errno=ECONNREFUSED"),
    ("memfd_create", "ok"),
    // Unknown syscalls: runc answers ENOSYS; clone3 is ENOSYS by rule.
    ("syscall_1000", "errno=ENOSYS"),
    ("clone3", "errno=ENOSYS"),
    // Denied by Docker's default too (and by the dropped capabilities).
    ("socket.inet_raw", "errno=EPERM"),
    ("keyctl", "errno=EPERM"),
    ("add_key", "errno=EPERM"),
    ("request_key", "errno=EPERM"),
    ("bpf", "errno=EPERM"),
    ("perf_event_open", "errno=EPERM"),
    ("userfaultfd", "errno=EPERM"),
    ("unshare.newuser", "errno=EPERM"),
    ("unshare.newns", "errno=EPERM"),
    ("unshare.newnet", "errno=EPERM"),
    ("clone.newuser", "errno=EPERM"),
    ("setns", "errno=EPERM"),
    ("mount.tmpfs", "errno=EPERM"),
    ("mount.remount_root", "errno=EPERM"),
    ("umount2", "errno=EPERM"),
    ("pivot_root", "errno=EPERM"),
    ("chroot", "errno=EPERM"),
    ("mknod.char_mem", "errno=EPERM"),
    ("init_module", "errno=EPERM"),
    ("finit_module", "errno=EPERM"),
    ("delete_module", "errno=EPERM"),
    ("kexec_load", "errno=EPERM"),
    ("kexec_file_load", "errno=EPERM"),
    ("reboot", "errno=EPERM"),
    ("clock_settime", "errno=EPERM"),
    ("settimeofday", "errno=EPERM"),
    ("adjtimex.set", "errno=EPERM"),
    ("sethostname", "errno=EPERM"),
    ("setdomainname", "errno=EPERM"),
    ("syslog", "errno=EPERM"),
    ("iopl", "errno=EPERM"),
    ("ioperm", "errno=EPERM"),
    ("swapon", "errno=EPERM"),
    ("swapoff", "errno=EPERM"),
    ("acct", "errno=EPERM"),
    ("open_by_handle_at", "errno=EPERM"),
    ("fanotify_init", "errno=EPERM"),
    ("quotactl", "errno=EPERM"),
    ("lookup_dcookie", "errno=EPERM"),
    ("personality.addr_no_randomize", "errno=EPERM"),
    ("setuid0", "errno=EPERM"),
    ("setgid0", "errno=EPERM"),
    ("setgroups", "errno=EPERM"),
];

/// Under Docker's own default profile (same user, caps and flags), these are
/// allowed: the proof that Kiln's profile is what closes them.
const DOCKER_DEFAULT_OUTCOMES: &[(&str, &str)] = &[
    ("io_uring_setup", "ok"),
    ("socket.vsock", "ok"),
    ("socket.netlink_netfilter", "ok"),
    ("ptrace.traceme", "ok"),
    ("ptrace.attach_child", "ok"),
    ("ia32.getpid", "ok"),
    // ... while the classic denials hold there too.
    ("keyctl", "errno=EPERM"),
    ("unshare.newuser", "errno=EPERM"),
    ("fsopen", "errno=EPERM"),
];

#[tokio::test]
async fn probe_gets_the_exact_errno_of_every_rule_of_kilns_profile() {
    let docker = docker().await;
    let image = probe_image(&docker).await;
    let mut cleanup = Cleanup::default();

    let kiln = run_probe(&docker, &image.tag, Seccomp::Kiln, &["all"], &mut cleanup).await;
    let results = parse_probe(&kiln);
    assert_outcomes(&results, KILN_PROFILE_OUTCOMES, "Kiln's profile");
    // Every syscall attempt the probe makes has an asserted outcome here.
    let seccomp_checks = run_probe(
        &docker,
        &image.tag,
        Seccomp::Kiln,
        &["seccomp"],
        &mut cleanup,
    )
    .await;
    for name in parse_probe(&seccomp_checks).keys() {
        assert!(
            KILN_PROFILE_OUTCOMES
                .iter()
                .any(|(expected, _)| expected == name),
            "probe check {name} has no expected outcome"
        );
    }
    // The hardened container itself, as the probe sees it.
    assert_outcomes(
        &results,
        &[
            ("uid", "200001"),
            ("gid", "200001"),
            ("CapEff", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("NoNewPrivs", "1"),
            ("Seccomp", "2"),
            ("prctl.no_new_privs", "1"),
            ("prctl.seccomp_mode", "2"),
            ("interfaces", "lo"),
            ("rootfs.create", "errno=EROFS"),
            ("rootfs.mkdir", "errno=EROFS"),
            ("stat./work", "mode=0700 uid=200001 gid=200001"),
            ("cgroup.pids.max", "128"),
            ("cgroup.memory.limit", "268435456"),
            ("cgroup.memory.swap_limit", "268435456"),
            ("cgroup.cpu.quota", "100000"),
            ("cgroup.cpu.period", "100000"),
        ],
        "the hardened test container",
    );
    let work = results.get("statfs./work").unwrap();
    assert!(
        work.starts_with(&format!("bytes={WORK_BYTES} type=0x1021994 ro=0 noexec=0")),
        "{work}"
    );
    let tmp = results.get("statfs./tmp").unwrap();
    assert!(
        tmp.starts_with("bytes=16777216 type=0x1021994 ro=0 noexec=1"),
        "{tmp}"
    );

    let default = run_probe(
        &docker,
        &image.tag,
        Seccomp::DockerDefault,
        &["all"],
        &mut cleanup,
    )
    .await;
    assert_outcomes(
        &parse_probe(&default),
        DOCKER_DEFAULT_OUTCOMES,
        "Docker's default profile",
    );
}

#[tokio::test]
async fn standard_image_has_the_tools_recipes_need() {
    let docker = docker().await;
    let mut progress = Vec::new();
    let image = {
        let _guard = BUILD_LOCK.lock().await;
        ensure_image_with_progress(
            &docker,
            ImageKind::Standard,
            &inputs(),
            &mut |line: &str| progress.push(line.to_owned()),
        )
        .await
        .unwrap()
    };
    let inspected = docker.inspect_image(&image.tag).await.unwrap();
    let config = inspected.config.unwrap();
    assert_eq!(config.entrypoint, Some(vec!["/kiln/kiln-agent".to_owned()]));
    assert_eq!(config.working_dir.as_deref(), Some("/work"));
    assert_eq!(
        config.labels.unwrap().get("kiln.image").map(String::as_str),
        Some("standard")
    );

    // The tools, run as the step uid under Kiln's profile.
    let mut cleanup = Cleanup::default();
    let script = "set -e; bash -c 'echo bash=$BASH_VERSINFO'; \
                  python3 -c 'import yaml, ssl; print(\"yaml=\" + yaml.safe_dump({\"a\": 1}).strip())'; \
                  echo '{\"x\":2}' | jq -c .x; git --version | cut -d' ' -f1-2; \
                  test -s /etc/ssl/certs/ca-certificates.crt && echo certs=ok; \
                  test ! -e /usr/share/doc/bash && echo docs=trimmed";
    let output = run_hardened(
        &docker,
        &image.tag,
        Seccomp::Kiln,
        None,
        &["/bin/sh", "-c", script],
        &mut cleanup,
    )
    .await;
    assert_eq!(
        output, "bash=5\nyaml=a: 1\n2\ngit version\ncerts=ok\ndocs=trimmed\n",
        "progress: {progress:#?}"
    );
}

/// The agent's socket directory as the controller lays it out (contract C:
/// dir root 0711, socket root 0600, token root 0400, bind-mounted read-only):
/// the step uid can neither connect, read the token, nor change the directory.
#[tokio::test]
async fn step_uid_cannot_use_the_agents_socket_dir() {
    use std::os::unix::fs::PermissionsExt;
    let docker = docker().await;
    let image = probe_image(&docker).await;
    let dir = tempfile::tempdir().unwrap();
    let socket_dir = dir.path().join("exec");
    std::fs::create_dir(&socket_dir).unwrap();
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(socket_dir.join("agent.sock")).unwrap();
    std::fs::set_permissions(
        socket_dir.join("agent.sock"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(socket_dir.join("token"), "not-a-real-token").unwrap();
    std::fs::set_permissions(
        socket_dir.join("token"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();

    let mut cleanup = Cleanup::default();
    let output = run_hardened(
        &docker,
        &image.tag,
        Seccomp::Kiln,
        Some(&socket_dir),
        &["/kiln/kiln-probe", "secrets"],
        &mut cleanup,
    )
    .await;
    assert_outcomes(
        &parse_probe(&output),
        &[
            ("agent.connect_socket", "errno=EACCES"),
            ("agent.read_token", "errno=EACCES"),
            ("agent.create_in_socket_dir", "errno=EROFS"),
            ("agent.unlink_socket", "errno=EROFS"),
            // PID 1 is the probe itself here (same uid, no agent): ptrace is
            // still denied by the profile.
            ("agent.ptrace_seize_pid1", "errno=EPERM"),
        ],
        "Kiln's profile with the socket dir mounted",
    );
}

/// Every outcome of `kiln-probe net seccomp abi` under runsc (Debian's
/// 0.0~20221219, ptrace platform, registered with `--oci-seccomp`) with
/// Kiln's profile as the controller passes it. gVisor applies the profile to
/// every guest syscall before the Sentry sees it, and its OCI seccomp answers
/// EPERM for every ERRNO rule (it ignores `errnoRet`). Where the answer
/// differs from runc's, the comment says why.
const KILN_PROFILE_OUTCOMES_RUNSC: &[(&str, &str)] = &[
    ("socket.unix", "ok"),
    ("socket.inet", "ok"),
    ("socket.inet6", "ok"),
    ("socket.inet_raw", "errno=EPERM"),
    // ICMP datagram sockets are allowed by the profile (AF_INET) and
    // implemented by gVisor's netstack.
    ("socket.inet_icmp", "ok"),
    ("socket.packet", "errno=EPERM"),
    ("socket.netlink_route", "ok"),
    ("socket.netlink_netfilter", "errno=EPERM"),
    ("socket.netlink_audit", "errno=EPERM"),
    ("socket.netlink_uevent", "errno=EPERM"),
    ("socket.vsock", "errno=EPERM"),
    ("socket.alg", "errno=EPERM"),
    ("socket.bluetooth", "errno=EPERM"),
    ("socket.xdp", "errno=EPERM"),
    ("socket.key", "errno=EPERM"),
    ("socket.tipc", "errno=EPERM"),
    ("socket.rds", "errno=EPERM"),
    ("tcp.loopback_port_9", "errno=ECONNREFUSED"),
    ("io_uring_setup", "errno=EPERM"),
    ("io_uring_enter", "errno=EPERM"),
    ("io_uring_register", "errno=EPERM"),
    ("ptrace.traceme", "errno=EPERM"),
    ("ptrace.attach_child", "errno=EPERM"),
    ("process_vm_readv", "errno=EPERM"),
    ("process_vm_writev", "errno=EPERM"),
    ("kcmp", "errno=EPERM"),
    // The probe needs a pidfd first: pidfd_open is allowed and the 2022
    // Sentry does not implement it.
    ("pidfd_getfd", "errno=ENOSYS"),
    ("name_to_handle_at", "errno=EPERM"),
    ("fsopen", "errno=EPERM"),
    ("fsconfig", "errno=EPERM"),
    ("fsmount", "errno=EPERM"),
    ("fspick", "errno=EPERM"),
    ("open_tree", "errno=EPERM"),
    ("move_mount", "errno=EPERM"),
    ("mount_setattr", "errno=EPERM"),
    ("keyctl", "errno=EPERM"),
    ("add_key", "errno=EPERM"),
    ("request_key", "errno=EPERM"),
    ("bpf", "errno=EPERM"),
    ("perf_event_open", "errno=EPERM"),
    ("userfaultfd", "errno=EPERM"),
    ("unshare.newuser", "errno=EPERM"),
    ("unshare.newns", "errno=EPERM"),
    ("unshare.newnet", "errno=EPERM"),
    ("clone.newuser", "errno=EPERM"),
    // Allowed for runsc by `seccomp_for_runtime`; the Sentry answers ENOSYS
    // itself, so libc falls back to clone().
    ("clone3", "errno=ENOSYS"),
    // The probe opens /proc/self/ns/* first: gVisor has no such files.
    ("setns", "errno=ENOENT"),
    ("mount.tmpfs", "errno=EPERM"),
    ("mount.remount_root", "errno=EPERM"),
    ("umount2", "errno=EPERM"),
    ("pivot_root", "errno=EPERM"),
    ("chroot", "errno=EPERM"),
    // mknod is in Docker's allow list; the Sentry creates an inert node
    // (no host device is reachable).
    ("mknod.char_mem", "ok"),
    ("init_module", "errno=EPERM"),
    ("finit_module", "errno=EPERM"),
    ("delete_module", "errno=EPERM"),
    ("kexec_load", "errno=EPERM"),
    ("kexec_file_load", "errno=EPERM"),
    ("reboot", "errno=EPERM"),
    ("clock_settime", "errno=EPERM"),
    ("settimeofday", "errno=EPERM"),
    ("adjtimex.set", "errno=EPERM"),
    ("sethostname", "errno=EPERM"),
    ("setdomainname", "errno=EPERM"),
    ("syslog", "errno=EPERM"),
    ("iopl", "errno=EPERM"),
    ("ioperm", "errno=EPERM"),
    ("swapon", "errno=EPERM"),
    ("swapoff", "errno=EPERM"),
    ("acct", "errno=EPERM"),
    ("open_by_handle_at", "errno=EPERM"),
    ("fanotify_init", "errno=EPERM"),
    ("quotactl", "errno=EPERM"),
    ("lookup_dcookie", "errno=EPERM"),
    ("personality.addr_no_randomize", "errno=EPERM"),
    ("setuid0", "errno=EPERM"),
    ("setgid0", "errno=EPERM"),
    ("setgroups", "errno=EPERM"),
    ("memfd_create", "ok"),
    // gVisor's filter has no runc-style ENOSYS stub for unknown numbers: the
    // default action (EPERM) answers.
    ("syscall_1000", "errno=EPERM"),
    // gVisor ignores the profile's `architectures` and, on the ptrace
    // platform, decodes `int 0x80` with x86-64 numbers: ia32 getpid (20) is
    // writev (EBADF), unshare (310) is process_vm_readv (denied), keyctl (288)
    // is accept4 (EINVAL), setuid32 (213) is epoll_create and socketcall (102)
    // is getuid (both allowed and harmless), io_uring_setup (425) is the same
    // number (denied). All of it stays inside the Sentry.
    ("ia32.getpid", "errno=EBADF"),
    ("ia32.unshare", "errno=EPERM"),
    ("ia32.keyctl", "errno=EINVAL"),
    ("ia32.setuid32", "ok"),
    ("ia32.socketcall", "ok"),
    ("ia32.io_uring_setup", "errno=EPERM"),
    ("x32.getpid", "errno=EPERM"),
    ("x32.unshare", "errno=EPERM"),
];

/// runsc is registered with `--oci-seccomp`, so Kiln's profile applies inside
/// gVisor as well: the probe sees `Seccomp: 2` and gets the exact errno of
/// every rule (without the flag the Sentry answered io_uring, ptrace and
/// unshare itself, with `Seccomp: 0`).
#[tokio::test]
async fn under_runsc_kilns_profile_applies_inside_the_sentry() {
    let docker = docker().await;
    let image = probe_image(&docker).await;
    let mut cleanup = Cleanup::default();
    let output = run_probe(
        &docker,
        &image.tag,
        Seccomp::KilnOnRunsc,
        &["identity"],
        &mut cleanup,
    )
    .await;
    assert_outcomes(
        &parse_probe(&output),
        &[
            ("Seccomp", "2"),
            ("prctl.seccomp_mode", "2"),
            ("CapEff", "0000000000000000"),
            // gVisor's /proc/self/status has no NoNewPrivs line; prctl knows.
            ("NoNewPrivs", "absent"),
            ("prctl.no_new_privs", "1"),
        ],
        "runsc",
    );
    let mut checks = BTreeMap::new();
    let mut check_names = Vec::new();
    for subcommand in ["net", "seccomp", "abi"] {
        let output = run_probe(
            &docker,
            &image.tag,
            Seccomp::KilnOnRunsc,
            &[subcommand],
            &mut cleanup,
        )
        .await;
        checks.extend(parse_probe(&output));
        check_names.extend(output.lines().filter_map(|line| {
            let rest = line.strip_prefix("check ")?;
            rest.split(' ').next().map(str::to_owned)
        }));
    }
    assert_outcomes(&checks, KILN_PROFILE_OUTCOMES_RUNSC, "runsc");
    assert_outcomes(&checks, &[("interfaces", "lo")], "runsc");
    // Every attempt the probe makes has an asserted outcome here.
    assert!(check_names.len() >= KILN_PROFILE_OUTCOMES_RUNSC.len());
    for name in &check_names {
        assert!(
            KILN_PROFILE_OUTCOMES_RUNSC
                .iter()
                .any(|(expected, _)| expected == name),
            "probe check {name} has no expected runsc outcome"
        );
    }
}

/// Why the controller adapts the clone3 rule for runsc: with kiln.json
/// verbatim, gVisor answers EPERM instead of the rule's ENOSYS, glibc does not
/// fall back to clone(), and every thread creation fails. With the profile as
/// the controller passes it, Python threads work.
#[tokio::test]
async fn under_runsc_threads_work_only_with_the_adapted_profile() {
    let docker = docker().await;
    let image = {
        let _guard = BUILD_LOCK.lock().await;
        ensure_image(&docker, ImageKind::Standard, &inputs())
            .await
            .unwrap()
    };
    let mut cleanup = Cleanup::default();
    let script = "import threading\n\
                  try:\n    \
                      thread = threading.Thread(target=print, args=('thread ok',))\n    \
                      thread.start()\n    \
                      thread.join()\n\
                  except RuntimeError as error:\n    \
                      print(error)\n";
    let verbatim = run_hardened(
        &docker,
        &image.tag,
        Seccomp::KilnVerbatimOnRunsc,
        None,
        &["python3", "-c", script],
        &mut cleanup,
    )
    .await;
    assert_eq!(verbatim, "can't start new thread\n");
    let adapted = run_hardened(
        &docker,
        &image.tag,
        Seccomp::KilnOnRunsc,
        None,
        &["python3", "-c", script],
        &mut cleanup,
    )
    .await;
    assert_eq!(adapted, "thread ok\n");
}

/// A Dockerfile step that fails surfaces as `BuildFailed`, naming the image
/// and quoting the builder's message; nothing is tagged.
#[tokio::test]
async fn a_failing_build_names_the_image_and_the_cause() {
    let docker = docker().await;
    let _guard = BUILD_LOCK.lock().await;
    let test_label = unique("images-failing");
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime-image");
    std::fs::create_dir_all(runtime.join("minimal")).unwrap();
    for file in ["passwd", "group"] {
        std::fs::copy(
            runtime_image_dir().join("minimal").join(file),
            runtime.join("minimal").join(file),
        )
        .unwrap();
    }
    std::fs::write(
        runtime.join("minimal/Dockerfile"),
        format!(
            "FROM scratch\nLABEL kiln.test={test_label}\nCOPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"false\"]\n"
        ),
    )
    .unwrap();
    let inputs = ImageInputs::new(agent_binary(), &runtime);
    let hash = controller::sandbox::image::inputs_hash(ImageKind::Minimal, &inputs).unwrap();

    let result = ensure_image(&docker, ImageKind::Minimal, &inputs).await;
    // The legacy builder keeps the layers of a failed build; they carry the
    // test label (LABEL comes first), so they can be found and removed.
    let mut cleanup = Cleanup::default();
    let filters = HashMap::from([("label".to_owned(), vec![format!("kiln.test={test_label}")])]);
    let leftovers = docker
        .list_images(Some(
            ListImagesOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    cleanup
        .images
        .extend(leftovers.into_iter().map(|image| image.id));
    let error = result.expect_err("the RUN step fails");
    let message = error.to_string();
    assert!(
        message.starts_with("build image kiln-minimal: ")
            && message.contains("returned a non-zero code: 1"),
        "{message}"
    );
    let tag = format!("kiln-minimal:{}", &hash[..12]);
    assert!(
        docker.inspect_image(&tag).await.is_err(),
        "{tag} must not exist"
    );
}

/// kiln-minimal's busybox works as the step uid on the read-only rootfs: the
/// applets are installed (with /usr/bin/env for shebangs), /work is writable,
/// the rootfs is not, and the uid has no passwd entry by design.
#[tokio::test]
async fn minimal_image_runs_busybox_as_the_step_uid() {
    let docker = docker().await;
    let image = {
        let _guard = BUILD_LOCK.lock().await;
        ensure_image(&docker, ImageKind::Minimal, &inputs())
            .await
            .unwrap()
    };
    let mut cleanup = Cleanup::default();
    let script = "id -u; echo \"home=$HOME pwd=$(pwd)\"; \
                  printf '#!/usr/bin/env sh\\necho shebang-ok\\n' > /work/s && chmod +x /work/s && /work/s; \
                  touch /evil 2>/dev/null || echo rootfs=read-only; \
                  whoami 2>/dev/null || echo no-passwd-entry; \
                  ls -ld /kiln/kiln-agent | cut -c1-10";
    let output = run_hardened(
        &docker,
        &image.tag,
        Seccomp::Kiln,
        None,
        &["/bin/sh", "-c", script],
        &mut cleanup,
    )
    .await;
    assert_eq!(
        output,
        "200001\nhome=/work pwd=/work\nshebang-ok\nrootfs=read-only\nno-passwd-entry\n-rwxr-xr-x\n"
    );
}

/// Builds a one-file image `FROM base` (or scratch), labelled `kiln.test` in
/// its Dockerfile (so even its intermediate layers carry it) and with
/// `labels`, tagged `tag`; returns its id.
async fn build_tiny_image(
    docker: &Docker,
    test_label: &str,
    base: Option<&str>,
    tag: &str,
    labels: &[(&str, &str)],
) -> String {
    let dockerfile = format!(
        "FROM {}\nLABEL kiln.test={test_label}\nCOPY marker /marker-{}\n",
        base.unwrap_or("scratch"),
        tag.replace([':', '/'], "-")
    );
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("Dockerfile", dockerfile.as_bytes()),
        ("marker", tag.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    }
    let context = builder.into_inner().unwrap();
    let labels: HashMap<&str, &str> = labels.iter().copied().collect();
    let options = bollard::query_parameters::BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let info = item.expect("tiny image build");
        assert!(info.error_detail.is_none(), "tiny image build: {info:?}");
    }
    docker.inspect_image(tag).await.unwrap().id.unwrap()
}

async fn tag(docker: &Docker, id: &str, repo: &str, tag: &str) {
    let options = bollard::query_parameters::TagImageOptionsBuilder::new()
        .repo(repo)
        .tag(tag)
        .build();
    docker.tag_image(id, Some(options)).await.unwrap();
}

/// A family of test images under a unique repository prefix (so no real
/// Kiln image is in scope): the prune removes exactly the old, unused ones,
/// dependents before what they are built on, and reports why the others stay.
#[tokio::test]
async fn prune_removes_exactly_the_old_unused_images_of_a_family() {
    use controller::sandbox::image::prune::{
        KeepReason, PruneOutcome, PruneScope, PrunedImage, prune_images,
    };
    let docker = docker().await;
    let test_label = unique("images-prune");
    let mut cleanup = Cleanup::default();
    cleanup.labels.push(test_label.clone());
    let prefix = format!("{test_label}-");
    let minimal = format!("{prefix}minimal");
    let standard = format!("{prefix}standard");
    let base = format!("{prefix}standard-base");
    let probe = format!("{prefix}probe");
    let hash = |value: &'static str| (INPUTS_HASH_LABEL, value);

    // kiln-minimal: two old ones, the current one, and the old one the current
    // probe is built on.
    let kind_minimal = ("kiln.image", "minimal");
    let m_old = build_tiny_image(
        &docker,
        &test_label,
        None,
        &format!("{minimal}:aaaa"),
        &[hash("a"), kind_minimal],
    )
    .await;
    let m_used = build_tiny_image(
        &docker,
        &test_label,
        None,
        &format!("{minimal}:bbbb"),
        &[hash("b"), kind_minimal],
    )
    .await;
    let m_probe_base = build_tiny_image(
        &docker,
        &test_label,
        None,
        &format!("{minimal}:dddd"),
        &[hash("d"), kind_minimal],
    )
    .await;
    let m_current = build_tiny_image(
        &docker,
        &test_label,
        None,
        &format!("{minimal}:cccc"),
        &[hash("c"), kind_minimal],
    )
    .await;
    tag(&docker, &m_current, &minimal, "latest").await;
    let p_current = build_tiny_image(
        &docker,
        &test_label,
        Some(&format!("{minimal}:dddd")),
        &format!("{probe}:pppp"),
        &[hash("p"), ("kiln.image", "probe")],
    )
    .await;
    tag(&docker, &p_current, &probe, "latest").await;
    // kiln-standard: an old one on an old base (the base can only go once
    // the old standard has), the current one on the current base.
    let b_old = build_tiny_image(
        &docker,
        &test_label,
        None,
        &format!("{base}:b111"),
        &[hash("b1")],
    )
    .await;
    let b_current = build_tiny_image(
        &docker,
        &test_label,
        None,
        &format!("{base}:b222"),
        &[hash("b2")],
    )
    .await;
    let kind_standard = ("kiln.image", "standard");
    let s_old = build_tiny_image(
        &docker,
        &test_label,
        Some(&format!("{base}:b111")),
        &format!("{standard}:s111"),
        &[hash("s1"), kind_standard],
    )
    .await;
    let s_current = build_tiny_image(
        &docker,
        &test_label,
        Some(&format!("{base}:b222")),
        &format!("{standard}:s222"),
        &[hash("s2"), kind_standard],
    )
    .await;
    tag(&docker, &s_current, &standard, "latest").await;
    // An operator's own image built on the old minimal: tagged outside the
    // family, so never a candidate, and Docker refuses to remove its base.
    let derived = build_tiny_image(
        &docker,
        &test_label,
        Some(&format!("{minimal}:aaaa")),
        &format!("{prefix}acme:1"),
        &[hash("a"), kind_minimal],
    )
    .await;
    // A (stopped) container created from m_used.
    let container_name = format!("{test_label}-user");
    let body = ContainerCreateBody {
        image: Some(m_used.clone()),
        cmd: Some(vec!["/marker".to_owned()]),
        labels: Some(HashMap::from([(
            "kiln.test".to_owned(),
            test_label.clone(),
        )])),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&container_name)
                    .build(),
            ),
            body,
        )
        .await
        .unwrap();
    cleanup.containers.push(created.id);

    let scope = PruneScope {
        repository_prefix: prefix.clone(),
        test_label: Some(test_label.clone()),
    };
    let mut report = prune_images(&docker, &scope, &ImageKind::ALL)
        .await
        .unwrap();
    report.sort_by(|left, right| left.repo_tags.cmp(&right.repo_tags));
    let outcome_of = |id: &str| -> &PrunedImage {
        report
            .iter()
            .find(|image| image.id == id)
            .unwrap_or_else(|| panic!("{id} not reported: {report:#?}"))
    };
    assert_eq!(report.len(), 9, "{report:#?}");
    assert!(
        matches!(&outcome_of(&m_old).outcome, PruneOutcome::KeptConflict { message } if message.contains("has dependent child images")),
        "{:?}",
        outcome_of(&m_old)
    );
    assert_eq!(
        outcome_of(&m_used).outcome,
        PruneOutcome::Kept(KeepReason::InUse {
            containers: vec![container_name.clone()]
        })
    );
    assert_eq!(
        outcome_of(&m_current).outcome,
        PruneOutcome::Kept(KeepReason::Latest)
    );
    assert_eq!(
        outcome_of(&m_probe_base).outcome,
        PruneOutcome::Kept(KeepReason::BaseOfLatest)
    );
    assert_eq!(
        outcome_of(&p_current).outcome,
        PruneOutcome::Kept(KeepReason::Latest)
    );
    assert_eq!(outcome_of(&s_old).outcome, PruneOutcome::Removed);
    assert_eq!(outcome_of(&b_old).outcome, PruneOutcome::Removed);
    assert_eq!(
        outcome_of(&s_current).outcome,
        PruneOutcome::Kept(KeepReason::Latest)
    );
    assert_eq!(
        outcome_of(&b_current).outcome,
        PruneOutcome::Kept(KeepReason::BaseOfLatest)
    );
    assert_eq!(
        outcome_of(&m_current).repo_tags,
        vec![format!("{minimal}:cccc"), format!("{minimal}:latest")]
    );
    assert_eq!(outcome_of(&m_current).kind, ImageKind::Minimal);
    assert_eq!(outcome_of(&b_old).kind, ImageKind::Standard);
    // What Docker holds afterwards: exactly the removed ones are gone.
    for (id, exists) in [
        (&m_old, true),
        (&m_used, true),
        (&m_current, true),
        (&m_probe_base, true),
        (&p_current, true),
        (&s_old, false),
        (&b_old, false),
        (&s_current, true),
        (&b_current, true),
        (&derived, true),
    ] {
        assert_eq!(docker.inspect_image(id).await.is_ok(), exists, "{id}");
    }

    // Once the derived image and the container are gone, a second prune
    // removes the rest of the old ones and keeps the current ones.
    docker
        .remove_image(
            &derived,
            Some(RemoveImageOptionsBuilder::new().build()),
            None,
        )
        .await
        .unwrap();
    docker
        .remove_container(
            &container_name,
            Some(RemoveContainerOptionsBuilder::new().build()),
        )
        .await
        .unwrap();
    let report = prune_images(&docker, &scope, &ImageKind::ALL)
        .await
        .unwrap();
    let removed: Vec<&str> = report
        .iter()
        .filter(|image| image.outcome == PruneOutcome::Removed)
        .map(|image| image.id.as_str())
        .collect();
    assert_eq!(removed.len(), 2, "{report:#?}");
    assert!(removed.contains(&m_old.as_str()) && removed.contains(&m_used.as_str()));
    assert_eq!(report.len(), 7, "{report:#?}");
}

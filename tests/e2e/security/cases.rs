//! The hostile-recipe catalogue as data: one entry per case of
//! `shared/spec/security-catalogue.md` section 3, each a bash step (busybox sh
//! in the `kiln-probe` image, which adds `/kiln/kiln-probe`) and the exact
//! contained outcome expected per runtime: the final status, lines that must
//! (and must not) appear in the step output, and events that must appear.
//!
//! Probe lines look like `check io_uring_setup errno=EPERM` and
//! `info CapEff 0000000000000000` (see `runtime-image/probe/probe.c`).
//! Where Debian's 2022 runsc (ptrace platform) behaves differently, the runsc
//! expectation says so explicitly. runsc is registered with `--oci-seccomp`
//! (deploy/host-setup.sh), so Kiln's seccomp profile applies inside gVisor
//! too: the profile's denials get the same EPERM as under runc; the
//! differences left are the Sentry's own answers (virtual /proc, /dev,
//! cgroupfs and netstack) and gVisor ignoring the profile's architectures.

/// What a case must end with on one runtime.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Final execution status (`succeeded`, `failed`, `timed_out`, `oom`, ...);
    /// `a|b` accepts either (only for a measured race, with a FIXME).
    pub status: &'static str,
    /// Each must appear (as a substring) in the step output (stdout + stderr).
    pub output: &'static [&'static str],
    /// None of these may appear in the step output.
    pub absent: &'static [&'static str],
    /// Event types (`output_truncated`, `artifact_rejected`, `step_killed`...) that must appear.
    pub events: &'static [&'static str],
    /// One line for the results table.
    pub summary: &'static str,
}

/// The runsc column of a case.
#[derive(Debug, Clone, Copy)]
pub enum OnRunsc {
    /// Same expectation as runc.
    Same,
    /// Debian's 2022 runsc answers differently; still contained.
    Differs(Expect),
    /// Not run on runsc, with the reason.
    NotApplicable(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub number: u32,
    pub name: &'static str,
    /// The bash step's command.
    pub script: &'static str,
    /// The bash step's `timeout` (seconds).
    pub step_timeout_secs: u64,
    pub runc: Expect,
    pub runsc: OnRunsc,
    /// A catalogue expectation the controller cannot express today.
    pub fixme: Option<&'static str>,
}

const NONE: &[&str] = &[];

/// Cases run in the `*-deadline` classes (wall timeout 8 s, step timeout
/// longer): the controller kills the container from outside at the deadline.
pub const WALL_DEADLINE_CASES: &[u32] = &[9];

const fn ok(output: &'static [&'static str], summary: &'static str) -> Expect {
    Expect {
        status: "succeeded",
        output,
        absent: NONE,
        events: NONE,
        summary,
    }
}

/// Every catalogue case, in catalogue order. Cases 38-42 (protocol abuse)
/// are attempted from inside the sandbox here; the host-side hostile client
/// cases live in `protocol.rs` and `controller/tests/service.rs`.
pub const CASES: &[Case] = &[
    Case {
        number: 1,
        name: "fork bomb",
        // The bomb, then a fork-free busy loop until the step timeout kills
        // the whole process group (so the outcome never depends on which
        // fork happened to fail).
        script: "f(){ f|f& }; f; while :; do :; done",
        step_timeout_secs: 4,
        runc: Expect {
            status: "failed",
            output: &["can't fork"],
            absent: NONE,
            events: &["step_killed", "resource_usage"],
            summary: "pids cgroup: \"can't fork\" (EAGAIN); the step's group is killed at its timeout, agent survives",
        },
        // Debian's 2022 runsc (ptrace platform) cannot fail fork(): the Sentry dies.
        runsc: OnRunsc::Differs(Expect {
            status: "sandbox_crashed",
            output: NONE,
            absent: NONE,
            events: NONE,
            summary: "Sentry dies (ptrace platform, exit 2): sandbox_crashed",
        }),
        fixme: Some(
            "no pids_exceeded status exists: on runc the bomb is contained by the pids cgroup and reported as a failed step, killed at its timeout",
        ),
    },
    Case {
        number: 2,
        name: "fork count",
        script: "/kiln/kiln-probe fork",
        step_timeout_secs: 20,
        runc: ok(
            &["check fork errno=EAGAIN"],
            "children capped by PidsLimit, then EAGAIN",
        ),
        // Measured both on Debian's 2022 runsc: the Sentry panics (exit 2) or the
        // host threads exhaust memory first (whole-sandbox OOM, 137).
        runsc: OnRunsc::Differs(Expect {
            status: "sandbox_crashed|oom",
            output: NONE,
            absent: NONE,
            events: NONE,
            summary: "Sentry panics (sandbox_crashed) or the whole sandbox is OOM-killed (oom)",
        }),
        fixme: None,
    },
    Case {
        number: 3,
        name: "memory bomb",
        script: "/kiln/kiln-probe mem 1024",
        step_timeout_secs: 30,
        runc: Expect {
            status: "oom",
            output: &["check mem killed=SIGKILL"],
            absent: NONE,
            events: NONE,
            summary: "child SIGKILLed by the memcg; status oom",
        },
        // Under runsc the OOM killer takes the whole sandbox (exit 137, OOMKilled).
        runsc: OnRunsc::Differs(Expect {
            status: "oom",
            output: &["info mem.touched_mib 72"],
            absent: NONE,
            events: NONE,
            summary: "whole sandbox OOM-killed: oom",
        }),
        fixme: None,
    },
    Case {
        number: 4,
        name: "tmpfs + memory",
        script: "head -c 60m /dev/zero > /tmp/fill 2>&1; head -c 10m /dev/zero > /dev/shm/fill 2>&1; /kiln/kiln-probe mem 1024",
        step_timeout_secs: 30,
        runc: Expect {
            status: "oom",
            output: &["check mem killed=SIGKILL"],
            absent: NONE,
            events: NONE,
            summary: "tmpfs pages charged to the memcg: oom sooner",
        },
        // Under runsc the OOM killer takes the whole sandbox (exit 137, OOMKilled).
        runsc: OnRunsc::Differs(Expect {
            status: "oom",
            output: &["info mem.touched_mib 72"],
            absent: NONE,
            events: NONE,
            summary: "whole sandbox OOM-killed: oom",
        }),
        fixme: None,
    },
    Case {
        number: 5,
        name: "tmpfs fill",
        script: "dd if=/dev/zero of=/tmp/f bs=1M count=80; echo tmp-rc=$?; ls -l /tmp/f; rm -f /tmp/f\ndd if=/dev/zero of=/work/f bs=1M count=300; echo work-rc=$?; ls -l /work/f; rm -f /work/f\ndd if=/dev/zero of=/dev/shm/f bs=1M count=40; echo shm-rc=$?; rm -f /dev/shm/f",
        step_timeout_secs: 30,
        runc: ok(
            &[
                "dd: error writing '/tmp/f': No space left on device",
                "dd: error writing '/work/f': No space left on device",
                "dd: error writing '/dev/shm/f': No space left on device",
                "tmp-rc=1",
                "work-rc=1",
                "shm-rc=1",
                " 16777216 ",
                " 67108864 ",
            ],
            "ENOSPC at each tmpfs size (/tmp 16 MiB, /work 64 MiB, /dev/shm 16 MiB)",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 6,
        name: "stdout flood",
        script: "yes 'kiln flood line' | head -c 300m; echo flood-rc=$?",
        step_timeout_secs: 60,
        runc: Expect {
            status: "succeeded",
            output: &["kiln flood line"],
            absent: NONE,
            events: &["output_truncated"],
            summary: "truncated at the output cap (output_truncated); host disk flat",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 7,
        name: "line without newline",
        script: "head -c 50m /dev/zero | tr '\\0' a; echo; echo line-done",
        step_timeout_secs: 60,
        runc: Expect {
            status: "succeeded",
            output: &["aaaaaaaa"],
            absent: NONE,
            events: &["output_truncated"],
            summary: "chunked and truncated (output_truncated)",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 8,
        name: "open files",
        script: "/kiln/kiln-probe nofile",
        step_timeout_secs: 20,
        runc: ok(
            &["check nofile errno=EMFILE", "info nofile.opened 10"],
            "EMFILE at the nofile ulimit (1024)",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 9,
        name: "CPU spin",
        script: "for i in 1 2 3 4; do (while :; do :; done) & done; wait",
        step_timeout_secs: 300,
        runc: Expect {
            status: "timed_out",
            output: NONE,
            absent: NONE,
            events: NONE,
            summary: "container SIGKILLed at the execution's wall deadline (8 s), removed: timed_out",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 10,
        name: "sleep past timeout",
        script: "sleep 1000",
        step_timeout_secs: 2,
        runc: Expect {
            status: "failed",
            output: NONE,
            absent: NONE,
            events: &["step_killed", "step_failed"],
            summary: "killed at the step timeout (step_killed timeout)",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 11,
        name: "SIGTERM ignorer",
        script: "trap '' TERM; sleep 1000",
        step_timeout_secs: 2,
        runc: Expect {
            status: "failed",
            output: NONE,
            absent: NONE,
            events: &["step_killed", "step_failed"],
            summary: "SIGKILL after the grace, no reliance on TERM",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 12,
        name: "zombies / orphans",
        script: "i=0; while [ $i -lt 40 ]; do sh -c 'sleep 0.2 &'; i=$((i+1)); done; sleep 1; echo zombies=$(grep -l '^State:.Z' /proc/[0-9]*/status 2>/dev/null | wc -l)",
        step_timeout_secs: 20,
        runc: ok(&["zombies=0"], "orphans reaped by the agent: 0 zombies"),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 13,
        name: "kill the agent",
        script: "kill -9 1; echo kill9-rc=$?; kill -STOP 1; echo stop-rc=$?; kill -9 -1; echo after-kill-all",
        step_timeout_secs: 10,
        runc: ok(
            &["kill9-rc=1", "stop-rc=1"],
            "EPERM (distinct UID): agent survives, execution completes",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 14,
        name: "ptrace the agent",
        script: "/kiln/kiln-probe secrets; cat /proc/1/environ; echo environ-rc=$?",
        step_timeout_secs: 20,
        runc: ok(
            &[
                "check agent.open_proc1_mem errno=EACCES",
                "check agent.read_proc1_environ errno=EACCES",
                "check agent.ptrace_seize_pid1 errno=EPERM",
                "check agent.signal0_pid1 errno=EPERM",
                "check agent.read_token errno=ENOENT",
                "environ-rc=1",
            ],
            "/proc/1/mem, environ EACCES; ptrace, kill EPERM; token already consumed (ENOENT)",
        ),
        runsc: OnRunsc::Differs(Expect {
            status: "succeeded",
            output: &[
                "check agent.open_proc1_mem errno=EACCES",
                "check agent.read_proc1_environ ok",
                "check agent.ptrace_seize_pid1 errno=EPERM",
                "check agent.signal0_pid1 errno=EPERM",
                "check agent.read_token errno=ENOENT",
                "environ-rc=0",
            ],
            absent: &["TOKEN", "KEY", "SECRET", "kiln_"],
            events: NONE,
            summary: "environ of PID 1 readable under runsc (known), holds no secret; mem EACCES, ptrace EPERM",
        }),
        fixme: None,
    },
    Case {
        number: 15,
        name: "setuid",
        script: "busybox su -c id root </dev/null; echo su-rc=$?; cp /bin/busybox /tmp/bb && chmod u+s /tmp/bb; /tmp/bb id; echo exec-rc=$?",
        step_timeout_secs: 10,
        runc: ok(
            &["must be suid", "Permission denied", "exec-rc=126"],
            "su \"must be suid\"; exec from /tmp EACCES (noexec)",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 16,
        name: "capabilities",
        script: "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "CapInh:\t0000000000000000",
                "CapPrm:\t0000000000000000",
                "CapEff:\t0000000000000000",
                "CapBnd:\t00000000000000e0",
                "CapAmb:\t0000000000000000",
                "NoNewPrivs:\t1",
                "Seccomp:\t2",
            ],
            "CapEff/Prm/Inh/Amb 0; bounding set = the agent's SETUID, SETGID, KILL (0xe0), unreachable with NoNewPrivs 1; Seccomp 2",
        ),
        runsc: OnRunsc::Differs(ok(
            &[
                "CapEff:\t0000000000000000",
                "CapPrm:\t0000000000000000",
                "CapBnd:\t00000000000000e0",
                "Seccomp:\t2",
            ],
            "caps 0; no NoNewPrivs line (Sentry); Seccomp 2 (Kiln's profile inside gVisor, --oci-seccomp)",
        )),
        fixme: None,
    },
    Case {
        number: 17,
        name: "mount",
        script: "mkdir -p /tmp/m; busybox mount -t tmpfs none /tmp/m; echo mount-rc=$?; busybox mount -o remount,rw /; echo remount-rc=$?; /kiln/kiln-probe seccomp | grep -E 'check (mount|umount2|fsopen|move_mount)'",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "mount: permission denied (are you root?)",
                "mount-rc=1",
                "remount-rc=1",
                "check mount.tmpfs errno=EPERM",
                "check mount.remount_root errno=EPERM",
                "check fsopen errno=EPERM",
                "check move_mount errno=EPERM",
            ],
            "mount, remount, new mount API: EPERM",
        ),
        runsc: OnRunsc::Differs(ok(
            &[
                "mount-rc=1",
                "remount-rc=1",
                "check mount.tmpfs errno=EPERM",
                "check mount.remount_root errno=EPERM",
                "check fsopen errno=EPERM",
                "check move_mount errno=EPERM",
            ],
            "mount, remount, new mount API: EPERM (the profile, inside gVisor)",
        )),
        fixme: None,
    },
    Case {
        number: 18,
        name: "unshare / userns",
        script: "busybox unshare -r id; echo unshare-rc=$?; /kiln/kiln-probe seccomp | grep -E 'check (unshare|clone)\\.'; /kiln/kiln-probe abi | grep ia32.unshare",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "unshare-rc=1",
                "check unshare.newuser errno=EPERM",
                "check clone.newuser errno=EPERM",
                "check ia32.unshare killed=SIGSYS",
            ],
            "unshare/clone(NEWUSER) EPERM; ia32 int 0x80 SIGSYS",
        ),
        // gVisor ignores the profile's architectures and decodes ia32
        // `int 0x80` with x86-64 numbers: 310 is process_vm_readv, denied.
        runsc: OnRunsc::Differs(ok(
            &[
                "unshare-rc=1",
                "check unshare.newuser errno=EPERM",
                "check clone.newuser errno=EPERM",
                "check ia32.unshare errno=EPERM",
            ],
            "unshare/clone(NEWUSER) EPERM (the profile, inside gVisor); ia32 int 0x80 decoded as x86-64 (310 = process_vm_readv): EPERM",
        )),
        fixme: None,
    },
    Case {
        number: 19,
        name: "setns / nsenter",
        script: "busybox nsenter -t 1 -m id; echo nsenter-rc=$?; /kiln/kiln-probe seccomp | grep 'check setns'",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "nsenter: can't open '/proc/1/ns/mnt': Permission denied",
                "nsenter-rc=1",
                "check setns errno=EACCES",
            ],
            "the agent's namespace files are EACCES (distinct UID) before setns is reached",
        ),
        runsc: OnRunsc::Differs(ok(
            &["nsenter-rc=1", "check setns errno=ENOENT"],
            "no /proc/<pid>/ns files in gVisor: ENOENT before setns is reached",
        )),
        fixme: None,
    },
    Case {
        number: 20,
        name: "kernel-API syscalls",
        script: "/kiln/kiln-probe seccomp",
        step_timeout_secs: 20,
        runc: ok(
            &[
                "check keyctl errno=EPERM",
                "check add_key errno=EPERM",
                "check bpf errno=EPERM",
                "check perf_event_open errno=EPERM",
                "check userfaultfd errno=EPERM",
                "check io_uring_setup errno=EPERM",
                "check io_uring_enter errno=EPERM",
                "check open_by_handle_at errno=EPERM",
                "check kexec_load errno=EPERM",
                "check iopl errno=EPERM",
                "check process_vm_readv errno=EPERM",
                "check ptrace.traceme errno=EPERM",
            ],
            "all EPERM, io_uring included (Kiln's profile)",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 21,
        name: "raw / packet socket",
        script: "busybox ping -c 1 -W 1 127.0.0.1; echo ping-rc=$?; /kiln/kiln-probe net | grep -E 'socket\\.(inet_raw|packet)'",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "ping-rc=1",
                "check socket.inet_raw errno=EPERM",
                "check socket.packet errno=EPERM",
            ],
            "raw and packet sockets EPERM",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 22,
        name: "exotic families",
        script: "/kiln/kiln-probe net | grep -E 'socket\\.(vsock|alg|bluetooth|xdp)'",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "check socket.vsock errno=EPERM",
                "check socket.alg errno=EPERM",
                "check socket.bluetooth errno=EPERM",
                "check socket.xdp errno=EPERM",
            ],
            "AF_VSOCK, AF_ALG, ... EPERM",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 23,
        name: "egress TCP",
        script: "busybox wget -T 2 -q -O- http://1.1.1.1/ ; echo wget-rc=$?; busybox nc -w 2 1.1.1.1 80 </dev/null; echo nc-rc=$?",
        step_timeout_secs: 15,
        runc: ok(
            &["Network is unreachable", "wget-rc=1", "nc-rc=1"],
            "ENETUNREACH (network none)",
        ),
        runsc: OnRunsc::Differs(ok(
            &[
                "nc: can't connect to remote host (1.1.1.1): No route to host",
                "nc-rc=1",
            ],
            "EHOSTUNREACH from netstack (busybox wget segfaults under the Sentry)",
        )),
        fixme: Some(
            "no packet capture on a host veth: the container has no veth at all (network none); the pcap half of the case is not run",
        ),
    },
    Case {
        number: 24,
        name: "DNS",
        script: "busybox nslookup example.com; echo nslookup-rc=$?; cat /etc/resolv.conf; echo resolv-rc=$?",
        step_timeout_secs: 15,
        runc: Expect {
            status: "succeeded",
            output: &["nslookup-rc=1"],
            absent: &["10.255.255.53", "Address: 93.", "Address: 2606:"],
            events: NONE,
            summary: "resolution fails; no host resolver address visible",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 25,
        name: "routes / interfaces",
        script: "busybox ip route get 1.1.1.1; echo route-rc=$?; busybox ip -o link | cut -d: -f2",
        step_timeout_secs: 10,
        runc: Expect {
            status: "succeeded",
            output: &["Network is unreachable", "route-rc=2", " lo"],
            absent: &["eth0", "veth"],
            events: NONE,
            summary: "\"Network is unreachable\"; only lo",
        },
        runsc: OnRunsc::Differs(Expect {
            status: "succeeded",
            output: &[
                "RTNETLINK answers: Operation not supported",
                "route-rc=2",
                " lo",
            ],
            absent: &["eth0", "veth"],
            events: NONE,
            summary: "no route lookup (netstack); only lo",
        }),
        fixme: None,
    },
    Case {
        number: 26,
        name: "host files via /proc",
        script: "ls /proc/1/root/; echo root-rc=$?; cat /proc/kcore; echo kcore-rc=$?; echo c > /proc/sysrq-trigger; echo sysrq-rc=$?; echo x > /proc/sys/kernel/core_pattern; echo core-rc=$?",
        step_timeout_secs: 10,
        runc: ok(
            &["root-rc=1", "kcore-rc=1", "sysrq-rc=1", "core-rc=1"],
            "/proc/1/root EACCES; kcore/sysrq ENOENT; core_pattern EROFS",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 27,
        name: "/sys and cgroup writes",
        script: "/kiln/kiln-probe cgroup | grep check; echo x > /sys/fs/cgroup/memory/release_agent; echo ra-rc=$?",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "check cgroup.write_memory_limit errno=EACCES",
                "check cgroup.write_release_agent errno=ENOENT",
                "can't create /sys/fs/cgroup/memory/release_agent: Read-only file system",
                "ra-rc=1",
            ],
            "EACCES / EROFS (read-only cgroupfs, distinct UID)",
        ),
        runsc: OnRunsc::Differs(ok(&["ra-rc=1"], "ENOENT (virtual cgroupfs)")),
        fixme: None,
    },
    Case {
        number: 28,
        name: "read-only rootfs",
        script: "touch /evil; echo touch-rc=$?; echo x >> /bin/busybox; echo bb-rc=$?; /kiln/kiln-probe fs | grep 'check rootfs'",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "Read-only file system",
                "touch-rc=1",
                "bb-rc=1",
                "can't create /bin/busybox: Permission denied",
                "check rootfs.create errno=EROFS",
                "check rootfs.mkdir errno=EROFS",
                "check rootfs.append_kiln_agent errno=EACCES",
            ],
            "EROFS; root-owned files EACCES first",
        ),
        runsc: OnRunsc::Differs(ok(&["touch-rc=1", "bb-rc=1"], "EROFS/EACCES (Gofer)")),
        fixme: None,
    },
    Case {
        number: 29,
        name: "socket dir writes",
        script: "touch /run/kiln/x; echo touch-rc=$?; rm -f /run/kiln/agent.sock; echo rm-rc=$?; /kiln/kiln-probe secrets | grep -E 'create_in_socket_dir|unlink_socket|connect_socket'",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "touch-rc=1",
                "rm-rc=1",
                "check agent.create_in_socket_dir errno=EROFS",
                "check agent.unlink_socket errno=EROFS",
                "check agent.connect_socket errno=EACCES",
            ],
            "EROFS; connecting to agent.sock EACCES",
        ),
        runsc: OnRunsc::Differs(ok(
            &[
                "touch-rc=1",
                "rm-rc=1",
                "check agent.connect_socket errno=EACCES",
            ],
            "EROFS/EACCES; connect EACCES",
        )),
        fixme: None,
    },
    Case {
        number: 30,
        name: "devices",
        script: "cat /dev/mem; echo mem-rc=$?; cat /dev/kmsg; echo kmsg-rc=$?; cat /dev/vda; echo vda-rc=$?; busybox mknod /tmp/mem c 1 1; echo mknod-rc=$?; ls /dev",
        step_timeout_secs: 10,
        runc: ok(
            &["mem-rc=1", "kmsg-rc=1", "vda-rc=1", "mknod-rc=1"],
            "ENOENT; mknod EPERM; minimal /dev",
        ),
        runsc: OnRunsc::Differs(ok(
            &["mem-rc=1", "kmsg-rc=1", "vda-rc=1"],
            "ENOENT; mknod creates an inert gVisor node",
        )),
        fixme: None,
    },
    Case {
        number: 31,
        name: "kernel modules",
        script: "printf 'not a module' > /tmp/x.ko; busybox insmod /tmp/x.ko; echo insmod-rc=$?; /kiln/kiln-probe seccomp | grep -E 'check (init|finit|delete)_module'",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "insmod: can't insert '/tmp/x.ko': Operation not permitted",
                "insmod-rc=1",
                "check init_module errno=EPERM",
                "check finit_module errno=EPERM",
                "check delete_module errno=EPERM",
            ],
            "EPERM",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 32,
        name: "time",
        script: "before=$(date +%Y); busybox date -s 2000-01-01; busybox hwclock -w; echo hwclock-rc=$?; after=$(date +%Y); [ \"$after\" = \"$before\" ] && echo clock-unchanged; /kiln/kiln-probe seccomp | grep -E 'check (clock_settime|settimeofday|adjtimex)'",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "clock-unchanged",
                "hwclock-rc=1",
                "check clock_settime errno=EPERM",
                "check settimeofday errno=EPERM",
            ],
            "EPERM and the clock is unchanged",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 33,
        name: "hostname",
        script: "busybox hostname evil; echo hostname-rc=$?; hostname",
        step_timeout_secs: 10,
        runc: Expect {
            status: "succeeded",
            output: &["hostname-rc=1"],
            absent: &["\nevil"],
            events: NONE,
            summary: "sethostname EPERM",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 34,
        name: "noexec bypass",
        script: "/kiln/kiln-probe memfd-exec",
        step_timeout_secs: 10,
        runc: ok(
            &["check memfd_exec ok"],
            "memfd + fexecve runs: noexec is not a boundary (documented)",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 35,
        name: "env leakage",
        script: "env | cut -d= -f1 | sort | tr '\\n' ' '; echo; cat /proc/1/environ; echo environ-rc=$?; grep -r -l kiln-canary /run /tmp /work /etc /kiln 2>/dev/null; echo scanned; grep -c kiln-canary /proc/self/mountinfo; echo mounts-scanned",
        step_timeout_secs: 10,
        runc: Expect {
            status: "succeeded",
            output: &["environ-rc=1", "scanned", "mounts-scanned"],
            absent: &["kiln-canary", "sk-", "TOKEN", "SECRET", "API_KEY"],
            events: NONE,
            summary: "minimal env, /proc/1/environ EACCES, no canary",
        },
        runsc: OnRunsc::Differs(Expect {
            status: "succeeded",
            output: &["environ-rc=0", "HOME=/work", "scanned"],
            absent: &["kiln-canary", "sk-", "TOKEN", "SECRET", "API_KEY"],
            events: NONE,
            summary: "PID 1 environ readable (runsc, known) but holds only PATH, HOSTNAME, HOME, LANG, KILN_EXECUTION_ID",
        }),
        // The harness starts `kiln serve` with canary model keys in its
        // environment (OPENAI_API_KEY, ANTHROPIC_API_KEY = sk-kiln-canary-...),
        // and its gateway loads OPENAI_API_KEY as a provider's key.
        fixme: None,
    },
    Case {
        number: 36,
        name: "info leakage",
        script: "uname -r; grep MemTotal /proc/meminfo; head -n 3 /proc/self/mountinfo",
        step_timeout_secs: 10,
        runc: ok(
            &["MemTotal:"],
            "accepted: host kernel, RAM, paths visible (documented)",
        ),
        runsc: OnRunsc::Differs(ok(&["MemTotal:", "4.4.0"], "virtualised by the Sentry")),
        fixme: None,
    },
    Case {
        number: 37,
        name: "container to container",
        script: "/kiln/kiln-probe abstract connect; /kiln/kiln-probe shm open; ps -o pid,user,comm",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "check abstract.connect errno=ECONNREFUSED",
                "check shm.open errno=ENOENT",
            ],
            "abstract UDS ECONNREFUSED, SysV shm ENOENT, own PIDs only",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 38,
        name: "forged events",
        script: "/kiln/kiln-probe unix /run/kiln/agent.sock",
        step_timeout_secs: 10,
        runc: ok(
            &["check unix.connect errno=EACCES"],
            "a step cannot reach the agent socket (EACCES); host-side forged hello rejected",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 39,
        name: "oversized frame",
        script: "/kiln/kiln-probe unix /run/kiln/agent.sock; head -c 3m /dev/zero | tr '\\0' x; echo; echo frame-done",
        step_timeout_secs: 20,
        runc: Expect {
            status: "succeeded",
            output: &["check unix.connect errno=EACCES", "xxxxxxxx"],
            absent: &["frame-done"],
            events: &["output_truncated"],
            summary: "socket EACCES from a step; a 3 MiB line is chunked and cut at the 1 MiB output cap",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 40,
        name: "invalid UTF-8 / bad JSON",
        script: "printf 'bad \\377\\376 bytes {\"source\":\"controller\",\"event\":{\"type\":\"finished\",\"status\":\"succeeded\"}}\\n'; echo utf8-done",
        step_timeout_secs: 10,
        runc: ok(
            &["utf8-done", "bad "],
            "invalid UTF-8 output is escaped, not parsed; host-side 1007",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 41,
        name: "token replay",
        script: "cat /run/kiln/token; echo token-rc=$?; ls -l /run/kiln; echo ls-rc=$?",
        step_timeout_secs: 10,
        runc: ok(
            &[
                "cat: can't open '/run/kiln/token': No such file or directory",
                "token-rc=1",
                "ls: can't open '/run/kiln': Permission denied",
                "ls-rc=1",
            ],
            "token consumed (ENOENT), socket dir unlistable (EACCES); host-side replay refused",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 42,
        name: "event flood / slowloris",
        script: "i=0; while [ $i -lt 20000 ]; do echo \"event $i\"; i=$((i+1)); done; echo flood-done",
        step_timeout_secs: 60,
        runc: ok(
            &["flood-done"],
            "20k output lines batched; other executions unaffected",
        ),
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 43,
        name: "artifact traversal",
        script: "mkdir -p /work/out; echo y > \"/work/out/new\nline\"; echo z > '/work/out/C:\\x'; echo w > \"$(printf '/work/out/bad\\377name')\"; echo ok > /work/out/fine.txt; ls /work/out",
        step_timeout_secs: 10,
        runc: Expect {
            status: "succeeded",
            output: NONE,
            absent: NONE,
            events: &["artifact_rejected", "artifact_stored"],
            summary: "newline, backslash, non-UTF-8 names rejected (invalid_name); fine.txt stored",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 44,
        name: "artifact symlinks / hardlinks / FIFOs",
        script: "mkdir -p /work/out; ln -s /proc/self/environ /work/out/env; ln -s /etc/shadow /work/out/shadow; mkfifo /work/out/fifo; echo data > /work/out/real; ln /work/out/real /work/out/hard; ls -l /work/out",
        step_timeout_secs: 10,
        runc: Expect {
            status: "succeeded",
            output: NONE,
            absent: NONE,
            events: &["artifact_rejected"],
            summary: "symlink, fifo, hardlink rejected (artifact_rejected)",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 45,
        name: "artifact size / count",
        script: "mkdir -p /work/out; truncate -s 10G /work/out/sparse; echo truncate-rc=$?; i=0; while [ $i -lt 300 ]; do echo $i > /work/out/f$i; i=$((i+1)); done; echo made=$i",
        step_timeout_secs: 20,
        runc: Expect {
            status: "succeeded",
            output: &["made=300"],
            absent: NONE,
            events: &["artifact_rejected"],
            summary: "10 GB sparse and the 257th+ file rejected (too_large / too_many)",
        },
        runsc: OnRunsc::Same,
        fixme: None,
    },
    Case {
        number: 46,
        name: "per-UID exhaustion",
        script: "id -u; /kiln/kiln-probe fork",
        step_timeout_secs: 20,
        runc: ok(
            &["check fork errno=EAGAIN"],
            "distinct UID per execution: a neighbour's processes do not count",
        ),
        runsc: OnRunsc::NotApplicable("the fork probe crashes Debian's 2022 runsc (case 2)"),
        fixme: None,
    },
];

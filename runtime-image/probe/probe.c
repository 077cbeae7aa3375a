/* kiln-probe: Kiln's in-sandbox security probe.
 *
 * A static binary (gcc -static) that runs inside a Kiln sandbox, usually as a
 * recipe step, tries privileged or dangerous operations and reports exactly
 * what happened. It never asserts anything itself: the tests that run it
 * compare its lines with the outcomes expected by the security catalogue
 * (shared/spec/security-catalogue.md, sections 3 and 4).
 *
 * Output: one machine-readable line per check, on stdout:
 *
 *   check <name> ok                 the attempt succeeded (rc >= 0)
 *   check <name> errno=<ENAME>      the attempt failed with that errno
 *   check <name> killed=<SIGNAME>   the child running the attempt was killed
 *                                   (e.g. SIGSYS from a seccomp KILL action)
 *   check <name> fork-failed errno=<ENAME>
 *   info <name> <value>             a measured value (uid, CapEff, limits...)
 *
 * Names are stable, lower-case, dot-separated, without spaces. Every attempt
 * runs in a forked child so that side effects and fatal signals stay contained
 * and the probe itself always gets to report.
 *
 * Subcommands (`kiln-probe help` lists them):
 *   all                 identity fs cgroup net env secrets seccomp abi
 *   identity            uid/gid/groups, Cap*, NoNewPrivs, Seccomp, dumpable
 *   fs                  read-only rootfs, tmpfs sizes and flags (statfs)
 *   cgroup              memory / pids / cpu limits (cgroup v1 or v2)
 *   net                 interfaces (from /proc/net/dev) and socket families
 *   env                 the environment, one line per variable
 *   secrets             the agent's socket, token, /proc/1/{mem,environ}
 *   seccomp             every syscall Kiln's profile or Docker's default denies
 *   abi                 ia32 (int 0x80) and x32 syscalls
 *   fork [hold_secs]    fork until failure, report the count
 *   mem <MiB>           touch MiB of memory in a child
 *   nofile              open fds until failure
 *   memfd-exec          fexecve a copy of itself from a memfd (noexec bypass)
 *   abstract listen [secs] | abstract connect   abstract Unix socket @kiln-probe
 *   shm create [secs] | shm open                SysV shm key 0x6b696c6e
 *   unix <path>         connect to a Unix socket path
 *   noop                exit 0 (used by memfd-exec)
 *
 * It never connects to any non-loopback address. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/reboot.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Syscall numbers newer than some libc headers (x86_64). */
#define NR_io_uring_setup 425
#define NR_io_uring_enter 426
#define NR_io_uring_register 427
#define NR_open_tree 428
#define NR_move_mount 429
#define NR_fsopen 430
#define NR_fsconfig 431
#define NR_fsmount 432
#define NR_fspick 433
#define NR_pidfd_open 434
#define NR_clone3 435
#define NR_pidfd_getfd 438
#define NR_mount_setattr 442
/* A syscall number far above any kernel's table: must be ENOSYS. */
#define NR_unknown 1000

static const char *errname(int err) {
  const char *n = strerrorname_np(err);
  return n ? n : "E?";
}

static const char *signame(int sig) {
  const char *n = sigabbrev_np(sig);
  static char buf[32];
  snprintf(buf, sizeof buf, "SIG%s", n ? n : "?");
  return buf;
}

static void report(const char *name, long rc, int err) {
  if (rc < 0)
    printf("check %s errno=%s\n", name, errname(err));
  else
    printf("check %s ok\n", name);
  fflush(stdout);
}

static void info_str(const char *name, const char *value) {
  printf("info %s %s\n", name, value);
  fflush(stdout);
}

static void info_num(const char *name, long long value) {
  printf("info %s %lld\n", name, value);
  fflush(stdout);
}

/* Run `attempt` in a child; report its outcome under `name`. */
typedef long (*attempt_fn)(void *arg);
static void check(const char *name, attempt_fn attempt, void *arg) {
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) {
    printf("check %s fork-failed errno=%s\n", name, errname(errno));
    fflush(stdout);
    return;
  }
  if (child == 0) {
    errno = 0;
    long rc = attempt(arg);
    report(name, rc, errno);
    _exit(0);
  }
  int status;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) {
    printf("check %s killed=%s\n", name, signame(WTERMSIG(status)));
    fflush(stdout);
  }
}

/* ---------- small helpers ---------- */

static int read_file(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t used = 0;
  ssize_t n;
  while (used + 1 < size && (n = read(fd, buf + used, size - 1 - used)) > 0) used += (size_t)n;
  close(fd);
  buf[used] = 0;
  return (int)used;
}

static void trim(char *s) {
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
}

/* Report the first readable file among `paths` as info `name`. */
static void info_first_file(const char *name, const char *const *paths) {
  char buf[256];
  for (const char *const *p = paths; *p; p++) {
    if (read_file(*p, buf, sizeof buf) >= 0) {
      trim(buf);
      for (char *c = buf; *c; c++)
        if (*c == ' ' || *c == '\n') *c = '_';
      info_str(name, buf);
      return;
    }
  }
  info_str(name, "unreadable");
}

/* ---------- identity ---------- */

static void cmd_identity(void) {
  info_num("uid", getuid());
  info_num("euid", geteuid());
  info_num("gid", getgid());
  info_num("egid", getegid());
  gid_t groups[64];
  int n = getgroups(64, groups);
  char list[512] = "";
  for (int i = 0; i < n; i++) {
    char one[16];
    snprintf(one, sizeof one, "%s%u", i ? "," : "", (unsigned)groups[i]);
    strncat(list, one, sizeof list - strlen(list) - 1);
  }
  info_str("groups", n > 0 ? list : "none");
  char status[8192];
  if (read_file("/proc/self/status", status, sizeof status) < 0) {
    info_str("proc.status", "unreadable");
  } else {
    static const char *keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", NULL};
    for (const char **k = keys; *k; k++) {
      char *line = status;
      size_t klen = strlen(*k);
      int found = 0;
      while (line && *line) {
        if (strncmp(line, *k, klen) == 0 && line[klen] == ':') {
          char *value = line + klen + 1;
          while (*value == ' ' || *value == '\t') value++;
          char *end = strchr(value, '\n');
          char out[64];
          size_t len = end ? (size_t)(end - value) : strlen(value);
          if (len >= sizeof out) len = sizeof out - 1;
          memcpy(out, value, len);
          out[len] = 0;
          info_str(*k, out);
          found = 1;
          break;
        }
        line = strchr(line, '\n');
        if (line) line++;
      }
      if (!found) info_str(*k, "absent"); /* e.g. gVisor has no NoNewPrivs line */
    }
  }
  info_num("prctl.no_new_privs", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
  info_num("prctl.seccomp_mode", prctl(PR_GET_SECCOMP, 0, 0, 0, 0));
  info_num("dumpable", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
  info_num("pid", getpid());
}

/* ---------- filesystems ---------- */

static long a_create(void *arg) { return open((const char *)arg, O_WRONLY | O_CREAT | O_CLOEXEC, 0644); }
static long a_append(void *arg) {
  int fd = open((const char *)arg, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return -1;
  long rc = write(fd, "", 0);
  int e = errno;
  close(fd);
  errno = e;
  return rc;
}
static long a_mkdir(void *arg) { return mkdir((const char *)arg, 0700); }

static void statfs_info(const char *path) {
  struct statfs sf;
  char name[128];
  snprintf(name, sizeof name, "statfs.%s", path);
  if (statfs(path, &sf) < 0) {
    char value[64];
    snprintf(value, sizeof value, "errno=%s", errname(errno));
    info_str(name, value);
    return;
  }
  char value[256];
  snprintf(value, sizeof value, "bytes=%llu type=0x%lx ro=%d noexec=%d nosuid=%d nodev=%d",
           (unsigned long long)sf.f_blocks * (unsigned long long)sf.f_bsize, (unsigned long)sf.f_type,
           !!(sf.f_flags & ST_RDONLY), !!(sf.f_flags & ST_NOEXEC), !!(sf.f_flags & ST_NOSUID),
           !!(sf.f_flags & ST_NODEV));
  info_str(name, value);
  struct stat st;
  if (stat(path, &st) == 0) {
    snprintf(name, sizeof name, "stat.%s", path);
    snprintf(value, sizeof value, "mode=%04o uid=%u gid=%u", (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid,
             (unsigned)st.st_gid);
    info_str(name, value);
  }
}

static void cmd_fs(void) {
  check("rootfs.create", a_create, "/kiln-probe-was-here");
  check("rootfs.mkdir", a_mkdir, "/kiln-probe-dir");
  check("rootfs.append_etc_hosts", a_append, "/etc/hosts");
  check("rootfs.append_kiln_agent", a_append, "/kiln/kiln-agent");
  statfs_info("/");
  statfs_info("/work");
  statfs_info("/tmp");
  statfs_info("/dev/shm");
  statfs_info("/run/kiln");
}

/* ---------- cgroups ---------- */

static void cmd_cgroup(void) {
  struct statfs sf;
  int v2 = statfs("/sys/fs/cgroup", &sf) == 0 && sf.f_type == 0x63677270; /* CGROUP2_SUPER_MAGIC */
  info_str("cgroup.version", v2 ? "2" : "1");
  /* v1 paths first (this host is v1 hybrid), then v2. With a private cgroup
     namespace the container's own cgroup is the root of each hierarchy. */
  static const char *const mem[] = {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max", NULL};
  static const char *const memsw[] = {"/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes",
                                      "/sys/fs/cgroup/memory.swap.max", NULL};
  static const char *const pids[] = {"/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max", NULL};
  static const char *const quota[] = {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                                      "/sys/fs/cgroup/cpu.max", NULL};
  static const char *const period[] = {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us",
                                       "/sys/fs/cgroup/cpu/cpu.cfs_period_us", "/sys/fs/cgroup/cpu.max", NULL};
  info_first_file("cgroup.memory.limit", mem);
  info_first_file("cgroup.memory.swap_limit", memsw);
  info_first_file("cgroup.pids.max", pids);
  info_first_file("cgroup.cpu.quota", quota);
  info_first_file("cgroup.cpu.period", period);
  check("cgroup.write_memory_limit", a_append, "/sys/fs/cgroup/memory/memory.limit_in_bytes");
  check("cgroup.write_release_agent", a_append, "/sys/fs/cgroup/memory/release_agent");
  struct rlimit rl;
  static const struct {
    int resource;
    const char *name;
  } limits[] = {{RLIMIT_NOFILE, "rlimit.nofile"}, {RLIMIT_NPROC, "rlimit.nproc"}, {RLIMIT_CORE, "rlimit.core"},
                {RLIMIT_FSIZE, "rlimit.fsize"}, {RLIMIT_MEMLOCK, "rlimit.memlock"}, {RLIMIT_STACK, "rlimit.stack"}};
  for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
    if (getrlimit(limits[i].resource, &rl) == 0) {
      char value[96];
      snprintf(value, sizeof value, "soft=%lld hard=%lld",
               rl.rlim_cur == RLIM_INFINITY ? -1LL : (long long)rl.rlim_cur,
               rl.rlim_max == RLIM_INFINITY ? -1LL : (long long)rl.rlim_max);
      info_str(limits[i].name, value);
    }
  }
}

/* ---------- network ---------- */

static long a_socket(void *arg) {
  const int *triple = arg;
  int fd = socket(triple[0], triple[1], triple[2]);
  if (fd >= 0) close(fd);
  return fd;
}

static long a_tcp_loopback(void *arg) {
  (void)arg;
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return -1;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(9)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  long rc = connect(s, (struct sockaddr *)&addr, sizeof addr);
  int e = errno;
  close(s);
  errno = e;
  return rc;
}

static void cmd_net(void) {
  /* /proc/net/dev is per network namespace and needs no netlink. */
  char buf[8192];
  if (read_file("/proc/net/dev", buf, sizeof buf) < 0) {
    info_str("interfaces", "unreadable");
  } else {
    char list[512] = "";
    char *line = strchr(buf, '\n');
    if (line) line = strchr(line + 1, '\n'); /* skip the two header lines */
    while (line && *++line) {
      char *colon = strchr(line, ':');
      char *eol = strchr(line, '\n');
      if (!colon || (eol && colon > eol)) break;
      char *start = line;
      while (*start == ' ') start++;
      char name[64];
      size_t len = (size_t)(colon - start);
      if (len >= sizeof name) len = sizeof name - 1;
      memcpy(name, start, len);
      name[len] = 0;
      if (list[0]) strncat(list, ",", sizeof list - strlen(list) - 1);
      strncat(list, name, sizeof list - strlen(list) - 1);
      line = eol;
    }
    info_str("interfaces", list[0] ? list : "none");
  }
  static int unix_s[] = {AF_UNIX, SOCK_STREAM, 0}, inet[] = {AF_INET, SOCK_STREAM, 0},
             inet6[] = {AF_INET6, SOCK_STREAM, 0}, raw[] = {AF_INET, SOCK_RAW, IPPROTO_ICMP},
             icmp[] = {AF_INET, SOCK_DGRAM, IPPROTO_ICMP}, packet[] = {AF_PACKET, SOCK_RAW, 0},
             nl_route[] = {AF_NETLINK, SOCK_RAW, 0 /* NETLINK_ROUTE */},
             nl_netfilter[] = {AF_NETLINK, SOCK_RAW, 12 /* NETLINK_NETFILTER */},
             nl_audit[] = {AF_NETLINK, SOCK_RAW, 9 /* NETLINK_AUDIT */},
             nl_uevent[] = {AF_NETLINK, SOCK_DGRAM, 15 /* NETLINK_KOBJECT_UEVENT */},
             vsock[] = {40 /* AF_VSOCK */, SOCK_STREAM, 0}, alg[] = {38 /* AF_ALG */, SOCK_SEQPACKET, 0},
             bluetooth[] = {31, SOCK_RAW, 0}, xdp[] = {44 /* AF_XDP */, SOCK_RAW, 0},
             key[] = {15 /* PF_KEY */, SOCK_RAW, 2}, tipc[] = {30, SOCK_RDM, 0}, rds[] = {21, SOCK_SEQPACKET, 0};
  check("socket.unix", a_socket, unix_s);
  check("socket.inet", a_socket, inet);
  check("socket.inet6", a_socket, inet6);
  check("socket.inet_raw", a_socket, raw);
  check("socket.inet_icmp", a_socket, icmp);
  check("socket.packet", a_socket, packet);
  check("socket.netlink_route", a_socket, nl_route);
  check("socket.netlink_netfilter", a_socket, nl_netfilter);
  check("socket.netlink_audit", a_socket, nl_audit);
  check("socket.netlink_uevent", a_socket, nl_uevent);
  check("socket.vsock", a_socket, vsock);
  check("socket.alg", a_socket, alg);
  check("socket.bluetooth", a_socket, bluetooth);
  check("socket.xdp", a_socket, xdp);
  check("socket.key", a_socket, key);
  check("socket.tipc", a_socket, tipc);
  check("socket.rds", a_socket, rds);
  check("tcp.loopback_port_9", a_tcp_loopback, NULL);
}

/* ---------- environment ---------- */

static void cmd_env(void) {
  int n = 0;
  for (char **e = environ; *e; e++) {
    char line[512];
    size_t i = 0;
    for (const char *c = *e; *c && i + 1 < sizeof line; c++) line[i++] = (*c > ' ' && *c < 127) ? *c : '_';
    line[i] = 0;
    info_str("env", line);
    n++;
  }
  info_num("env.count", n);
}

/* ---------- the agent's secrets ---------- */

static long a_unix_connect(void *arg) {
  const char *path = arg;
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
  long rc = connect(s, (struct sockaddr *)&addr, sizeof addr);
  int e = errno;
  close(s);
  errno = e;
  return rc;
}

static long a_read(void *arg) {
  int fd = open((const char *)arg, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char b[64];
  long rc = read(fd, b, sizeof b);
  int e = errno;
  close(fd);
  errno = e;
  return rc;
}

static long a_open_ro(void *arg) {
  int fd = open((const char *)arg, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) close(fd);
  return fd;
}

static long a_unlink(void *arg) { return unlink((const char *)arg); }

static long a_ptrace_pid1(void *arg) {
  (void)arg;
  long rc = ptrace(PTRACE_SEIZE, 1, 0, 0);
  int e = errno;
  if (rc == 0) ptrace(PTRACE_DETACH, 1, 0, 0);
  errno = e;
  return rc;
}

static long a_kill0_pid1(void *arg) {
  (void)arg;
  return kill(1, 0);
}

static void cmd_secrets(void) {
  check("agent.connect_socket", a_unix_connect, "/run/kiln/agent.sock");
  check("agent.read_token", a_read, "/run/kiln/token");
  check("agent.create_in_socket_dir", a_create, "/run/kiln/evil");
  check("agent.unlink_socket", a_unlink, "/run/kiln/agent.sock");
  check("agent.open_proc1_mem", a_open_ro, "/proc/1/mem");
  check("agent.read_proc1_environ", a_read, "/proc/1/environ");
  check("agent.read_proc1_root", a_open_ro, "/proc/1/root/kiln/kiln-agent");
  check("agent.ptrace_seize_pid1", a_ptrace_pid1, NULL);
  check("agent.signal0_pid1", a_kill0_pid1, NULL);
}

/* ---------- seccomp-filtered syscalls ---------- */

static long a_syscall_nr(void *arg) {
  long nr = (long)(intptr_t)arg;
  return syscall(nr, -1L, 0L, 0L, 0L, 0L, 0L);
}

static long a_io_uring_setup(void *arg) {
  (void)arg;
  unsigned char params[120];
  memset(params, 0, sizeof params);
  long fd = syscall(NR_io_uring_setup, 4, params);
  if (fd >= 0) close((int)fd);
  return fd;
}

/* A paused child for the cross-process syscalls below. */
static pid_t spawn_sleeper(void) {
  pid_t c = fork();
  if (c == 0) {
    pause();
    _exit(0);
  }
  return c;
}
static void reap(pid_t c) {
  kill(c, SIGKILL);
  waitpid(c, NULL, 0);
}

static long a_ptrace_traceme(void *arg) {
  (void)arg;
  return ptrace(PTRACE_TRACEME, 0, 0, 0);
}

static long a_ptrace_attach_child(void *arg) {
  (void)arg;
  pid_t c = spawn_sleeper();
  long rc = ptrace(PTRACE_ATTACH, c, 0, 0);
  int e = errno;
  reap(c);
  errno = e;
  return rc;
}

static char probe_secret[32] = "kiln-probe-secret";
static long a_process_vm(void *arg) {
  int write_mode = arg != NULL;
  pid_t c = spawn_sleeper();
  char buf[32] = {0};
  struct iovec local = {buf, sizeof buf}, remote = {probe_secret, sizeof probe_secret};
  long rc = write_mode ? process_vm_writev(c, &local, 1, &remote, 1, 0) : process_vm_readv(c, &local, 1, &remote, 1, 0);
  int e = errno;
  reap(c);
  errno = e;
  return rc;
}

static long a_kcmp(void *arg) {
  (void)arg;
  return syscall(SYS_kcmp, getpid(), getppid(), 0 /* KCMP_FILE */, 0, 0);
}

static long a_pidfd_getfd(void *arg) {
  (void)arg;
  long pidfd = syscall(NR_pidfd_open, getpid(), 0);
  if (pidfd < 0) return -1;
  return syscall(NR_pidfd_getfd, pidfd, 0, 0);
}

static long a_fsopen(void *arg) {
  (void)arg;
  return syscall(NR_fsopen, "tmpfs", 0);
}
static long a_fspick(void *arg) {
  (void)arg;
  return syscall(NR_fspick, AT_FDCWD, "/tmp", 0);
}
static long a_open_tree(void *arg) {
  (void)arg;
  return syscall(NR_open_tree, AT_FDCWD, "/tmp", 1 /* OPEN_TREE_CLONE */);
}
static long a_move_mount(void *arg) {
  (void)arg;
  return syscall(NR_move_mount, -1, "", AT_FDCWD, "/tmp", 0);
}
static long a_mount_setattr(void *arg) {
  (void)arg;
  return syscall(NR_mount_setattr, AT_FDCWD, "/tmp", 0, NULL, 0);
}

static long a_name_to_handle_at(void *arg) {
  (void)arg;
  struct {
    unsigned int bytes;
    int type;
    unsigned char data[128];
  } handle = {.bytes = 128};
  int mount_id;
  return syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &handle, &mount_id, 0);
}

static long a_open_by_handle_at(void *arg) {
  (void)arg;
  return syscall(SYS_open_by_handle_at, AT_FDCWD, "\x08\0\0\0\x01\0\0\0\x02\0\0\0\0\0\0\0", O_RDONLY);
}

static long a_keyctl(void *arg) {
  (void)arg;
  return syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
}
static long a_add_key(void *arg) {
  (void)arg;
  return syscall(SYS_add_key, "user", "kiln", "x", 1, KEY_SPEC_PROCESS_KEYRING);
}
static long a_request_key(void *arg) {
  (void)arg;
  return syscall(SYS_request_key, "user", "kiln", NULL, 0);
}
static long a_bpf(void *arg) {
  (void)arg;
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.map_type = BPF_MAP_TYPE_ARRAY;
  attr.key_size = 4;
  attr.value_size = 4;
  attr.max_entries = 1;
  return syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
}
static long a_perf_event_open(void *arg) {
  (void)arg;
  struct perf_event_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.type = PERF_TYPE_SOFTWARE;
  attr.size = sizeof attr;
  attr.config = PERF_COUNT_SW_CPU_CLOCK;
  attr.exclude_kernel = 1;
  return syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
}
static long a_userfaultfd(void *arg) {
  (void)arg;
  return syscall(SYS_userfaultfd, O_CLOEXEC);
}
static long a_unshare(void *arg) { return unshare((int)(intptr_t)arg); }
static long a_clone_newuser(void *arg) {
  (void)arg;
  long rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
  if (rc == 0) _exit(0);
  if (rc > 0) waitpid((pid_t)rc, NULL, 0);
  return rc;
}
static long a_clone3(void *arg) {
  (void)arg;
  uint64_t args[11];
  memset(args, 0, sizeof args);
  args[4] = SIGCHLD; /* exit_signal */
  long rc = syscall(NR_clone3, args, sizeof args);
  if (rc == 0) _exit(0);
  if (rc > 0) waitpid((pid_t)rc, NULL, 0);
  return rc;
}
static long a_setns(void *arg) {
  (void)arg;
  int fd = open("/proc/1/ns/mnt", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  return setns(fd, 0);
}
static long a_mount_tmpfs(void *arg) {
  (void)arg;
  return mount("none", "/tmp", "tmpfs", 0, NULL);
}
static long a_remount_root(void *arg) {
  (void)arg;
  return mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL);
}
static long a_umount(void *arg) {
  (void)arg;
  return umount2("/tmp", MNT_DETACH);
}
static long a_pivot_root(void *arg) {
  (void)arg;
  return syscall(SYS_pivot_root, "/tmp", "/tmp");
}
static long a_chroot(void *arg) {
  (void)arg;
  return chroot("/tmp");
}
static long a_mknod(void *arg) {
  (void)arg;
  return mknod("/tmp/kiln-probe-mem", S_IFCHR | 0600, makedev(1, 1));
}
static long a_init_module(void *arg) {
  (void)arg;
  return syscall(SYS_init_module, "\0\0\0\0", 4, "");
}
static long a_finit_module(void *arg) {
  (void)arg;
  return syscall(SYS_finit_module, 0, "", 0);
}
static long a_delete_module(void *arg) {
  (void)arg;
  return syscall(SYS_delete_module, "ext4", O_NONBLOCK);
}
static long a_kexec_load(void *arg) {
  (void)arg;
  return syscall(SYS_kexec_load, 0, 0, NULL, 0);
}
static long a_kexec_file_load(void *arg) {
  (void)arg;
  return syscall(SYS_kexec_file_load, -1, -1, 0, "", 0);
}
static long a_reboot(void *arg) {
  (void)arg;
  return syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_CAD_OFF, NULL);
}
static long a_clock_settime(void *arg) {
  (void)arg;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return clock_settime(CLOCK_REALTIME, &ts);
}
static long a_settimeofday(void *arg) {
  (void)arg;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return settimeofday(&tv, NULL);
}
static long a_adjtimex(void *arg) {
  (void)arg;
  struct timex tx = {.modes = ADJ_OFFSET, .offset = 0};
  return adjtimex(&tx);
}
static long a_sethostname(void *arg) {
  (void)arg;
  return sethostname("evil", 4);
}
static long a_setdomainname(void *arg) {
  (void)arg;
  return setdomainname("evil", 4);
}
static long a_syslog(void *arg) {
  (void)arg;
  char b[256];
  return syscall(SYS_syslog, 3 /* READ_ALL */, b, sizeof b);
}
static long a_iopl(void *arg) {
  (void)arg;
  return iopl(3);
}
static long a_ioperm(void *arg) {
  (void)arg;
  return ioperm(0x80, 1, 1);
}
static long a_swapon(void *arg) {
  (void)arg;
  return swapon("/tmp/kiln-probe-swap", 0);
}
static long a_swapoff(void *arg) {
  (void)arg;
  return swapoff("/tmp/kiln-probe-swap");
}
static long a_acct(void *arg) {
  (void)arg;
  return acct("/tmp/kiln-probe-acct");
}
static long a_fanotify_init(void *arg) {
  (void)arg;
  return syscall(SYS_fanotify_init, 0, 0);
}
static long a_quotactl(void *arg) {
  (void)arg;
  return syscall(SYS_quotactl, 0x800002 /* Q_GETQUOTA usr */, "/dev/vda", 0, NULL);
}
static long a_lookup_dcookie(void *arg) {
  (void)arg;
  char b[64];
  return syscall(SYS_lookup_dcookie, 0ULL, b, sizeof b);
}
static long a_personality(void *arg) {
  (void)arg;
  return syscall(SYS_personality, 0x0040000 /* ADDR_NO_RANDOMIZE */);
}
static long a_setuid0(void *arg) {
  (void)arg;
  return setuid(0);
}
static long a_setgid0(void *arg) {
  (void)arg;
  return setgid(0);
}
static long a_setgroups(void *arg) {
  (void)arg;
  return setgroups(0, NULL);
}
static long a_memfd_create(void *arg) {
  (void)arg;
  return syscall(SYS_memfd_create, "kiln-probe", 0);
}

struct syscall_check {
  const char *name;
  attempt_fn attempt;
  void *arg;
};

static void cmd_seccomp(void) {
  static const struct syscall_check checks[] = {
      /* Denied by Kiln's profile only (Docker 20.10's default allows them). */
      {"io_uring_setup", a_io_uring_setup, NULL},
      {"io_uring_enter", a_syscall_nr, (void *)(intptr_t)NR_io_uring_enter},
      {"io_uring_register", a_syscall_nr, (void *)(intptr_t)NR_io_uring_register},
      {"ptrace.traceme", a_ptrace_traceme, NULL},
      {"ptrace.attach_child", a_ptrace_attach_child, NULL},
      {"process_vm_readv", a_process_vm, NULL},
      {"process_vm_writev", a_process_vm, (void *)1},
      {"kcmp", a_kcmp, NULL},
      {"pidfd_getfd", a_pidfd_getfd, NULL},
      {"name_to_handle_at", a_name_to_handle_at, NULL},
      /* The new mount API (denied by Docker's default without CAP_SYS_ADMIN;
         Kiln denies it regardless of capabilities). */
      {"fsopen", a_fsopen, NULL},
      {"fsconfig", a_syscall_nr, (void *)(intptr_t)NR_fsconfig},
      {"fsmount", a_syscall_nr, (void *)(intptr_t)NR_fsmount},
      {"fspick", a_fspick, NULL},
      {"open_tree", a_open_tree, NULL},
      {"move_mount", a_move_mount, NULL},
      {"mount_setattr", a_mount_setattr, NULL},
      /* Denied by both profiles (catalogue rows 17-20, 30-33). */
      {"keyctl", a_keyctl, NULL},
      {"add_key", a_add_key, NULL},
      {"request_key", a_request_key, NULL},
      {"bpf", a_bpf, NULL},
      {"perf_event_open", a_perf_event_open, NULL},
      {"userfaultfd", a_userfaultfd, NULL},
      {"unshare.newuser", a_unshare, (void *)(intptr_t)CLONE_NEWUSER},
      {"unshare.newns", a_unshare, (void *)(intptr_t)CLONE_NEWNS},
      {"unshare.newnet", a_unshare, (void *)(intptr_t)CLONE_NEWNET},
      {"clone.newuser", a_clone_newuser, NULL},
      {"clone3", a_clone3, NULL},
      {"setns", a_setns, NULL},
      {"mount.tmpfs", a_mount_tmpfs, NULL},
      {"mount.remount_root", a_remount_root, NULL},
      {"umount2", a_umount, NULL},
      {"pivot_root", a_pivot_root, NULL},
      {"chroot", a_chroot, NULL},
      {"mknod.char_mem", a_mknod, NULL},
      {"init_module", a_init_module, NULL},
      {"finit_module", a_finit_module, NULL},
      {"delete_module", a_delete_module, NULL},
      {"kexec_load", a_kexec_load, NULL},
      {"kexec_file_load", a_kexec_file_load, NULL},
      {"reboot", a_reboot, NULL},
      {"clock_settime", a_clock_settime, NULL},
      {"settimeofday", a_settimeofday, NULL},
      {"adjtimex.set", a_adjtimex, NULL},
      {"sethostname", a_sethostname, NULL},
      {"setdomainname", a_setdomainname, NULL},
      {"syslog", a_syslog, NULL},
      {"iopl", a_iopl, NULL},
      {"ioperm", a_ioperm, NULL},
      {"swapon", a_swapon, NULL},
      {"swapoff", a_swapoff, NULL},
      {"acct", a_acct, NULL},
      {"open_by_handle_at", a_open_by_handle_at, NULL},
      {"fanotify_init", a_fanotify_init, NULL},
      {"quotactl", a_quotactl, NULL},
      {"lookup_dcookie", a_lookup_dcookie, NULL},
      {"personality.addr_no_randomize", a_personality, NULL},
      {"setuid0", a_setuid0, NULL},
      {"setgid0", a_setgid0, NULL},
      {"setgroups", a_setgroups, NULL},
      /* Allowed (reported so that a change shows up). */
      {"memfd_create", a_memfd_create, NULL},
      /* A syscall number no kernel has: runc's filter answers ENOSYS. */
      {"syscall_1000", a_syscall_nr, (void *)(intptr_t)NR_unknown},
  };
  for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) check(checks[i].name, checks[i].attempt, checks[i].arg);
}

/* ---------- other ABIs ---------- */

static long int80(long nr, long a, long b, long c) {
  long rc;
  __asm__ volatile("int $0x80" : "=a"(rc) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
  if (rc < 0 && rc > -4096) {
    errno = (int)-rc;
    return -1;
  }
  return rc;
}
static long a_ia32(void *arg) {
  const long *call = arg;
  return int80(call[0], call[1], call[2], call[3]);
}
static long a_x32(void *arg) {
  const long *call = arg;
  return syscall(call[0] | 0x40000000L, call[1], call[2], call[3]);
}

static void cmd_abi(void) {
  static long ia32_getpid[] = {20, 0, 0, 0}, ia32_unshare[] = {310, CLONE_NEWUSER, 0, 0},
              ia32_keyctl[] = {288, 0, -3, 0}, ia32_setuid32[] = {213, 0, 0, 0},
              ia32_socketcall[] = {102, 1 /* SYS_SOCKET */, 0, 0}, ia32_io_uring[] = {425, 4, 0, 0};
  static long x32_getpid[] = {39, 0, 0, 0}, x32_unshare[] = {272, CLONE_NEWUSER, 0, 0};
  check("ia32.getpid", a_ia32, ia32_getpid);
  check("ia32.unshare", a_ia32, ia32_unshare);
  check("ia32.keyctl", a_ia32, ia32_keyctl);
  check("ia32.setuid32", a_ia32, ia32_setuid32);
  check("ia32.socketcall", a_ia32, ia32_socketcall);
  check("ia32.io_uring_setup", a_ia32, ia32_io_uring);
  check("x32.getpid", a_x32, x32_getpid);
  check("x32.unshare", a_x32, x32_unshare);
}

/* ---------- resource subcommands for the hostile suite ---------- */

#define MAX_CHILDREN 100000
static pid_t children[MAX_CHILDREN];

static void cmd_fork(int hold_secs) {
  int n = 0;
  int err = 0;
  for (;;) {
    pid_t c = fork();
    if (c < 0) {
      err = errno;
      break;
    }
    if (c == 0) {
      pause();
      _exit(0);
    }
    children[n++] = c;
    if (n >= MAX_CHILDREN) break;
  }
  info_num("fork.children", n);
  report("fork", err ? -1 : 0, err);
  if (hold_secs > 0) sleep((unsigned)hold_secs);
  for (int i = 0; i < n; i++) kill(children[i], SIGKILL);
  for (int i = 0; i < n; i++) waitpid(children[i], NULL, 0);
}

static long a_mem(void *arg) {
  long mib = (long)(intptr_t)arg;
  for (long done = 0; done < mib; done += 8) {
    char *p = malloc(8 << 20);
    if (!p) return -1;
    memset(p, 1, 8 << 20);
    if (done % 64 == 0) info_num("mem.touched_mib", done + 8);
  }
  return 0;
}

static long a_nofile(void *arg) {
  (void)arg;
  int n = 0;
  while (open("/dev/null", O_RDONLY) >= 0) n++;
  int e = errno;
  info_num("nofile.opened", n);
  errno = e;
  return -1;
}

static const char *self_path;
static long a_memfd_exec(void *arg) {
  (void)arg;
  int fd = (int)syscall(SYS_memfd_create, "kiln-probe-exec", 0);
  if (fd < 0) return -1;
  int in = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  if (in < 0) return -1;
  char buf[65536];
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0)
    if (write(fd, buf, (size_t)n) != n) return -1;
  close(in);
  pid_t c = fork();
  if (c == 0) {
    char *argv[] = {(char *)self_path, "noop", NULL};
    char *envp[] = {NULL};
    fexecve(fd, argv, envp);
    _exit(127);
  }
  int status;
  waitpid(c, &status, 0);
  close(fd);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
  errno = EACCES;
  return -1;
}

static const char abstract_name[] = "\0kiln-probe";
static long a_abstract(void *arg) {
  int listen_secs = (int)(intptr_t)arg; /* < 0: connect */
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  memcpy(addr.sun_path, abstract_name, sizeof abstract_name - 1);
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + sizeof abstract_name - 1);
  long rc;
  if (listen_secs >= 0) {
    rc = bind(s, (struct sockaddr *)&addr, len);
    if (rc == 0) rc = listen(s, 1);
    if (rc == 0) {
      info_str("abstract.listening", "@kiln-probe");
      sleep((unsigned)listen_secs);
    }
  } else {
    rc = connect(s, (struct sockaddr *)&addr, len);
  }
  int e = errno;
  close(s);
  errno = e;
  return rc;
}

#define SHM_KEY 0x6b696c6e /* "kiln" */
static long a_shm(void *arg) {
  int create_secs = (int)(intptr_t)arg; /* < 0: open */
  if (create_secs >= 0) {
    long id = shmget(SHM_KEY, 4096, IPC_CREAT | 0666);
    if (id >= 0) {
      info_num("shm.id", id);
      sleep((unsigned)create_secs);
      shmctl((int)id, IPC_RMID, NULL);
    }
    return id;
  }
  return shmget(SHM_KEY, 4096, 0666);
}

static void usage(void) {
  fprintf(stderr,
          "usage: kiln-probe all|identity|fs|cgroup|net|env|secrets|seccomp|abi\n"
          "       kiln-probe fork [hold_secs] | mem <MiB> | nofile | memfd-exec\n"
          "       kiln-probe abstract listen [secs]|connect | shm create [secs]|open | unix <path> | noop\n");
}

int main(int argc, char **argv) {
  self_path = argv[0];
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) {
    usage();
    return 64;
  }
  const char *cmd = argv[1];
  const char *arg1 = argc > 2 ? argv[2] : NULL;
  const char *arg2 = argc > 3 ? argv[3] : NULL;
  if (!strcmp(cmd, "all")) {
    cmd_identity();
    cmd_fs();
    cmd_cgroup();
    cmd_net();
    cmd_env();
    cmd_secrets();
    cmd_seccomp();
    cmd_abi();
  } else if (!strcmp(cmd, "identity")) {
    cmd_identity();
  } else if (!strcmp(cmd, "fs")) {
    cmd_fs();
  } else if (!strcmp(cmd, "cgroup")) {
    cmd_cgroup();
  } else if (!strcmp(cmd, "net")) {
    cmd_net();
  } else if (!strcmp(cmd, "env")) {
    cmd_env();
  } else if (!strcmp(cmd, "secrets")) {
    cmd_secrets();
  } else if (!strcmp(cmd, "seccomp")) {
    cmd_seccomp();
  } else if (!strcmp(cmd, "abi")) {
    cmd_abi();
  } else if (!strcmp(cmd, "fork")) {
    cmd_fork(arg1 ? atoi(arg1) : 0);
  } else if (!strcmp(cmd, "mem") && arg1) {
    check("mem", a_mem, (void *)(intptr_t)atol(arg1));
  } else if (!strcmp(cmd, "nofile")) {
    check("nofile", a_nofile, NULL);
  } else if (!strcmp(cmd, "memfd-exec")) {
    check("memfd_exec", a_memfd_exec, NULL);
  } else if (!strcmp(cmd, "abstract") && arg1 && !strcmp(arg1, "listen")) {
    check("abstract.listen", a_abstract, (void *)(intptr_t)(arg2 ? atoi(arg2) : 20));
  } else if (!strcmp(cmd, "abstract") && arg1 && !strcmp(arg1, "connect")) {
    check("abstract.connect", a_abstract, (void *)(intptr_t)-1);
  } else if (!strcmp(cmd, "shm") && arg1 && !strcmp(arg1, "create")) {
    check("shm.create", a_shm, (void *)(intptr_t)(arg2 ? atoi(arg2) : 20));
  } else if (!strcmp(cmd, "shm") && arg1 && !strcmp(arg1, "open")) {
    check("shm.open", a_shm, (void *)(intptr_t)-1);
  } else if (!strcmp(cmd, "unix") && arg1) {
    check("unix.connect", a_unix_connect, (void *)arg1);
  } else if (!strcmp(cmd, "noop")) {
    return 0;
  } else {
    usage();
    return 64;
  }
  return 0;
}

//! The agent re-executed as a short-lived child (`kiln-agent --exec-step` or
//! `--collect-artifacts`), so that privilege dropping happens in a fresh
//! process with only safe code: `unsafe_code` is forbidden, so `pre_exec`
//! is not available.
//!
//! `--exec-step`, in this order (each step fails closed with exit 125 and an
//! `EXEC_ERROR_MARKER` line on stderr):
//! 1. read the [`ExecSpec`] JSON from stdin (bounded);
//! 2. `setsid()`: the step gets its own session and process group, so the
//!    agent can kill the whole group (background grandchildren included);
//! 3. `oom_score_adj = 1000`: under memory pressure the kernel kills the step,
//!    not the agent (a step is never more important than PID 1);
//! 4. rlimits (nofile, fsize, nproc; core 0), never above the current hard limit;
//! 5. `setgroups([])`, `setresgid`, `setresuid` to the per-execution step user,
//!    then checks that all three uids changed. Moving every uid away from 0
//!    clears the capability sets, and the kernel marks the process
//!    non-dumpable, so a step's other processes cannot ptrace this one;
//! 6. `chdir` to the step's cwd, create `$KILN_VARS` and write one file per
//!    injected variable, as the step user (`/work` is 0700 for that user);
//! 7. write the script into a memfd (a pipe if memfd is denied) and exec the
//!    shell on `/proc/self/fd/N`, with stdin `/dev/null` and exactly the
//!    spec's environment. `Command::exec` also resets SIGPIPE to default
//!    (the Rust runtime ignores it, and shells cannot un-ignore an inherited
//!    ignored signal).
//!
//! `--collect-artifacts` drops to the step user (the agent, root without
//! CAP_DAC_*, cannot read `/work`) and writes a framed stream of the regular
//! files under the out dir to stdout (see [`CollectRecord`]). It never follows
//! a symlink: it walks with `openat`/`fstatat` relative to directory fds,
//! one `readdir` name at a time, with `O_NOFOLLOW`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid, setsid};
use protocol::{ArtifactRejectReason, MAX_ARTIFACT_PATH_COMPONENTS, validate_artifact_name};

use crate::step_spec::{
    CollectRecord, CollectSpec, Credentials, EXEC_ERROR_MARKER, EXEC_OK_MARKER, ExecSpec,
    MAX_SPEC_BYTES, StepRlimits,
};

/// Exit status of a trampoline that failed before exec.
pub const EXIT_SETUP_FAILED: i32 = 125;

/// A setup step that failed: a stable reason and a message.
struct SetupError {
    reason: &'static str,
    message: String,
}

fn setup_error(reason: &'static str, message: impl std::fmt::Display) -> SetupError {
    SetupError {
        reason,
        message: message.to_string(),
    }
}

/// `--exec-step`: returns only on failure (the exit status to use).
pub fn exec_step() -> i32 {
    let error = match prepare_and_exec() {
        Ok(never) => match never {},
        Err(error) => error,
    };
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "{EXEC_ERROR_MARKER}{} {}",
        error.reason, error.message
    );
    let _ = stderr.flush();
    EXIT_SETUP_FAILED
}

fn read_spec<T: serde::de::DeserializeOwned>() -> Result<T, SetupError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| setup_error("read_spec", error))?;
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(setup_error("read_spec", "spec too large"));
    }
    serde_json::from_slice(&bytes).map_err(|error| setup_error("read_spec", error))
}

enum Never {}

fn prepare_and_exec() -> Result<Never, SetupError> {
    let spec: ExecSpec = read_spec()?;
    setsid().map_err(|errno| setup_error("setsid", errno))?;
    std::fs::write("/proc/self/oom_score_adj", spec.oom_score_adj.to_string())
        .map_err(|error| setup_error("oom_score_adj", error))?;
    apply_rlimits(&spec.rlimits)?;
    if let Some(credentials) = spec.credentials {
        drop_credentials(credentials)?;
    }
    std::env::set_current_dir(&spec.cwd)
        .map_err(|error| setup_error("cwd", format!("{}: {error}", spec.cwd.display())))?;
    write_vars(&spec.vars_dir, &spec.vars)?;
    let script_fd = script_fd(spec.script.as_bytes())?;
    let script_path = format!("/proc/self/fd/{}", script_fd.as_raw_fd());

    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{EXEC_OK_MARKER}");
    let _ = stderr.flush();
    drop(stderr);
    let error = std::process::Command::new(&spec.shell)
        .arg(&script_path)
        .env_clear()
        .envs(&spec.env)
        .stdin(std::process::Stdio::null())
        .exec();
    // After the OK marker, stderr belongs to the step: report like a shell.
    eprintln!("kiln-agent: cannot exec {}: {error}", spec.shell);
    let status = if error.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    std::process::exit(status);
}

fn apply_rlimits(rlimits: &StepRlimits) -> Result<(), SetupError> {
    let wanted = [
        (Resource::RLIMIT_NOFILE, rlimits.nofile),
        (Resource::RLIMIT_FSIZE, rlimits.fsize_bytes),
        (Resource::RLIMIT_NPROC, rlimits.nproc),
        (Resource::RLIMIT_CORE, Some(0)),
    ];
    for (resource, limit) in wanted {
        let Some(limit) = limit else { continue };
        let (_, hard) = getrlimit(resource).map_err(|errno| setup_error("rlimit", errno))?;
        let limit = limit.min(hard);
        setrlimit(resource, limit, limit)
            .map_err(|errno| setup_error("rlimit", format!("{resource:?}: {errno}")))?;
    }
    Ok(())
}

/// Drops to the step user for good and checks that it worked.
fn drop_credentials(credentials: Credentials) -> Result<(), SetupError> {
    if credentials.uid == 0 || credentials.gid == 0 {
        return Err(setup_error("credentials", "refusing to run a step as root"));
    }
    let uid = Uid::from_raw(credentials.uid);
    let gid = Gid::from_raw(credentials.gid);
    setgroups(&[]).map_err(|errno| setup_error("credentials", format!("setgroups: {errno}")))?;
    setresgid(gid, gid, gid)
        .map_err(|errno| setup_error("credentials", format!("setresgid: {errno}")))?;
    setresuid(uid, uid, uid)
        .map_err(|errno| setup_error("credentials", format!("setresuid: {errno}")))?;
    let uids = nix::unistd::getresuid().map_err(|errno| setup_error("credentials", errno))?;
    let gids = nix::unistd::getresgid().map_err(|errno| setup_error("credentials", errno))?;
    let is_dropped = [uids.real, uids.effective, uids.saved] == [uid; 3]
        && [gids.real, gids.effective, gids.saved] == [gid; 3]
        && nix::unistd::setuid(Uid::from_raw(0)).is_err();
    if !is_dropped {
        return Err(setup_error("credentials", "credentials did not change"));
    }
    Ok(())
}

fn write_vars(vars_dir: &Path, vars: &BTreeMap<String, String>) -> Result<(), SetupError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(vars_dir)
        .map_err(|error| setup_error("vars", format!("{}: {error}", vars_dir.display())))?;
    for (name, value) in vars {
        // Names were checked by the agent (no '/', not '.' or '..').
        let path = vars_dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(o_nofollow_bits())
            .open(&path)
            .map_err(|error| setup_error("vars", format!("{name}: {error}")))?;
        file.write_all(value.as_bytes())
            .map_err(|error| setup_error("vars", format!("{name}: {error}")))?;
    }
    Ok(())
}

fn o_nofollow_bits() -> i32 {
    OFlag::O_NOFOLLOW.bits()
}

/// The script as an inheritable fd: a memfd, or a pipe if the seccomp
/// profile denies memfd_create (then the script must fit the pipe buffer).
fn script_fd(script: &[u8]) -> Result<OwnedFd, SetupError> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    match memfd_create("kiln-step", MFdFlags::empty()) {
        Ok(memfd) => {
            let mut file = std::fs::File::from(memfd);
            file.write_all(script)
                .map_err(|error| setup_error("script", error))?;
            nix::unistd::lseek(file.as_fd(), 0, nix::unistd::Whence::SeekSet)
                .map_err(|errno| setup_error("script", errno))?;
            Ok(OwnedFd::from(file))
        }
        Err(_) => {
            const MAX_PIPE_SCRIPT_BYTES: usize = 1024 * 1024;
            if script.len() > MAX_PIPE_SCRIPT_BYTES {
                return Err(setup_error("script", "script too large without memfd"));
            }
            let (read_end, write_end) =
                nix::unistd::pipe().map_err(|errno| setup_error("script", errno))?;
            if script.len() > 60 * 1024 {
                let size = i32::try_from(script.len()).expect("bounded above by 1 MiB");
                nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size))
                    .map_err(|errno| setup_error("script", format!("pipe size: {errno}")))?;
            }
            let mut file = std::fs::File::from(write_end);
            file.write_all(script)
                .map_err(|error| setup_error("script", error))?;
            Ok(read_end)
        }
    }
}

/// `--collect-artifacts`: returns the exit status.
pub fn collect_artifacts() -> i32 {
    let result = read_spec::<CollectSpec>().and_then(|spec| {
        if let Some(credentials) = spec.credentials {
            drop_credentials(credentials)?;
        }
        let stdout = std::io::stdout().lock();
        let mut collector = Collector {
            spec,
            out: std::io::BufWriter::with_capacity(64 * 1024, stdout),
            n_accepted: 0,
            total_bytes: 0,
            n_rejected: 0,
            n_visited: 0,
        };
        collector
            .run()
            .map_err(|error| setup_error("collect", error))
    });
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!(
                "kiln-agent: collect artifacts: {} {}",
                error.reason, error.message
            );
            EXIT_SETUP_FAILED
        }
    }
}

/// Most directory entries examined, and most rejections reported one by one.
const MAX_VISITED_ENTRIES: u64 = 10_000;
const MAX_REPORTED_REJECTIONS: u64 = 100;

struct Collector<W: Write> {
    spec: CollectSpec,
    out: W,
    n_accepted: u32,
    total_bytes: u64,
    n_rejected: u64,
    n_visited: u64,
}

impl<W: Write> Collector<W> {
    fn run(&mut self) -> std::io::Result<()> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::open(&self.spec.out_dir, flags, Mode::empty()) {
            Ok(dir_fd) => self.walk(dir_fd)?,
            Err(nix::errno::Errno::ENOENT) => {}
            Err(nix::errno::Errno::ELOOP) => self.reject("out", ArtifactRejectReason::Symlink)?,
            Err(nix::errno::Errno::ENOTDIR) => {
                self.reject("out", ArtifactRejectReason::NotRegularFile)?
            }
            Err(errno) => return Err(errno.into()),
        }
        self.record(&CollectRecord::End)?;
        self.out.flush()
    }

    fn record(&mut self, record: &CollectRecord) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    fn reject(&mut self, name: &str, reason: ArtifactRejectReason) -> std::io::Result<()> {
        self.n_rejected += 1;
        if self.n_rejected > MAX_REPORTED_REJECTIONS {
            return Ok(());
        }
        self.record(&CollectRecord::Rejected {
            name: name.to_string(),
            reason,
        })
    }

    /// Depth-first over directories, entries sorted by name within each one.
    fn walk(&mut self, root: OwnedFd) -> std::io::Result<()> {
        let mut stack: Vec<(OwnedFd, String, usize)> = vec![(root, String::new(), 0)];
        while let Some((dir_fd, prefix, depth)) = stack.pop() {
            let names = self.read_names(&dir_fd, &prefix)?;
            let mut subdirs = Vec::new();
            for name_bytes in names {
                let display_name = format!("{prefix}{}", String::from_utf8_lossy(&name_bytes));
                let Ok(name) = std::str::from_utf8(&name_bytes) else {
                    self.reject(&display_name, ArtifactRejectReason::InvalidName)?;
                    continue;
                };
                let rel_name = format!("{prefix}{name}");
                if validate_artifact_name(&rel_name).is_err() {
                    self.reject(&rel_name, ArtifactRejectReason::InvalidName)?;
                    continue;
                }
                let os_name = OsStr::from_bytes(&name_bytes);
                let stat = match fstatat(&dir_fd, os_name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                {
                    Ok(stat) => stat,
                    Err(_) => {
                        self.reject(&rel_name, ArtifactRejectReason::ReadFailed)?;
                        continue;
                    }
                };
                match file_kind(&stat) {
                    FileKind::Symlink => self.reject(&rel_name, ArtifactRejectReason::Symlink)?,
                    FileKind::Other => {
                        self.reject(&rel_name, ArtifactRejectReason::NotRegularFile)?
                    }
                    FileKind::Directory => {
                        if depth + 1 >= MAX_ARTIFACT_PATH_COMPONENTS {
                            self.reject(&rel_name, ArtifactRejectReason::InvalidName)?;
                            continue;
                        }
                        let flags = OFlag::O_RDONLY
                            | OFlag::O_DIRECTORY
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC;
                        match openat(&dir_fd, os_name, flags, Mode::empty()) {
                            Ok(sub_fd) => subdirs.push((sub_fd, format!("{rel_name}/"), depth + 1)),
                            Err(_) => self.reject(&rel_name, ArtifactRejectReason::ReadFailed)?,
                        }
                    }
                    FileKind::Regular => self.regular_file(&dir_fd, os_name, &rel_name, &stat)?,
                }
            }
            // Reverse so the stack pops subdirectories in name order.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    fn read_names(&mut self, dir_fd: &OwnedFd, prefix: &str) -> std::io::Result<Vec<Vec<u8>>> {
        let dup = dir_fd.try_clone()?;
        let mut dir = nix::dir::Dir::from_fd(dup)?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            self.n_visited += 1;
            if self.n_visited > MAX_VISITED_ENTRIES {
                self.reject(&format!("{prefix}…"), ArtifactRejectReason::TooMany)?;
                break;
            }
            names.push(name.to_vec());
        }
        names.sort();
        Ok(names)
    }

    fn regular_file(
        &mut self,
        dir_fd: &OwnedFd,
        os_name: &OsStr,
        rel_name: &str,
        stat: &FileStat,
    ) -> std::io::Result<()> {
        let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
        if stat.st_nlink > 1 {
            return self.reject(rel_name, ArtifactRejectReason::Hardlink);
        }
        if self.n_accepted >= self.spec.max_artifacts {
            return self.reject(rel_name, ArtifactRejectReason::TooMany);
        }
        if size > self.spec.max_artifact_bytes {
            return self.reject(rel_name, ArtifactRejectReason::TooLarge);
        }
        if self.total_bytes.saturating_add(size) > self.spec.max_total_bytes {
            return self.reject(rel_name, ArtifactRejectReason::TotalTooLarge);
        }
        // O_NONBLOCK: a FIFO swapped in after fstatat must not block the open.
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY;
        let Ok(file_fd) = openat(dir_fd, os_name, flags, Mode::empty()) else {
            return self.reject(rel_name, ArtifactRejectReason::ReadFailed);
        };
        // Same inode, still a regular file: nothing was swapped in between.
        match fstat(&file_fd) {
            Ok(opened)
                if file_kind(&opened) == FileKind::Regular
                    && opened.st_ino == stat.st_ino
                    && opened.st_dev == stat.st_dev => {}
            _ => return self.reject(rel_name, ArtifactRejectReason::NotRegularFile),
        }
        self.n_accepted += 1;
        self.total_bytes += size;
        self.record(&CollectRecord::File {
            name: rel_name.to_string(),
            size,
        })?;
        let mut file = std::fs::File::from(file_fd);
        let mut remaining = size;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut is_complete = true;
        while remaining > 0 {
            let want = remaining.min(buffer.len() as u64) as usize;
            let n_read = if is_complete {
                file.read(&mut buffer[..want]).unwrap_or(0)
            } else {
                0
            };
            if n_read == 0 {
                // The file shrank: keep the framing with zeros, mark it failed.
                is_complete = false;
                buffer[..want].fill(0);
                self.out.write_all(&buffer[..want])?;
                remaining -= want as u64;
                continue;
            }
            self.out.write_all(&buffer[..n_read])?;
            remaining -= n_read as u64;
        }
        self.record(&CollectRecord::FileEnd { ok: is_complete })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum FileKind {
    Regular,
    Directory,
    Symlink,
    Other,
}

fn file_kind(stat: &FileStat) -> FileKind {
    let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if format == SFlag::S_IFREG {
        FileKind::Regular
    } else if format == SFlag::S_IFDIR {
        FileKind::Directory
    } else if format == SFlag::S_IFLNK {
        FileKind::Symlink
    } else {
        FileKind::Other
    }
}

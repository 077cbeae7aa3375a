//! PID 1 duties: reap every zombie, and hand the exit status of the agent's
//! own children to whoever waits for them.
//!
//! The agent is PID 1 in its container, so orphaned grandchildren of steps
//! are re-parented to it and must be reaped (catalogue case 12). One place
//! owns `waitpid(-1)`: this reaper. Children are spawned through
//! [`Reaper::spawn`], which registers the pid under the same lock that the
//! reaper holds while reaping, so a child that exits immediately cannot be
//! reaped before it is registered and its status is never lost. Statuses of
//! unregistered pids (orphans) are discarded.
//!
//! `tokio::process` is not used anywhere in the agent: it waits for its
//! children by pid, and would race with `waitpid(-1)`.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a child ended, shell-style: exit code, or 128 + signal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode(pub i32);

type Waiters = HashMap<i32, oneshot::Sender<ExitCode>>;

/// Shared handle; cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper::default()
    }

    /// Spawns `command` and registers its pid; the receiver yields its exit
    /// code once it has been reaped.
    pub fn spawn(
        &self,
        command: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<ExitCode>)> {
        let mut waiters = self.waiters.lock().expect("reaper lock is never poisoned");
        let child = command.spawn()?;
        let (sender, receiver) = oneshot::channel();
        let pid = i32::try_from(child.id()).expect("pids fit in i32");
        waiters.insert(pid, sender);
        Ok((child, receiver))
    }

    /// Reaps every child that has exited; never blocks. Returns whether
    /// children (running ones) remain.
    pub fn reap_now(&self) -> bool {
        let mut waiters = self.waiters.lock().expect("reaper lock is never poisoned");
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
                Ok(WaitStatus::StillAlive) => return true,
                Err(Errno::ECHILD) => return false,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => return true,
            };
            if let Some(sender) = waiters.remove(&pid.as_raw()) {
                let _ = sender.send(ExitCode(code));
            }
        }
    }

    /// Runs forever: reaps on every SIGCHLD, and once a second in case
    /// signals were coalesced.
    pub async fn run(self) {
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            match &mut sigchld {
                Some(stream) => {
                    tokio::select! {
                        _ = stream.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            self.reap_now();
        }
    }

    /// Reaps until the agent has no children left (orphaned step processes
    /// included, as PID 1 or subreaper), or `patience` ran out. Returns
    /// whether it got there, so no zombie outlives the agent.
    pub async fn reap_until_childless(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if !self.reap_now() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

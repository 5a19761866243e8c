//! One thread collects every child's exit and delivers it as an event.
//!
//! The runner is a child subreaper, so processes that a step leaves behind are reparented
//! to it rather than to PID 1; this thread reaps them too. When a step's leader exits,
//! its process group is killed *before* the leader is reaped: while the leader is a
//! zombie its pid cannot be reused, so the kill cannot hit an unrelated group.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, Thread};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};

use super::process::signal_group;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

pub struct Reaper {
    leaders: Arc<Mutex<HashSet<i32>>>,
    thread: Thread,
}

impl Reaper {
    /// Makes this process a subreaper and starts the thread; `deliver` gets each exit.
    pub fn start(deliver: impl Fn(i32, Exit) + Send + 'static) -> Reaper {
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let leaders: Arc<Mutex<HashSet<i32>>> = Arc::default();
        let shared = Arc::clone(&leaders);
        let handle = thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_forever(&shared, deliver))
            .unwrap_or_else(|e| panic!("cannot start the reaper thread: {e}"));
        Reaper { leaders, thread: handle.thread().clone() }
    }

    /// Registers a step's process-group leader; call before its gate opens.
    pub fn watch(&self, pid: i32) {
        self.leaders.lock().unwrap_or_else(PoisonError::into_inner).insert(pid);
        self.thread.unpark();
    }
}

fn reap_forever(leaders: &Mutex<HashSet<i32>>, deliver: impl Fn(i32, Exit)) {
    loop {
        let status = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(s) => s,
            // No children right now: sleep until `watch` registers a new one.
            Err(Errno::ECHILD) => {
                thread::park();
                continue;
            }
            Err(Errno::EINTR) => continue,
            Err(_) => {
                thread::park_timeout(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let Some(pid) = status.pid() else { continue };
        let raw = pid.as_raw();
        let was_leader = leaders.lock().unwrap_or_else(PoisonError::into_inner).remove(&raw);
        if was_leader {
            // Anything the step left running in its group goes with it.
            signal_group(raw, Signal::SIGKILL);
        }
        let exit = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig),
            _ => match status {
                WaitStatus::Exited(_, code) => Exit::Code(code),
                WaitStatus::Signaled(_, sig, _) => Exit::Signal(sig),
                _ => continue,
            },
        };
        // Exits of orphans adopted from steps are delivered too; the receiver ignores pids
        // it does not know.
        deliver(raw, exit);
    }
}

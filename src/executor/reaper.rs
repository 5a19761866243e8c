//! One thread collects every child's exit and delivers it as an event.
//!
//! The runner is a child subreaper, so processes that a step leaves behind are reparented
//! to it rather than to PID 1; this thread reaps them too and reports their exits, which
//! tells the session when a stopped step's process group has emptied.

use std::thread::{self, Thread};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

pub struct Reaper {
    thread: Thread,
}

impl Reaper {
    /// Makes this process a subreaper and starts the thread; `deliver` gets each exit.
    pub fn start(deliver: impl Fn(i32, Exit) + Send + 'static) -> Reaper {
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let handle = thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_forever(deliver))
            .unwrap_or_else(|e| panic!("cannot start the reaper thread: {e}"));
        Reaper { thread: handle.thread().clone() }
    }

    /// Wakes the thread after a child was started (it sleeps while there are none).
    pub fn wake(&self) {
        self.thread.unpark();
    }
}

fn reap_forever(deliver: impl Fn(i32, Exit)) {
    loop {
        let exit = match waitpid(None::<nix::unistd::Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig)),
            Ok(_) | Err(Errno::EINTR) => continue,
            // No children right now: sleep until `watch` says there is a new one.
            Err(Errno::ECHILD) => {
                thread::park();
                continue;
            }
            Err(_) => {
                thread::park_timeout(Duration::from_millis(100));
                continue;
            }
        };
        // Exits of orphans adopted from steps are delivered too; the receiver ignores pids
        // it does not know.
        deliver(exit.0.as_raw(), exit.1);
    }
}

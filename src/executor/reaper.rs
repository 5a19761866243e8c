//! One thread collects every child's exit and delivers it as an event.
//!
//! The runner is a child subreaper, so processes that a step leaves behind are reparented
//! to it rather than to PID 1; this thread reaps them too and reports their exits, which
//! tells the session when a stopped step's process group has emptied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, mpsc};
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
    waiters: Waiters,
}

/// Children whose exit goes to a thread of their own (health checks) rather than to the
/// session. Other threads must not `wait` for a child: the reaper takes every exit.
#[derive(Clone)]
pub struct Waiters {
    map: Arc<Mutex<HashMap<i32, mpsc::Sender<Exit>>>>,
    thread: Thread,
}

impl Waiters {
    /// Starts a child and returns its pid and where its exit will arrive. The map stays
    /// locked until the pid is in it, so an exit cannot be delivered to the session first.
    pub fn spawn(&self, command: &mut std::process::Command) -> std::io::Result<(i32, mpsc::Receiver<Exit>)> {
        let (tx, rx) = mpsc::channel();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let child = command.spawn()?;
        let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
        drop(child);
        map.insert(pid, tx);
        drop(map);
        self.thread.unpark();
        Ok((pid, rx))
    }
}

impl Reaper {
    /// Makes this process a subreaper and starts the thread; `deliver` gets each exit.
    pub fn start(deliver: impl Fn(i32, Exit) + Send + 'static) -> Reaper {
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let map: Arc<Mutex<HashMap<i32, mpsc::Sender<Exit>>>> = Arc::default();
        let waiting = Arc::clone(&map);
        let handle = thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                reap_forever(|pid, exit| {
                    let waiter = waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(exit);
                        }
                        None => deliver(pid, exit),
                    }
                })
            })
            .unwrap_or_else(|e| panic!("cannot start the reaper thread: {e}"));
        let thread = handle.thread().clone();
        Reaper { waiters: Waiters { map, thread: thread.clone() }, thread }
    }

    /// Wakes the thread after a child was started (it sleeps while there are none).
    pub fn wake(&self) {
        self.thread.unpark();
    }

    pub fn waiters(&self) -> Waiters {
        self.waiters.clone()
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

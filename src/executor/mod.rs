//! Running commands on this machine: process groups, gates, reaping, signals, leftovers.

mod process;
pub mod procfs;
mod reaper;
mod signals;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub use process::{GATE_CLOSED_EXIT, Gated, SpawnSpec, signal_group, spawn_gated};
pub use reaper::{Exit, Reaper};
pub use signals::forward_signals;

/// Stops what is left of an attempt whose runner died: SIGTERM to its group, SIGKILL after
/// `grace`. Returns whether anything of it was still alive. Such processes are no longer
/// our children, so their end is observed through /proc.
pub fn stop_leftover(pid: i32, proc_start: u64, grace: Duration) -> bool {
    if !procfs::attempt_alive(pid, proc_start) {
        return false;
    }
    signal_group(pid, Signal::SIGTERM);
    if !wait_gone(pid, grace) {
        signal_group(pid, Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(10));
    }
    true
}

fn wait_gone(pgid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !procfs::group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Conventional name of a signal, e.g. `SIGTERM`.
pub fn signal_name(sig: Signal) -> String {
    sig.as_str().to_string()
}

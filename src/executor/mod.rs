//! Running commands on this machine: process groups, gates, reaping, signals, leftovers.

mod lines;
mod process;
pub mod procfs;
mod reaper;
mod signals;
pub mod slurm;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub use lines::LineSink;
pub use process::{
    GATE_CLOSED_EXIT, Gated, Output, Program, SpawnSpec, drain_relays, signal_group, spawn_gated,
};
pub use reaper::{Exit, Reaper, Waiters};
pub use signals::forward_signals;

/// Stops every process left behind by a dead runner's attempts of the run in `run_dir`
/// (its canonical path): the process groups recorded in the journal (`(step, pid, start
/// time)`), and any process whose environment has that `RUNNER_RUN_DIR`, which catches
/// those that left their group. (Run ids are unique only within a runs directory; the
/// directory is unique on the machine.)
/// SIGTERM, then SIGKILL after `grace`. Returns the steps that still had processes, or the
/// pids that even SIGKILL did not end (the caller must not start new attempts then).
pub fn stop_leftovers(
    run_dir: &str,
    attempts: &[(String, i32, u64)],
    grace: Duration,
) -> Result<HashSet<String>, Vec<i32>> {
    let mut steps = HashSet::new();
    let mut groups = Vec::new();
    for (step, pid, start) in attempts {
        if procfs::attempt_alive(*pid, *start) {
            steps.insert(step.clone());
            groups.push(*pid);
        }
    }
    // (pid, start time): a pid that is reused meanwhile is not the same process.
    // A Slurm job's processes carry the variable too when this machine is also a node:
    // they are the cluster's to run and stop, and a resume re-attaches to them.
    let strays: Vec<(i32, u64)> = procfs::with_env("RUNNER_RUN_DIR", run_dir)
        .into_iter()
        .filter(|pid| procfs::env_var(*pid, "RUNNER_EXECUTOR").is_none())
        .filter_map(|pid| procfs::start_time(pid).map(|start| (pid, start)))
        .collect();
    for (pid, _) in &strays {
        if let Some(step) = procfs::env_var(*pid, "RUNNER_STEP_ID") {
            steps.insert(step);
        }
    }
    let same =
        |&(pid, start): &(i32, u64)| procfs::stat(pid).is_some_and(|s| s.is_alive() && s.start_time == start);
    let alive = || groups.iter().any(|g| procfs::group_alive(*g)) || strays.iter().any(same);
    let send = |sig: Signal| {
        for g in &groups {
            signal_group(*g, sig);
        }
        for stray in strays.iter().filter(|s| same(s)) {
            let _ = nix::sys::signal::kill(Pid::from_raw(stray.0), sig);
        }
    };
    if !alive() {
        return Ok(steps);
    }
    send(Signal::SIGTERM);
    if !wait_until(grace, || !alive()) {
        send(Signal::SIGKILL);
        if !wait_until(KILL_WAIT, || !alive()) {
            let mut left: Vec<i32> = strays.iter().filter(|s| same(s)).map(|s| s.0).collect();
            left.extend(groups.iter().filter(|g| procfs::group_alive(**g)));
            return Err(left);
        }
    }
    Ok(steps)
}

/// Stops this process's remaining children: at the end of a session, anything a step
/// detached from its process group (and that was orphaned to this subreaper). Returns
/// how many there were.
pub fn stop_orphans(grace: Duration) -> usize {
    let me = std::process::id() as i32;
    let orphans = procfs::live_children(me);
    if orphans.is_empty() {
        return 0;
    }
    let send = |sig: Signal| {
        for p in &orphans {
            let _ = nix::sys::signal::kill(Pid::from_raw(*p), sig);
        }
    };
    let gone = || procfs::live_children(me).iter().all(|p| !orphans.contains(p));
    send(Signal::SIGTERM);
    if !wait_until(grace, gone) {
        send(Signal::SIGKILL);
        wait_until(KILL_WAIT, gone);
    }
    orphans.len()
}

/// SIGKILLs every remaining child of this process at once: the last resort when a session
/// ends on an error or a panic and cannot stop them gracefully.
pub fn kill_orphans() {
    for pid in procfs::live_children(std::process::id() as i32) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// After SIGKILL, how long to wait for processes to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now().checked_add(limit);
    loop {
        if done() {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Conventional name of a signal, e.g. `SIGTERM`.
pub fn signal_name(sig: Signal) -> String {
    sig.as_str().to_string()
}

//! Starting a step's command: its own process group, logs to files, and a start gate.
//!
//! The gate makes the write-ahead rule hold for processes too: the child is created
//! (so its pid can be journaled) but its command does not run until the runner has made
//! `StepStarted` durable and opens the gate. If the runner dies first, the gate's pipe
//! closes and the child exits without running anything. So every execution of a command
//! is in the journal, and a resume can find and stop any attempt that outlived its runner.

use std::fs::File;
use std::io::{self, PipeWriter, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Shell prologue: wait for the gate on stdin, give up if it closes, then hand the
/// command a null stdin. Kept on the command's first line so `$LINENO` is unchanged.
const GATE_PROLOGUE: &str = "read -r _ || exit 125; exec </dev/null; ";
/// Exit code of a child whose runner died before opening its gate.
pub const GATE_CLOSED_EXIT: i32 = 125;

/// What to start.
pub struct SpawnSpec<'a> {
    /// Run by `/bin/sh -c`.
    pub command: &'a str,
    /// Added to the runner's own environment.
    pub env: &'a [(String, String)],
    pub workdir: &'a Path,
    pub stdout: File,
    pub stderr: File,
}

/// A child that exists but waits at its gate.
#[derive(Debug)]
pub struct Gated {
    pub pid: i32,
    /// Start time in clock ticks since boot (from /proc), to recognise this process later.
    pub proc_start: u64,
    gate: PipeWriter,
}

impl Gated {
    /// Lets the command run. A child that died meanwhile is reported by the reaper.
    pub fn open(mut self) {
        let _ = self.gate.write_all(b"go\n");
    }
}

/// Creates the child in a new process group, stopped at its gate.
pub fn spawn_gated(spec: SpawnSpec) -> io::Result<Gated> {
    let (gate_in, gate) = io::pipe()?;
    let mut script = String::with_capacity(GATE_PROLOGUE.len() + spec.command.len());
    script.push_str(GATE_PROLOGUE);
    script.push_str(spec.command);
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.workdir)
        .stdin(Stdio::from(gate_in))
        .stdout(Stdio::from(spec.stdout))
        .stderr(Stdio::from(spec.stderr))
        .process_group(0)
        .spawn()?;
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    // The reaper collects exit statuses for every child, so the handle is not waited on.
    drop(child);
    let proc_start = super::procfs::start_time(pid).unwrap_or(0);
    Ok(Gated { pid, proc_start, gate })
}

/// Sends `signal` to the process group `pgid`; a group that is already gone is fine.
pub fn signal_group(pgid: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid), signal);
}

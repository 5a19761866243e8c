//! Starting a step's command: its own process group, logs to files, and a start gate.
//!
//! The gate makes the write-ahead rule hold for processes too: the child is created
//! (so its pid can be journaled) but its command does not run until the runner has made
//! `StepStarted` durable and opens the gate. If the runner dies first, the gate's pipe
//! closes and the child exits without running anything. So every execution of a command
//! is in the journal, and a resume can find and stop any attempt that outlived its runner.

use std::fs::File;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Shell prologue: wait for the gate on stdin, give up if it closes, then hand the
/// command a null stdin. Kept on the command's first line so `$LINENO` is unchanged.
const GATE_PROLOGUE: &str = "read -r _ || exit 125; exec </dev/null; ";
/// Exit code of a child whose runner died before opening its gate.
pub const GATE_CLOSED_EXIT: i32 = 125;

/// What to run once the gate opens.
pub enum Program<'a> {
    /// A shell command, run by `/bin/sh -c` (a step).
    Shell(&'a str),
    /// A program and its arguments, exec'd in place of the gate's shell, so the process
    /// the runner started *is* the program (a service): no shell stays between them.
    Argv(&'a [String]),
}

/// Where a child's output goes.
pub enum Output {
    /// Straight into these files, or through the runner when secrets must be masked.
    Files { stdout: File, stderr: File, redact: Option<Arc<crate::secrets::Redactor>> },
    /// Whole lines, masked, into a shared log and onto the console (a service).
    Lines(Arc<super::lines::LineSink>),
}

/// What to start.
pub struct SpawnSpec<'a> {
    pub program: Program<'a>,
    /// Added to the runner's own environment.
    pub env: &'a [(String, String)],
    pub workdir: &'a Path,
    pub output: Output,
    /// Inherited variables the command must not see (secrets it did not declare).
    pub remove_env: &'a [String],
}

/// A child that exists but waits at its gate.
#[derive(Debug)]
pub struct Gated {
    pub pid: i32,
    /// Start time in clock ticks since boot (from /proc), to recognise this process later.
    pub proc_start: u64,
    gate: PipeWriter,
    /// Threads copying masked output into the logs; done when every writer has closed.
    pub relays: Vec<JoinHandle<()>>,
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
    let mut command = Command::new("/bin/sh");
    match spec.program {
        Program::Shell(line) => {
            let mut script = String::with_capacity(GATE_PROLOGUE.len() + line.len());
            script.push_str(GATE_PROLOGUE);
            script.push_str(line);
            command.arg("-c").arg(script);
        }
        // `$0` and `$@` are the arguments as given: nothing is parsed by the shell.
        Program::Argv(argv) => {
            command.arg("-c").arg(format!("{GATE_PROLOGUE}exec \"$0\" \"$@\"")).args(argv);
        }
    }
    for name in spec.remove_env {
        command.env_remove(name);
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v))).current_dir(spec.workdir);
    let mut relays = Vec::new();
    let (stdout, stderr) = match spec.output {
        Output::Files { stdout, stderr, redact: None } => (Stdio::from(stdout), Stdio::from(stderr)),
        Output::Files { stdout, stderr, redact: Some(r) } => {
            let (out_r, out_w) = io::pipe()?;
            let (err_r, err_w) = io::pipe()?;
            relays.push(relay(out_r, stdout, Arc::clone(&r))?);
            relays.push(relay(err_r, stderr, r)?);
            (Stdio::from(out_w), Stdio::from(err_w))
        }
        Output::Lines(sink) => {
            let (out_r, out_w) = io::pipe()?;
            let (err_r, err_w) = io::pipe()?;
            relays.push(super::lines::relay(out_r, Arc::clone(&sink))?);
            relays.push(super::lines::relay(err_r, sink)?);
            (Stdio::from(out_w), Stdio::from(err_w))
        }
    };
    let child = command.stdin(Stdio::from(gate_in)).stdout(stdout).stderr(stderr).process_group(0).spawn()?;
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    // The reaper collects exit statuses for every child, so the handle is not waited on.
    drop(child);
    let proc_start = super::procfs::start_time(pid).unwrap_or(0);
    Ok(Gated { pid, proc_start, gate, relays })
}

/// After a child's group has emptied: lets its log relays finish writing, for at most
/// `limit`. Only a writer that escaped the group keeps a pipe open longer; its relay goes
/// on writing after that, and the caller must not stall for it.
pub fn drain_relays(relays: &[JoinHandle<()>], limit: std::time::Duration) {
    let until = std::time::Instant::now() + limit;
    while relays.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Copies a pipe into a log file, masking secrets, until every writer has closed it.
fn relay(mut from: PipeReader, mut to: File, r: Arc<crate::secrets::Redactor>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("log-relay".into()).spawn(move || {
        let mut stream = r.stream();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = to.write_all(&stream.push(&buf[..n]));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = to.write_all(&stream.finish());
    })
}

/// Sends `signal` to the process group `pgid`; a group that is already gone is fine.
pub fn signal_group(pgid: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid), signal);
}

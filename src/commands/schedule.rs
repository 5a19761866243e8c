//! `runner schedule DIR`: a foreground scheduler, for a container or a systemd unit.
//!
//! Every `*.toml` in DIR with a `schedule` is loaded once, at start (restart it to pick up
//! edits); flows that do not load are reported and left out, and the scheduler refuses to
//! start only when no valid scheduled flow is left. Each tick (a fifth of a second) it asks
//! `schedule::plan` what came due, writes each decision durably to the schedule log *before*
//! acting on it, starts runs as child processes of its own binary
//! (`runner run FLOW --run-id <flow>-<slot>`), and folds the log into the projection.
//!
//! SIGINT/SIGTERM stop the scheduling, are passed on to every run still going (each stops
//! its steps and stays resumable, as on a Ctrl+C of its own), and once all have exited the
//! scheduler exits 130/143.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use nix::sys::signal::Signal;

use crate::cli::{Global, ScheduleArgs};
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::journal::ts_of;
use crate::projection::{Projection, ProjectionError};
use crate::report::note;
use crate::schedule::log::{self, Decision, LogWriter};
use crate::schedule::{Scheduled, load_dir, plan, slot_run_id};
use crate::store::{RunsDir, is_locked, live_lock_holders};

/// How often the scheduler looks at the clock, its children and signals. Slots are whole
/// minutes, so this only bounds how late a run starts and how fast a signal is handled.
const TICK: Duration = Duration::from_millis(200);

/// A run this scheduler started and has not yet seen exit.
struct Started {
    flow: String,
    run_id: String,
    child: Child,
}

pub fn schedule(g: &Global, args: ScheduleArgs) -> Result<ExitCode, Error> {
    let loaded = load_dir(&args.dir).map_err(io_at(&args.dir))?;
    for e in &loaded.invalid {
        note(&format!("error: {e}\n(this flow is not scheduled; the others are)"));
    }
    if loaded.flows.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no flow with a valid `schedule`, nothing to schedule",
            args.dir.display()
        )));
    }
    let tz = if args.utc { TimeZone::UTC } else { TimeZone::system() };
    let runs = g.runs();
    let dir = runs.root().join(log::SCHEDULE_DIR);
    std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let Some(_lock) = lock(&dir.join(log::LOCK_FILE))? else {
        note(&format!(
            "error: another `runner schedule` is running on {} (it holds {})",
            runs.root().display(),
            dir.join(log::LOCK_FILE).display()
        ));
        return Ok(ExitCode::Locked);
    };
    let (mut writer, read) = LogWriter::open(&log::path(runs.root())).map_err(ProjectionError::from)?;

    // The last slot decided and the last run started, per flow, from the log.
    let mut last: HashMap<String, Timestamp> = HashMap::new();
    let mut last_started: HashMap<String, String> = HashMap::new();
    for e in &read.entries {
        if let Ok(t) = e.slot.parse::<Timestamp>() {
            let slot = last.entry(e.flow.clone()).or_insert(t);
            *slot = (*slot).max(t);
        }
        if e.decision.starts() {
            last_started.insert(e.flow.clone(), e.run_id.clone());
        }
    }

    let signal = Arc::new(AtomicI32::new(0));
    let signals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (got, counted) = (signal.clone(), signals.clone());
    crate::executor::forward_signals(move |s| {
        got.store(s as i32, Ordering::SeqCst);
        counted.fetch_add(1, Ordering::SeqCst);
    })
    .map_err(|e| Error::Usage(format!("cannot install signal handlers: {e}")))?;

    let up_since = crate::faults::now();
    let zone = if args.utc { "UTC".to_string() } else { tz.iana_name().unwrap_or("local time").to_string() };
    for f in &loaded.flows {
        let next = f.cron.next_after(up_since, &tz).map(|t| t.to_zoned(tz.clone()).to_string());
        note(&format!(
            "schedule: {} `{}` ({zone}), next at {}",
            f.name,
            f.cron,
            next.as_deref().unwrap_or("never")
        ));
    }
    let ctx = Ctx { runs: &runs, args: &args, g };
    let mut projection = open_projection(&runs);
    let mut children: Vec<Started> = Vec::new();
    let sig = loop {
        let sig = signal.load(Ordering::SeqCst);
        if sig != 0 {
            break sig;
        }
        let now = crate::faults::now();
        let mut decided = false;
        for flow in &loaded.flows {
            for (slot, planned) in
                plan::due(&flow.cron, &tz, last.get(&flow.name).copied(), now, up_since, args.catch_up)
            {
                let run_id = slot_run_id(&flow.name, slot, &tz);
                let decision = if planned.starts() && ctx.still_running(flow, &children, &last_started) {
                    Decision::SkippedStillRunning
                } else {
                    planned
                };
                // Write-ahead: the decision is durable before the run starts.
                writer
                    .append(&flow.name, &ts_of(slot), &ts_of(now), decision, &run_id)
                    .map_err(ProjectionError::from)?;
                decided = true;
                last.insert(flow.name.clone(), slot);
                note(&format!("schedule: {} {}: {} {run_id}", flow.name, ts_of(slot), decision.as_str()));
                if decision.starts() {
                    last_started.insert(flow.name.clone(), run_id.clone());
                    match ctx.spawn(flow, &run_id) {
                        Ok(child) => children.push(Started { flow: flow.name.clone(), run_id, child }),
                        Err(e) => note(&format!("error: schedule: cannot start {run_id}: {e}")),
                    }
                }
            }
        }
        if decided {
            sync_projection(&runs, &mut projection);
        }
        reap(&mut children);
        std::thread::sleep(TICK);
    };

    let signal = Signal::try_from(sig).unwrap_or(Signal::SIGTERM);
    if !children.is_empty() {
        note(&format!("schedule: {signal}: stopping {} run(s), then exiting", children.len()));
    }
    for c in &children {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.child.id() as i32), signal);
    }
    // Wait for them; a second signal is passed on at once (the runs then kill their steps).
    let seen = signals.load(Ordering::SeqCst);
    let mut forwarded = false;
    while !children.is_empty() {
        if !forwarded && signals.load(Ordering::SeqCst) > seen {
            for c in &children {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.child.id() as i32), signal);
            }
            forwarded = true;
        }
        reap(&mut children);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(if signal == Signal::SIGINT { ExitCode::Interrupted } else { ExitCode::Terminated })
}

/// What starting a run needs.
struct Ctx<'a> {
    runs: &'a RunsDir,
    args: &'a ScheduleArgs,
    g: &'a Global,
}

impl Ctx<'_> {
    /// Whether the flow's previous run is still going: a child of ours that has not
    /// exited, or (started by an earlier scheduler) a run whose lock a runner holds.
    fn still_running(&self, flow: &Scheduled, children: &[Started], last: &HashMap<String, String>) -> bool {
        children.iter().any(|c| c.flow == flow.name)
            || last.get(&flow.name).is_some_and(|id| is_locked(&self.runs.run_dir(id), &live_lock_holders()))
    }

    /// `runner --runs-dir R run FLOW --run-id ID [--jobs N]`, in its own process group so
    /// a terminal's Ctrl+C reaches it once, through us.
    fn spawn(&self, flow: &Scheduled, run_id: &str) -> std::io::Result<Child> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("--runs-dir").arg(self.runs.root());
        if self.g.quiet {
            cmd.arg("--quiet");
        }
        // Runs started here print plain lines: no bars drawn over the scheduler's own.
        cmd.arg("--progress").arg("plain");
        cmd.arg("run").arg(&flow.path).arg("--run-id").arg(run_id);
        if let Some(j) = self.args.jobs {
            cmd.arg("--jobs").arg(j.to_string());
        }
        cmd.stdin(Stdio::null()).process_group(0).spawn()
    }
}

/// Notes and forgets the runs that exited.
fn reap(children: &mut Vec<Started>) {
    children.retain_mut(|c| match c.child.try_wait() {
        Ok(Some(status)) => {
            note(&format!("schedule: {} {} ended: {status}", c.flow, c.run_id));
            false
        }
        Ok(None) => true,
        Err(e) => {
            note(&format!("schedule: {} {}: {e}", c.flow, c.run_id));
            false
        }
    });
}

/// The scheduler's exclusive hold on `scheduler.lock`; `None` if another one has it.
fn lock(path: &PathBuf) -> Result<Option<File>, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_at(path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(Error::Io { path: path.clone(), source: e }),
    }
}

/// The projection is derived data: failing to open or update it is a warning, and the
/// next command's catch-up folds what the log holds.
fn open_projection(runs: &RunsDir) -> Option<Projection> {
    match Projection::open(runs) {
        Ok(p) => Some(p),
        Err(e) => {
            note(&format!("warning: schedule: projection: {e}"));
            None
        }
    }
}

fn sync_projection(runs: &RunsDir, projection: &mut Option<Projection>) {
    if projection.is_none() {
        *projection = open_projection(runs);
    }
    if let Some(p) = projection
        && let Err(e) = p.sync_schedule()
    {
        note(&format!("warning: schedule: projection not updated (a later command will): {e}"));
    }
}

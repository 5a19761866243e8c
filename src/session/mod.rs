//! One runner process driving one run: the scheduler decides, the executor does, the
//! journal remembers.
//!
//! Every iteration: start what the scheduler says is ready (children wait at their gates),
//! commit all staged events with one `fdatasync`, then open the gates, print, and update
//! the projection; then wait for the next exit, signal or timer. Events are folded into
//! the state as they are staged, but nothing acts on them until the commit returns.

mod open;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use nix::sys::signal::Signal;

pub use open::{OpenError, Resumed, SessionOptions, open_existing, start_new};

use crate::executor::{self, Exit, Gated, Reaper, SpawnSpec};
use crate::flow::{Flow, param_env_name};
use crate::journal::{
    Event, FailReason, InterruptReason, JournalError, JournalWriter, RunFinished, RunInterrupted, RunOutcome,
    StepFailed, StepInterrupted, StepStarted, StepSucceeded,
};
use crate::projection::Projection;
use crate::report::{Reporter, human};
use crate::state::{RunState, write_snapshot};
use crate::store::{RunLock, STEPS_DIR};
use crate::{crashpoint, scheduler};

/// A snapshot is written after this many events, and when the session ends.
const SNAPSHOT_EVERY: u64 = 1000;
/// How long a live run leaves the projection alone after an update failed.
const PROJECTION_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEnd {
    Succeeded,
    Failed(Vec<String>),
    Interrupted(Signal),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("cannot start the runner's helper threads: {0}")]
    Setup(std::io::Error),
}

enum Msg {
    Exit(i32, Exit),
    Signal(Signal),
}

/// An attempt whose process exists.
struct Running {
    step: usize,
    attempt: u32,
    /// Set when the gate opens.
    started: Option<Instant>,
    deadline: Option<Instant>,
    kill_at: Option<Instant>,
    timed_out: bool,
    /// Stopped because the runner was asked to stop.
    interrupted: bool,
}

/// A graceful stop in progress.
struct Stop {
    signal: Signal,
}

/// A run, locked by this process, ready to be driven.
pub struct Session {
    flow: Flow,
    dir: PathBuf,
    _lock: RunLock,
    journal: JournalWriter,
    state: RunState,
    projection: Option<Projection>,
    projection_warned: bool,
    /// After a failed update (another process held the database), skip updates until then.
    projection_pause: Option<Instant>,
    report: Reporter,
    jobs: usize,
    rx: Receiver<Msg>,
    reaper: Reaper,
    running: HashMap<i32, Running>,
    gates: Vec<(i32, Gated)>,
    retry_at: HashMap<usize, Instant>,
    stop: Option<Stop>,
    since_snapshot: u64,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    fn new(
        flow: Flow,
        dir: PathBuf,
        lock: RunLock,
        journal: JournalWriter,
        state: RunState,
        projection: Option<Projection>,
        report: Reporter,
        jobs: usize,
    ) -> Result<Session, SessionError> {
        let (tx, rx) = mpsc::channel();
        let exits = tx.clone();
        let reaper = Reaper::start(move |pid, exit| {
            let _ = exits.send(Msg::Exit(pid, exit));
        });
        executor::forward_signals(move |sig| {
            let _ = tx.send(Msg::Signal(sig));
        })
        .map_err(SessionError::Setup)?;
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        Ok(Session {
            flow,
            dir,
            _lock: lock,
            journal,
            state,
            projection,
            projection_warned: false,
            projection_pause: None,
            report,
            jobs: jobs.max(1),
            rx,
            reaper,
            running: HashMap::new(),
            gates: Vec::new(),
            retry_at: HashMap::new(),
            stop: None,
            since_snapshot: 0,
        })
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// Runs until the run succeeds, fails, or is interrupted.
    pub fn drive(mut self) -> Result<SessionEnd, SessionError> {
        let result = self.drive_inner();
        if result.is_err() {
            // Nothing more can be journaled; stop the children rather than orphan them.
            for pid in self.running.keys() {
                executor::signal_group(*pid, Signal::SIGKILL);
            }
        }
        result
    }

    fn drive_inner(&mut self) -> Result<SessionEnd, SessionError> {
        loop {
            if self.stop.is_none() {
                self.start_ready()?;
            }
            self.commit()?;
            if self.running.is_empty() {
                if let Some(stop) = &self.stop {
                    let signal = stop.signal;
                    self.record(Event::RunInterrupted(RunInterrupted {
                        signal: executor::signal_name(signal),
                    }))?;
                    self.commit()?;
                    self.snapshot();
                    self.settle_projection();
                    return Ok(SessionEnd::Interrupted(signal));
                }
                if self.retry_at.is_empty() && scheduler::ready(&self.flow, &self.state).is_empty() {
                    return self.finish();
                }
            }
            let msg = match self.next_wake() {
                Some(at) => match self.rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(SessionError::Internal("event channel closed".into()));
                    }
                },
                None => {
                    Some(self.rx.recv().map_err(|_| SessionError::Internal("event channel closed".into()))?)
                }
            };
            if let Some(m) = msg {
                self.handle(m)?;
            }
            // Group commit: everything that is already waiting goes into the same batch.
            while let Ok(m) = self.rx.try_recv() {
                self.handle(m)?;
            }
            self.check_timers();
        }
    }

    fn finish(&mut self) -> Result<SessionEnd, SessionError> {
        let outcome = scheduler::outcome(&self.state);
        let failed_steps = scheduler::failed_steps(&self.state);
        self.record(Event::RunFinished(RunFinished { outcome, failed_steps: failed_steps.clone() }))?;
        self.commit()?;
        self.snapshot();
        self.settle_projection();
        Ok(match outcome {
            RunOutcome::Succeeded => SessionEnd::Succeeded,
            RunOutcome::Failed => SessionEnd::Failed(failed_steps),
        })
    }

    /// Stages an event and folds it into the state; it is acted on after `commit`.
    fn record(&mut self, event: Event) -> Result<(), SessionError> {
        let record = self.journal.stage(event).clone();
        self.state.apply(&record).map_err(|e| SessionError::Internal(format!("event does not fold: {e}")))
    }

    /// Makes staged events durable, then acts on them.
    fn commit(&mut self) -> Result<(), SessionError> {
        if !self.journal.has_staged() {
            return Ok(());
        }
        crashpoint::reached("before-commit");
        let records = self.journal.commit()?;
        crashpoint::reached("after-commit");
        let now = Instant::now();
        for (pid, gate) in self.gates.drain(..) {
            if let Some(r) = self.running.get_mut(&pid) {
                r.started = Some(now);
                r.deadline = self.flow.steps[r.step].timeout.map(|t| now + t);
            }
            gate.open();
        }
        for r in &records {
            self.report.event(r, &self.state);
        }
        self.update_projection(&records, now);
        crashpoint::reached("after-projection");
        self.since_snapshot += records.len() as u64;
        if self.since_snapshot >= SNAPSHOT_EVERY {
            self.snapshot();
        }
        Ok(())
    }

    /// Mirrors committed events into the projection. Failures cost only lag: the next
    /// successful update (or any `runner status`) catches up from the journal.
    fn update_projection(&mut self, records: &[crate::journal::Record], now: Instant) {
        let Some(p) = &mut self.projection else { return };
        if self.projection_pause.is_some_and(|until| now < until) {
            return;
        }
        match p.apply(&self.state, records, self.journal.len()) {
            Ok(()) => self.projection_pause = None,
            Err(e) => {
                self.projection_pause = Some(now + PROJECTION_PAUSE);
                if !self.projection_warned {
                    self.projection_warned = true;
                    self.report
                        .warn(&format!("projection not updated ({e}); it catches up from the journal later"));
                }
            }
        }
    }

    /// At the end of a session, waits as long as it takes to leave the projection current
    /// if live updates were skipped.
    fn settle_projection(&mut self) {
        let Some(p) = &mut self.projection else { return };
        if self.projection_pause.is_none() {
            return;
        }
        let result =
            p.set_busy_timeout(crate::projection::BUSY_TIMEOUT).and_then(|()| p.sync_run(&self.state.run_id));
        if let Err(e) = result {
            self.report.warn(&format!("projection not updated ({e}); `runner status` will catch up"));
        }
    }

    /// Writes `state.json` for what is durable. A failure only costs a longer replay.
    fn snapshot(&mut self) {
        let (seq, sum) = self.journal.durable_end();
        if seq != self.state.seq {
            return;
        }
        match write_snapshot(&self.dir, &self.state, sum) {
            Ok(()) => self.since_snapshot = 0,
            Err(e) => {
                self.report.warn(&format!("cannot write state.json ({e}); resume will replay the journal"))
            }
        }
    }

    fn start_ready(&mut self) -> Result<(), SessionError> {
        let now = Instant::now();
        for idx in scheduler::ready(&self.flow, &self.state) {
            if self.running.len() >= self.jobs {
                break;
            }
            if self.retry_at.get(&idx).is_some_and(|at| *at > now) {
                continue;
            }
            self.retry_at.remove(&idx);
            self.start_attempt(idx)?;
        }
        Ok(())
    }

    fn start_attempt(&mut self, idx: usize) -> Result<(), SessionError> {
        let step_id = self.flow.steps[idx].id.clone();
        let attempt = self.state.steps[idx].attempts.len() as u32 + 1;
        match self.spawn(idx, attempt) {
            Ok(gated) => {
                let pid = gated.pid;
                self.reaper.watch(pid);
                self.record(Event::StepStarted(StepStarted {
                    step: step_id,
                    visit: 1,
                    attempt,
                    pid,
                    proc_start: gated.proc_start,
                }))?;
                self.running.insert(
                    pid,
                    Running {
                        step: idx,
                        attempt,
                        started: None,
                        deadline: None,
                        kill_at: None,
                        timed_out: false,
                        interrupted: false,
                    },
                );
                self.gates.push((pid, gated));
            }
            Err(e) => {
                // A command that cannot be started is a failed attempt, not a crash.
                let retry_in_ms = self.retry_after(idx, 1);
                self.record(Event::StepFailed(StepFailed {
                    step: step_id,
                    visit: 1,
                    attempt,
                    reason: FailReason::Spawn,
                    exit_code: None,
                    signal: None,
                    message: format!("cannot start the command: {e}"),
                    duration_ms: 0,
                    retry_in_ms,
                }))?;
            }
        }
        Ok(())
    }

    fn spawn(&self, idx: usize, attempt: u32) -> std::io::Result<Gated> {
        let step = &self.flow.steps[idx];
        let dir = self.dir.join(STEPS_DIR).join(&step.id).join(attempt.to_string());
        std::fs::create_dir_all(&dir)?;
        let stdout = std::fs::File::create(dir.join("stdout.log"))?;
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        let mut env: Vec<(String, String)> = Vec::new();
        env.extend(self.flow.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(self.state.params.iter().map(|(k, v)| (param_env_name(k), v.clone())));
        env.push(("RUNNER_RUN_ID".into(), self.state.run_id.clone()));
        env.push(("RUNNER_STEP_ID".into(), step.id.clone()));
        env.push(("RUNNER_ATTEMPT".into(), attempt.to_string()));
        env.push(("RUNNER_RUN_DIR".into(), self.dir.to_string_lossy().into_owned()));
        executor::spawn_gated(SpawnSpec {
            command: &step.run,
            env: &env,
            workdir: Path::new(&self.state.workdir),
            stdout,
            stderr,
        })
    }

    /// The retry delay in ms if step `idx` gets another attempt after the one that just
    /// failed (`pending` attempts not yet folded into the state are counted too).
    fn retry_after(&mut self, idx: usize, pending: u32) -> Option<u64> {
        if self.stop.is_some() {
            return None;
        }
        let step = &self.flow.steps[idx];
        let used = self.state.steps[idx].session_attempts + pending;
        if used > step.retries {
            return None;
        }
        let delay = step.retry_delay(used);
        self.retry_at.insert(idx, Instant::now() + delay);
        Some(delay.as_millis() as u64)
    }

    fn handle(&mut self, msg: Msg) -> Result<(), SessionError> {
        match msg {
            Msg::Exit(pid, exit) => self.on_exit(pid, exit),
            Msg::Signal(sig) => {
                self.on_signal(sig);
                Ok(())
            }
        }
    }

    fn on_exit(&mut self, pid: i32, exit: Exit) -> Result<(), SessionError> {
        let Some(r) = self.running.remove(&pid) else { return Ok(()) };
        let step = &self.flow.steps[r.step];
        let step_id = step.id.clone();
        let timeout = step.timeout;
        let duration_ms = r.started.map_or(0, |s| s.elapsed().as_millis() as u64);
        let (visit, attempt) = (1, r.attempt);
        let event = match exit {
            Exit::Code(0) if !r.timed_out => {
                Event::StepSucceeded(StepSucceeded { step: step_id, visit, attempt, duration_ms })
            }
            _ if r.interrupted => Event::StepInterrupted(StepInterrupted {
                step: step_id,
                visit,
                attempt,
                reason: InterruptReason::Signal,
                leftover_stopped: None,
                duration_ms: Some(duration_ms),
            }),
            _ => {
                let (reason, exit_code, signal, message) = match exit {
                    _ if r.timed_out => (
                        FailReason::Timeout,
                        code_of(exit),
                        signal_of(exit),
                        format!("timed out after {}", human(timeout.unwrap_or_default())),
                    ),
                    Exit::Code(c) => (FailReason::Exit, Some(c), None, format!("exited with code {c}")),
                    Exit::Signal(s) => (
                        FailReason::Signal,
                        None,
                        Some(executor::signal_name(s)),
                        format!("killed by {}", executor::signal_name(s)),
                    ),
                };
                let retry_in_ms = self.retry_after(r.step, 0);
                Event::StepFailed(StepFailed {
                    step: step_id,
                    visit,
                    attempt,
                    reason,
                    exit_code,
                    signal,
                    message,
                    duration_ms,
                    retry_in_ms,
                })
            }
        };
        self.record(event)
    }

    fn on_signal(&mut self, sig: Signal) {
        let now = Instant::now();
        if self.stop.is_none() {
            self.stop = Some(Stop { signal: sig });
            self.retry_at.clear();
            if !self.running.is_empty() {
                self.report.info(&format!(
                    "received {}: stopping {} running step(s); send it again to kill them at once",
                    executor::signal_name(sig),
                    self.running.len()
                ));
            }
            for (pid, r) in &mut self.running {
                r.interrupted = true;
                r.kill_at = Some(now + self.flow.steps[r.step].grace);
                executor::signal_group(*pid, Signal::SIGTERM);
            }
        } else {
            for (pid, r) in &mut self.running {
                r.kill_at = None;
                executor::signal_group(*pid, Signal::SIGKILL);
            }
        }
    }

    /// Enforces timeouts and kill deadlines that have passed.
    fn check_timers(&mut self) {
        let now = Instant::now();
        for (pid, r) in &mut self.running {
            if let Some(deadline) = r.deadline
                && now >= deadline
                && !r.timed_out
                && !r.interrupted
            {
                r.timed_out = true;
                r.kill_at = Some(now + self.flow.steps[r.step].grace);
                executor::signal_group(*pid, Signal::SIGTERM);
            }
            if let Some(kill_at) = r.kill_at
                && now >= kill_at
            {
                r.kill_at = None;
                executor::signal_group(*pid, Signal::SIGKILL);
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let timers = self.running.values().flat_map(|r| {
            let deadline = r.deadline.filter(|_| !r.timed_out && !r.interrupted);
            [deadline, r.kill_at]
        });
        let retries = self.retry_at.values().copied().map(Some);
        timers.chain(retries).flatten().min()
    }
}

fn code_of(exit: Exit) -> Option<i32> {
    match exit {
        Exit::Code(c) => Some(c),
        Exit::Signal(_) => None,
    }
}

fn signal_of(exit: Exit) -> Option<String> {
    match exit {
        Exit::Signal(s) => Some(executor::signal_name(s)),
        Exit::Code(_) => None,
    }
}

//! The process side of a session: starting attempts, their exits, timeouts, signals.
//!
//! An attempt is over when its main process has exited *and* its process group is empty.
//! Whatever the main process leaves behind gets SIGTERM, and SIGKILL after the step's
//! `grace`, before the attempt's result is recorded; so a step's leftovers never overlap
//! with its dependents or with its next attempt, and `grace` applies to every process of
//! the step, not only to the first one to die.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Session, SessionError};
use crate::executor::{self, Exit, Gated, SpawnSpec};
use crate::flow::param_env_name;
use crate::journal::{
    Event, FailReason, InterruptReason, StepFailed, StepInterrupted, StepStarted, StepSucceeded,
};
use crate::report::human;
use crate::store::STEPS_DIR;

/// How often a group that survived SIGKILL is looked at again (zombies wait for reaping).
const RECHECK: Duration = Duration::from_millis(50);
/// After SIGKILL, how long to wait for a group before recording the attempt anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// An attempt whose process exists.
pub(super) struct Running {
    pub step: usize,
    pub attempt: u32,
    /// Set when the gate opens.
    pub started: Option<Instant>,
    pub deadline: Option<Instant>,
    /// When the group gets SIGKILL (a stop in progress).
    pub kill_at: Option<Instant>,
    /// Set once SIGKILL was sent: look at the group again then.
    pub recheck_at: Option<Instant>,
    pub killed_at: Option<Instant>,
    pub timed_out: bool,
    /// Stopped because the runner was asked to stop.
    pub interrupted: bool,
    /// How the main process ended, and when.
    pub leader_exit: Option<(Exit, Instant)>,
}

impl Running {
    fn new(step: usize, attempt: u32) -> Running {
        Running {
            step,
            attempt,
            started: None,
            deadline: None,
            kill_at: None,
            recheck_at: None,
            killed_at: None,
            timed_out: false,
            interrupted: false,
            leader_exit: None,
        }
    }
}

impl Session {
    pub(super) fn start_ready(&mut self) -> Result<(), SessionError> {
        let now = Instant::now();
        let mut starts = Vec::new();
        for idx in self.sched.ready() {
            if self.running.len() + starts.len() >= self.jobs {
                break;
            }
            if self.retry_at.get(&idx).is_none_or(|at| *at <= now) {
                starts.push(idx);
            }
        }
        for idx in starts {
            // An attempt that failed for good just now stops the others from starting.
            if self.sched.is_ready(idx) {
                self.retry_at.remove(&idx);
                self.start_attempt(idx)?;
            }
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
                self.running.insert(pid, Running::new(idx, attempt));
                self.gates.push((pid, gated));
            }
            Err(message) => {
                // A command that cannot be started is a failed attempt, not a crash.
                let retry_in_ms = self.retry_after(idx, 1);
                self.record(Event::StepFailed(StepFailed {
                    step: step_id,
                    visit: 1,
                    attempt,
                    reason: FailReason::Spawn,
                    exit_code: None,
                    signal: None,
                    message,
                    duration_ms: 0,
                    retry_in_ms,
                }))?;
            }
        }
        Ok(())
    }

    fn spawn(&self, idx: usize, attempt: u32) -> Result<Gated, String> {
        let step = &self.flow.steps[idx];
        let workdir = Path::new(&self.state.workdir);
        if !workdir.is_dir() {
            return Err(format!(
                "cannot start the command: its working directory {} is gone",
                workdir.display()
            ));
        }
        let dir = self.dir.join(STEPS_DIR).join(&step.id).join(attempt.to_string());
        let logs = || -> std::io::Result<(std::fs::File, std::fs::File)> {
            std::fs::create_dir_all(&dir)?;
            Ok((
                std::fs::File::create(dir.join("stdout.log"))?,
                std::fs::File::create(dir.join("stderr.log"))?,
            ))
        };
        let (stdout, stderr) =
            logs().map_err(|e| format!("cannot create the log files in {}: {e}", dir.display()))?;
        let mut env: Vec<(String, String)> = Vec::new();
        env.extend(self.flow.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(self.state.params.iter().map(|(k, v)| (param_env_name(k), v.clone())));
        env.push(("RUNNER_RUN_ID".into(), self.state.run_id.clone()));
        env.push(("RUNNER_STEP_ID".into(), step.id.clone()));
        env.push(("RUNNER_ATTEMPT".into(), attempt.to_string()));
        env.push(("RUNNER_RUN_DIR".into(), self.dir.to_string_lossy().into_owned()));
        executor::spawn_gated(SpawnSpec { command: &step.run, env: &env, workdir, stdout, stderr })
            .map_err(|e| format!("cannot start the command: {e}"))
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

    /// A child exited: a step's main process, or something a step left behind.
    pub(super) fn on_exit(&mut self, pid: i32, exit: Exit) -> Result<(), SessionError> {
        let now = Instant::now();
        if let Some(r) = self.running.get_mut(&pid) {
            r.leader_exit = Some((exit, now));
            if r.kill_at.is_none() && r.killed_at.is_none() && group_has_members(pid) {
                // Leftovers of a step that ended: the same stop as for a timeout.
                r.kill_at = Some(now + self.flow.steps[r.step].grace);
                executor::signal_group(pid, Signal::SIGTERM);
            }
        }
        self.record_finished()
    }

    /// Records every attempt whose main process exited and whose group is empty.
    pub(super) fn record_finished(&mut self) -> Result<(), SessionError> {
        let now = Instant::now();
        let done: Vec<i32> = self
            .running
            .iter()
            .filter(|(pid, r)| {
                r.leader_exit.is_some() && {
                    let gave_up = r.killed_at.is_some_and(|k| now >= k + KILL_WAIT);
                    gave_up || !group_has_members(**pid) || (r.killed_at.is_some() && !group_alive(**pid))
                }
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in done {
            if let Some(r) = self.running.remove(&pid) {
                self.record_result(r)?;
            }
        }
        Ok(())
    }

    fn record_result(&mut self, r: Running) -> Result<(), SessionError> {
        let Some((exit, ended)) = r.leader_exit else { return Ok(()) };
        let step = &self.flow.steps[r.step];
        let step_id = step.id.clone();
        let timeout = step.timeout;
        let duration_ms = r.started.map_or(0, |s| ended.saturating_duration_since(s).as_millis() as u64);
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

    pub(super) fn on_signal(&mut self, sig: Signal) {
        let now = Instant::now();
        if self.stop.is_none() {
            self.stop = Some(sig);
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
                if r.killed_at.is_none() {
                    r.kill_at = Some(checked_after(now, self.flow.steps[r.step].grace));
                    executor::signal_group(*pid, Signal::SIGTERM);
                }
            }
        } else {
            for (pid, r) in &mut self.running {
                kill_now(*pid, r, now);
            }
        }
    }

    /// Enforces timeouts and kill deadlines that have passed.
    pub(super) fn check_timers(&mut self) -> Result<(), SessionError> {
        let now = Instant::now();
        for (pid, r) in &mut self.running {
            if let Some(deadline) = r.deadline
                && now >= deadline
                && !r.timed_out
                && !r.interrupted
                && r.leader_exit.is_none()
            {
                r.timed_out = true;
                r.kill_at = Some(checked_after(now, self.flow.steps[r.step].grace));
                executor::signal_group(*pid, Signal::SIGTERM);
            }
            if r.kill_at.is_some_and(|k| now >= k) {
                kill_now(*pid, r, now);
            }
            if r.recheck_at.is_some_and(|t| now >= t) {
                r.recheck_at = Some(now + RECHECK);
            }
        }
        self.record_finished()
    }

    /// The next moment a timer needs attention.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let timers = self.running.values().flat_map(|r| {
            let deadline = r.deadline.filter(|_| !r.timed_out && !r.interrupted && r.leader_exit.is_none());
            [deadline, r.kill_at, r.recheck_at]
        });
        // A due retry only matters when a slot is free to start it.
        let retries = (self.stop.is_none() && self.running.len() < self.jobs)
            .then(|| self.retry_at.iter().filter(|(i, _)| self.sched.is_ready(**i)).map(|(_, t)| Some(*t)))
            .into_iter()
            .flatten();
        timers.chain(retries).flatten().min()
    }
}

fn kill_now(pid: i32, r: &mut super::Running, now: Instant) {
    executor::signal_group(pid, Signal::SIGKILL);
    r.kill_at = None;
    r.killed_at.get_or_insert(now);
    r.recheck_at = Some(now + RECHECK);
}

/// `now + d`, or far in the future if that does not fit.
pub(super) fn checked_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Whether process group `pgid` still has members (zombies not yet reaped count).
fn group_has_members(pgid: i32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}

/// Whether process group `pgid` has a member that is not a zombie; after SIGKILL, members
/// whose parent outside the group never reaps them must not hold the attempt open.
fn group_alive(pgid: i32) -> bool {
    executor::procfs::group_alive(pgid)
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

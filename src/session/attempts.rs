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
use crate::journal::{
    ApprovalRequested, Decision, Event, FailReason, GateEvaluated, GateOutcome, InterruptReason, StepCached,
    StepFailed, StepInterrupted, StepSkipped, StepStarted, StepSucceeded,
};
use crate::outputs;
use crate::report::human;
use crate::scheduler::{Action, decide, released};
use crate::store::attempt_dir;

use super::env::{HANDOFF_FILE, HANDOFF_META_FILE, OUTPUT_FILE};
use super::receipts::Lookup;

/// How often a group that survived SIGKILL is looked at again (zombies wait for reaping).
const RECHECK: Duration = Duration::from_millis(50);
/// After SIGKILL, how long to wait for a group before recording the attempt anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a result waits for its log relays to drain once its group is empty (see
/// [`executor::drain_relays`]); services use it too.
pub(super) const RELAY_WAIT: Duration = Duration::from_millis(500);

/// What an attempt starts with: its definition, key, and why the cache was not used.
pub(super) type Prepared = (crate::receipt::Definition, String, Option<String>);

/// An attempt whose process exists.
pub(super) struct Running {
    pub step: usize,
    pub visit: u32,
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
    /// The definition and key it started with, for its receipt.
    pub definition: Option<Box<(crate::receipt::Definition, String)>>,
    /// Threads masking secrets in its output on the way to the logs.
    pub relays: Vec<std::thread::JoinHandle<()>>,
    /// A service it uses died while it ran: it is being stopped, and fails with this.
    pub service_lost: Option<String>,
    /// A cluster job the cluster ended, or that vanished: how.
    pub cluster: Option<ClusterEnd>,
}

/// How a cluster ended a job that left no exit code of its own.
pub(super) enum ClusterEnd {
    /// Its time limit, a node failure, preemption, an `scancel` from outside.
    Cancelled(String),
    /// Gone without a trace: it may have run; its result is lost.
    Lost(String),
}

impl Running {
    pub(super) fn new(step: usize, visit: u32, attempt: u32) -> Running {
        Running {
            step,
            visit,
            attempt,
            started: None,
            deadline: None,
            kill_at: None,
            recheck_at: None,
            killed_at: None,
            timed_out: false,
            interrupted: false,
            leader_exit: None,
            definition: None,
            relays: Vec::new(),
            service_lost: None,
            cluster: None,
        }
    }
}

impl Session {
    /// Decides what it can (routes, skips) and starts what is ready, up to `--jobs`.
    pub(super) fn start_ready(&mut self) -> Result<(), SessionError> {
        loop {
            self.route_pending()?;
            let now = Instant::now();
            let failing = self.sched.failing();
            let mut starts = Vec::new();
            let mut skips = Vec::new();
            let released = std::mem::take(&mut self.released);
            let settle = std::mem::take(&mut self.settle);
            let mut remote_starts = 0;
            for idx in self.sched.candidates().chain(released) {
                let remote = self.is_remote(idx);
                // A step held for its services takes no slot: others may start meanwhile.
                let held = starts.iter().filter(|i| self.services.is_held(**i)).count();
                let full = if remote {
                    self.remote.len() + remote_starts >= self.flow.slurm.max_jobs
                } else {
                    self.running.len() + starts.len() - remote_starts - held >= self.jobs
                };
                match decide(&self.flow, &self.state, idx, failing, settle) {
                    Action::Skip(reason) => skips.push((idx, reason)),
                    Action::Start if !full && self.retry_at.get(&idx).is_none_or(|at| *at <= now) => {
                        remote_starts += usize::from(remote);
                        starts.push(idx)
                    }
                    Action::Start | Action::Wait => {}
                }
                if full && !skips.is_empty() {
                    break;
                }
            }
            for (idx, reason) in &skips {
                let st = &self.state.steps[*idx];
                if st.status == crate::state::StepStatus::Pending && st.new_visit {
                    let event =
                        StepSkipped { step: st.id.clone(), visit: st.next_visit(), reason: reason.clone() };
                    self.record(Event::StepSkipped(event))?;
                }
            }
            for idx in starts {
                // An attempt that failed for good just now stops the others from starting.
                if decide(&self.flow, &self.state, idx, self.sched.failing(), false) == Action::Start {
                    self.retry_at.remove(&idx);
                    self.start_attempt(idx)?;
                }
            }
            // A skip lets the steps after it be decided too.
            if skips.is_empty() {
                return Ok(());
            }
        }
    }

    /// Whether step `idx` runs its command as a cluster job.
    fn is_remote(&self, idx: usize) -> bool {
        self.flow.steps[idx].call.is_none() && self.executor_of(idx) == crate::flow::ExecutorKind::Slurm
    }

    /// Whether anything can still start or be decided (a retry waiting for its time counts).
    /// When nothing can, settles what waited for a router that will not decide again, and
    /// when a failure holds everything back, releases the clean-up steps.
    pub(super) fn has_work(&mut self) -> bool {
        let failing = self.sched.failing();
        let acts =
            |i: usize, settle: bool| decide(&self.flow, &self.state, i, failing, settle) != Action::Wait;
        if self.sched.candidates().any(|i| acts(i, false)) || !self.unrouted.is_empty() {
            return true;
        }
        if self.sched.candidates().any(|i| acts(i, true)) {
            self.settle = true;
            return true;
        }
        if failing {
            let released = released(&self.flow, &self.state);
            let any = released.iter().any(|&i| acts(i, false));
            self.released = released;
            return any;
        }
        false
    }

    fn start_attempt(&mut self, idx: usize) -> Result<(), SessionError> {
        if let Some(approval) = &self.flow.steps[idx].approval {
            let st = &self.state.steps[idx];
            let visit = st.next_visit();
            if st.approval(visit) != Some(Decision::Approved) {
                let event = ApprovalRequested {
                    step: st.id.clone(),
                    visit,
                    message: approval.message.clone(),
                    approvers: approval.approvers.clone(),
                };
                return self.record(Event::ApprovalRequested(event));
            }
        }
        if self.flow.steps[idx].call.is_some() {
            return self.start_call(idx, crate::journal::CallReason::Call);
        }
        let step_id = self.flow.steps[idx].id.clone();
        let (visit, attempt) = (self.state.steps[idx].next_visit(), self.state.steps[idx].next_attempt());
        if self.is_remote(idx) {
            return match self.prepare(idx, visit, attempt)? {
                Some(p) => self.submit(idx, visit, attempt, p),
                None => Ok(()),
            };
        }
        // A step held for its services keeps the definition it was ready with.
        let (definition, key, cache) = match self.services.take_prepared(idx) {
            Some(p) => *p,
            None => match self.prepare(idx, visit, attempt)? {
                Some(p) => p,
                None => return Ok(()),
            },
        };
        match self.services_ready(idx)? {
            super::services::Readiness::Ready => {}
            super::services::Readiness::Wait => {
                self.services.keep_prepared(idx, Box::new((definition, key, cache)));
                return Ok(());
            }
            super::services::Readiness::Fail(message) => {
                return self.record_unstartable(idx, visit, attempt, FailReason::Service, message);
            }
        }
        match self.spawn(idx, visit, attempt) {
            Ok(mut gated) => {
                let pid = gated.pid;
                let relays = std::mem::take(&mut gated.relays);
                self.reaper.wake();
                self.record(Event::StepStarted(StepStarted {
                    step: step_id,
                    visit,
                    attempt,
                    pid,
                    proc_start: gated.proc_start,
                    cache,
                }))?;
                let mut running = Running::new(idx, visit, attempt);
                running.definition = Some(Box::new((definition, key)));
                running.relays = relays;
                self.running.insert(pid, running);
                self.gates.push((pid, gated));
            }
            Err(message) => self.record_unstartable(idx, visit, attempt, FailReason::Spawn, message)?,
        }
        Ok(())
    }

    /// The definition, key and cache verdict of step `idx`'s next attempt; `None` when
    /// that already settled the attempt (a cache hit, inputs that cannot be read).
    fn prepare(&mut self, idx: usize, visit: u32, attempt: u32) -> Result<Option<Prepared>, SessionError> {
        let definition = match self.definition(idx) {
            Ok(d) => d,
            Err(message) => {
                self.record_unstartable(idx, visit, attempt, FailReason::Inputs, message)?;
                return Ok(None);
            }
        };
        let key = definition.key();
        let cache = if !self.flow.steps[idx].cache {
            None
        } else if self.no_cache {
            Some("forced".to_string())
        } else {
            match self.lookup(idx, &key) {
                Lookup::Hit(from, found) => {
                    // The gate is in the key, but it may read other steps' outputs: a cached
                    // result is judged again, and one it now blocks runs instead.
                    let values = found.produced.as_ref().map(|p| p.values.clone()).unwrap_or_default();
                    let gate = self.gate_verdict(idx, visit, attempt, &values);
                    match gate {
                        Some(g) if g.outcome == GateOutcome::Block => {
                            Some("stale: its gate blocks the cached result".to_string())
                        }
                        gate => {
                            self.record_cached(idx, visit, attempt, definition, key, from, *found, gate)?;
                            return Ok(None);
                        }
                    }
                }
                Lookup::Miss(why) => Some(why),
            }
        };
        Ok(Some((definition, key, cache)))
    }

    /// Reuses a matching receipt: this attempt gets a receipt of its own that points at it,
    /// and its values come back as the step's outputs; the command does not run.
    #[allow(clippy::too_many_arguments)]
    fn record_cached(
        &mut self,
        idx: usize,
        visit: u32,
        attempt: u32,
        definition: crate::receipt::Definition,
        key: String,
        from: crate::receipt::Source,
        found: crate::receipt::Receipt,
        gate: Option<GateEvaluated>,
    ) -> Result<(), SessionError> {
        let produced = found.produced.unwrap_or_default();
        let outputs = produced.values.clone();
        let handoff = produced.handoff.clone();
        // The steps after it read the handoff from this attempt's directory.
        if let Some(h) = &handoff {
            self.write_handoff(idx, visit, attempt, h)?;
        }
        // The original's own source, if it was itself a reuse: always point at who ran it.
        let from = found.cached_from.unwrap_or(from);
        let receipt = self.write_receipt(
            idx,
            visit,
            attempt,
            definition,
            key,
            Some(produced),
            Some(from.clone()),
            Some(0),
            0,
        )?;
        self.record(Event::StepCached(StepCached {
            step: self.flow.steps[idx].id.clone(),
            visit,
            attempt,
            receipt,
            from,
            outputs,
            handoff,
            gate,
        }))
    }

    /// Writes a restored handoff where a dependent's `$RUNNER_HANDOFF_IN` points.
    fn write_handoff(
        &self,
        idx: usize,
        visit: u32,
        attempt: u32,
        h: &crate::journal::Handoff,
    ) -> Result<(), SessionError> {
        let dir = attempt_dir(&self.dir, &self.flow.steps[idx].id, visit, attempt);
        let write = |name: &str, bytes: &[u8]| {
            std::fs::create_dir_all(&dir)
                .and_then(|()| crate::fsutil::write_replace(&dir.join(name), "handoff", bytes))
                .map_err(|source| SessionError::Commit {
                    run_id: self.state.run_id.clone(),
                    source: crate::journal::JournalError::io(&dir.join(name), source),
                })
        };
        write(HANDOFF_FILE, h.content_md.as_bytes())?;
        if let Some(meta) = &h.metadata {
            write(HANDOFF_META_FILE, meta.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// A command (or call) that cannot be started is a failed attempt, not a crash: it
    /// begins and ends with one `StepFailed`, and is retried like any other failure.
    pub(super) fn record_unstartable(
        &mut self,
        idx: usize,
        visit: u32,
        attempt: u32,
        reason: FailReason,
        message: String,
    ) -> Result<(), SessionError> {
        let retry_in_ms = self.retry_after(idx, 1);
        self.record(Event::StepFailed(StepFailed {
            step: self.flow.steps[idx].id.clone(),
            visit,
            attempt,
            reason,
            exit_code: None,
            signal: None,
            message,
            duration_ms: 0,
            retry_in_ms,
            receipt: None,
        }))
    }

    fn spawn(&mut self, idx: usize, visit: u32, attempt: u32) -> Result<Gated, String> {
        let step = &self.flow.steps[idx];
        let workdir = Path::new(&self.state.workdir);
        if !workdir.is_dir() {
            return Err(format!(
                "cannot start the command: its working directory {} is gone",
                workdir.display()
            ));
        }
        let dir = attempt_dir(&self.dir, &step.id, visit, attempt);
        let logs = || -> std::io::Result<(std::fs::File, std::fs::File)> {
            std::fs::create_dir_all(&dir)?;
            Ok((
                std::fs::File::create(dir.join("stdout.log"))?,
                std::fs::File::create(dir.join("stderr.log"))?,
            ))
        };
        let (stdout, stderr) =
            logs().map_err(|e| format!("cannot create the log files in {}: {e}", dir.display()))?;
        let mut env = self.step_env(idx, visit, attempt, &dir);
        let granted = self.secrets_for(idx)?;
        // Secrets it did not declare are not inherited from the runner's environment either.
        let remove_env: Vec<String> =
            self.secrets.names().filter(|n| !granted.iter().any(|(g, _)| g == *n)).cloned().collect();
        env.extend(granted);
        let (step, workdir) = (&self.flow.steps[idx], Path::new(&self.state.workdir));
        let redact = self.redactor.clone();
        executor::spawn_gated(SpawnSpec {
            program: executor::Program::Shell(&step.run),
            env: &env,
            workdir,
            output: executor::Output::Files { stdout, stderr, redact },
            remove_env: &remove_env,
        })
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

    pub(super) fn record_result(&mut self, mut r: Running) -> Result<(), SessionError> {
        let Some((exit, ended)) = r.leader_exit else { return Ok(()) };
        // The logs are complete (and masked) before anything reads them; a writer that
        // escaped the group cannot hold the result back for long.
        executor::drain_relays(&r.relays, RELAY_WAIT);
        self.mask_attempt_files(r.step, r.visit, r.attempt);
        let step = &self.flow.steps[r.step];
        let step_id = step.id.clone();
        let timeout = step.timeout;
        let duration_ms = r.started.map_or(0, |s| ended.saturating_duration_since(s).as_millis() as u64);
        let (visit, attempt) = (r.visit, r.attempt);
        let left = match exit {
            Exit::Code(0) if !r.timed_out && r.service_lost.is_none() => {
                Some(self.read_left(&step_id, visit, attempt))
            }
            _ => None,
        };
        let definition = r.definition.take();
        // The receipt is durable before the event that acknowledges the attempt.
        let receipt = |this: &mut Self, produced: Option<crate::receipt::Produced>, code: Option<i32>| {
            definition
                .as_deref()
                .map(|(d, key)| {
                    this.write_receipt(
                        r.step,
                        visit,
                        attempt,
                        d.clone(),
                        key.clone(),
                        produced,
                        None,
                        code,
                        duration_ms,
                    )
                })
                .transpose()
        };
        let (reason, exit_code, signal, message) = match (exit, left) {
            (_, Some(Ok((outputs, handoff)))) => match self.produced(r.step, &outputs, &handoff) {
                Err(message) => (FailReason::MissingOutput, Some(0), None, message),
                Ok(produced) => match self.check_gate(r.step, visit, attempt, &outputs)? {
                    None => {
                        let receipt = receipt(self, Some(produced), Some(0))?;
                        let ok = StepSucceeded {
                            step: step_id,
                            visit,
                            attempt,
                            duration_ms,
                            outputs,
                            handoff,
                            receipt,
                        };
                        return self.record(Event::StepSucceeded(ok));
                    }
                    // A gate that blocks is a verdict on the result, not a flaky run: no retry.
                    Some(message) => {
                        let receipt = receipt(self, None, Some(0))?;
                        return self.record(Event::StepFailed(StepFailed {
                            step: step_id,
                            visit,
                            attempt,
                            reason: FailReason::Gate,
                            exit_code: Some(0),
                            signal: None,
                            message,
                            duration_ms,
                            retry_in_ms: None,
                            receipt,
                        }));
                    }
                },
            },
            (_, Some(Err(message))) => (FailReason::Outputs, Some(0), None, message),
            _ if r.interrupted => {
                return self.record(Event::StepInterrupted(StepInterrupted {
                    step: step_id,
                    visit,
                    attempt,
                    reason: if self.cancelled_by.is_some() {
                        InterruptReason::Cancelled
                    } else {
                        InterruptReason::Signal
                    },
                    leftover_stopped: None,
                    duration_ms: Some(duration_ms),
                }));
            }
            _ if r.service_lost.is_some() => (
                FailReason::Service,
                code_of(exit),
                signal_of(exit),
                r.service_lost.take().unwrap_or_default(),
            ),
            _ if r.timed_out => (
                FailReason::Timeout,
                code_of(exit),
                signal_of(exit),
                format!("timed out after {}", human(timeout.unwrap_or_default())),
            ),
            _ if matches!(r.cluster, Some(ClusterEnd::Lost(_))) => {
                if let Some(ClusterEnd::Lost(message)) = &r.cluster {
                    self.report.warn(&format!("step `{step_id}` attempt {attempt}: {message}"));
                }
                return self.record(Event::StepInterrupted(StepInterrupted {
                    step: step_id,
                    visit,
                    attempt,
                    reason: InterruptReason::JobLost,
                    leftover_stopped: None,
                    duration_ms: Some(duration_ms),
                }));
            }
            _ if matches!(r.cluster, Some(ClusterEnd::Cancelled(_))) => {
                let message = match r.cluster.take() {
                    Some(ClusterEnd::Cancelled(m)) => m,
                    _ => String::new(),
                };
                (FailReason::Cancelled, None, None, message)
            }
            (Exit::Code(c), None) => (FailReason::Exit, Some(c), None, format!("exited with code {c}")),
            (Exit::Signal(s), None) => (
                FailReason::Signal,
                None,
                Some(executor::signal_name(s)),
                format!("killed by {}", executor::signal_name(s)),
            ),
        };
        let receipt = receipt(self, None, exit_code)?;
        let retry_in_ms = self.retry_after(r.step, 0);
        let event = Event::StepFailed(StepFailed {
            step: step_id,
            visit,
            attempt,
            reason,
            exit_code,
            signal,
            message,
            duration_ms,
            retry_in_ms,
            receipt,
        });
        self.record(event)
    }

    /// Checks step `idx`'s gate, if it has one, and journals the verdict; `Some(message)`
    /// when the gate blocks the step.
    fn check_gate(
        &mut self,
        idx: usize,
        visit: u32,
        attempt: u32,
        outputs: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<String>, SessionError> {
        let Some(event) = self.gate_verdict(idx, visit, attempt, outputs) else { return Ok(None) };
        let blocked = (event.outcome == GateOutcome::Block).then(|| {
            format!(
                "gate blocked the step: `{}` is false{}",
                event.pass,
                crate::report::gate_values(&event.values)
            )
        });
        self.record(Event::GateEvaluated(event))?;
        Ok(blocked)
    }

    /// Step `idx`'s gate, if it has one, on `outputs`: the verdict with what it read.
    fn gate_verdict(
        &self,
        idx: usize,
        visit: u32,
        attempt: u32,
        outputs: &std::collections::BTreeMap<String, String>,
    ) -> Option<GateEvaluated> {
        let gate = self.flow.steps[idx].gate.as_deref()?;
        let (outcome, values) = crate::scheduler::gate_verdict(&self.flow, &self.state, idx, gate, outputs);
        Some(GateEvaluated {
            step: self.flow.steps[idx].id.clone(),
            visit,
            attempt,
            outcome,
            pass: gate.pass.source().to_string(),
            warn: gate.warn.as_ref().map(|w| w.source().to_string()),
            profile: self.state.profile.clone(),
            values,
        })
    }

    /// A secret a step wrote into its outputs or handoff files is masked in the files
    /// themselves, whatever the attempt's outcome, so it reaches neither the journal nor
    /// anything else. (Streaming: a huge file costs time, not memory.)
    pub(super) fn mask_attempt_files(&self, idx: usize, visit: u32, attempt: u32) {
        let Some(r) = &self.redactor else { return };
        let dir = attempt_dir(&self.dir, &self.flow.steps[idx].id, visit, attempt);
        for name in [OUTPUT_FILE, HANDOFF_FILE, HANDOFF_META_FILE] {
            if let Err(e) = r.mask_file(&dir.join(name)) {
                self.report.warn(&format!("cannot mask secrets in {}: {e}", dir.join(name).display()));
            }
        }
    }

    /// What a successful attempt left for its successors: outputs and a handoff.
    fn read_left(
        &self,
        step: &str,
        visit: u32,
        attempt: u32,
    ) -> Result<(std::collections::BTreeMap<String, String>, Option<crate::journal::Handoff>), String> {
        let dir = attempt_dir(&self.dir, step, visit, attempt);
        let outputs = outputs::read_outputs(&dir.join(OUTPUT_FILE)).map_err(|e| e.to_string())?;
        let handoff = outputs::read_handoff(&dir.join(HANDOFF_FILE), &dir.join(HANDOFF_META_FILE))
            .map_err(|e| e.to_string())?
            .map(|h| crate::journal::Handoff { content_md: h.content_md, metadata: h.metadata });
        // The files were masked byte for byte; what parsing unescapes is masked again.
        let (outputs, handoff) = match &self.redactor {
            None => (outputs, handoff),
            Some(r) => {
                let masked = |m: serde_json::Value| {
                    let out = r.redact_json(m.clone());
                    // An escaped value (`\"`, `\u00e9`) is masked in the file too.
                    if out != m {
                        let _ = crate::fsutil::write_replace(
                            &dir.join(HANDOFF_META_FILE),
                            "redact",
                            out.to_string().as_bytes(),
                        );
                    }
                    out
                };
                (
                    outputs.into_iter().map(|(k, v)| (r.redact_str(&k), r.redact_str(&v))).collect(),
                    handoff.map(|h| crate::journal::Handoff {
                        content_md: r.redact_str(&h.content_md),
                        metadata: h.metadata.map(masked),
                    }),
                )
            }
        };
        Ok((outputs, handoff))
    }

    pub(super) fn on_signal(&mut self, sig: Signal) {
        let now = Instant::now();
        if self.stop.is_none() {
            self.stop = Some(sig);
            self.cancelled_by = crate::store::cancel::request_for_me(&self.dir).map(|r| r.by);
            self.retry_at.clear();
            if !self.running.is_empty() || !self.remote.is_empty() {
                let why = match &self.cancelled_by {
                    Some(by) => format!("cancelled by {by}"),
                    None => format!("received {}", executor::signal_name(sig)),
                };
                self.report.info(&format!(
                    "{why}: stopping {} running step(s); send the signal again to kill them at once",
                    self.running.len() + self.remote.len()
                ));
            }
            for (pid, r) in &mut self.running {
                r.interrupted = true;
                if r.killed_at.is_none() {
                    r.kill_at = Some(checked_after(now, self.flow.steps[r.step].grace));
                    executor::signal_group(*pid, Signal::SIGTERM);
                }
            }
            self.stop_jobs(false);
        } else {
            for (pid, r) in &mut self.running {
                kill_now(*pid, r, now);
            }
            self.kill_services_now();
            self.stop_jobs(true);
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
        self.check_service_timers()?;
        self.check_job_timers();
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
            .then(|| {
                self.retry_at.iter().filter(|(i, _)| self.sched.is_candidate(**i)).map(|(_, t)| Some(*t))
            })
            .into_iter()
            .flatten();
        // While a step waits for approval, its verdict may arrive in the inbox.
        let inbox = (self.stop.is_none() && self.state.count(crate::state::StepStatus::Waiting) > 0)
            .then(|| Instant::now() + super::approvals::INBOX_POLL);
        timers
            .chain(retries)
            .flatten()
            .chain(inbox)
            .chain(self.next_service_wake())
            .chain(self.next_job_wake())
            .min()
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

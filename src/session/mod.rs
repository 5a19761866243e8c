//! One runner process driving one run: the scheduler decides, the executor does, the
//! journal remembers.
//!
//! Every iteration: start what the scheduler says is ready (children wait at their gates),
//! commit all staged events with one `fdatasync`, then open the gates, print, and update
//! the projection; then wait for the next exit, signal or timer. Events are folded into
//! the state as they are staged, but nothing acts on them until the commit returns.

mod approvals;
mod attempts;
mod calls;
mod env;
mod jobs;
mod open;
mod receipts;
mod routing;
mod services;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use nix::sys::signal::Signal;

pub use approvals::{Decided, Verdict, decide};
pub use open::{OpenError, Resumed, SessionOptions, open_existing, start_new};
pub use services::SERVICES_DIR;

use attempts::{Running, checked_after};

use crate::executor::{self, Exit, Gated, Reaper};
use crate::faults;
use crate::flow::Flow;
use crate::journal::{
    Event, JournalError, JournalWriter, Record, RunFinished, RunInterrupted, RunOutcome, RunPaused,
};
use crate::projection::{Batch, ProjectionWorker};
use crate::report::Reporter;
use crate::scheduler::{self, Scheduler};
use crate::state::{RunState, StepStatus, write_snapshot};
use crate::store::{RunLock, RunsDir};

/// A snapshot is written after at least this many events (and twice as many as the run
/// has steps, so its cost stays in proportion), and when the session ends.
const SNAPSHOT_EVERY: u64 = 1000;

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEnd {
    Succeeded,
    Failed(Vec<String>),
    Interrupted(Signal),
    /// Steps wait for approval and nothing else can move.
    Paused(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "run `{run_id}` stopped: {source}. Nothing after the last durable event was acted on; \
         fix the cause (free space?), then run `runner resume --run-id {run_id}`"
    )]
    Commit {
        run_id: String,
        #[source]
        source: JournalError,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("cannot start the runner's helper threads: {0}")]
    Setup(std::io::Error),
    #[error(
        "processes of an earlier attempt of this run survived SIGKILL (pids {}); no new attempt \
         starts while they live. Find out what holds them (uninterruptible I/O?) and resume again",
        pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    )]
    LeftoversSurvived { pids: Vec<i32> },
}

enum Msg {
    Exit(i32, Exit),
    Signal(Signal),
    /// A service's health check: how many were made, and what the last one saw.
    Health {
        service: String,
        instance: u32,
        checks: u32,
        result: Result<(), String>,
    },
    /// What the Slurm poller learned about the run's jobs.
    Jobs(Vec<crate::executor::slurm::Update>),
}

/// A run, locked by this process, ready to be driven.
pub struct Session {
    flow: Flow,
    dir: PathBuf,
    _lock: RunLock,
    journal: JournalWriter,
    state: RunState,
    sched: Scheduler,
    projection: Option<ProjectionWorker>,
    report: Reporter,
    jobs: usize,
    rx: Receiver<Msg>,
    /// For the threads that report to the session (health checks).
    tx: mpsc::Sender<Msg>,
    reaper: Reaper,
    services: services::Services,
    running: HashMap<i32, Running>,
    /// Attempts running as cluster jobs.
    remote: jobs::Jobs,
    gates: Vec<(i32, Gated)>,
    retry_at: HashMap<usize, Instant>,
    /// The signal that asked for a graceful stop, once one did.
    stop: Option<Signal>,
    /// Who cancelled the run, when that signal came from `runner cancel`.
    cancelled_by: Option<String>,
    progress: crate::report::Progress,
    since_snapshot: u64,
    /// Routers that succeeded and still have to decide where to go.
    unrouted: BTreeSet<usize>,
    /// Clean-up steps released because the run is failing and nothing else can move.
    released: Vec<usize>,
    /// Nothing else can move: skip what waited for a router that will not decide again.
    settle: bool,
    /// Steps whose latest success left outputs: they reach later steps' environments.
    with_outputs: BTreeSet<usize>,
    upstream: env::UpstreamOutputs,
    /// The trigger file's digest for step keys, hashed once per session: it may be large,
    /// and a later step may have moved it away.
    trigger_digest: std::cell::OnceCell<crate::fileset::FileDigest>,
    /// `--no-cache`: run every step even where a cached receipt matches.
    no_cache: bool,
    /// The projection, opened at the first cache lookup, as the index of receipts.
    cache_index: Option<crate::projection::Projection>,
    /// Inbox files whose verdicts are staged: removed once they are durable.
    inbox_done: Vec<PathBuf>,
    /// Secret values, in memory only, and the redactor for everything steps write.
    secrets: crate::secrets::Secrets,
    redactor: Option<std::sync::Arc<crate::secrets::Redactor>>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    fn new(
        flow: Flow,
        dir: PathBuf,
        lock: RunLock,
        journal: JournalWriter,
        state: RunState,
        runs: &RunsDir,
        report: Reporter,
        opts: &SessionOptions,
    ) -> Result<Session, SessionError> {
        let (tx, rx) = mpsc::channel();
        let exits = tx.clone();
        let to_session = tx.clone();
        let reaper = Reaper::start(move |pid, exit| {
            let _ = exits.send(Msg::Exit(pid, exit));
        });
        executor::forward_signals(move |sig| {
            let _ = tx.send(Msg::Signal(sig));
        })
        .map_err(SessionError::Setup)?;
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let mut flow = flow;
        if let Some(profile) = &state.profile
            && !flow.apply_profile(profile)
        {
            // `run` and resume check this first: reaching here is a bug.
            return Err(SessionError::Internal(format!("the run's profile `{profile}` is not in its flow")));
        }
        let projection = match ProjectionWorker::start(runs.clone(), state.run_id.clone()) {
            Ok(worker) => Some(worker),
            Err(e) => {
                report
                    .warn(&format!("cannot start the projection thread ({e}); the run continues without it"));
                None
            }
        };
        let unrouted = (0..flow.steps.len())
            .filter(|&i| {
                let st = &state.steps[i];
                !flow.steps[i].next.is_empty()
                    && ((st.status == StepStatus::Succeeded && st.route().is_none())
                        || st.awaits_rejection_route())
            })
            .collect();
        let with_outputs = (0..state.steps.len())
            .filter(|&i| state.steps[i].outputs().is_some_and(|o| !o.is_empty()))
            .collect();
        Ok(Session {
            unrouted,
            released: Vec::new(),
            settle: false,
            with_outputs,
            upstream: env::UpstreamOutputs::default(),
            trigger_digest: std::cell::OnceCell::new(),
            no_cache: opts.no_cache,
            cache_index: None,
            inbox_done: Vec::new(),
            secrets: crate::secrets::Secrets::default(),
            redactor: None,
            sched: Scheduler::new(&flow, &state),
            flow,
            dir,
            _lock: lock,
            journal,
            state,
            projection,
            report,
            jobs: opts.jobs.max(1),
            rx,
            tx: to_session,
            reaper,
            services: services::Services::default(),
            running: HashMap::new(),
            remote: jobs::Jobs::default(),
            gates: Vec::new(),
            retry_at: HashMap::new(),
            stop: None,
            cancelled_by: None,
            progress: opts.progress,
            since_snapshot: 0,
        })
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// Runs until the run succeeds, fails, or is interrupted.
    /// On an error nothing more can be journaled; dropping the session then kills the
    /// steps still running rather than orphaning them.
    pub fn drive(mut self) -> Result<SessionEnd, SessionError> {
        self.report.start_progress(self.progress, &self.state);
        self.drive_inner()
    }

    fn drive_inner(&mut self) -> Result<SessionEnd, SessionError> {
        // A signal that arrived while the session was being prepared stops it before
        // anything starts.
        while let Ok(m) = self.rx.try_recv() {
            self.handle(m)?;
        }
        let mut idle_at = 0;
        loop {
            if self.stop.is_none() {
                if self.state.count(StepStatus::Waiting) > 0 {
                    self.check_inbox()?;
                }
                self.start_ready()?;
            }
            self.commit()?;
            self.stop_unneeded_services();
            if self.running.is_empty() && self.remote.is_empty() {
                if let Some(signal) = self.stop {
                    self.stop_all_services(&format!(
                        "the run was stopped by {}",
                        executor::signal_name(signal)
                    ))?;
                    self.record(Event::RunInterrupted(RunInterrupted {
                        signal: executor::signal_name(signal),
                        cancelled_by: self.cancelled_by.clone(),
                    }))?;
                    self.commit()?;
                    crate::store::cancel::clear(&self.dir);
                    self.end_session();
                    return Ok(SessionEnd::Interrupted(signal));
                }
                // Steps waiting for a retry still have work; the loop waits for their time.
                if !self.has_work() {
                    // A verdict queued at the last moment is taken rather than left behind.
                    if self.stop.is_none() && self.state.count(StepStatus::Waiting) > 0 {
                        self.check_inbox()?;
                        if self.journal.has_staged() {
                            continue;
                        }
                    }
                    return self.finish();
                }
                // Work that needs no waiting (released clean-up steps, settled skips): go on
                // at once. Two rounds without any progress would be a bug; end rather than hang.
                if self.next_wake().is_none() {
                    if self.journal.next_seq() == idle_at {
                        return self.finish();
                    }
                    idle_at = self.journal.next_seq();
                    continue;
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
            self.check_timers()?;
        }
    }

    fn handle(&mut self, msg: Msg) -> Result<(), SessionError> {
        match msg {
            Msg::Exit(pid, exit) => {
                if self.on_service_exit(pid, exit)? {
                    return self.record_finished();
                }
                self.on_exit(pid, exit)
            }
            Msg::Signal(sig) => {
                self.on_signal(sig);
                Ok(())
            }
            Msg::Health { service, instance, checks, result } => {
                self.on_health(&service, instance, checks, result)
            }
            Msg::Jobs(updates) => self.on_jobs(updates),
        }
    }

    /// The last acts of a session: snapshot, projection, and no process left behind.
    fn end_session(&mut self) {
        self.sweep_unrecorded();
        self.report.finish(&self.state);
        self.snapshot();
        self.settle_projection();
        let grace = self.flow.steps.iter().map(|s| s.grace).max().unwrap_or_default();
        let stopped = executor::stop_orphans(grace);
        if stopped > 0 {
            self.report.warn(&format!(
                "stopped {stopped} process(es) that steps had detached from their process group"
            ));
        }
    }

    fn finish(&mut self) -> Result<SessionEnd, SessionError> {
        self.stop_all_services("the run ended")?;
        let outcome = scheduler::outcome(&self.state);
        let failed_steps = scheduler::failed_steps(&self.state);
        let waiting: Vec<String> = self
            .state
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Waiting)
            .map(|s| s.id.clone())
            .collect();
        if failed_steps.is_empty() && !waiting.is_empty() {
            self.record(Event::RunPaused(RunPaused { waiting: waiting.clone() }))?;
            self.commit()?;
            self.end_session();
            return Ok(SessionEnd::Paused(waiting));
        }
        self.record(Event::RunFinished(RunFinished { outcome, failed_steps: failed_steps.clone() }))?;
        self.commit()?;
        self.end_session();
        Ok(match outcome {
            RunOutcome::Succeeded => SessionEnd::Succeeded,
            RunOutcome::Failed => SessionEnd::Failed(failed_steps),
        })
    }

    /// Stages an event and folds it into the state; it is acted on after `commit`.
    fn record(&mut self, event: Event) -> Result<(), SessionError> {
        let record = self.journal.stage(event);
        self.state.apply(record).map_err(|e| SessionError::Internal(format!("event does not fold: {e}")))?;
        if record.event.is_service() {
            return Ok(());
        }
        if record.event.step().is_none() {
            self.sched.sync_all(&self.state);
            return Ok(());
        }
        if matches!(record.event, Event::CallPushed(_)) {
            self.sched.grow(&self.flow, &self.state);
        }
        for id in record.event.touched() {
            if let Some(i) = self.state.step_pos(id) {
                self.sched.sync(&self.state, i);
            }
        }
        let step = record.event.step().and_then(|id| self.state.step_pos(id));
        // A success (of a command or of a call) may change what later steps see, and a
        // router's success waits for its decision.
        if let Some(i) = step
            && matches!(record.event, Event::StepSucceeded(_) | Event::StepCached(_) | Event::CallReturned(_))
        {
            let has = self.state.steps[i].outputs().is_some_and(|o| !o.is_empty());
            let changed = if has { self.with_outputs.insert(i) } else { self.with_outputs.remove(&i) };
            if changed {
                self.upstream.invalidate();
            }
            if !self.flow.steps[i].next.is_empty() && self.state.steps[i].status == StepStatus::Succeeded {
                self.unrouted.insert(i);
            }
        }
        let call_event = matches!(record.event, Event::CallPushed(_) | Event::CallReturned(_));
        if let Some(i) = step
            && !call_event
        {
            self.after_step_event(i)?;
        }
        Ok(())
    }

    /// Makes staged events durable, then acts on them.
    fn commit(&mut self) -> Result<(), SessionError> {
        if !self.journal.has_staged() {
            return Ok(());
        }
        faults::reached("before-commit");
        let records = self
            .journal
            .commit()
            .map_err(|source| SessionError::Commit { run_id: self.state.run_id.clone(), source })?;
        faults::reached("after-commit");
        self.clear_inbox();
        let now = Instant::now();
        for (pid, gate) in self.gates.drain(..) {
            if let Some(r) = self.running.get_mut(&pid) {
                r.started = Some(now);
                r.deadline = self.flow.steps[r.step].timeout.map(|t| checked_after(now, t));
            }
            gate.open();
        }
        self.release_submitted();
        for r in &records {
            self.report.event(r, &self.state);
        }
        // After the report, so that a service's first lines follow its "started" line.
        self.open_service_gates();
        self.project(&records);
        faults::reached("after-projection");
        self.since_snapshot += records.len() as u64;
        if self.since_snapshot >= SNAPSHOT_EVERY.max(2 * self.state.steps.len() as u64) {
            self.snapshot();
        }
        Ok(())
    }

    /// Hands committed events to the projection thread.
    fn project(&self, records: &[Record]) {
        if let Some(w) = &self.projection {
            w.send(Batch::of(&self.state, records, self.journal.len()));
        }
    }

    /// At the end of a session, waits for the projection to be current.
    fn settle_projection(&mut self) {
        if let Some(w) = self.projection.take()
            && let Err(e) = w.finish()
        {
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
}

impl Drop for Session {
    /// Even on an error or a panic, no step outlives the session that started it.
    fn drop(&mut self) {
        for pid in self.running.keys() {
            executor::signal_group(*pid, Signal::SIGKILL);
        }
        self.services.kill_all();
        executor::kill_orphans();
    }
}

//! The state of a run as a fold of its journal: `state = fold(events)`.
//!
//! [`RunState::apply`] is the only code that interprets events. The live run, resume,
//! `status` catch-up and `rebuild-projection` all go through it.

mod snapshot;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::flow::Then;
use crate::journal::{
    CallPushed, CallReason, Decision, Event, FailReason, GateEvaluated, Handoff, InterruptReason, ReceiptRef,
    Record, RoutingDecided, RunOutcome, ServiceEnd,
};
pub use snapshot::{SNAPSHOT_FILE, Snapshot, SnapshotFile, load_snapshot, write_snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    /// Paused: steps wait for approval and nothing else can move.
    Waiting,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Waiting => "waiting",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(usize)]
pub enum StepStatus {
    /// Not started in this session (never run, or failed before a resume).
    Pending,
    Running,
    /// The last attempt failed and another one follows after a delay.
    Retrying,
    Succeeded,
    /// Failed after its retries; blocks new steps until the run is resumed.
    Failed,
    /// The last attempt was stopped with the runner; the next session runs it again.
    Interrupted,
    /// This visit was decided without running (condition false, not routed, need skipped).
    Skipped,
    /// Its frame is open: a called flow (or its `on_failure` flow) is running.
    Calling,
    /// Failed, and its `on_failure` said to continue: the steps after it go on.
    Continued,
    /// Ready, but waiting for a person to approve this visit.
    Waiting,
    /// A person rejected this visit: a failure that lasts until someone approves it.
    Rejected,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Retrying => "retrying",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Interrupted => "interrupted",
            StepStatus::Skipped => "skipped",
            StepStatus::Calling => "calling",
            StepStatus::Continued => "continued",
            StepStatus::Waiting => "waiting",
            StepStatus::Rejected => "rejected",
        }
    }

    /// Finished in a way that lets the steps that need it go on.
    pub fn is_done(self) -> bool {
        matches!(self, StepStatus::Succeeded | StepStatus::Skipped | StepStatus::Continued)
    }

    /// Failed for good in this session: holds the run back from new steps.
    pub fn is_failure(self) -> bool {
        matches!(self, StepStatus::Failed | StepStatus::Rejected)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    /// Not run: a matching receipt was reused.
    Cached,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Running => "running",
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Interrupted => "interrupted",
            AttemptStatus::Cached => "cached",
        }
    }

    /// The attempt gave the step its result (ran and succeeded, or reused a receipt).
    pub fn is_success(self) -> bool {
        matches!(self, AttemptStatus::Succeeded | AttemptStatus::Cached)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub visit: u32,
    pub attempt: u32,
    pub status: AttemptStatus,
    pub pid: Option<i32>,
    pub proc_start: Option<u64>,
    /// Boot id of the session that started it.
    pub boot_id: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    /// `exit`, `signal`, `timeout`, `spawn`, or for interruptions `signal` / `runner_died`.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub duration_ms: Option<u64>,
    /// Outputs of a successful attempt.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Box<Handoff>>,
    /// The gate's verdict on this attempt's outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Box<GateEvaluated>>,
    /// The hashes of its `receipt.json`, once it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Box<ReceiptRef>>,
    /// For a step with `cache = true`: what the cache said (one pointer for the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Box<CacheNote>>,
    /// For an attempt that ran as a cluster job: which job, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<Job>>,
}

/// A cluster job that ran an attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub executor: crate::flow::ExecutorKind,
    pub job_id: String,
    pub job_name: String,
    /// The node it ran on, once it was seen running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What the cache said about an attempt of a step with `cache = true`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheNote {
    /// A cached attempt: whose receipt it reused.
    pub from: Option<crate::receipt::Source>,
    /// An attempt that ran: why it was not taken from the cache.
    pub miss: Option<String>,
}

impl Attempt {
    pub fn cached_from(&self) -> Option<&crate::receipt::Source> {
        self.cache.as_ref().and_then(|c| c.from.as_ref())
    }

    pub fn cache_miss(&self) -> Option<&str> {
        self.cache.as_ref().and_then(|c| c.miss.as_deref())
    }
}

impl Attempt {
    /// An attempt that began at `ts` and has no result yet.
    fn begin(visit: u32, attempt: u32, ts: &str) -> Attempt {
        Attempt {
            visit,
            attempt,
            status: AttemptStatus::Running,
            pid: None,
            proc_start: None,
            boot_id: None,
            started_at: Some(ts.to_string()),
            finished_at: None,
            exit_code: None,
            signal: None,
            reason: None,
            message: None,
            duration_ms: None,
            outputs: BTreeMap::new(),
            handoff: None,
            gate: None,
            receipt: None,
            cache: None,
            job: None,
        }
    }

    /// `local`, or the cluster executor that ran it.
    pub fn executor(&self) -> &'static str {
        self.job.as_ref().map_or("local", |j| j.executor.as_str())
    }
}

/// One approval request and its decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub visit: u32,
    /// Sequence number of the request: a visit asked again after a rejection has two.
    pub seq: u64,
    pub requested_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    pub decision: Option<Decision>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub comment: Option<String>,
}

/// A call frame as the fold keeps it: the event that pushed it, and when it popped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub call: CallPushed,
    pub pushed_at: String,
    pub returned_at: Option<String>,
}

/// A routing decision as the fold keeps it: the event and where it is in the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub seq: u64,
    pub ts: String,
    pub decision: RoutingDecided,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub id: String,
    pub status: StepStatus,
    pub attempts: Vec<Attempt>,
    /// Attempts started since the run was started or last resumed: the retry budget.
    pub session_attempts: u32,
    /// Set while `Retrying`: the delay the failed attempt asked for.
    pub retry_in_ms: Option<u64>,
    /// The current (or last) visit; 0 before the first.
    pub visit: u32,
    /// The next start or skip begins a new visit (never visited, or made pending again
    /// by a backward route).
    pub new_visit: bool,
    /// Why the current visit was skipped.
    pub skip_reason: Option<String>,
    /// Every routing decision of this step, in journal order.
    pub routes: Vec<Route>,
    /// Every approval request of this step, in journal order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
}

impl StepState {
    /// A step that has not been visited yet.
    fn new(id: String) -> StepState {
        StepState {
            id,
            status: StepStatus::Pending,
            attempts: Vec::new(),
            session_attempts: 0,
            retry_in_ms: None,
            visit: 0,
            new_visit: true,
            skip_reason: None,
            routes: Vec::new(),
            approvals: Vec::new(),
        }
    }

    /// Makes a finished step pending for a new visit (a backward route, a repeated call).
    /// A step with an attempt or a frame in flight cannot be restarted.
    fn restart(&mut self) -> Result<(), String> {
        if matches!(self.status, StepStatus::Running | StepStatus::Retrying | StepStatus::Calling) {
            return Err(format!("cannot restart step `{}`: it is {}", self.id, self.status.as_str()));
        }
        self.status = StepStatus::Pending;
        self.new_visit = true;
        self.retry_in_ms = None;
        self.skip_reason = None;
        Ok(())
    }

    pub fn last_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    /// The attempt that succeeded in the current visit, if it did.
    pub fn success(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.visit == self.visit && a.status.is_success())
    }

    /// Outputs of the latest successful attempt (of any visit).
    pub fn outputs(&self) -> Option<&BTreeMap<String, String>> {
        self.attempts.iter().rev().find(|a| a.status.is_success()).map(|a| &a.outputs)
    }

    /// The routing decision about the latest attempt, once made.
    pub fn route(&self) -> Option<&RoutingDecided> {
        let last = self.attempts.last()?;
        self.routes.last().map(|r| &r.decision).filter(|d| d.visit == last.visit && d.attempt == last.attempt)
    }

    /// A rejected router whose rules were tried for this rejection (attempt 0 of the visit).
    pub fn rejection_routed(&self) -> bool {
        self.routes.last().is_some_and(|r| r.decision.visit == self.visit && r.decision.attempt == 0)
    }

    /// A router rejected in this visit that has not tried its rules yet.
    pub fn awaits_rejection_route(&self) -> bool {
        self.status == StepStatus::Rejected && !self.rejection_routed()
    }

    /// The decision on visit `visit`, if its latest request has one.
    pub fn approval(&self, visit: u32) -> Option<Decision> {
        self.approvals.last().filter(|a| a.visit == visit).and_then(|a| a.decision)
    }

    /// Attempts made so far in the current visit.
    fn visit_attempts(&self) -> u32 {
        self.attempts.iter().rev().take_while(|a| a.visit == self.visit).count() as u32
    }

    /// The visit an activation (start or skip) belongs to.
    pub fn next_visit(&self) -> u32 {
        if self.new_visit { self.visit + 1 } else { self.visit }
    }

    /// Number of the next attempt: attempts count within a visit.
    pub fn next_attempt(&self) -> u32 {
        if self.new_visit { 1 } else { self.visit_attempts() + 1 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub flow: String,
    pub flow_path: String,
    pub flow_hash: String,
    pub params: BTreeMap<String, String>,
    pub workdir: String,
    pub status: RunStatus,
    pub started_at: String,
    /// Time of the last `RunFinished`/`RunInterrupted`; cleared by a resume.
    pub finished_at: Option<String>,
    /// Signal that interrupted the run, while it is interrupted.
    pub signal: Option<String>,
    /// Sessions that drove this run: 1 + number of resumes.
    pub sessions: u32,
    /// Boot id of the current session.
    pub boot_id: String,
    pub journal_repairs: u32,
    /// Last applied sequence number.
    pub seq: u64,
    /// Time of the last applied event.
    pub last_ts: String,
    pub steps: Vec<StepState>,
    /// Every call frame, in push order; open ones have no `returned_at`.
    pub frames: Vec<Frame>,
    /// Who cancelled the run (`runner cancel`), while it is interrupted by that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    /// The gate profile chosen with `--profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The file the run was started for (`--trigger-file`), given to steps as
    /// `RUNNER_TRIGGER_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_file: Option<String>,
    /// `--executor`: where steps run that do not say themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<crate::flow::ExecutorKind>,
    /// Every start of a service, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRun>,
    /// Derived lookups, rebuilt after deserialising and ignored by equality.
    #[serde(skip)]
    index: Derived,
}

/// Step id -> position, and how many steps have each status (so that counting is O(1)
/// for runs of any size).
#[derive(Clone, Debug, Default)]
struct Derived {
    positions: HashMap<String, usize>,
    counts: [usize; STATUSES],
}

const STATUSES: usize = 11;

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// One start of a service, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRun {
    pub service: String,
    pub instance: u32,
    pub pid: i32,
    pub proc_start: u64,
    pub restart: u32,
    pub for_step: String,
    pub started_at: String,
    pub healthy_at: Option<String>,
    pub checks: Option<u32>,
    pub stopped_at: Option<String>,
    pub reason: Option<ServiceEnd>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub message: Option<String>,
    #[serde(default)]
    pub degraded: bool,
}

/// An event that cannot follow the events before it: the journal contradicts itself.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("event {seq} ({kind}): {reason}")]
pub struct FoldError {
    pub seq: u64,
    pub kind: &'static str,
    pub reason: String,
}

impl RunState {
    /// Starts the fold from the first record, which must be `RunStarted`.
    pub fn from_first(record: &Record) -> Result<RunState, FoldError> {
        let Event::RunStarted(e) = &record.event else {
            return Err(fold_err(record, "the first event of a run must be RunStarted"));
        };
        if record.seq != 1 {
            return Err(fold_err(record, "RunStarted must be event 1"));
        }
        let steps = e.steps.iter().cloned().map(StepState::new).collect();
        let mut state = RunState {
            run_id: e.run_id.clone(),
            flow: e.flow.clone(),
            flow_path: e.flow_path.clone(),
            flow_hash: e.flow_hash.clone(),
            params: e.params.clone(),
            workdir: e.workdir.clone(),
            status: RunStatus::Running,
            started_at: record.ts.clone(),
            finished_at: None,
            signal: None,
            sessions: 1,
            boot_id: e.session.boot_id.clone(),
            journal_repairs: 0,
            seq: 1,
            last_ts: record.ts.clone(),
            steps,
            frames: Vec::new(),
            profile: e.profile.clone(),
            trigger_file: e.trigger_file.clone(),
            executor: e.executor,
            services: Vec::new(),
            cancelled_by: None,
            index: Derived::default(),
        };
        state.reindex();
        if state.index.positions.len() != state.steps.len() {
            return Err(fold_err(record, "duplicate step ids"));
        }
        Ok(state)
    }

    /// Folds a whole journal.
    pub fn fold_all(records: &[Record]) -> Result<RunState, FoldError> {
        let (first, rest) = records.split_first().ok_or(FoldError {
            seq: 0,
            kind: "-",
            reason: "the journal has no events".into(),
        })?;
        let mut state = RunState::from_first(first)?;
        for r in rest {
            state.apply(r)?;
        }
        Ok(state)
    }

    /// Must be called after deserialising (the derived lookups are not stored).
    pub fn reindex(&mut self) {
        self.index.positions = self.steps.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        self.recount();
    }

    fn recount(&mut self) {
        self.index.counts = [0; STATUSES];
        for step in &self.steps {
            self.index.counts[step.status as usize] += 1;
        }
    }

    /// The running instance of a service, if one is.
    pub fn live_service(&self, name: &str) -> Option<&ServiceRun> {
        self.services.iter().rev().find(|s| s.service == name).filter(|s| s.stopped_at.is_none())
    }

    /// Services that died under `degraded = "continue"`, without repeats.
    pub fn degraded(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in self.services.iter().filter(|s| s.degraded) {
            if !out.contains(&s.service.as_str()) {
                out.push(&s.service);
            }
        }
        out
    }

    /// A running instance `instance` of `name`, for an event about it.
    fn service_run_mut(
        &mut self,
        record: &Record,
        name: &str,
        instance: u32,
    ) -> Result<&mut ServiceRun, FoldError> {
        self.services
            .iter_mut()
            .rev()
            .find(|s| s.service == name && s.instance == instance && s.stopped_at.is_none())
            .ok_or_else(|| fold_err(record, &format!("service `{name}` instance {instance} is not running")))
    }

    pub fn step_pos(&self, id: &str) -> Option<usize> {
        self.index.positions.get(id).copied()
    }

    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.step_pos(id).map(|i| &self.steps[i])
    }

    /// Applies one event. The single interpretation of every event.
    pub fn apply(&mut self, record: &Record) -> Result<(), FoldError> {
        if record.seq != self.seq + 1 {
            return Err(fold_err(record, &format!("expected event {}", self.seq + 1)));
        }
        let ts = &record.ts;
        let before = record.event.step().and_then(|id| self.step_pos(id)).map(|i| (i, self.steps[i].status));
        match &record.event {
            Event::RunStarted(_) => return Err(fold_err(record, "a run can only start once")),
            Event::RunResumed(e) => {
                self.sessions += 1;
                self.boot_id.clone_from(&e.session.boot_id);
                self.status = RunStatus::Running;
                self.finished_at = None;
                self.signal = None;
                self.cancelled_by = None;
                for step in &mut self.steps {
                    step.session_attempts = 0;
                    step.retry_in_ms = None;
                    // A resume gives failed steps a fresh start with a fresh retry budget. A
                    // rejection is a person's verdict: only their `approve` overturns it.
                    if matches!(step.status, StepStatus::Failed | StepStatus::Retrying) {
                        step.status = StepStatus::Pending;
                    }
                }
            }
            Event::JournalRepaired(_) => self.journal_repairs += 1,
            Event::FlowChanged(e) => {
                if e.previous_hash != self.flow_hash {
                    return Err(fold_err(record, "the flow change does not start from the run's flow"));
                }
                self.flow_hash.clone_from(&e.flow_hash);
            }
            Event::StepStarted(e) => {
                let boot_id = self.boot_id.clone();
                let step = self.step_mut(record, &e.step)?;
                open_attempt(
                    record,
                    step,
                    Attempt {
                        pid: Some(e.pid),
                        proc_start: Some(e.proc_start),
                        boot_id: Some(boot_id),
                        cache: e
                            .cache
                            .clone()
                            .map(|miss| Box::new(CacheNote { from: None, miss: Some(miss) })),
                        ..Attempt::begin(e.visit, e.attempt, ts)
                    },
                )?;
                step.status = StepStatus::Running;
            }
            Event::StepSubmitted(e) => {
                let step = self.step_mut(record, &e.step)?;
                open_attempt(
                    record,
                    step,
                    Attempt {
                        job: Some(Box::new(Job {
                            executor: e.executor,
                            job_id: e.job_id.clone(),
                            job_name: e.job_name.clone(),
                            node: None,
                        })),
                        cache: e
                            .cache
                            .clone()
                            .map(|miss| Box::new(CacheNote { from: None, miss: Some(miss) })),
                        ..Attempt::begin(e.visit, e.attempt, ts)
                    },
                )?;
                step.status = StepStatus::Running;
            }
            Event::JobRunning(e) => {
                let step = self.step_mut(record, &e.step)?;
                let a = running_attempt(record, step, e.attempt)?;
                match a.job.as_mut() {
                    Some(job) if a.visit == e.visit => job.node = Some(e.node.clone()),
                    _ => return Err(fold_err(record, "the attempt is not a cluster job")),
                }
            }
            Event::StepSucceeded(e) => {
                let step = self.step_mut(record, &e.step)?;
                let a = running_attempt(record, step, e.attempt)?;
                a.status = AttemptStatus::Succeeded;
                a.finished_at = Some(ts.clone());
                a.exit_code = Some(0);
                a.duration_ms = Some(e.duration_ms);
                a.outputs.clone_from(&e.outputs);
                a.handoff = e.handoff.clone().map(Box::new);
                a.receipt = e.receipt.clone().map(Box::new);
                step.status = StepStatus::Succeeded;
            }
            Event::StepCached(e) => {
                let step = self.step_mut(record, &e.step)?;
                open_attempt(
                    record,
                    step,
                    Attempt {
                        status: AttemptStatus::Cached,
                        finished_at: Some(ts.clone()),
                        duration_ms: Some(0),
                        outputs: e.outputs.clone(),
                        handoff: e.handoff.clone().map(Box::new),
                        gate: e.gate.clone().map(Box::new),
                        receipt: Some(Box::new(e.receipt.clone())),
                        cache: Some(Box::new(CacheNote { from: Some(e.from.clone()), miss: None })),
                        ..Attempt::begin(e.visit, e.attempt, ts)
                    },
                )?;
                step.status = StepStatus::Succeeded;
            }
            Event::StepFailed(e) => {
                let step = self.step_mut(record, &e.step)?;
                // A spawn failure has no StepStarted: the attempt begins and ends here.
                if matches!(e.reason, FailReason::Spawn | FailReason::Inputs | FailReason::Service)
                    && step.attempts.last().is_none_or(|a| a.status != AttemptStatus::Running)
                {
                    open_attempt(record, step, Attempt::begin(e.visit, e.attempt, ts))?;
                }
                let a = running_attempt(record, step, e.attempt)?;
                a.status = AttemptStatus::Failed;
                a.finished_at = Some(ts.clone());
                a.exit_code = e.exit_code;
                a.signal.clone_from(&e.signal);
                a.reason = Some(fail_reason(e.reason).into());
                a.message = Some(e.message.clone());
                a.duration_ms = Some(e.duration_ms);
                a.receipt = e.receipt.clone().map(Box::new);
                step.retry_in_ms = e.retry_in_ms;
                step.status = if e.retry_in_ms.is_some() { StepStatus::Retrying } else { StepStatus::Failed };
            }
            Event::StepInterrupted(e) => {
                let step = self.step_mut(record, &e.step)?;
                let a = running_attempt(record, step, e.attempt)?;
                a.status = AttemptStatus::Interrupted;
                a.finished_at = Some(ts.clone());
                a.reason = Some(
                    match e.reason {
                        InterruptReason::Signal => "signal",
                        InterruptReason::RunnerDied => "runner_died",
                        InterruptReason::Cancelled => "cancelled",
                        InterruptReason::JobLost => "job_lost",
                    }
                    .into(),
                );
                a.duration_ms = e.duration_ms;
                step.status = StepStatus::Interrupted;
            }
            Event::StepSkipped(e) => {
                let step = self.step_mut(record, &e.step)?;
                if !matches!(step.status, StepStatus::Pending) || !step.new_visit {
                    return Err(fold_err(
                        record,
                        &format!("step `{}` cannot be skipped: it is {}", e.step, step.status.as_str()),
                    ));
                }
                begin_activation(record, step, e.visit)?;
                step.status = StepStatus::Skipped;
                step.skip_reason = Some(e.reason.clone());
            }
            Event::RoutingDecided(e) => {
                let step = self.step_mut(record, &e.step)?;
                let last = step.last_attempt().map(|a| (a.visit, a.attempt));
                // A router also decides after a rejection, with no attempt of its own (0).
                let rejected = step.status == StepStatus::Rejected
                    && e.attempt == 0
                    && e.visit == step.visit
                    && step.approval(e.visit) == Some(Decision::Rejected);
                if !rejected
                    && (step.status != StepStatus::Succeeded
                        || last != Some((e.visit, e.attempt))
                        || step.route().is_some())
                {
                    return Err(fold_err(
                        record,
                        &format!(
                            "step `{}` visit {} is not a router waiting for its decision",
                            e.step, e.visit
                        ),
                    ));
                }
                if rejected && step.rejection_routed() {
                    return Err(fold_err(
                        record,
                        &format!("the rejection of `{}` was routed already", e.step),
                    ));
                }
                step.routes.push(Route { seq: record.seq, ts: ts.clone(), decision: e.clone() });
                // A rejection that no rule sends back stays a rejection.
                if e.failure.is_some() && !rejected {
                    step.status = StepStatus::Failed;
                }
                for id in &e.reset {
                    self.step_mut(record, id)?.restart().map_err(|why| fold_err(record, &why))?;
                }
            }
            Event::CallPushed(e) => self.push_frame(record, e)?,
            Event::CallReturned(e) => {
                let frame = match self.frames.get_mut((e.frame as usize).wrapping_sub(1)) {
                    Some(f) if f.returned_at.is_none() && f.call.step == e.step => f,
                    _ => return Err(fold_err(record, &format!("frame {} is not open", e.frame))),
                };
                frame.returned_at = Some(ts.clone());
                let (reason, then, attempt) = (frame.call.reason, frame.call.then, frame.call.attempt);
                let step = self.step_mut(record, &e.step)?;
                if step.status != StepStatus::Calling {
                    return Err(fold_err(record, &format!("step `{}` is not calling", e.step)));
                }
                match (reason, then) {
                    (CallReason::Call, _) => {
                        let a = running_attempt(record, step, attempt)?;
                        a.status = AttemptStatus::Succeeded;
                        a.finished_at = Some(ts.clone());
                        a.outputs.clone_from(&e.outputs);
                        step.status = StepStatus::Succeeded;
                    }
                    (CallReason::OnFailure, Some(Then::Retry)) => {
                        step.status = StepStatus::Pending;
                        step.session_attempts = 0;
                    }
                    (CallReason::OnFailure, Some(Then::Continue)) => step.status = StepStatus::Continued,
                    (CallReason::OnFailure, _) => step.status = StepStatus::Failed,
                }
            }
            Event::ApprovalRequested(e) => {
                let step = self.step_mut(record, &e.step)?;
                if matches!(
                    step.status,
                    StepStatus::Running | StepStatus::Succeeded | StepStatus::Calling | StepStatus::Waiting
                ) {
                    return Err(fold_err(
                        record,
                        &format!(
                            "step `{}` cannot wait for approval: it is {}",
                            e.step,
                            step.status.as_str()
                        ),
                    ));
                }
                begin_activation(record, step, e.visit)?;
                step.status = StepStatus::Waiting;
                step.approvals.push(Approval {
                    visit: e.visit,
                    seq: record.seq,
                    requested_at: ts.clone(),
                    message: e.message.clone(),
                    approvers: e.approvers.clone(),
                    decision: None,
                    decided_by: None,
                    decided_at: None,
                    comment: None,
                });
            }
            Event::ApprovalDecided(e) => {
                let step = self.step_mut(record, &e.step)?;
                let latest = step.approvals.last().filter(|a| a.visit == e.visit).map(|a| a.decision);
                // A waiting step takes a decision; a rejected one can still be approved.
                let open = match (step.status, latest) {
                    (StepStatus::Waiting, Some(None)) => true,
                    (StepStatus::Rejected, Some(Some(Decision::Rejected))) => {
                        e.decision == Decision::Approved
                    }
                    _ => false,
                };
                if !open {
                    return Err(fold_err(
                        record,
                        &format!("step `{}` visit {} is not waiting for approval", e.step, e.visit),
                    ));
                }
                if let Some(a) = step.approvals.last_mut() {
                    a.decision = Some(e.decision);
                    a.decided_by = Some(e.by.clone());
                    a.decided_at = Some(ts.clone());
                    a.comment.clone_from(&e.comment);
                }
                step.status = match e.decision {
                    Decision::Approved => StepStatus::Pending,
                    Decision::Rejected => StepStatus::Rejected,
                };
            }
            Event::GateEvaluated(e) => {
                let step = self.step_mut(record, &e.step)?;
                running_attempt(record, step, e.attempt)?.gate = Some(Box::new(e.clone()));
            }
            Event::ServiceStarted(e) => {
                let count = self.services.iter().filter(|s| s.service == e.service).count();
                if e.instance as usize != count + 1 {
                    return Err(fold_err(record, &format!("service `{}` has {count} starts", e.service)));
                }
                if self.live_service(&e.service).is_some() {
                    return Err(fold_err(record, &format!("service `{}` is already running", e.service)));
                }
                self.services.push(ServiceRun {
                    service: e.service.clone(),
                    instance: e.instance,
                    pid: e.pid,
                    proc_start: e.proc_start,
                    restart: e.restart,
                    for_step: e.for_step.clone(),
                    started_at: ts.clone(),
                    healthy_at: None,
                    checks: None,
                    stopped_at: None,
                    reason: None,
                    exit_code: None,
                    signal: None,
                    message: None,
                    degraded: false,
                });
            }
            Event::ServiceHealthy(e) => {
                let run = self.service_run_mut(record, &e.service, e.instance)?;
                if run.healthy_at.is_some() {
                    return Err(fold_err(record, &format!("service `{}` is healthy already", e.service)));
                }
                run.healthy_at = Some(ts.clone());
                run.checks = Some(e.checks);
            }
            Event::ServiceExited(e) => {
                let run = self.service_run_mut(record, &e.service, e.instance)?;
                run.stopped_at = Some(ts.clone());
                run.reason = Some(e.reason);
                run.exit_code = e.exit_code;
                run.signal.clone_from(&e.signal);
                run.message = Some(e.message.clone());
                run.degraded = e.degraded;
            }
            Event::RunPaused(_) => {
                self.status = RunStatus::Waiting;
                self.finished_at = Some(ts.clone());
            }
            Event::RunInterrupted(e) => {
                self.status = RunStatus::Interrupted;
                self.finished_at = Some(ts.clone());
                self.signal = Some(e.signal.clone());
                self.cancelled_by.clone_from(&e.cancelled_by);
            }
            Event::RunFinished(e) => {
                self.status = match e.outcome {
                    RunOutcome::Succeeded => RunStatus::Succeeded,
                    RunOutcome::Failed => RunStatus::Failed,
                };
                self.finished_at = Some(ts.clone());
            }
        }
        match before {
            _ if record.event.is_service() => {}
            _ if matches!(&record.event, Event::RoutingDecided(e) if !e.reset.is_empty()) => self.recount(),
            _ if matches!(&record.event, Event::CallPushed(_)) => self.recount(),
            Some((i, old)) if old != self.steps[i].status => {
                self.index.counts[old as usize] -= 1;
                self.index.counts[self.steps[i].status as usize] += 1;
            }
            Some(_) => {}
            None => self.recount(),
        }
        self.seq = record.seq;
        self.last_ts.clone_from(ts);
        Ok(())
    }

    /// Opens a frame: the caller starts calling, and the callee's steps join the run (or,
    /// when this frame was pushed before, start a new visit).
    fn push_frame(&mut self, record: &Record, e: &CallPushed) -> Result<(), FoldError> {
        if e.frame as usize != self.frames.len() + 1 {
            return Err(fold_err(record, &format!("frame {}, expected {}", e.frame, self.frames.len() + 1)));
        }
        let ts = &record.ts;
        let step = self.step_mut(record, &e.step)?;
        match e.reason {
            CallReason::Call => {
                if !matches!(
                    step.status,
                    StepStatus::Pending | StepStatus::Interrupted | StepStatus::Retrying
                ) {
                    return Err(fold_err(
                        record,
                        &format!("step `{}` cannot call: it is {}", e.step, step.status.as_str()),
                    ));
                }
                begin_activation(record, step, e.visit)?;
                expect_next_attempt(record, step, e.attempt)?;
                step.attempts.push(Attempt::begin(e.visit, e.attempt, ts));
                step.session_attempts += 1;
                step.retry_in_ms = None;
            }
            CallReason::OnFailure if step.status != StepStatus::Failed => {
                return Err(fold_err(record, &format!("step `{}` has not failed", e.step)));
            }
            CallReason::OnFailure => {}
        }
        step.status = StepStatus::Calling;
        for id in &e.steps {
            match self.step_pos(id) {
                Some(i) => self.steps[i].restart().map_err(|why| fold_err(record, &why))?,
                None => {
                    self.index.positions.insert(id.clone(), self.steps.len());
                    self.steps.push(StepState::new(id.clone()));
                }
            }
        }
        self.frames.push(Frame { call: e.clone(), pushed_at: ts.clone(), returned_at: None });
        Ok(())
    }

    fn step_mut(&mut self, record: &Record, id: &str) -> Result<&mut StepState, FoldError> {
        match self.step_pos(id) {
            Some(i) => Ok(&mut self.steps[i]),
            None => Err(fold_err(record, &format!("unknown step `{id}`"))),
        }
    }

    /// Steps whose attempt was in flight when the journal ends.
    pub fn running_steps(&self) -> impl Iterator<Item = &StepState> {
        self.steps.iter().filter(|s| s.status == StepStatus::Running)
    }

    pub fn count(&self, status: StepStatus) -> usize {
        self.index.counts[status as usize]
    }
}

fn fail_reason(r: FailReason) -> &'static str {
    match r {
        FailReason::Exit => "exit",
        FailReason::Signal => "signal",
        FailReason::Timeout => "timeout",
        FailReason::Spawn => "spawn",
        FailReason::Outputs => "outputs",
        FailReason::Gate => "gate",
        FailReason::MissingOutput => "missing_output",
        FailReason::Inputs => "inputs",
        FailReason::Service => "service",
        FailReason::Cancelled => "cancelled",
    }
}

/// Adds attempt `a` of step `step` (a start, a reuse from the cache, or a command that
/// could not start): the step must not be running or done, and the attempt must be the
/// visit's next. It counts against the retry budget.
fn open_attempt(record: &Record, step: &mut StepState, a: Attempt) -> Result<(), FoldError> {
    if matches!(step.status, StepStatus::Running | StepStatus::Succeeded) {
        return Err(fold_err(record, &format!("step `{}` is already {}", step.id, step.status.as_str())));
    }
    begin_activation(record, step, a.visit)?;
    expect_next_attempt(record, step, a.attempt)?;
    // Most steps have one attempt: do not reserve room for four.
    step.attempts.reserve_exact(1);
    step.attempts.push(a);
    step.session_attempts += 1;
    step.retry_in_ms = None;
    Ok(())
}

/// Checks that a start or skip belongs to the step's visit, and opens a new one if due.
fn begin_activation(record: &Record, step: &mut StepState, visit: u32) -> Result<(), FoldError> {
    let expected = step.next_visit();
    if visit != expected {
        return Err(fold_err(record, &format!("step `{}` visit {visit}, expected {expected}", step.id)));
    }
    if step.new_visit {
        step.visit = visit;
        step.new_visit = false;
        step.session_attempts = 0;
        step.skip_reason = None;
    }
    Ok(())
}

fn fold_err(record: &Record, reason: &str) -> FoldError {
    FoldError { seq: record.seq, kind: record.event.kind(), reason: reason.to_string() }
}

fn expect_next_attempt(record: &Record, step: &StepState, attempt: u32) -> Result<(), FoldError> {
    let next = step.visit_attempts() + 1;
    if attempt != next {
        return Err(fold_err(record, &format!("step `{}` attempt {attempt}, expected {next}", step.id)));
    }
    Ok(())
}

fn running_attempt<'a>(
    record: &Record,
    step: &'a mut StepState,
    attempt: u32,
) -> Result<&'a mut Attempt, FoldError> {
    let id = step.id.clone();
    match step.attempts.last_mut() {
        Some(a) if a.attempt == attempt && a.status == AttemptStatus::Running => Ok(a),
        _ => Err(fold_err(record, &format!("step `{id}` attempt {attempt} is not running"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::*;

    fn session() -> Session {
        Session { pid: 1, host: "h".into(), boot_id: "b".into(), jobs: 1, runner_version: "t".into() }
    }

    fn records(events: Vec<Event>) -> Vec<Record> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Record::new(i as u64 + 1, format!("t{}", i + 1), event))
            .collect()
    }

    fn started(steps: &[&str]) -> Event {
        Event::RunStarted(RunStarted {
            run_id: "r".into(),
            flow: "f".into(),
            flow_path: "f.toml".into(),
            flow_hash: "h".into(),
            params: BTreeMap::new(),
            workdir: "/".into(),
            steps: steps.iter().map(|s| s.to_string()).collect(),
            journal_format: 1,
            session: session(),
            profile: None,
            trigger_file: None,
            executor: None,
        })
    }

    fn step_started(step: &str, attempt: u32) -> Event {
        Event::StepStarted(StepStarted {
            step: step.into(),
            visit: 1,
            attempt,
            pid: 10,
            proc_start: 5,
            cache: None,
        })
    }

    fn failed(step: &str, attempt: u32, retry: Option<u64>) -> Event {
        Event::StepFailed(StepFailed {
            step: step.into(),
            visit: 1,
            attempt,
            reason: FailReason::Exit,
            exit_code: Some(1),
            signal: None,
            message: "exit 1".into(),
            duration_ms: 3,
            retry_in_ms: retry,
            receipt: None,
        })
    }

    #[test]
    fn a_failed_step_retries_then_a_resume_resets_it() {
        let recs = records(vec![
            started(&["a", "b"]),
            step_started("a", 1),
            failed("a", 1, Some(1000)),
            step_started("a", 2),
            failed("a", 2, None),
            Event::RunFinished(RunFinished { outcome: RunOutcome::Failed, failed_steps: vec!["a".into()] }),
            Event::RunResumed(RunResumed { session: session() }),
        ]);
        let mut s = RunState::fold_all(&recs[..3]).expect("fold");
        assert_eq!(s.steps[0].status, StepStatus::Retrying);
        for r in &recs[3..6] {
            s.apply(r).expect("apply");
            assert_counts_match(&s);
        }
        assert_eq!((s.steps[0].status, s.steps[0].session_attempts), (StepStatus::Failed, 2));
        assert_eq!(s.status, RunStatus::Failed);
        s.apply(&recs[6]).expect("apply");
        assert_counts_match(&s);
        assert_eq!((s.steps[0].status, s.steps[0].session_attempts), (StepStatus::Pending, 0));
        assert_eq!((s.status, s.sessions, s.finished_at.clone()), (RunStatus::Running, 2, None));
        assert_eq!(s.steps[0].attempts.len(), 2);
    }

    fn assert_counts_match(s: &RunState) {
        use StepStatus::*;
        for status in [Pending, Running, Retrying, Succeeded, Failed, Interrupted] {
            let naive = s.steps.iter().filter(|st| st.status == status).count();
            assert_eq!(s.count(status), naive, "{status:?}");
        }
    }

    #[test]
    fn contradictions_are_fold_errors() {
        let recs = records(vec![started(&["a"]), step_started("a", 2)]);
        assert!(RunState::fold_all(&recs).is_err());
        let recs = records(vec![started(&["a"]), step_started("zz", 1)]);
        assert!(RunState::fold_all(&recs).expect_err("unknown").reason.contains("unknown step"));
        let recs = records(vec![started(&["a"]), step_started("a", 1), step_started("a", 2)]);
        assert!(RunState::fold_all(&recs).is_err());
        let recs = records(vec![step_started("a", 1)]);
        assert!(RunState::fold_all(&recs).is_err());
        let mut recs = records(vec![started(&["a"]), step_started("a", 1)]);
        recs[1].seq = 3;
        assert!(RunState::fold_all(&recs).is_err());
    }

    fn svc_started(instance: u32) -> Event {
        Event::ServiceStarted(ServiceStarted {
            service: "api".into(),
            instance,
            pid: 40 + instance as i32,
            proc_start: 7,
            restart: instance - 1,
            for_step: "a".into(),
        })
    }

    fn svc_exited(instance: u32, reason: ServiceEnd, degraded: bool) -> Event {
        Event::ServiceExited(ServiceExited {
            service: "api".into(),
            instance,
            reason,
            exit_code: Some(1),
            signal: None,
            message: "exited with code 1".into(),
            degraded,
        })
    }

    #[test]
    fn services_fold_into_one_record_per_start() {
        let healthy = Event::ServiceHealthy(ServiceHealthy {
            service: "api".into(),
            instance: 1,
            checks: 3,
            after_ms: 120,
        });
        let s = RunState::fold_all(&records(vec![
            started(&["a"]),
            svc_started(1),
            healthy.clone(),
            svc_exited(1, ServiceEnd::Died, true),
            svc_started(2),
        ]))
        .expect("fold");
        assert_eq!(s.services.len(), 2);
        assert_eq!((s.services[0].checks, s.services[0].reason), (Some(3), Some(ServiceEnd::Died)));
        assert_eq!(s.live_service("api").map(|r| r.instance), Some(2));
        assert_eq!(s.degraded(), ["api"]);
        assert_counts_match(&s);
        // A second start while one runs, a skipped instance, news of a stopped one: contradictions.
        for bad in [
            vec![started(&["a"]), svc_started(1), svc_started(2)],
            vec![started(&["a"]), svc_started(2)],
            vec![started(&["a"]), svc_started(1), svc_exited(1, ServiceEnd::Stopped, false), healthy.clone()],
            vec![started(&["a"]), svc_started(1), healthy.clone(), healthy.clone()],
        ] {
            assert!(RunState::fold_all(&records(bad)).is_err());
        }
    }

    #[test]
    fn spawn_failures_create_their_attempt() {
        let mut spawn = failed("a", 1, None);
        if let Event::StepFailed(f) = &mut spawn {
            f.reason = FailReason::Spawn;
        }
        let s = RunState::fold_all(&records(vec![started(&["a"]), spawn])).expect("fold");
        assert_eq!(s.steps[0].attempts[0].reason.as_deref(), Some("spawn"));
        assert_eq!(s.steps[0].status, StepStatus::Failed);
    }
}

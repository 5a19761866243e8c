//! Taking hold of a run: creating a new one, or resuming an existing one.
//!
//! Resume is where the runner decides what happened while nobody was watching: it cuts a
//! torn journal tail, checks that the run's copy of the flow is the one it started with,
//! stops whatever an attempt in flight left running, and records those attempts as
//! interrupted. What runs next is then the scheduler's usual decision.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Session, SessionError};
use crate::executor::{self, procfs};
use crate::flow::{Flow, FlowError};
use crate::journal::{
    self, Event, FlowChanged, InterruptReason, JOURNAL_FILE, JOURNAL_FORMAT, JournalError, JournalRepaired,
    JournalWriter, Record, RunOutcome, RunResumed, RunStarted, StepInterrupted,
};
use crate::projection::{LIVE_BUSY_TIMEOUT, Projection};
use crate::report::{Reporter, Verbosity};
use crate::secrets::Secrets;
use crate::state::{RunState, RunStatus, SNAPSHOT_FILE};
use crate::store::{
    FLOW_COPY, LoadError, RunLock, RunsDir, SnapshotUse, StoreError, create_run, load_run_from,
};

/// Settings for a session, from the command line.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub jobs: usize,
    pub verbosity: Verbosity,
    /// Continue with an edited copy of the flow (journaled as `FlowChanged`).
    pub accept_flow_change: bool,
    /// Gate profile for a new run (a resumed run keeps the one it started with).
    pub profile: Option<String>,
    /// `--trigger-file` for a new run (a resumed run keeps the one it started with).
    pub trigger_file: Option<String>,
    /// Run every step, even where a cached receipt matches.
    pub no_cache: bool,
    /// `--env-file`: where secret values come from besides the environment.
    pub env_file: Option<PathBuf>,
    /// Bars on a terminal, or plain lines.
    pub progress: crate::report::Progress,
    /// `--executor` for a new run (a resumed run keeps the one it started with).
    pub executor: Option<crate::flow::ExecutorKind>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "run `{run_id}`: {} no longer matches the flow the run started with; the runner will \
         not resume a run whose plan changed. Restore the file, or accept the change with \
         `runner resume --run-id {run_id} --accept-flow-change` (it is recorded in the journal)",
        path.display()
    )]
    FlowEdited { run_id: String, path: PathBuf },
    #[error(
        "run `{run_id}`: the steps in {} are not the steps the run started with (same ids, same \
         order); a run can take changed commands, environment, timeouts or retries, not \
         changed steps. Restore the file or start a new run",
        path.display()
    )]
    StepsChanged { run_id: String, path: PathBuf },
    #[error("run `{run_id}`: its copy of the flow is invalid: {source}")]
    FlowInvalid {
        run_id: String,
        #[source]
        source: FlowError,
    },
    #[error("run `{run_id}`: {why}")]
    Frames { run_id: String, why: String },
    #[error(
        "run `{run_id}`: it was started with profile `{profile}`, which {} no longer has; \
         restore the profile in it (a run's profile cannot change)",
        path.display()
    )]
    ProfileGone { run_id: String, path: PathBuf, profile: String },
    /// `approve`/`reject` cannot apply (no such step, not waiting, not an approver…).
    #[error("run `{run_id}`: {why}")]
    Approval { run_id: String, why: String },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("run `{run_id}`: {source}")]
    Secrets {
        run_id: String,
        #[source]
        source: crate::secrets::SecretsError,
    },
}

/// What the current process is: who drives the run from now on.
fn session_info(jobs: usize) -> journal::Session {
    journal::Session {
        pid: std::process::id(),
        host: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        boot_id: procfs::boot_id(),
        jobs,
        runner_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Creates and locks a new run. If a run with this id already exists, the flow comes
/// back (`Err`), so the caller can try another id without keeping a second copy of it.
#[allow(clippy::too_many_arguments)]
pub fn start_new(
    runs: &RunsDir,
    flow: Flow,
    flow_bytes: &[u8],
    flow_path: &Path,
    params: BTreeMap<String, String>,
    run_id: String,
    workdir: &Path,
    opts: &SessionOptions,
) -> Result<Result<Session, Flow>, OpenError> {
    let started = RunStarted {
        executor: opts.executor,
        run_id,
        flow: flow.name.clone(),
        flow_path: flow_path.to_string_lossy().into_owned(),
        flow_hash: flow.hash.clone(),
        params,
        workdir: workdir.to_string_lossy().into_owned(),
        steps: flow.steps.iter().map(|s| s.id.clone()).collect(),
        journal_format: JOURNAL_FORMAT,
        session: session_info(opts.jobs),
        profile: opts.profile.clone(),
        trigger_file: opts.trigger_file.clone(),
    };
    let Some(created) = create_run(runs, flow_bytes, started)? else { return Ok(Err(flow)) };
    let state = RunState::from_first(&created.first)
        .map_err(|e| SessionError::Internal(format!("first event does not fold: {e}")))?;
    let report = Reporter::new(opts.verbosity, &created.dir);
    // `run` checked them before anything was created; a change since is still an error.
    let names = Secrets::names_in(&flow, workdir);
    let secrets = Secrets::load(opts.env_file.as_deref(), &names)
        .map_err(|source| OpenError::Secrets { run_id: state.run_id.clone(), source })?;
    let mut session =
        Session::new(flow, created.dir, created.lock, created.journal, state, runs, report, opts)?;
    session.use_secrets(secrets);
    session.project(std::slice::from_ref(&created.first));
    Ok(Ok(session))
}

/// A run taken over by this process.
pub enum Resumed {
    /// The run had already succeeded; nothing was done.
    Done,
    /// Ready to drive, with the interrupted attempts already recorded.
    Ready(Box<Session>),
}

/// Locks an existing run and prepares it to continue.
pub fn open_existing(runs: &RunsDir, run_id: &str, opts: &SessionOptions) -> Result<Resumed, OpenError> {
    match open_locked(runs, run_id, opts, true)? {
        Opened::Done => Ok(Resumed::Done),
        Opened::Ready(mut session, change) => {
            session.take_over(opts.jobs, change)?;
            Ok(Resumed::Ready(session))
        }
    }
}

/// A run locked by this process, not yet taken over.
pub(super) enum Opened {
    Done,
    Ready(Box<Session>, Option<FlowChanged>),
}

/// Locks a run, repairs a torn tail and loads its state and flow, without resuming it:
/// `approve` and `reject` record their decision on a run opened this way. With
/// `to_drive`, the run's secrets are resolved too (their values are never stored, so
/// every runner that drives a run needs them again), before anything is repaired.
pub(super) fn open_locked(
    runs: &RunsDir,
    run_id: &str,
    opts: &SessionOptions,
    to_drive: bool,
) -> Result<Opened, OpenError> {
    let dir = runs.existing(run_id)?;
    let lock = RunLock::acquire(&dir, run_id)?;
    crate::fsutil::remove_stale_temps(&dir.join(SNAPSHOT_FILE));
    let report = Reporter::new(opts.verbosity, &dir);
    let journal_path = dir.join(JOURNAL_FILE);
    let done = || Ok(Opened::Done);

    // A run that already succeeded says so in its last event: no fold, no flow needed.
    let (scan, last, bytes) = journal::last_record(&journal_path)?;
    let succeeded =
        |r: &Record| matches!(&r.event, Event::RunFinished(f) if f.outcome == RunOutcome::Succeeded);
    if scan.torn.is_none() && last.as_ref().is_some_and(succeeded) {
        finished(runs, run_id, &dir, &report);
        return done();
    }

    let loaded = load_run_from(&dir, true, u64::MAX, Some(bytes))?;
    if let SnapshotUse::Ignored(why) = &loaded.snapshot {
        report.warn(&format!("{why}; folding the journal from the start instead"));
    }
    // A run that still has work needs its flow: refused (changing nothing) before anything
    // is repaired. A run that succeeded needs none.
    let succeeded_run = loaded.state.status == RunStatus::Succeeded;
    let plan =
        if succeeded_run { None } else { Some(run_flow(&dir, &loaded.state, opts.accept_flow_change)?) };
    let secrets = match &plan {
        Some((flow, _)) if to_drive => {
            let names = Secrets::names_in(flow, Path::new(&loaded.state.workdir));
            let secrets = Secrets::load(opts.env_file.as_deref(), &names)
                .map_err(|source| OpenError::Secrets { run_id: run_id.to_string(), source })?;
            Some(secrets)
        }
        _ => None,
    };
    let repaired = match &loaded.torn {
        Some(torn) => {
            let kept_in = journal::repair_torn_tail(&journal_path, torn)?;
            Some(JournalRepaired { dropped_bytes: torn.len, kept_in, reason: torn.reason.clone() })
        }
        None => None,
    };
    let mut journal =
        JournalWriter::reopen(&journal_path, loaded.last_seq, &loaded.last_sum, loaded.valid_len)?;
    let Some((flow, flow_change)) = plan else {
        // Succeeded, with a torn tail after it: record the repair.
        if let Some(r) = repaired {
            journal.stage(Event::JournalRepaired(r));
            for record in journal.commit()? {
                report.event(&record, &loaded.state);
            }
        }
        finished(runs, run_id, &dir, &report);
        return done();
    };
    let mut session = Session::new(flow, dir, lock, journal, loaded.state, runs, report, opts)?;
    if let Some(secrets) = secrets {
        session.use_secrets(secrets);
    }
    if let Some(r) = repaired {
        session.record(Event::JournalRepaired(r))?;
    }
    Ok(Opened::Ready(Box::new(session), flow_change))
}

impl Session {
    /// Makes this process the run's driver: journals the resume (and an accepted flow
    /// change) and records the attempts the previous runner left in flight.
    pub(super) fn take_over(&mut self, jobs: usize, change: Option<FlowChanged>) -> Result<(), SessionError> {
        // A cancel request for a runner that is gone means nothing now.
        crate::store::cancel::clear(&self.dir);
        self.record(Event::RunResumed(RunResumed { session: session_info(jobs) }))?;
        if let Some(change) = change {
            self.report.warn(&format!(
                "continuing with the edited flow {} (recorded in the journal)",
                self.dir.join(FLOW_COPY).display()
            ));
            self.record(Event::FlowChanged(change))?;
        }
        self.interrupt_leftovers()
    }
}

/// The last acts of resuming a run that had already succeeded: stop what its dead runner
/// left behind, and bring its rows up to date if they are behind.
fn finished(runs: &RunsDir, run_id: &str, dir: &Path, report: &Reporter) {
    stop_strays(dir, report);
    if let Ok(mut p) = Projection::open_with(runs, LIVE_BUSY_TIMEOUT) {
        let _ = p.sync_run_if_behind(run_id);
    }
}

/// Stops processes a finished run left behind (its runner died before it could).
fn stop_strays(dir: &Path, report: &Reporter) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match executor::stop_leftovers(&dir.to_string_lossy(), &[], crate::flow::DEFAULT_GRACE) {
        Ok(steps) if !steps.is_empty() => {
            let names: Vec<&str> = steps.iter().map(String::as_str).collect();
            report.warn(&format!("stopped processes that steps {} had left behind", names.join(", ")));
        }
        Ok(_) => {}
        Err(pids) => report.warn(&format!("processes of this run survived SIGKILL: {pids:?}")),
    }
}

/// The run's own copy of its flow, refused if it is not the file the run started with.
fn run_flow(
    dir: &Path,
    state: &RunState,
    accept_change: bool,
) -> Result<(Flow, Option<FlowChanged>), OpenError> {
    let path = dir.join(FLOW_COPY);
    let run_id = state.run_id.clone();
    let bytes = std::fs::read(&path)
        .map_err(|_| OpenError::FlowEdited { run_id: run_id.clone(), path: path.clone() })?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let changed = hash != state.flow_hash;
    if changed && !accept_change {
        return Err(OpenError::FlowEdited { run_id, path });
    }
    let flow = Flow::from_bytes(&path, &bytes)
        .map_err(|source| OpenError::FlowInvalid { run_id: run_id.clone(), source })?;
    // The run's own steps come first; called flows' steps follow, from their copies.
    let framed: std::collections::HashSet<&str> =
        state.frames.iter().flat_map(|f| f.call.steps.iter().map(String::as_str)).collect();
    let main = state.steps.iter().take_while(|s| !framed.contains(s.id.as_str())).count();
    let same_steps =
        flow.steps.len() == main && flow.steps.iter().zip(&state.steps).all(|(f, s)| f.id == s.id);
    if !same_steps {
        return Err(OpenError::StepsChanged { run_id, path });
    }
    if let Some(profile) = state.profile.as_ref().filter(|p| !flow.profiles.contains_key(*p)) {
        return Err(OpenError::ProfileGone { run_id, path, profile: profile.clone() });
    }
    let flow = super::calls::plan_with_frames(flow, state, dir)
        .map_err(|why| OpenError::Frames { run_id: run_id.clone(), why })?;
    let change = changed.then(|| FlowChanged { previous_hash: state.flow_hash.clone(), flow_hash: hash });
    Ok((flow, change))
}

impl Session {
    /// Records every attempt that was in flight when the last runner died, after stopping
    /// whatever of it still runs, so two attempts of a step never overlap.
    fn interrupt_leftovers(&mut self) -> Result<(), SessionError> {
        let boot = procfs::boot_id();
        // A cluster job goes on without its runner: it is watched again, not interrupted.
        let jobs: Vec<super::jobs::Orphan> = self
            .state
            .running_steps()
            .filter_map(|s| {
                let a = s.last_attempt()?;
                let job = a.job.as_ref()?;
                let idx = self.state.step_pos(&s.id)?;
                Some(super::jobs::Orphan {
                    step: idx,
                    visit: a.visit,
                    attempt: a.attempt,
                    job_id: job.job_id.clone(),
                    node_known: job.node.is_some(),
                })
            })
            .collect();
        let in_flight: Vec<StepInterrupted> = self
            .state
            .running_steps()
            .filter_map(|s| {
                let a = s.last_attempt()?;
                if a.job.is_some() {
                    return None;
                }
                Some(StepInterrupted {
                    step: s.id.clone(),
                    visit: a.visit,
                    attempt: a.attempt,
                    reason: InterruptReason::RunnerDied,
                    leftover_stopped: None,
                    duration_ms: None,
                })
            })
            .collect();
        // A pid recorded under another boot cannot be alive now.
        let groups: Vec<(String, i32, u64)> = self
            .state
            .running_steps()
            .filter_map(|s| {
                let a = s.last_attempt()?;
                let same_boot = a.boot_id.as_deref() == Some(boot.as_str());
                a.pid.zip(a.proc_start).filter(|_| same_boot).map(|(pid, start)| (s.id.clone(), pid, start))
            })
            .collect();
        // Services the dead runner left running are stopped like steps (a name no step has).
        let lost: Vec<(String, u32)> = self
            .state
            .services
            .iter()
            .filter(|s| s.stopped_at.is_none())
            .map(|s| (s.service.clone(), s.instance))
            .collect();
        let mut groups = groups;
        groups.extend(
            self.state
                .services
                .iter()
                .filter(|s| s.stopped_at.is_none())
                .map(|s| (format!("service {}", s.service), s.pid, s.proc_start)),
        );
        let grace =
            self.flow.steps.iter().map(|s| s.grace).chain(self.flow.services.values().map(|s| s.grace));
        let grace = grace.max().unwrap_or_default();
        let run_dir = self.dir.to_string_lossy().into_owned();
        let stopped = executor::stop_leftovers(&run_dir, &groups, grace)
            .map_err(|pids| SessionError::LeftoversSurvived { pids })?;
        for (service, instance) in lost {
            let was_alive = stopped.contains(&format!("service {service}"));
            let message = if was_alive {
                "its runner died; the process it left running was stopped".to_string()
            } else {
                "its runner died".to_string()
            };
            if was_alive {
                self.report.warn(&format!(
                    "service `{service}` was still running from the previous runner; stopped it"
                ));
            }
            self.record(Event::ServiceExited(journal::ServiceExited {
                service,
                instance,
                reason: journal::ServiceEnd::Lost,
                exit_code: None,
                signal: None,
                message,
                degraded: false,
            }))?;
        }
        for mut event in in_flight {
            // A receipt written just before the runner died was never acknowledged: the
            // journal says the attempt was interrupted, so the receipt must not say more.
            let dir = crate::store::attempt_dir(&self.dir, &event.step, event.visit, event.attempt);
            let receipt = dir.join(crate::receipt::RECEIPT_FILE);
            if receipt.exists() {
                let _ = std::fs::rename(&receipt, dir.join(crate::receipt::UNACKNOWLEDGED_FILE));
            }
            let was_alive = stopped.contains(&event.step);
            // Its processes are stopped now: what it wrote can be masked for good.
            if let Some(i) = self.state.step_pos(&event.step) {
                self.mask_attempt_files(i, event.visit, event.attempt);
            }
            if was_alive {
                self.report.warn(&format!(
                    "step `{}` attempt {} was still running from the previous runner; stopped it",
                    event.step, event.attempt
                ));
            }
            event.leftover_stopped = Some(was_alive);
            self.record(Event::StepInterrupted(event))?;
        }
        let others: Vec<&String> = stopped
            .iter()
            .filter(|s| !s.starts_with("service "))
            .filter(|s| {
                self.state.step(s).is_some_and(|st| st.status != crate::state::StepStatus::Interrupted)
            })
            .collect();
        if !others.is_empty() {
            let names: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
            self.report.warn(&format!("stopped processes that steps {} had left behind", names.join(", ")));
        }
        self.reattach_jobs(jobs)
    }
}

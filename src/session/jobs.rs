//! Attempts that run as cluster jobs (`executor = "slurm"`): submission behind the
//! write-ahead hold, results from the exit-code files, stops through `scancel`, and
//! re-attaching to the jobs a dead runner left queued or running.
//!
//! A job's life in the journal: `StepSubmitted` (durable before the job is released),
//! `JobRunning` once it is seen on a node, then the same result events as a local
//! attempt. A job that outlives its runner is not interrupted on resume: it is watched
//! again, and its result is read when it ends.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::attempts::{ClusterEnd, Prepared, Running, checked_after};
use super::{Msg, Session, SessionError};
use crate::executor::Exit;
use crate::executor::slurm::{self, Cancel, Poller, Slurm, Submit, Update};
use crate::flow::ExecutorKind;
use crate::journal::{Event, FailReason, JobRunning, StepSubmitted};
use crate::store::attempt_dir;

/// An attempt submitted as a job, until its result is recorded.
pub(super) struct Remote {
    pub step: usize,
    pub visit: u32,
    pub attempt: u32,
    /// When it was first seen running (its `timeout` counts from then, not from the queue).
    pub running_since: Option<Instant>,
    pub deadline: Option<Instant>,
    /// When a stop in progress becomes a hard `scancel`.
    pub kill_at: Option<Instant>,
    pub timed_out: bool,
    pub interrupted: bool,
    /// A graceful stop's SIGTERM went out (to a job seen running).
    pub termed: bool,
    pub node_recorded: bool,
    pub definition: Option<Box<(crate::receipt::Definition, String)>>,
}

impl Remote {
    fn new(
        step: usize,
        visit: u32,
        attempt: u32,
        definition: Option<Box<(crate::receipt::Definition, String)>>,
    ) -> Remote {
        Remote {
            step,
            visit,
            attempt,
            running_since: None,
            deadline: None,
            kill_at: None,
            timed_out: false,
            interrupted: false,
            termed: false,
            node_recorded: false,
            definition,
        }
    }
}

/// A job the journal says a dead runner left in flight.
pub(super) struct Orphan {
    pub step: usize,
    pub visit: u32,
    pub attempt: u32,
    pub job_id: String,
    /// Its `JobRunning` is already journaled.
    pub node_known: bool,
}

/// The Slurm CLI and the thread that watches this session's jobs, started at first use.
pub(super) struct Cluster {
    cli: Slurm,
    poller: Poller,
}

/// Jobs of this session: in flight, and submitted but not yet durable.
#[derive(Default)]
pub(super) struct Jobs {
    pub remote: HashMap<String, Remote>,
    /// Submitted (held) jobs whose `StepSubmitted` is staged: released after the commit.
    pub to_watch: Vec<(String, PathBuf)>,
    pub cluster: Option<Cluster>,
    /// The last query failure shown, so a controller that is down is said once, not per poll.
    pub last_failure: Option<String>,
    /// A submission failed: `sbatch` may have left a held job behind (a timeout), which the
    /// end of the session cancels.
    pub submit_failed: bool,
    /// `runner-<hash>-`: the name every job of this run starts with.
    pub prefix: String,
}

impl Jobs {
    pub fn len(&self) -> usize {
        self.remote.len()
    }

    pub fn is_empty(&self) -> bool {
        self.remote.is_empty()
    }
}

impl Session {
    /// Where step `idx` runs: its own `executor`, else the run's `--executor`, else
    /// `[defaults] executor`, else here.
    pub(super) fn executor_of(&self, idx: usize) -> ExecutorKind {
        self.flow.steps[idx].executor_with(self.state.executor)
    }

    fn cluster(&mut self) -> &Cluster {
        if self.remote.cluster.is_none() {
            let cli = Slurm::new(self.reaper.waiters());
            let tx = self.tx.clone();
            let poller = Poller::start(cli.clone(), self.flow.slurm.poll, move |updates| {
                let _ = tx.send(Msg::Jobs(updates));
            });
            self.remote.cluster = Some(Cluster { cli, poller });
        }
        self.remote.cluster.as_ref().unwrap_or_else(|| unreachable!("set just above"))
    }

    /// Submits step `idx`'s attempt as a held job and stages `StepSubmitted`; the job is
    /// released once that is durable.
    pub(super) fn submit(
        &mut self,
        idx: usize,
        visit: u32,
        attempt: u32,
        prepared: Prepared,
    ) -> Result<(), SessionError> {
        let (definition, key, cache) = prepared;
        let step_id = self.flow.steps[idx].id.clone();
        if !self.flow.steps[idx].services.is_empty() {
            let message = "cannot submit to Slurm: the step uses services, which run on this machine; \
                           give it `executor = \"local\"`"
                .to_string();
            return self.record_unstartable(idx, visit, attempt, FailReason::Spawn, message);
        }
        match self.submit_job(idx, visit, attempt) {
            Ok((job_id, job_name, dir)) => {
                crate::faults::reached("after-submit");
                self.record(Event::StepSubmitted(StepSubmitted {
                    step: step_id,
                    visit,
                    attempt,
                    executor: ExecutorKind::Slurm,
                    job_id: job_id.clone(),
                    job_name,
                    cache,
                }))?;
                self.remote.to_watch.push((job_id.clone(), dir));
                let remote = Remote::new(idx, visit, attempt, Some(Box::new((definition, key))));
                self.remote.remote.insert(job_id, remote);
                Ok(())
            }
            Err(message) => self.record_unstartable(idx, visit, attempt, FailReason::Spawn, message),
        }
    }

    /// Writes the job script and submits it held: `(job id, job name, attempt dir)`.
    fn submit_job(
        &mut self,
        idx: usize,
        visit: u32,
        attempt: u32,
    ) -> Result<(String, String, PathBuf), String> {
        let workdir = PathBuf::from(&self.state.workdir);
        let step_id = self.flow.steps[idx].id.clone();
        let dir = attempt_dir(&self.dir, &step_id, visit, attempt);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let what =
            format!("step `{step_id}`, visit {visit}, attempt {attempt} of run `{}`", self.state.run_id);
        slurm::write_job_script(&dir, &workdir, &self.flow.steps[idx].run, &what)
            .map_err(|e| format!("cannot write the job script in {}: {e}", dir.display()))?;
        let mut env = self.step_env(idx, visit, attempt, &dir);
        env.push(("RUNNER_EXECUTOR".into(), "slurm".into()));
        let granted = self.secrets_for(idx)?;
        let remove_env: Vec<String> =
            self.secrets.names().filter(|n| !granted.iter().any(|(g, _)| g == *n)).cloned().collect();
        env.extend(granted);
        let options = self.flow.steps[idx].slurm.as_deref().map(|o| o.sbatch_args()).unwrap_or_default();
        if self.remote.prefix.is_empty() {
            self.remote.prefix = slurm::job_name_prefix(&self.state.run_id, &self.state.started_at);
        }
        let name = slurm::job_name(&self.remote.prefix, &step_id, visit, attempt);
        let script = dir.join(slurm::JOB_SCRIPT);
        let log = dir.join(slurm::SLURM_LOG);
        let job = Submit {
            script: &script,
            name: &name,
            log: &log,
            dir: &dir,
            options: &options,
            env: &env,
            remove_env: &remove_env,
        };
        let id = self.cluster().cli.submit(&job).map_err(|e| {
            self.remote.submit_failed = true;
            format!("cannot submit to Slurm: {e}")
        })?;
        Ok((id, name, dir))
    }

    /// After a commit: the submitted jobs are durable, so they may run.
    pub(super) fn release_submitted(&mut self) {
        if self.remote.to_watch.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.remote.to_watch);
        let stopping: Vec<bool> = jobs
            .iter()
            .map(|(id, _)| self.remote.remote.get(id).is_some_and(|r| r.interrupted || r.timed_out))
            .collect();
        let cluster = self.cluster();
        for ((id, dir), stopping) in jobs.into_iter().zip(stopping) {
            cluster.poller.add(id, dir, stopping);
        }
    }

    /// What the poller learned.
    pub(super) fn on_jobs(&mut self, updates: Vec<Update>) -> Result<(), SessionError> {
        for update in updates {
            match update {
                Update::Running { job, node, started_ms } => {
                    let now = Instant::now();
                    let Some(r) = self.remote.remote.get_mut(&job) else { continue };
                    // A re-attached job has run since its start file says, not since now.
                    let since = started_ms
                        .and_then(|ms| {
                            let wall =
                                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
                            now.checked_sub(wall.saturating_sub(Duration::from_millis(ms)))
                        })
                        .unwrap_or(now);
                    let since = *r.running_since.get_or_insert(since);
                    if r.deadline.is_none() {
                        r.deadline = self.flow.steps[r.step].timeout.map(|t| checked_after(since, t));
                    }
                    // Being stopped, and seen running only now: it gets its SIGTERM now.
                    let term = (r.interrupted || r.timed_out) && r.kill_at.is_some() && !r.termed;
                    if term {
                        r.termed = true;
                        self.cancel_jobs(std::slice::from_ref(&job), Cancel::Term);
                    }
                    self.record_node(&job, &node)?;
                }
                Update::Finished { job, code, node, started_ms, ended_ms } => {
                    if let Some(node) = &node {
                        self.record_node(&job, node)?;
                    }
                    let Some(r) = self.remote.remote.remove(&job) else { continue };
                    let took =
                        started_ms.zip(ended_ms).map(|(s, e)| Duration::from_millis(e.saturating_sub(s)));
                    self.record_job_result(r, Exit::Code(code), took, None)?;
                }
                Update::Ended { job, state, node, code } => {
                    if let Some(node) = &node {
                        self.record_node(&job, node)?;
                    }
                    let Some(r) = self.remote.remote.remove(&job) else { continue };
                    let (exit, end) = match (&state, code) {
                        (None, _) => (
                            Exit::Signal(nix::sys::signal::Signal::SIGKILL),
                            Some(ClusterEnd::Lost(format!(
                                "Slurm job {job} vanished without leaving its exit code; it may have run, its result is lost"
                            ))),
                        ),
                        (Some(s), _) if slurm::cancelled_why(s).is_some() => (
                            Exit::Signal(nix::sys::signal::Signal::SIGKILL),
                            Some(ClusterEnd::Cancelled(format!(
                                "{} (Slurm job {job}, state {s})",
                                slurm::cancelled_why(s).unwrap_or_default()
                            ))),
                        ),
                        (Some(s), Some(c)) => {
                            // (Expected when the runner itself stopped it.)
                            if !(r.timed_out || r.interrupted) {
                                self.report.warn(&format!(
                                "Slurm job {job} ended ({s}) without writing its exit-code file; took exit code {c} from scontrol"
                            ));
                            }
                            (Exit::Code(c), None)
                        }
                        (Some(s), None) => (
                            Exit::Signal(nix::sys::signal::Signal::SIGKILL),
                            Some(ClusterEnd::Lost(format!(
                                "Slurm job {job} ended ({s}) without leaving its exit code"
                            ))),
                        ),
                    };
                    self.record_job_result(r, exit, None, end)?;
                }
                Update::Failed(e) => {
                    if self.remote.last_failure.as_deref() != Some(e.as_str()) {
                        self.report.warn(&format!("asking Slurm about the run's jobs: {e}; trying again"));
                        self.remote.last_failure = Some(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Journals where a job runs, once.
    fn record_node(&mut self, job: &str, node: &str) -> Result<(), SessionError> {
        let Some(r) = self.remote.remote.get_mut(job) else { return Ok(()) };
        if r.node_recorded || node.is_empty() {
            return Ok(());
        }
        r.node_recorded = true;
        let event = JobRunning {
            step: self.flow.steps[r.step].id.clone(),
            visit: r.visit,
            attempt: r.attempt,
            node: node.to_string(),
        };
        self.record(Event::JobRunning(event))
    }

    /// Records a job's result through the same path as a local attempt's.
    fn record_job_result(
        &mut self,
        r: Remote,
        exit: Exit,
        took: Option<Duration>,
        cluster: Option<ClusterEnd>,
    ) -> Result<(), SessionError> {
        let now = Instant::now();
        let took =
            took.or_else(|| r.running_since.map(|s| now.saturating_duration_since(s))).unwrap_or_default();
        // The job wrote its logs itself: secrets are masked in them now.
        if let Some(red) = &self.redactor {
            let dir = attempt_dir(&self.dir, &self.flow.steps[r.step].id, r.visit, r.attempt);
            for name in ["stdout.log", "stderr.log", slurm::SLURM_LOG] {
                let _ = red.mask_file(&dir.join(name));
            }
        }
        let mut running = Running::new(r.step, r.visit, r.attempt);
        running.started = Some(now.checked_sub(took).unwrap_or(now));
        running.leader_exit = Some((exit, now));
        running.timed_out = r.timed_out;
        running.interrupted = r.interrupted;
        running.definition = r.definition;
        running.cluster = cluster;
        self.record_result(running)
    }

    /// A signal to the runner: every job gets SIGTERM (a queued one is just cancelled),
    /// and a hard cancel after its step's `grace`; a second signal cancels at once.
    pub(super) fn stop_jobs(&mut self, hard: bool) {
        let now = Instant::now();
        let (mut term, mut queued, mut cancel) = (Vec::new(), Vec::new(), Vec::new());
        for (id, r) in &mut self.remote.remote {
            r.interrupted = true;
            if hard {
                r.kill_at = None;
                cancel.push(id.clone());
            } else if r.kill_at.is_none() {
                r.kill_at = Some(checked_after(now, self.flow.steps[r.step].grace));
                // Not seen running: cancelled if still queued; if it started meanwhile, it
                // gets its SIGTERM when the poller sees it running.
                if r.running_since.is_some() {
                    r.termed = true;
                    term.push(id.clone());
                } else {
                    queued.push(id.clone());
                }
            }
        }
        self.cancel_jobs(&term, Cancel::Term);
        self.cancel_jobs(&queued, Cancel::Pending);
        self.cancel_jobs(&cancel, Cancel::Now);
    }

    fn cancel_jobs(&mut self, ids: &[String], how: Cancel) {
        if ids.is_empty() {
            return;
        }
        let cluster = self.cluster();
        for id in ids {
            cluster.poller.stopping(id);
        }
        if let Err(e) = cluster.cli.cancel(ids, how) {
            self.report.warn(&format!("cannot cancel Slurm job(s) {}: {e}", ids.join(", ")));
        }
    }

    /// Timeouts and the hard cancels of stops in progress.
    pub(super) fn check_job_timers(&mut self) {
        let now = Instant::now();
        let mut graceful = Vec::new();
        let mut cancel = Vec::new();
        for (id, r) in &mut self.remote.remote {
            if r.deadline.is_some_and(|d| now >= d) && !r.timed_out && !r.interrupted {
                r.timed_out = true;
                r.termed = true;
                r.kill_at = Some(checked_after(now, self.flow.steps[r.step].grace));
                graceful.push(id.clone());
            }
            if r.kill_at.is_some_and(|k| now >= k) {
                r.kill_at = None;
                cancel.push(id.clone());
            }
        }
        self.cancel_jobs(&graceful, Cancel::Term);
        self.cancel_jobs(&cancel, Cancel::Now);
    }

    pub(super) fn next_job_wake(&self) -> Option<Instant> {
        self.remote
            .remote
            .values()
            .flat_map(|r| [r.deadline.filter(|_| !r.timed_out && !r.interrupted), r.kill_at])
            .flatten()
            .min()
    }

    /// On resume: cancels held jobs a dead runner submitted but never journaled (they
    /// never ran), and watches again the jobs it journaled, instead of submitting them
    /// again.
    pub(super) fn reattach_jobs(&mut self, jobs: Vec<Orphan>) -> Result<(), SessionError> {
        let uses_slurm = (0..self.flow.steps.len())
            .any(|i| self.flow.steps[i].call.is_none() && self.executor_of(i) == ExecutorKind::Slurm);
        if jobs.is_empty() && !uses_slurm {
            return Ok(());
        }
        self.remote.prefix = slurm::job_name_prefix(&self.state.run_id, &self.state.started_at);
        if !slurm::available() {
            self.report.warn("this run has Slurm jobs, but `sbatch` is not on PATH here; their results will be read once it is");
        }
        let known: std::collections::HashSet<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        self.cancel_unrecorded(&known.iter().map(|s| s.to_string()).collect(), "the previous runner");
        for Orphan { step: idx, visit, attempt, job_id, node_known } in jobs {
            let step_id = self.flow.steps[idx].id.clone();
            self.report
                .info(&format!("step `{step_id}` attempt {attempt}: re-attached to Slurm job {job_id}"));
            // The definition it started with was the last runner's; the flow and its inputs
            // are the same unless someone changed them meanwhile.
            let definition = self.definition(idx).ok().map(|d| {
                let key = d.key();
                Box::new((d, key))
            });
            let dir = attempt_dir(&self.dir, &step_id, visit, attempt);
            let mut remote = Remote::new(idx, visit, attempt, definition);
            remote.node_recorded = node_known;
            self.remote.remote.insert(job_id.clone(), remote);
            // Released in case the runner died between journaling it and releasing it.
            self.remote.to_watch.push((job_id, dir));
        }
        Ok(())
    }

    /// Cancels this run's held jobs that are not in `known`: submitted by `who`, never
    /// journaled, never released, so they never ran.
    fn cancel_unrecorded(&mut self, known: &std::collections::HashSet<String>, who: &str) {
        let prefix = self.remote.prefix.clone();
        let strays: Vec<String> = match self.cluster().cli.named(&prefix) {
            Ok(found) => found
                .into_iter()
                .filter(|(id, info)| !known.contains(id) && info.held_by_user())
                .map(|(id, _)| id)
                .collect(),
            Err(e) => {
                self.report.warn(&format!(
                    "cannot list the run's Slurm jobs ({e}); a job {who} submitted but never recorded may be left held"
                ));
                Vec::new()
            }
        };
        if strays.is_empty() {
            return;
        }
        self.report.warn(&format!(
            "cancelled held Slurm job(s) {} that {who} submitted but never recorded (they did not run)",
            strays.join(", ")
        ));
        if let Err(e) = self.cluster().cli.cancel(&strays, Cancel::Now) {
            self.report.warn(&format!("cannot cancel Slurm job(s) {}: {e}", strays.join(", ")));
        }
    }

    /// At the end of a session in which a submission failed: `sbatch` may have queued a
    /// held job before it failed or timed out; it is cancelled rather than left queued.
    pub(super) fn sweep_unrecorded(&mut self) {
        if !self.remote.submit_failed {
            return;
        }
        self.remote.submit_failed = false;
        let known = self
            .state
            .steps
            .iter()
            .flat_map(|s| &s.attempts)
            .filter_map(|a| a.job.as_ref().map(|j| j.job_id.clone()))
            .collect();
        self.cancel_unrecorded(&known, "this runner");
    }
}

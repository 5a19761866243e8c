//! Services: background processes that steps use, supervised by the session.
//!
//! A service starts when the first step that uses it is about to start; that step is
//! held, with no event of its own, until every service it uses is healthy. A service
//! stops (its process group: SIGTERM, then SIGKILL after its `grace`) when no step still
//! to run needs it, and when the run ends or is stopped. One that dies while it is needed
//! is journaled, fails the steps using it (unless `degraded = "continue"`), and is
//! restarted up to its limit with `restart = "on-failure"`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::attempts::{Prepared, RELAY_WAIT, checked_after};
use super::{Msg, Session, SessionError};
use crate::executor::{self, Exit, Gated, LineSink, Output, Program, SpawnSpec};
use crate::flow::{Service, param_env_name};
use crate::health::{self, ProbeSpec, Prober};
use crate::journal::{Event, FailReason, ServiceEnd, ServiceExited, ServiceHealthy, ServiceStarted};
use crate::report::human;
use crate::scheduler::Action;
use crate::state::StepStatus;

/// Where service logs live in a run directory: `services/<name>.log`.
pub const SERVICES_DIR: &str = "services";
/// After SIGKILL, how long to wait for a service's group before recording it anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);

type Env = Vec<(String, String)>;

/// One started instance of a service.
pub(super) struct Supervised {
    def: Arc<Service>,
    instance: u32,
    pid: i32,
    for_step: String,
    started: Instant,
    deadline: Instant,
    healthy: bool,
    checks: u32,
    /// What the last failed health check saw.
    last: Option<String>,
    prober: Option<Prober>,
    /// Why the runner is stopping it, once it is.
    stopping: Option<(ServiceEnd, String)>,
    kill_at: Option<Instant>,
    killed_at: Option<Instant>,
    relays: Vec<JoinHandle<()>>,
    /// Its environment, built once at the start, kept for a `cmd` health check.
    env: Option<(Env, Vec<String>)>,
}

/// Every service of a session.
#[derive(Default)]
pub(super) struct Services {
    live: BTreeMap<String, Supervised>,
    /// Gates of services started in this iteration: opened after the commit.
    gates: Vec<(String, Gated)>,
    /// Restarts after a failure used so far, per service.
    restarts: HashMap<String, u32>,
    /// Services that died and may not start again in this session: what happened, and
    /// whether steps go on without them (`degraded = "continue"`, and it had been healthy).
    dead: HashMap<String, (String, bool)>,
    /// Ready steps that wait for their services to be healthy (no event yet).
    held: BTreeSet<usize>,
    /// What each held step will start with, worked out when it became ready.
    prepared: HashMap<usize, Box<Prepared>>,
    /// The steps that use each service, for the plan of this many steps (a call grows it).
    users: (usize, HashMap<String, Vec<usize>>),
}

/// Whether a step's services let it start.
pub(super) enum Readiness {
    Ready,
    Wait,
    Fail(String),
}

impl Services {
    /// The service with process group `pid`, if any.
    fn by_pid(&self, pid: i32) -> Option<String> {
        self.live.iter().find(|(_, s)| s.pid == pid).map(|(n, _)| n.clone())
    }

    pub fn is_held(&self, idx: usize) -> bool {
        self.held.contains(&idx)
    }

    pub fn take_prepared(&mut self, idx: usize) -> Option<Box<Prepared>> {
        self.prepared.remove(&idx)
    }

    pub fn keep_prepared(&mut self, idx: usize, p: Box<Prepared>) {
        self.prepared.insert(idx, p);
    }

    /// Lets go of a held step.
    fn release(&mut self, idx: usize) {
        self.held.remove(&idx);
        self.prepared.remove(&idx);
    }

    pub fn kill_all(&self) {
        for s in self.live.values() {
            executor::signal_group(s.pid, Signal::SIGKILL);
        }
    }
}

impl Session {
    /// Whether step `idx` can start now as far as its services go; starts the ones it
    /// needs that are not running.
    pub(super) fn services_ready(&mut self, idx: usize) -> Result<Readiness, SessionError> {
        let names = self.flow.steps[idx].services.clone();
        if names.is_empty() {
            return Ok(Readiness::Ready);
        }
        let mut ready = true;
        for name in &names {
            if let Some(s) = self.services.live.get(name) {
                ready &= s.healthy && s.stopping.is_none();
                continue;
            }
            if let Some((why, go_on)) = self.services.dead.get(name) {
                if *go_on {
                    continue;
                }
                let why = why.clone();
                self.services.release(idx);
                return Ok(Readiness::Fail(why));
            }
            let for_step = self.flow.steps[idx].id.clone();
            if let Err(message) = self.start_service(name, &for_step, 0)? {
                self.services.release(idx);
                return Ok(Readiness::Fail(message));
            }
            ready = false;
        }
        if ready {
            self.services.held.remove(&idx);
            Ok(Readiness::Ready)
        } else {
            self.services.held.insert(idx);
            Ok(Readiness::Wait)
        }
    }

    /// Starts an instance of `name` at its gate and journals it; the gate opens after
    /// the commit. The inner `Err` says why it could not be started.
    fn start_service(
        &mut self,
        name: &str,
        for_step: &str,
        restart: u32,
    ) -> Result<Result<(), String>, SessionError> {
        let event = match self.spawn_service(name, for_step, restart) {
            Ok(event) => event,
            Err(why) => return Ok(Err(why)),
        };
        let instance = event.instance;
        self.record(Event::ServiceStarted(event))?;
        // Without a check, a service is ready once it runs.
        if self.flow.services[name].health.is_none() {
            if let Some(s) = self.services.live.get_mut(name) {
                s.healthy = true;
            }
            let event = ServiceHealthy { service: name.to_string(), instance, checks: 0, after_ms: 0 };
            self.record(Event::ServiceHealthy(event))?;
        }
        Ok(Ok(()))
    }

    /// Creates the process of an instance of `name`, waiting at its gate.
    fn spawn_service(&mut self, name: &str, for_step: &str, restart: u32) -> Result<ServiceStarted, String> {
        let def = Arc::clone(&self.flow.services[name]);
        let instance = self.state.services.iter().filter(|s| s.service == name).count() as u32 + 1;
        let log_path = self.dir.join(SERVICES_DIR).join(format!("{name}.log"));
        let log = log_path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(&log_path))
            .map_err(|e| format!("service `{name}` cannot start: cannot open {}: {e}", log_path.display()))?;
        let (env, remove_env) = self.service_env(name, instance)?;
        let sink = Arc::new(LineSink::new(name, log, !self.report.is_quiet(), self.redactor.clone()));
        let workdir = std::path::PathBuf::from(&self.state.workdir);
        let mut gated = executor::spawn_gated(SpawnSpec {
            program: Program::Argv(&def.argv),
            env: &env,
            workdir: &workdir,
            output: Output::Lines(sink),
            remove_env: &remove_env,
        })
        .map_err(|e| format!("service `{name}` cannot start: {e}"))?;
        self.reaper.wake();
        let now = Instant::now();
        let relays = std::mem::take(&mut gated.relays);
        let event = ServiceStarted {
            service: name.to_string(),
            instance,
            pid: gated.pid,
            proc_start: gated.proc_start,
            restart,
            for_step: for_step.to_string(),
        };
        self.services.live.insert(
            name.to_string(),
            Supervised {
                def: Arc::clone(&def),
                instance,
                pid: gated.pid,
                for_step: for_step.to_string(),
                started: now,
                deadline: checked_after(now, def.start_timeout),
                healthy: false,
                checks: 0,
                last: None,
                prober: None,
                stopping: None,
                kill_at: None,
                killed_at: None,
                relays,
                env: def.health.as_ref().map(|_| (env.clone(), remove_env.clone())),
            },
        );
        self.services.gates.push((name.to_string(), gated));
        Ok(event)
    }

    /// A service's environment: the flow's, the run's parameters, its own, its secrets,
    /// and `RUNNER_*` (with `RUNNER_RUN_DIR`, so a resume finds it after a crash).
    fn service_env(&mut self, name: &str, instance: u32) -> Result<(Env, Vec<String>), String> {
        let def = Arc::clone(&self.flow.services[name]);
        // A called flow's service (`caller/api`) carries its flow's env and parameters.
        let scoped = name.contains('/');
        let mut env: Vec<(String, String)> = Vec::new();
        if !scoped {
            env.extend(self.flow.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            env.extend(self.state.params.iter().map(|(k, v)| (param_env_name(k), v.clone())));
        }
        env.extend(def.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.push(("RUNNER_RUN_ID".into(), self.state.run_id.clone()));
        env.push(("RUNNER_RUN_DIR".into(), self.dir.to_string_lossy().into_owned()));
        env.push(("RUNNER_SERVICE".into(), name.to_string()));
        env.push(("RUNNER_SERVICE_INSTANCE".into(), instance.to_string()));
        // … and its flow's secrets.
        let mut names: Vec<String> = if scoped {
            def.secrets.clone()
        } else {
            self.flow.secrets.iter().chain(&def.secrets).cloned().collect()
        };
        names.sort();
        names.dedup();
        if names.iter().any(|n| self.secrets.get(n).is_none()) {
            self.secrets.resolve(&names).map_err(|e| format!("service `{name}` cannot start: {e}"))?;
            self.redactor = self.secrets.redactor().map(Arc::new);
        }
        env.extend(names.iter().filter_map(|n| self.secrets.get(n).map(|v| (n.clone(), v.to_string()))));
        let remove: Vec<String> = self.secrets.names().filter(|n| !names.contains(n)).cloned().collect();
        Ok((env, remove))
    }

    /// After a commit: lets the services started in it run, and starts their checks.
    pub(super) fn open_service_gates(&mut self) {
        let gates = std::mem::take(&mut self.services.gates);
        for (name, gate) in gates {
            let now = Instant::now();
            let Some(s) = self.services.live.get_mut(&name) else { continue };
            s.started = now;
            s.deadline = checked_after(now, s.def.start_timeout);
            gate.open();
            let Some(health) = s.def.health.clone() else { continue };
            let (env, remove_env) = s.env.take().unwrap_or_default();
            let (interval, instance) = (s.def.interval, s.instance);
            let spec = ProbeSpec {
                health,
                interval,
                env,
                remove_env,
                workdir: std::path::PathBuf::from(&self.state.workdir),
            };
            let tx = self.tx.clone();
            let service = name.clone();
            let prober = health::start(spec, self.reaper.waiters(), move |checks, result| {
                let _ = tx.send(Msg::Health { service: service.clone(), instance, checks, result });
            });
            match prober {
                Ok(p) => {
                    if let Some(s) = self.services.live.get_mut(&name) {
                        s.prober = Some(p);
                    }
                }
                Err(e) => self.report.warn(&format!("cannot start the health checks of `{name}`: {e}")),
            }
        }
    }

    /// A health check's result.
    pub(super) fn on_health(
        &mut self,
        name: &str,
        instance: u32,
        checks: u32,
        result: Result<(), String>,
    ) -> Result<(), SessionError> {
        let Some(s) = self.services.live.get_mut(name) else { return Ok(()) };
        if s.instance != instance || s.healthy || s.stopping.is_some() {
            return Ok(());
        }
        s.checks = checks;
        match result {
            Err(seen) => {
                s.last = Some(seen);
                Ok(())
            }
            Ok(()) => {
                s.healthy = true;
                s.prober = None;
                let after_ms = s.started.elapsed().as_millis() as u64;
                let event = ServiceHealthy { service: name.to_string(), instance, checks, after_ms };
                self.record(Event::ServiceHealthy(event))
            }
        }
    }

    /// Asks a service to stop: SIGTERM to its group now, SIGKILL after its grace.
    fn stop_service(&mut self, name: &str, reason: ServiceEnd, message: String) {
        let Some(s) = self.services.live.get_mut(name) else { return };
        if s.stopping.is_some() {
            return;
        }
        s.prober = None;
        s.stopping = Some((reason, message));
        s.kill_at = Some(checked_after(Instant::now(), s.def.grace));
        executor::signal_group(s.pid, Signal::SIGTERM);
    }

    /// Whether a step still to run (or running) needs service `name`. While the run is
    /// failing, only steps that may still start count (retries under way, clean-up steps);
    /// while it stops, only the steps still running.
    fn service_needed(&self, name: &str, running: &BTreeSet<usize>) -> bool {
        let failing = self.sched.failing();
        let users = self.services.users.1.get(name).map_or(&[][..], Vec::as_slice);
        users.iter().any(|&i| {
            let step = &self.flow.steps[i];
            if running.contains(&i) {
                return true;
            }
            if self.stop.is_some() {
                return false;
            }
            let status = self.state.steps[i].status;
            self.services.held.contains(&i)
                || (matches!(status, StepStatus::Pending | StepStatus::Retrying | StepStatus::Interrupted)
                    && (!failing || status == StepStatus::Retrying || step.handles_failure))
        })
    }

    /// Maps each service to the steps that use it, once per size of the plan, so that
    /// deciding whether a service is still needed does not walk every step of the flow.
    fn refresh_users(&mut self) {
        if self.services.users.0 == self.flow.steps.len() && !self.services.users.1.is_empty() {
            return;
        }
        let mut users: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, step) in self.flow.steps.iter().enumerate() {
            for name in &step.services {
                users.entry(name.clone()).or_default().push(i);
            }
        }
        self.services.users = (self.flow.steps.len(), users);
    }

    /// Stops the services no step needs any more.
    pub(super) fn stop_unneeded_services(&mut self) {
        if self.services.live.is_empty() {
            return;
        }
        self.refresh_users();
        // Held steps that will not start now (the run began failing) do not hold services.
        let failing = self.sched.failing();
        let gone: Vec<usize> = self
            .services
            .held
            .iter()
            .copied()
            .filter(|&i| {
                crate::scheduler::decide(&self.flow, &self.state, i, failing, false) != Action::Start
            })
            .collect();
        for i in gone {
            self.services.release(i);
        }
        let running: BTreeSet<usize> = self.running.values().map(|r| r.step).collect();
        let idle: Vec<String> = self
            .services
            .live
            .iter()
            .filter(|(n, s)| s.stopping.is_none() && !self.service_needed(n, &running))
            .map(|(n, _)| n.clone())
            .collect();
        let why = match self.stop {
            Some(sig) => format!("the run was stopped by {}", executor::signal_name(sig)),
            None => "no step needs it any more".to_string(),
        };
        for name in idle {
            self.stop_service(&name, ServiceEnd::Stopped, why.clone());
        }
    }

    /// A child exited that may be a service: `true` if it was one.
    pub(super) fn on_service_exit(&mut self, pid: i32, exit: Exit) -> Result<bool, SessionError> {
        let Some(name) = self.services.by_pid(pid) else { return Ok(false) };
        let Some(mut s) = self.services.live.remove(&name) else { return Ok(false) };
        s.prober = None;
        // Whatever is left of its group goes too; its last lines reach the log first.
        executor::signal_group(pid, Signal::SIGKILL);
        executor::drain_relays(&s.relays, RELAY_WAIT);
        let (exit_code, signal) = match exit {
            Exit::Code(c) => (Some(c), None),
            Exit::Signal(sig) => (None, Some(executor::signal_name(sig))),
        };
        let how = match exit {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(sig) => format!("was killed by {}", executor::signal_name(sig)),
        };
        let event = |reason, message: String, degraded| ServiceExited {
            service: name.clone(),
            instance: s.instance,
            reason,
            exit_code,
            signal: signal.clone(),
            message,
            degraded,
        };
        if let Some((reason, message)) = s.stopping.take() {
            self.record(Event::ServiceExited(event(reason, message, false)))?;
            return Ok(true);
        }
        // It died while needed.
        let users: Vec<i32> = self
            .running
            .iter()
            .filter(|(_, r)| self.flow.steps[r.step].services.contains(&name))
            .map(|(p, _)| *p)
            .collect();
        // Degraded: steps go on without a service they had. One that never became healthy
        // was never there to go on without: its waiting steps fail, whatever `degraded` says.
        let go_on = s.def.continue_degraded && s.healthy;
        let degraded = go_on;
        let when = if s.healthy { "" } else { " before it was healthy" };
        let message = format!("service `{name}` {how}{when}");
        self.record(Event::ServiceExited(event(ServiceEnd::Died, format!("{how}{when}"), degraded)))?;
        let log = self.dir.join(SERVICES_DIR).join(format!("{name}.log"));
        let consequence = if go_on {
            "; the steps using it go on without it (degraded = \"continue\")".to_string()
        } else if users.is_empty() {
            String::new()
        } else {
            format!("; stopping {} step(s) that use it", users.len())
        };
        self.report.warn(&format!("{message}{consequence} (log: {})", log.display()));
        if !go_on {
            let now = Instant::now();
            for pid in users {
                if let Some(r) = self.running.get_mut(&pid)
                    && r.service_lost.is_none()
                {
                    r.service_lost = Some(format!("{message} while the step ran"));
                    if r.kill_at.is_none() && r.killed_at.is_none() {
                        r.kill_at = Some(checked_after(now, self.flow.steps[r.step].grace));
                        executor::signal_group(pid, Signal::SIGTERM);
                    }
                }
            }
        }
        let used = self.services.restarts.get(&name).copied().unwrap_or(0);
        let failed = exit != Exit::Code(0);
        let running: BTreeSet<usize> = self.running.values().map(|r| r.step).collect();
        self.refresh_users();
        let needed = self.service_needed(&name, &running);
        if failed && needed && used < s.def.max_restarts {
            self.services.restarts.insert(name.clone(), used + 1);
            self.report.info(&format!(
                "restarting service `{name}` ({} of {})",
                used + 1,
                s.def.max_restarts
            ));
            match self.start_service(&name, &s.for_step, used + 1)? {
                Ok(()) => return Ok(true),
                Err(why) => {
                    self.services.dead.insert(name.clone(), (why, false));
                }
            }
        } else {
            let limit = if failed && s.def.max_restarts > 0 {
                format!(" (after {used} restart(s), its limit)")
            } else {
                String::new()
            };
            self.services.dead.insert(name.clone(), (format!("{message}{limit}"), go_on));
        }
        if !go_on {
            let why = self.services.dead.get(&name).map_or(message, |(w, _)| w.clone());
            self.fail_held(&name, &why)?;
        }
        Ok(true)
    }

    /// Fails the held steps that wait for service `name`.
    fn fail_held(&mut self, name: &str, why: &str) -> Result<(), SessionError> {
        let held: Vec<usize> = self
            .services
            .held
            .iter()
            .copied()
            .filter(|&i| self.flow.steps[i].services.iter().any(|n| n == name))
            .collect();
        for idx in held {
            self.services.release(idx);
            let (visit, attempt) = (self.state.steps[idx].next_visit(), self.state.steps[idx].next_attempt());
            self.record_unstartable(idx, visit, attempt, FailReason::Service, why.to_string())?;
        }
        Ok(())
    }

    /// Start timeouts and kill deadlines of services.
    pub(super) fn check_service_timers(&mut self) -> Result<(), SessionError> {
        let now = Instant::now();
        let mut timed_out = Vec::new();
        for (name, s) in &mut self.services.live {
            if !s.healthy && s.stopping.is_none() && now >= s.deadline {
                timed_out.push(name.clone());
            }
            if s.kill_at.is_some_and(|k| now >= k) {
                executor::signal_group(s.pid, Signal::SIGKILL);
                s.kill_at = None;
                s.killed_at = Some(now);
            }
        }
        for name in timed_out {
            let s = &self.services.live[&name];
            let check = s.def.health.as_ref().map_or(String::new(), |h| h.check.describe());
            let last = s.last.as_deref().unwrap_or("no check finished yet");
            let limit = human(s.def.start_timeout);
            let message = format!(
                "service `{name}` was not healthy within {limit}: {check} -> {last} ({} checks)",
                s.checks
            );
            self.fail_held(&name, &message)?;
            self.stop_service(&name, ServiceEnd::StartTimeout, format!("not healthy within {limit}"));
        }
        // A group that survived SIGKILL this long (uninterruptible I/O) is recorded anyway.
        let stuck: Vec<(i32, Exit)> = self
            .services
            .live
            .values()
            .filter(|s| s.killed_at.is_some_and(|k| now >= k + KILL_WAIT))
            .map(|s| (s.pid, Exit::Signal(Signal::SIGKILL)))
            .collect();
        for (pid, exit) in stuck {
            self.on_service_exit(pid, exit)?;
        }
        Ok(())
    }

    /// The next moment a service needs attention.
    pub(super) fn next_service_wake(&self) -> Option<Instant> {
        self.services
            .live
            .values()
            .flat_map(|s| {
                let deadline = (!s.healthy && s.stopping.is_none()).then_some(s.deadline);
                [deadline, s.kill_at, s.killed_at.map(|k| k + KILL_WAIT)]
            })
            .flatten()
            .min()
    }

    /// Stops every service and waits until they are gone, journaling each exit: the last
    /// act of a session before it records how the run ended.
    pub(super) fn stop_all_services(&mut self, why: &str) -> Result<(), SessionError> {
        let names: Vec<String> = self.services.live.keys().cloned().collect();
        for name in names {
            self.stop_service(&name, ServiceEnd::Stopped, why.to_string());
        }
        self.services.held.clear();
        self.services.prepared.clear();
        while !self.services.live.is_empty() {
            let wake =
                self.next_service_wake().unwrap_or_else(|| Instant::now() + Duration::from_millis(100));
            match self.rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Msg::Exit(pid, exit)) => {
                    self.on_service_exit(pid, exit)?;
                }
                // A second signal: no more grace.
                Ok(Msg::Signal(_)) => {
                    self.services.kill_all();
                    for s in self.services.live.values_mut() {
                        s.kill_at = None;
                        s.killed_at.get_or_insert(Instant::now());
                    }
                }
                // (No job is in flight once services stop.)
                Ok(Msg::Health { .. } | Msg::Jobs(_)) | Err(_) => {}
            }
            self.check_service_timers()?;
        }
        Ok(())
    }

    /// Services a second signal must not wait for.
    pub(super) fn kill_services_now(&mut self) {
        let now = Instant::now();
        for s in self.services.live.values_mut() {
            if s.stopping.is_some() || self.stop.is_some() {
                executor::signal_group(s.pid, Signal::SIGKILL);
                s.kill_at = None;
                s.killed_at.get_or_insert(now);
            }
        }
    }
}

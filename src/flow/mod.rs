//! Flows: the TOML model, strict parsing, validation and parameters.

mod calls;
mod error;
mod params;
mod raw;
mod routes;
mod services;
mod slurm;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::expr::{self, Expr, Ref};
pub use calls::{MAX_CALL_DEPTH, call_params, check_calls, instantiate, resolve_call};
use error::Source;
pub use error::{FlowError, FlowErrorKind, Pos};
pub use params::{ParamError, param_env_name, parse_param_args};
use raw::{RawFlow, RawRule, RawStep};
pub use services::{Check, Health, Service};
pub use slurm::{DEFAULT_MAX_JOBS, DEFAULT_POLL, ExecutorKind, SlurmLimits, SlurmOptions, slurm_time};

/// Grace between SIGTERM and SIGKILL when a step is stopped, unless the step sets `grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// First retry delay unless `retries.backoff` says otherwise; it doubles per retry.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// Upper bound for one retry delay, whatever the doubling reaches.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
const MAX_STEP_ID_LEN: usize = 64;
/// Upper bound for `max_visits`: a loop that needs more is a loop that does not end.
pub const MAX_VISITS: u32 = 10_000;
/// Longest duration a flow may ask for; anything longer is a typo, not a plan.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A validated flow.
#[derive(Clone, Debug)]
pub struct Flow {
    /// The file stem, e.g. `nightly` for `flows/nightly.toml`.
    pub name: String,
    pub path: PathBuf,
    pub description: Option<String>,
    pub params: BTreeMap<String, Param>,
    pub env: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    /// blake3 of the file's bytes, so a run can tell whether its copy was edited.
    pub hash: String,
    /// Named sets of gates that replace steps' own gates (`runner run --profile NAME`).
    pub profiles: BTreeMap<String, Vec<(usize, Gate)>>,
    /// `secrets` of the flow: every step and every service gets them.
    pub secrets: Vec<String>,
    /// `[services.<name>]`; a called flow's join under their steps' prefix (`caller/api`).
    pub services: BTreeMap<String, std::sync::Arc<Service>>,
    /// `schedule`: a crontab expression `runner schedule` starts runs by; `runner run`
    /// ignores it.
    pub schedule: Option<crate::schedule::Cron>,
    /// `[slurm] max_jobs` and `poll` (of the main flow: they are the run's).
    pub slurm: SlurmLimits,
}

#[derive(Clone, Debug)]
pub struct Param {
    /// `None` makes the parameter required.
    pub default: Option<String>,
    pub description: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub id: String,
    pub run: String,
    /// Indices into `Flow::steps`, in the order written.
    pub needs: Vec<usize>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// Extra attempts after the first failure.
    pub retries: u32,
    pub backoff: Duration,
    pub grace: Duration,
    pub description: Option<String>,
    /// `if`: evaluated once per visit, when the step's needs are done. (Rare fields are
    /// boxed: a 100,000-step flow pays a pointer per step for them, not their size.)
    pub cond: Option<Box<Expr>>,
    /// The `if` calls `always()`/`failure()` or reads a status: the step is still decided
    /// when a need was skipped or failed (worked out once, not at every decision).
    pub handles_failure: bool,
    /// Routing rules (`next`), tried in order after the step succeeds.
    pub next: Vec<Rule>,
    /// `max_visits` as written; a step on a loop must have it.
    pub max_visits: Option<u32>,
    /// Indices of the steps that need this one, in flow order.
    pub dependents: Vec<usize>,
    /// Steps that share a loop with this one (a backward route's cycle holds both).
    pub loop_mates: BTreeSet<usize>,
    /// `call`: the step runs another flow's steps instead of a command.
    pub call: Option<Box<Call>>,
    pub on_failure: Option<Box<OnFailure>>,
    /// For a step of a called flow: the prefix of its id (`caller/`) and its frame.
    pub scope: String,
    pub frame: Option<u32>,
    /// `approval`: a person must approve each visit before it runs.
    pub approval: Option<Box<Approval>>,
    /// `gate`: checked on the step's outputs after each successful attempt.
    pub gate: Option<Box<Gate>>,
    /// `inputs` and `outputs`: declared files, hashed into the step's receipt.
    pub files: Option<Box<Files>>,
    /// `cache`: reuse a matching successful receipt instead of running.
    pub cache: bool,
    /// `secrets` of the step: only it gets them (besides the flow's).
    pub secrets: Vec<String>,
    /// Names of the services that must be healthy while it runs.
    pub services: Vec<String>,
    /// `executor` of the step itself: it wins over everything else.
    pub executor: Option<ExecutorKind>,
    /// `[defaults] executor`: used when neither the step nor `--executor` says.
    pub default_executor: Option<ExecutorKind>,
    /// The flow's `[slurm]` options with the step's own over them, when either has any.
    pub slurm: Option<Box<SlurmOptions>>,
}

impl Step {
    /// Where the step runs, given the run's `--executor`.
    pub fn executor_with(&self, run: Option<ExecutorKind>) -> ExecutorKind {
        self.executor.or(run).or(self.default_executor).unwrap_or(ExecutorKind::Local)
    }
}

/// Who must approve a step, and what they are told.
#[derive(Clone, Debug, PartialEq)]
pub struct Approval {
    pub message: Option<String>,
    /// Empty: anyone may decide.
    pub approvers: Vec<String>,
}

/// A quality gate: `pass` lets the step succeed, else `warn` lets it succeed with a
/// warning, else the step fails with reason `gate`.
#[derive(Clone, Debug)]
pub struct Gate {
    pub pass: Expr,
    pub warn: Option<Expr>,
}

/// Globs relative to the working directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Files {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// A call of another flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// As written: a path relative to the calling flow's file, or a flow name beside it.
    pub target: String,
    pub with: BTreeMap<String, String>,
    /// Line of the `call` in the calling flow, for messages.
    pub line: usize,
}

/// What happens to a failed step once its `on_failure` flow has run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    Retry,
    Fail,
    Continue,
}

impl Then {
    pub fn as_str(self) -> &'static str {
        match self {
            Then::Retry => "retry",
            Then::Fail => "fail",
            Then::Continue => "continue",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OnFailure {
    pub call: Call,
    pub then: Then,
}

/// One routing rule of a router step.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `None` is the default rule.
    pub cond: Option<Expr>,
    pub goto: usize,
    /// `goto` is the router itself or a step it depends on: a new visit of it starts.
    pub backward: bool,
    /// For a backward rule: `goto` and every step downstream of it, which become pending
    /// again (flow order).
    pub reset: Vec<usize>,
    /// For a backward rule: the steps on the loop, from `goto` down to the router; each
    /// must declare `max_visits`.
    pub cycle: Vec<usize>,
}

impl Step {
    /// How many visits the step may have: 1 unless `max_visits` says more.
    pub fn visit_limit(&self) -> u32 {
        self.max_visits.unwrap_or(1)
    }

    /// Delay before retry number `n` (1-based): `backoff * 2^(n-1)`, capped.
    pub fn retry_delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

impl Flow {
    /// Reads and validates a flow file.
    pub fn load(path: &Path) -> Result<Flow, FlowError> {
        let bytes = std::fs::read(path).map_err(|e| FlowError::whole_file(path, FlowErrorKind::Read(e)))?;
        Flow::from_bytes(path, &bytes)
    }

    /// Validates flow text; `path` names it in errors and gives the flow its name.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Flow, FlowError> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| FlowError::whole_file(path, FlowErrorKind::NotUtf8))?;
        let src = Source { path, text };
        let raw: RawFlow = toml::from_str(text).map_err(|e| {
            let kind = FlowErrorKind::Toml(e.message().to_string());
            match e.span() {
                Some(span) => src.error_at(span.start, kind),
                None => FlowError::whole_file(path, kind),
            }
        })?;
        let flow = build(&src, raw, blake3::hash(bytes).to_hex().to_string())?;
        Ok(flow)
    }

    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// Where router `i` can go: the steps that need it, then the steps its backward rules
    /// name, without repeats.
    pub fn candidates(&self, i: usize) -> Vec<usize> {
        let mut out = self.steps[i].dependents.clone();
        for rule in &self.steps[i].next {
            if !out.contains(&rule.goto) {
                out.push(rule.goto);
            }
        }
        out
    }
}

fn build(src: &Source, raw: RawFlow, hash: String) -> Result<Flow, FlowError> {
    let mut params = BTreeMap::new();
    let mut param_envs: HashMap<String, String> = HashMap::new();
    for (name, p) in raw.params {
        let ok = name.get_ref().chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(src.error_at(name.span().start, FlowErrorKind::ParamName(name.into_inner())));
        }
        let env = param_env_name(name.get_ref());
        if let Some(first) = param_envs.insert(env.clone(), name.get_ref().clone()) {
            return Err(src.error_at(
                name.span().start,
                FlowErrorKind::ParamClash { first, second: name.into_inner(), env },
            ));
        }
        params
            .insert(name.into_inner(), Param { default: p.default.map(|s| s.0), description: p.description });
    }

    let env = env_table(src, raw.env)?;
    let secrets = secret_names(src, raw.secrets, &env)?;
    let defaults = Defaults::build(src, raw.defaults)?;
    let services = services::build(src, raw.services)?;
    let schedule = raw.schedule.map(|s| schedule(src, &s)).transpose()?;
    let (slurm, slurm_limits) = match raw.slurm {
        Some(t) => slurm::build(src, "slurm", t, true)?,
        None => Default::default(),
    };

    if raw.steps.is_empty() {
        return Err(FlowError::whole_file(src.path, FlowErrorKind::NoSteps));
    }
    let mut index: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, step) in raw.steps.iter().enumerate() {
        let id = step.get_ref().id.get_ref();
        let at = step.get_ref().id.span().start;
        if !valid_step_id(id) {
            return Err(src.error_at(at, FlowErrorKind::StepId(id.clone())));
        }
        if let Some(&(_, first_at)) = index.get(id) {
            let first_line = src.pos(first_at).line;
            return Err(src.error_at(at, FlowErrorKind::DuplicateStep { id: id.clone(), first_line }));
        }
        index.insert(id.clone(), (i, at));
    }

    let mut steps = Vec::with_capacity(raw.steps.len());
    let mut need_spans = Vec::with_capacity(raw.steps.len());
    let mut rules = Vec::with_capacity(raw.steps.len());
    let scope = Scope { src, index: &index, params: &params, services: &services, slurm: &slurm };
    for (i, step) in raw.steps.into_iter().enumerate() {
        let (step, spans, raw_rules) = build_step(&scope, &defaults, i, step.into_inner())?;
        steps.push(step);
        need_spans.push(spans);
        rules.push(raw_rules);
    }
    if let Some(cycle) = find_cycle(&steps) {
        // Point at the `needs` entry of the first step that closes the loop.
        let (first, closing) = (cycle[0], cycle[cycle.len() - 2]);
        let at = need_spans[first].iter().find(|(target, _)| *target == closing).map_or(0, |(_, at)| *at);
        let names = cycle.iter().map(|&i| steps[i].id.clone()).collect();
        return Err(src.error_at(at, FlowErrorKind::Cycle(names)));
    }
    for i in 0..steps.len() {
        for k in 0..steps[i].needs.len() {
            let need = steps[i].needs[k];
            steps[need].dependents.push(i);
        }
    }
    routes::build(&scope, &mut steps, rules)?;
    let profiles = build_profiles(&scope, &steps, raw.profiles)?;

    Ok(Flow {
        name: src.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "flow".into()),
        path: src.path.to_path_buf(),
        description: raw.description,
        params,
        env,
        steps,
        hash,
        profiles,
        secrets,
        services,
        schedule,
        slurm: slurm_limits,
    })
}

/// `schedule = "…"`: parsed now, so a typo is a load error pointing at the character.
fn schedule(src: &Source, raw: &Spanned<String>) -> Result<crate::schedule::Cron, FlowError> {
    crate::schedule::Cron::parse(raw.get_ref()).map_err(|e| {
        // The span starts at the opening quote: `"`, `'`, or three of them.
        let at = raw.span().start;
        let rest = src.text.get(at..).unwrap_or_default();
        let quote = if rest.starts_with("\"\"\"") || rest.starts_with("'''") { 3 } else { 1 };
        src.error_at(
            at + quote + e.offset,
            FlowErrorKind::Schedule { value: raw.get_ref().clone(), message: e.message },
        )
    })
}

/// `secrets = ["NAME", …]`: names of environment variables, checked like `env` keys.
fn secret_names(
    src: &Source,
    raw: Option<Vec<Spanned<String>>>,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, FlowError> {
    let mut out: Vec<String> = Vec::new();
    for name in raw.unwrap_or_default() {
        let at = name.span().start;
        let n = name.into_inner();
        let ok = n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(src.error_at(at, FlowErrorKind::EnvName(n)));
        }
        if n.starts_with("RUNNER_") {
            return Err(src.error_at(at, FlowErrorKind::ReservedEnv(n)));
        }
        if env.contains_key(&n) {
            return Err(src.error_at(at, FlowErrorKind::SecretInEnv(n)));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// `[defaults]`, checked once.
#[derive(Default)]
struct Defaults {
    cache: bool,
    timeout: Option<Duration>,
    retries: Option<(u32, Duration)>,
    grace: Option<Duration>,
    executor: Option<ExecutorKind>,
}

impl Defaults {
    fn build(src: &Source, raw: Option<raw::RawDefaults>) -> Result<Defaults, FlowError> {
        let Some(raw) = raw else { return Ok(Defaults::default()) };
        Ok(Defaults {
            cache: raw.cache.unwrap_or(false),
            timeout: raw.timeout.map(|t| duration(src, "defaults.timeout", &t, false)).transpose()?,
            retries: raw.retries.map(|r| retries(src, r)).transpose()?,
            grace: raw.grace.map(|g| duration(src, "defaults.grace", &g, true)).transpose()?,
            executor: raw.executor.map(|e| slurm::kind(src, "defaults.executor", &e)).transpose()?,
        })
    }
}

fn retries(src: &Source, r: raw::RawRetries) -> Result<(u32, Duration), FlowError> {
    let backoff = match &r.backoff {
        Some(b) => duration(src, "retries.backoff", b, true)?,
        None => DEFAULT_BACKOFF,
    };
    Ok((r.attempts, backoff))
}

impl Scope<'_> {
    fn gate(&self, raw: Spanned<raw::RawGate>) -> Result<Gate, FlowError> {
        let raw = raw.into_inner();
        Ok(Gate {
            pass: self.condition("gate.pass", &raw.pass)?,
            warn: raw.warn.as_ref().map(|w| self.condition("gate.warn", w)).transpose()?,
        })
    }
}

/// `[profiles.<name>.<step>]` tables, each a gate for that step.
type RawProfiles = BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<raw::RawGate>>>;

fn build_profiles(
    scope: &Scope,
    steps: &[Step],
    raw: RawProfiles,
) -> Result<BTreeMap<String, Vec<(usize, Gate)>>, FlowError> {
    let mut out = BTreeMap::new();
    for (name, gates) in raw {
        if !valid_step_id(name.get_ref()) {
            return Err(scope.src.error_at(name.span().start, FlowErrorKind::ProfileName(name.into_inner())));
        }
        let mut list = Vec::new();
        for (step, gate) in gates {
            let Some(&(i, _)) = scope.index.get(step.get_ref()) else {
                let hint = hint(step.get_ref(), scope.index.keys());
                return Err(scope.src.error_at(
                    step.span().start,
                    FlowErrorKind::ProfileStep {
                        profile: name.get_ref().clone(),
                        step: step.into_inner(),
                        hint,
                    },
                ));
            };
            if steps[i].call.is_some() {
                let field = format!("profiles.{}.{}", name.get_ref(), step.get_ref());
                return Err(scope.src.error_at(
                    step.span().start,
                    FlowErrorKind::NotForCall { step: step.into_inner(), field },
                ));
            }
            list.push((i, scope.gate(gate)?));
        }
        out.insert(name.into_inner(), list);
    }
    Ok(out)
}

impl Flow {
    /// Every secret the flow declares, at flow, step or service level, sorted.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .secrets
            .iter()
            .chain(self.steps.iter().flat_map(|s| &s.secrets))
            .chain(self.services.values().flat_map(|s| &s.secrets))
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Puts profile `name`'s gates in place of the steps' own; the caller has checked that
    /// the profile exists (`false` if it does not).
    pub fn apply_profile(&mut self, name: &str) -> bool {
        let Some(gates) = self.profiles.get(name) else { return false };
        for (i, gate) in gates.clone() {
            self.steps[i].gate = Some(Box::new(gate));
        }
        true
    }
}

type NeedSpans = Vec<(usize, usize)>;

/// What names in a flow resolve to, for the checks that look them up.
pub(crate) struct Scope<'a> {
    src: &'a Source<'a>,
    index: &'a HashMap<String, (usize, usize)>,
    params: &'a BTreeMap<String, Param>,
    services: &'a BTreeMap<String, std::sync::Arc<Service>>,
    /// The flow's `[slurm]` options, under each step's own.
    slurm: &'a SlurmOptions,
}

impl Scope<'_> {
    /// A condition, parsed and with every name it mentions checked; errors point at the
    /// offending column inside the string.
    fn condition(&self, field: &str, value: &Spanned<String>) -> Result<Expr, FlowError> {
        let at = |offset: usize| string_offset(self.src, value, offset);
        let e = expr::parse(value.get_ref()).map_err(|e| {
            self.src.error_at(
                at(e.offset),
                FlowErrorKind::Condition { field: field.to_string(), message: e.message },
            )
        })?;
        for r in e.refs() {
            match r {
                Ref::Param { name, offset } if !self.params.contains_key(&name) => {
                    return Err(self
                        .src
                        .error_at(at(offset), FlowErrorKind::UnknownParamRef { field: field.into(), name }));
                }
                Ref::Output { step: name, offset, .. } | Ref::Status { step: name, offset }
                    if !self.index.contains_key(&name) =>
                {
                    let hint = hint(&name, self.index.keys());
                    return Err(self.src.error_at(
                        at(offset),
                        FlowErrorKind::UnknownStepRef { field: field.into(), name, hint },
                    ));
                }
                _ => {}
            }
        }
        Ok(e)
    }
}

/// The file offset of byte `offset` of a string value, when the string is written
/// without escapes (so offsets match); otherwise the start of the string.
fn string_offset(src: &Source, value: &Spanned<String>, offset: usize) -> usize {
    let span = value.span();
    let written = src.text.get(span.clone()).unwrap_or("");
    let quote = written.chars().next().filter(|c| *c == '"' || *c == '\'');
    match quote {
        Some(q)
            if written.len() >= 2
                && !written.starts_with(&format!("{q}{q}{q}"))
                && &written[1..written.len() - 1] == value.get_ref().as_str() =>
        {
            span.start + 1 + offset
        }
        _ => span.start,
    }
}

fn hint<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    closest(name, known).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
}

fn build_step(
    scope: &Scope,
    defaults: &Defaults,
    i: usize,
    mut raw: RawStep,
) -> Result<(Step, NeedSpans, Vec<Spanned<RawRule>>), FlowError> {
    let (src, index) = (scope.src, scope.index);
    let id_at = raw.id.span().start;
    let id = raw.id.into_inner();
    let scalars = |with: BTreeMap<Spanned<String>, raw::Scalar>| -> BTreeMap<String, String> {
        with.into_iter().map(|(k, v)| (k.into_inner(), v.0)).collect()
    };
    if raw.call.is_none()
        && let Some((k, _)) = raw.with.iter().next()
    {
        return Err(src.error_at(k.span().start, FlowErrorKind::WithoutCall));
    }
    let call = raw.call.map(|c| Call {
        line: src.pos(c.span().start).line,
        target: c.into_inner(),
        with: scalars(std::mem::take(&mut raw.with)),
    });
    let run = match (raw.run, &call) {
        (Some(run), None) => run,
        (None, Some(_)) => Spanned::new(0..0, String::new()),
        (Some(run), Some(_)) => return Err(src.error_at(run.span().start, FlowErrorKind::RunAndCall(id))),
        (None, None) => return Err(src.error_at(id_at, FlowErrorKind::MissingRun(id))),
    };
    if call.is_none() && run.get_ref().trim().is_empty() {
        return Err(src.error_at(run.span().start, FlowErrorKind::EmptyRun(id)));
    }
    let on_failure = match raw.on_failure {
        None => None,
        Some(f) => {
            let then = match f.then.get_ref().as_str() {
                "retry" => Then::Retry,
                "fail" => Then::Fail,
                "continue" => Then::Continue,
                other => return Err(src.error_at(f.then.span().start, FlowErrorKind::Then(other.into()))),
            };
            let call = Call {
                line: src.pos(f.call.span().start).line,
                target: f.call.into_inner(),
                with: scalars(f.with),
            };
            Some(OnFailure { call, then })
        }
    };
    let mut needs = Vec::new();
    let mut spans = Vec::new();
    match raw.needs {
        // A plain list of steps is a sequence, like a shell script.
        None => {
            if i > 0 {
                needs.push(i - 1);
            }
        }
        Some(list) => {
            for need in list {
                let Some(&(target, _)) = index.get(need.get_ref()) else {
                    let hint = hint(need.get_ref(), index.keys());
                    return Err(src.error_at(
                        need.span().start,
                        FlowErrorKind::UnknownNeed { step: id, need: need.into_inner(), hint },
                    ));
                };
                if !needs.contains(&target) {
                    needs.push(target);
                    spans.push((target, need.span().start));
                }
            }
        }
    }
    let timeout = match raw.timeout {
        Some(t) => Some(duration(src, "timeout", &t, false)?),
        None => defaults.timeout,
    };
    let grace = match raw.grace {
        Some(g) => duration(src, "grace", &g, true)?,
        None => defaults.grace.unwrap_or(DEFAULT_GRACE),
    };
    let (retries, backoff) = match raw.retries {
        None => defaults.retries.unwrap_or((0, DEFAULT_BACKOFF)),
        Some(r) => self::retries(src, r)?,
    };
    let is_call = call.is_some();
    let not_for_call = |field: &str| {
        src.error_at(id_at, FlowErrorKind::NotForCall { step: id.clone(), field: field.into() })
    };
    let approval = match raw.approval {
        Some(a) if a.required => {
            for name in &a.approvers {
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
                if !ok {
                    return Err(src.error_at(id_at, FlowErrorKind::Approver(name.clone())));
                }
            }
            Some(Box::new(Approval { message: a.message, approvers: a.approvers }))
        }
        _ => None,
    };
    let gate = match raw.gate {
        Some(_) if is_call => return Err(not_for_call("gate")),
        Some(g) => Some(Box::new(scope.gate(g)?)),
        None => None,
    };
    let patterns = |field: &str, list: Option<Vec<Spanned<String>>>| -> Result<Vec<String>, FlowError> {
        let list = list.unwrap_or_default();
        if is_call && !list.is_empty() {
            return Err(not_for_call(field));
        }
        list.into_iter()
            .map(|p| {
                crate::fileset::check_pattern(p.get_ref()).map_err(|reason| {
                    src.error_at(
                        p.span().start,
                        FlowErrorKind::Pattern { field: field.into(), pattern: p.get_ref().clone(), reason },
                    )
                })?;
                Ok(p.into_inner())
            })
            .collect()
    };
    let files = Files { inputs: patterns("inputs", raw.inputs)?, outputs: patterns("outputs", raw.outputs)? };
    let files = (files != Files::default()).then(|| Box::new(files));
    let step_env = env_table(src, raw.env)?;
    let secrets = secret_names(src, raw.secrets, &step_env)?;
    let mut services = Vec::new();
    for name in raw.services.unwrap_or_default() {
        if is_call {
            return Err(not_for_call("services"));
        }
        if !scope.services.contains_key(name.get_ref()) {
            let hint = hint(name.get_ref(), scope.services.keys());
            return Err(src.error_at(
                name.span().start,
                FlowErrorKind::UnknownService { step: id.clone(), service: name.into_inner(), hint },
            ));
        }
        if !services.contains(name.get_ref()) {
            services.push(name.into_inner());
        }
    }
    let cache = match raw.cache {
        Some(true) if is_call => return Err(not_for_call("cache")),
        Some(c) => c,
        None => defaults.cache && !is_call,
    };
    let executor = match raw.executor {
        Some(_) if is_call => return Err(not_for_call("executor")),
        Some(e) => Some(slurm::kind(src, "executor", &e)?),
        None => None,
    };
    let slurm = match raw.slurm {
        Some(_) if is_call => return Err(not_for_call("slurm")),
        Some(t) => Some(scope.slurm.merged(&slurm::build(src, "slurm", t, false)?.0)),
        None => (scope.slurm != &SlurmOptions::default()).then(|| scope.slurm.clone()),
    };
    let cond = match &raw.cond {
        Some(c) => Some(scope.condition("if", c)?),
        None => None,
    };
    let max_visits = match raw.max_visits {
        Some(m) => u32::try_from(*m.get_ref())
            .ok()
            .filter(|n| (1..=MAX_VISITS).contains(n))
            .map(Some)
            .ok_or_else(|| src.error_at(m.span().start, FlowErrorKind::MaxVisits { max: MAX_VISITS }))?,
        None => None,
    };
    let step = Step {
        id,
        run: run.into_inner(),
        needs,
        env: step_env,
        timeout,
        retries,
        backoff,
        grace,
        description: raw.description,
        handles_failure: cond.as_ref().is_some_and(Expr::handles_failure),
        cond: cond.map(Box::new),
        next: Vec::new(),
        max_visits,
        dependents: Vec::new(),
        loop_mates: BTreeSet::new(),
        call: call.map(Box::new),
        on_failure: on_failure.map(Box::new),
        scope: String::new(),
        frame: None,
        approval,
        gate,
        files,
        cache,
        secrets,
        services,
        executor,
        default_executor: if is_call { None } else { defaults.executor },
        slurm: slurm.map(Box::new),
    };
    Ok((step, spans, raw.next.unwrap_or_default()))
}

fn env_table(
    src: &Source,
    raw: BTreeMap<Spanned<String>, raw::Scalar>,
) -> Result<BTreeMap<String, String>, FlowError> {
    let mut env = BTreeMap::new();
    for (key, value) in raw {
        let name = key.get_ref();
        let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(src.error_at(key.span().start, FlowErrorKind::EnvName(name.clone())));
        }
        if name.starts_with("RUNNER_") {
            return Err(src.error_at(key.span().start, FlowErrorKind::ReservedEnv(name.clone())));
        }
        env.insert(key.into_inner(), value.0);
    }
    Ok(env)
}

/// Parses a human duration as flows and commands take it: `30d`, `2 days`, `12h`, `1w`,
/// `1h30m` (a jiff span, with days of 24 hours). The one parser for both, so that
/// `timeout = "2 days"` and `runner gc --older-than "2 days"` always agree. `Err` is the
/// reason, short enough to follow the value in a message.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    // jiff's messages are precise but long; keep the part after the format name.
    let short = |e: jiff::Error| {
        let msg = e.to_string();
        msg.split_once("format: ").map_or(msg.as_str(), |(_, rest)| rest).to_string()
    };
    let span: jiff::Span = text.trim().parse().map_err(short)?;
    let parsed = span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()).map_err(short)?;
    if parsed.is_negative() {
        return Err("it is negative".into());
    }
    Duration::try_from(parsed).map_err(|e| e.to_string())
}

/// [`parse_duration`] for clap, with examples in the message.
pub fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| format!("{e} (examples: 30m, 12h, 2d, \"1 week\")"))
}

fn duration(
    src: &Source,
    field: &str,
    value: &Spanned<String>,
    zero_ok: bool,
) -> Result<Duration, FlowError> {
    let text = value.get_ref();
    let err = |reason: String| {
        src.error_at(
            value.span().start,
            FlowErrorKind::Duration { field: field.into(), value: text.clone(), reason },
        )
    };
    let d = parse_duration(text).map_err(err)?;
    if d.is_zero() && !zero_ok {
        return Err(err("it must be longer than zero".into()));
    }
    if d > MAX_DURATION {
        return Err(err("it is longer than 366 days".into()));
    }
    Ok(d)
}

pub fn valid_step_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_STEP_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Returns the steps on one cycle, in dependency order, if the graph has any.
fn find_cycle(steps: &[Step]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; steps.len()];
    for root in 0..steps.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS; `path` holds the open nodes, each with the next need to visit.
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&dep) = steps[node].needs.get(*next) {
                *next += 1;
                match mark[dep] {
                    Mark::New => {
                        mark[dep] = Mark::Open;
                        path.push((dep, 0));
                    }
                    Mark::Open => {
                        // The cycle is the open path from `dep` to `node`; `needs` point
                        // backwards, so reverse it to read in execution order.
                        let start = path.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[start..].iter().map(|&(n, _)| n).collect();
                        cycle.reverse();
                        // Start at the step written first, so the message reads like the file.
                        let first = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
                        cycle.rotate_left(first);
                        cycle.push(cycle[0]);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}

/// The known name closest to `name`, when one is close enough to be a likely typo.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    known.map(|k| (edit_distance(name, k), k)).filter(|(d, k)| *d <= 2.max(k.len() / 4)).min().map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Flow, FlowError> {
        Flow::from_bytes(Path::new("t.toml"), text.as_bytes())
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("flow should be rejected").to_string()
    }

    #[test]
    fn steps_without_needs_form_a_sequence() {
        let f = parse(
            "[[steps]]\nid='a'\nrun='true'\n[[steps]]\nid='b'\nrun='true'\n[[steps]]\nid='c'\nrun='true'\nneeds=[]\n",
        )
        .expect("valid");
        assert_eq!(f.steps[0].needs, Vec::<usize>::new());
        assert_eq!(f.steps[1].needs, vec![0]);
        assert_eq!(f.steps[2].needs, Vec::<usize>::new());
        assert_eq!(f.name, "t");
    }

    #[test]
    fn full_schema_parses() {
        let f = parse(
            r#"
description = "d"
[params]
name = { default = "world", description = "who" }
day = {}
[env]
KEY = "v"
N = 3
[[steps]]
id = "fetch"
run = "echo hi"
timeout = "1h 30m"
retries = { attempts = 2, backoff = "1.5s" }
grace = "0s"
env = { K = "v" }
description = "x"
[[steps]]
id = "build"
run = "make"
needs = ["fetch"]
retries = 3
timeout = "2 days"
"#,
        )
        .expect("valid");
        assert_eq!(f.params["name"].default.as_deref(), Some("world"));
        assert_eq!(f.params["day"].default, None);
        assert_eq!(f.env["N"], "3");
        let s = &f.steps[0];
        assert_eq!(s.timeout, Some(Duration::from_secs(5400)));
        assert_eq!((s.retries, s.backoff, s.grace), (2, Duration::from_millis(1500), Duration::ZERO));
        assert_eq!(f.steps[1].retries, 3);
        assert_eq!(f.steps[1].timeout, Some(Duration::from_secs(2 * 86400)));
        assert_eq!(f.steps[1].backoff, DEFAULT_BACKOFF);
    }

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        let mut f =
            parse("[[steps]]\nid='a'\nrun='x'\nretries={attempts=40, backoff='2s'}\n").expect("valid");
        let s = f.steps.remove(0);
        assert_eq!(s.retry_delay(1), Duration::from_secs(2));
        assert_eq!(s.retry_delay(3), Duration::from_secs(8));
        assert_eq!(s.retry_delay(40), MAX_BACKOFF);
    }

    #[test]
    fn unknown_fields_are_rejected_with_position() {
        let e = err("[[steps]]\nid = 'a'\nrun = 'x'\ntimeotu = '1s'\n");
        assert!(e.starts_with("t.toml:4:1: unknown field `timeotu`"), "{e}");
        let e = err("[[steps]]\nid='a'\nrun='x'\nretries={ attempts=1, max=2 }\n");
        assert!(e.contains("unknown field `max`"), "{e}");
        let e = err("colour = 1\n[[steps]]\nid='a'\nrun='x'\n");
        assert!(e.starts_with("t.toml:1:1: unknown field `colour`"), "{e}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = err("[[steps]]\nid = 'a\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
    }

    #[test]
    fn bad_ids_duplicates_and_unknown_needs() {
        assert!(err("[[steps]]\nid='a b'\nrun='x'\n").starts_with("t.toml:2:4: invalid step id `a b`"));
        assert!(err("[[steps]]\nid='../x'\nrun='x'\n").contains("invalid step id"));
        let e = err("[[steps]]\nid='a'\nrun='x'\n[[steps]]\nid='a'\nrun='y'\n");
        assert!(e.starts_with("t.toml:5:4: duplicate step id `a` (first defined on line 2)"), "{e}");
        let e = err("[[steps]]\nid='build'\nrun='x'\n[[steps]]\nid='b'\nrun='y'\nneeds=['biuld']\n");
        assert!(
            e.starts_with("t.toml:7:8: step `b` needs unknown step `biuld` (did you mean `build`?)"),
            "{e}"
        );
    }

    #[test]
    fn cycles_name_their_steps() {
        let e = err(
            "[[steps]]\nid='a'\nrun='x'\nneeds=['c']\n[[steps]]\nid='b'\nrun='x'\nneeds=['a']\n[[steps]]\nid='c'\nrun='x'\nneeds=['b']\n",
        );
        assert!(e.contains("dependency cycle: a -> b -> c -> a"), "{e}");
        assert!(e.starts_with("t.toml:4:8:"), "{e}");
        let e = err("[[steps]]\nid='a'\nrun='x'\nneeds=['a']\n");
        assert!(e.contains("dependency cycle: a -> a"), "{e}");
    }

    #[test]
    fn bad_durations_and_values() {
        let e = err("[[steps]]\nid='a'\nrun='x'\ntimeout='10 parsecs'\n");
        assert!(e.starts_with("t.toml:4:9: `timeout` = \"10 parsecs\" is not a valid duration"), "{e}");
        assert!(err("[[steps]]\nid='a'\nrun='x'\ntimeout='-1s'\n").contains("negative"));
        assert!(err("[[steps]]\nid='a'\nrun='x'\ntimeout='0s'\n").contains("longer than zero"));
        assert!(
            err("[[steps]]\nid='a'\nrun='x'\ngrace='9223372036854775807s'\n")
                .contains("not a valid duration")
        );
        assert!(err("[[steps]]\nid='a'\nrun='x'\ntimeout='367 days'\n").contains("366 days"));
        assert!(err("[[steps]]\nid='a'\nrun='x'\ntimeout='1 month'\n").contains("not a valid duration"));
        assert!(err("[[steps]]\nid='a'\nrun='x'\nretries=-1\n").contains("extra attempts"));
        assert!(err("[[steps]]\nid='a'\nrun='   '\n").contains("empty `run`"));
        assert!(
            err("[env]\n'A B'='x'\n[[steps]]\nid='a'\nrun='x'\n")
                .contains("invalid environment variable name")
        );
        assert!(err("[env]\nRUNNER_RUN_ID='x'\n[[steps]]\nid='a'\nrun='x'\n").contains("set by the runner"));
        assert!(err("description='x'\n").contains("no steps"));
        assert!(err("[[steps]]\nid='a'\n").contains("missing field `run`"));
    }

    #[test]
    fn parameter_names_must_not_collide() {
        let e = err("[params]\na-b={}\na_b={}\n[[steps]]\nid='a'\nrun='x'\n");
        assert!(e.contains("would both be passed as $RUNNER_PARAM_A_B"), "{e}");
        assert!(err("[params]\n'1x'={}\n[[steps]]\nid='a'\nrun='x'\n").contains("invalid parameter name"));
    }
}

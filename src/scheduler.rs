//! What runs next: pure decisions from the flow and the folded state, no I/O.
//!
//! [`Scheduler`] keeps, for every step, how many of its needs are not done yet (succeeded
//! or skipped), and the set of steps whose needs all are: the candidates. It is told which
//! step's status changed after each event, so deciding costs time in proportion to what
//! changed, not to the size of the flow: a 100,000-step flow is scheduled as cheaply per
//! step as a 10-step one. [`decide`] then says what to do with a candidate: start it, skip
//! it (and why), or wait.

use std::collections::{BTreeMap, BTreeSet};

use crate::expr;
use crate::flow::Flow;
use crate::journal::{GateOutcome, RunOutcome};
use crate::state::{RunState, StepStatus};

/// Ready steps of one run, maintained incrementally.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// For each step, the steps that need it.
    dependents: Vec<Vec<usize>>,
    /// For each step, how many of its needs are not done.
    unmet: Vec<usize>,
    /// The status each step had when last synced.
    status: Vec<StepStatus>,
    /// Steps with every need done that are waiting to (re)start, in file order.
    open: BTreeSet<usize>,
    /// Steps that failed for good.
    failed: usize,
}

impl Scheduler {
    pub fn new(flow: &Flow, state: &RunState) -> Scheduler {
        let n = flow.steps.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, step) in flow.steps.iter().enumerate() {
            for &need in &step.needs {
                dependents[need].push(i);
            }
        }
        let mut s = Scheduler {
            dependents,
            unmet: flow.steps.iter().map(|s| s.needs.len()).collect(),
            status: vec![StepStatus::Pending; n],
            open: BTreeSet::new(),
            failed: 0,
        };
        s.open.extend((0..n).filter(|&i| s.unmet[i] == 0));
        s.sync_all(state);
        s
    }

    /// Takes note of step `i`'s status in `state` (call after every event about it).
    pub fn sync(&mut self, state: &RunState, i: usize) {
        let new = state.steps[i].status;
        let old = std::mem::replace(&mut self.status[i], new);
        if old == new {
            return;
        }
        if !old.is_done() && new.is_done() {
            for k in 0..self.dependents[i].len() {
                let d = self.dependents[i][k];
                self.unmet[d] -= 1;
                self.refresh(d);
            }
        } else if old.is_done() && !new.is_done() {
            for k in 0..self.dependents[i].len() {
                let d = self.dependents[i][k];
                self.unmet[d] += 1;
                self.refresh(d);
            }
        }
        self.failed = self.failed + usize::from(new.is_failure()) - usize::from(old.is_failure());
        self.refresh(i);
    }

    /// Takes note of every step (after run-level events such as a resume).
    /// Takes in steps appended to the flow (a called flow's), then syncs them.
    pub fn grow(&mut self, flow: &Flow, state: &RunState) {
        let old = self.status.len();
        for i in old..flow.steps.len() {
            self.dependents.push(Vec::new());
            self.unmet.push(flow.steps[i].needs.len());
            self.status.push(StepStatus::Pending);
        }
        for i in old..flow.steps.len() {
            for &need in &flow.steps[i].needs {
                self.dependents[need].push(i);
                if self.status[need].is_done() {
                    self.unmet[i] -= 1;
                }
            }
            self.refresh(i);
        }
        for i in old..flow.steps.len().min(state.steps.len()) {
            self.sync(state, i);
        }
    }

    pub fn sync_all(&mut self, state: &RunState) {
        for i in 0..self.status.len() {
            self.sync(state, i);
        }
    }

    fn refresh(&mut self, i: usize) {
        let waiting =
            matches!(self.status[i], StepStatus::Pending | StepStatus::Interrupted | StepStatus::Retrying);
        if waiting && self.unmet[i] == 0 {
            self.open.insert(i);
        } else {
            self.open.remove(&i);
        }
    }

    /// Steps not running or finished whose needs are all done, in file order; [`decide`]
    /// says what to do with each. The caller applies `--jobs` and retry delays.
    pub fn candidates(&self) -> impl Iterator<Item = usize> + '_ {
        self.open.iter().copied()
    }

    pub fn is_candidate(&self, i: usize) -> bool {
        self.open.contains(&i)
    }

    /// Some step has failed for good: only retries under way and clean-up steps start.
    pub fn failing(&self) -> bool {
        self.failed > 0
    }
}

/// What to do with a candidate step.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Start,
    /// Journal the visit as skipped, with this reason.
    Skip(String),
    /// Not now: a failure holds it back, or a router has not decided yet.
    Wait,
}

/// Decides about step `i`, a candidate (or a clean-up step [`released`] by a failure).
/// Conditions are evaluated here, once per visit: the caller journals the result, and a
/// resumed run never evaluates it again.
///
/// A step a router did not choose is skipped, except while the router's choice is on a
/// loop back to the router: the router will decide again, so the step waits; only when
/// nothing else can move (`settle`) is it skipped for good.
pub fn decide(flow: &Flow, state: &RunState, i: usize, failing: bool, settle: bool) -> Action {
    let step = &flow.steps[i];
    let st = &state.steps[i];
    let handles_failure = step.handles_failure;
    if !st.new_visit {
        // The visit was decided already: this is another attempt of it.
        let go = !failing || st.status == StepStatus::Retrying || handles_failure;
        return if go { Action::Start } else { Action::Wait };
    }
    let mut skipped: Option<String> = None;
    let mut broken = false;
    for &n in &step.needs {
        let need = &state.steps[n];
        match need.status {
            StepStatus::Succeeded if !flow.steps[n].next.is_empty() => match need.route() {
                None => return Action::Wait,
                Some(d) if d.chosen.as_deref() != Some(step.id.as_str()) => {
                    let looping = d
                        .chosen
                        .as_deref()
                        .and_then(|c| state.step_pos(c))
                        .is_some_and(|c| flow.steps[n].loop_mates.contains(&c));
                    if looping && !settle {
                        return Action::Wait;
                    }
                    let chosen = d.chosen.as_deref().unwrap_or("nothing");
                    skipped.get_or_insert_with(|| format!("not routed: `{}` chose `{chosen}`", need.id));
                }
                Some(_) => {}
            },
            StepStatus::Succeeded | StepStatus::Continued => {}
            StepStatus::Skipped => {
                skipped.get_or_insert_with(|| format!("`{}` was skipped", need.id));
            }
            _ => broken = true,
        }
    }
    if !handles_failure {
        if failing || broken {
            return Action::Wait;
        }
        if let Some(reason) = skipped {
            return Action::Skip(reason);
        }
    }
    match &step.cond {
        None => Action::Start,
        Some(c) if c.is_true(&Conditions::of(flow, state, i, failing || broken)) => Action::Start,
        Some(c) => Action::Skip(format!("condition is false: {}", c.source())),
    }
}

/// Clean-up steps that may be decided now that the run is failing and nothing else can
/// make progress: pending, with an `if` that handles failure, and no need still able to
/// finish (running, or itself such a clean-up step). O(steps); called only when idle.
pub fn released(flow: &Flow, state: &RunState) -> Vec<usize> {
    let waiting = |i: usize| {
        let st = &state.steps[i];
        st.new_visit && st.status == StepStatus::Pending && flow.steps[i].handles_failure
    };
    (0..flow.steps.len())
        .filter(|&i| {
            waiting(i)
                && flow.steps[i].needs.iter().all(|&n| {
                    !waiting(n)
                        && !matches!(state.steps[n].status, StepStatus::Running | StepStatus::Retrying)
                })
        })
        .collect()
}

/// What a condition sees: parameters, outputs and statuses from the folded state, with
/// names as the step's own flow knows them (inside a called flow: its ids, its params).
struct Conditions<'a> {
    state: &'a RunState,
    failing: bool,
    scope: &'a str,
    params: &'a std::collections::BTreeMap<String, String>,
    /// A gate sees its own step's outputs before they are recorded: (id in scope, outputs).
    own: Option<(&'a str, &'a BTreeMap<String, String>)>,
}

impl<'a> Conditions<'a> {
    fn of(flow: &'a Flow, state: &'a RunState, i: usize, failing: bool) -> Conditions<'a> {
        let step = &flow.steps[i];
        let frame = step.frame.and_then(|f| state.frames.get(f as usize - 1));
        Conditions {
            state,
            failing,
            scope: &step.scope,
            params: frame.map_or(&state.params, |f| &f.call.params),
            own: None,
        }
    }

    fn step(&self, id: &str) -> Option<&crate::state::StepState> {
        if self.scope.is_empty() {
            self.state.step(id)
        } else {
            self.state.step(&format!("{}{id}", self.scope))
        }
    }
}

impl expr::Context for Conditions<'_> {
    fn param(&self, name: &str) -> Option<String> {
        self.params.get(name).cloned()
    }

    fn output(&self, step: &str, key: &str) -> Option<String> {
        if let Some((id, outputs)) = self.own
            && id == step
        {
            return outputs.get(key).cloned();
        }
        self.step(step)?.outputs()?.get(key).cloned()
    }

    fn status(&self, step: &str) -> Option<String> {
        self.step(step).map(|s| s.status.as_str().to_string())
    }

    fn success(&self) -> bool {
        !self.failure()
    }

    fn failure(&self) -> bool {
        self.failing || self.state.count(StepStatus::Failed) + self.state.count(StepStatus::Rejected) > 0
    }
}

/// Evaluates router `i`'s rule condition against the state.
pub fn holds(flow: &Flow, cond: &expr::Expr, state: &RunState, i: usize) -> bool {
    cond.is_true(&Conditions::of(flow, state, i, false))
}

/// Step `i`'s gate on the outputs of the attempt that just succeeded: the verdict, and
/// every value its conditions read, by the name they read it with.
pub fn gate_verdict(
    flow: &Flow,
    state: &RunState,
    i: usize,
    gate: &crate::flow::Gate,
    outputs: &BTreeMap<String, String>,
) -> (GateOutcome, BTreeMap<String, Option<String>>) {
    let step = &flow.steps[i];
    let own_id = step.id.strip_prefix(step.scope.as_str()).unwrap_or(&step.id);
    let ctx = Conditions { own: Some((own_id, outputs)), ..Conditions::of(flow, state, i, false) };
    let outcome = if gate.pass.is_true(&ctx) {
        GateOutcome::Pass
    } else if gate.warn.as_ref().is_some_and(|w| w.is_true(&ctx)) {
        GateOutcome::Warn
    } else {
        GateOutcome::Block
    };
    let mut values = BTreeMap::new();
    for r in gate.pass.refs().into_iter().chain(gate.warn.iter().flat_map(|w| w.refs())) {
        use expr::Context;
        let (name, value) = match r {
            expr::Ref::Param { name, .. } => (format!("params.{name}"), ctx.param(&name)),
            expr::Ref::Output { step, key, .. } => {
                let v = ctx.output(&step, &key);
                (format!("steps.{step}.outputs.{key}"), v)
            }
            expr::Ref::Status { step, .. } => (format!("steps.{step}.status"), ctx.status(&step)),
        };
        values.insert(name, value);
    }
    (outcome, values)
}

/// The run's result once nothing runs and nothing can start.
pub fn outcome(state: &RunState) -> RunOutcome {
    if state.steps.iter().all(|s| s.status.is_done()) { RunOutcome::Succeeded } else { RunOutcome::Failed }
}

/// Steps that failed for good, in flow order.
pub fn failed_steps(state: &RunState) -> Vec<String> {
    state.steps.iter().filter(|s| s.status.is_failure()).map(|s| s.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::*;
    use std::path::Path;

    fn setup(flow: &str) -> (Flow, RunState) {
        let flow = Flow::from_bytes(Path::new("f.toml"), flow.as_bytes()).expect("valid");
        let rec = Record::new(
            1,
            "t".into(),
            Event::RunStarted(RunStarted {
                run_id: "r".into(),
                flow: "f".into(),
                flow_path: "f.toml".into(),
                flow_hash: flow.hash.clone(),
                params: Default::default(),
                workdir: "/".into(),
                steps: flow.steps.iter().map(|s| s.id.clone()).collect(),
                journal_format: 1,
                profile: None,
                trigger_file: None,
                executor: None,
                session: Session {
                    pid: 1,
                    host: "h".into(),
                    boot_id: "b".into(),
                    jobs: 1,
                    runner_version: "v".into(),
                },
            }),
        );
        let state = RunState::from_first(&rec).expect("fold");
        (flow, state)
    }

    const DIAMOND: &str = "[[steps]]\nid='a'\nrun='x'\n[[steps]]\nid='b'\nrun='x'\nneeds=['a']\n\
        [[steps]]\nid='c'\nrun='x'\nneeds=['a']\n[[steps]]\nid='d'\nrun='x'\nneeds=['b','c']\n";

    /// Sets a status and tells the scheduler, as the session does after each event.
    fn set(s: &mut Scheduler, state: &mut RunState, i: usize, status: StepStatus) {
        state.steps[i].status = status;
        state.steps[i].new_visit = status == StepStatus::Pending;
        s.sync(state, i);
    }

    /// The candidates that `decide` would start.
    fn ready_in(s: &Scheduler, flow: &Flow, state: &RunState) -> Vec<usize> {
        s.candidates().filter(|&i| decide(flow, state, i, s.failing(), false) == Action::Start).collect()
    }

    #[test]
    fn roots_first_then_dependents_when_needs_succeed() {
        let (flow, mut state) = setup(DIAMOND);
        let mut s = Scheduler::new(&flow, &state);
        assert_eq!(ready_in(&s, &flow, &state), vec![0]);
        set(&mut s, &mut state, 0, StepStatus::Running);
        assert!(ready_in(&s, &flow, &state).is_empty());
        set(&mut s, &mut state, 0, StepStatus::Succeeded);
        assert_eq!(ready_in(&s, &flow, &state), vec![1, 2]);
        set(&mut s, &mut state, 1, StepStatus::Succeeded);
        set(&mut s, &mut state, 2, StepStatus::Retrying);
        assert_eq!(ready_in(&s, &flow, &state), vec![2]);
        set(&mut s, &mut state, 2, StepStatus::Succeeded);
        assert_eq!(ready_in(&s, &flow, &state), vec![3]);
        set(&mut s, &mut state, 3, StepStatus::Succeeded);
        assert!(ready_in(&s, &flow, &state).is_empty());
        assert_eq!(outcome(&state), RunOutcome::Succeeded);
    }

    #[test]
    fn a_failure_stops_new_starts_but_not_retries_under_way() {
        let (flow, mut state) = setup(DIAMOND);
        let mut s = Scheduler::new(&flow, &state);
        set(&mut s, &mut state, 0, StepStatus::Succeeded);
        set(&mut s, &mut state, 1, StepStatus::Failed);
        assert!(ready_in(&s, &flow, &state).is_empty());
        set(&mut s, &mut state, 2, StepStatus::Retrying);
        assert_eq!(ready_in(&s, &flow, &state), vec![2]);
        assert!(s.is_candidate(2) && !s.is_candidate(3));
        set(&mut s, &mut state, 2, StepStatus::Failed);
        assert_eq!(outcome(&state), RunOutcome::Failed);
        assert_eq!(failed_steps(&state), vec!["b", "c"]);
        // A resume makes failed steps pending again (in the same visit).
        state.steps[1].status = StepStatus::Pending;
        state.steps[2].status = StepStatus::Pending;
        state.steps[1].new_visit = false;
        state.steps[2].new_visit = false;
        s.sync_all(&state);
        assert_eq!(ready_in(&s, &flow, &state), vec![1, 2]);
    }

    #[test]
    fn a_step_that_stops_being_succeeded_blocks_its_dependents_again() {
        let (flow, mut state) = setup(DIAMOND);
        let mut s = Scheduler::new(&flow, &state);
        set(&mut s, &mut state, 0, StepStatus::Succeeded);
        assert_eq!(ready_in(&s, &flow, &state), vec![1, 2]);
        set(&mut s, &mut state, 0, StepStatus::Pending);
        assert_eq!(ready_in(&s, &flow, &state), vec![0]);
    }

    #[test]
    fn starting_from_a_folded_state_matches_step_by_step() {
        let (flow, mut state) = setup(DIAMOND);
        state.steps[0].status = StepStatus::Succeeded;
        state.steps[1].status = StepStatus::Interrupted;
        state.steps[0].new_visit = false;
        state.steps[1].new_visit = false;
        let s = Scheduler::new(&flow, &state);
        assert_eq!(ready_in(&s, &flow, &state), vec![1, 2]);
    }

    #[test]
    fn a_long_chain_is_scheduled_one_step_at_a_time() {
        let mut toml = String::new();
        for i in 0..2000 {
            toml.push_str(&format!("[[steps]]\nid='s{i}'\nrun='x'\n"));
        }
        let (flow, mut state) = setup(&toml);
        let mut s = Scheduler::new(&flow, &state);
        for i in 0..2000 {
            assert_eq!(ready_in(&s, &flow, &state), vec![i]);
            set(&mut s, &mut state, i, StepStatus::Succeeded);
        }
        assert!(ready_in(&s, &flow, &state).is_empty());
    }
}

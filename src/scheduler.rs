//! What runs next: pure decisions from the flow and the folded state, no I/O.
//!
//! [`Scheduler`] keeps, for every step, how many of its needs have not succeeded yet, and
//! the set of steps that could start. It is told which step's status changed after each
//! event, so deciding costs time in proportion to what changed, not to the size of the
//! flow: a 100,000-step flow is scheduled as cheaply per step as a 10-step one.

use std::collections::BTreeSet;

use crate::flow::Flow;
use crate::journal::RunOutcome;
use crate::state::{RunState, StepStatus};

/// Ready steps of one run, maintained incrementally.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// For each step, the steps that need it.
    dependents: Vec<Vec<usize>>,
    /// For each step, how many of its needs have not succeeded.
    unmet: Vec<usize>,
    /// The status each step had when last synced.
    status: Vec<StepStatus>,
    /// Steps with every need succeeded that are waiting to (re)start, in file order.
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
        let succeeded = StepStatus::Succeeded;
        if old != succeeded && new == succeeded {
            for k in 0..self.dependents[i].len() {
                let d = self.dependents[i][k];
                self.unmet[d] -= 1;
                self.refresh(d);
            }
        } else if old == succeeded && new != succeeded {
            for k in 0..self.dependents[i].len() {
                let d = self.dependents[i][k];
                self.unmet[d] += 1;
                self.refresh(d);
            }
        }
        self.failed =
            self.failed + usize::from(new == StepStatus::Failed) - usize::from(old == StepStatus::Failed);
        self.refresh(i);
    }

    /// Takes note of every step (after run-level events such as a resume).
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

    /// Steps that may start now, in file order: not yet succeeded or running, and every
    /// need succeeded. Once a step has failed for good no new step starts; steps already
    /// under way finish, and that includes one waiting to retry. The caller applies
    /// `--jobs` and retry delays.
    pub fn ready(&self) -> impl Iterator<Item = usize> + '_ {
        let failed = self.failed > 0;
        self.open.iter().copied().filter(move |&i| !failed || self.status[i] == StepStatus::Retrying)
    }

    pub fn is_idle(&self) -> bool {
        self.ready().next().is_none()
    }

    pub fn is_ready(&self, i: usize) -> bool {
        self.open.contains(&i) && (self.failed == 0 || self.status[i] == StepStatus::Retrying)
    }
}

/// The run's result once nothing runs and nothing can start.
pub fn outcome(state: &RunState) -> RunOutcome {
    if state.steps.iter().all(|s| s.status == StepStatus::Succeeded) {
        RunOutcome::Succeeded
    } else {
        RunOutcome::Failed
    }
}

/// Steps that failed for good, in flow order.
pub fn failed_steps(state: &RunState) -> Vec<String> {
    state.steps.iter().filter(|s| s.status == StepStatus::Failed).map(|s| s.id.clone()).collect()
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
        s.sync(state, i);
    }

    fn ready(s: &Scheduler) -> Vec<usize> {
        s.ready().collect()
    }

    #[test]
    fn roots_first_then_dependents_when_needs_succeed() {
        let (flow, mut state) = setup(DIAMOND);
        let mut s = Scheduler::new(&flow, &state);
        assert_eq!(ready(&s), vec![0]);
        set(&mut s, &mut state, 0, StepStatus::Running);
        assert!(s.is_idle());
        set(&mut s, &mut state, 0, StepStatus::Succeeded);
        assert_eq!(ready(&s), vec![1, 2]);
        set(&mut s, &mut state, 1, StepStatus::Succeeded);
        set(&mut s, &mut state, 2, StepStatus::Retrying);
        assert_eq!(ready(&s), vec![2]);
        set(&mut s, &mut state, 2, StepStatus::Succeeded);
        assert_eq!(ready(&s), vec![3]);
        set(&mut s, &mut state, 3, StepStatus::Succeeded);
        assert!(s.is_idle());
        assert_eq!(outcome(&state), RunOutcome::Succeeded);
    }

    #[test]
    fn a_failure_stops_new_starts_but_not_retries_under_way() {
        let (flow, mut state) = setup(DIAMOND);
        let mut s = Scheduler::new(&flow, &state);
        set(&mut s, &mut state, 0, StepStatus::Succeeded);
        set(&mut s, &mut state, 1, StepStatus::Failed);
        assert!(s.is_idle(), "{:?}", ready(&s));
        set(&mut s, &mut state, 2, StepStatus::Retrying);
        assert_eq!(ready(&s), vec![2]);
        assert!(s.is_ready(2) && !s.is_ready(3));
        set(&mut s, &mut state, 2, StepStatus::Failed);
        assert_eq!(outcome(&state), RunOutcome::Failed);
        assert_eq!(failed_steps(&state), vec!["b", "c"]);
        // A resume makes failed steps pending again.
        state.steps[1].status = StepStatus::Pending;
        state.steps[2].status = StepStatus::Pending;
        s.sync_all(&state);
        assert_eq!(ready(&s), vec![1, 2]);
    }

    #[test]
    fn a_step_that_stops_being_succeeded_blocks_its_dependents_again() {
        let (flow, mut state) = setup(DIAMOND);
        let mut s = Scheduler::new(&flow, &state);
        set(&mut s, &mut state, 0, StepStatus::Succeeded);
        assert_eq!(ready(&s), vec![1, 2]);
        set(&mut s, &mut state, 0, StepStatus::Pending);
        assert_eq!(ready(&s), vec![0]);
    }

    #[test]
    fn starting_from_a_folded_state_matches_step_by_step() {
        let (flow, mut state) = setup(DIAMOND);
        state.steps[0].status = StepStatus::Succeeded;
        state.steps[1].status = StepStatus::Interrupted;
        let s = Scheduler::new(&flow, &state);
        assert_eq!(ready(&s), vec![1, 2]);
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
            assert_eq!(ready(&s), vec![i]);
            set(&mut s, &mut state, i, StepStatus::Succeeded);
        }
        assert!(s.is_idle());
    }
}

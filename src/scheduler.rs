//! What runs next: pure decisions from the flow and the folded state, no I/O.

use crate::flow::Flow;
use crate::journal::RunOutcome;
use crate::state::{RunState, StepStatus};

/// Steps that may start now, in file order: not yet succeeded or running, and every need
/// succeeded. Once a step has failed for good no new step starts; steps already under way
/// finish, and that includes one waiting to retry. The caller applies `--jobs` and retry
/// delays.
pub fn ready(flow: &Flow, state: &RunState) -> Vec<usize> {
    let failed = has_failed(state);
    flow.steps
        .iter()
        .enumerate()
        .filter(|(i, step)| {
            let waiting = match state.steps[*i].status {
                StepStatus::Retrying => true,
                StepStatus::Pending | StepStatus::Interrupted => !failed,
                _ => false,
            };
            waiting && step.needs.iter().all(|&n| state.steps[n].status == StepStatus::Succeeded)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Whether some step failed after its retries.
pub fn has_failed(state: &RunState) -> bool {
    state.steps.iter().any(|s| s.status == StepStatus::Failed)
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

    #[test]
    fn roots_first_then_dependents_when_needs_succeed() {
        let (flow, mut state) = setup(DIAMOND);
        assert_eq!(ready(&flow, &state), vec![0]);
        state.steps[0].status = StepStatus::Running;
        assert!(ready(&flow, &state).is_empty());
        state.steps[0].status = StepStatus::Succeeded;
        assert_eq!(ready(&flow, &state), vec![1, 2]);
        state.steps[1].status = StepStatus::Succeeded;
        state.steps[2].status = StepStatus::Retrying;
        assert_eq!(ready(&flow, &state), vec![2]);
        state.steps[2].status = StepStatus::Succeeded;
        assert_eq!(ready(&flow, &state), vec![3]);
        state.steps[3].status = StepStatus::Succeeded;
        assert!(ready(&flow, &state).is_empty());
        assert_eq!(outcome(&state), RunOutcome::Succeeded);
    }

    #[test]
    fn a_failure_stops_new_starts_but_not_retries_under_way() {
        let (flow, mut state) = setup(DIAMOND);
        state.steps[0].status = StepStatus::Succeeded;
        state.steps[1].status = StepStatus::Failed;
        assert!(ready(&flow, &state).is_empty());
        state.steps[2].status = StepStatus::Retrying;
        assert_eq!(ready(&flow, &state), vec![2]);
        state.steps[2].status = StepStatus::Failed;
        assert_eq!(outcome(&state), RunOutcome::Failed);
        assert_eq!(failed_steps(&state), vec!["b", "c"]);
    }

    #[test]
    fn interrupted_steps_run_again() {
        let (flow, mut state) = setup(DIAMOND);
        state.steps[0].status = StepStatus::Interrupted;
        assert_eq!(ready(&flow, &state), vec![0]);
    }
}

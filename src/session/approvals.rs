//! Approvals: a person's verdict on a step that waits, recorded under the run's lock.
//!
//! The run is opened as for a resume (lock, torn tail, flow check) but not taken over: the
//! verdict is journaled on its own, so a cron line's next `runner resume` picks it up. A
//! rejection of a router is routed at once, in the same commit, so the decision and where
//! it leads are one durable fact.

use super::open::{Opened, open_locked};
use super::{OpenError, Session, SessionError, SessionOptions};
use crate::journal::{ApprovalDecided, Decision, Event};
use crate::state::StepStatus;
use crate::store::RunsDir;

/// What `runner approve` / `runner reject` says.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub step: String,
    pub decision: Decision,
    pub by: String,
    pub comment: Option<String>,
}

/// Records `verdict` on run `run_id` and returns the session, still holding the run's
/// lock: the caller drives it on (`--resume`, after [`Session::take_over_now`]) or
/// [`Session::close`]s it.
pub fn decide(
    runs: &RunsDir,
    run_id: &str,
    verdict: &Verdict,
    opts: &SessionOptions,
) -> Result<Box<Session>, OpenError> {
    let refused = |why: String| OpenError::Approval { run_id: run_id.to_string(), why };
    let Opened::Ready(mut session, _) = open_locked(runs, run_id, opts)? else {
        return Err(refused("the run has succeeded; no step waits for approval".into()));
    };
    session.apply_verdict(verdict)?.map_err(refused)?;
    session.commit()?;
    Ok(session)
}

impl Session {
    /// Checks the verdict against the run and journals it (`Ok(Err(why))` if it does not
    /// apply; nothing is recorded then).
    fn apply_verdict(&mut self, v: &Verdict) -> Result<Result<(), String>, SessionError> {
        let waiting: Vec<&str> = self
            .state
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Waiting)
            .map(|s| s.id.as_str())
            .collect();
        let waiting_list = if waiting.is_empty() {
            "no step of it waits for approval".to_string()
        } else {
            format!("waiting for approval: {}", waiting.join(", "))
        };
        let Some(i) = self.state.step_pos(&v.step) else {
            return Ok(Err(format!("no step `{}` in this run ({waiting_list})", v.step)));
        };
        let st = &self.state.steps[i];
        let reconsidered = st.status == StepStatus::Rejected && v.decision == Decision::Approved;
        if st.status != StepStatus::Waiting && !reconsidered {
            return Ok(Err(format!(
                "step `{}` is not waiting for approval: it is {} ({waiting_list})",
                v.step,
                st.status.as_str()
            )));
        }
        let Some(request) = st.approvals.last() else {
            return Ok(Err(format!("step `{}` has no approval request", v.step)));
        };
        if !request.approvers.is_empty() && !request.approvers.contains(&v.by) {
            return Ok(Err(format!(
                "`{}` may not decide on `{}`: its approvers are {}",
                v.by,
                v.step,
                request.approvers.join(", ")
            )));
        }
        let router = !self.flow.steps[i].next.is_empty();
        if v.decision == Decision::Rejected && router && self.state.running_steps().next().is_some() {
            return Ok(Err(format!(
                "attempts of this run are still recorded as running (its runner died): run `runner \
                 resume --run-id {}` first; it pauses at `{}` again, and then the rejection can route",
                self.state.run_id, v.step
            )));
        }
        let event = ApprovalDecided {
            step: v.step.clone(),
            visit: request.visit,
            decision: v.decision,
            by: v.by.clone(),
            comment: v.comment.clone(),
        };
        self.record(Event::ApprovalDecided(event))?;
        if v.decision == Decision::Rejected && router {
            self.route(i)?;
        }
        Ok(Ok(()))
    }

    /// Takes the run over after a verdict (`approve --resume`), as `runner resume` would.
    pub fn take_over_now(&mut self, jobs: usize) -> Result<(), SessionError> {
        self.take_over(jobs, None)
    }

    /// Lets go of a run this process did not drive: snapshot and projection, then the lock.
    pub fn close(mut self: Box<Self>) {
        self.snapshot();
        self.settle_projection();
    }
}

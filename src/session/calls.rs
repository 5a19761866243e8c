//! Sub-flows inside a session: pushing a frame, noticing when it is done, and rebuilding
//! the plan of a resumed run from the frames its journal recorded.
//!
//! A call copies the callee's file into `calls/` (durably, before the event that names
//! it), lays the callee's steps out in the plan under the caller's name, and journals
//! `CallPushed`. When every step of the frame is done, `CallReturned` pops it: the caller
//! succeeds with the callee's outputs, or — for `on_failure` — is retried, failed or
//! continued. A crash inside a callee resumes inside it: the frame stays open until then.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Session, SessionError};
use crate::flow::{self, Flow, MAX_CALL_DEPTH};
use crate::journal::{CallPushed, CallReason, CallReturned, Event};
use crate::state::{RunState, StepStatus};

/// Called flows' copies, in the run directory.
pub const CALLS_DIR: &str = "calls";

/// Where a frame's steps live: `caller/step`, or `caller/on_failure/step`.
fn frame_prefix(step: &str, reason: CallReason) -> String {
    match reason {
        CallReason::Call => format!("{step}/"),
        CallReason::OnFailure => format!("{step}/on_failure/"),
    }
}

/// Lays a callee's steps out in the plan for frame `frame`: appended the first time, and
/// in place of the same steps when the frame is pushed again (a new visit of the caller,
/// or another failure), so the plan always runs the copy the journal names.
fn lay_out(
    plan: &mut Flow,
    callee: &Flow,
    reason: CallReason,
    caller: &str,
    frame: u32,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let prefix = frame_prefix(caller, reason);
    let first = format!("{prefix}{}", callee.steps[0].id);
    let at = plan.steps.iter().position(|s| s.id == first).unwrap_or(plan.steps.len());
    let steps = flow::instantiate(callee, &prefix, frame, at);
    // The callee's services join under the same prefix, with what its steps see: its
    // `env`, its parameters (as `with` set them) and its flow-level secrets.
    for (name, service) in &callee.services {
        let mut service = (**service).clone();
        let mut env = callee.env.clone();
        env.extend(params.iter().map(|(k, v)| (flow::param_env_name(k), v.clone())));
        env.extend(std::mem::take(&mut service.env));
        service.env = env;
        for secret in &callee.secrets {
            if !service.secrets.contains(secret) {
                service.secrets.push(secret.clone());
            }
        }
        plan.services.insert(format!("{prefix}{name}"), std::sync::Arc::new(service));
    }
    if at == plan.steps.len() {
        plan.steps.extend(steps);
        return Ok(());
    }
    let same = plan
        .steps
        .get(at..at + steps.len())
        .is_some_and(|old| old.iter().zip(&steps).all(|(a, b)| a.id == b.id));
    if !same {
        return Err(format!(
            "{} no longer has the steps it had when `{caller}` first called it",
            callee.path.display()
        ));
    }
    plan.steps.splice(at..at + steps.len(), steps);
    Ok(())
}

impl Session {
    /// Starts step `idx`'s call (a `call` step's attempt, or a failed step's `on_failure`).
    pub(super) fn start_call(&mut self, idx: usize, reason: CallReason) -> Result<(), SessionError> {
        let step = &self.flow.steps[idx];
        let st = &self.state.steps[idx];
        let (call, then) = match (reason, step.call.as_deref(), step.on_failure.as_deref()) {
            (CallReason::Call, Some(c), _) => (c.clone(), None),
            (CallReason::OnFailure, _, Some(f)) => (f.call.clone(), Some(f.then)),
            _ => return Ok(()),
        };
        let (visit, attempt) = match reason {
            CallReason::Call => (st.next_visit(), st.next_attempt()),
            CallReason::OnFailure => st.last_attempt().map_or((1, 1), |a| (a.visit, a.attempt)),
        };
        let frame = self.state.frames.len() as u32 + 1;
        let caller = step.id.clone();
        let prepared = self.prepare_call(idx, &call, frame).and_then(|(callee, source, copy, params)| {
            lay_out(&mut self.flow, &callee, reason, &caller, frame, &params)?;
            Ok((callee, source, copy, params))
        });
        match prepared {
            Ok((callee, source, copy, params)) => {
                let prefix = frame_prefix(&caller, reason);
                self.record(Event::CallPushed(CallPushed {
                    frame,
                    steps: callee.steps.iter().map(|s| format!("{prefix}{}", s.id)).collect(),
                    step: caller,
                    visit,
                    attempt,
                    reason,
                    flow: source,
                    copy,
                    flow_hash: callee.hash,
                    params,
                    then,
                }))
            }
            // A call that cannot start is a failed attempt, like a command that cannot.
            Err(message) if reason == CallReason::Call => {
                self.record_unstartable(idx, visit, attempt, crate::journal::FailReason::Spawn, message)
            }
            Err(message) => {
                self.report.warn(&format!("`{caller}`: on_failure cannot run: {message}"));
                Ok(())
            }
        }
    }

    /// How many frames enclose step `idx`.
    fn call_depth(&self, idx: usize) -> usize {
        let mut depth = 0;
        let mut frame = self.flow.steps[idx].frame;
        while let Some(f) = frame.and_then(|f| self.state.frames.get(f as usize - 1)) {
            depth += 1;
            frame = self.state.step_pos(&f.call.step).and_then(|i| self.flow.steps[i].frame);
        }
        depth
    }

    /// Finds, checks and copies the callee. Returns it with its source path (as recorded),
    /// the copy's path in the run directory, and its parameters.
    fn prepare_call(
        &self,
        idx: usize,
        call: &flow::Call,
        frame: u32,
    ) -> Result<(Flow, String, String, BTreeMap<String, String>), String> {
        if self.call_depth(idx) >= MAX_CALL_DEPTH {
            return Err(format!("calls nest deeper than {MAX_CALL_DEPTH} flows"));
        }
        let workdir = Path::new(&self.state.workdir);
        let caller_file: PathBuf =
            match self.flow.steps[idx].frame.and_then(|f| self.state.frames.get(f as usize - 1)) {
                Some(f) => workdir.join(&f.call.flow),
                None => workdir.join(&self.state.flow_path),
            };
        let path = flow::resolve_call(&caller_file, workdir, &call.target)?;
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let callee = Flow::from_bytes(&path, &bytes).map_err(|e| e.to_string())?;
        let params = flow::call_params(&callee, &call.with)?;
        let source = path.strip_prefix(workdir).unwrap_or(&path).to_string_lossy().into_owned();
        let copy = format!("{CALLS_DIR}/{frame}-{}.toml", callee.name);
        crate::fsutil::write_durable(&self.dir.join(&copy), "call-copy", &bytes)
            .map_err(|e| format!("cannot copy {} into the run: {e}", path.display()))?;
        Ok((callee, source, copy, params))
    }

    /// After an event about step `idx`: runs a failed step's `on_failure` (once per visit),
    /// and pops the step's frame once every step of it is done.
    pub(super) fn after_step_event(&mut self, idx: usize) -> Result<(), SessionError> {
        let st = &self.state.steps[idx];
        if st.status == StepStatus::Failed
            && st.retry_in_ms.is_none()
            && self.flow.steps[idx].on_failure.is_some()
            && self.stop.is_none()
        {
            let used = self.state.frames.iter().any(|f| {
                f.call.step == st.id && f.call.visit == st.visit && f.call.reason == CallReason::OnFailure
            });
            if !used {
                return self.start_call(idx, CallReason::OnFailure);
            }
        }
        if !st.status.is_done() {
            return Ok(());
        }
        let Some(frame) = self.flow.steps[idx].frame else { return Ok(()) };
        let Some(f) = self.state.frames.get(frame as usize - 1).filter(|f| f.returned_at.is_none()) else {
            return Ok(());
        };
        let positions: Vec<usize> = f.call.steps.iter().filter_map(|id| self.state.step_pos(id)).collect();
        if !positions.iter().all(|&i| self.state.steps[i].status.is_done()) {
            return Ok(());
        }
        let mut outputs = BTreeMap::new();
        for &i in &positions {
            outputs.extend(self.state.steps[i].outputs().cloned().unwrap_or_default());
        }
        let caller = f.call.step.clone();
        let caller_pos = self.state.step_pos(&caller);
        self.record(Event::CallReturned(CallReturned { frame, step: caller, outputs }))?;
        match caller_pos {
            Some(c) => self.after_step_event(c),
            None => Ok(()),
        }
    }
}

/// The plan of a run with frames: its flow, then each called flow's steps from the copies
/// in the run directory, laid out in the order the journal pushed them.
pub fn plan_with_frames(mut flow: Flow, state: &RunState, dir: &Path) -> Result<Flow, String> {
    for f in &state.frames {
        let path = dir.join(&f.call.copy);
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if blake3::hash(&bytes).to_hex().as_str() != f.call.flow_hash {
            return Err(format!("{} is not the flow frame {} called", path.display(), f.call.frame));
        }
        let callee = Flow::from_bytes(&path, &bytes).map_err(|e| e.to_string())?;
        lay_out(&mut flow, &callee, f.call.reason, &f.call.step, f.call.frame, &f.call.params)?;
    }
    let same = flow.steps.len() == state.steps.len()
        && flow.steps.iter().zip(&state.steps).all(|(a, b)| a.id == b.id);
    if !same {
        return Err("the called flows' steps do not match the run's".into());
    }
    Ok(flow)
}

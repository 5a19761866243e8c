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
use crate::journal::{CallPushed, CallReason, CallReturned, Event, FailReason, StepFailed};
use crate::state::{RunState, StepStatus};

/// Called flows' copies, in the run directory.
pub const CALLS_DIR: &str = "calls";

impl Session {
    /// Starts step `idx`'s call (a `call` step's attempt, or a failed step's `on_failure`).
    pub(super) fn start_call(&mut self, idx: usize, reason: CallReason) -> Result<(), SessionError> {
        let step = &self.flow.steps[idx];
        let st = &self.state.steps[idx];
        let (call, then) = match (reason, &step.call, &step.on_failure) {
            (CallReason::Call, Some(c), _) => (c.clone(), None),
            (CallReason::OnFailure, _, Some(f)) => (f.call.clone(), Some(f.then)),
            _ => return Ok(()),
        };
        let (visit, attempt) = match reason {
            CallReason::Call => (st.next_visit(), st.next_attempt()),
            CallReason::OnFailure => st.last_attempt().map_or((1, 1), |a| (a.visit, a.attempt)),
        };
        let frame = self.state.frames.len() as u32 + 1;
        let prefix = match reason {
            CallReason::Call => format!("{}/", step.id),
            CallReason::OnFailure => format!("{}/on_failure/", step.id),
        };
        match self.prepare_call(idx, &call, frame, &prefix) {
            Ok((callee, source, copy, params)) => {
                let steps: Vec<String> = callee.steps.iter().map(|s| format!("{prefix}{}", s.id)).collect();
                let known = steps.iter().all(|id| self.state.step_pos(id).is_some());
                if !known {
                    let offset = self.flow.steps.len();
                    self.flow.steps.extend(flow::instantiate(&callee, &prefix, frame, offset));
                } else {
                    // Called again (a new visit, or another failure): the same steps run anew.
                    for id in &steps {
                        if let Some(i) = self.state.step_pos(id) {
                            self.flow.steps[i].frame = Some(frame);
                        }
                    }
                }
                self.record(Event::CallPushed(CallPushed {
                    frame,
                    step: self.flow.steps[idx].id.clone(),
                    visit,
                    attempt,
                    reason,
                    flow: source,
                    copy,
                    flow_hash: callee.hash.clone(),
                    params,
                    steps,
                    then,
                }))
            }
            Err(message) if reason == CallReason::Call => {
                // A call that cannot start is a failed attempt, like a command that cannot.
                let retry_in_ms = self.retry_after(idx, 1);
                self.record(Event::StepFailed(StepFailed {
                    step: self.flow.steps[idx].id.clone(),
                    visit,
                    attempt,
                    reason: FailReason::Spawn,
                    exit_code: None,
                    signal: None,
                    message,
                    duration_ms: 0,
                    retry_in_ms,
                }))
            }
            Err(message) => {
                self.report.warn(&format!("`{}`: on_failure cannot run: {message}", self.flow.steps[idx].id));
                Ok(())
            }
        }
    }

    /// Finds, checks and copies the callee. Returns it with its source path (as recorded),
    /// the copy's path in the run directory, and its parameters.
    fn prepare_call(
        &self,
        idx: usize,
        call: &flow::Call,
        frame: u32,
        prefix: &str,
    ) -> Result<(Flow, String, String, BTreeMap<String, String>), String> {
        let step = &self.flow.steps[idx];
        let workdir = Path::new(&self.state.workdir);
        let depth = prefix.matches('/').count() - usize::from(prefix.contains("/on_failure/"));
        if depth > MAX_CALL_DEPTH {
            return Err(format!("calls nest deeper than {MAX_CALL_DEPTH} flows"));
        }
        let caller_file: PathBuf = match step.frame.and_then(|f| self.state.frames.get(f as usize - 1)) {
            Some(f) => workdir.join(&f.flow),
            None => workdir.join(&self.state.flow_path),
        };
        let path = flow::resolve_call(&caller_file, workdir, &call.target)?;
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let callee = Flow::from_bytes(&path, &bytes).map_err(|e| e.to_string())?;
        let params = flow::call_params(&callee, &call.with)?;
        let source = path.strip_prefix(workdir).unwrap_or(&path).to_string_lossy().into_owned();
        let copy = format!("{CALLS_DIR}/{frame}-{}.toml", callee.name);
        let dir = self.dir.join(CALLS_DIR);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            crate::fsutil::sync_dir(&self.dir)?;
            crate::fsutil::write_atomic(&self.dir.join(&copy), |out| std::io::Write::write_all(out, &bytes))
        };
        write().map_err(|e| format!("cannot copy {} into the run: {e}", path.display()))?;
        Ok((callee, source, copy, params))
    }

    /// After an event about step `idx`: pops its frame if every step of it is done, and
    /// runs a failed step's `on_failure` (once per visit).
    pub(super) fn after_step_event(&mut self, idx: usize) -> Result<(), SessionError> {
        let st = &self.state.steps[idx];
        if st.status == StepStatus::Failed
            && st.retry_in_ms.is_none()
            && self.flow.steps[idx].on_failure.is_some()
            && self.stop.is_none()
        {
            let visit = st.visit;
            let used = self
                .state
                .frames
                .iter()
                .any(|f| f.step == st.id && f.visit == visit && f.reason == CallReason::OnFailure);
            if !used {
                return self.start_call(idx, CallReason::OnFailure);
            }
        }
        let Some(frame) = self.flow.steps[idx].frame else { return Ok(()) };
        let Some(f) = self.state.frames.get(frame as usize - 1) else { return Ok(()) };
        if f.returned_at.is_some() {
            return Ok(());
        }
        let positions: Vec<usize> = f.steps.iter().filter_map(|id| self.state.step_pos(id)).collect();
        if !positions.iter().all(|&i| self.state.steps[i].status.is_done()) {
            return Ok(());
        }
        let mut outputs = BTreeMap::new();
        for &i in &positions {
            outputs.extend(self.state.steps[i].outputs().cloned().unwrap_or_default());
        }
        let event = CallReturned { frame, step: f.step.clone(), outputs };
        let caller = self.state.step_pos(&f.step);
        self.record(Event::CallReturned(event))?;
        if let Some(c) = caller {
            self.after_step_event(c)?;
        }
        Ok(())
    }
}

/// The plan of a run with frames: its flow, then each called flow's steps from the copies
/// in the run directory, laid out in the order the journal pushed them.
pub fn plan_with_frames(mut flow: Flow, state: &RunState, dir: &Path) -> Result<Flow, String> {
    for f in &state.frames {
        let prefix_known = f.steps.iter().all(|id| flow.steps.iter().any(|s| &s.id == id));
        if prefix_known {
            for id in &f.steps {
                if let Some(s) = flow.steps.iter_mut().find(|s| &s.id == id) {
                    s.frame = Some(f.id);
                }
            }
            continue;
        }
        let path = dir.join(&f.copy);
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if blake3::hash(&bytes).to_hex().as_str() != f.flow_hash {
            return Err(format!("{} is not the flow frame {} called", path.display(), f.id));
        }
        let callee = Flow::from_bytes(&path, &bytes).map_err(|e| e.to_string())?;
        let prefix =
            f.steps.first().and_then(|id| id.strip_suffix(callee.steps[0].id.as_str())).unwrap_or("");
        let offset = flow.steps.len();
        flow.steps.extend(flow::instantiate(&callee, prefix, f.id, offset));
    }
    let same = flow.steps.len() == state.steps.len()
        && flow.steps.iter().zip(&state.steps).all(|(a, b)| a.id == b.id);
    if !same {
        return Err("the called flows' steps do not match the run's".into());
    }
    Ok(flow)
}

//! Approvals: a person's verdict on a step that waits.
//!
//! A run that is not live is opened as for a resume (lock, torn tail, flow check) but not
//! taken over: the verdict is journaled on its own, so a cron line's next `runner resume`
//! picks it up. A live run cannot be locked, so the verdict is checked against its journal
//! and queued in `runs/<id>/inbox/`; the live runner, which looks there while a step waits,
//! journals it (or refuses it, saying why in `<file>.refused`). A rejected router tries
//! its rules like after a success, so the decision and where it leads are both journaled.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::open::{Opened, open_locked};
use super::{OpenError, Session, SessionError, SessionOptions};
use crate::journal::{ApprovalDecided, Decision, Event};
use crate::state::{RunState, StepStatus};
use crate::store::{RunsDir, StoreError, load_run};

/// Where verdicts for a live run wait for its runner.
const INBOX_DIR: &str = "inbox";
/// How often a runner with a waiting step looks at its inbox.
pub const INBOX_POLL: Duration = Duration::from_millis(200);
/// How long `approve` on a live run waits for the runner to journal the verdict.
const QUEUE_WAIT: Duration = Duration::from_secs(30);

/// What `runner approve` / `runner reject` says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub step: String,
    pub decision: Decision,
    pub by: String,
    pub comment: Option<String>,
    /// The visit whose request it decides; `None` from the command line means the step's
    /// current request. A queued verdict always names it, so that a copy left behind by a
    /// crash can never decide a later visit's request.
    #[serde(default)]
    pub visit: Option<u32>,
}

/// How a verdict was taken.
pub enum Decided {
    /// Journaled under the run's lock; the session still holds it, to be driven on
    /// (`--resume`, after [`Session::take_over_now`]) or [`Session::close`]d.
    Locked(Box<Session>),
    /// The live runner journaled it.
    ByLiveRunner,
    /// Queued for the live runner, which had not taken it yet when we stopped waiting.
    Queued(PathBuf),
}

/// Records `verdict` on run `run_id`, under its lock, or through the live runner. With
/// `to_drive` (`--resume`), the run's secrets must resolve before the verdict is recorded.
pub fn decide(
    runs: &RunsDir,
    run_id: &str,
    verdict: &Verdict,
    opts: &SessionOptions,
    to_drive: bool,
) -> Result<Decided, OpenError> {
    let refused = |why: String| OpenError::Approval { run_id: run_id.to_string(), why };
    let deadline = Instant::now() + QUEUE_WAIT;
    let mut queued: Option<(PathBuf, Verdict)> = None;
    loop {
        match open_locked(runs, run_id, opts, to_drive) {
            Ok(Opened::Done) => {
                return Err(refused("the run has succeeded; no step waits for approval".into()));
            }
            Ok(Opened::Ready(mut session, _)) => {
                // A queued copy that the runner did not take before it stopped is ours now,
                // unless the runner journaled it and died before removing the file.
                if let Some((file, queued_verdict)) = &queued {
                    let _ = std::fs::remove_file(file);
                    if session.already_decided(queued_verdict) {
                        return Ok(Decided::Locked(session));
                    }
                }
                session.apply_verdict(verdict)?.map_err(refused)?;
                session.commit()?;
                return Ok(Decided::Locked(session));
            }
            Err(OpenError::Store(StoreError::Locked { .. })) => {}
            Err(e) => return Err(e),
        }
        let dir = runs.existing(run_id)?;
        let file = match &queued {
            Some((file, _)) => file.clone(),
            None => {
                // Checked against the journal first, so a verdict that cannot apply is
                // refused here and nothing is queued.
                let state = load_run(&dir, true, u64::MAX)?.state;
                let visit = check_verdict(&state, verdict).map_err(refused)?;
                let pinned = Verdict { visit: Some(visit), ..verdict.clone() };
                let file = enqueue(&dir, &pinned)
                    .map_err(|e| OpenError::Store(StoreError::io(&dir.join(INBOX_DIR), e)))?;
                queued = Some((file.clone(), pinned));
                file
            }
        };
        let refusal = refused_path(&file);
        if let Ok(why) = std::fs::read_to_string(&refusal) {
            let _ = std::fs::remove_file(&refusal);
            return Err(refused(why.trim().to_string()));
        }
        if !file.exists() {
            return Ok(Decided::ByLiveRunner);
        }
        if Instant::now() >= deadline {
            return Ok(Decided::Queued(file));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a verdict into the run's inbox, durably (the live runner acts on it).
fn enqueue(run_dir: &Path, verdict: &Verdict) -> std::io::Result<PathBuf> {
    let name = format!("{}-{}.json", crate::journal::now_ts().replace([':', '.'], ""), std::process::id());
    let path = run_dir.join(INBOX_DIR).join(name);
    let json = serde_json::to_vec(verdict).unwrap_or_default();
    crate::fsutil::write_durable(&path, "inbox", &json)?;
    Ok(path)
}

fn refused_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".refused");
    PathBuf::from(name)
}

/// Whether `v` applies to the run as folded: the visit it decides, or why not.
fn check_verdict(state: &RunState, v: &Verdict) -> Result<u32, String> {
    let waiting: Vec<&str> =
        state.steps.iter().filter(|s| s.status == StepStatus::Waiting).map(|s| s.id.as_str()).collect();
    let waiting_list = if waiting.is_empty() {
        "no step of it waits for approval".to_string()
    } else {
        format!("waiting for approval: {}", waiting.join(", "))
    };
    let Some(st) = state.step(&v.step) else {
        return Err(format!("no step `{}` in this run ({waiting_list})", v.step));
    };
    let reconsidered = st.status == StepStatus::Rejected && v.decision == Decision::Approved;
    if st.status != StepStatus::Waiting && !reconsidered {
        return Err(format!(
            "step `{}` is not waiting for approval: it is {} ({waiting_list})",
            v.step,
            st.status.as_str()
        ));
    }
    let Some(request) = st.approvals.last() else {
        return Err(format!("step `{}` has no approval request", v.step));
    };
    if let Some(visit) = v.visit
        && visit != request.visit
    {
        return Err(format!(
            "the request of `{}` this decided (visit {visit}) was settled already; the step now asks \
             about visit {}",
            v.step, request.visit
        ));
    }
    if !request.approvers.is_empty() && !request.approvers.contains(&v.by) {
        return Err(format!(
            "`{}` may not decide on `{}`: its approvers are {}",
            v.by,
            v.step,
            request.approvers.join(", ")
        ));
    }
    Ok(request.visit)
}

impl Session {
    /// Checks the verdict against the run and journals it (`Ok(Err(why))` if it does not
    /// apply; nothing is recorded then). A rejected router then tries its rules.
    fn apply_verdict(&mut self, v: &Verdict) -> Result<Result<(), String>, SessionError> {
        let visit = match check_verdict(&self.state, v) {
            Ok(visit) => visit,
            Err(why) => return Ok(Err(why)),
        };
        let event = ApprovalDecided {
            step: v.step.clone(),
            visit,
            decision: v.decision,
            by: v.by.clone(),
            comment: v.comment.clone(),
        };
        self.record(Event::ApprovalDecided(event))?;
        if let Some(i) = self.state.step_pos(&v.step)
            && v.decision == Decision::Rejected
            && !self.flow.steps[i].next.is_empty()
        {
            self.unrouted.insert(i);
            self.route_pending()?;
        }
        Ok(Ok(()))
    }

    /// Takes the verdicts queued for this live run: journals those that apply and refuses
    /// the others in `<file>.refused`. Files are removed once their verdict is durable.
    pub(super) fn check_inbox(&mut self) -> Result<(), SessionError> {
        let dir = self.dir.join(INBOX_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for file in files {
            let verdict = std::fs::read(&file)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Verdict>(&b).map_err(|e| e.to_string()));
            let outcome = match verdict {
                Err(e) => Err(format!("unreadable verdict {}: {e}", file.display())),
                // A verdict journaled just before a crash, whose file was not removed yet.
                Ok(v) if self.already_decided(&v) => Ok(()),
                Ok(v) => self.apply_verdict(&v)?,
            };
            match outcome {
                Ok(()) => self.inbox_done.push(file),
                Err(why) => {
                    let _ = crate::fsutil::write_durable(&refused_path(&file), "inbox", why.as_bytes());
                    let _ = std::fs::remove_file(&file);
                }
            }
        }
        Ok(())
    }

    /// The request this verdict is about was decided by it already (a journaled verdict
    /// whose inbox file a crash left behind).
    fn already_decided(&self, v: &Verdict) -> bool {
        let Some(st) = self.state.step(&v.step) else { return false };
        let request = match v.visit {
            Some(visit) => st.approvals.iter().rev().find(|a| a.visit == visit),
            None => st.approvals.last(),
        };
        request.is_some_and(|a| {
            a.decision == Some(v.decision)
                && a.decided_by.as_deref() == Some(v.by.as_str())
                && a.comment == v.comment
        })
    }

    /// After a commit: the inbox files whose verdicts are now durable go.
    pub(super) fn clear_inbox(&mut self) {
        for file in self.inbox_done.drain(..) {
            let _ = std::fs::remove_file(file);
        }
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

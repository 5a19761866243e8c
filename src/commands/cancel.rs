//! `runner cancel`: stop a live run from another shell, at a safe boundary.
//!
//! The request is written durably into the run directory, then the runner gets SIGTERM:
//! it stops its steps as it does on any SIGTERM (SIGTERM to each group, SIGKILL after the
//! step's grace), and journals the interruption as a cancel by this user. The run stays
//! resumable.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{CancelArgs, Global};
use crate::commands::approve::user_name;
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::report::{human, note};
use crate::store::cancel::{CancelRequest, write_request};
use crate::store::{is_locked, live_lock_holders};

pub fn cancel(g: &Global, args: CancelArgs) -> Result<ExitCode, Error> {
    let runs = g.runs();
    let id = args.run.resolve(g)?;
    let dir = runs.existing(&id)?;
    let by = match args.by {
        Some(by) if by.trim().is_empty() => return Err(Error::Usage("--by must not be empty".into())),
        Some(by) => by,
        None => user_name()?,
    };
    let live = || is_locked(&dir, &live_lock_holders());
    let pid = std::fs::read_to_string(dir.join(crate::store::LOCK_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    let (true, Some(pid)) = (live(), pid) else {
        return Err(Error::Usage(format!(
            "run `{id}` is not running (no runner holds it); nothing to cancel. `runner status --run-id {id}` shows where it is"
        )));
    };
    let raw =
        i32::try_from(pid).map_err(|_| Error::Usage(format!("the lock of run `{id}` names pid {pid}")))?;
    // A second SIGTERM tells a runner to kill its steps at once: when this runner has a
    // request already, it is stopping, so wait for it rather than signal it again.
    if crate::store::cancel::request_for(&dir, pid).is_some() {
        if !g.quiet {
            note(&format!("run {id} is already being cancelled; waiting for its runner (pid {pid})"));
        }
    } else {
        let req = CancelRequest { pid, by: by.clone(), at: crate::journal::now_ts() };
        write_request(&dir, &req).map_err(io_at(dir.join(crate::store::cancel::CANCEL_FILE)))?;
        if let Err(e) = kill(Pid::from_raw(raw), Signal::SIGTERM) {
            crate::store::cancel::clear(&dir);
            return Err(Error::Usage(format!(
                "cannot signal the runner of run `{id}` (pid {pid}): {e}. Is it in another container or owned by another user?"
            )));
        }
    }
    if args.no_wait {
        if !g.quiet {
            note(&format!("asked the runner of run {id} (pid {pid}) to cancel it"));
        }
        return Ok(ExitCode::Success);
    }
    if !g.quiet {
        note(&format!("cancelling run {id}: its runner (pid {pid}) is stopping the running steps"));
    }
    let started = Instant::now();
    while live() {
        if started.elapsed() > args.timeout {
            note(&format!(
                "error: run `{id}` still runs after {}: its steps take long to stop (their `grace`); \
                 it goes on stopping. Check with `runner status --run-id {id}`",
                human(args.timeout)
            ));
            return Ok(ExitCode::Locked);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !g.quiet {
        note(&format!("run {id} cancelled; continue it with `runner resume --run-id {id}`"));
    }
    Ok(ExitCode::Success)
}

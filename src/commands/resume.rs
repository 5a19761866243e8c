//! `runner resume`: continue a run from its journal.

use crate::cli::{Global, ResumeArgs, jobs};
use crate::commands::reports::Reports;
use crate::error::Error;
use crate::exit::ExitCode;
use crate::report::note;
use crate::session::{Resumed, SessionEnd, SessionOptions, open_existing};
use crate::state::StepStatus;

pub fn resume(g: &Global, args: ResumeArgs) -> Result<ExitCode, Error> {
    let id = args.run.resolve(g)?;
    let reports = Reports::new(&args.reports);
    reports.check()?;
    let opts = SessionOptions {
        executor: None,
        jobs: jobs(args.jobs),
        verbosity: g.verbosity(),
        accept_flow_change: args.accept_flow_change,
        profile: None,
        trigger_file: None,
        no_cache: args.no_cache,
        env_file: args.env_file.clone(),
        progress: g.progress(),
    };
    resume_run(g, &id, &opts, &reports)
}

/// Resumes run `id`, drives it to its end and writes the reports asked for. Shared with
/// `runner run --run-id`.
pub fn resume_run(g: &Global, id: &str, opts: &SessionOptions, reports: &Reports) -> Result<ExitCode, Error> {
    let runs = g.runs();
    match open_existing(&runs, id, opts)? {
        Resumed::Done => {
            if !g.quiet {
                note(&format!("run {id} already succeeded; nothing to do"));
            }
            // A cron line fired again still refreshes its reports.
            let code = reports.write(g, id, ExitCode::Success);
            finish_json(g, id, code)
        }
        Resumed::Ready(session) => {
            let s = session.state();
            if !g.quiet {
                note(&format!(
                    "run {id} resumed (session {}): {} of {} steps already succeeded",
                    s.sessions,
                    s.count(StepStatus::Succeeded),
                    s.steps.len()
                ));
            }
            let code = reports.write(g, id, exit_for(session.drive()?));
            finish_json(g, id, code)
        }
    }
}

/// With `--json`, prints the run as `runner status --run-id ID --json` shows it, plus the
/// exit code; the run's own exit code stands whatever printing does.
pub fn finish_json(g: &Global, id: &str, code: ExitCode) -> Result<ExitCode, Error> {
    if g.json
        && let Err(e) = crate::commands::status::print_run_json(g, id, code.code())
    {
        note(&format!("warning: cannot print the run as JSON: {e}"));
    }
    Ok(code)
}

pub fn exit_for(end: SessionEnd) -> ExitCode {
    match end {
        SessionEnd::Succeeded => ExitCode::Success,
        SessionEnd::Failed(_) => ExitCode::Failed,
        SessionEnd::Interrupted(nix::sys::signal::Signal::SIGINT) => ExitCode::Interrupted,
        SessionEnd::Interrupted(_) => ExitCode::Terminated,
        SessionEnd::Paused(_) => ExitCode::Paused,
    }
}

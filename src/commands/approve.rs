//! `runner approve` and `runner reject`: a person's verdict on a step that waits.

use crate::cli::{DecideArgs, Global, ReportArgs, jobs};
use crate::commands::reports::Reports;
use crate::commands::resume::exit_for;
use crate::error::Error;
use crate::exit::ExitCode;
use crate::journal::Decision;
use crate::report::note;
use crate::session::{Decided, SessionOptions, Verdict, decide as record};

pub fn decide(g: &Global, args: DecideArgs, decision: Decision) -> Result<ExitCode, Error> {
    let id = &args.run.resolve(g)?;
    let by = match args.by {
        Some(by) if by.trim().is_empty() => return Err(Error::Usage("--by must not be empty".into())),
        Some(by) => by,
        None => user_name()?,
    };
    let reports =
        Reports::new(&ReportArgs { junit: args.junit.clone(), metrics_file: args.metrics_file.clone() });
    reports.check()?;
    let verdict =
        Verdict { step: args.step.clone(), decision, by: by.clone(), comment: args.comment, visit: None };
    let opts = SessionOptions {
        executor: None,
        jobs: jobs(args.jobs),
        verbosity: g.verbosity(),
        accept_flow_change: false,
        profile: None,
        trigger_file: None,
        no_cache: false,
        env_file: args.env_file.clone(),
        progress: g.progress(),
    };
    let mut session = match record(&g.runs(), id, &verdict, &opts, args.resume)? {
        Decided::Locked(session) => session,
        Decided::ByLiveRunner => {
            if !g.quiet {
                note(&format!(
                    "step `{}` of run {id} {} by {by}; the live runner goes on with it",
                    args.step,
                    decision.as_str()
                ));
            }
            return Ok(ExitCode::Success);
        }
        Decided::Queued(file) => {
            note(&format!(
                "the run is live and its runner has not taken the decision yet; it is queued in {} \
                 and will be recorded while the step waits",
                file.display()
            ));
            return Ok(ExitCode::Success);
        }
    };
    if !g.quiet {
        note(&format!("step `{}` of run {id} {} by {by}", args.step, decision.as_str()));
    }
    if args.resume {
        session.take_over_now(opts.jobs)?;
        return Ok(reports.write(g, id, exit_for(session.drive()?)));
    }
    session.close();
    if !g.quiet {
        note(&format!("continue the run with `runner resume --run-id {id}` (or its next cron run)"));
    }
    Ok(ExitCode::Success)
}

/// Who is deciding when `--by` is not given: `$USER`, `$LOGNAME`, else the account name.
/// Who is at the keyboard: `$USER`, `$LOGNAME`, else the name of the current uid.
pub fn user_name() -> Result<String, Error> {
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.trim().is_empty()
        {
            return Ok(name);
        }
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .ok_or_else(|| Error::Usage("cannot tell who you are: give --by NAME".into()))
}

//! `runner run FLOW`: start a run, or continue the run named by `--run-id` if it exists.

use std::io::Write;

use crate::cli::{Global, RunArgs, jobs};
use crate::commands::reports::Reports;
use crate::commands::resume::{exit_for, resume_run};
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::flow::{Flow, FlowError, FlowErrorKind, parse_param_args};
use crate::report::note;
use crate::session::{SessionOptions, start_new};
use crate::store::{RunsDir, generate_run_id, read_run_started, validate_run_id};

pub fn run(g: &Global, args: RunArgs) -> Result<ExitCode, Error> {
    // Everything the user gave is checked before anything is written.
    let bytes =
        std::fs::read(&args.flow).map_err(|e| FlowError::whole_file(&args.flow, FlowErrorKind::Read(e)))?;
    let flow = Flow::from_bytes(&args.flow, &bytes)?;
    let secret_names = crate::flow::check_calls(&flow, &std::env::current_dir().map_err(io_at("."))?)?;
    let given = parse_param_args(&args.params)?;
    if let Some(profile) = &args.profile
        && !flow.profiles.contains_key(profile)
    {
        let known: Vec<&str> = flow.profiles.keys().map(String::as_str).collect();
        return Err(Error::Usage(format!(
            "{} has no profile `{profile}` ({})",
            args.flow.display(),
            if known.is_empty() {
                "it defines none".to_string()
            } else {
                format!("it has {}", known.join(", "))
            }
        )));
    }
    let trigger_file = args.trigger_file.as_ref().map(|p| p.to_string_lossy().into_owned());
    let executor = args.executor.as_deref().and_then(crate::flow::ExecutorKind::parse);
    check_executors(&flow, executor)?;
    let reports = Reports::new(&args.reports);
    reports.check()?;
    let opts = SessionOptions {
        jobs: jobs(args.jobs),
        verbosity: g.verbosity(),
        accept_flow_change: false,
        profile: args.profile.clone(),
        trigger_file: trigger_file.clone(),
        no_cache: args.no_cache,
        env_file: args.env_file.clone(),
        progress: g.progress(),
        executor,
    };
    // Every secret must have a value before anything is created (they are looked up again
    // by the session that drives the run, and never stored).
    crate::secrets::Secrets::load(args.env_file.as_deref(), &secret_names)?;
    let runs = g.runs();
    if let Some(id) = &args.run_id {
        validate_run_id(id)?;
        if runs.exists(id) {
            same_run(&runs, id, &flow, &given, args.profile.as_deref(), trigger_file.as_deref())?;
            return resume_run(g, id, &opts, &reports);
        }
    }
    let params = flow.resolve_params(&given)?;
    let workdir = std::env::current_dir().map_err(io_at("."))?;
    let mut flow = flow;
    loop {
        let id = args.run_id.clone().unwrap_or_else(|| generate_run_id(&flow.name));
        let steps = flow.steps.len();
        match start_new(&runs, flow, &bytes, &args.flow, params.clone(), id.clone(), &workdir, &opts)? {
            Ok(session) => {
                // The id alone on stdout, first, so scripts can capture it: ID=$(runner run …)
                // (with --json, stdout is the one JSON document at the end instead).
                if !g.json {
                    let _ = writeln!(std::io::stdout(), "{id}");
                }
                if !g.quiet {
                    note(&format!("run {id} started: {} ({steps} steps)", args.flow.display()));
                }
                let code = reports.write(g, &id, exit_for(session.drive()?));
                return crate::commands::resume::finish_json(g, &id, code);
            }
            // Someone else created it between our check and our create: it is theirs to run.
            Err(back) if args.run_id.is_some() => {
                same_run(&runs, &id, &back, &given, args.profile.as_deref(), trigger_file.as_deref())?;
                return resume_run(g, &id, &opts, &reports);
            }
            // A generated id collided; take another.
            Err(back) => flow = back,
        }
    }
}

/// `runner run FLOW --run-id ID` on an existing run must mean the same run.
fn same_run(
    runs: &RunsDir,
    id: &str,
    flow: &Flow,
    given: &[(String, String)],
    profile: Option<&str>,
    trigger_file: Option<&str>,
) -> Result<(), Error> {
    let Some((_, started)) = read_run_started(&runs.run_dir(id)) else {
        return Ok(()); // resume reports what is wrong with it
    };
    if profile.is_some() && profile != started.profile.as_deref() {
        return Err(Error::Usage(format!(
            "run `{id}` exists with profile {}, not `{}`; a run's profile cannot change: choose another --run-id",
            started.profile.as_deref().map_or("none".to_string(), |p| format!("`{p}`")),
            profile.unwrap_or_default()
        )));
    }
    if trigger_file.is_some() && trigger_file != started.trigger_file.as_deref() {
        return Err(Error::Usage(format!(
            "run `{id}` exists with trigger file {}, not `{}`; a run's trigger file cannot change: choose another --run-id",
            started.trigger_file.as_deref().map_or("none".to_string(), |p| format!("`{p}`")),
            trigger_file.unwrap_or_default()
        )));
    }
    if started.flow != flow.name {
        return Err(Error::Usage(format!(
            "run `{id}` is a run of flow `{}`, not `{}`; choose another --run-id",
            started.flow, flow.name
        )));
    }
    for (name, value) in given {
        if started.params.get(name) != Some(value) {
            let was = started
                .params
                .get(name)
                .map(|v| format!("{name}={v}"))
                .unwrap_or_else(|| "no such parameter".into());
            return Err(Error::Usage(format!(
                "run `{id}` exists with different parameters (--param {name}={value}, the run has {was}); \
                 a run's parameters cannot change: choose another --run-id"
            )));
        }
    }
    if started.flow_hash != flow.hash {
        note(&format!(
            "warning: {} changed since run {id} started; the run continues with its own copy ({})",
            flow.path.display(),
            runs.run_dir(id).join(crate::store::FLOW_COPY).display()
        ));
    }
    Ok(())
}

/// Steps that go to Slurm need its CLI here, and cannot use services (they run on this
/// machine, the job on a node): both are refused before anything is created.
fn check_executors(flow: &Flow, executor: Option<crate::flow::ExecutorKind>) -> Result<(), Error> {
    let remote: Vec<&crate::flow::Step> = flow
        .steps
        .iter()
        .filter(|s| s.call.is_none() && s.executor_with(executor) == crate::flow::ExecutorKind::Slurm)
        .collect();
    if let Some(step) = remote.iter().find(|s| !s.services.is_empty()) {
        return Err(Error::Usage(format!(
            "{}: step `{}` runs on Slurm but uses services ({}); services run on this machine, \
             so a step that needs one must run here: give it `executor = \"local\"`",
            flow.path.display(),
            step.id,
            step.services.join(", ")
        )));
    }
    if !remote.is_empty() && !crate::executor::slurm::available() {
        return Err(Error::Usage(format!(
            "{}: {} step(s) run on Slurm (e.g. `{}`), but `sbatch` is not on PATH; install the \
             Slurm client, or run them here with --executor local",
            flow.path.display(),
            remote.len(),
            remote[0].id
        )));
    }
    Ok(())
}

//! `runner logs`: print what steps and services wrote, from their log files.

use std::io::{Read, Write};

use crate::cli::{Global, LogsArgs};
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::session::SERVICES_DIR;
use crate::state::{Attempt, StepState};
use crate::store::{attempt_dir, load_run, visit_label};

pub fn logs(g: &Global, args: LogsArgs) -> Result<ExitCode, Error> {
    let id = args.run.resolve(g)?;
    let dir = g.runs().existing(&id)?;
    let state = load_run(&dir, true, u64::MAX)?.state;
    // Services in the order they first started.
    let mut services: Vec<&str> = Vec::new();
    for s in &state.services {
        if !services.contains(&s.service.as_str()) {
            services.push(&s.service);
        }
    }
    if args.follow {
        // A name that is not in the run would follow nothing until the run ends: say so.
        if let Some(step) = &args.step
            && state.step(step).is_none()
        {
            let known: Vec<&str> = state.steps.iter().map(|s| s.id.as_str()).collect();
            return Err(Error::Usage(format!(
                "run `{id}` has no step `{step}`; its steps are: {}",
                known.join(", ")
            )));
        }
        if let Some(name) = &args.service
            && !state.services.iter().any(|s| s.service == *name)
        {
            return Err(Error::Usage(format!("run `{id}` has not started a service `{name}`")));
        }
        let only = match (&args.step, &args.service) {
            (Some(s), _) => Some(crate::commands::follow::Only::Step(s.clone())),
            (_, Some(s)) => Some(crate::commands::follow::Only::Service(s.clone())),
            _ => None,
        };
        crate::commands::follow::follow_logs(&dir, only)?;
        return Ok(ExitCode::Success);
    }
    let service_log = |name: &str| dir.join(SERVICES_DIR).join(format!("{name}.log"));
    if let Some(name) = &args.service {
        if !services.contains(&name.as_str()) {
            let started = if services.is_empty() { "none".to_string() } else { services.join(", ") };
            return Err(Error::Usage(format!(
                "run `{}` has not started a service `{name}`; the services it started: {started}",
                id
            )));
        }
        let path = service_log(name);
        let content = std::fs::read(&path).map_err(io_at(&path))?;
        let mut out = std::io::stdout().lock();
        out.write_all(&content).and_then(|()| out.flush()).map_err(io_at("stdout"))?;
        return Ok(ExitCode::Success);
    }
    let steps: Vec<&StepState> = match &args.step {
        Some(wanted) => vec![state.step(wanted).ok_or_else(|| {
            let known: Vec<&str> = state.steps.iter().map(|s| s.id.as_str()).collect();
            Error::Usage(format!("run `{id}` has no step `{wanted}`; its steps are: {}", known.join(", ")))
        })?],
        None => state.steps.iter().collect(),
    };
    let streams: Vec<&str> = match &args.stream {
        Some(s) => vec![s.as_str()],
        None => vec!["stdout", "stderr"],
    };
    let mut out = std::io::stdout().lock();
    for step in steps {
        let attempt: Option<&Attempt> = match args.attempt {
            Some(n) => {
                let visit = args.visit.unwrap_or(step.visit.max(1));
                let found = step.attempts.iter().find(|a| a.attempt == n && a.visit == visit);
                Some(found.ok_or_else(|| {
                    let has = step.attempts.iter().filter(|a| a.visit == visit).count();
                    Error::Usage(format!(
                        "step `{}` has no attempt {n} (it has {has})",
                        visit_label(&step.id, visit)
                    ))
                })?)
            }
            None if args.visit.is_some() => step.attempts.iter().rev().find(|a| Some(a.visit) == args.visit),
            None => step.last_attempt(),
        };
        let Some(attempt) = attempt else { continue };
        let adir = attempt_dir(&dir, &step.id, attempt.visit, attempt.attempt);
        let label = visit_label(&step.id, attempt.visit);
        let mut any = false;
        for stream in &streams {
            let mut content = Vec::new();
            let Ok(mut file) = std::fs::File::open(adir.join(format!("{stream}.log"))) else { continue };
            file.read_to_end(&mut content).map_err(io_at(adir.join(format!("{stream}.log"))))?;
            if args.stream.is_some() {
                out.write_all(&content).map_err(io_at("stdout"))?;
                continue;
            }
            if content.is_empty() {
                continue;
            }
            any = true;
            writeln!(out, "==> {label} (attempt {}) {stream} <==", attempt.attempt)
                .map_err(io_at("stdout"))?;
            out.write_all(&content).map_err(io_at("stdout"))?;
            if !content.ends_with(b"\n") {
                writeln!(out).map_err(io_at("stdout"))?;
            }
        }
        if !any && args.stream.is_none() {
            writeln!(out, "==> {label} (attempt {}): no output <==", attempt.attempt)
                .map_err(io_at("stdout"))?;
        }
    }
    // With every step shown, the services' logs follow.
    if args.step.is_none() && args.stream.is_none() {
        for name in services {
            let Ok(content) = std::fs::read(service_log(name)) else { continue };
            writeln!(out, "==> service {name} <==").map_err(io_at("stdout"))?;
            out.write_all(&content).map_err(io_at("stdout"))?;
        }
    }
    out.flush().map_err(io_at("stdout"))?;
    Ok(ExitCode::Success)
}

//! Sub-flows: finding a called flow, checking a call tree before anything runs, and
//! laying a callee's steps out inside the caller's plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Call, Flow, FlowError, FlowErrorKind, Step};

/// How deep calls may nest; deeper is almost certainly unbounded recursion.
pub const MAX_CALL_DEPTH: usize = 16;

/// The file a call names. A path is looked up beside the calling flow, then in the
/// working directory; a bare name `reset` is `reset.toml` beside the calling flow, then
/// `flows/reset.toml` in the working directory.
pub fn resolve_call(caller: &Path, workdir: &Path, target: &str) -> Result<PathBuf, String> {
    let base = caller.parent().unwrap_or(Path::new(""));
    let tries: Vec<PathBuf> = if target.ends_with(".toml") || target.contains('/') {
        vec![base.join(target), workdir.join(target)]
    } else {
        vec![base.join(format!("{target}.toml")), workdir.join("flows").join(format!("{target}.toml"))]
    };
    tries.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let looked: Vec<String> = tries.iter().map(|p| p.display().to_string()).collect();
        format!("no such flow (looked for {})", looked.join(" and "))
    })
}

/// The parameters a callee runs with: its defaults, overridden by `with`.
pub fn call_params(
    callee: &Flow,
    with: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    if let Some(unknown) = with.keys().find(|k| !callee.params.contains_key(*k)) {
        let known: Vec<&str> = callee.params.keys().map(String::as_str).collect();
        return Err(format!(
            "`with` sets `{unknown}`, which {} does not declare (its parameters: {})",
            callee.path.display(),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ));
    }
    let mut params = BTreeMap::new();
    for (name, p) in &callee.params {
        match with.get(name).or(p.default.as_ref()) {
            Some(v) => {
                params.insert(name.clone(), v.clone());
            }
            None => {
                return Err(format!(
                    "parameter `{name}` of {} is required: set it in `with`",
                    callee.path.display()
                ));
            }
        }
    }
    Ok(params)
}

/// Checks every flow `flow` calls, transitively: it exists, is valid, gets the parameters
/// it needs, and the calls neither recurse nor nest deeper than [`MAX_CALL_DEPTH`].
/// Returns every secret the flow and the flows it calls declare, sorted: they are all
/// resolved before a run starts, so a step never inherits a callee's secret undeclared.
pub fn check_calls(flow: &Flow, workdir: &Path) -> Result<Vec<String>, FlowError> {
    let mut stack = vec![canonical(&flow.path)];
    let mut secrets = flow.secret_names();
    visit(flow, workdir, &mut stack, &mut secrets)?;
    secrets.sort();
    secrets.dedup();
    Ok(secrets)
}

fn visit(
    flow: &Flow,
    workdir: &Path,
    stack: &mut Vec<PathBuf>,
    secrets: &mut Vec<String>,
) -> Result<(), FlowError> {
    for step in &flow.steps {
        let calls: Vec<&Call> =
            step.call.as_deref().into_iter().chain(step.on_failure.as_deref().map(|f| &f.call)).collect();
        for call in calls {
            let err = |message: String| {
                FlowError::whole_file(
                    &flow.path,
                    FlowErrorKind::Call {
                        step: step.id.clone(),
                        target: call.target.clone(),
                        message: format!("{message} (line {})", call.line),
                    },
                )
            };
            let path = resolve_call(&flow.path, workdir, &call.target).map_err(err)?;
            let canon = canonical(&path);
            if let Some(first) = stack.iter().position(|p| *p == canon) {
                let mut names: Vec<String> = stack[first..].iter().map(|p| p.display().to_string()).collect();
                names.push(canon.display().to_string());
                return Err(err(format!("recursive call: {}", names.join(" -> "))));
            }
            if stack.len() >= MAX_CALL_DEPTH {
                return Err(err(format!("calls nest deeper than {MAX_CALL_DEPTH} flows")));
            }
            let callee = Flow::load(&path).map_err(|e| err(e.to_string()))?;
            call_params(&callee, &call.with).map_err(err)?;
            secrets.extend(callee.secret_names());
            stack.push(canon);
            visit(&callee, workdir, stack, secrets)?;
            stack.pop();
        }
    }
    Ok(())
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The callee's steps as they run in a frame: ids under `prefix`, indices shifted by
/// `offset` (where they start in the plan), the callee's `[env]` folded into each step.
pub fn instantiate(callee: &Flow, prefix: &str, frame: u32, offset: usize) -> Vec<Step> {
    let shift = |v: &[usize]| v.iter().map(|i| i + offset).collect::<Vec<_>>();
    callee
        .steps
        .iter()
        .map(|s| {
            let mut step = s.clone();
            step.id = format!("{prefix}{}", s.id);
            step.needs = shift(&s.needs);
            step.dependents = shift(&s.dependents);
            step.loop_mates = s.loop_mates.iter().map(|i| i + offset).collect();
            for rule in &mut step.next {
                rule.goto += offset;
                rule.reset = shift(&rule.reset);
                rule.cycle = shift(&rule.cycle);
            }
            let mut env = callee.env.clone();
            env.extend(s.env.clone());
            step.env = env;
            // The callee's flow-level secrets belong to each of its steps.
            for name in callee.secrets.iter().rev() {
                if !step.secrets.contains(name) {
                    step.secrets.insert(0, name.clone());
                }
            }
            step.services = s.services.iter().map(|n| format!("{prefix}{n}")).collect();
            step.scope = prefix.to_string();
            step.frame = Some(frame);
            step
        })
        .collect()
}

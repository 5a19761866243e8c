//! `runner explain`: why a step ran instead of being taken from the cache.
//!
//! It reads the attempt's receipt and the nearest earlier successful receipt of the same
//! step of the same flow (from the projection's `receipts` table, in any run), and names
//! what differs: the command, an environment variable, a parameter, an input file, an
//! upstream step's result, the runner's version. When nothing differs, it says what kept
//! the cache from being used (`--no-cache`, `cache` off, output files that changed).

use std::path::Path;

use serde_json::json;

use crate::cli::{ExplainArgs, Global};
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::projection::{Projection, ProjectionError};
use crate::receipt::{self, Change, Receipt, Source};
use crate::report::{local_time, print};
use crate::state::{Attempt, AttemptStatus};
use crate::store::{attempt_dir, load_run, visit_label};

pub fn explain(g: &Global, args: ExplainArgs) -> Result<ExitCode, Error> {
    let runs = g.runs();
    let id = &args.run.resolve(g)?;
    let dir = runs.existing(id)?;
    let state = load_run(&dir, true, u64::MAX)?.state;
    let Some(step) = state.step(&args.step) else {
        let known: Vec<&str> = state.steps.iter().map(|s| s.id.as_str()).collect();
        return Err(Error::Usage(format!(
            "run `{id}` has no step `{}` (its steps: {})",
            args.step,
            known.join(", ")
        )));
    };
    let chosen: Option<&Attempt> = step
        .attempts
        .iter()
        .rev()
        .filter(|a| args.visit.is_none_or(|v| a.visit == v))
        .find(|a| args.attempt.is_none_or(|n| a.attempt == n));
    let Some(a) = chosen else {
        if args.visit.is_some() || args.attempt.is_some() {
            return Err(Error::Usage(format!("step `{}` of run `{id}` has no such attempt", args.step)));
        }
        let v = json!({ "run_id": id, "step": step.id, "verdict": "no_receipt" });
        return say(
            g,
            v,
            &format!("step `{}` of run {id} has not run (it is {})", step.id, step.status.as_str()),
        );
    };
    let label = format!("{} attempt {}", visit_label(&step.id, a.visit), a.attempt);
    if a.receipt.is_none() {
        let why = match a.status {
            AttemptStatus::Running => "it is still running",
            AttemptStatus::Interrupted => "it was interrupted before it finished",
            AttemptStatus::Succeeded => "it called a flow, whose steps have receipts of their own",
            _ => "it never started (its command or an input could not be used)",
        };
        return say(
            g,
            json!({ "run_id": id, "step": step.id, "visit": a.visit, "attempt": a.attempt,
            "verdict": "no_receipt" }),
            &format!("{label} of run {id} has no receipt: {why}"),
        );
    }
    let path = attempt_dir(&dir, &step.id, a.visit, a.attempt).join(receipt::RECEIPT_FILE);
    let this = receipt::read(&path).map_err(Error::Usage)?;
    let base =
        json!({ "run_id": id, "step": step.id, "visit": a.visit, "attempt": a.attempt, "key": this.key });
    if let Some(from) = &this.cached_from {
        let mut v = base;
        v["verdict"] = json!("cached");
        v["cached_from"] = json!(from);
        return say(
            g,
            v,
            &format!(
                "{label} of run {id} was taken from the cache: it reused the receipt of {} attempt {} in run {} (key {})",
                visit_label(&from.step, from.visit),
                from.attempt,
                from.run_id,
                short(&this.key)
            ),
        );
    }
    let mut projection = Projection::open(&runs)?;
    projection.catch_up()?;
    let previous = nearest_previous(&projection, &state.flow, &this)?;
    let cache_on = a.cache_miss().is_some();
    let off_note = if cache_on { "" } else { " (this step does not have `cache = true`, so it always runs)" };
    let Some((from, before)) = previous else {
        let mut v = base;
        v["verdict"] = json!("no_previous");
        return say(
            g,
            v,
            &format!(
                "{label} of run {id} ran: no earlier successful receipt of step `{}` of flow `{}` exists{off_note}",
                this.step, state.flow
            ),
        );
    };
    let when = local_time(before.finished_at.as_str());
    let compared = format!(
        "the nearest earlier receipt: {} attempt {} in run {} (finished {when})",
        visit_label(&from.step, from.visit),
        from.attempt,
        from.run_id
    );
    let changes = receipt::diff(&before.definition, &this.definition);
    let mut v = base;
    v["previous"] = json!({ "source": from, "key": before.key, "finished_at": before.finished_at });
    if changes.is_empty() {
        let why = match a.cache_miss() {
            None => "this step does not have `cache = true`".to_string(),
            Some("forced") => "the run was started or resumed with --no-cache".to_string(),
            Some(stale) if stale.starts_with("stale: ") => {
                format!("the receipt's output files no longer matched: {}", &stale["stale: ".len()..])
            }
            Some(other) => {
                format!("that receipt was not in the cache index when the attempt started ({other})")
            }
        };
        v["verdict"] = json!("same_key");
        v["reason"] = json!(why);
        return say(
            g,
            v,
            &format!("{label} of run {id} has the same key as {compared}, and ran because {why}"),
        );
    }
    v["verdict"] = json!("changed");
    v["changes"] = json!(changes);
    let mut text = format!("{label} of run {id} ran because its key differs from {compared}{off_note}:");
    for c in &changes {
        text.push_str("\n  ");
        text.push_str(&describe(c));
    }
    say(g, v, &text)
}

/// The newest successful receipt of the same step of the same flow, other than `this`,
/// that finished before `this` started.
fn nearest_previous(p: &Projection, flow: &str, this: &Receipt) -> Result<Option<(Source, Receipt)>, Error> {
    let before = this.started_at.clone().unwrap_or_else(|| this.finished_at.clone());
    let sql = |source| Error::Projection(ProjectionError::Sqlite { path: p.path().to_path_buf(), source });
    let mut stmt = p
        .connection()
        .prepare(
            "SELECT r.run_id, r.step_id, r.visit, r.attempt FROM receipts r JOIN runs USING (run_id)
             WHERE runs.flow = ?1 AND r.step_id = ?2 AND r.result IS NOT NULL AND r.cached_from IS NULL
               AND r.finished_at <= ?3
               AND NOT (r.run_id = ?4 AND r.visit = ?5 AND r.attempt = ?6)
             ORDER BY r.finished_at DESC, r.run_id DESC LIMIT 10",
        )
        .map_err(sql)?;
    let rows: Vec<Source> = stmt
        .query_map(rusqlite::params![flow, this.step, before, this.run_id, this.visit, this.attempt], |r| {
            Ok(Source { run_id: r.get(0)?, step: r.get(1)?, visit: r.get(2)?, attempt: r.get(3)? })
        })
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    let root = p.path().parent().unwrap_or(Path::new("."));
    // The first whose receipt can still be read (a deleted run leaves rows until caught up).
    Ok(rows.into_iter().find_map(|s| receipt::read(&root.join(s.receipt_path())).ok().map(|r| (s, r))))
}

/// One change, for people.
fn describe(c: &Change) -> String {
    let was = |v: &Option<String>| v.as_deref().map(short).unwrap_or_default();
    match (c.component, c.change) {
        ("command", _) => format!("the command changed: {:?} -> {:?}", was(&c.before), was(&c.after)),
        ("runner_version", _) => {
            format!("the runner's version changed: {} -> {}", was(&c.before), was(&c.after))
        }
        ("env", change) => format!("env var {} {change}", c.name),
        ("param", change) => format!("parameter {} {change}", c.name),
        ("input", "changed") => {
            format!("input file {} changed (blake3 {} -> {})", c.name, was(&c.before), was(&c.after))
        }
        ("input", change) => format!("input file {} {change}", c.name),
        ("upstream", "changed") => format!("upstream step {} changed (its result differs)", c.name),
        ("upstream", change) => format!("upstream step {} {change}", c.name),
        (other, _) => {
            format!("{} changed: {:?} -> {:?}", other.replace('_', " "), was(&c.before), was(&c.after))
        }
    }
}

/// A hash cut to 12 characters; other text is kept as it is.
fn short(s: &str) -> String {
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        format!("{}…", &s[..12])
    } else {
        s.to_string()
    }
}

fn say(g: &Global, value: serde_json::Value, text: &str) -> Result<ExitCode, Error> {
    let out = if g.json { value.to_string() } else { text.to_string() };
    print(&out).map_err(io_at("stdout"))?;
    Ok(ExitCode::Success)
}

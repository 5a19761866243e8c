//! `runner gc`: delete old runs, their directories and their projection rows.
//!
//! Candidates come from the projection (caught up first), so choosing them reads no
//! journal. Each one is then deleted under its own lock, after its journal confirms the
//! choice: a run resumed, paused or replaced since the projection was read is kept. The
//! directory is renamed away before anything in it is deleted (see `store::trash_run`),
//! so a crash never leaves half a run that looks like a run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::cli::{GcArgs, Global};
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::projection::{Projection, ProjectionError};
use crate::report::{local_time, note, table};
use crate::state::{RunStatus, StepStatus};
use crate::store::{
    RunLock, RunsDir, StoreError, is_locked, live_lock_holders, load_run, remove_trash_leftovers,
    remove_trashed, trash_run,
};

/// A run as the projection has it: what choosing and reporting need.
struct Candidate {
    run_id: String,
    flow: String,
    status: String,
    started_at: String,
    last_event_at: String,
    steps_waiting: i64,
}

impl Candidate {
    /// The status as `runner status` names it.
    fn shown_status(&self, live: bool) -> &str {
        match self.status.as_str() {
            "running" if !live => "crashed",
            "waiting" if self.steps_waiting == 0 => "paused",
            s => s,
        }
    }
}

/// A run deleted (or, with --dry-run, to be deleted).
struct Removed {
    run_id: String,
    flow: String,
    status: String,
    started_at: String,
    bytes: u64,
}

/// A run the policy picked that gc left alone, and why.
struct Kept {
    run_id: String,
    flow: String,
    reason: String,
}

pub fn gc(g: &Global, args: GcArgs) -> Result<ExitCode, Error> {
    let runs = g.runs();
    if !args.dry_run {
        let leftovers = remove_trash_leftovers(&runs);
        if leftovers > 0 && g.verbose {
            note(&format!("removed {leftovers} half-deleted run(s) an interrupted gc left in .staging"));
        }
    }
    let wanted = args.flow.as_deref().map(flow_name);
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    let mut failed = false;
    if !runs.list()?.is_empty() {
        let mut projection = open_caught_up(&runs)?;
        let holders = live_lock_holders();
        for c in choose(&projection, &args, wanted.as_deref())? {
            let dir = runs.run_dir(&c.run_id);
            let live = is_locked(&dir, &holders);
            let keep =
                |reason: &str| Kept { run_id: c.run_id.clone(), flow: c.flow.clone(), reason: reason.into() };
            if live {
                kept.push(keep("live: a runner drives it"));
                continue;
            }
            if c.status == "waiting" || c.steps_waiting > 0 {
                kept.push(keep("waits for approval"));
                continue;
            }
            let bytes = dir_size(&dir);
            let gone = Removed {
                run_id: c.run_id.clone(),
                flow: c.flow.clone(),
                status: c.shown_status(live).to_string(),
                started_at: c.started_at.clone(),
                bytes,
            };
            if args.dry_run {
                removed.push(gone);
                continue;
            }
            match delete(&runs, &mut projection, &c, args.older_than) {
                Ok(None) => removed.push(gone),
                Ok(Some(reason)) => kept.push(keep(&reason)),
                Err(e) => {
                    note(&format!("error: run {} was not deleted: {e}", c.run_id));
                    failed = true;
                }
            }
        }
    }
    report(g, &args, &removed, &kept)?;
    Ok(if failed { ExitCode::Io } else { ExitCode::Success })
}

/// The runs the policy picks, oldest first: per flow, all but the `--keep-last` most
/// recently started, and of those only the ones idle longer than `--older-than`.
fn choose(p: &Projection, args: &GcArgs, flow: Option<&str>) -> Result<Vec<Candidate>, Error> {
    let sql = |source| Error::Projection(ProjectionError::Sqlite { path: p.path().to_path_buf(), source });
    let mut stmt = p
        .connection()
        .prepare(
            "SELECT run_id, flow, status, started_at, last_event_at, steps_waiting FROM runs
             WHERE ?1 IS NULL OR flow = ?1",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([flow], |r| {
            Ok(Candidate {
                run_id: r.get(0)?,
                flow: r.get(1)?,
                status: r.get(2)?,
                started_at: r.get(3)?,
                last_event_at: r.get(4)?,
                steps_waiting: r.get(5)?,
            })
        })
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    let mut by_flow: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for c in rows {
        by_flow.entry(c.flow.clone()).or_default().push(c);
    }
    let now = crate::faults::now();
    let keep = args.keep_last.map_or(0, |n| n as usize);
    let mut chosen = Vec::new();
    for (_, mut list) in by_flow {
        // Newest first; ids break ties, as for `resume --last`.
        list.sort_by(|a, b| (&b.started_at, &b.run_id).cmp(&(&a.started_at, &a.run_id)));
        chosen.extend(
            list.into_iter()
                .skip(keep)
                .filter(|c| args.older_than.is_none_or(|age| idle_longer(&c.last_event_at, now, age))),
        );
    }
    chosen.sort_by(|a, b| (&a.started_at, &a.run_id).cmp(&(&b.started_at, &b.run_id)));
    Ok(chosen)
}

/// Whether the journal timestamp `ts` is more than `age` before `now`. A timestamp that
/// does not parse is never old: when unsure, keep.
fn idle_longer(ts: &str, now: jiff::Timestamp, age: Duration) -> bool {
    let Ok(then) = ts.parse::<jiff::Timestamp>() else { return false };
    Duration::try_from(now.duration_since(then)).is_ok_and(|idle| idle >= age)
}

/// Deletes one run under its lock. `Ok(Some(reason))` when a second look, under the
/// lock, says to keep it after all.
fn delete(
    runs: &RunsDir,
    projection: &mut Projection,
    c: &Candidate,
    older_than: Option<Duration>,
) -> Result<Option<String>, Error> {
    let dir = runs.run_dir(&c.run_id);
    let mut lock = match RunLock::acquire(&dir, &c.run_id) {
        Ok(lock) => lock,
        Err(StoreError::Locked { .. }) => return Ok(Some("live: a runner took it".into())),
        Err(e) => return Err(e.into()),
    };
    // Under the lock the journal cannot change: it has the last word.
    let state = match load_run(&dir, true, u64::MAX) {
        Ok(loaded) => loaded.state,
        Err(e) => return Ok(Some(format!("its journal cannot be read ({e})"))),
    };
    if state.started_at != c.started_at {
        return Ok(Some("another run took its id".into()));
    }
    if state.status == RunStatus::Waiting || state.count(StepStatus::Waiting) > 0 {
        return Ok(Some("waits for approval".into()));
    }
    if older_than.is_some_and(|age| !idle_longer(&state.last_ts, crate::faults::now(), age)) {
        return Ok(Some("it ran again since".into()));
    }
    let trashed = trash_run(runs, &c.run_id, &mut lock)?;
    projection.delete_run(&c.run_id, &c.started_at)?;
    remove_trashed(&trashed)?;
    Ok(None)
}

/// Opens the projection and brings it up to date with the journals, as `status` does: a
/// damaged or new one is rebuilt, being derived data.
fn open_caught_up(runs: &RunsDir) -> Result<Projection, Error> {
    let mut projection = match Projection::open(runs) {
        Ok(p) => p,
        Err(ProjectionError::Sqlite { source, .. })
            if matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
            ) =>
        {
            note("warning: the projection is damaged; rebuilding it from the journals");
            crate::projection::rebuild(runs, false)?;
            Projection::open(runs)?
        }
        Err(e) => return Err(e.into()),
    };
    let skipped =
        if projection.is_fresh() { projection.rebuild()?.skipped } else { projection.catch_up()?.unreadable };
    for (id, why) in skipped {
        note(&format!("warning: run {id} is left alone: {why}"));
    }
    Ok(projection)
}

/// `--flow nightly` or `--flow flows/nightly.toml`: runs know their flow by the file's stem.
fn flow_name(arg: &str) -> String {
    crate::store::flow_name_of(arg)
}

/// Bytes in the files of a run's directory.
fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// `512 B`, `12.3 KiB`, `4.0 MiB`, `1.2 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn report(g: &Global, args: &GcArgs, removed: &[Removed], kept: &[Kept]) -> Result<(), Error> {
    let bytes: u64 = removed.iter().map(|r| r.bytes).sum();
    let out = |text: &str| crate::report::print(text).map_err(io_at("stdout"));
    if g.json {
        let list: Vec<_> = removed
            .iter()
            .map(|r| {
                json!({"run_id": r.run_id, "flow": r.flow, "status": r.status, "started_at": r.started_at,
                       "bytes": r.bytes})
            })
            .collect();
        let kept: Vec<_> =
            kept.iter().map(|k| json!({"run_id": k.run_id, "flow": k.flow, "reason": k.reason})).collect();
        return out(&json!({
            "dry_run": args.dry_run, "removed": list, "count": removed.len(), "bytes": bytes, "kept": kept,
        })
        .to_string());
    }
    for k in kept {
        if !g.quiet {
            note(&format!("kept {} ({}): {}", k.run_id, k.flow, k.reason));
        }
    }
    let verb = if args.dry_run { "would remove" } else { "removed" };
    let runs = if removed.len() == 1 { "run" } else { "runs" };
    let summary = if args.dry_run {
        format!("{verb} {} {runs}, {}", removed.len(), human_bytes(bytes))
    } else {
        format!("{verb} {} {runs}, {} freed", removed.len(), human_bytes(bytes))
    };
    if removed.is_empty() || g.quiet {
        return out(&summary);
    }
    let cells: Vec<Vec<String>> = removed
        .iter()
        .map(|r| {
            vec![
                r.run_id.clone(),
                r.flow.clone(),
                r.status.clone(),
                local_time(&r.started_at),
                human_bytes(r.bytes),
            ]
        })
        .collect();
    let mut text = table(&["RUN ID", "FLOW", "STATUS", "STARTED", "SIZE"], &cells);
    text.push('\n');
    text.push_str(&summary);
    out(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_du_h() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(12_595), "12.3 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn idle_is_counted_from_the_last_event_and_unreadable_times_are_never_old() {
        let now: jiff::Timestamp = "2026-02-10T00:00:00Z".parse().expect("ts");
        let day = Duration::from_secs(86_400);
        assert!(idle_longer("2026-01-01T00:00:00.000Z", now, 30 * day));
        assert!(!idle_longer("2026-01-20T00:00:00.000Z", now, 30 * day));
        assert!(idle_longer("2026-02-10T00:00:00.000Z", now, Duration::ZERO));
        assert!(!idle_longer("2026-03-01T00:00:00.000Z", now, Duration::ZERO), "in the future");
        assert!(!idle_longer("yesterday", now, Duration::ZERO));
    }

    #[test]
    fn flows_are_named_by_their_file_stem() {
        assert_eq!(flow_name("nightly"), "nightly");
        assert_eq!(flow_name("flows/nightly.toml"), "nightly");
        assert_eq!(flow_name("etl.v2"), "etl.v2");
        assert_eq!(flow_name("flows/etl.v2.toml"), "etl.v2");
    }
}

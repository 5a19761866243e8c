//! `rebuild-projection`: refill every table from the journals.
//!
//! Two ways, chosen by `projection.lock`, which every open connection holds shared:
//!
//! - **Nobody has the projection open** (the lock is free): build a new file with no
//!   journal and no syncs, then swap it in. The old database is checkpointed first and
//!   renamed over only when the new one is complete and synced, so a crash leaves either
//!   the old file or the new one, plus a temp file the next rebuild removes.
//! - **Someone does** (a live run, `status`): renaming a WAL-mode SQLite file under
//!   processes that have it open would pair their `-wal`/`-shm` with the new file and
//!   corrupt it. So the rebuild runs as one write transaction on the live file instead: a
//!   crash leaves the old contents, readers see them until the commit, writers wait.
//!
//! Either way journals are read, checked and folded on a second thread while this one
//! writes, and secondary indexes are created after the load.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rusqlite::{Connection, TransactionBehavior};

use super::rows::{self, DROP, INDEXES, SCHEMA_VERSION, TABLES};
use super::{BUSY_TIMEOUT, PROJECTION_FILE, ProjectionError};
use crate::store::{RunsDir, load_run};

/// How long a rebuild waits for another one to finish.
const REBUILD_WAIT: Duration = Duration::from_secs(600);
/// Page cache during a rebuild: more does not help once the database outgrows it.
const REBUILD_CACHE_KIB: i64 = 16 * 1024;
/// Runs read ahead of the writer; each holds its parsed events in memory.
const READ_AHEAD: usize = 8;

#[derive(Debug, Default)]
pub struct RebuildStats {
    pub runs: usize,
    pub events: u64,
    pub elapsed: Duration,
    /// Runs left out because their journal could not be read, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Rebuilds `runs/projection.sqlite` from every journal. Shows progress on a terminal.
pub fn rebuild(runs: &RunsDir, show_progress: bool) -> Result<RebuildStats, ProjectionError> {
    let path = runs.root().join(PROJECTION_FILE);
    let sql = |source| ProjectionError::Sqlite { path: path.clone(), source };
    let bar = (show_progress && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} rebuilding [{bar:30}] {pos}/{len} runs, {msg} events ({elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let stats = match super::hold_lock(runs, true, Duration::ZERO) {
        Ok(_alone) => rebuild_alone(runs, &path, bar.as_ref()),
        Err(ProjectionError::Busy { .. }) => {
            // Shared, so that no rebuild elsewhere replaces the file under this one.
            let _hold = super::hold_lock(runs, false, REBUILD_WAIT)?;
            let mut conn = super::connect(&path, BUSY_TIMEOUT).map_err(sql)?;
            rebuild_into(&mut conn, runs, bar.as_ref())
        }
        Err(e) => Err(e),
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    stats.map_err(|e| match e {
        ProjectionError::Sqlite { source, .. } => sql(source),
        other => other,
    })
}

/// Builds a new database file and swaps it in; the caller holds `projection.lock`
/// exclusively, so no connection to the old file exists.
fn rebuild_alone(
    runs: &RunsDir,
    path: &Path,
    bar: Option<&ProgressBar>,
) -> Result<RebuildStats, ProjectionError> {
    let start = Instant::now();
    let sql = |source| ProjectionError::Sqlite { path: path.to_path_buf(), source };
    let io = |source| ProjectionError::Io { path: path.to_path_buf(), source };
    let prefix = format!("{PROJECTION_FILE}.new-");
    // Leftovers of rebuilds that crashed.
    for entry in std::fs::read_dir(runs.root()).map_err(io)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let new = runs.root().join(format!("{prefix}{}", std::process::id()));
    let mut conn = Connection::open(&new).map_err(sql)?;
    // A scratch file until the rename: no rollback journal, no syncs.
    conn.pragma_update(None, "page_size", 16384).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "OFF").map_err(sql)?;
    conn.pragma_update(None, "synchronous", "OFF").map_err(sql)?;
    let mut stats = rebuild_into(&mut conn, runs, bar)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
    drop(conn);
    std::fs::File::open(&new).and_then(|f| f.sync_all()).map_err(io)?;
    if path.exists() {
        // Fold the old WAL in, so nothing is lost if we stop before the rename (closing the
        // last connection removes the WAL). A damaged old file is simply replaced.
        if let Ok(old) = Connection::open(path) {
            let _ = old.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::rename(&new, path).map_err(io)?;
    crate::fsutil::sync_dir(runs.root()).map_err(io)?;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Replaces the contents of `conn` with a fold of every journal, in one transaction.
pub(super) fn rebuild_into(
    conn: &mut Connection,
    runs: &RunsDir,
    bar: Option<&ProgressBar>,
) -> Result<RebuildStats, ProjectionError> {
    let start = Instant::now();
    let sql = |source| ProjectionError::Sqlite { path: runs.root().join(PROJECTION_FILE), source };
    conn.pragma_update(None, "cache_size", -REBUILD_CACHE_KIB).map_err(sql)?;
    let ids = runs.list()?;
    if let Some(bar) = bar {
        bar.set_length(ids.len() as u64);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
    tx.execute_batch(DROP).map_err(sql)?;
    tx.execute_batch(TABLES).map_err(sql)?;
    let mut stats = RebuildStats::default();
    std::thread::scope(|scope| -> Result<(), ProjectionError> {
        // Reading, checking and folding journals overlaps with writing the rows.
        let (send, loaded_runs) = std::sync::mpsc::sync_channel(READ_AHEAD);
        let ids = &ids;
        scope.spawn(move || {
            for id in ids {
                if send.send((id, load_run(&runs.run_dir(id), false, 0))).is_err() {
                    break;
                }
            }
        });
        for (id, loaded) in loaded_runs {
            match loaded {
                Ok(loaded) => {
                    rows::write_run(&tx, &loaded.state, &loaded.records, loaded.valid_len).map_err(sql)?;
                    stats.runs += 1;
                    stats.events += loaded.records.len() as u64;
                }
                Err(e) => stats.skipped.push((id.clone(), e.to_string())),
            }
            if let Some(bar) = bar {
                bar.inc(1);
                bar.set_message(stats.events.to_string());
            }
        }
        Ok(())
    })?;
    match crate::schedule::log::read(&crate::schedule::log::path(runs.root())) {
        Ok(log) => {
            rows::sync_schedule_decisions(&tx, &log.entries).map_err(sql)?;
        }
        Err(e) => stats.skipped.push((crate::schedule::log::DECISIONS_FILE.into(), e.to_string())),
    }
    tx.execute_batch(INDEXES).map_err(sql)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sql)?;
    tx.commit().map_err(sql)?;
    // Fold the WAL back into the database file; harmless if readers keep it busy.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    conn.pragma_update(None, "cache_size", -2000).map_err(sql)?;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

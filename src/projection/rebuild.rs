//! `rebuild-projection`: drop every table and refill it from the journals.
//!
//! The rebuild runs as one write transaction on the live database file rather than as a
//! new file renamed over it. Renaming a WAL-mode SQLite file under processes that have it
//! open can corrupt it (their `-wal`/`-shm` files would be shared with the new file), and
//! several runners may be writing the projection at any time. In one transaction a crash
//! leaves the old contents intact, readers keep seeing the old contents until the commit,
//! and live runners simply wait for the write lock (or skip an update and catch up).
//! Speed comes from reading and checking journals on a second thread while this one
//! writes, loading the tables without secondary indexes and creating those at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rusqlite::{Connection, TransactionBehavior};

use super::rows::{self, DROP, INDEXES, SCHEMA_VERSION, TABLES};
use super::{BUSY_TIMEOUT, PROJECTION_FILE, ProjectionError};
use crate::store::{RunsDir, load_run};

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
    let mut conn = super::connect(&path, BUSY_TIMEOUT).map_err(sql)?;
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
    let stats = rebuild_into(&mut conn, runs, bar.as_ref()).map_err(|e| match e {
        ProjectionError::Sqlite { source, .. } => sql(source),
        other => other,
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
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
    tx.execute_batch(INDEXES).map_err(sql)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sql)?;
    tx.commit().map_err(sql)?;
    // Fold the WAL back into the database file; harmless if readers keep it busy.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    conn.pragma_update(None, "cache_size", -2000).map_err(sql)?;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

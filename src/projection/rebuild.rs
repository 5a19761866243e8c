//! `rebuild-projection`: drop every table and refill it from the journals.
//!
//! The rebuild runs as one write transaction on the live database file rather than as a
//! new file renamed over it. Renaming a WAL-mode SQLite file under processes that have it
//! open can corrupt it (their `-wal`/`-shm` files would be shared with the new file), and
//! several runners may be writing the projection at any time. In one transaction a crash
//! leaves the old contents intact, readers keep seeing the old contents until the commit,
//! and live runners simply wait for the write lock (or skip an update and catch up).
//! Speed comes from loading the tables without secondary indexes, creating those at the
//! end, and a large page cache so pages are written once.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rusqlite::{Connection, TransactionBehavior};

use super::rows::{self, DROP, INDEXES, SCHEMA_VERSION, TABLES};
use super::{BUSY_TIMEOUT, PROJECTION_FILE, ProjectionError};
use crate::store::{RunsDir, load_run};

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
    let mut conn = Connection::open(&path).map_err(sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;
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
    // Enough cache that pages are written once, at commit.
    conn.pragma_update(None, "cache_size", -262_144).map_err(sql)?;
    let ids = runs.list()?;
    if let Some(bar) = bar {
        bar.set_length(ids.len() as u64);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
    tx.execute_batch(DROP).map_err(sql)?;
    tx.execute_batch(TABLES).map_err(sql)?;
    let mut stats = RebuildStats::default();
    for id in &ids {
        match load_run(&runs.run_dir(id), false, 0) {
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
    tx.execute_batch(INDEXES).map_err(sql)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sql)?;
    tx.commit().map_err(sql)?;
    // Fold the WAL back into the database file; harmless if readers keep it busy.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    conn.pragma_update(None, "cache_size", -2000).map_err(sql)?;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

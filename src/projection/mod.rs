//! `runs/projection.sqlite`: a queryable fold of every run's journal.
//!
//! It is derived data. Each run row records the last journal event applied and the
//! journal length it covers, so any reader can tell when a run is behind (its runner died
//! between the journal write and the projection update) and catch it up from the journal.
//! Writers serialise on SQLite's write lock (WAL mode, busy timeout), and every update
//! checks `last_seq` inside its transaction, so several runners, `status` and a rebuild
//! can all write at once without applying an event twice.

mod rebuild;
mod rows;
mod worker;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

pub use rebuild::{RebuildStats, rebuild};
pub use rows::{Batch, CANONICAL_ORDER, RunRow, SCHEMA_VERSION};
pub use worker::ProjectionWorker;

use crate::journal::{JOURNAL_FILE, Record};
use crate::state::RunState;
use crate::store::{LoadError, RunsDir, StoreError, load_run};

pub const PROJECTION_FILE: &str = "projection.sqlite";
/// Every process with the projection open holds this file's lock shared; a rebuild that
/// gets it exclusively knows nobody has the database open and may replace the file.
pub const PROJECTION_LOCK: &str = "projection.lock";
/// How long commands wait for another writer (a rebuild can take seconds).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `resume` of an already finished run waits to bring its rows up to date: the
/// answer matters more than the projection, which any later command catches up.
pub const LIVE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("{}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: another process is rebuilding the projection; try again when it is done", path.display())]
    Busy { path: PathBuf },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Schedule(#[from] crate::schedule::log::LogError),
}

/// An open projection database.
pub struct Projection {
    conn: Connection,
    path: PathBuf,
    runs: RunsDir,
    /// Inode of the file when opened: if someone deletes or rebuilds it away, reopen.
    ino: u64,
    busy_timeout: Duration,
    /// The tables were just created (new file or new schema): nothing is in them yet.
    fresh: bool,
    /// Our shared hold on `projection.lock`, for as long as the connection is open.
    _hold: File,
}

/// What a catch-up did.
#[derive(Debug, Default, PartialEq)]
pub struct CatchUp {
    pub synced: usize,
    pub removed: usize,
    /// Runs whose journal could not be read (damaged), with the reason.
    pub unreadable: Vec<(String, String)>,
}

impl Projection {
    /// Opens (creating if needed) the projection in the runs directory. An older schema
    /// is rebuilt from the journals.
    pub fn open(runs: &RunsDir) -> Result<Projection, ProjectionError> {
        Projection::open_with(runs, BUSY_TIMEOUT)
    }

    /// Like `open`, waiting at most `busy_timeout` whenever another process writes.
    pub fn open_with(runs: &RunsDir, busy_timeout: Duration) -> Result<Projection, ProjectionError> {
        let path = runs.root().join(PROJECTION_FILE);
        let sides = ["-wal", "-shm"].map(|suffix| PathBuf::from(format!("{}{suffix}", path.display())));
        if !path.exists()
            && sides.iter().any(|s| s.exists())
            && let Ok(_alone) = hold_lock(runs, true, Duration::ZERO)
        {
            // A WAL left from a deleted database would be replayed into a new one. Only
            // remove it when nobody else has the projection open (and might be creating it).
            if !path.exists() {
                for side in &sides {
                    let _ = std::fs::remove_file(side);
                }
            }
        }
        let hold = hold_lock(runs, false, busy_timeout)?;
        let sql = |source| ProjectionError::Sqlite { path: path.clone(), source };
        let conn = connect(&path, busy_timeout).map_err(sql)?;
        let ino = std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
        let mut p =
            Projection { conn, path, runs: runs.clone(), ino, busy_timeout, fresh: false, _hold: hold };
        p.ensure_schema()?;
        Ok(p)
    }

    fn sql(&self, source: rusqlite::Error) -> ProjectionError {
        ProjectionError::Sqlite { path: self.path.clone(), source }
    }

    /// Creates the tables in a new file, or recreates them for another schema version.
    /// They start empty: `catch_up` (or `rebuild`) fills them from the journals, so a live
    /// run never waits for a whole rebuild before its first step.
    fn ensure_schema(&mut self) -> Result<(), ProjectionError> {
        let path = self.path.clone();
        let sql = |source| ProjectionError::Sqlite { path: path.clone(), source };
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql)?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql)?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        tx.execute_batch(rows::DROP).map_err(sql)?;
        tx.execute_batch(rows::TABLES).map_err(sql)?;
        tx.execute_batch(rows::INDEXES).map_err(sql)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sql)?;
        tx.commit().map_err(sql)?;
        self.fresh = true;
        Ok(())
    }

    /// Whether this open created the tables, empty.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Refills every table from the journals in one transaction (see `rebuild`).
    pub fn rebuild(&mut self) -> Result<RebuildStats, ProjectionError> {
        let stats = rebuild::rebuild_into(&mut self.conn, &self.runs, None)?;
        self.fresh = false;
        Ok(stats)
    }

    /// Reopens if the file was deleted or replaced since it was opened.
    fn reopen_if_replaced(&mut self) -> Result<(), ProjectionError> {
        let current = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
        if current != Some(self.ino) {
            *self = Projection::open_with(&self.runs, self.busy_timeout)?;
        }
        Ok(())
    }

    /// Applies a committed batch of a live run. `state` is the fold after the batch and
    /// `journal_bytes` the journal length after it.
    pub fn apply(
        &mut self,
        state: &RunState,
        records: &[Record],
        journal_bytes: u64,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(&Batch::of(state, records, journal_bytes))
    }

    /// Writes what a batch changed, unless other writers already got that far.
    pub fn apply_batch(&mut self, batch: &Batch) -> Result<(), ProjectionError> {
        let (Some(first), Some(last)) = (batch.records.first(), batch.records.last()) else { return Ok(()) };
        let run_id = batch.run.run_id();
        self.reopen_if_replaced()?;
        let path = self.path.clone();
        let sql = |source| ProjectionError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
        let applied = match applied(&tx, run_id).map_err(sql)? {
            Some(r) if r.started_at == batch.run.started_at() => r.last_seq,
            None => 0,
            // Rows of another run that had this id: replace them.
            Some(_) => u64::MAX,
        };
        if applied == u64::MAX || applied + 1 < first.seq {
            // Behind (an update was missed) or not this run: bring it up from its journal.
            drop(tx);
            return self.sync_run(run_id).map(|_| ());
        }
        if applied >= last.seq {
            return Ok(());
        }
        let fresh: Vec<Record> = batch.records.iter().filter(|r| r.seq > applied).cloned().collect();
        rows::insert_events(&tx, run_id, &fresh).map_err(sql)?;
        rows::upsert_steps(&tx, run_id, batch.steps.iter()).map_err(sql)?;
        rows::upsert_frames(&tx, run_id, batch.frames.iter()).map_err(sql)?;
        rows::upsert_services(&tx, run_id, batch.services.iter()).map_err(sql)?;
        rows::upsert_run(&tx, &batch.run, batch.journal_bytes).map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Brings one run's rows up to date with its journal. Returns whether anything changed.
    /// Rows never go back: if another writer got further than this journal read, it wins.
    pub fn sync_run(&mut self, run_id: &str) -> Result<bool, ProjectionError> {
        let dir = self.runs.run_dir(run_id);
        let path = self.path.clone();
        let sql = |source| ProjectionError::Sqlite { path: path.clone(), source };
        for _ in 0..3 {
            let before = applied(&self.conn, run_id).map_err(sql)?;
            let mut loaded = load_run(&dir, true, before.as_ref().map_or(0, |r| r.last_seq))?;
            let same_run = before.as_ref().is_none_or(|r| r.started_at == loaded.state.started_at);
            if !same_run {
                loaded = load_run(&dir, false, 0)?;
            }
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            if applied(&tx, run_id).map_err(sql)? != before {
                continue; // changed under us: read again
            }
            let from = match &before {
                Some(r) if same_run => r.last_seq,
                Some(_) => {
                    rows::delete_run(&tx, run_id).map_err(sql)?;
                    0
                }
                None => 0,
            };
            if from >= loaded.last_seq {
                return Ok(false);
            }
            let fresh: Vec<Record> = loaded.records.into_iter().filter(|r| r.seq > from).collect();
            rows::write_run(&tx, &loaded.state, &fresh, loaded.valid_len).map_err(sql)?;
            tx.commit().map_err(sql)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Like `sync_run`, but first compares the journal's size with the length the run's
    /// rows cover, and reads nothing more when they match (the common case).
    pub fn sync_run_if_behind(&mut self, run_id: &str) -> Result<bool, ProjectionError> {
        let size = std::fs::metadata(self.runs.run_dir(run_id).join(JOURNAL_FILE)).map(|m| m.len()).ok();
        if size.is_some() && self.journal_bytes(run_id) == size {
            return Ok(false);
        }
        self.sync_run(run_id)
    }

    /// Catches every run up with its journal and drops rows of runs that no longer exist.
    /// A run is checked by comparing its journal's size with the length its rows cover.
    pub fn catch_up(&mut self) -> Result<CatchUp, ProjectionError> {
        self.reopen_if_replaced()?;
        let known: HashMap<String, u64> = {
            let mut stmt =
                self.conn.prepare("SELECT run_id, journal_bytes FROM runs").map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
                .map_err(|e| self.sql(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))?
        };
        let ids = self.runs.list()?;
        let mut result = CatchUp::default();
        for id in &ids {
            let size = std::fs::metadata(self.runs.run_dir(id).join(JOURNAL_FILE)).map(|m| m.len()).ok();
            if size.is_none() || known.get(id) == size.as_ref() {
                continue;
            }
            // One unreadable run must not hide all the others.
            match self.sync_run(id) {
                Ok(true) => result.synced += 1,
                Ok(false) => {}
                Err(ProjectionError::Load(e)) => result.unreadable.push((id.clone(), e.to_string())),
                Err(e) => return Err(e),
            }
        }
        let present: HashSet<&String> = ids.iter().collect();
        for gone in known.keys().filter(|k| !present.contains(k)) {
            rows::delete_run(&self.conn, gone).map_err(|e| self.sql(e))?;
            result.removed += 1;
        }
        match self.sync_schedule() {
            Ok(_) => {}
            Err(ProjectionError::Schedule(e)) => {
                result.unreadable.push((crate::schedule::log::DECISIONS_FILE.into(), e.to_string()))
            }
            Err(e) => return Err(e),
        }
        Ok(result)
    }

    /// Brings `schedule_decisions` up to date with `runs/.schedule/decisions.jsonl` (the
    /// scheduler calls this after each decision; `catch_up` and `rebuild` do too).
    pub fn sync_schedule(&mut self) -> Result<usize, ProjectionError> {
        self.reopen_if_replaced()?;
        let log = crate::schedule::log::read(&crate::schedule::log::path(self.runs.root()))?;
        let path = self.path.clone();
        let sql = |source| ProjectionError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
        let n = rows::sync_schedule_decisions(&tx, &log.entries).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(n)
    }

    /// Deletes the rows of run `run_id` that started at `started_at`, for `gc` once the
    /// run's directory is gone: rows of a newer run that took the same id since are left
    /// alone. Returns whether there were rows to delete.
    pub fn delete_run(&mut self, run_id: &str, started_at: &str) -> Result<bool, ProjectionError> {
        self.reopen_if_replaced()?;
        let path = self.path.clone();
        let sql = |source| ProjectionError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
        match applied(&tx, run_id).map_err(sql)? {
            Some(a) if a.started_at == started_at => {
                rows::delete_run(&tx, run_id).map_err(sql)?;
                tx.commit().map_err(sql)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The journal length the rows of `run_id` cover, if it has rows.
    pub fn journal_bytes(&self, run_id: &str) -> Option<u64> {
        self.conn
            .query_row("SELECT journal_bytes FROM runs WHERE run_id = ?1", [run_id], |r| r.get::<_, i64>(0))
            .ok()
            .map(|b| b as u64)
    }

    /// The newest successful receipts with `key`, at most `limit`: the cache's candidates.
    pub fn receipts_with_key(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<crate::receipt::Source>, ProjectionError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT run_id, step_id, visit, attempt FROM receipts
                 WHERE key = ?1 AND result IS NOT NULL
                 ORDER BY finished_at DESC, run_id DESC LIMIT ?2",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(rusqlite::params![key, limit as i64], |r| {
                Ok(crate::receipt::Source {
                    run_id: r.get(0)?,
                    step: r.get(1)?,
                    visit: r.get(2)?,
                    attempt: r.get(3)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every table in canonical order, one line per row: equal dumps mean equal projections.
    pub fn canonical_dump(&self) -> Result<String, ProjectionError> {
        canonical_dump(&self.conn).map_err(|e| self.sql(e))
    }
}

/// Takes `projection.lock`, shared or exclusive, waiting up to `wait` for a holder of the
/// other kind; `Busy` when it did not come free in time.
fn hold_lock(runs: &RunsDir, exclusive: bool, wait: Duration) -> Result<File, ProjectionError> {
    let path = runs.root().join(PROJECTION_LOCK);
    let io = |source| ProjectionError::Io { path: path.clone(), source };
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    let deadline = Instant::now() + wait;
    loop {
        let attempt = if exclusive { file.try_lock() } else { file.try_lock_shared() };
        match attempt {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(TryLockError::WouldBlock) => return Err(ProjectionError::Busy { path }),
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
    }
}

/// Opens the database file with the settings every user of it shares.
fn connect(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    // Takes effect only while the file is new; fewer, larger pages make rebuilds cheaper.
    conn.pragma_update(None, "page_size", 16384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Derived data: a power loss may drop the last commits, which a catch-up redoes.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // With 16 KiB pages, checkpoint after 4 MiB of WAL (not 16) and shrink it back after.
    conn.pragma_update(None, "wal_autocheckpoint", 256)?;
    conn.pragma_update(None, "journal_size_limit", 4 << 20)?;
    Ok(conn)
}

/// What the rows of a run cover: the last event applied, and which run they are of.
#[derive(Debug, PartialEq)]
struct Applied {
    last_seq: u64,
    started_at: String,
}

fn applied(conn: &Connection, run_id: &str) -> rusqlite::Result<Option<Applied>> {
    conn.query_row("SELECT last_seq, started_at FROM runs WHERE run_id = ?1", [run_id], |r| {
        Ok(Applied { last_seq: r.get::<_, i64>(0)? as u64, started_at: r.get(1)? })
    })
    .optional()
}

fn canonical_dump(conn: &Connection) -> rusqlite::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    for (table, order) in CANONICAL_ORDER {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))?;
        let cols = stmt.column_count();
        let _ = writeln!(out, "## {table}");
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let mut fields = Vec::with_capacity(cols);
            for i in 0..cols {
                let v: rusqlite::types::Value = row.get(i)?;
                fields.push(format!("{v:?}"));
            }
            let _ = writeln!(out, "{}", fields.join("\t"));
        }
    }
    Ok(out)
}

//! Loading a run's state: snapshot (if it checks out) plus a replay of the journal after it.

use std::path::{Path, PathBuf};

use crate::journal::{self, JOURNAL_FILE, JournalError, Record, Scan, TornTail};
use crate::state::{FoldError, RunState, SnapshotFile};

/// How the snapshot took part in a load.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotUse {
    /// No snapshot, or not asked to use one.
    Absent,
    /// Used; covered events up to this seq.
    Used(u64),
    /// Present but not trusted, for this reason; the journal was folded from the start.
    Ignored(String),
}

/// A run as read from disk.
#[derive(Debug)]
pub struct Loaded {
    pub state: RunState,
    /// Parsed records after the `records_after` asked for.
    pub records: Vec<Record>,
    pub last_seq: u64,
    pub last_sum: String,
    /// Length of the intact part of the journal.
    pub valid_len: u64,
    /// Bytes after the intact part: a crash mid-write, or a write in progress.
    pub torn: Option<TornTail>,
    pub snapshot: SnapshotUse,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{}: {err}: the journal contradicts itself", path.display())]
    Fold { path: PathBuf, err: FoldError },
    #[error(
        "{} holds run `{holds}`: a run directory must keep the name of its run (was it copied or renamed?)",
        dir.display()
    )]
    WrongDirectory { dir: PathBuf, holds: String },
}

/// Reads a run's journal, checking every line, and folds it into its state.
///
/// With `use_snapshot`, a snapshot whose recorded checksum matches the journal line it
/// covers replaces folding that prefix. `records` holds the parsed records with
/// `seq > records_after` (pass `u64::MAX` when none are needed).
pub fn load_run(run_dir: &Path, use_snapshot: bool, records_after: u64) -> Result<Loaded, LoadError> {
    load_run_from(run_dir, use_snapshot, records_after, None)
}

/// Like [`load_run`], with the journal's bytes when the caller has already read them
/// (under the run's lock, so nobody appended since).
pub fn load_run_from(
    run_dir: &Path,
    use_snapshot: bool,
    records_after: u64,
    journal: Option<Vec<u8>>,
) -> Result<Loaded, LoadError> {
    // The snapshot is read before the journal: it is written only after what it covers is
    // durable, so a journal read afterwards holds at least that much, even while a runner
    // is appending to both.
    let (snapshot, claimed) = if use_snapshot {
        let snapshot = SnapshotFile::read(run_dir);
        let claimed = snapshot.as_ref().ok().and_then(|s| s.as_ref().map(|s| (s.seq, s.sum.clone())));
        (snapshot, claimed)
    } else {
        (Ok(None), SnapshotFile::claimed(run_dir))
    };
    let verified = claimed.is_some() && use_snapshot;
    let loaded = load(run_dir, snapshot, records_after, journal)?;
    // A torn tail is only ever made of events that were not yet durable; a snapshot that
    // covers more than the intact journal proves some durable lines were lost. (A trailer
    // read alone is verified before it counts, and only if it is still the same snapshot.)
    let proven = claimed.filter(|(seq, _)| *seq > loaded.last_seq).filter(|(seq, sum)| {
        verified || SnapshotFile::read(run_dir).ok().flatten().is_some_and(|s| s.seq == *seq && s.sum == *sum)
    });
    if let Some((covered, _)) = proven {
        return Err(LoadError::Journal(JournalError::Corrupt {
            path: run_dir.join(JOURNAL_FILE),
            line: loaded.last_seq + 1,
            reason: format!(
                "state.json shows event {covered} was durable, but the intact journal ends at event {}",
                loaded.last_seq
            ),
        }));
    }
    if run_dir.file_name().is_some_and(|name| *name != *loaded.state.run_id) {
        return Err(LoadError::WrongDirectory { dir: run_dir.to_path_buf(), holds: loaded.state.run_id });
    }
    Ok(loaded)
}

fn load(
    run_dir: &Path,
    snapshot: Result<Option<SnapshotFile>, String>,
    records_after: u64,
    journal: Option<Vec<u8>>,
) -> Result<Loaded, LoadError> {
    let path = run_dir.join(JOURNAL_FILE);
    let bytes = match journal {
        Some(bytes) => bytes,
        None => std::fs::read(&path).map_err(|e| JournalError::io(&path, e))?,
    };
    let fold_err = |err| LoadError::Fold { path: path.clone(), err };

    let mut snapshot_use = SnapshotUse::Absent;
    let snapshot = match snapshot.and_then(|s| s.map(SnapshotFile::into_snapshot).transpose()) {
        Ok(s) => s,
        Err(reason) => {
            snapshot_use = SnapshotUse::Ignored(reason);
            None
        }
    };

    if let Some(snap) = snapshot {
        let scan = journal::scan_bytes_with(&path, &bytes, snap.seq.min(records_after), snap.seq)?;
        if snap.seq <= scan.last_seq && scan.boundary_sum.as_deref() == Some(snap.sum.as_str()) {
            let mut state = snap.state;
            for r in scan.records.iter().filter(|r| r.seq > snap.seq) {
                state.apply(r).map_err(fold_err)?;
            }
            return Ok(loaded(scan, state, records_after, SnapshotUse::Used(snap.seq)));
        }
        snapshot_use = SnapshotUse::Ignored(format!(
            "state.json covers event {} but does not match the journal",
            snap.seq
        ));
    }

    let scan = journal::scan_bytes(&path, &bytes, 0)?;
    let state = RunState::fold_all(&scan.records).map_err(fold_err)?;
    Ok(loaded(scan, state, records_after, snapshot_use))
}

fn loaded(scan: Scan, state: RunState, records_after: u64, snapshot: SnapshotUse) -> Loaded {
    Loaded {
        state,
        records: scan.records.into_iter().filter(|r| r.seq > records_after).collect(),
        last_seq: scan.last_seq,
        last_sum: scan.last_sum,
        valid_len: scan.valid_len,
        torn: scan.torn,
        snapshot,
    }
}

//! Creating a run so that it appears complete or not at all.
//!
//! The run is assembled under `runs/.staging/` (flow copy, lock, first journal line, all
//! synced), then renamed into place with `RENAME_NOREPLACE`. A crash leaves at most a
//! staging directory, which a later start removes; two starts with the same id cannot both
//! win; and the lock is taken before the run is visible, so nobody can resume it early.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use super::{FLOW_COPY, RunLock, RunsDir, STAGING_DIR, StoreError};
use crate::fsutil::sync_dir;
use crate::journal::{Event, JOURNAL_FILE, JournalWriter, Record, RunStarted};

/// A run that now exists, locked by this process, with its first event durable.
pub struct CreatedRun {
    pub dir: PathBuf,
    pub lock: RunLock,
    pub journal: JournalWriter,
    pub first: Record,
}

/// Staging directories younger than this may belong to a start in progress.
const STALE_STAGING: Duration = Duration::from_secs(60);

/// Creates run `started.run_id`. Returns `None` if a run with that id already exists.
pub fn create_run(
    runs: &RunsDir,
    flow_bytes: &[u8],
    started: RunStarted,
) -> Result<Option<CreatedRun>, StoreError> {
    let id = started.run_id.clone();
    let root = runs.root();
    create_dir_synced(root)?;
    let staging_root = root.join(STAGING_DIR);
    create_dir_synced(&staging_root)?;
    remove_stale_staging(&staging_root);

    // A fresh name each time: never touch a staging directory another process may own.
    let staging = loop {
        let candidate = staging_root.join(format!("{id}.{}", super::nonce(8)));
        match fs::create_dir(&candidate) {
            Ok(()) => break candidate,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StoreError::io(&candidate, e)),
        }
    };
    match assemble(runs, &staging, flow_bytes, started) {
        Ok(Some(created)) => Ok(Some(created)),
        Ok(None) => {
            let _ = fs::remove_dir_all(&staging);
            Ok(None)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn assemble(
    runs: &RunsDir,
    staging: &Path,
    flow_bytes: &[u8],
    started: RunStarted,
) -> Result<Option<CreatedRun>, StoreError> {
    let id = started.run_id.clone();
    let flow_path = staging.join(FLOW_COPY);
    let write_flow = || -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&flow_path)?;
        f.write_all(flow_bytes)?;
        f.sync_all()
    };
    write_flow().map_err(|e| StoreError::io(&flow_path, e))?;

    let mut lock = RunLock::acquire(staging, &id)?;
    let mut journal = JournalWriter::create(&staging.join(JOURNAL_FILE))?;
    journal.stage(Event::RunStarted(started));
    let first = journal.commit()?.remove(0);
    sync_dir(staging).map_err(|e| StoreError::io(staging, e))?;

    let dir = runs.run_dir(&id);
    match renameat2(AT_FDCWD, staging, AT_FDCWD, &dir, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => {}
        Err(Errno::EEXIST | Errno::ENOTEMPTY) if runs.exists(&id) => return Ok(None),
        Err(Errno::EEXIST | Errno::ENOTEMPTY) => return Err(StoreError::NotARun { dir }),
        Err(e) => return Err(StoreError::io(&dir, e.into())),
    }
    sync_dir(runs.root()).map_err(|e| StoreError::io(runs.root(), e))?;
    lock.moved_to(&dir);
    journal.moved_to(&dir.join(JOURNAL_FILE));
    Ok(Some(CreatedRun { dir, lock, journal, first }))
}

/// Creates `dir` if needed and makes its entry in the parent durable.
fn create_dir_synced(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(parent).map_err(|e| StoreError::io(parent, e))
}

/// Removes what crashed starts left behind: old staging directories nobody holds locked.
fn remove_stale_staging(staging_root: &Path) {
    let Ok(entries) = fs::read_dir(staging_root) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_STAGING);
        if old && RunLock::acquire(&path, "staging").is_ok() {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

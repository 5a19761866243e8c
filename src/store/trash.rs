//! Removing a run so that it is either still there whole or gone.
//!
//! `gc` holds the run's lock, renames the run's directory into `runs/.staging/` (one
//! atomic rename, made durable) and only then deletes its files. Deleting in place could
//! leave, after a crash, a directory with a journal but without its flow copy or its logs,
//! which every command would take for a damaged run. A trashed directory is not a run to
//! anybody (no listing, resume or rebuild looks in `.staging/`); the next `gc` removes
//! what a crashed one left there, and so does the next start, as any stale staging
//! directory.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use super::{LOCK_FILE, RunLock, RunsDir, STAGING_DIR, StoreError};
use crate::fsutil::sync_dir;

/// Names trashed runs in `.staging/` (`.gc-<id>.<nonce>`). Run ids never start with `.`,
/// so no start's staging directory (`<id>.<nonce>`) has this prefix.
const TRASH_PREFIX: &str = ".gc-";

/// Moves run `id`, whose lock the caller holds, out of the runs directory; the lock
/// follows it. From here on no command sees the run. Returns where it went.
pub fn trash_run(runs: &RunsDir, id: &str, lock: &mut RunLock) -> Result<PathBuf, StoreError> {
    let staging = runs.root().join(STAGING_DIR);
    match fs::create_dir(&staging) {
        Ok(()) => sync_dir(runs.root()).map_err(|e| StoreError::io(runs.root(), e))?,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::io(&staging, e)),
    }
    let from = runs.run_dir(id);
    let to = loop {
        let to = staging.join(format!("{TRASH_PREFIX}{id}.{}", super::nonce(8)));
        match renameat2(AT_FDCWD, &from, AT_FDCWD, &to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => break to,
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => continue,
            Err(e) => return Err(StoreError::io(&from, e.into())),
        }
    };
    lock.moved_to(&to);
    // Durable before the projection forgets the run: a crash must not bring it back
    // without its rows (a catch-up would re-add them, but nothing should need to).
    sync_dir(runs.root()).map_err(|e| StoreError::io(runs.root(), e))?;
    sync_dir(&staging).map_err(|e| StoreError::io(&staging, e))?;
    Ok(to)
}

/// Deletes a trashed run's files. The lock file goes last, so that a start cleaning
/// stale staging directories cannot lock this one while it is being deleted.
pub fn remove_trashed(dir: &Path) -> Result<(), StoreError> {
    let gone = |e: &std::io::Error| e.kind() == ErrorKind::NotFound;
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        if entry.file_name() == LOCK_FILE {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let removed = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        match removed {
            Ok(()) => {}
            Err(e) if gone(&e) => {}
            Err(e) => return Err(StoreError::io(&path, e)),
        }
    }
    let lock = dir.join(LOCK_FILE);
    match fs::remove_file(&lock) {
        Ok(()) => {}
        Err(e) if gone(&e) => {}
        Err(e) => return Err(StoreError::io(&lock, e)),
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        // Someone who found it without a lock file is removing it too: fine.
        Err(e) if gone(&e) || e.kind() == ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

/// Removes the trashed runs that a `gc` which died midway left behind (nobody holds
/// their lock). Returns how many it removed.
pub fn remove_trash_leftovers(runs: &RunsDir) -> usize {
    let Ok(entries) = fs::read_dir(runs.root().join(STAGING_DIR)) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TRASH_PREFIX) {
            continue;
        }
        let path = entry.path();
        if let Ok(_lock) = RunLock::acquire(&path, "trash")
            && remove_trashed(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trashed_run_is_no_run_and_a_leftover_is_removed_once_unlocked() {
        let root = tempfile::tempdir().expect("tempdir");
        let runs = RunsDir::new(root.path().to_path_buf());
        let dir = runs.run_dir("r1");
        fs::create_dir_all(dir.join("steps/a/1")).expect("mkdir");
        fs::write(dir.join(crate::journal::JOURNAL_FILE), b"{}\n").expect("journal");
        fs::write(dir.join("steps/a/1/stdout.log"), b"hi\n").expect("log");
        assert_eq!(runs.list().expect("list"), vec!["r1".to_string()]);

        let mut lock = RunLock::acquire(&dir, "r1").expect("lock");
        let trashed = trash_run(&runs, "r1", &mut lock).expect("trash");
        assert!(!dir.exists());
        assert!(runs.list().expect("list").is_empty());
        assert_eq!(lock.dir(), trashed);
        // Held: a cleaner leaves it alone.
        assert_eq!(remove_trash_leftovers(&runs), 0);
        assert!(trashed.join("steps/a/1/stdout.log").exists());
        // As if that gc died here: its lock is released, the next one cleans up.
        drop(lock);
        assert_eq!(remove_trash_leftovers(&runs), 1);
        assert!(!trashed.exists());
        assert!(root.path().join(STAGING_DIR).is_dir());
    }
}

//! The per-run lock: one live runner per run, released by the kernel when it dies.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{LOCK_FILE, StoreError};

/// How long to retry a lock whose recorded holder is dead.
const DEAD_HOLDER_WAIT: Duration = Duration::from_secs(1);

fn process_alive(pid: u32) -> bool {
    crate::executor::procfs::stat(pid as i32).is_some_and(|s| s.is_alive())
}

/// Held for as long as a runner drives a run. Dropping it (or dying) releases it.
#[derive(Debug)]
pub struct RunLock {
    #[allow(dead_code)] // held for its lock, never read
    file: File,
    dir: PathBuf,
}

impl RunLock {
    /// Takes the run's lock or fails at once with the holder's pid.
    pub fn acquire(run_dir: &Path, id: &str) -> Result<RunLock, StoreError> {
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
                    let pid: Option<u32> = text.trim().parse().ok();
                    // A runner killed a moment ago may still have a child between fork and
                    // exec holding a copy of the lock; that passes in microseconds.
                    let holder_dead = pid.is_some_and(|p| !process_alive(p));
                    if !holder_dead || started.elapsed() > DEAD_HOLDER_WAIT {
                        return Err(StoreError::Locked { id: id.to_string(), pid });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
            }
        }
        // The pid is for people and error messages; the lock itself is what counts.
        let write_pid = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())
        };
        write_pid(&mut file).map_err(|e| StoreError::io(&path, e))?;
        Ok(RunLock { file, dir: run_dir.to_path_buf() })
    }

    /// Follows the run directory after it was renamed into place.
    pub(crate) fn moved_to(&mut self, dir: &Path) {
        self.dir = dir.to_path_buf();
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Identity of a file as `/proc/locks` prints it: (major, minor, inode).
type FileKey = (u64, u64, u64);

/// Files that some process holds a lock on right now, read from `/proc/locks`.
/// Used to tell a live run from one whose runner died, without touching the lock.
pub fn live_lock_holders() -> HashSet<FileKey> {
    let Ok(text) = std::fs::read_to_string("/proc/locks") else { return HashSet::new() };
    text.lines()
        .filter(|l| !l.contains("->"))
        .filter_map(|l| {
            let field = l.split_whitespace().nth(5)?;
            let mut parts = field.split(':');
            let major = u64::from_str_radix(parts.next()?, 16).ok()?;
            let minor = u64::from_str_radix(parts.next()?, 16).ok()?;
            let ino = parts.next()?.parse().ok()?;
            Some((major, minor, ino))
        })
        .collect()
}

/// Whether a runner holds the lock of the run in `run_dir`, per `holders`.
pub fn is_locked(run_dir: &Path, holders: &HashSet<FileKey>) -> bool {
    let Ok(meta) = std::fs::metadata(run_dir.join(LOCK_FILE)) else { return false };
    let dev = meta.dev();
    holders.contains(&(nix::sys::stat::major(dev), nix::sys::stat::minor(dev), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_and_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = RunLock::acquire(dir.path(), "r").expect("first");
        assert!(is_locked(dir.path(), &live_lock_holders()));
        match RunLock::acquire(dir.path(), "r") {
            Err(StoreError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(lock);
        assert!(!is_locked(dir.path(), &live_lock_holders()));
        RunLock::acquire(dir.path(), "r").expect("free again");
    }
}

//! Small durable-filesystem helpers: directory fsync and atomic replace.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with what `write` produces so that a reader (or a crash) sees the old
/// or the new content, never a mix: write a temp file beside it, fsync, rename, fsync the
/// directory. Content is streamed, so a large snapshot never sits in memory twice.
/// `fault` names the crash points a test can stop it at (`<fault>-written`, `-synced`,
/// `-renamed`; see `faults`).
pub fn write_atomic(
    path: &Path,
    fault: &str,
    write: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!("{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 16, &f);
        write(&mut out)?;
        out.flush()?;
        drop(out);
        crate::faults::reached(&format!("{fault}-written"));
        f.sync_all()?;
        crate::faults::reached(&format!("{fault}-synced"));
        std::fs::rename(&tmp, path)?;
        crate::faults::reached(&format!("{fault}-renamed"));
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a file that a journal event is about to name, durably, creating its directory
/// (and making that creation durable) when needed. Content is deterministic, so a file left
/// by a crash before its event is simply written again.
pub fn write_durable(path: &Path, fault: &str, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        sync_dir(dir.parent().unwrap_or(Path::new(".")))?;
    }
    remove_stale_temps(path);
    write_atomic(path, fault, |out| out.write_all(bytes))
}

/// Replaces `path` atomically (temp file, rename) without waiting for the disk: a process
/// crash leaves the old or the new content, never a mix; only a power cut can lose it. For
/// files whose loss costs work but no truth (the journal holds that), where an fsync per
/// step would double the cost of a step.
pub fn write_replace(path: &Path, fault: &str, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!("{name}.tmp-{}", std::process::id()));
    let result = std::fs::write(&tmp, bytes).and_then(|()| {
        crate::faults::reached(&format!("{fault}-written"));
        std::fs::rename(&tmp, path)?;
        crate::faults::reached(&format!("{fault}-renamed"));
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes temp files left by an interrupted [`write_atomic`] of `path`.
pub fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let prefix = format!("{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        write_atomic(&p, "test", |w| w.write_all(b"one")).expect("write");
        write_atomic(&p, "test", |w| w.write_all(b"two")).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        std::fs::write(dir.path().join("state.json.tmp-1"), b"partial").expect("write");
        remove_stale_temps(&p);
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec!["state.json"]);
    }
}

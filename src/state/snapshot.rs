//! `state.json`: a cache of the fold up to some `seq`, so a resume replays only the rest.
//!
//! The file is two lines: the state itself, then a trailer (format, the journal position
//! it covers, a checksum of the state line). The trailer comes last so the state can be
//! streamed to disk while it is hashed. A snapshot is trusted only if its own checksum
//! holds and the journal line it claims to cover has the checksum it recorded; otherwise
//! it is ignored. Deleting it changes nothing.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RunState;
use crate::fsutil;

pub const SNAPSHOT_FILE: &str = "state.json";
/// Bumped when `RunState` changes shape; older snapshots are then ignored and rebuilt.
const SNAPSHOT_FORMAT: u32 = 2;

pub struct Snapshot {
    /// The last journal line folded in, and its checksum.
    pub seq: u64,
    pub sum: String,
    pub state: RunState,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    format: u32,
    seq: u64,
    sum: String,
    /// blake3 of the state line and of this trailer's other fields, so a damaged snapshot
    /// is ignored rather than trusted.
    hash: String,
}

impl Trailer {
    /// Finishes `state` (a hasher fed with the state line) over the trailer's own fields.
    fn expected(&self, state: blake3::Hasher) -> String {
        let mut h = state;
        h.update(format!("\n{}:{}:{}", self.format, self.seq, self.sum).as_bytes());
        h.finalize().to_hex().to_string()
    }

    /// Parses the trailer of a snapshot file and checks it against the state line.
    fn check(content: &[u8]) -> Result<(Trailer, &[u8]), String> {
        let split = content.iter().rposition(|&b| b == b'\n').ok_or("it is not a snapshot")?;
        let (body, tail) = (&content[..split], &content[split + 1..]);
        let trailer: Trailer = serde_json::from_slice(tail).map_err(|e| e.to_string())?;
        let mut h = blake3::Hasher::new();
        h.update(body);
        if trailer.expected(h) != trailer.hash {
            return Err("its checksum does not match (damaged)".into());
        }
        Ok((trailer, body))
    }
}

/// Passes writes through while hashing them.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `state.json` atomically (temp file, fsync, rename, fsync directory).
pub fn write_snapshot(run_dir: &Path, state: &RunState, sum: &str) -> std::io::Result<()> {
    fsutil::write_atomic(&run_dir.join(SNAPSHOT_FILE), "snapshot", |out| {
        let mut body = Hashing { inner: &mut *out, hasher: blake3::Hasher::new() };
        serde_json::to_writer(&mut body, state).map_err(std::io::Error::other)?;
        let mut trailer =
            Trailer { format: SNAPSHOT_FORMAT, seq: state.seq, sum: sum.to_string(), hash: String::new() };
        trailer.hash = trailer.expected(body.hasher);
        out.write_all(b"\n")?;
        serde_json::to_writer(&mut *out, &trailer).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    })
}

/// A snapshot file whose checksum and format check out, its state not yet parsed.
pub struct SnapshotFile {
    pub seq: u64,
    pub sum: String,
    body: Vec<u8>,
}

impl SnapshotFile {
    /// Reads `state.json`: `Ok(None)` if there is none, `Err` saying why it is unusable.
    pub fn read(run_dir: &Path) -> Result<Option<SnapshotFile>, String> {
        let path = run_dir.join(SNAPSHOT_FILE);
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let unusable = |why: String| format!("{} is unusable: {why}", path.display());
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        let (trailer, body) = Trailer::check(&bytes).map_err(unusable)?;
        if trailer.format != SNAPSHOT_FORMAT {
            return Err(unusable(format!("format {}, expected {SNAPSHOT_FORMAT}", trailer.format)));
        }
        let body_len = body.len();
        bytes.truncate(body_len);
        Ok(Some(SnapshotFile { seq: trailer.seq, sum: trailer.sum, body: bytes }))
    }

    /// What the snapshot says it covers, read from its trailer alone (the file's last few
    /// hundred bytes) and not yet verified: cheap enough to do for every run of a rebuild.
    pub fn claimed(run_dir: &Path) -> Option<(u64, String)> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(run_dir.join(SNAPSHOT_FILE)).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(1024))).ok()?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).ok()?;
        let tail = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let line = &tail[tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)..];
        let trailer: Trailer = serde_json::from_slice(line).ok()?;
        Some((trailer.seq, trailer.sum))
    }

    /// Parses the state it holds.
    pub fn into_snapshot(self) -> Result<Snapshot, String> {
        let mut state: RunState =
            serde_json::from_slice(&self.body).map_err(|e| format!("{SNAPSHOT_FILE} is unusable: {e}"))?;
        state.reindex();
        Ok(Snapshot { seq: self.seq, sum: self.sum, state })
    }
}

/// Loads the snapshot if there is a usable one. `Err` says why an existing one was ignored.
pub fn load_snapshot(run_dir: &Path) -> Result<Option<Snapshot>, String> {
    SnapshotFile::read(run_dir)?.map(SnapshotFile::into_snapshot).transpose()
}

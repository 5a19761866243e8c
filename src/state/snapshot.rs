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
const SNAPSHOT_FORMAT: u32 = 1;

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
    /// blake3 of the state line, so a damaged snapshot is ignored rather than trusted.
    state_hash: String,
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
    fsutil::write_atomic(&run_dir.join(SNAPSHOT_FILE), |out| {
        let mut body = Hashing { inner: &mut *out, hasher: blake3::Hasher::new() };
        serde_json::to_writer(&mut body, state).map_err(std::io::Error::other)?;
        let trailer = Trailer {
            format: SNAPSHOT_FORMAT,
            seq: state.seq,
            sum: sum.to_string(),
            state_hash: body.hasher.finalize().to_hex().to_string(),
        };
        out.write_all(b"\n")?;
        serde_json::to_writer(&mut *out, &trailer).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    })
}

/// Loads the snapshot if there is a usable one. `Err` says why an existing one was ignored.
pub fn load_snapshot(run_dir: &Path) -> Result<Option<Snapshot>, String> {
    let path = run_dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let unusable = |why: String| format!("{} is unusable: {why}", path.display());
    let content = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let Some(split) = content.iter().rposition(|&b| b == b'\n') else {
        return Err(unusable("it is not a snapshot".into()));
    };
    let (body, trailer) = (&content[..split], &content[split + 1..]);
    let trailer: Trailer = serde_json::from_slice(trailer).map_err(|e| unusable(e.to_string()))?;
    if trailer.format != SNAPSHOT_FORMAT {
        return Err(unusable(format!("format {}, expected {SNAPSHOT_FORMAT}", trailer.format)));
    }
    if blake3::hash(body).to_hex().as_str() != trailer.state_hash {
        return Err(unusable("its checksum does not match (damaged)".into()));
    }
    let mut state: RunState = serde_json::from_slice(body).map_err(|e| unusable(e.to_string()))?;
    state.reindex();
    Ok(Some(Snapshot { seq: trailer.seq, sum: trailer.sum, state }))
}

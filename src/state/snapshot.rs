//! `state.json`: a cache of the fold up to some `seq`, so a resume replays only the rest.
//!
//! The file is two lines: a header (format, the journal position it covers, a checksum
//! of the second line) and the state itself. A snapshot is trusted only if its own
//! checksum holds and the journal line it claims to cover has the checksum it recorded;
//! otherwise it is ignored. Deleting it changes nothing.

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
struct Header {
    format: u32,
    seq: u64,
    sum: String,
    /// blake3 of the state line, so a damaged snapshot is ignored rather than trusted.
    state_hash: String,
}

/// Writes `state.json` atomically (temp file, fsync, rename, fsync directory).
pub fn write_snapshot(run_dir: &Path, state: &RunState, sum: &str) -> std::io::Result<()> {
    let body = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    let header = Header {
        format: SNAPSHOT_FORMAT,
        seq: state.seq,
        sum: sum.to_string(),
        state_hash: blake3::hash(&body).to_hex().to_string(),
    };
    let mut bytes = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    bytes.extend_from_slice(&body);
    bytes.push(b'\n');
    fsutil::write_atomic(&run_dir.join(SNAPSHOT_FILE), &bytes)
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
    let mut lines = bytes.split(|&b| b == b'\n');
    let (Some(head), Some(body)) = (lines.next(), lines.next()) else {
        return Err(unusable("it is not a snapshot".into()));
    };
    let header: Header = serde_json::from_slice(head).map_err(|e| unusable(e.to_string()))?;
    if header.format != SNAPSHOT_FORMAT {
        return Err(unusable(format!("format {}, expected {SNAPSHOT_FORMAT}", header.format)));
    }
    if blake3::hash(body).to_hex().as_str() != header.state_hash {
        return Err(unusable("its checksum does not match (damaged)".into()));
    }
    let mut state: RunState = serde_json::from_slice(body).map_err(|e| unusable(e.to_string()))?;
    state.reindex();
    Ok(Some(Snapshot { seq: header.seq, sum: header.sum, state }))
}

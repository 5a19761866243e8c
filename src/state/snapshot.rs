//! `state.json`: a cache of the fold up to some `seq`, so a resume replays only the rest.
//!
//! A snapshot is trusted only if the journal line it claims to cover has the checksum it
//! recorded; anything else and it is ignored. Deleting it changes nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RunState;
use crate::fsutil;

pub const SNAPSHOT_FILE: &str = "state.json";
/// Bumped when `RunState` changes shape; older snapshots are then ignored and rebuilt.
const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    /// The last journal line folded in, and its checksum.
    pub seq: u64,
    pub sum: String,
    pub state: RunState,
}

/// Writes `state.json` atomically (temp file, fsync, rename, fsync directory).
pub fn write_snapshot(run_dir: &Path, state: &RunState, sum: &str) -> std::io::Result<()> {
    let snap =
        Snapshot { format: SNAPSHOT_FORMAT, seq: state.seq, sum: sum.to_string(), state: state.clone() };
    let bytes = serde_json::to_vec(&snap).map_err(std::io::Error::other)?;
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
    let mut snap: Snapshot = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a snapshot this runner reads ({e})", path.display()))?;
    if snap.format != SNAPSHOT_FORMAT {
        return Err(format!("{} has format {}, expected {SNAPSHOT_FORMAT}", path.display(), snap.format));
    }
    snap.state.reindex();
    Ok(Some(snap))
}

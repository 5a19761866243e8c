//! `runner cancel`'s request to a live runner: a small file in the run directory, then
//! SIGTERM. The runner that gets the signal reads the file to know it was a cancel, and by
//! whom, and journals that; the file names the runner's pid, so a request left behind
//! never turns a later, unrelated SIGTERM into a cancel.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// In the run directory; never mistaken for a run file or an inbox verdict.
pub const CANCEL_FILE: &str = "cancel.request";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The runner process it is meant for.
    pub pid: u32,
    pub by: String,
    pub at: String,
}

/// Writes the request durably, before the signal is sent.
pub fn write_request(run_dir: &Path, req: &CancelRequest) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    crate::fsutil::write_durable(&run_dir.join(CANCEL_FILE), "cancel", &bytes)
}

/// The request meant for this process, if there is one.
pub fn request_for_me(run_dir: &Path) -> Option<CancelRequest> {
    request_for(run_dir, std::process::id())
}

/// The request meant for the runner with this pid, if there is one.
pub fn request_for(run_dir: &Path, pid: u32) -> Option<CancelRequest> {
    let bytes = std::fs::read(run_dir.join(CANCEL_FILE)).ok()?;
    let req: CancelRequest = serde_json::from_slice(&bytes).ok()?;
    (req.pid == pid).then_some(req)
}

/// Removes a request (handled, or left behind by a runner that died).
pub fn clear(run_dir: &Path) {
    let _ = std::fs::remove_file(run_dir.join(CANCEL_FILE));
}

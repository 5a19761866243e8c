//! A test hook for durability tests: `RUNNER_TEST_CRASH_AT=point[:n]` makes the runner
//! SIGKILL itself the n-th time (default 1) it reaches `point`, so tests can kill it at
//! exactly the bad moment instead of hoping a timed kill lands there.
//!
//! Points: `before-commit` (events staged, not yet durable; children wait at their gates),
//! `after-commit` (events durable; gates not opened, projection not updated),
//! `after-projection`, and for `state.json`: `snapshot-written` (temp file written, not
//! synced), `snapshot-synced` (synced, not renamed), `snapshot-renamed` (renamed, directory
//! not synced).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub const ENV: &str = "RUNNER_TEST_CRASH_AT";

/// Called at a crash point; does nothing unless the environment asks for this point.
pub fn reached(point: &str) {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let spec = SPEC.get_or_init(|| {
        let value = std::env::var(ENV).ok()?;
        let (name, n) = match value.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().ok()?),
            None => (value, 1),
        };
        Some((name, n))
    });
    if let Some((name, n)) = spec
        && name == point
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; wait for it to land.
        loop {
            std::thread::park();
        }
    }
}

//! Test hooks for durability tests, inert unless their environment variable is set.
//!
//! `RUNNER_TEST_CRASH_AT=point[:n]` makes the runner SIGKILL itself the n-th time it
//! reaches `point` (the first, by default), so tests kill it at exactly the bad moment
//! instead of hoping a timed kill lands there. Points: `before-commit` (events staged, not
//! yet durable; children wait at their gates), `after-commit` (events durable; gates not
//! opened, projection not updated), `after-projection` (batch handed to the projection
//! thread), and for `state.json`: `snapshot-written` (temp file written, not synced),
//! `snapshot-synced` (synced, not renamed), `snapshot-renamed` (renamed, directory not
//! synced); the same three for a large routing candidate set (`routing-*`) and a called
//! flow's copy (`call-copy-*`).
//!
//! `RUNNER_TEST_IO_ERROR=point[:n[:kind]]` makes the n-th operation at `point` fail the way
//! a full or failing disk does, where no real one is at hand. Points: `journal-write` (half
//! of a commit is written, then the write fails), `journal-sync` (the write succeeds, the
//! `fdatasync` fails). Kinds: `enospc` (default), `eio`.
//!
//! `RUNNER_TEST_NOW=<RFC 3339 timestamp>` is the time `runner gc` and `runner schedule`
//! take as now, so tests can age runs by days without waiting or forging journals.
//! `RUNNER_TEST_NOW=@<file>` reads the timestamp from the file at every look, so a test
//! moves a live scheduler's clock forward by rewriting the file.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub const ENV: &str = "RUNNER_TEST_CRASH_AT";
pub const IO_ENV: &str = "RUNNER_TEST_IO_ERROR";
pub const NOW_ENV: &str = "RUNNER_TEST_NOW";

/// A parsed `point[:n[:kind]]`.
struct Spec {
    point: String,
    n: u64,
    kind: Option<String>,
    hits: AtomicU64,
}

impl Spec {
    fn from_env(var: &str) -> Option<Spec> {
        let value = std::env::var(var).ok()?;
        let mut parts = value.splitn(3, ':');
        let point = parts.next()?.to_string();
        let n = parts.next().map_or(Some(1), |n| n.parse().ok())?;
        Some(Spec { point, n, kind: parts.next().map(str::to_string), hits: AtomicU64::new(0) })
    }

    /// Whether this is the n-th time `point` is reached.
    fn fires(&self, point: &str) -> bool {
        self.point == point && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == self.n
    }
}

/// Called at a crash point; does nothing unless the environment asks for this point.
pub fn reached(point: &str) {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    if SPEC.get_or_init(|| Spec::from_env(ENV)).as_ref().is_some_and(|s| s.fires(point)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; wait for it to land.
        loop {
            std::thread::park();
        }
    }
}

/// The error an I/O operation at `point` must fail with, if the environment asks for one.
pub fn io_error(point: &str) -> Option<io::Error> {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    let spec = SPEC.get_or_init(|| Spec::from_env(IO_ENV)).as_ref()?;
    if !spec.fires(point) {
        return None;
    }
    let errno = match spec.kind.as_deref() {
        Some("eio") => nix::errno::Errno::EIO,
        _ => nix::errno::Errno::ENOSPC,
    };
    Some(io::Error::from_raw_os_error(errno as i32))
}

/// The current time, or the one `RUNNER_TEST_NOW` gives (ignored unless it parses).
pub fn now() -> jiff::Timestamp {
    let Ok(value) = std::env::var(NOW_ENV) else { return jiff::Timestamp::now() };
    let text = match value.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).unwrap_or_default(),
        None => value,
    };
    text.trim().parse().unwrap_or_else(|_| jiff::Timestamp::now())
}

//! The runs directory: where runs live, how they are named, created, locked and loaded.

pub mod cancel;
mod create;
mod load;
mod lock;
mod trash;

use std::path::{Path, PathBuf};

pub use create::{CreatedRun, create_run};
pub use load::{LoadError, Loaded, SnapshotUse, load_run, load_run_from};
pub use lock::{RunLock, is_locked, live_lock_holders};
pub use trash::{remove_trash_leftovers, remove_trashed, trash_run};

use crate::journal::{JOURNAL_FILE, RunStarted};

/// The flow as it was when the run started; resume uses this copy.
pub const FLOW_COPY: &str = "flow.toml";
pub const LOCK_FILE: &str = "lock";
pub const STEPS_DIR: &str = "steps";
/// Candidate sets too large to put in a routing event.
pub const ROUTING_DIR: &str = "routing";

/// Where an attempt's files live: `steps/<step>/<attempt>` for the first visit and
/// `steps/<step>#<visit>/<attempt>` for later ones, so nothing is ever overwritten.
pub fn attempt_dir(run_dir: &Path, step: &str, visit: u32, attempt: u32) -> PathBuf {
    let name = if visit <= 1 { step.to_string() } else { format!("{step}#{visit}") };
    run_dir.join(STEPS_DIR).join(name).join(attempt.to_string())
}

/// How a step's visit is named to users: `review`, then `review#2`, `review#3`.
pub fn visit_label(step: &str, visit: u32) -> String {
    if visit <= 1 { step.to_string() } else { format!("{step}#{visit}") }
}
/// Where runs are assembled before they appear under their id (never a valid run id).
const STAGING_DIR: &str = ".staging";
/// The longest run id (it is a directory name).
pub const MAX_RUN_ID_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "invalid run id {0:?}: use 1 to 128 letters, digits, `.`, `_` or `-`, not starting with `.` or \
         `projection.`"
    )]
    BadRunId(String),
    #[error("no run `{id}` in {}", dir.display())]
    NotFound { id: String, dir: PathBuf },
    #[error("{} exists but is not a run (it has no journal); remove it or choose another --run-id", dir.display())]
    NotARun { dir: PathBuf },
    #[error("no runs{} in {}", flow.as_ref().map(|f| format!(" of flow `{f}`")).unwrap_or_default(), dir.display())]
    NoRuns { flow: Option<String>, dir: PathBuf },
    #[error(
        "`{prefix}` is the start of {} runs ({}{}); give more of the id",
        matches.len(),
        matches.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
        if matches.len() > 5 { ", …" } else { "" }
    )]
    Ambiguous { prefix: String, matches: Vec<String> },
    #[error(
        "run `{id}` is locked by another runner process{}; wait for it to finish, or stop it with `kill {}`",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        pid.map(|p| p.to_string()).unwrap_or_else(|| "<pid>".into())
    )]
    Locked { id: String, pid: Option<u32> },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io { path: path.to_path_buf(), source }
    }
}

/// Checks a run id given by a user: it becomes a directory name beside the projection's
/// files, so `projection.*` is taken.
pub fn validate_run_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_RUN_ID_LEN
        && !id.starts_with('.')
        && !id.starts_with("projection.")
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(()) } else { Err(StoreError::BadRunId(id.to_string())) }
}

/// A readable id that sorts by start time: `20261121-234244.123-nightly-k3f9`.
/// The random tail keeps concurrent starts apart; creation still refuses to reuse an id.
pub fn generate_run_id(flow_name: &str) -> String {
    let stamp = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S%.3f").to_string();
    let mut name: String = flow_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(MAX_RUN_ID_LEN - stamp.len() - 6)
        .collect();
    if name.is_empty() {
        name.push_str("run");
    }
    format!("{stamp}-{name}-{}", nonce(4))
}

/// `len` random-looking characters from [0-9a-z] (no i, l, o, u): time, pid and a counter
/// hashed. Enough to keep concurrent starts apart; creation still checks for collisions.
pub(crate) fn nonce(len: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}:{}:{}",
        jiff::Timestamp::now().as_nanosecond(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    blake3::hash(seed.as_bytes())
        .as_bytes()
        .iter()
        .take(len)
        .map(|b| ALPHABET[(*b & 31) as usize] as char)
        .collect()
}

/// The directory that holds every run (`--runs-dir`).
#[derive(Clone, Debug)]
pub struct RunsDir {
    root: PathBuf,
}

impl RunsDir {
    pub fn new(root: PathBuf) -> RunsDir {
        RunsDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn exists(&self, id: &str) -> bool {
        self.run_dir(id).join(JOURNAL_FILE).is_file()
    }

    /// The directory of an existing run, or a "no such run" error.
    pub fn existing(&self, id: &str) -> Result<PathBuf, StoreError> {
        validate_run_id(id)?;
        if self.exists(id) {
            Ok(self.run_dir(id))
        } else {
            Err(StoreError::NotFound { id: id.to_string(), dir: self.root.clone() })
        }
    }

    /// The run a user means by `id`: that run, or the only run whose id starts with it.
    pub fn resolve(&self, id: &str) -> Result<String, StoreError> {
        validate_run_id(id)?;
        if self.exists(id) {
            return Ok(id.to_string());
        }
        let mut matches: Vec<String> = self.list()?.into_iter().filter(|r| r.starts_with(id)).collect();
        match matches.len() {
            0 => Err(StoreError::NotFound { id: id.to_string(), dir: self.root.clone() }),
            1 => Ok(matches.remove(0)),
            _ => Err(StoreError::Ambiguous { prefix: id.to_string(), matches }),
        }
    }

    /// `--run-id ID` (or a unique prefix of it), else `--last [FLOW]`.
    pub fn select(&self, run_id: Option<&str>, last: Option<&str>) -> Result<String, StoreError> {
        match (run_id, last) {
            (Some(id), _) => self.resolve(id),
            (None, Some(flow)) => self.last(Some(flow).filter(|f| !f.is_empty())),
            (None, None) => self.last(None),
        }
    }

    /// Every run id, sorted. A missing runs directory has no runs.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&self.root, e)),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| validate_run_id(name).is_ok() && self.exists(name))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The most recently started run, optionally only of the flow with this name.
    pub fn last(&self, flow: Option<&str>) -> Result<String, StoreError> {
        let wanted = flow.map(flow_name_of);
        let mut best: Option<(String, String)> = None;
        for id in self.list()? {
            let Some((ts, started)) = read_run_started(&self.run_dir(id.as_str())) else { continue };
            if wanted.as_ref().is_some_and(|w| *w != started.flow) {
                continue;
            }
            if best.as_ref().is_none_or(|(bts, bid)| (&ts, &id) > (bts, bid)) {
                best = Some((ts, id));
            }
        }
        best.map(|(_, id)| id).ok_or_else(|| StoreError::NoRuns { flow: wanted, dir: self.root.clone() })
    }
}

/// The flow a user means by `nightly`, `flows/nightly.toml` or `etl.v2`: runs know their
/// flow by its file name without `.toml` (and only that suffix: `etl.v2` keeps its dot).
pub fn flow_name_of(arg: &str) -> String {
    let name =
        Path::new(arg).file_name().map_or_else(|| arg.to_string(), |n| n.to_string_lossy().into_owned());
    name.strip_suffix(".toml").map(str::to_string).unwrap_or(name)
}

/// Reads just the first journal line: when and how the run started.
pub fn read_run_started(run_dir: &Path) -> Option<(String, RunStarted)> {
    use std::io::BufRead;
    let file = std::fs::File::open(run_dir.join(JOURNAL_FILE)).ok()?;
    let mut line = Vec::new();
    std::io::BufReader::new(file).read_until(b'\n', &mut line).ok()?;
    let scan = crate::journal::scan_bytes(Path::new(JOURNAL_FILE), &line, 0).ok()?;
    let record = scan.records.into_iter().next()?;
    match record.event {
        crate::journal::Event::RunStarted(e) => Some((record.ts, e)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids() {
        for ok in ["a", "etl-2026-11-21", "x.y_z", &"a".repeat(128)] {
            assert!(validate_run_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "../x",
            "a b",
            "é",
            &"a".repeat(129),
            "projection.lock",
            "projection.sqlite",
        ] {
            assert!(validate_run_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_ids_are_valid_distinct_and_sort_by_time() {
        let a = generate_run_id("night ly/../x");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = generate_run_id("nightly");
        assert!(validate_run_id(&a).is_ok(), "{a}");
        assert!(a < b, "{a} {b}");
        assert!(a.contains("-night_ly____x-"), "{a}");
        assert_ne!(generate_run_id("x"), generate_run_id("x"));
        assert!(validate_run_id(&generate_run_id(&"x".repeat(300))).is_ok());
    }
}

//! `--follow` for `logs` and `status`: stream a run live from its files, woken by file
//! notifications (inotify through `notify`), until the run ends.
//!
//! A run has ended when no runner holds its lock. That is checked on every notification
//! and, so that a runner killed without a last write is noticed too, once a second while
//! nothing changes; everything left in the files is printed before the command returns.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::error::{Error, io_at};
use crate::journal::JOURNAL_FILE;
use crate::report::Reporter;
use crate::session::SERVICES_DIR;
use crate::state::RunState;
use crate::store::{StoreError, is_locked, live_lock_holders};

/// How long to wait for a notification before looking at the lock anyway.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Notifications about everything under a run directory.
pub struct RunWatch {
    _watcher: notify::RecommendedWatcher,
    rx: Receiver<notify::Result<notify::Event>>,
    dir: PathBuf,
}

impl RunWatch {
    pub fn new(dir: &Path) -> Result<RunWatch, Error> {
        let (tx, rx) = channel();
        let mut watcher = notify::recommended_watcher(tx)
            .map_err(|e| Error::Usage(format!("cannot watch {}: {e}", dir.display())))?;
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|e| Error::Usage(format!("cannot watch {}: {e}", dir.display())))?;
        Ok(RunWatch { _watcher: watcher, rx, dir: dir.to_path_buf() })
    }

    /// Waits for the next changes (or `IDLE_CHECK`); returns the paths that changed, and
    /// whether a directory was created (whose files may predate its watch).
    pub fn wait(&self) -> (Vec<PathBuf>, bool) {
        let mut paths = Vec::new();
        let mut new_dir = false;
        let mut take = |ev: notify::Result<notify::Event>| {
            // Reads (ours included) are no news; only writes, creations and removals are.
            if let Ok(ev) = ev
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                new_dir |= matches!(ev.kind, notify::EventKind::Create(notify::event::CreateKind::Folder));
                paths.extend(ev.paths);
            }
        };
        match self.rx.recv_timeout(IDLE_CHECK) {
            Ok(ev) => take(ev),
            Err(RecvTimeoutError::Timeout) => {}
            // The watcher is gone: nothing will wake us, so behave as if idle.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(IDLE_CHECK),
        }
        while let Ok(ev) = self.rx.try_recv() {
            take(ev);
        }
        (paths, new_dir)
    }

    /// Whether a runner still holds the run. `/proc/locks` is read in pieces and can miss a
    /// lock while others change, so "not held" is believed only when seen twice.
    pub fn live(&self) -> bool {
        let held = || is_locked(&self.dir, &live_lock_holders());
        held() || {
            std::thread::sleep(Duration::from_millis(50));
            held()
        }
    }
}

/// One log file being followed.
struct Tail {
    offset: u64,
    partial: Vec<u8>,
    label: String,
}

/// Prints the logs of a run (`only`: one step's or one service's) as they grow, each line
/// prefixed `[step]` or `[service]` unless one was chosen, until the run ends.
pub fn follow_logs(dir: &Path, only: Option<Only>) -> Result<(), Error> {
    let watch = RunWatch::new(dir)?;
    let mut tails: HashMap<PathBuf, Tail> = HashMap::new();
    let prefix = only.is_none();
    let mut out = std::io::stdout().lock();
    let scan_all = |tails: &mut HashMap<PathBuf, Tail>, out: &mut dyn Write| -> Result<(), Error> {
        let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .filter(|p| label_of(dir, p, only.as_ref()).is_some())
            .collect();
        files.sort();
        for f in files {
            read_new(dir, &f, tails, only.as_ref(), prefix, out)?;
        }
        Ok(())
    };
    scan_all(&mut tails, &mut out)?;
    loop {
        let live = watch.live();
        let (paths, new_dir) = watch.wait();
        if new_dir {
            scan_all(&mut tails, &mut out)?;
        }
        for p in paths {
            if label_of(dir, &p, only.as_ref()).is_some() {
                read_new(dir, &p, &mut tails, only.as_ref(), prefix, &mut out)?;
            }
        }
        out.flush().map_err(io_at("stdout"))?;
        if !live && !watch.live() {
            // The run ended: whatever is left, including unterminated last lines.
            scan_all(&mut tails, &mut out)?;
            for t in tails.values_mut().filter(|t| !t.partial.is_empty()) {
                let line = std::mem::take(&mut t.partial);
                write_line(&mut out, prefix.then_some(t.label.as_str()), &line)?;
            }
            out.flush().map_err(io_at("stdout"))?;
            return Ok(());
        }
    }
}

/// What `logs --follow` is limited to.
pub enum Only {
    Step(String),
    Service(String),
}

/// `[label]` for a log file of the run: `build` (or `build#2`) for a step's stdout/stderr,
/// `api` for a service; `None` for other files and for logs `only` leaves out.
fn label_of(dir: &Path, path: &Path, only: Option<&Only>) -> Option<String> {
    let rel = path.strip_prefix(dir).ok()?;
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let (kind, label) = match parts.as_slice() {
        [steps, name, _attempt, file]
            if steps == crate::store::STEPS_DIR && (file == "stdout.log" || file == "stderr.log") =>
        {
            ("step", name.clone())
        }
        [services, rest @ ..] if services == SERVICES_DIR && !rest.is_empty() => {
            let joined = rest.join("/");
            ("service", joined.strip_suffix(".log")?.to_string())
        }
        _ => return None,
    };
    match only {
        None => Some(label),
        Some(Only::Step(s)) if kind == "step" && (label == *s || label.starts_with(&format!("{s}#"))) => {
            Some(label)
        }
        Some(Only::Service(s)) if kind == "service" && label == *s => Some(label),
        Some(_) => None,
    }
}

fn read_new(
    dir: &Path,
    path: &Path,
    tails: &mut HashMap<PathBuf, Tail>,
    only: Option<&Only>,
    prefix: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let Some(label) = label_of(dir, path, only) else { return Ok(()) };
    let tail = tails.entry(path.to_path_buf()).or_insert(Tail { offset: 0, partial: Vec::new(), label });
    let Ok(mut file) = std::fs::File::open(path) else { return Ok(()) };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Masking rewrites a log in place (same length or shorter): read it again from there.
    if len < tail.offset {
        tail.offset = len;
    }
    if len == tail.offset {
        return Ok(());
    }
    file.seek(SeekFrom::Start(tail.offset)).map_err(io_at(path))?;
    let mut bytes = Vec::new();
    file.take(len - tail.offset).read_to_end(&mut bytes).map_err(io_at(path))?;
    tail.offset += bytes.len() as u64;
    tail.partial.extend_from_slice(&bytes);
    let Some(end) = tail.partial.iter().rposition(|b| *b == b'\n') else { return Ok(()) };
    let complete: Vec<u8> = tail.partial.drain(..=end).collect();
    for line in complete.split_inclusive(|b| *b == b'\n') {
        write_line(out, prefix.then_some(tail.label.as_str()), line)?;
    }
    Ok(())
}

fn write_line(out: &mut dyn Write, label: Option<&str>, line: &[u8]) -> Result<(), Error> {
    if let Some(l) = label {
        write!(out, "[{l}] ").map_err(io_at("stdout"))?;
    }
    out.write_all(line).map_err(io_at("stdout"))?;
    if !line.ends_with(b"\n") {
        writeln!(out).map_err(io_at("stdout"))?;
    }
    Ok(())
}

/// Prints the run's events as the runner's console does, as they are journaled, until the
/// run ends; returns its state then.
pub fn follow_events(dir: &Path, reporter: &Reporter) -> Result<RunState, Error> {
    let watch = RunWatch::new(dir)?;
    let path = dir.join(JOURNAL_FILE);
    let loaded = crate::store::load_run(dir, true, u64::MAX)?;
    let mut state = loaded.state;
    let mut seq = state.seq;
    loop {
        let live = watch.live();
        let bytes = std::fs::read(&path).map_err(io_at(&path))?;
        let scan = crate::journal::scan_bytes(&path, &bytes, seq).map_err(StoreError::Journal)?;
        for r in &scan.records {
            state.apply(r).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
            reporter.event(r, &state);
        }
        seq = scan.last_seq;
        // Nobody held the run before this read: the read has everything it will ever get.
        if !live {
            return Ok(state);
        }
        // Wait for the journal to change (other files' changes wake us too; cheap).
        loop {
            let (paths, _) = watch.wait();
            if paths.is_empty() || paths.iter().any(|p| p.ends_with(JOURNAL_FILE)) {
                break;
            }
        }
    }
}

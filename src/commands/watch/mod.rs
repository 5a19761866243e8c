//! `runner watch FLOW --on GLOB`: start a run of FLOW for every file that arrives and
//! matches, once per file.
//!
//! A file is taken when it has stopped changing (size and mtime the same for `--settle`),
//! so a file still being copied in is not read half-written. Its run id comes from its
//! path and content ([`pattern::run_id_for`]), which makes "once per file" a property of
//! the runs directory, not of this process's memory: after a restart, a run that exists
//! and succeeded is skipped, one whose runner died is resumed, a failed one is left alone
//! (unless `--retry-failed`). Files that arrived while no watcher ran are found by a scan
//! at start. Each run is a `runner run` child process; at most `--max-runs` run at once,
//! the rest wait in arrival order.

mod children;
mod pattern;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use notify::{RecursiveMode, Watcher};

use crate::cli::{Global, WatchArgs};
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::flow::{Flow, FlowError, FlowErrorKind};
use crate::state::RunStatus;
use crate::store::{RunsDir, is_locked, live_lock_holders};
use children::{Launcher, Running};
use pattern::{Pattern, run_id_for};

/// What wakes the watcher.
enum Msg {
    Fs(notify::Result<notify::Event>),
    Signal(Signal),
}

/// A matching file that has not settled yet: what it looked like, and since when.
struct Pending {
    look: Look,
    since: Instant,
}

/// Size and modification time: a file whose look holds still for `--settle` is complete.
type Look = (u64, Option<SystemTime>);

/// A run waiting for a free slot.
struct Job {
    id: String,
    path: PathBuf,
    /// `Some(why)` when the run exists and is resumed.
    resume: Option<&'static str>,
}

pub fn watch(g: &Global, args: WatchArgs) -> Result<ExitCode, Error> {
    let bytes =
        std::fs::read(&args.flow).map_err(|e| FlowError::whole_file(&args.flow, FlowErrorKind::Read(e)))?;
    let flow = Flow::from_bytes(&args.flow, &bytes)?;
    let cwd = std::env::current_dir().map_err(io_at("."))?;
    let pattern = Pattern::new(&args.on)?;
    let root = cwd.join(pattern.root());
    if !root.is_dir() {
        return Err(Error::Usage(format!(
            "--on `{}`: {} is not a directory (create it first)",
            args.on,
            pattern.root().display()
        )));
    }
    let exe = std::env::current_exe().map_err(io_at("the runner's own executable"))?;

    let (tx, rx) = channel();
    let signal_tx = tx.clone();
    crate::executor::forward_signals(move |sig| {
        let _ = signal_tx.send(Msg::Signal(sig));
    })
    .map_err(io_at("signal handlers"))?;
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(Msg::Fs(ev));
    })
    .map_err(|e| Error::Usage(format!("cannot watch {}: {e}", root.display())))?;
    let mode = if pattern.recursive() { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
    watcher.watch(&root, mode).map_err(|e| Error::Usage(format!("cannot watch {}: {e}", root.display())))?;

    let mut w = Watch {
        runs: g.runs(),
        flow_name: flow.name.clone(),
        launcher: Launcher {
            exe,
            runs_dir: g.runs_dir.clone(),
            flow: args.flow.clone(),
            jobs: args.jobs,
            quiet: g.quiet,
            verbose: g.verbose,
        },
        settle: args.settle,
        max_runs: args.max_runs as usize,
        retry_failed: args.retry_failed,
        pending: BTreeMap::new(),
        decided: HashMap::new(),
        queue: VecDeque::new(),
        running: Vec::new(),
        waiting_logged: HashSet::new(),
    };
    log(&format!(
        "watching {} for {} (flow {}, at most {} runs at once, settle {:?})",
        root.display(),
        args.on,
        args.flow.display(),
        w.max_runs,
        w.settle
    ));
    // Scanned after the watch is in place, so a file arriving now is seen by one or both.
    for path in pattern.scan(&cwd) {
        w.touch(path);
    }
    let tick = (w.settle / 4).clamp(Duration::from_millis(20), Duration::from_millis(200));
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            // Nothing can wake us any more; keep settling and reaping on the clock.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(tick);
                None
            }
        };
        for msg in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match msg {
                Msg::Signal(sig) => {
                    drop(watcher);
                    return Ok(w.shutdown(sig, &rx));
                }
                Msg::Fs(Err(e)) => log(&format!("warning: file notifications: {e}")),
                // Reads are no news (ours, and the steps' reading the file, included).
                Msg::Fs(Ok(ev)) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
                Msg::Fs(Ok(ev)) => {
                    // Files created with their directory may predate its watch: look.
                    if matches!(ev.kind, notify::EventKind::Create(notify::event::CreateKind::Folder)) {
                        for path in pattern.scan(&cwd) {
                            w.touch(path);
                        }
                    }
                    for path in ev.paths.into_iter().filter(|p| pattern.matches(p, &cwd)) {
                        w.touch(path);
                    }
                }
            }
        }
        w.settle_files();
        w.reap();
        w.launch();
    }
}

/// The watcher's state between wake-ups.
struct Watch {
    runs: RunsDir,
    flow_name: String,
    launcher: Launcher,
    settle: Duration,
    max_runs: usize,
    retry_failed: bool,
    /// Files seen changing, by path, until they settle.
    pending: BTreeMap<PathBuf, Pending>,
    /// How each file looked when it was last decided about: a notification that changes
    /// nothing (a scan, a touch of the directory) is not a new arrival.
    decided: HashMap<PathBuf, Look>,
    queue: VecDeque<Job>,
    running: Vec<Running>,
    /// Runs already reported as driven by another runner (said once, checked again later).
    waiting_logged: HashSet<String>,
}

impl Watch {
    /// A matching file was created, written, renamed or removed: wait for it to settle.
    fn touch(&mut self, path: PathBuf) {
        let Some(look) = look(&path) else {
            // Gone (moved away when done, most often): nothing to keep about it.
            self.pending.remove(&path);
            self.decided.remove(&path);
            return;
        };
        if self.decided.get(&path) == Some(&look) && !self.pending.contains_key(&path) {
            return;
        }
        match self.pending.get_mut(&path) {
            Some(p) if p.look == look => {}
            Some(p) => *p = Pending { look, since: Instant::now() },
            None => {
                self.pending.insert(path, Pending { look, since: Instant::now() });
            }
        }
    }

    /// Decides about every file that has held still for `--settle`. Files are also looked
    /// at on the clock: a writer's last change may come without a notification we keep.
    fn settle_files(&mut self) {
        let now = Instant::now();
        let mut ready = Vec::new();
        self.pending.retain(|path, p| match look(path) {
            None => false,
            Some(l) if l != p.look => {
                *p = Pending { look: l, since: now };
                true
            }
            Some(_) if now.duration_since(p.since) >= self.settle => {
                ready.push((p.since, path.clone(), p.look));
                false
            }
            Some(_) => true,
        });
        // In the order they stopped changing: arrival order, as far as we can know it.
        ready.sort();
        for (_, path, l) in ready {
            self.decide(path, l);
        }
    }

    /// Start, resume, skip or wait, by what the runs directory says about the file's run.
    fn decide(&mut self, path: PathBuf, l: Look) {
        let (id, canonical) = match run_id_for(&self.flow_name, &path) {
            Ok(x) => x,
            Err(e) => {
                log(&format!("cannot read {}: {e}; it is looked at again when it changes", path.display()));
                return;
            }
        };
        self.decided.insert(path.clone(), l);
        if self.queue.iter().any(|j| j.id == id) || self.running.iter().any(|r| r.id == id) {
            return;
        }
        let resume = if !self.runs.exists(&id) {
            None
        } else {
            let dir = self.runs.run_dir(&id);
            let (status, cancelled_by) = match crate::store::load_run(&dir, true, u64::MAX) {
                Ok(loaded) => (loaded.state.status, loaded.state.cancelled_by),
                Err(e) => {
                    log(&format!("skipped {id} for {}: cannot read the run: {e}", canonical.display()));
                    return;
                }
            };
            match status {
                RunStatus::Succeeded => {
                    log(&format!("skipped {id} for {}: already done", canonical.display()));
                    return;
                }
                RunStatus::Failed if !self.retry_failed => {
                    log(&format!(
                        "skipped {id} for {}: it failed before (`runner resume --run-id {id}`, or watch with --retry-failed)",
                        canonical.display()
                    ));
                    return;
                }
                RunStatus::Waiting => {
                    log(&format!(
                        "skipped {id} for {}: it waits for an approval (`runner approve --run-id {id} --step … --resume`)",
                        canonical.display()
                    ));
                    return;
                }
                RunStatus::Failed => Some("failed before, --retry-failed"),
                RunStatus::Interrupted if cancelled_by.is_some() => {
                    log(&format!(
                        "skipped {id} for {}: cancelled by {}; resume it by hand (`runner resume --run-id {id}`)",
                        canonical.display(),
                        cancelled_by.as_deref().unwrap_or_default()
                    ));
                    return;
                }
                RunStatus::Interrupted => Some("interrupted"),
                RunStatus::Running if held(&dir) => {
                    // Someone else drives it (a watcher killed without its children, or a
                    // person): look again later, when it may have ended one way or another.
                    if self.waiting_logged.insert(id.clone()) {
                        log(&format!(
                            "waiting: {id} for {} is driven by another runner; looked at again later",
                            canonical.display()
                        ));
                    }
                    self.decided.remove(&path);
                    self.pending.insert(path, Pending { look: l, since: Instant::now() });
                    return;
                }
                RunStatus::Running => Some("its runner died"),
            }
        };
        self.queue.push_back(Job { id, path: canonical, resume });
    }

    /// Starts queued runs while there is a free slot.
    fn launch(&mut self) {
        while self.running.len() < self.max_runs {
            let Some(job) = self.queue.pop_front() else { return };
            match self.launcher.start(&job.id, &job.path) {
                Ok(r) => {
                    match job.resume {
                        None => log(&format!("started {} for {}", job.id, job.path.display())),
                        Some(why) => log(&format!("resumed {} for {} ({why})", job.id, job.path.display())),
                    }
                    self.running.push(r);
                }
                Err(e) => log(&format!("cannot start {} for {}: {e}", job.id, job.path.display())),
            }
        }
    }

    /// Notes the runs that ended.
    fn reap(&mut self) {
        self.running.retain_mut(|r| match r.exited() {
            Some(code) => {
                log(&format!("finished {} for {} with exit code {code}", r.id, r.path.display()));
                false
            }
            None => true,
        });
    }

    /// SIGINT/SIGTERM: no new runs; the running ones get the signal (they stop their steps
    /// and stay resumable) and are waited for. A second signal is passed on too.
    fn shutdown(mut self, sig: Signal, rx: &Receiver<Msg>) -> ExitCode {
        let left = self.queue.len() + self.pending.len();
        log(&format!(
            "{sig} received: stopping {} run(s){}",
            self.running.len(),
            if left > 0 {
                format!("; {left} waiting file(s) are taken at the next start")
            } else {
                String::new()
            }
        ));
        for r in &self.running {
            r.forward(sig);
        }
        while !self.running.is_empty() {
            if let Ok(Msg::Signal(again)) = rx.recv_timeout(Duration::from_millis(50)) {
                for r in &self.running {
                    r.forward(again);
                }
            }
            self.reap();
        }
        if sig == Signal::SIGINT { ExitCode::Interrupted } else { ExitCode::Terminated }
    }
}

/// A file's size and mtime, or `None` if it is gone (or not a file).
fn look(path: &Path) -> Option<Look> {
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    Some((meta.len(), meta.modified().ok()))
}

/// Whether a runner holds the run's lock. `/proc/locks` is read in pieces and can miss a
/// lock while others change, so "not held" is believed only when seen twice.
fn held(dir: &Path) -> bool {
    is_locked(dir, &live_lock_holders()) || {
        std::thread::sleep(Duration::from_millis(50));
        is_locked(dir, &live_lock_holders())
    }
}

/// One line per decision, with the time, on stderr.
fn log(text: &str) {
    use std::io::Write;
    let now = jiff::Zoned::now();
    let _ = writeln!(std::io::stderr().lock(), "{} watch: {text}", now.strftime("%H:%M:%S"));
}

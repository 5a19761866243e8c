//! One thread watches all of a run's jobs: a look at each job's exit-code file (no
//! process), then one `squeue` for all the jobs without one. Queries are a second apart
//! after any change and back off to the flow's `poll` while nothing changes, so 200 jobs
//! in flight cost one query a second at most, not 200. Where the filesystem reports
//! changes (inotify: a local disk, or a node that is this machine), a job's start and
//! exit-code files wake the poller at once; on NFS, which does not report writes made
//! elsewhere, the polling alone finds them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{JobInfo, Slurm, read_exit, read_started};

/// The shortest wait between two `squeue` queries. Files are looked at more often: at
/// every wake-up (a new job, a file that appeared) as well.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a job Slurm says is over (or no longer knows) may take to show its exit-code
/// file: a shared filesystem can lag behind the node that wrote it.
const SETTLE: Duration = Duration::from_secs(3);

/// What the poller learned about a job.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// Seen running for the first time, on `node`; since `started_ms` (ms since the
    /// epoch) when its start file says so.
    Running { job: String, node: String, started_ms: Option<u64> },
    /// The job's exit-code file is there: the command ended with `code`.
    Finished { job: String, code: i32, node: Option<String>, started_ms: Option<u64>, ended_ms: Option<u64> },
    /// Slurm says the job is over (or no longer knows it) and it left no exit-code file.
    /// `state` is Slurm's last word (`None`: the job vanished), `code` what `scontrol`
    /// still remembers.
    Ended { job: String, state: Option<String>, node: Option<String>, code: Option<i32> },
    /// A query failed (the controller is down?); the poller keeps trying.
    Failed(String),
}

struct Watched {
    dir: PathBuf,
    /// Its id is durable: release it (again, if it is still held).
    release: bool,
    released: bool,
    /// The runner is stopping it: report its end without waiting for a late file.
    stopping: bool,
    running_seen: bool,
    /// When Slurm first said it was over, or did not know it.
    over_since: Option<Instant>,
    last: Option<JobInfo>,
}

#[derive(Default)]
struct Watch {
    jobs: HashMap<String, Watched>,
    stop: bool,
    /// Something to do at once (a new job, a stop).
    poke: bool,
}

/// The polling thread; it stops when dropped.
pub struct Poller {
    shared: Arc<(Mutex<Watch>, Condvar)>,
    handle: Option<JoinHandle<()>>,
    files: Files,
}

/// Wakes the thread when a job's files appear; `None` where inotify is unavailable.
type Files = Arc<Mutex<Option<notify::RecommendedWatcher>>>;

fn watch_dir(files: &Files, dir: &std::path::Path, on: bool) {
    use notify::Watcher;
    if let Some(w) = files.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let _ = if on { w.watch(dir, notify::RecursiveMode::NonRecursive) } else { w.unwatch(dir) };
    }
}

impl Poller {
    /// Starts the thread; `deliver` gets each round's updates.
    pub fn start(
        slurm: Slurm,
        max_interval: Duration,
        deliver: impl Fn(Vec<Update>) + Send + 'static,
    ) -> Poller {
        let shared: Arc<(Mutex<Watch>, Condvar)> = Arc::default();
        let woken = Arc::clone(&shared);
        let files = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let ours = ev.is_ok_and(|ev| {
                !matches!(ev.kind, notify::EventKind::Access(_))
                    && ev.paths.iter().any(|p| {
                        p.file_name().is_some_and(|n| n == super::EXIT_FILE || n == super::STARTED_FILE)
                    })
            });
            if ours {
                woken.0.lock().unwrap_or_else(|e| e.into_inner()).poke = true;
                woken.1.notify_one();
            }
        })
        .ok();
        let files: Files = Arc::new(Mutex::new(files));
        let (theirs, their_files) = (Arc::clone(&shared), Arc::clone(&files));
        let handle = std::thread::Builder::new()
            .name("slurm-poller".into())
            .spawn(move || {
                poll_forever(&slurm, &theirs, &their_files, max_interval.max(MIN_INTERVAL), &deliver)
            })
            .ok();
        Poller { shared, handle, files }
    }

    /// Watches a job whose id is durable: it is released, then followed to its end.
    /// `stopping`: the runner is already stopping it (see [`Poller::stopping`]).
    pub fn add(&self, job: String, dir: PathBuf, stopping: bool) {
        watch_dir(&self.files, &dir, true);
        let mut w = self.lock();
        w.jobs.insert(
            job,
            Watched {
                dir,
                release: true,
                released: false,
                stopping,
                running_seen: false,
                over_since: None,
                last: None,
            },
        );
        w.poke = true;
        self.shared.1.notify_one();
    }

    /// The job is being stopped by the runner: report its end promptly.
    pub fn stopping(&self, job: &str) {
        let mut w = self.lock();
        if let Some(j) = w.jobs.get_mut(job) {
            j.stopping = true;
        }
        w.poke = true;
        self.shared.1.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Watch> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.1.notify_one();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn poll_forever(
    slurm: &Slurm,
    shared: &(Mutex<Watch>, Condvar),
    files: &Files,
    max: Duration,
    deliver: &dyn Fn(Vec<Update>),
) {
    let lock = || shared.0.lock().unwrap_or_else(|e| e.into_inner());
    let mut interval = MIN_INTERVAL;
    let mut next_query = Instant::now();
    loop {
        // Wait for the next query, or for a new job, a file, or a stop.
        let mut w = lock();
        while !w.stop && !w.poke && (w.jobs.is_empty() || Instant::now() < next_query) {
            let wait = if w.jobs.is_empty() {
                Duration::from_secs(3600)
            } else {
                next_query.saturating_duration_since(Instant::now())
            };
            w = shared.1.wait_timeout(w, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
        if w.stop {
            return;
        }
        w.poke = false;
        let to_release: Vec<String> =
            w.jobs.iter().filter(|(_, j)| j.release && !j.released).map(|(id, _)| id.clone()).collect();
        drop(w);
        let mut updates = Vec::new();
        if !to_release.is_empty() {
            match slurm.release(&to_release) {
                Ok(()) => {
                    let mut w = lock();
                    for id in &to_release {
                        if let Some(j) = w.jobs.get_mut(id) {
                            j.released = true;
                        }
                    }
                }
                Err(e) => updates.push(Update::Failed(e)),
            }
        }
        let (found, ask) = finished_files(&lock());
        let mut changed = false;
        // Dirs to stop watching, after the lock is let go: the file watcher's own thread
        // takes it to wake this one, and unwatching waits for that thread.
        let mut done = Vec::new();
        {
            let mut w = lock();
            for u in &found {
                if let Update::Finished { job, .. } = u
                    && let Some(j) = w.jobs.remove(job)
                {
                    done.push(j.dir);
                }
            }
            updates.extend(started_files(&mut w));
        }
        updates.extend(found);
        let query = !ask.is_empty() && Instant::now() >= next_query;
        if query {
            match slurm.query(&ask) {
                Ok(states) => {
                    let (more, again, gone) = judge(slurm, &mut lock(), &ask, &states);
                    changed |= !more.is_empty() || again;
                    updates.extend(more);
                    done.extend(gone);
                }
                Err(e) => updates.push(Update::Failed(e)),
            }
        }
        for dir in &done {
            watch_dir(files, dir, false);
        }
        if !updates.is_empty() {
            deliver(updates);
        }
        if query {
            // A job in its settle time is looked at again soon.
            let settling = lock().jobs.values().any(|j| j.over_since.is_some());
            interval = if changed || settling { MIN_INTERVAL } else { (interval * 2).min(max) };
            next_query = Instant::now() + interval;
        }
    }
}

/// Jobs whose exit-code file is there, and the ids still to ask Slurm about.
fn finished_files(w: &Watch) -> (Vec<Update>, Vec<String>) {
    let mut found = Vec::new();
    let mut ask = Vec::new();
    for (id, j) in &w.jobs {
        match finished_file(id, &j.dir) {
            Some(u) => found.push(u),
            None => ask.push(id.clone()),
        }
    }
    (found, ask)
}

/// Jobs whose command started (its start file is there) that were not seen running yet.
fn started_files(w: &mut Watch) -> Vec<Update> {
    let mut out = Vec::new();
    for (id, j) in w.jobs.iter_mut().filter(|(_, j)| !j.running_seen) {
        if let Some((node, started_ms)) = read_started(&j.dir) {
            j.running_seen = true;
            out.push(Update::Running { job: id.clone(), node, started_ms });
        }
    }
    out
}

/// `Finished`, if the job's exit-code file is there.
fn finished_file(id: &str, dir: &std::path::Path) -> Option<Update> {
    let (code, ended_ms) = read_exit(dir)?;
    let started = read_started(dir);
    Some(Update::Finished {
        job: id.to_string(),
        code,
        node: started.as_ref().map(|s| s.0.clone()),
        started_ms: started.and_then(|s| s.1),
        ended_ms,
    })
}

/// Turns what `squeue` said into updates; also whether a held job was released again.
/// Also the directories of the jobs it is done with.
fn judge(
    slurm: &Slurm,
    w: &mut Watch,
    ask: &[String],
    states: &HashMap<String, JobInfo>,
) -> (Vec<Update>, bool, Vec<PathBuf>) {
    let now = Instant::now();
    let mut updates = Vec::new();
    let mut rerelease = Vec::new();
    for id in ask {
        let Some(j) = w.jobs.get_mut(id) else { continue };
        let info = states.get(id);
        match info {
            Some(info) if info.active() => {
                j.over_since = None;
                if info.state == "RUNNING" && !j.running_seen {
                    j.running_seen = true;
                    let started_ms = read_started(&j.dir).and_then(|s| s.1);
                    updates.push(Update::Running { job: id.clone(), node: info.node.clone(), started_ms });
                }
                // Released before, held again (a release that did not take): release it.
                if info.held_by_user() && j.released {
                    rerelease.push(id.clone());
                }
            }
            _ => {
                let since = *j.over_since.get_or_insert(now);
                if let Some(info) = info {
                    j.last = Some(info.clone());
                }
                if j.stopping || now.duration_since(since) >= SETTLE {
                    // One more look: the file may have landed since the first.
                    match finished_file(id, &j.dir) {
                        Some(u) => updates.push(u),
                        None => {
                            let last = j.last.clone();
                            let code = last
                                .as_ref()
                                .filter(|l| super::cancelled_why(&l.state).is_none())
                                .and_then(|_| slurm.exit_code(id));
                            updates.push(Update::Ended {
                                job: id.clone(),
                                node: last.as_ref().map(|l| l.node.clone()).filter(|n| !n.is_empty()),
                                state: last.map(|l| l.state),
                                code,
                            });
                        }
                    }
                }
            }
        }
    }
    let mut gone = Vec::new();
    for u in &updates {
        if let Update::Finished { job, .. } | Update::Ended { job, .. } = u
            && let Some(j) = w.jobs.remove(job)
        {
            gone.push(j.dir);
        }
    }
    let again = !rerelease.is_empty() && slurm.release(&rerelease).is_ok();
    (updates, again, gone)
}

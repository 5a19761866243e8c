//! A harness that drives the real `runner` binary in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const RUNNER: &str = env!("CARGO_BIN_EXE_runner");

/// A scratch directory that is the working directory of every command; runs go to `runs/`.
pub struct Env {
    dir: tempfile::TempDir,
}

/// The result of one command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(out: Output) -> Run {
        Run::from(out)
    }

    fn from(out: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        let code = out.status.code().unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Run {
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing the output when it is not the expected one.
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Run {
        assert_eq!(
            self.code, expected,
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(self.stdout.contains(needle), "stdout lacks {needle:?}:\n{}", self.stdout);
        self
    }

    /// The run id printed on stdout by `runner run`.
    pub fn run_id(&self) -> String {
        self.stdout.lines().next().unwrap_or_default().trim().to_string()
    }
}

impl Env {
    pub fn new() -> Env {
        Env { dir: tempfile::Builder::new().prefix("runner-test-").tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.path().join("runs")
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.runs_dir().join(id)
    }

    /// Writes a file relative to the scratch directory and returns its path.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
        p
    }

    /// Writes `flows/<name>.toml` and returns the relative path to pass to `runner run`.
    pub fn flow(&self, name: &str, toml: &str) -> String {
        let rel = format!("flows/{name}.toml");
        self.write(&rel, toml);
        rel
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_default()
    }

    /// Number of lines in a side-effect file: how often something ran.
    pub fn count(&self, rel: &str) -> usize {
        self.read(rel).lines().count()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(RUNNER);
        c.args(args)
            .current_dir(self.path())
            .env_remove("RUNNER_RUNS_DIR")
            .env_remove("CI")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("runner starts"))
    }

    /// Starts `runner` in the background with captured output.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("runner starts")
    }

    /// The ids of all runs, sorted.
    pub fn run_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.runs_dir()) else { return Vec::new() };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("journal.jsonl").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }

    pub fn only_run(&self) -> String {
        let ids = self.run_ids();
        assert_eq!(ids.len(), 1, "expected exactly one run, found {ids:?}");
        ids[0].clone()
    }

    /// The journal of a run, one JSON value per line.
    pub fn journal(&self, id: &str) -> Vec<serde_json::Value> {
        journal_at(&self.run_dir(id).join("journal.jsonl"))
    }

    /// Event types in order, with the step for step events: `StepStarted:build`.
    pub fn events(&self, id: &str) -> Vec<String> {
        self.journal(id)
            .iter()
            .map(|e| {
                let ty = e["type"].as_str().unwrap_or_default();
                match e["data"]["step"].as_str() {
                    Some(step) => format!("{ty}:{step}"),
                    None => ty.to_string(),
                }
            })
            .collect()
    }

    /// Asserts that the live projection equals one rebuilt from the journals, row for row.
    #[track_caller]
    pub fn assert_rebuild_matches_live(&self) {
        let live = self.projection_dump();
        self.run(&["rebuild-projection"]).code(0);
        assert_eq!(self.projection_dump(), live, "the rebuilt projection differs from the live one");
    }

    /// Every table of the projection in canonical order.
    pub fn projection_dump(&self) -> String {
        let runs = runner::store::RunsDir::new(self.runs_dir());
        runner::projection::Projection::open(&runs).expect("open projection").canonical_dump().expect("dump")
    }
}

/// Waits until `cond` holds, failing the test after `limit`.
#[track_caller]
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child with a time limit, killing it if it hangs.
#[track_caller]
pub fn finish(mut child: Child, limit: Duration) -> Run {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Run::from(child.wait_with_output().expect("output"));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "runner did not finish within {limit:?}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal");
}

/// The journal at `path`, one JSON value per line.
pub fn journal_at(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("journal")
        .lines()
        .map(|l| serde_json::from_str(l).expect("journal line is JSON"))
        .collect()
}

/// Each step succeeded exactly once, and its command (which appends a line to
/// `<step>.out`) ran at least once and at most once more than it was interrupted: every
/// execution was journaled before it ran, and none came after the step's success.
#[track_caller]
pub fn assert_each_step_once(env: &Env, journal: &[serde_json::Value], steps: &[String]) {
    for step in steps {
        let count = |ty: &str| {
            journal.iter().filter(|e| e["type"] == ty && e["data"]["step"] == step.as_str()).count()
        };
        assert_eq!(count("StepSucceeded"), 1, "step {step} succeeded more or less than once");
        let ran = env.count(&format!("{step}.out"));
        let interrupted = count("StepInterrupted");
        assert!(
            ran >= 1 && ran <= 1 + interrupted,
            "step {step} ran {ran} times with {interrupted} interruptions"
        );
    }
}

/// SIGKILLs the runner unless it already finished; returns its exit code if it had.
pub fn kill_or_finished(mut child: Child) -> Option<i32> {
    if let Some(status) = child.try_wait().expect("wait") {
        return status.code();
    }
    signal(child.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    None
}

/// Whether a process is alive and not a zombie (PID 1 here may be slow to reap).
pub fn alive(pid: i32) -> bool {
    runner::executor::procfs::stat(pid).is_some_and(|s| s.is_alive())
}

pub fn read_pid(env: &Env, rel: &str) -> i32 {
    env.read(rel).trim().parse().unwrap_or_else(|_| panic!("{rel} holds no pid: {:?}", env.read(rel)))
}

//! The runs `runner watch` drives: each one a `runner run` child process of its own
//! binary, so that a run behaves exactly as if typed (lock, journal, signals, exit code).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;

/// One run the watcher started and waits for.
pub struct Running {
    pub id: String,
    pub path: PathBuf,
    child: Child,
}

/// How to start a run: what `runner run` gets besides the id and the file.
pub struct Launcher {
    pub exe: PathBuf,
    pub runs_dir: PathBuf,
    pub flow: PathBuf,
    pub jobs: Option<u32>,
    pub quiet: bool,
    pub verbose: bool,
}

impl Launcher {
    /// Starts `runner run FLOW --run-id ID --trigger-file PATH`, which starts the run or
    /// resumes it if it exists. Its output reaches ours line by line, prefixed `[ID]`.
    pub fn start(&self, id: &str, path: &Path) -> std::io::Result<Running> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--runs-dir").arg(&self.runs_dir);
        if self.quiet {
            cmd.arg("--quiet");
        }
        if self.verbose {
            cmd.arg("--verbose");
        }
        cmd.arg("run").arg(&self.flow).arg("--run-id").arg(id).arg("--trigger-file").arg(path);
        if let Some(j) = self.jobs {
            cmd.arg("--jobs").arg(j.to_string());
        }
        // Its own process group: a Ctrl+C in the terminal reaches the watcher only, which
        // forwards it once; a runner given SIGINT twice would take the second as "hurry".
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        if let Some(out) = child.stdout.take() {
            relay(out, format!("[{id}] "), false);
        }
        if let Some(err) = child.stderr.take() {
            relay(err, format!("[{id}] "), true);
        }
        Ok(Running { id: id.to_string(), path: path.to_path_buf(), child })
    }
}

impl Running {
    /// The exit code if the run's process has ended (128 + N for a death by signal N).
    pub fn exited(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))),
            Ok(None) => None,
            // Not ours to wait for any more (cannot happen for a child we hold): call it gone.
            Err(_) => Some(-1),
        }
    }

    /// Passes a signal on: the runner stops its steps and exits 130/143, resumable.
    pub fn forward(&self, sig: Signal) {
        let Ok(pid) = i32::try_from(self.child.id()) else { return };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Copies a child's stream to ours, a whole line at a time behind `prefix`, on a thread
/// that ends with the stream. It is not joined: a step's leftover process may hold the pipe.
fn relay(stream: impl Read + Send + 'static, prefix: String, to_stderr: bool) {
    let _ = std::thread::Builder::new().name("relay".into()).spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            let mut buf = prefix.as_bytes().to_vec();
            buf.extend_from_slice(&line);
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&buf)
            } else {
                std::io::stdout().lock().write_all(&buf)
            };
        }
    });
}

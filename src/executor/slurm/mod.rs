//! Running steps as Slurm batch jobs, through the Slurm CLI (`sbatch`, `squeue`,
//! `scontrol`, `scancel`): no library, no REST daemon, nothing a small cluster lacks.
//!
//! The write-ahead rule holds for jobs the way the start gate makes it hold for local
//! processes: a job is submitted *held* (`sbatch --hold`), its id is journaled, and only
//! then is it released. A runner that dies in between leaves a held job that never ran,
//! which the next resume finds by its name and cancels. The exit-code file the job script
//! writes as its last act is the truth about how the command ended; `squeue` only says
//! whether a job is still queued or running, and `scontrol` gives an exit code while Slurm
//! still remembers a job that left no file.

mod poller;
mod script;

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Waiters;

pub use poller::{Poller, Update};
pub use script::{
    CLAIM, EXIT_FILE, JOB_SCRIPT, SLURM_LOG, STARTED_FILE, job_name, job_name_prefix, read_exit,
    read_started, write_job_script,
};

/// How long one Slurm command may take before the runner gives up on it (a controller
/// that does not answer must not hang a run forever).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Job ids per `squeue`/`scontrol`/`scancel` command: bounds the command line.
const CHUNK: usize = 500;

/// Whether `sbatch` is on PATH.
pub fn available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("sbatch").is_file()))
}

/// What `squeue` says about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `CANCELLED`, `TIMEOUT`, …
    pub state: String,
    /// Where it runs or ran; empty while pending.
    pub node: String,
    /// Why it waits (`JobHeldUser`, `Resources`, …) or `None`.
    pub reason: String,
}

impl JobInfo {
    /// Still queued, running or being cleaned up: not over yet.
    pub fn active(&self) -> bool {
        !TERMINAL.contains(&self.state.as_str())
    }

    /// Held by the user who submitted it: by this runner, until its id was durable.
    pub fn held_by_user(&self) -> bool {
        self.state == "PENDING" && self.reason == "JobHeldUser"
    }
}

/// Slurm's job states after which the job does nothing more.
const TERMINAL: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
    "REVOKED",
    "SPECIAL_EXIT",
];

/// Why Slurm ended a job that left no exit code, in words, for a terminal state in
/// which the cluster (not the command) ended it; `None` for `COMPLETED` and `FAILED`.
pub fn cancelled_why(state: &str) -> Option<&'static str> {
    Some(match state {
        "CANCELLED" => "the job was cancelled (scancel, or an administrator)",
        "TIMEOUT" => "the job reached its Slurm time limit",
        "NODE_FAIL" => "the node running the job failed",
        "PREEMPTED" => "the job was preempted",
        "BOOT_FAIL" => "the node could not boot for the job",
        "DEADLINE" => "the job reached its deadline",
        "OUT_OF_MEMORY" => "the job ran out of memory",
        "REVOKED" => "the job was revoked (federation)",
        _ => return None,
    })
}

/// How `scancel` stops jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Cancel those still queued; running ones are left alone (a signal to a queued job
    /// would start it, on Slurm 22.05).
    Pending,
    /// SIGTERM to every process of a running job, the batch script too: a graceful stop.
    Term,
    /// Slurm's own cancel: SIGTERM, then SIGKILL after its `KillWait`.
    Now,
}

/// A job to submit.
pub struct Submit<'a> {
    pub script: &'a Path,
    pub name: &'a str,
    /// Where Slurm writes the job's own output (the script's messages, slurmstepd's).
    pub log: &'a Path,
    /// The attempt's directory: the job starts there (it exists on every node that
    /// shares the runs directory) and its script moves to the step's working directory.
    pub dir: &'a Path,
    pub options: &'a [String],
    /// Added to the runner's environment; sbatch passes the whole of it to the job.
    pub env: &'a [(String, String)],
    /// Inherited variables the job must not see.
    pub remove_env: &'a [String],
}

/// The Slurm CLI, run through the reaper (the runner reaps every child; a thread of its
/// own must not `wait` for one).
#[derive(Clone)]
pub struct Slurm {
    waiters: Waiters,
}

impl Slurm {
    pub fn new(waiters: Waiters) -> Slurm {
        Slurm { waiters }
    }

    /// Submits a held job; returns its id.
    pub fn submit(&self, job: &Submit) -> Result<String, String> {
        let mut args: Vec<String> = vec![
            "--parsable".into(),
            "--hold".into(),
            format!("--job-name={}", job.name),
            format!("--output={}", job.log.display()),
            format!("--chdir={}", job.dir.display()),
            "--export=ALL".into(),
            // A requeued job (node failure, preemption) would run the attempt a second time.
            "--no-requeue".into(),
        ];
        args.extend(job.options.iter().cloned());
        args.push(job.script.display().to_string());
        let out = self.run("sbatch", &args, job.env, job.remove_env)?;
        if out.code != 0 {
            return Err(out.failure("sbatch"));
        }
        // `--parsable` prints `id` or `id;cluster`.
        let id = out.stdout.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("sbatch printed {:?} instead of a job id", out.stdout.trim()));
        }
        Ok(id)
    }

    /// Releases held jobs. Ids Slurm no longer knows, or jobs no longer held, are fine.
    pub fn release(&self, ids: &[String]) -> Result<(), String> {
        for chunk in ids.chunks(CHUNK) {
            let out = self.run("scontrol", &["release".into(), chunk.join(",")], &[], &[])?;
            if out.code != 0 && !out.benign() {
                return Err(out.failure("scontrol release"));
            }
        }
        Ok(())
    }

    /// Cancels or signals jobs (see [`Cancel`]).
    pub fn cancel(&self, ids: &[String], how: Cancel) -> Result<(), String> {
        for chunk in ids.chunks(CHUNK) {
            let mut args: Vec<String> = Vec::new();
            match how {
                Cancel::Pending => args.push("--state=PENDING".into()),
                Cancel::Term => args.extend(["--full".into(), "--signal=TERM".into()]),
                Cancel::Now => {}
            }
            args.extend(chunk.iter().cloned());
            let out = self.run("scancel", &args, &[], &[])?;
            if out.code != 0 && !out.benign() {
                return Err(out.failure("scancel"));
            }
        }
        Ok(())
    }

    /// The state of each job Slurm still knows, with one `squeue` per `CHUNK` ids.
    pub fn query(&self, ids: &[String]) -> Result<HashMap<String, JobInfo>, String> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let args = [
                "-h".into(),
                "-t".into(),
                "all".into(),
                "-o".into(),
                "%i|%T|%N|%r".into(),
                "-j".into(),
                chunk.join(","),
            ];
            let res = self.run("squeue", &args, &[], &[])?;
            // Every id unknown: squeue fails with "Invalid job id specified".
            if res.code != 0 && !res.benign() {
                return Err(res.failure("squeue"));
            }
            out.extend(parse_squeue(&res.stdout));
        }
        Ok(out)
    }

    /// This user's jobs whose name starts with `prefix`: `(id, state)`.
    pub fn named(&self, prefix: &str) -> Result<Vec<(String, JobInfo)>, String> {
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or("cannot tell this user's name")?;
        let args =
            ["-h".into(), "-t".into(), "all".into(), "-u".into(), user, "-o".into(), "%i|%T|%N|%r|%j".into()];
        let res = self.run("squeue", &args, &[], &[])?;
        if res.code != 0 {
            return Err(res.failure("squeue"));
        }
        let mut out = Vec::new();
        for line in res.stdout.lines() {
            let Some((head, name)) = line.rsplit_once('|') else { continue };
            if name.starts_with(prefix)
                && let Some((id, info)) = parse_squeue(head).into_iter().next()
            {
                out.push((id, info));
            }
        }
        Ok(out)
    }

    /// The exit code Slurm recorded for a job it still remembers (`scontrol show job`).
    pub fn exit_code(&self, id: &str) -> Option<i32> {
        let res =
            self.run("scontrol", &["-o".into(), "show".into(), "job".into(), id.into()], &[], &[]).ok()?;
        let field = res.stdout.split_whitespace().find_map(|w| w.strip_prefix("ExitCode="))?;
        let (code, signal) = field.split_once(':')?;
        let (code, signal): (i32, i32) = (code.parse().ok()?, signal.parse().ok()?);
        Some(if signal != 0 { 128 + signal } else { code })
    }

    fn run(
        &self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        remove: &[String],
    ) -> Result<CliOutput, String> {
        let (out_r, out_w) = io::pipe().map_err(|e| format!("{program}: {e}"))?;
        let (err_r, err_w) = io::pipe().map_err(|e| format!("{program}: {e}"))?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(out_w).stderr(err_w);
        for name in remove {
            command.env_remove(name);
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let spawned = self.waiters.spawn(&mut command);
        // The write ends must close here, or the reads below never end.
        drop(command);
        let (pid, exit) = spawned.map_err(|e| format!("cannot run `{program}`: {e}"))?;
        let reader = |mut r: io::PipeReader| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = r.read_to_end(&mut s);
                String::from_utf8_lossy(&s).into_owned()
            })
        };
        let (stdout, stderr) = (reader(out_r), reader(err_r));
        let code = match exit.recv_timeout(COMMAND_TIMEOUT) {
            Ok(super::Exit::Code(c)) => c,
            Ok(super::Exit::Signal(s)) => 128 + s as i32,
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(format!("`{program}` did not answer within {}s", COMMAND_TIMEOUT.as_secs()));
            }
        };
        Ok(CliOutput {
            code,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }
}

struct CliOutput {
    code: i32,
    stdout: String,
    stderr: String,
}

impl CliOutput {
    /// A failure that only says some ids were unknown or already done.
    fn benign(&self) -> bool {
        let e = &self.stderr;
        !e.trim().is_empty()
            && e.lines().filter(|l| !l.trim().is_empty()).all(|l| {
                l.contains("Invalid job id")
                    || l.contains("Job/step already completing or completed")
                    || l.contains("Job is no longer pending execution")
                    || l.contains("Job has already finished")
            })
    }

    fn failure(&self, what: &str) -> String {
        let said = self.stderr.trim();
        if said.is_empty() {
            format!("`{what}` failed with exit code {}", self.code)
        } else {
            format!("`{what}` failed: {}", said.lines().last().unwrap_or(said))
        }
    }
}

/// Parses `%i|%T|%N|%r` lines.
fn parse_squeue(text: &str) -> HashMap<String, JobInfo> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().splitn(4, '|');
            let id = f.next()?.trim().to_string();
            let state = f.next()?.trim().to_string();
            let node = f.next().unwrap_or_default().trim().to_string();
            let reason = f.next().unwrap_or_default().trim().to_string();
            (!id.is_empty() && !state.is_empty()).then_some((id, JobInfo { state, node, reason }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_become_job_states() {
        let jobs = parse_squeue("2|PENDING||JobHeldUser\n3|RUNNING|vm|None\n\nbad\n4|COMPLETED|vm|None\n");
        assert_eq!(jobs.len(), 3);
        assert!(jobs["2"].held_by_user() && jobs["2"].active());
        assert_eq!(jobs["3"].node, "vm");
        assert!(jobs["3"].active());
        assert!(!jobs["4"].active());
    }

    #[test]
    fn only_cluster_endings_count_as_cancelled() {
        assert!(cancelled_why("TIMEOUT").is_some());
        assert!(cancelled_why("PREEMPTED").is_some());
        assert!(cancelled_why("COMPLETED").is_none());
        assert!(cancelled_why("FAILED").is_none());
    }

    #[test]
    fn unknown_ids_are_not_a_failure_but_a_dead_controller_is() {
        let out = |stderr: &str| CliOutput { code: 1, stdout: String::new(), stderr: stderr.into() };
        assert!(out("slurm_load_jobs error: Invalid job id specified\n").benign());
        assert!(
            !out("slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n").benign()
        );
        assert!(!out("").benign());
    }
}

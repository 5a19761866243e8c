//! The job script: runs a step's command on a node exactly as the local executor does
//! on this machine, and leaves what the runner needs in the attempt's directory.

use std::path::Path;

/// The generated script, in the attempt's directory.
pub const JOB_SCRIPT: &str = "job.sh";
/// Written by the script as its last act (temp file + rename): `CODE END_MS`.
pub const EXIT_FILE: &str = "exit_code";
/// Written when the command starts: `NODE START_MS`.
pub const STARTED_FILE: &str = "job.started";
/// Made (`mkdir`, atomic) when the job starts: a second execution of the same attempt
/// (an administrator's `scontrol requeue`) finds it and runs nothing.
pub const CLAIM: &str = "job.claim";
/// Slurm's own output for the job: the script's messages, and slurmstepd's (such as
/// "CANCELLED … DUE TO TIME LIMIT").
pub const SLURM_LOG: &str = "slurm.log";

/// Writes the job script for a step's command. The environment (`$RUNNER_OUTPUT` and the
/// rest) reaches the job through `sbatch --export=ALL`, so secrets are never in a file.
pub fn write_job_script(dir: &Path, workdir: &Path, command: &str, what: &str) -> std::io::Result<()> {
    let d = quote(&dir.to_string_lossy());
    let w = quote(&workdir.to_string_lossy());
    let c = quote(command);
    // Comment lines must not break on a newline in the step id (ids cannot hold one).
    let script = format!(
        "#!/bin/sh\n\
         # Written by runner for {what}. The step's environment comes from sbatch\n\
         # (--export=ALL). It runs the command as the local executor would, keeps its output\n\
         # in this directory, and writes the exit code as its last act.\n\
         d={d}\n\
         if ! mkdir \"$d/{CLAIM}\" 2>/dev/null; then\n\
         \x20   echo \"runner: this attempt already ran (the job was requeued); not running it again\" >&2\n\
         \x20   exit 125\n\
         fi\n\
         now() {{ date +%s%3N; }}\n\
         printf '%s %s\\n' \"${{SLURMD_NODENAME:-$(hostname)}}\" \"$(now)\" >\"$d/{STARTED_FILE}.tmp\" && mv -f \"$d/{STARTED_FILE}.tmp\" \"$d/{STARTED_FILE}\"\n\
         if cd {w}; then\n\
         \x20   /bin/sh -c {c} </dev/null >\"$d/stdout.log\" 2>\"$d/stderr.log\"\n\
         \x20   code=$?\n\
         else\n\
         \x20   echo \"runner: the working directory \"{w}\" does not exist on $(hostname)\" >\"$d/stderr.log\"\n\
         \x20   code=126\n\
         fi\n\
         printf '%s %s\\n' \"$code\" \"$(now)\" >\"$d/{EXIT_FILE}.tmp\" && mv -f \"$d/{EXIT_FILE}.tmp\" \"$d/{EXIT_FILE}\"\n\
         exit \"$code\"\n"
    );
    let path = dir.join(JOB_SCRIPT);
    crate::fsutil::write_replace(&path, "job", script.as_bytes())?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

/// The exit code and end time (ms since the epoch) a job left, once its file is there.
pub fn read_exit(dir: &Path) -> Option<(i32, Option<u64>)> {
    let text = std::fs::read_to_string(dir.join(EXIT_FILE)).ok()?;
    let mut f = text.split_whitespace();
    let code = f.next()?.parse().ok()?;
    Some((code, f.next().and_then(|t| t.parse().ok())))
}

/// The node a job's command started on, and when (ms since the epoch).
pub fn read_started(dir: &Path) -> Option<(String, Option<u64>)> {
    let text = std::fs::read_to_string(dir.join(STARTED_FILE)).ok()?;
    let mut f = text.split_whitespace();
    let node = f.next()?.to_string();
    Some((node, f.next().and_then(|t| t.parse().ok())))
}

/// What every job of a run is named with: `runner-<hash>-`, a hash of the run's id and
/// the time it started (as journaled), so it does not depend on where the runs directory
/// is mounted, and two runs with one id in two places differ.
pub fn job_name_prefix(run_id: &str, started_at: &str) -> String {
    let hash = blake3::hash(format!("{run_id}\n{started_at}").as_bytes()).to_hex();
    format!("runner-{}-", &hash[..12])
}

/// `<prefix><step>-<visit>.<attempt>`, with characters Slurm or a shell could trip on
/// replaced.
pub fn job_name(prefix: &str, step: &str, visit: u32, attempt: u32) -> String {
    let step: String =
        step.chars().map(|c| if c.is_ascii_alphanumeric() || "_-.".contains(c) { c } else { '_' }).collect();
    format!("{prefix}{step}-{visit}.{attempt}")
}

/// Single-quotes a string for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_the_command_and_leaves_its_exit_code() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write_job_script(dir.path(), work.path(), "echo \"it's $X\"; pwd; echo err >&2; exit 3", "step `a`")
            .unwrap_or_else(|e| panic!("{e}"));
        let status = std::process::Command::new("/bin/sh")
            .arg(dir.path().join(JOB_SCRIPT))
            .env("X", "here")
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.code(), Some(3));
        let out = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap_or_default();
        assert_eq!(out, format!("it's here\n{}\n", work.path().display()));
        assert_eq!(std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default(), "err\n");
        let (code, ended) = read_exit(dir.path()).unwrap_or_else(|| panic!("no exit file"));
        assert_eq!(code, 3);
        let (node, started) = read_started(dir.path()).unwrap_or_else(|| panic!("no start file"));
        assert!(!node.is_empty());
        assert!(ended.unwrap_or(0) >= started.unwrap_or(u64::MAX));
        assert!(!dir.path().join(format!("{EXIT_FILE}.tmp")).exists());
    }

    #[test]
    fn a_missing_workdir_is_exit_126_with_a_message() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write_job_script(dir.path(), Path::new("/nonexistent/x"), "true", "step `a`")
            .unwrap_or_else(|e| panic!("{e}"));
        let status = std::process::Command::new("/bin/sh")
            .arg(dir.path().join(JOB_SCRIPT))
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.code(), Some(126));
        assert_eq!(read_exit(dir.path()).map(|e| e.0), Some(126));
        let err = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        assert!(err.contains("/nonexistent/x"), "{err}");
    }

    #[test]
    fn job_names_carry_the_run_and_the_attempt() {
        let prefix = job_name_prefix("r1", "2026-12-03T10:00:00.000Z");
        let name = job_name(&prefix, "caller/build step", 2, 3);
        assert!(name.starts_with("runner-") && name.starts_with(&prefix), "{name}");
        assert!(name.ends_with("caller_build_step-2.3"), "{name}");
        assert_ne!(prefix, job_name_prefix("r2", "2026-12-03T10:00:00.000Z"));
        assert_ne!(prefix, job_name_prefix("r1", "2026-12-03T10:00:00.001Z"));
    }

    #[test]
    fn a_second_execution_of_an_attempt_runs_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write_job_script(dir.path(), dir.path(), "echo ran >> count", "step `a`")
            .unwrap_or_else(|e| panic!("{e}"));
        let run = || {
            std::process::Command::new("/bin/sh")
                .arg(dir.path().join(JOB_SCRIPT))
                .output()
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(run().status.code(), Some(0));
        let again = run();
        assert_eq!(again.status.code(), Some(125));
        assert!(String::from_utf8_lossy(&again.stderr).contains("already ran"));
        assert_eq!(std::fs::read_to_string(dir.path().join("count")).unwrap_or_default(), "ran\n");
        assert_eq!(read_exit(dir.path()).map(|e| e.0), Some(0), "the first run's exit code stays");
    }
}

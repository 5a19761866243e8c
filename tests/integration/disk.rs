//! A full or failing disk: the runner stops without acknowledging anything past the fault,
//! names the file, and a resume after the cause is fixed loses nothing acknowledged.

use std::path::{Path, PathBuf};

use crate::util::*;

const FLOW: &str = r#"
[[steps]]
id = "a"
run = "echo a >> a.out"
[[steps]]
id = "b"
run = "echo b >> b.out"
[[steps]]
id = "c"
run = "echo c >> c.out"
"#;

/// Runs every step's command at most once more than it was interrupted, and completes.
#[track_caller]
fn resume_completes_with_nothing_lost(env: &Env, runs: &Path) {
    let runs = runs.to_str().expect("utf8");
    env.run(&["--runs-dir", runs, "resume", "--run-id", "d"]).code(0);
    let journal = journal_at(&Path::new(runs).join("d/journal.jsonl"));
    assert_each_step_once(env, &journal, &["a", "b", "c"].map(String::from));
    env.run(&["--runs-dir", runs, "verify", "--run-id", "d"]).code(0);
}

#[test]
fn a_failed_journal_write_stops_the_run_and_resume_recovers() {
    for (fault, torn) in [("journal-write:3", true), ("journal-sync:3:eio", false)] {
        let env = Env::new();
        let flow = env.flow("f", FLOW);
        let out = env
            .command(&["run", &flow, "--run-id", "d"])
            .env(runner::faults::IO_ENV, fault)
            .output()
            .expect("runner");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{fault}: {stderr}");
        assert!(stderr.contains("journal.jsonl"), "{fault}: the message must name the file: {stderr}");
        assert!(stderr.contains("runner resume --run-id d"), "{stderr}");
        // Commit 3 held a's success and b's start: b's command never ran.
        assert_eq!((env.count("a.out"), env.count("b.out")), (1, 0), "{fault}");
        let verify = env.run(&["verify", "--run-id", "d"]);
        if torn {
            verify.code(0).stderr_has("not a complete line");
        }
        resume_completes_with_nothing_lost(&env, &env.runs_dir());
    }
}

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_run_and_resume_recovers_after_space_is_freed() {
    let env = Env::new();
    let Some(disk) = Tmpfs::mount(env.path().join("disk"), "8m") else {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the injected-fault test covers the logic"
        );
        return;
    };
    let runs = disk.0.join("runs");
    // Step a fills the disk once (its marker lives elsewhere), as a runaway log would; the
    // journal fails as soon as it needs a new page.
    let mut toml = String::from(
        "[[steps]]\nid = 'a'\nrun = 'echo a >> a.out; if [ ! -f filled ]; then touch filled; \
         head -c 20000000 /dev/zero > $RUNNER_RUN_DIR/../filler; fi; true'\n",
    );
    for i in 0..40 {
        toml.push_str(&format!("[[steps]]\nid = 's{i}'\nrun = 'echo s{i} >> s{i}.out'\n"));
    }
    let flow = env.flow("full", &toml);
    let out = env.run(&["--runs-dir", runs.to_str().expect("utf8"), "run", &flow, "--run-id", "d"]);
    // Whichever durable write needs the next block first (the journal, or a step's
    // receipt, which is written before the event that acknowledges it) names its file.
    out.code(74).stderr_has("No space left on device");
    assert!(out.stderr.contains("journal.jsonl") || out.stderr.contains("receipt.json"), "{}", out.stderr);
    std::fs::remove_file(runs.join("filler")).expect("free the space");
    let runs_arg = runs.to_str().expect("utf8");
    env.run(&["--runs-dir", runs_arg, "resume", "--run-id", "d"]).code(0);
    env.run(&["--runs-dir", runs_arg, "verify", "--run-id", "d"]).code(0);
    let steps: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    assert_each_step_once(&env, &journal_at(&runs.join("d/journal.jsonl")), &steps);
    drop(disk);
}

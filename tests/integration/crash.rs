//! Killing the runner at exactly the bad moments (see `src/faults.rs`).

use crate::util::*;

const FLOW: &str = r#"
[[steps]]
id = "a"
run = "echo a >> a.out"
[[steps]]
id = "b"
run = "echo b >> b.out"
"#;

fn crash_at(env: &Env, point: &str) -> Run {
    let flow = env.flow("f", FLOW);
    let out = env
        .command(&["run", &flow, "--run-id", "c"])
        .env(runner::faults::ENV, point)
        .output()
        .expect("runner");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "the runner should have killed itself at {point}");
    Run { code: 137, stdout: String::new(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

#[track_caller]
fn resume_completes(env: &Env) {
    env.run(&["resume", "--run-id", "c"]).code(0);
    assert_eq!((env.count("a.out"), env.count("b.out")), (1, 1), "each step's command ran exactly once");
    env.run(&["verify", "--run-id", "c"]).code(0);
    env.assert_rebuild_matches_live();
}

#[test]
fn killed_before_a_start_is_durable_the_command_never_runs() {
    let env = Env::new();
    crash_at(&env, "before-commit:1");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(env.count("a.out"), 0, "a command ran although its start was never journaled");
    assert_eq!(env.events("c"), vec!["RunStarted"]);
    resume_completes(&env);
    assert!(!env.events("c").contains(&"StepInterrupted:a".to_string()));
}

#[test]
fn killed_after_a_durable_start_the_gate_stays_closed() {
    let env = Env::new();
    crash_at(&env, "after-commit:1");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(env.count("a.out"), 0, "the gate opened although the runner died first");
    assert_eq!(env.events("c"), vec!["RunStarted", "StepStarted:a"]);
    resume_completes(&env);
    let events = env.events("c");
    assert!(events.contains(&"StepInterrupted:a".to_string()), "{events:?}");
}

#[test]
fn killed_between_journal_and_projection_the_projection_catches_up() {
    let env = Env::new();
    // Commit 2 is a's success together with b's start.
    crash_at(&env, "after-commit:2");
    env.run(&["status"]).code(0).stdout_has("crashed").stdout_has("1/2");
    resume_completes(&env);
}

#[test]
fn killed_at_any_point_of_a_snapshot_write_state_json_is_old_or_new() {
    for point in ["snapshot-written", "snapshot-synced", "snapshot-renamed"] {
        let env = Env::new();
        let flow = env.flow("f", "[[steps]]\nid='a'\nrun='test -f ok'\n[[steps]]\nid='b'\nrun='true'\n");
        env.run(&["run", &flow, "--run-id", "c"]).code(1);
        let dir = env.run_dir("c");
        let old = std::fs::read(dir.join("state.json")).expect("first snapshot");
        env.write("ok", "");
        let out = env
            .command(&["resume", "--run-id", "c"])
            .env(runner::faults::ENV, point)
            .output()
            .expect("runner");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "{point}: the runner should have killed itself");
        let temps = || {
            std::fs::read_dir(&dir)
                .expect("run dir")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("state.json.tmp-"))
                .count()
        };
        let now = std::fs::read(dir.join("state.json")).expect("a snapshot is always there");
        if point == "snapshot-renamed" {
            assert_ne!(now, old, "{point}: the new snapshot should be in place");
            assert_eq!(temps(), 0);
        } else {
            assert_eq!(now, old, "{point}: the old snapshot must stay until the rename");
            assert_eq!(temps(), 1);
        }
        // Old or new, it is whole and agrees with the journal.
        env.run(&["verify", "--run-id", "c"]).code(0).stdout_has("state.json: equals the fold");
        env.run(&["resume", "--run-id", "c"]).code(0).stderr_has("already succeeded");
        assert_eq!(temps(), 0, "{point}: resume leaves no stale snapshot temp behind");
    }
}

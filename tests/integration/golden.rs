//! The golden path and the everyday commands.

use crate::util::*;

const THREE: &str = r#"
description = "three steps"
[params]
who = { default = "world" }
[env]
GREETING = "hello"
[[steps]]
id = "a"
run = 'echo "$GREETING $RUNNER_PARAM_WHO" >> a.out; echo "to stderr" >&2'
[[steps]]
id = "b"
run = 'echo "$RUNNER_RUN_ID $RUNNER_STEP_ID $RUNNER_ATTEMPT $STEP_ONLY" >> b.out; test -d "$RUNNER_RUN_DIR"'
env = { STEP_ONLY = "yes" }
[[steps]]
id = "c"
needs = ["a"]
run = "echo c >> c.out"
"#;

#[test]
fn golden_path_runs_every_step_once_and_records_it() {
    let env = Env::new();
    let flow = env.flow("three", THREE);
    let out = env.run(&["run", &flow, "--param", "who=Ada"]);
    out.code(0).stderr_has("succeeded");
    let id = out.run_id();
    assert_eq!(env.only_run(), id);
    assert_eq!(env.read("a.out"), "hello Ada\n");
    assert_eq!(env.read("b.out"), format!("{id} b 1 yes\n"));
    assert_eq!(env.count("c.out"), 1);

    let events = env.events(&id);
    assert_eq!(events.first().map(String::as_str), Some("RunStarted"));
    assert_eq!(events.last().map(String::as_str), Some("RunFinished"));
    for step in ["a", "b", "c"] {
        assert_eq!(events.iter().filter(|e| **e == format!("StepSucceeded:{step}")).count(), 1, "{events:?}");
    }
    // b needs a (the step before it); c needs a explicitly.
    let pos = |e: &str| events.iter().position(|x| x == e).expect(e);
    assert!(pos("StepSucceeded:a") < pos("StepStarted:b"));
    assert!(pos("StepSucceeded:a") < pos("StepStarted:c"));

    let dir = env.run_dir(&id);
    assert!(dir.join("flow.toml").exists() && dir.join("state.json").exists());
    assert_eq!(std::fs::read_to_string(dir.join("steps/a/1/stderr.log")).expect("log"), "to stderr\n");

    let status = env.run(&["status"]);
    status.code(0).stdout_has(&id).stdout_has("succeeded").stdout_has("3/3");
    let detail = env.run(&["status", "--run-id", &id]);
    detail.code(0).stdout_has("STEP").stdout_has("succeeded");
    let json: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json", "--run-id", &id]).stdout).expect("json");
    assert_eq!(json["status"], "succeeded");
    assert_eq!(json["steps"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["params"]["who"], "Ada");

    let logs = env.run(&["logs", "--run-id", &id, "--step", "a", "--stream", "stderr"]);
    assert_eq!(logs.code(0).stdout, "to stderr\n");
    env.run(&["logs", "--run-id", &id]).code(0).stdout_has("==> a (attempt 1) stderr <==");
    env.run(&["verify", "--run-id", &id]).code(0);
}

#[test]
fn same_run_id_twice_runs_each_step_once() {
    let env = Env::new();
    let flow = env.flow("three", THREE);
    env.run(&["run", &flow, "--run-id", "nightly-1"]).code(0);
    env.run(&["run", &flow, "--run-id", "nightly-1"]).code(0).stderr_has("already succeeded");
    assert_eq!((env.count("a.out"), env.count("b.out"), env.count("c.out")), (1, 1, 1));
    assert_eq!(env.run_ids(), vec!["nightly-1"]);
    // Different parameters for an existing run are refused rather than ignored.
    env.run(&["run", &flow, "--run-id", "nightly-1", "--param", "who=Bob"])
        .code(2)
        .stderr_has("different parameters");
}

#[test]
fn concurrent_starts_with_one_run_id_run_each_step_once() {
    let env = Env::new();
    let flow = env.flow(
        "slow",
        "[[steps]]\nid='a'\nrun='echo a >> a.out; sleep 0.5'\n[[steps]]\nid='b'\nrun='echo b >> b.out'\n",
    );
    let children: Vec<_> = (0..4).map(|_| env.spawn(&["run", &flow, "--run-id", "once"])).collect();
    let codes: Vec<i32> =
        children.into_iter().map(|c| finish(c, std::time::Duration::from_secs(30)).code).collect();
    // Whoever lost the race either found the run locked (4) or already complete (0).
    assert!(codes.iter().all(|c| *c == 0 || *c == 4), "{codes:?}");
    assert!(codes.contains(&0));
    assert_eq!((env.count("a.out"), env.count("b.out")), (1, 1));
}

#[test]
fn resume_last_and_unknown_runs() {
    let env = Env::new();
    let flow = env.flow("three", THREE);
    let id = env.run(&["run", &flow]).code(0).run_id();
    env.run(&["resume", "--last"]).code(0).stderr_has(&format!("run {id} already succeeded"));
    env.run(&["resume", "--last", "three"]).code(0);
    env.run(&["resume", "--last", "other"]).code(2).stderr_has("no runs of flow `other`");
    env.run(&["resume", "--run-id", "nope"]).code(2).stderr_has("no run `nope`");
    env.run(&["resume"]).code(2);
}

#[test]
fn logs_into_a_closed_pipe_do_not_panic() {
    let env = Env::new();
    let flow = env.flow("loud", "[[steps]]\nid='loud'\nrun='seq 1 200000'\n");
    let id = env.run(&["run", &flow]).code(0).run_id();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("'{RUNNER}' logs --run-id {id} | head -n 1"))
        .current_dir(env.path())
        .output()
        .expect("sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("==> loud (attempt 1) stdout <=="));
    // Run it directly with a closed stdout as well: exit code 0, no panic.
    let mut child =
        env.command(&["logs", "--run-id", &id]).stdout(std::process::Stdio::piped()).spawn().expect("spawn");
    drop(child.stdout.take());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn status_with_no_runs_and_help_lists_exit_codes() {
    let env = Env::new();
    env.run(&["status"]).code(0).stdout_has("no runs");
    assert_eq!(env.run(&["status", "--json"]).code(0).stdout.trim(), "[]");
    assert!(!env.runs_dir().exists(), "status must not create the runs directory");
    env.run(&["--help"]).code(0).stdout_has("Exit codes:").stdout_has("143");
}

#[test]
fn every_example_flow_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    let mut count = 0;
    for entry in std::fs::read_dir(&root).expect("flows/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            runner::flow::Flow::load(&path).unwrap_or_else(|e| panic!("{e}"));
            count += 1;
        }
    }
    assert!(count > 0, "no example flows in {}", root.display());
}

#[test]
fn jobs_bounds_how_many_steps_run_at_once() {
    // Each step waits (up to 1.5 s) for the other to have started: only possible in parallel.
    let meet = r#"
[[steps]]
id = "a"
needs = []
run = 'touch a.started; for i in $(seq 30); do [ -f b.started ] && exit 0; sleep 0.05; done; exit 1'
[[steps]]
id = "b"
needs = []
run = 'touch b.started; for i in $(seq 30); do [ -f a.started ] && exit 0; sleep 0.05; done; exit 1'
"#;
    let env = Env::new();
    let flow = env.flow("meet", meet);
    env.run(&["run", &flow, "--jobs", "2"]).code(0);
    let env = Env::new();
    let flow = env.flow("meet", meet);
    let out = env.run(&["run", &flow, "--jobs", "1", "--run-id", "serial"]);
    out.code(1);
    let starts = env.journal("serial").iter().filter(|e| e["type"] == "StepStarted").count();
    assert_eq!(starts, 1, "with --jobs 1 the second step must not start while the first runs");
}

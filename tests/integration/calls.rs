//! Sub-flows: call/return, on_failure, the persisted call stack across crashes.

use crate::util::*;

const RESET: &str = r##"
[params]
target = {}
[[steps]]
id = "wipe"
run = 'echo "wipe $RUNNER_PARAM_TARGET" >> reset.log; echo "wiped=$RUNNER_PARAM_TARGET" >> "$RUNNER_OUTPUT"'
[[steps]]
id = "check"
if = "steps.wipe.outputs.wiped == params.target"
run = 'test ! -e break-check && echo "check $RUNNER_OUTPUT_WIPE_WIPED" >> reset.log'
"##;

const MAIN: &str = r##"
[[steps]]
id = "prepare"
run = "echo prepare >> main.log"
[[steps]]
id = "reset"
call = "reset"
with = { target = "cache" }
[[steps]]
id = "use"
if = "steps.reset.outputs.wiped == 'cache'"
run = 'echo "use $RUNNER_OUTPUT_RESET_WIPED" >> main.log'
"##;

fn setup(env: &Env) -> String {
    env.flow("reset", RESET);
    env.flow("main", MAIN)
}

#[test]
fn a_called_flow_runs_inside_the_run_and_returns_its_outputs() {
    let env = Env::new();
    let flow = setup(&env);
    let out = env.run(&["run", &flow, "--run-id", "m"]);
    out.code(0).stderr_has("reset: calls flows/reset.toml (frame 1)").stderr_has("reset/wipe: started");
    assert_eq!(env.read("main.log"), "prepare\nuse cache\n");
    assert_eq!(env.read("reset.log"), "wipe cache\ncheck cache\n");
    let events = env.events("m");
    let pos = |e: &str| events.iter().position(|x| x == e).unwrap_or_else(|| panic!("{e} in {events:?}"));
    assert!(pos("CallPushed:reset") < pos("StepStarted:reset/wipe"));
    assert!(pos("StepSucceeded:reset/check") < pos("CallReturned:reset"));
    assert!(pos("CallReturned:reset") < pos("StepStarted:use"));
    // The callee is copied into the run, like the main flow.
    assert_eq!(env.read("runs/m/calls/1-reset.toml"), RESET);
    env.run(&["status", "--run-id", "m", "--step", "reset"]).code(0).stdout_has("wiped = cache");
    env.assert_rebuild_matches_live();
}

#[test]
fn a_crash_inside_a_called_flow_resumes_inside_it_and_returns() {
    let reference = Env::new();
    let flow = setup(&reference);
    reference.run(&["run", &flow, "--run-id", "m"]).code(0);
    let commits = reference.journal("m").len();
    for n in 1..commits {
        let env = Env::new();
        let flow = setup(&env);
        let out = env
            .command(&["run", &flow, "--run-id", "m"])
            .env(runner::faults::ENV, format!("after-commit:{n}"))
            .output()
            .expect("runner");
        if out.status.success() {
            break;
        }
        env.run(&["resume", "--run-id", "m"]).code(0);
        assert_eq!(env.read("main.log"), "prepare\nuse cache\n", "crash at commit {n}");
        assert_eq!(env.read("reset.log"), "wipe cache\ncheck cache\n", "crash at commit {n}");
        let events = env.events("m");
        assert_eq!(events.iter().filter(|e| *e == "CallPushed:reset").count(), 1, "{events:?}");
        assert_eq!(events.iter().filter(|e| *e == "CallReturned:reset").count(), 1, "{events:?}");
        env.run(&["verify", "--run-id", "m"]).code(0);
        env.assert_rebuild_matches_live();
    }
}

#[test]
fn a_failure_inside_a_called_flow_shows_the_stack_and_resume_returns() {
    let env = Env::new();
    let flow = setup(&env);
    env.write("break-check", "");
    env.run(&["run", &flow, "--run-id", "m"]).code(1);
    env.run(&["status", "--run-id", "m"])
        .stdout_has("call stack:")
        .stdout_has("frame 1: reset -> flows/reset.toml (call)");
    std::fs::remove_file(env.path().join("break-check")).expect("rm");
    env.run(&["resume", "--run-id", "m"]).code(0);
    assert_eq!(env.read("reset.log"), "wipe cache\ncheck cache\n");
    assert_eq!(env.read("main.log"), "prepare\nuse cache\n");
    let status = env.run(&["status", "--run-id", "m"]);
    assert!(!status.stdout.contains("call stack:"), "{}", status.stdout);
    env.assert_rebuild_matches_live();
}

fn on_failure_flow(then: &str) -> String {
    format!(
        r##"
[[steps]]
id = "flaky"
run = 'echo try >> flaky.log; test -e cleaned'
on_failure = {{ call = "cleanup", then = "{then}" }}
[[steps]]
id = "after"
run = "echo after >> after.log"
"##
    )
}

const CLEANUP: &str = "[[steps]]\nid='clean'\nrun='echo clean >> clean.log; touch cleaned'\n";

#[test]
fn on_failure_injects_a_flow_then_retries_fails_or_continues() {
    for (then, code, tries, after) in [("retry", 0, 2, 1), ("fail", 1, 1, 0), ("continue", 0, 1, 1)] {
        let env = Env::new();
        env.flow("cleanup", CLEANUP);
        let flow = env.flow("main", &on_failure_flow(then));
        let out = env.run(&["run", &flow, "--run-id", "o"]);
        out.code(code).stderr_has("flaky: failed; on_failure calls flows/cleanup.toml");
        assert_eq!(env.count("clean.log"), 1, "then = {then}");
        assert_eq!(env.count("flaky.log"), tries, "then = {then}");
        assert_eq!(env.count("after.log"), after, "then = {then}");
        let journal = env.journal("o");
        let pushed: Vec<&serde_json::Value> =
            journal.iter().filter(|e| e["type"] == "CallPushed").map(|e| &e["data"]).collect();
        assert_eq!((pushed.len(), pushed[0]["reason"].as_str()), (1, Some("on_failure")), "then = {then}");
        assert_eq!(pushed[0]["then"], then);
        if then == "continue" {
            env.run(&["status", "--run-id", "o"]).stdout_has("continued");
        }
        env.assert_rebuild_matches_live();
    }
}

#[test]
fn bad_calls_are_refused_before_anything_runs() {
    let env = Env::new();
    env.flow("a", "[[steps]]\nid='x'\ncall='b'\n");
    env.flow("b", "[[steps]]\nid='y'\ncall='a'\n");
    let out = env.run(&["run", "flows/a.toml"]);
    out.code(2).stderr_has("recursive call:");
    env.flow("p", "[params]\nneed={}\n[[steps]]\nid='y'\nrun='true'\n");
    env.flow("c", "[[steps]]\nid='x'\ncall='p'\nwith={ nope = '1' }\n");
    env.run(&["validate", "flows/c.toml"]).code(2).stderr_has("`with` sets `nope`, which");
    env.flow("d", "[[steps]]\nid='x'\ncall='p'\n");
    env.run(&["run", "flows/d.toml"]).code(2).stderr_has("parameter `need`").stderr_has("is required");
    env.flow("e", "[[steps]]\nid='x'\ncall='missing'\n");
    env.run(&["validate", "flows/e.toml"]).code(2).stderr_has("no such flow");
    env.flow("f", "[[steps]]\nid='x'\ncall='p'\nrun='true'\n");
    env.run(&["validate", "flows/f.toml"]).code(2).stderr_has("both `run` and `call`");
    assert!(env.run_ids().is_empty());
}

#[test]
fn the_example_utility_flow_resets_a_directory_when_called() {
    let env = Env::new();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    env.flow("reset", &std::fs::read_to_string(repo.join("flows/reset.toml")).expect("flows/reset.toml"));
    env.write("out/tmp/old.txt", "stale");
    let flow = env.flow(
        "uses-reset",
        "[[steps]]\nid='clean'\ncall='reset'\nwith={ dir = 'out/tmp' }\n\
         [[steps]]\nid='check'\nrun='test -d out/tmp && test ! -e out/tmp/old.txt && echo \"$RUNNER_OUTPUT_CLEAN_DIR\" > dir.txt'\n",
    );
    env.run(&["run", &flow]).code(0);
    assert_eq!(env.read("dir.txt"), "out/tmp\n");
}

#[test]
fn a_flow_called_again_runs_the_copy_taken_at_that_call() {
    let env = Env::new();
    env.flow("sub", "[[steps]]\nid='say'\nrun='echo v1 >> said.log'\n");
    let flow = env.flow(
        "again",
        r##"
[[steps]]
id = "c"
call = "sub"
max_visits = 2
[[steps]]
id = "check"
max_visits = 2
run = '''
if [ "$RUNNER_VISIT" = 1 ]; then
  printf "[[steps]]\nid='say'\nrun='echo v2 >> said.log'\n" > flows/sub.toml
  echo again=yes >> "$RUNNER_OUTPUT"
fi
'''
next = [{ if = "steps.check.outputs.again == 'yes'", goto = "c" }, { goto = "done" }]
[[steps]]
id = "done"
run = "true"
"##,
    );
    env.run(&["run", &flow, "--run-id", "a"]).code(0);
    assert_eq!(env.read("said.log"), "v1\nv2\n");
    assert!(env.read("runs/a/calls/2-sub.toml").contains("v2"));
    // A resume rebuilds the plan from both copies and agrees with the journal.
    env.run(&["resume", "--run-id", "a"]).code(0);
    env.run(&["verify", "--run-id", "a"]).code(0);
    env.assert_rebuild_matches_live();
}

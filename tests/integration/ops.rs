//! Operating runs from cron and CI: choosing runs by prefix or `--last`, filtering `status`,
//! cancelling, following.

use crate::util::*;

#[test]
fn runs_are_chosen_by_unique_prefix_or_last_and_status_filters_them() {
    let env = Env::new();
    let ok = env.flow("nightly", "[[steps]]\nid = \"a\"\nrun = \"echo nightly\"\n");
    let bad = env.flow("weekly", "[[steps]]\nid = \"a\"\nrun = \"exit 3\"\n");
    env.run(&["run", &ok, "--run-id", "alpha-1"]).code(0);
    env.run(&["run", &bad, "--run-id", "alpha-2"]).code(1);
    env.run(&["run", &ok, "--run-id", "beta-1"]).code(0);
    // A unique prefix names its run; an ambiguous one lists the candidates, exit 2.
    env.run(&["logs", "--run-id", "beta"]).code(0).stdout_has("nightly");
    env.run(&["status", "--run-id", "alpha-2"]).code(0).stdout_has("failed");
    env.run(&["verify", "--run-id", "alpha"])
        .code(2)
        .stderr_has("`alpha` is the start of 2 runs (alpha-1, alpha-2)");
    env.run(&["logs", "--run-id", "gamma"]).code(2).stderr_has("no run `gamma`");
    // --last: the newest run, or the newest of a flow.
    env.run(&["status", "--last"]).code(0).stdout_has("run:      beta-1");
    env.run(&["status", "--last", "weekly"]).code(0).stdout_has("run:      alpha-2");
    env.run(&["logs", "--last", "flows/weekly.toml", "--step", "a"]).code(0).stdout_has("no output");
    env.run(&["verify", "--last"]).code(0);
    env.run(&["resume", "--last", "weekly"]).code(1);
    // A flow whose name has a dot is still found by its name or its file.
    let dotted = env.flow("etl.v2", "[[steps]]\nid = \"a\"\nrun = \"true\"\n");
    env.run(&["run", &dotted, "--run-id", "dot-1"]).code(0);
    env.run(&["status", "--last", "etl.v2"]).code(0).stdout_has("run:      dot-1");
    env.run(&["status", "--last", "flows/etl.v2.toml"]).code(0).stdout_has("run:      dot-1");
    // Following a step or service the run does not have is an error, not a silent wait.
    env.run(&["logs", "--run-id", "dot-1", "--follow", "--step", "nope"])
        .code(2)
        .stderr_has("has no step `nope`");
    env.run(&["logs", "--run-id", "dot-1", "-f", "--service", "api"]).code(2);
    // Filters.
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--json", "status"];
        all.extend_from_slice(args);
        let out = env.run(&all);
        let v: serde_json::Value = serde_json::from_str(&out.code(0).stdout).expect("json");
        v.as_array()
            .expect("list")
            .iter()
            .map(|r| r["run_id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(listed(&[]), ["alpha-1", "alpha-2", "beta-1", "dot-1"]);
    assert_eq!(listed(&["--flow", "etl.v2"]), ["dot-1"]);
    assert_eq!(listed(&["--flow", "nightly"]), ["alpha-1", "beta-1"]);
    assert_eq!(listed(&["--flow", "flows/weekly.toml"]), ["alpha-2"]);
    assert_eq!(listed(&["--status", "failed"]), ["alpha-2"]);
    assert_eq!(listed(&["--status", "succeeded", "--flow", "weekly"]), Vec::<String>::new());
    assert_eq!(listed(&["--since", "1h"]).len(), 4);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(listed(&["--since", "1s"]), Vec::<String>::new());
    env.run(&["status", "--since", "1s"]).code(0).stdout_has("no runs match");
    env.run(&["status", "--since", "soon"]).code(2).stderr_has("examples: 30m, 12h, 2d");
    env.run(&["status", "--status", "odd"]).code(2);
}

#[test]
fn cancel_stops_a_live_run_from_another_shell_and_it_stays_resumable() {
    let env = Env::new();
    let flow = env.flow(
        "c",
        r#"
[[steps]]
id = "long"
run = '''
echo $RUNNER_ATTEMPT >> attempts
trap 'sleep 1; exit 1' TERM
touch started
[ -e done ] || { sleep 30 & wait; }
'''

[[steps]]
id = "after"
run = "true"
"#,
    );
    env.run(&["cancel", "--run-id", "nope"]).code(2).stderr_has("no run `nope`");
    let child = env.spawn(&["run", &flow, "--run-id", "cx"]);
    wait_for("the step to start", std::time::Duration::from_secs(20), || env.path().join("started").exists());
    // A second cancel while the first is under way waits; it does not hurry the steps.
    let first = env.spawn(&["cancel", "--last", "--by", "alice"]);
    wait_for("the request", std::time::Duration::from_secs(10), || {
        env.run_dir("cx").join("cancel.request").exists()
    });
    env.run(&["cancel", "--run-id", "cx", "--by", "bob"]).code(0).stderr_has("already being cancelled");
    finish(first, std::time::Duration::from_secs(10)).code(0).stderr_has("run cx cancelled");
    finish(child, std::time::Duration::from_secs(10)).code(143).stderr_has("run cx cancelled by alice");
    let journal = env.journal("cx");
    let last = journal.last().expect("events");
    assert_eq!(last["type"], "RunInterrupted");
    assert_eq!(last["data"]["cancelled_by"], "alice");
    let stopped = journal.iter().find(|e| e["type"] == "StepInterrupted").expect("the step was stopped");
    assert_eq!(stopped["data"]["reason"], "cancelled");
    // The step had its grace: stopped by SIGTERM, not killed at once by a second signal.
    assert!(stopped["data"]["duration_ms"].as_u64().unwrap_or(0) >= 900, "{stopped}");
    assert!(!env.run_dir("cx").join("cancel.request").exists(), "the request is cleared once journaled");
    env.run(&["cancel", "--run-id", "cx"]).code(2).stderr_has("is not running");
    // The run resumes to the end; the stopped step runs again as a new attempt.
    env.write("done", "");
    env.run(&["resume", "--run-id", "cx"]).code(0);
    assert_eq!(env.count("attempts"), 2);
    env.assert_rebuild_matches_live();
}

#[test]
fn run_and_resume_with_json_print_one_document_with_the_exit_code() {
    let env = Env::new();
    let flow = env
        .flow("j", "[[steps]]\nid = \"a\"\nrun = \"test -e ok\"\n\n[[steps]]\nid = \"b\"\nrun = \"true\"\n");
    let first = env.run(&["--json", "run", &flow, "--run-id", "js"]);
    first.code(1);
    let v: serde_json::Value = serde_json::from_str(&first.stdout).expect("stdout is one JSON document");
    assert_eq!(
        (v["run_id"].as_str(), v["status"].as_str(), v["exit_code"].as_i64()),
        (Some("js"), Some("failed"), Some(1))
    );
    assert_eq!(v["steps"][0]["reason"], "exit");
    env.write("ok", "");
    let again = env.run(&["--json", "resume", "--run-id", "js"]);
    again.code(0);
    let v: serde_json::Value = serde_json::from_str(&again.stdout).expect("json");
    assert_eq!((v["status"].as_str(), v["exit_code"].as_i64()), (Some("succeeded"), Some(0)));
    assert_eq!(v["steps"].as_array().map(Vec::len), Some(2));
    // An already finished run is reported the same way.
    let done = env.run(&["--json", "resume", "--run-id", "js"]);
    let v: serde_json::Value = serde_json::from_str(&done.code(0).stdout).expect("json");
    assert_eq!(v["status"], "succeeded");
}

#[test]
fn logs_and_status_follow_a_live_run_and_end_with_it() {
    let env = Env::new();
    let flow = env.flow(
        "fo",
        r#"
[[steps]]
id = "a"
run = '''
echo a1
touch started
while [ ! -e go ]; do sleep 0.05; done
printf 'part'; sleep 0.2; echo 'ial'
echo oops >&2
'''

[[steps]]
id = "b"
run = "echo b1; sleep 0.2; echo b2"
"#,
    );
    let runner = env.spawn(&["run", &flow, "--run-id", "fo"]);
    wait_for("the step to start", std::time::Duration::from_secs(20), || env.path().join("started").exists());
    let logs = env.spawn(&["logs", "--run-id", "fo", "--follow"]);
    let status = env.spawn(&["status", "--last", "--follow"]);
    let one = env.spawn(&["logs", "--run-id", "fo", "--step", "b", "-f"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    env.write("go", "");
    finish(runner, std::time::Duration::from_secs(20)).code(0);
    let logs = finish(logs, std::time::Duration::from_secs(10));
    logs.code(0)
        .stdout_has("[a] a1\n")
        .stdout_has("[a] partial\n")
        .stdout_has("[a] oops\n")
        .stdout_has("[b] b2\n");
    let one = finish(one, std::time::Duration::from_secs(10));
    one.code(0);
    assert_eq!(one.stdout, "b1\nb2\n", "one step's lines, without a prefix");
    finish(status, std::time::Duration::from_secs(10))
        .code(0)
        .stderr_has("b: succeeded")
        .stderr_has("run fo succeeded")
        .stdout_has("STEP");
    // On a finished run, follow prints what there is and returns at once; a failed run's
    // status --follow exits 1.
    env.run(&["logs", "--run-id", "fo", "-f", "--step", "a"]).code(0).stdout_has("partial");
    let bad = env.flow("bad", "[[steps]]\nid = \"x\"\nrun = \"exit 2\"\n");
    env.run(&["run", &bad, "--run-id", "bad"]).code(1);
    env.run(&["status", "--run-id", "bad", "--follow"]).code(1);
}

/// Runs `runner ARGS` on a pseudo-terminal (util-linux `script`); returns its exit code
/// and everything it printed there.
fn on_a_terminal(env: &Env, args: &str, ci: bool) -> (i32, String) {
    let log = env.path().join("typescript");
    let runner = env!("CARGO_BIN_EXE_runner");
    let mut c = std::process::Command::new("script");
    c.args(["-qefc", &format!("{runner} {args}"), &log.to_string_lossy()])
        .current_dir(env.path())
        .env_remove("RUNNER_RUNS_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if ci {
        c.env("CI", "true");
    } else {
        c.env_remove("CI");
    }
    let status = c.status().expect("script (util-linux) runs");
    (status.code().unwrap_or(-1), std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn a_terminal_gets_progress_bars_and_a_summary_and_anything_else_plain_lines() {
    let env = Env::new();
    let flow = env.flow(
        "p",
        "[[steps]]\nid = \"slow\"\nrun = \"sleep 0.5\"\n\n[[steps]]\nid = \"fails\"\nneeds = []\nrun = \"sleep 0.2; exit 4\"\n",
    );
    let (code, screen) = on_a_terminal(&env, &format!("run {flow} --run-id t1"), false);
    assert_eq!(code, 1, "{screen}");
    assert!(screen.contains("\u{1b}["), "no escape codes: not drawn as bars?\n{screen}");
    assert!(screen.contains("steps"), "{screen}");
    assert!(
        screen.contains("fails: failed: exited with code 4"),
        "failures are printed above the bars\n{screen}"
    );
    // The display ends with the summary table, after the bars were cleared.
    let summary = screen.rfind("ATTEMPTS  DURATION").expect("a summary table");
    let last_bar = screen.rfind("/2 steps").expect("the overall bar");
    assert!(summary > last_bar, "{screen}");
    let rows: Vec<Vec<&str>> =
        screen[summary..].lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert!(rows.iter().any(|r| r.starts_with(&["slow", "succeeded", "1"])), "{screen}");
    assert!(rows.iter().any(|r| r.starts_with(&["fails", "failed", "1"])), "{screen}");
    // Plain lines: asked for, under CI, and whenever stderr is not a terminal.
    for (args, ci) in [
        (format!("--progress plain run {flow} --run-id t2"), false),
        (format!("run {flow} --run-id t3"), true),
    ] {
        let (code, screen) = on_a_terminal(&env, &args, ci);
        assert_eq!(code, 1);
        assert!(!screen.contains('\u{1b}'), "escape codes in plain mode:\n{screen}");
        assert!(screen.contains("slow: succeeded in"), "{screen}");
    }
    // Bars asked for without a terminal are not drawn, and lose no line.
    let forced = env.run(&["--progress", "bars", "run", &flow, "--run-id", "t6"]);
    forced.code(1).stderr_has("fails: failed: exited with code 4").stderr_has("run t6 failed");
    assert!(!forced.stderr.contains('\u{1b}'), "{}", forced.stderr);
    let piped = env.run(&["run", &flow, "--run-id", "t4"]);
    piped.code(1);
    assert!(!piped.stderr.contains('\u{1b}'), "{}", piped.stderr);
    // --quiet: errors and the final line only.
    let quiet = env.run(&["--quiet", "run", &flow, "--run-id", "t5"]);
    quiet.code(1).stderr_has("run t5 failed");
    assert!(!quiet.stderr.contains("slow: started"), "{}", quiet.stderr);
}

//! `runner watch`: one run per arriving file, once per file, across restarts and crashes.

use std::io::Write;
use std::process::Child;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A flow whose one step records the file it was given, in `done.log`.
const RECORD: &str = r#"
[[steps]]
id = "record"
run = 'echo "$RUNNER_TRIGGER_FILE" >> done.log'
"#;

fn inbox(env: &Env) {
    std::fs::create_dir_all(env.path().join("inbox")).expect("mkdir inbox");
}

fn watch(env: &Env, flow: &str, extra: &[&str]) -> Child {
    let mut args = vec!["watch", flow, "--on", "inbox/*.csv"];
    if !extra.contains(&"--settle") {
        args.extend(["--settle", "300ms"]);
    }
    args.extend_from_slice(extra);
    env.spawn(&args)
}

/// Stops a watcher with SIGTERM and returns what it printed; it must exit 143.
#[track_caller]
fn stop(child: Child) -> Run {
    signal(child.id(), Signal::SIGTERM);
    let run = finish(child, LIMIT);
    run.code(143);
    run
}

/// The absolute path a watcher gives steps for `rel`.
fn abs(env: &Env, rel: &str) -> String {
    std::fs::canonicalize(env.path().join(rel)).expect("canonical").to_string_lossy().into_owned()
}

fn lines(env: &Env, rel: &str) -> Vec<String> {
    let mut l: Vec<String> = env.read(rel).lines().map(str::to_string).collect();
    l.sort();
    l
}

/// Waits until `n` runs exist and every one of them has ended (a step's side effect
/// comes before its run's end; a watcher stopped in between would interrupt the run).
#[track_caller]
fn wait_ended(env: &Env, n: usize) {
    wait_for(&format!("{n} runs ended"), LIMIT, || {
        let ids = env.run_ids();
        ids.len() == n && ids.iter().all(|id| env.events(id).iter().any(|e| e == "RunFinished"))
    });
}

/// Lets a watcher go on a while, so that a second run of something would have happened.
fn linger() {
    std::thread::sleep(Duration::from_millis(1200));
}

#[test]
fn each_file_is_processed_once() {
    let env = Env::new();
    inbox(&env);
    let flow = env.flow("rec", RECORD);
    env.write("inbox/early.csv", "0\n"); // there before the watcher: found by the scan
    let w = watch(&env, &flow, &[]);
    env.write("inbox/a.csv", "1\n");
    env.write("inbox/b.csv", "2\n");
    env.write("inbox/ignored.txt", "3\n");
    wait_for("three files processed", LIMIT, || env.count("done.log") >= 3);
    // The same bytes written again at the same place: the same run, already done.
    env.write("inbox/a.csv", "1\n");
    linger();
    wait_ended(&env, 3);
    let out = stop(w);
    let mut want = vec![abs(&env, "inbox/a.csv"), abs(&env, "inbox/b.csv"), abs(&env, "inbox/early.csv")];
    want.sort();
    assert_eq!(lines(&env, "done.log"), want, "watcher said:\n{}", out.stderr);
    assert_eq!(env.run_ids().len(), 3);
    out.stderr_has("watch: started rec-").stderr_has("with exit code 0").stderr_has("already done");
    // The file reached the run's journal, where a resume finds it.
    let id = env.run_ids()[0].clone();
    let trigger = env.journal(&id)[0]["data"]["trigger_file"].as_str().map(str::to_string);
    assert!(trigger.is_some_and(|t| want.contains(&t)), "RunStarted lacks the trigger file");
}

#[test]
fn a_file_written_slowly_is_processed_once_after_it_settles() {
    let env = Env::new();
    inbox(&env);
    let flow = env.flow(
        "cat",
        r#"
[[steps]]
id = "copy"
run = 'cat "$RUNNER_TRIGGER_FILE" >> seen.log'
"#,
    );
    let w = watch(&env, &flow, &["--settle", "500ms"]);
    let mut file = std::fs::File::create(env.path().join("inbox/slow.csv")).expect("create");
    let mut full = String::new();
    for i in 0..10 {
        let piece = format!("row {i}\n");
        file.write_all(piece.as_bytes()).expect("write");
        file.flush().expect("flush");
        full.push_str(&piece);
        std::thread::sleep(Duration::from_millis(120));
    }
    drop(file);
    wait_for("the file processed", LIMIT, || env.count("seen.log") >= 10);
    linger();
    wait_ended(&env, 1);
    let out = stop(w);
    assert_eq!(env.run_ids().len(), 1, "one run, not one per piece:\n{}", out.stderr);
    assert_eq!(env.read("seen.log"), full, "the run saw the whole file");
}

#[test]
fn a_restarted_watcher_takes_what_arrived_meanwhile_and_skips_what_is_done() {
    let env = Env::new();
    inbox(&env);
    let flow = env.flow("rec", RECORD);
    let w = watch(&env, &flow, &[]);
    env.write("inbox/a.csv", "1\n");
    wait_for("a processed", LIMIT, || env.count("done.log") == 1);
    wait_ended(&env, 1);
    stop(w);
    env.write("inbox/b.csv", "2\n"); // while no watcher runs
    let w = watch(&env, &flow, &[]);
    wait_for("b processed", LIMIT, || env.count("done.log") >= 2);
    linger();
    let out = stop(w);
    assert_eq!(lines(&env, "done.log"), vec![abs(&env, "inbox/a.csv"), abs(&env, "inbox/b.csv")]);
    out.stderr_has("already done").stderr_has("started rec-");
}

/// A step that records its start, waits for `go` to exist, then records its end.
const HELD: &str = r#"
[[steps]]
id = "hold"
run = '''
echo "$RUNNER_TRIGGER_FILE" >> started.log
echo $$ > step.pid
while [ ! -e go ]; do sleep 0.05; done
echo "$RUNNER_TRIGGER_FILE" >> done.log
'''
"#;

#[test]
fn a_run_killed_midway_is_resumed_by_the_next_watcher() {
    let env = Env::new();
    inbox(&env);
    let flow = env.flow("held", HELD);
    let w = watch(&env, &flow, &[]);
    env.write("inbox/a.csv", "1\n");
    wait_for("the step started", LIMIT, || {
        env.count("started.log") == 1 && env.read("step.pid").ends_with('\n')
    });
    // Everything dies at once: the watcher, its runner, the step.
    let id = env.only_run();
    let runner_pid = env.journal(&id)[0]["data"]["session"]["pid"].as_i64().expect("pid") as u32;
    let step_pid = read_pid(&env, "step.pid");
    signal(w.id(), Signal::SIGKILL);
    signal(runner_pid, Signal::SIGKILL);
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(step_pid), Signal::SIGKILL);
    let _ = finish(w, LIMIT);
    wait_for("the runner gone", LIMIT, || !alive(runner_pid as i32));
    env.write("go", "");
    let w = watch(&env, &flow, &[]);
    wait_for("the run finished", LIMIT, || env.count("done.log") == 1);
    linger();
    wait_ended(&env, 1);
    let out = stop(w);
    out.stderr_has(&format!("resumed {id}")).stderr_has("its runner died");
    assert_eq!(env.count("done.log"), 1);
    assert_eq!(lines(&env, "done.log"), vec![abs(&env, "inbox/a.csv")], "the resumed step got the same file");
    assert_eq!(env.count("started.log"), 2, "a new attempt of the step that was cut off");
    assert!(env.events(&id).contains(&"RunResumed".to_string()));
    env.run(&["status", "--run-id", &id]).code(0);
}

#[test]
fn sigterm_stops_the_runs_and_the_next_watcher_resumes_them() {
    let env = Env::new();
    inbox(&env);
    let flow = env.flow("held", HELD);
    let w = watch(&env, &flow, &[]);
    env.write("inbox/a.csv", "1\n");
    wait_for("the step started", LIMIT, || env.count("started.log") == 1);
    let out = stop(w);
    out.stderr_has("SIGTERM received: stopping 1 run(s)").stderr_has("with exit code 143");
    let id = env.only_run();
    assert!(env.events(&id).contains(&"RunInterrupted".to_string()), "{:?}", env.events(&id));
    env.write("go", "");
    let w = watch(&env, &flow, &[]);
    wait_for("the run finished", LIMIT, || env.count("done.log") == 1);
    wait_ended(&env, 1);
    let out = stop(w);
    out.stderr_has(&format!("resumed {id}")).stderr_has("interrupted");
    assert_eq!(lines(&env, "done.log"), vec![abs(&env, "inbox/a.csv")]);
}

#[test]
fn a_copy_under_a_new_name_and_new_content_at_the_same_path_are_new_runs() {
    let env = Env::new();
    inbox(&env);
    let flow = env.flow("rec", RECORD);
    let w = watch(&env, &flow, &[]);
    env.write("inbox/a.csv", "1\n");
    wait_for("a processed", LIMIT, || env.count("done.log") == 1);
    std::fs::copy(env.path().join("inbox/a.csv"), env.path().join("inbox/copy.csv")).expect("copy");
    wait_for("the copy processed", LIMIT, || env.count("done.log") == 2);
    env.write("inbox/a.csv", "1\n2\n");
    wait_for("a's new content processed", LIMIT, || env.count("done.log") == 3);
    linger();
    wait_ended(&env, 3);
    stop(w);
    let a = abs(&env, "inbox/a.csv");
    let mut want = vec![a.clone(), a, abs(&env, "inbox/copy.csv")];
    want.sort();
    assert_eq!(lines(&env, "done.log"), want);
    assert_eq!(env.run_ids().len(), 3);
}

#[test]
fn concurrency_never_exceeds_max_runs() {
    let env = Env::new();
    inbox(&env);
    let flow = env.flow(
        "busy",
        r#"
[[steps]]
id = "busy"
run = '''
mkdir -p active
touch "active/$RUNNER_RUN_ID"
ls active | wc -l >> counts.log
sleep 0.6
ls active | wc -l >> counts.log
rm "active/$RUNNER_RUN_ID"
echo "$RUNNER_TRIGGER_FILE" >> done.log
'''
"#,
    );
    for i in 0..5 {
        env.write(&format!("inbox/{i}.csv"), &format!("{i}\n"));
    }
    let w = watch(&env, &flow, &["--max-runs", "2"]);
    wait_for("five runs", Duration::from_secs(60), || env.count("done.log") == 5);
    let out = stop(w);
    let counts: Vec<usize> =
        env.read("counts.log").lines().map(|l| l.trim().parse().expect("a count")).collect();
    let most = counts.iter().copied().max().unwrap_or(0);
    assert!(most <= 2, "{most} runs at once with --max-runs 2: {counts:?}\n{}", out.stderr);
    assert_eq!(most, 2, "two runs should have overlapped: {counts:?}");
    // Queued in arrival order: the files were written 0..4, so they start 0..4.
    let started: Vec<&str> = out.stderr.lines().filter(|l| l.contains("watch: started")).collect();
    assert_eq!(started.len(), 5, "{}", out.stderr);
    for (i, line) in started.iter().enumerate() {
        assert!(line.ends_with(&format!("/inbox/{i}.csv")), "start {i}: {line}");
    }
}

#[test]
fn a_failed_run_is_left_alone_unless_retry_failed() {
    let env = Env::new();
    inbox(&env);
    let flow = env.flow(
        "strict",
        r#"
[[steps]]
id = "check"
run = '''
echo "$RUNNER_TRIGGER_FILE" >> tried.log
[ -e fixed ]
'''
"#,
    );
    env.write("inbox/a.csv", "1\n");
    let w = watch(&env, &flow, &[]);
    wait_for("a tried", LIMIT, || env.count("tried.log") == 1);
    wait_for("the run failed", LIMIT, || {
        env.run_ids().first().is_some_and(|id| env.events(id).contains(&"RunFinished".to_string()))
    });
    stop(w).stderr_has("with exit code 1");
    let w = watch(&env, &flow, &[]);
    linger();
    stop(w).stderr_has("failed before");
    assert_eq!(env.count("tried.log"), 1, "a failed run is not run again by default");
    env.write("fixed", "");
    let w = watch(&env, &flow, &["--retry-failed"]);
    wait_for("a tried again", LIMIT, || env.count("tried.log") == 2);
    wait_for("the run succeeded", LIMIT, || {
        env.journal(&env.only_run())
            .iter()
            .any(|e| e["type"] == "RunFinished" && e["data"]["outcome"] == "succeeded")
    });
    stop(w).stderr_has("resumed").stderr_has("with exit code 0");
    assert_eq!(env.run_ids().len(), 1);
}

#[test]
fn bad_input_is_refused_before_watching() {
    let env = Env::new();
    let flow = env.flow("rec", RECORD);
    env.run(&["watch", &flow, "--on", "inbox/*.csv"]).code(2).stderr_has("inbox");
    inbox(&env);
    env.run(&["watch", &flow, "--on", "inbox/[.csv"]).code(2);
    env.run(&["watch", "flows/missing.toml", "--on", "inbox/*.csv"]).code(2);
    env.run(&["watch", &flow, "--on", "inbox/*.csv", "--max-runs", "0"]).code(2);
}

#[test]
fn run_trigger_file_reaches_steps_and_keys_the_cache() {
    let env = Env::new();
    let flow = env.flow(
        "cached",
        r#"
[[steps]]
id = "load"
cache = true
run = 'echo "$RUNNER_TRIGGER_FILE" >> done.log'
"#,
    );
    env.write("in/a.csv", "1\n");
    env.write("in/b.csv", "2\n");
    env.run(&["run", &flow, "--run-id", "a1", "--trigger-file", "in/a.csv"]).code(0);
    env.run(&["run", &flow, "--run-id", "b1", "--trigger-file", "in/b.csv"]).code(0);
    assert_eq!(env.read("done.log"), "in/a.csv\nin/b.csv\n", "another file is not a cache hit");
    // The same file with the same bytes: served from the cache.
    env.run(&["run", &flow, "--run-id", "a2", "--trigger-file", "in/a.csv"]).code(0);
    assert_eq!(env.count("done.log"), 2);
    // New bytes: runs again.
    env.write("in/a.csv", "3\n");
    env.run(&["run", &flow, "--run-id", "a3", "--trigger-file", "in/a.csv"]).code(0);
    assert_eq!(env.count("done.log"), 3);
    // An existing run keeps its trigger file.
    env.run(&["run", &flow, "--run-id", "a1", "--trigger-file", "in/b.csv"])
        .code(2)
        .stderr_has("trigger file");
    env.run(&["run", &flow, "--run-id", "a1", "--trigger-file", "in/a.csv"]).code(0);
}

#[test]
fn a_cancelled_run_is_left_to_the_person_who_cancelled_it() {
    let env = Env::new();
    inbox(&env);
    let flow = env.flow(
        "slow",
        r#"
[[steps]]
id = "work"
run = '''
echo "$RUNNER_TRIGGER_FILE" >> tried.log
[ -e go ] || { sleep 30 & wait; }
'''
"#,
    );
    env.write("inbox/a.csv", "1\n");
    let w = watch(&env, &flow, &[]);
    wait_for("a tried", LIMIT, || env.count("tried.log") == 1);
    env.run(&["cancel", "--last", "--by", "carol"]).code(0);
    stop(w);
    let w = watch(&env, &flow, &[]);
    linger();
    stop(w).stderr_has("cancelled by carol");
    assert_eq!(env.count("tried.log"), 1, "a cancelled run is not resumed by the watcher");
}

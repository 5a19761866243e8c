//! Processes: signals, timeouts, retries, locks, and crashes of the runner itself.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

/// Step `long` records its pid and a background child's pid, then waits for a while.
const LONG: &str = r#"
[[steps]]
id = "quick"
run = "echo quick >> quick.out"
[[steps]]
id = "long"
run = '''
echo long >> long.out
sleep 300 &
echo $! > child.pid
echo $$ > shell.pid
if [ -f resume-fast ]; then exit 0; fi
wait
'''
[[steps]]
id = "after"
run = "echo after >> after.out"
"#;

fn start_long(env: &Env) -> std::process::Child {
    let flow = env.flow("long", LONG);
    let child = env.spawn(&["run", &flow, "--run-id", "r"]);
    // Written last, and read only once complete (the shell creates the file, then writes).
    let written = || std::fs::read_to_string(env.path().join("shell.pid")).is_ok_and(|s| s.ends_with('\n'));
    wait_for("the long step to start", Duration::from_secs(20), written);
    child
}

#[test]
fn sigint_stops_every_step_process_and_exits_130() {
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let env = Env::new();
        let child = start_long(&env);
        let (shell, bg) = (read_pid(&env, "shell.pid"), read_pid(&env, "child.pid"));
        assert!(alive(shell) && alive(bg));
        signal(child.id(), sig);
        let out = finish(child, Duration::from_secs(20));
        out.code(code).stderr_has("interrupted by");
        wait_for("step processes to be gone", Duration::from_secs(5), || !alive(shell) && !alive(bg));
        let events = env.events("r");
        assert!(events.contains(&"StepInterrupted:long".to_string()), "{events:?}");
        assert_eq!(events.last().map(String::as_str), Some("RunInterrupted"));

        env.write("resume-fast", "");
        env.run(&["resume", "--run-id", "r"]).code(0);
        assert_eq!((env.count("quick.out"), env.count("long.out"), env.count("after.out")), (1, 2, 1));
    }
}

#[test]
fn a_second_signal_kills_at_once() {
    let env = Env::new();
    let flow = env.flow(
        "stubborn",
        "[[steps]]\nid='stubborn'\ngrace='60s'\nrun='''\ntrap \"\" TERM\necho $$ > shell.pid\nwhile true; do sleep 0.05; done\n'''\n",
    );
    let child = env.spawn(&["run", &flow, "--run-id", "s"]);
    wait_for("the step to start", Duration::from_secs(20), || env.path().join("shell.pid").exists());
    signal(child.id(), Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    let shell = read_pid(&env, "shell.pid");
    assert!(alive(shell), "the step ignores SIGTERM and has a long grace");
    signal(child.id(), Signal::SIGINT);
    finish(child, Duration::from_secs(10)).code(130);
    wait_for("the stubborn step to be killed", Duration::from_secs(5), || !alive(shell));
}

#[test]
fn a_second_runner_is_refused_with_exit_4() {
    let env = Env::new();
    let child = start_long(&env);
    let out = env.run(&["resume", "--run-id", "r"]);
    out.code(4).stderr_has(&format!("locked by another runner process (pid {})", child.id()));
    let flow = "flows/long.toml";
    env.run(&["run", flow, "--run-id", "r"]).code(4);
    signal(child.id(), Signal::SIGTERM);
    finish(child, Duration::from_secs(20)).code(143);
}

#[test]
fn sigkill_mid_step_then_resume_runs_completed_steps_exactly_once() {
    let env = Env::new();
    let child = start_long(&env);
    let (shell, bg) = (read_pid(&env, "shell.pid"), read_pid(&env, "child.pid"));
    signal(child.id(), Signal::SIGKILL);
    let _ = finish(child, Duration::from_secs(10));
    // The step outlives a SIGKILLed runner; the resume must stop it before the next attempt.
    assert!(alive(shell) || alive(bg));
    env.run(&["status"]).code(0).stdout_has("crashed");
    env.write("resume-fast", "");
    env.run(&["resume", "--run-id", "r"]).code(0).stderr_has("still running from the previous runner");
    assert!(!alive(shell) && !alive(bg), "leftover attempt still alive after resume");
    assert_eq!((env.count("quick.out"), env.count("long.out"), env.count("after.out")), (1, 2, 1));
    let interrupted: Vec<_> =
        env.journal("r").into_iter().filter(|e| e["type"] == "StepInterrupted").collect();
    assert_eq!(interrupted.len(), 1);
    assert_eq!(interrupted[0]["data"]["reason"], "runner_died");
    assert_eq!(interrupted[0]["data"]["leftover_stopped"], true);
    env.run(&["verify", "--run-id", "r"]).code(0);
    env.assert_rebuild_matches_live();
}

#[test]
fn repeated_sigkills_never_rerun_a_completed_step() {
    let env = Env::new();
    let mut toml = String::new();
    for i in 0..12 {
        let needs = if i % 3 == 0 { "needs = []\n".to_string() } else { String::new() };
        toml.push_str(&format!(
            "[[steps]]\nid = 's{i}'\n{needs}run = 'echo $RUNNER_ATTEMPT >> s{i}.out; sleep 0.0{}'\n",
            i % 7 + 1
        ));
    }
    let flow = env.flow("soak", &toml);
    let mut kills = 0;
    for round in 0..40 {
        // What a cron line does: start the run, or resume it if it exists.
        let child = env.spawn(&["run", &flow, "--run-id", "k"]);
        std::thread::sleep(Duration::from_millis(20 + (round * 37 % 90) as u64));
        match kill_or_finished(child) {
            Some(code) => {
                assert_eq!(code, 0, "run finished with {code}");
                break;
            }
            None => kills += 1,
        }
    }
    env.run(&["run", &flow, "--run-id", "k"]).code(0);
    assert!(kills > 0, "the test never managed to kill the runner");
    let steps: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    assert_each_step_once(&env, &env.journal("k"), &steps);
    env.run(&["verify", "--run-id", "k"]).code(0);
    env.assert_rebuild_matches_live();
}

#[test]
fn timeouts_stop_the_step_and_fail_it() {
    let env = Env::new();
    let flow = env.flow(
        "slow",
        "[[steps]]\nid='slow'\ntimeout='300ms'\nrun='echo $$ > shell.pid; sleep 30'\n\
         [[steps]]\nid='deaf'\nneeds=[]\ntimeout='200ms'\ngrace='300ms'\nrun='''\ntrap \"\" TERM\necho $$ > deaf.pid\nwhile true; do sleep 0.05; done\n'''\n",
    );
    let started = std::time::Instant::now();
    let out = env.run(&["run", &flow, "--run-id", "t"]);
    out.code(1).stderr_has("timed out after 300ms");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let failed: Vec<_> = env.journal("t").into_iter().filter(|e| e["type"] == "StepFailed").collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e["data"]["reason"] == "timeout"));
    let deaf = failed.iter().find(|e| e["data"]["step"] == "deaf").expect("deaf failed");
    assert_eq!(deaf["data"]["signal"], "SIGKILL", "a step that ignores SIGTERM is killed after its grace");
    assert!(!alive(read_pid(&env, "shell.pid")) && !alive(read_pid(&env, "deaf.pid")));
}

#[test]
fn retries_back_off_and_then_give_up() {
    let env = Env::new();
    let flow = env.flow(
        "retry",
        r#"
[[steps]]
id = "flaky"
run = 'n=$(cat n 2>/dev/null || echo 0); n=$((n+1)); echo $n > n; echo "attempt $RUNNER_ATTEMPT"; [ $n -ge 3 ]'
retries = { attempts = 2, backoff = "50ms" }
[[steps]]
id = "hopeless"
run = "echo no >&2; exit 3"
retries = 1
"#,
    );
    let out = env.run(&["run", &flow, "--run-id", "x"]);
    out.code(1)
        .stderr_has("retrying in 50ms")
        .stderr_has("retrying in 100ms")
        .stderr_has("exited with code 3");
    let journal = env.journal("x");
    let starts =
        |s: &str| journal.iter().filter(|e| e["type"] == "StepStarted" && e["data"]["step"] == s).count();
    assert_eq!((starts("flaky"), starts("hopeless")), (3, 2));
    assert_eq!(
        env.run(&["logs", "--run-id", "x", "--step", "flaky", "--attempt", "2", "--stream", "stdout"]).stdout,
        "attempt 2\n"
    );
    let status: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json", "--run-id", "x"]).stdout).expect("json");
    assert_eq!(status["steps"][1]["attempts"], 2);
    assert_eq!(status["steps"][1]["exit_code"], 3);
}

#[test]
fn a_command_that_cannot_start_is_a_failed_attempt() {
    let env = Env::new();
    let flow = env.flow("gone", "[[steps]]\nid='a'\nrun='test -f go'\n");
    let work = env.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let runs = env.runs_dir();
    let run = |args: &[&str]| {
        let mut all = vec!["--runs-dir", runs.to_str().expect("utf8")];
        all.extend_from_slice(args);
        let out = env.command(&all).current_dir(&work).output().expect("runner");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let flow_abs = env.path().join(&flow);
    assert_eq!(run(&["run", flow_abs.to_str().expect("utf8"), "--run-id", "g"]).0, Some(1));
    // The run's working directory disappears: the next attempt cannot even start.
    std::fs::remove_dir(&work).expect("rmdir");
    let out = env.run(&["resume", "--run-id", "g"]);
    out.code(1).stderr_has("cannot start the command");
    let failed: Vec<_> = env.journal("g").into_iter().filter(|e| e["type"] == "StepFailed").collect();
    assert_eq!(failed.last().expect("failure")["data"]["reason"], "spawn");
    env.run(&["verify", "--run-id", "g"]).code(0);
}

#[test]
fn a_step_waiting_to_retry_finishes_its_retries_after_another_fails() {
    let env = Env::new();
    let flow = env.flow(
        "mix",
        r#"
[[steps]]
id = "flaky"
needs = []
run = "exit 1"
retries = { attempts = 2, backoff = "200ms" }
[[steps]]
id = "bad"
needs = []
run = "sleep 0.3; exit 3"
"#,
    );
    let child = env.spawn(&["run", &flow, "--run-id", "m"]);
    finish(child, Duration::from_secs(20)).code(1);
    let starts = env
        .journal("m")
        .iter()
        .filter(|e| e["type"] == "StepStarted" && e["data"]["step"] == "flaky")
        .count();
    assert_eq!(starts, 3);
}

/// CPU time (user + system) a live process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect(")") + 1..].split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn waiting_for_a_free_slot_does_not_spin() {
    let env = Env::new();
    let flow = env.flow(
        "slots",
        "[[steps]]\nid='flaky'\nneeds=[]\nrun='exit 1'\nretries={attempts=1, backoff='50ms'}\n\
         [[steps]]\nid='long'\nneeds=[]\nrun='sleep 1.5'\n",
    );
    let child = env.spawn(&["run", &flow, "-j", "1", "--run-id", "s"]);
    std::thread::sleep(Duration::from_millis(1200));
    let ticks = cpu_ticks(child.id());
    finish(child, Duration::from_secs(20)).code(1);
    // A busy loop would use about a second of CPU (~100 ticks) by now.
    assert!(ticks < 30, "the runner used {ticks} ticks of CPU while waiting");
}

#[test]
fn grace_applies_to_every_process_of_a_stopped_step() {
    let env = Env::new();
    let flow = env.flow(
        "tidy",
        r#"
[[steps]]
id = "tidy"
timeout = "300ms"
grace = "10s"
run = '''
sh -c 'trap "sleep 0.3; echo cleaned > cleaned.txt; exit 0" TERM; while true; do sleep 0.05; done' &
wait
'''
"#,
    );
    let started = std::time::Instant::now();
    env.run(&["run", &flow]).code(1).stderr_has("timed out after 300ms");
    assert_eq!(env.read("cleaned.txt"), "cleaned\n", "the child was killed before its grace ran out");
    assert!(started.elapsed() < Duration::from_secs(8), "the run waited for the whole grace");
}

#[test]
fn processes_that_leave_the_step_group_do_not_survive() {
    let env = Env::new();
    let flow =
        env.flow("escape", "[[steps]]\nid='escape'\nrun='setsid sleep 60 & echo $! > esc.pid; sleep 0.2'\n");
    env.run(&["run", &flow]).code(0).stderr_has("detached from their process group");
    let esc = read_pid(&env, "esc.pid");
    wait_for("the detached process to be gone", Duration::from_secs(5), || !alive(esc));

    // And after a SIGKILL of the runner, resume finds it through its environment.
    let env = Env::new();
    let flow = env.flow(
        "escape2",
        "[[steps]]\nid='escape'\nrun='setsid sleep 60 & echo $! > esc.pid; if [ -f fast ]; then exit 0; fi; sleep 60'\n",
    );
    let child = env.spawn(&["run", &flow, "--run-id", "e"]);
    wait_for("the step to start", Duration::from_secs(20), || env.path().join("esc.pid").exists());
    let esc = read_pid(&env, "esc.pid");
    signal(child.id(), Signal::SIGKILL);
    let _ = finish(child, Duration::from_secs(10));
    assert!(alive(esc));
    env.write("fast", "");
    env.run(&["resume", "--run-id", "e"]).code(0);
    assert!(!alive(esc), "a process of the dead runner's attempt survived the resume");
}

#[test]
fn a_signal_while_resume_stops_leftovers_starts_nothing_new() {
    let env = Env::new();
    let flow = env.flow(
        "deaf",
        "[[steps]]\nid='deaf'\ngrace='1s'\nrun='''\ntrap \"\" TERM\necho $RUNNER_ATTEMPT >> attempts\nwhile true; do sleep 0.05; done\n'''\n",
    );
    let child = env.spawn(&["run", &flow, "--run-id", "d"]);
    wait_for("the step to start", Duration::from_secs(20), || env.count("attempts") == 1);
    signal(child.id(), Signal::SIGKILL);
    let _ = finish(child, Duration::from_secs(10));
    let resume = env.spawn(&["resume", "--run-id", "d"]);
    std::thread::sleep(Duration::from_millis(300));
    signal(resume.id(), Signal::SIGINT);
    finish(resume, Duration::from_secs(20)).code(130);
    assert_eq!(env.count("attempts"), 1, "a new attempt ran although the resume was interrupted");
    let started = env.journal("d").iter().filter(|e| e["type"] == "StepStarted").count();
    assert_eq!(started, 1);
}

#[test]
fn resume_stops_only_its_own_leftovers() {
    // Run ids are unique per runs directory only: two directories may both have run `r`.
    let (mine, theirs) = (Env::new(), Env::new());
    let child = start_long(&theirs);
    let their_shell = read_pid(&theirs, "shell.pid");
    signal(child.id(), Signal::SIGKILL);
    let _ = finish(child, Duration::from_secs(10));
    let child = start_long(&mine);
    signal(child.id(), Signal::SIGKILL);
    let _ = finish(child, Duration::from_secs(10));
    mine.write("resume-fast", "");
    mine.run(&["resume", "--run-id", "r"]).code(0);
    assert!(alive(their_shell), "a resume stopped a step of another runs directory");
    theirs.write("resume-fast", "");
    theirs.run(&["resume", "--run-id", "r"]).code(0);
    assert!(!alive(their_shell));
}

#[test]
fn resuming_a_finished_run_stops_what_its_dead_runner_left_behind() {
    let env = Env::new();
    // (The pause lets `setsid` leave the group before the step ends; until then it is a
    // leftover of the step like any other and is stopped with it.)
    let flow =
        env.flow("escape", "[[steps]]\nid='escape'\nrun='setsid sleep 60 & echo $! > esc.pid; sleep 0.3'\n");
    // Commit 3 holds the step's success and RunFinished; the runner dies right after it,
    // before it could stop the detached process.
    let out = env
        .command(&["run", &flow, "--run-id", "e"])
        .env(runner::faults::ENV, "after-commit:3")
        .output()
        .expect("runner");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9));
    let esc = read_pid(&env, "esc.pid");
    assert!(alive(esc));
    env.run(&["resume", "--run-id", "e"]).code(0).stderr_has("already succeeded");
    wait_for("the detached process to be stopped", Duration::from_secs(10), || !alive(esc));
}

#[test]
fn a_step_that_cannot_start_stops_the_others_in_the_same_batch() {
    let env = Env::new();
    // An environment value over Linux's 128 KiB limit for one string: exec fails (E2BIG).
    let huge = "x".repeat(200_000);
    let flow = env.flow(
        "three",
        &format!(
            "[[steps]]\nid='a'\nneeds=[]\nrun='true'\nenv={{ HUGE = '{huge}' }}\n\
             [[steps]]\nid='b'\nneeds=[]\nrun='echo b >> b.out'\n[[steps]]\nid='c'\nneeds=[]\nrun='echo c >> c.out'\n"
        ),
    );
    env.run(&["run", &flow, "--run-id", "s", "--jobs", "3"]).code(1).stderr_has("cannot start the command");
    assert_eq!(env.count("b.out") + env.count("c.out"), 0, "steps started after a step failed for good");
}

//! The Slurm executor against a real single-node Slurm cluster (`scripts/slurm-up.sh`):
//! submission, results, kills of the runner while jobs are queued and running,
//! cancellation from outside, timeouts, and many jobs with batched queries.
//!
//! The cluster is started by `.ci/run`; run as root without it, the first test starts it
//! (and leaves it running; `scripts/slurm-down.sh` stops it). Without root and without a
//! cluster, these tests say loudly that they are skipped.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::util::{Env, finish, kill_or_finished, signal, wait_for};

/// Whether a cluster is there (started now if need be); `false` only when it cannot be.
fn cluster() -> bool {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        if idle() {
            return Ok(());
        }
        if !nix::unistd::geteuid().is_root() {
            return Err("no Slurm cluster answers, and starting one needs root".into());
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-up.sh");
        let out = Command::new("bash").arg(&script).env("SLURM_UP_SMOKE", "0").output();
        match out {
            Ok(o) if o.status.success() && idle() => Ok(()),
            Ok(o) => panic!(
                "scripts/slurm-up.sh failed (exit {:?}); as root the Slurm tests must run:\n{}",
                o.status.code(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run scripts/slurm-up.sh: {e}"),
        }
    });
    match up {
        Ok(()) => true,
        Err(why) => {
            // Past the test harness's capture, so it is seen even when the test passes.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: Slurm test ({why}). Run as root, or start a cluster with scripts/slurm-up.sh. ***\n"
            );
            false
        }
    }
}

fn idle() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty())
}

/// Slurm's state of a job (`squeue -t all`), empty once it forgot it.
fn job_state(job: &str) -> String {
    let out =
        Command::new("squeue").args(["-h", "-t", "all", "-o", "%T", "-j", job]).output().expect("squeue");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The `job_id`s of a run's `StepSubmitted` events for `step`, in order.
fn submitted(env: &Env, id: &str, step: &str) -> Vec<String> {
    env.journal(id)
        .iter()
        .filter(|e| e["type"] == "StepSubmitted" && e["data"]["step"] == step)
        .map(|e| e["data"]["job_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn events_of(env: &Env, id: &str, ty: &str) -> Vec<serde_json::Value> {
    env.journal(id).into_iter().filter(|e| e["type"] == ty).collect()
}

fn query(env: &Env, sql: &str) -> Vec<Vec<String>> {
    let runs = runner::store::RunsDir::new(env.runs_dir());
    let p = runner::projection::Projection::open(&runs).expect("projection");
    let mut stmt = p.connection().prepare(sql).expect("sql");
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                r.get::<_, Option<String>>(i)
                    .or_else(|_| r.get::<_, Option<i64>>(i).map(|v| v.map(|v| v.to_string())))
                    .map(Option::unwrap_or_default)
            })
            .collect()
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

#[test]
fn a_flow_split_across_local_and_slurm_steps_passes_outputs_both_ways() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "split",
        r#"
[params]
size = { default = "7" }

[[steps]]
id = "prep"
run = "echo base=$((RUNNER_PARAM_SIZE * 2)) >> $RUNNER_OUTPUT; hostname > prep.host"

[[steps]]
id = "compute"
executor = "slurm"
slurm = { time = "5m", cpus = 1 }
run = """
test -n "$SLURM_JOB_ID" || exit 9
echo "job $SLURM_JOB_ID run $RUNNER_RUN_ID step $RUNNER_STEP_ID attempt $RUNNER_ATTEMPT"
echo result=$((RUNNER_OUTPUT_PREP_BASE + 1)) >> $RUNNER_OUTPUT
pwd > compute.pwd
"""

[[steps]]
id = "check"
run = "test \"$RUNNER_OUTPUT_COMPUTE_RESULT\" = 15 && echo checked > check.out"
"#,
    );
    let run = env.run(&["run", &flow]);
    run.code(0);
    let id = run.run_id();
    assert_eq!(env.read("check.out"), "checked\n");
    // The job ran in the step's working directory, with the runner's variables.
    assert_eq!(env.read("compute.pwd").trim(), env.path().canonicalize().expect("canon").to_string_lossy());
    let jobs = submitted(&env, &id, "compute");
    assert_eq!(jobs.len(), 1);
    let log = std::fs::read_to_string(env.run_dir(&id).join("steps/compute/1/stdout.log")).expect("log");
    assert_eq!(log.trim(), format!("job {} run {id} step compute attempt 1", jobs[0]));
    // Write-ahead: the submission is journaled before the job is seen running.
    let kinds = env.events(&id);
    let at = |k: &str| kinds.iter().position(|e| e == k).unwrap_or_else(|| panic!("no {k} in {kinds:?}"));
    assert!(at("StepSubmitted:compute") < at("JobRunning:compute"));
    assert!(at("JobRunning:compute") < at("StepSucceeded:compute"));
    // The projection knows where each attempt ran.
    let rows = query(&env, "SELECT step_id, executor, job_id, node FROM attempts ORDER BY step_id");
    let node =
        String::from_utf8_lossy(&Command::new("hostname").arg("-s").output().expect("hostname").stdout)
            .trim()
            .to_string();
    assert_eq!(
        rows,
        vec![
            vec!["check".to_string(), "local".into(), String::new(), String::new()],
            vec!["compute".to_string(), "slurm".into(), jobs[0].clone(), node.clone()],
            vec!["prep".to_string(), "local".into(), String::new(), String::new()],
        ]
    );
    env.run(&["status", "--run-id", &id, "--step", "compute"])
        .code(0)
        .stdout_has(&format!("slurm job {} on {node}", jobs[0]));
    env.assert_rebuild_matches_live();
}

#[test]
fn exit_codes_stderr_and_retries_come_back_through_slurm() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "fails",
        r#"
[defaults]
executor = "slurm"

[[steps]]
id = "flaky"
retries = { attempts = 1, backoff = "100ms" }
run = "echo try >> tries.txt; echo 'it broke' >&2; exit 3"
"#,
    );
    let run = env.run(&["run", &flow]);
    run.code(1).stderr_has("exited with code 3").stderr_has("it broke");
    let id = env.only_run();
    assert_eq!(env.count("tries.txt"), 2, "each attempt ran exactly once");
    let jobs = submitted(&env, &id, "flaky");
    assert_eq!(jobs.len(), 2, "a retry is a new submission");
    assert_ne!(jobs[0], jobs[1]);
    let failed = events_of(&env, &id, "StepFailed");
    assert_eq!(failed.len(), 2);
    for f in &failed {
        assert_eq!(f["data"]["reason"], "exit");
        assert_eq!(f["data"]["exit_code"], 3);
    }
    // Each attempt's job left its exit code in its own directory.
    for attempt in ["1", "2"] {
        let rc = std::fs::read_to_string(env.run_dir(&id).join(format!("steps/flaky/{attempt}/exit_code")))
            .expect("exit_code file");
        assert!(rc.starts_with("3 "), "{rc}");
    }
}

/// Kills the runner (SIGKILL) once `ready` holds, resumes, and checks that the job ran
/// once, with one submission for its attempt, and the run succeeded.
fn kill_then_resume(env: &Env, flow: &str, ready: impl Fn(&Env, &str) -> bool) {
    let child = env.spawn(&["run", flow, "--run-id", "r"]);
    wait_for("the moment to kill", Duration::from_secs(60), || {
        env.run_dir("r").join("journal.jsonl").exists() && ready(env, "r")
    });
    assert_eq!(kill_or_finished(child), None, "the runner finished before it was killed");
    let resumed = env.run(&["resume", "--run-id", "r"]);
    resumed.code(0).stderr_has("re-attached to Slurm job");
    assert_eq!(env.count("work.out"), 1, "the job ran exactly once");
    assert_eq!(submitted(env, "r", "work").len(), 1, "one submission for the one attempt");
    assert_eq!(events_of(env, "r", "StepSucceeded").len(), 1);
    assert!(events_of(env, "r", "StepInterrupted").is_empty());
    env.assert_rebuild_matches_live();
}

#[test]
fn a_runner_killed_while_its_job_is_queued_waits_for_it_on_resume() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    // `--begin` keeps the job pending for a few seconds after its release.
    let flow = env.flow(
        "queued",
        r#"
[[steps]]
id = "work"
executor = "slurm"
slurm = { args = ["--begin=now+4"] }
run = "echo ran >> work.out; echo v=1 >> $RUNNER_OUTPUT"
"#,
    );
    kill_then_resume(&env, &flow, |env, id| {
        submitted(env, id, "work").first().is_some_and(|job| job_state(job) == "PENDING")
    });
}

#[test]
fn a_runner_killed_while_its_job_runs_reads_the_result_on_resume() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "running",
        r#"
[[steps]]
id = "work"
executor = "slurm"
run = "touch started; sleep 3; echo ran >> work.out"
"#,
    );
    kill_then_resume(&env, &flow, |env, _| env.path().join("started").exists());
}

#[test]
fn a_runner_killed_before_its_job_finished_takes_the_result_without_running_it_again() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "finished",
        r#"
[[steps]]
id = "work"
executor = "slurm"
run = "sleep 1; echo ran >> work.out; echo v=2 >> $RUNNER_OUTPUT"
"#,
    );
    let child = env.spawn(&["run", &flow, "--run-id", "r"]);
    wait_for("the job to be submitted", Duration::from_secs(60), || {
        env.run_dir("r").join("journal.jsonl").exists() && !submitted(&env, "r", "work").is_empty()
    });
    assert_eq!(kill_or_finished(child), None, "the runner finished before it was killed");
    // The job finishes while no runner watches it.
    wait_for("the job's exit code", Duration::from_secs(60), || {
        env.run_dir("r").join("steps/work/1/exit_code").exists()
    });
    env.run(&["resume", "--run-id", "r"]).code(0);
    assert_eq!(env.count("work.out"), 1);
    assert_eq!(submitted(&env, "r", "work").len(), 1);
    let ok = events_of(&env, "r", "StepSucceeded");
    assert_eq!(ok[0]["data"]["outputs"]["v"], "2");
}

#[test]
fn a_crash_between_submitting_and_journaling_leaves_a_held_job_that_never_runs() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "held",
        r#"
[[steps]]
id = "work"
executor = "slurm"
run = "echo ran >> work.out"
"#,
    );
    // `after-submit`: sbatch returned, StepSubmitted not yet durable.
    let crashed =
        env.command(&["run", &flow, "--run-id", "r"]).env("RUNNER_TEST_CRASH_AT", "after-submit").output();
    assert_eq!(crashed.expect("runs").status.code(), None, "killed by SIGKILL");
    assert!(submitted(&env, "r", "work").is_empty(), "the submission was never journaled");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.count("work.out"), 0, "a job whose id is not durable does not run");
    env.run(&["resume", "--run-id", "r"]).code(0).stderr_has("never recorded (they did not run)");
    assert_eq!(env.count("work.out"), 1);
    assert_eq!(submitted(&env, "r", "work").len(), 1);

    // `after-commit`: durable, not yet released; the resume releases it, once.
    let crashed =
        env.command(&["run", &flow, "--run-id", "r2"]).env("RUNNER_TEST_CRASH_AT", "after-commit").output();
    assert_eq!(crashed.expect("runs").status.code(), None);
    let job = submitted(&env, "r2", "work");
    assert_eq!(job.len(), 1);
    assert_eq!(job_state(&job[0]), "PENDING");
    env.run(&["resume", "--run-id", "r2"])
        .code(0)
        .stderr_has(&format!("re-attached to Slurm job {}", job[0]));
    assert_eq!(env.count("work.out"), 2);
    assert_eq!(submitted(&env, "r2", "work").len(), 1);
}

#[test]
fn scancel_from_outside_fails_the_step_as_cancelled() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "cancelled",
        r#"
[[steps]]
id = "work"
executor = "slurm"
run = "touch started; sleep 120"
"#,
    );
    let child = env.spawn(&["run", &flow, "--run-id", "r"]);
    wait_for("the job to run", Duration::from_secs(60), || env.path().join("started").exists());
    let job = submitted(&env, "r", "work").remove(0);
    assert!(Command::new("scancel").arg(&job).status().expect("scancel").success());
    let run = finish(child, Duration::from_secs(60));
    run.code(1).stderr_has("cancelled");
    let failed = events_of(&env, "r", "StepFailed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["data"]["reason"], "cancelled");
    assert!(failed[0]["data"]["message"].as_str().unwrap_or_default().contains(&job));
    env.run(&["status", "--run-id", "r"]).code(0).stdout_has("cancelled");
}

#[test]
fn a_timeout_cancels_the_job() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "slow",
        r#"
[[steps]]
id = "work"
executor = "slurm"
timeout = "2s"
grace = "1s"
run = "sleep 120"
"#,
    );
    let started = std::time::Instant::now();
    env.run(&["run", &flow, "--run-id", "r"]).code(1).stderr_has("timed out after 2.0s");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    let failed = events_of(&env, "r", "StepFailed");
    assert_eq!(failed[0]["data"]["reason"], "timeout");
    let job = submitted(&env, "r", "work").remove(0);
    wait_for("Slurm to end the job", Duration::from_secs(30), || {
        !matches!(job_state(&job).as_str(), "RUNNING" | "PENDING" | "COMPLETING")
    });
}

#[test]
fn ctrl_c_cancels_the_jobs_and_resume_submits_them_again() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "interrupt",
        r#"
[[steps]]
id = "work"
executor = "slurm"
grace = "1s"
run = "if [ -e again ]; then echo ok; else touch started; sleep 120; fi"
"#,
    );
    let child = env.spawn(&["run", &flow, "--run-id", "r"]);
    wait_for("the job to run", Duration::from_secs(60), || env.path().join("started").exists());
    signal(child.id(), nix::sys::signal::Signal::SIGINT);
    finish(child, Duration::from_secs(60)).code(130);
    let job = submitted(&env, "r", "work").remove(0);
    assert!(
        !matches!(job_state(&job).as_str(), "RUNNING" | "PENDING"),
        "job {job} still {}",
        job_state(&job)
    );
    let interrupted = events_of(&env, "r", "StepInterrupted");
    assert_eq!(interrupted.len(), 1);
    assert_eq!(interrupted[0]["data"]["reason"], "signal");
    env.write("again", "");
    env.run(&["resume", "--run-id", "r"]).code(0);
    assert_eq!(submitted(&env, "r", "work").len(), 2, "the interrupted attempt is submitted anew");
}

#[test]
fn a_job_slurm_forgot_without_an_exit_code_is_interrupted_and_submitted_again() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "forgotten",
        r#"
[[steps]]
id = "work"
executor = "slurm"
slurm = { args = ["--begin=now+60"] }
run = "echo ran >> work.out"
"#,
    );
    let child = env.spawn(&["run", &flow, "--run-id", "r"]);
    wait_for("the job to be queued", Duration::from_secs(60), || {
        env.run_dir("r").join("journal.jsonl").exists()
            && submitted(&env, "r", "work").first().is_some_and(|j| job_state(j) == "PENDING")
    });
    kill_or_finished(child);
    let job = submitted(&env, "r", "work").remove(0);
    assert!(Command::new("scancel").arg(&job).status().expect("scancel").success());
    // Slurm forgets finished jobs after MinJobAge (300 s here); a squeue that leaves this
    // one out stands for that moment. The job itself really is gone (it never ran).
    let shim = env.path().join("shim");
    std::fs::create_dir_all(&shim).expect("mkdir");
    let real = String::from_utf8_lossy(
        &Command::new("sh").args(["-c", "command -v squeue"]).output().expect("sh").stdout,
    )
    .trim()
    .to_string();
    std::fs::write(shim.join("squeue"), format!("#!/bin/sh\n{real} \"$@\" | grep -v '^{job}|'\nexit 0\n"))
        .expect("shim");
    std::fs::set_permissions(shim.join("squeue"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    env.write("flows/forgotten.toml", &env.read("flows/forgotten.toml").replace("now+60", "now"));
    std::fs::write(
        env.run_dir("r").join("flow.toml"),
        std::fs::read_to_string(env.run_dir("r").join("flow.toml")).expect("copy").replace("now+60", "now"),
    )
    .expect("write");
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap_or_default());
    let out = env
        .command(&["resume", "--run-id", "r", "--accept-flow-change"])
        .env("PATH", path)
        .output()
        .expect("resume");
    let run = crate::util::Run::from_output(out);
    run.code(0).stderr_has("vanished without leaving its exit code");
    let interrupted = events_of(&env, "r", "StepInterrupted");
    assert_eq!(interrupted.len(), 1);
    assert_eq!(interrupted[0]["data"]["reason"], "job_lost");
    assert_eq!(submitted(&env, "r", "work").len(), 2, "a new attempt, a new job");
    assert_eq!(env.count("work.out"), 1, "the lost job never ran; the new one ran once");
}

#[test]
fn two_hundred_parallel_slurm_steps_complete_with_batched_status_queries() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let mut flow = String::from("[defaults]\nexecutor = \"slurm\"\n[slurm]\nmax_jobs = 200\n");
    for i in 0..200 {
        flow.push_str(&format!("[[steps]]\nid = \"s{i}\"\nneeds = []\nrun = \"echo {i} > out/{i}\"\n"));
    }
    let flow = env.flow("wide", &flow);
    std::fs::create_dir_all(env.path().join("out")).expect("mkdir");
    // Every squeue the runner runs leaves a line here.
    let shim = env.path().join("shim");
    std::fs::create_dir_all(&shim).expect("mkdir");
    let real = String::from_utf8_lossy(
        &Command::new("sh").args(["-c", "command -v squeue"]).output().expect("sh").stdout,
    )
    .trim()
    .to_string();
    let log = env.path().join("squeue.log");
    std::fs::write(
        shim.join("squeue"),
        format!("#!/bin/sh\necho x >> {}\nexec {real} \"$@\"\n", log.display()),
    )
    .expect("shim");
    std::fs::set_permissions(shim.join("squeue"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap_or_default());
    let started = std::time::Instant::now();
    let out = env.command(&["run", &flow, "--run-id", "wide"]).env("PATH", path).output().expect("run");
    let took = started.elapsed();
    crate::util::Run::from_output(out).code(0);
    assert_eq!(std::fs::read_dir(env.path().join("out")).expect("out").count(), 200);
    assert_eq!(events_of(&env, "wide", "StepSubmitted").len(), 200);
    assert_eq!(events_of(&env, "wide", "StepSucceeded").len(), 200);
    let queries = env.count("squeue.log");
    let _ = writeln!(std::io::stderr(), "200 Slurm steps: {took:?}, {queries} squeue calls");
    assert!(queries < 40, "{queries} squeue calls for 200 jobs: queries are not batched");
}

#[test]
fn a_slurm_flow_is_checked_before_anything_starts() {
    let env = Env::new();
    let bad = env.flow("bad", "[[steps]]\nid = \"a\"\nexecutor = \"k8s\"\nrun = \"true\"\n");
    env.run(&["run", &bad]).code(2).stderr_has("bad.toml:3:12").stderr_has("unknown executor \"k8s\"");
    let own = env.flow("own", "[slurm]\nargs = [\"--wrap=true\"]\n[[steps]]\nid = \"a\"\nrun = \"true\"\n");
    env.run(&["run", &own]).code(2).stderr_has("is set by the runner itself");
    let step_limit = env.flow("limit", "[[steps]]\nid = \"a\"\nrun = \"true\"\nslurm = { max_jobs = 3 }\n");
    env.run(&["run", &step_limit]).code(2).stderr_has("`max_jobs` is for the flow's [slurm] table");
    let mem = env.flow("mem", "[slurm]\nmem = \"4GB\"\n[[steps]]\nid = \"a\"\nrun = \"true\"\n");
    env.run(&["run", &mem]).code(2).stderr_has("mem.toml:2:7").stderr_has("not a Slurm memory size");
    let service = env.flow(
        "svc",
        "[services.api]\nrun = \"sleep 60\"\n[[steps]]\nid = \"a\"\nexecutor = \"slurm\"\nservices = [\"api\"]\nrun = \"true\"\n",
    );
    env.run(&["run", &service]).code(2).stderr_has("runs on Slurm but uses services");
    // Without the Slurm CLI on PATH.
    let plain = env.flow("plain", "[[steps]]\nid = \"a\"\nrun = \"true\"\n");
    let out = env
        .command(&["run", &plain, "--executor", "slurm"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run");
    crate::util::Run::from_output(out).code(2).stderr_has("`sbatch` is not on PATH");
    assert!(env.run_ids().is_empty(), "nothing was created");
    // `--executor` is kept for the resume: a local run stays local.
    env.run(&["run", &plain, "--executor", "local", "--run-id", "l"]).code(0);
    assert_eq!(env.journal("l")[0]["data"]["executor"], "local");
}

#[test]
fn the_example_flow_survives_a_kill_and_reattaches() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    env.write("flows/slurm.toml", &std::fs::read_to_string(repo.join("flows/slurm.toml")).expect("example"));
    let child = env.spawn(&["run", "flows/slurm.toml", "--run-id", "ex"]);
    wait_for("both jobs to run", Duration::from_secs(120), || {
        ["crunch-a", "crunch-b"]
            .iter()
            .all(|s| env.run_dir("ex").join(format!("steps/{s}/1/job.started")).exists())
    });
    assert_eq!(kill_or_finished(child), None, "the runner finished before it was killed");
    env.run(&["resume", "--run-id", "ex"]).code(0).stderr_has("re-attached to Slurm job");
    for step in ["crunch-a", "crunch-b"] {
        assert_eq!(submitted(&env, "ex", step).len(), 1, "{step} was submitted once");
    }
    let report = std::fs::read_to_string(env.run_dir("ex").join("steps/report/1/stdout.log")).expect("log");
    assert_eq!(report, "total: 10\n");
}

/// SIGKILLs the runner again and again while a wide flow's jobs are queued, running and
/// finishing, resuming each time: every command runs exactly once, with one submission.
#[test]
fn repeated_kills_never_run_a_slurm_step_twice() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let mut flow = String::from("[defaults]\nexecutor = \"slurm\"\n");
    let mut ids = Vec::new();
    for layer in 0..3 {
        for k in 0..4 {
            let id = format!("l{layer}s{k}");
            let needs = if layer == 0 {
                "[]".to_string()
            } else {
                format!(
                    "[{}]",
                    (0..4).map(|j| format!("\"l{}s{j}\"", layer - 1)).collect::<Vec<_>>().join(", ")
                )
            };
            flow.push_str(&format!(
                "[[steps]]\nid = \"{id}\"\nneeds = {needs}\nrun = \"echo x >> {id}.out; sleep 0.{}\"\n",
                3 + k * 2
            ));
            ids.push(id);
        }
    }
    let flow = env.flow("wide", &flow);
    let mut args = vec!["run".to_string(), flow.clone(), "--run-id".into(), "k".into()];
    let mut finished = false;
    for round in 0..12u64 {
        let child = env.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(250 + (round * 397) % 900));
        if kill_or_finished(child) == Some(0) {
            finished = true;
            break;
        }
        args = vec!["resume".into(), "--run-id".into(), "k".into()];
    }
    if !finished {
        env.run(&["resume", "--run-id", "k"]).code(0);
    }
    let journal = env.journal("k");
    for id in &ids {
        assert_eq!(
            env.count(&format!("{id}.out")),
            1,
            "step {id} ran {} times",
            env.count(&format!("{id}.out"))
        );
        let count =
            |ty: &str| journal.iter().filter(|e| e["type"] == ty && e["data"]["step"] == id.as_str()).count();
        assert_eq!(count("StepSubmitted"), 1, "step {id}: one attempt, one submission");
        assert_eq!(count("StepSucceeded"), 1);
    }
    assert!(
        journal.iter().filter(|e| e["type"] == "RunResumed").count() >= 3,
        "the runner was killed a few times"
    );
    env.assert_rebuild_matches_live();
}

#[test]
fn runner_cancel_cancels_the_job_and_says_who() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "cancel",
        r#"
[[steps]]
id = "work"
executor = "slurm"
grace = "1s"
run = "touch started; sleep 120"
"#,
    );
    let child = env.spawn(&["run", &flow, "--run-id", "r"]);
    wait_for("the job to run", Duration::from_secs(60), || env.path().join("started").exists());
    env.run(&["cancel", "--run-id", "r", "--by", "alice"]).code(0);
    finish(child, Duration::from_secs(60)).code(143);
    let job = submitted(&env, "r", "work").remove(0);
    assert!(
        !matches!(job_state(&job).as_str(), "RUNNING" | "PENDING"),
        "job {job} still {}",
        job_state(&job)
    );
    let interrupted = events_of(&env, "r", "StepInterrupted");
    assert_eq!(interrupted[0]["data"]["reason"], "cancelled");
    let ended = events_of(&env, "r", "RunInterrupted");
    assert_eq!(ended[0]["data"]["cancelled_by"], "alice");
}

/// `sbatch` that queues the job and then fails (as one that timed out would): the attempt
/// fails to start, and the session cancels the held job it left before exiting.
#[test]
fn a_held_job_left_by_a_failed_sbatch_is_cancelled_before_the_runner_exits() {
    if !cluster() {
        return;
    }
    let env = Env::new();
    let flow = env.flow(
        "sbatchfails",
        r#"
[[steps]]
id = "work"
executor = "slurm"
run = "echo ran >> work.out"
"#,
    );
    let shim = env.path().join("shim");
    std::fs::create_dir_all(&shim).expect("mkdir");
    let real = String::from_utf8_lossy(
        &Command::new("sh").args(["-c", "command -v sbatch"]).output().expect("sh").stdout,
    )
    .trim()
    .to_string();
    let ids = env.path().join("queued.ids");
    std::fs::write(
        shim.join("sbatch"),
        format!(
            "#!/bin/sh\n{real} \"$@\" >> {}\necho 'sbatch: error: Socket timed out' >&2\nexit 1\n",
            ids.display()
        ),
    )
    .expect("shim");
    std::fs::set_permissions(shim.join("sbatch"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap_or_default());
    let out = env.command(&["run", &flow, "--run-id", "r"]).env("PATH", path).output().expect("run");
    let run = crate::util::Run::from_output(out);
    run.code(1).stderr_has("cannot submit to Slurm").stderr_has("this runner submitted but never recorded");
    let job = env.read("queued.ids").trim().to_string();
    assert!(!job.is_empty(), "the shim queued a job");
    assert_eq!(job_state(&job), "CANCELLED");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(env.count("work.out"), 0, "the held job never ran");
}

//! `schedule` in flows and `runner schedule`: validation, catch-up after downtime, skips
//! while a run is live, restarts, and the decisions in the projection. The scheduler's
//! clock is a file (`RUNNER_TEST_NOW=@clock`) that the tests move forward.

use std::process::Child;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(20);

/// Appends a line per run: how often the flow ran.
const TICKS: &str = r#"
schedule = "*/10 * * * *"

[[steps]]
id = "tick"
run = "echo tick >> ticks.out"
"#;

/// A run that holds its lock until the file `go` exists.
const HELD: &str = r#"
schedule = "* * * * *"

[[steps]]
id = "hold"
run = "echo start >> held.out; while [ ! -e go ]; do sleep 0.05; done"
"#;

/// Sets the scheduler's clock.
fn set_clock(env: &Env, at: &str) {
    env.write("clock", at);
}

/// Starts `runner schedule flows --utc` with the clock file, plus `extra` arguments.
fn scheduler(env: &Env, extra: &[&str]) -> Child {
    let mut args = vec!["schedule", "flows", "--utc"];
    args.extend_from_slice(extra);
    let clock = env.path().join("clock");
    env.command(&args)
        .env("RUNNER_TEST_NOW", format!("@{}", clock.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runner schedule starts")
}

/// The decisions the scheduler recorded, as `flow slot decision run_id` lines.
fn decisions(env: &Env) -> Vec<String> {
    env.read("runs/.schedule/decisions.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("decision line is JSON");
            format!(
                "{} {} {} {}",
                v["flow"].as_str().expect("flow"),
                v["slot"].as_str().expect("slot"),
                v["decision"].as_str().expect("decision"),
                v["run_id"].as_str().expect("run_id")
            )
        })
        .collect()
}

/// Waits until run `id` has ended and the scheduler has had time to see its process exit
/// (a slot that comes due before that is rightly skipped as still running).
fn wait_ended(env: &Env, id: &str) {
    wait_for(&format!("run {id} to end"), LIMIT, || {
        env.run_dir(id).join("journal.jsonl").exists()
            && env.events(id).iter().any(|e| e == "RunFinished")
            && !runner::store::is_locked(&env.run_dir(id), &runner::store::live_lock_holders())
    });
    std::thread::sleep(Duration::from_millis(600));
}

fn wait_decisions(env: &Env, n: usize) {
    wait_for(&format!("{n} decisions"), LIMIT, || decisions(env).len() >= n);
}

/// SIGTERMs the scheduler and expects it to stop its runs and exit 143.
fn stop(child: Child) -> Run {
    signal(child.id(), Signal::SIGTERM);
    let out = finish(child, LIMIT);
    out.code(143);
    out
}

/// The `schedule_decisions` rows of the projection, as `decisions` shows the log.
fn projected(env: &Env) -> Vec<String> {
    let runs = runner::store::RunsDir::new(env.runs_dir());
    let mut p = runner::projection::Projection::open(&runs).expect("projection");
    p.catch_up().expect("catch up");
    let mut stmt = p
        .connection()
        .prepare("SELECT flow, slot, decision, run_id FROM schedule_decisions ORDER BY seq")
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok(format!(
            "{} {} {} {}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?
        ))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

#[test]
fn invalid_schedules_are_exit_2_with_file_line_and_column() {
    let env = Env::new();
    let cases = [
        ("0 25 * * *", 15, "hour field `25`: 25 is out of range: 0 to 23"),
        ("0 2 * *", 13, "expected 5 fields"),
        ("0 0 2 * * *", 13, "seconds are not supported"),
        ("0 2 * * funday", 21, "day of week field `funday`"),
        ("*/0 * * * *", 15, "a step must be at least 1"),
        ("0 0 31 feb *", 17, "never fires"),
    ];
    for (expr, col, message) in cases {
        let flow = env.flow(
            "bad",
            &format!(
                "description = \"x\"\nschedule = \"{expr}\"\n{}",
                "[[steps]]\nid = \"a\"\nrun = \"true\"\n"
            ),
        );
        let out = env.run(&["validate", &flow]);
        out.code(2)
            .stderr_has(&format!("flows/bad.toml:2:{col}: invalid `schedule` = {expr:?}"))
            .stderr_has(message);
    }
    let flow = env.flow("bad", "schedule = 5\n[[steps]]\nid = \"a\"\nrun = \"true\"\n");
    env.run(&["validate", &flow]).code(2).stderr_has("flows/bad.toml:1:12:");
    // A scheduled flow still runs by hand; the schedule changes nothing there.
    let flow = env.flow("good", "schedule = \"@daily\"\n[[steps]]\nid = \"a\"\nrun = \"true\"\n");
    env.run(&["validate", &flow]).code(0);
    std::fs::remove_file(env.path().join("flows/bad.toml")).expect("rm");
    env.run(&["run", &flow]).code(0);

    // `runner schedule` with nothing valid to schedule refuses to start.
    let only_bad = Env::new();
    only_bad.flow("bad", "schedule = \"61 * * * *\"\n[[steps]]\nid = \"a\"\nrun = \"true\"\n");
    set_clock(&only_bad, "2026-12-04T02:00:30Z");
    let out = finish(scheduler(&only_bad, &[]), LIMIT);
    out.code(2).stderr_has("flows/bad.toml:1:13:").stderr_has("nothing to schedule");
    assert!(only_bad.run_ids().is_empty());
}

#[test]
fn catch_up_one_starts_exactly_one_run_after_downtime() {
    let env = Env::new();
    env.flow("ticks", TICKS);
    // A broken flow beside it is reported, and the valid one is scheduled anyway.
    env.flow("broken", "schedule = \"0 2 * *\"\n[[steps]]\nid = \"a\"\nrun = \"true\"\n");
    set_clock(&env, "2026-12-04T02:00:30Z");
    let s = scheduler(&env, &[]);
    wait_decisions(&env, 1);
    wait_for("the caught-up run", LIMIT, || env.count("ticks.out") == 1);
    let out = stop(s);
    out.stderr_has("flows/broken.toml:1:13:").stderr_has("expected 5 fields");

    // Down from 02:00:30 to 03:05: six slots passed (02:10 … 03:00).
    set_clock(&env, "2026-12-04T03:05:00Z");
    let s = scheduler(&env, &[]);
    wait_decisions(&env, 7);
    wait_for("the caught-up run", LIMIT, || env.count("ticks.out") == 2);
    wait_ended(&env, "ticks-20261204T0300");
    // Back on time: the 03:10 slot is started when it comes.
    set_clock(&env, "2026-12-04T03:10:00Z");
    wait_decisions(&env, 8);
    wait_for("the 03:10 run", LIMIT, || env.count("ticks.out") == 3);
    stop(s);

    let expected = [
        "ticks 2026-12-04T02:00:00.000Z caught-up ticks-20261204T0200",
        "ticks 2026-12-04T02:10:00.000Z missed ticks-20261204T0210",
        "ticks 2026-12-04T02:20:00.000Z missed ticks-20261204T0220",
        "ticks 2026-12-04T02:30:00.000Z missed ticks-20261204T0230",
        "ticks 2026-12-04T02:40:00.000Z missed ticks-20261204T0240",
        "ticks 2026-12-04T02:50:00.000Z missed ticks-20261204T0250",
        "ticks 2026-12-04T03:00:00.000Z caught-up ticks-20261204T0300",
        "ticks 2026-12-04T03:10:00.000Z started ticks-20261204T0310",
    ];
    assert_eq!(decisions(&env), expected);
    assert_eq!(env.run_ids(), ["ticks-20261204T0200", "ticks-20261204T0300", "ticks-20261204T0310"]);
    for id in env.run_ids() {
        env.run(&["status", "--run-id", &id]).code(0).stdout_has("succeeded");
    }
    assert_eq!(projected(&env), expected);
    env.assert_rebuild_matches_live();
}

#[test]
fn catch_up_none_starts_nothing_that_passed_while_down() {
    let env = Env::new();
    env.flow("ticks", TICKS);
    set_clock(&env, "2026-12-04T02:00:30Z");
    let s = scheduler(&env, &["--catch-up", "none"]);
    wait_decisions(&env, 1);
    stop(s);
    set_clock(&env, "2026-12-04T03:05:00Z");
    let s = scheduler(&env, &["--catch-up", "none"]);
    wait_decisions(&env, 7);
    // Give it a few ticks to do something wrong.
    std::thread::sleep(Duration::from_millis(600));
    assert!(env.run_ids().is_empty(), "runs started: {:?}", env.run_ids());
    set_clock(&env, "2026-12-04T03:10:00Z");
    wait_for("the 03:10 run", LIMIT, || env.count("ticks.out") == 1);
    stop(s);
    let d = decisions(&env);
    assert_eq!(d.len(), 8, "{d:#?}");
    assert!(d[..7].iter().all(|l| l.contains(" missed ")), "{d:#?}");
    assert_eq!(d[7], "ticks 2026-12-04T03:10:00.000Z started ticks-20261204T0310");
    assert_eq!(env.run_ids(), ["ticks-20261204T0310"]);
    env.assert_rebuild_matches_live();
}

#[test]
fn a_slot_whose_previous_run_is_still_live_is_skipped_and_recorded() {
    let env = Env::new();
    env.flow("held", HELD);
    set_clock(&env, "2026-12-04T02:00:30Z");
    let s = scheduler(&env, &[]);
    wait_for("the first run to start", LIMIT, || env.count("held.out") == 1);
    set_clock(&env, "2026-12-04T02:01:00Z");
    wait_decisions(&env, 2);
    assert_eq!(decisions(&env)[1], "held 2026-12-04T02:01:00.000Z skipped-still-running held-20261204T0201");
    env.write("go", "");
    wait_ended(&env, "held-20261204T0200");
    set_clock(&env, "2026-12-04T02:02:00Z");
    wait_decisions(&env, 3);
    wait_for("the 02:02 run", LIMIT, || env.count("held.out") == 2);
    stop(s);
    assert_eq!(
        decisions(&env),
        [
            "held 2026-12-04T02:00:00.000Z caught-up held-20261204T0200",
            "held 2026-12-04T02:01:00.000Z skipped-still-running held-20261204T0201",
            "held 2026-12-04T02:02:00.000Z started held-20261204T0202",
        ]
    );
    assert_eq!(env.run_ids(), ["held-20261204T0200", "held-20261204T0202"]);
    env.assert_rebuild_matches_live();
}

#[test]
fn sigterm_stops_the_live_runs_which_stay_resumable() {
    let env = Env::new();
    env.flow("held", HELD);
    set_clock(&env, "2026-12-04T02:00:30Z");
    let s = scheduler(&env, &[]);
    wait_for("the run to start", LIMIT, || env.count("held.out") == 1);
    stop(s);
    let id = "held-20261204T0200";
    assert!(env.events(id).iter().any(|e| e == "RunInterrupted"), "{:?}", env.events(id));
    env.write("go", "");
    env.run(&["resume", "--run-id", id]).code(0);
}

#[test]
fn a_restarted_scheduler_does_not_start_a_slot_twice() {
    let env = Env::new();
    env.flow("ticks", TICKS);
    set_clock(&env, "2026-12-04T02:00:30Z");
    let s = scheduler(&env, &[]);
    wait_for("the caught-up run", LIMIT, || env.count("ticks.out") == 1);
    // A second scheduler on the same runs directory is refused.
    let second = finish(scheduler(&env, &[]), LIMIT);
    second.code(4).stderr_has("another `runner schedule` is running");
    // A crash, not a clean stop.
    assert_eq!(kill_or_finished(s), None);
    for _ in 0..2 {
        let s = scheduler(&env, &[]);
        std::thread::sleep(Duration::from_millis(800));
        stop(s);
    }
    assert_eq!(decisions(&env).len(), 1, "{:#?}", decisions(&env));
    assert_eq!(env.count("ticks.out"), 1);
    assert_eq!(env.run_ids(), ["ticks-20261204T0200"]);

    // The projection is a fold of the log: delete it, and the rows come back.
    let live = env.projection_dump();
    assert!(live.contains("caught-up"), "{live}");
    std::fs::remove_file(env.runs_dir().join("projection.sqlite")).expect("rm");
    env.run(&["rebuild-projection"]).code(0);
    assert_eq!(env.projection_dump(), live);
    assert_eq!(projected(&env).len(), 1);
}

#[test]
fn a_run_left_by_a_killed_scheduler_still_blocks_its_next_slot() {
    let env = Env::new();
    env.flow("held", HELD);
    set_clock(&env, "2026-12-04T02:00:30Z");
    let s = scheduler(&env, &[]);
    wait_for("the first run to start", LIMIT, || env.count("held.out") == 1);
    // The scheduler dies; its run (in a process group of its own) goes on, holding its lock.
    assert_eq!(kill_or_finished(s), None);
    let id = "held-20261204T0200";
    assert!(runner::store::is_locked(&env.run_dir(id), &runner::store::live_lock_holders()));
    set_clock(&env, "2026-12-04T02:01:00Z");
    let s = scheduler(&env, &[]);
    wait_decisions(&env, 2);
    assert_eq!(decisions(&env)[1], "held 2026-12-04T02:01:00.000Z skipped-still-running held-20261204T0201");
    env.write("go", "");
    wait_ended(&env, id);
    set_clock(&env, "2026-12-04T02:02:00Z");
    wait_for("the 02:02 run", LIMIT, || env.count("held.out") == 2);
    stop(s);
    assert_eq!(env.run_ids(), [id, "held-20261204T0202"]);
    env.assert_rebuild_matches_live();
}

#[test]
fn a_second_signal_reaches_the_runs_at_once() {
    let env = Env::new();
    // The step ignores SIGTERM within a long grace: only a second signal ends it quickly.
    env.flow(
        "stubborn",
        "schedule = \"* * * * *\"\n\n[[steps]]\nid = \"hold\"\ngrace = \"30s\"\nrun = '''\ntrap '' TERM\necho start >> held.out\nwhile true; do sleep 0.05; done\n'''\n",
    );
    set_clock(&env, "2026-12-04T02:00:30Z");
    let s = scheduler(&env, &[]);
    wait_for("the run to start", LIMIT, || env.count("held.out") == 1);
    let started = std::time::Instant::now();
    signal(s.id(), Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    signal(s.id(), Signal::SIGTERM);
    finish(s, LIMIT).code(143);
    assert!(started.elapsed() < Duration::from_secs(10), "the second signal did not reach the run");
    // The run was stopped and recorded, so it stays resumable.
    let id = "stubborn-20261204T0200";
    assert!(env.events(id).iter().any(|e| e == "RunInterrupted"), "{:?}", env.events(id));
}

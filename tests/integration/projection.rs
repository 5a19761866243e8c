//! The projection: a fold of the journals that a rebuild reproduces row for row.

use crate::util::*;

const MIXED: &str = r#"
[params]
n = { default = "0" }
[[steps]]
id = "one"
run = "echo one"
[[steps]]
id = "flaky"
run = 'c=$(cat count 2>/dev/null || echo 0); c=$((c+1)); echo $c > count; [ $c -ge 2 ]'
retries = { attempts = 1, backoff = "10ms" }
[[steps]]
id = "side"
needs = []
run = "echo side"
[[steps]]
id = "last"
needs = ["flaky", "side"]
run = "test -f ok"
"#;

#[test]
fn rebuild_equals_live_row_for_row() {
    let env = Env::new();
    let flow = env.flow("mixed", MIXED);
    env.run(&["run", &flow, "--param", "n=1"]).code(1);
    let failed = env.run_ids()[0].clone();
    env.write("ok", "");
    env.run(&["resume", "--run-id", &failed]).code(0);
    env.run(&["run", &flow, "--run-id", "second", "--jobs", "1"]).code(0);
    std::fs::remove_file(env.path().join("ok")).expect("rm");
    env.run(&["run", &flow, "--run-id", "third"]).code(1);

    let live = env.projection_dump();
    assert!(live.contains("StepFailed") && live.contains("RunResumed"), "{live}");
    let rebuilt = env.run(&["rebuild-projection"]);
    rebuilt.code(0).stdout_has("3 runs");
    assert_eq!(env.projection_dump(), live, "rebuilt projection differs from the live one");

    // Deleting the projection is safe: the next reader rebuilds it from the journals.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(env.runs_dir().join(format!("projection.sqlite{suffix}")));
    }
    env.run(&["status"]).code(0).stdout_has("second");
    assert_eq!(env.projection_dump(), live);
}

#[test]
fn concurrent_runners_share_the_projection() {
    let env = Env::new();
    let flow = env.flow(
        "par",
        "[[steps]]\nid='a'\nrun='true'\n[[steps]]\nid='b'\nrun='true'\n[[steps]]\nid='c'\nrun='sleep 0.05'\n[[steps]]\nid='d'\nrun='true'\n",
    );
    let children: Vec<_> = (0..6).map(|i| env.spawn(&["run", &flow, "--run-id", &format!("r{i}")])).collect();
    for c in children {
        finish(c, std::time::Duration::from_secs(60)).code(0);
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).expect("json");
    assert_eq!(list.len(), 6);
    assert!(list.iter().all(|r| r["status"] == "succeeded" && r["steps_succeeded"] == 4), "{list:?}");
    let live = env.projection_dump();
    env.run(&["rebuild-projection"]).code(0).stdout_has("6 runs");
    assert_eq!(env.projection_dump(), live);
}

#[test]
fn status_catches_up_a_lagging_projection() {
    let env = Env::new();
    let flow = env.flow("mixed", MIXED);
    env.write("ok", "");
    let id = env.run(&["run", &flow]).code(0).run_id();
    let expected = env.projection_dump();
    // Make the projection lag: forget the last events, as if the runner died between
    // its journal write and its projection update.
    let conn = rusqlite::Connection::open(env.runs_dir().join("projection.sqlite")).expect("open");
    conn.execute("DELETE FROM events WHERE run_id = ?1 AND seq > 3", [&id]).expect("delete");
    conn.execute(
        "UPDATE runs SET last_seq = 3, journal_bytes = 10, status = 'running' WHERE run_id = ?1",
        [&id],
    )
    .expect("update");
    drop(conn);
    env.run(&["status"]).code(0).stdout_has("succeeded");
    assert_eq!(env.projection_dump(), expected);
}

#[test]
fn an_old_schema_is_rebuilt() {
    let env = Env::new();
    let flow = env.flow("mixed", MIXED);
    env.write("ok", "");
    env.run(&["run", &flow]).code(0);
    let expected = env.projection_dump();
    let conn = rusqlite::Connection::open(env.runs_dir().join("projection.sqlite")).expect("open");
    conn.execute_batch("DROP TABLE events; PRAGMA user_version = 0;").expect("downgrade");
    drop(conn);
    env.run(&["status"]).code(0);
    assert_eq!(env.projection_dump(), expected);
}

#[test]
fn readers_racing_a_live_run_never_leave_the_projection_behind() {
    let env = Env::new();
    let mut toml = String::new();
    for i in 0..150 {
        toml.push_str(&format!("[[steps]]\nid = 's{i}'\nrun = 'true'\n"));
    }
    let flow = env.flow("long", &toml);
    let child = env.spawn(&["run", &flow, "--run-id", "busy"]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for args in [&["status", "--run-id", "busy"][..], &["status"][..]] {
            let (env, stop) = (&env, &stop);
            scope.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = env.run(args);
                }
            });
        }
        finish(child, std::time::Duration::from_secs(60)).code(0);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    env.assert_rebuild_matches_live();
}

#[test]
fn one_damaged_or_misplaced_run_does_not_hide_the_others() {
    let env = Env::new();
    let flow = env.flow("ok", "[[steps]]\nid='a'\nrun='true'\n[[steps]]\nid='b'\nrun='true'\n");
    env.run(&["run", &flow, "--run-id", "good"]).code(0);
    env.run(&["run", &flow, "--run-id", "bad"]).code(0);
    let journal = env.run_dir("bad").join("journal.jsonl");
    let text = std::fs::read_to_string(&journal).expect("journal");
    std::fs::write(&journal, text.replacen("\"attempt\":1", "\"attempt\":2", 1)).expect("damage");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(env.runs_dir().join(format!("projection.sqlite{suffix}")));
    }
    env.run(&["status"]).code(0).stdout_has("good").stderr_has("run bad is left out");
    env.run(&["rebuild-projection"]).code(1).stdout_has("1 runs").stderr_has("run bad left out");

    // A copied run directory claims another run's id: it is refused, not merged.
    let env = Env::new();
    let flow = env.flow("ok", "[[steps]]\nid='a'\nrun='true'\n");
    env.run(&["run", &flow, "--run-id", "orig"]).code(0);
    let copy = env.run_dir("copy");
    std::fs::create_dir(&copy).expect("mkdir");
    for f in ["journal.jsonl", "flow.toml"] {
        std::fs::copy(env.run_dir("orig").join(f), copy.join(f)).expect("copy");
    }
    env.run(&["status"]).code(0).stdout_has("orig").stderr_has("holds run `orig`");
    env.run(&["verify", "--run-id", "copy"]).code(1).stderr_has("must keep the name of its run");
    env.run(&["rebuild-projection"]).code(1);
    env.run(&["status", "--run-id", "orig"]).code(0);
}

//! `runner gc` (retention), `runner completions` and `runner man`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::util::*;

const QUICK: &str = r#"
[[steps]]
id = "a"
run = "echo a > a.txt"
"#;

/// A step that says it started, then waits until the file `go` exists.
const HELD: &str = r#"
[[steps]]
id = "hold"
run = "touch started; while [ ! -e go ]; do sleep 0.05; done; echo done >> held.out"
"#;

const GATED: &str = r#"
[[steps]]
id = "build"
run = "echo built"

[[steps]]
id = "ship"
approval = true
run = "echo shipped >> ship.out"
"#;

/// Starts runs of `flow` with these ids, one after the other.
fn runs_of(env: &Env, flow: &str, ids: &[&str]) {
    for id in ids {
        env.run(&["run", flow, "--run-id", id]).code(0);
    }
}

/// The run ids `runner status --json` lists.
fn listed(env: &Env) -> Vec<String> {
    let out = env.run(&["status", "--json"]);
    out.code(0);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    let mut ids: Vec<String> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["run_id"].as_str().expect("run_id").to_string())
        .collect();
    ids.sort();
    ids
}

/// Rows that mention run `id`, in every table of the projection.
fn rows_of(env: &Env, id: &str) -> usize {
    let runs = runner::store::RunsDir::new(env.runs_dir());
    let p = runner::projection::Projection::open(&runs).expect("projection");
    runner::projection::CANONICAL_ORDER
        .iter()
        .map(|(table, _)| {
            p.connection()
                .query_row(&format!("SELECT count(*) FROM {table} WHERE run_id = ?1"), [id], |r| {
                    r.get::<_, i64>(0)
                })
                .expect("count") as usize
        })
        .sum()
}

/// Every file under `dir` with its size: what "changed nothing" compares.
fn tree(dir: &Path) -> BTreeMap<String, u64> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).expect("under dir").display().to_string();
            (rel, e.metadata().expect("metadata").len())
        })
        .collect()
}

/// Nothing half-deleted is left in the staging area.
#[track_caller]
fn no_trash(env: &Env) {
    let staging = env.runs_dir().join(".staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in .staging: {left:?}");
}

/// `RUNNER_TEST_NOW`: the time gc takes as now, `days` from now.
fn days_from_now(days: i64) -> String {
    let now = jiff::Timestamp::now();
    now.checked_add(jiff::SignedDuration::from_hours(24 * days)).expect("in range").to_string()
}

fn gc_at(env: &Env, days: i64, args: &[&str]) -> Run {
    let mut all = vec!["gc"];
    all.extend_from_slice(args);
    Run::from_output(
        env.command(&all).env("RUNNER_TEST_NOW", days_from_now(days)).output().expect("runner starts"),
    )
}

#[test]
fn keep_last_removes_the_older_runs_of_each_flow_with_their_rows() {
    let env = Env::new();
    let a = env.flow("a", QUICK);
    let b = env.flow("b", QUICK);
    runs_of(&env, &a, &["a1", "a2", "a3", "a4"]);
    runs_of(&env, &b, &["b1", "b2"]);
    assert!(rows_of(&env, "a1") > 0);

    let out = env.run(&["gc", "--keep-last", "2"]);
    out.code(0).stdout_has("a1").stdout_has("a2").stdout_has("removed 2 runs,").stdout_has("freed");
    assert!(!out.stdout.contains("a3") && !out.stdout.contains("b1"), "{}", out.stdout);
    assert_eq!(env.run_ids(), ["a3", "a4", "b1", "b2"]);
    // gc deleted the rows itself (before `status` would notice the runs are gone).
    assert_eq!((rows_of(&env, "a1"), rows_of(&env, "a2")), (0, 0));
    assert!(rows_of(&env, "a3") > 0);
    assert_eq!(listed(&env), ["a3", "a4", "b1", "b2"]);
    no_trash(&env);
    env.assert_rebuild_matches_live();

    // Only one flow, named by name or by its file.
    env.run(&["gc", "--keep-last", "1", "--flow", &b]).code(0).stdout_has("removed 1 run,");
    assert_eq!(env.run_ids(), ["a3", "a4", "b2"]);
    env.run(&["gc", "--keep-last", "0", "--flow", "a"]).code(0).stdout_has("removed 2 runs,");
    assert_eq!(env.run_ids(), ["b2"]);
    // Nothing left to do is not an error.
    env.run(&["gc", "--keep-last", "1"]).code(0).stdout_has("removed 0 runs, 0 B freed");
    assert_eq!(listed(&env), ["b2"]);
    env.assert_rebuild_matches_live();
}

#[test]
fn older_than_counts_from_the_last_event_and_combines_with_keep_last() {
    let env = Env::new();
    let a = env.flow("a", QUICK);
    runs_of(&env, &a, &["r1", "r2", "r3"]);

    gc_at(&env, 20, &["--older-than", "30d"]).code(0).stdout_has("removed 0 runs");
    assert_eq!(env.run_ids(), ["r1", "r2", "r3"]);
    // Both conditions must hold: old, and not among the newest two.
    gc_at(&env, 40, &["--older-than", "30d", "--keep-last", "2"]).code(0).stdout_has("removed 1 run,");
    assert_eq!(env.run_ids(), ["r2", "r3"]);
    // Durations as flows write them.
    gc_at(&env, 1, &["--older-than", "2 days"]).code(0).stdout_has("removed 0 runs");
    let out = gc_at(&env, 3, &["--older-than", "2 days", "--json"]);
    out.code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["count"], 2);
    assert_eq!(v["dry_run"], false);
    assert!(v["bytes"].as_u64().expect("bytes") > 0);
    let ids: Vec<_> = v["removed"].as_array().expect("removed").iter().map(|r| r["run_id"].clone()).collect();
    assert_eq!(ids, ["r2", "r3"]);
    assert_eq!(v["removed"][0]["flow"], "a");
    assert_eq!(v["removed"][0]["status"], "succeeded");
    assert!(env.run_ids().is_empty());
    assert!(listed(&env).is_empty());
    env.assert_rebuild_matches_live();
}

#[test]
fn dry_run_changes_nothing() {
    let env = Env::new();
    let a = env.flow("a", QUICK);
    runs_of(&env, &a, &["r1", "r2", "r3"]);
    env.run(&["status"]).code(0);
    let dump = env.projection_dump();
    let files = tree(&env.runs_dir());

    let out = env.run(&["gc", "--keep-last", "1", "--dry-run"]);
    out.code(0).stdout_has("r1").stdout_has("r2").stdout_has("would remove 2 runs");
    let out = env.run(&["gc", "--older-than", "0s", "--dry-run", "--json"]);
    out.code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!((v["dry_run"].clone(), v["count"].clone()), (serde_json::json!(true), serde_json::json!(3)));
    let sizes: u64 = ["r1", "r2", "r3"].iter().map(|id| tree(&env.run_dir(id)).values().sum::<u64>()).sum();
    assert_eq!(v["bytes"].as_u64(), Some(sizes), "the size is what the files hold");

    assert_eq!(tree(&env.runs_dir()), files);
    assert_eq!(env.projection_dump(), dump);
    assert_eq!(env.run_ids(), ["r1", "r2", "r3"]);
}

#[test]
fn a_live_run_is_never_deleted_and_completes() {
    let env = Env::new();
    let held = env.flow("held", HELD);
    env.write("go", "");
    runs_of(&env, &held, &["old1", "old2"]);
    std::fs::remove_file(env.path().join("go")).expect("rm go");
    std::fs::remove_file(env.path().join("started")).expect("rm started");

    let child = env.spawn(&["run", &held, "--run-id", "live"]);
    wait_for("the held step to start", Duration::from_secs(20), || env.path().join("started").exists());
    let dry = env.run(&["gc", "--keep-last", "0", "--dry-run"]);
    dry.code(0).stdout_has("would remove 2 runs").stderr_has("kept live (held): live");
    assert!(!dry.stdout.contains("live"), "{}", dry.stdout);
    let out = env.run(&["gc", "--keep-last", "0", "--older-than", "0s"]);
    out.code(0).stdout_has("removed 2 runs").stderr_has("kept live (held): live");
    assert_eq!(env.run_ids(), ["live"]);
    assert!(env.run_dir("live").join("flow.toml").exists());

    env.write("go", "");
    finish(child, Duration::from_secs(30)).code(0);
    assert_eq!(env.count("held.out"), 3);
    env.run(&["status", "--run-id", "live"]).code(0).stdout_has("succeeded");
    env.run(&["verify", "--run-id", "live"]).code(0);
    // Once it is over, it is a run like any other.
    env.run(&["gc", "--keep-last", "0"]).code(0).stdout_has("removed 1 run,");
    assert!(env.run_ids().is_empty());
    no_trash(&env);
    env.assert_rebuild_matches_live();
}

#[test]
fn a_run_paused_for_approval_is_kept_until_it_is_decided() {
    let env = Env::new();
    let gated = env.flow("gated", GATED);
    env.run(&["run", &gated, "--run-id", "p1"]).code(3);
    env.run(&["gc", "--keep-last", "0", "--dry-run"]).code(0).stdout_has("would remove 0 runs");

    let out = env.run(&["gc", "--keep-last", "0", "--older-than", "0s", "--json"]);
    out.code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["count"], 0);
    assert_eq!(v["kept"][0]["run_id"], "p1");
    assert_eq!(v["kept"][0]["reason"], "waits for approval");
    assert_eq!(env.run_ids(), ["p1"]);

    // Approved but not yet resumed: paused, still kept.
    env.run(&["approve", "--run-id", "p1", "--step", "ship"]).code(0);
    env.run(&["gc", "--keep-last", "0"]).code(0).stdout_has("removed 0 runs").stderr_has("kept p1");
    env.run(&["resume", "--run-id", "p1"]).code(0);
    assert_eq!(env.count("ship.out"), 1);
    env.run(&["gc", "--keep-last", "0"]).code(0).stdout_has("removed 1 run,");
    assert!(env.run_ids().is_empty());
    env.assert_rebuild_matches_live();
}

#[test]
fn what_an_interrupted_gc_left_behind_is_no_run_and_is_removed() {
    let env = Env::new();
    let a = env.flow("a", QUICK);
    runs_of(&env, &a, &["r1"]);
    // A run renamed away by a gc that died before deleting it.
    let trashed = env.runs_dir().join(".staging/.gc-r0.abcdefgh");
    std::fs::create_dir_all(trashed.join("steps/a/1")).expect("mkdir");
    std::fs::copy(env.run_dir("r1").join("journal.jsonl"), trashed.join("journal.jsonl")).expect("copy");
    std::fs::write(trashed.join("lock"), "1\n").expect("lock");
    assert_eq!(listed(&env), ["r1"]);

    env.run(&["gc", "--keep-last", "1"]).code(0).stdout_has("removed 0 runs");
    assert!(!trashed.exists(), "the leftover is removed");
    no_trash(&env);
    assert_eq!(env.run_ids(), ["r1"]);
}

#[test]
fn bad_gc_arguments_exit_2_and_change_nothing() {
    let env = Env::new();
    let a = env.flow("a", QUICK);
    runs_of(&env, &a, &["r1"]);
    env.run(&["gc"]).code(2).stderr_has("--keep-last");
    env.run(&["gc", "--dry-run"]).code(2);
    env.run(&["gc", "--older-than", "3 parsecs"]).code(2).stderr_has("--older-than");
    env.run(&["gc", "--older-than", "-2d"]).code(2);
    env.run(&["gc", "--keep-last", "-1"]).code(2);
    env.run(&["gc", "--keep-last", "many"]).code(2);
    assert_eq!(env.run_ids(), ["r1"]);
}

#[test]
fn completions_cover_the_commands() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = env.run(&["completions", shell]);
        out.code(0);
        for word in ["gc", "rebuild-projection", "approve", "keep-last", "runs-dir"] {
            assert!(out.stdout.contains(word), "{shell} completions lack {word}:\n{}", out.stdout);
        }
    }
    env.run(&["completions", "tcsh"]).code(2);
}

#[test]
fn man_pages_are_roff_for_runner_and_each_command() {
    let env = Env::new();
    let main = env.run(&["man"]);
    main.code(0);
    assert!(main.stdout.starts_with(".TH runner 1"), "{}", &main.stdout[..main.stdout.len().min(200)]);
    for part in
        [".SH SYNOPSIS", ".SH OPTIONS", "runner\\-gc(1)", "runner\\-rebuild\\-projection(1)", "runner man"]
    {
        assert!(main.stdout.contains(part), "the main page lacks {part}");
    }
    assert!(!main.stdout.contains("runner\\-help"), "clap's help command has no page");

    let gc = env.run(&["man", "gc"]);
    gc.code(0);
    assert!(gc.stdout.starts_with(".TH runner-gc 1"), "{}", &gc.stdout[..gc.stdout.len().min(200)]);
    assert!(gc.stdout.contains("\\-\\-keep\\-last") && gc.stdout.contains("\\-\\-older\\-than"));
    env.run(&["man", "nope"]).code(2).stderr_has("no command `nope`");

    env.run(&["man", "--out-dir", "man"]).code(0);
    let pages: Vec<String> = tree(&env.path().join("man")).into_keys().collect();
    for page in ["runner.1", "runner-gc.1", "runner-run.1", "runner-completions.1", "runner-man.1"] {
        assert!(pages.contains(&page.to_string()), "{page} not in {pages:?}");
    }
    assert!(!pages.contains(&"runner-help.1".to_string()));
    assert_eq!(env.read("man/runner-gc.1"), gc.stdout);
}

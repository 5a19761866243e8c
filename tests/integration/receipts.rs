//! Receipts and the cache: deterministic keys, one receipt per attempt, reuse only when
//! nothing that matters changed, and `explain` naming what did.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::*;

const PIPELINE: &str = r#"
[defaults]
cache = true

[env]
MODE = "full"

[[steps]]
id = "extract"
inputs = ["data/*.csv"]
outputs = ["out/extract.txt"]
run = "mkdir -p out; cat data/*.csv > out/extract.txt; echo rows=$(wc -l < out/extract.txt) >> $RUNNER_OUTPUT; echo x >> extract.out"

[[steps]]
id = "report"
outputs = ["out/report.txt"]
run = "echo \"rows $RUNNER_OUTPUT_EXTRACT_ROWS\" > out/report.txt; echo x >> report.out"

[[steps]]
id = "lookup"
needs = []
inputs = ["ref/codes.txt"]
run = "echo x >> lookup.out"

[[steps]]
id = "enrich"
needs = ["lookup"]
run = "echo x >> enrich.out"
"#;

fn setup(env: &Env) -> String {
    env.write("data/a.csv", "1\n2\n");
    env.write("data/b.csv", "3\n");
    env.write("ref/codes.txt", "x=1\n");
    env.flow("etl", PIPELINE)
}

/// Each step's receipt of a run: step -> the parsed `receipt.json` of its latest attempt.
fn receipts(env: &Env, id: &str) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for step in ["extract", "report", "lookup", "enrich"] {
        let dir = env.run_dir(id).join("steps").join(step);
        let mut attempts: Vec<_> =
            std::fs::read_dir(&dir).expect("attempts").flatten().map(|e| e.path()).collect();
        attempts.sort();
        let file = attempts.last().expect("an attempt").join("receipt.json");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).expect("receipt")).expect("json");
        out.insert(step.to_string(), v);
    }
    out
}

/// The steps whose commands ran in the last run: `<step>.out` grew.
fn ran(env: &Env, before: &BTreeMap<&str, usize>) -> Vec<&'static str> {
    ["extract", "report", "lookup", "enrich"]
        .into_iter()
        .filter(|s| env.count(&format!("{s}.out")) > before[s])
        .collect()
}

fn counts(env: &Env) -> BTreeMap<&'static str, usize> {
    ["extract", "report", "lookup", "enrich"]
        .into_iter()
        .map(|s| (s, env.count(&format!("{s}.out"))))
        .collect()
}

#[test]
fn receipt_keys_are_the_same_in_other_directories_and_at_other_times() {
    let (one, two) = (Env::new(), Env::new());
    let a = one.run(&["run", &setup(&one), "--run-id", "first"]).code(0).run_id();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = two.run(&["run", &setup(&two), "--run-id", "second"]).code(0).run_id();
    let (ra, rb) = (receipts(&one, &a), receipts(&two, &b));
    for step in ra.keys() {
        assert_eq!(ra[step]["key"], rb[step]["key"], "key of {step}");
        assert_eq!(ra[step]["result"], rb[step]["result"], "result of {step}");
        // The hashed part is the same byte for byte; what is outside it differs.
        assert_eq!(ra[step]["definition"].to_string(), rb[step]["definition"].to_string(), "{step}");
        assert_ne!(ra[step]["run_id"], rb[step]["run_id"]);
        assert_eq!(ra[step]["key"].as_str().map(str::len), Some(64));
        assert_eq!(ra[step]["status"], "succeeded");
        assert_eq!(ra[step]["exit_code"], 0);
        assert!(ra[step]["finished_at"].is_string() && ra[step]["duration_ms"].is_u64());
    }
    assert_ne!(ra[&"extract".to_string()]["key"], ra[&"report".to_string()]["key"]);
    let inputs = &ra[&"extract".to_string()]["definition"]["inputs"];
    assert_eq!(inputs.as_array().map(Vec::len), Some(2), "{inputs}");
    assert_eq!(inputs[0]["path"], "data/a.csv");
    assert_eq!(inputs[0]["blake3"], blake3::hash(b"1\n2\n").to_hex().to_string());
    assert_eq!(
        ra[&"report".to_string()]["definition"]["upstream"]["extract"],
        ra[&"extract".to_string()]["result"]
    );
}

#[test]
fn the_cache_reuses_receipts_and_an_edited_input_reruns_exactly_its_dependents() {
    let env = Env::new();
    let flow = setup(&env);
    let mut before = counts(&env);
    env.run(&["run", &flow]).code(0);
    assert_eq!(ran(&env, &before), ["extract", "report", "lookup", "enrich"]);

    before = counts(&env);
    let second = env.run(&["run", &flow]).code(0).stderr_has("extract: cached").run_id();
    assert!(ran(&env, &before).is_empty(), "everything is cached the second time");
    // Outputs come back from the receipt: the cached `report` still saw the row count.
    let cached = env
        .journal(&second)
        .into_iter()
        .find(|e| e["type"] == "StepCached" && e["data"]["step"] == "extract");
    assert_eq!(cached.expect("extract cached")["data"]["outputs"]["rows"], "3");

    env.write("data/b.csv", "3\n4\n");
    before = counts(&env);
    let third = env.run(&["run", &flow]).code(0).run_id();
    assert_eq!(ran(&env, &before), ["extract", "report"], "only the steps downstream of the edit run");
    assert_eq!(env.read("out/report.txt"), "rows 4\n");
    let why = env.run(&["explain", "--run-id", &third, "--step", "extract"]);
    why.code(0).stdout_has("input file data/b.csv changed (blake3 ");
    env.run(&["explain", "--run-id", &third, "--step", "report"])
        .code(0)
        .stdout_has("upstream step extract changed (its result differs)");
    env.run(&["explain", "--run-id", &third, "--step", "lookup"])
        .code(0)
        .stdout_has("was taken from the cache");
    let json = env.run(&["--json", "explain", "--run-id", &third, "--step", "extract"]);
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("json");
    assert_eq!(v["verdict"], "changed");
    assert_eq!(v["changes"][0]["component"], "input");
    assert_eq!(v["changes"][0]["name"], "data/b.csv");

    // An edited environment is a change too, named by the variable.
    env.write("flows/etl.toml", &PIPELINE.replace("MODE = \"full\"", "MODE = \"quick\""));
    before = counts(&env);
    let fourth = env.run(&["run", &flow]).code(0).run_id();
    assert_eq!(ran(&env, &before).len(), 4, "MODE reaches every step");
    env.run(&["explain", "--run-id", &fourth, "--step", "lookup"]).code(0).stdout_has("env var MODE changed");
    env.assert_rebuild_matches_live();
}

#[test]
fn a_deleted_or_edited_output_forces_a_rerun_and_no_cache_forces_all() {
    let env = Env::new();
    let flow = setup(&env);
    env.run(&["run", &flow]).code(0);
    std::fs::remove_file(env.path().join("out/report.txt")).expect("rm");
    let mut before = counts(&env);
    let id = env.run(&["run", &flow]).code(0).run_id();
    assert_eq!(ran(&env, &before), ["report"]);
    env.run(&["explain", "--run-id", &id, "--step", "report"])
        .code(0)
        .stdout_has("has the same key as")
        .stdout_has("out/report.txt is gone");
    env.write("out/extract.txt", "tampered\n");
    before = counts(&env);
    env.run(&["run", &flow]).code(0);
    // An edited output is not trusted: `extract` runs again. It makes the same file as
    // before, so its result is the same and `report` stays cached.
    assert_eq!(ran(&env, &before), ["extract"]);
    assert_eq!(env.read("out/extract.txt"), "1\n2\n3\n");
    before = counts(&env);
    let forced = env.run(&["run", &flow, "--no-cache"]).code(0).run_id();
    assert_eq!(ran(&env, &before).len(), 4);
    env.run(&["explain", "--run-id", &forced, "--step", "enrich"]).code(0).stdout_has("--no-cache");
}

#[test]
fn missing_inputs_and_outputs_fail_the_step_and_name_the_file() {
    let env = Env::new();
    let flow = env.flow(
        "bad",
        "[[steps]]\nid = 'needs-file'\ninputs = ['config/settings.ini']\nrun = 'echo ran >> ran.out'\n",
    );
    env.run(&["run", &flow, "--run-id", "b"])
        .code(1)
        .stderr_has("input `config/settings.ini` does not exist");
    assert_eq!(env.count("ran.out"), 0, "a step whose input is missing never starts");
    let flow = env.flow("promise", "[[steps]]\nid = 'promises'\noutputs = ['out/never.txt']\nrun = 'true'\n");
    env.run(&["run", &flow, "--run-id", "p"])
        .code(1)
        .stderr_has("declared output `out/never.txt` was not produced");
    let reason = |id: &str| {
        let failed = env.journal(id).into_iter().find(|e| e["type"] == "StepFailed").expect("a failure");
        failed["data"]["reason"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!((reason("b"), reason("p")), ("inputs".to_string(), "missing_output".to_string()));
    for bad in ["/etc/passwd", "../up.txt", "data/[x"] {
        let flow = env.flow("pat", &format!("[[steps]]\nid='a'\nrun='x'\ninputs=['{bad}']\n"));
        env.run(&["validate", &flow]).code(2).stderr_has("invalid path pattern in `inputs`");
    }
}

/// Every attempt the journal says finished has exactly one receipt; an attempt it calls
/// interrupted has none (a receipt written just before the runner died is set aside).
fn assert_one_receipt_per_finished_attempt(env: &Env, id: &str) {
    let journal = env.journal(id);
    for e in &journal {
        let d = &e["data"];
        let ty = e["type"].as_str().unwrap_or_default();
        if !matches!(ty, "StepSucceeded" | "StepFailed" | "StepCached" | "StepInterrupted") {
            continue;
        }
        let (step, visit, attempt) =
            (d["step"].as_str().unwrap_or_default(), d["visit"].as_u64(), d["attempt"].as_u64());
        let dir = runner::store::attempt_dir(
            &env.run_dir(id),
            step,
            visit.unwrap_or(1) as u32,
            attempt.unwrap_or(1) as u32,
        );
        let has = dir.join("receipt.json").is_file();
        let finished = ty != "StepInterrupted" && d["reason"] != "spawn";
        assert_eq!(has, finished, "{ty} of {step} attempt {attempt:?}: receipt present = {has}");
        if finished {
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("receipt.json")).expect("read"))
                    .expect("json");
            assert_eq!(r["key"], d["receipt"]["key"], "the journal names the receipt's key");
        }
    }
}

#[test]
fn one_receipt_per_attempt_across_crashes_at_every_receipt_point() {
    for point in ["receipt-written", "receipt-renamed", "before-commit", "after-commit"] {
        let env = Env::new();
        let flow = setup(&env);
        let out = env
            .command(&["run", &flow, "--run-id", "k", "--jobs", "1"])
            .env(runner::faults::ENV, format!("{point}:2"))
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), None, "{point}: the runner must have been killed");
        let receipts_before: Vec<(std::path::PathBuf, std::time::SystemTime)> =
            walk_receipts(&env.run_dir("k"));
        env.run(&["resume", "--run-id", "k"]).code(0);
        assert_one_receipt_per_finished_attempt(&env, "k");
        // A receipt the journal acknowledged is never written again.
        for (path, mtime) in receipts_before {
            if path.is_file() {
                assert_eq!(
                    std::fs::metadata(&path).and_then(|m| m.modified()).ok(),
                    Some(mtime),
                    "{point}: {}",
                    path.display()
                );
            }
        }
        env.run(&["verify", "--run-id", "k"]).code(0);
        env.assert_rebuild_matches_live();
    }
}

fn walk_receipts(dir: &Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name() == "receipt.json")
        .map(|e| {
            (e.path().to_path_buf(), std::fs::metadata(e.path()).and_then(|m| m.modified()).expect("mtime"))
        })
        .collect()
}

#[test]
fn a_stricter_gate_is_a_different_key_so_a_cached_result_never_skips_it() {
    let env = Env::new();
    let flow = env.flow(
        "gated",
        r#"
[[steps]]
id = "test"
cache = true
run = "echo coverage=85 >> $RUNNER_OUTPUT; echo x >> test.out"
gate = { pass = "steps.test.outputs.coverage >= 80" }

[profiles.strict]
test = { pass = "steps.test.outputs.coverage >= 90" }
"#,
    );
    env.run(&["run", &flow]).code(0);
    env.run(&["run", &flow]).code(0).stderr_has("test: cached");
    let strict = env.run(&["run", &flow, "--profile", "strict"]);
    strict.code(1).stderr_has("gate blocked the step");
    assert_eq!(env.count("test.out"), 2, "the strict run ran the step instead of reusing the lax result");
    env.run(&["explain", "--run-id", &strict.run_id(), "--step", "test"]).code(0).stdout_has("gate changed");
}

#[test]
fn a_cached_router_routes_and_a_cached_step_hands_on_its_outputs_and_handoff() {
    let env = Env::new();
    let flow = env.flow(
        "routed",
        r#"
[defaults]
cache = true

[[steps]]
id = "triage"
run = "echo kind=a >> $RUNNER_OUTPUT; echo '# notes' > $RUNNER_HANDOFF"
next = [{ if = "steps.triage.outputs.kind == 'a'", goto = "a" }, { goto = "b" }]

[[steps]]
id = "a"
needs = ["triage"]
cache = false
run = 'echo "kind=[$RUNNER_OUTPUT_TRIAGE_KIND] $(cat $RUNNER_HANDOFF_IN)" >> a.out'

[[steps]]
id = "b"
needs = ["triage"]
run = "echo b >> b.out"
"#,
    );
    env.run(&["run", &flow]).code(0);
    let second = env.run(&["run", &flow]).code(0).stderr_has("triage: cached").run_id();
    assert_eq!(
        env.read("a.out"),
        "kind=[a] # notes\nkind=[a] # notes\n",
        "the cached step's values and handoff reach `a`"
    );
    assert_eq!(env.count("b.out"), 0);
    let routed = env.journal(&second).into_iter().filter(|e| e["type"] == "RoutingDecided").count();
    assert_eq!(routed, 1, "the cached router decided once");
    env.assert_rebuild_matches_live();
}

#[test]
fn a_loop_with_cached_steps_still_progresses_visit_by_visit() {
    let env = Env::new();
    let flow = env.flow(
        "loop",
        r#"
[defaults]
cache = true

[[steps]]
id = "dev"
max_visits = 3
run = "echo rev=$RUNNER_VISIT >> $RUNNER_OUTPUT; echo x >> dev.out"

[[steps]]
id = "rev"
max_visits = 3
run = "if [ $RUNNER_OUTPUT_DEV_REV -ge 2 ]; then echo verdict=ok; else echo verdict=changes; fi >> $RUNNER_OUTPUT"
next = [{ if = "steps.rev.outputs.verdict == 'changes'", goto = "dev" }, { goto = "pub" }]

[[steps]]
id = "pub"
needs = ["rev"]
run = "echo published >> pub.out"
"#,
    );
    env.run(&["run", &flow]).code(0);
    assert_eq!(
        (env.count("dev.out"), env.count("pub.out")),
        (2, 1),
        "visit 2 of dev ran, not a copy of visit 1"
    );
    // The whole loop again, from the cache: the same two visits, nothing runs.
    env.run(&["run", &flow]).code(0).stderr_has("dev#2: cached").stderr_has("pub: cached");
    assert_eq!((env.count("dev.out"), env.count("pub.out")), (2, 1));
}

#[test]
fn verify_checks_receipts_against_the_journal() {
    let env = Env::new();
    let flow = setup(&env);
    env.run(&["run", &flow, "--run-id", "v"]).code(0);
    env.run(&["verify", "--run-id", "v"]).code(0).stdout_has("4 receipt(s) checked against the journal");
    let path = env.run_dir("v").join("steps/report/1/receipt.json");
    let text = std::fs::read_to_string(&path).expect("receipt");
    let key = serde_json::from_str::<serde_json::Value>(&text).expect("json")["key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    std::fs::write(&path, text.replace(&key, &"0".repeat(64))).expect("tamper");
    env.run(&["verify", "--run-id", "v"]).code(0).stderr_has("its key or result differs from the journal's");
    std::fs::remove_file(env.run_dir("v").join("steps/lookup/1/receipt.json")).expect("rm");
    env.run(&["verify", "--run-id", "v"]).code(0).stderr_has("lookup/1/receipt.json");
    // The cache does not trust the tampered receipt: `report` runs again.
    let before = counts(&env);
    env.run(&["run", &flow]).code(0);
    assert_eq!(ran(&env, &before), ["report", "lookup"]);
}

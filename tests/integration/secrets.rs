//! Secrets: given to the steps that declare them, never stored, masked wherever a step's
//! bytes are written.

use std::path::Path;

use crate::util::*;

const VALUE: &str = "tok-9f8e7d6c5b4a";

const FLOW: &str = r#"
secrets = ["API_TOKEN"]

[[steps]]
id = "leaky"
run = '''
echo "plain: $API_TOKEN"
echo "to stderr: $API_TOKEN" >&2
# split across two writes, with a pause between them
printf 'split: %s' "$(printf %s "$API_TOKEN" | cut -c1-7)"; sleep 0.2; printf '%s\n' "$(printf %s "$API_TOKEN" | cut -c8-)"
echo "token=$API_TOKEN" >> "$RUNNER_OUTPUT"
echo "handoff carries $API_TOKEN" > "$RUNNER_HANDOFF"
printf '{"t":"%s"}' "$API_TOKEN" > "$RUNNER_HANDOFF_META"
echo "len=${#API_TOKEN}" >> "$RUNNER_OUTPUT"
'''

[[steps]]
id = "fails"
secrets = ["DB_PASSWORD"]
run = 'echo "db $DB_PASSWORD and $API_TOKEN"; test -e ok'

[[steps]]
id = "undeclared"
needs = []
run = 'echo "db=[${DB_PASSWORD:-}]" > seen.txt'
"#;

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            std::fs::read(e.path()).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

#[test]
fn secret_values_reach_the_steps_that_declare_them_and_nothing_on_disk() {
    let env = Env::new();
    let flow = env.flow("s", FLOW);
    env.write("secrets.env", "DB_PASSWORD=pw-1a2b3c4d5e\n");
    let first = env
        .command(&["run", &flow, "--run-id", "s", "--env-file", "secrets.env"])
        .env("API_TOKEN", VALUE)
        .output()
        .expect("runs");
    assert_eq!(first.status.code(), Some(1), "{}", String::from_utf8_lossy(&first.stderr));
    let console = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(console.contains("db *** and ***"), "the failure's log tail is masked: {console}");
    // The step that did not declare DB_PASSWORD does not see it, even from the environment.
    let mut c = env.command(&["resume", "--run-id", "s", "--env-file", "secrets.env"]);
    env.write("ok", "");
    let resumed = c.env("API_TOKEN", VALUE).env("DB_PASSWORD", "pw-1a2b3c4d5e").output().expect("runs");
    assert_eq!(resumed.status.code(), Some(0), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(env.read("seen.txt"), "db=[]\n");
    let log = std::fs::read_to_string(env.run_dir("s").join("steps/leaky/1/stdout.log")).expect("log");
    assert!(log.contains("plain: ***") && log.contains("split: ***"), "{log}");
    let outputs = env
        .journal("s")
        .into_iter()
        .find(|e| e["type"] == "StepSucceeded" && e["data"]["step"] == "leaky")
        .expect("success");
    assert_eq!(outputs["data"]["outputs"]["token"], "***");
    assert_eq!(outputs["data"]["outputs"]["len"], "16", "the step itself saw the whole value");
    // Nowhere under the run directory (journal, snapshot, logs, outputs, handoffs,
    // receipts, the flow copy) nor in the projection.
    for value in [VALUE, "pw-1a2b3c4d5e"] {
        assert_eq!(files_containing(&env.runs_dir(), value), Vec::<String>::new(), "{value} leaked");
    }
    env.run(&["rebuild-projection"]).code(0);
    assert_eq!(files_containing(&env.runs_dir(), VALUE), Vec::<String>::new());
    // Receipts hash names, not values.
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.run_dir("s").join("steps/fails/2/receipt.json")).expect("receipt"),
    )
    .expect("json");
    assert_eq!(r["definition"]["secrets"], serde_json::json!(["API_TOKEN", "DB_PASSWORD"]));
}

#[test]
fn a_missing_secret_is_exit_2_before_anything_starts() {
    let env = Env::new();
    let flow = env.flow("s", FLOW);
    let out = env
        .command(&["run", &flow, "--run-id", "m"])
        .env_remove("API_TOKEN")
        .env_remove("DB_PASSWORD")
        .output();
    let out = out.expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secrets `API_TOKEN`, `DB_PASSWORD` not set"), "{stderr}");
    assert!(!env.runs_dir().join("m").exists(), "nothing was created");
    // A resume needs the values again: without them it records nothing.
    let ok = env
        .command(&["run", &flow, "--run-id", "r"])
        .env("API_TOKEN", VALUE)
        .env("DB_PASSWORD", "x")
        .output();
    assert_eq!(ok.expect("runs").status.code(), Some(1));
    // Even a torn tail is left as it is: the repair would be recorded by a resume that
    // then could not go on.
    let journal = env.run_dir("r").join("journal.jsonl");
    let mut before = std::fs::read(&journal).expect("journal");
    before.extend_from_slice(b"{\"seq\":99,\"ts\"");
    std::fs::write(&journal, &before).expect("tear");
    env.run(&["resume", "--run-id", "r"]).code(2).stderr_has("not set");
    assert_eq!(std::fs::read(&journal).expect("journal"), before);
    assert!(!env.run_dir("r").join("journal.jsonl.broken").exists());
    env.write("bad.env", "NOT A LINE\n");
    env.run(&["run", &flow, "--env-file", "bad.env"]).code(2).stderr_has("bad.env");
    let bad = env.flow("bad", "secrets = ['RUNNER_X']\n[[steps]]\nid='a'\nrun='x'\n");
    env.run(&["validate", &bad]).code(2).stderr_has("set by the runner");
    let both = env.flow("both", "secrets = ['K']\n[env]\nK = 'v'\n[[steps]]\nid='a'\nrun='x'\n");
    env.run(&["validate", &both]).code(2).stderr_has("is both a secret and in `env`");
}

#[test]
fn files_of_failed_steps_escaped_json_and_called_flows_leak_nothing() {
    let env = Env::new();
    env.flow("other", "secrets = ['OTHER']\n[[steps]]\nid = 'use'\nrun = 'echo \"callee $OTHER\"'\n");
    let flow = env.flow(
        "f",
        r#"
secrets = ["T"]

[[steps]]
id = "first"
run = '''
echo "first sees [${OTHER:-}]"
printf '{"esc": "%s"}' "$(printf %s "$T" | sed 's/"/\\"/g')" > "$RUNNER_HANDOFF_META"
'''

[[steps]]
id = "c"
call = "other"

[[steps]]
id = "fails"
run = '''
echo "out=$T" >> "$RUNNER_OUTPUT"
echo "handoff $T" > "$RUNNER_HANDOFF"
exit 1
'''
"#,
    );
    let value = "pa\"ss-word-77";
    // A secret of a called flow is needed before anything starts.
    let missing = env.command(&["run", &flow, "--run-id", "m"]).env("T", value).env_remove("OTHER").output();
    assert_eq!(missing.expect("runs").status.code(), Some(2));
    assert!(!env.runs_dir().join("m").exists());
    let out = env
        .command(&["run", &flow, "--run-id", "x"])
        .env("T", value)
        .env("OTHER", "callee-secret-55")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        env.read("runs/x/steps/first/1/stdout.log").contains("first sees []"),
        "undeclared: not inherited"
    );
    let ended: Vec<String> = env
        .events("x")
        .into_iter()
        .filter(|e| e.starts_with("StepSucceeded") || e.starts_with("StepFailed"))
        .collect();
    assert_eq!(ended, ["StepSucceeded:first", "StepSucceeded:c/use", "StepFailed:fails"], "every step ran");
    assert_eq!(
        env.read("runs/x/steps/fails/1/outputs.env"),
        "out=***\n",
        "a failed step's files are masked too"
    );
    assert_eq!(env.read("runs/x/steps/first/1/handoff.json"), r#"{"esc":"***"}"#);
    for v in [value, "callee-secret-55", "pa\\\"ss-word-77"] {
        assert_eq!(files_containing(&env.runs_dir(), v), Vec::<String>::new(), "{v} leaked");
    }
    // A malformed env file is named, and its lines are not echoed.
    env.write("bad.env", "T=hunter2 with \"quote\n");
    let bad = env.run(&["run", &flow, "--env-file", "bad.env"]);
    bad.code(2).stderr_has("bad.env");
    assert!(!bad.stderr.contains("hunter2"), "{}", bad.stderr);
}

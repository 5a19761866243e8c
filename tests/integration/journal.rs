//! The journal as the truth: torn tails, damaged lines, snapshots that may vanish.

use std::io::Write;

use crate::util::*;

/// A flow whose step `gate` fails until the file `fixed` exists.
const GATED: &str = r#"
[[steps]]
id = "first"
run = "echo first >> first.out"
[[steps]]
id = "gate"
run = "echo gate >> gate.out; test -f fixed"
[[steps]]
id = "last"
run = "echo last >> last.out"
"#;

fn failed_run(env: &Env) -> String {
    let flow = env.flow("gated", GATED);
    let out = env.run(&["run", &flow]);
    out.code(1).stderr_has("run `runner resume --run-id");
    out.run_id()
}

#[test]
fn fail_fix_resume_runs_only_what_is_left() {
    let env = Env::new();
    let id = failed_run(&env);
    assert_eq!((env.count("first.out"), env.count("gate.out"), env.count("last.out")), (1, 1, 0));
    env.run(&["status", "--run-id", &id]).code(0).stdout_has("failed").stdout_has("exited with code 1");
    env.write("fixed", "");
    env.run(&["resume", "--run-id", &id]).code(0);
    assert_eq!((env.count("first.out"), env.count("gate.out"), env.count("last.out")), (1, 2, 1));
    let events = env.events(&id);
    assert_eq!(events.iter().filter(|e| *e == "StepStarted:gate").count(), 2);
    assert!(events.contains(&"RunResumed".to_string()));
    let attempts: Vec<u64> = env
        .journal(&id)
        .iter()
        .filter(|e| e["type"] == "StepStarted" && e["data"]["step"] == "gate")
        .map(|e| e["data"]["attempt"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(attempts, vec![1, 2], "a resumed step gets a new attempt number");
    assert!(env.run_dir(&id).join("steps/gate/1/stdout.log").exists());
    assert!(env.run_dir(&id).join("steps/gate/2/stdout.log").exists());
}

#[test]
fn a_torn_tail_is_cut_kept_aside_and_the_run_continues() {
    let env = Env::new();
    let id = failed_run(&env);
    let journal = env.run_dir(&id).join("journal.jsonl");
    let intact = std::fs::read(&journal).expect("journal");
    let torn = b"{\"seq\":99,\"ts\":\"2026-01-01T00:00:00.000Z\",\"type\":\"StepSta";
    std::fs::OpenOptions::new().append(true).open(&journal).expect("open").write_all(torn).expect("append");

    env.run(&["verify", "--run-id", &id]).code(0).stderr_has("not a complete line");
    env.write("fixed", "");
    env.run(&["resume", "--run-id", &id]).code(0).stderr_has("partly written line");
    let kept = std::fs::read(env.run_dir(&id).join("journal.jsonl.broken")).expect("kept aside");
    assert_eq!(kept, torn);
    let after = std::fs::read(&journal).expect("journal");
    assert!(after.starts_with(&intact), "intact events must be kept byte for byte");
    assert!(env.events(&id).contains(&"JournalRepaired".to_string()));
    env.run(&["verify", "--run-id", &id]).code(0);
    assert_eq!(env.count("first.out"), 1);
}

#[test]
fn a_damaged_middle_line_is_refused_and_left_untouched() {
    let env = Env::new();
    let id = failed_run(&env);
    let journal = env.run_dir(&id).join("journal.jsonl");
    let text = std::fs::read_to_string(&journal).expect("journal");
    // Valid JSON with one changed value: only the checksum can tell.
    let line = text.lines().position(|l| l.contains("\"type\":\"StepSucceeded\"")).expect("a success line");
    let damaged: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| if i == line { l.replace("\"attempt\":1", "\"attempt\":7") } else { l.to_string() })
        .collect();
    let damaged = damaged.join("\n") + "\n";
    assert_ne!(damaged, text);
    serde_json::from_str::<serde_json::Value>(damaged.lines().nth(line).expect("line")).expect("still JSON");
    std::fs::write(&journal, &damaged).expect("write");

    let n = line + 1;
    // A closed stdout does not turn the verdict into success: bash's pipefail shows it.
    let piped = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; '{RUNNER}' verify --run-id {id} | head -c0"))
        .current_dir(env.path())
        .output()
        .expect("bash");
    assert_eq!(piped.status.code(), Some(1));
    let verify = env.run(&["verify", "--run-id", &id]);
    verify.code(1).stderr_has(&format!("journal.jsonl:{n}: the journal is damaged: checksum mismatch"));
    env.write("fixed", "");
    env.run(&["resume", "--run-id", &id]).code(2).stderr_has(&format!("journal.jsonl:{n}:"));
    assert_eq!(
        std::fs::read_to_string(&journal).expect("journal"),
        damaged,
        "the damaged journal was changed"
    );
    assert_eq!(env.count("last.out"), 0, "nothing may run past a damaged journal");
}

#[test]
fn deleting_the_snapshot_changes_nothing() {
    let env = Env::new();
    let id = failed_run(&env);
    let dir = env.run_dir(&id);
    let before = env.run(&["status", "--json", "--run-id", &id]).code(0).stdout.clone();
    std::fs::remove_file(dir.join("state.json")).expect("snapshot existed");
    assert_eq!(env.run(&["status", "--json", "--run-id", &id]).stdout, before);
    env.write("fixed", "");
    env.run(&["resume", "--run-id", &id]).code(0);
    assert_eq!((env.count("first.out"), env.count("gate.out"), env.count("last.out")), (1, 2, 1));
    // A damaged snapshot is ignored, not trusted: the journal is the truth.
    let snap = std::fs::read_to_string(dir.join("state.json")).expect("new snapshot");
    std::fs::write(dir.join("state.json"), snap.replace("\"succeeded\"", "\"failed\"")).expect("write");
    env.run(&["verify", "--run-id", &id]).code(0).stderr_has("damaged");
    env.run(&["resume", "--run-id", &id]).code(0).stderr_has("already succeeded");
    std::fs::write(dir.join("state.json"), "{not json").expect("write");
    env.run(&["verify", "--run-id", &id]).code(0).stderr_has("resume ignores it");
    env.run(&["resume", "--run-id", &id]).code(0).stderr_has("already succeeded");
}

#[test]
fn an_edited_flow_copy_is_refused_unless_the_change_is_accepted() {
    let env = Env::new();
    let id = failed_run(&env);
    let copy = env.run_dir(&id).join("flow.toml");
    let text = std::fs::read_to_string(&copy).expect("copy");
    std::fs::write(&copy, text.replace("test -f fixed", "true")).expect("edit");
    // A torn tail too: the refusal must not repair it (or anything else) either.
    let journal = env.run_dir(&id).join("journal.jsonl");
    let mut torn = std::fs::read(&journal).expect("journal");
    torn.extend_from_slice(b"{\"seq\":99,\"ts\":\"2");
    std::fs::write(&journal, &torn).expect("tear");
    env.run(&["resume", "--run-id", &id])
        .code(2)
        .stderr_has("no longer matches the flow the run started with");
    assert_eq!(std::fs::read(&journal).expect("journal"), torn, "a refused resume changed the journal");
    env.run(&["verify", "--run-id", &id]).code(1).stderr_has("edited since the run started");
    // Editing the original flow does not affect the run: resume uses its own copy.
    std::fs::write(&copy, &text).expect("restore");
    env.flow("gated", &GATED.replace("test -f fixed", "true"));
    env.run(&["resume", "--run-id", &id]).code(1);

    // Changed steps are refused even when a change is accepted.
    std::fs::write(&copy, text.replace("id = \"last\"", "id = \"final\"")).expect("edit");
    env.run(&["resume", "--run-id", &id, "--accept-flow-change"])
        .code(2)
        .stderr_has("not the steps the run started with");
    // A changed command is taken when accepted, and the journal says so.
    std::fs::write(&copy, text.replace("test -f fixed", "true")).expect("edit");
    env.run(&["resume", "--run-id", &id, "--accept-flow-change"])
        .code(0)
        .stderr_has("continuing with the edited flow");
    let repairs = env.journal(&id).into_iter().filter(|e| e["type"] == "JournalRepaired").count();
    assert_eq!(repairs, 1, "the torn tail is repaired by the resume that proceeds");
    let changes: Vec<_> = env.journal(&id).into_iter().filter(|e| e["type"] == "FlowChanged").collect();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["data"]["previous_hash"].as_str().map(str::len), Some(64));
    env.run(&["verify", "--run-id", &id]).code(0);
    env.assert_rebuild_matches_live();
}

#[test]
fn an_already_succeeded_run_resumes_to_nothing_even_with_an_edited_flow_copy() {
    let env = Env::new();
    let flow = env.flow("ok", "[[steps]]\nid='a'\nrun='echo a >> a.out'\n");
    env.run(&["run", &flow, "--run-id", "done"]).code(0);
    std::fs::write(env.run_dir("done").join("flow.toml"), "edited").expect("edit");
    env.run(&["resume", "--run-id", "done"]).code(0).stderr_has("already succeeded");
    assert_eq!(env.count("a.out"), 1);
    // With a torn tail as well, the repair is still recorded (the flow is not needed).
    let journal = env.run_dir("done").join("journal.jsonl");
    let mut bytes = std::fs::read(&journal).expect("journal");
    bytes.extend_from_slice(b"{\"seq\":9");
    std::fs::write(&journal, bytes).expect("tear");
    env.run(&["resume", "--run-id", "done"]).code(0).stderr_has("partly written line");
    assert_eq!(env.events("done").last().map(String::as_str), Some("JournalRepaired"));
    env.run(&["verify", "--run-id", "done"]).code(1).stderr_has("edited since the run started");
    env.assert_rebuild_matches_live();
}

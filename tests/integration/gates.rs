//! Approvals and quality gates: pausing for a person, and checking a step's outputs.

use std::time::Duration;

use crate::util::*;

const APPROVAL: &str = r#"
[[steps]]
id = "build"
run = "echo built >> build.out"

[[steps]]
id = "side"
needs = []
run = "sleep 0.3; echo side >> side.out"

[[steps]]
id = "deploy"
approval = { message = "ship it?", approvers = ["alice", "bob"] }
run = "echo deployed >> deploy.out"

[[steps]]
id = "after"
run = "echo after >> after.out"
"#;

fn approvals_rows(env: &Env, id: &str) -> Vec<(String, String, Option<String>, Option<String>)> {
    let runs = runner::store::RunsDir::new(env.runs_dir());
    let p = runner::projection::Projection::open(&runs).expect("projection");
    let mut stmt = p
        .connection()
        .prepare("SELECT step_id, status, decided_by, comment FROM approvals WHERE run_id = ?1 ORDER BY seq")
        .expect("query");
    stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn an_approval_pauses_the_run_with_exit_3_and_approve_resume_completes_it() {
    let env = Env::new();
    let flow = env.flow("ship", APPROVAL);
    let first = env.run(&["run", &flow, "--run-id", "r1"]);
    first
        .code(3)
        .stderr_has("deploy: waiting for approval: ship it? (approvers: alice, bob)")
        .stderr_has("runner approve --run-id r1 --step deploy --resume");
    // Everything that does not depend on the step ran; nothing after it did.
    assert_eq!((env.count("build.out"), env.count("side.out")), (1, 1));
    assert_eq!((env.count("deploy.out"), env.count("after.out")), (0, 0));
    assert!(env.events("r1").contains(&"ApprovalRequested:deploy".to_string()));
    assert_eq!(env.events("r1").last().map(String::as_str), Some("RunPaused"));

    let listed = env.run(&["status", "--waiting"]);
    listed.code(0).stdout_has("r1").stdout_has("approve: deploy");
    env.run(&["status", "--run-id", "r1"]).code(0).stdout_has("waiting for approval: ship it?");
    // A resume without a decision pauses again and runs nothing twice.
    env.run(&["resume", "--run-id", "r1"]).code(3);
    assert_eq!(env.count("build.out"), 1);

    env.run(&["approve", "--run-id", "r1", "--step", "deploy", "--by", "bob", "--comment", "lgtm"]).code(0);
    assert_eq!(env.count("deploy.out"), 0, "approve without --resume only records the decision");
    env.run(&["status", "--waiting"]).code(0).stdout_has("no run waits for approval");
    env.run(&["resume", "--run-id", "r1"]).code(0);
    assert_eq!((env.count("deploy.out"), env.count("after.out"), env.count("build.out")), (1, 1, 1));
    assert_eq!(
        approvals_rows(&env, "r1"),
        vec![("deploy".into(), "approved".into(), Some("bob".into()), Some("lgtm".into()))]
    );
    let decided: Vec<_> = env
        .journal("r1")
        .into_iter()
        .filter(|e| e["type"] == "ApprovalDecided")
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["by"], "bob");
    env.assert_rebuild_matches_live();
}

#[test]
fn approvers_are_enforced_and_bad_verdicts_change_nothing() {
    let env = Env::new();
    let flow = env.flow("ship", APPROVAL);
    env.run(&["run", &flow, "--run-id", "r1"]).code(3);
    let before = std::fs::read(env.run_dir("r1").join("journal.jsonl")).expect("journal");
    env.run(&["approve", "--run-id", "r1", "--step", "deploy", "--by", "mallory"])
        .code(2)
        .stderr_has("`mallory` may not decide on `deploy`: its approvers are alice, bob");
    env.run(&["approve", "--run-id", "r1", "--step", "build", "--by", "alice"]).code(2).stderr_has(
        "step `build` is not waiting for approval: it is succeeded (waiting for approval: deploy)",
    );
    env.run(&["approve", "--run-id", "r1", "--step", "nope", "--by", "alice"])
        .code(2)
        .stderr_has("no step `nope`");
    env.run(&["approve", "--run-id", "missing", "--step", "deploy"]).code(2);
    let after = std::fs::read(env.run_dir("r1").join("journal.jsonl")).expect("journal");
    assert_eq!(before, after, "a refused verdict must not touch the journal");
    // `--by` defaults to the user name.
    let mut approve = env.command(&["approve", "--run-id", "r1", "--step", "deploy", "--resume"]);
    let out = approve.env("USER", "alice").output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(approvals_rows(&env, "r1")[0].2.as_deref(), Some("alice"));
}

#[test]
fn a_rejection_fails_the_run_until_someone_approves_after_all() {
    let env = Env::new();
    let flow = env.flow("ship", APPROVAL);
    env.run(&["run", &flow, "--run-id", "r1"]).code(3);
    env.run(&[
        "reject",
        "--run-id",
        "r1",
        "--step",
        "deploy",
        "--by",
        "alice",
        "--comment",
        "not today",
        "--resume",
    ])
    .code(1)
    .stderr_has("step `deploy` rejected");
    // A resume does not overturn a person's verdict.
    env.run(&["resume", "--run-id", "r1"]).code(1);
    assert_eq!(env.count("deploy.out"), 0);
    env.run(&["status", "--run-id", "r1"]).code(0).stdout_has("rejected by alice: not today");
    env.run(&["reject", "--run-id", "r1", "--step", "deploy", "--by", "alice"]).code(2);
    env.run(&["approve", "--run-id", "r1", "--step", "deploy", "--by", "bob", "--resume"]).code(0);
    assert_eq!((env.count("deploy.out"), env.count("after.out")), (1, 1));
    env.assert_rebuild_matches_live();
}

#[test]
fn a_rejected_router_routes_back_and_asks_again_on_the_next_visit() {
    let env = Env::new();
    let flow = env.flow(
        "loop",
        r#"
[[steps]]
id = "dev"
max_visits = 3
run = "echo $RUNNER_VISIT >> dev.out"

[[steps]]
id = "review"
max_visits = 3
approval = true
run = "echo reviewed >> review.out"
next = [
  { if = "steps.review.status == 'rejected'", goto = "dev" },
  { goto = "ship" },
]

[[steps]]
id = "ship"
run = "echo shipped >> ship.out"
"#,
    );
    env.run(&["run", &flow, "--run-id", "l"]).code(3);
    env.run(&["reject", "--run-id", "l", "--step", "review", "--comment", "again"])
        .code(0)
        .stderr_has("review: routed to dev (again) by rule 1");
    env.run(&["resume", "--run-id", "l"]).code(3).stderr_has("review#2: waiting for approval");
    env.run(&["approve", "--run-id", "l", "--step", "review", "--resume"]).code(0);
    assert_eq!(env.read("dev.out"), "1\n2\n");
    assert_eq!((env.count("review.out"), env.count("ship.out")), (1, 1));
    let routes: Vec<_> = env
        .journal("l")
        .into_iter()
        .filter(|e| e["type"] == "RoutingDecided")
        .map(|e| (e["data"]["attempt"].clone(), e["data"]["chosen"].clone()))
        .collect();
    assert_eq!(routes, vec![(0.into(), "dev".into()), (1.into(), "ship".into())]);
    env.assert_rebuild_matches_live();
}

#[test]
fn an_approval_survives_a_crash_between_request_and_decision() {
    let env = Env::new();
    let flow = env.flow(
        "crash",
        r#"
[[steps]]
id = "deploy"
approval = true
run = "echo deployed >> deploy.out"

[[steps]]
id = "slow"
needs = []
run = "[ -e slow.done ] && exit 0; touch slow.done; sleep 30"
"#,
    );
    let child = env.spawn(&["run", &flow, "--run-id", "c"]);
    wait_for("the approval request", Duration::from_secs(10), || {
        env.run_dir("c").join("journal.jsonl").exists()
            && env.events("c").contains(&"ApprovalRequested:deploy".to_string())
            && env.path().join("slow.done").exists()
    });
    assert_eq!(kill_or_finished(child), None, "the runner was still live, waiting for `slow`");
    // The request is durable: after the crash the step still waits and takes a verdict;
    // the resume stops what the dead runner left running and finishes the run.
    env.run(&["status", "--run-id", "c"]).code(0).stdout_has("waiting for approval");
    env.run(&["approve", "--run-id", "c", "--step", "deploy", "--by", "ops"]).code(0);
    let done = env.run(&["resume", "--run-id", "c"]);
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(env.count("deploy.out"), 1, "{}", done.stderr);
    let requests = env.events("c").iter().filter(|e| *e == "ApprovalRequested:deploy").count();
    assert_eq!(requests, 1, "the crash must not lose or repeat the request");
}

#[test]
fn gates_pass_warn_and_block_and_profiles_change_the_thresholds() {
    let env = Env::new();
    let flow = env.flow(
        "gate",
        r#"
[[steps]]
id = "test"
run = "echo coverage=$COV >> $RUNNER_OUTPUT"
gate = { pass = "steps.test.outputs.coverage >= 80", warn = "steps.test.outputs.coverage >= 60" }

[[steps]]
id = "publish"
run = "echo published >> publish.out"

[profiles.strict]
test = { pass = "steps.test.outputs.coverage >= 90" }
"#,
    );
    let run = |cov: &str, extra: &[&str]| {
        let mut args = vec!["run", flow.as_str()];
        args.extend_from_slice(extra);
        let out = env.command(&args).env("COV", cov).output().expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    let (code, _, pass_id) = run("85", &[]);
    assert_eq!(code, Some(0));
    let (code, stderr, warn_id) = run("72", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("test: gate passed with a warning"), "{stderr}");
    assert!(stderr.contains("steps.test.outputs.coverage = \"72\""), "{stderr}");
    assert!(stderr.contains("gate warnings: `test`"), "the summary names the warning: {stderr}");
    env.run(&["status", "--run-id", &warn_id]).code(0).stdout_has("gate warning:");
    let (code, stderr, block_id) = run("40", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("gate blocked the step"), "{stderr}");
    assert_eq!(env.count("publish.out"), 2, "publish ran after pass and warn, not after block");
    // The profile's stricter gate blocks what the default one passes, and is recorded.
    let (code, stderr, strict_id) = run("85", &["--profile", "strict"]);
    assert_eq!(code, Some(1), "{stderr}");
    let gate =
        env.journal(&strict_id).into_iter().find(|e| e["type"] == "GateEvaluated").expect("gate event");
    assert_eq!(gate["data"]["outcome"], "block");
    assert_eq!(gate["data"]["profile"], "strict");
    assert_eq!(gate["data"]["values"]["steps.test.outputs.coverage"], "85");
    assert_eq!(env.journal(&strict_id)[0]["data"]["profile"], "strict");
    let failed = env.journal(&block_id).into_iter().find(|e| e["type"] == "StepFailed").expect("failure");
    assert_eq!(failed["data"]["reason"], "gate");
    assert!(failed["data"].get("retry_in_ms").is_none());
    for (id, outcome) in [(&pass_id, "pass"), (&warn_id, "warn"), (&block_id, "block")] {
        let g = env.journal(id).into_iter().find(|e| e["type"] == "GateEvaluated").expect("gate event");
        assert_eq!(g["data"]["outcome"], outcome, "run {id}");
    }
    env.run(&["run", &flow, "--profile", "lax"]).code(2).stderr_has("has no profile `lax` (it has strict)");
    env.assert_rebuild_matches_live();
}

#[test]
fn bad_approval_gate_and_profile_fields_are_flow_errors() {
    let env = Env::new();
    let cases = [
        ("[[steps]]\nid='a'\nrun='x'\napproval='yes'\n", "expected `true`, `false` or a table"),
        ("[[steps]]\nid='a'\nrun='x'\napproval={ approvers=['a b'] }\n", "invalid approver name"),
        ("[[steps]]\nid='a'\nrun='x'\ngate={ pass='steps.b.outputs.x > 1' }\n", "unknown step `b`"),
        ("[[steps]]\nid='a'\nrun='x'\ngate={ warn='true' }\n", "missing field `pass`"),
        (
            "[[steps]]\nid='a'\nrun='x'\n[profiles.p]\nb={ pass='true' }\n",
            "profile `p` names unknown step `b`",
        ),
        ("[[steps]]\nid='a'\ncall='x'\ngate={ pass='true' }\n", "`gate` is for a step that runs a command"),
    ];
    for (toml, expected) in cases {
        let flow = env.flow("bad", toml);
        env.run(&["validate", &flow]).code(2).stderr_has(expected);
    }
    assert!(!env.runs_dir().exists());
}

#[test]
fn a_verdict_killed_mid_commit_is_all_or_nothing() {
    let env = Env::new();
    let flow = env.flow("ship", APPROVAL);
    env.run(&["run", &flow, "--run-id", "r1"]).code(3);
    let approve = |crash: Option<&str>| {
        let mut c = env.command(&["approve", "--run-id", "r1", "--step", "deploy", "--by", "bob"]);
        if let Some(point) = crash {
            c.env(runner::faults::ENV, point);
        }
        Run::from_output(c.output().expect("runs"))
    };
    // Killed before the decision is durable: nothing was acknowledged, nothing recorded.
    assert_eq!(approve(Some("before-commit")).code, 137);
    assert!(!env.events("r1").iter().any(|e| e.starts_with("ApprovalDecided")));
    env.run(&["status", "--run-id", "r1"]).code(0).stdout_has("waiting for approval");
    // Killed right after: the decision stands, the projection catches up, and it is not
    // taken twice.
    assert_eq!(approve(Some("after-commit")).code, 137);
    env.run(&["status", "--run-id", "r1"]).code(0).stdout_has("paused");
    approve(None).code(2).stderr_has("is not waiting for approval: it is pending");
    env.run(&["resume", "--run-id", "r1"]).code(0);
    assert_eq!(env.count("deploy.out"), 1);
    assert_eq!(env.events("r1").iter().filter(|e| e.starts_with("ApprovalDecided")).count(), 1);
    env.assert_rebuild_matches_live();
}

#[test]
fn a_verdict_on_a_live_run_goes_through_its_inbox() {
    let env = Env::new();
    let flow = env.flow(
        "live",
        r#"
[[steps]]
id = "deploy"
approval = { approvers = ["alice"] }
run = "echo deployed >> deploy.out"

[[steps]]
id = "slow"
needs = []
run = "while [ ! -e go ]; do sleep 0.05; done; echo slow >> slow.out"
"#,
    );
    let child = env.spawn(&["run", &flow, "--run-id", "L"]);
    wait_for("the approval request", Duration::from_secs(10), || {
        env.run_dir("L").join("journal.jsonl").exists()
            && env.events("L").contains(&"ApprovalRequested:deploy".to_string())
    });
    // Refused against the journal, without queueing anything.
    env.run(&["approve", "--run-id", "L", "--step", "deploy", "--by", "bob"])
        .code(2)
        .stderr_has("`bob` may not decide on `deploy`");
    assert!(std::fs::read_dir(env.run_dir("L").join("inbox")).map_or(true, |d| d.count() == 0));
    // Taken by the live runner while `slow` still runs.
    env.run(&["approve", "--run-id", "L", "--step", "deploy", "--by", "alice"])
        .code(0)
        .stderr_has("the live runner goes on with it");
    wait_for("deploy to run", Duration::from_secs(10), || env.count("deploy.out") == 1);
    assert_eq!(env.count("slow.out"), 0, "the run was still live when the verdict was taken");
    env.write("go", "");
    let out = finish(child, Duration::from_secs(20));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(std::fs::read_dir(env.run_dir("L").join("inbox")).map_or(true, |d| d.count() == 0));
    assert_eq!(approvals_rows(&env, "L")[0].1, "approved");
    env.assert_rebuild_matches_live();
}

#[test]
fn a_rejected_router_that_no_rule_sends_back_stays_rejected() {
    let env = Env::new();
    let flow = env.flow(
        "r",
        r#"
[[steps]]
id = "review"
approval = true
run = "true"
next = [{ goto = "ship" }]

[[steps]]
id = "ship"
run = "echo shipped >> ship.out"
"#,
    );
    env.run(&["run", &flow, "--run-id", "r"]).code(3);
    env.run(&["reject", "--run-id", "r", "--step", "review", "--by", "ops"])
        .code(0)
        .stderr_has("was rejected, and no rule whose `if` holds sends it back");
    env.run(&["resume", "--run-id", "r"]).code(1).stderr_has("step `review` rejected");
    env.run(&["resume", "--run-id", "r"]).code(1);
    let routes = env.events("r").iter().filter(|e| *e == "RoutingDecided:review").count();
    assert_eq!(routes, 1, "the rejection is routed once, not at every resume");
    env.run(&["approve", "--run-id", "r", "--step", "review", "--by", "ops", "--resume"]).code(0);
    assert_eq!(env.count("ship.out"), 1);
    env.assert_rebuild_matches_live();
}

#[test]
fn a_queued_verdict_left_behind_never_decides_a_later_visit() {
    let env = Env::new();
    let flow = env.flow(
        "loop",
        r#"
[[steps]]
id = "dev"
max_visits = 2
run = "echo rev=$RUNNER_VISIT >> $RUNNER_OUTPUT"

[[steps]]
id = "review"
max_visits = 2
approval = true
run = "true"
next = [{ if = "steps.dev.outputs.rev < 2", goto = "dev" }, { goto = "pub" }]

[[steps]]
id = "pub"
run = "echo pub >> pub.out"
"#,
    );
    env.run(&["run", &flow, "--run-id", "q"]).code(3);
    // A verdict for visit 1, as a live `approve` queues it, applied once...
    let queued = r#"{"step":"review","decision":"approved","by":"alice","comment":null,"visit":1}"#;
    env.write("runs/q/inbox/1-1.json", queued);
    env.run(&["resume", "--run-id", "q"]).code(3).stderr_has("review#2: waiting for approval");
    // ...and the same file again (a crash before its removal): it must not approve visit 2.
    env.write("runs/q/inbox/1-1.json", queued);
    env.run(&["resume", "--run-id", "q"]).code(3);
    assert_eq!(env.count("pub.out"), 0);
    let decided = env.events("q").iter().filter(|e| *e == "ApprovalDecided:review").count();
    assert_eq!(decided, 1);
    assert!(
        !env.path().join("runs/q/inbox/1-1.json").exists(),
        "the stale verdict was taken out of the inbox"
    );
}

#[test]
fn a_profile_cannot_gate_a_call_step() {
    let env = Env::new();
    env.flow("sub", "[[steps]]\nid='s'\nrun='true'\n");
    let flow = env.flow("main", "[[steps]]\nid='c'\ncall='sub'\n[profiles.strict]\nc={ pass='true' }\n");
    env.run(&["validate", &flow]).code(2).stderr_has("`profiles.strict.c` is for a step that runs a command");
}

#[test]
fn a_resume_refuses_a_flow_copy_that_lost_the_runs_profile() {
    let env = Env::new();
    let text = "[[steps]]\nid='t'\nrun='echo c=85 >> $RUNNER_OUTPUT'\ngate={ pass='steps.t.outputs.c >= 80' }\n\
                [profiles.strict]\nt={ pass='steps.t.outputs.c >= 90' }\n";
    let flow = env.flow("p", text);
    env.run(&["run", &flow, "--run-id", "p", "--profile", "strict"]).code(1);
    let copy = env.run_dir("p").join("flow.toml");
    std::fs::write(&copy, text.split("[profiles").next().unwrap_or_default()).expect("edit the copy");
    let before = std::fs::read(env.run_dir("p").join("journal.jsonl")).expect("journal");
    env.run(&["resume", "--run-id", "p", "--accept-flow-change"])
        .code(2)
        .stderr_has("it was started with profile `strict`");
    assert_eq!(std::fs::read(env.run_dir("p").join("journal.jsonl")).expect("journal"), before);
}

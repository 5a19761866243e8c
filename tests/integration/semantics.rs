//! Flow semantics: outputs, handoffs, conditions, routing and bounded loops.

use crate::util::*;

fn data_of<'a>(journal: &'a [serde_json::Value], ty: &str) -> Vec<&'a serde_json::Value> {
    journal.iter().filter(|e| e["type"] == ty).map(|e| &e["data"]).collect()
}

#[test]
fn outputs_reach_later_steps_conditions_and_status() {
    let env = Env::new();
    let flow = env.flow(
        "out",
        r##"
[[steps]]
id = "make-it"
run = '''
echo 'url=http://x/?a=1&b=2' >> "$RUNNER_OUTPUT"
printf 'notes<<END\nfirst line\nsecond = line\nEND\n' >> "$RUNNER_OUTPUT"
echo 'count=12' >> "$RUNNER_OUTPUT"
'''
[[steps]]
id = "use"
if = "steps.make-it.outputs.count > 9 && steps.make-it.outputs.url != ''"
run = 'printf "%s|%s" "$RUNNER_OUTPUT_MAKE_IT_URL" "$RUNNER_OUTPUT_MAKE_IT_NOTES" > seen.txt'
[[steps]]
id = "side"
needs = []
run = 'echo "x=1" >> "$RUNNER_OUTPUT"'
[[steps]]
id = "later"
needs = ["use"]
run = 'env | grep "^RUNNER_OUTPUT_" | cut -d= -f1 | sort > later.txt'
"##,
    );
    let id = env.run(&["run", &flow, "--jobs", "1"]).code(0).run_id();
    assert_eq!(env.read("seen.txt"), "http://x/?a=1&b=2|first line\nsecond = line");
    // Outputs come from upstream steps (directly or not), never from a parallel branch:
    // with one job `side` has finished before `later` starts, and still is not seen.
    assert_eq!(
        env.read("later.txt"),
        "RUNNER_OUTPUT_MAKE_IT_COUNT\nRUNNER_OUTPUT_MAKE_IT_NOTES\nRUNNER_OUTPUT_MAKE_IT_URL\n"
    );
    let journal = env.journal(&id);
    let ok = data_of(&journal, "StepSucceeded")[0];
    assert_eq!(ok["outputs"]["notes"], "first line\nsecond = line");
    assert_eq!(ok["outputs"]["url"], "http://x/?a=1&b=2");
    let detail = env.run(&["status", "--run-id", &id, "--step", "make-it"]);
    detail.code(0).stdout_has("url = http://x/?a=1&b=2").stdout_has(r#"notes = "first line\nsecond = line""#);
    let json: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json", "--run-id", &id, "--step", "make-it"]).stdout)
            .expect("json");
    assert_eq!(json["outputs"].as_array().map(Vec::len), Some(3));
    env.assert_rebuild_matches_live();
}

#[test]
fn invalid_or_oversized_outputs_fail_the_step_with_the_reason() {
    let env = Env::new();
    let flow = env.flow(
        "bad",
        r##"
[[steps]]
id = "a"
run = 'echo "not a pair" >> "$RUNNER_OUTPUT"'
[[steps]]
id = "b"
needs = []
run = 'head -c 1100000 /dev/zero | tr "\0" x | sed "s/^/k=/" >> "$RUNNER_OUTPUT"'
"##,
    );
    let out = env.run(&["run", &flow, "--jobs", "2"]);
    out.code(1).stderr_has("line 1: expected `key=value`").stderr_has("larger than 1 MiB");
    let id = out.run_id();
    let failed = data_of(&env.journal(&id), "StepFailed").into_iter().cloned().collect::<Vec<_>>();
    assert!(failed.iter().all(|f| f["reason"] == "outputs" && f["exit_code"] == 0), "{failed:?}");
    env.assert_rebuild_matches_live();
}

#[test]
fn handoffs_reach_dependents_and_the_projection() {
    let env = Env::new();
    let flow = env.flow(
        "handoff",
        r##"
[[steps]]
id = "plan"
run = '''
printf '# Plan\n\n- build it\n' > "$RUNNER_HANDOFF"
echo '{"owner": "po", "priority": 1}' > "$RUNNER_HANDOFF_META"
'''
[[steps]]
id = "design"
needs = []
run = 'echo "# Design" > "$RUNNER_HANDOFF"'
[[steps]]
id = "build"
needs = ["plan", "design"]
run = 'echo "$RUNNER_HANDOFF_IN" > inputs.txt; while read -r f; do cat "$f"; done < inputs.txt > both.md'
"##,
    );
    let id = env.run(&["run", &flow]).code(0).run_id();
    let inputs = env.read("inputs.txt");
    let lines: Vec<&str> = inputs.lines().collect();
    assert_eq!(lines.len(), 2, "{inputs}");
    assert!(lines[0].ends_with("steps/plan/1/handoff.md") && lines[1].ends_with("steps/design/1/handoff.md"));
    assert_eq!(env.read("both.md"), "# Plan\n\n- build it\n# Design\n");
    let conn = rusqlite::Connection::open(env.runs_dir().join("projection.sqlite")).expect("db");
    let (md, meta): (String, String) = conn
        .query_row(
            "SELECT content_md, metadata_json FROM handoffs WHERE run_id = ?1 AND step_id = 'plan'",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    assert_eq!(md, "# Plan\n\n- build it\n");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&meta).expect("json")["owner"], "po");
    env.assert_rebuild_matches_live();
}

#[test]
fn a_false_condition_skips_the_step_and_its_dependents_with_reasons() {
    let env = Env::new();
    let flow = env.flow(
        "cond",
        r##"
[params]
mode = { default = "fast" }
[[steps]]
id = "a"
run = "true"
[[steps]]
id = "slow"
if = "params.mode == 'slow'"
run = "echo x >> slow.ran"
[[steps]]
id = "after"
run = "echo x >> after.ran"
[[steps]]
id = "report"
if = "steps.slow.status == 'skipped'"
run = "echo x >> report.ran"
"##,
    );
    let out = env.run(&["run", &flow]);
    out.code(0).stderr_has("slow: skipped (condition is false: params.mode == 'slow')");
    out.stderr_has("after: skipped (`slow` was skipped)");
    let id = out.run_id();
    assert_eq!((env.count("slow.ran"), env.count("after.ran"), env.count("report.ran")), (0, 0, 1));
    env.run(&["status", "--run-id", &id]).stdout_has("condition is false").stdout_has("skipped");
    // Decided once: a resume of the finished run changes nothing.
    env.run(&["resume", "--run-id", &id]).code(0);
    assert_eq!(env.count("slow.ran"), 0);
    let again = env.run(&["run", &flow, "--param", "mode=slow"]).code(0).run_id();
    assert_ne!(again, id);
    assert_eq!((env.count("slow.ran"), env.count("after.ran"), env.count("report.ran")), (1, 1, 1));
    env.assert_rebuild_matches_live();
}

#[test]
fn clean_up_steps_run_after_a_failure_and_the_run_still_fails() {
    let env = Env::new();
    let flow = env.flow(
        "cleanup",
        r##"
[[steps]]
id = "a"
run = "test -e fixed"
[[steps]]
id = "b"
run = "echo x >> b.ran"
[[steps]]
id = "on-fail"
if = "failure()"
run = "echo x >> on-fail.ran"
[[steps]]
id = "always"
needs = ["on-fail"]
if = "always()"
run = "echo x >> always.ran"
[[steps]]
id = "on-success"
needs = ["b"]
if = "success()"
run = "echo x >> on-success.ran"
"##,
    );
    let out = env.run(&["run", &flow, "--run-id", "c"]);
    out.code(1);
    assert_eq!(env.count("b.ran") + env.count("on-success.ran"), 0);
    assert_eq!((env.count("on-fail.ran"), env.count("always.ran")), (1, 1));
    // Fixed and resumed: the rest runs; the clean-up steps are done and stay done.
    env.write("fixed", "");
    env.run(&["resume", "--run-id", "c"]).code(0);
    assert_eq!((env.count("b.ran"), env.count("on-success.ran")), (1, 1));
    assert_eq!((env.count("on-fail.ran"), env.count("always.ran")), (1, 1));
    env.assert_rebuild_matches_live();
}

#[test]
fn validate_points_at_bad_conditions_and_routes() {
    let env = Env::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[steps]]\nid='a'\nrun='x'\nif = \"steps.a.outputs.x == && true\"\n",
            "f.toml:4:28: invalid condition in `if`",
            "^",
        ),
        (
            "[[steps]]\nid='a'\nrun='x'\nif = \"steps.b.status == 'x'\"\n",
            "f.toml:4:7: `if` refers to unknown step `b`",
            "",
        ),
        ("[[steps]]\nid='a'\nrun='x'\nif = \"params.nope == 'x'\"\n", "unknown parameter `nope`", ""),
        (
            "[[steps]]\nid='a'\nrun='x'\n[[steps]]\nid='b'\nrun='x'\nnext=[{goto='c'}]\n[[steps]]\nid='c'\nrun='x'\nneeds=[]\n",
            "`b` cannot route to `c`",
            "",
        ),
        (
            "[[steps]]\nid='a'\nrun='x'\n[[steps]]\nid='b'\nrun='x'\nnext=[{goto='a'}]\n",
            "step `a` can be visited again (loop a -> b -> a) but has no `max_visits`",
            "",
        ),
        ("[[steps]]\nid='a'\nrun='x'\nnext=[{goto='zz'}]\n", "unknown step `zz` in the routes of `a`", ""),
        (
            "[[steps]]\nid='a'\nrun='x'\n[[steps]]\nid='b'\nrun='x'\nnext=[{goto='a'},{if='true',goto='a'}]\n",
            "rule without `if`",
            "",
        ),
    ];
    for (text, message, caret) in cases {
        let path = env.write("f.toml", text);
        let out = env.run(&["validate", &path.to_string_lossy()]);
        out.code(2).stderr_has(message).stderr_has(caret);
    }
    // The caret sits under the offending token.
    let path = env.write("f.toml", "[[steps]]\nid='a'\nrun='x'\nif = \"true && )\"\n");
    let out = env.run(&["validate", &path.to_string_lossy()]);
    out.code(2).stderr_has("4 | if = \"true && )\"\n  |               ^");
    assert!(env.run_ids().is_empty());
}

const LOOP: &str = r##"
[params]
passes_at = { default = "3" }
[[steps]]
id = "build"
run = "echo build >> build.log"
[[steps]]
id = "review"
needs = ["build"]
max_visits = 4
run = '''
echo "review $RUNNER_VISIT" >> review.log
if [ "$RUNNER_VISIT" -ge "$RUNNER_PARAM_PASSES_AT" ]; then v=pass; else v=fail; fi
echo "verdict=$v" >> "$RUNNER_OUTPUT"
echo "# Review $RUNNER_VISIT: $v" > "$RUNNER_HANDOFF"
'''
next = [
  { if = "steps.review.outputs.verdict == 'fail'", goto = "fix" },
  { goto = "publish" },
]
[[steps]]
id = "fix"
needs = ["review"]
max_visits = 4
run = 'echo "fix $RUNNER_VISIT $(cat "$RUNNER_HANDOFF_IN")" >> fix.log'
next = [{ goto = "review" }]
[[steps]]
id = "publish"
needs = ["review"]
run = "echo publish >> publish.log"
[[steps]]
id = "notify"
needs = ["publish"]
if = "always()"
run = "echo notify >> notify.log"
"##;

/// The routing decisions of a run without their times: what was chosen, how, when.
fn decisions(env: &Env, id: &str) -> Vec<String> {
    data_of(&env.journal(id), "RoutingDecided")
        .iter()
        .map(|d| {
            format!(
                "{}#{} -> {} by {} {}",
                d["step"], d["visit"], d["chosen"], d["routing_source"], d["reset"]
            )
        })
        .collect()
}

#[test]
fn a_review_loop_ends_by_rule_and_names_every_visit() {
    let env = Env::new();
    let flow = env.flow("loop", LOOP);
    let out = env.run(&["run", &flow, "--run-id", "l"]);
    out.code(0).stderr_has("review#3: routed to publish by default").stderr_has("fix#2: routed to review");
    assert_eq!(env.read("review.log"), "review 1\nreview 2\nreview 3\n");
    assert_eq!(env.read("fix.log"), "fix 1 # Review 1: fail\nfix 2 # Review 2: fail\n");
    // The branch not taken waits while the loop can come back; notify runs once, at the end.
    assert_eq!((env.count("publish.log"), env.count("notify.log"), env.count("build.log")), (1, 1, 1));
    let d = decisions(&env, "l");
    assert_eq!(d.len(), 5, "{d:?}");
    assert!(d[0].starts_with(r##""review"#1 -> "fix" by "rule""##), "{d:?}");
    assert!(
        d[1].starts_with(r##""fix"#1 -> "review" by "default" ["review","fix","publish","notify"]"##),
        "{d:?}"
    );
    assert!(d[4].starts_with(r##""review"#3 -> "publish" by "default""##), "{d:?}");
    for dir in ["review/1", "review#2/1", "review#3/1", "fix/1", "fix#2/1", "publish/1"] {
        assert!(env.run_dir("l").join("steps").join(dir).join("stdout.log").exists(), "{dir}");
    }
    env.run(&["logs", "--run-id", "l", "--step", "review", "--visit", "2", "--attempt", "1"]).code(0);
    env.run(&["status", "--run-id", "l"]).stdout_has("review#3").stdout_has("fix#3");
    env.assert_rebuild_matches_live();
}

#[test]
fn a_loop_past_max_visits_fails_the_run_naming_the_loop() {
    let env = Env::new();
    let flow = env.flow("loop", LOOP);
    let out = env.run(&["run", &flow, "--run-id", "l", "--param", "passes_at=99"]);
    out.code(1).stderr_has("loop review -> fix -> review ran out of visits: `review` would start visit 5");
    assert_eq!(env.count("review.log"), 4);
    // `notify` asks for `always()`: it runs although the run failed.
    assert_eq!((env.count("publish.log"), env.count("notify.log")), (0, 1));
    env.run(&["status", "--run-id", "l"]).stdout_has("ran out of visits");
    env.assert_rebuild_matches_live();
}

#[test]
fn routing_decisions_are_identical_after_crashes_anywhere_in_the_loop() {
    let reference = Env::new();
    let flow = reference.flow("loop", LOOP);
    reference.run(&["run", &flow, "--run-id", "l"]).code(0);
    let expected = decisions(&reference, "l");
    let commits = reference.journal("l").len();
    // Kill the runner after each commit in turn (a commit holds at least one event).
    for n in (1..commits).step_by(2) {
        let env = Env::new();
        let flow = env.flow("loop", LOOP);
        let out = env
            .command(&["run", &flow, "--run-id", "l"])
            .env(runner::faults::ENV, format!("after-commit:{n}"))
            .output()
            .expect("runner");
        if out.status.success() {
            break;
        }
        env.run(&["resume", "--run-id", "l"]).code(0);
        assert_eq!(decisions(&env, "l"), expected, "after a crash at commit {n}");
        assert_eq!(env.read("review.log"), "review 1\nreview 2\nreview 3\n", "crash at commit {n}");
        assert_eq!((env.count("publish.log"), env.count("notify.log")), (1, 1), "crash at commit {n}");
        env.run(&["verify", "--run-id", "l"]).code(0);
        env.assert_rebuild_matches_live();
    }
}

#[test]
fn many_candidates_are_stored_out_of_line() {
    let env = Env::new();
    let mut flow = String::from(
        "[[steps]]\nid='pick'\nrun='echo n=7 >> \"$RUNNER_OUTPUT\"'\nnext=[{if=\"steps.pick.outputs.n == 7\", goto='t7'},{goto='t0'}]\n",
    );
    for i in 0..20 {
        flow.push_str(&format!("[[steps]]\nid='t{i}'\nneeds=['pick']\nrun='echo t{i} >> ran.log'\n"));
    }
    let path = env.flow("many", &flow);
    let id = env.run(&["run", &path]).code(0).run_id();
    assert_eq!(env.read("ran.log"), "t7\n");
    let journal = env.journal(&id);
    let d = data_of(&journal, "RoutingDecided")[0];
    assert_eq!((d["candidate_count"].as_u64(), d["chosen"].as_str()), (Some(20), Some("t7")));
    assert!(d.get("candidates").is_none(), "{d}");
    let rel = d["candidate_set_path"].as_str().expect("path");
    let listed: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(env.run_dir(&id).join(rel)).expect("file"))
            .expect("json");
    assert_eq!(listed.len(), 20);
    assert_eq!(listed[7], "t7");
    assert_eq!(data_of(&journal, "StepSkipped").len(), 19);
    env.assert_rebuild_matches_live();
}

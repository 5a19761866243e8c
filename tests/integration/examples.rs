//! The example flows in `flows/`, run the way the README tells users to run them: from a
//! directory holding `flows/`, with the real binary and the real agent scripts.

use std::path::Path;

use crate::util::*;

const PIPELINE: &str = "flows/agent-pipeline.toml";

/// A scratch directory holding a copy of `flows/agent-pipeline.toml` and `flows/agents/`.
fn pipeline_env() -> Env {
    let env = Env::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let agents = env.path().join("flows/agents");
    std::fs::create_dir_all(&agents).expect("mkdir");
    std::fs::copy(repo.join(PIPELINE), env.path().join(PIPELINE)).expect("copy the flow");
    for entry in std::fs::read_dir(repo.join("flows/agents")).expect("flows/agents") {
        let entry = entry.expect("entry");
        // `fs::copy` keeps the permission bits, so the scripts stay executable.
        std::fs::copy(entry.path(), agents.join(entry.file_name())).expect("copy an agent");
    }
    env
}

/// One JSON object per `type` event, in journal order.
fn events_of(env: &Env, id: &str, ty: &str) -> Vec<serde_json::Value> {
    env.journal(id).into_iter().filter(|e| e["type"] == ty).map(|e| e["data"].clone()).collect()
}

/// `step#visit -> chosen by source rule-index` for every routing decision, in journal order.
fn routes(env: &Env, id: &str) -> Vec<String> {
    events_of(env, id, "RoutingDecided")
        .iter()
        .map(|d| {
            let chosen = d["chosen"].as_str().unwrap_or("-");
            format!(
                "{}#{} -> {chosen} by {} {}",
                d["step"].as_str().unwrap_or("?"),
                d["visit"],
                d["routing_source"].as_str().unwrap_or("?"),
                d["rule"]
            )
        })
        .collect()
}

/// The visits in which `step` started, in order.
fn started_visits(env: &Env, id: &str, step: &str) -> Vec<u64> {
    events_of(env, id, "StepStarted")
        .iter()
        .filter(|d| d["step"] == step)
        .map(|d| d["visit"].as_u64().expect("visit"))
        .collect()
}

#[test]
fn the_agent_pipeline_validates() {
    let env = pipeline_env();
    env.run(&["validate", PIPELINE]).code(0).stdout_has("ok (6 steps)");
    for script in ["product-owner", "architect", "developer", "reviewer", "publish", "summary"] {
        let text = env.read(&format!("flows/agents/{script}.sh"));
        assert!(text.starts_with("#!/bin/sh\n") && text.contains("\nset -eu\n"), "{script}.sh:\n{text}");
    }
}

#[test]
fn the_agent_pipeline_loops_once_then_publishes_every_agents_work() {
    let env = pipeline_env();
    let out = env.run(&["run", PIPELINE, "--run-id", "p"]);
    out.code(0)
        .stderr_has("reviewer: routed to developer (again) by rule 1")
        .stderr_has("reviewer#2: routed to publish by default")
        .stderr_has("developer#2: succeeded");
    assert_eq!(out.run_id(), "p");

    // Two decisions, each journaled once: back to the developer by the first rule (the
    // whole loop and what follows it made pending again), then on to publish by default.
    let decided = events_of(&env, "p", "RoutingDecided");
    assert_eq!(
        routes(&env, "p"),
        ["reviewer#1 -> developer by rule 0", "reviewer#2 -> publish by default 1"],
    );
    assert_eq!(decided[0]["reset"], serde_json::json!(["developer", "reviewer", "publish", "summary"]));
    assert_eq!(decided[0]["candidates"], serde_json::json!(["publish", "developer"]));
    assert!(
        decided[1].get("reset").is_none_or(|r| r.as_array().is_some_and(Vec::is_empty)),
        "{}",
        decided[1]
    );

    // One developer and one reviewer visit per round (default rounds = 2); everything else once.
    assert_eq!(started_visits(&env, "p", "developer"), [1, 2]);
    assert_eq!(started_visits(&env, "p", "reviewer"), [1, 2]);
    for step in ["product-owner", "architect", "publish", "summary"] {
        assert_eq!(started_visits(&env, "p", step), [1], "{step}");
    }
    assert!(events_of(&env, "p", "StepSkipped").is_empty());
    let art = "out/agent-pipeline/p";
    assert!(env.path().join(format!("{art}/code-r1.txt")).exists());
    assert!(!env.path().join(format!("{art}/code-r3.txt")).exists());
    for dir in ["developer/1", "developer#2/1", "reviewer/1", "reviewer#2/1"] {
        assert!(env.run_dir("p").join("steps").join(dir).join("handoff.md").exists(), "{dir}");
    }

    // Outputs: the reviewer's feedback of visit 1 reached the developer's visit 2.
    assert_eq!(
        env.read(&format!("{art}/code-r2.txt")),
        "revision 2 of the export module (feedback addressed: handle empty reports (round 1))\n"
    );
    let ok = events_of(&env, "p", "StepSucceeded");
    let reviews: Vec<&serde_json::Value> = ok.iter().filter(|d| d["step"] == "reviewer").collect();
    assert_eq!(
        (&reviews[0]["outputs"]["verdict"], &reviews[1]["outputs"]["verdict"]),
        (&"changes".into(), &"approved".into())
    );

    // Handoffs chain: the architect was handed the product owner's document...
    let po_handoff = env.run_dir("p").join("steps/product-owner/1/handoff.md");
    let architect_log = env.read("runs/p/steps/architect/1/stdout.log");
    assert_eq!(architect_log, format!("architect: reading {}\n", po_handoff.display()));
    // ... and publish, which needs all four agents, got the four latest handoffs in `needs` order.
    let doc = env.read(&format!("{art}/published.md"));
    let sections: Vec<&str> = doc.lines().filter(|l| l.starts_with("# ")).collect();
    assert_eq!(
        sections,
        [
            "# Story: export reports as CSV",
            "# Design",
            "# Implementation, revision 2",
            "# Review of revision 2: approved"
        ],
        "{doc}"
    );
    assert!(doc.contains("For: Story: export reports as CSV"), "the architect read the story:\n{doc}");

    // `status --step` shows the routes, with the human rule number (1-based) ...
    let detail = env.run(&["status", "--run-id", "p", "--step", "reviewer"]);
    detail
        .code(0)
        .stdout_has("[reviewer] -> developer by rule 1")
        .stdout_has("[reviewer#2] -> publish by default")
        .stdout_has("[reviewer#2] verdict = approved");
    // ... and in JSON, with the rule's index (0-based) as in the journal.
    let json: serde_json::Value = serde_json::from_str(
        &env.run(&["--json", "status", "--run-id", "p", "--step", "reviewer"]).code(0).stdout,
    )
    .expect("status --json");
    let chosen: Vec<(&str, u64)> = json["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| (r["chosen"].as_str().unwrap_or("-"), r["rule"].as_u64().unwrap_or(99)))
        .collect();
    assert_eq!(chosen, [("developer", 0), ("publish", 1)]);
    // The backward route names what it restarted, as the journal does.
    assert_eq!(
        json["routes"][0]["reset"],
        serde_json::json!(["developer", "reviewer", "publish", "summary"])
    );
    assert_eq!(
        (json["routes"][0]["attempt"].as_u64(), json["routes"][1]["reset"].as_array().map(Vec::len)),
        (Some(1), Some(0))
    );
    assert_eq!(json["handoffs"].as_array().map(Vec::len), Some(2));

    // The summary saw everyone's outputs.
    let summary = env.run(&["logs", "--run-id", "p", "--step", "summary", "--stream", "stdout"]);
    summary.code(0).stdout_has("developer rounds: 2\n").stdout_has("last verdict:     approved\n");
    summary.stdout_has("published:        out/agent-pipeline/p/published.md\n");
    // Logs of an earlier visit stay readable.
    env.run(&["logs", "--run-id", "p", "--step", "developer", "--visit", "1", "--stream", "stdout"])
        .code(0)
        .stdout_has("developer: revision 1,");

    // The projection has every decision and handoff; a rebuild gives the same rows.
    let conn = rusqlite::Connection::open(env.runs_dir().join("projection.sqlite")).expect("db");
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    assert_eq!(count("SELECT count(*) FROM routing_decisions WHERE run_id = 'p'"), 2);
    assert_eq!(count("SELECT count(*) FROM handoffs WHERE run_id = 'p'"), 6);
    assert_eq!(count("SELECT count(*) FROM outputs WHERE run_id = 'p' AND step_id = 'developer'"), 4);
    drop(conn);
    // A resume of the finished run decides nothing again and runs nothing.
    let events = env.journal("p").len();
    env.run(&["resume", "--run-id", "p"]).code(0);
    assert_eq!(events_of(&env, "p", "RoutingDecided").len(), 2);
    assert_eq!(started_visits(&env, "p", "developer"), [1, 2]);
    assert_eq!(env.journal("p").len(), events, "a resume of a finished run journals nothing");
    env.run(&["verify", "--run-id", "p"]).code(0);
    env.assert_rebuild_matches_live();
}

#[test]
fn too_many_rounds_run_out_of_visits_and_the_summary_still_runs() {
    let env = pipeline_env();
    let out = env.run(&["run", PIPELINE, "--run-id", "p", "--param", "rounds=9"]);
    out.code(1).stderr_has(
        "reviewer#3: failed: loop developer -> reviewer -> developer ran out of visits: \
         `developer` would start visit 4 but has max_visits = 3",
    );
    assert_eq!(started_visits(&env, "p", "developer"), [1, 2, 3]);
    assert_eq!(started_visits(&env, "p", "reviewer"), [1, 2, 3]);
    assert_eq!(
        routes(&env, "p"),
        [
            "reviewer#1 -> developer by rule 0",
            "reviewer#2 -> developer by rule 0",
            "reviewer#3 -> developer by rule 0"
        ]
    );
    let last = events_of(&env, "p", "RoutingDecided").pop().expect("decision");
    assert!(last["failure"].as_str().is_some_and(|f| f.contains("ran out of visits")), "{last}");
    assert!(last.get("reset").is_none_or(|r| r.as_array().is_some_and(Vec::is_empty)), "{last}");

    // Publish never ran; the always() summary did, once, and said so.
    assert!(started_visits(&env, "p", "publish").is_empty());
    assert_eq!(started_visits(&env, "p", "summary"), [1]);
    assert!(!env.path().join("out/agent-pipeline/p/published.md").exists());
    let summary = env.run(&["logs", "--run-id", "p", "--step", "summary", "--stream", "stdout"]);
    summary.code(0).stdout_has("developer rounds: 3\n").stdout_has("last verdict:     changes\n");
    summary.stdout_has("published:        nothing\n");

    let finished = events_of(&env, "p", "RunFinished");
    assert_eq!(finished.last().map(|f| f["outcome"].clone()), Some("failed".into()), "{finished:?}");
    env.run(&["status", "--run-id", "p"]).code(0).stdout_has("ran out of visits").stdout_has("pending");
    env.run(&["status", "--run-id", "p", "--step", "reviewer"])
        .code(0)
        .stdout_has("[reviewer#3] failed: loop developer -> reviewer -> developer ran out of visits");
    env.assert_rebuild_matches_live();
}

/// A scratch directory holding a copy of `flows/release.toml` and `flows/release/`.
fn release_env() -> Env {
    let env = Env::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(env.path().join("flows/release/src")).expect("mkdir");
    std::fs::copy(repo.join("flows/release.toml"), env.path().join("flows/release.toml")).expect("copy");
    for entry in std::fs::read_dir(repo.join("flows/release/src")).expect("flows/release/src") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), env.path().join("flows/release/src").join(entry.file_name()))
            .expect("copy");
    }
    env
}

#[test]
fn the_release_example_gates_caches_and_waits_for_its_approval() {
    let env = release_env();
    let flow = "flows/release.toml";
    env.run(&["run", flow, "--run-id", "v1"])
        .code(3)
        .stderr_has("publish: waiting for approval: Publish out/release/app.txt?");
    env.run(&["approve", "--run-id", "v1", "--step", "publish", "--by", "rel", "--resume"]).code(0);
    assert!(env.read("out/release/published.txt").starts_with("published 6 lines at coverage 84"));
    // The second release reuses build and test, and still asks before publishing.
    env.run(&["run", flow, "--run-id", "v2"]).code(3).stderr_has("build: cached").stderr_has("test: cached");
    // A warning is not a block; the strict profile blocks.
    env.run(&["run", flow, "--run-id", "v3", "--param", "coverage=75"])
        .code(3)
        .stderr_has("gate passed with a warning");
    // A cached result is judged by its gate again: the warning is not lost.
    env.run(&["run", flow, "--run-id", "v3b", "--param", "coverage=75"])
        .code(3)
        .stderr_has("test: cached")
        .stderr_has("gate passed with a warning");
    env.run(&["run", flow, "--run-id", "v4", "--profile", "strict"])
        .code(1)
        .stderr_has("gate blocked the step");
    // An edited source is a new build, and explain says which file.
    env.write("flows/release/src/main.rs", "fn main() {}\n");
    env.run(&["run", flow, "--run-id", "v5"]).code(3);
    env.run(&["explain", "--run-id", "v5", "--step", "build"])
        .code(0)
        .stdout_has("input file flows/release/src/main.rs changed");
}

#[test]
fn the_service_example_starts_its_api_for_the_steps_that_use_it() {
    let env = Env::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(env.path().join("flows/with-service")).expect("mkdir");
    std::fs::copy(repo.join("flows/with-service.toml"), env.path().join("flows/with-service.toml"))
        .expect("copy");
    for name in ["api.py", "client.py"] {
        std::fs::copy(
            repo.join("flows/with-service").join(name),
            env.path().join("flows/with-service").join(name),
        )
        .expect("copy");
    }
    let flow = "flows/with-service.toml";
    // Without its secret nothing starts.
    let out = env.command(&["run", flow]).env_remove("API_TOKEN").output().expect("runs");
    Run::from_output(out).code(2).stderr_has("API_TOKEN");
    let out = env
        .command(&["run", flow, "--run-id", "w"])
        .env("API_TOKEN", "example-tok-42")
        .output()
        .expect("runs");
    Run::from_output(out).code(0).stderr_has("[api] PUT /items").stderr_has("service `api`: healthy after");
    assert_eq!(env.read("out/total.txt"), "16\n");
    let events = env.events("w");
    let healthy = events.iter().position(|e| e == "ServiceHealthy").expect("healthy");
    let load = events.iter().position(|e| e == "StepStarted:load").expect("load");
    assert!(healthy < load, "{events:?}");
    env.assert_rebuild_matches_live();
}

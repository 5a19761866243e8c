//! The SIGKILL soak: kill the runner at random moments, resume like a cron line would, and
//! check that nothing acknowledged is ever lost or done twice.
//!
//! `RUNNER_CHAOS_CYCLES` sets how many kills (default 50, what CI runs); `scripts/chaos.sh`
//! runs it at 500. `RUNNER_CHAOS_SEED` replays a failing sequence.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::util::*;

/// ~50 steps: three parallel branches of sequences, joins, retries, and a step that fails
/// twice before it passes; branch c uses a service listening on `port`. Every command logs
/// "<step> <attempt>" before doing anything, and the service logs its pid.
fn chaos_flow(port: u16) -> String {
    let mut toml = String::from("description = \"chaos soak\"\n");
    toml.push_str(&format!(
        r#"
[services.svc]
run = ["python3", "-c", '''
import os, socket, time
with open("svc.pids", "a") as f: f.write(f"{{os.getpid()}}\n")
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port})); s.listen(); time.sleep(3600)
''']
health = {{ tcp = "127.0.0.1:{port}" }}
interval = "20ms"
grace = "1s"

"#
    ));
    let log = "echo \"$RUNNER_STEP_ID $RUNNER_ATTEMPT\" >> side-effects.log";
    let mut step = |id: &str, needs: Option<&[&str]>, extra: &str, body: &str| {
        toml.push_str(&format!("[[steps]]\nid = '{id}'\n"));
        if let Some(needs) = needs {
            let list: Vec<String> = needs.iter().map(|n| format!("'{n}'")).collect();
            toml.push_str(&format!("needs = [{}]\n", list.join(", ")));
        }
        toml.push_str(extra);
        toml.push_str(&format!("run = '''\n{log}\n{body}\n'''\n"));
    };
    step("start", None, "", "sleep 0.01");
    for branch in ["a", "b", "c"] {
        for i in 0..15 {
            let id = format!("{branch}{i}");
            let prev = if i == 0 { "start".to_string() } else { format!("{branch}{}", i - 1) };
            let body = format!("sleep 0.0{}", (i % 4) + 1);
            let extra = if branch == "c" { "services = ['svc']\n" } else { "" };
            step(&id, Some(&[prev.as_str()]), extra, &body);
        }
    }
    step(
        "flaky",
        Some(&["a14", "b14"]),
        "retries = { attempts = 3, backoff = '20ms' }\n",
        "n=$(grep -c '^flaky ' side-effects.log); [ \"$n\" -ge 3 ]",
    );
    step(
        "join",
        Some(&["flaky", "c14"]),
        "gate = { pass = \"steps.join.outputs.v >= 1\" }\n",
        "sleep 0.02; echo v=1 >> \"$RUNNER_OUTPUT\"",
    );
    step("end", None, "", "true");
    toml
}

/// Tiny deterministic generator (no dependency needed for a test's dice).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[derive(Default)]
struct Figures {
    runs: usize,
    service_starts: usize,
    kills: usize,
    starts: usize,
    interrupted: usize,
    executions: usize,
}

#[test]
fn sigkill_soak_loses_nothing_and_repeats_nothing() {
    let cycles: usize = std::env::var("RUNNER_CHAOS_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed: u64 =
        std::env::var("RUNNER_CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("chaos: {cycles} kills, seed {seed} (RUNNER_CHAOS_SEED={seed} replays it)");
    let mut dice = Dice(seed);
    let mut figures = Figures::default();
    let started = Instant::now();
    while figures.kills < cycles {
        let env = Env::new();
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let flow = env.flow("chaos", &chaos_flow(port));
        figures.runs += 1;
        // Kill this run a few times, then let it finish.
        let kills_this_run = 1 + dice.below(5);
        let mut round = 0;
        loop {
            let child = env.spawn(&["run", &flow, "--run-id", "soak", "--jobs", "3"]);
            if round < kills_this_run && figures.kills < cycles {
                std::thread::sleep(Duration::from_millis(dice.below(400)));
                if let Some(status) = kill_or_finished(child) {
                    assert_eq!(status, 0, "run finished with exit code {status}");
                    break;
                }
                figures.kills += 1;
                round += 1;
            } else {
                finish(child, Duration::from_secs(60)).code(0);
                break;
            }
        }
        check_run(&env, &mut figures);
    }
    eprintln!(
        "chaos: {} runs, {} kills, {} attempts started, {} interrupted, {} command executions, {} service starts, \
         {:.1}s — all runs complete, verify clean, one success per step, nothing ran twice after its success, every \
         service start journaled and ended, none left running, live projection == rebuilt",
        figures.runs,
        figures.kills,
        figures.starts,
        figures.interrupted,
        figures.executions,
        figures.service_starts,
        started.elapsed().as_secs_f64()
    );
}

fn check_run(env: &Env, figures: &mut Figures) {
    env.run(&["verify", "--run-id", "soak"]).code(0);
    let journal = env.journal("soak");
    let mut started: HashMap<(String, u64), usize> = HashMap::new();
    let mut success: HashMap<String, (usize, u64)> = HashMap::new();
    for (i, e) in journal.iter().enumerate() {
        let step = e["data"]["step"].as_str().unwrap_or_default().to_string();
        let attempt = e["data"]["attempt"].as_u64().unwrap_or(0);
        match e["type"].as_str() {
            Some("StepStarted") => {
                assert!(!success.contains_key(&step), "step {step} started again after its success");
                started.insert((step, attempt), i);
                figures.starts += 1;
            }
            Some("StepSucceeded") => {
                assert!(success.insert(step.clone(), (i, attempt)).is_none(), "step {step} succeeded twice");
            }
            Some("StepInterrupted") => figures.interrupted += 1,
            _ => {}
        }
        // One receipt per finished attempt, naming the journal's key; none for an
        // interrupted one (a receipt written just before a kill is set aside on resume).
        let ty = e["type"].as_str().unwrap_or_default();
        let ran = !matches!(e["data"]["reason"].as_str(), Some("spawn" | "inputs"));
        if matches!(ty, "StepSucceeded" | "StepFailed" | "StepInterrupted") && ran {
            let d = &e["data"];
            let dir = runner::store::attempt_dir(
                &env.run_dir("soak"),
                d["step"].as_str().unwrap_or_default(),
                d["visit"].as_u64().unwrap_or(1) as u32,
                d["attempt"].as_u64().unwrap_or(1) as u32,
            );
            let receipt = std::fs::read(dir.join("receipt.json")).ok();
            match ty {
                "StepInterrupted" => {
                    assert!(receipt.is_none(), "interrupted attempt in {} has a receipt", dir.display())
                }
                _ => {
                    let r: serde_json::Value =
                        serde_json::from_slice(&receipt.expect("a finished attempt has its receipt"))
                            .expect("json");
                    assert_eq!(r["key"], d["receipt"]["key"], "{}", dir.display());
                }
            }
        }
    }
    let steps = journal[0]["data"]["steps"].as_array().expect("steps").len();
    assert_eq!(success.len(), steps, "every step has exactly one success");
    // Every execution was journaled before it ran, and none came after the step's success.
    for line in env.read("side-effects.log").lines() {
        figures.executions += 1;
        let (step, attempt) = line.split_once(' ').expect("'<step> <attempt>'");
        let attempt: u64 = attempt.parse().expect("attempt number");
        assert!(
            started.contains_key(&(step.to_string(), attempt)),
            "step {step} attempt {attempt} ran without a StepStarted in the journal"
        );
        let (_, won) = success[step];
        assert!(attempt <= won, "step {step} ran attempt {attempt} after attempt {won} succeeded");
    }
    // Every service process ran after its start was journaled, every start has one end,
    // and nothing is left running.
    let starts: Vec<(String, i64)> = journal
        .iter()
        .filter(|e| e["type"] == "ServiceStarted")
        .map(|e| {
            (
                e["data"]["service"].as_str().unwrap_or_default().to_string(),
                e["data"]["instance"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let ends: Vec<(String, i64)> = journal
        .iter()
        .filter(|e| e["type"] == "ServiceExited")
        .map(|e| {
            (
                e["data"]["service"].as_str().unwrap_or_default().to_string(),
                e["data"]["instance"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(starts, ends, "every service start has exactly one end, in order");
    let pids: Vec<i64> = journal
        .iter()
        .filter(|e| e["type"] == "ServiceStarted")
        .filter_map(|e| e["data"]["pid"].as_i64())
        .collect();
    for line in env.read("svc.pids").lines() {
        let pid: i64 = line.trim().parse().expect("pid");
        assert!(pids.contains(&pid), "service pid {pid} ran without a ServiceStarted");
        assert!(!alive(pid as i32), "service pid {pid} outlived its run");
    }
    figures.service_starts += starts.len();
    env.assert_rebuild_matches_live();
}

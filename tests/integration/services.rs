//! Services: real background servers (Python's `http.server`), started for the steps that
//! use them, checked for health, stopped when done, killed, restarted and resumed.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

/// A small HTTP server: records its pid, prints a line in two writes (and the token, if
/// it has one), waits `SLOW` seconds before it listens, and answers every GET.
const SERVER: &str = r#"
import http.server, os, signal, sys, time
port = int(os.environ["PORT"])
with open("srv.pids", "a") as f:
    f.write(f"{os.getpid()}\n")
tok = os.environ.get("API_TOKEN", "")
if tok:
    print("token is", tok, flush=True)
    sys.stdout.write("split " + tok[:5]); sys.stdout.flush(); time.sleep(0.2)
    sys.stdout.write(tok[5:] + "\n"); sys.stdout.flush()
    print("stderr has", tok, file=sys.stderr, flush=True)
sys.stdout.write("part-"); sys.stdout.flush(); time.sleep(0.1); sys.stdout.write("one\n"); sys.stdout.flush()
time.sleep(float(os.environ.get("SLOW", "0")))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if tok and self.headers.get("Authorization") != "Bearer " + tok:
            self.send_response(403); self.end_headers(); return
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok\n")
    def log_message(self, fmt, *args):
        print("served", self.path, flush=True)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// GETs a URL with the token as a bearer header; exits non-zero unless it gets a 200.
const CLIENT: &str = r#"
import os, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + os.environ.get("API_TOKEN", "")})
print(urllib.request.urlopen(req, timeout=5).status)
"#;

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn setup() -> (Env, u16) {
    let env = Env::new();
    env.write("srv.py", SERVER);
    env.write("get.py", CLIENT);
    (env, free_port())
}

fn pids(env: &Env) -> Vec<i32> {
    env.read("srv.pids").lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn of_type<'a>(journal: &'a [serde_json::Value], ty: &str) -> Vec<&'a serde_json::Value> {
    journal.iter().filter(|e| e["type"] == ty).collect()
}

fn position(events: &[String], name: &str) -> usize {
    events.iter().position(|e| e == name).unwrap_or_else(|| panic!("no {name} in {events:?}"))
}

#[test]
fn a_step_waits_for_health_with_backoff_and_the_service_stops_after_its_last_user() {
    let (env, port) = setup();
    let flow = env.flow(
        "f",
        &format!(
            r#"
[services.api]
run = "python3 srv.py"
env = {{ PORT = "{port}", SLOW = "2" }}
health = {{ http = "http://127.0.0.1:{port}/health" }}
interval = "100ms"

[[steps]]
id = "load"
services = ["api"]
run = "python3 get.py http://127.0.0.1:{port}/data"

[[steps]]
id = "report"
services = ["api"]
run = "python3 get.py http://127.0.0.1:{port}/report"

[[steps]]
id = "after"
run = "sleep 0.3"
"#
        ),
    );
    let run = env.run(&["run", &flow, "--run-id", "h"]);
    run.code(0).stderr_has("[api] part-one\n").stderr_has("[api] served /data");
    let journal = env.journal("h");
    let events = env.events("h");
    // Healthy before the first user starts; one start for both users; stopped before `after`
    // ends (its last user is done), and before the run finished.
    assert!(position(&events, "ServiceHealthy") < position(&events, "StepStarted:load"), "{events:?}");
    assert!(position(&events, "ServiceExited") < position(&events, "StepSucceeded:after"), "{events:?}");
    assert_eq!(of_type(&journal, "ServiceStarted").len(), 1, "{events:?}");
    let healthy = &of_type(&journal, "ServiceHealthy")[0]["data"];
    let (checks, after) =
        (healthy["checks"].as_u64().expect("checks"), healthy["after_ms"].as_u64().expect("ms"));
    assert!(after >= 2000, "healthy after {after} ms, before the server listened");
    // At 100 ms without backoff that would be about 20 checks.
    assert!((3..=12).contains(&checks), "{checks} checks in {after} ms: no backoff?");
    let exited = &of_type(&journal, "ServiceExited")[0]["data"];
    assert_eq!(exited["reason"], "stopped", "{exited}");
    // Partial lines are whole in the log, and nothing of the service is left.
    let log = std::fs::read_to_string(env.run_dir("h").join("services/api.log")).expect("log");
    assert!(log.lines().any(|l| l == "part-one"), "{log}");
    assert!(log.contains("served /data") && log.contains("served /report"), "{log}");
    assert!(pids(&env).iter().all(|p| !alive(*p)), "the service outlived the run");
    let status = env.run(&["status", "--run-id", "h"]);
    status.code(0).stdout_has("SERVICE").stdout_has("api").stdout_has("stopped");
    env.run(&["logs", "--run-id", "h", "--service", "api"])
        .code(0)
        .stdout_has("part-one\n")
        .stdout_has("served /data");
    env.run(&["logs", "--run-id", "h"]).code(0).stdout_has("==> service api <==\npart-one");
    env.run(&["logs", "--run-id", "h", "--service", "db"]).code(2).stderr_has("the services it started: api");
    env.assert_rebuild_matches_live();
}

#[test]
fn a_service_never_healthy_fails_the_step_naming_the_check_and_what_it_saw() {
    let (env, port) = setup();
    let dead_port = free_port();
    let flow = env.flow(
        "f",
        &format!(
            r#"
[services.db]
run = "python3 srv.py"
env = {{ PORT = "{port}" }}
health = {{ tcp = "127.0.0.1:{dead_port}" }}
start_timeout = "1s"
interval = "100ms"

[[steps]]
id = "load"
services = ["db"]
run = "touch ran"
"#
        ),
    );
    let run = env.run(&["run", &flow, "--run-id", "n"]);
    run.code(1)
        .stderr_has(&format!("service `db` was not healthy within 1.0s: tcp 127.0.0.1:{dead_port} -> "))
        .stderr_has("refused");
    assert!(!env.path().join("ran").exists(), "the step ran without its service");
    let journal = env.journal("n");
    let failed = &of_type(&journal, "StepFailed")[0]["data"];
    assert_eq!(failed["reason"], "service", "{failed}");
    assert_eq!(of_type(&journal, "StepStarted").len(), 0);
    assert_eq!(of_type(&journal, "ServiceExited")[0]["data"]["reason"], "start_timeout");
    assert!(pids(&env).iter().all(|p| !alive(*p)));
    env.assert_rebuild_matches_live();
}

fn killed_mid_run_flow(env: &Env, port: u16, extra: &str, step_extra: &str) -> String {
    env.flow(
        "f",
        &format!(
            r#"
[services.api]
run = "python3 srv.py"
env = {{ PORT = "{port}" }}
health = {{ http = "http://127.0.0.1:{port}/" }}
interval = "100ms"
{extra}

[[steps]]
id = "work"
services = ["api"]
{step_extra}
run = '''
echo $RUNNER_ATTEMPT >> attempts
if [ "$RUNNER_ATTEMPT" = 1 ]; then touch started; sleep 30; fi
python3 get.py http://127.0.0.1:{port}/
'''
"#
        ),
    )
}

#[test]
fn a_service_killed_mid_run_fails_the_steps_using_it() {
    let (env, port) = setup();
    let flow = killed_mid_run_flow(&env, port, "", "");
    let child = env.spawn(&["run", &flow, "--run-id", "k"]);
    wait_for("the step to start", Duration::from_secs(20), || env.path().join("started").exists());
    let service = pids(&env)[0];
    signal(service as u32, Signal::SIGKILL);
    let run = finish(child, Duration::from_secs(30));
    run.code(1).stderr_has("service `api` was killed by SIGKILL; stopping 1 step(s) that use it");
    let journal = env.journal("k");
    let failed = &of_type(&journal, "StepFailed")[0]["data"];
    assert_eq!(failed["reason"], "service", "{failed}");
    assert!(failed["message"].as_str().unwrap_or_default().contains("while the step ran"), "{failed}");
    let exited = &of_type(&journal, "ServiceExited")[0]["data"];
    assert_eq!((&exited["reason"], &exited["signal"]), (&"died".into(), &"SIGKILL".into()), "{exited}");
    assert_eq!(of_type(&journal, "ServiceStarted").len(), 1, "restart is `never` by default");
    env.run(&["status", "--run-id", "k"]).code(0).stdout_has("died");
    env.assert_rebuild_matches_live();
}

#[test]
fn restart_on_failure_brings_the_service_back_for_the_retry() {
    let (env, port) = setup();
    let flow = killed_mid_run_flow(&env, port, "restart = \"on-failure\"\nmax_restarts = 2", "retries = 1");
    let child = env.spawn(&["run", &flow, "--run-id", "r"]);
    wait_for("the step to start", Duration::from_secs(20), || env.path().join("started").exists());
    signal(pids(&env)[0] as u32, Signal::SIGKILL);
    finish(child, Duration::from_secs(40)).code(0).stderr_has("restarting service `api` (1 of 2)");
    let journal = env.journal("r");
    let starts = of_type(&journal, "ServiceStarted");
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1]["data"]["restart"], 1);
    assert_eq!(env.count("attempts"), 2);
    assert_eq!(pids(&env).len(), 2);
    assert!(pids(&env).iter().all(|p| !alive(*p)));
    env.assert_rebuild_matches_live();
}

#[test]
fn with_degraded_continue_the_steps_go_on_and_the_run_says_so() {
    let (env, port) = setup();
    let flow = env.flow(
        "f",
        &format!(
            r#"
[services.metrics]
run = "python3 srv.py"
env = {{ PORT = "{port}" }}
health = {{ http = "http://127.0.0.1:{port}/" }}
interval = "100ms"
degraded = "continue"

[[steps]]
id = "work"
services = ["metrics"]
run = "touch started; while [ ! -e go ]; do sleep 0.05; done"
"#
        ),
    );
    let child = env.spawn(&["run", &flow, "--run-id", "d"]);
    wait_for("the step to start", Duration::from_secs(20), || env.path().join("started").exists());
    signal(pids(&env)[0] as u32, Signal::SIGKILL);
    wait_for("the death to be journaled", Duration::from_secs(10), || {
        env.events("d").iter().any(|e| e == "ServiceExited")
    });
    env.write("go", "");
    finish(child, Duration::from_secs(30))
        .code(0)
        .stderr_has("the steps using it go on")
        .stderr_has("degraded: service `metrics` died");
    let journal = env.journal("d");
    let exited = &of_type(&journal, "ServiceExited")[0]["data"];
    assert_eq!(exited["degraded"], true, "{exited}");
    env.run(&["status", "--run-id", "d"]).code(0).stdout_has("(degraded: service metrics");
    env.assert_rebuild_matches_live();
}

#[test]
fn ctrl_c_leaves_no_service_behind() {
    let (env, port) = setup();
    let flow = killed_mid_run_flow(&env, port, "", "");
    let child = env.spawn(&["run", &flow, "--run-id", "c"]);
    wait_for("the step to start", Duration::from_secs(20), || env.path().join("started").exists());
    let service = pids(&env)[0];
    assert!(alive(service));
    signal(child.id(), Signal::SIGINT);
    finish(child, Duration::from_secs(30)).code(130);
    assert!(!alive(service), "service pid {service} survived Ctrl+C");
    let journal = env.journal("c");
    let exited = &of_type(&journal, "ServiceExited")[0]["data"];
    assert_eq!(exited["reason"], "stopped", "{exited}");
    let events = env.events("c");
    assert!(position(&events, "ServiceExited") < position(&events, "RunInterrupted"), "{events:?}");
}

#[test]
fn resume_stops_what_a_dead_runner_left_and_restarts_the_services_still_needed() {
    let (env, port) = setup();
    let flow = killed_mid_run_flow(&env, port, "", "");
    let child = env.spawn(&["run", &flow, "--run-id", "x"]);
    wait_for("the step to start", Duration::from_secs(20), || env.path().join("started").exists());
    let first = pids(&env)[0];
    signal(child.id(), Signal::SIGKILL);
    let _ = finish(child, Duration::from_secs(10));
    assert!(alive(first), "the service runs on without its runner (this is what resume must clean up)");
    // The second attempt does not sleep: it calls the restarted service.
    env.run(&["resume", "--run-id", "x"])
        .code(0)
        .stderr_has("service `api` was still running from the previous runner; stopped it");
    assert!(!alive(first));
    let all = pids(&env);
    assert_eq!(all.len(), 2, "one new start for the remaining step");
    assert!(!alive(all[1]));
    let journal = env.journal("x");
    let exits: Vec<&str> = of_type(&journal, "ServiceExited")
        .iter()
        .map(|e| e["data"]["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(exits, ["lost", "stopped"]);
    env.assert_rebuild_matches_live();
}

const TOKEN: &str = "svc-tok-5e6f7a8b9c";

#[test]
fn a_secret_shared_by_a_service_and_a_step_is_never_stored() {
    let (env, port) = setup();
    let flow = env.flow(
        "f",
        &format!(
            r#"
secrets = ["API_TOKEN"]

[services.api]
run = "python3 srv.py"
env = {{ PORT = "{port}" }}
health = {{ tcp = "127.0.0.1:{port}" }}
interval = "100ms"

[[steps]]
id = "call"
services = ["api"]
run = '''
python3 get.py http://127.0.0.1:{port}/
echo "sent $API_TOKEN"
echo "tok=$API_TOKEN" >> "$RUNNER_OUTPUT"
'''
"#
        ),
    );
    env.write("secrets.env", &format!("API_TOKEN={TOKEN}\n"));
    let run = env.run(&["run", &flow, "--run-id", "s", "--env-file", "secrets.env"]);
    run.code(0).stderr_has("[api] token is ***").stderr_has("[api] split ***");
    assert!(!run.stderr.contains(TOKEN));
    let log = std::fs::read_to_string(env.run_dir("s").join("services/api.log")).expect("log");
    assert!(log.contains("stderr has ***") && log.contains("split ***\n"), "{log}");
    let hits: Vec<String> = walkdir::WalkDir::new(env.runs_dir())
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            std::fs::read(e.path()).is_ok_and(|b| b.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()))
        })
        .map(|e| e.path().display().to_string())
        .collect();
    assert!(hits.is_empty(), "the secret is stored in {hits:?}");
    assert!(!env.projection_dump().contains(TOKEN));
}

#[test]
fn bad_service_definitions_and_missing_secrets_change_nothing() {
    let (env, _) = setup();
    let flow = env.flow(
        "bad",
        "[services.api]\nrun = \"python3 srv.py\"\n\n[[steps]]\nid = \"a\"\nservices = [\"apo\"]\nrun = \"true\"\n",
    );
    env.run(&["run", &flow]).code(2).stderr_has("bad.toml:6:13").stderr_has("did you mean `api`");
    let flow = env.flow(
        "sec",
        "[services.api]\nrun = \"python3 srv.py\"\nsecrets = [\"SVC_KEY\"]\n\n[[steps]]\nid = \"a\"\nservices = [\"api\"]\nrun = \"true\"\n",
    );
    let out = env.command(&["run", &flow]).env_remove("SVC_KEY").output().expect("runs");
    Run::from_output(out).code(2).stderr_has("SVC_KEY");
    assert!(env.run_ids().is_empty(), "a refused run leaves no run directory");
    assert!(pids(&env).is_empty(), "nothing started");
}

/// SIGKILL the runner at each commit around a service's start: a service never runs
/// without its `ServiceStarted` in the journal, and a resume brings the run home with no
/// process left over.
#[test]
fn killed_at_each_commit_a_service_never_runs_unjournaled() {
    for point in ["before-commit", "after-commit"] {
        for n in 1..=4 {
            let (env, port) = setup();
            let flow = env.flow(
                "f",
                &format!(
                    r#"
[services.api]
run = "python3 srv.py"
env = {{ PORT = "{port}" }}
health = {{ tcp = "127.0.0.1:{port}" }}
interval = "50ms"

[[steps]]
id = "work"
services = ["api"]
run = "python3 get.py http://127.0.0.1:{port}/"
"#
                ),
            );
            let at = format!("{point}:{n}");
            let out = env
                .command(&["run", &flow, "--run-id", "z"])
                .env(runner::faults::ENV, &at)
                .output()
                .expect("runs");
            let crashed = out.status.code().is_none();
            if env.run_ids().is_empty() {
                continue;
            }
            if crashed {
                env.run(&["resume", "--run-id", "z"]).code(0);
            }
            let journal = env.journal("z");
            let started: Vec<i64> = of_type(&journal, "ServiceStarted")
                .iter()
                .filter_map(|e| e["data"]["pid"].as_i64())
                .collect();
            for pid in pids(&env) {
                assert!(
                    started.contains(&(pid as i64)),
                    "{at}: service pid {pid} ran unjournaled ({started:?})"
                );
                assert!(!alive(pid), "{at}: service pid {pid} left running");
            }
            assert_eq!(of_type(&journal, "StepSucceeded").len(), 1, "{at}");
            env.assert_rebuild_matches_live();
        }
    }
}

#[test]
fn a_step_taken_from_the_cache_starts_no_service() {
    let (env, port) = setup();
    let flow = env.flow(
        "f",
        &format!(
            r#"
[services.api]
run = "python3 srv.py"
env = {{ PORT = "{port}" }}
health = {{ tcp = "127.0.0.1:{port}" }}
interval = "50ms"

[[steps]]
id = "fetch"
services = ["api"]
cache = true
outputs = ["fetched.txt"]
run = "python3 get.py http://127.0.0.1:{port}/ > fetched.txt"
"#
        ),
    );
    env.run(&["run", &flow, "--run-id", "one"]).code(0);
    env.run(&["run", &flow, "--run-id", "two"]).code(0).stderr_has("fetch: cached");
    assert_eq!(of_type(&env.journal("one"), "ServiceStarted").len(), 1);
    assert_eq!(of_type(&env.journal("two"), "ServiceStarted").len(), 0);
    assert_eq!(pids(&env).len(), 1);
}

#[test]
fn a_failing_run_keeps_the_service_for_its_clean_up_step_and_starts_it_once() {
    let (env, port) = setup();
    let flow = env.flow(
        "f",
        &format!(
            r#"
[services.api]
run = "python3 srv.py"
env = {{ PORT = "{port}" }}
health = {{ tcp = "127.0.0.1:{port}" }}
interval = "50ms"

[[steps]]
id = "boom"
run = "exit 1"

[[steps]]
id = "report"
if = "always()"
services = ["api"]
run = "python3 get.py http://127.0.0.1:{port}/ > reported"
"#
        ),
    );
    let child = env.spawn(&["run", &flow, "--run-id", "f"]);
    finish(child, Duration::from_secs(30)).code(1);
    assert_eq!(env.read("reported"), "200\n");
    assert_eq!(of_type(&env.journal("f"), "ServiceStarted").len(), 1);
    env.assert_rebuild_matches_live();
}

#[test]
fn a_service_that_dies_before_it_is_healthy_fails_its_step_even_with_degraded_continue() {
    let (env, port) = setup();
    let flow = env.flow(
        "f",
        &format!(
            r#"
[services.api]
run = ["sh", "-c", "exit 4"]
health = {{ tcp = "127.0.0.1:{port}" }}
degraded = "continue"

[[steps]]
id = "a"
services = ["api"]
run = "touch ran"
"#
        ),
    );
    env.run(&["run", &flow, "--run-id", "e"])
        .code(1)
        .stderr_has("service `api` exited with code 4 before it was healthy");
    assert!(!env.path().join("ran").exists());
    let journal = env.journal("e");
    assert_eq!(of_type(&journal, "StepFailed")[0]["data"]["reason"], "service");
    assert_eq!(of_type(&journal, "ServiceExited")[0]["data"].get("degraded"), None, "not degraded");
}

#[test]
fn a_called_flows_service_gets_its_flows_env_and_parameters() {
    let (env, port) = setup();
    env.write(
        "flows/backend.toml",
        &format!(
            r#"
[params]
mode = {{ default = "default" }}

[env]
PORT = "{port}"

[services.api]
run = ["sh", "-c", "echo \"mode=$RUNNER_PARAM_MODE port=$PORT\"; exec python3 srv.py"]
health = {{ tcp = "127.0.0.1:{port}" }}
interval = "50ms"

[[steps]]
id = "use"
services = ["api"]
run = "python3 get.py http://127.0.0.1:$PORT/"
"#
        ),
    );
    let flow = env.flow(
        "main",
        "[env]\nPORT = \"1\"\n\n[[steps]]\nid = \"be\"\ncall = \"backend\"\nwith = { mode = \"given\" }\n",
    );
    env.run(&["run", &flow, "--run-id", "c"]).code(0).stderr_has("[be/api] mode=given port=");
    let log = std::fs::read_to_string(env.run_dir("c").join("services/be/api.log")).expect("log");
    assert!(log.contains(&format!("mode=given port={port}")), "{log}");
    env.assert_rebuild_matches_live();
}

#[test]
fn on_ctrl_c_services_outlive_the_steps_grace_that_still_use_them() {
    let (env, port) = setup();
    let flow = env.flow(
        "f",
        &format!(
            r#"
[services.api]
run = "python3 srv.py"
env = {{ PORT = "{port}" }}
health = {{ tcp = "127.0.0.1:{port}" }}
interval = "50ms"

[[steps]]
id = "work"
services = ["api"]
run = '''
trap 'sleep 0.3; python3 get.py http://127.0.0.1:{port}/ > final; exit 0' TERM
touch started
sleep 30 & wait
'''
"#
        ),
    );
    let child = env.spawn(&["run", &flow, "--run-id", "g"]);
    wait_for("the step to start", Duration::from_secs(20), || env.path().join("started").exists());
    signal(child.id(), Signal::SIGINT);
    finish(child, Duration::from_secs(30)).code(130);
    assert_eq!(env.read("final"), "200\n", "the service was gone before the step's last call");
    assert!(pids(&env).iter().all(|p| !alive(*p)));
    let journal = env.journal("g");
    assert_eq!(of_type(&journal, "ServiceExited")[0]["data"]["message"], "the run was stopped by SIGINT");
}

#[test]
fn a_step_held_for_its_service_takes_no_job_slot() {
    let (env, port) = setup();
    let flow = env.flow(
        "f",
        &format!(
            r#"
[services.api]
run = "python3 srv.py"
env = {{ PORT = "{port}", SLOW = "1.5" }}
health = {{ tcp = "127.0.0.1:{port}" }}
interval = "50ms"

[[steps]]
id = "a"
services = ["api"]
run = "true"

[[steps]]
id = "b"
needs = []
run = "true"
"#
        ),
    );
    env.run(&["run", &flow, "--run-id", "j", "--jobs", "1"]).code(0);
    let events = env.events("j");
    assert!(position(&events, "StepSucceeded:b") < position(&events, "ServiceHealthy"), "{events:?}");
}

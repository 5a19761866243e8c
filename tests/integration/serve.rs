//! `runner serve`: the real binary on a loopback port, spoken to over raw TCP (so every
//! byte of a request, bad ones included, is ours), runs driven by the real runner.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

/// A `runner serve` child; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(env: &Env, extra: &[&str]) -> Server {
    let mut args = vec!["serve", "--addr", "127.0.0.1:0", "--heartbeat", "300ms"];
    args.extend_from_slice(extra);
    let mut child = env.spawn(&args);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut url = String::new();
    out.read_line(&mut url).expect("serve prints its URL");
    let addr = url.trim().trim_start_matches("http://").trim_end_matches('/').to_string();
    assert!(!addr.is_empty(), "no URL from runner serve");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut token = String::new();
    if !extra.contains(&"--token") {
        let mut line = String::new();
        err.read_line(&mut line).expect("serve prints its token");
        token = line.rsplit(' ').next().unwrap_or_default().trim().to_string();
        assert_eq!(token.len(), 64, "token line: {line}");
    }
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    Server { child, addr, token }
}

/// One HTTP exchange: status, lower-cased headers, body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> String {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// A 4xx/5xx JSON error with this status.
    #[track_caller]
    fn error(&self, status: u16) -> &Resp {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(self.header("content-type").starts_with("application/json"), "{:?}", self.headers);
        let v = self.json();
        assert_eq!(v["error"]["status"], status, "{}", self.body);
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.body);
        self
    }
}

fn raw(addr: &str, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    s.write_all(request).expect("send");
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp { status, headers, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(addr, req.as_bytes())
}

fn get(s: &Server, path: &str) -> Resp {
    request(&s.addr, "GET", path, &[], "")
}

fn post(s: &Server, path: &str, token: Option<&str>, body: &str) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(&s.addr, "POST", path, &headers, body)
}

/// An open event stream.
struct Sse {
    reader: BufReader<TcpStream>,
}

#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<String>,
    event: String,
    data: String,
}

impl Sse {
    fn open(addr: &str, path: &str, last_event_id: Option<&str>) -> Sse {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).expect("send");
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "stream refused: {status}");
        let mut saw_type = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line.to_ascii_lowercase().starts_with("content-type: text/event-stream") {
                saw_type = true;
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        assert!(saw_type, "not an event stream");
        Sse { reader }
    }

    /// The next event (comments skipped), or None at the end of the stream.
    fn next(&mut self) -> Option<SseEvent> {
        let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
        let mut any = false;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if any && !data.is_empty() {
                    return Some(SseEvent { id, event, data });
                }
                any = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (k, v) = line.split_once(':').map(|(k, v)| (k, v.trim_start())).unwrap_or((line, ""));
            any = true;
            match k {
                "id" => id = Some(v.to_string()),
                "event" => event = v.to_string(),
                "data" => data.push_str(v),
                _ => {}
            }
        }
    }

    /// Journal events until one of type `until` (included).
    fn journal_until(&mut self, until: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        // Heartbeats keep a stream alive forever: give up after a while instead of hanging.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(e) = self.next() {
            assert!(Instant::now() < deadline, "no {until} within 60 s; got {out:?}");
            if e.event != "journal" {
                continue;
            }
            let v: Value = serde_json::from_str(&e.data).expect("event data is JSON");
            let done = v["type"] == until;
            out.push((e.id.clone().unwrap_or_default(), v));
            if done {
                return out;
            }
        }
        panic!("stream ended before {until}: {out:?}");
    }
}

const GATED: &str = r##"
[[steps]]
id = "wait-for-go"
run = 'while [ ! -f go ]; do sleep 0.05; done; echo "rows=7" >> "$RUNNER_OUTPUT"; printf "# Report\n\n**done** <b>x</b> [a](javascript:alert(1))\n" > "$RUNNER_HANDOFF"; echo one; echo two; echo three'
[[steps]]
id = "publish"
approval = { message = "Publish?" }
run = 'echo published'
"##;

/// A run paused on approval of `publish` (exit 3).
fn paused_run(env: &Env) -> String {
    env.write("go", "");
    let flow = env.flow("gated", GATED);
    let r = env.run(&["run", &flow]);
    r.code(3);
    r.run_id()
}

fn journal_len(env: &Env, id: &str) -> usize {
    std::fs::read(env.run_dir(id).join("journal.jsonl")).map(|b| b.len()).unwrap_or(0)
}

#[test]
fn health_runs_and_the_run_document() {
    let env = Env::new();
    let hello = env.flow(
        "hello",
        "[[steps]]\nid = \"a\"\nrun = \"echo hi\"\n[[steps]]\nid = \"b\"\nrun = \"echo there\"\n",
    );
    let first = env.run(&["run", &hello]).code(0).run_id();
    let paused = paused_run(&env);
    let s = serve(&env, &[]);

    let h = get(&s, "/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json(), json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}));

    let all = get(&s, "/api/runs").json();
    assert_eq!(all["total"], 2);
    assert_eq!(all["runs"][0]["run_id"], paused.as_str(), "newest first");
    assert_eq!(all["runs"][0]["status"], "waiting");
    assert_eq!(all["runs"][0]["waiting_for_approval"], json!(["publish"]));
    let page = get(&s, "/api/runs?limit=1&offset=1").json();
    assert_eq!(page["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["runs"][0]["run_id"], first.as_str());
    assert_eq!(page["next_offset"], Value::Null);
    assert_eq!(get(&s, "/api/runs?limit=1").json()["next_offset"], 1);
    assert_eq!(get(&s, "/api/runs?flow=hello").json()["total"], 1);
    assert_eq!(get(&s, "/api/runs?flow=flows%2Fhello.toml").json()["total"], 1);
    assert_eq!(get(&s, "/api/runs?status=waiting").json()["runs"][0]["run_id"], paused.as_str());
    assert_eq!(get(&s, "/api/runs?status=failed").json()["total"], 0);
    assert_eq!(get(&s, "/api/runs?since=1h").json()["total"], 2);
    assert_eq!(get(&s, "/api/runs?since=2000-01-01T00:00:00Z").json()["total"], 2);
    assert_eq!(get(&s, "/api/runs?since=2999-01-01T00:00:00Z").json()["total"], 0);
    for bad in [
        "/api/runs?limit=0",
        "/api/runs?limit=501",
        "/api/runs?limit=ten",
        "/api/runs?offset=-1",
        "/api/runs?status=sleeping",
        "/api/runs?since=yesterday-ish",
        "/api/runs?colour=red",
        "/api/runs?flow=%ZZ",
    ] {
        get(&s, bad).error(400);
    }

    let d = get(&s, &format!("/api/runs/{paused}")).json();
    assert_eq!(d["run_id"], paused.as_str());
    assert_eq!(d["status"], "waiting");
    let steps = d["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["step_id"], "wait-for-go");
    assert_eq!(steps[0]["visits"][0]["visit"], 1);
    assert_eq!(steps[0]["visits"][0]["attempts"][0]["status"], "succeeded");
    assert_eq!(steps[0]["outputs"][0]["key"], "rows");
    assert_eq!(steps[0]["outputs"][0]["value"], "7");
    assert!(steps[0]["handoffs"][0]["content_md"].as_str().is_some_and(|m| m.contains("# Report")));
    assert_eq!(d["approvals"][0]["step"], "publish");
    assert_eq!(d["approvals"][0]["status"], "requested");
    assert_eq!(d["approvals"][0]["message"], "Publish?");
    assert_eq!(d["routing_decisions"], json!([]));
    assert_eq!(d["call_stack"], json!([]));
    assert!(d["last_seq"].as_i64().is_some_and(|n| n > 3));

    get(&s, "/api/runs/no-such-run").error(404);
    get(&s, "/api/runs/..%2F..%2Fetc").error(400);
    get(&s, "/api/runs/.hidden").error(400);
    get(&s, "/api/runs/a%00b").error(400);
    get(&s, "/api/runs/projection.sqlite").error(400);
    get(&s, "/api/nothing").error(404);
    request(&s.addr, "DELETE", &format!("/api/runs/{paused}"), &[], "").error(405);

    // Logs: the tail, a range, and where to go on from.
    let base = format!("/api/runs/{paused}/steps/wait-for-go/logs");
    let l = get(&s, &base).json();
    assert_eq!(l["text"], "one\ntwo\nthree\n");
    assert_eq!((l["visit"].as_i64(), l["attempt"].as_i64()), (Some(1), Some(1)));
    assert_eq!(l["running"], false);
    assert_eq!(get(&s, &format!("{base}?tail=2")).json()["text"], "two\nthree\n");
    let r = get(&s, &format!("{base}?offset=4&limit=4")).json();
    assert_eq!(
        (r["text"].as_str(), r["next_offset"].as_i64(), r["size"].as_i64()),
        (Some("two\n"), Some(8), Some(14))
    );
    assert_eq!(get(&s, &format!("{base}?offset=99")).json()["text"], "");
    assert_eq!(get(&s, &format!("{base}?stream=stderr&attempt=1&visit=1")).json()["text"], "");
    get(&s, &format!("{base}?attempt=2")).error(404);
    get(&s, &format!("{base}?tail=2&offset=0")).error(400);
    get(&s, &format!("{base}?limit=5")).error(400);
    get(&s, &format!("{base}?stream=stdin")).error(400);
    get(&s, &format!("/api/runs/{paused}/steps/nope/logs")).error(404);
    get(&s, &format!("/api/runs/{paused}/steps/publish/logs")).error(404); // not run yet
    get(&s, &format!("/api/runs/{paused}/steps/..%2F..%2F..%2Fetc/logs")).error(400);
    get(&s, &format!("/api/runs/{paused}/steps/../../journal.jsonl/logs")).error(400);
}

#[test]
fn actions_need_the_token_and_change_nothing_without_it() {
    let env = Env::new();
    let id = paused_run(&env);
    let s = serve(&env, &[]);
    let approve = format!("/api/runs/{id}/steps/publish/approve");
    let before = journal_len(&env, &id);

    post(&s, &approve, None, "{}").error(401);
    post(&s, &approve, Some("not-the-token"), "{}").error(401);
    let wrong_scheme =
        request(&s.addr, "POST", &approve, &[("Authorization", &format!("Basic {}", s.token))], "{}");
    wrong_scheme.error(401);
    assert!(wrong_scheme.header("www-authenticate").starts_with("Bearer"));
    post(&s, &format!("/api/runs/{id}/steps/publish/reject"), None, "{}").error(401);
    post(&s, &format!("/api/runs/{id}/cancel"), None, "{}").error(401);
    post(&s, &format!("/api/runs/{id}/resume"), None, "{}").error(401);
    assert_eq!(journal_len(&env, &id), before, "a refused request changed the journal");

    // With the token, bad input is still refused, and changes nothing.
    let t = Some(s.token.as_str());
    post(&s, &approve, t, "{not json").error(400);
    post(&s, &approve, t, "[1]").error(400);
    post(&s, &approve, t, r#"{"by": 3}"#).error(400);
    post(&s, &approve, t, r#"{"verdict": "yes"}"#).error(400);
    post(&s, &approve, t, &format!(r#"{{"comment": "{}"}}"#, "x".repeat(70_000))).error(413);
    post(&s, &format!("/api/runs/{id}/steps/nope/approve"), t, "{}").error(404);
    post(&s, "/api/runs/nope/steps/publish/approve", t, "{}").error(404);
    post(&s, &format!("/api/runs/{id}/steps/wait-for-go/approve"), t, "{}").error(409);
    post(&s, &format!("/api/runs/{id}/cancel"), t, "{}").error(409); // not live
    assert_eq!(journal_len(&env, &id), before);

    let r = post(&s, &approve, t, r#"{"by": "alice", "comment": "looks good", "resume": true}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!((v["decision"].as_str(), v["by"].as_str()), (Some("approved"), Some("alice")));
    wait_for("the resumed run to succeed", Duration::from_secs(30), || {
        get(&s, &format!("/api/runs/{id}")).json()["status"] == "succeeded"
    });
    let d = get(&s, &format!("/api/runs/{id}")).json();
    assert_eq!(d["approvals"][0]["status"], "approved");
    assert_eq!(d["approvals"][0]["decided_by"], "alice");
    assert_eq!(d["approvals"][0]["comment"], "looks good");
    assert_eq!(get(&s, &format!("/api/runs/{id}/steps/publish/logs")).json()["text"], "published\n");
    post(&s, &approve, t, "{}").error(409); // nothing waits any more
    let again = post(&s, &format!("/api/runs/{id}/resume"), t, "");
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["exit_code"], 0);
}

#[test]
fn a_token_from_the_environment_or_flag_and_no_open_network_without_one() {
    let env = Env::new();
    let r = env.run(&["serve", "--addr", "0.0.0.0:0"]);
    r.code(2).stderr_has("without a token");
    let mut c = env.command(&["serve", "--addr", "127.0.0.1:0", "--heartbeat", "1s"]);
    c.env("RUNNER_TOKEN", "");
    let out = c.output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "an empty token is refused");
    env.run(&["serve", "--addr", "127.0.0.1:0", "--heartbeat", "0s"]).code(2).stderr_has("--heartbeat");

    let id = paused_run(&env);
    let s = serve(&env, &["--token", "s3cret-t0ken"]);
    post(&s, &format!("/api/runs/{id}/steps/publish/reject"), Some("wrong"), "{}").error(401);
    let r = post(
        &s,
        &format!("/api/runs/{id}/steps/publish/reject"),
        Some("s3cret-t0ken"),
        r#"{"comment":"no"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["decision"], "rejected");
    assert!(env.events(&id).contains(&"ApprovalDecided:publish".to_string()));

    // A page elsewhere cannot rebind its name to this port and read the API.
    let evil = request(&s.addr, "GET", "/api/runs", &[], "");
    assert_eq!(evil.status, 200);
    let rebound =
        raw(&s.addr, b"GET /api/runs HTTP/1.1\r\nHost: attacker.example:8700\r\nConnection: close\r\n\r\n");
    rebound.error(421);
}

#[test]
fn events_stream_live_and_resume_after_last_event_id() {
    let env = Env::new();
    let flow = env.flow("gated", GATED);
    let s = serve(&env, &[]);
    let mut global = Sse::open(&s.addr, "/api/events", None);
    let run = env.spawn(&["run", &flow, "--run-id", "live-one"]);
    wait_for("the run to start", Duration::from_secs(20), || {
        env.run_dir("live-one").join("journal.jsonl").exists()
    });
    let mut one = Sse::open(&s.addr, "/api/runs/live-one/events?after=0", None);
    std::thread::sleep(Duration::from_millis(300));
    env.write("go", "");
    let events = one.journal_until("ApprovalRequested");
    let got = finish(run, Duration::from_secs(30));
    got.code(3);

    // Everything the journal has, in order, once, with seq as the id.
    let journal = env.journal("live-one");
    let upto = events.len();
    let want: Vec<(u64, String)> = journal[..upto]
        .iter()
        .map(|r| (r["seq"].as_u64().unwrap_or(0), r["type"].as_str().unwrap_or("").into()))
        .collect();
    let seen: Vec<(u64, String)> = events
        .iter()
        .map(|(_, v)| (v["seq"].as_u64().unwrap_or(0), v["type"].as_str().unwrap_or("").into()))
        .collect();
    assert_eq!(seen, want);
    for (id, v) in &events {
        assert_eq!(id, &v["seq"].to_string());
        assert_eq!(v["run_id"], "live-one");
    }
    assert!(events.iter().any(|(_, v)| v["type"] == "StepSucceeded" && v["step"] == "wait-for-go"));

    // The global stream saw the same events, with ids that resume across runs.
    let all = global.journal_until("ApprovalRequested");
    assert_eq!(all.len(), events.len());
    assert!(all[0].0.ends_with("|live-one|1"), "{}", all[0].0);

    // A browser that lost the connection after the second event gets the rest.
    let mut again = Sse::open(&s.addr, "/api/runs/live-one/events", Some(&events[1].0));
    let rest = again.journal_until("ApprovalRequested");
    let rest_seqs: Vec<u64> = rest.iter().map(|(_, v)| v["seq"].as_u64().unwrap_or(0)).collect();
    assert_eq!(rest_seqs, (3..=upto as u64).collect::<Vec<_>>());
    // Last-Event-ID wins over the page's `after` (a reconnect repeats the URL).
    let mut hdr = Sse::open(&s.addr, "/api/runs/live-one/events?after=0", Some(&events[upto - 2].0));
    assert_eq!(hdr.journal_until("ApprovalRequested").len(), 1);
    let mut g = Sse::open(&s.addr, "/api/events", Some(&all[2].0));
    let g_rest = g.journal_until("ApprovalRequested");
    assert_eq!(g_rest.first().map(|(_, v)| v["seq"].as_u64()), Some(Some(4)));
    assert_eq!(g_rest.len(), upto - 3);

    // Idle streams get heartbeats (every 300ms here).
    let start = Instant::now();
    let hb = loop {
        let e = again.next().expect("stream stays open");
        if e.event == "heartbeat" {
            break e;
        }
    };
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(serde_json::from_str::<Value>(&hb.data).is_ok());

    // Approving through the API: the events of the resumed run arrive on the open stream.
    let r = post(&s, "/api/runs/live-one/steps/publish/approve", Some(&s.token), r#"{"resume": true}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let tail = again.journal_until("RunFinished");
    assert!(tail.iter().any(|(_, v)| v["type"] == "ApprovalDecided"));
    assert_eq!(tail.last().map(|(_, v)| v["data"]["outcome"].clone()), Some(json!("succeeded")));

    get(&s, "/api/runs/live-one/events?after=abc").error(400);
    raw(
        &s.addr,
        b"GET /api/events HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: garbage\r\nConnection: close\r\n\r\n",
    )
    .error(400);
    get(&s, "/api/runs/nope/events").error(404);
}

#[test]
fn cancel_through_the_api_stops_a_live_run() {
    let env = Env::new();
    let flow = env.flow("slow", "[[steps]]\nid = \"sleep\"\nrun = \"echo started; sleep 30\"\n");
    let s = serve(&env, &[]);
    let run = env.spawn(&["run", &flow, "--run-id", "slow-one"]);
    wait_for("the step to start", Duration::from_secs(20), || {
        env.read("runs/slow-one/steps/sleep/1/stdout.log").contains("started")
    });
    let live = get(&s, "/api/runs/slow-one/steps/sleep/logs").json();
    assert_eq!(live["running"], true);
    assert_eq!(get(&s, "/api/runs/slow-one").json()["status"], "running");
    let r = post(&s, "/api/runs/slow-one/cancel", Some(&s.token), r#"{"by": "ops"}"#);
    assert_eq!(r.status, 202, "{}", r.body);
    let out = finish(run, Duration::from_secs(30));
    assert_eq!(out.code, 143, "{}", out.stderr);
    let journal = env.journal("slow-one");
    assert!(
        journal.iter().any(|r| r["type"] == "RunInterrupted" && r["data"]["cancelled_by"] == "ops"),
        "{journal:?}"
    );
    assert_eq!(get(&s, "/api/runs/slow-one").json()["status"], "interrupted");
}

#[test]
fn pages_render_escape_and_survive_bad_input() {
    let env = Env::new();
    let id = paused_run(&env);
    let s = serve(&env, &[]);
    let home = get(&s, "/");
    assert_eq!(home.status, 200);
    assert!(home.header("content-type").starts_with("text/html"));
    assert!(home.header("content-security-policy").contains("script-src 'self'"));
    assert!(home.body.contains(&format!("href=\"/runs/{id}\"")));
    assert!(home.body.contains("badge s-waiting"));
    assert!(home.body.contains("aria-label=\"Filter runs\""));
    assert!(get(&s, "/?status=succeeded&partial=1").body.contains("No runs match"));
    let bad = get(&s, "/?status=sleeping");
    assert_eq!(bad.status, 400);
    assert!(bad.header("content-type").starts_with("text/html") && bad.body.contains("unknown status"));

    let page = get(&s, &format!("/runs/{id}"));
    assert_eq!(page.status, 200);
    let b = &page.body;
    assert!(
        b.contains("<h1 id=\"report\">Report</h1>") || b.contains("<h1>Report</h1>"),
        "markdown rendered"
    );
    assert!(b.contains("<strong>done</strong>"));
    assert!(b.contains("&lt;b&gt;x&lt;/b&gt;"), "raw HTML in a handoff is text");
    assert!(!b.contains("javascript:"), "unsafe links are dropped");
    assert!(b.contains("aria-label=\"Approve publish\"") && b.contains("aria-label=\"Reject publish\""));
    assert!(b.contains(&format!("data-stream=\"/api/runs/{id}/events?after=")));
    let missing = get(&s, "/runs/no-such-run");
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("No such run"));
    assert_eq!(get(&s, "/static/app.js").status, 200);
    get(&s, "/static/..%2F..%2FCargo.toml").error(404);

    // Garbage on the wire: the server answers or hangs up, and stays up.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET /health\r\n\r\n",
        b"GET /api/runs HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n",
        b"POST /api/runs/x/cancel HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999999\r\n\r\nabc",
        b"GET /%%%% HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ] {
        let mut c = TcpStream::connect(&s.addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = c.write_all(junk);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    assert_eq!(get(&s, "/health").status, 200);
}

/// Every route the OpenAPI document names answers with a status and content type it
/// documents for it, and the document names every route the server has.
#[test]
fn the_openapi_document_matches_what_is_served() {
    let env = Env::new();
    let id = paused_run(&env);
    let s = serve(&env, &[]);
    let doc = get(&s, "/api/openapi.json").json();
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().expect("operations") {
            let url = path.replace("{id}", &id).replace("{step}", "publish");
            let url = if url.contains("/logs") { url.replace("publish", "wait-for-go") } else { url };
            let method = method.to_uppercase();
            let mut tries: Vec<(Option<&str>, &str)> = vec![(None, "{}")];
            if op.get("security").is_some() {
                tries.push((Some(s.token.as_str()), "{}"));
            }
            for (token, body) in tries {
                let (status, ctype) = if url.ends_with("events") {
                    let mut c = TcpStream::connect(&s.addr).expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                    c.write_all(format!("GET {url} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
                        .expect("send");
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let r = parse(&head);
                    (r.status, r.header("content-type"))
                } else if method == "POST" {
                    let r = post(&s, &url, token, body);
                    (r.status, r.header("content-type"))
                } else {
                    let r = get(&s, &url);
                    (r.status, r.header("content-type"))
                };
                let documented = &op["responses"][status.to_string()];
                assert!(
                    !documented.is_null(),
                    "{method} {url} answered {status}, which {path} does not document"
                );
                let content = if let Some(r) = documented["$ref"].as_str() {
                    let name = r.rsplit('/').next().unwrap_or_default();
                    doc["components"]["responses"][name]["content"].clone()
                } else {
                    documented["content"].clone()
                };
                let types: Vec<&String> = content.as_object().map(|c| c.keys().collect()).unwrap_or_default();
                assert!(
                    types.iter().any(|t| ctype.starts_with(t.as_str())),
                    "{method} {url} answered {ctype}, documented {types:?}"
                );
                if token.is_none() && op.get("security").is_some() {
                    assert_eq!(status, 401, "{method} {url} without a token");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 14, "only {checked} checks");
    // Routes the server has are documented.
    for route in [
        "/health",
        "/api/openapi.json",
        "/api/runs",
        "/api/runs/{id}",
        "/api/runs/{id}/steps/{step}/logs",
        "/api/runs/{id}/steps/{step}/approve",
        "/api/runs/{id}/steps/{step}/reject",
        "/api/runs/{id}/cancel",
        "/api/runs/{id}/resume",
        "/api/events",
        "/api/runs/{id}/events",
    ] {
        assert!(paths.contains_key(route), "{route} is served but not documented");
    }
}

/// Threads of a process (to see that closed streams give theirs back).
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn two_hundred_streams_disconnects_and_a_bounded_load() {
    let env = Env::new();
    let flow = env
        .flow("quick", "[[steps]]\nid = \"a\"\nrun = \"echo a\"\n[[steps]]\nid = \"b\"\nrun = \"echo b\"\n");
    let s = serve(&env, &[]);
    let pid = s.child.id();
    let idle_threads = threads(pid);
    const CLIENTS: usize = 200;
    let t0 = Instant::now();
    let mut streams: Vec<Sse> = (0..CLIENTS).map(|_| Sse::open(&s.addr, "/api/events", None)).collect();
    let connect_time = t0.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let t1 = Instant::now();
    env.run(&["run", &flow, "--run-id", "for-all"]).code(0);
    // Every client gets every event of the run, in order.
    let expected = env.journal("for-all").len();
    let handles: Vec<_> = streams
        .drain(..)
        .map(|mut sse| std::thread::spawn(move || sse.journal_until("RunFinished").len()))
        .collect();
    let counts: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap_or(0)).collect();
    let fanout_time = t1.elapsed();
    assert!(counts.iter().all(|c| *c == expected), "{counts:?} (want {expected} each)");

    // Clients that vanish mid-stream (some mid-request) cost nothing lasting.
    for i in 0..50 {
        let mut c = TcpStream::connect(&s.addr).expect("connect");
        let req = if i % 2 == 0 {
            "GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n"
        } else {
            "GET /api/runs/for-all/ev"
        };
        let _ = c.write_all(req.as_bytes());
        drop(c);
    }
    wait_for("stream threads to end after their clients left", Duration::from_secs(20), || {
        threads(pid) <= idle_threads + 12
    });

    // A bounded load of ordinary requests beside a few open streams.
    let _open: Vec<Sse> = (0..20).map(|_| Sse::open(&s.addr, "/api/events", None)).collect();
    const REQUESTS: usize = 2000;
    let t2 = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let addr = s.addr.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                for i in 0..REQUESTS / 8 {
                    let path = match (w + i) % 3 {
                        0 => "/health".to_string(),
                        1 => "/api/runs?limit=5".to_string(),
                        _ => "/api/runs/for-all".to_string(),
                    };
                    if request(&addr, "GET", &path, &[], "").status == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = workers.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let load_time = t2.elapsed();
    assert_eq!(ok, REQUESTS);
    eprintln!(
        "serve load: {CLIENTS} SSE clients connected in {connect_time:?}, each got all {expected} events of a run in \
         {fanout_time:?}; {REQUESTS} requests in {load_time:?} ({:.0} req/s) with 20 streams open; threads idle {idle_threads}",
        REQUESTS as f64 / load_time.as_secs_f64()
    );
    assert_eq!(get(&s, "/health").status, 200);
}

/// The dashboard in a real browser: Debian's headless Chromium driven by playwright-core.
#[test]
fn dashboard_in_headless_chromium() {
    let Some(node_modules) = browser_ready() else { return };
    let env = Env::new();
    let flow = env.flow(
        "demo",
        r##"description = "A run watched from the dashboard"
[[steps]]
id = "prepare"
run = 'while [ ! -f go ]; do sleep 0.1; done; for i in 1 2 3; do echo "preparing $i"; sleep 0.2; done; echo "rows=42" >> "$RUNNER_OUTPUT"; printf "# Plan\n\nShip **42 rows**.\n" > "$RUNNER_HANDOFF"'
[[steps]]
id = "review"
needs = []
run = 'echo reviewed'
[[steps]]
id = "publish"
needs = ["prepare", "review"]
approval = { message = "Publish 42 rows?" }
run = 'echo published'
"##,
    );
    let s = serve(&env, &[]);
    let run = env.spawn(&["run", &flow, "--run-id", "demo-run"]);
    wait_for("the run to start", Duration::from_secs(20), || {
        env.run_dir("demo-run").join("journal.jsonl").exists()
    });
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("serve-e2e");
    let _ = std::fs::create_dir_all(&shots);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/serve.mjs");
    let out = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &node_modules)
        .env("SERVE_URL", format!("http://{}/", s.addr))
        .env("SERVE_TOKEN", &s.token)
        .env("RUN_ID", "demo-run")
        .env("GO_FILE", env.path().join("go"))
        .env("SHOTS", &shots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser test failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("E2E OK"), "{stdout}");
    let _ = finish(run, Duration::from_secs(30));
    let d = get(&s, "/api/runs/demo-run").json();
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["approvals"][0]["decided_by"], "e2e");
    for name in ["runs-live.png", "run-waiting.png", "run-succeeded.png", "run-phone.png"] {
        assert!(shots.join(name).exists(), "no screenshot {name}");
    }
}

/// Chromium and playwright-core, installed when missing and we may (root with apt, npm):
/// the path of the node_modules to use, or None with a loud SKIPPED on a machine that
/// cannot have them.
fn browser_ready() -> Option<std::path::PathBuf> {
    let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let modules = e2e.join("node_modules");
    let root = nix::unistd::geteuid().is_root();
    let have = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !std::path::Path::new("/usr/bin/chromium").exists() && root && have("apt-get") {
        let _ = Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null"])
            .status();
    }
    if !have("npm") && root && have("apt-get") {
        let _ = Command::new("sh")
            .args(["-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null"])
            .status();
    }
    if !modules.join("playwright-core").exists() && have("npm") {
        let _ = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&e2e).status();
    }
    let missing: Vec<&str> = [
        (!std::path::Path::new("/usr/bin/chromium").exists())
            .then_some("/usr/bin/chromium (apt-get install chromium)"),
        (!have("node")).then_some("node"),
        (!modules.join("playwright-core").exists()).then_some("playwright-core (cd tests/e2e && npm ci)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some(modules);
    }
    if root {
        panic!("the browser test needs {} and could not install it", missing.join(", "));
    }
    eprintln!(
        "SKIPPED serve::dashboard_in_headless_chromium: missing {} and not root, so it cannot be installed here",
        missing.join(", ")
    );
    None
}

#[test]
fn routing_decisions_visits_and_the_call_stack() {
    let env = Env::new();
    let loop_flow = env.flow(
        "loop",
        r#"
[[steps]]
id = "review"
max_visits = 2
run = 'echo "visit $RUNNER_VISIT"; if [ "$RUNNER_VISIT" = 1 ]; then echo verdict=fail; else echo verdict=pass; fi >> "$RUNNER_OUTPUT"'
next = [ { if = "steps.review.outputs.verdict == 'fail'", goto = "review" }, { goto = "publish" } ]
[[steps]]
id = "publish"
needs = ["review"]
run = "echo pub"
"#,
    );
    env.run(&["run", &loop_flow, "--run-id", "looped"]).code(0);
    env.flow(
        "reset",
        "[[steps]]\nid = \"wipe\"\nrun = 'echo wiped'\n[[steps]]\nid = \"check\"\nrun = 'test ! -e break-check'\n",
    );
    let main = env.flow(
        "main",
        "[[steps]]\nid = \"reset\"\ncall = \"reset\"\n[[steps]]\nid = \"use\"\nrun = 'echo use'\n",
    );
    env.write("break-check", "");
    env.run(&["run", &main, "--run-id", "called"]).code(1);
    let s = serve(&env, &[]);

    let d = get(&s, "/api/runs/looped").json();
    let routes = d["routing_decisions"].as_array().expect("routes");
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!((routes[0]["chosen"].as_str(), routes[0]["visit"].as_i64()), (Some("review"), Some(1)));
    assert_eq!((routes[1]["chosen"].as_str(), routes[1]["visit"].as_i64()), (Some("publish"), Some(2)));
    assert_eq!(routes[1]["candidate_count"], 2);
    let review = &d["steps"][0];
    assert_eq!(review["visit"], 2);
    assert_eq!(review["visits"].as_array().map(Vec::len), Some(2));
    assert_eq!(get(&s, "/api/runs/looped/steps/review/logs?visit=1").json()["text"], "visit 1\n");
    assert_eq!(get(&s, "/api/runs/looped/steps/review/logs").json()["text"], "visit 2\n");
    let page = get(&s, "/runs/looped").body;
    assert!(page.contains("Routing decisions") && page.contains("review#2"), "routes on the page");

    let c = get(&s, "/api/runs/called").json();
    assert_eq!(c["status"], "failed");
    assert_eq!(c["call_stack"].as_array().map(Vec::len), Some(1), "{c}");
    assert_eq!(c["call_stack"][0]["caller_step"], "reset");
    assert_eq!(c["call_stack"][0]["frame"], 1);
    let ids: Vec<&str> =
        c["steps"].as_array().into_iter().flatten().filter_map(|s| s["step_id"].as_str()).collect();
    assert!(ids.contains(&"reset/wipe") && ids.contains(&"reset/check"), "{ids:?}");
    // A sub-flow step's logs: its id as two path segments or with %2F.
    assert_eq!(get(&s, "/api/runs/called/steps/reset/wipe/logs").json()["text"], "wiped\n");
    assert_eq!(get(&s, "/api/runs/called/steps/reset%2Fwipe/logs").json()["text"], "wiped\n");
    get(&s, "/api/runs/called/steps/reset/../wipe/logs").error(400);
    let page = get(&s, "/runs/called").body;
    assert!(page.contains("Call stack") && page.contains("frame 1"), "the stack on the page");
}

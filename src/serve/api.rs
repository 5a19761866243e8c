//! The JSON API: runs and steps from the projection, logs from the run directory, and
//! the actions that change a run, done by the runner's own commands in a child process.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Ctx;
use super::http::{ApiError, Outcome, Query, body_fields, json_body, json_ok, json_reply};
use crate::commands::status::step::detail;
use crate::commands::status::{ListFilter, list_json, run_json};
use crate::projection::Projection;
use crate::store::{attempt_dir, is_locked, live_lock_holders};

/// Statuses a run list can be filtered by (as `runner status --status`).
pub const RUN_STATUSES: [&str; 7] =
    ["running", "succeeded", "failed", "interrupted", "waiting", "paused", "crashed"];
/// Largest page of runs.
const MAX_LIMIT: u64 = 500;
/// Largest slice of a log in one answer.
const MAX_LOG_BYTES: u64 = 1 << 20;
/// How long an approve may take (it waits up to 30 s for a live runner to take it).
const DECIDE_TIMEOUT: Duration = Duration::from_secs(45);

/// `GET /health`
pub fn health(q: Query) -> Result<Outcome, ApiError> {
    q.finish()?;
    json_ok(&json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// The OpenAPI document of this API (kept beside the code; a test calls every route in it).
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`
pub fn openapi(q: Query) -> Result<Outcome, ApiError> {
    q.finish()?;
    let mut doc: Value = serde_json::from_str(OPENAPI).map_err(|e| ApiError::internal(&e.to_string()))?;
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    json_ok(&doc)
}

/// The projection, caught up enough to answer (a new one is filled first).
pub fn projection(ctx: &Ctx) -> Result<Projection, ApiError> {
    let mut p = Projection::open_with(&ctx.runs, Duration::from_secs(10))?;
    if p.is_fresh() {
        p.rebuild()?;
    }
    Ok(p)
}

/// A page of runs, newest first, and how many match in all.
pub struct RunPage {
    pub runs: Vec<Value>,
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
    /// Every flow that has runs, for the filter.
    pub flows: Vec<String>,
}

/// The list filters `/api/runs` and the runs page share.
pub fn run_page(ctx: &Ctx, q: &mut Query) -> Result<RunPage, ApiError> {
    let flow = q.take("flow");
    let status = q.take("status");
    if let Some(s) = &status
        && !RUN_STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::bad_request(&format!(
            "unknown status {s:?}: use one of {}",
            RUN_STATUSES.join(", ")
        )));
    }
    let since = q.take("since").map(|s| since_ts(&s)).transpose()?;
    let limit = q.take_num("limit", 1..=MAX_LIMIT)?.unwrap_or(50) as usize;
    let offset = q.take_num("offset", 0..=u32::MAX as u64)?.unwrap_or(0) as usize;
    let mut p = projection(ctx)?;
    p.catch_up()?;
    let filter = ListFilter { waiting: false, flow, since, status };
    let mut all = list_json(&ctx.runs, &p, &filter)?;
    all.reverse();
    let total = all.len();
    let runs: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    let mut stmt = p.connection().prepare("SELECT DISTINCT flow FROM runs ORDER BY flow")?;
    let flows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(RunPage { runs, total, limit, offset, flows })
}

/// `since`: a duration back from now (`2d`, `12h`) or a timestamp (`2026-11-21T00:00:00Z`).
fn since_ts(s: &str) -> Result<String, ApiError> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(crate::journal::ts_of(t));
    }
    let d = crate::flow::parse_duration_arg(s).map_err(|e| {
        ApiError::bad_request(&format!("`since`: {e}, or a timestamp like 2026-11-21T00:00:00Z"))
    })?;
    let from = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(jiff::Timestamp::MIN);
    Ok(crate::journal::ts_of(from))
}

/// `GET /api/runs`
pub fn list_runs(ctx: &Ctx, mut q: Query) -> Result<Outcome, ApiError> {
    let page = run_page(ctx, &mut q)?;
    q.finish()?;
    let next = page.offset + page.runs.len();
    json_ok(&json!({
        "runs": page.runs, "total": page.total, "limit": page.limit, "offset": page.offset,
        "next_offset": if next < page.total { Some(next) } else { None },
    }))
}

/// Everything about one run: its row, its steps with their visits, attempts, outputs,
/// handoffs, gates and approvals, the routing decisions and the call stack.
pub fn run_document(ctx: &Ctx, id: &str) -> Result<Value, ApiError> {
    ctx.runs.existing(id)?;
    let mut p = projection(ctx)?;
    p.sync_run_if_behind(id)?;
    let mut v = run_json(&ctx.runs, &p, id)?;
    let conn = p.connection();
    if let Some(steps) = v["steps"].as_array_mut() {
        for s in steps {
            let step_id = s["step_id"].as_str().unwrap_or_default().to_string();
            let d = detail(conn, id, &step_id)?;
            let mut visits: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
            for a in d["history"].as_array().into_iter().flatten() {
                visits.entry(a["visit"].as_i64().unwrap_or(1)).or_default().push(a.clone());
            }
            s["visits"] = visits
                .into_iter()
                .map(|(visit, attempts)| json!({"visit": visit, "attempts": attempts}))
                .collect();
            for key in ["outputs", "handoffs", "gates", "approvals", "receipts"] {
                s[key] = d[key].clone();
            }
            s["routes"] = d["routes"].clone();
        }
    }
    let mut stmt = conn.prepare(
        "SELECT seq, step_id, visit, attempt, routing_source, rule, chosen, candidate_count, candidates,
                candidate_set_path, reset, failure, decided_at
         FROM routing_decisions WHERE run_id = ?1 ORDER BY seq",
    )?;
    let list = |text: Option<String>| text.and_then(|c| serde_json::from_str::<Value>(&c).ok());
    let routes: Vec<Value> = stmt
        .query_map([id], |r| {
            Ok(json!({
                "seq": r.get::<_, i64>(0)?, "step": r.get::<_, String>(1)?, "visit": r.get::<_, i64>(2)?,
                "attempt": r.get::<_, i64>(3)?, "routing_source": r.get::<_, String>(4)?,
                "rule": r.get::<_, Option<i64>>(5)?, "chosen": r.get::<_, Option<String>>(6)?,
                "candidate_count": r.get::<_, i64>(7)?, "candidates": list(r.get(8)?),
                "candidate_set_path": r.get::<_, Option<String>>(9)?,
                "reset": list(r.get(10)?).unwrap_or_else(|| json!([])),
                "failure": r.get::<_, Option<String>>(11)?, "decided_at": r.get::<_, String>(12)?,
            }))
        })?
        .collect::<Result<_, _>>()?;
    v["routing_decisions"] = json!(routes);
    let mut stmt = conn.prepare(
        "SELECT frame, caller_step, visit, reason, flow, params, then_action, pushed_at, returned_at
         FROM frames WHERE run_id = ?1 ORDER BY frame",
    )?;
    let frames: Vec<Value> = stmt
        .query_map([id], |r| {
            let params: String = r.get(5)?;
            Ok(json!({
                "frame": r.get::<_, i64>(0)?, "caller_step": r.get::<_, String>(1)?,
                "visit": r.get::<_, i64>(2)?, "reason": r.get::<_, String>(3)?, "flow": r.get::<_, String>(4)?,
                "params": serde_json::from_str::<Value>(&params).unwrap_or_default(),
                "then": r.get::<_, Option<String>>(6)?, "pushed_at": r.get::<_, String>(7)?,
                "returned_at": r.get::<_, Option<String>>(8)?,
            }))
        })?
        .collect::<Result<_, _>>()?;
    v["call_stack"] = frames.iter().filter(|f| f["returned_at"].is_null()).cloned().collect();
    v["frames"] = json!(frames);
    let mut stmt = conn.prepare(
        "SELECT step_id, visit, status, message, approvers, decided_by, decided_at, comment, requested_at
         FROM approvals WHERE run_id = ?1 ORDER BY seq",
    )?;
    let approvals: Vec<Value> = stmt
        .query_map([id], |r| {
            Ok(json!({
                "step": r.get::<_, String>(0)?, "visit": r.get::<_, i64>(1)?, "status": r.get::<_, String>(2)?,
                "message": r.get::<_, Option<String>>(3)?, "approvers": list(r.get(4)?),
                "decided_by": r.get::<_, Option<String>>(5)?, "decided_at": r.get::<_, Option<String>>(6)?,
                "comment": r.get::<_, Option<String>>(7)?, "requested_at": r.get::<_, String>(8)?,
            }))
        })?
        .collect::<Result<_, _>>()?;
    v["approvals"] = json!(approvals);
    let last_seq: i64 = conn.query_row("SELECT last_seq FROM runs WHERE run_id = ?1", [id], |r| r.get(0))?;
    v["last_seq"] = json!(last_seq);
    Ok(v)
}

/// `GET /api/runs/{id}`
pub fn get_run(ctx: &Ctx, id: &str, q: Query) -> Result<Outcome, ApiError> {
    q.finish()?;
    json_ok(&run_document(ctx, id)?)
}

/// `GET /api/runs/{id}/steps/{step}/logs`: the last `tail` lines (default), or the bytes
/// from `offset` (at most `limit`), of one attempt's stdout or stderr; `next_offset` is
/// where to ask next to follow it live.
pub fn logs(ctx: &Ctx, id: &str, step: &str, mut q: Query) -> Result<Outcome, ApiError> {
    let visit = q.take_num("visit", 1..=u32::MAX as u64)?;
    let attempt = q.take_num("attempt", 1..=u32::MAX as u64)?;
    let tail = q.take_num("tail", 1..=100_000)?;
    let offset = q.take_num("offset", 0..=u64::MAX >> 1)?;
    let limit = q.take_num("limit", 1..=MAX_LOG_BYTES)?;
    let stream = q.take("stream").unwrap_or_else(|| "stdout".into());
    q.finish()?;
    if stream != "stdout" && stream != "stderr" {
        return Err(ApiError::bad_request("`stream` is stdout or stderr"));
    }
    if tail.is_some() && offset.is_some() {
        return Err(ApiError::bad_request("give `tail` or `offset`, not both"));
    }
    if limit.is_some() && offset.is_none() {
        return Err(ApiError::bad_request("`limit` goes with `offset`"));
    }
    let dir = ctx.runs.existing(id)?;
    let mut p = projection(ctx)?;
    p.sync_run_if_behind(id)?;
    let conn = p.connection();
    let known: i64 =
        conn.query_row("SELECT count(*) FROM steps WHERE run_id = ?1 AND step_id = ?2", [id, step], |r| {
            r.get(0)
        })?;
    if known == 0 {
        return Err(ApiError::not_found(&format!("run `{id}` has no step `{step}`")));
    }
    let visit = match visit {
        Some(v) => v as i64,
        None => conn.query_row(
            "SELECT coalesce(max(visit), 0) FROM attempts WHERE run_id = ?1 AND step_id = ?2",
            [id, step],
            |r| r.get(0),
        )?,
    };
    let attempt = match attempt {
        Some(a) => a as i64,
        None => conn.query_row(
            "SELECT coalesce(max(attempt), 0) FROM attempts WHERE run_id = ?1 AND step_id = ?2 AND visit = ?3",
            rusqlite::params![id, step, visit],
            |r| r.get(0),
        )?,
    };
    let status: Option<String> = conn
        .query_row(
            "SELECT status FROM attempts WHERE run_id = ?1 AND step_id = ?2 AND visit = ?3 AND attempt = ?4",
            rusqlite::params![id, step, visit, attempt],
            |r| r.get(0),
        )
        .ok();
    let Some(status) = status else {
        return Err(ApiError::not_found(&format!(
            "step `{step}` of run `{id}` has no attempt {attempt} in visit {visit}"
        )));
    };
    let path = attempt_dir(&dir, step, visit as u32, attempt as u32).join(format!("{stream}.log"));
    let (text, start, size) = read_log(&path, tail, offset, limit)?;
    json_ok(&json!({
        "run_id": id, "step": step, "visit": visit, "attempt": attempt, "stream": stream,
        "status": status, "running": status == "running",
        "size": size, "offset": start, "next_offset": start + text.len() as u64, "text": text,
    }))
}

/// A slice of a log, cut at UTF-8 character boundaries; returns it, where it starts and
/// the file's size. A log not written yet is empty.
fn read_log(
    path: &Path,
    tail: Option<u64>,
    offset: Option<u64>,
    limit: Option<u64>,
) -> Result<(String, u64, u64), ApiError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((String::new(), offset.unwrap_or(0), 0));
        }
        Err(e) => return Err(ApiError::internal(&format!("cannot read the log: {e}"))),
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let io = |e: std::io::Error| ApiError::internal(&format!("cannot read the log: {e}"));
    let (start, len) = match offset {
        Some(o) => {
            let o = o.min(size);
            (o, (size - o).min(limit.unwrap_or(64 * 1024)))
        }
        None => {
            let from = size.saturating_sub(MAX_LOG_BYTES);
            (from, size - from)
        }
    };
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut bytes).map_err(io)?;
    // Never end inside a character: the rest comes with the next offset.
    if let Err(e) = std::str::from_utf8(&bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
    let mut start = start;
    if offset.is_none() {
        let lines = tail.unwrap_or(200) as usize;
        // The last `lines` lines (a final unterminated line counts as one).
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let cut =
            body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(lines - 1).map(|(i, _)| i + 1);
        if let Some(cut) = cut {
            start += cut as u64;
            bytes.drain(..cut);
        }
        // Skip a character cut in two at the front.
        let skip = bytes.iter().take_while(|b| (**b & 0xC0) == 0x80).count();
        start += skip as u64;
        bytes.drain(..skip);
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let len = bytes.len() as u64;
    // Lossy replacement may change the length; offsets count the file's bytes.
    let text = if text.len() as u64 == len { text } else { text.chars().collect() };
    Ok((text, start, size))
}

/// The runner binary as a child: `--runs-dir` absolute, quiet, no terminal.
fn runner(ctx: &Ctx) -> Command {
    let mut cmd = Command::new(&ctx.exe);
    let root = std::fs::canonicalize(ctx.runs.root()).unwrap_or_else(|_| ctx.runs.root().to_path_buf());
    cmd.arg("--runs-dir").arg(root).stdin(Stdio::null());
    cmd
}

/// Runs a short command to its end (at most `timeout`); its exit code and stderr.
fn run_short(mut cmd: Command, timeout: Duration) -> Result<(i32, String), ApiError> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ApiError::internal(&format!("cannot start the runner: {e}")))?;
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.take(64 * 1024).read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ApiError::new(504, "timeout", "the runner did not answer in time"));
            }
        }
    };
    let stderr = reader.join().unwrap_or_default();
    Ok((status.code().unwrap_or(70), stderr))
}

/// The message of a failed runner command (its `error:` lines).
fn error_text(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let text = lines.join("\n");
    text.strip_prefix("error: ").unwrap_or(&text).to_string()
}

fn step_exists(ctx: &Ctx, id: &str, step: &str) -> Result<(), ApiError> {
    let mut p = projection(ctx)?;
    p.sync_run_if_behind(id)?;
    let n: i64 = p.connection().query_row(
        "SELECT count(*) FROM steps WHERE run_id = ?1 AND step_id = ?2",
        [id, step],
        |r| r.get(0),
    )?;
    if n == 0 { Err(ApiError::not_found(&format!("run `{id}` has no step `{step}`"))) } else { Ok(()) }
}

fn who(by: Option<&String>) -> String {
    by.filter(|b| !b.trim().is_empty())
        .cloned()
        .or_else(|| crate::commands::approve::user_name().ok())
        .unwrap_or_else(|| "dashboard".into())
}

fn live(ctx: &Ctx, id: &str) -> bool {
    is_locked(&ctx.runs.run_dir(id), &live_lock_holders())
}

/// `POST /api/runs/{id}/steps/{step}/approve|reject`, body `{by?, comment?, resume?}`.
pub fn decide(
    ctx: &Ctx,
    req: &mut tiny_http::Request,
    id: &str,
    step: &str,
    action: &str,
    q: Query,
) -> Result<Outcome, ApiError> {
    q.finish()?;
    let (strings, bools) = body_fields(json_body(req)?, &["by", "comment"], &["resume"])?;
    ctx.runs.existing(id)?;
    step_exists(ctx, id, step)?;
    let by = who(strings.get("by"));
    let mut cmd = runner(ctx);
    cmd.args(["--quiet", action, "--run-id", id, "--step", step, "--by", &by]);
    if let Some(c) = strings.get("comment").filter(|c| !c.is_empty()) {
        cmd.args(["--comment", c]);
    }
    let (code, stderr) = run_short(cmd, DECIDE_TIMEOUT)?;
    if code != 0 {
        let status = if code == 2 {
            409
        } else if code == 4 {
            423
        } else {
            500
        };
        return Err(ApiError::new(
            status,
            if status == 409 { "refused" } else { "failed" },
            &error_text(&stderr),
        ));
    }
    let was_live = live(ctx, id);
    let resumed = if bools.get("resume").copied().unwrap_or(false) && !was_live {
        Some(start_resume(ctx, id)?)
    } else {
        None
    };
    json_ok(&json!({
        "run_id": id, "step": step, "decision": if action == "approve" { "approved" } else { "rejected" },
        "by": by, "live": was_live, "resume": resumed,
    }))
}

/// `POST /api/runs/{id}/cancel`, body `{by?}`: asks the live runner to stop (202).
pub fn cancel(ctx: &Ctx, req: &mut tiny_http::Request, id: &str, q: Query) -> Result<Outcome, ApiError> {
    q.finish()?;
    let (strings, _) = body_fields(json_body(req)?, &["by"], &[])?;
    ctx.runs.existing(id)?;
    let by = who(strings.get("by"));
    let mut cmd = runner(ctx);
    cmd.args(["--quiet", "cancel", "--run-id", id, "--by", &by, "--no-wait"]);
    let (code, stderr) = run_short(cmd, Duration::from_secs(20))?;
    match code {
        0 => Ok(Outcome::Reply(json_reply(202, &json!({"run_id": id, "status": "cancelling", "by": by})))),
        2 => Err(ApiError::conflict(&error_text(&stderr))),
        _ => Err(ApiError::internal(&error_text(&stderr))),
    }
}

/// `POST /api/runs/{id}/resume`: starts `runner resume` in the background (202), or says
/// how it ended if it ended at once (an already complete run: 200).
pub fn resume(ctx: &Ctx, req: &mut tiny_http::Request, id: &str, q: Query) -> Result<Outcome, ApiError> {
    q.finish()?;
    body_fields(json_body(req)?, &[], &[])?;
    ctx.runs.existing(id)?;
    if live(ctx, id) {
        return Err(ApiError::conflict(&format!("run `{id}` is live: a runner drives it already")));
    }
    let v = start_resume(ctx, id)?;
    let status = if v["state"] == "started" { 202 } else { 200 };
    Ok(Outcome::Reply(json_reply(status, &v)))
}

/// Starts `runner resume` detached (own process group: a Ctrl+C of the server leaves it
/// alone; its output goes to `runs/.serve/<id>.log`). Waits until it holds the run or has
/// ended; a refusal (exit 2) is a 409.
fn start_resume(ctx: &Ctx, id: &str) -> Result<Value, ApiError> {
    use std::os::unix::process::CommandExt;
    let logs = ctx.runs.root().join(".serve");
    let io = |e: std::io::Error| ApiError::internal(&format!("cannot start the runner: {e}"));
    std::fs::create_dir_all(&logs).map_err(io)?;
    let log_path = logs.join(format!("{id}.log"));
    let log = std::fs::File::create(&log_path).map_err(io)?;
    let mut cmd = runner(ctx);
    cmd.args(["--progress", "plain", "resume", "--run-id", id])
        .stdout(log.try_clone().map_err(io)?)
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn().map_err(io)?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let code = status.code().unwrap_or(70);
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if code == 2 || code == 4 || code == 70 || code == 74 {
                return Err(ApiError::conflict(&error_text(
                    text.lines().filter(|l| l.starts_with("error")).collect::<Vec<_>>().join("\n").as_str(),
                )));
            }
            return Ok(json!({"run_id": id, "state": "ended", "exit_code": code, "pid": pid}));
        }
        if live(ctx, id) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    // Reaped when it ends, so it never lingers as a zombie.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(json!({"run_id": id, "state": "started", "pid": pid, "log": log_path.display().to_string()}))
}

//! `runner status --run-id ID --step S`: one step in detail, from the projection.

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::report::{human_ms, table};
use crate::store::visit_label;

/// Everything the projection knows about one step, as JSON (also the source of the text).
pub fn detail(conn: &Connection, run_id: &str, step: &str) -> Result<Value, rusqlite::Error> {
    let query = |sql: &str, row: &dyn Fn(&rusqlite::Row) -> rusqlite::Result<Value>| {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([run_id, step], |r| row(r))?;
        rows.collect::<Result<Vec<Value>, _>>()
    };
    let steps = query(
        "SELECT status, visit, attempts, reason, message FROM steps WHERE run_id = ?1 AND step_id = ?2",
        &|r| {
            Ok(json!({"status": r.get::<_, String>(0)?, "visit": r.get::<_, i64>(1)?,
                "attempts": r.get::<_, i64>(2)?, "reason": r.get::<_, Option<String>>(3)?,
                "message": r.get::<_, Option<String>>(4)?}))
        },
    )?;
    let Some(mut out) = steps.into_iter().next() else { return Ok(Value::Null) };
    out["step_id"] = json!(step);
    out["history"] = json!(query(
        "SELECT visit, attempt, status, exit_code, duration_ms, message, started_at, executor, job_id, node
         FROM attempts WHERE run_id = ?1 AND step_id = ?2 ORDER BY visit, attempt",
        &|r| {
            Ok(json!({"visit": r.get::<_, i64>(0)?, "attempt": r.get::<_, i64>(1)?,
                "status": r.get::<_, String>(2)?, "exit_code": r.get::<_, Option<i64>>(3)?,
                "duration_ms": r.get::<_, Option<i64>>(4)?, "message": r.get::<_, Option<String>>(5)?,
                "started_at": r.get::<_, Option<String>>(6)?, "executor": r.get::<_, String>(7)?,
                "job_id": r.get::<_, Option<String>>(8)?, "node": r.get::<_, Option<String>>(9)?}))
        },
    )?);
    out["outputs"] = json!(query(
        "SELECT visit, attempt, key, value FROM outputs WHERE run_id = ?1 AND step_id = ?2
         ORDER BY visit, attempt, key",
        &|r| {
            Ok(json!({"visit": r.get::<_, i64>(0)?, "attempt": r.get::<_, i64>(1)?,
                "key": r.get::<_, String>(2)?, "value": r.get::<_, String>(3)?}))
        },
    )?);
    out["handoffs"] = json!(query(
        "SELECT visit, attempt, content_md, metadata_json FROM handoffs WHERE run_id = ?1 AND step_id = ?2
         ORDER BY visit, attempt",
        &|r| {
            let meta: Option<String> = r.get(3)?;
            Ok(json!({"visit": r.get::<_, i64>(0)?, "attempt": r.get::<_, i64>(1)?,
                "content_md": r.get::<_, String>(2)?,
                "metadata": meta.and_then(|m| serde_json::from_str::<Value>(&m).ok())}))
        },
    )?);
    out["routes"] = json!(query(
        "SELECT visit, routing_source, rule, chosen, candidate_count, candidates, candidate_set_path, failure,
                attempt, reset, seq, decided_at
         FROM routing_decisions WHERE run_id = ?1 AND step_id = ?2 ORDER BY seq",
        &|r| {
            let list = |text: Option<String>| text.and_then(|c| serde_json::from_str::<Value>(&c).ok());
            Ok(json!({"visit": r.get::<_, i64>(0)?, "routing_source": r.get::<_, String>(1)?,
                "rule": r.get::<_, Option<i64>>(2)?, "chosen": r.get::<_, Option<String>>(3)?,
                "candidate_count": r.get::<_, i64>(4)?,
                "candidates": list(r.get(5)?),
                "candidate_set_path": r.get::<_, Option<String>>(6)?,
                "failure": r.get::<_, Option<String>>(7)?, "attempt": r.get::<_, i64>(8)?,
                "reset": list(r.get(9)?).unwrap_or_else(|| json!([])), "seq": r.get::<_, i64>(10)?,
                "decided_at": r.get::<_, String>(11)?}))
        },
    )?);
    out["approvals"] = json!(query(
        "SELECT visit, status, message, approvers, decided_by, decided_at, comment, requested_at
         FROM approvals WHERE run_id = ?1 AND step_id = ?2 ORDER BY seq",
        &|r| {
            let approvers: Option<String> = r.get(3)?;
            Ok(json!({"visit": r.get::<_, i64>(0)?, "status": r.get::<_, String>(1)?,
                "message": r.get::<_, Option<String>>(2)?,
                "approvers": approvers.and_then(|a| serde_json::from_str::<Value>(&a).ok()),
                "decided_by": r.get::<_, Option<String>>(4)?, "decided_at": r.get::<_, Option<String>>(5)?,
                "comment": r.get::<_, Option<String>>(6)?, "requested_at": r.get::<_, String>(7)?}))
        },
    )?);
    out["gates"] = json!(query(
        "SELECT visit, attempt, outcome, pass, warn, profile, seen FROM gates
         WHERE run_id = ?1 AND step_id = ?2 ORDER BY visit, attempt",
        &|r| {
            let seen: String = r.get(6)?;
            Ok(json!({"visit": r.get::<_, i64>(0)?, "attempt": r.get::<_, i64>(1)?,
                "outcome": r.get::<_, String>(2)?, "pass": r.get::<_, String>(3)?,
                "warn": r.get::<_, Option<String>>(4)?, "profile": r.get::<_, Option<String>>(5)?,
                "values": serde_json::from_str::<Value>(&seen).unwrap_or_default()}))
        },
    )?);
    out["receipts"] = json!(query(
        "SELECT visit, attempt, status, key, result, cached_from, cache_miss, path FROM receipts
         WHERE run_id = ?1 AND step_id = ?2 ORDER BY visit, attempt",
        &|r| {
            Ok(json!({"visit": r.get::<_, i64>(0)?, "attempt": r.get::<_, i64>(1)?,
                "status": r.get::<_, String>(2)?, "key": r.get::<_, String>(3)?,
                "result": r.get::<_, Option<String>>(4)?, "cached_from": r.get::<_, Option<String>>(5)?,
                "cache_miss": r.get::<_, Option<String>>(6)?, "path": r.get::<_, String>(7)?}))
        },
    )?);
    Ok(out)
}

/// The detail as text for a terminal.
pub fn render(d: &Value) -> String {
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_default();
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let id = s(&d["step_id"]);
    let mut out =
        format!("step:     {}\nstatus:   {}\n", visit_label(&id, n(&d["visit"]) as u32), s(&d["status"]));
    if let Some(m) = d["message"].as_str() {
        out.push_str(&format!("detail:   {m}\n"));
    }
    let history = d["history"].as_array().cloned().unwrap_or_default();
    // Where it ran, when any attempt ran on a cluster.
    let remote = history.iter().any(|a| a["job_id"].is_string());
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|a| {
            let mut row = vec![
                visit_label(&id, n(&a["visit"]) as u32),
                n(&a["attempt"]).to_string(),
                s(&a["status"]),
                a["duration_ms"].as_i64().map(|ms| human_ms(ms as u64)).unwrap_or_default(),
                a["exit_code"].as_i64().map(|c| c.to_string()).unwrap_or_default(),
            ];
            if remote {
                row.push(job_where(a));
            }
            row.push(s(&a["message"]));
            row
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        let mut head = vec!["VISIT", "ATTEMPT", "STATUS", "DURATION", "EXIT"];
        if remote {
            head.push("WHERE");
        }
        head.push("DETAIL");
        out.push_str(&table(&head, &rows));
    }
    let outputs = d["outputs"].as_array().cloned().unwrap_or_default();
    if !outputs.is_empty() {
        out.push_str("\noutputs:\n");
        for o in outputs {
            let label = visit_label(&id, n(&o["visit"]) as u32);
            out.push_str(&format!("  [{label}] {} = {}\n", s(&o["key"]), quote(&s(&o["value"]))));
        }
    }
    for h in d["handoffs"].as_array().into_iter().flatten() {
        let label = visit_label(&id, n(&h["visit"]) as u32);
        let text = s(&h["content_md"]);
        let lines = text.lines().count();
        out.push_str(&format!("\nhandoff [{label}] ({lines} lines):\n"));
        for l in text.lines().take(10) {
            out.push_str(&format!("  | {l}\n"));
        }
        if lines > 10 {
            out.push_str("  | …\n");
        }
        if !h["metadata"].is_null() {
            out.push_str(&format!("  metadata: {}\n", h["metadata"]));
        }
    }
    let approvals = d["approvals"].as_array().cloned().unwrap_or_default();
    if !approvals.is_empty() {
        out.push_str("\napprovals:\n");
        for a in approvals {
            let label = visit_label(&id, n(&a["visit"]) as u32);
            let mut line = format!("  [{label}] {}", s(&a["status"]));
            if let Some(by) = a["decided_by"].as_str() {
                line.push_str(&format!(" by {by}"));
            }
            if let Some(c) = a["comment"].as_str() {
                line.push_str(&format!(": {c}"));
            }
            if let Some(list) = a["approvers"].as_array() {
                let names: Vec<String> = list.iter().map(s).collect();
                line.push_str(&format!(" (approvers: {})", names.join(", ")));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    for g in d["gates"].as_array().into_iter().flatten() {
        let label = visit_label(&id, n(&g["visit"]) as u32);
        let profile = g["profile"].as_str().map(|p| format!(", profile {p}")).unwrap_or_default();
        out.push_str(&format!(
            "\ngate [{label} attempt {}]: {} (pass: `{}`{}{profile})\n",
            n(&g["attempt"]),
            s(&g["outcome"]),
            s(&g["pass"]),
            g["warn"].as_str().map(|w| format!(", warn: `{w}`")).unwrap_or_default()
        ));
        for (k, v) in g["values"].as_object().into_iter().flatten() {
            out.push_str(&format!("  {k} = {v}\n"));
        }
    }
    let receipts = d["receipts"].as_array().cloned().unwrap_or_default();
    if !receipts.is_empty() {
        out.push_str("\nreceipts:\n");
        for r in receipts {
            let label = visit_label(&id, n(&r["visit"]) as u32);
            let key = s(&r["key"]);
            let mut line = format!(
                "  [{label} attempt {}] {} key {}…",
                n(&r["attempt"]),
                s(&r["status"]),
                &key[..key.len().min(16)]
            );
            if let Some(from) = r["cached_from"].as_str() {
                line.push_str(&format!(" from {from}"));
            } else if let Some(miss) = r["cache_miss"].as_str() {
                line.push_str(&format!(" (cache: {miss})"));
            }
            line.push_str(&format!("  {}", s(&r["path"])));
            out.push_str(&line);
            out.push('\n');
        }
    }
    let routes = d["routes"].as_array().cloned().unwrap_or_default();
    if !routes.is_empty() {
        out.push_str("\nroutes:\n");
        for r in routes {
            let label = visit_label(&id, n(&r["visit"]) as u32);
            let how = match (s(&r["routing_source"]).as_str(), r["rule"].as_i64()) {
                ("rule", Some(k)) => format!("rule {}", k + 1),
                (other, _) => other.to_string(),
            };
            let to = match (r["chosen"].as_str(), r["failure"].as_str()) {
                (_, Some(f)) => format!("failed: {f}"),
                (Some(c), None) => format!("-> {c}"),
                (None, None) => "-> nothing".into(),
            };
            let from = match r["candidate_set_path"].as_str() {
                Some(path) => format!("{} candidates, listed in {path}", n(&r["candidate_count"])),
                None => format!("candidates: {}", r["candidates"]),
            };
            out.push_str(&format!("  [{label}] {to} by {how} ({from})\n"));
        }
    }
    out
}

/// A value on one line: multi-line values are shown escaped.
fn quote(v: &str) -> String {
    if v.contains('\n') || v.contains('\r') { format!("{v:?}") } else { v.to_string() }
}

/// `slurm job 42 on node7`, `slurm job 42 (queued)`, or `local`.
pub fn job_where(a: &Value) -> String {
    match (a["job_id"].as_str(), a["node"].as_str()) {
        (Some(job), Some(node)) => {
            format!("{} job {job} on {node}", a["executor"].as_str().unwrap_or("cluster"))
        }
        (Some(job), None) if a["status"] == "running" => {
            format!("{} job {job} (queued)", a["executor"].as_str().unwrap_or("cluster"))
        }
        (Some(job), None) => format!("{} job {job}", a["executor"].as_str().unwrap_or("cluster")),
        _ => "local".into(),
    }
}

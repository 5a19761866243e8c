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
        "SELECT visit, attempt, status, exit_code, duration_ms, message, started_at FROM attempts
         WHERE run_id = ?1 AND step_id = ?2 ORDER BY visit, attempt",
        &|r| {
            Ok(json!({"visit": r.get::<_, i64>(0)?, "attempt": r.get::<_, i64>(1)?,
                "status": r.get::<_, String>(2)?, "exit_code": r.get::<_, Option<i64>>(3)?,
                "duration_ms": r.get::<_, Option<i64>>(4)?, "message": r.get::<_, Option<String>>(5)?,
                "started_at": r.get::<_, Option<String>>(6)?}))
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
    let rows: Vec<Vec<String>> = d["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                visit_label(&id, n(&a["visit"]) as u32),
                n(&a["attempt"]).to_string(),
                s(&a["status"]),
                a["duration_ms"].as_i64().map(|ms| human_ms(ms as u64)).unwrap_or_default(),
                a["exit_code"].as_i64().map(|c| c.to_string()).unwrap_or_default(),
                s(&a["message"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(&["VISIT", "ATTEMPT", "STATUS", "DURATION", "EXIT", "DETAIL"], &rows));
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

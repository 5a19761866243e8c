//! `--metrics-file PATH`: the last run of every flow as a Prometheus textfile, for
//! node-exporter's textfile collector (cron users alert on "no success for a day").
//!
//! The file holds **every flow of the runs directory**, not only the flow that just ran:
//! the collector reads whole files, so with one file per flow each cron line needs its own
//! path, and with one shared file a flow-only write would drop the other flows' series
//! until their next run. Every write is complete on its own, so one `runner.prom` per runs
//! directory serves any number of cron lines.
//!
//! Everything comes from the projection (`runs` table), never from the previous file: the
//! last success survives across failed runs because it is a query, and a deleted or stale
//! file is whole again after the next run. The "last run" of a flow is its run that ended
//! last (succeeded, failed, paused for approval, or interrupted); a run still going, or one
//! whose runner died (`crashed` in `status`), has no outcome yet and does not count: a
//! crashing job shows as a last success that grows old, which is what to alert on.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use rusqlite::Connection;

/// The statuses an ended run can have, in the order their series are written.
pub const ENDED: [&str; 4] = ["succeeded", "failed", "waiting", "interrupted"];

/// What the file says about one flow.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMetrics {
    pub flow: String,
    /// Status of the last ended run: one of [`ENDED`].
    pub status: String,
    /// When the last run ended, in Unix milliseconds.
    pub ended_ms: i64,
    /// When the last successful run ended, if one did.
    pub success_ms: Option<i64>,
    /// From the last run's start to its end, across its resumes.
    pub duration_ms: i64,
    pub steps_failed: i64,
}

/// Reads the last run and the last success of every flow from the projection.
pub fn collect(conn: &Connection) -> rusqlite::Result<Vec<FlowMetrics>> {
    let mut stmt = conn.prepare(
        "SELECT flow, status, started_at, COALESCE(finished_at, last_event_at), steps_failed, run_id
         FROM runs WHERE status IN ('succeeded', 'failed', 'waiting', 'interrupted')",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    // Per flow: the last ended run (by end, then run id for ties), and the last success.
    let mut flows: BTreeMap<String, (FlowMetrics, String)> = BTreeMap::new();
    for row in rows {
        let (flow, status, started, ended, steps_failed, run_id) = row?;
        let (Some(start_ms), Some(ended_ms)) = (millis(&started), millis(&ended)) else { continue };
        let success_ms = (status == "succeeded").then_some(ended_ms);
        let this = FlowMetrics {
            flow: flow.clone(),
            status,
            ended_ms,
            success_ms,
            duration_ms: (ended_ms - start_ms).max(0),
            steps_failed,
        };
        match flows.get_mut(&flow) {
            None => {
                flows.insert(flow, (this, run_id));
            }
            Some((last, last_id)) => {
                let success_ms = last.success_ms.max(success_ms);
                if (ended_ms, &run_id) > (last.ended_ms, last_id) {
                    *last = this;
                    *last_id = run_id;
                }
                last.success_ms = success_ms;
            }
        }
    }
    Ok(flows.into_values().map(|(m, _)| m).collect())
}

fn millis(ts: &str) -> Option<i64> {
    ts.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

/// Renders the text exposition format: `# HELP` and `# TYPE`, then one line per series.
pub fn render(flows: &[FlowMetrics]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, series: &mut dyn FnMut(&mut String, &FlowMetrics)| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for f in flows {
            series(&mut out, f);
        }
    };
    family(
        "runner_last_run_success",
        "Whether the last ended run of the flow succeeded (1) or not (0).",
        &mut |out, f| {
            let _ = writeln!(
                out,
                "runner_last_run_success{{flow=\"{}\"}} {}",
                label(&f.flow),
                u8::from(f.status == "succeeded")
            );
        },
    );
    family(
        "runner_last_run_status",
        "Status of the last ended run of the flow: 1 for its status, 0 for the others.",
        &mut |out, f| {
            for status in ENDED {
                let _ = writeln!(
                    out,
                    "runner_last_run_status{{flow=\"{}\",status=\"{status}\"}} {}",
                    label(&f.flow),
                    u8::from(f.status == status)
                );
            }
        },
    );
    family(
        "runner_last_run_timestamp_seconds",
        "When the last ended run of the flow ended, in Unix time.",
        &mut |out, f| {
            let _ = writeln!(
                out,
                "runner_last_run_timestamp_seconds{{flow=\"{}\"}} {}",
                label(&f.flow),
                seconds(f.ended_ms)
            );
        },
    );
    family(
        "runner_last_success_timestamp_seconds",
        "When the last successful run of the flow ended, in Unix time; 0 if none has succeeded.",
        &mut |out, f| {
            let _ = writeln!(
                out,
                "runner_last_success_timestamp_seconds{{flow=\"{}\"}} {}",
                label(&f.flow),
                seconds(f.success_ms.unwrap_or(0))
            );
        },
    );
    family(
        "runner_last_run_duration_seconds",
        "Wall time of the last ended run of the flow, from its start to its end (across resumes).",
        &mut |out, f| {
            let _ = writeln!(
                out,
                "runner_last_run_duration_seconds{{flow=\"{}\"}} {}",
                label(&f.flow),
                seconds(f.duration_ms)
            );
        },
    );
    family(
        "runner_last_run_steps_failed",
        "Steps that failed in the last ended run of the flow.",
        &mut |out, f| {
            let _ = writeln!(
                out,
                "runner_last_run_steps_failed{{flow=\"{}\"}} {}",
                label(&f.flow),
                f.steps_failed
            );
        },
    );
    out
}

/// Escapes a label value: backslash, double quote and line feed, as the format requires.
pub fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `1732234463.518`.
fn seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}", ms / 1000, ms % 1000)
}

/// Writes the file the collector's way: a temp file in the same directory (which it
/// ignores, not ending in `.prom`), then a rename, so it never reads half a file.
pub fn write(path: &Path, flows: &[FlowMetrics]) -> std::io::Result<()> {
    crate::fsutil::write_replace(path, "metrics", render(flows).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(name: &str, status: &str, success_ms: Option<i64>) -> FlowMetrics {
        FlowMetrics {
            flow: name.into(),
            status: status.into(),
            ended_ms: 1_700_000_000_123,
            success_ms,
            duration_ms: 61_005,
            steps_failed: 2,
        }
    }

    #[test]
    fn every_series_has_help_type_and_labels() {
        let text =
            render(&[flow("etl", "failed", Some(1_600_000_000_000)), flow("night\"ly", "succeeded", None)]);
        assert!(text.contains("# TYPE runner_last_run_success gauge\n"), "{text}");
        assert!(text.contains("runner_last_run_success{flow=\"etl\"} 0\n"), "{text}");
        assert!(text.contains("runner_last_run_success{flow=\"night\\\"ly\"} 1\n"), "{text}");
        assert!(text.contains("runner_last_run_status{flow=\"etl\",status=\"failed\"} 1\n"), "{text}");
        assert!(text.contains("runner_last_run_status{flow=\"etl\",status=\"succeeded\"} 0\n"), "{text}");
        assert!(text.contains("runner_last_run_timestamp_seconds{flow=\"etl\"} 1700000000.123\n"), "{text}");
        assert!(
            text.contains("runner_last_success_timestamp_seconds{flow=\"etl\"} 1600000000.000\n"),
            "{text}"
        );
        assert!(
            text.contains("runner_last_success_timestamp_seconds{flow=\"night\\\"ly\"} 0.000\n"),
            "{text}"
        );
        assert!(text.contains("runner_last_run_duration_seconds{flow=\"etl\"} 61.005\n"), "{text}");
        assert!(text.contains("runner_last_run_steps_failed{flow=\"etl\"} 2\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("name{labels} value");
            assert!(series.ends_with('}') && series.contains('{'), "{line}");
            value.parse::<f64>().expect("a number");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(label("plain-name_1"), "plain-name_1");
    }

    #[test]
    fn seconds_keep_milliseconds() {
        assert_eq!(seconds(0), "0.000");
        assert_eq!(seconds(1_005), "1.005");
        assert_eq!(seconds(-1_500), "-1.500");
    }

    #[test]
    fn last_run_and_last_success_per_flow() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(
            "CREATE TABLE runs (run_id TEXT, flow TEXT, status TEXT, started_at TEXT, finished_at TEXT,
                                last_event_at TEXT, steps_failed INTEGER);
             INSERT INTO runs VALUES
               ('a1', 'a', 'succeeded', '2026-01-01T00:00:00Z', '2026-01-01T00:00:10Z', '2026-01-01T00:00:10Z', 0),
               ('a2', 'a', 'failed',    '2026-01-02T00:00:00Z', '2026-01-02T00:01:00Z', '2026-01-02T00:01:00Z', 1),
               ('a3', 'a', 'running',   '2026-01-03T00:00:00Z', NULL,                   '2026-01-03T00:00:01Z', 0),
               ('b1', 'b', 'waiting',   '2026-01-01T00:00:00Z', '2026-01-01T00:00:02Z', '2026-01-01T00:00:02Z', 0),
               ('c1', 'c', 'running',   '2026-01-01T00:00:00Z', NULL,                   '2026-01-01T00:00:02Z', 0);",
        )
        .expect("rows");
        let flows = collect(&conn).expect("collect");
        let ts = |s: &str| millis(s).expect("ts");
        assert_eq!(
            flows,
            vec![
                FlowMetrics {
                    flow: "a".into(),
                    status: "failed".into(),
                    ended_ms: ts("2026-01-02T00:01:00Z"),
                    success_ms: Some(ts("2026-01-01T00:00:10Z")),
                    duration_ms: 60_000,
                    steps_failed: 1,
                },
                FlowMetrics {
                    flow: "b".into(),
                    status: "waiting".into(),
                    ended_ms: ts("2026-01-01T00:00:02Z"),
                    success_ms: None,
                    duration_ms: 2_000,
                    steps_failed: 0,
                },
            ]
        );
    }
}

//! Rows derived from a run's folded state. The projection never interprets events itself:
//! it mirrors `RunState`, so a live update and a rebuild produce the same rows.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use crate::journal::{Event, GateOutcome, Record};
use crate::report;
use crate::schedule::Entry as ScheduleEntry;
use crate::state::{Approval, Attempt, Frame, Route, RunState, ServiceRun, StepState, StepStatus};

pub const SCHEMA_VERSION: i64 = 8;

pub const TABLES: &str = "
CREATE TABLE runs (
    run_id          TEXT PRIMARY KEY,
    flow            TEXT NOT NULL,
    flow_path       TEXT NOT NULL,
    flow_hash       TEXT NOT NULL,
    status          TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    params          TEXT NOT NULL,
    workdir         TEXT NOT NULL,
    steps_total     INTEGER NOT NULL,
    steps_succeeded INTEGER NOT NULL,
    steps_failed    INTEGER NOT NULL,
    steps_waiting   INTEGER NOT NULL,
    sessions        INTEGER NOT NULL,
    profile         TEXT,
    last_seq        INTEGER NOT NULL,
    last_event_at   TEXT NOT NULL,
    journal_bytes   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE steps (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    status      TEXT NOT NULL,
    visit       INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    exit_code   INTEGER,
    duration_ms INTEGER,
    reason      TEXT,
    message     TEXT,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
CREATE TABLE attempts (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    visit       INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    exit_code   INTEGER,
    signal      TEXT,
    reason      TEXT,
    message     TEXT,
    pid         INTEGER,
    started_at  TEXT,
    finished_at TEXT,
    duration_ms INTEGER,
    executor    TEXT NOT NULL,
    job_id      TEXT,
    node        TEXT,
    PRIMARY KEY (run_id, step_id, visit, attempt)
) WITHOUT ROWID;
CREATE TABLE outputs (
    run_id  TEXT NOT NULL,
    step_id TEXT NOT NULL,
    visit   INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, visit, attempt, key)
) WITHOUT ROWID;
CREATE TABLE handoffs (
    run_id        TEXT NOT NULL,
    step_id       TEXT NOT NULL,
    visit         INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    content_md    TEXT NOT NULL,
    metadata_json TEXT,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, visit, attempt)
) WITHOUT ROWID;
CREATE TABLE routing_decisions (
    run_id             TEXT NOT NULL,
    seq                INTEGER NOT NULL,
    step_id            TEXT NOT NULL,
    visit              INTEGER NOT NULL,
    attempt            INTEGER NOT NULL,
    routing_source     TEXT NOT NULL,
    rule               INTEGER,
    chosen             TEXT,
    candidate_count    INTEGER NOT NULL,
    candidates         TEXT,
    candidate_set_path TEXT,
    reset              TEXT,
    failure            TEXT,
    decided_at         TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE frames (
    run_id      TEXT NOT NULL,
    frame       INTEGER NOT NULL,
    caller_step TEXT NOT NULL,
    visit       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    flow        TEXT NOT NULL,
    copy        TEXT NOT NULL,
    params      TEXT NOT NULL,
    then_action TEXT,
    pushed_at   TEXT NOT NULL,
    returned_at TEXT,
    PRIMARY KEY (run_id, frame)
) WITHOUT ROWID;
CREATE TABLE approvals (
    run_id       TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    visit        INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    status       TEXT NOT NULL,
    message      TEXT,
    approvers    TEXT,
    comment      TEXT,
    decided_by   TEXT,
    decided_at   TEXT,
    requested_at TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, seq)
) WITHOUT ROWID;
CREATE TABLE gates (
    run_id  TEXT NOT NULL,
    step_id TEXT NOT NULL,
    visit   INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    pass    TEXT NOT NULL,
    warn    TEXT,
    profile TEXT,
    seen    TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, visit, attempt)
) WITHOUT ROWID;
CREATE TABLE receipts (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    visit       INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    key         TEXT NOT NULL,
    result      TEXT,
    status      TEXT NOT NULL,
    cached_from TEXT,
    cache_miss  TEXT,
    path        TEXT NOT NULL,
    finished_at TEXT,
    PRIMARY KEY (run_id, step_id, visit, attempt)
) WITHOUT ROWID;
CREATE TABLE services (
    run_id     TEXT NOT NULL,
    name       TEXT NOT NULL,
    instance   INTEGER NOT NULL,
    pid        INTEGER NOT NULL,
    for_step   TEXT NOT NULL,
    restarts   INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    healthy_at TEXT,
    checks     INTEGER,
    stopped_at TEXT,
    reason     TEXT,
    exit_code  INTEGER,
    signal     TEXT,
    message    TEXT,
    degraded   INTEGER NOT NULL,
    PRIMARY KEY (run_id, name, instance)
) WITHOUT ROWID;
CREATE TABLE events (
    run_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    ts      TEXT NOT NULL,
    type    TEXT NOT NULL,
    step_id TEXT,
    data    TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE schedule_decisions (
    seq        INTEGER PRIMARY KEY,
    flow       TEXT NOT NULL,
    slot       TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    decision   TEXT NOT NULL,
    run_id     TEXT NOT NULL
);
";

/// Secondary indexes, created after a bulk load. Per-run queries use the primary keys;
/// indexes over events or attempts would cost a rebuild a sixth of its time for queries
/// that a scan answers well enough.
pub const INDEXES: &str = "
CREATE INDEX runs_by_start ON runs (started_at, run_id);
CREATE INDEX runs_by_flow ON runs (flow, started_at);
CREATE INDEX receipts_by_key ON receipts (key);
";

pub const DROP: &str = "
DROP TABLE IF EXISTS schedule_decisions;
DROP TABLE IF EXISTS services;
DROP TABLE IF EXISTS receipts;
DROP TABLE IF EXISTS gates;
DROP TABLE IF EXISTS approvals;
DROP TABLE IF EXISTS frames;
DROP TABLE IF EXISTS routing_decisions;
DROP TABLE IF EXISTS handoffs;
DROP TABLE IF EXISTS outputs;
DROP TABLE IF EXISTS events;
DROP TABLE IF EXISTS attempts;
DROP TABLE IF EXISTS steps;
DROP TABLE IF EXISTS runs;
";

/// Every table with the order that makes its dump canonical.
pub const CANONICAL_ORDER: &[(&str, &str)] = &[
    ("runs", "run_id"),
    ("steps", "run_id, step_id"),
    ("attempts", "run_id, step_id, visit, attempt"),
    ("outputs", "run_id, step_id, visit, attempt, key"),
    ("handoffs", "run_id, step_id, visit, attempt"),
    ("routing_decisions", "run_id, seq"),
    ("frames", "run_id, frame"),
    ("approvals", "run_id, step_id, seq"),
    ("gates", "run_id, step_id, visit, attempt"),
    ("receipts", "run_id, step_id, visit, attempt"),
    ("services", "run_id, name, instance"),
    ("events", "run_id, seq"),
    ("schedule_decisions", "seq"),
];

pub fn insert_events(conn: &Connection, run_id: &str, records: &[Record]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events (run_id, seq, ts, type, step_id, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for r in records {
        stmt.execute(params![run_id, r.seq as i64, r.ts, r.event.kind(), r.event.step(), r.data])?;
    }
    Ok(())
}

/// The `runs` row of a run, derived from its folded state.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRow {
    run_id: String,
    flow: String,
    flow_path: String,
    flow_hash: String,
    status: &'static str,
    started_at: String,
    finished_at: Option<String>,
    params: String,
    workdir: String,
    steps_total: i64,
    steps_succeeded: i64,
    steps_failed: i64,
    steps_waiting: i64,
    sessions: u32,
    profile: Option<String>,
    last_seq: i64,
    last_event_at: String,
}

impl RunRow {
    pub fn of(s: &RunState) -> RunRow {
        RunRow {
            run_id: s.run_id.clone(),
            flow: s.flow.clone(),
            flow_path: s.flow_path.clone(),
            flow_hash: s.flow_hash.clone(),
            status: s.status.as_str(),
            started_at: s.started_at.clone(),
            finished_at: s.finished_at.clone(),
            params: serde_json::to_string(&s.params).unwrap_or_else(|_| "{}".into()),
            workdir: s.workdir.clone(),
            steps_total: s.steps.len() as i64,
            steps_succeeded: s.count(StepStatus::Succeeded) as i64,
            steps_failed: (s.count(StepStatus::Failed) + s.count(StepStatus::Rejected)) as i64,
            steps_waiting: s.count(StepStatus::Waiting) as i64,
            sessions: s.sessions,
            profile: s.profile.clone(),
            last_seq: s.seq as i64,
            last_event_at: s.last_ts.clone(),
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn started_at(&self) -> &str {
        &self.started_at
    }
}

pub fn upsert_run(conn: &Connection, r: &RunRow, journal_bytes: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO runs (run_id, flow, flow_path, flow_hash, status, started_at,
            finished_at, params, workdir, steps_total, steps_succeeded, steps_failed, steps_waiting,
            sessions, profile, last_seq, last_event_at, journal_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?
    .execute(params![
        r.run_id,
        r.flow,
        r.flow_path,
        r.flow_hash,
        r.status,
        r.started_at,
        r.finished_at,
        r.params,
        r.workdir,
        r.steps_total,
        r.steps_succeeded,
        r.steps_failed,
        r.steps_waiting,
        r.sessions,
        r.profile,
        r.last_seq,
        r.last_event_at,
        journal_bytes as i64,
    ])?;
    Ok(())
}

/// The rows of one step: its `steps` row, and the attempts (with their outputs and
/// handoffs) and routing decisions to write with it — all of them for a whole run, only
/// the changed ones for a live commit.
#[derive(Clone, Debug)]
pub struct StepRows<'a> {
    pos: usize,
    id: String,
    status: &'static str,
    visit: u32,
    attempts_total: usize,
    started_at: Option<String>,
    finished_at: Option<String>,
    exit_code: Option<i32>,
    duration_ms: Option<u64>,
    reason: Option<String>,
    message: Option<String>,
    /// Borrowed when a whole run is written (a rebuild copies nothing), owned in a batch.
    attempts: Cow<'a, [Attempt]>,
    routes: Cow<'a, [Route]>,
    approvals: Cow<'a, [Approval]>,
}

impl<'a> StepRows<'a> {
    /// Every row of step `pos`.
    pub fn all(pos: usize, step: &'a StepState) -> StepRows<'a> {
        StepRows::of(
            pos,
            step,
            Cow::Borrowed(&step.attempts),
            Cow::Borrowed(&step.routes),
            Cow::Borrowed(&step.approvals),
        )
    }

    /// The rows a commit changed: the attempts its events name and the routing decisions
    /// it added; the rest of the step's history is not copied again.
    fn changed(pos: usize, step: &StepState, keys: &[(u32, u32)], since_seq: u64) -> StepRows<'static> {
        let attempts: Vec<Attempt> =
            step.attempts.iter().filter(|a| keys.contains(&(a.visit, a.attempt))).cloned().collect();
        let routes: Vec<Route> = step.routes.iter().filter(|r| r.seq >= since_seq).cloned().collect();
        // A decision changes the latest request; earlier ones are settled for good.
        let approvals: Vec<Approval> = step.approvals.last().into_iter().cloned().collect();
        StepRows::of(pos, step, Cow::Owned(attempts), Cow::Owned(routes), Cow::Owned(approvals))
    }

    fn of<'b>(
        pos: usize,
        step: &StepState,
        attempts: Cow<'b, [Attempt]>,
        routes: Cow<'b, [Route]>,
        approvals: Cow<'b, [Approval]>,
    ) -> StepRows<'b> {
        let last = step.last_attempt();
        // A skipped visit has no result of its own; its reason is the step's message.
        let ran = last.filter(|_| step.status != StepStatus::Skipped);
        let skipped = step.skip_reason.as_deref();
        let message = skipped.or_else(|| last.and_then(|a| a.message.as_deref()));
        let reason = if skipped.is_some() { Some("skipped") } else { last.and_then(|a| a.reason.as_deref()) };
        // A router that could not route failed after a successful attempt.
        let (reason, message) = match step.route().and_then(|d| d.failure.as_deref()) {
            Some(f) if step.status == StepStatus::Failed => (Some("routing"), Some(f)),
            _ => (reason, message),
        };
        let (reason, message) = match (step.status, step.approvals.last(), step.success()) {
            (StepStatus::Waiting, Some(a), _) => {
                (Some("approval"), Some(Cow::Owned(report::awaiting(a.message.as_deref(), &a.approvers))))
            }
            (StepStatus::Rejected, Some(a), _) => {
                let by = a.decided_by.as_deref().unwrap_or("?");
                (Some("rejected"), Some(Cow::Owned(report::decided("rejected", by, a.comment.as_deref()))))
            }
            (StepStatus::Succeeded, _, Some(ok))
                if ok.gate.as_ref().is_some_and(|g| g.outcome == GateOutcome::Warn) =>
            {
                let g = ok.gate.as_deref().map_or(String::new(), |g| {
                    format!("gate warning: `{}` is false{}", g.pass, crate::report::gate_values(&g.values))
                });
                (Some("gate_warning"), Some(Cow::Owned(g)))
            }
            _ => (reason, message.map(Cow::Borrowed)),
        };
        StepRows {
            pos,
            id: step.id.clone(),
            status: step.status.as_str(),
            visit: step.visit,
            attempts_total: step.attempts.len(),
            started_at: step.attempts.first().and_then(|a| a.started_at.clone()),
            finished_at: ran.and_then(|a| a.finished_at.clone()),
            exit_code: ran.and_then(|a| a.exit_code),
            duration_ms: ran.and_then(|a| a.duration_ms),
            reason: reason.map(str::to_string),
            message: message.map(Cow::into_owned),
            attempts,
            routes,
            approvals,
        }
    }

    /// Folds the rows of a later commit into these (same step).
    fn merge(&mut self, later: StepRows<'a>) {
        let mut attempts = std::mem::take(&mut self.attempts).into_owned();
        for a in later.attempts.iter() {
            match attempts.iter_mut().find(|x| (x.visit, x.attempt) == (a.visit, a.attempt)) {
                Some(x) => *x = a.clone(),
                None => attempts.push(a.clone()),
            }
        }
        let mut routes = std::mem::take(&mut self.routes).into_owned();
        routes.extend(later.routes.iter().cloned());
        let mut approvals = std::mem::take(&mut self.approvals).into_owned();
        for a in later.approvals.iter() {
            match approvals.iter_mut().find(|x| x.seq == a.seq) {
                Some(x) => *x = a.clone(),
                None => approvals.push(a.clone()),
            }
        }
        *self = StepRows {
            attempts: Cow::Owned(attempts),
            routes: Cow::Owned(routes),
            approvals: Cow::Owned(approvals),
            ..later
        };
    }
}

/// Writes step rows, with their attempts, outputs, handoffs and routing decisions.
pub fn upsert_steps<'a, 'b: 'a>(
    conn: &Connection,
    run_id: &str,
    steps: impl Iterator<Item = &'a StepRows<'b>>,
) -> rusqlite::Result<()> {
    let mut step_stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO steps (run_id, step_id, position, status, visit, attempts, started_at,
            finished_at, exit_code, duration_ms, reason, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    let mut output_stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO outputs (run_id, step_id, visit, attempt, key, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut handoff_stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO handoffs (run_id, step_id, visit, attempt, content_md, metadata_json,
            created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut route_stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO routing_decisions (run_id, seq, step_id, visit, attempt, routing_source,
            rule, chosen, candidate_count, candidates, candidate_set_path, reset, failure, decided_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    let mut approval_stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO approvals (run_id, step_id, visit, seq, status, message, approvers,
            comment, decided_by, decided_at, requested_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut gate_stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO gates (run_id, step_id, visit, attempt, outcome, pass, warn, profile, seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut receipt_stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO receipts (run_id, step_id, visit, attempt, key, result, status,
            cached_from, cache_miss, path, finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut attempt_stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO attempts (run_id, step_id, visit, attempt, status, exit_code,
            signal, reason, message, pid, started_at, finished_at, duration_ms, executor, job_id, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?;
    for step in steps {
        step_stmt.execute(params![
            run_id,
            step.id,
            step.pos as i64,
            step.status,
            step.visit,
            step.attempts_total as i64,
            step.started_at,
            step.finished_at,
            step.exit_code,
            step.duration_ms.map(|d| d as i64),
            step.reason,
            step.message,
        ])?;
        for r in step.routes.iter() {
            let d = &r.decision;
            let list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
            route_stmt.execute(params![
                run_id,
                r.seq as i64,
                step.id,
                d.visit,
                d.attempt,
                d.routing_source.as_str(),
                d.rule.map(|k| k as i64),
                d.chosen,
                d.candidate_count as i64,
                d.candidates.as_deref().map(list),
                d.candidate_set_path,
                (!d.reset.is_empty()).then(|| list(&d.reset)),
                d.failure,
                r.ts,
            ])?;
        }
        for a in step.approvals.iter() {
            approval_stmt.execute(params![
                run_id,
                step.id,
                a.visit,
                a.seq as i64,
                a.decision.map_or("requested", |d| d.as_str()),
                a.message,
                (!a.approvers.is_empty()).then(|| serde_json::to_string(&a.approvers).unwrap_or_default()),
                a.comment,
                a.decided_by,
                a.decided_at,
                a.requested_at,
            ])?;
        }
        for a in step.attempts.iter() {
            if let Some(g) = &a.gate {
                gate_stmt.execute(params![
                    run_id,
                    step.id,
                    a.visit,
                    a.attempt,
                    g.outcome.as_str(),
                    g.pass,
                    g.warn,
                    g.profile,
                    serde_json::to_string(&g.values).unwrap_or_default(),
                ])?;
            }
            if let Some(r) = &a.receipt {
                let from =
                    a.cached_from().map(|f| format!("{}/{}#{}/{}", f.run_id, f.step, f.visit, f.attempt));
                let path =
                    crate::store::attempt_dir(std::path::Path::new(run_id), &step.id, a.visit, a.attempt)
                        .join(crate::receipt::RECEIPT_FILE);
                receipt_stmt.execute(params![
                    run_id,
                    step.id,
                    a.visit,
                    a.attempt,
                    r.key,
                    r.result,
                    a.status.as_str(),
                    from,
                    a.cache_miss(),
                    path.to_string_lossy(),
                    a.finished_at,
                ])?;
            }
            attempt_stmt.execute(params![
                run_id,
                step.id,
                a.visit,
                a.attempt,
                a.status.as_str(),
                a.exit_code,
                a.signal,
                a.reason,
                a.message,
                a.pid,
                a.started_at,
                a.finished_at,
                a.duration_ms.map(|d| d as i64),
                a.executor(),
                a.job.as_ref().map(|j| j.job_id.as_str()),
                a.job.as_ref().and_then(|j| j.node.as_deref()),
            ])?;
            for (key, value) in &a.outputs {
                output_stmt.execute(params![run_id, step.id, a.visit, a.attempt, key, value])?;
            }
            if let Some(h) = &a.handoff {
                let meta = h.metadata.as_ref().map(|m| m.to_string());
                handoff_stmt.execute(params![
                    run_id,
                    step.id,
                    a.visit,
                    a.attempt,
                    h.content_md,
                    meta,
                    a.finished_at
                ])?;
            }
        }
    }
    Ok(())
}

/// What one commit changed in a run's rows: its events, the steps they touched (as they
/// are after the commit) and the run row. Built from the folded state, so it carries no
/// second interpretation of events, and owned, so another thread can write it.
#[derive(Clone, Debug)]
pub struct Batch {
    pub records: Vec<Record>,
    pub run: RunRow,
    /// The rows of every step the records touched, by position.
    pub steps: Vec<StepRows<'static>>,
    /// The frames a call event pushed or popped.
    pub frames: Vec<Frame>,
    /// The service instances a service event changed.
    pub services: Vec<ServiceRun>,
    pub journal_bytes: u64,
}

impl Batch {
    /// The rows `records` changed, read from `state` (the fold including them).
    pub fn of(state: &RunState, records: &[Record], journal_bytes: u64) -> Batch {
        // Events about one step change that step's rows; starting or resuming a run may
        // change all of them; the other run-level events change none.
        let all = records.iter().any(|r| matches!(r.event, Event::RunStarted(_) | Event::RunResumed(_)));
        let mut touched: BTreeMap<usize, Vec<(u32, u32)>> = BTreeMap::new();
        if all {
            touched.extend((0..state.steps.len()).map(|i| (i, Vec::new())));
        }
        for r in records {
            for pos in r.event.touched().filter_map(|s| state.step_pos(s)) {
                touched.entry(pos).or_default();
            }
            let attempt = match &r.event {
                Event::CallReturned(e) => {
                    state.frames.get(e.frame as usize - 1).map(|f| (f.call.visit, f.call.attempt))
                }
                e => e.attempt(),
            };
            if let (Some(key), Some(pos)) = (attempt, r.event.step().and_then(|s| state.step_pos(s))) {
                touched.entry(pos).or_default().push(key);
            }
        }
        let since = records.first().map_or(0, |r| r.seq);
        let frames = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::CallPushed(e) => Some(e.frame),
                Event::CallReturned(e) => Some(e.frame),
                _ => None,
            })
            .filter_map(|f| state.frames.get(f as usize - 1).cloned())
            .collect();
        let mut services: Vec<ServiceRun> = Vec::new();
        for r in records {
            let (name, instance) = match &r.event {
                Event::ServiceStarted(e) => (&e.service, e.instance),
                Event::ServiceHealthy(e) => (&e.service, e.instance),
                Event::ServiceExited(e) => (&e.service, e.instance),
                _ => continue,
            };
            let found = state.services.iter().find(|s| s.service == *name && s.instance == instance);
            if let Some(run) = found
                && !services.contains(run)
            {
                services.push(run.clone());
            }
        }
        Batch {
            records: records.to_vec(),
            services,
            run: RunRow::of(state),
            steps: touched
                .iter()
                .map(|(&i, keys)| StepRows::changed(i, &state.steps[i], keys, since))
                .collect(),
            frames,
            journal_bytes,
        }
    }

    /// Folds a later batch of the same run into this one.
    pub fn merge(&mut self, later: Batch) {
        self.records.extend(later.records);
        self.run = later.run;
        self.journal_bytes = later.journal_bytes;
        self.frames.extend(later.frames);
        self.services.extend(later.services);
        for step in later.steps {
            match self.steps.binary_search_by_key(&step.pos, |s| s.pos) {
                Ok(i) => self.steps[i].merge(step),
                Err(i) => self.steps.insert(i, step),
            }
        }
    }
}

/// Brings `schedule_decisions` up to date with the entries of the schedule log: appends
/// the ones past the last row, or starts over when the rows are not a prefix of the log
/// (it was deleted or replaced). Both the scheduler and a rebuild come through here.
/// Returns how many rows were written.
pub fn sync_schedule_decisions(conn: &Connection, entries: &[ScheduleEntry]) -> rusqlite::Result<usize> {
    let (count, max): (i64, Option<i64>) =
        conn.query_row("SELECT COUNT(*), MAX(seq) FROM schedule_decisions", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let mut have = max.unwrap_or(0).max(0) as usize;
    let prefix = count as usize == have
        && have <= entries.len()
        && (have == 0 || {
            let e = &entries[have - 1];
            let row: Option<(String, String, String, String)> = conn
                .query_row(
                    "SELECT flow, slot, decided_at, run_id FROM schedule_decisions WHERE seq = ?1",
                    [have as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .ok();
            row == Some((e.flow.clone(), e.slot.clone(), e.decided_at.clone(), e.run_id.clone()))
        });
    if !prefix {
        conn.execute("DELETE FROM schedule_decisions", [])?;
        have = 0;
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO schedule_decisions (seq, flow, slot, decided_at, decision, run_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for e in &entries[have..] {
        stmt.execute(params![e.seq as i64, e.flow, e.slot, e.decided_at, e.decision.as_str(), e.run_id])?;
    }
    Ok(entries.len() - have)
}

/// Deletes a run's rows. Not its `schedule_decisions`: those fold the schedule log, which
/// keeps the decision after the run is gone (a rebuild would bring them back).
pub fn delete_run(conn: &Connection, run_id: &str) -> rusqlite::Result<()> {
    for table in [
        "services",
        "events",
        "receipts",
        "gates",
        "approvals",
        "frames",
        "routing_decisions",
        "handoffs",
        "outputs",
        "attempts",
        "steps",
        "runs",
    ] {
        conn.execute(&format!("DELETE FROM {table} WHERE run_id = ?1"), [run_id])?;
    }
    Ok(())
}

/// Writes the rows of call frames (later versions of a frame replace earlier ones).
pub fn upsert_frames<'a>(
    conn: &Connection,
    run_id: &str,
    frames: impl Iterator<Item = &'a Frame>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO frames (run_id, frame, caller_step, visit, reason, flow, copy, params,
            then_action, pushed_at, returned_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for f in frames {
        let c = &f.call;
        stmt.execute(params![
            run_id,
            c.frame,
            c.step,
            c.visit,
            c.reason.as_str(),
            c.flow,
            c.copy,
            serde_json::to_string(&c.params).unwrap_or_default(),
            c.then.map(|t| t.as_str()),
            f.pushed_at,
            f.returned_at,
        ])?;
    }
    Ok(())
}

/// Writes the rows of service instances (later versions replace earlier ones).
pub fn upsert_services<'a>(
    conn: &Connection,
    run_id: &str,
    services: impl Iterator<Item = &'a ServiceRun>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO services (run_id, name, instance, pid, for_step, restarts, started_at,
            healthy_at, checks, stopped_at, reason, exit_code, signal, message, degraded)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    for s in services {
        stmt.execute(params![
            run_id,
            s.service,
            s.instance,
            s.pid,
            s.for_step,
            s.restart,
            s.started_at,
            s.healthy_at,
            s.checks,
            s.stopped_at,
            s.reason.map(|r| r.as_str()),
            s.exit_code,
            s.signal,
            s.message,
            s.degraded,
        ])?;
    }
    Ok(())
}

/// Writes a whole run: its events, and every row derived from its state.
pub fn write_run(
    conn: &Connection,
    state: &RunState,
    records: &[Record],
    journal_bytes: u64,
) -> rusqlite::Result<()> {
    insert_events(conn, &state.run_id, records)?;
    let rows: Vec<StepRows> = state.steps.iter().enumerate().map(|(i, s)| StepRows::all(i, s)).collect();
    upsert_steps(conn, &state.run_id, rows.iter())?;
    upsert_frames(conn, &state.run_id, state.frames.iter())?;
    upsert_services(conn, &state.run_id, state.services.iter())?;
    upsert_run(conn, &RunRow::of(state), journal_bytes)
}

//! `runner status`: the runs, or one run's steps, from the projection (caught up first).

pub mod step;

use rusqlite::{OptionalExtension, Row};
use serde_json::json;

use crate::cli::{Global, StatusArgs};
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::projection::{Projection, ProjectionError};
use crate::report::{elapsed, human, human_ms, local_time, note, table};
use crate::store::{RunsDir, is_locked, live_lock_holders, visit_label};

/// One row of the runs table, plus whether a runner holds the run.
struct RunRow {
    run_id: String,
    flow: String,
    status: String,
    started_at: String,
    finished_at: Option<String>,
    last_event_at: String,
    steps_total: i64,
    steps_succeeded: i64,
    steps_failed: i64,
    params: String,
    sessions: i64,
    steps_waiting: i64,
    profile: Option<String>,
    live: bool,
    /// Steps waiting for approval, in flow order.
    waiting: Vec<String>,
}

const RUN_COLUMNS: &str = "run_id, flow, status, started_at, finished_at, last_event_at, steps_total, \
                           steps_succeeded, steps_failed, params, sessions, steps_waiting, profile";

impl RunRow {
    fn from_row(r: &Row) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            run_id: r.get(0)?,
            flow: r.get(1)?,
            status: r.get(2)?,
            started_at: r.get(3)?,
            finished_at: r.get(4)?,
            last_event_at: r.get(5)?,
            steps_total: r.get(6)?,
            steps_succeeded: r.get(7)?,
            steps_failed: r.get(8)?,
            params: r.get(9)?,
            sessions: r.get(10)?,
            steps_waiting: r.get(11)?,
            profile: r.get(12)?,
            live: false,
            waiting: Vec::new(),
        })
    }

    /// The status to show: a "running" run whose runner holds no lock has crashed; a paused
    /// run whose approvals are all decided waits for a resume.
    fn shown_status(&self) -> &str {
        match self.status.as_str() {
            "running" if !self.live => "crashed",
            "waiting" if self.steps_waiting == 0 => "paused",
            s => s,
        }
    }

    fn duration_ms(&self) -> Option<u64> {
        let end = match (&self.finished_at, self.live) {
            (Some(f), _) => f.clone(),
            (None, true) => crate::journal::now_ts(),
            (None, false) => self.last_event_at.clone(),
        };
        elapsed(&self.started_at, &end).map(|d| d.as_millis() as u64)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "run_id": self.run_id,
            "flow": self.flow,
            "status": self.shown_status(),
            "live": self.live,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms(),
            "steps_total": self.steps_total,
            "steps_succeeded": self.steps_succeeded,
            "steps_failed": self.steps_failed,
            "sessions": self.sessions,
            "profile": self.profile,
            "waiting_for_approval": self.waiting,
            "params": serde_json::from_str::<serde_json::Value>(&self.params).unwrap_or_default(),
        })
    }
}

pub fn status(g: &Global, args: StatusArgs) -> Result<ExitCode, Error> {
    let runs = g.runs();
    let selected = match (&args.run_id, &args.last) {
        (None, None) => None,
        (id, last) => Some(runs.select(id.as_deref(), last.as_deref())?),
    };
    if args.step.is_some() && selected.is_none() {
        return Err(Error::Usage("--step needs --run-id ID or --last".into()));
    }
    if args.follow {
        let id =
            selected.as_deref().ok_or_else(|| Error::Usage("--follow needs --run-id ID or --last".into()))?;
        return follow(g, &runs, id);
    }
    if selected.is_none() && runs.list()?.is_empty() {
        let text = if g.json { "[]".to_string() } else { format!("no runs in {}", runs.root().display()) };
        return print(&text);
    }
    let mut projection = match Projection::open(&runs) {
        Ok(p) => p,
        Err(ProjectionError::Sqlite { source, .. }) if is_damaged(&source) => {
            // It is derived data: rebuild it rather than stop here.
            note("warning: the projection is damaged; rebuilding it from the journals");
            crate::projection::rebuild(&runs, false)?;
            Projection::open(&runs)?
        }
        Err(e) => return Err(e.into()),
    };
    if projection.is_fresh() {
        // A new or upgraded projection: fill it in bulk rather than run by run.
        for (id, why) in projection.rebuild()?.skipped {
            note(&format!("warning: run {id} is left out: {why}"));
        }
    }
    match &selected {
        Some(id) => {
            projection.sync_run_if_behind(id)?;
            match &args.step {
                Some(step) => step_detail(g, &projection, id, step),
                None => run_detail(g, &runs, &projection, id),
            }
        }
        None => {
            for (id, why) in projection.catch_up()?.unreadable {
                note(&format!("warning: run {id} is left out: {why}"));
            }
            run_list(g, &runs, &projection, &args)
        }
    }
}

/// `status --follow`: the run's events as they happen, then its table; the run's exit code.
fn follow(g: &Global, runs: &RunsDir, id: &str) -> Result<ExitCode, Error> {
    let dir = runs.existing(id)?;
    let reporter = crate::report::Reporter::new(g.verbosity(), &dir);
    let state = crate::commands::follow::follow_events(&dir, &reporter)?;
    let code = match state.status {
        crate::state::RunStatus::Succeeded => ExitCode::Success,
        crate::state::RunStatus::Waiting => ExitCode::Paused,
        crate::state::RunStatus::Interrupted if state.signal.as_deref() == Some("SIGINT") => {
            ExitCode::Interrupted
        }
        crate::state::RunStatus::Interrupted => ExitCode::Terminated,
        crate::state::RunStatus::Failed => ExitCode::Failed,
        crate::state::RunStatus::Running => {
            note(&format!(
                "warning: the runner of run {id} died; continue with `runner resume --run-id {id}`"
            ));
            ExitCode::Failed
        }
    };
    let mut projection = Projection::open(runs)?;
    if projection.is_fresh() {
        projection.rebuild()?;
    }
    projection.sync_run_if_behind(id)?;
    run_detail(g, runs, &projection, id)?;
    Ok(code)
}

/// The JSON object of `status --run-id ID --json`, with `exit_code` added: what `run`
/// and `resume` print with `--json` when the run ends.
pub fn print_run_json(g: &Global, id: &str, exit_code: u8) -> Result<(), Error> {
    let runs = g.runs();
    let mut projection = Projection::open(&runs)?;
    if projection.is_fresh() {
        projection.rebuild()?;
    }
    projection.sync_run_if_behind(id)?;
    let mut v = run_json(&runs, &projection, id)?;
    v["exit_code"] = json!(exit_code);
    print(&v.to_string()).map(|_| ())
}

fn step_detail(g: &Global, p: &Projection, id: &str, step: &str) -> Result<ExitCode, Error> {
    let d = step::detail(p.connection(), id, step).map_err(sql(p))?;
    if d.is_null() {
        return Err(Error::Usage(format!("run `{id}` has no step `{step}`")));
    }
    if g.json { print(&d.to_string()) } else { print(&step::render(&d)) }
}

fn is_damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

fn print(text: &str) -> Result<ExitCode, Error> {
    crate::report::print(text).map_err(io_at("stdout"))?;
    Ok(ExitCode::Success)
}

fn sql(p: &Projection) -> impl Fn(rusqlite::Error) -> Error + '_ {
    |source| Error::Projection(ProjectionError::Sqlite { path: p.path().to_path_buf(), source })
}

fn run_list(g: &Global, runs: &RunsDir, p: &Projection, args: &StatusArgs) -> Result<ExitCode, Error> {
    let since = args.since.map(|since| {
        let from = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(since).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(jiff::Timestamp::MIN);
        crate::journal::ts_of(from)
    });
    let filter =
        ListFilter { waiting: args.waiting, flow: args.flow.clone(), since, status: args.status.clone() };
    let rows = list_rows(runs, p, &filter)?;
    if args.waiting && rows.is_empty() && !g.json {
        return print("no run waits for approval");
    }
    let filtered = args.flow.is_some() || args.status.is_some() || args.since.is_some();
    if filtered && rows.is_empty() && !g.json {
        return print("no runs match");
    }
    if g.json {
        let list: Vec<_> = rows.iter().map(RunRow::to_json).collect();
        return print(&serde_json::Value::Array(list).to_string());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.run_id.clone(),
                r.flow.clone(),
                r.shown_status().to_string(),
                local_time(&r.started_at),
                r.duration_ms().map(human_ms).unwrap_or_default(),
                format!("{}/{}", r.steps_succeeded, r.steps_total),
                if r.waiting.is_empty() {
                    String::new()
                } else {
                    format!("approve: {}", r.waiting.join(", "))
                },
            ]
        })
        .collect();
    print(&table(&["RUN ID", "FLOW", "STATUS", "STARTED", "DURATION", "STEPS", "WAITING"], &cells))
}

/// Which runs a list shows (`status` and `serve`'s `/api/runs`).
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only runs with steps waiting for approval.
    pub waiting: bool,
    /// A flow name or file.
    pub flow: Option<String>,
    /// Started at or after this journal timestamp.
    pub since: Option<String>,
    /// The shown status (crashed, paused included).
    pub status: Option<String>,
}

fn list_rows(runs: &RunsDir, p: &Projection, f: &ListFilter) -> Result<Vec<RunRow>, Error> {
    let holders = live_lock_holders();
    let mut filters: Vec<String> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    if f.waiting {
        filters.push("steps_waiting > 0".into());
    }
    if let Some(flow) = &f.flow {
        // A flow file names its flow by its stem, as runs record it.
        let name = crate::store::flow_name_of(flow);
        values.push(name);
        filters.push(format!("flow = ?{}", values.len()));
    }
    if let Some(since) = &f.since {
        values.push(since.clone());
        filters.push(format!("started_at >= ?{}", values.len()));
    }
    let filter = if filters.is_empty() { String::new() } else { format!("WHERE {}", filters.join(" AND ")) };
    let mut stmt = p
        .connection()
        .prepare(&format!("SELECT {RUN_COLUMNS} FROM runs {filter} ORDER BY started_at, run_id"))
        .map_err(sql(p))?;
    let mut rows: Vec<RunRow> = stmt
        .query_map(rusqlite::params_from_iter(values.iter()), RunRow::from_row)
        .map_err(sql(p))?
        .collect::<Result<_, _>>()
        .map_err(sql(p))?;
    for r in &mut rows {
        r.live = is_locked(&runs.run_dir(&r.run_id), &holders);
        if r.steps_waiting > 0 {
            r.waiting = waiting_steps(p, &r.run_id)?;
        }
    }
    // The shown status (crashed, paused) is worked out here, so it is filtered here.
    if let Some(status) = &f.status {
        rows.retain(|r| r.shown_status() == status);
    }
    Ok(rows)
}

/// The runs a filter selects, oldest first, as `status --json` prints them.
pub fn list_json(runs: &RunsDir, p: &Projection, f: &ListFilter) -> Result<Vec<serde_json::Value>, Error> {
    Ok(list_rows(runs, p, f)?.iter().map(RunRow::to_json).collect())
}

/// The steps of run `id` that wait for approval.
fn waiting_steps(p: &Projection, id: &str) -> Result<Vec<String>, Error> {
    let mut stmt = p
        .connection()
        .prepare_cached(
            "SELECT step_id FROM steps WHERE run_id = ?1 AND status = 'waiting' ORDER BY position",
        )
        .map_err(sql(p))?;
    stmt.query_map([id], |r| r.get(0)).map_err(sql(p))?.collect::<Result<_, _>>().map_err(sql(p))
}

type StepRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

/// Everything `status --run-id` shows of one run.
struct RunView {
    run: RunRow,
    steps: Vec<StepRow>,
    services: Vec<ServiceRow>,
}

impl RunView {
    fn load(runs: &RunsDir, p: &Projection, id: &str) -> Result<RunView, Error> {
        let conn = p.connection();
        let mut run = conn
            .query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"), [id], RunRow::from_row)
            .optional()
            .map_err(sql(p))?
            .ok_or_else(|| Error::Usage(format!("run `{id}` is not in the projection")))?;
        run.live = is_locked(&runs.run_dir(id), &live_lock_holders());
        run.waiting = waiting_steps(p, id)?;
        let mut stmt = conn
            .prepare(
                "SELECT step_id, status, attempts, duration_ms, exit_code, message, started_at, finished_at,
                        reason, visit
                 FROM steps WHERE run_id = ?1 ORDER BY position",
            )
            .map_err(sql(p))?;
        let steps: Vec<StepRow> = stmt
            .query_map([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })
            .map_err(sql(p))?
            .collect::<Result<_, _>>()
            .map_err(sql(p))?;
        Ok(RunView { run, steps, services: service_rows(p, id)? })
    }

    /// Services that died under `degraded = "continue"`, without repeats.
    fn degraded(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in self.services.iter().filter(|s| s.degraded) {
            if !out.contains(&s.name.as_str()) {
                out.push(&s.name);
            }
        }
        out
    }

    fn to_json(&self) -> serde_json::Value {
        let mut v = self.run.to_json();
        v["degraded"] = json!(self.degraded());
        v["services"] = self.services.iter().map(ServiceRow::to_json).collect();
        v["steps"] = self
            .steps
            .iter()
            .map(|s| {
                json!({
                    "step_id": s.0, "status": s.1, "attempts": s.2, "duration_ms": s.3,
                    "exit_code": s.4, "message": s.5, "started_at": s.6, "finished_at": s.7, "reason": s.8,
                    "visit": s.9,
                })
            })
            .collect();
        v
    }
}

/// One run as `status --run-id ID --json` prints it.
pub fn run_json(runs: &RunsDir, p: &Projection, id: &str) -> Result<serde_json::Value, Error> {
    Ok(RunView::load(runs, p, id)?.to_json())
}

fn run_detail(g: &Global, runs: &RunsDir, p: &Projection, id: &str) -> Result<ExitCode, Error> {
    let view = RunView::load(runs, p, id)?;
    if g.json {
        return print(&view.to_json().to_string());
    }
    let (run, steps, services) = (&view.run, &view.steps, &view.services);
    let degraded = view.degraded();
    let conn = p.connection();
    let mut out = String::new();
    out.push_str(&format!("run:      {}\n", run.run_id));
    out.push_str(&format!("flow:     {}\n", run.flow));
    out.push_str(&format!("status:   {}", run.shown_status()));
    if !degraded.is_empty() {
        out.push_str(&format!(" (degraded: service {} died while steps used it)", degraded.join(", ")));
    }
    out.push('\n');
    out.push_str(&format!("started:  {}\n", local_time(&run.started_at)));
    if let Some(ms) = run.duration_ms() {
        out.push_str(&format!("duration: {}\n", human(std::time::Duration::from_millis(ms))));
    }
    if run.params != "{}" {
        out.push_str(&format!("params:   {}\n", run.params));
    }
    if let Some(profile) = &run.profile {
        out.push_str(&format!("profile:  {profile}\n"));
    }
    out.push('\n');
    let jobs = running_jobs(conn, &run.run_id).unwrap_or_default();
    let cells: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            let warned = s.8.as_deref() == Some("gate_warning");
            let detail = match jobs.get(&s.0) {
                Some(job) if s.1 == "running" => job.clone(),
                _ if s.1 == "succeeded" && !warned => String::new(),
                _ => s.5.clone().unwrap_or_default(),
            };
            vec![
                visit_label(&s.0, s.9 as u32),
                s.1.clone(),
                s.2.to_string(),
                s.3.map(|d| human_ms(d as u64)).unwrap_or_default(),
                s.4.map(|c| c.to_string()).unwrap_or_default(),
                detail,
            ]
        })
        .collect();
    out.push_str(&table(&["STEP", "STATUS", "ATTEMPTS", "DURATION", "EXIT", "DETAIL"], &cells));
    if !services.is_empty() {
        let cells: Vec<Vec<String>> = services.iter().map(ServiceRow::cells).collect();
        out.push('\n');
        out.push_str(&table(&["SERVICE", "STATE", "HEALTHY AFTER", "UP", "EXIT", "DETAIL"], &cells));
    }
    // Open frames: where a paused or failed run is inside called flows, outermost first.
    let mut stmt = conn
        .prepare(
            "SELECT frame, caller_step, visit, reason, flow FROM frames
             WHERE run_id = ?1 AND returned_at IS NULL ORDER BY frame",
        )
        .map_err(sql(p))?;
    let stack: Vec<String> = stmt
        .query_map([id], |r| {
            let (frame, step, visit, reason, flow): (i64, String, i64, String, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
            Ok(format!("  frame {frame}: {} -> {flow} ({reason})", visit_label(&step, visit as u32)))
        })
        .map_err(sql(p))?
        .collect::<Result<_, _>>()
        .map_err(sql(p))?;
    if !stack.is_empty() {
        out.push_str("\ncall stack:\n");
        out.push_str(&stack.join("\n"));
        out.push('\n');
    }
    for step in &run.waiting {
        out.push_str(&format!("\napprove with: runner approve --run-id {id} --step {step} --resume"));
    }
    if !run.waiting.is_empty() {
        out.push('\n');
    } else if run.shown_status() != "succeeded" && !run.live {
        out.push_str(&format!("\ncontinue with: runner resume --run-id {id}\n"));
    }
    print(&out)
}

/// One instance of a service, as the projection has it.
struct ServiceRow {
    name: String,
    instance: i64,
    pid: i64,
    restarts: i64,
    started_at: String,
    healthy_at: Option<String>,
    stopped_at: Option<String>,
    reason: Option<String>,
    exit_code: Option<i64>,
    signal: Option<String>,
    message: Option<String>,
    degraded: bool,
}

impl ServiceRow {
    /// What happened to it: running, healthy, stopped, died, …
    fn state(&self) -> &str {
        match (&self.reason, &self.healthy_at) {
            (Some(r), _) => r.as_str(),
            (None, Some(_)) => "healthy",
            (None, None) => "starting",
        }
    }

    fn cells(&self) -> Vec<String> {
        let label =
            if self.instance > 1 { format!("{}#{}", self.name, self.instance) } else { self.name.clone() };
        let up_to = self.stopped_at.clone().unwrap_or_else(|| jiff::Timestamp::now().to_string());
        let exit = match (&self.exit_code, &self.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => s.clone(),
            _ => String::new(),
        };
        let mut detail = self.message.clone().unwrap_or_default();
        if self.restarts > 0 {
            detail = format!("restart {}; {detail}", self.restarts);
        }
        vec![
            label,
            self.state().to_string(),
            self.healthy_at
                .as_deref()
                .and_then(|h| elapsed(&self.started_at, h))
                .map(human)
                .unwrap_or_default(),
            elapsed(&self.started_at, &up_to).map(human).unwrap_or_default(),
            exit,
            detail,
        ]
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "name": self.name, "instance": self.instance, "pid": self.pid, "restarts": self.restarts,
            "state": self.state(), "started_at": self.started_at, "healthy_at": self.healthy_at,
            "stopped_at": self.stopped_at, "exit_code": self.exit_code, "signal": self.signal,
            "message": self.message, "degraded": self.degraded,
        })
    }
}

fn service_rows(p: &Projection, id: &str) -> Result<Vec<ServiceRow>, Error> {
    let conn = p.connection();
    let mut stmt = conn
        .prepare(
            "SELECT name, instance, pid, restarts, started_at, healthy_at, stopped_at, reason, exit_code,
                    signal, message, degraded
             FROM services WHERE run_id = ?1 ORDER BY started_at, name, instance",
        )
        .map_err(sql(p))?;
    stmt.query_map([id], |r| {
        Ok(ServiceRow {
            name: r.get(0)?,
            instance: r.get(1)?,
            pid: r.get(2)?,
            restarts: r.get(3)?,
            started_at: r.get(4)?,
            healthy_at: r.get(5)?,
            stopped_at: r.get(6)?,
            reason: r.get(7)?,
            exit_code: r.get(8)?,
            signal: r.get(9)?,
            message: r.get(10)?,
            degraded: r.get(11)?,
        })
    })
    .map_err(sql(p))?
    .collect::<Result<_, _>>()
    .map_err(sql(p))
}

/// Where each running cluster attempt of a run is: `slurm job 42 on node7`.
fn running_jobs(
    conn: &rusqlite::Connection,
    run_id: &str,
) -> rusqlite::Result<std::collections::HashMap<String, String>> {
    let mut stmt = conn.prepare(
        "SELECT step_id, executor, job_id, node, status FROM attempts
         WHERE run_id = ?1 AND status = 'running' AND job_id IS NOT NULL",
    )?;
    let rows = stmt.query_map([run_id], |r| {
        let a = serde_json::json!({"executor": r.get::<_, String>(1)?, "job_id": r.get::<_, String>(2)?,
            "node": r.get::<_, Option<String>>(3)?, "status": r.get::<_, String>(4)?});
        Ok((r.get::<_, String>(0)?, step::job_where(&a)))
    })?;
    rows.collect()
}

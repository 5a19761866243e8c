//! Generates a synthetic but fully valid corpus of runs, for benchmarking
//! `runner rebuild-projection` (see `scripts/bench.sh`).
//!
//! ```text
//! cargo run --release --example gen_corpus -- --runs-dir DIR --runs 1000 --events-per-run 1000
//! ```
//!
//! Every run is made the way the runner makes one: `runner::store::create_run` assembles
//! `DIR/<run-id>/` (a `flow.toml` whose blake3 is `RunStarted.flow_hash` and whose steps
//! are `RunStarted.steps`, the `lock` file, the first journal line), then the events are
//! staged on the run's `JournalWriter` and committed in batches, and `state.json` is
//! written at the end as a session does when it finishes. The runs are sequences of steps:
//! `StepStarted`/`StepSucceeded` per step, with some failed attempts (`StepFailed` with
//! `retry_in_ms`, exit codes, signals, timeouts, the odd spawn failure) followed by a new
//! attempt, some runs that fail for good, and `RunFinished` last. Every run has exactly
//! `--events-per-run` events. Every committed record is folded through
//! `runner::state::RunState` while generating, every flow copy is parsed with
//! `runner::flow::Flow`, and at the end two runs are loaded back with
//! `runner::store::load_run`, so a corpus that does not fold cleanly is never reported
//! as generated.
//!
//! Timestamps come from the journal writer (wall-clock time of generation); durations,
//! pids and process start times are synthetic but plausible. Generation is deterministic
//! for a given `--seed` apart from run ids and timestamps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use runner::flow::Flow;
use runner::journal::{
    Event, FailReason, JOURNAL_FORMAT, JournalWriter, RunFinished, RunOutcome, RunStarted, Session,
    StepFailed, StepStarted, StepSucceeded,
};
use runner::state::{RunState, RunStatus, write_snapshot};
use runner::store::{CreatedRun, FLOW_COPY, RunsDir, SnapshotUse, create_run, generate_run_id, load_run};

const USAGE: &str = "\
Generates a synthetic, fully valid corpus of runs for the rebuild-projection benchmark.

usage: gen_corpus --runs-dir DIR [options]

  --runs-dir DIR         where to create the runs (created; must be empty or missing)
  --runs N               number of runs (default 1000)
  --events-per-run N     journal events per run, exactly (default 1000, at least 3)
  --commit-every N       events per journal commit, i.e. per fdatasync (default 100)
  --jobs N               runs generated in parallel (default: number of CPUs)
  --seed N               seed for the synthetic content (default 1)
  --step-logs            also create steps/<step>/<attempt>/{stdout,stderr}.log as the runner
                         does (off by default: a million tiny files slow generation a lot)
  --no-snapshot          do not write state.json at the end of each run
  -h, --help             this help
";

const FLOWS: &[&str] = &["nightly-etl", "hourly-ingest", "weekly-report", "reindex-search", "backup-verify"];
const VERBS: &[&str] = &[
    "fetch",
    "extract",
    "load",
    "transform",
    "validate",
    "dedupe",
    "aggregate",
    "export",
    "upload",
    "index",
    "compact",
    "verify",
    "notify",
    "archive",
    "render",
    "sync",
];
const NOUNS: &[&str] = &[
    "orders",
    "invoices",
    "customers",
    "events",
    "sessions",
    "inventory",
    "payments",
    "refunds",
    "logs",
    "metrics",
    "reports",
    "thumbnails",
    "catalog",
    "ledger",
    "shipments",
    "accounts",
];
const SPAWN_ERRORS: &[&str] = &[
    "Resource temporarily unavailable (os error 11)",
    "Too many open files (os error 24)",
    "Cannot allocate memory (os error 12)",
];

#[derive(Clone, Debug)]
struct Options {
    runs_dir: PathBuf,
    runs: usize,
    events_per_run: u64,
    commit_every: usize,
    jobs: usize,
    seed: u64,
    step_logs: bool,
    snapshot: bool,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut args = std::env::args().skip(1);
    let mut runs_dir = None;
    let mut opts = Options {
        runs_dir: PathBuf::new(),
        runs: 1000,
        events_per_run: 1000,
        commit_every: 100,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seed: 1,
        step_logs: false,
        snapshot: true,
    };
    fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
        let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
        value.parse().map_err(|_| format!("{flag}: `{value}` is not a valid number"))
    }
    while let Some(arg) = args.next() {
        // Accept `--flag=value` as well as `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--runs-dir" => runs_dir = Some(PathBuf::from(value().ok_or("--runs-dir needs a value")?)),
            "--runs" => opts.runs = number(&flag, value())?,
            "--events-per-run" => opts.events_per_run = number(&flag, value())?,
            "--commit-every" => opts.commit_every = number(&flag, value())?,
            "--jobs" => opts.jobs = number(&flag, value())?,
            "--seed" => opts.seed = number(&flag, value())?,
            "--step-logs" => opts.step_logs = true,
            "--no-snapshot" => opts.snapshot = false,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    opts.runs_dir = runs_dir.ok_or("--runs-dir DIR is required")?;
    if opts.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if opts.events_per_run < 3 {
        return Err("--events-per-run must be at least 3 (RunStarted, one step event, RunFinished)".into());
    }
    if opts.commit_every == 0 || opts.jobs == 0 {
        return Err("--commit-every and --jobs must be at least 1".into());
    }
    Ok(Some(opts))
}

/// SplitMix64: small, fast, good enough for synthetic data, and reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut rng = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Log-uniform in `lo..=hi`: as many 10 ms steps as 10 s steps as 10 min steps.
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
        (l + u * (h - l)).exp().round() as u64
    }

    /// A step duration: mostly short, some minutes, a few long ones.
    fn duration_ms(&mut self) -> u64 {
        match self.below(100) {
            0..=59 => self.log_uniform(15, 5_000),
            60..=94 => self.log_uniform(5_000, 300_000),
            _ => self.log_uniform(300_000, 1_800_000),
        }
    }
}

/// How one attempt of a step ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    Succeeded,
    /// `StepStarted` then `StepFailed` (exit code, signal or timeout).
    Failed,
    /// A lone `StepFailed { reason: spawn, receipt: None }`: the command could not be started.
    SpawnFailed,
}

impl Ending {
    fn events(self) -> u64 {
        match self {
            Ending::SpawnFailed => 1,
            Ending::Succeeded | Ending::Failed => 2,
        }
    }
}

struct StepPlan {
    id: String,
    run: String,
    /// `retries` in the flow: at least the failed attempts that were retried.
    retries: u32,
    timeout_s: Option<u64>,
    description: Option<String>,
    /// Empty for steps after a step that failed for good: they never ran.
    attempts: Vec<Ending>,
}

struct RunPlan {
    flow_name: &'static str,
    steps: Vec<StepPlan>,
    /// The step that failed for good, if the run fails.
    failed_step: Option<usize>,
}

impl RunPlan {
    fn events(&self) -> u64 {
        2 + self.steps.iter().flat_map(|s| &s.attempts).map(|a| a.events()).sum::<u64>()
    }
}

/// Plans a run with exactly `events` journal events: RunStarted, the attempts, RunFinished.
/// Attempts cost two events (started + ended); one spawn failure (one event) fixes parity.
fn plan_run(rng: &mut Rng, index: usize, events: u64) -> RunPlan {
    let flow_name = FLOWS[index % FLOWS.len()];
    let body = events - 2;
    let spawn = body % 2 == 1;
    let mut remaining = body - u64::from(spawn);
    let mut attempts_per_step: Vec<Vec<Ending>> = Vec::new();
    while remaining > 0 {
        let wanted: u64 = match rng.below(1000) {
            0..=939 => 0,
            940..=989 => 1,
            _ => 2,
        };
        let failures = wanted.min(remaining / 2 - 1);
        remaining -= 2 * (failures + 1);
        let mut attempts = vec![Ending::Failed; failures as usize];
        attempts.push(Ending::Succeeded);
        attempts_per_step.push(attempts);
    }
    if spawn {
        if attempts_per_step.is_empty() {
            attempts_per_step.push(Vec::new());
        }
        let k = rng.below(attempts_per_step.len() as u64) as usize;
        attempts_per_step[k].insert(0, Ending::SpawnFailed);
    }
    // About 3% of runs fail for good: their last step's last attempt fails, and the
    // steps after it in the flow never run.
    let last = attempts_per_step.len() - 1;
    let fails = rng.chance(0.03) || attempts_per_step[last] == [Ending::SpawnFailed];
    let mut failed_step = None;
    if fails {
        let a = attempts_per_step[last].last_mut().unwrap_or_else(|| unreachable!("steps have attempts"));
        if *a == Ending::Succeeded {
            *a = Ending::Failed;
        }
        failed_step = Some(last);
        for _ in 0..rng.range(1, 4) {
            attempts_per_step.push(Vec::new());
        }
    }

    let steps = attempts_per_step
        .into_iter()
        .enumerate()
        .map(|(i, attempts)| {
            let verb = *rng.pick(VERBS);
            let noun = *rng.pick(NOUNS);
            let retried = attempts.len().saturating_sub(1) as u32;
            let retries = if failed_step == Some(i) {
                retried // the last attempt used up the retries
            } else {
                retried.max(*rng.pick(&[0, 0, 0, 1, 2, 3]))
            };
            let timeout_s = rng.chance(0.3).then(|| *rng.pick(&[60, 300, 900, 1800, 3600]));
            let run = match rng.below(4) {
                0 => format!("./bin/{verb} --source {noun} --date \"$RUNNER_PARAM_DATE\" --shard {i}"),
                1 => format!("python3 jobs/{verb}_{noun}.py --date \"$RUNNER_PARAM_DATE\" --part {i}"),
                2 => format!("psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -f sql/{verb}_{noun}.sql"),
                _ => format!("make -C pipelines/{noun} {verb} SHARD=$RUNNER_PARAM_SHARD"),
            };
            let description = rng.chance(0.2).then(|| format!("{verb} {noun}, part {i}"));
            StepPlan { id: format!("{verb}-{noun}-{i:04}"), run, retries, timeout_s, description, attempts }
        })
        .collect();
    RunPlan { flow_name, steps, failed_step }
}

/// The flow file of a plan. Steps have no `needs`, so they form a sequence.
fn flow_text(plan: &RunPlan) -> String {
    use std::fmt::Write;
    let mut t = String::with_capacity(plan.steps.len() * 120 + 400);
    let _ = write!(
        t,
        "description = \"Synthetic {} flow for benchmarks ({} steps)\"\n\n\
         [params]\n\
         date = {{ default = \"2026-11-21\", description = \"Business date to process\" }}\n\
         shard = {{ default = \"0\" }}\n\n\
         [env]\n\
         LOG_LEVEL = \"info\"\n\
         DATABASE_URL = \"postgres://batch@db.internal/warehouse\"\n",
        plan.flow_name,
        plan.steps.len()
    );
    for s in &plan.steps {
        let _ = write!(t, "\n[[steps]]\nid = \"{}\"\nrun = '{}'\n", s.id, s.run);
        if let Some(d) = &s.description {
            let _ = writeln!(t, "description = \"{d}\"");
        }
        if s.retries > 0 {
            let _ = writeln!(t, "retries = {}", s.retries);
        }
        if let Some(secs) = s.timeout_s {
            let _ = writeln!(t, "timeout = \"{}m\"", secs / 60);
        }
    }
    t
}

/// What one generated run adds to the totals.
#[derive(Default)]
struct Totals {
    runs: u64,
    events: u64,
    journal_bytes: u64,
    other_bytes: u64,
    failed_runs: u64,
    failed_attempts: u64,
    steps: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.runs += o.runs;
        self.events += o.events;
        self.journal_bytes += o.journal_bytes;
        self.other_bytes += o.other_bytes;
        self.failed_runs += o.failed_runs;
        self.failed_attempts += o.failed_attempts;
        self.steps += o.steps;
    }
}

/// Process-wide facts that every `RunStarted` shares.
struct Machine {
    host: String,
    boot_id: String,
    workdir: String,
}

/// Stages events on the run's journal, commits every `commit_every`, folds what committed.
struct Writer<'a> {
    journal: &'a mut JournalWriter,
    state: RunState,
    staged: usize,
    commit_every: usize,
}

impl Writer<'_> {
    fn stage(&mut self, event: Event) -> Result<(), String> {
        self.journal.stage(event);
        self.staged += 1;
        if self.staged >= self.commit_every {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        let path = self.journal.path().to_path_buf();
        let records = self.journal.commit().map_err(|e| e.to_string())?;
        for r in &records {
            self.state
                .apply(r)
                .map_err(|e| format!("{}: generated event does not fold: {e}", path.display()))?;
        }
        self.staged = 0;
        Ok(())
    }
}

fn generate_run(opts: &Options, machine: &Machine, index: usize) -> Result<(PathBuf, Totals), String> {
    let mut rng = Rng::new(opts.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let plan = plan_run(&mut rng, index, opts.events_per_run);
    if plan.events() != opts.events_per_run {
        return Err(format!("internal: planned {} events, not {}", plan.events(), opts.events_per_run));
    }
    let flow_bytes = flow_text(&plan).into_bytes();
    let flow_path = format!("flows/{}.toml", plan.flow_name);
    let flow = Flow::from_bytes(Path::new(&flow_path), &flow_bytes)
        .map_err(|e| format!("generated flow is invalid: {e}"))?;
    if flow.hash != blake3::hash(&flow_bytes).to_hex().as_str()
        || flow.steps.len() != plan.steps.len()
        || flow.steps.iter().zip(&plan.steps).any(|(f, p)| f.id != p.id || f.retries != p.retries)
    {
        return Err("generated flow does not parse back to its plan".into());
    }

    let session_pid = rng.range(2_000, 400_000) as u32;
    let params = BTreeMap::from([
        ("date".to_string(), format!("2026-{:02}-{:02}", rng.range(1, 12), rng.range(1, 28))),
        ("shard".to_string(), rng.below(16).to_string()),
    ]);
    let runs = RunsDir::new(opts.runs_dir.clone());
    let created: CreatedRun = loop {
        let started = RunStarted {
            run_id: generate_run_id(&flow.name),
            flow: flow.name.clone(),
            flow_path: flow_path.clone(),
            flow_hash: flow.hash.clone(),
            params: params.clone(),
            workdir: machine.workdir.clone(),
            steps: flow.steps.iter().map(|s| s.id.clone()).collect(),
            journal_format: JOURNAL_FORMAT,
            profile: None,
            trigger_file: None,
            executor: None,
            session: Session {
                pid: session_pid,
                host: machine.host.clone(),
                boot_id: machine.boot_id.clone(),
                jobs: *rng.pick(&[2, 4, 8]),
                runner_version: env!("CARGO_PKG_VERSION").to_string(),
            },
        };
        // `None`: the generated id exists already (same millisecond, same tail); take another.
        if let Some(c) = create_run(&runs, &flow_bytes, started).map_err(|e| e.to_string())? {
            break c;
        }
    };
    let CreatedRun { dir, lock, mut journal, first } = created;
    let state = RunState::from_first(&first).map_err(|e| format!("RunStarted does not fold: {e}"))?;
    let mut w = Writer { journal: &mut journal, state, staged: 0, commit_every: opts.commit_every };

    let mut totals = Totals { runs: 1, steps: plan.steps.len() as u64, ..Totals::default() };
    let mut pid = session_pid as i32 + rng.range(1, 50) as i32;
    let mut ticks = rng.range(100_000, 50_000_000); // clock ticks since boot (100 Hz)
    let mut log_bytes = 0u64;
    for (pos, step) in plan.steps.iter().enumerate() {
        for (i, &ending) in step.attempts.iter().enumerate() {
            let attempt = i as u32 + 1;
            let last = i + 1 == step.attempts.len();
            // Delay before the next attempt, as `Step::retry_delay` computes it (default backoff).
            let retry_in_ms = (!last).then(|| flow.steps[pos].retry_delay(attempt).as_millis() as u64);
            if opts.step_logs {
                log_bytes += write_step_logs(&dir, &step.id, attempt, ending)?;
            }
            if ending == Ending::SpawnFailed {
                totals.failed_attempts += 1;
                w.stage(Event::StepFailed(StepFailed {
                    step: step.id.clone(),
                    visit: 1,
                    attempt,
                    reason: FailReason::Spawn,
                    exit_code: None,
                    signal: None,
                    message: format!("cannot start the command: {}", rng.pick(SPAWN_ERRORS)),
                    duration_ms: 0,
                    retry_in_ms,
                    receipt: None,
                }))?;
                continue;
            }
            pid += rng.range(1, 40) as i32;
            if pid > 4_194_000 {
                pid = 300 + rng.range(0, 1000) as i32;
            }
            ticks += rng.range(1, 20);
            w.stage(Event::StepStarted(StepStarted {
                step: step.id.clone(),
                visit: 1,
                attempt,
                pid,
                proc_start: ticks,
                cache: None,
            }))?;
            let mut duration_ms = rng.duration_ms();
            let event = if ending == Ending::Succeeded {
                Event::StepSucceeded(StepSucceeded {
                    step: step.id.clone(),
                    visit: 1,
                    attempt,
                    duration_ms,
                    outputs: Default::default(),
                    handoff: None,
                    receipt: None,
                })
            } else {
                totals.failed_attempts += 1;
                let (reason, exit_code, signal, message) = match (rng.below(10), step.timeout_s) {
                    (0, Some(t)) => {
                        duration_ms = t * 1000 + rng.range(1, 400);
                        let human = runner::report::human(Duration::from_secs(t));
                        (
                            FailReason::Timeout,
                            None,
                            Some("SIGTERM".to_string()),
                            format!("timed out after {human}"),
                        )
                    }
                    (1, _) => {
                        let sig = *rng.pick(&["SIGKILL", "SIGSEGV", "SIGABRT"]);
                        (FailReason::Signal, None, Some(sig.to_string()), format!("killed by {sig}"))
                    }
                    _ => {
                        let code = *rng.pick(&[1, 1, 1, 1, 2, 3, 70, 75, 127]);
                        (FailReason::Exit, Some(code), None, format!("exited with code {code}"))
                    }
                };
                Event::StepFailed(StepFailed {
                    step: step.id.clone(),
                    visit: 1,
                    attempt,
                    reason,
                    exit_code,
                    signal,
                    message,
                    duration_ms,
                    retry_in_ms,
                    receipt: None,
                })
            };
            ticks += duration_ms / 10;
            w.stage(event)?;
        }
    }
    let failed_steps: Vec<String> = plan.failed_step.map(|i| plan.steps[i].id.clone()).into_iter().collect();
    let outcome = if failed_steps.is_empty() { RunOutcome::Succeeded } else { RunOutcome::Failed };
    w.stage(Event::RunFinished(RunFinished { outcome, failed_steps }))?;
    w.commit()?;

    let state = w.state;
    let expected = if outcome == RunOutcome::Succeeded { RunStatus::Succeeded } else { RunStatus::Failed };
    if state.seq != opts.events_per_run || state.status != expected {
        return Err(format!(
            "{}: folded to event {} ({}), expected event {} ({})",
            dir.display(),
            state.seq,
            state.status.as_str(),
            opts.events_per_run,
            expected.as_str()
        ));
    }
    if opts.snapshot {
        let (_, sum) = journal.durable_end();
        write_snapshot(&dir, &state, sum).map_err(|e| format!("{}: state.json: {e}", dir.display()))?;
        totals.other_bytes += file_len(&dir.join(runner::state::SNAPSHOT_FILE));
    }
    totals.failed_runs = u64::from(outcome == RunOutcome::Failed);
    totals.events = state.seq;
    totals.journal_bytes = journal.len();
    totals.other_bytes += flow_bytes.len() as u64 + file_len(&dir.join(runner::store::LOCK_FILE)) + log_bytes;
    drop(journal);
    drop(lock); // the run is finished: release it like a runner that exits
    Ok((dir, totals))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Creates an attempt's log files the way the session does before it spawns the command.
fn write_step_logs(dir: &Path, step: &str, attempt: u32, ending: Ending) -> Result<u64, String> {
    let at = dir.join(runner::store::STEPS_DIR).join(step).join(attempt.to_string());
    let io = |e: std::io::Error| format!("{}: {e}", at.display());
    std::fs::create_dir_all(&at).map_err(io)?;
    let (out, err) = match ending {
        Ending::Succeeded => (format!("{step}: done\n"), String::new()),
        Ending::Failed => (format!("{step}: starting\n"), format!("error: {step} failed\n")),
        Ending::SpawnFailed => (String::new(), String::new()),
    };
    std::fs::write(at.join("stdout.log"), &out).map_err(io)?;
    std::fs::write(at.join("stderr.log"), &err).map_err(io)?;
    Ok((out.len() + err.len()) as u64)
}

/// Loads a generated run back the way `rebuild-projection` does, and with its snapshot.
fn verify_run(dir: &Path, opts: &Options) -> Result<(), String> {
    let what = |e: String| format!("verification of {} failed: {e}", dir.display());
    let loaded = load_run(dir, false, 0).map_err(|e| what(e.to_string()))?;
    if loaded.last_seq != opts.events_per_run
        || loaded.records.len() as u64 != opts.events_per_run
        || loaded.torn.is_some()
        || loaded.state.seq != opts.events_per_run
        || !matches!(loaded.state.status, RunStatus::Succeeded | RunStatus::Failed)
    {
        return Err(what(format!(
            "last_seq {} with {} records (torn: {}), status {}; expected {} events and a finished run",
            loaded.last_seq,
            loaded.records.len(),
            loaded.torn.is_some(),
            loaded.state.status.as_str(),
            opts.events_per_run
        )));
    }
    let flow_bytes = std::fs::read(dir.join(FLOW_COPY)).map_err(|e| what(e.to_string()))?;
    if blake3::hash(&flow_bytes).to_hex().as_str() != loaded.state.flow_hash {
        return Err(what("flow.toml does not match RunStarted.flow_hash".into()));
    }
    if opts.snapshot {
        let with_snapshot = load_run(dir, true, u64::MAX).map_err(|e| what(e.to_string()))?;
        if with_snapshot.snapshot != SnapshotUse::Used(opts.events_per_run)
            || with_snapshot.state != loaded.state
        {
            return Err(what(format!("state.json was not usable: {:?}", with_snapshot.snapshot)));
        }
    }
    Ok(())
}

fn prepare_dir(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty; give a new or empty directory so the totals are exact",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

fn generate(opts: &Options) -> Result<(), String> {
    prepare_dir(&opts.runs_dir)?;
    let machine = Machine {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into()),
        boot_id: runner::executor::procfs::boot_id(),
        workdir: std::env::current_dir().map_err(|e| e.to_string())?.to_string_lossy().into_owned(),
    };
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let totals = Mutex::new(Totals::default());
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let samples: Mutex<Vec<(usize, PathBuf)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.min(opts.runs) {
            scope.spawn(|| {
                let mut mine = Totals::default();
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= opts.runs {
                        break;
                    }
                    match generate_run(opts, &machine, index) {
                        Ok((dir, t)) => {
                            mine.add(&t);
                            if index == 0 || index + 1 == opts.runs {
                                samples.lock().unwrap_or_else(|e| e.into_inner()).push((index, dir));
                            }
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                            break;
                        }
                    }
                }
                totals.lock().unwrap_or_else(|e| e.into_inner()).add(&mine);
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64();
    let totals = totals.into_inner().unwrap_or_else(|e| e.into_inner());

    let mut samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    samples.sort();
    for (_, dir) in &samples {
        verify_run(dir, opts)?;
    }
    let expected = opts.runs as u64 * opts.events_per_run;
    if totals.runs != opts.runs as u64 || totals.events != expected {
        return Err(format!(
            "generated {} runs / {} events, expected {} / {expected}",
            totals.runs, totals.events, opts.runs
        ));
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "generated {} runs x {} events = {} events in {}",
        totals.runs,
        opts.events_per_run,
        totals.events,
        opts.runs_dir.display()
    );
    println!(
        "  steps {} ({} failed attempts, {} failed runs); journals {:.1} MiB, other files {:.1} MiB",
        totals.steps,
        totals.failed_attempts,
        totals.failed_runs,
        mib(totals.journal_bytes),
        mib(totals.other_bytes)
    );
    println!(
        "  {:.2}s with {} jobs ({:.0} events/s); verified {} run(s) fold back with load_run",
        secs,
        opts.jobs.min(opts.runs),
        totals.events as f64 / secs,
        samples.len()
    );
    println!(
        "summary: runs={} events={} journal_bytes={} total_bytes={} seconds={:.3}",
        totals.runs,
        totals.events,
        totals.journal_bytes,
        totals.journal_bytes + totals.other_bytes,
        secs
    );
    Ok(())
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gen_corpus: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match generate(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_corpus: error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! What people see while a run goes: one line per durable event, on stderr.
//!
//! Lines are printed only after the event is in the journal, so the console never claims
//! more than a crash would leave behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::journal::{Event, FailReason, GateOutcome, Record, RoutingSource, RunOutcome};
use crate::state::{RunState, StepStatus};
use crate::store::{attempt_dir, visit_label};

mod progress;

use progress::Bars;
pub use progress::{Progress, console_line};

/// Steps whose current visit is settled (succeeded, failed, skipped, …) for the overall bar.
fn done_steps(state: &RunState) -> u64 {
    use crate::state::StepStatus as S;
    [S::Succeeded, S::Failed, S::Skipped, S::Continued, S::Rejected]
        .iter()
        .map(|s| state.count(*s) as u64)
        .sum()
}

/// Lines of a failed step's log shown under the failure.
const TAIL_LINES: usize = 10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    #[default]
    Normal,
    Verbose,
}

pub struct Reporter {
    verbosity: Verbosity,
    run_dir: PathBuf,
    /// Drawn on a terminal (see [`Progress`]); `None` prints plain lines.
    bars: Option<Bars>,
}

impl Reporter {
    pub fn new(verbosity: Verbosity, run_dir: &Path) -> Reporter {
        Reporter { verbosity, run_dir: run_dir.to_path_buf(), bars: None }
    }

    /// Starts the bars, when `progress` asks for them and the run is not `--quiet`.
    pub fn start_progress(&mut self, progress: Progress, state: &RunState) {
        if progress.bars() && self.verbosity != Verbosity::Quiet && self.bars.is_none() {
            let bars = Bars::new(state.steps.len() as u64);
            bars.set_done(done_steps(state), state.steps.len() as u64);
            self.bars = Some(bars);
        }
    }

    pub fn is_quiet(&self) -> bool {
        self.verbosity == Verbosity::Quiet
    }

    fn line(&self, text: &str) {
        let now = jiff::Zoned::now();
        console_line(&format!("{} {text}", now.strftime("%H:%M:%S")));
    }

    /// At the end of a session: the bars go, and on a terminal a table of the steps stays.
    pub fn finish(&mut self, state: &RunState) {
        let Some(bars) = self.bars.take() else { return };
        bars.finish();
        let rows: Vec<Vec<String>> = state
            .steps
            .iter()
            .map(|s| {
                let ms: u64 = s.attempts.iter().filter_map(|a| a.duration_ms).sum();
                vec![
                    visit_label(&s.id, s.visit),
                    s.status.as_str().to_string(),
                    s.attempts.len().to_string(),
                    if s.attempts.is_empty() { String::new() } else { human_ms(ms) },
                ]
            })
            .collect();
        let _ =
            write!(std::io::stderr().lock(), "{}", table(&["STEP", "STATUS", "ATTEMPTS", "DURATION"], &rows));
    }

    pub fn info(&self, text: &str) {
        if self.verbosity != Verbosity::Quiet {
            self.line(text);
        }
    }

    pub fn warn(&self, text: &str) {
        console_line(&format!("warning: {text}"));
    }

    /// Reports an event that is now durable. `state` is the fold including it.
    pub fn event(&self, record: &Record, state: &RunState) {
        if let Some(bars) = &self.bars {
            // The bars show starts and ends; lines are for what needs reading.
            match &record.event {
                Event::StepStarted(e) => bars.started(&visit_label(&e.step, e.visit), e.attempt),
                Event::StepSubmitted(e) => bars.started(&visit_label(&e.step, e.visit), e.attempt),
                Event::StepSucceeded(e) => bars.ended(&visit_label(&e.step, e.visit), e.attempt),
                Event::StepFailed(e) => bars.ended(&visit_label(&e.step, e.visit), e.attempt),
                Event::StepInterrupted(e) => bars.ended(&visit_label(&e.step, e.visit), e.attempt),
                _ => {}
            }
            bars.set_done(done_steps(state), state.steps.len() as u64);
            if matches!(
                record.event,
                Event::StepStarted(_)
                    | Event::StepSubmitted(_)
                    | Event::JobRunning(_)
                    | Event::StepSucceeded(_)
                    | Event::StepSkipped(_)
            ) {
                return;
            }
        }
        let quiet = self.verbosity == Verbosity::Quiet;
        match &record.event {
            Event::StepStarted(e) if !quiet => {
                let mut text = format!("{}: started", visit_label(&e.step, e.visit));
                if e.attempt > 1 {
                    text.push_str(&format!(" (attempt {})", e.attempt));
                }
                if self.verbosity == Verbosity::Verbose {
                    text.push_str(&format!(" [pid {}]", e.pid));
                }
                self.line(&text);
            }
            Event::StepSubmitted(e) if !quiet => {
                let mut text = format!("{}: submitted to {} as job {}", visit_label(&e.step, e.visit), e.executor.as_str(), e.job_id);
                if e.attempt > 1 {
                    text.push_str(&format!(" (attempt {})", e.attempt));
                }
                self.line(&text);
            }
            Event::JobRunning(e) if self.verbosity == Verbosity::Verbose => {
                self.line(&format!("{}: running on {}", visit_label(&e.step, e.visit), e.node));
            }
            Event::StepSucceeded(e) if !quiet => {
                self.line(&format!(
                    "{}: succeeded in {}",
                    visit_label(&e.step, e.visit),
                    human_ms(e.duration_ms)
                ));
            }
            Event::StepCached(e) => {
                if !quiet {
                    self.line(&format!(
                        "{}: cached (reused the receipt of {} in run {})",
                        visit_label(&e.step, e.visit),
                        visit_label(&e.from.step, e.from.visit),
                        e.from.run_id
                    ));
                }
                if let Some(g) = e.gate.as_ref().filter(|g| g.outcome == GateOutcome::Warn) {
                    self.gate_warning(g);
                }
            }
            Event::CallPushed(e) if !quiet => {
                let why = match e.reason {
                    crate::journal::CallReason::Call => "calls",
                    crate::journal::CallReason::OnFailure => "failed; on_failure calls",
                };
                self.line(&format!("{}: {why} {} (frame {})", visit_label(&e.step, e.visit), e.flow, e.frame));
            }
            Event::CallReturned(e) if !quiet => {
                let status = state.step(&e.step).map_or("", |s| s.status.as_str());
                self.line(&format!("{}: returned from frame {} ({status})", e.step, e.frame));
            }
            Event::StepSkipped(e) if !quiet => {
                self.line(&format!("{}: skipped ({})", visit_label(&e.step, e.visit), e.reason));
            }
            Event::RoutingDecided(e) => match (&e.failure, &e.chosen) {
                (Some(f), _) => self.line(&format!("{}: failed: {f}", visit_label(&e.step, e.visit))),
                (None, Some(c)) if !quiet => {
                    let how = match e.rule {
                        Some(k) if e.routing_source == RoutingSource::Rule => format!("rule {}", k + 1),
                        _ => e.routing_source.as_str().to_string(),
                    };
                    let again = if e.reset.is_empty() { "" } else { " (again)" };
                    self.line(&format!("{}: routed to {c}{again} by {how}", visit_label(&e.step, e.visit)));
                }
                _ => {}
            },
            Event::StepFailed(e) => {
                let mut text = format!("{}: failed: {}", visit_label(&e.step, e.visit), e.message);
                // A command that never started has no duration to tell.
                let started = !matches!(e.reason, FailReason::Spawn | FailReason::Inputs | FailReason::Service)
                    || e.duration_ms > 0;
                if started {
                    text.push_str(&format!(" after {}", human_ms(e.duration_ms)));
                }
                if let Some(ms) = e.retry_in_ms {
                    text.push_str(&format!("; retrying in {}", human_ms(ms)));
                }
                if quiet && e.retry_in_ms.is_some() {
                    return;
                }
                self.line(&text);
                self.show_tail(&e.step, e.visit, e.attempt);
            }
            Event::StepInterrupted(e) if !quiet => {
                let why = if e.reason == crate::journal::InterruptReason::JobLost { ", its job was lost" } else { "" };
                self.line(&format!("{}: interrupted (attempt {}{why})", e.step, e.attempt));
            }
            Event::JournalRepaired(e) => self.warn(&format!(
                "the journal ended in a partly written line (a crash mid-write); cut {} bytes and kept them in {}",
                e.dropped_bytes, e.kept_in
            )),
            Event::RunFinished(e) => {
                let took = elapsed(&state.started_at, &record.ts);
                match e.outcome {
                    RunOutcome::Succeeded => self.line(&format!(
                        "run {} succeeded: {} steps{}{}{}",
                        state.run_id,
                        state.steps.len(),
                        took.map(|d| format!(" in {}", human(d))).unwrap_or_default(),
                        gate_warnings(state),
                        degraded(state)
                    )),
                    RunOutcome::Failed => {
                        let id = &state.run_id;
                        let (rejected, failed): (Vec<String>, Vec<String>) =
                            e.failed_steps.iter().cloned().partition(|s| {
                                state.step(s).is_some_and(|st| st.status == StepStatus::Rejected)
                            });
                        let mut text = format!("run {id} failed:");
                        if !failed.is_empty() {
                            text.push_str(&format!(
                                " {} failed. Fix the cause, then run `runner{} resume --run-id {id}`",
                                plural_steps(&failed),
                                self.runs_dir_arg()
                            ));
                        }
                        if !rejected.is_empty() {
                            text.push_str(&format!(
                                " {} rejected. To run it after all: `runner{} approve --run-id {id} --step {} --resume`",
                                plural_steps(&rejected),
                                self.runs_dir_arg(),
                                rejected[0]
                            ));
                        }
                        self.line(&text);
                    }
                }
            }
            Event::ApprovalRequested(e) => self.line(&format!(
                "{}: {}",
                visit_label(&e.step, e.visit),
                awaiting(e.message.as_deref(), &e.approvers)
            )),
            Event::ApprovalDecided(e) if !quiet => self.line(&format!(
                "{}: {}",
                visit_label(&e.step, e.visit),
                decided(e.decision.as_str(), &e.by, e.comment.as_deref())
            )),
            Event::GateEvaluated(e) if e.outcome == GateOutcome::Warn => self.gate_warning(e),
            Event::RunPaused(e) => {
                let runs = self.runs_dir_arg();
                let id = &state.run_id;
                let mut text = format!(
                    "run {id} paused: {} waiting for approval. Decide with:",
                    plural_steps(&e.waiting)
                );
                for step in &e.waiting {
                    text.push_str(&format!("\n    runner{runs} approve --run-id {id} --step {step} --resume"));
                }
                text.push_str(&format!(
                    "\n  (or `reject`; without --resume, the next `runner{runs} resume --run-id {id}` continues)"
                ));
                self.line(&text);
            }
            Event::ServiceStarted(e) if !quiet => {
                let mut text = format!("service `{}`: started for {}", e.service, e.for_step);
                if e.restart > 0 {
                    text = format!("service `{}`: restarted (restart {})", e.service, e.restart);
                }
                if self.verbosity == Verbosity::Verbose {
                    text.push_str(&format!(" [pid {}]", e.pid));
                }
                self.line(&text);
            }
            Event::ServiceHealthy(e) if !quiet => {
                let text = match e.checks {
                    0 => format!("service `{}`: running (no health check)", e.service),
                    n => format!(
                        "service `{}`: healthy after {} ({n} check{})",
                        e.service,
                        human_ms(e.after_ms),
                        if n == 1 { "" } else { "s" }
                    ),
                };
                self.line(&text);
            }
            Event::ServiceExited(e) => match e.reason {
                // A death is reported by the session with what it means for the steps.
                crate::journal::ServiceEnd::Died => {}
                _ if quiet => {}
                reason => self.line(&format!(
                    "service `{}`: {} ({})",
                    e.service,
                    if reason == crate::journal::ServiceEnd::Lost { "lost with its runner" } else { "stopped" },
                    e.message
                )),
            },
            Event::RunInterrupted(e) => {
                let by = match &e.cancelled_by {
                    Some(who) => format!("cancelled by {who}"),
                    None => format!("interrupted by {}", e.signal),
                };
                self.line(&format!(
                    "run {} {by}; continue with `runner{} resume --run-id {}`",
                    state.run_id,
                    self.runs_dir_arg(),
                    state.run_id
                ))
            }
            _ => {}
        }
    }

    fn gate_warning(&self, e: &crate::journal::GateEvaluated) {
        self.warn(&format!(
            "{}: gate passed with a warning: `{}` is false, `{}` holds{}",
            visit_label(&e.step, e.visit),
            e.pass,
            e.warn.as_deref().unwrap_or_default(),
            gate_values(&e.values)
        ));
    }

    /// ` --runs-dir DIR` when commands must name the runs directory to find this run.
    fn runs_dir_arg(&self) -> String {
        let Some(runs) = self.run_dir.parent() else { return String::new() };
        let default = std::fs::canonicalize("runs").ok();
        let here = std::fs::canonicalize(runs).ok();
        if std::env::var_os("RUNNER_RUNS_DIR").is_some() || (default.is_some() && default == here) {
            return String::new();
        }
        let shown = here.unwrap_or_else(|| runs.to_path_buf());
        format!(" --runs-dir {}", shell_quote(&shown.to_string_lossy()))
    }

    /// Prints the last lines a failed attempt wrote (stderr, else stdout).
    fn show_tail(&self, step: &str, visit: u32, attempt: u32) {
        let dir = attempt_dir(&self.run_dir, step, visit, attempt);
        for name in ["stderr.log", "stdout.log"] {
            let path = dir.join(name);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                continue;
            }
            let skip = lines.len().saturating_sub(TAIL_LINES);
            let mut text: Vec<String> = lines[skip..].iter().map(|l| format!("    | {l}")).collect();
            text.push(format!("    (full log: {})", path.display()));
            console_line(&text.join("\n"));
            return;
        }
    }
}

/// `, degraded: service `api` died`, when services died under `degraded = "continue"`.
pub fn degraded(state: &RunState) -> String {
    let names = state.degraded();
    if names.is_empty() {
        return String::new();
    }
    let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!(" (degraded: service {} died while steps used it)", list.join(", "))
}

/// `waiting for approval: <message> (approvers: a, b)`: the console and `status` say the same.
pub fn awaiting(message: Option<&str>, approvers: &[String]) -> String {
    let mut text = "waiting for approval".to_string();
    if let Some(m) = message {
        text.push_str(&format!(": {m}"));
    }
    if !approvers.is_empty() {
        text.push_str(&format!(" (approvers: {})", approvers.join(", ")));
    }
    text
}

/// `approved by alice: <comment>`.
pub fn decided(decision: &str, by: &str, comment: Option<&str>) -> String {
    match comment {
        Some(c) => format!("{decision} by {by}: {c}"),
        None => format!("{decision} by {by}"),
    }
}

/// `; gate warnings: `a`, `b`` for the steps whose latest success passed its gate only
/// with a warning; empty when none did.
fn gate_warnings(state: &RunState) -> String {
    let warned: Vec<String> = state
        .steps
        .iter()
        .filter(|s| s.success().and_then(|a| a.gate.as_ref()).is_some_and(|g| g.outcome == GateOutcome::Warn))
        .map(|s| format!("`{}`", s.id))
        .collect();
    if warned.is_empty() { String::new() } else { format!("; gate warnings: {}", warned.join(", ")) }
}

/// Quotes a word for a shell command line, only when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// ` (steps.test.outputs.coverage = 55, …)`, for messages about a gate.
pub fn gate_values(values: &std::collections::BTreeMap<String, Option<String>>) -> String {
    if values.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = values
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k} = {v:?}"),
            None => format!("{k} = null"),
        })
        .collect();
    format!(" ({})", shown.join(", "))
}

fn plural_steps(steps: &[String]) -> String {
    match steps {
        [one] => format!("step `{one}`"),
        many => format!("steps {}", many.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")),
    }
}

/// Time between two journal timestamps.
pub fn elapsed(from: &str, to: &str) -> Option<Duration> {
    let a: jiff::Timestamp = from.parse().ok()?;
    let b: jiff::Timestamp = to.parse().ok()?;
    Duration::try_from(b.duration_since(a)).ok()
}

pub fn human_ms(ms: u64) -> String {
    human(Duration::from_millis(ms))
}

/// `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// Prints a line (or block) on stdout. Errors matter here: a closed pipe ends the command.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.trim_end())?;
    out.flush()
}

/// Prints a message on stderr for people; a closed stderr is not worth failing over.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Renders rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push(&mut headers.iter().copied());
    for row in rows {
        push(&mut row.iter().map(String::as_str));
    }
    out
}

/// A journal timestamp in the local time zone, for people.
pub fn local_time(ts: &str) -> String {
    ts.parse::<jiff::Timestamp>()
        .map(|t| t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| ts.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(12_345), "12.3s");
        assert_eq!(human_ms(245_000), "4m 05s");
        assert_eq!(human_ms(7_380_000), "2h 03m");
        assert_eq!(
            elapsed("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.500Z"),
            Some(Duration::from_millis(1500))
        );
    }
}

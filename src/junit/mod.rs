//! `--junit FILE`: a run as a JUnit XML test report, for the test views of GitLab, Jenkins
//! and the GitHub Actions reporters (which all read the Ant/Jenkins dialect).
//!
//! The mapping, and why:
//! - One `<testsuite>` per run, named after the flow; the run id, its status and sessions
//!   are `<properties>`. The name stays the same from run to run, so Jenkins and GitLab
//!   line runs of one flow up in their history.
//! - One `<testcase>` per step visit: `classname` is the flow (not the run id, whose dots
//!   Jenkins would read as packages and which changes every run), `name` is the step, or
//!   `step#2` for a loop's later visits: stable names again, for history and flakiness views.
//! - A visit's result is that of its **last attempt**, and every attempt is listed in
//!   `<system-out>` (`attempt 1 of 2: failed …`) and, for a failure, in its text. One
//!   testcase per attempt would be the alternative, but GitLab and Jenkins count each of
//!   them, so a step that failed once and then passed would turn the report red while the
//!   run (and the pipeline) succeeded; Surefire's `<flakyFailure>` would say it exactly, but
//!   GitLab ignores it and the common GitHub reporters drop it, and it is not in the
//!   Ant/Jenkins schema. Retries are there to make flaky steps pass; the report says they
//!   did, without calling them failures.
//! - A failed attempt is a `<failure type=REASON message=…>` (`exit`, `timeout`, `gate`, …)
//!   whose text holds the attempts and the last lines of its log (stderr, else stdout):
//!   that text is what all three show beside a failed test. A rejected approval is a
//!   failure of type `rejected`. An attempt stopped with the runner (Ctrl+C, a crash) is an
//!   `<error type="interrupted">`: the step did not fail, the run was stopped.
//! - Skipped steps are `<skipped message=REASON>`; so are steps the run never reached (it
//!   failed or paused first) and steps waiting for approval, so that every step of the flow
//!   appears.
//! - Times are in seconds; the suite's is the run's wall time from its start.
//!
//! Only the state (the fold of the journal) and the step logs on disk are read; the logs
//! are already masked, so no secret can reach the report.

pub mod xml;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::report::elapsed;
use crate::state::{Attempt, AttemptStatus, RunState, StepState, StepStatus};
use crate::store::{attempt_dir, visit_label};

use xml::Writer;

/// Lines of a failed attempt's log carried in its `<failure>`.
pub const TAIL_LINES: usize = 50;
/// At most this much of the end of a log is read for its tail: a step can print a single
/// line of gigabytes, and CI servers choke on huge reports.
const TAIL_BYTES: u64 = 64 * 1024;

/// How one testcase ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Passed,
    Failure { kind: &'static str, ty: String, message: String, text: String },
    Skipped(String),
}

/// One testcase: a visit of a step.
#[derive(Debug, Clone, PartialEq)]
struct Case {
    name: String,
    time_ms: u64,
    outcome: Outcome,
    /// Lines for `<system-out>`: the attempts, when there is more to say than one run.
    out: Vec<String>,
}

/// Renders the JUnit XML of a run. `run_dir` is where its step logs are read from.
pub fn render(state: &RunState, run_dir: &Path, hostname: &str) -> String {
    let cases: Vec<Case> = state.steps.iter().flat_map(|s| cases(run_dir, s)).collect();
    let count = |kind: &str| {
        cases.iter().filter(|c| matches!(&c.outcome, Outcome::Failure { kind: k, .. } if *k == kind)).count()
    };
    let tests = cases.len().to_string();
    let failures = count("failure").to_string();
    let errors = count("error").to_string();
    let skipped = cases.iter().filter(|c| matches!(c.outcome, Outcome::Skipped(_))).count().to_string();
    let end = state.finished_at.as_deref().unwrap_or(&state.last_ts);
    let time = seconds(elapsed(&state.started_at, end).map_or(0, |d| d.as_millis() as u64));
    let timestamp = state
        .started_at
        .parse::<jiff::Timestamp>()
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default();

    let mut w = Writer::new();
    w.open(
        "testsuites",
        &[
            ("name", &state.flow),
            ("tests", &tests),
            ("failures", &failures),
            ("errors", &errors),
            ("time", &time),
        ],
    );
    let mut attrs = vec![
        ("name", state.flow.as_str()),
        ("tests", &tests),
        ("failures", &failures),
        ("errors", &errors),
        ("skipped", &skipped),
        ("time", &time),
    ];
    if !timestamp.is_empty() {
        attrs.push(("timestamp", &timestamp));
    }
    if !hostname.is_empty() {
        attrs.push(("hostname", hostname));
    }
    w.open("testsuite", &attrs);
    w.open("properties", &[]);
    let sessions = state.sessions.to_string();
    let mut props = vec![
        ("run_id", state.run_id.as_str()),
        ("run_status", state.status.as_str()),
        ("sessions", &sessions),
        ("flow_path", &state.flow_path),
    ];
    if let Some(profile) = &state.profile {
        props.push(("profile", profile));
    }
    for (name, value) in props {
        w.leaf("property", &[("name", name), ("value", value)], None);
    }
    w.close("properties");
    for case in &cases {
        write_case(&mut w, &state.flow, case);
    }
    w.close("testsuite");
    w.close("testsuites");
    w.finish()
}

fn write_case(w: &mut Writer, classname: &str, case: &Case) {
    let time = seconds(case.time_ms);
    let attrs = [("name", case.name.as_str()), ("classname", classname), ("time", &time)];
    if case.outcome == Outcome::Passed && case.out.is_empty() {
        w.leaf("testcase", &attrs, None);
        return;
    }
    w.open("testcase", &attrs);
    match &case.outcome {
        Outcome::Passed => {}
        Outcome::Failure { kind, ty, message, text } => {
            w.leaf(kind, &[("message", message), ("type", ty)], Some(text));
        }
        Outcome::Skipped(reason) => w.leaf("skipped", &[("message", reason)], None),
    }
    if !case.out.is_empty() {
        w.leaf("system-out", &[], Some(&(case.out.join("\n") + "\n")));
    }
    w.close("testcase");
}

/// The testcases of one step: each visit it made, then its current visit if that ran
/// nothing (skipped, waiting, rejected), or one skipped case if it never ran at all.
fn cases(run_dir: &Path, step: &StepState) -> Vec<Case> {
    let mut out = Vec::new();
    let mut visits: Vec<u32> = step.attempts.iter().map(|a| a.visit).collect();
    visits.dedup();
    for &visit in &visits {
        let attempts: Vec<&Attempt> = step.attempts.iter().filter(|a| a.visit == visit).collect();
        out.push(visit_case(run_dir, step, visit, &attempts));
    }
    if visits.contains(&step.visit) && step.visit > 0 {
        return out;
    }
    let name = visit_label(&step.id, step.visit.max(1));
    let outcome = match step.status {
        StepStatus::Skipped => Outcome::Skipped(step.skip_reason.clone().unwrap_or_else(|| "skipped".into())),
        StepStatus::Waiting => {
            let approval = step.approvals.last();
            Outcome::Skipped(crate::report::awaiting(
                approval.and_then(|a| a.message.as_deref()),
                approval.map_or(&[][..], |a| &a.approvers[..]),
            ))
        }
        StepStatus::Rejected => {
            let a = step.approvals.last();
            let mut message =
                format!("rejected by {}", a.and_then(|a| a.decided_by.as_deref()).unwrap_or("?"));
            if let Some(comment) = a.and_then(|a| a.comment.as_deref()) {
                message.push_str(&format!(": {comment}"));
            }
            Outcome::Failure { kind: "failure", ty: "rejected".into(), text: message.clone(), message }
        }
        _ if visits.is_empty() => Outcome::Skipped("not run: the run ended before it".into()),
        // Made pending again by a loop that did not come back to it: its visits are above.
        _ => return out,
    };
    out.push(Case { name, time_ms: 0, outcome, out: Vec::new() });
    out
}

/// One visit that ran: the result of its last attempt, with all of them listed.
fn visit_case(run_dir: &Path, step: &StepState, visit: u32, attempts: &[&Attempt]) -> Case {
    let name = visit_label(&step.id, visit);
    let time_ms = attempts.iter().map(|a| attempt_ms(a)).sum();
    let lines: Vec<String> = attempts.iter().map(|a| attempt_line(a, attempts.len())).collect();
    let Some(last) = attempts.last() else {
        return Case { name, time_ms, outcome: Outcome::Passed, out: lines };
    };
    let retried_or_cached = attempts.len() > 1 || last.status == AttemptStatus::Cached;
    let outcome = match last.status {
        AttemptStatus::Succeeded | AttemptStatus::Cached => Outcome::Passed,
        AttemptStatus::Failed => {
            let message = last.message.clone().unwrap_or_else(|| "failed".into());
            let mut text = format!("{}\n", lines.join("\n"));
            text.push_str(&log_tail(run_dir, &step.id, visit, last.attempt));
            Outcome::Failure {
                kind: "failure",
                ty: last.reason.clone().unwrap_or_else(|| "failed".into()),
                message,
                text,
            }
        }
        AttemptStatus::Interrupted => {
            let message = match last.reason.as_deref() {
                Some("runner_died") => "the runner died while it ran; a resume runs it again",
                _ => "stopped with the run (a signal); a resume runs it again",
            }
            .to_string();
            let mut text = format!("{message}\n{}\n", lines.join("\n"));
            text.push_str(&log_tail(run_dir, &step.id, visit, last.attempt));
            Outcome::Failure { kind: "error", ty: "interrupted".into(), message, text }
        }
        AttemptStatus::Running => {
            let message = "still running when the report was written".to_string();
            Outcome::Failure { kind: "error", ty: "running".into(), text: message.clone(), message }
        }
    };
    // A failure's text lists the attempts already; a plain pass needs no words.
    let out = if retried_or_cached && outcome == Outcome::Passed { lines } else { Vec::new() };
    Case { name, time_ms, outcome, out }
}

/// `attempt 2 of 3: failed after 1.204s (exit): exit code 1`.
fn attempt_line(a: &Attempt, of: usize) -> String {
    let mut line = format!("attempt {} of {of}: {}", a.attempt, a.status.as_str());
    if let Some(from) = a.cached_from() {
        line.push_str(&format!(
            " (reused the receipt of {} in run {})",
            visit_label(&from.step, from.visit),
            from.run_id
        ));
        return line;
    }
    line.push_str(&format!(" after {}s", seconds(attempt_ms(a))));
    if a.status != AttemptStatus::Succeeded {
        if let Some(reason) = &a.reason {
            line.push_str(&format!(" ({reason})"));
        }
        if let Some(message) = &a.message {
            line.push_str(&format!(": {message}"));
        }
    }
    line
}

fn attempt_ms(a: &Attempt) -> u64 {
    a.duration_ms.unwrap_or_else(|| match (&a.started_at, &a.finished_at) {
        (Some(from), Some(to)) => elapsed(from, to).map_or(0, |d| d.as_millis() as u64),
        _ => 0,
    })
}

/// `1.204`: JUnit times are seconds.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The last [`TAIL_LINES`] lines of an attempt's stderr (else stdout), with a header that
/// names the file, or "" if both are empty or missing.
fn log_tail(run_dir: &Path, step: &str, visit: u32, attempt: u32) -> String {
    let dir = attempt_dir(run_dir, step, visit, attempt);
    for name in ["stderr.log", "stdout.log"] {
        let path = dir.join(name);
        let Some(lines) = read_tail(&path, TAIL_LINES) else { continue };
        if lines.is_empty() {
            continue;
        }
        return format!(
            "--- last {} lines of {} ---\n{}\n",
            lines.len(),
            path.display(),
            xml::strip_ansi(&lines.join("\n"))
        );
    }
    String::new()
}

/// The last `n` lines of a file, reading at most [`TAIL_BYTES`] from its end; invalid UTF-8
/// is replaced. `None` if it cannot be read.
fn read_tail(path: &Path, n: usize) -> Option<Vec<String>> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    // Started in the middle of a line: that piece is not a line of its own.
    if from > 0 && lines.len() > 1 {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Some(lines[skip..].iter().map(|l| l.to_string()).collect())
}

/// Writes the report atomically (temp file beside it, rename): a CI job that collects it
/// sees the old report or the new one, never half of one.
pub fn write(path: &Path, state: &RunState, run_dir: &Path) -> std::io::Result<()> {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    crate::fsutil::write_replace(path, "junit", render(state, run_dir, &host).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_read_only_the_end_of_a_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short.log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&short, text).expect("write");
        let tail = read_tail(&short, 50).expect("tail");
        assert_eq!((tail.len(), tail[0].as_str(), tail[49].as_str()), (50, "line 51", "line 100"));

        // A log larger than what is read: the cut first line is dropped, not shown as a line.
        let long = dir.path().join("long.log");
        let mut text = "x".repeat(2 * TAIL_BYTES as usize);
        text.push_str("\nlast line\n");
        std::fs::write(&long, &text).expect("write");
        assert_eq!(read_tail(&long, 50).expect("tail"), vec!["last line"]);

        // One huge line: its end, at most TAIL_BYTES of it.
        let huge = dir.path().join("huge.log");
        std::fs::write(&huge, "y".repeat(3 * TAIL_BYTES as usize)).expect("write");
        let tail = read_tail(&huge, 50).expect("tail");
        assert_eq!((tail.len(), tail[0].len()), (1, TAIL_BYTES as usize));

        // Invalid UTF-8 is replaced; a missing file has no tail.
        let bytes = dir.path().join("bytes.log");
        std::fs::write(&bytes, b"ok \xff\xfe end\n").expect("write");
        assert_eq!(read_tail(&bytes, 50).expect("tail"), vec!["ok \u{FFFD}\u{FFFD} end"]);
        assert_eq!(read_tail(&dir.path().join("none.log"), 50), None);
    }

    #[test]
    fn times_are_seconds_with_milliseconds() {
        assert_eq!(seconds(0), "0.000");
        assert_eq!(seconds(1_234), "1.234");
        assert_eq!(seconds(60_005), "60.005");
    }
}

//! Property tests of the parsers, the journal reader and the folds.
//!
//! Each property runs a bounded number of cases (see `config`); `PROPTEST_CASES` overrides
//! it, e.g. `PROPTEST_CASES=2000 cargo test --release --test properties` for a long soak.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use runner::flow::{
    DEFAULT_BACKOFF, DEFAULT_GRACE, Flow, FlowError, FlowErrorKind, MAX_DURATION, param_env_name,
};
use runner::journal::{
    Event, FailReason, InterruptReason, JOURNAL_FILE, JournalError, JournalRepaired, JournalWriter, Record,
    RunFinished, RunInterrupted, RunOutcome, RunResumed, RunStarted, Scan, Session, StepFailed,
    StepInterrupted, StepStarted, StepSucceeded, ZERO_SUM, scan_bytes, scan_bytes_with,
};
use runner::projection::{Batch, PROJECTION_FILE, Projection};
use runner::state::{RunState, RunStatus, StepStatus, write_snapshot};
use runner::store::{RunsDir, SnapshotUse, load_run};

#[path = "common/journal.rs"]
mod common;
use common::{line_checksum_ok, write_journal};

/// `cases` unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c
}

// =======================================================================================
// Events and journals
// =======================================================================================

fn session(pid: u32) -> Session {
    Session {
        pid,
        host: "prop-host".into(),
        boot_id: format!("boot-{pid}"),
        jobs: 2,
        runner_version: "0.1.0".into(),
    }
}

fn run_started(run_id: &str, steps: &[String]) -> Event {
    let mut params = BTreeMap::new();
    params.insert("day".to_string(), "2026-11-22".to_string());
    params.insert("quote".to_string(), "x\"; rm -rf ~ ✓".to_string());
    Event::RunStarted(RunStarted {
        run_id: run_id.into(),
        flow: "prop".into(),
        flow_path: "flows/prop.toml".into(),
        flow_hash: "b".repeat(64),
        params,
        workdir: "/work dir/é".into(),
        steps: steps.to_vec(),
        journal_format: runner::journal::JOURNAL_FORMAT,
        session: session(1),
        profile: None,
        trigger_file: None,
        executor: None,
    })
}

/// A real journal of 12 events, and how many of its lines the mutation tests start from.
struct ReaderFixture {
    /// All 12 lines.
    full: Vec<u8>,
    records: Vec<Record>,
    /// Byte length of the first `BASE_LINES` lines.
    base_len: usize,
    line_ranges: Vec<std::ops::Range<usize>>,
}

const BASE_LINES: usize = 9;

fn reader_fixture() -> &'static ReaderFixture {
    static FIXTURE: OnceLock<ReaderFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(JOURNAL_FILE);
        let steps: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let long = "naïve ✓ \"quoted\" \\ \t\n".repeat(30);
        let events = vec![
            run_started("reader", &steps),
            start("a", 1),
            Event::StepFailed(StepFailed {
                step: "a".into(),
                visit: 1,
                attempt: 1,
                reason: FailReason::Exit,
                exit_code: Some(3),
                signal: None,
                message: long,
                duration_ms: 12,
                retry_in_ms: Some(1000),
                receipt: None,
            }),
            start("a", 2),
            Event::StepSucceeded(StepSucceeded {
                step: "a".into(),
                visit: 1,
                attempt: 2,
                duration_ms: 4,
                outputs: Default::default(),
                handoff: None,
                receipt: None,
            }),
            start("b", 1),
            Event::RunInterrupted(RunInterrupted { signal: "SIGTERM".into(), cancelled_by: None }),
            Event::RunResumed(RunResumed { session: session(2) }),
            Event::StepInterrupted(StepInterrupted {
                step: "b".into(),
                visit: 1,
                attempt: 1,
                reason: InterruptReason::RunnerDied,
                leftover_stopped: Some(false),
                duration_ms: None,
            }),
            start("b", 2),
            Event::StepSucceeded(StepSucceeded {
                step: "b".into(),
                visit: 1,
                attempt: 2,
                duration_ms: 9,
                outputs: Default::default(),
                handoff: None,
                receipt: None,
            }),
            Event::RunFinished(RunFinished { outcome: RunOutcome::Succeeded, failed_steps: vec![] }),
        ];
        let records = write_journal(&path, &events, &[3, 1, 2]);
        let full = std::fs::read(&path).expect("read journal");
        let line_ranges = common::line_ranges(&full);
        assert_eq!(line_ranges.len(), records.len());
        let base_len = line_ranges[BASE_LINES - 1].end;
        ReaderFixture { full, records, base_len, line_ranges }
    })
}

fn start(step: &str, attempt: u32) -> Event {
    Event::StepStarted(StepStarted {
        step: step.into(),
        visit: 1,
        attempt,
        pid: 4000 + attempt as i32,
        proc_start: 77,
        cache: None,
    })
}

/// Checks everything a scan result promises about `bytes`; returns the scan, or the line
/// reported as damaged.
fn check_scan(bytes: &[u8], parse_after: u64) -> Result<Scan, u64> {
    let path = Path::new("runs/r/journal.jsonl");
    let s = match scan_bytes(path, bytes, 0) {
        Ok(s) => s,
        Err(JournalError::Corrupt { line, reason, .. }) => {
            let lines = bytes.split(|&b| b == b'\n').count() as u64;
            assert!((1..=lines).contains(&line), "corruption at line {line} of {lines}");
            assert!(!reason.is_empty());
            let again =
                scan_bytes(path, bytes, parse_after).expect_err("the same verdict however much is parsed");
            assert!(matches!(again, JournalError::Corrupt { line: l, .. } if l == line), "{again}");
            return Err(line);
        }
        Err(e) => panic!("scan_bytes fails only with Corrupt, got: {e}"),
    };
    assert_eq!(s.records.len() as u64, s.last_seq);
    let mut offset = 0usize;
    let mut prev = ZERO_SUM.to_string();
    for (i, r) in s.records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "sequence numbers are 1..=n");
        let nl = bytes[offset..].iter().position(|&b| b == b'\n').expect("an intact line ends in a newline");
        let body = &bytes[offset..offset + nl];
        assert!(line_checksum_ok(body), "record {} comes from a line whose checksum fails", r.seq);
        let v: serde_json::Value = serde_json::from_slice(body).expect("an intact line is JSON");
        assert_eq!(v["seq"], r.seq);
        assert_eq!(v["ts"], r.ts.as_str());
        assert_eq!(v["type"], r.event.kind());
        assert_eq!(v["prev"], prev.as_str(), "line {} does not chain to the one before", r.seq);
        let data: serde_json::Value = serde_json::from_str(&r.data).expect("data is JSON");
        assert_eq!(v["data"], data);
        assert_eq!(Event::from_parts(r.event.kind(), &r.data).as_ref(), Ok(&r.event));
        prev = v["sum"].as_str().expect("sum").to_string();
        offset += nl + 1;
    }
    assert_eq!(s.valid_len, offset as u64);
    assert_eq!(s.last_sum, prev);
    match &s.torn {
        None => assert_eq!(offset, bytes.len(), "bytes after the intact lines must be reported"),
        Some(t) => {
            assert_eq!(
                (t.offset, t.len, t.line),
                (offset as u64, (bytes.len() - offset) as u64, s.last_seq + 1)
            );
            assert!(t.len > 0 && !t.reason.is_empty());
        }
    }
    // Parsing less changes nothing else.
    let partial = scan_bytes(path, bytes, parse_after).expect("the same verdict however much is parsed");
    assert_eq!(
        (partial.last_seq, partial.valid_len, &partial.last_sum),
        (s.last_seq, s.valid_len, &s.last_sum)
    );
    assert_eq!(partial.torn, s.torn);
    let want: Vec<&Record> = s.records.iter().filter(|r| r.seq > parse_after).collect();
    assert_eq!(partial.records.iter().collect::<Vec<_>>(), want);
    Ok(s)
}

/// Pieces that make byte strings near the journal format: whole lines, cut lines, junk.
#[derive(Clone, Debug)]
enum Piece {
    Line(Index),
    Prefix(Index, Index),
    Bytes(Vec<u8>),
    Newline,
    Zeros(usize),
    Head,
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => any::<Index>().prop_map(Piece::Line),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(l, c)| Piece::Prefix(l, c)),
        2 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Bytes),
        1 => Just(Piece::Newline),
        1 => (1..64usize).prop_map(Piece::Zeros),
        1 => Just(Piece::Head),
    ]
}

fn assemble(pieces: &[Piece]) -> Vec<u8> {
    let f = reader_fixture();
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Line(i) => {
                out.extend_from_slice(&f.full[f.line_ranges[i.index(f.line_ranges.len())].clone()])
            }
            Piece::Prefix(i, cut) => {
                let line = &f.full[f.line_ranges[i.index(f.line_ranges.len())].clone()];
                out.extend_from_slice(&line[..cut.index(line.len())]);
            }
            Piece::Bytes(b) => out.extend_from_slice(b),
            Piece::Newline => out.push(b'\n'),
            Piece::Zeros(n) => out.extend(std::iter::repeat_n(0u8, *n)),
            Piece::Head => out.extend_from_slice(b"{\"seq\":"),
        }
    }
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
    /// Inserts a whole line of the 12-line journal (possibly the right next one).
    InsertLine(Index, Index),
    Truncate(Index),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), 1..40usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..20))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, l)| Mutation::InsertLine(i, l)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..20).prop_map(Mutation::Append),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let f = reader_fixture();
    let len = bytes.len();
    match m {
        Mutation::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
        Mutation::Delete(i, n) if len > 0 => {
            let at = i.index(len);
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Insert(i, b) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::InsertLine(i, l) => {
            // At a line boundary, so the result can look like a real journal.
            let starts: Vec<usize> = std::iter::once(0)
                .chain(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(p, _)| p + 1))
                .collect();
            let at = starts[i.index(starts.len())];
            let line = &f.full[f.line_ranges[l.index(f.line_ranges.len())].clone()];
            bytes.splice(at..at, line.iter().copied());
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
        Mutation::Append(b) => bytes.extend_from_slice(b),
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// 4. Any bytes at all: no panic, and an `Ok` holds only checked, contiguous records.
    #[test]
    fn the_reader_accepts_only_checked_lines_of_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        parse_after in 0..4u64,
    ) {
        let _ = check_scan(&bytes, parse_after);
    }

    /// 4. Bytes made of journal lines, cut lines and junk in any order, after the first
    /// lines of a real journal (none to all of them).
    #[test]
    fn the_reader_accepts_only_checked_lines_of_journal_like_bytes(
        intact in any::<Index>(),
        pieces in proptest::collection::vec(piece(), 0..16),
        parse_after in 0..6u64,
    ) {
        let f = reader_fixture();
        let lines = intact.index(f.line_ranges.len() + 1);
        let mut bytes = f.full[..lines.checked_sub(1).map_or(0, |l| f.line_ranges[l].end)].to_vec();
        bytes.extend(assemble(&pieces));
        match check_scan(&bytes, parse_after) {
            Ok(s) => {
                // The intact lines in front are always read back, whatever follows them.
                prop_assert!(s.last_seq >= lines as u64, "{} < {}", s.last_seq, lines);
                // Lines from one journal can only be read back in their own places.
                for r in &s.records {
                    prop_assert_eq!(r, &f.records[r.seq as usize - 1]);
                }
            }
            // Damage is never reported inside the intact lines.
            Err(line) => prop_assert!(line > lines as u64, "line {} of {} intact ones", line, lines),
        }
    }

    /// 4. A valid journal with inserted, deleted, flipped bytes, lines and tails: never a
    /// record that differs from the original one with the same seq.
    #[test]
    fn a_mutated_journal_never_yields_a_changed_record(
        mutations in proptest::collection::vec(mutation(), 1..5),
        parse_after in 0..12u64,
    ) {
        let f = reader_fixture();
        let mut bytes = f.full[..f.base_len].to_vec();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        // Whole lines left untouched at the start are always read back, and never
        // reported as damaged.
        let common = bytes.iter().zip(&f.full).take_while(|(a, b)| a == b).count();
        let untouched = f.line_ranges.iter().filter(|r| r.end <= common).count() as u64;
        match check_scan(&bytes, parse_after) {
            Ok(s) => {
                for r in &s.records {
                    prop_assert_eq!(r, &f.records[r.seq as usize - 1], "seq {} changed", r.seq);
                }
                prop_assert!(s.last_seq >= untouched, "{} < {}", s.last_seq, untouched);
            }
            Err(line) => prop_assert!(line > untouched, "line {} of {} untouched ones", line, untouched),
        }
    }
}

// =======================================================================================
// Flows
// =======================================================================================

const FLOW_PATH: &str = "flows/f.toml";

/// A TOML basic string for any text.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Checks what every flow error promises: a message naming the file and, with a
/// position, a line and column inside the text.
fn check_flow_error(bytes: &[u8], e: &FlowError) {
    let shown = e.to_string();
    assert!(shown.starts_with(FLOW_PATH), "{shown}");
    assert!(shown.len() > FLOW_PATH.len() + 2, "{shown}");
    if let Some(pos) = e.pos() {
        let text = std::str::from_utf8(bytes).expect("a position implies UTF-8 text");
        let lines: Vec<&str> = text.split('\n').collect();
        assert!(pos.line >= 1 && pos.line <= lines.len(), "line {} of {}: {shown}", pos.line, lines.len());
        let width = lines[pos.line - 1].chars().count();
        assert!(pos.col >= 1 && pos.col <= width + 1, "column {} of {width}: {shown}", pos.col);
        assert!(shown.starts_with(&format!("{FLOW_PATH}:{}:{}: ", pos.line, pos.col)), "{shown}");
    }
}

/// Checks what every accepted flow promises: valid, unique ids, needs inside the flow and
/// acyclic, bounded durations and retries, no reserved environment names.
fn check_accepted_flow(flow: &Flow) {
    assert!(!flow.steps.is_empty());
    let ids: BTreeSet<&str> = flow.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), flow.steps.len(), "duplicate ids");
    for s in &flow.steps {
        assert!(runner::flow::valid_step_id(&s.id), "{}", s.id);
        assert!(!s.run.trim().is_empty());
        assert!(s.needs.iter().all(|&n| n < flow.steps.len()));
        assert!(s.timeout.is_none_or(|t| !t.is_zero() && t <= MAX_DURATION));
        assert!(s.grace <= MAX_DURATION && s.backoff <= MAX_DURATION);
        assert!(s.retries <= 100);
        assert!(s.env.keys().all(|k| !k.starts_with("RUNNER_")));
    }
    assert!(flow.env.keys().all(|k| !k.starts_with("RUNNER_")));
    // Kahn's algorithm: every step can be ordered after its needs.
    let mut indegree: Vec<usize> = flow.steps.iter().map(|s| s.needs.len()).collect();
    let mut ready: Vec<usize> = (0..flow.steps.len()).filter(|&i| indegree[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for (j, s) in flow.steps.iter().enumerate() {
            if s.needs.contains(&i) {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    assert_eq!(done, flow.steps.len(), "an accepted flow has a cycle");
}

fn parse_flow(bytes: &[u8]) -> Result<Flow, FlowError> {
    let result = Flow::from_bytes(Path::new(FLOW_PATH), bytes);
    match &result {
        Ok(flow) => check_accepted_flow(flow),
        Err(e) => check_flow_error(bytes, e),
    }
    result
}

// ---- durations -----------------------------------------------------------------------

/// A human duration and its value.
#[derive(Clone, Debug)]
struct Dur {
    text: String,
    nanos: u128,
}

impl Dur {
    fn duration(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.nanos).expect("fits"))
    }
}

/// Units in the order a duration must name them: labels, nanoseconds, largest value used.
const UNITS: &[(&[&str], u128, u64)] = &[
    (&["w", "wk", "wks", "week", "weeks"], 7 * 86_400 * 1_000_000_000, 8),
    (&["d", "day", "days"], 86_400 * 1_000_000_000, 100),
    (&["h", "hr", "hrs", "hour", "hours"], 3_600 * 1_000_000_000, 1_000),
    (&["m", "min", "mins", "minute", "minutes"], 60 * 1_000_000_000, 10_000),
    (&["s", "sec", "secs", "second", "seconds"], 1_000_000_000, 100_000),
    (&["ms", "msec", "msecs", "milli", "millis", "millisecond", "milliseconds"], 1_000_000, 1_000_000),
];

/// One unit of a duration: present, value, label, separator before the next, space
/// between number and label.
type Component = (bool, u64, Index, Index, bool);

fn component(max: u64) -> impl Strategy<Value = Component> {
    (any::<bool>(), 0..=max, any::<Index>(), any::<Index>(), any::<bool>())
}

/// Valid durations of at most ~210 days (so below the 366-day limit), above zero.
fn duration_strategy() -> impl Strategy<Value = Dur> {
    (
        (component(UNITS[0].2), component(UNITS[1].2), component(UNITS[2].2)),
        (component(UNITS[3].2), component(UNITS[4].2), component(UNITS[5].2)),
        proptest::option::of((1..=3u32, any::<u32>(), any::<bool>())),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(|((c0, c1, c2), (c3, c4, c5), fraction, (lead, trail))| {
            let comps = [c0, c1, c2, c3, c4, c5];
            let present: Vec<usize> = (0..UNITS.len()).filter(|&i| comps[i].0).collect();
            let present = if present.is_empty() { vec![4] } else { present };
            let last = *present.last().expect("not empty");
            let mut text = String::new();
            if lead {
                text.push(' ');
            }
            let mut nanos = 0u128;
            for (n, &u) in present.iter().enumerate() {
                let (labels, unit_ns, _) = UNITS[u];
                let (_, value, label, sep, space) = comps[u];
                text.push_str(&value.to_string());
                nanos += u128::from(value) * unit_ns;
                // A fraction is allowed on the last unit, if it is hours or smaller.
                if let (true, Some((digits, num, comma))) = (u == last && u >= 2, fraction) {
                    let scale = 10u32.pow(digits);
                    let num = num % scale;
                    text.push(if comma { ',' } else { '.' });
                    text.push_str(&format!("{num:0width$}", width = digits as usize));
                    nanos += u128::from(num) * unit_ns / u128::from(scale);
                }
                if space {
                    text.push(' ');
                }
                text.push_str(labels[label.index(labels.len())]);
                if n + 1 < present.len() {
                    text.push_str(["", " ", ", ", "  "][sep.index(4)]);
                }
            }
            if trail {
                text.push(' ');
            }
            Dur { text, nanos }
        })
        .prop_filter("a timeout must be longer than zero", |d| d.nanos > 0)
}

/// Junk that looks a bit like durations.
fn duration_junk() -> impl Strategy<Value = String> {
    // Tokens separated by `|`.
    let tokens: Vec<&str> = concat!(
        "1|5|0|12|99999999999999|1.5|,5|.|,| |, |h|m|s|ms|d|w|mo|y|days|hours|ago|-|+|P|T|",
        "PT1H|1:02:03|µs|ns|us|é|\t|\n|e|x",
    )
    .split('|')
    .collect();
    prop_oneof![
        "\\PC{0,24}",
        proptest::collection::vec(proptest::sample::select(tokens), 0..10).prop_map(|t| t.concat()),
    ]
}

fn duration_flow(text: &str) -> String {
    format!(
        "[[steps]]\nid = \"a\"\nrun = \"x\"\ntimeout = {t}\ngrace = {t}\n\
         retries = {{ attempts = 1, backoff = {t} }}\n",
        t = toml_str(text)
    )
}

proptest! {
    #![proptest_config(config(256))]

    /// 6. Valid human durations parse to exactly their value, in every duration field.
    #[test]
    fn human_durations_parse_to_their_value(d in duration_strategy()) {
        let text = duration_flow(&d.text);
        let flow = parse_flow(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let s = &flow.steps[0];
        prop_assert_eq!(s.timeout, Some(d.duration()), "{:?}", d.text);
        prop_assert_eq!(s.grace, d.duration());
        prop_assert_eq!(s.backoff, d.duration());
    }

    /// 6. Junk in a duration field never panics; it is rejected at the value's position,
    /// or accepted with a value within the limits that jiff gives it too.
    #[test]
    fn junk_durations_are_rejected_where_they_are(junk in duration_junk()) {
        let text = format!("[[steps]]\nid = \"a\"\nrun = \"x\"\ntimeout = {}\n", toml_str(&junk));
        match parse_flow(text.as_bytes()) {
            Ok(flow) => {
                let t = flow.steps[0].timeout.expect("timeout");
                let span: jiff::Span = junk.trim().parse().expect("accepted, so jiff parses it");
                let want = span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()).expect("in range");
                prop_assert_eq!(Duration::try_from(want).expect("positive"), t);
            }
            Err(e) => {
                prop_assert!(matches!(e.kind(), FlowErrorKind::Duration { .. }), "{}", e);
                let pos = e.pos().expect("a position");
                prop_assert_eq!((pos.line, pos.col), (4, 11), "{}", e);
                let shown = e.to_string();
                prop_assert!(shown.contains("`timeout` = "), "{}", shown);
                prop_assert!(shown.contains("is not a valid duration"), "{}", shown);
            }
        }
    }
}

#[test]
fn duration_limits() {
    let timeout = |t: &str| parse_flow(duration_flow(t).as_bytes()).map(|f| f.steps[0].timeout);
    let day = 86_400;
    assert_eq!(timeout("366 days").expect("366 days is the limit"), Some(Duration::from_secs(366 * day)));
    assert_eq!(timeout("8784h").expect("the same in hours"), Some(Duration::from_secs(366 * day)));
    assert_eq!(timeout("52w 2d").expect("weeks"), Some(Duration::from_secs(366 * day)));
    for too_long in ["366 days 1ms", "367d", "8785h", "53w"] {
        let e = timeout(too_long).expect_err(too_long).to_string();
        assert!(e.contains("longer than 366 days"), "{e}");
    }
    for zero in ["0s", "0ms", "0h 0m"] {
        assert!(timeout(zero).expect_err(zero).to_string().contains("longer than zero"));
        let grace = format!("[[steps]]\nid='a'\nrun='x'\ngrace={}\n", toml_str(zero));
        assert_eq!(parse_flow(grace.as_bytes()).expect("zero grace").steps[0].grace, Duration::ZERO);
    }
    for negative in ["-5s", "5s ago"] {
        assert!(timeout(negative).expect_err(negative).to_string().contains("negative"));
    }
}

// ---- generated flows -----------------------------------------------------------------

#[derive(Clone, Debug)]
enum Scalar {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Scalar {
    fn toml(&self) -> String {
        match self {
            Scalar::Str(s) => toml_str(s),
            Scalar::Int(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }

    fn expected(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Int(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

fn scalar() -> impl Strategy<Value = Scalar> {
    prop_oneof![
        3 => "\\PC{0,12}".prop_map(Scalar::Str),
        1 => "[\"\\\\\n\t\u{1}\u{7f}é ]{0,6}".prop_map(Scalar::Str),
        1 => any::<i64>().prop_map(Scalar::Int),
        1 => any::<bool>().prop_map(Scalar::Bool),
    ]
}

fn env_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,10}".prop_filter("reserved", |n| !n.starts_with("RUNNER_"))
}

#[derive(Clone, Debug)]
enum Retries {
    Absent,
    Count(u32),
    Table(u32, Option<Dur>),
}

#[derive(Clone, Debug)]
struct StepSpec {
    id: String,
    run: String,
    /// `None`: no `needs` key (the previous step).
    needs: Option<Vec<usize>>,
    timeout: Option<Dur>,
    grace: Option<Dur>,
    retries: Retries,
    env: BTreeMap<String, Scalar>,
    description: Option<String>,
    /// Single quotes for ids in `needs`, and the order of the step's keys.
    single_quotes: bool,
    key_order: Vec<u8>,
}

#[derive(Clone, Debug)]
struct FlowSpec {
    description: Option<String>,
    params: Vec<(String, Option<Scalar>, Option<String>)>,
    env: BTreeMap<String, Scalar>,
    steps: Vec<StepSpec>,
}

impl FlowSpec {
    /// What `needs` means for step `i`: written, else the previous step.
    fn effective_needs(&self, i: usize) -> Vec<usize> {
        match &self.steps[i].needs {
            None if i == 0 => vec![],
            None => vec![i - 1],
            Some(list) => {
                let mut out = Vec::new();
                for &n in list {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                out
            }
        }
    }
}

/// The text of a flow, with where each step's `needs` line is and the column of the first
/// mention of each target in it.
struct Rendered {
    text: String,
    needs_at: Vec<Option<(usize, BTreeMap<usize, usize>)>>,
}

fn render(spec: &FlowSpec) -> Rendered {
    let mut lines: Vec<String> = vec!["# generated".into()];
    if let Some(d) = &spec.description {
        lines.push(format!("description = {}", toml_str(d)));
    }
    if !spec.params.is_empty() {
        lines.push(String::new());
        lines.push("[params]".into());
        for (name, default, description) in &spec.params {
            let mut fields = Vec::new();
            if let Some(d) = default {
                fields.push(format!("default = {}", d.toml()));
            }
            if let Some(d) = description {
                fields.push(format!("description = {}", toml_str(d)));
            }
            lines.push(format!("{name} = {{ {} }}", fields.join(", ")));
        }
    }
    if !spec.env.is_empty() {
        lines.push("[env]".into());
        for (k, v) in &spec.env {
            lines.push(format!("{k} = {}", v.toml()));
        }
    }
    let mut needs_at = Vec::new();
    for step in &spec.steps {
        lines.push(String::new());
        lines.push("[[steps]]".into());
        let q = if step.single_quotes { "'" } else { "\"" };
        let mut keys: Vec<(u8, String)> = Vec::new();
        let mut order = step.key_order.iter().copied().chain(std::iter::repeat(0));
        let mut key = |line: String, keys: &mut Vec<(u8, String)>| {
            keys.push((order.next().unwrap_or(0), line));
        };
        key(format!("id = {q}{}{q}", step.id), &mut keys);
        key(format!("run = {}", toml_str(&step.run)), &mut keys);
        let mut cols = BTreeMap::new();
        if let Some(needs) = &step.needs {
            let mut line = String::from("needs = [");
            for (n, &target) in needs.iter().enumerate() {
                if n > 0 {
                    line.push_str(", ");
                }
                cols.entry(target).or_insert(line.chars().count() + 1);
                line.push_str(&format!("{q}{}{q}", spec.steps[target].id));
            }
            line.push(']');
            key(line, &mut keys);
        }
        if let Some(t) = &step.timeout {
            key(format!("timeout = {}", toml_str(&t.text)), &mut keys);
        }
        if let Some(g) = &step.grace {
            key(format!("grace = {}", toml_str(&g.text)), &mut keys);
        }
        match &step.retries {
            Retries::Absent => {}
            Retries::Count(n) => key(format!("retries = {n}"), &mut keys),
            Retries::Table(n, None) => key(format!("retries = {{ attempts = {n} }}"), &mut keys),
            Retries::Table(n, Some(b)) => {
                key(format!("retries = {{ attempts = {n}, backoff = {} }}", toml_str(&b.text)), &mut keys)
            }
        }
        if !step.env.is_empty() {
            let pairs: Vec<String> = step.env.iter().map(|(k, v)| format!("{k} = {}", v.toml())).collect();
            key(format!("env = {{ {} }}", pairs.join(", ")), &mut keys);
        }
        if let Some(d) = &step.description {
            key(format!("description = {}", toml_str(d)), &mut keys);
        }
        keys.sort_by_key(|(k, _)| *k);
        let mut at = None;
        for (_, line) in keys {
            if line.starts_with("needs = ") {
                at = Some((lines.len() + 1, cols.clone()));
            }
            lines.push(line);
        }
        needs_at.push(at);
    }
    Rendered { text: lines.join("\n") + "\n", needs_at }
}

fn step_id() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[A-Za-z0-9_-]{1,12}", 1 => "[A-Za-z0-9_-]{60,64}"]
}

fn retries() -> impl Strategy<Value = Retries> {
    prop_oneof![
        3 => Just(Retries::Absent),
        1 => (0..=100u32).prop_map(Retries::Count),
        1 => (0..=100u32, proptest::option::of(duration_strategy())).prop_map(|(n, b)| Retries::Table(n, b)),
    ]
}

/// Everything about a step except its id and needs, which depend on the others.
type StepExtra = (
    Option<Vec<Index>>,
    Option<Dur>,
    Option<Dur>,
    Retries,
    BTreeMap<String, Scalar>,
    Option<String>,
    (String, bool, Vec<u8>),
);

fn step_extra() -> impl Strategy<Value = StepExtra> {
    (
        proptest::option::weighted(0.6, proptest::collection::vec(any::<Index>(), 0..4)),
        proptest::option::weighted(0.3, duration_strategy()),
        proptest::option::weighted(0.2, duration_strategy()),
        retries(),
        proptest::collection::btree_map(env_name(), scalar(), 0..3),
        proptest::option::weighted(0.2, "\\PC{0,20}"),
        ("[a-z./]{1,8}( [a-z0-9\"'$=-]{1,8}){0,3}", any::<bool>(), proptest::collection::vec(any::<u8>(), 8)),
    )
}

/// Valid flows: random DAGs whose `needs` point backwards only.
fn flow_spec() -> impl Strategy<Value = FlowSpec> {
    let params = proptest::collection::btree_map(
        "[A-Za-z_][A-Za-z0-9_-]{0,8}",
        (proptest::option::of(scalar()), proptest::option::of("\\PC{0,10}")),
        0..4,
    );
    (
        proptest::collection::btree_set(step_id(), 1..10)
            .prop_map(|ids| ids.into_iter().collect::<Vec<String>>())
            .prop_shuffle(),
        proptest::collection::vec(step_extra(), 10),
        params,
        proptest::collection::btree_map(env_name(), scalar(), 0..4),
        proptest::option::of("\\PC{0,30}"),
    )
        .prop_map(|(ids, extras, params, env, description)| {
            let steps = ids
                .into_iter()
                .zip(extras)
                .enumerate()
                .map(|(i, (id, (needs, timeout, grace, retries, env, description, (run, sq, order))))| {
                    StepSpec {
                        id,
                        run,
                        needs: needs.map(|list| {
                            if i == 0 { vec![] } else { list.iter().map(|x| x.index(i)).collect() }
                        }),
                        timeout,
                        grace,
                        retries,
                        env,
                        description,
                        single_quotes: sq,
                        key_order: order,
                    }
                })
                .collect();
            // Parameter names that would share an environment variable are not valid.
            let mut seen = BTreeSet::new();
            let params = params
                .into_iter()
                .filter(|(name, _)| seen.insert(param_env_name(name)))
                .map(|(name, (default, description))| (name, default, description))
                .collect();
            FlowSpec { description, params, env, steps }
        })
}

fn check_round_trip(spec: &FlowSpec, flow: &Flow, text: &str) {
    assert_eq!(flow.name, "f");
    assert_eq!(flow.hash, blake3::hash(text.as_bytes()).to_hex().to_string());
    assert_eq!(flow.description, spec.description);
    let env: BTreeMap<String, String> = spec.env.iter().map(|(k, v)| (k.clone(), v.expected())).collect();
    assert_eq!(flow.env, env);
    assert_eq!(flow.params.len(), spec.params.len());
    for (name, default, description) in &spec.params {
        let p = &flow.params[name];
        assert_eq!(p.default, default.as_ref().map(Scalar::expected), "param {name}");
        assert_eq!(&p.description, description, "param {name}");
    }
    assert_eq!(flow.steps.len(), spec.steps.len());
    for (i, (got, want)) in flow.steps.iter().zip(&spec.steps).enumerate() {
        assert_eq!(got.id, want.id);
        assert_eq!(flow.step_index(&want.id), Some(i));
        assert_eq!(got.run, want.run);
        assert_eq!(got.needs, spec.effective_needs(i), "needs of {}", want.id);
        assert_eq!(got.timeout, want.timeout.as_ref().map(Dur::duration));
        assert_eq!(got.grace, want.grace.as_ref().map_or(DEFAULT_GRACE, Dur::duration));
        let (retries, backoff) = match &want.retries {
            Retries::Absent => (0, DEFAULT_BACKOFF),
            Retries::Count(n) | Retries::Table(n, None) => (*n, DEFAULT_BACKOFF),
            Retries::Table(n, Some(b)) => (*n, b.duration()),
        };
        assert_eq!((got.retries, got.backoff), (retries, backoff), "retries of {}", want.id);
        let env: BTreeMap<String, String> = want.env.iter().map(|(k, v)| (k.clone(), v.expected())).collect();
        assert_eq!(got.env, env);
        assert_eq!(got.description, want.description);
    }
}

/// A flow with a cycle: the DAG plus a path `i -> c1 -> ... -> j` (each needing the one
/// before) and `i` needing `j`.
fn cyclic_flow_spec() -> impl Strategy<Value = FlowSpec> {
    (flow_spec(), any::<Index>(), any::<Index>(), proptest::collection::vec(any::<bool>(), 10)).prop_map(
        |(mut spec, a, b, via)| {
            let n = spec.steps.len();
            let (i, j) = {
                let (a, b) = (a.index(n), b.index(n));
                (a.min(b), a.max(b))
            };
            let mut chain = vec![i];
            chain.extend((i + 1..j).filter(|&c| via[c % via.len()]));
            if j != i {
                chain.push(j);
            }
            let add = |spec: &mut FlowSpec, step: usize, need: usize| {
                let mut needs = spec.effective_needs(step);
                needs.push(need);
                spec.steps[step].needs = Some(needs);
            };
            for w in chain.windows(2) {
                add(&mut spec, w[1], w[0]);
            }
            add(&mut spec, i, j);
            spec
        },
    )
}

/// Token soup: TOML-ish text with the flow's own words.
fn flow_junk() -> impl Strategy<Value = String> {
    // Tokens separated by `|`.
    let tokens: Vec<&str> = concat!(
        "[[steps]]|[steps]|[params]|[env]|[[steps.env]]|\n|\n| |=|id|run|needs|timeout|",
        "grace|retries|attempts|backoff|env|description|default|\"a\"|'b'|\"|'|[|]|{|}|,|",
        ".|#|1|-1|101|\"1s\"|\"0s\"|\"1h 30m\"|true|\"\"\"|'''|é|\t|\r\n|\\|\\u00e9|",
        "RUNNER_X|0x10|1e3|inf|1979-05-27T07:32:00Z|a-b|a_b|\u{0}|🦀",
    )
    .split('|')
    .collect();
    prop_oneof![
        "\\PC{0,200}",
        proptest::collection::vec(proptest::sample::select(tokens), 0..60).prop_map(|t| t.concat()),
    ]
}

#[derive(Clone, Debug)]
enum TextEdit {
    Delete(Index, usize),
    Insert(Index, String),
    Byte(Index, u8),
    DuplicateLine(Index),
    RemoveLine(Index),
    SwapLines(Index, Index),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        (any::<Index>(), 1..12usize).prop_map(|(i, n)| TextEdit::Delete(i, n)),
        (any::<Index>(), flow_junk().prop_map(|s| s.chars().take(12).collect()))
            .prop_map(|(i, s)| TextEdit::Insert(i, s)),
        (any::<Index>(), prop_oneof![any::<u8>(), 0x20..0x7fu8]).prop_map(|(i, b)| TextEdit::Byte(i, b)),
        any::<Index>().prop_map(TextEdit::DuplicateLine),
        any::<Index>().prop_map(TextEdit::RemoveLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TextEdit::SwapLines(a, b)),
    ]
}

fn edit(bytes: &mut Vec<u8>, e: &TextEdit) {
    let len = bytes.len();
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let nl = lines.len();
    match e {
        TextEdit::Delete(i, n) if len > 0 => {
            let at = i.index(len);
            bytes.drain(at..(at + n).min(len));
        }
        TextEdit::Insert(i, s) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, s.bytes());
        }
        TextEdit::Byte(i, b) if len > 0 => bytes[i.index(len)] = *b,
        TextEdit::DuplicateLine(i) => {
            let l = lines[i.index(nl)].clone();
            lines.insert(i.index(nl), l);
            *bytes = lines.join(&b'\n');
        }
        TextEdit::RemoveLine(i) => {
            lines.remove(i.index(nl));
            *bytes = lines.join(&b'\n');
        }
        TextEdit::SwapLines(a, b) => {
            lines.swap(a.index(nl), b.index(nl));
            *bytes = lines.join(&b'\n');
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// 5. Arbitrary text: no panic; errors name the file and a position inside the text.
    #[test]
    fn the_flow_parser_survives_arbitrary_text(text in flow_junk()) {
        let _ = parse_flow(text.as_bytes());
    }

    /// 5. Arbitrary bytes, including invalid UTF-8.
    #[test]
    fn the_flow_parser_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_flow(&bytes);
    }

    /// 5. Generated valid flows parse, and keep their structure.
    #[test]
    fn generated_flows_parse_and_keep_their_structure(spec in flow_spec()) {
        let r = render(&spec);
        match parse_flow(r.text.as_bytes()) {
            Ok(flow) => check_round_trip(&spec, &flow, &r.text),
            Err(e) => prop_assert!(false, "a valid flow was rejected: {}\n{}", e, r.text),
        }
    }

    /// 5. Edits of valid flows: no panic; errors point inside the text; whatever is
    /// accepted is a valid flow.
    #[test]
    fn edited_flows_never_panic_and_errors_point_inside(
        spec in flow_spec(),
        edits in proptest::collection::vec(text_edit(), 1..4),
    ) {
        let mut bytes = render(&spec).text.into_bytes();
        for e in &edits {
            edit(&mut bytes, e);
        }
        let _ = parse_flow(&bytes);
    }

    /// 5. A graph with a cycle is rejected, naming steps that really form a cycle, at the
    /// `needs` entry that closes it.
    #[test]
    fn cycles_are_rejected_naming_a_real_cycle(spec in cyclic_flow_spec()) {
        let r = render(&spec);
        let e = match parse_flow(r.text.as_bytes()) {
            Ok(_) => return Err(TestCaseError::fail(format!("a cyclic flow was accepted:\n{}", r.text))),
            Err(e) => e,
        };
        let FlowErrorKind::Cycle(names) = e.kind() else {
            return Err(TestCaseError::fail(format!("not a cycle error: {e}\n{}", r.text)));
        };
        prop_assert!(e.to_string().contains(&format!("dependency cycle: {}", names.join(" -> "))), "{}", e);
        prop_assert!(names.len() >= 2 && names.first() == names.last(), "{:?}", names);
        let index: BTreeMap<&str, usize> =
            spec.steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
        let cycle: Vec<usize> = names.iter().map(|n| index[n.as_str()]).collect();
        let distinct: BTreeSet<usize> = cycle[..cycle.len() - 1].iter().copied().collect();
        prop_assert_eq!(distinct.len(), cycle.len() - 1, "a cycle visits each step once: {:?}", names);
        for w in cycle.windows(2) {
            // Read in execution order: each step needs the one before it.
            prop_assert!(
                spec.effective_needs(w[1]).contains(&w[0]),
                "{} does not need {} in {:?}\n{}", spec.steps[w[1]].id, spec.steps[w[0]].id, names, r.text
            );
        }
        // It starts at the step written first, and points at its `needs` entry.
        prop_assert_eq!(cycle[0], *distinct.iter().next().expect("not empty"));
        let (line, cols) = r.needs_at[cycle[0]].clone().expect("the first step of a cycle has a needs line");
        let col = cols[&cycle[cycle.len() - 2]];
        let pos = e.pos().expect("a position");
        prop_assert_eq!((pos.line, pos.col), (line, col), "{}\n{}", e, r.text);
    }
}

// =======================================================================================
// 7. The fold, the live projection, and rebuilds
// =======================================================================================

const ALL_STATUSES: [StepStatus; 6] = [
    StepStatus::Pending,
    StepStatus::Running,
    StepStatus::Retrying,
    StepStatus::Succeeded,
    StepStatus::Failed,
    StepStatus::Interrupted,
];

/// The statuses the test expects the fold to reach.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Model {
    Pending,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Interrupted,
}

impl Model {
    fn status(self) -> StepStatus {
        match self {
            Model::Pending => StepStatus::Pending,
            Model::Running => StepStatus::Running,
            Model::Retrying => StepStatus::Retrying,
            Model::Succeeded => StepStatus::Succeeded,
            Model::Failed => StepStatus::Failed,
            Model::Interrupted => StepStatus::Interrupted,
        }
    }
}

#[derive(Debug)]
struct Story {
    events: Vec<Event>,
    steps: Vec<Model>,
    attempts: Vec<u32>,
    run: RunStatus,
    sessions: u32,
}

#[derive(Clone, Copy)]
enum Action {
    Start(usize),
    SpawnFail(usize),
    Succeed(usize),
    Fail(usize),
    Interrupt,
    Crash,
    Finish,
    ServiceStart,
    ServiceHealthy,
    ServiceDied,
}

/// The story's one service: how many starts, and whether one runs (and is healthy).
#[derive(Default)]
struct Svc {
    instances: u32,
    live: Option<bool>,
}

impl Svc {
    fn exit(&mut self, events: &mut Vec<Event>, reason: runner::journal::ServiceEnd, c: usize) {
        if self.live.take().is_some() {
            events.push(Event::ServiceExited(runner::journal::ServiceExited {
                service: "api".into(),
                instance: self.instances,
                reason,
                exit_code: c.is_multiple_of(2).then_some((c % 3) as i32),
                signal: (!c.is_multiple_of(2)).then(|| "SIGTERM".to_string()),
                message: format!("ended «{reason:?}»"),
                degraded: reason == runner::journal::ServiceEnd::Died && c.is_multiple_of(3),
            }));
        }
    }
}

/// A valid story of a run with `k` steps, driven by `choices` (shrinking them shortens
/// the story): attempts that succeed, fail with or without a retry, fail to spawn; Ctrl+C,
/// runner crashes and resumes in between; `RunFinished` at the end.
fn story(run_id: &str, k: usize, choices: &[u32]) -> Story {
    let ids: Vec<String> = (0..k).map(|i| format!("step-{i}")).collect();
    let mut events = vec![run_started(run_id, &ids)];
    let mut steps = vec![Model::Pending; k];
    let mut attempts = vec![0u32; k];
    let mut run = RunStatus::Running;
    let mut sessions = 1u32;
    let mut svc = Svc::default();
    let resume = |events: &mut Vec<Event>, steps: &mut [Model], sessions: &mut u32, repaired: bool| {
        *sessions += 1;
        events.push(Event::RunResumed(RunResumed { session: session(*sessions) }));
        if repaired {
            events.push(Event::JournalRepaired(JournalRepaired {
                dropped_bytes: 17,
                kept_in: "journal.jsonl.broken".into(),
                reason: "not a complete journal line".into(),
            }));
        }
        for s in steps.iter_mut() {
            if matches!(s, Model::Failed | Model::Retrying) {
                *s = Model::Pending;
            }
        }
    };
    for &c in choices {
        let c = c as usize;
        match run {
            RunStatus::Succeeded => break,
            RunStatus::Failed | RunStatus::Interrupted | RunStatus::Waiting => {
                resume(&mut events, &mut steps, &mut sessions, c.is_multiple_of(4));
                run = RunStatus::Running;
                continue;
            }
            RunStatus::Running => {}
        }
        let mut actions = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            match s {
                Model::Pending | Model::Retrying | Model::Interrupted => {
                    actions.extend([Action::Start(i), Action::Start(i), Action::SpawnFail(i)]);
                }
                Model::Running => actions.extend([Action::Succeed(i), Action::Succeed(i), Action::Fail(i)]),
                Model::Succeeded | Model::Failed => {}
            }
        }
        actions.extend([Action::Interrupt, Action::Crash]);
        match svc.live {
            None => actions.push(Action::ServiceStart),
            Some(false) => actions.extend([Action::ServiceHealthy, Action::ServiceDied]),
            Some(true) => actions.push(Action::ServiceDied),
        }
        if !steps.contains(&Model::Running) {
            actions.push(Action::Finish);
        }
        let flag = (c / 1024) % 2 == 1;
        let duration_ms = (c / 4096 % 5000) as u64;
        match actions[c % actions.len()] {
            Action::Start(i) => {
                attempts[i] += 1;
                if c.is_multiple_of(7) {
                    // A Slurm attempt: submitted, and sometimes seen running on a node.
                    events.push(Event::StepSubmitted(runner::journal::StepSubmitted {
                        step: ids[i].clone(),
                        visit: 1,
                        attempt: attempts[i],
                        executor: runner::flow::ExecutorKind::Slurm,
                        job_id: (4000 + events.len()).to_string(),
                        job_name: format!("runner-0123456789ab-{}-1.{}", ids[i], attempts[i]),
                        cache: c.is_multiple_of(5).then(|| "miss".to_string()),
                    }));
                    if flag {
                        events.push(Event::JobRunning(runner::journal::JobRunning {
                            step: ids[i].clone(),
                            visit: 1,
                            attempt: attempts[i],
                            node: format!("node{}", c % 3),
                        }));
                    }
                } else {
                    events.push(Event::StepStarted(StepStarted {
                        step: ids[i].clone(),
                        visit: 1,
                        attempt: attempts[i],
                        pid: 10_000 + events.len() as i32,
                        proc_start: 5_000 + events.len() as u64,
                        cache: c.is_multiple_of(5).then(|| "miss".to_string()),
                    }));
                }
                steps[i] = Model::Running;
            }
            Action::SpawnFail(i) => {
                attempts[i] += 1;
                events.push(Event::StepFailed(StepFailed {
                    step: ids[i].clone(),
                    visit: 1,
                    attempt: attempts[i],
                    reason: if c.is_multiple_of(3) { FailReason::Service } else { FailReason::Spawn },
                    exit_code: None,
                    signal: None,
                    message: "cannot start /bin/sh: Resource temporarily unavailable".into(),
                    duration_ms: 0,
                    retry_in_ms: flag.then_some(250),
                    receipt: None,
                }));
                steps[i] = if flag { Model::Retrying } else { Model::Failed };
            }
            Action::Succeed(i) => {
                // Some successes leave outputs and a handoff, so their tables are compared too.
                let leaves = c.is_multiple_of(3);
                // Some pass a gate first (with a warning or not), for the `gates` table.
                if c.is_multiple_of(5) {
                    events.push(Event::GateEvaluated(runner::journal::GateEvaluated {
                        step: ids[i].clone(),
                        visit: 1,
                        attempt: attempts[i],
                        outcome: if c.is_multiple_of(2) {
                            runner::journal::GateOutcome::Warn
                        } else {
                            runner::journal::GateOutcome::Pass
                        },
                        pass: "steps.x.outputs.v >= 80".into(),
                        warn: Some("steps.x.outputs.v >= 60".into()),
                        profile: c.is_multiple_of(3).then(|| "strict".to_string()),
                        values: [("steps.x.outputs.v".to_string(), Some(format!("{}", c % 100)))]
                            .into_iter()
                            .collect(),
                    }));
                }
                events.push(Event::StepSucceeded(StepSucceeded {
                    step: ids[i].clone(),
                    visit: 1,
                    attempt: attempts[i],
                    duration_ms,
                    outputs: if leaves {
                        [("verdict".to_string(), format!("a=b\n{c}"))].into_iter().collect()
                    } else {
                        Default::default()
                    },
                    handoff: leaves.then(|| runner::journal::Handoff {
                        content_md: format!("# brief {c}\n"),
                        metadata: Some(serde_json::json!({ "n": c })),
                    }),
                    receipt: Some(runner::journal::ReceiptRef {
                        key: format!("{:064x}", c % 7),
                        result: Some(format!("{c:064x}")),
                    }),
                }));
                steps[i] = Model::Succeeded;
            }
            Action::Fail(i) => {
                let reason = [FailReason::Exit, FailReason::Signal, FailReason::Timeout][c / 2048 % 3];
                events.push(Event::StepFailed(StepFailed {
                    step: ids[i].clone(),
                    visit: 1,
                    attempt: attempts[i],
                    reason,
                    exit_code: (reason == FailReason::Exit).then_some(1 + (c % 254) as i32),
                    signal: (reason != FailReason::Exit).then(|| "SIGTERM".to_string()),
                    message: format!("attempt {} failed: «{reason:?}»", attempts[i]),
                    duration_ms,
                    retry_in_ms: flag.then_some(1000 * u64::from(attempts[i])),
                    receipt: c.is_multiple_of(2).then(|| runner::journal::ReceiptRef {
                        key: format!("{:064x}", c % 7),
                        result: None,
                    }),
                }));
                steps[i] = if flag { Model::Retrying } else { Model::Failed };
            }
            Action::Interrupt => {
                for (i, s) in steps.iter_mut().enumerate() {
                    if *s == Model::Running {
                        events.push(Event::StepInterrupted(StepInterrupted {
                            step: ids[i].clone(),
                            visit: 1,
                            attempt: attempts[i],
                            reason: InterruptReason::Signal,
                            leftover_stopped: None,
                            duration_ms: Some(duration_ms),
                        }));
                        *s = Model::Interrupted;
                    }
                }
                svc.exit(&mut events, runner::journal::ServiceEnd::Stopped, c);
                let signal = if flag { "SIGTERM" } else { "SIGINT" };
                events.push(Event::RunInterrupted(RunInterrupted {
                    signal: signal.into(),
                    cancelled_by: None,
                }));
                run = RunStatus::Interrupted;
            }
            Action::Crash => {
                // The runner died; the next one takes over and records what it found.
                resume(&mut events, &mut steps, &mut sessions, flag);
                svc.exit(&mut events, runner::journal::ServiceEnd::Lost, c);
                for (i, s) in steps.iter_mut().enumerate() {
                    if *s == Model::Running {
                        events.push(Event::StepInterrupted(StepInterrupted {
                            step: ids[i].clone(),
                            visit: 1,
                            attempt: attempts[i],
                            reason: InterruptReason::RunnerDied,
                            leftover_stopped: Some(c.is_multiple_of(3)),
                            duration_ms: None,
                        }));
                        *s = Model::Interrupted;
                    }
                }
            }
            Action::Finish => {
                svc.exit(&mut events, runner::journal::ServiceEnd::Stopped, c);
                run = finish(&mut events, &steps, &ids);
            }
            Action::ServiceStart => {
                svc.instances += 1;
                svc.live = Some(false);
                events.push(Event::ServiceStarted(runner::journal::ServiceStarted {
                    service: "api".into(),
                    instance: svc.instances,
                    pid: 20_000 + events.len() as i32,
                    proc_start: 7_000 + events.len() as u64,
                    restart: u32::from(flag),
                    for_step: ids[c % k].clone(),
                }));
            }
            Action::ServiceHealthy => {
                svc.live = Some(true);
                events.push(Event::ServiceHealthy(runner::journal::ServiceHealthy {
                    service: "api".into(),
                    instance: svc.instances,
                    checks: (c % 9) as u32,
                    after_ms: duration_ms,
                }));
            }
            Action::ServiceDied => {
                let reason = if flag {
                    runner::journal::ServiceEnd::Died
                } else {
                    runner::journal::ServiceEnd::StartTimeout
                };
                svc.exit(&mut events, reason, c);
            }
        }
    }
    // Bring the story to its end.
    if run == RunStatus::Interrupted {
        resume(&mut events, &mut steps, &mut sessions, false);
        run = RunStatus::Running;
    }
    if run == RunStatus::Running {
        for (i, s) in steps.iter_mut().enumerate() {
            if *s == Model::Running {
                events.push(Event::StepSucceeded(StepSucceeded {
                    step: ids[i].clone(),
                    visit: 1,
                    attempt: attempts[i],
                    duration_ms: 1,
                    outputs: Default::default(),
                    handoff: None,
                    receipt: None,
                }));
                *s = Model::Succeeded;
            }
        }
        svc.exit(&mut events, runner::journal::ServiceEnd::Stopped, 0);
        run = finish(&mut events, &steps, &ids);
    }
    Story { events, steps, attempts, run, sessions }
}

fn finish(events: &mut Vec<Event>, steps: &[Model], ids: &[String]) -> RunStatus {
    let failed: Vec<String> =
        steps.iter().zip(ids).filter(|(s, _)| **s == Model::Failed).map(|(_, id)| id.clone()).collect();
    let ok = steps.iter().all(|s| *s == Model::Succeeded);
    events.push(Event::RunFinished(RunFinished {
        outcome: if ok { RunOutcome::Succeeded } else { RunOutcome::Failed },
        failed_steps: failed,
    }));
    if ok { RunStatus::Succeeded } else { RunStatus::Failed }
}

/// One run being written live.
struct LiveRun {
    dir: PathBuf,
    writer: JournalWriter,
    story: Story,
    batches: Vec<usize>,
    next_event: usize,
    next_batch: usize,
    state: Option<RunState>,
    records: Vec<Record>,
}

impl LiveRun {
    fn done(&self) -> bool {
        self.next_event == self.story.events.len()
    }

    /// Commits the next batch and returns the records, the state after them and the
    /// journal length after them.
    fn commit_batch(&mut self) -> (Vec<Record>, &RunState, u64) {
        let size = self.batches[self.next_batch % self.batches.len()];
        self.next_batch += 1;
        let end = (self.next_event + size).min(self.story.events.len());
        for e in &self.story.events[self.next_event..end] {
            self.writer.stage(e.clone());
        }
        self.next_event = end;
        let records = self.writer.commit().expect("commit");
        for r in &records {
            match &mut self.state {
                None => self.state = Some(RunState::from_first(r).expect("the story starts a run")),
                Some(s) => s.apply(r).unwrap_or_else(|e| panic!("the story does not fold: {e}")),
            }
        }
        self.records.extend(records.iter().cloned());
        (records, self.state.as_ref().expect("folded"), self.writer.len())
    }
}

fn dump(runs: &RunsDir) -> String {
    Projection::open(runs).expect("open projection").canonical_dump().expect("dump")
}

fn remove_projection(runs: &RunsDir) {
    for suffix in ["", "-wal", "-shm"] {
        let p = runs.root().join(format!("{PROJECTION_FILE}{suffix}"));
        if p.exists() {
            std::fs::remove_file(&p).expect("remove projection file");
        }
    }
}

type RunSpec = (usize, Vec<u32>, Vec<usize>, Index, Index);

fn run_spec() -> impl Strategy<Value = RunSpec> {
    (
        1..=5usize,
        proptest::collection::vec(any::<u32>(), 0..60),
        proptest::collection::vec(1..=6usize, 1..8),
        any::<Index>(),
        any::<Index>(),
    )
}

proptest! {
    #![proptest_config(config(24))]

    /// 7. Live projection updates in random batches equal a rebuild, a catch-up from
    /// scratch (which uses snapshots), and a rebuild into a new file; the fold equals the
    /// model and a load through a snapshot at a random seq.
    #[test]
    fn live_projection_equals_rebuilds_and_snapshots_equal_the_fold(
        specs in proptest::collection::vec(run_spec(), 1..=3),
        schedule in proptest::collection::vec(any::<Index>(), 0..64),
    ) {
        let tmp = tempfile::Builder::new().prefix("runner-prop-").tempdir().expect("tempdir");
        let runs = RunsDir::new(tmp.path().to_path_buf());
        let mut live: Vec<LiveRun> = specs
            .iter()
            .enumerate()
            .map(|(n, (k, choices, batches, _, _))| {
                let id = format!("prop-run-{n}");
                let dir = runs.run_dir(&id);
                std::fs::create_dir_all(&dir).expect("mkdir");
                let writer = JournalWriter::create(&dir.join(JOURNAL_FILE)).expect("create journal");
                LiveRun {
                    dir,
                    writer,
                    story: story(&id, *k, choices),
                    batches: batches.clone(),
                    next_event: 0,
                    next_batch: 0,
                    state: None,
                    records: Vec::new(),
                }
            })
            .collect();

        // Several runners updating one projection, their commits interleaved; some commits
        // are held back and merged with the next ones, as the projection thread does when
        // it falls behind.
        let mut projection = Projection::open(&runs).expect("open projection");
        let mut held: Vec<Option<Batch>> = vec![None; live.len()];
        let mut turns = schedule.iter();
        while live.iter().any(|r| !r.done()) {
            let pending: Vec<usize> = (0..live.len()).filter(|&i| !live[i].done()).collect();
            let turn = turns.next();
            let pick = turn.map_or(pending[0], |i| pending[i.index(pending.len())]);
            let hold = turn.is_some_and(|i| i.index(3) == 0);
            let (records, state, len) = live[pick].commit_batch();
            let batch = Batch::of(state, &records, len);
            let batch = match held[pick].take() {
                Some(mut earlier) => {
                    earlier.merge(batch);
                    earlier
                }
                None => batch,
            };
            if hold && !live[pick].done() {
                held[pick] = Some(batch);
            } else {
                projection.apply_batch(&batch).expect("live projection update");
            }
        }
        let live_dump = projection.canonical_dump().expect("dump");
        let total: usize = live.iter().map(|r| r.records.len()).sum();
        // The rows say what the fold says, counted the slow way.
        let conn = projection.connection();
        let events: i64 = conn.query_row("SELECT count(*) FROM events", [], |row| row.get(0)).expect("count");
        prop_assert_eq!(events as usize, total);
        for r in &live {
            let s = r.state.as_ref().expect("folded");
            let naive = |status: StepStatus| s.steps.iter().filter(|x| x.status == status).count();
            for status in ALL_STATUSES {
                prop_assert_eq!(s.count(status), naive(status), "{:?}", status);
            }
            let row: (i64, i64, i64, i64, i64, String) = conn
                .query_row(
                    "SELECT steps_total, steps_succeeded, steps_failed, last_seq, journal_bytes, status
                     FROM runs WHERE run_id = ?1",
                    [&s.run_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?)),
                )
                .expect("run row");
            let journal_len = std::fs::metadata(r.dir.join(JOURNAL_FILE)).expect("journal").len();
            prop_assert_eq!(
                row,
                (
                    s.steps.len() as i64,
                    naive(StepStatus::Succeeded) as i64,
                    naive(StepStatus::Failed) as i64,
                    r.records.len() as i64,
                    journal_len as i64,
                    s.status.as_str().to_string(),
                )
            );
        }
        drop(projection);

        for (r, (_, _, _, snap_at, after)) in live.iter().zip(&specs) {
            let full = r.state.as_ref().expect("folded");
            // The fold is what the story says.
            prop_assert_eq!(full.status, r.story.run);
            prop_assert_eq!(full.sessions, r.story.sessions);
            for (i, s) in full.steps.iter().enumerate() {
                prop_assert_eq!(s.status, r.story.steps[i].status(), "step {}", s.id);
                prop_assert_eq!(s.attempts.len() as u32, r.story.attempts[i]);
            }
            let refolded = RunState::fold_all(&r.records).expect("the whole journal folds");
            prop_assert_eq!(&refolded, full);

            // A snapshot at a random seq, then a load through it, equals the whole fold.
            let n = r.records.len();
            let k = snap_at.index(n) + 1;
            let path = r.dir.join(JOURNAL_FILE);
            let bytes = std::fs::read(&path).expect("journal");
            let sum = scan_bytes_with(&path, &bytes, u64::MAX, k as u64)
                .expect("scan")
                .boundary_sum
                .expect("line k");
            let at_k = RunState::fold_all(&r.records[..k]).expect("fold prefix");
            write_snapshot(&r.dir, &at_k, &sum).expect("write snapshot");
            let records_after = after.index(n + 1) as u64;
            let loaded = load_run(&r.dir, true, records_after).expect("load");
            prop_assert_eq!(&loaded.snapshot, &SnapshotUse::Used(k as u64));
            prop_assert_eq!(&loaded.state, full);
            prop_assert_eq!((loaded.last_seq, loaded.valid_len), (n as u64, bytes.len() as u64));
            let want: Vec<&Record> = r.records.iter().filter(|x| x.seq > records_after).collect();
            prop_assert_eq!(loaded.records.iter().collect::<Vec<_>>(), want);
        }

        // Rebuilt over the live file.
        let stats = runner::projection::rebuild(&runs, false).expect("rebuild");
        prop_assert_eq!((stats.runs, stats.events as usize), (live.len(), total));
        prop_assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
        prop_assert_eq!(&dump(&runs), &live_dump, "rebuilt over the live file");

        // Caught up from nothing (this path reads the snapshots written above).
        remove_projection(&runs);
        let mut fresh = Projection::open(&runs).expect("open");
        prop_assert!(fresh.is_fresh());
        let caught = fresh.catch_up().expect("catch up");
        prop_assert_eq!((caught.synced, caught.unreadable.len()), (live.len(), 0));
        prop_assert_eq!(&fresh.canonical_dump().expect("dump"), &live_dump, "caught up from scratch");
        drop(fresh);

        // Rebuilt into a new file.
        remove_projection(&runs);
        runner::projection::rebuild(&runs, false).expect("rebuild");
        prop_assert_eq!(&dump(&runs), &live_dump, "rebuilt into a new file");
    }
}

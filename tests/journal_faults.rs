//! Fault injection on real journals written by the runner's own `JournalWriter`:
//! torn tails of every shape, damage in the middle, and snapshots that do not (or no
//! longer) belong to their journal.
//!
//! The rules under test (README, "The journal"; DESIGN invariant 5):
//! - bytes after the last intact line that contain no line that checks out are a torn
//!   tail: the scan returns the intact events and describes the tail; `repair_torn_tail`
//!   moves the tail to `journal.jsonl.broken` and the writer can continue;
//! - a bad line followed by a line that checks out is corruption: an error naming the
//!   1-based line, and nothing is changed;
//! - `state.json` is used only when the journal line it claims to cover still has the
//!   checksum it recorded, and a damaged snapshot is ignored, never trusted.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use runner::journal::{
    BROKEN_FILE, Event, FailReason, InterruptReason, JOURNAL_FILE, JournalError, JournalRepaired,
    JournalWriter, Record, RunFinished, RunInterrupted, RunOutcome, RunResumed, RunStarted, Scan, Session,
    StepFailed, StepInterrupted, StepStarted, StepSucceeded, repair_torn_tail, scan, scan_bytes,
    scan_bytes_with,
};
use runner::state::{RunState, SNAPSHOT_FILE, write_snapshot};
use runner::store::{LoadError, SnapshotUse, load_run};

#[path = "common/journal.rs"]
mod common;
use common::{line_checksum_ok, line_ranges, write_journal};

const RUN_ID: &str = "faults-run";
const STEPS: [&str; 5] = ["extract", "transform", "load", "report", "notify"];

// ---------------------------------------------------------------------------------------
// Building real journals
// ---------------------------------------------------------------------------------------

fn session(pid: u32) -> Session {
    Session {
        pid,
        host: "batch-host-01".into(),
        boot_id: "8d1f6e2a-6a4b-4f55-9a55-5c1b9a0e7d31".into(),
        jobs: 4,
        runner_version: "0.1.0".into(),
    }
}

fn started(step: &str, attempt: u32, pid: i32) -> Event {
    Event::StepStarted(StepStarted {
        step: step.into(),
        visit: 1,
        attempt,
        pid,
        proc_start: 106_551,
        cache: None,
    })
}

fn succeeded(step: &str, attempt: u32, duration_ms: u64) -> Event {
    Event::StepSucceeded(StepSucceeded {
        step: step.into(),
        visit: 1,
        attempt,
        duration_ms,
        outputs: Default::default(),
        handoff: None,
        receipt: None,
    })
}

fn failed(step: &str, attempt: u32, reason: FailReason, message: &str, retry_in_ms: Option<u64>) -> Event {
    Event::StepFailed(StepFailed {
        step: step.into(),
        visit: 1,
        attempt,
        reason,
        exit_code: (reason == FailReason::Exit).then_some(1),
        signal: matches!(reason, FailReason::Signal | FailReason::Timeout).then(|| "SIGTERM".to_string()),
        message: message.into(),
        duration_ms: 1234,
        retry_in_ms,
        receipt: None,
    })
}

/// A message with everything JSON has to escape, multi-byte characters, and length.
fn long_message() -> String {
    let mut m = String::from("step output tail:\n");
    for i in 0..40 {
        m.push_str(&format!(
            "line {i}: \"quoted\" \\ backslash\ttab — naïve café ✓ 日本 \u{1} ctrl {}\n",
            "x".repeat(i % 7)
        ));
    }
    m
}

/// A story of 30 events that folds cleanly through `RunState::apply`, with every event
/// type, retries, a spawn failure, interruptions, resumes and a long multi-field event.
fn story() -> Vec<Event> {
    let mut params = BTreeMap::new();
    params.insert("day".to_string(), "2026-11-22".to_string());
    params.insert("who".to_string(), "x\"; rm -rf ~".to_string());
    params.insert("städte".to_string(), "Zürich, Köln ✓".to_string());
    let events = vec![
        Event::RunStarted(RunStarted {
            run_id: RUN_ID.into(),
            flow: "nightly".into(),
            flow_path: "flows/nightly.toml".into(),
            flow_hash: "a".repeat(64),
            params,
            workdir: "/srv/batch".into(),
            steps: STEPS.iter().map(|s| s.to_string()).collect(),
            journal_format: runner::journal::JOURNAL_FORMAT,
            session: session(4242),
            profile: None,
            trigger_file: None,
            executor: None,
        }),
        started("extract", 1, 5000),
        failed("extract", 1, FailReason::Exit, "exited with code 1", Some(1000)),
        started("extract", 2, 5001),
        succeeded("extract", 2, 17),
        started("transform", 1, 5002),
        started("report", 1, 5003),
        succeeded("report", 1, 3),
        Event::StepInterrupted(StepInterrupted {
            step: "transform".into(),
            visit: 1,
            attempt: 1,
            reason: InterruptReason::Signal,
            leftover_stopped: None,
            duration_ms: Some(12),
        }),
        Event::RunInterrupted(RunInterrupted { signal: "SIGINT".into(), cancelled_by: None }),
        Event::RunResumed(RunResumed { session: session(4243) }),
        Event::JournalRepaired(JournalRepaired {
            dropped_bytes: 57,
            kept_in: BROKEN_FILE.into(),
            reason: "not a complete journal line".into(),
        }),
        started("transform", 2, 5004),
        // The long multi-field one.
        Event::StepFailed(StepFailed {
            step: "transform".into(),
            visit: 1,
            attempt: 2,
            reason: FailReason::Signal,
            exit_code: None,
            signal: Some("SIGKILL".into()),
            message: long_message(),
            duration_ms: 987_654_321,
            retry_in_ms: Some(2000),
            receipt: None,
        }),
        started("transform", 3, 5005),
        succeeded("transform", 3, 44),
        failed("load", 1, FailReason::Spawn, "cannot start /bin/sh: No such file or directory", Some(500)),
        started("load", 2, 5006),
        failed("load", 2, FailReason::Timeout, "timed out after 10m", None),
        Event::RunFinished(RunFinished { outcome: RunOutcome::Failed, failed_steps: vec!["load".into()] }),
        Event::RunResumed(RunResumed { session: session(4244) }),
        started("load", 3, 5007),
        // The runner died here; the next one noticed.
        Event::RunResumed(RunResumed { session: session(4245) }),
        Event::StepInterrupted(StepInterrupted {
            step: "load".into(),
            visit: 1,
            attempt: 3,
            reason: InterruptReason::RunnerDied,
            leftover_stopped: Some(true),
            duration_ms: None,
        }),
        started("load", 4, 5008),
        succeeded("load", 4, 90),
        started("notify", 1, 5009),
        failed("notify", 1, FailReason::Exit, "exited with code 1", Some(1)),
        started("notify", 2, 5010),
        succeeded("notify", 2, 1),
    ];
    assert_eq!(events.len(), 30);
    events
}

/// The event the writer was writing when it "crashed" (the line that gets torn).
fn torn_event() -> Event {
    Event::JournalRepaired(JournalRepaired {
        dropped_bytes: 123_456,
        kept_in: BROKEN_FILE.into(),
        reason: "a crash mid-write — «ünïcödé» ✂ so that cuts fall inside characters".into(),
    })
}

/// Appends through `JournalWriter::reopen` and returns the committed records.
fn append(path: &Path, s: &Scan, events: &[Event]) -> Vec<Record> {
    let mut w = JournalWriter::reopen(path, s.last_seq, &s.last_sum, s.valid_len).expect("reopen");
    for e in events {
        w.stage(e.clone());
    }
    let out = w.commit().expect("commit");
    assert_eq!(w.durable_end().0, s.last_seq + events.len() as u64);
    out
}

/// The exact bytes the writer would append next to the journal at `path` (computed on a
/// copy, so the journal itself is untouched).
fn next_line(path: &Path, event: Event) -> Vec<u8> {
    let copy = path.with_file_name("next-line.jsonl");
    std::fs::copy(path, &copy).expect("copy");
    let s = scan(&copy, u64::MAX).expect("scan copy");
    append(&copy, &s, &[event]);
    let bytes = std::fs::read(&copy).expect("read copy");
    std::fs::remove_file(&copy).expect("remove copy");
    bytes[s.valid_len as usize..].to_vec()
}

/// A run directory (named after its run, as `load_run` requires) with the story journal.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    journal: PathBuf,
    records: Vec<Record>,
    bytes: Vec<u8>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::Builder::new().prefix("journal-faults-").tempdir().expect("tempdir");
    let dir = tmp.path().join(RUN_ID);
    std::fs::create_dir(&dir).expect("mkdir");
    let journal = dir.join(JOURNAL_FILE);
    let records = write_journal(&journal, &story(), &[4]);
    let bytes = std::fs::read(&journal).expect("read");
    Fixture { _tmp: tmp, dir, journal, records, bytes }
}

/// Position of the 32 hex digits of `sum` in a complete line (with its newline).
fn sum_range(line: &[u8]) -> Range<usize> {
    let end = line.len() - 3; // `"}\n`
    end - 32..end
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn assert_corrupt_at(result: Result<Scan, JournalError>, expected: u64, what: &str) {
    match result {
        Err(JournalError::Corrupt { line, reason, .. }) => {
            assert_eq!(line, expected, "{what}: reported at the wrong line ({reason})");
            assert!(!reason.is_empty(), "{what}: empty reason");
        }
        Err(e) => panic!("{what}: expected corruption at line {expected}, got another error: {e}"),
        Ok(s) => panic!(
            "{what}: expected corruption at line {expected}, but the scan succeeded with {} events \
             (torn: {:?})",
            s.last_seq, s.torn
        ),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Torn tails
// ---------------------------------------------------------------------------------------

/// Every shape a crash can leave after the last intact line.
fn torn_tails(next: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut tails = Vec::new();
    // Every cut of the line being written; the last one is a complete line without its newline.
    for cut in 1..next.len() {
        tails.push((format!("the next line cut after {cut} of {} bytes", next.len()), next[..cut].to_vec()));
    }
    tails.push(("a complete line without its newline".into(), next[..next.len() - 1].to_vec()));
    // Zeros: a file extended (size persisted) before its data was.
    for n in [1, 2, 16, 511, 4096] {
        tails.push((format!("{n} zero bytes"), vec![0; n]));
    }
    let half = next.len() / 2;
    tails.push(("half a line, then zeros".into(), [&next[..half], &[0u8; 4096][..]].concat()));
    tails.push(("zeros ending in a newline".into(), [&[0u8; 100][..], b"\n"].concat()));
    tails.push(("a lone newline".into(), b"\n".to_vec()));
    // Garbage, seeded, including newlines in every position.
    let mut rng = Rng(0x5eed_0001);
    for len in [1, 7, 64, 300, 2000] {
        tails.push((format!("{len} random bytes"), rng.bytes(len)));
        let mut with_newlines = rng.bytes(len);
        for _ in 0..(len / 16).max(1) {
            let at = rng.below(len);
            with_newlines[at] = b'\n';
        }
        tails.push((format!("{len} random bytes with newlines"), with_newlines.clone()));
        with_newlines[0] = b'\n';
        with_newlines.push(b'\n');
        tails.push((format!("newline, {len} random bytes, newline"), with_newlines));
    }
    tails.push((
        "a line prefix, a newline, random bytes".into(),
        [&next[..half], b"\n", &rng.bytes(50)].concat(),
    ));
    tails.push(("journal-looking junk".into(), b"{\"seq\":31}\n{\"seq\":32,\"ts\":\"x\"}\n".to_vec()));
    // A complete line whose checksum fails: one hex digit of its sum changed.
    let sum = sum_range(next);
    for at in [sum.start, sum.start + 13, sum.end - 1] {
        let mut bad = next.to_vec();
        bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
        tails.push((format!("a complete line with sum digit {} changed", at - sum.start), bad.clone()));
        bad.pop();
        tails.push((format!("a line with sum digit {} changed, without newline", at - sum.start), bad));
    }
    // A complete line whose covered bytes changed (its data no longer matches its sum).
    let mut bad = next.to_vec();
    let pos = next.windows(6).position(|w| w == b"123456").expect("dropped_bytes is in the line");
    bad[pos] = b'9';
    tails.push(("a complete line whose data changed".into(), bad));
    tails
}

/// A run directory holding `bytes` as its journal.
fn run_dir_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new().prefix("journal-faults-").tempdir().expect("tempdir");
    let dir = tmp.path().join(RUN_ID);
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join(JOURNAL_FILE), bytes).expect("write journal");
    (tmp, dir)
}

#[test]
fn every_torn_tail_is_cut_kept_aside_and_the_journal_continues() {
    let f = fixture();
    let n = f.records.len() as u64;
    let intact = scan_bytes(&f.journal, &f.bytes, 0).expect("intact journal");
    assert_eq!((intact.last_seq, intact.valid_len, intact.torn.clone()), (n, f.bytes.len() as u64, None));
    assert_eq!(intact.records, f.records, "the reader returns what the writer wrote");
    let folded = RunState::fold_all(&f.records).expect("the story folds");

    let next = next_line(&f.journal, torn_event());
    assert!(next.len() > 150 && next.ends_with(b"\n"), "the torn line is a real, complete line");
    let tails = torn_tails(&next);
    assert!(tails.len() > next.len());
    let mut rng = Rng(0x5eed_0002);

    for (what, tail) in &tails {
        let bytes = [&f.bytes[..], tail].concat();

        // The pure reader: exactly the intact events, and the tail described.
        let s = scan_bytes(&f.journal, &bytes, 0).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(s.last_seq, n, "{what}");
        assert_eq!(s.last_sum, intact.last_sum, "{what}");
        assert_eq!(s.valid_len, f.bytes.len() as u64, "{what}");
        assert_eq!(s.records, f.records, "{what}: the intact records changed");
        let torn = s.torn.clone().unwrap_or_else(|| panic!("{what}: the tail was not reported"));
        assert_eq!(
            (torn.offset, torn.len, torn.line),
            (f.bytes.len() as u64, tail.len() as u64, n + 1),
            "{what}: {torn:?}"
        );
        assert!(!torn.reason.is_empty(), "{what}");
        // Checking only (records a snapshot covers) sees the same.
        let checked = scan_bytes(&f.journal, &bytes, n).expect("scan without parsing");
        assert_eq!(
            (checked.last_seq, checked.valid_len, checked.torn.as_ref()),
            (n, s.valid_len, Some(&torn))
        );
        assert!(checked.records.is_empty());

        // A real file: repair, append, tear again, repair again.
        let (_tmp, dir) = run_dir_with(&bytes);
        let journal = dir.join(JOURNAL_FILE);
        let s = scan(&journal, 0).expect("scan file");
        let torn = s.torn.clone().expect("torn");
        let kept_in = repair_torn_tail(&journal, &torn).expect("repair");
        assert_eq!(kept_in, BROKEN_FILE);
        let broken = dir.join(BROKEN_FILE);
        assert_eq!(
            std::fs::read(&broken).expect("broken file"),
            *tail,
            "{what}: the cut bytes were not kept"
        );
        assert_eq!(std::fs::read(&journal).expect("journal"), f.bytes, "{what}: intact bytes changed");

        let repaired = JournalRepaired {
            dropped_bytes: torn.len,
            kept_in: kept_in.clone(),
            reason: torn.reason.clone(),
        };
        let appended = append(&journal, &s, &[Event::JournalRepaired(repaired)]);
        assert_eq!(appended[0].seq, n + 1);
        let after = scan(&journal, 0).unwrap_or_else(|e| panic!("{what}: after the append: {e}"));
        assert_eq!((after.last_seq, after.torn.clone()), (n + 1, None), "{what}");
        assert_eq!(after.records[..n as usize], f.records[..], "{what}");
        assert_eq!(after.records[n as usize], appended[0], "{what}");
        let file = std::fs::read(&journal).expect("journal");
        assert_eq!(after.valid_len, file.len() as u64);
        let new_line: serde_json::Value =
            serde_json::from_slice(&file[f.bytes.len()..file.len() - 1]).expect("the new line is JSON");
        assert_eq!(
            new_line["prev"],
            intact.last_sum.as_str(),
            "{what}: the new line must chain to the intact end"
        );
        let loaded = load_run(&dir, false, 0).expect("load after repair");
        assert_eq!(loaded.state.journal_repairs, folded.journal_repairs + 1);
        assert_eq!(loaded.state.seq, n + 1);

        // A second crash mid-write, after the repair.
        let next2 = next_line(&journal, torn_event());
        let tail2 = match rng.below(3) {
            0 => next2[..rng.below(next2.len() - 1) + 1].to_vec(),
            1 => vec![0; rng.below(300) + 1],
            _ => {
                let len = rng.below(100) + 1;
                rng.bytes(len)
            }
        };
        let mut bytes2 = file.clone();
        bytes2.extend_from_slice(&tail2);
        std::fs::write(&journal, &bytes2).expect("tear again");
        let s2 = scan(&journal, 0).expect("scan second tear");
        let torn2 = s2.torn.clone().expect("second torn tail");
        assert_eq!(
            (s2.last_seq, torn2.offset, torn2.len, torn2.line),
            (n + 1, file.len() as u64, tail2.len() as u64, n + 2),
            "{what}"
        );
        repair_torn_tail(&journal, &torn2).expect("second repair");
        assert_eq!(
            std::fs::read(&broken).expect("broken file"),
            [&tail[..], &tail2[..]].concat(),
            "{what}: both cut tails are kept, in order"
        );
        assert_eq!(std::fs::read(&journal).expect("journal"), file, "{what}");
        let last = scan(&journal, 0).expect("final scan");
        assert_eq!((last.last_seq, last.torn), (n + 1, None));
    }
}

#[test]
fn a_complete_last_line_from_another_chain_is_corruption_not_a_torn_tail() {
    // A line with a valid checksum cannot come from a crash mid-write: if it does not
    // follow the chain, something rewrote the journal.
    let f = fixture();
    let n = f.records.len() as u64;
    let lines = line_ranges(&f.bytes);
    let dup_last = [&f.bytes[..], &f.bytes[lines[lines.len() - 1].clone()]].concat();
    assert_corrupt_at(scan_bytes(&f.journal, &dup_last, 0), n + 1, "the last line twice");
    let first_again = [&f.bytes[..], &f.bytes[lines[0].clone()]].concat();
    assert_corrupt_at(scan_bytes(&f.journal, &first_again, 0), n + 1, "line 1 appended again");
}

// ---------------------------------------------------------------------------------------
// 2. Damage in the middle
// ---------------------------------------------------------------------------------------

/// Flips `bit` of byte `at` and checks that the scan names `line` as damaged.
fn check_flip(
    path: &Path,
    bytes: &[u8],
    at: usize,
    bit: u8,
    line: u64,
    records: &[Record],
    parse_after: u64,
) {
    let mut damaged = bytes.to_vec();
    damaged[at] ^= 1 << bit;
    let what =
        format!("bit {bit} of byte {at} (line {line}, {:?} -> {:?})", bytes[at] as char, damaged[at] as char);
    // Lines before the damaged one are intact and checked either way; parse from it on.
    let result = scan_bytes(path, &damaged, parse_after);
    // Whatever the outcome, a record is never one the journal did not hold.
    if let Ok(s) = &result {
        for r in &s.records {
            assert_eq!(*r, records[r.seq as usize - 1], "{what}: a damaged record was returned");
        }
    }
    assert_corrupt_at(result, line, &what);
}

#[test]
fn a_flipped_bit_in_any_line_but_the_last_is_corruption_at_that_line() {
    let f = fixture();
    let lines = line_ranges(&f.bytes);
    let n = lines.len();
    let mut rng = Rng(0x5eed_0003);
    let mut checked = 0usize;
    for (i, range) in lines.iter().enumerate().take(n - 1) {
        let line = i as u64 + 1;
        for at in range.clone() {
            let offset = at - range.start;
            // Every bit of the structural parts (the head `{"seq":N,`, the fixed separators
            // around `prev` and `sum`, the closing `"}` and the newline); one bit, chosen at
            // random, of every other byte (data, timestamps, the hex digits of the sums).
            let from_end = range.end - at;
            let structural = offset < 10
                || (77..=86).contains(&from_end)
                || (36..=44).contains(&from_end)
                || from_end <= 3;
            let bits: Vec<u8> = if structural { (0..8).collect() } else { vec![rng.below(8) as u8] };
            for bit in bits {
                if at == range.end - 1 && i == n - 2 {
                    // The newline of the next-to-last line: see the ignored test below.
                    continue;
                }
                // A flipped newline merges this line with the next one: the merged line
                // fails its checksum (its `sum` is the next line's, over different bytes),
                // and the line after it checks out, so the damage is reported at this line.
                check_flip(&f.journal, &f.bytes, at, bit, line, &f.records, line - 1);
                checked += 1;
            }
        }
    }
    assert!(checked > 15_000, "{checked}");
}

#[test]
fn every_bit_of_a_small_journal_is_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(JOURNAL_FILE);
    let events = &story()[..6];
    let records = write_journal(&path, events, &[2]);
    let bytes = std::fs::read(&path).expect("read");
    let lines = line_ranges(&bytes);
    for (i, range) in lines.iter().enumerate().take(lines.len() - 2) {
        for at in range.clone() {
            for bit in 0..8 {
                check_flip(&path, &bytes, at, bit, i as u64 + 1, &records, 0);
            }
        }
    }
    // The next-to-last line: every bit except those of its newline.
    let range = lines[lines.len() - 2].clone();
    for at in range.start..range.end - 1 {
        for bit in 0..8 {
            check_flip(&path, &bytes, at, bit, lines.len() as u64 - 1, &records, 0);
        }
    }
    // The last line: a flipped bit there is indistinguishable from a crash mid-write.
    let last = lines[lines.len() - 1].clone();
    for at in last.clone() {
        for bit in 0..8 {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << bit;
            let s = scan_bytes(&path, &damaged, 0).expect("a damaged last line is a torn tail");
            assert_eq!(s.records, records[..records.len() - 1], "byte {at} bit {bit}");
            assert_eq!(s.torn.map(|t| (t.offset, t.line)), Some((last.start as u64, lines.len() as u64)));
        }
    }
}

/// Regression: the newline ending line n-1 flipped. Lines n-1 and n then read as one line
/// that fails its checksum with nothing valid after it, which used to be taken for a torn
/// tail: `resume` cut both durable events, so a step whose success was among them would
/// have run again. The merged bytes end in line n, complete with a valid checksum, which
/// no crash mid-write can produce, so it is corruption.
#[test]
fn a_flipped_newline_before_the_last_line_is_corruption() {
    let f = fixture();
    let lines = line_ranges(&f.bytes);
    let n = lines.len();
    let newline = lines[n - 2].end - 1;
    for bit in 0..8 {
        // Event n-1 and event n were both durable; the merged line holds all of line n,
        // checksum intact, so this is damage in the middle and must not be cut as a tail.
        check_flip(&f.journal, &f.bytes, newline, bit, n as u64 - 1, &f.records, 0);
    }
}

#[test]
fn removed_duplicated_and_swapped_lines_are_corruption_at_the_right_line() {
    let f = fixture();
    let lines: Vec<&[u8]> = line_ranges(&f.bytes).into_iter().map(|r| &f.bytes[r]).collect();
    let n = lines.len();
    let join = |ls: Vec<&[u8]>| ls.concat();
    for k in 0..n {
        let line = k as u64 + 1;
        if k + 1 < n {
            // Removed: line k+1 now holds the wrong sequence number.
            let mut ls = lines.clone();
            ls.remove(k);
            assert_corrupt_at(scan_bytes(&f.journal, &join(ls), 0), line, &format!("line {line} removed"));
            // Swapped with the next: this position holds the next sequence number.
            let mut ls = lines.clone();
            ls.swap(k, k + 1);
            assert_corrupt_at(
                scan_bytes(&f.journal, &join(ls), 0),
                line,
                &format!("lines {line}, {} swapped", line + 1),
            );
        }
        // Duplicated: the copy is the first line out of sequence.
        let mut ls = lines.clone();
        ls.insert(k + 1, lines[k]);
        assert_corrupt_at(scan_bytes(&f.journal, &join(ls), 0), line + 1, &format!("line {line} duplicated"));
        // Replaced by an empty line, when something follows.
        if k + 1 < n {
            let mut ls = lines.clone();
            ls[k] = b"\n";
            assert_corrupt_at(scan_bytes(&f.journal, &join(ls), 0), line, &format!("line {line} emptied"));
        }
    }
    // Removing the last line leaves a shorter journal that is intact: nothing can tell.
    let s = scan_bytes(&f.journal, &join(lines[..n - 1].to_vec()), 0).expect("prefix");
    assert_eq!((s.last_seq, s.torn), (n as u64 - 1, None));
}

/// Runs the real binary in `cwd` with `--runs-dir`.
fn runner(cwd: &Path, runs: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("--runs-dir")
        .arg(runs)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUNNER_RUNS_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("runner starts");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file of a directory tree with the blake3 of its contents, except `lock`, which
/// holds the pid of the last process that took the lock (a refused resume takes it too).
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("inside").to_path_buf();
                if rel != Path::new("lock") {
                    out.insert(rel, blake3::hash(&std::fs::read(&path).expect("read")).to_hex().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn the_binary_refuses_a_journal_with_a_flipped_bit_and_changes_nothing() {
    let tmp = tempfile::Builder::new().prefix("journal-faults-e2e-").tempdir().expect("tempdir");
    let cwd = tmp.path();
    let runs = cwd.join("runs");
    let flow = cwd.join("gated.toml");
    std::fs::write(
        &flow,
        "[[steps]]\nid = \"first\"\nrun = \"echo first >> first.out\"\n\
         [[steps]]\nid = \"gate\"\nrun = \"echo gate >> gate.out; test -f fixed\"\n\
         [[steps]]\nid = \"last\"\nrun = \"echo last >> last.out\"\n",
    )
    .expect("write flow");
    let flow = flow.to_str().expect("utf-8 path");

    let mut rng = Rng(0x5eed_0004);
    // One run per damaged line: the first, one in the middle, the next-to-last.
    for pick in ["first", "middle", "next-to-last"] {
        let (code, stdout, stderr) = runner(cwd, &runs, &["run", flow]);
        assert_eq!(code, 1, "the gate fails\n{stderr}");
        let id = stdout.lines().next().expect("run id").trim().to_string();
        let dir = runs.join(&id);
        let journal = dir.join(JOURNAL_FILE);
        let original = std::fs::read(&journal).expect("journal");
        let lines = line_ranges(&original);
        assert!(lines.len() >= 6, "a real run has several events");
        let k = match pick {
            "first" => 0,
            "middle" => lines.len() / 2,
            _ => lines.len() - 2,
        };
        // A bit inside the line (not its newline), at a seeded random place.
        let range = lines[k].clone();
        let at = range.start + rng.below(range.len() - 1);
        let mut damaged = original.clone();
        damaged[at] ^= 1 << rng.below(8);
        std::fs::write(&journal, &damaged).expect("damage");
        let before = tree(&dir);
        let needle = format!("journal.jsonl:{}:", k + 1);

        let (code, _, stderr) = runner(cwd, &runs, &["verify", "--run-id", &id]);
        assert_eq!(code, 1, "verify of a damaged journal ({pick} line)\n{stderr}");
        assert!(stderr.contains(&needle), "verify must name {needle}:\n{stderr}");

        std::fs::write(cwd.join("fixed"), "").expect("fix the gate");
        let (code, _, stderr) = runner(cwd, &runs, &["resume", "--run-id", &id]);
        assert_eq!(code, 2, "resume of a damaged journal ({pick} line)\n{stderr}");
        assert!(stderr.contains(&needle), "resume must name {needle}:\n{stderr}");
        std::fs::remove_file(cwd.join("fixed")).expect("unfix");

        assert_eq!(std::fs::read(&journal).expect("journal"), damaged, "the journal was changed");
        assert_eq!(
            blake3::hash(&std::fs::read(&journal).expect("journal")),
            blake3::hash(&damaged),
            "the journal was changed"
        );
        assert_eq!(tree(&dir), before, "files of the run were changed");
        assert!(!dir.join(BROKEN_FILE).exists(), "corruption is not a torn tail");
        assert_eq!(std::fs::read_to_string(cwd.join("last.out")).unwrap_or_default(), "", "nothing ran");
    }
}

// ---------------------------------------------------------------------------------------
// 3. Snapshots against their journal
// ---------------------------------------------------------------------------------------

/// Checksum of line `k` of the journal in `dir`.
fn sum_at(dir: &Path, k: u64) -> String {
    let path = dir.join(JOURNAL_FILE);
    let bytes = std::fs::read(&path).expect("journal");
    scan_bytes_with(&path, &bytes, u64::MAX, k).expect("scan").boundary_sum.expect("line k exists")
}

#[test]
fn a_snapshot_is_used_only_for_the_journal_it_was_written_for() {
    let f = fixture();
    let n = f.records.len();
    let full = RunState::fold_all(&f.records).expect("fold");
    for k in [1, 2, 9, 14, 15, 29, 30] {
        let at_k = RunState::fold_all(&f.records[..k]).expect("fold prefix");
        write_snapshot(&f.dir, &at_k, &sum_at(&f.dir, k as u64)).expect("write snapshot");
        for after in [0, k as u64 - 1, k as u64, n as u64, u64::MAX] {
            let l = load_run(&f.dir, true, after).expect("load");
            assert_eq!(l.snapshot, SnapshotUse::Used(k as u64), "k={k}");
            assert_eq!(l.state, full, "k={k}: snapshot + replay must equal the fold");
            let want: Vec<&Record> = f.records.iter().filter(|r| r.seq > after).collect();
            assert_eq!(l.records.iter().collect::<Vec<_>>(), want, "k={k} after={after}");
            assert_eq!((l.last_seq, l.valid_len), (n as u64, f.bytes.len() as u64));
        }
        let without = load_run(&f.dir, false, 0).expect("load without snapshot");
        assert_eq!((without.snapshot, without.state), (SnapshotUse::Absent, full.clone()));
    }

    // The same events written again: other timestamps, so other checksums, same length.
    let k = 15;
    let at_k = RunState::fold_all(&f.records[..k]).expect("fold prefix");
    write_snapshot(&f.dir, &at_k, &sum_at(&f.dir, k as u64)).expect("write snapshot");
    let other = f.dir.with_file_name("other.jsonl");
    std::thread::sleep(std::time::Duration::from_millis(5));
    let other_records = write_journal(&other, &story(), &[7]);
    let other_bytes = std::fs::read(&other).expect("read");
    assert_eq!(other_bytes.len(), f.bytes.len(), "same events, same length");
    assert_ne!(other_bytes, f.bytes);
    std::fs::rename(&other, &f.journal).expect("replace the journal");
    let l = load_run(&f.dir, true, 0).expect("load");
    match &l.snapshot {
        SnapshotUse::Ignored(why) => assert!(why.contains("does not match the journal"), "{why}"),
        other => panic!("a snapshot of another journal was {other:?}"),
    }
    let fresh = RunState::fold_all(&other_records).expect("fold");
    assert_eq!(l.state, fresh);
    assert_eq!(l.records, other_records);
    assert_eq!(l.state, load_run(&f.dir, false, 0).expect("load").state);

    // A journal that shares the first k lines and differs after them: still usable.
    let lines = line_ranges(&other_bytes);
    let prefix = &other_bytes[..lines[k - 1].end];
    write_snapshot(
        &f.dir,
        &RunState::fold_all(&other_records[..k]).expect("fold"),
        &sum_at(&f.dir, k as u64),
    )
    .expect("write snapshot");
    std::fs::write(&f.journal, prefix).expect("cut");
    let s = scan(&f.journal, u64::MAX).expect("scan prefix");
    let tail_records = append(&f.journal, &s, &story()[k..]);
    let l = load_run(&f.dir, true, 0).expect("load");
    assert_eq!(l.snapshot, SnapshotUse::Used(k as u64));
    let mut all = other_records[..k].to_vec();
    all.extend(tail_records);
    assert_eq!(l.state, RunState::fold_all(&all).expect("fold"));

    // An intact snapshot covering more than the journal holds proves that durable lines
    // were lost: that is corruption, not something to fold around.
    let sum_of_last = sum_at(&f.dir, n as u64);
    write_snapshot(&f.dir, &RunState::fold_all(&all).expect("fold"), &sum_of_last).expect("write snapshot");
    assert_eq!(load_run(&f.dir, true, 0).expect("load").snapshot, SnapshotUse::Used(n as u64));
    std::fs::write(&f.journal, prefix).expect("cut the journal back to k lines");
    for use_snapshot in [true, false] {
        match load_run(&f.dir, use_snapshot, 0) {
            Err(LoadError::Journal(JournalError::Corrupt { line, reason, .. })) => {
                assert_eq!(line, k as u64 + 1);
                assert!(reason.contains("state.json shows event"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}

#[test]
fn a_damaged_snapshot_is_ignored_never_trusted() {
    let f = fixture();
    let full = RunState::fold_all(&f.records).expect("fold");
    // Before the long failure message, to keep the file (and the number of cases) small.
    let k = 13;
    let at_k = RunState::fold_all(&f.records[..k]).expect("fold prefix");
    write_snapshot(&f.dir, &at_k, &sum_at(&f.dir, k as u64)).expect("write snapshot");
    let path = f.dir.join(SNAPSHOT_FILE);
    let snapshot = std::fs::read(&path).expect("snapshot");
    assert_eq!(load_run(&f.dir, true, 0).expect("load").snapshot, SnapshotUse::Used(k as u64));
    // Two lines: the state, and a short one saying what it covers (its format, seq, sum and
    // the state line's hash). Which comes first is the snapshot writer's business.
    let lines = line_ranges(&snapshot);
    assert_eq!(lines.len(), 2, "a snapshot is two lines");
    let is_state =
        |r: &Range<usize>| serde_json::from_slice::<RunState>(&snapshot[r.start..r.end - 1]).is_ok();
    let (state_line, meta_line) = match (is_state(&lines[0]), is_state(&lines[1])) {
        (true, false) => (lines[0].clone(), lines[1].clone()),
        (false, true) => (lines[1].clone(), lines[0].clone()),
        other => panic!("cannot tell the state line: {other:?}"),
    };

    let check = |bytes: &[u8], what: &str| {
        std::fs::write(&path, bytes).expect("write damaged snapshot");
        let l = load_run(&f.dir, true, 0).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(l.state, full, "{what}: the state differs from the fold of the journal");
        l.snapshot
    };
    let near = |at: usize, r: &Range<usize>| at + 8 >= r.start && at <= r.end + 8;

    // Every truncation, through the snapshot reader; through `load_run` for every cut in
    // or near the short line and at the end, then a sample. Cutting only the final
    // newline leaves both lines whole (the state still matches its hash), so using that
    // one is correct.
    let mut rng = Rng(0x5eed_0005);
    for len in 0..snapshot.len() {
        let what = format!("snapshot cut to {len} of {} bytes", snapshot.len());
        std::fs::write(&path, &snapshot[..len]).expect("write");
        let intact = len == snapshot.len() - 1;
        match runner::state::load_snapshot(&f.dir) {
            Err(why) => assert!(!intact && why.contains("unusable"), "{what}: {why}"),
            Ok(Some(snap)) => assert!(intact && snap.state == at_k, "{what}"),
            Ok(None) => panic!("{what}: the file exists"),
        }
        if near(len, &meta_line) || len + 3 >= snapshot.len() || len < 8 || rng.below(64) == 0 {
            match check(&snapshot[..len], &what) {
                SnapshotUse::Ignored(why) => assert!(why.contains(SNAPSHOT_FILE), "{what}: {why}"),
                SnapshotUse::Used(seq) if intact => assert_eq!(seq, k as u64),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    // Every bit of the short line and its newline: no checksum covers it, but every field
    // is checked against something (the format, the state line's hash, the journal line).
    for at in meta_line.clone() {
        for bit in 0..8 {
            let mut bytes = snapshot.clone();
            bytes[at] ^= 1 << bit;
            let what =
                format!("byte {at} bit {bit} of the line after the state ({:?})", snapshot[at] as char);
            let used = check(&bytes, &what);
            assert!(matches!(used, SnapshotUse::Ignored(_)), "{what}: {used:?}");
        }
    }

    // The state line and its newline: one random bit of every byte through the snapshot
    // reader (its hash no longer matches), and of a sample of bytes through `load_run`.
    for at in state_line.clone() {
        let mut bytes = snapshot.clone();
        bytes[at] ^= 1 << rng.below(8);
        let what = format!("state byte {at} ({:?} -> {:?})", snapshot[at] as char, bytes[at] as char);
        std::fs::write(&path, &bytes).expect("write");
        match runner::state::load_snapshot(&f.dir) {
            Err(why) => assert!(why.contains("unusable"), "{what}: {why}"),
            Ok(_) => panic!("{what}: a damaged state line was accepted"),
        }
        if rng.below(48) == 0 || at == state_line.start || at == state_line.end - 1 {
            let used = check(&bytes, &what);
            assert!(matches!(used, SnapshotUse::Ignored(_)), "{what}: {used:?}");
        }
    }

    // Not a snapshot at all.
    for junk in [&b""[..], b"\n", b"\n\n", b"{}\n{}\n", b"\xff\xfe\n\x00", b"null\nnull\n"] {
        let used = check(junk, &format!("{junk:?}"));
        assert!(matches!(used, SnapshotUse::Ignored(_)), "{junk:?}: {used:?}");
    }
}

#[test]
fn torn_tail_helpers_agree_with_the_format() {
    // Guards the helpers above: the fixed-width tail, the checksum rule and line ranges.
    let f = fixture();
    for range in line_ranges(&f.bytes) {
        let line = &f.bytes[range];
        assert!(line_checksum_ok(&line[..line.len() - 1]));
        let v: serde_json::Value = serde_json::from_slice(&line[..line.len() - 1]).expect("JSON");
        assert_eq!(v["sum"].as_str().expect("sum").as_bytes(), &line[sum_range(line)]);
    }
}

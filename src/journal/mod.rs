//! The journal: an append-only JSONL file of events, the single source of truth for a run.
//!
//! One line per event:
//!
//! ```text
//! {"seq":3,"ts":"2026-11-21T23:42:44.123Z","type":"StepStarted","data":{...},"prev":"<32 hex>","sum":"<32 hex>"}
//! ```
//!
//! `sum` is blake3 (first 16 bytes, hex) of the line up to and including the closing quote
//! of `prev`, and `prev` is the `sum` of the line before (zeros for the first), so every
//! line is checked on its own and the chain catches lines removed, duplicated or reordered.
//! The two fields close every line at fixed width, so a line can be checked without a
//! JSON parse.

mod event;
mod reader;
mod writer;

use std::path::PathBuf;

pub use event::*;
pub use reader::{Scan, TornTail, last_record, repair_torn_tail, scan, scan_bytes, scan_bytes_with};
pub use writer::JournalWriter;

/// Bumped when the line format changes incompatibly; recorded in `RunStarted`.
pub const JOURNAL_FORMAT: u32 = 1;
/// File name inside a run directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// Where bytes cut off a torn tail are kept, appended, for inspection.
pub const BROKEN_FILE: &str = "journal.jsonl.broken";

/// Length of a checksum in hex characters.
const SUM_HEX: usize = 32;
/// `,"prev":"<32>","sum":"<32>"}`: the fixed-width end of every line.
const TAIL_LEN: usize = 9 + SUM_HEX + 1 + 8 + SUM_HEX + 2;
/// Bytes at the end of a line that the checksum does not cover: `,"sum":"<32>"}`.
const SUM_PART_LEN: usize = 8 + SUM_HEX + 2;
/// `prev` of the first line.
pub const ZERO_SUM: &str = "00000000000000000000000000000000";

/// One journal line: an event with its position and time.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds, exactly as written.
    pub ts: String,
    pub event: Event,
    /// The `data` object exactly as the line holds it (the projection stores this text).
    pub data: String,
}

impl Record {
    pub fn new(seq: u64, ts: String, event: Event) -> Record {
        let data = event.data_json();
        Record { seq, ts, event, data }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}:{line}: the journal is damaged: {reason}. The runner will not guess past a damaged \
         line; inspect it with `sed -n '{line}p' {}`",
        path.display(), path.display()
    )]
    Corrupt { path: PathBuf, line: u64, reason: String },
    #[error("{}: an earlier write to the journal failed; nothing after it was acknowledged", path.display())]
    WriterFailed { path: PathBuf },
}

impl JournalError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        JournalError::Io { path: path.to_path_buf(), source }
    }
}

fn checksum(covered: &[u8]) -> String {
    let hex = blake3::hash(covered).to_hex();
    hex[..SUM_HEX].to_string()
}

/// Serialises one line (with its newline) and returns it with its checksum.
fn encode(seq: u64, ts: &str, event: &Event, data: &str, prev: &str) -> (Vec<u8>, String) {
    let ts = serde_json::to_string(ts).unwrap_or_else(|_| "\"\"".into());
    let mut line = format!(
        "{{\"seq\":{seq},\"ts\":{ts},\"type\":\"{}\",\"data\":{data},\"prev\":\"{prev}\"",
        event.kind()
    )
    .into_bytes();
    let sum = checksum(&line);
    line.extend_from_slice(b",\"sum\":\"");
    line.extend_from_slice(sum.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, sum)
}

/// The current time as journal lines write it.
pub fn now_ts() -> String {
    ts_of(jiff::Timestamp::now())
}

/// A timestamp as the journal writes it (UTC, milliseconds), so strings compare in order.
pub fn ts_of(t: jiff::Timestamp) -> String {
    format!("{t:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_lines_have_the_fixed_tail() {
        let e = Event::RunInterrupted(RunInterrupted { signal: "SIGINT".into(), cancelled_by: None });
        let (line, sum) = encode(7, "2026-01-01T00:00:00.000Z", &e, &e.data_json(), ZERO_SUM);
        let text = std::str::from_utf8(&line).expect("utf8");
        assert!(
            text.starts_with("{\"seq\":7,\"ts\":\"2026-01-01T00:00:00.000Z\",\"type\":\"RunInterrupted\"")
        );
        assert!(text.ends_with(&format!("\"prev\":\"{ZERO_SUM}\",\"sum\":\"{sum}\"}}\n")));
        let body = &line[..line.len() - 1];
        assert_eq!(&body[body.len() - TAIL_LEN..body.len() - TAIL_LEN + 9], b",\"prev\":\"");
        assert_eq!(checksum(&body[..body.len() - SUM_PART_LEN]), sum);
        let v: serde_json::Value = serde_json::from_slice(body).expect("line is JSON");
        assert_eq!(v["data"]["signal"], "SIGINT");
    }
}

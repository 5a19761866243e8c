//! `runs/.schedule/decisions.jsonl`: every decision the scheduler made, one checksummed
//! JSON line each, appended and fsync'd before the decision is acted upon.
//!
//! It is the truth about scheduling, as a journal is about a run: the projection's
//! `schedule_decisions` table is a fold of it, so it can be deleted and rebuilt like the
//! rest. It does not reuse the run journal's writer because that one is built around a
//! run's typed events, sequence chain and lock; one scheduler appends here at a time
//! (`scheduler.lock` beside it) and lines are independent.
//!
//! A line: `{"seq":1,"flow":"nightly","slot":"…","decided_at":"…","decision":"started",
//! "run_id":"nightly-20261204T0200","sum":"<32 hex>"}`, where `sum` is blake3 (16 bytes,
//! hex) of the line before `,"sum"`. A torn last line (a crash mid-write) is dropped with
//! a warning; a damaged line before it is an error naming its line number.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Directory under the runs directory; starts with `.`, so it is never a run id.
pub const SCHEDULE_DIR: &str = ".schedule";
pub const DECISIONS_FILE: &str = "decisions.jsonl";
/// Held exclusively by the live scheduler: two schedulers on one runs directory would
/// start every slot twice (the second would only resume it, but both would record).
pub const LOCK_FILE: &str = "scheduler.lock";

/// What the scheduler did with a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// The slot came due while the scheduler was up; its run was started.
    Started,
    /// The slot came due while the scheduler was down; `--catch-up one` started it.
    CaughtUp,
    /// The previous run of the flow still held its lock; the slot was not started.
    SkippedStillRunning,
    /// The slot passed without a run (downtime, or `--catch-up none`).
    Missed,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Started => "started",
            Decision::CaughtUp => "caught-up",
            Decision::SkippedStillRunning => "skipped-still-running",
            Decision::Missed => "missed",
        }
    }

    /// Whether the decision started a run.
    pub fn starts(self) -> bool {
        matches!(self, Decision::Started | Decision::CaughtUp)
    }
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    pub flow: String,
    /// The slot's instant, RFC 3339 UTC (as journals write times).
    pub slot: String,
    pub decided_at: String,
    pub decision: Decision,
    /// The run the slot has (or would have had): `<flow>-<YYYYMMDDTHHMM>`.
    pub run_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: the schedule log is damaged: {reason}", path.display())]
    Corrupt { path: PathBuf, line: usize, reason: String },
}

/// What reading the log found.
#[derive(Debug, Default)]
pub struct Read {
    pub entries: Vec<Entry>,
    /// Length of the intact lines; anything after is a torn tail.
    pub valid_len: u64,
    pub torn: bool,
}

pub fn path(runs_root: &Path) -> PathBuf {
    runs_root.join(SCHEDULE_DIR).join(DECISIONS_FILE)
}

const SUM_HEX: usize = 32;
/// `,"sum":"<32>"}`
const SUM_PART_LEN: usize = 8 + SUM_HEX + 2;

fn checksum(covered: &[u8]) -> String {
    blake3::hash(covered).to_hex()[..SUM_HEX].to_string()
}

/// The line for `entry`, with its newline.
fn encode(entry: &Entry) -> Vec<u8> {
    let json = serde_json::to_string(entry).unwrap_or_default();
    // `{…}` → `{…,"sum":"…"}`: the checksum covers everything before `,"sum"`.
    let mut line = json.trim_end_matches('}').as_bytes().to_vec();
    let sum = checksum(&line);
    line.extend_from_slice(b",\"sum\":\"");
    line.extend_from_slice(sum.as_bytes());
    line.extend_from_slice(b"\"}\n");
    line
}

fn decode(line: &[u8]) -> Result<Entry, String> {
    if line.len() < SUM_PART_LEN + 2 {
        return Err("line too short".into());
    }
    let (covered, tail) = line.split_at(line.len() - SUM_PART_LEN);
    let sum = tail.get(8..8 + SUM_HEX).ok_or("no checksum")?;
    if !tail.starts_with(b",\"sum\":\"") || !tail.ends_with(b"\"}") {
        return Err("no checksum at the end of the line".into());
    }
    if checksum(covered).as_bytes() != sum {
        return Err("checksum mismatch".into());
    }
    let mut json = covered.to_vec();
    json.push(b'}');
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// Reads the whole log; a missing file is an empty log.
pub fn read(path: &Path) -> Result<Read, LogError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::default()),
        Err(source) => return Err(LogError::Io { path: path.to_path_buf(), source }),
    };
    read_bytes(path, &bytes)
}

fn read_bytes(path: &Path, bytes: &[u8]) -> Result<Read, LogError> {
    let mut out = Read::default();
    let mut start = 0;
    let mut line_no = 0;
    while start < bytes.len() {
        line_no += 1;
        let Some(nl) = bytes[start..].iter().position(|b| *b == b'\n') else {
            out.torn = true; // no newline: a write that did not finish
            break;
        };
        let line = &bytes[start..start + nl];
        let last = start + nl + 1 == bytes.len();
        match decode(line) {
            Ok(entry) if entry.seq == out.entries.len() as u64 + 1 => out.entries.push(entry),
            Ok(entry) => {
                return Err(LogError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_no,
                    reason: format!("sequence {} where {} was expected", entry.seq, out.entries.len() + 1),
                });
            }
            // A damaged last line is a torn write only if nothing follows it.
            Err(_) if last => {
                out.torn = true;
                break;
            }
            Err(reason) => return Err(LogError::Corrupt { path: path.to_path_buf(), line: line_no, reason }),
        }
        start += nl + 1;
        out.valid_len = start as u64;
    }
    Ok(out)
}

/// Appends to the log. Create with `open`, which cuts a torn tail first.
pub struct LogWriter {
    file: File,
    path: PathBuf,
    next_seq: u64,
}

impl LogWriter {
    /// Opens (creating) the log for appending; returns it with what it holds.
    pub fn open(path: &Path) -> Result<(LogWriter, Read), LogError> {
        let io = |source| LogError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let read = read(path)?;
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        if read.torn {
            crate::report::note(&format!(
                "warning: {}: dropped a torn last line (a write cut short by a crash)",
                path.display()
            ));
            file.set_len(read.valid_len).map_err(io)?;
        }
        if let Some(dir) = path.parent() {
            crate::fsutil::sync_dir(dir).map_err(io)?;
        }
        let next_seq = read.entries.len() as u64 + 1;
        Ok((LogWriter { file, path: path.to_path_buf(), next_seq }, read))
    }

    /// Writes and syncs one decision; only then may it be acted upon.
    pub fn append(
        &mut self,
        flow: &str,
        slot: &str,
        decided_at: &str,
        decision: Decision,
        run_id: &str,
    ) -> Result<Entry, LogError> {
        let entry = Entry {
            seq: self.next_seq,
            flow: flow.to_string(),
            slot: slot.to_string(),
            decided_at: decided_at.to_string(),
            decision,
            run_id: run_id.to_string(),
        };
        let io = |source| LogError::Io { path: self.path.clone(), source };
        self.file.write_all(&encode(&entry)).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.next_seq += 1;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            flow: "nightly".into(),
            slot: "2026-12-04T02:00:00.000Z".into(),
            decided_at: "2026-12-04T02:00:00.100Z".into(),
            decision: Decision::Started,
            run_id: "nightly-20261204T0200".into(),
        }
    }

    #[test]
    fn lines_round_trip_and_carry_a_checksum() {
        let line = encode(&entry(1));
        let text = std::str::from_utf8(&line).expect("utf8");
        assert!(text.contains("\"decision\":\"started\""), "{text}");
        assert!(text.ends_with("\"}\n"));
        assert_eq!(decode(&line[..line.len() - 1]).expect("decodes"), entry(1));
    }

    #[test]
    fn a_torn_tail_is_dropped_and_a_damaged_middle_is_named() {
        let p = Path::new("d.jsonl");
        let mut bytes = [encode(&entry(1)), encode(&entry(2))].concat();
        let full = bytes.len();
        bytes.extend_from_slice(&encode(&entry(3))[..20]);
        let r = read_bytes(p, &bytes).expect("reads");
        assert_eq!((r.entries.len(), r.valid_len, r.torn), (2, full as u64, true));

        let mut damaged = [encode(&entry(1)), encode(&entry(2)), encode(&entry(3))].concat();
        let at = encode(&entry(1)).len() + 12;
        damaged[at] ^= 1;
        match read_bytes(p, &damaged) {
            Err(LogError::Corrupt { line: 2, .. }) => {}
            other => panic!("expected line 2 to be named, got {other:?}"),
        }
        let swapped = [encode(&entry(2)), encode(&entry(1))].concat();
        assert!(matches!(read_bytes(p, &swapped), Err(LogError::Corrupt { line: 1, .. })));
    }

    #[test]
    fn the_writer_appends_after_cutting_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path());
        {
            let (mut w, read) = LogWriter::open(&p).expect("open");
            assert!(read.entries.is_empty());
            w.append("a", "s1", "d1", Decision::Started, "a-1").expect("append");
        }
        let mut f = OpenOptions::new().append(true).open(&p).expect("open");
        f.write_all(b"{\"seq\":2,\"fl").expect("write");
        let (mut w, read) = LogWriter::open(&p).expect("reopen");
        assert_eq!(read.entries.len(), 1);
        w.append("a", "s2", "d2", Decision::Missed, "a-2").expect("append");
        let all = super::read(&p).expect("read");
        assert!(!all.torn);
        assert_eq!(all.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(all.entries[1].decision, Decision::Missed);
    }
}

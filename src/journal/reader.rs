//! Reading and checking a journal: every line's checksum, the chain, the sequence.
//!
//! A bad line followed by nothing that checks out is a torn tail (a crash mid-write): it
//! is reported and may be cut. A bad line that is followed by, or even contains, a
//! complete line with a valid checksum is corruption in the middle (a write cut short
//! cannot produce a whole checksummed line after the cut): it is an error, never skipped.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{BROKEN_FILE, Event, JournalError, Record, SUM_HEX, SUM_PART_LEN, TAIL_LEN, ZERO_SUM, checksum};

/// The outcome of reading a journal.
#[derive(Debug)]
pub struct Scan {
    /// Parsed records with `seq` greater than the `parse_after` asked for.
    pub records: Vec<Record>,
    /// Number of intact lines (= last seq).
    pub last_seq: u64,
    pub last_sum: String,
    /// Byte length of the intact lines.
    pub valid_len: u64,
    pub torn: Option<TornTail>,
    /// Checksum of the line asked for with `sum_at`, if the journal reaches it (to check
    /// that a snapshot belongs to this journal).
    pub boundary_sum: Option<String>,
}

/// Bytes at the end of the journal that do not form intact lines.
#[derive(Debug, Clone, PartialEq)]
pub struct TornTail {
    pub offset: u64,
    pub len: u64,
    /// 1-based line number where the tail starts.
    pub line: u64,
    pub reason: String,
}

#[derive(Deserialize)]
struct RawLine<'a> {
    seq: u64,
    ts: String,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Reads the journal at `path`; see [`scan_bytes`].
pub fn scan(path: &Path, parse_after: u64) -> Result<Scan, JournalError> {
    let bytes = std::fs::read(path).map_err(|e| JournalError::io(path, e))?;
    scan_bytes(path, &bytes, parse_after)
}

/// Checks every line and parses those with `seq > parse_after` (lines a snapshot already
/// covers need only their checksums checked).
pub fn scan_bytes(path: &Path, bytes: &[u8], parse_after: u64) -> Result<Scan, JournalError> {
    scan_bytes_with(path, bytes, parse_after, parse_after)
}

/// Like [`scan_bytes`], also keeping the checksum of line `sum_at` in `boundary_sum`.
pub fn scan_bytes_with(
    path: &Path,
    bytes: &[u8],
    parse_after: u64,
    sum_at: u64,
) -> Result<Scan, JournalError> {
    let corrupt =
        |line: u64, reason: String| JournalError::Corrupt { path: path.to_path_buf(), line, reason };
    let mut scan = Scan {
        records: Vec::new(),
        last_seq: 0,
        last_sum: ZERO_SUM.to_string(),
        valid_len: 0,
        torn: None,
        boundary_sum: None,
    };
    let mut offset = 0usize;
    let mut line_no = 0u64;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let (body, has_newline) = match memchr_newline(rest) {
            Some(i) => (&rest[..i], true),
            None => (rest, false),
        };
        let checked = check_line(body);
        let bad = match (&checked, has_newline) {
            (Err(reason), _) => Some(reason.clone()),
            // Complete but unterminated: the crash came before the newline and the sync.
            (Ok(_), false) => Some("the last line has no newline".to_string()),
            (Ok(_), true) => None,
        };
        if let Some(reason) = bad {
            // Anything from here on that checks out means the damage is not at the tail
            // (a flipped newline merges two lines: the second still checks out inside).
            if contains_valid_line(&rest[1..]) {
                return Err(corrupt(line_no, reason));
            }
            scan.torn =
                Some(TornTail { offset: offset as u64, len: rest.len() as u64, line: line_no, reason });
            break;
        }
        let (seq, prev, sum) = checked.unwrap_or_else(|_| unreachable!("checked above"));
        if seq != scan.last_seq + 1 {
            return Err(corrupt(
                line_no,
                format!("sequence number {seq} where {} was expected", scan.last_seq + 1),
            ));
        }
        if prev != scan.last_sum {
            return Err(corrupt(line_no, "the chain to the previous line is broken".into()));
        }
        if seq > parse_after {
            scan.records.push(parse_record(body, seq).map_err(|e| corrupt(line_no, e))?);
        }
        if seq == sum_at {
            scan.boundary_sum = Some(sum.to_string());
        }
        scan.last_seq = seq;
        scan.last_sum = sum.to_string();
        offset += body.len() + 1;
        scan.valid_len = offset as u64;
    }
    Ok(scan)
}

/// Parses a line whose checksum has been checked.
fn parse_record(body: &[u8], seq: u64) -> Result<Record, String> {
    let raw: RawLine = serde_json::from_slice(body).map_err(|e| format!("not a journal record: {e}"))?;
    if raw.seq != seq {
        return Err("sequence number does not match".into());
    }
    let event = Event::from_parts(raw.kind, raw.data.get())?;
    Ok(Record { seq, ts: raw.ts, event, data: raw.data.get().to_string() })
}

/// Checks every line of the journal at `path` but parses only the last intact one:
/// enough to learn how a run ended without folding it. The bytes come back too, so a
/// caller that goes on to fold the run does not read the file again.
pub fn last_record(path: &Path) -> Result<(Scan, Option<Record>, Vec<u8>), JournalError> {
    let bytes = std::fs::read(path).map_err(|e| JournalError::io(path, e))?;
    let scan = scan_bytes_with(path, &bytes, u64::MAX, 0)?;
    let intact = &bytes[..usize::try_from(scan.valid_len).unwrap_or(0).min(bytes.len())];
    let body = intact.strip_suffix(b"\n").unwrap_or(intact);
    let line = &body[body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)..];
    let record = match scan.last_seq {
        0 => None,
        seq => Some(parse_record(line, seq).map_err(|reason| JournalError::Corrupt {
            path: path.to_path_buf(),
            line: seq,
            reason,
        })?),
    };
    Ok((scan, record, bytes))
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Checks one line (without its newline) on its own: layout and checksum.
/// Returns its sequence number, `prev` and `sum`.
fn check_line(body: &[u8]) -> Result<(u64, &str, &str), String> {
    const HEAD: &[u8] = b"{\"seq\":";
    if body.len() < HEAD.len() + TAIL_LEN || !body.starts_with(HEAD) {
        return Err("not a complete journal line".into());
    }
    let tail = &body[body.len() - TAIL_LEN..];
    let layout_ok = tail.starts_with(b",\"prev\":\"")
        && &tail[9 + SUM_HEX..9 + SUM_HEX + 9] == b"\",\"sum\":\""
        && tail.ends_with(b"\"}");
    if !layout_ok {
        return Err("not a complete journal line".into());
    }
    let prev = std::str::from_utf8(&tail[9..9 + SUM_HEX]).map_err(|_| "bad prev field")?;
    let sum =
        std::str::from_utf8(&tail[TAIL_LEN - 2 - SUM_HEX..TAIL_LEN - 2]).map_err(|_| "bad sum field")?;
    if checksum(&body[..body.len() - SUM_PART_LEN]) != sum {
        return Err("checksum mismatch".into());
    }
    let digits = &body[HEAD.len()..];
    let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(0);
    let seq = std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|_| digits.get(end) == Some(&b','))
        .ok_or("bad sequence number")?;
    Ok((seq, prev, sum))
}

/// Whether a complete, valid line starts anywhere in `bytes`.
fn contains_valid_line(bytes: &[u8]) -> bool {
    const HEAD: &[u8] = b"{\"seq\":";
    let mut from = 0;
    while let Some(i) = bytes[from..].windows(HEAD.len()).position(|w| w == HEAD) {
        let start = from + i;
        let line = &bytes[start..];
        let end = memchr_newline(line).unwrap_or(line.len());
        if check_line(&line[..end]).is_ok() {
            return true;
        }
        from = start + 1;
    }
    false
}

/// Moves a torn tail out of the journal: appends the bytes to `journal.jsonl.broken`
/// (synced), then truncates the journal to its intact lines (synced).
pub fn repair_torn_tail(journal: &Path, torn: &TornTail) -> Result<String, JournalError> {
    let bytes = std::fs::read(journal).map_err(|e| JournalError::io(journal, e))?;
    let start = usize::try_from(torn.offset).unwrap_or(usize::MAX).min(bytes.len());
    let broken = journal.with_file_name(BROKEN_FILE);
    let mut kept = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&broken)
        .map_err(|e| JournalError::io(&broken, e))?;
    kept.write_all(&bytes[start..])
        .and_then(|()| kept.sync_all())
        .map_err(|e| JournalError::io(&broken, e))?;
    let file = OpenOptions::new().write(true).open(journal).map_err(|e| JournalError::io(journal, e))?;
    file.set_len(torn.offset).and_then(|()| file.sync_all()).map_err(|e| JournalError::io(journal, e))?;
    crate::fsutil::sync_dir(journal.parent().unwrap_or(Path::new(".")))
        .map_err(|e| JournalError::io(journal, e))?;
    Ok(BROKEN_FILE.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::{RunInterrupted, encode};
    use super::*;

    fn journal(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = ZERO_SUM.to_string();
        for seq in 1..=n {
            let e = Event::RunInterrupted(RunInterrupted { signal: format!("SIG{seq}"), cancelled_by: None });
            let (line, sum) = encode(seq, "2026-01-01T00:00:00.000Z", &e, &e.data_json(), &prev);
            out.extend_from_slice(&line);
            prev = sum;
        }
        out
    }

    fn scan_ok(bytes: &[u8]) -> Scan {
        scan_bytes(Path::new("j"), bytes, 0).expect("scan")
    }

    #[test]
    fn intact_journal_reads_fully() {
        let bytes = journal(5);
        let s = scan_ok(&bytes);
        assert_eq!((s.last_seq, s.records.len(), s.valid_len), (5, 5, bytes.len() as u64));
        assert!(s.torn.is_none());
        let s = scan_bytes(Path::new("j"), &bytes, 3).expect("scan");
        assert_eq!(s.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn every_cut_of_the_last_line_is_a_torn_tail() {
        let full = journal(4);
        let keep = journal(3).len();
        for cut in keep..full.len() {
            let s = scan_ok(&full[..cut]);
            assert_eq!(s.last_seq, 3, "cut at {cut}");
            assert_eq!(s.valid_len, keep as u64);
            assert_eq!(s.torn.is_some(), cut > keep, "cut at {cut}");
        }
    }

    #[test]
    fn garbage_after_the_end_is_a_torn_tail() {
        let mut bytes = journal(3);
        let len = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 100]);
        assert_eq!(scan_ok(&bytes).valid_len, len);
        bytes.extend_from_slice(b"\nxx\n{\"seq\":4}\n");
        assert_eq!(scan_ok(&bytes).torn.expect("torn").line, 4);
    }

    #[test]
    fn a_changed_middle_line_is_corruption_with_its_line_number() {
        let mut bytes = journal(4);
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        let pos = text.find("SIG2").expect("present");
        bytes[pos + 3] = b'9';
        let err = scan_bytes(Path::new("j"), &bytes, 0).expect_err("corrupt");
        assert!(matches!(err, JournalError::Corrupt { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("checksum mismatch"));
    }

    #[test]
    fn a_removed_or_duplicated_line_breaks_the_sequence() {
        let bytes = journal(3);
        let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
        let dropped = [lines[0], lines[2]].concat();
        let err = scan_bytes(Path::new("j"), &dropped, 0).expect_err("corrupt");
        assert!(matches!(err, JournalError::Corrupt { line: 2, .. }), "{err}");
        let doubled = [lines[0], lines[1], lines[1]].concat();
        assert!(scan_bytes(Path::new("j"), &doubled, 0).is_err());
    }

    #[test]
    fn a_bad_checksum_on_the_last_line_is_torn() {
        let mut bytes = journal(3);
        let n = bytes.len();
        bytes[n - 5] = if bytes[n - 5] == b'a' { b'b' } else { b'a' };
        let s = scan_ok(&bytes);
        assert_eq!(s.last_seq, 2);
        assert_eq!(s.torn.expect("torn").reason, "checksum mismatch");
    }
}

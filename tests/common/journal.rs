//! Journal helpers shared by the journal-fault and property tests.

use std::ops::Range;
use std::path::Path;

use runner::journal::{Event, JournalWriter, Record};

/// Writes `events` through the real writer, committing them in batches of the given
/// sizes (cycled), and returns the committed records.
pub fn write_journal(path: &Path, events: &[Event], batches: &[usize]) -> Vec<Record> {
    let mut w = JournalWriter::create(path).expect("create journal");
    let mut out = Vec::new();
    let mut at = 0;
    let mut b = 0;
    while at < events.len() {
        let size = batches.get(b % batches.len().max(1)).copied().unwrap_or(1).max(1);
        for e in &events[at..(at + size).min(events.len())] {
            w.stage(e.clone());
        }
        out.extend(w.commit().expect("commit"));
        at += size;
        b += 1;
    }
    assert_eq!(w.len(), std::fs::metadata(path).expect("stat").len());
    out
}

/// Byte ranges of the lines of a journal (with their newlines; a last line without one
/// too).
pub fn line_ranges(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < bytes.len() {
        out.push(start..bytes.len());
    }
    out
}

/// Whether a line (without its newline) ends in `,"sum":"<32 hex>"}` holding the blake3
/// of everything before it, as the writer makes every line.
pub fn line_checksum_ok(body: &[u8]) -> bool {
    const SUM_PART: usize = 8 + 32 + 2; // `,"sum":"` + 32 hex digits + `"}`
    if body.len() < SUM_PART || !body.ends_with(b"\"}") {
        return false;
    }
    let covered = &body[..body.len() - SUM_PART];
    if &body[body.len() - SUM_PART..body.len() - 34] != b",\"sum\":\"" {
        return false;
    }
    blake3::hash(covered).to_hex().as_bytes()[..32] == body[body.len() - 34..body.len() - 2]
}

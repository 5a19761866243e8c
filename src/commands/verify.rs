//! `runner verify`: check a run's files against each other without changing them.

use serde_json::json;

use crate::cli::{Global, VerifyArgs};
use crate::error::Error;
use crate::exit::ExitCode;
use crate::journal::{self, JOURNAL_FILE, JournalError};
use crate::report::{note, print};
use crate::state::{RunState, SNAPSHOT_FILE, load_snapshot};
use crate::store::{FLOW_COPY, LoadError, load_run};

pub fn verify(g: &Global, args: VerifyArgs) -> Result<ExitCode, Error> {
    let dir = g.runs().existing(&args.run_id)?;
    let path = dir.join(JOURNAL_FILE);
    let mut problems: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    let loaded = match load_run(&dir, false, 0) {
        Ok(l) => Some(l),
        Err(
            e @ (LoadError::Journal(JournalError::Corrupt { .. })
            | LoadError::Fold { .. }
            | LoadError::WrongDirectory { .. }),
        ) => {
            problems.push(e.to_string());
            None
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(l) = &loaded {
        notes.push(format!(
            "{}: {} events; every checksum and the chain are intact",
            path.display(),
            l.last_seq
        ));
        if let Some(t) = &l.torn {
            warnings.push(format!(
                "{}: ends in {} bytes that are not a complete line (line {}: {}): a crash mid-write, \
                 or a runner writing right now. `runner resume` cuts them and keeps them in {}",
                path.display(),
                t.len,
                t.line,
                t.reason,
                journal::BROKEN_FILE
            ));
        }
        let copy = dir.join(FLOW_COPY);
        match std::fs::read(&copy) {
            Ok(bytes) if blake3::hash(&bytes).to_hex().as_str() == l.state.flow_hash => {
                notes.push(format!("{}: matches the flow the run started with", copy.display()));
            }
            _ => problems.push(format!("{}: missing or edited since the run started", copy.display())),
        }
        check_snapshot(&dir, l, &mut notes, &mut warnings, &mut problems);
    }

    // The verdict is the exit code: a closed stdout (`| head`) must not turn it into 0.
    if g.json {
        let v = json!({"run_id": args.run_id, "ok": problems.is_empty(), "problems": problems, "warnings": warnings});
        let _ = print(&v.to_string());
    } else {
        if !g.quiet {
            for n in &notes {
                let _ = print(&format!("ok: {n}"));
            }
        }
        for w in &warnings {
            note(&format!("warning: {w}"));
        }
        for p in &problems {
            note(&format!("damaged: {p}"));
        }
    }
    Ok(if problems.is_empty() { ExitCode::Success } else { ExitCode::Failed })
}

fn check_snapshot(
    dir: &std::path::Path,
    l: &crate::store::Loaded,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
    problems: &mut Vec<String>,
) {
    let path = dir.join(SNAPSHOT_FILE);
    let snap = match load_snapshot(dir) {
        Ok(Some(s)) => s,
        Ok(None) => return notes.push(format!("{}: none (resume folds the whole journal)", path.display())),
        Err(why) => return warnings.push(format!("{why}; resume ignores it")),
    };
    let boundary = std::fs::read(dir.join(JOURNAL_FILE))
        .ok()
        .and_then(|b| journal::scan_bytes_with(&dir.join(JOURNAL_FILE), &b, u64::MAX, snap.seq).ok())
        .and_then(|s| s.boundary_sum);
    if snap.seq > l.last_seq || boundary.as_deref() != Some(snap.sum.as_str()) {
        return warnings.push(format!(
            "{}: covers event {} but does not match the journal; resume ignores it",
            path.display(),
            snap.seq
        ));
    }
    let upto = usize::try_from(snap.seq).unwrap_or(usize::MAX).min(l.records.len());
    match RunState::fold_all(&l.records[..upto]) {
        Ok(folded) if folded == snap.state => {
            notes.push(format!(
                "{}: equals the fold of the journal up to event {}",
                path.display(),
                snap.seq
            ));
        }
        _ => problems.push(format!(
            "{}: differs from the fold of the journal up to event {}",
            path.display(),
            snap.seq
        )),
    }
}

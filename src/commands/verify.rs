//! `runner verify`: check a run's files against each other without changing them.

use serde_json::json;

use crate::cli::{Global, VerifyArgs};
use crate::error::Error;
use crate::exit::ExitCode;
use crate::journal::{self, JOURNAL_FILE, JournalError};
use crate::receipt;
use crate::report::{note, print};
use crate::state::{FoldError, RunState, SNAPSHOT_FILE, load_snapshot};
use crate::store::{FLOW_COPY, LoadError, SnapshotUse, attempt_dir, load_run};

pub fn verify(g: &Global, args: VerifyArgs) -> Result<ExitCode, Error> {
    let id = args.run.resolve(g)?;
    let dir = g.runs().existing(&id)?;
    let path = dir.join(JOURNAL_FILE);
    let mut problems: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // Loaded the way resume loads it (snapshot included), so verify and resume trust the
    // same snapshot by the same rule; every record comes back to fold from scratch too.
    let loaded = match load_run(&dir, true, 0) {
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
        // One fold of the whole journal, from scratch: it must not contradict itself, and
        // where resume trusts the snapshot it must equal the fold at that event.
        let at = match l.snapshot {
            SnapshotUse::Used(seq) => seq,
            _ => 0,
        };
        match fold_keeping(&l.records, at) {
            Ok(kept) => check_snapshot(&dir, l, kept, &mut notes, &mut warnings, &mut problems),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
        check_receipts(&dir, &l.state, &mut notes, &mut warnings);
    }

    // The verdict is the exit code: a closed stdout (`| head`) must not turn it into 0.
    if g.json {
        let v = json!({"run_id": id, "ok": problems.is_empty(), "problems": problems, "warnings": warnings});
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

/// Every attempt the journal gives a receipt has its `receipt.json`, with the same key and
/// result. A missing one is a warning, not damage: receipts are not fsync'd, so a power
/// cut may lose one, which costs a cache hit and nothing else.
fn check_receipts(
    dir: &std::path::Path,
    state: &RunState,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let mut checked = 0;
    for step in &state.steps {
        for a in &step.attempts {
            let Some(want) = &a.receipt else { continue };
            let path = attempt_dir(dir, &step.id, a.visit, a.attempt).join(receipt::RECEIPT_FILE);
            checked += 1;
            match receipt::read(&path) {
                Ok(r) if r.key == want.key && r.result == want.result => {}
                Ok(_) => warnings.push(format!(
                    "{}: its key or result differs from the journal's; the cache will not use it",
                    path.display()
                )),
                Err(e) => warnings.push(format!("{e}; the cache will not use it")),
            }
        }
    }
    if checked > 0 {
        notes.push(format!("{checked} receipt(s) checked against the journal"));
    }
}

/// Folds every record; returns the state as it was after event `at` (if reached).
fn fold_keeping(records: &[crate::journal::Record], at: u64) -> Result<Option<RunState>, FoldError> {
    let Some((first, rest)) = records.split_first() else { return Ok(None) };
    let mut state = RunState::from_first(first)?;
    let mut kept = (at == first.seq).then(|| state.clone());
    for r in rest {
        state.apply(r)?;
        if r.seq == at {
            kept = Some(state.clone());
        }
    }
    Ok(kept)
}

fn check_snapshot(
    dir: &std::path::Path,
    l: &crate::store::Loaded,
    folded: Option<RunState>,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
    problems: &mut Vec<String>,
) {
    let path = dir.join(SNAPSHOT_FILE);
    match &l.snapshot {
        SnapshotUse::Absent => {
            return notes.push(format!("{}: none (resume folds the whole journal)", path.display()));
        }
        SnapshotUse::Ignored(why) => return warnings.push(format!("{why}; resume ignores it")),
        SnapshotUse::Used(_) => {}
    }
    // Read again for its state (the load folded it away); a live runner may have replaced
    // it meanwhile, and a newer snapshot is not the one the fold was kept for.
    let snap = match load_snapshot(dir) {
        Ok(Some(s)) if Some(s.seq) == folded.as_ref().map(|f| f.seq) => s,
        _ => {
            return warnings
                .push(format!("{}: replaced while it was checked (a runner is live)", path.display()));
        }
    };
    match folded {
        Some(folded) if folded == snap.state => {
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

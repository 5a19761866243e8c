//! Receipts and the cache, from the session's side: a step's definition and key before it
//! starts, a matching receipt to reuse instead of running it, and the receipt of every
//! attempt that finished, written before the event that acknowledges it.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Session, SessionError};
use crate::fileset;
use crate::journal::{JournalError, ReceiptRef};
use crate::projection::{LIVE_BUSY_TIMEOUT, Projection};
use crate::receipt::{self, Definition, Produced, Receipt, Source};
use crate::state::StepStatus;
use crate::store::{RunsDir, attempt_dir};

/// At most this many receipts with the same key are looked at (newest first).
const CANDIDATES: usize = 20;

/// What the cache said about a key.
pub(super) enum Lookup {
    /// This receipt (at `from`) matches and its output files are intact.
    Hit(Source, Box<Receipt>),
    /// Why not: `miss` or `stale: …`.
    Miss(String),
}

impl Session {
    /// Step `idx`'s definition as it would run now, with its input files hashed. `Err` is
    /// a message for a failed attempt (a missing or unreadable input).
    pub(super) fn definition(&self, idx: usize) -> Result<Definition, String> {
        let step = &self.flow.steps[idx];
        let local = |id: &str| id.strip_prefix(step.scope.as_str()).unwrap_or(id).to_string();
        let mut env = self.flow.env.clone();
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let frame = step.frame.and_then(|f| self.state.frames.get(f as usize - 1));
        let params = frame.map_or(&self.state.params, |f| &f.call.params).clone();
        let (declared_inputs, declared_outputs) =
            step.files.as_deref().map(|f| (f.inputs.clone(), f.outputs.clone())).unwrap_or_default();
        let inputs = if declared_inputs.is_empty() {
            Vec::new()
        } else {
            let workdir = Path::new(&self.state.workdir);
            let (files, missing) =
                fileset::digest(workdir, &declared_inputs).map_err(|e| format!("input {e}"))?;
            // A glob that matches nothing is an empty set; a named file that is not there is
            // a mistake the step would trip over anyway.
            if let Some(m) = missing.iter().find(|m| !m.contains(['*', '?', '[', '{'])) {
                return Err(format!("input `{m}` does not exist (in {})", workdir.display()));
            }
            files
        };
        // What the step sees of others: its needs, and the other steps on a loop with it.
        let mates = step.loop_mates.iter().filter(|&&m| m != idx && !step.needs.contains(&m));
        let upstream = step
            .needs
            .iter()
            .chain(mates)
            .map(|&n| {
                let st = &self.state.steps[n];
                let result = match (st.status, st.success()) {
                    (StepStatus::Succeeded, Some(a)) => {
                        match a.receipt.as_ref().and_then(|r| r.result.clone()) {
                            Some(r) => r,
                            // A call has no receipt of its own: its outputs stand for it.
                            None => format!(
                                "outputs:{}",
                                blake3::hash(
                                    serde_json::to_string(&a.outputs).unwrap_or_default().as_bytes()
                                )
                            ),
                        }
                    }
                    // Skipped, or not reached yet (a loop mate before its first visit).
                    (status, _) => status.as_str().to_string(),
                };
                (local(&st.id), result)
            })
            .collect();
        Ok(Definition {
            runner_version: env!("CARGO_PKG_VERSION").to_string(),
            step: local(&step.id),
            command: step.run.clone(),
            env,
            params,
            declared_inputs,
            declared_outputs,
            inputs,
            upstream,
            secrets: self.secret_names_of(idx),
            visit: self.state.steps[idx].next_visit(),
            gate: step.gate.as_deref().map(|g| receipt::GateText {
                pass: g.pass.source().to_string(),
                warn: g.warn.as_ref().map(|w| w.source().to_string()),
            }),
            trigger_file: self.state.trigger_file.as_ref().map(|p| {
                self.trigger_digest
                    .get_or_init(|| {
                        let (size, blake3) = fileset::hash_file(&Path::new(&self.state.workdir).join(p))
                            .unwrap_or_else(|_| (0, "missing".to_string()));
                        fileset::FileDigest { path: p.clone(), size, blake3 }
                    })
                    .clone()
            }),
        })
    }

    /// Looks for a successful receipt with `key` under the runs directory whose declared
    /// output files still hold what it recorded.
    pub(super) fn lookup(&mut self, idx: usize, key: &str) -> Lookup {
        let runs_root = self.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        // The step's own earlier visits first, from the state: whether they count must not
        // depend on how far the projection thread has got.
        let st = &self.state.steps[idx];
        let mut rows: Vec<Source> = st
            .attempts
            .iter()
            .rev()
            .filter(|a| a.status.is_success() && a.receipt.as_ref().is_some_and(|r| r.key == key))
            .map(|a| Source {
                run_id: self.state.run_id.clone(),
                step: st.id.clone(),
                visit: a.visit,
                attempt: a.attempt,
            })
            .collect();
        if self.cache_index.is_none() {
            match open_index(&RunsDir::new(runs_root.clone())) {
                Ok(p) => self.cache_index = Some(p),
                Err(e) if rows.is_empty() => {
                    return Lookup::Miss(format!("miss: the cache index is unavailable ({e})"));
                }
                Err(_) => {}
            }
        }
        if let Some(index) = &self.cache_index {
            match index.receipts_with_key(key, CANDIDATES) {
                Ok(found) => rows
                    .extend(found.into_iter().filter(|s| s.run_id != self.state.run_id || s.step != st.id)),
                Err(e) if rows.is_empty() => {
                    return Lookup::Miss(format!("miss: the cache index is unavailable ({e})"));
                }
                Err(_) => {}
            }
        }
        let workdir = Path::new(&self.state.workdir);
        let mut first_stale = None;
        for from in rows {
            let path = runs_root.join(from.receipt_path());
            let Ok(r) = receipt::read(&path) else { continue };
            let (Some(_), Some(produced)) = (&r.result, &r.produced) else { continue };
            if r.key != key {
                continue;
            }
            match changed_output(workdir, produced) {
                None => return Lookup::Hit(from, Box::new(r)),
                Some(why) => {
                    let maker = r.cached_from.as_ref().map_or(&from.run_id, |c| &c.run_id);
                    first_stale.get_or_insert(format!("stale: {why} since run {maker} made it"));
                }
            }
        }
        Lookup::Miss(first_stale.unwrap_or_else(|| "miss".into()))
    }

    /// What a successful attempt of step `idx` produced: its declared output files (each
    /// must exist) and its values. `Err` names the missing file.
    pub(super) fn produced(
        &self,
        idx: usize,
        values: &BTreeMap<String, String>,
        handoff: &Option<crate::journal::Handoff>,
    ) -> Result<Produced, String> {
        let declared =
            self.flow.steps[idx].files.as_deref().map(|f| f.outputs.as_slice()).unwrap_or_default();
        let files = if declared.is_empty() {
            Vec::new()
        } else {
            let (files, missing) = fileset::digest(Path::new(&self.state.workdir), declared)
                .map_err(|e| format!("output {e}"))?;
            if let Some(m) = missing.first() {
                return Err(format!("declared output `{m}` was not produced"));
            }
            files
        };
        Ok(Produced { files, values: values.clone(), handoff: handoff.clone() })
    }

    /// Writes the receipt of a finished attempt and returns its hashes for the event.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_receipt(
        &self,
        idx: usize,
        visit: u32,
        attempt: u32,
        definition: Definition,
        key: String,
        produced: Option<Produced>,
        cached_from: Option<Source>,
        exit_code: Option<i32>,
        duration_ms: u64,
    ) -> Result<ReceiptRef, SessionError> {
        let step_id = self.flow.steps[idx].id.clone();
        let result = produced.as_ref().map(|p| receipt::result_of(&key, p));
        let status = match (&cached_from, &result) {
            (Some(_), _) => "cached",
            (None, Some(_)) => "succeeded",
            (None, None) => "failed",
        };
        let started_at = self.state.steps[idx]
            .attempts
            .last()
            .filter(|a| (a.visit, a.attempt) == (visit, attempt))
            .and_then(|a| a.started_at.clone());
        let r = Receipt {
            receipt_format: receipt::RECEIPT_FORMAT,
            run_id: self.state.run_id.clone(),
            flow: self.state.flow.clone(),
            step: step_id.clone(),
            visit,
            attempt,
            status: status.into(),
            key: key.clone(),
            result: result.clone(),
            definition,
            produced,
            cached_from,
            exit_code,
            duration_ms,
            started_at,
            finished_at: crate::journal::now_ts(),
        };
        let dir = attempt_dir(&self.dir, &step_id, visit, attempt);
        receipt::write(&dir, &r).map_err(|source| SessionError::Commit {
            run_id: self.state.run_id.clone(),
            source: JournalError::io(&dir.join(receipt::RECEIPT_FILE), source),
        })?;
        Ok(ReceiptRef { key, result })
    }
}

/// The projection, caught up with every run, as the cache's index.
fn open_index(runs: &RunsDir) -> Result<Projection, String> {
    // Runs whose runner died before updating the projection still count.
    let mut p = Projection::open_with(runs, LIVE_BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    p.catch_up().map_err(|e| e.to_string())?;
    Ok(p)
}

/// The first declared output that is gone or holds other bytes than the receipt says.
fn changed_output(workdir: &Path, produced: &Produced) -> Option<String> {
    for f in &produced.files {
        match fileset::hash_file(&workdir.join(&f.path)) {
            Ok((size, hash)) if size == f.size && hash == f.blake3 => {}
            Ok(_) => return Some(format!("{} changed", f.path)),
            Err(_) => return Some(format!("{} is gone", f.path)),
        }
    }
    None
}

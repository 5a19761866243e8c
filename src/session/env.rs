//! What an attempt's process sees: the environment the runner gives each step.
//!
//! Everything in it comes from the flow and the journal (never from timing or the file
//! system), so the same run gives the same step the same environment: later receipts can
//! hash it. Outputs reach a step from the steps it depends on, directly or not, and from
//! the steps that share a loop with it — never from a step on a parallel branch, whose
//! finishing first or not would be an accident of timing.

use std::collections::BTreeSet;
use std::path::Path;
use std::rc::Rc;

use super::Session;
use crate::flow::param_env_name;
use crate::store::attempt_dir;

/// Files in an attempt's directory that the step writes for its successors.
pub const OUTPUT_FILE: &str = "outputs.env";
pub const HANDOFF_FILE: &str = "handoff.md";
pub const HANDOFF_META_FILE: &str = "handoff.json";

/// For each step, the steps upstream of it that have outputs, while `with_outputs` stays
/// as it is (cleared whenever it changes). A long chain is walked once, not once per step.
#[derive(Default)]
pub(super) struct UpstreamOutputs {
    cache: Vec<Option<Rc<Vec<usize>>>>,
}

impl UpstreamOutputs {
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }
}

impl Session {
    /// The environment of attempt `attempt` of step `idx`'s visit `visit`, whose files live in `dir`.
    pub(super) fn step_env(
        &mut self,
        idx: usize,
        visit: u32,
        attempt: u32,
        dir: &Path,
    ) -> Vec<(String, String)> {
        let upstream = self.upstream_outputs(idx);
        let step = &self.flow.steps[idx];
        let mut env: Vec<(String, String)> = Vec::new();
        env.extend(self.flow.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        // A called flow's steps see its parameters (from `with`), not the caller's.
        let frame = step.frame.and_then(|f| self.state.frames.get(f as usize - 1));
        let params = frame.map_or(&self.state.params, |f| &f.call.params);
        env.extend(params.iter().map(|(k, v)| (param_env_name(k), v.clone())));
        env.push(("RUNNER_RUN_ID".into(), self.state.run_id.clone()));
        env.push(("RUNNER_STEP_ID".into(), step.id.clone()));
        env.push(("RUNNER_VISIT".into(), visit.to_string()));
        env.push(("RUNNER_ATTEMPT".into(), attempt.to_string()));
        env.push(("RUNNER_RUN_DIR".into(), self.dir.to_string_lossy().into_owned()));
        // From the journal, not the command line: a resume sees the file the run began with.
        if let Some(file) = &self.state.trigger_file {
            env.push(("RUNNER_TRIGGER_FILE".into(), file.clone()));
        }
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        env.push(("RUNNER_OUTPUT".into(), path(OUTPUT_FILE)));
        env.push(("RUNNER_HANDOFF".into(), path(HANDOFF_FILE)));
        env.push(("RUNNER_HANDOFF_META".into(), path(HANDOFF_META_FILE)));
        // Outputs by the ids the step's own flow uses (inside a called flow: its ids).
        let loop_mates = step.loop_mates.iter().filter(|i| self.with_outputs.contains(i));
        let sources: BTreeSet<usize> = upstream.iter().copied().chain(loop_mates.copied()).collect();
        for i in sources.into_iter().filter(|&i| i != idx) {
            let id = &self.state.steps[i].id;
            let local = id.strip_prefix(step.scope.as_str()).unwrap_or(id);
            for (key, value) in self.state.steps[i].outputs().into_iter().flatten() {
                env.push((output_env_name(local, key), value.clone()));
            }
        }
        // Handoff documents of the steps this one needs, in `needs` order.
        let handoffs: Vec<String> = step
            .needs
            .iter()
            .filter_map(|&n| {
                let a = self.state.steps[n].success()?;
                // Metadata without a document is a handoff too, but there is no document to read.
                a.handoff.as_ref().filter(|h| !h.content_md.is_empty())?;
                let file =
                    attempt_dir(&self.dir, &self.state.steps[n].id, a.visit, a.attempt).join(HANDOFF_FILE);
                Some(file.to_string_lossy().into_owned())
            })
            .collect();
        env.push(("RUNNER_HANDOFF_IN".into(), handoffs.join("\n")));
        env
    }

    /// The steps upstream of `idx` (through `needs`, transitively) that have outputs.
    fn upstream_outputs(&mut self, idx: usize) -> Rc<Vec<usize>> {
        if self.with_outputs.is_empty() {
            return Rc::default();
        }
        let cache = &mut self.upstream.cache;
        cache.resize(self.flow.steps.len(), None);
        // Post-order over needs without recursion: a 100,000-step chain is deep.
        let mut stack = vec![(idx, false)];
        while let Some((s, expanded)) = stack.pop() {
            if cache[s].is_some() {
                continue;
            }
            let needs = &self.flow.steps[s].needs;
            if !expanded {
                stack.push((s, true));
                stack.extend(needs.iter().filter(|&&n| cache[n].is_none()).map(|&n| (n, false)));
                continue;
            }
            let has = |n: usize| self.with_outputs.contains(&n);
            // One need and nothing new: share its set rather than copy it.
            let merged = match needs.as_slice() {
                [n] if !has(*n) => cache[*n].clone().unwrap_or_default(),
                _ => {
                    let mut set = BTreeSet::new();
                    for &n in needs {
                        set.extend(cache[n].iter().flat_map(|c| c.iter().copied()));
                        if has(n) {
                            set.insert(n);
                        }
                    }
                    Rc::new(set.into_iter().collect())
                }
            };
            cache[s] = Some(merged);
        }
        cache[idx].clone().unwrap_or_default()
    }
}

impl Session {
    /// The secret values this session gives steps and masks in what they write.
    pub(super) fn use_secrets(&mut self, secrets: crate::secrets::Secrets) {
        self.redactor = secrets.redactor().map(std::sync::Arc::new);
        self.secrets = secrets;
    }

    /// The secrets step `idx` gets: the flow's and its own (a called flow's steps carry
    /// theirs). One that a called flow declares is looked up now, and masked from now on.
    pub(super) fn secrets_for(&mut self, idx: usize) -> Result<Vec<(String, String)>, String> {
        let names = self.secret_names_of(idx);
        if names.iter().any(|n| self.secrets.get(n).is_none()) {
            self.secrets.resolve(&names).map_err(|e| format!("cannot start the command: {e}"))?;
            self.redactor = self.secrets.redactor().map(std::sync::Arc::new);
        }
        Ok(names.iter().filter_map(|n| self.secrets.get(n).map(|v| (n.clone(), v.to_string()))).collect())
    }
}

impl Session {
    /// The names of the secrets step `idx` gets, sorted: the flow's and its own (a called
    /// flow's steps carry their flow's).
    pub(super) fn secret_names_of(&self, idx: usize) -> Vec<String> {
        let step = &self.flow.steps[idx];
        let mut names: Vec<String> = if step.frame.is_some() {
            step.secrets.clone()
        } else {
            self.flow.secrets.iter().chain(&step.secrets).cloned().collect()
        };
        names.sort();
        names.dedup();
        names
    }
}

/// `RUNNER_OUTPUT_<STEP>_<KEY>`, upper-cased, with anything not alphanumeric as `_`.
pub fn output_env_name(step: &str, key: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
    };
    format!("RUNNER_OUTPUT_{}_{}", clean(step), clean(key))
}

//! Routing: after a router's successful visit, choose where the run goes, once.
//!
//! The rules are evaluated against the folded state, the choice is journaled as one
//! `RoutingDecided` event, and from then on only that event counts: a resumed run reads
//! the decision, it never evaluates the rules again. A backward route starts a new visit
//! of its target and makes everything downstream of it pending again; it waits while any
//! of those steps is still running, so no attempt is ever abandoned mid-flight.

use super::{Session, SessionError};
use crate::journal::{Event, INLINE_CANDIDATES, RoutingDecided, RoutingSource};
use crate::scheduler;
use crate::state::StepStatus;
use crate::store::{ROUTING_DIR, visit_label};

impl Session {
    /// Decides every router that is waiting for it (and can decide now).
    pub(super) fn route_pending(&mut self) -> Result<(), SessionError> {
        let waiting: Vec<usize> = self.unrouted.iter().copied().collect();
        for i in waiting {
            let st = &self.state.steps[i];
            let waits =
                (st.status == StepStatus::Succeeded && st.route().is_none()) || st.awaits_rejection_route();
            if !waits {
                self.unrouted.remove(&i);
                continue;
            }
            if self.route(i)? {
                self.unrouted.remove(&i);
            }
        }
        Ok(())
    }

    /// Journals router `i`'s decision; `false` if it must wait for running steps.
    ///
    /// After a rejection (attempt 0: nothing ran) only backward rules whose `if` holds are
    /// tried, to send the work back; when none does, that is journaled too and the step
    /// stays rejected.
    pub(super) fn route(&mut self, i: usize) -> Result<bool, SessionError> {
        let step = &self.flow.steps[i];
        let st = &self.state.steps[i];
        let rejected = st.status == StepStatus::Rejected;
        let (visit, attempt) = match st.last_attempt() {
            _ if rejected => (st.visit, 0),
            Some(last) => (last.visit, last.attempt),
            None => return Ok(true),
        };
        let chosen = step.next.iter().enumerate().find_map(|(k, rule)| match &rule.cond {
            _ if rejected && !rule.backward => None,
            None if rejected => None,
            None => Some((k, rule, RoutingSource::Default)),
            Some(c) if scheduler::holds(&self.flow, c, &self.state, i) => {
                Some((k, rule, RoutingSource::Rule))
            }
            Some(_) => None,
        });
        let mut decision = RoutingDecided {
            step: step.id.clone(),
            visit,
            attempt,
            routing_source: RoutingSource::Fallback,
            rule: None,
            chosen: None,
            candidate_count: 0,
            candidates: None,
            candidate_set_path: None,
            reset: Vec::new(),
            failure: None,
        };
        match chosen {
            None if rejected => {
                decision.failure = Some(format!(
                    "`{}` was rejected, and no rule whose `if` holds sends it back",
                    visit_label(&step.id, visit)
                ));
            }
            None => {
                decision.failure = Some(format!(
                    "no route from `{}`: no rule's `if` held and there is no default rule (one without `if`)",
                    visit_label(&step.id, visit)
                ));
            }
            Some((k, rule, source)) => {
                decision.routing_source = source;
                decision.rule = Some(k);
                decision.chosen = Some(self.flow.steps[rule.goto].id.clone());
                if rule.backward {
                    let busy = rule.reset.iter().any(|&s| {
                        matches!(self.state.steps[s].status, StepStatus::Running | StepStatus::Retrying)
                    });
                    if busy {
                        return Ok(false);
                    }
                    let over = rule
                        .cycle
                        .iter()
                        .find(|&&s| self.state.steps[s].visit >= self.flow.steps[s].visit_limit());
                    match over {
                        Some(&s) => {
                            let mut names: Vec<&str> =
                                rule.cycle.iter().map(|&c| self.flow.steps[c].id.as_str()).collect();
                            names.push(&self.flow.steps[rule.goto].id);
                            decision.failure = Some(format!(
                                "loop {} ran out of visits: `{}` would start visit {} but has max_visits = {}",
                                names.join(" -> "),
                                self.flow.steps[s].id,
                                self.state.steps[s].visit + 1,
                                self.flow.steps[s].visit_limit()
                            ));
                        }
                        None => {
                            decision.reset =
                                rule.reset.iter().map(|&s| self.flow.steps[s].id.clone()).collect();
                        }
                    }
                }
            }
        }
        let candidates: Vec<String> =
            self.flow.candidates(i).into_iter().map(|c| self.flow.steps[c].id.clone()).collect();
        decision.candidate_count = candidates.len();
        if candidates.len() <= INLINE_CANDIDATES {
            decision.candidates = Some(candidates);
        } else {
            decision.candidate_set_path = Some(self.write_candidates(&candidates)?);
        }
        self.record(Event::RoutingDecided(decision))?;
        Ok(true)
    }

    /// Writes a large candidate set to `routing/<seq>.json`, durably, before the event that
    /// names it is staged (the name is the event's sequence number, so it is unique).
    fn write_candidates(&self, candidates: &[String]) -> Result<String, SessionError> {
        let rel = format!("{ROUTING_DIR}/{}.json", self.journal.next_seq());
        let path = self.dir.join(&rel);
        let mut json = serde_json::to_vec_pretty(candidates).unwrap_or_default();
        json.push(b'\n');
        crate::fsutil::write_durable(&path, "routing", &json).map_err(|source| SessionError::Commit {
            run_id: self.state.run_id.clone(),
            source: crate::journal::JournalError::io(&path, source),
        })?;
        Ok(rel)
    }
}

//! Routing rules: where a router may go, and which loops that creates.
//!
//! A rule leads *forward* to a step that needs the router, or *backward* to the router or
//! one of its ancestors. A backward rule starts a new visit of its target and makes every
//! step downstream of the target pending again; the steps on the loop must bound their
//! visits, which is checked here, before anything runs.

use std::collections::VecDeque;

use toml::Spanned;

use super::raw::RawRule;
use super::{FlowError, FlowErrorKind, Rule, Scope, Step, hint};

pub(super) fn build(
    scope: &Scope,
    steps: &mut [Step],
    rules: Vec<Vec<Spanned<RawRule>>>,
) -> Result<(), FlowError> {
    let order = topological(steps);
    for (i, raw_rules) in rules.into_iter().enumerate() {
        let count = raw_rules.len();
        if count == 0 {
            continue;
        }
        // The router and every step it depends on, directly or not.
        let mut above = vec![false; steps.len()];
        for s in closure(steps, i, |s| &s.needs) {
            above[s] = true;
        }
        let mut built = Vec::with_capacity(count);
        for (k, raw) in raw_rules.into_iter().enumerate() {
            let at = raw.span().start;
            let raw = raw.into_inner();
            if raw.cond.is_none() && k + 1 < count {
                return Err(scope
                    .src
                    .error_at(at, FlowErrorKind::DefaultNotLast { step: steps[i].id.clone() }));
            }
            let goto_at = raw.goto.span().start;
            let Some(&(goto, _)) = scope.index.get(raw.goto.get_ref()) else {
                let goto = raw.goto.into_inner();
                let hint = hint(&goto, scope.index.keys());
                return Err(scope.src.error_at(
                    goto_at,
                    FlowErrorKind::UnknownGoto { step: steps[i].id.clone(), goto, hint },
                ));
            };
            let cond = match &raw.cond {
                Some(c) => Some(scope.condition(&format!("next[{k}].if"), c)?),
                None => None,
            };
            let forward = steps[i].dependents.contains(&goto);
            let backward = above[goto];
            if !forward && !backward {
                let dependents =
                    steps[i].dependents.iter().map(|&d| format!("`{}`", steps[d].id)).collect::<Vec<_>>();
                let dependents =
                    if dependents.is_empty() { "none".to_string() } else { dependents.join(", ") };
                return Err(scope.src.error_at(
                    goto_at,
                    FlowErrorKind::BadGoto {
                        step: steps[i].id.clone(),
                        goto: steps[goto].id.clone(),
                        dependents,
                    },
                ));
            }
            let (reset, cycle) = if backward {
                let mut reset = closure(steps, goto, |s| &s.dependents);
                reset.sort_unstable();
                let mut cycle: Vec<usize> = reset.iter().copied().filter(|&s| above[s]).collect();
                cycle.sort_by_key(|&s| order[s]);
                (reset, cycle)
            } else {
                (Vec::new(), Vec::new())
            };
            for &s in &cycle {
                if steps[s].max_visits.is_none() {
                    let mut names: Vec<String> = cycle.iter().map(|&c| steps[c].id.clone()).collect();
                    names.push(steps[goto].id.clone());
                    let id_at = scope.index.get(&steps[s].id).map_or(0, |&(_, at)| at);
                    return Err(scope.src.error_at(
                        id_at,
                        FlowErrorKind::MissingMaxVisits { step: steps[s].id.clone(), cycle: names },
                    ));
                }
            }
            built.push(Rule { cond, goto, backward, reset, cycle });
        }
        steps[i].next = built;
    }
    for i in 0..steps.len() {
        for k in 0..steps[i].next.len() {
            for c in 0..steps[i].next[k].cycle.len() {
                let s = steps[i].next[k].cycle[c];
                let mates = steps[i].next[k].cycle.clone();
                steps[s].loop_mates.extend(mates);
            }
        }
    }
    Ok(())
}

/// `from` and every step reached from it by following `next` (needs: upstream;
/// dependents: downstream), in the order found.
fn closure(steps: &[Step], from: usize, next: impl Fn(&Step) -> &Vec<usize>) -> Vec<usize> {
    let mut seen = vec![false; steps.len()];
    seen[from] = true;
    let mut out = vec![from];
    let mut queue = VecDeque::from([from]);
    while let Some(s) = queue.pop_front() {
        for &d in next(&steps[s]) {
            if !seen[d] {
                seen[d] = true;
                out.push(d);
                queue.push_back(d);
            }
        }
    }
    out
}

/// Each step's position in one execution order of the (acyclic) graph.
fn topological(steps: &[Step]) -> Vec<usize> {
    let mut unmet: Vec<usize> = steps.iter().map(|s| s.needs.len()).collect();
    let mut queue: VecDeque<usize> = (0..steps.len()).filter(|&i| unmet[i] == 0).collect();
    let mut order = vec![0; steps.len()];
    let mut n = 0;
    while let Some(s) = queue.pop_front() {
        order[s] = n;
        n += 1;
        for &d in &steps[s].dependents {
            unmet[d] -= 1;
            if unmet[d] == 0 {
                queue.push_back(d);
            }
        }
    }
    order
}

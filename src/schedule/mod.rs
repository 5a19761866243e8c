//! `runner schedule`: starting runs of flows at the times their `schedule` names.
//!
//! The pieces are pure where they can be: `cron` parses expressions and finds slots,
//! `plan` decides what to do with the slots that came due (catch-up after downtime),
//! `log` is the durable record of every decision (folded into the projection). The loop
//! that owns the clock, the child processes and the signals is `commands::schedule`.
//!
//! A slot's run id is `<flow>-<YYYYMMDDTHHMM>` (the slot's time in the scheduler's time
//! zone), so starting a slot is idempotent: `runner run --run-id` of an existing id resumes
//! it instead of starting a second run, whichever scheduler (or person) gets there first.

pub mod cron;
pub mod log;
pub mod plan;

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use jiff::tz::TimeZone;

pub use cron::{Cron, CronError};
pub use log::{Decision, Entry};
pub use plan::CatchUp;

use crate::flow::{Flow, FlowError};

/// A flow `runner schedule` will start runs of.
#[derive(Clone, Debug)]
pub struct Scheduled {
    pub name: String,
    pub path: PathBuf,
    pub cron: Cron,
}

/// What loading a directory of flows found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub flows: Vec<Scheduled>,
    /// Flows that did not load; the valid ones are scheduled anyway.
    pub invalid: Vec<FlowError>,
}

/// Every `*.toml` in `dir` with a `schedule`, in name order. Flows without one (sub-flows,
/// flows run by hand) are left alone.
pub fn load_dir(dir: &Path) -> std::io::Result<Loaded> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    paths.sort();
    let mut out = Loaded::default();
    for path in paths {
        match Flow::load(&path) {
            Ok(flow) => {
                if let Some(cron) = flow.schedule {
                    out.flows.push(Scheduled { name: flow.name, path, cron });
                }
            }
            Err(e) => out.invalid.push(e),
        }
    }
    Ok(out)
}

/// The run id of `flow`'s slot at `slot`: `nightly-20261204T0200`. A flow name with
/// characters a run id cannot hold has them replaced by `_`.
pub fn slot_run_id(flow: &str, slot: Timestamp, tz: &TimeZone) -> String {
    let name: String = flow
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' })
        .take(100)
        .collect();
    let name = if name.starts_with('.') { format!("_{name}") } else { name };
    format!("{name}-{}", slot.to_zoned(tz.clone()).strftime("%Y%m%dT%H%M"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ids_are_valid_run_ids_in_the_scheduler_zone() {
        let t: Timestamp = "2026-12-04T02:00:00Z".parse().expect("ts");
        assert_eq!(slot_run_id("nightly", t, &TimeZone::UTC), "nightly-20261204T0200");
        let berlin = TimeZone::get("Europe/Berlin").expect("tzdb");
        assert_eq!(slot_run_id("nightly", t, &berlin), "nightly-20261204T0300");
        let odd = slot_run_id(".x y", t, &TimeZone::UTC);
        crate::store::validate_run_id(&odd).expect("valid");
        assert_eq!(odd, "_.x_y-20261204T0200");
    }
}

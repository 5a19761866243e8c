//! What to do with the slots that came due: pure, given the time, so it is tested without
//! a clock. Whether a previous run still holds its lock is checked when the plan is
//! carried out (`commands::schedule`), and turns a start into a skip.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::cron::Cron;
use super::log::Decision;

/// `--catch-up`: what happens, when the scheduler starts, to a slot that passed while it
/// was down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CatchUp {
    /// Start the latest missed slot (one run, however long the downtime); older ones are
    /// recorded as missed.
    One,
    /// Start nothing; every missed slot is recorded as missed.
    None,
}

/// At most this many missed slots are recorded individually after a downtime: a
/// `* * * * *` flow down for a week would otherwise write 10,000 lines at once.
pub const MAX_MISSED: usize = 100;

/// Decisions for the slots of one flow in `(after, now]`, oldest first. `after` is the
/// last slot already decided (from the log), `None` if the flow has none: then only the
/// latest slot counts, since nothing says how long the scheduler was away. `up_since` is
/// when this scheduler started: a slot before it passed while nobody watched.
pub fn due(
    cron: &Cron,
    tz: &TimeZone,
    after: Option<Timestamp>,
    now: Timestamp,
    up_since: Timestamp,
    policy: CatchUp,
) -> Vec<(Timestamp, Decision)> {
    let Some(latest) = cron.prev_at_or_before(now, tz) else { return Vec::new() };
    if after.is_some_and(|a| a >= latest) {
        return Vec::new();
    }
    let latest_decision = if latest >= up_since {
        Decision::Started
    } else {
        match policy {
            CatchUp::One => Decision::CaughtUp,
            CatchUp::None => Decision::Missed,
        }
    };
    let mut out = vec![(latest, latest_decision)];
    if let Some(after) = after {
        let mut cursor = latest;
        while out.len() <= MAX_MISSED {
            let Some(earlier) = cron.prev_at_or_before(cursor - jiff::SignedDuration::from_secs(1), tz)
            else {
                break;
            };
            if earlier <= after {
                break;
            }
            out.push((earlier, Decision::Missed));
            cursor = earlier;
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn plan(
        expr: &str,
        after: Option<&str>,
        now: &str,
        up_since: &str,
        policy: CatchUp,
    ) -> Vec<(String, Decision)> {
        let cron = Cron::parse(expr).expect("parses");
        due(&cron, &TimeZone::UTC, after.map(ts), ts(now), ts(up_since), policy)
            .into_iter()
            .map(|(t, d)| (t.to_string(), d))
            .collect()
    }

    #[test]
    fn a_slot_that_comes_due_while_up_is_started() {
        let p = plan(
            "*/10 * * * *",
            Some("2026-12-04T02:00:00Z"),
            "2026-12-04T02:10:00Z",
            "2026-12-04T01:00:00Z",
            CatchUp::One,
        );
        assert_eq!(p, [("2026-12-04T02:10:00Z".to_string(), Decision::Started)]);
        // Decided already: nothing more.
        let p = plan(
            "*/10 * * * *",
            Some("2026-12-04T02:10:00Z"),
            "2026-12-04T02:19:59Z",
            "2026-12-04T01:00:00Z",
            CatchUp::One,
        );
        assert!(p.is_empty());
    }

    #[test]
    fn after_downtime_one_slot_is_caught_up_and_the_rest_missed() {
        let p = plan(
            "0 * * * *",
            Some("2026-12-04T01:00:00Z"),
            "2026-12-04T04:30:00Z",
            "2026-12-04T04:30:00Z",
            CatchUp::One,
        );
        assert_eq!(
            p,
            [
                ("2026-12-04T02:00:00Z".to_string(), Decision::Missed),
                ("2026-12-04T03:00:00Z".to_string(), Decision::Missed),
                ("2026-12-04T04:00:00Z".to_string(), Decision::CaughtUp),
            ]
        );
        let p = plan(
            "0 * * * *",
            Some("2026-12-04T01:00:00Z"),
            "2026-12-04T04:30:00Z",
            "2026-12-04T04:30:00Z",
            CatchUp::None,
        );
        assert!(p.iter().all(|(_, d)| *d == Decision::Missed) && p.len() == 3, "{p:?}");
    }

    #[test]
    fn a_first_start_considers_only_the_latest_slot() {
        let p = plan("0 2 * * *", None, "2026-12-04T12:00:00Z", "2026-12-04T12:00:00Z", CatchUp::One);
        assert_eq!(p, [("2026-12-04T02:00:00Z".to_string(), Decision::CaughtUp)]);
        let p = plan("0 2 * * *", None, "2026-12-04T12:00:00Z", "2026-12-04T12:00:00Z", CatchUp::None);
        assert_eq!(p, [("2026-12-04T02:00:00Z".to_string(), Decision::Missed)]);
    }

    #[test]
    fn missed_slots_are_capped() {
        let p = plan(
            "* * * * *",
            Some("2026-12-01T00:00:00Z"),
            "2026-12-04T00:00:30Z",
            "2026-12-04T00:00:30Z",
            CatchUp::One,
        );
        assert_eq!(p.len(), MAX_MISSED + 1);
        assert_eq!(
            p.last().map(|(t, d)| (t.as_str(), *d)),
            Some(("2026-12-04T00:00:00Z", Decision::CaughtUp))
        );
        assert_eq!(p.iter().filter(|(_, d)| d.starts()).count(), 1);
    }

    #[test]
    fn slots_missed_while_up_are_not_caught_up() {
        // The machine slept from 02:05 to 02:35 with the scheduler up since 01:00.
        let p = plan(
            "*/10 * * * *",
            Some("2026-12-04T02:00:00Z"),
            "2026-12-04T02:35:00Z",
            "2026-12-04T01:00:00Z",
            CatchUp::None,
        );
        assert_eq!(
            p.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
            [Decision::Missed, Decision::Missed, Decision::Started]
        );
    }
}

//! Standard 5-field crontab expressions (`minute hour day-of-month month day-of-week`) and
//! the times they name in a time zone.
//!
//! Written here rather than taken from a crate: the crates at hand parse 6- or 7-field
//! (seconds, years) syntax by default or pull in `chrono`, while `jiff` (already a
//! dependency) does the time-zone arithmetic, so what is left is a small parser and a walk
//! over civil minutes.
//!
//! Semantics are those of Vixie cron, which `crontab(5)` documents:
//! - `*`, numbers, ranges `a-b`, steps `*/n`, `a-b/n` and `a/n` (from `a` to the end),
//!   comma lists; month and weekday names (`jan`, `mon`), case-insensitive; weekday 0 and
//!   7 are both Sunday; `@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`,
//!   `@yearly`/`@annually`.
//! - When both day-of-month and day-of-week are restricted (neither starts with `*`), a day
//!   matches if either does (`0 0 1 * mon`: the 1st and every Monday).
//! - Daylight saving time: a civil time that does not exist (skipped by a spring-forward
//!   gap) fires once, at the same wall-clock distance after the gap (02:30 → 03:30); a
//!   civil time that occurs twice (an autumn fold) fires once, the first time.

use std::fmt;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

/// How far `next_after` and `prev_at_or_before` look before deciding a schedule never
/// fires: `0 0 29 2 *` needs up to 8 years between leap days (1900-like centuries aside).
const SEARCH_DAYS: i32 = 366 * 9;

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    weekdays: u8,
    /// Day-of-month or day-of-week started with `*`: the two are ANDed, not ORed.
    days_star: bool,
    weekdays_star: bool,
    text: String,
}

/// Why a schedule does not parse; `offset` is a byte offset into the text, so the flow
/// error can point at the exact character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

const MONTHS: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The first name stands for this value (`jan` = 1, `sun` = 0).
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[], names_from: 0 },
    Field { name: "hour", min: 0, max: 23, names: &[], names_from: 0 },
    Field { name: "day of month", min: 1, max: 31, names: &[], names_from: 0 },
    Field { name: "month", min: 1, max: 12, names: &MONTHS, names_from: 1 },
    // 7 is accepted as Sunday and folded onto 0.
    Field { name: "day of week", min: 0, max: 7, names: &WEEKDAYS, names_from: 0 },
];

impl Cron {
    /// Parses a 5-field expression or an `@` macro.
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let trimmed = text.trim();
        let lead = text.len() - text.trim_start().len();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@hourly" => Some("0 * * * *"),
            "@daily" | "@midnight" => Some("0 0 * * *"),
            "@weekly" => Some("0 0 * * 0"),
            "@monthly" => Some("0 0 1 * *"),
            "@yearly" | "@annually" => Some("0 0 1 1 *"),
            m if m.starts_with('@') => {
                return Err(CronError {
                    offset: lead,
                    message: format!(
                        "unknown macro `{trimmed}`: use @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually"
                    ),
                });
            }
            _ => None,
        };
        let (body, base) = match expanded {
            Some(e) => (e, None),
            None => (text, Some(0)),
        };
        // Fields with their byte offsets in `text` (macros point at the macro itself).
        let mut fields: Vec<(usize, &str)> = Vec::new();
        let mut start = None;
        for (i, c) in body.char_indices().chain(std::iter::once((body.len(), ' '))) {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    fields.push((s, &body[s..i]));
                    start = None;
                }
                _ => {}
            }
        }
        if fields.len() != 5 {
            return Err(CronError {
                offset: lead,
                message: format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), found {}{}",
                    fields.len(),
                    if fields.len() == 6 { "; seconds are not supported" } else { "" }
                ),
            });
        }
        let at = |s: usize| base.map_or(lead, |b| b + s);
        let mut bits = [0u64; 5];
        for (k, (offset, field)) in fields.iter().enumerate() {
            bits[k] = parse_field(&FIELDS[k], field).map_err(|(rel, message)| CronError {
                offset: at(offset + rel),
                message: format!("{} field `{field}`: {message}", FIELDS[k].name),
            })?;
        }
        // Sunday as 7 is Sunday as 0.
        let mut weekdays = bits[4];
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let cron = Cron {
            minutes: bits[0],
            hours: bits[1] as u32,
            days: bits[2] as u32,
            months: bits[3] as u16,
            weekdays: weekdays as u8,
            days_star: fields[2].1.starts_with('*'),
            weekdays_star: fields[4].1.starts_with('*'),
            text: trimmed.to_string(),
        };
        if !cron.can_fire() {
            return Err(CronError {
                offset: at(fields[2].0),
                message: format!(
                    "day of month `{}` never occurs in month `{}`, so the schedule never fires",
                    fields[2].1, fields[3].1
                ),
            });
        }
        Ok(cron)
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether some month in the set has some day in the set (Feb counts 29 days).
    fn can_fire(&self) -> bool {
        if !self.weekdays_star && !self.days_star {
            return true; // either field may match: weekdays always come round
        }
        (1..=12u32).filter(|m| self.months & (1 << m) != 0).any(|m| {
            let len = match m {
                2 => 29,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            (1..=len).any(|d| self.days & (1 << d) != 0)
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.days_star || self.weekdays_star { dom && dow } else { dom || dow }
    }

    /// The times of day that match, in order, as (hour, minute).
    fn times(&self) -> impl DoubleEndedIterator<Item = (i8, i8)> + '_ {
        (0..24i8)
            .filter(|h| self.hours & (1 << h) != 0)
            .flat_map(move |h| (0..60i8).filter(move |m| self.minutes & (1 << m) != 0).map(move |m| (h, m)))
    }

    /// The instants of the matching times of `day` in `tz` (not necessarily in order: in a
    /// fold, a later civil time can map to an earlier instant).
    fn instants(&self, day: Date, tz: &TimeZone) -> impl Iterator<Item = Timestamp> + '_ {
        let tz = tz.clone();
        let matches = self.day_matches(day);
        self.times().filter(move |_| matches).filter_map(move |(h, m)| instant(day.at(h, m, 0, 0), &tz))
    }

    /// The first time strictly after `t` that the schedule names, in `tz`.
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // The day before too: a gap can push its slots past midnight.
        let mut day = t.to_zoned(tz.clone()).date().yesterday().ok()?;
        for _ in 0..SEARCH_DAYS {
            if let Some(ts) = self.instants(day, tz).filter(|ts| *ts > t).min() {
                return Some(ts);
            }
            day = day.tomorrow().ok()?;
        }
        None
    }

    /// The last time at or before `t` that the schedule names, in `tz`.
    pub fn prev_at_or_before(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut day = t.to_zoned(tz.clone()).date().tomorrow().ok()?;
        for _ in 0..SEARCH_DAYS {
            if let Some(ts) = self.instants(day, tz).filter(|ts| *ts <= t).max() {
                return Some(ts);
            }
            day = day.yesterday().ok()?;
        }
        None
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The instant of a civil time in `tz`: the earlier of two in a fold, shifted past the gap
/// in a gap (jiff's "compatible" rule, the one RFC 5545 and `java.time` use).
fn instant(dt: DateTime, tz: &TimeZone) -> Option<Timestamp> {
    tz.to_ambiguous_zoned(dt).compatible().ok().map(|z| z.timestamp())
}

/// One field's allowed values as bits; the error is (byte offset in the field, message).
fn parse_field(f: &Field, text: &str) -> Result<u64, (usize, String)> {
    let mut bits = 0u64;
    let mut offset = 0;
    for item in text.split(',') {
        if item.is_empty() {
            return Err((offset, "empty list item".into()));
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let at = offset + r.len() + 1;
                let step: u32 =
                    s.parse().map_err(|_| (at, format!("step `{s}` is not a positive number")))?;
                if step == 0 {
                    return Err((at, "a step must be at least 1".into()));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            (f.min, f.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let lo = value(f, a).map_err(|m| (offset, m))?;
            let hi = value(f, b).map_err(|m| (offset + a.len() + 1, m))?;
            if lo > hi {
                return Err((offset, format!("range {a}-{b} goes backwards")));
            }
            (lo, hi)
        } else {
            let v = value(f, range).map_err(|m| (offset, m))?;
            // `a/n` runs from a to the end of the field, as in Vixie cron.
            (v, if step.is_some() { f.max } else { v })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
        offset += item.len() + 1;
    }
    Ok(bits)
}

fn value(f: &Field, text: &str) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = f.names.iter().position(|n| *n == lower) {
        return Ok(f.names_from + i as u32);
    }
    let names = if f.names.is_empty() {
        String::new()
    } else {
        format!(" or a name ({}…)", f.names[..3].join(", "))
    };
    let n: u32 =
        text.parse().map_err(|_| format!("`{text}` is not a number from {} to {}{names}", f.min, f.max))?;
    if n < f.min || n > f.max {
        return Err(format!("{n} is out of range: {} to {}", f.min, f.max));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(expr: &str, after: &str) -> String {
        Cron::parse(expr).expect("parses").next_after(ts(after), &TimeZone::UTC).expect("fires").to_string()
    }

    fn prev(expr: &str, at: &str) -> String {
        Cron::parse(expr)
            .expect("parses")
            .prev_at_or_before(ts(at), &TimeZone::UTC)
            .expect("fires")
            .to_string()
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        let c = Cron::parse("*/15 2,4-6 1 jan-mar/2 MON").expect("parses");
        assert_eq!(c.minutes, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(c.hours, 1 << 2 | 1 << 4 | 1 << 5 | 1 << 6);
        assert_eq!(c.months, 1 << 1 | 1 << 3);
        assert_eq!(c.weekdays, 1 << 1);
        let c = Cron::parse("5/20 * * * 7").expect("parses");
        assert_eq!(c.minutes, 1 << 5 | 1 << 25 | 1 << 45);
        assert_eq!(c.weekdays, 1, "7 is Sunday");
        assert_eq!(
            Cron::parse("@daily").expect("macro"),
            Cron { text: "@daily".into(), ..Cron::parse("0 0 * * *").expect("p") }
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases = [
            ("0 2 * *", 0, "expected 5 fields"),
            ("0 0 2 * * *", 0, "seconds are not supported"),
            ("61 * * * *", 0, "minute field `61`: 61 is out of range: 0 to 59"),
            ("0 24 * * *", 2, "hour field `24`"),
            (
                "0 0 * foo *",
                6,
                "month field `foo`: `foo` is not a number from 1 to 12 or a name (jan, feb, mar…)",
            ),
            ("0 0 * * 1-x", 10, "day of week field `1-x`"),
            ("*/0 * * * *", 2, "a step must be at least 1"),
            ("0 0 5-1 * *", 4, "goes backwards"),
            ("0 0 1,,2 * *", 6, "empty list item"),
            ("0 0 30 2 *", 4, "never fires"),
            ("  @often", 2, "unknown macro"),
        ];
        for (text, offset, message) in cases {
            let e = Cron::parse(text).expect_err(text);
            assert!(e.message.contains(message), "{text}: {}", e.message);
            assert_eq!(e.offset, offset, "{text}: {}", e.message);
        }
    }

    #[test]
    fn next_and_previous_slots_in_utc() {
        assert_eq!(next("0 2 * * *", "2026-12-03T20:00:00Z"), "2026-12-04T02:00:00Z");
        assert_eq!(next("0 2 * * *", "2026-12-04T02:00:00Z"), "2026-12-05T02:00:00Z", "strictly after");
        assert_eq!(next("*/10 * * * *", "2026-12-04T02:00:30Z"), "2026-12-04T02:10:00Z");
        assert_eq!(next("0 0 1 * *", "2026-12-15T00:00:00Z"), "2027-01-01T00:00:00Z");
        assert_eq!(next("0 0 29 feb *", "2026-03-01T00:00:00Z"), "2028-02-29T00:00:00Z");
        // 2026-12-04 is a Friday.
        assert_eq!(next("30 9 * * mon-fri", "2026-12-04T10:00:00Z"), "2026-12-07T09:30:00Z");
        // Both day fields restricted: either matches (the 1st, or a Monday).
        assert_eq!(next("0 0 1 * mon", "2026-12-04T10:00:00Z"), "2026-12-07T00:00:00Z");
        assert_eq!(prev("0 2 * * *", "2026-12-04T02:00:00Z"), "2026-12-04T02:00:00Z", "at is included");
        assert_eq!(prev("0 2 * * *", "2026-12-04T01:59:59Z"), "2026-12-03T02:00:00Z");
        assert_eq!(prev("*/10 * * * *", "2026-12-04T02:19:59Z"), "2026-12-04T02:10:00Z");
        assert_eq!(prev("0 0 1 1 *", "2026-12-04T00:00:00Z"), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn daylight_saving_gaps_fire_late_and_folds_once() {
        let tz = TimeZone::get("Europe/Berlin").expect("tzdb");
        let c = Cron::parse("30 2 * * *").expect("parses");
        // 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 fires at 03:30 CEST = 01:30Z.
        let t = c.next_after(ts("2026-03-28T12:00:00Z"), &tz).expect("fires");
        assert_eq!(t.to_string(), "2026-03-29T01:30:00Z");
        // 2026-10-25 03:00 CEST goes back to 02:00 CET: 02:30 happens twice, fires once.
        let first = c.next_after(ts("2026-10-24T12:00:00Z"), &tz).expect("fires");
        assert_eq!(first.to_string(), "2026-10-25T00:30:00Z");
        let then = c.next_after(first, &tz).expect("fires");
        assert_eq!(then.to_string(), "2026-10-26T01:30:00Z");
        let every = Cron::parse("*/30 * * * *").expect("parses");
        // Inside the repeated hour (the second 02:10, CET), nothing repeats before 03:00.
        let t = every.next_after(ts("2026-10-25T01:10:00Z"), &tz).expect("fires");
        assert_eq!(t.to_string(), "2026-10-25T02:00:00Z");
        assert_eq!(
            every.prev_at_or_before(ts("2026-10-25T01:10:00Z"), &tz).expect("fires").to_string(),
            "2026-10-25T00:30:00Z",
            "the first 02:30 (CEST) is the latest slot, not the 02:00 that the repeated hour shows"
        );
    }
}

//! What Linux's /proc says about processes: start times, groups, liveness, boot id.

/// The fields of /proc/<pid>/stat that the runner needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    pub start_time: u64,
}

impl ProcStat {
    /// Zombies and dead tasks run no code; PID 1 here may be slow to reap them.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// Whether any live (non-zombie) process is in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(stat)
        .any(|s| s.pgrp == pgid && s.is_alive())
}

/// Whether process group `pgid`, led by `pid` started at `start`, may still have members
/// that belong to that attempt (as opposed to a reused pid).
///
/// Linux keeps a pid number allocated while any process uses it as its group id, so if
/// the leader is gone but members of group `pgid` live, they are that attempt's leftovers.
/// A leader with the right pid but another start time means the number was reused.
pub fn attempt_alive(pid: i32, start: u64) -> bool {
    match stat(pid) {
        Some(s) if s.start_time != start => false,
        Some(s) if s.is_alive() && s.pgrp == pid => true,
        _ => group_alive(pid),
    }
}

/// This boot's id; a pid recorded under another boot cannot be alive.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s, ProcStat { state: 'S', pgrp: 4242, start_time: 987654 });
    }

    #[test]
    fn sees_its_own_process() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("own stat");
        assert!(s.is_alive());
        assert!(attempt_alive(me, s.start_time) || s.pgrp != me);
        assert!(!attempt_alive(me, s.start_time + 1));
        assert!(!boot_id().is_empty());
    }
}

//! What Linux's /proc says about processes: start times, groups, liveness, boot id.

/// The fields of /proc/<pid>/stat that the runner needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
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
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// Every process on the machine with its stat fields.
fn processes() -> impl Iterator<Item = (i32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(|pid| stat(pid).map(|s| (pid, s)))
}

/// Whether any live (non-zombie) process is in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    processes().any(|(_, s)| s.pgrp == pgid && s.is_alive())
}

/// Live children of process `parent` (for a subreaper: whatever was orphaned to it).
pub fn live_children(parent: i32) -> Vec<i32> {
    processes().filter(|(_, s)| s.ppid == parent && s.is_alive()).map(|(pid, _)| pid).collect()
}

/// Live processes whose environment has `key=value`: every process a step started
/// inherits `RUNNER_RUN_DIR`, even if it left the step's process group.
pub fn with_env(key: &str, value: &str) -> Vec<i32> {
    let needle = format!("{key}={value}");
    processes()
        .filter(|(_, s)| s.is_alive())
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .map(|(pid, _)| pid)
        .collect()
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

/// The value of `key` in a process's environment (as it was when the process started).
pub fn env_var(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
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
        assert_eq!(s, ProcStat { state: 'S', ppid: 1, pgrp: 4242, start_time: 987654 });
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

//! Health checks of a starting service: HTTP, TCP or a command, polled on a thread of
//! their own until one passes, with exponential backoff after the first few failures.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::executor::{Exit, Waiters, signal_group};
use crate::flow::{Check, Health};

/// Checks at the plain interval before backing off.
const STEADY_CHECKS: u32 = 5;
/// Backoff never waits longer than this between checks (or the interval, if longer).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The first check: soon after the start, so a fast service is not held up by `interval`.
const FIRST_CHECK: Duration = Duration::from_millis(50);

/// What a check needs besides the check itself.
pub struct ProbeSpec {
    pub health: Health,
    pub interval: Duration,
    /// For a `cmd` check: the service's environment and working directory.
    pub env: Vec<(String, String)>,
    pub remove_env: Vec<String>,
    pub workdir: PathBuf,
}

/// A running prober; dropping it stops it.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: Thread,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Starts checking; `report(checks, result)` gets each result until one passes.
pub fn start(
    spec: ProbeSpec,
    waiters: Waiters,
    report: impl Fn(u32, Result<(), String>) + Send + 'static,
) -> std::io::Result<Prober> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let handle = std::thread::Builder::new().name("health".into()).spawn(move || {
        let mut checks = 0;
        let mut wait = FIRST_CHECK;
        loop {
            let until = Instant::now() + wait;
            while !stopped.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
            }
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            checks += 1;
            let result = check(&spec, &waiters);
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let passed = result.is_ok();
            report(checks, result);
            if passed {
                return;
            }
            wait = delay(spec.interval, checks);
        }
    })?;
    Ok(Prober { stop, thread: handle.thread().clone() })
}

/// The wait after `failed` failed checks. First a ramp (100, 200, 400 ms … while shorter
/// than the interval), so a service that is up in a moment is not held up by a long
/// interval; then the interval for [`STEADY_CHECKS`] failed checks; then doubling, capped.
fn delay(interval: Duration, failed: u32) -> Duration {
    let ramp = |k: u32| FIRST_CHECK.saturating_mul(1u32.checked_shl(k).unwrap_or(u32::MAX));
    let ramp_checks = (1..32).take_while(|&k| ramp(k) < interval).count() as u32;
    if failed <= ramp_checks {
        return ramp(failed);
    }
    let steady = failed - ramp_checks;
    if steady < STEADY_CHECKS {
        return interval;
    }
    let factor = 1u32.checked_shl(steady - STEADY_CHECKS + 1).unwrap_or(u32::MAX);
    interval.saturating_mul(factor).min(MAX_BACKOFF.max(interval))
}

/// One check: `Ok` when healthy, else what it saw.
pub fn check(spec: &ProbeSpec, waiters: &Waiters) -> Result<(), String> {
    let timeout = spec.health.timeout;
    match &spec.health.check {
        Check::Http(url) => {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .max_redirects(0)
                .proxy(None)
                .build()
                .into();
            match agent.get(url).call() {
                Ok(resp) if resp.status().as_u16() < 400 => Ok(()),
                Ok(resp) => Err(format!("HTTP {}", resp.status())),
                Err(e) => Err(e.to_string()),
            }
        }
        Check::Tcp(addr) => {
            let addrs = addr.to_socket_addrs().map_err(|e| format!("cannot resolve {addr}: {e}"))?;
            let mut last = format!("{addr} resolves to no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, timeout) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(last)
        }
        Check::Cmd(cmd) => {
            let mut command = Command::new("/bin/sh");
            for name in &spec.remove_env {
                command.env_remove(name);
            }
            command
                .arg("-c")
                .arg(cmd)
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&spec.workdir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            let (pid, exit) =
                waiters.spawn(&mut command).map_err(|e| format!("cannot run the check: {e}"))?;
            match exit.recv_timeout(timeout) {
                Ok(Exit::Code(0)) => Ok(()),
                Ok(Exit::Code(c)) => Err(format!("exited with code {c}")),
                Ok(Exit::Signal(s)) => Err(format!("killed by {}", s.as_str())),
                Err(_) => {
                    signal_group(pid, Signal::SIGKILL);
                    let _ = exit.recv_timeout(Duration::from_secs(5));
                    Err(format!("no answer within {}", crate::report::human(timeout)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_five_failures_and_is_capped() {
        let ms = Duration::from_millis;
        let i = ms(100);
        assert_eq!(delay(i, 1), i);
        assert_eq!(delay(i, 4), i);
        assert_eq!(delay(i, 5), ms(200));
        assert_eq!(delay(i, 6), ms(400));
        assert_eq!(delay(i, 9), Duration::from_secs(3) + ms(200));
        assert_eq!(delay(i, 10), Duration::from_secs(5));
        assert_eq!(delay(i, 200), Duration::from_secs(5));
        // An interval longer than the cap is never shortened.
        assert_eq!(delay(Duration::from_secs(10), 40), Duration::from_secs(10));
    }

    #[test]
    fn the_first_checks_ramp_up_to_the_interval() {
        let ms = Duration::from_millis;
        // Checks at 50, 150, 350, 750 ms, then every 500 ms, then backing off.
        let waits: Vec<Duration> = (1..=9).map(|n| delay(ms(500), n)).collect();
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(400), ms(500), ms(500), ms(500), ms(500), ms(1000), ms(2000)]
        );
    }
}

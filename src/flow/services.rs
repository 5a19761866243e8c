//! `[services.<name>]`: background processes that steps use, with their health checks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::error::Source;
use super::raw::{RawCommand, RawHealth, RawService};
use super::{FlowError, FlowErrorKind, duration, env_table, secret_names, valid_step_id};

/// How often a starting service's health is checked, unless it sets `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a service may take to become healthy, unless it sets `start_timeout`.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one health check may take, unless `health.timeout` says otherwise.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Restarts allowed with `restart = "on-failure"`, unless it sets `max_restarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;

/// A validated service.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// The command and its arguments, run directly (no shell in between).
    pub argv: Vec<String>,
    pub health: Option<Health>,
    pub interval: Duration,
    pub start_timeout: Duration,
    /// Restarts allowed after the service fails (exits non-zero or is killed); 0 = never.
    pub max_restarts: u32,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub grace: Duration,
    /// `degraded = "continue"`: steps using it keep running when it dies.
    pub continue_degraded: bool,
}

/// A health check.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub check: Check,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// GET the URL: a 2xx or 3xx answer is healthy.
    Http(String),
    /// Connect to `host:port`.
    Tcp(String),
    /// Run a shell command: exit 0 is healthy.
    Cmd(String),
}

impl Check {
    /// `http http://…`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Check::Http(u) => format!("http {u}"),
            Check::Tcp(a) => format!("tcp {a}"),
            Check::Cmd(c) => format!("cmd `{c}`"),
        }
    }
}

/// Validates the `[services]` tables.
pub(super) fn build(
    src: &Source,
    raw: BTreeMap<Spanned<String>, RawService>,
) -> Result<BTreeMap<String, Arc<Service>>, FlowError> {
    let mut out = BTreeMap::new();
    for (name, s) in raw {
        let at = name.span().start;
        let name = name.into_inner();
        if !valid_step_id(&name) {
            return Err(src.error_at(at, FlowErrorKind::ServiceName(name)));
        }
        let invalid = |at: usize, message: String| {
            src.error_at(at, FlowErrorKind::Service { service: name.clone(), message })
        };
        let run_at = s.run.span().start;
        let argv = match s.run.into_inner() {
            RawCommand::Argv(v) => v,
            RawCommand::Line(line) => shlex::split(&line)
                .ok_or_else(|| invalid(run_at, "`run` has an unclosed quote or a trailing `\\`".into()))?,
        };
        if argv.first().is_none_or(|a| a.trim().is_empty()) {
            return Err(invalid(run_at, "`run` is empty".into()));
        }
        let field = |f: &str| format!("services.{name}.{f}");
        let health = match s.health {
            None => None,
            Some(h) => {
                let h_at = h.span().start;
                let timeout = match &h.get_ref().timeout {
                    Some(t) => duration(src, &field("health.timeout"), t, false)?,
                    None => DEFAULT_CHECK_TIMEOUT,
                };
                let check = check(h.into_inner()).map_err(|m| invalid(h_at, m))?;
                Some(Health { check, timeout })
            }
        };
        let interval = match &s.interval {
            Some(i) => duration(src, &field("interval"), i, false)?,
            None => DEFAULT_INTERVAL,
        };
        let start_timeout = match &s.start_timeout {
            Some(t) => duration(src, &field("start_timeout"), t, false)?,
            None => DEFAULT_START_TIMEOUT,
        };
        let grace = match &s.grace {
            Some(g) => duration(src, &field("grace"), g, true)?,
            None => super::DEFAULT_GRACE,
        };
        let on_failure = match &s.restart {
            None => false,
            Some(r) => match r.get_ref().as_str() {
                "never" => false,
                "on-failure" => true,
                other => {
                    return Err(invalid(
                        r.span().start,
                        format!("`restart` = {other:?}: expected \"never\" or \"on-failure\""),
                    ));
                }
            },
        };
        let max_restarts = match &s.max_restarts {
            None => DEFAULT_MAX_RESTARTS,
            Some(m) if !on_failure => {
                return Err(invalid(
                    m.span().start,
                    "`max_restarts` needs `restart = \"on-failure\"`".into(),
                ));
            }
            Some(m) => u32::try_from(*m.get_ref())
                .ok()
                .filter(|n| *n <= 100)
                .ok_or_else(|| invalid(m.span().start, "`max_restarts` must be between 0 and 100".into()))?,
        };
        let continue_degraded = match &s.degraded {
            None => false,
            Some(d) => match d.get_ref().as_str() {
                "fail" => false,
                "continue" => true,
                other => {
                    return Err(invalid(
                        d.span().start,
                        format!("`degraded` = {other:?}: expected \"fail\" or \"continue\""),
                    ));
                }
            },
        };
        let env = env_table(src, s.env)?;
        let secrets = secret_names(src, s.secrets, &env)?;
        let service = Service {
            argv,
            health,
            interval,
            start_timeout,
            max_restarts: if on_failure { max_restarts } else { 0 },
            env,
            secrets,
            grace,
            continue_degraded,
        };
        out.insert(name, Arc::new(service));
    }
    Ok(out)
}

/// One of `http`, `tcp` or `cmd`.
fn check(h: RawHealth) -> Result<Check, String> {
    Ok(match (h.http, h.tcp, h.cmd) {
        (Some(url), None, None) => {
            let rest = url.strip_prefix("http://").ok_or_else(|| {
                format!("health check URL {url:?} must start with http:// (plain HTTP, for loopback)")
            })?;
            if rest.is_empty() || rest.starts_with('/') {
                return Err(format!("health check URL {url:?} has no host"));
            }
            url.parse::<ureq::http::Uri>().map_err(|e| format!("health check URL {url:?}: {e}"))?;
            Check::Http(url)
        }
        (None, Some(addr), None) => {
            let port = addr.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty()).then_some(())?;
                port.parse::<u16>().ok().filter(|p| *p > 0)
            });
            if port.is_none() {
                return Err(format!("tcp health check {addr:?} must be host:port, e.g. \"127.0.0.1:5432\""));
            }
            Check::Tcp(addr)
        }
        (None, None, Some(cmd)) if !cmd.trim().is_empty() => Check::Cmd(cmd),
        (None, None, Some(_)) => return Err("health check `cmd` is empty".into()),
        _ => return Err("`health` takes exactly one of `http`, `tcp` or `cmd`".into()),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::flow::Flow;

    fn parse(text: &str) -> Result<Flow, String> {
        Flow::from_bytes(Path::new("f.toml"), text.as_bytes()).map_err(|e| e.to_string())
    }

    const STEP: &str = "[[steps]]\nid = \"a\"\nrun = \"true\"\nservices = [\"api\"]\n";

    #[test]
    fn a_service_is_read_with_its_defaults() {
        let f = parse(&format!(
            "[services.api]\nrun = \"python3 -m http.server 'a b'\"\nhealth = {{ tcp = \"127.0.0.1:80\" }}\n{STEP}"
        ))
        .expect("ok");
        let s = &f.services["api"];
        assert_eq!(s.argv, ["python3", "-m", "http.server", "a b"]);
        assert_eq!(s.interval, super::DEFAULT_INTERVAL);
        assert_eq!(s.max_restarts, 0);
        assert_eq!(f.steps[0].services, ["api"]);
    }

    #[test]
    fn restart_limit_and_degraded_are_read() {
        let f = parse(&format!(
            "[services.api]\nrun = [\"srv\", \"--port\", \"1\"]\nrestart = \"on-failure\"\nmax_restarts = 5\n\
             degraded = \"continue\"\nhealth = {{ http = \"http://127.0.0.1:1/h\", timeout = \"1s\" }}\n{STEP}"
        ))
        .expect("ok");
        let s = &f.services["api"];
        assert_eq!((s.max_restarts, s.continue_degraded), (5, true));
    }

    #[test]
    fn bad_services_are_refused_with_their_place() {
        for (text, expect) in [
            ("[services.api]\nrun = \"x\"\nhealth = { http = \"https://x\" }\n", "must start with http://"),
            ("[services.api]\nrun = \"x\"\nhealth = { tcp = \"nohost\" }\n", "host:port"),
            ("[services.api]\nrun = \"x\"\nhealth = { tcp = \"a:1\", cmd = \"y\" }\n", "exactly one"),
            ("[services.api]\nrun = \"'x\"\n", "unclosed quote"),
            ("[services.api]\nrun = \"\"\n", "`run` is empty"),
            ("[services.api]\nrun = \"x\"\nrestart = \"always\"\n", "expected \"never\""),
            ("[services.api]\nrun = \"x\"\nmax_restarts = 2\n", "needs `restart"),
            ("[services.api]\nrun = \"x\"\ninterval = \"0s\"\n", "longer than zero"),
            ("[services.api]\nrun = \"x\"\nport = 1\n", "unknown field `port`"),
        ] {
            let err = parse(&format!("{text}{STEP}")).expect_err("refused");
            assert!(err.contains(expect), "{text}: {err}");
            assert!(err.contains("f.toml:"), "{err}");
        }
        let err = parse(
            "[services.api]\nrun = \"x\"\n[[steps]]\nid = \"a\"\nrun = \"true\"\nservices = [\"apu\"]\n",
        )
        .expect_err("refused");
        assert!(err.contains("unknown service `apu`") && err.contains("did you mean `api`"), "{err}");
        assert!(err.contains("f.toml:6:"), "{err}");
    }
}

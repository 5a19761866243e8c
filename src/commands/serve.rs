//! `runner serve`: the dashboard, JSON API and live events of `crate::serve`, in the
//! foreground until stopped.

use std::io::Write;

use crate::cli::{Global, ServeArgs};
use crate::error::Error;
use crate::exit::ExitCode;
use crate::report::note;
use crate::serve::{Options, ServeError, start};

pub fn serve(g: &Global, args: ServeArgs) -> Result<ExitCode, Error> {
    if args.heartbeat < std::time::Duration::from_millis(100) {
        return Err(Error::Usage("--heartbeat must be at least 100ms".into()));
    }
    let exe = std::env::current_exe().map_err(|source| Error::Io { path: "runner".into(), source })?;
    let opts = Options { addr: args.addr, token: args.token, heartbeat: args.heartbeat, runs: g.runs(), exe };
    let running = start(opts).map_err(|e| match e {
        ServeError::Io { path, source } => Error::Io { path, source },
        e => Error::Usage(e.to_string()),
    })?;
    // The URL alone on stdout (scripts read it); the rest on stderr.
    let url = format!("http://{}/", running.addr);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{url}").and_then(|_| out.flush()).map_err(crate::error::io_at("stdout"))?;
    drop(out);
    if running.generated {
        // Printed once, here: approve, reject, cancel and resume need it.
        note(&format!("token for approve/reject/cancel/resume (shown once): {}", running.token));
    }
    if !g.quiet {
        note(&format!("serving {} on {url} (Ctrl+C stops it)", g.runs_dir.display()));
    }
    running.wait();
    Ok(ExitCode::Success)
}

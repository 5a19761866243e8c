//! `runner serve`: a local dashboard, a JSON API and Server-Sent Events over the
//! projection and the journals.
//!
//! The HTTP stack is `tiny_http`: synchronous, no async runtime (the runner has none
//! elsewhere). A few worker threads answer ordinary requests; each event stream gets a
//! thread of its own that writes to its socket directly, so a slow or vanished client
//! only ever costs its own thread. Reads go to the projection (caught up from the
//! journals on demand, never polled); live events come from the journals through file
//! notifications (`sse::Hub`). Anything that changes a run (approve, reject, cancel,
//! resume) is done by the runner's own commands in a child process, so the server never
//! holds a run's lock, installs no signal handlers and shares every rule with the CLI.

pub mod api;
pub mod http;
pub mod pages;
pub mod sse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use crate::store::RunsDir;
use http::{ApiError, Outcome};

/// Threads answering ordinary (non-streaming) requests.
const WORKERS: usize = 8;
/// Event streams served at once; one more is answered 503.
pub const MAX_STREAMS: usize = 1000;

/// What `runner serve` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    /// `--token` or `RUNNER_TOKEN`; without one, a loopback server makes one up.
    pub token: Option<String>,
    pub heartbeat: Duration,
    pub runs: RunsDir,
    /// The runner binary, run for the commands that change runs.
    pub exe: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve on {addr} without a token: it is not a loopback address, so anyone who can \
         reach it could approve, reject, cancel or resume runs. Give --token TOKEN (or RUNNER_TOKEN), \
         or bind to 127.0.0.1"
    )]
    NoToken { addr: SocketAddr },
    #[error("the token must not be empty or contain whitespace")]
    BadToken,
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: SocketAddr, message: String },
    #[error("cannot watch {}: {message}", path.display())]
    Watch { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Shared by every request.
pub struct Ctx {
    pub runs: RunsDir,
    pub token: String,
    pub hub: Arc<sse::Hub>,
    pub heartbeat: Duration,
    pub exe: PathBuf,
    pub streams: AtomicUsize,
    /// Bound to a loopback address: requests must name a local host (DNS rebinding).
    pub loopback: bool,
}

/// A server that is listening.
pub struct Running {
    pub addr: SocketAddr,
    pub token: String,
    /// The token was made up here (and must be shown to the user once).
    pub generated: bool,
    server: Arc<tiny_http::Server>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Serves until the process is stopped.
    pub fn wait(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }

    /// Stops accepting requests (tests and embedding).
    pub fn stop(&self) {
        self.server.unblock();
    }
}

/// Binds, starts the event hub and the workers.
pub fn start(opts: Options) -> Result<Running, ServeError> {
    let loopback = opts.addr.ip().is_loopback();
    let (token, generated) = match opts.token {
        Some(t) if t.is_empty() || t.chars().any(char::is_whitespace) => return Err(ServeError::BadToken),
        Some(t) => (t, false),
        None if loopback => (generate_token(), true),
        None => return Err(ServeError::NoToken { addr: opts.addr }),
    };
    let root = opts.runs.root().to_path_buf();
    std::fs::create_dir_all(&root).map_err(|source| ServeError::Io { path: root.clone(), source })?;
    let hub = sse::Hub::start(opts.runs.clone())?;
    let server = tiny_http::Server::http(opts.addr)
        .map_err(|e| ServeError::Bind { addr: opts.addr, message: e.to_string() })?;
    let addr = server.server_addr().to_ip().unwrap_or(opts.addr);
    let server = Arc::new(server);
    let ctx = Arc::new(Ctx {
        runs: opts.runs,
        token: token.clone(),
        hub,
        heartbeat: opts.heartbeat,
        exe: opts.exe,
        streams: AtomicUsize::new(0),
        loopback,
    });
    let workers = (0..WORKERS)
        .map(|i| {
            let (server, ctx) = (server.clone(), ctx.clone());
            std::thread::Builder::new()
                .name(format!("serve-{i}"))
                .spawn(move || {
                    while let Ok(req) = server.recv() {
                        handle(&ctx, req);
                    }
                })
                .map_err(|source| ServeError::Io { path: PathBuf::from("thread"), source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Running { addr, token, generated, server, workers })
}

/// Answers one request; never panics the worker on bad input.
fn handle(ctx: &Arc<Ctx>, mut req: tiny_http::Request) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route(ctx, &mut req)))
        .unwrap_or_else(|_| Err(ApiError::internal("the server hit a bug answering this request")));
    match outcome {
        Ok(Outcome::Reply(resp)) => {
            let _ = req.respond(resp);
        }
        Ok(Outcome::Stream(spec)) => sse::spawn_stream(ctx.clone(), req, spec),
        Err(e) => {
            let _ = req.respond(e.response());
        }
    }
}

fn route(ctx: &Arc<Ctx>, req: &mut tiny_http::Request) -> Result<Outcome, ApiError> {
    if ctx.loopback && !http::local_host(req) {
        return Err(ApiError::new(
            421,
            "bad_host",
            "this server answers only requests for localhost, 127.0.0.1 or [::1]",
        ));
    }
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let query = http::Query::parse(query)?;
    let method = req.method().clone();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    use tiny_http::Method::{Get, Head, Post};
    match (&method, segs.as_slice()) {
        (Get | Head, [""]) => pages::runs_page(ctx, query),
        (Get | Head, ["runs", id]) => pages::run_page(ctx, &http::decode(id)?, query),
        (Get | Head, ["static", name]) => pages::asset(name),
        (Get | Head, ["favicon.ico"]) => pages::asset("favicon.svg"),
        (Get | Head, ["health"]) => api::health(query),
        (Get | Head, ["api", "openapi.json"]) => api::openapi(query),
        (Get | Head, ["api", "runs"]) => api::list_runs(ctx, query),
        (Get | Head, ["api", "events"]) => sse::global_stream(ctx, req, query),
        (Get | Head, ["api", "runs", id]) => api::get_run(ctx, &http::decode(id)?, query),
        (Get | Head, ["api", "runs", id, "events"]) => sse::run_stream(ctx, req, &http::decode(id)?, query),
        (Post, ["api", "runs", id, "cancel"]) => {
            http::authorize(ctx, req)?;
            api::cancel(ctx, req, &http::decode(id)?, query)
        }
        (Post, ["api", "runs", id, "resume"]) => {
            http::authorize(ctx, req)?;
            api::resume(ctx, req, &http::decode(id)?, query)
        }
        (Get | Head, ["api", "runs", id, "steps", rest @ .., "logs"]) if !rest.is_empty() => {
            api::logs(ctx, &http::decode(id)?, &http::decode_step(rest)?, query)
        }
        (Post, ["api", "runs", id, "steps", rest @ .., action @ ("approve" | "reject")])
            if !rest.is_empty() =>
        {
            http::authorize(ctx, req)?;
            api::decide(ctx, req, &http::decode(id)?, &http::decode_step(rest)?, action, query)
        }
        (_, _) if http::known_path(&segs) => {
            Err(ApiError::new(405, "method_not_allowed", &format!("{method} is not allowed on {path}")))
        }
        _ => Err(ApiError::not_found(&format!("nothing at {path}"))),
    }
}

/// 32 random bytes from the kernel as hex; falls back to hashed time and pid.
fn generate_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok();
    if !random {
        let seed = format!("{:?}:{}", std::time::SystemTime::now(), std::process::id());
        bytes = *blake3::hash(seed.as_bytes()).as_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Server-Sent Events: journal events, live, to any number of browsers.
//!
//! One watcher thread (`Hub`) gets inotify notifications for the runs directory and for
//! each run directory in it (not recursive: step logs would flood it), reads what was
//! appended to a journal since it last looked, and hands every new event to the streams
//! that want it. A stream that falls behind by more than its buffer is dropped rather
//! than slowing the others down: the browser reconnects with `Last-Event-ID` and gets
//! what it missed from the projection's `events` table, which is also how a stream
//! resumes after any disconnect.
//!
//! Event ids: on a run's stream, the journal `seq`; on the global stream,
//! `<ts>|<run id>|<seq>`, ordered by time, so a resume replays every run's events after it.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::http::{ApiError, Outcome, Query, last_event_id};
use super::{Ctx, MAX_STREAMS, ServeError};
use crate::journal::JOURNAL_FILE;
use crate::projection::Projection;
use crate::store::{RunsDir, validate_run_id};

/// Events a stream may fall behind by before it is dropped (and reconnects).
const STREAM_BUFFER: usize = 4096;
/// Events replayed on a resume at most; a client that missed more reloads.
const MAX_REPLAY: i64 = 20_000;
/// How often the watcher looks at every journal anyway, in case a notification was lost
/// (inotify queue overflow): a safety net, not the feed.
const SAFETY_SCAN: Duration = Duration::from_secs(5);

/// One journal event as streamed.
#[derive(Debug)]
pub struct Ev {
    pub run_id: String,
    pub seq: u64,
    pub ts: String,
    pub kind: String,
    pub step: Option<String>,
    /// The event's `data` object, as the journal has it.
    pub data: String,
}

impl Ev {
    fn global_id(&self) -> String {
        format!("{}|{}|{}", self.ts, self.run_id, self.seq)
    }

    fn json(&self) -> String {
        let data = RawValue::from_string(self.data.clone())
            .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable!()));
        serde_json::json!({
            "run_id": self.run_id, "seq": self.seq, "ts": self.ts, "type": self.kind,
            "step": self.step, "data": data,
        })
        .to_string()
    }
}

struct Sub {
    run: Option<String>,
    tx: SyncSender<Arc<Ev>>,
}

/// The fan-out of journal events to streams.
pub struct Hub {
    subs: Mutex<Vec<Sub>>,
}

impl Hub {
    /// Starts watching the runs directory; events written from now on are published.
    pub fn start(runs: RunsDir) -> Result<Arc<Hub>, ServeError> {
        let hub = Arc::new(Hub { subs: Mutex::new(Vec::new()) });
        let (tx, rx) = channel();
        // Notifications name absolute paths: match them against the canonical root.
        let root = std::fs::canonicalize(runs.root()).unwrap_or_else(|_| runs.root().to_path_buf());
        let runs = RunsDir::new(root.clone());
        let watch_err = |e: notify::Error| ServeError::Watch { path: root.clone(), message: e.to_string() };
        let mut watcher = notify::recommended_watcher(tx).map_err(watch_err)?;
        watcher.watch(&root, RecursiveMode::NonRecursive).map_err(watch_err)?;
        let mut tails = Tails { runs, watcher, tails: HashMap::new() };
        // Runs already there: follow them from their current end.
        for id in tails.runs.list().unwrap_or_default() {
            tails.track(&id, true);
        }
        let h = hub.clone();
        std::thread::Builder::new()
            .name("serve-watch".into())
            .spawn(move || tails.run(rx, &h))
            .map_err(|source| ServeError::Io { path: PathBuf::from("thread"), source })?;
        Ok(hub)
    }

    fn subscribe(&self, run: Option<String>) -> Receiver<Arc<Ev>> {
        let (tx, rx) = sync_channel(STREAM_BUFFER);
        if let Ok(mut subs) = self.subs.lock() {
            subs.push(Sub { run, tx });
        }
        rx
    }

    fn publish(&self, ev: Ev) {
        let ev = Arc::new(ev);
        let Ok(mut subs) = self.subs.lock() else { return };
        subs.retain(|s| {
            if s.run.as_ref().is_some_and(|r| *r != ev.run_id) {
                return true;
            }
            // Full: a client too slow to keep up; it reconnects and replays.
            !matches!(s.tx.try_send(ev.clone()), Err(TrySendError::Full(_) | TrySendError::Disconnected(_)))
        });
    }

    /// Streams connected now.
    pub fn subscribers(&self) -> usize {
        self.subs.lock().map(|s| s.len()).unwrap_or(0)
    }
}

struct Tail {
    /// Bytes of complete lines read so far.
    offset: u64,
    last_seq: u64,
}

struct Tails {
    runs: RunsDir,
    watcher: notify::RecommendedWatcher,
    tails: HashMap<String, Tail>,
}

#[derive(Deserialize)]
struct Line<'a> {
    seq: u64,
    ts: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Tails {
    fn run(mut self, rx: Receiver<notify::Result<notify::Event>>, hub: &Hub) {
        let mut last_scan = Instant::now();
        loop {
            let mut touched: Vec<PathBuf> = Vec::new();
            let mut rescan = false;
            match rx.recv_timeout(SAFETY_SCAN) {
                Ok(ev) => collect(ev, &mut touched, &mut rescan),
                Err(RecvTimeoutError::Timeout) => rescan = true,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(ev) = rx.try_recv() {
                collect(ev, &mut touched, &mut rescan);
            }
            if rescan || last_scan.elapsed() >= SAFETY_SCAN {
                last_scan = Instant::now();
                self.rescan(hub);
            }
            let root = self.runs.root().to_path_buf();
            let mut ids: Vec<String> = Vec::new();
            for p in touched {
                let Ok(rel) = p.strip_prefix(&root) else { continue };
                let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
                let (Some(id), rest) = (parts.next(), parts.next()) else { continue };
                if validate_run_id(&id).is_err() {
                    continue;
                }
                if matches!(rest.as_deref(), None | Some(JOURNAL_FILE)) && !ids.contains(&id) {
                    ids.push(id);
                }
            }
            for id in ids {
                let dir = self.runs.run_dir(&id);
                if !dir.is_dir() {
                    self.tails.remove(&id);
                    continue;
                }
                if !self.tails.contains_key(&id) {
                    self.track(&id, false);
                }
                self.read(&id, hub);
            }
        }
    }

    /// Starts following a run (from its end if it was there before the server).
    fn track(&mut self, id: &str, from_end: bool) {
        let dir = self.runs.run_dir(id);
        let _ = self.watcher.watch(&dir, RecursiveMode::NonRecursive);
        let (offset, last_seq) = if from_end { end_of(&dir.join(JOURNAL_FILE)) } else { (0, 0) };
        self.tails.insert(id.to_string(), Tail { offset, last_seq });
    }

    /// The safety net: runs that appeared or vanished unnoticed, journals that grew.
    fn rescan(&mut self, hub: &Hub) {
        let ids = self.runs.list().unwrap_or_default();
        self.tails.retain(|id, _| ids.contains(id));
        for id in ids {
            if !self.tails.contains_key(&id) {
                self.track(&id, false);
            }
            self.read(&id, hub);
        }
    }

    /// Publishes the complete lines appended to a run's journal since the last read.
    fn read(&mut self, id: &str, hub: &Hub) {
        let path = self.runs.run_dir(id).join(JOURNAL_FILE);
        let Some(tail) = self.tails.get_mut(id) else { return };
        let Ok(mut file) = std::fs::File::open(&path) else { return };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < tail.offset {
            // Cut (a torn tail repaired): go on from the new end; seq dedupes.
            tail.offset = len;
        }
        if len == tail.offset || file.seek(SeekFrom::Start(tail.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if file.take(len - tail.offset).read_to_end(&mut bytes).is_err() {
            return;
        }
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else { return };
        for line in bytes[..end].split(|b| *b == b'\n') {
            let Ok(l) = serde_json::from_slice::<Line>(line) else { continue };
            if l.seq <= tail.last_seq {
                continue;
            }
            tail.last_seq = l.seq;
            let step = serde_json::from_str::<serde_json::Value>(l.data.get())
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_str()).map(str::to_string));
            hub.publish(Ev {
                run_id: id.to_string(),
                seq: l.seq,
                ts: l.ts,
                kind: l.kind,
                step,
                data: l.data.get().to_string(),
            });
        }
        tail.offset += end as u64 + 1;
    }
}

fn collect(ev: notify::Result<notify::Event>, touched: &mut Vec<PathBuf>, rescan: &mut bool) {
    match ev {
        // Reads (ours included) are no news.
        Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
        Ok(ev) => {
            *rescan |= ev.need_rescan();
            touched.extend(ev.paths);
        }
        Err(_) => *rescan = true,
    }
}

/// The byte length and last seq of a journal's complete lines.
fn end_of(path: &Path) -> (u64, u64) {
    let Ok(bytes) = std::fs::read(path) else { return (0, 0) };
    let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else { return (0, 0) };
    let last = bytes[..end].rsplit(|b| *b == b'\n').next().unwrap_or_default();
    let seq = serde_json::from_slice::<Line>(last).map(|l| l.seq).unwrap_or(0);
    (end as u64 + 1, seq)
}

/// What a stream sends: one run's events or all, after a point.
pub struct StreamSpec {
    run: Option<String>,
    after: After,
}

enum After {
    Nothing,
    Seq(u64),
    Global { ts: String, run: String, seq: u64 },
}

/// `GET /api/events`
pub fn global_stream(ctx: &Arc<Ctx>, req: &tiny_http::Request, mut q: Query) -> Result<Outcome, ApiError> {
    let after_q = q.take("after");
    let after = last_event_id(req).or(after_q);
    q.finish()?;
    let after = match after {
        None => After::Nothing,
        Some(id) => {
            let mut parts = id.splitn(3, '|');
            match (parts.next(), parts.next(), parts.next().and_then(|s| s.parse::<u64>().ok())) {
                (Some(ts), Some(run), Some(seq)) if !ts.is_empty() => {
                    After::Global { ts: ts.to_string(), run: run.to_string(), seq }
                }
                _ => {
                    return Err(ApiError::bad_request(&format!(
                        "bad event id {id:?}: expected `<ts>|<run id>|<seq>` as this stream sends them"
                    )));
                }
            }
        }
    };
    admit(ctx)?;
    Ok(Outcome::Stream(StreamSpec { run: None, after }))
}

/// `GET /api/runs/{id}/events`
pub fn run_stream(
    ctx: &Arc<Ctx>,
    req: &tiny_http::Request,
    id: &str,
    mut q: Query,
) -> Result<Outcome, ApiError> {
    // A reconnecting browser repeats the URL: its Last-Event-ID is newer than `after`.
    let after_q = q.take("after");
    let after = last_event_id(req).or(after_q);
    q.finish()?;
    ctx.runs.existing(id)?;
    let after = match after {
        None => After::Nothing,
        Some(s) => After::Seq(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(&format!("bad event id {s:?}: this stream's ids are journal seq numbers"))
        })?),
    };
    admit(ctx)?;
    Ok(Outcome::Stream(StreamSpec { run: Some(id.to_string()), after }))
}

fn admit(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.streams.load(Ordering::Relaxed) >= MAX_STREAMS {
        return Err(ApiError::new(
            503,
            "too_many_streams",
            "too many event streams are open; try again later",
        ));
    }
    Ok(())
}

/// Serves a stream on a thread of its own until the client goes away.
pub fn spawn_stream(ctx: Arc<Ctx>, req: tiny_http::Request, spec: StreamSpec) {
    ctx.streams.fetch_add(1, Ordering::Relaxed);
    let c = ctx.clone();
    let spawned = std::thread::Builder::new().name("serve-sse".into()).spawn(move || {
        let head_only = *req.method() == tiny_http::Method::Head;
        let rx = c.hub.subscribe(spec.run.clone());
        let mut w = req.into_writer();
        // A bug in one stream must not leak its slot in the count.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = stream(&c, &mut w, &spec, &rx, head_only);
        }));
        c.streams.fetch_sub(1, Ordering::Relaxed);
    });
    if spawned.is_err() {
        ctx.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

fn stream(
    ctx: &Ctx,
    w: &mut dyn Write,
    spec: &StreamSpec,
    rx: &Receiver<Arc<Ev>>,
    head_only: bool,
) -> std::io::Result<()> {
    // Written by hand: the body has no length and must reach the client event by event.
    w.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
          X-Accel-Buffering: no\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
    )?;
    if head_only {
        return w.flush();
    }
    w.write_all(b"retry: 2000\n: connected\n\n")?;
    w.flush()?;
    let global = spec.run.is_none();
    // Subscribed before the replay, so nothing falls between; `sent` drops repeats.
    let mut sent: HashMap<String, u64> = HashMap::new();
    match replay(ctx, spec) {
        Ok(events) => {
            for ev in events {
                send(w, &ev, global, &mut sent)?;
            }
            w.flush()?;
        }
        Err(e) => {
            let msg = serde_json::json!({"message": e.message}).to_string();
            write!(w, "event: error\ndata: {msg}\n\n")?;
            w.flush()?;
        }
    }
    loop {
        match rx.recv_timeout(ctx.heartbeat) {
            Ok(ev) => {
                send(w, &ev, global, &mut sent)?;
                while let Ok(ev) = rx.try_recv() {
                    send(w, &ev, global, &mut sent)?;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                write!(w, "event: heartbeat\ndata: {{\"ts\":\"{}\"}}\n\n", crate::journal::now_ts())?;
            }
            // Dropped by the hub for falling behind: close, the client resumes.
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        w.flush()?;
    }
}

fn send(w: &mut dyn Write, ev: &Ev, global: bool, sent: &mut HashMap<String, u64>) -> std::io::Result<()> {
    let last = sent.entry(ev.run_id.clone()).or_insert(0);
    if ev.seq <= *last {
        return Ok(());
    }
    *last = ev.seq;
    let id = if global { ev.global_id() } else { ev.seq.to_string() };
    write!(w, "id: {id}\nevent: journal\ndata: {}\n\n", ev.json())
}

/// The events after the point the client names, from the projection.
fn replay(ctx: &Ctx, spec: &StreamSpec) -> Result<Vec<Ev>, ApiError> {
    if matches!(spec.after, After::Nothing) {
        return Ok(Vec::new());
    }
    let mut p = Projection::open(&ctx.runs)?;
    if p.is_fresh() {
        p.rebuild()?;
    }
    let row = |r: &rusqlite::Row| -> rusqlite::Result<Ev> {
        Ok(Ev {
            run_id: r.get(0)?,
            seq: r.get::<_, i64>(1)? as u64,
            ts: r.get(2)?,
            kind: r.get(3)?,
            step: r.get(4)?,
            data: r.get(5)?,
        })
    };
    let events = match (&spec.run, &spec.after) {
        (Some(run), After::Seq(seq)) => {
            p.sync_run_if_behind(run)?;
            let mut stmt = p.connection().prepare(
                "SELECT run_id, seq, ts, type, step_id, data FROM events
                 WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            stmt.query_map(rusqlite::params![run, *seq as i64, MAX_REPLAY], row)?
                .collect::<Result<Vec<_>, _>>()?
        }
        (None, After::Global { ts, run, seq }) => {
            p.catch_up()?;
            let mut stmt = p.connection().prepare(
                "SELECT run_id, seq, ts, type, step_id, data FROM events
                 WHERE ts > ?1 OR (ts = ?1 AND (run_id > ?2 OR (run_id = ?2 AND seq > ?3)))
                 ORDER BY ts, run_id, seq LIMIT ?4",
            )?;
            stmt.query_map(rusqlite::params![ts, run, *seq as i64, MAX_REPLAY], row)?
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => Vec::new(),
    };
    Ok(events)
}

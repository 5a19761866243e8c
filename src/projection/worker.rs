//! Keeps a live run's projection up to date from a thread of its own, off the path from
//! one step to the next.
//!
//! The session hands over each committed batch (already durable in the journal); the
//! worker writes batches in order, merging those that queue up into one transaction.
//! Nothing waits for it but the end of the session. A failed write only leaves the rows
//! behind, and the next write (or the final one) catches them up from the journal.

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::{BUSY_TIMEOUT, Batch, Projection};
use crate::store::RunsDir;

enum Msg {
    Batch(Box<Batch>),
    Finish,
}

pub struct ProjectionWorker {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl ProjectionWorker {
    /// Starts the thread, which opens the projection itself (waiting, if a rebuild holds
    /// it, without holding up the run); `run_id` is the run whose rows it keeps current.
    pub fn start(runs: RunsDir, run_id: String) -> std::io::Result<ProjectionWorker> {
        let (tx, rx) = mpsc::channel();
        let thread =
            std::thread::Builder::new().name("projection".into()).spawn(
                move || match Projection::open_with(&runs, BUSY_TIMEOUT) {
                    Ok(p) => work(p, &run_id, &rx),
                    Err(e) => Err(format!("cannot open it: {e}")),
                },
            )?;
        Ok(ProjectionWorker { tx, thread: Some(thread) })
    }

    /// Queues a committed batch.
    pub fn send(&self, batch: Batch) {
        let _ = self.tx.send(Msg::Batch(Box::new(batch)));
    }

    /// Writes everything queued, waiting as long as other writers need, and stops. The
    /// error, if any, is the first write that failed.
    pub fn finish(mut self) -> Result<(), String> {
        let _ = self.tx.send(Msg::Finish);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err("the projection thread panicked".into()),
            None => Ok(()),
        }
    }
}

fn work(mut p: Projection, run_id: &str, rx: &Receiver<Msg>) -> Result<(), String> {
    let mut first_error: Option<String> = None;
    let mut behind = false;
    loop {
        let (mut batch, mut finish) = match rx.recv() {
            Ok(Msg::Batch(b)) => (Some(*b), false),
            Ok(Msg::Finish) | Err(_) => (None, true),
        };
        // Whatever queued up meanwhile goes into the same transaction.
        while !finish && let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Batch(b) => match &mut batch {
                    Some(pending) => pending.merge(*b),
                    None => batch = Some(*b),
                },
                Msg::Finish => finish = true,
            }
        }
        if let Some(batch) = batch {
            match p.apply_batch(&batch) {
                Ok(()) => behind = false,
                Err(e) => {
                    behind = true;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        if finish {
            if !behind {
                return Ok(());
            }
            // The last chance to leave the rows current (the thread waits for other
            // writers as long as commands do; the run never waits for it).
            return match p.sync_run(run_id) {
                Ok(_) => Ok(()),
                Err(e) => Err(first_error.unwrap_or_else(|| e.to_string())),
            };
        }
    }
}

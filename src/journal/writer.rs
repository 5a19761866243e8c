//! Appending to the journal with group commits: stage events, then one write and one
//! `fdatasync` make them all durable together.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Event, JournalError, Record, ZERO_SUM, encode, now_ts};

pub struct JournalWriter {
    file: File,
    path: PathBuf,
    next_seq: u64,
    /// Checksum of the last staged line, which the next line chains to.
    last_sum: String,
    durable_seq: u64,
    durable_sum: String,
    len: u64,
    buf: Vec<u8>,
    staged: Vec<Record>,
    /// Set after a failed write or sync. The kernel may have dropped the dirty pages, so
    /// a retried fsync on the same descriptor could report success for lost data.
    failed: bool,
}

impl JournalWriter {
    /// Creates a new, empty journal; fails if the file exists.
    pub fn create(path: &Path) -> Result<JournalWriter, JournalError> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| JournalError::io(path, e))?;
        Ok(JournalWriter::with(file, path, 0, ZERO_SUM.to_string(), 0))
    }

    /// Opens an existing journal whose valid content ends at `len` bytes with `last_seq`.
    /// The caller has already cut any torn tail, so the file is exactly `len` long.
    pub fn reopen(
        path: &Path,
        last_seq: u64,
        last_sum: &str,
        len: u64,
    ) -> Result<JournalWriter, JournalError> {
        let file = OpenOptions::new().append(true).open(path).map_err(|e| JournalError::io(path, e))?;
        let actual = file.metadata().map_err(|e| JournalError::io(path, e))?.len();
        if actual != len {
            return Err(JournalError::io(
                path,
                std::io::Error::other(format!(
                    "journal is {actual} bytes, expected {len}; another process is writing it"
                )),
            ));
        }
        Ok(JournalWriter::with(file, path, last_seq, last_sum.to_string(), len))
    }

    fn with(file: File, path: &Path, last_seq: u64, last_sum: String, len: u64) -> JournalWriter {
        JournalWriter {
            file,
            path: path.to_path_buf(),
            next_seq: last_seq + 1,
            durable_sum: last_sum.clone(),
            last_sum,
            durable_seq: last_seq,
            len,
            buf: Vec::with_capacity(4096),
            staged: Vec::new(),
            failed: false,
        }
    }

    /// Adds an event to the next commit and returns it with its sequence number and time.
    /// Nothing may act on it until `commit` returns.
    pub fn stage(&mut self, event: Event) -> &Record {
        let record = Record::new(self.next_seq, now_ts(), event);
        let (line, sum) = encode(record.seq, &record.ts, &record.event, &record.data, &self.last_sum);
        self.buf.extend_from_slice(&line);
        self.last_sum = sum;
        self.staged.push(record);
        self.next_seq += 1;
        self.staged.last().unwrap_or_else(|| unreachable!("just pushed"))
    }

    /// The sequence number the next staged event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Writes and syncs every staged event; on success they are durable and returned.
    pub fn commit(&mut self) -> Result<Vec<Record>, JournalError> {
        if self.failed {
            return Err(JournalError::WriterFailed { path: self.path.clone() });
        }
        if self.staged.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.write_and_sync();
        if let Err(e) = result {
            self.failed = true;
            return Err(JournalError::io(&self.path, e));
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        self.durable_seq = self.next_seq - 1;
        self.durable_sum.clone_from(&self.last_sum);
        Ok(std::mem::take(&mut self.staged))
    }

    fn write_and_sync(&mut self) -> std::io::Result<()> {
        if let Some(e) = crate::faults::io_error("journal-write") {
            // As a full disk does: part of the batch lands, then the write fails.
            self.file.write_all(&self.buf[..self.buf.len() / 2])?;
            return Err(e);
        }
        self.file.write_all(&self.buf)?;
        if let Some(e) = crate::faults::io_error("journal-sync") {
            return Err(e);
        }
        self.file.sync_data()
    }

    /// Bytes durably in the journal.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sequence number and checksum of the last durable line.
    pub fn durable_end(&self) -> (u64, &str) {
        (self.durable_seq, &self.durable_sum)
    }

    /// Follows the file after its directory was renamed (the descriptor stays valid).
    pub(crate) fn moved_to(&mut self, path: &Path) {
        self.path = path.to_path_buf();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Event, RunInterrupted};

    #[test]
    fn a_failed_commit_is_never_retried_on_the_same_descriptor() {
        // Writes to /dev/full fail with ENOSPC, like a full disk.
        let file = OpenOptions::new().append(true).open("/dev/full").expect("/dev/full");
        let mut w = JournalWriter::with(file, Path::new("/dev/full"), 0, ZERO_SUM.to_string(), 0);
        w.stage(Event::RunInterrupted(RunInterrupted { signal: "SIGINT".into(), cancelled_by: None }));
        let first = w.commit().expect_err("the disk is full");
        assert!(matches!(first, JournalError::Io { .. }), "{first}");
        assert!(first.to_string().contains("No space left"), "{first}");
        assert_eq!((w.len(), w.durable_end().0), (0, 0), "nothing was acknowledged");
        w.stage(Event::RunInterrupted(RunInterrupted { signal: "SIGTERM".into(), cancelled_by: None }));
        assert!(matches!(w.commit(), Err(JournalError::WriterFailed { .. })));
    }
}

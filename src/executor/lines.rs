//! A service's output as whole lines: masked, into its log, and onto the console with a
//! `[name]` prefix.
//!
//! Its stdout and stderr share one log. Each pipe is read by its own thread, which keeps
//! a partial line until its end arrives, so a line is never split between two writes nor
//! interleaved with a line of the other stream, and an unterminated last line is kept.

use std::fs::File;
use std::io::{self, PipeReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::secrets::Redactor;

/// A line longer than this is written in pieces rather than held in memory.
const MAX_LINE: usize = 1 << 20;

/// Where a service's lines go.
pub struct LineSink {
    /// `[api] `, before each console line.
    prefix: String,
    log: Mutex<File>,
    console: bool,
    redact: Option<Arc<Redactor>>,
}

impl LineSink {
    pub fn new(name: &str, log: File, console: bool, redact: Option<Arc<Redactor>>) -> LineSink {
        LineSink { prefix: format!("[{name}] "), log: Mutex::new(log), console, redact }
    }

    /// Writes complete lines (each ends in `\n`).
    fn write(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        if let Ok(mut log) = self.log.lock() {
            let _ = log.write_all(lines);
        }
        if self.console {
            // One call per batch, above the progress bars if they are drawn.
            let text: Vec<String> = lines
                .split_inclusive(|b| *b == b'\n')
                .map(|l| {
                    format!("{}{}", self.prefix, String::from_utf8_lossy(l.strip_suffix(b"\n").unwrap_or(l)))
                })
                .collect();
            crate::report::console_line(&text.join("\n"));
        }
    }
}

/// Copies a pipe into `sink` line by line until every writer has closed it.
///
/// Secrets are masked per complete line, so a line is written as soon as it ends, however
/// long the values are. Only when a value itself holds a newline is the output masked as
/// a stream (holding back what could begin a value) before it is cut into lines.
pub fn relay(mut from: PipeReader, sink: Arc<LineSink>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("service-lines".into()).spawn(move || {
        let by_line = sink.redact.as_ref().filter(|r| !r.spans_lines());
        let mut stream = sink.redact.as_ref().filter(|r| r.spans_lines()).map(|r| r.stream());
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            match &mut stream {
                Some(s) => pending.extend_from_slice(&s.push(&buf[..n])),
                None => pending.extend_from_slice(&buf[..n]),
            }
            let end = match pending.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None if pending.len() >= MAX_LINE => {
                    pending.push(b'\n');
                    pending.len()
                }
                None => continue,
            };
            match by_line {
                Some(r) => sink.write(&r.redact(&pending[..end])),
                None => sink.write(&pending[..end]),
            }
            pending.drain(..end);
        }
        if let Some(s) = stream {
            pending.extend_from_slice(&s.finish());
        }
        if !pending.is_empty() {
            if pending.last() != Some(&b'\n') {
                pending.push(b'\n');
            }
            match by_line {
                Some(r) => sink.write(&r.redact(&pending)),
                None => sink.write(&pending),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], secrets: &[&str]) -> String {
        let dir = tempfile::tempdir().expect("ok");
        let path = dir.path().join("log");
        let redact = Redactor::new(secrets.iter().copied()).map(Arc::new);
        let sink = Arc::new(LineSink::new("api", File::create(&path).expect("ok"), false, redact));
        let (r, mut w) = io::pipe().expect("ok");
        let h = relay(r, sink).expect("ok");
        for c in chunks {
            w.write_all(c).expect("ok");
            w.flush().expect("ok");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(w);
        h.join().expect("ok");
        std::fs::read_to_string(path).expect("ok")
    }

    #[test]
    fn partial_lines_are_joined_and_the_last_one_kept() {
        assert_eq!(run(&[b"hel", b"lo\nwor", b"ld\npart"], &[]), "hello\nworld\npart\n");
    }

    #[test]
    fn a_secret_split_across_writes_is_masked() {
        assert_eq!(run(&[b"token=s3cr", b"et!\n"], &["s3cret"]), "token=***!\n");
        // A value with a newline in it is found across lines too.
        assert_eq!(run(&[b"key=ab", b"\ncd\nok\n"], &["ab\ncd"]), "key=***\nok\n");
    }

    #[test]
    fn a_line_is_written_when_it_ends_however_long_the_secrets() {
        let long = "Z".repeat(300);
        let dir = tempfile::tempdir().expect("ok");
        let path = dir.path().join("log");
        let redact = Redactor::new([long.as_str()].into_iter()).map(Arc::new);
        let sink = Arc::new(LineSink::new("api", File::create(&path).expect("ok"), false, redact));
        let (r, mut w) = io::pipe().expect("ok");
        let h = relay(r, sink).expect("ok");
        w.write_all(format!("one {long}\ntwo\n").as_bytes()).expect("ok");
        let start = std::time::Instant::now();
        while std::fs::read_to_string(&path).expect("ok") != "one ***\ntwo\n" {
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "lines held back");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(w);
        h.join().expect("ok");
    }
}

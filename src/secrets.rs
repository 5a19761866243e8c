//! Secrets: values that steps get and that nothing stores.
//!
//! A flow names them (`secrets = ["API_TOKEN"]`); their values come from `--env-file`
//! (dotenv format) or the runner's environment, every time a runner starts or resumes the
//! run, and live only in its memory and in the environment of the steps that declared
//! them. Everything the runner writes that a step's bytes reach (logs, `$RUNNER_OUTPUT`,
//! handoffs) goes through a [`Redactor`] first, which replaces each value with `***`,
//! also when a value arrives split across two writes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Shown instead of a secret's value.
pub const MASK: &str = "***";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{}: {message}", path.display())]
    EnvFile { path: PathBuf, message: String },
    #[error(
        "secret{} {} not set: export {} or put {} in a file given with --env-file",
        if names.len() > 1 { "s" } else { "" },
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
        if names.len() > 1 { "them" } else { "it" },
        if names.len() > 1 { "them" } else { "it" }
    )]
    Missing { names: Vec<String> },
}

/// A dotenv error without the line's text: the line may hold a secret.
fn describe(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::LineParse(..) => {
            "not `NAME=value` (dotenv format; the line is not shown, it may hold a secret)".into()
        }
        dotenvy::Error::Io(io) => io.to_string(),
        _ => "cannot read it as a dotenv file".into(),
    }
}

/// Where secret values come from: `--env-file` (which wins), then the environment.
#[derive(Clone, Default)]
pub struct Secrets {
    file: BTreeMap<String, String>,
    /// The values resolved so far, by name.
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    /// Names only: a value must never reach a log or a panic message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets").field("names", &self.values.keys().collect::<Vec<_>>()).finish()
    }
}

impl Secrets {
    /// Reads `--env-file`, if given. A malformed file is an error naming its line.
    pub fn from_env_file(path: Option<&Path>) -> Result<Secrets, SecretsError> {
        let Some(path) = path else { return Ok(Secrets::default()) };
        let err = |message: String| SecretsError::EnvFile { path: path.to_path_buf(), message };
        let iter = dotenvy::from_path_iter(path).map_err(|e| err(describe(&e)))?;
        let mut file = BTreeMap::new();
        for (n, item) in iter.enumerate() {
            let (k, v) =
                item.map_err(|e| err(format!("entry {} (after {n} good ones): {}", n + 1, describe(&e))))?;
            file.insert(k, v);
        }
        Ok(Secrets { file, values: BTreeMap::new() })
    }

    /// `--env-file` read and every one of `names` resolved: what a runner needs before it
    /// creates or takes over a run.
    pub fn load(env_file: Option<&Path>, names: &[String]) -> Result<Secrets, SecretsError> {
        let mut secrets = Secrets::from_env_file(env_file)?;
        secrets.resolve(names)?;
        Ok(secrets)
    }

    /// Every secret `flow` and the flows it calls declare (the callees as far as their
    /// files can be found now), so no step inherits one it did not declare before its
    /// callee first runs.
    pub fn names_in(flow: &crate::flow::Flow, workdir: &Path) -> Vec<String> {
        crate::flow::check_calls(flow, workdir).unwrap_or_else(|_| flow.secret_names())
    }

    /// Looks up `names`, keeping their values; every missing one is named at once.
    pub fn resolve(&mut self, names: &[String]) -> Result<(), SecretsError> {
        let mut missing = Vec::new();
        for name in names {
            if self.values.contains_key(name) {
                continue;
            }
            let value = self.file.get(name).cloned().or_else(|| std::env::var(name).ok());
            match value {
                Some(v) => {
                    self.values.insert(name.clone(), v);
                }
                None => missing.push(name.clone()),
            }
        }
        if missing.is_empty() { Ok(()) } else { Err(SecretsError::Missing { names: missing }) }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Every name declared anywhere in the run, so that a step that did not declare a
    /// secret does not inherit it from the runner's environment either.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.values.keys()
    }

    /// A redactor for every value resolved so far; `None` when there is nothing to hide.
    pub fn redactor(&self) -> Option<Redactor> {
        Redactor::new(self.values.values().map(String::as_str))
    }
}

/// Replaces secret values with [`MASK`]. Matching is one pass of Aho-Corasick over all
/// values at once, so many or long secrets cost no more than one; overlapping matches are
/// masked as one run, so no part of any value shows.
#[derive(Clone)]
pub struct Redactor {
    values: Vec<Vec<u8>>,
    matcher: aho_corasick::AhoCorasick,
    longest: usize,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

/// Values longer than this are held back whole at the end of a stream piece rather than
/// matched as prefixes (which would cost their length squared per piece).
const EXACT_HOLD: usize = 256;

impl Redactor {
    pub fn new<'a>(values: impl Iterator<Item = &'a str>) -> Option<Redactor> {
        let mut values: Vec<Vec<u8>> =
            values.filter(|v| !v.is_empty()).map(|v| v.as_bytes().to_vec()).collect();
        values.sort();
        values.dedup();
        let longest = values.iter().map(Vec::len).max()?;
        // A DFA is fastest for the usual few short values, but costs seconds to build for
        // very long ones; the contiguous NFA is built at once and still linear.
        let total: usize = values.iter().map(Vec::len).sum();
        let kind = (total > 4096).then_some(aho_corasick::AhoCorasickKind::ContiguousNFA);
        let matcher = aho_corasick::AhoCorasick::builder().kind(kind).build(&values).ok()?;
        Some(Redactor { values, matcher, longest })
    }

    /// The byte ranges of `bytes` covered by some value, merged.
    fn covered(&self, bytes: &[u8]) -> Vec<(usize, usize)> {
        // Reported by where they end: sort by start, then merge what touches or overlaps.
        let mut found: Vec<(usize, usize)> =
            self.matcher.find_overlapping_iter(bytes).map(|m| (m.start(), m.end())).collect();
        found.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::with_capacity(found.len());
        for (start, end) in found {
            match runs.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => runs.push((start, end)),
            }
        }
        runs
    }

    /// Whether some value holds a newline (and can only be found across lines).
    pub fn spans_lines(&self) -> bool {
        self.values.iter().any(|v| v.contains(&b'\n'))
    }

    /// `bytes` with every value masked.
    pub fn redact(&self, bytes: &[u8]) -> Vec<u8> {
        mask_until(bytes, &self.covered(bytes), bytes.len()).0
    }

    pub fn redact_str(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.redact(s.as_bytes())).into_owned()
    }

    /// Every string (and key) of a JSON value masked: a value that a tool escaped when it
    /// wrote the JSON is found once parsed.
    pub fn redact_json(&self, v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::String(s) => Value::String(self.redact_str(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.redact_json(x)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter().map(|(k, x)| (self.redact_str(&k), self.redact_json(x))).collect(),
            ),
            other => other,
        }
    }

    /// Masks a file in place, streaming (any size, bounded memory), if it holds a value:
    /// temp file and rename, so a crash leaves the old or the masked file.
    pub fn mask_file(&self, path: &Path) -> std::io::Result<()> {
        use std::io::{Read, Write};
        // Read once to look; write only a file that holds a value (most hold none).
        let Ok(file) = std::fs::File::open(path) else { return Ok(()) };
        if self.matcher.stream_find_iter(file).next().is_none() {
            return Ok(());
        }
        let mut input = std::fs::File::open(path)?;
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".masking");
        let tmp = PathBuf::from(tmp_name);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut stream = self.stream();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&stream.push(&buf[..n]))?;
        }
        out.write_all(&stream.finish())?;
        out.flush()?;
        drop(out);
        std::fs::rename(&tmp, path)
    }

    /// A stream redactor for one pipe.
    pub fn stream(&self) -> RedactStream<'_> {
        RedactStream { r: self, pending: Vec::new() }
    }

    /// How many bytes at the end of `bytes` to hold back: the longest tail that could still
    /// become a value.
    fn hold(&self, bytes: &[u8]) -> usize {
        if self.longest > EXACT_HOLD {
            return bytes.len().min(self.longest - 1);
        }
        (1..self.longest.min(bytes.len() + 1))
            .rev()
            .find(|&k| {
                let tail = &bytes[bytes.len() - k..];
                self.values.iter().any(|v| v.len() > k && v.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

/// `bytes[..cut]` with the covered runs masked; a run that crosses `cut` is masked whole
/// and the returned end is where it ends.
fn mask_until(bytes: &[u8], runs: &[(usize, usize)], cut: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(cut);
    let mut at = 0;
    for &(start, end) in runs {
        if start >= cut {
            break;
        }
        out.extend_from_slice(&bytes[at..start]);
        out.extend_from_slice(MASK.as_bytes());
        at = end;
    }
    let end = at.max(cut);
    if at < cut {
        out.extend_from_slice(&bytes[at..cut]);
    }
    (out, end)
}

/// Redacts a byte stream that arrives in pieces: the end of what came so far that could
/// still become a secret is held back until the next piece shows whether it does.
pub struct RedactStream<'a> {
    r: &'a Redactor,
    pending: Vec<u8>,
}

impl RedactStream<'_> {
    /// Takes the next piece; returns what can be written now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let cut = self.pending.len() - self.r.hold(&self.pending);
        let runs = self.r.covered(&self.pending);
        let (ready, end) = mask_until(&self.pending, &runs, cut);
        self.pending.drain(..end);
        ready
    }

    /// At the end of the stream: everything left.
    pub fn finish(self) -> Vec<u8> {
        self.r.redact(&self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(["s3cr3t-token", "tok"].into_iter()).expect("values")
    }

    #[test]
    fn whole_values_are_masked_longest_first() {
        assert_eq!(r().redact_str("a s3cr3t-token b tok c"), "a *** b *** c");
        assert_eq!(r().redact_str("nothing here"), "nothing here");
        assert!(Redactor::new(["", ""].into_iter()).is_none());
    }

    #[test]
    fn a_value_split_across_pieces_is_masked_at_every_split_point() {
        let text = b"before s3cr3t-token middle tok after s3cr3t-token";
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let red = r();
                let mut s = red.stream();
                let mut out = s.push(&text[..cut]);
                out.extend(s.push(&text[cut..cut2]));
                out.extend(s.push(&text[cut2..]));
                out.extend(s.finish());
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    "before *** middle *** after ***",
                    "cuts at {cut} and {cut2}"
                );
            }
        }
    }

    #[test]
    fn overlapping_values_and_json_are_masked_whole() {
        let red = Redactor::new(["abc123", "123xyz"].into_iter()).expect("values");
        assert_eq!(red.redact_str("-abc123xyz-"), "-***-");
        let v = serde_json::json!({"t": "x abc123 y", "abc123": [1, "123xyz"]});
        assert_eq!(red.redact_json(v), serde_json::json!({"t": "x *** y", "***": [1, "***"]}));
    }

    #[test]
    fn long_values_stream_in_linear_time() {
        let long = format!("{}y", "x".repeat(100_000));
        let started = std::time::Instant::now();
        let red = Redactor::new([long.as_str()].into_iter()).expect("values");
        let mut s = red.stream();
        let mut out = 0;
        for _ in 0..20 {
            out += s.push(&[b'x'; 65536]).len();
        }
        out += s.finish().len();
        assert_eq!(out, 20 * 65536);
        // Generous: quadratic work here takes minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    }

    #[test]
    fn byte_by_byte_and_nothing_held_back_without_a_prefix() {
        let red = r();
        let mut s = red.stream();
        let mut out = Vec::new();
        for b in b"xs3cr3t-tokenx" {
            out.extend(s.push(&[*b]));
        }
        out.extend(s.finish());
        assert_eq!(out, b"x***x");
        let mut s = red.stream();
        assert_eq!(s.push(b"plain line\n"), b"plain line\n", "no prefix of a value at the end: nothing held");
    }

    #[test]
    fn env_files_are_read_and_missing_secrets_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        std::fs::write(&path, "# comment\nAPI_TOKEN=abc123\nexport DB_PASSWORD=\"p w\"\n").expect("write");
        let mut s = Secrets::from_env_file(Some(&path)).expect("parses");
        s.resolve(&["API_TOKEN".into(), "DB_PASSWORD".into()]).expect("resolves");
        assert_eq!((s.get("API_TOKEN"), s.get("DB_PASSWORD")), (Some("abc123"), Some("p w")));
        let e = s.resolve(&["RUNNER_TEST_SURELY_UNSET_1".into(), "RUNNER_TEST_SURELY_UNSET_2".into()]);
        let msg = e.expect_err("missing").to_string();
        assert!(
            msg.contains("secrets `RUNNER_TEST_SURELY_UNSET_1`, `RUNNER_TEST_SURELY_UNSET_2` not set"),
            "{msg}"
        );
        assert!(!format!("{s:?}").contains("abc123"), "Debug shows names only");
        std::fs::write(&path, "GOOD=1\nT=hunter2 with \"quote\n").expect("write");
        let e = Secrets::from_env_file(Some(&path)).expect_err("bad line").to_string();
        assert!(e.contains(".env") && e.contains("entry 2"), "{e}");
        assert!(!e.contains("hunter2"), "a bad line is not echoed: {e}");
    }
}

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
        let iter = dotenvy::from_path_iter(path).map_err(|e| err(e.to_string()))?;
        let mut file = BTreeMap::new();
        for item in iter {
            let (k, v) = item.map_err(|e| err(e.to_string()))?;
            file.insert(k, v);
        }
        Ok(Secrets { file, values: BTreeMap::new() })
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

/// Replaces secret values with [`MASK`].
#[derive(Clone)]
pub struct Redactor {
    /// Longest first, so a value that contains another is masked whole.
    values: Vec<Vec<u8>>,
    longest: usize,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

impl Redactor {
    pub fn new<'a>(values: impl Iterator<Item = &'a str>) -> Option<Redactor> {
        let mut values: Vec<Vec<u8>> =
            values.filter(|v| !v.is_empty()).map(|v| v.as_bytes().to_vec()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        let longest = values[0].len();
        Some(Redactor { values, longest })
    }

    /// `bytes` with every whole value masked.
    pub fn redact(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        'scan: while i < bytes.len() {
            for v in &self.values {
                if bytes[i..].starts_with(v) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += v.len();
                    continue 'scan;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        out
    }

    pub fn redact_str(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.redact(s.as_bytes())).into_owned()
    }

    pub fn contains_secret(&self, bytes: &[u8]) -> bool {
        self.values.iter().any(|v| bytes.windows(v.len()).any(|w| w == v.as_slice()))
    }

    /// A stream redactor for one pipe.
    pub fn stream(&self) -> RedactStream<'_> {
        RedactStream { r: self, pending: Vec::new() }
    }
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
        // Hold back the longest tail that is a proper prefix of some value.
        let hold = (1..self.r.longest.min(self.pending.len() + 1))
            .rev()
            .find(|&k| {
                let tail = &self.pending[self.pending.len() - k..];
                self.r.values.iter().any(|v| v.len() > k && v.starts_with(tail))
            })
            .unwrap_or(0);
        let ready_len = self.pending.len() - hold;
        // A value may start in the ready part and end in the held part: mask whole values
        // over everything, then cut at the same point of the input.
        let (ready, rest) = split_redacted(self.r, &self.pending, ready_len);
        self.pending = rest;
        ready
    }

    /// At the end of the stream: everything left.
    pub fn finish(self) -> Vec<u8> {
        self.r.redact(&self.pending)
    }
}

/// Redacts `bytes[..cut]` as part of `bytes`: a value that starts before `cut` and runs
/// past it is masked in the ready part, and the rest of it is dropped from what is kept.
fn split_redacted(r: &Redactor, bytes: &[u8], cut: usize) -> (Vec<u8>, Vec<u8>) {
    let mut out = Vec::with_capacity(cut);
    let mut i = 0;
    'scan: while i < cut {
        for v in &r.values {
            if bytes[i..].starts_with(v) {
                out.extend_from_slice(MASK.as_bytes());
                i += v.len();
                continue 'scan;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    (out, bytes[i.max(cut)..].to_vec())
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
        std::fs::write(&path, "GOOD=1\nBAD LINE\n").expect("write");
        let e = Secrets::from_env_file(Some(&path)).expect_err("bad line").to_string();
        assert!(e.contains(".env"), "{e}");
    }
}

//! What a step leaves for its successors: its outputs and its handoff.
//!
//! A step attempt writes outputs to `$RUNNER_OUTPUT` in the format of GitHub Actions'
//! `$GITHUB_OUTPUT` (`key=value` lines and `key<<DELIMITER` heredocs), because that is the
//! format CI users already know, and may write a handoff for the next step: a markdown
//! document in `$RUNNER_HANDOFF` and a JSON object in `$RUNNER_HANDOFF_META`. The runner
//! reads them after the command exits. The step is untrusted input here: every file is read
//! with a bound (a runaway `yes >> $RUNNER_OUTPUT` must not exhaust memory) and every error
//! names the file, and the line where one applies, so the author can fix it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The largest outputs file accepted (1 MiB); outputs are small values, not artefacts.
pub const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// The largest single value (100 KiB): outputs reach later steps as environment variables,
/// and Linux caps one `NAME=value` string at 128 KiB.
pub const MAX_VALUE_BYTES: usize = 100 * 1024;
/// The largest handoff document accepted (1 MiB).
pub const MAX_HANDOFF_BYTES: u64 = 1024 * 1024;
/// The largest handoff metadata file accepted (64 KiB).
pub const MAX_HANDOFF_META_BYTES: u64 = 64 * 1024;

/// The longest output name, in bytes.
const MAX_KEY_BYTES: usize = 128;
/// How [`valid_key`] is explained in errors.
const KEY_RULE: &str = "use `[A-Za-z_][A-Za-z0-9_-]*`, at most 128 bytes";
/// How much of an offending key an error quotes: a stray `=` deep in a long line would
/// otherwise paste the whole line into the message.
const KEY_QUOTE_CHARS: usize = 80;

/// Why a step's outputs or handoff could not be read. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is larger than 1 MiB, the limit for a step's outputs", .path.display())]
    OutputsTooLarge { path: PathBuf },
    #[error("{}: line {line} is not UTF-8", .path.display())]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{}: line {line}: expected `key=value` or `key<<DELIMITER`", .path.display())]
    Malformed { path: PathBuf, line: usize },
    #[error("{}: line {line}: invalid output name {}: {KEY_RULE}", .path.display(), quote_key(.key))]
    InvalidKey { path: PathBuf, line: usize, key: String },
    #[error(
        "{}: line {line}: `{key}<<` needs a delimiter, as in `{key}<<EOF`, ended by a line `EOF`",
        .path.display()
    )]
    EmptyDelimiter { path: PathBuf, line: usize, key: String },
    #[error(
        "{}: line {line}: the value of `{key}` started here is never ended by a line `{delimiter}`",
        .path.display()
    )]
    UnterminatedHeredoc { path: PathBuf, line: usize, key: String, delimiter: String },
    #[error(
        "{}: line {line}: the value of `{key}` is {size} bytes, more than the limit of 100 KiB \
         ({MAX_VALUE_BYTES} bytes) for one value, because outputs are passed to later steps \
         as environment variables",
        .path.display()
    )]
    ValueTooLarge { path: PathBuf, line: usize, key: String, size: usize },
    #[error("{} is larger than 1 MiB, the limit for a handoff document", .path.display())]
    HandoffTooLarge { path: PathBuf },
    #[error("{}: line {line} of the handoff document is not UTF-8", .path.display())]
    HandoffNotUtf8 { path: PathBuf, line: usize },
    #[error("{} is larger than 64 KiB, the limit for handoff metadata", .path.display())]
    HandoffMetaTooLarge { path: PathBuf },
    #[error("{}: handoff metadata is not valid JSON: {source}", .path.display())]
    HandoffMetaJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: handoff metadata must be a JSON object, not {found}", .path.display())]
    HandoffMetaNotObject { path: PathBuf, found: &'static str },
}

/// Reads the outputs a step wrote to `path`.
///
/// A missing file means the step wrote no outputs, so it is an empty map. At most
/// `MAX_OUTPUT_BYTES + 1` bytes are read (never the whole of a huge file): one byte over
/// is enough to know the file is too large.
pub fn read_outputs(path: &Path) -> Result<BTreeMap<String, String>, OutputsError> {
    match read_bounded(path, MAX_OUTPUT_BYTES)? {
        None => Ok(BTreeMap::new()),
        Some(bytes) => parse_outputs(path, &bytes),
    }
}

/// Parses the outputs format; `path` only names the file in errors.
///
/// Rules, as for `$GITHUB_OUTPUT`: `key=value` takes everything after the first `=`;
/// `key<<DELIM` takes the following lines up to one exactly equal to `DELIM`, joined with
/// `\n`. Whichever of `=` and `<<` comes first decides the form, so `a=x<<y` is a plain
/// value and `a<<X=Y` a heredoc ended by `X=Y`. A trailing `\r` is stripped from every
/// line (CRLF files), blank lines outside heredocs are ignored, and later keys override
/// earlier ones.
pub fn parse_outputs(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, String>, OutputsError> {
    if bytes.len() as u64 > MAX_OUTPUT_BYTES {
        return Err(OutputsError::OutputsTooLarge { path: path.to_owned() });
    }
    let mut lines = Lines { path, rest: bytes, number: 0 };
    let mut outputs = BTreeMap::new();
    while let Some((number, line)) = lines.next_line()? {
        if line.trim().is_empty() {
            continue;
        }
        let equals = line.find('=');
        let heredoc = line.find("<<");
        let (key, value) = match (equals, heredoc) {
            (Some(e), h) if h.is_none_or(|h| e < h) => {
                let key = checked_key(path, number, &line[..e])?;
                (key, line[e + 1..].to_owned())
            }
            (_, Some(h)) => {
                let key = checked_key(path, number, &line[..h])?;
                let delimiter = &line[h + 2..];
                if delimiter.is_empty() {
                    return Err(OutputsError::EmptyDelimiter {
                        path: path.to_owned(),
                        line: number,
                        key: key.to_owned(),
                    });
                }
                (key, read_heredoc(&mut lines, number, key, delimiter)?)
            }
            _ => return Err(OutputsError::Malformed { path: path.to_owned(), line: number }),
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(OutputsError::ValueTooLarge {
                path: path.to_owned(),
                line: number,
                key: key.to_owned(),
                size: value.len(),
            });
        }
        outputs.insert(key.to_owned(), value);
    }
    Ok(outputs)
}

/// The body of a heredoc that started on line `start`, up to its closing `delimiter` line.
fn read_heredoc(
    lines: &mut Lines<'_>,
    start: usize,
    key: &str,
    delimiter: &str,
) -> Result<String, OutputsError> {
    let mut value = String::new();
    let mut first = true;
    while let Some((_, line)) = lines.next_line()? {
        if line == delimiter {
            return Ok(value);
        }
        if !first {
            value.push('\n');
        }
        value.push_str(line);
        first = false;
    }
    Err(OutputsError::UnterminatedHeredoc {
        path: lines.path.to_owned(),
        line: start,
        key: key.to_owned(),
        delimiter: delimiter.to_owned(),
    })
}

/// Numbered UTF-8 lines, `\n`-terminated with an optional `\r` before it; the last may
/// lack its newline.
struct Lines<'a> {
    path: &'a Path,
    rest: &'a [u8],
    number: usize,
}

impl<'a> Lines<'a> {
    fn next_line(&mut self) -> Result<Option<(usize, &'a str)>, OutputsError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (line, rest) = match self.rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        self.number += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match std::str::from_utf8(line) {
            Ok(line) => Ok(Some((self.number, line))),
            Err(_) => Err(OutputsError::NotUtf8 { path: self.path.to_owned(), line: self.number }),
        }
    }
}

fn checked_key<'k>(path: &Path, line: usize, key: &'k str) -> Result<&'k str, OutputsError> {
    if valid_key(key) {
        Ok(key)
    } else {
        Err(OutputsError::InvalidKey { path: path.to_owned(), line, key: key.to_owned() })
    }
}

/// Whether `key` may name an output: `[A-Za-z_][A-Za-z0-9_-]*`, at most 128 bytes, so that
/// names are safe to show, to store and to turn into environment variable names.
pub fn valid_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    key.len() <= MAX_KEY_BYTES
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An offending key for an error message: escaped, and cut short if long.
fn quote_key(key: &str) -> String {
    match key.char_indices().nth(KEY_QUOTE_CHARS) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &key[..cut], key.len()),
        None => format!("{key:?}"),
    }
}

/// What a step handed to the next: a markdown document and optional JSON metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    pub content_md: String,
    /// Always a JSON object when present.
    pub metadata: Option<serde_json::Value>,
}

/// Reads the handoff a step wrote to `md` (the document) and `meta` (its metadata).
///
/// `Ok(None)` when the step wrote neither: the document is missing or empty and the
/// metadata is missing or empty (whitespace only counts as empty, since it holds no JSON
/// value). Metadata without a document is still a handoff, with empty content, so that a
/// step can pass structured data alone. Both files are read with a bound, as outputs are.
pub fn read_handoff(md: &Path, meta: &Path) -> Result<Option<Handoff>, OutputsError> {
    let content = read_bounded(md, MAX_HANDOFF_BYTES)?.unwrap_or_default();
    if content.len() as u64 > MAX_HANDOFF_BYTES {
        return Err(OutputsError::HandoffTooLarge { path: md.to_owned() });
    }
    let content_md = String::from_utf8(content).map_err(|e| {
        let bytes = e.as_bytes();
        let valid = e.utf8_error().valid_up_to();
        let line = 1 + bytes[..valid].iter().filter(|&&b| b == b'\n').count();
        OutputsError::HandoffNotUtf8 { path: md.to_owned(), line }
    })?;

    let meta_bytes = read_bounded(meta, MAX_HANDOFF_META_BYTES)?.unwrap_or_default();
    if meta_bytes.len() as u64 > MAX_HANDOFF_META_BYTES {
        return Err(OutputsError::HandoffMetaTooLarge { path: meta.to_owned() });
    }
    let metadata = if meta_bytes.trim_ascii().is_empty() {
        None
    } else {
        let value: serde_json::Value = serde_json::from_slice(&meta_bytes)
            .map_err(|source| OutputsError::HandoffMetaJson { path: meta.to_owned(), source })?;
        let found = match &value {
            serde_json::Value::Object(_) => None,
            serde_json::Value::Null => Some("null"),
            serde_json::Value::Bool(_) => Some("a boolean"),
            serde_json::Value::Number(_) => Some("a number"),
            serde_json::Value::String(_) => Some("a string"),
            serde_json::Value::Array(_) => Some("an array"),
        };
        if let Some(found) = found {
            return Err(OutputsError::HandoffMetaNotObject { path: meta.to_owned(), found });
        }
        Some(value)
    };

    if content_md.is_empty() && metadata.is_none() {
        return Ok(None);
    }
    Ok(Some(Handoff { content_md, metadata }))
}

/// The first `limit + 1` bytes of `path`, or `None` if it does not exist. The extra byte
/// tells the caller the file is over the limit without reading the rest of it.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, OutputsError> {
    let io_error = |source| OutputsError::Io { path: path.to_owned(), source };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    read_limited(file, limit).map(Some).map_err(io_error)
}

fn read_limited(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;

    fn parse(text: impl AsRef<[u8]>) -> Result<BTreeMap<String, String>, OutputsError> {
        parse_outputs(Path::new("out.txt"), text.as_ref())
    }

    fn ok(text: impl AsRef<[u8]>) -> BTreeMap<String, String> {
        parse(text).expect("valid outputs")
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn err(text: impl AsRef<[u8]>) -> OutputsError {
        match parse(text) {
            Ok(m) => panic!("expected an error, got {m:?}"),
            Err(e) => e,
        }
    }

    // ---- outputs: accepted forms ----------------------------------------------------------

    #[test]
    fn key_value_lines() {
        assert_eq!(ok("a=1\nb_2=two words\n"), map(&[("a", "1"), ("b_2", "two words")]));
    }

    #[test]
    fn the_value_is_everything_after_the_first_equals() {
        assert_eq!(ok("url=https://x?a=1&b==2=\n"), map(&[("url", "https://x?a=1&b==2=")]));
    }

    #[test]
    fn values_may_be_empty() {
        assert_eq!(ok("empty=\nalso<<EOF\nEOF\n"), map(&[("empty", ""), ("also", "")]));
    }

    #[test]
    fn values_keep_their_spaces() {
        assert_eq!(ok("a=  padded  \n"), map(&[("a", "  padded  ")]));
    }

    #[test]
    fn a_heredoc_joins_its_lines_without_a_trailing_newline() {
        let text = "notes<<EOF\nfirst = line\n\n  \nx<<EOF2\nlast\nEOF\nafter=1\n";
        assert_eq!(ok(text), map(&[("notes", "first = line\n\n  \nx<<EOF2\nlast"), ("after", "1")]));
    }

    #[test]
    fn a_heredoc_keeps_a_trailing_empty_line() {
        assert_eq!(ok("k<<END\na\n\nEND"), map(&[("k", "a\n")]));
    }

    #[test]
    fn the_delimiter_line_must_match_exactly() {
        assert_eq!(ok("k<<EOF\n EOF\nEOF \nEOFX\nEOF\n"), map(&[("k", " EOF\nEOF \nEOFX")]));
    }

    #[test]
    fn whichever_of_equals_and_heredoc_comes_first_decides() {
        assert_eq!(ok("a=x<<y\n"), map(&[("a", "x<<y")]));
        assert_eq!(ok("a<<X=Y\nbody\nX=Y\n"), map(&[("a", "body")]));
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let text = "a=1\r\nb<<E\r\nx\r\ny\r\nE\r\nc=\r\n";
        assert_eq!(ok(text), map(&[("a", "1"), ("b", "x\ny"), ("c", "")]));
    }

    #[test]
    fn a_carriage_return_inside_a_line_is_kept() {
        assert_eq!(ok("a=x\ry\n"), map(&[("a", "x\ry")]));
    }

    #[test]
    fn the_last_line_may_lack_its_newline() {
        assert_eq!(ok("a=1\nb=2"), map(&[("a", "1"), ("b", "2")]));
        assert_eq!(ok("a<<EOF\nv\nEOF"), map(&[("a", "v")]));
    }

    #[test]
    fn blank_and_whitespace_only_lines_are_ignored() {
        assert_eq!(ok("\n\n  \n\t\r\na=1\n \n"), map(&[("a", "1")]));
        assert_eq!(ok(""), BTreeMap::new());
        assert_eq!(ok("\n"), BTreeMap::new());
    }

    #[test]
    fn later_keys_override_earlier_ones() {
        assert_eq!(ok("a=1\nb=x\na=2\n"), map(&[("a", "2"), ("b", "x")]));
        assert_eq!(ok("a=1\na<<E\nmulti\nline\nE\n"), map(&[("a", "multi\nline")]));
        assert_eq!(ok("a<<E\nv\nE\na=\n"), map(&[("a", "")]));
    }

    #[test]
    fn unicode_values() {
        assert_eq!(ok("greeting=héllo wörld 🎉\n"), map(&[("greeting", "héllo wörld 🎉")]));
    }

    // ---- outputs: errors --------------------------------------------------------------------

    #[test]
    fn a_line_of_neither_form_is_named_by_number() {
        let e = err("a=1\nb=2\nnonsense\n");
        assert!(matches!(e, OutputsError::Malformed { line: 3, .. }), "{e:?}");
        assert_eq!(e.to_string(), "out.txt: line 3: expected `key=value` or `key<<DELIMITER`");
        assert!(matches!(err("a<b\n"), OutputsError::Malformed { line: 1, .. }));
    }

    #[test]
    fn invalid_keys_are_rejected_with_the_key_and_the_rule() {
        for (text, key) in [
            (" a=1", " a"),
            ("1a=2", "1a"),
            ("a b=1", "a b"),
            ("=x", ""),
            ("é=1", "é"),
            ("-a<<EOF\nEOF", "-a"),
            ("a.b=1", "a.b"),
        ] {
            let e = err(format!("ok=1\n{text}\n"));
            match &e {
                OutputsError::InvalidKey { line: 2, key: k, .. } => assert_eq!(k, key),
                other => panic!("{text:?}: {other:?}"),
            }
            let message = e.to_string();
            assert!(message.starts_with("out.txt: line 2: "), "{message}");
            assert!(message.contains(&format!("{key:?}")), "{message}");
            assert!(message.contains("[A-Za-z_][A-Za-z0-9_-]*"), "{message}");
        }
    }

    #[test]
    fn a_long_invalid_key_is_quoted_shortly() {
        let key = "x ".repeat(5000);
        let message = err(format!("{key}=v")).to_string();
        assert!(message.len() < 400, "{message}");
        assert!(message.contains("(10000 bytes)"), "{message}");
    }

    #[test]
    fn keys_longer_than_128_bytes_are_rejected() {
        let k128 = "k".repeat(128);
        assert_eq!(ok(format!("{k128}=v")), map(&[(&k128, "v")]));
        let k129 = "k".repeat(129);
        assert!(matches!(err(format!("{k129}=v")), OutputsError::InvalidKey { line: 1, .. }));
    }

    #[test]
    fn valid_key_rules() {
        for good in ["a", "_", "A_b-c9", "_9", "x-", &"k".repeat(128)] {
            assert!(valid_key(good), "{good:?}");
        }
        for bad in ["", "9a", "-a", "a b", "a=b", "a.b", "ä", "a\n", &"k".repeat(129)] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_unterminated_heredoc_names_the_line_it_started_on() {
        let e = err("a=1\n\nnotes<<EOF\nx\nEOF \n");
        assert!(
            matches!(&e, OutputsError::UnterminatedHeredoc { line: 3, key, delimiter, .. }
                if key == "notes" && delimiter == "EOF"),
            "{e:?}"
        );
        let message = e.to_string();
        assert!(message.starts_with("out.txt: line 3: "), "{message}");
        assert!(message.contains("`notes`") && message.contains("`EOF`"), "{message}");
        assert!(matches!(err("k<<EOF"), OutputsError::UnterminatedHeredoc { line: 1, .. }));
    }

    #[test]
    fn a_heredoc_needs_a_delimiter() {
        let e = err("a=1\nk<<\nx\n\n");
        assert!(matches!(e, OutputsError::EmptyDelimiter { line: 2, .. }), "{e:?}");
        assert!(e.to_string().starts_with("out.txt: line 2: "), "{e}");
    }

    #[test]
    fn non_utf8_is_reported_with_its_line() {
        let e = err(b"a=1\nb=\xff\n");
        assert!(matches!(e, OutputsError::NotUtf8 { line: 2, .. }), "{e:?}");
        assert_eq!(e.to_string(), "out.txt: line 2 is not UTF-8");
        assert!(matches!(err(b"k<<E\nok\n\xc3(\nE\n"), OutputsError::NotUtf8 { line: 3, .. }));
    }

    #[test]
    fn values_over_the_limit_are_rejected_with_key_and_size() {
        let at_limit = "v".repeat(MAX_VALUE_BYTES);
        assert_eq!(ok(format!("k={at_limit}\n"))["k"].len(), MAX_VALUE_BYTES);

        let over = "v".repeat(MAX_VALUE_BYTES + 1);
        let e = err(format!("a=1\nbig={over}\n"));
        assert!(
            matches!(&e, OutputsError::ValueTooLarge { line: 2, key, size, .. }
                if key == "big" && *size == MAX_VALUE_BYTES + 1),
            "{e:?}"
        );
        let message = e.to_string();
        assert!(message.starts_with("out.txt: line 2: "), "{message}");
        assert!(message.contains("`big`") && message.contains("102401 bytes"), "{message}");
    }

    #[test]
    fn a_heredoc_value_counts_its_joining_newlines() {
        // Two lines of half the limit each plus the newline between them: one byte over.
        let half = "v".repeat(MAX_VALUE_BYTES / 2);
        let e = err(format!("k<<EOF\n{half}\n{half}\nEOF\n"));
        assert!(
            matches!(e, OutputsError::ValueTooLarge { line: 1, size, .. } if size == MAX_VALUE_BYTES + 1),
            "{e:?}"
        );
    }

    #[test]
    fn outputs_of_exactly_the_limit_are_accepted_and_one_byte_more_is_not() {
        let limit = usize::try_from(MAX_OUTPUT_BYTES).expect("fits");
        assert_eq!(ok(vec![b'\n'; limit]), BTreeMap::new());
        let e = err(vec![b'\n'; limit + 1]);
        assert!(matches!(e, OutputsError::OutputsTooLarge { .. }), "{e:?}");
        assert_eq!(e.to_string(), "out.txt is larger than 1 MiB, the limit for a step's outputs");
    }

    #[test]
    fn the_limits_match_their_messages() {
        assert_eq!(MAX_OUTPUT_BYTES, 1 << 20);
        assert_eq!(MAX_VALUE_BYTES, 100 << 10);
        assert_eq!(MAX_HANDOFF_BYTES, 1 << 20);
        assert_eq!(MAX_HANDOFF_META_BYTES, 64 << 10);
    }

    // ---- outputs: reading the file ----------------------------------------------------------

    #[test]
    fn a_missing_outputs_file_is_no_outputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_outputs(&dir.path().join("absent")).expect("ok"), BTreeMap::new());
    }

    #[test]
    fn read_outputs_parses_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        fs::write(&path, "a=1\nb<<EOF\nx\nEOF\n").expect("write");
        assert_eq!(read_outputs(&path).expect("ok"), map(&[("a", "1"), ("b", "x")]));

        fs::write(&path, "a=1\nbroken\n").expect("write");
        let message = read_outputs(&path).expect_err("malformed").to_string();
        assert!(message.starts_with(&format!("{}: line 2: ", path.display())), "{message}");
    }

    #[test]
    fn other_io_errors_are_reported_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Opening a directory succeeds on Linux; reading it fails.
        let e = read_outputs(dir.path()).expect_err("a directory is not an outputs file");
        assert!(matches!(e, OutputsError::Io { .. }), "{e:?}");
        assert!(e.to_string().starts_with(&format!("cannot read {}: ", dir.path().display())), "{e}");
    }

    #[test]
    fn a_huge_outputs_file_is_rejected_without_reading_it_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        // 64 GiB, sparse: reading it whole would exhaust memory or time.
        File::create(&path).expect("create").set_len(64 << 30).expect("set_len");
        let e = read_outputs(&path).expect_err("too large");
        assert!(matches!(e, OutputsError::OutputsTooLarge { .. }), "{e:?}");
        assert!(e.to_string().starts_with(&path.display().to_string()), "{e}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_endless_outputs_file_is_rejected() {
        let e = read_outputs(Path::new("/dev/zero")).expect_err("too large");
        assert!(matches!(e, OutputsError::OutputsTooLarge { .. }), "{e:?}");
    }

    /// An endless reader that counts the bytes it hands out.
    struct Endless<'a>(&'a mut u64);

    impl Read for Endless<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(b'\n');
            *self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn reading_stops_one_byte_past_the_limit() {
        let mut pulled = 0;
        let bytes = read_limited(Endless(&mut pulled), MAX_OUTPUT_BYTES).expect("read");
        assert_eq!(bytes.len() as u64, MAX_OUTPUT_BYTES + 1);
        assert_eq!(pulled, MAX_OUTPUT_BYTES + 1);
    }

    // ---- handoff ----------------------------------------------------------------------------

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Files { dir: tempfile::tempdir().expect("tempdir") }
        }
        fn md(&self) -> PathBuf {
            self.dir.path().join("handoff.md")
        }
        fn meta(&self) -> PathBuf {
            self.dir.path().join("handoff.json")
        }
        fn write_md(&self, bytes: impl AsRef<[u8]>) -> &Self {
            fs::write(self.md(), bytes).expect("write md");
            self
        }
        fn write_meta(&self, bytes: impl AsRef<[u8]>) -> &Self {
            fs::write(self.meta(), bytes).expect("write meta");
            self
        }
        fn read(&self) -> Result<Option<Handoff>, OutputsError> {
            read_handoff(&self.md(), &self.meta())
        }
    }

    #[test]
    fn no_files_or_empty_files_are_no_handoff() {
        let f = Files::new();
        assert_eq!(f.read().expect("ok"), None);
        f.write_md("");
        assert_eq!(f.read().expect("ok"), None);
        f.write_meta("");
        assert_eq!(f.read().expect("ok"), None);
        f.write_meta(" \n\t");
        assert_eq!(f.read().expect("ok"), None);
    }

    #[test]
    fn a_document_alone_is_a_handoff() {
        let f = Files::new();
        f.write_md("# Done\n\nAll good.\n");
        let expected = Handoff { content_md: "# Done\n\nAll good.\n".into(), metadata: None };
        assert_eq!(f.read().expect("ok"), Some(expected.clone()));
        f.write_meta("");
        assert_eq!(f.read().expect("ok"), Some(expected));
    }

    #[test]
    fn metadata_alone_is_a_handoff_with_empty_content() {
        let f = Files::new();
        f.write_meta(r#"{"rows": 3}"#);
        let expected = Handoff { content_md: String::new(), metadata: Some(serde_json::json!({"rows": 3})) };
        assert_eq!(f.read().expect("ok"), Some(expected));
    }

    #[test]
    fn document_and_metadata_together() {
        let f = Files::new();
        f.write_md("notes").write_meta("{\"a\": [1, {\"b\": null}]}\n");
        let expected = Handoff {
            content_md: "notes".into(),
            metadata: Some(serde_json::json!({"a": [1, {"b": null}]})),
        };
        assert_eq!(f.read().expect("ok"), Some(expected));
    }

    #[test]
    fn metadata_must_be_a_json_object() {
        let f = Files::new();
        f.write_md("doc");
        for (json, found) in [
            ("[1]", "an array"),
            ("\"s\"", "a string"),
            ("1", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            f.write_meta(json);
            let e = f.read().expect_err("not an object");
            assert!(matches!(e, OutputsError::HandoffMetaNotObject { found: f2, .. } if f2 == found));
            let message = e.to_string();
            assert!(message.starts_with(&f.meta().display().to_string()), "{message}");
            assert!(message.ends_with(&format!("must be a JSON object, not {found}")), "{message}");
        }
    }

    #[test]
    fn invalid_metadata_json_names_the_file() {
        let f = Files::new();
        for bad in ["{", "{\"a\": 1} trailing", "{'a': 1}", "\u{feff}{}"] {
            f.write_meta(bad);
            let e = f.read().expect_err("invalid JSON");
            assert!(matches!(e, OutputsError::HandoffMetaJson { .. }), "{bad:?}: {e:?}");
            let message = e.to_string();
            assert!(message.starts_with(&f.meta().display().to_string()), "{message}");
            assert!(message.contains("not valid JSON"), "{message}");
        }
        f.write_meta(b"{\"a\": \"\xff\"}");
        assert!(matches!(f.read(), Err(OutputsError::HandoffMetaJson { .. })));
    }

    #[test]
    fn a_non_utf8_document_names_the_file_and_line() {
        let f = Files::new();
        f.write_md(b"line one\nline two\nbad \xff here\n");
        let e = f.read().expect_err("not UTF-8");
        assert!(matches!(e, OutputsError::HandoffNotUtf8 { line: 3, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("{}: line 3 of the handoff document is not UTF-8", f.md().display())
        );
    }

    #[test]
    fn handoff_documents_are_bounded() {
        let f = Files::new();
        let limit = usize::try_from(MAX_HANDOFF_BYTES).expect("fits");
        f.write_md(vec![b'x'; limit]);
        assert_eq!(f.read().expect("at the limit").map(|h| h.content_md.len()), Some(limit));
        f.write_md(vec![b'x'; limit + 1]);
        let e = f.read().expect_err("over the limit");
        assert!(matches!(e, OutputsError::HandoffTooLarge { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("{} is larger than 1 MiB, the limit for a handoff document", f.md().display())
        );
        // Huge and sparse: rejected without reading it whole.
        File::create(f.md()).expect("create").set_len(64 << 30).expect("set_len");
        assert!(matches!(f.read(), Err(OutputsError::HandoffTooLarge { .. })));
    }

    #[test]
    fn handoff_metadata_is_bounded() {
        let f = Files::new();
        let limit = usize::try_from(MAX_HANDOFF_META_BYTES).expect("fits");
        let padded = |len: usize| format!("{{}}{}", " ".repeat(len - 2));
        f.write_meta(padded(limit));
        assert_eq!(f.read().expect("at the limit").and_then(|h| h.metadata), Some(serde_json::json!({})));
        f.write_meta(padded(limit + 1));
        let e = f.read().expect_err("over the limit");
        assert!(matches!(e, OutputsError::HandoffMetaTooLarge { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("{} is larger than 64 KiB, the limit for handoff metadata", f.meta().display())
        );
        File::create(f.meta()).expect("create").set_len(64 << 30).expect("set_len");
        assert!(matches!(f.read(), Err(OutputsError::HandoffMetaTooLarge { .. })));
    }

    #[test]
    fn handoff_io_errors_name_the_file() {
        let f = Files::new();
        fs::create_dir(f.md()).expect("mkdir");
        let e = f.read().expect_err("a directory");
        assert!(e.to_string().starts_with(&format!("cannot read {}: ", f.md().display())), "{e}");
    }

    // ---- properties -------------------------------------------------------------------------

    /// Bytes built from the format's own tokens, so that generated input reaches deep paths
    /// (heredocs, CRLF, bad keys, stray bytes) far more often than uniform bytes would.
    fn token_soup() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(b"=".to_vec()),
            Just(b"<<".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"EOF".to_vec()),
            Just(b"key".to_vec()),
            Just(b" ".to_vec()),
            Just(b"-".to_vec()),
            Just("é".as_bytes().to_vec()),
            Just(b"\xff".to_vec()),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        proptest::collection::vec(token, 0..60).prop_map(|t| t.concat())
    }

    fn check_invariants(result: Result<BTreeMap<String, String>, OutputsError>) -> Result<(), TestCaseError> {
        match result {
            Ok(outputs) => {
                for (key, value) in &outputs {
                    prop_assert!(valid_key(key), "{key:?}");
                    prop_assert!(value.len() <= MAX_VALUE_BYTES);
                }
            }
            Err(e) => prop_assert!(e.to_string().starts_with("out.txt"), "{e}"),
        }
        Ok(())
    }

    fn key() -> impl Strategy<Value = String> {
        "[A-Za-z_][A-Za-z0-9_-]{0,127}"
    }

    /// Values with `=`, `<<`, newlines, stray `\r`, unicode and delimiter look-alikes. A `\r`
    /// right before a line end is left out: it cannot be told from a CRLF line ending.
    fn value() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("=".to_owned()),
            Just("<<".to_owned()),
            Just("\n".to_owned()),
            Just("\r".to_owned()),
            Just(" ".to_owned()),
            Just("EOF".to_owned()),
            "[a-z]{1,5}",
            any::<char>().prop_map(String::from),
        ];
        proptest::collection::vec(piece, 0..20)
            .prop_map(|p| p.concat())
            .prop_filter("\\r before a line end", |v| !v.contains("\r\n") && !v.ends_with('\r'))
    }

    /// How one entry is written: the file's line ending, whether a single-line value uses a
    /// heredoc anyway, and how many blank lines come before it.
    #[derive(Debug, Clone)]
    struct Style {
        crlf: bool,
        heredoc_anyway: bool,
        blank_lines: usize,
    }

    fn style() -> impl Strategy<Value = Style> {
        (any::<bool>(), any::<bool>(), 0..3usize).prop_map(|(crlf, heredoc_anyway, blank_lines)| Style {
            crlf,
            heredoc_anyway,
            blank_lines,
        })
    }

    fn write_outputs(entries: &[(&String, &String, &Style)], final_newline: bool) -> String {
        let mut out = String::new();
        for (key, value, style) in entries {
            let nl = if style.crlf { "\r\n" } else { "\n" };
            for _ in 0..style.blank_lines {
                out.push_str(if style.crlf { " \r\n" } else { "\n" });
            }
            if value.contains('\n') || style.heredoc_anyway {
                let mut delimiter = "EOF".to_owned();
                while value.contains(&delimiter) {
                    delimiter.push('_');
                }
                let body = value.replace('\n', nl);
                out.push_str(&format!("{key}<<{delimiter}{nl}{body}{nl}{delimiter}{nl}"));
            } else {
                out.push_str(&format!("{key}={value}{nl}"));
            }
        }
        if !final_newline {
            let trimmed = out.trim_end_matches(['\r', '\n']).len();
            out.truncate(trimmed);
        }
        out
    }

    /// `cases` unless `PROPTEST_CASES` asks for another number, as in `tests/properties.rs`.
    fn config(cases: u32) -> ProptestConfig {
        let mut config = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = cases;
        }
        config
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            check_invariants(parse(&bytes))?;
        }

        #[test]
        fn token_soup_never_panics(bytes in token_soup()) {
            check_invariants(parse(&bytes))?;
        }

        #[test]
        fn written_outputs_parse_back_to_the_same_map(
            outputs in proptest::collection::btree_map(key(), value(), 0..8),
            styles in proptest::collection::vec(style(), 8),
            final_newline in any::<bool>(),
        ) {
            let entries: Vec<_> =
                outputs.iter().zip(&styles).map(|((k, v), s)| (k, v, s)).collect();
            let text = write_outputs(&entries, final_newline);
            prop_assert_eq!(parse(&text).map_err(|e| e.to_string()), Ok(outputs), "{:?}", text);
        }
    }
}

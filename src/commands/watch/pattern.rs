//! `--on GLOB`: which files `runner watch` reacts to, and which directory it must watch
//! to hear about them.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

use crate::error::Error;

/// A glob relative to the working directory (or absolute), split into the directory that
/// holds every possible match and the matcher itself.
#[derive(Debug)]
pub struct Pattern {
    text: String,
    glob: GlobMatcher,
    root: PathBuf,
    recursive: bool,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, Error> {
        // `./inbox/*.csv` means `inbox/*.csv`: matching is on paths relative to the
        // working directory, which never start with `./`.
        let mut clean = text;
        while let Some(rest) = clean.strip_prefix("./") {
            clean = rest;
        }
        if clean.is_empty() {
            return Err(Error::Usage(format!("--on `{text}`: the pattern is empty")));
        }
        let glob = GlobBuilder::new(clean)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::Usage(format!("--on `{text}`: {e}")))?
            .compile_matcher();
        // The literal directory part before the first metacharacter is all we can watch.
        let literal_end = clean.find(['*', '?', '[', '{']).unwrap_or(clean.len());
        let root_end = clean[..literal_end].rfind('/').map_or(0, |i| i + 1);
        let root = match &clean[..root_end] {
            "" => PathBuf::from("."),
            "/" => PathBuf::from("/"),
            dir => PathBuf::from(dir.trim_end_matches('/')),
        };
        // Matches below the root need watching its subdirectories too.
        let rest = &clean[root_end..];
        let recursive = rest.contains('/') || rest.contains("**");
        Ok(Pattern { text: clean.to_string(), glob, root, recursive })
    }

    /// The directory to watch, relative to the working directory unless absolute.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn recursive(&self) -> bool {
        self.recursive
    }

    /// Whether `path` (absolute, as file notifications name it) matches, seen from `cwd`.
    pub fn matches(&self, path: &Path, cwd: &Path) -> bool {
        if Path::new(&self.text).is_absolute() {
            return self.glob.is_match(path);
        }
        path.strip_prefix(cwd).is_ok_and(|rel| self.glob.is_match(rel))
    }

    /// The files that match now (absolute paths), oldest first: the order they arrived in,
    /// as far as the file system remembers it.
    pub fn scan(&self, cwd: &Path) -> Vec<PathBuf> {
        let root = cwd.join(&self.root);
        let depth = if self.recursive { usize::MAX } else { 1 };
        let mut found: Vec<(Option<std::time::SystemTime>, PathBuf)> = walkdir::WalkDir::new(&root)
            .max_depth(depth)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .filter(|p| self.matches(p, cwd))
            .map(|p| (std::fs::metadata(&p).and_then(|m| m.modified()).ok(), p))
            .collect();
        found.sort();
        found.into_iter().map(|(_, p)| p).collect()
    }
}

/// The run of `flow` for the file at `path`: `<flow>-<12 hex of blake3(canonical path, NUL,
/// content)>`. The same bytes at the same place always give the same id, so a file is
/// processed once however often the watcher restarts; a copy elsewhere or new content is
/// another run. Returns the id and the canonical path.
pub fn run_id_for(flow: &str, path: &Path) -> std::io::Result<(String, PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    let canonical = std::fs::canonicalize(path)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(canonical.as_os_str().as_bytes());
    hasher.update(&[0]);
    hasher.update_reader(std::fs::File::open(&canonical)?)?;
    let hex = hasher.finalize().to_hex();
    let name: String = flow
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(crate::store::MAX_RUN_ID_LEN - 13)
        .collect();
    let name = if name.is_empty() { "run".to_string() } else { name };
    Ok((format!("{name}-{}", &hex[..12]), canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_and_recursion() {
        let p = Pattern::new("inbox/*.csv").expect("valid");
        assert_eq!(p.root(), Path::new("inbox"));
        assert!(!p.recursive());
        let p = Pattern::new("./data/in/**/*.csv").expect("valid");
        assert_eq!(p.root(), Path::new("data/in"));
        assert!(p.recursive());
        let p = Pattern::new("*.csv").expect("valid");
        assert_eq!(p.root(), Path::new("."));
        let p = Pattern::new("in/day-*/x.csv").expect("valid");
        assert_eq!(p.root(), Path::new("in"));
        assert!(p.recursive());
        assert!(Pattern::new("in/[").is_err());
    }

    #[test]
    fn matching_is_relative_to_the_working_directory() {
        let cwd = Path::new("/w");
        let p = Pattern::new("inbox/*.csv").expect("valid");
        assert!(p.matches(Path::new("/w/inbox/a.csv"), cwd));
        assert!(!p.matches(Path::new("/w/inbox/sub/a.csv"), cwd));
        assert!(!p.matches(Path::new("/w/inbox/a.csv.part"), cwd));
        assert!(!p.matches(Path::new("/other/inbox/a.csv"), cwd));
        let p = Pattern::new("inbox/**/*.csv").expect("valid");
        assert!(p.matches(Path::new("/w/inbox/a/b/c.csv"), cwd));
        assert!(p.matches(Path::new("/w/inbox/c.csv"), cwd));
    }

    #[test]
    fn run_ids_follow_path_and_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        std::fs::write(&a, "x").expect("write");
        std::fs::write(&b, "x").expect("write");
        let (id_a, _) = run_id_for("etl.v2", &a).expect("id");
        assert!(id_a.starts_with("etl_v2-"), "{id_a}");
        assert!(crate::store::validate_run_id(&id_a).is_ok());
        assert_eq!(run_id_for("etl.v2", &a).expect("id").0, id_a);
        assert_ne!(run_id_for("etl.v2", &b).expect("id").0, id_a);
        std::fs::write(&a, "y").expect("write");
        assert_ne!(run_id_for("etl.v2", &a).expect("id").0, id_a);
        let long = run_id_for(&"f".repeat(300), &a).expect("id").0;
        assert!(crate::store::validate_run_id(&long).is_ok());
    }
}

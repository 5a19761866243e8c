//! The files a step declares (`inputs`, `outputs`), expanded and hashed into a
//! deterministic list of digests for the step's content-addressed cache key.
//!
//! Patterns are globs relative to the run's working directory, matched against each
//! file's path relative to it with `/` separators (globset, `literal_separator` on): `*`,
//! `?` and `[…]` never cross a `/`, `**` as a whole component crosses any number of
//! directories (`data/**/*.csv` matches `data/a.csv` and `data/x/y/b.csv`, `data/*.csv`
//! only the first), `{a,b}` alternates, `\` escapes. Hidden files match like any other
//! and nothing is ignored (no gitignore logic): the key must cover what the step reads.
//!
//! Only regular files count. The walk enters no symlinked directory (a link to a big tree
//! would silently grow the key, a cycle would never end); a symlink to a file counts as
//! the file it points to, and a dangling one is skipped. The literal part of a pattern
//! (`data/` in `data/**/*.csv`, or a whole literal path) is resolved like any path, links
//! included; it is also where the walk starts, so a pattern under a small folder never
//! walks the whole working directory, and a pattern without `**` or `[…]` is not walked
//! deeper than it has components.
//!
//! The result depends only on the files' relative paths and bytes: sorted by path (byte
//! order of the UTF-8 string), deduplicated, independent of walk order, of the absolute
//! path of the working directory and of mtimes. A file name that is not UTF-8 is an error
//! rather than a lossy name, which could make two files look like one.

use std::fs::File;
use std::io;
use std::path::{Component, Path};

use globset::{GlobBuilder, GlobMatcher};
use rayon::prelude::*;

/// From this size on a file is hashed memory-mapped on all cores (`update_mmap_rayon`);
/// below it, with one thread reading into a buffer. Splitting a small file across threads
/// costs more than it saves, and many small files are spread across threads instead.
pub const LARGE_FILE_BYTES: u64 = 1 << 20;

/// One declared file as hashed: path relative to the working directory with `/`
/// separators. This is what goes into a cache key, so it holds no absolute path or mtime.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub size: u64,
    /// Lowercase hex of the file's BLAKE3 hash.
    pub blake3: String,
}

/// Why declared files could not be expanded or hashed. Every message starts with the
/// pattern as written, so the caller only prefixes the field (``input `data/*.csv`: …``),
/// and names the file by its relative path.
#[derive(Debug, thiserror::Error)]
pub enum FilesetError {
    #[error("`{pattern}`: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("`{pattern}`: {path} is a directory (use `{path}/**` for the files under it)")]
    IsDirectory { pattern: String, path: String },
    #[error("`{pattern}`: {path} is not a regular file")]
    NotAFile { pattern: String, path: String },
    #[error("`{pattern}`: the name of {path} is not UTF-8")]
    NotUtf8 { pattern: String, path: String },
    #[error("`{pattern}`: cannot read {path}: {source}")]
    Io {
        pattern: String,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Checks one pattern when a flow is validated, so a bad one fails before anything runs:
/// not empty, relative (no leading `/`), no `..` component (a step's files stay under its
/// working directory), valid glob syntax. Err is a short reason for the user.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("it is empty".into());
    }
    if pattern.starts_with('/') {
        return Err("it is absolute".into());
    }
    if pattern.split('/').any(|c| c == "..") {
        return Err("`..` is not allowed".into());
    }
    let normal = normalize(pattern);
    if normal.is_empty() {
        return Err("it names the working directory itself (use `**` for every file under it)".into());
    }
    compile(&normal).map(drop)
}

/// The files that patterns name, and the patterns that named none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    /// Relative paths with `/` separators, sorted, without duplicates.
    pub files: Vec<String>,
    /// Patterns as written, in the order given: a literal path that does not exist, or a
    /// glob that matched no file. Whether that is an error is the caller's decision.
    pub missing: Vec<String>,
}

/// Expands patterns under `workdir` into the regular files they name; see the module doc
/// for the rules. Errors for an invalid pattern, a literal path that names a directory or
/// a special file, an unreadable directory and a matched name that is not UTF-8.
pub fn expand(workdir: &Path, patterns: &[String]) -> Result<Expanded, FilesetError> {
    let found = expand_tagged(workdir, patterns)?;
    Ok(Expanded { files: found.files.into_iter().map(|(path, _)| path).collect(), missing: found.missing })
}

/// Hashes one regular file: (size in bytes, lowercase hex BLAKE3). Never holds a large file
/// in memory: from [`LARGE_FILE_BYTES`] on it is memory-mapped and hashed on all cores.
/// The size is the count of bytes hashed, so it agrees with the hash even if the file
/// changed since it was listed.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    if file.metadata()?.len() >= LARGE_FILE_BYTES {
        drop(file);
        hasher.update_mmap_rayon(path)?;
    } else {
        // One open, one fstat and 64 KiB reads; mapping a small file costs more than
        // reading it (the page-table work, and the unmap's TLB flush on every core).
        hasher.update_reader(file)?;
    }
    Ok((hasher.count(), hasher.finalize().to_hex().to_string()))
}

/// [`expand`] and [`hash_file`] each file: digests sorted by path, and the missing
/// patterns. Files are hashed in parallel (rayon), so many small files use every core
/// too; a large one also spreads its own hashing across the pool.
pub fn digest(workdir: &Path, patterns: &[String]) -> Result<(Vec<FileDigest>, Vec<String>), FilesetError> {
    let found = expand_tagged(workdir, patterns)?;
    let digests = found
        .files
        .par_iter()
        .map(|(path, tag)| match hash_file(&workdir.join(path)) {
            Ok((size, blake3)) => Ok(FileDigest { path: path.clone(), size, blake3 }),
            Err(source) => {
                Err(FilesetError::Io { pattern: patterns[*tag].clone(), path: path.clone(), source })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((digests, found.missing))
}

/// Like [`Expanded`], but each file keeps the index of the first pattern that named it,
/// so that a hashing error can name that pattern.
struct Tagged {
    files: Vec<(String, usize)>,
    missing: Vec<String>,
}

fn expand_tagged(workdir: &Path, patterns: &[String]) -> Result<Tagged, FilesetError> {
    let workdir = if workdir.as_os_str().is_empty() { Path::new(".") } else { workdir };
    let mut files = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for (tag, pattern) in patterns.iter().enumerate() {
        check_pattern(pattern)
            .map_err(|reason| FilesetError::Pattern { pattern: pattern.clone(), reason })?;
        let normal = normalize(pattern);
        let before = files.len();
        if is_literal(&normal) {
            literal(workdir, pattern, &normal, tag, &mut files)?;
        } else {
            walk(workdir, pattern, &normal, tag, &mut files)?;
        }
        if files.len() == before && !missing.contains(pattern) {
            missing.push(pattern.clone());
        }
    }
    // Stable, so that of duplicates the first pattern's tag is kept.
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|later, first| later.0 == first.0);
    Ok(Tagged { files, missing })
}

/// Drops `.` and empty components, so `./data//a.csv` means `data/a.csv`: the pattern is
/// matched against paths that have neither.
fn normalize(pattern: &str) -> String {
    pattern.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

fn compile(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.kind().to_string())
}

/// Characters that can make a component more than a literal name. `]` and `}` are
/// included so that a stray one is left to globset's judgement.
fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

fn is_literal(pattern: &str) -> bool {
    !has_meta(pattern)
}

/// Where the walk for a glob starts (its leading literal components, `""` for the working
/// directory) and how deep it may go below that: `None` when `**` or a class (which may
/// match `/`) can reach any depth, else the number of remaining components, since each
/// `/` of a matched path must come from a `/` of the pattern.
fn walk_plan(pattern: &str) -> (String, Option<usize>) {
    let components: Vec<&str> = pattern.split('/').collect();
    let literal = components.iter().take_while(|c| !has_meta(c)).count();
    let root = components[..literal].join("/");
    let rest = &components[literal..];
    let unbounded = rest.iter().any(|c| c.contains("**") || c.contains('['));
    (root, (!unbounded).then_some(rest.len()))
}

fn literal(
    workdir: &Path,
    pattern: &str,
    normal: &str,
    tag: usize,
    files: &mut Vec<(String, usize)>,
) -> Result<(), FilesetError> {
    match std::fs::metadata(workdir.join(normal)) {
        Ok(m) if m.is_file() => files.push((normal.to_owned(), tag)),
        Ok(m) if m.is_dir() => {
            return Err(FilesetError::IsDirectory { pattern: pattern.into(), path: normal.into() });
        }
        Ok(_) => return Err(FilesetError::NotAFile { pattern: pattern.into(), path: normal.into() }),
        Err(e) if is_absent(&e) => {}
        Err(source) => return Err(FilesetError::Io { pattern: pattern.into(), path: normal.into(), source }),
    }
    Ok(())
}

/// A path that does not lead to anything: missing, under a file, or a dangling or looping
/// symlink.
fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
        || e.raw_os_error() == Some(nix::libc::ELOOP)
}

/// Adds the files under the glob's walk root that match it; returns how many entries the
/// walk visited (for the tests that check it prunes).
fn walk(
    workdir: &Path,
    pattern: &str,
    normal: &str,
    tag: usize,
    files: &mut Vec<(String, usize)>,
) -> Result<usize, FilesetError> {
    let matcher =
        compile(normal).map_err(|reason| FilesetError::Pattern { pattern: pattern.into(), reason })?;
    let (root, max_depth) = walk_plan(normal);
    let mut walker = walkdir::WalkDir::new(workdir.join(&root)).follow_links(false);
    if let Some(depth) = max_depth {
        walker = walker.max_depth(depth);
    }
    let io_err = |path: &Path, source: io::Error| FilesetError::Io {
        pattern: pattern.into(),
        path: relative(workdir, path).unwrap_or_else(|| path.to_string_lossy().into_owned()),
        source,
    };
    let mut visited = 0;
    for entry in walker {
        visited += 1;
        let entry = match entry {
            Ok(entry) => entry,
            // The start does not exist: the glob matches nothing.
            Err(e) if e.depth() == 0 && e.io_error().is_some_and(is_absent) => return Ok(0),
            Err(e) => {
                let path = e.path().unwrap_or(Path::new(&root)).to_path_buf();
                let source = e.into_io_error().unwrap_or_else(|| io::Error::other("filesystem loop"));
                return Err(io_err(&path, source));
            }
        };
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(workdir).unwrap_or(entry.path());
        if !matcher.is_match(rel) {
            continue;
        }
        if kind.is_symlink() {
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => {}
                Ok(_) => continue,
                Err(e) if is_absent(&e) => continue,
                Err(source) => return Err(io_err(entry.path(), source)),
            }
        } else if !kind.is_file() {
            continue;
        }
        let Some(path) = relative(workdir, entry.path()) else {
            let path = rel.to_string_lossy().into_owned();
            return Err(FilesetError::NotUtf8 { pattern: pattern.into(), path });
        };
        files.push((path, tag));
    }
    Ok(visited)
}

/// `path` relative to `workdir`, `/`-separated; `None` if a component is not UTF-8.
fn relative(workdir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(workdir).unwrap_or(path);
    let mut out = String::new();
    for c in rel.components() {
        if let Component::Normal(name) = c {
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(name.to_str()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pats(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn put(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }

    fn files(root: &Path, list: &[&str]) -> Vec<String> {
        expand(root, &pats(list)).expect("expand").files
    }

    /// Deterministic bytes that are not a repeating pattern (xorshift).
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn sorted_and_deduplicated() {
        let d = tempfile::tempdir().expect("tempdir");
        for f in ["c.txt", "a.txt", "b/x.txt", "B.txt", "a-b.txt"] {
            put(d.path(), f, f.as_bytes());
        }
        let got = files(d.path(), &["*.txt", "a.txt", "b/**", "./c.txt", "b/x.txt"]);
        assert_eq!(got, ["B.txt", "a-b.txt", "a.txt", "b/x.txt", "c.txt"]);
        let (digests, missing) = digest(d.path(), &pats(&["b/**", "*.txt", "b/x.txt"])).expect("digest");
        assert!(missing.is_empty());
        let paths: Vec<_> = digests.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["B.txt", "a-b.txt", "a.txt", "b/x.txt", "c.txt"]);
        assert_eq!(digests[3].size, 7);
        assert_eq!(digests[3].blake3, blake3::hash(b"b/x.txt").to_hex().to_string());
    }

    #[test]
    fn star_stays_in_its_directory_and_double_star_does_not() {
        let d = tempfile::tempdir().expect("tempdir");
        for f in
            ["top.csv", "data/a.csv", "data/notes.txt", "data/sub/b.csv", "data/sub/deep/c.csv", ".hidden"]
        {
            put(d.path(), f, b"x");
        }
        put(d.path(), "data/.dot.csv", b"x");
        assert_eq!(files(d.path(), &["data/*.csv"]), ["data/.dot.csv", "data/a.csv"]);
        assert_eq!(files(d.path(), &["data/*/*.csv"]), ["data/sub/b.csv"]);
        assert_eq!(
            files(d.path(), &["data/**/*.csv"]),
            ["data/.dot.csv", "data/a.csv", "data/sub/b.csv", "data/sub/deep/c.csv"]
        );
        assert_eq!(files(d.path(), &["data/**"]).len(), 5);
        assert_eq!(files(d.path(), &["*"]), [".hidden", "top.csv"]);
        assert_eq!(files(d.path(), &["**/*.csv"]).len(), 5);
        assert_eq!(files(d.path(), &["data/{a,sub/b}.csv"]), ["data/a.csv", "data/sub/b.csv"]);
        assert_eq!(files(d.path(), &["?op.csv", "data/[a-b].csv"]), ["data/a.csv", "top.csv"]);
        // A class lifts the depth bound of the walk, so these see `data/sub/…` and must
        // reject it on their own: neither `*` nor `?` matches a `/`.
        assert_eq!(files(d.path(), &["data/[as]*.csv", "data/[s]ub?b.csv"]), ["data/a.csv"]);
    }

    #[test]
    fn walk_starts_at_the_literal_prefix_and_stops_at_the_pattern_depth() {
        assert_eq!(walk_plan("data/**/*.csv"), ("data".into(), None));
        assert_eq!(walk_plan("data/in/*/x.csv"), ("data/in".into(), Some(2)));
        assert_eq!(walk_plan("*.txt"), ("".into(), Some(1)));
        assert_eq!(walk_plan("a/[/]b/c"), ("a".into(), None));
        assert_eq!(walk_plan("a/{b/c,d}.txt"), ("a".into(), Some(2)));
        // The walk visits `data` and its direct entries only, not `other` nor `data/sub`'s.
        let d = tempfile::tempdir().expect("tempdir");
        for i in 0..50 {
            put(d.path(), &format!("other/{i}.csv"), b"x");
            put(d.path(), &format!("data/sub/{i}.csv"), b"x");
        }
        put(d.path(), "data/a.csv", b"x");
        let mut found = Vec::new();
        let visited = walk(d.path(), "data/*.csv", "data/*.csv", 0, &mut found).expect("walk");
        assert_eq!(found, [("data/a.csv".to_string(), 0)]);
        assert_eq!(visited, 3, "data, data/a.csv, data/sub");
        let visited = walk(d.path(), "*/*.csv", "*/*.csv", 0, &mut found).expect("walk");
        // The workdir, `data` and `other`, their entries, and nothing in `data/sub`.
        assert_eq!(visited, 1 + 2 + (2 + 50));
        assert_eq!(walk(d.path(), "no/*.csv", "no/*.csv", 0, &mut found).expect("walk"), 0);
        // A matched name that is not UTF-8 is an error naming the pattern and the file.
        use std::os::unix::ffi::OsStrExt;
        let bad = std::ffi::OsStr::from_bytes(b"bad-\xff.csv");
        std::fs::write(d.path().join("data/sub").join(bad), b"x").expect("write");
        std::fs::write(d.path().join("other").join(bad), b"x").expect("write");
        assert_eq!(files(d.path(), &["data/*.csv"]), ["data/a.csv"]);
        let err = expand(d.path(), &pats(&["data/**/*.csv"])).expect_err("not UTF-8");
        assert!(matches!(err, FilesetError::NotUtf8 { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("`data/**/*.csv`: the name of data/sub/bad-"), "{msg}");
    }

    #[test]
    fn missing_literal_and_empty_glob_are_reported_not_errors() {
        let d = tempfile::tempdir().expect("tempdir");
        put(d.path(), "data/a.csv", b"x");
        put(d.path(), "file", b"x");
        let list = pats(&["nope.txt", "data/*.json", "data/a.csv", "absent/**", "file/x", "nope.txt"]);
        let got = expand(d.path(), &list).expect("expand");
        assert_eq!(got.files, ["data/a.csv"]);
        assert_eq!(got.missing, ["nope.txt", "data/*.json", "absent/**", "file/x"]);
        // A pattern that only repeats files of earlier ones is not missing.
        assert!(expand(d.path(), &pats(&["data/**", "data/*.csv"])).expect("expand").missing.is_empty());

        let err = expand(d.path(), &pats(&["data"])).expect_err("a directory");
        assert_eq!(err.to_string(), "`data`: data is a directory (use `data/**` for the files under it)");
        let err = expand(d.path(), &pats(&["../x"])).expect_err("escapes");
        assert_eq!(err.to_string(), "`../x`: `..` is not allowed");
    }

    #[test]
    fn digest_is_the_same_for_the_same_files_anywhere() {
        let specs: Vec<(String, Vec<u8>)> = (0..40)
            .map(|i| (format!("d{}/f{i:02}.bin", i % 3), noise(i * 997 % 70_000, i as u64 + 1)))
            .collect();
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        let deeper = two.path().join("some/where/else");
        for (p, b) in &specs {
            put(one.path(), p, b);
        }
        for (p, b) in specs.iter().rev() {
            put(&deeper, p, b);
            let f = File::options().write(true).open(deeper.join(p)).expect("open");
            f.set_modified(std::time::UNIX_EPOCH).expect("set mtime");
        }
        let list = pats(&["d2/*", "**/*.bin", "nothing/*"]);
        let a = digest(one.path(), &list).expect("digest");
        let b = digest(&deeper, &list).expect("digest");
        assert_eq!(a.0.len(), 40);
        assert_eq!(a, b);
        assert_eq!(a.1, ["nothing/*"]);
        let json = |v: &Vec<FileDigest>| serde_json::to_vec(v).expect("json");
        assert_eq!(json(&a.0), json(&b.0));
        // And a change of one byte shows.
        let mut changed = specs[5].1.clone();
        changed[0] ^= 1;
        put(&deeper, &specs[5].0, &changed);
        assert_ne!(digest(&deeper, &list).expect("digest").0, a.0);
    }

    #[test]
    fn check_pattern_rejects_what_cannot_be_right() {
        assert_eq!(check_pattern(""), Err("it is empty".into()));
        assert_eq!(check_pattern("/etc/passwd"), Err("it is absolute".into()));
        assert_eq!(check_pattern(".."), Err("`..` is not allowed".into()));
        assert_eq!(check_pattern("data/../../x"), Err("`..` is not allowed".into()));
        assert!(check_pattern("./").expect_err("workdir").contains("working directory itself"));
        let err = check_pattern("data/[a-").expect_err("unclosed class");
        assert!(err.contains("unclosed character class"), "{err}");
        assert!(check_pattern("data/{a,b").expect_err("unclosed alternate").contains("unclosed"));
        for ok in ["data/**/*.csv", "scripts/extract.sh", "./out/report.html", ".hidden", "a..b/c", "**"] {
            assert_eq!(check_pattern(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn large_file_hash_equals_blake3_of_its_bytes() {
        let d = tempfile::tempdir().expect("tempdir");
        for (name, len) in [("big.bin", 5 * (1 << 20) + 12_345), ("edge.bin", 1 << 20), ("small.bin", 40_000)]
        {
            let bytes = noise(len, len as u64);
            put(d.path(), name, &bytes);
            let (size, hex) = hash_file(&d.path().join(name)).expect("hash");
            assert_eq!(size, len as u64, "{name}");
            assert_eq!(hex, blake3::hash(&bytes).to_hex().to_string(), "{name}");
        }
        put(d.path(), "empty", b"");
        let (size, hex) = hash_file(&d.path().join("empty")).expect("hash");
        assert_eq!((size, hex), (0, blake3::hash(b"").to_hex().to_string()));
        assert!(hash_file(&d.path().join("absent")).is_err());
    }

    #[test]
    fn symlinks_to_files_count_and_symlinked_directories_are_not_walked() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().expect("tempdir");
        let root: PathBuf = d.path().into();
        put(&root, "real/a.txt", b"real");
        symlink("real/a.txt", root.join("link.txt")).expect("symlink");
        symlink("real", root.join("linkdir")).expect("symlink");
        symlink("gone.txt", root.join("dangling.txt")).expect("symlink");
        let (digests, missing) = digest(&root, &pats(&["**", "dangling.txt"])).expect("digest");
        let paths: Vec<_> = digests.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["link.txt", "real/a.txt"]);
        assert_eq!(digests[0].blake3, digests[1].blake3);
        assert_eq!(digests[0].size, 4);
        assert_eq!(missing, ["dangling.txt"]);
        // Named in the literal part of a pattern, a link is resolved like any path.
        assert_eq!(files(&root, &["linkdir/*.txt"]), ["linkdir/a.txt"]);
        assert_eq!(files(&root, &["linkdir/a.txt"]), ["linkdir/a.txt"]);
    }
}

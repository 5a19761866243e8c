//! Times `runner::fileset::digest` on a directory, for `scripts/bench-hash.sh`: the cost of
//! hashing a step's declared files, without the rest of a run around it.
//!
//! ```text
//! cargo run --release --example hash_files -- [--list] DIR PATTERN...
//! ```
//!
//! Prints one line `files=N bytes=B elapsed_ms=T missing=M` (T covers the expansion and
//! the hashing, timed inside the process); with `--list`, first one `HEX  PATH` line per
//! file, as `b3sum` prints them, so the hashes can be checked against it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: hash_files [--list] DIR PATTERN...\n";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let list = args.first().is_some_and(|a| a == "--list");
    if list {
        args.remove(0);
    }
    if args.len() < 2 || args[0].starts_with('-') {
        eprint!("hash_files: need a directory and at least one pattern\n{USAGE}");
        return ExitCode::from(2);
    }
    let dir = PathBuf::from(args.remove(0));
    let start = Instant::now();
    let (digests, missing) = match runner::fileset::digest(&dir, &args) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("hash_files: {e}");
            return ExitCode::FAILURE;
        }
    };
    let elapsed = start.elapsed();
    if list {
        for d in &digests {
            println!("{}  {}", d.blake3, d.path);
        }
    }
    let bytes: u64 = digests.iter().map(|d| d.size).sum();
    println!(
        "files={} bytes={bytes} elapsed_ms={:.3} missing={}",
        digests.len(),
        elapsed.as_secs_f64() * 1000.0,
        missing.len()
    );
    ExitCode::SUCCESS
}

//! Many processes at once: one writer per run, many writers per projection, and a rebuild
//! killed at random moments.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

#[test]
fn of_two_concurrent_resumes_exactly_one_proceeds() {
    let env = Env::new();
    // The step holds the run until the test releases it, so the two resumes overlap for
    // sure, however slowly either starts.
    let flow = env.flow(
        "held",
        "[[steps]]\nid='held'\nrun='while [ ! -f release ]; do sleep 0.005; done; rm -f release; exit 1'\n",
    );
    env.write("release", "");
    env.run(&["run", &flow, "--run-id", "one"]).code(1);
    let pairs = 100;
    for _ in 0..pairs {
        let mut a = env.spawn(&["-q", "resume", "--run-id", "one"]);
        let mut b = env.spawn(&["-q", "resume", "--run-id", "one"]);
        // Whichever finishes first was refused; the other holds the run until released.
        let (first, second) = loop {
            if a.try_wait().expect("wait").is_some() {
                break (a, b);
            }
            if b.try_wait().expect("wait").is_some() {
                break (b, a);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        finish(first, Duration::from_secs(30)).code(4).stderr_has("locked by another runner");
        env.write("release", "");
        finish(second, Duration::from_secs(30)).code(1);
    }
    env.run(&["verify", "--run-id", "one"]).code(0);
    let resumes = env.journal("one").iter().filter(|e| e["type"] == "RunResumed").count();
    assert_eq!(resumes, pairs);
}

#[test]
fn twenty_concurrent_runs_share_one_projection() {
    let env = Env::new();
    let children: Vec<_> = (0..20)
        .map(|i| {
            let mut toml = String::new();
            for s in 0..(5 + i % 7) {
                toml.push_str(&format!("[[steps]]\nid = 'f{i}s{s}'\nrun = 'true'\n"));
            }
            let flow = env.flow(&format!("flow{i}"), &toml);
            env.spawn(&["run", &flow, "--run-id", &format!("run{i}")])
        })
        .collect();
    for child in children {
        let out = finish(child, Duration::from_secs(120));
        out.code(0);
        assert!(
            !out.stderr.contains("projection not updated"),
            "a runner was refused the projection:\n{}",
            out.stderr
        );
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).expect("json");
    assert_eq!(list.len(), 20);
    assert!(list.iter().all(|r| r["status"] == "succeeded"));
    env.assert_rebuild_matches_live();
}

#[test]
fn a_rebuild_killed_at_any_moment_leaves_the_projection_intact() {
    let env = Env::new();
    let mut toml = String::new();
    for s in 0..60 {
        toml.push_str(&format!("[[steps]]\nid = 's{s}'\nneeds = []\nrun = 'true'\n"));
    }
    let flow = env.flow("wide", &toml);
    for i in 0..25 {
        env.run(&["-q", "run", &flow, "--run-id", &format!("r{i}"), "--jobs", "8"]).code(0);
    }
    let live = env.projection_dump();
    let started = std::time::Instant::now();
    env.run(&["rebuild-projection"]).code(0);
    let full = started.elapsed();
    let mut dice = 7u64;
    for cycle in 0..50 {
        dice = dice.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = Duration::from_micros((dice >> 33) % (full.as_micros() as u64 + 1));
        let child = env.spawn(&["rebuild-projection"]);
        std::thread::sleep(delay);
        signal(child.id(), Signal::SIGKILL);
        let _ = finish(child, Duration::from_secs(30));
        let conn = rusqlite::Connection::open(env.runs_dir().join("projection.sqlite")).expect("open");
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("check");
        assert_eq!(check, "ok", "cycle {cycle}");
        drop(conn);
        assert_eq!(env.projection_dump(), live, "cycle {cycle}: the projection changed");
        // A killed rebuild may leave its unfinished new file; nothing else.
        let leftovers: Vec<String> = projection_files(&env)
            .into_iter()
            .filter(|n| !KEEP.contains(&n.as_str()) && !n.starts_with("projection.sqlite.new-"))
            .collect();
        assert!(leftovers.is_empty(), "cycle {cycle}: leftovers {leftovers:?}");
    }
    // The next rebuild succeeds and cleans up after the killed ones.
    env.run(&["rebuild-projection"]).code(0).stdout_has("25 runs");
    assert_eq!(env.projection_dump(), live);
    let files = projection_files(&env);
    assert!(files.iter().all(|n| KEEP.contains(&n.as_str())), "{files:?}");
}

const KEEP: [&str; 4] =
    ["projection.sqlite", "projection.sqlite-wal", "projection.sqlite-shm", "projection.lock"];

fn projection_files(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.runs_dir())
        .expect("runs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("projection"))
        .collect()
}

#[test]
fn a_rebuild_replaces_the_file_only_when_nobody_has_it_open() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let flow = env.flow(
        "held",
        "[[steps]]\nid='a'\nrun='true'\n[[steps]]\nid='held'\nrun='touch started; while [ ! -f release ]; do sleep 0.01; done'\n",
    );
    let ino = || std::fs::metadata(env.runs_dir().join("projection.sqlite")).expect("projection").ino();
    let live = env.spawn(&["run", &flow, "--run-id", "live"]);
    wait_for("the held step to start", Duration::from_secs(20), || env.path().join("started").exists());
    // A live runner has the projection open: the rebuild happens inside it.
    let before = ino();
    env.run(&["rebuild-projection"]).code(0).stdout_has("1 runs");
    assert_eq!(ino(), before, "the file was replaced under a live runner");
    env.write("release", "");
    finish(live, Duration::from_secs(30)).code(0);
    env.assert_rebuild_matches_live();
    // Nobody has it open now: a new file is built and swapped in.
    let before = ino();
    let live = env.projection_dump();
    env.run(&["rebuild-projection"]).code(0);
    assert_ne!(ino(), before, "a rebuild with nobody else around builds a new file");
    assert_eq!(env.projection_dump(), live);
}

#[test]
fn readers_never_mistake_a_live_run_for_a_damaged_one() {
    // A run that keeps resuming writes snapshots and journal lines while readers read both.
    let env = Env::new();
    let mut toml = String::new();
    for i in 0..300 {
        toml.push_str(&format!("[[steps]]\nid = 's{i}'\nrun = 'true'\n"));
    }
    toml.push_str("[[steps]]\nid = 'last'\nrun = 'exit 1'\n");
    let flow = env.flow("busy", &toml);
    env.run(&["-q", "run", &flow, "--run-id", "l"]).code(1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = env.run(&["-q", "resume", "--run-id", "l"]);
            }
        });
        // Stops the resumer however this thread ends: a failed assertion must fail the
        // test, not leave it waiting forever for the other thread.
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until {
            env.run(&["verify", "--run-id", "l"]).code(0);
            env.run(&["-q", "rebuild-projection"]).code(0);
        }
    });
}

#[test]
fn a_damaged_projection_file_is_rebuilt() {
    let env = Env::new();
    let flow = env.flow("ok", "[[steps]]\nid='a'\nrun='true'\n");
    env.run(&["run", &flow, "--run-id", "r"]).code(0);
    let live = env.projection_dump();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(env.runs_dir().join(format!("projection.sqlite{suffix}")));
    }
    std::fs::write(env.runs_dir().join("projection.sqlite"), "this is not a database at all, just text")
        .expect("w");
    env.run(&["rebuild-projection"]).code(0).stdout_has("1 runs");
    assert_eq!(env.projection_dump(), live);
    std::fs::write(env.runs_dir().join("projection.sqlite"), "garbage again, garbage again, garbage again")
        .expect("w");
    env.run(&["status"]).code(0).stdout_has("r ").stderr_has("damaged; rebuilding");
    assert_eq!(env.projection_dump(), live);
}

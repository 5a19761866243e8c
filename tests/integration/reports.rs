//! `--junit` and `--metrics-file`: reports for CI and cron, written when a session ends.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/junit.xsd");

/// Runs xmllint. On a fresh machine without it, the first caller installs it (Debian's
/// libxml2-utils, when running as root, as CI does); otherwise the test fails loudly.
fn xmllint(args: &[&str]) -> std::process::Output {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let present = Command::new("xmllint").arg("--version").output().is_ok_and(|o| o.status.success());
        if !present && nix::unistd::geteuid().is_root() {
            let _ = Command::new("sh")
                .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libxml2-utils"])
                .status();
        }
    });
    Command::new("xmllint").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run xmllint ({e}): install it (Debian: apt-get install libxml2-utils)")
    })
}

/// Asserts that `file` is valid against the JUnit schema.
#[track_caller]
fn assert_valid_junit(file: &Path) {
    let out = xmllint(&["--noout", "--schema", SCHEMA, &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{} does not validate against {SCHEMA}:\n{}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
}

#[test]
fn the_schema_rejects_what_ci_servers_would() {
    let env = Env::new();
    let head = "<?xml version=\"1.0\"?>\n<testsuites tests=\"1\" failures=\"0\" errors=\"0\">";
    for bad in [
        "<testsuite name=\"x\" tests=\"one\" failures=\"0\" errors=\"0\" time=\"1\"/>",
        "<testsuite name=\"x\" tests=\"1\" failures=\"0\" errors=\"0\" time=\"1\"><testcase classname=\"c\" time=\"1\"/></testsuite>",
        "<testsuite name=\"x\" tests=\"1\" failures=\"0\" errors=\"0\" time=\"-1\"/>",
        "<testsuite name=\"x\" tests=\"1\" failures=\"0\" errors=\"0\" time=\"1\" timestamp=\"2026-01-01 00:00\"/>",
        "<testsuite name=\"x\" tests=\"1\" failures=\"0\" errors=\"0\" time=\"1\"><testcase name=\"n\" classname=\"c\" time=\"1\"><system-out>\u{1}</system-out></testcase></testsuite>",
    ] {
        let file = env.write("bad.xml", &format!("{head}{bad}</testsuites>\n"));
        let out = xmllint(&["--noout", "--schema", SCHEMA, &file.to_string_lossy()]);
        assert!(!out.status.success(), "accepted: {bad}");
    }
}

/// The string value of an XPath expression over `file`.
fn xpath(file: &Path, expr: &str) -> String {
    let out = xmllint(&["--xpath", expr, &file.to_string_lossy()]);
    assert!(out.status.success(), "xpath {expr} failed: {}", String::from_utf8_lossy(&out.stderr));
    // xmllint ends what it prints with a line feed of its own.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_suffix('\n').map(str::to_string).unwrap_or(text)
}

fn case(file: &Path, name: &str, what: &str) -> String {
    xpath(file, &format!("string(//testcase[@name='{name}']/{what})"))
}

const MIXED: &str = r##"
[[steps]]
id = "pass"
run = "echo all good"

[[steps]]
id = "flaky"
needs = []
retries = { attempts = 2, backoff = "10ms" }
run = "if [ -e flaky.once ]; then echo ok; else touch flaky.once; echo 'first try fails' >&2; exit 3; fi"

[[steps]]
id = "skip"
needs = []
if = "'a' == 'b'"
run = "echo never"

[[steps]]
id = "fail"
needs = ["pass", "flaky"]
run = '''
echo 'to stdout' 
for i in $(seq 1 60); do echo "line $i" >&2; done
printf 'nul:\000 esc:\033[31mred\033[0m amp:& lt:< quote:" bell:\007 end\n' >&2
exit 7
'''

[[steps]]
id = "after"
needs = ["fail"]
run = "echo unreachable"
"##;

#[test]
fn junit_of_a_run_with_passing_failing_retried_and_skipped_steps() {
    let env = Env::new();
    let flow = env.flow("mixed", MIXED);
    std::fs::create_dir_all(env.path().join("out")).expect("mkdir");
    env.run(&["run", &flow, "--run-id", "j1", "--jobs", "2", "--junit", "out/junit.xml"]).code(1);
    let file = env.path().join("out/junit.xml");
    assert_valid_junit(&file);
    let leftovers: Vec<_> = std::fs::read_dir(env.path().join("out")).expect("ls").flatten().collect();
    assert_eq!(leftovers.len(), 1, "temp files left: {leftovers:?}");

    // One suite for the run: the flow's name, the run id as a property, the counts.
    assert_eq!(xpath(&file, "string(/testsuites/testsuite/@name)"), "mixed");
    assert_eq!(xpath(&file, "string(//property[@name='run_id']/@value)"), "j1");
    assert_eq!(xpath(&file, "string(//property[@name='run_status']/@value)"), "failed");
    assert_eq!(xpath(&file, "count(//testcase)"), "5");
    assert_eq!(xpath(&file, "string(//testsuite/@tests)"), "5");
    assert_eq!(xpath(&file, "string(//testsuite/@failures)"), "1");
    assert_eq!(xpath(&file, "string(//testsuite/@errors)"), "0");
    assert_eq!(xpath(&file, "string(//testsuite/@skipped)"), "2");
    assert_eq!(xpath(&file, "count(//testcase[@classname='mixed'])"), "5");
    let time: f64 = xpath(&file, "string(//testsuite/@time)").parse().expect("seconds");
    assert!(time > 0.0 && time < 60.0, "{time}");

    // Passing: nothing inside.
    assert_eq!(xpath(&file, "count(//testcase[@name='pass']/*)"), "0");

    // Failing: the reason as type, the message, the attempts, and the stderr tail (50 lines,
    // cleaned of terminal colours and of characters XML cannot carry).
    assert_eq!(case(&file, "fail", "failure/@type"), "exit");
    let message = case(&file, "fail", "failure/@message");
    assert!(message.contains('7'), "{message}");
    let text = case(&file, "fail", "failure");
    assert!(text.contains("attempt 1 of 1: failed"), "{text}");
    assert!(text.contains("--- last 50 lines of runs/j1/steps/fail/1/stderr.log ---"), "{text}");
    assert!(text.contains("line 12\n") && text.contains("line 60\n"), "{text}");
    assert!(!text.contains("line 11\n"), "more than 50 lines: {text}");
    assert!(!text.contains("to stdout"), "stderr comes first: {text}");
    assert!(text.contains("esc:red amp:& lt:< quote:\""), "{text}");
    assert!(text.contains("nul:\u{FFFD}") && text.contains("bell:\u{FFFD} end"), "{text}");

    // Retried: passed, with its attempts in system-out.
    assert_eq!(xpath(&file, "count(//testcase[@name='flaky']/failure)"), "0");
    let out = case(&file, "flaky", "system-out");
    assert!(out.contains("attempt 1 of 2: failed") && out.contains("(exit)"), "{out}");
    assert!(out.contains("attempt 2 of 2: succeeded"), "{out}");

    // Skipped by its condition, and never reached because the run failed first.
    assert!(case(&file, "skip", "skipped/@message").contains("'a' == 'b'"), "{}", env.read("out/junit.xml"));
    assert!(case(&file, "after", "skipped/@message").contains("not run"), "{}", env.read("out/junit.xml"));

    // Fixed and resumed with a report: the failed step's new attempt passes.
    std::fs::write(env.run_dir("j1").join("flow.toml"), MIXED.replace("exit 7", "exit 0")).expect("edit");
    env.run(&["resume", "--run-id", "j1", "--accept-flow-change", "--junit", "out/junit.xml"]).code(0);
    assert_valid_junit(&file);
    assert_eq!(xpath(&file, "string(//testsuite/@failures)"), "0");
    assert_eq!(xpath(&file, "string(//testsuite/@skipped)"), "1");
    assert_eq!(xpath(&file, "string(//property[@name='sessions']/@value)"), "2");
    let out = case(&file, "fail", "system-out");
    assert!(out.contains("attempt 1 of 2: failed") && out.contains("attempt 2 of 2: succeeded"), "{out}");
}

#[test]
fn junit_names_each_visit_of_a_loop() {
    let env = Env::new();
    let flow = env.flow(
        "loop",
        r#"
[[steps]]
id = "review"
max_visits = 3
run = '''
if [ "$RUNNER_VISIT" -ge 2 ]; then v=pass; else v=fail; fi
echo "verdict=$v" >> "$RUNNER_OUTPUT"
'''
next = [
  { if = "steps.review.outputs.verdict == 'fail'", goto = "fix" },
  { goto = "publish" },
]
[[steps]]
id = "fix"
needs = ["review"]
max_visits = 3
run = "true"
next = [{ goto = "review" }]
[[steps]]
id = "publish"
needs = ["review"]
run = "true"
"#,
    );
    env.run(&["run", &flow, "--junit", "loop.xml"]).code(0);
    let file = env.path().join("loop.xml");
    assert_valid_junit(&file);
    let names = xpath(&file, "//testcase/@name");
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(
        names,
        [r#"name="review""#, r#"name="review#2""#, r#"name="fix""#, r#"name="fix#2""#, r#"name="publish""#],
        "{}",
        env.read("loop.xml")
    );
    assert!(case(&file, "fix#2", "skipped/@message").contains("not routed"), "{}", env.read("loop.xml"));
}

#[test]
fn junit_of_a_paused_run_and_of_its_approval() {
    let env = Env::new();
    let flow = env.flow(
        "ship",
        r#"
[[steps]]
id = "build"
run = "echo built"
[[steps]]
id = "deploy"
approval = { message = "ship it?" }
run = "echo shipped"
"#,
    );
    env.run(&["run", &flow, "--run-id", "p", "--junit", "paused.xml"]).code(3);
    let file = env.path().join("paused.xml");
    assert_valid_junit(&file);
    assert_eq!(xpath(&file, "string(//property[@name='run_status']/@value)"), "waiting");
    assert!(case(&file, "deploy", "skipped/@message").contains("waiting for approval: ship it?"));

    env.run(&[
        "approve", "--run-id", "p", "--step", "deploy", "--by", "ci", "--resume", "--junit", "done.xml",
    ])
    .code(0);
    let file = env.path().join("done.xml");
    assert_valid_junit(&file);
    assert_eq!(xpath(&file, "count(//testcase)"), "2");
    assert_eq!(xpath(&file, "count(//skipped | //failure | //error)"), "0");

    // An approval rejected is a failure of type `rejected`.
    let id = env.run(&["run", &flow]).code(3).run_id();
    env.run(&["reject", "--run-id", &id, "--step", "deploy", "--by", "bob", "--comment", "not today"])
        .code(0);
    env.run(&["resume", "--run-id", &id, "--junit", "rejected.xml"]).code(1);
    let file = env.path().join("rejected.xml");
    assert_valid_junit(&file);
    assert_eq!(case(&file, "deploy", "failure/@type"), "rejected");
    assert_eq!(case(&file, "deploy", "failure/@message"), "rejected by bob: not today");

    // A run that already succeeded still gets its report (a cron line fired again).
    env.run(&["resume", "--run-id", "p", "--junit", "again.xml"]).code(0);
    assert_valid_junit(&env.path().join("again.xml"));
}

#[test]
fn junit_of_an_interrupted_run_names_the_stopped_step_as_an_error() {
    let env = Env::new();
    let flow = env.flow(
        "long",
        "[[steps]]\nid = 'long'\nrun = 'echo working >&2; echo started > started; sleep 30'\n\
         [[steps]]\nid = 'next'\nrun = 'true'\n",
    );
    let child =
        env.spawn(&["run", &flow, "--run-id", "i", "--junit", "junit.xml", "--metrics-file", "runner.prom"]);
    wait_for("the step to start", Duration::from_secs(20), || env.path().join("started").exists());
    signal(child.id(), Signal::SIGINT);
    finish(child, Duration::from_secs(30)).code(130);
    let file = env.path().join("junit.xml");
    assert_valid_junit(&file);
    assert_eq!(xpath(&file, "string(//testsuite/@errors)"), "1");
    assert_eq!(case(&file, "long", "error/@type"), "interrupted");
    assert!(case(&file, "long", "error").contains("working"), "{}", env.read("junit.xml"));
    assert!(case(&file, "next", "skipped/@message").contains("not run"));
    let m = parse_metrics(&env.read("runner.prom"));
    assert_eq!(m.get("runner_last_run_status{flow=\"long\",status=\"interrupted\"}"), Some(&1.0));
    assert_eq!(m.get("runner_last_run_success{flow=\"long\"}"), Some(&0.0));
}

#[test]
fn a_report_that_cannot_be_written_is_refused_before_anything_starts() {
    let env = Env::new();
    let flow = env.flow("f", "[[steps]]\nid = 'a'\nrun = 'echo a >> a.ran'\n");
    env.run(&["run", &flow, "--junit", "no/such/dir/junit.xml"])
        .code(2)
        .stderr_has("--junit no/such/dir/junit.xml: directory no/such/dir does not exist");
    env.run(&["run", &flow, "--metrics-file", "missing/runner.prom"]).code(2).stderr_has("--metrics-file");
    std::fs::create_dir_all(env.path().join("adir")).expect("mkdir");
    env.run(&["run", &flow, "--junit", "adir"]).code(2).stderr_has("is a directory");
    assert!(env.run_ids().is_empty());
    assert_eq!(env.count("a.ran"), 0);
    // --junit with approve needs --resume.
    env.run(&["approve", "--run-id", "x", "--step", "a", "--junit", "j.xml"]).code(2);
}

#[test]
fn a_report_lost_at_the_end_turns_success_into_74_and_keeps_a_failure() {
    let env = Env::new();
    // The step puts a non-empty directory where the report goes: the rename over it fails.
    let ok = env.flow("ok", "[[steps]]\nid = 'a'\nrun = 'mkdir -p report.xml/x'\n");
    env.run(&["run", &ok, "--junit", "report.xml"])
        .code(74)
        .stderr_has("error: cannot write the JUnit report report.xml");
    let bad = env.flow("bad", "[[steps]]\nid = 'a'\nrun = 'mkdir -p metrics.prom/x; exit 1'\n");
    env.run(&["run", &bad, "--metrics-file", "metrics.prom"])
        .code(1)
        .stderr_has("error: cannot write the metrics file metrics.prom");
    let names: Vec<_> = std::fs::read_dir(env.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(names.is_empty(), "temp files left: {names:?}");
}

/// The series of a textfile: `name{labels}` -> value. Every line must be a comment or a
/// sample.
#[track_caller]
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let (name, labels) = series.split_once('{').unwrap_or_else(|| panic!("no labels: {line:?}"));
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line:?}"
        );
        assert!(labels.ends_with('}') && labels.contains("flow=\""), "bad labels: {line:?}");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line:?}"));
        assert!(out.insert(series.to_string(), value).is_none(), "duplicate series: {line:?}");
    }
    out
}

fn metrics(env: &Env) -> BTreeMap<String, f64> {
    let text = env.read("textfile/runner.prom");
    for family in [
        "runner_last_run_success",
        "runner_last_run_status",
        "runner_last_run_timestamp_seconds",
        "runner_last_success_timestamp_seconds",
        "runner_last_run_duration_seconds",
        "runner_last_run_steps_failed",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "{text}");
        assert!(text.contains(&format!("# TYPE {family} gauge\n")), "{text}");
    }
    parse_metrics(&text)
}

#[test]
fn metrics_keep_the_last_success_across_failures_and_deletions() {
    let env = Env::new();
    let nightly = env.flow("nightly", "[[steps]]\nid = 'check'\nrun = 'test -e ok'\n");
    let other = env.flow("other", "[[steps]]\nid = 'a'\nrun = 'true'\n");
    std::fs::create_dir_all(env.path().join("textfile")).expect("mkdir");
    let prom = "textfile/runner.prom";
    let get = |m: &BTreeMap<String, f64>, series: &str| {
        *m.get(series).unwrap_or_else(|| panic!("no {series} in {m:?}"))
    };

    env.write("ok", "");
    env.run(&["run", &nightly, "--metrics-file", prom]).code(0);
    let m = metrics(&env);
    assert_eq!(get(&m, "runner_last_run_success{flow=\"nightly\"}"), 1.0);
    assert_eq!(get(&m, "runner_last_run_status{flow=\"nightly\",status=\"succeeded\"}"), 1.0);
    assert_eq!(get(&m, "runner_last_run_status{flow=\"nightly\",status=\"failed\"}"), 0.0);
    let first_success = get(&m, "runner_last_success_timestamp_seconds{flow=\"nightly\"}");
    assert_eq!(get(&m, "runner_last_run_timestamp_seconds{flow=\"nightly\"}"), first_success);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!((now - first_success).abs() < 120.0, "{first_success} vs {now}");
    assert!(get(&m, "runner_last_run_duration_seconds{flow=\"nightly\"}") >= 0.0);
    assert_eq!(get(&m, "runner_last_run_steps_failed{flow=\"nightly\"}"), 0.0);

    // A failure: success 0, the last success is kept.
    std::fs::remove_file(env.path().join("ok")).expect("rm");
    std::thread::sleep(Duration::from_millis(20));
    let failed = env.run(&["run", &nightly, "--metrics-file", prom]).code(1).run_id();
    let m = metrics(&env);
    assert_eq!(get(&m, "runner_last_run_success{flow=\"nightly\"}"), 0.0);
    assert_eq!(get(&m, "runner_last_run_status{flow=\"nightly\",status=\"failed\"}"), 1.0);
    assert_eq!(get(&m, "runner_last_success_timestamp_seconds{flow=\"nightly\"}"), first_success);
    assert!(get(&m, "runner_last_run_timestamp_seconds{flow=\"nightly\"}") > first_success);
    assert_eq!(get(&m, "runner_last_run_steps_failed{flow=\"nightly\"}"), 1.0);

    // Another flow writes the same file, which and the projection are gone: every flow is
    // in it, the last success of `nightly` read again from the journals.
    std::fs::remove_file(env.path().join(prom)).expect("rm");
    std::fs::remove_file(env.runs_dir().join("projection.sqlite")).expect("rm");
    env.run(&["run", &other, "--metrics-file", prom]).code(0);
    let m = metrics(&env);
    assert_eq!(get(&m, "runner_last_run_success{flow=\"other\"}"), 1.0);
    assert_eq!(get(&m, "runner_last_run_success{flow=\"nightly\"}"), 0.0);
    assert_eq!(get(&m, "runner_last_success_timestamp_seconds{flow=\"nightly\"}"), first_success);

    // Fixed and resumed: the later success updates it.
    env.write("ok", "");
    env.run(&["resume", "--run-id", &failed, "--metrics-file", prom]).code(0);
    let m = metrics(&env);
    assert_eq!(get(&m, "runner_last_run_success{flow=\"nightly\"}"), 1.0);
    assert!(get(&m, "runner_last_success_timestamp_seconds{flow=\"nightly\"}") > first_success);
    assert_eq!(get(&m, "runner_last_run_steps_failed{flow=\"nightly\"}"), 0.0);
    let names: Vec<_> = std::fs::read_dir(env.path().join("textfile"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["runner.prom"], "the collector would read a temp file ending in .prom");
}

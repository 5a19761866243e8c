//! Bad input gets a clear error, exit 2, and creates nothing.

use crate::util::*;

#[track_caller]
fn rejected(env: &Env, args: &[&str], needle: &str) {
    env.run(args).code(2).stderr_has(needle);
    assert!(!env.runs_dir().exists(), "a rejected command created {}", env.runs_dir().display());
}

#[test]
fn invalid_flows_are_rejected_with_their_position() {
    let cases = [
        ("[[steps]]\nid = 'a'\nrun = 'true'\nretry = 2\n", "flows/f.toml:4:1: unknown field `retry`"),
        (
            "[[steps]]\nid = 'a'\nrun = 'true'\n[[steps]]\nid = 'a'\nrun = 'true'\n",
            "flows/f.toml:5:6: duplicate step id `a`",
        ),
        (
            "[[steps]]\nid = 'a'\nrun = 'true'\nneeds = ['nope']\n",
            "flows/f.toml:4:10: step `a` needs unknown step `nope`",
        ),
        (
            "[[steps]]\nid = 'a'\nrun = 'true'\nneeds = ['b']\n[[steps]]\nid = 'b'\nrun = 'true'\n",
            "dependency cycle: a -> b -> a",
        ),
        ("[[steps]]\nid = 'a/b'\nrun = 'true'\n", "flows/f.toml:2:6: invalid step id `a/b`"),
        (
            "[[steps]]\nid = 'a'\nrun = 'true'\ntimeout = 'soon'\n",
            "flows/f.toml:4:11: `timeout` = \"soon\" is not a valid duration",
        ),
        ("[[steps]\nid = 'a'\n", "flows/f.toml:1:"),
        ("", "the flow has no steps"),
    ];
    for (toml, needle) in cases {
        let env = Env::new();
        let flow = env.flow("f", toml);
        rejected(&env, &["run", &flow], needle);
        env.run(&["validate", &flow]).code(2).stderr_has(needle);
    }
}

#[test]
fn validate_accepts_good_flows() {
    let env = Env::new();
    let flow = env.flow("ok", "[[steps]]\nid='a'\nrun='true'\n");
    env.run(&["validate", &flow]).code(0).stdout_has("ok (1 steps)");
    assert!(!env.runs_dir().exists());
}

#[test]
fn bad_parameters_and_run_ids_are_rejected() {
    let env = Env::new();
    let flow = env.flow("p", "[params]\nday = {}\nwho = { default = 'x' }\n[[steps]]\nid='a'\nrun='true'\n");
    rejected(&env, &["run", &flow], "missing required parameter `day`");
    rejected(&env, &["run", &flow, "--param", "day=1", "--param", "nope=2"], "unknown parameter `nope`");
    rejected(&env, &["run", &flow, "--param", "day"], "must look like name=value");
    for bad in ["a/b", "..", "../escape", ".hidden", "a b", ""] {
        rejected(&env, &["run", &flow, "--param", "day=1", "--run-id", bad], "invalid run id");
    }
    rejected(&env, &["run", "flows/missing.toml"], "flows/missing.toml: cannot read the flow file");
    rejected(&env, &["run", &flow, "--param", "day=1", "--jobs", "0"], "--jobs");
}

#[test]
fn parameter_values_are_inert() {
    let env = Env::new();
    env.write("canary", "still here");
    let flow = env.flow(
        "inject",
        "[params]\nname = {}\n[[steps]]\nid = 'echo'\nrun = 'printf \"%s\" \"$RUNNER_PARAM_NAME\" > got.txt'\n",
    );
    let evil = "x\"; rm -f canary; echo \"$(touch pwned)`touch pwned2`";
    env.run(&["run", &flow, "--param", &format!("name={evil}")]).code(0);
    assert_eq!(env.read("got.txt"), evil);
    assert_eq!(env.read("canary"), "still here");
    assert!(!env.path().join("pwned").exists() && !env.path().join("pwned2").exists());
}

#[test]
fn a_directory_that_is_not_a_run_is_not_taken_over() {
    let env = Env::new();
    let flow = env.flow("f", "[[steps]]\nid='a'\nrun='true'\n");
    std::fs::create_dir_all(env.run_dir("taken")).expect("mkdir");
    env.run(&["run", &flow, "--run-id", "taken"]).code(2).stderr_has("exists but is not a run");
    let entries: Vec<_> = std::fs::read_dir(env.run_dir("taken")).expect("dir").collect();
    assert!(entries.is_empty(), "the foreign directory was changed");
}

#[test]
fn run_ids_cannot_take_the_projection_s_names() {
    let env = Env::new();
    let flow = env.flow("f", "[[steps]]\nid='a'\nrun='true'\n");
    for id in ["projection.lock", "projection.sqlite", "projection.sqlite-wal"] {
        rejected(&env, &["run", &flow, "--run-id", id], "invalid run id");
    }
}

//! Receipts: what an attempt was, as content hashes, written once as `receipt.json` in
//! its directory.
//!
//! The *key* is the blake3 of the step's [`Definition`] in canonical JSON: its command,
//! the environment the flow gives it, its parameters, the runner's version, the declared
//! file patterns, the hash of each input file, and the *result* of each step it needs. No
//! run id, path of the working directory, time or random value goes in, so the same step
//! with the same inputs has the same key in any run, directory or day. The *result* of a
//! successful attempt hashes the key with what it produced (declared output files and
//! `$RUNNER_OUTPUT` values); it is what the steps after it hash as their upstream, so a
//! change anywhere upstream reaches every step below it.
//!
//! Exit code, duration and times are in the receipt, outside the hashed part.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fileset::FileDigest;

pub const RECEIPT_FILE: &str = "receipt.json";
pub const RECEIPT_FORMAT: u32 = 1;
/// Where resume moves a receipt whose attempt the journal records as interrupted (the
/// runner died between writing it and journaling the result).
pub const UNACKNOWLEDGED_FILE: &str = "receipt.unacknowledged.json";

/// Everything that decides what a step does: hashed into its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub runner_version: String,
    /// The step id as its own flow writes it (inside a called flow, without the caller's prefix).
    pub step: String,
    pub command: String,
    /// The flow's and the step's `env`, merged as the step sees them.
    pub env: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
    /// `inputs` and `outputs` as written.
    pub declared_inputs: Vec<String>,
    pub declared_outputs: Vec<String>,
    /// Each input file, sorted by path.
    pub inputs: Vec<FileDigest>,
    /// The result of each step it needs, and of the other steps on a loop with it (whose
    /// outputs it sees), by id.
    pub upstream: BTreeMap<String, String>,
    /// The names of the secrets it gets: their values are never hashed (or stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The visit (`$RUNNER_VISIT`), for a step on a loop.
    #[serde(default = "first_visit", skip_serializing_if = "is_first_visit")]
    pub visit: u32,
    /// The gate (a profile's, if the run has one): a cached result must have passed the
    /// gate this run asks for, so a stricter gate is a different key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateText>,
    /// The run's trigger file (`$RUNNER_TRIGGER_FILE`), by path and content: a step that
    /// reads it must not be served from the cache of a run about another file. A file
    /// gone by then (moved away by an earlier step) hashes as `missing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_file: Option<FileDigest>,
}

fn first_visit() -> u32 {
    1
}

fn is_first_visit(v: &u32) -> bool {
    *v == 1
}

/// A gate's conditions as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateText {
    pub pass: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<String>,
}

impl GateText {
    fn shown(gate: &Option<GateText>) -> String {
        match gate {
            None => "none".into(),
            Some(g) => match &g.warn {
                Some(w) => format!("pass: {}, warn: {w}", g.pass),
                None => format!("pass: {}", g.pass),
            },
        }
    }
}

impl Definition {
    /// blake3 of the canonical JSON (fields in declaration order, maps sorted, lists sorted
    /// by their builders): the same definition gives the same key byte for byte.
    pub fn key(&self) -> String {
        hash_json(self)
    }
}

/// What a successful attempt produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Produced {
    /// Each declared output file after the run, sorted by path.
    pub files: Vec<FileDigest>,
    /// What it wrote to `$RUNNER_OUTPUT`.
    pub values: BTreeMap<String, String>,
    /// What it wrote to `$RUNNER_HANDOFF` (and its metadata), restored with a cached result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<crate::journal::Handoff>,
}

/// The result hash of a success: its key together with what it produced.
pub fn result_of(key: &str, produced: &Produced) -> String {
    #[derive(Serialize)]
    struct Hashed<'a> {
        key: &'a str,
        produced: &'a Produced,
    }
    hash_json(&Hashed { key, produced })
}

fn hash_json(value: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|e| unreachable!("plain data serialises: {e}"));
    blake3::hash(&bytes).to_hex().to_string()
}

/// Where a cached attempt's result came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub run_id: String,
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
}

impl Source {
    /// The receipt's path relative to the runs directory.
    pub fn receipt_path(&self) -> String {
        let dir = crate::store::attempt_dir(Path::new(&self.run_id), &self.step, self.visit, self.attempt);
        dir.join(RECEIPT_FILE).to_string_lossy().into_owned()
    }
}

/// `receipt.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub receipt_format: u32,
    pub run_id: String,
    pub flow: String,
    /// The step's id in the run (`caller/step` inside a called flow).
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    /// `succeeded`, `failed` or `cached`.
    pub status: String,
    pub key: String,
    /// For a success: [`result_of`] the key and `produced`.
    pub result: Option<String>,
    pub definition: Definition,
    pub produced: Option<Produced>,
    pub cached_from: Option<Source>,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub started_at: Option<String>,
    pub finished_at: String,
}

/// Writes `receipt.json` in `dir` atomically, before the event that acknowledges the
/// attempt: after any process crash a journaled result has its receipt. It is not fsync'd
/// on its own (that would double the cost of a short step): the journal is the truth, and
/// a receipt lost to a power cut only costs a cache hit and `explain`'s detail.
pub fn write(dir: &Path, receipt: &Receipt) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(receipt).unwrap_or_default();
    json.push(b'\n');
    // A cached attempt ran nothing, so nothing made its directory yet.
    std::fs::create_dir_all(dir)?;
    crate::fsutil::write_replace(&dir.join(RECEIPT_FILE), "receipt", &json)
}

pub fn read(path: &Path) -> Result<Receipt, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not a valid receipt: {e}", path.display()))
}

/// One difference between two definitions, for `runner explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `command`, `env`, `param`, `input`, `upstream`, `runner_version`, `declared_inputs`,
    /// `declared_outputs`, `gate`, `trigger_file`.
    pub component: &'static str,
    /// The variable, parameter, file or step; empty for `command` and `runner_version`.
    pub name: String,
    /// `changed`, `added` or `removed`.
    pub change: &'static str,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// What differs from `before` to `after`, component by component, in a stable order.
pub fn diff(before: &Definition, after: &Definition) -> Vec<Change> {
    let mut out = Vec::new();
    let single = |out: &mut Vec<Change>, component, a: &str, b: &str| {
        if a != b {
            out.push(Change {
                component,
                name: String::new(),
                change: "changed",
                before: Some(a.to_string()),
                after: Some(b.to_string()),
            });
        }
    };
    single(&mut out, "runner_version", &before.runner_version, &after.runner_version);
    single(&mut out, "command", &before.command, &after.command);
    maps(&mut out, "env", &before.env, &after.env);
    maps(&mut out, "param", &before.params, &after.params);
    let patterns = |v: &[String]| v.join(", ");
    single(
        &mut out,
        "declared_inputs",
        &patterns(&before.declared_inputs),
        &patterns(&after.declared_inputs),
    );
    single(
        &mut out,
        "declared_outputs",
        &patterns(&before.declared_outputs),
        &patterns(&after.declared_outputs),
    );
    let files = |v: &[FileDigest]| -> BTreeMap<String, String> {
        v.iter().map(|f| (f.path.clone(), f.blake3.clone())).collect()
    };
    maps(&mut out, "input", &files(&before.inputs), &files(&after.inputs));
    maps(&mut out, "upstream", &before.upstream, &after.upstream);
    single(&mut out, "visit", &before.visit.to_string(), &after.visit.to_string());
    single(&mut out, "secrets", &before.secrets.join(", "), &after.secrets.join(", "));
    single(&mut out, "gate", &GateText::shown(&before.gate), &GateText::shown(&after.gate));
    let trigger =
        |t: &Option<FileDigest>| t.as_ref().map_or("none".into(), |f| format!("{} ({})", f.path, f.blake3));
    single(&mut out, "trigger_file", &trigger(&before.trigger_file), &trigger(&after.trigger_file));
    out
}

fn maps(
    out: &mut Vec<Change>,
    component: &'static str,
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) {
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for name in names {
        let (x, y) = (a.get(name), b.get(name));
        let change = match (x, y) {
            (Some(x), Some(y)) if x == y => continue,
            (Some(_), Some(_)) => "changed",
            (None, _) => "added",
            (_, None) => "removed",
        };
        out.push(Change { component, name: name.clone(), change, before: x.cloned(), after: y.cloned() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> Definition {
        Definition {
            runner_version: "1".into(),
            step: "s".into(),
            command: "make".into(),
            env: BTreeMap::from([("A".into(), "1".into())]),
            params: BTreeMap::new(),
            declared_inputs: vec!["data/*".into()],
            declared_outputs: vec![],
            inputs: vec![FileDigest { path: "data/a".into(), size: 1, blake3: "x".into() }],
            upstream: BTreeMap::from([("up".into(), "r1".into())]),
            secrets: vec![],
            visit: 1,
            gate: None,
            trigger_file: None,
        }
    }

    #[test]
    fn the_key_depends_on_every_component_and_nothing_else() {
        let base = def();
        assert_eq!(base.key(), def().key());
        assert_eq!(base.key().len(), 64);
        type Change = Box<dyn Fn(&mut Definition)>;
        let variants: Vec<Change> = vec![
            Box::new(|d| d.runner_version = "2".into()),
            Box::new(|d| d.command = "make all".into()),
            Box::new(|d| {
                d.env.insert("A".into(), "2".into());
            }),
            Box::new(|d| {
                d.params.insert("p".into(), "v".into());
            }),
            Box::new(|d| d.inputs[0].blake3 = "y".into()),
            Box::new(|d| {
                d.upstream.insert("up".into(), "r2".into());
            }),
            Box::new(|d| d.declared_outputs.push("out".into())),
            Box::new(|d| d.gate = Some(GateText { pass: "true".into(), warn: None })),
            Box::new(|d| d.visit = 2),
            Box::new(|d| {
                d.trigger_file = Some(FileDigest { path: "in/a.csv".into(), size: 1, blake3: "x".into() })
            }),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut d = def();
            change(&mut d);
            assert_ne!(d.key(), base.key(), "variant {i} must change the key");
        }
        let produced =
            Produced { files: vec![], values: BTreeMap::from([("k".into(), "v".into())]), handoff: None };
        assert_ne!(result_of(&base.key(), &produced), result_of(&base.key(), &Produced::default()));
    }

    #[test]
    fn diff_names_each_changed_component() {
        let mut after = def();
        after.env.insert("B".into(), "x".into());
        after.env.remove("A");
        after.inputs[0].blake3 = "z".into();
        after.upstream.insert("up".into(), "r9".into());
        let found = diff(&def(), &after);
        let changes: Vec<(&str, &str, &str)> =
            found.iter().map(|c| (c.component, c.name.as_str(), c.change)).collect();
        assert_eq!(
            changes,
            vec![
                ("env", "A", "removed"),
                ("env", "B", "added"),
                ("input", "data/a", "changed"),
                ("upstream", "up", "changed")
            ]
        );
        assert!(diff(&def(), &def()).is_empty());
    }
}

//! The flow file exactly as TOML gives it, before validation.
//!
//! Every struct denies unknown fields, and values that later checks must point at are
//! `Spanned` so an error can name the line and column.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    pub description: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<Spanned<String>, RawParam>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, Scalar>,
    #[serde(default)]
    pub steps: Vec<Spanned<RawStep>>,
    pub defaults: Option<RawDefaults>,
    /// Environment variables whose values are secrets: given to every step, never stored.
    pub secrets: Option<Vec<Spanned<String>>>,
    /// `[profiles.<name>.<step>]`: gates that replace the step's own when the run is
    /// started with `--profile <name>`.
    #[serde(default)]
    pub profiles: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<RawGate>>>,
    /// `[services.<name>]`: background processes that steps use.
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, RawService>,
    /// `schedule = "0 2 * * *"`: when `runner schedule` starts a run of the flow.
    pub schedule: Option<Spanned<String>>,
    /// `[slurm]`: sbatch options for every step that runs on Slurm.
    pub slurm: Option<Spanned<RawSlurm>>,
}

/// `[slurm]` of a flow, or `slurm = { … }` of a step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlurm {
    pub partition: Option<Spanned<String>>,
    pub time: Option<Spanned<String>>,
    pub cpus: Option<Spanned<i64>>,
    pub mem: Option<Spanned<String>>,
    pub args: Option<Vec<Spanned<String>>>,
    pub max_jobs: Option<Spanned<i64>>,
    pub poll: Option<Spanned<String>>,
}

/// `[services.<name>]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub run: Spanned<RawCommand>,
    pub health: Option<Spanned<RawHealth>>,
    pub interval: Option<Spanned<String>>,
    pub start_timeout: Option<Spanned<String>>,
    pub restart: Option<Spanned<String>>,
    pub max_restarts: Option<Spanned<i64>>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, Scalar>,
    pub secrets: Option<Vec<Spanned<String>>>,
    pub grace: Option<Spanned<String>>,
    pub degraded: Option<Spanned<String>>,
}

/// A service's command: a string split like a shell would (quotes, no expansion), or
/// an array of arguments.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RawCommand {
    Line(String),
    Argv(Vec<String>),
}

/// `health = { http = "…" }`, `{ tcp = "host:port" }` or `{ cmd = "…" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub cmd: Option<String>,
    pub timeout: Option<Spanned<String>>,
}

/// `[defaults]`: values every step takes unless it sets its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub cache: Option<bool>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<RawRetries>,
    pub grace: Option<Spanned<String>>,
    pub executor: Option<Spanned<String>>,
}

/// `gate = { pass = "…", warn = "…" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub pass: Spanned<String>,
    pub warn: Option<Spanned<String>>,
}

/// `approval = true` or `approval = { message = "…", approvers = ["alice"] }`.
pub struct RawApproval {
    pub required: bool,
    pub message: Option<String>,
    pub approvers: Vec<String>,
}

impl<'de> Deserialize<'de> for RawApproval {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawApproval;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`true`, `false` or a table { message = \"…\", approvers = [\"name\", …] }")
            }
            fn visit_bool<E: de::Error>(self, required: bool) -> Result<RawApproval, E> {
                Ok(RawApproval { required, message: None, approvers: Vec::new() })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawApproval, A::Error> {
                let mut out = RawApproval { required: true, message: None, approvers: Vec::new() };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "required" => out.required = map.next_value()?,
                        "message" => out.message = Some(map.next_value()?),
                        "approvers" => out.approvers = map.next_value()?,
                        other => {
                            return Err(de::Error::unknown_field(
                                other,
                                &["required", "message", "approvers"],
                            ));
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParam {
    pub default: Option<Scalar>,
    pub description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub id: Spanned<String>,
    pub run: Option<Spanned<String>>,
    pub needs: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, Scalar>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<RawRetries>,
    pub grace: Option<Spanned<String>>,
    pub description: Option<String>,
    #[serde(rename = "if")]
    pub cond: Option<Spanned<String>>,
    pub next: Option<Vec<Spanned<RawRule>>>,
    pub max_visits: Option<Spanned<i64>>,
    pub call: Option<Spanned<String>>,
    #[serde(default)]
    pub with: BTreeMap<Spanned<String>, Scalar>,
    pub on_failure: Option<RawOnFailure>,
    pub approval: Option<RawApproval>,
    pub gate: Option<Spanned<RawGate>>,
    pub inputs: Option<Vec<Spanned<String>>>,
    pub outputs: Option<Vec<Spanned<String>>>,
    pub cache: Option<bool>,
    pub secrets: Option<Vec<Spanned<String>>>,
    pub services: Option<Vec<Spanned<String>>>,
    pub executor: Option<Spanned<String>>,
    pub slurm: Option<Spanned<RawSlurm>>,
}

/// `on_failure = { call = "flows/cleanup.toml", with = { … }, then = "retry" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnFailure {
    pub call: Spanned<String>,
    #[serde(default)]
    pub with: BTreeMap<Spanned<String>, Scalar>,
    pub then: Spanned<String>,
}

/// One routing rule: `{ if = "…", goto = "step" }`; without `if` it is the default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(rename = "if")]
    pub cond: Option<Spanned<String>>,
    pub goto: Spanned<String>,
}

/// `retries = 2` or `retries = { attempts = 2, backoff = "5s" }`.
pub struct RawRetries {
    pub attempts: u32,
    pub backoff: Option<Spanned<String>>,
}

/// Retries beyond this are almost certainly a typo, and would make backoff absurd.
pub const MAX_RETRIES: u32 = 100;

impl<'de> Deserialize<'de> for RawRetries {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Clone, Copy)]
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRetries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a number of extra attempts (0 to {MAX_RETRIES}) or a table {{ attempts = N, backoff = \"1s\" }}"
                )
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawRetries, E> {
                let attempts = u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= MAX_RETRIES)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(n), &self))?;
                Ok(RawRetries { attempts, backoff: None })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawRetries, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRetries, A::Error> {
                let mut attempts = None;
                let mut backoff = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "attempts" => {
                            let n: i64 = map.next_value()?;
                            attempts = Some(self.visit_i64::<A::Error>(n)?.attempts);
                        }
                        "backoff" => backoff = Some(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["attempts", "backoff"])),
                    }
                }
                let attempts = attempts.ok_or_else(|| de::Error::missing_field("attempts"))?;
                Ok(RawRetries { attempts, backoff })
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, number or boolean; environment values and defaults are all text in the end.
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar(s.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar(n.to_string()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Scalar, E> {
                Ok(Scalar(n.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar(b.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

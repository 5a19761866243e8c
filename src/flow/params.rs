//! `--param name=value`: checking given values against what the flow declares.

use std::collections::BTreeMap;

use super::Flow;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamError {
    #[error("--param {0:?} must look like name=value")]
    Malformed(String),
    #[error("--param {0} is given twice")]
    Twice(String),
    #[error("unknown parameter `{name}`: {declared}")]
    Unknown { name: String, declared: String },
    #[error("missing required parameter `{0}`: pass it with --param {0}=VALUE")]
    Missing(String),
}

/// Splits `name=value` arguments; the value may itself contain `=`.
pub fn parse_param_args(args: &[String]) -> Result<Vec<(String, String)>, ParamError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(args.len());
    for arg in args {
        let (name, value) = arg
            .split_once('=')
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| ParamError::Malformed(arg.clone()))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(ParamError::Twice(name.to_string()));
        }
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

impl Flow {
    /// Every declared parameter with its value: given, else its default.
    pub fn resolve_params(&self, given: &[(String, String)]) -> Result<BTreeMap<String, String>, ParamError> {
        let mut values = BTreeMap::new();
        for (name, value) in given {
            if !self.params.contains_key(name) {
                let declared = if self.params.is_empty() {
                    "this flow declares no parameters".to_string()
                } else {
                    let names: Vec<&str> = self.params.keys().map(String::as_str).collect();
                    format!("this flow declares {}", names.join(", "))
                };
                return Err(ParamError::Unknown { name: name.clone(), declared });
            }
            values.insert(name.clone(), value.clone());
        }
        for (name, param) in &self.params {
            if values.contains_key(name) {
                continue;
            }
            match &param.default {
                Some(d) => values.insert(name.clone(), d.clone()),
                None => return Err(ParamError::Missing(name.clone())),
            };
        }
        Ok(values)
    }
}

/// `RUNNER_PARAM_<NAME>`: upper-cased, anything not alphanumeric becomes `_`.
pub fn param_env_name(name: &str) -> String {
    let mut env = String::from("RUNNER_PARAM_");
    env.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }));
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn flow() -> Flow {
        Flow::from_bytes(
            Path::new("f.toml"),
            b"[params]\nday={}\nwho={default='world'}\n[[steps]]\nid='a'\nrun='x'\n",
        )
        .expect("valid")
    }

    #[test]
    fn defaults_fill_in_and_values_keep_equals_signs() {
        let given = parse_param_args(&["day=a=b".into()]).expect("ok");
        let v = flow().resolve_params(&given).expect("ok");
        assert_eq!(v["day"], "a=b");
        assert_eq!(v["who"], "world");
    }

    #[test]
    fn unknown_missing_and_malformed() {
        let f = flow();
        assert_eq!(f.resolve_params(&[]), Err(ParamError::Missing("day".into())));
        let e = f.resolve_params(&[("dya".into(), "1".into())]).expect_err("unknown");
        assert_eq!(e.to_string(), "unknown parameter `dya`: this flow declares day, who");
        assert!(parse_param_args(&["novalue".into()]).is_err());
        assert!(parse_param_args(&["=x".into()]).is_err());
        assert!(parse_param_args(&["a=1".into(), "a=2".into()]).is_err());
    }

    #[test]
    fn env_names() {
        assert_eq!(param_env_name("day"), "RUNNER_PARAM_DAY");
        assert_eq!(param_env_name("out-dir.v2"), "RUNNER_PARAM_OUT_DIR_V2");
    }
}

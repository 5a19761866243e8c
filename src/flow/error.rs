//! Flow errors that point at the offending place in the file.

use std::fmt;
use std::path::{Path, PathBuf};

/// A 1-based line and column (columns count characters, as editors do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// What was wrong with a flow file.
#[derive(Debug, thiserror::Error)]
pub enum FlowErrorKind {
    #[error("cannot read the flow file: {0}")]
    Read(#[source] std::io::Error),
    #[error("the flow file is not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Toml(String),
    #[error("the flow has no steps: add at least one [[steps]] table with `id` and `run`")]
    NoSteps,
    #[error("invalid step id `{0}`: use 1 to 64 letters, digits, `_` or `-`")]
    StepId(String),
    #[error("duplicate step id `{id}` (first defined on line {first_line})")]
    DuplicateStep { id: String, first_line: usize },
    #[error("step `{step}` needs unknown step `{need}`{hint}")]
    UnknownNeed { step: String, need: String, hint: String },
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("step `{0}` has an empty `run` command")]
    EmptyRun(String),
    #[error("step `{0}`: missing field `run` (the command to run) or `call` (a flow to run)")]
    MissingRun(String),
    #[error("step `{0}` has both `run` and `call`; a step runs a command or calls a flow, not both")]
    RunAndCall(String),
    #[error("`then` = {0:?}: expected \"retry\", \"fail\" or \"continue\"")]
    Then(String),
    #[error("`with` is only for a step that has `call`")]
    WithoutCall,
    #[error("step `{step}` calls {target:?}: {message}")]
    Call { step: String, target: String, message: String },
    #[error("invalid condition in `{field}`: {message}")]
    Condition { field: String, message: String },
    #[error("`{field}` refers to unknown step `{name}`{hint}")]
    UnknownStepRef { field: String, name: String, hint: String },
    #[error("`{field}` refers to unknown parameter `{name}`; declare it under [params]")]
    UnknownParamRef { field: String, name: String },
    #[error("unknown step `{goto}` in the routes of `{step}`{hint}")]
    UnknownGoto { step: String, goto: String, hint: String },
    #[error(
        "`{step}` cannot route to `{goto}`: a route leads forward to one of the steps that need \
         `{step}` ({dependents}), or back to `{step}` or a step it depends on"
    )]
    BadGoto { step: String, goto: String, dependents: String },
    #[error(
        "step `{step}` can be visited again (loop {}) but has no `max_visits`; add \
         `max_visits = N` to bound the loop",
        .cycle.join(" -> ")
    )]
    MissingMaxVisits { step: String, cycle: Vec<String> },
    #[error("`max_visits` must be between 1 and {max}")]
    MaxVisits { max: u32 },
    #[error("`{step}` has a rule without `if` (the default) before other rules, which would never be tried")]
    DefaultNotLast { step: String },
    #[error(
        "`{field}` = {value:?} is not a valid duration: {reason} (examples: \"500ms\", \"30s\", \"1h 30m\")"
    )]
    Duration { field: String, value: String, reason: String },
    #[error("invalid parameter name `{0}`: start with a letter or `_`, then letters, digits, `_` or `-`")]
    ParamName(String),
    #[error("parameters `{first}` and `{second}` would both be passed as ${env}")]
    ParamClash { first: String, second: String, env: String },
    #[error(
        "invalid environment variable name `{0}`: use letters, digits and `_`, not starting with a digit"
    )]
    EnvName(String),
    #[error("environment variable `{0}` is set by the runner itself and cannot be overridden")]
    ReservedEnv(String),
    #[error("step `{step}`: `{field}` is for a step that runs a command, not one that calls a flow")]
    NotForCall { step: String, field: String },
    #[error("invalid approver name {0:?}: use a user name (letters, digits, `.`, `_`, `-`, `@`)")]
    Approver(String),
    #[error("invalid path pattern in `{field}` ({pattern:?}): {reason}")]
    Pattern { field: String, pattern: String, reason: String },
    #[error("profile `{profile}` names unknown step `{step}`{hint}")]
    ProfileStep { profile: String, step: String, hint: String },
    #[error("invalid profile name `{0}`: use letters, digits, `_` or `-`")]
    ProfileName(String),
    #[error(
        "`{0}` is both a secret and in `env`: a secret's value comes from the environment or --env-file, never from the flow"
    )]
    SecretInEnv(String),
    #[error("invalid service name `{0}`: use 1 to 64 letters, digits, `_` or `-`")]
    ServiceName(String),
    #[error("service `{service}`: {message}")]
    Service { service: String, message: String },
    #[error(
        "invalid `schedule` = {value:?}: {message} (crontab syntax: minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\")"
    )]
    Schedule { value: String, message: String },
    #[error("`{field}`: {message}")]
    Slurm { field: String, message: String },
    #[error("step `{step}` uses unknown service `{service}`{hint}")]
    UnknownService { step: String, service: String, hint: String },
}

/// A flow error with the file and, when known, the line and column it concerns.
#[derive(Debug)]
pub struct FlowError(Box<Located>);

#[derive(Debug)]
struct Located {
    path: PathBuf,
    pos: Option<Pos>,
    /// The source line at `pos`, shown under the message with a caret.
    line_text: Option<String>,
    kind: FlowErrorKind,
}

impl FlowError {
    pub(crate) fn whole_file(path: &Path, kind: FlowErrorKind) -> Self {
        FlowError(Box::new(Located { path: path.to_path_buf(), pos: None, line_text: None, kind }))
    }

    pub fn kind(&self) -> &FlowErrorKind {
        &self.0.kind
    }

    pub fn pos(&self) -> Option<Pos> {
        self.0.pos
    }
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        let path = e.path.display();
        match e.pos {
            Some(pos) => write!(f, "{path}:{}:{}: {}", pos.line, pos.col, e.kind)?,
            None => write!(f, "{path}: {}", e.kind)?,
        }
        if let (Some(pos), Some(text)) = (e.pos, &e.line_text) {
            let gutter = pos.line.to_string();
            let pad = " ".repeat(gutter.len());
            let caret_pad: String = text
                .chars()
                .take(pos.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n{pad} |\n{gutter} | {text}\n{pad} | {caret_pad}^")?;
        }
        Ok(())
    }
}

impl std::error::Error for FlowError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.kind.source()
    }
}

/// The text of a flow file, kept to turn byte offsets into positions.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        Pos { line, col }
    }

    pub fn error_at(&self, offset: usize, kind: FlowErrorKind) -> FlowError {
        let pos = self.pos(offset);
        let line_text = self.text.lines().nth(pos.line - 1).map(|l| l.trim_end_matches('\r').to_string());
        FlowError(Box::new(Located { path: self.path.to_path_buf(), pos: Some(pos), line_text, kind }))
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = Source { path: Path::new("f.toml"), text: "a = 1\nbé = \"x\"\n" };
        assert_eq!(src.pos(0), Pos { line: 1, col: 1 });
        assert_eq!(src.pos(6), Pos { line: 2, col: 1 });
        // `=` on line 2 comes after "bé " (3 characters, 4 bytes).
        assert_eq!(src.pos(10), Pos { line: 2, col: 4 });
    }

    #[test]
    fn display_shows_the_line_and_a_caret() {
        let src = Source { path: Path::new("flows/x.toml"), text: "[[steps]]\nid = \"a b\"\n" };
        let err = src.error_at(15, FlowErrorKind::StepId("a b".into()));
        let shown = err.to_string();
        assert!(shown.starts_with("flows/x.toml:2:6: invalid step id `a b`"), "{shown}");
        assert!(shown.ends_with("2 | id = \"a b\"\n  |      ^"), "{shown}");
    }
}

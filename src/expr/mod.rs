//! Condition expressions for `if = "…"` on flow steps and routing rules.
//!
//! A small language in the spirit of GitHub Actions expressions, written by hand (a lexer,
//! a recursive-descent parser and a tree-walking evaluator) so that error messages can point
//! at a byte offset and so that no parser crate is needed for a dozen tokens. Every error is
//! found by [`parse`]; evaluation is loose and never fails, so a condition cannot stop a run
//! halfway through.
//!
//! Grammar, lowest precedence first:
//!
//! ```text
//! expr     = and ( "||" and )*
//! and      = equality ( "&&" equality )*
//! equality = relation [ ( "==" | "!=" ) relation ]
//! relation = unary [ ( "<" | "<=" | ">" | ">=" ) unary ]
//! unary    = ( "!" | "-" ) unary | primary
//! primary  = number | string | "true" | "false" | "null"
//!          | "params." name | "steps." id ".outputs." key | "steps." id ".status"
//!          | ( "success" | "failure" | "always" ) "(" ")"
//!          | "(" expr ")"
//! name, key = [A-Za-z_][A-Za-z0-9_-]*        id = [A-Za-z0-9_-]+
//! number   = digits [ "." digits ] [ ( "e" | "E" ) [ "+" | "-" ] digits ]
//! string   = "'" ( any but "'" | "''" )* "'"
//!          | '"' ( any but '"' and '\' | '\"' | '\\' | '\n' | '\t' )* '"'
//! ```
//!
//! Comparisons do not chain: `a == b == c` and `1 < x < 3` are parse errors, because they
//! almost never mean what they look like. A dotted reference such as `steps.my-step.status` is
//! a single token (no spaces inside), which is what lets `-` appear in ids. There is no
//! arithmetic; unary `-` only negates. Whitespace may appear between any two tokens. Sources are
//! limited to [`MAX_LEN`] bytes and [`MAX_DEPTH`] levels of parentheses and unary operators, so
//! parsing and evaluation cannot overflow the stack.

mod eval;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

/// Longest accepted source, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest accepted nesting of parentheses and unary operators.
pub const MAX_DEPTH: usize = 64;

/// A parsed condition. Cheap to evaluate many times against different contexts.
#[derive(Debug, Clone)]
pub struct Expr {
    source: String,
    root: Node,
}

/// Why a source is not an expression, and where: `offset` is a byte offset into the source
/// (on a char boundary, at most its length) for drawing a caret under the offending token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

impl ExprError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        ExprError { offset, message: message.into() }
    }
}

/// The result of evaluating an expression. References produce strings (or `Null` when missing),
/// so comparisons are loose, as in GitHub Actions, and never fail.
///
/// `==` is symmetric and `!=` is its negation:
///
/// | `==`     | Str                      | Num                      | Bool                  | Null          |
/// |----------|--------------------------|--------------------------|-----------------------|---------------|
/// | **Str**  | same text (case matters) | Str is numeric and `==`  | Bool as text, `==`    | Str is empty  |
/// | **Num**  |                          | `==` (NaN is never `==`) | Bool as 1/0, `==`     | Num is 0      |
/// | **Bool** |                          |                          | `==`                  | Bool is false |
/// | **Null** |                          |                          |                       | always        |
///
/// `<`, `<=`, `>`, `>=` compare as numbers when either side is a `Num` or both are numeric (a
/// `Bool` is 1/0, `Null` 0, a `Str` when numeric); a non-numeric `Str` is then NaN and every
/// comparison with NaN is false, so `'abc' >= 80` is false. Otherwise (a non-numeric `Str`
/// against a `Str`, `Bool` or `Null`) the [`as_text`](Value::as_text) forms compare byte-wise.
///
/// A numeric `Str` is, once trimmed, a decimal such as `42`, `-3.5`, `.5` or `1e3`; the empty
/// string, `inf`, `NaN` and `0x10` are not.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// What an expression can read about the run it is evaluated in.
pub trait Context {
    fn param(&self, name: &str) -> Option<String>;
    /// `None` means there is no such output; it evaluates to `Null`.
    fn output(&self, step: &str, key: &str) -> Option<String>;
    /// E.g. "succeeded", "failed", "skipped", "pending"; `None` evaluates to `Null`.
    fn status(&self, step: &str) -> Option<String>;
    fn success(&self) -> bool;
    fn failure(&self) -> bool;
}

/// A reference to something outside the expression, with the byte offset of the reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Ref {
    Param { name: String, offset: usize },
    Output { step: String, key: String, offset: usize },
    Status { step: String, offset: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Success,
    Failure,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The AST. `&&` and `||` chains are flat lists, so a long chain is not a deep tree.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Value),
    Ref(Ref),
    Call(Func),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
}

impl Node {
    /// Visits every node, parents first, children left to right (that is, in source order).
    fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Node)) {
        f(self);
        match self {
            Node::Lit(_) | Node::Ref(_) | Node::Call(_) => {}
            Node::Not(x) | Node::Neg(x) => x.walk(f),
            Node::And(xs) | Node::Or(xs) => xs.iter().for_each(|x| x.walk(f)),
            Node::Cmp(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
        }
    }

    fn calls(&self, func: Func) -> bool {
        let mut found = false;
        self.walk(&mut |n| found |= *n == Node::Call(func));
        found
    }
}

/// Parses a condition; see the module documentation for the grammar.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let root = parser::parse(src)?;
    Ok(Expr { source: src.to_owned(), root })
}

impl Expr {
    /// Evaluates against `ctx`. Never fails: mixed types compare loosely (see [`Value`]) and
    /// missing references are `Null`.
    pub fn eval(&self, ctx: &dyn Context) -> Value {
        self.root.eval(ctx)
    }

    pub fn is_true(&self, ctx: &dyn Context) -> bool {
        self.eval(ctx).is_truthy()
    }

    /// Every parameter, output and status the expression reads, in source order, so callers
    /// can check them against the flow before anything runs.
    pub fn refs(&self) -> Vec<Ref> {
        let mut refs = Vec::new();
        self.root.walk(&mut |n| {
            if let Node::Ref(r) = n {
                refs.push(r.clone());
            }
        });
        refs
    }

    pub fn uses_always(&self) -> bool {
        self.root.calls(Func::Always)
    }

    pub fn uses_failure(&self) -> bool {
        self.root.calls(Func::Failure)
    }

    pub fn uses_success(&self) -> bool {
        self.root.calls(Func::Success)
    }

    /// True when the expression calls always() or failure() or reads any `steps.<id>.status`:
    /// such a step is still evaluated when one of its needs was skipped or failed.
    pub fn handles_failure(&self) -> bool {
        self.uses_always()
            || self.uses_failure()
            || self.refs().iter().any(|r| matches!(r, Ref::Status { .. }))
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

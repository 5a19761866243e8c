//! Loose evaluation, in the spirit of GitHub Actions: outputs and params are always strings, so
//! `steps.t.outputs.coverage >= 80` must compare numbers, and nothing may fail at run time.
//!
//! The rules are documented on [`Value`].

use std::cmp::Ordering;

use super::{CmpOp, Context, Func, Node, Ref, Value};

impl Node {
    pub(super) fn eval(&self, ctx: &dyn Context) -> Value {
        let text = |s: Option<String>| s.map_or(Value::Null, Value::Str);
        match self {
            Node::Lit(v) => v.clone(),
            Node::Ref(Ref::Param { name, .. }) => text(ctx.param(name)),
            Node::Ref(Ref::Output { step, key, .. }) => text(ctx.output(step, key)),
            Node::Ref(Ref::Status { step, .. }) => text(ctx.status(step)),
            Node::Call(Func::Success) => Value::Bool(ctx.success()),
            Node::Call(Func::Failure) => Value::Bool(ctx.failure()),
            Node::Call(Func::Always) => Value::Bool(true),
            Node::Not(x) => Value::Bool(!x.eval(ctx).is_truthy()),
            Node::Neg(x) => Value::Num(-x.eval(ctx).to_number()),
            Node::And(xs) => Value::Bool(xs.iter().all(|x| x.eval(ctx).is_truthy())),
            Node::Or(xs) => Value::Bool(xs.iter().any(|x| x.eval(ctx).is_truthy())),
            Node::Cmp(op, a, b) => {
                let (a, b) = (a.eval(ctx), b.eval(ctx));
                let order = || a.compare(&b);
                Value::Bool(match op {
                    CmpOp::Eq => a.loose_eq(&b),
                    CmpOp::Ne => !a.loose_eq(&b),
                    CmpOp::Lt => order() == Some(Ordering::Less),
                    CmpOp::Le => matches!(order(), Some(Ordering::Less | Ordering::Equal)),
                    CmpOp::Gt => order() == Some(Ordering::Greater),
                    CmpOp::Ge => matches!(order(), Some(Ordering::Greater | Ordering::Equal)),
                })
            }
        }
    }
}

impl Value {
    /// `Bool` as is; `Num` when neither 0 nor NaN; `Str` when non-empty (so `'false'` is true);
    /// `Null` is false.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Num(n) => *n != 0.0 && !n.is_nan(),
            Value::Str(s) => !s.is_empty(),
            Value::Null => false,
        }
    }

    /// The value as it would be written into a command or file: numbers without a trailing
    /// `.0` (`80`, not `80.0`) and never in exponent form, `Null` as the empty string.
    pub fn as_text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Num(n) if *n == 0.0 => "0".to_owned(), // also -0
            Value::Num(n) if n.is_infinite() => if *n > 0.0 { "Infinity" } else { "-Infinity" }.to_owned(),
            Value::Num(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
        }
    }

    /// `Num` as is, numeric `Str` parsed, other `Str` NaN, `Bool` 1 or 0, `Null` 0.
    fn to_number(&self) -> f64 {
        match self {
            Value::Num(n) => *n,
            Value::Str(s) => numeric(s).unwrap_or(f64::NAN),
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Null => 0.0,
        }
    }

    fn is_numeric(&self) -> bool {
        match self {
            Value::Str(s) => numeric(s).is_some(),
            _ => true,
        }
    }

    /// `==`, following the table in the module documentation.
    fn loose_eq(&self, other: &Value) -> bool {
        use Value::{Bool, Null, Num, Str};
        match (self, other) {
            (Str(a), Str(b)) => a == b,
            (Num(a), Num(b)) => a == b,
            (Bool(a), Bool(b)) => a == b,
            (Null, Null) => true,
            (Num(n), Str(s)) | (Str(s), Num(n)) => numeric(s) == Some(*n),
            (Bool(b), Str(s)) | (Str(s), Bool(b)) => *s == b.to_string(),
            (Null, Str(s)) | (Str(s), Null) => s.is_empty(),
            (Null, Bool(b)) | (Bool(b), Null) => !b,
            (Null, Num(n)) | (Num(n), Null) => *n == 0.0,
            (Num(n), Bool(b)) | (Bool(b), Num(n)) => *n == f64::from(u8::from(*b)),
        }
    }

    /// The order for `<` and friends; `None` (so every comparison is false) when NaN is involved.
    fn compare(&self, other: &Value) -> Option<Ordering> {
        let either_num = matches!(self, Value::Num(_)) || matches!(other, Value::Num(_));
        if either_num || (self.is_numeric() && other.is_numeric()) {
            self.to_number().partial_cmp(&other.to_number())
        } else {
            Some(self.as_text().cmp(&other.as_text()))
        }
    }
}

/// Parses a numeric string (see the module documentation). Stricter than `f64::from_str`,
/// which would also accept `inf` and `NaN`.
pub(super) fn numeric(s: &str) -> Option<f64> {
    let t = s.trim();
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let valid = digits(int)
        && digits(frac)
        && !(int.is_empty() && frac.is_empty())
        && exponent.is_none_or(|e| !e.is_empty() && digits(e));
    if valid { t.parse().ok() } else { None }
}

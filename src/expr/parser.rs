//! Recursive descent over the grammar in the module documentation, one function per level.

use super::lexer::{Kind, Lexer, Token};
use super::{CmpOp, ExprError, Func, MAX_DEPTH, MAX_LEN, Node, Ref, Value};

type Result<T> = std::result::Result<T, ExprError>;

const EXPECTED_NAMES: &str = "expected params.<name>, steps.<id>.outputs.<key>, steps.<id>.status, \
                              success(), failure(), always(), true, false or null";

pub(super) fn parse(src: &str) -> Result<Node> {
    if src.len() > MAX_LEN {
        let mut at = MAX_LEN;
        while !src.is_char_boundary(at) {
            at -= 1;
        }
        let msg = format!("expression is too long ({} bytes, at most {MAX_LEN})", src.len());
        return Err(ExprError::new(at, msg));
    }
    let mut lexer = Lexer::new(src);
    let tok = lexer.next_token()?;
    if tok.kind == Kind::End {
        return Err(ExprError::new(0, "empty expression"));
    }
    let mut p = Parser { src, lexer, tok, depth: 0 };
    let root = p.or()?;
    match p.tok.kind {
        Kind::End => Ok(root),
        _ => Err(p.unexpected()),
    }
}

struct Parser<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
    /// The current, not yet consumed, token.
    tok: Token<'a>,
    depth: usize,
}

impl<'a> Parser<'a> {
    /// Consumes the current token and returns it.
    fn bump(&mut self) -> Result<Token<'a>> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    fn text(&self, tok: &Token) -> String {
        shorten(&self.src[tok.start..tok.end])
    }

    fn unexpected(&self) -> ExprError {
        let msg = match self.tok.kind {
            Kind::End => "unexpected end of expression".to_owned(),
            _ => format!("unexpected `{}`", self.text(&self.tok)),
        };
        ExprError::new(self.tok.start, msg)
    }

    /// Consumes the current token (an operator or `(`) and parses what follows with `operand`,
    /// naming that token in the error when nothing that can start an operand follows.
    fn after(&mut self, operand: fn(&mut Self) -> Result<Node>) -> Result<Node> {
        let op = self.bump()?;
        let starts_operand = matches!(
            self.tok.kind,
            Kind::Num(_) | Kind::Str(_) | Kind::Path(_) | Kind::LParen | Kind::Not | Kind::Minus
        );
        if !starts_operand {
            let mut msg = format!("expected an operand after `{}`", self.text(&op));
            if self.tok.kind != Kind::End {
                msg += &format!(", found `{}`", self.text(&self.tok));
            }
            return Err(ExprError::new(self.tok.start, msg));
        }
        operand(self)
    }

    /// Counts one level of nesting at the current token; callers undo it with `leave`.
    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let msg = format!("expression is nested too deeply (more than {MAX_DEPTH} levels)");
            return Err(ExprError::new(self.tok.start, msg));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn or(&mut self) -> Result<Node> {
        self.chain(Kind::Or, Self::and, Node::Or)
    }

    fn and(&mut self) -> Result<Node> {
        self.chain(Kind::And, Self::equality, Node::And)
    }

    /// `first (sep next)*` as one flat node, so long chains do not make deep trees.
    fn chain(
        &mut self,
        sep: Kind,
        next: fn(&mut Self) -> Result<Node>,
        make: fn(Vec<Node>) -> Node,
    ) -> Result<Node> {
        let first = next(self)?;
        if self.tok.kind != sep {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.tok.kind == sep {
            items.push(self.after(next)?);
        }
        Ok(make(items))
    }

    fn equality(&mut self) -> Result<Node> {
        self.comparison(Self::relation, |k| match k {
            Kind::Eq => Some(CmpOp::Eq),
            Kind::Ne => Some(CmpOp::Ne),
            _ => None,
        })
    }

    fn relation(&mut self) -> Result<Node> {
        self.comparison(Self::unary, |k| match k {
            Kind::Lt => Some(CmpOp::Lt),
            Kind::Le => Some(CmpOp::Le),
            Kind::Gt => Some(CmpOp::Gt),
            Kind::Ge => Some(CmpOp::Ge),
            _ => None,
        })
    }

    /// `next [op next]`, non-associative: a second operator of the same level is an error.
    fn comparison(
        &mut self,
        next: fn(&mut Self) -> Result<Node>,
        op_of: fn(&Kind) -> Option<CmpOp>,
    ) -> Result<Node> {
        let lhs = next(self)?;
        let Some(op) = op_of(&self.tok.kind) else { return Ok(lhs) };
        let rhs = self.after(next)?;
        if op_of(&self.tok.kind).is_some() {
            let msg = format!("`{}` cannot be chained: add parentheses", self.text(&self.tok));
            return Err(ExprError::new(self.tok.start, msg));
        }
        Ok(Node::Cmp(op, Box::new(lhs), Box::new(rhs)))
    }

    fn unary(&mut self) -> Result<Node> {
        let make: fn(Box<Node>) -> Node = match self.tok.kind {
            Kind::Not => Node::Not,
            Kind::Minus => Node::Neg,
            _ => return self.primary(),
        };
        self.enter()?;
        let operand = self.after(Self::unary)?;
        self.leave();
        Ok(make(Box::new(operand)))
    }

    fn primary(&mut self) -> Result<Node> {
        let node = match &self.tok.kind {
            Kind::Num(n) => Node::Lit(Value::Num(*n)),
            Kind::Str(s) => Node::Lit(Value::Str(s.clone())),
            Kind::LParen => {
                let open = self.tok.start;
                self.enter()?;
                let inner = self.after(Self::or)?;
                self.leave();
                return match self.tok.kind {
                    Kind::RParen => {
                        self.bump()?;
                        Ok(inner)
                    }
                    Kind::End => Err(ExprError::new(open, "unclosed `(`")),
                    _ => {
                        let msg = format!("expected `)`, found `{}`", self.text(&self.tok));
                        Err(ExprError::new(self.tok.start, msg))
                    }
                };
            }
            Kind::Path(segs) => {
                let (segs, start, end) = (segs.clone(), self.tok.start, self.tok.end);
                return self.path(&segs, start, end);
            }
            _ => return Err(self.unexpected()),
        };
        self.bump()?;
        Ok(node)
    }

    /// Resolves a dotted name (the current token) to a reference, literal or function call.
    fn path(&mut self, segs: &[(&str, usize)], start: usize, end: usize) -> Result<Node> {
        let node = match segs {
            [("params", _), rest @ ..] => {
                let Some(&(name, at)) = rest.first() else {
                    return Err(ExprError::new(end, "expected `.<name>` after `params`"));
                };
                check_name(name, at, "parameter name", "params.")?;
                if let Some(&(_, extra)) = rest.get(1) {
                    return Err(self.trailing(start, extra, end));
                }
                Node::Ref(Ref::Param { name: name.to_owned(), offset: start })
            }
            [("steps", _), rest @ ..] => self.step(rest, start, end)?,
            [(name @ ("success" | "failure" | "always"), _)] => {
                let func = match *name {
                    "success" => Func::Success,
                    "failure" => Func::Failure,
                    _ => Func::Always,
                };
                self.bump()?;
                return self.call(func, name, start);
            }
            [("true", _)] => Node::Lit(Value::Bool(true)),
            [("false", _)] => Node::Lit(Value::Bool(false)),
            [("null", _)] => Node::Lit(Value::Null),
            [(name, _)] if self.src[end..].trim_start().starts_with('(') => {
                let msg = format!("unknown function `{name}`: expected success(), failure() or always()");
                return Err(ExprError::new(start, msg));
            }
            _ => {
                let msg = format!("unknown name `{}`: {EXPECTED_NAMES}", shorten(&self.src[start..end]));
                return Err(ExprError::new(start, msg));
            }
        };
        self.bump()?;
        Ok(node)
    }

    /// `rest` follows `steps.`: `<id>.status` or `<id>.outputs.<key>`.
    fn step(&self, rest: &[(&str, usize)], start: usize, end: usize) -> Result<Node> {
        const EXPECTED: &str = "expected steps.<id>.status or steps.<id>.outputs.<key>";
        let Some(&(id, id_at)) = rest.first() else {
            return Err(ExprError::new(end, format!("expected `.<id>` after `steps`: {EXPECTED}")));
        };
        if id.is_empty() {
            return Err(ExprError::new(id_at, format!("expected a step id after `steps.`: {EXPECTED}")));
        }
        let step = id.to_owned();
        let (node, used) = match rest.get(1) {
            None => {
                let msg = format!("expected `.status` or `.outputs.<key>` after `steps.{id}`");
                return Err(ExprError::new(end, msg));
            }
            Some(("status", _)) => (Node::Ref(Ref::Status { step, offset: start }), 2),
            Some(("outputs", _)) => {
                let Some(&(key, key_at)) = rest.get(2) else {
                    return Err(ExprError::new(end, "expected `.<key>` after `outputs`"));
                };
                check_name(key, key_at, "output key", "outputs.")?;
                (Node::Ref(Ref::Output { step, key: key.to_owned(), offset: start }), 3)
            }
            Some(&(field, at)) => {
                let msg = format!("unknown step field `{}`: {EXPECTED}", shorten(field));
                return Err(ExprError::new(at, msg));
            }
        };
        match rest.get(used) {
            Some(&(_, extra)) => Err(self.trailing(start, extra, end)),
            None => Ok(node),
        }
    }

    /// A complete reference followed by more segments, as in `params.a.b`: `extra` is the
    /// offset of the first segment too many, `start..end` the whole token.
    fn trailing(&self, start: usize, extra: usize, end: usize) -> ExprError {
        let (valid, rest) = (&self.src[start..extra - 1], &self.src[extra - 1..end]);
        ExprError::new(extra - 1, format!("unexpected `{}` after `{valid}`", shorten(rest)))
    }

    /// The current token follows the function name: `(` and then `)`.
    fn call(&mut self, func: Func, name: &str, start: usize) -> Result<Node> {
        if self.tok.kind != Kind::LParen {
            return Err(ExprError::new(start, format!("`{name}` is a function: write `{name}()`")));
        }
        self.bump()?;
        match self.tok.kind {
            Kind::RParen => {
                self.bump()?;
                Ok(Node::Call(func))
            }
            Kind::End => Err(ExprError::new(self.tok.start, format!("expected `)` after `{name}(`"))),
            _ => Err(ExprError::new(self.tok.start, format!("`{name}()` takes no arguments"))),
        }
    }
}

/// Parameter names and output keys start with a letter or `_` (ids may also start with a digit).
fn check_name(name: &str, at: usize, what: &str, after: &str) -> Result<()> {
    match name.bytes().next() {
        None => Err(ExprError::new(at, format!("expected {what} after `{after}`"))),
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => Ok(()),
        Some(_) => {
            Err(ExprError::new(at, format!("invalid {what} `{name}`: it must start with a letter or `_`")))
        }
    }
}

/// A token's text, cut short so that an error message stays on one line.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(32) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

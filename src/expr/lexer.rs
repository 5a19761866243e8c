//! Tokens, produced one at a time on demand so that the first error in source order is the
//! one reported.

use super::ExprError;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind<'a> {
    Num(f64),
    Str(String),
    /// A dotted name such as `steps.my-step.status`, as (segment, byte offset) pairs. Segments
    /// may be empty or start with a digit; the parser says what is allowed where.
    Path(Vec<(&'a str, usize)>),
    LParen,
    RParen,
    Not,
    Minus,
    And,
    Or,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token<'a> {
    pub kind: Kind<'a>,
    /// Byte range in the source.
    pub start: usize,
    pub end: usize,
}

pub(super) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    pub fn next_token(&mut self) -> Result<Token<'a>, ExprError> {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
        let start = self.pos;
        let Some(c) = self.src[start..].chars().next() else {
            return Ok(Token { kind: Kind::End, start, end: start });
        };
        let next = self.src.as_bytes().get(start + 1).copied();
        let (kind, len) = match c {
            '(' => (Kind::LParen, 1),
            ')' => (Kind::RParen, 1),
            '-' => (Kind::Minus, 1),
            '&' if next == Some(b'&') => (Kind::And, 2),
            '|' if next == Some(b'|') => (Kind::Or, 2),
            '=' if next == Some(b'=') => (Kind::Eq, 2),
            '!' if next == Some(b'=') => (Kind::Ne, 2),
            '!' => (Kind::Not, 1),
            '<' if next == Some(b'=') => (Kind::Le, 2),
            '<' => (Kind::Lt, 1),
            '>' if next == Some(b'=') => (Kind::Ge, 2),
            '>' => (Kind::Gt, 1),
            '&' | '|' | '=' => {
                return Err(ExprError::new(start, format!("unexpected `{c}`: did you mean `{c}{c}`?")));
            }
            '\'' | '"' => {
                let (s, end) = self.string(start, c)?;
                (Kind::Str(s), end - start)
            }
            '0'..='9' => return self.number(start),
            c if c.is_ascii_alphabetic() || c == '_' => return Ok(self.path(start)),
            c => return Err(ExprError::new(start, format!("unexpected character `{}`", c.escape_debug()))),
        };
        self.pos = start + len;
        Ok(Token { kind, start, end: self.pos })
    }

    /// A quoted string starting at `start`; returns its value and the offset past the closing
    /// quote. Single quotes escape only themselves, by doubling (as in GitHub Actions); double
    /// quotes take the usual backslash escapes.
    fn string(&self, start: usize, quote: char) -> Result<(String, usize), ExprError> {
        let body = start + 1;
        let mut chars = self.src[body..].char_indices().peekable();
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' if quote == '\'' => {
                    if chars.next_if(|&(_, c)| c == '\'').is_none() {
                        return Ok((out, body + i + 1));
                    }
                    out.push('\'');
                }
                '"' if quote == '"' => return Ok((out, body + i + 1)),
                '\\' if quote == '"' => match chars.next() {
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e)) => {
                        let msg = format!(r#"unknown escape `\{e}`: expected \", \\, \n or \t"#);
                        return Err(ExprError::new(body + i, msg));
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(ExprError::new(start, "unterminated string"))
    }

    fn number(&mut self, start: usize) -> Result<Token<'a>, ExprError> {
        let b = self.src.as_bytes();
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut end = digits(start);
        if b.get(end) == Some(&b'.') && b.get(end + 1).is_some_and(u8::is_ascii_digit) {
            end = digits(end + 1);
        }
        if matches!(b.get(end), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(b.get(end + 1), Some(b'+' | b'-')));
            if b.get(end + 1 + sign).is_some_and(u8::is_ascii_digit) {
                end = digits(end + 1 + sign);
            }
        }
        // Something glued on, as in `1.2.3`, `12px` or `1e`, is a typo rather than two tokens.
        let mut glued = end;
        while b.get(glued).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.') {
            glued += 1;
        }
        let text = &self.src[start..glued];
        let invalid = || ExprError::new(start, format!("invalid number `{text}`"));
        if glued > end {
            return Err(invalid());
        }
        let n = text.parse().map_err(|_| invalid())?;
        self.pos = end;
        Ok(Token { kind: Kind::Num(n), start, end })
    }

    fn path(&mut self, start: usize) -> Token<'a> {
        let b = self.src.as_bytes();
        let mut segs = Vec::new();
        let mut seg_start = start;
        loop {
            let mut end = seg_start;
            while b.get(end).is_some_and(|&c| is_segment_byte(c)) {
                end += 1;
            }
            segs.push((&self.src[seg_start..end], seg_start));
            if b.get(end) != Some(&b'.') {
                self.pos = end;
                return Token { kind: Kind::Path(segs), start, end };
            }
            seg_start = end + 1;
        }
    }
}

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::sample::select;

use super::eval::numeric;
use super::*;

#[derive(Debug, Clone, Default)]
struct Ctx {
    params: HashMap<String, String>,
    outputs: HashMap<(String, String), String>,
    statuses: HashMap<String, String>,
    success: bool,
    failure: bool,
}

impl Context for Ctx {
    fn param(&self, name: &str) -> Option<String> {
        self.params.get(name).cloned()
    }
    fn output(&self, step: &str, key: &str) -> Option<String> {
        self.outputs.get(&(step.to_owned(), key.to_owned())).cloned()
    }
    fn status(&self, step: &str) -> Option<String> {
        self.statuses.get(step).cloned()
    }
    fn success(&self) -> bool {
        self.success
    }
    fn failure(&self) -> bool {
        self.failure
    }
}

fn ctx() -> Ctx {
    let mut c = Ctx { success: true, ..Ctx::default() };
    c.params.insert("env".into(), "prod".into());
    c.params.insert("n".into(), "3".into());
    c.outputs.insert(("t".into(), "coverage".into()), "85".into());
    c.statuses.insert("build".into(), "succeeded".into());
    c
}

fn eval(src: &str) -> Value {
    match parse(src) {
        Ok(e) => e.eval(&ctx()),
        Err(e) => panic!("{src:?} did not parse: {e:?}"),
    }
}

fn err(src: &str) -> ExprError {
    match parse(src) {
        Ok(e) => panic!("{src:?} parsed as {:?}", e.root),
        Err(e) => e,
    }
}

/// Fully parenthesized prefix form, to check how a source was grouped.
fn sexp(n: &Node) -> String {
    let list = |op: &str, xs: &[&Node]| {
        let items: Vec<String> = xs.iter().map(|x| sexp(x)).collect();
        format!("({op} {})", items.join(" "))
    };
    match n {
        Node::Not(x) => list("!", &[x]),
        Node::Neg(x) => list("-", &[x]),
        Node::And(xs) => list("&&", &xs.iter().collect::<Vec<_>>()),
        Node::Or(xs) => list("||", &xs.iter().collect::<Vec<_>>()),
        Node::Cmp(op, a, b) => list(op_text(*op), &[a, b]),
        leaf => to_source(leaf),
    }
}

fn op_text(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "==",
        CmpOp::Ne => "!=",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
    }
}

/// Binding strength, as in the grammar: `||` 1, `&&` 2, equality 3, relation 4, unary 5.
fn prec(n: &Node) -> u8 {
    match n {
        Node::Or(_) => 1,
        Node::And(_) => 2,
        Node::Cmp(CmpOp::Eq | CmpOp::Ne, ..) => 3,
        Node::Cmp(..) => 4,
        Node::Not(_) | Node::Neg(_) => 5,
        _ => 6,
    }
}

/// Prints an AST as source with only the parentheses it needs (a nested `&&` or `||` and a
/// comparison inside a comparison of the same level keep theirs).
fn to_source(n: &Node) -> String {
    let wrap = |x: &Node, min: u8| {
        let s = to_source(x);
        if prec(x) < min { format!("({s})") } else { s }
    };
    let join =
        |xs: &[Node], sep: &str, min: u8| xs.iter().map(|x| wrap(x, min)).collect::<Vec<_>>().join(sep);
    match n {
        Node::Lit(Value::Str(s)) if s.len() % 2 == 0 => format!("'{}'", s.replace('\'', "''")),
        Node::Lit(Value::Str(s)) => {
            let escaped =
                s.replace('\\', r"\\").replace('"', r#"\""#).replace('\n', r"\n").replace('\t', r"\t");
            format!("\"{escaped}\"")
        }
        Node::Lit(Value::Num(x)) => format!("{x}"),
        Node::Lit(Value::Bool(b)) => b.to_string(),
        Node::Lit(Value::Null) => "null".to_owned(),
        Node::Ref(Ref::Param { name, .. }) => format!("params.{name}"),
        Node::Ref(Ref::Output { step, key, .. }) => format!("steps.{step}.outputs.{key}"),
        Node::Ref(Ref::Status { step, .. }) => format!("steps.{step}.status"),
        Node::Call(Func::Success) => "success()".to_owned(),
        Node::Call(Func::Failure) => "failure()".to_owned(),
        Node::Call(Func::Always) => "always()".to_owned(),
        Node::Not(x) => format!("!{}", wrap(x, 5)),
        Node::Neg(x) => format!("-{}", wrap(x, 5)),
        Node::Or(xs) => join(xs, " || ", 2),
        Node::And(xs) => join(xs, " && ", 3),
        Node::Cmp(op, a, b) => {
            let min = prec(n) + 1;
            format!("{} {} {}", wrap(a, min), op_text(*op), wrap(b, min))
        }
    }
}

fn grouping(src: &str) -> String {
    match parse(src) {
        Ok(e) => sexp(&e.root),
        Err(e) => panic!("{src:?} did not parse: {e:?}"),
    }
}

#[test]
fn precedence() {
    let cases = [
        ("true || false && false", "(|| true (&& false false))"),
        ("false && true || true", "(|| (&& false true) true)"),
        ("1 == 2 && 3 != 4", "(&& (== 1 2) (!= 3 4))"),
        ("1 < 2 == 3 >= 4", "(== (< 1 2) (>= 3 4))"),
        ("!true == false", "(== (! true) false)"),
        ("-1 < -params.n", "(< (- 1) (- params.n))"),
        ("!(true || false)", "(! (|| true false))"),
        ("!!-1", "(! (! (- 1)))"),
        ("(1 == 2) == true", "(== (== 1 2) true)"),
        ("true || null || 1", "(|| true null 1)"),
        ("true && (false || true) && null", "(&& true (|| false true) null)"),
        ("  ( ( 1 ) )  ", "1"),
    ];
    for (src, want) in cases {
        assert_eq!(grouping(src), want, "{src}");
    }
    assert_eq!(eval("true || false && false"), Value::Bool(true));
    assert_eq!(eval("!true == false"), Value::Bool(true));
}

#[test]
fn literals_and_escapes() {
    assert_eq!(eval("'it''s'"), Value::Str("it's".into()));
    assert_eq!(eval("''''"), Value::Str("'".into()));
    assert_eq!(eval("''"), Value::Str(String::new()));
    assert_eq!(eval(r"'a\n'"), Value::Str(r"a\n".into()), "no escapes in single quotes");
    assert_eq!(eval(r#""a\"b\\c\nd\te""#), Value::Str("a\"b\\c\nd\te".into()));
    assert_eq!(eval(r#""it's""#), Value::Str("it's".into()));
    assert_eq!(eval("'日本 🙂'"), Value::Str("日本 🙂".into()));
    assert_eq!(eval("42"), Value::Num(42.0));
    assert_eq!(eval("3.5"), Value::Num(3.5));
    assert_eq!(eval("1e3"), Value::Num(1000.0));
    assert_eq!(eval("2.5E-1"), Value::Num(0.25));
    assert_eq!(eval("-1"), Value::Num(-1.0));
    assert_eq!(eval("- 1"), Value::Num(-1.0));
    assert_eq!(eval("true"), Value::Bool(true));
    assert_eq!(eval("false"), Value::Bool(false));
    assert_eq!(eval("null"), Value::Null);
    assert_eq!(eval("-'3'"), Value::Num(-3.0));
}

#[test]
fn references_and_functions() {
    assert_eq!(eval("params.env"), Value::Str("prod".into()));
    assert_eq!(eval("params.missing"), Value::Null);
    assert_eq!(eval("steps.t.outputs.coverage"), Value::Str("85".into()));
    assert_eq!(eval("steps.t.outputs.nope"), Value::Null);
    assert_eq!(eval("steps.build.status"), Value::Str("succeeded".into()));
    assert_eq!(eval("steps.my-step.status"), Value::Null);
    assert_eq!(eval("success()"), Value::Bool(true));
    assert_eq!(eval("failure ( )"), Value::Bool(false));
    assert_eq!(eval("always()"), Value::Bool(true));
    assert_eq!(eval("params.env=='prod'&&steps.build.status!='failed'"), Value::Bool(true));
}

#[test]
fn errors_name_the_token_and_its_offset() {
    let names = "expected params.<name>, steps.<id>.outputs.<key>, steps.<id>.status, success(), \
                 failure(), always(), true, false or null";
    let steps = "expected steps.<id>.status or steps.<id>.outputs.<key>";
    let cases: Vec<(&str, usize, String)> = vec![
        ("", 0, "empty expression".into()),
        (" \t", 0, "empty expression".into()),
        ("true &&", 7, "expected an operand after `&&`".into()),
        ("true && )", 8, "expected an operand after `&&`, found `)`".into()),
        ("true ||", 7, "expected an operand after `||`".into()),
        ("1 ==", 4, "expected an operand after `==`".into()),
        ("!", 1, "expected an operand after `!`".into()),
        ("- ", 2, "expected an operand after `-`".into()),
        ("()", 1, "expected an operand after `(`, found `)`".into()),
        ("true)", 4, "unexpected `)`".into()),
        (")", 0, "unexpected `)`".into()),
        (") 'open", 0, "unexpected `)`".into()),
        ("true false", 5, "unexpected `false`".into()),
        ("true()", 4, "unexpected `(`".into()),
        ("'abc", 0, "unterminated string".into()),
        ("1 == 'it''s", 5, "unterminated string".into()),
        ("\"abc\\\"", 0, "unterminated string".into()),
        (r#""a\qb""#, 2, r#"unknown escape `\q`: expected \", \\, \n or \t"#.into()),
        ("(true", 0, "unclosed `(`".into()),
        ("(true false", 6, "expected `)`, found `false`".into()),
        ("foo", 0, format!("unknown name `foo`: {names}")),
        ("true && foo.bar", 8, format!("unknown name `foo.bar`: {names}")),
        ("foo()", 0, "unknown function `foo`: expected success(), failure() or always()".into()),
        ("1 == bar (1)", 5, "unknown function `bar`: expected success(), failure() or always()".into()),
        ("success", 0, "`success` is a function: write `success()`".into()),
        ("always(1)", 7, "`always()` takes no arguments".into()),
        ("failure(", 8, "expected `)` after `failure(`".into()),
        ("params", 6, "expected `.<name>` after `params`".into()),
        ("params.", 7, "expected parameter name after `params.`".into()),
        ("params.1x", 7, "invalid parameter name `1x`: it must start with a letter or `_`".into()),
        ("params.a.b", 8, "unexpected `.b` after `params.a`".into()),
        ("steps", 5, format!("expected `.<id>` after `steps`: {steps}")),
        ("steps..status", 6, format!("expected a step id after `steps.`: {steps}")),
        ("steps.t", 7, "expected `.status` or `.outputs.<key>` after `steps.t`".into()),
        ("steps.t.result", 8, format!("unknown step field `result`: {steps}")),
        ("steps.t.outputs", 15, "expected `.<key>` after `outputs`".into()),
        ("steps.t.outputs.-k", 16, "invalid output key `-k`: it must start with a letter or `_`".into()),
        ("steps.t.status.x.y", 14, "unexpected `.x.y` after `steps.t.status`".into()),
        ("1 == 2 == 3", 7, "`==` cannot be chained: add parentheses".into()),
        ("1 < 2 <= 3", 6, "`<=` cannot be chained: add parentheses".into()),
        ("1 & 2", 2, "unexpected `&`: did you mean `&&`?".into()),
        ("1 | 2", 2, "unexpected `|`: did you mean `||`?".into()),
        ("1 = 1", 2, "unexpected `=`: did you mean `==`?".into()),
        ("1 # 2", 2, "unexpected character `#`".into()),
        ("'é' == é", 8, "unexpected character `é`".into()),
        ("12ab", 0, "invalid number `12ab`".into()),
        ("1 < 1.2.3", 4, "invalid number `1.2.3`".into()),
        ("1e", 0, "invalid number `1e`".into()),
        ("1.", 0, "invalid number `1.`".into()),
        (
            "true 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'",
            5,
            format!("unexpected `'{}…`", "a".repeat(31)),
        ),
    ];
    for (src, offset, message) in cases {
        let e = err(src);
        assert_eq!((e.offset, e.message.as_str()), (offset, message.as_str()), "{src:?}");
    }
}

#[test]
fn equality_table() {
    let cases = [
        ("'a'", "'a'", true),
        ("'a'", "'A'", false),
        ("'1'", "'1.0'", false),
        ("1", "1.0", true),
        ("1", "'1'", true),
        ("1", "' 1.0 '", true),
        ("1", "'abc'", false),
        ("0", "''", false),
        ("true", "'true'", true),
        ("true", "'True'", false),
        ("false", "'false'", true),
        ("null", "''", true),
        ("null", "'a'", false),
        ("null", "null", true),
        ("null", "false", true),
        ("null", "true", false),
        ("null", "0", true),
        ("null", "1", false),
        ("true", "1", true),
        ("false", "0", true),
        ("true", "2", false),
        ("-'x'", "-'x'", false),
        ("params.missing", "''", true),
        ("params.n", "3", true),
        ("1e3", "1000", true),
    ];
    for (a, b, want) in cases {
        for (l, r) in [(a, b), (b, a)] {
            assert_eq!(eval(&format!("{l} == {r}")), Value::Bool(want), "{l} == {r}");
            assert_eq!(eval(&format!("{l} != {r}")), Value::Bool(!want), "{l} != {r}");
        }
    }
}

#[test]
fn ordering_table() {
    let cases = [
        ("1 < 2", true),
        ("2 <= 2", true),
        ("3 > 2", true),
        ("2 >= 3", false),
        ("'10' > '9'", true),
        ("'b' > 'a'", true),
        ("'abc' > 'ab'", true),
        ("'B' < 'a'", true),
        ("'abc' >= 80", false),
        ("'abc' < 80", false),
        ("true > false", true),
        ("null < 1", true),
        ("null >= 0", true),
        ("'' < 'a'", true),
        ("null < 'a'", true),
        ("2 >= '2'", true),
        ("-1 < 0", true),
        ("-'x' < 1", false),
        ("-'x' >= 1", false),
    ];
    for (src, want) in cases {
        assert_eq!(eval(src), Value::Bool(want), "{src}");
    }
}

#[test]
fn numbers_as_strings_compare_as_numbers() {
    let cond = parse("steps.t.outputs.coverage >= 80").expect("parses");
    for (coverage, want) in [("85", true), ("75", false), ("abc", false), ("80", true), (" 80.0 ", true)] {
        let mut c = ctx();
        c.outputs.insert(("t".into(), "coverage".into()), coverage.into());
        assert_eq!(cond.is_true(&c), want, "coverage {coverage:?}");
    }
    let mut c = ctx();
    c.outputs.clear();
    assert!(!cond.is_true(&c), "a missing output is null, that is 0");
}

#[test]
fn numeric_strings() {
    for s in ["42", " 3.5 ", "-1", "+2", ".5", "5.", "1e3", "1E-2", "0"] {
        assert!(numeric(s).is_some(), "{s:?}");
    }
    for s in ["", " ", "abc", "inf", "NaN", "infinity", "1e", "0x10", "1.2.3", "--1", ".", "1 2", "e5"] {
        assert_eq!(numeric(s), None, "{s:?}");
    }
}

#[test]
fn truthiness_and_text() {
    for (src, want) in [
        ("'false'", true),
        ("''", false),
        ("0", false),
        ("'0'", true),
        ("-0", false),
        ("0.5", true),
        ("-'x'", false),
        ("null", false),
        ("!null", true),
        ("'a' && 1", true),
        ("'' || 0", false),
    ] {
        assert_eq!(parse(src).expect("parses").is_true(&ctx()), want, "{src}");
    }
    assert_eq!(eval("'a' && 1"), Value::Bool(true), "&& returns a Bool, not an operand");
    assert_eq!(eval("'' || 'b'"), Value::Bool(true));
    let text = |v: Value| v.as_text();
    assert_eq!(text(Value::Num(80.0)), "80");
    assert_eq!(text(Value::Num(3.5)), "3.5");
    assert_eq!(text(Value::Num(-0.0)), "0");
    assert_eq!(text(Value::Num(-2.0)), "-2");
    assert_eq!(text(Value::Num(1e21)), "1000000000000000000000");
    assert_eq!(text(Value::Num(f64::NAN)), "NaN");
    assert_eq!(text(Value::Num(f64::INFINITY)), "Infinity");
    assert_eq!(text(Value::Bool(false)), "false");
    assert_eq!(text(Value::Null), "");
    assert_eq!(text(Value::Str("x y".into())), "x y");
}

#[test]
fn refs_in_source_order() {
    let e = parse("params.a == steps.b-1.outputs.k && (steps.c.status != 'x' || !params.d)").expect("parses");
    assert_eq!(
        e.refs(),
        vec![
            Ref::Param { name: "a".into(), offset: 0 },
            Ref::Output { step: "b-1".into(), key: "k".into(), offset: 12 },
            Ref::Status { step: "c".into(), offset: 36 },
            Ref::Param { name: "d".into(), offset: 62 },
        ]
    );
    assert_eq!(parse("true && success()").expect("parses").refs(), vec![]);
    assert_eq!(e.source(), "params.a == steps.b-1.outputs.k && (steps.c.status != 'x' || !params.d)");
}

#[test]
fn failure_handling() {
    let check = |src: &str| {
        let e = parse(src).expect("parses");
        (e.uses_always(), e.uses_failure(), e.uses_success(), e.handles_failure())
    };
    assert_eq!(check("always()"), (true, false, false, true));
    assert_eq!(check("failure() && params.x"), (false, true, false, true));
    assert_eq!(check("success() || !(failure())"), (false, true, true, true));
    assert_eq!(check("steps.a.status == 'failed'"), (false, false, false, true));
    assert_eq!(check("success()"), (false, false, true, false));
    assert_eq!(check("steps.a.outputs.status == 'x' && params.status"), (false, false, false, false));
}

#[test]
fn length_limit() {
    let at_limit = format!("'{}'", "a".repeat(MAX_LEN - 2));
    assert_eq!(eval(&at_limit).as_text().len(), MAX_LEN - 2);
    let e = err(&format!("'{}'", "a".repeat(MAX_LEN - 1)));
    assert_eq!(
        (e.offset, e.message.as_str()),
        (MAX_LEN, "expression is too long (4097 bytes, at most 4096)")
    );
    // 1 + 2 * 2048 + 1 bytes; byte 4096 is inside an `é`, so the caret moves back to its start.
    let src = format!("'{}'", "é".repeat(2048));
    assert_eq!(err(&src).offset, MAX_LEN - 1);
}

#[test]
fn depth_limit() {
    let nested = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(eval(&nested(MAX_DEPTH)), Value::Num(1.0));
    let e = err(&nested(MAX_DEPTH + 1));
    assert_eq!(
        (e.offset, e.message.as_str()),
        (MAX_DEPTH, "expression is nested too deeply (more than 64 levels)")
    );
    assert_eq!(eval(&format!("{}true", "!".repeat(MAX_DEPTH))), Value::Bool(true));
    assert_eq!(err(&format!("{}true", "!".repeat(MAX_DEPTH + 1))).offset, MAX_DEPTH);
    assert_eq!(err(&format!("{}1", "-(".repeat(MAX_DEPTH / 2 + 1))).offset, MAX_DEPTH);
    // Under the length limit, the depth limit is what stops these.
    for open in ["(", "!", "-", "!("] {
        let src = open.repeat(MAX_LEN / open.len());
        assert_eq!(err(&src).offset, MAX_DEPTH, "{open}");
    }
    // Long flat chains are fine: they are lists, not deep trees.
    let chain = vec!["true"; 600].join("&&");
    assert_eq!(eval(&chain), Value::Bool(true));
}

#[test]
fn deep_nesting_of_100k_chars_is_an_error() {
    for open in ["(", "!", "-", "!(", "(-"] {
        let src = open.repeat(100_000 / open.len());
        let e = err(&src);
        assert!(e.message.contains("too long"), "{open}: {e:?}");
        let closed = format!("{src}1{}", ")".repeat(src.matches('(').count()));
        assert!(parse(&closed).is_err());
    }
}

// Property tests.

const PARAMS: &[&str] = &["a", "b_2", "x-y", "_"];
const STEPS: &[&str] = &["t", "my-step", "1", "-", "build"];
const KEYS: &[&str] = &["out", "k-1", "_", "coverage"];
const TEXTS: &[&str] = &["", "0", "1", "85", "75", "abc", "true", "false", " 3.5 ", "1e3", "-2", "failed"];

fn arb_ctx() -> impl Strategy<Value = Ctx> {
    let text = || select(TEXTS).prop_map(str::to_owned);
    (
        prop::collection::hash_map(select(PARAMS).prop_map(str::to_owned), text(), 0..4),
        prop::collection::hash_map(
            (select(STEPS).prop_map(str::to_owned), select(KEYS).prop_map(str::to_owned)),
            text(),
            0..6,
        ),
        prop::collection::hash_map(select(STEPS).prop_map(str::to_owned), text(), 0..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(params, outputs, statuses, success, failure)| Ctx {
            params,
            outputs,
            statuses,
            success,
            failure,
        })
}

fn arb_leaf() -> impl Strategy<Value = Node> {
    let name = |names: &'static [&'static str]| select(names).prop_map(str::to_owned);
    prop_oneof![
        (0u32..200).prop_map(|n| Node::Lit(Value::Num(f64::from(n)))),
        (0u32..1000).prop_map(|n| Node::Lit(Value::Num(f64::from(n) / 8.0))),
        "[a-z0-9 '\"\\\\\n\t.-]{0,6}".prop_map(|s| Node::Lit(Value::Str(s))),
        select(TEXTS).prop_map(|s| Node::Lit(Value::Str(s.to_owned()))),
        any::<bool>().prop_map(|b| Node::Lit(Value::Bool(b))),
        Just(Node::Lit(Value::Null)),
        name(PARAMS).prop_map(|name| Node::Ref(Ref::Param { name, offset: 0 })),
        (name(STEPS), name(KEYS)).prop_map(|(step, key)| Node::Ref(Ref::Output { step, key, offset: 0 })),
        name(STEPS).prop_map(|step| Node::Ref(Ref::Status { step, offset: 0 })),
        select(vec![Func::Success, Func::Failure, Func::Always]).prop_map(Node::Call),
    ]
}

fn arb_node() -> impl Strategy<Value = Node> {
    let ops = vec![CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge];
    arb_leaf().prop_recursive(5, 48, 4, move |inner| {
        prop_oneof![
            inner.clone().prop_map(|x| Node::Not(Box::new(x))),
            inner.clone().prop_map(|x| Node::Neg(Box::new(x))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Node::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Node::Or),
            (select(ops.clone()), inner.clone(), inner).prop_map(|(op, a, b)| Node::Cmp(
                op,
                Box::new(a),
                Box::new(b)
            )),
        ]
    })
}

/// Pieces that hit every branch of the lexer and parser, valid or not.
const FRAGMENTS: &[&str] = &[
    "(",
    ")",
    "!",
    "-",
    "&&",
    "||",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&",
    "|",
    "=",
    "'a''b'",
    "'",
    "\"x\\n\"",
    "\"\\q\"",
    "\"",
    "\\",
    "1",
    "3.5",
    "1e3",
    "1.",
    "12ab",
    "params.x",
    "params.",
    "params.1",
    "steps.a-b.status",
    "steps.t.outputs.k",
    "steps.t.outputs",
    "steps..status",
    "steps.t.foo",
    "success()",
    "failure",
    "always(",
    "foo()",
    "foo",
    "true",
    "false",
    "null",
    " ",
    "\t",
    "\n",
    "é",
    "日本",
    "🙂",
    ".",
    "#",
    "\u{0}",
];

/// Whatever the input: no panic, and an error points at a char boundary inside the source.
fn check_total(src: &str, ctx: &Ctx) -> Result<(), TestCaseError> {
    match parse(src) {
        Err(e) => {
            prop_assert!(e.offset <= src.len(), "{e:?}");
            prop_assert!(src.is_char_boundary(e.offset), "{e:?}");
            prop_assert!(!e.message.is_empty());
        }
        Ok(expr) => {
            prop_assert_eq!(expr.source(), src);
            let _ = expr.eval(ctx).as_text();
            let _ = (expr.is_true(ctx), expr.handles_failure());
            for r in expr.refs() {
                let (Ref::Param { offset, .. } | Ref::Output { offset, .. } | Ref::Status { offset, .. }) = r;
                prop_assert!(offset < src.len());
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(src in any::<String>(), ctx in arb_ctx()) {
        check_total(&src, &ctx)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), ctx in arb_ctx()) {
        check_total(&String::from_utf8_lossy(&bytes), &ctx)?;
    }

    #[test]
    fn token_soup_never_panics(parts in prop::collection::vec(select(FRAGMENTS), 0..24), ctx in arb_ctx()) {
        check_total(&parts.concat(), &ctx)?;
    }

    #[test]
    fn printed_ast_parses_back_to_the_same_meaning(ast in arb_node(), ctx in arb_ctx()) {
        let src = to_source(&ast);
        let expr = parse(&src).map_err(|e| TestCaseError::fail(format!("{src:?}: {e:?}")))?;
        prop_assert_eq!(to_source(&expr.root), src.clone());
        let (want, got) = (ast.eval(&ctx), expr.eval(&ctx));
        // Debug, so that NaN equals NaN.
        prop_assert_eq!(format!("{want:?}"), format!("{got:?}"), "{}", src);
        let names = |refs: Vec<Ref>| -> Vec<Ref> {
            refs.into_iter()
                .map(|r| match r {
                    Ref::Param { name, .. } => Ref::Param { name, offset: 0 },
                    Ref::Output { step, key, .. } => Ref::Output { step, key, offset: 0 },
                    Ref::Status { step, .. } => Ref::Status { step, offset: 0 },
                })
                .collect()
        };
        let mut ast_refs = Vec::new();
        ast.walk(&mut |n| if let Node::Ref(r) = n { ast_refs.push(r.clone()) });
        prop_assert_eq!(names(expr.refs()), ast_refs);
    }

    #[test]
    fn nesting_is_limited_not_fatal(opens in prop_oneof![0..130usize, 0..100_000usize].prop_flat_map(
        |n| prop::collection::vec(select(vec!["(", "!", "-", " "]), n)
    )) {
        let closes = opens.iter().filter(|o| **o == "(").count();
        let depth = opens.iter().filter(|o| **o != " ").count();
        let src = format!("{}1{}", opens.concat(), ")".repeat(closes));
        match parse(&src) {
            Ok(_) => prop_assert!(depth <= MAX_DEPTH && src.len() <= MAX_LEN),
            Err(e) => prop_assert!(depth > MAX_DEPTH || src.len() > MAX_LEN, "{e:?}"),
        }
    }
}

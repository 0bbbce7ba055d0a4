//! The fast path must agree with jaq: same outputs (to the byte, `1` vs `1.0` included) and
//! errors exactly where jaq has errors, on a corpus of expressions and inputs and on random
//! inputs.

use std::borrow::Cow;
use std::sync::OnceLock;

use proptest::prelude::*;

use super::fast::Bail;
use super::{JqExpr, Written};
use crate::pipeline::parse::parse;
use crate::pipeline::value::Value;
use crate::pipeline::write::{NonFinite, write_value};

/// Records the corpus expressions run on: edge cases on purpose.
const INPUTS: &[&str] = &[
    r#"{"type":"click","user":"alice","n":3,"price":2.5,"tags":["a","b"],"nested":{"x":1,"y":[10,20,30]},"flag":true,"none":null,"s":"12","f":"1.5","neg":-7,"big":9007199254740993,"esc":"a\"b\\c\nd\u0001\u007f é\t"}"#,
    r#"{"type":"view","user":"bob","n":0,"price":-1,"tags":[],"nested":{"x":"1"},"flag":false,"s":"abc","f":"1e2"}"#,
    r#"{"type":null,"n":1.0,"price":0.1,"tags":{"a":1},"nested":[1,2],"user":{"id":7},"s":" 12","f":"-0"}"#,
    r#"{"n":9223372036854775807,"price":-9223372036854775808,"s":"99999999999999999999","user":"","f":"1.50"}"#,
    "{}",
    "null",
    "1",
    "1.0",
    "-0.0",
    r#""str""#,
    "[1,2,3]",
    r#"[{"a":1},{"a":2}]"#,
    "true",
    r#"{"a":{"b":{"c":[1,{"d":"deep"}]}},"k":"b","i":1}"#,
];

/// Expressions of the fast subset.
const FAST: &[&str] = &[
    ".",
    ".type",
    ".nested.x",
    ".nested.y[1]",
    ".nested.y[-1]",
    ".nested.y[-4]",
    ".tags[5]",
    ".tags[0]",
    ".[0]",
    ".[\"type\"]",
    ".\"type\"",
    ".missing.deeper",
    ".a.b.c[1].d",
    ".a[.k]",
    ".a.b.c[.i]",
    ".type?",
    ".user.id?",
    ".nested.x?.y",
    ".[0]?",
    "1",
    "-1",
    "1.5",
    "1e3",
    "100000000000000000000.5",
    "\"lit\"",
    "\"a\\nb\\u00e9\\\"\"",
    "true",
    "false",
    "null",
    ".n == 3",
    ".type == \"click\"",
    ".n != 0",
    ".n < 3",
    ".n <= 3",
    ".n > .price",
    ".n >= null",
    ". < 1",
    ".user < .type",
    ".tags < .nested",
    "null < false",
    "false < true",
    "true < 0",
    "0 < \"\"",
    "\"\" < []",
    "[] < {}",
    "1 == 1.0",
    "{\"a\":1,\"b\":2} == {\"b\":2,\"a\":1}",
    "[1,2] < [1,2,0]",
    "{\"a\":2} < {\"b\":1}",
    "{\"a\":1} < {\"a\":2}",
    "{\"a\":1} < {\"a\":1,\"b\":0}",
    "\"B\" < \"a\"",
    "\"é\" > \"z\"",
    ".price == .n",
    ".flag and .n",
    ".flag or false",
    ".none or .flag",
    "(.n > 1) and (.type == \"click\")",
    ".flag and (1 % 0)",
    ".none and (1 % 0)",
    "true or (1 % 0)",
    "not",
    ".flag | not",
    ".n + 1",
    ".n - 1",
    ".n * 2",
    ".n / 2",
    ".n % 2",
    ".price + 1",
    ".price * .n",
    ".n / 0",
    ".n % 0",
    "1 / 3",
    "4 / 2",
    ".none + 1",
    "1 + .none",
    ".user + .type",
    ".user + 1",
    ".tags + [\"c\"]",
    ".nested + {\"z\": 1}",
    ".n - .price",
    "-.n",
    "-.user",
    ".big + 1",
    ".n * 1000000000000",
    ".n + 1",
    "10 % 3",
    "-10 % 3",
    "5.5 % 2",
    ".price % 0",
    ".n + .n * 2 - 1",
    ".user * 2",
    ".tags - [\"a\"]",
    "{user: .user, n: 1}",
    "{user}",
    "{\"a b\": .n}",
    "{(.type): .n}",
    "{(.n): 1}",
    "{a: 1, a: 2}",
    "{a: 1, b: 2, a: 3}",
    "{user: .user, nested: {x: .nested.x}}",
    "{}",
    "{a: select(.n > 1)}",
    "{\"\\(.type)\": 1}",
    "[.n, .type]",
    "[]",
    "[.n, select(.flag), .none]",
    "[.tags[0], .tags[1]]",
    "select(.type == \"click\")",
    "select(.type == \"click\") | {user: .user, n: 1}",
    "select(.n)",
    "select(.none)",
    ".nested | .x",
    ".tags | length",
    "(.n + 1) | tostring",
    "length",
    ".user | length",
    ".esc | length",
    ".price | length",
    ".neg | length",
    ".flag | length",
    ".nested | length",
    "tostring",
    ".n | tostring",
    ".esc | tostring",
    ".tags | tostring",
    ".price | tostring",
    ".big | tostring",
    "(.n / 0) | tostring",
    ".s | tonumber",
    ".f | tonumber",
    ".n | tonumber",
    ".user | tonumber",
    ".tags | tonumber",
    "type",
    ".tags | type",
    ".n // \"default\"",
    ".none // \"default\"",
    ".flag // 1",
    "if .n > 1 then \"big\" elif .n == 0 then \"zero\" else \"small\" end",
    "if .flag then .n end",
    "\"user \\(.user) n=\\(.n)\"",
    "\"\\(.tags)\"",
    "empty",
    ".n, .type",
    "select(.flag), .n",
    "try .user.x",
    ".user.x?",
    "try (1/0)",
    "try -.user",
    "{a: .n} | .a",
    "[.n] | .[0]",
    "{n: (.n + 1)} | .n * 2",
];

/// Expressions outside the fast subset (jaq runs them).
const JAQ_ONLY: &[&str] = &[
    ".tags[]",
    "map(. + 1)?",
    "[.tags[]? | tostring]",
    ".n as $x | $x + 1",
    "keys?",
    "to_entries?",
    "reduce (.tags[]?) as $t (0; . + 1)",
    "def f: .n; f",
    "try error(\"x\") catch .",
    ".tags[1:]?",
    "@base64",
    "\"\\(.n)\" | ascii_downcase",
    "[.n, .type] | join(\",\")?",
];

/// The compact text of each output, as jaq writes it.
fn texts(values: &[Value<'_>]) -> Vec<String> {
    texts_as(values, NonFinite::JaqText)
}

fn texts_as(values: &[Value<'_>], non_finite: NonFinite) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            let mut out = Vec::new();
            write_value(&mut out, v, non_finite);
            String::from_utf8_lossy(&out).into_owned()
        })
        .collect()
}

/// What the pipeline gets: the fast path with jaq behind it.
fn combined(expr: &JqExpr, input: &Value<'_>) -> Result<Vec<String>, String> {
    let mut outputs = Vec::new();
    expr.for_each(
        input.clone(),
        |e| e,
        |v| {
            outputs.push(v);
            Ok(())
        },
    )?;
    Ok(texts(&outputs))
}

/// Checks one expression on one input; returns whether the fast path bailed out although
/// jaq succeeds (allowed, but counted).
fn check(code: &str, expr: &JqExpr, input: &Value<'_>, shown: &str) -> bool {
    if let Some(Err(Bail::TooLarge)) = expr.eval_fast_only(input) {
        // jaq would try to allocate the string and abort the process: the pipeline refuses.
        let refused = combined(expr, input);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("string repetition")),
            "`{code}` on {shown}: an oversized repetition must fail the record, got {refused:?}"
        );
        return false;
    }
    let jaq = expr.eval_jaq_only(input).map(|v| texts(&v));
    assert_eq!(
        combined(expr, input),
        jaq,
        "`{code}` on {shown}: pipeline path differs from jaq"
    );
    check_written_object(code, expr, input, shown);
    match expr.eval_fast_only(input) {
        None => false,
        Some(Ok(values)) => {
            assert_eq!(
                Ok(texts(&values)),
                jaq,
                "`{code}` on {shown}: fast path differs from jaq"
            );
            false
        }
        Some(Err(Bail::Error)) => {
            assert!(
                jaq.is_err(),
                "`{code}` on {shown}: fast path reports an error, jaq gives {jaq:?}"
            );
            false
        }
        Some(Err(Bail::Unsupported)) => true,
        Some(Err(Bail::TooLarge)) => unreachable!("handled above"),
    }
}

/// An object written straight to text must be the text of jaq's output, as output records
/// write it (`NonFinite::Json`); an expression that errors in jaq must not be written.
fn check_written_object(code: &str, expr: &JqExpr, input: &Value<'_>, shown: &str) {
    let mut written = Vec::new();
    let outcome = expr.write_object(input, &mut written);
    let jaq = expr
        .eval_jaq_only(input)
        .map(|values| texts_as(&values, NonFinite::Json));
    match outcome {
        Written::Output => assert_eq!(
            jaq,
            Ok(vec![String::from_utf8_lossy(&written).into_owned()]),
            "`{code}` on {shown}: written object differs from jaq"
        ),
        Written::Nothing => assert_eq!(jaq, Ok(vec![]), "`{code}` on {shown}: jaq has output"),
        Written::Failed(message) => assert!(
            message.contains("string repetition"),
            "`{code}` on {shown}: {message}"
        ),
        Written::Fallback => {}
    }
}

#[test]
fn objects_with_literal_keys_are_written_without_building_them() {
    let writes = |code: &str| JqExpr::compile(code).expect("compiles").writes_objects();
    assert!(writes("{user: .user, n: 1}"));
    assert!(writes("{user, \"a b\": .n, nested: {x: .nested.x}}"));
    assert!(
        !writes("{a: 1, b: 2, a: 3}"),
        "a repeated key replaces the earlier value"
    );
    assert!(!writes("{(.type): .n}"));
    assert!(!writes("{a: .a}, {b: .b}"));
    assert!(!writes("[.a]"));
    let expr = JqExpr::compile("{user: .user, n: (.n + 1)}").expect("compiles");
    let input = parse(br#"{"user":"a\"b","n":1.5}"#).expect("JSON");
    let mut text = b"kept".to_vec();
    assert_eq!(expr.write_object(&input, &mut text), Written::Output);
    assert_eq!(
        String::from_utf8_lossy(&text),
        r#"kept{"user":"a\"b","n":2.5}"#
    );
}

#[test]
fn a_huge_string_repetition_fails_the_record_instead_of_the_process() {
    let expr = JqExpr::compile(".a * .b").expect("compiles");
    let input = parse(br#"{"a":"ab","b":9007199254740992}"#).expect("JSON");
    let result = combined(&expr, &input);
    assert!(result.is_err_and(|e| e.contains("string repetition")));
    let small = parse(br#"{"a":"ab","b":3}"#).expect("JSON");
    assert_eq!(combined(&expr, &small), Ok(vec![r#""ababab""#.to_owned()]));
}

#[test]
fn fast_path_agrees_with_jaq_on_the_corpus() {
    let mut checked = 0;
    let mut unsupported = Vec::new();
    for code in FAST.iter().chain(JAQ_ONLY) {
        let expr =
            JqExpr::compile(code).unwrap_or_else(|e| panic!("`{code}` does not compile: {e}"));
        for input in INPUTS {
            let value = parse(input.as_bytes()).expect("corpus inputs are JSON");
            if check(code, &expr, &value, input) {
                unsupported.push(format!("{code} on {input}"));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 150 * INPUTS.len(),
        "corpus shrank: {checked} checks"
    );
    // Bailing out without an error is for rare value combinations only.
    assert!(
        unsupported.len() < checked / 20,
        "too many bail-outs: {unsupported:#?}"
    );
}

#[test]
fn common_shapes_take_the_fast_path() {
    for code in FAST {
        let expr = JqExpr::compile(code).unwrap_or_else(|e| panic!("`{code}`: {e}"));
        assert!(expr.path().is_fast(), "`{code}` should take the fast path");
    }
    for code in JAQ_ONLY {
        let expr = JqExpr::compile(code).unwrap_or_else(|e| panic!("`{code}`: {e}"));
        assert!(!expr.path().is_fast(), "`{code}` should run in jaq");
    }
}

#[test]
fn jaq_errors_keep_their_message_on_the_fast_path() {
    let expr = JqExpr::compile(".user + 1").expect("compiles");
    let input = parse(br#"{"user":"alice"}"#).expect("JSON");
    let error = combined(&expr, &input).expect_err("string + number fails");
    assert_eq!(error, "cannot calculate \"alice\" + 1");
}

#[test]
fn invalid_jq_is_rejected_with_jaq_s_reason() {
    let error = JqExpr::compile(".a | ").expect_err("incomplete");
    assert!(error.contains("syntax error"), "{error}");
    let error = JqExpr::compile("nosuchfunction(1)").expect_err("undefined");
    assert!(
        error.contains("undefined filter nosuchfunction/1"),
        "{error}"
    );
    let error = JqExpr::compile("env").expect_err("the environment is off limits");
    assert!(error.contains("undefined filter env/0"), "{error}");
    let error = JqExpr::compile("$undefined").expect_err("undefined variable");
    assert!(error.contains("undefined variable $undefined"), "{error}");
}

#[test]
fn halt_does_not_stop_the_process() {
    let expr = JqExpr::compile("halt").expect("compiles");
    let result = combined(&expr, &Value::Null);
    assert!(result.is_err(), "{result:?}");
}

#[test]
fn runaway_generators_are_cut_off() {
    let expr = JqExpr::compile("repeat(1)").expect("compiles");
    let mut count = 0usize;
    let result = expr.for_each(
        Value::Null,
        |e| e,
        |_| {
            count += 1;
            Ok(())
        },
    );
    assert!(result.is_err());
    assert_eq!(count, super::MAX_OUTPUTS);
}

/// Small JSON values, including the awkward ones (big integers, -0, escapes, nesting).
pub(crate) fn json_value() -> impl Strategy<Value = Value<'static>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5).prop_map(Value::Int),
        prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(1 << 53)].prop_map(Value::Int),
        prop_oneof![
            Just(0.5),
            Just(-0.0),
            Just(1e300),
            Just(2.0),
            Just(-3.25),
            Just(0.1)
        ]
        .prop_map(Value::Float),
        prop_oneof![
            Just("a"),
            Just("b"),
            Just(""),
            Just("12"),
            Just("-1.5e3"),
            Just("é\u{1}\"\\"),
            Just("A")
        ]
        .prop_map(|s| Value::Str(Cow::Borrowed(s))),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Arr),
            prop::collection::vec((prop_oneof![Just("a"), Just("b"), Just("c")], inner), 0..3)
                .prop_map(|entries| {
                    let mut object = Vec::new();
                    for (k, v) in entries {
                        crate::pipeline::value::object_insert(&mut object, Cow::Borrowed(k), v);
                    }
                    Value::Obj(object)
                }),
        ]
    })
}

/// Records with fields `a`, `b`, `c` of random values.
fn record() -> impl Strategy<Value = Value<'static>> {
    (json_value(), json_value(), json_value()).prop_map(|(a, b, c)| {
        Value::Obj(Vec::from([
            (Cow::Borrowed("a"), a),
            (Cow::Borrowed("b"), b),
            (Cow::Borrowed("c"), c),
        ]))
    })
}

const RANDOM_EXPRESSIONS: &[&str] = &[
    ".a",
    ".a.b",
    ".a[0]",
    ".a[-1]?",
    ".[.c]",
    ".a == .b",
    ".a != .b",
    ".a < .b",
    ".a >= .b",
    ".a + .b",
    ".a - .b",
    ".a * .b",
    ".a / .b",
    ".a % .b",
    "-.a",
    "{x: .a, y: .b}",
    "{(.c): .a}",
    "[.a, .b]",
    "select(.a)",
    ".a and .b",
    ".a or .b",
    "length",
    ".a | length",
    ".a | tostring",
    ".a | tonumber",
    ".a // .b",
    "if .a then .b else .c end",
    ".a | type",
    "\"\\(.a)-\\(.b)\"",
    "try (.a + .b)",
    ".a.b?",
];

/// The random-input expressions, compiled once.
fn random_expressions() -> &'static [(&'static str, JqExpr)] {
    static COMPILED: OnceLock<Vec<(&'static str, JqExpr)>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        RANDOM_EXPRESSIONS
            .iter()
            .map(|code| (*code, JqExpr::compile(code).expect("compiles")))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn fast_path_agrees_with_jaq_on_random_records(input in record()) {
        for (code, expr) in random_expressions() {
            prop_assert!(expr.path().is_fast(), "`{}` should be fast", code);
            check(code, expr, &input, &format!("{input:?}"));
        }
    }
}

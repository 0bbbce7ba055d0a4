//! `filter`, `map`, `keyBy`, output format, record errors and compile errors.

use super::{Run, compile, filter, key_by, map, named, record, texts, window, window_step};
use streamjob_api::PipelineStep;

use crate::pipeline::{
    CompileError, ExprPath, OutputRecord, Outputs, Pipeline, RecordErrorKind, RecordStats,
};

#[test]
fn filter_keeps_records_whose_first_output_is_truthy() {
    let mut run = Run::new(&[filter(".keep")]);
    assert_eq!(run.feed(None, r#"{"keep":true}"#), ["- {\"keep\":true}"]);
    assert_eq!(run.feed(None, r#"{"keep":1}"#), ["- {\"keep\":1}"]);
    assert_eq!(run.feed(None, r#"{"keep":"no"}"#), ["- {\"keep\":\"no\"}"]);
    assert!(run.feed(None, r#"{"keep":false}"#).is_empty());
    assert!(run.feed(None, r#"{"keep":null}"#).is_empty());
    assert!(run.feed(None, r#"{}"#).is_empty());
    let mut run = Run::new(&[filter("empty")]);
    assert!(run.feed(None, r#"{}"#).is_empty());
}

#[test]
fn map_replaces_the_record_by_each_output() {
    let mut run = Run::new(&[map(".items[]"), map("{item: .}")]);
    assert_eq!(
        run.feed(Some("k"), r#"{"items":[1,"two",{"x":3.0}]}"#),
        [
            "k {\"item\":1}",
            "k {\"item\":\"two\"}",
            "k {\"item\":{\"x\":3.0}}"
        ]
    );
    assert!(run.feed(Some("k"), r#"{"items":[]}"#).is_empty());
    let mut run = Run::new(&[map(".a, .b")]);
    assert_eq!(run.feed(None, r#"{"a":1,"b":[2]}"#), ["- 1", "- [2]"]);
}

#[test]
fn key_by_sets_the_key_from_strings_as_bytes_and_other_values_as_json() {
    let mut run = Run::new(&[key_by(".user"), map(".n")]);
    assert_eq!(
        run.feed(Some("old"), r#"{"user":"ann é","n":1}"#),
        ["ann é 1"]
    );
    let mut run = Run::new(&[key_by(".id")]);
    assert_eq!(run.feed(None, r#"{"id":42}"#), ["42 {\"id\":42}"]);
    assert_eq!(
        run.feed(None, r#"{"id":[1,"a"]}"#),
        ["[1,\"a\"] {\"id\":[1,\"a\"]}"]
    );
    assert_eq!(run.feed(None, r#"{}"#), ["null {}"]);
}

#[test]
fn the_kafka_key_passes_through_when_there_is_no_key_by() {
    let mut run = Run::new(&[map(".a")]);
    assert_eq!(
        run.feed(Some("kafka-key"), r#"{"a":"x"}"#),
        ["kafka-key \"x\""]
    );
    assert_eq!(run.feed(None, r#"{"a":"x"}"#), ["- \"x\""]);
}

#[test]
fn output_is_compact_json_with_jaq_number_formatting() {
    let mut run = Run::new(&[map("{a: .a, half: (.a / 2), inf: (1 / 0), nan: (0 / 0)}")]);
    assert_eq!(
        run.feed(None, r#"{ "a" : 4 }"#),
        ["- {\"a\":4,\"half\":2.0,\"inf\":1.7976931348623157e+308,\"nan\":null}"]
    );
}

#[test]
fn failing_records_report_kind_and_step() {
    let pipeline = compile(&[
        filter(".ok"),
        named("divide", map(".a % .b")),
        key_by("empty"),
    ]);
    let mut state = pipeline.new_state();
    let mut stats = RecordStats::default();
    let mut out = Outputs::default();
    let mut process = |payload: &str| {
        pipeline
            .process(&mut state, &record(None, payload, 0), &mut out, &mut stats)
            .expect_err("the record fails")
    };
    let error = process("{not json");
    assert_eq!(
        (error.kind, error.step),
        (RecordErrorKind::InvalidJson, None)
    );
    let error = process(r#"{"ok":true,"a":1,"b":0}"#);
    assert_eq!(error.kind, RecordErrorKind::Evaluation);
    assert_eq!(error.step.as_deref(), Some("1:divide"));
    assert!(
        error.message.contains("cannot calculate 1 % 0"),
        "{}",
        error.message
    );
    let error = process(r#"{"ok":true,"a":1,"b":2}"#);
    assert_eq!(error.step.as_deref(), Some("2"));
    assert_eq!(
        error.to_string(),
        "evaluation error in step 2: keyBy yielded no key"
    );
    let error = process(r#"{"ok":"x".}"#);
    assert_eq!(error.kind, RecordErrorKind::InvalidJson);
}

#[test]
fn a_record_failing_after_some_outputs_leaves_the_output_untouched() {
    let pipeline = compile(&[map(".[]"), map("10 / .")]);
    let mut out = Outputs::default();
    out.push_record(&OutputRecord {
        key: None,
        payload: b"earlier".to_vec(),
    });
    let mut state = pipeline.new_state();
    let result = pipeline.process(
        &mut state,
        &record(None, r#"[1, 2, "x"]"#, 0),
        &mut out,
        &mut RecordStats::default(),
    );
    assert!(result.is_err());
    assert_eq!(texts(&out), ["- earlier"]);
}

#[test]
fn compile_errors_name_the_step_and_field() {
    let error = Pipeline::compile(&[filter(".a"), named("clean", map(".a |")), filter(".b")])
        .expect_err("invalid jq");
    assert_eq!((error.index, error.name.as_deref()), (1, Some("clean")));
    assert!(
        error.message.starts_with("invalid jq in map: syntax error"),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("pipeline step 1:clean: invalid jq in map"),
        "{error}"
    );

    let mut bad_of = window("1m", None, None, None);
    bad_of.aggregates[1].of = Some("nosuch".to_owned());
    let error = Pipeline::compile(&[window_step(bad_of)]).expect_err("undefined filter");
    assert_eq!(error.index, 0);
    assert!(error.message.contains("window.aggregates[1].of"), "{error}");

    let mut reserved = window("1m", None, None, None);
    reserved.aggregates[0].name = "windowEnd".to_owned();
    let error = Pipeline::compile(&[window_step(reserved)]).expect_err("reserved name");
    assert!(error.message.contains("reserved"), "{error}");

    let none = PipelineStep::default();
    let error = Pipeline::compile(&[none]).expect_err("no operation");
    assert!(error.message.contains("exactly one"), "{error}");
}

#[test]
fn common_expressions_take_the_fast_path() {
    let pipeline = compile(&[
        filter(r#".type == "click" and .n > 1"#),
        key_by(".user"),
        map(r#"select(.type == "click") | {user: .user, n: 1}"#),
        map(".tags[]"),
    ]);
    let paths: Vec<(String, ExprPath)> = pipeline
        .expressions()
        .into_iter()
        .map(|e| (format!("{} {}", e.step, e.field), e.path))
        .collect();
    assert_eq!(
        paths,
        [
            ("0 filter".to_owned(), ExprPath::Fast),
            ("1 keyBy".to_owned(), ExprPath::Fast),
            ("2 map".to_owned(), ExprPath::Fast),
            ("3 map".to_owned(), ExprPath::Jaq),
        ]
    );
}

#[test]
fn compile_error_is_an_error_type() {
    let error: Box<dyn std::error::Error> = Box::new(CompileError {
        index: 3,
        name: None,
        message: "x".to_owned(),
    });
    assert_eq!(error.to_string(), "pipeline step 3: x");
}

#[test]
fn a_last_map_written_straight_to_text_gives_the_records_and_errors_of_jaq() {
    let inputs = [
        r#"{"type":"click","user":"u\"1","n":2}"#,
        r#"{"type":"view","user":null,"n":0.5}"#,
        r#"{"type":"click","n":"x"}"#,
        r#"{"type":"click","user":{"id":[1,2]},"n":1e400}"#,
    ];
    for code in [
        "{user: .user, n: 1}",
        "{user, n: (.n + 1), page: \"/\\(.type)\"}",
        "{a: select(.n > 1), b: .user}",
    ] {
        let steps = [filter(r#".type == "click""#), map(code)];
        let fast = compile(&steps);
        assert!(fast.segments[0].steps[1].op.writes_objects(), "{code}");
        let jaq = compile(&steps).without_fast_path();
        for input in inputs {
            let run = |pipeline: &Pipeline| {
                let mut out = Outputs::default();
                let mut state = pipeline.new_state();
                let result = pipeline.process(
                    &mut state,
                    &record(Some("k"), input, 0),
                    &mut out,
                    &mut RecordStats::default(),
                );
                (texts(&out), result.map_err(|e| e.to_string()))
            };
            assert_eq!(run(&fast), run(&jaq), "`{code}` on {input}");
        }
    }
}

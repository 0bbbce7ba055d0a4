//! Windows: assignment, watermark, lateness, firing order, errors, chaining, processing time.

use super::{
    Run, aggregate, compile, duration, filter, key_by, map, named, record, texts, window,
    window_step,
};
use streamjob_api::{AggregateFunction, WindowStep};

use crate::pipeline::{Outputs, RecordErrorKind, RecordStats};

#[test]
fn tumbling_windows_aggregate_per_key_and_fire_when_the_watermark_passes_their_end() {
    let mut run = Run::new(&[key_by(".k"), window_step(window("10ms", None, None, None))]);
    let out = run.feed_all(&[
        r#"{"k":"a","t":1,"v":5}"#,
        r#"{"k":"b","t":2,"v":1.5}"#,
        r#"{"k":"a","t":9,"v":-2}"#,
        r#"{"k":"a","t":10,"v":7}"#, // watermark 10 closes [0,10)
        r#"{"k":"a","t":25,"v":1}"#, // closes [10,20)
    ]);
    assert_eq!(
        out,
        [
            r#"a {"key":"a","windowStart":0,"windowEnd":10,"count":2,"sum":3,"min":-2,"max":5,"avg":1.5}"#,
            r#"b {"key":"b","windowStart":0,"windowEnd":10,"count":1,"sum":1.5,"min":1.5,"max":1.5,"avg":1.5}"#,
            r#"a {"key":"a","windowStart":10,"windowEnd":20,"count":1,"sum":7,"min":7,"max":7,"avg":7.0}"#,
        ]
    );
    assert_eq!(run.stats.window_results, 3);
}

#[test]
fn sliding_windows_count_each_record_in_every_window_that_contains_it() {
    let mut run = Run::new(&[window_step(window("10ms", Some("5ms"), None, None))]);
    let out = run.feed_all(&[
        r#"{"t":3,"v":1}"#,  // windows [-5,5), [0,10)
        r#"{"t":7,"v":2}"#,  // [0,10), [5,15)
        r#"{"t":12,"v":4}"#, // [5,15), [10,20); closes [-5,5) and [0,10)
        r#"{"t":20,"v":8}"#, // closes [5,15), [10,20)
    ]);
    let summary: Vec<String> = out
        .iter()
        .map(|o| {
            let v: serde_json::Value = serde_json::from_str(&o[2..]).expect("JSON");
            format!(
                "{}..{} n={} sum={}",
                v["windowStart"], v["windowEnd"], v["count"], v["sum"]
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "-5..5 n=1 sum=1",
            "0..10 n=2 sum=3",
            "5..15 n=2 sum=6",
            "10..20 n=1 sum=4"
        ]
    );
}

#[test]
fn out_of_order_records_within_the_bound_are_counted() {
    let mut run = Run::new(&[window_step(window("10ms", None, Some("5ms"), None))]);
    let mut out = run.feed_all(&[
        r#"{"t":8,"v":1}"#,
        r#"{"t":12,"v":1}"#, // watermark 7: [0,10) stays open
        r#"{"t":4,"v":1}"#,  // late by the clock, but within maxOutOfOrderness
    ]);
    assert!(out.is_empty(), "{out:?}");
    out = run.feed_all(&[r#"{"t":15,"v":1}"#]); // watermark 10
    assert_eq!(out.len(), 1);
    assert!(
        out[0].contains(r#""windowStart":0,"windowEnd":10,"count":2"#),
        "{out:?}"
    );
    assert_eq!(run.stats.late_dropped, 0);
}

#[test]
fn late_records_within_allowed_lateness_re_emit_the_updated_result() {
    let mut run = Run::new(&[window_step(window("10ms", None, None, Some("10ms")))]);
    let out = run.feed_all(&[r#"{"t":1,"v":1}"#, r#"{"t":11,"v":1}"#]);
    assert_eq!(out.len(), 1, "[0,10) fires at watermark 11");
    assert!(out[0].contains(r#""count":1,"sum":1"#));
    let out = run.feed_all(&[r#"{"t":5,"v":2}"#]);
    assert_eq!(out.len(), 1, "the late record updates the fired window");
    assert!(
        out[0].contains(r#""windowStart":0,"windowEnd":10,"count":2,"sum":3"#),
        "{out:?}"
    );
    assert_eq!(run.stats.window_results, 2);
    assert_eq!(run.stats.late_dropped, 0);
}

#[test]
fn records_beyond_allowed_lateness_are_dropped_and_counted() {
    let mut run = Run::new(&[window_step(window("10ms", None, None, Some("5ms")))]);
    let out = run.feed_all(&[r#"{"t":1,"v":1}"#, r#"{"t":15,"v":1}"#]);
    assert_eq!(out.len(), 1);
    // Watermark 15 >= end 10 + lateness 5: [0,10) is gone.
    let out = run.feed_all(&[r#"{"t":9,"v":100}"#]);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(run.stats.late_dropped, 1);
    // Its state was purged: nothing about [0,10) comes back.
    let out = run.feed_all(&[r#"{"t":40,"v":1}"#]);
    assert_eq!(out.len(), 1);
    assert!(out[0].contains(r#""windowStart":10,"#), "{out:?}");
}

#[test]
fn windows_fire_in_end_then_key_order() {
    let mut run = Run::new(&[
        key_by(".k"),
        window_step(window("10ms", Some("5ms"), None, None)),
    ]);
    run.feed_all(&[
        r#"{"k":"b","t":6,"v":1}"#,
        r#"{"k":"a","t":7,"v":1}"#,
        r#"{"t":8,"v":1,"k":"c"}"#,
        r#"{"k":"a","t":1,"v":1}"#,
    ]);
    let out = run.feed_all(&[r#"{"k":"z","t":100,"v":1}"#]);
    let order: Vec<String> = out
        .iter()
        .map(|o| {
            let v: serde_json::Value = serde_json::from_str(&o[2..]).expect("JSON");
            format!("{}@{}", v["key"].as_str().unwrap_or("?"), v["windowStart"])
        })
        .collect();
    // The late `a` at t=1 missed [-5,5) (closed by watermark 8) but counts in [0,10).
    assert_eq!(order, ["a@0", "b@0", "c@0", "a@5", "b@5", "c@5"]);
    assert_eq!(run.stats.late_dropped, 0);
    assert!(out[1].contains(r#""key":"b","windowStart":0,"windowEnd":10,"count":1"#));
    assert!(out[0].contains(r#""key":"a","windowStart":0,"windowEnd":10,"count":2"#));
}

#[test]
fn rfc3339_timestamps_are_event_time() {
    let mut step = window("1m", None, None, None);
    step.timestamp = Some(".at".to_owned());
    let mut run = Run::new(&[window_step(step)]);
    let out = run.feed_all(&[
        r#"{"at":"2024-05-01T10:00:30Z","v":1}"#,
        r#"{"at":"2024-05-01T12:01:00+02:00","v":1}"#,
    ]);
    assert_eq!(
        out,
        [
            r#"k {"key":"k","windowStart":1714557600000,"windowEnd":1714557660000,"count":1,"sum":1,"min":1,"max":1,"avg":1.0}"#
        ]
    );
}

#[test]
fn bad_timestamps_and_aggregate_inputs_fail_the_record_and_leave_state_untouched() {
    let pipeline = compile(&[named(
        "w",
        window_step(window("10ms", None, None, Some("1m"))),
    )]);
    let mut state = pipeline.new_state();
    let mut stats = RecordStats::default();
    let mut out = Outputs::default();
    for payload in [r#"{"t":1,"v":1}"#, r#"{"t":15,"v":2}"#] {
        pipeline
            .process(
                &mut state,
                &record(Some("k"), payload, 0),
                &mut out,
                &mut stats,
            )
            .expect("valid record");
    }
    let before = (
        state.clone(),
        out.to_records(),
        stats.window_results,
        stats.late_dropped,
    );
    let cases = [
        (r#"{"v":1}"#, RecordErrorKind::Timestamp),
        (r#"{"t":"yesterday","v":1}"#, RecordErrorKind::Timestamp),
        (r#"{"t":true,"v":1}"#, RecordErrorKind::Timestamp),
        (r#"{"t":5,"v":"1"}"#, RecordErrorKind::Aggregate),
        (r#"{"t":5}"#, RecordErrorKind::Aggregate),
        (r#"[1]"#, RecordErrorKind::Timestamp),
    ];
    for (payload, kind) in cases {
        let error = pipeline
            .process(
                &mut state,
                &record(Some("k"), payload, 0),
                &mut out,
                &mut stats,
            )
            .expect_err("bad record");
        assert_eq!(error.kind, kind, "{payload}: {error}");
        assert_eq!(error.step.as_deref(), Some("0:w"));
        let after = (
            state.clone(),
            out.to_records(),
            stats.window_results,
            stats.late_dropped,
        );
        assert_eq!(after, before, "{payload} changed something");
    }
}

#[test]
fn a_map_with_one_bad_output_adds_none_of_its_outputs_to_a_window() {
    let mut run = Run::new(&[map(".[]"), window_step(window("10ms", None, None, None))]);
    let before = run.state.clone();
    let mut out = Outputs::default();
    let result = run.pipeline.process(
        &mut run.state,
        &record(None, r#"[{"t":1,"v":1},{"t":2,"v":"x"}]"#, 0),
        &mut out,
        &mut run.stats,
    );
    assert_eq!(result.map_err(|e| e.kind), Err(RecordErrorKind::Aggregate));
    assert_eq!(run.state, before);
}

#[test]
fn steps_after_a_window_apply_to_its_results() {
    let mut run = Run::new(&[
        key_by(".k"),
        window_step(window("10ms", None, None, None)),
        filter(".count > 1"),
        map("{who: .key, total: .sum, from: .windowStart}"),
    ]);
    let out = run.feed_all(&[
        r#"{"k":"a","t":1,"v":2}"#,
        r#"{"k":"a","t":2,"v":3}"#,
        r#"{"k":"b","t":3,"v":1}"#,
        r#"{"k":"c","t":30,"v":1}"#,
    ]);
    assert_eq!(out, [r#"a {"who":"a","total":5,"from":0}"#]);
    assert_eq!(run.stats.window_results, 2);
}

#[test]
fn a_step_failing_on_a_window_result_rejects_that_result_only() {
    let mut run = Run::new(&[
        key_by(".k"),
        window_step(window("10ms", None, None, None)),
        named("ratio", map("{key, r: (10 % .sum)}")),
    ]);
    let out = run.feed_all(&[
        r#"{"k":"a","t":1,"v":0}"#,
        r#"{"k":"b","t":1,"v":3}"#,
        r#"{"k":"a","t":20,"v":1}"#,
    ]);
    assert_eq!(out, [r#"b {"key":"b","r":1}"#]);
    let [failed] = &run.stats.failed_results[..] else {
        panic!("one failed result: {:?}", run.stats.failed_results)
    };
    assert_eq!(failed.key.as_deref(), Some(&b"a"[..]));
    assert_eq!(failed.error.step.as_deref(), Some("2:ratio"));
    assert_eq!(
        String::from_utf8_lossy(&failed.payload),
        r#"{"key":"a","windowStart":0,"windowEnd":10,"count":1,"sum":0,"min":0,"max":0,"avg":0.0}"#
    );
}

#[test]
fn window_results_can_feed_a_second_window() {
    let per_10ms = window("10ms", None, None, None);
    let per_100ms = WindowStep {
        size: duration("100ms"),
        slide: None,
        timestamp: Some(".windowStart".to_owned()),
        max_out_of_orderness: None,
        allowed_lateness: None,
        aggregates: Vec::from([aggregate("peak", AggregateFunction::Max, Some(".count"))]),
    };
    let mut run = Run::new(&[window_step(per_10ms), window_step(per_100ms)]);
    let mut payloads = Vec::new();
    // Results of [0,10), [10,20), [20,30), [150,160), [260,270) reach the second window
    // stamped 0, 10, 20, 150, 260: 150 closes [0,100), 260 closes [100,200).
    for t in [1, 2, 3, 15, 25, 26, 150, 260, 400] {
        payloads.push(format!(r#"{{"t":{t},"v":1}}"#));
    }
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    let out = run.feed_all(&refs);
    assert_eq!(
        out,
        [
            r#"k {"key":"k","windowStart":0,"windowEnd":100,"peak":3}"#,
            r#"k {"key":"k","windowStart":100,"windowEnd":200,"peak":1}"#,
        ]
    );
}

#[test]
fn processing_time_windows_fire_on_processing_time_progress() {
    let mut step = window("1s", None, None, None);
    step.timestamp = None;
    let pipeline = compile(&[window_step(step)]);
    let mut state = pipeline.new_state();
    let mut stats = RecordStats::default();
    let mut out = Outputs::default();
    for (payload, now) in [
        (r#"{"v":1}"#, 10_100),
        (r#"{"v":2}"#, 10_900),
        (r#"{"v":4}"#, 11_000),
    ] {
        let mut input = record(None, payload, 0);
        input.processing_time_ms = now;
        pipeline
            .process(&mut state, &input, &mut out, &mut stats)
            .expect("valid record");
    }
    assert!(out.is_empty(), "records never fire processing-time windows");
    pipeline.on_processing_time(&mut state, 10_999, &mut out, &mut stats);
    assert!(out.is_empty());
    pipeline.on_processing_time(&mut state, 11_000, &mut out, &mut stats);
    assert_eq!(
        texts(&out),
        [
            r#"- {"key":null,"windowStart":10000,"windowEnd":11000,"count":2,"sum":3,"min":1,"max":2,"avg":1.5}"#
        ]
    );
    out.clear();
    // A record stamped before the last firing joins the current window, not a fired one.
    let mut input = record(None, r#"{"v":8}"#, 0);
    input.processing_time_ms = 10_500;
    pipeline
        .process(&mut state, &input, &mut out, &mut stats)
        .expect("valid record");
    pipeline.on_processing_time(&mut state, 12_000, &mut out, &mut stats);
    assert_eq!(out.len(), 1);
    assert!(texts(&out)[0].contains(r#""windowStart":11000,"windowEnd":12000,"count":2,"sum":12"#));
    assert_eq!(stats.window_results, 2);
}

#[test]
fn event_time_pipelines_ignore_processing_time() {
    let mut run = Run::new(&[window_step(window("10ms", None, None, None))]);
    run.feed_all(&[r#"{"t":1,"v":1}"#]);
    let mut out = Outputs::default();
    run.pipeline
        .on_processing_time(&mut run.state, i64::MAX, &mut out, &mut run.stats);
    assert!(out.is_empty());
}

#[test]
fn stateless_pipelines_say_so() {
    assert!(!compile(&[filter(".a")]).is_stateful());
    assert!(compile(&[window_step(window("1s", None, None, None))]).is_stateful());
}

//! Micro-benchmarks of the record path (fast path against jaq, parsing against serde_json,
//! and a hand-written serde_json reference); run with
//! `cargo test --release -p streamjob-worker pipeline::bench -- --ignored --nocapture --test-threads 1`.

use std::time::Instant;

use streamjob_api::{Aggregate, AggregateFunction, PipelineStep, WindowStep};

use super::{InputRecord, Outputs, Pipeline, RecordStats};

/// ~80-byte records, half of them clicks.
fn records(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let kind = if i % 2 == 0 { "click" } else { "view" };
            format!(
                r#"{{"type":"{kind}","user":"user-{}","page":"/p/{}","ts":{},"n":{}}}"#,
                i % 1000,
                i % 37,
                1_714_557_600_000_i64 + i as i64,
                i % 100
            )
            .into_bytes()
        })
        .collect()
}

/// Nanoseconds per record for parse + pipeline + serialize, best of three passes.
fn ns_per_record(pipeline: &Pipeline, records: &[Vec<u8>]) -> (f64, usize) {
    let mut state = pipeline.new_state();
    let mut out = Outputs::default();
    let mut stats = RecordStats::default();
    let mut best = f64::MAX;
    let mut emitted = 0;
    for _ in 0..3 {
        emitted = 0;
        let start = Instant::now();
        for (offset, payload) in records.iter().enumerate() {
            let input = InputRecord {
                key: None,
                payload,
                timestamp_ms: None,
                processing_time_ms: 0,
                partition: 0,
                offset: offset as i64,
            };
            out.clear();
            if pipeline
                .process(&mut state, &input, &mut out, &mut stats)
                .is_ok()
            {
                emitted += out.len();
            }
        }
        best = best.min(start.elapsed().as_nanos() as f64 / records.len() as f64);
    }
    (best, emitted)
}

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn fast_path_against_jaq_ns_per_record() {
    let records = records(1_000_000);
    for code in [
        r#"select(.type == "click") | {user: .user, n: 1}"#,
        ".",
        r#"{user, page, n: (.n + 1)}"#,
    ] {
        let map = PipelineStep {
            map: Some(code.to_owned()),
            ..PipelineStep::default()
        };
        compare(code, &[map], &records);
    }
    let filter = PipelineStep {
        filter: Some(r#".type == "click""#.to_owned()),
        ..PipelineStep::default()
    };
    let map = PipelineStep {
        map: Some("{user: .user, n: 1}".to_owned()),
        ..PipelineStep::default()
    };
    compare("filter + map (2 steps)", &[filter, map], &records);
    let key_by = PipelineStep {
        key_by: Some(".user".to_owned()),
        ..PipelineStep::default()
    };
    let window = PipelineStep {
        window: Some(WindowStep {
            size: "1m".parse().expect("valid duration"),
            slide: None,
            timestamp: Some(".ts".to_owned()),
            max_out_of_orderness: None,
            allowed_lateness: None,
            aggregates: Vec::from([Aggregate {
                name: "clicks".to_owned(),
                function: AggregateFunction::Count,
                of: None,
            }]),
        }),
        ..PipelineStep::default()
    };
    compare(
        "keyBy .user + 1m tumbling count",
        &[key_by, window],
        &records,
    );
}

fn compare(name: &str, steps: &[PipelineStep], records: &[Vec<u8>]) {
    let average = records.iter().map(Vec::len).sum::<usize>() / records.len();
    let fast = Pipeline::compile(steps).expect("compiles");
    let jaq = Pipeline::compile(steps)
        .expect("compiles")
        .without_fast_path();
    let (fast_ns, fast_out) = ns_per_record(&fast, records);
    let (jaq_ns, jaq_out) = ns_per_record(&jaq, records);
    assert_eq!(fast_out, jaq_out);
    println!(
        "{name:50} {average} B/record: fast path {fast_ns:5.0} ns/record, jaq {jaq_ns:5.0} \
         ns/record ({:.1}x)",
        jaq_ns / fast_ns
    );
}

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn breakdown_ns_per_record() {
    let records = records(1_000_000);
    let time = |name: &str, f: &dyn Fn(&[u8]) -> usize| {
        let mut best = f64::MAX;
        let mut sink = 0;
        for _ in 0..3 {
            let start = Instant::now();
            for r in &records {
                sink += f(r);
            }
            best = best.min(start.elapsed().as_nanos() as f64 / records.len() as f64);
        }
        println!("{name:40} {best:7.0} ns/record ({sink})");
    };
    time("serde_json::Value parse", &|r| {
        serde_json::from_slice::<serde_json::Value>(r)
            .map_or(0, |v| v.as_object().map_or(0, |o| o.len()))
    });
    time("Value parse", &|r| match super::parse::parse(r) {
        Ok(super::value::Value::Obj(o)) => o.len(),
        _ => 0,
    });
    time("Value parse + write", &|r| {
        let Ok(v) = super::parse::parse(r) else {
            return 0;
        };
        let mut out = Vec::with_capacity(r.len() + 16);
        super::write::write_value(&mut out, &v, super::write::NonFinite::Json);
        out.len()
    });
    time("serde_json::Value parse + to_vec", &|r| {
        serde_json::from_slice::<serde_json::Value>(r)
            .ok()
            .and_then(|v| serde_json::to_vec(&v).ok())
            .map_or(0, |v| v.len())
    });
}

/// The same work written by hand against serde_json, for reference.
#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn hand_written_serde_json_reference() {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        user: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Out<'a> {
        user: &'a str,
        n: i64,
    }
    let records = records(1_000_000);
    let mut best = f64::MAX;
    let mut emitted = 0;
    for _ in 0..5 {
        emitted = 0;
        let start = Instant::now();
        for r in &records {
            let Ok(event) = serde_json::from_slice::<Event<'_>>(r) else {
                continue;
            };
            if event.kind == "click" {
                let mut payload = Vec::with_capacity(r.len() + 16);
                if serde_json::to_writer(
                    &mut payload,
                    &Out {
                        user: event.user,
                        n: 1,
                    },
                )
                .is_ok()
                {
                    emitted += payload.len();
                }
            }
        }
        best = best.min(start.elapsed().as_nanos() as f64 / records.len() as f64);
    }
    println!("hand-written serde_json (typed structs)  {best:7.0} ns/record ({emitted})");
}

//! Partition state: serialization, and replay after a restore.

use super::{Run, compile, key_by, map, record, texts, window, window_step};
use crate::pipeline::{InputRecord, Outputs, PartitionState, Pipeline, RecordStats};
use crate::snapshot::StateEncoding;

/// A stream with out-of-order, late, dropped records, several keys and a float sum.
fn replay_stream() -> Vec<String> {
    let events = [
        ("a", 1, "1"),
        ("b", 3, "0.1"),
        ("a", 12, "2"),
        ("a", 4, "0.2"),
        ("c", 25, "3"),
        ("b", 14, "1e3"),
        ("a", 9, "5"),
        ("b", 40, "7"),
        ("a", 2, "1"),
        ("c", 33, "0.3"),
        ("a", 61, "1"),
        ("b", 55, "-4"),
        ("c", 90, "2"),
    ];
    events
        .iter()
        .map(|(k, t, v)| format!(r#"{{"k":"{k}","t":{t},"v":{v}}}"#))
        .collect()
}

fn replay_pipeline() -> Pipeline {
    compile(&[
        key_by(".k"),
        window_step(window("20ms", Some("10ms"), Some("5ms"), Some("15ms"))),
        map("{key, windowEnd, count, sum, avg}"),
    ])
}

#[test]
fn restoring_state_mid_stream_replays_byte_identical_outputs() {
    let pipeline = replay_pipeline();
    let stream = replay_stream();
    let run_range = |state: &mut PartitionState, range: std::ops::Range<usize>| {
        let mut out = Outputs::default();
        let mut stats = RecordStats::default();
        for (offset, payload) in stream.iter().enumerate().take(range.end).skip(range.start) {
            let input = record(None, payload, offset as i64);
            pipeline
                .process(state, &input, &mut out, &mut stats)
                .expect("valid record");
        }
        (out, stats.late_dropped)
    };
    let mut uninterrupted_state = pipeline.new_state();
    let (uninterrupted, dropped) = run_range(&mut uninterrupted_state, 0..stream.len());
    assert!(
        uninterrupted.len() >= 5,
        "the stream fires windows: {:?}",
        texts(&uninterrupted)
    );
    assert!(dropped > 0, "the stream has dropped records");
    for cut in 0..=stream.len() {
        let mut state = pipeline.new_state();
        let (mut outputs, _) = run_range(&mut state, 0..cut);
        let checkpoint = state.encode().expect("state encodes");
        let mut restored =
            PartitionState::decode(StateEncoding::Binary, &checkpoint).expect("state restores");
        assert_eq!(restored, state, "round trip at {cut}");
        assert_eq!(restored.encode().expect("encodes"), checkpoint);
        for (encoding, again) in round_trips(&state) {
            assert_eq!(again, state, "{encoding:?} round trip at {cut}");
        }
        let (rest, _) = run_range(&mut restored, cut..stream.len());
        for record in rest.to_records() {
            outputs.push_record(&record);
        }
        assert_eq!(
            outputs.to_records(),
            uninterrupted.to_records(),
            "restored at record {cut}"
        );
        assert_eq!(restored, uninterrupted_state);
    }
}

#[test]
fn identical_states_serialize_identically() {
    let pipeline = replay_pipeline();
    let stream = replay_stream();
    let mut forward = pipeline.new_state();
    let mut out = Outputs::default();
    let mut stats = RecordStats::default();
    for payload in &stream[..6] {
        pipeline
            .process(
                &mut forward,
                &record(None, payload, 0),
                &mut out,
                &mut stats,
            )
            .expect("valid");
    }
    let text = serde_json::to_string(&forward).expect("serializes");
    let again: PartitionState = serde_json::from_str(&text).expect("restores");
    assert_eq!(serde_json::to_string(&again).expect("serializes"), text);
    // Window state is readable: keyed panes with their accumulators.
    assert!(text.contains(r#""key":"a""#), "{text}");
    assert!(text.contains(r#""maxEventTime":25"#), "{text}");
}

#[test]
fn float_accumulators_survive_a_checkpoint_bit_for_bit() {
    let mut run = Run::new(&[window_step(window("10ms", None, None, None))]);
    run.feed_all(&[
        r#"{"t":1,"v":0.1}"#,
        r#"{"t":2,"v":0.2}"#,
        r#"{"t":3,"v":1e-300}"#,
    ]);
    for (encoding, restored) in round_trips(&run.state) {
        assert_eq!(restored, run.state, "{encoding:?}");
        let mut run = Run {
            state: restored,
            ..Run::new(&[window_step(window("10ms", None, None, None))])
        };
        let out = run.feed_all(&[r#"{"t":10,"v":0}"#]);
        assert!(
            out[0].contains(r#""sum":0.30000000000000004"#),
            "{encoding:?}: {out:?}"
        );
    }
}

/// The state written and read back in each snapshot encoding.
fn round_trips(state: &PartitionState) -> Vec<(StateEncoding, PartitionState)> {
    let json = serde_json::to_vec(state).expect("serializes as JSON");
    let binary = state.encode().expect("encodes");
    [(StateEncoding::Json, json), (StateEncoding::Binary, binary)]
        .into_iter()
        .map(|(encoding, bytes)| {
            let restored = PartitionState::decode(encoding, &bytes).expect("restores");
            (encoding, restored)
        })
        .collect()
}

#[test]
fn binary_keys_round_trip_through_state_and_results() {
    let pipeline = compile(&[window_step(window("10ms", None, None, None))]);
    let mut state = pipeline.new_state();
    let mut out = Outputs::default();
    let mut stats = RecordStats::default();
    let key = [0xff_u8, 0x00, b'a'];
    let input = InputRecord {
        key: Some(&key),
        ..record(None, r#"{"t":1,"v":1}"#, 0)
    };
    pipeline
        .process(&mut state, &input, &mut out, &mut stats)
        .expect("valid");
    for (encoding, mut state) in round_trips(&state) {
        let mut out = Outputs::default();
        let input = InputRecord {
            key: Some(&key),
            ..record(None, r#"{"t":10,"v":1}"#, 1)
        };
        pipeline
            .process(&mut state, &input, &mut out, &mut stats)
            .expect("valid");
        let out = out.to_records();
        assert_eq!(out.len(), 1, "{encoding:?}");
        assert_eq!(out[0].key.as_deref(), Some(&key[..]), "{encoding:?}");
        let payload = String::from_utf8_lossy(&out[0].payload);
        assert!(
            payload.starts_with("{\"key\":\"\u{fffd}\\u0000a\""),
            "{encoding:?}: {payload}"
        );
    }
}

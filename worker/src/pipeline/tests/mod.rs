//! Behaviour of the pipeline engine: step semantics, windows, state and replay.

mod state;
mod steps;
mod windows;

use streamjob_api::{Aggregate, AggregateFunction, PipelineStep, WindowStep};

use super::{InputRecord, Outputs, PartitionState, Pipeline, RecordStats};

pub(super) fn filter(code: &str) -> PipelineStep {
    PipelineStep {
        filter: Some(code.to_owned()),
        ..PipelineStep::default()
    }
}

pub(super) fn map(code: &str) -> PipelineStep {
    PipelineStep {
        map: Some(code.to_owned()),
        ..PipelineStep::default()
    }
}

pub(super) fn key_by(code: &str) -> PipelineStep {
    PipelineStep {
        key_by: Some(code.to_owned()),
        ..PipelineStep::default()
    }
}

pub(super) fn named(name: &str, step: PipelineStep) -> PipelineStep {
    PipelineStep {
        name: Some(name.to_owned()),
        ..step
    }
}

pub(super) fn duration(text: &str) -> kube::core::Duration {
    text.parse().expect("test durations are valid")
}

pub(super) fn aggregate(name: &str, function: AggregateFunction, of: Option<&str>) -> Aggregate {
    Aggregate {
        name: name.to_owned(),
        function,
        of: of.map(str::to_owned),
    }
}

/// An event-time window on `.t` (epoch millis) with count/sum/min/max/avg of `.v`.
pub(super) fn window(
    size: &str,
    slide: Option<&str>,
    out_of_order: Option<&str>,
    lateness: Option<&str>,
) -> WindowStep {
    WindowStep {
        size: duration(size),
        slide: slide.map(duration),
        timestamp: Some(".t".to_owned()),
        max_out_of_orderness: out_of_order.map(duration),
        allowed_lateness: lateness.map(duration),
        aggregates: Vec::from([
            aggregate("count", AggregateFunction::Count, None),
            aggregate("sum", AggregateFunction::Sum, Some(".v")),
            aggregate("min", AggregateFunction::Min, Some(".v")),
            aggregate("max", AggregateFunction::Max, Some(".v")),
            aggregate("avg", AggregateFunction::Avg, Some(".v")),
        ]),
    }
}

pub(super) fn window_step(window: WindowStep) -> PipelineStep {
    PipelineStep {
        window: Some(window),
        ..PipelineStep::default()
    }
}

pub(super) fn compile(steps: &[PipelineStep]) -> Pipeline {
    Pipeline::compile(steps).unwrap_or_else(|e| panic!("pipeline compiles: {e}"))
}

pub(super) fn record<'a>(key: Option<&'a str>, payload: &'a str, offset: i64) -> InputRecord<'a> {
    InputRecord {
        key: key.map(str::as_bytes),
        payload: payload.as_bytes(),
        timestamp_ms: None,
        processing_time_ms: 1_000_000 + offset,
        partition: 0,
        offset,
    }
}

/// Runs payloads (all keyed `k` unless they carry a key) and returns the outputs as text.
pub(super) struct Run {
    pub(super) pipeline: Pipeline,
    pub(super) state: PartitionState,
    pub(super) stats: RecordStats,
}

impl Run {
    pub(super) fn new(steps: &[PipelineStep]) -> Self {
        let pipeline = compile(steps);
        let state = pipeline.new_state();
        Self {
            pipeline,
            state,
            stats: RecordStats::default(),
        }
    }

    pub(super) fn feed(&mut self, key: Option<&str>, payload: &str) -> Vec<String> {
        let mut out = Outputs::default();
        let input = record(key, payload, 0);
        self.pipeline
            .process(&mut self.state, &input, &mut out, &mut self.stats)
            .unwrap_or_else(|e| panic!("{payload} fails: {e}"));
        texts(&out)
    }

    pub(super) fn feed_all(&mut self, payloads: &[&str]) -> Vec<String> {
        payloads
            .iter()
            .flat_map(|p| self.feed(Some("k"), p))
            .collect()
    }
}

pub(super) fn texts(out: &Outputs) -> Vec<String> {
    out.iter()
        .map(|o| {
            let key = o.key.map(String::from_utf8_lossy);
            let payload = String::from_utf8_lossy(o.payload);
            match key {
                Some(key) => format!("{key} {payload}"),
                None => format!("- {payload}"),
            }
        })
        .collect()
}

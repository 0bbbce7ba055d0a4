//! The pipeline engine: runs each record through the manifest's steps (`filter`, `map`,
//! `keyBy`, `window`) and keeps the per-partition window state (pure; no I/O).
//!
//! jq expressions run on a native fast path when they fit its subset and in jaq otherwise
//! ([`ExprPath`]). `docs/pipeline.md` is the user-facing reference of the semantics.

mod error;
mod jq;
mod output;
mod parse;
mod value;
mod window;
mod write;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use streamjob_api::{PipelineStep, StepKind};
use thiserror::Error;

use crate::snapshot::StateEncoding;

pub use error::{CompileError, RecordError, RecordErrorKind};
pub use jq::ExprPath;
pub use output::{Output, OutputRecord, Outputs};

use jq::{JqExpr, Written};
use value::Value;
use window::{CommitStats, Prepared, WindowFailure, WindowOp, WindowResult, WindowState};
use write::NonFinite;

/// A compiled pipeline: immutable, shared by all partitions of a worker.
#[derive(Debug)]
pub struct Pipeline {
    /// Steps cut after each window step; every segment but the last ends with a window.
    segments: Vec<Segment>,
    /// The shape of its state ([`streamjob_api::state_layout`]), saved with every snapshot.
    layout: String,
}

#[derive(Debug, Default)]
struct Segment {
    steps: Vec<Step>,
    window: Option<WindowStage>,
}

#[derive(Debug)]
struct Step {
    label: String,
    op: StepOp,
}

#[derive(Debug)]
enum StepOp {
    Filter(JqExpr),
    Map(JqExpr),
    KeyBy(JqExpr),
}

#[derive(Debug)]
struct WindowStage {
    label: String,
    op: WindowOp,
}

/// One Kafka record handed to the pipeline.
#[derive(Clone, Copy, Debug)]
pub struct InputRecord<'a> {
    /// The Kafka key (the record key until a `keyBy`).
    pub key: Option<&'a [u8]>,
    /// The Kafka value: one JSON document.
    pub payload: &'a [u8],
    /// The Kafka record timestamp (informational; event time comes from `window.timestamp`).
    pub timestamp_ms: Option<i64>,
    /// Wall-clock time of processing, for processing-time windows (set by the caller, so
    /// the engine stays pure).
    pub processing_time_ms: i64,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// What processing produced besides output records.
#[derive(Clone, Debug, Default)]
pub struct RecordStats {
    /// Window results emitted (fired windows and re-emitted late updates).
    pub window_results: u64,
    /// Records dropped because every window they belong to was past its allowed lateness.
    pub late_dropped: u64,
    /// Window results that a step after the window failed on; they belong on the
    /// dead-letter topic (the input record itself was processed).
    pub failed_results: Vec<FailedResult>,
}

/// A window result that a later step could not process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedResult {
    /// Key of the window result.
    pub key: Option<Vec<u8>>,
    /// The window result as the window emitted it (compact JSON).
    pub payload: Vec<u8>,
    /// Why the later step failed.
    pub error: RecordError,
}

/// Everything a checkpoint must carry for one partition: per window step, the open windows'
/// accumulators and the time progress (highest event time, or last processing-time firing).
/// Serializes deterministically (ordered maps, fixed field order).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PartitionState {
    #[serde(default)]
    windows: Vec<WindowState>,
    /// The layout of the pipeline that built it.
    #[serde(default)]
    layout: Option<String>,
}

/// A snapshot's state that does not decode.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct StateDecodeError(String);

impl PartitionState {
    /// The state as snapshots hold it ([`StateEncoding::Binary`]).
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// Reads a snapshot's state, encoded as `encoding`.
    pub fn decode(encoding: StateEncoding, bytes: &[u8]) -> Result<Self, StateDecodeError> {
        match encoding {
            StateEncoding::Json => {
                serde_json::from_slice(bytes).map_err(|e| StateDecodeError(e.to_string()))
            }
            StateEncoding::Binary => {
                postcard::from_bytes(bytes).map_err(|e| StateDecodeError(e.to_string()))
            }
        }
    }

    fn ensure_windows(&mut self, count: usize) {
        if self.windows.len() < count {
            self.windows.resize_with(count, WindowState::default);
        }
    }
}

/// One jq expression of the pipeline and the evaluator that runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepExpression {
    /// The step, as `index:name` or `index`.
    pub step: String,
    /// The field holding the expression (`filter`, `window.timestamp`, ...).
    pub field: String,
    /// Fast path or jaq.
    pub path: ExprPath,
}

/// A value on its way through the steps, with its current key.
struct Item<'x> {
    key: Option<Cow<'x, [u8]>>,
    value: Value<'x>,
}

const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Pipeline>();
};

impl Pipeline {
    /// Compiles every step; errors name the step (index and optional name) and the jq error.
    pub fn compile(steps: &[PipelineStep]) -> Result<Pipeline, CompileError> {
        let mut segments = Vec::new();
        let mut current = Segment::default();
        for (index, step) in steps.iter().enumerate() {
            let fail = |message: String| CompileError {
                index,
                name: step.name.clone(),
                message,
            };
            let label = error::step_label(index, step.name.as_deref());
            let jq = |field: &str, code: &str| {
                JqExpr::compile(code).map_err(|e| fail(format!("invalid jq in {field}: {e}")))
            };
            let op = match step.kind() {
                None => {
                    return Err(fail(
                        "a step needs exactly one of filter, map, keyBy or window".to_owned(),
                    ));
                }
                Some(StepKind::Filter(code)) => StepOp::Filter(jq("filter", code)?),
                Some(StepKind::Map(code)) => StepOp::Map(jq("map", code)?),
                Some(StepKind::KeyBy(code)) => StepOp::KeyBy(jq("keyBy", code)?),
                Some(StepKind::Window(window)) => {
                    let op = WindowOp::compile(window).map_err(fail)?;
                    current.window = Some(WindowStage { label, op });
                    segments.push(std::mem::take(&mut current));
                    continue;
                }
            };
            current.steps.push(Step { label, op });
        }
        segments.push(current);
        Ok(Pipeline {
            segments,
            layout: streamjob_api::state_layout(steps),
        })
    }

    /// Fresh state for one partition.
    pub fn new_state(&self) -> PartitionState {
        let mut state = PartitionState {
            layout: Some(self.layout.clone()),
            ..PartitionState::default()
        };
        state.ensure_windows(self.window_count());
        state
    }

    /// Whether `state` was saved by a pipeline whose state this one reads: the same layout,
    /// one without windows (nothing to lose), or a snapshot from before layouts were
    /// recorded.
    pub fn reads(&self, state: &PartitionState) -> bool {
        state
            .layout
            .as_ref()
            .is_none_or(|saved| saved.is_empty() || *saved == self.layout)
    }

    /// The layout of `state`, if recorded.
    pub fn layout_of(state: &PartitionState) -> Option<&str> {
        state.layout.as_deref()
    }

    /// `state`, which this pipeline [reads](Self::reads), as this pipeline's from now on.
    pub fn claim(&self, mut state: PartitionState) -> PartitionState {
        state.layout = Some(self.layout.clone());
        state.ensure_windows(self.window_count());
        state
    }

    /// True when the pipeline has a window step (state matters for upgrades).
    pub fn is_stateful(&self) -> bool {
        self.window_count() > 0
    }

    /// Every jq expression with the evaluator it runs on (for start-up logs and tests).
    pub fn expressions(&self) -> Vec<StepExpression> {
        let mut expressions = Vec::new();
        for segment in &self.segments {
            for step in &segment.steps {
                let (field, expr) = match &step.op {
                    StepOp::Filter(e) => ("filter", e),
                    StepOp::Map(e) => ("map", e),
                    StepOp::KeyBy(e) => ("keyBy", e),
                };
                expressions.push(StepExpression {
                    step: step.label.clone(),
                    field: field.to_owned(),
                    path: expr.path(),
                });
            }
            if let Some(stage) = &segment.window {
                for (field, expr) in stage.op.expressions() {
                    expressions.push(StepExpression {
                        step: stage.label.clone(),
                        field,
                        path: expr.path(),
                    });
                }
            }
        }
        expressions
    }

    /// The same pipeline with every expression on jaq (for comparisons).
    #[cfg(test)]
    pub(crate) fn without_fast_path(mut self) -> Pipeline {
        for segment in &mut self.segments {
            for step in &mut segment.steps {
                match &mut step.op {
                    StepOp::Filter(e) | StepOp::Map(e) | StepOp::KeyBy(e) => e.disable_fast_path(),
                }
            }
        }
        self
    }

    fn window_count(&self) -> usize {
        self.segments.iter().filter(|s| s.window.is_some()).count()
    }

    /// Runs one input record through the pipeline, appending results to `out`.
    ///
    /// A record that fails (bad JSON, jq error, missing/invalid timestamp, non-numeric `of`)
    /// returns `Err` and leaves `state`, `out` and `stats` unchanged.
    pub fn process(
        &self,
        state: &mut PartitionState,
        record: &InputRecord<'_>,
        out: &mut Outputs,
        stats: &mut RecordStats,
    ) -> Result<(), RecordError> {
        let value = parse::parse(record.payload).map_err(|message| RecordError {
            step: None,
            kind: RecordErrorKind::InvalidJson,
            message,
        })?;
        let item = Item {
            key: record.key.map(Cow::Borrowed),
            value,
        };
        let Some(first) = self.segments.first() else {
            return Ok(());
        };
        let Some(stage) = &first.window else {
            let before = out.len();
            let result = run_steps_to_output(&first.steps, item, out);
            if result.is_err() {
                out.truncate(before);
            }
            return result;
        };
        // Everything that can fail happens before the state changes.
        let mut prepared = Batch::Empty;
        run_steps(&first.steps, item, &mut |item| {
            prepared.push(stage.prepare(item, record.processing_time_ms)?);
            Ok(())
        })?;
        state.ensure_windows(self.window_count());
        let results = commit(stage, state.windows.first_mut(), prepared, stats);
        self.emit_results(0, results, state, record.processing_time_ms, out, stats);
        Ok(())
    }

    /// Processing-time progress (call periodically, e.g. every 100ms): fires the
    /// processing-time windows whose end is at or before `now_ms`; a no-op for event-time
    /// windows.
    pub fn on_processing_time(
        &self,
        state: &mut PartitionState,
        now_ms: i64,
        out: &mut Outputs,
        stats: &mut RecordStats,
    ) {
        state.ensure_windows(self.window_count());
        for (index, segment) in self.segments.iter().enumerate() {
            let Some(stage) = &segment.window else {
                continue;
            };
            let mut results = Vec::new();
            if let Some(window_state) = state.windows.get_mut(index) {
                stage
                    .op
                    .on_processing_time(window_state, now_ms, &mut results);
            }
            if !results.is_empty() {
                self.emit_results(index, results, state, now_ms, out, stats);
            }
        }
    }

    /// Sends the results of window `index` through the following steps. A step failing on
    /// a result rejects that result only (into `stats.failed_results`).
    fn emit_results(
        &self,
        index: usize,
        results: Vec<WindowResult>,
        state: &mut PartitionState,
        processing_time_ms: i64,
        out: &mut Outputs,
        stats: &mut RecordStats,
    ) {
        let (
            Some(Segment {
                window: Some(stage),
                ..
            }),
            Some(next),
        ) = (self.segments.get(index), self.segments.get(index + 1))
        else {
            return;
        };
        stats.window_results += results.len() as u64;
        let mut prepared: Vec<Prepared<'_>> = Vec::new();
        for result in &results {
            let item = Item {
                key: result.key.as_deref().map(Cow::Borrowed),
                value: stage.op.result_value(result),
            };
            let (out_before, prepared_before) = (out.len(), prepared.len());
            let outcome = run_steps(&next.steps, item, &mut |item| match &next.window {
                None => {
                    out.push_value(item.key.as_deref(), &item.value);
                    Ok(())
                }
                Some(next_stage) => {
                    prepared.push(next_stage.prepare(item, processing_time_ms)?);
                    Ok(())
                }
            });
            if let Err(error) = outcome {
                out.truncate(out_before);
                prepared.truncate(prepared_before);
                let mut payload = Vec::new();
                write::write_value(
                    &mut payload,
                    &stage.op.result_value(result),
                    NonFinite::Json,
                );
                stats.failed_results.push(FailedResult {
                    key: result.key.clone(),
                    payload,
                    error,
                });
            }
        }
        if let Some(next_stage) = &next.window {
            let next_results = commit(
                next_stage,
                state.windows.get_mut(index + 1),
                prepared,
                stats,
            );
            self.emit_results(
                index + 1,
                next_results,
                state,
                processing_time_ms,
                out,
                stats,
            );
        }
    }
}

impl WindowStage {
    fn prepare<'x>(
        &'x self,
        item: Item<'x>,
        processing_time_ms: i64,
    ) -> Result<Prepared<'x>, RecordError> {
        self.op
            .prepare(item.key, &item.value, processing_time_ms)
            .map_err(|WindowFailure { kind, message }| RecordError {
                step: Some(self.label.clone()),
                kind,
                message,
            })
    }
}

/// Adds prepared records to a window's state, returning the results in emission order.
fn commit<'x>(
    stage: &WindowStage,
    state: Option<&mut WindowState>,
    prepared: impl IntoIterator<Item = Prepared<'x>>,
    stats: &mut RecordStats,
) -> Vec<WindowResult> {
    let mut results = Vec::new();
    let Some(state) = state else {
        return results;
    };
    let mut commit_stats = CommitStats::default();
    for record in prepared {
        stage
            .op
            .commit(state, record, &mut results, &mut commit_stats);
    }
    stats.late_dropped += commit_stats.late_dropped;
    results
}

impl StepOp {
    /// Whether this is a `map` whose output is written straight to text when it is the last
    /// step (see `run_steps_to_output`).
    #[cfg(test)]
    fn writes_objects(&self) -> bool {
        matches!(self, StepOp::Map(expr) if expr.writes_objects())
    }
}

impl Step {
    fn error(&self, message: String) -> RecordError {
        RecordError {
            step: Some(self.label.clone()),
            kind: RecordErrorKind::Evaluation,
            message,
        }
    }
}

/// Runs `item` through `steps`, handing whatever comes out of the last one to `sink`.
fn run_steps<'x>(
    steps: &'x [Step],
    item: Item<'x>,
    sink: &mut dyn FnMut(Item<'x>) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    let Some((step, rest)) = steps.split_first() else {
        return sink(item);
    };
    match &step.op {
        StepOp::Filter(expr) => match expr.first_truthy(&item.value) {
            Ok(Some(true)) => run_steps(rest, item, sink),
            Ok(_) => Ok(()),
            Err(message) => Err(step.error(message)),
        },
        StepOp::KeyBy(expr) => {
            let key = match expr.first(&item.value) {
                Ok(Some(key)) => key_bytes(key),
                Ok(None) => return Err(step.error("keyBy yielded no key".to_owned())),
                Err(message) => return Err(step.error(message)),
            };
            let item = Item {
                key: Some(key),
                value: item.value,
            };
            run_steps(rest, item, sink)
        }
        StepOp::Map(expr) => {
            let key = item.key;
            expr.for_each(
                item.value,
                |message| step.error(message),
                |value| {
                    let key = key.clone();
                    run_steps(rest, Item { key, value }, sink)
                },
            )
        }
    }
}

/// Runs `item` through `steps` (ending in no window) and appends what comes out to `out`. A
/// last `map` building an object with literal keys writes its text straight into `out`.
fn run_steps_to_output<'x>(
    steps: &'x [Step],
    item: Item<'x>,
    out: &mut Outputs,
) -> Result<(), RecordError> {
    let fused = match steps.split_last() {
        Some((last, init)) => match &last.op {
            StepOp::Map(expr) if expr.writes_objects() => Some((last, expr, init)),
            _ => None,
        },
        None => None,
    };
    let Some((last, expr, init)) = fused else {
        return run_steps(steps, item, &mut |item| {
            out.push_value(item.key.as_deref(), &item.value);
            Ok(())
        });
    };
    run_steps(init, item, &mut |item| {
        let mut written = Written::Fallback;
        out.push_with(item.key.as_deref(), |payload| {
            written = expr.write_object(&item.value, payload);
            written == Written::Output
        });
        match written {
            Written::Output | Written::Nothing => Ok(()),
            Written::Failed(message) => Err(last.error(message)),
            Written::Fallback => run_steps(std::slice::from_ref(last), item, &mut |item| {
                out.push_value(item.key.as_deref(), &item.value);
                Ok(())
            }),
        }
    })
}

/// The values one record brings to a window: nearly always one, so kept without a `Vec`.
enum Batch<T> {
    Empty,
    One(T),
    Many(Vec<T>),
}

impl<T> Batch<T> {
    fn push(&mut self, item: T) {
        *self = match std::mem::replace(self, Batch::Empty) {
            Batch::Empty => Batch::One(item),
            Batch::One(first) => Batch::Many(Vec::from([first, item])),
            Batch::Many(mut items) => {
                items.push(item);
                Batch::Many(items)
            }
        };
    }
}

impl<T> IntoIterator for Batch<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        let (first, rest) = match self {
            Batch::Empty => (None, Vec::new()),
            Batch::One(item) => (Some(item), Vec::new()),
            Batch::Many(items) => (None, items),
        };
        first.into_iter().chain(rest)
    }
}

/// A string key is used as its UTF-8 bytes; any other value as its compact JSON text.
fn key_bytes(key: Value<'_>) -> Cow<'_, [u8]> {
    match key {
        Value::Str(Cow::Borrowed(s)) => Cow::Borrowed(s.as_bytes()),
        Value::Str(Cow::Owned(s)) => Cow::Owned(s.into_bytes()),
        other => {
            let mut text = Vec::new();
            write::write_value(&mut text, &other, NonFinite::Json);
            Cow::Owned(text)
        }
    }
}

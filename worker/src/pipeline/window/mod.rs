//! Windowed aggregation per key, on event time or processing time (pure; no I/O).
//!
//! A record is first *prepared* (its time and aggregate inputs evaluated: everything that
//! can fail) and only then *committed* to the state, so a failing record never leaves a
//! partial update behind.

mod state;

use std::borrow::Cow;

use streamjob_api::{AggregateFunction, WindowStep};

use super::RecordErrorKind;
use super::jq::JqExpr;
use super::value::{Object, Value};
use state::{Accumulator, Number};

pub(crate) use state::WindowState;

/// Durations beyond this (about 100 years) are rejected, which keeps window arithmetic far
/// from `i64` overflow.
const MAX_DURATION_MS: i64 = 100 * 366 * 24 * 3600 * 1000;
/// A record may belong to at most this many sliding windows (`size / slide`).
const MAX_WINDOWS_PER_RECORD: i64 = 1000;
/// Field names of every window result, before the aggregates.
pub(crate) const RESERVED_FIELDS: [&str; 3] = ["key", "windowStart", "windowEnd"];

/// A compiled window step.
#[derive(Debug)]
pub(crate) struct WindowOp {
    size: i64,
    slide: i64,
    time: TimeSource,
    aggregates: Vec<AggregateSpec>,
}

#[derive(Debug)]
enum TimeSource {
    Event {
        timestamp: JqExpr,
        max_out_of_orderness: i64,
        allowed_lateness: i64,
    },
    Processing,
}

#[derive(Debug)]
struct AggregateSpec {
    name: String,
    function: AggregateFunction,
    of: Option<JqExpr>,
}

/// Why a record could not be prepared for a window.
#[derive(Debug)]
pub(crate) struct WindowFailure {
    pub(crate) kind: RecordErrorKind,
    pub(crate) message: String,
}

/// A record ready to be added: its key, time and aggregate inputs (one per aggregate with
/// `of`, in order; `count` needs none, so count-only windows allocate nothing per record).
#[derive(Debug)]
pub(crate) struct Prepared<'x> {
    key: Option<Cow<'x, [u8]>>,
    time: i64,
    inputs: Vec<Number>,
}

/// One emitted window result.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WindowResult {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) start: i64,
    pub(crate) end: i64,
    values: Vec<Number>,
}

/// Outcome counters of committing records.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    pub(crate) late_dropped: u64,
}

impl WindowOp {
    /// Compiles a window step; the error names the offending field.
    pub(crate) fn compile(step: &WindowStep) -> Result<Self, String> {
        let size = duration_ms("size", &step.size)?;
        if size == 0 {
            return Err("window size must be at least 1ms".to_owned());
        }
        let slide = match &step.slide {
            Some(slide) => duration_ms("slide", slide)?,
            None => size,
        };
        if slide == 0 || slide > size {
            return Err("window slide must be between 1ms and the window size".to_owned());
        }
        if (size + slide - 1) / slide > MAX_WINDOWS_PER_RECORD {
            return Err(format!(
                "window size / slide must be at most {MAX_WINDOWS_PER_RECORD} (each record \
                 belongs to that many windows)"
            ));
        }
        let optional_ms = |field, d: &Option<kube::core::Duration>| match d {
            Some(d) => duration_ms(field, d),
            None => Ok(0),
        };
        let time = match &step.timestamp {
            Some(code) => TimeSource::Event {
                timestamp: JqExpr::compile(code)
                    .map_err(|e| format!("invalid jq in window.timestamp: {e}"))?,
                max_out_of_orderness: optional_ms("maxOutOfOrderness", &step.max_out_of_orderness)?,
                allowed_lateness: optional_ms("allowedLateness", &step.allowed_lateness)?,
            },
            None => {
                if step.max_out_of_orderness.is_some() || step.allowed_lateness.is_some() {
                    return Err("maxOutOfOrderness and allowedLateness need an event-time \
                                window (set timestamp)"
                        .to_owned());
                }
                TimeSource::Processing
            }
        };
        if step.aggregates.is_empty() {
            return Err("a window needs at least one aggregate".to_owned());
        }
        let mut aggregates: Vec<AggregateSpec> = Vec::with_capacity(step.aggregates.len());
        for (i, aggregate) in step.aggregates.iter().enumerate() {
            let name = &aggregate.name;
            if RESERVED_FIELDS.contains(&name.as_str()) {
                return Err(format!(
                    "aggregate name {name:?} is reserved (results have key, windowStart, windowEnd)"
                ));
            }
            if aggregates.iter().any(|a| &a.name == name) {
                return Err(format!("aggregate name {name:?} is used twice"));
            }
            let of = match (aggregate.function, &aggregate.of) {
                // `count` counts records; an `of` is ignored.
                (AggregateFunction::Count, _) => None,
                (_, None) => return Err(format!("aggregate {name:?} needs `of`")),
                (_, Some(code)) => Some(
                    JqExpr::compile(code)
                        .map_err(|e| format!("invalid jq in window.aggregates[{i}].of: {e}"))?,
                ),
            };
            aggregates.push(AggregateSpec {
                name: name.clone(),
                function: aggregate.function,
                of,
            });
        }
        Ok(Self {
            size,
            slide,
            time,
            aggregates,
        })
    }

    /// True for event-time windows.
    pub(crate) fn is_event_time(&self) -> bool {
        matches!(self.time, TimeSource::Event { .. })
    }

    /// The jq expressions of this step, named by field.
    pub(crate) fn expressions(&self) -> Vec<(String, &JqExpr)> {
        let mut expressions = Vec::new();
        if let TimeSource::Event { timestamp, .. } = &self.time {
            expressions.push(("window.timestamp".to_owned(), timestamp));
        }
        for (i, aggregate) in self.aggregates.iter().enumerate() {
            if let Some(of) = &aggregate.of {
                expressions.push((format!("window.aggregates[{i}].of"), of));
            }
        }
        expressions
    }

    /// Evaluates everything about a record that can fail.
    pub(crate) fn prepare<'x>(
        &'x self,
        key: Option<Cow<'x, [u8]>>,
        value: &Value<'x>,
        processing_time_ms: i64,
    ) -> Result<Prepared<'x>, WindowFailure> {
        let time = match &self.time {
            TimeSource::Event { timestamp, .. } => event_time(timestamp, value)?,
            TimeSource::Processing => processing_time_ms.clamp(min_time(), max_time()),
        };
        let mut inputs = Vec::new();
        for aggregate in &self.aggregates {
            let Some(of) = &aggregate.of else {
                continue;
            };
            let failure = |message: String| WindowFailure {
                kind: RecordErrorKind::Aggregate,
                message: format!("aggregate {:?}: {message}", aggregate.name),
            };
            inputs.push(match of.first(value).map_err(failure)? {
                Some(Value::Int(i)) => Number::Int(i),
                Some(Value::Float(f)) if f.is_finite() => Number::Float(f),
                Some(other) => {
                    return Err(failure(format!(
                        "`of` must yield a finite number, got {}",
                        describe(&other)
                    )));
                }
                None => return Err(failure("`of` yielded no output".to_owned())),
            });
        }
        Ok(Prepared { key, time, inputs })
    }

    /// Adds a prepared record to `state`, appending the results it causes (updates of
    /// already-fired windows, then windows the advanced watermark closes) to `results`.
    pub(crate) fn commit(
        &self,
        state: &mut WindowState,
        record: Prepared<'_>,
        results: &mut Vec<WindowResult>,
        stats: &mut CommitStats,
    ) {
        let (max_out_of_orderness, allowed_lateness) = match self.time {
            TimeSource::Event {
                max_out_of_orderness,
                allowed_lateness,
                ..
            } => (max_out_of_orderness, allowed_lateness),
            TimeSource::Processing => {
                // Time never runs backwards into windows that already fired.
                let time = record.time.max(state.fired_until.unwrap_or(i64::MIN));
                let mut start = first_window_start(time, self.size, self.slide);
                while start <= time {
                    self.add_to(state, &record, start, false, results);
                    start += self.slide;
                }
                return;
            }
        };
        let watermark_before = watermark(state.max_event_time, max_out_of_orderness);
        let mut added = false;
        let mut start = first_window_start(record.time, self.size, self.slide);
        while start <= record.time {
            let end = start + self.size;
            let late = watermark_before.is_some_and(|w| end + allowed_lateness <= w);
            if !late {
                added = true;
                let fired = watermark_before.is_some_and(|w| end <= w);
                self.add_to(state, &record, start, fired, results);
            }
            start += self.slide;
        }
        if !added {
            stats.late_dropped += 1;
        }
        state.max_event_time = Some(
            state
                .max_event_time
                .map_or(record.time, |m| m.max(record.time)),
        );
        let watermark_after = watermark(state.max_event_time, max_out_of_orderness);
        if let Some(after) = watermark_after {
            if watermark_before.is_none_or(|before| after > before) {
                self.fire(state, watermark_before, after, results);
                self.purge(state, after - allowed_lateness);
            }
        }
    }

    /// Processing-time progress: fires and removes windows that ended at or before `now_ms`.
    pub(crate) fn on_processing_time(
        &self,
        state: &mut WindowState,
        now_ms: i64,
        results: &mut Vec<WindowResult>,
    ) {
        if self.is_event_time() {
            return;
        }
        let now = now_ms.clamp(min_time(), max_time());
        if state.fired_until.is_some_and(|f| now <= f) {
            return;
        }
        self.fire(state, None, now, results);
        self.purge(state, now);
        state.fired_until = Some(now);
    }

    /// Adds the record to the window starting at `start`; `emit` re-emits its result.
    fn add_to(
        &self,
        state: &mut WindowState,
        record: &Prepared<'_>,
        start: i64,
        emit: bool,
        results: &mut Vec<WindowResult>,
    ) {
        let panes = state.windows.entry(start).or_default();
        let accumulators = match &record.key {
            None => panes.unkeyed.get_or_insert_with(Vec::new),
            Some(key) => panes.keyed.entry(key),
        };
        accumulate(&self.aggregates, accumulators, &record.inputs);
        if emit {
            results.push(self.result(record.key.as_deref(), start, accumulators));
        }
    }

    /// Emits the windows whose end lies in `(after, until]`, by end, then key.
    fn fire(
        &self,
        state: &WindowState,
        after: Option<i64>,
        until: i64,
        results: &mut Vec<WindowResult>,
    ) {
        let last_start = until - self.size;
        let range = match after {
            Some(after) if after >= until => return,
            Some(after) => state.windows.range(after - self.size + 1..=last_start),
            None => state.windows.range(..=last_start),
        };
        for (&start, panes) in range {
            for (key, accumulators) in panes.entries() {
                results.push(self.result(key, start, accumulators));
            }
        }
    }

    /// Drops windows whose end is at or before `until`.
    fn purge(&self, state: &mut WindowState, until: i64) {
        let keep_from = until - self.size + 1;
        state.windows = state.windows.split_off(&keep_from);
    }

    fn result(&self, key: Option<&[u8]>, start: i64, accumulators: &[Accumulator]) -> WindowResult {
        WindowResult {
            key: key.map(<[u8]>::to_vec),
            start,
            end: start + self.size,
            values: accumulators.iter().map(Accumulator::result).collect(),
        }
    }

    /// The result record: `{"key", "windowStart", "windowEnd", <aggregates>...}` in that order.
    pub(crate) fn result_value<'x>(&'x self, result: &'x WindowResult) -> Value<'x> {
        let key = match &result.key {
            None => Value::Null,
            Some(bytes) => Value::Str(String::from_utf8_lossy(bytes)),
        };
        let mut object: Object<'x> = Vec::with_capacity(3 + self.aggregates.len());
        object.push((Cow::Borrowed(RESERVED_FIELDS[0]), key));
        object.push((Cow::Borrowed(RESERVED_FIELDS[1]), Value::Int(result.start)));
        object.push((Cow::Borrowed(RESERVED_FIELDS[2]), Value::Int(result.end)));
        for (aggregate, value) in self.aggregates.iter().zip(&result.values) {
            object.push((Cow::Borrowed(aggregate.name.as_str()), value.to_value()));
        }
        Value::Obj(object)
    }
}

fn accumulate(specs: &[AggregateSpec], accumulators: &mut Vec<Accumulator>, inputs: &[Number]) {
    let matching = accumulators.len() == specs.len()
        && accumulators
            .iter()
            .zip(specs)
            .all(|(a, spec)| a.function() == spec.function);
    let mut inputs = inputs.iter().copied();
    let mut input = |spec: &AggregateSpec| match spec.of {
        Some(_) => inputs.next().unwrap_or(Number::Int(0)),
        None => Number::Int(1),
    };
    if !matching {
        // A new window (or state from another pipeline version): start afresh.
        accumulators.clear();
        accumulators.extend(
            specs
                .iter()
                .map(|spec| Accumulator::new(spec.function, input(spec))),
        );
        return;
    }
    for (accumulator, spec) in accumulators.iter_mut().zip(specs) {
        accumulator.add(input(spec));
    }
}

/// The earliest window start `s` (a multiple of `slide`) with `s <= t < s + size`.
fn first_window_start(t: i64, size: i64, slide: i64) -> i64 {
    (t - size).div_euclid(slide) * slide + slide
}

fn watermark(max_event_time: Option<i64>, max_out_of_orderness: i64) -> Option<i64> {
    max_event_time.map(|m| m - max_out_of_orderness)
}

fn min_time() -> i64 {
    jiff::Timestamp::MIN.as_millisecond()
}

fn max_time() -> i64 {
    jiff::Timestamp::MAX.as_millisecond()
}

fn duration_ms(field: &str, duration: &kube::core::Duration) -> Result<i64, String> {
    if duration.is_negative() {
        return Err(format!("window {field} must not be negative"));
    }
    let ms = std::time::Duration::from(*duration).as_millis();
    i64::try_from(ms)
        .ok()
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .ok_or_else(|| format!("window {field} is too long"))
}

fn event_time(timestamp: &JqExpr, value: &Value<'_>) -> Result<i64, WindowFailure> {
    let failure = |message: String| WindowFailure {
        kind: RecordErrorKind::Timestamp,
        message,
    };
    let time = match timestamp.first(value).map_err(failure)? {
        Some(Value::Int(ms)) => ms,
        Some(Value::Float(ms)) if ms.is_finite() && ms.abs() < 1e17 => ms.floor() as i64,
        Some(Value::Str(text)) => text
            .parse::<jiff::Timestamp>()
            .map_err(|e| failure(format!("timestamp {text:?} is not RFC 3339: {e}")))?
            .as_millisecond(),
        Some(other) => {
            return Err(failure(format!(
                "timestamp must be epoch milliseconds or an RFC 3339 string, got {}",
                describe(&other)
            )));
        }
        None => {
            return Err(failure(
                "the timestamp expression yielded no output".to_owned(),
            ));
        }
    };
    if !(min_time()..=max_time()).contains(&time) {
        return Err(failure(format!("timestamp {time} is out of range")));
    }
    Ok(time)
}

/// A short description of a value for error messages.
fn describe(value: &Value<'_>) -> String {
    let mut text = super::write::to_jaq_text(value);
    if text.len() > 60 {
        let mut end = 60;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    format!("{} ({text})", value.type_name())
}

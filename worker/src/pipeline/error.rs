//! Errors of compiling a pipeline and of processing one record (pure; no I/O).

use std::fmt;

/// A pipeline step that does not compile: names the step and says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pipeline step {}: {message}", step_label(*.index, .name.as_deref()))]
pub struct CompileError {
    /// Position of the step in `spec.pipeline` (from 0).
    pub index: usize,
    /// The step's `name`, if it has one.
    pub name: Option<String>,
    /// What is wrong (for jq: the field and jaq's error).
    pub message: String,
}

/// What kind of failure made a record unprocessable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordErrorKind {
    /// The payload is not one JSON document.
    InvalidJson,
    /// A jq expression failed (or `keyBy` yielded no key).
    Evaluation,
    /// A window's `timestamp` failed or gave no valid time.
    Timestamp,
    /// A window aggregate's `of` failed or gave no finite number.
    Aggregate,
}

impl RecordErrorKind {
    /// Stable snake_case name, for dead-letter headers and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordErrorKind::InvalidJson => "invalid_json",
            RecordErrorKind::Evaluation => "evaluation",
            RecordErrorKind::Timestamp => "timestamp",
            RecordErrorKind::Aggregate => "aggregate",
        }
    }
}

impl fmt::Display for RecordErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one record could not be processed; the record belongs on the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    /// The failing step as `index:name` (`"2:per-minute"`) or `index`; `None` before any step.
    pub step: Option<String>,
    /// The kind of failure.
    pub kind: RecordErrorKind,
    /// What went wrong (jaq's message for jq errors), at most a few hundred bytes.
    pub message: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(step) => write!(f, "{} error in step {step}: {}", self.kind, self.message),
            None => write!(f, "{} error: {}", self.kind, self.message),
        }
    }
}

impl std::error::Error for RecordError {}

/// `"2:per-minute"` for a named step, `"2"` for an unnamed one.
pub(crate) fn step_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{index}:{name}"),
        None => index.to_string(),
    }
}

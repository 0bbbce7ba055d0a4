//! Pipeline steps: the processing a `StreamJob` applies to each record.
//!
//! A step is one object with exactly one of `filter`, `map`, `keyBy` or `window`. The API
//! keeps that flat shape (simple structural schema, clear CEL errors); [`PipelineStep::kind`]
//! turns it into an enum for code that runs steps.

use kube::{KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One processing step. Exactly one of `filter`, `map`, `keyBy`, `window` must be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "[has(self.filter), has(self.map), has(self.keyBy), has(self.window)].filter(x, x).size() == 1"
).message("a pipeline step needs exactly one of filter, map, keyBy or window"))]
pub struct PipelineStep {
    /// Optional name of the step, used in logs, metrics and dead-letter headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,

    /// jq expression evaluated on each record; the record is kept when it yields `true`
    /// (e.g. `.type == "click"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub filter: Option<String>,

    /// jq expression replacing each record by its output (e.g. `{user: .user, n: 1}`).
    /// An expression yielding several outputs emits several records; none drops the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub map: Option<String>,

    /// jq expression computing each record's key (e.g. `.user`). Keyed state is correct
    /// only when the topic is partitioned by the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub key_by: Option<String>,

    /// Windowed aggregation per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowStep>,
}

/// The single operation a [`PipelineStep`] performs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepKind<'a> {
    /// Keep records for which the expression yields `true`.
    Filter(&'a str),
    /// Replace records by the expression's outputs.
    Map(&'a str),
    /// Set the record key to the expression's output.
    KeyBy(&'a str),
    /// Aggregate per key and window.
    Window(&'a WindowStep),
}

impl PipelineStep {
    /// The operation of this step, or `None` when not exactly one is set (the API server
    /// rejects such steps; this guards manifests that bypass it).
    pub fn kind(&self) -> Option<StepKind<'_>> {
        let kinds = [
            self.filter.as_deref().map(StepKind::Filter),
            self.map.as_deref().map(StepKind::Map),
            self.key_by.as_deref().map(StepKind::KeyBy),
            self.window.as_ref().map(StepKind::Window),
        ];
        let mut set = kinds.into_iter().flatten();
        match (set.next(), set.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }
}

/// A tumbling (no `slide`) or sliding window with aggregates, per key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.size) > duration('0s')")
        .message("window size must be positive"),
    validation = Rule::new("!has(self.slide) || (duration(self.slide) > duration('0s') && duration(self.slide) <= duration(self.size))")
        .message("window slide must be positive and at most the window size"),
)]
pub struct WindowStep {
    /// Length of each window, as a Go duration (`1m`, `30s`).
    pub size: Duration,

    /// Distance between the starts of consecutive windows. Without it windows are
    /// tumbling (`slide` = `size`); with it they slide and overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<Duration>,

    /// jq expression giving the record's event time, as epoch milliseconds or an RFC 3339
    /// string. Without it, windows use processing time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub timestamp: Option<String>,

    /// How far event time may run behind the highest timestamp seen in a partition: the
    /// watermark is that highest timestamp minus this bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_out_of_orderness: Option<Duration>,

    /// How long after the watermark passes a window's end records for it are still
    /// accepted (each late record re-emits the updated result). Later records are dropped
    /// and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<Duration>,

    /// Aggregates computed per key and window; each becomes a field of the result.
    #[schemars(length(min = 1, max = 16))]
    pub aggregates: Vec<Aggregate>,
}

/// One aggregate of a window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.function == 'count' || has(self.of)")
    .message("aggregates other than count need 'of', the jq expression to aggregate"))]
pub struct Aggregate {
    /// Field name of the aggregate in the result.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,

    /// Aggregate function.
    pub function: AggregateFunction,

    /// jq expression giving the number to aggregate (not used by `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub of: Option<String>,
}

/// Aggregate functions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AggregateFunction {
    /// Number of records.
    Count,
    /// Sum of `of`.
    Sum,
    /// Smallest `of`.
    Min,
    /// Largest `of`.
    Max,
    /// Mean of `of`.
    Avg,
}

/// What the saved state of `steps` looks like: per window step, its size, slide, time
/// domain and aggregates. Two pipelines with the same layout read each other's window state
/// (filters, maps, keys, timestamps and lateness may differ); different layouts do not.
pub fn state_layout(steps: &[PipelineStep]) -> String {
    steps
        .iter()
        .filter_map(|step| step.window.as_ref())
        .map(|window| {
            let aggregates: Vec<String> = window
                .aggregates
                .iter()
                .map(|a| format!("{}:{:?}", a.name, a.function))
                .collect();
            format!(
                "{:?}/{:?}/{}/{}",
                std::time::Duration::from(window.size),
                window.slide.map(std::time::Duration::from),
                if window.timestamp.is_some() {
                    "event"
                } else {
                    "processing"
                },
                aggregates.join(",")
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

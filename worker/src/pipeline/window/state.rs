//! The state of a window step in one partition, and how checkpoints hold it (pure; no I/O):
//! accumulators per window start and key, and the time progress.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use streamjob_api::AggregateFunction;

use super::super::value::{Value, compare};

/// A number as aggregates hold it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub(super) fn add(self, other: Number) -> Number {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a
                .checked_add(b)
                .map_or(Number::Float(a as f64 + b as f64), Number::Int),
            (a, b) => Number::Float(a.as_f64() + b.as_f64()),
        }
    }

    pub(super) fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }

    pub(super) fn to_value(self) -> Value<'static> {
        match self {
            Number::Int(i) => Value::Int(i),
            Number::Float(f) => Value::Float(f),
        }
    }

    /// jq's order on numbers.
    fn cmp_jq(self, other: Number) -> Ordering {
        compare(&self.to_value(), &other.to_value())
    }
}

/// The running aggregate of one window and key, per aggregate of the step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum Accumulator {
    Count(u64),
    Sum(Number),
    Min(Number),
    Max(Number),
    Avg { sum: Number, count: u64 },
}

impl Accumulator {
    pub(super) fn new(function: AggregateFunction, x: Number) -> Self {
        match function {
            AggregateFunction::Count => Accumulator::Count(1),
            AggregateFunction::Sum => Accumulator::Sum(x),
            AggregateFunction::Min => Accumulator::Min(x),
            AggregateFunction::Max => Accumulator::Max(x),
            AggregateFunction::Avg => Accumulator::Avg { sum: x, count: 1 },
        }
    }

    pub(super) fn function(&self) -> AggregateFunction {
        match self {
            Accumulator::Count(_) => AggregateFunction::Count,
            Accumulator::Sum(_) => AggregateFunction::Sum,
            Accumulator::Min(_) => AggregateFunction::Min,
            Accumulator::Max(_) => AggregateFunction::Max,
            Accumulator::Avg { .. } => AggregateFunction::Avg,
        }
    }

    pub(super) fn add(&mut self, x: Number) {
        match self {
            Accumulator::Count(n) => *n = n.saturating_add(1),
            Accumulator::Sum(s) => *s = s.add(x),
            Accumulator::Min(m) => {
                if x.cmp_jq(*m).is_lt() {
                    *m = x;
                }
            }
            Accumulator::Max(m) => {
                if x.cmp_jq(*m).is_gt() {
                    *m = x;
                }
            }
            Accumulator::Avg { sum, count } => {
                *sum = sum.add(x);
                *count = count.saturating_add(1);
            }
        }
    }

    pub(super) fn result(&self) -> Number {
        match self {
            Accumulator::Count(n) => Number::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            Accumulator::Sum(s) | Accumulator::Min(s) | Accumulator::Max(s) => *s,
            Accumulator::Avg { sum, count } => Number::Float(sum.as_f64() / *count as f64),
        }
    }
}

/// The state of one window step in one partition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WindowState {
    /// Highest event time seen (event-time windows); the watermark derives from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) max_event_time: Option<i64>,
    /// Latest processing time windows fired at (processing-time windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) fired_until: Option<i64>,
    /// Open windows (not yet purged), by start, then key.
    #[serde(default, with = "panes_format")]
    pub(super) windows: BTreeMap<i64, Panes>,
}

/// The accumulators of one window start, per key (records without a key apart).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Panes {
    pub(super) unkeyed: Option<Vec<Accumulator>>,
    pub(super) keyed: BTreeMap<Vec<u8>, Vec<Accumulator>>,
}

impl Panes {
    /// Entries in emission order: no key first, then keys by bytes.
    pub(super) fn entries(&self) -> impl Iterator<Item = (Option<&[u8]>, &Vec<Accumulator>)> {
        let unkeyed = self.unkeyed.iter().map(|a| (None, a));
        unkeyed.chain(self.keyed.iter().map(|(k, a)| (Some(k.as_slice()), a)))
    }
}

/// Numbers in checkpoints: integers as JSON integers, floats as their shortest exact text
/// in a string, so a restore gives back exactly the same bits (JSON float parsing need not).
mod number_format {
    use serde::de::{self, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Number;

    impl Serialize for Number {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self {
                Number::Int(i) => serializer.serialize_i64(*i),
                Number::Float(f) => serializer.serialize_str(&format!("{f:?}")),
            }
        }
    }

    impl<'de> Deserialize<'de> for Number {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(NumberVisitor)
        }
    }

    struct NumberVisitor;

    impl Visitor<'_> for NumberVisitor {
        type Value = Number;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer or a float in a string")
        }

        fn visit_i64<E: de::Error>(self, i: i64) -> Result<Number, E> {
            Ok(Number::Int(i))
        }

        fn visit_u64<E: de::Error>(self, u: u64) -> Result<Number, E> {
            i64::try_from(u)
                .map(Number::Int)
                .map_err(|_| E::custom("integer out of range"))
        }

        fn visit_f64<E: de::Error>(self, f: f64) -> Result<Number, E> {
            Ok(Number::Float(f))
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Number, E> {
            s.parse().map(Number::Float).map_err(E::custom)
        }
    }
}

/// Windows in checkpoints: a list of `{start, key, accumulators}` in (start, key) order;
/// keys as strings when they are UTF-8, else as byte arrays.
mod panes_format {
    use std::collections::BTreeMap;

    use serde::de::{self, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Accumulator, Panes};

    #[derive(Serialize)]
    struct PaneRef<'a> {
        start: i64,
        key: Option<KeyRef<'a>>,
        accumulators: &'a [Accumulator],
    }

    #[derive(Deserialize)]
    struct PaneOwned {
        start: i64,
        key: Option<KeyOwned>,
        accumulators: Vec<Accumulator>,
    }

    struct KeyRef<'a>(&'a [u8]);
    struct KeyOwned(Vec<u8>);

    impl Serialize for KeyRef<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match std::str::from_utf8(self.0) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => self.0.serialize(serializer),
            }
        }
    }

    impl<'de> Deserialize<'de> for KeyOwned {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(KeyVisitor)
        }
    }

    struct KeyVisitor;

    impl<'de> Visitor<'de> for KeyVisitor {
        type Value = KeyOwned;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a key as a string or an array of bytes")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyOwned, E> {
            Ok(KeyOwned(s.as_bytes().to_vec()))
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeyOwned, A::Error> {
            let mut bytes = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            Ok(KeyOwned(bytes))
        }
    }

    pub(super) fn serialize<S: Serializer>(
        windows: &BTreeMap<i64, Panes>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let count = windows
            .values()
            .map(|p| p.keyed.len() + usize::from(p.unkeyed.is_some()))
            .sum();
        let mut seq = serializer.serialize_seq(Some(count))?;
        for (&start, panes) in windows {
            for (key, accumulators) in panes.entries() {
                seq.serialize_element(&PaneRef {
                    start,
                    key: key.map(KeyRef),
                    accumulators,
                })?;
            }
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<i64, Panes>, D::Error> {
        let mut windows: BTreeMap<i64, Panes> = BTreeMap::new();
        for pane in Vec::<PaneOwned>::deserialize(deserializer)? {
            let panes = windows.entry(pane.start).or_default();
            match pane.key {
                None => panes.unkeyed = Some(pane.accumulators),
                Some(KeyOwned(key)) => {
                    panes.keyed.insert(key, pane.accumulators);
                }
            }
        }
        Ok(windows)
    }
}

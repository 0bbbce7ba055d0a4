//! The state of a window step in one partition, and how checkpoints hold it (pure; no I/O):
//! accumulators per window start and key, and the time progress.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

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
    // Every field is always written (no `skip_serializing_if`): the binary snapshot format
    // has no field names, so it cannot tell a skipped field.
    #[serde(default)]
    pub(super) max_event_time: Option<i64>,
    /// Latest processing time windows fired at (processing-time windows).
    #[serde(default)]
    pub(super) fired_until: Option<i64>,
    /// Open windows (not yet purged), by start, then key.
    #[serde(default, with = "panes_format")]
    pub(super) windows: BTreeMap<i64, Panes>,
}

/// The accumulators of one window start, per key (records without a key apart).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Panes {
    pub(super) unkeyed: Option<Vec<Accumulator>>,
    pub(super) keyed: KeyedPanes,
}

impl Panes {
    /// Entries in emission order: no key first, then keys by bytes.
    pub(super) fn entries(&self) -> impl Iterator<Item = (Option<&[u8]>, &Vec<Accumulator>)> {
        let unkeyed = self.unkeyed.iter().map(|a| (None, a));
        unkeyed.chain(self.keyed.sorted().into_iter().map(|(k, a)| (Some(k), a)))
    }

    /// How many entries (keys, and the unkeyed one) there are.
    pub(super) fn len(&self) -> usize {
        self.keyed.len() + usize::from(self.unkeyed.is_some())
    }
}

/// How many shards the keys of one window start are split into.
const SHARDS: usize = 64;

type Shard = BTreeMap<Vec<u8>, Vec<Accumulator>>;

/// Accumulators per key, split into [`SHARDS`] shards by a hash of the key, each shared
/// copy-on-write. Cloning (what a snapshot does while the partition runs on) copies no
/// entry: it shares every shard. The running partition copies a shard only when it next
/// changes one that a snapshot still holds, so the copy of a large state is spread over the
/// records that follow instead of stopping the partition (`Arc::make_mut`).
#[derive(Clone, Debug, Default)]
pub(super) struct KeyedPanes {
    /// Empty until the first key arrives (most window starts of small jobs hold few keys).
    shards: Vec<Arc<Shard>>,
}

impl KeyedPanes {
    /// The accumulators of `key`, created empty if the key is new (the key bytes are
    /// allocated only then).
    pub(super) fn entry(&mut self, key: &[u8]) -> &mut Vec<Accumulator> {
        if self.shards.is_empty() {
            self.shards.resize_with(SHARDS, Arc::default);
        }
        let shard = Arc::make_mut(&mut self.shards[shard_of(key)]);
        if !shard.contains_key(key) {
            shard.insert(key.to_vec(), Vec::new());
        }
        shard
            .get_mut(key)
            .expect("the key was inserted just above if it was missing")
    }

    /// Builds the map from entries in any order (a later duplicate key wins); entries that
    /// arrive sorted by key, as snapshots of the first format hold them, build fastest.
    pub(super) fn from_entries(
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<Accumulator>)>,
    ) -> Self {
        let mut shards: Vec<Vec<(Vec<u8>, Vec<Accumulator>)>> = vec![Vec::new(); SHARDS];
        for (key, accumulators) in entries {
            shards[shard_of(&key)].push((key, accumulators));
        }
        if shards.iter().all(Vec::is_empty) {
            return Self::default();
        }
        Self {
            // A stable sort of each shard, then a bulk build (`BTreeMap::from_iter`).
            shards: shards
                .into_iter()
                .map(|entries| Arc::new(entries.into_iter().collect()))
                .collect(),
        }
    }

    /// Every entry, shard by shard (each shard by key): a fixed order for a given state.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], &Vec<Accumulator>)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(k, a)| (k.as_slice(), a)))
    }

    /// Every entry, ordered by key bytes.
    pub(super) fn sorted(&self) -> Vec<(&[u8], &Vec<Accumulator>)> {
        let mut entries: Vec<_> = self.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries
    }

    /// How many keys there are.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.len()).sum()
    }
}

impl PartialEq for KeyedPanes {
    fn eq(&self, other: &Self) -> bool {
        match (self.shards.is_empty(), other.shards.is_empty()) {
            (false, false) => self.shards == other.shards,
            _ => self.len() == 0 && other.len() == 0,
        }
    }
}

/// The shard of a key: FNV-1a, fixed, so that one state shards alike in every process.
fn shard_of(key: &[u8]) -> usize {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % SHARDS as u64) as usize
}

/// Numbers in checkpoints. In JSON: integers as JSON integers, floats as their shortest
/// exact text in a string, so a restore gives back exactly the same bits (JSON float parsing
/// need not). In binary formats: a tagged integer or IEEE double, exact as they are.
mod number_format {
    use serde::de::{self, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Number;

    #[derive(Serialize, Deserialize)]
    enum Exact {
        Int(i64),
        Float(f64),
    }

    impl Serialize for Number {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match (self, serializer.is_human_readable()) {
                (Number::Int(i), true) => serializer.serialize_i64(*i),
                (Number::Float(f), true) => serializer.serialize_str(&format!("{f:?}")),
                (Number::Int(i), false) => Exact::Int(*i).serialize(serializer),
                (Number::Float(f), false) => Exact::Float(*f).serialize(serializer),
            }
        }
    }

    impl<'de> Deserialize<'de> for Number {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            if deserializer.is_human_readable() {
                return deserializer.deserialize_any(NumberVisitor);
            }
            Ok(match Exact::deserialize(deserializer)? {
                Exact::Int(i) => Number::Int(i),
                Exact::Float(f) => Number::Float(f),
            })
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

/// Windows in checkpoints: a list of `{start, key, accumulators}` by start, the entry
/// without a key first, then the keys shard by shard (the first format had them by key;
/// both read back alike); keys in JSON as strings when they are UTF-8, else as byte
/// arrays; in binary formats as bytes.
mod panes_format {
    use std::collections::BTreeMap;

    use serde::de::{self, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Accumulator, KeyedPanes, Panes};

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
            if !serializer.is_human_readable() {
                return serializer.serialize_bytes(self.0);
            }
            match std::str::from_utf8(self.0) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => self.0.serialize(serializer),
            }
        }
    }

    impl<'de> Deserialize<'de> for KeyOwned {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            if deserializer.is_human_readable() {
                deserializer.deserialize_any(KeyVisitor)
            } else {
                deserializer.deserialize_byte_buf(KeyVisitor)
            }
        }
    }

    struct KeyVisitor;

    impl<'de> Visitor<'de> for KeyVisitor {
        type Value = KeyOwned;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a key as a string or bytes")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyOwned, E> {
            Ok(KeyOwned(s.as_bytes().to_vec()))
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<KeyOwned, E> {
            Ok(KeyOwned(bytes.to_vec()))
        }

        fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<KeyOwned, E> {
            Ok(KeyOwned(bytes))
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
        let count = windows.values().map(Panes::len).sum();
        let mut seq = serializer.serialize_seq(Some(count))?;
        for (&start, panes) in windows {
            let unkeyed = panes.unkeyed.iter().map(|a| (None, a));
            let keyed = panes.keyed.iter().map(|(k, a)| (Some(KeyRef(k)), a));
            for (key, accumulators) in unkeyed.chain(keyed) {
                seq.serialize_element(&PaneRef {
                    start,
                    key,
                    accumulators,
                })?;
            }
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<i64, Panes>, D::Error> {
        deserializer.deserialize_seq(PanesVisitor)
    }

    /// Reads the entries one by one into per-window lists, and builds each window's key
    /// map once at the end (no intermediate list of every entry).
    struct PanesVisitor;

    impl<'de> Visitor<'de> for PanesVisitor {
        type Value = BTreeMap<i64, Panes>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of window panes")
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            type Entries = Vec<(Vec<u8>, Vec<Accumulator>)>;
            let mut windows: BTreeMap<i64, (Option<Vec<Accumulator>>, Entries)> = BTreeMap::new();
            while let Some(pane) = seq.next_element::<PaneOwned>()? {
                let (unkeyed, keyed) = windows.entry(pane.start).or_default();
                match pane.key {
                    None => *unkeyed = Some(pane.accumulators),
                    Some(KeyOwned(key)) => keyed.push((key, pane.accumulators)),
                }
            }
            Ok(windows
                .into_iter()
                .map(|(start, (unkeyed, keyed))| {
                    let keyed = KeyedPanes::from_entries(keyed);
                    (start, Panes { unkeyed, keyed })
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(n: u64) -> Vec<Accumulator> {
        vec![Accumulator::Count(n)]
    }

    #[test]
    fn a_clone_shares_every_shard_and_a_change_copies_only_its_own() {
        let mut panes = KeyedPanes::from_entries(
            (0..10_000u64).map(|i| (format!("user-{i}").into_bytes(), count(i))),
        );
        let snapshot = panes.clone();
        let shared = |a: &KeyedPanes, b: &KeyedPanes| {
            a.shards
                .iter()
                .zip(&b.shards)
                .filter(|(x, y)| Arc::ptr_eq(x, y))
                .count()
        };
        assert_eq!(shared(&panes, &snapshot), SHARDS);

        *panes.entry(b"user-7") = count(1_000_000);
        assert_eq!(
            shared(&panes, &snapshot),
            SHARDS - 1,
            "only the changed shard was copied"
        );
        let in_snapshot = snapshot.sorted().into_iter().find(|(k, _)| *k == b"user-7");
        assert_eq!(
            in_snapshot.map(|(_, a)| a.clone()),
            Some(count(7)),
            "the snapshot is frozen"
        );
        assert_ne!(panes, snapshot);
    }

    #[test]
    fn entries_come_out_in_key_order_whatever_the_shards() {
        let keys: Vec<Vec<u8>> = (0..500u32)
            .rev()
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        let panes = Panes {
            unkeyed: Some(count(2)),
            keyed: KeyedPanes::from_entries(keys.iter().map(|k| (k.clone(), count(1)))),
        };
        let order: Vec<Option<&[u8]>> = panes.entries().map(|(k, _)| k).collect();
        let mut expected: Vec<Option<&[u8]>> = vec![None];
        let mut sorted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        sorted.sort();
        expected.extend(sorted.into_iter().map(Some));
        assert_eq!(order, expected);
        assert_eq!(panes.len(), 501);
    }
}

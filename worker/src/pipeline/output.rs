//! The records a pipeline call emits, packed into one reusable buffer (pure; no I/O).
//!
//! Most input records of a filter + map job emit one output, which the engine hands straight
//! to the producer (librdkafka copies it). Owning a key and a payload `Vec` per output cost two
//! allocations and two frees per record; here every output's key and payload are appended to
//! one byte buffer that the caller clears and reuses, so emitting allocates nothing once the
//! buffer has grown to a record's size.

use std::ops::Range;

use super::{
    value::Value,
    write::{self, NonFinite},
};

/// The outputs of one [`super::Pipeline::process`] or
/// [`super::Pipeline::on_processing_time`] call (or several, until [`Outputs::clear`]).
#[derive(Debug, Default)]
pub struct Outputs {
    bytes: Vec<u8>,
    records: Vec<Span>,
}

/// Where one output's key and payload lie in [`Outputs::bytes`].
#[derive(Clone, Debug)]
struct Span {
    key: Option<Range<usize>>,
    payload: Range<usize>,
}

/// One emitted record, borrowed from [`Outputs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output<'a> {
    /// Record key: the input key, the `keyBy` result, or the window's key.
    pub key: Option<&'a [u8]>,
    /// Compact JSON.
    pub payload: &'a [u8],
}

/// One emitted record, owned (for tests and callers that keep outputs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRecord {
    /// Record key: the input key, the `keyBy` result, or the window's key.
    pub key: Option<Vec<u8>>,
    /// Compact JSON.
    pub payload: Vec<u8>,
}

impl Outputs {
    /// Forgets every output, keeping the memory for the next ones.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }

    /// Number of outputs.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The outputs in emission order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Output<'_>> {
        self.records.iter().map(|span| Output {
            key: span.key.clone().and_then(|k| self.bytes.get(k)),
            payload: self.bytes.get(span.payload.clone()).unwrap_or_default(),
        })
    }

    /// The outputs as owned records.
    pub fn to_records(&self) -> Vec<OutputRecord> {
        self.iter()
            .map(|o| OutputRecord {
                key: o.key.map(<[u8]>::to_vec),
                payload: o.payload.to_vec(),
            })
            .collect()
    }

    /// Appends an owned record (e.g. one kept from an earlier call).
    pub fn push_record(&mut self, record: &OutputRecord) {
        let key = record.key.as_deref().map(|key| self.append(key));
        let payload = self.append(&record.payload);
        self.records.push(Span { key, payload });
    }

    /// Appends `value` as compact JSON under `key`.
    pub(super) fn push_value(&mut self, key: Option<&[u8]>, value: &Value<'_>) {
        let key = key.map(|key| self.append(key));
        let start = self.bytes.len();
        write::write_value(&mut self.bytes, value, NonFinite::Json);
        self.records.push(Span {
            key,
            payload: start..self.bytes.len(),
        });
    }

    /// Appends an output whose payload `write` appends, if it returns true; otherwise drops
    /// whatever it appended.
    pub(super) fn push_with(
        &mut self,
        key: Option<&[u8]>,
        write: impl FnOnce(&mut Vec<u8>) -> bool,
    ) {
        let start = self.bytes.len();
        let key = key.map(|key| self.append(key));
        let payload_start = self.bytes.len();
        if write(&mut self.bytes) {
            self.records.push(Span {
                key,
                payload: payload_start..self.bytes.len(),
            });
        } else {
            self.bytes.truncate(start);
        }
    }

    /// Drops the outputs from index `len` on (those of a record that then failed).
    pub(super) fn truncate(&mut self, len: usize) {
        if let Some(first_dropped) = self.records.get(len) {
            let start = first_dropped
                .key
                .as_ref()
                .map_or(first_dropped.payload.start, |k| k.start);
            self.bytes.truncate(start);
            self.records.truncate(len);
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::{Output, OutputRecord, Outputs};
    use crate::pipeline::value::Value;

    #[test]
    fn outputs_keep_their_keys_and_payloads_apart_and_truncate_drops_later_ones() {
        let mut out = Outputs::default();
        out.push_value(Some(b"k1"), &Value::Int(1));
        out.push_value(None, &Value::Bool(true));
        out.push_value(Some(b"k3"), &Value::Null);
        out.truncate(1);
        out.push_record(&OutputRecord {
            key: Some(b"k4".to_vec()),
            payload: b"4".to_vec(),
        });
        let expected = [
            Output {
                key: Some(b"k1"),
                payload: b"1",
            },
            Output {
                key: Some(b"k4"),
                payload: b"4",
            },
        ];
        assert_eq!(out.iter().collect::<Vec<_>>(), expected);
        out.clear();
        assert!(out.is_empty());
        assert_eq!(out.iter().count(), 0);
    }
}

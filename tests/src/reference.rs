//! An independent model of the worker's event-time tumbling windows (count and sum per key),
//! written from the pipeline reference (`docs/pipeline.md`), to compute what a job must
//! output for a generated stream.

use std::collections::BTreeMap;

/// What kind of record an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A click: counted.
    Click,
    /// A view: filtered out by the test pipeline.
    View,
    /// Not JSON: dead-lettered as `invalid_json`.
    InvalidJson,
    /// `amount` is a string: dead-lettered as `aggregate`.
    BadAmount,
}

/// One generated input record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Partition it is produced to.
    pub partition: i32,
    /// User (the key).
    pub user: String,
    /// Event time, epoch ms.
    pub ts: i64,
    /// Amount summed by the window.
    pub amount: i64,
    /// Kind.
    pub kind: EventKind,
    /// Sequence number, unique per stream.
    pub seq: u64,
}

impl Event {
    /// The record's Kafka value.
    pub fn payload(&self) -> String {
        match self.kind {
            EventKind::Click | EventKind::View => format!(
                r#"{{"user":"{}","type":"{}","ts":{},"amount":{},"seq":{}}}"#,
                self.user,
                if self.kind == EventKind::Click {
                    "click"
                } else {
                    "view"
                },
                self.ts,
                self.amount,
                self.seq
            ),
            EventKind::InvalidJson => format!(r#"{{"user":"{}","type":"click","ts":"#, self.user),
            EventKind::BadAmount => format!(
                r#"{{"user":"{}","type":"click","ts":{},"amount":"lots","seq":{}}}"#,
                self.user, self.ts, self.seq
            ),
        }
    }
}

/// The window parameters of the test job.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    /// Window size, ms.
    pub size: i64,
    /// Max out-of-orderness, ms.
    pub out_of_orderness: i64,
    /// Allowed lateness, ms.
    pub lateness: i64,
}

/// One window result.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WindowResult {
    /// Key.
    pub key: String,
    /// Window start, ms.
    pub start: i64,
    /// Number of clicks.
    pub count: i64,
    /// Sum of amounts.
    pub sum: i64,
}

/// What a job must produce for a stream.
#[derive(Debug, Default)]
pub struct Expected {
    /// Every result emission, per partition in emission order.
    pub emissions: Vec<WindowResult>,
    /// The final result per (key, window start).
    pub finals: BTreeMap<(String, i64), WindowResult>,
    /// Records dropped as too late.
    pub late_dropped: u64,
}

/// Computes the expected output for `events` (each partition's events in offset order).
pub fn expected(events: &[Event], windows: Windows) -> Expected {
    let mut out = Expected::default();
    let mut partitions: BTreeMap<i32, Vec<&Event>> = BTreeMap::new();
    for event in events {
        partitions.entry(event.partition).or_default().push(event);
    }
    for events in partitions.values() {
        let mut max_ts: Option<i64> = None;
        // (end, key) -> (count, sum, fired)
        let mut open: BTreeMap<(i64, String), (i64, i64, bool)> = BTreeMap::new();
        for event in events.iter().filter(|e| e.kind == EventKind::Click) {
            let watermark = max_ts.map(|m| m - windows.out_of_orderness);
            let start = event.ts.div_euclid(windows.size) * windows.size;
            let end = start + windows.size;
            if watermark.is_some_and(|w| w >= end + windows.lateness) {
                out.late_dropped += 1;
            } else {
                let slot = open
                    .entry((end, event.user.clone()))
                    .or_insert((0, 0, false));
                slot.0 += 1;
                slot.1 += event.amount;
                if watermark.is_some_and(|w| w >= end) {
                    slot.2 = true;
                    out.emissions.push(WindowResult {
                        key: event.user.clone(),
                        start,
                        count: slot.0,
                        sum: slot.1,
                    });
                }
            }
            max_ts = Some(max_ts.map_or(event.ts, |m| m.max(event.ts)));
            let watermark = max_ts.map_or(i64::MIN, |m| m - windows.out_of_orderness);
            for ((end, key), (count, sum, fired)) in open.iter_mut() {
                if *end <= watermark && !*fired {
                    *fired = true;
                    out.emissions.push(WindowResult {
                        key: key.clone(),
                        start: end - windows.size,
                        count: *count,
                        sum: *sum,
                    });
                }
            }
            open.retain(|(end, _), _| end + windows.lateness > watermark);
        }
    }
    for result in &out.emissions {
        out.finals
            .insert((result.key.clone(), result.start), result.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(partition: i32, user: &str, ts: i64, amount: i64) -> Event {
        Event {
            partition,
            user: user.into(),
            ts,
            amount,
            kind: EventKind::Click,
            seq: 0,
        }
    }

    #[test]
    fn model_follows_the_documented_example_semantics() {
        let w = Windows {
            size: 10,
            out_of_orderness: 0,
            lateness: 10,
        };
        let events = [
            click(0, "a", 1, 1),
            click(0, "a", 12, 1), // fires [0,10) with count 1
            click(0, "a", 5, 1),  // late but within lateness: re-emits [0,10) with count 2
            click(0, "a", 25, 1), // fires [10,20); purges [0,10)
            click(0, "a", 3, 1),  // too late: dropped
        ];
        let got = expected(&events, w);
        let starts: Vec<_> = got.emissions.iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(starts, vec![(0, 1), (0, 2), (10, 1)]);
        assert_eq!(got.late_dropped, 1);
    }
}

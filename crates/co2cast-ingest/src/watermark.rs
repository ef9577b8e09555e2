//! Per-signal event-time watermarks. Each signal (and granularity) keeps its own, so a monthly
//! release is not late against an hourly feed; late data is flagged (for re-estimation),
//! never dropped. Estimates run to the furthest watermark rather than waiting for a combined
//! one: a late value only revises the days it touches.

use crate::message::Granularity;
use chrono::{DateTime, Duration, Utc};
use co2cast_model::proxy::Signal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalWatermark {
    /// Latest period end seen for the signal.
    pub max_event_end: DateTime<Utc>,
    /// Processing time of the latest message.
    pub last_arrival: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watermarks {
    pub allowed_lateness_s: i64,
    /// Keyed `<signal>/<granularity>`: a monthly release of a signal is not late relative to
    /// the same signal's daily feed.
    pub signals: BTreeMap<String, SignalWatermark>,
}

/// Watermarks are kept per signal and granularity.
pub fn stream_key(s: Signal, g: Granularity) -> String {
    format!("{}/{}", s.as_str(), match g { Granularity::Hour => "hour", Granularity::Day => "day", Granularity::Month => "month", Granularity::Year => "year" })
}

/// How a message relates to its signal's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    OnTime,
    /// Behind the watermark by this many seconds: its days are re-estimated with a higher revision.
    Late { behind_s: i64 },
}

impl Watermarks {
    pub fn new(allowed_lateness: Duration) -> Self {
        Watermarks { allowed_lateness_s: allowed_lateness.num_seconds(), signals: BTreeMap::new() }
    }

    pub fn watermark(&self, stream: &str) -> Option<DateTime<Utc>> {
        self.signals.get(stream).map(|w| w.max_event_end - Duration::seconds(self.allowed_lateness_s))
    }

    /// Records a message of `stream` (see [`stream_key`]) whose period ends at `event_end_s`
    /// (Unix seconds; validated periods are whole seconds), arriving at `now`.
    pub fn observe(&mut self, stream: &str, event_end_s: i64, now: DateTime<Utc>) -> Arrival {
        let event_end = || crate::validate::instant(event_end_s);
        // One lookup, no key allocation on the hot path; a new stream cannot be late.
        let Some(e) = self.signals.get_mut(stream) else {
            self.signals.insert(stream.to_string(), SignalWatermark { max_event_end: event_end(), last_arrival: now });
            return Arrival::OnTime;
        };
        // In (seconds, nanoseconds): chrono's arithmetic showed in ingest profiles.
        let max = (e.max_event_end.timestamp(), e.max_event_end.timestamp_subsec_nanos());
        if (event_end_s, 0) > max {
            e.max_event_end = event_end();
        }
        if now > e.last_arrival {
            e.last_arrival = now;
        }
        let watermark = (max.0 - self.allowed_lateness_s, max.1);
        if (event_end_s, 0) < watermark {
            // Whole seconds behind, as chrono's `num_seconds` counts them (toward zero).
            let behind_ns = i128::from(watermark.0 - event_end_s) * 1_000_000_000 + i128::from(watermark.1);
            Arrival::Late { behind_s: (behind_ns / 1_000_000_000) as i64 }
        } else {
            Arrival::OnTime
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition: late when the period ends before (latest end seen − allowed lateness).
    fn by_definition(seen: &mut BTreeMap<String, DateTime<Utc>>, lateness: Duration, stream: &str, end: DateTime<Utc>) -> Arrival {
        let wm = seen.get(stream).map(|m| *m - lateness);
        let m = seen.entry(stream.to_string()).or_insert(end);
        *m = (*m).max(end);
        match wm {
            Some(w) if end < w => Arrival::Late { behind_s: (w - end).num_seconds() },
            _ => Arrival::OnTime,
        }
    }

    proptest! {
        #[test]
        fn observe_follows_the_definition(
            lateness_s in 0i64..400_000,
            events in prop::collection::vec((0usize..3, 1_500_000_000i64..1_500_900_000), 1..60),
        ) {
            let mut w = Watermarks::new(Duration::seconds(lateness_s));
            let mut seen = BTreeMap::new();
            let now = DateTime::from_timestamp(1_600_000_000, 0).unwrap();
            for (stream, s) in events {
                let stream = ["a", "b", "c"][stream];
                let end = DateTime::from_timestamp(s, 0).unwrap();
                prop_assert_eq!(w.observe(stream, s, now), by_definition(&mut seen, Duration::seconds(lateness_s), stream, end));
            }
        }
    }
}

//! Per-signal event-time watermarks with idle detection: a silent monthly series must not
//! hold back hourly ones, and late data is flagged (for re-estimation), never dropped.

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
    pub idle_timeout_s: i64,
    /// Keyed `<signal>/<granularity>`: a monthly release of a signal is not late relative to
    /// the same signal's daily feed.
    pub signals: BTreeMap<String, SignalWatermark>,
}

/// Watermarks are kept per signal and granularity.
pub fn stream_key(s: Signal, g: Granularity) -> String {
    format!("{}/{}", s.as_str(), match g { Granularity::Hour => "hour", Granularity::Day => "day", Granularity::Month => "month" })
}

/// How a message relates to its signal's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    OnTime,
    /// Behind the watermark by this many seconds: its days are re-estimated with a higher revision.
    Late { behind_s: i64 },
}

impl Watermarks {
    pub fn new(allowed_lateness: Duration, idle_timeout: Duration) -> Self {
        Watermarks { allowed_lateness_s: allowed_lateness.num_seconds(), idle_timeout_s: idle_timeout.num_seconds(), signals: BTreeMap::new() }
    }

    pub fn watermark(&self, stream: &str) -> Option<DateTime<Utc>> {
        self.signals.get(stream).map(|w| w.max_event_end - Duration::seconds(self.allowed_lateness_s))
    }

    /// Records a message of `stream` (see [`stream_key`]) whose period ends at `event_end`,
    /// arriving at `now`.
    pub fn observe(&mut self, stream: &str, event_end: DateTime<Utc>, now: DateTime<Utc>) -> Arrival {
        let wm = self.watermark(stream);
        // Look up before inserting: no key allocation on the hot path.
        let e = match self.signals.get_mut(stream) {
            Some(e) => e,
            None => self.signals.entry(stream.to_string()).or_insert(SignalWatermark { max_event_end: event_end, last_arrival: now }),
        };
        e.max_event_end = e.max_event_end.max(event_end);
        e.last_arrival = e.last_arrival.max(now);
        match wm {
            Some(w) if event_end < w => Arrival::Late { behind_s: (w - event_end).num_seconds() },
            _ => Arrival::OnTime,
        }
    }

    pub fn is_idle(&self, stream: &str, now: DateTime<Utc>) -> bool {
        self.signals.get(stream).is_none_or(|w| (now - w.last_arrival).num_seconds() > self.idle_timeout_s)
    }

    /// The combined watermark: the minimum over signals that are not idle (the maximum of
    /// all signals when every signal is idle). `None` before any message.
    pub fn combined(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let active: Vec<DateTime<Utc>> = self
            .signals
            .keys()
            .filter(|s| !self.is_idle(s, now))
            .filter_map(|s| self.watermark(s))
            .collect();
        if active.is_empty() {
            self.signals.keys().filter_map(|s| self.watermark(s)).max()
        } else {
            active.into_iter().min()
        }
    }
}

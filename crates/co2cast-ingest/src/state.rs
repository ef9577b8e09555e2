//! Keyed latest-value state: one entry per (signal, scope, granularity, period, ytd). A
//! duplicate or a replayed message changes nothing; a higher revision (or, at equal revision,
//! a later `observed_at`) replaces the earlier value.

use crate::message::Granularity;
use crate::validate::ValidProxy;
use chrono::{DateTime, NaiveDate, Timelike, Utc};
use co2cast_model::calendar::{DayFactorTable, HolidayCalendar, days_in_month, shanghai};
use co2cast_model::domain::Sector;
use co2cast_model::proxy::{ProxyPanel, Scope, Signal};
use co2cast_model::series::{YearMonth, months_from_ytd};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateKey {
    pub signal: Signal,
    pub scope: Scope,
    pub granularity: Granularity,
    /// Period start, Unix seconds.
    pub period_start: i64,
    pub ytd: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateEntry {
    pub value: f64,
    pub revision: u32,
    pub observed_at: Option<i64>,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Upsert {
    Inserted,
    Revised { previous: f64 },
    /// Same value at the same or an older version: nothing changes.
    Duplicate,
    /// An older revision than the one held: ignored (but counted).
    Stale,
}

impl Upsert {
    pub fn changed(self) -> bool {
        matches!(self, Upsert::Inserted | Upsert::Revised { .. })
    }
}

/// Multiply-rotate hashing (as in rustc's FxHasher) for the small fixed-size state keys: no
/// untrusted keys reach it unvalidated, and SipHash was a visible share of ingest time.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type StateMap = HashMap<StateKey, StateEntry, std::hash::BuildHasherDefault<KeyHasher>>;

/// A hash map on the hot path; serialised sorted, so checkpoints are deterministic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyState {
    #[serde(with = "entries")]
    entries: StateMap,
}

mod entries {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &StateMap, s: S) -> Result<S::Ok, S::Error> {
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StateMap, D::Error> {
        Ok(Vec::<(StateKey, StateEntry)>::deserialize(d)?.into_iter().collect())
    }
}

pub fn key_of(v: &ValidProxy) -> StateKey {
    StateKey { signal: v.signal, scope: v.scope, granularity: v.granularity, period_start: v.period_start.timestamp(), ytd: v.ytd }
}

impl ProxyState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, k: &StateKey) -> Option<&StateEntry> {
        self.entries.get(k)
    }

    pub fn upsert(&mut self, v: &ValidProxy) -> Upsert {
        let key = key_of(v);
        let new = StateEntry { value: v.value, revision: v.revision, observed_at: v.observed_at.map(|t| t.timestamp()) };
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(key, new);
                Upsert::Inserted
            }
            Some(old) => {
                let newer = (new.revision, new.observed_at) > (old.revision, old.observed_at);
                let same_version = (new.revision, new.observed_at) == (old.revision, old.observed_at);
                if new.value == old.value && (same_version || !newer) {
                    Upsert::Duplicate
                } else if newer || same_version {
                    // At the same version the later arrival wins: Kafka keeps per-key order.
                    let previous = old.value;
                    *old = new;
                    Upsert::Revised { previous }
                } else {
                    Upsert::Stale
                }
            }
        }
    }

    /// Month in Asia/Shanghai of a key's period start.
    pub fn month_of(k: &StateKey) -> YearMonth {
        YearMonth::of(local_date(k.period_start))
    }

    /// The state as a proxy panel for the estimator: monthly messages as they are; YTD
    /// messages differenced (Jan–Feb releases split by activity days); complete days of
    /// hourly data and complete months of daily data summed up.
    pub fn to_panel(&self) -> ProxyPanel {
        let mut panel = ProxyPanel::new();
        let mut ytd: BTreeMap<(Signal, Scope), Vec<(YearMonth, f64)>> = BTreeMap::new();
        let mut hours: BTreeMap<(Signal, Scope, NaiveDate), (u32, f64)> = BTreeMap::new();
        let mut explicit_days: BTreeMap<(Signal, Scope, NaiveDate), f64> = BTreeMap::new();
        // Sorted, so that sums are taken in one order whatever the arrival order was.
        let mut sorted: Vec<(&StateKey, &StateEntry)> = self.entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (k, e) in sorted {
            match (k.granularity, k.ytd) {
                (Granularity::Month, true) => ytd.entry((k.signal, k.scope)).or_default().push((Self::month_of(k), e.value)),
                (Granularity::Month, false) => panel.set_monthly(k.signal, k.scope, Self::month_of(k), e.value),
                (Granularity::Day, _) => {
                    explicit_days.insert((k.signal, k.scope, local_date(k.period_start)), e.value);
                }
                (Granularity::Hour, _) => {
                    let h = hours.entry((k.signal, k.scope, local_date(k.period_start))).or_insert((0, 0.0));
                    h.0 += 1;
                    h.1 += e.value;
                }
            }
        }
        let cal = HolidayCalendar::official();
        let f = DayFactorTable::bundled();
        let weight = |d| f.factor(Sector::Industry, &cal, d);
        for ((s, scope), pts) in ytd {
            if let Ok(months) = months_from_ytd(&pts, &weight) {
                for m in months {
                    if panel.monthly(s, scope, m.month).is_none() {
                        panel.set_monthly(s, scope, m.month, m.value);
                    }
                }
            }
        }
        // Days: explicit daily values win over summed hours; only complete hour sets count.
        let mut days = explicit_days;
        for ((s, scope, d), (n, sum)) in hours {
            if n == 24 {
                days.entry((s, scope, d)).or_insert(sum);
            }
        }
        let mut month_sums: BTreeMap<(Signal, Scope, YearMonth), (u32, f64)> = BTreeMap::new();
        for ((s, scope, d), v) in &days {
            panel.set_daily(*s, *scope, *d, *v);
            let m = month_sums.entry((*s, *scope, YearMonth::of(*d))).or_insert((0, 0.0));
            m.0 += 1;
            m.1 += v;
        }
        for ((s, scope, m), (n, sum)) in month_sums {
            if n == days_in_month(m.year, m.month) && panel.monthly(s, scope, m).is_none() {
                panel.set_monthly(s, scope, m, sum);
            }
        }
        panel
    }
}

pub fn local_date(unix: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp(unix, 0).expect("valid timestamp").with_timezone(&shanghai()).date_naive()
}

/// Hour of day in Asia/Shanghai.
pub fn local_hour(unix: i64) -> u32 {
    DateTime::<Utc>::from_timestamp(unix, 0).expect("valid timestamp").with_timezone(&shanghai()).hour()
}

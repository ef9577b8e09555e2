//! Keyed latest-value state: one entry per (signal, scope, granularity, period, ytd). A
//! duplicate or a replayed message changes nothing; a higher revision (or, at equal revision,
//! a later `observed_at`) replaces the earlier value.

use crate::message::Granularity;
use crate::validate::ValidProxy;
use chrono::{DateTime, NaiveDate, Timelike, Utc};
use co2cast_model::calendar::civil::shanghai_offset_s;
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

type KeyHashBuilder = std::hash::BuildHasherDefault<KeyHasher>;
type StateMap = HashMap<StateKey, Option<StateEntry>, KeyHashBuilder>;

/// Periods per dense block (4,096 hours is about 171 days).
const BLOCK: i64 = 4096;

/// One series (signal, scope, granularity, YTD flag) in one block of periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BlockKey {
    signal: Signal,
    scope: Scope,
    granularity: Granularity,
    ytd: bool,
    block: i64,
}

/// Length of a period in seconds, for the granularities stored densely.
fn dense_step_s(g: Granularity) -> Option<i64> {
    match g {
        Granularity::Hour => Some(3600),
        Granularity::Day => Some(86_400),
        Granularity::Month | Granularity::Year => None,
    }
}

/// Where an hourly or daily key lives: its block and slot. Periods are counted from an
/// Asia/Shanghai midnight, so hours and local days are whole steps; months (uneven) and
/// anything off the grid have no slot.
fn slot_of(k: &StateKey) -> Option<(BlockKey, usize)> {
    let step = dense_step_s(k.granularity)?;
    let local = k.period_start + shanghai_offset_s();
    if local.rem_euclid(step) != 0 {
        return None;
    }
    let n = local.div_euclid(step);
    let key = BlockKey { signal: k.signal, scope: k.scope, granularity: k.granularity, ytd: k.ytd, block: n.div_euclid(BLOCK) };
    Some((key, n.rem_euclid(BLOCK) as usize))
}

/// Keyed latest values. Hourly and daily series are stored densely, consecutive periods of a
/// series side by side: with millions of hourly values a hash table cost a cache miss per
/// message and page faults while it grew (a quarter of the ingest thread in profiles).
/// Monthly values sit in a map. Serialised as one sorted list, so checkpoints are
/// deterministic and do not depend on the layout.
#[derive(Debug, Clone, Default)]
pub struct ProxyState {
    blocks: HashMap<BlockKey, Box<[Option<StateEntry>]>, KeyHashBuilder>,
    sparse: StateMap,
    len: usize,
}

impl PartialEq for ProxyState {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.sorted() == other.sorted()
    }
}

impl Serialize for ProxyState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Stored<'a> {
            entries: Vec<(&'a StateKey, &'a StateEntry)>,
        }
        let sorted = self.sorted();
        Stored { entries: sorted.iter().map(|(k, e)| (k, *e)).collect() }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ProxyState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Stored {
            entries: Vec<(StateKey, StateEntry)>,
        }
        let mut state = ProxyState::new();
        for (k, e) in Stored::deserialize(d)?.entries {
            *state.slot_mut(k) = Some(e);
        }
        state.len = state.iter().count();
        Ok(state)
    }
}

pub fn key_of(v: &ValidProxy) -> StateKey {
    StateKey { signal: v.signal, scope: v.scope, granularity: v.granularity, period_start: v.period_start_s, ytd: v.ytd }
}

impl ProxyState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, k: &StateKey) -> Option<&StateEntry> {
        match slot_of(k) {
            Some((b, i)) => self.blocks.get(&b).and_then(|block| block[i].as_ref()),
            None => self.sparse.get(k).and_then(Option::as_ref),
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (StateKey, &StateEntry)> {
        let dense = self.blocks.iter().flat_map(|(b, block)| {
            let step = dense_step_s(b.granularity).expect("only hourly and daily series have blocks");
            block.iter().enumerate().filter_map(move |(i, e)| {
                let local = (b.block * BLOCK + i as i64) * step;
                let k = StateKey {
                    signal: b.signal,
                    scope: b.scope,
                    granularity: b.granularity,
                    period_start: local - shanghai_offset_s(),
                    ytd: b.ytd,
                };
                e.as_ref().map(|e| (k, e))
            })
        });
        dense.chain(self.sparse.iter().filter_map(|(k, e)| e.as_ref().map(|e| (*k, e))))
    }

    fn sorted(&self) -> Vec<(StateKey, &StateEntry)> {
        let mut v: Vec<_> = self.iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The slot of `k`, created empty if needed (callers fill it).
    fn slot_mut(&mut self, k: StateKey) -> &mut Option<StateEntry> {
        match slot_of(&k) {
            Some((b, i)) => &mut self.blocks.entry(b).or_insert_with(|| vec![None; BLOCK as usize].into_boxed_slice())[i],
            None => self.sparse.entry(k).or_insert(None),
        }
    }

    pub fn upsert(&mut self, v: &ValidProxy) -> Upsert {
        let new = StateEntry { value: v.value, revision: v.revision, observed_at: v.observed_at.map(|t| t.timestamp()) };
        let slot = self.slot_mut(key_of(v));
        let up = match slot {
            None => {
                *slot = Some(new);
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
        };
        if up == Upsert::Inserted {
            self.len += 1;
        }
        up
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
        for (k, e) in self.sorted() {
            let k = &k;
            match (k.granularity, k.ytd) {
                (Granularity::Month, true) => ytd.entry((k.signal, k.scope)).or_default().push((Self::month_of(k), e.value)),
                (Granularity::Month, false) => panel.set_monthly(k.signal, k.scope, Self::month_of(k), e.value),
                // An annual level is every month's level of its year.
                (Granularity::Year, _) => {
                    let y = Self::month_of(k).year;
                    for m in 1..=12 {
                        panel.set_monthly(k.signal, k.scope, YearMonth::new(y, m), e.value);
                    }
                }
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
        // Year-to-date series, differenced; a combined January-February release is split by a
        // daily series of the same signal and province when one covers both months, and by
        // the province's calendar (holidays, make-up days, suspensions of work) otherwise.
        let cal = HolidayCalendar::official();
        let f = DayFactorTable::bundled();
        for ((s, scope), pts) in ytd {
            let daily_years: std::collections::BTreeSet<i32> = pts
                .iter()
                .map(|(m, _)| m.year)
                .filter(|y| (1..=2).all(|mo| co2cast_model::calendar::days_of_month(*y, mo).all(|d| panel.daily(s, scope, d).is_some_and(|v| v > 0.0))))
                .collect();
            let weight = |d: NaiveDate| {
                if daily_years.contains(&chrono::Datelike::year(&d))
                    && let Some(v) = panel.daily(s, scope, d)
                {
                    return v;
                }
                match scope {
                    Scope::Province(p) => f.factor_in(Sector::Industry, &cal, p, d),
                    Scope::National => f.factor(Sector::Industry, &cal, d),
                }
            };
            if let Ok(months) = months_from_ytd(&pts, &weight) {
                for m in months {
                    if panel.monthly(s, scope, m.month).is_none() {
                        panel.set_monthly(s, scope, m.month, m.value);
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use co2cast_model::domain::Province;
    use proptest::prelude::*;

    /// The rule by definition, on a plain ordered map.
    fn reference(m: &mut BTreeMap<StateKey, StateEntry>, k: StateKey, new: StateEntry) -> Upsert {
        match m.get_mut(&k) {
            None => {
                m.insert(k, new);
                Upsert::Inserted
            }
            Some(old) => {
                let (n, o) = ((new.revision, new.observed_at), (old.revision, old.observed_at));
                if new.value == old.value && n <= o {
                    Upsert::Duplicate
                } else if n >= o {
                    let previous = old.value;
                    *old = new;
                    Upsert::Revised { previous }
                } else {
                    Upsert::Stale
                }
            }
        }
    }

    fn proxy() -> impl Strategy<Value = ValidProxy> {
        let g = prop::sample::select(vec![Granularity::Hour, Granularity::Day, Granularity::Month]);
        // Starts on and off the local hour/day grid, across block boundaries and before 1970.
        let start = prop_oneof![
            (-20i64..20).prop_map(|h| 1_546_272_000 + h * 3600),
            (-3i64..3).prop_map(|d| 1_546_272_000 + (BLOCK * 3600) * 3 + d * 86_400 - 28_800),
            (-100_000i64..100_000).prop_map(|s| s * 1800),
            any::<i32>().prop_map(i64::from),
        ];
        (0usize..3, prop::option::of(0usize..3), g, start, any::<bool>(), 0u32..3, prop::option::of(0i64..3), 0u8..3).prop_map(
            |(sig, prov, granularity, start, ytd, revision, observed, value)| ValidProxy {
                signal: Signal::ALL[sig],
                scope: prov.map_or(Scope::National, |p| Scope::Province(Province::ALL[p])),
                granularity,
                period_start_s: start,
                value: f64::from(value),
                ytd,
                source: "test".into(),
                revision,
                observed_at: observed.map(|o| DateTime::from_timestamp(o, 0).unwrap()),
                corrections: vec![],
            },
        )
    }

    proptest! {
        /// The dense layout behaves exactly as a map keyed by period: same verdicts, same
        /// contents, same checkpoint after a round trip.
        #[test]
        fn dense_state_equals_a_keyed_map(ops in prop::collection::vec(proxy(), 1..120)) {
            let mut state = ProxyState::new();
            let mut model = BTreeMap::new();
            for v in &ops {
                let new = StateEntry { value: v.value, revision: v.revision, observed_at: v.observed_at.map(|t| t.timestamp()) };
                prop_assert_eq!(state.upsert(v), reference(&mut model, key_of(v), new));
                prop_assert_eq!(state.get(&key_of(v)), model.get(&key_of(v)));
            }
            prop_assert_eq!(state.len(), model.len());
            let ours: Vec<(StateKey, StateEntry)> = state.sorted().into_iter().map(|(k, e)| (k, e.clone())).collect();
            let theirs: Vec<(StateKey, StateEntry)> = model.into_iter().collect();
            prop_assert_eq!(&ours, &theirs);
            let json = serde_json::to_string(&state).unwrap();
            let back: ProxyState = serde_json::from_str(&json).unwrap();
            prop_assert!(back == state);
            prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
        }
    }
}

//! China's working calendar and per-sector daily activity factors.
//!
//! Days are Asia/Shanghai days. China has kept UTC+08:00 without daylight saving since 1992,
//! so a fixed offset is exact for every date co2cast handles.

pub mod civil;
mod factors;

pub use factors::{DayFactorTable, SectorDayFactors};

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, TimeZone, Utc, Weekday};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Asia/Shanghai as a fixed offset (no DST since 1992).
pub fn shanghai() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

/// The Asia/Shanghai calendar day an instant falls in.
pub fn shanghai_day<Tz: TimeZone>(t: &DateTime<Tz>) -> NaiveDate {
    t.with_timezone(&shanghai()).date_naive()
}

/// Start of an Asia/Shanghai day as a UTC instant.
pub fn day_start_utc(d: NaiveDate) -> DateTime<Utc> {
    shanghai()
        .from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
        .single()
        .expect("fixed offsets are unambiguous")
        .with_timezone(&Utc)
}

pub fn days_in_month(year: i32, month: u32) -> u32 {
    assert!((1..=12).contains(&month), "valid month");
    civil::month_length(i64::from(year), i64::from(month)) as u32
}

pub fn days_of_month(year: i32, month: u32) -> impl Iterator<Item = NaiveDate> {
    let first = NaiveDate::from_ymd_opt(year, month, 1).expect("valid month");
    (0..days_in_month(year, month)).map(move |i| first + Duration::days(i as i64))
}

pub fn days_of_year(year: i32) -> impl Iterator<Item = NaiveDate> {
    (1..=12).flat_map(move |m| days_of_month(year, m))
}

/// What kind of day a date is for working purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DayKind {
    Workday,
    Weekend,
    /// Statutory day off, including weekend days inside a holiday block.
    Holiday,
    /// A Saturday or Sunday made a working day (调休).
    MakeupWorkday,
}

impl DayKind {
    pub fn is_working(self) -> bool {
        matches!(self, DayKind::Workday | DayKind::MakeupWorkday)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarEntry {
    pub kind: DayKind,
    pub festival: String,
    pub notice: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error("calendar table line {line}: {msg}")]
    Parse { line: usize, msg: String },
    #[error("calendar table: {0} is listed twice")]
    Duplicate(NaiveDate),
}

/// Versioned table of statutory holidays and make-up working days, with provincial
/// suspensions of work beyond it (2020's epidemic closures).
#[derive(Debug, Clone)]
pub struct HolidayCalendar {
    pub version: &'static str,
    pub source: &'static str,
    entries: BTreeMap<NaiveDate, CalendarEntry>,
    suspensions: Vec<Suspension>,
}

/// Non-essential enterprises of a province closed from `from` to `to` (inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    pub province: crate::domain::Province,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub source: String,
}

/// Days over which activity returns to normal after a suspension ends (an assumption: staggered
/// returns of migrant workers, permits to reopen; see docs/model.md).
pub const RECOVERY_DAYS: i64 = 28;

/// How a province's work stood on a day, beyond the statutory calendar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WorkState {
    Normal,
    Suspended,
    /// Days since work resumed over [`RECOVERY_DAYS`], in (0, 1).
    Recovering(f64),
}

const HOLIDAYS_CSV: &str = include_str!("../../data/cn_public_holidays.csv");
const SUSPENSIONS_CSV: &str = include_str!("../../data/cn_work_suspensions.csv");
/// Version of the suspension table.
pub const SUSPENSIONS_VERSION: &str = "2020.1";

fn parse_suspensions(csv_text: &str) -> Result<Vec<Suspension>, CalendarError> {
    let mut out = Vec::new();
    let mut header_seen = false;
    for (i, raw) in csv_text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !header_seen {
            header_seen = true;
            continue;
        }
        let err = |msg: String| CalendarError::Parse { line: i + 1, msg };
        let parts: Vec<&str> = line.splitn(4, ',').collect();
        if parts.len() != 4 {
            return Err(err("expected province,from,to,source".into()));
        }
        let province = crate::domain::Province::from_iso(parts[0]).ok_or_else(|| err(format!("unknown province `{}`", parts[0])))?;
        let date = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| err(format!("bad date `{s}`: {e}")));
        let (from, to) = (date(parts[1])?, date(parts[2])?);
        if to < from || parts[3].trim().is_empty() {
            return Err(err("a suspension needs from <= to and a source".into()));
        }
        out.push(Suspension { province, from, to, source: parts[3].to_string() });
    }
    Ok(out)
}

/// Lunar new year's day (正月初一), 2010–2030.
const LUNAR_NEW_YEAR: [(i32, u32, u32); 21] = [
    (2010, 2, 14),
    (2011, 2, 3),
    (2012, 1, 23),
    (2013, 2, 10),
    (2014, 1, 31),
    (2015, 2, 19),
    (2016, 2, 8),
    (2017, 1, 28),
    (2018, 2, 16),
    (2019, 2, 5),
    (2020, 1, 25),
    (2021, 2, 12),
    (2022, 2, 1),
    (2023, 1, 22),
    (2024, 2, 10),
    (2025, 1, 29),
    (2026, 2, 17),
    (2027, 2, 6),
    (2028, 1, 26),
    (2029, 2, 13),
    (2030, 2, 3),
];

impl HolidayCalendar {
    /// The bundled table (State Council notices 2015–2026).
    pub fn official() -> HolidayCalendar {
        let mut cal = Self::parse(HOLIDAYS_CSV, "2026.1", "State Council General Office annual holiday notices")
            .expect("bundled holiday table is valid (checked by tests)");
        cal.suspensions = parse_suspensions(SUSPENSIONS_CSV).expect("bundled suspension table is valid (checked by tests)");
        cal
    }

    /// Provincial suspensions of work, as listed in the bundled table.
    pub fn suspensions(&self) -> &[Suspension] {
        &self.suspensions
    }

    /// Whether work in province `p` on `d` was suspended, recovering, or normal.
    pub fn work_state(&self, p: crate::domain::Province, d: NaiveDate) -> WorkState {
        for s in self.suspensions.iter().filter(|s| s.province == p) {
            if d >= s.from && d <= s.to {
                return WorkState::Suspended;
            }
            let since = (d - s.to).num_days();
            if since > 0 && since < RECOVERY_DAYS {
                return WorkState::Recovering(since as f64 / RECOVERY_DAYS as f64);
            }
        }
        WorkState::Normal
    }

    pub fn parse(csv_text: &str, version: &'static str, source: &'static str) -> Result<Self, CalendarError> {
        let mut entries = BTreeMap::new();
        let mut header_seen = false;
        for (i, raw) in csv_text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !header_seen {
                header_seen = true;
                continue;
            }
            let parts: Vec<&str> = line.splitn(4, ',').collect();
            if parts.len() != 4 {
                return Err(CalendarError::Parse { line: i + 1, msg: "expected date,kind,festival,notice".into() });
            }
            let date = NaiveDate::parse_from_str(parts[0], "%Y-%m-%d")
                .map_err(|e| CalendarError::Parse { line: i + 1, msg: format!("bad date: {e}") })?;
            let kind = match parts[1] {
                "holiday" => DayKind::Holiday,
                "workday" => DayKind::MakeupWorkday,
                other => {
                    return Err(CalendarError::Parse { line: i + 1, msg: format!("bad kind `{other}`") });
                }
            };
            let entry = CalendarEntry { kind, festival: parts[2].to_string(), notice: parts[3].to_string() };
            if entries.insert(date, entry).is_some() {
                return Err(CalendarError::Duplicate(date));
            }
        }
        Ok(HolidayCalendar { version, source, entries, suspensions: Vec::new() })
    }

    pub fn covered_years(&self) -> std::ops::RangeInclusive<i32> {
        let first = self.entries.keys().next().map(|d| d.year() + 1).unwrap_or(0);
        let last = self.entries.keys().last().map(|d| d.year()).unwrap_or(0);
        // The first entry may be 31 Dec of the previous year (New Year blocks span years).
        first.min(2015)..=last
    }

    pub fn entry(&self, d: NaiveDate) -> Option<&CalendarEntry> {
        self.entries.get(&d)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&NaiveDate, &CalendarEntry)> {
        self.entries.iter()
    }

    pub fn day_kind(&self, d: NaiveDate) -> DayKind {
        if let Some(e) = self.entries.get(&d) {
            return e.kind;
        }
        match d.weekday() {
            Weekday::Sat | Weekday::Sun => DayKind::Weekend,
            _ => DayKind::Workday,
        }
    }

    pub fn working_days_in_month(&self, year: i32, month: u32) -> u32 {
        days_of_month(year, month).filter(|d| self.day_kind(*d).is_working()).count() as u32
    }
}

/// Lunar new year's day for `year`, if within the table (2010–2030).
pub fn lunar_new_year(year: i32) -> Option<NaiveDate> {
    LUNAR_NEW_YEAR
        .iter()
        .find(|(y, _, _)| *y == year)
        .and_then(|(y, m, d)| NaiveDate::from_ymd_opt(*y, *m, *d))
}

/// Days from the nearest lunar new year (negative before it).
pub fn spring_festival_offset(d: NaiveDate) -> Option<i64> {
    [d.year() - 1, d.year(), d.year() + 1]
        .iter()
        .filter_map(|y| lunar_new_year(*y))
        .map(|ny| (d - ny).num_days())
        .min_by_key(|o| o.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_table_parses_and_is_consistent() {
        let cal = HolidayCalendar::official();
        // No day is both a holiday and a working day: the map holds one kind per day, and
        // make-up days must be weekends.
        for (d, e) in cal.entries() {
            if e.kind == DayKind::MakeupWorkday {
                assert!(matches!(d.weekday(), Weekday::Sat | Weekday::Sun), "{d} is a make-up day but not a weekend");
            }
        }
        assert_eq!(cal.day_kind(NaiveDate::from_ymd_opt(2019, 10, 1).unwrap()), DayKind::Holiday);
        assert_eq!(cal.day_kind(NaiveDate::from_ymd_opt(2019, 10, 12).unwrap()), DayKind::MakeupWorkday);
        assert_eq!(cal.day_kind(NaiveDate::from_ymd_opt(2019, 10, 13).unwrap()), DayKind::Weekend);
        assert_eq!(cal.day_kind(NaiveDate::from_ymd_opt(2019, 10, 14).unwrap()), DayKind::Workday);
        for y in 2015..=2026 {
            let sf = cal.entries().filter(|(d, e)| d.year() == y && e.festival == "spring_festival").count();
            assert!(sf >= 7, "{y}: Spring Festival block has {sf} days");
            let ny = lunar_new_year(y).unwrap();
            assert_eq!(cal.day_kind(ny), DayKind::Holiday, "lunar new year {ny} must be a holiday");
        }
    }

    #[test]
    fn working_day_counts_match_nbs_jan_feb_counts() {
        // NBS-style Jan/Feb working-day counts (shared/data/misc/workday_monthly.csv).
        let cal = HolidayCalendar::official();
        for (y, jan, feb) in [(2016, 20, 18), (2017, 19, 19), (2018, 22, 17), (2019, 22, 17), (2021, 20, 17), (2022, 21, 16)] {
            assert_eq!(cal.working_days_in_month(y, 1), jan, "{y}-01");
            assert_eq!(cal.working_days_in_month(y, 2), feb, "{y}-02");
        }
    }

    #[test]
    fn shanghai_days() {
        let t = DateTime::parse_from_rfc3339("2019-01-31T17:30:00Z").unwrap();
        assert_eq!(shanghai_day(&t), NaiveDate::from_ymd_opt(2019, 2, 1).unwrap());
        let s = day_start_utc(NaiveDate::from_ymd_opt(2019, 2, 1).unwrap());
        assert_eq!(s.to_rfc3339(), "2019-01-31T16:00:00+00:00");
        assert_eq!(days_in_month(2020, 2), 29);
        assert_eq!(days_of_year(2019).count(), 365);
        assert_eq!(spring_festival_offset(NaiveDate::from_ymd_opt(2019, 2, 1).unwrap()), Some(-4));
    }

    #[test]
    fn provincial_suspensions_of_2020_hold_activity_and_shift_the_january_february_split() {
        use crate::domain::{Province, Sector};
        let cal = HolidayCalendar::official();
        let d = |m, day| NaiveDate::from_ymd_opt(2020, m, day).unwrap();
        assert!(cal.suspensions().len() >= 24 && cal.suspensions().iter().all(|s| !s.source.is_empty()));
        assert_eq!(cal.work_state(Province::Guangdong, d(2, 5)), WorkState::Suspended);
        assert!(matches!(cal.work_state(Province::Guangdong, d(2, 20)), WorkState::Recovering(x) if x > 0.3 && x < 0.5));
        assert_eq!(cal.work_state(Province::Guangdong, d(4, 1)), WorkState::Normal);
        assert_eq!(cal.work_state(Province::Hubei, d(3, 1)), WorkState::Suspended);
        assert!(matches!(cal.work_state(Province::Hubei, d(3, 20)), WorkState::Recovering(_)));
        // No provincial extension found for Gansu: the national calendar alone.
        assert_eq!(cal.work_state(Province::Gansu, d(2, 5)), WorkState::Normal);
        // The combined January-February release: February's share of industrial activity
        // days is smaller in Hubei than under the statutory calendar alone, and smaller there
        // than in Guangdong.
        let f = DayFactorTable::bundled();
        let share = |p: Option<Province>| {
            let w = |m: u32| -> f64 {
                days_of_month(2020, m).map(|day| p.map_or_else(|| f.factor(Sector::Industry, &cal, day), |p| f.factor_in(Sector::Industry, &cal, p, day))).sum()
            };
            w(2) / (w(1) + w(2))
        };
        let (national, guangdong, hubei) = (share(None), share(Some(Province::Guangdong)), share(Some(Province::Hubei)));
        assert!(hubei < guangdong && guangdong < national, "{hubei} {guangdong} {national}");
        // Other years are untouched.
        let y19 = NaiveDate::from_ymd_opt(2019, 2, 20).unwrap();
        assert_eq!(f.factor_in(Sector::Industry, &cal, Province::Hubei, y19), f.factor(Sector::Industry, &cal, y19));
    }
}

//! Per-sector daily activity factors: weekday, statutory holiday, make-up working day and the
//! Spring Festival window, read from the versioned table `data/day_factors.csv`.

use super::{DayKind, HolidayCalendar, spring_festival_offset};
use crate::domain::Sector;
use chrono::{Datelike, NaiveDate};
use std::collections::BTreeMap;

const DAY_FACTORS_CSV: &str = include_str!("../../data/day_factors.csv");

/// Factors for one sector. Missing weekday entries are 1.0.
#[derive(Debug, Clone, PartialEq)]
pub struct SectorDayFactors {
    pub weekday: [f64; 7],
    pub holiday: f64,
    pub makeup_workday: f64,
    /// Sparse (offset, factor) knots, linearly interpolated; empty means no window.
    pub spring_festival: Vec<(i64, f64)>,
}

impl Default for SectorDayFactors {
    fn default() -> Self {
        SectorDayFactors { weekday: [1.0; 7], holiday: 1.0, makeup_workday: 1.0, spring_festival: Vec::new() }
    }
}

impl SectorDayFactors {
    /// Relative activity on `d` versus an ordinary working day.
    pub fn factor(&self, cal: &HolidayCalendar, d: NaiveDate) -> f64 {
        if let (Some(off), Some(first), Some(last)) =
            (spring_festival_offset(d), self.spring_festival.first(), self.spring_festival.last())
            && off >= first.0
            && off <= last.0
        {
            return interpolate(&self.spring_festival, off);
        }
        match cal.day_kind(d) {
            DayKind::Holiday => self.holiday,
            DayKind::MakeupWorkday => self.makeup_workday,
            DayKind::Workday | DayKind::Weekend => self.weekday[d.weekday().num_days_from_monday() as usize],
        }
    }
}

fn interpolate(knots: &[(i64, f64)], x: i64) -> f64 {
    for w in knots.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x >= x0 && x <= x1 {
            if x1 == x0 {
                return y0;
            }
            return y0 + (y1 - y0) * (x - x0) as f64 / (x1 - x0) as f64;
        }
    }
    knots.last().map(|k| k.1).unwrap_or(1.0)
}

#[derive(Debug, Clone)]
pub struct DayFactorTable {
    by_sector: BTreeMap<Sector, SectorDayFactors>,
}

#[derive(Debug, thiserror::Error)]
#[error("day factor table line {line}: {msg}")]
pub struct DayFactorError {
    pub line: usize,
    pub msg: String,
}

impl DayFactorTable {
    pub fn bundled() -> DayFactorTable {
        Self::parse(DAY_FACTORS_CSV).expect("bundled day-factor table is valid (checked by tests)")
    }

    pub fn parse(text: &str) -> Result<DayFactorTable, DayFactorError> {
        let mut by_sector: BTreeMap<Sector, SectorDayFactors> =
            Sector::ALL.iter().map(|s| (*s, SectorDayFactors::default())).collect();
        let mut header = true;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if header {
                header = false;
                continue;
            }
            let err = |msg: String| DayFactorError { line: i + 1, msg };
            let p: Vec<&str> = line.split(',').collect();
            if p.len() != 4 {
                return Err(err("expected sector,kind,value,source".into()));
            }
            let sector: Sector = p[0].parse().map_err(|e| err(format!("{e}")))?;
            let value: f64 = p[2].parse().map_err(|_| err(format!("bad value `{}`", p[2])))?;
            if !(0.2..=1.5).contains(&value) {
                return Err(err(format!("factor {value} outside the plausible range 0.2..1.5")));
            }
            let f = by_sector.get_mut(&sector).expect("all sectors present");
            let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
            match p[1] {
                "holiday" => f.holiday = value,
                "makeup_workday" => f.makeup_workday = value,
                k if k.starts_with("weekday_") => {
                    let idx = days.iter().position(|d| k.ends_with(d)).ok_or_else(|| err(format!("bad weekday `{k}`")))?;
                    f.weekday[idx] = value;
                }
                k if k.starts_with("sf_offset_") => {
                    let off: i64 = k["sf_offset_".len()..].parse().map_err(|_| err(format!("bad offset `{k}`")))?;
                    f.spring_festival.push((off, value));
                }
                k => return Err(err(format!("unknown kind `{k}`"))),
            }
        }
        for f in by_sector.values_mut() {
            f.spring_festival.sort_by_key(|k| k.0);
        }
        Ok(DayFactorTable { by_sector })
    }

    pub fn sector(&self, s: Sector) -> &SectorDayFactors {
        &self.by_sector[&s]
    }

    pub fn factor(&self, s: Sector, cal: &HolidayCalendar, d: NaiveDate) -> f64 {
        self.sector(s).factor(cal, d)
    }

    /// The factor in province `p`: during a provincial suspension of work activity stays at
    /// the sector's holiday level (or below, inside the Spring Festival window), and it
    /// returns to the ordinary level linearly over the recovery days after.
    pub fn factor_in(&self, s: Sector, cal: &HolidayCalendar, p: crate::domain::Province, d: NaiveDate) -> f64 {
        let f = self.sector(s);
        let base = f.factor(cal, d);
        match cal.work_state(p, d) {
            super::WorkState::Normal => base,
            super::WorkState::Suspended => base.min(f.holiday),
            super::WorkState::Recovering(x) => base * (f.holiday + (1.0 - f.holiday) * x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_factors_are_in_physical_ranges() {
        let t = DayFactorTable::bundled();
        let cal = HolidayCalendar::official();
        for s in Sector::ALL {
            for d in super::super::days_of_year(2019) {
                let f = t.factor(s, &cal, d);
                assert!((0.5..=1.2).contains(&f), "{s} {d}: {f}");
            }
        }
        // Power dips over the Spring Festival and on weekends.
        let ny = NaiveDate::from_ymd_opt(2019, 2, 5).unwrap();
        assert!(t.factor(Sector::Power, &cal, ny) < 0.85);
        let sat = NaiveDate::from_ymd_opt(2019, 6, 15).unwrap();
        let wed = NaiveDate::from_ymd_opt(2019, 6, 12).unwrap();
        assert!(t.factor(Sector::Power, &cal, sat) < t.factor(Sector::Power, &cal, wed));
        // A make-up Saturday works like a working day, not a weekend.
        let makeup = NaiveDate::from_ymd_opt(2019, 10, 12).unwrap();
        assert!(t.factor(Sector::Power, &cal, makeup) > t.factor(Sector::Power, &cal, sat));
    }

    #[test]
    fn rejects_implausible_factor() {
        let bad = "sector,kind,value,source\npower,holiday,7.0,typo\n";
        let e = DayFactorTable::parse(bad).unwrap_err();
        assert!(e.to_string().contains("outside the plausible range"), "{e}");
    }
}

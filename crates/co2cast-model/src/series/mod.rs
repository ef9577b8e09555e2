//! Time-series helpers for statistical releases: year-to-date differencing, the combined
//! January–February release, and spreading monthly totals over days.

pub mod disaggregate;

use crate::calendar::{HolidayCalendar, days_in_month, days_of_month};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct YearMonth {
    pub year: i32,
    pub month: u32,
}

impl YearMonth {
    pub fn new(year: i32, month: u32) -> YearMonth {
        assert!((1..=12).contains(&month), "month {month} out of range");
        YearMonth { year, month }
    }
    pub fn of(d: NaiveDate) -> YearMonth {
        use chrono::Datelike;
        YearMonth { year: d.year(), month: d.month() }
    }
    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("valid month")
    }
    pub fn days(self) -> u32 {
        days_in_month(self.year, self.month)
    }
    pub fn next(self) -> YearMonth {
        if self.month == 12 { YearMonth::new(self.year + 1, 1) } else { YearMonth::new(self.year, self.month + 1) }
    }
    pub fn prev(self) -> YearMonth {
        if self.month == 1 { YearMonth::new(self.year - 1, 12) } else { YearMonth::new(self.year, self.month - 1) }
    }
    /// The month `n` months later (earlier when negative).
    pub fn add_months(self, n: i32) -> YearMonth {
        let i = self.year * 12 + self.month as i32 - 1 + n;
        YearMonth { year: i.div_euclid(12), month: i.rem_euclid(12) as u32 + 1 }
    }
    /// The last day of the month.
    pub fn last_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, self.days()).expect("valid month")
    }
    /// `2019-02`.
    pub fn parse(s: &str) -> Option<YearMonth> {
        let t = s.trim();
        let (y, m) = if let Some((y, m)) = t.split_once('-') {
            (y.parse().ok()?, m.get(..2).unwrap_or(m).trim_end_matches('-').parse().ok()?)
        } else if t.len() == 6 {
            (t[..4].parse().ok()?, t[4..].parse().ok()?)
        } else {
            return None;
        };
        (1..=12).contains(&m).then_some(YearMonth { year: y, month: m })
    }
}

impl std::fmt::Display for YearMonth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// How a monthly value was obtained from the release.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum MonthlyProvenance {
    /// Published as a monthly value.
    Reported,
    /// Difference of consecutive year-to-date values.
    DifferencedFromYtd,
    /// Part of a combined January–February release, split by activity-day shares.
    JanFebSplit { share: f64 },
    /// A gap of several months in the YTD series, spread by activity-day shares.
    GapSpread { months: u32 },
    /// The YTD difference was negative (a revision); clamped to zero.
    NegativeClampedToZero { raw: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MonthlyValue {
    pub month: YearMonth,
    pub value: f64,
    pub provenance: MonthlyProvenance,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SeriesError {
    #[error("year-to-date value for {0} is not finite")]
    NotFinite(YearMonth),
    #[error("year-to-date value for {0} is negative")]
    Negative(YearMonth),
}

/// Turns year-to-date cumulative values into monthly values.
///
/// * Consecutive months are differenced.
/// * A missing January with a February YTD (the combined release) is split by `weight`
///   summed over the days of each month; `weight` is an activity-day weight, e.g. 1 for a
///   working day and 0 otherwise, or a sector's daily factor.
/// * Longer gaps are spread the same way over the missing months.
/// * Negative differences (revisions) are clamped to zero and recorded.
pub fn months_from_ytd(
    ytd: &[(YearMonth, f64)],
    weight: &dyn Fn(NaiveDate) -> f64,
) -> Result<Vec<MonthlyValue>, SeriesError> {
    let mut by_year: BTreeMap<i32, BTreeMap<u32, f64>> = BTreeMap::new();
    for (ym, v) in ytd {
        if !v.is_finite() {
            return Err(SeriesError::NotFinite(*ym));
        }
        if *v < 0.0 {
            return Err(SeriesError::Negative(*ym));
        }
        by_year.entry(ym.year).or_default().insert(ym.month, *v);
    }
    let month_weight = |ym: YearMonth| -> f64 { days_of_month(ym.year, ym.month).map(weight).sum::<f64>().max(1e-9) };
    let mut out = Vec::new();
    for (year, months) in by_year {
        let mut prev_month = 0u32;
        let mut prev_ytd = 0.0;
        for (&m, &v) in &months {
            let gap = m - prev_month;
            let diff = v - prev_ytd;
            let (value, clamped) = if diff < 0.0 { (0.0, Some(diff)) } else { (diff, None) };
            if gap == 1 {
                let provenance = match clamped {
                    Some(raw) => MonthlyProvenance::NegativeClampedToZero { raw },
                    None if m == 1 => MonthlyProvenance::Reported,
                    None => MonthlyProvenance::DifferencedFromYtd,
                };
                out.push(MonthlyValue { month: YearMonth::new(year, m), value, provenance });
            } else {
                let span: Vec<YearMonth> = (prev_month + 1..=m).map(|k| YearMonth::new(year, k)).collect();
                let weights: Vec<f64> = span.iter().map(|ym| month_weight(*ym)).collect();
                let total_w: f64 = weights.iter().sum();
                for (ym, w) in span.iter().zip(&weights) {
                    let share = w / total_w;
                    let provenance = if let Some(raw) = clamped {
                        MonthlyProvenance::NegativeClampedToZero { raw }
                    } else if prev_month == 0 && m == 2 {
                        MonthlyProvenance::JanFebSplit { share }
                    } else {
                        MonthlyProvenance::GapSpread { months: gap }
                    };
                    out.push(MonthlyValue { month: *ym, value: value * share, provenance });
                }
            }
            prev_month = m;
            prev_ytd = v;
        }
    }
    Ok(out)
}

/// Working-day weight (1 for a working day, 0 otherwise): the NBS convention for splitting
/// the combined January–February release.
pub fn working_day_weight(cal: &HolidayCalendar) -> impl Fn(NaiveDate) -> f64 + '_ {
    move |d| if cal.day_kind(d).is_working() { 1.0 } else { 0.0 }
}

/// Spreads a monthly total over its days in proportion to `weight`; the days sum to the total.
pub fn spread_over_days(month: YearMonth, total: f64, weight: &dyn Fn(NaiveDate) -> f64) -> Vec<(NaiveDate, f64)> {
    let days: Vec<NaiveDate> = days_of_month(month.year, month.month).collect();
    let w: Vec<f64> = days.iter().map(|d| weight(*d).max(0.0)).collect();
    let sum: f64 = w.iter().sum();
    days.into_iter()
        .zip(w)
        .map(|(d, wi)| (d, if sum > 0.0 { total * wi / sum } else { total / month.days() as f64 }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ym(y: i32, m: u32) -> YearMonth {
        YearMonth::new(y, m)
    }

    #[test]
    fn differencing_and_jan_feb_split() {
        let cal = HolidayCalendar::official();
        let w = working_day_weight(&cal);
        let ytd = [(ym(2019, 2), 39.0), (ym(2019, 3), 60.0), (ym(2019, 4), 80.0)];
        let m = months_from_ytd(&ytd, &w).unwrap();
        assert_eq!(m.len(), 4);
        // 2019: 22 working days in January, 17 in February.
        assert!((m[0].value - 22.0).abs() < 1e-9, "{:?}", m[0]);
        assert!((m[1].value - 17.0).abs() < 1e-9);
        assert!(matches!(m[0].provenance, MonthlyProvenance::JanFebSplit { .. }));
        assert_eq!(m[2].value, 21.0);
        assert_eq!(m[2].provenance, MonthlyProvenance::DifferencedFromYtd);
        assert_eq!(m[3].value, 20.0);
    }

    #[test]
    fn negative_difference_is_clamped_and_recorded() {
        let w = |_d: NaiveDate| 1.0;
        let m = months_from_ytd(&[(ym(2019, 1), 10.0), (ym(2019, 2), 9.0)], &w).unwrap();
        assert_eq!(m[1].value, 0.0);
        assert!(matches!(m[1].provenance, MonthlyProvenance::NegativeClampedToZero { raw } if (raw + 1.0).abs() < 1e-12));
        assert!(months_from_ytd(&[(ym(2019, 1), f64::NAN)], &w).is_err());
    }

    proptest! {
        /// Monthly values recovered from any non-decreasing YTD series, with any months
        /// missing, sum back to the last YTD value of each year and are never negative.
        #[test]
        fn ytd_round_trip(increments in proptest::collection::vec(0.0f64..1000.0, 12), keep in proptest::collection::vec(any::<bool>(), 12)) {
            let cal = HolidayCalendar::official();
            let w = working_day_weight(&cal);
            let mut acc = 0.0;
            let mut ytd = Vec::new();
            for (i, inc) in increments.iter().enumerate() {
                acc += inc;
                if keep[i] || i == 11 {
                    ytd.push((ym(2018, i as u32 + 1), acc));
                }
            }
            let m = months_from_ytd(&ytd, &w).unwrap();
            let total: f64 = m.iter().map(|x| x.value).sum();
            prop_assert!((total - acc).abs() < 1e-6 * acc.max(1.0));
            prop_assert!(m.iter().all(|x| x.value >= 0.0));
            prop_assert_eq!(m.len(), 12);
        }

        #[test]
        fn spreading_keeps_the_monthly_total(total in 0.0f64..1e6, month in 1u32..=12) {
            let cal = HolidayCalendar::official();
            let f = crate::calendar::DayFactorTable::bundled();
            let days = spread_over_days(ym(2019, month), total, &|d| f.factor(crate::domain::Sector::Power, &cal, d));
            let s: f64 = days.iter().map(|x| x.1).sum();
            prop_assert!((s - total).abs() <= 1e-9 * total.max(1.0));
        }
    }
}

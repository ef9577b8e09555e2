use super::*;
use crate::calibration::{ModelConfig, calibrate};
use crate::testkit::synthetic_world;

fn setup() -> (InventoryPanel, ProxyPanel, Calibration) {
    let (inv, px) = synthetic_world(0.8, 0.02, 3);
    let cal = calibrate(&inv, &px, 2016, 1, &ModelConfig::default()).unwrap();
    (inv, px, cal)
}

fn months(year: i32) -> Vec<YearMonth> {
    (1..=12).map(|m| YearMonth::new(year, m)).collect()
}

#[test]
fn ensemble_is_reproducible_for_a_seed_and_differs_across_seeds() {
    let (inv, px, cal) = setup();
    let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
    let est = Estimator { calibration: &cal, inventory: &inv, proxies: &px, calendar: &hc, day_factors: &df };
    let s = EnsembleSettings { members: 50, seed: 9 };
    let a = est.row(Province::Hebei, Sector::Power, &months(2018), s).unwrap();
    let b = est.row(Province::Hebei, Sector::Power, &months(2018), s).unwrap();
    assert_eq!(a.members, b.members);
    let c = est.row(Province::Hebei, Sector::Power, &months(2018), EnsembleSettings { members: 50, seed: 10 }).unwrap();
    assert_ne!(a.members, c.members);
}

#[test]
fn daily_values_aggregate_consistently() {
    let (inv, px, cal) = setup();
    let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
    let est = Estimator { calibration: &cal, inventory: &inv, proxies: &px, calendar: &hc, day_factors: &df };
    let row = est.row(Province::Jiangsu, Sector::Industry, &months(2017), EnsembleSettings { members: 40, seed: 1 }).unwrap();
    assert_eq!(row.days.len(), 365);
    // Shape noise moves days within a month but keeps each member's monthly total at the
    // member's level: the ratio month/central-month is the same for every month of a year.
    for m in &row.members {
        let jan: f64 = (0..31).map(|d| m[d]).sum::<f64>() / (0..31).map(|d| row.central[d]).sum::<f64>();
        let jul_range = 181..212;
        let jul: f64 = jul_range.clone().map(|d| m[d]).sum::<f64>() / jul_range.map(|d| row.central[d]).sum::<f64>();
        assert!((jan - jul).abs() < 1e-9, "{jan} {jul}");
    }
    // Annual member sums equal the sum of their daily values.
    let sums = row.member_sums(|_| true);
    for (m, s) in row.members.iter().zip(&sums) {
        assert!((m.iter().sum::<f64>() - s).abs() < 1e-9);
    }
    for d in row.daily_estimates(2016) {
        assert!(d.p2_5 <= d.p5 && d.p5 <= d.p50 && d.p50 <= d.p95 && d.p95 <= d.p97_5);
        assert!(d.value_mtco2 > 0.0);
    }
}

#[test]
fn shared_errors_keep_national_bands_from_shrinking_like_one_over_root_n() {
    let (inv, px, cal) = setup();
    let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
    let est = Estimator { calibration: &cal, inventory: &inv, proxies: &px, calendar: &hc, day_factors: &df };
    let rows: Vec<RowEnsemble> = Province::ALL
        .iter()
        .filter_map(|p| est.row(*p, Sector::Power, &months(2019), EnsembleSettings { members: 300, seed: 5 }))
        .collect();
    let k = rows[0].members.len();
    let national: Vec<f64> = (0..k).map(|j| rows.iter().map(|r| r.member_sums(|_| true)[j]).sum()).collect();
    let central: f64 = rows.iter().map(|r| r.central_sum(|_| true)).sum();
    let nat = Band::from_members(central, &national);
    // Root-sum-square of independent provincial half-widths: the naive, too narrow answer.
    let rss: f64 = rows
        .iter()
        .map(|r| {
            let b = Band::from_members(r.central_sum(|_| true), &r.member_sums(|_| true));
            ((b.p97_5 - b.p2_5) / 2.0).powi(2)
        })
        .sum::<f64>()
        .sqrt();
    let joint = (nat.p97_5 - nat.p2_5) / 2.0;
    assert!(joint > rss * 1.05, "joint {joint} vs independent {rss}");
}

#[test]
fn missing_months_become_nowcasts_with_wider_bands() {
    let (inv, px, cal) = setup();
    let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
    let cut = px.truncated(YearMonth::new(2018, 6));
    let est = Estimator { calibration: &cal, inventory: &inv, proxies: &cut, calendar: &hc, day_factors: &df };
    let row = est.row(Province::Hebei, Sector::Power, &months(2018), EnsembleSettings { members: 200, seed: 2 }).unwrap();
    let daily = row.daily_estimates(2016);
    let june = daily.iter().find(|d| d.date == NaiveDate::from_ymd_opt(2018, 6, 15).unwrap()).unwrap();
    let dec = daily.iter().find(|d| d.date == NaiveDate::from_ymd_opt(2018, 12, 15).unwrap()).unwrap();
    assert_eq!(june.source_type, SourceType::Proxy);
    assert_eq!(dec.source_type, SourceType::Nowcast);
    let w = |d: &DailyEstimate| (d.p97_5 - d.p2_5) / d.value_mtco2;
    assert!(w(dec) > w(june), "nowcast band {} vs observed {}", w(dec), w(june));
}

/// `years_reading` is what a streaming job re-estimates when a value changes: a changed
/// monthly value (not a series' latest month) changes no estimate of a year it does not list.
#[test]
fn a_changed_value_changes_only_the_years_that_read_it() {
    let (inv, px) = synthetic_world(0.8, 0.02, 3);
    let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
    let inv_years = inv.years();
    // As in the streaming job: the calibration comes from the bundled history, the estimate
    // from the history overlaid with what arrived.
    let estimate = |panel: &ProxyPanel, year: i32| -> Vec<f64> {
        let base = base_year_for(year, &inv_years).unwrap();
        let cal = calibrate(&inv, &px, base, (year - base) as u32, &ModelConfig::default()).unwrap();
        let base_inv = inv.up_to(base);
        let est = Estimator { calibration: &cal, inventory: &base_inv, proxies: panel, calendar: &hc, day_factors: &df };
        let row = est.row(Province::Hebei, Sector::Power, &months(year), EnsembleSettings { members: 20, seed: 1 }).unwrap();
        row.central.iter().chain(row.members.iter().flatten()).copied().collect()
    };
    for changed in [2016, 2017, 2018] {
        let mut px2 = px.clone();
        let m = YearMonth::new(changed, 6);
        let scope = crate::proxy::Scope::Province(Province::Hebei);
        px2.set_monthly(crate::proxy::Signal::ThermalGeneration, scope, m, px.monthly(crate::proxy::Signal::ThermalGeneration, scope, m).unwrap() * 1.3);
        let reading = years_reading(changed, &inv_years, 2020);
        let mut moved = Vec::new();
        for year in 2014..=2020 {
            if estimate(&px, year) != estimate(&px2, year) {
                moved.push(year);
                assert!(reading.contains(&year), "a change in {changed} moved {year}, which years_reading({changed}) = {reading:?} leaves out");
            }
        }
        assert!(moved.contains(&changed), "the changed year itself moved: {moved:?}");
    }
}

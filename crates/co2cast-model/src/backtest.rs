//! Backtest: calibrate on inventory year Y only, estimate year T from proxies, and score the
//! annual province × sector values and bands against the year-T inventory.

use crate::calendar::{DayFactorTable, HolidayCalendar};
use crate::calibration::robust::{median, quantile};
use crate::calibration::{Calibration, CalibrationError, ModelConfig, calibrate};
use crate::domain::{Province, Sector};
use crate::estimate::{Band, EnsembleSettings, Estimator, MODEL_VERSION, SourceType};
use crate::inventory::InventoryPanel;
use crate::proxy::ProxyPanel;
use crate::series::YearMonth;
use chrono::Datelike;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacktestRow {
    pub province: Province,
    /// `None` is the provincial total over all sectors.
    pub sector: Option<Sector>,
    pub estimate_mtco2: f64,
    pub p2_5: f64,
    pub p97_5: f64,
    pub inventory_mtco2: f64,
    /// Persistence: the base-year inventory used as the estimate.
    pub persistence_mtco2: f64,
    pub error_pct: f64,
    pub inside_95: bool,
    pub rel_halfwidth_95_pct: f64,
    pub source_type: SourceType,
    pub coverage: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacktestSummary {
    pub power_median_abs_pct_err: f64,
    pub power_p90_abs_pct_err: f64,
    pub total_median_abs_pct_err: f64,
    pub total_p90_abs_pct_err: f64,
    pub persistence_total_median_abs_pct_err: f64,
    pub persistence_power_median_abs_pct_err: f64,
    /// Share of province-sector rows whose inventory value lies inside the 95 % band.
    pub coverage_95: f64,
    /// Median half-width of the 95 % band relative to the estimate, percent.
    pub median_rel_halfwidth_95: f64,
    pub coverage_95_totals: f64,
    pub median_abs_pct_err_by_sector: Vec<(Sector, f64)>,
    pub coverage_95_by_sector: Vec<(Sector, f64)>,
    pub n_rows: usize,
    /// 95 % interval score (Gneiting and Raftery 2007: width plus 2/α times any miss, α =
    /// 0.05), summed over province-sector rows, MtCO2.
    pub interval_score_95: f64,
    /// The same score for a constant-percentage band per sector with co2cast's median
    /// relative half-width in that sector: what the shape of co2cast's bands must beat.
    pub constant_band_interval_score_95: f64,
    /// Median 95 % half-width of provincial totals relative to the estimate, percent.
    pub median_rel_halfwidth_95_totals: f64,
}

/// The 95 % interval score of one value against a band.
pub fn interval_score_95(lo: f64, hi: f64, y: f64) -> f64 {
    let alpha = 0.05;
    (hi - lo) + 2.0 / alpha * ((lo - y).max(0.0) + (y - hi).max(0.0))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacktestReport {
    pub base_year: i32,
    pub target_year: i32,
    pub model_version: String,
    pub inventory_source: String,
    pub ensemble: EnsembleSettings,
    pub rows: Vec<BacktestRow>,
    pub national: NationalRow,
    pub summary: BacktestSummary,
    pub calibration: Calibration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NationalRow {
    /// Sum over the provinces with an inventory, from joint member sums.
    pub band: Band,
    pub inventory_mtco2: f64,
    pub persistence_mtco2: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    #[error("target year {target} must be after base year {base}")]
    TargetNotAfterBase { base: i32, target: i32 },
    #[error("the inventory has no values for target year {0} (for years after the last inventory, the backtest compares national totals with the references instead)")]
    NoTarget(i32),
}

pub fn run(
    inventory: &InventoryPanel,
    proxies: &ProxyPanel,
    base_year: i32,
    target_year: i32,
    cfg: &ModelConfig,
    settings: EnsembleSettings,
) -> Result<BacktestReport, BacktestError> {
    if target_year <= base_year {
        return Err(BacktestError::TargetNotAfterBase { base: base_year, target: target_year });
    }
    if !inventory.years().contains(&target_year) {
        return Err(BacktestError::NoTarget(target_year));
    }
    // Calibration sees inventory years ≤ base_year only (enforced inside `calibrate`).
    let calibration = calibrate(inventory, proxies, base_year, (target_year - base_year) as u32, cfg)?;
    let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
    // The estimator reads only the base-year inventory; give it nothing later.
    let base_inv = inventory.up_to(base_year);
    let est = Estimator { calibration: &calibration, inventory: &base_inv, proxies, calendar: &hc, day_factors: &df };
    let months: Vec<YearMonth> = (1..=12).map(|m| YearMonth::new(target_year, m)).collect();
    let in_year = |d: chrono::NaiveDate| d.year() == target_year;

    let mut rows = Vec::new();
    let k = settings.members;
    let mut national_members = vec![0.0; k];
    let (mut national_central, mut national_inv, mut national_pers) = (0.0, 0.0, 0.0);
    for p in Province::ALL {
        let Some(_) = inventory.total(p, target_year) else { continue };
        let mut prov_members = vec![0.0; k];
        let (mut prov_central, mut prov_inv, mut prov_pers) = (0.0, 0.0, 0.0);
        let mut prov_cov = (0.0, 0.0);
        let mut prov_source = SourceType::Proxy;
        for s in Sector::ALL {
            let (Some(inv_t), Some(inv_y)) = (inventory.sector(p, s, target_year), inventory.sector(p, s, base_year))
            else {
                continue;
            };
            let Some(row) = est.row(p, s, &months, settings) else { continue };
            let members = row.member_sums(in_year);
            let central = row.central_sum(in_year);
            let band = Band::from_members(central, &members);
            let coverage = row.months.iter().map(|m| m.coverage).sum::<f64>() / row.months.len() as f64;
            let source = row.months.iter().map(|m| m.source_type).max().unwrap_or(SourceType::Proxy);
            for (a, b) in prov_members.iter_mut().zip(&members) {
                *a += b;
            }
            prov_central += central;
            prov_inv += inv_t;
            prov_pers += inv_y;
            prov_cov.0 += coverage * inv_y;
            prov_cov.1 += inv_y;
            prov_source = prov_source.max(source);
            // Rows too small to score in percent (< 0.1 Mt) still count in totals.
            if inv_t >= 0.1 {
                rows.push(score_row(p, Some(s), band, inv_t, inv_y, source, coverage));
            }
        }
        let band = Band::from_members(prov_central, &prov_members);
        let cov = if prov_cov.1 > 0.0 { prov_cov.0 / prov_cov.1 } else { 0.0 };
        rows.push(score_row(p, None, band, prov_inv, prov_pers, prov_source, cov));
        for (a, b) in national_members.iter_mut().zip(&prov_members) {
            *a += b;
        }
        national_central += prov_central;
        national_inv += prov_inv;
        national_pers += prov_pers;
    }
    let national = NationalRow {
        band: Band::from_members(national_central, &national_members),
        inventory_mtco2: national_inv,
        persistence_mtco2: national_pers,
    };
    let summary = summarise(&rows);
    Ok(BacktestReport {
        base_year,
        target_year,
        model_version: MODEL_VERSION.to_string(),
        inventory_source: inventory.source.clone(),
        ensemble: settings,
        rows,
        national,
        summary,
        calibration,
    })
}

fn score_row(
    p: Province,
    s: Option<Sector>,
    band: Band,
    inv: f64,
    persistence: f64,
    source_type: SourceType,
    coverage: f64,
) -> BacktestRow {
    BacktestRow {
        province: p,
        sector: s,
        estimate_mtco2: band.central,
        p2_5: band.p2_5,
        p97_5: band.p97_5,
        inventory_mtco2: inv,
        persistence_mtco2: persistence,
        error_pct: (band.central / inv - 1.0) * 100.0,
        inside_95: band.contains_95(inv),
        rel_halfwidth_95_pct: band.rel_halfwidth_95() * 100.0,
        source_type,
        coverage,
    }
}

pub fn summarise(rows: &[BacktestRow]) -> BacktestSummary {
    let abs_err = |f: &dyn Fn(&BacktestRow) -> bool| -> Vec<f64> {
        rows.iter().filter(|r| f(r)).map(|r| r.error_pct.abs()).collect()
    };
    let pers_err = |f: &dyn Fn(&BacktestRow) -> bool| -> Vec<f64> {
        rows.iter().filter(|r| f(r)).map(|r| (r.persistence_mtco2 / r.inventory_mtco2 - 1.0).abs() * 100.0).collect()
    };
    let power = abs_err(&|r| r.sector == Some(Sector::Power));
    let total = abs_err(&|r| r.sector.is_none());
    let sector_rows: Vec<&BacktestRow> = rows.iter().filter(|r| r.sector.is_some()).collect();
    let totals: Vec<&BacktestRow> = rows.iter().filter(|r| r.sector.is_none()).collect();
    let share = |v: &[&BacktestRow]| v.iter().filter(|r| r.inside_95).count() as f64 / v.len().max(1) as f64;
    let hw: Vec<f64> = sector_rows.iter().map(|r| r.rel_halfwidth_95_pct).collect();
    BacktestSummary {
        power_median_abs_pct_err: median(&power),
        power_p90_abs_pct_err: quantile(&power, 0.9),
        total_median_abs_pct_err: median(&total),
        total_p90_abs_pct_err: quantile(&total, 0.9),
        persistence_total_median_abs_pct_err: median(&pers_err(&|r| r.sector.is_none())),
        persistence_power_median_abs_pct_err: median(&pers_err(&|r| r.sector == Some(Sector::Power))),
        coverage_95: share(&sector_rows),
        median_rel_halfwidth_95: median(&hw),
        coverage_95_totals: share(&totals),
        median_abs_pct_err_by_sector: Sector::ALL
            .iter()
            .map(|s| (*s, median(&abs_err(&|r| r.sector == Some(*s)))))
            .collect(),
        coverage_95_by_sector: Sector::ALL
            .iter()
            .map(|s| {
                let v: Vec<&BacktestRow> = sector_rows.iter().copied().filter(|r| r.sector == Some(*s)).collect();
                (*s, share(&v))
            })
            .collect(),
        n_rows: sector_rows.len(),
        interval_score_95: sector_rows.iter().map(|r| interval_score_95(r.p2_5, r.p97_5, r.inventory_mtco2)).sum(),
        constant_band_interval_score_95: Sector::ALL
            .iter()
            .map(|s| {
                let v: Vec<&BacktestRow> = sector_rows.iter().copied().filter(|r| r.sector == Some(*s)).collect();
                let w = median(&v.iter().map(|r| r.rel_halfwidth_95_pct / 100.0).collect::<Vec<_>>());
                v.iter().map(|r| interval_score_95(r.estimate_mtco2 * (1.0 - w), r.estimate_mtco2 * (1.0 + w), r.inventory_mtco2)).sum::<f64>()
            })
            .sum(),
        median_rel_halfwidth_95_totals: median(&totals.iter().map(|r| r.rel_halfwidth_95_pct).collect::<Vec<_>>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::synthetic_world;

    #[test]
    fn scores_a_synthetic_world_well() {
        let (inv, px) = synthetic_world(0.8, 0.01, 11);
        let r = run(&inv, &px, 2016, 2017, &ModelConfig::default(), EnsembleSettings { members: 100, seed: 1 }).unwrap();
        assert_eq!(r.summary.n_rows, 30 * 6);
        assert!(r.summary.power_median_abs_pct_err < 2.0, "{:?}", r.summary);
        assert!(r.summary.coverage_95 > 0.7, "{:?}", r.summary);
        assert!(run(&inv, &px, 2017, 2017, &ModelConfig::default(), EnsembleSettings::default()).is_err());
    }
}

/// Years after the last inventory: national totals from a base year, their year-to-year
/// changes beside the national references, and the monthly year-on-year path of the first
/// year beside the proxies' own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NationalReport {
    pub base_year: i32,
    pub model_version: String,
    pub ensemble: EnsembleSettings,
    /// The base year's inventory total (30 provinces) and each later year's estimate.
    pub base_inventory_mtco2: f64,
    pub years: Vec<NationalYearEstimate>,
    pub changes: Vec<NationalChange>,
    /// Month by month, the first estimated year against the base year estimated from the
    /// inventory year before it (what a user of co2cast would have seen then).
    pub monthly_yoy: Vec<MonthlyYoY>,
    pub references: Vec<crate::references::NationalReference>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NationalYearEstimate {
    pub year: i32,
    pub horizon_years: u32,
    pub band: Band,
    /// The calibration's fitted shares at this horizon.
    pub calibration_fits: Vec<crate::calibration::ComponentFit>,
    /// The residual scales fitted at this horizon, per sector (medians over provinces).
    pub residual_scales: Vec<HorizonScale>,
}

/// One sector's fitted uncertainty at one horizon (log space, one standard deviation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HorizonScale {
    pub sector: String,
    pub horizon_years: u32,
    /// Medians over provinces of the row scales.
    pub base_sd: f64,
    pub drift_sd_per_year: f64,
    pub common_sd_per_year: f64,
    pub tail_factor: f64,
    /// What they add up to at this horizon: √(base² + k·(drift² + common²)) × tail factor.
    pub total_sd: f64,
}

/// Per sector, the medians of a calibration's row scales and the total sd they give at its
/// horizon.
pub fn horizon_scales(cal: &crate::calibration::Calibration) -> Vec<HorizonScale> {
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() { f64::NAN } else { crate::calibration::robust::quantile_sorted(&v, 0.5) }
    };
    let k = f64::from(cal.horizon_years);
    crate::domain::Sector::ALL
        .iter()
        .filter_map(|s| {
            let rows: Vec<&crate::calibration::RowScale> = cal.scales.iter().filter(|((_, x), _)| x == s).map(|(_, r)| r).collect();
            if rows.is_empty() {
                return None;
            }
            let total = median(rows.iter().map(|r| (r.base_sd.powi(2) + k * (r.drift_sd_per_year.powi(2) + r.common_sd_per_year.powi(2))).sqrt() * r.tail_factor).collect());
            Some(HorizonScale {
                sector: s.as_str().to_string(),
                horizon_years: cal.horizon_years,
                base_sd: median(rows.iter().map(|r| r.base_sd).collect()),
                drift_sd_per_year: median(rows.iter().map(|r| r.drift_sd_per_year).collect()),
                common_sd_per_year: median(rows.iter().map(|r| r.common_sd_per_year).collect()),
                tail_factor: median(rows.iter().map(|r| r.tail_factor).collect()),
                total_sd: total,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NationalChange {
    pub from: i32,
    pub to: i32,
    /// co2cast's relative change, percent, with the 95 % band of member-wise ratios.
    pub estimate_pct: f64,
    pub p2_5_pct: f64,
    pub p97_5_pct: f64,
    /// Each reference's change over the same years, percent (when it has both).
    pub references: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonthlyYoY {
    pub month: u32,
    pub estimate_pct: f64,
    /// National sums of the proxies, month against the same month a year before, percent.
    pub proxies_pct: Vec<(crate::proxy::Signal, f64)>,
}

/// National totals of every province and sector for `year`, estimated from `base_year`:
/// central and joint members (annual), and the central value of each month.
fn national_year(
    inventory: &InventoryPanel,
    proxies: &ProxyPanel,
    base_year: i32,
    year: i32,
    cfg: &ModelConfig,
    settings: EnsembleSettings,
) -> Result<(Calibration, f64, Vec<f64>, [f64; 12]), BacktestError> {
    let calibration = calibrate(inventory, proxies, base_year, (year - base_year) as u32, cfg)?;
    let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
    let base_inv = inventory.up_to(base_year);
    let est = Estimator { calibration: &calibration, inventory: &base_inv, proxies, calendar: &hc, day_factors: &df };
    let months: Vec<YearMonth> = (1..=12).map(|m| YearMonth::new(year, m)).collect();
    let mut central = 0.0;
    let mut members = vec![0.0; settings.members];
    let mut by_month = [0.0; 12];
    for row in est.all_rows(&months, settings) {
        for (i, d) in row.days.iter().enumerate() {
            by_month[(d.month() - 1) as usize] += row.central[i];
        }
        central += row.central_sum(|_| true);
        for (a, b) in members.iter_mut().zip(row.member_sums(|_| true)) {
            *a += b;
        }
    }
    Ok((calibration, central, members, by_month))
}

/// The national report for the years `base_year + 1 ..= last_year`.
pub fn national_report(
    inventory: &InventoryPanel,
    proxies: &ProxyPanel,
    references: &[crate::references::NationalReference],
    base_year: i32,
    last_year: i32,
    cfg: &ModelConfig,
    settings: EnsembleSettings,
) -> Result<NationalReport, BacktestError> {
    if last_year <= base_year {
        return Err(BacktestError::TargetNotAfterBase { base: base_year, target: last_year });
    }
    let base_total: f64 = Province::ALL.iter().filter_map(|p| inventory.total(*p, base_year)).sum();
    if base_total <= 0.0 {
        return Err(BacktestError::Calibration(CalibrationError::NoBaseYear(base_year)));
    }
    let mut years = Vec::new();
    let mut prev: Option<(i32, f64, Vec<f64>)> = None;
    let mut changes = Vec::new();
    let mut first_months = None;
    for year in base_year + 1..=last_year {
        let (cal, central, members, by_month) = national_year(inventory, proxies, base_year, year, cfg, settings)?;
        let (from, c0, m0) = prev.clone().unwrap_or((base_year, base_total, vec![base_total; members.len()]));
        let ratios: Vec<f64> = members.iter().zip(&m0).map(|(a, b)| (a / b - 1.0) * 100.0).collect();
        let band = Band::from_members((central / c0 - 1.0) * 100.0, &ratios);
        changes.push(NationalChange {
            from,
            to: year,
            estimate_pct: band.central,
            p2_5_pct: band.p2_5,
            p97_5_pct: band.p97_5,
            references: references.iter().filter_map(|r| r.change(from, year).map(|c| (r.source.clone(), c * 100.0))).collect(),
        });
        if first_months.is_none() {
            first_months = Some(by_month);
        }
        let residual_scales = horizon_scales(&cal);
        years.push(NationalYearEstimate { year, horizon_years: (year - base_year) as u32, band: Band::from_members(central, &members), calibration_fits: cal.fits, residual_scales });
        prev = Some((year, central, members));
    }
    // The base year as estimated from the year before, month by month.
    let first = base_year + 1;
    let monthly_yoy = match (first_months, national_year(inventory, proxies, base_year - 1, base_year, cfg, settings)) {
        (Some(now), Ok((_, _, _, before))) => (1..=12u32)
            .map(|m| {
                let i = (m - 1) as usize;
                let proxies_pct = NATIONAL_SIGNALS
                    .iter()
                    .filter_map(|s| {
                        let sum = |y: i32| -> Option<f64> {
                            let ym = YearMonth::new(y, m);
                            let v: f64 = proxies.iter_monthly().filter(|(sig, _, mm, _)| sig == s && *mm == ym).map(|x| x.3).sum();
                            (v > 0.0).then_some(v)
                        };
                        Some((*s, (sum(first)? / sum(base_year)? - 1.0) * 100.0))
                    })
                    .collect();
                MonthlyYoY { month: m, estimate_pct: (now[i] / before[i] - 1.0) * 100.0, proxies_pct }
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(NationalReport {
        base_year,
        model_version: MODEL_VERSION.to_string(),
        ensemble: settings,
        base_inventory_mtco2: base_total,
        years,
        changes,
        monthly_yoy,
        references: references.to_vec(),
    })
}

/// Proxies whose national sums the monthly report sets beside the estimate.
const NATIONAL_SIGNALS: [crate::proxy::Signal; 9] = [
    crate::proxy::Signal::ThermalGeneration,
    crate::proxy::Signal::ElectricityConsumption,
    crate::proxy::Signal::Cement,
    crate::proxy::Signal::PigIron,
    crate::proxy::Signal::HighwayFreight,
    crate::proxy::Signal::HighwayPassengers,
    crate::proxy::Signal::DieselOutput,
    crate::proxy::Signal::AviationPassengers,
    crate::proxy::Signal::KeroseneOutput,
];

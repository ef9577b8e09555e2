//! Daily estimates per province and sector, with a Monte Carlo ensemble.
//!
//! Central path: each component's base-year inventory is spread over months by the base-year
//! proxy profile, scaled by the month's proxy ratio to the same month of the base year (the
//! calibrated affine form), and spread over days by the sector's calendar factors or by the
//! daily proxy where one exists.
//!
//! Ensemble: each member multiplies the central path by correlated errors:
//! * base-year inventory error, fixed for the row;
//! * a ratio error common to all provinces of the same fuel group, one step per year since
//!   the base year (so national and annual bands do not shrink like 1/√n);
//! * a province-specific drift, one step per year since the base year;
//! * for nowcast months, a random walk per month beyond the last published proxy;
//! * day-to-day AR(1) shape noise, renormalised so that it moves days within a month but not
//!   the monthly total when that total is known.
//!
//! Draws come from ChaCha streams keyed by (seed, purpose, province, sector, member), so a
//! member is reproducible whatever the evaluation order.

use crate::calendar::{DayFactorTable, HolidayCalendar, days_of_month};
use crate::calibration::{Calibration, ComponentSpec, DriverSpec, RowScale};
use crate::calibration::robust::quantile_sorted;
use crate::domain::{FuelGroup, Province, Sector};
use crate::inventory::InventoryPanel;
use crate::proxy::{ProxyPanel, Scope, Signal};
use crate::series::YearMonth;
use chrono::{Datelike, NaiveDate};
use rand::SeedableRng;
use rand::distr::Distribution;
use rand::rngs::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use statrs::distribution::Normal;

/// Version tag carried by every estimate.
pub const MODEL_VERSION: &str = concat!("co2cast-model/", env!("CARGO_PKG_VERSION"), "+drivers-prior-denton-v2");

/// How a daily value was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    /// Every proxy the row expects was observed for the period.
    Proxy,
    /// Some expected proxy was missing (or the row has none) and was filled by persistence.
    GapFilled,
    /// The period lies beyond the latest published proxy: extrapolated.
    Nowcast,
}

impl SourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceType::Proxy => "proxy",
            SourceType::GapFilled => "gap_filled",
            SourceType::Nowcast => "nowcast",
        }
    }

    /// The inverse of [`SourceType::as_str`].
    pub fn parse(s: &str) -> Option<SourceType> {
        [SourceType::Proxy, SourceType::GapFilled, SourceType::Nowcast].into_iter().find(|t| t.as_str() == s)
    }
}

/// One published row: province × sector × Asia/Shanghai day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyEstimate {
    pub province: Province,
    pub sector: Sector,
    pub date: NaiveDate,
    /// Central estimate, MtCO2 per day.
    pub value_mtco2: f64,
    pub p2_5: f64,
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
    pub p97_5: f64,
    pub source_type: SourceType,
    /// Share of expected proxy inputs present, weighted by base-year emissions (0–1).
    pub coverage: f64,
    pub proxies: Vec<Signal>,
    /// The month of proxy data behind at least half of the row's CO2 (see [`MonthInfo`]).
    pub data_through: Option<YearMonth>,
    pub base_year: i32,
    pub model_version: String,
}

/// Per-month facts about a row.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthInfo {
    pub month: YearMonth,
    pub source_type: SourceType,
    pub coverage: f64,
    /// Months beyond the last published proxy month (0 when observed).
    pub nowcast_months: u32,
    pub proxies: Vec<Signal>,
    /// The month of monthly proxy data behind at least half of the row's CO2 in the month
    /// (its components weighted by their CO2; the month itself when all are observed);
    /// `None` when no monthly signal drives the row.
    pub data_through: Option<YearMonth>,
}

/// Central path and ensemble of one province-sector over a span of days.
#[derive(Debug, Clone)]
pub struct RowEnsemble {
    pub province: Province,
    pub sector: Sector,
    pub days: Vec<NaiveDate>,
    /// Index into `months` for each day.
    pub day_month: Vec<usize>,
    pub months: Vec<MonthInfo>,
    pub central: Vec<f64>,
    /// `members[j][d]`, MtCO2 per day.
    pub members: Vec<Vec<f64>>,
}

impl RowEnsemble {
    /// Member sums over the row's days where `keep(day)` holds.
    pub fn member_sums(&self, keep: impl Fn(NaiveDate) -> bool) -> Vec<f64> {
        let idx: Vec<usize> = (0..self.days.len()).filter(|i| keep(self.days[*i])).collect();
        self.members.iter().map(|m| idx.iter().map(|i| m[*i]).sum()).collect()
    }

    pub fn central_sum(&self, keep: impl Fn(NaiveDate) -> bool) -> f64 {
        (0..self.days.len()).filter(|i| keep(self.days[*i])).map(|i| self.central[i]).sum()
    }

    pub fn daily_estimates(&self, base_year: i32) -> Vec<DailyEstimate> {
        let mut col = vec![0.0; self.members.len()];
        (0..self.days.len())
            .map(|d| {
                for (j, m) in self.members.iter().enumerate() {
                    col[j] = m[d];
                }
                col.sort_by(|a, b| a.total_cmp(b));
                let info = &self.months[self.day_month[d]];
                DailyEstimate {
                    province: self.province,
                    sector: self.sector,
                    date: self.days[d],
                    value_mtco2: self.central[d],
                    p2_5: quantile_sorted(&col, 0.025),
                    p5: quantile_sorted(&col, 0.05),
                    p50: quantile_sorted(&col, 0.5),
                    p95: quantile_sorted(&col, 0.95),
                    p97_5: quantile_sorted(&col, 0.975),
                    source_type: info.source_type,
                    coverage: info.coverage,
                    proxies: info.proxies.clone(),
                    data_through: info.data_through,
                    base_year,
                    model_version: MODEL_VERSION.to_string(),
                }
            })
            .collect()
    }
}

/// Summary of an aggregate computed from joint member sums.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub central: f64,
    pub p2_5: f64,
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
    pub p97_5: f64,
}

impl Band {
    pub fn from_members(central: f64, members: &[f64]) -> Band {
        let mut s = members.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        Band {
            central,
            p2_5: quantile_sorted(&s, 0.025),
            p5: quantile_sorted(&s, 0.05),
            p50: quantile_sorted(&s, 0.5),
            p95: quantile_sorted(&s, 0.95),
            p97_5: quantile_sorted(&s, 0.975),
        }
    }

    pub fn contains_95(&self, v: f64) -> bool {
        v >= self.p2_5 && v <= self.p97_5
    }

    /// Half-width of the 95 % band relative to the central value.
    pub fn rel_halfwidth_95(&self) -> f64 {
        (self.p97_5 - self.p2_5) / 2.0 / self.central
    }
}

/// Ensemble settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnsembleSettings {
    pub members: usize,
    pub seed: u64,
}

impl Default for EnsembleSettings {
    fn default() -> Self {
        EnsembleSettings { members: 400, seed: 20_190_101 }
    }
}

pub struct Estimator<'a> {
    pub calibration: &'a Calibration,
    pub inventory: &'a InventoryPanel,
    pub proxies: &'a ProxyPanel,
    pub calendar: &'a HolidayCalendar,
    pub day_factors: &'a DayFactorTable,
}

/// One driver's ratio for a month, and how it was obtained.
#[derive(Debug, Clone, Copy)]
struct DriverMonth {
    ratio: Option<f64>,
    observed: bool,
    /// Months beyond the driver's last published month (0 when observed).
    ahead: u32,
    /// Read from the driver's national fallback.
    fallback: bool,
}

/// A component's contribution to one month.
struct ComponentMonth {
    value: f64,
    /// Every monthly driver observed.
    observed: bool,
    has_monthly_driver: bool,
    nowcast_months: u32,
    /// Daily values of a monthly driver covering the whole month (a daily proxy).
    daily_weights: Option<Vec<f64>>,
    signals_observed: Vec<Signal>,
}

impl<'a> Estimator<'a> {
    fn base_year(&self) -> i32 {
        self.calibration.base_year
    }

    /// Base-year monthly shares of a component: from its first monthly driver's signal with
    /// a complete, positive base year, otherwise from calendar weights (with a heating
    /// profile for residential).
    fn base_month_shares(&self, spec: &ComponentSpec, p: Province) -> [f64; 12] {
        let y = self.base_year();
        for d in spec.monthly_drivers() {
            let scope = d.scope(p);
            for s in &d.signals {
                let v: Option<Vec<f64>> = (1..=12).map(|m| self.proxies.monthly(*s, scope, YearMonth::new(y, m))).collect();
                if let Some(v) = v {
                    let t: f64 = v.iter().sum();
                    if t > 0.0 && v.iter().all(|x| *x >= 0.0) {
                        let mut out = [0.0; 12];
                        for (i, x) in v.iter().enumerate() {
                            out[i] = x / t;
                        }
                        return out;
                    }
                }
            }
        }
        let sector = spec.sector();
        let mut w = [0.0; 12];
        for (i, wi) in w.iter_mut().enumerate() {
            let m = i as u32 + 1;
            let days: f64 = days_of_month(y, m).map(|d| self.day_factors.factor_in(sector, self.calendar, p, d)).sum();
            *wi = days * seasonal_prior(sector, p, m);
        }
        let t: f64 = w.iter().sum();
        w.map(|x| x / t)
    }

    /// A driver's ratio for month `m` to the same month of the base year. A month not yet
    /// published takes the mean ratio of the latest (up to 3) observed months before it.
    fn driver_month(&self, d: &DriverSpec, p: Province, m: YearMonth) -> DriverMonth {
        let base = YearMonth::new(self.base_year(), m.month);
        let scope = d.scope(p);
        let scope_of = |fallback: bool| if fallback { Scope::National } else { scope };
        if let Some(r) = d.monthly_ratio(self.proxies, p, base, m) {
            let fallback = !d.own_value_published(self.proxies, p, m);
            return DriverMonth { ratio: Some(r), observed: true, ahead: 0, fallback };
        }
        // Published, but no usable ratio (the province makes none of the product): the
        // driver keeps its base-year level; that is an observation, not a gap.
        if d.all_signals().any(|(s, fb)| self.proxies.monthly(s, scope_of(fb), m).is_some()) {
            return DriverMonth { ratio: None, observed: true, ahead: 0, fallback: false };
        }
        let last_published = d.all_signals().filter_map(|(s, fb)| self.proxies.last_month(s, scope_of(fb))).max();
        let mut ratios = Vec::new();
        let mut cur = m.prev();
        let mut steps = 0;
        while ratios.len() < 3 && steps < 24 && cur.year >= self.base_year() {
            let b = YearMonth::new(self.base_year(), cur.month);
            if (cur > b || cur.year > self.base_year())
                && let Some(r) = d.monthly_ratio(self.proxies, p, b, cur)
            {
                ratios.push(r);
            }
            cur = cur.prev();
            steps += 1;
        }
        let ratio = if ratios.is_empty() { None } else { Some(ratios.iter().sum::<f64>() / ratios.len() as f64) };
        let ahead = match last_published {
            Some(lp) if m > lp => months_between(lp, m),
            _ => 0,
        };
        DriverMonth { ratio, observed: false, ahead, fallback: false }
    }

    fn component_month(&self, idx: usize, spec: &ComponentSpec, p: Province, m: YearMonth) -> Option<ComponentMonth> {
        let base = self.inventory.get(p, spec.item, self.base_year())?;
        let shares = self.base_month_shares(spec, p);
        let drivers: Vec<DriverMonth> = spec.drivers.iter().map(|d| self.driver_month(d, p, m)).collect();
        let ratios: Vec<Option<f64>> = drivers.iter().map(|d| d.ratio).collect();
        let k = (m.year - self.base_year()) as f64;
        let fit = self.calibration.component_fit(idx);
        let value = base * shares[(m.month - 1) as usize] * fit.multiplier(&ratios, k);
        // Status follows the monthly drivers; an annual level (a register published once a
        // year) scales the year but does not make the month a gap or a nowcast.
        let monthly: Vec<(&DriverSpec, &DriverMonth)> = spec.drivers.iter().zip(&drivers).filter(|(d, _)| !d.is_annual()).collect();
        let observed = monthly.iter().all(|(_, dm)| dm.observed);
        let nowcast_months = monthly.iter().map(|(_, dm)| dm.ahead).max().unwrap_or(0);
        let signals_observed = spec
            .drivers
            .iter()
            .zip(&drivers)
            .filter(|(_, dm)| dm.observed)
            .flat_map(|(d, dm)| if dm.fallback { d.fallback.clone() } else { d.signals.clone() })
            .collect();
        // A complete daily series of a monthly driver shapes the month's days.
        let daily_weights = monthly.iter().find_map(|(d, _)| {
            let scope = d.scope(p);
            d.signals.iter().find_map(|s| {
                let v: Option<Vec<f64>> = days_of_month(m.year, m.month).map(|day| self.proxies.daily(*s, scope, day)).collect();
                v.filter(|v| v.iter().sum::<f64>() > 0.0 && v.iter().all(|x| *x > 0.0))
            })
        });
        Some(ComponentMonth { value, observed, has_monthly_driver: !monthly.is_empty(), nowcast_months, daily_weights, signals_observed })
    }

    /// The month's value and its daily indicator (calendar factors, or a daily proxy) for a
    /// row, with the month's facts.
    fn row_month(&self, comps: &[(usize, &ComponentSpec)], p: Province, s: Sector, m: YearMonth) -> Option<(f64, Vec<f64>, MonthInfo)> {
        let mut base_weight = 0.0;
        let mut observed_weight = 0.0;
        let mut ahead = 0u32;
        let mut missing = false;
        let mut proxy_driven = 0;
        let mut proxies_used: Vec<Signal> = Vec::new();
        // (month of data, CO2) per component a monthly driver moves.
        let mut data_months: Vec<(YearMonth, f64)> = Vec::new();
        let month_days: Vec<NaiveDate> = days_of_month(m.year, m.month).collect();
        let calendar: Vec<f64> = month_days.iter().map(|d| self.day_factors.factor_in(s, self.calendar, p, *d)).collect();
        let mut total = 0.0;
        let mut shaped = vec![0.0; month_days.len()];
        let mut any = false;
        for (idx, spec) in comps {
            let Some(cm) = self.component_month(*idx, spec, p, m) else { continue };
            any = true;
            let w = self.inventory.get(p, spec.item, self.base_year()).unwrap_or(0.0);
            base_weight += w;
            if cm.has_monthly_driver {
                proxy_driven += 1;
                data_months.push((m.add_months(-(cm.nowcast_months as i32)), cm.value));
                if cm.observed {
                    observed_weight += w;
                } else {
                    missing = true;
                }
            }
            proxies_used.extend(cm.signals_observed.iter().copied());
            ahead = ahead.max(cm.nowcast_months);
            let weights = cm.daily_weights.as_ref().unwrap_or(&calendar);
            let ws: f64 = weights.iter().sum::<f64>().max(1e-12);
            for (i, wd) in weights.iter().enumerate() {
                shaped[i] += cm.value * wd / ws;
            }
            total += cm.value;
        }
        if !any {
            return None;
        }
        proxies_used.sort();
        proxies_used.dedup();
        let coverage = if base_weight > 0.0 { observed_weight / base_weight } else { 0.0 };
        let source_type = if ahead > 0 {
            SourceType::Nowcast
        } else if missing || proxy_driven == 0 {
            SourceType::GapFilled
        } else {
            SourceType::Proxy
        };
        // The indicator: the shape of the components' days (daily proxies where they
        // exist, calendar factors elsewhere), relative to the month's mean.
        let indicator: Vec<f64> = if total > 0.0 { shaped.iter().map(|v| v / total * shaped.len() as f64).collect() } else { calendar };
        let data_through = month_behind_half(&mut data_months);
        Some((total, indicator, MonthInfo { month: m, source_type, coverage, nowcast_months: ahead, proxies: proxies_used, data_through }))
    }

    /// Central path and `settings.members` ensemble members for one row over `months`
    /// (consecutive). Days follow a smooth path through the monthly totals (Denton, each
    /// month with its neighbours, the month before and after the span included, so that
    /// paths also join across the ends of the span), shaped by the calendar or a daily proxy.
    pub fn row(&self, p: Province, s: Sector, months: &[YearMonth], settings: EnsembleSettings) -> Option<RowEnsemble> {
        let cfg = &self.calibration.config;
        let comps: Vec<(usize, &ComponentSpec)> = cfg.components.iter().enumerate().filter(|(_, c)| c.sector() == s).collect();
        let scale = *self.calibration.scale(p, s)?;
        let (first, last) = (*months.first()?, *months.last()?);
        let mut infos = Vec::new();
        let mut totals = Vec::new();
        let mut lengths = Vec::new();
        let mut indicator = Vec::new();
        let mut days = Vec::new();
        let mut day_month = Vec::new();
        // Neighbours: the month before the span (when not before the base year) and after.
        let before = (first.prev().year > self.base_year()).then(|| first.prev());
        let span: Vec<YearMonth> = before.into_iter().chain(months.iter().copied()).chain(std::iter::once(last.next())).collect();
        let mut neighbour_days = (0, 0);
        for m in &span {
            let inside = months.contains(m);
            let Some((total, ind, info)) = self.row_month(&comps, p, s, *m) else {
                if inside {
                    return None;
                }
                continue;
            };
            if inside {
                for d in days_of_month(m.year, m.month) {
                    days.push(d);
                    day_month.push(infos.len());
                }
                infos.push(info);
            } else if *m < first {
                neighbour_days.0 = ind.len();
            } else {
                neighbour_days.1 = ind.len();
            }
            totals.push(total);
            lengths.push(ind.len());
            indicator.extend(ind);
        }
        let path = crate::series::disaggregate::denton_local(&totals, &lengths, &indicator);
        let central: Vec<f64> = path[neighbour_days.0..path.len() - neighbour_days.1].to_vec();
        debug_assert_eq!(central.len(), days.len());
        let members = draw_members(p, s, &scale, self.base_year(), &days, &day_month, &infos, &central, cfg, settings);
        Some(RowEnsemble { province: p, sector: s, days, day_month, months: infos, central, members })
    }

    /// Every row with a base inventory, for `months`.
    pub fn all_rows(&self, months: &[YearMonth], settings: EnsembleSettings) -> Vec<RowEnsemble> {
        let mut out = Vec::new();
        for p in Province::ALL {
            for s in Sector::ALL {
                if let Some(r) = self.row(p, s, months, settings) {
                    out.push(r);
                }
            }
        }
        out
    }
}

/// The base year of an estimate of `year`: the latest inventory year before it.
pub fn base_year_for(year: i32, inventory_years: &[i32]) -> Option<i32> {
    inventory_years.iter().copied().filter(|y| *y < year).max()
}

/// Years, up to `last_year`, whose estimates read proxy values dated in `year` (what a
/// streaming job must re-estimate when such a value changes): the year before it (its daily
/// path runs smoothly into January of `year`), the year itself, the two after it (a missing
/// month is filled with the ratios of up to 24 months before it, and a path starts from the
/// December before), and every later year calibrated on `year`, whose ratios are to the base
/// year's months. (A change of a series' frontier, its latest month, also changes the
/// gap/nowcast status of earlier months: see [`ProxyPanel::last_months`].)
pub fn years_reading(year: i32, inventory_years: &[i32], last_year: i32) -> Vec<i32> {
    (year - 1..=last_year.max(year + 2)).filter(|y| *y <= year + 2 || base_year_for(*y, inventory_years) == Some(year)).collect()
}

/// The latest month such that the items resting on data of that month or later carry at
/// least half of the total weight (a weighted median, read from the newest month down);
/// `None` without items. A small component whose series ended years ago does not date a
/// row that its main drivers keep current, nor one province a national day.
pub fn month_behind_half(items: &mut [(YearMonth, f64)]) -> Option<YearMonth> {
    items.sort_by(|a, b| b.0.cmp(&a.0));
    let total: f64 = items.iter().map(|(_, w)| w.max(0.0)).sum();
    let mut acc = 0.0;
    for (m, w) in items.iter() {
        acc += w.max(0.0);
        if acc >= 0.5 * total {
            return Some(*m);
        }
    }
    items.last().map(|(m, _)| *m)
}

fn months_between(a: YearMonth, b: YearMonth) -> u32 {
    ((b.year - a.year) * 12 + b.month as i32 - a.month as i32).max(0) as u32
}

/// Monthly seasonal prior for rows whose base year has no proxy profile. Residential heating
/// follows a cosine peaking in mid-January, strong where district heating exists.
fn seasonal_prior(s: Sector, p: Province, month: u32) -> f64 {
    match s {
        Sector::Residential => {
            let amplitude = if p.has_district_heating() { 0.6 } else { 0.2 };
            let phase = (month as f64 - 1.0) / 12.0 * std::f64::consts::TAU;
            1.0 + amplitude * phase.cos().max(-0.6)
        }
        _ => 1.0,
    }
}

const TAG_ROW: u64 = 0x524f_5752_4f57_0001;
const TAG_COMMON: u64 = 0x434f_4d4d_4f4e_0002;
/// Nowcast walk and day-shape noise draw from streams of their own (per row, member and
/// year): a month turning from nowcast to observed consumes fewer walk draws, and must not
/// shift the shape noise of every other day (which would revise the whole year).
const TAG_NOWCAST: u64 = 0x4e4f_5743_4153_0003;
const TAG_SHAPE: u64 = 0x5348_4150_4553_0004;

/// SplitMix64 finaliser, used to derive independent stream seeds from keys.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn stream(seed: u64, tag: u64, keys: &[u64]) -> ChaCha8Rng {
    let mut h = mix(seed ^ tag);
    for k in keys {
        h = mix(h ^ k);
    }
    ChaCha8Rng::seed_from_u64(h)
}

/// Common ratio shocks of a fuel group for member `j`: one per year since the base year.
fn common_shocks(seed: u64, fg: FuelGroup, member: usize, years: usize) -> Vec<f64> {
    let n = Normal::standard();
    let mut rng = stream(seed, TAG_COMMON, &[fg.index() as u64, member as u64]);
    (0..years).map(|_| n.sample(&mut rng)).collect()
}

#[allow(clippy::too_many_arguments)]
fn draw_members(
    p: Province,
    s: Sector,
    scale: &RowScale,
    base_year: i32,
    days: &[NaiveDate],
    day_month: &[usize],
    months: &[MonthInfo],
    central: &[f64],
    cfg: &crate::calibration::ModelConfig,
    settings: EnsembleSettings,
) -> Vec<Vec<f64>> {
    let n = Normal::standard();
    let (noise_sd, rho) = cfg.proxy_noise.get(&s).copied().unwrap_or((0.05, 0.7));
    let nc_sd = cfg.nowcast_rel_sd_per_month.get(&s).copied().unwrap_or(0.05);
    let max_year = months.iter().map(|m| m.month.year).max().unwrap_or(base_year);
    let years_ahead = (max_year - base_year).max(0) as usize;
    let innovation_sd = noise_sd * (1.0 - rho * rho).sqrt();
    (0..settings.members)
        .map(|j| {
            let mut rng = stream(settings.seed, TAG_ROW, &[p.nbs_code() as u64, s.index() as u64, base_year as u64, j as u64]);
            let common = common_shocks(settings.seed, s.fuel_group(), j, years_ahead.max(1));
            let z_base = n.sample(&mut rng);
            let drift: Vec<f64> = (0..years_ahead.max(1)).map(|_| n.sample(&mut rng)).collect();
            // Log error accumulated by the year-steps up to year `y`, kept within
            // `member_log_error_cap_sd` of its own standard deviation: a member stays
            // physically plausible however heavy the inventory's tails.
            let year_error = |y: i32| -> f64 {
                let k = (y - base_year).max(0) as usize;
                let mut e = scale.base_sd * z_base;
                for i in 0..k {
                    e += scale.common_sd_per_year * common[i] + scale.drift_sd_per_year * drift[i];
                }
                let sd = (scale.base_sd.powi(2) + k as f64 * (scale.common_sd_per_year.powi(2) + scale.drift_sd_per_year.powi(2))).sqrt();
                let cap = cfg.member_log_error_cap_sd * sd;
                e.clamp(-cap, cap)
            };
            // Nowcast random walk over months beyond the last published one.
            let mut nowcast = vec![0.0; months.len()];
            let mut walk = 0.0;
            let mut last_ahead = 0;
            let key = |tag| stream(settings.seed, tag, &[p.nbs_code() as u64, s.index() as u64, base_year as u64, j as u64, days.first().map_or(0, |d| d.year()) as u64]);
            let mut walk_rng = key(TAG_NOWCAST);
            let mut shape_rng = key(TAG_SHAPE);
            for (i, m) in months.iter().enumerate() {
                if m.nowcast_months > last_ahead {
                    for _ in last_ahead..m.nowcast_months {
                        walk += nc_sd * n.sample(&mut walk_rng);
                    }
                    last_ahead = m.nowcast_months;
                }
                nowcast[i] = if m.nowcast_months > 0 { walk } else { 0.0 };
            }
            // AR(1) shape noise, renormalised within each month.
            let mut eta = noise_sd * n.sample(&mut shape_rng);
            let mut shape = vec![0.0; days.len()];
            for d in 0..days.len() {
                if d > 0 {
                    eta = rho * eta + innovation_sd * n.sample(&mut shape_rng);
                }
                shape[d] = eta.exp();
            }
            let mut out = vec![0.0; days.len()];
            let mut start = 0;
            while start < days.len() {
                let mi = day_month[start];
                let mut end = start;
                while end < days.len() && day_month[end] == mi {
                    end += 1;
                }
                let c_sum: f64 = central[start..end].iter().sum();
                let w_sum: f64 = (start..end).map(|d| central[d] * shape[d]).sum();
                let norm = if w_sum > 0.0 { c_sum / w_sum } else { 1.0 };
                let level = (year_error(months[mi].month.year) + nowcast[mi]).exp();
                for d in start..end {
                    out[d] = central[d] * shape[d] * norm * level;
                }
                start = end;
            }
            out
        })
        .collect()
}

#[cfg(test)]
#[path = "estimate_tests.rs"]
mod tests;

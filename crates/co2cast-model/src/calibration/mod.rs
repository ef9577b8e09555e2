//! Calibration of proxy-to-emission models against inventories up to a base year.
//!
//! Each sector is a sum of components (power has one; industry has one per energy-intensive
//! group). A component's emissions in year `Y+k` are
//!
//! ```text
//! E[c,Y+k] = Inv[c,Y] · (1 + Σ_j φ_j · (X_j[Y+k] / X_j[Y] − 1)) · exp(μ · k)
//! ```
//!
//! where `X_j` is the index of driver `j` (the geometric mean of its signals' ratios), `φ_j`
//! the share of the component's emissions that follows that driver, and `μ` a drift per year
//! added on top. The affine form keeps monthly and daily values additive.
//!
//! Every share is estimated, never selected away: each has a physically motivated prior
//! (aviation fuel follows flights, road fuel follows road activity, power follows thermal
//! generation less its heat share, …; see [`ModelConfig::default`] and docs/model.md), and
//! the fit is a Huber regression on the year-over-year changes of all inventory years up to
//! the base year, shrunk towards the priors by their stated uncertainty. The residuals of a
//! year are correlated across provinces (one shock, thirty observations), so the data's
//! weight is divided by the design effect of that clustering: a calm decade of thirty
//! provinces counts as the few years it is, and cannot teach the model that proxies do not
//! matter. Nothing after the base year is ever read: `calibrate` drops later inventory years
//! before it starts.
//!
//! The residuals of the fitted model give the uncertainty scales: a part common to all
//! provinces in a year (shared ratio or emission-factor error) and a province-specific part,
//! robustly estimated and shrunk towards the sector's pooled scale.

pub mod robust;

use crate::domain::{IndustryGroup, Province, Sector};
use crate::inventory::{InventoryItem, InventoryPanel};
use crate::proxy::{ProxyPanel, Scope, Signal};
use crate::series::YearMonth;
use robust::{mad, median};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Proxies are provincial, or national indices applied to every province.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyScope {
    Provincial,
    National,
}

/// One driver of a component: a proxy index and the prior on the share of the component's
/// emissions that follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverSpec {
    /// Signals whose ratios are averaged (geometrically).
    pub signals: Vec<Signal>,
    pub scope: ProxyScope,
    /// Prior mean of the share φ that follows this driver.
    pub prior_share: f64,
    /// Prior standard deviation of that share.
    pub prior_sd: f64,
    /// The physical reason for the prior, in one line (docs/model.md gives the evidence).
    pub basis: String,
    /// National signals that stand in where the driver's own are not published (a regional
    /// series that starts late falls back to the national one), as Electricity Maps' zone →
    /// parent fallbacks do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<Signal>,
}

impl DriverSpec {
    fn scope_for(&self, p: Province) -> Scope {
        match self.scope {
            ProxyScope::Provincial => Scope::Province(p),
            ProxyScope::National => Scope::National,
        }
    }

    /// Whether the driver is an annual level (vehicle stock, heating area): it scales years
    /// and does not shape months.
    pub fn is_annual(&self) -> bool {
        self.signals.iter().all(|s| s.is_annual_level())
    }

    /// Ratio of the driver's index between two periods, as the geometric mean of each
    /// signal's ratio over the signals present (> 0) in both. `None` when no signal is usable.
    pub fn ratio_by<F>(&self, p: Province, value: F) -> Option<f64>
    where
        F: Fn(Signal, Scope) -> Option<(f64, f64)>,
    {
        let mut log_sum = 0.0;
        let mut n = 0;
        for s in &self.signals {
            if let Some((a, b)) = value(*s, self.scope_for(p))
                && a > 0.0
                && b > 0.0
                && a.is_finite()
                && b.is_finite()
            {
                log_sum += (b / a).ln();
                n += 1;
            }
        }
        (n > 0).then(|| (log_sum / n as f64).exp())
    }

    pub fn annual_ratio(&self, proxies: &ProxyPanel, p: Province, from: i32, to: i32) -> Option<f64> {
        if self.is_annual() {
            // A level carried by every month: December's is the year's.
            return self.monthly_ratio(proxies, p, YearMonth::new(from, 12), YearMonth::new(to, 12));
        }
        self.ratio_by(p, |s, sc| Some((proxies.annual(s, sc, from)?, proxies.annual(s, sc, to)?)))
            .or_else(|| fallback_ratio(&self.fallback, |s| Some((proxies.annual(s, Scope::National, from)?, proxies.annual(s, Scope::National, to)?))))
    }

    pub fn monthly_ratio(&self, proxies: &ProxyPanel, p: Province, from: YearMonth, to: YearMonth) -> Option<f64> {
        self.ratio_by(p, |s, sc| Some((proxies.monthly(s, sc, from)?, proxies.monthly(s, sc, to)?)))
            .or_else(|| fallback_ratio(&self.fallback, |s| Some((proxies.monthly(s, Scope::National, from)?, proxies.monthly(s, Scope::National, to)?))))
    }

    /// Whether the driver's own signals (not its fallback) have a value for `m`.
    pub fn own_value_published(&self, proxies: &ProxyPanel, p: Province, m: YearMonth) -> bool {
        let scope = self.scope_for(p);
        self.signals.iter().any(|s| proxies.monthly(*s, scope, m).is_some())
    }

    /// Every signal the driver may read: its own, then its fallback.
    pub fn all_signals(&self) -> impl Iterator<Item = (Signal, bool)> + '_ {
        self.signals.iter().map(|s| (*s, false)).chain(self.fallback.iter().map(|s| (*s, true)))
    }

    /// The signals' scope for province `p`.
    pub fn scope(&self, p: Province) -> Scope {
        self.scope_for(p)
    }
}

/// Geometric mean ratio of national fallback signals.
fn fallback_ratio(signals: &[Signal], value: impl Fn(Signal) -> Option<(f64, f64)>) -> Option<f64> {
    let logs: Vec<f64> = signals.iter().filter_map(|s| value(*s)).filter(|(a, b)| *a > 0.0 && *b > 0.0).map(|(a, b)| (b / a).ln()).collect();
    (!logs.is_empty()).then(|| (logs.iter().sum::<f64>() / logs.len() as f64).exp())
}

/// One additive piece of a sector, with the drivers its emissions follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    pub item: InventoryItem,
    /// Empty: the component has no proxy and follows its drift only.
    pub drivers: Vec<DriverSpec>,
}

impl ComponentSpec {
    pub fn sector(&self) -> Sector {
        match self.item {
            InventoryItem::Sector(s) => s,
            InventoryItem::Industry(_) => Sector::Industry,
        }
    }

    pub fn name(&self) -> String {
        match self.item {
            InventoryItem::Sector(s) => s.as_str().to_string(),
            InventoryItem::Industry(g) => format!("industry/{}", g.as_str()),
        }
    }

    /// Every signal of every driver.
    pub fn signals(&self) -> impl Iterator<Item = Signal> + '_ {
        self.drivers.iter().flat_map(|d| d.signals.iter().copied())
    }

    /// The drivers that move month by month (as opposed to annual levels).
    pub fn monthly_drivers(&self) -> impl Iterator<Item = &DriverSpec> + '_ {
        self.drivers.iter().filter(|d| !d.is_annual())
    }
}

/// Tunable settings of the model, with the defaults used by the backtest and the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub components: Vec<ComponentSpec>,
    /// First inventory year whose change (from the year before) is used in fits; all later
    /// years up to the base year are used, so the window holds the years proxies moved most.
    pub fit_first_year: i32,
    /// Prior standard deviation of the drift per year added on top of the proxies.
    pub drift_prior_sd_per_year: f64,
    /// The drift is a trend of recent structure (efficiency, fuel switching), fitted with the
    /// shares held at their estimates on this many latest years; the shares themselves use
    /// every year from `fit_first_year`.
    pub drift_window_years: u32,
    /// Pseudo-observations pulling a province's residual scale towards the sector's.
    pub shrinkage_years: f64,
    /// Relative standard deviation of the base-year inventory itself (activity data).
    pub base_inventory_rel_sd: f64,
    /// Day-to-day proxy noise: relative standard deviation and AR(1) coefficient, by sector.
    pub proxy_noise: BTreeMap<Sector, (f64, f64)>,
    /// Extra relative standard deviation per month a proxy is nowcast ahead, by sector.
    pub nowcast_rel_sd_per_month: BTreeMap<Sector, f64>,
    /// Bounds on each proxy-tracking share φ.
    pub share_bounds: (f64, f64),
    /// In fits, a driver's year-over-year change is taken within ±this (relative): a
    /// statistical break (NBS's 2009 road-freight revision reads +143 %) or a plant opening
    /// in a province with almost none of the product must not decide a share by leverage.
    pub fit_ratio_cap: f64,
    /// A member's log error is kept within this many of its row's standard deviations, and
    /// the row's annual log standard deviation within `max_row_log_sd`: inventory jumps are
    /// heavy-tailed, but a member 300 times its estimate is not a physical possibility.
    pub member_log_error_cap_sd: f64,
    pub max_row_log_sd: f64,
    /// Largest widening of a sector's scales by its tail calibration.
    pub max_tail_factor: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        use IndustryGroup as G;
        use ProxyScope::{National, Provincial};
        use Signal as S;
        let d = |signals: Vec<Signal>, scope, prior_share, prior_sd, basis: &str| DriverSpec {
            signals,
            scope,
            prior_share,
            prior_sd,
            basis: basis.to_string(),
            fallback: Vec::new(),
        };
        let c = |item, drivers| ComponentSpec { item, drivers };
        ModelConfig {
            components: vec![
                c(
                    InventoryItem::Sector(Sector::Power),
                    vec![d(vec![S::ThermalGeneration], Provincial, 0.85, 0.10, "coal and gas burned for electricity scale with thermal generation; heat supply (CHP, ~15 % of the sector) does not")],
                ),
                c(InventoryItem::Industry(G::Ferrous), vec![d(vec![S::PigIron], Provincial, 0.85, 0.10, "blast furnaces (coke, coal injection) make most of the sector's CO2 and scale with pig iron")]),
                c(InventoryItem::Industry(G::NonmetalMinerals), vec![d(vec![S::Cement], Provincial, 0.85, 0.10, "clinker calcination and kiln fuel scale with cement; glass, lime and ceramics the rest")]),
                c(InventoryItem::Industry(G::Nonferrous), vec![d(vec![S::NonferrousMetals], Provincial, 0.70, 0.15, "alumina refining and smelter fuel follow metal output; electrolysis power is not scope 1")]),
                c(
                    InventoryItem::Industry(G::Chemicals),
                    vec![d(vec![S::CausticSoda, S::SodaAsh, S::SulfuricAcid, S::Ethylene, S::Fertilizer], Provincial, 0.60, 0.15, "the basic chemicals NBS counts are the large fuel and feedstock users of the group")],
                ),
                c(InventoryItem::Industry(G::ChemicalFiber), vec![d(vec![S::ChemicalFiber], Provincial, 0.70, 0.15, "fibre plants' fuel scales with output")]),
                c(
                    InventoryItem::Industry(G::OtherIndustry),
                    vec![d(vec![S::ElectricityConsumption], Provincial, 0.50, 0.20, "light and other industry burn fuel in proportion to activity, which electricity use tracks")],
                ),
                c(
                    InventoryItem::Sector(Sector::GroundTransport),
                    vec![
                        d(vec![S::DieselOutput], National, 0.40, 0.15, "diesel (trucks, buses: over half of road CO2) follows the diesel refineries supply"),
                        d(vec![S::HighwayFreight], National, 0.15, 0.10, "road freight ton-km: the month-to-month signal of truck activity (its annual series has statistical breaks)"),
                        d(vec![S::VehicleStock], Provincial, 0.30, 0.15, "gasoline cars scale with the registered fleet"),
                    ],
                ),
                c(
                    InventoryItem::Sector(Sector::Aviation),
                    vec![
                        d(vec![S::KeroseneOutput], National, 0.35, 0.15, "jet fuel is most of the kerosene refined"),
                        d(vec![S::AviationPassengers], National, 0.30, 0.15, "jet fuel follows flights: national passenger-km"),
                        DriverSpec {
                            fallback: vec![S::AviationPassengers],
                            ..d(vec![S::AirportPassengers], Provincial, 0.25, 0.15, "jet fuel follows flights: passengers through the region's airports (national passenger-km before CAAC's regional series begins)")
                        },
                    ],
                ),
                c(
                    InventoryItem::Sector(Sector::Residential),
                    vec![d(vec![S::HeatingArea], Provincial, 0.0, 0.25, "district heating replaces household coal stoves: the sign is left to the data")],
                ),
                c(
                    InventoryItem::Sector(Sector::Other),
                    vec![d(vec![S::ElectricityConsumption], Provincial, 0.50, 0.20, "services, construction and agriculture burn fuel in proportion to activity, which electricity use tracks")],
                ),
            ],
            fit_first_year: 2006,
            drift_prior_sd_per_year: 0.03,
            drift_window_years: 6,
            shrinkage_years: 3.0,
            base_inventory_rel_sd: 0.025,
            proxy_noise: [
                (Sector::Power, (0.03, 0.7)),
                (Sector::Industry, (0.05, 0.8)),
                (Sector::GroundTransport, (0.08, 0.6)),
                (Sector::Residential, (0.10, 0.8)),
                (Sector::Aviation, (0.06, 0.7)),
                (Sector::Other, (0.06, 0.8)),
            ]
            .into_iter()
            .collect(),
            nowcast_rel_sd_per_month: [
                (Sector::Power, 0.04),
                (Sector::Industry, 0.05),
                (Sector::GroundTransport, 0.04),
                (Sector::Residential, 0.03),
                (Sector::Aviation, 0.06),
                (Sector::Other, 0.03),
            ]
            .into_iter()
            .collect(),
            share_bounds: (-0.5, 1.2),
            fit_ratio_cap: 0.3,
            member_log_error_cap_sd: 3.5,
            max_row_log_sd: 0.35,
            max_tail_factor: 1.5,
        }
    }
}

/// The fitted share of one driver, with its prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverFit {
    pub signals: Vec<Signal>,
    /// Posterior share that follows the driver.
    pub phi: f64,
    /// Its posterior standard error.
    pub se: f64,
    pub prior: f64,
    pub prior_sd: f64,
}

/// The fitted form of one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentFit {
    pub component: String,
    pub drivers: Vec<DriverFit>,
    /// Drift per year on top of the drivers, as a log rate, and its standard error.
    pub mu_per_year: f64,
    pub mu_se: f64,
    /// Year-over-year pairs (province × year) in the fit.
    pub n_pairs: usize,
    /// Years those pairs span.
    pub n_years: usize,
    /// Factor by which the correlation of residuals within a year divides the data's weight.
    pub design_effect: f64,
    /// Robust scale of the fit's residuals (relative change).
    pub residual_scale: f64,
}

impl ComponentFit {
    /// Multiplier on the base-year value for driver ratios `r` (one per driver, `None`: the
    /// driver is not known and stays at its base level) `k` years after the base.
    pub fn multiplier(&self, r: &[Option<f64>], k: f64) -> f64 {
        let moved: f64 = self.drivers.iter().zip(r).map(|(d, r)| d.phi * (r.unwrap_or(1.0) - 1.0)).sum();
        (1.0 + moved).max(0.0) * (self.mu_per_year * k).exp()
    }
}

/// Uncertainty scales of one province-sector (log space, one standard deviation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RowScale {
    /// Base-year inventory error.
    pub base_sd: f64,
    /// Province-specific drift of the proxy-to-emissions ratio per year since the base year.
    pub drift_sd_per_year: f64,
    /// Ratio error shared by every province (per year since the base year).
    pub common_sd_per_year: f64,
    /// Residual years behind the province-specific scale.
    pub n_years: usize,
    /// Widening applied so that held-out residuals of the window are covered (≥ 1).
    pub tail_factor: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub base_year: i32,
    /// Years between the base year and the estimates this calibration is for.
    pub horizon_years: u32,
    pub fit_years: (i32, i32),
    pub config: ModelConfig,
    pub fits: Vec<ComponentFit>,
    #[serde(with = "scales_serde")]
    pub scales: BTreeMap<(Province, Sector), RowScale>,
    pub inventory_source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("the inventory has no values for base year {0}")]
    NoBaseYear(i32),
    #[error("too little history before base year {base}: need at least {need} earlier inventory years, found {found}")]
    TooLittleHistory { base: i32, need: u32, found: usize },
}

impl Calibration {
    pub fn component_fit(&self, idx: usize) -> &ComponentFit {
        &self.fits[idx]
    }

    pub fn scale(&self, p: Province, s: Sector) -> Option<&RowScale> {
        self.scales.get(&(p, s))
    }
}

/// One observation of a component: province, end year, driver ratios, emissions at the
/// start and at the end of a `k`-year step.
struct Pair {
    year: i32,
    ratios: Vec<Option<f64>>,
    e0: f64,
    e1: f64,
}

fn pairs(spec: &ComponentSpec, inv: &InventoryPanel, proxies: &ProxyPanel, years: std::ops::RangeInclusive<i32>, k: i32) -> Vec<Pair> {
    let mut out = Vec::new();
    for y in years {
        for p in Province::ALL {
            let (Some(e0), Some(e1)) = (inv.get(p, spec.item, y - k), inv.get(p, spec.item, y)) else {
                continue;
            };
            // Tiny items (< 0.05 Mt) make ratios meaningless.
            if e0 < 0.05 || e1 < 0.0 {
                continue;
            }
            let ratios = spec.drivers.iter().map(|d| d.annual_ratio(proxies, p, y - k, y)).collect();
            out.push(Pair { year: y, ratios, e0, e1 });
        }
    }
    out
}

/// Solves the small symmetric positive definite system `a · x = b` (Cholesky).
fn solve_spd(a: &[Vec<f64>], b: &[f64]) -> Option<(Vec<f64>, Vec<Vec<f64>>)> {
    let n = b.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i][j] - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>();
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i][i] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    let solve = |rhs: &[f64]| -> Vec<f64> {
        let mut y = vec![0.0; n];
        for i in 0..n {
            y[i] = (rhs[i] - (0..i).map(|k| l[i][k] * y[k]).sum::<f64>()) / l[i][i];
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            x[i] = (y[i] - (i + 1..n).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
        }
        x
    };
    let x = solve(b);
    // The inverse, for the posterior covariance.
    let inv: Vec<Vec<f64>> = (0..n).map(|c| solve(&(0..n).map(|r| if r == c { 1.0 } else { 0.0 }).collect::<Vec<_>>())).collect();
    Some((x, inv))
}

/// The posterior fit of one component: Huber-weighted least squares on relative changes,
/// with Gaussian priors on the shares and the drift, the data's weight divided by the design
/// effect of residuals clustered by year.
fn fit_component(spec: &ComponentSpec, data: &[Pair], cfg: &ModelConfig, k: i32) -> ComponentFit {
    let nd = spec.drivers.len();
    let np = nd + 1;
    // Design: driver columns (ratio − 1; an unknown ratio says nothing, 0), then the drift.
    let cap = cfg.fit_ratio_cap;
    let x: Vec<Vec<f64>> =
        data.iter().map(|d| d.ratios.iter().map(|r| r.map(|r| (r - 1.0).clamp(-cap, cap)).unwrap_or(0.0)).chain(std::iter::once(1.0)).collect()).collect();
    let y: Vec<f64> = data.iter().map(|d| d.e1 / d.e0 - 1.0).collect();
    let prior_mean: Vec<f64> = spec.drivers.iter().map(|d| d.prior_share).chain(std::iter::once(0.0)).collect();
    let drift_sd = cfg.drift_prior_sd_per_year * k as f64;
    let prior_prec: Vec<f64> = spec.drivers.iter().map(|d| 1.0 / (d.prior_sd * d.prior_sd).max(1e-12)).chain(std::iter::once(1.0 / (drift_sd * drift_sd))).collect();
    let mut theta = prior_mean.clone();
    let mut w = vec![1.0; data.len()];
    let (mut scale, mut deff) = (0.05, 1.0);
    let mut cov = vec![vec![0.0; np]; np];
    for _ in 0..30 {
        let resid: Vec<f64> = (0..data.len()).map(|i| y[i] - (0..np).map(|j| x[i][j] * theta[j]).sum::<f64>()).collect();
        scale = mad(&resid).max(0.005);
        deff = design_effect(data, &resid);
        let c = 1.345 * scale;
        for i in 0..data.len() {
            w[i] = if resid[i].abs() <= c { 1.0 } else { c / resid[i].abs() };
        }
        let noise = scale * scale * deff;
        let mut a = vec![vec![0.0; np]; np];
        let mut b = vec![0.0; np];
        for i in 0..data.len() {
            for r in 0..np {
                b[r] += w[i] * x[i][r] * y[i] / noise;
                for col in 0..np {
                    a[r][col] += w[i] * x[i][r] * x[i][col] / noise;
                }
            }
        }
        for j in 0..np {
            a[j][j] += prior_prec[j];
            b[j] += prior_prec[j] * prior_mean[j];
        }
        let Some((next, inv)) = solve_spd(&a, &b) else { break };
        let step = next.iter().zip(&theta).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        theta = next;
        cov = inv;
        if step < 1e-7 {
            break;
        }
    }
    let drivers = spec
        .drivers
        .iter()
        .enumerate()
        .map(|(j, d)| DriverFit {
            signals: d.signals.clone(),
            phi: theta[j].clamp(cfg.share_bounds.0, cfg.share_bounds.1),
            se: cov[j][j].max(0.0).sqrt(),
            prior: d.prior_share,
            prior_sd: d.prior_sd,
        })
        .collect();
    let mut years: Vec<i32> = data.iter().map(|d| d.year).collect();
    years.sort_unstable();
    years.dedup();
    // The drift, on the latest years with the shares held: a Huber location of what the
    // drivers leave unexplained, shrunk towards zero by its prior.
    let last_year = data.iter().map(|d| d.year).max().unwrap_or(0);
    let recent: Vec<usize> = (0..data.len()).filter(|i| data[*i].year > last_year - cfg.drift_window_years as i32).collect();
    let (a, a_se) = if recent.len() >= 5 {
        let left: Vec<f64> = recent.iter().map(|i| y[*i] - (0..nd).map(|j| x[*i][j] * theta[j]).sum::<f64>()).collect();
        let s = mad(&left).max(0.005);
        let years_in = {
            let mut v: Vec<i32> = recent.iter().map(|i| data[*i].year).collect();
            v.sort_unstable();
            v.dedup();
            v.len().max(1)
        };
        // Residuals of a year share one shock: the drift is known from the years, not the pairs.
        let m = recent.len() as f64 / years_in as f64;
        let noise = s * s * (1.0 + (m - 1.0) * ((deff - 1.0) / (data.len() as f64 / years.len().max(1) as f64 - 1.0).max(1.0)).clamp(0.0, 1.0));
        let mut loc = median(&left);
        for _ in 0..30 {
            let c = 1.345 * s;
            let w: Vec<f64> = left.iter().map(|r| if (r - loc).abs() <= c { 1.0 } else { c / (r - loc).abs() }).collect();
            let sw: f64 = w.iter().sum();
            let prec = sw / noise + prior_prec[nd];
            let next = (left.iter().zip(&w).map(|(r, w)| w * r).sum::<f64>() / noise) / prec;
            let done = (next - loc).abs() < 1e-9;
            loc = next;
            if done {
                break;
            }
        }
        let sw: f64 = left.iter().map(|r| if (r - loc).abs() <= 1.345 * s { 1.0 } else { 1.345 * s / (r - loc).abs() }).sum();
        (loc, (1.0 / (sw / noise + prior_prec[nd])).sqrt())
    } else {
        (theta[nd], cov[nd][nd].max(0.0).sqrt())
    };
    ComponentFit {
        component: spec.name(),
        drivers,
        mu_per_year: (1.0 + a).max(0.5).ln() / k as f64,
        mu_se: a_se / k as f64,
        n_pairs: data.len(),
        n_years: years.len(),
        design_effect: deff,
        residual_scale: scale,
    }
}

/// The design effect of residuals clustered by year: 1 + (m − 1)·ICC, with `m` the mean
/// number of provinces per year and ICC the share of residual variance common to a year.
fn design_effect(data: &[Pair], resid: &[f64]) -> f64 {
    let mut by_year: BTreeMap<i32, Vec<f64>> = BTreeMap::new();
    for (d, r) in data.iter().zip(resid) {
        by_year.entry(d.year).or_default().push(*r);
    }
    if by_year.len() < 3 {
        return 1.0;
    }
    let means: Vec<f64> = by_year.values().map(|v| median(v)).collect();
    let m = data.len() as f64 / by_year.len() as f64;
    let total = mad(resid).powi(2);
    let between = {
        let c = median(&means);
        means.iter().map(|x| (x - c).powi(2)).sum::<f64>() / (means.len() - 1) as f64
    };
    let icc = if total > 0.0 { ((between - total / m) / total).clamp(0.0, 1.0) } else { 0.0 };
    1.0 + (m - 1.0) * icc
}

/// Fits every component and the residual scales on inventory years ≤ `base_year`, for
/// estimates `horizon_years` after it: pairs and residual scales use that horizon, so a
/// two-year-ahead band is calibrated on two-year-ahead errors.
pub fn calibrate(
    inventory: &InventoryPanel,
    proxies: &ProxyPanel,
    base_year: i32,
    horizon_years: u32,
    cfg: &ModelConfig,
) -> Result<Calibration, CalibrationError> {
    let k = horizon_years.max(1) as i32;
    // The one place the base-year rule is enforced: nothing later is visible from here on.
    let inv = inventory.up_to(base_year);
    let years = inv.years();
    if !years.contains(&base_year) {
        return Err(CalibrationError::NoBaseYear(base_year));
    }
    let earlier = years.iter().filter(|y| **y < base_year).count();
    let need = 2 + k as u32;
    if earlier < need as usize {
        return Err(CalibrationError::TooLittleHistory { base: base_year, need, found: earlier });
    }
    let first_fit_year = cfg.fit_first_year.max(years[0] + k);
    let fits: Vec<ComponentFit> =
        cfg.components.iter().map(|spec| fit_component(spec, &pairs(spec, &inv, proxies, first_fit_year..=base_year, k), cfg, k)).collect();
    let scales = residual_scales(&inv, proxies, cfg, &fits, first_fit_year..=base_year, k);
    Ok(Calibration {
        base_year,
        horizon_years: k as u32,
        fit_years: (first_fit_year - k, base_year),
        config: cfg.clone(),
        fits,
        scales,
        inventory_source: inv.source.clone(),
    })
}

/// Sector-level `k`-year residuals of the fitted components, split into a part common to all
/// provinces in a year and a province-specific part, both estimated robustly.
fn residual_scales(
    inv: &InventoryPanel,
    proxies: &ProxyPanel,
    cfg: &ModelConfig,
    fits: &[ComponentFit],
    years: std::ops::RangeInclusive<i32>,
    k: i32,
) -> BTreeMap<(Province, Sector), RowScale> {
    let mut out = BTreeMap::new();
    for sector in Sector::ALL {
        let comps: Vec<(usize, &ComponentSpec)> = cfg.components.iter().enumerate().filter(|(_, c)| c.sector() == sector).collect();
        // residual[p][y]
        let mut resid: BTreeMap<Province, BTreeMap<i32, f64>> = BTreeMap::new();
        for y in years.clone() {
            for p in Province::ALL {
                let (Some(t0), Some(t1)) = (inv.sector(p, sector, y - k), inv.sector(p, sector, y)) else {
                    continue;
                };
                if t0 < 0.05 || t1 <= 0.0 {
                    continue;
                }
                let mut pred = 0.0;
                for (i, c) in &comps {
                    let e0 = inv.get(p, c.item, y - k).unwrap_or(0.0);
                    let r: Vec<Option<f64>> = c.drivers.iter().map(|d| d.annual_ratio(proxies, p, y - k, y)).collect();
                    pred += e0 * fits[*i].multiplier(&r, k as f64);
                }
                if pred > 0.0 {
                    resid.entry(p).or_default().insert(y, (t1 / pred).ln());
                }
            }
        }
        // Common part: the cross-province median residual of each year.
        let mut common_by_year = BTreeMap::new();
        for y in years.clone() {
            let v: Vec<f64> = resid.values().filter_map(|m| m.get(&y).copied()).collect();
            if v.len() >= 5 {
                common_by_year.insert(y, median(&v));
            }
        }
        let common: Vec<f64> = common_by_year.values().copied().collect();
        // Robust: a median absolute level, scaled to a normal sd.
        let common_sd = if common.is_empty() { 0.0 } else { 1.4826 * median(&common.iter().map(|c| c.abs()).collect::<Vec<_>>()) };
        let idio: BTreeMap<Province, Vec<f64>> = resid
            .iter()
            .map(|(p, m)| (*p, m.iter().map(|(y, r)| r - common_by_year.get(y).copied().unwrap_or(0.0)).collect()))
            .collect();
        let pooled: Vec<f64> = idio.values().flatten().copied().collect();
        let pooled_sd = mad(&pooled).max(0.005);
        // A province's own residuals, each winsorised at 3 pooled standard deviations so that
        // one inventory jump does not become a scale, shrunk towards the pooled scale.
        let cap = 3.0 * pooled_sd;
        let n0 = cfg.shrinkage_years;
        let shrunk_sd = |u: &[f64], leave_out: Option<usize>| -> f64 {
            let kept: Vec<f64> = u.iter().enumerate().filter(|(i, _)| Some(*i) != leave_out).map(|(_, x)| x.clamp(-cap, cap)).collect();
            let n = kept.len() as f64;
            let ms = if kept.is_empty() { 0.0 } else { kept.iter().map(|x| x * x).sum::<f64>() / n };
            ((n * ms + n0 * pooled_sd * pooled_sd) / (n + n0)).sqrt()
        };
        // Tail calibration: each residual over its province's scale estimated without it
        // (leave-one-out); the sector's scales widen by the factor that puts 95 % of those
        // inside ±1.96, bounded to 1-1.5 (the scales themselves are robust, so one jump
        // widens a little, never by a multiple).
        let mut standardised = Vec::new();
        for u in idio.values() {
            for i in 0..u.len() {
                standardised.push(u[i].abs() / shrunk_sd(u, Some(i)));
            }
        }
        let tail_factor = if standardised.len() >= 20 { (robust::quantile(&standardised, 0.95) / 1.96).clamp(1.0, cfg.max_tail_factor) } else { 1.0 };
        for p in Province::ALL {
            let u: Vec<f64> = idio.get(&p).cloned().unwrap_or_default();
            let idio_sd = (shrunk_sd(&u, None) * tail_factor).min(cfg.max_row_log_sd);
            let base_sd = cfg.base_inventory_rel_sd.min(idio_sd * 0.9);
            // The k-year residual mixes drift with inventory noise; keep a floor on drift.
            let drift_sd = (idio_sd * idio_sd - base_sd * base_sd).max((0.3 * idio_sd).powi(2)).sqrt();
            // Scales are per year since the base year: k steps rebuild the k-year error.
            let per_year = (k as f64).sqrt();
            out.insert(
                (p, sector),
                RowScale {
                    base_sd,
                    drift_sd_per_year: drift_sd / per_year,
                    common_sd_per_year: common_sd.min(cfg.max_row_log_sd) / per_year,
                    n_years: u.len(),
                    tail_factor,
                },
            );
        }
    }
    out
}

/// JSON has no tuple keys: scales travel as a list of rows.
mod scales_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Entry {
        province: Province,
        sector: Sector,
        #[serde(flatten)]
        scale: RowScale,
    }

    pub fn serialize<S: Serializer>(m: &BTreeMap<(Province, Sector), RowScale>, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<Entry> = m.iter().map(|((p, sec), sc)| Entry { province: *p, sector: *sec, scale: *sc }).collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<(Province, Sector), RowScale>, D::Error> {
        let v = Vec::<Entry>::deserialize(d)?;
        Ok(v.into_iter().map(|e| ((e.province, e.sector), e.scale)).collect())
    }
}

#[cfg(test)]
mod tests;

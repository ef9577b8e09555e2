//! Calibration of proxy-to-emission models against inventories up to a base year.
//!
//! Each sector is a sum of components (power has one; industry has one per energy-intensive
//! group). A component's emissions in year `Y+k` are
//!
//! ```text
//! E[c,Y+k] = Inv[c,Y] · ((1 − φ_c) + φ_c · X[c,Y+k] / X[c,Y]) · exp(μ_c · k)
//! ```
//!
//! where `X` is the component's proxy index (geometric mean of its signals' ratios), `φ_c` the
//! share of emissions that tracks the proxy and `μ_c` a drift per year. The affine form keeps
//! monthly and daily values additive: spreading the annual ratio over months by base-year
//! proxy shares gives the same annual total. `φ` and `μ` are fitted with a Huber regression on
//! year-on-year changes over a window of years ending at the base year, and which of them is
//! free is chosen by one-step-ahead out-of-sample error inside that window. Nothing after the
//! base year is ever read: `calibrate` drops later inventory years before it starts.
//!
//! The residuals of the chosen model give the uncertainty scales: a part common to all
//! provinces in a year (shared ratio or emission-factor error) and a province-specific part,
//! shrunk towards the sector's pooled scale.

pub mod robust;

use crate::domain::{IndustryGroup, Province, Sector};
use crate::inventory::{InventoryItem, InventoryPanel};
use crate::proxy::{ProxyPanel, Scope, Signal};
use crate::series::YearMonth;
use robust::{Free, huber_fit, mad, median};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Proxies are provincial, or national indices applied to every province.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyScope {
    Provincial,
    National,
}

/// One additive piece of a sector, driven by a proxy index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentSpec {
    pub item: InventoryItem,
    /// Signals whose ratios are averaged (geometrically); empty means no proxy.
    pub signals: Vec<Signal>,
    pub scope: ProxyScope,
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

    fn scope_for(&self, p: Province) -> Scope {
        match self.scope {
            ProxyScope::Provincial => Scope::Province(p),
            ProxyScope::National => Scope::National,
        }
    }

    /// Ratio of the proxy index between two periods, as the geometric mean of each signal's
    /// ratio over the signals present (> 0) in both. `None` when no signal is usable.
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
        self.ratio_by(p, |s, sc| Some((proxies.annual(s, sc, from)?, proxies.annual(s, sc, to)?)))
    }

    pub fn monthly_ratio(&self, proxies: &ProxyPanel, p: Province, from: YearMonth, to: YearMonth) -> Option<f64> {
        self.ratio_by(p, |s, sc| Some((proxies.monthly(s, sc, from)?, proxies.monthly(s, sc, to)?)))
    }
}

/// Tunable settings of the model, with the defaults used by the backtest and the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub components: Vec<ComponentSpec>,
    /// Number of year-on-year pairs used for fitting, ending at the base year.
    pub fit_window_years: u32,
    /// Origins used to choose between model forms by one-step-ahead error.
    pub selection_origins: u32,
    /// Pseudo-observations pulling a province's residual scale towards the sector's.
    pub shrinkage_years: f64,
    /// Relative standard deviation of the base-year inventory itself (activity data).
    pub base_inventory_rel_sd: f64,
    /// Day-to-day proxy noise: relative standard deviation and AR(1) coefficient, by sector.
    pub proxy_noise: BTreeMap<Sector, (f64, f64)>,
    /// Extra relative standard deviation per month a proxy is nowcast ahead, by sector.
    pub nowcast_rel_sd_per_month: BTreeMap<Sector, f64>,
    /// Bounds on the proxy-tracking share φ.
    pub phi_bounds: (f64, f64),
}

impl Default for ModelConfig {
    fn default() -> Self {
        use IndustryGroup as G;
        use Signal as S;
        let prov = |item, signals: Vec<Signal>| ComponentSpec { item, signals, scope: ProxyScope::Provincial };
        let nat = |item, signals: Vec<Signal>| ComponentSpec { item, signals, scope: ProxyScope::National };
        ModelConfig {
            components: vec![
                prov(InventoryItem::Sector(Sector::Power), vec![S::ThermalGeneration]),
                prov(InventoryItem::Industry(G::Ferrous), vec![S::PigIron]),
                prov(InventoryItem::Industry(G::NonmetalMinerals), vec![S::Cement]),
                prov(InventoryItem::Industry(G::Nonferrous), vec![S::NonferrousMetals]),
                prov(
                    InventoryItem::Industry(G::Chemicals),
                    vec![S::CausticSoda, S::SodaAsh, S::SulfuricAcid, S::Ethylene, S::Fertilizer],
                ),
                prov(InventoryItem::Industry(G::ChemicalFiber), vec![S::ChemicalFiber]),
                prov(InventoryItem::Industry(G::OtherIndustry), vec![]),
                nat(InventoryItem::Sector(Sector::GroundTransport), vec![S::HighwayFreight, S::HighwayPassengers]),
                nat(InventoryItem::Sector(Sector::Aviation), vec![S::AviationPassengers]),
                prov(InventoryItem::Sector(Sector::Residential), vec![]),
                prov(InventoryItem::Sector(Sector::Other), vec![]),
            ],
            fit_window_years: 8,
            selection_origins: 4,
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
            phi_bounds: (0.0, 1.2),
        }
    }
}

/// The fitted form of one component.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ComponentFit {
    /// Share of emissions that tracks the proxy ratio.
    pub phi: f64,
    /// Drift per year, as a log rate.
    pub mu_per_year: f64,
    /// Which parameters were free in the chosen form.
    pub phi_free: bool,
    pub mu_free: bool,
    /// Year-on-year pairs used in the final fit.
    pub n_pairs: usize,
    /// Median one-step-ahead absolute log error of the chosen form (selection score).
    pub selection_abs_log_err: f64,
}

impl ComponentFit {
    /// Multiplier on the base-year value for proxy ratio `r` and `k` years after the base.
    pub fn multiplier(&self, r: Option<f64>, k: f64) -> f64 {
        let r = r.unwrap_or(1.0);
        ((1.0 - self.phi) + self.phi * r) * (self.mu_per_year * k).exp()
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

/// `k`-year pairs of a component ending in `years`: (province, end year, proxy ratio,
/// emissions at the start, emissions at the end).
fn pairs(
    spec: &ComponentSpec,
    inv: &InventoryPanel,
    proxies: &ProxyPanel,
    years: std::ops::RangeInclusive<i32>,
    k: i32,
) -> Vec<(Province, i32, Option<f64>, f64, f64)> {
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
            let r = if spec.signals.is_empty() { None } else { spec.annual_ratio(proxies, p, y - k, y) };
            out.push((p, y, r, e0, e1));
        }
    }
    out
}

fn fit_form(
    data: &[(Province, i32, Option<f64>, f64, f64)],
    free: Free,
    bounds: (f64, f64),
    k: i32,
) -> (f64, f64) {
    // Observations without a proxy ratio only inform the drift.
    let x: Vec<f64> = data.iter().map(|d| d.2.map(|r| r - 1.0).unwrap_or(0.0)).collect();
    let y: Vec<f64> = data.iter().map(|d| d.4 / d.3 - 1.0).collect();
    let (b, a) = huber_fit(&x, &y, free);
    let phi = if free.slope { b.clamp(bounds.0, bounds.1) } else { 0.0 };
    // Drift as a log rate per year.
    let mu = if free.intercept { (1.0 + a).max(0.5).ln() / k as f64 } else { 0.0 };
    (phi, mu)
}

/// Fits every component and the residual scales on inventory years ≤ `base_year`, for
/// estimates `horizon_years` after it: pairs, form selection and residual scales all use
/// that horizon, so a two-year-ahead band is calibrated on two-year-ahead errors.
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
    let need = cfg.fit_window_years.min(3) + k as u32 - 1;
    if earlier < need as usize {
        return Err(CalibrationError::TooLittleHistory { base: base_year, need, found: earlier });
    }
    let first_fit_year = (base_year - cfg.fit_window_years as i32 + 1).max(years[0] + k);

    let mut fits = Vec::new();
    for spec in &cfg.components {
        let has_proxy = !spec.signals.is_empty();
        let mut forms = vec![Free { slope: false, intercept: false }, Free { slope: false, intercept: true }];
        if has_proxy {
            forms.push(Free { slope: true, intercept: false });
            forms.push(Free { slope: true, intercept: true });
        }
        // Choose the form by one-step-ahead error at origins inside the window.
        let mut best: Option<(f64, Free)> = None;
        for form in &forms {
            let mut errs = Vec::new();
            for origin in (base_year - k - cfg.selection_origins as i32 + 1)..=(base_year - k) {
                let start = (origin - cfg.fit_window_years as i32 + 1).max(years[0] + k);
                if origin < start + 1 {
                    continue;
                }
                let train = pairs(spec, &inv, proxies, start..=origin, k);
                if train.len() < 5 {
                    continue;
                }
                let (phi, mu) = fit_form(&train, *form, cfg.phi_bounds, k);
                let fit = ComponentFit { phi, mu_per_year: mu, phi_free: form.slope, mu_free: form.intercept, n_pairs: 0, selection_abs_log_err: 0.0 };
                for (_, _, r, e0, e1) in pairs(spec, &inv, proxies, (origin + k)..=(origin + k), k) {
                    let pred = e0 * fit.multiplier(r, k as f64);
                    if pred > 0.0 && e1 > 0.0 {
                        errs.push((e1 / pred).ln().abs());
                    }
                }
            }
            let score = if errs.is_empty() { f64::INFINITY } else { median(&errs) };
            // Prefer the simpler form unless the richer one is clearly better (1 %).
            let better = match best {
                None => true,
                Some((b, _)) => score < b * 0.99,
            };
            if better {
                best = Some((score, *form));
            }
        }
        let (score, form) = best.unwrap_or((f64::NAN, Free { slope: false, intercept: false }));
        let data = pairs(spec, &inv, proxies, first_fit_year..=base_year, k);
        let (phi, mu) = fit_form(&data, form, cfg.phi_bounds, k);
        fits.push(ComponentFit {
            phi,
            mu_per_year: mu,
            phi_free: form.slope,
            mu_free: form.intercept,
            n_pairs: data.len(),
            selection_abs_log_err: score,
        });
    }

    let scales = residual_scales(&inv, proxies, cfg, &fits, first_fit_year..=base_year, k);
    Ok(Calibration {
        base_year,
        horizon_years: k as u32,
        fit_years: (first_fit_year - 1, base_year),
        config: cfg.clone(),
        fits,
        scales,
        inventory_source: inv.source.clone(),
    })
}

/// Sector-level one-step residuals of the fitted components, split into a part common to all
/// provinces in a year and a province-specific part.
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
        let comps: Vec<(usize, &ComponentSpec)> =
            cfg.components.iter().enumerate().filter(|(_, c)| c.sector() == sector).collect();
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
                    let r = if c.signals.is_empty() { None } else { c.annual_ratio(proxies, p, y - k, y) };
                    pred += e0 * fits[*i].multiplier(r, k as f64);
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
        let common_sd = if common_by_year.is_empty() {
            0.0
        } else {
            (common_by_year.values().map(|c| c * c).sum::<f64>() / common_by_year.len() as f64).sqrt()
        };
        let idio: BTreeMap<Province, Vec<f64>> = resid
            .iter()
            .map(|(p, m)| (*p, m.iter().map(|(y, r)| r - common_by_year.get(y).copied().unwrap_or(0.0)).collect()))
            .collect();
        let pooled: Vec<f64> = idio.values().flatten().copied().collect();
        let pooled_sd = mad(&pooled).max(0.005);
        let n0 = cfg.shrinkage_years;
        let shrunk_sd = |u: &[f64], leave_out: Option<usize>| -> f64 {
            let kept: Vec<f64> =
                u.iter().enumerate().filter(|(i, _)| Some(*i) != leave_out).map(|(_, x)| *x).collect();
            let n = kept.len() as f64;
            let ms = if kept.is_empty() { 0.0 } else { kept.iter().map(|x| x * x).sum::<f64>() / n };
            ((n * ms + n0 * pooled_sd * pooled_sd) / (n + n0)).sqrt()
        };
        // Tail calibration: each residual standardised by its province's scale estimated
        // without it (leave-one-out), and the factor that makes 95 % of them fall inside
        // ±1.96. Heavy-tailed inventory jumps widen bands; a well-behaved sector keeps 1.
        let mut standardised = Vec::new();
        for u in idio.values() {
            for i in 0..u.len() {
                standardised.push(u[i].abs() / shrunk_sd(u, Some(i)));
            }
        }
        let tail_factor = if standardised.len() >= 20 {
            (robust::quantile(&standardised, 0.95) / 1.96).clamp(1.0, 2.0)
        } else {
            1.0
        };
        for p in Province::ALL {
            let u = idio.get(&p).cloned().unwrap_or_default();
            let idio_sd = shrunk_sd(&u, None) * tail_factor;
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
                    common_sd_per_year: common_sd / per_year,
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

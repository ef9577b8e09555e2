//! Production-based carbon intensity of each province's electricity, by day: the power
//! sector's CO2 less the part attributed to heat from combined heat and power (CHP), over the
//! province's generation from every source.
//!
//! Production-based means the CO2 of the plants in the province over what they generate.
//! MEE's provincial grid factors are consumption-based (imports carry their origin's
//! intensity), so exporters of coal power read higher here and importers lower.

use crate::domain::Province;
use crate::calibration::robust::quantile_sorted;
use crate::estimate::RowEnsemble;
use crate::proxy::{ProxyPanel, Scope, Signal};
use crate::series::YearMonth;
use chrono::{Datelike, NaiveDate};
use rand::SeedableRng;
use rand::distr::Distribution;
use rand::rngs::ChaCha8Rng;
use statrs::distribution::Normal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Grams per kWh from MtCO2 over GWh: 1e12 g / 1e6 kWh.
pub const GCO2_PER_KWH_PER_MT_PER_GWH: f64 = 1.0e6;

/// Generation sources, thermal first (the only one that emits).
pub const SOURCES: [Signal; 5] = [Signal::ThermalGeneration, Signal::HydroGeneration, Signal::WindGeneration, Signal::SolarGeneration, Signal::NuclearGeneration];

/// How much of the power sector's CO2 belongs to heat, and how it spreads over provinces.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeatAllocation {
    /// National share of power-sector CO2 attributed to CHP heat.
    pub national_share: f64,
    /// Relative standard deviation of that share (one error shared by every province).
    pub relative_sd: f64,
    /// Upper bound of a province's share.
    pub max_share: f64,
    /// Most CO2 a kWh of thermal generation can carry: the least efficient coal units in
    /// service. Power CO2 beyond it (CHP heat the floor-area split missed, or provincial energy
    /// statistics above the national ones) is not the electricity's.
    pub max_thermal_gco2_per_kwh: f64,
    pub source: &'static str,
}

/// Chen et al. (2025, Energies 18:654): IEA's CHP allocation lowers its China grid factor by
/// 10.99 %. Its spread across allocation methods is wide, hence a 25 % relative sd.
pub const CHP_HEAT: HeatAllocation = HeatAllocation {
    national_share: 0.11,
    relative_sd: 0.25,
    max_share: 0.6,
    // 380 gce/kWh (old small subcritical units; the 2019 national average is about 306) ×
    // 29.307 MJ/kgce × 90.7 gCO2/MJ (CEADs' raw coal: 26.32 tC/TJ, oxidation 0.94).
    max_thermal_gco2_per_kwh: 1010.0,
    source: "Chen et al. 2025, Energies 18:654 (IEA CHP allocation lowers China's factor by 10.99 %)",
};

impl HeatAllocation {
    /// Each province's heat share. Half of the national heat CO2 is district heating, spread
    /// by heated floor area; half is industrial steam, spread with thermal generation. With
    /// power CO2 proportional to thermal generation, province p's share is
    /// `H · (½ + ½ · a_p / t_p)` (a, t: national shares of heated area and thermal generation).
    pub fn provincial_shares(&self, heating_area_m2: &BTreeMap<Province, f64>, thermal_gwh: &BTreeMap<Province, f64>) -> BTreeMap<Province, f64> {
        let (ta, tt): (f64, f64) = (heating_area_m2.values().sum(), thermal_gwh.values().sum());
        thermal_gwh
            .iter()
            .filter(|(_, t)| **t > 0.0)
            .map(|(p, t)| {
                let a = if ta > 0.0 { heating_area_m2.get(p).copied().unwrap_or(0.0) / ta } else { 0.0 };
                let t = t / tt;
                (*p, (self.national_share * (0.5 + 0.5 * a / t)).min(self.max_share))
            })
            .collect()
    }

    /// One multiplier of the heat share per member, shared by every province: the national
    /// share's error is common (a seeded stream of its own, so every process draws the same).
    pub fn member_multipliers(&self, seed: u64, members: usize) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4845_4154_5348_4152);
        let n = Normal::standard();
        (0..members).map(|_| (1.0 + self.relative_sd * n.sample(&mut rng)).max(0.0)).collect()
    }
}

/// A day's generation by source, GWh. Sources without data that month are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GenerationMix {
    pub thermal_gwh: f64,
    pub hydro_gwh: Option<f64>,
    pub wind_gwh: Option<f64>,
    pub solar_gwh: Option<f64>,
    pub nuclear_gwh: Option<f64>,
    /// Sources (bit i: hydro, wind, solar, nuclear) whose month had no data and carry the
    /// province's latest month of that source (within a year).
    pub carried_forward: u8,
}

/// Months a non-thermal source's last value stands in for a missing month.
pub const CARRY_FORWARD_MONTHS: u32 = 12;

impl GenerationMix {
    pub fn total_gwh(&self) -> f64 {
        self.thermal_gwh + [self.hydro_gwh, self.wind_gwh, self.solar_gwh, self.nuclear_gwh].iter().flatten().sum::<f64>()
    }

    /// Sources with data, comma-separated (`thermal,hydro,…`); a source carried forward from
    /// an earlier month is marked `(carried)`.
    pub fn sources(&self) -> String {
        let mut s = vec!["thermal".to_string()];
        for (i, (name, v)) in [("hydro", self.hydro_gwh), ("wind", self.wind_gwh), ("solar", self.solar_gwh), ("nuclear", self.nuclear_gwh)].into_iter().enumerate() {
            if v.is_some() {
                s.push(if self.carried_forward & (1 << i) != 0 { format!("{name}(carried)") } else { name.to_string() });
            }
        }
        s.join(",")
    }

    fn scaled(monthly: [Option<f64>; 5], carried_forward: u8, thermal_day: f64, other_day_share: f64) -> GenerationMix {
        let other = |i: usize| monthly[i].map(|v| v * other_day_share);
        GenerationMix { thermal_gwh: thermal_day, hydro_gwh: other(1), wind_gwh: other(2), solar_gwh: other(3), nuclear_gwh: other(4), carried_forward }
    }
}

/// Daily generation of province `p` on `days`, where its month has thermal generation.
/// Thermal generation is the published daily value where there is one, otherwise the month's
/// total shaped like the power sector's daily CO2 path (`power_central`, which thermal
/// generation drives); hydro, wind, solar and nuclear are spread evenly over their month.
pub fn daily_generation(panel: &ProxyPanel, p: Province, days: &[NaiveDate], power_central: &[f64]) -> Vec<Option<GenerationMix>> {
    let scope = Scope::Province(p);
    // Per month: the power path's sum over the days given, and how many days that is.
    let mut month_power: BTreeMap<YearMonth, (f64, f64)> = BTreeMap::new();
    for (d, v) in days.iter().zip(power_central) {
        let e = month_power.entry(YearMonth::new(d.year(), d.month())).or_default();
        e.0 += v;
        e.1 += 1.0;
    }
    days.iter()
        .zip(power_central)
        .map(|(d, v)| {
            let ym = YearMonth::new(d.year(), d.month());
            let value = |s: Signal, m: YearMonth| panel.monthly(s, scope, m).filter(|x| x.is_finite() && *x >= 0.0);
            let mut monthly = SOURCES.map(|s| value(s, ym));
            let thermal_month = monthly[0]?;
            // A month missing from a source the province has (Decembers of some exports, the
            // months after a series ends) is not zero generation: its latest month stands in.
            let mut carried = 0u8;
            for i in 1..SOURCES.len() {
                if monthly[i].is_none() {
                    let mut m = ym;
                    for _ in 0..CARRY_FORWARD_MONTHS {
                        m = m.prev();
                        if let Some(v) = value(SOURCES[i], m) {
                            monthly[i] = Some(v);
                            carried |= 1 << (i - 1);
                            break;
                        }
                    }
                }
            }
            let n = f64::from(ym.days());
            let thermal = match panel.daily(Signal::ThermalGeneration, scope, *d) {
                Some(x) if x.is_finite() && x >= 0.0 => x,
                _ => {
                    // The month's share of its days covered here (a partial month keeps its rate).
                    let (total, covered) = month_power.get(&ym).copied().unwrap_or((0.0, 0.0));
                    if total > 0.0 { thermal_month * (covered / n) * v / total } else { thermal_month / n }
                }
            };
            Some(GenerationMix::scaled(monthly, carried, thermal, 1.0 / n))
        })
        .collect()
}

/// A province's daily power CO2 split into heat and electricity, with generation.
#[derive(Debug, Clone)]
pub struct IntensityPath {
    pub province: Province,
    pub basis: PowerBasis,
    pub days: Vec<NaiveDate>,
    pub generation: Vec<Option<GenerationMix>>,
    /// The province's central heat share of power-sector CO2.
    pub heat_share: f64,
    /// MtCO2 per day.
    pub power_central: Vec<f64>,
    pub electricity_central: Vec<f64>,
    /// `electricity_members[j][d]`, MtCO2 per day.
    pub electricity_members: Vec<Vec<f64>>,
}

/// Splits a province's power-sector ensemble (`power.members[j][d]`, the first
/// `generation.len()` days) into heat and electricity, member by member: electricity gets
/// `1 − heat share` of the CO2, and its central value at most the thermal generation's
/// physical ceiling.
pub fn allocate(power: &RowEnsemble, heat_share: f64, multipliers: &[f64], generation: Vec<Option<GenerationMix>>, allocation: &HeatAllocation) -> IntensityPath {
    let n = generation.len();
    let share = |v: f64, m: f64| v * (1.0 - (heat_share * m).clamp(0.0, allocation.max_share));
    // Where the central value passes the thermal ceiling, the day is scaled down to it, members
    // with it: clipping each member at the ceiling would leave a band of zero width exactly
    // where the inventory and the physics disagree.
    let scale: Vec<f64> = (0..n)
        .map(|d| {
            let ceiling = generation[d].map_or(f64::INFINITY, |g| g.thermal_gwh * allocation.max_thermal_gco2_per_kwh / GCO2_PER_KWH_PER_MT_PER_GWH);
            let central = share(power.central[d], 1.0);
            if central > ceiling { ceiling / central } else { 1.0 }
        })
        .collect();
    IntensityPath {
        province: power.province,
        basis: PowerBasis::Estimate,
        days: power.days[..n].to_vec(),
        heat_share,
        power_central: power.central[..n].to_vec(),
        electricity_central: power.central[..n].iter().enumerate().map(|(d, v)| share(*v, 1.0) * scale[d]).collect(),
        electricity_members: power.members.iter().zip(multipliers).map(|(m, k)| m[..n].iter().enumerate().map(|(d, v)| share(*v, *k) * scale[d]).collect()).collect(),
        generation,
    }
}

/// Where a province's power CO2 comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerBasis {
    /// The power sector's estimate (calibrated on the province's inventory).
    Estimate,
    /// No inventory (Tibet): thermal generation times the thermal factor of the provinces that
    /// have one (the parent zone's value, as Electricity Maps falls back from zone to parent).
    NationalThermalFactor,
    /// A sum of provinces of both kinds.
    Mixed,
}

impl PowerBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerBasis::Estimate => "estimate",
            PowerBasis::NationalThermalFactor => "national_thermal_factor",
            PowerBasis::Mixed => "mixed",
        }
    }
    /// The basis of a sum of two.
    pub fn with(self, other: PowerBasis) -> PowerBasis {
        if self == other { self } else { PowerBasis::Mixed }
    }
}

/// Power-sector CO2 per GWh of thermal generation over the provinces with an estimate: their
/// pooled ratio, and the spread (log sd) of the provincial ratios around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThermalFactor {
    pub mtco2_per_gwh: f64,
    pub log_sd: f64,
}

impl ThermalFactor {
    /// From (power MtCO2, thermal GWh) of each province over the same days; `None` with fewer
    /// than three provinces.
    pub fn from_provinces(pairs: &[(f64, f64)]) -> Option<ThermalFactor> {
        let usable: Vec<(f64, f64)> = pairs.iter().copied().filter(|(c, t)| *c > 0.0 && *t > 0.0).collect();
        if usable.len() < 3 {
            return None;
        }
        let (c, t): (f64, f64) = usable.iter().fold((0.0, 0.0), |a, (c, t)| (a.0 + c, a.1 + t));
        let pooled = c / t;
        let logs: Vec<f64> = usable.iter().map(|(c, t)| (c / t / pooled).ln()).collect();
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        let var = logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (logs.len() - 1) as f64;
        Some(ThermalFactor { mtco2_per_gwh: pooled, log_sd: var.sqrt() })
    }

    /// The intensity path of a province without a power estimate: power CO2 is its thermal
    /// generation times the factor; each member draws the province's factor once (the spread
    /// of the provinces' factors), and shares the heat multiplier of every other province.
    pub fn path(&self, province: Province, days: &[NaiveDate], generation: Vec<Option<GenerationMix>>, heat_share: f64, heat_multipliers: &[f64], seed: u64, allocation: &HeatAllocation) -> IntensityPath {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5448_4552_4d41_4c46 ^ u64::from(province.nbs_code()));
        let n = Normal::standard();
        let power: Vec<f64> = generation.iter().map(|g| g.map_or(0.0, |g| g.thermal_gwh * self.mtco2_per_gwh)).collect();
        let share = |m: f64| 1.0 - (heat_share * m).clamp(0.0, allocation.max_share);
        IntensityPath {
            province,
            basis: PowerBasis::NationalThermalFactor,
            days: days.to_vec(),
            heat_share,
            electricity_central: power.iter().map(|v| v * share(1.0)).collect(),
            electricity_members: heat_multipliers
                .iter()
                .map(|k| {
                    let f = (self.log_sd * n.sample(&mut rng)).exp();
                    power.iter().map(|v| v * f * share(*k)).collect()
                })
                .collect(),
            power_central: power,
            generation,
        }
    }
}

/// Electricity CO2 (central and per member) over generation: one province-day, or any sum of
/// them (a national day, a province-year). Ratios of sums, member by member.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntensitySum {
    pub power_mtco2: f64,
    pub electricity_mtco2: f64,
    pub electricity_members_mtco2: Vec<f64>,
    pub generation_gwh: f64,
    pub thermal_gwh: f64,
    /// Where the power CO2 of the days summed comes from (`None`: nothing summed).
    pub basis: Option<PowerBasis>,
}

impl IntensitySum {
    /// Adds day `d` of `path` (nothing when the day has no generation).
    pub fn add_day(&mut self, path: &IntensityPath, d: usize) {
        let Some(g) = path.generation[d] else { return };
        self.power_mtco2 += path.power_central[d];
        self.electricity_mtco2 += path.electricity_central[d];
        self.electricity_members_mtco2.resize(path.electricity_members.len(), 0.0);
        for (acc, m) in self.electricity_members_mtco2.iter_mut().zip(&path.electricity_members) {
            *acc += m[d];
        }
        self.generation_gwh += g.total_gwh();
        self.thermal_gwh += g.thermal_gwh;
        self.merge_basis(path.basis);
    }

    pub fn add(&mut self, other: &IntensitySum) {
        self.power_mtco2 += other.power_mtco2;
        self.electricity_mtco2 += other.electricity_mtco2;
        self.electricity_members_mtco2.resize(other.electricity_members_mtco2.len(), 0.0);
        for (a, b) in self.electricity_members_mtco2.iter_mut().zip(&other.electricity_members_mtco2) {
            *a += b;
        }
        self.generation_gwh += other.generation_gwh;
        self.thermal_gwh += other.thermal_gwh;
        if let Some(o) = other.basis {
            self.merge_basis(o);
        }
    }

    fn merge_basis(&mut self, b: PowerBasis) {
        self.basis = Some(self.basis.map_or(b, |a| a.with(b)));
    }

    /// Intensity of each member, gCO2/kWh.
    pub fn members_gco2_per_kwh(&self) -> Vec<f64> {
        self.electricity_members_mtco2.iter().map(|e| e / self.generation_gwh * GCO2_PER_KWH_PER_MT_PER_GWH).collect()
    }

    /// Central intensity and its band, gCO2/kWh; `None` without generation.
    pub fn band(&self) -> Option<IntensityBand> {
        if self.generation_gwh <= 0.0 {
            return None;
        }
        let mut m = self.members_gco2_per_kwh();
        m.sort_by(|a, b| a.total_cmp(b));
        Some(IntensityBand {
            central: self.electricity_mtco2 / self.generation_gwh * GCO2_PER_KWH_PER_MT_PER_GWH,
            p2_5: quantile_sorted(&m, 0.025),
            p50: quantile_sorted(&m, 0.5),
            p97_5: quantile_sorted(&m, 0.975),
        })
    }
}

/// gCO2/kWh.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IntensityBand {
    pub central: f64,
    pub p2_5: f64,
    pub p50: f64,
    pub p97_5: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::{MonthInfo, SourceType};
    use proptest::prelude::*;

    fn power_row(p: Province, days: &[NaiveDate], members: Vec<Vec<f64>>) -> RowEnsemble {
        let central: Vec<f64> = (0..days.len()).map(|d| members.iter().map(|m| m[d]).sum::<f64>() / members.len() as f64).collect();
        RowEnsemble {
            province: p,
            sector: crate::domain::Sector::Power,
            days: days.to_vec(),
            day_month: vec![0; days.len()],
            months: vec![MonthInfo { month: YearMonth::new(2021, 1), source_type: SourceType::Proxy, coverage: 1.0, nowcast_months: 0, proxies: Vec::new(), data_through: None }],
            central,
            members,
        }
    }

    fn january() -> Vec<NaiveDate> {
        (1..=31).map(|d| NaiveDate::from_ymd_opt(2021, 1, d).unwrap()).collect()
    }

    #[test]
    fn provinces_with_much_district_heating_for_their_thermal_power_carry_more_heat() {
        let area = BTreeMap::from([(Province::Beijing, 9.0e8), (Province::Guangdong, 0.0), (Province::Shandong, 1.5e9)]);
        let thermal = BTreeMap::from([(Province::Beijing, 4.0e4), (Province::Guangdong, 4.0e5), (Province::Shandong, 5.0e5)]);
        let h = CHP_HEAT.provincial_shares(&area, &thermal);
        assert!((h[&Province::Guangdong] - 0.055).abs() < 1e-12, "no district heating: half the national share");
        assert!(h[&Province::Beijing] > h[&Province::Shandong] && h[&Province::Shandong] > h[&Province::Guangdong]);
        assert!(h.values().all(|x| *x <= CHP_HEAT.max_share));
        // Weighted by thermal generation the shares return the national share (below the cap).
        let weighted: f64 = h.iter().map(|(p, x)| x * thermal[p]).sum::<f64>() / thermal.values().sum::<f64>();
        assert!((weighted - CHP_HEAT.national_share).abs() < 1e-12, "{weighted}");
    }

    #[test]
    fn daily_generation_follows_the_power_path_and_sums_to_the_month() {
        let mut panel = ProxyPanel::new();
        let s = Scope::Province(Province::Yunnan);
        panel.set_monthly(Signal::ThermalGeneration, s, YearMonth::new(2021, 1), 3100.0);
        panel.set_monthly(Signal::HydroGeneration, s, YearMonth::new(2021, 1), 6200.0);
        let days = january();
        let power: Vec<f64> = (0..31).map(|i| 1.0 + (i % 7) as f64 * 0.1).collect();
        let g = daily_generation(&panel, Province::Yunnan, &days, &power);
        let thermal: f64 = g.iter().map(|x| x.unwrap().thermal_gwh).sum();
        let hydro: f64 = g.iter().map(|x| x.unwrap().hydro_gwh.unwrap()).sum();
        assert!((thermal - 3100.0).abs() < 1e-9 && (hydro - 6200.0).abs() < 1e-9);
        assert!((g[6].unwrap().thermal_gwh / g[0].unwrap().thermal_gwh - 1.6).abs() < 1e-12, "thermal shaped like power CO2");
        assert_eq!(g[0].unwrap().sources(), "thermal,hydro");
        // No thermal generation that month: no intensity.
        let feb: Vec<NaiveDate> = (1..=3).map(|d| NaiveDate::from_ymd_opt(2021, 2, d).unwrap()).collect();
        assert!(daily_generation(&panel, Province::Yunnan, &feb, &[1.0; 3]).iter().all(Option::is_none));
        // A source missing in a month with thermal data carries its latest month.
        panel.set_monthly(Signal::ThermalGeneration, s, YearMonth::new(2021, 2), 2800.0);
        let g = daily_generation(&panel, Province::Yunnan, &feb, &[1.0; 3]);
        assert_eq!(g[0].unwrap().hydro_gwh, Some(6200.0 / 28.0));
        assert_eq!(g[0].unwrap().sources(), "thermal,hydro(carried)");
    }

    proptest! {
        /// Intensity × generation is the electricity CO2, member by member, for a day and for
        /// any sum of days and provinces; heat only ever takes CO2 away.
        #[test]
        fn intensity_times_generation_is_the_allocated_co2_member_by_member(
            seed in 0u64..1000,
            heat in 0.0f64..0.6,
            values in proptest::collection::vec(0.01f64..2.0, 31 * 8),
            thermal in 100.0f64..50_000.0,
            hydro in proptest::option::of(0.0f64..50_000.0),
        ) {
            let days = january();
            let members: Vec<Vec<f64>> = values.chunks(31).map(|c| c.to_vec()).collect();
            let row = power_row(Province::Sichuan, &days, members.clone());
            let mut panel = ProxyPanel::new();
            let s = Scope::Province(Province::Sichuan);
            panel.set_monthly(Signal::ThermalGeneration, s, YearMonth::new(2021, 1), thermal);
            if let Some(h) = hydro {
                panel.set_monthly(Signal::HydroGeneration, s, YearMonth::new(2021, 1), h);
            }
            let generation = daily_generation(&panel, Province::Sichuan, &days, &row.central);
            let k = CHP_HEAT.member_multipliers(seed, members.len());
            let path = allocate(&row, heat, &k, generation, &CHP_HEAT);
            let mut month = IntensitySum::default();
            for d in 0..days.len() {
                let mut day = IntensitySum::default();
                day.add_day(&path, d);
                let g = path.generation[d].unwrap().total_gwh();
                for (j, i) in day.members_gco2_per_kwh().iter().enumerate() {
                    let e = path.electricity_members[j][d];
                    prop_assert!((i * g / GCO2_PER_KWH_PER_MT_PER_GWH - e).abs() <= 1e-12 * e.max(1.0));
                    prop_assert!(e <= members[j][d] + 1e-15 && e >= 0.0);
                }
                let ceiling = path.generation[d].unwrap().thermal_gwh * CHP_HEAT.max_thermal_gco2_per_kwh / GCO2_PER_KWH_PER_MT_PER_GWH;
                prop_assert!(path.electricity_central[d] <= ceiling * (1.0 + 1e-12));
                // The ceiling scales a day, it does not flatten its band.
                let unclipped: Vec<f64> = (0..members.len()).map(|j| members[j][d] * (1.0 - (heat * k[j]).clamp(0.0, CHP_HEAT.max_share))).collect();
                let ratio = path.electricity_members[0][d] / unclipped[0];
                for j in 0..members.len() {
                    prop_assert!((path.electricity_members[j][d] - unclipped[j] * ratio).abs() <= 1e-12 * unclipped[j].max(1e-12));
                }
                let b = day.band().unwrap();
                prop_assert!(b.p2_5 <= b.p50 && b.p50 <= b.p97_5);
                month.add(&day);
            }
            for (j, i) in month.members_gco2_per_kwh().iter().enumerate() {
                let e: f64 = path.electricity_members[j].iter().sum();
                prop_assert!((i * month.generation_gwh / GCO2_PER_KWH_PER_MT_PER_GWH - e).abs() <= 1e-9 * e);
            }
        }
    }

    #[test]
    fn a_province_without_an_inventory_takes_the_thermal_factor_of_the_others() {
        // Three provinces at 0.8, 1.0 and 1.25 kt per GWh of thermal: pooled 1.0 kt/GWh.
        let f = ThermalFactor::from_provinces(&[(0.8, 1000.0), (1.0, 1000.0), (1.25, 1000.0), (0.0, 50.0)]).unwrap();
        assert!((f.mtco2_per_gwh - 3.05 / 3000.0).abs() < 1e-12);
        assert!(f.log_sd > 0.15 && f.log_sd < 0.3, "{}", f.log_sd);
        assert!(ThermalFactor::from_provinces(&[(1.0, 1000.0), (1.0, 1000.0)]).is_none(), "two provinces are no parent zone");
        let days: Vec<NaiveDate> = (1..=3).map(|d| NaiveDate::from_ymd_opt(2022, 1, d).unwrap()).collect();
        let g = |t: f64| Some(GenerationMix { thermal_gwh: t, hydro_gwh: Some(20.0), wind_gwh: None, solar_gwh: Some(5.0), nuclear_gwh: None, carried_forward: 0 });
        let multipliers = CHP_HEAT.member_multipliers(7, 400);
        let path = f.path(Province::Tibet, &days, vec![g(2.0), None, g(4.0)], 0.05, &multipliers, 7, &CHP_HEAT);
        assert_eq!(path.basis, PowerBasis::NationalThermalFactor);
        assert!((path.power_central[0] - 2.0 * f.mtco2_per_gwh).abs() < 1e-15 && path.power_central[1] == 0.0);
        assert!((path.electricity_central[2] - 4.0 * f.mtco2_per_gwh * 0.95).abs() < 1e-15);
        // The band spreads as the provinces' factors do, around the central value.
        let mut sum = IntensitySum::default();
        for d in 0..days.len() {
            sum.add_day(&path, d);
        }
        let band = sum.band().unwrap();
        assert_eq!(sum.basis, Some(PowerBasis::NationalThermalFactor));
        assert!(band.p2_5 < band.central && band.central < band.p97_5, "{band:?}");
        let spread = (band.p97_5 / band.p2_5).ln() / (2.0 * 1.96);
        assert!((spread - f.log_sd).abs() < 0.3 * f.log_sd, "{spread} vs {}", f.log_sd);
        // Summed with a province that has an estimate: mixed.
        let mut other = IntensitySum::default();
        other.add(&sum);
        other.add(&IntensitySum { basis: Some(PowerBasis::Estimate), ..IntensitySum::default() });
        assert_eq!(other.basis, Some(PowerBasis::Mixed));
    }
}

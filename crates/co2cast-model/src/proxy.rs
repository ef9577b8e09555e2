//! Proxy signals as monthly panels. Daily or hourly signals are also kept by day.

use crate::domain::Province;
use crate::series::YearMonth;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A proxy signal, with its canonical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Thermal (fossil + biomass) power generation, GWh.
    ThermalGeneration,
    HydroGeneration,
    WindGeneration,
    SolarGeneration,
    NuclearGeneration,
    /// Raw coal burned for power generation, tonnes.
    CoalForPower,
    /// Industrial output, tonnes.
    Cement,
    PigIron,
    CrudeSteel,
    NonferrousMetals,
    ChemicalFiber,
    CausticSoda,
    SodaAsh,
    SulfuricAcid,
    Ethylene,
    Fertilizer,
    FlatGlass,
    Alumina,
    /// National highway freight, index (ton-km).
    HighwayFreight,
    /// National highway passenger-km, index.
    HighwayPassengers,
    /// Civil aviation passenger-km or airport passenger throughput, index.
    AviationPassengers,
    /// Mobility index (1.0 = normal).
    MobilityIndex,
    /// Daily mean temperature, °C.
    Temperature,
    /// Electricity consumed in a province (all uses), GWh.
    ElectricityConsumption,
    /// Passengers through the airports of a province's CAAC macro-region (a regional index:
    /// every province of the region carries the region's series), passengers.
    AirportPassengers,
    /// Civil vehicles registered in a province at year end (an annual level carried by each
    /// month of its year), vehicles.
    VehicleStock,
    /// Floor area heated by district heating in a province at year end (annual level carried
    /// by each month of its year), m².
    HeatingArea,
    /// National refinery output of diesel, gasoline and kerosene (jet fuel), tonnes.
    DieselOutput,
    GasolineOutput,
    KeroseneOutput,
}

impl Signal {
    pub const ALL: [Signal; 30] = [
        Signal::ThermalGeneration,
        Signal::HydroGeneration,
        Signal::WindGeneration,
        Signal::SolarGeneration,
        Signal::NuclearGeneration,
        Signal::CoalForPower,
        Signal::Cement,
        Signal::PigIron,
        Signal::CrudeSteel,
        Signal::NonferrousMetals,
        Signal::ChemicalFiber,
        Signal::CausticSoda,
        Signal::SodaAsh,
        Signal::SulfuricAcid,
        Signal::Ethylene,
        Signal::Fertilizer,
        Signal::FlatGlass,
        Signal::Alumina,
        Signal::HighwayFreight,
        Signal::HighwayPassengers,
        Signal::AviationPassengers,
        Signal::MobilityIndex,
        Signal::Temperature,
        Signal::ElectricityConsumption,
        Signal::AirportPassengers,
        Signal::VehicleStock,
        Signal::HeatingArea,
        Signal::DieselOutput,
        Signal::GasolineOutput,
        Signal::KeroseneOutput,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::ThermalGeneration => "thermal_generation",
            Signal::HydroGeneration => "hydro_generation",
            Signal::WindGeneration => "wind_generation",
            Signal::SolarGeneration => "solar_generation",
            Signal::NuclearGeneration => "nuclear_generation",
            Signal::CoalForPower => "coal_for_power",
            Signal::Cement => "cement",
            Signal::PigIron => "pig_iron",
            Signal::CrudeSteel => "crude_steel",
            Signal::NonferrousMetals => "ten_nonferrous_metals",
            Signal::ChemicalFiber => "chemical_fiber",
            Signal::CausticSoda => "caustic_soda",
            Signal::SodaAsh => "soda_ash",
            Signal::SulfuricAcid => "sulfuric_acid",
            Signal::Ethylene => "ethylene",
            Signal::Fertilizer => "fertilizer",
            Signal::FlatGlass => "flat_glass",
            Signal::Alumina => "alumina",
            Signal::HighwayFreight => "highway_freight",
            Signal::HighwayPassengers => "highway_passengers",
            Signal::AviationPassengers => "aviation_passengers",
            Signal::MobilityIndex => "mobility_index",
            Signal::Temperature => "temperature",
            Signal::ElectricityConsumption => "electricity_consumption",
            Signal::AirportPassengers => "airport_passengers",
            Signal::VehicleStock => "vehicle_stock",
            Signal::HeatingArea => "heating_area",
            Signal::DieselOutput => "diesel_output",
            Signal::GasolineOutput => "gasoline_output",
            Signal::KeroseneOutput => "kerosene_output",
        }
    }

    /// Annual levels (registers, stocks): published once a year, carried by every month of
    /// their year. Their ratios scale a year, they do not shape months.
    pub fn is_annual_level(self) -> bool {
        matches!(self, Signal::VehicleStock | Signal::HeatingArea)
    }

    pub fn unit(self) -> &'static str {
        match self {
            Signal::ThermalGeneration
            | Signal::HydroGeneration
            | Signal::WindGeneration
            | Signal::SolarGeneration
            | Signal::NuclearGeneration
            | Signal::ElectricityConsumption => "GWh",
            Signal::HighwayFreight | Signal::HighwayPassengers | Signal::MobilityIndex => "index",
            Signal::AviationPassengers | Signal::AirportPassengers => "passengers",
            Signal::Temperature => "degC",
            Signal::VehicleStock => "vehicles",
            Signal::HeatingArea => "m2",
            _ => "t",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Signal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(x) = Signal::ALL.iter().copied().find(|x| x.as_str() == s) {
            return Ok(x);
        }
        let t = s.trim().to_ascii_lowercase();
        let t = match t.as_str() {
            "thermal" => "thermal_generation",
            "ten_nonferrous" | "nonferrous" => "ten_nonferrous_metals",
            "caustic_soda_100pct" => "caustic_soda",
            "npk_fertilizer_pure" => "fertilizer",
            "diesel" => "diesel_output",
            "gasoline" => "gasoline_output",
            "kerosene" => "kerosene_output",
            other => other,
        };
        Signal::ALL.iter().copied().find(|x| x.as_str() == t).ok_or_else(|| format!("unknown signal `{s}`"))
    }
}

/// Where a proxy value applies: one province, or the whole country. Written as the
/// province's ISO 3166-2:CN code, or `CN` for the country.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    Province(Province),
    National,
}

impl Scope {
    /// The code of the whole country.
    pub const NATIONAL_CODE: &'static str = "CN";

    /// `CN-GD`, or `CN`.
    pub fn code(self) -> &'static str {
        match self {
            Scope::Province(p) => p.iso_code(),
            Scope::National => Scope::NATIONAL_CODE,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Scope {
    type Err = String;
    /// `CN` (any case) is the country; anything else must name a province (code or name).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case(Scope::NATIONAL_CODE) {
            return Ok(Scope::National);
        }
        Province::parse_lenient(s).map(Scope::Province).ok_or_else(|| format!("unknown province or scope `{s}`"))
    }
}

/// Monthly (and, where available, daily) proxy values.
#[derive(Debug, Clone, Default)]
pub struct ProxyPanel {
    monthly: BTreeMap<(Signal, Scope, YearMonth), f64>,
    daily: BTreeMap<(Signal, Scope, NaiveDate), f64>,
}

impl ProxyPanel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_monthly(&mut self, s: Signal, scope: Scope, m: YearMonth, v: f64) {
        self.monthly.insert((s, scope, m), v);
    }

    pub fn set_daily(&mut self, s: Signal, scope: Scope, d: NaiveDate, v: f64) {
        self.daily.insert((s, scope, d), v);
    }

    pub fn monthly(&self, s: Signal, scope: Scope, m: YearMonth) -> Option<f64> {
        self.monthly.get(&(s, scope, m)).copied()
    }

    pub fn daily(&self, s: Signal, scope: Scope, d: NaiveDate) -> Option<f64> {
        self.daily.get(&(s, scope, d)).copied()
    }

    /// Annual sum, only when all 12 months are present.
    pub fn annual(&self, s: Signal, scope: Scope, year: i32) -> Option<f64> {
        let mut sum = 0.0;
        for m in 1..=12 {
            sum += self.monthly(s, scope, YearMonth::new(year, m))?;
        }
        Some(sum)
    }

    pub fn monthly_len(&self) -> usize {
        self.monthly.len()
    }

    pub fn iter_monthly(&self) -> impl Iterator<Item = (Signal, Scope, YearMonth, f64)> + '_ {
        self.monthly.iter().map(|(k, v)| (k.0, k.1, k.2, *v))
    }

    pub fn iter_daily(&self) -> impl Iterator<Item = (Signal, Scope, NaiveDate, f64)> + '_ {
        self.daily.iter().map(|(k, v)| (k.0, k.1, k.2, *v))
    }

    /// Latest month with a value for this signal and scope.
    pub fn last_month(&self, s: Signal, scope: Scope) -> Option<YearMonth> {
        self.monthly.keys().filter(|k| k.0 == s && k.1 == scope).map(|k| k.2).max()
    }

    /// The latest month of every series with monthly values (its frontier): months after it
    /// are nowcasts, missing months before it are gaps.
    pub fn last_months(&self) -> BTreeMap<(Signal, Scope), YearMonth> {
        // Keys are ordered by series, then month: the last key of a series is its frontier.
        let mut out = BTreeMap::new();
        for (s, scope, m) in self.monthly.keys() {
            out.insert((*s, *scope), *m);
        }
        out
    }

    /// Keeps only months up to `last` (inclusive) for every signal: a vintage as of then.
    pub fn truncated(&self, last: YearMonth) -> ProxyPanel {
        ProxyPanel {
            monthly: self.monthly.iter().filter(|(k, _)| k.2 <= last).map(|(k, v)| (*k, *v)).collect(),
            daily: self
                .daily
                .iter()
                .filter(|(k, _)| YearMonth::of(k.2) <= last)
                .map(|(k, v)| (*k, *v))
                .collect(),
        }
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    #[test]
    fn a_scope_reads_back_what_it_writes() {
        for s in Province::ALL.into_iter().map(Scope::Province).chain([Scope::National]) {
            assert_eq!(s.to_string().parse::<Scope>(), Ok(s));
        }
        assert_eq!("cn".parse::<Scope>(), Ok(Scope::National));
        assert_eq!("Guangdong".parse::<Scope>(), Ok(Scope::Province(Province::Guangdong)));
        assert!("CN-XX".parse::<Scope>().is_err() && "".parse::<Scope>().is_err());
    }
}

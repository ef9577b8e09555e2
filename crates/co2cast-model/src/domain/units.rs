//! Units kept explicit in the type system. Internally every quantity is an `f64` in the unit
//! its type names; conversions from source units live here and nowhere else.

use serde::{Deserialize, Serialize};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

macro_rules! unit {
    ($(#[$m:meta])* $name:ident, $sym:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub f64);
        impl $name {
            pub const SYMBOL: &'static str = $sym;
            pub fn value(self) -> f64 { self.0 }
        }
        impl Add for $name { type Output = Self; fn add(self, o: Self) -> Self { Self(self.0 + o.0) } }
        impl Sub for $name { type Output = Self; fn sub(self, o: Self) -> Self { Self(self.0 - o.0) } }
        impl AddAssign for $name { fn add_assign(&mut self, o: Self) { self.0 += o.0 } }
        impl Mul<f64> for $name { type Output = Self; fn mul(self, k: f64) -> Self { Self(self.0 * k) } }
        impl Div for $name { type Output = f64; fn div(self, o: Self) -> f64 { self.0 / o.0 } }
        impl Sum for $name { fn sum<I: Iterator<Item = Self>>(it: I) -> Self { Self(it.map(|x| x.0).sum()) } }
    };
}

unit!(
    /// Million tonnes of CO2.
    MtCO2, "MtCO2"
);
unit!(
    /// Gigawatt-hours of electricity.
    GWh, "GWh"
);
unit!(
    /// Metric tonnes of a physical product (cement, pig iron, ...).
    Tonnes, "t"
);
unit!(
    /// Tonnes of CO2 per megawatt-hour.
    TCO2PerMWh, "tCO2/MWh"
);

impl GWh {
    /// NBS and CEC publish generation in 亿千瓦时 (1e8 kWh = 100 GWh).
    pub fn from_1e8_kwh(v: f64) -> GWh {
        GWh(v * 100.0)
    }
    /// Wind-terminal provincial YTD series are in 万千瓦时 (1e4 kWh = 0.01 GWh).
    pub fn from_1e4_kwh(v: f64) -> GWh {
        GWh(v * 0.01)
    }
    pub fn from_mwh(v: f64) -> GWh {
        GWh(v / 1000.0)
    }
}

impl Tonnes {
    /// NBS industrial output is mostly in 万吨 (1e4 t).
    pub fn from_1e4_t(v: f64) -> Tonnes {
        Tonnes(v * 1.0e4)
    }
}

impl TCO2PerMWh {
    /// Emissions of `energy` at this intensity.
    pub fn emissions(self, energy: GWh) -> MtCO2 {
        // tCO2/MWh × GWh × 1000 MWh/GWh = tCO2; / 1e6 = MtCO2.
        MtCO2(self.0 * energy.0 * 1000.0 / 1.0e6)
    }
}

/// A unit as written in a message or file, normalised to a canonical unit and a multiplier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitConversion {
    pub canonical: &'static str,
    pub multiplier: f64,
}

/// Recognises the energy and mass units that proxy sources use. Returns `None` for anything
/// unknown, so that callers reject rather than guess.
pub fn normalise_unit(raw: &str) -> Option<UnitConversion> {
    // Canonical spellings first, without allocating.
    match raw {
        "GWh" => return Some(UnitConversion { canonical: "GWh", multiplier: 1.0 }),
        "t" => return Some(UnitConversion { canonical: "t", multiplier: 1.0 }),
        "index" => return Some(UnitConversion { canonical: "index", multiplier: 1.0 }),
        "passengers" => return Some(UnitConversion { canonical: "passengers", multiplier: 1.0 }),
        "degC" => return Some(UnitConversion { canonical: "degC", multiplier: 1.0 }),
        _ => {}
    }
    let u = raw.trim().to_ascii_lowercase().replace(' ', "");
    let (canonical, multiplier) = match u.as_str() {
        "gwh" => ("GWh", 1.0),
        "mwh" => ("GWh", 1.0e-3),
        "kwh" => ("GWh", 1.0e-6),
        "twh" => ("GWh", 1.0e3),
        "1e8kwh" | "10^8kwh" | "100millionkwh" | "亿千瓦时" => ("GWh", 100.0),
        "1e4kwh" | "10^4kwh" | "10000kwh" | "万千瓦时" => ("GWh", 0.01),
        "t" | "tonne" | "tonnes" | "ton" | "tons" => ("t", 1.0),
        "kt" => ("t", 1.0e3),
        "mt" => ("t", 1.0e6),
        "1e4t" | "10^4t" | "10000tons" | "万吨" => ("t", 1.0e4),
        "mtco2" => ("MtCO2", 1.0),
        "index" | "1" | "ratio" => ("index", 1.0),
        "passengers" | "persons" => ("passengers", 1.0),
        "1e4passengers" | "10^4passengers" | "万人次" | "10kperson*times" => ("passengers", 1.0e4),
        "degc" | "°c" | "celsius" => ("degC", 1.0),
        "vehicles" => ("vehicles", 1.0),
        "1e4vehicles" => ("vehicles", 1.0e4),
        "m2" => ("m2", 1.0),
        "1e4m2" => ("m2", 1.0e4),
        "1e8m2" => ("m2", 1.0e8),
        _ => return None,
    };
    Some(UnitConversion { canonical, multiplier })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(GWh::from_1e8_kwh(420.5).0, 42_050.0);
        assert!((GWh::from_1e4_kwh(4_205_000.0).0 - 42_050.0).abs() < 1e-9);
        // 1 TWh at 0.8 tCO2/MWh = 0.8 MtCO2.
        let e = TCO2PerMWh(0.8).emissions(GWh(1000.0));
        assert!((e.0 - 0.8).abs() < 1e-12);
        assert_eq!(normalise_unit("10^8 kWh").unwrap().multiplier, 100.0);
        assert_eq!(normalise_unit("万吨").unwrap().canonical, "t");
        assert!(normalise_unit("furlongs").is_none());
    }
}

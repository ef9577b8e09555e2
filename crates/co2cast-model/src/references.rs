//! National annual emissions from other inventories, to compare co2cast's national totals
//! with: each with its scope and the known differences from co2cast's (CEADs) scope.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One reference series: national annual CO2, MtCO2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NationalReference {
    /// Short name (`ceads`, `gcp`, `energy_institute`).
    pub source: String,
    /// What the series covers, in one line.
    pub scope: String,
    /// How that scope differs from co2cast's (CEADs provincial sum), in one line.
    pub scope_difference: String,
    pub values: BTreeMap<i32, f64>,
}

impl NationalReference {
    /// Relative change from `from` to `to`, when the series has both years.
    pub fn change(&self, from: i32, to: i32) -> Option<f64> {
        Some(self.values.get(&to)? / self.values.get(&from)? - 1.0)
    }

    pub fn last_year(&self) -> Option<i32> {
        self.values.keys().last().copied()
    }
}

/// A published carbon intensity of electricity to set co2cast's grid intensity beside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridReference {
    /// `mee_provincial`, `carbon_monitor_ei` or `ember`.
    pub source: String,
    pub year: i32,
    /// The province, or `None` for China.
    pub province: Option<crate::domain::Province>,
    pub gco2_per_kwh: f64,
}

impl GridReference {
    /// What the reference measures, and how that differs from co2cast's production-based
    /// intensity (power CO2 less CHP heat, over the province's own generation).
    pub fn basis(source: &str) -> (&'static str, &'static str) {
        match source {
            "mee_provincial" => (
                "MEE/NBS provincial grid average emission factor: consumption-based, electricity imported from other provinces carries its origin's intensity",
                "exporters of coal power (Inner Mongolia, Shanxi, Ningxia, Xinjiang, Anhui) read higher here, importers of hydro or coal power (Beijing, Shanghai, Guangdong, Zhejiang) differ by what they import",
            ),
            "carbon_monitor_ei" => (
                "Carbon Monitor's national power-sector CO2 over the Energy Institute's total generation",
                "its power CO2 includes CHP heat (co2cast removes 11 % nationally, more where CO2 exceeds the thermal ceiling); EI generation includes plants below NBS's size threshold",
            ),
            "ember" => ("Ember's national emissions intensity of generation (direct combustion)", "whole-sector CO2 over all generation, heat not separated; generation includes plants below NBS's size threshold"),
            _ => ("", ""),
        }
    }
}

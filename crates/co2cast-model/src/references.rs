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

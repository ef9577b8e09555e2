//! Emission sectors published by co2cast. `Other` exists so that provincial totals close
//! against the inventory.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sector {
    Power,
    Industry,
    GroundTransport,
    Residential,
    Aviation,
    Other,
}

impl Sector {
    pub const ALL: [Sector; 6] = [
        Sector::Power,
        Sector::Industry,
        Sector::GroundTransport,
        Sector::Residential,
        Sector::Aviation,
        Sector::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Sector::Power => "power",
            Sector::Industry => "industry",
            Sector::GroundTransport => "ground_transport",
            Sector::Residential => "residential",
            Sector::Aviation => "aviation",
            Sector::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Fuel family whose proxy-to-emissions ratio errors are shared across provinces.
    pub fn fuel_group(self) -> FuelGroup {
        match self {
            Sector::Power | Sector::Industry => FuelGroup::Coal,
            Sector::GroundTransport | Sector::Aviation => FuelGroup::Oil,
            Sector::Residential | Sector::Other => FuelGroup::Mixed,
        }
    }
}

/// Groups of fuels that share emission-factor and ratio errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FuelGroup {
    Coal,
    Oil,
    Mixed,
}

impl FuelGroup {
    pub const ALL: [FuelGroup; 3] = [FuelGroup::Coal, FuelGroup::Oil, FuelGroup::Mixed];
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Sector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sector `{0}` (expected one of power, industry, ground_transport, residential, aviation, other)")]
pub struct UnknownSector(pub String);

impl FromStr for Sector {
    type Err = UnknownSector;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Sector::ALL
            .iter()
            .copied()
            .find(|x| x.as_str() == t)
            .ok_or_else(|| UnknownSector(s.to_string()))
    }
}

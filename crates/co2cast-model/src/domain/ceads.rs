//! Mapping of the 47 CEADs socio-economic sectors (and fuel columns) onto co2cast sectors.
//! The table lives in `data/ceads_sector_map.csv`, one reason per row.

use super::Sector;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

const MAP_CSV: &str = include_str!("../../data/ceads_sector_map.csv");

/// Energy-intensive industry groups that have their own output proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndustryGroup {
    Ferrous,
    NonmetalMinerals,
    Nonferrous,
    Chemicals,
    ChemicalFiber,
    OtherIndustry,
}

impl IndustryGroup {
    pub const ALL: [IndustryGroup; 6] = [
        IndustryGroup::Ferrous,
        IndustryGroup::NonmetalMinerals,
        IndustryGroup::Nonferrous,
        IndustryGroup::Chemicals,
        IndustryGroup::ChemicalFiber,
        IndustryGroup::OtherIndustry,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            IndustryGroup::Ferrous => "ferrous",
            IndustryGroup::NonmetalMinerals => "nonmetal_minerals",
            IndustryGroup::Nonferrous => "nonferrous",
            IndustryGroup::Chemicals => "chemicals",
            IndustryGroup::ChemicalFiber => "chemical_fiber",
            IndustryGroup::OtherIndustry => "other_industry",
        }
    }
}

impl FromStr for IndustryGroup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IndustryGroup::ALL
            .iter()
            .copied()
            .find(|g| g.as_str() == s.trim())
            .ok_or_else(|| format!("unknown industry group `{s}`"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MappingRow {
    pub ceads_sector: String,
    /// Empty means every fuel (`*`).
    pub fuels: Vec<String>,
    pub sector: Sector,
    pub industry_group: Option<IndustryGroup>,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("sector map row {row}: {msg}")]
    Row { row: usize, msg: String },
    #[error("CEADs sector `{0}` is not in the sector map")]
    Unmapped(String),
}

#[derive(Debug, Clone)]
pub struct CeadsSectorMap {
    rows: Vec<MappingRow>,
}

/// Collapses whitespace, so `Others   ` and `Others` match across vintages.
pub fn normalise_ceads_sector(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Fuel column names differ between vintages (`Raw Coal`, `Raw_Coal`, `CleanedCoal`).
pub fn normalise_ceads_fuel(s: &str) -> String {
    let t = s.trim().replace(' ', "_");
    match t.as_str() {
        "CleanedCoal" => "Cleaned_Coal".to_string(),
        _ => t,
    }
}

impl CeadsSectorMap {
    pub fn bundled() -> CeadsSectorMap {
        Self::parse(MAP_CSV).expect("bundled sector map is valid (checked by tests)")
    }

    pub fn parse(text: &str) -> Result<CeadsSectorMap, MappingError> {
        let mut rdr = csv::ReaderBuilder::new().comment(Some(b'#')).from_reader(text.as_bytes());
        let mut rows = Vec::new();
        for (i, rec) in rdr.records().enumerate() {
            let row = i + 2;
            let rec = rec.map_err(|e| MappingError::Row { row, msg: e.to_string() })?;
            let get = |k: usize| rec.get(k).unwrap_or("").trim().to_string();
            let sector: Sector = get(2).parse().map_err(|e| MappingError::Row { row, msg: format!("{e}") })?;
            let ig = get(3);
            let industry_group = if ig.is_empty() {
                None
            } else {
                Some(ig.parse().map_err(|e: String| MappingError::Row { row, msg: e })?)
            };
            if (sector == Sector::Industry) != industry_group.is_some() {
                return Err(MappingError::Row { row, msg: "industry rows, and only they, need an industry_group".into() });
            }
            let fuels_raw = get(1);
            let fuels = if fuels_raw == "*" {
                Vec::new()
            } else {
                fuels_raw.split(';').map(normalise_ceads_fuel).collect()
            };
            let reason = get(4);
            if reason.is_empty() {
                return Err(MappingError::Row { row, msg: "every row needs a reason".into() });
            }
            rows.push(MappingRow { ceads_sector: normalise_ceads_sector(&get(0)), fuels, sector, industry_group, reason });
        }
        Ok(CeadsSectorMap { rows })
    }

    pub fn rows(&self) -> &[MappingRow] {
        &self.rows
    }

    /// Distinct CEADs sectors named by the map.
    pub fn ceads_sectors(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.rows.iter().map(|r| r.ceads_sector.as_str()).collect();
        v.dedup();
        v
    }

    /// Where emissions of `fuel` burned by CEADs sector `ceads_sector` belong. A row naming the
    /// fuel wins over the sector's `*` row.
    pub fn resolve(&self, ceads_sector: &str, fuel: &str) -> Result<(Sector, Option<IndustryGroup>), MappingError> {
        let s = normalise_ceads_sector(ceads_sector);
        let f = normalise_ceads_fuel(fuel);
        let mut fallback = None;
        for r in self.rows.iter().filter(|r| r.ceads_sector == s) {
            if r.fuels.iter().any(|x| *x == f) {
                return Ok((r.sector, r.industry_group));
            }
            if r.fuels.is_empty() {
                fallback = Some((r.sector, r.industry_group));
            }
        }
        fallback.ok_or(MappingError::Unmapped(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_47_sectors_and_resolves_overrides() {
        let m = CeadsSectorMap::bundled();
        assert_eq!(m.ceads_sectors().len(), 47);
        let tr = "Transportation, Storage, Post and Telecommunication Services    ";
        assert_eq!(m.resolve(tr, "Kerosene").unwrap().0, Sector::Aviation);
        assert_eq!(m.resolve(tr, "Diesel Oil").unwrap().0, Sector::GroundTransport);
        assert_eq!(m.resolve("Urban", "Gasoline").unwrap().0, Sector::GroundTransport);
        assert_eq!(m.resolve("Urban", "Raw_Coal").unwrap().0, Sector::Residential);
        assert_eq!(
            m.resolve("Nonmetal Mineral Products", "Process").unwrap(),
            (Sector::Industry, Some(IndustryGroup::NonmetalMinerals))
        );
        assert!(matches!(m.resolve("Space Tourism", "Raw_Coal"), Err(MappingError::Unmapped(_))));
        for s in Sector::ALL {
            assert!(m.rows().iter().any(|r| r.sector == s), "{s} has no CEADs source");
        }
    }
}

//! Domain vocabulary: provinces, sectors, units, and the CEADs sector mapping.

mod ceads;
mod province;
mod sector;
pub mod units;

pub use ceads::{CeadsSectorMap, IndustryGroup, MappingError, MappingRow, normalise_ceads_fuel, normalise_ceads_sector};
pub use province::{GridRegion, Province, UnknownProvince};
pub use sector::{FuelGroup, Sector, UnknownSector};

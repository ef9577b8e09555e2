//! Yearbook-based inventories (CEADs-style) as a panel: province × item × year, in MtCO2.

use crate::domain::{IndustryGroup, Province, Sector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an inventory value is about: a co2cast sector, or one industry group inside
/// `Sector::Industry` (the groups sum to the sector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InventoryItem {
    Sector(Sector),
    Industry(IndustryGroup),
}

#[derive(Debug, Clone, Default)]
pub struct InventoryPanel {
    /// Source label, e.g. `CEADs provincial inventories (xlsx vintages 1997-2019)`.
    pub source: String,
    values: BTreeMap<(Province, InventoryItem, i32), f64>,
}

impl InventoryPanel {
    pub fn new(source: impl Into<String>) -> Self {
        InventoryPanel { source: source.into(), values: BTreeMap::new() }
    }

    /// Adds `mt` (MtCO2) to an item; industry groups also add to `Sector::Industry`.
    pub fn add(&mut self, p: Province, item: InventoryItem, year: i32, mt: f64) {
        *self.values.entry((p, item, year)).or_insert(0.0) += mt;
        if let InventoryItem::Industry(_) = item {
            *self.values.entry((p, InventoryItem::Sector(Sector::Industry), year)).or_insert(0.0) += mt;
        }
    }

    pub fn get(&self, p: Province, item: InventoryItem, year: i32) -> Option<f64> {
        self.values.get(&(p, item, year)).copied()
    }

    pub fn sector(&self, p: Province, s: Sector, year: i32) -> Option<f64> {
        self.get(p, InventoryItem::Sector(s), year)
    }

    pub fn total(&self, p: Province, year: i32) -> Option<f64> {
        let v: Vec<f64> = Sector::ALL.iter().filter_map(|s| self.sector(p, *s, year)).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }

    pub fn years(&self) -> Vec<i32> {
        let mut y: Vec<i32> = self.values.keys().map(|k| k.2).collect();
        y.sort();
        y.dedup();
        y
    }

    pub fn provinces(&self) -> Vec<Province> {
        let mut p: Vec<Province> = self.values.keys().map(|k| k.0).collect();
        p.sort();
        p.dedup();
        p
    }

    /// A copy holding only years ≤ `year`: what a calibration on base year `year` may see.
    pub fn up_to(&self, year: i32) -> InventoryPanel {
        InventoryPanel {
            source: self.source.clone(),
            values: self.values.iter().filter(|(k, _)| k.2 <= year).map(|(k, v)| (*k, *v)).collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Province, InventoryItem, i32, f64)> + '_ {
        self.values.iter().map(|(k, v)| (k.0, k.1, k.2, *v))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

//! Plausibility caps per signal and province, derived from the history of the signal itself:
//! a value far above anything the province has ever reported is a unit error or a glitch.

use crate::message::Granularity;
use co2cast_model::proxy::{ProxyPanel, Scope, Signal};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct PlausibilityCaps {
    /// Largest plausible monthly value per (signal, scope), canonical units.
    monthly: BTreeMap<(Signal, Scope), f64>,
}

/// Headroom over the largest month on record.
pub const HISTORY_FACTOR: f64 = 3.0;

impl PlausibilityCaps {
    /// Caps at `HISTORY_FACTOR` × the largest monthly value of each signal and scope.
    pub fn from_history(panel: &ProxyPanel) -> PlausibilityCaps {
        let mut monthly: BTreeMap<(Signal, Scope), f64> = BTreeMap::new();
        for (s, scope, _, v) in panel.iter_monthly() {
            let e = monthly.entry((s, scope)).or_insert(0.0);
            *e = e.max(v * HISTORY_FACTOR);
        }
        PlausibilityCaps { monthly }
    }

    /// Fallback monthly caps where a signal has no history for a scope: generous physical
    /// bounds (a province-month).
    fn fallback_monthly(signal: Signal, scope: Scope) -> f64 {
        let per_province = match signal {
            // The largest provincial fleets generate ~40 TWh a month.
            Signal::ThermalGeneration
            | Signal::HydroGeneration
            | Signal::WindGeneration
            | Signal::SolarGeneration
            | Signal::NuclearGeneration => 150_000.0,
            Signal::CoalForPower => 1.0e8,
            Signal::HighwayFreight | Signal::HighwayPassengers | Signal::AviationPassengers => 1.0e12,
            Signal::MobilityIndex => 20.0,
            Signal::Temperature => 60.0,
            // Industrial products, tonnes per province-month (Hebei pig iron ~2e7).
            _ => 1.0e8,
        };
        match scope {
            Scope::National if !matches!(signal, Signal::MobilityIndex | Signal::Temperature) => per_province * 31.0,
            _ => per_province,
        }
    }

    /// Plausible (min, max) of one message's value in canonical units.
    pub fn range(&self, signal: Signal, scope: Scope, g: Granularity, ytd: bool) -> (f64, f64) {
        match signal {
            Signal::Temperature => return (-70.0, 60.0),
            Signal::MobilityIndex => return (0.0, 20.0),
            _ => {}
        }
        let month = self.monthly.get(&(signal, scope)).copied().unwrap_or_else(|| Self::fallback_monthly(signal, scope));
        let hi = match g {
            Granularity::Month if ytd => month * 12.0,
            Granularity::Month => month,
            // A day can be well above a month's daily mean; an hour above the day's.
            Granularity::Day => month / 28.0 * 2.0,
            Granularity::Hour => month / 28.0 * 2.0 / 24.0 * 2.0,
        };
        (0.0, hi)
    }
}

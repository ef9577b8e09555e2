//! Plausibility caps per signal and province, derived from the history of the signal itself:
//! a value far above anything the province has ever reported is a unit error or a glitch.

use crate::message::Granularity;
use co2cast_model::domain::Province;
use co2cast_model::proxy::{ProxyPanel, Scope, Signal};

#[derive(Debug, Clone, Default)]
pub struct PlausibilityCaps {
    /// Largest plausible monthly value per (signal, scope), canonical units, at
    /// [`slot`]; NaN where the history has none. A flat table: this is read per message.
    monthly: Vec<f64>,
}

const SCOPES: usize = Province::ALL.len() + 1;

fn slot(signal: Signal, scope: Scope) -> usize {
    signal as usize * SCOPES
        + match scope {
            Scope::Province(p) => p.index(),
            Scope::National => Province::ALL.len(),
        }
}

/// Headroom over the largest month on record.
pub const HISTORY_FACTOR: f64 = 3.0;

impl PlausibilityCaps {
    /// Caps at `HISTORY_FACTOR` × the largest monthly value of each signal and scope.
    pub fn from_history(panel: &ProxyPanel) -> PlausibilityCaps {
        let mut monthly = vec![f64::NAN; Signal::ALL.len() * SCOPES];
        for (s, scope, _, v) in panel.iter_monthly() {
            let e = &mut monthly[slot(s, scope)];
            // NaN.max(x) is x: the first value of a scope replaces "none".
            *e = e.max(0.0).max(v * HISTORY_FACTOR);
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
            Signal::HighwayFreight | Signal::HighwayPassengers | Signal::AviationPassengers | Signal::AirportPassengers => 1.0e12,
            Signal::ElectricityConsumption => 150_000.0,
            Signal::VehicleStock => 1.0e8,
            Signal::HeatingArea => 1.0e11,
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
        let month = match self.monthly.get(slot(signal, scope)) {
            Some(m) if !m.is_nan() => *m,
            _ => Self::fallback_monthly(signal, scope),
        };
        let hi = match g {
            Granularity::Month if ytd => month * 12.0,
            Granularity::Month => month,
            // A day can be well above a month's daily mean; an hour above the day's.
            Granularity::Day => month / 28.0 * 2.0,
            Granularity::Hour => month / 28.0 * 2.0 / 24.0 * 2.0,
            // Annual levels are carried by every month: the year's cap is the month's.
            Granularity::Year if signal.is_annual_level() => month,
            Granularity::Year => month * 12.0,
        };
        (0.0, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use co2cast_model::series::YearMonth;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// The flat table answers as the keyed definition: 3 × the largest month of a signal
        /// and scope on record, the physical fallback where there is none.
        #[test]
        fn flat_table_matches_keyed_maxima(
            months in prop::collection::vec((0..Signal::ALL.len(), 0..=Province::ALL.len(), 1u32..=12, 0.0f64..1e7), 0..200),
            probe_signal in 0..Signal::ALL.len(),
            probe_scope in 0..=Province::ALL.len(),
        ) {
            let scope_of = |i: usize| Province::ALL.get(i).map_or(Scope::National, |p| Scope::Province(*p));
            let mut panel = ProxyPanel::new();
            let mut keyed: BTreeMap<(Signal, Scope), f64> = BTreeMap::new();
            for (s, sc, m, v) in &months {
                panel.set_monthly(Signal::ALL[*s], scope_of(*sc), YearMonth::new(2019, *m), *v);
            }
            for (s, sc, _, v) in panel.iter_monthly() {
                let e = keyed.entry((s, sc)).or_insert(0.0);
                *e = e.max(v * HISTORY_FACTOR);
            }
            let caps = PlausibilityCaps::from_history(&panel);
            let (signal, scope) = (Signal::ALL[probe_signal], scope_of(probe_scope));
            let month = keyed.get(&(signal, scope)).copied().unwrap_or_else(|| PlausibilityCaps::fallback_monthly(signal, scope));
            for g in [Granularity::Hour, Granularity::Day, Granularity::Month, Granularity::Year] {
                for ytd in [false, true] {
                    let (lo, hi) = caps.range(signal, scope, g, ytd);
                    let want = match signal {
                        Signal::Temperature => (-70.0, 60.0),
                        Signal::MobilityIndex => (0.0, 20.0),
                        _ => (0.0, match g {
                            Granularity::Month if ytd => month * 12.0,
                            Granularity::Month => month,
                            Granularity::Day => month / 28.0 * 2.0,
                            Granularity::Hour => month / 28.0 * 2.0 / 24.0 * 2.0,
                            Granularity::Year if signal.is_annual_level() => month,
                            Granularity::Year => month * 12.0,
                        }),
                    };
                    prop_assert_eq!((lo, hi), want);
                }
            }
        }
    }
}

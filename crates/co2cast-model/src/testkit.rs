//! Small synthetic worlds with known structure, for tests and examples. Not real data: the
//! real-data tests live in `co2cast-data` and `tests/`.

use crate::domain::{IndustryGroup, Province, Sector};
use crate::inventory::{InventoryItem, InventoryPanel};
use crate::proxy::{ProxyPanel, Scope, Signal};
use crate::series::YearMonth;
use rand::{RngExt, SeedableRng};

/// Inventory 2005–2019 and monthly proxies 2005–2020 for the 30 CEADs provinces. Power
/// follows `(1 − phi) + phi × thermal ratio` with multiplicative noise `noise_sd`; every other
/// item is flat with the same noise.
pub fn synthetic_world(phi: f64, noise_sd: f64, seed: u64) -> (InventoryPanel, ProxyPanel) {
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    let mut normal = move || -> f64 {
        // Box–Muller; adequate for test fixtures.
        let u1: f64 = rng.random::<f64>().max(1e-12);
        let u2: f64 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let mut inv = InventoryPanel::new("synthetic");
    let mut px = ProxyPanel::new();
    for (i, p) in Province::ALL.iter().copied().filter(|p| p.in_ceads()).enumerate() {
        let size = 20.0 + 10.0 * i as f64;
        let mut thermal_prev_year = None;
        let mut power_prev = size * 2.0;
        for year in 2005..=2020 {
            let growth = 1.0 + 0.04 * normal();
            let mut annual = 0.0;
            for m in 1..=12 {
                let season = 1.0 + 0.15 * ((m as f64 - 1.0) / 12.0 * std::f64::consts::TAU).cos();
                let v = size * 100.0 * season * growth * (1.0 + 0.03 * (year - 2005) as f64);
                px.set_monthly(Signal::ThermalGeneration, Scope::Province(p), YearMonth::new(year, m), v);
                for s in [Signal::PigIron, Signal::Cement] {
                    px.set_monthly(s, Scope::Province(p), YearMonth::new(year, m), v * 10.0);
                }
                annual += v;
            }
            if year <= 2019 {
                if let Some(prev) = thermal_prev_year {
                    let ratio: f64 = annual / prev;
                    power_prev *= ((1.0 - phi) + phi * ratio) * (noise_sd * normal()).exp();
                }
                inv.add(p, InventoryItem::Sector(Sector::Power), year, power_prev);
                for g in IndustryGroup::ALL {
                    inv.add(p, InventoryItem::Industry(g), year, size * 0.2 * (noise_sd * normal()).exp());
                }
                for s in [Sector::GroundTransport, Sector::Residential, Sector::Aviation, Sector::Other] {
                    inv.add(p, InventoryItem::Sector(s), year, size * 0.1 * (noise_sd * normal()).exp());
                }
            }
            thermal_prev_year = Some(annual);
        }
    }
    for year in 2005..=2020 {
        for m in 1..=12 {
            for s in [Signal::HighwayFreight, Signal::HighwayPassengers, Signal::AviationPassengers] {
                px.set_monthly(s, Scope::National, YearMonth::new(year, m), 100.0 + (year - 2005) as f64);
            }
        }
    }
    (inv, px)
}

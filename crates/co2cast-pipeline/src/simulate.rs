//! Synthetic proxy streams for load tests: hourly thermal generation for every province with
//! a diurnal and weekly shape and AR(1) noise, optionally mixed with invalid messages.
//! Deterministic for a seed. Each province's level is its mean hourly thermal generation in
//! the bundled real sample, so valid messages pass the plausibility caps the processor
//! derives from that history (a made-up level put Tibet, whose thermal fleet is tiny, above
//! its cap: 2.5 % of "valid" load-test messages were dead-lettered).

use crate::replay::ProxyRecord;
use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use co2cast_ingest::Topic;
use co2cast_model::calendar::shanghai;
use co2cast_model::domain::Province;
use rand::{RngExt, SeedableRng};
use rand::rngs::ChaCha8Rng;

pub struct Simulator {
    rng: ChaCha8Rng,
    hour: DateTime<Utc>,
    province: usize,
    noise: [f64; 31],
    bad_fraction: f64,
    /// Mean hourly thermal generation per province, GWh.
    level: [f64; 31],
}

/// Mean hourly thermal generation (GWh) per province over the bundled sample's months; a
/// province without data gets the median level.
fn hourly_levels() -> [f64; 31] {
    let mut sum = [0.0; 31];
    let mut hours = [0.0; 31];
    if let Ok(d) = co2cast_data::embedded() {
        for (s, scope, m, v) in d.proxies.iter_monthly() {
            if let (co2cast_model::proxy::Signal::ThermalGeneration, co2cast_model::proxy::Scope::Province(p)) = (s, scope) {
                sum[p.index()] += v;
                hours[p.index()] += 24.0 * f64::from(co2cast_model::calendar::days_in_month(m.year, m.month));
            }
        }
    }
    let level: [f64; 31] = std::array::from_fn(|i| if hours[i] > 0.0 { sum[i] / hours[i] } else { f64::NAN });
    let mut known: Vec<f64> = level.iter().copied().filter(|v| v.is_finite()).collect();
    known.sort_by(f64::total_cmp);
    let median = known.get(known.len() / 2).copied().unwrap_or(5.0);
    level.map(|v| if v.is_finite() { v } else { median })
}

impl Simulator {
    /// Starts at `start` (an hour boundary), producing `bad_fraction` invalid messages.
    pub fn new(seed: u64, start: DateTime<Utc>, bad_fraction: f64) -> Simulator {
        Simulator { rng: ChaCha8Rng::seed_from_u64(seed), hour: start, province: 0, noise: [0.0; 31], bad_fraction, level: hourly_levels() }
    }

    fn normal(&mut self) -> f64 {
        let u1: f64 = self.rng.random::<f64>().max(1e-12);
        let u2: f64 = self.rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

impl Iterator for Simulator {
    type Item = ProxyRecord;

    fn next(&mut self) -> Option<ProxyRecord> {
        let p = Province::ALL[self.province];
        let local = self.hour.with_timezone(&shanghai());
        let start = local.to_rfc3339();
        // Generation peaks mid-morning and early evening.
        let size = self.level[self.province];
        let h = local.hour() as f64;
        let diurnal = 1.0 + 0.15 * ((h - 10.0) / 24.0 * std::f64::consts::TAU).cos() + 0.05 * ((h - 19.0) / 12.0 * std::f64::consts::TAU).cos();
        let weekly = if local.weekday().num_days_from_monday() >= 5 { 0.96 } else { 1.0 };
        let e = self.normal();
        self.noise[self.province] = 0.9 * self.noise[self.province] + 0.02 * e;
        let value = size * diurnal * weekly * self.noise[self.province].exp();
        let bad = self.rng.random::<f64>() < self.bad_fraction;
        let (payload, key) = if bad {
            // A timestamp without an offset: a classic producer bug.
            (
                serde_json::json!({"province": p.iso_code(), "period_start": local.naive_local().format("%Y-%m-%dT%H:%M:%S").to_string(), "granularity": "hour", "fuel": "thermal", "value": value, "unit": "GWh", "source": "simulate", "revision": 0}),
                format!("power.generation/{}/{}", p.iso_code(), start),
            )
        } else {
            (
                serde_json::json!({"province": p.iso_code(), "period_start": start, "granularity": "hour", "fuel": "thermal", "value": value, "unit": "GWh", "source": "simulate", "revision": 0}),
                format!("power.generation/{}/{}", p.iso_code(), start),
            )
        };
        let rec = ProxyRecord { topic: Topic::PowerGeneration, key, payload: payload.to_string(), released_at: self.hour + Duration::hours(1) };
        self.province += 1;
        if self.province == Province::ALL.len() {
            self.province = 0;
            self.hour += Duration::hours(1);
        }
        Some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_messages_validate_and_are_reproducible() {
        let start = DateTime::parse_from_rfc3339("2019-03-01T00:00:00+08:00").unwrap().with_timezone(&Utc);
        let a: Vec<ProxyRecord> = Simulator::new(7, start, 0.1).take(500).collect();
        let b: Vec<ProxyRecord> = Simulator::new(7, start, 0.1).take(500).collect();
        assert_eq!(a, b);
        let caps = co2cast_ingest::PlausibilityCaps::default();
        let rules = co2cast_ingest::ValidationRules::default();
        let now = Utc::now();
        let bad = a
            .iter()
            .filter(|r| co2cast_ingest::validate(r.topic.name(), Some(r.key.as_bytes()), r.payload.as_bytes(), now, &caps, &rules).is_err())
            .count();
        assert!(bad > 20 && bad < 90, "{bad} of 500 invalid at 10 %");
    }

    /// Without bad messages, every simulated value passes the caps the processor derives from
    /// the bundled history (a whole week of every province).
    #[test]
    fn valid_simulated_messages_pass_the_history_caps() {
        let start = DateTime::parse_from_rfc3339("2019-07-01T00:00:00+08:00").unwrap().with_timezone(&Utc);
        let caps = co2cast_ingest::PlausibilityCaps::from_history(&co2cast_data::embedded().unwrap().proxies);
        let rules = co2cast_ingest::ValidationRules::default();
        let now = Utc::now();
        for r in Simulator::new(3, start, 0.0).take(31 * 24 * 7) {
            let v = co2cast_ingest::validate(r.topic.name(), Some(r.key.as_bytes()), r.payload.as_bytes(), now, &caps, &rules);
            assert!(v.is_ok(), "{}: {:?}", r.payload, v.err());
        }
    }
}

//! What the province stage tells the national stage: per province and day, the Monte Carlo
//! member sums over the province's sectors, with what national rows are made of (central
//! value, coverage, source, data months). Topic `co2cast.ensemble.province`, keyed
//! `<province>/<date>`, one JSON object per revision; compacted, since only the newest value
//! of a key matters.
//!
//! Members are drawn from the same seeded streams whichever process estimates a province, so
//! member-wise sums over provinces are the joint national ensemble: the national band of the
//! two-stage pipeline equals the single process's.

use crate::estimates::{Fingerprint, Revisioned, fnv1a};
use chrono::NaiveDate;
use co2cast_model::domain::Province;
use co2cast_model::estimate::SourceType;
use co2cast_model::series::YearMonth;
use serde::{Deserialize, Serialize};

/// One province-day of the joint ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvinceDayEnsemble {
    /// ISO 3166-2:CN code.
    pub province: String,
    pub date: NaiveDate,
    /// Inventory year the estimate is calibrated on.
    pub base_year: i32,
    /// Sum of the province's sector rows, MtCO2/day.
    pub central_mtco2: f64,
    /// Sum over sector rows of coverage × central value, MtCO2/day.
    pub coverage_weighted_mtco2: f64,
    /// The least observed source of the province's rows.
    pub source_type: SourceType,
    /// Month of proxy data behind each component, with its MtCO2/day (for `data_through`).
    pub data_months: Vec<(YearMonth, f64)>,
    /// Member sums over sectors, MtCO2/day, in member order; in JSON the members' IEEE 754
    /// little-endian bytes in base64 (exact, and under half the size of decimal numbers).
    #[serde(rename = "members_mtco2_f64le_base64", with = "f64_base64")]
    pub members_mtco2: Vec<f64>,
    /// 0 for the first publication of the key, +1 for each change.
    pub revision: u32,
    /// Hash of the settings the province stage estimated with (provinces, members, seed,
    /// model): the national stage refuses sums made with settings other than its own.
    pub settings_fingerprint: String,
}

/// The largest province-day value accepted, MtCO2/day (China emits about 30 a day; its
/// largest province under 3).
pub const MAX_PROVINCE_DAY_MTCO2: f64 = 50.0;

/// The settings fingerprint of a settings string (see `settings_fingerprint`).
pub fn settings_fingerprint(settings: &str) -> String {
    format!("{:016x}", fnv1a(&[settings.as_bytes()]))
}

mod f64_base64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        if bytes.len() % 8 != 0 {
            return Err(serde::de::Error::custom(format!("{} bytes of members: not a whole number of f64", bytes.len())));
        }
        Ok(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }
}

impl ProvinceDayEnsemble {
    pub fn province(&self) -> Option<Province> {
        Province::from_iso(&self.province)
    }

    /// Checks what a reader relies on: a known province, finite values, `members` members.
    pub fn check(&self, members: usize) -> Result<Province, String> {
        let p = self.province().ok_or_else(|| format!("unknown province `{}`", self.province))?;
        if self.members_mtco2.len() != members {
            return Err(format!("{}: {} members, the pipeline draws {members}", self.key(), self.members_mtco2.len()));
        }
        let plausible = |x: f64| x.is_finite() && (-1.0..=MAX_PROVINCE_DAY_MTCO2).contains(&x);
        let ok = plausible(self.central_mtco2)
            && plausible(self.coverage_weighted_mtco2)
            && self.members_mtco2.iter().all(|x| plausible(*x))
            && self.data_months.iter().all(|(_, w)| plausible(*w));
        if !ok {
            return Err(format!("{}: a value is not finite or outside -1 to {MAX_PROVINCE_DAY_MTCO2} MtCO2/day", self.key()));
        }
        Ok(p)
    }
}

impl Revisioned for ProvinceDayEnsemble {
    fn key(&self) -> String {
        format!("{}/{}", self.province, self.date)
    }

    /// Bit-exact: national sums must be those of the single process.
    fn fingerprint(&self) -> Fingerprint {
        let mut bytes: Vec<u8> = Vec::with_capacity(8 * (self.members_mtco2.len() + 2 * self.data_months.len() + 4));
        for x in [self.central_mtco2, self.coverage_weighted_mtco2] {
            bytes.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        for x in &self.members_mtco2 {
            bytes.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        for (m, w) in &self.data_months {
            bytes.extend_from_slice(&m.year.to_le_bytes());
            bytes.extend_from_slice(&m.month.to_le_bytes());
            bytes.extend_from_slice(&w.to_bits().to_le_bytes());
        }
        let h = fnv1a(&[&bytes]);
        [h as i64, self.base_year as i64, self.source_type as i64, self.members_mtco2.len() as i64, 0, 0, 0, 0, 0, 0]
    }

    fn set_revision(&mut self, revision: u32) {
        self.revision = revision;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> ProvinceDayEnsemble {
        ProvinceDayEnsemble {
            province: "CN-HE".into(),
            date: NaiveDate::from_ymd_opt(2019, 3, 4).unwrap(),
            base_year: 2017,
            central_mtco2: 2.0 / 3.0,
            coverage_weighted_mtco2: 0.6,
            source_type: SourceType::Nowcast,
            data_months: vec![(YearMonth::new(2019, 2), 0.5), (YearMonth::new(2018, 12), 1.0 / 6.0)],
            members_mtco2: vec![0.1 + 0.2, 1e-300, 0.7],
            revision: 2,
            settings_fingerprint: settings_fingerprint("model 1; provinces all"),
        }
    }

    #[test]
    fn a_province_day_reads_back_bit_for_bit_and_any_change_is_a_new_fingerprint() {
        let d = day();
        let back: ProvinceDayEnsemble = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.fingerprint(), d.fingerprint());
        assert_eq!(d.key(), "CN-HE/2019-03-04");
        assert_eq!(d.check(3), Ok(Province::from_iso("CN-HE").unwrap()));
        let mut e = d.clone();
        e.members_mtco2[1] = f64::from_bits(e.members_mtco2[1].to_bits() + 1);
        assert_ne!(e.fingerprint(), d.fingerprint(), "one ulp in one member is a change");
        e.revision = 7;
        assert_eq!(e.fingerprint(), { let mut f = d.clone(); f.members_mtco2[1] = e.members_mtco2[1]; f.fingerprint() }, "the revision is not content");
        assert!(d.check(4).is_err());
        let mut bad = d.clone();
        bad.central_mtco2 = f64::NAN;
        assert!(bad.check(3).is_err());
        for x in [1.7e308, -1e6, 51.0] {
            let mut bad = d.clone();
            bad.members_mtco2[0] = x;
            assert!(bad.check(3).is_err(), "{x} MtCO2/day in a province-day is refused");
        }
        bad.province = "CN-XX".into();
        assert!(bad.check(3).is_err());
        assert!(serde_json::from_str::<ProvinceDayEnsemble>(r#"{"province":"CN-HE","surprise":1}"#).is_err());
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("\"members_mtco2_f64le_base64\":\""), "{json}");
        let truncated = json.replace(&serde_json::to_value(&d).unwrap()["members_mtco2_f64le_base64"].as_str().unwrap()[..8], "");
        assert!(serde_json::from_str::<ProvinceDayEnsemble>(&truncated).is_err(), "members that are not whole f64s are refused");
    }
}

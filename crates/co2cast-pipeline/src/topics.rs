//! Topic names of a pipeline: the proxy families in, the dead-letter queue, the estimates and
//! the grid intensity out. Defaults are the names in `proxies/README.md`; `pipelines/processor.toml`
//! can rename them (e.g. per environment), and tests use suffixed names on a shared broker.

use co2cast_ingest::Topic;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    pub power_generation: String,
    pub industry_output: String,
    pub mobility_index: String,
    pub aviation_activity: String,
    pub weather_temperature: String,
    pub power_consumption: String,
    pub annual_register: String,
    pub dead_letter: String,
    pub estimates_daily: String,
    pub grid_intensity_daily: String,
    /// The province stage's Monte Carlo member sums per province-day, read by the national
    /// stage (internal; compacted, keyed `<province>/<date>`).
    pub ensemble_province: String,
}

pub const DLQ_TOPIC: &str = "co2cast.dlq";
pub const ESTIMATES_TOPIC: &str = "co2cast.estimates.daily";
pub const GRID_INTENSITY_TOPIC: &str = "co2cast.grid_intensity.daily";
pub const ENSEMBLE_PROVINCE_TOPIC: &str = "co2cast.ensemble.province";

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames {
            power_generation: Topic::PowerGeneration.name().into(),
            industry_output: Topic::IndustryOutput.name().into(),
            mobility_index: Topic::MobilityIndex.name().into(),
            aviation_activity: Topic::AviationActivity.name().into(),
            weather_temperature: Topic::WeatherTemperature.name().into(),
            power_consumption: Topic::PowerConsumption.name().into(),
            annual_register: Topic::AnnualRegister.name().into(),
            dead_letter: DLQ_TOPIC.into(),
            estimates_daily: ESTIMATES_TOPIC.into(),
            grid_intensity_daily: GRID_INTENSITY_TOPIC.into(),
            ensemble_province: ENSEMBLE_PROVINCE_TOPIC.into(),
        }
    }
}

impl TopicNames {
    /// Every name with `suffix` appended (isolated topics on a shared broker).
    pub fn with_suffix(suffix: &str) -> TopicNames {
        let d = TopicNames::default();
        TopicNames {
            power_generation: d.power_generation + suffix,
            industry_output: d.industry_output + suffix,
            mobility_index: d.mobility_index + suffix,
            aviation_activity: d.aviation_activity + suffix,
            weather_temperature: d.weather_temperature + suffix,
            power_consumption: d.power_consumption + suffix,
            annual_register: d.annual_register + suffix,
            dead_letter: d.dead_letter + suffix,
            estimates_daily: d.estimates_daily + suffix,
            grid_intensity_daily: d.grid_intensity_daily + suffix,
            ensemble_province: d.ensemble_province + suffix,
        }
    }

    pub fn proxy(&self, t: Topic) -> &str {
        match t {
            Topic::PowerGeneration => &self.power_generation,
            Topic::IndustryOutput => &self.industry_output,
            Topic::MobilityIndex => &self.mobility_index,
            Topic::AviationActivity => &self.aviation_activity,
            Topic::WeatherTemperature => &self.weather_temperature,
            Topic::PowerConsumption => &self.power_consumption,
            Topic::AnnualRegister => &self.annual_register,
        }
    }

    /// The family a consumed topic carries.
    pub fn family(&self, name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| self.proxy(*t) == name)
    }

    pub fn proxies(&self) -> Vec<&str> {
        Topic::ALL.iter().map(|t| self.proxy(*t)).collect()
    }

    /// Names must be distinct and valid Kafka topic names.
    pub fn check(&self) -> Result<(), String> {
        let all = [self.proxies(), vec![self.dead_letter.as_str(), self.estimates_daily.as_str(), self.grid_intensity_daily.as_str(), self.ensemble_province.as_str()]].concat();
        for n in &all {
            let ok = !n.is_empty() && n.len() <= 249 && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(format!("`{n}` is not a valid Kafka topic name"));
            }
        }
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != all.len() {
            return Err("topic names must be distinct".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract_and_map_back() {
        let t = TopicNames::default();
        t.check().unwrap();
        for f in Topic::ALL {
            assert_eq!(t.family(t.proxy(f)), Some(f));
        }
        let s = TopicNames::with_suffix(".test-1");
        s.check().unwrap();
        assert_eq!(s.family("proxy.power.generation.test-1"), Some(Topic::PowerGeneration));
        assert_eq!(s.family("proxy.power.generation"), None);
        let bad = TopicNames { dead_letter: t.estimates_daily.clone(), ..TopicNames::default() };
        assert!(bad.check().is_err());
        assert!(TopicNames { dead_letter: "a b".into(), ..TopicNames::default() }.check().is_err());
    }
}

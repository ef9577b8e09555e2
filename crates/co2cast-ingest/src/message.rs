//! The JSON contract of proxy messages (see `proxies/README.md` and `proxies/schemas/`).

use serde::Deserialize;
use std::borrow::Cow;

/// Topics, one per signal family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    PowerGeneration,
    IndustryOutput,
    MobilityIndex,
    AviationActivity,
    WeatherTemperature,
}

impl Topic {
    pub const ALL: [Topic; 5] =
        [Topic::PowerGeneration, Topic::IndustryOutput, Topic::MobilityIndex, Topic::AviationActivity, Topic::WeatherTemperature];

    pub fn name(self) -> &'static str {
        match self {
            Topic::PowerGeneration => "proxy.power.generation",
            Topic::IndustryOutput => "proxy.industry.output",
            Topic::MobilityIndex => "proxy.mobility.index",
            Topic::AviationActivity => "proxy.aviation.activity",
            Topic::WeatherTemperature => "proxy.weather.temperature",
        }
    }

    pub fn from_name(s: &str) -> Option<Topic> {
        Topic::ALL.iter().copied().find(|t| t.name() == s)
    }

    /// The `<signal>` part of message keys.
    pub fn key_prefix(self) -> &'static str {
        match self {
            Topic::PowerGeneration => "power.generation",
            Topic::IndustryOutput => "industry.output",
            Topic::MobilityIndex => "mobility.index",
            Topic::AviationActivity => "aviation.activity",
            Topic::WeatherTemperature => "weather.temperature",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Hour,
    Day,
    Month,
}

/// A proxy message as it arrives, borrowing from the payload where it can. Unknown fields are
/// rejected, so a typo cannot silently drop information.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyMessage<'a> {
    #[serde(borrow)]
    pub province: Cow<'a, str>,
    #[serde(borrow)]
    pub period_start: Cow<'a, str>,
    pub granularity: Granularity,
    pub value: f64,
    #[serde(borrow)]
    pub unit: Cow<'a, str>,
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    #[serde(default)]
    pub revision: Option<u32>,
    #[serde(default, borrow)]
    pub observed_at: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub fuel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub product: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub value_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub city: Option<Cow<'a, str>>,
}

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
    PowerConsumption,
    AnnualRegister,
}

impl Topic {
    pub const ALL: [Topic; 7] = [
        Topic::PowerGeneration,
        Topic::IndustryOutput,
        Topic::MobilityIndex,
        Topic::AviationActivity,
        Topic::WeatherTemperature,
        Topic::PowerConsumption,
        Topic::AnnualRegister,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Topic::PowerGeneration => "proxy.power.generation",
            Topic::IndustryOutput => "proxy.industry.output",
            Topic::MobilityIndex => "proxy.mobility.index",
            Topic::AviationActivity => "proxy.aviation.activity",
            Topic::WeatherTemperature => "proxy.weather.temperature",
            Topic::PowerConsumption => "proxy.power.consumption",
            Topic::AnnualRegister => "proxy.register.annual",
        }
    }

    pub fn from_name(s: &str) -> Option<Topic> {
        Topic::ALL.iter().copied().find(|t| t.name() == s)
    }

    /// Period lengths the topic's signals are published at (the schema's `granularity` enum).
    pub fn granularities(self) -> &'static [Granularity] {
        match self {
            Topic::PowerGeneration | Topic::MobilityIndex => &[Granularity::Hour, Granularity::Day, Granularity::Month],
            Topic::IndustryOutput => &[Granularity::Month],
            Topic::AviationActivity => &[Granularity::Day, Granularity::Month],
            Topic::WeatherTemperature => &[Granularity::Day],
            Topic::PowerConsumption => &[Granularity::Hour, Granularity::Day, Granularity::Month],
            Topic::AnnualRegister => &[Granularity::Year],
        }
    }

    /// Spellings of `unit` the topic accepts (the schema's `unit` enum).
    pub fn units(self) -> &'static [&'static str] {
        match self {
            Topic::PowerGeneration => &["GWh", "MWh", "kWh", "TWh", "1e8 kWh", "1e4 kWh"],
            Topic::IndustryOutput => &["t", "kt", "Mt", "1e4 t"],
            Topic::MobilityIndex => &["index", "passengers", "1e4 passengers"],
            Topic::AviationActivity => &["passengers", "1e4 passengers", "index"],
            Topic::WeatherTemperature => &["degC"],
            Topic::PowerConsumption => &["GWh", "MWh", "kWh", "TWh", "1e8 kWh", "1e4 kWh"],
            Topic::AnnualRegister => &["vehicles", "1e4 vehicles", "m2", "1e4 m2", "1e8 m2"],
        }
    }

    /// Fields of this topic besides the common ones (`province`, `period_start`,
    /// `granularity`, `value`, `unit`, `source`, `revision`, `observed_at`).
    pub fn variant_fields(self) -> &'static [&'static str] {
        match self {
            Topic::PowerGeneration => &["fuel"],
            Topic::IndustryOutput => &["product", "value_type"],
            Topic::MobilityIndex => &["kind", "city"],
            Topic::AviationActivity => &["kind"],
            Topic::WeatherTemperature | Topic::PowerConsumption => &[],
            Topic::AnnualRegister => &["kind"],
        }
    }

    /// The `<signal>` part of message keys.
    pub fn key_prefix(self) -> &'static str {
        match self {
            Topic::PowerGeneration => "power.generation",
            Topic::IndustryOutput => "industry.output",
            Topic::MobilityIndex => "mobility.index",
            Topic::AviationActivity => "aviation.activity",
            Topic::WeatherTemperature => "weather.temperature",
            Topic::PowerConsumption => "power.consumption",
            Topic::AnnualRegister => "register.annual",
        }
    }
}

/// Largest message body accepted (bytes); a contract message is a few hundred.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Longest `source`, `province` and `city` (characters).
pub const MAX_NAME_CHARS: usize = 64;
/// Longest `fuel`, `product`, `value_type`, `kind` and `unit` (characters).
pub const MAX_VARIANT_CHARS: usize = 32;
/// Longest timestamp (`period_start`, `observed_at`), nanoseconds and offset included.
pub const MAX_TIMESTAMP_CHARS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Hour,
    Day,
    Month,
    /// A calendar year: annual levels (registers of vehicles, heated floor area).
    Year,
}

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
            Granularity::Year => "year",
        }
    }
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
    #[serde(default, deserialize_with = "revision")]
    pub revision: Option<u32>,
    #[serde(default, borrow)]
    pub observed_at: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_string")]
    pub fuel: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_string")]
    pub product: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_string")]
    pub value_type: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_string")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_string")]
    pub city: Option<Cow<'a, str>>,
}

/// A revision is a JSON integer in `0..=u32::MAX`; as in JSON Schema, a number with no
/// fractional part (`3.0`) is an integer too.
fn revision<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    let v = match (n.as_u64(), n.as_f64()) {
        (Some(u), _) => Some(u),
        (None, Some(f)) if f.fract() == 0.0 && f >= 0.0 && f <= u32::MAX as f64 => Some(f as u64),
        _ => None,
    };
    v.and_then(|v| u32::try_from(v).ok()).map(Some).ok_or_else(|| D::Error::custom(format!("revision must be an integer from 0 to {}, got {n}", u32::MAX)))
}

/// A topic's own fields are strings whenever present: `null` is not a way to omit one (the
/// schemas say the same), so a field that belongs to another topic cannot hide as a null.
fn present_string<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Borrowed::deserialize(d).map(|b| Some(b.0))
}

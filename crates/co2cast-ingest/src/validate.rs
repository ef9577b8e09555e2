//! Decoding and validation of proxy messages. A message either becomes a [`ValidProxy`] in
//! canonical units, or a [`Reject`] with a bounded error code and a human reason; nothing is
//! dropped silently and nothing panics.

use crate::caps::PlausibilityCaps;
use crate::message::{Granularity, MAX_MESSAGE_BYTES, MAX_NAME_CHARS, MAX_TIMESTAMP_CHARS, MAX_VARIANT_CHARS, RawProxyMessage, Topic};
use chrono::{DateTime, Datelike, Duration, NaiveDateTime, Utc};
use co2cast_model::calendar::civil::{days_from_civil, month_length};
use co2cast_model::calendar::shanghai;
use co2cast_model::domain::Province;
use co2cast_model::domain::units::normalise_unit;
use co2cast_model::proxy::{Scope, Signal};
use serde::Serialize;
use std::fmt;

/// Why a message was rejected. The set is closed so it can label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    UnknownTopic,
    MalformedJson,
    KeyMismatch,
    MissingTimezone,
    BadTimestamp,
    MisalignedPeriod,
    UnknownProvince,
    UnknownVariant,
    UnknownUnit,
    MissingRevision,
    NotFinite,
    NegativeValue,
    ImplausibleValue,
    FuturePeriod,
    TooOld,
    MissingKey,
    InvalidField,
    UnsupportedGranularity,
    MessageTooLarge,
    /// A province's message on a partition that is not its province's (province stage only;
    /// see co2cast-pipeline's `partitioner`).
    WrongPartition,
}

impl RejectCode {
    pub const ALL: [RejectCode; 20] = [
        RejectCode::UnknownTopic,
        RejectCode::MalformedJson,
        RejectCode::KeyMismatch,
        RejectCode::MissingTimezone,
        RejectCode::BadTimestamp,
        RejectCode::MisalignedPeriod,
        RejectCode::UnknownProvince,
        RejectCode::UnknownVariant,
        RejectCode::UnknownUnit,
        RejectCode::MissingRevision,
        RejectCode::NotFinite,
        RejectCode::NegativeValue,
        RejectCode::ImplausibleValue,
        RejectCode::FuturePeriod,
        RejectCode::TooOld,
        RejectCode::MissingKey,
        RejectCode::InvalidField,
        RejectCode::UnsupportedGranularity,
        RejectCode::MessageTooLarge,
        RejectCode::WrongPartition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnknownTopic => "unknown_topic",
            RejectCode::MalformedJson => "malformed_json",
            RejectCode::KeyMismatch => "key_mismatch",
            RejectCode::MissingTimezone => "missing_timezone",
            RejectCode::BadTimestamp => "bad_timestamp",
            RejectCode::MisalignedPeriod => "misaligned_period",
            RejectCode::UnknownProvince => "unknown_province",
            RejectCode::UnknownVariant => "unknown_variant",
            RejectCode::UnknownUnit => "unknown_unit",
            RejectCode::MissingRevision => "missing_revision",
            RejectCode::NotFinite => "not_finite",
            RejectCode::NegativeValue => "negative_value",
            RejectCode::ImplausibleValue => "implausible_value",
            RejectCode::FuturePeriod => "future_period",
            RejectCode::TooOld => "too_old",
            RejectCode::MissingKey => "missing_key",
            RejectCode::InvalidField => "invalid_field",
            RejectCode::UnsupportedGranularity => "unsupported_granularity",
            RejectCode::MessageTooLarge => "message_too_large",
            RejectCode::WrongPartition => "wrong_partition",
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Reject {
    pub code: RejectCode,
    pub reason: String,
}

fn reject<T>(code: RejectCode, reason: impl Into<String>) -> Result<T, Reject> {
    Err(Reject { code, reason: reason.into() })
}

/// A correction applied instead of a rejection, recorded with the value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Correction {
    /// A tiny negative (rounding) set to zero.
    NegativeToZero { raw: f64 },
}

/// A validated proxy value in canonical units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidProxy {
    pub signal: Signal,
    pub scope: Scope,
    pub granularity: Granularity,
    /// Start of the period, Unix seconds (whole seconds: validation rejects fractions). Kept
    /// as a number because every message needs its key, end and watermark from it.
    pub period_start_s: i64,
    /// In `signal.unit()`.
    pub value: f64,
    /// Industry output sent as year-to-date.
    pub ytd: bool,
    /// Interned: a stream repeats a handful of sources (see [`intern_source`]).
    #[serde(serialize_with = "serialize_arc_str")]
    pub source: std::sync::Arc<str>,
    pub revision: u32,
    pub observed_at: Option<DateTime<Utc>>,
    pub corrections: Vec<Correction>,
}

impl ValidProxy {
    pub fn period_start(&self) -> DateTime<Utc> {
        instant(self.period_start_s)
    }

    pub fn local_start(&self) -> NaiveDateTime {
        self.period_start().with_timezone(&shanghai()).naive_local()
    }

    /// End of the period, Unix seconds.
    pub fn period_end_s(&self) -> i64 {
        period_end_s(self.period_start_s, self.granularity)
    }

    pub fn period_end(&self) -> DateTime<Utc> {
        instant(self.period_end_s())
    }
}

/// A Unix time in whole seconds as an instant (saturating at chrono's range).
pub(crate) fn instant(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap_or(if s < 0 { DateTime::<Utc>::MIN_UTC } else { DateTime::<Utc>::MAX_UTC })
}

/// End of a period that starts at `start_s` (Unix seconds, aligned to its granularity).
pub fn period_end_s(start_s: i64, g: Granularity) -> i64 {
    match g {
        Granularity::Hour => start_s + 3600,
        Granularity::Day => start_s + 86_400,
        Granularity::Month => {
            let l = instant(start_s).with_timezone(&shanghai()).naive_local().date();
            let (y, m) = if l.month() == 12 { (l.year() + 1, 1) } else { (l.year(), l.month() + 1) };
            let next = chrono::NaiveDate::from_ymd_opt(y, m, 1).expect("valid month");
            co2cast_model::calendar::day_start_utc(next).timestamp()
        }
        Granularity::Year => {
            let l = instant(start_s).with_timezone(&shanghai()).naive_local().date();
            co2cast_model::calendar::day_start_utc(chrono::NaiveDate::from_ymd_opt(l.year() + 1, 1, 1).expect("valid year")).timestamp()
        }
    }
}

/// Settings of the validator.
#[derive(Debug, Clone)]
pub struct ValidationRules {
    /// A period may end at most this far after `now` (clock skew, early publication).
    pub future_tolerance: Duration,
    /// Periods before this are implausible.
    pub earliest: DateTime<Utc>,
    /// Negatives down to `-negative_tolerance × cap` are rounding and corrected to zero.
    pub negative_tolerance: f64,
}

impl Default for ValidationRules {
    fn default() -> Self {
        ValidationRules {
            future_tolerance: Duration::hours(1),
            earliest: DateTime::parse_from_rfc3339("2000-01-01T00:00:00+08:00").expect("valid").with_timezone(&Utc),
            negative_tolerance: 1e-6,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS` and `Z` or `±HH:MM`, the form producers of the contract write,
/// without chrono's general parser (a visible share of ingest time). `None` for any other
/// form, which chrono then parses (fractions, lower-case `t`, leap seconds, …).
fn rfc3339_plain(s: &str) -> Option<i64> {
    let two = |hi: u8, lo: u8| -> Option<i64> {
        let (hi, lo) = (hi.wrapping_sub(b'0'), lo.wrapping_sub(b'0'));
        (hi < 10 && lo < 10).then(|| i64::from(hi * 10 + lo))
    };
    // Patterns over fixed-size arrays: no bounds checks, one pass.
    let (head, zone) = s.as_bytes().split_first_chunk::<19>()?;
    let [y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':', s0, s1] = *head else {
        return None;
    };
    let offset_s = match *zone {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), oh0, oh1, b':', om0, om1] => {
            let (oh, om) = (two(oh0, oh1)?, two(om0, om1)?);
            if oh > 23 || om > 59 {
                return None;
            }
            (oh * 3600 + om * 60) * if sign == b'-' { -1 } else { 1 }
        }
        _ => return None,
    };
    let (y, mo, d) = (two(y0, y1)? * 100 + two(y2, y3)?, two(mo0, mo1)?, two(d0, d1)?);
    let (h, mi, sec) = (two(h0, h1)?, two(mi0, mi1)?, two(s0, s1)?);
    if !(1..=12).contains(&mo) || !(1..=month_length(y, mo)).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s)
}

fn parse_instant(field: &str, s: &str) -> Result<DateTime<Utc>, Reject> {
    let (secs, nanos) = parse_instant_parts(field, s)?;
    Ok(DateTime::from_timestamp(secs, nanos).unwrap_or(instant(secs)))
}

/// An instant as (Unix seconds, nanoseconds): the plain form without chrono, anything else
/// through chrono's parser, with the reason a timestamp is refused.
fn parse_instant_parts(field: &str, s: &str) -> Result<(i64, u32), Reject> {
    if let Some(secs) = rfc3339_plain(s) {
        return Ok((secs, 0));
    }
    match DateTime::parse_from_rfc3339(s.trim()) {
        Ok(t) => Ok((t.timestamp(), t.timestamp_subsec_nanos())),
        Err(_) => {
            let t = s.trim();
            let naive = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
                .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S"))
                .or_else(|_| chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").map(|d| d.and_hms_opt(0, 0, 0).expect("midnight")));
            if naive.is_ok() {
                reject(RejectCode::MissingTimezone, format!("{field} `{s}` has no UTC offset; write e.g. `{t}+08:00`"))
            } else {
                reject(RejectCode::BadTimestamp, format!("{field} `{s}` is not an RFC 3339 timestamp"))
            }
        }
    }
}

fn signal_of(topic: Topic, m: &RawProxyMessage<'_>) -> Result<(Signal, bool), Reject> {
    let need = |field: &str, v: &Option<std::borrow::Cow<'_, str>>| -> Result<String, Reject> {
        v.as_deref().map(str::to_string).ok_or_else(|| Reject { code: RejectCode::UnknownVariant, reason: format!("{} needs `{field}`", topic.name()) })
    };
    match topic {
        Topic::PowerGeneration => {
            let fuel = m.fuel.as_deref().ok_or_else(|| Reject { code: RejectCode::UnknownVariant, reason: format!("{} needs `fuel`", topic.name()) })?;
            let s = match fuel {
                "thermal" => Signal::ThermalGeneration,
                "hydro" => Signal::HydroGeneration,
                "wind" => Signal::WindGeneration,
                "solar" => Signal::SolarGeneration,
                "nuclear" => Signal::NuclearGeneration,
                other => return reject(RejectCode::UnknownVariant, format!("unknown fuel `{other}`")),
            };
            Ok((s, false))
        }
        Topic::IndustryOutput => {
            let product = need("product", &m.product)?;
            let s: Signal = product.parse().map_err(|e: String| Reject { code: RejectCode::UnknownVariant, reason: e })?;
            if s.unit() != "t" {
                return reject(RejectCode::UnknownVariant, format!("`{product}` is not an industrial product"));
            }
            let ytd = match need("value_type", &m.value_type)?.as_str() {
                "monthly" => false,
                "ytd" => true,
                other => return reject(RejectCode::UnknownVariant, format!("unknown value_type `{other}`")),
            };
            Ok((s, ytd))
        }
        Topic::MobilityIndex => {
            let s = match need("kind", &m.kind)?.as_str() {
                "road_index" => Signal::MobilityIndex,
                "highway_passengers" => Signal::HighwayPassengers,
                "highway_freight" => Signal::HighwayFreight,
                other => return reject(RejectCode::UnknownVariant, format!("unknown mobility kind `{other}`")),
            };
            Ok((s, false))
        }
        Topic::AviationActivity => match need("kind", &m.kind)?.as_str() {
            "passengers" | "passenger_km" => Ok((Signal::AviationPassengers, false)),
            "airport_passengers" => Ok((Signal::AirportPassengers, false)),
            other => reject(RejectCode::UnknownVariant, format!("unknown aviation kind `{other}`")),
        },
        Topic::WeatherTemperature => Ok((Signal::Temperature, false)),
        Topic::PowerConsumption => Ok((Signal::ElectricityConsumption, false)),
        Topic::AnnualRegister => match need("kind", &m.kind)?.as_str() {
            "vehicle_stock" => Ok((Signal::VehicleStock, false)),
            "heating_area" => Ok((Signal::HeatingArea, false)),
            other => reject(RejectCode::UnknownVariant, format!("unknown register kind `{other}`")),
        },
    }
}

/// The contract's field rules that are not about meaning: string lengths, the topic's own
/// fields and granularities (the JSON Schemas in `proxies/schemas/` say the same; a test
/// checks that they agree).
fn check_fields(topic: Topic, m: &RawProxyMessage<'_>) -> Result<(), Reject> {
    let len = |field: &str, v: &str, min: usize, max: usize| -> Result<(), Reject> {
        let n = v.chars().count();
        if n < min || n > max {
            let what = if n < min { format!("shorter than {min}") } else { format!("longer than {max}") };
            return reject(RejectCode::InvalidField, format!("`{field}` is {what} characters ({n})"));
        }
        Ok(())
    };
    len("province", &m.province, 2, MAX_NAME_CHARS)?;
    len("source", &m.source, 1, MAX_NAME_CHARS)?;
    len("unit", &m.unit, 1, MAX_VARIANT_CHARS)?;
    len("period_start", &m.period_start, 1, MAX_TIMESTAMP_CHARS)?;
    if let Some(o) = &m.observed_at {
        len("observed_at", o, 1, MAX_TIMESTAMP_CHARS)?;
    }
    let variants = [("fuel", &m.fuel), ("product", &m.product), ("value_type", &m.value_type), ("kind", &m.kind), ("city", &m.city)];
    for (name, v) in variants {
        if let Some(v) = v {
            if !topic.variant_fields().contains(&name) {
                return reject(RejectCode::InvalidField, format!("`{name}` is not a field of {}", topic.name()));
            }
            len(name, v, 1, if name == "city" { MAX_NAME_CHARS } else { MAX_VARIANT_CHARS })?;
        }
    }
    if !topic.granularities().contains(&m.granularity) {
        let allowed: Vec<&str> = topic.granularities().iter().map(|g| g.as_str()).collect();
        return reject(RejectCode::UnsupportedGranularity, format!("{} is published by {}, not by {}", topic.name(), allowed.join(", "), m.granularity.as_str()));
    }
    Ok(())
}

/// The start as whole Unix seconds, if it is the start of a period of `g`.
fn check_alignment(start_s: i64, nanos: u32, g: Granularity) -> Result<i64, Reject> {
    // Asia/Shanghai is a fixed UTC+8 (no DST since 1991), so hour and day boundaries are
    // plain arithmetic on the Unix time; only months need the calendar.
    let local_s = start_s + i64::from(shanghai().local_minus_utc());
    let whole = nanos == 0;
    let ok = whole
        && match g {
            Granularity::Hour => local_s.rem_euclid(3600) == 0,
            Granularity::Day => local_s.rem_euclid(86_400) == 0,
            Granularity::Month => local_s.rem_euclid(86_400) == 0 && instant(start_s).with_timezone(&shanghai()).day() == 1,
            Granularity::Year => local_s.rem_euclid(86_400) == 0 && instant(start_s).with_timezone(&shanghai()).ordinal() == 1,
        };
    if ok {
        Ok(start_s)
    } else {
        let start = DateTime::from_timestamp(start_s, nanos).unwrap_or(instant(start_s));
        let l = start.with_timezone(&shanghai()).naive_local();
        reject(
            RejectCode::MisalignedPeriod,
            format!("period_start {} (Asia/Shanghai {l}) is not the start of a{} {:?}", start.to_rfc3339(), if g == Granularity::Hour { "n" } else { "" }, g).to_lowercase(),
        )
    }
}

/// Decodes and validates one message from a topic with the default name. `key` is the Kafka
/// key, if any.
pub fn validate(
    topic_name: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    now: DateTime<Utc>,
    caps: &PlausibilityCaps,
    rules: &ValidationRules,
) -> Result<ValidProxy, Reject> {
    let topic = Topic::from_name(topic_name)
        .ok_or_else(|| Reject { code: RejectCode::UnknownTopic, reason: format!("`{topic_name}` is not a proxy topic") })?;
    validate_family(topic, key, payload, now, caps, rules)
}

/// Decodes and validates one message of a signal family (whatever its topic is called).
pub fn validate_family(
    topic: Topic,
    key: Option<&[u8]>,
    payload: &[u8],
    now: DateTime<Utc>,
    caps: &PlausibilityCaps,
    rules: &ValidationRules,
) -> Result<ValidProxy, Reject> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return reject(RejectCode::MessageTooLarge, format!("message of {} bytes; at most {MAX_MESSAGE_BYTES} are accepted", payload.len()));
    }
    let Some(key) = key else {
        return reject(RejectCode::MissingKey, format!("a message needs its key `{}/<province>/<period_start>`", topic.key_prefix()));
    };
    let m: RawProxyMessage = crate::decode::decode(payload)
        .map_err(|e| Reject { code: RejectCode::MalformedJson, reason: e.to_string() })?;
    check_fields(topic, &m)?;
    let (signal, ytd) = signal_of(topic, &m)?;
    // Exact ISO codes first (the hot path), then the national code and lenient names.
    let scope = match Province::from_iso(&m.province) {
        Some(p) => Scope::Province(p),
        None if m.province.trim() == "CN" => Scope::National,
        None => Scope::Province(
            Province::parse_lenient(&m.province)
                .ok_or_else(|| Reject { code: RejectCode::UnknownProvince, reason: format!("unknown province `{}`", m.province) })?,
        ),
    };
    let (start_s, start_nanos) = parse_instant_parts("period_start", &m.period_start)?;
    let start_s = check_alignment(start_s, start_nanos, m.granularity)?;
    if ytd && m.granularity != Granularity::Month {
        return reject(RejectCode::UnknownVariant, "year-to-date values must be monthly");
    }
    {
        let k = key;
        // Fast path: the key is written exactly as the body's fields (compared as bytes, so a
        // matching key needs no UTF-8 check of its own).
        let exact = k
            .strip_prefix(topic.key_prefix().as_bytes())
            .and_then(|r| r.strip_prefix(b"/"))
            .and_then(|r| r.strip_prefix(m.province.as_bytes()))
            .and_then(|r| r.strip_prefix(b"/"))
            .is_some_and(|r| r == m.period_start.as_bytes());
        if !exact {
            let k = std::str::from_utf8(k).map_err(|_| Reject { code: RejectCode::KeyMismatch, reason: "key is not UTF-8".into() })?;
            let parts: Vec<&str> = k.splitn(3, '/').collect();
            let ok = parts.len() == 3
                && parts[0] == topic.key_prefix()
                && (if parts[1] == "CN" { scope == Scope::National } else { Province::parse_lenient(parts[1]).map(Scope::Province) == Some(scope) })
                && DateTime::parse_from_rfc3339(parts[2]).map(|t| (t.timestamp(), t.timestamp_subsec_nanos()) == (start_s, 0)).unwrap_or(false);
            if !ok {
                return reject(
                    RejectCode::KeyMismatch,
                    format!("key `{k}` does not match `{}/{}/{}`", topic.key_prefix(), m.province, m.period_start),
                );
            }
        }
    }
    if m.revision.is_none() && m.observed_at.is_none() {
        return reject(RejectCode::MissingRevision, "a message needs `revision` or `observed_at`");
    }
    let observed_at = m.observed_at.as_deref().map(|s| parse_instant("observed_at", s)).transpose()?;
    if !topic.units().contains(&&*m.unit) {
        return reject(RejectCode::UnknownUnit, format!("unit `{}` is not one of {} for {}", m.unit, topic.units().join(", "), topic.name()));
    }
    let conv = normalise_unit(&m.unit)
        .ok_or_else(|| Reject { code: RejectCode::UnknownUnit, reason: format!("unknown unit `{}`", m.unit) })?;
    if !m.value.is_finite() {
        return reject(RejectCode::NotFinite, "value is not a finite number");
    }
    // In (seconds, nanoseconds): chrono's checked arithmetic showed in ingest profiles.
    let end_s = period_end_s(start_s, m.granularity);
    let (tolerance_s, tolerance_ns) = (rules.future_tolerance.num_seconds(), i64::from(rules.future_tolerance.subsec_nanos()));
    let limit_ns = i64::from(now.timestamp_subsec_nanos()) + tolerance_ns;
    let limit = (now.timestamp() + tolerance_s + limit_ns.div_euclid(1_000_000_000), limit_ns.rem_euclid(1_000_000_000));
    if (end_s, 0) > limit {
        return reject(RejectCode::FuturePeriod, format!("period ends {} after now ({})", instant(end_s).to_rfc3339(), now.to_rfc3339()));
    }
    if (start_s, 0) < (rules.earliest.timestamp(), i64::from(rules.earliest.timestamp_subsec_nanos())) {
        return reject(RejectCode::TooOld, format!("period_start {} is before {}", instant(start_s).to_rfc3339(), rules.earliest.to_rfc3339()));
    }
    let mut value = m.value * conv.multiplier;
    let mut corrections = Vec::new();
    let (lo, hi) = caps.range(signal, scope, m.granularity, ytd);
    if value < lo {
        if lo == 0.0 && value >= -rules.negative_tolerance * hi {
            corrections.push(Correction::NegativeToZero { raw: value });
            value = 0.0;
        } else if lo == 0.0 {
            return reject(RejectCode::NegativeValue, format!("{signal} cannot be negative ({value} {})", signal.unit()));
        } else {
            return reject(RejectCode::ImplausibleValue, format!("{value} {} is below the plausible minimum {lo}", signal.unit()));
        }
    }
    if value > hi {
        return reject(
            RejectCode::ImplausibleValue,
            format!("{value:.4} {} exceeds the plausibility cap {hi:.4} for {signal} in {} per {:?}", signal.unit(), scope, m.granularity).replace("Hour", "hour").replace("Day", "day").replace("Month", "month"),
        );
    }
    Ok(ValidProxy {
        signal,
        scope,
        granularity: m.granularity,
        period_start_s: start_s,
        value,
        ytd,
        source: intern_source(&m.source),
        revision: m.revision.unwrap_or(0),
        observed_at,
        corrections,
    })
}

/// One shared copy per distinct source name and thread, for the first [`SOURCES_INTERNED`]
/// names (beyond that, a copy per message): an allocation and a free per message showed in
/// ingest profiles.
pub fn intern_source(name: &str) -> std::sync::Arc<str> {
    thread_local! {
        static SOURCES: std::cell::RefCell<Vec<std::sync::Arc<str>>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SOURCES.with_borrow_mut(|known| {
        if let Some(s) = known.iter().find(|s| ***s == *name) {
            return s.clone();
        }
        let s: std::sync::Arc<str> = std::sync::Arc::from(name);
        if known.len() < SOURCES_INTERNED {
            known.push(s.clone());
        }
        s
    })
}

pub const SOURCES_INTERNED: usize = 64;

fn serialize_arc_str<S: serde::Serializer>(s: &std::sync::Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}


#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sources_are_shared_up_to_the_bound_and_always_exact() {
        let a = intern_source("nbs");
        assert!(std::sync::Arc::ptr_eq(&a, &intern_source("nbs")));
        assert!(!std::sync::Arc::ptr_eq(&a, &intern_source("cec")));
        let names: Vec<String> = (0..2 * SOURCES_INTERNED).map(|i| format!("source-{i}")).collect();
        for n in &names {
            assert_eq!(&*intern_source(n), n.as_str());
        }
        // Past the bound a name gets its own copy each time, with the same text.
        let last = names.last().unwrap();
        let (x, y) = (intern_source(last), intern_source(last));
        assert_eq!((&*x, &*y), (last.as_str(), last.as_str()));
        assert!(!std::sync::Arc::ptr_eq(&x, &y));
    }

    fn chrono_parse(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
    }

    #[test]
    fn plain_timestamps_parse_as_chrono_parses_them() {
        for s in ["2019-03-01T00:00:00+08:00", "2019-03-01T00:00:00Z", "2020-02-29T23:59:59-05:30", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59+23:59"] {
            assert_eq!(rfc3339_plain(s).map(instant), chrono_parse(s), "{s}");
            assert!(rfc3339_plain(s).is_some(), "{s}");
        }
        for s in ["2019-02-29T00:00:00+08:00", "2019-13-01T00:00:00Z", "2019-03-01T24:00:00Z", "2019-03-01T00:00:60Z", "2019-03-01t00:00:00Z", "2019-03-01T00:00:00.5Z", "2019-03-01T00:00:00+0800", "2019-03-01T00:00:00"] {
            assert!(rfc3339_plain(s).is_none(), "{s}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        /// Alignment by arithmetic equals alignment read off the Asia/Shanghai wall clock.
        #[test]
        fn alignment_agrees_with_the_wall_clock(
            ts in 946_684_800i64..2_000_000_000, snap in 0u8..5, g in prop::sample::select(vec![Granularity::Hour, Granularity::Day, Granularity::Month, Granularity::Year]),
        ) {
            use chrono::Timelike;
            // Snap often onto hours, days and month starts, or the property only sees misalignment.
            let t = DateTime::from_timestamp(ts, 0).unwrap();
            let l = t.with_timezone(&shanghai()).naive_local();
            let snapped = match snap {
                0 => l,
                1 => l.date().and_hms_opt(l.hour(), 0, 0).unwrap(),
                2 => l.date().and_hms_opt(0, 0, 0).unwrap(),
                3 => l.date().with_day(1).unwrap().and_hms_opt(0, 0, 0).unwrap(),
                _ => l.date().with_ordinal(1).unwrap().and_hms_opt(0, 0, 0).unwrap(),
            };
            let start = snapped.and_local_timezone(shanghai()).unwrap().with_timezone(&Utc);
            let wall = start.with_timezone(&shanghai()).naive_local();
            let expected = match g {
                Granularity::Hour => wall.minute() == 0 && wall.second() == 0,
                Granularity::Day => wall.hour() == 0 && wall.minute() == 0 && wall.second() == 0,
                Granularity::Month => wall.day() == 1 && wall.hour() == 0 && wall.minute() == 0 && wall.second() == 0,
                Granularity::Year => wall.ordinal() == 1 && wall.hour() == 0 && wall.minute() == 0 && wall.second() == 0,
            };
            prop_assert_eq!(check_alignment(start.timestamp(), start.timestamp_subsec_nanos(), g).is_ok(), expected, "{} {:?}", start, g);
        }

        /// Wherever the plain parser answers, chrono answers the same instant.
        #[test]
        fn plain_parser_agrees_with_chrono(
            y in 0i32..10000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..62, sec in 0u32..62,
            sep in prop::sample::select(vec!['T', 't', ' ', 'x']),
            tz in prop::sample::select(vec!["Z", "z", "+08:00", "-05:30", "+23:59", "+24:00", "-00:00", "+08:60", "+0800", ""]),
        ) {
            let s = format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{sec:02}{tz}");
            if let Some(t) = rfc3339_plain(&s) {
                prop_assert_eq!(Some(instant(t)), chrono_parse(&s), "{}", s);
            }
            // And the validator's own parse agrees with chrono whenever chrono accepts.
            if let Some(t) = chrono_parse(&s) {
                prop_assert_eq!(parse_instant("t", &s).ok(), Some(t), "{}", s);
            }
        }
    }
}

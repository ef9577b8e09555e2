//! Turns real data files into proxy messages, in the order they would have been released,
//! and publishes them: the embedded default's source and `co2cast replay`.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use co2cast_data::Dataset;
use co2cast_ingest::Topic;
use co2cast_model::calendar::{DayFactorTable, HolidayCalendar, day_start_utc, days_of_month};
use co2cast_model::domain::Sector;
use co2cast_model::proxy::{Scope, Signal};
use co2cast_model::series::YearMonth;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A message ready to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRecord {
    pub topic: Topic,
    pub key: String,
    pub payload: String,
    /// When the publisher would have released it (orders the replay).
    pub released_at: DateTime<Utc>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.with_timezone(&co2cast_model::calendar::shanghai()).to_rfc3339()
}

fn record(topic: Topic, scope: Scope, start: DateTime<Utc>, body: serde_json::Value, released_at: DateTime<Utc>) -> ProxyRecord {
    let start_s = rfc3339(start);
    let mut body = body;
    body["province"] = serde_json::Value::String(scope.to_string());
    body["period_start"] = serde_json::Value::String(start_s.clone());
    ProxyRecord { topic, key: format!("{}/{}/{}", topic.key_prefix(), scope, start_s), payload: body.to_string(), released_at }
}

/// Messages for `years` from a dataset: monthly generation by source, industrial output as NBS
/// publishes it (year-to-date, January and February combined), national transport indices,
/// and, for `daily_power_year`, daily thermal generation derived from the monthly totals and
/// the power calendar factors (marked `derived:monthly×calendar` in `source`).
pub fn records_from_dataset(data: &Dataset, years: std::ops::RangeInclusive<i32>, daily_power_year: Option<i32>) -> Vec<ProxyRecord> {
    let mut out = Vec::new();
    let monthly_lag = Duration::days(15);
    let cal = HolidayCalendar::official();
    let factors = DayFactorTable::bundled();
    let mut ytd: std::collections::BTreeMap<(Signal, Scope, i32), f64> = Default::default();
    for (signal, scope, month, value) in data.proxies.iter_monthly() {
        if !years.contains(&month.year) {
            continue;
        }
        let start = day_start_utc(month.first_day());
        let end = day_start_utc(month.next().first_day());
        match signal {
            Signal::ThermalGeneration | Signal::HydroGeneration | Signal::WindGeneration | Signal::SolarGeneration | Signal::NuclearGeneration => {
                let fuel = signal.as_str().trim_end_matches("_generation");
                let body = serde_json::json!({"granularity": "month", "fuel": fuel, "value": value, "unit": "GWh", "source": "nbs", "revision": 0});
                out.push(record(Topic::PowerGeneration, scope, start, body, end + monthly_lag));
                if daily_power_year == Some(month.year) && signal == Signal::ThermalGeneration {
                    let w: Vec<(NaiveDate, f64)> =
                        days_of_month(month.year, month.month).map(|d| (d, factors.factor(Sector::Power, &cal, d))).collect();
                    let total_w: f64 = w.iter().map(|x| x.1).sum();
                    for (d, wd) in w {
                        let ds = day_start_utc(d);
                        let body = serde_json::json!({"granularity": "day", "fuel": "thermal", "value": value * wd / total_w, "unit": "GWh", "source": "derived:monthly×calendar", "revision": 0});
                        out.push(record(Topic::PowerGeneration, scope, ds, body, ds + Duration::days(1)));
                    }
                }
            }
            Signal::HighwayFreight | Signal::HighwayPassengers => {
                let kind = if signal == Signal::HighwayFreight { "highway_freight" } else { "highway_passengers" };
                let body = serde_json::json!({"granularity": "month", "kind": kind, "value": value, "unit": "index", "source": "mot", "revision": 0});
                out.push(record(Topic::MobilityIndex, scope, start, body, end + monthly_lag));
            }
            Signal::AviationPassengers => {
                let body = serde_json::json!({"granularity": "month", "kind": "passenger_km", "value": value, "unit": "index", "source": "caac", "revision": 0});
                out.push(record(Topic::AviationActivity, scope, start, body, end + monthly_lag));
            }
            Signal::AirportPassengers => {
                let body = serde_json::json!({"granularity": "month", "kind": "airport_passengers", "value": value, "unit": "passengers", "source": "caac", "revision": 0});
                out.push(record(Topic::AviationActivity, scope, start, body, end + monthly_lag));
            }
            Signal::ElectricityConsumption => {
                let body = serde_json::json!({"granularity": "month", "value": value, "unit": "GWh", "source": "cec", "revision": 0});
                out.push(record(Topic::PowerConsumption, scope, start, body, end + monthly_lag));
            }
            // Annual registers: one value a year (every month of the panel carries it),
            // published with the statistical communiqué at the end of the next February.
            Signal::VehicleStock | Signal::HeatingArea => {
                if month.month != 12 {
                    continue;
                }
                let (kind, unit) = if signal == Signal::VehicleStock { ("vehicle_stock", "vehicles") } else { ("heating_area", "m2") };
                let year_start = day_start_utc(YearMonth::new(month.year, 1).first_day());
                let released = day_start_utc(YearMonth::new(month.year + 1, 2).first_day()) + Duration::days(28);
                let body = serde_json::json!({"granularity": "year", "kind": kind, "value": value, "unit": unit, "source": "nbs", "revision": 0});
                out.push(record(Topic::AnnualRegister, scope, year_start, body, released));
            }
            s if s.unit() == "t" && s != Signal::CoalForPower => {
                // NBS publishes industrial output year-to-date; January only with February.
                let acc = ytd.entry((s, scope, month.year)).or_insert(0.0);
                *acc += value;
                if month.month == 1 {
                    continue;
                }
                let product = s.as_str().strip_suffix("_output").unwrap_or(s.as_str());
                let body = serde_json::json!({"granularity": "month", "product": product, "value": *acc, "unit": "t", "value_type": "ytd", "source": "nbs", "revision": 0});
                out.push(record(Topic::IndustryOutput, scope, start, body, end + monthly_lag));
            }
            _ => {}
        }
    }
    out.sort_by(|a, b| (a.released_at, &a.key).cmp(&(b.released_at, &b.key)));
    out
}

/// Produces records, keeping at most `max_in_flight` ahead of `consumed` (the consumer's
/// count), because the embedded broker keeps only a bounded log per partition.
pub fn produce_paced(
    brokers: &str,
    topics: &crate::TopicNames,
    records: &[ProxyRecord],
    max_in_flight: u64,
    consumed: Option<Arc<AtomicU64>>,
    produced: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<(), rdkafka::error::KafkaError> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let mut counts = PartitionCounts::default();
    for r in records {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(c) = &consumed {
            while produced.load(Ordering::Relaxed).saturating_sub(c.load(Ordering::Relaxed)) >= max_in_flight {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                producer.poll(std::time::Duration::from_millis(10));
            }
        }
        send_partitioned(&producer, &mut counts, topics.proxy(r.topic), &r.key, r.payload.as_bytes())?;
        produced.fetch_add(1, Ordering::Relaxed);
        producer.poll(std::time::Duration::ZERO);
    }
    producer.flush(std::time::Duration::from_secs(30))?;
    Ok(())
}

/// Partitions per topic, asked of the brokers once per topic.
#[derive(Default)]
pub struct PartitionCounts(std::collections::HashMap<String, i32>);

impl PartitionCounts {
    pub fn of<C: rdkafka::ClientContext>(&mut self, client: &rdkafka::client::Client<C>, topic: &str) -> Result<i32, rdkafka::error::KafkaError> {
        if let Some(n) = self.0.get(topic) {
            return Ok(*n);
        }
        let md = client.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
        let n = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map_or(0, |t| t.partitions().len() as i32);
        if n == 0 {
            return Err(rdkafka::error::KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition));
        }
        self.0.insert(topic.to_string(), n);
        Ok(n)
    }
}

/// Produces a proxy message to the partition `crate::partitioner` gives its key, waiting
/// while the local queue is full.
pub fn send_partitioned<C: rdkafka::producer::ProducerContext>(
    producer: &BaseProducer<C>,
    counts: &mut PartitionCounts,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<(), rdkafka::error::KafkaError>
where
    C::DeliveryOpaque: Default,
{
    let n = counts.of(producer.client(), topic)?;
    let mut rec = BaseRecord::with_opaque_to(topic, C::DeliveryOpaque::default()).key(key.as_bytes()).payload(payload);
    if let Some(p) = crate::partitioner::partition_for_key(key, n) {
        rec = rec.partition(p);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(std::time::Duration::from_millis(10));
                rec = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Month of the last record (for progress messages).
pub fn last_month(records: &[ProxyRecord]) -> Option<YearMonth> {
    records.last().map(|r| YearMonth::of(co2cast_model::calendar::shanghai_day(&r.released_at)))
}

//! `co2cast replay` and `co2cast simulate`: producers for users and load tests.

use chrono::{DateTime, Utc};
use co2cast_pipeline::replay::{PartitionCounts, ProxyRecord, records_from_dataset};
use co2cast_pipeline::simulate::Simulator;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[arg(long)]
    brokers: String,
    /// A bundled-format data directory or the raw shared/data tree.
    #[arg(long)]
    from: PathBuf,
    /// First and last year to replay.
    #[arg(long, default_value_t = 2018)]
    from_year: i32,
    #[arg(long, default_value_t = 2019)]
    to_year: i32,
    /// Also send daily thermal generation for this year (derived from monthly × calendar).
    #[arg(long)]
    daily_power_year: Option<i32>,
    /// Speed-up over the original release times (e.g. 86400 = a day per second); as fast as
    /// possible when unset.
    #[arg(long)]
    speed: Option<f64>,
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    #[arg(long)]
    brokers: String,
    /// Messages per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Share of deliberately invalid messages (for dead-letter load).
    #[arg(long, default_value_t = 0.0)]
    bad_fraction: f64,
    /// First simulated hour (RFC 3339).
    #[arg(long, default_value = "2019-01-01T00:00:00+08:00")]
    start: String,
}

fn producer(brokers: &str) -> Result<BaseProducer, Box<dyn std::error::Error>> {
    crate::operations::check_brokers(brokers)?;
    Ok(ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").set("linger.ms", "5").create()?)
}

/// To the partition of the key's province (`co2cast_pipeline::partitioner`).
fn send(p: &BaseProducer, counts: &mut PartitionCounts, r: &ProxyRecord) -> Result<(), Box<dyn std::error::Error>> {
    co2cast_pipeline::replay::send_partitioned(p, counts, r.topic.name(), &r.key, r.payload.as_bytes())
        .map_err(|e| format!("producing to {}: {e} (is a broker running there, with co2cast's topics?)", r.topic.name()).into())
}

pub fn replay(a: ReplayArgs) -> Result<(), Box<dyn std::error::Error>> {
    if a.speed.is_some_and(|s| s <= 0.0) {
        return Err("--speed must be positive".into());
    }
    let data = co2cast_data::load_dir(&a.from)?;
    let records = records_from_dataset(&data, a.from_year..=a.to_year, a.daily_power_year);
    if records.is_empty() {
        return Err(format!("no proxy data for {}-{} in {}", a.from_year, a.to_year, a.from.display()).into());
    }
    let p = producer(&a.brokers)?;
    let mut counts = PartitionCounts::default();
    let t0 = Instant::now();
    let first = records[0].released_at;
    for r in &records {
        if let Some(speed) = a.speed {
            let due = Duration::from_secs_f64((r.released_at - first).num_milliseconds().max(0) as f64 / 1000.0 / speed);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                p.poll(wait);
            }
        }
        send(&p, &mut counts, r)?;
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60))?;
    eprintln!("replayed {} messages from {} in {:.1} s", records.len(), a.from.display(), t0.elapsed().as_secs_f64());
    Ok(())
}

pub fn simulate(a: SimulateArgs) -> Result<(), Box<dyn std::error::Error>> {
    if a.rate <= 0.0 || !(0.0..=1.0).contains(&a.bad_fraction) {
        return Err("--rate must be positive and --bad-fraction within 0..1".into());
    }
    let start: DateTime<Utc> = DateTime::parse_from_rfc3339(&a.start).map_err(|e| format!("--start: {e}"))?.with_timezone(&Utc);
    let p = producer(&a.brokers)?;
    let mut counts = PartitionCounts::default();
    let t0 = Instant::now();
    for (i, r) in Simulator::new(a.seed, start, a.bad_fraction).take(a.count as usize).enumerate() {
        let due = Duration::from_secs_f64(i as f64 / a.rate);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            p.poll(wait);
        }
        send(&p, &mut counts, &r)?;
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60))?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("simulated {} messages in {secs:.1} s ({:.0}/s)", a.count, a.count as f64 / secs);
    Ok(())
}

//! `co2cast run`: the streaming job. Without `--brokers` it starts the embedded default: an
//! in-process Kafka, the bundled real sample replayed into it, and the processor.

use co2cast_pipeline::processor::RunSummary;
use co2cast_pipeline::replay::{produce_paced, records_from_dataset};
use co2cast_pipeline::role::Role;
use co2cast_pipeline::{Processor, ProcessorConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(clap::Args)]
pub struct Args {
    /// Settings file (TOML, see pipelines/processor.toml); env CO2CAST__PROCESSOR__* and the
    /// flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers. Without it, an in-process Kafka is started and the bundled
    /// data (2019, the latest inventory year, to December 2024; 31 provinces) are replayed into it.
    #[arg(long)]
    brokers: Option<String>,
    /// Where checkpoints are kept (offsets and state, written atomically together); by
    /// default `<lake>/_state` for the embedded run, `state` (or the settings file's) with --brokers.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Stop once all input is processed (for scripts and tests) instead of serving on.
    #[arg(long)]
    exit_when_idle: bool,
    /// Monte Carlo members per estimate (default from the settings: 200).
    #[arg(long, value_parser = crate::operations::members)]
    members: Option<usize>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Estimate only these provinces (comma-separated ISO codes or names); all by default.
    #[arg(long, value_delimiter = ',')]
    provinces: Option<Vec<String>>,
    /// Re-estimate, publish and checkpoint after this many messages.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Parquet lake to write (default: `lake` for the embedded run, none with --brokers
    /// unless the settings name one).
    #[arg(long)]
    lake: Option<PathBuf>,
    /// Do not serve SQL while running.
    #[arg(long)]
    no_sql: bool,
    /// What this process does: `all` (one process: estimates, national totals and the lake);
    /// or, scaled out over --brokers, `province` (members of one group share the provinces),
    /// `national` (sums the province members' ensembles into national rows) or `lake` (the one
    /// lake writer). See docs/pipeline.md, "Scaling out".
    #[arg(long, default_value = "all")]
    role: co2cast_pipeline::role::Role,
    #[command(flatten)]
    sql: crate::sql::SqlFlags,
    #[command(flatten)]
    metrics: crate::operations::MetricsFlags,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let history = co2cast_data::embedded()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed)).map_err(|e| format!("cannot install the SIGINT/SIGTERM handler: {e}"))?;
    }
    let mut cfg: ProcessorConfig = crate::config::load(a.config.as_deref())?.processor;
    if let Some(m) = a.members {
        cfg.ensemble_members = m.max(20);
    }
    let brokers = a.brokers.clone().or_else(|| (a.config.is_some() || std::env::var_os("CO2CAST__PROCESSOR__BROKERS").is_some()).then(|| cfg.brokers.clone()));
    if let Some(b) = &brokers {
        crate::operations::check_brokers(b)?;
    }
    if brokers.is_none() {
        // The sample is small: re-estimate often enough to show nowcasts being revised (about
        // every five months of releases: some 530 messages a month).
        cfg.checkpoint_every_messages = 3_000;
    }
    if let Some(n) = a.checkpoint_every {
        if n == 0 {
            return Err("--checkpoint-every must be at least 1 message".into());
        }
        cfg.checkpoint_every_messages = n;
    }
    if let Some(p) = &a.provinces {
        for x in p {
            if co2cast_model::Province::parse_lenient(x).is_none() {
                return Err(format!("--provinces: unknown province `{x}`").into());
            }
        }
        cfg.provinces = Some(p.clone());
    }
    if let Some(l) = &a.lake {
        cfg.lake_dir = Some(l.clone());
    } else if brokers.is_none() && cfg.lake_dir.is_none() {
        cfg.lake_dir = Some(PathBuf::from("lake"));
    }
    cfg.role = a.role;
    if a.role != Role::All {
        let Some(b) = &brokers else {
            return Err(format!("--role {} needs --brokers: the embedded run is one process (--role all)", a.role).into());
        };
        cfg.brokers = b.clone();
        if let Some(d) = &a.state_dir {
            cfg.checkpoint_dir = d.clone();
        }
        match a.role {
            Role::Lake if cfg.lake_dir.is_none() => return Err("--role lake needs --lake".into()),
            Role::Province | Role::National if a.lake.is_some() => {
                return Err(format!("--role {} does not write the lake: run one `co2cast run --role lake --lake DIR` for it", a.role).into());
            }
            // A lake named in the settings file is the lake writer's.
            Role::Province | Role::National => cfg.lake_dir = None,
            _ => {}
        }
    }
    // Not ready until the processor has started and registered its own check.
    co2cast_metrics::health::set_check("processor", || Err("starting (calibrating and joining the consumer group)".into()));
    a.metrics.start(a.quiet)?;
    // The SQL endpoint, while the job runs (and after, until interrupted).
    let sql_thread = match (&cfg.lake_dir, a.no_sql) {
        (Some(lake), false) => {
            let sc = a.sql.config()?;
            sc.validate().map_err(|e| format!("SQL endpoint: {e}"))?;
            std::net::TcpListener::bind((sc.host.as_str(), sc.port))
                .map_err(|e| format!("SQL endpoint {}:{}: {e} (choose another with --sql-port, or --no-sql)", sc.host, sc.port))?;
            let (lake, stop) = (lake.clone(), stop.clone());
            if !a.quiet {
                eprintln!("co2cast: SQL (PostgreSQL wire) on {}:{} over {}", sc.host, sc.port, lake.display());
            }
            Some(std::thread::spawn(move || -> Result<(), String> {
                crate::sql::runtime().map_err(|e| e.to_string())?.block_on(crate::sql::serve_lake(lake, sc, stop))
            }))
        }
        _ => None,
    };
    let summary = match (&brokers, a.role) {
        (Some(_), Role::National) => {
            let mut n = co2cast_pipeline::national_stage::NationalStage::new(cfg, history)?;
            let s = n.run(stop.clone(), a.exit_when_idle)?;
            report_national(&s, a.json)?;
            return finish(sql_thread, &stop);
        }
        (Some(_), Role::Lake) => {
            let mut l = co2cast_pipeline::lake_stage::LakeStage::new(cfg, &history)?;
            let c = l.run(stop.clone(), a.exit_when_idle)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!("estimate rows in   {}\n  written          {}\n  not estimate rows {}", c.received, c.written, c.rejected);
            }
            return finish(sql_thread, &stop);
        }
        (Some(b), _) => {
            cfg.brokers = b.clone();
            if let Some(d) = &a.state_dir {
                cfg.checkpoint_dir = d.clone();
            }
            let mut p = Processor::new(cfg, history)?;
            p.run(stop.clone(), a.exit_when_idle, |_| {})?
        }
        (None, _) => embedded(a.state_dir.clone(), cfg, history, stop.clone(), a.exit_when_idle, a.quiet)?,
    };
    report(&summary, a.json)?;
    finish(sql_thread, &stop)
}

/// Stops the SQL endpoint, if one was started.
fn finish(sql_thread: Option<std::thread::JoinHandle<Result<(), String>>>, stop: &AtomicBool) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(t) = sql_thread {
        stop.store(true, Ordering::Relaxed);
        t.join().map_err(|_| "SQL thread panicked")??;
    }
    Ok(())
}

fn report_national(s: &co2cast_pipeline::national_stage::NationalSummary, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let c = &s.counters;
    println!("province-days in   {} ({} accepted, {} dead-lettered)", c.received, c.accepted, c.dead_lettered);
    println!("national rows published {} ({} of them revisions; {} published before every province reported)", c.estimates_published, c.estimate_revisions_published, c.incomplete_days_published);
    if s.incomplete_days > 0 {
        let first = s.first_incomplete.as_ref().map(|(d, missing)| format!(" (the first, {d}, lacks {})", missing.join(", "))).unwrap_or_default();
        println!("incomplete days    {} still lack provinces{first}", s.incomplete_days);
    }
    for n in &s.national {
        println!("national total {} ({} complete days): {:.0} MtCO2, 95% band [{:.0}, {:.0}]", n.year, n.days, n.band.central, n.band.p2_5, n.band.p97_5);
    }
    Ok(())
}

fn embedded(
    state_dir: Option<PathBuf>,
    mut cfg: ProcessorConfig,
    history: co2cast_data::Dataset,
    stop: Arc<AtomicBool>,
    exit_when_idle: bool,
    quiet: bool,
) -> Result<RunSummary, Box<dyn std::error::Error>> {
    let cluster = co2cast_pipeline::embedded::start_cluster_with(&cfg.topics)?;
    cfg.brokers = cluster.bootstrap_servers();
    // The state lives with the lake it wrote, so that a restart resumes both. The embedded
    // broker starts empty every run: its offsets are new, while the checkpointed state
    // (every value received, from the sample or from outside it), what was published and
    // what was owed carry over; the sample read again changes nothing.
    let dir = state_dir.or_else(|| cfg.lake_dir.as_ref().map(|l| l.join("_state"))).unwrap_or_else(|| PathBuf::from("state"));
    let resumed = co2cast_pipeline::checkpoint::Checkpoint::load(&dir)?.map(|c| (c.sequence, c.counters.received));
    cfg.checkpoint_dir = dir;
    cfg.fresh_log = true;
    let (first, last) = embedded_years(&history);
    let records = records_from_dataset(&history, first..=last, Some(first));
    eprintln!(
        "co2cast: embedded Kafka at {}; replaying {} real proxy messages ({first}-{last}, 31 provinces) from the bundled data",
        cfg.brokers,
        records.len()
    );
    if let Some((sequence, received)) = resumed {
        eprintln!(
            "co2cast: resuming the state in {} (checkpoint {sequence}, {received} messages received so far); only what changes is re-estimated",
            cfg.checkpoint_dir.display()
        );
    }
    let consumed = Arc::new(AtomicU64::new(0));
    let produced = Arc::new(AtomicU64::new(0));
    let complete = Arc::new(AtomicBool::new(false));
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(records.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} messages ({per_sec}) {msg}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let replay = {
        let topics = cfg.topics.clone();
        let (brokers, consumed, produced, complete, stop) = (cfg.brokers.clone(), consumed.clone(), produced.clone(), complete.clone(), stop.clone());
        std::thread::spawn(move || -> Result<(), String> {
            // The mock broker keeps a bounded log per partition: stay at most 2,000 ahead (this also keeps partitions interleaved in event time).
            let r = produce_paced(&brokers, &topics, &records, 2_000, Some(consumed), produced, stop).map_err(|e| e.to_string());
            complete.store(true, Ordering::Relaxed);
            r
        })
    };
    let mut processor = Processor::new(cfg, history)?.with_received_counter(consumed.clone()).with_input_complete(complete.clone());
    let ticker = {
        let (bar, consumed, stop, complete) = (bar.clone(), consumed.clone(), stop.clone(), complete.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                bar.set_position(consumed.load(Ordering::Relaxed));
                if complete.load(Ordering::Relaxed) && consumed.load(Ordering::Relaxed) >= bar.length().unwrap_or(0) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        })
    };
    let summary = processor.run(stop.clone(), true, |c| bar.set_message(format!("{} estimates published", c.estimates_published)))?;
    bar.finish_and_clear();
    replay.join().map_err(|_| "replay thread panicked")??;
    let _ = ticker.join();
    // Stopped (SIGINT/SIGTERM) before the input was all processed: end here, with this summary.
    if !exit_when_idle && !stop.load(Ordering::Relaxed) {
        report(&summary, false)?;
        eprintln!("co2cast: all input processed; still consuming from {} (Ctrl-C to stop)", cluster.bootstrap_servers());
        let summary = processor.run(stop, false, |_| {})?;
        // The clients first: a broker that goes before them reads as an outage.
        drop(processor);
        drop(cluster);
        return Ok(summary);
    }
    drop(processor);
    drop(cluster);
    Ok(summary)
}

/// The years the embedded run replays: from the latest inventory year (its estimates meet the
/// inventory; the year before comes from the bundled history) to the latest month of data
/// (estimates from the latest base year, one to five years ahead).
pub fn embedded_years(history: &co2cast_data::Dataset) -> (i32, i32) {
    let first = history.inventory.years().last().copied().unwrap_or(2019);
    let last = history.proxies.last_months().values().map(|m| m.year).max().unwrap_or(first).max(first);
    (first, last)
}

fn report(s: &RunSummary, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let c = &s.counters;
    println!("messages in        {}", c.received);
    println!("  accepted         {} ({} unchanged duplicates or stale, {} revisions, {} late)", c.accepted, c.accepted_unchanged, c.revisions, c.late);
    println!("  dead-lettered    {}{}", c.dead_lettered, if c.dead_lettered_by_code.is_empty() { String::new() } else { format!(" {:?}", c.dead_lettered_by_code) });
    println!("  accounting       in = accepted + DLQ: {}", if c.received == c.accepted + c.dead_lettered { "holds" } else { "VIOLATED" });
    println!("estimates published {} ({} of them revisions)", c.estimates_published, c.estimate_revisions_published);
    let scope = if s.provinces >= co2cast_model::Province::ALL.len() { "every province".to_string() } else { format!("{} provinces", s.provinces) };
    for n in &s.national {
        let refs: Vec<String> = s
            .references
            .iter()
            .filter(|r| r.1 == n.year)
            .map(|(source, _, v)| format!("{source} {v:.0} ({:+.1} %)", 100.0 * (n.band.central / v - 1.0)))
            .collect();
        println!(
            "national total {} ({} days): {:.0} MtCO2, 95% band [{:.0}, {:.0}] ({scope}){}",
            n.year,
            n.days,
            n.band.central,
            n.band.p2_5,
            n.band.p97_5,
            if refs.is_empty() { String::new() } else { format!("; references: {}", refs.join(", ")) }
        );
    }
    if !s.data_as_of.is_empty() {
        let list: Vec<String> = s
            .data_as_of
            .iter()
            .map(|a| if a.scopes_at_last_month == a.scopes { format!("{} {}", a.signal, a.last_month) } else { format!("{} {} ({} of {} scopes)", a.signal, a.last_month, a.scopes_at_last_month, a.scopes) })
            .collect();
        println!("data as of         {}", list.join(", "));
    }
    if let Some((first, last)) = s.nowcast_beyond_data {
        println!("nowcast            {first} to {last}: past the latest data, each month ahead widening the band (nowcast_months_beyond_data; no grid intensity without generation data)");
    }
    Ok(())
}

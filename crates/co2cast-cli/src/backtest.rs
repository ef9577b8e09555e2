//! `co2cast backtest`.

use co2cast_model::backtest::{BacktestReport, run as run_backtest};
use co2cast_model::calibration::ModelConfig;
use co2cast_model::estimate::EnsembleSettings;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Calibration base year: the only inventory year used as the anchor; nothing later is read.
    #[arg(long)]
    base_year: i32,
    /// Year to estimate and score.
    #[arg(long)]
    target_year: i32,
    /// Data directory: a bundled-format extract, or the raw shared/data tree. Defaults to the
    /// extract bundled in the binary.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Monte Carlo members.
    #[arg(long, default_value_t = 400, value_parser = crate::operations::members)]
    members: usize,
    /// Model settings as JSON (see `co2cast model-config`); defaults to the built-in ones.
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// Seed of the ensemble.
    #[arg(long, default_value_t = 20_190_101)]
    seed: u64,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let data = match &a.data {
        Some(d) => co2cast_data::load_dir(d)?,
        None => co2cast_data::embedded()?,
    };
    if a.members < 40 {
        return Err("--members must be at least 40 for 95 % bands".into());
    }
    let cfg: ModelConfig = match &a.model_config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => ModelConfig::default(),
    };
    // A year without any proxy data would be a trend line, not an estimate.
    let last_data_year = data.proxies.last_months().values().map(|m| m.year).max().unwrap_or(a.base_year);
    if a.target_year > last_data_year {
        return Err(format!("--target-year {}: the data end in {last_data_year}; a year without proxy data is not estimated", a.target_year).into());
    }
    let settings = EnsembleSettings { members: a.members, seed: a.seed };
    // After the last inventory year there is nothing provincial to score: national totals
    // against the references, and the monthly path against the proxies.
    if !data.inventory.years().contains(&a.target_year) && a.target_year > a.base_year {
        let report = co2cast_model::backtest::national_report(&data.inventory, &data.proxies, &data.references, a.base_year, a.target_year, &cfg, settings)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_national(&report, &data.origin);
        }
        return Ok(());
    }
    let report = run_backtest(&data.inventory, &data.proxies, a.base_year, a.target_year, &cfg, settings)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&report, &data.origin);
    }
    Ok(())
}

fn print_national(r: &co2cast_model::backtest::NationalReport, origin: &str) {
    println!("co2cast national backtest: calibrated on {} only ({}; {})", r.base_year, r.model_version, origin);
    println!("{} inventory (30 provinces): {:.0} MtCO2", r.base_year, r.base_inventory_mtco2);
    for y in &r.years {
        println!("  {} (horizon {} y): {:.0} MtCO2 [{:.0}, {:.0}]", y.year, y.horizon_years, y.band.central, y.band.p2_5, y.band.p97_5);
    }
    println!("Annual change, percent (co2cast [95 %] | references):");
    for c in &r.changes {
        let refs: Vec<String> = c.references.iter().map(|(s, v)| format!("{s} {v:+.1}")).collect();
        println!("  {}->{}: {:+.1} [{:+.1}, {:+.1}] | {}", c.from, c.to, c.estimate_pct, c.p2_5_pct, c.p97_5_pct, refs.join(", "));
    }
    if !r.monthly_yoy.is_empty() {
        println!("{} month by month against {} (estimate | proxies' national sums), percent:", r.base_year + 1, r.base_year);
        for m in &r.monthly_yoy {
            let p: Vec<String> = m.proxies_pct.iter().map(|(s, v)| format!("{s} {v:+.1}")).collect();
            println!("  {:>2}: {:+6.1} | {}", m.month, m.estimate_pct, p.join(", "));
        }
    }
    for rf in &r.references {
        println!("reference {}: {} (differs: {})", rf.source, rf.scope, rf.scope_difference);
    }
}

fn print_tables(r: &BacktestReport, origin: &str) {
    println!("co2cast backtest: calibrated on {} only, estimating {} ({}; {})", r.base_year, r.target_year, r.model_version, origin);
    println!("{:<14} {:<17} {:>10} {:>21} {:>10} {:>8} {:>7} {:>6}", "province", "sector", "estimate", "95% band", "inventory", "err %", "inside", "cover");
    for row in &r.rows {
        let sector = row.sector.map(|s| s.as_str()).unwrap_or("TOTAL");
        println!(
            "{:<14} {:<17} {:>10.2} {:>10.2}..{:<9.2} {:>10.2} {:>+8.1} {:>7} {:>6.2}",
            row.province.name_en(),
            sector,
            row.estimate_mtco2,
            row.p2_5,
            row.p97_5,
            row.inventory_mtco2,
            row.error_pct,
            if row.inside_95 { "yes" } else { "NO" },
            row.coverage
        );
    }
    let s = &r.summary;
    let n = &r.national;
    println!();
    println!("National (30 provinces): {:.0} MtCO2 [{:.0}, {:.0}] vs inventory {:.0} (persistence {:.0})", n.band.central, n.band.p2_5, n.band.p97_5, n.inventory_mtco2, n.persistence_mtco2);
    println!("Summary ({} province-sector rows, all figures in percent except coverage):", s.n_rows);
    println!("  power  median |err| {:.2}  p90 {:.2}   (persistence median {:.2})", s.power_median_abs_pct_err, s.power_p90_abs_pct_err, s.persistence_power_median_abs_pct_err);
    println!("  totals median |err| {:.2}  p90 {:.2}   (persistence median {:.2})", s.total_median_abs_pct_err, s.total_p90_abs_pct_err, s.persistence_total_median_abs_pct_err);
    println!("  coverage_95 {:.3} (totals {:.3}); median 95% half-width {:.1} (totals {:.1})", s.coverage_95, s.coverage_95_totals, s.median_rel_halfwidth_95, s.median_rel_halfwidth_95_totals);
    println!("  interval score (95 %, summed over rows) {:.0} MtCO2; a constant-percentage band of the same median width per sector: {:.0}", s.interval_score_95, s.constant_band_interval_score_95);
    for ((sec, e), (_, c)) in s.median_abs_pct_err_by_sector.iter().zip(&s.coverage_95_by_sector) {
        println!("  {:<17} median |err| {:>5.2}  coverage_95 {:.2}", sec.as_str(), e, c);
    }
}

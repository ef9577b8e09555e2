//! `co2cast estimate`: daily estimates for a year, as CSV.

use co2cast_model::calendar::{DayFactorTable, HolidayCalendar};
use co2cast_model::calibration::{ModelConfig, calibrate};
use co2cast_model::domain::{Province, Sector};
use co2cast_model::estimate::{Band, EnsembleSettings, Estimator, MODEL_VERSION};
use co2cast_model::series::YearMonth;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Calibration base year (latest inventory year to anchor on).
    #[arg(long)]
    base_year: i32,
    /// Year to estimate, day by day.
    #[arg(long)]
    year: i32,
    /// Only this province (name, ISO code or NBS code).
    #[arg(long)]
    province: Option<Province>,
    /// Only this sector.
    #[arg(long)]
    sector: Option<Sector>,
    /// Also print the national total per day (from joint member sums).
    #[arg(long)]
    national: bool,
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 400, value_parser = crate::operations::members)]
    members: usize,
    #[arg(long, default_value_t = 20_190_101)]
    seed: u64,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if a.year <= a.base_year {
        return Err(format!("--year {} must be after --base-year {}", a.year, a.base_year).into());
    }
    let data = match &a.data {
        Some(d) => co2cast_data::load_dir(d)?,
        None => co2cast_data::embedded()?,
    };
    let cfg = ModelConfig::default();
    let cal = calibrate(&data.inventory, &data.proxies, a.base_year, (a.year - a.base_year) as u32, &cfg)?;
    let base_inv = data.inventory.up_to(a.base_year);
    let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
    let est = Estimator { calibration: &cal, inventory: &base_inv, proxies: &data.proxies, calendar: &hc, day_factors: &df };
    let months: Vec<YearMonth> = (1..=12).map(|m| YearMonth::new(a.year, m)).collect();
    let settings = EnsembleSettings { members: a.members, seed: a.seed };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "date,province,sector,value_mtco2,p2_5,p5,p50,p95,p97_5,source_type,coverage,proxies,base_year,model_version")?;
    let mut national: Option<(Vec<chrono::NaiveDate>, Vec<f64>, Vec<Vec<f64>>)> = None;
    for p in Province::ALL.iter().copied().filter(|p| a.province.is_none_or(|x| x == *p)) {
        for s in Sector::ALL.iter().copied().filter(|s| a.sector.is_none_or(|x| x == *s)) {
            let Some(row) = est.row(p, s, &months, settings) else { continue };
            for d in row.daily_estimates(a.base_year) {
                let proxies: Vec<&str> = d.proxies.iter().map(|x| x.as_str()).collect();
                writeln!(
                    out,
                    "{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{},{:.3},{},{},{}",
                    d.date, p.iso_code(), s, d.value_mtco2, d.p2_5, d.p5, d.p50, d.p95, d.p97_5,
                    d.source_type.as_str(), d.coverage, proxies.join(";"), d.base_year, d.model_version
                )?;
            }
            if a.national {
                let n = national.get_or_insert_with(|| (row.days.clone(), vec![0.0; row.days.len()], vec![vec![0.0; row.days.len()]; row.members.len()]));
                for (i, c) in row.central.iter().enumerate() {
                    n.1[i] += c;
                }
                for (acc, m) in n.2.iter_mut().zip(&row.members) {
                    for (x, y) in acc.iter_mut().zip(m) {
                        *x += y;
                    }
                }
            }
        }
    }
    if let Some((days, central, members)) = national {
        for (i, d) in days.iter().enumerate() {
            let col: Vec<f64> = members.iter().map(|m| m[i]).collect();
            let b = Band::from_members(central[i], &col);
            writeln!(out, "{d},CN,all,{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},,,,{},{MODEL_VERSION}", b.central, b.p2_5, b.p5, b.p50, b.p95, b.p97_5, a.base_year)?;
        }
    }
    Ok(())
}

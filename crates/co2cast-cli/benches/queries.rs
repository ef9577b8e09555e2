//! Analyst queries on a 10-year lake: co2cast's SQL engine (DataFusion over the lake, as
//! `co2cast query` and the PostgreSQL endpoint run them) against DuckDB on the same Parquet
//! files, side by side in one run.
//!
//! The lake is written by the pipeline's own lake sink (same schemas, partitions, row groups
//! and compression as `co2cast run`), with synthetic values: 31 provinces × 6 sectors × every
//! day of 2010–2019, the national rows, and K ensemble members per province-sector-day. It
//! is cached under `target/` and reused.
//!
//! Each query runs once to warm up, then `CO2CAST_BENCH_RUNS` times (default 5) in each
//! engine; the median is reported. One JSON line per query, then a summary line.
//! Settings: `CO2CAST_BENCH_MEMBERS` (default 50), `CO2CAST_BENCH_YEARS` (default 10).
//! DuckDB runs in `python3` (the `duckdb` package), its time taken inside the process.
//!
//! Run: `cargo bench -p co2cast-cli --bench queries`.

use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use co2cast_model::domain::{Province, Sector};
use co2cast_model::estimate::{MonthInfo, RowEnsemble, SourceType};
use co2cast_pipeline::estimates::EstimateRow;
use co2cast_pipeline::lake::LakeSink;
use std::path::{Path, PathBuf};
use std::time::Instant;

const QUERIES: &[(&str, &str)] = &[
    (
        "national_daily_series_year",
        "SELECT date, value_mtco2, p2_5, p97_5, source_type FROM estimates_latest \
         WHERE province = 'CN' AND sector = 'all' AND year = 2019 ORDER BY date",
    ),
    (
        "province_ranking_month",
        "SELECT province, SUM(value_mtco2) AS mtco2 FROM estimates_latest \
         WHERE province <> 'CN' AND date BETWEEN DATE '2019-07-01' AND DATE '2019-07-31' \
         GROUP BY province ORDER BY mtco2 DESC",
    ),
    (
        "this_year_against_last_year",
        "SELECT EXTRACT(MONTH FROM date) AS m, \
                SUM(CASE WHEN year = 2019 THEN value_mtco2 END) AS y2019, \
                SUM(CASE WHEN year = 2018 THEN value_mtco2 END) AS y2018 \
         FROM estimates_latest WHERE province = 'CN' AND sector = 'all' \
         GROUP BY EXTRACT(MONTH FROM date) ORDER BY m",
    ),
    (
        "annual_totals_all_provinces_sectors_years",
        "SELECT province, sector, year, SUM(value_mtco2) AS mtco2, SUM(p97_5 - p2_5) AS width \
         FROM estimates_latest GROUP BY province, sector, year ORDER BY province, sector, year",
    ),
    (
        "sector_history_one_province",
        "SELECT date, sector, value_mtco2 FROM estimates_latest \
         WHERE province = 'CN-GD' AND sector IN ('power', 'industry') ORDER BY date, sector",
    ),
    (
        "national_annual_band_from_ensemble",
        "SELECT QUANTILE(total, 0.025) AS p2_5, QUANTILE(total, 0.975) AS p97_5 FROM \
         (SELECT member, SUM(value_mtco2) AS total FROM estimate_ensemble WHERE year = 2019 GROUP BY member) t",
    ),
    (
        "provincial_annual_bands_all_years_from_ensemble",
        "SELECT province, year, QUANTILE(total, 0.025) AS p2_5, QUANTILE(total, 0.975) AS p97_5 FROM \
         (SELECT province, year, member, SUM(value_mtco2) AS total FROM estimate_ensemble GROUP BY province, year, member) t \
         GROUP BY province, year ORDER BY province, year",
    ),
];

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

/// xorshift64*: reproducible noise without a dependency.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

fn write_lake(dir: &Path, years: i32, members: usize) {
    let t = Instant::now();
    let _ = std::fs::remove_dir_all(dir);
    let mut sink = LakeSink::open(dir, 0, None).unwrap();
    let mut noise = Noise(0x9E3779B97F4A7C15);
    let computed_at = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let (first, last) = (2020 - years, 2019);
    let mut commit = 0;
    for y in first..=last {
        for m in 1..=12u32 {
            let start = NaiveDate::from_ymd_opt(y, m, 1).unwrap();
            let days: Vec<NaiveDate> = start.iter_days().take_while(|d| d.month() == m).collect();
            let mut rows = Vec::new();
            let mut national = vec![0.0; days.len()];
            for p in Province::ALL {
                let mut ensembles = Vec::new();
                for s in Sector::ALL {
                    let level = 0.02 + 0.01 * (p as usize % 7) as f64;
                    let central: Vec<f64> = days.iter().map(|d| level * (1.0 + 0.15 * ((d.ordinal() as f64) / 58.0).cos() + 0.05 * noise.next())).collect();
                    let ens: Vec<Vec<f64>> = (0..members).map(|_| {
                        let shared = 1.0 + 0.1 * noise.next();
                        central.iter().map(|c| c * shared * (1.0 + 0.05 * noise.next())).collect()
                    }).collect();
                    for (i, d) in days.iter().enumerate() {
                        let c = central[i];
                        national[i] += c;
                        rows.push(row(*d, p.iso_code(), s.as_str(), c));
                    }
                    ensembles.push(RowEnsemble {
                        province: p,
                        sector: s,
                        days: days.clone(),
                        day_month: vec![0; days.len()],
                        months: vec![MonthInfo { month: co2cast_model::series::YearMonth { year: y, month: m }, source_type: SourceType::Proxy, coverage: 1.0, nowcast_months: 0, proxies: Vec::new(), data_through: None }],
                        central,
                        members: ens,
                    });
                }
                sink.ensemble(&ensembles, y, m, |_| 0, 2018);
            }
            for (i, d) in days.iter().enumerate() {
                rows.push(row(*d, "CN", "all", national[i]));
            }
            commit += 1;
            sink.published(&rows, computed_at, commit);
            sink.commit(commit).unwrap();
        }
        eprintln!("lake: {y} written ({:.0} s)", t.elapsed().as_secs_f64());
    }
}

fn row(date: NaiveDate, province: &str, sector: &str, v: f64) -> EstimateRow {
    EstimateRow {
        date,
        province: province.into(),
        sector: sector.into(),
        value_mtco2: v,
        p2_5: v * 0.85,
        p5: v * 0.88,
        p50: v,
        p95: v * 1.12,
        p97_5: v * 1.15,
        source_type: SourceType::Proxy,
        coverage: 1.0,
        proxies: "power.generation".into(),
        data_through: Some(format!("{:04}-{:02}", chrono::Datelike::year(&date), chrono::Datelike::month(&date))),
        base_year: 2018,
        model_version: "bench".into(),
        revision: 0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (median ms, rows) per query in DuckDB.
fn duckdb(dir: &Path, runs: usize) -> Vec<(f64, usize)> {
    let script = r#"
import json, sys, time, duckdb
lake, runs = sys.argv[1], int(sys.argv[2])
queries = json.load(sys.stdin)
con = duckdb.connect()
for t in ["estimates_latest", "estimate_ensemble"]:
    con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{lake}/{t}/**/*.parquet', hive_partitioning = true)")
out = []
for sql in queries:
    sql = sql.replace("QUANTILE(", "quantile_cont(")
    rows = len(con.execute(sql).fetchall())
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        con.execute(sql).fetchall()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    out.append([times[len(times) // 2], rows])
print(json.dumps(out))
"#;
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .arg(runs.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with the duckdb package (pip install duckdb)");
    let sqls: Vec<&str> = QUERIES.iter().map(|q| q.1).collect();
    child.stdin.take().unwrap().write_all(serde_json::to_string(&sqls).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "duckdb run failed");
    let v: Vec<(f64, usize)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn main() {
    let years: i32 = env_or("CO2CAST_BENCH_YEARS", 10);
    let members: usize = env_or("CO2CAST_BENCH_MEMBERS", 50);
    let runs: usize = env_or("CO2CAST_BENCH_RUNS", 5);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let dir = target.join(format!("co2cast-bench-lake-{years}y-{members}k"));
    if !dir.join(co2cast_lake::MANIFEST).exists() {
        write_lake(&dir, years, members);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let ctx = rt.block_on(co2cast_sql::session(&dir, &co2cast_sql::SqlLimits::default())).unwrap();
    let mut ours = Vec::new();
    for (name, sql) in QUERIES {
        let sql = sql.replace("QUANTILE(", "ensemble_quantile(");
        let rows = rt.block_on(co2cast_sql::query(&ctx, &sql)).unwrap_or_else(|e| panic!("{name}: {e}")).iter().map(|b| b.num_rows()).sum::<usize>();
        let times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                rt.block_on(co2cast_sql::query(&ctx, &sql)).unwrap();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ours.push((median(times), rows));
    }
    let theirs = duckdb(&dir, runs);
    let mut ratios = Vec::new();
    for (((name, _), (ms, rows)), (dms, drows)) in QUERIES.iter().zip(&ours).zip(&theirs) {
        let ratio = ms / dms;
        ratios.push(ratio);
        println!(
            "{}",
            serde_json::json!({"bench": "sql_query", "query": name, "years": years, "members": members, "co2cast_ms": ms, "duckdb_ms": dms,
                "ratio": ratio, "rows": rows, "rows_duckdb": drows, "target_ratio": 1.5})
        );
        assert_eq!(rows, drows, "{name}: the engines disagree on the result size");
    }
    let geomean = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
    let worst = ratios.iter().cloned().fold(0.0, f64::max);
    println!("{}", serde_json::json!({"bench": "sql_query_summary", "queries": ratios.len(), "geomean_ratio": geomean, "worst_ratio": worst, "target_ratio": 1.5}));
}

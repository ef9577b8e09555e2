//! `co2cast plot` and `co2cast report`: pictures of the lake.

use crate::sql::{lake_session, runtime, sql_list};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use chrono::NaiveDate;
use co2cast_report::{ComparisonRow, ImageFormat, ReportInput, SeriesChart};
use datafusion::prelude::SessionContext;
use std::path::PathBuf;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(clap::Args)]
pub struct PlotArgs {
    /// ISO code (e.g. CN-GD), or CN for the national total.
    #[arg(long)]
    province: String,
    /// Sector (power, industry, transport, aviation, residential, other), or `all`.
    #[arg(long, default_value = "all")]
    sector: String,
    /// First day (YYYY-MM-DD, Asia/Shanghai).
    #[arg(long)]
    from: NaiveDate,
    /// Last day, inclusive.
    #[arg(long)]
    to: NaiveDate,
    /// Output file; .png or .svg.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "lake")]
    lake: PathBuf,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The year to compare with the inventory.
    #[arg(long)]
    year: i32,
    /// Directory for index.html and comparison.csv.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "lake")]
    lake: PathBuf,
}

async fn rows(ctx: &SessionContext, sql: &str) -> Res<Vec<RecordBatch>> {
    Ok(co2cast_sql::query(ctx, sql).await?)
}

/// Column `name` of every batch, cast to `to`.
fn column(batches: &[RecordBatch], name: &str, to: &DataType) -> Res<Vec<std::sync::Arc<dyn Array>>> {
    batches
        .iter()
        .map(|b| {
            let c = b.column_by_name(name).ok_or_else(|| format!("result has no column {name}"))?;
            Ok(arrow::compute::cast(c, to)?)
        })
        .collect()
}

fn f64s(batches: &[RecordBatch], name: &str) -> Res<Vec<f64>> {
    Ok(column(batches, name, &DataType::Float64)?.iter().flat_map(|a| a.as_primitive::<Float64Type>().iter().map(|v| v.unwrap_or(f64::NAN)).collect::<Vec<_>>()).collect())
}

fn strings(batches: &[RecordBatch], name: &str) -> Res<Vec<String>> {
    Ok(column(batches, name, &DataType::Utf8)?.iter().flat_map(|a| a.as_string::<i32>().iter().map(|v| v.unwrap_or("").to_string()).collect::<Vec<_>>()).collect())
}

/// Inventory totals per year for a province (CN: all provinces) and sector (`all`: summed).
async fn inventory(ctx: &SessionContext, province: &str, sector: &str, from: i32, to: i32) -> Res<Vec<(i32, f64)>> {
    let mut filter = format!("year BETWEEN {from} AND {to}");
    if province != "CN" {
        filter += &format!(" AND province = {}", sql_list(&[province.to_string()])?);
    }
    if sector != "all" {
        filter += &format!(" AND sector = {}", sql_list(&[sector.to_string()])?);
    }
    let b = rows(ctx, &format!("SELECT year, SUM(value_mtco2) AS v FROM inventory WHERE {filter} GROUP BY year ORDER BY year")).await?;
    Ok(f64s(&b, "year")?.into_iter().map(|y| y as i32).zip(f64s(&b, "v")?).collect())
}

async fn series(ctx: &SessionContext, province: &str, sector: &str, from: NaiveDate, to: NaiveDate, title: String) -> Res<SeriesChart> {
    let sql = format!(
        "SELECT CAST(date AS VARCHAR) AS day, value_mtco2, p2_5, p97_5, source_type FROM estimates_latest \
         WHERE province = {} AND sector = {} AND date BETWEEN DATE '{from}' AND DATE '{to}' ORDER BY date",
        sql_list(&[province.to_string()])?,
        sql_list(&[sector.to_string()])?
    );
    let b = rows(ctx, &sql).await?;
    let days = strings(&b, "day")?;
    if days.is_empty() {
        return Err(format!("no estimates for {province}/{sector} between {from} and {to} in the lake (see `co2cast query \"SELECT DISTINCT province, sector FROM estimates_latest\"`)").into());
    }
    let (v, lo, hi, src) = (f64s(&b, "value_mtco2")?, f64s(&b, "p2_5")?, f64s(&b, "p97_5")?, strings(&b, "source_type")?);
    let mut points = Vec::with_capacity(days.len());
    for i in 0..days.len() {
        points.push((days[i].parse::<NaiveDate>()?, v[i], lo[i], hi[i], src[i] == "nowcast"));
    }
    let inv = match tables(ctx).await?.contains(&"inventory".to_string()) {
        true => inventory(ctx, province, sector, from.format("%Y").to_string().parse()?, to.format("%Y").to_string().parse()?).await?,
        false => Vec::new(),
    };
    Ok(SeriesChart { title, days: points, inventory: inv })
}

async fn tables(ctx: &SessionContext) -> Res<Vec<String>> {
    let b = rows(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").await?;
    strings(&b, "table_name")
}

pub fn plot(a: PlotArgs) -> Res<()> {
    let format = ImageFormat::from_path(&a.out).ok_or_else(|| format!("--out {}: the file name must end in .png or .svg", a.out.display()))?;
    if a.to < a.from {
        return Err("--to is before --from".into());
    }
    let chart = runtime()?.block_on(async {
        let ctx = lake_session(&a.lake, &co2cast_sql::SqlLimits::default()).await?;
        let what = if a.sector == "all" { "all sectors".to_string() } else { a.sector.clone() };
        let title = format!("{} {what}: daily CO2 estimate with 95 % band, {} to {}", a.province, a.from, a.to);
        series(&ctx, &a.province, &a.sector, a.from, a.to, title).await
    })?;
    co2cast_report::render_series(&chart, format, &a.out)?;
    eprintln!("co2cast: wrote {} ({} days)", a.out.display(), chart.days.len());
    Ok(())
}

pub fn report(a: ReportArgs) -> Res<()> {
    let input = runtime()?.block_on(async {
        let ctx = lake_session(&a.lake, &co2cast_sql::SqlLimits::default()).await?;
        if !tables(&ctx).await?.contains(&"comparison".to_string()) {
            return Err::<_, Box<dyn std::error::Error>>("the lake has no comparison table yet: it is written once a year with an inventory or national reference value is complete".into());
        }
        let b = rows(
            &ctx,
            &format!(
                "SELECT province, sector, reference, estimate_mtco2, p2_5, p97_5, reference_mtco2, reference_scope, scope_difference, \
                 relative_difference, z_score, CAST(inside_band_95 AS VARCHAR) AS inside, base_year, CAST(computed_at AS VARCHAR) AS computed_at \
                 FROM comparison WHERE year = {} ORDER BY province, sector, reference",
                a.year
            ),
        )
        .await?;
        let province = strings(&b, "province")?;
        if province.is_empty() {
            return Err(format!("no comparison for {} in the lake: the year must be complete and have an inventory or national reference value (CEADs to 2019, GCP to 2021, Energy Institute to 2022)", a.year).into());
        }
        let (reference, scope, scope_difference) = (strings(&b, "reference")?, strings(&b, "reference_scope")?, strings(&b, "scope_difference")?);
        let (sector, est, lo, hi, inv, rel, z, inside) = (
            strings(&b, "sector")?,
            f64s(&b, "estimate_mtco2")?,
            f64s(&b, "p2_5")?,
            f64s(&b, "p97_5")?,
            f64s(&b, "reference_mtco2")?,
            f64s(&b, "relative_difference")?,
            f64s(&b, "z_score")?,
            strings(&b, "inside")?,
        );
        let lines = (0..province.len())
            .map(|i| ComparisonRow {
                province: province[i].clone(),
                sector: sector[i].clone(),
                estimate_mtco2: est[i],
                p2_5: lo[i],
                p97_5: hi[i],
                reference: reference[i].clone(),
                reference_mtco2: inv[i],
                reference_scope: scope[i].clone(),
                scope_difference: scope_difference[i].clone(),
                relative_difference: rel[i],
                z_score: z[i],
                inside_band_95: inside[i] == "true",
            })
            .collect();
        let (from, to) = (NaiveDate::from_ymd_opt(a.year, 1, 1).ok_or("year out of range")?, NaiveDate::from_ymd_opt(a.year, 12, 31).ok_or("year out of range")?);
        let national = series(&ctx, "CN", "all", from, to, format!("China, all sectors, {}: daily estimate with 95 % band", a.year)).await?;
        // Periods start at Asia/Shanghai midnight (16:00 UTC the day before).
        let data_as_of = if tables(&ctx).await?.contains(&"proxies".to_string()) {
            let b = rows(
                &ctx,
                &format!(
                    "SELECT signal, to_char(max(period_start) + INTERVAL '8 hours', '%Y-%m') AS last_month FROM proxies WHERE year <= {} GROUP BY signal ORDER BY signal",
                    a.year
                ),
            )
            .await?;
            strings(&b, "signal")?.into_iter().zip(strings(&b, "last_month")?).collect()
        } else {
            Vec::new()
        };
        Ok(ReportInput {
            data_as_of,
            year: a.year,
            rows: lines,
            national,
            base_year: f64s(&b, "base_year")?[0] as i32,
            computed_at: strings(&b, "computed_at")?[0].clone(),
        })
    })?;
    let page = co2cast_report::write_report(&input, &a.out)?;
    eprintln!("co2cast: wrote {} ({} comparison lines)", page.display(), input.rows.len());
    Ok(())
}

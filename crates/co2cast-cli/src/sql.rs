//! `co2cast query`, `co2cast serve` and `co2cast export`: SQL over the Parquet lake.

use chrono::NaiveDate;
use co2cast_sql::server::SqlServerConfig;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args)]
pub struct QueryArgs {
    /// One SQL query (read-only).
    sql: String,
    /// The lake written by `co2cast run`.
    #[arg(long, default_value = "lake")]
    lake: PathBuf,
    /// Output: an aligned table, CSV or JSON lines.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "lake")]
    lake: PathBuf,
    #[command(flatten)]
    sql: SqlFlags,
    #[command(flatten)]
    metrics: crate::operations::MetricsFlags,
}

/// Flags of the SQL endpoint (shared by `serve` and `run`).
#[derive(clap::Args, Clone)]
pub struct SqlFlags {
    /// PostgreSQL-wire port of the SQL endpoint.
    #[arg(long, default_value_t = 5433)]
    pub sql_port: u16,
    /// Address the SQL endpoint listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub sql_host: String,
    /// Queries running longer are cancelled.
    #[arg(long, default_value_t = 30_000)]
    pub query_timeout_ms: u64,
    /// Memory all running queries may use.
    #[arg(long, default_value_t = 2048)]
    pub query_memory_mb: usize,
    /// Concurrent connections at most.
    #[arg(long, default_value_t = 32)]
    pub max_connections: usize,
    /// User name clients must log in with once a password is set.
    #[arg(long, default_value = "co2cast")]
    pub sql_user: String,
    /// File holding the SQL password (first line). Turns on SCRAM-SHA-256 authentication;
    /// so does the CO2CAST_SQL_PASSWORD environment variable. Without either, any user and
    /// database name are accepted.
    #[arg(long)]
    pub sql_password_file: Option<PathBuf>,
    /// PEM certificate chain for TLS; the endpoint then accepts TLS connections only.
    #[arg(long, requires = "sql_tls_key")]
    pub sql_tls_cert: Option<PathBuf>,
    /// PEM private key of --sql-tls-cert.
    #[arg(long, requires = "sql_tls_cert")]
    pub sql_tls_key: Option<PathBuf>,
}

impl SqlFlags {
    pub fn config(&self) -> Result<SqlServerConfig, String> {
        let password = match &self.sql_password_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("--sql-password-file {}: {e}", p.display()))?;
                let first = text.lines().next().unwrap_or("").to_string();
                if first.is_empty() {
                    return Err(format!("--sql-password-file {}: the first line is empty", p.display()));
                }
                Some(first)
            }
            None => std::env::var("CO2CAST_SQL_PASSWORD").ok().filter(|p| !p.is_empty()),
        };
        Ok(SqlServerConfig {
            host: self.sql_host.clone(),
            port: self.sql_port,
            max_connections: self.max_connections,
            query_timeout_ms: self.query_timeout_ms,
            memory_limit_mb: self.query_memory_mb,
            auth: password.map(|password| co2cast_sql::server::SqlAuth { user: self.sql_user.clone(), password }),
            tls: match (&self.sql_tls_cert, &self.sql_tls_key) {
                (Some(c), Some(k)) => Some(co2cast_sql::server::SqlTls { cert_path: c.clone(), key_path: k.clone() }),
                _ => None,
            },
            ..SqlServerConfig::default()
        })
    }
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// First day (YYYY-MM-DD, Asia/Shanghai).
    #[arg(long)]
    from: NaiveDate,
    /// Last day, inclusive.
    #[arg(long)]
    to: NaiveDate,
    /// ISO codes (e.g. CN-GD) or `CN` for national rows; all when omitted.
    #[arg(long, value_delimiter = ',')]
    provinces: Option<Vec<String>>,
    /// power, industry, ground_transport, residential, aviation, other, all; all when omitted.
    #[arg(long, value_delimiter = ',')]
    sectors: Option<Vec<String>>,
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "lake")]
    lake: PathBuf,
    /// Every vintage (from `estimates`) instead of the newest of each row.
    #[arg(long)]
    all_vintages: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq)]
pub enum ExportFormat {
    Parquet,
    Csv,
}

/// The SQL runtime: its threads have the stack the SQL limits are measured against.
pub fn runtime() -> Result<tokio::runtime::Runtime, Box<dyn std::error::Error>> {
    Ok(co2cast_sql::text_limits::runtime(2)?)
}

/// Runs `work` on a thread of `runtime()` (not on the caller's smaller stack).
fn on_sql_thread<T: Send + 'static>(work: impl std::future::Future<Output = Result<T, String>> + Send + 'static) -> Result<T, Box<dyn std::error::Error>> {
    let rt = runtime()?;
    Ok(rt.block_on(rt.spawn(work)).map_err(|e| format!("internal error: SQL task failed: {e}"))??)
}

pub(crate) async fn lake_session(lake: &Path, limits: &co2cast_sql::SqlLimits) -> Result<SessionContext, Box<dyn std::error::Error>> {
    if !lake.join(co2cast_lake::MANIFEST).exists() {
        return Err(format!("{} is not a co2cast lake (no {}); `co2cast run` writes one", lake.display(), co2cast_lake::MANIFEST).into());
    }
    Ok(co2cast_sql::session(lake, limits).await?)
}

pub fn query(a: QueryArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (lake, sql) = (a.lake.clone(), a.sql.clone());
    let batches = on_sql_thread(async move {
        let ctx = lake_session(&lake, &co2cast_sql::SqlLimits::default()).await.map_err(|e| e.to_string())?;
        co2cast_sql::query(&ctx, &sql).await.map_err(|e| e.to_string())
    })?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        match a.format {
            OutputFormat::Table => {
                writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(&batches)?)?;
            }
            OutputFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
                for b in &batches {
                    w.write(b)?;
                }
            }
            OutputFormat::Json => {
                // Lines as the Kafka messages are written (every column, nulls as `null`).
                for b in &batches {
                    for line in co2cast_pipeline::estimates::batch_to_json_lines(b)? {
                        out.write_all(&line)?;
                        out.write_all(b"\n")?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Serves SQL over `lake` until `stop` is set; tables appearing later are registered as they come.
pub async fn serve_lake(lake: PathBuf, cfg: SqlServerConfig, stop: Arc<AtomicBool>) -> Result<(), String> {
    std::fs::create_dir_all(&lake).map_err(|e| format!("{}: {e}", lake.display()))?;
    let ctx = co2cast_sql::session(&lake, &cfg.limits()).await.map_err(|e| e.to_string())?;
    // Ready once the lake's tables are registered (they are re-read twice a second).
    let registered = Arc::new(AtomicBool::new(false));
    {
        let registered = registered.clone();
        co2cast_metrics::health::set_check("sql", move || {
            if registered.load(Ordering::Acquire) { Ok(()) } else { Err("the lake's tables are not registered yet".into()) }
        });
    }
    let refresher = {
        let (ctx, lake, stop) = (ctx.clone(), lake.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match co2cast_sql::register_tables(&ctx, &lake).await {
                    Ok(_) => registered.store(true, Ordering::Release),
                    Err(e) => tracing::warn!(message = "Registering lake tables failed.", error = %e),
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        })
    };
    let server = co2cast_sql::server::serve(ctx, &cfg);
    let stopped = async {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let r = tokio::select! {
        r = server => r.map_err(|e| format!("SQL endpoint on {}:{}: {e}", cfg.host, cfg.port)),
        () = stopped => Ok(()),
    };
    refresher.abort();
    r
}

pub fn serve(a: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !a.lake.join(co2cast_lake::MANIFEST).exists() {
        return Err(format!("{} is not a co2cast lake (no {})", a.lake.display(), co2cast_lake::MANIFEST).into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed)).map_err(|e| format!("cannot install the SIGINT/SIGTERM handler: {e}"))?;
    }
    let cfg = a.sql.config()?;
    cfg.validate().map_err(|e| format!("SQL endpoint: {e}"))?;
    a.metrics.start(false)?;
    let login = match (&cfg.auth, &cfg.tls) {
        (Some(u), Some(_)) => format!(" -U {} 'sslmode=require'", u.user),
        (Some(u), None) => format!(" -U {}", u.user),
        (None, Some(_)) => " 'sslmode=require'".into(),
        (None, None) => String::new(),
    };
    eprintln!(
        "co2cast: SQL (PostgreSQL wire) on {}:{} over {}; e.g. psql -h {} -p {}{login} -c 'SELECT * FROM estimates_latest LIMIT 5'",
        cfg.host,
        cfg.port,
        a.lake.display(),
        cfg.host,
        cfg.port
    );
    runtime()?.block_on(serve_lake(a.lake, cfg, stop))?;
    Ok(())
}

pub(crate) fn sql_list(v: &[String]) -> Result<String, String> {
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if let Some(bad) = v.iter().find(|s| !ok(s)) {
        return Err(format!("`{bad}` is not a province code or sector name"));
    }
    Ok(v.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", "))
}

pub fn export(a: ExportArgs) -> Result<(), Box<dyn std::error::Error>> {
    if a.to < a.from {
        return Err("--to is before --from".into());
    }
    let table = if a.all_vintages { "estimates" } else { "estimates_latest" };
    let mut sql = format!("SELECT {} FROM {table} WHERE date BETWEEN DATE '{}' AND DATE '{}'", co2cast_sql::AS_OF_COLUMNS, a.from, a.to);
    if let Some(p) = &a.provinces {
        let canon: Vec<String> = p
            .iter()
            .map(|x| if x.eq_ignore_ascii_case("CN") { Ok("CN".to_string()) } else { co2cast_model::Province::parse_lenient(x).map(|p| p.iso_code().to_string()).ok_or(format!("--provinces: unknown province `{x}`")) })
            .collect::<Result<_, _>>()?;
        sql += &format!(" AND province IN ({})", sql_list(&canon)?);
    }
    if let Some(s) = &a.sectors {
        sql += &format!(" AND sector IN ({})", sql_list(s)?);
    }
    sql += " ORDER BY date, province, sector, revision";
    runtime()?.block_on(async {
        let ctx = lake_session(&a.lake, &co2cast_sql::SqlLimits::default()).await?;
        let out = a.out.to_string_lossy().to_string();
        // Written again if the lake changed meanwhile, so the file holds one commit's rows.
        let written = co2cast_sql::snapshot::consistent(Some(&a.lake), || async {
            let df = ctx.sql(&sql).await?;
            let opts = DataFrameWriteOptions::new().with_single_file_output(true);
            match a.format {
                ExportFormat::Parquet => df.write_parquet(&out, opts, None).await,
                ExportFormat::Csv => df.write_csv(&out, opts, None).await,
            }
        })
        .await?;
        let rows: u64 = written
            .iter()
            .filter_map(|b| b.column(0).as_any().downcast_ref::<arrow::array::UInt64Array>().map(|c| c.value(0)))
            .sum();
        eprintln!("co2cast: wrote {rows} rows to {}", a.out.display());
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

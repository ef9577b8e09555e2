//! # co2cast-sql
//!
//! SQL over the Parquet lake for analysts: a DataFusion session with every lake table
//! registered (Hive partitions as columns), `estimates_as_of('<RFC 3339>')` returning the
//! estimates as they stood at that moment, and `ensemble_quantile(x, q)`, the quantile used
//! by the pipeline itself, so that a band of any aggregate is taken from member-wise sums of
//! `estimate_ensemble`. [`server`] serves it read-only over the PostgreSQL wire protocol.

pub mod lake_table;
pub mod listing;
pub mod readonly;
pub mod server;
pub mod snapshot;
pub mod text_limits;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::datatypes::{DataType, Field, Float64Type};
use datafusion::catalog::TableFunctionImpl;
use datafusion::catalog::TableFunctionArgs;
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::datasource::{TableProvider, ViewTable};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Accumulator, Expr, Volatility, create_udaf};
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use std::path::Path;
use std::sync::Arc;

/// Limits of a query session.
#[derive(Debug, Clone)]
pub struct SqlLimits {
    /// Memory all running queries may hold (bytes); a query needing more fails.
    pub memory_limit_bytes: usize,
    pub target_partitions: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits { memory_limit_bytes: 2 << 30, target_partitions: 2 }
    }
}


/// A session over the lake at `dir`: every table present is registered.
pub async fn session(dir: &Path, limits: &SqlLimits) -> DfResult<SessionContext> {
    // DataFusion's own listing cache keeps a directory's files forever, while the pipeline adds
    // and replaces files under an open session: file lists come from the manifest instead
    // (footers stay cached: that cache checks each file's size and modification time).
    let listing: Arc<datafusion::execution::cache::cache_manager::ListFilesCache> = Arc::new(listing::ManifestListing::new(dir)?);
    let caches = datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
        .with_list_files_cache(Some(listing))
        .with_list_files_cache_limit(1 << 20);
    let runtime = RuntimeEnvBuilder::new().with_memory_limit(limits.memory_limit_bytes, 1.0).with_cache_manager(caches).build_arc()?;
    let config = SessionConfig::new()
        .with_target_partitions(limits.target_partitions.max(1))
        .with_information_schema(true)
        .with_default_catalog_and_schema("datafusion", "public")
        .with_option_extension(snapshot::LakeRoot(dir.to_path_buf()));
    // The lake writes no bloom filters, and a month file's columns are one page each: looking
    // for either costs a read per file and prunes nothing.
    let mut config = config;
    config.options_mut().execution.parquet.bloom_filter_on_read = false;
    config.options_mut().execution.parquet.enable_page_index = false;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_udaf(ensemble_quantile());
    // Registered before any connection copies the session: a copy keeps the functions it
    // was made with, while tables registered later reach every copy (the catalog is shared).
    ctx.register_udtf("estimates_as_of", Arc::new(EstimatesAsOf { ctx: ctx.clone() }));
    register_tables(&ctx, dir).await?;
    Ok(ctx)
}

/// Registers the lake tables that have files and are not registered yet (a running pipeline
/// creates tables as it goes; listing tables see new files of registered tables by themselves).
pub async fn register_tables(ctx: &SessionContext, dir: &Path) -> DfResult<Vec<&'static str>> {
    // A lake of another format is refused, not served as if it had no tables.
    if let Err(e @ co2cast_lake::LakeError::Format { .. }) = co2cast_lake::Manifest::read(dir) {
        return Err(DataFusionError::Plan(e.to_string()));
    }
    let mut added = Vec::new();
    for co2cast_lake::tables::TableSpec { name: table, partition_columns: parts } in co2cast_lake::tables::ALL {
        if ctx.table_exist(table)? {
            continue;
        }
        let cols: Vec<(String, DataType)> = parts.iter().map(|p| (p.to_string(), DataType::Int32)).collect();
        let url = format!("{}/", dir.join(table).display());
        // Registering reads a file's schema, which a concurrent commit or rollback may be
        // removing; whether the table has files is asked of the manifest, as its listing is.
        let registered = snapshot::consistent(Some(dir), || async {
            if !manifest_has_table(dir, table) {
                return Ok(false);
            }
            let table_path = ListingTableUrl::parse(&url)?;
            let options = ParquetReadOptions::default().table_partition_cols(cols.clone()).to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
            let schema = options.infer_schema(&ctx.state(), &table_path).await?;
            let listing = ListingTable::try_new(ListingTableConfig::new(table_path).with_listing_options(options).with_schema(schema))?
                .with_cache(ctx.runtime_env().cache_manager.get_file_statistic_cache());
            // A retry (the lake changed while this ran) replaces what the attempt before
            // registered.
            ctx.deregister_table(table)?;
            ctx.register_table(table, Arc::new(lake_table::LakeTable::new(table, listing))).map(|_| true)
        })
        .await?;
        if !registered {
            continue;
        }
        added.push(table);
    }
    Ok(added)
}

/// Whether the lake's manifest lists a file of `table`.
fn manifest_has_table(dir: &Path, table: &str) -> bool {
    co2cast_lake::Manifest::read(dir).ok().flatten().is_some_and(|m| m.files.values().any(|f| f.table == table))
}

/// Linear-interpolation quantile of sorted values, as the pipeline computes bands.
fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    co2cast_model::calibration::robust::quantile_sorted(s, q)
}

/// `ensemble_quantile(value, q)`: the q-quantile of the values, with the pipeline's definition.
pub fn ensemble_quantile() -> datafusion::logical_expr::AggregateUDF {
    create_udaf(
        "ensemble_quantile",
        vec![DataType::Float64, DataType::Float64],
        Arc::new(DataType::Float64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(QuantileAcc { values: Vec::new(), q: None }))),
        Arc::new(vec![DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))), DataType::Float64]),
    )
}

#[derive(Debug)]
struct QuantileAcc {
    values: Vec<f64>,
    q: Option<f64>,
}

impl Accumulator for QuantileAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let v = values[0].as_primitive::<Float64Type>();
        let q = values[1].as_primitive::<Float64Type>();
        if self.q.is_none() && !q.is_empty() && q.is_valid(0) {
            let x = q.value(0);
            if !(0.0..=1.0).contains(&x) {
                return exec_err!("ensemble_quantile: q must be within [0, 1], got {x}");
            }
            self.q = Some(x);
        }
        self.values.extend(v.iter().flatten());
        Ok(())
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let Some(q) = self.q else { return Ok(ScalarValue::Float64(None)) };
        if self.values.is_empty() {
            return Ok(ScalarValue::Float64(None));
        }
        let mut s = self.values.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        Ok(ScalarValue::Float64(Some(quantile_sorted(&s, q))))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.capacity() * 8
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let list = ScalarValue::new_list_nullable(&self.values.iter().map(|v| ScalarValue::Float64(Some(*v))).collect::<Vec<_>>(), &DataType::Float64);
        Ok(vec![ScalarValue::List(list), ScalarValue::Float64(self.q)])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let lists = states[0].as_list::<i32>();
        for i in 0..lists.len() {
            if lists.is_valid(i) {
                let inner = lists.value(i);
                let f = inner.as_any().downcast_ref::<Float64Array>().ok_or_else(|| DataFusionError::Internal("quantile state".into()))?;
                self.values.extend(f.iter().flatten());
            }
        }
        let q = states[1].as_primitive::<Float64Type>();
        if self.q.is_none() {
            self.q = q.iter().flatten().next();
        }
        Ok(())
    }
}

/// `estimates_as_of('2026-11-22T10:00:00Z')`: for each row, the newest vintage computed at or
/// before that instant.
struct EstimatesAsOf {
    ctx: SessionContext,
}

impl std::fmt::Debug for EstimatesAsOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EstimatesAsOf")
    }
}

pub const AS_OF_COLUMNS: &str = "date, province, sector, value_mtco2, p2_5, p5, p50, p95, p97_5, source_type, coverage, proxies, data_through, base_year, model_version, revision, computed_at";

impl TableFunctionImpl for EstimatesAsOf {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let [Expr::Literal(ScalarValue::Utf8(Some(s)), _)] = args.exprs() else {
            return plan_err!("estimates_as_of takes one RFC 3339 timestamp string, e.g. estimates_as_of('2026-11-22T10:00:00Z')");
        };
        let t = chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| DataFusionError::Plan(format!("estimates_as_of: `{s}` is not an RFC 3339 timestamp with offset: {e}")))?;
        let micros = t.timestamp_micros();
        // The timestamp was parsed, so only digits reach the SQL text.
        let sql = format!(
            "SELECT {AS_OF_COLUMNS} FROM (SELECT *, row_number() OVER (PARTITION BY province, sector, date ORDER BY revision DESC, computed_at DESC) AS vintage_rank \
             FROM estimates WHERE computed_at <= to_timestamp_micros({micros}) AT TIME ZONE 'UTC') WHERE vintage_rank = 1"
        );
        let plan = futures::executor::block_on(self.ctx.state().create_logical_plan(&sql))?;
        Ok(Arc::new(ViewTable::new(plan, Some(sql))))
    }
}

/// Runs one query and returns its batches: the text is bounded, the statement screened, and
/// the plan checked to read only lake tables and catalog views (see [`readonly`]).
pub async fn query(ctx: &SessionContext, sql: &str) -> DfResult<Vec<arrow::array::RecordBatch>> {
    text_limits::check(sql).map_err(DataFusionError::Plan)?;
    let mut statements = datafusion::sql::sqlparser::parser::Parser::parse_sql(&datafusion::sql::sqlparser::dialect::PostgreSqlDialect {}, sql)
        .map_err(|e| DataFusionError::Plan(format!("SQL: {e}")))?;
    if statements.len() != 1 {
        return plan_err!("co2cast query runs one statement; got {}", statements.len());
    }
    let statement = statements.remove(0);
    if readonly::screen(&statement).map_err(DataFusionError::Plan)? != readonly::Admission::Plan {
        return plan_err!("co2cast query runs queries only (SET, cursors and transactions belong to a SQL session)");
    }
    let plan = ctx.state().statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(statement))).await?;
    readonly::verify_plan(&plan).map_err(DataFusionError::Plan)?;
    let lake = snapshot::session_lake(ctx);
    snapshot::consistent(lake.as_deref(), || async { ctx.execute_logical_plan(plan.clone()).await?.collect().await }).await
}

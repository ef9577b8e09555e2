//! The SQL surface only reads. Three layers, each sufficient for writes on its own:
//!
//! 1. **Statement screen** ([`screen`]): queries, EXPLAIN of a query, SHOW, a short list of
//!    client session settings, cursors over queries and no-op transactions are admitted;
//!    anything else is refused with SQLSTATE 25006 and a readable reason. It is the friendly
//!    first answer, not the guarantee.
//! 2. **Logical plan allowlist** ([`verify_plan`]): whatever wraps a statement (EXPLAIN
//!    ANALYZE, a prepared statement, several statements in one message, CTEs, subqueries),
//!    the plan that would run may hold only relational operators and scans of the lake's
//!    read-only tables, the catalog views (`information_schema`, `pg_catalog`) and views over
//!    those. No DML, DDL, COPY, statement or extension node runs.
//! 3. **Providers** ([`crate::lake_table::LakeTable`]): the lake tables themselves refuse
//!    inserts, deletes and updates.
//!
//! The hook answers every statement itself (nothing falls through to datafusion-postgres'
//! unchecked default path) and runs queries under a timeout (SQLSTATE 57014).

use crate::lake_table::LakeTable;
use async_trait::async_trait;
use datafusion::catalog::view::ViewTable;
use datafusion::common::ParamValues;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{LogicalPlan, TableScan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{ObjectName, Set, Statement, visit_relations};
use std::ops::ControlFlow;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::{Response, Tag};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::types::format::FormatOptions;
use std::sync::Arc;
use std::time::Duration;

/// Client settings a session may change (PostgreSQL session parameters that drivers and
/// tools send). They change how results are shown to that session only; no engine option
/// (resources, catalogs, file access) is settable.
pub const SETTABLE: [&str; 11] = [
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
];

/// How an admitted statement is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Planned, checked with [`verify_plan`] and run here.
    Plan,
    /// A session setting from [`SETTABLE`], or SHOW of a variable (client-side state).
    Setting,
    /// DECLARE (its query checked like any other), FETCH or CLOSE of a cursor.
    Cursor,
    /// BEGIN, COMMIT, ROLLBACK: no-ops on a read-only endpoint.
    Transaction,
}

/// Whether a statement is admitted, and how it is answered.
pub fn screen(s: &Statement) -> Result<Admission, String> {
    screen_relations(s)?;
    match s {
        Statement::Query(_) | Statement::ExplainTable { .. } | Statement::ShowTables { .. } | Statement::ShowColumns { .. } | Statement::ShowSchemas { .. } => {
            Ok(Admission::Plan)
        }
        // EXPLAIN ANALYZE runs its statement: only what could run by itself may be explained.
        Statement::Explain { statement, .. } => match screen(statement)? {
            Admission::Plan => Ok(Admission::Plan),
            _ => Err(format!("co2cast SQL: EXPLAIN of `{}` is not supported", first_words(statement))),
        },
        Statement::ShowVariable { .. } | Statement::ShowStatus { .. } | Statement::ShowCatalogs { .. } => Ok(Admission::Setting),
        Statement::Set(set) => screen_set(set).map(|()| Admission::Setting),
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => Ok(Admission::Cursor),
        Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. } => Ok(Admission::Transaction),
        other => Err(format!(
            "co2cast SQL is read-only: `{} …` is not allowed (queries, EXPLAIN, SHOW and client SET are)",
            first_words(other)
        )),
    }
}

/// File-reading table functions and paths used as table names, named in the refusal (the
/// plan check would refuse them too, with a less helpful message).
fn screen_relations(s: &Statement) -> Result<(), String> {
    let mut bad: Option<String> = None;
    let _ = visit_relations(s, |name: &ObjectName| {
        let n = name.to_string().to_lowercase();
        let last = n.rsplit('.').next().unwrap_or(&n).trim_matches('"').to_string();
        if last.starts_with("read_") || n.contains('/') || n.contains("://") {
            bad = Some(name.to_string());
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    match bad {
        Some(n) => Err(format!("co2cast SQL is read-only: reading files (`{n}`) is not allowed; query the lake tables")),
        None => Ok(()),
    }
}

fn first_words(s: &Statement) -> String {
    s.to_string().split_whitespace().take(2).collect::<Vec<_>>().join(" ").to_uppercase()
}

fn screen_set(set: &Set) -> Result<(), String> {
    let name = match set {
        Set::SingleAssignment { hivevar: false, variable, .. } => variable.to_string().to_lowercase(),
        Set::SetTimeZone { .. } => return Ok(()),
        Set::SetNames { .. } | Set::SetNamesDefault {} => return Ok(()),
        other => return Err(format!("co2cast SQL: `{other}` is not allowed; a session may set {}", SETTABLE.join(", "))),
    };
    let name = name.trim_matches('"');
    if SETTABLE.contains(&name) {
        Ok(())
    } else {
        Err(format!("co2cast SQL: `{name}` cannot be set by clients; a session may set {}", SETTABLE.join(", ")))
    }
}

/// Checks every statement of a SQL text with the screen (the first, friendly answer).
pub fn check_sql(sql: &str) -> Result<(), String> {
    crate::text_limits::check(sql)?;
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| format!("SQL: {e}"))?;
    statements.iter().try_for_each(|s| screen(s).map(|_| ()))
}

/// Refuses any plan that could do more than read the lake and the catalog views.
pub fn verify_plan(plan: &LogicalPlan) -> Result<(), String> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| format!("co2cast SQL is read-only: {e}"))?;
    let mut refusal: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        match verify_node(node) {
            Ok(()) => Ok(TreeNodeRecursion::Continue),
            Err(e) => {
                refusal = Some(e);
                Ok(TreeNodeRecursion::Stop)
            }
        }
    })
    .map_err(|e| e.to_string())?;
    refusal.map_or(Ok(()), Err)
}

fn verify_node(node: &LogicalPlan) -> Result<(), String> {
    match node {
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Window(_)
        | LogicalPlan::Aggregate(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Join(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Union(_)
        | LogicalPlan::EmptyRelation(_)
        | LogicalPlan::Subquery(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Values(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::Distinct(_)
        | LogicalPlan::Unnest(_)
        | LogicalPlan::RecursiveQuery(_)
        | LogicalPlan::DescribeTable(_) => Ok(()),
        LogicalPlan::TableScan(scan) => verify_scan(scan),
        LogicalPlan::Dml(d) => Err(format!("co2cast SQL is read-only: {} into `{}` is not allowed", d.op, d.table_name)),
        LogicalPlan::Copy(_) => Err("co2cast SQL is read-only: COPY is not allowed (use `co2cast export`)".into()),
        LogicalPlan::Ddl(_) => Err("co2cast SQL is read-only: DDL is not allowed".into()),
        LogicalPlan::Statement(_) => Err("co2cast SQL: this statement cannot run inside a query".into()),
        LogicalPlan::Extension(e) => Err(format!("co2cast SQL: plan node `{}` is not allowed", e.node.name())),
    }
}

/// A scan must read a lake table, a catalog view, or a view whose own plan passes.
fn verify_scan(scan: &TableScan) -> Result<(), String> {
    let provider = source_as_provider(&scan.source).map_err(|e| e.to_string())?;
    if provider.downcast_ref::<LakeTable>().is_some() {
        return Ok(());
    }
    if let Some(view) = provider.downcast_ref::<ViewTable>() {
        return verify_plan(view.logical_plan());
    }
    match scan.table_name.schema() {
        Some("information_schema" | "pg_catalog") => Ok(()),
        _ => Err(format!("co2cast SQL: `{}` is not a lake table or catalog view", scan.table_name)),
    }
}

/// Plans one admitted statement of kind [`Admission::Plan`] and checks the plan.
pub async fn plan_statement(ctx: &SessionContext, s: &Statement) -> Result<LogicalPlan, PgWireError> {
    let statement = datafusion::sql::parser::Statement::Statement(Box::new(s.clone()));
    let plan = ctx.state().statement_to_plan(statement).await.map_err(|e| sql_error("42601", e.to_string()))?;
    verify_plan(&plan).map_err(read_only_error)?;
    Ok(plan)
}

fn read_only_error(msg: String) -> PgWireError {
    sql_error("25006", msg)
}

/// A refused statement: a setting no client may change is a privilege error (42501),
/// anything else a read-only violation (25006).
fn refusal(statement: &Statement) -> impl Fn(String) -> PgWireError + '_ {
    move |msg| if matches!(statement, Statement::Set(_)) { sql_error("42501", msg) } else { read_only_error(msg) }
}

fn sql_error(code: &str, msg: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), msg)))
}

/// Screens, plans, checks and runs statements under a timeout (see the module documentation).
#[derive(Debug)]
pub struct ReadOnlyHook {
    pub query_timeout: Duration,
}

impl ReadOnlyHook {
    /// The server's timeout, or the session's `statement_timeout` when that is shorter.
    fn timeout(&self, client: &(dyn ClientInfo + Send + Sync)) -> Duration {
        let session = client.metadata().get("statement_timeout_ms").and_then(|s| s.parse::<u64>().ok()).filter(|ms| *ms > 0);
        session.map_or(self.query_timeout, |ms| self.query_timeout.min(Duration::from_millis(ms)))
    }

    async fn run(&self, ctx: &SessionContext, plan: LogicalPlan, client: &(dyn ClientInfo + Send + Sync)) -> PgWireResult<Response> {
        verify_plan(&plan).map_err(read_only_error)?;
        let timeout = self.timeout(client);
        let lake = crate::snapshot::session_lake(ctx);
        let work = crate::snapshot::consistent(lake.as_deref(), || async {
            let df = ctx.execute_logical_plan(plan.clone()).await?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            datafusion::common::Result::Ok((schema, batches))
        });
        let (schema, batches) = match tokio::time::timeout(timeout, work).await {
            Err(_) => return Err(sql_error("57014", format!("canceling statement due to statement timeout ({} ms)", timeout.as_millis()))),
            Ok(Err(e)) => return Err(sql_error("XX000", e.to_string())),
            Ok(Ok(x)) => x,
        };
        let mem = datafusion::datasource::MemTable::try_new(schema, vec![batches]).map_err(|e| sql_error("XX000", e.to_string()))?;
        let df = ctx.read_table(Arc::new(mem)).map_err(|e| sql_error("XX000", e.to_string()))?;
        let opts = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        Ok(Response::Query(encode_dataframe(df, &Format::UnifiedText, Some(opts)).await?))
    }

    /// The query of each DECLARE must pass like a query of its own.
    async fn check_cursor(ctx: &SessionContext, s: &Statement) -> PgWireResult<()> {
        if let Statement::Declare { stmts } = s {
            for d in stmts {
                if let Some(q) = &d.for_query {
                    plan_statement(ctx, &Statement::Query(q.clone())).await?;
                }
            }
        }
        Ok(())
    }

    async fn simple(&self, statement: &Statement, ctx: &SessionContext, client: &mut dyn HookClient) -> PgWireResult<Response> {
        match screen(statement).map_err(refusal(statement))? {
            Admission::Plan => {
                let plan = plan_statement(ctx, statement).await?;
                self.run(ctx, plan, &*client).await
            }
            Admission::Setting => SetShowHook.handle_simple_query(statement, ctx, client).await.unwrap_or_else(|| Ok(Response::Execution(Tag::new("SET")))),
            Admission::Cursor => {
                Self::check_cursor(ctx, statement).await?;
                CursorStatementHook.handle_simple_query(statement, ctx, client).await.unwrap_or_else(|| Err(read_only_error("co2cast SQL: unsupported cursor statement".into())))
            }
            Admission::Transaction => TransactionStatementHook.handle_simple_query(statement, ctx, client).await.unwrap_or_else(|| Ok(Response::EmptyQuery)),
        }
    }

    async fn parse(&self, statement: &Statement, ctx: &SessionContext, client: &(dyn ClientInfo + Send + Sync)) -> PgWireResult<LogicalPlan> {
        let empty = || LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation { produce_one_row: false, schema: Arc::new(datafusion::common::DFSchema::empty()) });
        match screen(statement).map_err(refusal(statement))? {
            Admission::Plan => plan_statement(ctx, statement).await,
            Admission::Setting => SetShowHook.handle_extended_parse_query(statement, ctx, client).await.unwrap_or_else(|| Ok(empty())),
            Admission::Cursor => {
                Self::check_cursor(ctx, statement).await?;
                CursorStatementHook.handle_extended_parse_query(statement, ctx, client).await.unwrap_or_else(|| Ok(empty()))
            }
            Admission::Transaction => TransactionStatementHook.handle_extended_parse_query(statement, ctx, client).await.unwrap_or_else(|| Ok(empty())),
        }
    }

    async fn execute(&self, statement: &Statement, plan: &LogicalPlan, params: &ParamValues, ctx: &SessionContext, client: &mut dyn HookClient) -> PgWireResult<Response> {
        match screen(statement).map_err(refusal(statement))? {
            Admission::Plan => {
                let plan = plan.clone().with_param_values(params.clone()).map_err(|e| sql_error("22023", e.to_string()))?;
                self.run(ctx, plan, &*client).await
            }
            Admission::Setting => SetShowHook.handle_extended_query(statement, plan, params, ctx, client).await.unwrap_or_else(|| Ok(Response::Execution(Tag::new("SET")))),
            Admission::Cursor => {
                Self::check_cursor(ctx, statement).await?;
                CursorStatementHook.handle_extended_query(statement, plan, params, ctx, client).await.unwrap_or_else(|| Err(read_only_error("co2cast SQL: unsupported cursor statement".into())))
            }
            Admission::Transaction => TransactionStatementHook.handle_extended_query(statement, plan, params, ctx, client).await.unwrap_or_else(|| Ok(Response::EmptyQuery)),
        }
    }
}

#[async_trait]
impl QueryHook for ReadOnlyHook {
    async fn handle_simple_query(&self, statement: &Statement, ctx: &SessionContext, client: &mut dyn HookClient) -> Option<PgWireResult<Response>> {
        // In a failed transaction block, everything but its end is refused.
        if let Some(r) = TransactionStatementHook.handle_simple_query(statement, ctx, client).await {
            return Some(r);
        }
        Some(self.simple(statement, ctx, client).await)
    }

    async fn handle_extended_parse_query(&self, statement: &Statement, ctx: &SessionContext, client: &(dyn ClientInfo + Send + Sync)) -> Option<PgWireResult<LogicalPlan>> {
        Some(self.parse(statement, ctx, client).await)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        plan: &LogicalPlan,
        params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Some(r) = TransactionStatementHook.handle_simple_query(statement, ctx, client).await {
            return Some(r);
        }
        Some(self.execute(statement, plan, params, ctx, client).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_admits_reads_and_client_settings_only() {
        for ok in [
            "SELECT 1",
            "SELECT * FROM estimates WHERE year = 2019",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SHOW TABLES",
            "SET extra_float_digits = 3",
            "SET application_name = 'grafana'",
            "SET TIME ZONE 'UTC'",
            "SET statement_timeout = 1000",
            "BEGIN",
            "COMMIT",
            "SELECT * FROM estimates_as_of('2026-01-01T00:00:00Z')",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        ] {
            assert!(check_sql(ok).is_ok(), "{ok}: {:?}", check_sql(ok));
        }
        for bad in [
            "CREATE TABLE x(a int)",
            "INSERT INTO estimates VALUES (1)",
            "UPDATE estimates SET value_mtco2 = 0",
            "DELETE FROM estimates",
            "DROP TABLE estimates",
            "COPY (SELECT 1) TO '/tmp/leak.csv'",
            "CREATE VIEW v AS SELECT 1",
            "SELECT 1; DROP TABLE estimates",
            "EXPLAIN ANALYZE COPY (SELECT 'pwned' AS a) TO '/tmp/pwned.csv'",
            "EXPLAIN ANALYZE INSERT INTO inventory SELECT * FROM inventory",
            "EXPLAIN SET datafusion.runtime.memory_limit = '20G'",
            "SET datafusion.catalog.default_catalog = 'x'",
            "SET datafusion.runtime.memory_limit = '20G'",
            "SET datafusion.execution.target_partitions = 64",
            "SET co2cast_lake.x = 1",
            "SET ROLE postgres",
            "PREPARE p AS INSERT INTO inventory SELECT * FROM inventory",
            "EXECUTE p",
        ] {
            let e = check_sql(bad).expect_err(bad);
            assert!(e.contains("read-only") || e.contains("not allowed") || e.contains("cannot be set") || e.contains("not supported") || e.starts_with("SQL:"), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::text_limits::{MAX_EXPRESSION_DEPTH, SQL_THREAD_STACK_BYTES, check};

    /// DataFusion's own parser and planner (COPY and EXPLAIN ANALYZE of it included).
    async fn plan(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        ctx.state().create_logical_plan(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The plan check stands on its own: writes refused however they are wrapped, and scans
    /// of anything but lake tables and catalog views refused, even where the screen is not asked.
    #[tokio::test]
    async fn the_plan_check_refuses_writes_and_foreign_tables_by_itself() {
        let ctx = SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_information_schema(true));
        ctx.sql("CREATE TABLE t AS VALUES (1)").await.unwrap().collect().await.unwrap();
        for sql in [
            "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/co2cast-never.csv'",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (2)",
            "INSERT INTO t SELECT * FROM t",
            "COPY t TO '/tmp/co2cast-never.csv'",
            "CREATE TABLE u AS SELECT 1",
            "SELECT * FROM t",
            "SELECT (SELECT max(column1) FROM t)",
            "EXPLAIN SELECT * FROM t",
        ] {
            let p = plan(&ctx, sql).await;
            assert!(verify_plan(&p).is_err(), "{sql} passed the plan check");
        }
        for sql in ["SELECT 1", "EXPLAIN ANALYZE SELECT 1", "WITH x AS (SELECT 1 AS a) SELECT a FROM x", "SELECT table_name FROM information_schema.tables"] {
            let p = plan(&ctx, sql).await;
            assert!(verify_plan(&p).is_ok(), "{sql}: {:?}", verify_plan(&p));
        }
        assert!(!std::path::Path::new("/tmp/co2cast-never.csv").exists());
    }

    /// The deepest chain the text limit accepts parses, plans, runs and is dropped on a
    /// thread with the SQL threads' stack, in whatever build the tests run.
    #[test]
    fn deepest_accepted_expression_plans_and_runs() {
        let sql = format!("SELECT {} AS n", vec!["1"; MAX_EXPRESSION_DEPTH].join(" + "));
        assert!(check(&sql).is_ok());
        let n = std::thread::Builder::new()
            .stack_size(SQL_THREAD_STACK_BYTES)
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let ctx = SessionContext::new();
                    let p = plan(&ctx, &sql).await;
                    verify_plan(&p).unwrap();
                    let b = ctx.execute_logical_plan(p).await.unwrap().collect().await.unwrap();
                    datafusion::arrow::util::pretty::pretty_format_batches(&b).unwrap().to_string()
                })
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert!(n.contains(&MAX_EXPRESSION_DEPTH.to_string()), "{n}");
    }
}

//! The SQL surface is read-only: queries, EXPLAIN, SHOW and session SET, cursors and no-op
//! transactions pass; DDL, DML, COPY, CREATE EXTERNAL TABLE and file-reading table functions
//! are refused with SQLSTATE 25006 (read_only_sql_transaction). Queries run under a timeout
//! (SQLSTATE 57014 when it expires).

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{ObjectName, Statement, visit_relations};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::types::format::FormatOptions;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

/// Why a statement is refused, or `Ok` when it may run.
pub fn check_statement(s: &Statement) -> Result<(), String> {
    let allowed = matches!(
        s,
        Statement::Query { .. }
            | Statement::Explain { .. }
            | Statement::ExplainTable { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::ShowSchemas { .. }
            | Statement::Set { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
    );
    if !allowed {
        let kind = s.to_string().split_whitespace().take(2).collect::<Vec<_>>().join(" ").to_uppercase();
        return Err(format!("co2cast SQL is read-only: `{kind} …` is not allowed (queries, EXPLAIN, SHOW and SET are)"));
    }
    // Table functions that read files, and paths used as table names.
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
    if let Some(n) = bad {
        return Err(format!("co2cast SQL is read-only: reading files (`{n}`) is not allowed; query the lake tables"));
    }
    Ok(())
}

/// Checks every statement of a SQL text.
pub fn check_sql(sql: &str) -> Result<(), String> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| format!("SQL: {e}"))?;
    statements.iter().try_for_each(check_statement)
}

fn read_only_error(msg: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "25006".into(), msg)))
}

fn sql_error(code: &str, msg: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), msg)))
}

/// Refuses writes and runs queries under a timeout.
#[derive(Debug)]
pub struct ReadOnlyHook {
    pub query_timeout: Duration,
}

impl ReadOnlyHook {
    async fn run(&self, ctx: &SessionContext, plan: LogicalPlan, client: &(dyn ClientInfo + Send + Sync)) -> PgWireResult<Response> {
        let lake = crate::snapshot::session_lake(ctx);
        let work = crate::snapshot::consistent(lake.as_deref(), || async {
            let df = ctx.execute_logical_plan(plan.clone()).await?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            datafusion::common::Result::Ok((schema, batches))
        });
        let (schema, batches) = match tokio::time::timeout(self.query_timeout, work).await {
            Err(_) => {
                return Err(sql_error(
                    "57014",
                    format!("canceling statement due to statement timeout ({} ms)", self.query_timeout.as_millis()),
                ));
            }
            Ok(Err(e)) => {
                let e: datafusion::error::DataFusionError = e;
                return Err(sql_error("XX000", e.to_string()));
            }
            Ok(Ok(x)) => x,
        };
        let mem = datafusion::datasource::MemTable::try_new(schema, vec![batches]).map_err(|e| sql_error("XX000", e.to_string()))?;
        let df = ctx.read_table(Arc::new(mem)).map_err(|e| sql_error("XX000", e.to_string()))?;
        let opts = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        Ok(Response::Query(encode_dataframe(df, &Format::UnifiedText, Some(opts)).await?))
    }
}

#[async_trait]
impl QueryHook for ReadOnlyHook {
    async fn handle_simple_query(&self, statement: &Statement, ctx: &SessionContext, client: &mut dyn HookClient) -> Option<PgWireResult<Response>> {
        if let Err(m) = check_statement(statement) {
            return Some(Err(read_only_error(m)));
        }
        if !matches!(statement, Statement::Query { .. }) {
            return None;
        }
        let plan = match ctx.state().create_logical_plan(&statement.to_string()).await {
            Ok(p) => p,
            Err(e) => return Some(Err(sql_error("42601", e.to_string()))),
        };
        Some(self.run(ctx, plan, &*client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        check_statement(statement).err().map(|m| Err(read_only_error(m)))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        plan: &LogicalPlan,
        params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Err(m) = check_statement(statement) {
            return Some(Err(read_only_error(m)));
        }
        if !matches!(statement, Statement::Query { .. }) {
            return None;
        }
        let plan = match plan.clone().with_param_values(params.clone()) {
            Ok(p) => p,
            Err(e) => return Some(Err(sql_error("22023", e.to_string()))),
        };
        Some(self.run(ctx, plan, &*client).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_file_reads_are_refused() {
        for ok in [
            "SELECT 1",
            "SELECT * FROM estimates WHERE year = 2019",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "SET extra_float_digits = 3",
            "BEGIN",
            "COMMIT",
            "SELECT * FROM estimates_as_of('2026-01-01T00:00:00Z')",
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
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT * FROM read_parquet('/tmp/x.parquet')",
            "SELECT * FROM '/etc/passwd'",
            "SELECT 1; DROP TABLE estimates",
        ] {
            let e = check_sql(bad).expect_err(bad);
            assert!(e.contains("read-only") || e.starts_with("SQL:"), "{bad}: {e}");
        }
        // CREATE EXTERNAL TABLE is not PostgreSQL syntax: refused at parse time at the latest.
        assert!(check_sql("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'").is_err());
    }
}

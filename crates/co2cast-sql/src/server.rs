//! The PostgreSQL wire endpoint (datafusion-postgres): read-only, with a query timeout, the
//! session's memory limit and a connection limit. Any user and database name are accepted.

use crate::readonly::ReadOnlyHook;
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::{QueryHook, ServerOptions, serve_with_hooks};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Settings of the SQL endpoint; units in the names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SqlServerConfig {
    pub host: String,
    pub port: u16,
    pub max_connections: usize,
    pub query_timeout_ms: u64,
    pub memory_limit_mb: usize,
}

impl Default for SqlServerConfig {
    fn default() -> Self {
        SqlServerConfig { host: "127.0.0.1".into(), port: 5433, max_connections: 32, query_timeout_ms: 30_000, memory_limit_mb: 2048 }
    }
}

impl SqlServerConfig {
    pub fn limits(&self) -> crate::SqlLimits {
        crate::SqlLimits { memory_limit_bytes: self.memory_limit_mb << 20, ..crate::SqlLimits::default() }
    }
}

/// Serves `ctx` until the task is dropped. Fails at once if the port cannot be bound.
pub async fn serve(ctx: SessionContext, cfg: &SqlServerConfig) -> std::io::Result<()> {
    if cfg.max_connections == 0 {
        return Err(std::io::Error::other("max_connections must be at least 1"));
    }
    // Bind first, so that a port in use is an error here rather than a log line.
    drop(std::net::TcpListener::bind((cfg.host.as_str(), cfg.port))?);
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider).map_err(|e| std::io::Error::other(format!("pg_catalog: {e}")))?;
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnlyHook { query_timeout: Duration::from_millis(cfg.query_timeout_ms) }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let opts = ServerOptions::new().with_host(cfg.host.clone()).with_port(cfg.port).with_max_connections(cfg.max_connections);
    serve_with_hooks(Arc::new(ctx), &opts, hooks).await
}

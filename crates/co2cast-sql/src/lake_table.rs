//! Lake tables as SQL sees them: a Parquet listing that can be scanned and nothing else.
//!
//! DataFusion's `ListingTable` accepts `INSERT` (it writes new files under the table's
//! directory). Wrapping it keeps every write path closed at the provider itself, whatever
//! statement screening or plan checks miss: `insert_into`, `delete_from`, `update` and
//! `truncate` keep the trait's refusing defaults.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{Result as DfResult, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::ListingTable;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::datasource::TableProvider;
use datafusion::catalog::{ScanArgs, ScanResult};
use std::sync::Arc;

/// A read-only lake table (see the module documentation).
#[derive(Debug)]
pub struct LakeTable {
    name: &'static str,
    inner: ListingTable,
}

impl LakeTable {
    pub fn new(name: &'static str, inner: ListingTable) -> LakeTable {
        LakeTable { name, inner }
    }

    /// The lake table's name (`estimates`, `estimates_latest`, …).
    pub fn name(&self) -> &'static str {
        self.name
    }
}

#[async_trait::async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(&self, state: &dyn Session, projection: Option<&Vec<usize>>, filters: &[Expr], limit: Option<usize>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    async fn scan_with_args<'a>(&self, state: &dyn Session, args: ScanArgs<'a>) -> DfResult<ScanResult> {
        self.inner.scan_with_args(state, args).await
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }
}

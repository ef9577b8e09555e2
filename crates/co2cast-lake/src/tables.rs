//! The lake's tables: names and Hive partition columns, for the writer, the SQL layer and
//! docs/lake.md alike.
//!
//! Partition values are integers written in canonical form (`month=7`, never `month=07`):
//! readers type them as integers, and a query pinning every partition column lists the
//! directory named by the values it was given. A zero-padded name was read as 7 by a full
//! scan but not found by that listing, so `year = 2019 AND month = 7` returned no rows.

use crate::FileWrite;
use arrow::array::RecordBatch;

/// One table of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    pub name: &'static str,
    /// Hive partition columns, outermost first; all are 32-bit integers.
    pub partition_columns: &'static [&'static str],
}

pub const ESTIMATES: TableSpec = TableSpec { name: "estimates", partition_columns: &["year", "month"] };
pub const ESTIMATES_LATEST: TableSpec = TableSpec { name: "estimates_latest", partition_columns: &["year", "month"] };
pub const ESTIMATE_ENSEMBLE: TableSpec = TableSpec { name: "estimate_ensemble", partition_columns: &["year", "month"] };
pub const PROXIES: TableSpec = TableSpec { name: "proxies", partition_columns: &["year", "month"] };
pub const COMPARISON: TableSpec = TableSpec { name: "comparison", partition_columns: &["year"] };
pub const INVENTORY: TableSpec = TableSpec { name: "inventory", partition_columns: &[] };
pub const GRID_INTENSITY: TableSpec = TableSpec { name: "grid_intensity", partition_columns: &["year", "month"] };
pub const GRID_INTENSITY_COMPARISON: TableSpec = TableSpec { name: "grid_intensity_comparison", partition_columns: &["year"] };

pub const ALL: [TableSpec; 8] = [ESTIMATES, ESTIMATES_LATEST, ESTIMATE_ENSEMBLE, PROXIES, COMPARISON, INVENTORY, GRID_INTENSITY, GRID_INTENSITY_COMPARISON];

impl TableSpec {
    /// The table of this name.
    pub fn named(name: &str) -> Option<TableSpec> {
        ALL.into_iter().find(|t| t.name == name)
    }

    /// A file of this table under the partition `values` (one per partition column).
    pub fn file(&self, values: &[i32], file_name: impl Into<String>, batch: RecordBatch) -> FileWrite {
        assert_eq!(values.len(), self.partition_columns.len(), "partition values of `{}`", self.name);
        FileWrite {
            table: self.name.to_string(),
            partition: self.partition_columns.iter().zip(values).map(|(c, v)| (c.to_string(), v.to_string())).collect(),
            file_name: file_name.into(),
            batch,
        }
    }
}

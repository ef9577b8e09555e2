//! A session opened while the pipeline writes sees every commit: new partitions, new files of
//! a partition, and files replaced in place (estimates_latest is rewritten per month).

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use co2cast_lake::{FileWrite, Lake};
use std::sync::Arc;

fn batch(rows: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("province", DataType::Utf8, false), Field::new("value_mtco2", DataType::Float64, false)]));
    RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from(vec!["CN-GD"; rows])), Arc::new(Float64Array::from(vec![1.0; rows]))],
    )
    .unwrap()
}

fn write(table: &str, month: &str, name: &str, rows: usize) -> FileWrite {
    FileWrite {
        table: table.into(),
        partition: vec![("year".into(), "2019".into()), ("month".into(), month.into())],
        file_name: name.into(),
        batch: batch(rows),
    }
}

async fn count(ctx: &datafusion::prelude::SessionContext, table: &str) -> (i64, f64) {
    let b = co2cast_sql::query(ctx, &format!("SELECT count(*) AS n, sum(value_mtco2) AS s FROM {table}")).await.unwrap();
    let n = b[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
    let s = b[0].column(1).as_any().downcast_ref::<Float64Array>().unwrap().value(0);
    (n, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sees_commits_made_after_it_was_opened() {
    let dir = std::env::temp_dir().join(format!("co2cast-sql-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut lake = Lake::open(&dir).unwrap();
    lake.commit(1, vec![write("estimates", "01", "part-1.parquet", 10), write("estimates_latest", "01", "data.parquet", 10)], "2026-01-01T00:00:00Z").unwrap();
    let ctx = co2cast_sql::session(&dir, &co2cast_sql::SqlLimits::default()).await.unwrap();
    assert_eq!(count(&ctx, "estimates").await, (10, 10.0));
    assert_eq!(count(&ctx, "estimates_latest").await, (10, 10.0));

    // Next flush: a new vintage file, a new month, and January's latest rewritten in place.
    lake.commit(
        2,
        vec![
            write("estimates", "01", "part-2.parquet", 5),
            write("estimates", "02", "part-2.parquet", 7),
            write("estimates_latest", "01", "data.parquet", 12),
            write("estimates_latest", "02", "data.parquet", 7),
        ],
        "2026-01-01T00:01:00Z",
    )
    .unwrap();
    assert_eq!(count(&ctx, "estimates").await, (22, 22.0), "new files and partitions are seen");
    assert_eq!(count(&ctx, "estimates_latest").await, (19, 19.0), "a replaced file is read whole, as replaced");
    let _ = std::fs::remove_dir_all(&dir);
}

//! A session opened while the pipeline writes sees every commit: new partitions, new files of
//! a partition, and files replaced in place (estimates_latest is rewritten per month); and a
//! query running while commits and rollbacks happen answers from one commit, without error.

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use co2cast_lake::{FileWrite, Lake};
use std::sync::Arc;

fn batch(rows: usize) -> RecordBatch {
    batch_of(rows, 1.0)
}

fn batch_of(rows: usize, value: f64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("province", DataType::Utf8, false), Field::new("value_mtco2", DataType::Float64, false)]));
    RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from(vec!["CN-GD"; rows])), Arc::new(Float64Array::from(vec![value; rows]))],
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
    lake.commit(1, vec![write("estimates", "1", "part-1.parquet", 10), write("estimates_latest", "1", "data.parquet", 10)], "2026-01-01T00:00:00Z").unwrap();
    let ctx = co2cast_sql::session(&dir, &co2cast_sql::SqlLimits::default()).await.unwrap();
    assert_eq!(count(&ctx, "estimates").await, (10, 10.0));
    assert_eq!(count(&ctx, "estimates_latest").await, (10, 10.0));

    // Next flush: a new vintage file, a new month, and January's latest rewritten in place.
    lake.commit(
        2,
        vec![
            write("estimates", "1", "part-2.parquet", 5),
            write("estimates", "2", "part-2.parquet", 7),
            write("estimates_latest", "1", "data.parquet", 12),
            write("estimates_latest", "2", "data.parquet", 7),
        ],
        "2026-01-01T00:01:00Z",
    )
    .unwrap();
    assert_eq!(count(&ctx, "estimates").await, (22, 22.0), "new files and partitions are seen");
    assert_eq!(count(&ctx, "estimates_latest").await, (19, 19.0), "a replaced file is read whole, as replaced");

    // A file the manifest does not list (a crash before the manifest save) is not read.
    co2cast_lake::write_parquet_atomic(&dir.join("estimates/year=2019/month=3/part-3.parquet"), &batch(4)).unwrap();
    assert_eq!(count(&ctx, "estimates").await, (22, 22.0), "tables list the manifest's files, not the directories'");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_during_commits_and_rollbacks_answer_from_one_commit() {
    let dir = std::env::temp_dir().join(format!("co2cast-sql-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    const MONTHS: [&str; 6] = ["1", "2", "3", "4", "5", "6"];
    // Commit k rewrites every month with k rows of value k, so one commit's answer has
    // min = max = k and k rows per month.
    let files = |k: usize| -> Vec<FileWrite> {
        MONTHS
            .iter()
            .map(|m| FileWrite {
                table: "estimates_latest".into(),
                partition: vec![("year".into(), "2019".into()), ("month".into(), m.to_string())],
                file_name: "data.parquet".into(),
                batch: batch_of(100 + k, k as f64),
            })
            .collect()
    };
    let mut lake = Lake::open(&dir).unwrap();
    lake.commit(1, files(1), "2026-01-01T00:00:00Z").unwrap();
    let ctx = co2cast_sql::session(&dir, &co2cast_sql::SqlLimits::default()).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (dir, done) = (dir.clone(), done.clone());
        std::thread::spawn(move || {
            let mut lake = Lake::open(&dir).unwrap();
            let mut k = 2;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                lake.commit(k as u64, files(k), "2026-01-01T00:00:00Z").unwrap();
                if k % 7 == 0 {
                    // A restart whose checkpoint predates commit k: its files go away.
                    Lake::open(&dir).unwrap().rollback_after(k as u64 - 1).unwrap();
                    lake = Lake::open(&dir).unwrap();
                }
                k += 1;
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            k
        })
    };
    let sql = "SELECT count(*) AS n, min(value_mtco2) AS lo, max(value_mtco2) AS hi, count(DISTINCT month) AS months FROM estimates_latest";
    let mut answers = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(4) {
        let b = co2cast_sql::query(&ctx, sql).await.unwrap_or_else(|e| panic!("query {answers} failed while the lake changed: {e}"));
        let n = b[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        if n == 0 {
            continue; // just after a rollback: nothing committed is left, which is consistent
        }
        let lo = b[0].column(1).as_any().downcast_ref::<Float64Array>().unwrap().value(0);
        let hi = b[0].column(2).as_any().downcast_ref::<Float64Array>().unwrap().value(0);
        let months = b[0].column(3).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        assert_eq!(lo, hi, "one answer mixed commits {lo} and {hi}");
        assert_eq!(n, months * (100 + lo as i64), "rows of commit {lo} are not whole");
        answers += 1;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let commits = writer.join().unwrap();
    assert!(commits > 20 && answers > 5, "the race ran: {commits} commits, {answers} answers");
    let _ = std::fs::remove_dir_all(&dir);
}

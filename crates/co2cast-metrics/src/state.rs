//! States a component holds (lag, coverage, ages): set, not counted. Happenings go through
//! [`crate::events`].

use crate::metrics;

/// Messages not yet handled in the owned partitions of a topic family.
pub fn set_consumer_lag(family: &str, messages: i64) {
    metrics().consumer_lag.with_label_values(&[family]).set(messages);
}

pub fn set_assigned_partitions(n: usize) {
    metrics().consumer_assigned.set(n as i64);
}

/// The end of the latest period received for a signal (Unix seconds).
pub fn set_watermark(signal: &str, period_end_unix_s: f64) {
    metrics().watermark_age.set_since(signal, period_end_unix_s);
}

pub fn set_proxy_coverage(province: &str, signal: &str, ratio: f64) {
    metrics().proxy_coverage.with_label_values(&[province, signal]).set(ratio);
}

/// The end of the newest published day of a sector (Unix seconds).
pub fn set_newest_published_day_end(sector: &str, unix_s: f64) {
    metrics().estimate_freshness.set_since(sector, unix_s);
}

pub fn set_broker_up(up: bool) {
    metrics().broker_up.set(i64::from(up));
}

/// A logged-in SQL connection: counted in `co2cast_sql_active_connections` while it lives.
pub struct ActiveSqlConnection(());

impl ActiveSqlConnection {
    pub fn open() -> ActiveSqlConnection {
        metrics().sql_active_connections.inc();
        ActiveSqlConnection(())
    }
}

impl Drop for ActiveSqlConnection {
    fn drop(&mut self) {
        metrics().sql_active_connections.dec();
    }
}

use crate::metrics;

/// A SQL statement was answered; `error_class` when it was answered with an error.
pub struct SqlQueryAnswered<'a> {
    /// `simple` or `extended` (the PostgreSQL protocol flow).
    pub protocol: &'a str,
    pub duration: std::time::Duration,
    pub error_class: Option<&'a str>,
    pub sqlstate: Option<&'a str>,
}

impl SqlQueryAnswered<'_> {
    pub fn emit(self) {
        let m = metrics();
        m.sql_query_duration.with_label_values(&[self.protocol]).observe(self.duration.as_secs_f64());
        match self.error_class {
            Some(class) => {
                tracing::info!(message = "SQL statement failed.", class, sqlstate = self.sqlstate.unwrap_or(""), seconds = self.duration.as_secs_f64());
                m.sql_query_errors.with_label_values(&[class]).inc();
            }
            None => tracing::debug!(message = "SQL statement answered.", protocol = self.protocol, seconds = self.duration.as_secs_f64()),
        }
    }
}

/// A SQL connection was refused or closed before it logged in.
pub struct SqlConnectionRefused<'a> {
    /// One of: connection_limit, pending_limit, login_timeout, tls_required, login_failed.
    pub reason: &'a str,
    pub peer: &'a dyn std::fmt::Display,
}

impl SqlConnectionRefused<'_> {
    pub fn emit(self) {
        tracing::info!(message = "SQL connection refused.", reason = self.reason, peer = %self.peer);
        metrics().sql_refused_connections.with_label_values(&[self.reason]).inc();
    }
}

use crate::{ErrorDomain, metrics};

/// A Kafka request failed. With `retry_in`, it is tried again after that backoff.
pub struct BrokerRequestFailed<'a> {
    /// One of: consume, produce, flush, metadata, watermarks, commit.
    pub operation: &'a str,
    pub error: &'a dyn std::fmt::Display,
    pub domain: ErrorDomain,
    pub retry_in: Option<std::time::Duration>,
    pub attempt: u32,
}

impl BrokerRequestFailed<'_> {
    pub fn emit(self) {
        let m = metrics();
        m.broker_errors.with_label_values(&[self.operation]).inc();
        match self.retry_in {
            Some(d) => {
                tracing::warn!(
                    message = "Kafka request failed; retrying.",
                    operation = self.operation,
                    error = %self.error,
                    domain = self.domain.as_str(),
                    attempt = self.attempt,
                    retry_in_ms = d.as_millis() as u64
                );
                m.broker_retries.with_label_values(&[self.operation]).inc();
                m.broker_up.set(0);
            }
            None => tracing::warn!(message = "Kafka client error.", operation = self.operation, error = %self.error, domain = self.domain.as_str()),
        }
    }
}

/// Requests succeed again after an outage.
pub struct BrokerRecovered<'a> {
    pub operation: &'a str,
    pub outage: std::time::Duration,
}

impl BrokerRecovered<'_> {
    pub fn emit(self) {
        tracing::info!(message = "Kafka reachable again.", operation = self.operation, outage_s = self.outage.as_secs_f64());
        metrics().broker_up.set(1);
    }
}

//! # co2cast-metrics
//!
//! What operators see of a running co2cast. Every metric of `docs/metrics.md` is defined
//! here, once ([`registry`]); happenings are emitted as events ([`events`]) that log and
//! count in the same call, so a log line and its metric cannot disagree; states (lag,
//! coverage, ages) are set through [`state`]. [`health`] holds the readiness checks and
//! [`http`] serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Label values are bounded: topic families, reject codes, sectors, signals, provinces and
//! the fixed operation and class names listed in the spec.

pub mod events;
pub mod health;
pub mod http;
pub mod registry;
pub mod state;

pub use registry::{Role, enable, metrics, render};

/// What an error means for whoever meets it (after Arroyo's error domains): a user's
/// setting or input, something outside co2cast (a broker, a disk), or co2cast itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    User,
    External,
    Internal,
}

impl ErrorDomain {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorDomain::User => "user",
            ErrorDomain::External => "external",
            ErrorDomain::Internal => "internal",
        }
    }
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// The same request will fail the same way: fix the cause.
    NoRetry,
    /// Transient: try again after a backoff.
    WithBackoff,
}

/// Unix time in seconds (f64), the clock of every age metric.
pub fn unix_now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

//! Events: one type per happening, each logging (tracing) and counting in its `emit`, after
//! Vector's internal events. A log line and its metric therefore never disagree.

mod broker;
mod checkpoint;
mod estimate;
mod proxy;
mod sql;

pub use broker::{BrokerRecovered, BrokerRequestFailed};
pub use checkpoint::{CheckpointFailed, CheckpointWritten};
pub use estimate::{EstimatesPublished, FlushCompleted, GridIntensityPublished, LakeWriterRejected, MemberSumsDeadLettered};
pub use proxy::{ProxyMessageDeadLettered, ProxyMessagesHandled};
pub use sql::{SqlConnectionRefused, SqlQueryAnswered};

/// Zero-valued series for every bounded label value, so that `rate()` and `increase()` see a
/// series from the start, and dashboards show 0 instead of nothing.
pub fn initialise<'a>(metric: &prometheus::IntCounterVec, label_sets: impl IntoIterator<Item = Vec<&'a str>>) {
    for labels in label_sets {
        metric.with_label_values(&labels).inc_by(0);
    }
}

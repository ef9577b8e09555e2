//! The pipeline's error: which domain it belongs to (user, external, internal) and whether a
//! retry may succeed. Its own module so that every stage (source, lake, processor) uses it
//! without depending on the processor.

use crate::checkpoint::CheckpointError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("Kafka ({context}): {source}")]
    Kafka { context: String, source: rdkafka::error::KafkaError },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("lake: {0}")]
    Lake(String),
    /// Messages the brokers refused for good (too large, not authorised, …).
    #[error("Kafka delivery: {0}")]
    Delivery(String),
    /// A defect of co2cast itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    /// Whose problem it is: a setting (user), a broker or disk (external), or co2cast (internal).
    pub fn domain(&self) -> co2cast_metrics::ErrorDomain {
        use co2cast_metrics::ErrorDomain as D;
        match self {
            PipelineError::Config(_) => D::User,
            PipelineError::Kafka { source: rdkafka::error::KafkaError::ClientCreation(_), .. } => D::User,
            PipelineError::Kafka { .. } | PipelineError::Lake(_) | PipelineError::Delivery(_) => D::External,
            PipelineError::Checkpoint(CheckpointError::Io { .. }) => D::External,
            PipelineError::Checkpoint(_) => D::User,
            PipelineError::Calibration(_) | PipelineError::Internal(_) => D::Internal,
        }
    }

    /// Whether the same request may succeed later.
    pub fn retry_hint(&self) -> co2cast_metrics::RetryHint {
        use co2cast_metrics::RetryHint as R;
        match self {
            PipelineError::Kafka { source, .. } if retryable(source) => R::WithBackoff,
            _ => R::NoRetry,
        }
    }
}

/// Kafka errors that pass: brokers down or moving, requests timing out, a coordinator or
/// leader being elected, a queue full while the brokers are away.
pub fn retryable(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    crate::source::is_outage(e)
        || matches!(
            e.rdkafka_error_code(),
            Some(
                C::QueueFull
                    | C::NotLeaderForPartition
                    | C::LeaderNotAvailable
                    | C::NotCoordinator
                    | C::CoordinatorNotAvailable
                    | C::CoordinatorLoadInProgress
                    | C::UnknownTopicOrPartition
                    | C::NotEnoughReplicas
                    | C::NotEnoughReplicasAfterAppend
                    | C::BrokerNotAvailable
                    | C::ReplicaNotAvailable
                    | C::TimedOutQueue
                    | C::WaitCache
                    | C::MessageTimedOut
            )
        )
}

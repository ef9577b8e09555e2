//! The embedded default: an in-process Kafka (librdkafka's mock cluster), the bundled real
//! sample replayed into it at accelerated speed, paced by consumer progress, and the
//! processor running on top.

use crate::processor::{DLQ_TOPIC, ESTIMATES_TOPIC};
use co2cast_ingest::Topic;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// Partitions per proxy topic in the embedded cluster.
pub const PARTITIONS: i32 = 4;

/// Starts a mock cluster with the proxy, DLQ and estimate topics created. It lives as long
/// as the returned value (which must stay on the thread that created it).
pub fn start_cluster() -> Result<MockCluster<'static, DefaultProducerContext>, rdkafka::error::KafkaError> {
    let cluster = MockCluster::new(1)?;
    for t in Topic::ALL {
        cluster.create_topic(t.name(), PARTITIONS, 1)?;
    }
    cluster.create_topic(DLQ_TOPIC, 1, 1)?;
    cluster.create_topic(ESTIMATES_TOPIC, PARTITIONS, 1)?;
    Ok(cluster)
}

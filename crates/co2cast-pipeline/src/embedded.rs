//! The embedded default: an in-process Kafka (librdkafka's mock cluster), the bundled real
//! sample replayed into it at accelerated speed, paced by consumer progress, and the
//! processor running on top.

use crate::topics::TopicNames;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// Partitions per proxy topic in the embedded cluster.
pub const PARTITIONS: i32 = 4;
/// Partitions of the estimates topic in the embedded cluster. The mock broker keeps at most
/// 5 MB per partition and drops the oldest messages beyond that; the estimates topic carries
/// every revision, so it gets more partitions (80 MB). The lake keeps every vintage whatever
/// the broker drops.
pub const ESTIMATE_PARTITIONS: i32 = 16;

/// Starts a mock cluster with the proxy, DLQ and estimate topics created. It lives as long
/// as the returned value (which must stay on the thread that created it).
pub fn start_cluster() -> Result<MockCluster<'static, DefaultProducerContext>, rdkafka::error::KafkaError> {
    start_cluster_with(&TopicNames::default())
}

pub fn start_cluster_with(topics: &TopicNames) -> Result<MockCluster<'static, DefaultProducerContext>, rdkafka::error::KafkaError> {
    start_cluster_of(1, topics)
}

/// A mock cluster of `brokers` brokers (partition leaders spread over them), for tests of
/// outages and leader moves.
pub fn start_cluster_of(brokers: i32, topics: &TopicNames) -> Result<MockCluster<'static, DefaultProducerContext>, rdkafka::error::KafkaError> {
    let cluster = MockCluster::new(brokers)?;
    for t in topics.proxies() {
        cluster.create_topic(t, PARTITIONS, 1)?;
    }
    cluster.create_topic(&topics.dead_letter, 1, 1)?;
    cluster.create_topic(&topics.estimates_daily, ESTIMATE_PARTITIONS, 1)?;
    cluster.create_topic(&topics.grid_intensity_daily, ESTIMATE_PARTITIONS, 1)?;
    cluster.create_topic(&topics.ensemble_province, ESTIMATE_PARTITIONS, 1)?;
    Ok(cluster)
}

/// Creates the pipeline's topics on any Kafka broker (proxy topics and estimates with
/// `partitions` partitions, the DLQ with one). Topics that already exist are left as they are.
pub fn create_topics(brokers: &str, topics: &TopicNames, partitions: i32) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().map_err(|e| format!("admin client: {e}"))?;
    let mut wanted: Vec<NewTopic<'_>> =
        topics.proxies().into_iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    wanted.push(NewTopic::new(&topics.dead_letter, 1, TopicReplication::Fixed(1)));
    wanted.push(NewTopic::new(&topics.estimates_daily, partitions, TopicReplication::Fixed(1)));
    wanted.push(NewTopic::new(&topics.grid_intensity_daily, partitions, TopicReplication::Fixed(1)));
    // The national stage rebuilds its sums from this topic: only the newest value of each key matters.
    wanted.push(NewTopic::new(&topics.ensemble_province, partitions, TopicReplication::Fixed(1)).set("cleanup.policy", "compact"));
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30)));
    let results = block_on(admin.create_topics(&wanted, &opts)).map_err(|e| format!("create topics: {e}"))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("create topic {t}: {e}")),
        }
    }
    Ok(())
}

/// Runs a future to completion on this thread (rdkafka's admin futures are driven by its own
/// background thread; no async runtime is needed).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(50));
    }
}

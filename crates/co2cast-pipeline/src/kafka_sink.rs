//! Publishing to Kafka for every stage: an idempotent producer that never gives a message up
//! while the brokers are away, sends that wait out back-pressure and outages with backoff, and
//! a delivery barrier that a flush passes before it checkpoints.

use crate::error::PipelineError;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Delivery reports of the producer: a message the brokers refused for good (after
/// librdkafka's retries, which never time out here) is counted, and the flush that sent it
/// fails instead of checkpointing past it.
#[derive(Default)]
pub struct DeliveryContext {
    failed: std::sync::atomic::AtomicU64,
    last_failure: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for DeliveryContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let reason = format!("{error}: {reason}");
        co2cast_metrics::events::BrokerRequestFailed { operation: "produce", error: &reason, domain: co2cast_metrics::ErrorDomain::External, retry_in: None, attempt: 0 }
            .emit();
    }
}

impl rdkafka::producer::ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            use rdkafka::Message;
            self.failed.fetch_add(1, Ordering::AcqRel);
            *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{} [{}]: {e}", m.topic(), m.partition()));
        }
    }
}

/// The Kafka topics a stage writes (estimates, member sums, grid intensity, the DLQ), through
/// one idempotent producer.
pub struct KafkaSink {
    producer: BaseProducer<DeliveryContext>,
    stop: Arc<AtomicBool>,
    max_backoff_ms: u64,
    /// Readiness, marked down while the brokers take no messages (the processor's).
    status: Option<Arc<crate::readiness::ProcessorStatus>>,
}

impl KafkaSink {
    pub fn new(brokers: &str, max_backoff_ms: u64, status: Option<Arc<crate::readiness::ProcessorStatus>>) -> Result<KafkaSink, PipelineError> {
        Ok(KafkaSink { producer: producer(brokers)?, stop: Arc::new(AtomicBool::new(false)), max_backoff_ms, status })
    }

    /// The run's stop flag: retries give up once it is set.
    pub fn set_stop(&mut self, stop: Arc<AtomicBool>) {
        self.stop = stop;
    }

    pub fn send(&self, rec: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), PipelineError> {
        if send(&self.producer, rec, &self.stop, self.max_backoff_ms, &|| self.mark_down())? {
            self.mark_up();
        }
        Ok(())
    }

    /// Estimate rows of one vintage, one JSON message each, keyed by row.
    pub fn publish_estimates(&self, topic: &str, rows: &[crate::estimates::EstimateRow], computed_at: chrono::DateTime<chrono::Utc>) -> Result<(), PipelineError> {
        let batch = crate::estimates::to_batch(rows, computed_at);
        let lines = crate::estimates::batch_to_json_lines(&batch).map_err(|e| PipelineError::Internal(format!("encoding estimates as JSON: {e}")))?;
        for (r, json) in rows.iter().zip(lines) {
            let key = r.key();
            self.send(BaseRecord::to(topic).key(key.as_bytes()).payload(&json))?;
        }
        Ok(())
    }

    fn mark_down(&self) {
        if let Some(s) = &self.status {
            let _ = s.broker_down_since_ms.compare_exchange(0, crate::readiness::unix_ms(), Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn mark_up(&self) {
        if let Some(s) = &self.status {
            s.broker_down_since_ms.store(0, Ordering::Release);
        }
    }
}

impl crate::sink::Sink for KafkaSink {
    /// Every message sent is delivered (see [`deliver`]).
    fn barrier(&mut self, _checkpoint: u64) -> Result<(), PipelineError> {
        if deliver(&self.producer, &self.stop, self.max_backoff_ms, &mut || self.mark_down())? {
            self.mark_up();
        }
        Ok(())
    }
}

/// The producer of a stage.
fn producer(brokers: &str) -> Result<BaseProducer<DeliveryContext>, PipelineError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        // Never give a message up while the brokers are away: the checkpoint waits for it.
        .set("message.timeout.ms", "0")
        .create_with_context(DeliveryContext::default())
        .map_err(|source| PipelineError::Kafka { context: "create producer".into(), source })
}

/// Sends one message, waiting while the local queue is full; full for over a second, the
/// brokers are not taking messages: retried with backoff (`on_outage` each time) until `stop`.
/// Returns whether it recovered from an outage.
fn send(
    producer: &BaseProducer<DeliveryContext>,
    mut rec: BaseRecord<'_, [u8], [u8], ()>,
    stop: &AtomicBool,
    max_backoff_ms: u64,
    on_outage: &dyn Fn(),
) -> Result<bool, PipelineError> {
    let full_since = Instant::now();
    let mut backoff = crate::retry::Backoff::new(Duration::from_millis(max_backoff_ms.max(100)));
    loop {
        match producer.send(rec) {
            Ok(()) => {
                if backoff.attempt > 0 {
                    co2cast_metrics::events::BrokerRecovered { operation: "produce", outage: full_since.elapsed() }.emit();
                }
                return Ok(backoff.attempt > 0);
            }
            Err((e @ rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                if full_since.elapsed() < Duration::from_secs(1) {
                    producer.poll(Duration::from_millis(20));
                    continue;
                }
                if stop.load(Ordering::Relaxed) {
                    return Err(PipelineError::Kafka { context: "produce: stopped while the brokers were not taking messages (the next run publishes them)".into(), source: e });
                }
                let d = backoff.next_delay();
                co2cast_metrics::events::BrokerRequestFailed { operation: "produce", error: &e, domain: co2cast_metrics::ErrorDomain::External, retry_in: Some(d), attempt: backoff.attempt }.emit();
                on_outage();
                producer.poll(d);
            }
            Err((e, _)) => return Err(PipelineError::Kafka { context: "produce".into(), source: e }),
        }
    }
}

/// The delivery barrier: waits until every message sent is delivered, retrying with backoff
/// while the brokers are away (`on_wait` each time). A message refused for good fails it, so
/// the caller does not checkpoint past it. Returns whether it recovered from an outage.
fn deliver(producer: &BaseProducer<DeliveryContext>, stop: &AtomicBool, max_backoff_ms: u64, on_wait: &mut dyn FnMut()) -> Result<bool, PipelineError> {
    let started = Instant::now();
    let mut backoff = crate::retry::Backoff::new(Duration::from_millis(max_backoff_ms.max(100)));
    while let Err(e) = producer.flush(Duration::from_secs(10)) {
        if stop.load(Ordering::Relaxed) {
            return Err(PipelineError::Kafka {
                context: "flush: stopped while the brokers were unreachable (the state stays at the last checkpoint; the next run publishes what was not delivered)".into(),
                source: e,
            });
        }
        let d = backoff.next_delay();
        co2cast_metrics::events::BrokerRequestFailed { operation: "flush", error: &e, domain: co2cast_metrics::ErrorDomain::External, retry_in: Some(d), attempt: backoff.attempt }.emit();
        on_wait();
        crate::retry::sleep_unless_stopped(d, stop);
    }
    if backoff.attempt > 0 {
        co2cast_metrics::events::BrokerRecovered { operation: "flush", outage: started.elapsed() }.emit();
    }
    let failed = producer.context().failed.swap(0, Ordering::AcqRel);
    if failed > 0 {
        let last = producer.context().last_failure.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        return Err(PipelineError::Delivery(format!("{failed} messages refused by the brokers (last: {last}); nothing after the last checkpoint is kept")));
    }
    Ok(backoff.attempt > 0)
}

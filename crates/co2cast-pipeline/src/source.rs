//! The Kafka source: a consumer-group member whose partitions start at the checkpointed
//! offsets, polled on its own thread, handing messages to the processor in batches.
//!
//! Polling (librdkafka's queue, copying out key and payload) and ingest (decode, validate,
//! state) run on two threads, so ingest keeps up with raw consumption on two cores. One
//! batch buffer holds all keys and payloads of a batch: one allocation per batch, not three
//! per message.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Messages per batch at most; a batch is also handed over as soon as the queue is empty.
pub const MAX_BATCH: usize = 4096;

/// Next offset per partition: from the checkpoint at start, then advanced by the poll
/// thread for every message it takes. A (re)assigned partition resumes here, so a rebalance
/// neither skips nor repeats messages already taken. One atomic per partition keeps the
/// per-message cost to a store.
#[derive(Clone, Default)]
pub struct Positions {
    slots: Arc<Mutex<HashMap<(Arc<str>, i32), Arc<AtomicI64>>>>,
}

impl Positions {
    /// From checkpointed `topic/partition` → next offset.
    pub fn from_offsets(offsets: &std::collections::BTreeMap<String, i64>) -> Positions {
        let p = Positions::default();
        p.reset(offsets);
        p
    }

    /// Back to checkpointed offsets; partitions not in `offsets` start from the beginning.
    pub fn reset(&self, offsets: &std::collections::BTreeMap<String, i64>) {
        for slot in self.slots.lock().unwrap_or_else(|e| e.into_inner()).values() {
            slot.store(-1, Ordering::Release);
        }
        let p = self;
        for (k, o) in offsets {
            if let Some((t, part)) = k.rsplit_once('/')
                && let Ok(part) = part.parse::<i32>()
            {
                p.slot(&Arc::from(t), part).store(*o, Ordering::Release);
            }
        }
    }

    fn slot(&self, topic: &Arc<str>, partition: i32) -> Arc<AtomicI64> {
        let mut m = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((topic.clone(), partition)).or_insert_with(|| Arc::new(AtomicI64::new(-1))).clone()
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        let m = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(Arc::from(topic), partition)).map(|a| a.load(Ordering::Acquire)).filter(|o| *o >= 0)
    }
}

/// Group membership callbacks: assigned partitions start at our own positions, not at the
/// group's committed offsets (those are for lag monitoring only).
pub struct GroupContext {
    positions: Positions,
    /// Partitions currently assigned to this member.
    pub assigned: AtomicUsize,
    /// Partitions of all proxy topics (known at start).
    pub total_partitions: AtomicUsize,
    /// When partitions were last assigned: input cannot be called quiet before they had time to deliver.
    assigned_at: Mutex<Option<Instant>>,
}

impl GroupContext {
    pub fn new(positions: Positions) -> GroupContext {
        GroupContext {
            positions,
            assigned: AtomicUsize::new(0),
            total_partitions: AtomicUsize::new(0),
            assigned_at: Mutex::new(None),
        }
    }

    pub fn assigned_at(&self) -> Option<Instant> {
        *self.assigned_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This member holds every partition of the proxy topics.
    pub fn owns_all(&self) -> bool {
        let total = self.total_partitions.load(Ordering::Acquire);
        total > 0 && self.assigned.load(Ordering::Acquire) == total
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let elems: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                for (t, p) in &elems {
                    let offset = self.positions.get(t, *p).map(Offset::Offset).unwrap_or(Offset::Beginning);
                    let _ = tpl.set_partition_offset(t, *p, offset);
                }
                match consumer.assign(tpl) {
                    Ok(()) => {
                        self.assigned.store(elems.len(), Ordering::Release);
                        *self.assigned_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                    }
                    Err(e) => tracing::error!(message = "Partition assignment failed.", error = %e),
                }
                tracing::info!(message = "Partitions assigned.", partitions = elems.len());
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.assigned.store(0, Ordering::Release);
                if let Err(e) = consumer.unassign() {
                    tracing::error!(message = "Partition revocation failed.", error = %e);
                }
                tracing::info!(message = "Partitions revoked.", partitions = tpl.count());
            }
            other => {
                tracing::warn!(message = "Rebalance error.", code = ?other);
                self.assigned.store(0, Ordering::Release);
                let _ = consumer.unassign();
            }
        }
    }
}

/// One message of a batch; key and payload are ranges into the batch buffer.
#[derive(Debug, Clone)]
pub struct BatchEntry {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Kafka message timestamp (ms since the epoch), when the broker gave one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Range<usize>>,
    pub payload: Option<Range<usize>>,
}

/// Messages handed from the poll thread to the processor.
#[derive(Debug, Default)]
pub struct MessageBatch {
    pub buf: Vec<u8>,
    pub entries: Vec<BatchEntry>,
    /// When the first message of the batch was polled.
    pub first_polled: Option<Instant>,
}

impl MessageBatch {
    pub fn key(&self, e: &BatchEntry) -> Option<&[u8]> {
        e.key.clone().map(|r| &self.buf[r])
    }

    pub fn payload(&self, e: &BatchEntry) -> Option<&[u8]> {
        e.payload.clone().map(|r| &self.buf[r])
    }

    /// Empty again, keeping its allocations.
    fn clear(&mut self) {
        self.buf.clear();
        self.entries.clear();
        self.first_polled = None;
    }

    fn push(&mut self, topic: Arc<str>, m: &rdkafka::message::BorrowedMessage<'_>) {
        let mut copy = |b: Option<&[u8]>| {
            b.map(|b| {
                let s = self.buf.len();
                self.buf.extend_from_slice(b);
                s..self.buf.len()
            })
        };
        let key = copy(m.key());
        let payload = copy(m.payload());
        if self.first_polled.is_none() {
            self.first_polled = Some(Instant::now());
        }
        self.entries.push(BatchEntry {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key,
            payload,
        });
    }
}

/// The two ends the processor holds: batches in, and emptied batches back for reuse (a
/// batch buffer is ~1 MB; allocating a fresh one per batch cost page faults on both threads).
pub struct BatchChannel {
    pub batches: Receiver<MessageBatch>,
    pub recycle: Sender<MessageBatch>,
}

/// Polls `consumer` on a thread until `stop` is set; batches go to the returned channel,
/// which holds at most `queue_batches` batches (back-pressure on the poll thread).
pub fn spawn_poll_thread(
    consumer: Arc<BaseConsumer<GroupContext>>,
    positions: Positions,
    stop: Arc<AtomicBool>,
    poll_timeout: std::time::Duration,
    queue_batches: usize,
) -> (BatchChannel, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<MessageBatch>(queue_batches);
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<MessageBatch>();
    let handle = std::thread::Builder::new()
        .name("co2cast-poll".into())
        .spawn(move || poll_loop(&consumer, &positions, &stop, poll_timeout, &tx, &recycle_rx))
        .expect("spawn poll thread");
    (BatchChannel { batches: rx, recycle: recycle_tx }, handle)
}

fn poll_loop(
    consumer: &BaseConsumer<GroupContext>,
    positions: &Positions,
    stop: &AtomicBool,
    poll_timeout: std::time::Duration,
    tx: &SyncSender<MessageBatch>,
    recycled: &Receiver<MessageBatch>,
) {
    let mut topics: HashMap<String, Arc<str>> = HashMap::new();
    let mut slots: HashMap<(Arc<str>, i32), Arc<AtomicI64>> = HashMap::new();
    let mut last: Option<(Arc<str>, i32, Arc<AtomicI64>)> = None;
    let mut batch = MessageBatch::default();
    while !stop.load(Ordering::Relaxed) {
        // Block only when there is nothing to hand over; otherwise take what is queued.
        let timeout = if batch.entries.is_empty() { poll_timeout } else { std::time::Duration::ZERO };
        match consumer.poll(timeout) {
            Some(Ok(m)) => {
                let topic = match topics.get(m.topic()) {
                    Some(t) => t.clone(),
                    None => {
                        let t: Arc<str> = Arc::from(m.topic());
                        topics.insert(m.topic().to_string(), t.clone());
                        t
                    }
                };
                // Recorded before the next poll, inside which a rebalance may run.
                let slot = match &last {
                    Some((t, p, s)) if Arc::ptr_eq(t, &topic) && *p == m.partition() => s.clone(),
                    _ => {
                        let s = slots
                            .entry((topic.clone(), m.partition()))
                            .or_insert_with(|| positions.slot(&topic, m.partition()))
                            .clone();
                        last = Some((topic.clone(), m.partition(), s.clone()));
                        s
                    }
                };
                slot.store(m.offset() + 1, Ordering::Release);
                batch.push(topic, &m);
                if batch.entries.len() >= MAX_BATCH && !hand_over(&mut batch, tx, recycled) {
                    return;
                }
            }
            Some(Err(e)) => tracing::warn!(message = "Kafka consumer error.", error = %e),
            None => {
                if !batch.entries.is_empty() && !hand_over(&mut batch, tx, recycled) {
                    return;
                }
            }
        }
    }
    if !batch.entries.is_empty() {
        hand_over(&mut batch, tx, recycled);
    }
}

/// Sends the batch and starts the next in a recycled buffer when one came back. False when
/// the processor has gone.
fn hand_over(batch: &mut MessageBatch, tx: &SyncSender<MessageBatch>, recycled: &Receiver<MessageBatch>) -> bool {
    let next = recycled
        .try_recv()
        .map(|mut b| {
            b.clear();
            b
        })
        .unwrap_or_default();
    tx.send(std::mem::replace(batch, next)).is_ok()
}

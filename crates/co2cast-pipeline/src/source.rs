//! The Kafka source: a consumer-group member whose partitions start at the checkpointed
//! offsets, polled on its own thread, handing messages to the processor in batches.
//!
//! Polling (librdkafka's queues) and ingest (decode, validate, state) run on two threads, so
//! a flush's re-estimation never keeps the group waiting for a poll.
//!
//! Assigned partitions forward their fetched messages to a [`FetchQueue`] of their own, which
//! the poll thread drains up to [`MAX_BATCH`] messages per call (`rd_kafka_consume_batch_queue`):
//! one lock and wake-up per batch, where the consumer's event poll costs an event, an
//! allocation and clock reads per message. Those messages travel to the ingest thread as
//! librdkafka gave them, read in place and released when their batch is recycled. Group
//! events (rebalances) stay on the consumer queue, served between batches; a message that
//! arrives there is copied into the batch. Routing is set before a partition is assigned, so
//! none of its messages can take the other queue and be handed over out of order.

use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicUsize, Ordering};
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
    /// Which they are (topic, partition).
    assignment: Mutex<Vec<(String, i32)>>,
    /// Held by the processor for a whole flush; a revocation waits for it, so that everything
    /// this member publishes from partitions it is losing is delivered before another member
    /// can be given them (and publish after it).
    pub flush_gate: Mutex<()>,
    /// Partitions of all proxy topics (known at start).
    pub total_partitions: AtomicUsize,
    /// When partitions were last assigned: input cannot be called quiet before they had time to deliver.
    assigned_at: Mutex<Option<Instant>>,
    /// The queue assigned partitions are routed to (owned by [`FetchQueue`]; null when none).
    fetch_queue: AtomicPtr<rdsys::rd_kafka_queue_t>,
    /// Low and high watermarks per partition, from the client's statistics.
    watermarks: Mutex<HashMap<(String, i32), (i64, i64)>>,
    /// Since when no broker has been up (from client errors and statistics).
    pub broker_down_since: Mutex<Option<Instant>>,
}

impl GroupContext {
    pub fn new(positions: Positions) -> GroupContext {
        GroupContext {
            positions,
            assigned: AtomicUsize::new(0),
            assignment: Mutex::new(Vec::new()),
            flush_gate: Mutex::new(()),
            total_partitions: AtomicUsize::new(0),
            assigned_at: Mutex::new(None),
            fetch_queue: AtomicPtr::new(std::ptr::null_mut()),
            watermarks: Mutex::new(HashMap::new()),
            broker_down_since: Mutex::new(None),
        }
    }

    /// The last known (low, high) watermarks of a partition (statistics every second).
    pub fn watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        self.watermarks.lock().unwrap_or_else(|e| e.into_inner()).get(&(topic.to_string(), partition)).copied()
    }

    /// Since when the brokers have been unreachable, if they are.
    pub fn broker_outage(&self) -> Option<Instant> {
        *self.broker_down_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn assigned_at(&self) -> Option<Instant> {
        *self.assigned_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This member holds every partition of the proxy topics.
    /// The partitions currently assigned (topic, partition).
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.assignment.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_assignment(&self, a: Vec<(String, i32)>) {
        self.assigned.store(a.len(), Ordering::Release);
        *self.assignment.lock().unwrap_or_else(|e| e.into_inner()) = a;
    }

    pub fn owns_all(&self) -> bool {
        let total = self.total_partitions.load(Ordering::Acquire);
        total > 0 && self.assigned.load(Ordering::Acquire) == total
    }
}

/// Client errors that mean the brokers cannot be reached (librdkafka retries them itself).
pub fn is_outage(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::AllBrokersDown | C::BrokerTransportFailure | C::Resolve | C::NetworkException | C::OperationTimedOut | C::RequestTimedOut)
    )
}

impl ClientContext for GroupContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let reason = format!("{error}: {reason}");
        co2cast_metrics::events::BrokerRequestFailed {
            operation: "consume",
            error: &reason,
            domain: co2cast_metrics::ErrorDomain::External,
            retry_in: None,
            attempt: 0,
        }
        .emit();
        if is_outage(&error) {
            let mut down = self.broker_down_since.lock().unwrap_or_else(|e| e.into_inner());
            down.get_or_insert_with(Instant::now);
            co2cast_metrics::state::set_broker_up(false);
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut w = self.watermarks.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's unassigned-messages bucket.
                if *partition >= 0 && p.hi_offset >= 0 {
                    w.insert((topic.clone(), *partition), (p.lo_offset.max(0), p.hi_offset));
                }
            }
        }
        drop(w);
        // Real brokers (node id ≥ 0; bootstrap entries are -1) with an open connection.
        let up = statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        let mut down = self.broker_down_since.lock().unwrap_or_else(|e| e.into_inner());
        match (up, *down) {
            (true, Some(since)) => {
                *down = None;
                co2cast_metrics::events::BrokerRecovered { operation: "consume", outage: since.elapsed() }.emit();
            }
            (true, None) => co2cast_metrics::state::set_broker_up(true),
            (false, None) => {
                *down = Some(Instant::now());
                co2cast_metrics::state::set_broker_up(false);
            }
            (false, Some(_)) => {}
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let elems: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                let fetch_queue = self.fetch_queue.load(Ordering::Acquire);
                for (t, p) in &elems {
                    let offset = self.positions.get(t, *p).map(Offset::Offset).unwrap_or(Offset::Beginning);
                    let _ = tpl.set_partition_offset(t, *p, offset);
                    if !fetch_queue.is_null() {
                        route_partition(consumer, fetch_queue, t, *p);
                    }
                }
                let n = elems.len();
                match consumer.assign(tpl) {
                    Ok(()) => {
                        self.set_assignment(elems);
                        *self.assigned_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                    }
                    Err(e) => tracing::error!(message = "Partition assignment failed.", error = %e),
                }
                tracing::info!(message = "Partitions assigned.", partitions = n);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let _flush_done = self.flush_gate.lock().unwrap_or_else(|e| e.into_inner());
                self.set_assignment(Vec::new());
                if let Err(e) = consumer.unassign() {
                    tracing::error!(message = "Partition revocation failed.", error = %e);
                }
                tracing::info!(message = "Partitions revoked.", partitions = tpl.count());
            }
            other => {
                tracing::warn!(message = "Rebalance error.", code = ?other);
                self.set_assignment(Vec::new());
                let _ = consumer.unassign();
            }
        }
    }
}

/// Forwards a partition's fetched messages to `queue`. Called before the partition is
/// assigned: librdkafka keeps a forward the application set when fetching starts (it clears it
/// when fetching stops, hence once per assignment).
fn route_partition(consumer: &BaseConsumer<GroupContext>, queue: *mut rdsys::rd_kafka_queue_t, topic: &str, partition: i32) {
    let Ok(name) = std::ffi::CString::new(topic) else { return };
    // SAFETY: the client handle is live (we are inside its poll); the partition queue handle
    // is released right after the forward, which librdkafka keeps on the partition.
    unsafe {
        let pq = rdsys::rd_kafka_queue_get_partition(consumer.client().native_ptr(), name.as_ptr(), partition);
        if pq.is_null() {
            tracing::warn!(message = "No partition queue; messages stay on the consumer queue.", topic, partition);
            return;
        }
        rdsys::rd_kafka_queue_forward(pq, queue);
        rdsys::rd_kafka_queue_destroy(pq);
    }
}

/// The queue assigned partitions forward their messages to, drained in batches by the poll
/// thread. It holds the consumer so that it is always destroyed before the consumer is.
pub struct FetchQueue {
    queue: *mut rdsys::rd_kafka_queue_t,
    consumer: Arc<BaseConsumer<GroupContext>>,
}

// SAFETY: librdkafka queues are thread-safe; the handle is only destroyed in `drop`.
unsafe impl Send for FetchQueue {}
unsafe impl Sync for FetchQueue {}

impl FetchQueue {
    /// Creates the queue and registers it for partitions assigned from now on.
    pub fn new(consumer: Arc<BaseConsumer<GroupContext>>) -> FetchQueue {
        // SAFETY: the client handle is live for as long as `consumer`, which we hold.
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        consumer.context().fetch_queue.store(queue, Ordering::Release);
        FetchQueue { queue, consumer }
    }

    /// Appends up to `max` messages to `into`, waiting at most `timeout`. librdkafka returns
    /// early only once `max` messages are there, so a caller that must not hold on to a
    /// first message asks for one with a timeout, then for the rest without. The caller owns
    /// (and must destroy) the messages.
    fn take(&self, timeout: std::time::Duration, max: usize, into: &mut Vec<*mut rdsys::rd_kafka_message_t>) -> usize {
        into.reserve(max);
        if max == 0 {
            return 0;
        }
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let len = into.len();
        // SAFETY: `into` has room for `max` more pointers; librdkafka writes at most that many.
        unsafe {
            let n = rdsys::rd_kafka_consume_batch_queue(self.queue, ms, into.as_mut_ptr().add(len), max);
            let n = usize::try_from(n).unwrap_or(0);
            into.set_len(len + n);
            n
        }
    }
}

impl std::fmt::Debug for FetchQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchQueue").field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        self.consumer.context().fetch_queue.store(std::ptr::null_mut(), Ordering::Release);
        // SAFETY: created in `new`, destroyed once; the consumer (field) outlives this call.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) };
    }
}

/// Where a batch entry's key or payload is.
#[derive(Debug, Clone, Copy)]
enum Bytes {
    /// Inside a librdkafka message the batch owns (fetch queue: no copy).
    Native(*const u8, usize),
    /// At this range of the batch buffer (consumer queue: copied out).
    Copied(usize, usize),
}

/// One message of a batch.
#[derive(Debug, Clone)]
pub struct BatchEntry {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Kafka message timestamp (ms since the epoch), when the broker gave one.
    pub timestamp_ms: Option<i64>,
    key: Option<Bytes>,
    payload: Option<Bytes>,
}

impl BatchEntry {
    /// Where a message read outside a batch came from (its key and payload are passed apart).
    pub fn located(topic: Arc<str>, partition: i32, offset: i64) -> BatchEntry {
        BatchEntry { topic, partition, offset, timestamp_ms: None, key: None, payload: None }
    }
}

/// An owned librdkafka message, destroyed when its batch is cleared or dropped.
#[derive(Debug)]
struct NativeMessage(*mut rdsys::rd_kafka_message_t);

impl Drop for NativeMessage {
    fn drop(&mut self) {
        // SAFETY: taken from rd_kafka_consume_batch_queue and owned by exactly one batch.
        unsafe { rdsys::rd_kafka_message_destroy(self.0) };
    }
}

/// Messages handed from the poll thread to the processor. Messages from the fetch queue are
/// kept as librdkafka gave them (keys and payloads are read in place: copying them out was
/// most of the poll thread's work); the few from the consumer queue are copied into `buf`.
#[derive(Debug, Default)]
pub struct MessageBatch {
    buf: Vec<u8>,
    native: Vec<NativeMessage>,
    /// Keeps the client alive while `native` holds its messages.
    queue: Option<Arc<FetchQueue>>,
    pub entries: Vec<BatchEntry>,
    /// When the first message of the batch was polled.
    pub first_polled: Option<Instant>,
}

// SAFETY: the raw pointers point into messages owned by `native` (freed only by `clear` or
// drop, through `&mut self`) or are plain ranges; librdkafka messages may be read and
// destroyed from any thread.
unsafe impl Send for MessageBatch {}

impl MessageBatch {
    pub fn key(&self, e: &BatchEntry) -> Option<&[u8]> {
        e.key.map(|b| self.bytes(b))
    }

    pub fn payload(&self, e: &BatchEntry) -> Option<&[u8]> {
        e.payload.map(|b| self.bytes(b))
    }

    fn bytes(&self, b: Bytes) -> &[u8] {
        match b {
            // SAFETY: the message holding these bytes lives as long as `self` (see `native`).
            Bytes::Native(p, len) => unsafe { std::slice::from_raw_parts(p, len) },
            Bytes::Copied(s, e) => &self.buf[s..e],
        }
    }

    /// Empty again, keeping its allocations; the messages it held are released.
    fn clear(&mut self) {
        self.entries.clear();
        self.native.clear();
        self.queue = None;
        self.buf.clear();
        self.first_polled = None;
    }

    fn start(&mut self) {
        if self.first_polled.is_none() {
            self.first_polled = Some(Instant::now());
        }
    }

    /// Copies a message from the consumer queue.
    fn push_copy(&mut self, topic: Arc<str>, m: &rdkafka::message::BorrowedMessage<'_>) {
        self.start();
        let mut copy = |b: Option<&[u8]>| {
            b.map(|b| {
                let s = self.buf.len();
                self.buf.extend_from_slice(b);
                Bytes::Copied(s, self.buf.len())
            })
        };
        let (key, payload) = (copy(m.key()), copy(m.payload()));
        self.entries.push(BatchEntry { topic, partition: m.partition(), offset: m.offset(), timestamp_ms: m.timestamp().to_millis(), key, payload });
    }

    /// Takes ownership of a message from the fetch queue (no error set).
    ///
    /// # Safety
    /// `m` must be a live message of `queue`'s client, owned by the caller, and not used after.
    unsafe fn push_native(&mut self, queue: &Arc<FetchQueue>, topic: Arc<str>, m: *mut rdsys::rd_kafka_message_t, timestamp_ms: Option<i64>) {
        self.start();
        if self.queue.is_none() {
            self.queue = Some(queue.clone());
        }
        // SAFETY: per the contract, `m` is live; its key and payload stay put until destroyed.
        let msg = unsafe { &*m };
        let bytes = |p: *mut std::ffi::c_void, len: usize| (!p.is_null()).then_some(Bytes::Native(p as *const u8, len));
        let (key, payload) = (bytes(msg.key, msg.key_len), bytes(msg.payload, msg.len));
        self.native.push(NativeMessage(m));
        self.entries.push(BatchEntry { topic, partition: msg.partition, offset: msg.offset, timestamp_ms, key, payload });
    }
}

/// The two ends the processor holds: batches in, and emptied batches back for reuse (a
/// batch buffer is ~1 MB; allocating a fresh one per batch cost page faults on both threads).
pub struct BatchChannel {
    pub batches: Receiver<MessageBatch>,
    pub recycle: Sender<MessageBatch>,
}

/// Polls the consumer and drains `fetch` on a thread until `stop` is set; batches go to the
/// returned channel, which holds at most `queue_batches` batches (back-pressure on the poll
/// thread).
pub fn spawn_poll_thread(
    fetch: Arc<FetchQueue>,
    positions: Positions,
    stop: Arc<AtomicBool>,
    poll_timeout: std::time::Duration,
    queue_batches: usize,
) -> (BatchChannel, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<MessageBatch>(queue_batches);
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<MessageBatch>();
    let handle = std::thread::Builder::new()
        .name("co2cast-poll".into())
        .spawn(move || {
            let mut poller = Poller { positions: &positions, names: Vec::new(), last_handle: None, slots: HashMap::new(), last: None };
            poller.run(&fetch, &stop, poll_timeout, &tx, &recycle_rx)
        })
        .expect("spawn poll thread");
    (BatchChannel { batches: rx, recycle: recycle_tx }, handle)
}

/// The poll thread's bookkeeping: interned topic names and the position slot of the
/// partition seen last (messages come in runs per partition).
struct Poller<'a> {
    positions: &'a Positions,
    /// One `Arc` per topic name (a handful of proxy topics; the processor compares by pointer).
    names: Vec<Arc<str>>,
    /// The librdkafka topic handle seen last and its name (messages come in runs per topic).
    last_handle: Option<(usize, Arc<str>)>,
    slots: HashMap<(Arc<str>, i32), Arc<AtomicI64>>,
    last: Option<(Arc<str>, i32, Arc<AtomicI64>)>,
}

impl Poller<'_> {
    fn run(
        &mut self,
        fetch: &Arc<FetchQueue>,
        stop: &AtomicBool,
        poll_timeout: std::time::Duration,
        tx: &SyncSender<MessageBatch>,
        recycled: &Receiver<MessageBatch>,
    ) {
        let consumer = &*fetch.consumer;
        let mut taken: Vec<*mut rdsys::rd_kafka_message_t> = Vec::with_capacity(MAX_BATCH);
        let mut batch = MessageBatch::default();
        while !stop.load(Ordering::Relaxed) {
            // Group events (a rebalance runs its callback here) and any message that reached
            // the consumer queue rather than the fetch queue.
            while let Some(r) = consumer.poll(std::time::Duration::ZERO) {
                match r {
                    Ok(m) => {
                        let topic = self.topic(m.topic());
                        self.advance(&topic, m.partition(), m.offset());
                        batch.push_copy(topic, &m);
                    }
                    Err(e) => co2cast_metrics::events::BrokerRequestFailed {
                        operation: "consume",
                        error: &e,
                        domain: co2cast_metrics::ErrorDomain::External,
                        retry_in: None,
                        attempt: 0,
                    }
                    .emit(),
                }
                if batch.entries.len() >= MAX_BATCH {
                    break;
                }
            }
            // Block only when there is nothing to hand over, and not for long: rebalances
            // wait on the consumer queue meanwhile. The wait is for one message, so that a
            // trickle is handed over at once, then whatever else is queued is taken.
            taken.clear();
            let room = MAX_BATCH.saturating_sub(batch.entries.len());
            if batch.entries.is_empty() {
                if fetch.take(poll_timeout.min(std::time::Duration::from_millis(50)), 1, &mut taken) == 1 {
                    fetch.take(std::time::Duration::ZERO, room - 1, &mut taken);
                }
            } else {
                fetch.take(std::time::Duration::ZERO, room, &mut taken);
            }
            for &m in &taken {
                self.take_native(fetch, m, &mut batch);
            }
            if batch.entries.len() >= MAX_BATCH || (taken.is_empty() && !batch.entries.is_empty()) {
                if !hand_over(&mut batch, tx, recycled) {
                    return;
                }
            }
        }
        if !batch.entries.is_empty() {
            hand_over(&mut batch, tx, recycled);
        }
    }

    /// Moves one message from the fetch queue into the batch (or logs and releases it when
    /// it carries an error).
    fn take_native(&mut self, fetch: &Arc<FetchQueue>, m: *mut rdsys::rd_kafka_message_t, batch: &mut MessageBatch) {
        // SAFETY: `m` came from rd_kafka_consume_batch_queue on `fetch`; it is either handed to
        // the batch, which then owns it, or destroyed here, exactly once.
        unsafe {
            let msg = &*m;
            if msg.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let reason = std::ffi::CStr::from_ptr(rdsys::rd_kafka_err2str(msg.err)).to_string_lossy();
                tracing::warn!(message = "Kafka consumer error.", error = %reason, partition = msg.partition);
                rdsys::rd_kafka_message_destroy(m);
                return;
            }
            let topic = match &self.last_handle {
                Some((h, t)) if *h == msg.rkt as usize => t.clone(),
                _ => {
                    let name = std::ffi::CStr::from_ptr(rdsys::rd_kafka_topic_name(msg.rkt)).to_string_lossy();
                    let t = self.topic(&name);
                    self.last_handle = Some((msg.rkt as usize, t.clone()));
                    t
                }
            };
            let mut ts_type = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
            let ts = rdsys::rd_kafka_message_timestamp(m, &mut ts_type);
            let ts = (ts_type != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && ts >= 0).then_some(ts);
            self.advance(&topic, msg.partition, msg.offset);
            batch.push_native(fetch, topic, m, ts);
        }
    }

    fn topic(&mut self, name: &str) -> Arc<str> {
        if let Some(t) = self.names.iter().find(|t| ***t == *name) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(name);
        self.names.push(t.clone());
        t
    }

    /// Records the next offset of a partition before the next poll, inside which a rebalance
    /// may run.
    fn advance(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let slot = match &self.last {
            Some((t, p, s)) if Arc::ptr_eq(t, topic) && *p == partition => s,
            _ => {
                let s = self
                    .slots
                    .entry((topic.clone(), partition))
                    .or_insert_with(|| self.positions.slot(topic, partition))
                    .clone();
                &self.last.insert((topic.clone(), partition, s)).2
            }
        };
        slot.store(offset + 1, Ordering::Release);
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

/// A consumer that reads partitions by assignment, outside any group balancing (the province
/// stage's national partitions, the national stage, the lake writer). `group` only names it for
/// lag monitoring; offsets are the caller's checkpoint.
pub fn assigned_reader(brokers: &str, group: &str, fetch_wait_max_ms: u64) -> Result<BaseConsumer, crate::error::PipelineError> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_max_ms.to_string())
        .create()
        .map_err(|source| crate::error::PipelineError::Kafka { context: format!("create the reader {group}"), source })
}

//! Ingest throughput, side by side with raw rdkafka consumption from the same broker.
//!
//! Prints one JSON line per measurement (`{"bench": …, "messages": …, "per_sec": …}`, and for
//! the Kafka rounds `cpu_ns_per_message` by thread role) and a final line with the ratios. The
//! Kafka part uses the embedded mock broker by default (its log is capped near 15 MB per
//! partition, so at most 200,000 small messages over 8 partitions); set
//! `CO2CAST_BENCH_BROKERS` to measure against a real broker (e.g. tansu) with more messages
//! (`CO2CAST_BENCH_MESSAGES`). `CO2CAST_BENCH_REUSE_TOPIC=1` skips producing when the topic
//! already holds those messages from an earlier run.
//!
//! Both consumers fetch with the same `fetch.wait.max.ms` ([`FETCH_WAIT_MS`]): tansu 0.6 holds
//! every fetch for the full wait even when data is there, so with Kafka's default (500 ms) both
//! would measure the broker's wait, not the client (88 k msg/s instead of 1.2 M msg/s raw).
//! Both also keep a deep prefetch queue ([`QUEUED_MIN_MESSAGES`]): on tansu a consumer whose
//! fetches pause when its queue is full (librdkafka's default, 100,000 messages a partition)
//! resumes slowly, which throttled any consumer slower than the raw one to a fraction of its
//! own speed (a 1.5 µs-per-message spin loop: 129 k msg/s with the default, 340 k with this).
//! The prefetch queue also fills by bytes (`queued.max.messages.kbytes`); fetching then pauses
//! for `fetch.queue.backoff.ms`, 1000 ms by default, so both use [`FETCH_QUEUE_BACKOFF_MS`]
//! (the processor's own default).
//!
//! Run: `cargo bench -p co2cast-pipeline --bench ingest`.

use chrono::{DateTime, Utc};
use co2cast_ingest::{PlausibilityCaps, ProxyState, ValidationRules, validate};
use co2cast_pipeline::replay::ProxyRecord;
use co2cast_pipeline::simulate::Simulator;
use criterion::{Criterion, Throughput};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::hint::black_box;
use std::time::Instant;

const TOPIC: &str = "proxy.power.generation";
const FETCH_WAIT_MS: u64 = 1;
const QUEUED_MIN_MESSAGES: &str = "10000000";
const FETCH_QUEUE_BACKOFF_MS: u64 = 10;

fn records(n: usize) -> Vec<ProxyRecord> {
    let start = DateTime::parse_from_rfc3339("2015-01-01T00:00:00+08:00").unwrap().with_timezone(&Utc);
    Simulator::new(11, start, 0.0).take(n).collect()
}

/// Decode + validate + state update, no Kafka.
fn ingest_path(c: &mut Criterion, recs: &[ProxyRecord]) -> f64 {
    let caps = PlausibilityCaps::default();
    let rules = ValidationRules::default();
    let now = Utc::now();
    let mut g = c.benchmark_group("ingest_path");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.sample_size(10);
    g.bench_function("decode_validate_upsert", |b| {
        b.iter(|| {
            let mut state = ProxyState::new();
            for r in recs {
                if let Ok(v) = validate(TOPIC, Some(r.key.as_bytes()), r.payload.as_bytes(), now, &caps, &rules) {
                    state.upsert(&v);
                }
            }
            black_box(state.len())
        })
    });
    g.finish();
    // A plain timed pass for the machine-readable line.
    let t = Instant::now();
    let mut state = ProxyState::new();
    for r in recs {
        if let Ok(v) = validate(TOPIC, Some(r.key.as_bytes()), r.payload.as_bytes(), now, &caps, &rules) {
            state.upsert(&v);
        }
    }
    let rate = recs.len() as f64 / t.elapsed().as_secs_f64();
    println!("{{\"bench\":\"ingest_path_one_core\",\"messages\":{},\"per_sec\":{rate:.0}}}", recs.len());
    rate
}

fn consumer(brokers: &str, group: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS.to_string())
        .set("queued.min.messages", QUEUED_MIN_MESSAGES)
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string())
        .create()
        .unwrap();
    let md = c.fetch_metadata(Some(TOPIC), std::time::Duration::from_secs(5)).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(TOPIC, p.id(), Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

/// Reads `n` messages; `work` runs on each. Returns messages per second and CPU use.
fn consume(brokers: &str, group: &str, n: usize, mut work: impl FnMut(&[u8], &[u8])) -> (f64, CpuPerMessage) {
    let cpu = ThreadCpu::now();
    let c = consumer(brokers, group);
    let mut got = 0;
    let t = Instant::now();
    while got < n {
        if let Some(Ok(m)) = c.poll(std::time::Duration::from_millis(100)) {
            work(m.key().unwrap_or(&[]), m.payload().unwrap_or(&[]));
            got += 1;
        }
        assert!(t.elapsed().as_secs() < 300, "only {got} of {n} messages came back");
    }
    (n as f64 / t.elapsed().as_secs_f64(), cpu.per_message(n as u64, ThreadCpu::current_tid()))
}

/// CPU time of this process's threads (Linux `/proc/self/task/*/schedstat`, nanoseconds on a
/// CPU), by role: the thread that calls `consume` or `Processor::run` (`main`), the
/// processor's poll thread, and librdkafka's own threads. Per message it is a steadier
/// measure than throughput on a shared machine: it shows where the cycles go even when
/// the other core is busy with something else.
struct ThreadCpu(std::collections::HashMap<u32, (String, u64)>);

#[derive(Default)]
struct CpuPerMessage {
    main_ns: f64,
    poll_ns: f64,
    librdkafka_ns: f64,
}

impl CpuPerMessage {
    fn json(&self) -> String {
        format!("{{\"main\":{:.0},\"poll\":{:.0},\"librdkafka\":{:.0}}}", self.main_ns, self.poll_ns, self.librdkafka_ns)
    }
}

impl ThreadCpu {
    fn now() -> ThreadCpu {
        let mut threads = std::collections::HashMap::new();
        for entry in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else { continue };
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default().trim().to_string();
            let ns = std::fs::read_to_string(entry.path().join("schedstat")).ok().and_then(|s| s.split_whitespace().next()?.parse().ok());
            if let Some(ns) = ns {
                threads.insert(tid, (name, ns));
            }
        }
        ThreadCpu(threads)
    }

    /// The calling thread's id.
    fn current_tid() -> Option<u32> {
        std::fs::read_link("/proc/thread-self").ok().and_then(|p| p.file_name()?.to_str()?.parse().ok())
    }

    /// Per message since `self`, for threads alive now (those started since count in full);
    /// `main_tid` is the thread that consumes.
    fn per_message(&self, messages: u64, main_tid: Option<u32>) -> CpuPerMessage {
        let mut cpu = CpuPerMessage::default();
        for (tid, (name, ns)) in ThreadCpu::now().0 {
            let spent = (ns - self.0.get(&tid).map_or(0, |t| t.1)) as f64 / messages as f64;
            match name.as_str() {
                _ if Some(tid) == main_tid => cpu.main_ns += spent,
                "co2cast-poll" => cpu.poll_ns += spent,
                n if n.starts_with("rdk:") => cpu.librdkafka_ns += spent,
                _ => {}
            }
        }
        cpu
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let n: usize = std::env::var("CO2CAST_BENCH_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let recs = records(n);
    // The path alone needs no millions: criterion repeats it.
    let path_rate = ingest_path(&mut c, &recs[..n.min(200_000)]);

    // Kafka: raw consumption versus consumption plus the ingest path, same broker, same data.
    let cluster;
    let brokers = match std::env::var("CO2CAST_BENCH_BROKERS") {
        Ok(b) => b,
        Err(_) => {
            cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
            cluster.create_topic(TOPIC, 8, 1).unwrap();
            cluster.bootstrap_servers()
        }
    };
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "20").create().unwrap();
    let reuse = std::env::var("CO2CAST_BENCH_REUSE_TOPIC").is_ok_and(|v| v == "1");
    let to_produce: &[ProxyRecord] = if reuse { &[] } else { &recs };
    for r in to_produce {
        let mut rec = BaseRecord::to(TOPIC).key(r.key.as_bytes()).payload(r.payload.as_bytes());
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    p.poll(std::time::Duration::from_millis(5));
                    rec = back;
                }
            }
        }
    }
    p.flush(std::time::Duration::from_secs(60)).unwrap();

    // Rounds alternate raw and processor so that both see the same machine weather; with the
    // mock broker's small log one round lasts a fraction of a second, hence several rounds
    // and medians.
    let rounds: usize = std::env::var("CO2CAST_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if std::env::var("CO2CAST_BENCH_BROKERS").is_ok() { 3 } else { 7 });
    let (mut raws, mut pipeds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut counters = None;
    for round in 0..rounds {
        let (raw, raw_cpu) = consume(&brokers, &format!("bench-raw-{round}"), n, |k, v| {
            black_box((k.len(), v.len()));
        });
        println!("{{\"bench\":\"raw_rdkafka_consume\",\"round\":{round},\"messages\":{n},\"per_sec\":{raw:.0},\"cpu_ns_per_message\":{}}}", raw_cpu.json());
        let piped = {
            let history = co2cast_data::embedded().unwrap();
            let dir = std::env::temp_dir().join(format!("co2cast-bench-{}-{round}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let cfg = co2cast_pipeline::ProcessorConfig {
                brokers: brokers.clone(),
                group_id: format!("bench-processor-{round}"),
                checkpoint_dir: dir.clone(),
                checkpoint_every_messages: u64::MAX,
                fetch_wait_max_ms: FETCH_WAIT_MS,
                fetch_queue_backoff_ms: FETCH_QUEUE_BACKOFF_MS,
                consumer_options: [("queued.min.messages".to_string(), QUEUED_MIN_MESSAGES.to_string())].into(),
                flush_linger_ms: 600_000,
                max_flush_delay_ms: 600_000,
                ensemble_members: 20,
                provinces: Some(vec!["CN-BJ".into()]),
                ..Default::default()
            };
            let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let main_tid = ThreadCpu::current_tid();
            let watcher = {
                let (received, stop) = (received.clone(), stop.clone());
                std::thread::Builder::new().name("bench-watcher".into()).spawn(move || {
                    let load = || received.load(std::sync::atomic::Ordering::Relaxed);
                    let t = Instant::now();
                    while load() == 0 {
                        assert!(t.elapsed().as_secs() < 120, "the processor received nothing");
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    let (t0, r0, cpu) = (Instant::now(), load(), ThreadCpu::now());
                    while load() < n as u64 {
                        assert!(t.elapsed().as_secs() < 600, "the processor stalled at {}", load());
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    let rate = (n as u64 - r0) as f64 / t0.elapsed().as_secs_f64();
                    let cpu = cpu.per_message(n as u64 - r0, main_tid);
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    (rate, cpu)
                })
                .expect("spawn the watcher")
            };
            let mut p = co2cast_pipeline::Processor::new(cfg, history).unwrap().with_received_counter(received);
            let summary = p.run(stop, false, |_| {}).unwrap();
            let (rate, cpu) = watcher.join().unwrap();
            assert_eq!(summary.counters.received, summary.counters.accepted + summary.counters.dead_lettered);
            let _ = std::fs::remove_dir_all(&dir);
            (rate, cpu, summary.counters)
        };
        let (piped, piped_cpu, got) = piped;
        println!(
            "{{\"bench\":\"processor_consume_and_ingest\",\"round\":{round},\"messages\":{n},\"per_sec\":{piped:.0},\"accepted\":{},\"dead_lettered\":{},\"cpu_ns_per_message\":{}}}",
            got.accepted, got.dead_lettered, piped_cpu.json()
        );
        raws.push(raw);
        pipeds.push(piped);
        ratios.push(piped / raw);
        counters = Some(got);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let last = counters.expect("at least one round");
    println!(
        "{{\"bench\":\"summary\",\"rounds\":{rounds},\"messages\":{n},\"ingest_path_per_sec\":{path_rate:.0},\"raw_consume_per_sec\":{:.0},\"processor_per_sec\":{:.0},\"processor_ratio_to_raw\":{:.3},\"ratio_min\":{:.3},\"ratio_max\":{:.3},\"dead_lettered\":{},\"broker\":\"{}\"}}",
        median(&mut raws),
        median(&mut pipeds),
        median(&mut ratios),
        ratios[0],
        ratios[ratios.len() - 1],
        last.dead_lettered,
        if std::env::var("CO2CAST_BENCH_BROKERS").is_ok() { "external" } else { "mock" }
    );
    c.final_summary();
}

//! Integration tests over the real Kafka protocol: librdkafka's mock cluster on loopback by
//! default; with `CO2CAST_TEST_BROKERS=host:port` the same scenarios run against that broker
//! (e.g. tansu), each test on topics of its own.

mod common;

use common::*;
use chrono::NaiveDate;
use co2cast_ingest::Topic;
use co2cast_pipeline::replay::ProxyRecord;
use co2cast_pipeline::{Processor, ProcessorConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

#[test]
fn accounting_dead_letters_and_duplicates() {
    let broker = TestBroker::start("t");
    let brokers = &broker;
    let (data, records) = sample();
    produce(brokers, &records);
    // Duplicates of real messages, and a revision.
    produce(brokers, &records[..50]);
    let first = &records[0];
    let mut revised: serde_json::Value = serde_json::from_str(&first.payload).unwrap();
    revised["revision"] = 1.into();
    revised["value"] = (revised["value"].as_f64().unwrap() * 1.01).into();
    raw(brokers, brokers.topics.proxy(first.topic), &first.key, revised.to_string().as_bytes());
    // Bad messages, one per reason.
    let power = Topic::PowerGeneration;
    let bad: Vec<(Topic, &str, Vec<u8>, &str)> = vec![
        (power, "power.generation/CN-HE/2019-07-04T00:00:00", br#"{"province":"CN-HE","period_start":"2019-07-04T00:00:00","granularity":"day","fuel":"thermal","value":100,"unit":"GWh","source":"t","revision":0}"#.to_vec(), "missing_timezone"),
        (power, "power.generation/XX/2019-07-04T00:00:00+08:00", br#"{"province":"Atlantis","period_start":"2019-07-04T00:00:00+08:00","granularity":"day","fuel":"thermal","value":100,"unit":"GWh","source":"t","revision":0}"#.to_vec(), "unknown_province"),
        (power, "power.generation/CN-HE/2019-07-05T00:00:00+08:00", br#"{"province":"CN-HE","period_start":"2019-07-05T00:00:00+08:00","granularity":"day","fuel":"thermal","value":-40,"unit":"GWh","source":"t","revision":0}"#.to_vec(), "negative_value"),
        (power, "power.generation/CN-HE/2019-07-06T00:00:00+08:00", b"\xff\x00 not json".to_vec(), "malformed_json"),
        (power, "power.generation/CN-HE/2019-07-06T00:00:00+08:00", br#"{"province":"CN-HE","period_start":"2019-07-06T00:00:00+08:00","granularity":"day","fuel":"thermal","value":1e7,"unit":"GWh","source":"t","revision":0}"#.to_vec(), "implausible_value"),
        (power, "power.generation/CN-HE/2031-07-06T00:00:00+08:00", br#"{"province":"CN-HE","period_start":"2031-07-06T00:00:00+08:00","granularity":"day","fuel":"thermal","value":1,"unit":"GWh","source":"t","revision":0}"#.to_vec(), "future_period"),
    ];
    for (t, k, p, _) in &bad {
        raw(brokers, brokers.topics.proxy(*t), k, p);
    }
    let dir = tempdir("accounting");
    let s = run_to_idle(config(brokers, &dir), &data);
    let c = &s.counters;
    let total = records.len() as u64 + 50 + 1 + bad.len() as u64;
    assert_eq!(c.received, total);
    assert_eq!(c.received, c.accepted + c.dead_lettered, "{c:?}");
    assert_eq!(c.dead_lettered, bad.len() as u64);
    assert_eq!(c.accepted_unchanged, 50);
    assert_eq!(c.revisions, 1);
    // The DLQ holds the original bytes and the provenance.
    let dlq = read_all(brokers, &brokers.topics.dead_letter);
    assert_eq!(dlq.len(), bad.len());
    for (t, k, p, code) in &bad {
        let hit = dlq.iter().find(|(key, _, h)| key.as_deref() == Some(k.as_bytes()) && h["error_code"] == *code);
        let (_, payload, h) = hit.unwrap_or_else(|| panic!("no DLQ entry for {code}: {dlq:?}"));
        assert_eq!(payload, p);
        assert_eq!(h["source_topic"], brokers.topics.proxy(*t));
        assert!(h["source_offset"].parse::<i64>().is_ok() && h["source_partition"].parse::<i32>().is_ok());
        assert!(!h["error_reason"].is_empty());
    }
    // Estimates were published for both years, national rows included, with bands.
    let est = latest_estimates(brokers);
    let national = &est["CN/all/2019-07-04"];
    assert!(national["p2_5"].as_f64().unwrap() < national["value_mtco2"].as_f64().unwrap());
    assert!(est.contains_key("CN-HE/power/2019-12-31"));
    assert!(c.estimate_revisions_published > 0, "late and revised data must produce revisions");
    drop(broker);
}

#[test]
fn nowcasts_are_replaced_when_the_monthly_data_arrive() {
    let broker = TestBroker::start("t");
    let brokers = &broker;
    let (data, records) = sample();
    // Everything up to mid-2019 except the June industrial release.
    let cut: Vec<ProxyRecord> = records
        .iter()
        .filter(|r| r.released_at < chrono::DateTime::parse_from_rfc3339("2019-07-10T00:00:00Z").unwrap())
        .cloned()
        .collect();
    produce(brokers, &cut);
    let dir = tempdir("nowcast");
    run_to_idle(config(brokers, &dir), &data);
    let before = latest_estimates(brokers);
    let june = &before["CN-HE/industry/2019-06-15"];
    assert_eq!(june["source_type"], "nowcast", "{june}");
    // The June release arrives: the nowcast is replaced by a proxy-based revision.
    let rest: Vec<ProxyRecord> = records.iter().filter(|r| !cut.contains(r)).cloned().collect();
    produce(brokers, &rest);
    run_to_idle(config(brokers, &dir), &data);
    let after = latest_estimates(brokers);
    assert_eq!(after["CN-HE/industry/2019-06-15"]["source_type"], "proxy");
    drop(broker);
}

#[test]
fn estimates_run_past_the_data_as_nowcasts_for_the_configured_months_but_never_past_today() {
    let (data, records) = sample();
    let run = |name: &str, now: &str, months: u32| {
        let broker = TestBroker::start("t");
        produce(&broker, &records);
        let cfg = ProcessorConfig { now_override: Some(now.into()), nowcast_months_beyond_data: months, ..config(&broker, &tempdir(name)) };
        let summary = run_to_idle(cfg, &data);
        (latest_estimates(&broker), summary)
    };
    // The sample ends in December 2019; today is long after: three months of nowcasts.
    let (est, summary) = run("past-data", "2026-11-30T12:00:00+08:00", 3);
    let day = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
    assert_eq!(summary.nowcast_beyond_data, Some((day("2020-01-01"), day("2020-03-31"))));
    assert!(est.contains_key("CN/all/2020-03-31") && !est.contains_key("CN/all/2020-04-01"));
    assert!(est.contains_key("CN-GD/power/2020-03-31") && !est.keys().any(|k| k.ends_with("2020-04-01")));
    for m in ["01", "02", "03"] {
        let r = &est[&format!("CN/all/2020-{m}-15")];
        assert_eq!(r["source_type"], "nowcast", "{r}");
        assert_eq!(r["data_through"], "2019-12", "{r}");
    }
    // Each month ahead widens the band.
    let width = |k: &str| {
        let r = &est[k];
        (r["p97_5"].as_f64().unwrap() - r["p2_5"].as_f64().unwrap()) / r["value_mtco2"].as_f64().unwrap()
    };
    assert!(width("CN-GD/industry/2020-03-15") > width("CN-GD/industry/2020-01-15"), "{} vs {}", width("CN-GD/industry/2020-03-15"), width("CN-GD/industry/2020-01-15"));
    assert!(width("CN/all/2020-03-15") > width("CN/all/2019-12-15"));
    // Observed rows rest on their own month.
    assert_eq!(est["CN-HE/power/2019-06-15"]["data_through"], "2019-06");
    assert_eq!(est["CN/all/2019-06-15"]["data_through"], "2019-06");
    // Today bounds the nowcast; and no nowcast months: estimates stop at the data.
    let (early, summary) = run("past-data-today", "2020-02-10T12:00:00+08:00", 3);
    assert_eq!(summary.nowcast_beyond_data, Some((day("2020-01-01"), day("2020-02-10"))));
    assert!(early.contains_key("CN/all/2020-02-10") && !early.contains_key("CN/all/2020-02-11"));
    let (none, summary) = run("past-data-none", "2026-11-30T12:00:00+08:00", 0);
    assert_eq!(summary.nowcast_beyond_data, None);
    assert!(none.contains_key("CN/all/2019-12-31") && !none.keys().any(|k| k.contains("/2020-")));
}

/// The estimates of one uninterrupted run over the sample, in order (computed once).
fn straight_run() -> &'static BTreeMap<String, serde_json::Value> {
    static STRAIGHT: std::sync::OnceLock<BTreeMap<String, serde_json::Value>> = std::sync::OnceLock::new();
    STRAIGHT.get_or_init(|| {
        let (data, records) = sample();
        let broker = TestBroker::start("t");
        let brokers = &broker;
        produce(brokers, &records);
        run_to_idle(config(brokers, &tempdir("straight")), &data);
        latest_estimates(brokers)
    })
}

#[test]
fn out_of_order_and_late_data_give_the_same_estimates_and_late_revisions() {
    let (data, records) = sample();
    let broker = TestBroker::start("t");
    let brokers = &broker;
    // Newest first: almost every message arrives behind its signal's watermark.
    let mut reversed = records.clone();
    reversed.reverse();
    produce(brokers, &reversed);
    let dir = tempdir("reversed");
    let s = run_to_idle(config(brokers, &dir), &data);
    assert!(s.counters.late > records.len() as u64 / 2, "{:?}", s.counters);
    assert_eq!(s.counters.accepted, records.len() as u64, "late data is never dropped");
    assert_same_estimates(straight_run(), &latest_estimates(brokers));

    // A late revision of a day long behind the watermark raises that day's revision.
    // (Messages of several partitions: what is new is told by its payload, not its position.)
    let before: std::collections::BTreeSet<Vec<u8>> = estimates(brokers).into_iter().map(|(_, v, _)| v).collect();
    let old = records
        .iter()
        .find(|r| r.key.starts_with("power.generation/CN-GD/2019-03") && r.payload.contains("\"day\""))
        .or_else(|| records.iter().find(|r| r.key.starts_with("power.generation/CN-GD/2019-03")))
        .expect("a March 2019 Guangdong power message");
    let mut revised: serde_json::Value = serde_json::from_str(&old.payload).unwrap();
    revised["revision"] = 5.into();
    revised["value"] = (revised["value"].as_f64().unwrap() * 1.2).into();
    raw(brokers, brokers.topics.proxy(old.topic), &old.key, revised.to_string().as_bytes());
    let s = run_to_idle(config(brokers, &dir), &data);
    assert_eq!(s.counters.revisions, 1);
    assert!(s.counters.late >= 1);
    let new_rows: Vec<serde_json::Value> =
        estimates(brokers).into_iter().filter(|(_, v, _)| !before.contains(v)).map(|(_, v, _)| serde_json::from_slice(&v).unwrap()).collect();
    let gd_march = new_rows
        .iter()
        .find(|r| r["province"] == "CN-GD" && r["sector"] == "power" && r["date"].as_str().unwrap().starts_with("2019-03"))
        .unwrap_or_else(|| panic!("no new revision for Guangdong power in March 2019"));
    assert!(gd_march["revision"].as_u64().unwrap() >= 1, "{gd_march}");
    // Only the revised province (and the national total) is republished.
    let others: std::collections::BTreeSet<String> = new_rows
        .iter()
        .filter(|r| r["province"] != "CN-GD" && r["province"] != "CN")
        .map(|r| format!("{}/{}/{}", r["province"], r["sector"], &r["date"].as_str().unwrap()[..7]))
        .collect();
    assert!(others.is_empty(), "other provinces were republished: {others:?}");
    drop(broker);
}

#[test]
fn a_consumer_group_shares_partitions_and_the_survivor_takes_over() {
    let (data, records) = sample();
    let broker = TestBroker::start("t");
    let brokers = &broker;
    let total_partitions = Topic::ALL.len() * co2cast_pipeline::embedded::PARTITIONS as usize;
    let member = |name: &str, stop: Arc<AtomicBool>, received: Arc<AtomicU64>, assigned: Arc<AtomicU64>| {
        let cfg = ProcessorConfig { group_id: "group-test".into(), ..config(brokers, &tempdir(name)) };
        let data = data.clone();
        std::thread::spawn(move || {
            let mut p = Processor::new(cfg, data).unwrap().with_received_counter(received);
            let s = p.run(stop, false, |_| {}).unwrap();
            assigned.store(p.assigned_partitions() as u64, std::sync::atomic::Ordering::SeqCst);
            s
        })
    };
    let (stop_a, stop_b) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (recv_a, recv_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (asg_a, asg_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a = member("group-a", stop_a.clone(), recv_a.clone(), asg_a.clone());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let b = member("group-b", stop_b.clone(), recv_b.clone(), asg_b.clone());
    std::thread::sleep(std::time::Duration::from_secs(4));
    produce(brokers, &records);
    let load = |x: &AtomicU64| x.load(std::sync::atomic::Ordering::SeqCst);
    let wait = |cond: &dyn Fn() -> bool, what: &str| {
        let t = std::time::Instant::now();
        while !cond() {
            assert!(t.elapsed().as_secs() < 90, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // Each message is read by exactly one member.
    wait(&|| load(&recv_a) + load(&recv_b) == records.len() as u64, "the two members to read everything");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(load(&recv_a) > 0 && load(&recv_b) > 0, "both members got partitions: {} / {}", load(&recv_a), load(&recv_b));
    assert_eq!(load(&recv_a) + load(&recv_b), records.len() as u64);
    // Neither holds every input, so neither publishes partial estimates.
    assert!(estimates(brokers).is_empty(), "a member with part of the partitions published");
    // B leaves; A is assigned B's partitions, reads them from its own checkpoint (the start),
    // and publishes estimates identical to a single uninterrupted member's.
    stop_b.store(true, std::sync::atomic::Ordering::SeqCst);
    let sb = b.join().unwrap();
    assert_eq!(sb.counters.received, sb.counters.accepted + sb.counters.dead_lettered);
    wait(&|| load(&recv_a) == records.len() as u64, "the survivor to read the partitions it took over");
    std::thread::sleep(std::time::Duration::from_secs(1));
    stop_a.store(true, std::sync::atomic::Ordering::SeqCst);
    let sa = a.join().unwrap();
    assert_eq!(load(&asg_a) as usize, total_partitions, "the survivor holds every partition");
    assert_eq!(sa.counters.received, records.len() as u64);
    assert_same_estimates(straight_run(), &latest_estimates(brokers));
    drop(broker);
}

#[test]
fn a_stop_and_restore_gives_the_same_estimates_as_a_straight_run() {
    let (data, records) = sample();
    let straight = straight_run().clone();
    // Stopped after a few checkpoints, then restored from the checkpoint and finished.
    let restored = {
        let broker = TestBroker::start("t");
        let brokers = &broker;
        produce(brokers, &records);
        let dir = tempdir("restored");
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = ProcessorConfig { checkpoint_every_messages: 800, ..config(brokers, &dir) };
        let mut p = Processor::new(cfg, data.clone()).unwrap();
        let s2 = stop.clone();
        let mut flushes = 0;
        p.run(stop, true, move |_| {
            flushes += 1;
            if flushes == 3 {
                s2.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .unwrap();
        let partial = p.counters().received;
        assert!(partial < records.len() as u64, "the stop must come before the end");
        drop(p);
        let s = run_to_idle(config(brokers, &dir), &data);
        assert_eq!(s.counters.received, records.len() as u64, "no message counted twice or lost");
        latest_estimates(brokers)
    };
    assert_same_estimates(&straight, &restored);
}

/// Estimates depend on the input and the checkpointed state only, never on when flushes
/// happened: a run re-estimating after every few dozen messages (many partial states, a
/// series' latest month moving again and again), here with Heilongjiang's 2019 non-ferrous
/// output arriving only after all the rest was estimated (it turns that series' 2018 months
/// from nowcasts, beyond the last value, into gaps), ends with the same rows as a run that
/// estimates once after everything is in, and as the straight run. Every column is compared:
/// the checkpoint keeps, per row, the fingerprint of all that its latest publication says.
#[test]
fn when_flushes_happen_does_not_change_the_estimates() {
    let (data, records) = sample();
    let (late, early): (Vec<ProxyRecord>, Vec<ProxyRecord>) =
        records.iter().cloned().partition(|r| r.key.starts_with("industry.output/CN-HL/2019") && r.payload.contains("ten_nonferrous_metals"));
    assert!(!late.is_empty());
    let fingerprints = |dir: &std::path::Path| -> BTreeMap<String, co2cast_pipeline::estimates::Fingerprint> {
        let ckpt = co2cast_pipeline::checkpoint::Checkpoint::load(dir).unwrap().unwrap();
        ckpt.published.rows.into_iter().map(|(k, (_, fp))| (k, fp)).collect()
    };
    let run = |name: &str, batches: &[&[ProxyRecord]], cfg: &dyn Fn(ProcessorConfig) -> ProcessorConfig| {
        let broker = TestBroker::start("t");
        let dir = tempdir(name);
        let mut checkpoints = 0;
        for b in batches {
            produce(&broker, b);
            checkpoints = run_to_idle(cfg(config(&broker, &dir)), &data).checkpoints;
        }
        (checkpoints, fingerprints(&dir))
    };
    // The often-flushing run publishes far more revisions than the mock broker's log keeps;
    // its checkpoint holds what it published last.
    let (many, often) = run("often", &[&early, &late], &|c| ProcessorConfig { checkpoint_every_messages: 37, ..c });
    let (once, batch) = run("once", &[&records], &|c| ProcessorConfig { checkpoint_every_messages: u64::MAX, max_flush_delay_ms: 3_600_000, flush_linger_ms: 600, ..c });
    let (_, straight) = run("straight-fp", &[&records], &|c| c);
    assert!(many > 50 && once <= 2, "{many} and {once} checkpoints");
    assert!(batch.len() > 1_000, "{} rows", batch.len());
    for (name, other) in [("often", &often), ("straight", &straight)] {
        let differing: Vec<&String> = batch.keys().filter(|k| other.get(*k) != batch.get(*k)).collect();
        assert!(differing.is_empty() && other.len() == batch.len(), "{name}: {} of {} rows differ from the one-flush run, e.g. {:?}", differing.len(), batch.len(), differing.iter().take(5).collect::<Vec<_>>());
    }
}

/// One writer per state directory and per lake: a second processor on either is refused at
/// start with a configuration error, and the lock goes with the first.
#[test]
fn a_second_processor_on_the_same_state_or_lake_is_refused() {
    let (data, _) = sample();
    let broker = TestBroker::start("t");
    let dir = tempdir("locked");
    let lake = dir.join("lake");
    let with_lake = |state: &std::path::Path| ProcessorConfig { lake_dir: Some(lake.clone()), ..config(&broker, state) };
    let first = Processor::new(with_lake(&dir.join("a")), data.clone()).unwrap();
    for (state, what) in [(dir.join("a"), "state directory"), (dir.join("b"), "lake")] {
        match Processor::new(with_lake(&state), data.clone()) {
            Ok(_) => panic!("a second writer of the {what} was let in"),
            Err(e) => {
                assert_eq!(e.domain(), co2cast_metrics::ErrorDomain::User);
                assert!(e.to_string().contains(&format!("{what} ")) && e.to_string().contains("in use by another co2cast process"), "{e}");
            }
        }
    }
    drop(first);
    if let Err(e) = Processor::new(with_lake(&dir.join("a")), data) {
        panic!("the lock outlived its processor: {e}");
    }
}

/// The scaled-out pipeline: three province members in one group share the provinces by
/// partition, a national stage sums their members, and the result equals the single process:
/// every provincial and national row, bands included (the national band from member-wise sums
/// of separately estimated provinces equals the joint band of one process).
#[test]
fn province_members_and_a_national_stage_publish_what_one_process_does() {
    use co2cast_pipeline::role::Role;
    let (data, records) = sample();
    let broker = TestBroker::start("t");
    let brokers = &broker;
    let member = |name: &str, stop: Arc<AtomicBool>, received: Arc<AtomicU64>| {
        let cfg = ProcessorConfig { group_id: "stages".into(), role: Role::Province, ..config(brokers, &tempdir(name)) };
        let data = data.clone();
        std::thread::spawn(move || {
            let mut p = Processor::new(cfg, data).unwrap().with_received_counter(received);
            p.run(stop, false, |_| {}).unwrap()
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let received: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let members: Vec<_> = (0..3).map(|i| member(&format!("province-{i}"), stop.clone(), received[i].clone())).collect();
    std::thread::sleep(std::time::Duration::from_secs(6));
    produce(brokers, &records);
    // A revised Hebei value on a partition that is not Hebei's: dead-lettered, so the member
    // owning that partition does not estimate from part of Hebei's input.
    let hebei = records.iter().find(|r| r.key.contains("/CN-HE/")).unwrap();
    let mut revised: serde_json::Value = serde_json::from_str(&hebei.payload).unwrap();
    revised["revision"] = 99.into();
    revised["value"] = (revised["value"].as_f64().unwrap() * 2.0).into();
    {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let p: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers.brokers).create().unwrap();
        let home = co2cast_pipeline::partitioner::partition_for_key(&hebei.key, co2cast_pipeline::embedded::PARTITIONS).unwrap();
        let payload = revised.to_string();
        p.send(BaseRecord::to(brokers.topics.proxy(hebei.topic)).key(&hebei.key).payload(&payload).partition((home + 1) % co2cast_pipeline::embedded::PARTITIONS)).unwrap();
        p.flush(std::time::Duration::from_secs(10)).unwrap();
    }
    // Every member reads the national series itself; the member holding partition 0 reads
    // them a second time through the group.
    let national = records.iter().filter(|r| co2cast_pipeline::partitioner::key_scope(&r.key) == Some(co2cast_model::proxy::Scope::National)).count() as u64;
    assert!(national > 0);
    let load = |x: &AtomicU64| x.load(std::sync::atomic::Ordering::SeqCst);
    let t = std::time::Instant::now();
    while received.iter().map(|r| load(r)).sum::<u64>() < records.len() as u64 + 3 * national + 1 {
        assert!(t.elapsed().as_secs() < 120, "members read {:?} of {} + 3×{national}", received.iter().map(|r| load(r)).collect::<Vec<_>>(), records.len());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let summaries: Vec<_> = members.into_iter().map(|m| m.join().unwrap()).collect();
    for s in &summaries {
        assert_eq!(s.counters.received, s.counters.accepted + s.counters.dead_lettered, "the accounting identity holds per member");
        assert!(s.national.is_empty(), "a province member makes no national rows");
    }
    let wrong: u64 = summaries.iter().map(|s| s.counters.dead_lettered_by_code.get("wrong_partition").copied().unwrap_or(0)).sum();
    assert_eq!(wrong, 1, "the message on another province's partition is dead-lettered");
    let publishing = summaries.iter().filter(|s| s.counters.estimates_published > 0).count();
    assert!(publishing >= 2, "the provinces were shared: {} of 3 members published", publishing);
    // The national stage, on its own state.
    let cfg = ProcessorConfig { group_id: "stages".into(), role: Role::National, ..config(brokers, &tempdir("national")) };
    let mut n = co2cast_pipeline::national_stage::NationalStage::new(cfg.clone(), data.clone()).unwrap();
    let s = n.run(Arc::new(AtomicBool::new(false)), true).unwrap();
    assert_eq!(s.incomplete_days, 0, "every day had every province");
    assert!(s.counters.estimates_published > 0 && s.counters.dead_lettered == 0);
    let two_stage = newest_estimates(brokers);
    assert!(two_stage.keys().any(|k| k.starts_with("CN/all/")), "national rows published");
    assert_same_estimates(straight_run(), &two_stage);
    // A national stage with other settings (here another ensemble size) refuses the sums.
    let other = ProcessorConfig { ensemble_members: 61, ..cfg.clone() };
    let other = ProcessorConfig { checkpoint_dir: tempdir("national-other"), ..other };
    let refused = co2cast_pipeline::national_stage::NationalStage::new(other, data.clone()).unwrap().run(Arc::new(AtomicBool::new(false)), true);
    assert!(matches!(&refused, Err(co2cast_pipeline::processor::PipelineError::Config(m)) if m.contains("other settings")), "{:?}", refused.err());
    // Restarted on its checkpoint, the national stage rebuilds its sums and publishes nothing new.
    drop(n);
    let before = estimates(brokers).len();
    let again = co2cast_pipeline::national_stage::NationalStage::new(cfg, data.clone()).unwrap().run(Arc::new(AtomicBool::new(false)), true).unwrap();
    assert_eq!(again.counters.estimates_published, s.counters.estimates_published);
    assert_eq!(estimates(brokers).len(), before, "a restart republished rows");
    drop(broker);
}

/// A rebalance while national input is arriving changes nothing: two province members read
/// the provincial series, then the national series arrive in slices while a third member
/// joins (every member's provinces and national partition reads are reassigned under way).
#[test]
fn a_rebalance_while_national_input_arrives_changes_nothing() {
    use co2cast_pipeline::role::Role;
    let (data, records) = sample();
    let broker = TestBroker::start("t");
    let brokers = &broker;
    let is_national = |r: &ProxyRecord| co2cast_pipeline::partitioner::key_scope(&r.key) == Some(co2cast_model::proxy::Scope::National);
    let (national, provincial): (Vec<ProxyRecord>, Vec<ProxyRecord>) = records.iter().cloned().partition(|r| is_national(r));
    let stop = Arc::new(AtomicBool::new(false));
    let received: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let member = |i: usize| {
        let cfg = ProcessorConfig { group_id: "rebalance".into(), role: Role::Province, ..config(brokers, &tempdir(&format!("rebalance-{i}"))) };
        let (data, stop, rc) = (data.clone(), stop.clone(), received[i].clone());
        std::thread::spawn(move || Processor::new(cfg, data).unwrap().with_received_counter(rc).run(stop, false, |_| {}).unwrap())
    };
    let mut members = vec![member(0), member(1)];
    std::thread::sleep(std::time::Duration::from_secs(5));
    produce(brokers, &provincial);
    let slices: Vec<&[ProxyRecord]> = national.chunks(national.len().div_ceil(4)).collect();
    for (i, slice) in slices.iter().enumerate() {
        produce(brokers, slice);
        if i == 1 {
            members.push(member(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    // Settled: nothing new read for a while after the third member joined and read its share.
    let load = |x: &AtomicU64| x.load(std::sync::atomic::Ordering::SeqCst);
    let (mut last, mut since, t) = (0, std::time::Instant::now(), std::time::Instant::now());
    loop {
        let now: u64 = received.iter().map(|r| load(r)).sum();
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
        if load(&received[2]) > 0 && since.elapsed().as_secs() >= 8 {
            break;
        }
        assert!(t.elapsed().as_secs() < 180, "the members settle");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for m in members {
        let s = m.join().unwrap();
        assert_eq!(s.counters.received, s.counters.accepted + s.counters.dead_lettered);
    }
    let cfg = ProcessorConfig { group_id: "rebalance".into(), role: Role::National, ..config(brokers, &tempdir("rebalance-national")) };
    let s = co2cast_pipeline::national_stage::NationalStage::new(cfg, data.clone()).unwrap().run(Arc::new(AtomicBool::new(false)), true).unwrap();
    assert_eq!(s.incomplete_days, 0, "{:?}", s.first_incomplete);
    assert_same_estimates(straight_run(), &newest_estimates(brokers));
    drop(broker);
}

//! The `co2cast run` binary against Kafka: SIGKILL and restart, and a third-party client
//! (kcat) producing and consuming.

use co2cast_pipeline::replay::{ProxyRecord, produce_paced, records_from_dataset};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

const PROVINCES: &str = "CN-HE,CN-BJ,CN-GD";

fn sample() -> Vec<ProxyRecord> {
    let data = co2cast_data::embedded().unwrap();
    records_from_dataset(&data, 2018..=2019, Some(2019))
        .into_iter()
        .filter(|r| ["CN-HE", "CN-BJ", "CN-GD", "/CN/"].iter().any(|k| r.key.contains(k)))
        .collect()
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("co2cast-cli-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_cmd(brokers: &str, state: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_co2cast"));
    c.args(["run", "--brokers", brokers, "--exit-when-idle", "--quiet", "--json", "--members", "60", "--checkpoint-every", "300", "--provinces", PROVINCES])
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null());
    c
}

/// Latest revision of each estimate key read with kcat, revision numbers dropped.
fn latest_with_kcat(brokers: &str) -> BTreeMap<String, serde_json::Value> {
    let out = Command::new("kcat")
        .args(["-b", brokers, "-C", "-t", "co2cast.estimates.daily", "-e", "-q", "-K", "\t", "-o", "beginning"])
        .output()
        .expect("kcat is installed (.ci/run installs it from apt)");
    assert!(out.status.success(), "kcat: {}", String::from_utf8_lossy(&out.stderr));
    let mut latest: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (k, v) = line.split_once('\t').unwrap();
        let row: serde_json::Value = serde_json::from_str(v).unwrap();
        let rev = row["revision"].as_u64().unwrap();
        if latest.get(k).is_none_or(|o| o["revision"].as_u64().unwrap() <= rev) {
            latest.insert(k.to_string(), row);
        }
    }
    for v in latest.values_mut() {
        v["revision"] = serde_json::Value::Null;
        // When a vintage was computed is wall-clock time; what it says must not differ.
        v["computed_at"] = serde_json::Value::Null;
    }
    latest
}

fn assert_same(a: &BTreeMap<String, serde_json::Value>, b: &BTreeMap<String, serde_json::Value>) {
    assert_eq!(a.len(), b.len(), "different estimate keys");
    for (k, v) in a {
        let w = &b[k];
        for (f, x) in v.as_object().unwrap() {
            match (x.as_f64(), w[f].as_f64()) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-9 * x.abs().max(y.abs()), "{k}.{f}: {x} vs {y}"),
                _ => assert_eq!(x, &w[f], "{k}.{f}"),
            }
        }
    }
}

#[test]
fn sigkill_and_restart_give_the_estimates_of_an_uninterrupted_run() {
    let records = sample();
    let produce = |brokers: &str| {
        produce_paced(brokers, &co2cast_pipeline::TopicNames::default(), &records, u64::MAX, None, Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false))).unwrap()
    };
    // Uninterrupted.
    let a = co2cast_pipeline::embedded::start_cluster().unwrap();
    let brokers_a = a.bootstrap_servers();
    produce(&brokers_a);
    let out = run_cmd(&brokers_a, &tempdir("straight")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let straight = latest_with_kcat(&brokers_a);

    // Killed with SIGKILL three times at different moments, then run to the end.
    let b = co2cast_pipeline::embedded::start_cluster().unwrap();
    let brokers_b = b.bootstrap_servers();
    produce(&brokers_b);
    let state = tempdir("killed");
    let sequence = || -> u64 {
        std::fs::read(state.join("checkpoint.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["sequence"].as_u64())
            .unwrap_or(0)
    };
    let mut kills = 0;
    // Kill each run shortly after a later checkpoint, so that it dies between checkpoints
    // (mid-batch, or mid-publication) with work done since the last one.
    for (target, after_ms) in [(1u64, 120u64), (3, 40), (5, 250)] {
        let mut child = run_cmd(&brokers_b, &state).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while sequence() < target && std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL on Unix
            kills += 1;
        }
        let _ = child.wait();
    }
    assert!(kills >= 2, "runs ended before they could be killed: the test would prove nothing");
    assert!(sequence() >= 5, "the killed runs made progress through checkpoints");
    let out = run_cmd(&brokers_b, &state).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &summary["counters"];
    assert_eq!(c["received"].as_u64().unwrap(), records.len() as u64, "every message counted once: {c}");
    assert_eq!(c["received"], c["accepted"]);
    let killed = latest_with_kcat(&brokers_b);
    assert_same(&straight, &killed);
    drop((a, b));
}

#[test]
fn kcat_produced_messages_become_estimates() {
    let cluster = co2cast_pipeline::embedded::start_cluster().unwrap();
    let brokers = cluster.bootstrap_servers();
    // A real third-party client produces the sample, keyed, one topic at a time.
    let records = sample();
    let mut by_topic: BTreeMap<&str, String> = BTreeMap::new();
    for r in &records {
        let buf = by_topic.entry(r.topic.name()).or_default();
        buf.push_str(&r.key);
        buf.push('\t');
        buf.push_str(&r.payload);
        buf.push('\n');
    }
    // Plus one bad line, which must reach the DLQ.
    by_topic.get_mut("proxy.power.generation").unwrap().push_str("power.generation/CN-HE/2019-07-04T00:00:00\t{\"province\":\"CN-HE\"}\n");
    for (topic, lines) in &by_topic {
        let mut child = Command::new("kcat")
            .args(["-b", &brokers, "-P", "-t", topic, "-K", "\t"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("kcat is installed (.ci/run installs it from apt)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }
    let out = run_cmd(&brokers, &tempdir("kcat")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["counters"]["received"].as_u64().unwrap(), records.len() as u64 + 1);
    assert_eq!(summary["counters"]["dead_lettered"].as_u64().unwrap(), 1);
    let est = latest_with_kcat(&brokers);
    let he = &est["CN-HE/power/2019-07-04"];
    assert_eq!(he["source_type"], "proxy");
    assert!(he["value_mtco2"].as_f64().unwrap() > 0.3, "{he}");
    let national = &est["CN/all/2019-07-04"];
    assert!(national["p97_5"].as_f64().unwrap() > national["value_mtco2"].as_f64().unwrap());
    drop(cluster);
}

#[test]
fn replay_and_simulate_feed_the_processor() {
    let cluster = co2cast_pipeline::embedded::start_cluster().unwrap();
    let brokers = cluster.bootstrap_servers();
    let bin = env!("CARGO_BIN_EXE_co2cast");
    let sim = Command::new(bin)
        .args(["simulate", "--brokers", &brokers, "--rate", "20000", "--count", "3100", "--bad-fraction", "0.05", "--seed", "3", "--start", "2019-03-01T00:00:00+08:00"])
        .output()
        .unwrap();
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/backtest_small");
    let rep = Command::new(bin)
        .args(["replay", "--brokers", &brokers, "--from", golden, "--from-year", "2018", "--to-year", "2019"])
        .output()
        .unwrap();
    assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));
    let out = run_cmd(&brokers, &tempdir("simulate")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &s["counters"];
    assert!(c["received"].as_u64().unwrap() > 3100);
    assert_eq!(c["received"].as_u64(), Some(c["accepted"].as_u64().unwrap() + c["dead_lettered"].as_u64().unwrap()));
    let dlq = c["dead_lettered_by_code"]["missing_timezone"].as_u64().unwrap();
    assert!((100..250).contains(&dlq), "{dlq} of 3100 at 5 %");
    drop(cluster);
}

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

/// A child process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("co2cast-cli-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_cmd(brokers: &str, state: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_co2cast"));
    c.args(["run", "--metrics-listen", "127.0.0.1:0", "--brokers", brokers, "--exit-when-idle", "--quiet", "--json", "--members", "60", "--checkpoint-every", "300", "--provinces", PROVINCES, "--no-sql"])
        .arg("--state-dir")
        .arg(state)
        // A restarted member rejoins once the killed one's session expires: keep that short.
        .env("CO2CAST__PROCESSOR__SESSION_TIMEOUT_MS", "3000")
        .env("CO2CAST__PROCESSOR__HEARTBEAT_INTERVAL_MS", "500")
        .stdin(Stdio::null());
    c
}

/// Latest revision of each estimate key read with kcat, revision numbers dropped.
fn latest_with_kcat(brokers: &str) -> BTreeMap<String, serde_json::Value> {
    let out = Command::new("kcat")
        .args(["-b", brokers, "-C", "-t", "co2cast.estimates.daily", "-e", "-q", "-K", "\t", "-o", "beginning"])
        .output()
        .expect("kcat is installed (the README's test command installs it)");
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
    strip_vintage(latest)
}

/// How many times a row was revised, and when, depends on when flushes happened; what the
/// row says must not.
fn strip_vintage(mut rows: BTreeMap<String, serde_json::Value>) -> BTreeMap<String, serde_json::Value> {
    for v in rows.values_mut() {
        v["revision"] = serde_json::Value::Null;
        v["computed_at"] = serde_json::Value::Null;
    }
    rows
}

/// The lake's `estimates_latest`, every column, keyed like the Kafka rows.
fn latest_in_lake(lake: &std::path::Path) -> BTreeMap<String, serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_co2cast"))
        .args(["query", "--format", "json", "--lake"])
        .arg(lake)
        .arg(format!("SELECT {} FROM estimates_latest", co2cast_sql::AS_OF_COLUMNS))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (format!("{}/{}/{}", v["province"].as_str().unwrap(), v["sector"].as_str().unwrap(), v["date"].as_str().unwrap()), v)
        })
        .collect();
    strip_vintage(rows)
}

fn assert_same(a: &BTreeMap<String, serde_json::Value>, b: &BTreeMap<String, serde_json::Value>) {
    assert_eq!(a.len(), b.len(), "different estimate keys");
    for (k, v) in a {
        let w = b.get(k).unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(v.as_object().unwrap().len(), w.as_object().unwrap().len(), "{k}: columns");
        for (f, x) in v.as_object().unwrap() {
            match (x.as_f64(), w[f].as_f64()) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-9 * x.abs().max(y.abs()), "{k}.{f}: {x} vs {y}"),
                _ => assert_eq!(x, &w[f], "{k}.{f}"),
            }
        }
    }
}

/// A small xorshift generator: the kill schedule is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// When to kill a run.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This many milliseconds after the run's `nth` checkpoint.
    AfterCheckpoint { nth: u64, delay_ms: u64 },
    /// While the checkpoint is being written (its temporary file exists).
    CheckpointWrite,
    /// While the lake is being committed (its `_writing` marker exists).
    LakeCommit,
}

#[test]
fn sigkill_at_seeded_random_moments_gives_the_estimates_of_an_uninterrupted_run() {
    let seed: u64 = std::env::var("CO2CAST_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_191_231);
    eprintln!("kill schedule seed {seed} (CO2CAST_TEST_SEED)");
    let mut rng = Rng(seed | 1);
    let records = sample();
    let produce = |brokers: &str| {
        produce_paced(brokers, &co2cast_pipeline::TopicNames::default(), &records, u64::MAX, None, Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false))).unwrap()
    };
    let with_lake = |c: &mut Command, lake: &std::path::Path| {
        c.arg("--lake").arg(lake);
    };
    // Uninterrupted.
    let a = co2cast_pipeline::embedded::start_cluster().unwrap();
    let brokers_a = a.bootstrap_servers();
    produce(&brokers_a);
    let root_a = tempdir("straight");
    let mut cmd = run_cmd(&brokers_a, &root_a.join("state"));
    with_lake(&mut cmd, &root_a.join("lake"));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let straight = latest_with_kcat(&brokers_a);
    let straight_lake = latest_in_lake(&root_a.join("lake"));

    // Killed with SIGKILL at seeded moments, then run to the end.
    let b = co2cast_pipeline::embedded::start_cluster().unwrap();
    let brokers_b = b.bootstrap_servers();
    produce(&brokers_b);
    let root = tempdir("killed");
    let (state, lake) = (root.join("state"), root.join("lake"));
    let mut kills = Vec::new();
    for _ in 0..7 {
        let at = match rng.below(3) {
            0 => KillAt::AfterCheckpoint { nth: 1 + rng.below(3), delay_ms: rng.below(250) },
            1 => KillAt::CheckpointWrite,
            _ => KillAt::LakeCommit,
        };
        let mut cmd = run_cmd(&brokers_b, &state);
        with_lake(&mut cmd, &lake);
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let started = std::time::Instant::now();
        let first_sequence = sequence(&state);
        let mut checkpointed_at: Option<std::time::Instant> = None;
        let marker = match at {
            KillAt::AfterCheckpoint { .. } => None,
            KillAt::CheckpointWrite => Some(state.join("checkpoint.json.tmp")),
            KillAt::LakeCommit => Some(lake.join("_writing")),
        };
        // Wait for the moment (a marker seen, or the delay), or for the run to end.
        let hit = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            match (&at, &marker) {
                (KillAt::AfterCheckpoint { nth, delay_ms }, _) => {
                    if checkpointed_at.is_none() && sequence(&state) >= first_sequence + nth {
                        checkpointed_at = Some(std::time::Instant::now());
                    }
                    if checkpointed_at.is_some_and(|t| t.elapsed().as_millis() as u64 >= *delay_ms) {
                        break true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                // Spin: a checkpoint or lake write lasts milliseconds.
                (_, Some(m)) if m.exists() => break true,
                (_, Some(_)) if started.elapsed().as_secs() >= 60 => break true,
                _ => {}
            }
        };
        if hit && child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL on Unix
            let during_write = marker.as_ref().is_some_and(|m| m.exists());
            kills.push((at, started.elapsed(), during_write));
        }
        let _ = child.wait();
    }
    eprintln!("kills: {kills:?}");
    assert!(kills.len() >= 4, "runs ended before they could be killed: the test would prove nothing ({kills:?})");
    assert!(kills.iter().any(|k| k.2), "no kill landed during a checkpoint or lake write ({kills:?})");
    let mut cmd = run_cmd(&brokers_b, &state);
    with_lake(&mut cmd, &lake);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &summary["counters"];
    assert_eq!(c["received"].as_u64().unwrap(), records.len() as u64, "every message counted once: {c}");
    assert_eq!(c["received"], c["accepted"]);
    // The lake holds every row's latest vintage: all columns, every row.
    let killed_lake = latest_in_lake(&lake);
    assert_eq!(killed_lake.len(), 19 * (730 + 91), "3 provinces × 6 sectors + national, 2018-2019 and nowcasts to March 2020");
    assert_same(&straight_lake, &killed_lake);
    // The mock broker keeps a bounded log per partition and drops its oldest messages, so a
    // key published only early may be gone; a key still there ends at its newest revision,
    // which must say what the lake says, in both runs.
    let killed_kafka = latest_with_kcat(&brokers_b);
    for kafka in [&straight, &killed_kafka] {
        assert!(kafka.len() * 2 > killed_lake.len(), "the broker kept too little to compare: {} keys", kafka.len());
        let lake_part: BTreeMap<String, serde_json::Value> = kafka.keys().map(|k| (k.clone(), killed_lake[k].clone())).collect();
        assert_same(kafka, &lake_part);
    }
    drop((a, b));
}

/// The sequence number of the checkpoint in `state` (0 without one).
fn sequence(state: &std::path::Path) -> u64 {
    std::fs::read(state.join("checkpoint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["sequence"].as_u64())
        .unwrap_or(0)
}

/// Rows in the lake's latest estimates, read from its manifest (what a reader would see).
fn lake_rows(lake: &std::path::Path) -> u64 {
    let Ok(Some(m)) = co2cast_lake::Manifest::read(lake) else { return 0 };
    m.files.values().filter(|f| f.table == "estimates_latest").map(|f| f.rows).sum()
}

/// Restarting the embedded run resumes: the lake is never empty meanwhile, a value produced
/// from outside the bundled sample survives the restart, and the estimates end as before.
#[test]
fn restarting_the_embedded_run_resumes_without_emptying_the_lake() {
    let root = tempdir("embedded-restart");
    let lake = root.join("lake");
    let bin = env!("CARGO_BIN_EXE_co2cast");
    let args = ["run", "--metrics-listen", "127.0.0.1:0", "--members", "40", "--provinces", PROVINCES, "--no-sql", "--quiet"];
    // First run: serves on after the sample, so that a message from outside it can arrive.
    let mut first = KillOnDrop(Command::new(bin).args(args).arg("--lake").arg(&lake).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    let stderr = first.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut brokers = None;
    let t = std::time::Instant::now();
    while t.elapsed().as_secs() < 300 {
        let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(1)) else { continue };
        if let Some(rest) = line.split("embedded Kafka at ").nth(1) {
            brokers = Some(rest.split(';').next().unwrap().trim().to_string());
        }
        if line.contains("still consuming") {
            break;
        }
    }
    let brokers = brokers.expect("the run names its embedded Kafka");
    let before = latest_in_lake(&lake);
    assert!(!before.is_empty());
    // A revised December 2019 value for Hebei from outside the sample, produced with kcat.
    let key = "power.generation/CN-HE/2019-12-01T00:00:00+08:00";
    let body = r#"{"province":"CN-HE","period_start":"2019-12-01T00:00:00+08:00","granularity":"month","fuel":"thermal","value":30000,"unit":"GWh","source":"outside-the-sample","revision":7}"#;
    let mut kcat = Command::new("kcat").args(["-b", &brokers, "-P", "-t", "proxy.power.generation", "-K", "\t"]).stdin(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        writeln!(kcat.stdin.take().unwrap(), "{key}\t{body}").unwrap();
    }
    assert!(kcat.wait().unwrap().success());
    let revised = |rows: &BTreeMap<String, serde_json::Value>| rows["CN-HE/power/2019-12-15"]["value_mtco2"].as_f64().unwrap();
    let t = std::time::Instant::now();
    let after_outside = loop {
        let rows = latest_in_lake(&lake);
        if (revised(&rows) - revised(&before)).abs() > 1e-9 {
            break rows;
        }
        assert!(t.elapsed().as_secs() < 60, "the outside value never reached the lake");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    // Checkpointed with it: then the first run is killed.
    std::thread::sleep(std::time::Duration::from_millis(500));
    first.0.kill().unwrap();
    let _ = first.0.wait();

    // Second run, to the end, while a reader watches the lake.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (lake, watching) = (lake.clone(), watching.clone());
        std::thread::spawn(move || {
            let mut min_rows = u64::MAX;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                min_rows = min_rows.min(lake_rows(&lake));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            min_rows
        })
    };
    let out = Command::new(bin).args(args).arg("--exit-when-idle").arg("--lake").arg(&lake).output().unwrap();
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let min_rows = watcher.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming the state"), "{err}");
    assert!(min_rows > 0, "a reader saw the lake empty during the restart");
    let after_restart = latest_in_lake(&lake);
    assert_same(&after_outside, &after_restart);
    assert!((revised(&after_restart) - revised(&before)).abs() > 1e-9, "the value from outside the sample was lost");
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

/// `co2cast broker` on a free port, and the address it listens on once it says so.
fn start_broker() -> (KillOnDrop, String) {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_co2cast")).args(["broker", "--listen", &addr]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with(&format!("broker listening on {addr}")), "{line}");
    (KillOnDrop(child), addr)
}

#[test]
fn replay_and_simulate_feed_the_processor_through_the_development_broker() {
    // Four processes: the broker, two producers and the processor; kcat reads the result.
    let (broker, brokers) = start_broker();
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
    let state = tempdir("simulate");
    let out = run_cmd(&brokers, &state).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &s["counters"];
    assert!(c["received"].as_u64().unwrap() > 3100);
    assert_eq!(c["received"].as_u64(), Some(c["accepted"].as_u64().unwrap() + c["dead_lettered"].as_u64().unwrap()));
    let dlq = c["dead_lettered_by_code"]["missing_timezone"].as_u64().unwrap();
    assert!((100..250).contains(&dlq), "{dlq} of 3100 at 5 %");
    let rows = latest_with_kcat(&brokers);
    assert_eq!(rows.len() as u64, c["estimates_published"].as_u64().unwrap() - c["estimate_revisions_published"].as_u64().unwrap());
    assert!(rows.contains_key("CN/all/2019-12-31"), "{} rows", rows.len());
    drop(broker);
    // A restarted development broker keeps nothing: its log is behind the checkpoint, and
    // the processor refuses to skip what the new log will hold.
    let (_broker, brokers) = start_broker();
    let rep = Command::new(bin).args(["replay", "--brokers", &brokers, "--from", golden, "--from-year", "2019", "--to-year", "2019"]).output().unwrap();
    assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));
    let out = run_cmd(&brokers, &state).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("error (user)") && err.contains("before the checkpointed offset"), "{err}");
}

/// A stage of the scaled-out pipeline as its own process (`--exit-when-idle` only when asked).
fn stage_cmd(brokers: &str, state: &std::path::Path, role: &str, exit_when_idle: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_co2cast"));
    c.args(["run", "--role", role, "--metrics-listen", "127.0.0.1:0", "--brokers", brokers, "--quiet", "--json", "--members", "60", "--checkpoint-every", "300", "--provinces", PROVINCES, "--no-sql"])
        .arg("--state-dir")
        .arg(state)
        .env("CO2CAST__PROCESSOR__SESSION_TIMEOUT_MS", "3000")
        .env("CO2CAST__PROCESSOR__HEARTBEAT_INTERVAL_MS", "500")
        .stdin(Stdio::null());
    if exit_when_idle {
        c.arg("--exit-when-idle");
    }
    c
}

/// The newest message of each estimate key, read with kcat (a key's messages share a
/// partition, which kcat reads in order). Several members may have published a key; the
/// newest publication is its value.
fn newest_with_kcat(brokers: &str) -> BTreeMap<String, serde_json::Value> {
    let out = Command::new("kcat")
        .args(["-b", brokers, "-C", "-t", "co2cast.estimates.daily", "-e", "-q", "-K", "\t", "-o", "beginning"])
        .output()
        .expect("kcat is installed (the README's test command installs it)");
    assert!(out.status.success(), "kcat: {}", String::from_utf8_lossy(&out.stderr));
    let rows = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (k, v) = line.split_once('\t').unwrap();
            (k.to_string(), serde_json::from_str(v).unwrap())
        })
        .collect();
    strip_vintage(rows)
}

fn checkpoint_json(state: &std::path::Path) -> serde_json::Value {
    std::fs::read(state.join("checkpoint.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(serde_json::Value::Null)
}

/// Three province members, a national stage and a lake writer as separate processes on one
/// broker, fed by the replay's partitioner. One member is SIGKILLed mid-stream and restarted,
/// another stops for good and the others take its partitions. The final estimates, provincial
/// and national, in Kafka and in the lake, equal those of one uninterrupted process.
#[test]
fn scaled_out_stages_survive_sigkill_and_a_member_leaving_and_match_one_process() {
    let records = sample();
    let produce = |brokers: &str| {
        produce_paced(brokers, &co2cast_pipeline::TopicNames::default(), &records, u64::MAX, None, Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false))).unwrap()
    };
    let reference = {
        let (_broker, brokers) = start_broker();
        produce(&brokers);
        let out = run_cmd(&brokers, &tempdir("scale-reference")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        newest_with_kcat(&brokers)
    };
    assert!(reference.keys().any(|k| k.starts_with("CN/all/")));
    let (_broker, brokers) = start_broker();
    produce(&brokers);
    // Messages per proxy partition, as the partitioner placed them.
    let mut ends: BTreeMap<String, i64> = BTreeMap::new();
    for r in &records {
        let p = co2cast_pipeline::partitioner::partition_for_key(&r.key, co2cast_pipeline::embedded::PARTITIONS).unwrap();
        *ends.entry(format!("{}/{p}", r.topic.name())).or_insert(0) += 1;
    }
    let states: Vec<PathBuf> = (0..3).map(|i| tempdir(&format!("scale-member-{i}"))).collect();
    let spawn = |i: usize| KillOnDrop(stage_cmd(&brokers, &states[i], "province", false).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
    let mut members: Vec<Option<KillOnDrop>> = (0..3).map(|i| Some(spawn(i))).collect();
    let t = std::time::Instant::now();
    while !states.iter().all(|s| sequence(s) > 0) {
        assert!(t.elapsed().as_secs() < 90, "every member checkpoints: {:?}", states.iter().map(|s| sequence(s)).collect::<Vec<_>>());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Member 0 killed mid-stream, member 2 stopped for good (SIGTERM: it checkpoints and leaves).
    members[0].take().unwrap().0.kill().unwrap();
    let mut m2 = members[2].take().unwrap();
    assert!(Command::new("kill").args(["-TERM", &m2.0.id().to_string()]).status().unwrap().success());
    let status = m2.0.wait().unwrap();
    assert!(status.success(), "a stopped member exits cleanly");
    members[0] = Some(spawn(0));
    // Settled: between them, the two live members have read every partition to its end, and
    // neither has checkpointed for a few seconds.
    let live = [&states[0], &states[1]];
    let (mut last, mut since) = (Vec::new(), std::time::Instant::now());
    loop {
        assert!(t.elapsed().as_secs() < 240, "the live members settle");
        let cks: Vec<serde_json::Value> = live.iter().map(|s| checkpoint_json(s)).collect();
        let read_all = ends.iter().all(|(k, end)| cks.iter().any(|c| c["offsets"][k].as_i64() == Some(*end)));
        let seqs: Vec<u64> = live.iter().map(|s| sequence(s)).collect();
        if seqs != last {
            (last, since) = (seqs, std::time::Instant::now());
        }
        if read_all && since.elapsed() > std::time::Duration::from_secs(6) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for m in members.iter_mut().flatten() {
        assert!(Command::new("kill").args(["-TERM", &m.0.id().to_string()]).status().unwrap().success());
        assert!(m.0.wait().unwrap().success());
    }
    for (i, s) in states.iter().enumerate() {
        let c = &checkpoint_json(s)["counters"];
        assert_eq!(c["received"].as_u64(), Some(c["accepted"].as_u64().unwrap() + c["dead_lettered"].as_u64().unwrap()), "member {i}: in = accepted + DLQ");
        assert!(checkpoint_json(s)["national"].as_object().unwrap().is_empty(), "member {i} made national rows");
    }
    let national = stage_cmd(&brokers, &tempdir("scale-national"), "national", true).output().unwrap();
    assert!(national.status.success(), "{}", String::from_utf8_lossy(&national.stderr));
    let n: serde_json::Value = serde_json::from_slice(&national.stdout).unwrap();
    assert_eq!(n["incomplete_days"], 0, "{n}");
    let lake = tempdir("scale-lake");
    let lake_run = stage_cmd(&brokers, &tempdir("scale-lake-state"), "lake", true).arg("--lake").arg(&lake).output().unwrap();
    assert!(lake_run.status.success(), "{}", String::from_utf8_lossy(&lake_run.stderr));
    let scaled = newest_with_kcat(&brokers);
    assert_same(&reference, &scaled);
    assert_same(&reference, &latest_in_lake(&lake));
}

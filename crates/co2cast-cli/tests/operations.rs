//! Operators' view, end to end: `co2cast run` against Kafka (with bad messages produced by
//! kcat), scraped by a real Prometheus that loads `deploy/prometheus/alerts.yml`. The metrics
//! exposed must be exactly those of docs/metrics.md (names, types, labels, label values);
//! every query of `dashboards/operations.json` must return data from Prometheus, and every
//! query of `dashboards/estimates.json` rows from the SQL endpoint over psql; the alert rules
//! must evaluate without error, the stale-estimates alert fire (the sample ends in 2019) and
//! the others stay quiet; counters must equal the checkpoint's own accounting.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_co2cast");
const PROVINCES: &str = "CN-HE,CN-BJ,CN-GD";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("co2cast-ops-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET over plain HTTP/1.0: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---- The specification in docs/metrics.md ----

struct SpecMetric {
    kind: String,
    labels: Vec<String>,
}

struct Spec {
    metrics: BTreeMap<String, SpecMetric>,
    /// Allowed values per label; `None`: free (build information).
    values: BTreeMap<String, Option<BTreeSet<String>>>,
}

fn ticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn spec() -> Spec {
    let doc = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let section = |title: &str| -> Vec<Vec<String>> {
        let start = doc.find(title).unwrap_or_else(|| panic!("docs/metrics.md has no {title}"));
        doc[start..]
            .lines()
            .skip(1)
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
            .collect()
    };
    let mut metrics = BTreeMap::new();
    for row in section("## The metrics") {
        let name = ticked(&row[0]).remove(0);
        metrics.insert(name, SpecMetric { kind: row[1].clone(), labels: ticked(&row[3]) });
    }
    let mut values = BTreeMap::new();
    for row in section("## Label values") {
        let labels = ticked(&row[0]);
        let allowed = if labels.len() > 1 { None } else { Some(ticked(&row[1]).into_iter().collect()) };
        for l in labels {
            values.insert(l, allowed.clone());
        }
    }
    Spec { metrics, values }
}

/// A parsed exposition: TYPE per family, and every sample (name, labels, value).
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad sample value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let mut labels = BTreeMap::new();
                let body = rest.strip_suffix('}').unwrap();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest.split_once("=\"").unwrap();
                    let end = after.find('"').unwrap();
                    labels.insert(k.trim_start_matches(',').to_string(), after[..end].to_string());
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                (n.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        samples.push((name, labels, value));
    }
    Exposition { types, samples }
}

/// The metric family a sample belongs to (histogram series carry suffixes).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram")
        {
            return base;
        }
    }
    name
}

fn check_against_spec(spec: &Spec, exp: &Exposition) {
    for (name, m) in &spec.metrics {
        let kind = exp.types.get(name).unwrap_or_else(|| panic!("{name} is in docs/metrics.md but not exposed"));
        assert_eq!(kind, &m.kind, "{name}: exposed as {kind}, specified as {}", m.kind);
        if m.kind == "counter" {
            assert!(name.ends_with("_total"), "{name}: counters end in _total");
        }
    }
    for name in exp.types.keys() {
        assert!(spec.metrics.contains_key(name), "{name} is exposed but not specified in docs/metrics.md");
    }
    let mut series: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, labels, value) in &exp.samples {
        let family = family_of(name, &exp.types);
        let m = &spec.metrics[family];
        let mut names: Vec<&String> = labels.keys().filter(|k| *k != "le" || !name.ends_with("_bucket")).collect();
        names.sort();
        let mut want: Vec<&String> = m.labels.iter().collect();
        want.sort();
        assert_eq!(names, want, "{name}: labels");
        for (k, v) in labels {
            if k == "le" {
                continue;
            }
            match spec.values.get(k).unwrap_or_else(|| panic!("label {k} has no values in docs/metrics.md")) {
                Some(allowed) => assert!(allowed.contains(v), "{name}: {k}=\"{v}\" is not among the specified values"),
                None => assert!(!v.is_empty(), "{name}: {k} is empty"),
            }
        }
        assert!(!value.is_nan() || name.ends_with("_seconds"), "{name}: NaN");
        if name == family {
            *series.entry(family).or_default() += 1;
        }
    }
    // Labelled counters start at 0 for every listed value (rate() sees them from the start).
    for (name, m) in &spec.metrics {
        if m.kind != "counter" || m.labels.is_empty() {
            continue;
        }
        let all: usize = m.labels.iter().map(|l| spec.values[l].as_ref().map_or(1, |v| v.len())).product();
        assert_eq!(series.get(name.as_str()).copied().unwrap_or(0), all, "{name}: one series per listed label value");
    }
}

/// Metric names a PromQL expression reads (histogram suffixes removed).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("co2cast_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let mut name = &tail[..end];
        for s in ["_bucket", "_sum", "_count"] {
            if let Some(b) = name.strip_suffix(s)
                && !b.ends_with("_total")
            {
                name = b;
            }
        }
        out.push(name.to_string());
        rest = &tail[end..];
    }
    out
}

fn dashboard_targets(file: &str) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(repo(file)).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let q = t.get("expr").or_else(|| t.get("rawSql")).and_then(Value::as_str).unwrap();
            out.push((p["title"].as_str().unwrap().to_string(), q.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        let q = v["query"].get("query").unwrap_or(&v["query"]).as_str().unwrap();
        out.push((format!("variable {}", v["name"]), q.to_string()));
    }
    out
}

fn kcat_produce(brokers: &str, topic: &str, lines: &str) {
    let mut child = Command::new("kcat")
        .args(["-b", brokers, "-P", "-t", topic, "-K", "\t"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat is installed (the README's test command installs it)");
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "kcat failed");
}

fn psql(port: u16, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-X", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-c", sql, &format!("host=127.0.0.1 port={port} user=grafana dbname=co2cast sslmode=disable")])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql (Debian postgresql-client) must be installed; see the README")
}

fn prometheus_query(port: u16, expr: &str) -> Value {
    let (code, body) = http_get(port, &format!("/api/v1/query?query={}", url_encode(expr))).expect("Prometheus answers");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{expr}: {body}"));
    assert!(code == 200 && v["status"] == "success", "{expr}: {body}");
    v["data"]["result"].clone()
}

#[test]
fn prometheus_dashboards_and_alerts_read_what_the_processor_exposes() {
    let spec = spec();
    // Dashboards and alerts name only specified metrics.
    let alerts = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let mut named: Vec<(String, String)> = dashboard_targets("dashboards/operations.json");
    named.push(("alerts.yml".into(), alerts.clone()));
    for (where_, q) in &named {
        for m in metric_names(q) {
            assert!(spec.metrics.contains_key(&m), "{where_} reads {m}, which docs/metrics.md does not specify");
        }
    }

    // A broker with the sample, produced by kcat, and bad messages of three kinds.
    let cluster = co2cast_pipeline::embedded::start_cluster().unwrap();
    let brokers = cluster.bootstrap_servers();
    let data = co2cast_data::embedded().unwrap();
    let records: Vec<_> = co2cast_pipeline::replay::records_from_dataset(&data, 2018..=2019, Some(2019))
        .into_iter()
        .filter(|r| ["CN-HE", "CN-BJ", "CN-GD", "/CN/"].iter().any(|k| r.key.contains(k)))
        .collect();
    let mut by_topic: BTreeMap<&str, String> = BTreeMap::new();
    for r in &records {
        by_topic.entry(r.topic.name()).or_default().push_str(&format!("{}\t{}\n", r.key, r.payload));
    }
    let bad = [
        ("missing_timezone", 3, r#"power.generation/CN-HE/2019-07-04T00:00:00	{"province":"CN-HE","period_start":"2019-07-04T00:00:00","granularity":"day","fuel":"thermal","value":100,"unit":"GWh","source":"t","revision":0}"#),
        ("negative_value", 2, r#"power.generation/CN-HE/2019-07-05T00:00:00+08:00	{"province":"CN-HE","period_start":"2019-07-05T00:00:00+08:00","granularity":"day","fuel":"thermal","value":-40,"unit":"GWh","source":"t","revision":0}"#),
        ("malformed_json", 1, "power.generation/CN-HE/2019-07-06T00:00:00+08:00\t{not json"),
    ];
    for (_, n, line) in &bad {
        for _ in 0..*n {
            by_topic.get_mut("proxy.power.generation").unwrap().push_str(&format!("{line}\n"));
        }
    }
    for (topic, lines) in &by_topic {
        kcat_produce(&brokers, topic, lines);
    }
    let produced = records.len() as u64 + 6;

    // The processor, serving SQL and its operators' endpoint, not exiting.
    let root = tempdir("run");
    let (sql_port, metrics_port, prom_port) = (free_port(), free_port(), free_port());
    let log = std::fs::File::create(root.join("co2cast.log")).unwrap();
    let _processor = Killed(
        Command::new(BIN)
            .args(["run", "--brokers", &brokers, "--quiet", "--members", "60", "--checkpoint-every", "300", "--provinces", PROVINCES])
            .args(["--sql-port", &sql_port.to_string(), "--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--state-dir")
            .arg(root.join("state"))
            .arg("--lake")
            .arg(root.join("lake"))
            .env_remove("CO2CAST_SQL_PASSWORD")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("/healthz", Duration::from_secs(60), || http_get(metrics_port, "/healthz").is_some_and(|(c, _)| c == 200));

    // A real Prometheus scraping every second, with the shipped alerts made immediate.
    let prom_dir = tempdir("prometheus");
    let immediate = alerts.lines().map(|l| if l.trim_start().starts_with("for:") { l.split("for:").next().unwrap().to_string() + "for: 0s" } else { l.to_string() }).collect::<Vec<_>>().join("\n");
    std::fs::write(prom_dir.join("alerts.yml"), immediate).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nscrape_configs:\n  - job_name: co2cast\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let check = Command::new("promtool").arg("check").arg("config").arg(prom_dir.join("prometheus.yml")).output().expect("promtool (Debian prometheus) must be installed");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", prom_dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian prometheus) must be installed"),
    );

    // Everything handled and checkpointed; then ready.
    let ckpt_file = root.join("state/checkpoint.json");
    wait_for("every message handled and checkpointed", Duration::from_secs(240), || {
        std::fs::read_to_string(&ckpt_file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|c| c["counters"]["received"].as_u64() == Some(produced))
    });
    wait_for("/readyz", Duration::from_secs(60), || http_get(metrics_port, "/readyz").is_some_and(|(c, _)| c == 200));
    let (_, ready) = http_get(metrics_port, "/readyz").unwrap();
    assert!(ready.contains("ok processor") && ready.contains("ok sql"), "{ready}");

    // SQL traffic, one statement refused and one invalid, so the SQL metrics have data.
    let estimates_queries = dashboard_targets("dashboards/estimates.json");
    for (title, sql) in &estimates_queries {
        let sql = sql
            .replace("$__timeFilter(CAST(date AS timestamp))", "CAST(date AS timestamp) BETWEEN '2019-01-01T00:00:00Z' AND '2019-12-31T23:59:59Z'")
            .replace("$province", "CN-GD")
            .replace("$sector", "power");
        assert!(!sql.contains('$'), "{title}: an unexpanded macro in {sql}");
        let out = psql(sql_port, &sql);
        assert!(out.status.success(), "{title}: {sql}: {}", String::from_utf8_lossy(&out.stderr));
        let rows = String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).count();
        assert!(rows > 0, "{title}: no rows for {sql}");
    }
    assert!(!psql(sql_port, "DELETE FROM inventory").status.success());
    // Mistakes in a query are the query's, whichever layer finds them.
    for bad in ["SELEKT 1", "SELECT 'abc", "SELECT 1/0", "SELECT CAST('x' AS INT)"] {
        assert!(!psql(sql_port, bad).status.success(), "{bad}");
    }

    // The exposition against the specification, and against the checkpoint's accounting.
    let (code, text) = http_get(metrics_port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let exp = parse_exposition(&text);
    check_against_spec(&spec, &exp);
    let sum = |name: &str, filter: &dyn Fn(&BTreeMap<String, String>) -> bool| -> u64 {
        exp.samples.iter().filter(|(n, l, _)| n == name && filter(l)).map(|(_, _, v)| *v as u64).sum()
    };
    let ckpt: Value = serde_json::from_str(&std::fs::read_to_string(&ckpt_file).unwrap()).unwrap();
    let c = &ckpt["counters"];
    assert_eq!(sum("co2cast_proxy_received_messages_total", &|_| true), c["received"].as_u64().unwrap());
    assert_eq!(sum("co2cast_proxy_accepted_messages_total", &|_| true), c["accepted"].as_u64().unwrap());
    assert_eq!(sum("co2cast_proxy_dead_lettered_messages_total", &|_| true), c["dead_lettered"].as_u64().unwrap());
    assert_eq!(sum("co2cast_proxy_late_messages_total", &|_| true), c["late"].as_u64().unwrap());
    assert_eq!(sum("co2cast_estimate_published_rows_total", &|_| true), c["estimates_published"].as_u64().unwrap());
    assert_eq!(sum("co2cast_grid_intensity_published_rows_total", &|_| true), c["grid_intensity_published"].as_u64().unwrap());
    assert!(c["grid_intensity_published"].as_u64().unwrap() > 0, "the sample has generation data: grid intensity rows are published");
    for (code, n, _) in &bad {
        assert_eq!(sum("co2cast_proxy_dead_lettered_messages_total", &|l| l["code"] == *code && l["family"] == "power.generation"), *n as u64, "{code}");
        assert_eq!(c["dead_lettered_by_code"][code].as_u64(), Some(*n as u64), "{code}");
    }
    assert_eq!(sum("co2cast_sql_query_errors_total", &|l| l["class"] == "refused"), 1);
    assert_eq!(sum("co2cast_sql_query_errors_total", &|l| l["class"] == "invalid_query"), 4);
    assert_eq!(sum("co2cast_sql_query_errors_total", &|l| l["class"] == "internal"), 0);
    assert!(sum("co2cast_sql_query_duration_seconds_count", &|_| true) >= estimates_queries.len() as u64);
    assert!(sum("co2cast_checkpoint_writes_total", &|_| true) >= 1);
    assert_eq!(sum("co2cast_broker_up", &|_| true), 1);
    assert_eq!(sum("co2cast_consumer_lag_messages", &|_| true), 0);

    // Prometheus scraped it: every panel of the operations dashboard has data.
    wait_for("Prometheus to scrape co2cast", Duration::from_secs(60), || {
        http_get(prom_port, "/api/v1/query?query=co2cast_build_info").is_some_and(|(c, b)| c == 200 && b.contains("git_revision"))
    });
    // Two scrapes inside every rate window.
    std::thread::sleep(Duration::from_secs(5));
    for (title, expr) in dashboard_targets("dashboards/operations.json") {
        let mut expr = expr.replace("$instance", ".*").replace("$__rate_interval", "30s");
        // Grafana's label_values(metric, label) variable query, as PromQL.
        if let Some(args) = expr.strip_prefix("label_values(").and_then(|a| a.strip_suffix(')')) {
            let (metric, label) = args.split_once(", ").unwrap();
            expr = format!("count by ({label}) ({metric})");
        }
        let result = prometheus_query(prom_port, &expr);
        assert!(!result.as_array().unwrap().is_empty(), "{title}: no data for {expr}");
    }
    let coverage = prometheus_query(prom_port, "count(co2cast_proxy_coverage_ratio)");
    assert!(coverage[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() >= 3.0 * 10.0, "coverage per province and signal");

    // Alerts: every rule evaluates; estimates are stale (the sample ends in 2019); nothing else
    // that this healthy run could trip fires.
    wait_for("the stale-estimates alert", Duration::from_secs(60), || {
        !prometheus_query(prom_port, "ALERTS{alertname=\"CO2castEstimatesStale\",alertstate=\"firing\"}").as_array().unwrap().is_empty()
    });
    let (_, rules) = http_get(prom_port, "/api/v1/rules").unwrap();
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let mut evaluated = 0;
    for g in rules["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "{}: {}", r["name"], r["lastError"]);
            evaluated += 1;
        }
    }
    assert_eq!(evaluated, alerts.matches("- alert:").count());
    for quiet in ["CO2castLagGrowing", "CO2castDLQSpike", "CO2castCheckpointFailing", "CO2castBrokerDown", "CO2castDown"] {
        let firing = prometheus_query(prom_port, &format!("ALERTS{{alertname=\"{quiet}\"}}"));
        assert!(firing.as_array().unwrap().is_empty(), "{quiet} fires on a healthy run: {firing}");
    }
    drop(cluster);
}

/// The shipped alert rules pass promtool's checks and unit tests; the deploy files parse.
#[test]
fn alert_rules_and_deploy_files_are_valid() {
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd).args(args).current_dir(repo("deploy")).output().unwrap_or_else(|e| panic!("{cmd}: {e} (installed by scripts/test)"));
        assert!(out.status.success(), "{cmd} {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run("promtool", &["check", "rules", "prometheus/alerts.yml"]);
    run("promtool", &["check", "config", "prometheus/prometheus.yml"]);
    run("promtool", &["test", "rules", "prometheus/alerts.test.yml"]);
    run("docker-compose", &["-f", "docker-compose.yml", "config", "-q"]);
    let k8s = run("kubernetes-validate", &["--strict", "k8s/configmap.yml", "k8s/deployment.yml", "k8s/service.yml"]);
    assert_eq!(k8s.matches("passed").count(), 4, "{k8s}");
    // Every alert has a runbook entry.
    let ops = std::fs::read_to_string(repo("docs/operations.md")).unwrap();
    let alerts = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    for name in alerts.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(ops.contains(&format!("### Alert {name}")), "docs/operations.md has no runbook for {name}");
    }
    // The ConfigMap's settings are accepted by the processor (unknown keys are refused).
    let cm = std::fs::read_to_string(repo("deploy/k8s/configmap.yml")).unwrap();
    let toml: String = cm.split("processor.toml: |\n").nth(1).unwrap().lines().map(|l| l.strip_prefix("    ").unwrap_or(l).to_string() + "\n").collect();
    let dir = tempdir("configmap");
    std::fs::write(dir.join("processor.toml"), toml).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--no-metrics", "--no-sql", "--quiet", "--brokers", "127.0.0.1:1", "--exit-when-idle", "--config"])
        .arg(dir.join("processor.toml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--lake")
        .arg(dir.join("lake"))
        .env("CO2CAST__PROCESSOR__BROKER_RETRY_MAX_BACKOFF_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = Killed(out);
    std::thread::sleep(Duration::from_secs(3));
    // A configuration error would have ended it; an unreachable broker is retried.
    if out.0.try_wait().unwrap().is_some() {
        let mut err = String::new();
        out.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        panic!("the processor refused the ConfigMap's settings: {err}");
    }
}

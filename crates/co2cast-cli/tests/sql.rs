//! End to end with real third-party clients: the embedded run writes a lake; `psql` queries it
//! over the PostgreSQL wire (the README's queries, Grafana's introspection, the read-only
//! refusals); pyarrow and DuckDB read the Parquet files with Hive partitioning; the ensemble
//! band computed in SQL equals the pipeline's own; an as-of query sees the older vintage.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_co2cast");

struct Lake {
    dir: PathBuf,
    summary: Value,
}

/// One embedded run (three provinces, 60 members) writes the lake all tests read.
fn lake() -> &'static Lake {
    static LAKE: OnceLock<Lake> = OnceLock::new();
    LAKE.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("co2cast-sql-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("lake");
        let out = Command::new(BIN)
            .args(["run", "--metrics-listen", "127.0.0.1:0", "--exit-when-idle", "--quiet", "--json", "--no-sql", "--members", "60", "--provinces", "CN-HE,CN-BJ,CN-GD"])
            .arg("--lake")
            .arg(&dir)
            .arg("--state-dir")
            .arg(root.join("state"))
            .output()
            .unwrap();
        assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        Lake { dir, summary }
    })
}

fn query_json(sql: &str) -> Vec<Value> {
    let out = Command::new(BIN).args(["query", "--format", "json", "--lake"]).arg(&lake().dir).arg(sql).output().unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The ```sql blocks of the README's analyst section.
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let start = readme.find("## Analysts").expect("README has an analyst section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map(|i| i + 3).unwrap_or(section.len())];
    section.split("```sql\n").skip(1).map(|b| b[..b.find("```").unwrap()].trim().to_string()).collect()
}

struct Server(std::process::Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A psql connection: user, password (None: no PGPASSWORD) and sslmode.
struct Login<'a> {
    user: &'a str,
    password: Option<&'a str>,
    sslmode: &'a str,
}

const OPEN: Login = Login { user: "analyst", password: None, sslmode: "disable" };

fn psql(port: u16, sql: &str) -> std::process::Output {
    psql_as(port, &OPEN, sql)
}

fn psql_as(port: u16, login: &Login, sql: &str) -> std::process::Output {
    let conninfo = format!("host=127.0.0.1 port={port} user={} dbname=co2cast sslmode={}", login.user, login.sslmode);
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-c", sql, &conninfo]).env("PGCONNECT_TIMEOUT", "5").env_remove("PGPASSWORD");
    if let Some(p) = login.password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.output().expect("psql (Debian postgresql-client) must be installed; see the README")
}

/// Statements read by psql from its standard input, each sent on its own.
fn psql_script(port: u16, script: &str) -> std::process::Output {
    use std::io::Write;
    let conninfo = format!("host=127.0.0.1 port={port} user=analyst dbname=co2cast sslmode=disable");
    let mut child = Command::new("psql")
        .args(["-X", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", &conninfo])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn serve() -> Server {
    serve_with(&[], &OPEN)
}

/// `co2cast serve` with `extra` flags, ready once `login` can run a query.
fn serve_with(extra: &[&str], login: &Login) -> Server {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["serve", "--metrics-listen", "127.0.0.1:0", "--sql-port", &port.to_string(), "--query-timeout-ms", "20000", "--lake"])
        .arg(&lake().dir)
        .args(extra)
        .env_remove("CO2CAST_SQL_PASSWORD")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server(child, port);
    let t = std::time::Instant::now();
    while !psql_as(port, login, "SELECT 1").status.success() {
        assert!(server.0.try_wait().unwrap().is_none(), "co2cast serve exited");
        assert!(t.elapsed().as_secs() < 60, "the SQL endpoint did not come up");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    server
}

#[test]
fn psql_runs_the_readme_queries_and_grafana_introspection_and_is_refused_writes() {
    let s = serve();
    let queries = readme_queries();
    assert!(queries.len() >= 6, "README analyst queries: {}", queries.len());
    for q in &queries {
        let out = psql(s.1, q);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{q}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(!stdout.trim().is_empty(), "no rows for\n{q}");
    }
    // What Grafana's PostgreSQL data source and psql's \dt ask.
    for q in [
        "SELECT 1",
        "SELECT version()",
        "SELECT current_database()",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'estimates_latest' ORDER BY ordinal_position",
        "\\dt",
    ] {
        let out = psql(s.1, q);
        assert!(out.status.success(), "{q}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let tables = String::from_utf8_lossy(&psql(s.1, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").stdout).to_string();
    for t in ["estimates", "estimates_latest", "estimate_ensemble", "proxies", "inventory", "comparison"] {
        assert!(tables.lines().any(|l| l.trim() == t), "{t} not listed: {tables}");
    }
    // Read-only: refused with a clear message, nothing written.
    let leak = std::env::temp_dir().join(format!("co2cast-leak-{}.csv", std::process::id()));
    for q in [
        "CREATE TABLE x(a int)".to_string(),
        "INSERT INTO inventory VALUES ('CN-XX', 'power', 2019, 1.0, 'x')".to_string(),
        "DROP TABLE estimates".to_string(),
        format!("COPY (SELECT 1) TO '{}'", leak.display()),
        "SELECT * FROM read_csv('/etc/passwd')".to_string(),
    ] {
        let out = psql(s.1, &q);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{q} was accepted");
        assert!(err.contains("read-only"), "{q}: {err}");
    }
    assert!(!leak.exists(), "COPY wrote a file");
    assert!(psql(s.1, "SELECT count(*) FROM estimates").status.success(), "a refusal must not break the session");
}

#[test]
fn pyarrow_and_duckdb_read_the_lake_with_hive_partitions_and_agree_with_co2cast() {
    let dir = &lake().dir;
    let script = r#"
import json, sys
import pyarrow.dataset as ds, duckdb
root = sys.argv[1]
out = {}
for t in ["estimates", "estimates_latest", "estimate_ensemble"]:
    d = ds.dataset(f"{root}/{t}", format="parquet", partitioning="hive")
    tab = d.to_table()
    years = sorted(set(tab.column("year").to_pylist()))
    con = duckdb.connect()
    n, s = con.execute(f"SELECT count(*), sum(value_mtco2) FROM read_parquet('{root}/{t}/**/*.parquet', hive_partitioning = true)").fetchone()
    y = con.execute(f"SELECT count(DISTINCT year) FROM read_parquet('{root}/{t}/**/*.parquet', hive_partitioning = true)").fetchone()[0]
    out[t] = {"pyarrow_rows": tab.num_rows, "pyarrow_sum": float(sum(v for v in tab.column("value_mtco2").to_pylist())), "pyarrow_years": years, "duckdb_rows": n, "duckdb_sum": s, "duckdb_years": y}
print(json.dumps(out))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(dir).output().unwrap();
    assert!(out.status.success(), "python3 with pyarrow and duckdb (pip install pyarrow duckdb): {}", String::from_utf8_lossy(&out.stderr));
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    for t in ["estimates", "estimates_latest", "estimate_ensemble"] {
        let ours = &query_json(&format!("SELECT count(*) AS n, sum(value_mtco2) AS s, count(DISTINCT year) AS y FROM {t}"))[0];
        let (n, s) = (f(&ours["n"]), f(&ours["s"]));
        let p = &py[t];
        assert!(n > 0.0, "{t} is empty");
        assert_eq!(f(&p["pyarrow_rows"]), n, "{t}: pyarrow rows");
        assert_eq!(f(&p["duckdb_rows"]), n, "{t}: duckdb rows");
        for k in ["pyarrow_sum", "duckdb_sum"] {
            assert!((f(&p[k]) - s).abs() <= 1e-9 * s.abs(), "{t}: {k} {} vs {s}", p[k]);
        }
        assert_eq!(f(&p["duckdb_years"]), f(&ours["y"]), "{t}: partitions");
        assert_eq!(p["pyarrow_years"].as_array().unwrap().len() as f64, f(&ours["y"]), "{t}: partitions");
    }
}

#[test]
fn the_band_of_the_annual_national_sum_from_the_ensemble_in_sql_equals_the_pipelines() {
    let s = &lake().summary;
    let national = s["national"].as_array().unwrap().iter().find(|n| n["year"] == 2019).expect("2019 in the summary");
    let band = &national["band"];
    let sql = "WITH members AS (SELECT member, SUM(value_mtco2) AS total FROM estimate_ensemble WHERE year = 2019 GROUP BY member) \
               SELECT ensemble_quantile(total, 0.025) AS p2_5, ensemble_quantile(total, 0.5) AS p50, ensemble_quantile(total, 0.975) AS p97_5, count(*) AS members FROM members";
    let row = &query_json(sql)[0];
    assert_eq!(f(&row["members"]), 60.0);
    for k in ["p2_5", "p50", "p97_5"] {
        let (a, b) = (f(&row[k]), f(&band[k]));
        assert!((a - b).abs() <= 1e-9 * b.abs(), "{k}: SQL {a} vs pipeline {b}");
    }
    // And the national rows the pipeline published are the member-wise sums of the provinces'.
    let daily = "WITH m AS (SELECT date, member, SUM(value_mtco2) AS total FROM estimate_ensemble WHERE year = 2019 AND month = 7 GROUP BY date, member) \
                 SELECT m.date, ensemble_quantile(total, 0.975) AS p97_5 FROM m GROUP BY m.date ORDER BY m.date LIMIT 3";
    for r in query_json(daily) {
        let d = r["date"].as_str().unwrap();
        let published = &query_json(&format!("SELECT p97_5 FROM estimates_latest WHERE province = 'CN' AND date = DATE '{d}'"))[0];
        assert!((f(&r["p97_5"]) - f(&published["p97_5"])).abs() <= 1e-9 * f(&published["p97_5"]), "{d}");
    }
}

#[test]
fn an_as_of_query_before_a_revision_returns_the_older_value() {
    // A row published at least twice (nowcasts are revised when the month's data arrive).
    let pick = &query_json(
        "SELECT province, sector, date FROM estimates WHERE revision = 1 AND province <> 'CN' ORDER BY date, province, sector LIMIT 1",
    )[0];
    let (p, s, d) = (pick["province"].as_str().unwrap(), pick["sector"].as_str().unwrap(), pick["date"].as_str().unwrap());
    let vintages = query_json(&format!(
        "SELECT revision, value_mtco2, CAST(computed_at AS BIGINT) AS at_us FROM estimates \
         WHERE province = '{p}' AND sector = '{s}' AND date = DATE '{d}' ORDER BY revision"
    ));
    assert!(vintages.len() >= 2, "{vintages:?}");
    let (v0, v1) = (&vintages[0], &vintages[1]);
    assert!(f(&v1["at_us"]) > f(&v0["at_us"]), "vintages in time order");
    let mid_us = (f(&v0["at_us"]) as i64 + f(&v1["at_us"]) as i64) / 2;
    let mid = chrono::DateTime::from_timestamp_micros(mid_us).unwrap().to_rfc3339();
    let before = &query_json(&format!(
        "SELECT revision, value_mtco2 FROM estimates_as_of('{mid}') WHERE province = '{p}' AND sector = '{s}' AND date = DATE '{d}'"
    ))[0];
    assert_eq!(f(&before["revision"]), 0.0);
    assert_eq!(f(&before["value_mtco2"]), f(&v0["value_mtco2"]));
    let now = &query_json(&format!(
        "SELECT revision FROM estimates_as_of('2100-01-01T00:00:00Z') WHERE province = '{p}' AND sector = '{s}' AND date = DATE '{d}'"
    ))[0];
    let latest = &query_json(&format!("SELECT revision FROM estimates_latest WHERE province = '{p}' AND sector = '{s}' AND date = DATE '{d}'"))[0];
    assert_eq!(f(&now["revision"]), f(&latest["revision"]));
    // A malformed timestamp is a clear error, not a panic.
    let out = Command::new(BIN).args(["query", "--lake"]).arg(&lake().dir).arg("SELECT * FROM estimates_as_of('yesterday')").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}

#[test]
fn export_writes_csv_and_parquet_slices() {
    let root = lake().dir.parent().unwrap().to_path_buf();
    let csv = root.join("gd.csv");
    let out = Command::new(BIN)
        .args(["export", "--from", "2019-07-01", "--to", "2019-07-31", "--provinces", "CN-GD", "--sectors", "power,industry", "--format", "csv", "--lake"])
        .arg(&lake().dir)
        .arg("--out")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("date,province,sector,value_mtco2"), "{}", &text[..80.min(text.len())]);
    assert_eq!(text.lines().count(), 1 + 31 * 2);
    let pq = root.join("all.parquet");
    let out = Command::new(BIN)
        .args(["export", "--from", "2019-01-01", "--to", "2019-12-31", "--format", "parquet", "--lake"])
        .arg(&lake().dir)
        .arg("--out")
        .arg(&pq)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::metadata(&pq).unwrap().len() > 1000);
    let bad = Command::new(BIN).args(["export", "--from", "2019-01-01", "--to", "2019-12-31", "--provinces", "Atlantis", "--format", "csv", "--out", "/tmp/x.csv", "--lake"]).arg(&lake().dir).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown province"));
}

/// A self-signed certificate and its key, made with the openssl command line.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

#[test]
fn password_authentication_and_tls_fail_closed() {
    let dir = std::env::temp_dir().join(format!("co2cast-sql-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let password_file = dir.join("password");
    std::fs::write(&password_file, "s3cret-Пароль\n").unwrap();
    let lake = lake().dir.to_str().unwrap().to_string();

    // A certificate that cannot be loaded stops the server before it listens.
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n").unwrap();
    for (c, k) in [(&garbage, &key), (&cert, &garbage), (&cert, &dir.join("missing.pem"))] {
        let port = free_port();
        let out = Command::new(BIN)
            .args(["serve", "--metrics-listen", "127.0.0.1:0", "--lake", &lake, "--sql-port", &port.to_string(), "--sql-tls-cert", c.to_str().unwrap(), "--sql-tls-key", k.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("TLS"), "bad TLS files must stop the server: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing may listen after a TLS failure");
    }
    // The same failure in `run`, before any work is done.
    let out = Command::new(BIN)
        .args(["run", "--metrics-listen", "127.0.0.1:0", "--exit-when-idle", "--quiet", "--lake"])
        .arg(dir.join("run-lake"))
        .args(["--sql-tls-cert", garbage.to_str().unwrap(), "--sql-tls-key", key.to_str().unwrap(), "--sql-port", &free_port().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("TLS"));
    assert!(!dir.join("run-lake").exists(), "run must fail before writing a lake");

    let good = Login { user: "co2cast", password: Some("s3cret-Пароль"), sslmode: "require" };
    let s = serve_with(
        &["--sql-password-file", password_file.to_str().unwrap(), "--sql-tls-cert", cert.to_str().unwrap(), "--sql-tls-key", key.to_str().unwrap()],
        &good,
    );
    let out = psql_as(s.1, &good, "SELECT count(*) FROM estimates_latest");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(f(&Value::String(String::from_utf8_lossy(&out.stdout).trim().into())) > 0.0);

    refused_at(s.1, Login { password: Some("wrong"), ..good }, "password authentication failed");
    refused_at(s.1, Login { user: "someone", ..good }, "password authentication failed");
    refused_at(s.1, Login { password: None, ..good }, "password");
    refused_at(s.1, Login { sslmode: "disable", ..good }, "TLS connections only");
    drop(s);

    // Without TLS the password is still required; the environment variable works too.
    let port = free_port();
    let child = Command::new(BIN)
        .args(["serve", "--metrics-listen", "127.0.0.1:0", "--lake", &lake, "--sql-port", &port.to_string(), "--sql-user", "analyst", "--max-connections", "1"])
        .env("CO2CAST_SQL_PASSWORD", "from-env")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Server(child, port);
    let plain = Login { user: "analyst", password: Some("from-env"), sslmode: "disable" };
    let t = std::time::Instant::now();
    while !psql_as(port, &plain, "SELECT 1").status.success() {
        assert!(t.elapsed().as_secs() < 60, "the SQL endpoint did not come up");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    refused_at(port, Login { password: Some("nope"), ..plain }, "password authentication failed");

    // Connection limit: a second client is refused while the first is connected.
    let conninfo = format!("host=127.0.0.1 port={port} user=analyst dbname=co2cast sslmode=disable");
    // The held client proves it is connected by answering a query; a refusal (a slot of an
    // earlier client not yet released) makes it exit, and it is started again.
    let t = std::time::Instant::now();
    let mut held = loop {
        let mut c = Command::new("psql")
            .args(["-X", "-q", "-At", &conninfo])
            .env("PGPASSWORD", "from-env")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::{BufRead, Write};
        let _ = writeln!(c.stdin.as_mut().unwrap(), "SELECT 'held';");
        let mut line = String::new();
        let _ = std::io::BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line);
        if line.trim() == "held" {
            break c;
        }
        let _ = c.wait();
        assert!(t.elapsed().as_secs() < 30, "the held client never connected");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let t = std::time::Instant::now();
    loop {
        let out = psql_as(port, &plain, "SELECT 1");
        if !out.status.success() {
            assert!(String::from_utf8_lossy(&out.stderr).contains("too many connections"), "{}", String::from_utf8_lossy(&out.stderr));
            break;
        }
        assert!(t.elapsed().as_secs() < 30, "the held connection never counted against the limit");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(held.stdin.take());
    held.wait().unwrap();
    let t = std::time::Instant::now();
    while !psql_as(port, &plain, "SELECT 1").status.success() {
        assert!(t.elapsed().as_secs() < 30, "the connection slot was not released");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

fn refused_at(port: u16, login: Login, why: &str) {
    let out = psql_as(port, &login, "SELECT 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.to_lowercase().contains(&why.to_lowercase()), "expected `{why}`, got: {err}");
}

#[test]
fn plot_and_report_draw_what_the_lake_holds() {
    let dir = std::env::temp_dir().join(format!("co2cast-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lake = lake().dir.to_str().unwrap().to_string();
    let plot = |province: &str, sector: &str, out: &Path| {
        Command::new(BIN)
            .args(["plot", "--lake", &lake, "--province", province, "--sector", sector, "--from", "2019-01-01", "--to", "2019-12-31", "--out"])
            .arg(out)
            .output()
            .unwrap()
    };
    let svg = dir.join("gd.svg");
    let out = plot("CN-GD", "power", &svg);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("CN-GD power") && text.contains("<polygon"), "series, band and title");
    assert!(text.contains("inventory (CEADs"), "the inventory year is marked");
    let png = dir.join("cn.png");
    let out = plot("CN", "all", &png);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);

    // Mistakes are messages, not panics.
    for (province, out, why) in [("CN-GD", dir.join("x.gif"), ".png or .svg"), ("CN-XX", dir.join("x.svg"), "no estimates"), ("CN'--", dir.join("x.svg"), "not a province")] {
        let o = plot(province, "all", &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why) && !err.contains("panicked"), "{province}: {err}");
    }

    let report = dir.join("report");
    let out = Command::new(BIN).args(["report", "--lake", &lake, "--year", "2019", "--out"]).arg(&report).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    let lines = query_json("SELECT province, sector, reference, estimate_mtco2 FROM comparison WHERE year = 2019");
    assert!(!lines.is_empty());
    assert_eq!(html.matches("<tr class=").count(), lines.len(), "one table row per province, province-sector and national reference");
    // Three provinces are not the country: the national total meets only their inventory sum.
    assert!(lines.iter().all(|l| l["reference"] == "ceads"), "national references need every province");
    let national = lines.iter().find(|l| l["province"] == "CN" && l["sector"] == "all" && l["reference"] == "ceads").expect("a national comparison line");
    assert!(html.contains(&format!("<b>{:.0} MtCO2</b>", f(&national["estimate_mtco2"]))), "the national estimate is quoted");
    assert!(html.contains("Data as of") && html.contains("thermal_generation 2019-12"), "what the data are as of");
    assert_eq!(html.matches("<svg").count(), 2, "the national series and the provinces chart");
    let csv = std::fs::read_to_string(report.join("comparison.csv")).unwrap();
    assert_eq!(csv.lines().count(), lines.len() + 1);
    let o = Command::new(BIN).args(["report", "--lake", &lake, "--year", "1990", "--out"]).arg(dir.join("none")).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no comparison for 1990"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every `.parquet` file under the lake, with its size and modification time.
fn lake_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    fn walk(d: &Path, out: &mut std::collections::BTreeMap<PathBuf, (u64, std::time::SystemTime)>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let m = e.metadata().unwrap();
                out.insert(p, (m.len(), m.modified().unwrap()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// Statements that write, whatever wraps them (EXPLAIN ANALYZE, a second statement in the
/// same message, a CTE), are refused over the simple protocol (psql) and the extended one
/// (psycopg's prepared statements), and nothing on disk changes.
#[test]
fn no_wrapper_lets_a_statement_write_through_the_sql_endpoint() {
    let s = serve();
    let lake = lake().dir.clone();
    let before = lake_files(&lake);
    let pwned = std::env::temp_dir().join(format!("co2cast-pwned-{}.csv", std::process::id()));
    let inventory_file = lake.join("inventory/data.parquet");
    let attempts = [
        format!("EXPLAIN ANALYZE COPY (SELECT 'pwned' AS a) TO '{}'", pwned.display()),
        format!("EXPLAIN ANALYZE COPY (SELECT province, sector, year, value_mtco2 * 1000 AS value_mtco2, source FROM inventory) TO '{}'", inventory_file.display()),
        "EXPLAIN ANALYZE INSERT INTO inventory SELECT * FROM inventory".to_string(),
        "EXPLAIN INSERT INTO inventory SELECT * FROM inventory".to_string(),
        "SELECT 1; INSERT INTO inventory SELECT * FROM inventory".to_string(),
        format!("SELECT 1; COPY (SELECT 1) TO '{}'", pwned.display()),
        "WITH x AS (SELECT * FROM inventory) INSERT INTO inventory SELECT * FROM x".to_string(),
        "INSERT INTO inventory WITH x AS (SELECT * FROM inventory) SELECT * FROM x".to_string(),
        "PREPARE p AS INSERT INTO inventory SELECT * FROM inventory".to_string(),
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        "SET datafusion.catalog.default_catalog = 'x'".to_string(),
    ];
    for q in &attempts {
        let out = psql(s.1, q);
        assert!(!out.status.success(), "accepted over the simple protocol: {q}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("server closed the connection"), "{q}: {err}");
    }
    // The extended protocol: each statement prepared and executed by psycopg.
    let script = r#"
import json, sys
import psycopg
out = []
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    for q in json.loads(sys.argv[2]):
        try:
            conn.execute(q, prepare=True)
            out.append("accepted")
        except psycopg.Error as e:
            out.append("refused: " + str(e).splitlines()[0])
    # The session still answers, with a bound parameter.
    out.append(str(conn.execute("SELECT count(*) FROM inventory WHERE year = %s", (2018,), prepare=True).fetchone()[0]))
print(json.dumps(out))
"#;
    let conninfo = format!("host=127.0.0.1 port={} user=analyst dbname=co2cast sslmode=disable", s.1);
    let single: Vec<&String> = attempts.iter().filter(|q| !q.starts_with("SELECT 1;")).collect();
    let out = Command::new("python3").arg("-c").arg(script).arg(&conninfo).arg(serde_json::to_string(&single).unwrap()).output().unwrap();
    assert!(out.status.success(), "python3 with psycopg (pip install 'psycopg[binary]'): {}", String::from_utf8_lossy(&out.stderr));
    let verdicts: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    for (q, v) in single.iter().zip(&verdicts) {
        assert!(v.starts_with("refused"), "accepted over the extended protocol: {q}");
    }
    assert!(verdicts.last().unwrap().parse::<u64>().unwrap() > 0, "{verdicts:?}");
    assert!(!pwned.exists(), "a file was written through SQL");
    assert_eq!(lake_files(&lake), before, "the lake changed on disk");
    // Reads still work, EXPLAIN ANALYZE of a query included.
    for q in ["EXPLAIN ANALYZE SELECT count(*) FROM estimates_latest", "WITH x AS (SELECT * FROM inventory) SELECT count(*) FROM x", "SELECT count(*) FROM estimates_as_of('2100-01-01T00:00:00Z')"] {
        let out = psql(s.1, q);
        assert!(out.status.success(), "{q}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// One deep expression used to overflow the SQL thread's stack and abort the process.
#[test]
fn a_deep_expression_is_an_error_and_the_server_lives_on() {
    let s = serve();
    let chain = |n: usize| format!("SELECT {}", vec!["1"; n].join(" + "));
    let deep = psql(s.1, &chain(2_000));
    assert!(!deep.status.success());
    assert!(String::from_utf8_lossy(&deep.stderr).contains("levels deep"), "{}", String::from_utf8_lossy(&deep.stderr));
    let nested = psql(s.1, &format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000)));
    assert!(!nested.status.success());
    // The deepest accepted chain plans and runs.
    let ok = psql(s.1, &chain(co2cast_sql::text_limits::MAX_EXPRESSION_DEPTH / 2));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), (co2cast_sql::text_limits::MAX_EXPRESSION_DEPTH / 2).to_string());
    assert!(psql(s.1, "SELECT 1").status.success());
    let mut server = s;
    assert!(server.0.try_wait().unwrap().is_none(), "the server died");
    // The one-shot command too: an error line, no crash.
    let out = Command::new(BIN).args(["query", "--lake"]).arg(&lake().dir).arg(chain(20_000)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("levels deep") && !err.contains("overflow"), "{err}");
}

/// Sessions keep their settings to themselves, and no client may change engine options.
#[test]
fn settings_are_per_session_and_engine_options_are_not_settable() {
    let s = serve();
    for q in [
        "SET datafusion.catalog.default_catalog = 'x'",
        "SET datafusion.runtime.memory_limit = '20G'",
        "SET datafusion.execution.target_partitions = 64",
        "SET datafusion.catalog.information_schema = false",
        "SET co2cast_lake.anything = 1",
    ] {
        let out = psql(s.1, q);
        assert!(!out.status.success(), "{q} accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be set"), "{q}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A client setting stays in its session: one session changes its time zone and its
    // statement timeout while another, open at the same time, keeps the defaults.
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as a, psycopg.connect(sys.argv[1], autocommit=True) as b:
    a.execute("SET TIME ZONE 'Asia/Tokyo'")
    a.execute("SET statement_timeout = 1")
    ta = a.execute("SHOW TIME ZONE").fetchone()[0]
    tb = b.execute("SHOW TIME ZONE").fetchone()[0]
    sb = b.execute("SHOW statement_timeout").fetchone()[0]
    nb = b.execute("SELECT count(*) FROM estimate_ensemble").fetchone()[0]
    print(ta, tb, sb, nb)
"#;
    let conninfo = format!("host=127.0.0.1 port={} user=analyst dbname=co2cast sslmode=disable", s.1);
    let out = Command::new("python3").arg("-c").arg(script).arg(&conninfo).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let words: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
    assert_eq!(words[0], "Asia/Tokyo");
    assert_ne!(words[1], "Asia/Tokyo", "a SET leaked into another session");
    assert_eq!(words[2], "0", "a statement timeout leaked into another session");
    assert!(words[3].parse::<u64>().unwrap() > 0);
    // Every other client still works, with the lake tables in place.
    assert!(psql(s.1, "SELECT count(*) FROM estimates_latest").status.success());
}

/// Sockets that never log in hold no connection slot and are closed after the login timeout.
#[test]
fn idle_sockets_do_not_lock_clients_out() {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["serve", "--metrics-listen", "127.0.0.1:0", "--lake"])
        .arg(&lake().dir)
        .args(["--sql-port", &port.to_string(), "--max-connections", "4"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut s = Server(child, port);
    let t = std::time::Instant::now();
    while !psql(port, "SELECT 1").status.success() {
        assert!(s.0.try_wait().unwrap().is_none() && t.elapsed().as_secs() < 60, "the SQL endpoint did not come up");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let idle: Vec<std::net::TcpStream> = (0..40).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = std::time::Instant::now();
    for _ in 0..3 {
        let out = psql(port, "SELECT count(*) FROM inventory");
        assert!(out.status.success(), "locked out by idle sockets: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(t.elapsed().as_secs() < 10, "three queries took {:?} behind 40 idle sockets", t.elapsed());
    // The idle sockets are closed once the login timeout (10 s) passes.
    std::thread::sleep(std::time::Duration::from_secs(11));
    let mut closed = 0;
    for mut sock in idle {
        use std::io::Read;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 16];
        if matches!(sock.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 40, "sockets that never logged in must be closed");
    assert!(s.0.try_wait().unwrap().is_none());
}

/// Filters on partition columns, alone and together, count what DuckDB counts on the same
/// files, for every partitioned table and every partition value.
#[test]
fn partition_filters_agree_with_duckdb_on_every_table_and_column() {
    let dir = &lake().dir;
    let tables: Vec<(&str, &[&str])> = co2cast_lake::tables::ALL.iter().filter(|t| !t.partition_columns.is_empty()).map(|t| (t.name, t.partition_columns)).collect();
    // DuckDB's counts per partition value, per table.
    let script = r#"
import json, sys, duckdb
root, tables = sys.argv[1], json.loads(sys.argv[2])
con = duckdb.connect()
out = {}
for t, cols in tables:
    src = f"read_parquet('{root}/{t}/**/*.parquet', hive_partitioning = true)"
    key = ", ".join(cols)
    out[t] = [list(r) for r in con.execute(f"SELECT {key}, count(*) FROM {src} GROUP BY {key} ORDER BY {key}").fetchall()]
print(json.dumps(out))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(dir).arg(serde_json::to_string(&tables).unwrap()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let duck: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = serve();
    let mut checked = 0;
    for (t, cols) in &tables {
        let groups = duck[*t].as_array().unwrap();
        assert!(!groups.is_empty(), "{t}: DuckDB found no partitions");
        // Every combination: all columns pinned, and each column alone.
        let mut queries = Vec::new();
        let mut expected = Vec::new();
        for g in groups {
            let g = g.as_array().unwrap();
            let values: Vec<i64> = g[..cols.len()].iter().map(|v| v.as_i64().unwrap()).collect();
            let all = cols.iter().zip(&values).map(|(c, v)| format!("{c} = {v}")).collect::<Vec<_>>().join(" AND ");
            queries.push(format!("SELECT count(*) FROM {t} WHERE {all};"));
            expected.push(g[cols.len()].as_i64().unwrap());
        }
        for (i, c) in cols.iter().enumerate() {
            let mut by_value: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
            for g in groups {
                let g = g.as_array().unwrap();
                *by_value.entry(g[i].as_i64().unwrap()).or_default() += g[cols.len()].as_i64().unwrap();
            }
            for (v, n) in by_value {
                queries.push(format!("SELECT count(*) FROM {t} WHERE {c} = {v};"));
                expected.push(n);
            }
        }
        let out = psql_script(s.1, &queries.join("\n"));
        assert!(out.status.success(), "{t}: {}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<i64> = String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(got.len(), queries.len());
        for ((q, e), g) in queries.iter().zip(&expected).zip(&got) {
            assert_eq!(g, e, "{q} (DuckDB counts {e})");
        }
        checked += queries.len();
    }
    assert!(checked > 50, "{checked} partition filters checked");
    // The one-shot command answers the issue's query like DuckDB.
    let july = &query_json("SELECT count(*) AS n FROM estimates_latest WHERE year = 2019 AND month = 7")[0];
    let duck_july = duck["estimates_latest"].as_array().unwrap().iter().find(|g| g[0] == 2019 && g[1] == 7).unwrap()[2].as_i64().unwrap();
    assert_eq!(f(&july["n"]) as i64, duck_july);
}

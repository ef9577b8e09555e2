//! The `co2cast` binary end to end: outputs and clean errors.

use std::process::Command;

fn co2cast(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_co2cast")).args(args).output().expect("binary runs")
}

#[test]
fn backtest_json_has_the_summary_keys() {
    let out = co2cast(&["backtest", "--base-year", "2018", "--target-year", "2019", "--json", "--members", "100"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "power_median_abs_pct_err",
        "power_p90_abs_pct_err",
        "total_median_abs_pct_err",
        "total_p90_abs_pct_err",
        "persistence_total_median_abs_pct_err",
        "coverage_95",
        "median_rel_halfwidth_95",
    ] {
        assert!(v["summary"][k].is_number(), "summary.{k} missing");
    }
    let cov = v["summary"]["coverage_95"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&cov));
}

#[test]
fn backtest_table_ends_with_a_summary() {
    let out = co2cast(&["backtest", "--base-year", "2016", "--target-year", "2017", "--members", "60"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("Hebei") && text.contains("TOTAL") && text.contains("coverage_95"), "{text}");
}

#[test]
fn estimate_prints_daily_rows_with_bands() {
    let out = co2cast(&["estimate", "--base-year", "2018", "--year", "2019", "--province", "Hebei", "--sector", "power", "--members", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 365);
    assert!(lines[1].starts_with("2019-01-01,CN-HE,power,"));
    assert!(lines[1].contains(",proxy,1.000,thermal_generation,2018,"));
}

#[test]
fn errors_are_messages_not_panics() {
    for args in [
        vec!["backtest", "--base-year", "2030", "--target-year", "2031"],
        vec!["backtest", "--base-year", "2018", "--target-year", "2019", "--data", "/nonexistent/dir"],
        vec!["estimate", "--base-year", "2019", "--year", "2018"],
        vec!["estimate", "--base-year", "2018", "--year", "2019", "--province", "Atlantis"],
        vec!["backtest", "--base-year", "2018", "--target-year", "2019", "--model-config", "/nonexistent.json"],
        vec!["run", "--no-metrics", "--provinces", "XX", "--exit-when-idle"],
        vec!["run", "--metrics-listen", "not-an-address", "--exit-when-idle"],
        vec!["run", "--no-metrics", "--brokers", "", "--exit-when-idle"],
        vec!["run", "--no-metrics", "--config", "/nonexistent.toml"],
    ] {
        let out = co2cast(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // One line, saying whose error it is.
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with("error (user): "), "{args:?}: {err}");
    }
    // A missing flag is named.
    let out = co2cast(&["report", "--year", "2019"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error (user): ") && err.contains("--out") && err.lines().count() == 1, "{err}");
    // A settings file that does not parse: still one line.
    let bad = std::env::temp_dir().join(format!("co2cast-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "[processor\nbrokers = 1\n").unwrap();
    let out = co2cast(&["run", "--no-metrics", "--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error (user): "), "{err}");
    let out = co2cast(&["backtest", "--base-year", "2018", "--target-year", "2019", "--data", "/nonexistent/dir"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir"));
}

/// SIGTERM (what `docker stop` and Kubernetes send) while the embedded run is still replaying:
/// it stops consuming, publishes and checkpoints what it holds, prints its summary once and
/// exits 0.
#[test]
fn sigterm_mid_replay_ends_cleanly_with_one_summary() {
    let dir = std::env::temp_dir().join(format!("co2cast-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_co2cast"))
        .args(["run", "--no-sql", "--metrics-listen", "127.0.0.1:0", "--quiet", "--members", "20", "--provinces", "CN-HE", "--lake"])
        .arg(dir.join("lake"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Well into the replay (it takes over a minute), not at its end.
    std::thread::sleep(std::time::Duration::from_secs(8));
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
    assert_eq!(all.matches("messages in").count(), 1, "{all}");
    assert!(!all.contains("still consuming"), "{all}");
    let ckpt = std::fs::read_to_string(dir.join("lake/_state/checkpoint.json")).expect("a checkpoint was written");
    assert!(ckpt.contains("\"received\""));
}

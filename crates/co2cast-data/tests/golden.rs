//! Golden test: the backtest on a small committed extract must reproduce its recorded output.

use co2cast_model::backtest::run;
use co2cast_model::calibration::ModelConfig;
use co2cast_model::estimate::EnsembleSettings;
use std::path::Path;

#[test]
fn golden_backtest_matches() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/backtest_small");
    let data = co2cast_data::load_dir(&dir).unwrap();
    let report = run(&data.inventory, &data.proxies, 2017, 2019, &ModelConfig::default(), EnsembleSettings { members: 100, seed: 7 }).unwrap();
    let mut got = serde_json::to_value(&report).unwrap();
    // The version string changes with every release; the numbers must not change silently.
    got["model_version"] = serde_json::Value::Null;
    let path = dir.join("expected_2017_2019.json");
    let expected = expected_at(&path, &got);
    assert_eq!(report.summary.n_rows, 8 * 6);
    if !same(&got, &expected) {
        let g = serde_json::to_string_pretty(&got).unwrap();
        let e = serde_json::to_string_pretty(&expected).unwrap();
        let first = g.lines().zip(e.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "backtest output differs from {} at line {first}:\n  got:      {}\n  expected: {}",
            path.display(),
            g.lines().nth(first).unwrap_or(""),
            e.lines().nth(first).unwrap_or("")
        );
    }
}

/// Structural equality with numbers equal to 1e-12 relative (JSON text round-trips of f64
/// can differ in the last bit).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1e-300)
        }
        (V::Array(x), V::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (V::Object(x), V::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        _ => a == b,
    }
}

#[test]
fn pipeline_default_model_file_is_the_built_in_default() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/estimator-default.json");
    let cfg: ModelConfig = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(cfg, ModelConfig::default(), "{} drifted from ModelConfig::default()", p.display());
    // Config invariants: every sector has a component, industry is split into groups, and
    // uncertainty settings are physically sensible.
    for s in co2cast_model::Sector::ALL {
        assert!(cfg.components.iter().any(|c| c.sector() == s), "{s} has no component");
        let (sd, rho) = cfg.proxy_noise[&s];
        assert!((0.0..0.5).contains(&sd) && (0.0..1.0).contains(&rho), "{s}: proxy noise {sd} {rho}");
        assert!((0.0..0.3).contains(&cfg.nowcast_rel_sd_per_month[&s]));
    }
    assert!(cfg.share_bounds.0 >= -1.0 && cfg.share_bounds.0 <= 0.0 && cfg.share_bounds.1 <= 1.5);
    // Every driver's prior is a share with a stated basis, and a component's priors do not
    // add up to more than all of its emissions.
    for c in &cfg.components {
        for d in &c.drivers {
            assert!((-0.5..=1.0).contains(&d.prior_share) && d.prior_sd > 0.0 && !d.basis.is_empty(), "{}: {d:?}", c.name());
        }
        assert!(c.drivers.iter().map(|d| d.prior_share).sum::<f64>() <= 1.0 + 1e-9, "{}", c.name());
    }
    let unknown = r#"{"components": [], "fit_first_year": 2006, "typo_field": 1}"#;
    assert!(serde_json::from_str::<ModelConfig>(unknown).is_err(), "unknown fields must be rejected");
}

/// Every proxy the model is configured with follows it after calibration on each base year
/// 2016-2019 of the real (bundled) data: no positive prior is fitted away to zero.
#[test]
fn every_configured_proxy_keeps_a_positive_share_on_each_base_year() {
    let data = co2cast_data::embedded().unwrap();
    let cfg = ModelConfig::default();
    for base in 2016..=2019 {
        let cal = co2cast_model::calibration::calibrate(&data.inventory, &data.proxies, base, 1, &cfg).unwrap();
        for (spec, fit) in cfg.components.iter().zip(&cal.fits) {
            for (d, f) in spec.drivers.iter().zip(&fit.drivers) {
                assert!(f.se > 0.0 && f.se.is_finite(), "{base} {}: {f:?}", spec.name());
                if d.prior_share > 0.0 {
                    assert!(f.phi > 0.0, "base {base}, {} / {:?}: share {} (prior {})", spec.name(), d.signals, f.phi, d.prior_share);
                }
            }
        }
    }
}

/// The national report over the shock on the committed small extract (8 provinces, proxies to
/// 2021): recomputed and compared with its recorded output.
#[test]
fn golden_national_report_across_2020_matches() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/backtest_small");
    let data = co2cast_data::load_dir(&dir).unwrap();
    let refs = co2cast_data::embedded().unwrap().references;
    let report = co2cast_model::backtest::national_report(&data.inventory, &data.proxies, &refs, 2019, 2021, &ModelConfig::default(), EnsembleSettings { members: 100, seed: 7 }).unwrap();
    assert_eq!(report.changes.len(), 2);
    assert_eq!(report.monthly_yoy.len(), 12);
    let mut got = serde_json::to_value(&report).unwrap();
    got["model_version"] = serde_json::Value::Null;
    let path = dir.join("expected_national_2019_2021.json");
    let expected = expected_at(&path, &got);
    assert!(same(&got, &expected), "national report differs from {}", path.display());
}

/// The golden file at `path` (rewritten from `got` first when `UPDATE_GOLDEN` is set).
fn expected_at(path: &Path, got: &serde_json::Value) -> serde_json::Value {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(got).unwrap() + "\n").unwrap();
    }
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

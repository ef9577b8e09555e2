use chrono::{DateTime, Duration, Utc};
use co2cast_ingest::watermark::Arrival;
use co2cast_ingest::*;
use co2cast_model::domain::Province;
use co2cast_model::proxy::{Scope, Signal};
use co2cast_model::series::YearMonth;
use proptest::prelude::*;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2019-08-20T00:00:00+08:00").unwrap().with_timezone(&Utc)
}

fn caps() -> PlausibilityCaps {
    PlausibilityCaps::default()
}

/// Validates with `key`, or with the key the contract asks for when `None`.
fn check(topic: &str, key: Option<&str>, json: &str) -> Result<ValidProxy, Reject> {
    let auto = key_for(topic, json);
    // A body that is no JSON object still comes with some key.
    let key = key.map(str::to_string).or(auto).or_else(|| Some("power.generation/?/?".into()));
    validate(topic, key.as_deref().map(str::as_bytes), json.as_bytes(), now(), &caps(), &ValidationRules::default())
}

/// `<signal>/<province>/<period_start>` read off the body (None when it has no such fields).
fn key_for(topic: &str, json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let prefix = topic.strip_prefix("proxy.").unwrap_or(topic);
    Some(format!("{prefix}/{}/{}", v["province"].as_str().unwrap_or(""), v["period_start"].as_str().unwrap_or("")))
}

const POWER: &str = "proxy.power.generation";

fn power(province: &str, start: &str, value: f64, unit: &str) -> String {
    format!(r#"{{"province":"{province}","period_start":"{start}","granularity":"hour","fuel":"thermal","value":{value},"unit":"{unit}","source":"test","revision":0}}"#)
}

#[test]
fn accepts_the_documented_examples() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proxies/examples");
    for t in Topic::ALL {
        let json = std::fs::read_to_string(dir.join(format!("{}.json", t.name()))).unwrap();
        let v = check(t.name(), None, &json).unwrap_or_else(|e| panic!("{}: {e}", t.name()));
        assert!(v.value.is_finite());
    }
}

#[test]
fn converts_units_and_checks_the_key() {
    let v = check(POWER, Some("power.generation/CN-HE/2019-07-04T14:00:00+08:00"), &power("Hebei", "2019-07-04T14:00:00+08:00", 31_520.0, "MWh")).unwrap();
    assert_eq!(v.signal, Signal::ThermalGeneration);
    assert_eq!(v.scope, Scope::Province(Province::Hebei));
    assert!((v.value - 31.52).abs() < 1e-12);
    // The same instant written in UTC is the same key.
    assert!(check(POWER, Some("power.generation/CN-HE/2019-07-04T06:00:00Z"), &power("CN-HE", "2019-07-04T14:00:00+08:00", 1.0, "GWh")).is_ok());
    let e = check(POWER, Some("power.generation/CN-BJ/2019-07-04T14:00:00+08:00"), &power("CN-HE", "2019-07-04T14:00:00+08:00", 1.0, "GWh")).unwrap_err();
    assert_eq!(e.code, RejectCode::KeyMismatch);
}

#[test]
fn every_reject_code_has_a_trigger() {
    let cases: Vec<(RejectCode, &str, String)> = vec![
        (RejectCode::UnknownTopic, "proxy.nope", power("CN-HE", "2019-07-04T14:00:00+08:00", 1.0, "GWh")),
        (RejectCode::MalformedJson, POWER, "{not json".into()),
        (RejectCode::MalformedJson, POWER, r#"{"province":"CN-HE","extra_field":1}"#.into()),
        (RejectCode::MissingTimezone, POWER, power("CN-HE", "2019-07-04T14:00:00", 1.0, "GWh")),
        (RejectCode::BadTimestamp, POWER, power("CN-HE", "yesterday", 1.0, "GWh")),
        (RejectCode::MisalignedPeriod, POWER, power("CN-HE", "2019-07-04T14:30:00+08:00", 1.0, "GWh")),
        (RejectCode::UnknownProvince, POWER, power("Atlantis", "2019-07-04T14:00:00+08:00", 1.0, "GWh")),
        (RejectCode::UnknownUnit, POWER, power("CN-HE", "2019-07-04T14:00:00+08:00", 1.0, "furlongs")),
        (RejectCode::NegativeValue, POWER, power("CN-HE", "2019-07-04T14:00:00+08:00", -5.0, "GWh")),
        (RejectCode::ImplausibleValue, POWER, power("CN-HE", "2019-07-04T14:00:00+08:00", 1.0e6, "GWh")),
        (RejectCode::FuturePeriod, POWER, power("CN-HE", "2019-09-04T14:00:00+08:00", 1.0, "GWh")),
        (RejectCode::TooOld, POWER, power("CN-HE", "1999-07-04T14:00:00+08:00", 1.0, "GWh")),
        (RejectCode::MissingRevision, POWER, r#"{"province":"CN-HE","period_start":"2019-07-04T14:00:00+08:00","granularity":"hour","fuel":"thermal","value":1,"unit":"GWh","source":"t"}"#.into()),
        (RejectCode::UnknownVariant, POWER, r#"{"province":"CN-HE","period_start":"2019-07-04T14:00:00+08:00","granularity":"hour","fuel":"unicorn","value":1,"unit":"GWh","source":"t","revision":0}"#.into()),
        (RejectCode::NotFinite, POWER, r#"{"province":"CN-HE","period_start":"2019-07-04T14:00:00+08:00","granularity":"hour","fuel":"thermal","value":1e400,"unit":"GWh","source":"t","revision":0}"#.into()),
        (RejectCode::InvalidField, POWER, r#"{"province":"CN-HE","period_start":"2019-07-04T14:00:00+08:00","granularity":"hour","fuel":"thermal","value":1,"unit":"GWh","source":"","revision":0}"#.into()),
        (RejectCode::InvalidField, POWER, format!(r#"{{"province":"CN-HE","period_start":"2019-07-04T14:00:00+08:00","granularity":"hour","fuel":"thermal","value":1,"unit":"GWh","source":"{}","revision":0}}"#, "s".repeat(65))),
        (RejectCode::InvalidField, POWER, r#"{"province":"CN-HE","period_start":"2019-07-04T14:00:00+08:00","granularity":"hour","fuel":"thermal","product":"cement","value":1,"unit":"GWh","source":"t","revision":0}"#.into()),
        (RejectCode::UnsupportedGranularity, "proxy.industry.output", r#"{"province":"CN-HE","period_start":"2019-07-04T14:00:00+08:00","granularity":"hour","product":"cement","value_type":"monthly","value":1,"unit":"t","source":"t","revision":0}"#.into()),
        (RejectCode::MessageTooLarge, POWER, format!(r#"{{"province":"CN-HE","period_start":"2019-07-04T14:00:00+08:00","granularity":"hour","fuel":"thermal","value":1,"unit":"GWh","source":"{}","revision":0}}"#, "s".repeat(2 << 20))),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (code, topic, json) in &cases {
        let r = check(topic, None, json);
        match r {
            Err(e) => {
                // 1e400 overflows to infinity in the JSON parser, which serde rejects.
                let ok = e.code == *code || (*code == RejectCode::NotFinite && e.code == RejectCode::MalformedJson);
                assert!(ok, "{json}: expected {code}, got {e}");
                assert!(!e.reason.is_empty());
                seen.insert(*code);
            }
            Ok(v) => panic!("{json} accepted: {v:?}"),
        }
    }
    let e = check(POWER, Some("bad"), &power("CN-HE", "2019-07-04T14:00:00+08:00", 1.0, "GWh")).unwrap_err();
    assert_eq!(e.code, RejectCode::KeyMismatch);
    seen.insert(RejectCode::KeyMismatch);
    // A message without a key is refused, whatever its body.
    let body = power("CN-HE", "2019-07-04T14:00:00+08:00", 1.0, "GWh");
    let e = validate(POWER, None, body.as_bytes(), now(), &caps(), &ValidationRules::default()).unwrap_err();
    assert_eq!(e.code, RejectCode::MissingKey);
    seen.insert(RejectCode::MissingKey);
    for c in RejectCode::ALL {
        // A province stage member gives wrong_partition (co2cast-pipeline's kafka tests).
        assert!(seen.contains(&c) || c == RejectCode::NotFinite || c == RejectCode::WrongPartition, "no test triggers {c}");
    }
}

#[test]
fn tiny_negatives_are_corrected_and_recorded() {
    let v = check(POWER, None, &power("CN-HE", "2019-07-04T14:00:00+08:00", -1e-9, "GWh")).unwrap();
    assert_eq!(v.value, 0.0);
    assert_eq!(v.corrections.len(), 1);
}

#[test]
fn caps_come_from_history_per_province() {
    let mut panel = co2cast_model::proxy::ProxyPanel::new();
    panel.set_monthly(Signal::ThermalGeneration, Scope::Province(Province::Beijing), YearMonth::new(2018, 1), 4_000.0);
    let caps = PlausibilityCaps::from_history(&panel);
    let msg = |v: f64| format!(r#"{{"province":"CN-BJ","period_start":"2019-07-01T00:00:00+08:00","granularity":"month","fuel":"thermal","value":{v},"unit":"GWh","source":"t","revision":0}}"#);
    let key = Some("power.generation/CN-BJ/2019-07-01T00:00:00+08:00".as_bytes());
    let ok = validate(POWER, key, msg(9_000.0).as_bytes(), now(), &caps, &ValidationRules::default());
    assert!(ok.is_ok());
    let bad = validate(POWER, key, msg(50_000.0).as_bytes(), now(), &caps, &ValidationRules::default()).unwrap_err();
    assert_eq!(bad.code, RejectCode::ImplausibleValue);
    assert!(bad.reason.contains("CN-BJ"), "{}", bad.reason);
}

fn valid(value: f64, revision: u32, hour: u32) -> ValidProxy {
    check(POWER, None, &format!(
        r#"{{"province":"CN-HE","period_start":"2019-07-04T{hour:02}:00:00+08:00","granularity":"hour","fuel":"thermal","value":{value},"unit":"GWh","source":"t","revision":{revision}}}"#
    ))
    .unwrap()
}

#[test]
fn duplicates_change_nothing_and_revisions_replace() {
    let mut s = ProxyState::new();
    assert_eq!(s.upsert(&valid(10.0, 0, 3)), Upsert::Inserted);
    assert_eq!(s.upsert(&valid(10.0, 0, 3)), Upsert::Duplicate);
    assert_eq!(s.upsert(&valid(12.0, 1, 3)), Upsert::Revised { previous: 10.0 });
    assert_eq!(s.upsert(&valid(10.0, 0, 3)), Upsert::Stale);
    assert_eq!(s.len(), 1);
}

#[test]
fn complete_hours_make_days_and_months() {
    let mut s = ProxyState::new();
    for h in 0..24 {
        s.upsert(&valid(1.5, 0, h));
    }
    let p = s.to_panel();
    let d = chrono::NaiveDate::from_ymd_opt(2019, 7, 4).unwrap();
    assert_eq!(p.daily(Signal::ThermalGeneration, Scope::Province(Province::Hebei), d), Some(36.0));
    // One day is not a month.
    assert_eq!(p.monthly(Signal::ThermalGeneration, Scope::Province(Province::Hebei), YearMonth::new(2019, 7)), None);
}

#[test]
fn ytd_messages_are_differenced_in_the_panel() {
    let mut s = ProxyState::new();
    for (m, v) in [(2, 300.0), (3, 480.0)] {
        let json = format!(r#"{{"province":"CN-HE","period_start":"2019-{m:02}-01T00:00:00+08:00","granularity":"month","product":"cement","value":{v},"unit":"1e4 t","value_type":"ytd","source":"nbs","revision":0}}"#);
        s.upsert(&check("proxy.industry.output", None, &json).unwrap());
    }
    let p = s.to_panel();
    let scope = Scope::Province(Province::Hebei);
    let jan = p.monthly(Signal::Cement, scope, YearMonth::new(2019, 1)).unwrap();
    let feb = p.monthly(Signal::Cement, scope, YearMonth::new(2019, 2)).unwrap();
    let mar = p.monthly(Signal::Cement, scope, YearMonth::new(2019, 3)).unwrap();
    assert!((jan + feb - 3.0e6).abs() < 1e-6 && jan > feb, "{jan} {feb}");
    assert!((mar - 1.8e6).abs() < 1e-6);
}

proptest! {
    /// Replaying any interleaving of the same messages, with duplicates, ends in the same
    /// state as long as each key's messages keep their order (Kafka's per-key guarantee).
    #[test]
    fn replay_and_duplicates_are_idempotent(
        values in proptest::collection::vec((0u32..6, 0u32..3, 1.0f64..50.0), 1..40),
        dup in proptest::collection::vec(0usize..40, 0..20),
    ) {
        let msgs: Vec<ValidProxy> = values.iter().map(|(h, r, v)| valid(*v, *r, *h)).collect();
        let mut once = ProxyState::new();
        for m in &msgs { once.upsert(m); }
        let mut twice = ProxyState::new();
        for m in &msgs { twice.upsert(m); }
        for m in &msgs { twice.upsert(m); }
        let mut with_dups = ProxyState::new();
        for (i, m) in msgs.iter().enumerate() {
            with_dups.upsert(m);
            if dup.contains(&i) { with_dups.upsert(m); }
        }
        prop_assert_eq!(&once, &with_dups);
        // Replaying the whole log again ends where one pass ended.
        prop_assert_eq!(&once, &twice);
    }
}

#[test]
fn each_signal_keeps_its_own_watermark() {
    let mut w = Watermarks::new(Duration::hours(2));
    let t0 = now();
    // Period ends are whole seconds.
    let event = |h: i64| DateTime::from_timestamp(t0.timestamp(), 0).unwrap() - Duration::days(30) + Duration::hours(h);
    let cement = watermark::stream_key(Signal::Cement, Granularity::Month);
    let power = watermark::stream_key(Signal::ThermalGeneration, Granularity::Hour);
    w.observe(&cement, event(0).timestamp(), t0);
    for h in 1..=48 {
        w.observe(&power, event(h).timestamp(), t0 + Duration::minutes(h));
    }
    let later = t0 + Duration::minutes(48);
    // A silent monthly series does not hold back the hourly one.
    assert_eq!(w.watermark(&power), Some(event(48) - Duration::hours(2)));
    assert_eq!(w.watermark(&cement), Some(event(0) - Duration::hours(2)));
    // A late power hour is flagged, not dropped.
    assert!(matches!(w.observe(&power, event(10).timestamp(), later), Arrival::Late { .. }));
    // A monthly release of the same signal is its own stream, not late.
    let monthly = watermark::stream_key(Signal::ThermalGeneration, Granularity::Month);
    assert_eq!(w.observe(&monthly, event(-100).timestamp(), later), Arrival::OnTime);
}

//! The message contracts say one thing in two places: the JSON Schemas in
//! `proxies/schemas/` (what producers read) and the validator (what co2cast enforces). These
//! tests hold them to the same verdicts, with the reference JSON Schema validator
//! (python-jsonschema, draft 2020-12, formats checked) as the judge of the schemas:
//!
//! * every example is valid for both;
//! * every counter-example in `proxies/counterexamples/` is rejected by the validator with
//!   its stated code, and is invalid for the schema unless it breaks a rule about meaning
//!   that no schema can state (`"schema": "valid"`: a missing key, an unknown province, a
//!   misaligned or future period, an implausible value);
//! * systematic mutations of every example (each field removed, or set to every type, an
//!   empty or overlong string, and every enum value any topic uses) get the same verdict
//!   from both, again save the rules about meaning.

use chrono::{DateTime, Utc};
use co2cast_ingest::{PlausibilityCaps, RejectCode, Topic, ValidationRules, validate};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Rejections about meaning: a message the schema accepts may still get one of these.
const RULES_ABOUT_MEANING: [RejectCode; 7] = [
    RejectCode::MissingKey,
    RejectCode::UnknownProvince,
    RejectCode::MisalignedPeriod,
    RejectCode::NegativeValue,
    RejectCode::ImplausibleValue,
    RejectCode::FuturePeriod,
    RejectCode::TooOld,
];

fn proxies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proxies")
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2019-08-20T00:00:00+08:00").unwrap().with_timezone(&Utc)
}

/// The key the contract asks for, read off the body (whatever its fields hold).
fn key_for(topic: Topic, m: &Value) -> String {
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    format!("{}/{}/{}", topic.key_prefix(), s(&m["province"]), s(&m["period_start"]))
}

/// The validator's verdict on a message with `key`.
fn verdict(topic: Topic, key: Option<&str>, body: &str) -> Result<(), RejectCode> {
    validate(topic.name(), key.map(str::as_bytes), body.as_bytes(), now(), &PlausibilityCaps::default(), &ValidationRules::default()).map(|_| ()).map_err(|e| e.code)
}

/// The schema's verdict on each `(topic, message)`: `Ok` or the first error.
fn schema_verdicts(cases: &[(Topic, Value)]) -> Vec<Result<(), String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema_verdicts.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(proxies_dir().join("schemas"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the reference JSON Schema validator");
    let mut input = String::new();
    for (t, m) in cases {
        input.push_str(&json!({"topic": t.name(), "message": m}).to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "schema validator failed (the README's test command installs python-jsonschema): {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Result<(), String>> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| if l == "valid" { Ok(()) } else { Err(l.to_string()) }).collect();
    assert_eq!(lines.len(), cases.len());
    lines
}

fn example(t: Topic) -> Value {
    serde_json::from_str(&std::fs::read_to_string(proxies_dir().join(format!("examples/{}.json", t.name()))).unwrap()).unwrap()
}

#[test]
fn examples_and_counterexamples_agree_with_the_schemas() {
    let mut cases: Vec<(Topic, Value)> = Vec::new();
    let mut expected: Vec<(Option<String>, Result<(), (RejectCode, bool)>, String)> = Vec::new();
    let mut codes_seen = BTreeSet::new();
    for t in Topic::ALL {
        let m = example(t);
        expected.push((Some(key_for(t, &m)), Ok(()), format!("{} example", t.name())));
        cases.push((t, m));
        let path = proxies_dir().join(format!("counterexamples/{}.json", t.name()));
        let list: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(list.len() >= 15, "{}: too few counter-examples", path.display());
        for c in list {
            let mut m = c["message"].clone();
            if let Some(n) = c["fill_source_to_bytes"].as_u64() {
                let base = m.to_string().len();
                m["source"] = json!("x".repeat(n as usize - base + 1));
            }
            let key = match c.get("key") {
                Some(Value::Null) => None,
                Some(k) => Some(k.as_str().unwrap().to_string()),
                None => Some(key_for(t, &m)),
            };
            let code = RejectCode::ALL.into_iter().find(|x| x.as_str() == c["reject"].as_str().unwrap()).unwrap_or_else(|| panic!("unknown code in {c}"));
            codes_seen.insert(code);
            let schema_valid = match c["schema"].as_str() {
                Some("valid") => true,
                Some("invalid") => false,
                other => panic!("`schema` must be valid or invalid, got {other:?}"),
            };
            if schema_valid {
                assert!(RULES_ABOUT_MEANING.contains(&code), "{}: a schema-valid counter-example must break a rule about meaning, not {code}", c["why"]);
            }
            expected.push((key, Err((code, schema_valid)), format!("{}: {}", t.name(), c["why"].as_str().unwrap())));
            cases.push((t, m));
        }
    }
    let schema = schema_verdicts(&cases);
    for (((t, m), (key, want, why)), schema) in cases.iter().zip(&expected).zip(&schema) {
        let got = verdict(*t, key.as_deref(), &m.to_string());
        match want {
            Ok(()) => {
                assert_eq!(got, Ok(()), "{why}: the validator rejects it");
                assert_eq!(schema, &Ok(()), "{why}: the schema rejects it");
            }
            Err((code, schema_valid)) => {
                assert_eq!(got, Err(*code), "{why}");
                assert_eq!(schema.is_ok(), *schema_valid, "{why}: schema says {schema:?}");
            }
        }
    }
    // The counter-examples exercise the contract's own codes (those not about meaning).
    for c in [RejectCode::MissingKey, RejectCode::InvalidField, RejectCode::UnsupportedGranularity, RejectCode::MessageTooLarge, RejectCode::MalformedJson, RejectCode::UnknownUnit, RejectCode::UnknownVariant, RejectCode::MissingRevision] {
        assert!(codes_seen.contains(&c), "no counter-example for {c}");
    }
}

/// Every value any schema allows for a field, plus values of every JSON type.
fn probe_values(field: &str) -> Vec<Value> {
    let mut v = vec![Value::Null, json!(""), json!("x".repeat(65)), json!("x".repeat(41)), json!(1), json!(1.5), json!(-1), json!(true), json!([]), json!({})];
    for t in Topic::ALL {
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(proxies_dir().join(format!("schemas/{}.schema.json", t.name()))).unwrap()).unwrap();
        if let Some(values) = schema["properties"][field]["enum"].as_array() {
            v.extend(values.iter().cloned());
        }
    }
    match field {
        "revision" => v.extend([json!(0), json!(3.0), json!(4_294_967_295u64), json!(4_294_967_296u64)]),
        "period_start" | "observed_at" => {
            v.extend([json!("2019-07-04T06:00:00Z"), json!("2019-07-04T00:00:00+08:00"), json!("2019-07-04T00:00:00"), json!("2019-07-04"), json!("not a time")])
        }
        "province" => v.extend([json!("CN"), json!("Hebei"), json!("河北"), json!("130000"), json!("C")]),
        "value" => v.extend([json!(0), json!(12.5), json!("12")]),
        _ => {}
    }
    v.sort_by_key(|x| x.to_string());
    v.dedup();
    v
}

#[test]
fn mutations_of_every_example_get_the_same_verdict_from_schema_and_validator() {
    let fields = [
        "province", "period_start", "granularity", "value", "unit", "source", "revision", "observed_at", "fuel", "product", "value_type", "kind", "city", "colour",
    ];
    let mut cases: Vec<(Topic, Value)> = Vec::new();
    for t in Topic::ALL {
        let base = example(t);
        for f in fields {
            if base.get(f).is_some() {
                let mut m = base.clone();
                m.as_object_mut().unwrap().remove(f);
                cases.push((t, m));
            }
            for v in probe_values(f) {
                let mut m = base.clone();
                m[f] = v;
                cases.push((t, m));
            }
        }
    }
    let schema = schema_verdicts(&cases);
    let mut disagreements = Vec::new();
    for ((t, m), s) in cases.iter().zip(&schema) {
        let got = verdict(*t, Some(&key_for(*t, m)), &m.to_string());
        let agree = match (s, got) {
            (Ok(()), Ok(())) | (Err(_), Err(_)) => true,
            (Ok(()), Err(code)) => RULES_ABOUT_MEANING.contains(&code),
            (Err(_), Ok(())) => false,
        };
        if !agree {
            disagreements.push(format!("{} {m}: schema {s:?}, validator {got:?}", t.name()));
        }
    }
    assert!(cases.len() > 500, "{} mutations", cases.len());
    assert!(disagreements.is_empty(), "{} of {} mutations disagree:\n{}", disagreements.len(), cases.len(), disagreements.join("\n"));
}

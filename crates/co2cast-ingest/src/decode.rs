//! Decoding of proxy message bodies.
//!
//! The contract is a flat JSON object of strings, numbers and nulls. A scanner for exactly
//! that form decodes the common case several times faster than serde's derived visitor (JSON
//! decoding was half of the ingest path). Anything outside the form — escapes, nesting,
//! duplicate, unknown or missing fields, numbers out of range — goes to `serde_json`, so what
//! is accepted and every error message stay serde's. A property test checks that the scanner,
//! wherever it answers, gives what serde gives.

use crate::message::{Granularity, RawProxyMessage};
use std::borrow::Cow;

/// Decodes a message body: the scanner first, `serde_json` for everything it declines.
pub fn decode(payload: &[u8]) -> Result<RawProxyMessage<'_>, serde_json::Error> {
    match scan(payload) {
        Some(m) => Ok(m),
        None => serde_json::from_slice(payload),
    }
}

/// The scanner alone: `None` means "not the plain form; ask serde".
pub fn scan(payload: &[u8]) -> Option<RawProxyMessage<'_>> {
    // UTF-8 is checked where it can occur: inside strings (see `string`). Everything else
    // must match ASCII grammar bytes, so a stray non-ASCII byte there declines the body.
    let b = payload;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut f = Fields::default();
    let mut seen = 0u16;
    loop {
        let (key, j) = string(b, i)?;
        i = skip_ws(b, j);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let field = Field::of(key)?;
        let bit = 1u16 << field as u16;
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        i = match field {
            Field::Province => set(&mut f.province, string(b, i)?),
            Field::PeriodStart => set(&mut f.period_start, string(b, i)?),
            Field::Unit => set(&mut f.unit, string(b, i)?),
            Field::Source => set(&mut f.source, string(b, i)?),
            Field::Granularity => {
                let (s, j) = string(b, i)?;
                f.granularity = Some(match s {
                    "hour" => Granularity::Hour,
                    "day" => Granularity::Day,
                    "month" => Granularity::Month,
                    "year" => Granularity::Year,
                    _ => return None,
                });
                j
            }
            Field::Value => {
                let (v, j) = number(b, i)?;
                f.value = Some(v);
                j
            }
            Field::Revision => match null(b, i) {
                Some(j) => j,
                None => {
                    let (r, j) = unsigned(b, i)?;
                    f.revision = Some(r);
                    j
                }
            },
            Field::ObservedAt => optional(&mut f.observed_at, b, i)?,
            // Topic fields are strings when present (a null is serde's error to give).
            Field::Fuel => set(&mut f.fuel, string(b, i)?),
            Field::Product => set(&mut f.product, string(b, i)?),
            Field::ValueType => set(&mut f.value_type, string(b, i)?),
            Field::Kind => set(&mut f.kind, string(b, i)?),
            Field::City => set(&mut f.city, string(b, i)?),
        };
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => {
                i += 1;
                break;
            }
            _ => return None,
        }
    }
    if skip_ws(b, i) != b.len() {
        return None;
    }
    Some(RawProxyMessage {
        province: Cow::Borrowed(f.province?),
        period_start: Cow::Borrowed(f.period_start?),
        granularity: f.granularity?,
        value: f.value?,
        unit: Cow::Borrowed(f.unit?),
        source: Cow::Borrowed(f.source?),
        revision: f.revision,
        observed_at: f.observed_at.map(Cow::Borrowed),
        fuel: f.fuel.map(Cow::Borrowed),
        product: f.product.map(Cow::Borrowed),
        value_type: f.value_type.map(Cow::Borrowed),
        kind: f.kind.map(Cow::Borrowed),
        city: f.city.map(Cow::Borrowed),
    })
}

#[derive(Default)]
struct Fields<'a> {
    province: Option<&'a str>,
    period_start: Option<&'a str>,
    granularity: Option<Granularity>,
    value: Option<f64>,
    unit: Option<&'a str>,
    source: Option<&'a str>,
    revision: Option<u32>,
    observed_at: Option<&'a str>,
    fuel: Option<&'a str>,
    product: Option<&'a str>,
    value_type: Option<&'a str>,
    kind: Option<&'a str>,
    city: Option<&'a str>,
}

#[derive(Clone, Copy)]
enum Field {
    Province,
    PeriodStart,
    Granularity,
    Value,
    Unit,
    Source,
    Revision,
    ObservedAt,
    Fuel,
    Product,
    ValueType,
    Kind,
    City,
}

impl Field {
    /// The fields of [`RawProxyMessage`]; an unknown one is serde's to reject. Length and
    /// first byte tell the candidates apart, so each key costs one fixed-length compare.
    fn of(key: &str) -> Option<Field> {
        let k = key.as_bytes();
        // Comparing with arrays (not slices) lets the compiler compare fixed-width words.
        Some(match (k.len(), *k.first()?) {
            (8, b'p') if k == b"province" => Field::Province,
            (12, b'p') if k == b"period_start" => Field::PeriodStart,
            (11, b'g') if k == b"granularity" => Field::Granularity,
            (5, b'v') if k == b"value" => Field::Value,
            (4, b'u') if k == b"unit" => Field::Unit,
            (6, b's') if k == b"source" => Field::Source,
            (8, b'r') if k == b"revision" => Field::Revision,
            (11, b'o') if k == b"observed_at" => Field::ObservedAt,
            (4, b'f') if k == b"fuel" => Field::Fuel,
            (7, b'p') if k == b"product" => Field::Product,
            (10, b'v') if k == b"value_type" => Field::ValueType,
            (4, b'k') if k == b"kind" => Field::Kind,
            (4, b'c') if k == b"city" => Field::City,
            _ => return None,
        })
    }
}

fn set<'a>(slot: &mut Option<&'a str>, (s, j): (&'a str, usize)) -> usize {
    *slot = Some(s);
    j
}

/// A string or `null` for an optional field.
fn optional<'a>(slot: &mut Option<&'a str>, b: &'a [u8], i: usize) -> Option<usize> {
    match null(b, i) {
        Some(j) => Some(j),
        None => Some(set(slot, string(b, i)?)),
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

fn null(b: &[u8], i: usize) -> Option<usize> {
    b.get(i..i + 4).filter(|w| *w == b"null").map(|_| i + 4)
}

/// A string without escapes or control characters, and the index after its closing quote;
/// `None` also for invalid UTF-8. Eight bytes at a time while they are plain ASCII: strings
/// are most of a body's bytes.
#[inline(always)]
fn string(b: &[u8], i: usize) -> Option<(&str, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    while let Some(chunk) = b.get(j..j + 8) {
        let flags = special_bytes(u64::from_le_bytes(chunk.try_into().ok()?));
        if flags != 0 {
            j += flags.trailing_zeros() as usize / 8;
            break;
        }
        j += 8;
    }
    let mut ascii = true;
    loop {
        match *b.get(j)? {
            b'"' => break,
            b'\\' | 0..=0x1f => return None,
            c => {
                ascii &= c.is_ascii();
                j += 1;
            }
        }
    }
    let raw = &b[start..j];
    let s = if ascii {
        // SAFETY: every byte of `raw` was checked to be ASCII, by word (`special_bytes` flags
        // high bytes) or in the byte loop, and ASCII is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(raw) }
    } else {
        std::str::from_utf8(raw).ok()?
    };
    Some((s, j + 1))
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Flags (high bit of the byte) the bytes of a little-endian word that end the ASCII run of
/// a plain string: `"`, `\`, below 0x20, or non-ASCII. A borrow can flag a byte above a
/// flagged one falsely, never below, so the lowest flag is exact — the only one [`string`]
/// reads.
fn special_bytes(w: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | below_space | (w & HIGHS)
}

/// The extent of a JSON number at `i` (grammar checked), and the index after it.
fn number_extent(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let digits = |mut j: usize| {
        let s = j;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        (j > s).then_some(j)
    };
    let mut j = i;
    if b.get(j) == Some(&b'-') {
        j += 1;
    }
    let int_start = j;
    j = digits(j)?;
    if b[int_start] == b'0' && j - int_start > 1 {
        return None;
    }
    let mut integer = true;
    if b.get(j) == Some(&b'.') {
        j = digits(j + 1)?;
        integer = false;
    }
    if let Some(b'e' | b'E') = b.get(j) {
        j += 1;
        if let Some(b'+' | b'-') = b.get(j) {
            j += 1;
        }
        j = digits(j)?;
        integer = false;
    }
    Some((j, integer))
}

/// A number's text, which [`number_extent`] admitted: digits, `-`, `+`, `.`, `e`, `E`.
fn ascii(number: &[u8]) -> &str {
    debug_assert!(number.is_ascii());
    // SAFETY: callers pass a slice `number_extent` accepted, which holds only the ASCII bytes
    // above; ASCII is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(number) }
}

/// A finite number. `str::parse` rounds correctly, as serde_json does with `float_roundtrip`.
fn number(b: &[u8], i: usize) -> Option<(f64, usize)> {
    let (j, _) = number_extent(b, i)?;
    let v: f64 = ascii(&b[i..j]).parse().ok()?;
    v.is_finite().then_some((v, j))
}

/// A non-negative integer literal that fits a `u32`.
fn unsigned(b: &[u8], i: usize) -> Option<(u32, usize)> {
    let (j, integer) = number_extent(b, i)?;
    if !integer || b[i] == b'-' {
        return None;
    }
    Some((ascii(&b[i..j]).parse().ok()?, j))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    const PLAIN: &str = r#"{"province":"CN-GD","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","fuel":"thermal","value":12.5,"unit":"GWh","source":"simulate","revision":0}"#;

    #[test]
    fn the_contract_form_is_scanned_and_equals_serde() {
        let m = scan(PLAIN.as_bytes()).expect("the plain form is the scanner's");
        assert_eq!(m, serde_json::from_str::<RawProxyMessage>(PLAIN).unwrap());
        assert_eq!(m.value, 12.5);
        assert_eq!(m.fuel.as_deref(), Some("thermal"));
    }

    #[test]
    fn numbers_decode_to_the_same_bits_as_serde() {
        for v in ["-0", "-0.0", "0", "1", "-1", "18446744073709551615", "18446744073709551616", "-9223372036854775809", "0.1", "2.5e-3", "1E5", "4.9406564584124654e-324", "1.7976931348623157e308", "123456789012345678901234567890"] {
            let body = PLAIN.replace("12.5", v);
            let m = scan(body.as_bytes()).unwrap_or_else(|| panic!("{v} should be scanned"));
            let theirs = serde_json::from_str::<RawProxyMessage>(&body).unwrap();
            assert_eq!(m.value.to_bits(), theirs.value.to_bits(), "{v}: {} vs {}", m.value, theirs.value);
        }
    }

    #[test]
    fn non_ascii_strings_are_scanned_and_invalid_utf8_is_left_to_serde() {
        let body = PLAIN.replace("simulate", "国家统计局 — NBS");
        let m = scan(body.as_bytes()).expect("valid UTF-8 in a string is the scanner's");
        assert_eq!(m, serde_json::from_str::<RawProxyMessage>(&body).unwrap());
        for bad in [&[0xe5u8, 0x9b][..], &[0xff], &[0xc0, 0xaf], &[0xed, 0xa0, 0x80]] {
            for at in [PLAIN.find("simulate").unwrap(), PLAIN.find("GWh").unwrap() + 1] {
                let mut body = PLAIN.as_bytes().to_vec();
                body.splice(at..at, bad.iter().copied());
                assert!(scan(&body).is_none());
                let ours = decode(&body).map_err(|e| e.to_string());
                let theirs = serde_json::from_slice::<RawProxyMessage>(&body).map_err(|e| e.to_string());
                assert_eq!(ours, theirs);
            }
        }
        // Outside strings a non-ASCII byte is never grammar.
        let body = PLAIN.replacen(',', ",\u{a0}", 1);
        assert!(scan(body.as_bytes()).is_none());
    }

    #[test]
    fn everything_else_is_left_to_serde() {
        for body in [
            r#"{"province":"CN-\u0047D","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","value":1,"unit":"GWh","source":"s","revision":0}"#,
            r#"{"province":"CN-GD","province":"CN-GX","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","value":1,"unit":"GWh","source":"s"}"#,
            r#"{"province":"CN-GD","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","value":1,"unit":"GWh","source":"s","extra":1}"#,
            r#"{"province":"CN-GD","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","value":1e999,"unit":"GWh","source":"s"}"#,
            r#"{"province":"CN-GD","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","value":1,"unit":"GWh","source":"s","revision":-1}"#,
            r#"{"province":"CN-GD","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","value":1,"unit":"GWh","source":"s","revision":4294967296}"#,
            r#"{"province":"CN-GD","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","value":01,"unit":"GWh","source":"s"}"#,
            r#"{"province":"CN-GD","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","value":1,"unit":"GWh"}"#,
            r#"{"province":"CN-GD","period_start":"2019-03-01T00:00:00+08:00","granularity":"hour","value":1,"unit":"GWh","source":"s"} x"#,
            r#"[1]"#,
            "",
        ] {
            assert!(scan(body.as_bytes()).is_none(), "{body}");
            // decode() then answers exactly as serde does.
            let ours = decode(body.as_bytes()).map_err(|e| e.to_string());
            let theirs = serde_json::from_str::<RawProxyMessage>(body).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{body}");
        }
    }

    /// JSON values a field may hold in a test body, valid for the field or not.
    fn value() -> impl Strategy<Value = String> {
        // Weighted as if each literal were an arm of its own.
        prop_oneof![
            1 => "[a-zA-Z0-9 :+.\\-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            12 => prop::sample::select(vec![
                r#""hour""#, r#""day""#, r#""month""#, r#""Hour""#, r#""a\"b""#, r#""\u00e9""#, "\"煤电\"", "\"tab\there\"", "null", "true",
                "[1,2]", r#"{"a":1}"#,
            ])
            .prop_map(str::to_string),
            1 => any::<f64>().prop_map(|v| format!("{v}")),
            1 => any::<f64>().prop_map(|v| format!("{v:e}")),
            1 => any::<u64>().prop_map(|v| format!("{v}")),
            1 => any::<i64>().prop_map(|v| format!("{v}")),
            1 => "-?[0-9]{1,25}(\\.[0-9]{0,20})?([eE][+-]?[0-9]{1,4})?".prop_map(String::from),
            3 => prop::sample::select(vec!["-0", "1.", ".5"]).prop_map(str::to_string),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "province", "period_start", "granularity", "value", "unit", "source", "revision", "observed_at", "fuel", "product",
            "value_type", "kind", "city", "extra",
        ])
    }

    fn ws() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "", "", " ", "\n", "\t ", "\r\n"]).prop_map(str::to_string)
    }

    /// A body with the six required fields (plausible values), then random extra members.
    fn body() -> impl Strategy<Value = String> {
        let required = (any::<f64>(), any::<bool>(), 0u64..5_000_000_000).prop_map(|(v, with_rev, rev)| {
            let mut m = vec![
                ("province".to_string(), "\"CN-GD\"".to_string()),
                ("period_start".to_string(), "\"2019-03-01T00:00:00+08:00\"".to_string()),
                ("granularity".to_string(), "\"day\"".to_string()),
                ("value".to_string(), format!("{v}")),
                ("unit".to_string(), "\"GWh\"".to_string()),
                ("source".to_string(), "\"s\"".to_string()),
            ];
            if with_rev {
                m.push(("revision".to_string(), rev.to_string()));
            }
            m
        });
        let extra = prop::collection::vec((key(), value()), 0..4);
        (required, extra, prop::collection::vec(ws(), 40), any::<prop::sample::Index>(), prop::option::of("[ x}\\]]{1,2}"))
            .prop_map(|(mut members, extra, spaces, shuffle, trailing)| {
                for (k, v) in extra {
                    members.push((k.to_string(), v));
                }
                let n = members.len();
                members.rotate_left(shuffle.index(n));
                let mut s = format!("{}{{", spaces[0]);
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(&format!("{}\"{k}\"{}:{}{v}{}", spaces[(4 * i + 1) % 40], spaces[(4 * i + 2) % 40], spaces[(4 * i + 3) % 40], spaces[(4 * i + 4) % 40]));
                }
                s.push('}');
                s.push_str(&spaces[39]);
                if let Some(t) = trailing {
                    s.push_str(&t);
                }
                s
            })
    }

    /// The property below is only worth something if its bodies reach both paths.
    #[test]
    fn generated_bodies_reach_the_scanner_and_serde() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut scanned, mut declined_but_valid, n) = (0, 0, 2000);
        for _ in 0..n {
            let body = body().new_tree(&mut runner).unwrap().current();
            match (scan(body.as_bytes()).is_some(), serde_json::from_str::<RawProxyMessage>(&body).is_ok()) {
                (true, _) => scanned += 1,
                (false, true) => declined_but_valid += 1,
                _ => {}
            }
        }
        assert!(scanned > n / 20 && declined_but_valid >= 10, "scanned {scanned}, declined but valid {declined_but_valid} of {n}");
    }

    /// The byte-at-a-time definition of [`string`].
    fn string_reference(text: &str, i: usize) -> Option<(&str, usize)> {
        let b = text.as_bytes();
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let mut j = i + 1;
        loop {
            match *b.get(j)? {
                b'"' => return Some((&text[i + 1..j], j + 1)),
                b'\\' | 0..=0x1f => return None,
                _ => j += 1,
            }
        }
    }

    #[test]
    fn every_special_byte_is_found_at_every_position() {
        for special in [b'"', b'\\', 0u8, 0x1f, b'\n'] {
            for len in 0..20 {
                for at in 0..len {
                    let mut body = vec![b'a'; len];
                    body[at] = special;
                    // Ordinary bytes next to the boundaries of the checks, then a quote.
                    let mut text = vec![b'"'];
                    text.extend(body.iter().map(|&c| if c == b'a' { [b'!', b'#', b' ', b'[', b']', 0x7f][at % 6] } else { c }));
                    text.push(b'"');
                    let text = String::from_utf8(text).unwrap();
                    assert_eq!(string(text.as_bytes(), 0), string_reference(&text, 0), "{text:?}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The word-at-a-time scan finds what the byte loop finds.
        #[test]
        fn string_scan_agrees_with_the_byte_loop(s in "\\PC{0,40}", controls in prop::collection::vec((0usize..48, prop::sample::select(vec!['"', '\\', '\u{1}', '\u{1f}', '\t'])), 0..3)) {
            let mut chars: Vec<char> = s.chars().collect();
            for (at, c) in controls {
                chars.insert(at.min(chars.len()), c);
            }
            let text: String = std::iter::once('"').chain(chars).chain(std::iter::once('"')).collect();
            prop_assert_eq!(string(text.as_bytes(), 0), string_reference(&text, 0));
        }

        /// Wherever the scanner answers, serde answers the same; and decode() always answers
        /// as serde does.
        #[test]
        fn scanner_agrees_with_serde(body in body()) {
            let theirs = serde_json::from_str::<RawProxyMessage>(&body);
            if let Some(m) = scan(body.as_bytes()) {
                prop_assert_eq!(Ok(&m), theirs.as_ref().map_err(|e| e.to_string()));
                // Bit-for-bit, not just ==: -0.0 and rounding would hide in ==.
                prop_assert_eq!(m.value.to_bits(), theirs.as_ref().unwrap().value.to_bits());
            }
            let ours = decode(body.as_bytes()).map_err(|e| e.to_string());
            prop_assert_eq!(ours, theirs.map_err(|e| e.to_string()));
        }

        /// Arbitrary bytes: no panic, and the same verdict as serde.
        #[test]
        fn arbitrary_bytes_match_serde(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let ours = decode(&bytes).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<RawProxyMessage>(&bytes).map_err(|e| e.to_string());
            prop_assert_eq!(ours, theirs);
        }
    }
}

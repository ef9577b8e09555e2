//! China's 31 provincial-level divisions (mainland; Hong Kong, Macao and Taiwan are out of scope).
//!
//! Codes: NBS administrative division code, ISO 3166-2:CN. CEADs covers 30 of them (no Tibet,
//! which has no published energy balance).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Regional power grid used for factor fallbacks (province → grid region → national).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridRegion {
    North,
    Northeast,
    East,
    Central,
    Northwest,
    South,
    Southwest,
}

impl GridRegion {
    pub const ALL: [GridRegion; 7] = [
        GridRegion::North,
        GridRegion::Northeast,
        GridRegion::East,
        GridRegion::Central,
        GridRegion::Northwest,
        GridRegion::South,
        GridRegion::Southwest,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            GridRegion::North => "north",
            GridRegion::Northeast => "northeast",
            GridRegion::East => "east",
            GridRegion::Central => "central",
            GridRegion::Northwest => "northwest",
            GridRegion::South => "south",
            GridRegion::Southwest => "southwest",
        }
    }
}

macro_rules! provinces {
    ($( $v:ident => ($nbs:expr, $iso:expr, $en:expr, $zh:expr, $grid:ident, $heat:expr) ),+ $(,)?) => {
        /// A provincial-level division. `Ord` follows the NBS code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Province { $($v),+ }

        impl Province {
            pub const ALL: [Province; 31] = [$(Province::$v),+];
            /// NBS six-digit administrative division code.
            pub fn nbs_code(self) -> u32 { match self { $(Province::$v => $nbs),+ } }
            /// ISO 3166-2:CN code, e.g. `CN-BJ`.
            pub fn iso_code(self) -> &'static str { match self { $(Province::$v => $iso),+ } }
            /// English name as CEADs and Carbon Monitor spell it (no spaces).
            pub fn name_en(self) -> &'static str { match self { $(Province::$v => $en),+ } }
            /// Official Chinese name.
            pub fn name_zh(self) -> &'static str { match self { $(Province::$v => $zh),+ } }
            pub fn grid_region(self) -> GridRegion { match self { $(Province::$v => GridRegion::$grid),+ } }
            /// Has a statutory winter district-heating season (north of the Qinling–Huai line).
            pub fn has_district_heating(self) -> bool { match self { $(Province::$v => $heat),+ } }
        }
    };
}

provinces! {
    Beijing => (110000, "CN-BJ", "Beijing", "北京市", North, true),
    Tianjin => (120000, "CN-TJ", "Tianjin", "天津市", North, true),
    Hebei => (130000, "CN-HE", "Hebei", "河北省", North, true),
    Shanxi => (140000, "CN-SX", "Shanxi", "山西省", North, true),
    InnerMongolia => (150000, "CN-NM", "InnerMongolia", "内蒙古自治区", North, true),
    Liaoning => (210000, "CN-LN", "Liaoning", "辽宁省", Northeast, true),
    Jilin => (220000, "CN-JL", "Jilin", "吉林省", Northeast, true),
    Heilongjiang => (230000, "CN-HL", "Heilongjiang", "黑龙江省", Northeast, true),
    Shanghai => (310000, "CN-SH", "Shanghai", "上海市", East, false),
    Jiangsu => (320000, "CN-JS", "Jiangsu", "江苏省", East, false),
    Zhejiang => (330000, "CN-ZJ", "Zhejiang", "浙江省", East, false),
    Anhui => (340000, "CN-AH", "Anhui", "安徽省", East, false),
    Fujian => (350000, "CN-FJ", "Fujian", "福建省", East, false),
    Jiangxi => (360000, "CN-JX", "Jiangxi", "江西省", Central, false),
    Shandong => (370000, "CN-SD", "Shandong", "山东省", North, true),
    Henan => (410000, "CN-HA", "Henan", "河南省", Central, true),
    Hubei => (420000, "CN-HB", "Hubei", "湖北省", Central, false),
    Hunan => (430000, "CN-HN", "Hunan", "湖南省", Central, false),
    Guangdong => (440000, "CN-GD", "Guangdong", "广东省", South, false),
    Guangxi => (450000, "CN-GX", "Guangxi", "广西壮族自治区", South, false),
    Hainan => (460000, "CN-HI", "Hainan", "海南省", South, false),
    Chongqing => (500000, "CN-CQ", "Chongqing", "重庆市", Southwest, false),
    Sichuan => (510000, "CN-SC", "Sichuan", "四川省", Southwest, false),
    Guizhou => (520000, "CN-GZ", "Guizhou", "贵州省", South, false),
    Yunnan => (530000, "CN-YN", "Yunnan", "云南省", South, false),
    Tibet => (540000, "CN-XZ", "Tibet", "西藏自治区", Southwest, false),
    Shaanxi => (610000, "CN-SN", "Shaanxi", "陕西省", Northwest, true),
    Gansu => (620000, "CN-GS", "Gansu", "甘肃省", Northwest, true),
    Qinghai => (630000, "CN-QH", "Qinghai", "青海省", Northwest, true),
    Ningxia => (640000, "CN-NX", "Ningxia", "宁夏回族自治区", Northwest, true),
    Xinjiang => (650000, "CN-XJ", "Xinjiang", "新疆维吾尔自治区", Northwest, true),
}

impl Province {
    /// Covered by CEADs provincial inventories.
    pub fn in_ceads(self) -> bool {
        self != Province::Tibet
    }

    /// Stable index 0..31 (NBS order), for dense arrays.
    pub fn index(self) -> usize {
        // ALL lists the variants in declaration order, so the discriminant is the position
        // (checked by a test).
        self as usize
    }

    /// Exact ISO 3166-2:CN code (`CN-HE`), without allocating: the hot path of ingest.
    pub fn from_iso(s: &str) -> Option<Province> {
        // A table over the two letters after `CN-`: one lookup on the hot path of ingest.
        static BY_LETTERS: std::sync::OnceLock<[u8; 26 * 26]> = std::sync::OnceLock::new();
        let slot = |a: u8, b: u8| (a.is_ascii_uppercase() && b.is_ascii_uppercase()).then(|| usize::from(a - b'A') * 26 + usize::from(b - b'A'));
        let b = s.as_bytes();
        if b.len() != 5 || !s.starts_with("CN-") {
            return None;
        }
        let table = BY_LETTERS.get_or_init(|| {
            let mut t = [u8::MAX; 26 * 26];
            for p in Province::ALL {
                let c = p.iso_code().as_bytes();
                t[slot(c[3], c[4]).expect("ISO codes are upper-case")] = p.index() as u8;
            }
            t
        });
        let i = table[slot(b[3], b[4])?];
        Province::ALL.get(usize::from(i)).copied()
    }

    /// Lenient lookup: NBS code, ISO code (with or without `CN-`), English name (spaces,
    /// case and suffixes ignored), Chinese full or short name.
    pub fn parse_lenient(s: &str) -> Option<Province> {
        let t = s.trim();
        if t.is_empty() {
            return None;
        }
        if let Some(p) = Province::from_iso(t) {
            return Some(p);
        }
        if let Ok(code) = t.parse::<u32>() {
            return Province::ALL.iter().copied().find(|p| p.nbs_code() == code);
        }
        let norm: String = t
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '_' && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        Province::ALL.iter().copied().find(|p| {
            let iso = p.iso_code().to_ascii_lowercase().replace('-', "");
            let en = p.name_en().to_ascii_lowercase();
            norm == iso
                || norm == iso.trim_start_matches("cn")
                || norm == en
                || norm == format!("{en}province")
                || t == p.name_zh()
                || t == short_zh(p.name_zh())
        })
    }
}

/// `内蒙古自治区` → `内蒙古`, `河北省` → `河北`, `北京市` → `北京`.
fn short_zh(full: &str) -> &str {
    for suffix in ["维吾尔自治区", "壮族自治区", "回族自治区", "自治区", "省", "市"] {
        if let Some(s) = full.strip_suffix(suffix) {
            return s;
        }
    }
    full
}

impl fmt::Display for Province {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name_en())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown province `{0}`")]
pub struct UnknownProvince(pub String);

impl FromStr for Province {
    type Err = UnknownProvince;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Province::parse_lenient(s).ok_or_else(|| UnknownProvince(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_one_unique_codes() {
        let mut nbs: Vec<_> = Province::ALL.iter().map(|p| p.nbs_code()).collect();
        nbs.sort();
        nbs.dedup();
        assert_eq!(nbs.len(), 31);
        let mut iso: Vec<_> = Province::ALL.iter().map(|p| p.iso_code()).collect();
        iso.sort();
        iso.dedup();
        assert_eq!(iso.len(), 31);
        assert_eq!(Province::ALL.iter().filter(|p| p.in_ceads()).count(), 30);
    }

    #[test]
    fn lenient_parsing() {
        assert_eq!("Inner Mongolia".parse::<Province>().unwrap(), Province::InnerMongolia);
        assert_eq!("内蒙古".parse::<Province>().unwrap(), Province::InnerMongolia);
        assert_eq!("新疆维吾尔自治区".parse::<Province>().unwrap(), Province::Xinjiang);
        assert_eq!("CN-BJ".parse::<Province>().unwrap(), Province::Beijing);
        assert_eq!("hi".parse::<Province>().unwrap(), Province::Hainan);
        assert_eq!("440000".parse::<Province>().unwrap(), Province::Guangdong);
        assert!("Atlantis".parse::<Province>().is_err());
        for p in Province::ALL {
            assert_eq!(p.name_en().parse::<Province>().unwrap(), p);
            assert_eq!(p.name_zh().parse::<Province>().unwrap(), p);
            assert_eq!(Province::ALL[p.index()], p);
            assert_eq!(Province::from_iso(p.iso_code()), Some(p));
        }
        for s in ["CN-XX", "CN-bj", "CN-B", "CN-BJX", "US-BJ", "CN-[J", "CN-\u{e9}"] {
            assert_eq!(Province::from_iso(s), None, "{s}");
        }
    }
}

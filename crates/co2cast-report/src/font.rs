//! The font plotters measures and draws text with. Not bundled: the first usable TrueType
//! file among `CO2CAST_FONT` and the usual system locations.

use crate::ReportError;
use plotters::style::{FontStyle, register_font};
use std::sync::OnceLock;

/// The family name the charts ask for.
pub const FAMILY: &str = "sans-serif";

const CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers the font once per process.
pub fn ensure() -> Result<(), ReportError> {
    static DONE: OnceLock<Result<String, String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let from_env = std::env::var("CO2CAST_FONT").ok();
        let paths: Vec<String> = from_env.iter().cloned().chain(CANDIDATES.iter().map(|s| s.to_string())).collect();
        for p in &paths {
            let Ok(bytes) = std::fs::read(p) else {
                if from_env.as_deref() == Some(p.as_str()) {
                    return Err(format!("CO2CAST_FONT={p} cannot be read"));
                }
                continue;
            };
            // Registered fonts live for the whole process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                return Ok(p.clone());
            }
        }
        Err("charts need a TrueType font: install one (Debian: apt-get install fonts-dejavu-core) or set CO2CAST_FONT to a .ttf file".into())
    })
    .clone()
    .map(|_| ())
    .map_err(ReportError::Font)
}

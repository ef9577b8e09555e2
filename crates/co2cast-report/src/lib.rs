//! Pictures for people who would rather look than read: the daily series of one province and
//! sector with its 95 % band and the inventory years (`series`), and an HTML report of a
//! year's estimates against the yearbook inventory (`html`).
//!
//! Rendering only: callers bring the numbers (the CLI reads them from the lake with SQL).

pub mod chart;
mod font;
pub mod html;

pub use chart::{ComparisonChart, ImageFormat, SeriesChart, comparison_svg, render_series, series_svg};
pub use html::{ComparisonRow, ReportInput, write_report};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No usable TrueType font: text cannot be measured or drawn.
    #[error("{0}")]
    Font(String),
    #[error("drawing failed: {0}")]
    Draw(String),
    #[error("nothing to draw: {0}")]
    Empty(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl ReportError {
    fn io(path: &std::path::Path, source: std::io::Error) -> ReportError {
        ReportError::Io { path: path.display().to_string(), source }
    }
}

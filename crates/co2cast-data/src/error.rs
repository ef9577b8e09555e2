//! Loader errors always name the file and, where there is one, the field.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: cannot read: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}: not a readable workbook: {msg}", file.display())]
    Workbook { file: PathBuf, msg: String },
    #[error("{}: sheet `{sheet}`: {msg}", file.display())]
    Sheet { file: PathBuf, sheet: String, msg: String },
    #[error("{}: missing column `{field}`", file.display())]
    MissingColumn { file: PathBuf, field: String },
    #[error("{}: line {line}: field `{field}`: {msg}", file.display())]
    Field { file: PathBuf, line: usize, field: String, msg: String },
    #[error("{}: field `{field}`: unit `{found}` where {expected} was expected", file.display())]
    Unit { file: PathBuf, field: String, found: String, expected: String },
    #[error("{}: {msg}", file.display())]
    Content { file: PathBuf, msg: String },
}

impl DataError {
    pub fn io(file: &Path, source: std::io::Error) -> DataError {
        DataError::Io { file: file.to_path_buf(), source }
    }
    pub fn field(file: &Path, line: usize, field: &str, msg: impl Into<String>) -> DataError {
        DataError::Field { file: file.to_path_buf(), line, field: field.to_string(), msg: msg.into() }
    }
    pub fn missing(file: &Path, field: &str) -> DataError {
        DataError::MissingColumn { file: file.to_path_buf(), field: field.to_string() }
    }
    pub fn content(file: &Path, msg: impl Into<String>) -> DataError {
        DataError::Content { file: file.to_path_buf(), msg: msg.into() }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

/// A CSV reader with headers, and a lookup of required columns by name.
pub struct Table {
    pub file: PathBuf,
    pub headers: Vec<String>,
    pub rows: Vec<csv::StringRecord>,
}

impl Table {
    pub fn read(path: &Path) -> Result<Table> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::from_bytes(path, &bytes)
    }

    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Table> {
        let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        let mut rdr = csv::ReaderBuilder::new().flexible(true).comment(Some(b'#')).from_reader(bytes);
        let headers: Vec<String> = rdr
            .headers()
            .map_err(|e| DataError::content(path, e.to_string()))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        let mut rows = Vec::new();
        for r in rdr.records() {
            rows.push(r.map_err(|e| DataError::content(path, e.to_string()))?);
        }
        Ok(Table { file: path.to_path_buf(), headers, rows })
    }

    pub fn col(&self, name: &str) -> Result<usize> {
        self.headers.iter().position(|h| h == name).ok_or_else(|| DataError::missing(&self.file, name))
    }

    /// Line number in the file (header is line 1).
    pub fn line(&self, i: usize) -> usize {
        i + 2
    }

    pub fn str<'a>(&'a self, i: usize, c: usize) -> &'a str {
        self.rows[i].get(c).unwrap_or("").trim()
    }

    pub fn f64(&self, i: usize, c: usize) -> Result<f64> {
        let raw = self.str(i, c);
        parse_number(raw).ok_or_else(|| DataError::field(&self.file, self.line(i), &self.headers[c], format!("not a number: `{raw}`")))
    }
}

/// Numbers as statistical exports write them: thousands separators, stray spaces.
pub fn parse_number(raw: &str) -> Option<f64> {
    let t: String = raw.trim().chars().filter(|c| *c != ',' && !c.is_whitespace()).collect();
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

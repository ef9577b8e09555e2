//! # co2cast-lake
//!
//! The Parquet lake researchers read with pandas, polars, DuckDB or pyarrow, and the SQL
//! server queries. Tables are Hive-partitioned directories (`estimates/year=2019/month=1/`)
//! of zstd-compressed Parquet files. A file is written under a hidden temporary name, synced,
//! then renamed, and the manifest (`_manifest.json`, itself replaced atomically) lists the
//! files of each commit; readers that list directories never see a partial file, because
//! temporary names start with `.` and do not end in `.parquet`.
//!
//! Tables (their schemas are documented in `docs/lake.md`):
//! - `estimates`: every published vintage of every daily row, with `revision` and `computed_at`;
//! - `estimates_latest`: the newest vintage of each row;
//! - `estimate_ensemble`: the Monte Carlo members of each province, sector and day, so that
//!   any aggregation in SQL can take its band from member-wise sums;
//! - `proxies`: the normalised inputs as accepted;
//! - `inventory`: the yearbook (CEADs) values;
//! - `comparison`: annual estimates against the inventory.

pub mod tables;

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "_manifest.json";
/// Format of the lake. 2: canonical integer partition values (`month=7`). A lake of another
/// format is refused with what to do (see [`Manifest::read`]).
pub const MANIFEST_VERSION: u32 = 4;
/// Present while a writer changes files (from before the first file until after the
/// manifest), so that a reader can tell that what it read may mix two commits.
pub const WRITING: &str = "_writing";
/// Locked exclusively by a writer for each change, shared by a reader that must not overlap one.
pub const LOCK: &str = "_lock";

/// Holds the lake's lock (shared for a reader) until dropped.
pub struct LakeLock(#[allow(dead_code)] std::fs::File);

impl LakeLock {
    fn take(root: &Path, exclusive: bool) -> Result<LakeLock, LakeError> {
        let p = root.join(LOCK);
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io(&p))?;
        if exclusive { f.lock() } else { f.lock_shared() }.map_err(io(&p))?;
        Ok(LakeLock(f))
    }

    /// Waits until no writer is changing the lake, and keeps writers out while held.
    pub fn shared(root: &Path) -> Result<LakeLock, LakeError> {
        LakeLock::take(root, false)
    }
}
/// Rows per row group: large enough for scans, small enough to prune by statistics.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("lake {}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LakeError + '_ {
    move |source| LakeError::Io { path: path.to_path_buf(), source }
}

/// One file of the lake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
    /// Commit that wrote it (the pipeline's checkpoint sequence).
    pub commit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Last commit recorded.
    pub commit: u64,
    pub committed_at: Option<String>,
    /// The checkpoint lineage whose commits these are (see `LakeSink` in co2cast-pipeline);
    /// `None` until the first commit.
    #[serde(default)]
    pub lineage: Option<String>,
    /// Relative path → entry.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// The manifest of the lake at `root`; `None` when the lake has none yet.
    pub fn read(root: &Path) -> Result<Option<Manifest>, LakeError> {
        let mp = root.join(MANIFEST);
        let m: Manifest = match std::fs::read(&mp) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| LakeError::Format { path: mp.clone(), msg: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LakeError::Io { path: mp, source: e }),
        };
        if m.version != MANIFEST_VERSION {
            return Err(LakeError::Format {
                path: mp,
                msg: format!(
                    "lake format {} (this co2cast reads format {MANIFEST_VERSION}: canonical partition values such as month=7, a comparison table with a `reference` column, estimates with a `data_through` column, and proxies with `proxy_revision`); move the lake away or pass another --lake, and `co2cast run` writes a new one",
                    m.version
                ),
            });
        }
        Ok(Some(m))
    }
}

/// A file to write: table, Hive partition values, and a file name unique within the partition.
#[derive(Debug, Clone)]
pub struct FileWrite {
    pub table: String,
    pub partition: Vec<(String, String)>,
    pub file_name: String,
    pub batch: RecordBatch,
}

impl FileWrite {
    pub fn relative_path(&self) -> PathBuf {
        let mut p = PathBuf::from(&self.table);
        for (k, v) in &self.partition {
            p.push(format!("{k}={v}"));
        }
        p.push(&self.file_name);
        p
    }
}

pub struct Lake {
    root: PathBuf,
    manifest: Manifest,
}

impl Lake {
    /// Opens (creating if needed) a lake at `root`.
    pub fn open(root: &Path) -> Result<Lake, LakeError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let manifest = Manifest::read(root)?.unwrap_or(Manifest { version: MANIFEST_VERSION, ..Manifest::default() });
        Ok(Lake { root: root.to_path_buf(), manifest })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Ties the lake to a checkpoint lineage: an empty lake takes it (recorded with the next
    /// commit); a lake with commits of another lineage is refused, since rolling it back to
    /// this lineage's checkpoint, or adding to it, would mix two runs.
    pub fn bind_lineage(&mut self, lineage: &str) -> Result<(), LakeError> {
        match &self.manifest.lineage {
            Some(l) if l == lineage => Ok(()),
            // Files of commit 0 only (the inventory written at open) come from a run that
            // never checkpointed: nothing of it is owed to anyone, and the new run takes over.
            Some(l) if self.manifest.files.values().any(|f| f.commit > 0) => Err(LakeError::Format {
                path: self.root.clone(),
                msg: format!(
                    "this lake was written by another run (lineage {l}) than the state being resumed (lineage {lineage}); pass the state directory that wrote it, or another --lake"
                ),
            }),
            _ => {
                self.manifest.lineage = Some(lineage.to_string());
                Ok(())
            }
        }
    }

    /// Writes every file atomically, then records them all in the manifest as commit `commit`.
    /// Rewriting a path replaces the file (a commit repeated after a crash writes the same
    /// names, so nothing is duplicated).
    pub fn commit(&mut self, commit: u64, files: Vec<FileWrite>, committed_at: &str) -> Result<(), LakeError> {
        if files.is_empty() {
            return Ok(());
        }
        let _lock = LakeLock::take(&self.root, true)?;
        self.begin(commit)?;
        for f in &files {
            let rel = f.relative_path();
            let bytes = write_parquet_atomic(&self.root.join(&rel), &f.batch)?;
            self.manifest.files.insert(
                rel.to_string_lossy().replace('\\', "/"),
                FileEntry { table: f.table.clone(), rows: f.batch.num_rows() as u64, bytes, commit },
            );
        }
        self.manifest.version = MANIFEST_VERSION;
        self.manifest.commit = self.manifest.commit.max(commit);
        self.manifest.committed_at = Some(committed_at.to_string());
        self.save_manifest()?;
        self.end()
    }

    fn begin(&self, commit: u64) -> Result<(), LakeError> {
        write_atomic(&self.root.join(WRITING), commit.to_string().as_bytes())
    }

    fn end(&self) -> Result<(), LakeError> {
        let p = self.root.join(WRITING);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LakeError::Io { path: p, source: e }),
        }
    }

    fn save_manifest(&self) -> Result<(), LakeError> {
        let mp = self.root.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&self.manifest).map_err(|e| LakeError::Format { path: mp.clone(), msg: e.to_string() })?;
        write_atomic(&mp, &json)
    }

    /// Removes the files of commits after `commit` (written, but their checkpoint never was).
    /// The manifest drops them first, so a reader sees the lake change before files vanish.
    pub fn rollback_after(&mut self, commit: u64) -> Result<usize, LakeError> {
        // Files a crash left unrecorded (written before a manifest save, or dropped from it but not yet removed).
        let _lock = LakeLock::take(&self.root, true)?;
        let mut doomed = self.unrecorded_files()?;
        self.begin(commit)?;
        let unchecked: Vec<String> = self.manifest.files.iter().filter(|(_, e)| e.commit > commit).map(|(k, _)| k.clone()).collect();
        if !unchecked.is_empty() {
            for rel in &unchecked {
                self.manifest.files.remove(rel);
            }
            self.manifest.commit = commit;
            self.save_manifest()?;
        }
        doomed.extend(unchecked);
        for rel in &doomed {
            let p = self.root.join(rel);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LakeError::Io { path: p, source: e }),
            }
        }
        // Also clears the marker of a writer that crashed mid-commit.
        self.end()?;
        Ok(doomed.len())
    }

    /// Parquet files under the lake that the manifest does not record.
    fn unrecorded_files(&self) -> Result<Vec<String>, LakeError> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), LakeError> {
            let rd = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(LakeError::Io { path: dir.to_path_buf(), source: e }),
            };
            for entry in rd {
                let entry = entry.map_err(io(dir))?;
                let name = entry.file_name().to_string_lossy().to_string();
                let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let ty = entry.file_type().map_err(io(dir))?;
                if ty.is_dir() {
                    walk(&entry.path(), &child, out)?;
                } else if name.ends_with(".parquet") && !name.starts_with('.') {
                    out.push(child);
                }
            }
            Ok(())
        }
        let mut all = Vec::new();
        walk(&self.root, "", &mut all)?;
        Ok(all.into_iter().filter(|rel| !self.manifest.files.contains_key(rel)).collect())
    }

    /// Every batch of one table (optionally under one partition directory, e.g. `year=2019`).
    pub fn read(&self, table: &str, under: Option<&str>) -> Result<Vec<RecordBatch>, LakeError> {
        let prefix = match under {
            Some(u) => format!("{table}/{u}/"),
            None => format!("{table}/"),
        };
        let mut out = Vec::new();
        for (rel, e) in &self.manifest.files {
            if e.table == table && rel.starts_with(&prefix) {
                out.extend(read_parquet(&self.root.join(rel))?);
            }
        }
        Ok(out)
    }
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("co2cast {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Parquet to a hidden temporary file, fsync, rename, fsync of the directory.
pub fn write_parquet_atomic(path: &Path, batch: &RecordBatch) -> Result<u64, LakeError> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut w = ArrowWriter::try_new(f, batch.schema(), Some(writer_properties()))
            .map_err(|e| LakeError::Format { path: tmp.clone(), msg: e.to_string() })?;
        w.write(batch).map_err(|e| LakeError::Format { path: tmp.clone(), msg: e.to_string() })?;
        let f = w.into_inner().map_err(|e| LakeError::Format { path: tmp.clone(), msg: e.to_string() })?;
        f.sync_all().map_err(io(&tmp))?;
    }
    let bytes = std::fs::metadata(&tmp).map_err(io(&tmp))?.len();
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LakeError> {
    let dir = path.parent().expect("a file in a directory");
    let tmp = dir.join(format!(".{}.tmp", path.file_name().expect("name").to_string_lossy()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, LakeError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| LakeError::Format { path: path.to_path_buf(), msg: e.to_string() })?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| LakeError::Format { path: path.to_path_buf(), msg: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(n: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false), Field::new("v", DataType::Float64, false)]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("k{i}")))),
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn commits_are_atomic_recorded_and_idempotent() {
        let dir = std::env::temp_dir().join(format!("co2cast-lake-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut lake = Lake::open(&dir).unwrap();
        let f = |n| FileWrite {
            table: "t".into(),
            partition: vec![("year".into(), "2019".into()), ("month".into(), "1".into())],
            file_name: "part-00000001.parquet".into(),
            batch: batch(n),
        };
        lake.commit(1, vec![f(10)], "2019-01-01T00:00:00Z").unwrap();
        // The same commit again (a restart after a crash) replaces, not duplicates.
        lake.commit(1, vec![f(12)], "2019-01-01T00:00:00Z").unwrap();
        let lake = Lake::open(&dir).unwrap();
        assert_eq!(lake.manifest().files.len(), 1);
        let rows: usize = lake.read("t", Some("year=2019")).unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 12);
        assert!(dir.join("t/year=2019/month=1/part-00000001.parquet").exists());
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("t/year=2019/month=1")).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with('.')).collect();
        assert!(leftovers.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rollback_removes_unchecked_commits_and_files_a_crash_left_unrecorded() {
        let dir = std::env::temp_dir().join(format!("co2cast-lake-rollback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut lake = Lake::open(&dir).unwrap();
        let f = |month: &str, name: &str| FileWrite {
            table: "t".into(),
            partition: vec![("year".into(), "2019".into()), ("month".into(), month.into())],
            file_name: name.into(),
            batch: batch(3),
        };
        lake.commit(1, vec![f("1", "a.parquet")], "2019-01-01T00:00:00Z").unwrap();
        lake.commit(2, vec![f("2", "b.parquet")], "2019-01-01T00:00:01Z").unwrap();
        // A file written by a commit that crashed before its manifest save.
        write_parquet_atomic(&dir.join("t/year=2019/month=3/c.parquet"), &batch(3)).unwrap();
        let mut lake = Lake::open(&dir).unwrap();
        assert_eq!(lake.rollback_after(1).unwrap(), 2);
        assert!(dir.join("t/year=2019/month=1/a.parquet").exists());
        assert!(!dir.join("t/year=2019/month=2/b.parquet").exists());
        assert!(!dir.join("t/year=2019/month=3/c.parquet").exists());
        let reopened = Lake::open(&dir).unwrap();
        assert_eq!(reopened.manifest().files.keys().collect::<Vec<_>>(), vec!["t/year=2019/month=1/a.parquet"]);
        assert_eq!(reopened.manifest().commit, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

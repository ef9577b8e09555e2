//! Atomic checkpoints of source offsets, proxy state, what has been published and the
//! counters, written together so that a restart resumes exactly where the last checkpoint
//! left off: temp file, fsync, rename, fsync of the directory.

use crate::estimates::Published;
use co2cast_ingest::{ProxyState, Watermarks};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const CHECKPOINT_VERSION: u32 = 1;

/// Message accounting: `received == accepted + dead_lettered` at every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub received: u64,
    pub accepted: u64,
    /// Accepted messages that changed nothing (duplicates, replays, stale revisions).
    pub accepted_unchanged: u64,
    /// Accepted messages that replaced an earlier value.
    pub revisions: u64,
    /// Accepted messages behind their signal's watermark (re-estimated, never dropped).
    pub late: u64,
    pub dead_lettered: u64,
    pub dead_lettered_by_code: BTreeMap<String, u64>,
    pub estimates_published: u64,
    pub estimate_revisions_published: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Next offset to read, per `topic/partition`.
    pub offsets: BTreeMap<String, i64>,
    pub state: ProxyState,
    pub published: Published,
    pub counters: Counters,
    pub watermarks: Watermarks,
    /// Checkpoints written so far (diagnostics).
    pub sequence: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {}: not a valid checkpoint: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    #[error("checkpoint {}: version {found}, this build reads version {CHECKPOINT_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
}

pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

impl Checkpoint {
    pub fn empty(watermarks: Watermarks) -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            offsets: BTreeMap::new(),
            state: ProxyState::new(),
            published: Published::default(),
            counters: Counters::default(),
            watermarks,
            sequence: 0,
        }
    }

    pub fn file(dir: &Path) -> PathBuf {
        dir.join("checkpoint.json")
    }

    pub fn load(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = Self::file(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CheckpointError::Io { path, source: e }),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt { path: path.clone(), msg: e.to_string() })?;
        let version = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
        if version != CHECKPOINT_VERSION {
            return Err(CheckpointError::Version { path, found: version });
        }
        serde_json::from_value(v).map(Some).map_err(|e| CheckpointError::Corrupt { path, msg: e.to_string() })
    }

    /// Writes atomically: a reader (or a restart) sees the old or the new checkpoint, never a mix.
    pub fn save(&mut self, dir: &Path) -> Result<(), CheckpointError> {
        self.sequence += 1;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e| CheckpointError::Io { path: path.clone(), source: e }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = dir.join("checkpoint.json.tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| CheckpointError::Corrupt { path: tmp.clone(), msg: e.to_string() })?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        let path = Self::file(dir);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

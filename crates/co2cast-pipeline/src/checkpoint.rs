//! Atomic checkpoints of source offsets, proxy state, what has been published and the
//! counters, written together so that a restart resumes exactly where the last checkpoint
//! left off: temp file, fsync, rename, fsync of the directory.

use crate::estimates::Published;
use co2cast_model::domain::Province;
use co2cast_model::proxy::{Scope, Signal};
use co2cast_model::series::YearMonth;
use co2cast_ingest::{ProxyState, Watermarks};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// 2: owed re-estimations, series frontiers and national totals are checkpointed; the
/// published fingerprint covers every column.
pub const CHECKPOINT_VERSION: u32 = 4;

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
    /// Grid intensity rows published (first vintages and revisions), and of them revisions.
    pub grid_intensity_published: u64,
    pub grid_intensity_revisions_published: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Next offset to read, per `topic/partition`.
    pub offsets: BTreeMap<String, i64>,
    pub state: ProxyState,
    pub published: Published,
    /// Grid intensity rows published (keys `<province>/<date>`).
    pub published_grid_intensity: Published,
    pub counters: Counters,
    pub watermarks: Watermarks,
    /// Checkpoints written so far (diagnostics).
    pub sequence: u64,
    /// Re-estimations owed: inputs changed them, and they have not been published yet (a
    /// member holding only some partitions owes them until it holds all).
    pub dirty: BTreeMap<i32, Dirty>,
    /// The latest month of each series when estimates were last made (see [`Frontier`]).
    pub frontier: Frontier,
    /// Annual national totals as last estimated, for summaries.
    pub national: BTreeMap<i32, NationalYear>,
    /// Years estimated so far (a year is re-estimated for next year's January only once it
    /// has estimates).
    #[serde(default)]
    pub estimated_years: std::collections::BTreeSet<i32>,
    /// Province-day member sums published to the national stage (province stage only; keys
    /// `<province>/<date>`).
    #[serde(default)]
    pub published_ensemble: Published,
    /// Identity of this line of checkpoints; the lake it writes carries the same, so a lake
    /// is never rolled back by (or mixed with) the state of another run.
    pub lineage: String,
    /// What the estimates depend on besides the input (provinces, ensemble, model): a state
    /// is only resumed with the same.
    pub settings: String,
}

/// A year's national total as last estimated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NationalYear {
    pub year: i32,
    pub days: usize,
    pub band: co2cast_model::estimate::Band,
}

/// A new lineage identity: distinct for every checkpoint line ever started.
pub(crate) fn new_lineage() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in nanos.to_le_bytes().into_iter().chain(std::process::id().to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}-{nanos:x}")
}

/// What must be re-estimated in a year: everything, or the provinces whose bits are set
/// (by `Province::index`; a bit test per message, where a set insert showed in profiles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Dirty {
    All,
    Provinces(u64),
}

impl Dirty {
    pub fn add(&mut self, scope: Scope) {
        match (scope, &mut *self) {
            (_, Dirty::All) => {}
            (Scope::National, d) => *d = Dirty::All,
            (Scope::Province(p), Dirty::Provinces(bits)) => *bits |= 1 << p.index(),
        }
    }

    pub fn includes(&self, p: Province) -> bool {
        match self {
            Dirty::All => true,
            Dirty::Provinces(bits) => bits & (1 << p.index()) != 0,
        }
    }
}

/// The latest month of every proxy series received, as estimates last saw it. Moving it
/// changes which earlier months are gaps and which are nowcasts (see the processor's
/// `mark_frontier_moves`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frontier(#[serde(with = "frontier_serde")] pub BTreeMap<(Signal, Scope), YearMonth>);

mod frontier_serde {
    use super::*;
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(m: &BTreeMap<(Signal, Scope), YearMonth>, s: S) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<(Signal, Scope), YearMonth>, D::Error> {
        Ok(Vec::<((Signal, Scope), YearMonth)>::deserialize(d)?.into_iter().collect())
    }
}

impl Frontier {
    /// Series whose frontier differs between `self` and `next`: (series, before, after).
    pub fn changes<'a>(&'a self, next: &'a Frontier) -> impl Iterator<Item = ((Signal, Scope), Option<YearMonth>, Option<YearMonth>)> + 'a {
        let keys: std::collections::BTreeSet<&(Signal, Scope)> = self.0.keys().chain(next.0.keys()).collect();
        keys.into_iter().filter_map(move |k| {
            let (a, b) = (self.0.get(k).copied(), next.0.get(k).copied());
            (a != b).then_some((*k, a, b))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {}: not a valid checkpoint: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    #[error("checkpoint {}: version {found}, this build reads version {expected}; move the state directory away (and the lake it wrote) to start over", path.display())]
    Version { path: PathBuf, found: u32, expected: u32 },
}

pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

impl Checkpoint {
    pub fn empty(watermarks: Watermarks, settings: String) -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            offsets: BTreeMap::new(),
            state: ProxyState::new(),
            published: Published::default(),
            published_grid_intensity: Published::default(),
            counters: Counters::default(),
            watermarks,
            sequence: 0,
            dirty: BTreeMap::new(),
            frontier: Frontier::default(),
            national: BTreeMap::new(),
            estimated_years: Default::default(),
            published_ensemble: Published::default(),
            lineage: new_lineage(),
            settings,
        }
    }

    pub fn file(dir: &Path) -> PathBuf {
        dir.join("checkpoint.json")
    }

    pub fn load(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        load_versioned(&Self::file(dir), CHECKPOINT_VERSION)
    }

    /// Writes atomically: a reader (or a restart) sees the old or the new checkpoint, never a mix.
    pub fn save(&mut self, dir: &Path) -> Result<(), CheckpointError> {
        self.sequence += 1;
        save_atomically(dir, "checkpoint.json", self)
    }
}

/// A JSON checkpoint with a `version` field, `None` when there is none yet; another version is
/// refused.
pub fn load_versioned<T: serde::de::DeserializeOwned>(path: &Path, version: u32) -> Result<Option<T>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CheckpointError::Io { path: path.to_path_buf(), source: e }),
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt { path: path.to_path_buf(), msg: e.to_string() })?;
    let found = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
    if found != version {
        return Err(CheckpointError::Version { path: path.to_path_buf(), found, expected: version });
    }
    serde_json::from_value(v).map(Some).map_err(|e| CheckpointError::Corrupt { path: path.to_path_buf(), msg: e.to_string() })
}

/// Writes `value` as JSON to `dir/name` through a temporary file, fsync and rename.
pub fn save_atomically<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| CheckpointError::Io { path: path.clone(), source: e }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let bytes = serde_json::to_vec(value).map_err(|e| CheckpointError::Corrupt { path: tmp.clone(), msg: e.to_string() })?;
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

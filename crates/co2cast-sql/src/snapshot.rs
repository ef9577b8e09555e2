//! Consistent reads of a lake that a running pipeline keeps committing to.
//!
//! A query lists files, then reads them; a commit in between can replace a month file or a
//! restart can roll files back, so a read may fail (file gone, footer at a stale size) or mix
//! two commits. A writer marks the lake (`_writing`) before it touches a file and replaces
//! `_manifest.json` by rename at the end, so the manifest's identity (inode, size,
//! modification time) plus the marker make a seqlock: a query that overlapped a write, or
//! that failed reading files, is run again; the last attempt takes the lake's shared lock,
//! which holds writers off while it runs.

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::prelude::SessionContext;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs of one query at most (the first plus retries).
pub const MAX_ATTEMPTS: u32 = 5;

/// The lake a session reads (kept in the session config so every query path can find it).
#[derive(Debug, Clone)]
pub struct LakeRoot(pub PathBuf);

impl datafusion::config::ConfigExtension for LakeRoot {
    const PREFIX: &'static str = "co2cast_lake";
}

impl datafusion::config::ExtensionOptions for LakeRoot {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn cloned(&self) -> Box<dyn datafusion::config::ExtensionOptions> {
        Box::new(self.clone())
    }
    fn set(&mut self, key: &str, _value: &str) -> DfResult<()> {
        Err(DataFusionError::Plan(format!("co2cast_lake.{key} cannot be set")))
    }
    fn entries(&self) -> Vec<datafusion::config::ConfigEntry> {
        Vec::new()
    }
}

/// A marker older than this is from a writer that crashed, not one at work.
const STALE_WRITING: Duration = Duration::from_secs(60);

/// What a reader compares before and after a query.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeVersion {
    /// Identity of `_manifest.json` (inode, size, modification time in ns); `None` without one.
    pub manifest: Option<(u64, u64, i128)>,
    /// A writer is changing files right now.
    pub writing: bool,
}

/// The lake's version now.
pub fn lake_version(dir: &Path) -> LakeVersion {
    use std::os::unix::fs::MetadataExt;
    let manifest =
        std::fs::metadata(dir.join(co2cast_lake::MANIFEST)).ok().map(|m| (m.ino(), m.len(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128));
    let writing = std::fs::metadata(dir.join(co2cast_lake::WRITING))
        .ok()
        .and_then(|m| m.modified().ok())
        .is_some_and(|t| t.elapsed().map_or(true, |age| age < STALE_WRITING));
    LakeVersion { manifest, writing }
}

/// Whether an error comes from reading lake files (which a concurrent commit explains),
/// rather than from the query itself.
pub fn is_read_error(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::ObjectStore(_) | DataFusionError::ParquetError(_) | DataFusionError::IoError(_) => true,
        DataFusionError::ArrowError(a, _) => matches!(**a, arrow::error::ArrowError::IoError(..) | arrow::error::ArrowError::ParquetError(_)),
        _ => false,
    }
}

/// The lake of a session made by [`crate::session`].
pub fn session_lake(ctx: &SessionContext) -> Option<PathBuf> {
    ctx.state().config().options().extensions.get::<LakeRoot>().map(|l| l.0.clone())
}

/// Runs `work` until one run saw a single lake version (or the attempts are spent): the
/// answer is then that of one commit. A failed read is retried even when the version did not
/// change, since a commit replaces files just before it saves the manifest.
pub async fn consistent<T, F, Fut>(lake: Option<&Path>, mut work: F) -> DfResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = DfResult<T>>,
{
    let Some(lake) = lake else { return work().await };
    let mut attempt = 1;
    loop {
        if attempt == MAX_ATTEMPTS {
            return under_lock(lake, work()).await;
        }
        let before = lake_version(lake);
        let result = work().await;
        let after = lake_version(lake);
        let moved = before.writing || after.writing || after != before;
        let retry = match &result {
            Ok(_) => moved,
            Err(e) => moved || is_read_error(e),
        };
        if !retry {
            return result;
        }
        tracing::debug!(message = "Lake changed during a query; running it again.", attempt);
        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
        attempt += 1;
    }
}

/// The last attempt: holds writers off for the duration of one run, so its answer is one
/// commit's (a busy pipeline waits at most that long for its next commit).
async fn under_lock<T>(lake: &Path, run: impl Future<Output = DfResult<T>>) -> DfResult<T> {
    let dir = lake.to_path_buf();
    let lock = tokio::task::spawn_blocking(move || co2cast_lake::LakeLock::shared(&dir))
        .await
        .map_err(|e| DataFusionError::Internal(format!("lake lock: {e}")))?;
    match lock {
        Ok(lock) => {
            tracing::info!(message = "The lake kept changing during a query; running it once more with commits held off.");
            let result = run.await;
            drop(lock);
            result
        }
        // A lake the reader may not write to cannot be locked: run as is.
        Err(e) => {
            tracing::warn!(message = "Cannot lock the lake; the answer may mix commits.", error = %e);
            run.await
        }
    }
}

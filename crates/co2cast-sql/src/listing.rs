//! File lists from the lake's manifest instead of directory walks.
//!
//! DataFusion asks its list-files cache for a table's files before it lists a directory.
//! This cache answers for tables under the lake from `_manifest.json`: the files of the last
//! commit exactly (a walk can catch a rollback half done), stat'ed once per manifest version,
//! so an unchanged lake costs one `stat` per query instead of a walk of every month
//! directory. Paths outside the lake are not cached: DataFusion lists them itself.

use crate::snapshot::{LakeVersion, lake_version};
use datafusion::common::{Result as DfResult, TableReference};
use datafusion::execution::cache::cache_manager::CachedFileList;
use datafusion::execution::cache::{Cache, CacheEntryInfo, TableScopedPath};
use datafusion::object_store::ObjectMeta;
use datafusion::object_store::path::{Path as StorePath, PathPart};
use datafusion::common::HashMap;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The files of one manifest version, by table.
struct Snapshot {
    version: LakeVersion,
    tables: BTreeMap<String, Arc<Vec<ObjectMeta>>>,
}

/// A list-files cache answering from the manifest of the lake at `dir`.
pub struct ManifestListing {
    dir: PathBuf,
    /// The lake's root as DataFusion names local paths (from `ListingTableUrl`).
    root: StorePath,
    snapshot: Mutex<Option<Snapshot>>,
}

impl ManifestListing {
    pub fn new(dir: &std::path::Path) -> DfResult<ManifestListing> {
        let url = datafusion::datasource::listing::ListingTableUrl::parse(format!("{}/", dir.display()))?;
        Ok(ManifestListing { dir: dir.to_path_buf(), root: url.prefix().clone(), snapshot: Mutex::new(None) })
    }

    /// The table a listing path lies in, when it is one of the lake's: the table itself, or a
    /// partition directory of it (DataFusion lists `year=2019/month=7/` alone when a query
    /// pins both columns).
    fn table_of(&self, path: &StorePath) -> Option<String> {
        let rest: Vec<PathPart<'_>> = path.prefix_match(&self.root)?.collect();
        let (table, partitions) = rest.split_first()?;
        partitions.iter().all(|p| p.as_ref().contains('=')).then(|| table.as_ref().to_string())
    }

    fn load(&self) -> Option<Snapshot> {
        let version = lake_version(&self.dir);
        let manifest = co2cast_lake::Manifest::read(&self.dir).ok()??;
        let mut tables: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
        for (rel, entry) in &manifest.files {
            // Size and modification time from the file itself: DataFusion's footer cache checks them.
            let Ok(meta) = std::fs::metadata(self.dir.join(rel)) else { continue };
            let location = StorePath::from_iter(self.root.parts().chain(rel.split('/').map(PathPart::from)));
            let last_modified = meta.modified().ok().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default();
            tables.entry(entry.table.clone()).or_default().push(ObjectMeta { location, last_modified, size: meta.len(), e_tag: None, version: None });
        }
        Some(Snapshot { version, tables: tables.into_iter().map(|(t, v)| (t, Arc::new(v))).collect() })
    }
}

impl Cache<TableScopedPath, CachedFileList> for ManifestListing {
    fn get(&self, key: &TableScopedPath) -> Option<CachedFileList> {
        let table = self.table_of(&key.path)?;
        let mut guard = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let now = lake_version(&self.dir);
        if now.writing || guard.as_ref().is_none_or(|s| s.version != now) {
            *guard = self.load();
        }
        let all = guard.as_ref()?.tables.get(&table).cloned().unwrap_or_default();
        // A partition directory: the files under it.
        let files = if all.iter().all(|f| f.location.prefix_matches(&key.path)) {
            all
        } else {
            Arc::new(all.iter().filter(|f| f.location.prefix_matches(&key.path)).cloned().collect())
        };
        if now.writing {
            // Not kept while a writer is at work: the next query reads the finished commit.
            *guard = None;
        }
        Some(CachedFileList { files })
    }

    fn put(&self, _key: &TableScopedPath, _value: CachedFileList) -> Option<CachedFileList> {
        None
    }

    fn remove(&self, _k: &TableScopedPath) -> Option<CachedFileList> {
        None
    }

    fn contains_key(&self, k: &TableScopedPath) -> bool {
        self.table_of(&k.path).is_some()
    }

    fn len(&self) -> usize {
        self.snapshot.lock().map(|s| s.as_ref().map_or(0, |s| s.tables.len())).unwrap_or(0)
    }

    fn clear(&self) {
        if let Ok(mut s) = self.snapshot.lock() {
            *s = None;
        }
    }

    fn name(&self) -> String {
        "co2cast ManifestListing".into()
    }

    fn cache_limit(&self) -> usize {
        usize::MAX
    }

    fn update_cache_limit(&self, _limit: usize) {}

    fn cache_ttl(&self) -> Option<Duration> {
        None
    }

    fn update_cache_ttl(&self, _ttl: Option<Duration>) {}

    fn drop_table_entries(&self, _table_ref: &TableReference) -> DfResult<()> {
        Ok(())
    }

    fn list_entries(&self) -> HashMap<TableScopedPath, CacheEntryInfo<CachedFileList>> {
        HashMap::new()
    }
}

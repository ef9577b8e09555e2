//! Which provinces this process estimates, and what it owes when the group gives it new ones.

use super::*;

impl Processor {
    /// The provinces this member estimates now: every one while it holds every partition
    /// (`all`), or those of the partition numbers it holds in every proxy topic (`province`);
    /// `None` while it holds nothing it can estimate from.
    pub(super) fn owned_provinces(&self) -> Option<BTreeSet<Province>> {
        let ctx = self.consumer.context();
        let owned: BTreeSet<Province> = match self.cfg.role {
            crate::role::Role::Province if self.proxy_partitions > 0 => {
                let assignment = ctx.assignment();
                let proxies = self.cfg.topics.proxies();
                let held: BTreeSet<i32> = (0..self.proxy_partitions)
                    .filter(|k| proxies.iter().all(|t| assignment.iter().any(|(at, ap)| at == t && ap == k)))
                    .collect();
                crate::partitioner::provinces_of(&held, self.proxy_partitions).into_iter().collect()
            }
            _ if ctx.owns_all() => Province::ALL.into_iter().collect(),
            _ => BTreeSet::new(),
        };
        let wanted: Option<Vec<Province>> = self.cfg.provinces.as_ref().map(|v| v.iter().filter_map(|p| Province::parse_lenient(p)).collect());
        let owned: BTreeSet<Province> = owned.into_iter().filter(|p| wanted.as_ref().is_none_or(|w| w.contains(p))).collect();
        (!owned.is_empty()).then_some(owned)
    }

    /// Province stage: provinces this member has just been given may have been published by
    /// another member since it last estimated them (from part of their input, if that member
    /// held them only a while). It re-estimates them and publishes every row again as a new
    /// revision, after the other member's, so that the newest message of each key is right.
    pub(super) fn republish(&mut self, gained: &[Province]) {
        if gained.is_empty() {
            return;
        }
        for year in self.ckpt.estimated_years.clone() {
            for p in gained {
                self.ckpt.dirty.entry(year).or_insert(Dirty::Provinces(0)).add(Scope::Province(*p));
            }
        }
        let prefixes: Vec<String> = gained.iter().map(|p| format!("{}/", p.iso_code())).collect();
        for store in [&mut self.ckpt.published, &mut self.ckpt.published_ensemble, &mut self.ckpt.published_grid_intensity] {
            for (key, (_, fingerprint)) in store.rows.iter_mut() {
                if prefixes.iter().any(|x| key.starts_with(x.as_str())) {
                    *fingerprint = FORCE_REPUBLISH;
                }
            }
        }
        // The year caches hold rows computed before the gap.
        for p in gained {
            for c in self.cache.values_mut() {
                c.provinces.remove(p);
            }
        }
    }
}

//! Re-estimation: which years and provinces are owed, a year's estimate for the provinces this
//! process owns, its national rows, grid intensity and comparisons, and publication of what
//! changed.

use super::*;

impl Processor {
    /// Coverage of the current year per province and signal: months received through the
    /// signal's latest month (over all scopes), divided by that month's number; for the
    /// provinces that publish the signal.
    pub(super) fn update_coverage(&self, live: &ProxyPanel) {
        let Some(year) = self.latest_event_year() else { return };
        let mut months: BTreeMap<(co2cast_model::proxy::Signal, Scope), BTreeSet<u32>> = BTreeMap::new();
        for (s, sc, m, _) in live.iter_monthly() {
            if m.year == year {
                months.entry((s, sc)).or_default().insert(m.month);
            }
        }
        for (s, sc, d, _) in live.iter_daily() {
            if d.year() == year {
                months.entry((s, sc)).or_default().insert(d.month());
            }
        }
        let mut latest: BTreeMap<co2cast_model::proxy::Signal, (u32, bool)> = BTreeMap::new();
        for ((s, sc), ms) in &months {
            let e = latest.entry(*s).or_insert((0, false));
            e.0 = e.0.max(ms.iter().copied().max().unwrap_or(0));
            e.1 |= matches!(sc, Scope::Province(_));
        }
        // Signals without months this year (series that ended) leave the gauge, as do
        // provinces that stopped publishing: only what is set below is current.
        co2cast_metrics::metrics().proxy_coverage.reset();
        for (signal, (through, provincial)) in latest {
            let scopes: Vec<Scope> = if provincial { Province::ALL.iter().map(|p| Scope::Province(*p)).collect() } else { vec![Scope::National] };
            for scope in scopes {
                // Only provinces that publish the signal (it had values the year before, in
                // the history or received): a province that never reports alumina is not a
                // coverage gap.
                let published_before = (1..=12).any(|m| {
                    let ym = YearMonth::new(year - 1, m);
                    self.history.proxies.monthly(signal, scope, ym).is_some() || live.monthly(signal, scope, ym).is_some()
                });
                if !published_before && !months.contains_key(&(signal, scope)) {
                    continue;
                }
                let have = months.get(&(signal, scope)).map_or(0, |ms| ms.iter().filter(|m| **m <= through).count());
                let label = scope.code();
                co2cast_metrics::state::set_proxy_coverage(label, signal.as_str(), have as f64 / through.max(1) as f64);
            }
        }
    }

    /// A series whose latest month moves changes the gap/nowcast status of the months after
    /// its earlier frontier, in every year that reads it: the frontier a year's estimate sees
    /// is that of the bundled history up to its base year overlaid with what was received.
    pub(super) fn mark_frontier_moves(&mut self, live: &ProxyPanel) {
        let frontier = Frontier(live.last_months());
        let first_live_year = live.iter_monthly().map(|(_, _, m, _)| m.year).chain(live.iter_daily().map(|(_, _, d, _)| d.year())).min();
        let changes: Vec<_> = self.ckpt.frontier.changes(&frontier).collect();
        if let Some(first) = first_live_year {
            for ((signal, scope), before, after) in changes {
                let last = before.max(after).map_or(first, |m| m.year);
                for year in first..=last {
                    let Some(base) = co2cast_model::estimate::base_year_for(year, &self.inventory_years) else { continue };
                    let history = self
                        .history_frontiers
                        .entry(base)
                        .or_insert_with(|| self.history.proxies.truncated(YearMonth::new(base, 12)).last_months())
                        .get(&(signal, scope))
                        .copied();
                    // The earlier of the two frontiers this year saw.
                    let from = history.max(before.min(after));
                    if from.is_none_or(|f| year >= f.year) {
                        self.ckpt.dirty.entry(year).or_insert(Dirty::Provinces(0)).add(scope);
                    }
                }
            }
        }
        self.ckpt.frontier = frontier;
    }

    /// The last day estimates run to: the latest day any signal has reached, then
    /// `nowcast_months_beyond_data` more months of nowcasts, but never past today.
    pub(super) fn estimate_end(&self) -> Option<NaiveDate> {
        let last_day = self.latest_data_day()?;
        let bound = YearMonth::of(last_day).add_months(self.cfg.nowcast_months_beyond_data as i32).last_day();
        Some(last_day.max(bound.min(shanghai_day(&self.now()))))
    }

    /// Years up to the end of estimates that were never estimated nor owed are owed whole. The
    /// end moves into a new year with data of the year before (a nowcast quarter), and the
    /// messages that move it may all have been marked before it moved.
    pub(super) fn mark_years_the_end_reached(&mut self) {
        let Some(end) = self.estimate_end() else { return };
        let Some(first) = self.ckpt.estimated_years.iter().chain(self.ckpt.dirty.keys()).min().copied() else { return };
        for year in first..=end.year() {
            if !self.ckpt.estimated_years.contains(&year)
                && !self.ckpt.dirty.contains_key(&year)
                && co2cast_model::estimate::base_year_for(year, &self.inventory_years).is_some()
            {
                self.ckpt.dirty.insert(year, Dirty::All);
            }
        }
    }

    /// The days `estimate_end` adds past the latest day any signal reached.
    pub(super) fn nowcast_beyond_data(&self) -> Option<(NaiveDate, NaiveDate)> {
        let last_day = self.latest_data_day()?;
        let end = self.estimate_end()?;
        (end > last_day).then(|| (last_day + Duration::days(1), end))
    }

    /// The Asia/Shanghai day of the latest period end any signal has reached.
    pub(super) fn latest_data_day(&self) -> Option<NaiveDate> {
        let last = self.ckpt.watermarks.signals.values().map(|w| w.max_event_end).max()?;
        Some(shanghai_day(&(last - Duration::seconds(1))))
    }

    /// The Asia/Shanghai year of the latest period end any signal has reached.
    pub(super) fn latest_event_year(&self) -> Option<i32> {
        self.latest_data_day().map(|d| d.year())
    }

    /// Re-estimates a year's dirty provinces and publishes the rows that changed; returns
    /// how many.
    pub(super) fn estimate_year(&mut self, year: i32, dirty: &Dirty, live: &ProxyPanel, owned: &BTreeSet<Province>) -> Result<u64, PipelineError> {
        let inv_years = self.history.inventory.years();
        let Some(&last_inv) = inv_years.iter().filter(|y| **y < year).max() else { return Ok(0) };
        // Days up to the furthest signal watermark and the nowcast months beyond it.
        let Some(last_day) = self.estimate_end() else { return Ok(0) };
        if last_day.year() < year {
            return Ok(0);
        }
        let through = if last_day.year() > year { NaiveDate::from_ymd_opt(year, 12, 31).expect("valid") } else { last_day };
        let horizon = (year - last_inv) as u32;
        let key = (last_inv, horizon);
        if !self.calibrations.contains_key(&key) {
            let cal = calibrate(&self.history.inventory, &self.history.proxies, last_inv, horizon, &self.model)
                .map_err(|e| PipelineError::Calibration(e.to_string()))?;
            self.calibrations.insert(key, cal);
        }
        let cal = &self.calibrations[&key];
        // Reference history up to the base year, overlaid by everything received live.
        let mut panel = self.history.proxies.truncated(YearMonth::new(last_inv, 12));
        for (s, sc, m, v) in live.iter_monthly() {
            panel.set_monthly(s, sc, m, v);
        }
        for (s, sc, d, v) in live.iter_daily() {
            panel.set_daily(s, sc, d, v);
        }
        let heat = self.heat_shares.entry(last_inv).or_insert_with(|| heat_shares(&self.history.proxies, last_inv)).clone();
        let heat_multipliers = CHP_HEAT.member_multipliers(self.cfg.ensemble_seed, self.cfg.ensemble_members);
        let base_inv = self.history.inventory.up_to(last_inv);
        let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
        let est = Estimator { calibration: cal, inventory: &base_inv, proxies: &panel, calendar: &hc, day_factors: &df };
        let months: Vec<YearMonth> = (1..=through.month()).map(|m| YearMonth::new(year, m)).collect();
        let settings = EnsembleSettings { members: self.cfg.ensemble_members, seed: self.cfg.ensemble_seed };
        let wanted: Option<Vec<Province>> =
            self.cfg.provinces.as_ref().map(|v| v.iter().filter_map(|p| Province::parse_lenient(p)).collect());
        let province_stage = self.cfg.role == crate::role::Role::Province;
        self.ckpt.estimated_years.insert(year);
        // A cache for another day range or base year is of no use.
        let reuse = self.cache.get(&year).is_some_and(|c| c.through == through && c.base_year == last_inv);
        let cache = if reuse {
            self.cache.get_mut(&year).expect("checked")
        } else {
            self.cache.insert(year, YearCache { base_year: last_inv, through, days: Vec::new(), provinces: BTreeMap::new(), fallback: BTreeMap::new() });
            self.cache.get_mut(&year).expect("inserted")
        };
        let mut out = Vec::new();
        let mut fresh: BTreeMap<Province, Vec<co2cast_model::estimate::RowEnsemble>> = BTreeMap::new();
        let mut estimated: Vec<Province> = Vec::new();
        for p in Province::ALL {
            if !owned.contains(&p) || (reuse && !dirty.includes(p)) {
                continue;
            }
            let rows: Vec<_> = Sector::ALL.iter().filter_map(|s| est.row(p, *s, &months, settings)).collect();
            if rows.is_empty() {
                cache.provinces.remove(&p);
                continue;
            }
            let ndays = rows[0].days.iter().filter(|d| **d <= through).count();
            cache.days = rows[0].days[..ndays].to_vec();
            let mut py = ProvinceYear {
                rows: Vec::new(),
                central: vec![0.0; ndays],
                members: vec![vec![0.0; ndays]; settings.members],
                coverage_weighted: vec![0.0; ndays],
                source: vec![SourceType::Proxy; ndays],
                data_months: vec![Vec::new(); ndays],
                sector_totals: Vec::new(),
                intensity: rows.iter().find(|r| r.sector == Sector::Power).map(|r| {
                    let generation = co2cast_model::grid_intensity::daily_generation(&panel, p, &r.days[..ndays], &r.central[..ndays]);
                    let h = heat.get(&p).copied().unwrap_or(CHP_HEAT.national_share);
                    co2cast_model::grid_intensity::allocate(r, h, &heat_multipliers, generation, &CHP_HEAT)
                }),
                grid: Vec::new(),
            };
            py.grid = province_grid_rows(p, py.intensity.as_ref(), last_inv);
            for r in &rows {
                for (i, d) in r.daily_estimates(last_inv).into_iter().enumerate().take(ndays) {
                    py.central[i] += d.value_mtco2;
                    py.source[i] = py.source[i].max(d.source_type);
                    if let Some(m) = d.data_through {
                        py.data_months[i].push((m, d.value_mtco2));
                    }
                    py.coverage_weighted[i] += d.coverage * d.value_mtco2;
                    py.rows.push(EstimateRow::from_daily(&d));
                }
                for (acc, m) in py.members.iter_mut().zip(&r.members) {
                    for (x, y) in acc.iter_mut().zip(m) {
                        *x += y;
                    }
                }
                let central: f64 = r.central.iter().take(ndays).sum();
                py.sector_totals.push((r.sector, central, r.members.iter().map(|m| m.iter().take(ndays).sum()).collect()));
            }
            out.extend(py.rows.iter().cloned());
            cache.provinces.insert(p, py);
            estimated.push(p);
            if self.lake.is_some() {
                fresh.insert(p, rows);
            }
        }
        let (grid, sums) = if province_stage {
            // The national stage sums members; Tibet's fallback and national grid rows need
            // every province, so the province stage publishes its own provinces' rows only.
            let mut sums = Vec::new();
            for p in &estimated {
                let py = &cache.provinces[p];
                for (i, d) in cache.days.iter().enumerate() {
                    sums.push(crate::province_ensemble::ProvinceDayEnsemble {
                        province: p.iso_code().to_string(),
                        date: *d,
                        base_year: last_inv,
                        central_mtco2: py.central[i],
                        coverage_weighted_mtco2: py.coverage_weighted[i],
                        source_type: py.source[i],
                        data_months: py.data_months[i].clone(),
                        members_mtco2: py.members.iter().map(|m| m[i]).collect(),
                        revision: 0,
                        settings_fingerprint: crate::province_ensemble::settings_fingerprint(&self.ckpt.settings),
                    });
                }
            }
            (estimated.iter().flat_map(|p| cache.provinces[p].grid.iter().cloned()).collect(), sums)
        } else {
            // Provinces with generation but no power estimate (no inventory: Tibet) take the CO2
            // per kWh of thermal generation of those with one, over the same days.
            cache.fallback.clear();
            let pairs: Vec<(f64, f64)> = cache
                .provinces
                .values()
                .filter_map(|py| py.intensity.as_ref())
                .map(|path| {
                    let mut s = IntensitySum::default();
                    for d in 0..path.days.len() {
                        s.add_day(path, d);
                    }
                    (s.power_mtco2, s.thermal_gwh)
                })
                .collect();
            if let Some(factor) = co2cast_model::grid_intensity::ThermalFactor::from_provinces(&pairs) {
                for p in Province::ALL {
                    if wanted.as_ref().is_some_and(|w| !w.contains(&p)) || cache.provinces.contains_key(&p) {
                        continue;
                    }
                    let generation = co2cast_model::grid_intensity::daily_generation(&panel, p, &cache.days, &vec![1.0; cache.days.len()]);
                    if generation.iter().all(Option::is_none) {
                        continue;
                    }
                    let h = heat.get(&p).copied().unwrap_or(CHP_HEAT.national_share);
                    cache.fallback.insert(p, factor.path(p, &cache.days, generation, h, &heat_multipliers, self.cfg.ensemble_seed, &CHP_HEAT));
                }
            }
            // National rows from the joint ensemble of every province.
            let ndays = cache.days.len();
            let mut central = vec![0.0; ndays];
            let mut members = vec![vec![0.0; ndays]; settings.members];
            let mut cov = vec![0.0; ndays];
            let mut source = vec![SourceType::Proxy; ndays];
            let mut data_months: Vec<Vec<(YearMonth, f64)>> = vec![Vec::new(); ndays];
            for py in cache.provinces.values() {
                for i in 0..ndays {
                    central[i] += py.central[i];
                    cov[i] += py.coverage_weighted[i];
                    source[i] = source[i].max(py.source[i]);
                    data_months[i].extend_from_slice(&py.data_months[i]);
                }
                for (acc, m) in members.iter_mut().zip(&py.members) {
                    for (x, y) in acc.iter_mut().zip(m) {
                        *x += y;
                    }
                }
            }
            for (i, d) in cache.days.iter().enumerate() {
                let col: Vec<f64> = members.iter().map(|m| m[i]).collect();
                let c = if central[i] > 0.0 { cov[i] / central[i] } else { 0.0 };
                let through_month = co2cast_model::estimate::month_behind_half(&mut data_months[i]);
                out.push(EstimateRow::national(*d, &Band::from_members(central[i], &col), source[i], c, through_month, last_inv));
            }
            let grid = grid_rows(cache, last_inv);
            let annual_members: Vec<f64> = members.iter().map(|m| m.iter().sum()).collect();
            self.ckpt.national.insert(year, NationalYear { year, days: ndays, band: Band::from_members(central.iter().sum(), &annual_members) });
            (grid, Vec::new())
        };
        for e in &self.ckpt.published_ensemble.diff(sums) {
            let json = serde_json::to_vec(e).map_err(|e| PipelineError::Internal(format!("encoding member sums as JSON: {e}")))?;
            let key = crate::estimates::Revisioned::key(e);
            self.kafka.send(BaseRecord::to(&self.cfg.topics.ensemble_province).key(key.as_bytes()).payload(&json))?;
        }
        let changed = self.ckpt.published.diff(out);
        let grid_changed = self.ckpt.published_grid_intensity.diff(grid.clone());
        if let Some(lake) = &mut self.lake {
            let at = self.flush_started_at;
            // Every row of each province-month with a changed row (one file each).
            let touched: BTreeSet<(String, u32)> = grid_changed.iter().map(|r| (r.province.clone(), r.date.month())).collect();
            let revisions = &self.ckpt.published_grid_intensity.rows;
            for (province, month) in &touched {
                let rows: Vec<GridIntensityRow> = grid
                    .iter()
                    .filter(|r| r.province == *province && r.date.month() == *month)
                    .map(|r| GridIntensityRow { revision: revisions.get(&r.key()).map_or(0, |x| x.0), ..r.clone() })
                    .collect();
                lake.grid_intensity(&rows, year, *month, province, at);
            }
            if through.month() == 12 && through.day() == 31 && !grid_changed.is_empty() {
                let lines = grid_comparison(&self.cache[&year], &panel, &self.history.grid_references, year, last_inv);
                lake.grid_comparison(year, &lines, at);
            }
        }
        if !grid_changed.is_empty() {
            let batch = crate::grid_intensity::to_batch(&grid_changed, self.flush_started_at);
            let lines = batch_to_json_lines(&batch).map_err(|e| PipelineError::Internal(format!("encoding grid intensity as JSON: {e}")))?;
            for (r, json) in grid_changed.iter().zip(lines) {
                let key = r.key();
                let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.cfg.topics.grid_intensity_daily).key(key.as_bytes()).payload(&json);
                self.kafka.send(rec)?;
            }
            let revisions = grid_changed.iter().filter(|r| r.revision > 0).count() as u64;
            let c = &mut self.ckpt.counters;
            c.grid_intensity_published += grid_changed.len() as u64;
            c.grid_intensity_revisions_published += revisions;
            co2cast_metrics::events::GridIntensityPublished { rows: grid_changed.len() as u64, revisions }.emit();
        }
        if let Some(lake) = &mut self.lake {
            let commit = self.ckpt.sequence + 1;
            let at = self.flush_started_at;
            lake.published(&changed, at, commit);
            // Members of every province-month that changed (all of them when the year's cache
            // was rebuilt, e.g. after a restart).
            let mut months: BTreeSet<(Province, u32)> = BTreeSet::new();
            for r in &changed {
                if let Some(p) = Province::from_iso(&r.province) {
                    months.insert((p, r.date.month()));
                }
            }
            if !reuse {
                for p in fresh.keys() {
                    months.extend((1..=through.month()).map(|m| (*p, m)));
                }
            }
            let published = &self.ckpt.published;
            for (p, m) in months {
                if let Some(rows) = fresh.get(&p) {
                    lake.ensemble(rows, year, m, |k| published.rows.get(k).map(|x| x.0).unwrap_or(0), last_inv);
                }
            }
            // A complete year with an inventory or a national reference value: compare.
            if through.month() == 12 && through.day() == 31 && !changed.is_empty() {
                let lines = self.cache[&year].comparison(&self.history.inventory, &self.history.references, year, &self.ckpt.national[&year].band, last_inv, self.cfg.provinces.is_none());
                if !lines.is_empty() {
                    lake.comparison(year, &lines, at);
                }
            }
        }
        if changed.is_empty() {
            return Ok(0);
        }
        let c = &mut self.ckpt.counters;
        c.estimates_published += changed.len() as u64;
        c.estimate_revisions_published += changed.iter().filter(|r| r.revision > 0).count() as u64;
        let mut by_sector: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for r in &changed {
            let e = by_sector.entry(r.sector.as_str()).or_default();
            e.0 += 1;
            e.1 += u64::from(r.revision > 0);
            let newest = self.newest_published.entry(r.sector.clone()).or_insert(r.date);
            if r.date >= *newest {
                *newest = r.date;
                co2cast_metrics::state::set_newest_published_day_end(&r.sector, day_end_unix_s(r.date));
            }
        }
        for (sector, (rows, revisions)) in by_sector {
            co2cast_metrics::events::EstimatesPublished { sector, rows, revisions }.emit();
        }
        self.kafka.publish_estimates(&self.cfg.topics.estimates_daily, &changed, self.flush_started_at)?;
        Ok(changed.len() as u64)
    }
}

/// A province's rows of one year, kept so that a change in one province re-estimates only
/// that province; national rows are re-summed from the members.
pub(super) struct ProvinceYear {
    pub(super) rows: Vec<EstimateRow>,
    pub(super) central: Vec<f64>,
    /// Members × days, summed over sectors.
    pub(super) members: Vec<Vec<f64>>,
    /// Σ coverage·value and source type per day, for the national rows.
    pub(super) coverage_weighted: Vec<f64>,
    pub(super) source: Vec<SourceType>,
    /// Per day, each row's `data_through` and central CO2 (rows a monthly signal drives).
    pub(super) data_months: Vec<Vec<(YearMonth, f64)>>,
    /// Per sector: central and member sums over the days estimated (for the comparison).
    pub(super) sector_totals: Vec<(Sector, f64, Vec<f64>)>,
    /// Power CO2 split into heat and electricity, with generation (grid intensity).
    pub(super) intensity: Option<IntensityPath>,
    /// The province's grid intensity rows (computed once per re-estimation).
    pub(super) grid: Vec<GridIntensityRow>,
}

pub(super) struct YearCache {
    pub(super) base_year: i32,
    pub(super) through: NaiveDate,
    pub(super) days: Vec<NaiveDate>,
    pub(super) provinces: BTreeMap<Province, ProvinceYear>,
    /// Intensity of provinces with generation but no power estimate (no inventory: Tibet).
    pub(super) fallback: BTreeMap<Province, IntensityPath>,
}

impl YearCache {
    /// Every province's intensity path: from its power estimate, or its fallback.
    pub(super) fn intensity_paths(&self) -> impl Iterator<Item = (Province, &IntensityPath)> {
        self.provinces.iter().filter_map(|(p, py)| py.intensity.as_ref().map(|i| (*p, i))).chain(self.fallback.iter().map(|(p, i)| (*p, i)))
    }

    /// Estimated totals of the year against the inventory: per province and sector, per
    /// province (sectors with an inventory value), and national (`national` band); and the
    /// national total against every national reference holding the year.
    pub(super) fn comparison(
        &self,
        inv: &co2cast_model::inventory::InventoryPanel,
        references: &[co2cast_model::references::NationalReference],
        year: i32,
        national: &Band,
        base_year: i32,
        whole_country: bool,
    ) -> Vec<crate::lake::ComparisonLine> {
        let ceads = co2cast_data::proxies::national_reference("ceads", BTreeMap::new());
        let line = |province: &str, sector: &str, band: Band, reference: &co2cast_model::references::NationalReference, value: f64| crate::lake::ComparisonLine {
            province: province.into(),
            sector: sector.into(),
            band,
            reference: reference.source.clone(),
            reference_mtco2: value,
            reference_scope: reference.scope.clone(),
            scope_difference: reference.scope_difference.clone(),
            base_year,
        };
        let mut lines = Vec::new();
        let mut nat_inv = 0.0;
        for (p, py) in &self.provinces {
            let mut prov_central = 0.0;
            let mut prov_members: Vec<f64> = Vec::new();
            let mut prov_inv = 0.0;
            for (s, central, members) in &py.sector_totals {
                prov_central += central;
                prov_members.resize(members.len(), 0.0);
                prov_members.iter_mut().zip(members).for_each(|(a, b)| *a += b);
                if let Some(v) = inv.sector(*p, *s, year) {
                    prov_inv += v;
                    lines.push(line(p.iso_code(), s.as_str(), Band::from_members(*central, members), &ceads, v));
                }
            }
            if prov_inv > 0.0 {
                nat_inv += prov_inv;
                lines.push(line(p.iso_code(), "all", Band::from_members(prov_central, &prov_members), &ceads, prov_inv));
            }
        }
        if nat_inv > 0.0 {
            lines.push(line("CN", "all", *national, &ceads, nat_inv));
        }
        // National references cover the whole country: a run over some provinces does not compare.
        if whole_country {
            for r in references.iter().filter(|r| r.source != "ceads") {
                if let Some(v) = r.values.get(&year) {
                    lines.push(line("CN", "all", *national, r, *v));
                }
            }
        }
        lines
    }
}

/// CHP heat shares of every province's power CO2 for base year `base_year`: its district
/// heating area (the latest register up to the base year) and thermal generation.
pub(super) fn heat_shares(history: &ProxyPanel, base_year: i32) -> BTreeMap<Province, f64> {
    let (mut area, mut thermal) = (BTreeMap::new(), BTreeMap::new());
    for p in Province::ALL {
        let scope = Scope::Province(p);
        if let Some(a) = (base_year - 5..=base_year).rev().find_map(|y| history.monthly(co2cast_model::proxy::Signal::HeatingArea, scope, YearMonth::new(y, 12))) {
            area.insert(p, a);
        }
        let t: f64 = (1..=12).filter_map(|m| history.monthly(co2cast_model::proxy::Signal::ThermalGeneration, scope, YearMonth::new(base_year, m))).sum();
        if t > 0.0 {
            thermal.insert(p, t);
        }
    }
    CHP_HEAT.provincial_shares(&area, &thermal)
}

/// A province's grid intensity rows: every day with generation.
pub(super) fn province_grid_rows(p: Province, path: Option<&IntensityPath>, base_year: i32) -> Vec<GridIntensityRow> {
    let Some(path) = path else { return Vec::new() };
    (0..path.days.len())
        .filter_map(|d| {
            let mix = path.generation[d]?;
            let mut day = IntensitySum::default();
            day.add_day(path, d);
            GridIntensityRow::new(path.days[d], p.iso_code(), &day, &mix, 1, base_year)
        })
        .collect()
}

/// Grid intensity rows of a year: every province-day with generation, and the national sum of
/// the provinces with generation that day (member-wise).
pub(super) fn grid_rows(cache: &YearCache, base_year: i32) -> Vec<GridIntensityRow> {
    let n = cache.days.len();
    let mut national: Vec<(IntensitySum, Option<GenerationMix>, i32)> = vec![(IntensitySum::default(), None, 0); n];
    let mut rows = Vec::new();
    for py in cache.provinces.values() {
        rows.extend(py.grid.iter().cloned());
    }
    for (p, path) in &cache.fallback {
        rows.extend(province_grid_rows(*p, Some(path), base_year));
    }
    for (_, path) in cache.intensity_paths() {
        for d in 0..path.days.len().min(n) {
            let Some(mix) = path.generation[d] else { continue };
            let (sum, total, count) = &mut national[d];
            sum.add_day(path, d);
            *count += 1;
            let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            };
            *total = Some(match total {
                None => mix,
                Some(t) => GenerationMix {
                    thermal_gwh: t.thermal_gwh + mix.thermal_gwh,
                    hydro_gwh: add(t.hydro_gwh, mix.hydro_gwh),
                    wind_gwh: add(t.wind_gwh, mix.wind_gwh),
                    solar_gwh: add(t.solar_gwh, mix.solar_gwh),
                    nuclear_gwh: add(t.nuclear_gwh, mix.nuclear_gwh),
                    carried_forward: t.carried_forward | mix.carried_forward,
                },
            });
        }
    }
    for (d, (sum, mix, count)) in national.iter().enumerate() {
        if let Some(mix) = mix {
            rows.extend(GridIntensityRow::new(cache.days[d], "CN", sum, mix, *count, base_year));
        }
    }
    rows
}

/// Annual intensity of each province and of China (days with generation, member-wise) beside
/// the published factors of the year, with each province's consumption for its trade balance.
pub(super) fn grid_comparison(cache: &YearCache, panel: &ProxyPanel, references: &[co2cast_model::references::GridReference], year: i32, base_year: i32) -> Vec<GridComparisonLine> {
    let reference = |p: Option<Province>| {
        references.iter().find(|r| r.year == year && r.province == p).map(|r| (r.source.clone(), r.gco2_per_kwh))
    };
    let mut national = IntensitySum::default();
    let mut national_consumption = Some(0.0);
    let mut lines = Vec::new();
    for (p, path) in cache.intensity_paths() {
        let mut sum = IntensitySum::default();
        for d in 0..path.days.len() {
            sum.add_day(path, d);
        }
        let Some(band) = sum.band() else { continue };
        let months: Vec<f64> = (1..=12).filter_map(|m| panel.monthly(co2cast_model::proxy::Signal::ElectricityConsumption, Scope::Province(p), YearMonth::new(year, m))).collect();
        let consumption = (months.len() == 12).then(|| months.iter().sum::<f64>());
        national_consumption = national_consumption.zip(consumption).map(|(a, b)| a + b);
        national.add(&sum);
        lines.push(GridComparisonLine {
            province: p.iso_code().to_string(),
            intensity_gco2_per_kwh: band.central,
            p2_5: band.p2_5,
            p97_5: band.p97_5,
            generation_gwh: sum.generation_gwh,
            consumption_gwh: consumption,
            reference: reference(Some(p)),
            base_year,
        });
    }
    if let Some(band) = national.band() {
        lines.push(GridComparisonLine {
            province: "CN".into(),
            intensity_gco2_per_kwh: band.central,
            p2_5: band.p2_5,
            p97_5: band.p97_5,
            generation_gwh: national.generation_gwh,
            consumption_gwh: national_consumption,
            reference: reference(None),
            base_year,
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use co2cast_model::inventory::{InventoryItem, InventoryPanel};

    fn cache(provinces: &[Province]) -> YearCache {
        let band_members = |v: f64| vec![v * 0.98, v, v * 1.02];
        let provinces = provinces
            .iter()
            .map(|p| {
                let py = ProvinceYear {
                    rows: Vec::new(),
                    central: Vec::new(),
                    members: Vec::new(),
                    coverage_weighted: Vec::new(),
                    source: Vec::new(),
                    data_months: Vec::new(),
                    sector_totals: vec![(Sector::Power, 100.0, band_members(100.0)), (Sector::Industry, 50.0, band_members(50.0))],
                    intensity: None,
                    grid: Vec::new(),
                };
                (*p, py)
            })
            .collect();
        YearCache { base_year: 2019, through: NaiveDate::from_ymd_opt(2021, 12, 31).unwrap(), days: Vec::new(), provinces, fallback: BTreeMap::new() }
    }

    fn reference(source: &str, year: i32, v: f64) -> co2cast_model::references::NationalReference {
        co2cast_data::proxies::national_reference(source, BTreeMap::from([(year, v)]))
    }

    #[test]
    fn settings_that_would_be_dropped_later_are_refused_when_loaded() {
        let ok = ProcessorConfig { provinces: Some(vec!["CN-GD".into(), "Hebei".into()]), now_override: Some("2020-01-01T00:00:00+08:00".into()), ..ProcessorConfig::default() };
        ok.validate().unwrap();
        let bad = [
            ProcessorConfig { provinces: Some(vec!["CN-GD".into(), "Atlantis".into()]), ..ProcessorConfig::default() },
            ProcessorConfig { provinces: Some(Vec::new()), ..ProcessorConfig::default() },
            ProcessorConfig { now_override: Some("yesterday".into()), ..ProcessorConfig::default() },
            ProcessorConfig { ensemble_members: 0, ..ProcessorConfig::default() },
            ProcessorConfig { nowcast_months_beyond_data: MAX_NOWCAST_MONTHS_BEYOND_DATA + 1, ..ProcessorConfig::default() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert!(load_model_config(Some(std::path::Path::new("/nonexistent/model.json"))).is_err());
        let default = load_model_config(Some(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/estimator-default.json"))).unwrap();
        assert_eq!(serde_json::to_string(&default).unwrap(), serde_json::to_string(&ModelConfig::default()).unwrap());
    }

    #[test]
    fn a_year_after_the_inventory_is_compared_with_every_national_reference_holding_it() {
        let refs = [reference("gcp", 2021, 11_472.0), reference("energy_institute", 2021, 10_523.0), reference("energy_institute", 2022, 10_550.0)];
        let national = Band::from_members(11_000.0, &[10_500.0, 11_000.0, 11_600.0]);
        let c = cache(&Province::ALL);
        let lines = c.comparison(&InventoryPanel::new("none"), &refs, 2021, &national, 2019, true);
        let got: Vec<(&str, &str, f64)> = lines.iter().map(|l| (l.province.as_str(), l.reference.as_str(), l.reference_mtco2)).collect();
        assert_eq!(got, vec![("CN", "gcp", 11_472.0), ("CN", "energy_institute", 10_523.0)], "no inventory in 2021: national references only");
        assert!(lines.iter().all(|l| l.band == national && !l.reference_scope.is_empty() && !l.scope_difference.is_empty()));
        // A run over some provinces is not the country.
        assert!(c.comparison(&InventoryPanel::new("none"), &refs, 2021, &national, 2019, false).is_empty());
    }

    #[test]
    fn an_inventory_year_compares_provinces_and_the_nation_with_ceads_and_the_references() {
        let mut inv = InventoryPanel::new("test");
        inv.add(Province::Guangdong, InventoryItem::Sector(Sector::Power), 2019, 110.0);
        inv.add(Province::Hebei, InventoryItem::Sector(Sector::Industry), 2019, 40.0);
        let national = Band::from_members(300.0, &[290.0, 300.0, 310.0]);
        let c = cache(&[Province::Guangdong, Province::Hebei]);
        let lines = c.comparison(&inv, &[reference("gcp", 2019, 10_740.0)], 2019, &national, 2018, true);
        let got: Vec<(&str, &str, &str, f64)> = lines.iter().map(|l| (l.province.as_str(), l.sector.as_str(), l.reference.as_str(), l.reference_mtco2)).collect();
        assert_eq!(
            got,
            vec![
                ("CN-HE", "industry", "ceads", 40.0),
                ("CN-HE", "all", "ceads", 40.0),
                ("CN-GD", "power", "ceads", 110.0),
                ("CN-GD", "all", "ceads", 110.0),
                ("CN", "all", "ceads", 150.0),
                ("CN", "all", "gcp", 10_740.0),
            ]
        );
        // A province's band sums its sectors' members (only sectors with an inventory value
        // count towards the inventory, every sector towards the estimate).
        assert_eq!(lines[1].band.central, 150.0);
    }
}

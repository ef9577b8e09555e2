//! Ingest: messages from the group's batches and the national partitions, validated into the
//! keyed state or dead-lettered with their provenance, with offsets recorded for the checkpoint.

use super::*;

impl Processor {
    /// Province stage: national messages from the national partition of every proxy topic,
    /// read by assignment (messages of provinces there belong to that partition's owner).
    /// Returns how many were handled.
    pub(super) fn poll_national(&mut self) -> Result<usize, PipelineError> {
        let Some(reader) = self.national_reader.take() else { return Ok(0) };
        let result = (|| {
            let now = self.now();
            let received_at = Utc::now();
            let mut handled = 0;
            while handled < 10_000 {
                let m = match reader.poll(std::time::Duration::ZERO) {
                    None => break,
                    Some(Err(e)) => {
                        co2cast_metrics::events::BrokerRequestFailed { operation: "consume", error: &e, domain: co2cast_metrics::ErrorDomain::External, retry_in: None, attempt: 0 }.emit();
                        break;
                    }
                    Some(Ok(m)) => m,
                };
                use rdkafka::Message;
                let key = m.key();
                let national = key.and_then(|k| std::str::from_utf8(k).ok()).and_then(crate::partitioner::key_scope) == Some(Scope::National);
                if national {
                    if self.oldest_unflushed.is_none() {
                        self.oldest_unflushed = Some(Instant::now());
                    }
                    let e = crate::source::BatchEntry::located(Arc::from(m.topic()), m.partition(), m.offset());
                    self.handle(now, received_at, &e, key, m.payload())?;
                    handled += 1;
                }
                let slot = self.ckpt.offsets.entry(national_reader_key(m.topic())).or_insert(0);
                *slot = (*slot).max(m.offset() + 1);
            }
            Ok(handled)
        })();
        self.national_reader = Some(reader);
        if let Some(rc) = &self.received_counter {
            rc.store(self.ckpt.counters.received - self.received_at_start, Ordering::Relaxed);
        }
        result
    }

    /// Every assigned partition has been read to its high watermark. (Some brokers report a
    /// stale high watermark, e.g. tansu 0.6 after batched produce; callers therefore also
    /// require input to have been quiet.)
    pub(super) fn caught_up(&self) -> Result<bool, PipelineError> {
        let assignment = self.consumer.assignment().map_err(kafka("assignment"))?;
        if assignment.count() == 0 {
            return Ok(false);
        }
        for e in assignment.elements() {
            let high = match self.consumer.fetch_watermarks(e.topic(), e.partition(), std::time::Duration::from_secs(5)) {
                Ok((_, high)) => high,
                Err(err) => {
                    // Not known to be caught up; asked again at the next idle check.
                    co2cast_metrics::events::BrokerRequestFailed { operation: "watermarks", error: &err, domain: co2cast_metrics::ErrorDomain::External, retry_in: None, attempt: 0 }
                        .emit();
                    return Ok(false);
                }
            };
            let next = self.ckpt.offsets.get(&partition_key(e.topic(), e.partition())).copied().unwrap_or(0);
            if next < high {
                return Ok(false);
            }
        }
        if let Some(reader) = &self.national_reader {
            for t in self.cfg.topics.proxies() {
                let Ok((_, high)) = reader.fetch_watermarks(t, crate::partitioner::NATIONAL_PARTITION, std::time::Duration::from_secs(5)) else { return Ok(false) };
                if self.ckpt.offsets.get(&national_reader_key(t)).copied().unwrap_or(0) < high {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Handles a batch; flushes inside it when `checkpoint_every_messages` is reached, with
    /// offsets recorded up to the message handled last.
    /// Returns false when `stop` was set at an in-batch flush; the rest of the batch is then
    /// left unhandled (it is after the checkpoint, so a restart reads it again).
    pub(super) fn handle_batch(
        &mut self,
        batch: &MessageBatch,
        stop: &AtomicBool,
        on_progress: &mut dyn FnMut(&crate::checkpoint::Counters),
    ) -> Result<bool, PipelineError> {
        let now = self.now();
        let received_at = Utc::now();
        if !batch.entries.is_empty() && self.oldest_unflushed.is_none() {
            self.oldest_unflushed = batch.first_polled.or(Some(Instant::now()));
        }
        // The current run of messages from one partition: (entry index of its start, next offset).
        let mut run: Option<(usize, i64)> = None;
        for (i, e) in batch.entries.iter().enumerate() {
            if let Some((start, next)) = run
                && (batch.entries[start].partition != e.partition || !Arc::ptr_eq(&batch.entries[start].topic, &e.topic))
            {
                self.record_offset(&batch.entries[start], next);
                run = None;
            }
            self.handle(now, received_at, e, batch.key(e), batch.payload(e))?;
            run = Some((run.map_or(i, |r| r.0), e.offset + 1));
            if self.since_flush >= self.cfg.checkpoint_every_messages {
                if let Some((start, next)) = run.take() {
                    self.record_offset(&batch.entries[start], next);
                }
                self.flush_with(true)?;
                on_progress(&self.ckpt.counters);
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                if i + 1 < batch.entries.len() {
                    self.oldest_unflushed = Some(Instant::now());
                }
            }
        }
        if let Some((start, next)) = run {
            self.record_offset(&batch.entries[start], next);
        }
        if let Some(rc) = &self.received_counter {
            rc.store(self.ckpt.counters.received - self.received_at_start, Ordering::Relaxed);
        }
        self.emit_family_counts();
        Ok(true)
    }

    pub(super) fn record_offset(&mut self, e: &crate::source::BatchEntry, next: i64) {
        let k = partition_key(&e.topic, e.partition);
        let slot = self.ckpt.offsets.entry(k).or_insert(next);
        *slot = (*slot).max(next);
    }

    /// `now` is the reference time of validation; `received_at` the wall clock of the batch.
    pub(super) fn handle(
        &mut self,
        now: DateTime<Utc>,
        received_at: DateTime<Utc>,
        e: &crate::source::BatchEntry,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<(), PipelineError> {
        let (topic, partition, offset) = (&*e.topic, e.partition, e.offset);
        let family = match &self.last_topic {
            Some((t, f)) if Arc::ptr_eq(t, &e.topic) => *f,
            _ => {
                let f = self.cfg.topics.family(topic);
                self.last_topic = Some((e.topic.clone(), f));
                f
            }
        };
        let fi = family.map_or(FAMILY_SLOTS - 1, |f| f as usize);
        self.family_counts[fi][0] += 1;
        let c = &mut self.ckpt.counters;
        c.received += 1;
        self.since_flush += 1;
        let result = match payload {
            None => Err(co2cast_ingest::Reject { code: co2cast_ingest::RejectCode::MalformedJson, reason: "empty payload".into() }),
            Some(p) => match family {
                Some(family) => validate_family(family, key, p, now, &self.caps, &self.rules),
                None => Err(co2cast_ingest::Reject {
                    code: co2cast_ingest::RejectCode::UnknownTopic,
                    reason: format!("`{topic}` is not a proxy topic of this pipeline"),
                }),
            },
        };
        // Province members own provinces by partition: a province's message elsewhere would
        // reach a member that does not estimate it.
        let result = match result {
            Ok(v) if self.cfg.role == crate::role::Role::Province => match v.scope {
                Scope::Province(p) if self.proxy_partitions > 0 && crate::partitioner::province_partition(p, self.proxy_partitions) != partition => {
                    Err(co2cast_ingest::Reject {
                        code: co2cast_ingest::RejectCode::WrongPartition,
                        reason: format!(
                            "{} belongs to partition {} of {} (its index in the province list modulo the partitions; see docs/pipeline.md, Partitioning)",
                            p.iso_code(),
                            crate::partitioner::province_partition(p, self.proxy_partitions),
                            self.proxy_partitions
                        ),
                    })
                }
                Scope::National if self.proxy_partitions > 0 && partition != crate::partitioner::NATIONAL_PARTITION => Err(co2cast_ingest::Reject {
                    code: co2cast_ingest::RejectCode::WrongPartition,
                    reason: format!("national messages belong to partition {} (see docs/pipeline.md, Partitioning)", crate::partitioner::NATIONAL_PARTITION),
                }),
                _ => Ok(v),
            },
            other => other,
        };
        match result {
            Ok(v) => {
                c.accepted += 1;
                self.family_counts[fi][1] += 1;
                let up = self.ckpt.state.upsert(&v);
                match up {
                    co2cast_ingest::Upsert::Revised { .. } => {
                        c.revisions += 1;
                        self.family_counts[fi][3] += 1;
                    }
                    co2cast_ingest::Upsert::Duplicate | co2cast_ingest::Upsert::Stale => c.accepted_unchanged += 1,
                    co2cast_ingest::Upsert::Inserted => {}
                }
                // Four granularities (hour, day, month, year) per signal.
                let slot = v.signal as usize * 4 + v.granularity as usize;
                if self.stream_keys.len() <= slot {
                    self.stream_keys.resize(slot + 1, None);
                }
                let stream = self.stream_keys[slot]
                    .get_or_insert_with(|| co2cast_ingest::watermark::stream_key(v.signal, v.granularity).into_boxed_str());
                if let Arrival::Late { .. } = self.ckpt.watermarks.observe(stream, v.period_end_s(), now) {
                    c.late += 1;
                    self.family_counts[fi][2] += 1;
                }
                if up.changed() {
                    // A scope's messages mostly fall in the year it marked last.
                    let slot = match v.scope {
                        Scope::Province(p) => p.index(),
                        Scope::National => Province::ALL.len(),
                    };
                    if !self.marked_year[slot].is_some_and(|(from, to)| (from..to).contains(&v.period_start_s)) {
                        use co2cast_model::calendar::civil::{shanghai_year, shanghai_year_start};
                        let y = shanghai_year(v.period_start_s);
                        // Every year whose estimate reads values of year y.
                        let last = self.estimate_end().map_or(y as i32, |d| d.year());
                        for year in co2cast_model::estimate::years_reading(y as i32, &self.inventory_years, last) {
                            // The year before reads only January (its December's days run into
                            // it): re-estimated when it has estimates, never started for it.
                            if year < y as i32 && !self.ckpt.estimated_years.contains(&year) {
                                continue;
                            }
                            self.ckpt.dirty.entry(year).or_insert(Dirty::Provinces(0)).add(v.scope);
                        }
                        self.marked_year[slot] = Some((shanghai_year_start(y), shanghai_year_start(y + 1)));
                    }
                }
                // The lake's `proxies` table is the state's changelog: values read again
                // (duplicates, stale revisions, a replay after a restart) add nothing.
                if let Some(l) = &mut self.lake
                    && up.changed()
                {
                    l.accepted.push(crate::lake::AcceptedProxy { proxy: v, topic: e.topic.clone(), partition, offset, received_at });
                }
                Ok(())
            }
            Err(r) => {
                c.dead_lettered += 1;
                *c.dead_lettered_by_code.entry(r.code.as_str().to_string()).or_insert(0) += 1;
                co2cast_metrics::events::ProxyMessageDeadLettered {
                    family: family_label(family),
                    code: r.code.as_str(),
                    reason: &r.reason,
                    topic,
                    partition,
                    offset,
                }
                .emit();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "source_topic", value: Some(topic) })
                    .insert(Header { key: "source_partition", value: Some(&partition.to_string()) })
                    .insert(Header { key: "source_offset", value: Some(&offset.to_string()) })
                    .insert(Header { key: "error_code", value: Some(r.code.as_str()) })
                    .insert(Header { key: "error_reason", value: Some(&r.reason) });
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.cfg.topics.dead_letter).payload(payload.unwrap_or(&[])).headers(headers);
                if let Some(k) = key {
                    rec = rec.key(k);
                }
                self.kafka.send(rec)
            }
        }
    }
}

/// An exclusive lock on `<dir>/<name>` (created with the directory), released when the file
/// is closed, also when the process is killed; or a configuration error naming the holder.
/// The checkpoint key of the province stage's own read of a topic's national partition.
pub(super) fn national_reader_key(topic: &str) -> String {
    format!("{topic}/{}@national", crate::partitioner::NATIONAL_PARTITION)
}

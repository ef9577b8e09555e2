use crate::metrics;

/// Rows of one sector were published to the estimates topic.
pub struct EstimatesPublished<'a> {
    pub sector: &'a str,
    pub rows: u64,
    /// Of `rows`, those that revise an earlier vintage.
    pub revisions: u64,
}

impl EstimatesPublished<'_> {
    pub fn emit(self) {
        tracing::debug!(message = "Estimates published.", sector = self.sector, rows = self.rows, revisions = self.revisions);
        let m = metrics();
        m.estimate_published.with_label_values(&[self.sector]).inc_by(self.rows);
        m.estimate_revised.with_label_values(&[self.sector]).inc_by(self.revisions);
    }
}

/// Grid intensity rows were published to their topic.
pub struct GridIntensityPublished {
    pub rows: u64,
    /// Of `rows`, those that revise an earlier vintage.
    pub revisions: u64,
}

impl GridIntensityPublished {
    pub fn emit(self) {
        tracing::debug!(message = "Grid intensity published.", rows = self.rows, revisions = self.revisions);
        let m = metrics();
        m.grid_intensity_published.inc_by(self.rows);
        m.grid_intensity_revised.inc_by(self.revisions);
    }
}

/// A flush re-estimated what changed and published it.
pub struct FlushCompleted {
    pub reestimation: std::time::Duration,
    pub rows: u64,
    pub years: usize,
}

impl FlushCompleted {
    pub fn emit(self) {
        tracing::debug!(message = "Re-estimated and published.", seconds = self.reestimation.as_secs_f64(), rows = self.rows, years = self.years);
        let m = metrics();
        m.estimate_reestimation_duration.observe(self.reestimation.as_secs_f64());
        m.estimate_flush_rows.observe(self.rows as f64);
    }
}

/// A member-sum message the national stage could not read: dead-lettered, logged and counted.
pub struct MemberSumsDeadLettered<'a> {
    pub reason: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl MemberSumsDeadLettered<'_> {
    pub fn emit(self) {
        tracing::warn!(message = "Member sums dead-lettered.", reason = self.reason, topic = self.topic, partition = self.partition, offset = self.offset);
        metrics().member_sums_dead_lettered.inc();
    }
}

/// A message of the estimates topic the lake writer could not read as a row.
pub struct LakeWriterRejected<'a> {
    pub error: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl LakeWriterRejected<'_> {
    pub fn emit(self) {
        tracing::warn!(message = "Not an estimate row; kept out of the lake.", error = self.error, topic = self.topic, partition = self.partition, offset = self.offset);
        metrics().lake_writer_rejected.inc();
    }
}

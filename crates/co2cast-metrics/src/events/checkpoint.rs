use crate::metrics;

pub struct CheckpointWritten {
    pub sequence: u64,
    pub duration: std::time::Duration,
}

impl CheckpointWritten {
    pub fn emit(self) {
        tracing::debug!(message = "Checkpoint written.", sequence = self.sequence, seconds = self.duration.as_secs_f64());
        let m = metrics();
        m.checkpoint_writes.inc();
        m.checkpoint_duration.observe(self.duration.as_secs_f64());
        m.checkpoint_age.set_since("", crate::unix_now_s());
    }
}

pub struct CheckpointFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl CheckpointFailed<'_> {
    pub fn emit(self) {
        tracing::error!(message = "Checkpoint could not be written.", error = %self.error);
        metrics().checkpoint_errors.inc();
    }
}

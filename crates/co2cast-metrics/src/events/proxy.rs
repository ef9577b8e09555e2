use crate::metrics;

/// A batch of proxy messages of one topic family was handled.
pub struct ProxyMessagesHandled<'a> {
    pub family: &'a str,
    pub received: u64,
    pub accepted: u64,
    pub late: u64,
    pub revised: u64,
}

impl ProxyMessagesHandled<'_> {
    pub fn emit(self) {
        tracing::trace!(message = "Proxy messages handled.", family = self.family, received = self.received, accepted = self.accepted, late = self.late, revised = self.revised);
        let m = metrics();
        let l = &[self.family];
        m.proxy_received.with_label_values(l).inc_by(self.received);
        m.proxy_accepted.with_label_values(l).inc_by(self.accepted);
        m.proxy_late.with_label_values(l).inc_by(self.late);
        m.proxy_revised.with_label_values(l).inc_by(self.revised);
    }
}

/// A proxy message was rejected and sent to the dead-letter topic.
pub struct ProxyMessageDeadLettered<'a> {
    pub family: &'a str,
    pub code: &'a str,
    pub reason: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl ProxyMessageDeadLettered<'_> {
    pub fn emit(self) {
        tracing::warn!(
            message = "Proxy message dead-lettered.",
            code = self.code,
            reason = self.reason,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset
        );
        metrics().proxy_dead_lettered.with_label_values(&[self.family, self.code]).inc();
    }
}

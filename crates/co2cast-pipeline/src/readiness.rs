//! The processor's readiness, as `/readyz` reports it: partitions assigned, caught up within
//! a bound, input checkpointed recently, brokers reachable. The processor updates these
//! atomics as it works (also while it retries a broker), and the check reads them from the
//! endpoint's thread.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

#[derive(Debug, Default)]
pub struct ProcessorStatus {
    pub subscribed: AtomicBool,
    pub assigned_partitions: AtomicUsize,
    pub lag_messages: AtomicI64,
    /// Unix milliseconds of the oldest input handled but not checkpointed (0: none).
    pub unflushed_since_ms: AtomicU64,
    /// Unix milliseconds since which the brokers have been unreachable (0: they answer).
    pub broker_down_since_ms: AtomicU64,
    pub checkpoint_failing: AtomicBool,
    pub max_lag_messages: u64,
    pub max_checkpoint_delay_s: u64,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl ProcessorStatus {
    pub fn new(max_lag_messages: u64, max_checkpoint_delay_s: u64) -> Arc<ProcessorStatus> {
        Arc::new(ProcessorStatus { max_lag_messages, max_checkpoint_delay_s, ..Default::default() })
    }

    /// The verdict `/readyz` gives.
    pub fn check(&self) -> Result<(), String> {
        let now = unix_ms();
        let down = self.broker_down_since_ms.load(Ordering::Acquire);
        if down > 0 {
            return Err(format!("brokers unreachable for {:.0} s", now.saturating_sub(down) as f64 / 1000.0));
        }
        if !self.subscribed.load(Ordering::Acquire) {
            return Err("not subscribed yet (waiting for the brokers)".into());
        }
        if self.assigned_partitions.load(Ordering::Acquire) == 0 {
            return Err("no partitions assigned".into());
        }
        let lag = self.lag_messages.load(Ordering::Acquire);
        if lag > i64::try_from(self.max_lag_messages).unwrap_or(i64::MAX) {
            return Err(format!("{lag} messages behind (at most {} for ready)", self.max_lag_messages));
        }
        if self.checkpoint_failing.load(Ordering::Acquire) {
            return Err("the last checkpoint failed".into());
        }
        let since = self.unflushed_since_ms.load(Ordering::Acquire);
        if since > 0 && now.saturating_sub(since) > self.max_checkpoint_delay_s.saturating_mul(1000) {
            return Err(format!(
                "input handled {:.0} s ago is not checkpointed yet (at most {} s for ready)",
                now.saturating_sub(since) as f64 / 1000.0,
                self.max_checkpoint_delay_s
            ));
        }
        Ok(())
    }

    /// Registers this status as the `processor` readiness check (replacing an earlier one).
    pub fn register(self: &Arc<Self>) {
        let weak: Weak<ProcessorStatus> = Arc::downgrade(self);
        co2cast_metrics::health::set_check("processor", move || match weak.upgrade() {
            Some(s) => s.check(),
            None => Err("the processor has stopped".into()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_condition_makes_the_processor_unready() {
        let s = ProcessorStatus::new(100, 60);
        assert!(s.check().unwrap_err().contains("not subscribed"));
        s.subscribed.store(true, Ordering::Release);
        assert!(s.check().unwrap_err().contains("no partitions"));
        s.assigned_partitions.store(4, Ordering::Release);
        assert_eq!(s.check(), Ok(()));
        s.lag_messages.store(101, Ordering::Release);
        assert!(s.check().unwrap_err().contains("101 messages behind"));
        s.lag_messages.store(100, Ordering::Release);
        s.unflushed_since_ms.store(unix_ms() - 61_000, Ordering::Release);
        assert!(s.check().unwrap_err().contains("not checkpointed"));
        s.unflushed_since_ms.store(unix_ms() - 1_000, Ordering::Release);
        assert_eq!(s.check(), Ok(()));
        s.broker_down_since_ms.store(unix_ms() - 5_000, Ordering::Release);
        assert!(s.check().unwrap_err().contains("unreachable"));
        s.broker_down_since_ms.store(0, Ordering::Release);
        s.checkpoint_failing.store(true, Ordering::Release);
        assert!(s.check().unwrap_err().contains("checkpoint failed"));
    }
}

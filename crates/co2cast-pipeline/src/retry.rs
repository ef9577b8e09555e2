//! Bounded exponential backoff for requests to the brokers: 100 ms, doubling, capped; the
//! caller decides what is worth retrying (see [`crate::error::PipelineError::retry_hint`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    pub attempt: u32,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff { next: Duration::from_millis(100).min(max), max, attempt: 0 }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempt += 1;
        d
    }
}

/// Sleeps `d` in short steps; false if `stop` was set meanwhile.
pub fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    !stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(1_000));
        let d: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.attempt, 6);
    }

    #[test]
    fn a_stop_cuts_the_wait_short() {
        let stop = AtomicBool::new(true);
        let t = std::time::Instant::now();
        assert!(!sleep_unless_stopped(Duration::from_secs(10), &stop));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}

//! Which partition of a proxy topic a message belongs to. Province stage members own
//! provinces through the partitions the consumer group gives them, so producers must follow
//! this rule (docs/pipeline.md, "Partitioning"):
//!
//! - a province's messages go to partition `index % partitions`, where `index` is the
//!   province's position in `Province::ALL` (Beijing 0, Tianjin 1, … Xinjiang 30);
//! - national messages (`CN`) go to partition 0, the national partition. Every province member
//!   reads it by assignment, outside the group, and takes its national messages (the member the
//!   group gives partition 0 reads them twice: the keyed state takes the copy as a duplicate).
//!
//! The scope is the second `/`-separated part of the message key (`<signal>/<scope>/<start>`).

use co2cast_model::domain::Province;
use co2cast_model::proxy::Scope;

/// The partition national messages go to.
pub const NATIONAL_PARTITION: i32 = 0;

/// The partition of a province among `partitions` (at least 1).
pub fn province_partition(p: Province, partitions: i32) -> i32 {
    (p.index() as i32) % partitions.max(1)
}

pub fn proxy_partition(scope: Scope, partitions: i32) -> i32 {
    match scope {
        Scope::Province(p) => province_partition(p, partitions),
        Scope::National => NATIONAL_PARTITION,
    }
}

/// The scope a message key names, when it follows `<signal>/<scope>/<start>`.
pub fn key_scope(key: &str) -> Option<Scope> {
    key.split('/').nth(1)?.parse().ok()
}

/// The partition a keyed message is produced to; `None` when the key names no scope (the
/// client's own partitioner then decides, and province members dead-letter the message if it
/// lands on a partition that is not its province's).
pub fn partition_for_key(key: &str, partitions: i32) -> Option<i32> {
    Some(proxy_partition(key_scope(key)?, partitions))
}

/// The provinces whose messages a set of partitions carries.
pub fn provinces_of(partitions: &std::collections::BTreeSet<i32>, total: i32) -> Vec<Province> {
    Province::ALL.into_iter().filter(|p| partitions.contains(&province_partition(*p, total))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provinces_spread_over_partitions_and_national_messages_share_one() {
        assert_eq!(partition_for_key("power.generation/CN-BJ/2019-01-01T00:00:00+08:00", 8), Some(0));
        assert_eq!(partition_for_key("power.generation/CN-TJ/2019-01-01T00:00:00+08:00", 8), Some(1));
        assert_eq!(partition_for_key("power.generation/CN-XJ/2019-01-01T00:00:00+08:00", 8), Some(30 % 8));
        assert_eq!(partition_for_key("mobility.index/CN/2019-01-01T00:00:00+08:00", 3), Some(NATIONAL_PARTITION));
        assert_eq!(partition_for_key("no-scope-here", 8), None);
        assert_eq!(partition_for_key("x/Atlantis/y", 8), None);
        // Every province has exactly one partition, and the partitions cover them all.
        for n in 1..=40 {
            let all: std::collections::BTreeSet<i32> = (0..n).collect();
            assert_eq!(provinces_of(&all, n).len(), Province::ALL.len());
            let halves: usize = (0..n).map(|k| provinces_of(&[k].into(), n).len()).sum();
            assert_eq!(halves, Province::ALL.len());
        }
    }
}

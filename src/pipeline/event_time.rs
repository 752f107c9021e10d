//! Event time per input partition: the watermark of partition number `p`
//! follows the slowest of the event topics' partitions `p` that still has
//! unread records (minus the allowed lateness). A topic-partition read to its
//! end does not hold event time back, so a quiet topic never stops
//! time-driven exits; one that is still being read does, so reading one topic
//! ahead of another never makes the other's events late.

use std::collections::HashMap;

/// Newest event times and watermarks of the assigned partitions.
#[derive(Debug)]
pub struct EventTime {
    allowed_lateness_ms: i64,
    /// Newest event time seen per (event topic index, partition).
    newest: HashMap<(usize, i32), i64>,
    /// Watermark per partition number.
    watermarks: HashMap<i32, i64>,
}

impl EventTime {
    pub fn new(allowed_lateness_ms: i64) -> Self {
        Self { allowed_lateness_ms, newest: HashMap::new(), watermarks: HashMap::new() }
    }

    /// Notes an event of `topic` (index among the event topics) on `partition`.
    pub fn observe(&mut self, topic: usize, partition: i32, ts: i64) {
        let newest = self.newest.entry((topic, partition)).or_insert(ts);
        *newest = (*newest).max(ts);
    }

    /// The watermark of `partition`: events older than it are late.
    pub fn watermark(&self, partition: i32) -> i64 {
        self.watermarks.get(&partition).copied().unwrap_or(i64::MIN)
    }

    /// Recomputes the watermarks of `partitions` over `topics` event topics;
    /// `read_to_end(topic, partition)` says whether a topic-partition has no
    /// unread records. Returns the partitions whose watermark advanced, with it.
    pub fn advance(
        &mut self,
        partitions: &[i32],
        topics: usize,
        read_to_end: impl Fn(usize, i32) -> bool,
    ) -> Vec<(i32, i64)> {
        let mut advanced = Vec::new();
        for &partition in partitions {
            let Some(candidate) = self.candidate(partition, topics, &read_to_end) else { continue };
            let watermark = candidate.saturating_sub(self.allowed_lateness_ms);
            if watermark > self.watermark(partition) {
                self.watermarks.insert(partition, watermark);
                advanced.push((partition, watermark));
            }
        }
        advanced
    }

    /// The event time partition `partition` has reached, if known.
    fn candidate(&self, partition: i32, topics: usize, read_to_end: &impl Fn(usize, i32) -> bool) -> Option<i64> {
        let mut slowest_unread: Option<i64> = None;
        let mut newest_read = None;
        for topic in 0..topics {
            let newest = self.newest.get(&(topic, partition)).copied();
            if read_to_end(topic, partition) {
                newest_read = newest_read.max(newest);
            } else {
                // Records are waiting here and none was seen yet: hold.
                let newest = newest?;
                slowest_unread = Some(slowest_unread.map_or(newest, |slowest| slowest.min(newest)));
            }
        }
        slowest_unread.or(newest_read)
    }

    /// Forgets `partitions` (they moved to another instance).
    pub fn forget(&mut self, partitions: &[i32]) {
        self.newest.retain(|(_, partition), _| !partitions.contains(partition));
        self.watermarks.retain(|partition, _| !partitions.contains(partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_topic_with_unread_records_holds_the_watermark() {
        let mut time = EventTime::new(10);
        time.observe(0, 3, 1_000);
        time.observe(1, 3, 400);
        // Topic 1 still has records to read: it decides.
        assert_eq!(time.advance(&[3], 2, |_, _| false), vec![(3, 390)]);
        assert_eq!(time.watermark(3), 390);
        // Once it is read to its end, the newest event time of the partition counts.
        assert_eq!(time.advance(&[3], 2, |_, _| true), vec![(3, 990)]);
        // The watermark never goes back.
        time.observe(1, 3, 500);
        assert_eq!(time.advance(&[3], 2, |_, _| false), vec![]);
        assert_eq!(time.watermark(3), 990);
    }

    #[test]
    fn a_topic_with_unread_records_but_no_event_seen_yet_holds_the_watermark() {
        let mut time = EventTime::new(0);
        time.observe(0, 1, 1_000);
        assert_eq!(time.advance(&[1], 2, |topic, _| topic == 0), vec![]);
        assert_eq!(time.watermark(1), i64::MIN);
        // A topic read to its end without any event does not hold it.
        assert_eq!(time.advance(&[1], 2, |_, _| true), vec![(1, 1_000)]);
    }

    #[test]
    fn partitions_are_independent_and_forgotten_on_revocation() {
        let mut time = EventTime::new(0);
        time.observe(0, 0, 100);
        time.observe(0, 1, 200);
        assert_eq!(time.advance(&[0, 1], 1, |_, _| true), vec![(0, 100), (1, 200)]);
        time.forget(&[1]);
        assert_eq!((time.watermark(0), time.watermark(1)), (100, i64::MIN));
    }
}

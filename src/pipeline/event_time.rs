//! Event time per input partition: the watermark of partition number `p`
//! follows the slowest of the event topics' partitions `p` that still has
//! unread records (minus the allowed lateness). A topic-partition read to its
//! end does not hold event time back, so a quiet topic never stops
//! time-driven exits; one that is still being read does, so reading one topic
//! ahead of another never makes the other's events late.

//!
//! A partition's event time is state like its users': it is written to the
//! changelog (under a key no user id can have) whenever it moves, and
//! restored with the partition, so a restarted or new owner goes on from the
//! same watermark instead of from nothing.

use crate::state::Partition;
use crate::time::EventTime;
use std::collections::{BTreeSet, HashMap};

/// The changelog key of a partition's event time: not UTF-8, so never a user id.
pub const CHANGELOG_KEY: &[u8] = b"\xFFtactful.event-time";
/// The event topics (browse, purchase, location).
const TOPICS: usize = 3;
/// Format byte of the changelog value: then the newest event time of each
/// event topic and the watermark, little-endian i64 (`i64::MIN` for none).
const FORMAT: u8 = 1;
/// How the changelog value writes "no event time yet".
const NONE_ON_THE_WIRE: i64 = i64::MIN;

/// Newest event times and watermarks of the assigned partitions.
#[derive(Debug)]
pub struct EventTimes {
    allowed_lateness_ms: i64,
    /// Newest event time seen per (event topic index, partition).
    newest: HashMap<(usize, Partition), EventTime>,
    /// Watermark per partition.
    watermarks: HashMap<Partition, EventTime>,
    /// Partitions whose event time moved since the last [`EventTimes::take_changed`].
    changed: BTreeSet<Partition>,
}

impl EventTimes {
    /// No partition's event time known yet.
    pub fn new(allowed_lateness_ms: i64) -> Self {
        Self { allowed_lateness_ms, newest: HashMap::new(), watermarks: HashMap::new(), changed: BTreeSet::new() }
    }

    /// Notes an event of `topic` (index among the event topics) on `partition`.
    pub fn observe(&mut self, topic: usize, partition: Partition, ts: EventTime) {
        match self.newest.get_mut(&(topic, partition)) {
            Some(newest) if ts <= *newest => {}
            Some(newest) => {
                *newest = ts;
                self.changed.insert(partition);
            }
            None => {
                self.newest.insert((topic, partition), ts);
                self.changed.insert(partition);
            }
        }
    }

    /// The changelog values of the partitions whose event time moved since the last call.
    pub fn take_changed(&mut self) -> Vec<(Partition, Vec<u8>)> {
        std::mem::take(&mut self.changed).into_iter().map(|partition| (partition, self.encode(partition))).collect()
    }

    fn encode(&self, partition: Partition) -> Vec<u8> {
        let wire = |time: Option<EventTime>| time.map_or(NONE_ON_THE_WIRE, EventTime::millis).to_le_bytes();
        let mut value = Vec::with_capacity(1 + 8 * (TOPICS + 1));
        value.push(FORMAT);
        for topic in 0..TOPICS {
            value.extend_from_slice(&wire(self.newest.get(&(topic, partition)).copied()));
        }
        value.extend_from_slice(&wire(self.watermark(partition)));
        value
    }

    /// Takes on the event time of `partition` from its changelog value;
    /// false (and nothing changed) if the value is not one this version wrote.
    pub fn restore(&mut self, partition: Partition, value: &[u8]) -> bool {
        let Some((&FORMAT, body)) = value.split_first() else { return false };
        if body.len() != 8 * (TOPICS + 1) {
            return false;
        }
        let times: Vec<Option<EventTime>> = body
            .chunks_exact(8)
            .map(|bytes| i64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])))
            .map(|millis| (millis != NONE_ON_THE_WIRE).then_some(EventTime(millis)))
            .collect();
        for (topic, newest) in times[..TOPICS].iter().enumerate() {
            if let Some(newest) = newest {
                self.observe(topic, partition, *newest);
            }
        }
        if let Some(watermark) = times[TOPICS].filter(|watermark| Some(*watermark) > self.watermark(partition)) {
            self.watermarks.insert(partition, watermark);
        }
        self.changed.remove(&partition);
        true
    }

    /// The watermark of `partition`: events older than it may be late.
    pub fn watermark(&self, partition: Partition) -> Option<EventTime> {
        self.watermarks.get(&partition).copied()
    }

    /// Recomputes the watermarks of `partitions` over `topics` event topics;
    /// `read_to_end(topic, partition)` says whether a topic-partition has no
    /// unread records. Returns the partitions whose watermark advanced, with it.
    pub fn advance(
        &mut self,
        partitions: &[Partition],
        topics: usize,
        read_to_end: impl Fn(usize, Partition) -> bool,
    ) -> Vec<(Partition, EventTime)> {
        let mut advanced = Vec::new();
        for &partition in partitions {
            let Some(candidate) = self.candidate(partition, topics, &read_to_end) else { continue };
            let watermark = candidate.minus(self.allowed_lateness_ms);
            if Some(watermark) > self.watermark(partition) {
                self.watermarks.insert(partition, watermark);
                self.changed.insert(partition);
                advanced.push((partition, watermark));
            }
        }
        advanced
    }

    /// The event time partition `partition` has reached, if known.
    fn candidate(
        &self,
        partition: Partition,
        topics: usize,
        read_to_end: &impl Fn(usize, Partition) -> bool,
    ) -> Option<EventTime> {
        let mut slowest_unread: Option<EventTime> = None;
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
    pub fn forget(&mut self, partitions: &[Partition]) {
        self.newest.retain(|(_, partition), _| !partitions.contains(partition));
        self.watermarks.retain(|partition, _| !partitions.contains(partition));
        self.changed.retain(|partition| !partitions.contains(partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_topic_with_unread_records_holds_the_watermark() {
        let mut time = EventTimes::new(10);
        time.observe(0, Partition(3), EventTime(1_000));
        time.observe(1, Partition(3), EventTime(400));
        // Topic 1 still has records to read: it decides.
        assert_eq!(time.advance(&[Partition(3)], 2, |_, _| false), vec![(Partition(3), EventTime(390))]);
        assert_eq!(time.watermark(Partition(3)), Some(EventTime(390)));
        // Once it is read to its end, the newest event time of the partition counts.
        assert_eq!(time.advance(&[Partition(3)], 2, |_, _| true), vec![(Partition(3), EventTime(990))]);
        // The watermark never goes back.
        time.observe(1, Partition(3), EventTime(500));
        assert_eq!(time.advance(&[Partition(3)], 2, |_, _| false), vec![]);
        assert_eq!(time.watermark(Partition(3)), Some(EventTime(990)));
    }

    #[test]
    fn a_topic_with_unread_records_but_no_event_seen_yet_holds_the_watermark() {
        let mut time = EventTimes::new(0);
        time.observe(0, Partition(1), EventTime(1_000));
        assert_eq!(time.advance(&[Partition(1)], 2, |topic, _| topic == 0), vec![]);
        assert_eq!(time.watermark(Partition(1)), None);
        // A topic read to its end without any event does not hold it.
        assert_eq!(time.advance(&[Partition(1)], 2, |_, _| true), vec![(Partition(1), EventTime(1_000))]);
    }

    #[test]
    fn a_partitions_event_time_round_trips_through_its_changelog_value() {
        let mut time = EventTimes::new(10);
        time.observe(0, Partition(2), EventTime(1_000));
        time.observe(2, Partition(2), EventTime(900));
        // Topic 1 is read to its end; topics 0 and 2 still have records.
        assert_eq!(time.advance(&[Partition(2)], 3, |topic, _| topic == 1), vec![(Partition(2), EventTime(890))]);
        let changed = time.take_changed();
        assert_eq!(changed.iter().map(|(partition, _)| *partition).collect::<Vec<_>>(), vec![Partition(2)]);
        assert!(time.take_changed().is_empty(), "nothing moved since");
        let mut restored = EventTimes::new(10);
        assert!(restored.restore(Partition(2), &changed[0].1));
        assert_eq!(restored.watermark(Partition(2)), Some(EventTime(890)));
        // A new owner's watermark goes on from there, without the events read before.
        assert_eq!(restored.advance(&[Partition(2)], 3, |_, _| true), vec![(Partition(2), EventTime(990))]);
        assert!(!restored.restore(Partition(2), b"\x02garbage"));
        assert!(!restored.restore(Partition(2), &[]));
    }

    #[test]
    fn partitions_are_independent_and_forgotten_on_revocation() {
        let mut time = EventTimes::new(0);
        time.observe(0, Partition(0), EventTime(100));
        time.observe(0, Partition(1), EventTime(200));
        assert_eq!(
            time.advance(&[Partition(0), Partition(1)], 1, |_, _| true),
            vec![(Partition(0), EventTime(100)), (Partition(1), EventTime(200))]
        );
        time.forget(&[Partition(1)]);
        assert_eq!((time.watermark(Partition(0)), time.watermark(Partition(1))), (Some(EventTime(100)), None));
    }
}

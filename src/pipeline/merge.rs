//! Per input partition, the records of the three event topics in event-time
//! order, the way Kafka Streams merges a task's partitions: of the records
//! buffered at the heads of the topics' queues, the one with the smallest
//! event time goes first. A topic with nothing buffered is waited for a
//! bounded time (`pipeline.max_idle_wait_ms`) before the others go on
//! without it, so a backfill that reads one topic ahead of another applies
//! their events in the order they happened instead of dropping the slower
//! topic's events as late. Within a topic, records keep their offset order
//! (offsets are committed in it). Pure: the clock is an argument.

use crate::state::Partition;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// The event topics of a partition (browse, purchase, location).
pub const TOPICS: usize = 3;

/// The queues of one partition number.
struct Queues<T> {
    /// Per topic, its records not applied yet, in offset order, with their
    /// event time (`None` for a record that cannot be ordered: a bad one).
    topics: [VecDeque<(Option<i64>, T)>; TOPICS],
    /// Per topic, since when its queue is empty while another's is not.
    empty_since: [Option<Instant>; TOPICS],
}

impl<T> Default for Queues<T> {
    fn default() -> Self {
        Self { topics: Default::default(), empty_since: [None; TOPICS] }
    }
}

/// Records read and not applied yet, per partition and topic.
pub struct Merger<T> {
    max_idle_wait: Duration,
    partitions: BTreeMap<Partition, Queues<T>>,
}

impl<T> Merger<T> {
    /// An empty merger that waits at most `max_idle_wait` for a quiet topic.
    pub fn new(max_idle_wait: Duration) -> Self {
        Self { max_idle_wait, partitions: BTreeMap::new() }
    }

    /// Buffers a record of `topic` (index among the event topics) read from `partition`.
    pub fn push(&mut self, partition: Partition, topic: usize, event_time: Option<i64>, record: T) {
        let queues = self.partitions.entry(partition).or_default();
        queues.topics[topic].push_back((event_time, record));
        queues.empty_since[topic] = None;
    }

    /// The next record to apply at `now`, with its partition and topic, if
    /// any partition has one ready: a record without an event time at a
    /// queue's head, else the earliest head once every topic has a record
    /// buffered or has been waited for long enough.
    pub fn next(&mut self, now: Instant) -> Option<(Partition, usize, T)> {
        let max_idle_wait = self.max_idle_wait;
        for (&partition, queues) in &mut self.partitions {
            let mut earliest: Option<(i64, usize)> = None;
            let mut waiting = false;
            for topic in 0..TOPICS {
                match queues.topics[topic].front() {
                    Some((None, _)) => {
                        let (_, record) = queues.topics[topic].pop_front()?;
                        return Some((partition, topic, record));
                    }
                    Some((Some(event_time), _)) => {
                        if earliest.is_none_or(|(earliest_time, _)| *event_time < earliest_time) {
                            earliest = Some((*event_time, topic));
                        }
                    }
                    None => {
                        let since = *queues.empty_since[topic].get_or_insert(now);
                        waiting |= now.saturating_duration_since(since) < max_idle_wait;
                    }
                }
            }
            if let (Some((_, topic)), false) = (earliest, waiting) {
                let (_, record) = queues.topics[topic].pop_front()?;
                return Some((partition, topic, record));
            }
        }
        None
    }

    /// Whether records of `topic` on `partition` are buffered.
    pub fn holds(&self, partition: Partition, topic: usize) -> bool {
        self.partitions.get(&partition).is_some_and(|queues| !queues.topics[topic].is_empty())
    }

    /// Records buffered in all.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.partitions.values().flat_map(|queues| &queues.topics).map(VecDeque::len).sum()
    }

    /// Drops the records of `partitions` (revoked: the next owner reads them).
    pub fn drop_partitions(&mut self, partitions: &[Partition]) {
        self.partitions.retain(|partition, _| !partitions.contains(partition));
    }

    /// Drops every record (the consumer was moved back to the committed offsets).
    pub fn clear(&mut self) {
        self.partitions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Partition as P;

    const WAIT: Duration = Duration::from_millis(500);

    fn drain(merger: &mut Merger<&'static str>, now: Instant) -> Vec<&'static str> {
        std::iter::from_fn(|| merger.next(now).map(|(_, _, record)| record)).collect()
    }

    #[test]
    fn records_of_the_three_topics_come_out_in_event_time_order() {
        let start = Instant::now();
        let mut merger = Merger::new(WAIT);
        merger.push(P(0), 0, Some(10), "browse 10");
        merger.push(P(0), 0, Some(40), "browse 40");
        merger.push(P(0), 1, Some(20), "purchase 20");
        merger.push(P(0), 2, Some(30), "location 30");
        merger.push(P(0), 2, Some(35), "location 35");
        // The purchase topic runs dry after 20: what is later waits for it.
        assert_eq!(drain(&mut merger, start), ["browse 10", "purchase 20"]);
        merger.push(P(0), 1, Some(50), "purchase 50");
        // Then the location topic runs dry after 35.
        assert_eq!(drain(&mut merger, start), ["location 30", "location 35"]);
        // Past the wait, the others go on without it, until another runs dry.
        assert_eq!(drain(&mut merger, start + WAIT), ["browse 40"]);
        assert_eq!(drain(&mut merger, start + 2 * WAIT), ["purchase 50"]);
        assert_eq!(merger.len(), 0);
    }

    #[test]
    fn a_quiet_topic_is_waited_for_once_then_not_again_until_it_has_records() {
        let start = Instant::now();
        let mut merger = Merger::new(WAIT);
        for (topic, event_time, record) in
            [(0, 1, "browse 1"), (0, 3, "browse 3"), (1, 2, "purchase 2"), (1, 4, "purchase 4")]
        {
            merger.push(P(0), topic, Some(event_time), record);
        }
        assert_eq!(drain(&mut merger, start), Vec::<&str>::new());
        assert_eq!(drain(&mut merger, start + WAIT - Duration::from_millis(1)), Vec::<&str>::new());
        assert_eq!(drain(&mut merger, start + WAIT), ["browse 1", "purchase 2", "browse 3"]);
        // The location topic is still empty: it holds nothing back any more.
        merger.push(P(0), 0, Some(5), "browse 5");
        assert_eq!(drain(&mut merger, start + WAIT), ["purchase 4"]);
        merger.push(P(0), 1, Some(6), "purchase 6");
        assert_eq!(drain(&mut merger, start + WAIT), ["browse 5"]);
        // A location record arrives: the next time the topic runs dry is a new wait.
        merger.push(P(0), 2, Some(7), "location 7");
        merger.push(P(0), 0, Some(8), "browse 8");
        let later = start + 3 * WAIT;
        assert_eq!(drain(&mut merger, later), ["purchase 6"]);
        assert_eq!(drain(&mut merger, later + WAIT), ["location 7"]);
        assert_eq!(drain(&mut merger, later + 2 * WAIT - Duration::from_millis(1)), Vec::<&str>::new());
        assert!(merger.holds(P(0), 0));
    }

    #[test]
    fn a_record_without_event_time_goes_first_and_keeps_its_topics_offset_order() {
        let start = Instant::now();
        let mut merger = Merger::new(WAIT);
        merger.push(P(0), 0, Some(5), "browse 5");
        merger.push(P(0), 0, None, "bad browse");
        merger.push(P(0), 1, None, "bad purchase");
        merger.push(P(0), 2, Some(1), "location 1");
        // The bad browse is behind a browse in its topic: it waits its turn there.
        assert_eq!(drain(&mut merger, start), ["bad purchase"]);
        assert_eq!(drain(&mut merger, start + WAIT), ["location 1"]);
        assert_eq!(drain(&mut merger, start + 2 * WAIT), ["browse 5", "bad browse"]);
        assert_eq!(merger.len(), 0);
    }

    #[test]
    fn partitions_are_independent_and_dropped_on_revocation() {
        let start = Instant::now();
        let mut merger = Merger::new(WAIT);
        for partition in [0, 1] {
            merger.push(P(partition), 0, Some(1), "browse");
            merger.push(P(partition), 1, Some(1), "purchase");
        }
        merger.push(P(1), 2, Some(0), "location");
        merger.push(P(1), 2, Some(2), "location");
        // Partition 1 has every topic: it goes on while partition 0 waits.
        assert_eq!(merger.next(start), Some((P(1), 2, "location")));
        assert_eq!(merger.next(start), Some((P(1), 0, "browse")));
        assert!(merger.holds(P(0), 0) && !merger.holds(P(0), 2));
        merger.drop_partitions(&[P(0)]);
        assert!(!merger.holds(P(0), 0));
        assert_eq!(drain(&mut merger, start + WAIT), Vec::<&str>::new(), "the browse topic ran dry");
        assert_eq!(drain(&mut merger, start + 2 * WAIT), ["purchase"]);
        merger.push(P(3), 0, Some(1), "browse");
        merger.clear();
        assert_eq!(merger.len(), 0);
    }
}

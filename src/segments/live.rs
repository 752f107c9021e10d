//! The segments in force: the catalogue, which of its segments are in force
//! (in id order, the order memberships are published in), the member count
//! of each and its experiment counts. Replaced as a whole by a hot reload,
//! which keeps every segment's index (see [`SegmentIndex`]).

use super::engine::{
    arm, compares_recency, measure_slots, next_recency_flip, render_reason, window_bit, window_use, write_reason,
    SharedMeasures, WindowUse,
};
use super::tally::{self, Tallied};
use super::{Catalogue, Segment, SegmentIndex};
use crate::codec::{strings_written, write_array, write_membership, Appender};
use crate::consent::minimise::eligible;
use crate::consent::Purposes;
use crate::experiments::{ExperimentCounts, Experiments};
use crate::model::{Event, Membership, PersonalizationLevel};
use crate::state::{History, PublishedMember, PublishedProfile, Retention};
use crate::time::{EventTime, DAY_MS};
use compact_str::CompactString;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::LazyLock;

/// The segments in force and what is counted per segment.
pub struct Segments {
    /// Every segment of the process's life, retired ones at their index.
    pub catalogue: Catalogue,
    /// The segments in force (not retired), in id order: memberships are
    /// published sorted by id.
    by_id: Vec<SegmentIndex>,
    /// Current members per segment, by index; kept in step with every
    /// published change so reading it costs nothing.
    members: Vec<AtomicI64>,
    /// Entries and conversions per segment with a holdout.
    pub experiments: Experiments,
    /// How long facts are kept, for each level and set of granted purposes
    /// (see [`Segments::retention_for`]): worked out once, not per event.
    retention: Vec<Retention>,
    /// How each segment's rule uses the catalogue's windows, by index.
    window_use: Vec<WindowUse>,
    /// The windows timed for every user (see [`Segments::timed_windows`]).
    timed_for_all: u64,
    /// Each segment's leaves' slots among the measures computed once per
    /// evaluation, by index (see [`measure_slots`]).
    shared_slots: Vec<Box<[u8]>>,
    /// The measures kept as tallies for users who hold many facts.
    tallied: Vec<Tallied>,
    /// Tallies kept under other segments in force are not read under these.
    generation: u64,
    /// The segments in force whose rules compare a recency (none in the
    /// default catalogue): only theirs are walked for the next flip.
    with_recency: Vec<SegmentIndex>,
}

impl Segments {
    /// Every segment of `catalogue` in force, nothing counted yet.
    pub fn new(catalogue: Catalogue) -> Self {
        let count = catalogue.segments.len();
        let in_force = vec![true; count];
        Self::assemble(
            catalogue,
            &in_force,
            (0..count).map(|_| AtomicI64::new(0)).collect(),
            Experiments::carried_over(count, &Experiments::default()),
        )
    }

    fn assemble(catalogue: Catalogue, in_force: &[bool], members: Vec<AtomicI64>, experiments: Experiments) -> Self {
        let mut by_id: Vec<SegmentIndex> =
            (0..catalogue.segments.len()).filter(|index| in_force[*index]).map(SegmentIndex).collect();
        by_id.sort_by(|a, b| catalogue.segment(*a).id.cmp(&catalogue.segment(*b).id));
        let retention = PersonalizationLevel::ALL
            .into_iter()
            .flat_map(|level| (0..Purposes::SETS).map(move |set| (level, Purposes::at(set))))
            .map(|(level, granted)| {
                let none = Retention { max_ms: catalogue.retention.max_ms, ..Retention::default() };
                by_id
                    .iter()
                    .map(|index| catalogue.segment(*index))
                    .filter(|segment| eligible(segment, level, granted))
                    .fold(none, |kept, segment| kept.union(&segment.retention))
            })
            .collect();
        let window_use: Vec<WindowUse> =
            catalogue.segments.iter().map(|segment| window_use(&segment.rule, &catalogue.windows)).collect();
        let timed_for_all = (catalogue.windows.iter().enumerate())
            .filter(|(_, window)| window.retention_end)
            .map(|(index, _)| window_bit(index))
            .chain(by_id.iter().map(|index| window_use[index.0].enters))
            .fold(0, |timed, bits| timed | bits);
        let (slotted, shared_slots) = measure_slots(&catalogue.segments);
        let tallied =
            (slotted.iter().enumerate()).filter_map(|(slot, measure)| Tallied::of(slot as u8, measure)).collect();
        let with_recency =
            by_id.iter().copied().filter(|index| compares_recency(&catalogue.segment(*index).rule)).collect();
        Self {
            catalogue,
            by_id,
            members,
            experiments,
            retention,
            window_use,
            timed_for_all,
            shared_slots,
            tallied,
            generation: tally::generation(),
            with_recency,
        }
    }

    /// Moves the tallies of a user with `history` on to `now`, before facts
    /// are pruned then (see [`tally::advance`]).
    pub fn advance_tallies(&self, history: &mut History, now: i64) {
        tally::advance(history, &self.tallied, self.generation, now);
    }

    /// Notes in `shared` (the measures computed once per evaluation of a
    /// user with `history`) the values their tallies hold. Filled in place:
    /// returned, the measures were copied once more per evaluation.
    pub fn know_tallies(&self, history: &History, shared: &mut SharedMeasures<'_>) {
        tally::read(history, &self.tallied, shared);
    }

    /// The slots of segment `index`'s leaves among the measures computed
    /// once per evaluation (see [`SharedMeasures`]).
    pub fn shared_slots(&self, index: SegmentIndex) -> &[u8] {
        &self.shared_slots[index.0]
    }

    /// The earliest time after `now` at which a recency comparison of a
    /// segment in force flips for a user with `history` by time alone.
    pub fn next_recency_flip(&self, history: &History, now: i64) -> Option<i64> {
        (self.with_recency.iter())
            .filter_map(|index| next_recency_flip(&self.catalogue.segment(*index).rule, history, now))
            .min()
    }

    /// The windows whose exits are timed for a user who is a member of
    /// `members`: each source's retention end (the fact is dropped then),
    /// every window through which a segment can be entered as a fact leaves
    /// (`equals`, `at_most`, `not`, …), and every window of the segments the
    /// user is a member of (their figures change). A fact leaving any other
    /// window can only lower a count that is already below its bound.
    pub fn timed_windows(&self, members: &[PublishedMember]) -> u64 {
        members.iter().fold(self.timed_for_all, |timed, member| timed | self.window_use[member.segment.0].reads)
    }

    /// The segments in force after putting `catalogue` in force: segments
    /// keep their index by id (a changed one is replaced in place, a new one
    /// is added, a removed one is retired), and the counts go on.
    pub fn reloaded(&self, catalogue: Catalogue) -> (Segments, ReloadReport) {
        let held = self.catalogue.retention;
        let mut merged = self.catalogue.segments.clone();
        let mut in_force = vec![false; merged.len()];
        let mut report = ReloadReport::default();
        let was_in_force = |index: usize| self.by_id.contains(&SegmentIndex(index));
        for segment in catalogue.segments {
            let index = match merged.iter().position(|existing| existing.id == segment.id) {
                Some(index) if was_in_force(index) && merged[index] == segment => index,
                Some(index) => {
                    report.changed_or_added(&segment, was_in_force(index), &held);
                    merged[index] = segment;
                    index
                }
                None => {
                    report.changed_or_added(&segment, false, &held);
                    merged.push(segment);
                    in_force.push(false);
                    merged.len() - 1
                }
            };
            in_force[index] = true;
        }
        report.removed =
            self.by_id.iter().filter(|index| !in_force[index.0]).map(|index| merged[index.0].id.clone()).collect();
        let count = merged.len();
        let members = (0..count)
            .map(|index| AtomicI64::new(self.members.get(index).map_or(0, |members| members.load(Ordering::Relaxed))))
            .collect();
        let experiments = Experiments::carried_over(count, &self.experiments);
        let merged = Catalogue { segments: merged, retention: catalogue.retention, windows: catalogue.windows };
        (Self::assemble(merged, &in_force, members, experiments), report)
    }

    /// The segments in force, in id order.
    pub fn by_id(&self) -> impl Iterator<Item = (SegmentIndex, &Segment)> + '_ {
        self.by_id.iter().map(|index| (*index, self.catalogue.segment(*index)))
    }

    /// The segments in force, in catalogue order.
    fn in_force(&self) -> impl Iterator<Item = SegmentIndex> + '_ {
        (0..self.catalogue.segments.len()).map(SegmentIndex).filter(|index| self.by_id.contains(index))
    }

    /// Current member count per segment, in catalogue order (a segment
    /// retired by a reload stays, with no members).
    pub fn sizes(&self) -> Vec<(String, i64)> {
        self.catalogue
            .segments
            .iter()
            .zip(&self.members)
            .map(|(segment, members)| (segment.id.clone(), members.load(Ordering::Relaxed)))
            .collect()
    }

    /// Entries and conversions per segment in force with a holdout, in catalogue order.
    pub fn experiment_counts(&self) -> Vec<ExperimentCounts> {
        self.experiments.counts(&self.catalogue, self.in_force())
    }

    /// Whether `event` arrived too late to change anything: its partition's
    /// event time (`watermark`) is past it by more than any segment reads
    /// events of its kind, so every window that could hold it has passed.
    /// Anything newer is applied, even out of order, and so is an event
    /// carrying a GPC signal: the signal is about the person, whatever the
    /// event's moment (its facts are then pruned as too old to keep).
    pub fn too_late(&self, event: &Event, watermark: Option<EventTime>) -> bool {
        let Some(watermark) = watermark else { return false };
        if event.consent().is_some_and(|signals| signals.gpc) {
            return false;
        }
        let retention = &self.catalogue.retention;
        let reach_ms = match event {
            // Time since first seen reads every event the user ever had.
            _ if retention.first_seen => retention.max_ms,
            Event::Browse(_) => retention.browse_ms,
            // The last N purchases may be as old as the retention allows.
            Event::Purchase(_) if retention.purchase_last > 0 => retention.max_ms,
            Event::Purchase(_) => retention.purchase_ms,
            Event::Location(_) => retention.location_ms,
        };
        let ts = EventTime(event.ts());
        ts < watermark && ts <= watermark.minus(reach_ms.min(retention.max_ms))
    }

    /// Moves the member counts from the memberships of `before` to those of `after`.
    pub fn count_members(&self, before: Option<&PublishedProfile>, after: Option<&PublishedProfile>) {
        fn members(profile: Option<&PublishedProfile>) -> &[PublishedMember] {
            profile.map_or(&[], |profile| &profile.members)
        }
        self.count_member_changes(members(before), members(after));
    }

    /// [`Segments::count_members`] for the memberships `before` and `after`.
    pub fn count_member_changes(&self, before: &[PublishedMember], after: &[PublishedMember]) {
        // Only the segments entered or left: most updates change a reason,
        // not the memberships, and the counters are shared by the worker
        // threads (each change moves their cache line between cores).
        let adjust = |from: &[PublishedMember], unless_in: &[PublishedMember], delta: i64| {
            for member in from.iter().filter(|member| !unless_in.iter().any(|other| other.segment == member.segment)) {
                self.members[member.segment.0].fetch_add(delta, Ordering::Relaxed);
            }
        };
        adjust(before, after, -1);
        adjust(after, before, 1);
    }

    /// How long facts are kept for a user with `level` and `granted`: as long
    /// as the segments their consent allows read them (data minimisation).
    pub fn retention_for(&self, level: PersonalizationLevel, granted: Purposes) -> Retention {
        self.retention[level as usize * Purposes::SETS + granted.index()]
    }

    /// The memberships of a published profile as the contract shows them,
    /// with their reasons rendered.
    pub fn render(&self, user_id: &str, members: &[PublishedMember]) -> Vec<Membership> {
        members
            .iter()
            .map(|member| {
                let segment = self.catalogue.segment(member.segment);
                Membership {
                    id: CompactString::new(&segment.id),
                    since: member.since,
                    reason: render_reason(&segment.reason, &member.figures),
                    channels: member.channels.channel_names(),
                    arm: arm(segment, user_id),
                }
            })
            .collect()
    }

    /// Appends the memberships of a published profile to an update's datum,
    /// as [`Segments::render`] renders them: each reason written straight
    /// into `out`.
    pub fn write_memberships(&self, user_id: &str, members: &[PublishedMember], out: &mut Vec<u8>) {
        write_array(members, out, |member, out| {
            let segment = self.catalogue.segment(member.segment);
            let reason = |text: &mut Appender<'_>| write_reason(&segment.reason, &member.figures, text);
            let arm = arm(segment, user_id);
            write_membership(&segment.id, member.since, reason, channel_list(member.channels), arm.as_deref(), out);
        });
    }
}

/// The channel purposes of `channels` as an update's datum holds their
/// names (an Avro array of strings): each of the sixteen lists is written
/// once, not for every update and membership.
pub fn channel_list(channels: Purposes) -> &'static [u8] {
    static LISTS: LazyLock<Vec<Vec<u8>>> =
        LazyLock::new(|| Purposes::channel_name_lists().iter().map(|names| strings_written(names)).collect());
    &LISTS[channels.channel_subset()]
}

/// What a reload changed, and where the state held could not fully serve a
/// new or changed segment (its memberships are complete once that much event
/// time has passed).
#[derive(Debug, Default, PartialEq)]
pub struct ReloadReport {
    /// Ids of the segments added.
    pub added: Vec<String>,
    /// Ids of the segments whose definition changed.
    pub changed: Vec<String>,
    /// Ids of the segments retired.
    pub removed: Vec<String>,
    /// (segment id, what the state held lacks).
    pub partial: Vec<(String, String)>,
}

impl ReloadReport {
    fn changed_or_added(&mut self, segment: &Segment, existed: bool, held: &Retention) {
        if existed {
            self.changed.push(segment.id.clone());
        } else {
            self.added.push(segment.id.clone());
        }
        let days = |ms: i64| format!("{} days", (ms as f64 / DAY_MS as f64 * 10.0).round() / 10.0);
        let wants = &segment.retention;
        let mut lacks = Vec::new();
        for (kind, wanted, kept) in [
            ("browses", wants.browse_ms, held.browse_ms),
            ("purchases", wants.purchase_ms, held.purchase_ms),
            ("locations", wants.location_ms, held.location_ms),
        ] {
            if wanted > kept {
                lacks.push(format!("it reads {kind} of the last {}, the state holds {}", days(wanted), days(kept)));
            }
        }
        if wants.purchase_last > held.purchase_last {
            lacks.push(format!(
                "it reads the last {} purchases, the state holds the last {}",
                wants.purchase_last, held.purchase_last
            ));
        }
        if wants.first_seen && !held.first_seen {
            lacks.push("first visits were not kept: time since first seen counts from the next event".to_owned());
        }
        if !lacks.is_empty() {
            self.partial.push((segment.id.clone(), lacks.join("; ")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::Purpose;

    #[test]
    fn each_channel_list_is_the_avro_array_of_its_channel_names_in_contract_order() {
        let schema = apache_avro::Schema::parse_str(r#"{"type": "array", "items": "string"}"#).unwrap();
        let read = |channels: Purposes| {
            let value = apache_avro::from_avro_datum(&schema, &mut channel_list(channels), None).unwrap();
            apache_avro::from_value::<Vec<String>>(&value).unwrap()
        };
        let all = Purposes::channels_of(Purpose::ALL.into_iter().collect());
        assert_eq!(read(all), ["web", "email", "push", "ads"]);
        assert_eq!(read(Purposes::NONE), Vec::<String>::new());
        assert_eq!(read([Purpose::Push, Purpose::Web].into_iter().collect()), ["web", "push"]);
        assert_eq!(read([Purpose::Ads].into_iter().collect()), ["ads"]);
        // Only the channels among the purposes count.
        assert_eq!(read([Purpose::Email, Purpose::Location, Purpose::Sensitive].into_iter().collect()), ["email"]);
    }
}

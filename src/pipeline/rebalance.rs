//! Rebalance: acting on partition changes. A revoked partition's state and
//! unapplied records are dropped (or kept, if the partition comes straight
//! back and nobody wrote its changelog meanwhile); an assigned partition's
//! state is restored from the changelog, reconciled with the consent table,
//! before any of its events is applied. An aborted transaction rewinds the
//! same way: the owned partitions are restored as of the last commit.

use super::apply::{Pending, Shell};
use super::event_time;
use super::ingest::{Ingest, Rebalanced};
use super::merge::Merger;
use super::table::{CaughtUp, Table};
use super::workers;
use super::PipelineError;
use crate::control::now_ms;
use crate::state::restore::{NewestValues, ReadRecords};
use crate::state::Partition;
use crate::telemetry::record_restore;
use rdkafka::Message;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long restoring a partition's state may take before the start fails
/// (a transaction left open by a dead instance blocks it until it times out).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a revocation waits for this instance's last commit markers
/// before noting where the changelog ends (past it, the partition is simply
/// restored if it comes back).
const SETTLE_ON_REVOKE: Duration = Duration::from_secs(2);
/// Changelog records read before they go to be noted, together.
const RESTORE_RUN: usize = 4096;

impl Shell<'_> {
    /// Acts on a partition change.
    pub fn rebalance(
        &mut self,
        change: Rebalanced,
        merger: &mut Merger<Pending<'_>>,
        ingest: &Ingest,
        consent: &mut Table,
        changelog: &mut Table,
    ) -> Result<(), PipelineError> {
        match change {
            Rebalanced::Revoked(partitions) => {
                merger.drop_partitions(&partitions);
                // Kept aside until the assignment that follows (an eager
                // rebalance revokes everything first): a partition given back
                // whose changelog nobody wrote meanwhile keeps its state. Its
                // end is read once this instance's last commit markers are in.
                changelog.wait_until_settled(&partitions, SETTLE_ON_REVOKE);
                let ends = changelog.end_offsets(&partitions);
                for (index, partition) in partitions.iter().enumerate() {
                    self.revoked.insert(*partition, ends.as_ref().map(|ends| ends[index]));
                }
                self.release(&partitions);
            }
            Rebalanced::Assigned(partitions) => {
                let returned: Vec<Partition> =
                    partitions.iter().copied().filter(|partition| self.revoked.contains_key(partition)).collect();
                let ends = changelog.end_offsets(&returned);
                let unchanged: Vec<Partition> = returned
                    .iter()
                    .enumerate()
                    .filter(|(index, partition)| {
                        let before = self.revoked.get(partition).copied().flatten();
                        before.is_some() && before == ends.as_ref().map(|ends| ends[*index])
                    })
                    .map(|(_, partition)| *partition)
                    .collect();
                let gone: Vec<Partition> =
                    self.revoked.keys().copied().filter(|partition| !unchanged.contains(partition)).collect();
                self.forget(&gone);
                self.revoked.clear();
                self.owned.extend(&unchanged);
                if !unchanged.is_empty() {
                    tracing::info!(partitions = ?unchanged, "state kept: nobody wrote these partitions' changelog meanwhile");
                }
                let fresh: Vec<Partition> =
                    partitions.iter().copied().filter(|partition| !self.owned.contains(partition)).collect();
                // Waits for offsets a previous owner's transaction may still be
                // committing (read_committed fetches stable offsets only), so its
                // changelog records are complete before they are read.
                self.starts = ingest.committed(RESTORE_TIMEOUT)?;
                self.restore(&fresh, consent, changelog)?;
            }
        }
        Ok(())
    }

    /// Whether partitions were revoked and the assignment that follows has
    /// not come yet.
    pub fn between_revocation_and_assignment(&self) -> bool {
        !self.revoked.is_empty()
    }

    /// Rewinds to the last commit after an aborted transaction: the owned
    /// partitions' state is restored from the changelog and their records
    /// are read again.
    pub fn rewind(
        &mut self,
        merger: &mut Merger<Pending<'_>>,
        ingest: &Ingest,
        consent: &mut Table,
        changelog: &mut Table,
    ) -> Result<(), PipelineError> {
        let owned: Vec<Partition> = self.owned.iter().copied().collect();
        self.forget(&owned);
        self.work.clear_all();
        merger.clear();
        ingest.rewind()?;
        self.restore(&owned, consent, changelog)
    }

    /// Drops the state of `partitions` and the pending work for their users.
    fn forget(&mut self, partitions: &[Partition]) {
        self.processor.drop_partitions(partitions);
        self.event_times.forget(partitions);
        self.release(partitions);
    }

    /// Stops owning `partitions`: their pending work is dropped (their state stays).
    fn release(&mut self, partitions: &[Partition]) {
        for partition in partitions {
            self.owned.remove(partition);
        }
        let changed = &mut self.work.changed;
        self.work.outputs.retain(|output| changed.get(output.user_id()).is_none_or(|p| !partitions.contains(p)));
        changed.retain(|_, partition| !partitions.contains(partition));
    }

    /// Restores the state of `partitions` from the changelog and reconciles
    /// it with the consent table (caught up first).
    fn restore(
        &mut self,
        partitions: &[Partition],
        consent: &mut Table,
        changelog: &mut Table,
    ) -> Result<(), PipelineError> {
        if partitions.is_empty() {
            return Ok(());
        }
        // The state is written at once, most of it (at a start, all of it)
        // into memory the process has not touched before.
        crate::allocator::in_small_pages(|| self.restore_from(partitions, consent, changelog))
    }

    /// [`Self::restore`]'s work, in small pages.
    fn restore_from(
        &mut self,
        partitions: &[Partition],
        consent: &mut Table,
        changelog: &mut Table,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        self.catch_up_consent(consent)?;
        self.processor.own(partitions);
        changelog.assign(partitions)?;
        if !changelog.wait_until_settled(partitions, RESTORE_TIMEOUT) {
            return Err(PipelineError::Restore(RESTORE_TIMEOUT));
        }
        // The last record of each user wins (the topic is compacted, but not
        // necessarily yet): only that one is decoded. Records are noted on a
        // worker thread while this one reads the next ones, a run at a time.
        let mut newest: BTreeMap<Partition, NewestValues> =
            partitions.iter().map(|partition| (*partition, NewestValues::default())).collect();
        let mut unnoted = 0_u64;
        let note = |read: ReadRecords| {
            for (partition, user_id, value) in read.iter() {
                match newest.get_mut(&partition) {
                    Some(users) => users.note(user_id, value),
                    None => unnoted += 1,
                }
            }
        };
        let event_times = &mut self.event_times;
        let (records, unreadable) = self.workers.pipelined(
            |hand_over| {
                let (mut records, mut unreadable) = (0_u64, 0_u64);
                let mut read = ReadRecords::default();
                loop {
                    let caught_up = changelog.read_to_end(RESTORE_TIMEOUT, |record| {
                        records += 1;
                        let partition = Partition(record.partition());
                        if record.key() == Some(event_time::CHANGELOG_KEY) {
                            unreadable +=
                                u64::from(!event_times.restore(partition, record.payload().unwrap_or_default()));
                            return;
                        }
                        match record.key().and_then(|key| std::str::from_utf8(key).ok()) {
                            Some(user_id) => read.push(partition, user_id, record.payload()),
                            None => unreadable += 1,
                        }
                        if read.len() == RESTORE_RUN {
                            hand_over(std::mem::take(&mut read));
                        }
                    })?;
                    match caught_up {
                        CaughtUp::Complete => break,
                        CaughtUp::Behind(_) if started.elapsed() < RESTORE_TIMEOUT => continue,
                        CaughtUp::Behind(_) => return Err(PipelineError::Restore(RESTORE_TIMEOUT)),
                    }
                }
                hand_over(read);
                Ok((records, unreadable))
            },
            note,
        )?;
        let mut bad_records = unreadable + unnoted;
        changelog.assign(&[])?;
        let read = started.elapsed();
        // Decoded, installed and reconciled a partition per worker.
        let restored =
            workers::restore_partitions(self.processor, newest.into_iter().collect(), &self.workers, now_ms());
        let mut users = 0;
        for (partition, restored) in restored {
            users += restored.users;
            bad_records += restored.unreadable;
            for output in restored.outputs {
                self.work.push_output(partition, output);
            }
        }
        self.owned.extend(partitions);
        let elapsed = started.elapsed();
        record_restore(users as u64, elapsed);
        if bad_records > 0 {
            // Another writer's records, or a corrupted log: those users start afresh.
            tracing::error!(bad_records, "unreadable changelog records skipped");
        }
        tracing::info!(
            ?partitions,
            records,
            users,
            elapsed_ms = elapsed.as_millis() as u64,
            users_per_second = (users as f64 / elapsed.as_secs_f64().max(1e-6)) as u64,
            read_ms = read.as_millis() as u64,
            install_ms = (elapsed - read).as_millis() as u64,
            "state restored"
        );
        Ok(())
    }
}

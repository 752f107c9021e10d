//! The user store: partition-owned state, one shard per input partition
//! this instance owns. A shard holds its users' state and their timers;
//! revoking a partition drops its shard whole, without scanning other users.
//!
//! The state is shared, not owned by the pipeline thread: the pipeline
//! thread is its only writer, and the admin endpoint reads one user at a
//! time, locking only the shard it reads for that moment. Answering admin
//! reads between batches instead would delay them by up to a batch and tie
//! the admin endpoint to the poll loop; with shards on worker threads (one
//! per partition group) a shared map per partition keeps both simple.

use super::{Partition, UserState};
use dashmap::mapref::one::{Ref, RefMut};
use dashmap::DashMap;
use std::collections::BTreeSet;

/// The state of one partition's users.
#[derive(Debug, Default)]
pub struct Shard {
    /// User id → state. foldhash: several times faster than SipHash on
    /// short keys, and seeded per process so ids cannot be crafted to
    /// collide. hashbrown's map (std's own underneath) for `entry_ref`: a
    /// user's state is found or made in one lookup, the id copied only when
    /// it is new.
    pub users: hashbrown::HashMap<String, UserState, foldhash::fast::RandomState>,
    /// When time alone may change a user's profile.
    pub timers: Timers,
}

/// (when, user): time alone may change the user's profile then. Entries
/// whose time no longer matches the user's `next_change` are stale and
/// skipped.
#[derive(Debug, Default)]
pub struct Timers(BTreeSet<(i64, String)>);

impl Timers {
    /// Sets the user's timer to `next_change`, unless it is set there already.
    pub fn set(&mut self, user_id: &str, next_change: Option<i64>, state: &mut UserState) {
        if next_change != state.next_change {
            state.next_change = next_change;
            if let Some(due) = next_change {
                self.0.insert((due, user_id.to_owned()));
            }
        }
    }

    /// The earliest timer due at `watermark`, removed.
    pub fn pop_due(&mut self, watermark: i64) -> Option<(i64, String)> {
        match self.0.first() {
            Some((due, _)) if *due <= watermark => self.0.pop_first(),
            _ => None,
        }
    }
}

/// Every shard this instance holds, by partition.
#[derive(Debug, Default)]
pub struct Shards {
    shards: DashMap<Partition, Shard>,
}

impl Shards {
    /// The shard of `partition`, created empty if there is none.
    pub fn open(&self, partition: Partition) -> RefMut<'_, Partition, Shard> {
        self.shards.entry(partition).or_default()
    }

    /// The shard of `partition`, if one is held.
    pub fn get_mut(&self, partition: Partition) -> Option<RefMut<'_, Partition, Shard>> {
        self.shards.get_mut(&partition)
    }

    /// Removes the shard of `partition`.
    pub fn remove(&self, partition: Partition) -> Option<Shard> {
        self.shards.remove(&partition).map(|(_, shard)| shard)
    }

    /// The partitions held.
    pub fn partitions(&self) -> Vec<Partition> {
        let mut partitions: Vec<Partition> = self.shards.iter().map(|shard| *shard.key()).collect();
        partitions.sort_unstable();
        partitions
    }

    /// Reads `user_id`'s state in whichever shard holds it (a user's records
    /// all arrive on one partition, so at most one does).
    pub fn read<T>(&self, user_id: &str, read: impl FnOnce(Partition, &UserState) -> T) -> Option<T> {
        let partition = self.shards.iter().find(|shard| shard.users.contains_key(user_id)).map(|shard| *shard.key())?;
        let shard: Ref<'_, Partition, Shard> = self.shards.get(&partition)?;
        let state = shard.users.get(user_id)?;
        Some(read(partition, state))
    }
}

//! The consent gate (CONTRACT §4): which purposes a user granted, and what that
//! allows. Pure: no I/O, no clock.

use crate::model::{Channels, ConsentChange, Event, Name, PersonalizationLevel};
use std::sync::LazyLock;

pub mod minimise;
pub mod table;
pub mod tcf;

/// A purpose a user can grant. Channel purposes say where personalization may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// `personalization`: build and use a profile at all (TCF purposes 5 and 6);
    /// every event needs it, and withdrawing it erases the user.
    Personalization,
    /// `location`: use location events, at coarse precision (about 5 km).
    Location,
    /// `precise_location`: keep coordinates as sent (TCF special feature 1).
    PreciseLocation,
    /// `sensitive`: explicit consent to sensitive product categories and
    /// `sensitive`-tier segments.
    Sensitive,
    /// `measurement`: count the user in experiment entries and conversions.
    Measurement,
    /// `web`: personalization may be used on the website.
    Web,
    /// `email`: personalization may be used in email.
    Email,
    /// `push`: personalization may be used in push notifications.
    Push,
    /// `ads`: personalization may be used in advertising; a GPC signal takes it away.
    Ads,
}

impl Purpose {
    /// Every purpose, in the order the contract lists them.
    pub const ALL: [Purpose; 9] = [
        Self::Personalization,
        Self::Location,
        Self::PreciseLocation,
        Self::Sensitive,
        Self::Measurement,
        Self::Web,
        Self::Email,
        Self::Push,
        Self::Ads,
    ];

    /// The channel purposes, in the canonical order channel lists are published in.
    pub const CHANNELS: [Purpose; 4] = [Self::Web, Self::Email, Self::Push, Self::Ads];

    /// The name used in `ConsentChange.granted` and in channel lists.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Personalization => "personalization",
            Self::Location => "location",
            Self::PreciseLocation => "precise_location",
            Self::Sensitive => "sensitive",
            Self::Measurement => "measurement",
            Self::Web => "web",
            Self::Email => "email",
            Self::Push => "push",
            Self::Ads => "ads",
        }
    }

    /// The purpose named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|purpose| purpose.as_str() == name)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of purposes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Purposes(u16);

impl Purposes {
    /// The empty set.
    pub const NONE: Purposes = Purposes(0);

    /// How many different sets of purposes there are.
    pub const SETS: usize = 1 << Purpose::ALL.len();

    /// The set's place among the [`Purposes::SETS`] sets, to look it up in a
    /// table by set.
    pub fn index(self) -> usize {
        usize::from(self.0) % Self::SETS
    }

    /// The set at `index` (see [`Purposes::index`]).
    pub fn at(index: usize) -> Self {
        Self((index % Self::SETS) as u16)
    }

    /// Whether `purpose` is in the set.
    pub fn contains(self, purpose: Purpose) -> bool {
        self.0 & purpose.bit() != 0
    }

    /// Whether every purpose of `other` is in the set.
    pub fn contains_all(self, other: Purposes) -> bool {
        self.0 & other.0 == other.0
    }

    /// The set with `purpose` added.
    pub fn with(self, purpose: Purpose) -> Self {
        Self(self.0 | purpose.bit())
    }

    /// The set with `purpose` removed.
    pub fn without(self, purpose: Purpose) -> Self {
        Self(self.0 & !purpose.bit())
    }

    /// The intersection of two sets.
    pub fn intersect(self, other: Purposes) -> Self {
        Self(self.0 & other.0)
    }

    /// The purposes of the set, in contract order.
    pub fn iter(self) -> impl Iterator<Item = Purpose> {
        Purpose::ALL.into_iter().filter(move |purpose| self.contains(*purpose))
    }

    /// Only the channel purposes of `purposes`.
    pub fn channels_of(purposes: Purposes) -> Purposes {
        Purpose::CHANNELS.into_iter().filter(|channel| purposes.contains(*channel)).collect()
    }

    /// The channel purposes of the set as published names, in canonical order.
    pub fn channel_names(self) -> Channels {
        Channels::Borrowed(&Self::channel_name_lists()[self.channel_subset()])
    }

    /// The names of every subset of the channels, in canonical order, at
    /// the subset's index (see [`Purposes::channel_subset`]).
    pub fn channel_name_lists() -> &'static [Vec<Name>] {
        static SUBSETS: LazyLock<Vec<Vec<Name>>> = LazyLock::new(|| {
            (0..1 << Purpose::CHANNELS.len())
                .map(|bits: usize| {
                    let channels = Purpose::CHANNELS.iter().enumerate().filter(|(index, _)| bits & 1 << index != 0);
                    channels.map(|(_, channel)| Name::Borrowed(channel.as_str())).collect()
                })
                .collect()
        });
        &SUBSETS
    }

    /// Which of the subsets of the channels the set's channel purposes are:
    /// the bits of `Purpose::CHANNELS` it holds.
    pub fn channel_subset(self) -> usize {
        let bits = Purpose::CHANNELS.iter().enumerate().filter(|(_, channel)| self.contains(**channel));
        bits.fold(0, |bits, (index, _)| bits | 1 << index)
    }

    /// Parses purpose names; names that are not purposes are ignored so that a
    /// consent tool may record purposes this version does not know yet.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        names.iter().filter_map(|name| Purpose::parse(name.as_ref())).fold(Self::NONE, Self::with)
    }
}

impl FromIterator<Purpose> for Purposes {
    fn from_iter<I: IntoIterator<Item = Purpose>>(iter: I) -> Self {
        iter.into_iter().fold(Self::NONE, Self::with)
    }
}

/// The consent in force for one user: the newest `ConsentChange` ingested.
/// (What later events' GPC signals take away is the user's partition state,
/// [`crate::state::UserState::gpc_opt_out`]: it comes from events, not from
/// the consent topic.)
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConsentInForce {
    /// The purposes granted; every other purpose is refused.
    pub granted: Purposes,
    /// How much personalization the user wants.
    pub level: PersonalizationLevel,
    /// Which consent tool or channel recorded the choice, shown by the explain
    /// API. (The consent table holds each name once, not per user.)
    pub source: compact_str::CompactString,
    /// When the user chose (event time of the `ConsentChange`).
    pub ts: i64,
    /// The consent topic's partition the choice was read from: the input
    /// partition that holds the user (the topics are co-partitioned), so
    /// the instance owning it holds their state. Not stored in the changelog.
    #[serde(skip)]
    pub partition: crate::state::Partition,
}

#[cfg(test)]
impl ConsentInForce {
    /// Full personalization with nothing granted, chosen at `ts` (tests).
    pub(crate) fn chosen_at(ts: i64) -> Self {
        Self {
            granted: Purposes::default(),
            level: PersonalizationLevel::Full,
            source: "cmp".into(),
            ts,
            partition: crate::state::Partition::default(),
        }
    }
}

impl ConsentInForce {
    /// The consent recorded by `change`.
    pub fn from_change(change: &ConsentChange) -> Self {
        Self {
            granted: Purposes::from_names(&change.granted),
            level: change.level,
            source: change.source.as_str().into(),
            ts: change.ts,
            partition: crate::state::Partition::default(),
        }
    }

    /// What the user chose, as evaluating their profile reads it.
    pub fn choice(&self) -> Choice {
        Choice { granted: self.granted, level: self.level }
    }

    /// Whether a profile may exist at all (see [`Choice::allows_profile`]).
    pub fn allows_profile(&self) -> bool {
        self.choice().allows_profile()
    }

    /// The purposes in force (see [`Choice::effective`]).
    pub fn effective(&self, gpc_opt_out: bool) -> Purposes {
        self.choice().effective(gpc_opt_out)
    }
}

/// What a user chose, as evaluating their profile reads it: the purposes
/// granted and the level (3 bytes, where [`ConsentInForce`] takes 40).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The purposes granted; every other purpose is refused.
    pub granted: Purposes,
    /// How much personalization the user wants.
    pub level: PersonalizationLevel,
}

impl Choice {
    /// Whether a profile may exist at all: `personalization` granted and a level above NONE.
    pub fn allows_profile(self) -> bool {
        self.granted.contains(Purpose::Personalization) && self.level != PersonalizationLevel::None
    }

    /// The purposes in force, after a GPC opt-out (`gpc_opt_out`) if one was signalled.
    pub fn effective(self, gpc_opt_out: bool) -> Purposes {
        if gpc_opt_out {
            self.granted.without(Purpose::Ads)
        } else {
            self.granted
        }
    }
}

/// Why an event was not applied. Bounded: used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No `ConsentChange` known for the user.
    NoConsent,
    /// `personalization` not granted.
    NoPersonalization,
    /// Level NONE.
    LevelNone,
    /// A location event without `location`.
    NoLocation,
    /// The event's TCF string does not grant purposes 1, 5 and 6 (and special
    /// feature 1 where precise location would be used), or cannot be decoded.
    TcfRefused,
    /// Older than its partition's watermark: the time-driven changes up to
    /// then are already published.
    Late,
}

impl DropReason {
    /// Every reason, for reporting.
    pub const ALL: [DropReason; 6] =
        [Self::NoConsent, Self::NoPersonalization, Self::LevelNone, Self::NoLocation, Self::TcfRefused, Self::Late];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoConsent => "no_consent",
            Self::NoPersonalization => "no_personalization",
            Self::LevelNone => "level_none",
            Self::NoLocation => "no_location",
            Self::TcfRefused => "tcf_refused",
            Self::Late => "late",
        }
    }
}

/// Decides whether `event` may be applied under the choice in force, if
/// any (fail closed).
pub fn admit(event: &Event, choice: Option<Choice>) -> Result<(), DropReason> {
    let choice = choice.ok_or(DropReason::NoConsent)?;
    if !choice.granted.contains(Purpose::Personalization) {
        return Err(DropReason::NoPersonalization);
    }
    if choice.level == PersonalizationLevel::None {
        return Err(DropReason::LevelNone);
    }
    let is_location = matches!(event, Event::Location(_));
    if is_location && !choice.granted.contains(Purpose::Location) {
        return Err(DropReason::NoLocation);
    }
    if let Some(text) = event.consent().and_then(|signals| signals.tcf.as_deref()) {
        let precise = is_location && choice.granted.contains(Purpose::PreciseLocation);
        if !tcf_grants(text, precise) {
            return Err(DropReason::TcfRefused);
        }
    }
    Ok(())
}

/// TCF purposes personalization relies on: 1 (store and access information on
/// a device), 5 (create a personalised profile), 6 (use it to select content).
const TCF_PURPOSES: [u8; 3] = [1, 5, 6];
/// TCF special feature 1: use precise geolocation data.
const TCF_PRECISE_GEOLOCATION: u8 = 1;

/// Whether a TC string grants what applying an event needs. An undecodable
/// string is a refusal (fail closed).
fn tcf_grants(text: &str, precise_location: bool) -> bool {
    match tcf::TcString::parse(text) {
        Ok(tc) => {
            TCF_PURPOSES.iter().all(|purpose| tc.purpose_consent(*purpose))
                && (!precise_location || tc.special_feature_opt_in(TCF_PRECISE_GEOLOCATION))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests;

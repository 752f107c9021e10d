//! The changelog encoding of a user's state (CONTRACT §1: `tactful.<app>.changelog`,
//! compacted, keyed by user id, "any encoding").
//!
//! A format byte, then postcard (compact serde binary). Memberships and
//! experiment entries are stored by segment id, not catalogue index, so a
//! state written under one segment file restores under another: memberships
//! of segments that are gone are dropped, and the refresh after restoring
//! publishes the difference.
//!
//! Format 2 (written since 2026-12-04) stores each distinct hash of a user's
//! facts once, in 8 bytes, and the facts name it by position; each fact's
//! time is the milliseconds since the one before it; a membership stores only
//! the figures its segment captures. A page view takes 6 bytes (8 more for a
//! product the value does not hold yet) instead of about 36, and a user's
//! value about half as many as in format 1 (the facts as they are held),
//! which is still read. A restore reads, copies and decodes
//! every byte of the changelog (BENCHMARKS.md, "A compact changelog").

use crate::consent::{ConsentInForce, Purposes};
use crate::model::PersonalizationLevel;
use crate::segments::{Catalogue, SegmentIndex};
use crate::state::{
    BrowseFact, ExperimentEntry, Figures, History, ItemFact, LocationFact, Partition, PublishedMember,
    PublishedProfile, PurchaseFact, UserState, MAX_CAPTURES,
};
use crate::time::MaybeTime;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::num::NonZeroU64;
use thin_vec::ThinVec;

/// The first byte of every changelog value this build writes: format 2, below.
const FORMAT: u8 = 2;

/// The first byte of the values written before format 2, still read: the
/// facts as they are held, and every membership with [`MAX_CAPTURES`] figures.
const FORMAT_1: u8 = 1;

/// Why a changelog value could not be restored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChangelogError {
    /// The value's first byte names a layout this build does not know,
    /// e.g. one written by a newer version of tactful.
    #[error("unknown changelog format {0}")]
    Format(u8),
    /// The value has no bytes at all (a tombstone is a null value, not an empty one).
    #[error("empty changelog value")]
    Empty,
    /// The format byte is known but the body does not decode under it: the
    /// record is truncated or corrupt.
    #[error("undecodable changelog value: {0}")]
    Decode(String),
}

/// A changelog value's body: `H` the facts, `F` a membership's figures, as
/// each format stores them.
#[derive(Serialize, Deserialize)]
struct Stored<'a, H, F> {
    consent: Option<StoredConsent<'a>>,
    history: H,
    clock: i64,
    last_event: i64,
    version: i64,
    published: Option<StoredProfile<'a, F>>,
    experiment_entries: Vec<StoredEntry<'a>>,
}

/// Format 2's body, as read.
type Compact<'a> = Stored<'a, ReadFacts<'a>, Cow<'a, [f64]>>;

/// Format 1's body.
type Held<'a> = Stored<'a, History, [f64; MAX_CAPTURES]>;

/// The consent the state was built under, with the user's GPC opt-out (the
/// layout of format 1, when both were one record).
#[derive(Serialize, Deserialize)]
struct StoredConsent<'a> {
    granted: Purposes,
    level: PersonalizationLevel,
    source: Cow<'a, str>,
    ts: i64,
    gpc_opt_out: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredProfile<'a, F> {
    level: PersonalizationLevel,
    channels: Purposes,
    members: Vec<StoredMember<'a, F>>,
}

#[derive(Serialize, Deserialize)]
struct StoredMember<'a, F> {
    segment: Cow<'a, str>,
    since: i64,
    figures: F,
    channels: Purposes,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry<'a> {
    segment: Cow<'a, str>,
    holdout: bool,
    entered_at: i64,
}

/// A user's facts in format 2: every distinct hash once (`H`), the facts
/// naming them by position, their times as differences. The lists (`B`, `P`,
/// `L`) are read into vectors ([`ReadFacts`]) and written as they are walked
/// ([`facts`]).
#[derive(Serialize, Deserialize)]
struct Facts<H, B, P, L> {
    hashes: H,
    browses: B,
    purchases: P,
    locations: L,
    first_seen: Option<i64>,
}

/// Format 2's facts, as read.
type ReadFacts<'a> = Facts<Hashes<'a>, Vec<Browse>, Vec<Purchase<Vec<Item>>>, Vec<Location>>;

/// A list written as it is walked, without collecting it first: each call
/// of `F` walks it anew, at a known length (postcard writes it first).
struct Walk<F>(F);

impl<F, I> Serialize for Walk<F>
where
    F: Fn() -> I,
    I: ExactSizeIterator<Item: Serialize>,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

/// Every distinct hash of a user's facts, each in 8 bytes, little-endian
/// (as a varint a hash takes 9 or 10). One byte string, which a restore
/// reads in place: postcard's fixed-width integers are read a byte at a time.
struct Hashes<'a>(Cow<'a, [u8]>);

impl Hashes<'_> {
    /// The hash at `place`, if the value holds one there.
    fn get(&self, place: usize) -> Option<u64> {
        hash_at(&self.0, place)
    }
}

/// The hash at `place` of hashes stored as [`Hashes`] stores them.
fn hash_at(hashes: &[u8], place: usize) -> Option<u64> {
    let bytes = hashes.get(place.checked_mul(8)?..)?.first_chunk::<8>()?;
    Some(u64::from_le_bytes(*bytes))
}

impl Serialize for Hashes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Hashes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(deserializer).map(|bytes| Self(Cow::Borrowed(bytes)))
    }
}

/// A position in [`Facts::hashes`]. For a field that may be absent, 0 is
/// absent and a hash's position is stored plus one.
type Position = u32;

#[derive(Serialize, Deserialize)]
struct Browse {
    /// Milliseconds after the page view before it (the first: after 0).
    after: i64,
    page_type: Position,
    category: Position,
    product: Position,
}

/// `I`: the order's lines.
#[derive(Serialize, Deserialize)]
struct Purchase<I> {
    after: i64,
    currency: Position,
    total_cents: i64,
    items: I,
}

#[derive(Serialize, Deserialize)]
struct Item {
    category: Position,
    product: Position,
    quantity: i32,
    price_cents: i64,
    sensitive: bool,
}

#[derive(Serialize, Deserialize)]
struct Location {
    after: i64,
    lat: f64,
    lon: f64,
}

/// The distinct hashes of a user's facts, numbered from 1 in the order
/// first met, in a table that finds each one's number in a probe or two
/// however many there are (a scan of the hashes made a long history's
/// encoding quadratic). The facts' hashes are numbered first, so that the
/// value can hold them ahead of the facts that name them.
struct Numbering {
    /// The hashes in the order met, as [`Hashes`] stores them.
    hashes: Vec<u8>,
    /// Open addressing: each slot holds a hash's position, 0 when empty.
    /// Never more than half full, a power of two long.
    slots: Vec<Position>,
    /// 64 less the slots' number of bits.
    shift: u32,
}

impl Numbering {
    /// Numbers every distinct hash of `history`'s facts.
    fn of(history: &History) -> Self {
        let fields =
            3 * history.browses.len() + history.purchases.iter().map(|fact| 1 + 2 * fact.items.len()).sum::<usize>();
        let slots = (2 * fields).next_power_of_two().max(8);
        let mut numbering =
            Numbering { hashes: Vec::with_capacity(8 * fields), slots: vec![0; slots], shift: 64 - slots.ilog2() };
        for fact in &history.browses {
            numbering.number(NonZeroU64::new(fact.page_type));
            numbering.number(fact.category);
            numbering.number(fact.product);
        }
        for fact in &history.purchases {
            numbering.number(NonZeroU64::new(fact.currency));
            for item in &fact.items {
                numbering.number(NonZeroU64::new(item.category));
                numbering.number(NonZeroU64::new(item.product));
            }
        }
        numbering
    }

    /// Numbers `hash` if it is new.
    fn number(&mut self, hash: Option<NonZeroU64>) {
        let Some(hash) = hash.map(NonZeroU64::get) else { return };
        let slot = self.slot(hash);
        if self.slots[slot] == 0 {
            self.hashes.extend_from_slice(&hash.to_le_bytes());
            // A user holds far fewer than 2^32 facts.
            self.slots[slot] = Position::try_from(self.hashes.len() / 8).unwrap_or(Position::MAX);
        }
    }

    /// `hash`'s position (it was numbered); 0 for none.
    fn position(&self, hash: Option<NonZeroU64>) -> Position {
        hash.map_or(0, |hash| self.slots[self.slot(hash.get())])
    }

    /// The slot that holds `hash`, or the empty one where it would go.
    fn slot(&self, hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        // The hash's high bits after a multiply: FNV's low bits alone spread
        // similar strings unevenly.
        let mut slot = (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        loop {
            let position = self.slots[slot];
            if position == 0 || hash_at(&self.hashes, position as usize - 1) == Some(hash) {
                return slot;
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// `history`'s facts in format 2, naming the hashes by their positions in
/// `numbering`, written as they are walked.
fn facts<'h>(history: &'h History, numbering: &'h Numbering) -> impl Serialize + 'h {
    let present = |hash: Option<NonZeroU64>| numbering.position(hash);
    let hash = move |hash: u64| present(NonZeroU64::new(hash));
    Facts {
        hashes: Hashes(Cow::Borrowed(&numbering.hashes)),
        browses: Walk(move || {
            let mut since = 0;
            history.browses.iter().map(move |fact| Browse {
                after: after(&mut since, fact.ts),
                page_type: hash(fact.page_type),
                category: present(fact.category),
                product: present(fact.product),
            })
        }),
        purchases: Walk(move || {
            let mut since = 0;
            history.purchases.iter().map(move |fact| Purchase {
                after: after(&mut since, fact.ts),
                currency: hash(fact.currency),
                total_cents: fact.total_cents,
                items: Walk(move || {
                    fact.items.iter().map(move |item| Item {
                        category: hash(item.category),
                        product: hash(item.product),
                        quantity: item.quantity,
                        price_cents: item.price_cents,
                        sensitive: item.sensitive,
                    })
                }),
            })
        }),
        locations: Walk(move || {
            let mut since = 0;
            (history.locations.iter()).map(move |fact| Location {
                after: after(&mut since, fact.ts),
                lat: fact.lat,
                lon: fact.lon,
            })
        }),
        first_seen: history.first_seen.get(),
    }
}

impl ReadFacts<'_> {
    fn into_history(self) -> Result<History, ChangelogError> {
        let Facts { hashes, browses, purchases, locations, first_seen } = self;
        let present = |position: Position| match position.checked_sub(1) {
            None => Ok(None),
            Some(at) => hashes
                .get(at as usize)
                .map(NonZeroU64::new)
                .ok_or_else(|| ChangelogError::Decode(format!("no hash at {at} of {} bytes", hashes.0.len()))),
        };
        let hash = |position: Position| present(position).map(|hash| hash.map_or(0, NonZeroU64::get));
        let mut since = 0;
        let browses = each(browses, |fact| {
            Ok(BrowseFact {
                ts: at(&mut since, fact.after),
                page_type: hash(fact.page_type)?,
                category: present(fact.category)?,
                product: present(fact.product)?,
            })
        })?;
        let mut since = 0;
        let purchases = each(purchases, |fact| {
            // One line stays inline (see `Items`): no room to reserve.
            let items = (fact.items.into_iter())
                .map(|item| {
                    Ok(ItemFact {
                        category: hash(item.category)?,
                        product: hash(item.product)?,
                        quantity: item.quantity,
                        price_cents: item.price_cents,
                        sensitive: item.sensitive,
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(PurchaseFact {
                ts: at(&mut since, fact.after),
                currency: hash(fact.currency)?,
                total_cents: fact.total_cents,
                items,
            })
        })?;
        let mut since = 0;
        let locations = (locations.into_iter())
            .map(|fact| LocationFact { ts: at(&mut since, fact.after), lat: fact.lat, lon: fact.lon })
            .collect();
        Ok(History { browses, purchases, locations, first_seen: first_seen.into(), ..History::default() })
    }
}

/// `stored` read by `read`, up to the first error, into a list allocated
/// once at its length: collecting through a `Result` would grow it by
/// doubling, with room to spare in every restored user's state.
fn each<T, U>(
    stored: Vec<T>,
    mut read: impl FnMut(T) -> Result<U, ChangelogError>,
) -> Result<ThinVec<U>, ChangelogError> {
    let mut read_all = ThinVec::with_capacity(stored.len());
    for item in stored {
        read_all.push(read(item)?);
    }
    Ok(read_all)
}

/// Milliseconds from `since` to `ts`, and `ts` the next fact's `since`.
/// Wrapping, so that any times round-trip.
fn after(since: &mut i64, ts: i64) -> i64 {
    let after = ts.wrapping_sub(*since);
    *since = ts;
    after
}

/// The time `after` milliseconds from `since`, and the next fact's `since`.
fn at(since: &mut i64, after: i64) -> i64 {
    *since = since.wrapping_add(after);
    *since
}

/// A user's state read from the changelog, with the consent it was built under.
#[derive(Debug, PartialEq)]
pub struct Restored {
    /// The user's state, with memberships and experiment entries of segments
    /// no longer in the catalogue dropped.
    pub state: UserState,
    /// The consent in force when the record was written (the consent
    /// table's, which may have moved on since).
    pub consent: Option<ConsentInForce>,
}

/// Appends the changelog value of `state`, built under `consent`, to `out`.
pub fn encode(state: &UserState, consent: Option<&ConsentInForce>, catalogue: &Catalogue, out: &mut Vec<u8>) {
    let id = |index: SegmentIndex| Cow::Borrowed(catalogue.segment(index).id.as_str());
    let numbering = Numbering::of(&state.history);
    out.reserve(room(state, &numbering));
    let stored = Stored {
        consent: consent.map(|consent| StoredConsent {
            granted: consent.granted,
            level: consent.level,
            source: Cow::Borrowed(&consent.source),
            ts: consent.ts,
            gpc_opt_out: state.gpc_opt_out,
        }),
        history: facts(&state.history, &numbering),
        clock: state.clock,
        last_event: state.last_event,
        version: state.version,
        published: state.published.as_ref().map(|profile| StoredProfile {
            level: profile.level,
            channels: profile.channels,
            members: (profile.members.iter())
                .map(|member| StoredMember {
                    segment: id(member.segment),
                    since: member.since,
                    figures: Cow::Borrowed(&member.figures[..]),
                    channels: member.channels,
                })
                .collect(),
        }),
        experiment_entries: (state.experiment_entries.iter())
            .map(|entry| StoredEntry {
                segment: id(entry.segment),
                holdout: entry.holdout,
                entered_at: entry.entered_at,
            })
            .collect(),
    };
    out.push(FORMAT);
    // Writing into a Vec cannot fail, and every field is serialisable.
    let _ = postcard::serialize_with_flavor(&stored, Bytes(out));
}

/// postcard's output, appended to a `Vec`. postcard writes each varint as
/// a slice of a few bytes, which `Vec::extend` copies with a call to
/// `memcpy`: a fifth of the time of encoding a busy user's value. Short
/// slices are pushed a byte at a time instead.
struct Bytes<'v>(&'v mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Bytes<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if bytes.len() <= 16 {
            for &byte in bytes {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// About the bytes of `state`'s value, so that it is written without
/// growing: a few more for each fact and membership than they usually take.
fn room(state: &UserState, numbering: &Numbering) -> usize {
    let history = &state.history;
    let items: usize = history.purchases.iter().map(|fact| fact.items.len()).sum();
    let members = state.published.as_ref().map_or(0, |profile| profile.members.len());
    64 + numbering.hashes.len()
        + 8 * history.browses.len()
        + 16 * history.purchases.len()
        + 24 * items
        + 24 * history.locations.len()
        + 48 * members
        + 24 * state.experiment_entries.len()
}

/// The state stored in a changelog value, read under `catalogue`.
pub fn decode(bytes: &[u8], catalogue: &Catalogue) -> Result<Restored, ChangelogError> {
    let (&format, body) = bytes.split_first().ok_or(ChangelogError::Empty)?;
    let undecodable = |error: postcard::Error| ChangelogError::Decode(error.to_string());
    match format {
        FORMAT => {
            let stored: Compact<'_> = postcard::from_bytes(body).map_err(undecodable)?;
            restored(stored, catalogue, ReadFacts::into_history)
        }
        FORMAT_1 => {
            let stored: Held<'_> = postcard::from_bytes(body).map_err(undecodable)?;
            restored(stored, catalogue, Ok)
        }
        other => Err(ChangelogError::Format(other)),
    }
}

/// The state of a decoded body of either format, its facts read by `history`.
fn restored<H, F: AsRef<[f64]>>(
    stored: Stored<'_, H, F>,
    catalogue: &Catalogue,
    history: impl FnOnce(H) -> Result<History, ChangelogError>,
) -> Result<Restored, ChangelogError> {
    let index = |id: &str| catalogue.index_of(id);
    let gpc_opt_out = stored.consent.as_ref().is_some_and(|consent| consent.gpc_opt_out);
    let consent = stored.consent.map(|consent| ConsentInForce {
        granted: consent.granted,
        level: consent.level,
        source: consent.source.as_ref().into(),
        ts: consent.ts,
        partition: Partition::default(),
    });
    let state = UserState {
        gpc_opt_out,
        // Evaluated again when restored, under the consent table's choice.
        evaluated_under: None,
        last_event: stored.last_event,
        history: history(stored.history)?,
        clock: stored.clock,
        published: stored.published.map(|profile| PublishedProfile {
            level: profile.level,
            channels: profile.channels,
            members: (profile.members.into_iter())
                .filter_map(|member| {
                    let segment = index(&member.segment)?;
                    Some(PublishedMember {
                        segment,
                        since: member.since,
                        figures: figures(member.figures.as_ref(), catalogue.segment(segment).captures.len()),
                        channels: member.channels,
                    })
                })
                .collect(),
        }),
        version: stored.version,
        next_change: MaybeTime::NONE,
        experiment_entries: (stored.experiment_entries.into_iter())
            .filter_map(|entry| {
                Some(ExperimentEntry {
                    segment: index(&entry.segment)?,
                    holdout: entry.holdout,
                    entered_at: entry.entered_at,
                })
            })
            .collect(),
    };
    Ok(Restored { state, consent })
}

/// A membership's `captures` figures from those stored: the ones missing
/// (the segment captures more since it was written) are zero.
fn figures(stored: &[f64], captures: usize) -> Figures {
    let mut figures = Figures::from_slice(&stored[..captures.min(stored.len())]);
    figures.resize(captures, 0.0);
    figures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{hash_present, hash_value};
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A changelog value written by the build before interned users and
    /// compact facts (77bae75), for a user with every kind of state.
    const WRITTEN_BEFORE: &str = "0101630207636d702d776562b090abfef962010180a0abfef962ecd18bc292f28d8b62018c9caad2cff69f8a600001c0bab7fef962c7f1eff398e3c5bed901d041018c9caad2cff69f8a60f29bb8948ea394ee4604e820000180d5c3fef9628fc2f5285c2f4a408fc2f5285c8f13400180a0abfef962c0efcffef962c0efcffef962808adcfef962010260011172657475726e696e675f76697369746f7280a0abfef9620000000000000840000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000020011172657475726e696e675f76697369746f720180a0abfef962";

    fn every_kind_of_state(catalogue: &Catalogue) -> (UserState, ConsentInForce) {
        let segment = catalogue.index_of("returning_visitor").expect("a default segment");
        let mut state = UserState {
            gpc_opt_out: true,
            last_event: 1_700_000_300_000,
            clock: 1_700_000_300_000,
            version: 1_700_000_400_000,
            ..UserState::default()
        };
        let history = &mut state.history;
        history.browses.push(BrowseFact {
            ts: 1_700_000_000_000,
            page_type: hash_value("product"),
            category: hash_present(Some("running")),
            product: None,
        });
        let shoe = ItemFact {
            category: hash_value("running"),
            product: hash_value("shoe"),
            quantity: 2,
            price_cents: 2100,
            sensitive: false,
        };
        let purchase = PurchaseFact {
            ts: 1_700_000_100_000,
            currency: hash_value("EUR"),
            total_cents: 4200,
            items: smallvec::smallvec![shoe],
        };
        history.purchases.push(purchase);
        history.locations.push(LocationFact { ts: 1_700_000_200_000, lat: 52.37, lon: 4.89 });
        history.first_seen = Some(1_700_000_000_000).into();
        // The segment captures one figure, the number of days.
        let figures = Figures::from_slice(&[3.0]);
        let member =
            PublishedMember { segment, since: 1_700_000_000_000, figures, channels: Purposes::from_names(&["web"]) };
        let channels = Purposes::from_names(&["web", "email"]);
        state.published = Some(PublishedProfile {
            level: PersonalizationLevel::Full,
            channels,
            members: thin_vec::thin_vec![member],
        });
        state.experiment_entries.push(ExperimentEntry { segment, holdout: true, entered_at: 1_700_000_000_000 });
        let consent = ConsentInForce {
            granted: Purposes::from_names(&["personalization", "web", "email", "location"]),
            level: PersonalizationLevel::Full,
            source: "cmp-web".into(),
            ts: 1_699_999_999_000,
            partition: Partition::default(),
        };
        (state, consent)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex")).collect()
    }

    fn encoded(state: &UserState, consent: &ConsentInForce, catalogue: &Catalogue) -> Vec<u8> {
        let mut value = Vec::new();
        encode(state, Some(consent), catalogue, &mut value);
        value
    }

    #[test]
    fn values_written_in_format_1_are_still_read() {
        let (catalogue, _) = crate::config::embedded_defaults();
        let (state, consent) = every_kind_of_state(&catalogue);
        let restored = decode(&unhex(WRITTEN_BEFORE), &catalogue).expect("restores");
        assert_eq!(restored.consent, Some(consent));
        // The timer is not stored: it is set again after restoring.
        assert_eq!(restored.state, UserState { next_change: MaybeTime::NONE, ..state });
    }

    /// [`every_kind_of_state`] with a second page view (the same page type
    /// and category, another product), in format 2.
    const WRITTEN_COMPACT: &str = "0201630207636d702d776562b090abfef9620128ece84228913716620c8e4afab47f1460f5a4a9f018f62060c7f87b8e19177dd9f20d8ee21851dc460280a0abfef962010200c0a90701020301c0bab7fef96204d04101020504e820000180d5c3fef9628fc2f5285c2f4a408fc2f5285c8f13400180a0abfef962c0efcffef962c0efcffef962808adcfef962010260011172657475726e696e675f76697369746f7280a0abfef96201000000000000084020011172657475726e696e675f76697369746f720180a0abfef962";

    #[test]
    fn the_compact_layout_is_unchanged_and_restores_the_state() {
        let (catalogue, _) = crate::config::embedded_defaults();
        let (mut state, consent) = every_kind_of_state(&catalogue);
        let first = state.history.browses[0].clone();
        let product = hash_present(Some("sock"));
        state.history.browses.push(BrowseFact { ts: first.ts + 60_000, product, ..first });
        let value = encoded(&state, &consent, &catalogue);
        assert_eq!(hex(&value), WRITTEN_COMPACT);
        let restored = decode(&value, &catalogue).expect("restores");
        assert_eq!(restored.consent, Some(consent));
        assert_eq!(restored.state, state);
        // Restored lists hold no spare room (memory per user held).
        assert_eq!(restored.state.history.browses.capacity(), 2);
    }

    #[test]
    fn a_page_view_stores_its_time_as_a_difference_and_each_hash_once() {
        let (catalogue, _) = crate::config::embedded_defaults();
        let (mut state, consent) = every_kind_of_state(&catalogue);
        let first = state.history.browses[0].clone();
        let one_more = |state: &mut UserState, product: &str| {
            let ts = state.history.browses.last().expect("a page view").ts + 60_000;
            let product = hash_present(Some(product));
            state.history.browses.push(BrowseFact { ts, product, ..first.clone() });
            encoded(state, &consent, &catalogue).len()
        };
        let before = encoded(&state, &consent, &catalogue).len();
        // A minute later (3 bytes), the page type and category held already
        // (a byte each), and a new product: a byte, and its 8-byte hash.
        assert_eq!(one_more(&mut state, "sock"), before + 6 + 8);
        // The same product again: its hash is not stored twice.
        assert_eq!(one_more(&mut state, "sock"), before + 6 + 8 + 6);
        assert_eq!(decode(&encoded(&state, &consent, &catalogue), &catalogue).expect("restores").state, state);
    }

    #[test]
    fn many_distinct_hashes_are_numbered_once_each_in_the_order_met() {
        // 100 products viewed, then again in reverse, on one page type.
        let met: Vec<u64> = (1..=100).chain((1..=100).rev()).map(|n| n * 7_919).collect();
        let view = |product: u64| BrowseFact { ts: 0, page_type: 3, category: None, product: NonZeroU64::new(product) };
        let history = History { browses: met.iter().map(|&product| view(product)).collect(), ..History::default() };
        let numbering = Numbering::of(&history);
        let in_order: Vec<u64> = std::iter::once(3).chain((1..=100).map(|n| n * 7_919)).collect();
        assert_eq!(numbering.hashes, in_order.iter().flat_map(|hash| hash.to_le_bytes()).collect::<Vec<u8>>());
        let positions: Vec<Position> = met.iter().map(|&hash| numbering.position(NonZeroU64::new(hash))).collect();
        assert_eq!(positions, (2..=101).chain((2..=101).rev()).collect::<Vec<Position>>());
        assert_eq!(numbering.position(NonZeroU64::new(3)), 1);
        assert_eq!(numbering.position(None), 0);
    }

    #[test]
    fn a_long_history_of_many_products_restores_with_each_hash_stored_once() {
        let (catalogue, _) = crate::config::embedded_defaults();
        let (mut state, consent) = every_kind_of_state(&catalogue);
        let first = state.history.browses[0].clone();
        let mut lengths = vec![encoded(&state, &consent, &catalogue).len()];
        // 80 products, each viewed twice: the second round adds the same
        // views without a hash.
        for _ in 0..2 {
            for product in 0..80 {
                let ts = state.history.browses.last().expect("a page view").ts + 60_000;
                let product = hash_present(Some(&format!("product {product}")));
                state.history.browses.push(BrowseFact { ts, product, ..first.clone() });
            }
            lengths.push(encoded(&state, &consent, &catalogue).len());
        }
        assert_eq!((lengths[1] - lengths[0]) - (lengths[2] - lengths[1]), 80 * 8, "{lengths:?}");
        let value = encoded(&state, &consent, &catalogue);
        assert_eq!(decode(&value, &catalogue).expect("restores").state, state);
    }

    #[test]
    fn a_fact_naming_a_hash_the_value_does_not_hold_is_undecodable() {
        let (catalogue, _) = crate::config::embedded_defaults();
        let browse = Browse { after: 1_700_000_000_000, page_type: 1, category: 0, product: 2 };
        let facts = Facts {
            hashes: Hashes(Cow::Owned(7_u64.to_le_bytes().to_vec())),
            browses: vec![browse],
            purchases: vec![],
            locations: vec![],
            first_seen: None,
        };
        let stored: Compact<'_> = Stored {
            consent: None,
            history: facts,
            clock: 0,
            last_event: 0,
            version: 0,
            published: None,
            experiment_entries: vec![],
        };
        let mut value = vec![FORMAT];
        value.extend(postcard::to_allocvec(&stored).expect("serialises"));
        assert_eq!(decode(&value, &catalogue), Err(ChangelogError::Decode("no hash at 1 of 8 bytes".into())));
    }

    #[test]
    fn a_membership_has_the_figures_its_segment_captures_now() {
        assert_eq!(figures(&[1.0, 2.0, 3.0], 2), Figures::from_slice(&[1.0, 2.0]));
        assert_eq!(figures(&[1.0], 3), Figures::from_slice(&[1.0, 0.0, 0.0]));
    }

    /// A hash from a few, so that facts share them; 0 among them.
    fn some_hash() -> impl Strategy<Value = u64> {
        proptest::sample::select(vec![0, 1, 7, u64::MAX, hash_value("running"), hash_value("shoe")])
    }

    fn some_history() -> impl Strategy<Value = History> {
        let present = || some_hash().prop_map(NonZeroU64::new);
        let browse = (any::<i64>(), some_hash(), present(), present())
            .prop_map(|(ts, page_type, category, product)| BrowseFact { ts, page_type, category, product });
        let item = (some_hash(), some_hash(), any::<i32>(), any::<i64>(), any::<bool>()).prop_map(
            |(category, product, quantity, price_cents, sensitive)| ItemFact {
                category,
                product,
                quantity,
                price_cents,
                sensitive,
            },
        );
        let purchase = (any::<i64>(), some_hash(), any::<i64>(), vec(item, 0..3)).prop_map(
            |(ts, currency, total_cents, items)| PurchaseFact { ts, currency, total_cents, items: items.into() },
        );
        let location =
            (any::<i64>(), -90.0..90.0, -180.0..180.0).prop_map(|(ts, lat, lon)| LocationFact { ts, lat, lon });
        (vec(browse, 0..8), vec(purchase, 0..4), vec(location, 0..3), any::<Option<i64>>()).prop_map(
            |(browses, purchases, locations, first_seen)| History {
                browses: browses.into(),
                purchases: purchases.into(),
                locations: locations.into(),
                first_seen: first_seen.into(),
                ..History::default()
            },
        )
    }

    proptest! {
        #[test]
        fn any_facts_restore_exactly_as_they_were_written(history in some_history()) {
            let (catalogue, _) = crate::config::embedded_defaults();
            let (state, consent) = every_kind_of_state(&catalogue);
            let state = UserState { history, ..state };
            let restored = decode(&encoded(&state, &consent, &catalogue), &catalogue).expect("restores");
            prop_assert_eq!(restored.state, state);
        }
    }
}

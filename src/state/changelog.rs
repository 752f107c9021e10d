//! The changelog encoding of a user's state (CONTRACT §1: `tactful.<app>.changelog`,
//! compacted, keyed by user id, "any encoding").
//!
//! A format byte, then postcard (compact serde binary). Memberships and
//! experiment entries are stored by segment id, not catalogue index, so a
//! state written under one segment file restores under another: memberships
//! of segments that are gone are dropped, and the refresh after restoring
//! publishes the difference.

use crate::consent::{ConsentInForce, Purposes};
use crate::model::PersonalizationLevel;
use crate::segments::{Catalogue, SegmentIndex};
use crate::state::{
    ExperimentEntry, Figures, History, Partition, PublishedMember, PublishedProfile, UserState, MAX_CAPTURES,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The first byte of every changelog value: the layout below.
const FORMAT: u8 = 1;

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

#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    consent: Option<StoredConsent<'a>>,
    history: Cow<'a, History>,
    clock: i64,
    last_event: i64,
    version: i64,
    published: Option<StoredProfile<'a>>,
    experiment_entries: Vec<StoredEntry<'a>>,
}

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
struct StoredProfile<'a> {
    level: PersonalizationLevel,
    channels: Purposes,
    members: Vec<StoredMember<'a>>,
}

#[derive(Serialize, Deserialize)]
struct StoredMember<'a> {
    segment: Cow<'a, str>,
    since: i64,
    figures: [f64; MAX_CAPTURES],
    channels: Purposes,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry<'a> {
    segment: Cow<'a, str>,
    holdout: bool,
    entered_at: i64,
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
    let stored = Stored {
        consent: consent.map(|consent| StoredConsent {
            granted: consent.granted,
            level: consent.level,
            source: Cow::Borrowed(&consent.source),
            ts: consent.ts,
            gpc_opt_out: state.gpc_opt_out,
        }),
        history: Cow::Borrowed(&state.history),
        clock: state.clock,
        last_event: state.last_event,
        version: state.version,
        published: state.published.as_ref().map(|profile| StoredProfile {
            level: profile.level,
            channels: profile.channels,
            members: profile
                .members
                .iter()
                .map(|member| StoredMember {
                    segment: id(member.segment),
                    since: member.since,
                    figures: stored_figures(&member.figures),
                    channels: member.channels,
                })
                .collect(),
        }),
        experiment_entries: state
            .experiment_entries
            .iter()
            .map(|entry| StoredEntry {
                segment: id(entry.segment),
                holdout: entry.holdout,
                entered_at: entry.entered_at,
            })
            .collect(),
    };
    out.push(FORMAT);
    // Writing into a Vec cannot fail, and every field is serialisable.
    if let Ok(bytes) = postcard::to_extend(&stored, std::mem::take(out)) {
        *out = bytes;
    }
}

/// A membership's figures as format 1 stores them: always
/// [`MAX_CAPTURES`] of them, the ones a segment does not capture zero.
fn stored_figures(figures: &[f64]) -> [f64; MAX_CAPTURES] {
    let mut stored = [0.0; MAX_CAPTURES];
    stored.iter_mut().zip(figures).for_each(|(slot, figure)| *slot = *figure);
    stored
}

/// The state stored in a changelog value, read under `catalogue`.
pub fn decode(bytes: &[u8], catalogue: &Catalogue) -> Result<Restored, ChangelogError> {
    let (&format, body) = bytes.split_first().ok_or(ChangelogError::Empty)?;
    if format != FORMAT {
        return Err(ChangelogError::Format(format));
    }
    let stored: Stored<'_> = postcard::from_bytes(body).map_err(|error| ChangelogError::Decode(error.to_string()))?;
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
        last_event: stored.last_event,
        history: stored.history.into_owned(),
        clock: stored.clock,
        published: stored.published.map(|profile| PublishedProfile {
            level: profile.level,
            channels: profile.channels,
            members: profile
                .members
                .into_iter()
                .filter_map(|member| {
                    let segment = index(&member.segment)?;
                    let captures = catalogue.segment(segment).captures.len();
                    Some(PublishedMember {
                        segment,
                        since: member.since,
                        figures: Figures::from_slice(&member.figures[..captures]),
                        channels: member.channels,
                    })
                })
                .collect(),
        }),
        version: stored.version,
        next_change: None,
        experiment_entries: stored
            .experiment_entries
            .into_iter()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{hash_present, hash_value, BrowseFact, ItemFact, LocationFact, PurchaseFact};

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
        let purchase =
            PurchaseFact { ts: 1_700_000_100_000, currency: hash_value("EUR"), total_cents: 4200, items: vec![shoe] };
        history.purchases.push(purchase);
        history.locations.push(LocationFact { ts: 1_700_000_200_000, lat: 52.37, lon: 4.89 });
        history.first_seen = Some(1_700_000_000_000);
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

    #[test]
    fn the_layout_is_unchanged_from_values_written_before() {
        let (catalogue, _) = crate::config::embedded_defaults();
        let (state, consent) = every_kind_of_state(&catalogue);
        let mut value = Vec::new();
        encode(&state, Some(&consent), &catalogue, &mut value);
        assert_eq!(hex(&value), WRITTEN_BEFORE);
        let bytes: Vec<u8> = (0..WRITTEN_BEFORE.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&WRITTEN_BEFORE[at..at + 2], 16).expect("hex"))
            .collect();
        let restored = decode(&bytes, &catalogue).expect("restores");
        assert_eq!(restored.consent, Some(consent));
        // The timer is not stored: it is set again after restoring.
        assert_eq!(restored.state, UserState { next_change: None, ..state });
    }
}

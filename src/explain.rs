//! "Why am I seeing this?": what tactful holds about one user, in terms the
//! user (or a data-protection officer) can check — the consent in force, the
//! memberships with their reasons, and each category of data held with since
//! when. Pure: built from a user's state.

use crate::consent::{ConsentInForce, Purpose};
use crate::model::{Channels, Membership, PersonalizationLevel};
use crate::segments::Segments;
use crate::state::{History, Retention, UserState};
use crate::time::{DAY_MS, HOUR_MS};
use serde::Serialize;

/// The answer of `GET /v1/profiles/{user_id}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// The user asked about, echoed from the request path.
    pub user_id: String,
    /// The consent in force; `None` = nothing granted.
    pub consent: Option<ConsentView>,
    /// The profile as last published; `None` = no profile.
    pub profile: Option<ProfileView>,
    /// Each category of data held, with since when.
    pub data_held: Vec<DataHeld>,
}

/// The consent in force, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsentView {
    /// The purposes granted, by their contract names; any other is refused.
    pub granted: Vec<&'static str>,
    /// How much personalization the user chose.
    pub level: PersonalizationLevel,
    /// Which consent tool or channel recorded the choice.
    pub source: String,
    /// When the user chose (epoch milliseconds).
    pub ts: i64,
    /// A Global Privacy Control signal turned `ads` off.
    pub gpc_opt_out: bool,
}

/// The published profile.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileView {
    /// The personalization level the profile was published at.
    pub level: PersonalizationLevel,
    /// The channels personalization may be used on, as published.
    pub channels: Channels,
    /// The memberships with the reasons a user is shown, sorted by segment id.
    pub segments: Vec<Membership>,
}

/// One category of data held about the user.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataHeld {
    /// e.g. "purchase history, last 90 days".
    pub category: String,
    /// The oldest record of this category still held (epoch milliseconds).
    pub since: i64,
    /// How many records of this category are held.
    pub records: usize,
    /// What the category is, for pages that word it in another language.
    #[serde(skip)]
    pub kind: DataKind,
}

/// The categories of data held, with how long each is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// Pages viewed, kept for `kept_ms`.
    Browsing {
        /// How long a page view is kept.
        kept_ms: i64,
    },
    /// Purchases, kept for `kept_ms` or the last `last` ones.
    Purchases {
        /// How long a purchase is kept.
        kept_ms: i64,
        /// How many of the newest purchases are kept.
        last: usize,
    },
    /// Purchases with an item in a sensitive category (explicit consent).
    SensitivePurchases,
    /// Locations, precise or coarsened to about 5 km, kept for `kept_ms`.
    Location {
        /// Whether locations are kept as precise as they came.
        precise: bool,
        /// How long a location is kept.
        kept_ms: i64,
    },
}

/// "last hour", "last 7 days", … for a window.
fn last(window_ms: i64) -> String {
    let (count, unit) =
        if window_ms < DAY_MS { ((window_ms / HOUR_MS).max(1), "hour") } else { (window_ms / DAY_MS, "day") };
    if count == 1 {
        format!("last {unit}")
    } else {
        format!("last {count} {unit}s")
    }
}

/// What is held about `user_id`: the consent in force (the consent
/// table's), and their partition state (`state`; empty when this instance
/// holds none), under the segments in force.
pub fn explain(segments: &Segments, user_id: &str, consent: Option<&ConsentInForce>, state: &UserState) -> Explanation {
    let precise = consent.is_some_and(|consent| consent.granted.contains(Purpose::PreciseLocation));
    let retention = match consent {
        Some(consent) => segments.retention_for(consent.level, consent.effective(state.gpc_opt_out)),
        None => segments.catalogue.retention,
    };
    Explanation {
        user_id: user_id.to_owned(),
        consent: consent.map(|consent| ConsentView::of(consent, state.gpc_opt_out)),
        profile: state.published.as_ref().map(|profile| ProfileView {
            level: profile.level,
            channels: profile.channels.channel_names(),
            segments: segments.render(user_id, &profile.members),
        }),
        data_held: data_held(&state.history, &retention, precise),
    }
}

/// The categories of data in `history`, described with how long each is kept.
pub fn data_held(history: &History, retention: &Retention, precise_location: bool) -> Vec<DataHeld> {
    let mut held = Vec::new();
    if let Some(oldest) = history.browses.first() {
        held.push(DataHeld {
            category: format!("browsing history, {}", last(retention.browse_ms)),
            since: oldest.ts,
            records: history.browses.len(),
            kind: DataKind::Browsing { kept_ms: retention.browse_ms },
        });
    }
    if let Some(oldest) = history.purchases.first() {
        held.push(DataHeld {
            category: format!(
                "purchase history, {} or last {} purchases",
                last(retention.purchase_ms),
                retention.purchase_last
            ),
            since: oldest.ts,
            records: history.purchases.len(),
            kind: DataKind::Purchases { kept_ms: retention.purchase_ms, last: retention.purchase_last },
        });
        let sensitive: Vec<i64> = history
            .purchases
            .iter()
            .filter(|purchase| purchase.items.iter().any(|item| item.sensitive))
            .map(|purchase| purchase.ts)
            .collect();
        if let Some(since) = sensitive.first() {
            held.push(DataHeld {
                category: "purchases in sensitive categories (with your explicit consent)".to_owned(),
                since: *since,
                records: sensitive.len(),
                kind: DataKind::SensitivePurchases,
            });
        }
    }
    if let Some(oldest) = history.locations.first() {
        let precision = if precise_location { "precise location" } else { "coarse location (about 5 km)" };
        held.push(DataHeld {
            category: format!("{precision}, {}", last(retention.location_ms)),
            since: oldest.ts,
            records: history.locations.len(),
            kind: DataKind::Location { precise: precise_location, kept_ms: retention.location_ms },
        });
    }
    held
}

impl ConsentView {
    /// The view of `consent`.
    pub fn of(consent: &ConsentInForce, gpc_opt_out: bool) -> Self {
        Self {
            granted: consent.granted.iter().map(|purpose| purpose.as_str()).collect(),
            level: consent.level,
            source: consent.source.to_string(),
            ts: consent.ts,
            gpc_opt_out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_plain_words() {
        assert_eq!(last(HOUR_MS), "last hour");
        assert_eq!(last(2 * HOUR_MS), "last 2 hours");
        assert_eq!(last(DAY_MS), "last day");
        assert_eq!(last(90 * DAY_MS), "last 90 days");
    }
}

//! The contract's records (CONTRACT §3), as the rest of the code sees them.
//!
//! Field names match the Avro schemas in `schemas/` exactly, so one serde
//! derive serves JSON input, Avro input (through `apache_avro::from_value`) and
//! Avro output.

use serde::{Deserialize, Serialize};

/// How much personalization a user wants (CONTRACT §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PersonalizationLevel {
    /// No profile at all.
    None,
    /// Only segments of tier `light`.
    Light,
    /// Every segment except tier `sensitive`, which also needs the `sensitive` purpose.
    Full,
}

impl PersonalizationLevel {
    /// The Avro enum symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Light => "LIGHT",
            Self::Full => "FULL",
        }
    }
}

/// What the user's device said at the time of an event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventConsent {
    /// IAB TCF v2 TC string.
    #[serde(default)]
    pub tcf: Option<String>,
    /// Global Privacy Control: do not sell or share.
    #[serde(default)]
    pub gpc: bool,
}

/// A page view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrowseEvent {
    pub event_id: String,
    pub user_id: String,
    /// Event time, epoch milliseconds UTC.
    pub ts: i64,
    #[serde(default)]
    pub session_id: Option<String>,
    pub page_type: String,
    #[serde(default)]
    pub product_id: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub consent: Option<EventConsent>,
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurchaseItem {
    pub product_id: String,
    pub category: String,
    pub quantity: i32,
    pub price_cents: i64,
}

/// A completed order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurchaseEvent {
    pub event_id: String,
    pub user_id: String,
    pub ts: i64,
    pub order_id: String,
    pub currency: String,
    pub total_cents: i64,
    pub items: Vec<PurchaseItem>,
    #[serde(default)]
    pub consent: Option<EventConsent>,
}

/// A device location fix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocationEvent {
    pub event_id: String,
    pub user_id: String,
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
    #[serde(default)]
    pub accuracy_m: Option<f32>,
    #[serde(default)]
    pub consent: Option<EventConsent>,
}

/// A full snapshot of a user's consent choices, not a delta.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsentChange {
    pub user_id: String,
    /// When the user chose.
    pub ts: i64,
    /// The purposes granted; any purpose not listed is refused.
    pub granted: Vec<String>,
    pub level: PersonalizationLevel,
    /// Which consent tool or channel recorded it.
    pub source: String,
}

/// One segment membership, with the reason a user could be shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub id: String,
    /// Event time the user entered the segment.
    pub since: i64,
    pub reason: String,
    /// The segment's allowed channels ∩ the user's channels.
    pub channels: Vec<String>,
    /// Experiment arm, when the segment runs a holdout.
    pub arm: Option<String>,
}

/// The value published on `profiles.updates` (key = user id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileUpdate {
    pub user_id: String,
    /// Strictly increasing per user, never reused.
    pub version: i64,
    /// Event time of the change.
    pub ts: i64,
    pub level: PersonalizationLevel,
    pub channels: Vec<String>,
    /// All current memberships, sorted by id.
    pub segments: Vec<Membership>,
    pub entered: Vec<String>,
    pub exited: Vec<String>,
}

/// One decoded input event of any of the three event topics.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Browse(BrowseEvent),
    Purchase(PurchaseEvent),
    Location(LocationEvent),
}

impl Event {
    /// The user the event is about.
    pub fn user_id(&self) -> &str {
        match self {
            Self::Browse(event) => &event.user_id,
            Self::Purchase(event) => &event.user_id,
            Self::Location(event) => &event.user_id,
        }
    }

    /// Event time, epoch milliseconds UTC.
    pub fn ts(&self) -> i64 {
        match self {
            Self::Browse(event) => event.ts,
            Self::Purchase(event) => event.ts,
            Self::Location(event) => event.ts,
        }
    }

    /// The consent signals the device attached, if any.
    pub fn consent(&self) -> Option<&EventConsent> {
        match self {
            Self::Browse(event) => event.consent.as_ref(),
            Self::Purchase(event) => event.consent.as_ref(),
            Self::Location(event) => event.consent.as_ref(),
        }
    }
}

/// Which input topic a record came from; decides the record type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    Browse,
    Purchase,
    Location,
    Consent,
}

impl InputKind {
    /// Label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Browse => "browse",
            Self::Purchase => "purchase",
            Self::Location => "location",
            Self::Consent => "consent",
        }
    }
}

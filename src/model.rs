//! The contract's records (CONTRACT §3), as the rest of the code sees them.
//!
//! Field names match the Avro schemas in `schemas/` exactly, so one serde
//! derive serves JSON input, Avro input (through `apache_avro::from_value`) and
//! Avro output. The event records come in two shapes: as written (every
//! field, for what writes or rewrites records) and as read (`BrowseRead`
//! and its kin: what the pipeline keeps or checks, decoded without an
//! allocation for the fields it never keeps).

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// A name from a fixed set (a channel, an experiment arm): published
/// without an allocation of its own, read back owned.
pub type Name = Cow<'static, str>;

/// A list of channel names (a subset of web, email, push, ads, in that
/// order): published as one of the sixteen lists shared by every update,
/// without an allocation of its own; read back owned.
pub type Channels = Cow<'static, [Name]>;

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
    /// Every level, in order.
    pub const ALL: [PersonalizationLevel; 3] = [Self::None, Self::Light, Self::Full];

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
    /// The producer's id for the event, for tracing on its side; tactful does not keep it.
    pub event_id: String,
    /// The user the page view belongs to; must equal the record key.
    pub user_id: String,
    /// Event time, epoch milliseconds UTC.
    pub ts: i64,
    /// The producer's browsing session, when it has one; not kept in state.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Kind of page viewed: home, category, product, cart, checkout, search or other.
    pub page_type: String,
    /// The product shown, on product pages; rules can filter on it.
    #[serde(default)]
    pub product_id: Option<String>,
    /// The product category shown; not kept without the `sensitive` purpose
    /// when it is one of the configured sensitive categories.
    #[serde(default)]
    pub category: Option<String>,
    /// The page address; never kept, as it can carry personal data.
    #[serde(default)]
    pub url: Option<String>,
    /// The consent signals the device sent with the event; absent means none were sent.
    #[serde(default)]
    pub consent: Option<EventConsent>,
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurchaseItem {
    /// The product bought; rules can filter on it.
    pub product_id: String,
    /// The product's category; a sensitive category drops the whole item
    /// without the `sensitive` purpose.
    pub category: String,
    /// Units of the product in the order.
    pub quantity: i32,
    /// Price of one unit, in cents of the order's currency.
    pub price_cents: i64,
}

/// A completed order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurchaseEvent {
    /// The producer's id for the event, for tracing on its side; tactful does not keep it.
    pub event_id: String,
    /// The buyer; must equal the record key.
    pub user_id: String,
    /// Event time of the order, epoch milliseconds UTC.
    pub ts: i64,
    /// The shop's order reference; not kept in state.
    pub order_id: String,
    /// ISO 4217 code of the currency all the order's amounts are in.
    pub currency: String,
    /// What the order cost in total, in cents of `currency`.
    pub total_cents: i64,
    /// The order's lines; may be empty.
    pub items: Vec<PurchaseItem>,
    /// The consent signals the device sent with the event; absent means none were sent.
    #[serde(default)]
    pub consent: Option<EventConsent>,
}

/// A device location fix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocationEvent {
    /// The producer's id for the event, for tracing on its side; tactful does not keep it.
    pub event_id: String,
    /// The device's user; must equal the record key.
    pub user_id: String,
    /// Event time of the fix, epoch milliseconds UTC.
    pub ts: i64,
    /// Latitude in degrees (WGS 84); coarsened to about 5 km without `precise_location`.
    pub lat: f64,
    /// Longitude in degrees (WGS 84); coarsened to about 5 km without `precise_location`.
    pub lon: f64,
    /// The device's estimate of the fix's error radius, in metres; not kept in state.
    #[serde(default)]
    pub accuracy_m: Option<f32>,
    /// The consent signals the device sent with the event; absent means none were sent.
    #[serde(default)]
    pub consent: Option<EventConsent>,
}

/// A full snapshot of a user's consent choices, not a delta.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsentChange {
    /// The user who chose; must equal the record key.
    pub user_id: String,
    /// When the user chose, epoch milliseconds UTC.
    pub ts: i64,
    /// The purposes granted; any purpose not listed is refused.
    pub granted: Vec<String>,
    /// How much personalization the user wants; NONE erases the profile.
    pub level: PersonalizationLevel,
    /// Which consent tool or channel recorded it.
    pub source: String,
}

/// One segment membership, with the reason a user could be shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// The segment's id, as in the segment definitions file (inline up to 24 bytes).
    pub id: CompactString,
    /// Event time the user entered the segment, epoch milliseconds UTC.
    pub since: i64,
    /// One plain sentence a user could be shown saying why they are in the
    /// segment, with the real figures.
    pub reason: String,
    /// The segment's allowed channels ∩ the user's channels.
    pub channels: Channels,
    /// Experiment arm, when the segment runs a holdout.
    pub arm: Option<Name>,
}

/// The value published on `profiles.updates` (key = user id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileUpdate {
    /// The user the profile describes; also the record key (inline up to 24 bytes).
    pub user_id: CompactString,
    /// Strictly increasing per user, across restarts and rebalances, never
    /// reused: consumers drop an update whose version is not above the last seen.
    pub version: i64,
    /// Event time of the change, epoch milliseconds UTC.
    pub ts: i64,
    /// The personalization level in force for the user.
    pub level: PersonalizationLevel,
    /// Channels the user allows personalization on: a subset of web, email, push, ads.
    pub channels: Channels,
    /// All current memberships, sorted by id.
    pub segments: Vec<Membership>,
    /// Ids of the segments this update entered the user into.
    pub entered: Vec<CompactString>,
    /// Ids of the segments this update took the user out of.
    pub exited: Vec<CompactString>,
}

/// A string of the contract that tactful checks is a string and never
/// keeps: read past without an allocation.
struct Unkept;

impl<'de> Deserialize<'de> for Unkept {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Unkept;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Unkept, E> {
                Ok(Unkept)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Reads a field that is not kept as a `T`, checking its type, and keeps nothing.
fn checked<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<(), D::Error> {
    T::deserialize(deserializer).map(drop)
}

/// What tactful reads of a page view ([`BrowseEvent`]): the fields it keeps
/// or checks, short strings inline. `event_id`, `session_id` and `url` are
/// checked and never held.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BrowseRead {
    #[serde(rename = "event_id", deserialize_with = "checked::<_, Unkept>")]
    _event_id: (),
    /// The user the page view belongs to; must equal the record key.
    pub user_id: CompactString,
    /// Event time, epoch milliseconds UTC.
    pub ts: i64,
    #[serde(default, rename = "session_id", deserialize_with = "checked::<_, Option<Unkept>>")]
    _session_id: (),
    /// Kind of page viewed.
    pub page_type: CompactString,
    /// The product shown, on product pages.
    #[serde(default)]
    pub product_id: Option<CompactString>,
    /// The product category shown.
    #[serde(default)]
    pub category: Option<CompactString>,
    #[serde(default, rename = "url", deserialize_with = "checked::<_, Option<Unkept>>")]
    _url: (),
    /// The consent signals the device sent with the event.
    #[serde(default)]
    pub consent: Option<EventConsent>,
}

/// What tactful reads of an order line ([`PurchaseItem`]): all of it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ItemRead {
    /// The product bought.
    pub product_id: CompactString,
    /// The product's category.
    pub category: CompactString,
    /// Units of the product in the order.
    pub quantity: i32,
    /// Price of one unit, in cents of the order's currency.
    pub price_cents: i64,
}

/// What tactful reads of an order ([`PurchaseEvent`]); `event_id` and
/// `order_id` are checked and never held.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct PurchaseRead {
    #[serde(rename = "event_id", deserialize_with = "checked::<_, Unkept>")]
    _event_id: (),
    /// The buyer; must equal the record key.
    pub user_id: CompactString,
    /// Event time of the order, epoch milliseconds UTC.
    pub ts: i64,
    #[serde(rename = "order_id", deserialize_with = "checked::<_, Unkept>")]
    _order_id: (),
    /// ISO 4217 code of the currency all the order's amounts are in.
    pub currency: CompactString,
    /// What the order cost in total, in cents of `currency`.
    pub total_cents: i64,
    /// The order's lines; may be empty.
    pub items: Vec<ItemRead>,
    /// The consent signals the device sent with the event.
    #[serde(default)]
    pub consent: Option<EventConsent>,
}

/// What tactful reads of a location fix ([`LocationEvent`]); `event_id` is
/// checked and never held, `accuracy_m` checked and not kept.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct LocationRead {
    #[serde(rename = "event_id", deserialize_with = "checked::<_, Unkept>")]
    _event_id: (),
    /// The device's user; must equal the record key.
    pub user_id: CompactString,
    /// Event time of the fix, epoch milliseconds UTC.
    pub ts: i64,
    /// Latitude in degrees (WGS 84).
    pub lat: f64,
    /// Longitude in degrees (WGS 84).
    pub lon: f64,
    #[serde(default, rename = "accuracy_m", deserialize_with = "checked::<_, Option<f32>>")]
    _accuracy_m: (),
    /// The consent signals the device sent with the event.
    #[serde(default)]
    pub consent: Option<EventConsent>,
}

impl BrowseRead {
    /// Read from the contract's field order (the Avro reader); the unkept
    /// fields were read past.
    pub(crate) fn from_fields(
        user_id: CompactString,
        ts: i64,
        page_type: CompactString,
        product_id: Option<CompactString>,
        category: Option<CompactString>,
        consent: Option<EventConsent>,
    ) -> Self {
        Self { _event_id: (), user_id, ts, _session_id: (), page_type, product_id, category, _url: (), consent }
    }
}

impl PurchaseRead {
    /// As [`BrowseRead::from_fields`].
    pub(crate) fn from_fields(
        user_id: CompactString,
        ts: i64,
        currency: CompactString,
        total_cents: i64,
        items: Vec<ItemRead>,
        consent: Option<EventConsent>,
    ) -> Self {
        Self { _event_id: (), user_id, ts, _order_id: (), currency, total_cents, items, consent }
    }
}

impl LocationRead {
    /// As [`BrowseRead::from_fields`].
    pub(crate) fn from_fields(
        user_id: CompactString,
        ts: i64,
        lat: f64,
        lon: f64,
        consent: Option<EventConsent>,
    ) -> Self {
        Self { _event_id: (), user_id, ts, lat, lon, _accuracy_m: (), consent }
    }
}

impl From<BrowseEvent> for BrowseRead {
    fn from(event: BrowseEvent) -> Self {
        let product_id = event.product_id.map(CompactString::from);
        let category = event.category.map(CompactString::from);
        Self::from_fields(event.user_id.into(), event.ts, event.page_type.into(), product_id, category, event.consent)
    }
}

impl From<PurchaseItem> for ItemRead {
    fn from(item: PurchaseItem) -> Self {
        let (product_id, category) = (item.product_id.into(), item.category.into());
        Self { product_id, category, quantity: item.quantity, price_cents: item.price_cents }
    }
}

impl From<PurchaseEvent> for PurchaseRead {
    fn from(event: PurchaseEvent) -> Self {
        let items = event.items.into_iter().map(ItemRead::from).collect();
        Self::from_fields(
            event.user_id.into(),
            event.ts,
            event.currency.into(),
            event.total_cents,
            items,
            event.consent,
        )
    }
}

impl From<LocationEvent> for LocationRead {
    fn from(event: LocationEvent) -> Self {
        Self::from_fields(event.user_id.into(), event.ts, event.lat, event.lon, event.consent)
    }
}

/// One decoded input event of any of the three event topics, as tactful
/// reads it: what is kept or checked, without the fields it never keeps.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A page view, from the browse topic.
    Browse(BrowseRead),
    /// An order, from the purchase topic.
    Purchase(PurchaseRead),
    /// A location fix, from the location topic.
    Location(LocationRead),
}

impl From<BrowseEvent> for Event {
    fn from(event: BrowseEvent) -> Self {
        Self::Browse(event.into())
    }
}

impl From<PurchaseEvent> for Event {
    fn from(event: PurchaseEvent) -> Self {
        Self::Purchase(event.into())
    }
}

impl From<LocationEvent> for Event {
    fn from(event: LocationEvent) -> Self {
        Self::Location(event.into())
    }
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
    /// The browse topic: values are [`BrowseEvent`]s.
    Browse,
    /// The purchase topic: values are [`PurchaseEvent`]s.
    Purchase,
    /// The location topic: values are [`LocationEvent`]s.
    Location,
    /// The consent topic: values are [`ConsentChange`]s or tombstones.
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

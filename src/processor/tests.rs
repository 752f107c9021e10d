//! Tests of the pure core: records in, outcomes, state and profile updates out,
//! over the bundled segment catalogue.

use super::*;
use crate::codec::DecodeError;
use crate::consent::minimise::{coarsen, eligible};
use crate::consent::Purposes;
use crate::model::{
    BrowseEvent, Channels, EventConsent, LocationEvent, Name, PersonalizationLevel, ProfileUpdate, PurchaseEvent,
    PurchaseItem,
};
use crate::segments::engine::{evaluate, render_reason, SharedMeasures};
use crate::state::{
    hash_present, hash_value, insert_by_time, BrowseFact, History, ItemFact, LocationFact, PurchaseFact, MAX_CAPTURES,
};
use crate::time::{DAY_MS as DAY, HOUR_MS as HOUR, MINUTE_MS as MINUTE};
use compact_str::CompactString;
use proptest::prelude::*;
use serde::Serialize;

const TOLERANCE: i64 = 400 * DAY;
/// 2023-11-15T10:00:00Z.
const T0: i64 = 1_700_006_400_000 + 10 * HOUR;
/// Processing time: after every event time used here, within the tolerance.
const NOW: i64 = T0 + 60 * DAY;

const ALL_CHANNELS: [&str; 4] = ["web", "email", "push", "ads"];
const EVERYTHING: [&str; 5] = ["personalization", "web", "email", "push", "ads"];
const BERLIN_STORE: (f64, f64) = (52.5246, 13.4020);
const HAMBURG_STORE: (f64, f64) = (53.5503, 9.9937);
const MUNICH_STORE: (f64, f64) = (48.1372, 11.5755);

const NEW_VISITOR_1: &str = "Visited on 1 day in the last 30 days.";
const RETURNING_2: &str = "Visited on 2 different days in the last 30 days.";
const NEAR_STORE: &str = "Was within 500 m of one of our stores in the last hour.";

struct Harness {
    processor: Processor,
}

fn harness() -> Harness {
    harness_with_sensitive(&[])
}

/// The default catalogue plus the segments in `extra` (TOML).
fn harness_with_extra(extra: &str) -> Harness {
    let source = format!("{}\n{extra}", crate::segments::definition::DEFAULT_SEGMENTS);
    let catalogue = Catalogue::parse("test.toml", &source, &[], 400 * DAY).unwrap();
    let settings = CoreSettings {
        sensitive_categories: vec![],
        event_time_tolerance_ms: TOLERANCE,
        conversion_window_ms: 7 * DAY,
        idle_user_ms: 365 * DAY,
    };
    Harness { processor: Processor::new(Codec::new(&[]).unwrap(), catalogue, &settings) }
}

/// The default catalogue plus `in_berlin`, a segment that reads location at
/// coarse precision (a 20 km geofence needs no `precise_location`).
fn harness_with_coarse_segment() -> Harness {
    harness_with_extra(
        r#"
[[segment]]
id = "in_berlin"
description = "In Berlin in the last hour."
tier = "full"
channels = ["push"]
reason = "Was in Berlin in the last hour."
rule = { near = { places = ["store_berlin_mitte"], radius_m = 20000, within = "1h" }, at_least = 1 }
"#,
    )
}

fn harness_with_sensitive(sensitive: &[&str]) -> Harness {
    let sensitive: Vec<String> = sensitive.iter().map(|name| (*name).to_owned()).collect();
    let settings = CoreSettings {
        sensitive_categories: sensitive.clone(),
        event_time_tolerance_ms: TOLERANCE,
        conversion_window_ms: 7 * DAY,
        idle_user_ms: 365 * DAY,
    };
    let catalogue = Catalogue::default_catalogue(&sensitive, 400 * DAY);
    Harness { processor: Processor::new(Codec::new(&[]).unwrap(), catalogue, &settings) }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|item| (*item).to_owned()).collect()
}

fn ids(list: &[&str]) -> Vec<CompactString> {
    list.iter().map(|&id| id.into()).collect()
}

fn names(list: &[&str]) -> Channels {
    list.iter().map(|item| Name::from((*item).to_owned())).collect()
}

fn browse_event(user: &str, ts: i64, category: Option<&str>) -> BrowseEvent {
    BrowseEvent {
        event_id: format!("b-{ts}"),
        user_id: user.to_owned(),
        ts,
        session_id: None,
        page_type: "product".to_owned(),
        product_id: category.map(|category| format!("{category}-item")),
        category: category.map(str::to_owned),
        url: None,
        consent: None,
    }
}

/// `(product, category, quantity, price_cents)` lines; the total is their sum.
fn purchase_event(user: &str, ts: i64, items: &[(&str, &str, i32, i64)]) -> PurchaseEvent {
    PurchaseEvent {
        event_id: format!("p-{ts}"),
        user_id: user.to_owned(),
        ts,
        order_id: format!("o-{ts}"),
        currency: "EUR".to_owned(),
        total_cents: items.iter().map(|(_, _, quantity, price)| i64::from(*quantity) * price).sum(),
        items: items
            .iter()
            .map(|(product, category, quantity, price)| PurchaseItem {
                product_id: (*product).to_owned(),
                category: (*category).to_owned(),
                quantity: *quantity,
                price_cents: *price,
            })
            .collect(),
        consent: None,
    }
}

fn location_event(user: &str, ts: i64, (lat, lon): (f64, f64)) -> LocationEvent {
    LocationEvent {
        event_id: format!("l-{ts}"),
        user_id: user.to_owned(),
        ts,
        lat,
        lon,
        accuracy_m: Some(10.0),
        consent: None,
    }
}

/// The record in Avro single-object encoding, built with apache_avro directly
/// (JSON cannot carry NaN or infinities).
fn avro<T: Serialize>(schema_text: &str, record: &T) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(schema_text).unwrap();
    let value = apache_avro::to_value(record).unwrap().resolve(&schema).unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&crate::codec::canonical::fingerprint(schema_text).unwrap().to_le_bytes());
    bytes.extend(apache_avro::to_avro_datum(&schema, value).unwrap());
    bytes
}

impl Harness {
    fn send<T: Serialize>(&self, kind: InputKind, user: &str, record: &T) -> Processed {
        self.send_at(kind, user, record, NOW)
    }

    fn send_at<T: Serialize>(&self, kind: InputKind, user: &str, record: &T, now_ms: i64) -> Processed {
        let value = serde_json::to_vec(record).unwrap();
        self.processor.process(kind, Some(user.as_bytes()), Some(&value), now_ms)
    }

    fn consent(&self, user: &str, granted: &[&str], level: PersonalizationLevel, ts: i64) -> Processed {
        let change = ConsentChange {
            user_id: user.to_owned(),
            ts,
            granted: strings(granted),
            level,
            source: "test-cmp".to_owned(),
        };
        self.send(InputKind::Consent, user, &change)
    }

    fn forget(&self, user: &str) -> Processed {
        self.processor.process(InputKind::Consent, Some(user.as_bytes()), None, NOW)
    }

    fn browse(&self, user: &str, ts: i64, category: Option<&str>) -> Processed {
        self.send(InputKind::Browse, user, &browse_event(user, ts, category))
    }

    fn browse_with_gpc(&self, user: &str, ts: i64) -> Processed {
        let mut event = browse_event(user, ts, None);
        event.consent = Some(EventConsent { tcf: None, gpc: true });
        self.send(InputKind::Browse, user, &event)
    }

    fn purchase(&self, user: &str, ts: i64, items: &[(&str, &str, i32, i64)]) -> Processed {
        self.send(InputKind::Purchase, user, &purchase_event(user, ts, items))
    }

    fn location(&self, user: &str, ts: i64, at: (f64, f64)) -> Processed {
        self.send(InputKind::Location, user, &location_event(user, ts, at))
    }

    /// What is held about `user` (nothing held reads as the empty state).
    fn state(&self, user: &str) -> UserState {
        self.processor.user_state(user).unwrap_or_default()
    }

    fn sizes(&self) -> Vec<(String, i64)> {
        self.processor.segment_sizes()
    }

    fn size_of(&self, id: &str) -> i64 {
        self.sizes().into_iter().find(|(segment, _)| segment == id).expect("a segment").1
    }
}

/// The update of an applied record; fails on anything else.
#[track_caller]
fn update(processed: Processed) -> ProfileUpdate {
    match processed {
        Processed { outcome: Outcome::Applied, output: Some(Output::Update(update)), .. } => {
            update.decode().expect("a datum the contract's schema reads")
        }
        other => panic!("expected an applied record with an update, got {other:?}"),
    }
}

#[track_caller]
fn applied_silently(processed: Processed) {
    assert_eq!((processed.outcome, processed.output), (Outcome::Applied, None));
}

#[track_caller]
fn tombstone(processed: Processed, user: &str) {
    assert_eq!(
        (processed.outcome, processed.output),
        (Outcome::Applied, Some(Output::Tombstone { user_id: user.to_owned() }))
    );
}

#[track_caller]
fn dropped(processed: Processed, reason: DropReason) {
    assert_eq!((processed.outcome, processed.output), (Outcome::Dropped(reason), None));
}

#[track_caller]
fn rejected(processed: Processed, rejection: Rejection) {
    let label = rejection.reason();
    assert_eq!((processed.outcome, processed.output), (Outcome::Rejected(rejection), None));
    assert!(!label.is_empty());
}

fn membership(id: &str, since: i64, reason: &str, channels: &[&str]) -> Membership {
    Membership { id: id.into(), since, reason: reason.to_owned(), channels: names(channels), arm: None }
}

#[allow(clippy::too_many_arguments)]
fn expected(
    user: &str,
    version: i64,
    ts: i64,
    level: PersonalizationLevel,
    channels: &[&str],
    segments: Vec<Membership>,
    entered: &[&str],
    exited: &[&str],
) -> ProfileUpdate {
    ProfileUpdate {
        user_id: user.into(),
        version,
        ts,
        level,
        channels: names(channels),
        segments,
        entered: ids(entered),
        exited: ids(exited),
    }
}

fn running_reason(views: u32) -> String {
    format!("Browsed running products {views} times in the last 7 days and has not bought any.")
}

// --- segments: enter and exit ----------------------------------------------

#[test]
fn running_browser_is_entered_after_three_views_and_exited_by_a_running_purchase() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0 - HOUR));
    let full = PersonalizationLevel::Full;
    let new_visitor = membership("new_visitor", T0, NEW_VISITOR_1, &["web", "email", "push"]);

    assert_eq!(
        update(h.browse("u1", T0, Some("running"))),
        expected("u1", NOW, T0, full, &ALL_CHANNELS, vec![new_visitor.clone()], &["new_visitor"], &[])
    );
    // A second view changes nothing a consumer sees: no update.
    applied_silently(h.browse("u1", T0 + MINUTE, Some("running")));
    assert_eq!(
        update(h.browse("u1", T0 + 2 * MINUTE, Some("running"))),
        expected(
            "u1",
            NOW + 1,
            T0 + 2 * MINUTE,
            full,
            &ALL_CHANNELS,
            vec![
                new_visitor.clone(),
                membership("running_browser", T0 + 2 * MINUTE, &running_reason(3), &ALL_CHANNELS),
            ],
            &["running_browser"],
            &[],
        )
    );
    // A fourth view changes the figures in the reason: that is a change, published
    // with nothing entered or exited and `since` kept.
    assert_eq!(
        update(h.browse("u1", T0 + 3 * MINUTE, Some("running"))),
        expected(
            "u1",
            NOW + 2,
            T0 + 3 * MINUTE,
            full,
            &ALL_CHANNELS,
            vec![
                new_visitor.clone(),
                membership("running_browser", T0 + 2 * MINUTE, &running_reason(4), &ALL_CHANNELS),
            ],
            &[],
            &[],
        )
    );
    // A view of another category changes nothing.
    applied_silently(h.browse("u1", T0 + 4 * MINUTE, Some("tennis")));
    assert_eq!(h.size_of("running_browser"), 1);
    assert_eq!(
        update(h.purchase("u1", T0 + 5 * MINUTE, &[("shoe-42", "running", 1, 12_000)])),
        expected("u1", NOW + 3, T0 + 5 * MINUTE, full, &ALL_CHANNELS, vec![new_visitor], &[], &["running_browser"],)
    );
    assert_eq!(h.size_of("running_browser"), 0);
    assert_eq!(h.size_of("new_visitor"), 1);
}

#[test]
fn running_browser_exits_when_its_views_leave_the_seven_day_window() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    h.browse("u1", T0, Some("running"));
    h.browse("u1", T0 + 1, Some("running"));
    let entered = update(h.browse("u1", T0 + 2, Some("running")));
    assert_eq!(entered.entered, strings(&["running_browser"]));
    // One ms before the first view is 7 days old, all three still count.
    let still = h.browse("u1", T0 + 7 * DAY - 1, None);
    // new_visitor → returning_visitor (a second day), running_browser unchanged.
    let still = update(still);
    assert_eq!((still.entered.clone(), still.exited.clone()), (ids(&["returning_visitor"]), ids(&["new_visitor"])));
    assert!(still
        .segments
        .iter()
        .any(|segment| segment.id == "running_browser" && segment.reason == running_reason(3)));
    // Exactly 7 days after the first view, it is out of the window: 2 views, exit.
    let exit = update(h.browse("u1", T0 + 7 * DAY, None));
    assert_eq!(exit.exited, strings(&["running_browser"]));
    assert_eq!(exit.entered, Vec::<String>::new());
    assert_eq!(exit.segments.iter().map(|segment| segment.id.as_str()).collect::<Vec<_>>(), vec!["returning_visitor"]);
}

#[test]
fn a_new_visitor_becomes_a_returning_visitor_in_one_update() {
    let h = harness();
    applied_silently(h.consent("u2", &["personalization", "email"], PersonalizationLevel::Light, T0));
    let light = PersonalizationLevel::Light;
    assert_eq!(
        update(h.browse("u2", T0, None)),
        expected(
            "u2",
            NOW,
            T0,
            light,
            &["email"],
            vec![membership("new_visitor", T0, NEW_VISITOR_1, &["email"])],
            &["new_visitor"],
            &[],
        )
    );
    assert_eq!(
        update(h.browse("u2", T0 + DAY, None)),
        expected(
            "u2",
            NOW + 1,
            T0 + DAY,
            light,
            &["email"],
            vec![membership("returning_visitor", T0 + DAY, RETURNING_2, &["email"])],
            &["returning_visitor"],
            &["new_visitor"],
        )
    );
    // 30 days after the second day's visit, only today counts: new visitor again.
    applied_silently(h.browse("u2", T0 + 31 * DAY - 1, None));
    assert_eq!(
        update(h.browse("u2", T0 + 31 * DAY, None)),
        expected(
            "u2",
            NOW + 2,
            T0 + 31 * DAY,
            light,
            &["email"],
            vec![membership("new_visitor", T0 + 31 * DAY, NEW_VISITOR_1, &["email"])],
            &["new_visitor"],
            &["returning_visitor"],
        )
    );
}

#[test]
fn high_value_needs_500_00_in_90_days_and_says_so() {
    let h = harness();
    applied_silently(h.consent("u3", &EVERYTHING, PersonalizationLevel::Full, T0));
    assert_eq!(
        update(h.purchase("u3", T0, &[("tv", "electronics", 1, 50_000)])),
        expected(
            "u3",
            NOW,
            T0,
            PersonalizationLevel::Full,
            &ALL_CHANNELS,
            vec![membership("high_value", T0, "Spent 500.00 across 1 purchase in the last 90 days.", &ALL_CHANNELS)],
            &["high_value"],
            &[],
        )
    );
    // The membership keeps the segment's two figures, spent and orders, and no room for more.
    let held = h.state("u3").published.expect("published").members;
    assert_eq!(held.iter().map(|member| member.figures.to_vec()).collect::<Vec<_>>(), vec![vec![50_000.0, 1.0]]);
    assert!(!held[0].figures.spilled());

    applied_silently(h.consent("u4", &EVERYTHING, PersonalizationLevel::Full, T0));
    applied_silently(h.purchase("u4", T0, &[("tv", "electronics", 1, 49_999)]));
    let entered = update(h.purchase("u4", T0 + DAY, &[("cable", "electronics", 1, 1)]));
    assert_eq!(entered.segments[0].reason, "Spent 500.00 across 2 purchases in the last 90 days.");
    assert_eq!(entered.segments[0].since, T0 + DAY);
    // 90 days after the first purchase it leaves the window: 0.01 remains, exit.
    let exited = update(h.purchase("u4", T0 + 90 * DAY, &[("pen", "office", 2, 150)]));
    assert_eq!(exited.exited, strings(&["high_value"]));
    assert!(exited.segments.is_empty());
}

#[test]
fn an_event_of_another_kind_after_a_window_exit_publishes_the_exit_too() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    update(h.purchase("u1", T0, &[("tv", "electronics", 1, 50_000)]));
    // A page view a day later: high_value (it reads purchases only) is kept as it was.
    let kept = update(h.browse("u1", T0 + DAY, None));
    let spent = "Spent 500.00 across 1 purchase in the last 90 days.";
    assert_eq!(kept.segments[0], membership("high_value", T0, spent, &ALL_CHANNELS));
    assert_eq!(kept.entered, strings(&["new_visitor"]));
    // The purchase left the 90-day window before the next page view, and no
    // timer fired in between (event time did not advance): the page view's
    // update shows high_value left.
    let after = update(h.browse("u1", T0 + 90 * DAY, None));
    assert_eq!((after.exited, after.entered), (ids(&["high_value"]), ids(&[])));
    assert_eq!(after.segments, vec![membership("new_visitor", T0 + DAY, NEW_VISITOR_1, &["web", "email", "push"])]);
}

#[test]
fn creature_of_habit_needs_nine_of_the_last_ten_purchases_and_never_uses_web_or_ads() {
    let h = harness();
    applied_silently(h.consent("u5", &EVERYTHING, PersonalizationLevel::Full, T0));
    for index in 0..9 {
        applied_silently(h.purchase("u5", T0 + index * DAY, &[("coffee", "food", 1, 300)]));
    }
    assert_eq!(
        update(h.purchase("u5", T0 + 9 * DAY, &[("tea", "food", 1, 300)])),
        expected(
            "u5",
            NOW,
            T0 + 9 * DAY,
            PersonalizationLevel::Full,
            &ALL_CHANNELS,
            vec![membership(
                "creature_of_habit",
                T0 + 9 * DAY,
                "Bought the same product in 9 of the last 10 purchases.",
                &["email", "push"]
            )],
            &["creature_of_habit"],
            &[],
        )
    );
    // An eleventh purchase, another coffee: the oldest coffee drops out, still 9.
    applied_silently(h.purchase("u5", T0 + 10 * DAY, &[("coffee", "food", 1, 300)]));
    // A second tea: 8 of the last 10, exit.
    let exit = update(h.purchase("u5", T0 + 11 * DAY, &[("tea", "food", 1, 300)]));
    assert_eq!(exit.exited, strings(&["creature_of_habit"]));
}

#[test]
fn creature_of_habit_with_eight_of_ten_is_not_entered() {
    let h = harness();
    applied_silently(h.consent("u6", &EVERYTHING, PersonalizationLevel::Full, T0));
    for index in 0..10 {
        let product = if index < 8 { "coffee" } else { "tea" };
        applied_silently(h.purchase("u6", T0 + index * HOUR, &[(product, "food", 1, 300)]));
    }
    assert_eq!(h.processor.memberships("u6"), None);
}

#[test]
fn near_store_with_precise_location_is_entered_at_a_store_and_left_an_hour_later() {
    let h = harness();
    let granted = ["personalization", "location", "precise_location", "push"];
    applied_silently(h.consent("u7", &granted, PersonalizationLevel::Full, T0));
    assert_eq!(
        update(h.location("u7", T0, BERLIN_STORE)),
        expected(
            "u7",
            NOW,
            T0,
            PersonalizationLevel::Full,
            &["push"],
            vec![membership("near_store", T0, NEAR_STORE, &["push"])],
            &["near_store"],
            &[],
        )
    );
    // 400 m from the Hamburg store, 30 minutes later: still a member, nothing new.
    applied_silently(h.location("u7", T0 + 30 * MINUTE, (HAMBURG_STORE.0 + 0.0036, HAMBURG_STORE.1)));
    // 600 m from the Munich store, an hour after the Hamburg fix: exit.
    let exit = update(h.location("u7", T0 + 90 * MINUTE, (MUNICH_STORE.0 + 0.0054, MUNICH_STORE.1)));
    assert_eq!(
        exit,
        expected("u7", NOW + 1, T0 + 90 * MINUTE, PersonalizationLevel::Full, &["push"], vec![], &[], &["near_store"])
    );
}

#[test]
fn without_precise_location_coordinates_are_coarsened_and_near_store_is_never_entered() {
    let h = harness_with_coarse_segment();
    let granted = ["personalization", "location", "web", "push"];
    applied_silently(h.consent("u8", &granted, PersonalizationLevel::Full, T0));
    let first = update(h.location("u8", T0, BERLIN_STORE));
    assert_eq!(first.entered, strings(&["in_berlin"]), "coarse location serves coarse segments");
    applied_silently(h.location("u8", T0 + MINUTE, HAMBURG_STORE));
    applied_silently(h.location("u8", T0 + 2 * MINUTE, MUNICH_STORE));
    let kept: Vec<(f64, f64)> = h.state("u8").history.locations.iter().map(|fact| (fact.lat, fact.lon)).collect();
    let expected_cells = [(52.525, 13.425), (53.575, 9.975), (48.125, 11.575)];
    assert_eq!(kept.len(), 3);
    for ((lat, lon), (cell_lat, cell_lon)) in kept.iter().zip(expected_cells) {
        assert!((lat - cell_lat).abs() < 1e-9 && (lon - cell_lon).abs() < 1e-9, "{lat},{lon}");
    }
    let segments: Vec<CompactString> =
        h.processor.memberships("u8").unwrap().into_iter().map(|member| member.id).collect();
    assert_eq!(segments, ["in_berlin"], "never near_store");

    // Granting precise location later makes near_store eligible, but the stored
    // fixes stay coarse (about 1.5 km from the Berlin store): not entered.
    let precise = ["personalization", "location", "precise_location", "web", "push"];
    applied_silently(h.consent("u8", &precise, PersonalizationLevel::Full, T0 + 3 * MINUTE));
    // A precise fix now counts.
    let entered = update(h.location("u8", T0 + 4 * MINUTE, BERLIN_STORE));
    assert_eq!(entered.entered, strings(&["near_store"]));
    let kept = h.state("u8").history.locations.last().cloned().unwrap();
    assert_eq!((kept.lat, kept.lon), BERLIN_STORE);
}

#[test]
fn coarsening_snaps_to_cell_centres() {
    let close = |(lat, lon): (f64, f64), (want_lat, want_lon): (f64, f64)| {
        (lat - want_lat).abs() < 1e-9 && (lon - want_lon).abs() < 1e-9
    };
    assert!(close(coarsen(52.5246, 13.4020), (52.525, 13.425)));
    assert!(close(coarsen(-33.8688, 151.2093), (-33.875, 151.225)));
    assert!(close(coarsen(0.0, 0.0), (0.025, 0.025)));
    assert!(close(coarsen(-0.01, -0.01), (-0.025, -0.025)));
    assert!(close(coarsen(90.0, 180.0), (90.0, 180.0)));
    assert!(close(coarsen(-90.0, -180.0), (-89.975, -179.975)));
}

// --- consent ---------------------------------------------------------------

#[test]
fn without_consent_events_are_dropped_and_nothing_is_kept() {
    let h = harness();
    dropped(h.browse("u1", T0, Some("running")), DropReason::NoConsent);
    dropped(h.purchase("u1", T0, &[("tv", "electronics", 1, 90_000)]), DropReason::NoConsent);
    dropped(h.location("u1", T0, BERLIN_STORE), DropReason::NoConsent);
    assert_eq!(h.processor.user_count(), 0);
    assert_eq!(h.processor.memberships("u1"), None);
}

#[test]
fn level_none_drops_events_and_keeps_only_the_refusal() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::None, T0));
    dropped(h.browse("u1", T0, Some("running")), DropReason::LevelNone);
    dropped(h.purchase("u1", T0, &[("tv", "electronics", 1, 90_000)]), DropReason::LevelNone);
    assert_eq!(h.processor.user_count(), 1);
    let state = h.state("u1");
    assert!(state.history.is_empty());
    assert_eq!(state.published, None);
    assert_eq!(h.processor.consent_in_force("u1").unwrap().level, PersonalizationLevel::None);
}

#[test]
fn a_refusal_of_personalization_drops_events() {
    let h = harness();
    applied_silently(h.consent("u1", &["web", "location", "ads"], PersonalizationLevel::Full, T0));
    dropped(h.browse("u1", T0, None), DropReason::NoPersonalization);
    dropped(h.location("u1", T0, BERLIN_STORE), DropReason::NoPersonalization);
    applied_silently(h.consent("u1", &["personalization"], PersonalizationLevel::Full, T0 + 1));
    dropped(h.location("u1", T0, BERLIN_STORE), DropReason::NoLocation);
    assert!(h.state("u1").history.is_empty());
}

#[test]
fn light_gets_only_light_segments() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Light, T0));
    let first = update(h.browse("u1", T0, Some("running")));
    assert_eq!(first.level, PersonalizationLevel::Light);
    assert_eq!(first.entered, strings(&["new_visitor"]));
    applied_silently(h.browse("u1", T0 + 1, Some("running")));
    applied_silently(h.browse("u1", T0 + 2, Some("running")));
    applied_silently(h.browse("u1", T0 + 3, Some("running")));
    applied_silently(h.purchase("u1", T0 + 4, &[("tv", "electronics", 1, 90_000)]));
    for index in 0..10 {
        applied_silently(h.purchase("u1", T0 + 5 + index, &[("coffee", "food", 1, 300)]));
    }
    let second = update(h.browse("u1", T0 + DAY, None));
    let ids: Vec<&str> = second.segments.iter().map(|segment| segment.id.as_str()).collect();
    assert_eq!(ids, vec!["returning_visitor"]);

    // Facts no segment allowed at LIGHT reads are not kept: the purchases are
    // gone, while the browses (read by the light segments) remain.
    assert!(h.state("u1").history.purchases.is_empty());
    assert_eq!(h.state("u1").history.browses.len(), 5);

    // Raising the level to FULL enters the full segments the kept facts support, at once.
    let raised = update(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0 + DAY + 1));
    let ids: Vec<&str> = raised.segments.iter().map(|segment| segment.id.as_str()).collect();
    assert_eq!(ids, vec!["returning_visitor", "running_browser"]);
    assert_eq!(raised.entered, strings(&["running_browser"]));
    assert_eq!(raised.exited, Vec::<String>::new());
    assert_eq!(raised.ts, T0 + DAY + 1);
    assert_eq!(raised.level, PersonalizationLevel::Full);
}

#[test]
fn withdrawing_personalization_erases_the_user_and_publishes_a_tombstone() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    let before = update(h.purchase("u1", T0, &[("tv", "electronics", 1, 90_000)]));
    assert_eq!(h.size_of("high_value"), 1);

    tombstone(h.consent("u1", &["web", "email", "push", "ads"], PersonalizationLevel::Full, T0 + 1), "u1");
    let state = h.state("u1");
    assert!(state.history.is_empty());
    assert_eq!(state.published, None);
    assert_eq!(h.processor.memberships("u1"), None);
    assert_eq!(h.size_of("high_value"), 0);

    dropped(h.purchase("u1", T0 + 2, &[("tv", "electronics", 1, 90_000)]), DropReason::NoPersonalization);
    // A second withdrawal has nothing left to erase.
    applied_silently(h.consent("u1", &[], PersonalizationLevel::Full, T0 + 3));

    // Consenting again starts from nothing; versions keep increasing.
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0 + 4));
    let again = update(h.browse("u1", T0 + 5, None));
    assert_eq!(again.entered, strings(&["new_visitor"]));
    assert_eq!(again.segments.len(), 1);
    assert!(again.version > before.version);
}

#[test]
fn setting_level_none_erases_the_user_like_a_withdrawal() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    update(h.browse("u1", T0, None));
    tombstone(h.consent("u1", &EVERYTHING, PersonalizationLevel::None, T0 + 1), "u1");
    assert!(h.state("u1").history.is_empty());
    dropped(h.browse("u1", T0 + 2, None), DropReason::LevelNone);
}

#[test]
fn withdrawal_erases_facts_even_when_no_profile_was_published() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    applied_silently(h.purchase("u1", T0, &[("pen", "office", 1, 100)]));
    assert!(!h.state("u1").history.is_empty());
    tombstone(h.consent("u1", &[], PersonalizationLevel::Full, T0 + 1), "u1");
    assert!(h.state("u1").history.is_empty());
}

#[test]
fn a_consent_tombstone_forgets_the_user_entirely() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    update(h.browse("u1", T0, None));
    assert_eq!(h.size_of("new_visitor"), 1);
    tombstone(h.forget("u1"), "u1");
    assert_eq!(h.processor.user_count(), 0);
    assert_eq!(h.size_of("new_visitor"), 0);
    dropped(h.browse("u1", T0 + 1, None), DropReason::NoConsent);
    assert_eq!(h.processor.user_count(), 0);

    // Nothing held: nothing to publish, and no state is created.
    applied_silently(h.forget("u1"));
    applied_silently(h.consent("u2", &["web"], PersonalizationLevel::Full, T0));
    assert_eq!(h.processor.user_count(), 1);
    applied_silently(h.forget("u2"));
    assert_eq!(h.processor.user_count(), 0);
}

#[test]
fn gpc_removes_ads_until_a_newer_consent_change_grants_ads_again() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    let spent = "Spent 900.00 across 1 purchase in the last 90 days.";
    update(h.purchase("u1", T0, &[("tv", "electronics", 1, 90_000)]));
    let without_ads = ["web", "email", "push"];
    assert_eq!(
        update(h.browse_with_gpc("u1", T0 + MINUTE)),
        expected(
            "u1",
            NOW + 1,
            T0 + MINUTE,
            PersonalizationLevel::Full,
            &without_ads,
            vec![
                membership("high_value", T0, spent, &without_ads),
                membership("new_visitor", T0 + MINUTE, NEW_VISITOR_1, &without_ads),
            ],
            &["new_visitor"],
            &[],
        )
    );
    // A later event without GPC does not bring ads back.
    applied_silently(h.browse("u1", T0 + 2 * MINUTE, None));
    let gpc_opt_out = h.state("u1").gpc_opt_out;
    assert!(!h.processor.consent_in_force("u1").unwrap().effective(gpc_opt_out).contains(Purpose::Ads));
    // A newer consent change granting ads does.
    assert_eq!(
        update(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0 + 3 * MINUTE)),
        expected(
            "u1",
            NOW + 2,
            T0 + 3 * MINUTE,
            PersonalizationLevel::Full,
            &ALL_CHANNELS,
            vec![
                membership("high_value", T0, spent, &ALL_CHANNELS),
                membership("new_visitor", T0 + MINUTE, NEW_VISITOR_1, &without_ads),
            ],
            &[],
            &[],
        )
    );
    // The profile held is the one published: the explain API shows ads again.
    assert_eq!(h.processor.explain("u1").unwrap().profile.unwrap().channels, names(&ALL_CHANNELS));
}

#[test]
fn removing_location_exits_near_store_and_keeps_the_other_segments() {
    let h = harness();
    let granted = ["personalization", "location", "precise_location", "web", "push"];
    applied_silently(h.consent("u1", &granted, PersonalizationLevel::Full, T0));
    update(h.browse("u1", T0, None));
    let entered = update(h.location("u1", T0 + MINUTE, BERLIN_STORE));
    assert_eq!(entered.entered, strings(&["near_store"]));
    assert_eq!(h.size_of("near_store"), 1);

    assert_eq!(
        update(h.consent("u1", &["personalization", "web", "push"], PersonalizationLevel::Full, T0 + 2 * MINUTE)),
        expected(
            "u1",
            NOW + 2,
            T0 + 2 * MINUTE,
            PersonalizationLevel::Full,
            &["web", "push"],
            vec![membership("new_visitor", T0, NEW_VISITOR_1, &["web", "push"])],
            &[],
            &["near_store"],
        )
    );
    assert!(h.state("u1").history.locations.is_empty());
    assert_eq!(h.size_of("near_store"), 0);
    dropped(h.location("u1", T0 + 3 * MINUTE, BERLIN_STORE), DropReason::NoLocation);
}

#[test]
fn removing_precise_location_coarsens_kept_fixes_and_exits_near_store() {
    let h = harness_with_coarse_segment();
    let precise = ["personalization", "location", "precise_location", "push"];
    applied_silently(h.consent("u1", &precise, PersonalizationLevel::Full, T0));
    update(h.location("u1", T0, BERLIN_STORE));
    let exit = update(h.consent("u1", &["personalization", "location", "push"], PersonalizationLevel::Full, T0 + 1));
    assert_eq!(exit.exited, strings(&["near_store"]));
    assert_eq!(exit.segments.iter().map(|member| member.id.as_str()).collect::<Vec<_>>(), vec!["in_berlin"]);
    let kept = h.state("u1").history.locations[0].clone();
    assert!((kept.lat - 52.525).abs() < 1e-9 && (kept.lon - 13.425).abs() < 1e-9, "{kept:?}");
}

#[test]
fn facts_no_allowed_segment_reads_are_not_kept() {
    // With the default catalogue only near_store reads location, and it needs
    // precise_location: without it, even coarse fixes are not kept.
    let h = harness();
    applied_silently(h.consent("u1", &["personalization", "location", "push"], PersonalizationLevel::Full, T0));
    applied_silently(h.location("u1", T0, BERLIN_STORE));
    assert!(h.state("u1").history.locations.is_empty());
    // Removing precise_location later deletes the precise fixes the same way.
    applied_silently(h.consent(
        "u2",
        &["personalization", "location", "precise_location", "push"],
        PersonalizationLevel::Full,
        T0,
    ));
    update(h.location("u2", T0, BERLIN_STORE));
    let exit = update(h.consent("u2", &["personalization", "location", "push"], PersonalizationLevel::Full, T0 + 1));
    assert_eq!(exit.exited, strings(&["near_store"]));
    assert!(h.state("u2").history.locations.is_empty());
}

#[test]
fn without_sensitive_a_sensitive_item_does_not_count_towards_high_value() {
    let h = harness_with_sensitive(&["prenatal"]);
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    applied_silently(h.purchase("u1", T0, &[("vitamins", "prenatal", 1, 20_000), ("tv", "electronics", 1, 40_000)]));
    let kept = h.state("u1").history.purchases[0].clone();
    assert_eq!(kept.total_cents, 40_000);
    assert_eq!(kept.items.len(), 1);
    assert_eq!(kept.items[0].category, hash_value("electronics"));
    // An order of only sensitive items leaves nothing behind.
    applied_silently(h.purchase("u1", T0 + 1, &[("crib", "prenatal", 1, 60_000)]));
    assert_eq!(h.state("u1").history.purchases.len(), 1);
    let entered = update(h.purchase("u1", T0 + 2, &[("cable", "electronics", 1, 10_000)]));
    assert_eq!(entered.segments[0].reason, "Spent 500.00 across 2 purchases in the last 90 days.");
}

#[test]
fn with_sensitive_a_sensitive_item_counts_until_sensitive_is_withdrawn() {
    let h = harness_with_sensitive(&["prenatal"]);
    let with_sensitive = ["personalization", "sensitive", "web", "email", "push", "ads"];
    applied_silently(h.consent("u1", &with_sensitive, PersonalizationLevel::Full, T0));
    let entered = update(h.purchase("u1", T0, &[("crib", "prenatal", 1, 50_000)]));
    assert_eq!(entered.entered, strings(&["expecting_parent", "high_value"]));
    assert_eq!(
        entered.segments,
        vec![
            membership("expecting_parent", T0, "Bought 1 prenatal product in the last 180 days.", &["email"]),
            membership("high_value", T0, "Spent 500.00 across 1 purchase in the last 90 days.", &ALL_CHANNELS),
        ]
    );
    let exit = update(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0 + 1));
    assert_eq!(exit.exited, strings(&["expecting_parent", "high_value"]));
    assert!(h.state("u1").history.purchases.is_empty());
}

#[test]
fn expecting_parent_is_never_computed_without_sensitive() {
    let h = harness_with_sensitive(&["prenatal"]);
    // FULL and every other purpose, but not `sensitive`.
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    for day in 0..3 {
        applied_silently(h.purchase("u1", T0 + day * DAY, &[("crib", "prenatal", 1, 9_000)]));
    }
    assert_eq!(h.processor.memberships("u1"), None);
    assert!(h.state("u1").history.purchases.is_empty(), "nothing about a sensitive item is stored");
    assert_eq!(h.size_of("expecting_parent"), 0);
}

#[test]
fn sensitive_browses_keep_no_category_or_product_without_sensitive() {
    let h = harness_with_sensitive(&["prenatal"]);
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    update(h.browse("u1", T0, Some("prenatal")));
    let fact = h.state("u1").history.browses[0].clone();
    assert_eq!((fact.category, fact.product), (None, None));
    assert_eq!(fact.page_type, hash_value("product"));
}

#[test]
fn withdrawing_sensitive_forgets_sensitive_browses_too() {
    // Regression: withdrawing `sensitive` removed sensitive purchase lines but
    // kept the category and product of sensitive browses.
    let h = harness_with_sensitive(&["prenatal"]);
    let with_sensitive = ["personalization", "sensitive", "web"];
    applied_silently(h.consent("u1", &with_sensitive, PersonalizationLevel::Full, T0));
    update(h.browse("u1", T0, Some("prenatal")));
    h.browse("u1", T0 + 1, Some("running"));
    let fact = h.state("u1").history.browses[0].clone();
    assert_eq!(fact.category, hash_present(Some("prenatal")));
    h.consent("u1", &["personalization", "web"], PersonalizationLevel::Full, T0 + 2);
    let browses = h.state("u1").history.browses;
    assert_eq!((browses[0].category, browses[0].product), (None, None));
    assert_eq!(browses[1].category, hash_present(Some("running")));
    assert_eq!(browses[1].product, hash_present(Some("running-item")));
}

// --- bad records -----------------------------------------------------------

#[test]
fn bad_keys_are_rejected() {
    let h = harness();
    let value = serde_json::to_vec(&browse_event("u1", T0, None)).unwrap();
    for key in [None, Some(&[0xFF, 0xFE][..]), Some(&b""[..])] {
        let processed = h.processor.process(InputKind::Browse, key, Some(&value), NOW);
        assert_eq!(processed.outcome, Outcome::Rejected(Rejection::BadKey));
        assert_eq!(processed.output, None);
        assert_eq!(Rejection::BadKey.reason(), "bad_key");
    }
    // A consent tombstone with a bad key forgets nobody.
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    rejected(h.processor.process(InputKind::Consent, None, None, NOW), Rejection::BadKey);
    assert_eq!(h.processor.user_count(), 1);
}

#[test]
fn a_key_that_differs_from_the_user_id_is_rejected() {
    let h = harness();
    let processed = h.send(InputKind::Browse, "u2", &browse_event("u1", T0, None));
    assert_eq!(Rejection::KeyMismatch.reason(), "key_mismatch");
    rejected(processed, Rejection::KeyMismatch);
    let change = ConsentChange {
        user_id: "u1".to_owned(),
        ts: T0,
        granted: strings(&EVERYTHING),
        level: PersonalizationLevel::Full,
        source: "cmp".to_owned(),
    };
    rejected(h.send(InputKind::Consent, "u2", &change), Rejection::KeyMismatch);
    assert_eq!(h.processor.user_count(), 0);
}

#[test]
fn event_times_far_from_now_are_absurd() {
    let h = harness();
    let absurd = || Rejection::AbsurdValue("timestamp too far from now");
    assert_eq!(absurd().reason(), "absurd_value");
    rejected(h.browse("u1", NOW - TOLERANCE - 1, None), absurd());
    rejected(h.browse("u1", NOW + TOLERANCE + 1, None), absurd());
    rejected(h.browse("u1", 0, None), absurd());
    rejected(h.browse("u1", i64::MIN, None), absurd());
    rejected(h.browse("u1", i64::MAX, None), absurd());
    // At the tolerance it is a valid record (dropped here for want of consent).
    dropped(h.browse("u1", NOW - TOLERANCE, None), DropReason::NoConsent);
    dropped(h.browse("u1", NOW + TOLERANCE, None), DropReason::NoConsent);
    assert_eq!(h.processor.user_count(), 0);
}

#[test]
fn an_old_consent_choice_is_still_in_force() {
    // Regression: the consent topic is compacted and re-read from the start, so
    // a choice made long ago is the one in force, not an absurd value.
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, NOW - 3 * TOLERANCE));
    assert_eq!(update(h.browse("u1", T0, None)).entered, strings(&["new_visitor"]));
    // A choice from the future is still absurd.
    rejected(
        h.consent("u2", &EVERYTHING, PersonalizationLevel::Full, NOW + TOLERANCE + 1),
        Rejection::AbsurdValue("timestamp too far from now"),
    );
}

#[test]
fn absurd_coordinates_are_rejected() {
    let h = harness();
    let schema = include_str!("../../schemas/location_event.avsc");
    let latitude = "latitude outside -90..90";
    let longitude = "longitude outside -180..180";
    let cases = [
        ((f64::NAN, 13.0), latitude),
        ((f64::INFINITY, 13.0), latitude),
        ((90.000_001, 13.0), latitude),
        ((-91.0, 13.0), latitude),
        ((52.0, f64::NAN), longitude),
        ((52.0, f64::NEG_INFINITY), longitude),
        ((52.0, 180.000_001), longitude),
        ((52.0, -181.0), longitude),
    ];
    for (at, why) in cases {
        let value = avro(schema, &location_event("u1", T0, at));
        let processed = h.processor.process(InputKind::Location, Some(b"u1"), Some(&value), NOW);
        assert_eq!(processed.outcome, Outcome::Rejected(Rejection::AbsurdValue(why)), "{at:?}");
        assert_eq!(processed.output, None);
    }
    // The edges themselves are valid places.
    for at in [(90.0, 180.0), (-90.0, -180.0)] {
        let value = avro(schema, &location_event("u1", T0, at));
        let processed = h.processor.process(InputKind::Location, Some(b"u1"), Some(&value), NOW);
        assert_eq!(processed.outcome, Outcome::Dropped(DropReason::NoConsent));
    }
}

#[test]
fn negative_amounts_are_rejected() {
    let h = harness();
    let mut negative_total = purchase_event("u1", T0, &[("tv", "electronics", 1, 100)]);
    negative_total.total_cents = -1;
    rejected(h.send(InputKind::Purchase, "u1", &negative_total), Rejection::AbsurdValue("negative total_cents"));
    let negative_price = purchase_event("u1", T0, &[("tv", "electronics", 1, -100)]);
    let mut negative_price = negative_price;
    negative_price.total_cents = 0;
    rejected(
        h.send(InputKind::Purchase, "u1", &negative_price),
        Rejection::AbsurdValue("negative quantity or price_cents"),
    );
    let mut negative_quantity = purchase_event("u1", T0, &[("tv", "electronics", 1, 100)]);
    negative_quantity.items[0].quantity = -2;
    rejected(
        h.send(InputKind::Purchase, "u1", &negative_quantity),
        Rejection::AbsurdValue("negative quantity or price_cents"),
    );
}

#[test]
fn undecodable_and_missing_values_are_rejected_with_their_labels() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    let processed = h.processor.process(InputKind::Browse, Some(b"u1"), None, NOW);
    assert_eq!((processed.outcome, processed.output), (Outcome::Rejected(Rejection::NoValue), None));
    assert_eq!(Rejection::NoValue.reason(), "no_value");

    let processed = h.processor.process(InputKind::Browse, Some(b"u1"), Some(b"not json"), NOW);
    match processed.outcome {
        Outcome::Rejected(rejection @ Rejection::Decode(DecodeError::Malformed { .. })) => {
            assert_eq!(rejection.reason(), "undecodable")
        }
        other => panic!("{other:?}"),
    }
    let processed = h.processor.process(InputKind::Purchase, Some(b"u1"), Some(br#"{"user_id":"u1"}"#), NOW);
    match processed.outcome {
        Outcome::Rejected(rejection @ Rejection::Decode(DecodeError::MissingField(_))) => {
            assert_eq!(rejection.reason(), "missing_field")
        }
        other => panic!("{other:?}"),
    }
    let processed = h.processor.process(InputKind::Browse, Some(b"u1"), Some(&[0x00, 0, 0, 0, 1, 2]), NOW);
    assert_eq!(processed.outcome, Outcome::Rejected(Rejection::Decode(DecodeError::NoRegistry(1))));
    assert_eq!(Rejection::Decode(DecodeError::NoRegistry(1)).reason(), "unknown_schema");
    // None of it touched the user.
    assert!(h.state("u1").history.is_empty());
}

#[test]
fn avro_and_json_events_have_the_same_effect() {
    let json = harness();
    let avro_side = harness();
    for h in [&json, &avro_side] {
        applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    }
    let event = purchase_event("u1", T0, &[("tv", "electronics", 1, 50_000)]);
    let from_json = update(json.send(InputKind::Purchase, "u1", &event));
    let value = avro(include_str!("../../schemas/purchase_event.avsc"), &event);
    let from_avro = update(avro_side.processor.process(InputKind::Purchase, Some(b"u1"), Some(&value), NOW));
    assert_eq!(from_json, from_avro);
}

// --- versions --------------------------------------------------------------

#[test]
fn versions_follow_processing_time_and_always_increase() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    let first = update(h.send_at(InputKind::Browse, "u1", &browse_event("u1", T0, None), NOW + 5_000));
    assert_eq!(first.version, NOW + 5_000);
    // The processing clock went back (another instance, a restart): still increasing.
    let second = update(h.send_at(InputKind::Browse, "u1", &browse_event("u1", T0 + DAY, None), NOW));
    assert_eq!(second.version, NOW + 5_001);
    let third = update(h.send_at(
        InputKind::Purchase,
        "u1",
        &purchase_event("u1", T0 + DAY, &[("tv", "electronics", 1, 50_000)]),
        NOW + 9_000,
    ));
    assert_eq!(third.version, NOW + 9_000);
}

#[test]
fn out_of_order_events_are_evaluated_at_the_newest_event_time() {
    let h = harness();
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    update(h.browse("u1", T0 + DAY, None));
    // An older browse from the day before arrives late: returning visitor,
    // published with the user's evaluation time as `since` and the update's `ts`.
    let late = update(h.browse("u1", T0, None));
    assert_eq!(late.ts, T0 + DAY);
    assert_eq!(late.segments, vec![membership("returning_visitor", T0 + DAY, RETURNING_2, &["web", "email", "push"])]);
}

// --- the property: no consent, no output ---------------------------------

#[derive(Clone, Debug)]
enum Op {
    Consent { granted: Vec<&'static str>, level: PersonalizationLevel },
    Forget,
    Browse { day: i64, category: &'static str, gpc: bool },
    Purchase { day: i64, product: &'static str, category: &'static str, price: i64 },
    Location { minute: i64, store: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let level = prop_oneof![
        Just(PersonalizationLevel::None),
        Just(PersonalizationLevel::Light),
        Just(PersonalizationLevel::Full),
    ];
    let purposes = vec![
        "personalization",
        "location",
        "precise_location",
        "sensitive",
        "measurement",
        "web",
        "email",
        "push",
        "ads",
        "unknown",
    ];
    let category = proptest::sample::select(vec!["running", "food", "prenatal"]);
    prop_oneof![
        2 => (proptest::sample::subsequence(purposes, 0..=10), level)
            .prop_map(|(granted, level)| Op::Consent { granted, level }),
        1 => Just(Op::Forget),
        4 => (0i64..40, category.clone(), any::<bool>())
            .prop_map(|(day, category, gpc)| Op::Browse { day, category, gpc }),
        4 => (0i64..40, proptest::sample::select(vec!["coffee", "tea"]), category, prop_oneof![Just(300i64), Just(40_000)])
            .prop_map(|(day, product, category, price)| Op::Purchase { day, product, category, price }),
        2 => (0i64..120, any::<bool>()).prop_map(|(minute, store)| Op::Location { minute, store }),
    ]
}

/// Checks what was published for a user against the consent in force for
/// them (`consent`), whether any of their choices ever allowed a profile
/// (`ever_allowed`), and the version last published (`last_version`).
fn check_output(
    output: &Output,
    ever_allowed: bool,
    consent: Option<&ConsentInForce>,
    last_version: &mut i64,
) -> Result<(), TestCaseError> {
    prop_assert!(ever_allowed, "{output:?} without ever allowing a profile");
    let Output::Update(update) = output else { return Ok(()) };
    let update = update.decode().unwrap();
    let consent = consent.expect("an update needs consent in force");
    prop_assert!(consent.allows_profile());
    prop_assert_eq!(update.level, consent.level);
    prop_assert!(update.version > *last_version);
    *last_version = update.version;
    let ids: Vec<&str> = update.segments.iter().map(|segment| segment.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    prop_assert_eq!(&ids, &sorted);
    let granted = consent.granted;
    for name in update.channels.iter() {
        prop_assert!(granted.contains(Purpose::parse(name).unwrap()), "{name}");
    }
    for segment in &update.segments {
        prop_assert!(segment.channels.iter().all(|channel| update.channels.contains(channel)));
        if consent.level == PersonalizationLevel::Light {
            prop_assert!(matches!(segment.id.as_str(), "new_visitor" | "returning_visitor"));
        }
        if segment.id == "near_store" {
            prop_assert!(granted.contains(Purpose::PreciseLocation));
        }
    }
    for id in &update.entered {
        prop_assert!(ids.contains(&id.as_str()) && !update.exited.contains(id));
    }
    for id in &update.exited {
        prop_assert!(!ids.contains(&id.as_str()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_user_whose_consent_never_allowed_a_profile_never_gets_output(
        ops in proptest::collection::vec((0usize..3, op()), 1..60)
    ) {
        let h = harness_with_sensitive(&["prenatal"]);
        let users = ["alice", "bob", "carol"];
        let mut in_force: [Option<ConsentInForce>; 3] = [None, None, None];
        let mut ever_allowed = [false; 3];
        let mut last_version = [i64::MIN; 3];
        for (step, (user_index, op)) in ops.into_iter().enumerate() {
            let user = users[user_index];
            let ts = T0 + step as i64;
            let processed = match &op {
                Op::Consent { granted, level } => {
                    let change = ConsentChange {
                        user_id: user.to_owned(),
                        ts,
                        granted: granted.iter().map(|name| (*name).to_owned()).collect(),
                        level: *level,
                        source: "prop".to_owned(),
                    };
                    let consent = ConsentInForce::from_change(&change);
                    ever_allowed[user_index] |= consent.allows_profile();
                    in_force[user_index] = Some(consent);
                    h.send(InputKind::Consent, user, &change)
                }
                Op::Forget => {
                    in_force[user_index] = None;
                    last_version[user_index] = i64::MIN;
                    h.forget(user)
                }
                Op::Browse { day, category, gpc } => {
                    let mut event = browse_event(user, ts + day * DAY, Some(category));
                    event.consent = gpc.then_some(EventConsent { tcf: None, gpc: true });
                    h.send(InputKind::Browse, user, &event)
                }
                Op::Purchase { day, product, category, price } => {
                    h.purchase(user, ts + day * DAY, &[(product, category, 1, *price)])
                }
                Op::Location { minute, store } => {
                    let at = if *store { BERLIN_STORE } else { (40.0, -3.7) };
                    h.location(user, ts + minute * MINUTE, at)
                }
            };
            if !matches!(op, Op::Consent { .. } | Op::Forget) {
                let event_kind_location = matches!(op, Op::Location { .. });
                let expected_drop = match &in_force[user_index] {
                    None => Some(DropReason::NoConsent),
                    Some(consent) if !consent.granted.contains(Purpose::Personalization) => {
                        Some(DropReason::NoPersonalization)
                    }
                    Some(consent) if consent.level == PersonalizationLevel::None => Some(DropReason::LevelNone),
                    Some(consent) if event_kind_location && !consent.granted.contains(Purpose::Location) => {
                        Some(DropReason::NoLocation)
                    }
                    Some(_) => None,
                };
                match expected_drop {
                    Some(reason) => {
                        prop_assert_eq!((&processed.outcome, &processed.output), (&Outcome::Dropped(reason), &None))
                    }
                    None => prop_assert_eq!(&processed.outcome, &Outcome::Applied),
                }
            }
            if let Some(output) = &processed.output {
                prop_assert_eq!(output.user_id(), user);
                check_output(output, ever_allowed[user_index], in_force[user_index].as_ref(), &mut last_version[user_index])?;
            }
        }
        // Event time passes every window and then the idle limit: each
        // timer fires under the consent in force, after whatever changes.
        for watermark in [T0 + 45 * DAY, T0 + 400 * DAY] {
            for output in h.processor.advance_to(EventTime(watermark), NOW) {
                let user_index = users.iter().position(|user| *user == output.user_id()).expect("one of the users");
                check_output(&output, ever_allowed[user_index], in_force[user_index].as_ref(), &mut last_version[user_index])?;
            }
        }
        // Member counts agree with the memberships held.
        for (id, size) in h.sizes() {
            let held = users
                .iter()
                .filter(|user| {
                    h.processor
                        .memberships(user)
                        .is_some_and(|segments| segments.iter().any(|segment| segment.id == id))
                })
                .count();
            prop_assert_eq!(size, held as i64, "{}", id);
        }
    }
}

// ---- Time-driven exits: event time progresses without events of the user ----

const LOCATION_GRANTS: [&str; 7] = ["personalization", "location", "precise_location", "web", "email", "push", "ads"];

#[test]
fn near_store_is_exited_when_event_time_passes_one_hour_after_the_last_nearby_fix() {
    let harness = harness();
    harness.consent("shopper", &LOCATION_GRANTS, PersonalizationLevel::Full, T0 - MINUTE);
    let entered = update(harness.location("shopper", T0, BERLIN_STORE));
    assert_eq!(entered.entered, strings(&["near_store"]));
    // Just before the hour is up nothing changes.
    assert!(harness.processor.advance_to(EventTime(T0 + HOUR - 1), NOW).is_empty());
    assert_eq!(harness.size_of("near_store"), 1);
    let outputs = harness.processor.advance_to(EventTime(T0 + HOUR), NOW);
    let [Output::Update(exit)] = outputs.as_slice() else { panic!("one update expected, got {outputs:?}") };
    let exit = exit.decode().unwrap();
    assert_eq!(exit.user_id, "shopper");
    assert_eq!(exit.exited, strings(&["near_store"]));
    assert_eq!(exit.entered, Vec::<String>::new());
    assert_eq!(exit.segments, vec![]);
    assert_eq!(exit.ts, T0 + HOUR, "the exit happens at the moment the window dropped the fix");
    assert!(exit.version > entered.version);
    assert_eq!(harness.size_of("near_store"), 0);
    // The timer fired once: advancing again publishes nothing.
    assert!(harness.processor.advance_to(EventTime(T0 + 2 * HOUR), NOW).is_empty());
}

#[test]
fn a_later_nearby_fix_moves_the_exit_and_the_earlier_timer_is_stale() {
    let harness = harness();
    harness.consent("shopper", &LOCATION_GRANTS, PersonalizationLevel::Full, T0 - MINUTE);
    update(harness.location("shopper", T0, BERLIN_STORE));
    applied_silently(harness.location("shopper", T0 + 30 * MINUTE, BERLIN_STORE));
    assert!(
        harness.processor.advance_to(EventTime(T0 + HOUR), NOW).is_empty(),
        "the second fix is still inside the hour"
    );
    let outputs = harness.processor.advance_to(EventTime(T0 + 90 * MINUTE), NOW);
    assert_eq!(outputs.len(), 1);
    let Output::Update(exit) = &outputs[0] else { panic!("an update") };
    let exit = exit.decode().unwrap();
    assert_eq!((exit.exited.clone(), exit.ts), (ids(&["near_store"]), T0 + 90 * MINUTE));
}

#[test]
fn an_order_no_filter_counts_is_dropped_when_its_retention_ends_without_a_new_event() {
    // creature_of_habit keeps the last ten orders beyond any window; the
    // eleventh-newest goes when it leaves the longest purchase window of a
    // user who granted `sensitive` (180 days, expecting_parent's), although
    // that window counts prenatal lines only.
    let h = harness();
    h.consent("regular", &["personalization", "sensitive", "email"], PersonalizationLevel::Full, T0 - MINUTE);
    for minute in 0..11 {
        h.purchase("regular", T0 + minute * MINUTE, &[("coffee", "grocery", 1, 1_299)]);
    }
    h.processor.advance_to(EventTime(T0 + 180 * DAY - 1), NOW);
    assert_eq!(h.state("regular").history.purchases.len(), 11);
    h.processor.advance_to(EventTime(T0 + 180 * DAY), NOW);
    let kept: Vec<i64> = h.state("regular").history.purchases.iter().map(|order| order.ts).collect();
    assert_eq!(kept, (1..11).map(|minute| T0 + minute * MINUTE).collect::<Vec<_>>());
}

#[test]
fn a_purchase_leaving_the_week_enters_running_browser_without_a_new_event() {
    // running_browser needs no running purchase in the last 7 days: when
    // the shoe bought leaves that window, the three views still in it make
    // the user a member, though they were not one when the timer was set.
    let h = harness();
    h.consent("runner", &EVERYTHING, PersonalizationLevel::Full, T0 - MINUTE);
    h.purchase("runner", T0, &[("shoe", "running", 1, 11_999)]);
    for day in 2..5 {
        h.browse("runner", T0 + day * DAY, Some("running"));
    }
    assert!(h.processor.memberships("runner").unwrap_or_default().iter().all(|member| member.id != "running_browser"));
    let outputs = h.processor.advance_to(EventTime(T0 + 7 * DAY), NOW);
    let [Output::Update(update)] = outputs.as_slice() else { panic!("one update expected, got {outputs:?}") };
    let update = update.decode().unwrap();
    assert_eq!((update.entered.clone(), update.ts), (ids(&["running_browser"]), T0 + 7 * DAY));
}

#[test]
fn time_passing_can_also_enter_a_segment() {
    // Two visit days make a returning visitor; 30 days after the first day,
    // only one day is left in the window and the user is a new visitor again.
    let harness = harness();
    harness.consent("visitor", &EVERYTHING, PersonalizationLevel::Full, T0 - MINUTE);
    update(harness.browse("visitor", T0, None));
    let returning = update(harness.browse("visitor", T0 + DAY, None));
    assert_eq!(returning.entered, strings(&["returning_visitor"]));
    let outputs = harness.processor.advance_to(EventTime(T0 + 30 * DAY), NOW);
    let [Output::Update(update)] = outputs.as_slice() else { panic!("one update expected, got {outputs:?}") };
    let update = update.decode().unwrap();
    assert_eq!(update.entered, strings(&["new_visitor"]));
    assert_eq!(update.exited, strings(&["returning_visitor"]));
    assert_eq!(update.segments[0].reason, NEW_VISITOR_1);
    assert_eq!(update.ts, T0 + 30 * DAY);
}

#[test]
fn a_timer_fires_under_the_choice_in_force_after_a_narrower_one() {
    // A returning visitor (two visit days) with every channel; then the user
    // takes email, push and ads away.
    let harness = harness();
    harness.consent("visitor", &EVERYTHING, PersonalizationLevel::Full, T0 - MINUTE);
    update(harness.browse("visitor", T0, None));
    update(harness.browse("visitor", T0 + DAY, None));
    let narrowed =
        update(harness.consent("visitor", &["personalization", "web"], PersonalizationLevel::Full, T0 + 2 * DAY));
    assert_eq!(narrowed.channels, names(&["web"]));
    the_first_visit_day_leaving_is_published_for_web_only(&harness);
}

/// When the first of a returning visitor's two visit days (`T0`, `T0` + 1
/// day) leaves the 30-day window, the update time alone makes is published
/// under the choice in force, which grants `web` alone: its channels only.
fn the_first_visit_day_leaving_is_published_for_web_only(harness: &Harness) {
    let outputs = harness.processor.advance_to(EventTime(T0 + 30 * DAY), NOW);
    let [Output::Update(update)] = outputs.as_slice() else { panic!("one update expected, got {outputs:?}") };
    let update = update.decode().unwrap();
    assert_eq!((update.entered.clone(), update.exited.clone()), (ids(&["new_visitor"]), ids(&["returning_visitor"])));
    assert_eq!((update.channels.clone(), update.segments[0].channels.clone()), (names(&["web"]), names(&["web"])));
}

#[test]
fn a_withdrawn_user_gets_no_time_driven_update() {
    let harness = harness();
    harness.consent("shopper", &LOCATION_GRANTS, PersonalizationLevel::Full, T0 - MINUTE);
    update(harness.location("shopper", T0, BERLIN_STORE));
    tombstone(harness.consent("shopper", &[], PersonalizationLevel::None, T0 + MINUTE), "shopper");
    assert!(harness.processor.advance_to(EventTime(T0 + 2 * HOUR), NOW).is_empty());
}

#[test]
fn a_recency_segment_is_entered_when_its_threshold_passes_without_new_events() {
    let h = harness_with_extra(
        r#"
[[segment]]
id = "lapsed_buyer"
description = "Bought in the last 90 days, but not in the last 30."
tier = "full"
channels = ["email"]
reason = "Has not bought anything for 30 days or more."
rule.all = [
  { count = { of = "purchase", within = "90d" }, at_least = 1 },
  { since_last = { of = "purchase", within = "90d" }, at_least = "30d" },
]
"#,
    );
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    applied_silently(h.purchase("u1", T0, &[("mug", "home", 1, 1_500)]));
    assert!(h.processor.advance_to(EventTime(T0 + 30 * DAY - 1), NOW).is_empty());
    let outputs = h.processor.advance_to(EventTime(T0 + 30 * DAY), NOW);
    let [Output::Update(lapsed)] = outputs.as_slice() else { panic!("one update expected, got {outputs:?}") };
    let lapsed = lapsed.decode().unwrap();
    assert_eq!(lapsed.entered, strings(&["lapsed_buyer"]));
    assert_eq!(lapsed.ts, T0 + 30 * DAY);
    assert_eq!(
        lapsed.segments,
        vec![membership("lapsed_buyer", T0 + 30 * DAY, "Has not bought anything for 30 days or more.", &["email"])]
    );
    // A new purchase ends it; 90 days after the last purchase it cannot apply either.
    let back = update(h.purchase("u1", T0 + 40 * DAY, &[("mug", "home", 1, 1_500)]));
    assert_eq!(back.exited, strings(&["lapsed_buyer"]));
    let outputs = h.processor.advance_to(EventTime(T0 + 70 * DAY), NOW);
    assert_eq!(outputs.len(), 1, "lapsed again 30 days after the second purchase: {outputs:?}");
    let outputs = h.processor.advance_to(EventTime(T0 + 130 * DAY), NOW);
    let [Output::Update(gone)] = outputs.as_slice() else { panic!("one update expected, got {outputs:?}") };
    let gone = gone.decode().unwrap();
    assert_eq!(gone.exited, strings(&["lapsed_buyer"]));
    assert_eq!(gone.ts, T0 + 130 * DAY);
}

#[test]
fn a_recency_figure_moves_with_every_event_whatever_its_kind() {
    let h = harness_with_extra(
        r#"
[[segment]]
id = "last_bought"
description = "Bought nothing for 30 days or more, something in the last 90."
tier = "full"
channels = ["push"]
reason = "Last bought {days:days} days ago."
rule = { since_last = { of = "purchase", within = "90d" }, at_least = "30d", as = "days" }

[[segment]]
id = "long_known"
description = "First seen 30 days ago or more."
tier = "full"
channels = ["email"]
reason = "First seen {days:days} days ago."
rule = { since_first_seen = {}, at_least = "30d", as = "days" }
"#,
    );
    applied_silently(h.consent("u1", &EVERYTHING, PersonalizationLevel::Full, T0));
    applied_silently(h.purchase("u1", T0, &[("mug", "home", 1, 1_500)]));
    let reasons = |update: &ProfileUpdate| -> Vec<String> {
        let shown = update.segments.iter().filter(|member| member.id == "last_bought" || member.id == "long_known");
        shown.map(|member| member.reason.clone()).collect()
    };
    let first = update(h.browse("u1", T0 + 31 * DAY, None));
    assert_eq!(reasons(&first), strings(&["Last bought 31 days ago.", "First seen 31 days ago."]));
    // A page view two days later, with no timer due in between: the figures
    // it shows are two days older, though neither segment reads page views.
    let later = update(h.browse("u1", T0 + 33 * DAY, None));
    assert_eq!(reasons(&later), strings(&["Last bought 33 days ago.", "First seen 33 days ago."]));
}

// ---- The processor against a brute-force oracle ------------------------------

/// One step of a random stream for one user.
#[derive(Clone, Debug)]
enum Step {
    Browse {
        gap_ms: i64,
        category: &'static str,
    },
    Purchase {
        gap_ms: i64,
        product: &'static str,
        category: &'static str,
        cents: i64,
    },
    Location {
        gap_ms: i64,
        near: bool,
    },
    /// Event time moves on (other users' events) to this long after the newest event.
    Advance {
        gap_ms: i64,
    },
}

fn any_gap() -> impl Strategy<Value = i64> {
    // From minutes to weeks, and now and then an event up to an hour late.
    prop_oneof![
        4 => 0..2 * HOUR,
        3 => 0..3 * DAY,
        1 => 0..40 * DAY,
        1 => -HOUR..0,
    ]
}

fn any_step() -> impl Strategy<Value = Step> {
    let category = prop_oneof![Just("running"), Just("books"), Just("home")];
    prop_oneof![
        4 => (any_gap(), category.clone()).prop_map(|(gap_ms, category)| Step::Browse { gap_ms, category }),
        3 => (any_gap(), prop_oneof![Just("coffee"), Just("tea"), Just("shoe")], category, 100..40_000i64)
            .prop_map(|(gap_ms, product, category, cents)| Step::Purchase { gap_ms, product, category, cents }),
        2 => (any_gap(), any::<bool>()).prop_map(|(gap_ms, near)| Step::Location { gap_ms, near }),
        1 => (0..10 * DAY).prop_map(|gap_ms| Step::Advance { gap_ms }),
    ]
}

/// What the memberships must be after `facts` at `now`: every eligible segment
/// evaluated over everything ever applied, with no pruning.
fn oracle(catalogue: &Catalogue, facts: &History, now: i64) -> Vec<(String, String)> {
    let granted: Purposes = [
        Purpose::Personalization,
        Purpose::Location,
        Purpose::PreciseLocation,
        Purpose::Web,
        Purpose::Email,
        Purpose::Push,
        Purpose::Ads,
    ]
    .into_iter()
    .collect();
    let mut expected: Vec<(String, String)> = catalogue
        .segments
        .iter()
        .filter(|segment| eligible(segment, PersonalizationLevel::Full, granted))
        .filter_map(|segment| {
            let mut figures = [0.0; MAX_CAPTURES];
            evaluate(&segment.rule, facts, now, &mut figures, &mut SharedMeasures::new())
                .then(|| (segment.id.clone(), render_reason(&segment.reason, &figures)))
        })
        .collect();
    expected.sort();
    expected
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn published_memberships_always_equal_a_recomputation_over_every_event(steps in proptest::collection::vec(any_step(), 1..60)) {
        let h = harness();
        let catalogue = h.processor.catalogue().clone();
        applied_silently(h.consent("u", &LOCATION_GRANTS, PersonalizationLevel::Full, T0 - DAY));
        let mut all = History::default();
        let (mut newest, mut watermark) = (T0, T0);
        let mut published_last = Vec::new();
        for step in steps {
            let gap = match &step {
                Step::Browse { gap_ms, .. } | Step::Purchase { gap_ms, .. } | Step::Location { gap_ms, .. } => *gap_ms,
                Step::Advance { .. } => 0,
            };
            // Late events may not go back past the watermark (time-driven
            // changes up to it are already published).
            let ts = (newest + gap).max(watermark + 1);
            let outputs: Vec<Output> = match step {
                Step::Browse { category, .. } => {
                    let processed = h.browse("u", ts, Some(category));
                    insert_by_time(&mut all.browses, BrowseFact { ts, page_type: hash_value("product"), category: hash_present(Some(category)), product: hash_present(Some(&format!("{category}-item"))) }, |fact| fact.ts);
                    processed.output.into_iter().collect()
                }
                Step::Purchase { product, category, cents, .. } => {
                    let processed = h.purchase("u", ts, &[(product, category, 1, cents)]);
                    let item = ItemFact { category: hash_value(category), product: hash_value(product), quantity: 1, price_cents: cents, sensitive: false };
                    insert_by_time(&mut all.purchases, PurchaseFact { ts, currency: hash_value("EUR"), total_cents: cents, items: smallvec::smallvec![item] }, |fact| fact.ts);
                    processed.output.into_iter().collect()
                }
                Step::Location { near, .. } => {
                    let at = if near { BERLIN_STORE } else { (52.40, 13.10) };
                    let processed = h.location("u", ts, at);
                    insert_by_time(&mut all.locations, LocationFact { ts, lat: at.0, lon: at.1 }, |fact| fact.ts);
                    processed.output.into_iter().collect()
                }
                Step::Advance { gap_ms } => {
                    watermark = watermark.max(newest + gap_ms);
                    h.processor.advance_to(EventTime(watermark), NOW)
                }
            };
            // The last update published lists what the state holds: an
            // update's memberships are written straight into its datum, the
            // API's rendered, and the two agree.
            for output in outputs {
                published_last = match output {
                    Output::Update(update) => update.decode().unwrap().segments,
                    Output::Tombstone { .. } => Vec::new(),
                };
            }
            prop_assert_eq!(&published_last, &h.processor.memberships("u").unwrap_or_default());
            if !matches!(step, Step::Advance { .. }) {
                newest = newest.max(ts);
            }
            // Time-driven changes have fired up to the watermark: evaluated
            // anywhere from the last change point to it, the result is the same.
            let now = newest.max(watermark);
            let published: Vec<(String, String)> = {
                let mut members: Vec<(String, String)> = h.processor.memberships("u").unwrap_or_default().into_iter().map(|member| (member.id.into(), member.reason)).collect();
                members.sort();
                members
            };
            prop_assert_eq!(published, oracle(&catalogue, &all, now), "after {:?} at {}", step, now);
        }
    }
}

// ---- Experiments --------------------------------------------------------------

/// A light segment that every browsing user enters, with a 50% holdout.
const BROWSERS_EXPERIMENT: &str = r#"
[[segment]]
id = "browsers"
description = "Browsed in the last 30 days."
tier = "light"
channels = ["web"]
holdout = 0.5
reason = "Browsed in the last 30 days."
rule = { count = { of = "browse", within = "30d" }, at_least = 1 }
"#;

#[test]
fn a_planted_lift_is_recovered_within_its_interval() {
    use rand::{Rng, SeedableRng};
    let h = harness_with_extra(BROWSERS_EXPERIMENT);
    let segment = h.processor.catalogue().segments.iter().find(|segment| segment.id == "browsers").unwrap().clone();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(2026);
    let measured = ["personalization", "measurement", "web"];
    for index in 0..20_000 {
        let user = format!("u{index}");
        applied_silently(h.consent(&user, &measured, PersonalizationLevel::Full, T0 - DAY));
        update(h.browse(&user, T0, Some("books")));
        // Planted: treatment converts at 13%, holdout at 10% (lift +30%).
        let holdout = crate::segments::engine::in_holdout(&segment, &user).unwrap();
        if rng.random_bool(if holdout { 0.10 } else { 0.13 }) {
            h.purchase(&user, T0 + DAY, &[("mug", "home", 1, 1_500)]);
        }
        // A purchase after the 7-day window is no conversion.
        if index % 10 == 0 {
            h.purchase(&user, T0 + 8 * DAY, &[("mug", "home", 1, 1_500)]);
        }
    }
    let counts = h.processor.experiment_counts();
    let browsers = counts.iter().find(|experiment| experiment.segment == "browsers").unwrap();
    assert_eq!(browsers.treatment.0 + browsers.holdout.0, 20_000, "every entry is counted once");
    assert!((browsers.holdout.0 as f64 / 20_000.0 - 0.5).abs() < 0.015, "{browsers:?}");
    let lift = crate::report::lift(browsers.treatment, browsers.holdout).unwrap();
    assert!(lift.low < 0.30 && 0.30 < lift.high, "{lift:?}");
    assert!(lift.low > 0.0, "the effect is detected: {lift:?}");
}

#[test]
fn without_measurement_nothing_is_counted() {
    let h = harness_with_extra(BROWSERS_EXPERIMENT);
    applied_silently(h.consent("u", &["personalization", "web"], PersonalizationLevel::Full, T0 - DAY));
    update(h.browse("u", T0, None));
    h.purchase("u", T0 + 1, &[("mug", "home", 1, 1_500)]);
    let counts = h.processor.experiment_counts();
    assert_eq!(counts[0].treatment.0 + counts[0].holdout.0, 0);
    assert!(h.state("u").experiment_entries.is_empty());
}

/// Copies every user's changelog value out of `from` (as the changelog topic would hold them).
fn changelog_of(from: &Harness, users: &[&str]) -> Vec<(String, Option<Vec<u8>>)> {
    users.iter().map(|user| ((*user).to_owned(), from.processor.changelog_value(Partition(0), user))).collect()
}

/// Restores `records` into `into` on partition 0 and reconciles.
fn restore_into(into: &Harness, records: &[(String, Option<Vec<u8>>)]) -> Vec<(Partition, Output)> {
    let mut newest = NewestValues::default();
    for (user, value) in records {
        newest.note(user, value.as_deref());
    }
    let restored = into.processor.restore_partition(Partition(0), &newest, NOW);
    assert_eq!((restored.users, restored.unreadable), (newest.len(), 0));
    restored.outputs.into_iter().map(|output| (Partition(0), output)).collect()
}

#[test]
fn a_state_restored_from_the_changelog_continues_exactly_where_it_was() {
    let before = harness();
    before.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0 - DAY);
    before.browse("u", T0, None);
    let last = update(before.browse("u", T0 + DAY, None));
    let records = changelog_of(&before, &["u"]);

    // A new instance: the consent table is read first, then the changelog.
    let after = harness();
    after.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0 - DAY);
    assert_eq!(restore_into(&after, &records), vec![], "nothing changed, so nothing is published again");
    let restored = after.state("u");
    let original = before.state("u");
    assert_eq!((&restored.history, restored.published.as_ref()), (&original.history, original.published.as_ref()));
    assert_eq!(after.size_of("returning_visitor"), 1);
    // The next event continues from the restored state: a version above the
    // last one, and no entry published twice.
    let next = update(after.purchase("u", T0 + DAY + 1, &[("p-1", "books", 1, 60_000)]));
    assert!(next.version > last.version);
    assert_eq!(next.entered, vec!["high_value"]);
}

#[test]
fn a_withdrawal_read_while_the_state_was_elsewhere_erases_the_restored_state() {
    let before = harness();
    before.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0 - DAY);
    update(before.browse("u", T0, None));
    let records = changelog_of(&before, &["u"]);

    let after = harness();
    after.consent("u", &[], PersonalizationLevel::None, T0 + HOUR);
    let outputs = restore_into(&after, &records);
    assert_eq!(outputs, vec![(Partition(0), Output::Tombstone { user_id: "u".to_owned() })]);
    assert!(after.state("u").history.is_empty());
    assert_eq!(after.processor.changelog_value(Partition(0), "u"), None, "the changelog gets a tombstone");
    assert_eq!(after.size_of("new_visitor"), 0);

    // A user the consent table does not know (forgotten by a tombstone) is removed.
    let forgotten = harness();
    let outputs = restore_into(&forgotten, &records);
    assert_eq!(outputs, vec![(Partition(0), Output::Tombstone { user_id: "u".to_owned() })]);
    assert_eq!(forgotten.processor.user_count(), 0);
}

#[test]
fn a_narrower_consent_in_the_table_deletes_what_it_no_longer_allows_on_restore() {
    let before = harness();
    before.consent("u", &["personalization", "location", "precise_location", "push"], PersonalizationLevel::Full, T0);
    update(before.location("u", T0 + MINUTE, BERLIN_STORE));
    let records = changelog_of(&before, &["u"]);

    let after = harness();
    after.consent("u", &["personalization", "push"], PersonalizationLevel::Full, T0 + HOUR);
    let outputs = restore_into(&after, &records);
    let [(Partition(0), Output::Update(exit))] = outputs.as_slice() else { panic!("one update: {outputs:?}") };
    let exit = exit.decode().unwrap();
    assert_eq!(exit.exited, vec!["near_store"]);
    assert!(after.state("u").history.locations.is_empty());
}

#[test]
fn a_restored_users_timer_fires_under_the_tables_choice_not_the_one_their_state_was_built_under() {
    let before = harness();
    before.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0 - DAY);
    update(before.browse("u", T0, None));
    update(before.browse("u", T0 + DAY, None));
    let records = changelog_of(&before, &["u"]);

    // Email, push and ads were taken away while the state was elsewhere.
    let after = harness();
    after.consent("u", &["personalization", "web"], PersonalizationLevel::Full, T0 + 2 * DAY);
    let outputs = restore_into(&after, &records);
    let [(Partition(0), Output::Update(narrowed))] = outputs.as_slice() else { panic!("one update: {outputs:?}") };
    assert_eq!(narrowed.decode().unwrap().channels, names(&["web"]));
    the_first_visit_day_leaving_is_published_for_web_only(&after);
}

#[test]
fn an_older_consent_read_after_a_newer_restored_one_changes_nothing() {
    let before = harness();
    before.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0);
    update(before.browse("u", T0 + MINUTE, None));
    let records = changelog_of(&before, &["u"]);
    let after = harness();
    after.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0);
    restore_into(&after, &records);
    // A withdrawal older than the choice in force is not applied.
    applied_silently(after.consent("u", &[], PersonalizationLevel::None, T0 - DAY));
    assert!(!after.state("u").history.is_empty());
}

#[test]
fn changelog_values_of_several_users_are_each_users_value_in_the_order_asked() {
    let h = harness();
    for (user, ts) in [("a", T0), ("b", T0), ("c", T0 - DAY)] {
        h.consent(user, &EVERYTHING, PersonalizationLevel::Full, ts);
    }
    update(h.browse("a", T0 + 1, Some("running")));
    applied_silently(h.purchase("c", T0 + 2, &[("mug", "home", 1, 1_500)]));
    let asked = ["c", "nobody", "b", "a"];
    let values = h.processor.changelog_values(Partition(0), &asked);
    let one_by_one: Vec<_> = asked.iter().map(|user| h.processor.changelog_value(Partition(0), user)).collect();
    assert_eq!(values, one_by_one);
    // "b" holds only consent and "nobody" nothing: tombstones; the others' states differ.
    assert!(values[1].is_none() && values[2].is_none());
    let (c, a) = (values[0].as_ref().expect("c's state"), values[3].as_ref().expect("a's state"));
    assert_ne!(c, a);
    let decoded = |value: &[u8]| crate::state::changelog::decode(value, &h.processor.catalogue()).unwrap();
    let (c, a) = (decoded(c), decoded(a));
    assert_eq!((a.state.history.browses.len(), a.consent.unwrap().ts), (1, T0), "a's browse, under a's consent");
    assert_eq!((c.state.history.purchases.len(), c.consent.unwrap().ts), (1, T0 - DAY), "c's purchase, under c's");
    // A partition this instance does not hold has no values to give.
    assert_eq!(h.processor.changelog_values(Partition(7), &["a", "c"]), vec![None, None]);
}

#[test]
fn the_clock_of_a_user_whose_events_kept_no_fact_survives_a_restore() {
    let before = harness();
    before.consent("u", &["personalization", "web"], PersonalizationLevel::Light, T0);
    // A LIGHT user's purchase keeps no fact and enters no segment, but moves
    // their clock.
    let purchase_ts = T0 + 40 * DAY;
    applied_silently(before.purchase("u", purchase_ts, &[("p-1", "books", 1, 100)]));
    let records = changelog_of(&before, &["u"]);
    assert!(records[0].1.is_some(), "the clock is state to keep");
    let after = harness();
    after.consent("u", &["personalization", "web"], PersonalizationLevel::Light, T0);
    assert_eq!(restore_into(&after, &records), vec![]);
    assert_eq!(after.state("u").clock, purchase_ts);
    // A visit 40 days before that clock is outside every window: as without the restart.
    applied_silently(after.browse("u", T0, None));
    applied_silently(before.browse("u", T0, None));
}

#[test]
fn a_changelog_value_keeps_a_gpc_signal_and_nothing_else_is_a_tombstone() {
    let h = harness();
    h.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0);
    assert_eq!(h.processor.changelog_value(Partition(0), "u"), None, "consent alone lives in the consent topic");
    assert_eq!(h.processor.changelog_value(Partition(0), "nobody"), None);
    h.browse_with_gpc("u", T0 + 1);
    let value = h.processor.changelog_value(Partition(0), "u").expect("state to keep");
    let restored = crate::state::changelog::decode(&value, &h.processor.catalogue()).unwrap();
    assert!(restored.state.gpc_opt_out);
    assert_eq!(restored.consent.unwrap().ts, T0);
    assert_eq!(
        crate::state::changelog::decode(&[9, 1, 2], &h.processor.catalogue()),
        Err(crate::state::changelog::ChangelogError::Format(9))
    );
    assert_eq!(
        crate::state::changelog::decode(&[], &h.processor.catalogue()),
        Err(crate::state::changelog::ChangelogError::Empty)
    );
    assert!(crate::state::changelog::decode(&[1, 0xff, 0xff], &h.processor.catalogue()).is_err());
}

#[test]
fn a_membership_of_a_segment_no_longer_in_the_catalogue_is_not_restored() {
    let before = harness_with_coarse_segment();
    before.consent("u", &["personalization", "location", "push"], PersonalizationLevel::Full, T0);
    let entered = update(before.location("u", T0 + MINUTE, BERLIN_STORE));
    assert!(entered.segments.iter().any(|member| member.id == "in_berlin"));
    let records = changelog_of(&before, &["u"]);
    let after = harness();
    after.consent("u", &["personalization", "location", "push"], PersonalizationLevel::Full, T0);
    restore_into(&after, &records);
    let published = after.state("u").published.unwrap();
    assert!(published
        .members
        .iter()
        .all(|member| after.processor.catalogue().segment(member.segment).id != "in_berlin"));
}

#[test]
fn revoking_a_partition_drops_its_users_state_but_keeps_the_consent_table() {
    let h = harness();
    for (user, partition) in [("a", 0), ("b", 1)] {
        let change = ConsentChange {
            user_id: user.to_owned(),
            ts: T0,
            granted: strings(&EVERYTHING),
            level: PersonalizationLevel::Full,
            source: "test".to_owned(),
        };
        let value = serde_json::to_vec(&change).unwrap();
        let source = Source { partition: Partition(partition), watermark: None };
        h.processor.process_from(source, InputKind::Consent, Some(user.as_bytes()), Some(&value), NOW);
        let value = serde_json::to_vec(&browse_event(user, T0 + 1, None)).unwrap();
        update(h.processor.process_from(source, InputKind::Browse, Some(user.as_bytes()), Some(&value), NOW));
    }
    assert_eq!(h.size_of("new_visitor"), 2);
    h.processor.drop_partitions(&[Partition(1)]);
    assert_eq!(h.size_of("new_visitor"), 1);
    assert_eq!(h.processor.user_state("b"), None, "the partition's state is dropped whole");
    assert!(h.processor.consent_in_force("b").is_some(), "the consent table is every instance's");
    assert!(!h.state("a").history.is_empty());
    // Timers of the dropped partition are gone: nothing fires for b.
    assert!(h.processor.advance_partition(Partition(1), EventTime(T0 + 400 * DAY), NOW).is_empty());
}

#[test]
fn an_event_behind_its_partitions_watermark_is_applied_at_the_watermark_unless_no_window_reaches_it() {
    // Issue 9: a topic read behind the others must not lose its events. The
    // default catalogue reads browses for 30 days (new and returning visitor).
    let h = harness();
    h.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0);
    let value = serde_json::to_vec(&browse_event("u", T0 + 10, None)).unwrap();
    let browse_with_watermark = |watermark: i64| {
        let source = Source { partition: Partition(0), watermark: Some(EventTime(watermark)) };
        h.processor.process_from(source, InputKind::Browse, Some(b"u"), Some(&value), NOW)
    };
    let too_late = browse_with_watermark(T0 + 10 + 30 * DAY);
    assert_eq!(
        (too_late.outcome, too_late.output, too_late.event_time),
        (Outcome::Dropped(DropReason::Late), None, Some(T0 + 10))
    );
    assert!(h.state("u").history.is_empty());
    // Inside the window at the partition's event time: applied, and the user
    // is evaluated then, not back at the event's own time.
    let watermark = T0 + 10 + 30 * DAY - 1;
    let applied = update(browse_with_watermark(watermark));
    assert_eq!((applied.ts, applied.entered.clone()), (watermark, ids(&["new_visitor"])));
    assert_eq!(applied.segments[0].reason, "Visited on 1 day in the last 30 days.");
    assert_eq!(h.state("u").history.browses.len(), 1);
    // The browse leaves the window one millisecond later: a timer says so.
    let exits = h.processor.advance_partition(Partition(0), EventTime(watermark + 1), NOW);
    assert_eq!(exits.len(), 1, "{exits:?}");
}

#[test]
fn a_gpc_signal_holds_even_on_an_event_too_old_for_any_window() {
    // The signal is about the person, whatever the event's moment: dropping
    // it as late would keep personalizing ads for someone who opted out.
    let h = harness();
    h.consent("u", &LOCATION_GRANTS, PersonalizationLevel::Full, T0);
    let watermark = T0 + 30 * DAY;
    let at_watermark = |kind: InputKind, value: Vec<u8>| {
        let source = Source { partition: Partition(0), watermark: Some(EventTime(watermark)) };
        h.processor.process_from(source, kind, Some(b"u"), Some(&value), NOW)
    };
    let joined =
        update(at_watermark(InputKind::Browse, serde_json::to_vec(&browse_event("u", watermark, None)).unwrap()));
    assert_eq!(joined.channels, names(&ALL_CHANNELS));
    // Locations are read for an hour in the default catalogue: a day behind is too old.
    let old = location_event("u", watermark - DAY, BERLIN_STORE);
    let late = at_watermark(InputKind::Location, serde_json::to_vec(&old).unwrap());
    assert_eq!((late.outcome, late.output), (Outcome::Dropped(DropReason::Late), None));
    let with_gpc = LocationEvent { consent: Some(EventConsent { tcf: None, gpc: true }), ..old };
    let opted_out = update(at_watermark(InputKind::Location, serde_json::to_vec(&with_gpc).unwrap()));
    let without_ads = ["web", "email", "push"];
    assert_eq!(
        (opted_out.ts, opted_out.channels, opted_out.segments[0].channels.clone()),
        (watermark, names(&without_ads), names(&without_ads))
    );
    let state = h.state("u");
    assert!(state.gpc_opt_out);
    assert!(state.history.locations.is_empty(), "the fix itself is too old to keep");
}

#[test]
fn an_idle_user_is_deleted_with_a_tombstone_once_event_time_passes_the_idle_limit() {
    let h = harness();
    h.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0);
    update(h.purchase("u", T0, &[("p-1", "books", 1, 60_000)]));
    let last_version = h.state("u").version;
    // The purchase leaves high_value's 90-day window first (an update), and
    // the idle limit of 365 days deletes the user (a tombstone).
    let outputs = h.processor.advance_partition(Partition(0), EventTime(T0 + 365 * DAY - 1), NOW);
    assert!(outputs.iter().all(|output| matches!(output, Output::Update(_))), "{outputs:?}");
    let outputs = h.processor.advance_partition(Partition(0), EventTime(T0 + 365 * DAY), NOW);
    assert_eq!(outputs, vec![Output::Tombstone { user_id: "u".to_owned() }]);
    let state = h.state("u");
    assert!(state.history.is_empty() && state.published.is_none());
    assert!(state.version >= last_version, "versions are never reused");
    assert!(h.processor.consent_in_force("u").is_some());
    // Back after the deletion: a new profile, with a higher version.
    let back = update(h.browse("u", T0 + 366 * DAY, None));
    assert!(back.version > last_version);
}

/// A segment added by a reload (the reload integration test adds the same one).
const BOOKWORM: &str = include_str!("../../tests/fixtures/bookworm.toml");

const LONG_READER: &str = r#"
[[segment]]
id = "long_reader"
description = "Browsed books in the last 200 days."
tier = "light"
channels = ["email"]
reason = "Browsed books in the last 200 days."
rule = { count = { of = "browse", where = { category = "books" }, within = "200d" }, at_least = 1 }
"#;

fn catalogue_with(extra: &str) -> Catalogue {
    let source = format!("{}\n{extra}", crate::segments::definition::DEFAULT_SEGMENTS);
    Catalogue::parse("reload.toml", &source, &[], 400 * DAY).unwrap()
}

#[test]
fn a_segment_added_by_a_reload_is_evaluated_from_the_state_held_without_new_events() {
    let h = harness();
    h.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0);
    update(h.browse("u", T0, Some("books")));
    applied_silently(h.browse("u", T0 + MINUTE, Some("books")));
    let version_before = h.state("u").version;
    let reloaded = h.processor.reload(catalogue_with(&format!("{BOOKWORM}{LONG_READER}")), NOW);
    assert_eq!(reloaded.report.added, vec!["bookworm", "long_reader"]);
    assert!(reloaded.report.changed.is_empty() && reloaded.report.removed.is_empty());
    // bookworm reads 30 days of browses, which the state holds; long_reader
    // reads 200 days, and says what it lacks.
    assert_eq!(
        reloaded.report.partial,
        vec![("long_reader".to_owned(), "it reads browses of the last 200 days, the state holds 30 days".to_owned())]
    );
    let [(Partition(0), Output::Update(entered))] = reloaded.outputs.as_slice() else {
        panic!("{:?}", reloaded.outputs)
    };
    let entered = entered.decode().unwrap();
    assert_eq!(entered.entered, vec!["bookworm", "long_reader"]);
    assert!(entered.version > version_before);
    let bookworm = entered.segments.iter().find(|member| member.id == "bookworm").unwrap();
    assert_eq!(bookworm.reason, "Browsed books 2 times in the last 30 days.");
    assert_eq!(h.size_of("bookworm"), 1);
    // A state written under the new catalogue restores under it.
    let value = h.processor.changelog_value(Partition(0), "u").unwrap();
    let restored = crate::state::changelog::decode(&value, &h.processor.catalogue()).unwrap();
    assert_eq!(restored.state.published, h.state("u").published);
}

#[test]
fn a_segment_removed_by_a_reload_is_exited_and_a_changed_one_re_evaluated() {
    let h = harness_with_extra(BOOKWORM);
    h.consent("u", &EVERYTHING, PersonalizationLevel::Full, T0);
    h.browse("u", T0, Some("books"));
    let entered = update(h.browse("u", T0 + MINUTE, Some("books")));
    assert!(entered.entered.contains(&"bookworm".into()));
    let stricter = BOOKWORM.replace("at_least = 2", "at_least = 3");
    let reloaded = h.processor.reload(catalogue_with(&stricter), NOW);
    assert_eq!(reloaded.report.changed, vec!["bookworm"]);
    assert!(reloaded.report.partial.is_empty(), "the same windows: the state suffices");
    let [(Partition(0), Output::Update(exit))] = reloaded.outputs.as_slice() else { panic!("{:?}", reloaded.outputs) };
    let exit = exit.decode().unwrap();
    assert_eq!(exit.exited, vec!["bookworm"]);
    // Back to the default catalogue: bookworm is retired; a third visit enters nothing new.
    let reloaded = h.processor.reload(catalogue_with(""), NOW);
    assert_eq!(reloaded.report.removed, vec!["bookworm"]);
    assert!(reloaded.outputs.is_empty());
    let third = h.browse("u", T0 + 2 * MINUTE, Some("books"));
    assert!(third.output.is_none() || !update(third).segments.iter().any(|member| member.id == "bookworm"));
    assert_eq!(h.size_of("bookworm"), 0);
    assert!(h.processor.experiment_counts().iter().all(|counts| counts.segment != "bookworm"));
    // Adding it back gives it its old place, and the member back.
    let reloaded = h.processor.reload(catalogue_with(BOOKWORM), NOW);
    assert_eq!(reloaded.report.added, vec!["bookworm"]);
    let [(Partition(0), Output::Update(back))] = reloaded.outputs.as_slice() else { panic!("{:?}", reloaded.outputs) };
    let back = back.decode().unwrap();
    assert_eq!(back.entered, vec!["bookworm"]);
    let published = h.processor.explain("u").unwrap().profile.unwrap();
    assert_eq!(published.segments.iter().filter(|member| member.id == "bookworm").count(), 1);
}

/// The privacy center answers for a user where their partition is held:
/// the partition their consent was read from.
#[test]
fn a_user_is_answered_for_where_the_partition_of_their_consent_is_held() {
    let h = harness();
    assert!(h.processor.answers_for("u-unknown"), "no consent anywhere: nothing held anywhere");
    let change = ConsentChange {
        user_id: "u-elsewhere".to_owned(),
        ts: T0,
        granted: strings(&EVERYTHING),
        level: PersonalizationLevel::Full,
        source: "test-cmp".to_owned(),
    };
    let value = serde_json::to_vec(&change).unwrap();
    let source = Source { partition: Partition(3), watermark: None };
    // As the pipeline applies another instance's consent record: without taking its partition on.
    let input = h.processor.decode(InputKind::Consent, Some(b"u-elsewhere"), Some(&value), NOW).unwrap();
    h.processor.apply(source, input, NOW);
    assert!(!h.processor.answers_for("u-elsewhere"), "partition 3 is another instance's");
    h.processor.own(&[Partition(3)]);
    assert!(h.processor.answers_for("u-elsewhere"));
    assert_eq!(
        h.processor.segment_description("near_store").as_deref(),
        Some("Was near one of our stores in the last hour.")
    );
    assert_eq!(h.processor.segment_description("no_such_segment"), None);
}

#[test]
fn one_long_advance_fires_every_timer_as_advancing_a_day_at_a_time_does() {
    use std::collections::BTreeMap;
    // More users than a round of timers (TIMER_ROUND), each with a chain of
    // timers (the views leave running_browser's window one by one, new_visitor's
    // later, then the idle limit): a timer set while a round fires must still
    // fire in the same advance, in its user's order.
    let users: Vec<String> = (0..3 * TIMER_ROUND).map(|user| format!("u{user}")).collect();
    let (at_once, stepwise) = (harness(), harness());
    for h in [&at_once, &stepwise] {
        for (number, user) in (0_i64..).zip(&users) {
            h.consent(user, &EVERYTHING, PersonalizationLevel::Full, T0);
            for view in 0..4 {
                h.browse(user, T0 + number * MINUTE + view * HOUR, Some("running"));
            }
        }
    }
    let end = T0 + 400 * DAY;
    let by_user = |outputs: Vec<Output>| {
        let mut by_user: BTreeMap<String, Vec<Output>> = BTreeMap::new();
        for output in outputs {
            by_user.entry(output.user_id().to_owned()).or_default().push(output);
        }
        by_user
    };
    let all_at_once = by_user(at_once.processor.advance_partition(Partition(0), EventTime(end), NOW));
    let day_by_day = by_user(
        (1..=400)
            .flat_map(|day| stepwise.processor.advance_partition(Partition(0), EventTime(T0 + day * DAY), NOW))
            .collect(),
    );
    assert_eq!(all_at_once.len(), users.len());
    for outputs in all_at_once.values() {
        // At least: running_browser's views leave its window (the exit when
        // fewer than 3 remain), new_visitor leaves, then the tombstone.
        assert!(outputs.len() >= 3, "{outputs:?}");
        assert!(matches!(outputs.last(), Some(Output::Tombstone { .. })), "{outputs:?}");
    }
    assert_eq!(all_at_once, day_by_day);
}

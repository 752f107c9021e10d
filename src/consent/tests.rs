//! Tests of the consent gate: purposes, the consent in force and `admit`.

use super::*;
use crate::model::{BrowseEvent, EventConsent, LocationEvent, PurchaseEvent};
use proptest::prelude::*;

fn browse() -> Event {
    Event::from(BrowseEvent {
        event_id: "e-1".to_owned(),
        user_id: "u".to_owned(),
        ts: 1_000,
        session_id: None,
        page_type: "home".to_owned(),
        product_id: None,
        category: None,
        url: None,
        consent: None,
    })
}

fn purchase() -> Event {
    Event::from(PurchaseEvent {
        event_id: "e-2".to_owned(),
        user_id: "u".to_owned(),
        ts: 1_000,
        order_id: "o".to_owned(),
        currency: "EUR".to_owned(),
        total_cents: 100,
        items: vec![],
        consent: None,
    })
}

fn location() -> Event {
    Event::from(LocationEvent {
        event_id: "e-3".to_owned(),
        user_id: "u".to_owned(),
        ts: 1_000,
        lat: 1.0,
        lon: 2.0,
        accuracy_m: None,
        consent: None,
    })
}

fn change(granted: &[&str], level: PersonalizationLevel) -> ConsentChange {
    ConsentChange {
        user_id: "u".to_owned(),
        ts: 42,
        granted: granted.iter().map(|name| (*name).to_owned()).collect(),
        level,
        source: "cmp".into(),
    }
}

fn in_force(granted: &[&str], level: PersonalizationLevel) -> ConsentInForce {
    ConsentInForce::from_change(&change(granted, level))
}

fn set(purposes: &[Purpose]) -> Purposes {
    purposes.iter().copied().collect()
}

#[test]
fn purpose_names_are_the_contract_names() {
    let names: Vec<&str> = Purpose::ALL.iter().map(|purpose| purpose.as_str()).collect();
    assert_eq!(
        names,
        ["personalization", "location", "precise_location", "sensitive", "measurement", "web", "email", "push", "ads"]
    );
    for purpose in Purpose::ALL {
        assert_eq!(Purpose::parse(purpose.as_str()), Some(purpose));
    }
    assert_eq!(Purpose::parse("Personalization"), None);
    assert_eq!(Purpose::parse(" ads"), None);
    assert_eq!(Purpose::parse(""), None);
}

#[test]
fn parsing_purposes_ignores_names_that_are_not_purposes() {
    let purposes = Purposes::from_names(&["personalization", "analytics", "ADS", "email", "tcf:5"]);
    assert_eq!(purposes, set(&[Purpose::Personalization, Purpose::Email]));
    assert_eq!(purposes.iter().collect::<Vec<_>>(), vec![Purpose::Personalization, Purpose::Email]);
    assert_eq!(Purposes::from_names::<&str>(&[]), Purposes::NONE);
    assert_eq!(Purposes::from_names(&["everything"]), Purposes::NONE);
}

#[test]
fn channel_names_are_in_canonical_order_whatever_the_grant_order() {
    let purposes = Purposes::from_names(&["ads", "personalization", "push", "web", "location"]);
    assert_eq!(purposes.channel_names(), vec!["web", "push", "ads"]);
    assert_eq!(Purposes::NONE.with(Purpose::Personalization).channel_names(), Vec::<String>::new());
}

#[test]
fn every_set_of_channels_is_named_by_its_own_channels_only() {
    let channels = ["web", "email", "push", "ads"];
    for bits in 0..16 {
        let granted: Vec<&str> = (0..4).filter(|bit| bits & 1 << bit != 0).map(|bit| channels[bit]).collect();
        // Whatever else is granted.
        let purposes = Purposes::from_names(&granted).with(Purpose::Personalization).with(Purpose::Sensitive);
        assert_eq!(purposes.channel_names(), granted, "{granted:?}");
    }
}

#[test]
fn set_operations() {
    let all: Purposes = Purpose::ALL.into_iter().collect();
    let some = set(&[Purpose::Web, Purpose::Location]);
    assert!(all.contains_all(some));
    assert!(!some.contains_all(all));
    assert!(some.contains_all(Purposes::NONE));
    assert_eq!(all.intersect(some), some);
    assert_eq!(some.without(Purpose::Web), set(&[Purpose::Location]));
    assert_eq!(some.without(Purpose::Ads), some);
    assert!(!some.contains(Purpose::Ads));
    assert!(some.with(Purpose::Ads).contains(Purpose::Ads));
}

#[test]
fn consent_in_force_records_the_change() {
    let consent = in_force(&["personalization", "web", "unknown"], PersonalizationLevel::Light);
    assert_eq!(
        consent,
        ConsentInForce {
            granted: set(&[Purpose::Personalization, Purpose::Web]),
            level: PersonalizationLevel::Light,
            source: "cmp".into(),
            ts: 42,
            partition: Default::default(),
        }
    );
}

#[test]
fn gpc_removes_ads_and_nothing_else() {
    let consent = in_force(&["personalization", "web", "email", "push", "ads"], PersonalizationLevel::Full);
    assert_eq!(consent.effective(false), consent.granted);
    assert_eq!(consent.effective(true), set(&[Purpose::Personalization, Purpose::Web, Purpose::Email, Purpose::Push]));
    assert_eq!(consent.effective(true).channel_names(), vec!["web", "email", "push"]);
    // What was granted is still on record; only its effect is narrowed.
    assert!(consent.granted.contains(Purpose::Ads));
}

#[test]
fn a_profile_needs_personalization_and_a_level_above_none() {
    assert!(in_force(&["personalization"], PersonalizationLevel::Full).allows_profile());
    assert!(in_force(&["personalization"], PersonalizationLevel::Light).allows_profile());
    assert!(!in_force(&["personalization"], PersonalizationLevel::None).allows_profile());
    assert!(!in_force(&["web", "email", "location"], PersonalizationLevel::Full).allows_profile());
    assert!(!in_force(&[], PersonalizationLevel::Light).allows_profile());
}

#[test]
fn without_any_consent_every_event_is_dropped_as_no_consent() {
    for event in [browse(), purchase(), location()] {
        assert_eq!(admit(&event, None), Err(DropReason::NoConsent));
    }
}

#[test]
fn without_personalization_every_event_is_dropped() {
    let consent = in_force(&["location", "precise_location", "web", "ads"], PersonalizationLevel::Full);
    for event in [browse(), purchase(), location()] {
        assert_eq!(admit(&event, Some(consent.choice())), Err(DropReason::NoPersonalization));
    }
    // Missing personalization is reported before level NONE.
    let refusal = in_force(&[], PersonalizationLevel::None);
    assert_eq!(admit(&browse(), Some(refusal.choice())), Err(DropReason::NoPersonalization));
}

#[test]
fn level_none_drops_every_event() {
    let consent = in_force(&["personalization", "location"], PersonalizationLevel::None);
    for event in [browse(), purchase(), location()] {
        assert_eq!(admit(&event, Some(consent.choice())), Err(DropReason::LevelNone));
    }
}

#[test]
fn location_events_need_location() {
    let consent = in_force(&["personalization", "precise_location"], PersonalizationLevel::Full);
    assert_eq!(admit(&location(), Some(consent.choice())), Err(DropReason::NoLocation));
    assert_eq!(admit(&browse(), Some(consent.choice())), Ok(()));
    assert_eq!(admit(&purchase(), Some(consent.choice())), Ok(()));
    let with_location = in_force(&["personalization", "location"], PersonalizationLevel::Light);
    assert_eq!(admit(&location(), Some(with_location.choice())), Ok(()));
}

#[test]
fn gpc_does_not_drop_events() {
    let consent = in_force(&["personalization", "ads"], PersonalizationLevel::Full);
    let Event::Browse(mut signalled) = browse() else { unreachable!("a browse") };
    signalled.consent = Some(crate::model::EventConsent { tcf: None, gpc: true });
    assert_eq!(admit(&Event::Browse(signalled), Some(consent.choice())), Ok(()));
}

#[test]
fn drop_reason_labels() {
    let labels: Vec<&str> = DropReason::ALL.iter().map(|reason| reason.as_str()).collect();
    assert_eq!(labels, ["no_consent", "no_personalization", "level_none", "no_location", "tcf_refused", "late"]);
}

/// TC strings built for these tests (core segment, CMP 7, language EN, no
/// vendors): purposes 1-10 with special feature 1; purposes 1-10 without it;
/// purposes 1-4 and 7 (no 5 or 6) with special feature 1.
const TCF_ALL_WITH_GEO: &str = "COtybn4Otybn4AHABAENBkEIAP_AAAAAAAYgAAAAAAAA";
const TCF_ALL_WITHOUT_GEO: &str = "COtybn4Otybn4AHABAENBkEAAP_AAAAAAAYgAAAAAAAA";
const TCF_NO_PROFILING: &str = "COtybn4Otybn4AHABAENBkEIAPIAAAAAAAYgAAAAAAAA";

fn with_tcf(mut event: Event, tcf: &str) -> Event {
    let signals = Some(EventConsent { tcf: Some(tcf.to_owned()), gpc: false });
    match &mut event {
        Event::Browse(browse) => browse.consent = signals,
        Event::Purchase(purchase) => purchase.consent = signals,
        Event::Location(location) => location.consent = signals,
    }
    event
}

#[test]
fn the_test_tc_strings_decode_to_what_they_claim() {
    let all = tcf::TcString::parse(TCF_ALL_WITH_GEO).unwrap();
    assert_eq!((1..=24).filter(|p| all.purpose_consent(*p)).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    assert!(all.special_feature_opt_in(1));
    assert!(!tcf::TcString::parse(TCF_ALL_WITHOUT_GEO).unwrap().special_feature_opt_in(1));
    let no_profiling = tcf::TcString::parse(TCF_NO_PROFILING).unwrap();
    assert_eq!((1..=24).filter(|p| no_profiling.purpose_consent(*p)).collect::<Vec<_>>(), vec![1, 2, 3, 4, 7]);
}

#[test]
fn an_event_tc_string_must_grant_purposes_1_5_and_6() {
    let consent = in_force(&["personalization", "location", "precise_location"], PersonalizationLevel::Full).choice();
    for event in [browse(), purchase(), location()] {
        assert_eq!(admit(&with_tcf(event.clone(), TCF_ALL_WITH_GEO), Some(consent)), Ok(()));
        assert_eq!(admit(&with_tcf(event.clone(), TCF_NO_PROFILING), Some(consent)), Err(DropReason::TcfRefused));
        assert_eq!(admit(&with_tcf(event.clone(), "not a tc string"), Some(consent)), Err(DropReason::TcfRefused));
        assert_eq!(admit(&with_tcf(event, ""), Some(consent)), Err(DropReason::TcfRefused));
    }
}

#[test]
fn precise_location_also_needs_tcf_special_feature_1() {
    let precise = in_force(&["personalization", "location", "precise_location"], PersonalizationLevel::Full);
    let coarse = in_force(&["personalization", "location"], PersonalizationLevel::Full);
    assert_eq!(admit(&with_tcf(location(), TCF_ALL_WITHOUT_GEO), Some(precise.choice())), Err(DropReason::TcfRefused));
    assert_eq!(admit(&with_tcf(location(), TCF_ALL_WITHOUT_GEO), Some(coarse.choice())), Ok(()));
    assert_eq!(admit(&with_tcf(browse(), TCF_ALL_WITHOUT_GEO), Some(precise.choice())), Ok(()));
}

fn any_level() -> impl Strategy<Value = PersonalizationLevel> {
    prop_oneof![Just(PersonalizationLevel::None), Just(PersonalizationLevel::Light), Just(PersonalizationLevel::Full),]
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![Just(browse()), Just(purchase()), Just(location())]
}

proptest! {
    #[test]
    fn parsed_purposes_are_exactly_the_known_names_given(
        names in proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(Purpose::ALL.map(Purpose::as_str).to_vec()).prop_map(str::to_owned),
                "[a-z_]{0,16}",
            ],
            0..12,
        )
    ) {
        let purposes = Purposes::from_names(&names);
        for purpose in Purpose::ALL {
            prop_assert_eq!(purposes.contains(purpose), names.iter().any(|name| name == purpose.as_str()));
        }
    }

    #[test]
    fn admit_fails_closed(
        event in any_event(),
        granted in proptest::sample::subsequence(Purpose::ALL.to_vec(), 0..=9),
        level in any_level(),
        known in any::<bool>(),
    ) {
        let consent = ConsentInForce {
            granted: granted.iter().copied().collect(),
            level,
            source: "cmp".into(),
            ts: 0,
            partition: Default::default(),
        };
        let allowed = known
            && granted.contains(&Purpose::Personalization)
            && level != PersonalizationLevel::None
            && (!matches!(event, Event::Location(_)) || granted.contains(&Purpose::Location));
        let verdict = admit(&event, known.then_some(consent.choice()));
        prop_assert_eq!(verdict.is_ok(), allowed);
        if allowed {
            prop_assert!(consent.allows_profile());
        }
    }
}

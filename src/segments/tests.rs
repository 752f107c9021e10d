//! Tests of segment definitions (parse, validate), the rule engine, reasons,
//! experiment arms, and the bundled catalogue `deploy/segments.toml`.

use super::compile::parse_duration_ms;
use super::definition::{Comparison, Field, Filter, Measure, Rule, Source, TemplatePart, Window, DEFAULT_SEGMENTS};
use super::engine::{
    arm, distance_m, evaluate, measure, measure_slots, next_window_exit, render_reason, window_use, SharedMeasures,
    WindowUse,
};
use super::tally::TALLY_FROM;
use super::*;
use crate::consent::{Purpose, Purposes};
use crate::model::{Channels, Name};
use crate::state::{hash_value, insert_by_time, BrowseFact, History, ItemFact, LocationFact, PurchaseFact, Retention};
use proptest::prelude::*;

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
const MAX_RETENTION: i64 = 400 * DAY;
/// 2023-11-15T00:00:00Z, a UTC midnight.
const MIDNIGHT: i64 = 1_700_006_400_000;

fn parse(text: &str) -> Result<Catalogue, DefinitionError> {
    Catalogue::parse("test.toml", text, &["prenatal".to_owned()], MAX_RETENTION)
}

/// A file with one place (line 2) and one segment `x` whose header is on line 4;
/// `rest` follows the segment's `reason` line (line 9) from line 10 on.
fn one_segment(tier: &str, channels: &str, reason: &str, rest: &str) -> String {
    format!(
        "[places]\nhome = {{ lat = 52.5, lon = 13.4 }}\n\n[[segment]]\nid = \"x\"\ndescription = \"d\"\ntier = \"{tier}\"\n\
         channels = {channels}\nreason = \"{reason}\"\n{rest}"
    )
}

fn segment_with_rule(rule: &str) -> String {
    one_segment("full", "[\"web\"]", "r", &format!("rule = {rule}\n"))
}

/// The error of an invalid definition, without its hint (the CLI golden
/// tests in tests/check.rs check the hints).
fn parse_err(text: &str) -> DefinitionError {
    DefinitionError { hint: None, ..parse(text).expect_err("an invalid definition") }
}

fn error(line: usize, column: usize, message: &str) -> DefinitionError {
    DefinitionError { file: "test.toml".to_owned(), line, column, message: message.to_owned(), hint: None }
}

fn only_segment(text: &str) -> Segment {
    let mut catalogue = parse(text).expect("a valid definition");
    assert_eq!(catalogue.segments.len(), 1);
    catalogue.segments.remove(0)
}

fn purposes(list: &[Purpose]) -> Purposes {
    list.iter().copied().collect()
}

fn browse(ts: i64, category: Option<&str>) -> BrowseFact {
    BrowseFact { ts, page_type: hash_value("product"), category: crate::state::hash_present(category), product: None }
}

fn item(product: &str, category: &str, quantity: i32, price_cents: i64) -> ItemFact {
    ItemFact { category: hash_value(category), product: hash_value(product), quantity, price_cents, sensitive: false }
}

fn purchase(ts: i64, total_cents: i64, items: Vec<ItemFact>) -> PurchaseFact {
    PurchaseFact { ts, currency: hash_value("EUR"), total_cents, items: items.into() }
}

fn at(ts: i64, lat: f64, lon: f64) -> LocationFact {
    LocationFact { ts, lat, lon }
}

fn browses(facts: Vec<BrowseFact>) -> History {
    History { browses: facts.into(), ..History::default() }
}

fn purchases(facts: Vec<PurchaseFact>) -> History {
    History { purchases: facts.into(), ..History::default() }
}

/// A window of a rule (not a retention end).
fn window(source: Source, window_ms: i64, filters: Vec<Filter>) -> Window {
    Window { source, window_ms, filters, retention_end: false }
}

fn category_filter(category: &str) -> Filter {
    Filter { field: Field::Category, any_of: vec![hash_value(category)] }
}

// --- the bundled catalogue -------------------------------------------------

#[test]
fn the_bundled_catalogue_parses_with_the_expected_segments() {
    let catalogue = Catalogue::default_catalogue(&["prenatal".to_owned()], MAX_RETENTION);
    let summary: Vec<(&str, Tier, Channels, Option<f64>)> = catalogue
        .segments
        .iter()
        .map(|segment| (segment.id.as_str(), segment.tier, segment.channels.channel_names(), segment.holdout))
        .collect();
    let names = |list: &[&str]| list.iter().map(|name| Name::from((*name).to_owned())).collect::<Channels>();
    assert_eq!(
        summary,
        vec![
            ("new_visitor", Tier::Light, names(&["web", "email", "push"]), None),
            ("returning_visitor", Tier::Light, names(&["web", "email", "push"]), None),
            ("high_value", Tier::Full, names(&["web", "email", "push", "ads"]), None),
            ("creature_of_habit", Tier::Full, names(&["email", "push"]), None),
            ("running_browser", Tier::Full, names(&["web", "email", "push", "ads"]), None),
            ("near_store", Tier::Full, names(&["push"]), None),
            ("expecting_parent", Tier::Sensitive, names(&["email"]), None),
        ]
    );
}

#[test]
fn the_bundled_catalogue_derives_what_each_segment_needs() {
    let catalogue = Catalogue::default_catalogue(&[], MAX_RETENTION);
    let personalization = purposes(&[Purpose::Personalization]);
    for segment in &catalogue.segments {
        let expected = match segment.id.as_str() {
            "near_store" => purposes(&[Purpose::Personalization, Purpose::Location, Purpose::PreciseLocation]),
            _ => personalization,
        };
        assert_eq!(segment.needs, expected, "{}", segment.id);
    }
}

#[test]
fn the_bundled_catalogue_keeps_facts_only_as_long_as_its_windows() {
    let catalogue = Catalogue::default_catalogue(&[], MAX_RETENTION);
    assert_eq!(
        catalogue.retention,
        Retention {
            browse_ms: 30 * DAY,
            purchase_ms: 180 * DAY,
            purchase_last: 10,
            location_ms: HOUR,
            first_seen: false,
            max_ms: MAX_RETENTION,
        }
    );
}

#[test]
fn the_bundled_catalogue_times_each_window_through_the_filters_it_counts_with() {
    let catalogue = Catalogue::default_catalogue(&[], MAX_RETENTION);
    let retention_end = |window: Window| Window { retention_end: true, ..window };
    assert_eq!(
        catalogue.windows,
        vec![
            retention_end(window(Source::Browse, 30 * DAY, vec![])),
            window(Source::Purchase, 90 * DAY, vec![]),
            window(Source::Browse, 7 * DAY, vec![category_filter("running")]),
            window(Source::Purchase, 7 * DAY, vec![category_filter("running")]),
            retention_end(window(Source::Location, HOUR, vec![])),
            window(Source::Purchase, 180 * DAY, vec![category_filter("prenatal")]),
            // The end of a purchase's retention, whatever its lines.
            retention_end(window(Source::Purchase, 180 * DAY, vec![])),
        ]
    );
}

#[test]
fn a_window_is_timed_for_a_segment_s_members_and_for_everyone_where_leaving_facts_can_make_members() {
    let catalogue = Catalogue::default_catalogue(&[], MAX_RETENTION);
    let bits = |indices: &[usize]| indices.iter().fold(0u64, |bits, index| bits | 1 << index);
    let usage = |id: &str| {
        let segment = catalogue.segments.iter().find(|segment| segment.id == id).expect("a bundled segment");
        window_use(&segment.rule, &catalogue.windows)
    };
    // The windows by index, as the test above lists them: 0 browse 30 days,
    // 1 purchase 90 days, 2 running views 7 days, 3 running lines 7 days,
    // 4 location an hour, 5 prenatal lines 180 days, 6 purchase 180 days.
    // `equals = 1` day: a day leaving makes a returning visitor new.
    assert_eq!(usage("new_visitor"), WindowUse { reads: bits(&[0]), enters: bits(&[0]) });
    assert_eq!(usage("returning_visitor"), WindowUse { reads: bits(&[0]), enters: 0 });
    assert_eq!(usage("high_value"), WindowUse { reads: bits(&[1]), enters: 0 });
    // No running purchase in the week (`equals = 0`): one leaving can make a member.
    assert_eq!(usage("running_browser"), WindowUse { reads: bits(&[2, 3]), enters: bits(&[3]) });
    assert_eq!(usage("near_store"), WindowUse { reads: bits(&[4]), enters: 0 });
    assert_eq!(usage("expecting_parent"), WindowUse { reads: bits(&[5]), enters: 0 });
    assert_eq!(usage("creature_of_habit"), WindowUse::default());
    // Under `not`, a bound from below that stops holding makes the rule hold.
    let negated =
        only_segment(&segment_with_rule("{ not = { count = { of = \"browse\", within = \"7d\" }, at_least = 2 } }"));
    let windows = [window(Source::Browse, 7 * DAY, vec![])];
    assert_eq!(window_use(&negated.rule, &windows), WindowUse { reads: 1, enters: 1 });
}

#[test]
fn a_fact_leaves_only_the_windows_whose_filters_count_it() {
    let running = [window(Source::Browse, 7 * DAY, vec![category_filter("running")])];
    let history = browses(vec![browse(MIDNIGHT, Some("books")), browse(MIDNIGHT + HOUR, Some("running"))]);
    assert_eq!(next_window_exit(&history, MIDNIGHT + HOUR, &running, u64::MAX), Some(MIDNIGHT + HOUR + 7 * DAY));
    // Once the running view has left, nothing that window counts is left.
    assert_eq!(next_window_exit(&history, MIDNIGHT + HOUR + 7 * DAY, &running, u64::MAX), None);
    // Every view leaves an unfiltered window.
    let every = [window(Source::Browse, 7 * DAY, vec![])];
    assert_eq!(next_window_exit(&history, MIDNIGHT + HOUR, &every, u64::MAX), Some(MIDNIGHT + 7 * DAY));
    // A purchase-item window counts a purchase one of whose lines passes.
    let items = [window(Source::Purchase, DAY, vec![category_filter("running")])];
    let orders = purchases(vec![
        purchase(MIDNIGHT, 100, vec![item("p1", "books", 1, 100)]),
        purchase(MIDNIGHT + HOUR, 200, vec![item("p2", "books", 1, 100), item("p3", "running", 1, 100)]),
    ]);
    assert_eq!(next_window_exit(&orders, MIDNIGHT + HOUR, &items, u64::MAX), Some(MIDNIGHT + HOUR + DAY));
}

#[test]
fn the_bundled_reasons_compile_to_text_and_figures() {
    let catalogue = Catalogue::default_catalogue(&[], MAX_RETENTION);
    let high_value = catalogue.segments.iter().find(|segment| segment.id == "high_value").unwrap();
    assert_eq!(high_value.captures, vec!["spent", "orders"]);
    assert_eq!(
        high_value.reason,
        vec![
            TemplatePart::Text("Spent ".to_owned()),
            TemplatePart::Cents(0),
            TemplatePart::Text(" across ".to_owned()),
            TemplatePart::Counted { index: 1, singular: "purchase".to_owned(), plural: "purchases".to_owned() },
            TemplatePart::Text(" in the last 90 days.".to_owned()),
        ]
    );
    let near_store = catalogue.segments.iter().find(|segment| segment.id == "near_store").unwrap();
    assert_eq!(
        near_store.reason,
        vec![TemplatePart::Text("Was within 500 m of one of our stores in the last hour.".to_owned())]
    );
    assert_eq!(
        near_store.rule,
        Rule::Compare {
            measure: Measure::Near {
                places: vec![(52.5246, 13.4020), (53.5503, 9.9937), (48.1372, 11.5755)],
                radius_m: 500.0,
                window_ms: HOUR,
            },
            comparison: Comparison::AtLeast(1.0),
            capture: None,
        }
    );
}

#[test]
fn the_bundled_running_browser_rule_compiles_as_written() {
    let catalogue = Catalogue::default_catalogue(&[], MAX_RETENTION);
    let running = catalogue.segments.iter().find(|segment| segment.id == "running_browser").unwrap();
    assert_eq!(
        running.rule,
        Rule::All(vec![
            Rule::Compare {
                measure: Measure::Count {
                    source: Source::Browse,
                    filters: vec![category_filter("running")],
                    window_ms: 7 * DAY,
                },
                comparison: Comparison::AtLeast(3.0),
                capture: Some(0),
            },
            Rule::Compare {
                measure: Measure::Count {
                    source: Source::PurchaseItem,
                    filters: vec![category_filter("running")],
                    window_ms: 7 * DAY,
                },
                comparison: Comparison::Equals(0.0),
                capture: None,
            },
        ])
    );
}

#[test]
fn the_bundled_file_text_is_rejected_when_a_window_exceeds_max_retention() {
    // 90-day windows cannot be honoured with a 30-day retention bound.
    let error = Catalogue::parse("deploy/segments.toml", DEFAULT_SEGMENTS, &[], 30 * DAY).unwrap_err();
    assert_eq!(error.file, "deploy/segments.toml");
    assert_eq!(
        error.message,
        "segment `high_value`: `within = \"90d\"` must be above zero and at most the maximum retention of 30 days"
    );
    // The error points at the rule that reads the window, inside `rule.all`.
    let rule = DEFAULT_SEGMENTS.find("{ sum = { of = \"purchase\", within = \"90d\" }").unwrap();
    let line = DEFAULT_SEGMENTS[..rule].matches('\n').count() + 1;
    let column = rule - DEFAULT_SEGMENTS[..rule].rfind('\n').unwrap();
    assert_eq!((error.line, error.column), (line, column));
}

// --- definition errors -----------------------------------------------------

#[test]
fn an_unknown_field_is_reported_where_it_is() {
    let text = one_segment(
        "full",
        "[\"web\"]",
        "r",
        "colour = \"red\"\nrule = { count = { of = \"browse\", within = \"7d\" }, at_least = 1 }\n",
    );
    assert_eq!(
        parse_err(&text),
        error(
            10,
            1,
            "unknown field `colour`, expected one of `id`, `description`, `tier`, `channels`, `reason`, `holdout`, `rule`"
        )
    );
    let text = segment_with_rule("{ count = { of = \"browse\", within = \"7d\", colour = 1 }, at_least = 1 }");
    assert_eq!(
        parse_err(&text),
        error(
            10,
            50,
            "unknown field `colour`, expected one of `of`, `field`, `where`, `within`, `last`, `satisfying`, `places`, `radius_m`, `precision`"
        )
    );
    assert_eq!(
        parse_err(&text).to_string(),
        "test.toml:10:50: unknown field `colour`, expected one of `of`, `field`, `where`, `within`, `last`, `satisfying`, `places`, `radius_m`, `precision`"
    );
}

#[test]
fn two_measures_in_one_rule_are_refused() {
    let text = segment_with_rule(
        "{ count = { of = \"browse\", within = \"7d\" }, sum = { of = \"purchase\", within = \"7d\" }, at_least = 1 }",
    );
    assert_eq!(
        parse_err(&text),
        error(
            10,
            8,
            "segment `x`: a rule has exactly one of all, any, not, count, sum, distinct_days, distinct, most_common, share, since_first_seen, since_last, near; found count, sum"
        )
    );
}

#[test]
fn an_empty_rule_is_refused() {
    let text = segment_with_rule("{ at_least = 1 }");
    assert_eq!(
        parse_err(&text),
        error(
            10,
            8,
            "segment `x`: a rule has exactly one of all, any, not, count, sum, distinct_days, distinct, most_common, share, since_first_seen, since_last, near; found none"
        )
    );
}

#[test]
fn a_measure_without_a_comparison_is_refused() {
    let text = segment_with_rule("{ count = { of = \"browse\", within = \"7d\" } }");
    assert_eq!(
        parse_err(&text),
        error(10, 8, "segment `x`: `count` needs exactly one of at_least, at_most, equals, more_than, less_than")
    );
    let text = segment_with_rule("{ count = { of = \"browse\", within = \"7d\" }, at_least = 1, at_most = 3 }");
    assert_eq!(
        parse_err(&text),
        error(10, 8, "segment `x`: `count` needs exactly one of at_least, at_most, equals, more_than, less_than")
    );
}

#[test]
fn an_undefined_place_is_refused() {
    let text = segment_with_rule(
        "{ near = { places = [\"home\", \"nowhere\"], radius_m = 100, within = \"1h\" }, at_least = 1 }",
    );
    assert_eq!(parse_err(&text), error(10, 8, "segment `x`: place `nowhere` is not defined under [places]"));
}

#[test]
fn a_reason_placeholder_without_a_capture_is_refused() {
    let text = one_segment(
        "full",
        "[\"web\"]",
        "Seen {n} times",
        "rule = { count = { of = \"browse\", within = \"7d\" }, at_least = 1, as = \"views\" }\n",
    );
    assert_eq!(
        parse_err(&text),
        error(9, 10, "segment `x`: the reason uses `{n}` but no rule captures it with `as = \"n\"`")
    );
    let text = one_segment(
        "full",
        "[\"web\"]",
        "Seen {views:euros}",
        "rule = { count = { of = \"browse\", within = \"7d\" }, at_least = 1, as = \"views\" }\n",
    );
    assert_eq!(
        parse_err(&text),
        error(9, 10, "segment `x`: unknown format `euros` in the reason (use `cents`, `days`, `percent`, `singular/plural` or none)")
    );
}

#[test]
fn a_sensitive_category_needs_the_sensitive_tier() {
    let rule = "rule = { count = { of = \"purchase_item\", where = { category = [\"toys\", \"prenatal\"] }, within = \"7d\" }, at_least = 1 }\n";
    for tier in ["light", "full"] {
        let text = one_segment(tier, "[\"email\"]", "r", rule);
        assert_eq!(
            parse_err(&text),
            error(7, 8, "segment `x`: it reads a sensitive category, so its tier must be `sensitive`")
        );
    }
    let segment = only_segment(&one_segment("sensitive", "[\"email\"]", "r", rule));
    assert_eq!(segment.tier, Tier::Sensitive);
    assert_eq!(segment.needs, purposes(&[Purpose::Personalization, Purpose::Sensitive]));
    // Without "prenatal" configured as sensitive, the same rule is an ordinary full segment.
    let text = one_segment("full", "[\"email\"]", "r", rule);
    let plain = Catalogue::parse("test.toml", &text, &[], MAX_RETENTION).unwrap();
    assert_eq!(plain.segments[0].needs, purposes(&[Purpose::Personalization]));
}

#[test]
fn a_window_above_max_retention_is_refused() {
    let text = segment_with_rule("{ count = { of = \"browse\", within = \"401d\" }, at_least = 1 }");
    assert_eq!(
        parse_err(&text),
        error(
            10,
            8,
            "segment `x`: `within = \"401d\"` must be above zero and at most the maximum retention of 400 days"
        )
    );
    let at_max = only_segment(&segment_with_rule("{ count = { of = \"browse\", within = \"400d\" }, at_least = 1 }"));
    assert!(
        matches!(at_max.rule, Rule::Compare { measure: Measure::Count { window_ms, .. }, .. } if window_ms == MAX_RETENTION)
    );
    let text = segment_with_rule("{ count = { of = \"browse\", within = \"0d\" }, at_least = 1 }");
    assert_eq!(
        parse_err(&text),
        error(10, 8, "segment `x`: `within = \"0d\"` must be above zero and at most the maximum retention of 400 days")
    );
    let text = segment_with_rule("{ count = { of = \"browse\", within = \"a week\" }, at_least = 1 }");
    assert_eq!(
        parse_err(&text),
        error(10, 8, "segment `x`: `within = \"a week\"` is not a duration (e.g. 90d, 1h, 15m, 30s)")
    );
}

#[test]
fn a_bad_channel_is_refused() {
    let text = one_segment(
        "full",
        "[\"web\", \"sms\"]",
        "r",
        "rule = { count = { of = \"browse\", within = \"7d\" }, at_least = 1 }\n",
    );
    assert_eq!(parse_err(&text), error(8, 12, "segment `x`: `sms` is not a channel (web, email, push, ads)"));
    // A purpose that is not a channel is not a channel either.
    let text = one_segment(
        "full",
        "[\"location\"]",
        "r",
        "rule = { count = { of = \"browse\", within = \"7d\" }, at_least = 1 }\n",
    );
    assert_eq!(parse_err(&text), error(8, 12, "segment `x`: `location` is not a channel (web, email, push, ads)"));
}

#[test]
fn errors_point_at_the_segment_they_are_about() {
    let valid = "rule = { count = { of = \"browse\", within = \"7d\" }, at_least = 1 }\n";
    let text = format!(
        "# leading comment\n{}\n[[segment]]\nid = \"y\"\ndescription = \"d\"\ntier = \"full\"\nchannels = [\"sms\"]\nreason = \"r\"\n{valid}",
        one_segment("full", "[\"web\"]", "r", valid)
    );
    // Line 1 comment, lines 2-11 segment x, line 12 blank, `[[segment]]` of y on
    // line 13: the error points at y's channel list on line 17.
    assert_eq!(parse_err(&text), error(17, 12, "segment `y`: `sms` is not a channel (web, email, push, ads)"));
}

#[test]
fn duplicate_ids_and_bad_holdouts_are_refused() {
    let valid = "rule = { count = { of = \"browse\", within = \"7d\" }, at_least = 1 }\n";
    let text = format!(
        "{}\n{}",
        one_segment("full", "[]", "r", valid),
        one_segment("full", "[]", "r", valid).replace("[places]\nhome = { lat = 52.5, lon = 13.4 }\n", "")
    );
    assert_eq!(parse_err(&text), error(13, 1, "segment `x` is defined twice"));
    let text = one_segment("full", "[]", "r", &format!("holdout = 1.0\n{valid}"));
    assert_eq!(parse_err(&text), error(10, 11, "segment `x`: holdout 1 must be at least 0 and below 1"));
}

#[test]
fn geofences_smaller_than_the_coarse_precision_need_precise_location() {
    let small = only_segment(&segment_with_rule(
        "{ near = { places = [\"home\"], radius_m = 4999, within = \"1h\" }, at_least = 1 }",
    ));
    assert_eq!(small.needs, purposes(&[Purpose::Personalization, Purpose::Location, Purpose::PreciseLocation]));
    let large = only_segment(&segment_with_rule(
        "{ near = { places = [\"home\"], radius_m = 5000, within = \"1h\" }, at_least = 1 }",
    ));
    assert_eq!(large.needs, purposes(&[Purpose::Personalization, Purpose::Location]));
    let counted = only_segment(&segment_with_rule("{ count = { of = \"location\", within = \"1h\" }, at_least = 1 }"));
    assert_eq!(counted.needs, purposes(&[Purpose::Personalization, Purpose::Location]));
}

#[test]
fn retention_is_the_longest_window_per_kind_of_fact() {
    let text = segment_with_rule(
        "{ all = [ { count = { of = \"browse\", within = \"2d\" }, at_least = 1 }, \
         { count = { of = \"browse\", within = \"5d\" }, at_least = 1 }, \
         { sum = { of = \"purchase_item\", within = \"12h\" }, at_least = 1 }, \
         { most_common = { of = \"purchase\", field = \"currency\", last = 4 }, at_least = 1 } ] }",
    );
    let catalogue = parse(&text).unwrap();
    assert_eq!(
        catalogue.retention,
        Retention {
            browse_ms: 5 * DAY,
            purchase_ms: 12 * HOUR,
            purchase_last: 4,
            location_ms: 0,
            first_seen: false,
            max_ms: MAX_RETENTION,
        }
    );
}

#[test]
fn durations_parse_with_their_units() {
    assert_eq!(parse_duration_ms("90d"), Some(90 * DAY));
    assert_eq!(parse_duration_ms("1h"), Some(HOUR));
    assert_eq!(parse_duration_ms("15m"), Some(900_000));
    assert_eq!(parse_duration_ms("30s"), Some(30_000));
    assert_eq!(parse_duration_ms("250ms"), Some(250));
    for bad in ["", "7", "d", "-1d", "7w", "1.5h", "7 d", "99999999999999999999d", "999999999999999d"] {
        assert_eq!(parse_duration_ms(bad), None, "{bad}");
    }
}

// --- the engine ------------------------------------------------------------

fn count_browses(window_ms: i64) -> Measure {
    Measure::Count { source: Source::Browse, filters: vec![], window_ms }
}

#[test]
fn an_event_exactly_one_window_old_is_out_and_one_ms_younger_is_in() {
    let window = 7 * DAY;
    let now = MIDNIGHT + 5 * HOUR;
    let out = browses(vec![browse(now - window, None)]);
    let inside = browses(vec![browse(now - window + 1, None)]);
    assert_eq!(measure(&count_browses(window), &out, now), 0.0);
    assert_eq!(measure(&count_browses(window), &inside, now), 1.0);

    let days = Measure::DistinctDays { source: Source::Browse, filters: vec![], window_ms: window };
    assert_eq!(measure(&days, &out, now), 0.0);
    assert_eq!(measure(&days, &inside, now), 1.0);

    let sum = Measure::Sum { source: Source::Purchase, filters: vec![], window_ms: window };
    let out = purchases(vec![purchase(now - window, 700, vec![])]);
    let inside = purchases(vec![purchase(now - window, 700, vec![]), purchase(now - window + 1, 1_234, vec![])]);
    assert_eq!(measure(&sum, &out, now), 0.0);
    assert_eq!(measure(&sum, &inside, now), 1_234.0);
}

#[test]
fn events_after_the_evaluation_time_are_not_counted() {
    let history = browses(vec![browse(100, None), browse(200, None), browse(300, None)]);
    assert_eq!(measure(&count_browses(1_000), &history, 200), 2.0);
    assert_eq!(measure(&count_browses(1_000), &history, 300), 3.0);
}

#[test]
fn distinct_days_are_utc_days_across_midnight() {
    let days = Measure::DistinctDays { source: Source::Browse, filters: vec![], window_ms: 30 * DAY };
    let across = browses(vec![browse(MIDNIGHT - 1, None), browse(MIDNIGHT, None)]);
    assert_eq!(measure(&days, &across, MIDNIGHT), 2.0);
    let same_day = browses(vec![browse(MIDNIGHT, None), browse(MIDNIGHT + DAY - 1, None)]);
    assert_eq!(measure(&days, &same_day, MIDNIGHT + DAY - 1), 1.0);
    let three = browses(vec![
        browse(MIDNIGHT - DAY, None),
        browse(MIDNIGHT - 1, None),
        browse(MIDNIGHT + 10, None),
        browse(MIDNIGHT + 20, None),
        browse(MIDNIGHT + DAY, None),
    ]);
    assert_eq!(measure(&days, &three, MIDNIGHT + DAY), 3.0);
}

#[test]
fn distinct_values_beyond_the_sixteen_held_on_the_stack_are_all_counted() {
    // 40 views over 20 days, two a day, each day's category seen on two days.
    let history = browses(
        (0..40)
            .map(|view| browse(MIDNIGHT + (view / 2) * DAY + view % 2, Some(&format!("category-{}", view / 4))))
            .collect(),
    );
    let now = MIDNIGHT + 20 * DAY;
    let days = Measure::DistinctDays { source: Source::Browse, filters: vec![], window_ms: 30 * DAY };
    assert_eq!(measure(&days, &history, now), 20.0);
    let categories =
        Measure::Distinct { source: Source::Browse, filters: vec![], field: Field::Category, window_ms: 30 * DAY };
    assert_eq!(measure(&categories, &history, now), 10.0);
}

#[test]
fn filters_select_facts_by_hashed_field_values() {
    let history = browses(vec![
        browse(1, Some("running")),
        browse(2, Some("tennis")),
        browse(3, None),
        browse(4, Some("running")),
    ]);
    let running = Measure::Count { source: Source::Browse, filters: vec![category_filter("running")], window_ms: DAY };
    assert_eq!(measure(&running, &history, 10), 2.0);
    let either = Measure::Count {
        source: Source::Browse,
        filters: vec![Filter { field: Field::Category, any_of: vec![hash_value("tennis"), hash_value("golf")] }],
        window_ms: DAY,
    };
    assert_eq!(measure(&either, &history, 10), 1.0);
    let distinct =
        Measure::Distinct { source: Source::Browse, filters: vec![], field: Field::Category, window_ms: DAY };
    assert_eq!(measure(&distinct, &history, 10), 2.0);
}

#[test]
fn purchases_match_item_filters_once_and_items_count_each_line() {
    let history = purchases(vec![
        purchase(1, 10_000, vec![item("shoe", "running", 1, 8_000), item("sock", "running", 2, 1_000)]),
        purchase(2, 500, vec![item("ball", "tennis", 1, 500)]),
    ]);
    let orders = Measure::Count { source: Source::Purchase, filters: vec![category_filter("running")], window_ms: DAY };
    assert_eq!(measure(&orders, &history, 5), 1.0);
    let lines =
        Measure::Count { source: Source::PurchaseItem, filters: vec![category_filter("running")], window_ms: DAY };
    assert_eq!(measure(&lines, &history, 5), 2.0);
    let line_amounts =
        Measure::Sum { source: Source::PurchaseItem, filters: vec![category_filter("running")], window_ms: DAY };
    assert_eq!(measure(&line_amounts, &history, 5), 10_000.0);
    let totals = Measure::Sum { source: Source::Purchase, filters: vec![], window_ms: DAY };
    assert_eq!(measure(&totals, &history, 5), 10_500.0);
    let products =
        Measure::Distinct { source: Source::PurchaseItem, filters: vec![], field: Field::ProductId, window_ms: DAY };
    assert_eq!(measure(&products, &history, 5), 3.0);
}

fn most_common_product(last: usize) -> Measure {
    Measure::MostCommon { source: Source::Purchase, filters: vec![], field: Field::ProductId, last }
}

#[test]
fn most_common_with_fewer_than_n_events_is_zero() {
    let nine_same: Vec<PurchaseFact> = (0..9).map(|i| purchase(i, 300, vec![item("coffee", "food", 1, 300)])).collect();
    assert_eq!(measure(&most_common_product(10), &purchases(nine_same.clone()), 100), 0.0);
    let mut ten = nine_same;
    ten.push(purchase(9, 300, vec![item("tea", "food", 1, 300)]));
    assert_eq!(measure(&most_common_product(10), &purchases(ten.clone()), 100), 9.0);
    // Only the last N count: an eleventh purchase pushes the oldest out.
    ten.push(purchase(10, 300, vec![item("coffee", "food", 1, 300)]));
    assert_eq!(measure(&most_common_product(10), &purchases(ten.clone()), 100), 9.0);
    ten.push(purchase(11, 300, vec![item("coffee", "food", 1, 300)]));
    ten.push(purchase(12, 300, vec![item("coffee", "food", 1, 300)]));
    assert_eq!(measure(&most_common_product(3), &purchases(ten.clone()), 100), 3.0);
    assert_eq!(measure(&most_common_product(4), &purchases(ten), 100), 3.0);
}

#[test]
fn most_common_counts_orders_without_lines_but_never_as_a_value() {
    let mut facts: Vec<PurchaseFact> = (0..9).map(|i| purchase(i, 300, vec![item("coffee", "food", 1, 300)])).collect();
    facts.push(purchase(9, 0, vec![]));
    assert_eq!(measure(&most_common_product(10), &purchases(facts), 100), 9.0);
}

#[test]
fn most_common_over_purchases_counts_a_product_on_any_line_once_per_purchase() {
    // Issue 9: the same coffee in 9 of the last 10 baskets, mostly not as the
    // first line, is a habit; a basket with the coffee twice counts once.
    let mut facts: Vec<PurchaseFact> = (0..9)
        .map(|i| {
            let first = item(&format!("bread-{i}"), "food", 1, 200);
            let coffee = item("coffee", "food", 1, 300);
            let lines = if i == 4 { vec![first, coffee.clone(), coffee] } else { vec![first, coffee] };
            purchase(i, 500, lines)
        })
        .collect();
    facts.push(purchase(9, 200, vec![item("tea", "food", 1, 200)]));
    let history = purchases(facts);
    assert_eq!(measure(&most_common_product(10), &history, 100), 9.0);
    let categories =
        Measure::MostCommon { source: Source::Purchase, filters: vec![], field: Field::Category, last: 10 };
    assert_eq!(measure(&categories, &history, 100), 10.0);
    // A distinct count over purchases also reads every line.
    let products =
        Measure::Distinct { source: Source::Purchase, filters: vec![], field: Field::ProductId, window_ms: DAY };
    assert_eq!(measure(&products, &history, 100), 11.0);
}

#[test]
fn near_counts_fixes_within_the_radius_and_the_window() {
    let store = (52.5246, 13.4020);
    let near = Measure::Near { places: vec![(48.0, 11.0), store], radius_m: 500.0, window_ms: HOUR };
    let now = MIDNIGHT;
    // 0.0036° of latitude is 400.3 m; 0.0054° is 600.5 m.
    let inside =
        History { locations: thin_vec::thin_vec![at(now - 10, store.0 + 0.0036, store.1)], ..History::default() };
    let outside =
        History { locations: thin_vec::thin_vec![at(now - 10, store.0 + 0.0054, store.1)], ..History::default() };
    let too_old = History { locations: thin_vec::thin_vec![at(now - HOUR, store.0, store.1)], ..History::default() };
    let just_in_time =
        History { locations: thin_vec::thin_vec![at(now - HOUR + 1, store.0, store.1)], ..History::default() };
    assert_eq!(measure(&near, &inside, now), 1.0);
    assert_eq!(measure(&near, &outside, now), 0.0);
    assert_eq!(measure(&near, &too_old, now), 0.0);
    assert_eq!(measure(&near, &just_in_time, now), 1.0);
}

#[test]
fn haversine_distance_matches_known_distances() {
    let berlin = (52.5200, 13.4050);
    let hamburg = (53.5511, 9.9937);
    let distance = distance_m(berlin, hamburg);
    assert!((distance - 255_000.0).abs() < 2_550.0, "{distance}");
    assert!((distance - 255_250.5).abs() < 1.0, "{distance}");
    assert_eq!(distance_m(berlin, berlin), 0.0);
    assert!((distance_m(hamburg, berlin) - distance).abs() < 1e-6);
    // One degree of latitude on the mean sphere.
    assert!((distance_m((0.0, 0.0), (1.0, 0.0)) - 111_195.08).abs() < 0.01);
    // Antipodes: half the circumference.
    assert!((distance_m((0.0, 0.0), (0.0, 180.0)) - std::f64::consts::PI * 6_371_008.8).abs() < 1e-3);
}

#[test]
fn comparisons_hold_exactly_at_their_bounds() {
    assert!(Comparison::AtLeast(3.0).holds(3.0));
    assert!(!Comparison::AtLeast(3.0).holds(2.0));
    assert!(Comparison::AtMost(3.0).holds(3.0));
    assert!(!Comparison::AtMost(3.0).holds(4.0));
    assert!(Comparison::Equals(0.0).holds(0.0));
    assert!(!Comparison::Equals(0.0).holds(1.0));
    assert!(!Comparison::MoreThan(3.0).holds(3.0));
    assert!(Comparison::MoreThan(3.0).holds(4.0));
    assert!(!Comparison::LessThan(3.0).holds(3.0));
    assert!(Comparison::LessThan(3.0).holds(2.0));
}

#[test]
fn all_any_and_not_combine_and_every_branch_fills_its_capture() {
    let segment = only_segment(&one_segment(
        "full",
        "[\"web\"]",
        "{views} views, {spent:cents} spent",
        "rule.all = [\n  { count = { of = \"browse\", within = \"7d\" }, at_least = 5, as = \"views\" },\n  \
         { not = { sum = { of = \"purchase\", within = \"7d\" }, at_least = 100, as = \"spent\" } },\n]\n",
    ));
    let mut history = browses(vec![browse(1, None), browse(2, None)]);
    history.purchases.push(purchase(3, 250, vec![]));
    let mut captures = vec![0.0; 2];
    // The first branch fails; the second is still evaluated so the reason is complete.
    assert!(!evaluate(&segment.rule, &history, 10, &mut captures, &mut SharedMeasures::new()));
    assert_eq!(captures, vec![2.0, 250.0]);
    assert_eq!(render_reason(&segment.reason, &captures), "2 views, 2.50 spent");

    let any = Rule::Any(vec![
        Rule::Compare { measure: count_browses(DAY), comparison: Comparison::AtLeast(5.0), capture: Some(0) },
        Rule::Compare { measure: count_browses(DAY), comparison: Comparison::AtLeast(2.0), capture: Some(1) },
    ]);
    let mut captures = vec![0.0; 2];
    assert!(evaluate(&any, &history, 10, &mut captures, &mut SharedMeasures::new()));
    assert_eq!(captures, vec![2.0, 2.0]);
    assert!(!evaluate(&Rule::Not(Box::new(any)), &history, 10, &mut captures, &mut SharedMeasures::new()));
}

#[test]
fn reasons_render_numbers_and_cents() {
    let parts = vec![
        TemplatePart::Text("Spent ".to_owned()),
        TemplatePart::Cents(0),
        TemplatePart::Text(" across ".to_owned()),
        TemplatePart::Number(1),
        TemplatePart::Text(" purchases.".to_owned()),
    ];
    assert_eq!(render_reason(&parts, &[50_000.0, 1.0]), "Spent 500.00 across 1 purchases.");
    assert_eq!(render_reason(&parts, &[123_456.0, 12.0]), "Spent 1234.56 across 12 purchases.");
    assert_eq!(render_reason(&parts, &[5.0, 0.0]), "Spent 0.05 across 0 purchases.");
    assert_eq!(render_reason(&parts, &[-150.0, 3.0]), "Spent -1.50 across 3 purchases.");
    assert_eq!(render_reason(&parts, &[-5.0, 3.0]), "Spent -0.05 across 3 purchases.");
    assert_eq!(render_reason(&[TemplatePart::Number(0)], &[7.0]), "7");
    assert_eq!(render_reason(&[], &[]), "");
}

fn with_holdout(id: &str, holdout: Option<f64>) -> Segment {
    let mut segment =
        only_segment(&segment_with_rule("{ count = { of = \"browse\", within = \"7d\" }, at_least = 1 }"));
    segment.id = id.to_owned();
    segment.holdout = holdout;
    segment
}

#[test]
fn arms_are_deterministic_and_split_by_the_holdout_share() {
    // Regression: plain FNV-1a of sequential ids put 11.6% of users in a 10% holdout.
    for id in ["promo", "high_value", "running_browser"] {
        let segment = with_holdout(id, Some(0.1));
        let mut holdout = 0usize;
        for index in 0..100_000 {
            let user = format!("user-{index}");
            let first = arm(&segment, &user);
            assert_eq!(first, arm(&segment, &user));
            match first.as_deref() {
                Some("holdout") => holdout += 1,
                Some("treatment") => {}
                other => panic!("unexpected arm {other:?}"),
            }
        }
        let share = holdout as f64 / 100_000.0;
        assert!((share - 0.1).abs() < 0.015, "{id}: holdout share {share}");
    }
}

#[test]
fn arms_are_absent_without_a_holdout_and_fixed_across_calls() {
    assert_eq!(arm(&with_holdout("promo", None), "user-1"), None);
    assert_eq!(arm(&with_holdout("promo", Some(0.0)), "user-1").as_deref(), Some("treatment"));
    let segment = with_holdout("promo", Some(0.5));
    let arms: Vec<Option<Name>> = (0..20).map(|index| arm(&segment, &format!("u{index}"))).collect();
    let again: Vec<Option<Name>> = (0..20).map(|index| arm(&segment, &format!("u{index}"))).collect();
    assert_eq!(arms, again);
}

#[test]
fn arms_of_different_segments_are_independent() {
    // Regression: with plain FNV-1a, 53% of users got different arms in two
    // 50% holdouts instead of 50%, and 0.2% instead of 1% were in both 10% holdouts.
    let (a, b) = (with_holdout("high_value", Some(0.5)), with_holdout("running_browser", Some(0.5)));
    let users: Vec<String> = (0..100_000).map(|index| format!("user-{index}")).collect();
    let differing = users.iter().filter(|user| arm(&a, user) != arm(&b, user)).count();
    let share = differing as f64 / users.len() as f64;
    assert!((share - 0.5).abs() < 0.01, "{share}");
    let (a, b) = (with_holdout("a", Some(0.1)), with_holdout("b", Some(0.1)));
    let both = users
        .iter()
        .filter(|user| arm(&a, user).as_deref() == Some("holdout") && arm(&b, user).as_deref() == Some("holdout"))
        .count();
    let share = both as f64 / users.len() as f64;
    assert!((share - 0.01).abs() < 0.003, "{share}");
}

proptest! {
    #[test]
    fn a_count_is_the_number_of_facts_in_the_half_open_window(
        mut offsets in proptest::collection::vec(0i64..20 * DAY, 0..40),
        window_days in 1i64..15,
    ) {
        offsets.sort_unstable();
        let history = browses(offsets.iter().map(|offset| browse(MIDNIGHT + offset, None)).collect());
        let now = MIDNIGHT + 20 * DAY;
        let window = window_days * DAY;
        let expected = offsets.iter().filter(|offset| MIDNIGHT + **offset > now - window).count();
        prop_assert_eq!(measure(&count_browses(window), &history, now), expected as f64);
        let days = Measure::DistinctDays { source: Source::Browse, filters: vec![], window_ms: window };
        let mut expected_days: Vec<i64> = offsets
            .iter()
            .filter(|offset| MIDNIGHT + **offset > now - window)
            .map(|offset| (MIDNIGHT + offset).div_euclid(DAY))
            .collect();
        expected_days.dedup();
        prop_assert_eq!(measure(&days, &history, now), expected_days.len() as f64);
    }

    #[test]
    fn rendering_cents_matches_decimal_formatting(cents in -10_000_000i64..10_000_000) {
        let rendered = render_reason(&[TemplatePart::Cents(0)], &[cents as f64]);
        let sign = if cents < 0 { "-" } else { "" };
        prop_assert_eq!(rendered, format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100));
    }

    #[test]
    fn arbitrary_segment_files_never_panic(text in "[ -~\n]{0,200}") {
        let _ = parse(&text);
    }
}

#[test]
fn expecting_parent_reads_a_sensitive_category_when_prenatal_is_configured_sensitive() {
    let catalogue = Catalogue::default_catalogue(&["prenatal".to_owned()], MAX_RETENTION);
    let segment = catalogue.segments.iter().find(|segment| segment.id == "expecting_parent").unwrap();
    assert_eq!(segment.needs, purposes(&[Purpose::Personalization, Purpose::Sensitive]));
    assert_eq!(segment.retention.purchase_ms, 180 * DAY);
    let high_value = catalogue.segments.iter().find(|segment| segment.id == "high_value").unwrap();
    assert_eq!(high_value.retention.purchase_ms, 90 * DAY, "only sensitive users' purchases are kept 180 days");
}

#[test]
fn counted_figures_take_the_singular_only_for_one() {
    let parts = vec![
        TemplatePart::Text("Bought ".to_owned()),
        TemplatePart::Counted { index: 0, singular: "item".to_owned(), plural: "items".to_owned() },
        TemplatePart::Text(".".to_owned()),
    ];
    assert_eq!(render_reason(&parts, &[1.0]), "Bought 1 item.");
    assert_eq!(render_reason(&parts, &[0.0]), "Bought 0 items.");
    assert_eq!(render_reason(&parts, &[12.0]), "Bought 12 items.");
}

#[test]
fn a_figure_the_template_names_but_the_membership_lacks_reads_as_zero() {
    // A membership published before a reload gave its segment a second capture.
    let parts = vec![
        TemplatePart::Number(0),
        TemplatePart::Text(" visits, ".to_owned()),
        TemplatePart::Cents(1),
        TemplatePart::Text(" spent".to_owned()),
    ];
    assert_eq!(render_reason(&parts, &[3.0]), "3 visits, 0.00 spent");
    assert_eq!(render_reason(&parts, &[3.0, 1250.0]), "3 visits, 12.50 spent");
}

// --- share and recency -----------------------------------------------------

fn rule_of(text: &str) -> Rule {
    only_segment(&segment_with_rule(text)).rule
}

fn measure_of(rule: &Rule) -> &Measure {
    match rule {
        Rule::Compare { measure, .. } => measure,
        other => panic!("a comparison expected, got {other:?}"),
    }
}

#[test]
fn share_is_the_part_of_the_last_n_matching_events_that_satisfy_the_condition() {
    let rule = rule_of(
        "{ share = { of = \"purchase\", last = 10, satisfying = { product_id = \"coffee\" } }, at_least = 0.9, as = \"s\" }",
    );
    let facts = |coffees: usize, total: usize| -> History {
        purchases(
            (0..total)
                .map(|index| {
                    let product = if index < total - coffees { "tea" } else { "coffee" };
                    purchase(MIDNIGHT + index as i64, 100, vec![item(product, "food", 1, 100)])
                })
                .collect(),
        )
    };
    let now = MIDNIGHT + DAY;
    assert_eq!(measure(measure_of(&rule), &facts(9, 10), now), 0.9);
    assert_eq!(measure(measure_of(&rule), &facts(9, 12), now), 0.9, "only the last 10 count");
    assert_eq!(measure(measure_of(&rule), &facts(9, 9), now), 0.0, "fewer than 10 purchases: 0");
    let mut captures = [0.0; 8];
    assert!(evaluate(&rule, &facts(10, 10), now, &mut captures, &mut SharedMeasures::new()));
    assert_eq!(render_reason(&[TemplatePart::Percent(0)], &captures), "100%");
    assert!(!evaluate(&rule, &facts(8, 10), now, &mut captures, &mut SharedMeasures::new()));
}

#[test]
fn recency_thresholds_accept_durations() {
    let rule = rule_of("{ since_first_seen = {}, at_least = \"30d\" }");
    assert!(
        matches!(rule, Rule::Compare { measure: Measure::SinceFirstSeen, comparison: Comparison::AtLeast(t), .. } if t == (30 * DAY) as f64)
    );
    let error = parse_err(&segment_with_rule("{ since_first_seen = {}, at_least = \"a month\" }"));
    assert_eq!(error.message, "segment `x`: `a month` is neither a number nor a duration (e.g. 30d, 12h)");
    let error = parse_err(&segment_with_rule("{ since_first_seen = { of = \"browse\" }, at_least = 1 }"));
    assert_eq!(
        error.message,
        "segment `x`: `since_first_seen` counts from the user's first event of any kind: it takes no `of`, `where` or `within`"
    );
    assert!(only_segment(&segment_with_rule("{ since_first_seen = {}, at_least = 1 }")).retention.first_seen);
}

#[test]
fn since_first_seen_and_since_last_measure_time_from_their_reference() {
    let first_seen = rule_of("{ since_first_seen = {}, at_least = \"30d\" }");
    let since_last = rule_of(
        "{ since_last = { of = \"browse\", where = { category = \"running\" }, within = \"90d\" }, at_least = \"7d\" }",
    );
    let mut history = browses(vec![browse(MIDNIGHT, Some("running")), browse(MIDNIGHT + 2 * DAY, Some("books"))]);
    history.first_seen = Some(MIDNIGHT - DAY).into();
    let now = MIDNIGHT + 3 * DAY;
    assert_eq!(measure(measure_of(&first_seen), &history, now), (4 * DAY) as f64);
    assert_eq!(measure(measure_of(&since_last), &history, now), (3 * DAY) as f64, "the newest running browse");
    assert_eq!(measure(measure_of(&since_last), &browses(vec![]), now), f64::INFINITY, "never: infinitely long ago");
    assert_eq!(measure(measure_of(&first_seen), &History::default(), now), 0.0);
}

#[test]
fn recency_comparisons_flip_at_reference_plus_threshold() {
    use super::engine::next_recency_flip;
    let at_least = rule_of("{ since_first_seen = {}, at_least = \"30d\" }");
    let more_than = rule_of("{ since_first_seen = {}, more_than = \"30d\" }");
    let history = History { first_seen: Some(MIDNIGHT).into(), ..History::default() };
    assert_eq!(next_recency_flip(&at_least, &history, MIDNIGHT + DAY), Some(MIDNIGHT + 30 * DAY));
    assert_eq!(next_recency_flip(&at_least, &history, MIDNIGHT + 30 * DAY), Some(MIDNIGHT + 30 * DAY + 1));
    assert_eq!(next_recency_flip(&more_than, &history, MIDNIGHT + 31 * DAY), None, "already flipped");
    let mut captures = [0.0; 8];
    assert!(!evaluate(&at_least, &history, MIDNIGHT + 30 * DAY - 1, &mut captures, &mut SharedMeasures::new()));
    assert!(evaluate(&at_least, &history, MIDNIGHT + 30 * DAY, &mut captures, &mut SharedMeasures::new()));
    assert!(!evaluate(&more_than, &history, MIDNIGHT + 30 * DAY, &mut captures, &mut SharedMeasures::new()));
    assert!(evaluate(&more_than, &history, MIDNIGHT + 30 * DAY + 1, &mut captures, &mut SharedMeasures::new()));
}

#[test]
fn days_print_whole_days_and_never_as_many() {
    assert_eq!(render_reason(&[TemplatePart::Days(0)], &[(3 * DAY + 5 * HOUR) as f64]), "3");
    assert_eq!(render_reason(&[TemplatePart::Days(0)], &[f64::INFINITY]), "many");
}

#[test]
fn arms_stay_what_earlier_versions_assigned() {
    // A user must not change arms when tactful is upgraded: these are the
    // arms the previous build gave u0..u15 in a 50% holdout of `promo`.
    let segment = with_holdout("promo", Some(0.5));
    let holdout: String = (0..16)
        .map(|index| match arm(&segment, &format!("u{index}")).as_deref() {
            Some("holdout") => 'h',
            _ => 't',
        })
        .collect();
    assert_eq!(holdout, "ttthhhttthhhhtth");
}

#[test]
fn a_measure_several_leaves_read_or_kept_as_a_tally_is_computed_once_per_evaluation() {
    let catalogue = Catalogue::default_catalogue(&[], MAX_RETENTION);
    let (slotted, slots) = measure_slots(&catalogue.segments);
    let of = |id: &str| -> &[u8] { &slots[catalogue.segments.iter().position(|segment| segment.id == id).unwrap()] };
    // Both visitor segments read distinct days of browses over 30 days: one
    // slot. Every count, sum and distinct days has a slot (a tally can keep
    // it); the last 10 purchases and the distance to a store have none.
    assert_eq!((of("new_visitor"), of("returning_visitor")), (&[0][..], &[0][..]));
    assert_eq!(of("high_value"), [1, 2]);
    assert_eq!(of("running_browser"), [3, 4]);
    assert_eq!(of("expecting_parent"), [5]);
    assert!(["creature_of_habit", "near_store"].iter().all(|id| of(id) == [u8::MAX]));
    assert_eq!(slotted.len(), 6);
    assert!(
        matches!(slotted[0], Measure::DistinctDays { source: Source::Browse, window_ms, .. } if *window_ms == 30 * DAY)
    );

    // A shared slot's value is the first leaf's: the facts and time are the
    // same for every leaf of one evaluation, so it is not computed again.
    let at_least = |count: f64| Rule::Compare {
        measure: count_browses(DAY),
        comparison: Comparison::AtLeast(count),
        capture: Some(0),
    };
    let two = browses(vec![browse(1, None), browse(2, None)]);
    let mut captures = vec![0.0; 1];
    let mut shared = SharedMeasures::new();
    assert!(evaluate(&at_least(2.0), &two, 10, &mut captures, shared.segment(&[0])));
    assert!(evaluate(&at_least(2.0), &History::default(), 10, &mut captures, shared.segment(&[0])));
    assert_eq!(captures, vec![2.0]);
    // Unshared, the same leaf reads the facts it is given.
    assert!(!evaluate(&at_least(2.0), &History::default(), 10, &mut captures, shared.segment(&[u8::MAX])));
    assert_eq!(captures, vec![0.0]);
}

// ---- Window aggregates kept incrementally -------------------------------------

/// Every purpose: each default segment is eligible.
fn everything() -> Purposes {
    purposes(&[
        Purpose::Personalization,
        Purpose::Location,
        Purpose::PreciseLocation,
        Purpose::Sensitive,
        Purpose::Web,
        Purpose::Email,
        Purpose::Push,
        Purpose::Ads,
    ])
}

/// The default segments, with a prenatal category that is sensitive.
fn default_segments() -> Segments {
    Segments::new(Catalogue::default_catalogue(&["prenatal".to_owned()], MAX_RETENTION))
}

/// Whether a segment holds, and its figures.
type Outcome = (bool, Vec<f64>);

/// Moves `history`'s tallies on to `now` and prunes it, as a refresh does;
/// then each segment's outcome, from the tallies and from reading the facts.
fn tallied_and_read(segments: &Segments, history: &mut History, now: i64) -> Vec<(String, Outcome, Outcome)> {
    segments.advance_tallies(history, now);
    history.prune(now, &segments.retention_for(crate::model::PersonalizationLevel::Full, everything()));
    let mut tallied = SharedMeasures::new();
    segments.know_tallies(history, &mut tallied);
    (segments.by_id())
        .map(|(index, segment)| {
            let (mut from_tallies, mut from_facts) =
                (vec![0.0; segment.captures.len()], vec![0.0; segment.captures.len()]);
            let holds =
                evaluate(&segment.rule, history, now, &mut from_tallies, tallied.segment(segments.shared_slots(index)));
            let held = evaluate(&segment.rule, history, now, &mut from_facts, &mut SharedMeasures::new());
            (segment.id.clone(), (holds, from_tallies), (held, from_facts))
        })
        .collect()
}

#[test]
fn a_busy_user_s_tallies_are_kept_until_the_facts_change_in_a_way_they_cannot_follow() {
    let segments = default_segments();
    let mut history = History::default();
    for hour in 0..12 {
        let category = if hour % 3 == 0 { "running" } else { "books" };
        assert!(insert_by_time(&mut history.browses, browse(MIDNIGHT + hour * HOUR, Some(category)), |fact| fact.ts));
    }
    // Twelve page views, four of them running products: kept as tallies.
    let now = MIDNIGHT + 12 * HOUR;
    let results = tallied_and_read(&segments, &mut history, now);
    assert!(history.tallies.are_kept());
    let running = results.iter().find(|(id, ..)| id == "running_browser").unwrap();
    assert_eq!(running.1, (true, vec![4.0]));
    assert!(results.iter().all(|(_, tallied, read)| tallied == read), "{results:?}");

    // A week later, the first day's page views left the running window
    // (a count): the tallies follow, and the user left the segment.
    let results = tallied_and_read(&segments, &mut history, MIDNIGHT + 7 * DAY + 6 * HOUR);
    assert!(history.tallies.are_kept());
    let running = results.iter().find(|(id, ..)| id == "running_browser").unwrap();
    assert!(!(running.1).0);
    assert!(results.iter().all(|(_, tallied, read)| tallied == read), "{results:?}");

    // A page view that arrives late moves the facts after it: dropped.
    let late = browse(MIDNIGHT + 5 * HOUR + 1, Some("running"));
    assert!(!insert_by_time(&mut history.browses, late, |fact| fact.ts));
    history.tallies.forget();
    // Read again from the facts at the next evaluation, and kept from there.
    let results = tallied_and_read(&segments, &mut history, MIDNIGHT + 7 * DAY + 7 * HOUR);
    assert!(history.tallies.are_kept());
    assert!(results.iter().all(|(_, tallied, read)| tallied == read), "{results:?}");

    // Pruning facts a tally still counts (a retention shorter than its
    // window, as a narrower consent gives) drops them.
    let short =
        Retention { browse_ms: DAY, purchase_ms: DAY, location_ms: DAY, max_ms: MAX_RETENTION, ..Retention::default() };
    history.prune(MIDNIGHT + 7 * DAY + 8 * HOUR, &short);
    assert!(!history.tallies.are_kept());
}

#[test]
fn a_user_who_holds_few_facts_keeps_no_tallies() {
    let segments = default_segments();
    let mut history = browses((0..TALLY_FROM as i64 - 1).map(|hour| browse(MIDNIGHT + hour * HOUR, None)).collect());
    tallied_and_read(&segments, &mut history, MIDNIGHT + DAY);
    assert!(!history.tallies.are_kept());
    history.browses.push(browse(MIDNIGHT + DAY, None));
    tallied_and_read(&segments, &mut history, MIDNIGHT + DAY);
    assert!(history.tallies.are_kept());
}

/// One change to a user's facts, or event time passing.
#[derive(Clone, Debug)]
enum Change {
    Browse { gap_ms: i64, running: bool },
    Purchase { gap_ms: i64, category: &'static str, cents: i64, quantity: i32 },
    Location { gap_ms: i64 },
    Pass { gap_ms: i64 },
}

fn any_change() -> impl Strategy<Value = Change> {
    // Mostly minutes to a day apart, now and then days, and now and then late.
    let gap = || prop_oneof![6 => 0..DAY, 2 => 0..5 * DAY, 1 => -2 * DAY..0];
    let category = prop_oneof![Just("running"), Just("prenatal"), Just("home")];
    prop_oneof![
        5 => (gap(), any::<bool>()).prop_map(|(gap_ms, running)| Change::Browse { gap_ms, running }),
        3 => (gap(), category, 0..60_000i64, 1..4i32)
            .prop_map(|(gap_ms, category, cents, quantity)| Change::Purchase { gap_ms, category, cents, quantity }),
        1 => gap().prop_map(|gap_ms| Change::Location { gap_ms }),
        1 => (0..40 * DAY).prop_map(|gap_ms| Change::Pass { gap_ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn tallies_moved_on_give_every_segment_what_reading_its_facts_gives(changes in proptest::collection::vec(any_change(), 1..150)) {
        let segments = default_segments();
        let (mut history, mut now) = (History::default(), MIDNIGHT);
        for change in changes {
            // A fact is never newer than the evaluation time (a user's clock).
            let stamp = |gap_ms: i64, now: &mut i64| {
                let ts = *now + gap_ms;
                *now = (*now).max(ts);
                ts
            };
            let after_all_others = match change {
                Change::Browse { gap_ms, running } => {
                    let fact = browse(stamp(gap_ms, &mut now), Some(if running { "running" } else { "books" }));
                    insert_by_time(&mut history.browses, fact, |fact| fact.ts)
                }
                Change::Purchase { gap_ms, category, cents, quantity } => {
                    let lines = vec![item("p", category, quantity, cents), item("q", "home", 1, 100)];
                    let fact = purchase(stamp(gap_ms, &mut now), cents * i64::from(quantity) + 100, lines);
                    insert_by_time(&mut history.purchases, fact, |fact| fact.ts)
                }
                Change::Location { gap_ms } => {
                    insert_by_time(&mut history.locations, at(stamp(gap_ms, &mut now), 52.52, 13.40), |fact| fact.ts)
                }
                Change::Pass { gap_ms } => {
                    now += gap_ms;
                    true
                }
            };
            // As keeping an event does (`Minimiser::keep`).
            if !after_all_others {
                history.tallies.forget();
            }
            for (id, tallied, read) in tallied_and_read(&segments, &mut history, now) {
                prop_assert_eq!(tallied, read, "{} at {}", id, now);
            }
        }
    }
}

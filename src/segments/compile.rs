//! The segment compiler: the file as written (serde, with spans for
//! errors) is validated and compiled into the [`Catalogue`] the engine runs.

use super::definition::*;
use crate::consent::{Purpose, Purposes};
use crate::state::{hash_value, Retention, MAX_CAPTURES};
use crate::time::{DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use toml::Spanned;

/// The hint of an error in the file's structure (syntax, fields, types).
const STRUCTURE_HINT: &str = "a segment is `[[segment]]` with id, description, tier (light, full or sensitive), \
channels, reason, rule and an optional holdout; README.md, section Segments, shows each with examples";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    places: BTreeMap<String, PlaceSpec>,
    #[serde(default, rename = "segment")]
    segments: Vec<Spanned<SegmentSpec>>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceSpec {
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentSpec {
    id: String,
    description: String,
    tier: Spanned<Tier>,
    channels: Spanned<Vec<String>>,
    reason: Spanned<String>,
    #[serde(default)]
    holdout: Option<Spanned<f64>>,
    rule: Spanned<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    all: Option<Vec<Spanned<RuleSpec>>>,
    any: Option<Vec<Spanned<RuleSpec>>>,
    not: Option<Box<Spanned<RuleSpec>>>,
    count: Option<MeasureSpec>,
    sum: Option<MeasureSpec>,
    distinct_days: Option<MeasureSpec>,
    distinct: Option<MeasureSpec>,
    most_common: Option<MeasureSpec>,
    share: Option<MeasureSpec>,
    since_first_seen: Option<MeasureSpec>,
    since_last: Option<MeasureSpec>,
    near: Option<MeasureSpec>,
    at_least: Option<Threshold>,
    at_most: Option<Threshold>,
    equals: Option<Threshold>,
    more_than: Option<Threshold>,
    less_than: Option<Threshold>,
    #[serde(rename = "as")]
    capture: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeasureSpec {
    of: Option<String>,
    field: Option<String>,
    #[serde(default, rename = "where")]
    filter: BTreeMap<String, OneOrMany>,
    within: Option<String>,
    last: Option<usize>,
    /// The predicate of `share`: the share of the last N events matching it.
    #[serde(default)]
    satisfying: BTreeMap<String, OneOrMany>,
    places: Option<Vec<String>>,
    radius_m: Option<f64>,
    /// `coarse` declares that a geofence must work for users without
    /// `precise_location`; by default the precision follows the radius.
    precision: Option<String>,
}

/// A comparison's number, or a duration such as "30d" (for recency measures).
#[derive(Clone, Deserialize)]
#[serde(untagged)]
enum Threshold {
    Number(f64),
    Duration(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The 1-based line and column of a byte offset in `text`.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
    (line, column)
}

/// Builds a `DefinitionError` at a byte offset of the source text.
fn error_at(file: &str, source: &str, offset: usize, message: String) -> DefinitionError {
    let (line, column) = line_and_column(source, offset);
    DefinitionError { file: file.to_owned(), line, column, message, hint: None }
}

/// Parses a duration such as `90d`, `1h`, `15m`, `30s` or `250ms` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let digits_end = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits_end);
    let number: i64 = number.parse().ok()?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => SECOND_MS,
        "m" => MINUTE_MS,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        _ => return None,
    };
    number.checked_mul(unit_ms)
}

impl Catalogue {
    /// Parses and validates a segment file. `sensitive_categories` are the
    /// configured sensitive product categories; `max_retention_ms` bounds every window.
    pub fn parse(
        file: &str,
        source: &str,
        sensitive_categories: &[String],
        max_retention_ms: i64,
    ) -> Result<Self, DefinitionError> {
        let spec: FileSpec = toml::from_str(source).map_err(|error| {
            let offset = error.span().map_or(0, |span| span.start);
            DefinitionError {
                hint: Some(STRUCTURE_HINT.to_owned()),
                ..error_at(file, source, offset, error.message().to_owned())
            }
        })?;
        let sensitive: HashSet<u64> = sensitive_categories.iter().map(|name| hash_value(name)).collect();
        let mut retention = Retention { max_ms: max_retention_ms, ..Retention::default() };
        let mut windows = Vec::new();
        let mut segments = Vec::with_capacity(spec.segments.len());
        let mut ids = HashSet::new();
        for spanned in &spec.segments {
            let at = |message: String| error_at(file, source, spanned.span().start, message);
            let segment_spec = spanned.get_ref();
            if !ids.insert(segment_spec.id.clone()) {
                return Err(DefinitionError {
                    hint: Some("give each segment an id of its own".to_owned()),
                    ..at(format!("segment `{}` is defined twice", segment_spec.id))
                });
            }
            let mut segment_retention = Retention { max_ms: max_retention_ms, ..Retention::default() };
            let mut compiler = RuleCompiler {
                places: &spec.places,
                sensitive: &sensitive,
                captures: Vec::new(),
                needs: Purposes::NONE.with(Purpose::Personalization),
                retention: &mut segment_retention,
                windows: &mut windows,
                error_offset: None,
            };
            // Errors point at the innermost rule or the field they are about.
            let located = |(message, offset): (String, Option<usize>)| {
                let offset = offset.unwrap_or(spanned.span().start);
                error_at(file, source, offset, format!("segment `{}`: {message}", segment_spec.id))
            };
            let rule = compiler
                .compile_spanned(&segment_spec.rule)
                .map_err(|message| located((message, compiler.error_offset)))?;
            let RuleCompiler { captures, needs, .. } = compiler;
            let segment = compile_segment(segment_spec, rule, captures, needs, segment_retention)
                .map_err(|(message, offset)| located((message, Some(offset))))?;
            retention = retention.union(&segment.retention);
            segments.push(segment);
        }
        // A fact no filter counts still leaves its retention on time.
        for (source, window_ms) in [
            (Source::Browse, retention.browse_ms),
            (Source::Purchase, retention.purchase_ms),
            (Source::Location, retention.location_ms),
        ] {
            let unfiltered = |window: &&mut Window| {
                window.source == source && window.window_ms == window_ms && window.filters.is_empty()
            };
            match windows.iter_mut().find(unfiltered) {
                Some(window) => window.retention_end = true,
                None if window_ms > 0 => {
                    windows.push(Window { source, window_ms, filters: Vec::new(), retention_end: true })
                }
                None => {}
            }
        }
        Ok(Self { segments, retention, windows })
    }

    /// The default catalogue, with the given sensitive categories.
    pub fn default_catalogue(sensitive_categories: &[String], max_retention_ms: i64) -> Self {
        match Self::parse("deploy/segments.toml", DEFAULT_SEGMENTS, sensitive_categories, max_retention_ms) {
            Ok(catalogue) => catalogue,
            // The bundled file is tested; failing here is a build defect.
            Err(error) => unreachable!("the bundled segment catalogue is invalid: {error}"),
        }
    }
}

fn compile_segment(
    spec: &SegmentSpec,
    rule: Rule,
    captures: Vec<String>,
    needs: Purposes,
    retention: Retention,
) -> Result<Segment, (String, usize)> {
    let id_ok = !spec.id.is_empty() && spec.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !id_ok {
        return Err(("an id is letters, digits and `_`".to_owned(), spec.rule.span().start));
    }
    let mut channels = Purposes::NONE;
    for name in spec.channels.get_ref() {
        match Purpose::parse(name).filter(|purpose| Purpose::CHANNELS.contains(purpose)) {
            Some(channel) => channels = channels.with(channel),
            None => {
                return Err((format!("`{name}` is not a channel (web, email, push, ads)"), spec.channels.span().start));
            }
        }
    }
    let tier = *spec.tier.get_ref();
    if needs.contains(Purpose::Sensitive) && tier != Tier::Sensitive {
        let message = "it reads a sensitive category, so its tier must be `sensitive`".to_owned();
        return Err((message, spec.tier.span().start));
    }
    let holdout = spec.holdout.as_ref().map(|share| *share.get_ref());
    if let (Some(share), Some(spanned)) = (holdout, &spec.holdout) {
        if !(0.0..1.0).contains(&share) {
            return Err((format!("holdout {share} must be at least 0 and below 1"), spanned.span().start));
        }
    }
    let reason =
        parse_template(spec.reason.get_ref(), &captures).map_err(|message| (message, spec.reason.span().start))?;
    Ok(Segment {
        id: spec.id.clone(),
        description: spec.description.clone(),
        tier,
        channels,
        needs,
        reason,
        holdout,
        rule,
        captures,
        retention,
    })
}

fn parse_template(text: &str, captures: &[String]) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}').ok_or_else(|| "the reason has a `{` without `}`".to_owned())?;
        let placeholder = &rest[open + 1..open + close];
        let (name, format) = placeholder.split_once(':').unwrap_or((placeholder, ""));
        let index = captures
            .iter()
            .position(|capture| capture == name)
            .ok_or_else(|| format!("the reason uses `{{{name}}}` but no rule captures it with `as = \"{name}\"`"))?;
        parts.push(match format.split_once('/') {
            _ if format.is_empty() => TemplatePart::Number(index),
            _ if format == "cents" => TemplatePart::Cents(index),
            _ if format == "days" => TemplatePart::Days(index),
            _ if format == "percent" => TemplatePart::Percent(index),
            Some((singular, plural)) if !singular.is_empty() && !plural.is_empty() => {
                TemplatePart::Counted { index, singular: singular.to_owned(), plural: plural.to_owned() }
            }
            _ => {
                return Err(format!(
                    "unknown format `{format}` in the reason (use `cents`, `days`, `percent`, `singular/plural` or none)"
                ));
            }
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_owned()));
    }
    Ok(parts)
}

struct RuleCompiler<'a> {
    places: &'a BTreeMap<String, PlaceSpec>,
    sensitive: &'a HashSet<u64>,
    captures: Vec<String>,
    needs: Purposes,
    retention: &'a mut Retention,
    windows: &'a mut Vec<Window>,
    /// Where the innermost failing rule starts in the file.
    error_offset: Option<usize>,
}

impl RuleCompiler<'_> {
    /// Compiles a rule, noting where it starts if it (and none inside it) fails.
    fn compile_spanned(&mut self, spec: &Spanned<RuleSpec>) -> Result<Rule, String> {
        self.compile(spec.get_ref()).inspect_err(|_| {
            self.error_offset.get_or_insert(spec.span().start);
        })
    }

    fn compile(&mut self, spec: &RuleSpec) -> Result<Rule, String> {
        let measures = [
            ("count", &spec.count),
            ("sum", &spec.sum),
            ("distinct_days", &spec.distinct_days),
            ("distinct", &spec.distinct),
            ("most_common", &spec.most_common),
            ("share", &spec.share),
            ("since_first_seen", &spec.since_first_seen),
            ("since_last", &spec.since_last),
            ("near", &spec.near),
        ];
        let given: Vec<&str> = [("all", spec.all.is_some()), ("any", spec.any.is_some()), ("not", spec.not.is_some())]
            .into_iter()
            .chain(measures.iter().map(|(name, measure)| (*name, measure.is_some())))
            .filter_map(|(name, present)| present.then_some(name))
            .collect();
        if given.len() != 1 {
            return Err(format!(
                "a rule has exactly one of all, any, not, count, sum, distinct_days, distinct, most_common, share, since_first_seen, since_last, near; found {}",
                if given.is_empty() { "none".to_owned() } else { given.join(", ") }
            ));
        }
        if let Some(rules) = &spec.all {
            return Ok(Rule::All(self.compile_list(rules, "all")?));
        }
        if let Some(rules) = &spec.any {
            return Ok(Rule::Any(self.compile_list(rules, "any")?));
        }
        if let Some(rule) = &spec.not {
            return Ok(Rule::Not(Box::new(self.compile_spanned(rule)?)));
        }
        let threshold = |threshold: &Option<Threshold>| -> Result<Option<f64>, String> {
            match threshold {
                None => Ok(None),
                Some(Threshold::Number(number)) => Ok(Some(*number)),
                Some(Threshold::Duration(text)) => parse_duration_ms(text)
                    .map(|ms| Some(ms as f64))
                    .ok_or_else(|| format!("`{text}` is neither a number nor a duration (e.g. 30d, 12h)")),
            }
        };
        let comparisons = [
            threshold(&spec.at_least)?.map(Comparison::AtLeast),
            threshold(&spec.at_most)?.map(Comparison::AtMost),
            threshold(&spec.equals)?.map(Comparison::Equals),
            threshold(&spec.more_than)?.map(Comparison::MoreThan),
            threshold(&spec.less_than)?.map(Comparison::LessThan),
        ];
        let mut comparisons = comparisons.into_iter().flatten();
        let (Some(comparison), None) = (comparisons.next(), comparisons.next()) else {
            return Err(format!("`{}` needs exactly one of at_least, at_most, equals, more_than, less_than", given[0]));
        };
        let (name, Some(measure_spec)) =
            measures.into_iter().find(|(_, measure)| measure.is_some()).unwrap_or(("", &None))
        else {
            return Err("a rule has no measure".to_owned());
        };
        let measure = self.compile_measure(name, measure_spec)?;
        let capture = match &spec.capture {
            Some(capture_name) if self.captures.contains(capture_name) => {
                return Err(format!("`as = \"{capture_name}\"` is used twice"));
            }
            Some(_) if self.captures.len() == MAX_CAPTURES => {
                return Err(format!("a segment captures at most {MAX_CAPTURES} figures with `as`"));
            }
            Some(capture_name) => {
                self.captures.push(capture_name.clone());
                Some(self.captures.len() - 1)
            }
            None => None,
        };
        Ok(Rule::Compare { measure, comparison, capture })
    }

    fn compile_list(&mut self, rules: &[Spanned<RuleSpec>], name: &str) -> Result<Vec<Rule>, String> {
        if rules.is_empty() {
            return Err(format!("`{name}` needs at least one rule"));
        }
        rules.iter().map(|rule| self.compile_spanned(rule)).collect()
    }

    fn window(&mut self, source: Source, filters: &[Filter], within: Option<&str>) -> Result<i64, String> {
        let text = within.ok_or("needs `within`, a window such as \"7d\"")?;
        let window_ms = parse_duration_ms(text)
            .ok_or_else(|| format!("`within = \"{text}\"` is not a duration (e.g. 90d, 1h, 15m, 30s)"))?;
        if window_ms <= 0 || window_ms > self.retention.max_ms {
            return Err(format!(
                "`within = \"{text}\"` must be above zero and at most the maximum retention of {} days",
                self.retention.max_ms / DAY_MS
            ));
        }
        let fact_source = if source == Source::PurchaseItem { Source::Purchase } else { source };
        let window = Window { source: fact_source, window_ms, filters: filters.to_vec(), retention_end: false };
        if !self.windows.contains(&window) {
            self.windows.push(window);
        }
        let kept = match source {
            Source::Browse => &mut self.retention.browse_ms,
            Source::Purchase | Source::PurchaseItem => &mut self.retention.purchase_ms,
            Source::Location => &mut self.retention.location_ms,
        };
        *kept = (*kept).max(window_ms);
        Ok(window_ms)
    }

    fn compile_measure(&mut self, name: &str, spec: &MeasureSpec) -> Result<Measure, String> {
        if name == "near" {
            return self.compile_near(spec);
        }
        if name == "since_first_seen" {
            if spec.of.is_some() || spec.within.is_some() || !spec.filter.is_empty() {
                return Err("`since_first_seen` counts from the user's first event of any kind: it takes no `of`, `where` or `within`".to_owned());
            }
            self.retention.first_seen = true;
            return Ok(Measure::SinceFirstSeen);
        }
        let source = match spec.of.as_deref() {
            Some("browse") => Source::Browse,
            Some("purchase") => Source::Purchase,
            Some("purchase_item") => Source::PurchaseItem,
            Some("location") => Source::Location,
            Some(other) => {
                return Err(format!("`of = \"{other}\"` is not browse, purchase, purchase_item or location"))
            }
            None => return Err(format!("`{name}` needs `of` (browse, purchase, purchase_item or location)")),
        };
        if source == Source::Location {
            self.needs = self.needs.with(Purpose::Location);
        }
        let filters = spec
            .filter
            .iter()
            .map(|(field, values)| self.compile_filter(source, field, values))
            .collect::<Result<Vec<_>, _>>()?;
        let field = || -> Result<Field, String> {
            let text = spec.field.as_deref().ok_or(format!("`{name}` needs `field`"))?;
            parse_field(source, text)
        };
        Ok(match name {
            "count" => {
                let window_ms = self.window(source, &filters, spec.within.as_deref())?;
                Measure::Count { source, filters, window_ms }
            }
            "sum" => {
                if !matches!(source, Source::Purchase | Source::PurchaseItem) {
                    return Err("`sum` adds amounts in cents: `of` must be purchase or purchase_item".to_owned());
                }
                let window_ms = self.window(source, &filters, spec.within.as_deref())?;
                Measure::Sum { source, filters, window_ms }
            }
            "distinct_days" => {
                let window_ms = self.window(source, &filters, spec.within.as_deref())?;
                Measure::DistinctDays { source, filters, window_ms }
            }
            "distinct" => {
                let field = field()?;
                let window_ms = self.window(source, &filters, spec.within.as_deref())?;
                Measure::Distinct { source, filters, field, window_ms }
            }
            "since_last" => {
                let window_ms = self.window(source, &filters, spec.within.as_deref())?;
                Measure::SinceLast { source, filters, window_ms }
            }
            _ => {
                let last =
                    spec.last.filter(|last| *last > 0).ok_or(format!("`{name}` needs `last`, a count above zero"))?;
                if spec.within.is_some() {
                    return Err(format!("`{name}` reads the last N events; it takes `last`, not `within`"));
                }
                match source {
                    Source::Purchase | Source::PurchaseItem => {
                        self.retention.purchase_last = self.retention.purchase_last.max(last)
                    }
                    _ => return Err(format!("`{name}` reads purchases or purchase items")),
                }
                if name == "share" {
                    if spec.satisfying.is_empty() {
                        return Err("`share` needs `satisfying`, the condition whose share is measured".to_owned());
                    }
                    let satisfying = spec
                        .satisfying
                        .iter()
                        .map(|(field, values)| self.compile_filter(source, field, values))
                        .collect::<Result<Vec<_>, _>>()?;
                    Measure::Share { source, filters, satisfying, last }
                } else {
                    Measure::MostCommon { source, filters, field: field()?, last }
                }
            }
        })
    }

    fn compile_filter(&mut self, source: Source, field: &str, values: &OneOrMany) -> Result<Filter, String> {
        let field = parse_field(source, field)?;
        let names: Vec<&String> = match values {
            OneOrMany::One(value) => vec![value],
            OneOrMany::Many(values) => values.iter().collect(),
        };
        let any_of: Vec<u64> = names.iter().map(|name| hash_value(name)).collect();
        if field == Field::Category && any_of.iter().any(|hash| self.sensitive.contains(hash)) {
            self.needs = self.needs.with(Purpose::Sensitive);
        }
        Ok(Filter { field, any_of })
    }

    fn compile_near(&mut self, spec: &MeasureSpec) -> Result<Measure, String> {
        let names = spec
            .places
            .as_ref()
            .filter(|names| !names.is_empty())
            .ok_or("`near` needs `places`, a list of place names")?;
        let places = names
            .iter()
            .map(|name| {
                self.places
                    .get(name)
                    .map(|place| (place.lat, place.lon))
                    .ok_or_else(|| format!("place `{name}` is not defined under [places]"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let radius_m =
            spec.radius_m.filter(|radius| *radius > 0.0).ok_or("`near` needs `radius_m`, in metres above zero")?;
        self.needs = self.needs.with(Purpose::Location);
        match spec.precision.as_deref() {
            Some("coarse") if radius_m < COARSE_PRECISION_M => {
                return Err(format!(
                    "a geofence of {radius_m} m is finer than coarse location (about {COARSE_PRECISION_M} m) can tell; \
                     use radius_m = {COARSE_PRECISION_M} or more, or drop `precision = \"coarse\"` so it needs precise_location"
                ));
            }
            Some("coarse") => {}
            None | Some("precise") if radius_m < COARSE_PRECISION_M => {
                self.needs = self.needs.with(Purpose::PreciseLocation);
            }
            None => {}
            Some("precise") => self.needs = self.needs.with(Purpose::PreciseLocation),
            Some(other) => return Err(format!("`precision = \"{other}\"` is not `coarse` or `precise`")),
        }
        let window_ms = self.window(Source::Location, &[], spec.within.as_deref())?;
        Ok(Measure::Near { places, radius_m, window_ms })
    }
}

fn parse_field(source: Source, text: &str) -> Result<Field, String> {
    let field = match text {
        "page_type" => Field::PageType,
        "category" => Field::Category,
        "product_id" => Field::ProductId,
        "currency" => Field::Currency,
        other => return Err(format!("`{other}` is not a field (page_type, category, product_id, currency)")),
    };
    let fits = match source {
        Source::Browse => field != Field::Currency,
        Source::Purchase => field != Field::PageType,
        Source::PurchaseItem => matches!(field, Field::Category | Field::ProductId),
        Source::Location => false,
    };
    if !fits {
        return Err(format!("`{text}` is not a field of this kind of event"));
    }
    Ok(field)
}

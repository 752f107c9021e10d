//! Issue 9: the first thing a data platform does is backfill history. A
//! backfill produced in time order as fast as the broker takes it, whose
//! three event topics are read at very different speeds, must lose no
//! consented event: within a partition the topics are applied in event-time
//! order, and an event that still arrives out of order is applied unless no
//! window reads that far back. Runs with the default lateness and idle wait.

mod common;

use common::stream::{self, Input};
use common::{http_get, Pipeline, PipelineOptions, Topics};
use tactful::codec::Codec;
use tactful::model::{BrowseEvent, InputKind};

const SEED: u64 = 90;
const DEFAULT_LATENESS_MS: i64 = 60_000;

/// Gives every browse event a 1 KB URL: with fetches of at most 16 KB per
/// partition (set below) a fetch brings about 15 browse events but hundreds
/// of purchases or locations, so the browse topic is read far behind the
/// others in event time.
fn with_long_urls(inputs: Vec<Input>) -> Vec<Input> {
    let codec = Codec::new(&[]).unwrap();
    let url = format!("https://shop.example/{}", "p".repeat(1_000));
    inputs
        .into_iter()
        .map(|input| {
            let browse = match (input.kind, input.value.as_deref()) {
                (InputKind::Browse, Some(value)) => codec.decode_written::<BrowseEvent>(InputKind::Browse, value).ok(),
                _ => None,
            };
            let Some(browse) = browse else { return input };
            let mut value = Vec::new();
            let browse = BrowseEvent { url: Some(url.clone()), ..browse };
            codec.encode_input(InputKind::Browse, &browse, &mut value).unwrap();
            Input { value: Some(value), ..input }
        })
        .collect()
}

#[test]
fn a_backfill_whose_topics_are_read_at_different_speeds_loses_no_consented_event() {
    let topics = Topics::create_with("backfill", 2, 2);
    let inputs = with_long_urls(stream::seeded(SEED, 2_000, 60_000, 90, 2));
    let browses = inputs.iter().filter(|input| input.kind == InputKind::Browse).count();
    assert!(browses > 30_000, "most of the stream is browses: {browses}");
    let pipeline =
        Pipeline::start(&topics, PipelineOptions::default().client_property("max.partition.fetch.bytes", "16384"));
    // Produced while the pipeline reads, as fast as the broker takes it.
    stream::produce(&topics, &inputs, u64::MAX);
    stream::assert_converges_with(&topics, &inputs, DEFAULT_LATENESS_MS);

    let (_, metrics) = http_get(pipeline.admin_port, "/metrics").expect("metrics");
    let late: Vec<&str> = metrics.lines().filter(|line| line.contains(r#"reason="late""#)).collect();
    assert!(late.is_empty(), "no event may be dropped as late: {late:?}");
    let applied_browses: u64 = metrics
        .lines()
        .find(|line| line.starts_with(r#"tactful_records_applied_total{kind="browse"}"#))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|count| count.parse().ok())
        .expect("applied browses are counted");
    assert!(applied_browses > 20_000, "consented browses are applied: {applied_browses}");
}

//! `tactful demo`: the whole core on an embedded default — the bundled
//! segment catalogue and a synthetic population — in-process, no Kafka.

use crate::codec::Codec;
use crate::consent::DropReason;
use crate::consent_writer::ConsentWriter;
use crate::erasure::Erasures;
use crate::privacy_center::PrivacyCenter;
use crate::processor::Processor;
use crate::synthetic::Population;
use crate::telemetry::Tally;
use crate::time::EventTime;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `tactful demo`.
#[derive(Debug, clap::Args)]
pub struct DemoOptions {
    /// Synthetic users.
    #[arg(long, default_value_t = 50_000)]
    pub users: usize,
    /// Records to process (events, plus a few withdrawals and bad records).
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Simulated days the events span.
    #[arg(long, default_value_t = 60)]
    pub days: i64,
    /// Seed of the synthetic population.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Run every segment as an experiment with this holdout share (e.g. 0.2)
    /// and print the measured lift at the end.
    #[arg(long, value_parser = parse_share)]
    pub holdout: Option<f64>,
    /// After the run, serve the privacy center on this address (e.g.
    /// 127.0.0.1:8090), print a signed link to one synthetic user's page,
    /// and keep serving until Ctrl-C. Choices made there are applied to
    /// the demo's core at once.
    #[arg(long)]
    pub privacy_center: Option<std::net::SocketAddr>,
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..1.0).contains(&share) && share > 0.0 => Ok(share),
        _ => Err(format!("`{text}` is not a share above 0 and below 1")),
    }
}

/// The demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A build defect: the embedded defaults are tested.
    #[error("the embedded default is invalid")]
    Defaults(#[source] crate::codec::SchemaError),
    /// The privacy center could not be served.
    #[error("could not serve the privacy center on {0}")]
    PrivacyCenter(std::net::SocketAddr, #[source] std::io::Error),
}

/// Runs the demo and prints a live summary to stdout.
pub fn run(options: &DemoOptions) -> Result<(), DemoError> {
    let (mut catalogue, settings) = crate::config::embedded_defaults();
    if let Some(share) = options.holdout {
        for segment in &mut catalogue.segments {
            segment.holdout = Some(share);
        }
    }
    let codec = Codec::new(&[]).map_err(DemoError::Defaults)?;
    let processor = Arc::new(Processor::new(codec, catalogue, &settings));
    let now_ms = crate::control::now_ms();
    let mut population = Population::new(options.seed, options.users.max(1), options.events, options.days, now_ms);

    println!(
        "tactful demo: {} synthetic users, {} records over {} simulated days (seed {})",
        options.users, options.events, options.days, options.seed
    );
    let mut total = Tally::default();
    let mut tally = Tally::default();
    let mut sample_users = Vec::new();
    for record in population.consent_records() {
        let processed = processor.process(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), now_ms);
        tally.record(record.kind, &processed);
    }
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut since_report = 0u64;
    let mut newest_event_time: Option<EventTime> = None;
    for _ in 0..options.events {
        let record = population.next_record();
        let processed = processor.process(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), now_ms);
        tally.record(record.kind, &processed);
        newest_event_time = newest_event_time.max(processed.event_time.map(EventTime));
        if let Some(crate::processor::Output::Update(update)) = &processed.output {
            let sample = sample_users.len() < 400 && !sample_users.iter().any(|user| user == update.user_id());
            if sample && processor.memberships(update.user_id()).is_some_and(|memberships| memberships.len() >= 2) {
                sample_users.push(update.user_id().to_owned());
            }
        }
        since_report += 1;
        if let Some(watermark) = newest_event_time.filter(|_| since_report.is_multiple_of(1_024)) {
            // The synthetic stream is in time order: the watermark is its newest time.
            tally.updates += processor.advance_to(watermark, now_ms).len() as u64;
        }
        if since_report.is_multiple_of(4_096) && last_report.elapsed() >= Duration::from_secs(1) {
            let rate = since_report as f64 / last_report.elapsed().as_secs_f64();
            total.merge(&tally);
            tally = Tally::default();
            print_summary(&format!("{:>5.1}s", started.elapsed().as_secs_f64()), rate, &total, &processor);
            last_report = Instant::now();
            since_report = 0;
        }
    }
    total.merge(&tally);
    let elapsed = started.elapsed().as_secs_f64();
    print_summary("done ", options.events as f64 / elapsed.max(1e-9), &total, &processor);
    if options.holdout.is_some() {
        println!("\nExperiments (users with `measurement`; a purchase within 7 days of entering converts):");
        print!("{}", crate::report::render(&processor.experiment_counts()));
    }
    println!("\nA few profiles, as a personalization service (or the user) would see them:");
    let mut shown = 0;
    for user_id in sample_users.iter().rev() {
        let Some(memberships) = processor.memberships(user_id) else { continue };
        if memberships.len() < 2 {
            continue;
        }
        println!("  {user_id}");
        for membership in memberships {
            println!("    {:<18} {}  (channels: {})", membership.id, membership.reason, membership.channels.join(", "));
        }
        shown += 1;
        if shown == 4 {
            break;
        }
    }
    match (options.privacy_center, sample_users.last()) {
        (Some(listen), Some(user_id)) => serve_privacy_center(listen, processor, user_id),
        _ => Ok(()),
    }
}

/// Serves the privacy center of the demo's users until Ctrl-C, with a
/// signing secret made for this run, and prints a link to `user_id`'s page.
fn serve_privacy_center(
    listen: std::net::SocketAddr,
    processor: Arc<Processor>,
    user_id: &str,
) -> Result<(), DemoError> {
    let failed = |error| DemoError::PrivacyCenter(listen, error);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(failed)?;
    let settings = crate::config::PrivacyCenter {
        listen,
        link_secret: format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>()),
        public_url: format!("http://{listen}"),
        peers: Vec::new(),
        requests_per_minute: 600,
    };
    let writer = Arc::new(ConsentWriter::InProcess(processor.clone()));
    let center = PrivacyCenter::new(settings, processor, Arc::new(Erasures::default()), writer);
    let expires = crate::control::now_ms() / 1_000 + 24 * 3_600;
    let link = center.link(user_id, expires);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(failed)?;
        println!("\nThe privacy center of {user_id}, as their own link would open it (valid for a day; Ctrl-C stops):");
        println!("  {link}");
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        axum::serve(listener, crate::privacy_center::router(Arc::new(center)))
            .with_graceful_shutdown(stop)
            .await
            .map_err(failed)
    })
}

fn print_summary(label: &str, rate: f64, total: &Tally, processor: &Processor) {
    let dropped: Vec<String> =
        DropReason::ALL.iter().map(|reason| format!("{} {}", reason.as_str(), total.dropped_for(*reason))).collect();
    let bad: u64 = total.rejected.values().sum();
    println!(
        "[{label}] {:>9.0} records/s | applied {} | dropped: {} | bad (dead-lettered) {} | updates {} | erased {}",
        rate,
        total.applied.iter().sum::<u64>(),
        dropped.join(", "),
        bad,
        total.updates,
        total.tombstones
    );
    let sizes: Vec<String> = processor.segment_sizes().iter().map(|(id, size)| format!("{id} {size}")).collect();
    println!("         segments: {}", sizes.join(" | "));
}

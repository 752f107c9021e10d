//! The `tactful` command: parse arguments, load the validated config, set up
//! telemetry and hand over to a driver of the core (Kafka pipeline or demo).

use anyhow::Context;
use clap::{Parser, Subcommand};
use rdkafka::producer::FutureProducer;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tactful::config::Config;
use tactful::consent_writer::ConsentWriter;
use tactful::control::Control;
use tactful::erasure::Erasures;
use tactful::pipeline;
use tactful::privacy_center::{self, PrivacyCenter};
use tactful::processor::Processor;
use tactful::{admin, codec::Codec, demo, gen, replay, telemetry};

/// mimalloc instead of glibc's allocator: the hot path allocates the strings
/// of decoded events and rendered updates, and glibc's free lists
/// (consolidation, chunk unlinking) were a sixth of its time (BENCHMARKS.md).
/// It keeps the memory the process frees (see [`tactful::allocator`]).
#[global_allocator]
static ALLOCATOR: tactful::allocator::Allocator = tactful::allocator::Allocator;

/// Consent-first streaming personalization.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline against Kafka.
    Run {
        /// The configuration file (TOML; see deploy/tactful.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the whole pipeline in-process on a synthetic population, no Kafka needed.
    Demo(demo::DemoOptions),
    /// Experiment lift per segment with a holdout, from a `/metrics` scrape
    /// (a file, or `-` for standard input: `curl -s 127.0.0.1:9464/metrics | tactful report -`).
    Report {
        /// Prometheus text of a running pipeline's `/metrics`.
        metrics: PathBuf,
    },
    /// Run segment definitions over a file of recorded events, offline.
    Replay(replay::ReplayOptions),
    /// Produce a synthetic event load into the configured Kafka topics, with progress.
    Gen(gen::GenOptions),
    /// Validate a configuration file and the segment file it names; exit 1 if invalid.
    Check {
        /// The configuration file (and the segment file it names).
        #[arg(long, required_unless_present = "segments")]
        config: Option<PathBuf>,
        /// A segment file on its own, checked with the default privacy settings.
        #[arg(long, conflicts_with = "config")]
        segments: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tactful::allocator::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Demo(options) => demo::run(&options).map_err(anyhow::Error::from),
        Command::Check { config, segments } => check(config.as_deref(), segments.as_deref()),
        Command::Gen(options) => generate(&options),
        Command::Replay(options) => replay_file(&options),
        Command::Report { metrics } => report(&metrics),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tactful: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: Option<&std::path::Path>, segments: Option<&std::path::Path>) -> anyhow::Result<()> {
    let (path, catalogue) = match (config, segments) {
        (Some(path), _) => (path, Config::load(path)?.catalogue),
        (None, Some(path)) => {
            let privacy = tactful::config::PrivacySection::default();
            let source = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let max_retention_ms = i64::from(privacy.max_retention_days) * tactful::time::DAY_MS;
            let catalogue = tactful::segments::Catalogue::parse(
                &path.display().to_string(),
                &source,
                &privacy.sensitive_categories,
                max_retention_ms,
            )?;
            (path, catalogue)
        }
        (None, None) => anyhow::bail!("give --config or --segments"),
    };
    println!("{}: ok", path.display());
    for segment in &catalogue.segments {
        let needs: Vec<&str> = segment.needs.iter().map(|purpose| purpose.as_str()).collect();
        println!(
            "  segment {:<20} tier {:<9} needs {}",
            segment.id,
            format!("{:?}", segment.tier).to_lowercase(),
            needs.join(", ")
        );
    }
    Ok(())
}

fn report(metrics: &std::path::Path) -> anyhow::Result<()> {
    let text = if metrics == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("read standard input")?
    } else {
        std::fs::read_to_string(metrics).with_context(|| format!("cannot read {}", metrics.display()))?
    };
    print!("{}", tactful::report::render(&tactful::report::parse_metrics(&text)));
    Ok(())
}

fn replay_file(options: &replay::ReplayOptions) -> anyhow::Result<()> {
    let outcome = replay::run(options)?;
    let tally = &outcome.tally;
    println!(
        "replayed {} records: applied {}, dropped {}, bad {}; {} profile updates, {} erasures",
        tally.records(),
        tally.applied.iter().sum::<u64>(),
        tally.dropped.values().sum::<u64>(),
        tally.rejected.values().sum::<u64>(),
        tally.updates,
        tally.tombstones
    );
    for (id, size) in &outcome.sizes {
        println!("  {id:<20} {size}");
    }
    Ok(())
}

fn generate(options: &gen::GenOptions) -> anyhow::Result<()> {
    if let Some(path) = &options.output {
        let written = gen::write_json_lines(options, path).with_context(|| format!("write {}", path.display()))?;
        eprintln!("tactful gen: wrote {written} records to {}", path.display());
        return Ok(());
    }
    let Some(config) = &options.config else { anyhow::bail!("--config or --output is needed") };
    let config = Config::load(config)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the async runtime")?;
    gen::run(&config, options, runtime.handle())?;
    Ok(())
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    telemetry::init_logging();
    let config = Config::load(path)?;
    let metrics = telemetry::install_metrics().context("install the metrics recorder")?;
    let codec = match config.schema_registry {
        Some(_) => Codec::with_registry(&config.extra_writer_schemas)?,
        None => Codec::new(&config.extra_writer_schemas)?,
    };
    let processor = Arc::new(Processor::new(codec, config.catalogue.clone(), &config.core));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let control = Arc::new(Control::default());

    let listener = runtime
        .block_on(admin::bind(config.admin_listen))
        .with_context(|| format!("bind the admin endpoint to {}", config.admin_listen))?;
    let erasures = Arc::new(Erasures::default());
    // Erasures (explain API) and choices (privacy center) go to the consent topic.
    let writer = if config.admin_api_token.is_some() || config.privacy_center.is_some() {
        let producer: FutureProducer =
            pipeline::settings::consent_producer(&config).create().context("create the consent producer")?;
        Some(Arc::new(ConsentWriter::Kafka { producer, topic: Arc::from(config.topics.consent.as_str()) }))
    } else {
        None
    };
    let explain = match (config.admin_api_token.as_deref(), &writer) {
        (Some(token), Some(writer)) => Some(admin::ExplainApi {
            token: Arc::from(token),
            processor: processor.clone(),
            erasures: erasures.clone(),
            writer: writer.clone(),
        }),
        _ => None,
    };
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let stopped = |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let router = admin::router(control.clone(), metrics, explain);
    let mut http_tasks = vec![runtime.spawn(admin::serve(listener, router, stopped(http_stopped.clone())))];
    if let (Some(settings), Some(writer)) = (&config.privacy_center, &writer) {
        let listener = runtime
            .block_on(privacy_center::bind(settings.listen))
            .with_context(|| format!("bind the privacy center to {}", settings.listen))?;
        let center = PrivacyCenter::new(settings.clone(), processor.clone(), erasures.clone(), writer.clone());
        let router = privacy_center::router(Arc::new(center));
        http_tasks.push(runtime.spawn(admin::serve(listener, router, stopped(http_stopped.clone()))));
    }
    let signal_control = control.clone();
    runtime.spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, stopping");
        signal_control.request_shutdown();
    });
    runtime.spawn(watch_for_reload(control.clone(), config.segments_file.clone()));

    tracing::info!(app = %config.app_id, segments = config.catalogue.segments.len(), "starting");
    let handle = runtime.handle().clone();
    let result = std::thread::scope(|scope| {
        scope.spawn(|| pipeline::run(&config, &processor, &erasures, &control, &handle)).join()
    });
    let _ = stop_http.send(true);
    for task in http_tasks {
        if let Ok(Ok(Err(error))) =
            runtime.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), task).await })
        {
            tracing::warn!(%error, "an HTTP endpoint failed");
        }
    }
    match result {
        Ok(outcome) => outcome.context("pipeline stopped"),
        Err(_) => anyhow::bail!("the pipeline thread panicked"),
    }
}

/// Asks the pipeline to reload the segments on SIGHUP, and when the segment
/// file's modification time changes (checked every second).
async fn watch_for_reload(control: Arc<Control>, segments_file: Option<std::path::PathBuf>) {
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok();
    let mut seen = segments_file.as_deref().and_then(modified);
    let mut every_second = tokio::time::interval(std::time::Duration::from_secs(1));
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hung_up = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hung_up = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = hung_up => {
                tracing::info!("SIGHUP: reloading the segments");
                control.request_reload();
            }
            _ = every_second.tick() => {
                let Some(path) = segments_file.as_deref() else { continue };
                let now = modified(path);
                if now != seen {
                    seen = now;
                    tracing::info!("segment file changed: reloading the segments");
                    control.request_reload();
                }
            }
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

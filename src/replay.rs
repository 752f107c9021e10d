//! `tactful replay`: the segment definitions over a file of recorded events,
//! offline, through the same core and consent rules as the pipeline — to
//! judge a segment before it goes live. Prints the final segment sizes and
//! can write their size per UTC day as CSV and as an SVG chart.
//!
//! Input: JSON lines (one record per line, with a `kind` of `browse`,
//! `purchase`, `location` or `consent` beside the contract's fields; a line
//! `{"kind": "consent", "user_id": "…", "tombstone": true}` forgets a user), or
//! an Avro object container file of one contract record type.

use crate::codec::Codec;
use crate::model::{BrowseEvent, ConsentChange, InputKind, LocationEvent, PurchaseEvent};
use crate::processor::Processor;
use crate::telemetry::Tally;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use crate::time::{EventTime, DAY_MS};
/// The magic bytes of an Avro object container file.
const AVRO_FILE_MAGIC: &[u8; 4] = b"Obj\x01";

/// Options of `tactful replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayOptions {
    /// The recorded events: JSON lines, or an Avro object container file.
    pub input: PathBuf,
    /// A configuration file: its segment file and privacy settings are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write segment sizes per UTC day to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Draw segment sizes per UTC day into this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// A replay that could not run. The input's or the configuration's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The input could not be read, or a CSV or SVG output could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file read or written.
        path: PathBuf,
        /// Why the operating system refused it.
        source: std::io::Error,
    },
    /// The input file is not JSON lines or an Avro container of a contract record type.
    #[error("{path}: {message}")]
    Input {
        /// The input file.
        path: PathBuf,
        /// What is wrong, with the line number for JSON lines.
        message: String,
    },
    /// The `--config` file, or its segment or schema files, cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// One record of the input, ready for the core.
struct Record {
    kind: InputKind,
    key: String,
    value: Option<Vec<u8>>,
    ts: Option<i64>,
}

/// What a replay found.
#[derive(Debug, PartialEq)]
pub struct ReplayOutcome {
    /// What happened to the records: applied, dropped by consent or lateness,
    /// rejected as bad input, and the updates and tombstones they caused.
    pub tally: Tally,
    /// Final members per segment, in catalogue order.
    pub sizes: Vec<(String, i64)>,
    /// Members per segment at the end of each UTC day with events: (day, sizes).
    pub daily: Vec<(i64, Vec<i64>)>,
}

/// Runs the replay and writes the requested files.
pub fn run(options: &ReplayOptions) -> Result<ReplayOutcome, ReplayError> {
    let (catalogue, settings, extra_schemas) = match &options.config {
        Some(path) => {
            let config = crate::config::Config::load(path)?;
            (config.catalogue, config.core, config.extra_writer_schemas)
        }
        None => {
            let (catalogue, settings) = crate::config::embedded_defaults();
            (catalogue, settings, Vec::new())
        }
    };
    let codec = Codec::new(&extra_schemas)
        .map_err(|error| ReplayError::Input { path: options.input.clone(), message: error.to_string() })?;
    let records = read_records(&options.input, &codec)?;
    let outcome = replay(Processor::new(codec, catalogue, &settings), &records);
    if let Some(path) = &options.csv {
        write_file(path, &csv(&outcome, &segment_ids(&outcome)))?;
    }
    if let Some(path) = &options.svg {
        write_file(path, &svg(&outcome, &segment_ids(&outcome)))?;
    }
    Ok(outcome)
}

fn segment_ids(outcome: &ReplayOutcome) -> Vec<&str> {
    outcome.sizes.iter().map(|(id, _)| id.as_str()).collect()
}

fn write_file(path: &Path, text: &str) -> Result<(), ReplayError> {
    std::fs::write(path, text).map_err(|source| ReplayError::Io { path: path.to_owned(), source })
}

/// Runs `records` through `processor`. "Now" is the newest record time in the
/// input (the end of the recording), so a recording of any age replays the
/// same way; the watermark follows the newest event time seen.
fn replay(processor: Processor, records: &[Record]) -> ReplayOutcome {
    let now_ms = records.iter().filter_map(|record| record.ts).max().unwrap_or(0);
    let mut tally = Tally::default();
    let mut daily: Vec<(i64, Vec<i64>)> = Vec::new();
    let mut newest: Option<i64> = None;
    let sizes_now = |processor: &Processor| processor.segment_sizes().iter().map(|(_, size)| *size).collect();
    // Drawn on stderr only when it is a terminal.
    let progress = indicatif::ProgressBar::new(records.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "tactful replay {bar:40} {human_pos}/{human_len} records, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for (index, record) in records.iter().enumerate() {
        if let Some(ts) = record.ts.filter(|_| record.kind != InputKind::Consent) {
            let day = ts.div_euclid(DAY_MS);
            if let Some(newest_day) = newest.map(|newest| newest.div_euclid(DAY_MS)).filter(|newest| day > *newest) {
                tally.updates += processor.advance_to(EventTime(day * DAY_MS - 1), now_ms).len() as u64;
                daily.push((newest_day, sizes_now(&processor)));
            }
            newest = newest.max(Some(ts));
        }
        let processed = processor.process(record.kind, Some(record.key.as_bytes()), record.value.as_deref(), now_ms);
        tally.record(record.kind, &processed);
        if index % 1_024 == 1_023 {
            progress.set_position(index as u64 + 1);
        }
    }
    progress.finish_and_clear();
    if let Some(newest) = newest {
        tally.updates += processor.advance_to(EventTime(newest), now_ms).len() as u64;
        daily.push((newest.div_euclid(DAY_MS), sizes_now(&processor)));
    }
    let sizes = processor.segment_sizes();
    ReplayOutcome { tally, sizes, daily }
}

fn read_records(path: &Path, codec: &Codec) -> Result<Vec<Record>, ReplayError> {
    let io_error = |source| ReplayError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut reader = std::io::BufReader::new(file);
    if reader.fill_buf().map_err(io_error)?.starts_with(AVRO_FILE_MAGIC) {
        return read_avro_file(path, reader, codec);
    }
    let mut records = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line.map_err(io_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let invalid = |message: String| ReplayError::Input {
            path: path.to_owned(),
            message: format!("line {}: {message}", number + 1),
        };
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|error| invalid(error.to_string()))?;
        let kind = match value.get("kind").and_then(|kind| kind.as_str()) {
            Some("browse") => InputKind::Browse,
            Some("purchase") => InputKind::Purchase,
            Some("location") => InputKind::Location,
            Some("consent") => InputKind::Consent,
            _ => return Err(invalid("`kind` must be browse, purchase, location or consent".to_owned())),
        };
        let key = value.get("user_id").and_then(|id| id.as_str()).unwrap_or_default().to_owned();
        let tombstone =
            kind == InputKind::Consent && value.get("tombstone").and_then(|flag| flag.as_bool()) == Some(true);
        let ts = value.get("ts").and_then(|ts| ts.as_i64());
        // The line itself is the record: the core's JSON decoder ignores `kind`.
        records.push(Record { kind, key, value: (!tombstone).then(|| line.into_bytes()), ts });
    }
    Ok(records)
}

fn read_avro_file(path: &Path, reader: impl std::io::Read, codec: &Codec) -> Result<Vec<Record>, ReplayError> {
    let invalid = |message: String| ReplayError::Input { path: path.to_owned(), message };
    let file = apache_avro::Reader::new(reader).map_err(|error| invalid(error.to_string()))?;
    let name = match file.writer_schema() {
        apache_avro::Schema::Record(record) => record.name.fullname(None),
        _ => String::new(),
    };
    let kind = match name.as_str() {
        "tactful.v1.BrowseEvent" => InputKind::Browse,
        "tactful.v1.PurchaseEvent" => InputKind::Purchase,
        "tactful.v1.LocationEvent" => InputKind::Location,
        "tactful.v1.ConsentChange" => InputKind::Consent,
        other => return Err(invalid(format!("records of `{other}` are not a contract record type"))),
    };
    let mut records = Vec::new();
    for value in file {
        let value = value.map_err(|error| invalid(error.to_string()))?;
        // Re-encoded as single-object records, so the core decodes them as
        // the pipeline would.
        let mut bytes = Vec::new();
        let (key, ts) = match kind {
            InputKind::Browse => {
                encode::<BrowseEvent>(codec, kind, &value, &mut bytes, |e| (e.user_id.clone(), Some(e.ts)))
            }
            InputKind::Purchase => {
                encode::<PurchaseEvent>(codec, kind, &value, &mut bytes, |e| (e.user_id.clone(), Some(e.ts)))
            }
            InputKind::Location => {
                encode::<LocationEvent>(codec, kind, &value, &mut bytes, |e| (e.user_id.clone(), Some(e.ts)))
            }
            InputKind::Consent => {
                encode::<ConsentChange>(codec, kind, &value, &mut bytes, |c| (c.user_id.clone(), Some(c.ts)))
            }
        }
        .map_err(invalid)?;
        records.push(Record { kind, key, value: Some(bytes), ts });
    }
    Ok(records)
}

fn encode<T: serde::de::DeserializeOwned + serde::Serialize>(
    codec: &Codec,
    kind: InputKind,
    value: &apache_avro::types::Value,
    out: &mut Vec<u8>,
    key_and_time: impl Fn(&T) -> (String, Option<i64>),
) -> Result<(String, Option<i64>), String> {
    let record: T = apache_avro::from_value(value).map_err(|error| error.to_string())?;
    codec.encode_input(kind, &record, out).map_err(|error| error.to_string())?;
    Ok(key_and_time(&record))
}

/// `YYYY-MM-DD` of a day number since the epoch.
pub fn utc_date(day: i64) -> String {
    let (year, month, day_of_month) = crate::time::civil_from_days(day);
    format!("{year:04}-{month:02}-{day_of_month:02}")
}

/// Segment sizes per day as CSV: `date,<segment>,...`.
fn csv(outcome: &ReplayOutcome, ids: &[&str]) -> String {
    let mut text = format!("date,{}\n", ids.join(","));
    for (day, sizes) in &outcome.daily {
        let sizes: Vec<String> = sizes.iter().map(|size| size.to_string()).collect();
        text.push_str(&format!("{},{}\n", utc_date(*day), sizes.join(",")));
    }
    text
}

/// Segment sizes per day as an SVG line chart.
fn svg(outcome: &ReplayOutcome, ids: &[&str]) -> String {
    const WIDTH: f64 = 800.0;
    const HEIGHT: f64 = 400.0;
    const MARGIN: f64 = 50.0;
    const COLOURS: [&str; 8] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"];
    let days = outcome.daily.len().max(2) - 1;
    let top = outcome.daily.iter().flat_map(|(_, sizes)| sizes.iter().copied()).max().unwrap_or(0).max(1) as f64;
    let x = |index: usize| MARGIN + (WIDTH - 2.0 * MARGIN) * index as f64 / days as f64;
    let y = |size: i64| HEIGHT - MARGIN - (HEIGHT - 2.0 * MARGIN) * size as f64 / top;
    let mut out = Vec::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<line x1="{MARGIN}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        HEIGHT - MARGIN,
        WIDTH - MARGIN,
        HEIGHT - MARGIN
    );
    let _ =
        writeln!(out, r#"<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{}" stroke="black"/>"#, HEIGHT - MARGIN);
    let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, MARGIN - 4.0, MARGIN + 4.0, top);
    if let (Some((first, _)), Some((last, _))) = (outcome.daily.first(), outcome.daily.last()) {
        let _ = writeln!(out, r#"<text x="{MARGIN}" y="{}">{}</text>"#, HEIGHT - MARGIN + 16.0, utc_date(*first));
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            WIDTH - MARGIN,
            HEIGHT - MARGIN + 16.0,
            utc_date(*last)
        );
    }
    for (segment, id) in ids.iter().enumerate() {
        let colour = COLOURS[segment % COLOURS.len()];
        let points: Vec<String> = outcome
            .daily
            .iter()
            .enumerate()
            .map(|(index, (_, sizes))| format!("{:.1},{:.1}", x(index), y(sizes[segment])))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{colour}">{id}</text>"#,
            MARGIN + 8.0,
            MARGIN + 14.0 * (segment as f64 + 1.0)
        );
    }
    let _ = writeln!(out, "</svg>");
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_follow_the_calendar() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(59), "1970-03-01");
        assert_eq!(utc_date(11_016), "2000-02-29");
        assert_eq!(utc_date(20_421), "2025-11-29");
        assert_eq!(utc_date(-1), "1969-12-31");
    }
}

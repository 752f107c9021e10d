//! `tactful check`: exit code 0 for a valid file, 1 with the file, line,
//! column and reason for an invalid one. No broker needed.

use std::process::Command;

fn check(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tactful")).arg("check").args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_bundled_config_and_segments_check_and_list_what_each_segment_needs() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tactful.toml");
    let (code, stdout, _) = check(&["--config", config]);
    assert_eq!(code, 0);
    assert!(
        stdout
            .contains("segment near_store           tier full      needs personalization, location, precise_location"),
        "{stdout}"
    );
    assert!(
        stdout.contains("segment expecting_parent     tier sensitive needs personalization, sensitive"),
        "{stdout}"
    );
    let segments = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/segments.toml");
    assert_eq!(check(&["--segments", segments]).0, 0);
}

#[test]
fn an_invalid_segment_file_fails_with_its_location_and_reason() {
    let path = std::env::temp_dir().join(format!("tactful-check-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[segment]]\nid = \"baby\"\ndescription = \"d\"\ntier = \"full\"\nchannels = [\"email\"]\nreason = \"r\"\n\
         rule = { count = { of = \"purchase_item\", where = { category = \"prenatal\" }, within = \"30d\" }, at_least = 1 }\n",
    )
    .unwrap();
    let (code, _, stderr) = check(&["--segments", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "tactful: {}:4:8: segment `baby`: it reads a sensitive category, so its tier must be `sensitive`",
            path.display()
        )
    );
}

/// A valid segment the golden cases below each break in one way.
const READER: &str = r#"[[segment]]
id = "reader"
description = "Reads books."
tier = "full"
channels = ["email"]
reason = "Browsed books {n} times."
rule = { count = { of = "browse", where = { category = "books" }, within = "30d" }, at_least = 2, as = "n" }
"#;

/// Writes `files` into a fresh folder and runs `tactful check` there with `args`.
fn check_in(files: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("tactful-golden-{}-{}", std::process::id(), files[0].0));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let output =
        Command::new(env!("CARGO_BIN_EXE_tactful")).arg("check").args(args).current_dir(&dir).output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).trim_end().to_owned())
}

/// The reader segment with `from` replaced by `to`.
fn reader_with(from: &str, to: &str) -> String {
    assert!(READER.contains(from), "{from}");
    READER.replacen(from, to, 1)
}

const STRUCTURE_HINT: &str =
    "  hint: a segment is `[[segment]]` with id, description, tier (light, full or sensitive), \
channels, reason, rule and an optional holdout; README.md, section Segments, shows each with examples";

#[test]
fn each_class_of_segment_error_has_its_exact_message_position_and_hint() {
    let near =
        |rest: &str| format!("[places]\nstore = {{ lat = 52.5, lon = 13.4 }}\n\n{}", reader_with(COUNT_RULE, rest));
    let cases: Vec<(&str, String, String)> = vec![
        (
            "bad_field",
            reader_with(r#"category = "books""#, r#"colour = "red""#),
            "7:8: segment `reader`: `colour` is not a field (page_type, category, product_id, currency)".to_owned(),
        ),
        (
            "duplicate_id",
            format!("{READER}\n{READER}"),
            "9:1: segment `reader` is defined twice\n  hint: give each segment an id of its own".to_owned(),
        ),
        (
            "geofence_precision",
            near(r#"rule = { near = { places = ["store"], radius_m = 500, within = "1h", precision = "coarse" }, at_least = 1, as = "n" }"#),
            "10:8: segment `reader`: a geofence of 500 m is finer than coarse location (about 5000 m) can tell; use radius_m = 5000 or more, or drop `precision = \"coarse\"` so it needs precise_location".to_owned(),
        ),
        (
            "holdout_range",
            reader_with(r#"channels = ["email"]"#, "holdout = 1.5\nchannels = [\"email\"]"),
            "5:11: segment `reader`: holdout 1.5 must be at least 0 and below 1".to_owned(),
        ),
        (
            "missing_field",
            reader_with("reason = \"Browsed books {n} times.\"\n", ""),
            format!("1:1: missing field `reason`\n{STRUCTURE_HINT}"),
        ),
        (
            "no_comparison",
            reader_with(", at_least = 2", ""),
            "7:8: segment `reader`: `count` needs exactly one of at_least, at_most, equals, more_than, less_than".to_owned(),
        ),
        (
            "not_a_duration",
            reader_with(r#""30d""#, r#""a month""#),
            "7:8: segment `reader`: `within = \"a month\"` is not a duration (e.g. 90d, 1h, 15m, 30s)".to_owned(),
        ),
        (
            "reason_placeholder",
            reader_with("{n} times", "{count} times"),
            "6:10: segment `reader`: the reason uses `{count}` but no rule captures it with `as = \"count\"`".to_owned(),
        ),
        (
            "sensitive_tier",
            reader_with(r#""books""#, r#""prenatal""#),
            "4:8: segment `reader`: it reads a sensitive category, so its tier must be `sensitive`".to_owned(),
        ),
        (
            "toml_syntax",
            reader_with("[[segment]]", "[[segment]"),
            format!("1:11: unclosed array table, expected `]`\n{STRUCTURE_HINT}"),
        ),
        (
            "two_measures",
            reader_with(COUNT_RULE, r#"rule = { count = { of = "browse", within = "30d" }, sum = { of = "purchase", within = "30d" }, at_least = 2, as = "n" }"#),
            "7:8: segment `reader`: a rule has exactly one of all, any, not, count, sum, distinct_days, distinct, most_common, share, since_first_seen, since_last, near; found count, sum".to_owned(),
        ),
        (
            "type_error",
            reader_with(r#"channels = ["email"]"#, "holdout = \"ten\"\nchannels = [\"email\"]"),
            format!("5:11: invalid type: string \"ten\", expected f64\n{STRUCTURE_HINT}"),
        ),
        (
            "unknown_channel",
            reader_with(r#"["email"]"#, r#"["email", "sms"]"#),
            "5:12: segment `reader`: `sms` is not a channel (web, email, push, ads)".to_owned(),
        ),
        (
            "unknown_field",
            reader_with(r#"channels = ["email"]"#, "colour = \"red\"\nchannels = [\"email\"]"),
            format!("5:1: unknown field `colour`, expected one of `id`, `description`, `tier`, `channels`, `reason`, `holdout`, `rule`\n{STRUCTURE_HINT}"),
        ),
        (
            "unknown_place",
            reader_with(COUNT_RULE, r#"rule = { near = { places = ["nowhere"], radius_m = 500, within = "1h" }, at_least = 1, as = "n" }"#),
            "7:8: segment `reader`: place `nowhere` is not defined under [places]".to_owned(),
        ),
        (
            "unknown_tier",
            reader_with(r#""full""#, r#""premium""#),
            format!("4:8: unknown variant `premium`, expected one of `light`, `full`, `sensitive`\n{STRUCTURE_HINT}"),
        ),
        (
            "window_too_long",
            reader_with(r#"= "30d""#, r#"= "500d""#),
            "7:8: segment `reader`: `within = \"500d\"` must be above zero and at most the maximum retention of 365 days".to_owned(),
        ),
        (
            "window_zero",
            reader_with(r#"= "30d""#, r#"= "0d""#),
            "7:8: segment `reader`: `within = \"0d\"` must be above zero and at most the maximum retention of 365 days".to_owned(),
        ),
    ];
    for (name, text, expected) in cases {
        let file = format!("{name}.toml");
        let (code, stderr) = check_in(&[(file.as_str(), text.as_str())], &["--segments", &file]);
        assert_eq!(code, 1, "{name}");
        assert_eq!(stderr, format!("tactful: {file}:{expected}"), "{name}");
    }
}

#[test]
fn each_class_of_config_error_has_its_exact_message_and_position() {
    let kafka = "[kafka]\nbootstrap_servers = \"x:1\"\n\n";
    let cases = [
        ("missing", "[pipeline]\ncommit_interval_ms = 100\n".to_owned(), "1:1: missing field `kafka`"),
        (
            "unknown_key",
            format!("{kafka}[pipeline]\nmax_batch = 3\n"),
            "5:1: unknown field `max_batch`, expected one of `segments_file`, `extra_schema_files`, \
             `processing_guarantee`, `max_batch_records`, `commit_interval_ms`, `dead_letters_enabled`, \
             `event_time_tolerance_ms`, `consent_catch_up_timeout_ms`, `create_output_topics`, `max_compaction_lag_ms`, `allowed_lateness_ms`, \
             `max_idle_wait_ms`, `conversion_window_ms`, `output_format`, `workers`",
        ),
        (
            "unknown_variant",
            format!("{kafka}[pipeline]\nprocessing_guarantee = \"maybe_once\"\n"),
            "5:24: unknown variant `maybe_once`, expected `exactly_once` or `at_least_once`",
        ),
        (
            "invalid_value",
            format!("{kafka}[pipeline]\nmax_batch_records = 0\n"),
            "5:1: pipeline.max_batch_records must be at least 1",
        ),
        (
            "short_token",
            format!("{kafka}[admin]\n  api_token = \"short\"\n"),
            "5:3: admin.api_token must be at least 16 characters",
        ),
    ];
    for (name, text, expected) in cases {
        let file = format!("config_{name}.toml");
        let (code, stderr) = check_in(&[(file.as_str(), text.as_str())], &["--config", &file]);
        assert_eq!(code, 1, "{name}");
        assert_eq!(stderr, format!("tactful: {file}:{expected}"), "{name}");
    }
    // A segment file named by the config is reported at its own path and position.
    let sensitive = reader_with("category = \"books\"", "category = \"prenatal\"");
    let config = format!("{kafka}[pipeline]\nsegments_file = \"segments.toml\"\n");
    let (code, stderr) = check_in(
        &[("config_segments.toml", &config), ("segments.toml", &sensitive)],
        &["--config", "config_segments.toml"],
    );
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "tactful: segments.toml:4:8: segment `reader`: it reads a sensitive category, so its tier must be `sensitive`"
    );
}

const COUNT_RULE: &str =
    r#"rule = { count = { of = "browse", where = { category = "books" }, within = "30d" }, at_least = 2, as = "n" }"#;

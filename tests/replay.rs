//! `tactful replay` on the bundled sample recording (deploy/sample-events.jsonl,
//! made with `tactful gen --output deploy/sample-events.jsonl --users 400
//! --events 6000 --days 45 --seed 11 --end-ms 1798761600000`). No broker needed.

use std::process::Command;

#[test]
fn replaying_the_bundled_sample_gives_the_documented_segment_sizes_and_a_chart() {
    let dir = std::env::temp_dir().join(format!("tactful-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (csv, svg) = (dir.join("sizes.csv"), dir.join("sizes.svg"));
    let output = Command::new(env!("CARGO_BIN_EXE_tactful"))
        .arg("replay")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sample-events.jsonl"))
        .arg("--csv")
        .arg(&csv)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "replayed 6368 records: applied 5081, dropped 1287, bad 0; 4439 profile updates, 3 erasures\n\
         \x20 new_visitor          27\n\
         \x20 returning_visitor    272\n\
         \x20 high_value           25\n\
         \x20 creature_of_habit    8\n\
         \x20 running_browser      12\n\
         \x20 near_store           0\n\
         \x20 expecting_parent     5\n"
    );
    let csv = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "date,new_visitor,returning_visitor,high_value,creature_of_habit,running_browser,near_store,expecting_parent"
    );
    assert_eq!(lines[1], "2026-11-17,43,0,0,0,1,0,1");
    assert_eq!(*lines.last().unwrap(), "2026-12-31,27,272,25,8,12,0,5");
    assert_eq!(lines.len(), 1 + 45, "one row per day with events");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_eq!(svg.matches("<polyline").count(), 7, "one line per segment");
}

#[test]
fn a_line_without_a_known_kind_is_a_clear_error() {
    let path = std::env::temp_dir().join(format!("tactful-replay-bad-{}.jsonl", std::process::id()));
    std::fs::write(&path, "{\"kind\": \"browse\", \"user_id\": \"u\"}\n{\"user_id\": \"u\"}\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tactful")).arg("replay").arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2: `kind` must be browse, purchase, location or consent"), "{stderr}");
}

#[test]
fn an_avro_container_file_of_one_record_type_replays() {
    use apache_avro::types::Value;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/consent_change.avsc")).unwrap();
    let schema = apache_avro::Schema::parse_str(&text).unwrap();
    let mut writer = apache_avro::Writer::new(&schema, Vec::new());
    for (user, level) in [("a", 2), ("b", 1), ("c", 0)] {
        let record = Value::Record(vec![
            ("user_id".to_owned(), Value::String(user.to_owned())),
            ("ts".to_owned(), Value::TimestampMillis(1_798_000_000_000)),
            ("granted".to_owned(), Value::Array(vec![Value::String("personalization".to_owned())])),
            ("level".to_owned(), Value::Enum(level, ["NONE", "LIGHT", "FULL"][level as usize].to_owned())),
            ("source".to_owned(), Value::String("test".to_owned())),
        ]);
        writer.append(record).unwrap();
    }
    let path = std::env::temp_dir().join(format!("tactful-replay-{}.avro", std::process::id()));
    std::fs::write(&path, writer.into_inner().unwrap()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tactful")).arg("replay").arg(&path).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("replayed 3 records: applied 3, dropped 0, bad 0; 0 profile updates, 0 erasures\n"),
        "{stdout}"
    );
}

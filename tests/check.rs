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

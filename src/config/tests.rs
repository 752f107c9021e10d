use super::*;

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let config = load_text("[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n").unwrap();
    assert_eq!(config.group_id, "tactful");
    assert_eq!(config.topics.consent, "consent.changes");
    assert_eq!(config.topics.profiles, "profiles.updates");
    assert_eq!(config.topics.dead_letters, "tactful.tactful.dead-letters");
    assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(config.catalogue.segments.len(), 7);
    assert_eq!(config.core.sensitive_categories, vec!["prenatal", "pharmacy"]);
    assert!(config.schema_registry.is_none());
    assert_eq!(config.output_format, OutputFormat::SingleObject);
}

#[test]
fn a_registry_makes_confluent_the_default_output_unless_single_object_is_chosen() {
    let registry = "[kafka]\nbootstrap_servers = \"x:1\"\n[schema_registry]\nurl = \"http://r:8081/apis/ccompat/v7/\"\nbasic_auth_user_info = \"ann:s3:cret\"\n";
    let config = load_text(registry).unwrap();
    let configured = config.schema_registry.unwrap();
    assert_eq!(configured.url, "http://r:8081/apis/ccompat/v7");
    assert_eq!(configured.basic_auth, Some(("ann".to_owned(), "s3:cret".to_owned())));
    assert_eq!((configured.request_timeout_ms, configured.unavailable_timeout_ms), (5_000, 60_000));
    assert_eq!(config.output_format, OutputFormat::Confluent);
    let chosen = format!("{registry}[pipeline]\noutput_format = \"single_object\"\n");
    assert_eq!(load_text(&chosen).unwrap().output_format, OutputFormat::SingleObject);
    let without = "[kafka]\nbootstrap_servers = \"x:1\"\n[pipeline]\noutput_format = \"confluent\"\n";
    let error = load_text(without).err().unwrap().to_string();
    assert!(error.contains(".toml:4:1: pipeline.output_format `confluent` needs a [schema_registry]"), "{error}");
    let bad_url = "[kafka]\nbootstrap_servers = \"x:1\"\n[schema_registry]\nurl = \"registry:8081\"\n";
    let error = load_text(bad_url).err().unwrap().to_string();
    assert!(error.contains(".toml:4:1: schema_registry.url must start with http:// or https://"), "{error}");
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let error =
        load_text("[kafka]\nbootstrap_servers = \"x:1\"\n\n[pipeline]\nmax_batch = 3\n").err().unwrap().to_string();
    assert!(error.contains(".toml:5:1: unknown field `max_batch`"), "{error}");
}

#[test]
fn a_missing_required_key_is_named() {
    let error = load_text("[kafka]\napp_id = \"a\"\n").err().unwrap().to_string();
    assert!(error.contains("missing field `bootstrap_servers`"), "{error}");
}

#[test]
fn invalid_values_are_explained() {
    let error = load_text("[kafka]\nbootstrap_servers = \"x:1\"\napp_id = \"a b\"\n").err().unwrap().to_string();
    assert!(error.contains(".toml:3:1: kafka.app_id `a b` must be letters"), "{error}");
    let error = load_text("[kafka]\nbootstrap_servers = \"x:1\"\n[pipeline]\nmax_batch_records = 0\n")
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains(".toml:4:1: pipeline.max_batch_records must be at least 1"), "{error}");
}

#[test]
fn compacted_topics_are_created_with_an_hours_compaction_lag_unless_configured() {
    let minimal = "[kafka]\nbootstrap_servers = \"x:1\"\n";
    assert_eq!(load_text(minimal).unwrap().max_compaction_lag_ms, 3_600_000);
    assert_eq!(
        load_text(&format!("{minimal}[pipeline]\nmax_compaction_lag_ms = 1000\n")).unwrap().max_compaction_lag_ms,
        1000
    );
    let error = load_text(&format!("{minimal}[pipeline]\nmax_compaction_lag_ms = 0\n")).err().unwrap().to_string();
    assert!(error.contains(".toml:4:1: pipeline.max_compaction_lag_ms must be above zero"), "{error}");
}

#[test]
fn workers_default_to_the_number_of_cores_and_must_be_at_least_one() {
    let minimal = "[kafka]\nbootstrap_servers = \"x:1\"\n";
    assert_eq!(load_text(minimal).unwrap().workers, std::thread::available_parallelism().unwrap().get());
    assert_eq!(load_text(&format!("{minimal}[pipeline]\nworkers = 3\n")).unwrap().workers, 3);
    let error = load_text(&format!("{minimal}[pipeline]\nworkers = 0\n")).err().unwrap().to_string();
    assert!(error.contains(".toml:4:1: pipeline.workers must be at least 1"), "{error}");
    let error = load_text(&format!("{minimal}[pipeline]\nworkers = -1\n")).err().unwrap().to_string();
    assert!(error.contains(".toml:4:11: "), "{error}");
}

#[test]
fn a_secret_setting_takes_environment_variables_by_name() {
    let environment = |name: &str| match name {
        "KAFKA_PASSWORD" => Some("s3cret-with-${braces}".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    assert_eq!(expand_environment("plain", environment).unwrap(), "plain");
    assert_eq!(expand_environment("${KAFKA_PASSWORD}", environment).unwrap(), "s3cret-with-${braces}");
    assert_eq!(
        expand_environment("user:${KAFKA_PASSWORD}!${EMPTY}", environment).unwrap(),
        "user:s3cret-with-${braces}!"
    );
    assert_eq!(
        expand_environment("${MISSING}", environment).unwrap_err(),
        "names the environment variable `MISSING`, which is not set"
    );
    assert_eq!(
        expand_environment("ab${KAFKA_PASSWORD", environment).unwrap_err(),
        "has a `${` without its closing `}`"
    );
    assert_eq!(
        expand_environment("${}", environment).unwrap_err(),
        "has a `${...}` whose name is not letters, digits and `_`"
    );
    assert_eq!(
        expand_environment("${1A}", environment).unwrap_err(),
        "has a `${...}` whose name is not letters, digits and `_`"
    );
}

#[test]
fn the_api_token_client_properties_and_registry_credentials_are_expanded_at_load() {
    // PATH is set wherever tests run; setting a variable here would race with other tests.
    let path = std::env::var("PATH").unwrap();
    let config = load_text(
        "[kafka]\nbootstrap_servers = \"x:1\"\n[kafka.client_properties]\n\"sasl.password\" = \"<${PATH}>\"\n\
         [admin]\napi_token = \"${PATH}\"\n[schema_registry]\nurl = \"http://r:1\"\nbasic_auth_user_info = \"ann:${PATH}\"\n",
    )
    .unwrap();
    assert_eq!(config.client_properties["sasl.password"], format!("<{path}>"));
    assert_eq!(config.admin_api_token.as_deref(), Some(path.as_str()));
    assert_eq!(config.schema_registry.unwrap().basic_auth, Some(("ann".to_owned(), path.clone())));
    // Other settings are taken as written.
    let config = load_text("[kafka]\nbootstrap_servers = \"x:1\"\napp_id = \"a\"\ngroup_id = \"${PATH}\"\n").unwrap();
    assert_eq!(config.group_id, "${PATH}");

    let unset = "TACTFUL_CONFIG_TEST_NEVER_SET";
    let error = load_text(&format!("[kafka]\nbootstrap_servers = \"x:1\"\n[admin]\napi_token = \"${{{unset}}}\"\n"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.ends_with(&format!(
            ".toml:4:1: admin.api_token names the environment variable `{unset}`, which is not set"
        )),
        "{error}"
    );
    let error = load_text(&format!(
        "[kafka]\nbootstrap_servers = \"x:1\"\nclient_properties = {{ \"sasl.password\" = \"${{{unset}}}\" }}\n"
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        error.ends_with(&format!(
            ".toml:3:1: kafka.client_properties `sasl.password` names the environment variable `{unset}`, which is not set"
        )),
        "{error}"
    );
}

#[test]
fn the_privacy_center_is_off_by_default_and_validated_when_on() {
    let config = load_text("[kafka]\nbootstrap_servers = \"x:1\"\n").unwrap();
    assert!(config.privacy_center.is_none());

    let secret = "s".repeat(32);
    let config = load_text(&format!(
        "[kafka]\nbootstrap_servers = \"x:1\"\n[privacy_center]\nlink_secret = \"{secret}\"\n\
         peers = [\"http://tactful-0.tactful:8090/\", \"https://b:8090\"]\n"
    ))
    .unwrap();
    let center = config.privacy_center.unwrap();
    assert_eq!(center.listen.to_string(), "127.0.0.1:8090");
    assert_eq!(center.public_url, "http://127.0.0.1:8090");
    assert_eq!(center.peers, vec!["http://tactful-0.tactful:8090", "https://b:8090"]);
    assert_eq!(center.requests_per_minute, 60);
    assert_eq!(center.link_secret, secret);

    let invalid = |table: &str| {
        load_text(&format!("[kafka]\nbootstrap_servers = \"x:1\"\n[privacy_center]\n{table}\n"))
            .err()
            .unwrap()
            .to_string()
    };
    assert!(invalid("listen = \"127.0.0.1:1\"").contains("missing field `link_secret`"));
    assert!(
        invalid("link_secret = \"too-short\"").ends_with("privacy_center.link_secret must be at least 32 characters")
    );
    let error = invalid(&format!("link_secret = \"{secret}\"\npublic_url = \"privacy.example.com\""));
    assert!(
        error.ends_with("privacy_center.public_url `privacy.example.com` must start with http:// or https://"),
        "{error}"
    );
    let error = invalid(&format!("link_secret = \"{secret}\"\nrequests_per_minute = 0"));
    assert!(error.ends_with("privacy_center.requests_per_minute must be at least 1"), "{error}");
    // The secret, like every secret setting, may come from the environment.
    let path = std::env::var("PATH").unwrap();
    let config = load_text(&format!(
        "[kafka]\nbootstrap_servers = \"x:1\"\n[privacy_center]\nlink_secret = \"${{PATH}}{secret}\"\n"
    ))
    .unwrap();
    assert_eq!(config.privacy_center.unwrap().link_secret, format!("{path}{secret}"));
}

//! Tests of the three input encodings and the `ProfileUpdate` writer.
//!
//! Avro values are built here with `apache_avro` directly, and the
//! single-object header with an independent CRC-64-AVRO implementation, so a
//! wrong fingerprint in the codec cannot hide behind the same mistake here.

use super::*;
use crate::model::{
    BrowseEvent, EventConsent, LocationEvent, Membership, PersonalizationLevel, PurchaseEvent, PurchaseItem,
};
use apache_avro::types::Value;
use apache_avro::Schema;
use proptest::prelude::*;

const BROWSE_AVSC: &str = include_str!("../../schemas/browse_event.avsc");
const PURCHASE_AVSC: &str = include_str!("../../schemas/purchase_event.avsc");
const LOCATION_AVSC: &str = include_str!("../../schemas/location_event.avsc");
const CONSENT_AVSC: &str = include_str!("../../schemas/consent_change.avsc");
const PROFILE_AVSC: &str = include_str!("../../schemas/profile_update.avsc");

/// CRC-64-AVRO (Rabin) as written in the Avro specification.
fn rabin_fingerprint(canonical_form: &str) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut table = [0u64; 256];
    for (index, entry) in table.iter_mut().enumerate() {
        let mut fingerprint = index as u64;
        for _ in 0..8 {
            fingerprint = (fingerprint >> 1) ^ (EMPTY & (fingerprint & 1).wrapping_neg());
        }
        *entry = fingerprint;
    }
    canonical_form
        .bytes()
        .fold(EMPTY, |fingerprint, byte| (fingerprint >> 8) ^ table[((fingerprint ^ u64::from(byte)) & 0xff) as usize])
}

/// What `codec` decodes `value` to, without how it was encoded.
fn decoded(codec: &Codec, kind: InputKind, value: &[u8]) -> Result<Decoded, DecodeError> {
    codec.decode(kind, value).map(|(decoded, _)| decoded)
}

fn schema(text: &str) -> Schema {
    Schema::parse_str(text).expect("a valid test schema")
}

/// The standard fingerprint of `text` (its canonical form is checked
/// against Java Avro's in `canonical::tests`).
fn fingerprint_of(text: &str) -> u64 {
    rabin_fingerprint(&canonical::parsing_canonical_form(text).expect("a valid test schema"))
}

/// `C3 01` + little-endian fingerprint + the binary datum of `value` under `schema_text`.
fn single_object(schema_text: &str, value: Value) -> Vec<u8> {
    let writer = schema(schema_text);
    let resolved = value.resolve(&writer).expect("the test value fits the writer schema");
    let datum = apache_avro::to_avro_datum(&writer, resolved).expect("encodable");
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&fingerprint_of(schema_text).to_le_bytes());
    bytes.extend_from_slice(&datum);
    bytes
}

fn avro_of<T: serde::Serialize>(schema_text: &str, record: &T) -> Vec<u8> {
    single_object(schema_text, apache_avro::to_value(record).expect("serializable"))
}

fn codec() -> Codec {
    Codec::new(&[]).expect("the bundled schemas are valid")
}

fn full_browse() -> BrowseEvent {
    BrowseEvent {
        event_id: "e-1".to_owned(),
        user_id: "user-1".to_owned(),
        ts: 1_700_000_000_123,
        session_id: Some("s-9".to_owned()),
        page_type: "product".to_owned(),
        product_id: Some("shoe-42".to_owned()),
        category: Some("running".to_owned()),
        url: Some("https://shop.example/p/shoe-42".to_owned()),
        consent: Some(EventConsent { tcf: Some("CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA".to_owned()), gpc: true }),
    }
}

fn bare_browse() -> BrowseEvent {
    BrowseEvent {
        event_id: "e-2".to_owned(),
        user_id: "user-2".to_owned(),
        ts: 1_700_000_000_000,
        session_id: None,
        page_type: "home".to_owned(),
        product_id: None,
        category: None,
        url: None,
        consent: None,
    }
}

fn purchase() -> PurchaseEvent {
    PurchaseEvent {
        event_id: "e-3".to_owned(),
        user_id: "user-1".to_owned(),
        ts: 1_700_000_100_000,
        order_id: "o-7".to_owned(),
        currency: "EUR".to_owned(),
        total_cents: 12_345,
        items: vec![
            PurchaseItem {
                product_id: "shoe-42".to_owned(),
                category: "running".to_owned(),
                quantity: 1,
                price_cents: 9_999,
            },
            PurchaseItem {
                product_id: "sock-1".to_owned(),
                category: "socks".to_owned(),
                quantity: 2,
                price_cents: 1_173,
            },
        ],
        consent: Some(EventConsent { tcf: None, gpc: false }),
    }
}

fn location(accuracy_m: Option<f32>) -> LocationEvent {
    LocationEvent {
        event_id: "e-4".to_owned(),
        user_id: "user-1".to_owned(),
        ts: 1_700_000_200_000,
        lat: 52.524_6,
        lon: -13.402,
        accuracy_m,
        consent: None,
    }
}

fn consent_change() -> ConsentChange {
    ConsentChange {
        user_id: "user-1".to_owned(),
        ts: 1_699_999_999_999,
        granted: vec!["personalization".to_owned(), "email".to_owned(), "not-a-purpose".to_owned()],
        level: PersonalizationLevel::Light,
        source: "cmp-web".to_owned(),
    }
}

fn profile(arm: Option<&str>) -> ProfileUpdate {
    ProfileUpdate {
        user_id: "user-1".into(),
        version: 1_700_000_000_001,
        ts: 1_700_000_000_000,
        level: PersonalizationLevel::Full,
        channels: vec!["web".into(), "email".into()].into(),
        segments: vec![
            Membership {
                id: "high_value".into(),
                since: 1_699_000_000_000,
                reason: "Spent 500.00 across 1 purchase in the last 90 days.".to_owned(),
                channels: vec!["web".into()].into(),
                arm: arm.map(|arm| arm.to_owned().into()),
            },
            Membership {
                id: "new_visitor".into(),
                since: 1_699_500_000_000,
                reason: "Visited on 1 day in the last 30 days.".to_owned(),
                channels: vec![].into(),
                arm: None,
            },
        ],
        entered: vec!["high_value".into()],
        exited: vec!["returning_visitor".into()],
    }
}

/// The bundled schema text with `edit` applied to its field list.
fn edited_schema(text: &str, edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> String {
    let mut json: serde_json::Value = serde_json::from_str(text).expect("json schema");
    let fields = json["fields"].as_array_mut().expect("a record schema");
    edit(fields);
    json.to_string()
}

fn record_fields(value: Value) -> Vec<(String, Value)> {
    match value {
        Value::Record(fields) => fields,
        other => panic!("expected a record, got {other:?}"),
    }
}

#[test]
fn the_test_fingerprint_matches_the_avro_specification_vector() {
    // From the Avro specification's test data: the fingerprint of `"null"`.
    assert_eq!(rabin_fingerprint("\"null\"") as i64, 7_195_948_357_588_979_594);
}

#[test]
fn json_round_trips_every_input_record_type() {
    let codec = codec();
    for browse in [full_browse(), bare_browse()] {
        let bytes = serde_json::to_vec(&browse).unwrap();
        assert_eq!(decoded(&codec, InputKind::Browse, &bytes), Ok(Decoded::Event(Event::from(browse))));
    }
    let bytes = serde_json::to_vec(&purchase()).unwrap();
    assert_eq!(decoded(&codec, InputKind::Purchase, &bytes), Ok(Decoded::Event(Event::from(purchase()))));
    for accuracy in [None, Some(12.5)] {
        let bytes = serde_json::to_vec(&location(accuracy)).unwrap();
        assert_eq!(decoded(&codec, InputKind::Location, &bytes), Ok(Decoded::Event(Event::from(location(accuracy)))));
    }
    let bytes = serde_json::to_vec(&consent_change()).unwrap();
    assert_eq!(decoded(&codec, InputKind::Consent, &bytes), Ok(Decoded::Consent(consent_change())));
}

#[test]
fn json_with_leading_whitespace_is_json() {
    let mut bytes = b" \n\t".to_vec();
    bytes.extend(serde_json::to_vec(&bare_browse()).unwrap());
    assert_eq!(decoded(&codec(), InputKind::Browse, &bytes), Ok(Decoded::Event(Event::from(bare_browse()))));
}

#[test]
fn avro_single_object_round_trips_every_input_record_type() {
    let codec = codec();
    for browse in [full_browse(), bare_browse()] {
        let bytes = avro_of(BROWSE_AVSC, &browse);
        assert_eq!(decoded(&codec, InputKind::Browse, &bytes), Ok(Decoded::Event(Event::from(browse))));
    }
    let bytes = avro_of(PURCHASE_AVSC, &purchase());
    assert_eq!(decoded(&codec, InputKind::Purchase, &bytes), Ok(Decoded::Event(Event::from(purchase()))));
    for accuracy in [None, Some(12.5)] {
        let bytes = avro_of(LOCATION_AVSC, &location(accuracy));
        assert_eq!(decoded(&codec, InputKind::Location, &bytes), Ok(Decoded::Event(Event::from(location(accuracy)))));
    }
    for level in [PersonalizationLevel::None, PersonalizationLevel::Light, PersonalizationLevel::Full] {
        let change = ConsentChange { level, ..consent_change() };
        let bytes = avro_of(CONSENT_AVSC, &change);
        assert_eq!(decoded(&codec, InputKind::Consent, &bytes), Ok(Decoded::Consent(change)));
    }
}

#[test]
fn avro_header_is_marker_then_little_endian_fingerprint() {
    let bytes = avro_of(BROWSE_AVSC, &bare_browse());
    assert_eq!(&bytes[..2], &SINGLE_OBJECT_MARKER);
    assert_eq!(u64::from_le_bytes(bytes[2..10].try_into().unwrap()), fingerprint_of(BROWSE_AVSC));
    // The codec's own CRC-64-AVRO agrees with the specification's table-driven algorithm.
    for text in [BROWSE_AVSC, PURCHASE_AVSC, LOCATION_AVSC, CONSENT_AVSC, PROFILE_AVSC] {
        assert_eq!(canonical::fingerprint(text), Ok(fingerprint_of(text)));
    }
}

#[test]
fn a_writer_with_an_added_field_with_default_still_decodes() {
    let writer = edited_schema(BROWSE_AVSC, |fields| {
        fields.insert(4, serde_json::json!({"name": "referrer", "type": "string", "default": ""}));
    });
    let mut fields = record_fields(apache_avro::to_value(full_browse()).unwrap());
    fields.insert(4, ("referrer".to_owned(), Value::String("https://search.example".to_owned())));
    let bytes = single_object(&writer, Value::Record(fields));

    // Unknown until configured as an extra writer schema.
    assert_eq!(
        decoded(&codec(), InputKind::Browse, &bytes),
        Err(DecodeError::UnknownFingerprint(fingerprint_of(&writer)))
    );
    let codec = Codec::new(&[writer]).unwrap();
    assert_eq!(decoded(&codec, InputKind::Browse, &bytes), Ok(Decoded::Event(Event::from(full_browse()))));
}

#[test]
fn a_writer_lacking_optional_fields_still_decodes_them_as_not_given() {
    let writer = edited_schema(BROWSE_AVSC, |fields| {
        fields.retain(|field| !matches!(field["name"].as_str(), Some("url" | "consent" | "session_id")));
    });
    let fields = record_fields(apache_avro::to_value(full_browse()).unwrap())
        .into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "url" | "consent" | "session_id"))
        .collect();
    let bytes = single_object(&writer, Value::Record(fields));
    let codec = Codec::new(&[writer]).unwrap();
    let expected = BrowseEvent { url: None, consent: None, session_id: None, ..full_browse() };
    assert_eq!(decoded(&codec, InputKind::Browse, &bytes), Ok(Decoded::Event(Event::from(expected))));
}

#[test]
fn a_writer_lacking_a_nested_optional_field_still_decodes() {
    // An older device schema without `gpc` inside EventConsent: gpc defaults to false.
    let writer = edited_schema(PURCHASE_AVSC, |fields| {
        let consent = fields.iter_mut().find(|field| field["name"] == "consent").unwrap();
        consent["type"][1]["fields"].as_array_mut().unwrap().retain(|field| field["name"] != "gpc");
    });
    let mut event = purchase();
    event.consent = Some(EventConsent { tcf: Some("TCF".to_owned()), gpc: false });
    let mut fields = record_fields(apache_avro::to_value(&event).unwrap());
    let consent = Value::Union(
        1,
        Box::new(Value::Record(vec![("tcf".to_owned(), Value::Union(1, Box::new(Value::String("TCF".to_owned()))))])),
    );
    fields.iter_mut().find(|(name, _)| name == "consent").unwrap().1 = consent;
    let bytes = single_object(&writer, Value::Record(fields));
    let codec = Codec::new(&[writer]).unwrap();
    assert_eq!(decoded(&codec, InputKind::Purchase, &bytes), Ok(Decoded::Event(Event::from(event))));
}

#[test]
fn a_writer_of_another_record_type_is_a_schema_mismatch() {
    let bytes = avro_of(PROFILE_AVSC, &profile(None));
    let error = decoded(&codec(), InputKind::Browse, &bytes).unwrap_err();
    assert!(matches!(error, DecodeError::SchemaMismatch(_)), "{error:?}");
    assert_eq!(error.reason(), "schema_mismatch");
}

#[test]
fn every_prefix_of_a_valid_avro_value_is_an_error() {
    let codec = codec();
    let cases = [
        (InputKind::Browse, avro_of(BROWSE_AVSC, &full_browse())),
        (InputKind::Browse, avro_of(BROWSE_AVSC, &bare_browse())),
        (InputKind::Purchase, avro_of(PURCHASE_AVSC, &purchase())),
        (InputKind::Location, avro_of(LOCATION_AVSC, &location(Some(3.0)))),
        (InputKind::Location, avro_of(LOCATION_AVSC, &location(None))),
        (InputKind::Consent, avro_of(CONSENT_AVSC, &consent_change())),
    ];
    for (kind, bytes) in cases {
        assert!(decoded(&codec, kind, &bytes).is_ok());
        for length in 0..bytes.len() {
            let error = decoded(&codec, kind, &bytes[..length]).unwrap_err();
            let expected_kind = match length {
                0 => matches!(error, DecodeError::Empty),
                _ => matches!(error, DecodeError::Truncated(_)),
            };
            assert!(expected_kind, "{kind:?} prefix of {length} bytes gave {error:?}");
            assert_eq!(error.reason(), "undecodable");
        }
    }
}

#[test]
fn a_value_cut_off_before_its_trailing_consent_is_truncated_not_consent_free() {
    // Regression: apache_avro reads a union cut off by the end of input as null,
    // which silently turned a GPC opt-out into "no consent signals".
    let mut event = purchase();
    event.consent = Some(EventConsent { tcf: None, gpc: true });
    let bytes = avro_of(PURCHASE_AVSC, &event);
    // consent union branch 1 (02), tcf null (00), gpc true (01).
    assert_eq!(&bytes[bytes.len() - 3..], &[0x02, 0x00, 0x01]);
    let cut = &bytes[..bytes.len() - 3];
    assert_eq!(decoded(&codec(), InputKind::Purchase, cut), Err(DecodeError::Truncated("the avro datum ends early")));
}

#[test]
fn a_value_cut_off_inside_a_string_is_truncated() {
    let bytes = avro_of(BROWSE_AVSC, &full_browse());
    // Header (10), event_id "e-1" (1 + 3), then user_id's length and 2 of its 6 bytes.
    let cut = &bytes[..10 + 4 + 1 + 2];
    assert_eq!(decoded(&codec(), InputKind::Browse, cut), Err(DecodeError::Truncated("the avro datum ends early")));
}

#[test]
fn bytes_after_the_datum_are_malformed() {
    let mut bytes = avro_of(BROWSE_AVSC, &bare_browse());
    bytes.push(0);
    assert_eq!(
        decoded(&codec(), InputKind::Browse, &bytes),
        Err(DecodeError::Malformed { encoding: "avro", detail: "1 bytes after the end of the datum".to_owned() })
    );
}

#[test]
fn an_unknown_fingerprint_is_named_in_the_error() {
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
    bytes.extend_from_slice(&[0, 0, 0]);
    let error = decoded(&codec(), InputKind::Purchase, &bytes).unwrap_err();
    assert_eq!(error, DecodeError::UnknownFingerprint(0x0123_4567_89ab_cdef));
    assert_eq!(error.reason(), "unknown_schema");
    assert_eq!(error.to_string(), "no known writer schema has fingerprint 0x0123456789abcdef");
}

#[test]
fn confluent_framing_without_a_registry_names_the_schema_id() {
    let codec = codec();
    let error = decoded(&codec, InputKind::Browse, &[0x00, 0x00, 0x01, 0x00, 0x07, 0x02, 0x61]).unwrap_err();
    assert_eq!(error, DecodeError::NoRegistry(65_543));
    assert_eq!(error.reason(), "unknown_schema");
    assert_eq!(decoded(&codec, InputKind::Consent, &[0x00, 0, 0, 0, 5]), Err(DecodeError::NoRegistry(5)));
    let short = decoded(&codec, InputKind::Consent, &[0x00, 0, 0, 5]).unwrap_err();
    assert!(matches!(short, DecodeError::Truncated(_)), "{short:?}");
}

#[test]
fn records_with_the_legacy_fingerprint_are_accepted_and_told_apart() {
    // tactful before issue 9 wrote apache-avro 0.21's fingerprint, whose
    // canonical form keeps `{"type":"long"}` for timestamp-millis.
    let codec = codec();
    for (text, kind, record) in [
        (BROWSE_AVSC, InputKind::Browse, apache_avro::to_value(full_browse()).unwrap()),
        (CONSENT_AVSC, InputKind::Consent, apache_avro::to_value(consent_change()).unwrap()),
    ] {
        let writer = schema(text);
        let legacy = rabin_fingerprint(&writer.canonical_form());
        assert_ne!(legacy, fingerprint_of(text), "the crate's form differs for logical types");
        let standard = single_object(text, record);
        assert_eq!(codec.decode(kind, &standard).map(|(_, encoding)| encoding), Ok(Encoding::SingleObject));
        let mut legacy_bytes = standard.clone();
        legacy_bytes[2..10].copy_from_slice(&legacy.to_le_bytes());
        let (legacy_record, encoding) = codec.decode(kind, &legacy_bytes).unwrap();
        assert_eq!(encoding, Encoding::SingleObjectLegacy);
        assert_eq!(Ok(legacy_record), decoded(&codec, kind, &standard));
    }
}

/// `00`, the big-endian schema id, then the datum of `value` under `schema_text`.
fn confluent(id: u32, schema_text: &str, value: Value) -> Vec<u8> {
    let writer = schema(schema_text);
    let datum = apache_avro::to_avro_datum(&writer, value.resolve(&writer).unwrap()).unwrap();
    let mut bytes = vec![0x00];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&datum);
    bytes
}

#[test]
fn confluent_framing_decodes_with_the_registrys_writer_schema_once_fetched() {
    let codec = Codec::with_registry(&[]).unwrap();
    let bytes = confluent(70_000, BROWSE_AVSC, apache_avro::to_value(full_browse()).unwrap());
    // The pipeline fetches what the codec does not know before decoding.
    assert_eq!(codec.missing_schema_id(&bytes), Some(70_000));
    assert!(matches!(codec.decode(InputKind::Browse, &bytes), Err(DecodeError::UnknownSchemaId { id: 70_000, .. })));
    codec.add_registry_schema(70_000, Ok(BROWSE_AVSC));
    assert_eq!(codec.missing_schema_id(&bytes), None);
    assert_eq!(
        codec.decode(InputKind::Browse, &bytes),
        Ok((Decoded::Event(Event::from(full_browse())), Encoding::Confluent))
    );
    // Schema evolution: a writer with an added field (and no url) resolves.
    let evolved = edited_schema(BROWSE_AVSC, |fields| {
        fields.retain(|field| field["name"] != "url");
        fields.push(serde_json::json!({"name": "app_version", "type": "string", "default": "unknown"}));
    });
    let mut fields = record_fields(apache_avro::to_value(full_browse()).unwrap());
    fields.retain(|(name, _)| name != "url");
    fields.push(("app_version".to_owned(), Value::String("5.1".to_owned())));
    let bytes = confluent(2, &evolved, Value::Record(fields));
    codec.add_registry_schema(2, Ok(&evolved));
    let expected = BrowseEvent { url: None, ..full_browse() };
    assert_eq!(decoded(&codec, InputKind::Browse, &bytes), Ok(Decoded::Event(Event::from(expected))));
}

#[test]
fn a_registry_schema_that_apache_avros_canonical_form_panics_on_is_only_bad_input() {
    // Found by the registry_schema fuzz target: a record with a non-numeric
    // `precision` attribute, which apache-avro 0.21's canonical_form() unwraps.
    let text = PURCHASE_AVSC.replace(r#""namespace": "tactful.v1""#, r#""precision": "tactful.v1""#);
    assert_ne!(text, PURCHASE_AVSC);
    let codec = Codec::with_registry(&[]).unwrap();
    codec.add_registry_schema(7, Ok(&text));
    let error = decoded(&codec, InputKind::Purchase, &[0, 0, 0, 0, 7, 2, b'x']).unwrap_err();
    assert!(matches!(error.reason(), "undecodable" | "schema_mismatch"), "{error:?}");
}

#[test]
fn confluent_records_with_an_unknown_unusable_or_incompatible_schema_are_bad_input() {
    let codec = Codec::with_registry(&[]).unwrap();
    let browse = confluent(3, BROWSE_AVSC, apache_avro::to_value(bare_browse()).unwrap());
    codec.add_registry_schema(3, Err("the registry has no schema 3".to_owned()));
    let unknown = decoded(&codec, InputKind::Browse, &browse).unwrap_err();
    assert_eq!(
        (unknown.reason(), unknown.to_string().as_str()),
        ("unknown_schema", "the schema registry has no usable schema with id 3: the registry has no schema 3")
    );
    codec.add_registry_schema(4, Ok("{\"type\": \"recor"));
    let unusable = decoded(&codec, InputKind::Browse, &[0, 0, 0, 0, 4, 0]).unwrap_err();
    assert_eq!(unusable.reason(), "unknown_schema");
    // A consent change's schema on the browse topic cannot be read as a browse event.
    let consent = confluent(5, CONSENT_AVSC, apache_avro::to_value(consent_change()).unwrap());
    codec.add_registry_schema(5, Ok(CONSENT_AVSC));
    assert_eq!(decoded(&codec, InputKind::Browse, &consent).unwrap_err().reason(), "schema_mismatch");
}

#[test]
fn empty_and_lone_marker_values_are_undecodable() {
    let codec = codec();
    assert_eq!(decoded(&codec, InputKind::Browse, &[]), Err(DecodeError::Empty));
    assert_eq!(
        decoded(&codec, InputKind::Browse, &[0xC3]),
        Err(DecodeError::Truncated("single-object marker without fingerprint"))
    );
}

#[test]
fn json_missing_a_required_field_is_missing_field() {
    let mut json = serde_json::to_value(bare_browse()).unwrap();
    json.as_object_mut().unwrap().remove("page_type");
    let error = decoded(&codec(), InputKind::Browse, &serde_json::to_vec(&json).unwrap()).unwrap_err();
    match &error {
        DecodeError::MissingField(detail) => {
            assert!(detail.starts_with("missing field `page_type`"), "{detail}")
        }
        other => panic!("expected MissingField, got {other:?}"),
    }
    assert_eq!(error.reason(), "missing_field");

    let error =
        decoded(&codec(), InputKind::Consent, br#"{"user_id":"u","ts":1,"granted":[],"source":"cmp"}"#).unwrap_err();
    assert!(matches!(&error, DecodeError::MissingField(detail) if detail.contains("`level`")), "{error:?}");
}

#[test]
fn fields_never_kept_are_still_checked_as_the_contract_types_them() {
    let codec = codec();
    let json_with = |record: serde_json::Value, field: &str, value: Option<serde_json::Value>| {
        let mut record = record;
        match value {
            Some(value) => record[field] = value,
            None => drop(record.as_object_mut().unwrap().remove(field)),
        }
        serde_json::to_vec(&record).unwrap()
    };
    let browse = serde_json::to_value(full_browse()).unwrap();
    let purchase = serde_json::to_value(purchase()).unwrap();
    let location = serde_json::to_value(location(Some(4.0))).unwrap();
    for (kind, record, field) in [
        (InputKind::Browse, &browse, "event_id"),
        (InputKind::Purchase, &purchase, "order_id"),
        (InputKind::Location, &location, "event_id"),
    ] {
        let error = decoded(&codec, kind, &json_with(record.clone(), field, None)).unwrap_err();
        assert!(matches!(&error, DecodeError::MissingField(detail) if detail.contains(field)), "{field}: {error:?}");
    }
    for (kind, record, field, value) in [
        (InputKind::Browse, &browse, "event_id", serde_json::json!(7)),
        (InputKind::Browse, &browse, "session_id", serde_json::json!(false)),
        (InputKind::Browse, &browse, "url", serde_json::json!(["https://shop.example"])),
        (InputKind::Purchase, &purchase, "order_id", serde_json::json!({})),
        (InputKind::Location, &location, "accuracy_m", serde_json::json!("near")),
    ] {
        let error = decoded(&codec, kind, &json_with(record.clone(), field, Some(value))).unwrap_err();
        assert!(matches!(&error, DecodeError::Malformed { encoding: "json", .. }), "{field}: {error:?}");
    }

    // Avro: a url that is not UTF-8 is malformed, like any string.
    let mut bytes = avro_of(BROWSE_SCHEMA, &full_browse());
    let url = full_browse().url.unwrap();
    let at = bytes.windows(url.len()).position(|window| window == url.as_bytes()).expect("the url is in the datum");
    bytes[at] = 0xFF;
    assert_eq!(
        decoded(&codec, InputKind::Browse, &bytes),
        Err(DecodeError::Malformed { encoding: "avro", detail: "string is not UTF-8".to_owned() })
    );
}

#[test]
fn json_events_written_by_python_decode_as_written() {
    let browse = BrowseEvent {
        event_id: "e-1".to_owned(),
        user_id: "u-7".to_owned(),
        ts: 1_700_000_000_000,
        session_id: Some("s-42".to_owned()),
        page_type: "product".to_owned(),
        product_id: Some("schuh-größe-42".to_owned()),
        category: Some("running".to_owned()),
        url: Some("https://shop.example/schuh?größe=42&q=\"laufen\"".to_owned()),
        consent: Some(EventConsent { tcf: None, gpc: true }),
    };
    let item = |product_id: &str, category: &str, quantity, price_cents| PurchaseItem {
        product_id: product_id.to_owned(),
        category: category.to_owned(),
        quantity,
        price_cents,
    };
    let purchase = PurchaseEvent {
        event_id: "e-2".to_owned(),
        user_id: "u-7".to_owned(),
        ts: 1_700_000_100_000,
        order_id: "order-0001-ø".to_owned(),
        currency: "EUR".to_owned(),
        total_cents: 12_345,
        items: vec![item("crème-1", "beauté", 2, 6_000), item("sock-1", "apparel", 1, 345)],
        consent: None,
    };
    let location = LocationEvent {
        event_id: "e-3".to_owned(),
        user_id: "u-7".to_owned(),
        ts: 1_700_000_200_000,
        lat: 52.524_6,
        lon: 13.402,
        accuracy_m: Some(12.5),
        consent: None,
    };
    let codec = codec();
    let fixture = include_str!("../../tests/fixtures/python-json-events.txt");
    let lines: Vec<(&str, &str)> =
        fixture.lines().filter(|line| !line.starts_with('#')).filter_map(|line| line.split_once(' ')).collect();
    assert_eq!(lines.len(), 6, "each event escaped and as raw UTF-8");
    for (kind, json) in lines {
        let json = json.as_bytes();
        match kind {
            "browse" => decodes_as_written(&codec, InputKind::Browse, json, &browse),
            "purchase" => decodes_as_written(&codec, InputKind::Purchase, json, &purchase),
            "location" => decodes_as_written(&codec, InputKind::Location, json, &location),
            other => panic!("unknown kind {other}"),
        }
    }
}

/// `json` decodes to `expected` both as written (every field) and as
/// tactful reads it.
fn decodes_as_written<T>(codec: &Codec, kind: InputKind, json: &[u8], expected: &T)
where
    T: serde::de::DeserializeOwned + Clone + PartialEq + std::fmt::Debug,
    Event: From<T>,
{
    assert_eq!(codec.decode_written(kind, json).as_ref(), Ok(expected));
    assert_eq!(decoded(codec, kind, json), Ok(Decoded::Event(Event::from(expected.clone()))));
}

/// The datum of `kind` in tests/fixtures/fastavro-events.txt, behind the
/// single-object header of `schema_text`.
fn written_by_fastavro(kind: &str, schema_text: &str) -> Vec<u8> {
    let fixture = include_str!("../../tests/fixtures/fastavro-events.txt");
    let line = fixture.lines().find_map(|line| line.strip_prefix(&format!("{kind} "))).expect("a fixture line");
    let datum = (0..line.len()).step_by(2).map(|at| u8::from_str_radix(&line[at..at + 2], 16).unwrap());
    [0xC3, 0x01].into_iter().chain(fingerprint_of(schema_text).to_le_bytes()).chain(datum).collect()
}

#[test]
fn events_written_by_fastavro_decode_past_every_field_never_kept() {
    let codec = codec();
    let browse = written_by_fastavro("browse", BROWSE_SCHEMA);
    let expected = BrowseEvent {
        event_id: String::new(),
        user_id: "u-7".to_owned(),
        ts: 1_700_000_000_123,
        session_id: None,
        page_type: "product".to_owned(),
        product_id: Some("shoe-42".to_owned()),
        category: Some("running".to_owned()),
        url: None,
        consent: Some(EventConsent { tcf: None, gpc: true }),
    };
    assert_eq!(decoded(&codec, InputKind::Browse, &browse), Ok(Decoded::Event(Event::from(expected))));

    let purchase = written_by_fastavro("purchase", PURCHASE_SCHEMA);
    let item = |product_id: &str, category: &str, quantity, price_cents| PurchaseItem {
        product_id: product_id.to_owned(),
        category: category.to_owned(),
        quantity,
        price_cents,
    };
    let expected = PurchaseEvent {
        event_id: String::new(),
        user_id: "u-7".to_owned(),
        ts: 1_700_000_000_456,
        order_id: String::new(),
        currency: "EUR".to_owned(),
        total_cents: 12_345,
        items: vec![item("shoe-42", "running", 2, 5_000), item("sock-1", "apparel", 1, 2_345)],
        consent: None,
    };
    assert_eq!(decoded(&codec, InputKind::Purchase, &purchase), Ok(Decoded::Event(Event::from(expected))));

    let location = written_by_fastavro("location", LOCATION_SCHEMA);
    let expected = LocationEvent {
        event_id: String::new(),
        user_id: "u-7".to_owned(),
        ts: 1_700_000_000_789,
        lat: 52.5163,
        lon: 13.3777,
        accuracy_m: None,
        consent: Some(EventConsent {
            tcf: Some("CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA".to_owned()),
            gpc: false,
        }),
    };
    assert_eq!(decoded(&codec, InputKind::Location, &location), Ok(Decoded::Event(Event::from(expected))));
}

#[test]
fn avro_strings_beyond_ascii_decode_exactly_and_broken_utf8_is_malformed() {
    let codec = codec();
    let browse = written_by_fastavro("browse-utf8", BROWSE_SCHEMA);
    let expected = BrowseEvent {
        event_id: String::new(),
        user_id: "u-ø7".to_owned(),
        ts: 1_700_000_000_789,
        session_id: None,
        page_type: "product".to_owned(),
        product_id: Some("schuh-größe-42".to_owned()),
        category: Some("laufschuhe-€".to_owned()),
        url: None,
        consent: None,
    };
    assert_eq!(decoded(&codec, InputKind::Browse, &browse), Ok(Decoded::Event(Event::from(expected))));

    // The same datum with one character of a kept string replaced by bytes of
    // its length that are not UTF-8: an overlong "6", a lead byte without its
    // continuation, a surrogate, a lone continuation byte.
    for (character, broken) in
        [("ö", &[0xC0, 0xB6][..]), ("ö", &[0xC3, 0x28]), ("€", &[0xED, 0xA0, 0x80]), ("ø", &[0xB8, 0x37])]
    {
        let mut bytes = browse.clone();
        let at = bytes.windows(character.len()).position(|window| window == character.as_bytes()).unwrap();
        bytes[at..at + broken.len()].copy_from_slice(broken);
        assert_eq!(
            decoded(&codec, InputKind::Browse, &bytes),
            Err(DecodeError::Malformed { encoding: "avro", detail: "string is not UTF-8".to_owned() }),
            "{character} as {broken:02X?}"
        );
    }
}

#[test]
fn json_nulls_and_absent_optionals_both_mean_not_given() {
    let codec = codec();
    let with_nulls = br#"{"event_id":"e-2","user_id":"user-2","ts":1700000000000,"page_type":"home",
        "session_id":null,"product_id":null,"category":null,"url":null,"consent":null}"#;
    let absent = br#"{"event_id":"e-2","user_id":"user-2","ts":1700000000000,"page_type":"home"}"#;
    let expected = Ok(Decoded::Event(Event::from(bare_browse())));
    assert_eq!(decoded(&codec, InputKind::Browse, with_nulls), expected);
    assert_eq!(decoded(&codec, InputKind::Browse, absent), expected);

    let null_tcf = br#"{"event_id":"e","user_id":"u","ts":5,"lat":1.5,"lon":2.5,"accuracy_m":null,
        "consent":{"tcf":null}}"#;
    let expected = LocationEvent {
        event_id: "e".to_owned(),
        user_id: "u".to_owned(),
        ts: 5,
        lat: 1.5,
        lon: 2.5,
        accuracy_m: None,
        consent: Some(EventConsent { tcf: None, gpc: false }),
    };
    assert_eq!(decoded(&codec, InputKind::Location, null_tcf), Ok(Decoded::Event(Event::from(expected))));
}

#[test]
fn json_fields_unknown_to_the_reader_are_ignored() {
    let json = br#"{"event_id":"e-2","user_id":"user-2","ts":1700000000000,"page_type":"home","new_field":[1,2]}"#;
    assert_eq!(decoded(&codec(), InputKind::Browse, json), Ok(Decoded::Event(Event::from(bare_browse()))));
}

#[test]
fn values_that_are_no_known_encoding_or_invalid_json_are_malformed() {
    let codec = codec();
    for value in [&b"hello"[..], b"[1,2]", b"{\"event_id\":", b"{\"event_id\":\"e\",\"user_id\":\"u\",\"ts\":\"soon\"}"]
    {
        let error = decoded(&codec, InputKind::Browse, value).unwrap_err();
        assert!(matches!(error, DecodeError::Malformed { encoding: "json", .. }), "{value:?}: {error:?}");
        assert_eq!(error.reason(), "undecodable");
    }
    // Not UTF-8 inside a string: the contract's JSON is UTF-8 throughout.
    let not_utf8 = b"{\"event_id\":\"e\xFF\",\"user_id\":\"u\",\"ts\":1,\"page_type\":\"home\"}";
    assert_eq!(
        decoded(&codec, InputKind::Browse, not_utf8),
        Err(DecodeError::Malformed { encoding: "json", detail: "not UTF-8 at byte 14".to_owned() })
    );
    let bad_level = br#"{"user_id":"u","ts":1,"granted":[],"level":"MAXIMUM","source":"cmp"}"#;
    assert!(matches!(
        decoded(&codec, InputKind::Consent, bad_level),
        Err(DecodeError::Malformed { encoding: "json", .. })
    ));
}

#[test]
fn an_invalid_extra_writer_schema_is_refused() {
    let error = Codec::new(&["{\"type\": \"record\"}".to_owned()]).err().expect("an invalid schema");
    assert!(matches!(error, SchemaError::Invalid(_)), "{error:?}");
}

#[test]
fn encoded_profiles_decode_back_with_apache_avro() {
    let codec = codec();
    let reader = schema(PROFILE_AVSC);
    for update in [profile(None), profile(Some("holdout")), profile(Some("treatment"))] {
        let mut out = vec![0xAA];
        codec.encode_profile(&EncodedUpdate::from(&update), &mut out);
        assert_eq!(out[0], 0xAA, "encode_profile appends");
        let bytes = &out[1..];
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(u64::from_le_bytes(bytes[2..10].try_into().unwrap()), fingerprint_of(PROFILE_AVSC));
        let mut datum = &bytes[10..];
        let value = apache_avro::from_avro_datum(&reader, &mut datum, None).unwrap();
        assert!(datum.is_empty(), "{} bytes left after the datum", datum.len());
        assert_eq!(apache_avro::from_value::<ProfileUpdate>(&value).unwrap(), update);
    }
}

#[test]
fn encoded_inputs_decode_back_to_the_same_records() {
    let codec = codec();
    let mut bytes = Vec::new();
    codec.encode_input(InputKind::Browse, &full_browse(), &mut bytes).unwrap();
    assert_eq!(u64::from_le_bytes(bytes[2..10].try_into().unwrap()), fingerprint_of(BROWSE_AVSC));
    assert_eq!(decoded(&codec, InputKind::Browse, &bytes), Ok(Decoded::Event(Event::from(full_browse()))));
    bytes.clear();
    codec.encode_input(InputKind::Purchase, &purchase(), &mut bytes).unwrap();
    assert_eq!(decoded(&codec, InputKind::Purchase, &bytes), Ok(Decoded::Event(Event::from(purchase()))));
    bytes.clear();
    codec.encode_input(InputKind::Location, &location(Some(4.0)), &mut bytes).unwrap();
    assert_eq!(decoded(&codec, InputKind::Location, &bytes), Ok(Decoded::Event(Event::from(location(Some(4.0))))));
    bytes.clear();
    codec.encode_input(InputKind::Consent, &consent_change(), &mut bytes).unwrap();
    assert_eq!(decoded(&codec, InputKind::Consent, &bytes), Ok(Decoded::Consent(consent_change())));
}

#[test]
fn an_encoded_update_is_keyed_by_its_user_and_reads_back_as_written() {
    for update in [profile(None), profile(Some("treatment"))] {
        let encoded = EncodedUpdate::from(&update);
        assert_eq!(encoded.user_id(), "user-1");
        assert_eq!(encoded.decode(), Ok(update));
    }
    let cut = EncodedUpdate::from_datum(EncodedUpdate::from(&profile(None)).datum()[..20].to_vec());
    assert!(matches!(cut.decode(), Err(DecodeError::Malformed { .. })), "{:?}", cut.decode());
}

#[test]
fn encoded_profile_arms_are_avro_unions() {
    let reader = schema(PROFILE_AVSC);
    let mut bytes = Vec::new();
    codec().encode_profile(&EncodedUpdate::from(&profile(Some("holdout"))), &mut bytes);
    let value = apache_avro::from_avro_datum(&reader, &mut &bytes[10..], None).unwrap();
    let Value::Record(fields) = value else { panic!("a record") };
    let Value::Array(segments) = &fields.iter().find(|(name, _)| name == "segments").unwrap().1 else {
        panic!("an array")
    };
    let arms: Vec<&Value> = segments
        .iter()
        .map(|segment| match segment {
            Value::Record(fields) => &fields.iter().find(|(name, _)| name == "arm").unwrap().1,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        arms,
        vec![&Value::Union(1, Box::new(Value::String("holdout".to_owned()))), &Value::Union(0, Box::new(Value::Null)),]
    );
}

#[test]
fn a_huge_array_block_count_is_an_error_not_an_abort() {
    // Regression: a purchase whose `items` array claims 512 Mi entries made
    // apache_avro reserve 30 GB and abort the process.
    let mut fields = record_fields(apache_avro::to_value(purchase()).unwrap());
    fields.iter_mut().find(|(name, _)| name == "items").unwrap().1 = Value::Array(vec![]);
    let mut bytes = single_object(PURCHASE_AVSC, Value::Record(fields));
    // The datum ends with the empty array (00), the consent union's branch 1
    // (02), tcf's null branch (00) and gpc = false (00).
    let consent_and_after = bytes.len() - 4;
    assert_eq!(&bytes[consent_and_after..], &[0x00, 0x02, 0x00, 0x00]);
    let count: i64 = 536_870_912;
    let mut zigzag = ((count << 1) ^ (count >> 63)) as u64;
    let mut varint = Vec::new();
    while zigzag >= 0x80 {
        varint.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    varint.push(zigzag as u8);
    bytes.splice(consent_and_after..=consent_and_after, varint);
    let codec = codec();
    // Creating a codec bounds apache_avro's allocations (set once per process).
    assert_eq!(apache_avro::util::max_allocation_bytes(usize::MAX), avro::MAX_AVRO_ALLOCATION);
    let error = decoded(&codec, InputKind::Purchase, &bytes).unwrap_err();
    assert_eq!(error, DecodeError::Truncated("the avro datum ends early"));
    assert_eq!(error.reason(), "undecodable");
}

fn all_kinds() -> impl Strategy<Value = InputKind> {
    prop_oneof![Just(InputKind::Browse), Just(InputKind::Purchase), Just(InputKind::Location), Just(InputKind::Consent),]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(kind in all_kinds(), bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decoded(&codec(), kind, &bytes);
    }

    #[test]
    fn arbitrary_datums_behind_a_known_fingerprint_never_panic(
        kind in all_kinds(),
        writer in 0usize..5,
        datum in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let text = [BROWSE_AVSC, PURCHASE_AVSC, LOCATION_AVSC, CONSENT_AVSC, PROFILE_AVSC][writer];
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&fingerprint_of(text).to_le_bytes());
        bytes.extend_from_slice(&datum);
        let _ = decoded(&codec(), kind, &bytes);
    }

    #[test]
    fn arbitrary_json_objects_never_panic(text in "\\{[ -~]{0,64}\\}?") {
        let _ = decoded(&codec(), InputKind::Purchase, text.as_bytes());
    }

    #[test]
    fn avro_and_json_decode_the_same_browse_event(
        ts in any::<i64>(),
        session in proptest::option::of("[a-z0-9]{0,12}"),
        category in proptest::option::of("[a-z]{1,12}"),
        gpc in proptest::option::of(any::<bool>()),
    ) {
        let event = BrowseEvent {
            ts,
            session_id: session,
            category,
            consent: gpc.map(|gpc| EventConsent { tcf: None, gpc }),
            ..full_browse()
        };
        let codec = codec();
        let expected = Decoded::Event(Event::from(event.clone()));
        prop_assert_eq!(decoded(&codec, InputKind::Browse, &avro_of(BROWSE_AVSC, &event)), Ok(expected.clone()));
        prop_assert_eq!(decoded(&codec, InputKind::Browse, &serde_json::to_vec(&event).unwrap()), Ok(expected));
    }
}

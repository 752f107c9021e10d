use super::*;
use proptest::prelude::*;

// Example strings and the decoded values the IAB reference decoders publish for them. Values a fixture does not
// pin (noted per test) were cross-checked against an independent decoder (the `lib_tcstring` crate).

/// iabtcf-java, iabtcf-decoder/src/test/java/com/iabtcf/decoder/TCStringV2Test.java
/// (testCanConstructTCModelFromBase64String); also TCStringDecoderTest.java (testCanCreateModelOnePartString).
const JAVA_CORE_ONLY: &str = "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA";
/// iabtcf-java TCStringV2Test.java (testConstructConsentsFromBitFields, testCanParseDisclosedAndAllowedVendors,
/// testCanParseAllParts), and iabtcf-es modules/core/test/TCString.test.ts ("succesfully decodes a valid encoded
/// TC string", added in commit 11d34da, removed in 38a531e).
const BITFIELD_VENDORS: &str = "COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA";
/// iabtcf-java TCStringV2Test.java (testPurposesConsent).
const JAVA_PURPOSES_1_AND_2: &str = "COwxsONOwxsONKpAAAENAdCAAMAAAAAAAAAAAAAAAAAA";
/// iabtcf-java TCStringV2Test.java (testCanParseRangeEncodedVendorLegitimateInterests).
const JAVA_RANGE_ENCODED_LI: &str = "COv__-wOv__-wC2AAAENAPCgAAAAAAAAAAAAA_wAQA_gEBABAEAAAA";
/// iabtcf-java TCStringV2Test.java (testRange): vendor consents as one range entry.
const JAVA_ONE_RANGE: &str = "COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAQFfgUbABAUaAAA";
/// iabtcf-java TCStringV2Test.java (testRange): vendor consents as two single-vendor entries.
const JAVA_TWO_RANGES: &str = "COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAYFfAV-BVkAGBVYFWAAA";
/// iabtcf-es modules/core/test/ReportedIssues.test.ts ("201 unable to decode valid TCF2 String"): publisher
/// restrictions that list a vendor several times.
const ES_ISSUE_201: &str = "CO4VGswO4VGswAfZCBDEAzCsAP_AAH_AAAigGUNf_X9fb2vj-_599_t0eY1f9_63t-wzjheMs-8NyZ-X_J4Wv2MyvB34JqQKGRgkunLBAQdtHGncTQgBwIlViTLMY02MjzNKJrJEilsbe2dYGH9vn8XT_ZKZ70-_v__7v3___33_5Ayhr_6_r7e18f3_Pvv9ujzGr_v_W9v2GccLxln3huTPy_5PC1-xmV4O_BNSBQyMEl05YICDto407iaEAOBEqsSZZjGmxkeZpRNZIkUtjb2zrAw_t8_i6f7JTPen39___d-___--__ICgKAOAAcAA4AFAAjgB6AEYALcGACAW0AtoJAHAAOAAcACgARwA9ACMAFuFABALaAW0GgDgAHAAOABQAI4AegBGAC3DgAgFtALaEQBwADgAHAAoAEcAPQAjABbiQAQC2gFtCoA4ABwADgAUACOAHoARgAtxYAIBbQC2hkAcAA4ABwAKABHAD0AIwAW40AEAtoBbQ6AOAAcAA4AFAAjgB6AEYALceACAW0AtohAHAAOAAcACgARwA9ACMAFuRABALaAW0SgDgAHAAOABQAI4AegBGAC3JgAgFtALaKQBwADgAHAAoAEcAPQAjABblQAQC2gFtA";
/// iabtcf-es modules/core/test/ReportedIssues.test.ts ("142 it should throw an error if the bitfield length does
/// not match the maxId").
const ES_ISSUE_142: &str = "CLSYjTaOngnCIAOABBENAXCMAGOAABBAAA7IA5n-m7fP6_3fbqVv6E__PoA5Aqff3aJx8tv_1967rfnQEQoAIAAQCrwkAEABAcACABIMACAAuApEVABABUSABgBCAVSAtIoACACIArYQAHACgAFgAVwBJgDcAI7AWgMAAgBiKgAgBMgFfKQAQBRkQAQA4AFiBAAoA-AEVAJlAVgAtYcACAJcAr4eABAK8OgBgFzAOmAqwgABAWyA.IFukWSQh";
/// iabtcf-es modules/core/test/ReportedIssues.test.ts ("156 it should auto detect 1 version"): a TCF v1.1 string.
const ES_V1: &str = "BOhwdphOxFC7tAHABBFRC--AAAAuhr_7__7-_9_-_f__9uj3Or_v_f__32ccL59v_h_7v-_7fi_20nV4u_1vft9yfk1-5ctDztp507iakivXmqdeb9v_nz3_5pxP78k89r7337Ew_v8_v-b7BCON_YxEiA";
/// iabtcf-java iabtcf-decoder/src/test/java/com/iabtcf/decoder/TCStringV1Test.java: a TCF v1.1 string.
const JAVA_V1: &str = "BObdrPUOevsguAfDqFENCNAAAAAmeAAA";

const EVERY_FIXTURE: [&str; 8] = [
    JAVA_CORE_ONLY,
    BITFIELD_VENDORS,
    JAVA_PURPOSES_1_AND_2,
    JAVA_RANGE_ENCODED_LI,
    JAVA_ONE_RANGE,
    JAVA_TWO_RANGES,
    ES_ISSUE_201,
    ES_ISSUE_142,
];

/// The bits for purposes (1..=24) or special features (1..=12) in a field of `width` bits.
fn numbered_bits(width: u8, numbers: &[u8]) -> u32 {
    numbers.iter().map(|number| 1u32 << (width - number)).sum()
}

fn consented_vendors(tc: &TcString, up_to: u16) -> Vec<u16> {
    (0..=up_to).filter(|&vendor_id| tc.vendor_consent(vendor_id)).collect()
}

/// Encodes `(value, width)` fields as base64url the way a CMP does, zero-padding to a whole character.
fn encode_fields(fields: &[(u64, u8)]) -> String {
    let mut bits: Vec<u8> = fields
        .iter()
        .flat_map(|&(value, width)| (0..width).rev().map(move |shift| ((value >> shift) & 1) as u8))
        .collect();
    while !bits.len().is_multiple_of(6) {
        bits.push(0);
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    bits.chunks(6)
        .map(|chunk| char::from(ALPHABET[usize::from(chunk.iter().fold(0u8, |acc, bit| (acc << 1) | bit))]))
        .collect()
}

/// The 213 bits of core fields before the vendor sections, with consent language `language` (letter values).
fn core_fields(language: [u64; 2]) -> Vec<(u64, u8)> {
    vec![
        (2, 6),                                // version
        (15_800_580_600, 36),                  // created
        (15_800_580_600, 36),                  // last updated
        (7, 12),                               // cmp id
        (1, 12),                               // cmp version
        (0, 6),                                // consent screen
        (language[0], 6),                      // consent language, first letter
        (language[1], 6),                      // consent language, second letter
        (100, 12),                             // vendor list version
        (4, 6),                                // policy version (TCF 2.2)
        (0, 1),                                // is service specific
        (0, 1),                                // use non-standard texts
        (0b1000_0000_0000, 12),                // special feature 1
        (0b1000_1100_0000_0000_0000_0000, 24), // purposes 1, 5, 6
        (0, 24),                               // purposes li transparency
        (0, 1),                                // purpose one treatment
        (3, 6),                                // publisher cc 'D'
        (4, 6),                                // publisher cc 'E'
    ]
}

#[test]
fn java_core_only_fixture_decodes_every_core_field() {
    let expected = TcString {
        version: 2,
        created_deciseconds: 15_800_580_600,      // 2020-01-26T17:01:00Z
        last_updated_deciseconds: 16_122_852_600, // 2021-02-02T17:01:00Z
        cmp_id: 675,
        cmp_version: 2,
        consent_screen: 1,
        consent_language: "EN".to_owned(),
        vendor_list_version: 15,
        policy_version: 2,
        is_service_specific: false,
        use_non_standard_texts: false,
        special_feature_opt_ins: numbered_bits(12, &[1]) as u16,
        purposes_consent: numbered_bits(24, &[2, 10]),
        purposes_li_transparency: numbered_bits(24, &[2, 9]),
        purpose_one_treatment: true,
        publisher_cc: "AA".to_owned(),
        vendor_consents: VendorConsents::default(),
    };
    assert_eq!(TcString::parse(JAVA_CORE_ONLY), Ok(expected));
}

#[test]
fn bitfield_vendors_fixture_decodes_core_fields_and_vendor_consents() {
    let tc = TcString::parse(BITFIELD_VENDORS).unwrap();
    assert_eq!(tc.version, 2);
    assert_eq!(tc.cmp_id, 2);
    assert_eq!(tc.cmp_version, 1);
    assert_eq!(tc.consent_screen, 1);
    assert_eq!(tc.consent_language, "EN");
    assert_eq!(tc.vendor_list_version, 7);
    assert_eq!(tc.policy_version, 2);
    assert_eq!(tc.publisher_cc, "AQ");
    // The es fixture pins December 2019 and the weekdays; the exact times are from the cross-check:
    // 2019-12-04T18:53:00Z and 2019-12-10T18:53:00Z.
    assert_eq!(tc.created_deciseconds, 15_754_855_800);
    assert_eq!(tc.last_updated_deciseconds, 15_760_039_800);
    assert_eq!(tc.special_feature_opt_ins, numbered_bits(12, &[1]) as u16);
    assert_eq!(tc.purposes_consent, numbered_bits(24, &[3, 4, 5, 6, 7, 8, 9]));
    assert_eq!(consented_vendors(&tc, 1000), [23, 37, 47, 48, 53, 65, 98]);
}

#[test]
fn purpose_and_special_feature_accessors_number_from_one() {
    let tc = TcString::parse(BITFIELD_VENDORS).unwrap();
    let purposes: Vec<u8> = (0..=30).filter(|&purpose| tc.purpose_consent(purpose)).collect();
    assert_eq!(purposes, [3, 4, 5, 6, 7, 8, 9]);
    let features: Vec<u8> = (0..=20).filter(|&feature| tc.special_feature_opt_in(feature)).collect();
    assert_eq!(features, [1]);

    let java = TcString::parse(JAVA_PURPOSES_1_AND_2).unwrap();
    let purposes: Vec<u8> = (0..=30).filter(|&purpose| java.purpose_consent(purpose)).collect();
    assert_eq!(purposes, [1, 2]);
    assert!(!java.special_feature_opt_in(1));
}

#[test]
fn numbers_outside_the_fields_are_never_granted() {
    let everything = TcString {
        special_feature_opt_ins: u16::MAX,
        purposes_consent: u32::MAX,
        ..TcString::parse(JAVA_CORE_ONLY).unwrap()
    };
    assert!(everything.purpose_consent(1) && everything.purpose_consent(24));
    assert!(!everything.purpose_consent(0) && !everything.purpose_consent(25) && !everything.purpose_consent(255));
    assert!(everything.special_feature_opt_in(1) && everything.special_feature_opt_in(12));
    assert!(!everything.special_feature_opt_in(0) && !everything.special_feature_opt_in(13));
}

#[test]
fn range_encoded_vendor_consents_decode() {
    let one_range = TcString::parse(JAVA_ONE_RANGE).unwrap();
    assert_eq!(consented_vendors(&one_range, 2000), [703]);
    let two_ranges = TcString::parse(JAVA_TWO_RANGES).unwrap();
    assert_eq!(consented_vendors(&two_ranges, 2000), [702, 703]);
    // Cross-checked values for fields the Java fixture does not pin.
    assert_eq!((two_ranges.cmp_id, two_ranges.vendor_list_version, two_ranges.policy_version), (746, 15, 2));
}

#[test]
fn range_encoded_legitimate_interests_are_walked() {
    let tc = TcString::parse(JAVA_RANGE_ENCODED_LI).unwrap();
    // Cross-checked: cmp 182, service-specific, vendor 127 consented by bitfield.
    assert_eq!((tc.cmp_id, tc.is_service_specific, tc.purposes_consent), (182, true, 0));
    assert_eq!(consented_vendors(&tc, 1000), [127]);
}

#[test]
fn publisher_restrictions_are_walked() {
    let tc = TcString::parse(ES_ISSUE_201).unwrap();
    assert_eq!(tc.version, 2);
}

/// The es decoder rejects this string, but for its disclosed-vendors segment, whose 733-bit bitfield runs past
/// the end; its core segment is well formed (its publisher restrictions end 7 bits before the core does). The
/// gate reads the core only, so the string decodes, and the core cut anywhere before its last bit does not.
#[test]
fn errors_in_segments_after_the_core_do_not_matter() {
    let (core, _disclosed_vendors) = ES_ISSUE_142.split_once('.').unwrap();
    let tc = TcString::parse(ES_ISSUE_142).unwrap();
    assert_eq!(TcString::parse(core), Ok(tc.clone()));
    assert_eq!((tc.cmp_id, tc.consent_language.as_str(), tc.vendor_list_version), (14, "EN", 23));
    assert_eq!(TcString::parse(&core[..core.len() - 2]), Err(TcfError::Truncated));
}

#[test]
fn segments_after_the_core_are_ignored() {
    let core = TcString::parse(BITFIELD_VENDORS).unwrap();
    // iabtcf-java TCStringV2Test.java (testCanParseAllParts): core, disclosed vendors, allowed vendors,
    // publisher TC.
    let all_parts = format!("{BITFIELD_VENDORS}.IBAgAAAgAIAwgAgAAAAEAAAACA.QAagAQAgAIAwgA.cAAAAAAAITg=");
    assert_eq!(TcString::parse(&all_parts), Ok(core.clone()));
    // A later segment is not even checked to be base64url.
    assert_eq!(TcString::parse(&format!("{BITFIELD_VENDORS}.not base64!")), Ok(core));
    // iabtcf-java TCStringDecoderTest.java (testCanCreateModelFromTwoPartsString).
    let two_parts = format!("{JAVA_CORE_ONLY}.IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw");
    assert_eq!(TcString::parse(&two_parts), TcString::parse(JAVA_CORE_ONLY));
}

#[test]
fn trailing_padding_is_tolerated() {
    assert_eq!(TcString::parse(&format!("{JAVA_CORE_ONLY}==")), TcString::parse(JAVA_CORE_ONLY));
}

#[test]
fn other_versions_are_unsupported() {
    assert_eq!(TcString::parse(ES_V1), Err(TcfError::UnsupportedVersion(1)));
    assert_eq!(TcString::parse(JAVA_V1), Err(TcfError::UnsupportedVersion(1)));
    // iabtcf-java TCStringDecoderTest.java: the bytes [13] (version 3) and "Bg" (version 1).
    assert_eq!(TcString::parse("DQ=="), Err(TcfError::UnsupportedVersion(3)));
    assert_eq!(TcString::parse("Bg"), Err(TcfError::UnsupportedVersion(1)));
}

#[test]
fn empty_and_non_base64_strings_are_refused() {
    assert_eq!(TcString::parse(""), Err(TcfError::Empty));
    assert_eq!(TcString::parse(".IBAgAAAgAIAwgAgAAAAEAAAACA"), Err(TcfError::Empty));
    assert_eq!(TcString::parse("=="), Err(TcfError::Empty));
    // Standard base64's '+' and '/', whitespace, and non-ASCII are not base64url.
    for bad in ["COtybn4PA+zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA", "COtybn4PA/zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"] {
        assert_eq!(TcString::parse(bad), Err(TcfError::NotBase64), "{bad}");
    }
    assert_eq!(TcString::parse(&format!(" {JAVA_CORE_ONLY}")), Err(TcfError::NotBase64));
    assert_eq!(TcString::parse("COtybé"), Err(TcfError::NotBase64));
    // iabtcf-java TCStringDecoderTest.java (testStrict): version 2 and nothing else.
    assert_eq!(TcString::parse("CA=="), Err(TcfError::Truncated));
}

/// Regression: `lib_tcstring` 0.5.0 panics on the 36-character prefix of this string (the core fields complete,
/// the vendor section cut off).
#[test]
fn every_prefix_of_a_fixture_is_refused_or_decodes_the_same() {
    assert_eq!(TcString::parse(&JAVA_CORE_ONLY[..36]), Err(TcfError::Truncated));
    for fixture in EVERY_FIXTURE {
        let full = TcString::parse(fixture).unwrap();
        for length in 1..fixture.len() {
            let prefix = &fixture[..length];
            match TcString::parse(prefix) {
                Ok(decoded) => assert_eq!(decoded, full, "{prefix}"),
                Err(error) => assert_eq!(error, TcfError::Truncated, "{prefix}"),
            }
        }
    }
}

#[test]
fn constructed_string_with_ranges_and_restrictions_decodes() {
    let mut fields = core_fields([4, 13]); // "EN"
    fields.extend([
        // vendor consents: max vendor id 300, range encoding, 2 entries: 5, 10..=12
        (300, 16),
        (1, 1),
        (2, 12),
        (0, 1),
        (5, 16),
        (1, 1),
        (10, 16),
        (12, 16),
        // vendor legitimate interests: bitfield of 3 vendors
        (3, 16),
        (0, 1),
        (0b101, 3),
        // publisher restrictions: one, purpose 2, type 1, vendors 7..=9
        (1, 12),
        (2, 6),
        (1, 2),
        (1, 12),
        (1, 1),
        (7, 16),
        (9, 16),
    ]);
    let tc = TcString::parse(&encode_fields(&fields)).unwrap();
    assert_eq!(tc.consent_language, "EN");
    assert_eq!(tc.publisher_cc, "DE");
    assert_eq!(tc.policy_version, 4);
    assert!(tc.purpose_consent(1) && tc.purpose_consent(5) && tc.purpose_consent(6) && !tc.purpose_consent(2));
    assert!(tc.special_feature_opt_in(1) && !tc.special_feature_opt_in(2));
    assert_eq!(consented_vendors(&tc, 400), [5, 10, 11, 12]);

    // The same string without its publisher restrictions count is cut short.
    let without_restrictions = encode_fields(&fields[..fields.len() - 7]);
    assert_eq!(TcString::parse(&without_restrictions), Err(TcfError::Truncated));
}

#[test]
fn letters_outside_a_to_z_are_refused() {
    let mut fields = core_fields([26, 13]);
    fields.extend([(0, 16), (0, 1), (0, 16), (0, 1), (0, 12)]);
    assert_eq!(TcString::parse(&encode_fields(&fields)), Err(TcfError::InvalidLetter));
}

#[test]
fn vendor_range_ending_before_it_starts_is_refused() {
    let mut fields = core_fields([4, 13]);
    fields.extend([(20, 16), (1, 1), (1, 12), (1, 1), (12, 16), (10, 16), (0, 16), (0, 1), (0, 12)]);
    assert_eq!(TcString::parse(&encode_fields(&fields)), Err(TcfError::InvalidVendorRange));
}

#[test]
fn vendor_id_zero_and_ids_past_the_bitfield_are_not_consented() {
    let tc = TcString::parse(BITFIELD_VENDORS).unwrap();
    assert!(!tc.vendor_consent(0));
    assert!(!tc.vendor_consent(u16::MAX));
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = TcString::parse(&text);
    }

    #[test]
    fn arbitrary_base64url_never_panics_and_only_decodes_version_2(
        text in "[A-Za-z0-9_-]{0,400}(\\.[A-Za-z0-9_=-]{0,20}){0,3}",
    ) {
        if let Ok(tc) = TcString::parse(&text) {
            prop_assert_eq!(tc.version, 2);
        }
    }

    #[test]
    fn corrupted_fixtures_never_panic(
        fixture in proptest::sample::select(EVERY_FIXTURE.to_vec()),
        position in any::<proptest::sample::Index>(),
        replacement in "[A-Za-z0-9_-]",
    ) {
        let index = position.index(fixture.len());
        let corrupted = format!("{}{}{}", &fixture[..index], replacement, &fixture[index + 1..]);
        if let Ok(tc) = TcString::parse(&corrupted) {
            prop_assert_eq!(tc.version, 2);
            prop_assert_eq!(tc.consent_language.len(), 2);
        }
    }
}

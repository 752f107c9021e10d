//! IAB TCF v2 TC strings (CONTRACT §4): an event may carry the `consent.tcf` string its CMP produced, and the gate
//! must find purposes 1, 5 and 6 (and special feature 1 for precise location) granted in it. Only the core segment
//! is read; segments after the first '.' (disclosed vendors, allowed vendors, publisher TC) are ignored. Every part
//! of the core segment must be well formed, because a string that cannot be decoded counts as a refusal: failing
//! closed is safer than reading consent out of a corrupted string.
//!
//! Hand-written rather than taken from crates.io: the only candidate, `lib_tcstring` 0.5.0 (marked "passively
//! maintained"), panics with an index out of bounds on a core string truncated inside its vendor section (for
//! example the first 36 characters of a valid string). The string comes from outside the process, so a panic there
//! would take a pipeline task down with it. The format is small: base64url text read as a stream of bits, most
//! significant bit first, six bits per character, so it needs neither byte alignment nor padding and is read straight
//! from the text without allocating.

use std::ops::RangeInclusive;

/// The decoded core segment of a TC string.
///
/// Field names follow the TCF v2 "core string" field names; times are deciseconds since the Unix epoch, as encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcString {
    /// Format version; always 2, since `parse` rejects any other.
    pub version: u8,
    /// When the string was first created, in deciseconds since the Unix epoch.
    pub created_deciseconds: u64,
    /// When the string was last updated, in deciseconds since the Unix epoch.
    pub last_updated_deciseconds: u64,
    /// IAB-registered id of the consent management platform that wrote the string.
    pub cmp_id: u16,
    /// Version of that CMP.
    pub cmp_version: u16,
    /// Which CMP screen the user gave their choice on (CMP-specific).
    pub consent_screen: u8,
    /// Two upper-case letters (ISO 639-1) for the language the user was asked in.
    pub consent_language: String,
    /// Version of the Global Vendor List the choice was made against.
    pub vendor_list_version: u16,
    /// TCF policy version the string follows (2 for TCF 2.0, 4 and up for TCF 2.2).
    pub policy_version: u8,
    /// The choice applies to this service only, not globally.
    pub is_service_specific: bool,
    /// The CMP used non-standard texts (formerly "non-standard stacks").
    pub use_non_standard_texts: bool,
    /// 12 bits, one per special feature; feature 1 (precise geolocation) is the most significant of the 12.
    pub special_feature_opt_ins: u16,
    /// 24 bits, one per purpose; purpose 1 is the most significant of the 24.
    pub purposes_consent: u32,
    /// 24 bits, one per purpose, for "legitimate interest" transparency; purpose 1 is the most significant.
    pub purposes_li_transparency: u32,
    /// Purpose 1 was not disclosed to the user (a publisher in a country that treats it specially).
    pub purpose_one_treatment: bool,
    /// Two upper-case letters (ISO 3166-1 alpha-2) for the publisher's country.
    pub publisher_cc: String,
    /// The vendors the user consented to; read through [`TcString::vendor_consent`].
    pub vendor_consents: VendorConsents,
}

/// The vendor consent section of the core segment, kept in the encoding the string used: a bitfield is at most
/// 8 KiB (vendor ids are 16 bits), and ranges are kept as ranges so a string cannot make us expand them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VendorConsents {
    /// Bit-field encoding: the bit for vendor id `n` is bit `(n - 1) % 8` (most significant first) of byte
    /// `(n - 1) / 8`. Empty when the string used ranges.
    bitfield: Vec<u8>,
    /// Range encoding: inclusive ranges of consented vendor ids. Empty when the string used a bitfield.
    ranges: Vec<RangeInclusive<u16>>,
}

impl VendorConsents {
    /// Whether the user consented to vendor `vendor_id` (ids start at 1; 0 is never consented).
    pub fn contains(&self, vendor_id: u16) -> bool {
        if vendor_id == 0 {
            return false;
        }
        let index = usize::from(vendor_id - 1);
        let in_bitfield = self.bitfield.get(index / 8).is_some_and(|byte| (byte >> (7 - index % 8)) & 1 == 1);
        in_bitfield || self.ranges.iter().any(|range| range.contains(&vendor_id))
    }
}

/// Why a TC string could not be decoded. All of them are faults in the event producer's input (its CMP or whatever
/// copied the string); the gate treats each one as a refusal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TcfError {
    /// The string, or its core segment, is empty.
    #[error("tc string is empty")]
    Empty,
    /// The core segment has a character outside the base64url alphabet (`A-Z a-z 0-9 - _`).
    #[error("tc string core segment is not base64url")]
    NotBase64,
    /// The core segment ends before one of its fields does.
    #[error("tc string core segment is truncated")]
    Truncated,
    /// The version field is not 2 (version 1 strings are from the retired TCF v1.1).
    #[error("tc string version {0} is not supported, only version 2")]
    UnsupportedVersion(u8),
    /// A two-letter code (consent language or publisher country) holds a value outside A-Z.
    #[error("tc string has a two-letter code outside A-Z")]
    InvalidLetter,
    /// A vendor range ends before it starts.
    #[error("tc string has a vendor range that ends before it starts")]
    InvalidVendorRange,
}

/// The only TC string format version this module decodes.
const SUPPORTED_VERSION: u8 = 2;
/// Purposes are numbered 1..=24 in the 24-bit purpose fields.
const PURPOSE_COUNT: u8 = 24;
/// Special features are numbered 1..=12 in the 12-bit special feature field.
const SPECIAL_FEATURE_COUNT: u8 = 12;

impl TcString {
    /// Decodes the core segment of `text`, ignoring any segments after the first '.'. Trailing '=' padding, which
    /// the format does not use but some base64 encoders add, is tolerated. Never panics.
    pub fn parse(text: &str) -> Result<Self, TcfError> {
        let core = text.split('.').next().unwrap_or_default().trim_end_matches('=');
        if core.is_empty() {
            return Err(TcfError::Empty);
        }
        let mut reader = BitReader::new(core)?;

        let version = reader.read_u8(6)?;
        if version != SUPPORTED_VERSION {
            return Err(TcfError::UnsupportedVersion(version));
        }
        let created_deciseconds = reader.read(36)?;
        let last_updated_deciseconds = reader.read(36)?;
        let cmp_id = reader.read_u16(12)?;
        let cmp_version = reader.read_u16(12)?;
        let consent_screen = reader.read_u8(6)?;
        let consent_language = reader.read_letters()?;
        let vendor_list_version = reader.read_u16(12)?;
        let policy_version = reader.read_u8(6)?;
        let is_service_specific = reader.read_flag()?;
        let use_non_standard_texts = reader.read_flag()?;
        let special_feature_opt_ins = reader.read_u16(12)?;
        let purposes_consent = reader.read_u32(24)?;
        let purposes_li_transparency = reader.read_u32(24)?;
        let purpose_one_treatment = reader.read_flag()?;
        let publisher_cc = reader.read_letters()?;

        let mut vendor_consents = VendorConsents::default();
        reader.read_vendor_section(Some(&mut vendor_consents))?;
        // Vendor legitimate interests and publisher restrictions are not used by the gate; they are still walked so
        // a string whose core segment is cut short or corrupted there is refused rather than half-trusted.
        reader.read_vendor_section(None)?;
        reader.skip_publisher_restrictions()?;

        Ok(Self {
            version,
            created_deciseconds,
            last_updated_deciseconds,
            cmp_id,
            cmp_version,
            consent_screen,
            consent_language,
            vendor_list_version,
            policy_version,
            is_service_specific,
            use_non_standard_texts,
            special_feature_opt_ins,
            purposes_consent,
            purposes_li_transparency,
            purpose_one_treatment,
            publisher_cc,
            vendor_consents,
        })
    }

    /// Whether the user consented to purpose `purpose` (1..=24); false for any number outside that range.
    pub fn purpose_consent(&self, purpose: u8) -> bool {
        (1..=PURPOSE_COUNT).contains(&purpose) && (self.purposes_consent >> (PURPOSE_COUNT - purpose)) & 1 == 1
    }

    /// Whether the user opted in to special feature `feature` (1..=12; 1 is precise geolocation); false outside.
    pub fn special_feature_opt_in(&self, feature: u8) -> bool {
        (1..=SPECIAL_FEATURE_COUNT).contains(&feature)
            && (self.special_feature_opt_ins >> (SPECIAL_FEATURE_COUNT - feature)) & 1 == 1
    }

    /// Whether the user consented to vendor `vendor_id` (a Global Vendor List id; 0 is never consented).
    pub fn vendor_consent(&self, vendor_id: u16) -> bool {
        self.vendor_consents.contains(vendor_id)
    }
}

/// Marks a byte that is not in the base64url alphabet in [`SEXTETS`].
const NOT_BASE64: u8 = u8::MAX;

/// The six-bit value of each base64url character, indexed by byte.
const SEXTETS: [u8; 256] = {
    let mut table = [NOT_BASE64; 256];
    let mut value = 0;
    while value < 26 {
        table[(b'A' + value) as usize] = value;
        table[(b'a' + value) as usize] = 26 + value;
        value += 1;
    }
    let mut digit = 0;
    while digit < 10 {
        table[(b'0' + digit) as usize] = 52 + digit;
        digit += 1;
    }
    table[b'-' as usize] = 62;
    table[b'_' as usize] = 63;
    table
};

/// Reads fields of up to 64 bits, most significant bit first, straight from base64url text.
struct BitReader<'a> {
    /// The text, every byte already checked to be base64url.
    text: &'a [u8],
    /// The next bit to read, counted from the start of the text.
    position: usize,
}

impl<'a> BitReader<'a> {
    fn new(text: &'a str) -> Result<Self, TcfError> {
        if text.bytes().any(|byte| SEXTETS[usize::from(byte)] == NOT_BASE64) {
            return Err(TcfError::NotBase64);
        }
        Ok(Self { text: text.as_bytes(), position: 0 })
    }

    fn bits_left(&self) -> usize {
        self.text.len().saturating_mul(6).saturating_sub(self.position)
    }

    /// Moves past `width` bits, checking that they are there.
    fn skip(&mut self, width: usize) -> Result<(), TcfError> {
        if width > self.bits_left() {
            return Err(TcfError::Truncated);
        }
        self.position += width;
        Ok(())
    }

    /// Reads a `width`-bit unsigned field (`width` at most 64).
    fn read(&mut self, width: u8) -> Result<u64, TcfError> {
        debug_assert!(width <= 64, "fields are at most 64 bits");
        let mut value = 0u64;
        for _ in 0..width {
            value = (value << 1) | u64::from(self.read_bit()?);
        }
        Ok(value)
    }

    fn read_bit(&mut self) -> Result<u8, TcfError> {
        let byte = self.text.get(self.position / 6).ok_or(TcfError::Truncated)?;
        let bit = (SEXTETS[usize::from(*byte)] >> (5 - self.position % 6)) & 1;
        self.position += 1;
        Ok(bit)
    }

    fn read_flag(&mut self) -> Result<bool, TcfError> {
        Ok(self.read_bit()? == 1)
    }

    // The narrowing reads below cannot lose bits: each caller passes a width that fits the type, and the value read
    // has at most `width` significant bits.
    fn read_u8(&mut self, width: u8) -> Result<u8, TcfError> {
        debug_assert!(width <= 8);
        Ok(self.read(width)? as u8)
    }

    fn read_u16(&mut self, width: u8) -> Result<u16, TcfError> {
        debug_assert!(width <= 16);
        Ok(self.read(width)? as u16)
    }

    fn read_u32(&mut self, width: u8) -> Result<u32, TcfError> {
        debug_assert!(width <= 32);
        Ok(self.read(width)? as u32)
    }

    /// Reads a two-letter code: two 6-bit values, 0 = 'A' .. 25 = 'Z'.
    fn read_letters(&mut self) -> Result<String, TcfError> {
        let mut letters = String::with_capacity(2);
        for _ in 0..2 {
            let value = self.read_u8(6)?;
            if value > 25 {
                return Err(TcfError::InvalidLetter);
            }
            letters.push(char::from(b'A' + value));
        }
        Ok(letters)
    }

    /// Reads a vendor section (MaxVendorId, IsRangeEncoding, then a bitfield or a range list), into `consents` when
    /// given, otherwise only checking it.
    fn read_vendor_section(&mut self, consents: Option<&mut VendorConsents>) -> Result<(), TcfError> {
        let max_vendor_id = usize::from(self.read_u16(16)?);
        let is_range_encoding = self.read_flag()?;
        match (is_range_encoding, consents) {
            (false, None) => self.skip(max_vendor_id),
            (false, Some(consents)) => {
                // Checked first so a claimed length never sizes an allocation the text cannot fill.
                if max_vendor_id > self.bits_left() {
                    return Err(TcfError::Truncated);
                }
                let mut bitfield = vec![0u8; max_vendor_id.div_ceil(8)];
                for index in 0..max_vendor_id {
                    bitfield[index / 8] |= self.read_bit()? << (7 - index % 8);
                }
                consents.bitfield = bitfield;
                Ok(())
            }
            (true, consents) => self.read_ranges(consents.map(|consents| &mut consents.ranges)),
        }
    }

    /// Reads a range list (NumEntries, then each entry: IsARange, StartOrOnlyVendorId, EndVendorId if a range),
    /// appending the ranges to `ranges` when given.
    fn read_ranges(&mut self, mut ranges: Option<&mut Vec<RangeInclusive<u16>>>) -> Result<(), TcfError> {
        let entry_count = self.read_u16(12)?;
        for _ in 0..entry_count {
            let is_a_range = self.read_flag()?;
            let start = self.read_u16(16)?;
            let end = if is_a_range { self.read_u16(16)? } else { start };
            if end < start {
                return Err(TcfError::InvalidVendorRange);
            }
            if let Some(ranges) = ranges.as_deref_mut() {
                ranges.push(start..=end);
            }
        }
        Ok(())
    }

    /// Walks the publisher restrictions (NumPubRestrictions, then each: PurposeId, RestrictionType, a range list).
    fn skip_publisher_restrictions(&mut self) -> Result<(), TcfError> {
        let restriction_count = self.read_u16(12)?;
        for _ in 0..restriction_count {
            let _purpose_id_and_restriction_type = self.read(6 + 2)?;
            self.read_ranges(None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

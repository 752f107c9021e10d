//! A direct Avro binary decoder for the contract's own schemas.
//!
//! Why hand-written: apache-avro decodes through a generic `Value` tree,
//! rebuilds a schema name table on every call and resolves the tree against
//! the reader schema — about 4 µs per browse event here, more than the whole
//! per-event budget. When a record's writer schema *is* the contract schema
//! (same fingerprint, the common case) the layout is known, so these readers
//! decode straight into what tactful reads of an event (`BrowseRead` and its
//! kin): short strings inline, the fields it never keeps checked (UTF-8)
//! and read past, so a decoded event allocates nothing but its order lines. Any other writer schema (schema
//! evolution) still goes through apache-avro's resolution.
//!
//! The writer for `ProfileUpdate` is direct for the same reason (apache-avro's
//! schema-aware serializer costs ~0.8 µs per update); a property test checks
//! that both produce the same bytes. Its field writers are also what the
//! processor writes an update with, straight from a user's state.

use super::DecodeError;
use crate::model::{
    BrowseRead, ConsentChange, EventConsent, ItemRead, LocationRead, Membership, PersonalizationLevel, ProfileUpdate,
    PurchaseRead,
};
use compact_str::CompactString;

/// Reads Avro binary primitives from a byte slice, never past its end.
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

/// `bytes` as text, if they are UTF-8. ASCII, what the contract's
/// producers write almost always, is checked a word at a time first: std's
/// validator walks a short or unaligned string byte by byte, and an event's
/// strings are short (`decode/browse_avro`: about a fifth faster).
fn text(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes)
    }
}

fn malformed(detail: &str) -> DecodeError {
    DecodeError::Malformed { encoding: "avro", detail: detail.to_owned() }
}

const ENDS_EARLY: DecodeError = DecodeError::Truncated("the avro datum ends early");

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        if count > self.bytes.len() {
            return Err(ENDS_EARLY);
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    /// A zig-zag varint `long`.
    pub fn long(&mut self) -> Result<i64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let [byte, rest @ ..] = self.bytes else { return Err(ENDS_EARLY) };
            self.bytes = rest;
            if shift == 63 && *byte > 1 {
                return Err(malformed("varint longer than 64 bits"));
            }
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(malformed("varint longer than 10 bytes"))
    }

    /// An `int`: a `long` that fits 32 bits.
    pub fn int(&mut self) -> Result<i32, DecodeError> {
        i32::try_from(self.long()?).map_err(|_| malformed("int out of range"))
    }

    fn length(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(self.long()?).map_err(|_| malformed("negative length"))
    }

    /// A string, borrowed.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let length = self.length()?;
        let bytes = self.take(length)?;
        text(bytes).map_err(|_| malformed("string is not UTF-8"))
    }

    pub fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }

    /// A string held inline when it is short (ids, names).
    pub fn short_string(&mut self) -> Result<CompactString, DecodeError> {
        self.str().map(CompactString::new)
    }

    /// A string read past and checked (UTF-8), not kept.
    pub fn skip_string(&mut self) -> Result<(), DecodeError> {
        self.str().map(drop)
    }

    pub fn boolean(&mut self) -> Result<bool, DecodeError> {
        match self.take(1)? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(malformed("boolean is neither 0 nor 1")),
        }
    }

    pub fn double(&mut self) -> Result<f64, DecodeError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(array))
    }

    pub fn float(&mut self) -> Result<f32, DecodeError> {
        let bytes = self.take(4)?;
        let mut array = [0u8; 4];
        array.copy_from_slice(bytes);
        Ok(f32::from_le_bytes(array))
    }

    /// A `["null", T]` union.
    pub fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(malformed("union branch out of range")),
        }
    }

    /// An array, in blocks; a negative block count is followed by the block's size in bytes.
    pub fn array<T>(
        &mut self,
        mut read: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let mut items = Vec::new();
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(items);
            }
            if count < 0 {
                self.long()?;
            }
            let count = usize::try_from(count.unsigned_abs()).map_err(|_| malformed("array block too large"))?;
            // Every item takes at least one byte: a larger count is a lie, not a reason to allocate.
            if count > self.remaining() {
                return Err(ENDS_EARLY);
            }
            items.reserve(count);
            for _ in 0..count {
                items.push(read(self)?);
            }
        }
    }
}

/// A contract record that can be read from its own schema's binary layout.
pub trait ReadAvro: Sized {
    fn read_avro(cursor: &mut Cursor<'_>) -> Result<Self, DecodeError>;
}

fn event_consent(cursor: &mut Cursor<'_>) -> Result<Option<EventConsent>, DecodeError> {
    cursor.optional(|cursor| Ok(EventConsent { tcf: cursor.optional(Cursor::string)?, gpc: cursor.boolean()? }))
}

impl ReadAvro for BrowseRead {
    fn read_avro(cursor: &mut Cursor<'_>) -> Result<Self, DecodeError> {
        cursor.skip_string()?; // event_id
        let user_id = cursor.short_string()?;
        let ts = cursor.long()?;
        cursor.optional(Cursor::skip_string)?; // session_id
        let page_type = cursor.short_string()?;
        let product_id = cursor.optional(Cursor::short_string)?;
        let category = cursor.optional(Cursor::short_string)?;
        cursor.optional(Cursor::skip_string)?; // url
        let consent = event_consent(cursor)?;
        Ok(Self::from_fields(user_id, ts, page_type, product_id, category, consent))
    }
}

impl ReadAvro for PurchaseRead {
    fn read_avro(cursor: &mut Cursor<'_>) -> Result<Self, DecodeError> {
        cursor.skip_string()?; // event_id
        let user_id = cursor.short_string()?;
        let ts = cursor.long()?;
        cursor.skip_string()?; // order_id
        let currency = cursor.short_string()?;
        let total_cents = cursor.long()?;
        let items = cursor.array(|cursor| {
            Ok(ItemRead {
                product_id: cursor.short_string()?,
                category: cursor.short_string()?,
                quantity: cursor.int()?,
                price_cents: cursor.long()?,
            })
        })?;
        let consent = event_consent(cursor)?;
        Ok(Self::from_fields(user_id, ts, currency, total_cents, items, consent))
    }
}

impl ReadAvro for LocationRead {
    fn read_avro(cursor: &mut Cursor<'_>) -> Result<Self, DecodeError> {
        cursor.skip_string()?; // event_id
        let user_id = cursor.short_string()?;
        let ts = cursor.long()?;
        let (lat, lon) = (cursor.double()?, cursor.double()?);
        cursor.optional(Cursor::float)?; // accuracy_m
        let consent = event_consent(cursor)?;
        Ok(Self::from_fields(user_id, ts, lat, lon, consent))
    }
}

impl ReadAvro for ConsentChange {
    fn read_avro(cursor: &mut Cursor<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            user_id: cursor.string()?,
            ts: cursor.long()?,
            granted: cursor.array(Cursor::string)?,
            level: match cursor.int()? {
                0 => PersonalizationLevel::None,
                1 => PersonalizationLevel::Light,
                2 => PersonalizationLevel::Full,
                _ => return Err(malformed("PersonalizationLevel symbol out of range")),
            },
            source: cursor.string()?,
        })
    }
}

/// Appends a zig-zag varint `long`.
fn write_long(value: i64, out: &mut Vec<u8>) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn write_string(value: &str, out: &mut Vec<u8>) {
    write_long(value.len() as i64, out);
    out.extend_from_slice(value.as_bytes());
}

/// Appends a string as `text` writes it, piece by piece, its length before
/// it: the text goes straight into `out`, and only one longer than 63 bytes
/// (whose length takes more than the one byte kept for it) is moved.
fn write_text(out: &mut Vec<u8>, text: impl FnOnce(&mut Appender<'_>)) {
    let start = out.len();
    out.push(0);
    text(&mut Appender(out));
    let length = out.len() - start - 1;
    if length < 64 {
        out[start] = (length as u8) << 1;
    } else {
        let mut prefix = Vec::with_capacity(10);
        write_long(length as i64, &mut prefix);
        out.splice(start..start + 1, prefix);
    }
}

/// Text written onto the end of a byte buffer.
pub struct Appender<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Appender<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

/// An array as one block (count, items) and the closing empty block.
pub fn write_array<T>(items: &[T], out: &mut Vec<u8>, mut write: impl FnMut(&T, &mut Vec<u8>)) {
    if !items.is_empty() {
        write_long(items.len() as i64, out);
        for item in items {
            write(item, out);
        }
    }
    out.push(0);
}

/// An array of strings.
pub fn write_strings<S: AsRef<str>>(items: &[S], out: &mut Vec<u8>) {
    write_array(items, out, |item, out| write_string(item.as_ref(), out));
}

/// [`write_strings`] into a buffer of its own: a list written once and
/// copied where a datum holds it (see [`write_update_head`]).
pub fn strings_written<S: AsRef<str>>(items: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    write_strings(items, &mut out);
    out
}

/// Appends the fields of a `ProfileUpdate` datum before its memberships,
/// which follow as an array (each written with [`write_membership`]), then
/// the ids entered and exited (each with [`write_strings`]). `channels`
/// are the channel names already written as an array ([`strings_written`]).
pub fn write_update_head(
    user_id: &str,
    version: i64,
    ts: i64,
    level: PersonalizationLevel,
    channels: &[u8],
    out: &mut Vec<u8>,
) {
    write_string(user_id, out);
    write_long(version, out);
    write_long(ts, out);
    write_long(level as i64, out);
    out.extend_from_slice(channels);
}

/// Appends one `Membership` record, its reason as `reason` writes it, its
/// `channels` already written as an array ([`strings_written`]).
pub fn write_membership(
    id: &str,
    since: i64,
    reason: impl FnOnce(&mut Appender<'_>),
    channels: &[u8],
    arm: Option<&str>,
    out: &mut Vec<u8>,
) {
    write_string(id, out);
    write_long(since, out);
    write_text(out, reason);
    out.extend_from_slice(channels);
    match arm {
        None => write_long(0, out),
        Some(arm) => {
            write_long(1, out);
            write_string(arm, out);
        }
    }
}

/// Appends the binary datum of `update` under the contract's `ProfileUpdate` schema.
pub fn write_profile_update(update: &ProfileUpdate, out: &mut Vec<u8>) {
    let channels = strings_written(&update.channels);
    write_update_head(&update.user_id, update.version, update.ts, update.level, &channels, out);
    write_array(&update.segments, out, |membership: &Membership, out| {
        let reason = |text: &mut Appender<'_>| text.0.extend_from_slice(membership.reason.as_bytes());
        let channels = strings_written(&membership.channels);
        write_membership(&membership.id, membership.since, reason, &channels, membership.arm.as_deref(), out);
    });
    write_strings(&update.entered, out);
    write_strings(&update.exited, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::model::{BrowseEvent, InputKind, LocationEvent, Name, PurchaseEvent, PurchaseItem};
    use proptest::prelude::*;

    /// Decodes `bytes` (single-object) through apache-avro's generic path.
    fn generic<T: serde::de::DeserializeOwned>(schema: &str, bytes: &[u8]) -> T {
        let schema = apache_avro::Schema::parse_str(schema).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut &bytes[10..], None).unwrap();
        apache_avro::from_value(&value).unwrap()
    }

    fn optional_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".{0,12}")
    }

    fn signals() -> impl Strategy<Value = Option<EventConsent>> {
        proptest::option::of((optional_text(), any::<bool>()).prop_map(|(tcf, gpc)| EventConsent { tcf, gpc }))
    }

    proptest! {
        #[test]
        fn the_direct_reader_agrees_with_apache_avro_on_browse_events(
            ids in (".{0,12}", ".{0,12}"), ts in any::<i64>(), session_id in optional_text(), page_type in ".{0,8}",
            product_id in optional_text(), category in optional_text(), url in optional_text(), consent in signals(),
        ) {
            let event = BrowseEvent { event_id: ids.0, user_id: ids.1, ts, session_id, page_type, product_id, category, url, consent };
            let mut bytes = Vec::new();
            Codec::new(&[]).unwrap().encode_input(InputKind::Browse, &event, &mut bytes).unwrap();
            let direct = BrowseRead::read_avro(&mut Cursor::new(&bytes[10..])).unwrap();
            prop_assert_eq!(&direct, &BrowseRead::from(event));
            prop_assert_eq!(direct, generic::<BrowseRead>(crate::codec::BROWSE_SCHEMA, &bytes));
        }

        #[test]
        fn the_direct_reader_agrees_with_apache_avro_on_purchases_and_locations(
            total_cents in any::<i64>(), items in proptest::collection::vec((".{0,6}", ".{0,6}", any::<i32>(), any::<i64>()), 0..5),
            lat in any::<f64>(), lon in any::<f64>(), accuracy_m in proptest::option::of(any::<f32>()), consent in signals(),
        ) {
            let purchase = PurchaseEvent {
                event_id: "e".to_owned(), user_id: "u".to_owned(), ts: 5, order_id: "o".to_owned(), currency: "EUR".to_owned(), total_cents,
                items: items.into_iter().map(|(product_id, category, quantity, price_cents)| PurchaseItem { product_id, category, quantity, price_cents }).collect(),
                consent: consent.clone(),
            };
            let codec = Codec::new(&[]).unwrap();
            let mut bytes = Vec::new();
            codec.encode_input(InputKind::Purchase, &purchase, &mut bytes).unwrap();
            let direct = PurchaseRead::read_avro(&mut Cursor::new(&bytes[10..])).unwrap();
            prop_assert_eq!(&direct, &PurchaseRead::from(purchase));
            prop_assert_eq!(direct, generic::<PurchaseRead>(crate::codec::PURCHASE_SCHEMA, &bytes));

            let location = LocationEvent { event_id: "e".to_owned(), user_id: "u".to_owned(), ts: -5, lat, lon, accuracy_m, consent };
            bytes.clear();
            codec.encode_input(InputKind::Location, &location, &mut bytes).unwrap();
            let direct = LocationRead::read_avro(&mut Cursor::new(&bytes[10..])).unwrap();
            let generic = generic::<LocationRead>(crate::codec::LOCATION_SCHEMA, &bytes);
            // Compare bit patterns: NaN is not equal to itself.
            prop_assert_eq!((direct.lat.to_bits(), direct.lon.to_bits()), (lat.to_bits(), lon.to_bits()));
            prop_assert_eq!((generic.lat.to_bits(), generic.lon.to_bits()), (lat.to_bits(), lon.to_bits()));
            prop_assert_eq!((&direct.user_id, direct.ts, &direct.consent), (&generic.user_id, generic.ts, &generic.consent));
        }
    }

    fn any_membership() -> impl Strategy<Value = Membership> {
        // Reasons past 63 bytes take a two-byte length.
        (".{0,10}", any::<i64>(), ".{0,100}", proptest::collection::vec(".{0,5}", 0..4), optional_text()).prop_map(
            |(id, since, reason, channels, arm): (String, _, _, Vec<String>, Option<String>)| Membership {
                id: id.into(),
                since,
                reason,
                channels: channels.into_iter().map(Name::from).collect(),
                arm: arm.map(Name::from),
            },
        )
    }

    proptest! {
        #[test]
        fn the_direct_writer_writes_what_apache_avro_writes(
            user_id in ".{0,12}", version in any::<i64>(), ts in any::<i64>(), level in 0..3u8,
            channels in proptest::collection::vec(".{0,5}", 0..4),
            segments in proptest::collection::vec(any_membership(), 0..4),
            entered in proptest::collection::vec(".{0,8}", 0..3), exited in proptest::collection::vec(".{0,8}", 0..3),
        ) {
            let level = [PersonalizationLevel::None, PersonalizationLevel::Light, PersonalizationLevel::Full][usize::from(level)];
            let update = ProfileUpdate {
                user_id: user_id.into(),
                version,
                ts,
                level,
                channels: channels.into_iter().map(Name::from).collect(),
                segments,
                entered: entered.into_iter().map(Into::into).collect(),
                exited: exited.into_iter().map(Into::into).collect(),
            };
            let schema = apache_avro::Schema::parse_str(crate::codec::PROFILE_SCHEMA).unwrap();
            let mut expected = Vec::new();
            apache_avro::write_avro_datum_ref(&schema, &update, &mut expected).unwrap();
            let mut direct = Vec::new();
            write_profile_update(&update, &mut direct);
            prop_assert_eq!(direct, expected);
        }
    }

    #[test]
    fn longs_decode_zig_zag() {
        let cases: [(&[u8], i64); 6] = [
            (&[0], 0),
            (&[1], -1),
            (&[2], 1),
            (&[0x7F], -64),
            (&[0x80, 0x01], 64),
            (&[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], i64::MAX),
        ];
        for (bytes, expected) in cases {
            assert_eq!(Cursor::new(bytes).long(), Ok(expected), "{bytes:?}");
        }
        assert_eq!(Cursor::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).long(), Ok(i64::MIN));
    }

    #[test]
    fn overlong_and_unfinished_varints_are_errors() {
        assert_eq!(Cursor::new(&[0x80]).long(), Err(ENDS_EARLY));
        assert!(matches!(Cursor::new(&[0xFF; 11]).long(), Err(DecodeError::Malformed { .. })));
        assert!(matches!(
            Cursor::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]).long(),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn an_array_count_larger_than_the_input_is_refused_without_allocating() {
        // count = 2^40, then nothing.
        let bytes = [0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        assert_eq!(Cursor::new(&bytes).array(Cursor::string), Err(ENDS_EARLY));
    }
}

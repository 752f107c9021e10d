//! The schema catalogue: writer schemas by CRC-64-AVRO fingerprint, the reader
//! schema per topic, and the `ProfileUpdate` writer.

use super::binary::{Cursor, ReadAvro};
use super::{DecodeError, SINGLE_OBJECT_MARKER};
use crate::model::{InputKind, ProfileUpdate};
use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;

/// The largest string and array block `apache_avro` may allocate for while
/// decoding. Its default (512 MiB) lets a 20-byte record claiming a huge array
/// reserve tens of GB and abort the process; no Kafka record is this large.
pub const MAX_AVRO_ALLOCATION: usize = 8 * 1024 * 1024;

/// The bundled schemas, compiled in so the binary needs no files to run.
pub const BROWSE_SCHEMA: &str = include_str!("../../schemas/browse_event.avsc");
pub const PURCHASE_SCHEMA: &str = include_str!("../../schemas/purchase_event.avsc");
pub const LOCATION_SCHEMA: &str = include_str!("../../schemas/location_event.avsc");
pub const CONSENT_SCHEMA: &str = include_str!("../../schemas/consent_change.avsc");
pub const PROFILE_SCHEMA: &str = include_str!("../../schemas/profile_update.avsc");

/// A schema file that cannot be used. The operator's configuration to fix.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid avro schema: {0}")]
    Invalid(String),
    #[error("cannot encode a profile update: {0}")]
    Encode(String),
}

/// A schema of the contract with its single-object header, computed once.
struct ContractSchema {
    schema: Schema,
    fingerprint: u64,
    header: [u8; 10],
}

impl ContractSchema {
    fn parse(text: &str) -> Result<Self, SchemaError> {
        let schema = parse(text)?;
        let fingerprint = fingerprint(&schema);
        let mut header = [0u8; 10];
        header[..2].copy_from_slice(&SINGLE_OBJECT_MARKER);
        header[2..].copy_from_slice(&fingerprint.to_le_bytes());
        Ok(Self { schema, fingerprint, header })
    }

    /// Appends `value` in single-object encoding to `out`.
    fn encode<T: Serialize>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), SchemaError> {
        out.extend_from_slice(&self.header);
        apache_avro::write_avro_datum_ref(&self.schema, value, out)
            .map_err(|error| SchemaError::Encode(error.to_string()))?;
        Ok(())
    }
}

/// Known writer schemas and the reader schemas of the contract.
pub struct SchemaCatalogue {
    writers: HashMap<u64, Schema>,
    browse: ContractSchema,
    purchase: ContractSchema,
    location: ContractSchema,
    consent: ContractSchema,
    profile: ContractSchema,
}

/// The CRC-64-AVRO fingerprint of a schema's canonical form, as the integer
/// single-object encoding stores little-endian.
pub fn fingerprint(schema: &Schema) -> u64 {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(fingerprint)
}

fn parse(text: &str) -> Result<Schema, SchemaError> {
    Schema::parse_str(text).map_err(|error| SchemaError::Invalid(error.to_string()))
}

impl SchemaCatalogue {
    /// The bundled schemas plus extra writer schemas (JSON texts).
    pub fn new(extra_writer_schemas: &[String]) -> Result<Self, SchemaError> {
        apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
        let browse = ContractSchema::parse(BROWSE_SCHEMA)?;
        let purchase = ContractSchema::parse(PURCHASE_SCHEMA)?;
        let location = ContractSchema::parse(LOCATION_SCHEMA)?;
        let consent = ContractSchema::parse(CONSENT_SCHEMA)?;
        let profile = ContractSchema::parse(PROFILE_SCHEMA)?;
        let mut writers = HashMap::new();
        for known in [&browse, &purchase, &location, &consent, &profile] {
            writers.insert(known.fingerprint, known.schema.clone());
        }
        for text in extra_writer_schemas {
            let schema = parse(text)?;
            writers.insert(fingerprint(&schema), schema);
        }
        Ok(Self { writers, browse, purchase, location, consent, profile })
    }

    fn reader(&self, kind: InputKind) -> &ContractSchema {
        match kind {
            InputKind::Browse => &self.browse,
            InputKind::Purchase => &self.purchase,
            InputKind::Location => &self.location,
            InputKind::Consent => &self.consent,
        }
    }

    /// Decodes the part of a single-object value after the `C3 01` marker.
    pub fn decode_single_object<T: DeserializeOwned + ReadAvro>(
        &self,
        kind: InputKind,
        after_marker: &[u8],
    ) -> Result<T, DecodeError> {
        let Some((fingerprint_bytes, datum)) = after_marker.split_first_chunk::<8>() else {
            return Err(DecodeError::Truncated("single-object fingerprint shorter than 8 bytes"));
        };
        let fingerprint = u64::from_le_bytes(*fingerprint_bytes);
        if fingerprint == self.reader(kind).fingerprint {
            let mut cursor = Cursor::new(datum);
            let record = T::read_avro(&mut cursor)?;
            return match cursor.remaining() {
                0 => Ok(record),
                extra => Err(DecodeError::Malformed {
                    encoding: "avro",
                    detail: format!("{extra} bytes after the end of the datum"),
                }),
            };
        }
        let writer = self.writers.get(&fingerprint).ok_or(DecodeError::UnknownFingerprint(fingerprint))?;
        // apache_avro reads a string, boolean or union cut off by the end of
        // the input as null; a read past the end is how truncation shows.
        let mut reader = EndGuard { rest: datum, read_past_end: false };
        let value = apache_avro::from_avro_datum(writer, &mut reader, None);
        if reader.read_past_end {
            return Err(DecodeError::Truncated("the avro datum ends early"));
        }
        let value = value.map_err(|error| DecodeError::Malformed { encoding: "avro", detail: error.to_string() })?;
        if !reader.rest.is_empty() {
            return Err(DecodeError::Malformed {
                encoding: "avro",
                detail: format!("{} bytes after the end of the datum", reader.rest.len()),
            });
        }
        let resolved =
            value.resolve(&self.reader(kind).schema).map_err(|error| DecodeError::SchemaMismatch(error.to_string()))?;
        apache_avro::from_value(&resolved)
            .map_err(|error| DecodeError::Malformed { encoding: "avro", detail: error.to_string() })
    }

    /// Appends `update` in single-object encoding to `out`. Cannot fail: the
    /// record type is the schema's own.
    pub fn encode_profile(&self, update: &ProfileUpdate, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.profile.header);
        super::binary::write_profile_update(update, out);
    }

    /// Appends an input record of `kind` in single-object encoding to `out`
    /// (for synthetic load: `tactful demo`, `tactful gen`, benchmarks).
    pub fn encode_input<T: Serialize>(&self, kind: InputKind, value: &T, out: &mut Vec<u8>) -> Result<(), SchemaError> {
        self.reader(kind).encode(value, out)
    }
}

/// A reader over a datum that notes any attempt to read past its end.
struct EndGuard<'a> {
    rest: &'a [u8],
    read_past_end: bool,
}

impl Read for EndGuard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !buf.is_empty() && self.rest.is_empty() {
            self.read_past_end = true;
        }
        self.rest.read(buf)
    }
}

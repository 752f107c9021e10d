//! The schema catalogue: writer schemas by CRC-64-AVRO fingerprint, the reader
//! schema per topic, and the `ProfileUpdate` writer.

use super::{DecodeError, SINGLE_OBJECT_MARKER};
use crate::model::{InputKind, ProfileUpdate};
use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

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

/// Known writer schemas and the reader schemas of the contract.
pub struct SchemaCatalogue {
    writers: HashMap<u64, Schema>,
    browse: Schema,
    purchase: Schema,
    location: Schema,
    consent: Schema,
    profile: Schema,
    profile_header: [u8; 10],
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
        let browse = parse(BROWSE_SCHEMA)?;
        let purchase = parse(PURCHASE_SCHEMA)?;
        let location = parse(LOCATION_SCHEMA)?;
        let consent = parse(CONSENT_SCHEMA)?;
        let profile = parse(PROFILE_SCHEMA)?;
        let mut writers = HashMap::new();
        for schema in [&browse, &purchase, &location, &consent, &profile] {
            writers.insert(fingerprint(schema), schema.clone());
        }
        for text in extra_writer_schemas {
            let schema = parse(text)?;
            writers.insert(fingerprint(&schema), schema);
        }
        let mut profile_header = [0u8; 10];
        profile_header[..2].copy_from_slice(&SINGLE_OBJECT_MARKER);
        profile_header[2..].copy_from_slice(&fingerprint(&profile).to_le_bytes());
        Ok(Self {
            writers,
            browse,
            purchase,
            location,
            consent,
            profile,
            profile_header,
        })
    }

    fn reader(&self, kind: InputKind) -> &Schema {
        match kind {
            InputKind::Browse => &self.browse,
            InputKind::Purchase => &self.purchase,
            InputKind::Location => &self.location,
            InputKind::Consent => &self.consent,
        }
    }

    /// Decodes the part of a single-object value after the `C3 01` marker.
    pub fn decode_single_object<T: DeserializeOwned>(
        &self,
        kind: InputKind,
        after_marker: &[u8],
    ) -> Result<T, DecodeError> {
        let Some((fingerprint_bytes, mut datum)) = after_marker.split_first_chunk::<8>() else {
            return Err(DecodeError::Truncated("single-object fingerprint shorter than 8 bytes"));
        };
        let fingerprint = u64::from_le_bytes(*fingerprint_bytes);
        let writer = self
            .writers
            .get(&fingerprint)
            .ok_or(DecodeError::UnknownFingerprint(fingerprint))?;
        let value = apache_avro::from_avro_datum(writer, &mut datum, None).map_err(|error| {
            DecodeError::Malformed {
                encoding: "avro",
                detail: error.to_string(),
            }
        })?;
        if !datum.is_empty() {
            return Err(DecodeError::Malformed {
                encoding: "avro",
                detail: format!("{} bytes after the end of the datum", datum.len()),
            });
        }
        let resolved = value
            .resolve(self.reader(kind))
            .map_err(|error| DecodeError::SchemaMismatch(error.to_string()))?;
        apache_avro::from_value(&resolved).map_err(|error| DecodeError::Malformed {
            encoding: "avro",
            detail: error.to_string(),
        })
    }

    /// Appends `update` in single-object encoding to `out`.
    pub fn encode_profile(&self, update: &ProfileUpdate, out: &mut Vec<u8>) -> Result<(), SchemaError> {
        out.extend_from_slice(&self.profile_header);
        apache_avro::write_avro_datum_ref(&self.profile, update, out)
            .map_err(|error| SchemaError::Encode(error.to_string()))?;
        Ok(())
    }
}

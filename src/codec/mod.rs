//! Decoding input records and encoding profile updates (CONTRACT §2).
//!
//! Each input value's encoding is recognised by its first bytes, per record:
//! `C3 01` is Avro single-object encoding, `00` the Confluent wire format, and
//! anything starting with `{` is JSON. The record type follows from the topic.

mod avro;
mod binary;

pub use avro::{
    SchemaCatalogue, SchemaError, BROWSE_SCHEMA, CONSENT_SCHEMA, LOCATION_SCHEMA, PROFILE_SCHEMA, PURCHASE_SCHEMA,
};

use crate::model::{ConsentChange, Event, InputKind, ProfileUpdate};
use serde::de::DeserializeOwned;

/// The two marker bytes of Avro single-object encoding.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// The magic byte of the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0x00;

/// Why an input value could not be decoded. Always the producer's input to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("the value is empty")]
    Empty,
    #[error("the value is truncated: {0}")]
    Truncated(&'static str),
    #[error("no known writer schema has fingerprint {0:#018x}")]
    UnknownFingerprint(u64),
    #[error("confluent wire format (schema id {0}) needs a schema registry, and none is configured")]
    NoRegistry(u32),
    #[error("the writer schema cannot be read as this topic's record type: {0}")]
    SchemaMismatch(String),
    #[error("a required field is missing: {0}")]
    MissingField(String),
    #[error("the value is not valid {encoding}: {detail}")]
    Malformed { encoding: &'static str, detail: String },
}

impl DecodeError {
    /// Bounded label for metrics and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty | Self::Truncated(_) | Self::Malformed { .. } => "undecodable",
            Self::UnknownFingerprint(_) | Self::NoRegistry(_) => "unknown_schema",
            Self::SchemaMismatch(_) => "schema_mismatch",
            Self::MissingField(_) => "missing_field",
        }
    }
}

/// A decoded input value.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    Event(Event),
    Consent(ConsentChange),
}

/// Decodes the three input encodings and encodes `ProfileUpdate`s.
pub struct Codec {
    schemas: SchemaCatalogue,
}

impl Codec {
    /// A codec knowing the bundled schemas plus `extra_writer_schemas` (JSON texts).
    pub fn new(extra_writer_schemas: &[String]) -> Result<Self, SchemaError> {
        Ok(Self { schemas: SchemaCatalogue::new(extra_writer_schemas)? })
    }

    /// Decodes one value read from the topic of `kind`.
    pub fn decode(&self, kind: InputKind, value: &[u8]) -> Result<Decoded, DecodeError> {
        Ok(match kind {
            InputKind::Browse => Decoded::Event(Event::Browse(self.decode_as(kind, value)?)),
            InputKind::Purchase => Decoded::Event(Event::Purchase(self.decode_as(kind, value)?)),
            InputKind::Location => Decoded::Event(Event::Location(self.decode_as(kind, value)?)),
            InputKind::Consent => Decoded::Consent(self.decode_as(kind, value)?),
        })
    }

    fn decode_as<T: DeserializeOwned + binary::ReadAvro>(
        &self,
        kind: InputKind,
        value: &[u8],
    ) -> Result<T, DecodeError> {
        match value {
            [] => Err(DecodeError::Empty),
            [0xC3] => Err(DecodeError::Truncated("single-object marker without fingerprint")),
            [0xC3, 0x01, rest @ ..] => self.schemas.decode_single_object(kind, rest),
            [CONFLUENT_MAGIC, rest @ ..] => match rest.get(..4) {
                Some(id) => Err(DecodeError::NoRegistry(u32::from_be_bytes([id[0], id[1], id[2], id[3]]))),
                None => Err(DecodeError::Truncated("confluent header shorter than 5 bytes")),
            },
            _ => decode_json(value),
        }
    }

    /// Appends `update` in Avro single-object encoding to `out`.
    pub fn encode_profile(&self, update: &ProfileUpdate, out: &mut Vec<u8>) {
        self.schemas.encode_profile(update, out)
    }

    /// Appends an input record of `kind` in Avro single-object encoding to `out`.
    pub fn encode_input<T: serde::Serialize>(
        &self,
        kind: InputKind,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), SchemaError> {
        self.schemas.encode_input(kind, value, out)
    }
}

fn decode_json<T: DeserializeOwned>(value: &[u8]) -> Result<T, DecodeError> {
    let first = value.iter().find(|byte| !byte.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(DecodeError::Malformed {
            encoding: "json",
            detail: "neither avro (C3 01), confluent (00) nor a json object".to_owned(),
        });
    }
    serde_json::from_slice(value).map_err(|error| {
        let detail = error.to_string();
        if detail.starts_with("missing field") {
            DecodeError::MissingField(detail)
        } else {
            DecodeError::Malformed { encoding: "json", detail }
        }
    })
}

#[cfg(test)]
mod tests;

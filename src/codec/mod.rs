//! Decoding input records and encoding profile updates (CONTRACT §2).
//!
//! Each input value's encoding is recognised by its first bytes, per record:
//! `C3 01` is Avro single-object encoding, `00` the Confluent wire format, and
//! anything starting with `{` is JSON. The record type follows from the topic.

mod avro;
mod binary;
pub mod canonical;

pub use avro::{
    FingerprintKind, RegistryWriter, SchemaCatalogue, SchemaError, BROWSE_SCHEMA, CONSENT_SCHEMA, LOCATION_SCHEMA,
    PROFILE_SCHEMA, PURCHASE_SCHEMA,
};

pub use binary::{strings_written, write_array, write_membership, write_strings, write_update_head, Appender};

use crate::model::{ConsentChange, Event, InputKind, ProfileUpdate};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// The two marker bytes of Avro single-object encoding.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// The magic byte of the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0x00;

/// Why an input value could not be decoded. Always the producer's input to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The value has zero bytes, which no encoding allows.
    #[error("the value is empty")]
    Empty,
    /// The value ends before its header or datum does; says which part was cut.
    #[error("the value is truncated: {0}")]
    Truncated(&'static str),
    /// A single-object value's writer schema is neither bundled nor among the
    /// configured extra schemas: add its file to `extra_schema_files`.
    #[error("no known writer schema has fingerprint {0:#018x}")]
    UnknownFingerprint(u64),
    /// A Confluent-framed value (with this schema id) arrived but no
    /// `[schema_registry]` is configured.
    #[error("confluent wire format (schema id {0}) needs a schema registry, and none is configured")]
    NoRegistry(u32),
    /// The registry does not know the value's schema id, or its schema is not usable Avro.
    #[error("the schema registry has no usable schema with id {id}: {detail}")]
    UnknownSchemaId {
        /// The schema id from the value's Confluent header.
        id: u32,
        /// What the registry answered, or why its schema was refused.
        detail: String,
    },
    /// The writer schema does not resolve to the topic's reader schema by
    /// Avro's rules (e.g. a field removed that has no default).
    #[error("the writer schema cannot be read as this topic's record type: {0}")]
    SchemaMismatch(String),
    /// A JSON value lacks a field the contract requires.
    #[error("a required field is missing: {0}")]
    MissingField(String),
    /// The bytes are not valid in the encoding their first bytes announce.
    #[error("the value is not valid {encoding}: {detail}")]
    Malformed {
        /// `avro` or `json`: the encoding the value was read as.
        encoding: &'static str,
        /// The decoder's explanation.
        detail: String,
    },
}

impl DecodeError {
    /// Bounded label for metrics and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty | Self::Truncated(_) | Self::Malformed { .. } => "undecodable",
            Self::UnknownFingerprint(_) | Self::NoRegistry(_) | Self::UnknownSchemaId { .. } => "unknown_schema",
            Self::SchemaMismatch(_) => "schema_mismatch",
            Self::MissingField(_) => "missing_field",
        }
    }
}

/// A decoded input value.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A value from one of the three event topics.
    Event(Event),
    /// A value from the consent topic.
    Consent(ConsentChange),
}

/// How an input value was encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Avro single-object encoding with the standard fingerprint.
    SingleObject,
    /// Avro single-object encoding with apache-avro 0.21's non-standard
    /// fingerprint, which tactful wrote before: still accepted, counted apart.
    SingleObjectLegacy,
    /// The Confluent wire format, with a writer schema from the registry.
    Confluent,
    /// A UTF-8 JSON object with the contract's field names.
    Json,
}

/// What the schema registry said about a schema id, as the codec keeps it.
type RegistryEntry = Result<Arc<RegistryWriter>, String>;

/// Decodes the three input encodings and encodes `ProfileUpdate`s.
pub struct Codec {
    schemas: SchemaCatalogue,
    /// Writer schemas of the Confluent wire format by registry id, filled by
    /// the pipeline (which fetches them) before the records that need them
    /// are decoded: decoding itself does no I/O. `None` without a registry.
    registry: Option<RwLock<HashMap<u32, RegistryEntry>>>,
}

impl Codec {
    /// A codec knowing the bundled schemas plus `extra_writer_schemas` (JSON
    /// texts); Confluent-framed values are refused as needing a registry.
    pub fn new(extra_writer_schemas: &[String]) -> Result<Self, SchemaError> {
        Ok(Self { schemas: SchemaCatalogue::new(extra_writer_schemas)?, registry: None })
    }

    /// A codec that also decodes the Confluent wire format, with writer
    /// schemas added through [`Codec::add_registry_schema`].
    pub fn with_registry(extra_writer_schemas: &[String]) -> Result<Self, SchemaError> {
        Ok(Self { registry: Some(RwLock::new(HashMap::new())), ..Self::new(extra_writer_schemas)? })
    }

    /// The registry id of a Confluent-framed value whose writer schema this
    /// codec does not know yet (the pipeline fetches it before decoding).
    pub fn missing_schema_id(&self, value: &[u8]) -> Option<u32> {
        let registry = self.registry.as_ref()?;
        let id = confluent_schema_id(value)?;
        let known = registry.read().unwrap_or_else(PoisonError::into_inner).contains_key(&id);
        (!known).then_some(id)
    }

    /// Notes what the registry answered for schema `id`: its schema text, or
    /// why there is none (unknown id, not Avro). A text that is not a valid
    /// Avro schema makes every record written with it unusable, not the codec.
    pub fn add_registry_schema(&self, id: u32, answer: Result<&str, String>) {
        let Some(registry) = &self.registry else { return };
        let entry =
            answer.and_then(|text| RegistryWriter::parse(text).map(Arc::new).map_err(|error| error.to_string()));
        registry.write().unwrap_or_else(PoisonError::into_inner).insert(id, entry);
    }

    /// Decodes one value read from the topic of `kind`.
    pub fn decode(&self, kind: InputKind, value: &[u8]) -> Result<(Decoded, Encoding), DecodeError> {
        Ok(match kind {
            InputKind::Browse => self.decode_as(kind, value, |event| Decoded::Event(Event::Browse(event)))?,
            InputKind::Purchase => self.decode_as(kind, value, |event| Decoded::Event(Event::Purchase(event)))?,
            InputKind::Location => self.decode_as(kind, value, |event| Decoded::Event(Event::Location(event)))?,
            InputKind::Consent => self.decode_as(kind, value, Decoded::Consent)?,
        })
    }

    fn decode_as<T: DeserializeOwned + binary::ReadAvro>(
        &self,
        kind: InputKind,
        value: &[u8],
        wrap: impl FnOnce(T) -> Decoded,
    ) -> Result<(Decoded, Encoding), DecodeError> {
        let (record, encoding) = match value {
            [] => return Err(DecodeError::Empty),
            [0xC3] => return Err(DecodeError::Truncated("single-object marker without fingerprint")),
            [0xC3, 0x01, rest @ ..] => match self.schemas.decode_single_object(kind, rest)? {
                (record, FingerprintKind::Standard) => (record, Encoding::SingleObject),
                (record, FingerprintKind::Legacy) => (record, Encoding::SingleObjectLegacy),
            },
            [CONFLUENT_MAGIC, rest @ ..] => {
                let Some((id, datum)) = rest.split_first_chunk::<4>() else {
                    return Err(DecodeError::Truncated("confluent header shorter than 5 bytes"));
                };
                let id = u32::from_be_bytes(*id);
                let Some(registry) = &self.registry else { return Err(DecodeError::NoRegistry(id)) };
                let writer = registry.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned();
                let writer = match writer {
                    Some(Ok(writer)) => writer,
                    Some(Err(detail)) => return Err(DecodeError::UnknownSchemaId { id, detail }),
                    None => {
                        return Err(DecodeError::UnknownSchemaId {
                            id,
                            detail: "not fetched from the registry".to_owned(),
                        })
                    }
                };
                (self.schemas.decode_with_writer(kind, &writer, datum)?, Encoding::Confluent)
            }
            _ => (decode_json(value)?, Encoding::Json),
        };
        Ok((wrap(record), encoding))
    }

    /// Decodes a single-object or JSON value of `kind` into the record as
    /// written, every field (e.g. `BrowseEvent`, where [`Codec::decode`]
    /// gives what tactful keeps): for tools that rewrite records.
    pub fn decode_written<T: DeserializeOwned>(&self, kind: InputKind, value: &[u8]) -> Result<T, DecodeError> {
        match value {
            [0xC3, 0x01, rest @ ..] => self.schemas.decode_single_object_written(kind, rest),
            _ => decode_json(value),
        }
    }

    /// Appends `update` in Avro single-object encoding to `out`.
    pub fn encode_profile(&self, update: &EncodedUpdate, out: &mut Vec<u8>) {
        out.extend_from_slice(self.schemas.profile_header());
        out.extend_from_slice(update.datum());
    }

    /// Appends `update` in the Confluent wire format with registry id `schema_id` to `out`.
    pub fn encode_profile_confluent(&self, schema_id: u32, update: &EncodedUpdate, out: &mut Vec<u8>) {
        out.push(CONFLUENT_MAGIC);
        out.extend_from_slice(&schema_id.to_be_bytes());
        out.extend_from_slice(update.datum());
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

/// A profile update as the Avro datum published (the contract's
/// `ProfileUpdate` schema, without a header). It is written once, when the
/// update is due, straight from the state: an update waiting to be published
/// is one allocation, not one per membership and reason.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedUpdate(Vec<u8>);

impl EncodedUpdate {
    /// `datum`, written by [`write_update_head`] and the fields after it.
    pub fn from_datum(datum: Vec<u8>) -> Self {
        Self(datum)
    }

    /// The datum, as a header frames it.
    pub fn datum(&self) -> &[u8] {
        &self.0
    }

    /// The user, the datum's first field (and the record key).
    pub fn user_id(&self) -> &str {
        binary::Cursor::new(&self.0).str().unwrap_or_default()
    }

    /// The update as a consumer that knows only the contract reads it
    /// (apache-avro's generic decoding): for tests, tools and the demo.
    pub fn decode(&self) -> Result<ProfileUpdate, DecodeError> {
        avro::decode_profile(&self.0)
    }
}

impl From<&ProfileUpdate> for EncodedUpdate {
    fn from(update: &ProfileUpdate) -> Self {
        let mut datum = Vec::with_capacity(256);
        binary::write_profile_update(update, &mut datum);
        Self(datum)
    }
}

impl std::fmt::Debug for EncodedUpdate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.decode() {
            Ok(update) => update.fmt(formatter),
            Err(error) => write!(formatter, "EncodedUpdate({:?}: {error})", self.0),
        }
    }
}

/// The schema id of a value in the Confluent wire format.
pub fn confluent_schema_id(value: &[u8]) -> Option<u32> {
    match value {
        [CONFLUENT_MAGIC, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
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
    // The contract's JSON is one UTF-8 object: checked once for the whole
    // value, which parses faster than checking each string as it is read.
    let text = std::str::from_utf8(value).map_err(|error| DecodeError::Malformed {
        encoding: "json",
        detail: format!("not UTF-8 at byte {}", error.valid_up_to()),
    })?;
    serde_json::from_str(text).map_err(|error| {
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

//! The schema catalogue: writer schemas by CRC-64-AVRO fingerprint (the
//! standard one, and the legacy one tactful wrote before), the reader schema
//! per topic, and the `ProfileUpdate` writer.

use super::binary::{Cursor, ReadAvro};
use super::canonical;
use super::{DecodeError, SINGLE_OBJECT_MARKER};
use crate::model::{InputKind, ProfileUpdate};
use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, LazyLock};

/// The largest string and array block `apache_avro` may allocate for while
/// decoding. Its default (512 MiB) lets a 20-byte record claiming a huge array
/// reserve tens of GB and abort the process; no Kafka record is this large.
pub const MAX_AVRO_ALLOCATION: usize = 8 * 1024 * 1024;

/// The bundled schemas, compiled in so the binary needs no files to run.
pub const BROWSE_SCHEMA: &str = include_str!("../../schemas/browse_event.avsc");
/// The reader schema of the purchase topic, `tactful.v1.PurchaseEvent`.
pub const PURCHASE_SCHEMA: &str = include_str!("../../schemas/purchase_event.avsc");
/// The reader schema of the location topic, `tactful.v1.LocationEvent`.
pub const LOCATION_SCHEMA: &str = include_str!("../../schemas/location_event.avsc");
/// The reader schema of the consent topic, `tactful.v1.ConsentChange`.
pub const CONSENT_SCHEMA: &str = include_str!("../../schemas/consent_change.avsc");
/// The writer schema of `profiles.updates`, `tactful.v1.ProfileUpdate`; also
/// what is registered when output uses Confluent framing.
pub const PROFILE_SCHEMA: &str = include_str!("../../schemas/profile_update.avsc");

/// A schema file that cannot be used. The operator's configuration to fix.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The text is not an Avro schema apache-avro can parse and fingerprint
    /// (an extra schema file, or a registry's answer).
    #[error("invalid avro schema: {0}")]
    Invalid(String),
    /// A record handed to the encoder does not fit its topic's schema; a bug
    /// in the caller (synthetic load), not in the configuration.
    #[error("cannot encode an input record: {0}")]
    Encode(String),
}

/// A parsed writer or reader schema with its standard fingerprint.
struct KnownSchema {
    schema: Schema,
    /// The standard CRC-64-AVRO fingerprint (Java's `parsingFingerprint64`).
    fingerprint: u64,
}

impl KnownSchema {
    fn parse(text: &str) -> Result<Self, SchemaError> {
        let schema = contain_panics(|| Schema::parse_str(text).map_err(|error| error.to_string()))
            .map_err(SchemaError::Invalid)?;
        let fingerprint = canonical::fingerprint(text).map_err(|error| SchemaError::Invalid(error.to_string()))?;
        Ok(Self { schema, fingerprint })
    }

    /// The single-object header of values written with this schema.
    fn header(&self) -> [u8; 10] {
        let mut header = [0u8; 10];
        header[..2].copy_from_slice(&SINGLE_OBJECT_MARKER);
        header[2..].copy_from_slice(&self.fingerprint.to_le_bytes());
        header
    }
}

/// A schema of the contract: the reader schema of its topic.
struct ContractSchema {
    known: KnownSchema,
    /// The fingerprint apache-avro 0.21 computes, which tactful wrote before
    /// it computed the standard one (it differs for logical types). Only the
    /// bundled schemas have one: tactful never wrote with any other, and the
    /// crate's canonical form panics on some schemas a registry may hold.
    legacy_fingerprint: u64,
}

impl ContractSchema {
    fn parse(text: &str) -> Result<Self, SchemaError> {
        let known = KnownSchema::parse(text)?;
        let bytes = known.schema.fingerprint::<Rabin>().bytes;
        let mut legacy = [0u8; 8];
        legacy.copy_from_slice(&bytes[..8]);
        Ok(Self { known, legacy_fingerprint: u64::from_le_bytes(legacy) })
    }
}

/// Which fingerprint a single-object value carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FingerprintKind {
    /// The CRC-64-AVRO fingerprint of the Avro spec, as Java's
    /// `parsingFingerprint64` and other producers compute it.
    Standard,
    /// apache-avro 0.21's non-standard fingerprint (records tactful wrote before).
    Legacy,
}

/// The fingerprint of a single-object value (after the marker) and its datum.
fn split_fingerprint(after_marker: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    let Some((fingerprint, datum)) = after_marker.split_first_chunk::<8>() else {
        return Err(DecodeError::Truncated("single-object fingerprint shorter than 8 bytes"));
    };
    Ok((u64::from_le_bytes(*fingerprint), datum))
}

/// Known writer schemas and the reader schemas of the contract.
pub struct SchemaCatalogue {
    /// Writer schemas by fingerprint, standard and legacy.
    writers: HashMap<u64, (Arc<Schema>, FingerprintKind)>,
    browse: ContractSchema,
    purchase: ContractSchema,
    location: ContractSchema,
    consent: ContractSchema,
    /// The single-object header of every `ProfileUpdate` written.
    profile_header: [u8; 10],
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
        for contract in [&browse, &purchase, &location, &consent, &profile] {
            let writer = Arc::new(contract.known.schema.clone());
            writers.insert(contract.legacy_fingerprint, (writer.clone(), FingerprintKind::Legacy));
            writers.insert(contract.known.fingerprint, (writer, FingerprintKind::Standard));
        }
        for text in extra_writer_schemas {
            let extra = KnownSchema::parse(text)?;
            writers.insert(extra.fingerprint, (Arc::new(extra.schema), FingerprintKind::Standard));
        }
        let profile_header = profile.known.header();
        Ok(Self { writers, browse, purchase, location, consent, profile_header })
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
    ) -> Result<(T, FingerprintKind), DecodeError> {
        let (fingerprint, datum) = split_fingerprint(after_marker)?;
        let reader = self.reader(kind);
        if fingerprint == reader.known.fingerprint {
            return Ok((decode_direct(datum)?, FingerprintKind::Standard));
        }
        if fingerprint == reader.legacy_fingerprint {
            return Ok((decode_direct(datum)?, FingerprintKind::Legacy));
        }
        let (writer, fingerprint_kind) =
            self.writers.get(&fingerprint).ok_or(DecodeError::UnknownFingerprint(fingerprint))?;
        Ok((self.decode_resolved(kind, writer, datum)?, *fingerprint_kind))
    }

    /// Decodes the part of a single-object value after the `C3 01` marker
    /// into the record as written, every field (e.g. `BrowseEvent`), through
    /// apache-avro: for tools that rewrite records, not for the pipeline.
    pub fn decode_single_object_written<T: DeserializeOwned>(
        &self,
        kind: InputKind,
        after_marker: &[u8],
    ) -> Result<T, DecodeError> {
        let (fingerprint, datum) = split_fingerprint(after_marker)?;
        let (writer, _) = self.writers.get(&fingerprint).ok_or(DecodeError::UnknownFingerprint(fingerprint))?;
        self.decode_resolved(kind, writer, datum)
    }

    /// Decodes a datum written with `writer` (a registry's schema): directly
    /// when it is the contract's own schema, else resolved against it.
    pub fn decode_with_writer<T: DeserializeOwned + ReadAvro>(
        &self,
        kind: InputKind,
        writer: &RegistryWriter,
        datum: &[u8],
    ) -> Result<T, DecodeError> {
        if writer.fingerprint == self.reader(kind).known.fingerprint {
            decode_direct(datum)
        } else {
            self.decode_resolved(kind, &writer.schema, datum)
        }
    }

    /// Decodes a datum written with `writer` through apache-avro and resolves
    /// it to the contract schema of `kind` (Avro schema evolution).
    fn decode_resolved<T: DeserializeOwned>(
        &self,
        kind: InputKind,
        writer: &Schema,
        datum: &[u8],
    ) -> Result<T, DecodeError> {
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
        let resolved = value
            .resolve(&self.reader(kind).known.schema)
            .map_err(|error| DecodeError::SchemaMismatch(error.to_string()))?;
        apache_avro::from_value(&resolved)
            .map_err(|error| DecodeError::Malformed { encoding: "avro", detail: error.to_string() })
    }

    /// The single-object header of a `ProfileUpdate`.
    pub fn profile_header(&self) -> &[u8] {
        &self.profile_header
    }

    /// Appends an input record of `kind` in single-object encoding to `out`
    /// (for synthetic load: `tactful demo`, `tactful gen`, benchmarks).
    pub fn encode_input<T: Serialize>(&self, kind: InputKind, value: &T, out: &mut Vec<u8>) -> Result<(), SchemaError> {
        let reader = &self.reader(kind).known;
        out.extend_from_slice(&reader.header());
        apache_avro::write_avro_datum_ref(&reader.schema, value, out)
            .map_err(|error| SchemaError::Encode(error.to_string()))?;
        Ok(())
    }
}

/// A writer schema fetched from a schema registry, with its standard fingerprint.
pub struct RegistryWriter {
    schema: Schema,
    fingerprint: u64,
}

impl RegistryWriter {
    /// Parses a registry's schema text.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let known = KnownSchema::parse(text)?;
        Ok(Self { schema: known.schema, fingerprint: known.fingerprint })
    }
}

/// Runs `apache_avro` on a schema from outside the process (a registry's,
/// a configured file): apache-avro 0.21 unwraps on some invalid schemas (a
/// name that is not a valid Avro name, a non-numeric `precision`) instead of
/// returning an error, as the `registry_schema` fuzz target found. Such a
/// panic becomes an error for that schema, so its records are bad input and
/// the pipeline keeps running.
fn contain_panics<T>(run: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .unwrap_or_else(|_| Err("the avro library cannot handle this schema".to_owned()))
}

/// Decodes a datum written with the contract's own schema of `T`.
fn decode_direct<T: ReadAvro>(datum: &[u8]) -> Result<T, DecodeError> {
    let mut cursor = Cursor::new(datum);
    let record = T::read_avro(&mut cursor)?;
    match cursor.remaining() {
        0 => Ok(record),
        extra => Err(DecodeError::Malformed {
            encoding: "avro",
            detail: format!("{extra} bytes after the end of the datum"),
        }),
    }
}

/// Decodes a `ProfileUpdate` datum as a consumer that knows only the
/// contract's schema does: apache-avro's generic path, nothing of tactful's
/// writer shared.
pub fn decode_profile(datum: &[u8]) -> Result<ProfileUpdate, DecodeError> {
    static SCHEMA: LazyLock<Result<Schema, String>> =
        LazyLock::new(|| Schema::parse_str(PROFILE_SCHEMA).map_err(|error| error.to_string()));
    let malformed = |detail: String| DecodeError::Malformed { encoding: "avro", detail };
    let schema = SCHEMA.as_ref().map_err(|error| malformed(error.clone()))?;
    let mut rest = datum;
    let value = apache_avro::from_avro_datum(schema, &mut rest, None).map_err(|error| malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes after the end of the datum", rest.len())));
    }
    apache_avro::from_value(&value).map_err(|error| malformed(error.to_string()))
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

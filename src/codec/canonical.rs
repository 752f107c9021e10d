//! Avro's Parsing Canonical Form and its CRC-64-AVRO fingerprint, as the
//! Avro specification defines them and Java Avro's `SchemaNormalization`
//! (the reference) and Python's fastavro compute them.
//!
//! Why hand-written: apache-avro 0.21's `Schema::canonical_form()` keeps a
//! primitive with a logical type (`{"type":"long","logicalType":"timestamp-millis"}`)
//! as `{"type":"long"}` where the reference writes `"long"`, so its fingerprint
//! of every contract schema differs from every other implementation's and no
//! Java or Python single-object record would be recognised. The crate's form
//! is still computed, as the legacy fingerprint of records tactful itself
//! wrote before (see `SchemaCatalogue`).
//!
//! The transformation works on the schema's JSON text, so it sees exactly what
//! the writer declared: \[PRIMITIVES\] a primitive in an object becomes its bare
//! name, \[FULLNAMES\] names are qualified with the enclosing namespace,
//! \[STRIP\] only `name`, `type`, `fields`, `symbols`, `items`, `values`, `size`
//! stay, \[ORDER\] in that order, a named type defined once is afterwards written
//! as its full name, and no whitespace is written outside strings.

use serde_json::Value;
use std::collections::HashSet;

/// Why a schema text has no canonical form. The schema's author's to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct CanonicalError(String);

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// The Parsing Canonical Form of the schema in `text` (JSON).
pub fn parsing_canonical_form(text: &str) -> Result<String, CanonicalError> {
    let schema: Value =
        serde_json::from_str(text).map_err(|error| CanonicalError(format!("not a JSON schema: {error}")))?;
    let mut out = String::with_capacity(text.len());
    Canonicalizer { defined: HashSet::new() }.write(&schema, "", &mut out)?;
    Ok(out)
}

/// The CRC-64-AVRO (Rabin) fingerprint of the schema in `text`, as the integer
/// single-object encoding stores little-endian (Java's `parsingFingerprint64`).
pub fn fingerprint(text: &str) -> Result<u64, CanonicalError> {
    Ok(crc64_avro(parsing_canonical_form(text)?.as_bytes()))
}

/// The 64-bit Rabin fingerprint of the Avro specification ("Schema
/// Fingerprints"), bit by bit from the spec's empty value and polynomial.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut fingerprint = EMPTY;
    for byte in bytes {
        fingerprint ^= u64::from(*byte);
        for _ in 0..8 {
            fingerprint = (fingerprint >> 1) ^ (EMPTY & (fingerprint & 1).wrapping_neg());
        }
    }
    fingerprint
}

struct Canonicalizer {
    /// Full names of the named types written so far.
    defined: HashSet<String>,
}

/// `name` qualified with `namespace`, unless it already is.
fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

/// A JSON string literal: UTF-8 as is, only what JSON requires escaped.
fn write_string(value: &str, out: &mut String) {
    out.push_str(&Value::String(value.to_owned()).to_string());
}

impl Canonicalizer {
    fn write(&mut self, schema: &Value, namespace: &str, out: &mut String) -> Result<(), CanonicalError> {
        match schema {
            Value::String(name) if PRIMITIVES.contains(&name.as_str()) => write_string(name, out),
            // A reference to a named type defined before.
            Value::String(name) => write_string(&full_name(name, namespace), out),
            Value::Array(branches) => {
                out.push('[');
                for (index, branch) in branches.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    self.write(branch, namespace, out)?;
                }
                out.push(']');
            }
            Value::Object(object) => {
                let type_name = match object.get("type") {
                    Some(Value::String(type_name)) => type_name.as_str(),
                    // `{"type": {...}}` or `{"type": [...]}`: the inner schema is the type.
                    Some(inner @ (Value::Object(_) | Value::Array(_))) => return self.write(inner, namespace, out),
                    _ => return Err(CanonicalError("a schema object without a `type`".to_owned())),
                };
                match type_name {
                    // [PRIMITIVES]: logical types and other attributes do not change parsing.
                    primitive if PRIMITIVES.contains(&primitive) => write_string(primitive, out),
                    "array" => {
                        out.push_str(r#"{"type":"array","items":"#);
                        self.write(attribute(object, "items")?, namespace, out)?;
                        out.push('}');
                    }
                    "map" => {
                        out.push_str(r#"{"type":"map","values":"#);
                        self.write(attribute(object, "values")?, namespace, out)?;
                        out.push('}');
                    }
                    "record" | "error" | "enum" | "fixed" => self.write_named(object, type_name, namespace, out)?,
                    // A named type referenced through `{"type": "Name"}`.
                    reference => write_string(&full_name(reference, namespace), out),
                }
            }
            _ => return Err(CanonicalError(format!("not a schema: {schema}"))),
        }
        Ok(())
    }

    fn write_named(
        &mut self,
        object: &serde_json::Map<String, Value>,
        type_name: &str,
        enclosing: &str,
        out: &mut String,
    ) -> Result<(), CanonicalError> {
        let Value::String(name) = attribute(object, "name")? else {
            return Err(CanonicalError(format!("a {type_name} whose name is not a string")));
        };
        let namespace = match object.get("namespace") {
            Some(Value::String(namespace)) => namespace.as_str(),
            _ => enclosing,
        };
        let full = full_name(name, namespace);
        if !self.defined.insert(full.clone()) {
            write_string(&full, out);
            return Ok(());
        }
        // Names inside a named type are relative to its own namespace.
        let inner_namespace = full.rsplit_once('.').map_or("", |(namespace, _)| namespace).to_owned();
        out.push_str(r#"{"name":"#);
        write_string(&full, out);
        out.push_str(r#","type":"#);
        write_string(if type_name == "error" { "record" } else { type_name }, out);
        match type_name {
            "enum" => {
                out.push_str(r#","symbols":"#);
                let Value::Array(symbols) = attribute(object, "symbols")? else {
                    return Err(CanonicalError(format!("enum {full}: symbols is not an array")));
                };
                out.push('[');
                for (index, symbol) in symbols.iter().enumerate() {
                    let Value::String(symbol) = symbol else {
                        return Err(CanonicalError(format!("enum {full}: a symbol is not a string")));
                    };
                    if index > 0 {
                        out.push(',');
                    }
                    write_string(symbol, out);
                }
                out.push(']');
            }
            "fixed" => {
                let size = attribute(object, "size")?
                    .as_u64()
                    .ok_or_else(|| CanonicalError(format!("fixed {full}: size is not a number")))?;
                out.push_str(&format!(r#","size":{size}"#));
            }
            _ => {
                let Value::Array(fields) = attribute(object, "fields")? else {
                    return Err(CanonicalError(format!("record {full}: fields is not an array")));
                };
                out.push_str(r#","fields":["#);
                for (index, field) in fields.iter().enumerate() {
                    let Some(Value::String(field_name)) = field.get("name") else {
                        return Err(CanonicalError(format!("record {full}: a field without a name")));
                    };
                    let field_type = field
                        .get("type")
                        .ok_or_else(|| CanonicalError(format!("record {full}: field {field_name} has no type")))?;
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(r#"{"name":"#);
                    write_string(field_name, out);
                    out.push_str(r#","type":"#);
                    self.write(field_type, &inner_namespace, out)?;
                    out.push('}');
                }
                out.push(']');
            }
        }
        out.push('}');
        Ok(())
    }
}

fn attribute<'a>(object: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a Value, CanonicalError> {
    object.get(name).ok_or_else(|| CanonicalError(format!("a schema object without `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every schema of the contract and of the test fixtures, with the
    /// fingerprint and canonical form Java Avro 1.12.1 computes for it
    /// (`scripts/avro-fingerprints.sh` regenerates the file; the header says how).
    const JAVA_GOLDENS: &str = include_str!("../../tests/fixtures/java-avro-fingerprints.txt");

    fn goldens() -> Vec<(&'static str, u64, &'static str)> {
        JAVA_GOLDENS
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (head, form) = line.split_once('\t').expect("path fingerprint<TAB>form");
                let (path, hex) = head.split_once(' ').expect("path fingerprint");
                let fingerprint = u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex fingerprint");
                (path, fingerprint, form)
            })
            .collect()
    }

    #[test]
    fn canonical_forms_and_fingerprints_equal_java_avros_for_every_schema() {
        let goldens = goldens();
        // The five contract schemas, the evolved browse schema and the edge cases.
        assert_eq!(goldens.len(), 7, "{goldens:?}");
        for (path, java_fingerprint, form) in goldens {
            let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            assert_eq!(parsing_canonical_form(&text).as_deref(), Ok(form), "{path}");
            assert_eq!(fingerprint(&text), Ok(java_fingerprint), "{path}");
        }
    }

    #[test]
    fn the_consent_change_fingerprint_is_the_one_java_and_fastavro_compute() {
        // The figure in issue 9, from Java Avro 1.12.1 and fastavro.
        assert_eq!(fingerprint(crate::codec::CONSENT_SCHEMA), Ok(0x580a_ddd1_e7c9_22f2));
    }

    #[test]
    fn the_avro_specification_test_vectors_hold() {
        // From the Avro specification's test data (schema-tests.txt): primitives
        // in both spellings, and the fingerprint of "null".
        assert_eq!(parsing_canonical_form(r#"{"type":"int"}"#).as_deref(), Ok(r#""int""#));
        assert_eq!(parsing_canonical_form(r#" "float" "#).as_deref(), Ok(r#""float""#));
        assert_eq!(crc64_avro(br#""null""#) as i64, 7_195_948_357_588_979_594);
        assert_eq!(
            parsing_canonical_form(r#"{"type":"fixed","name":"Foo","size":15,"namespace":"x.y"}"#).as_deref(),
            Ok(r#"{"name":"x.y.Foo","type":"fixed","size":15}"#)
        );
    }

    #[test]
    fn malformed_schemas_are_errors_not_panics() {
        for text in ["", "{", "42", r#"{"type":"record","name":"R"}"#, r#"{"type":"enum","name":"E","symbols":[1]}"#] {
            assert!(parsing_canonical_form(text).is_err(), "{text}");
        }
    }
}

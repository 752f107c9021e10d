//! Validation: a decoded record is checked against its key and for absurd
//! values before it reaches the consent gate. Bad input is the producer's
//! to fix: it is counted and dead-lettered (CONTRACT §6), never applied.

use crate::codec::{Codec, DecodeError, Decoded, Encoding};
use crate::model::{Event, InputKind};

/// Why a record is bad input (CONTRACT §6). The producer's to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejection {
    /// The record has no key, an empty one, or one that is not UTF-8.
    #[error("the key is missing or not UTF-8")]
    BadKey,
    /// The record's `user_id` is not its key.
    #[error("the key differs from the record's user_id")]
    KeyMismatch,
    /// An event record without a value (only the consent topic has tombstones).
    #[error("the event has no value")]
    NoValue,
    /// The value could not be decoded.
    #[error("the value cannot be decoded")]
    Decode(#[from] DecodeError),
    /// A field holds a value no real event has.
    #[error("absurd value: {0}")]
    AbsurdValue(&'static str),
}

impl Rejection {
    /// Bounded label for metrics and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadKey => "bad_key",
            Self::KeyMismatch => "key_mismatch",
            Self::NoValue => "no_value",
            Self::Decode(error) => error.reason(),
            Self::AbsurdValue(_) => "absurd_value",
        }
    }
}

/// A decoded, validated input record, not applied yet.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// An event or a consent change.
    Record {
        /// The record.
        record: Decoded,
        /// How its value was encoded.
        encoding: Encoding,
    },
    /// A consent tombstone: forget the user.
    Forget {
        /// The record's key.
        user_id: String,
    },
}

impl Input {
    /// The event time of an event (consent changes and tombstones have none
    /// that orders them among events).
    pub fn event_time(&self) -> Option<i64> {
        match self {
            Self::Record { record: Decoded::Event(event), .. } => Some(event.ts()),
            _ => None,
        }
    }

    /// The user an event is about (`None` for a consent record or tombstone).
    pub fn event_user(&self) -> Option<&str> {
        match self {
            Self::Record { record: Decoded::Event(event), .. } => Some(event.user_id()),
            _ => None,
        }
    }
}

/// Decodes and validates one input record of `kind`, read at processing time
/// `now_ms`; a record further than `tolerance_ms` from then is absurd.
pub fn decode(
    codec: &Codec,
    kind: InputKind,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    now_ms: i64,
    tolerance_ms: i64,
) -> Result<Input, Rejection> {
    let Some(key) = key.and_then(|key| std::str::from_utf8(key).ok()).filter(|key| !key.is_empty()) else {
        return Err(Rejection::BadKey);
    };
    let Some(value) = value else {
        return match kind {
            InputKind::Consent => Ok(Input::Forget { user_id: key.to_owned() }),
            _ => Err(Rejection::NoValue),
        };
    };
    let (decoded, encoding) = codec.decode(kind, value)?;
    Ok(Input::Record { record: validate(key, decoded, now_ms, tolerance_ms)?, encoding })
}

fn validate(key: &str, decoded: Decoded, now_ms: i64, tolerance_ms: i64) -> Result<Decoded, Rejection> {
    let (user_id, ts) = match &decoded {
        Decoded::Event(event) => (event.user_id(), event.ts()),
        Decoded::Consent(change) => (change.user_id.as_str(), change.ts),
    };
    if user_id != key {
        return Err(Rejection::KeyMismatch);
    }
    // The consent topic is compacted: a choice made long ago is still in force.
    let too_old = matches!(decoded, Decoded::Event(_)) && now_ms.saturating_sub(ts) > tolerance_ms;
    if too_old || ts.saturating_sub(now_ms) > tolerance_ms {
        return Err(Rejection::AbsurdValue("timestamp too far from now"));
    }
    match &decoded {
        Decoded::Event(Event::Location(location)) => {
            if !(location.lat.is_finite() && (-90.0..=90.0).contains(&location.lat)) {
                return Err(Rejection::AbsurdValue("latitude outside -90..90"));
            }
            if !(location.lon.is_finite() && (-180.0..=180.0).contains(&location.lon)) {
                return Err(Rejection::AbsurdValue("longitude outside -180..180"));
            }
        }
        Decoded::Event(Event::Purchase(purchase)) => {
            if purchase.total_cents < 0 {
                return Err(Rejection::AbsurdValue("negative total_cents"));
            }
            if purchase.items.iter().any(|item| item.quantity < 0 || item.price_cents < 0) {
                return Err(Rejection::AbsurdValue("negative quantity or price_cents"));
            }
        }
        _ => {}
    }
    Ok(decoded)
}

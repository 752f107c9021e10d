//! A seeded synthetic population for `tactful demo`, `tactful gen` and the
//! benchmarks: a consent mix, personas that reach every default segment, some
//! withdrawals and a trickle of bad records. Deterministic for a seed.

use crate::codec::Codec;
use crate::model::{
    BrowseEvent, ConsentChange, EventConsent, InputKind, LocationEvent, PersonalizationLevel, PurchaseEvent,
    PurchaseItem,
};
use crate::time::DAY_MS;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The bundled catalogue's stores, so store visitors can be near one.
const STORES: [(f64, f64); 3] = [(52.5246, 13.4020), (53.5503, 9.9937), (48.1372, 11.5755)];
/// One in this many records is deliberately bad (garbage or a wrong key).
const BAD_RECORD_EVERY: u64 = 1_000;

/// What a synthetic user tends to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Persona {
    Casual,
    RunningBrowser,
    BigSpender,
    Habitual,
    StoreVisitor,
    Expecting,
}

/// The consent a synthetic user gives, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConsentMix {
    Everything,
    EverythingWithSensitive,
    Light,
    NoLocation,
    CoarseLocation,
    LevelNone,
    NoPersonalization,
    Unknown,
}

impl ConsentMix {
    fn pick(roll: u32) -> Self {
        match roll {
            0..40 => Self::Everything,
            40..45 => Self::EverythingWithSensitive,
            45..60 => Self::Light,
            60..70 => Self::NoLocation,
            70..80 => Self::CoarseLocation,
            80..88 => Self::LevelNone,
            88..93 => Self::NoPersonalization,
            _ => Self::Unknown,
        }
    }

    fn change(self, user_id: &str, ts: i64) -> Option<ConsentChange> {
        let (granted, level): (&[&str], _) = match self {
            Self::Everything => (
                &["personalization", "location", "precise_location", "measurement", "web", "email", "push", "ads"],
                PersonalizationLevel::Full,
            ),
            Self::EverythingWithSensitive => (
                &[
                    "personalization",
                    "location",
                    "precise_location",
                    "sensitive",
                    "measurement",
                    "web",
                    "email",
                    "push",
                    "ads",
                ],
                PersonalizationLevel::Full,
            ),
            Self::Light => (&["personalization", "web", "email"], PersonalizationLevel::Light),
            Self::NoLocation => (&["personalization", "web", "email", "push", "ads"], PersonalizationLevel::Full),
            Self::CoarseLocation => {
                (&["personalization", "location", "web", "email", "push"], PersonalizationLevel::Full)
            }
            Self::LevelNone => (&["personalization", "web"], PersonalizationLevel::None),
            Self::NoPersonalization => (&["web", "email"], PersonalizationLevel::Full),
            Self::Unknown => return None,
        };
        Some(ConsentChange {
            user_id: user_id.to_owned(),
            ts,
            granted: granted.iter().map(|purpose| (*purpose).to_owned()).collect(),
            level,
            source: "synthetic-cmp".to_owned(),
        })
    }
}

struct SyntheticUser {
    id: String,
    persona: Persona,
    consent: ConsentMix,
}

/// One record for an input topic.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticRecord {
    /// Which input topic the record goes to.
    pub kind: InputKind,
    /// The record key: the synthetic user's id (`user-0000042`), never a real person's.
    pub key: String,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// A seeded stream of synthetic records.
pub struct Population {
    users: Vec<SyntheticUser>,
    rng: SmallRng,
    codec: Codec,
    clock: i64,
    step_ms: i64,
    emitted: u64,
    planned: u64,
}

impl Population {
    /// `users` users whose `events` events spread evenly over the `days` days before `end_ms`.
    pub fn new(seed: u64, users: usize, events: u64, days: i64, end_ms: i64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let users = (0..users)
            .map(|index| SyntheticUser {
                id: format!("user-{index:07}"),
                persona: match rng.random_range(0..100) {
                    0..40 => Persona::Casual,
                    40..55 => Persona::RunningBrowser,
                    55..67 => Persona::BigSpender,
                    67..77 => Persona::Habitual,
                    77..92 => Persona::StoreVisitor,
                    _ => Persona::Expecting,
                },
                consent: ConsentMix::pick(rng.random_range(0..100)),
            })
            .collect();
        let span_ms = days * DAY_MS;
        Self {
            users,
            rng,
            codec: Codec::new(&[]).unwrap_or_else(|error| unreachable!("bundled schemas are valid: {error}")),
            clock: end_ms - span_ms,
            step_ms: (span_ms / events.max(1) as i64).max(1),
            emitted: 0,
            planned: events.max(1),
        }
    }

    /// Each user's initial consent change, for the consent topic.
    pub fn consent_records(&self) -> Vec<SyntheticRecord> {
        let ts = self.clock - DAY_MS;
        self.users
            .iter()
            .filter_map(|user| user.consent.change(&user.id, ts).map(|change| (user, change)))
            .map(|(user, change)| SyntheticRecord {
                kind: InputKind::Consent,
                key: user.id.clone(),
                value: Some(encode_json(&change)),
            })
            .collect()
    }

    /// The next record: mostly events, now and then a withdrawal or a bad record.
    pub fn next_record(&mut self) -> SyntheticRecord {
        self.emitted += 1;
        self.clock += self.step_ms;
        // Users arrive over time: a fifth are active from the start, the rest
        // join evenly, so there are always recent (new) visitors.
        let progress = self.emitted.min(self.planned) as f64 / self.planned as f64;
        let active = ((self.users.len() as f64) * (0.2 + 0.8 * progress)).ceil() as usize;
        let index = self.rng.random_range(0..active.clamp(1, self.users.len()));
        if self.emitted.is_multiple_of(BAD_RECORD_EVERY) {
            return self.bad_record(index);
        }
        // About one user in 50 withdraws at some point, by snapshot or tombstone.
        if self.rng.random_range(0..2_500) == 0 {
            let user = &self.users[index];
            let value = self.rng.random_bool(0.5).then(|| {
                encode_json(&ConsentChange {
                    user_id: user.id.clone(),
                    ts: self.clock,
                    granted: vec![],
                    level: PersonalizationLevel::None,
                    source: "synthetic-privacy-center".to_owned(),
                })
            });
            return SyntheticRecord { kind: InputKind::Consent, key: user.id.clone(), value };
        }
        self.event(index)
    }

    fn bad_record(&mut self, index: usize) -> SyntheticRecord {
        let user_id = self.users[index].id.clone();
        let value = if self.rng.random_bool(0.5) {
            (0..self.rng.random_range(1..40)).map(|_| self.rng.random()).collect()
        } else {
            // A well-formed event under someone else's key.
            let mut record = self.event((index + 1) % self.users.len());
            record.value.take().unwrap_or_default()
        };
        SyntheticRecord { kind: InputKind::Browse, key: user_id, value: Some(value) }
    }

    fn event(&mut self, index: usize) -> SyntheticRecord {
        let rng = &mut self.rng;
        let user = &self.users[index];
        let ts = self.clock;
        let event_id = format!("ev-{}", self.emitted);
        let gpc = rng.random_range(0..200) == 0;
        let consent = gpc.then_some(EventConsent { tcf: None, gpc: true });
        let roll = rng.random_range(0..100);
        let (kind, value): (InputKind, Result<Vec<u8>, _>) = match (user.persona, roll) {
            (Persona::StoreVisitor, 0..60) => {
                let (lat, lon) = if rng.random_bool(0.5) {
                    let store = STORES[rng.random_range(0..STORES.len())];
                    (store.0 + rng.random_range(-0.002..0.002), store.1 + rng.random_range(-0.002..0.002))
                } else {
                    (rng.random_range(47.5..54.5), rng.random_range(6.0..14.5))
                };
                let event =
                    LocationEvent { event_id, user_id: user.id.clone(), ts, lat, lon, accuracy_m: Some(12.0), consent };
                (InputKind::Location, self.encode(InputKind::Location, &event))
            }
            (Persona::Habitual, 0..50) | (Persona::BigSpender, 0..30) | (Persona::Expecting, 0..30) | (_, 0..5) => {
                let (product, category, price_cents) = match user.persona {
                    Persona::Habitual if rng.random_bool(0.92) => ("p-coffee-beans".to_owned(), "grocery", 1_299),
                    Persona::BigSpender => {
                        (format!("p-tv-{}", rng.random_range(0..50)), "electronics", rng.random_range(9_000..40_000))
                    }
                    Persona::Expecting => (format!("p-prenatal-{}", rng.random_range(0..5)), "prenatal", 2_499),
                    Persona::RunningBrowser if rng.random_bool(0.3) => {
                        ("p-running-shoe-1".to_owned(), "running", 11_999)
                    }
                    _ => (format!("p-{}", rng.random_range(0..5_000)), "home", rng.random_range(500..5_000)),
                };
                let event = PurchaseEvent {
                    event_id,
                    user_id: user.id.clone(),
                    ts,
                    order_id: format!("o-{}", self.emitted),
                    currency: "EUR".to_owned(),
                    total_cents: price_cents,
                    items: vec![PurchaseItem {
                        product_id: product,
                        category: category.to_owned(),
                        quantity: 1,
                        price_cents,
                    }],
                    consent,
                };
                (InputKind::Purchase, self.encode(InputKind::Purchase, &event))
            }
            _ => {
                let category = match user.persona {
                    Persona::RunningBrowser if roll < 75 => "running",
                    _ => ["shoes", "books", "kitchen", "garden", "running"][rng.random_range(0..5)],
                };
                let event = BrowseEvent {
                    event_id,
                    user_id: user.id.clone(),
                    ts,
                    session_id: Some(format!("s-{}", ts / 1_800_000)),
                    page_type: "product".to_owned(),
                    product_id: Some(format!("p-{}-{}", category, rng.random_range(0..200))),
                    category: Some(category.to_owned()),
                    url: None,
                    consent,
                };
                (InputKind::Browse, self.encode(InputKind::Browse, &event))
            }
        };
        SyntheticRecord { kind, key: self.users[index].id.clone(), value: Some(value.unwrap_or_default()) }
    }

    /// Half the records as Avro single-object, half as JSON: both paths are exercised.
    fn encode<T: serde::Serialize>(&self, kind: InputKind, value: &T) -> Result<Vec<u8>, crate::codec::SchemaError> {
        if self.emitted.is_multiple_of(2) {
            let mut out = Vec::with_capacity(128);
            self.codec.encode_input(kind, value, &mut out)?;
            Ok(out)
        } else {
            Ok(encode_json(value))
        }
    }
}

fn encode_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

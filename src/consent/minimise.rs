//! What consent allows to be kept and computed: which segments a user's
//! level and purposes make eligible, what is kept of an admitted event
//! (sensitive categories only with `sensitive`, coordinates only as precise
//! as consented), and what a narrower consent deletes from what was kept.

use super::{Purpose, Purposes};
use crate::model::{Event, PersonalizationLevel};
use crate::segments::{Segment, Tier};
use crate::state::{
    hash_present, hash_value, insert_by_time, BrowseFact, History, ItemFact, Items, LocationFact, PurchaseFact,
};

/// Without `precise_location`, coordinates are snapped to the centre of a grid
/// cell this many degrees wide: 0.05° is about 5.6 km of latitude.
pub const COARSE_GRID_DEGREES: f64 = 0.05;

/// Whether the user's level and purposes allow computing `segment` at all.
pub fn eligible(segment: &Segment, level: PersonalizationLevel, granted: Purposes) -> bool {
    let tier_allowed = match (segment.tier, level) {
        (_, PersonalizationLevel::None) => false,
        (Tier::Light, _) => true,
        (Tier::Full, PersonalizationLevel::Full) => true,
        (Tier::Sensitive, PersonalizationLevel::Full) => granted.contains(Purpose::Sensitive),
        (_, PersonalizationLevel::Light) => false,
    };
    tier_allowed && granted.contains_all(segment.needs)
}

/// Snaps coordinates to the centre of their coarse grid cell.
pub fn coarsen(lat: f64, lon: f64) -> (f64, f64) {
    let snap = |degrees: f64| ((degrees / COARSE_GRID_DEGREES).floor() + 0.5) * COARSE_GRID_DEGREES;
    (snap(lat).clamp(-90.0, 90.0), snap(lon).clamp(-180.0, 180.0))
}

/// Keeps facts as consent allows, knowing which categories are sensitive.
#[derive(Debug)]
pub struct Minimiser {
    /// Hashes of the sensitive categories: a handful, so a scan beats a hash set.
    sensitive_categories: Vec<u64>,
}

impl Minimiser {
    /// A minimiser for the configured sensitive categories.
    pub fn new(sensitive_categories: &[String]) -> Self {
        Self { sensitive_categories: sensitive_categories.iter().map(|name| hash_value(name)).collect() }
    }

    fn is_sensitive(&self, category: u64) -> bool {
        self.sensitive_categories.contains(&category)
    }

    /// Keeps what the rules need of an admitted event, at the precision and
    /// with the categories `granted` allows.
    pub fn keep(&self, history: &mut History, event: &Event, granted: Purposes) {
        let ts = event.ts();
        history.seen_at(ts);
        let sensitive_allowed = granted.contains(Purpose::Sensitive);
        let after_all_others = match event {
            Event::Browse(browse) => {
                let category = hash_present(browse.category.as_deref());
                // Nothing about a product in a sensitive category is kept without consent.
                let hidden = category.is_some_and(|category| self.is_sensitive(category.get())) && !sensitive_allowed;
                let fact = BrowseFact {
                    ts,
                    page_type: hash_value(&browse.page_type),
                    category: if hidden { None } else { category },
                    product: if hidden { None } else { hash_present(browse.product_id.as_deref()) },
                };
                insert_by_time(&mut history.browses, fact, |fact| fact.ts)
            }
            Event::Purchase(purchase) => {
                let mut total_cents = purchase.total_cents;
                let mut items = Items::with_capacity(purchase.items.len());
                for item in &purchase.items {
                    let category = hash_value(&item.category);
                    let sensitive = self.is_sensitive(category);
                    if sensitive && !sensitive_allowed {
                        let amount = item.price_cents.saturating_mul(i64::from(item.quantity));
                        total_cents = total_cents.saturating_sub(amount).max(0);
                        continue;
                    }
                    items.push(ItemFact {
                        category,
                        product: hash_value(&item.product_id),
                        quantity: item.quantity,
                        price_cents: item.price_cents,
                        sensitive,
                    });
                }
                if items.is_empty() && !purchase.items.is_empty() {
                    // Every line was sensitive: nothing is kept.
                    true
                } else {
                    let fact = PurchaseFact { ts, currency: hash_value(&purchase.currency), total_cents, items };
                    insert_by_time(&mut history.purchases, fact, |fact| fact.ts)
                }
            }
            Event::Location(location) => {
                let (lat, lon) = if granted.contains(Purpose::PreciseLocation) {
                    (location.lat, location.lon)
                } else {
                    coarsen(location.lat, location.lon)
                };
                insert_by_time(&mut history.locations, LocationFact { ts, lat, lon }, |fact| fact.ts)
            }
        };
        // A late fact moves those after it: the tallies cannot follow.
        if !after_all_others {
            history.tallies.forget();
        }
    }

    /// Deletes from `history` exactly what `granted` no longer allows:
    /// locations without `location`, precise coordinates without
    /// `precise_location`, anything sensitive without `sensitive`.
    pub fn narrow(&self, history: &mut History, granted: Purposes) {
        history.tallies.forget();
        if !granted.contains(Purpose::Location) {
            history.locations.clear();
        } else if !granted.contains(Purpose::PreciseLocation) {
            for location in &mut history.locations {
                (location.lat, location.lon) = coarsen(location.lat, location.lon);
            }
        }
        if !granted.contains(Purpose::Sensitive) {
            history.forget_sensitive();
            for browse in &mut history.browses {
                if browse.category.is_some_and(|category| self.is_sensitive(category.get())) {
                    (browse.category, browse.product) = (None, None);
                }
            }
        }
    }
}

package tactful.kstreams;

import static tactful.kstreams.Consent.Purpose.LOCATION;
import static tactful.kstreams.Consent.Purpose.PRECISE_LOCATION;
import static tactful.kstreams.Consent.Purpose.SENSITIVE;

import java.util.ArrayList;
import java.util.List;
import tactful.kstreams.UserState.BrowseFact;
import tactful.kstreams.UserState.ItemFact;
import tactful.kstreams.UserState.LocationFact;
import tactful.kstreams.UserState.PurchaseFact;

/**
 * What consent allows to be kept (CONTRACT §4, tactful's consent/minimise.rs):
 * nothing about a sensitive category without {@code sensitive}, coordinates
 * only as precise as consented, and on a narrower consent exactly what it no
 * longer allows is deleted. Facts older than any eligible segment reads are pruned.
 */
final class Minimiser {
    /** Without precise_location, coordinates snap to the centre of a cell this wide (about 5.6 km of latitude). */
    static final double COARSE_GRID_DEGREES = 0.05;

    private Minimiser() {}

    static boolean isSensitive(long category) {
        for (long sensitive : Segments.SENSITIVE_CATEGORIES) {
            if (sensitive == category) {
                return true;
            }
        }
        return false;
    }

    static double coarsen(double degrees, double limit) {
        double snapped = (Math.floor(degrees / COARSE_GRID_DEGREES) + 0.5) * COARSE_GRID_DEGREES;
        return Math.max(-limit, Math.min(limit, snapped));
    }

    /** Keeps what the rules need of an admitted event, at the precision and with the categories {@code granted} allows. */
    static void keep(UserState state, Input.Event event, int granted) {
        boolean sensitiveAllowed = (granted & SENSITIVE) != 0;
        long ts = event.ts();
        if (event instanceof Input.Browse browse) {
            long category = browse.category() == null ? BrowseFact.NONE : Fnv.hash(browse.category());
            boolean hidden = category != BrowseFact.NONE && isSensitive(category) && !sensitiveAllowed;
            long product = browse.productId() == null || hidden ? BrowseFact.NONE : Fnv.hash(browse.productId());
            BrowseFact fact =
                    new BrowseFact(ts, Fnv.hash(browse.pageType()), hidden ? BrowseFact.NONE : category, product);
            UserState.insertByTime(state.browses, fact, ts, BrowseFact::ts);
        } else if (event instanceof Input.Purchase purchase) {
            long total = purchase.totalCents();
            List<ItemFact> items = new ArrayList<>(purchase.items().size());
            for (Input.Item item : purchase.items()) {
                long category = Fnv.hash(item.category());
                boolean sensitive = isSensitive(category);
                if (sensitive && !sensitiveAllowed) {
                    // Nothing about the line is kept, its amount included.
                    total = Math.max(0, total - item.priceCents() * item.quantity());
                    continue;
                }
                items.add(new ItemFact(category, Fnv.hash(item.productId()), item.quantity(), item.priceCents(),
                        sensitive));
            }
            if (!items.isEmpty() || purchase.items().isEmpty()) {
                PurchaseFact fact = new PurchaseFact(ts, Fnv.hash(purchase.currency()), total, items);
                UserState.insertByTime(state.purchases, fact, ts, PurchaseFact::ts);
            }
        } else if (event instanceof Input.Location location) {
            boolean precise = (granted & PRECISE_LOCATION) != 0;
            LocationFact fact = new LocationFact(ts,
                    precise ? location.lat() : coarsen(location.lat(), 90),
                    precise ? location.lon() : coarsen(location.lon(), 180));
            UserState.insertByTime(state.locations, fact, ts, LocationFact::ts);
        }
    }

    /** Deletes exactly what {@code granted} no longer allows (a narrower consent change). */
    static void narrow(UserState state, int granted) {
        if ((granted & LOCATION) == 0) {
            state.locations.clear();
        } else if ((granted & PRECISE_LOCATION) == 0) {
            state.locations.replaceAll(fact -> new LocationFact(fact.ts(), coarsen(fact.lat(), 90),
                    coarsen(fact.lon(), 180)));
        }
        if ((granted & SENSITIVE) == 0) {
            state.purchases.replaceAll(fact -> {
                if (fact.items().stream().noneMatch(ItemFact::sensitive)) {
                    return fact;
                }
                long total = fact.totalCents();
                List<ItemFact> kept = new ArrayList<>();
                for (ItemFact item : fact.items()) {
                    if (item.sensitive()) {
                        total -= item.amountCents();
                    } else {
                        kept.add(item);
                    }
                }
                return new PurchaseFact(fact.ts(), fact.currency(), total, kept);
            });
            state.purchases.removeIf(fact -> fact.items().isEmpty());
            state.browses.replaceAll(fact -> isSensitive(fact.category())
                    ? new BrowseFact(fact.ts(), fact.pageType(), BrowseFact.NONE, BrowseFact.NONE) : fact);
        }
    }

    /** Drops the facts no segment the user's consent allows can read any more at {@code now}. */
    static void prune(UserState state, long now, Segments.Retention retention) {
        int browses = 0;
        while (browses < state.browses.size()
                && expired(state.browses.get(browses).ts(), now, retention.browseMs())) {
            browses++;
        }
        state.browses.subList(0, browses).clear();
        int locations = 0;
        while (locations < state.locations.size()
                && expired(state.locations.get(locations).ts(), now, retention.locationMs())) {
            locations++;
        }
        state.locations.subList(0, locations).clear();
        int purchases = 0;
        while (purchases < state.purchases.size()) {
            long ts = state.purchases.get(purchases).ts();
            boolean withinWindow = !expired(ts, now, retention.purchaseMs());
            boolean amongLast = state.purchases.size() - purchases <= retention.purchaseLast()
                    && !expired(ts, now, Segments.MAX_RETENTION_MS);
            if (withinWindow || amongLast) {
                break;
            }
            purchases++;
        }
        state.purchases.subList(0, purchases).clear();
    }

    private static boolean expired(long ts, long now, long windowMs) {
        return ts <= now - Math.min(windowMs, Segments.MAX_RETENTION_MS);
    }
}

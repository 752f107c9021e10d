package tactful.kstreams;

import static tactful.kstreams.Consent.Purpose.ADS;
import static tactful.kstreams.Consent.Purpose.EMAIL;
import static tactful.kstreams.Consent.Purpose.LOCATION;
import static tactful.kstreams.Consent.Purpose.PERSONALIZATION;
import static tactful.kstreams.Consent.Purpose.PRECISE_LOCATION;
import static tactful.kstreams.Consent.Purpose.PUSH;
import static tactful.kstreams.Consent.Purpose.SENSITIVE;
import static tactful.kstreams.Consent.Purpose.WEB;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import tactful.kstreams.UserState.BrowseFact;
import tactful.kstreams.UserState.ItemFact;
import tactful.kstreams.UserState.LocationFact;
import tactful.kstreams.UserState.PurchaseFact;

/**
 * tactful's default catalogue (deploy/segments.toml), compiled into code:
 * the seven segments with their tiers, channels, needed purposes, windows,
 * rules and reasons, evaluated in event time over the user's facts with the
 * same window edges as tactful ({@code now - window < ts <= now}). The peer
 * does not read segment files: this is the one catalogue it benchmarks.
 */
final class Segments {
    static final long HOUR_MS = 3_600_000L;
    static final long DAY_MS = 24 * HOUR_MS;
    /** Nothing is kept longer than this, whatever a rule asks (tactful's max_retention_days). */
    static final long MAX_RETENTION_MS = 365 * DAY_MS;
    /** A user without an applied event this long is deleted (tactful's idle_user_days). */
    static final long IDLE_USER_MS = 365 * DAY_MS;

    enum Tier { LIGHT, FULL, SENSITIVE }

    /** The reason's figures of one evaluation (a segment here captures at most two). */
    record Figures(double first, double second) {}

    /** One segment: what it is allowed, what it keeps, and its rule (null figures = not a member). */
    record Segment(String id, Tier tier, int channels, int needs, Retention retention,
                   java.util.function.BiFunction<UserState, Long, Figures> rule,
                   java.util.function.Function<Figures, String> reason) {}

    /** How long each kind of fact is kept for a segment (tactful's Retention). */
    record Retention(long browseMs, long purchaseMs, int purchaseLast, long locationMs) {
        static final Retention NONE = new Retention(0, 0, 0, 0);

        Retention union(Retention other) {
            return new Retention(Math.max(browseMs, other.browseMs), Math.max(purchaseMs, other.purchaseMs),
                    Math.max(purchaseLast, other.purchaseLast), Math.max(locationMs, other.locationMs));
        }
    }

    /** Sensitive product categories (tactful's default privacy.sensitive_categories). */
    static final long[] SENSITIVE_CATEGORIES = {Fnv.hash("prenatal"), Fnv.hash("pharmacy")};

    private static final long RUNNING = Fnv.hash("running");
    private static final long PRENATAL = Fnv.hash("prenatal");
    private static final double[][] STORES = {{52.5246, 13.4020}, {53.5503, 9.9937}, {48.1372, 11.5755}};
    private static final double NEAR_STORE_RADIUS_M = 500;
    private static final double EARTH_RADIUS_M = 6_371_008.8;

    /** The segments in id order: the order memberships are published in. */
    static final List<Segment> BY_ID = List.of(
            new Segment("creature_of_habit", Tier.FULL, EMAIL | PUSH, PERSONALIZATION,
                    new Retention(0, 0, 10, 0),
                    (state, now) -> {
                        double same = mostCommonProductOfLast(state, now, 10);
                        return same >= 9 ? new Figures(same, 0) : null;
                    },
                    figures -> "Bought the same product in " + (long) figures.first() + " of the last 10 purchases."),
            new Segment("expecting_parent", Tier.SENSITIVE, EMAIL, PERSONALIZATION | SENSITIVE,
                    new Retention(0, 180 * DAY_MS, 0, 0),
                    (state, now) -> {
                        double items = countItems(state, now, 180 * DAY_MS, PRENATAL);
                        return items >= 1 ? new Figures(items, 0) : null;
                    },
                    figures -> "Bought " + counted(figures.first(), "prenatal product", "prenatal products")
                            + " in the last 180 days."),
            new Segment("high_value", Tier.FULL, WEB | EMAIL | PUSH | ADS, PERSONALIZATION,
                    new Retention(0, 90 * DAY_MS, 0, 0),
                    (state, now) -> {
                        // Both measures are taken: the reason shows both figures.
                        double spent = sumPurchases(state, now, 90 * DAY_MS);
                        double orders = countPurchases(state, now, 90 * DAY_MS);
                        return spent >= 50_000 && orders >= 1 ? new Figures(spent, orders) : null;
                    },
                    figures -> "Spent " + cents(figures.first()) + " across "
                            + counted(figures.second(), "purchase", "purchases") + " in the last 90 days."),
            new Segment("near_store", Tier.FULL, PUSH, PERSONALIZATION | LOCATION | PRECISE_LOCATION,
                    new Retention(0, 0, 0, HOUR_MS),
                    (state, now) -> countNearStores(state, now, HOUR_MS) >= 1 ? new Figures(0, 0) : null,
                    figures -> "Was within 500 m of one of our stores in the last hour."),
            new Segment("new_visitor", Tier.LIGHT, WEB | EMAIL | PUSH, PERSONALIZATION,
                    new Retention(30 * DAY_MS, 0, 0, 0),
                    (state, now) -> {
                        double days = distinctBrowseDays(state, now, 30 * DAY_MS);
                        return days == 1 ? new Figures(days, 0) : null;
                    },
                    figures -> "Visited on " + (long) figures.first() + " day in the last 30 days."),
            new Segment("returning_visitor", Tier.LIGHT, WEB | EMAIL | PUSH, PERSONALIZATION,
                    new Retention(30 * DAY_MS, 0, 0, 0),
                    (state, now) -> {
                        double days = distinctBrowseDays(state, now, 30 * DAY_MS);
                        return days >= 2 ? new Figures(days, 0) : null;
                    },
                    figures -> "Visited on " + (long) figures.first() + " different days in the last 30 days."),
            new Segment("running_browser", Tier.FULL, WEB | EMAIL | PUSH | ADS, PERSONALIZATION,
                    new Retention(7 * DAY_MS, 7 * DAY_MS, 0, 0),
                    (state, now) -> {
                        double views = countBrowses(state, now, 7 * DAY_MS, RUNNING);
                        double bought = countItems(state, now, 7 * DAY_MS, RUNNING);
                        return views >= 3 && bought == 0 ? new Figures(views, 0) : null;
                    },
                    figures -> "Browsed running products " + (long) figures.first()
                            + " times in the last 7 days and has not bought any."));

    /** The windows facts leave (purchase-item windows are purchase windows): when time alone changes a profile. */
    private static final long[] BROWSE_WINDOWS = {30 * DAY_MS, 7 * DAY_MS};
    private static final long[] PURCHASE_WINDOWS = {90 * DAY_MS, 7 * DAY_MS, 180 * DAY_MS};
    private static final long[] LOCATION_WINDOWS = {HOUR_MS};

    private Segments() {}

    /** Whether the user's level and purposes allow computing {@code segment} at all. */
    static boolean eligible(Segment segment, Consent.Level level, int granted) {
        boolean tierAllowed = switch (level) {
            case NONE -> false;
            case LIGHT -> segment.tier == Tier.LIGHT;
            case FULL -> segment.tier != Tier.SENSITIVE || (granted & SENSITIVE) != 0;
        };
        return tierAllowed && (granted & segment.needs) == segment.needs;
    }

    /** Per (level, purposes): a handful of combinations, computed once each. */
    private static final Map<Integer, Retention> RETENTION_BY_CONSENT = new java.util.concurrent.ConcurrentHashMap<>();

    /** How long facts are kept for a user with {@code level} and {@code granted}: as the eligible segments read them. */
    static Retention retentionFor(Consent.Level level, int granted) {
        return RETENTION_BY_CONSENT.computeIfAbsent(level.ordinal() << 16 | granted, key -> {
            Retention kept = Retention.NONE;
            for (Segment segment : BY_ID) {
                if (eligible(segment, level, granted)) {
                    kept = kept.union(segment.retention);
                }
            }
            return kept;
        });
    }

    /** The earliest time after {@code now} at which a kept fact leaves a window; {@link UserState#NO_CHANGE} if none. */
    static long nextWindowExit(UserState state, long now) {
        long next = Long.MAX_VALUE;
        for (long window : BROWSE_WINDOWS) {
            for (BrowseFact fact : state.browses) {
                if (fact.ts() + window > now) {
                    next = Math.min(next, fact.ts() + window);
                    break;
                }
            }
        }
        for (long window : PURCHASE_WINDOWS) {
            for (PurchaseFact fact : state.purchases) {
                if (fact.ts() + window > now) {
                    next = Math.min(next, fact.ts() + window);
                    break;
                }
            }
        }
        for (long window : LOCATION_WINDOWS) {
            for (LocationFact fact : state.locations) {
                if (fact.ts() + window > now) {
                    next = Math.min(next, fact.ts() + window);
                    break;
                }
            }
        }
        return next == Long.MAX_VALUE ? UserState.NO_CHANGE : next;
    }

    // ---- measures (facts are sorted by time; windows hold now - window < ts <= now) ----

    private static boolean inWindow(long ts, long now, long windowMs) {
        return ts > now - windowMs && ts <= now;
    }

    static double distinctBrowseDays(UserState state, long now, long windowMs) {
        long[] days = new long[state.browses.size()];
        int count = 0;
        for (int i = state.browses.size() - 1; i >= 0; i--) {
            long ts = state.browses.get(i).ts();
            if (ts <= now - windowMs) {
                break;
            }
            if (ts <= now) {
                days[count++] = Math.floorDiv(ts, DAY_MS);
            }
        }
        Arrays.sort(days, 0, count);
        int distinct = 0;
        for (int i = 0; i < count; i++) {
            if (i == 0 || days[i] != days[i - 1]) {
                distinct++;
            }
        }
        return distinct;
    }

    static double countBrowses(UserState state, long now, long windowMs, long category) {
        int count = 0;
        for (int i = state.browses.size() - 1; i >= 0; i--) {
            BrowseFact fact = state.browses.get(i);
            if (fact.ts() <= now - windowMs) {
                break;
            }
            if (fact.ts() <= now && fact.category() == category) {
                count++;
            }
        }
        return count;
    }

    static double sumPurchases(UserState state, long now, long windowMs) {
        long sum = 0;
        for (int i = state.purchases.size() - 1; i >= 0; i--) {
            PurchaseFact fact = state.purchases.get(i);
            if (fact.ts() <= now - windowMs) {
                break;
            }
            if (fact.ts() <= now) {
                sum += fact.totalCents();
            }
        }
        return sum;
    }

    static double countPurchases(UserState state, long now, long windowMs) {
        int count = 0;
        for (int i = state.purchases.size() - 1; i >= 0; i--) {
            long ts = state.purchases.get(i).ts();
            if (ts <= now - windowMs) {
                break;
            }
            if (ts <= now) {
                count++;
            }
        }
        return count;
    }

    /** Purchase lines in {@code category} within the window. */
    static double countItems(UserState state, long now, long windowMs, long category) {
        int count = 0;
        for (int i = state.purchases.size() - 1; i >= 0; i--) {
            PurchaseFact fact = state.purchases.get(i);
            if (fact.ts() <= now - windowMs) {
                break;
            }
            if (fact.ts() <= now) {
                for (ItemFact item : fact.items()) {
                    if (item.category() == category) {
                        count++;
                    }
                }
            }
        }
        return count;
    }

    /**
     * How many of the last {@code last} purchases share their most common
     * product (a purchase counts once for each distinct product on its
     * lines); 0 while there are fewer purchases.
     */
    static double mostCommonProductOfLast(UserState state, long now, int last) {
        List<Long> values = new ArrayList<>(last);
        int events = 0;
        for (int i = state.purchases.size() - 1; i >= 0 && events < last; i--) {
            PurchaseFact fact = state.purchases.get(i);
            if (fact.ts() > now) {
                continue;
            }
            events++;
            int first = values.size();
            for (ItemFact item : fact.items()) {
                if (!values.subList(first, values.size()).contains(item.product())) {
                    values.add(item.product());
                }
            }
        }
        if (events < last) {
            return 0;
        }
        Map<Long, Integer> counts = new HashMap<>();
        int most = 0;
        for (Long value : values) {
            most = Math.max(most, counts.merge(value, 1, Integer::sum));
        }
        return most;
    }

    static double countNearStores(UserState state, long now, long windowMs) {
        int count = 0;
        for (int i = state.locations.size() - 1; i >= 0; i--) {
            LocationFact fact = state.locations.get(i);
            if (fact.ts() <= now - windowMs) {
                break;
            }
            if (fact.ts() <= now) {
                for (double[] store : STORES) {
                    if (distanceM(fact.lat(), fact.lon(), store[0], store[1]) <= NEAR_STORE_RADIUS_M) {
                        count++;
                        break;
                    }
                }
            }
        }
        return count;
    }

    /** Great-circle distance in metres (haversine). */
    static double distanceM(double lat1Deg, double lon1Deg, double lat2Deg, double lon2Deg) {
        double lat1 = Math.toRadians(lat1Deg);
        double lat2 = Math.toRadians(lat2Deg);
        double deltaLat = lat2 - lat1;
        double deltaLon = Math.toRadians(lon2Deg - lon1Deg);
        double a = Math.pow(Math.sin(deltaLat / 2), 2)
                + Math.cos(lat1) * Math.cos(lat2) * Math.pow(Math.sin(deltaLon / 2), 2);
        return 2 * EARTH_RADIUS_M * Math.asin(Math.min(Math.sqrt(a), 1));
    }

    // ---- reasons ----

    static String counted(double figure, String singular, String plural) {
        long count = (long) figure;
        return count + " " + (count == 1 ? singular : plural);
    }

    static String cents(double figure) {
        long cents = (long) figure;
        long abs = Math.abs(cents);
        return (cents < 0 ? "-" : "") + abs / 100 + "." + String.format("%02d", abs % 100);
    }
}

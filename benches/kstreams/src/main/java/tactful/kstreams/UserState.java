package tactful.kstreams;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * Everything held about one user beside the consent table: the facts kept
 * from applied events (as consent allows, field values as 64-bit FNV-1a
 * hashes, never in the clear), the profile last published, and the clocks.
 * The value of the {@code users} store (RocksDB, with a changelog), in the
 * binary form of {@link #SERDE}.
 */
final class UserState {
    /** No timer: nothing held changes with time alone. */
    static final long NO_CHANGE = Long.MIN_VALUE;

    /** A GPC signal on one of the user's events removed {@code ads} until a newer consent change. */
    boolean gpcOptOut;
    /** The newest applied event's time (idle users are deleted after a year). */
    long lastEvent;
    /** The user's evaluation time: the newest event time applied (or a timer's time). */
    long clock;
    /** The version of the last update published; the next is above it. */
    long version;
    /** When time alone next changes the profile (a fact leaves a window), or {@link #NO_CHANGE}. */
    long nextChange = NO_CHANGE;
    /**
     * The consent the state was last evaluated under (purpose bits and level),
     * so a timer can re-evaluate without reading the consent table: every
     * consent change of the user reaches the processor and updates it.
     */
    int granted;
    Consent.Level level = Consent.Level.NONE;
    /** Page views, purchases and location fixes kept, each oldest first. */
    final ArrayList<BrowseFact> browses = new ArrayList<>();
    final ArrayList<PurchaseFact> purchases = new ArrayList<>();
    final ArrayList<LocationFact> locations = new ArrayList<>();
    /** The profile last published, or null if none was. */
    Profile published;

    record BrowseFact(long ts, long pageType, long category, long product) {
        /** Hash value meaning "no value" (the event had none, or it is hidden). */
        static final long NONE = 0;
    }

    record ItemFact(long category, long product, int quantity, long priceCents, boolean sensitive) {
        long amountCents() {
            return priceCents * quantity;
        }
    }

    record PurchaseFact(long ts, long currency, long totalCents, List<ItemFact> items) {}

    record LocationFact(long ts, double lat, double lon) {}

    /** One published membership: the segment (catalogue index), since when, the reason's figures, channels. */
    record Member(int segment, long since, double first, double second, int channels) {}

    /** What decides whether a new update is due: level, channels and memberships as published. */
    record Profile(Consent.Level level, int channels, List<Member> members) {}

    boolean holdsProfileData() {
        return published != null || !browses.isEmpty() || !purchases.isEmpty() || !locations.isEmpty();
    }

    /** Forgets everything built for the user, keeping the version (never reused). */
    void clear() {
        gpcOptOut = false;
        lastEvent = 0;
        clock = 0;
        nextChange = NO_CHANGE;
        browses.clear();
        purchases.clear();
        locations.clear();
        published = null;
    }

    /** Strictly above every earlier version and at least {@code nowMs}: increasing across a lost state too. */
    long nextVersion(long nowMs) {
        version = Math.max(version + 1, nowMs);
        return version;
    }

    /** Inserts keeping the list sorted by time; events mostly come in order, so this is an append. */
    static <T> void insertByTime(ArrayList<T> facts, T fact, long ts, java.util.function.ToLongFunction<T> tsOf) {
        int position = facts.size();
        while (position > 0 && tsOf.applyAsLong(facts.get(position - 1)) > ts) {
            position--;
        }
        facts.add(position, fact);
    }

    // ---- the store's binary form ----

    private static final byte FORMAT = 1;

    static final Serde<UserState> SERDE = Serdes.serdeFrom(
            (Serializer<UserState>) (topic, state) -> state == null ? null : state.encode(),
            (Deserializer<UserState>) (topic, bytes) -> bytes == null ? null : decode(ByteBuffer.wrap(bytes)));

    private int encodedSize() {
        int size = 2 + 8 * 4 + 4 + 1 + 4 * 3 + 1;
        size += browses.size() * 32;
        for (PurchaseFact purchase : purchases) {
            size += 8 * 3 + 4 + purchase.items.size() * (8 * 3 + 4 + 1);
        }
        size += locations.size() * 24;
        if (published != null) {
            size += 1 + 4 + 4 + published.members.size() * (4 + 8 * 3 + 4);
        }
        return size;
    }

    private byte[] encode() {
        ByteBuffer out = ByteBuffer.allocate(encodedSize());
        out.put(FORMAT).put((byte) (gpcOptOut ? 1 : 0));
        out.putLong(lastEvent).putLong(clock).putLong(version).putLong(nextChange);
        out.putInt(granted).put((byte) level.ordinal());
        out.putInt(browses.size());
        for (BrowseFact fact : browses) {
            out.putLong(fact.ts).putLong(fact.pageType).putLong(fact.category).putLong(fact.product);
        }
        out.putInt(purchases.size());
        for (PurchaseFact fact : purchases) {
            out.putLong(fact.ts).putLong(fact.currency).putLong(fact.totalCents).putInt(fact.items.size());
            for (ItemFact item : fact.items) {
                out.putLong(item.category).putLong(item.product).putInt(item.quantity).putLong(item.priceCents)
                        .put((byte) (item.sensitive ? 1 : 0));
            }
        }
        out.putInt(locations.size());
        for (LocationFact fact : locations) {
            out.putLong(fact.ts).putDouble(fact.lat).putDouble(fact.lon);
        }
        out.put((byte) (published == null ? 0 : 1));
        if (published != null) {
            out.put((byte) published.level.ordinal()).putInt(published.channels).putInt(published.members.size());
            for (Member member : published.members) {
                out.putInt(member.segment).putLong(member.since).putDouble(member.first).putDouble(member.second)
                        .putInt(member.channels);
            }
        }
        return Arrays.copyOf(out.array(), out.position());
    }

    private static UserState decode(ByteBuffer in) {
        if (in.get() != FORMAT) {
            throw new IllegalStateException("unknown user state format");
        }
        Consent.Level[] levels = Consent.Level.values();
        UserState state = new UserState();
        state.gpcOptOut = in.get() == 1;
        state.lastEvent = in.getLong();
        state.clock = in.getLong();
        state.version = in.getLong();
        state.nextChange = in.getLong();
        state.granted = in.getInt();
        state.level = levels[in.get()];
        for (int i = in.getInt(); i > 0; i--) {
            state.browses.add(new BrowseFact(in.getLong(), in.getLong(), in.getLong(), in.getLong()));
        }
        for (int i = in.getInt(); i > 0; i--) {
            long ts = in.getLong();
            long currency = in.getLong();
            long total = in.getLong();
            int count = in.getInt();
            List<ItemFact> items = new ArrayList<>(count);
            for (int j = 0; j < count; j++) {
                items.add(new ItemFact(in.getLong(), in.getLong(), in.getInt(), in.getLong(), in.get() == 1));
            }
            state.purchases.add(new PurchaseFact(ts, currency, total, items));
        }
        for (int i = in.getInt(); i > 0; i--) {
            state.locations.add(new LocationFact(in.getLong(), in.getDouble(), in.getDouble()));
        }
        if (in.get() == 1) {
            Consent.Level level = levels[in.get()];
            int channels = in.getInt();
            int count = in.getInt();
            List<Member> members = new ArrayList<>(count);
            for (int i = 0; i < count; i++) {
                members.add(new Member(in.getInt(), in.getLong(), in.getDouble(), in.getDouble(), in.getInt()));
            }
            state.published = new Profile(level, channels, members);
        }
        return state;
    }
}

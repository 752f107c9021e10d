package tactful.kstreams;

import java.util.List;

/**
 * One record of an event topic as the deserializer hands it on: a decoded,
 * validated event, or a bad record kept with its original bytes for the
 * dead-letter topic (CONTRACT §6). Only what the rules and the consent gate
 * read is kept; event ids, URLs, sessions and order ids are dropped at decode.
 */
public sealed interface Input {

    /** A decoded event of one of the three event topics. */
    sealed interface Event extends Input {
        String userId();

        /** Event time, epoch milliseconds UTC. */
        long ts();

        /** The device's signals sent with the event (never null; {@link Signals#NONE} when absent). */
        Signals signals();

        /** The value as read, kept for a dead letter if the key turns out not to match. */
        byte[] raw();
    }

    /** A page view. {@code productId} and {@code category} may be null. */
    record Browse(String userId, long ts, String pageType, String productId, String category, Signals signals,
                  byte[] raw) implements Event {}

    /** An order, with its lines. */
    record Purchase(String userId, long ts, String currency, long totalCents, List<Item> items, Signals signals,
                    byte[] raw) implements Event {}

    /** One line of an order. */
    record Item(String productId, String category, int quantity, long priceCents) {}

    /** A location fix, in degrees. */
    record Location(String userId, long ts, double lat, double lon, Signals signals, byte[] raw) implements Event {}

    /**
     * A record that cannot be applied; {@code reason} is one of tactful's
     * rejection labels (undecodable, unknown_schema, missing_field, absurd_value, ...).
     */
    record Bad(String reason, byte[] raw) implements Input {}

    /** The consent signals a device attached to an event: an IAB TCF v2 string (or null) and GPC. */
    record Signals(String tcf, boolean gpc) {
        static final Signals NONE = new Signals(null, false);

        static Signals of(String tcf, boolean gpc) {
            return tcf == null && !gpc ? NONE : new Signals(tcf, gpc);
        }
    }
}

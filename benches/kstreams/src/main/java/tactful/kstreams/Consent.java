package tactful.kstreams;

import java.nio.ByteBuffer;
import java.util.List;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * The consent in force for one user (CONTRACT §4): the purposes granted as
 * bits (see {@link Purpose}), the personalization level and when the user chose.
 * This is the value of the consent KTable; its store and changelog hold it in
 * the 13-byte form of {@link #SERDE}.
 */
public record Consent(int granted, Level level, long ts) {

    /** How much personalization the user wants. The order is the Avro enum's. */
    public enum Level { NONE, LIGHT, FULL }

    /** The purposes, with the bit each takes in {@link #granted}. */
    public static final class Purpose {
        public static final int PERSONALIZATION = 1;
        public static final int LOCATION = 1 << 1;
        public static final int PRECISE_LOCATION = 1 << 2;
        public static final int SENSITIVE = 1 << 3;
        public static final int MEASUREMENT = 1 << 4;
        public static final int WEB = 1 << 5;
        public static final int EMAIL = 1 << 6;
        public static final int PUSH = 1 << 7;
        public static final int ADS = 1 << 8;
        /** The channel purposes, in the order channel lists are published in. */
        public static final int[] CHANNELS = {WEB, EMAIL, PUSH, ADS};
        public static final String[] CHANNEL_NAMES = {"web", "email", "push", "ads"};
        public static final int ALL_CHANNELS = WEB | EMAIL | PUSH | ADS;

        private Purpose() {}

        /** The bit of a purpose name; 0 for names this version does not know (a CMP may be ahead of us). */
        static int parse(String name) {
            return switch (name) {
                case "personalization" -> PERSONALIZATION;
                case "location" -> LOCATION;
                case "precise_location" -> PRECISE_LOCATION;
                case "sensitive" -> SENSITIVE;
                case "measurement" -> MEASUREMENT;
                case "web" -> WEB;
                case "email" -> EMAIL;
                case "push" -> PUSH;
                case "ads" -> ADS;
                default -> 0;
            };
        }

        /** The published names of the channel bits in {@code purposes}, in canonical order. */
        static List<String> channelNames(int purposes) {
            var names = new java.util.ArrayList<String>(4);
            for (int i = 0; i < CHANNELS.length; i++) {
                if ((purposes & CHANNELS[i]) != 0) {
                    names.add(CHANNEL_NAMES[i]);
                }
            }
            return names;
        }
    }

    /** The consent a {@code ConsentChange} with these purpose names records. */
    static Consent of(List<String> grantedNames, Level level, long ts) {
        int granted = 0;
        for (String name : grantedNames) {
            granted |= Purpose.parse(name);
        }
        return new Consent(granted, level, ts);
    }

    boolean grants(int purposes) {
        return (granted & purposes) == purposes;
    }

    /** A profile may exist at all: {@code personalization} granted and a level above NONE. */
    boolean allowsProfile() {
        return grants(Purpose.PERSONALIZATION) && level != Level.NONE;
    }

    /** The purposes in force once a GPC signal has taken {@code ads} away. */
    int effective(boolean gpcOptOut) {
        return gpcOptOut ? granted & ~Purpose.ADS : granted;
    }

    /** The store and changelog form: granted (4 bytes), level (1), ts (8). */
    public static final Serde<Consent> SERDE = Serdes.serdeFrom(
            (Serializer<Consent>) (topic, consent) -> consent == null ? null
                    : ByteBuffer.allocate(13).putInt(consent.granted).put((byte) consent.level.ordinal())
                            .putLong(consent.ts).array(),
            (Deserializer<Consent>) (topic, bytes) -> {
                if (bytes == null) {
                    return null;
                }
                ByteBuffer buffer = ByteBuffer.wrap(bytes);
                return new Consent(buffer.getInt(), Level.values()[buffer.get()], buffer.getLong());
            });
}

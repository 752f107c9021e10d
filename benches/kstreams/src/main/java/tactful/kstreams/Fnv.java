package tactful.kstreams;

import java.nio.charset.StandardCharsets;

/** 64-bit FNV-1a, tactful's stable hash of field values: state keeps hashes, not product ids or categories. */
final class Fnv {
    private static final long OFFSET_BASIS = 0xcbf29ce484222325L;
    private static final long PRIME = 0x100000001b3L;

    private Fnv() {}

    /** The hash of the UTF-8 bytes of {@code value} (ASCII, the common case, without encoding it first). */
    static long hash(String value) {
        long hash = OFFSET_BASIS;
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            if (c >= 0x80) {
                return hashBytes(value.getBytes(StandardCharsets.UTF_8));
            }
            hash ^= c;
            hash *= PRIME;
        }
        return hash;
    }

    private static long hashBytes(byte[] bytes) {
        long hash = OFFSET_BASIS;
        for (byte b : bytes) {
            hash ^= b & 0xff;
            hash *= PRIME;
        }
        return hash;
    }
}

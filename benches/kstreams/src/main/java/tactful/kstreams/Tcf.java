package tactful.kstreams;

/**
 * IAB TCF v2 TC strings, as far as the consent gate needs them (CONTRACT §4):
 * purposes 1, 5 and 6 must be granted, and special feature 1 (precise
 * geolocation) where precise location would be used. Only the core segment
 * (before the first '.') is read, and all of it must be well formed: a string
 * that cannot be decoded counts as a refusal (fail closed).
 */
final class Tcf {
    private static final int[] NEEDED_PURPOSES = {1, 5, 6};
    private static final int PRECISE_GEOLOCATION = 1;

    private Tcf() {}

    /** Whether {@code text} grants what applying an event needs. */
    static boolean grants(String text, boolean preciseLocation) {
        try {
            Bits bits = new Bits(text);
            if (bits.read(6) != 2) {
                return false; // only version 2
            }
            bits.skip(36 + 36 + 12 + 12 + 6); // created, last updated, CMP id and version, consent screen
            bits.letters(); // consent language
            bits.skip(12 + 6 + 1 + 1); // vendor list version, policy version, service specific, non-standard texts
            long specialFeatures = bits.read(12);
            long purposes = bits.read(24);
            bits.skip(24 + 1); // legitimate interests, purpose one treatment
            bits.letters(); // publisher country
            bits.vendorSection(); // vendor consents
            bits.vendorSection(); // vendor legitimate interests
            bits.publisherRestrictions();
            for (int purpose : NEEDED_PURPOSES) {
                if ((purposes >> (24 - purpose) & 1) == 0) {
                    return false;
                }
            }
            return !preciseLocation || (specialFeatures >> (12 - PRECISE_GEOLOCATION) & 1) == 1;
        } catch (IllegalArgumentException undecodable) {
            return false;
        }
    }

    /** base64url text read as bits, most significant first, six per character. */
    private static final class Bits {
        private final String text;
        private int position;

        Bits(String text) {
            int dot = text.indexOf('.');
            String core = dot < 0 ? text : text.substring(0, dot);
            int end = core.length();
            while (end > 0 && core.charAt(end - 1) == '=') {
                end--;
            }
            if (end == 0) {
                throw new IllegalArgumentException("empty");
            }
            this.text = core.substring(0, end);
            for (int i = 0; i < this.text.length(); i++) {
                sextet(this.text.charAt(i));
            }
        }

        private static int sextet(char c) {
            if (c >= 'A' && c <= 'Z') return c - 'A';
            if (c >= 'a' && c <= 'z') return c - 'a' + 26;
            if (c >= '0' && c <= '9') return c - '0' + 52;
            if (c == '-') return 62;
            if (c == '_') return 63;
            throw new IllegalArgumentException("not base64url");
        }

        long read(int width) {
            if ((long) position + width > (long) text.length() * 6) {
                throw new IllegalArgumentException("truncated");
            }
            long value = 0;
            for (int i = 0; i < width; i++, position++) {
                value = value << 1 | (sextet(text.charAt(position / 6)) >> (5 - position % 6) & 1);
            }
            return value;
        }

        void skip(int width) {
            if ((long) position + width > (long) text.length() * 6) {
                throw new IllegalArgumentException("truncated");
            }
            position += width;
        }

        /** Two letters A-Z, six bits each. */
        void letters() {
            for (int i = 0; i < 2; i++) {
                if (read(6) > 25) {
                    throw new IllegalArgumentException("letter outside A-Z");
                }
            }
        }

        /** MaxVendorId, then a bit field or a list of ranges. */
        void vendorSection() {
            int maxVendorId = (int) read(16);
            if (read(1) == 0) {
                skip(maxVendorId);
            } else {
                ranges();
            }
        }

        private void ranges() {
            int entries = (int) read(12);
            for (int i = 0; i < entries; i++) {
                boolean isRange = read(1) == 1;
                long start = read(16);
                if (isRange && read(16) < start) {
                    throw new IllegalArgumentException("vendor range ends before it starts");
                }
            }
        }

        void publisherRestrictions() {
            int restrictions = (int) read(12);
            for (int i = 0; i < restrictions; i++) {
                skip(6 + 2); // purpose id, restriction type
                ranges();
            }
        }
    }
}

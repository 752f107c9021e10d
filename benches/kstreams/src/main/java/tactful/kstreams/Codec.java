package tactful.kstreams;

import com.fasterxml.jackson.annotation.JsonIgnoreProperties;
import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.ObjectReader;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.MissingSchemaException;
import org.apache.avro.message.SchemaStore;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import tactful.v1.BrowseEvent;
import tactful.v1.ConsentChange;
import tactful.v1.EventConsent;
import tactful.v1.LocationEvent;
import tactful.v1.PurchaseEvent;
import tactful.v1.PurchaseItem;

/**
 * Decoding the input topics as tactful accepts them (CONTRACT §2), each
 * value's encoding recognised by its first bytes:
 * <ul>
 * <li>{@code C3 01} + the 8-byte CRC-64-AVRO fingerprint: Avro single-object
 * encoding, read by Java Avro's own {@link BinaryMessageDecoder} with the
 * classes generated from {@code schemas/}; writer schemas are found by
 * fingerprint in a {@link SchemaStore} holding the contract's schemas.</li>
 * <li>{@code {}: one JSON object with the contract's field names (Jackson).</li>
 * <li>{@code 00} (Confluent framing) needs a schema registry, which the peer
 * is not given: such a value is bad input ({@code unknown_schema}).</li>
 * </ul>
 * Validation (absurd values, CONTRACT §6) happens here too; the key check
 * needs the key and happens in the processor.
 */
final class Codec {
    /** A record further than this from now is an absurd value (tactful's default, 400 days). */
    static final long EVENT_TIME_TOLERANCE_MS = 400L * 24 * 3600 * 1000;

    private static final SchemaStore.Cache CONTRACT_SCHEMAS = new SchemaStore.Cache();

    static {
        CONTRACT_SCHEMAS.addSchema(BrowseEvent.getClassSchema());
        CONTRACT_SCHEMAS.addSchema(PurchaseEvent.getClassSchema());
        CONTRACT_SCHEMAS.addSchema(LocationEvent.getClassSchema());
        CONTRACT_SCHEMAS.addSchema(ConsentChange.getClassSchema());
    }

    // Thread-safe (per-thread buffers inside), so one of each serves every stream thread.
    private static final BinaryMessageDecoder<BrowseEvent> BROWSE_AVRO = BrowseEvent.createDecoder(CONTRACT_SCHEMAS);
    private static final BinaryMessageDecoder<PurchaseEvent> PURCHASE_AVRO =
            PurchaseEvent.createDecoder(CONTRACT_SCHEMAS);
    private static final BinaryMessageDecoder<LocationEvent> LOCATION_AVRO =
            LocationEvent.createDecoder(CONTRACT_SCHEMAS);
    private static final BinaryMessageDecoder<ConsentChange> CONSENT_AVRO =
            ConsentChange.createDecoder(CONTRACT_SCHEMAS);

    // JSON: unknown fields are ignored (forward compatibility), as tactful does.
    private static final ObjectMapper JSON =
            new ObjectMapper().configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);
    private static final ObjectReader BROWSE_JSON = JSON.readerFor(BrowseJson.class);
    private static final ObjectReader PURCHASE_JSON = JSON.readerFor(PurchaseJson.class);
    private static final ObjectReader LOCATION_JSON = JSON.readerFor(LocationJson.class);
    private static final ObjectReader CONSENT_JSON = JSON.readerFor(ConsentJson.class);

    private Codec() {}

    /** Which event topic a record came from: decides its record type. */
    enum Kind { BROWSE, PURCHASE, LOCATION }

    /** The deserializer of the three event topics; never throws: bad input becomes {@link Input.Bad}. */
    static Deserializer<Input> events(String browseTopic, String purchaseTopic, String locationTopic) {
        return (topic, bytes) -> {
            Kind kind = topic.equals(browseTopic) ? Kind.BROWSE
                    : topic.equals(purchaseTopic) ? Kind.PURCHASE
                    : topic.equals(locationTopic) ? Kind.LOCATION
                    : null;
            if (kind == null) {
                throw new IllegalStateException("not an event topic: " + topic);
            }
            return decodeEvent(kind, bytes, System.currentTimeMillis());
        };
    }

    /**
     * A consent change of the consent topic, or null for a tombstone. Bad
     * input throws {@link SerializationException}: the deserialization
     * exception handler counts it and goes on ({@link Peer.CountingHandler}).
     */
    static final Deserializer<ConsentRecord> CONSENT = (topic, bytes) -> {
        if (bytes == null) {
            return null;
        }
        try {
            ConsentRecord record = decodeConsent(bytes);
            if (record.consent().ts() - System.currentTimeMillis() > EVENT_TIME_TOLERANCE_MS) {
                throw new SerializationException("absurd_value");
            }
            return record;
        } catch (IOException | RuntimeException error) {
            throw new SerializationException("undecodable consent change", error);
        }
    };

    /** A decoded consent change: the user it names and the consent it records. */
    record ConsentRecord(String userId, Consent consent) {}

    static Input decodeEvent(Kind kind, byte[] bytes, long nowMs) {
        if (bytes == null) {
            return new Input.Bad("no_value", new byte[0]);
        }
        if (bytes.length == 0) {
            return new Input.Bad("undecodable", bytes);
        }
        Input.Event event;
        try {
            if (bytes[0] == (byte) 0xC3) {
                event = switch (kind) {
                    case BROWSE -> fromAvro(BROWSE_AVRO.decode(bytes), bytes);
                    case PURCHASE -> fromAvro(PURCHASE_AVRO.decode(bytes), bytes);
                    case LOCATION -> fromAvro(LOCATION_AVRO.decode(bytes), bytes);
                };
            } else if (bytes[0] == '{') {
                event = switch (kind) {
                    case BROWSE -> BROWSE_JSON.<BrowseJson>readValue(bytes).toEvent(bytes);
                    case PURCHASE -> PURCHASE_JSON.<PurchaseJson>readValue(bytes).toEvent(bytes);
                    case LOCATION -> LOCATION_JSON.<LocationJson>readValue(bytes).toEvent(bytes);
                };
            } else if (bytes[0] == 0) {
                return new Input.Bad("unknown_schema", bytes);
            } else {
                return new Input.Bad("undecodable", bytes);
            }
        } catch (MissingSchemaException unknownFingerprint) {
            return new Input.Bad("unknown_schema", bytes);
        } catch (MissingField missing) {
            return new Input.Bad("missing_field", bytes);
        } catch (IOException | RuntimeException malformed) {
            return new Input.Bad("undecodable", bytes);
        }
        String absurd = absurdValue(event, nowMs);
        return absurd == null ? event : new Input.Bad("absurd_value", bytes);
    }

    /** Why an event's values are absurd (CONTRACT §6), or null if they are not. */
    private static String absurdValue(Input.Event event, long nowMs) {
        if (Math.abs(nowMs - event.ts()) > EVENT_TIME_TOLERANCE_MS) {
            return "timestamp too far from now";
        }
        if (event instanceof Input.Location location) {
            if (!(location.lat() >= -90 && location.lat() <= 90) || !(location.lon() >= -180 && location.lon() <= 180)) {
                return "coordinates out of range";
            }
        }
        if (event instanceof Input.Purchase purchase) {
            if (purchase.totalCents() < 0) {
                return "negative total_cents";
            }
            for (Input.Item item : purchase.items()) {
                if (item.quantity() < 0 || item.priceCents() < 0) {
                    return "negative quantity or price_cents";
                }
            }
        }
        return null;
    }

    static ConsentRecord decodeConsent(byte[] bytes) throws IOException {
        if (bytes.length > 0 && bytes[0] == (byte) 0xC3) {
            ConsentChange change = CONSENT_AVRO.decode(bytes);
            return new ConsentRecord(change.getUserId(), Consent.of(change.getGranted(),
                    Consent.Level.valueOf(change.getLevel().name()), change.getTs().toEpochMilli()));
        }
        if (bytes.length > 0 && bytes[0] == '{') {
            ConsentJson change = CONSENT_JSON.readValue(bytes);
            if (change.userId == null || change.ts == null || change.granted == null || change.level == null
                    || change.source == null) {
                throw new MissingField();
            }
            return new ConsentRecord(change.userId, Consent.of(change.granted, change.level, change.ts));
        }
        throw new IOException("neither avro single-object nor json");
    }

    // ---- Avro records → inputs ----

    private static Input.Signals signals(EventConsent consent) {
        return consent == null ? Input.Signals.NONE : Input.Signals.of(consent.getTcf(), consent.getGpc());
    }

    private static Input.Event fromAvro(BrowseEvent event, byte[] raw) {
        return new Input.Browse(event.getUserId(), event.getTs().toEpochMilli(), event.getPageType(),
                event.getProductId(), event.getCategory(), signals(event.getConsent()), raw);
    }

    private static Input.Event fromAvro(PurchaseEvent event, byte[] raw) {
        List<Input.Item> items = new ArrayList<>(event.getItems().size());
        for (PurchaseItem item : event.getItems()) {
            items.add(new Input.Item(item.getProductId(), item.getCategory(), item.getQuantity(),
                    item.getPriceCents()));
        }
        return new Input.Purchase(event.getUserId(), event.getTs().toEpochMilli(), event.getCurrency(),
                event.getTotalCents(), items, signals(event.getConsent()), raw);
    }

    private static Input.Event fromAvro(LocationEvent event, byte[] raw) {
        return new Input.Location(event.getUserId(), event.getTs().toEpochMilli(), event.getLat(), event.getLon(),
                signals(event.getConsent()), raw);
    }

    // ---- JSON shapes of the contract records (boxed: a missing required field is null) ----

    /** A JSON record lacked a field the contract requires. */
    static final class MissingField extends RuntimeException {
        MissingField() {
            super(null, null, false, false);
        }
    }

    private static <T> T required(T value) {
        if (value == null) {
            throw new MissingField();
        }
        return value;
    }

    @JsonIgnoreProperties(ignoreUnknown = true)
    record SignalsJson(@JsonProperty("tcf") String tcf, @JsonProperty("gpc") Boolean gpc) {
        static Input.Signals of(SignalsJson json) {
            return json == null ? Input.Signals.NONE : Input.Signals.of(json.tcf, json.gpc != null && json.gpc);
        }
    }

    @JsonIgnoreProperties(ignoreUnknown = true)
    record BrowseJson(@JsonProperty("event_id") String eventId, @JsonProperty("user_id") String userId,
                      @JsonProperty("ts") Long ts, @JsonProperty("page_type") String pageType,
                      @JsonProperty("product_id") String productId, @JsonProperty("category") String category,
                      @JsonProperty("consent") SignalsJson consent) {
        Input.Event toEvent(byte[] raw) {
            required(eventId);
            return new Input.Browse(required(userId), required(ts), required(pageType), productId, category,
                    SignalsJson.of(consent), raw);
        }
    }

    @JsonIgnoreProperties(ignoreUnknown = true)
    record ItemJson(@JsonProperty("product_id") String productId, @JsonProperty("category") String category,
                    @JsonProperty("quantity") Integer quantity, @JsonProperty("price_cents") Long priceCents) {}

    @JsonIgnoreProperties(ignoreUnknown = true)
    record PurchaseJson(@JsonProperty("event_id") String eventId, @JsonProperty("user_id") String userId,
                        @JsonProperty("ts") Long ts, @JsonProperty("order_id") String orderId,
                        @JsonProperty("currency") String currency, @JsonProperty("total_cents") Long totalCents,
                        @JsonProperty("items") List<ItemJson> items, @JsonProperty("consent") SignalsJson consent) {
        Input.Event toEvent(byte[] raw) {
            required(eventId);
            required(orderId);
            List<Input.Item> lines = new ArrayList<>(required(items).size());
            for (ItemJson item : items) {
                lines.add(new Input.Item(required(item.productId), required(item.category), required(item.quantity),
                        required(item.priceCents)));
            }
            return new Input.Purchase(required(userId), required(ts), required(currency), required(totalCents), lines,
                    SignalsJson.of(consent), raw);
        }
    }

    @JsonIgnoreProperties(ignoreUnknown = true)
    record LocationJson(@JsonProperty("event_id") String eventId, @JsonProperty("user_id") String userId,
                        @JsonProperty("ts") Long ts, @JsonProperty("lat") Double lat, @JsonProperty("lon") Double lon,
                        @JsonProperty("consent") SignalsJson consent) {
        Input.Event toEvent(byte[] raw) {
            required(eventId);
            return new Input.Location(required(userId), required(ts), required(lat), required(lon),
                    SignalsJson.of(consent), raw);
        }
    }

    @JsonIgnoreProperties(ignoreUnknown = true)
    record ConsentJson(@JsonProperty("user_id") String userId, @JsonProperty("ts") Long ts,
                       @JsonProperty("granted") List<String> granted, @JsonProperty("level") Consent.Level level,
                       @JsonProperty("source") String source) {}
}

package tactful.kstreams;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.LongAdder;

/**
 * The peer's own counters, served as Prometheus text on 127.0.0.1 so the
 * bench script can tell when every input record has been processed, as it
 * does for tactful's /metrics. Labels are bounded: never a user id.
 */
final class Metrics {
    /**
     * How far each input partition (topic-partition) has been processed: the
     * next offset. Their sum is the input records processed on fresh topics
     * (which is what the bench reads), and unlike a counter it does not count
     * a record twice when a task is rewound after an aborted transaction.
     */
    private static final Map<String, java.util.concurrent.atomic.AtomicLong> NEXT_OFFSETS = new ConcurrentHashMap<>();
    static final LongAdder APPLIED = new LongAdder();
    static final LongAdder UPDATES = new LongAdder();
    static final LongAdder TOMBSTONES = new LongAdder();
    private static final Map<String, LongAdder> DROPPED = new ConcurrentHashMap<>();
    private static final Map<String, LongAdder> REJECTED = new ConcurrentHashMap<>();

    private Metrics() {}

    static void processed(String topic, int partition, long offset) {
        NEXT_OFFSETS.computeIfAbsent(topic + "-" + partition, key -> new java.util.concurrent.atomic.AtomicLong())
                .accumulateAndGet(offset + 1, Math::max);
    }

    static void dropped(String reason) {
        DROPPED.computeIfAbsent(reason, key -> new LongAdder()).increment();
    }

    static void rejected(String reason) {
        REJECTED.computeIfAbsent(reason, key -> new LongAdder()).increment();
    }

    static String text() {
        StringBuilder out = new StringBuilder();
        long processed = NEXT_OFFSETS.values().stream().mapToLong(java.util.concurrent.atomic.AtomicLong::get).sum();
        out.append("kstreams_peer_records_processed_total ").append(processed).append('\n');
        out.append("kstreams_peer_events_applied_total ").append(APPLIED.sum()).append('\n');
        new TreeMap<>(DROPPED).forEach((reason, count) -> out.append("kstreams_peer_events_dropped_total{reason=\"")
                .append(reason).append("\"} ").append(count.sum()).append('\n'));
        new TreeMap<>(REJECTED).forEach((reason, count) -> out.append("kstreams_peer_records_rejected_total{reason=\"")
                .append(reason).append("\"} ").append(count.sum()).append('\n'));
        out.append("kstreams_peer_profile_updates_total{type=\"update\"} ").append(UPDATES.sum()).append('\n');
        out.append("kstreams_peer_profile_updates_total{type=\"tombstone\"} ").append(TOMBSTONES.sum()).append('\n');
        return out.toString();
    }

    /** Serves {@code GET /metrics} on 127.0.0.1:{@code port}. */
    static HttpServer serve(int port) throws IOException {
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 0);
        server.createContext("/metrics", exchange -> {
            byte[] body = text().getBytes(StandardCharsets.UTF_8);
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.start();
        return server;
    }
}

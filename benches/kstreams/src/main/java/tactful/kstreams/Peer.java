package tactful.kstreams;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.config.TopicConfig;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.ErrorHandlerContext;
import org.apache.kafka.streams.errors.LogAndContinueExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Joined;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;
import tactful.kstreams.ProfileProcessor.ConsentChanged;
import tactful.kstreams.ProfileProcessor.Gated;
import tactful.kstreams.ProfileProcessor.Output;
import tactful.kstreams.ProfileProcessor.Step;

/**
 * The Kafka Streams application: the topology and every setting, with its reason.
 *
 * <pre>
 * consent.changes ─► check key ─► toTable "consent" (RocksDB, logged) ─┬─ toStream ─────────────┐
 *                                                                      │ (changes: enforce)    │
 * events.browse ─┐                                                     ▼                       ▼
 * events.purchase├─► decode + validate ─► leftJoin(consent) ─────────► merge ─► profiles ─► profiles.updates
 * events.location┘                                                            │ "users"       (or dead letters)
 *                                                                             ▼ (RocksDB, logged)
 * </pre>
 *
 * Why a KTable and not a GlobalKTable: the consent topic is co-partitioned
 * with the event topics (CONTRACT §1: same partition count, keyed by user id,
 * Java's partitioner), so each task needs only its own partition of it. A
 * GlobalKTable would make every instance read and store the whole topic, and
 * its updates are not ordered with the task's events (a global store is
 * filled by its own thread), while a KTable partition is read by the task
 * itself, in timestamp order with the events: a choice made before an event
 * is in force when the event is joined. A consent change must also reach the
 * user's state (withdrawal erases it and publishes a tombstone), which only a
 * co-partitioned table can hand to the same task.
 */
final class Peer {
    /** The topic names; the bench gives the peer its own output topics. */
    record Topics(String browse, String purchase, String location, String consent, String profiles,
                  String deadLetters) {}

    private Peer() {}

    static Topology topology(Topics topics) {
        StreamsBuilder builder = new StreamsBuilder();
        TimestampExtractor eventTime = new EventTime();

        KTable<String, Consent> consent = builder
                .stream(topics.consent(), Consumed.with(Serdes.String(), decodeOnly(Codec.CONSENT))
                        .withTimestampExtractor(eventTime).withName("consent-source"))
                .processValues(ConsentCheck::new, Named.as("consent-check-key"))
                // Caching off: each change is forwarded at once, in order with the task's events.
                .toTable(Named.as("consent-table"), Materialized.<String, Consent, KeyValueStore<Bytes, byte[]>>as(
                        "consent").withKeySerde(Serdes.String()).withValueSerde(Consent.SERDE).withCachingDisabled());

        Serde<Input> inputs = decodeOnly(Codec.events(topics.browse(), topics.purchase(), topics.location()));
        KStream<String, Step> gated = builder
                .stream(List.of(topics.browse(), topics.purchase(), topics.location()),
                        Consumed.with(Serdes.String(), inputs).withTimestampExtractor(eventTime)
                                .withName("event-sources"))
                .<Consent, Step>leftJoin(consent, Gated::new,
                        Joined.with(Serdes.String(), inputs, Consent.SERDE).withName("consent-join"));
        KStream<String, Step> consentChanges = consent.toStream(Named.as("consent-changes"))
                .mapValues(ConsentChanged::new, Named.as("consent-changed"));

        // The default store (RocksDB) with its changelog, behind the record cache (see settings()).
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(ProfileProcessor.USERS_STORE), Serdes.String(), UserState.SERDE)
                .withCachingEnabled());
        Serde<Output> outputs = Serdes.serdeFrom((Serializer<Output>) (topic, output) -> output.value(),
                (topic, bytes) -> {
                    throw new UnsupportedOperationException("outputs are only written");
                });
        gated.merge(consentChanges, Named.as("events-and-consent"))
                .process(ProfileProcessor::new, Named.as("profiles"), ProfileProcessor.USERS_STORE)
                .to((userId, output, context) -> output.deadLetter() ? topics.deadLetters() : topics.profiles(),
                        Produced.with(Serdes.String(), outputs).withName("outputs"));
        return builder.build();
    }

    static Properties settings(String bootstrap, String applicationId, Path stateDir, long commitIntervalMs,
                               long maxTaskIdleMs) {
        Properties settings = new Properties();
        settings.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        settings.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        settings.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        // Transactions with KIP-447 fencing: one producer per thread, not per task.
        settings.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        // One thread per core: tasks (one per input partition) are spread over them.
        settings.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Runtime.getRuntime().availableProcessors());
        // Each commit is a transaction commit (flush, offsets, markers). The
        // EOS default of 100 ms costs throughput under a backlog; 1 s bounds
        // the latency read_committed readers see and amortises the commit
        // (tactful commits every 100 ms or 50,000 records, whichever first).
        settings.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitIntervalMs);
        // The record cache in front of RocksDB absorbs a user's repeated
        // updates within a commit: one changelog record per dirty user per
        // commit instead of one per event. 10 MB (default) is too small for
        // 100,000 users' states.
        settings.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 128L << 20);
        settings.put(StreamsConfig.ROCKSDB_CONFIG_SETTER_CLASS_CONFIG, BoundedRocksDb.class);
        settings.put(StreamsConfig.TOPOLOGY_OPTIMIZATION_CONFIG, StreamsConfig.OPTIMIZE);
        // A task merges its consent and event partitions by timestamp. A
        // partition with nothing buffered is waited for while its last fetch
        // reported records on the broker, and then, once it reported none,
        // up to max.task.idle.ms (default 0). Under a heavy load 0 and 500 ms
        // let events pass their user's consent record in smoke runs, 5 s did
        // not, but 5 s cost the peer 40 % of its throughput on a backlog (its
        // README, difference 6).
        settings.put(StreamsConfig.MAX_TASK_IDLE_MS_CONFIG, maxTaskIdleMs);
        // Undecodable consent records are counted and skipped (events never throw: bad ones are dead-lettered).
        settings.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG, CountingHandler.class);
        // Bigger polls and producer batches under a backlog: fewer round trips per record.
        settings.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_POLL_RECORDS_CONFIG), 2000);
        settings.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), 128 * 1024);
        return settings;
    }

    /** Runs until SIGTERM/SIGINT; then closes (commits the open transaction) and returns. */
    static void run(Topics topics, String bootstrap, String applicationId, Path stateDir, long commitIntervalMs,
                    long maxTaskIdleMs, int metricsPort) throws Exception {
        createOutputs(bootstrap, topics);
        var metrics = Metrics.serve(metricsPort);
        KafkaStreams streams = new KafkaStreams(topology(topics),
                settings(bootstrap, applicationId, stateDir, commitIntervalMs, maxTaskIdleMs));
        CountDownLatch stopped = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(java.time.Duration.ofSeconds(30));
            stopped.countDown();
        }, "shutdown"));
        streams.start();
        stopped.await();
        metrics.stop(0);
        if (streams.state() == KafkaStreams.State.ERROR) {
            throw new IllegalStateException("the streams application failed (see the log)");
        }
    }

    /**
     * Creates the output topics if they are missing, as tactful does (sink
     * topics are not created by Kafka Streams): profile updates compacted,
     * dead letters not, both with the input topics' partition count.
     */
    private static void createOutputs(String bootstrap, Topics topics) throws Exception {
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            int partitions = admin.describeTopics(List.of(topics.browse())).allTopicNames().get()
                    .get(topics.browse()).partitions().size();
            var existing = admin.listTopics().names().get();
            List<NewTopic> missing = new java.util.ArrayList<>();
            if (!existing.contains(topics.profiles())) {
                missing.add(new NewTopic(topics.profiles(), java.util.Optional.of(partitions), java.util.Optional.empty())
                        .configs(Map.of(TopicConfig.CLEANUP_POLICY_CONFIG, TopicConfig.CLEANUP_POLICY_COMPACT)));
            }
            if (!existing.contains(topics.deadLetters())) {
                missing.add(new NewTopic(topics.deadLetters(), java.util.Optional.of(partitions), java.util.Optional.empty()));
            }
            admin.createTopics(missing).all().get();
        }
    }

    /**
     * Record timestamps are event times: records of a task's partitions
     * (events and consent) are processed in event-time order, and stream
     * time (which drives the timers) is event time. Records without one
     * (consent tombstones, bad records) take their partition's time.
     */
    static final class EventTime implements TimestampExtractor {
        @Override
        public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
            Object value = record.value();
            if (value instanceof Input.Event event) {
                return event.ts();
            }
            if (value instanceof Codec.ConsentRecord change) {
                return change.consent().ts();
            }
            return partitionTime >= 0 ? partitionTime : record.timestamp();
        }
    }

    /**
     * A consent record must be about the user it is keyed by (CONTRACT §1);
     * one that is not is counted and dropped. Tombstones (null) go on: they
     * delete the user's consent from the table.
     */
    static final class ConsentCheck implements FixedKeyProcessor<String, Codec.ConsentRecord, Consent> {
        private FixedKeyProcessorContext<String, Consent> context;

        @Override
        public void init(FixedKeyProcessorContext<String, Consent> context) {
            this.context = context;
        }

        @Override
        public void process(FixedKeyRecord<String, Codec.ConsentRecord> record) {
            context.recordMetadata().ifPresent(source ->
                    Metrics.processed(source.topic(), source.partition(), source.offset()));
            Codec.ConsentRecord change = record.value();
            if (change != null && !change.userId().equals(record.key())) {
                Metrics.rejected("key_mismatch");
                return;
            }
            context.forward(record.withValue(change == null ? null : change.consent()));
        }
    }

    /** Counts an undecodable consent record as processed and rejected, then goes on. */
    public static final class CountingHandler extends LogAndContinueExceptionHandler {
        @Override
        public DeserializationHandlerResponse handle(ErrorHandlerContext context,
                                                     ConsumerRecord<byte[], byte[]> record, Exception exception) {
            Metrics.processed(record.topic(), record.partition(), record.offset());
            Metrics.rejected("undecodable");
            return super.handle(context, record, exception);
        }

        @Override
        public void configure(Map<String, ?> configs) {
            super.configure(configs);
        }
    }

    private static <T> Serde<T> decodeOnly(org.apache.kafka.common.serialization.Deserializer<T> deserializer) {
        return Serdes.serdeFrom((Serializer<T>) (topic, value) -> {
            throw new UnsupportedOperationException("input records are only read");
        }, deserializer);
    }
}

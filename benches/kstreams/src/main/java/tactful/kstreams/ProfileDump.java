package tactful.kstreams;

import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import tactful.v1.Membership;
import tactful.v1.ProfileUpdate;

/**
 * Reads a profile-update topic to its end (read_committed) and prints, per
 * user whose newest record is a profile (not a tombstone), the ids of their
 * current segments: "user_id segment,segment", sorted. The bench's smoke
 * check compares tactful's and the peer's outputs with it (to files, never
 * to the terminal).
 */
final class ProfileDump {
    private ProfileDump() {}

    static void dump(String bootstrap, String topic, PrintStream out) throws Exception {
        Properties settings = new Properties();
        settings.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        settings.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        settings.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        Map<String, String> segmentsByUser = new TreeMap<>();
        try (KafkaConsumer<String, byte[]> consumer =
                     new KafkaConsumer<>(settings, new StringDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> partitions = new ArrayList<>();
            consumer.partitionsFor(topic).forEach(info -> partitions.add(new TopicPartition(topic, info.partition())));
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            Map<TopicPartition, Long> ends = consumer.endOffsets(partitions);
            while (partitions.stream().anyMatch(partition -> consumer.position(partition) < ends.get(partition))) {
                for (ConsumerRecord<String, byte[]> record : consumer.poll(Duration.ofMillis(500))) {
                    if (record.value() == null) {
                        segmentsByUser.remove(record.key());
                        continue;
                    }
                    ProfileUpdate update = ProfileUpdate.getDecoder().decode(record.value());
                    List<String> ids = new ArrayList<>();
                    for (Membership membership : update.getSegments()) {
                        ids.add(membership.getId());
                    }
                    segmentsByUser.put(record.key(), String.join(",", ids));
                }
            }
        }
        segmentsByUser.forEach((user, segments) -> out.println(user + " " + (segments.isEmpty() ? "-" : segments)));
        out.flush();
    }

    static void main(String bootstrap, String topic) throws Exception {
        dump(bootstrap, topic, new PrintStream(System.out, false, StandardCharsets.UTF_8));
    }
}

package tactful.kstreams;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import tactful.kstreams.UserState.Member;
import tactful.kstreams.UserState.Profile;
import tactful.v1.Membership;
import tactful.v1.PersonalizationLevel;
import tactful.v1.ProfileUpdate;

/**
 * The per-user stage, one instance per task (input partition): applies each
 * event the consent join let through to the user's state in the
 * {@value #USERS_STORE} store, enforces consent changes, fires time-driven
 * changes on stream-time punctuation, and forwards profile updates (Avro
 * single-object encoding, as tactful publishes them), tombstones and dead
 * letters.
 */
final class ProfileProcessor implements Processor<String, ProfileProcessor.Step, String, ProfileProcessor.Output> {
    /** The per-user state store (RocksDB, logged). */
    static final String USERS_STORE = "users";
    /**
     * Timers fire this far behind the task's stream time (tactful's
     * allowed_lateness_ms): an event up to this late still counts before a
     * window it would be in is closed.
     */
    static final long ALLOWED_LATENESS_MS = 60_000;
    /** How often (in stream time) due timers are looked at; each look is an in-memory peek when none is due. */
    static final Duration PUNCTUATE_EVERY = Duration.ofMinutes(1);

    private static final BinaryMessageEncoder<ProfileUpdate> PROFILE_ENCODER = ProfileUpdate.getEncoder();

    /** What reaches this stage: an event with the consent in force joined to it, or a changed consent. */
    sealed interface Step {}

    /** An event (or a bad record) of an event topic, with the user's consent in force (null: none known). */
    record Gated(Input input, Consent consent) implements Step {}

    /** The consent topic changed the user's consent; null = the key was tombstoned (forget the user). */
    record ConsentChanged(Consent consent) implements Step {}

    /** A record for the output topics: a profile update or tombstone (value null), or a dead letter. */
    record Output(boolean deadLetter, byte[] value) {}

    private ProcessorContext<String, Output> context;
    private KeyValueStore<String, UserState> users;
    private final Timers timers = new Timers();

    @Override
    public void init(ProcessorContext<String, Output> context) {
        this.context = context;
        this.users = context.getStateStore(USERS_STORE);
        // The timer index is derived from the store (each state carries its
        // next change), so it is rebuilt rather than logged a second time.
        try (KeyValueIterator<String, UserState> all = users.all()) {
            while (all.hasNext()) {
                KeyValue<String, UserState> entry = all.next();
                timers.set(entry.key, entry.value.nextChange);
            }
        }
        context.schedule(PUNCTUATE_EVERY, PunctuationType.STREAM_TIME, this::advanceTo);
    }

    @Override
    public void process(Record<String, Step> record) {
        if (record.value() instanceof Gated gated) {
            context.recordMetadata().ifPresent(source ->
                    Metrics.processed(source.topic(), source.partition(), source.offset()));
            applyEvent(record, gated);
        } else if (record.value() instanceof ConsentChanged changed) {
            applyConsent(record, changed.consent());
        }
    }

    // ---- events ----

    private void applyEvent(Record<String, Step> record, Gated gated) {
        String userId = record.key();
        if (gated.input() instanceof Input.Bad bad) {
            deadLetter(record, bad.reason(), bad.raw());
            return;
        }
        Input.Event event = (Input.Event) gated.input();
        if (!event.userId().equals(userId)) {
            deadLetter(record, "key_mismatch", event.raw());
            return;
        }
        long watermark = watermark();
        if (tooLate(event, watermark)) {
            Metrics.dropped("late");
            return;
        }
        Consent consent = gated.consent();
        String refused = admit(event, consent);
        if (refused != null) {
            Metrics.dropped(refused);
            return;
        }
        Metrics.APPLIED.increment();
        UserState state = users.get(userId);
        if (state == null) {
            state = new UserState();
        }
        if (event.signals().gpc()) {
            state.gpcOptOut = true;
        }
        state.granted = consent.granted();
        state.level = consent.level();
        Minimiser.keep(state, event, consent.granted());
        state.clock = Math.max(state.clock, Math.max(event.ts(), watermark));
        state.lastEvent = Math.max(state.lastEvent, event.ts());
        byte[] update = refresh(userId, state, state.clock);
        if (update != null) {
            publish(record.withValue(new Output(false, update)));
        }
        schedule(userId, state);
        users.put(userId, state);
    }

    /** The task's event time less the allowed lateness; Long.MIN_VALUE before any is known. */
    private long watermark() {
        long streamTime = context.currentStreamTimeMs();
        return streamTime < 0 ? Long.MIN_VALUE : streamTime - ALLOWED_LATENESS_MS;
    }

    /** Too old to be in any window a segment reads its kind from (tactful drops it as late). */
    private static boolean tooLate(Input.Event event, long watermark) {
        if (watermark == Long.MIN_VALUE) {
            return false;
        }
        long reach = event instanceof Input.Browse ? 30 * Segments.DAY_MS
                // creature_of_habit reads the last 10 purchases, however old (up to the retention).
                : event instanceof Input.Purchase ? Segments.MAX_RETENTION_MS
                : Segments.HOUR_MS;
        return event.ts() < watermark && event.ts() <= watermark - reach;
    }

    /** Why the consent in force does not let {@code event} be applied (fail closed), or null if it does. */
    static String admit(Input.Event event, Consent consent) {
        if (consent == null) {
            return "no_consent";
        }
        if (!consent.grants(Consent.Purpose.PERSONALIZATION)) {
            return "no_personalization";
        }
        if (consent.level() == Consent.Level.NONE) {
            return "level_none";
        }
        boolean location = event instanceof Input.Location;
        if (location && !consent.grants(Consent.Purpose.LOCATION)) {
            return "no_location";
        }
        String tcf = event.signals().tcf();
        if (tcf != null && !Tcf.grants(tcf, location && consent.grants(Consent.Purpose.PRECISE_LOCATION))) {
            return "tcf_refused";
        }
        return null;
    }

    // ---- consent changes ----

    private void applyConsent(Record<String, Step> record, Consent consent) {
        String userId = record.key();
        UserState state = users.get(userId);
        if (state == null) {
            return; // nothing built for the user: the consent table alone holds the choice
        }
        if (consent == null || !consent.allowsProfile()) {
            // Withdrawal (or a tombstone): everything built for the user goes, and a tombstone is published.
            boolean erase = state.holdsProfileData();
            forget(userId);
            if (erase) {
                publish(record.withValue(new Output(false, null)));
            }
            return;
        }
        state.gpcOptOut = false; // a newer choice decides ads again
        state.granted = consent.granted();
        state.level = consent.level();
        Minimiser.narrow(state, consent.granted());
        byte[] update = refresh(userId, state, consent.ts());
        if (update != null) {
            publish(record.withValue(new Output(false, update)));
        }
        schedule(userId, state);
        users.put(userId, state);
    }

    private void forget(String userId) {
        users.delete(userId);
        timers.set(userId, UserState.NO_CHANGE);
    }

    // ---- time-driven changes ----

    /** Stream time passed {@code streamTime}: re-evaluates every user whose timer is due, at the timer's time. */
    private void advanceTo(long streamTime) {
        long watermark = streamTime - ALLOWED_LATENESS_MS;
        Timers.Timer timer;
        while ((timer = timers.popDue(watermark)) != null) {
            UserState state = users.get(timer.userId());
            if (state == null || state.nextChange != timer.due()) {
                continue;
            }
            if (!(new Consent(state.granted, state.level, 0).allowsProfile())) {
                continue;
            }
            if (state.lastEvent + Segments.IDLE_USER_MS <= timer.due()) {
                // Idle for too long: deleted (data minimisation).
                boolean published = state.published != null;
                forget(timer.userId());
                if (published) {
                    publish(new Record<>(timer.userId(), new Output(false, null), timer.due()));
                }
                continue;
            }
            state.clock = Math.max(state.clock, timer.due());
            byte[] update = refresh(timer.userId(), state, state.clock);
            if (update != null) {
                publish(new Record<>(timer.userId(), new Output(false, update), state.clock));
            }
            schedule(timer.userId(), state);
            users.put(timer.userId(), state);
        }
    }

    /** Sets the user's timer to the next moment time alone changes their profile. */
    private void schedule(String userId, UserState state) {
        long next = Segments.nextWindowExit(state, state.clock);
        if (state.holdsProfileData()) {
            long idleAt = state.lastEvent + Segments.IDLE_USER_MS;
            next = next == UserState.NO_CHANGE ? idleAt : Math.min(next, idleAt);
        }
        state.nextChange = next;
        timers.set(userId, next);
    }

    // ---- evaluate and diff ----

    /**
     * Re-evaluates the segments the user's consent allows at the user's
     * clock and returns the encoded update if anything but version and ts
     * changed (null otherwise). {@code changeTs} is the update's ts.
     */
    private byte[] refresh(String userId, UserState state, long changeTs) {
        int granted = state.gpcOptOut ? state.granted & ~Consent.Purpose.ADS : state.granted;
        Consent.Level level = state.level;
        long now = state.clock;
        Minimiser.prune(state, now, Segments.retentionFor(level, granted));
        List<Member> previous = state.published == null ? List.of() : state.published.members();
        List<Member> members = new ArrayList<>(4);
        for (int index = 0; index < Segments.BY_ID.size(); index++) {
            Segments.Segment segment = Segments.BY_ID.get(index);
            if (!Segments.eligible(segment, level, granted)) {
                continue;
            }
            Segments.Figures figures = segment.rule().apply(state, now);
            if (figures == null) {
                continue;
            }
            long since = now;
            for (Member member : previous) {
                if (member.segment() == index) {
                    since = member.since();
                }
            }
            members.add(new Member(index, since, figures.first(), figures.second(), segment.channels() & granted));
        }
        Profile profile = new Profile(level, granted & Consent.Purpose.ALL_CHANNELS, members);
        if (profile.equals(state.published) || (state.published == null && members.isEmpty())) {
            return null;
        }
        ProfileUpdate update = new ProfileUpdate(userId, state.nextVersion(System.currentTimeMillis()),
                Instant.ofEpochMilli(changeTs), PersonalizationLevel.valueOf(level.name()),
                Consent.Purpose.channelNames(profile.channels()), render(members),
                missingFrom(members, previous), missingFrom(previous, members));
        state.published = profile;
        try {
            ByteBuffer encoded = PROFILE_ENCODER.encode(update);
            byte[] bytes = new byte[encoded.remaining()];
            encoded.get(bytes);
            return bytes;
        } catch (java.io.IOException error) {
            throw new IllegalStateException("cannot encode a profile update", error);
        }
    }

    private static List<Membership> render(List<Member> members) {
        List<Membership> rendered = new ArrayList<>(members.size());
        for (Member member : members) {
            Segments.Segment segment = Segments.BY_ID.get(member.segment());
            rendered.add(new Membership(segment.id(), Instant.ofEpochMilli(member.since()),
                    segment.reason().apply(new Segments.Figures(member.first(), member.second())),
                    Consent.Purpose.channelNames(member.channels()), null));
        }
        return rendered;
    }

    /** Ids of the segments of {@code these} that {@code those} lacks. */
    private static List<String> missingFrom(List<Member> these, List<Member> those) {
        List<String> ids = new ArrayList<>(0);
        outer:
        for (Member member : these) {
            for (Member other : those) {
                if (other.segment() == member.segment()) {
                    continue outer;
                }
            }
            ids.add(Segments.BY_ID.get(member.segment()).id());
        }
        return ids;
    }

    // ---- outputs ----

    private void publish(Record<String, Output> record) {
        if (record.value().value() == null) {
            Metrics.TOMBSTONES.increment();
        } else {
            Metrics.UPDATES.increment();
        }
        context.forward(record.withHeaders(new RecordHeaders()));
    }

    /** Copies a bad record to the dead-letter topic with headers saying why and where it came from. */
    private void deadLetter(Record<String, Step> record, String reason, byte[] raw) {
        Metrics.rejected(reason);
        RecordHeaders headers = new RecordHeaders();
        headers.add("tactful.reason", reason.getBytes(StandardCharsets.UTF_8));
        context.recordMetadata().ifPresent(source -> {
            headers.add("tactful.source.topic", source.topic().getBytes(StandardCharsets.UTF_8));
            headers.add("tactful.source.partition",
                    Integer.toString(source.partition()).getBytes(StandardCharsets.UTF_8));
            headers.add("tactful.source.offset", Long.toString(source.offset()).getBytes(StandardCharsets.UTF_8));
        });
        context.forward(new Record<>(record.key(), new Output(true, raw), record.timestamp(), headers));
    }

    /** (due, user) pairs, at most one per user: when time alone may change the user's profile. */
    static final class Timers {
        record Timer(long due, String userId) implements Comparable<Timer> {
            @Override
            public int compareTo(Timer other) {
                int byDue = Long.compare(due, other.due);
                return byDue != 0 ? byDue : userId.compareTo(other.userId);
            }
        }

        private final TreeSet<Timer> byDue = new TreeSet<>();
        private final Map<String, Long> dueByUser = new HashMap<>();

        /** Replaces the user's timer ({@link UserState#NO_CHANGE}: none). */
        void set(String userId, long due) {
            Long old = due == UserState.NO_CHANGE ? dueByUser.remove(userId) : dueByUser.put(userId, due);
            if (old != null && old == due) {
                return;
            }
            if (old != null) {
                byDue.remove(new Timer(old, userId));
            }
            if (due != UserState.NO_CHANGE) {
                byDue.add(new Timer(due, userId));
            }
        }

        /** The earliest timer due at {@code watermark}, removed; null if none is. */
        Timer popDue(long watermark) {
            if (byDue.isEmpty() || byDue.first().due() > watermark) {
                return null;
            }
            Timer timer = byDue.pollFirst();
            dueByUser.remove(timer.userId());
            return timer;
        }
    }
}

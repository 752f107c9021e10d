"""End-to-end latency of tactful, measured from outside: an event produced
to Kafka until the profile update it caused is visible to a
``read_committed`` consumer. The helper of ``scripts/bench-latency.sh``.

Subcommands:

- ``topics``: creates the four input topics (the consent topic compacted)
  with ``--partitions`` partitions.
- ``consent``: writes a ConsentChange for each of ``--users`` users
  (``personalization`` and ``web`` granted, level FULL), Avro single-object
  encoded with fastavro, Java's partitioner, key = user id; waits for every
  acknowledgement.
- ``run``: a producer of BrowseEvents (single-object encoding, Java's
  partitioner, key = user id) at a steady ``--rate`` records/s for
  ``--duration`` seconds, each event's ``ts`` = the wall clock in ms when it
  is handed to the producer; and, in a process of its own, a
  ``read_committed`` consumer of the profiles topic that decodes every
  ProfileUpdate with fastavro and records, for each update whose ``ts`` is
  an event time of this run after the warm-up (``--warmup`` s), its latency
  = the wall clock when ``poll`` returned it − ``ts``. Producer and
  consumer run on the same machine: one clock. The update record's Kafka
  timestamp (CreateTime, set when tactful's producer sent it) splits the
  latency into event → sent by tactful and sent → visible. With
  ``--read events`` the consumer reads the browse events themselves
  instead, with the same settings: the broker's floor, one hop and no
  tactful. Prints the figures as one JSON line on stdout (percentiles,
  counts, the achieved rate, CPU seconds of producer and consumer, and
  tactful's batches and deliveries in the window, from its /metrics) and a
  summary on stderr.
- ``commits``: the helper of ``scripts/bench-recovery.sh``. Every 50 ms for
  ``--duration`` seconds it asks the broker for the offsets consumer group
  ``--group`` committed on each partition of ``--topic``, and prints a line
  ``<wall clock ms> <partition> <offset>`` whenever one moved.

Why the ``ts`` identifies the event: tactful's ProfileUpdate ``ts`` is the
user's event-time clock when the profile changed, which for an update
caused by an event is that event's ``ts`` (events of a user are produced in
wall-clock order, so the newest is the one applied). Updates driven by time
(a window dropping an event) carry the watermark, at least
``allowed_lateness_ms`` (60 s) behind the newest event, and the consent
records' updates carry the consent time, before the run: both fall before
the run's first event and are not counted.

The load: users drawn uniformly at random; 40 % of the events are product
page views in the ``running`` category (from the third one in a week, each
changes the ``running_browser`` membership's reason, "Browsed running
products N times...", so an update is published), the rest are home,
search, category and product views of other categories, which change
nothing after a user's first event (``new_visitor``). So a bit over a third
of the events publish an update.

Only this script's own records are printed; no user ids go to stderr.
"""

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import sys
import time
import urllib.request
from array import array

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.error import KafkaError

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = os.path.join(REPO_DIR, "schemas")
MARKER = b"\xc3\x01"

OTHER_CATEGORIES = ["kitchen", "garden", "books", "toys", "outdoor", "fashion"]
OTHER_PAGES = ["home", "search", "category", "product", "cart"]


def log(msg):
    print(f"latency.py: {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def load_schema(name, raw_times=False):
    """(parsed schema, single-object header) of schemas/<name>.avsc. With
    raw_times, timestamp-millis fields decode as their long, not a datetime."""
    with open(os.path.join(SCHEMAS, name + ".avsc"), encoding="utf-8") as f:
        schema_json = json.load(f)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parse_schema(schema_json, named_schemas={})), "CRC-64-AVRO"))
    if raw_times:
        schema_json = strip_logical_types(schema_json)
    return parse_schema(schema_json, named_schemas={}), MARKER + fp


def strip_logical_types(schema):
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    return schema


def encoder(name):
    parsed, header = load_schema(name)

    def encode(value):
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, parsed, value)
        return buf.getvalue()

    return encode


def user_id(i):
    return f"lat-u{i:06d}"


def producer(bootstrap, linger_ms=5):
    # As a Java client or tests/interop/produce.py would: Java's partitioner
    # (the user's records land on the same partition number in every topic),
    # idempotence on, librdkafka's (and Java's) default linger.ms (5 ms)
    # made explicit.
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
        }
    )


class Deliveries:
    def __init__(self):
        self.failed = 0

    def __call__(self, err, msg):
        if err is not None:
            self.failed += 1
            if self.failed <= 5:
                log(f"delivery to {msg.topic()} failed: {err.str()}")


def produce(p, deliveries, topic, key, value):
    while True:
        try:
            p.produce(topic, value=value, key=key, on_delivery=deliveries)
            return
        except BufferError:
            p.poll(0.05)


def cmd_topics(args):
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topics = [
        NewTopic(f"{args.prefix}.events.browse", num_partitions=args.partitions, replication_factor=1),
        NewTopic(f"{args.prefix}.events.purchase", num_partitions=args.partitions, replication_factor=1),
        NewTopic(f"{args.prefix}.events.location", num_partitions=args.partitions, replication_factor=1),
        NewTopic(
            f"{args.prefix}.consent.changes",
            num_partitions=args.partitions,
            replication_factor=1,
            config={"cleanup.policy": "compact"},
        ),
    ]
    for topic, fut in admin.create_topics(topics, operation_timeout=30, request_timeout=30).items():
        try:
            fut.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                die(f"could not create topic {topic}: {e.args[0].str()}")
    log(f"created the input topics {args.prefix}.* ({args.partitions} partitions)")


def cmd_consent(args):
    encode = encoder("consent_change")
    p = producer(args.bootstrap)
    deliveries = Deliveries()
    ts = int(time.time() * 1000) - 60_000
    for i in range(args.users):
        uid = user_id(i)
        value = encode(
            {"user_id": uid, "ts": ts, "granted": ["personalization", "web"], "level": "FULL", "source": "bench-latency"}
        )
        produce(p, deliveries, args.topic, uid.encode(), value)
        p.poll(0)
    if p.flush(60):
        die("consent records still undelivered after 60 s")
    if deliveries.failed:
        die(f"{deliveries.failed} consent records were not delivered")
    log(f"consent written for {args.users} users")


# --- run ---


def avro_long(n):
    """Avro's zig-zag varint encoding of a long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(text):
    raw = text.encode()
    return avro_long(len(raw)) + raw


def avro_optional_string(text):
    return b"\x00" if text is None else b"\x02" + avro_string(text)


class BrowseLoad:
    """The run's BrowseEvents, drawn at random (see the module's doc), in
    single-object encoding. At 20,000 records/s fastavro's writer and the
    dict per record would cost the producer ~0.4 of a core on a machine
    shared with the broker and the pipeline, so the bytes are assembled
    from pre-encoded pieces; `check` proves they are the bytes fastavro
    writes for the same records."""

    def __init__(self, users, seed):
        _, self.header = load_schema("browse_event")
        self.rng = random.Random(seed)
        self.users = users
        self.running_products = [f"run-{i:03d}" for i in range(50)]
        self.other_products = [f"prd-{i:04d}" for i in range(2000)]
        # Per user: the key, and the encoded user_id; the session_id comes after ts.
        self.user_pieces = [
            (user_id(i).encode(), avro_string(user_id(i)), avro_optional_string(f"s-{user_id(i)}"))
            for i in range(users)
        ]
        self.tails = {}

    def draw(self):
        """(user index, page_type, category, product_id) of the next event."""
        rng = self.rng
        user = rng.randrange(self.users)
        if rng.random() < 0.4:
            return user, "product", "running", rng.choice(self.running_products)
        page = rng.choice(OTHER_PAGES)
        category = rng.choice(OTHER_CATEGORIES) if page in ("category", "product") else None
        product = rng.choice(self.other_products) if page == "product" else None
        return user, page, category, product

    def tail(self, page, category, product):
        """page_type, product_id, category, url (null) and consent (null), encoded."""
        key = (page, category, product)
        piece = self.tails.get(key)
        if piece is None:
            piece = avro_string(page) + avro_optional_string(product) + avro_optional_string(category) + b"\x00\x00"
            self.tails[key] = piece
        return piece

    def encode(self, event_id, user, ts, page, category, product):
        key, uid, session = self.user_pieces[user]
        body = avro_string(event_id) + uid + avro_long(ts) + session + self.tail(page, category, product)
        return key, self.header + body

    def next(self, event_id, ts):
        """(key, value) of the next event."""
        user, page, category, product = self.draw()
        return self.encode(event_id, user, ts, page, category, product)

    def check(self, run_id):
        """Compares 2,000 drawn records with fastavro's encoding of them (a
        separate generator: the run's own draws are untouched)."""
        encode = encoder("browse_event")
        probe = BrowseLoad.__new__(BrowseLoad)
        probe.__dict__.update(self.__dict__)
        probe.rng = random.Random(12345)
        for i in range(2000):
            user, page, category, product = probe.draw()
            ts = 1_800_000_000_000 + i * 7919
            event_id = f"{run_id}-check-{i}"
            _, mine = probe.encode(event_id, user, ts, page, category, product)
            theirs = encode(
                {
                    "event_id": event_id,
                    "user_id": user_id(user),
                    "ts": ts,
                    "session_id": f"s-{user_id(user)}",
                    "page_type": page,
                    "product_id": product,
                    "category": category,
                    "url": None,
                    "consent": None,
                }
            )
            if mine != theirs:
                die("the pre-encoded BrowseEvent differs from fastavro's encoding")


def consume(bootstrap, topic, schema_name, fetch_wait_ms, ready, done, window, results):
    """The read_committed consumer (a process of its own, so that the
    producer's pacing never delays a poll). Records (ts, receive ms) of every
    record of `schema_name` (a ProfileUpdate, or for the broker's floor the
    BrowseEvent itself); once `done` is set and `window` holds (first, last)
    event ts of the run, drains until nothing arrives for 3 s and sends the
    measured latencies' summary to `results`."""
    schema, header = load_schema(schema_name, raw_times=True)
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-latency-{os.getpid()}-{time.time_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            # What a latency-sensitive reader would set; librdkafka's
            # default (500 ms) only bounds an empty fetch, the broker
            # answers as soon as committed records are there.
            "fetch.wait.max.ms": fetch_wait_ms,
        }
    )
    md = c.list_topics(topic, timeout=30)
    if topic not in md.topics or md.topics[topic].error is not None:
        results.send({"error": f"topic {topic} not found"})
        return
    # From the beginning: the consent records' updates come first and are
    # skipped by their ts; nothing of the run can be missed.
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.topics[topic].partitions])
    ts_list = array("q")
    recv_list = array("d")
    # The update record's Kafka timestamp: CreateTime, set by tactful's
    # producer when it sends the update, which splits the latency into
    # event → sent by tactful and sent → visible (the transaction's commit).
    sent_list = array("q")
    tombstones = other = 0
    last_message = time.monotonic()
    signalled = False
    while True:
        msg = c.poll(0.05)
        now_ms = time.time() * 1000.0
        if not signalled:
            ready.set()
            signalled = True
        if msg is None:
            if done.is_set() and time.monotonic() - last_message > 3.0:
                break
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            results.send({"error": f"consumer error: {msg.error().str()}"})
            return
        last_message = time.monotonic()
        value = msg.value()
        if value is None:
            tombstones += 1
            continue
        if value[:10] != header:
            other += 1
            continue
        update = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, None)
        ts_list.append(update["ts"])
        recv_list.append(now_ms)
        sent_list.append(msg.timestamp()[1])
    c.close()
    cpu_seconds = time.process_time()
    first_ts, measure_from, last_ts = window.recv()
    measured = [i for i, ts in enumerate(ts_list) if measure_from <= ts <= last_ts]
    latencies = sorted(recv_list[i] - ts_list[i] for i in measured)
    to_sent = sorted(sent_list[i] - ts_list[i] for i in measured)
    sent_to_visible = sorted(recv_list[i] - sent_list[i] for i in measured)
    results.send(
        {
            "updates_received": len(ts_list),
            "updates_of_the_run": sum(1 for ts in ts_list if first_ts <= ts <= last_ts),
            "updates_before_the_run": sum(1 for ts in ts_list if ts < first_ts),
            "tombstones": tombstones,
            "other_encoding": other,
            "measured": len(latencies),
            "latency_ms": summarise(latencies),
            "event_to_sent_ms": summarise(to_sent),
            "sent_to_visible_ms": summarise(sent_to_visible),
            "consumer_cpu_seconds": round(cpu_seconds, 1),
        }
    )


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-q * len(sorted_values) // 100)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarise(latencies):
    if not latencies:
        return {}
    return {
        "min": round(latencies[0], 1),
        "p50": round(percentile(latencies, 50), 1),
        "p90": round(percentile(latencies, 90), 1),
        "p99": round(percentile(latencies, 99), 1),
        "p999": round(percentile(latencies, 99.9), 1),
        "max": round(latencies[-1], 1),
        "mean": round(sum(latencies) / len(latencies), 1),
    }


def scrape(url):
    """{metric line name with labels: value} of tactful's /metrics, or {} without a URL."""
    if not url:
        return {}
    out = {}
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


def pipeline_figures(before, at_end, after):
    """What tactful did, from three scrapes of /metrics: before the first
    event, when the last one was produced (batch and delivery times: the
    batches of the production window only, not the idle ones while the
    consumer drains) and at the end (the records' fates and updates)."""

    def delta(name):
        return at_end.get(name, 0.0) - before.get(name, 0.0)

    def total(prefix):
        return int(sum(after[k] - before.get(k, 0.0) for k in after if k.startswith(prefix)))

    figures = {}
    for metric, key in (("tactful_batch_duration_seconds", "batch"), ("tactful_commit_duration_seconds", "delivery")):
        count = delta(f"{metric}_count")
        if count > 0:
            figures[f"{key}_mean_ms"] = round(1000 * delta(f"{metric}_sum") / count, 1)
            figures["batches"] = int(count)
    figures.update(
        applied=total("tactful_records_applied_total"),
        updates_published=total("tactful_profile_updates_total"),
        dropped=total("tactful_events_dropped_total"),
        rejected=total("tactful_records_rejected_total"),
    )
    return figures


def cmd_run(args):
    # The broker's floor: the consumer reads the events themselves, one hop
    # through the broker with the same producer and consumer settings.
    if args.read == "events":
        topic, schema_name = args.browse_topic, "browse_event"
    else:
        topic, schema_name = args.profiles_topic, "profile_update"
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    window_recv, window_send = ctx.Pipe(duplex=False)
    results_recv, results_send = ctx.Pipe(duplex=False)
    consumer = ctx.Process(
        target=consume,
        args=(args.bootstrap, topic, schema_name, args.fetch_wait_ms, ready, done, window_recv, results_send),
        daemon=True,
    )
    consumer.start()
    if not ready.wait(60):
        die("the consumer did not start polling within 60 s")
    time.sleep(1.0)  # the consumer's first fetches (the consent records' updates) are done

    p = producer(args.bootstrap, args.linger_ms)
    deliveries = Deliveries()
    load = BrowseLoad(args.users, args.seed)
    run_id = f"{os.getpid()}-{int(time.time())}"
    load.check(run_id)

    before = scrape(args.metrics_url)
    log(f"producing {args.rate} browse events/s for {args.duration} s to {args.browse_topic}")
    cpu_start = time.process_time()
    start = time.time()
    first_ts = int(start * 1000)
    last_ts = first_ts
    sent = 0
    late_ticks = 0
    while True:
        now = time.time()
        elapsed = now - start
        if elapsed >= args.duration:
            break
        due = int(elapsed * args.rate) - sent
        if due <= 0:
            p.poll(0)
            time.sleep(min(0.001, (sent + 1) / args.rate - elapsed))
            continue
        if due > args.rate // 100:  # more than 10 ms behind schedule
            late_ticks += 1
        for _ in range(due):
            ts = int(time.time() * 1000)
            key, value = load.next(f"{run_id}-{sent}", ts)
            produce(p, deliveries, args.browse_topic, key, value)
            sent += 1
        last_ts = ts
        p.poll(0)
    produce_seconds = time.time() - start
    producer_cpu_seconds = time.process_time() - cpu_start
    remaining = p.flush(60)
    at_end = scrape(args.metrics_url)
    log(f"produced {sent} events in {produce_seconds:.2f} s; waiting for the updates")
    done.set()
    window_send.send((first_ts, first_ts + int(args.warmup * 1000), last_ts))
    if not results_recv.poll(args.duration + 120):
        die("the consumer did not report")
    result = results_recv.recv()
    consumer.join(10)
    after = scrape(args.metrics_url)
    if "error" in result:
        die(result["error"])
    if remaining:
        die(f"{remaining} events still undelivered after 60 s")
    if deliveries.failed:
        die(f"{deliveries.failed} events were not delivered")
    result.update(
        {
            "rate_target": args.rate,
            "produced": sent,
            "produce_seconds": round(produce_seconds, 2),
            "rate_achieved": round(sent / produce_seconds),
            "producer_late_ticks": late_ticks,
            "producer_cpu_seconds": round(producer_cpu_seconds, 1),
            "warmup_seconds": args.warmup,
            "pipeline": pipeline_figures(before, at_end, after) if before else {},
        }
    )
    print(json.dumps(result), flush=True)
    lat = result["latency_ms"]
    if lat:
        log(
            f"latency ms over {result['measured']} updates: p50 {lat['p50']}, p90 {lat['p90']}, "
            f"p99 {lat['p99']}, max {lat['max']}; achieved {result['rate_achieved']} events/s"
        )


def cmd_commits(args):
    # A client of the group that never subscribes: it does not join the group.
    reader = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False})
    partitions = [TopicPartition(args.topic, p) for p in range(args.partitions)]
    last = {}
    end = time.time() + args.duration
    while time.time() < end:
        try:
            committed = reader.committed(partitions, timeout=5)
        except KafkaException as e:
            log(f"committed offsets not read: {e.args[0].str()}")
            committed = []
        now_ms = int(time.time() * 1000)
        for tp in committed:
            if tp.offset >= 0 and last.get(tp.partition) != tp.offset:
                last[tp.partition] = tp.offset
                print(now_ms, tp.partition, tp.offset, flush=True)
        time.sleep(0.05)
    reader.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("topics", help="create the input topics <prefix>.events.*, <prefix>.consent.changes")
    t.add_argument("--prefix", required=True)
    t.add_argument("--partitions", type=int, default=4)
    c = sub.add_parser("consent", help="write consent (personalization, web; FULL) for --users users")
    c.add_argument("--topic", required=True)
    c.add_argument("--users", type=int, required=True)
    r = sub.add_parser("run", help="produce at --rate for --duration s and measure the latency")
    r.add_argument("--browse-topic", required=True)
    r.add_argument("--profiles-topic", required=True)
    r.add_argument("--users", type=int, required=True)
    r.add_argument("--rate", type=int, required=True, help="events per second")
    r.add_argument("--duration", type=float, default=30)
    r.add_argument("--warmup", type=float, default=5, help="seconds at the start not measured")
    r.add_argument("--metrics-url", help="tactful's /metrics, scraped before and after")
    r.add_argument("--seed", type=int, default=11)
    r.add_argument("--fetch-wait-ms", type=int, default=10, help="the consumer's fetch.wait.max.ms")
    r.add_argument("--linger-ms", type=int, default=5, help="the event producer's linger.ms")
    r.add_argument(
        "--read",
        choices=["profiles", "events"],
        default="profiles",
        help="what the consumer reads: tactful's profile updates, or the events themselves (the broker's floor)",
    )
    m = sub.add_parser("commits", help="print the committed offsets of --group on --topic as they move")
    m.add_argument("--group", required=True)
    m.add_argument("--topic", required=True)
    m.add_argument("--partitions", type=int, default=4)
    m.add_argument("--duration", type=float, required=True)
    args = ap.parse_args()
    {"topics": cmd_topics, "consent": cmd_consent, "run": cmd_run, "commits": cmd_commits}[args.command](args)


if __name__ == "__main__":
    main()

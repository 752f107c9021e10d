"""Produce Avro records to Kafka with implementations other than Rust's
apache-avro crate, for interoperability tests.

What it proves: records that the pipeline reads were written the way other
producers in the wild write them, not by the same code that decodes them.

- ``--format single-object``: Avro single-object encoding, written by
  fastavro: ``C3 01`` + the CRC-64-AVRO fingerprint of the schema's Parsing
  Canonical Form as fastavro computes it (8 bytes, little-endian) + the
  fastavro ``schemaless_writer`` datum.
- ``--format confluent``: Confluent's wire format (``00`` + 4-byte big-endian
  schema id + datum), written by confluent-kafka's ``AvroSerializer`` with its
  defaults: the schema is auto-registered under ``<topic>-value``
  (TopicNameStrategy) in the registry at ``--registry``.

The records come from ``--records FILE``, JSON lines of the form
``{"topic": "...", "key": "..." | null, "value": {...} | null}``; a null
value is a tombstone. timestamp-millis fields are given as epoch-millisecond
ints, which fastavro writes as they are (the same long on the wire).

The producer is librdkafka (confluent-kafka) with Java's default partitioner
(``murmur2_random``) and idempotence on. Prints ``produced N`` on stdout and
exits non-zero if any record could not be encoded or delivered. Nothing from
the records (keys, values) is printed on stderr.

Example::

    produce.py --bootstrap 127.0.0.1:19092 --format confluent \\
        --registry http://127.0.0.1:18081/apis/ccompat/v7 \\
        --schema schemas/consent_change.avsc --records records.jsonl
"""

import argparse
import io
import json
import sys

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.error import KafkaError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

SINGLE_OBJECT_MARKER = b"\xc3\x01"


def log(msg):
    print(f"produce.py: {msg}", file=sys.stderr)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def single_object_fingerprint(parsed_schema):
    """The 8 fingerprint bytes of the single-object header, as on the wire.

    fastavro's ``fingerprint(..., "CRC-64-AVRO")`` returns the hex of the
    fingerprint's bytes in little-endian order (the order the Avro spec puts
    them on the wire): for ConsentChange it is ``f222c9e7d1dd0a58``, i.e. Java
    Avro's ``parsingFingerprint64`` 0x580addd1e7c922f2 little-endian.
    """
    pcf = to_parsing_canonical_form(parsed_schema)
    fp = bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))
    if len(fp) != 8:
        die(f"fastavro returned a {len(fp)}-byte CRC-64-AVRO fingerprint")
    return fp


def read_records(path):
    """(line number, topic, key, value) for each non-empty JSON line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                die(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})")
            if not isinstance(rec, dict) or not isinstance(rec.get("topic"), str):
                die(f'{path}:{n}: expected an object with a string "topic"')
            key = rec.get("key")
            if key is not None and not isinstance(key, str):
                die(f'{path}:{n}: "key" must be a string or null')
            value = rec.get("value")
            if value is not None and not isinstance(value, dict):
                die(f'{path}:{n}: "value" must be an object (the record) or null (a tombstone)')
            records.append((n, rec["topic"], key, value))
    return records


def create_topics(bootstrap, topics, partitions):
    """Create the topics that do not exist yet (replication factor 1)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in sorted(topics)],
        operation_timeout=30,
        request_timeout=30,
    )
    for topic, fut in futures.items():
        try:
            fut.result()
            log(f"created topic {topic} ({partitions} partitions)")
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                die(f"could not create topic {topic}: {e.args[0].str()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, e.g. 127.0.0.1:19092")
    ap.add_argument("--records", required=True, help="JSON lines: {topic, key, value}")
    ap.add_argument("--format", required=True, choices=["single-object", "confluent"])
    ap.add_argument("--schema", required=True, help="the writer schema (.avsc)")
    ap.add_argument("--registry", help="Confluent-compatible registry base URL (--format confluent)")
    ap.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="first create the records' topics that do not exist, with N partitions",
    )
    args = ap.parse_args()
    if args.format == "confluent" and not args.registry:
        ap.error("--format confluent needs --registry")
    if args.format == "single-object" and args.registry:
        ap.error("--registry is only used with --format confluent")

    try:
        with open(args.schema, encoding="utf-8") as f:
            schema_text = f.read()
        schema_json = json.loads(schema_text)
        parsed = parse_schema(schema_json, named_schemas={})
    except Exception as e:  # noqa: BLE001 - any reason the schema is unusable
        die(f"{args.schema}: not a usable Avro schema ({type(e).__name__}: {e})")

    records = read_records(args.records)
    if args.partitions is not None:
        create_topics(args.bootstrap, {t for _, t, _, _ in records}, args.partitions)

    if args.format == "single-object":
        header = SINGLE_OBJECT_MARKER + single_object_fingerprint(parsed)

        def encode(topic, value):
            buf = io.BytesIO()
            buf.write(header)
            # strict_allow_default: a misspelt or missing field fails instead
            # of being dropped; it only checks the input, not the bytes.
            fastavro.schemaless_writer(buf, parsed, value, strict_allow_default=True)
            return buf.getvalue()

    else:
        # A timeout, so that a request the registry never answers is retried
        # (the client retries transport errors) instead of hanging the test:
        # once, one did, for ten minutes.
        registry = SchemaRegistryClient({"url": args.registry, "timeout": 10})
        # The serializer's defaults (auto-registration under <topic>-value),
        # plus the same input check as above.
        serializer = AvroSerializer(registry, schema_text, conf={"validate.strict.allow.default": True})

        def encode(topic, value):
            return serializer(value, SerializationContext(topic, MessageField.VALUE))

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
        }
    )
    failed = []

    def on_delivery(err, msg):
        if err is not None:
            failed.append(err)
            log(f"delivery to {msg.topic()} failed: {err.str()}")

    for n, topic, key, value in records:
        if value is None:
            payload = None
        else:
            try:
                payload = encode(topic, value)
            except Exception as e:  # noqa: BLE001 - the message may contain the record: not printed
                producer.flush(30)
                die(f"{args.records}:{n}: the value does not fit {args.schema} or could not be encoded ({type(e).__name__})")
        key_bytes = None if key is None else key.encode("utf-8")
        while True:
            try:
                producer.produce(topic, value=payload, key=key_bytes, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.5)
            except KafkaException as e:
                die(f"{args.records}:{n}: produce to {topic} failed: {e.args[0].str()}")
        producer.poll(0)

    remaining = producer.flush(60)
    if remaining:
        die(f"{remaining} record(s) still undelivered after 60 s")
    if failed:
        die(f"{len(failed)} of {len(records)} record(s) were not delivered")
    print(f"produced {len(records)}")


if __name__ == "__main__":
    main()

"""Read a whole Kafka topic with kcat and decode every value with fastavro,
for interoperability tests.

What it proves: what the pipeline wrote can be read by other implementations
(librdkafka's kcat as a read_committed consumer, fastavro as the Avro
decoder, the registry's stored schema), not only by the code that wrote it.

Each value must be one of:

- Avro single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO
  fingerprint + datum. The writer schema is the one among the ``.avsc`` files
  in ``--schemas`` (default: the repo's ``schemas/``) whose fingerprint, as
  fastavro computes it, matches. An unknown fingerprint is an error, never
  skipped.
- Confluent's wire format: ``00`` + 4-byte big-endian schema id + datum. The
  writer schema is fetched from the registry (``--registry``) by id.
- null: a tombstone.

Anything else (other framing, trailing bytes after the datum, a datum that
does not decode) is an error: exit 1, naming the partition and offset.

Prints one JSON line per record, in the order kcat read them:
``{"partition": p, "offset": o, "key": "..." | null, "encoding":
"single-object" | "confluent" | null, "value": {...} | null}``, with
timestamp/date/time logical types as their plain numbers (timestamp-millis
as epoch milliseconds). Keys and values are printed on stdout only, never on
stderr.

Example::

    read_profiles.py --bootstrap 127.0.0.1:19092 --topic profiles \\
        --registry http://127.0.0.1:18081/apis/ccompat/v7
"""

import argparse
import copy
import decimal
import glob
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import uuid

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from confluent_kafka.schema_registry import SchemaRegistryClient

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Binary-safe kcat output per record: "<partition>,<offset>,<key length>:"
# in ASCII (key length -1 for a null key), the key's bytes, the payload
# length as a big-endian signed 32-bit int (-1 for a null payload: a
# tombstone), the payload's bytes. Numbers come before any binary data, so
# the stream parses unambiguously whatever the bytes are.
KCAT_FORMAT = "%p,%o,%K:%k%R%s"

# Logical types whose fastavro value is a date/time object: decoded as the
# underlying int/long instead (the logical type changes no bytes).
RAW_LOGICAL_TYPES = {
    "timestamp-millis",
    "timestamp-micros",
    "timestamp-nanos",
    "local-timestamp-millis",
    "local-timestamp-micros",
    "local-timestamp-nanos",
    "date",
    "time-millis",
    "time-micros",
}


class Fail(Exception):
    pass


def log(msg):
    print(f"read_profiles.py: {msg}", file=sys.stderr)


def strip_time_logical_types(schema):
    """A copy of a schema (JSON form) without date/time logical types."""
    if isinstance(schema, list):
        return [strip_time_logical_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k == "logicalType" and v in RAW_LOGICAL_TYPES:
            continue
        if k in ("type", "items", "values"):
            out[k] = strip_time_logical_types(v)
        elif k == "fields":
            out[k] = [dict(f, type=strip_time_logical_types(f["type"])) for f in v]
        else:
            out[k] = copy.deepcopy(v)
    return out


def reader_schema(schema_json):
    """The fastavro parsed schema used to decode (time types as numbers)."""
    return parse_schema(strip_time_logical_types(schema_json), named_schemas={})


def fingerprint_bytes(schema_json):
    """The 8 single-object fingerprint bytes (little-endian) as fastavro computes them."""
    pcf = to_parsing_canonical_form(parse_schema(schema_json, named_schemas={}))
    return bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))


def load_schema_dirs(dirs):
    """{fingerprint bytes: (file, parsed reader schema)} for every .avsc in dirs."""
    by_fp = {}
    for d in dirs:
        files = sorted(glob.glob(os.path.join(d, "*.avsc")))
        if not files:
            raise Fail(f"no .avsc files in {d}")
        for path in files:
            try:
                with open(path, encoding="utf-8") as f:
                    schema_json = json.load(f)
                by_fp.setdefault(fingerprint_bytes(schema_json), (path, reader_schema(schema_json)))
            except Exception as e:  # noqa: BLE001 - any reason the schema is unusable
                raise Fail(f"{path}: not a usable Avro schema ({type(e).__name__}: {e})") from e
    return by_fp


def run_kcat(kcat, bootstrap, topic):
    """kcat's raw output for the whole topic (read_committed, up to the end)."""
    cmd = [
        kcat,
        "-C",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-X",
        "isolation.level=read_committed",
        "-f",
        KCAT_FORMAT,
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise Fail(f"kcat exited with {proc.returncode} reading {topic}: {err}")
    return proc.stdout


def parse_kcat(out):
    """Yields (partition, offset, key bytes | None, payload bytes | None)."""
    pos = 0
    n = len(out)

    def ascii_int(end_char):
        nonlocal pos
        end = out.find(end_char, pos)
        if end < 0:
            raise Fail(f"kcat output truncated at byte {pos}")
        try:
            v = int(out[pos:end].decode("ascii"))
        except ValueError as e:
            raise Fail(f"unexpected kcat output at byte {pos}") from e
        pos = end + 1
        return v

    def take(length):
        nonlocal pos
        if length < 0:
            return None
        if pos + length > n:
            raise Fail(f"kcat output truncated at byte {pos}")
        b = out[pos : pos + length]
        pos += length
        return b

    while pos < n:
        partition = ascii_int(b",")
        offset = ascii_int(b",")
        key = take(ascii_int(b":"))
        if pos + 4 > n:
            raise Fail(f"kcat output truncated at byte {pos}")
        (plen,) = struct.unpack(">i", out[pos : pos + 4])
        pos += 4
        yield partition, offset, key, take(plen)


def json_default(o):
    """JSON for what fastavro returns beyond JSON's types: bytes/fixed as
    Avro's JSON encoding writes them (one code point per byte), decimal and
    uuid as strings."""
    if isinstance(o, (bytes, bytearray)):
        return o.decode("latin-1")
    if isinstance(o, (decimal.Decimal, uuid.UUID)):
        return str(o)
    raise TypeError(f"cannot print a {type(o).__name__} as JSON")


def decode_datum(schema, data, where):
    buf = io.BytesIO(data)
    try:
        value = fastavro.schemaless_reader(buf, schema)
    except Exception as e:  # noqa: BLE001 - the message may contain data: not printed
        raise Fail(f"{where}: the datum does not decode ({type(e).__name__})") from e
    if buf.tell() != len(data):
        raise Fail(f"{where}: {len(data) - buf.tell()} byte(s) left after the datum")
    return value


class Decoder:
    def __init__(self, schema_dirs, registry_url):
        self.by_fp = load_schema_dirs(schema_dirs)
        # A timeout, so that an unanswered request is retried instead of hanging.
        self.registry = SchemaRegistryClient({"url": registry_url, "timeout": 10}) if registry_url else None
        self.by_id = {}

    def registry_schema(self, schema_id, where):
        if schema_id not in self.by_id:
            if self.registry is None:
                raise Fail(f"{where}: Confluent-framed value (schema id {schema_id}) but no --registry given")
            try:
                schema_str = self.registry.get_schema(schema_id).schema_str
                self.by_id[schema_id] = reader_schema(json.loads(schema_str))
            except Exception as e:  # noqa: BLE001
                raise Fail(f"{where}: cannot get schema id {schema_id} from the registry ({type(e).__name__}: {e})") from e
        return self.by_id[schema_id]

    def decode(self, payload, where):
        """(encoding, value) of one payload."""
        if payload is None:
            return None, None
        if payload[:2] == b"\xc3\x01":
            if len(payload) < 10:
                raise Fail(f"{where}: single-object value shorter than its 10-byte header")
            fp = payload[2:10]
            found = self.by_fp.get(fp)
            if found is None:
                raise Fail(
                    f"{where}: unknown single-object fingerprint 0x{int.from_bytes(fp, 'little'):016x} "
                    f"(wire bytes {fp.hex()}); no schema in the schema dirs has it"
                )
            return "single-object", decode_datum(found[1], payload[10:], where)
        if payload[:1] == b"\x00":
            if len(payload) < 5:
                raise Fail(f"{where}: Confluent-framed value shorter than its 5-byte header")
            (schema_id,) = struct.unpack(">I", payload[1:5])
            return "confluent", decode_datum(self.registry_schema(schema_id, where), payload[5:], where)
        raise Fail(f"{where}: value is neither single-object (C3 01) nor Confluent-framed (00): starts with {payload[:2].hex()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, e.g. 127.0.0.1:19092")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--registry", help="Confluent-compatible registry base URL, for Confluent-framed values")
    ap.add_argument(
        "--schemas",
        action="append",
        metavar="DIR",
        help="directory of .avsc writer schemas for single-object values "
        "(repeatable; default: the repo's schemas/)",
    )
    ap.add_argument("--kcat", help="kcat binary (default: $TACTFUL_TEST_KCAT, else kcat on PATH)")
    args = ap.parse_args()

    kcat = args.kcat or os.environ.get("TACTFUL_TEST_KCAT") or shutil.which("kcat")
    if not kcat:
        log("error: kcat not found (scripts/kcat.sh installs it; or pass --kcat)")
        sys.exit(1)
    try:
        decoder = Decoder(args.schemas or [os.path.join(REPO_DIR, "schemas")], args.registry)
        out = run_kcat(kcat, args.bootstrap, args.topic)
        lines = []
        for partition, offset, key, payload in parse_kcat(out):
            where = f"{args.topic} partition {partition} offset {offset}"
            try:
                key_str = None if key is None else key.decode("utf-8")
            except UnicodeDecodeError as e:
                raise Fail(f"{where}: the key is not UTF-8") from e
            encoding, value = decoder.decode(payload, where)
            lines.append(
                json.dumps(
                    {"partition": partition, "offset": offset, "key": key_str, "encoding": encoding, "value": value},
                    ensure_ascii=False,
                    default=json_default,
                )
            )
    except Fail as e:
        log(f"error: {e}")
        sys.exit(1)
    except subprocess.TimeoutExpired:
        log(f"error: kcat did not finish reading {args.topic} within 120 s")
        sys.exit(1)
    # Printed only once everything decoded: a failure prints no partial output.
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()

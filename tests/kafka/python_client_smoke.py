#!/usr/bin/python3
"""Proves a second process, in another language, can use fhirx-kafka-mock.

usage: python_client_smoke.py [BOOTSTRAP_FILE]
    BOOTSTRAP_FILE defaults to $FXK_BOOTSTRAP_FILE (set by fhirx-kafka-with-mock).
    Run with /usr/bin/python3: Debian's python3-confluent-kafka is installed for it.

Produces keyed messages with headers through confluent_kafka, reads them back
with a consumer group and checks every key arrives once with its headers; when
$FXK_CONTROL is set, also checks the mock's /status counts the messages.
"""
import json
import os
import sys
import time
import urllib.request

from confluent_kafka import Consumer, KafkaException, Producer

TOPIC = "fhirx.results"
N = 25


def fail(msg):
    print(f"python_client_smoke: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def read_bootstrap(argv):
    path = argv[1] if len(argv) > 1 else os.environ.get("FXK_BOOTSTRAP_FILE")
    if not path:
        fail("give the bootstrap file path as the argument or in $FXK_BOOTSTRAP_FILE")
    with open(path, encoding="utf-8") as f:
        bootstrap = f.read().strip()
    if not bootstrap:
        fail(f"{path} is empty")
    return bootstrap


def produce(bootstrap):
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(N):
        p.produce(TOPIC, key=f"py-{i}", value=json.dumps({"i": i}),
                  headers=[("source", b"python"), ("index", str(i).encode())],
                  on_delivery=on_delivery)
    left = p.flush(30)
    if left or errors:
        fail(f"{left} messages unacknowledged, delivery errors: {errors[:3]}")


def consume(bootstrap):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "python-smoke",
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    c.subscribe([TOPIC])
    seen = {}
    started = time.monotonic()
    try:
        while len(seen) < N and time.monotonic() - started < 30:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            key = msg.key().decode()
            if key in seen:
                fail(f"{key} delivered twice")
            seen[key] = (json.loads(msg.value()), dict(msg.headers() or []))
        c.commit(asynchronous=False)
    finally:
        c.close()
    if len(seen) != N:
        fail(f"consumed {len(seen)} of {N} messages in 30 s")
    for i in range(N):
        value, headers = seen[f"py-{i}"]
        if value != {"i": i}:
            fail(f"py-{i} has value {value}")
        if headers != {"source": b"python", "index": str(i).encode()}:
            fail(f"py-{i} has headers {headers}")
    return time.monotonic() - started


def check_status():
    control = os.environ.get("FXK_CONTROL")
    if not control:
        return
    with urllib.request.urlopen(control + "/status", timeout=30) as r:
        status = json.load(r)
    counted = status["topics"][TOPIC]["messages"]
    if counted != N:
        fail(f"/status counts {counted} messages in {TOPIC}, expected {N}")


def main(argv):
    bootstrap = read_bootstrap(argv)
    produce(bootstrap)
    took = consume(bootstrap)
    check_status()
    print(f"python_client_smoke: {N} messages produced and consumed via {bootstrap} "
          f"(group consume took {took:.1f} s)")


if __name__ == "__main__":
    main(sys.argv)

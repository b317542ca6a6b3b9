#!/usr/bin/python3
"""Tests validate_topics.py against a Kafka cluster (normally fhirx-kafka-mock).

usage: validator_selftest.py [BOOTSTRAP]
    BOOTSTRAP defaults to $FXK_BOOTSTRAP; topics are created through the mock's control
    API at $FXK_CONTROL (both set by fhirx-kafka-with-mock). Run with /usr/bin/python3.

Every case gets its own topics ({case}.results, {case}.failures, ...; validate_topics.py
--prefix), so the cases do not see each other's messages:
- a valid set of messages of every kind (jobs that completed, partly failed, failed, an
  invalid job, a parked dead letter, at-least-once duplicates) passes, with --check-jobs,
  and the summary JSON counts them right;
- --expect-status waits for status messages produced while it runs, and fails with a clear
  message when they never come;
- the same valid set plus one bad message fails, per topic, naming the topic, the bad
  message's partition and offset, and what is wrong.
Ends with a 'N passed, N failed' line.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import Producer

HERE = os.path.dirname(os.path.abspath(__file__))
VALIDATOR = os.path.join(HERE, "validate_topics.py")
KINDS = ("results", "failures", "dlq", "status", "parking")
TENANT = "ec2458f2-1e24-41c8-b71b-0e701af7583d"
BASE = f"https://fhir-ehr.cerner.com/r4/{TENANT}"


# -- the valid set ---------------------------------------------------------------------------

def msg(kind, key, value, headers=None):
    if isinstance(value, (dict, list)):
        value = json.dumps(value).encode()
    elif isinstance(value, str):
        value = value.encode()
    return {"kind": kind, "key": key, "value": value, "headers": dict(headers or {})}


def result(job, rtype, rid, patient, via, url, attempt=1, tenant=TENANT):
    h = {"fhirx-job-id": job, "fhirx-tenant": tenant, "fhirx-source-url": url,
         "fhirx-fetched-at": "2026-11-30T06:10:00.123Z", "fhirx-attempt": str(attempt), "fhirx-via": via}
    if patient:
        h["fhirx-patient"] = patient
    value = {"resourceType": rtype, "id": rid, "meta": {"lastUpdated": "2026-11-29T21:14:03.000Z"}}
    if rtype != "Practitioner":
        value["subject"] = {"reference": f"Patient/{patient}"}
    return msg("results", f"{tenant}/{rtype}/{rid}", value, h)


def failure(job, tenant, error_class, transient, source, patient=None, rtype=None, reference=None,
            http_status=None, url=None, attempt=1):
    value = {"type": "failure", "job_id": job, "tenant": tenant, "patient": patient, "resource_type": rtype,
             "reference": reference, "error_class": error_class, "transient": transient,
             "http_status": http_status, "outcome": None, "url": url, "attempts": 1,
             "message": f"{error_class} failure for the selftest", "time": "2026-11-30T06:10:01.402Z",
             "attempt": attempt, "source": source}
    h = {"fhirx-job-id": job, "fhirx-attempt": str(attempt)}
    if tenant:
        h["fhirx-tenant"] = tenant
    return msg("failures", f"{tenant or ''}/{job}", value, h)


def dead_letter(job, value, error_class, source, tenant=TENANT, attempt=1, extra=None, kind="dlq"):
    h = {"fhirx-error-class": error_class, "fhirx-reason": f"{error_class} (selftest)",
         "fhirx-original-topic": source["topic"], "fhirx-original-partition": str(source["partition"]),
         "fhirx-original-offset": str(source["offset"]), "fhirx-original-timestamp": "1796018999512",
         "fhirx-job-id": job, "fhirx-attempt": str(attempt),
         "fhirx-first-failure": "2026-11-30T06:10:01.402Z", "fhirx-last-failure": "2026-11-30T06:10:01.655Z"}
    if tenant:
        h["fhirx-tenant"] = tenant
    h.update(extra or {})
    return msg(kind, job, value, h)


def status(job, tenant, state, source, counts, patients, tasks, tasks_failed, failures, error_class,
           attempt=1, since=None, full_types=()):
    value = {"type": "status", "job_id": job, "tenant": tenant, "state": state, "attempt": attempt,
             "patients": patients, "tasks": tasks, "tasks_failed": tasks_failed, "counts": counts,
             "resources": sum(counts.values()), "references_fetched": counts.get("Practitioner", 0),
             "references_cached": 0, "failures": failures, "error_class": error_class,
             "full_types": list(full_types), "since": since,
             "started_at": "2026-11-30T06:09:59.870Z", "finished_at": "2026-11-30T06:10:04.321Z",
             "duration_ms": 4451, "source": source, "worker": "selftest-host:4242"}
    return msg("status", job, value)


def src(partition, offset):
    return {"topic": "fhirx.jobs", "partition": partition, "offset": offset}


def valid_outputs():
    """Outputs of five jobs, in the order a worker would produce them (statuses last)."""
    out = []
    # st-partial: 2 patients x (Patient, Observation, Condition); Condition of 102 fails on
    # scope, Practitioner/5 is not found; everything else is published.
    s1 = src(3, 18211)
    obs = f"{BASE}/Observation?patient=&_count="
    out += [result("st-partial", "Patient", "101", "101", "read", f"{BASE}/Patient/101"),
            result("st-partial", "Patient", "102", "102", "read", f"{BASE}/Patient/102"),
            result("st-partial", "Observation", "L-1", "101", "search", obs),
            result("st-partial", "Observation", "L-2", "101", "search", obs + "&-pageContext=&-pageDirection="),
            result("st-partial", "Observation", "L-3", "102", "search", obs),
            result("st-partial", "Condition", "C-1", "101", "search", f"{BASE}/Condition?patient="),
            result("st-partial", "Practitioner", "593923", None, "reference", f"{BASE}/Practitioner/593923"),
            failure("st-partial", TENANT, "scope", False, s1, patient="102", rtype="Condition",
                    http_status=403, url=f"{BASE}/Condition?patient="),
            failure("st-partial", TENANT, "not_found", False, s1, rtype="Practitioner",
                    reference="Practitioner/5", http_status=404, url=f"{BASE}/Practitioner/5"),
            dead_letter("st-partial", {"job_id": "st-partial", "tenant": TENANT,
                                       "tasks": [{"patient": "102", "resources": ["Condition"]}]},
                        "scope", s1, extra={"fhirx-http-status": "403"}),
            status("st-partial", TENANT, "partial", s1,
                   {"Patient": 2, "Observation": 3, "Condition": 1, "Practitioner": 1},
                   patients=2, tasks=6, tasks_failed=1, failures=2, error_class="scope")]
    # st-done: an incremental job of attempt 2 that completed; its result and status are
    # delivered twice (at least once).
    s2 = src(0, 20777)
    r = result("st-done", "Goal", "G-7", "101", "search", f"{BASE}/Goal?patient=", attempt=2)
    st = status("st-done", TENANT, "completed", s2, {"Goal": 1}, patients=1, tasks=1, tasks_failed=0,
                failures=0, error_class=None, attempt=2, since="2026-11-29", full_types=["Goal"])
    out += [r, copy.deepcopy(r), st, copy.deepcopy(st)]
    # An unparseable job: failure and status with the surrogate id, the original bytes dead-lettered.
    s3 = src(1, 5520)
    sur = "offset:fhirx.jobs/1/5520"
    out += [failure(sur, None, "invalid_job", False, s3),
            dead_letter(sur, b'{"job_id": "x", "tenant": ', "invalid_job", s3, tenant=None),
            status(sur, None, "failed", s3, {}, 0, 0, 0, 1, "invalid_job")]
    # An unparseable job too large to dead-letter: empty value, fhirx-value-omitted.
    s4 = src(1, 5521)
    sur = "offset:fhirx.jobs/1/5521"
    out += [failure(sur, None, "invalid_job", False, s4),
            dead_letter(sur, None, "invalid_job", s4, tenant=None,
                        extra={"fhirx-value-omitted": "original-too-large"}),
            status(sur, None, "failed", s4, {}, 0, 0, 0, 1, "invalid_job")]
    # st-nowhere: a tenant the workers do not know; the parseable job is dead-lettered whole.
    s5 = src(2, 91)
    job = {"job_id": "st-nowhere", "tenant": "nowhere", "patients": ["101"], "resources": ["Patient"]}
    out += [failure("st-nowhere", "nowhere", "unknown_tenant", False, s5),
            dead_letter("st-nowhere", job, "unknown_tenant", s5, tenant="nowhere"),
            status("st-nowhere", "nowhere", "failed", s5, {}, 1, 0, 0, 1, "unknown_tenant")]
    # fhirx replay parked st-partial's dead letter.
    out.append(dead_letter("st-partial", {"job_id": "st-partial", "tenant": TENANT,
                                          "tasks": [{"patient": "102", "resources": ["Condition"]}]},
                           "scope", s1, kind="parking",
                           extra={"fhirx-http-status": "403", "fhirx-parked-reason": "scope errors are not replayed"}))
    return out


VALID_STATUSES = 6  # status messages in valid_outputs() (one duplicate)


# -- Kafka -------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, bootstrap, control):
        self.bootstrap = bootstrap
        self.control = control
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                                  "allow.auto.create.topics": False})

    def create_topics(self, prefix, partitions=3):
        for kind in KINDS:
            body = json.dumps({"name": prefix + kind, "partitions": partitions}).encode()
            req = urllib.request.Request(self.control + "/topics", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                if r.status != 201:
                    raise RuntimeError(f"POST /topics {prefix + kind}: HTTP {r.status}")
        # Wait until the producer's metadata sees them all.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            md = self.producer.list_topics(timeout=5)
            if all(prefix + k in md.topics for k in KINDS):
                return
            time.sleep(0.1)
        raise RuntimeError(f"topics {prefix}* not visible after 15 s")

    def produce(self, prefix, messages):
        """Produces messages in order; returns [(partition, offset)] in the same order."""
        positions = [None] * len(messages)
        errors = []

        def report(i):
            def cb(err, m):
                if err is not None:
                    errors.append(str(err))
                else:
                    positions[i] = (m.partition(), m.offset())
            return cb

        for i, m in enumerate(messages):
            headers = []
            for name, v in (m.get("raw_headers") or list(m["headers"].items())):
                headers.append((name, v if isinstance(v, bytes) or v is None else str(v).encode()))
            self.producer.produce(prefix + m["kind"], key=m["key"].encode() if m["key"] is not None else None,
                                  value=m["value"], headers=headers, on_delivery=report(i))
            self.producer.poll(0)
        left = self.producer.flush(30)
        if left or errors:
            raise RuntimeError(f"{left} messages undelivered, errors {errors[:3]}")
        return positions


# -- the tests --------------------------------------------------------------------------------

class Runner:
    def __init__(self, cluster):
        self.k = cluster
        self.passed = 0
        self.failed = 0
        self.n = 0
        self.tmp = tempfile.mkdtemp(prefix="fhirx-validator-selftest-")

    def check(self, name, cond, detail=""):
        if cond:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}: {detail}")

    def prefix(self):
        self.n += 1
        return f"selftest{self.n}."

    def validate(self, prefix, *extra, timeout=30):
        summary = os.path.join(self.tmp, f"{prefix}summary.json")
        cmd = [sys.executable, VALIDATOR, "--bootstrap", self.k.bootstrap, "--prefix", prefix,
               "--topics", ",".join(KINDS), "--timeout", str(timeout), "--summary-json", summary, *extra]
        started = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
        took = time.monotonic() - started
        data = None
        if os.path.exists(summary):
            with open(summary, encoding="utf-8") as f:
                data = json.load(f)
        return p.returncode, p.stdout + p.stderr, data, took

    def valid_set(self):
        prefix = self.prefix()
        self.k.create_topics(prefix)
        self.k.produce(prefix, valid_outputs())
        rc, out, summary, took = self.validate(prefix, "--check-jobs", "--expect-status", str(VALID_STATUSES))
        self.check("the valid set passes (with --check-jobs)", rc == 0, f"exit {rc}\n{out}")
        if rc != 0 or summary is None:
            return
        print(f"     ({took:.1f} s) " + out.strip().replace("\n", "\n     "))
        t = summary["topics"]
        expect = {"results": 9, "failures": 5, "dlq": 4, "status": 6, "parking": 1}
        got = {k: t[prefix + k]["messages"] for k in KINDS}
        self.check("summary: messages per topic", got == expect, f"{got} != {expect}")
        self.check("summary: status states (duplicates counted once)",
                   summary["status_states"] == {"partial": 1, "completed": 1, "failed": 3},
                   summary["status_states"])
        self.check("summary: results per type",
                   summary["results_per_type"] == {"Condition": 1, "Goal": 2, "Observation": 3,
                                                   "Patient": 2, "Practitioner": 1},
                   summary["results_per_type"])
        job = summary["jobs"].get("st-partial", {})
        keys = [f"{TENANT}/{k}" for k in ("Condition/C-1", "Observation/L-1", "Observation/L-2",
                                          "Observation/L-3", "Patient/101", "Patient/102", "Practitioner/593923")]
        self.check("summary: a job's result keys, failures, dead letters, parked, status",
                   job.get("results") == keys and job.get("failures") == 2 and job.get("dead_letters") == 1
                   and job.get("parked") == 1 and [s["state"] for s in job.get("statuses", [])] == ["partial"],
                   json.dumps(job)[:600])
        done = summary["jobs"].get("st-done", {})
        self.check("summary: duplicates keep one key and count every message",
                   done.get("results") == [f"{TENANT}/Goal/G-7"] and done.get("result_messages") == 2,
                   json.dumps(done))
        self.check("summary: failure and dead-letter classes",
                   summary["failure_classes"] == {"invalid_job": 2, "not_found": 1, "scope": 1, "unknown_tenant": 1}
                   and summary["dead_letter_classes"] == {"invalid_job": 2, "scope": 1, "unknown_tenant": 1},
                   (summary["failure_classes"], summary["dead_letter_classes"]))

    def empty_topics(self):
        prefix = self.prefix()
        self.k.create_topics(prefix)
        rc, out, summary, took = self.validate(prefix, "--check-jobs")
        self.check("empty topics pass quickly", rc == 0 and took < 15 and summary["ok"], f"exit {rc} in {took:.1f} s\n{out}")

    def waits_for_statuses(self):
        prefix = self.prefix()
        self.k.create_topics(prefix)
        outputs = valid_outputs()
        first = [m for m in outputs if m["kind"] != "status"]
        statuses = [m for m in outputs if m["kind"] == "status"]
        self.k.produce(prefix, first)

        def later():
            time.sleep(3)
            self.k.produce(prefix, statuses)
        t = threading.Thread(target=later)
        t.start()
        rc, out, summary, took = self.validate(prefix, "--check-jobs", "--expect-status", str(len(statuses)))
        t.join()
        self.check("--expect-status waits for statuses produced later",
                   rc == 0 and took >= 2.5 and summary["topics"][prefix + "status"]["messages"] == len(statuses),
                   f"exit {rc} after {took:.1f} s\n{out}")
        rc, out, summary, took = self.validate(prefix, "--expect-status", str(len(statuses) + 1), timeout=3)
        self.check("--expect-status fails when the statuses never come",
                   rc == 1 and f"has {len(statuses)} of the {len(statuses) + 1} expected status messages" in out
                   and summary is not None and not summary["ok"],
                   f"exit {rc}\n{out}")

    def missing_topic(self):
        rc, out, _, _ = self.validate("nosuchprefix.")
        self.check("a missing topic is a usage error (exit 2), not created",
                   rc == 2 and "do not exist" in out
                   and "nosuchprefix.results" not in self.k.producer.list_topics(timeout=5).topics,
                   f"exit {rc}\n{out}")

    def bad(self, name, mutate, expect, check_jobs=False):
        """The valid set, changed by mutate(list) -> the bad message; must fail naming it."""
        prefix = self.prefix()
        self.k.create_topics(prefix)
        outputs = valid_outputs()
        bad = mutate(outputs)
        positions = self.k.produce(prefix, outputs)
        part, off = positions[next(i for i, m in enumerate(outputs) if m is bad)]
        extra = ["--check-jobs"] if check_jobs else []
        rc, out, summary, _ = self.validate(prefix, *extra)
        where = f"{prefix}{bad['kind']} partition {part} offset {off}"
        self.check(f"bad {bad['kind']}: {name}",
                   rc == 1 and any(where in line and expect in line for line in out.splitlines())
                   and summary is not None and summary["violations"] >= 1,
                   f"exit {rc}; expected a line with {where!r} and {expect!r}:\n{out}")


def first(outputs, kind, key=None):
    return next(m for m in outputs if m["kind"] == kind and (key is None or m["key"] == key))


def add(outputs, m):
    outputs.insert(0, m)
    return m


def change(m, **fields):
    """m with fields (key, value, raw_headers) replaced."""
    m.update(fields)
    return m


def drop_header(m, name):
    del m["headers"][name]
    return m


def set_header(m, name, value):
    m["headers"][name] = value
    return m


def set_value(m, **fields):
    v = json.loads(m["value"])
    v.update(fields)
    m["value"] = json.dumps(v).encode()
    return m


def main(argv):
    bootstrap = argv[1] if len(argv) > 1 else os.environ.get("FXK_BOOTSTRAP")
    control = os.environ.get("FXK_CONTROL")
    if not bootstrap or not control:
        print("validator_selftest: needs $FXK_BOOTSTRAP and $FXK_CONTROL "
              "(run it through fhirx-kafka-with-mock)", file=sys.stderr)
        return 2
    r = Runner(Cluster(bootstrap, control))
    started = time.monotonic()
    r.valid_set()
    r.empty_topics()
    r.waits_for_statuses()
    r.missing_topic()

    # results
    r.bad("key tenant differs from fhirx-tenant",
          lambda o: set_header(first(o, "results"), "fhirx-tenant", "other-tenant"),
          "does not start with the fhirx-tenant header")
    r.bad("key does not match the value's id",
          lambda o: set_value(first(o, "results"), id="999"),
          "does not match the value's resourceType/id")
    r.bad("fhirx-attempt 0", lambda o: set_header(first(o, "results"), "fhirx-attempt", "0"),
          "headers fhirx-attempt: '0' does not match")
    r.bad("a header twice",
          lambda o: change(first(o, "results"),
                           raw_headers=list(first(o, "results")["headers"].items()) + [("fhirx-via", "read")]),
          "header fhirx-via appears 2 times")
    r.bad("not JSON", lambda o: change(first(o, "results"), value=b"<Bundle/>"),
          "the value is not JSON")
    r.bad("an impossible fetched-at",
          lambda o: set_header(first(o, "results"), "fhirx-fetched-at", "2026-02-30T06:10:00.123Z"),
          "is not a real instant")
    # failures
    r.bad("key is not tenant/job_id", lambda o: change(first(o, "failures"), key="st-partial"),
          "key 'st-partial' is not {tenant}/{job_id}")
    r.bad("unknown error class", lambda o: set_value(first(o, "failures"), error_class="timeout"),
          "value error_class: 'timeout' is not one of")
    r.bad("fhirx-attempt header disagrees with the value",
          lambda o: set_header(first(o, "failures"), "fhirx-attempt", "2"),
          "header fhirx-attempt '2' disagrees with the value's attempt 1")
    r.bad("surrogate does not match source",
          lambda o: set_value(first(o, "failures", "/offset:fhirx.jobs/1/5520"), source=src(1, 9)),
          "does not name the job's position")
    # dead letters
    r.bad("scope dead letter whose value is not a job",
          lambda o: change(first(o, "dlq", "st-partial"), value=b"{}"),
          "only an invalid_job dead letter carries the original bytes")
    r.bad("no fhirx-original-offset",
          lambda o: drop_header(first(o, "dlq", "st-partial"), "fhirx-original-offset"),
          "'fhirx-original-offset' is a required property")
    r.bad("value omitted but present",
          lambda o: change(first(o, "dlq", "offset:fhirx.jobs/1/5521"), value=b"{"),
          "fhirx-value-omitted is set but the value has 1 bytes")
    # status
    r.bad("resources is not the sum of counts", lambda o: set_value(first(o, "status", "st-partial"), resources=8),
          "resources is 8 but counts add up to 7")
    r.bad("completed with failures",
          lambda o: set_value(first(o, "status", "st-done"), failures=1),
          "value failures: 0 was expected")
    r.bad("key is not job_id", lambda o: change(first(o, "status", "st-partial"), key="st-other"),
          "key 'st-other' is not the value's job_id")
    # parking
    r.bad("no fhirx-parked-reason",
          lambda o: drop_header(first(o, "parking"), "fhirx-parked-reason"),
          "'fhirx-parked-reason' is a required property")
    # across topics (--check-jobs)
    r.bad("a result of a job without status",
          lambda o: add(o, result("st-ghost", "Patient", "7", "7", "read", f"{BASE}/Patient/7")),
          "of job 'st-ghost' attempt 1 but no status", check_jobs=True)
    r.bad("a failure of a completed job",
          lambda o: add(o, failure("st-done", TENANT, "transient", True, src(0, 20777), patient="101",
                                   rtype="Goal", attempt=2)),
          "failure", check_jobs=True)
    r.bad("a status counting more results than were published",
          lambda o: set_value(first(o, "status", "st-partial"),
                              counts={"Patient": 2, "Observation": 4, "Condition": 1, "Practitioner": 1}, resources=8),
          "status counts 4 Observation but 3 Observation results", check_jobs=True)
    r.bad("a dead letter naming more tasks than failed",
          lambda o: set_value(first(o, "dlq", "st-partial"),
                              tasks=[{"patient": "102", "resources": ["Condition", "Observation"]}]),
          "the dead letter names 2 tasks but the status", check_jobs=True)

    shutil.rmtree(r.tmp, ignore_errors=True)
    print(f"validator_selftest: {time.monotonic() - started:.1f} s")
    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

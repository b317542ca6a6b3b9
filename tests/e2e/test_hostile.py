#!/usr/bin/python3
"""Hostile input end to end (issue 13): what a peer sends never makes a record vanish,
never crashes a worker and never grows a job's memory without bound.

  test_hostile.py SCENARIO

utf8        a job whose tenant is 63 bytes then "é" (a fixed 64-byte copy would halve the
            é, and jansson refuses half a character): it gets its failure record, its dead
            letter and its status record, each naming the tenant cut on a character (the
            63 bytes), and the worker counted no unbuilt record.
tombstone   a Kafka tombstone (a null value) on the jobs topic: a dead letter whose
            fhirx-reason says "empty message (tombstone)", a failure record and a failed
            status, keyed by the message key; the job after it completes and the partition
            is committed past both.
foreign_cap a job whose resources reference many distinct URLs outside the tenant's base,
            with worker.max_reference_failures_per_job 5: exactly 5 foreign_reference failure
            records (one URL met on every resource is reported once),
            the status record's failures_not_recorded counts the rest, and the metric
            fhirx_failures_not_recorded_total says the same.
ids_references  the id rule on the reference path (the patient path is e2e_cerner_ids, bulk
            lines unit_bulk): two referenced Practitioners whose 256-character ids differ in
            their last character both arrive under whole, distinct keys; references with a
            257-byte id or a space are one invalid_response failure each, never a drop.
replay_escapes  a dead letter whose headers hold terminal escape sequences (ESC ] title,
            BEL, ESC [ 2J, CR): `fhirx replay --dry-run` shows them escaped (\x1b), never raw.
"""
import collections
import json
import subprocess
import sys
import time

from e2e import FHIRX, SANDBOX, Check, Env, log

TYPES = ["Patient", "Observation"]


def scenario_utf8(check):
    env = Env(partitions=1, worker_extra={"worker": {"threads": 1}})
    try:
        w = env.start_worker()
        tenant = "a" * 63 + "\u00e9"
        check(len(tenant.encode()) == 65, "a tenant of 65 bytes, the é at bytes 64-65")
        env.enqueue([{"job_id": "utf8-tenant", "tenant": tenant, "patients": ["20000001"]},
                     {"job_id": "utf8-after", "tenant": SANDBOX, "patients": ["20000001"],
                      "resources": TYPES}], partition=0)
        st = {m.key: m.json() for m in env.wait_statuses(["utf8-tenant", "utf8-after"])}
        s = st["utf8-tenant"]
        check(s["state"] == "failed" and s["error_class"] == "invalid_job",
              "the job with the long tenant has its status record: %s" % s["state"])
        check(s["tenant"] == "a" * 63,
              "its status names the tenant cut on a character: %r" % s["tenant"])
        dlq = [m for m in env.read("fhirx.dlq", 1) if m.key == "utf8-tenant"]
        check(len(dlq) == 1 and dlq[0].headers.get("fhirx-tenant") == "a" * 63 and
              dlq[0].headers.get("fhirx-error-class") == "invalid_job",
              "its dead letter, the tenant header cut on a character")
        check(json.loads(dlq[0].value)["tenant"] == tenant,
              "the dead letter keeps the job as it was, whole tenant included")
        fails = [m.json() for m in env.read("fhirx.failures", 1)
                 if m.json()["job_id"] == "utf8-tenant"]
        check(len(fails) == 1 and ("tenant: '%s' is not a tenant id" % ("a" * 63)) in
              fails[0]["message"] and "\ufffd" not in fails[0]["message"] and
              "?" not in fails[0]["message"].split("is not a tenant id")[0],
              "its failure record quotes the tenant cut on a character: %s" %
              (fails and fails[0]["message"][:120]))
        check(st["utf8-after"]["state"] == "completed", "the job after it completes")
        check(env.metric(w, "fhirx_records_unbuilt_total") == 0, "no record went unbuilt")
        rc, out = env.validate(2)
        check(rc == 0, "outputs validate against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def scenario_tombstone(check):
    env = Env(partitions=1, worker_extra={"worker": {"threads": 1}})
    try:
        w = env.start_worker()
        p = env.producer()
        errors = []
        p.produce("fhirx.jobs", value=None, key=b"tomb-1", partition=0,
                  on_delivery=lambda err, msg: err and errors.append(err))
        check(p.flush(30) == 0 and not errors, "a tombstone produced to fhirx.jobs")
        p = None  # closed now, not after the embedded Kafka is gone
        after = {"job_id": "tomb-after", "tenant": SANDBOX, "patients": ["20000001"],
                 "resources": TYPES}
        env.enqueue([after], partition=0)
        st = {m.key: m.json() for m in env.wait_statuses(["tomb-1", "tomb-after"])}
        check(st["tomb-1"]["state"] == "failed" and st["tomb-1"]["error_class"] == "invalid_job",
              "the tombstone gets a failed status record, class invalid_job")
        dlq = [m for m in env.read("fhirx.dlq", 1) if m.key == "tomb-1"]
        check(len(dlq) == 1, "the tombstone is dead-lettered once")
        reason = dlq[0].headers.get("fhirx-reason") or ""
        check(reason.startswith("empty message (tombstone)"),
              "the dead letter says why: %s" % reason)
        check(dlq[0].headers.get("fhirx-original-offset") == "0",
              "the dead letter names where the tombstone was")
        fails = [m.json() for m in env.read("fhirx.failures", 1) if m.json()["job_id"] == "tomb-1"]
        check(len(fails) == 1 and "tombstone" in fails[0]["message"],
              "one failure record that says tombstone")
        check(st["tomb-after"]["state"] == "completed", "the job after it completes")
        check(env.stop(w) == 0, "worker exits 0 (a sanitized worker did not die on it)")
        committed, ends = env.committed()
        check(committed == ends == {0: 2}, "the partition is committed past both: %s" % committed)
    finally:
        env.close()


def scenario_foreign_cap(check):
    cap = 5
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 2}],
              worker_extra={"worker": {"max_reference_failures_per_job": cap}})
    try:
        w = env.start_worker()
        # 30 Observations, each with 5 performers on another host: 150 distinct foreign URLs,
        # one of them repeated on every resource (reported once, under the cap).
        entries = []
        for i in range(30):
            perf = [{"reference": "https://elsewhere.example/r4/Practitioner/%d-%d" % (i, k)}
                    for k in range(4)]
            perf.append({"reference": "https://elsewhere.example/r4/Practitioner/shared"})
            entries.append({"fullUrl": "x", "search": {"mode": "match"},
                            "resource": {"resourceType": "Observation", "id": "obs-%d" % i,
                                         "status": "final", "performer": perf}})
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"target": "fhir", "path": "Observation", "status": 200,
                      "body": json.dumps(bundle), "content_type": "application/fhir+json"})
        env.enqueue([{"job_id": "foreign-cap", "tenant": SANDBOX, "patients": ["20000001"],
                      "resources": ["Observation"], "follow_references": True}])
        st = {m.key: m.json() for m in env.wait_statuses(["foreign-cap"])}["foreign-cap"]
        fails = [m.json() for m in env.read("fhirx.failures", cap)
                 if m.json()["job_id"] == "foreign-cap"]
        classes = collections.Counter(f["error_class"] for f in fails)
        check(classes == {"foreign_reference": cap},
              "exactly %d foreign_reference failure records: %s" % (cap, dict(classes)))
        distinct = 30 * 4 + 1
        check(st["failures"] == cap and st["failures_not_recorded"] == distinct - cap,
              "the status counts %d recorded and %d not recorded (%d distinct URLs): %s, %s" % (
                  cap, distinct - cap, distinct, st["failures"], st["failures_not_recorded"]))
        check(st["state"] == "partial" and st["counts"].get("Observation") == 30,
              "the job is partial with its 30 Observations published")
        check(env.metric(w, "fhirx_failures_not_recorded_total") == distinct - cap,
              "fhirx_failures_not_recorded_total says the same")
        check(not [m for m in env.read("fhirx.dlq") if m.key == "foreign-cap"],
              "not dead-lettered (a replay cannot fix the server's references)")
        rc, out = env.validate(1)
        check(rc == 0, "outputs validate against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def scenario_replay_escapes(check):
    """A dead letter whose headers hold terminal escape sequences, listed by
    `fhirx replay --dry-run`: shown escaped, never raw."""
    env = Env(partitions=1)
    try:
        p = env.producer()
        job = {"job_id": "esc-1", "tenant": SANDBOX, "patients": ["20000001"], "attempt": 1}
        headers = [("fhirx-job-id", b"esc-1"),
                   ("fhirx-tenant", b"t1\x1b]0;owned\x07\x1b[2J"),
                   ("fhirx-attempt", b"1"),
                   ("fhirx-error-class", b"transient"),
                   ("fhirx-http-status", b"503\x1b[31m"),
                   ("fhirx-reason", b"boom"),
                   ("fhirx-original-topic", b"fhirx.jobs"),
                   ("fhirx-original-partition", b"0"),
                   ("fhirx-original-offset", b"0"),
                   ("fhirx-original-timestamp", b"0"),
                   ("fhirx-first-failure", b"2026-12-01T00:00:00Z"),
                   ("fhirx-last-failure", b"2026-12-01T00:00:00Z\r\x1b[K")]
        p.produce("fhirx.dlq", value=json.dumps(job).encode(), key=b"esc-1", headers=headers,
                  partition=0)
        check(p.flush(30) == 0, "a dead letter with escape sequences in its headers")
        p = None  # closed now, not after the embedded Kafka is gone
        r = subprocess.run([FHIRX, "replay", "--config", env.config, "--dry-run"],
                           capture_output=True, timeout=180)
        out = r.stdout.decode("utf-8", "replace")
        log(out)
        check(r.returncode == 0 and "esc-1" in out, "--dry-run lists it")
        check(b"\x1b" not in r.stdout and b"\x07" not in r.stdout and b"\r" not in r.stdout,
              "no raw ESC, BEL or CR reaches the terminal")
        check("t1\\x1b]0;owned\\x07\\x1b[2J" in out and "\\x0d\\x1b[K" in out and
              "503\\x1b[31m" in out,
              "the header values are shown escaped, in the table and the listing")
    finally:
        env.close()


def scenario_ids_references(check):
    """The id rule on the reference path: two referenced Practitioners whose 256-character
    ids differ only in their last character both arrive under whole, distinct keys; a
    reference whose id is too long or has a space is one invalid_response failure each."""
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 2}])
    try:
        w = env.start_worker()
        long_a, long_b = "L" * 255 + "a", "L" * 255 + "b"
        perf = [{"reference": "Practitioner/" + i} for i in
                (long_a, long_b, "L" * 257, "bad id")]
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"fullUrl": "x", "search": {"mode": "match"},
             "resource": {"resourceType": "Observation", "id": "obs-refs", "status": "final",
                          "performer": perf}}]}
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"target": "fhir", "path": "Observation", "status": 200,
                      "body": json.dumps(bundle), "content_type": "application/fhir+json"})
        for name, pid in (("pa", long_a), ("pb", long_b)):
            env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                         {"target": "fhir", "name": name, "path": "Practitioner/*" + pid[-1],
                          "status": 200, "content_type": "application/fhir+json",
                          "body": json.dumps({"resourceType": "Practitioner", "id": pid})})
        env.enqueue([{"job_id": "ids-refs", "tenant": SANDBOX, "patients": ["20000001"],
                      "resources": ["Observation"], "follow_references": True}])
        st = {m.key: m.json() for m in env.wait_statuses(["ids-refs"])}["ids-refs"]
        keys = sorted(m.key for m in env.read("fhirx.results", 3)
                      if m.headers.get("fhirx-job-id") == "ids-refs")
        want = sorted(["%s/Observation/obs-refs" % SANDBOX] +
                      ["%s/Practitioner/%s" % (SANDBOX, i) for i in (long_a, long_b)])
        check(keys == want, "both long-id Practitioners arrive under whole, distinct keys (%d)" %
              len(keys))
        fails = [m.json() for m in env.read("fhirx.failures", 2)
                 if m.json()["job_id"] == "ids-refs"]
        check(len(fails) == 2 and all(f["error_class"] == "invalid_response" and
                                      f["resource_type"] == "Practitioner" and
                                      "id rule" in f["message"] and "bad id" not in f["message"]
                                      for f in fails),
              "the too-long and the spaced reference are one invalid_response failure each: %s" %
              [f["message"][:80] for f in fails])
        check(st["state"] == "partial" and st["counts"].get("Practitioner") == 2,
              "the job is partial, counts %s" % st["counts"])
        rc, out = env.validate(1)
        check(rc == 0, "outputs validate against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


SCENARIOS = {"utf8": scenario_utf8, "tombstone": scenario_tombstone,
             "foreign_cap": scenario_foreign_cap, "replay_escapes": scenario_replay_escapes,
             "ids_references": scenario_ids_references}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))

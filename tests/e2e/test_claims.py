#!/usr/bin/python3
"""Claims of README.md and docs/ that had no test, each proved end to end.

  test_claims.py SCENARIO

delivery    "a failed delivery never advances the offset": every Produce to the broker
            leading fhirx.results fails; the job gets no status, its offset is not
            committed (while a later job of the same partition finishes and a job of
            another partition is committed); with the fault gone, a new worker runs the
            job again and it completes with exactly its resources.
redirects   "redirects are never followed": 30x answers to searches, reference reads, a
            bulk kick-off, a read by `fhirx get`, SMART discovery and the token endpoint,
            each pointing at the canary host (answering 200 if asked): the canary sees no
            request; the failures are class server with the 30x status and say so.
limits      worker.max_pages and worker.max_references_per_job: a search one page over and a
            job with more referenced entities than allowed end partial with one too_large
            failure each, naming the option; what was within the limit (the first pages, the
            first entities, everything searched) is published; exactly at the limit is fine.
tls         TLS verification and http.ca_bundle, with the simulator serving HTTPS with a
            certificate of a private CA made here: `fhirx token` (discovery and the token
            exchange) and `fhirx get` work with ca_bundle set to that CA; without it they fail
            with a certificate error; a certificate of the same CA for another host name, or
            for a name when the URL has an IP address, is refused.
bulk_wire   bulk _since and _typeFilter on the wire, from the query string the simulator
            received (undecoded): _type, _since and _typeFilter each once; a date-only since
            as midnight UTC, an offset's + encoded; the filters comma-joined, a comma inside
            a filter arriving as %2C after one decoding; the export honours _since.
expiry      files expiring mid-download: after two files, the file URLs answer 404 (the
            export expired), 410, or the storage answers 403 "Request has expired": each
            export ends as export_expired (partial: files were published) with one failure
            record and a dead letter, what was downloaded stays published; a replay
            completes each as a new export.
deadline    bulk.deadline_hours: with the test hook FHIRX_TEST_DEADLINE_HOUR_MS an hour lasts
            1.5 s; an export the server never finishes fails with class deadline, not before
            the deadline recorded in fhirx.bulk (2 such hours after its start), is
            dead-lettered and deleted on the server.
replay_follow   `fhirx replay --follow` replays the letters there, keeps running, replays
            letters that arrive later, and exits 0 with its summary on SIGTERM; each once.
replay_rate     `--rate 20`: the replayed jobs' Kafka timestamps fit a token bucket of 20/s
            with replay's burst in every window; the progress output counts up to the end.
replay_sigterm  SIGTERM while a batch is being produced: that batch is finished and
            committed, nothing after it; produced = committed exactly; a rerun replays the
            rest, finds nothing half-done, and every dead letter is replayed exactly once.
secrets     no secrets in failure records, dead letters (values and headers), status and bulk
            records after 401s, foreign references, a client the server does not know, a 401
            kick-off and token endpoint errors, from a server that echoes the Authorization
            header and the client assertion in its errors: no issued access token (from the
            simulator), no key material, no bearer credential, no JWT; the worker log neither.
governor    tenants[].max_concurrency 3 and rate_per_s 10 with burst 4, from the simulator's
            side: a tenant whose answers are slow never has more than 3 requests in flight
            (but more than one); another tenant's request arrivals fit the token bucket in
            every window.
"""
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../support"))
from e2e import FHIRX, SANDBOX, BUILD, Check, Env, Msg, log  # noqa: E402
from test_ops import scrape, value  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TYPES = ["Patient", "Observation", "Condition", "Encounter"]


# ---- helpers -------------------------------------------------------------------------------

def wait_for(what, pred, timeout=120, step=0.2):
    """pred() until it is truthy; an AssertionError naming `what` after timeout."""
    end = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() > end:
            raise AssertionError("timed out after %d s waiting for %s" % (timeout, what))
        time.sleep(step)


class TsMsg(Msg):
    """A message with its Kafka timestamp (ms; CreateTime: set by the producer when it
    produced the message)."""
    __slots__ = ("timestamp",)

    def __init__(self, m):
        super().__init__(m)
        self.timestamp = m.timestamp()[1]


def read_all(bootstrap, topic, timeout=30):
    """Every message of topic, read to the high watermark of every partition as it was
    when the read started. Raises when that end is not reached: a negative check ("no
    status for this job") must never pass because nothing was read."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-claims-reader",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            return []
        parts, ends = [], {}
        for pid in md.topics[topic].partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, pid), timeout=10)
            if hi > lo:
                parts.append(TopicPartition(topic, pid, lo))
                ends[pid] = hi
        out = []
        if parts:
            c.assign(parts)
            end = time.time() + timeout
            while ends and time.time() < end:
                m = c.poll(0.2)
                if m is None or m.error():
                    continue
                if m.offset() < ends.get(m.partition(), 0):
                    out.append(TsMsg(m))
                if m.offset() + 1 >= ends.get(m.partition(), 0):
                    ends.pop(m.partition(), None)
            if ends:
                raise AssertionError("reading %s timed out with partitions %s unread to their end"
                                     % (topic, sorted(ends)))
        return out
    finally:
        c.close()


def committed(env, group="fhirx-workers", topic="fhirx.jobs"):
    c = Consumer({"bootstrap.servers": env.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
        return {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
    finally:
        c.close()


def control(env, path, body=None):
    """POST to the embedded Kafka's control API; the JSON answer."""
    req = urllib.request.Request(env.control + path, method="POST",
                                 data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def expected(env, tenant, patients, types):
    keys = set()
    for p in patients:
        q = "/_sim/tenants/%s/expected?patient=%s&types=%s" % (tenant, p, ",".join(types))
        keys.update(env.sim_get(q)["resources"])
    return keys


def results_of(msgs, job_id):
    return {m.key.split("/", 1)[1] for m in msgs if m.headers.get("fhirx-job-id") == job_id}


def statuses_of(msgs, job_id):
    return [m.json() for m in msgs if m.key == job_id]


def produce_to(env, partition, jobs):
    env.enqueue(jobs, partition=partition)


def offset_of(env, job_id):
    for m in read_all(env.bootstrap, "fhirx.jobs"):
        if m.key == job_id:
            return m.partition, m.offset
    raise AssertionError("job %s is not on fhirx.jobs" % job_id)


def validate(env, check, expect_status, bulk=False):
    """Every output message against schemas/ (tests/schemas/validate_topics.py)."""
    rc, out = env.validate(expect_status)
    check(rc == 0, "every output message validates against schemas/: " + out[-600:])
    if bulk:
        r = subprocess.run([sys.executable, os.path.join(HERE, "../schemas/validate_topics.py"),
                            "--bootstrap", env.bootstrap, "--schemas",
                            os.path.join(HERE, "../../schemas"), "--topics", "bulk", "--timeout",
                            "60"], capture_output=True, text=True, timeout=180)
        check(r.returncode == 0, "every bulk progress record validates: " + (r.stdout + r.stderr)[-400:])


# ---- delivery ------------------------------------------------------------------------------

def scenario_delivery(check):
    # The mock's errors are per request type and broker, not per topic: so fhirx.results
    # gets its own leader (broker 3) and every other topic is led by brokers 1 and 2.
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 10}], partitions=4,
              worker_extra={"worker": {"threads": 1}})
    try:
        for t in ("fhirx.jobs", "fhirx.failures", "fhirx.dlq", "fhirx.status", "fhirx.parking"):
            control(env, "/topics/%s/leader" % t, {"broker": 1})
        control(env, "/topics/fhirx.results/leader", {"broker": 3})
        # Every Produce request broker 3 answers fails, permanently (no retry inside
        # librdkafka): the worker's own re-produce attempts fail as well. 1000 is the
        # most the mock takes; a job of a few dozen results uses a small part of them.
        control(env, "/errors", {"api": "Produce", "broker": 3,
                                 "errors": ["TOPIC_AUTHORIZATION_FAILED"] * 1000})
        w = env.start_worker("w1")
        admin = env.admin_url(w)
        job_a = {"job_id": "undelivered", "tenant": SANDBOX, "patients": ["20000001"],
                 "resources": TYPES}
        # Jobs without results (an unknown tenant): their failure, dead letter and status
        # go to brokers 1 and 2 and are delivered. B is behind A in A's partition, C is
        # alone in another partition.
        job_b = {"job_id": "behind", "tenant": "no-such-tenant", "patients": ["1"]}
        job_c = {"job_id": "elsewhere", "tenant": "no-such-tenant", "patients": ["2"]}
        produce_to(env, 0, [job_a, job_b])
        produce_to(env, 1, [job_c])
        # A's run has ended (its outputs all reported, none delivered) when the worker has
        # nothing in flight after consuming all three.
        wait_for("the three jobs to be consumed and finished",
                 lambda: (lambda m: value(m, "fhirx_jobs_consumed_total") == 3 and
                          value(m, "fhirx_jobs_in_flight") == 0)(scrape(admin)), timeout=180)
        m = scrape(admin)
        check(value(m, "fhirx_delivery_errors_total") > 0,
              "Kafka refused the results (%d delivery errors)" % value(m, "fhirx_delivery_errors_total"))
        check(value(m, "fhirx_results_total") == 0,
              "no result counts as published: Kafka acknowledged none (fhirx_results_total %d)"
              % value(m, "fhirx_results_total"))
        check("an output was not delivered; its job will not be committed" in env.logs("w1"),
              "the worker gave up on the results and says the job will not be committed")
        # C's commit is the proof that commits happen at all (auto-commit every 500 ms).
        wait_for("job C's offset to be committed", lambda: committed(env).get(1, -1) == 1)
        status = read_all(env.bootstrap, "fhirx.status")
        check(statuses_of(status, "behind") and statuses_of(status, "elsewhere"),
              "the jobs whose outputs were delivered have their status records")
        check(not statuses_of(status, "undelivered"),
              "the job whose results were not delivered has no status record (%d read)" % len(status))
        part, off = offset_of(env, "undelivered")
        got = committed(env)
        check(got.get(part, -1001) <= off,
              "its offset is not committed (partition %d committed %s, the job is at %d), though "
              "the job behind it finished" % (part, got.get(part), off))
        check(env.stop(w) == 0, "the worker exits 0 on SIGTERM")
        got = committed(env)
        check(got.get(part, -1001) <= off, "and not at shutdown either (%s)" % got.get(part))

        # The cause goes away (the topic's leadership moves off the failing broker); the
        # next worker consumes the job again from the committed position.
        control(env, "/topics/fhirx.results/leader", {"broker": 2})
        w2 = env.start_worker("w2")
        st = wait_for("the job's status after the restart",
                      lambda: statuses_of(read_all(env.bootstrap, "fhirx.status"), "undelivered"),
                      timeout=180)
        check(len(st) == 1 and st[0]["state"] == "completed",
              "the job ran again and completed: %s" % [s["state"] for s in st])
        got = results_of(read_all(env.bootstrap, "fhirx.results"), "undelivered")
        want = expected(env, SANDBOX, job_a["patients"], TYPES)
        check(got == want, "with exactly its resources (%d; missing %s)"
              % (len(got), sorted(want - got)[:4]))
        wait_for("the job's offset to be committed", lambda: committed(env).get(part, -1) >= off + 1)
        check(True, "its offset is committed now")
        check(env.stop(w2) == 0, "the second worker exits 0")
    finally:
        env.close()


# ---- redirects -----------------------------------------------------------------------------

def fhirx(*args, timeout=120, env_extra=None):
    envv = dict(os.environ)
    envv.update(env_extra or {})
    r = subprocess.run([FHIRX] + list(args), capture_output=True, text=True, timeout=timeout,
                       env=envv)
    log("$ fhirx %s -> %d" % (args[0], r.returncode))
    for line in (r.stdout.strip().splitlines()[-6:] + r.stderr.strip().splitlines()[-6:]):
        log("    " + line[:400])
    return r


def faults_url(env, tenant=SANDBOX):
    return "%s/_sim/tenants/%s/faults" % (env.sim_url, tenant)


def sim_request(env, path, body=None, method="POST"):
    req = urllib.request.Request(env.sim_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        text = r.read()
        return json.loads(text) if text else None


def scenario_redirects(check):
    from fx_canary import Canary
    # --ok: were a redirect followed, the canary would answer 200 with a plausible
    # resource, so following it would look like success to a careless client.
    with Canary(BUILD, ok=True) as canary:
        groups = [{"id": "cohort-r", "first": 1, "count": 3}]
        env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 10, "groups": groups,
                            "export": {"duration_ms": 500}}],
                  worker_extra={"bulk": {"poll_min_ms": 200, "poll_max_ms": 1000}})
        try:
            away = canary.url + "/r4/" + SANDBOX
            for f in ({"target": "fhir", "path": "Observation", "status": 302, "count": -1,
                       "headers": {"Location": away + "/Observation?patient=20000001"}},
                      {"target": "fhir", "path": "Practitioner/*", "status": 307, "count": -1,
                       "headers": {"Location": away + "/Practitioner/4000001"}},
                      {"target": "fhir", "path": "Group", "status": 303, "count": -1,
                       "headers": {"Location": away + "/bulk-export/jobs/1"}}):
                sim_request(env, "/_sim/tenants/%s/faults" % SANDBOX, f)
            w = env.start_worker()
            jobs = [{"job_id": "redirected-%d" % i, "tenant": SANDBOX,
                     "patients": ["%d" % (20000001 + i)],
                     "resources": ["Observation", "Condition", "Encounter"],
                     "follow_references": True} for i in range(2)]
            env.enqueue(jobs + [{"kind": "bulk", "job_id": "redirected-bulk", "tenant": SANDBOX,
                                 "group": "cohort-r", "resources": ["Patient", "Condition"]}])
            wait_for("three status records",
                     lambda: len({m.key for m in read_all(env.bootstrap, "fhirx.status")}) >= 3,
                     timeout=180)
            status = {m.key: m.json() for m in read_all(env.bootstrap, "fhirx.status")}
            failures = [m.json() for m in read_all(env.bootstrap, "fhirx.failures")]
            for j in jobs:
                fl = [f for f in failures if f["job_id"] == j["job_id"]]
                obs = [f for f in fl if f["resource_type"] == "Observation"]
                prac = [f for f in fl if f["reference"] and f["reference"].startswith("Practitioner/")]
                check(status[j["job_id"]]["state"] == "partial",
                      "%s is partial: what was not redirected is published" % j["job_id"])
                check(len(obs) == 1 and obs[0]["error_class"] == "server" and
                      obs[0]["http_status"] == 302 and "redirect" in obs[0]["message"],
                      "the redirected search is a failure of class server, HTTP 302, saying it was "
                      "not followed: %s" % [(f["error_class"], f["http_status"], f["message"]) for f in obs])
                check(prac and all(f["error_class"] == "server" and f["http_status"] == 307
                                   for f in prac),
                      "each redirected Practitioner read too (%d, HTTP 307)" % len(prac))
            results = read_all(env.bootstrap, "fhirx.results")
            for j in jobs:
                got = results_of(results, j["job_id"])
                want = expected(env, SANDBOX, j["patients"], ["Condition", "Encounter"])
                check(want <= got and not any(k.startswith("Observation/") for k in got),
                      "%s published its Conditions and Encounters, no Observation" % j["job_id"])
            b = status["redirected-bulk"]
            check(b["state"] == "failed" and b["error_class"] == "server",
                  "a redirected $export kick-off fails the export as server (%s, %s)"
                  % (b["state"], b.get("error_class")))
            # The one-shot commands: a read, and the SMART discovery and token exchange.
            sim_request(env, "/_sim/tenants/%s/faults" % SANDBOX,
                        {"target": "fhir", "path": "Patient", "status": 301, "count": -1,
                         "headers": {"Location": away + "/Patient/12724065"}})
            r = fhirx("get", "--config", env.config, "Patient/12724065")
            check(r.returncode == 1 and "301" in r.stderr and "redirect" in r.stderr,
                  "fhirx get: a 301 is an error naming the redirect, not a read of its target")
            sim_request(env, "/_sim/tenants/%s/faults" % SANDBOX,
                        {"target": "token", "status": 307, "count": -1,
                         "headers": {"Location": canary.url + "/token"}})
            r = fhirx("token", "--config", env.config)
            check(r.returncode == 1 and "307" in r.stderr,
                  "fhirx token: a 307 from the token endpoint is an error (the assertion is not "
                  "posted to its target)")
            sim_request(env, "/_sim/tenants/%s/faults" % SANDBOX,
                        {"target": "discovery", "status": 302, "count": -1,
                         "headers": {"Location": canary.url + "/.well-known/smart-configuration"}})
            r = fhirx("token", "--config", env.config)
            check(r.returncode == 1 and "302" in r.stderr,
                  "fhirx token: a 302 from discovery is an error")
            seen = canary.requests()
            check(seen["requests"] == 0 and seen["with_authorization"] == 0,
                  "the redirect target received no request at all: %s" % seen["paths"][:5])
            faults = sim_request(env, "/_sim/tenants/%s/faults" % SANDBOX, None, "GET")["faults"]
            fired = {f["name"]: f["fired"] for f in faults}
            check(all(n > 0 for n in fired.values()), "every redirect was answered: %s" % fired)
            validate(env, check, 3, bulk=True)
            check(env.stop(w) == 0, "worker exits 0")
        finally:
            env.close()


# ---- limits --------------------------------------------------------------------------------

FOLLOWED = ["Practitioner", "Organization", "Location", "Binary", "RelatedPerson"]


def expected_refs(env, tenant, patient, types):
    q = "/_sim/tenants/%s/expected?patient=%s&types=%s&ref_types=%s" % (
        tenant, patient, ",".join(types), ",".join(FOLLOWED))
    return set(env.sim_get(q)["references"])


def expected_in_order(env, tenant, patient, rtype):
    q = "/_sim/tenants/%s/expected?patient=%s&types=%s" % (tenant, patient, rtype)
    return env.sim_get(q)["resources"]


def scenario_limits(check):
    # Pages of exactly _count entries (Condition and Procedure: the simulator's default 50,
    # the profile names no count), so the first N pages are the first N * 50 resources of
    # the simulator's search order.
    env = Env(tenants=[{"id": SANDBOX, "patients": 4,
                        "per_patient": {"Condition": 300, "Procedure": 150},
                        "paging_short_pages": False, "paging_repeats": False,
                        "paging_outcomes": False}])
    try:
        patient = "20000001"
        big_types = ["Encounter", "Observation", "DiagnosticReport", "DocumentReference"]
        small_types = ["Encounter"]
        r_big = expected_refs(env, SANDBOX, "20000002", big_types)
        r_small = expected_refs(env, SANDBOX, "20000003", small_types)
        limit = len(r_small)
        check(len(r_big) > limit > 0, "a job referencing %d entities and one referencing %d"
              % (len(r_big), limit))
        with open(env.config) as f:
            cfg = json.load(f)
        cfg["worker"].update({"max_pages": 3, "max_references_per_job": limit})
        with open(env.config, "w") as f:
            json.dump(cfg, f)
        w = env.start_worker()
        jobs = [{"job_id": "pages", "tenant": SANDBOX, "patients": [patient],
                 "resources": ["Condition", "Procedure"]},
                {"job_id": "refs-over", "tenant": SANDBOX, "patients": ["20000002"],
                 "resources": big_types, "follow_references": True},
                {"job_id": "refs-within", "tenant": SANDBOX, "patients": ["20000003"],
                 "resources": small_types, "follow_references": True}]
        env.enqueue(jobs)
        status = {m.key: m.json() for m in env.wait_status(3, timeout=180)}
        failures = [m.json() for m in read_all(env.bootstrap, "fhirx.failures")]
        results = read_all(env.bootstrap, "fhirx.results")

        # worker.max_pages: 300 Conditions are 6 pages, 150 Procedures exactly 3.
        conditions = expected_in_order(env, SANDBOX, patient, "Condition")
        procedures = expected_in_order(env, SANDBOX, patient, "Procedure")
        check(len(conditions) == 300 and len(procedures) == 150,
              "the patient has 300 Conditions (6 pages) and 150 Procedures (3 pages)")
        got = results_of(results, "pages")
        fl = [f for f in failures if f["job_id"] == "pages"]
        check(status["pages"]["state"] == "partial" and status["pages"]["tasks_failed"] == 1,
              "the job is partial with 1 failed task: %s, %d"
              % (status["pages"]["state"], status["pages"]["tasks_failed"]))
        check(len(fl) == 1 and fl[0]["resource_type"] == "Condition" and
              fl[0]["error_class"] == "too_large" and
              fl[0]["message"] == "the search has more than 3 pages (worker.max_pages)",
              "the Condition search crossing worker.max_pages 3 is one too_large failure saying so: %s"
              % [(f["resource_type"], f["error_class"], f["message"]) for f in fl])
        check({k for k in got if k.startswith("Condition/")} == set(conditions[:150]),
              "what the 3 pages held is published: exactly the first 150 Conditions")
        check({k for k in got if k.startswith("Procedure/")} == set(procedures),
              "a search of exactly 3 pages is within the limit: all 150 Procedures, no failure")
        dl = [m for m in read_all(env.bootstrap, "fhirx.dlq") if m.key == "pages"]
        check(len(dl) == 1 and dl[0].headers.get("fhirx-error-class") == "too_large",
              "the job is dead-lettered as too_large")

        # worker.max_references_per_job.
        fl = [f for f in failures if f["job_id"] == "refs-over"]
        refs = {m.key.split("/", 1)[1] for m in results
                if m.headers.get("fhirx-job-id") == "refs-over" and
                m.headers.get("fhirx-via") == "reference"}
        msg = ("the job references more than %d entities (worker.max_references_per_job); the "
               "rest were not fetched" % limit)
        check(status["refs-over"]["state"] == "partial" and len(fl) == 1 and
              fl[0]["error_class"] == "too_large" and fl[0]["message"] == msg,
              "a job crossing worker.max_references_per_job %d is partial with one too_large "
              "failure saying so: %s" % (limit, [(f["error_class"], f["message"]) for f in fl]))
        check(len(refs) == limit and refs <= r_big,
              "exactly %d of its %d referenced entities are published, all of them its own (%d)"
              % (limit, len(r_big), len(refs)))
        searched = results_of([m for m in results if m.headers.get("fhirx-via") != "reference"],
                              "refs-over")
        check(searched == expected(env, SANDBOX, ["20000002"], big_types),
              "and every searched resource is published")
        check(status["refs-over"]["references_fetched"] + status["refs-over"]["references_cached"]
              == limit, "the status counts %d references" % limit)
        refs_small = {m.key.split("/", 1)[1] for m in results
                      if m.headers.get("fhirx-job-id") == "refs-within" and
                      m.headers.get("fhirx-via") == "reference"}
        check(status["refs-within"]["state"] == "completed" and refs_small == r_small,
              "a job referencing exactly %d entities is within the limit: completed, all published"
              % limit)
        validate(env, check, 3)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- tls -----------------------------------------------------------------------------------

SIM = os.path.join(BUILD, "tests/sim/cerner-sim")


def openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, "openssl %s: %s" % (args[0], r.stderr)


def make_pki(d):
    """A private CA, a server certificate for localhost (DNS:localhost only, so 127.0.0.1
    is a wrong name for it too) and one for another host name, both signed by the CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=fhirx test private CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, san in (("good", "DNS:localhost"), ("wrong", "DNS:wrong.example.org")):
        openssl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr",
                "-subj", "/CN=" + san.split(":", 1)[1], cwd=d)
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                    % san)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext",
                cwd=d)


class TlsSim:
    """cerner-sim serving HTTPS with the given certificate."""

    def __init__(self, d, cert, sim_config):
        self.port_file = os.path.join(d, "tls-sim.port")
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self.log = open(os.path.join(d, "tls-sim.log"), "ab")
        self.proc = subprocess.Popen([SIM, "--config", sim_config, "--port-file", self.port_file,
                                      "--tls-cert", os.path.join(d, cert + ".pem"),
                                      "--tls-key", os.path.join(d, cert + ".key")],
                                     stdout=self.log, stderr=self.log)
        self.port = int(wait_for("the HTTPS simulator's port file",
                                 lambda: os.path.exists(self.port_file) and
                                 open(self.port_file).read().strip(), timeout=30))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self.log.close()
        return rc


def scenario_tls(check):
    import tempfile
    import shutil
    d = tempfile.mkdtemp(prefix="fhirx-tls-")
    try:
        make_pki(d)
        key = os.path.join(d, "key.pem")
        subprocess.run([FHIRX, "keys", "generate", "--alg", "ES384", "--out", key], check=True,
                       capture_output=True)
        with open(os.path.join(d, "jwks.json"), "w") as f:
            f.write(subprocess.run([FHIRX, "keys", "jwks", "--key", key], check=True,
                                   capture_output=True, text=True).stdout)
        sim_config = os.path.join(d, "sim.json")
        with open(sim_config, "w") as f:
            json.dump({"seed": 3, "tenants": [{
                "id": SANDBOX, "sandbox": True,
                "clients": [{"client_id": "fhirx-tls", "jwks_file": os.path.join(d, "jwks.json"),
                             "scopes": ["system/Patient.read"]}]}]}, f)
        # The CA must come from http.ca_bundle alone: no environment variable may point
        # OpenSSL or libcurl at it.
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE")}

        def config(name, host, port, ca_bundle):
            cfg = {"tenants": [{"id": SANDBOX, "environment": "production",
                                "fhir_base": "https://%s:%d/r4/%s" % (host, port, SANDBOX),
                                "client_id": "fhirx-tls", "resources": ["Patient"]}],
                   "keys": [{"path": key}]}
            if ca_bundle:
                cfg["http"] = {"ca_bundle": os.path.join(d, "ca.pem")}
            path = os.path.join(d, name + ".json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            return path

        def run(*args):
            r = subprocess.run([FHIRX] + list(args), capture_output=True, text=True, timeout=60,
                               env=clean)
            log("$ fhirx %s %s -> %d: %s" % (args[0], args[-1] if args[0] == "get" else "",
                                             r.returncode, (r.stdout + r.stderr).strip()[-300:]))
            return r

        sim = TlsSim(d, "good", sim_config)
        trusted = config("trusted", "localhost", sim.port, True)
        r = run("token", "--config", trusted)
        check(r.returncode == 0 and json.loads(r.stdout)["expires_in"] > 0 and
              json.loads(r.stdout)["token_endpoint"].startswith("https://localhost:"),
              "with http.ca_bundle set to the private CA, discovery and the token exchange work "
              "over HTTPS")
        r = run("get", "--config", trusted, "--summary", "Patient/12724065")
        check(r.returncode == 0 and "SMART, WILMA" in r.stdout,
              "and fhirx get reads a Patient over HTTPS")
        untrusted = config("untrusted", "localhost", sim.port, False)
        for cmd in (("token", "--config", untrusted),
                    ("get", "--config", untrusted, "Patient/12724065")):
            r = run(*cmd)
            check(r.returncode == 1 and "certificate problem" in r.stderr and
                  "set http.ca_bundle to that CA" in r.stderr,
                  "without http.ca_bundle, fhirx %s fails with a certificate error: %s"
                  % (cmd[0], r.stderr.strip()[-200:]))
        by_ip = config("by-ip", "127.0.0.1", sim.port, True)
        r = run("token", "--config", by_ip)
        check(r.returncode == 1 and "target host name '127.0.0.1'" in r.stderr and
              "certificate does not name the host" in r.stderr,
              "a certificate for localhost is refused for https://127.0.0.1: %s"
              % r.stderr.strip()[-200:])
        check(sim.stop() == 0, "the HTTPS simulator exits 0")

        sim = TlsSim(d, "wrong", sim_config)
        wrong = config("wrong", "localhost", sim.port, True)
        for cmd in (("token", "--config", wrong), ("get", "--config", wrong, "Patient/12724065")):
            r = run(*cmd)
            check(r.returncode == 1 and "target host name 'localhost'" in r.stderr and
                  "certificate does not name the host" in r.stderr,
                  "a certificate of the trusted CA for another host name is refused (fhirx %s): %s"
                  % (cmd[0], r.stderr.strip()[-200:]))
        check(sim.stop() == 0, "the HTTPS simulator exits 0")
    finally:
        if os.environ.get("FHIRX_E2E_KEEP"):
            log("kept " + d)
        else:
            shutil.rmtree(d, ignore_errors=True)


# ---- bulk_wire -------------------------------------------------------------------------------

def raw_params(query):
    """[(name, raw value)] of a query string exactly as sent (nothing decoded)."""
    return [tuple(p.split("=", 1)) if "=" in p else (p, None) for p in query.split("&") if p]


def scenario_bulk_wire(check):
    groups = [{"id": "cohort-w", "first": 1, "count": 6}]
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 10, "groups": groups,
                        "export": {"duration_ms": 300, "retry_after_s": 1}}],
              worker_extra={"bulk": {"poll_min_ms": 200, "poll_max_ms": 1000}})
    try:
        w = env.start_worker()
        types = ["Patient", "Observation", "Condition"]
        filters = ["Observation?category=laboratory", "Condition?clinical-status=active%2Crecurrence"]
        cases = [("wire-date", "2024-07-01", "2024-07-01T00:00:00Z"),
                 ("wire-offset", "2024-07-01T10:00:00+02:00", "2024-07-01T10:00:00+02:00")]
        for job_id, since, _ in cases:
            env.enqueue([{"kind": "bulk", "job_id": job_id, "tenant": SANDBOX, "group": "cohort-w",
                          "resources": types, "since": since, "type_filter": filters}])
            wait_for("%s's status" % job_id,
                     lambda: statuses_of(read_all(env.bootstrap, "fhirx.status"), job_id),
                     timeout=180)
        kickoffs = [k for k in sim_request(env, "/_sim/tenants/%s/export" % SANDBOX, None,
                                           "GET")["kickoffs"] if k["status"] == 202]
        check(len(kickoffs) == 2, "the simulator accepted two kick-offs")
        status = {m.key: m.json() for m in read_all(env.bootstrap, "fhirx.status")}
        results = read_all(env.bootstrap, "fhirx.results")
        for (job_id, since, instant), x in zip(cases, kickoffs):
            log("%s: kick-off query as received: %s" % (job_id, x["query_raw"]))
            params = raw_params(x["query_raw"])
            names = collections.Counter(n for n, _ in params)
            check(names == {"_type": 1, "_since": 1, "_typeFilter": 1},
                  "%s: _type, _since and _typeFilter each sent exactly once: %s" % (job_id, dict(names)))
            raw = dict(params)
            check(all(re.fullmatch(r"[A-Za-z0-9._~%-]*|[A-Za-z0-9._~%,-]*", v) for v in raw.values()),
                  "%s: every value is percent-encoded (no raw ?, =, &, +, # or space)" % job_id)
            value = {n: urllib.parse.unquote(v) for n, v in raw.items()}
            check(sorted(value["_type"].split(",")) == sorted(types),
                  "%s: _type is the job's resources, comma-joined: %s" % (job_id, value["_type"]))
            check(value["_since"] == instant,
                  "%s: _since %s arrives as the instant %s" % (job_id, since, value["_since"]))
            check(value["_typeFilter"] == ",".join(filters),
                  "%s: _typeFilter arrives as the job's filters comma-joined, the comma inside a "
                  "filter still %%2C after one decoding: %s" % (job_id, value["_typeFilter"]))
            st = status[job_id]
            check(st["state"] == "completed", "%s completed" % job_id)
            got = results_of(results, job_id)
            want = set(env.sim_get("/_sim/tenants/%s/groups/cohort-w/expected?types=%s&since=%s" % (
                SANDBOX, ",".join(types), urllib.parse.quote(instant)))["resources"])
            patients = set(env.sim_get("/_sim/tenants/%s/groups/cohort-w/expected?types=Patient&since=%s"
                                       % (SANDBOX, urllib.parse.quote(instant)))["resources"])
            everything = set(env.sim_get("/_sim/tenants/%s/groups/cohort-w/expected?types=%s" % (
                SANDBOX, ",".join(types)))["resources"])
            check(got <= want and patients <= got and len(want) < len(everything),
                  "%s: the server applied _since: %d resources, all changed since %s (the Group "
                  "has %d in all), every such Patient among them" % (job_id, len(got), instant,
                                                                    len(everything)))
        validate(env, check, 2, bulk=True)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- expiry, deadline --------------------------------------------------------------------------

def progress(env, job_id):
    return [m.json() for m in read_all(env.bootstrap, "fhirx.bulk") if m.key == job_id]


def done_files(rec):
    return sum(b - a + 1 for a, b in rec.get("files_done", []))


def bulk_job(job_id, group, types):
    return {"kind": "bulk", "job_id": job_id, "tenant": SANDBOX, "group": group, "resources": types}


def scenario_expiry(check):
    groups = [{"id": "cohort-x", "first": 1, "count": 8}]
    types = ["Patient", "Observation", "Condition"]
    env = Env(tenants=[{"id": SANDBOX, "patients": 10, "groups": groups,
                        "export": {"duration_ms": 300, "retry_after_s": 1,
                                   "file_max_resources": 25}}],
              worker_extra={"bulk": {"poll_min_ms": 200, "poll_max_ms": 1000,
                                     "parallel_downloads": 1}})
    try:
        want = set(env.sim_get("/_sim/tenants/%s/groups/cohort-x/expected?types=%s"
                               % (SANDBOX, ",".join(types)))["resources"])
        files_url = "/_sim/tenants/%s/faults" % SANDBOX
        slow = {"name": "files", "target": "fhir", "path": "bulk-export/*/files/*",
                "delay_ms": 500, "count": -1}
        w = env.start_worker()
        # How the files stop being there, once two files are downloaded:
        cases = [
            ("gone-404", 404, lambda: sim_request(env, "/_sim/tenants/%s/export/expire" % SANDBOX, {})),
            ("gone-410", 410, lambda: sim_request(env, files_url, dict(slow, status=410))),
            ("gone-signature", 403, lambda: sim_request(
                env, "/_sim/tenants/%s/export/expire" % SANDBOX, {"urls_only": True})),
        ]
        for job_id, http_status, expire in cases:
            sim_request(env, files_url, slow)  # each file's redirect takes 500 ms
            env.enqueue([bulk_job(job_id, "cohort-x", types)])
            rec = wait_for("%s: two files downloaded" % job_id,
                           lambda: next((r for r in reversed(progress(env, job_id))
                                         if done_files(r) >= 2), None), step=0.1)
            total = rec["files_total"]
            expire()
            st = wait_for("%s's status" % job_id,
                          lambda: statuses_of(read_all(env.bootstrap, "fhirx.status"), job_id))[0]
            last = max(progress(env, job_id), key=lambda r: r["seq"])
            log("%s: %d of %d files done when the files expired" % (job_id, done_files(last), total))
            # Files were published before: the status says partial (failed when nothing was).
            check(st["state"] == "partial" and st["error_class"] == "export_expired",
                  "%s: files answering %d mid-download end the export as export_expired, partial "
                  "(%s, %s)" % (job_id, http_status, st["state"], st.get("error_class")))
            check(2 <= done_files(last) < total, "%s: it failed mid-download (%d of %d files done)"
                  % (job_id, done_files(last), total))
            fl = [f.json() for f in read_all(env.bootstrap, "fhirx.failures")
                  if f.json()["job_id"] == job_id]
            check(len(fl) == 1 and fl[0]["error_class"] == "export_expired" and
                  fl[0]["http_status"] == http_status,
                  "%s: one failure record, export_expired, HTTP %d: %s"
                  % (job_id, http_status, [(f["http_status"], f["message"]) for f in fl]))
            dl = [m for m in read_all(env.bootstrap, "fhirx.dlq") if m.key == job_id]
            letter = json.loads(dl[0].value) if dl else {}
            check(len(dl) == 1 and dl[0].headers.get("fhirx-error-class") == "export_expired" and
                  letter.get("kind") == "bulk" and letter.get("group") == "cohort-x" and
                  sorted(letter.get("resources", [])) == sorted(types),
                  "%s: dead-lettered as the bulk job it was, class export_expired" % job_id)
            got = results_of(read_all(env.bootstrap, "fhirx.results"), job_id)
            check(0 < len(got) < len(want) and got <= want,
                  "%s: what the downloaded files held stays published (%d of %d), nothing else"
                  % (job_id, len(got), len(want)))
            sim_request(env, files_url, None, "DELETE")
        # With exports that do not expire, a replay runs each again as a new export.
        r = fhirx("replay", "--config", env.config, "--error-class", "export_expired")
        check(r.returncode == 0 and "3 replayed" in r.stdout, "fhirx replay sends the three back")
        for job_id, _, _ in cases:
            st = wait_for("%s attempt 2" % job_id,
                          lambda: [s for s in statuses_of(read_all(env.bootstrap, "fhirx.status"),
                                                          job_id) if s["attempt"] == 2],
                          timeout=180)[0]
            got = {m.key.split("/", 1)[1] for m in read_all(env.bootstrap, "fhirx.results")
                   if m.headers.get("fhirx-job-id") == job_id and m.headers.get("fhirx-attempt") == "2"}
            check(st["state"] == "completed" and got == want,
                  "%s: the replayed export completes with exactly the Group's resources" % job_id)
        validate(env, check, 6, bulk=True)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def iso_ms(text):
    from datetime import datetime, timezone
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1000


HOUR_MS = 1500  # FHIRX_TEST_DEADLINE_HOUR_MS: an hour of bulk.deadline_hours, for this test


def scenario_deadline(check):
    groups = [{"id": "cohort-d", "first": 1, "count": 4}]
    env = Env(tenants=[{"id": SANDBOX, "patients": 6, "groups": groups,
                        # The server never finishes within the deadline.
                        "export": {"duration_ms": 600000, "retry_after_s": 1}}],
              worker_extra={"bulk": {"poll_min_ms": 200, "poll_max_ms": 500,
                                     "deadline_hours": 2}})
    try:
        os.environ["FHIRX_TEST_DEADLINE_HOUR_MS"] = str(HOUR_MS)
        try:
            w = env.start_worker()
        finally:
            del os.environ["FHIRX_TEST_DEADLINE_HOUR_MS"]
        env.enqueue([bulk_job("late", "cohort-d", ["Patient", "Condition"])])
        st = wait_for("the export's status",
                      lambda: statuses_of(read_all(env.bootstrap, "fhirx.status"), "late"),
                      timeout=120)[0]
        check("test hook FHIRX_TEST_DEADLINE_HOUR_MS is set" in env.logs("worker"),
              "the worker warns that the test hook is set")
        check(st["state"] == "failed" and st["error_class"] == "deadline",
              "an export still running at its deadline fails with class deadline (%s, %s)"
              % (st["state"], st.get("error_class")))
        fl = [f.json() for f in read_all(env.bootstrap, "fhirx.failures") if f.json()["job_id"] == "late"]
        check(len(fl) == 1 and fl[0]["error_class"] == "deadline" and
              "2 hours (bulk.deadline_hours)" in fl[0]["message"],
              "one failure record naming the option: %s" % [f["message"] for f in fl])
        # The first record is the pending one the job's thread hands over; the bulk thread's
        # own records carry the deadline it computed when it started the export.
        recs = [r for r in progress(env, "late") if "deadline_ms" in r]
        first = min(recs, key=lambda r: r["seq"])
        deadline = first["deadline_ms"]
        started = iso_ms(first["started_at"])
        # Two clock readings of the worker's, a line apart: the recorded deadline is
        # deadline_hours hours of HOUR_MS after the start.
        check(abs(deadline - started - 2 * HOUR_MS) < 100,
              "the recorded deadline is 2 hours of %d ms after the start (%d ms)"
              % (HOUR_MS, deadline - started))
        check(iso_ms(fl[0]["time"]) >= deadline,
              "the export failed at or after the recorded deadline, not before (%+d ms)"
              % (iso_ms(fl[0]["time"]) - deadline))
        check(all(r["deadline_ms"] == deadline for r in recs),
              "every progress record carries the same deadline (a resumed export keeps it)")
        dl = [m for m in read_all(env.bootstrap, "fhirx.dlq") if m.key == "late"]
        check(len(dl) == 1 and dl[0].headers.get("fhirx-error-class") == "deadline",
              "and it is dead-lettered with class deadline")
        c = env.sim_get("/_sim/counters")["tenants"][SANDBOX]["export"]
        check(c["kickoffs"] == 1 and c["deletes"] == 1,
              "the export was kicked off once and deleted on the server when it was given up")
        validate(env, check, 1, bulk=True)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- replay: --follow, --rate, SIGTERM ------------------------------------------------------

def dead_letters(env, prefix, n):
    """n replayable dead letters (scope failures of one Condition task each)."""
    from test_tools import dead_letter_headers, produce_dead_letters
    letters = []
    for i in range(n):
        job_id = "%s-%04d" % (prefix, i)
        value = json.dumps({"job_id": job_id, "tenant": SANDBOX,
                            "tasks": [{"patient": "20000001", "resources": ["Condition"]}],
                            "attempt": 1}).encode()
        letters.append((job_id, value, dead_letter_headers(job_id, SANDBOX, "scope", 1, (i % 4, i))))
    produce_dead_letters(env, letters)


def replayed_jobs(env):
    return [m for m in read_all(env.bootstrap, "fhirx.jobs") if m.headers.get("fhirx-replayed-from")]


def replay_proc(env, *args):
    e = dict(os.environ, FHIRX_PROGRESS="1")  # the progress bar, although stderr is a pipe
    return subprocess.Popen([FHIRX, "replay", "--config", env.config] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)


def each_once(check, env, positions, what):
    froms = collections.Counter(m.headers["fhirx-replayed-from"] for m in replayed_jobs(env))
    dup = sorted(k for k, v in froms.items() if v > 1)
    check(not dup and set(froms) == positions,
          "%s: each of the %d dead letters replayed exactly once (%d twice, %d missing)"
          % (what, len(positions), len(dup), len(positions - set(froms))))


def dlq_positions(env):
    return {"fhirx.dlq/%d/%d" % (m.partition, m.offset) for m in read_all(env.bootstrap, "fhirx.dlq")}


def scenario_replay_follow(check):
    from test_tools import summary_numbers
    env = Env(partitions=4)
    try:
        dead_letters(env, "f1", 30)
        p = replay_proc(env, "--follow")
        wait_for("the first 30 letters replayed", lambda: len(replayed_jobs(env)) >= 30, timeout=120)
        check(p.poll() is None, "replay --follow is still running at the end of fhirx.dlq")
        dead_letters(env, "f2", 20)  # letters that arrive while it follows
        wait_for("the 20 later letters replayed", lambda: len(replayed_jobs(env)) >= 50, timeout=120)
        check(p.poll() is None, "and keeps running after replaying letters that arrived later")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        log(out.strip())
        n = summary_numbers(out)
        check(p.returncode == 0 and n["replayed"] == 50 and n["read"] == 50,
              "SIGTERM ends it with exit status 0 and the summary: 50 replayed (rc %d)" % p.returncode)
        each_once(check, env, dlq_positions(env), "--follow")
        from test_tools import committed as committed_of, ends
        check(committed_of(env, "fhirx-replay", "fhirx.dlq") == ends(env, "fhirx.dlq"),
              "its group committed up to the end of fhirx.dlq")
        r = fhirx("replay", "--config", env.config)
        check(r.returncode == 0 and summary_numbers(r.stdout)["read"] == 0,
              "a later run has nothing left to read")
    finally:
        env.close()


RATE = 20
JITTER_MS = 50


def scenario_replay_rate(check):
    """--rate N: the replayed jobs' Kafka timestamps (CreateTime, stamped by replay's
    producer as it produces each job) must fit a token bucket of N per second with replay's
    burst (N/10, at least 1): in any window between two jobs' timestamps t1 <= t2, at most
    burst + N * (t2 - t1 + 1 ms + J) jobs. The 1 ms: timestamps are whole milliseconds. J
    (50 ms) allows for the time between the bucket granting a token and the producer
    stamping the message, which varies on a busy machine and can make a window look
    shorter than it was; at 20/s it is one job. This is a property of when replay
    produced, not of how long the test took: without --rate, or with a burst of a second's
    worth, the jobs of a batch are stamped within a few ms and the check fails."""
    from test_tools import summary_numbers
    env = Env(partitions=4)
    try:
        total = 60
        dead_letters(env, "r", total)
        p = replay_proc(env, "--rate", str(RATE))
        out, err = p.communicate(timeout=300)
        n = summary_numbers(out)
        check(p.returncode == 0 and n["replayed"] == total,
              "replay --rate %d replays all %d letters: %s" % (RATE, total, out.strip()[-200:]))
        jobs = sorted(replayed_jobs(env), key=lambda m: m.timestamp)
        ts = [m.timestamp for m in jobs]
        burst = max(1, RATE // 10)
        worst = None
        for i in range(len(ts)):
            for j in range(i, len(ts)):
                allowed = burst + RATE * (ts[j] - ts[i] + 1 + JITTER_MS) / 1000.0
                excess = (j - i + 1) - allowed
                if worst is None or excess > worst[0]:
                    worst = (excess, j - i + 1, ts[j] - ts[i])
        log("busiest window: %d jobs within %d ms (allowed %.1f)" % (worst[1], worst[2],
                                                                  worst[1] - worst[0]))
        check(worst[0] <= 0, "no window holds more jobs than a bucket of %d/s with burst %d allows "
              "(worst: %d jobs in %d ms)" % (RATE, burst, worst[1], worst[2]))
        # The replay's own progress output (FHIRX_PROGRESS=1): counts that only grow, ending
        # at every letter replayed.
        # "replay [####....] 24/60  40% 9/s  replayed 24  parked 0", redrawn with \r.
        shown = [(int(a), int(b), int(c)) for a, b, c in re.findall(
            r"replay \[[#.]+\] (\d+)/(\d+) +\d+% \d+/s  replayed (\d+)", err)]
        check(len(shown) >= 3 and all(t == total for _, t, _ in shown) and
              shown == sorted(shown) and shown[-1] == (total, total, total),
              "the progress output counts up to %d of %d read and replayed (%d updates)"
              % (total, total, len(shown)))
        each_once(check, env, dlq_positions(env), "--rate")
    finally:
        env.close()


def scenario_replay_sigterm(check):
    from test_tools import summary_numbers, ends
    from test_tools import committed as committed_of
    env = Env(partitions=4)
    try:
        total = 100
        dead_letters(env, "s", total)
        positions = dlq_positions(env)
        # Under --rate 20 a batch is 20 letters (at most one second's worth) and takes about a
        # second to produce. Replay's own progress output (read as it is written) says how
        # many jobs it has produced; the signal goes as soon as the second batch has begun,
        # leaving it most of a second to run.
        import threading
        p = replay_proc(env, "--rate", str(RATE))
        err_text = []
        reader = threading.Thread(target=lambda: err_text.extend(iter(lambda: p.stderr.read(1), "")))
        reader.start()

        def replayed_so_far():
            counts = re.findall(r"replayed (\d+)", "".join(err_text))
            return int(counts[-1]) if counts else 0
        at_signal = wait_for("the second batch to be under way",
                             lambda: (lambda n: n if n > RATE else 0)(replayed_so_far()),
                             timeout=120, step=0.01)
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        reader.join(10)
        out, err = p.stdout.read(), "".join(err_text)
        produced = replayed_jobs(env)
        log("SIGTERM after %d jobs; %d when replay had stopped" % (at_signal, len(produced)))
        check(p.returncode == 1 and "interrupted before the end of fhirx.dlq; run the same command "
              "again to continue" in err, "replay stops on SIGTERM, saying how to continue (rc %d)"
              % p.returncode)
        n = summary_numbers(out)
        check(n["replayed"] == len(produced), "its summary counts the %d jobs it produced"
              % len(produced))
        check(at_signal < len(produced) <= at_signal + RATE,
              "the batch being produced when the signal came was finished (%d -> %d), nothing after it"
              % (at_signal, len(produced)))
        # What was produced is exactly what was committed: nothing decided and dropped,
        # nothing produced and left uncommitted.
        done = committed_of(env, "fhirx-replay", "fhirx.dlq")
        below = {x for x in positions
                 if int(x.split("/")[2]) < done.get(int(x.split("/")[1]), 0)}
        froms = {m.headers["fhirx-replayed-from"] for m in produced}
        check(froms == below, "the jobs produced are exactly the dead letters below the committed "
              "positions (%d produced, %d committed)" % (len(froms), len(below)))
        r = fhirx("replay", "--config", env.config, "--rate", "50")
        n = summary_numbers(r.stdout)
        check(r.returncode == 0 and n["replayed"] == total - len(produced) and n["already"] == 0,
              "run again, it replays the other %d and finds nothing half-done: %s"
              % (total - len(produced), n))
        each_once(check, env, positions, "after SIGTERM and a rerun")
        check(committed_of(env, "fhirx-replay", "fhirx.dlq") == ends(env, "fhirx.dlq"),
              "the group committed up to the end of fhirx.dlq")
    finally:
        env.close()


# ---- secrets -------------------------------------------------------------------------------

OUTCOME_ECHO = ('{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"security",'
                '"diagnostics":"request rejected; it carried Authorization: {authorization}"}]}')
OAUTH_ECHO = ('{"error":"invalid_client","error_description":"assertion {client_assertion} '
              'rejected; request was {request_body}"}')


def secrets_of(env, tenants):
    """What must never appear: every access token the simulator issued, the private key's
    PEM lines, and the markers of a bearer header, a JWT and a client assertion."""
    tokens = set()
    for t in tenants:
        tokens.update(env.sim_get("/_sim/tenants/%s/tokens" % t)["tokens"])
    with open(os.path.join(env.dir, "key.pem")) as f:
        pem = [l.strip() for l in f if l.strip() and not l.startswith("-----")]
    markers = ["eyJ", "client_assertion=e", "PRIVATE KEY"]
    return tokens, pem, markers


# A bearer credential: the scheme and something after it that is not fhirx's placeholder.
BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr][\s:]+(?!\[redacted\])[A-Za-z0-9._~+/=-]")


def scan(msgs, needles):
    """(topic/partition/offset, where, needle) for every needle, or a bearer credential, in
    a value or header."""
    hits = []
    for m in msgs:
        fields = [("value", (m.value or b"").decode("utf-8", "replace"))] + \
                 [("header " + k, v or "") for k, v in m.headers.items()]
        for where, text in fields:
            for n in needles:
                if n in text:
                    hits.append(("%s/%d/%d" % (m.topic, m.partition, m.offset), where, n[:12]))
            if BEARER.search(text):
                hits.append(("%s/%d/%d" % (m.topic, m.partition, m.offset), where, "Bearer"))
    return hits


def scenario_secrets(check):
    from fx_canary import Canary
    groups = [{"id": "cohort-s", "first": 1, "count": 3}]
    with Canary(BUILD) as canary:
        env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 10, "groups": groups,
                            "export": {"duration_ms": 300}},
                           {"id": "hospital-b", "patients": 5}],
                  worker_extra={"bulk": {"poll_min_ms": 200, "poll_max_ms": 1000},
                                "auth": {"backoff_min_ms": 100, "backoff_max_ms": 500}})
        try:
            faults = "/_sim/tenants/%s/faults" % SANDBOX
            # The echo is live: a 401 whose OperationOutcome repeats the Authorization header.
            sim_request(env, faults, {"name": "echo-401", "target": "fhir", "path": "Observation",
                                      "status": 401, "echo": True, "body": OUTCOME_ECHO,
                                      "content_type": "application/fhir+json", "count": -1})
            req = urllib.request.Request(env.sim_url + "/r4/%s/Observation?patient=1" % SANDBOX,
                                         headers={"Authorization": "Bearer probe-123"})
            try:
                urllib.request.urlopen(req)
                echoed = ""
            except urllib.error.HTTPError as e:
                echoed = e.read().decode()
            check("Authorization: Bearer probe-123" in echoed,
                  "the simulator echoes the Authorization header in its 401 OperationOutcome")
            sim_request(env, faults, {"name": "foreign", "target": "fhir", "path": "Encounter",
                                      "foreign_references": canary.url, "count": -1})
            sim_request(env, faults, {"name": "echo-kickoff", "target": "fhir", "path": "Group",
                                      "status": 401, "echo": True, "body": OUTCOME_ECHO,
                                      "content_type": "application/fhir+json", "count": -1})
            # hospital-b's registered key set is empty: every assertion is invalid_client.
            sim_request(env, "/_sim/tenants/hospital-b/clients",
                        {"client_id": "fhirx-e2e", "jwks": {"keys": []}, "scopes": env.scopes})
            w = env.start_worker()
            jobs = [{"job_id": "sec-401", "tenant": SANDBOX, "patients": ["20000001"],
                     "resources": ["Patient", "Observation", "Condition"]},
                    {"job_id": "sec-foreign", "tenant": SANDBOX, "patients": ["20000002"],
                     "resources": ["Encounter"], "follow_references": True},
                    {"job_id": "sec-badclient", "tenant": "hospital-b", "patients": ["20000001"],
                     "resources": ["Patient"]},
                    {"kind": "bulk", "job_id": "sec-bulk", "tenant": SANDBOX, "group": "cohort-s",
                     "resources": ["Patient"]}]
            env.enqueue(jobs)
            env.wait_status(4, timeout=180)
            # The token endpoint turns bad and repeats the request it got (the assertion).
            sim_request(env, "/_sim/tenants/%s/faults" % SANDBOX,
                        {"name": "echo-token", "target": "token", "status": 400, "echo": True,
                         "body": OAUTH_ECHO, "content_type": "application/json", "count": -1})
            sim_request(env, "/_sim/tenants/%s/settings" % SANDBOX, {"revoke_tokens": True})
            env.enqueue([{"job_id": "sec-token", "tenant": SANDBOX, "patients": ["20000003"],
                          "resources": ["Condition"]}])
            env.wait_status(5, timeout=180)
            status = {m.key: m.json() for m in read_all(env.bootstrap, "fhirx.status")}
            failures = [m.json() for m in read_all(env.bootstrap, "fhirx.failures")]
            classes = collections.defaultdict(set)
            for f in failures:
                classes[f["job_id"]].add(f["error_class"])
            log("failure classes: %s" % dict(classes))
            check(classes["sec-401"] == {"auth"} and classes["sec-badclient"] == {"auth"} and
                  classes["sec-foreign"] == {"foreign_reference"} and
                  classes["sec-bulk"] == {"auth"} and classes["sec-token"] == {"auth"},
                  "every job failed the way it was meant to: 401s, foreign references, an "
                  "unknown key, a 401 kick-off, token endpoint errors")
            check(all(status[j]["state"] in ("partial", "failed") for j in classes),
                  "and each has a status")
            tokens, pem, markers = secrets_of(env, [SANDBOX, "hospital-b"])
            check(len(tokens) >= 2, "the simulator issued %d access tokens to look for" % len(tokens))
            msgs = []
            for topic in ("fhirx.failures", "fhirx.dlq", "fhirx.status", "fhirx.bulk"):
                got = read_all(env.bootstrap, topic)
                msgs += got
                log("%s: %d records" % (topic, len(got)))
            check(len([m for m in msgs if m.topic == "fhirx.dlq"]) >= 4,
                  "dead letters to scan (%d)" % len([m for m in msgs if m.topic == "fhirx.dlq"]))
            hits = scan(msgs, list(tokens) + pem + markers)
            check(not hits, "no access token, key material, Bearer, JWT or client assertion in any "
                  "value or header of %d failure, dead letter, status and bulk records: %s"
                  % (len(msgs), sorted(set((h[0].split("/")[0], h[1], h[2]) for h in hits))))
            reasons = [f["message"] for f in failures if f["job_id"] in ("sec-401", "sec-token")]
            check(any("redacted" in r for r in reasons),
                  "the server's echoed secrets were redacted from the reasons, the rest kept: %s"
                  % reasons[:2])
            check(canary.requests()["requests"] == 0, "the canary host was never contacted")
            validate(env, check, 5, bulk=True)
            check(env.stop(w) == 0, "worker exits 0")
            logs = env.logs("worker")
            leaks = [n[:12] for n in list(tokens) + pem + markers if n in logs] + \
                (["Bearer"] if BEARER.search(logs) else [])
            check(not leaks, "nor in the worker's log (%d bytes): %s" % (len(logs), leaks))
        finally:
            env.close()


# ---- governor ------------------------------------------------------------------------------

GOV_RATE, GOV_BURST, GOV_CONCURRENCY = 10, 4, 3
ARRIVAL_JITTER_MS = 250


def scenario_governor(check):
    """tenants[].max_concurrency and rate_per_s/burst, seen from the server.

    The simulator counts a tenant's FHIR requests in flight from arrival until the answer
    is queued, so it never sees more than the client has open. Arrival times are the
    server's: a request reaches it some time after the governor let it go, and that time
    varies, so a window between two arrivals can look shorter than the window between
    the two grants; ARRIVAL_JITTER_MS allows for that (2.5 requests at 10/s: on a loaded
    machine several granted requests can reach the server late, together). The checks
    are properties of the recorded peak and timestamps, not of how long the test ran:
    without the limits, the same jobs put ~30 requests in flight and dozens into one
    100 ms window."""
    types = ["Patient", "Observation", "Condition", "Encounter"]
    env = Env(tenants=[{"id": "narrow", "patients": 12}, {"id": "paced", "patients": 12}],
              worker_extra={"worker": {"threads": 2, "max_requests_in_flight": 16}})
    try:
        with open(env.config) as f:
            cfg = json.load(f)
        for t in cfg["tenants"]:
            if t["id"] == "narrow":
                t["max_concurrency"] = GOV_CONCURRENCY
            else:
                t.update({"rate_per_s": GOV_RATE, "burst": GOV_BURST})
        with open(env.config, "w") as f:
            json.dump(cfg, f)
        # Every answer of the narrow tenant takes 150 ms, so requests would pile up.
        sim_request(env, "/_sim/tenants/narrow/faults",
                    {"target": "fhir", "delay_ms": 150, "count": -1})
        w = env.start_worker()
        jobs = []
        for tenant in ("narrow", "paced"):
            jobs += [{"job_id": "%s-%d" % (tenant, i), "tenant": tenant,
                      "patients": ["%d" % (20000001 + 3 * i + k) for k in range(3)],
                      "resources": types} for i in range(4)]
        env.enqueue(jobs)
        status = {m.key: m.json() for m in env.wait_status(len(jobs), timeout=300)}
        check(all(status[j["job_id"]]["state"] == "completed" for j in jobs),
              "every job of both tenants completed")
        narrow = env.sim_get("/_sim/tenants/narrow/load")
        check(narrow["requests"] >= 48 and narrow["in_flight"] == 0,
              "the narrow tenant answered %d FHIR requests" % narrow["requests"])
        check(narrow["peak_in_flight"] <= GOV_CONCURRENCY,
              "it never had more than max_concurrency %d requests in flight (peak %d)"
              % (GOV_CONCURRENCY, narrow["peak_in_flight"]))
        check(narrow["peak_in_flight"] >= 2,
              "and requests did overlap (peak %d): the limit was exercised" % narrow["peak_in_flight"])
        paced = env.sim_get("/_sim/tenants/paced/load")
        ts = sorted(paced["arrivals_us"])
        check(paced["dropped"] == 0 and len(ts) == paced["requests"] >= 48,
              "the paced tenant answered %d FHIR requests, all timestamped" % paced["requests"])
        worst = (None, 0, 0)
        for i in range(len(ts)):
            for j in range(i, len(ts)):
                span_ms = (ts[j] - ts[i]) / 1000.0
                excess = (j - i + 1) - (GOV_BURST + GOV_RATE * (span_ms + ARRIVAL_JITTER_MS) / 1000.0)
                if worst[0] is None or excess > worst[0]:
                    worst = (excess, j - i + 1, span_ms)
        log("busiest window of the paced tenant: %d requests within %.0f ms" % (worst[1], worst[2]))
        check(worst[0] <= 0, "no window of its arrivals holds more than burst %d + %d/s allows "
              "(worst: %d requests in %.0f ms)" % (GOV_BURST, GOV_RATE, worst[1], worst[2]))
        validate(env, check, len(jobs))
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


SCENARIOS = {"delivery": scenario_delivery, "redirects": scenario_redirects,
             "limits": scenario_limits, "tls": scenario_tls, "bulk_wire": scenario_bulk_wire,
             "expiry": scenario_expiry, "deadline": scenario_deadline,
             "replay_follow": scenario_replay_follow, "replay_rate": scenario_replay_rate,
             "replay_sigterm": scenario_replay_sigterm, "secrets": scenario_secrets,
             "governor": scenario_governor}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))

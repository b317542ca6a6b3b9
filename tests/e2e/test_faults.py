#!/usr/bin/python3
"""Resilience and security against a misbehaving EHR, end to end.

  test_faults.py SCENARIO    (faults | isolation | canary)

faults:    one fault at a time on the simulator; every job must end accounted
           for: complete results, or failure records plus a dead letter with
           the right error class. No request may come before a Retry-After.
isolation: a tenant answering 503 to everything next to a healthy one: the
           healthy one finishes everything, its throughput is reported
           against running alone; the failing one's jobs end as transient
           dead letters at the job deadline (the circuit breaker holds them
           back instead of hammering the tenant).
canary:    next links and references pointing at another host are refused:
           the canary host receives no request and no Authorization header;
           logs carry no token, assertion or patient id."""
import collections
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../support"))
from e2e import SANDBOX, BUILD, Check, Env, log  # noqa: E402
from fx_canary import Canary  # noqa: E402

TYPES = ["Patient", "Observation", "Condition", "Encounter", "Procedure"]
# Failures that a dead letter must carry for a replay (permanent reference
# failures are only recorded).
REPLAYABLE = {"transient", "throttled", "invalid_response", "too_large", "auth", "scope",
              "server", "search_restriction", "not_found", "foreign_reference"}


def post(url, body, method="POST"):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r) if r.length != 0 else None


def faults_url(env, tenant=SANDBOX):
    return "%s/_sim/tenants/%s/faults" % (env.sim_url, tenant)


def expected(env, tenant, patient, types):
    q = "/_sim/tenants/%s/expected?patient=%s&types=%s" % (tenant, patient, ",".join(types))
    return set(env.sim_get(q)["resources"])


def account(check, env, jobs, name, want_classes):
    """Every job ends accounted for; returns {job_id: status}."""
    statuses = {m.key: m.json() for m in env.wait_status(len(jobs), timeout=240)}
    failures = collections.defaultdict(list)
    for m in env.read("fhirx.failures"):
        f = m.json()
        failures[f["job_id"]].append(f)
    dlq = {m.key: m for m in env.read("fhirx.dlq")}
    results = collections.defaultdict(set)
    for m in env.read("fhirx.results"):
        results[m.headers.get("fhirx-job-id")].add(m.key.split("/", 1)[1])
    for j in jobs:
        s = statuses[j["job_id"]]
        want = set()
        for p in j["patients"]:
            want |= expected(env, j["tenant"], p, j["resources"])
        got = results[j["job_id"]]
        if s["state"] == "completed":
            if got != want:
                check(False, "%s: job %s completed but missing %s" % (name, j["job_id"], sorted(want - got)[:4]))
            continue
        fl = failures[j["job_id"]]
        classes = {f["error_class"] for f in fl}
        if not fl or not classes <= want_classes:
            check(False, "%s: job %s is %s with failure classes %s, expected within %s" % (
                name, j["job_id"], s["state"], classes, want_classes))
        if not classes & REPLAYABLE or j["job_id"] not in dlq:
            check(False, "%s: job %s failed without a dead letter" % (name, j["job_id"]))
        d = dlq[j["job_id"]]
        if d.headers.get("fhirx-error-class") not in classes:
            check(False, "%s: dead letter class %s not among %s" % (
                name, d.headers.get("fhirx-error-class"), classes))
        # What was not published is exactly what the dead letter asks for again.
        narrowed = json.loads(d.value)
        tasks = narrowed.get("tasks") or [{"patient": p, "resources": narrowed["resources"]}
                                          for p in narrowed["patients"]]
        for t in tasks:
            for r in t["resources"]:
                if not (expected(env, j["tenant"], t["patient"], [r]) - got) and \
                        not any(f["resource_type"] == r and f["patient"] == t["patient"] for f in fl):
                    check(False, "%s: dead letter asks for %s/%s which was published" % (
                        name, t["patient"], r))
    return statuses


def run_case(check, env, n, name, fault, want_classes, min_completed=0, clear_after=None):
    post(faults_url(env), None, "DELETE")
    if fault:
        for f in (fault if isinstance(fault, list) else [fault]):
            post(faults_url(env), f)
    jobs = [{"job_id": "%s-%d" % (name, i), "tenant": SANDBOX,
             "patients": ["%d" % (20000001 + (n * 7 + i) % 20)], "resources": TYPES}
            for i in range(4)]
    before = len({m.key for m in env.read("fhirx.status")})
    env.enqueue(jobs)
    if clear_after is not None:
        time.sleep(clear_after)
        post(faults_url(env), None, "DELETE")
    env.wait_status(before + len(jobs), timeout=240)
    statuses = account(check, env, jobs, name, want_classes)
    states = collections.Counter(statuses[j["job_id"]]["state"] for j in jobs)
    check(states["completed"] >= min_completed,
          "%-16s every job accounted for: %s" % (name, dict(states)))
    return statuses


def scenario_faults(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 20}],
              worker_extra={"http": {"low_speed_bytes": 2000, "low_speed_seconds": 2,
                                     "timeout_ms": 20000},
                            "worker": {"retries": 3, "breaker_window": 200}})
    try:
        w = env.start_worker()
        cases = [
            ("latency", {"target": "fhir", "delay_ms_min": 20, "delay_ms_max": 300, "count": -1},
             set(), 4, None),
            ("429-seconds", {"target": "fhir", "path": "Observation", "retry_after": 1, "count": 4},
             set(), 4, None),
            ("429-date", {"target": "fhir", "path": "Condition", "retry_after": 1,
                          "retry_after_date": True, "count": 3}, set(), 4, None),
            ("5xx-ratio", {"target": "fhir", "status": 503, "ratio": 0.2, "seed": 3},
             {"transient"}, 2, None),
            ("resets", {"target": "fhir", "reset": True, "ratio": 0.2, "seed": 5},
             {"transient"}, 2, None),
            ("drip", {"target": "fhir", "path": "Encounter", "drip_bytes_per_s": 200, "count": -1},
             {"transient"}, 0, None),
            ("truncated", {"target": "fhir", "path": "Procedure", "truncate": True, "count": -1},
             {"invalid_response"}, 0, None),
            ("malformed", {"target": "fhir", "path": "Condition", "malformed": True, "count": -1},
             {"invalid_response"}, 0, None),
            ("deep-json", {"target": "fhir", "path": "Observation", "nest_depth": 100000,
                           "count": -1}, {"invalid_response"}, 0, None),
            ("huge-body", {"target": "fhir", "path": "Encounter", "huge_bytes": 200000000,
                           "count": -1}, {"too_large"}, 0, None),
            ("token-outage", {"target": "token", "status": 503, "count": -1}, {"auth", "transient"},
             0, 1.5),
        ]
        for i, (name, fault, classes, min_ok, clear_after) in enumerate(cases):
            if name == "token-outage":  # make the worker need a new token during the outage
                env.sim_post("/_sim/tenants/%s/settings" % SANDBOX, {"revoke_tokens": True})
            run_case(check, env, i, name, fault, classes, min_ok, clear_after)
        v = env.sim_get("/_sim/tenants/%s/retry_after_violations" % SANDBOX)
        check(v["violations"] == 0 and v["checked"] > 0,
              "no request before a Retry-After expired (%d checked)" % v["checked"])
        rc, out = env.validate(len({m.key for m in env.read("fhirx.status")}))
        check(rc == 0, "every output validates against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def throughput(statuses):
    from datetime import datetime

    def ts(x):
        return datetime.strptime(x, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
    busy = max(ts(s["finished_at"]) for s in statuses) - min(ts(s["started_at"]) for s in statuses)
    return sum(s["resources"] for s in statuses) / busy if busy > 0 else 0


def scenario_isolation(check):
    env = Env(tenants=[{"id": "healthy", "patients": 60}, {"id": "failing", "patients": 60}],
              worker_extra={"worker": {"job_deadline_s": 15, "breaker_cooldown_ms": 2000,
                                       "max_requests_in_flight": 16},
                            "http": {"timeout_ms": 5000}})
    try:
        w = env.start_worker()

        def jobs(tenant, prefix, n=30):
            return [{"job_id": "%s-%02d" % (prefix, i), "tenant": tenant,
                     "patients": ["%d" % (20000001 + (2 * i + k) % 60) for k in range(2)],
                     "resources": TYPES} for i in range(n)]
        warm = jobs("healthy", "warm", 10)  # token, connections, caches
        env.enqueue(warm)
        env.wait_status(len(warm))
        alone = jobs("healthy", "alone", 60)
        env.enqueue(alone)
        s_alone = [m.json() for m in env.wait_status(len(warm) + len(alone))
                   if m.key.startswith("alone")]
        rate_alone = throughput(s_alone)
        post(faults_url(env, "failing"), {"target": "fhir", "status": 503, "count": -1})
        bad, good = jobs("failing", "bad"), jobs("healthy", "side", 60)
        env.enqueue([x for pair in zip(bad, good) for x in pair] + good[len(bad):])
        statuses = {m.key: m.json() for m in env.wait_status(
            len(warm) + len(alone) + len(bad) + len(good), timeout=300)}
        s_side = [statuses[j["job_id"]] for j in good]
        check(all(s["state"] == "completed" for s in s_side),
              "the healthy tenant completes every job next to a failing one")
        ratio = throughput(s_side) / rate_alone if rate_alone else 0
        log("healthy tenant throughput: alone %.0f resources/s, beside a 503 tenant %.0f "
            "resources/s, ratio %.2f" % (rate_alone, throughput(s_side), ratio))
        s_bad = [statuses[j["job_id"]] for j in bad]
        check(all(s["state"] == "failed" and s["error_class"] in ("transient", "throttled")
                  for s in s_bad),
              "the failing tenant's jobs end as transient failures: %s" %
              collections.Counter((s["state"], s["error_class"]) for s in s_bad))
        dlq = {m.key for m in env.read("fhirx.dlq")}
        check(all(j["job_id"] in dlq for j in bad), "and each is dead-lettered for replay")
        reqs = env.sim_get("/_sim/counters")["tenants"]["failing"]["fhir_requests"]
        tasks = len(bad) * 2 * len(TYPES)
        check(reqs < tasks * 4,
              "the breaker held back: %d requests to the failing tenant for %d tasks (retries "
              "alone would be %d)" % (reqs, tasks, tasks * 4))
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def scenario_canary(check):
    with Canary(BUILD) as canary:
        env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 10,
                            "per_patient": {"Observation": 300}}])
        try:
            w = env.start_worker()
            post(faults_url(env), {"target": "fhir", "path": "Observation",
                                   "foreign_next": canary.url, "count": -1})
            post(faults_url(env), {"target": "fhir", "path": "Encounter",
                                   "foreign_references": canary.url, "count": -1})
            jobs = [{"job_id": "canary-%d" % i, "tenant": SANDBOX,
                     "patients": ["%d" % (20000001 + i)], "resources": ["Observation", "Encounter"],
                     "follow_references": True} for i in range(5)]
            env.enqueue(jobs)
            statuses = {m.key: m.json() for m in env.wait_status(len(jobs))}
            failures = [m.json() for m in env.read("fhirx.failures")]
            foreign = [f for f in failures if f["error_class"] == "foreign_reference"]
            check(len(foreign) >= len(jobs) * 2,
                  "foreign next links and references are refused (%d failures)" % len(foreign))
            c = canary.requests()
            check(c["requests"] == 0 and c["with_authorization"] == 0,
                  "the canary host received no request and no Authorization header")
            check(all(s["state"] == "partial" for s in statuses.values()),
                  "the jobs are partial: what was reachable is published")
            check(env.stop(w) == 0, "worker exits 0")
            logs = env.logs("worker")
            patients = ["%d" % (20000001 + i) for i in range(5)] + ["12724065"]
            leaks = [s for s in patients + ["Bearer", "eyJ", "access_token", "BEGIN PRIVATE"]
                     if s in logs]
            check(not leaks, "the worker log holds no token, assertion, key or patient id (%d "
                  "bytes scanned)" % len(logs))
        finally:
            env.close()


SCENARIOS = {"faults": scenario_faults, "isolation": scenario_isolation, "canary": scenario_canary}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))

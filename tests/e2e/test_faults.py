#!/usr/bin/python3
"""Resilience and security against a misbehaving EHR, end to end.

  test_faults.py SCENARIO    (faults | isolation | canary | retry_after)

faults:    one fault at a time on the simulator; every job must end accounted
           for: complete results, or failure records plus a dead letter with
           the right error class. No request may come before a Retry-After.
isolation: a tenant answering 503 to everything next to a healthy one: the
           healthy one finishes every job (exact results, every request
           answered 200) while all the failing one's jobs are still parked;
           those end as transient dead letters at the job deadline, and the
           failing tenant got no more requests than the breaker allows
           (breaker_window, those in flight when it opened, one probe per
           cool-down).
retry_after: a Retry-After where HTTP gives it no meaning (a year, on a
           search's 200) holds nothing back: every job completes; one that counts
           (a 429's day) is cut to http.max_retry_after_s. Both are counted in
           /metrics.
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


def failures_of(env, prefix):
    """{job_id: [failure records]} of the jobs whose id starts with prefix-."""
    out = collections.defaultdict(list)
    for m in env.read("fhirx.failures"):
        f = m.json()
        if f["job_id"].startswith(prefix + "-"):
            out[f["job_id"]].append(f)
    return out


def only_type_failed(check, env, name, statuses, rtype, cls, says):
    """Each of the case's jobs lost exactly its rtype task, as a failure of class cls
    whose message contains says; nothing else failed and nothing was silently lost."""
    statuses = {k: v for k, v in statuses.items() if k.startswith(name + "-")}
    fl = failures_of(env, name)
    bad = {k: [(f["resource_type"], f["error_class"], f["message"]) for f in v]
           for k, v in fl.items()
           if len(v) != 1 or v[0]["resource_type"] != rtype or v[0]["error_class"] != cls or
           says not in v[0]["message"]}
    check(len(statuses) == 4 and all(s["state"] == "partial" for s in statuses.values()) and
          set(fl) == set(statuses) and not bad,
          "%-16s each job partial, its %s task failed as %s saying %r: %s" % (
              name, rtype, cls, says, bad or fl[sorted(fl)[0]][0]["message"]))


def scenario_faults(check):
    # The limits the deep-json and drip cases are measured against.
    depth, low_bytes, low_s, timeout_ms = 64, 2000, 2, 20000
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 20}],
              worker_extra={"http": {"low_speed_bytes": low_bytes, "low_speed_seconds": low_s,
                                     "timeout_ms": timeout_ms, "max_json_depth": depth},
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
            # Just past http.max_json_depth, far below jansson's own limit (2048): only
            # fhirx's check stands between this and a "completed" job without Observations.
            ("deep-json", {"target": "fhir", "path": "Observation", "nest_depth": depth + 1,
                           "count": -1}, {"invalid_response"}, 0, None),
            ("deeper-json", {"target": "fhir", "path": "Observation", "nest_depth": 100000,
                             "count": -1}, {"invalid_response"}, 0, None),
            ("huge-body", {"target": "fhir", "path": "Encounter", "huge_bytes": 200000000,
                           "count": -1}, {"too_large"}, 0, None),
            ("token-outage", {"target": "token", "status": 503, "count": -1}, {"auth", "transient"},
             0, 1.5),
        ]
        for i, (name, fault, classes, min_ok, clear_after) in enumerate(cases):
            if name == "token-outage":  # make the worker need a new token during the outage
                env.sim_post("/_sim/tenants/%s/settings" % SANDBOX, {"revoke_tokens": True})
            statuses = run_case(check, env, i, name, fault, classes, min_ok, clear_after)
            if name in ("deep-json", "deeper-json"):
                only_type_failed(check, env, name, statuses, "Observation", "invalid_response",
                                 "deeper than http.max_json_depth (%d)" % depth)
            elif name == "drip":
                # The low-speed abort (curl's wording), not the overall timeout ("Operation
                # timed out after 20000 milliseconds"), which a drip would also reach.
                only_type_failed(check, env, name, statuses, "Encounter", "transient",
                                 "Operation too slow. Less than %d bytes/sec transferred the last "
                                 "%d seconds" % (low_bytes, low_s))
        v = env.sim_get("/_sim/tenants/%s/retry_after_violations" % SANDBOX)
        check(v["violations"] == 0 and v["checked"] > 0,
              "no request before a Retry-After expired (%d checked)" % v["checked"])
        rc, out = env.validate(len({m.key for m in env.read("fhirx.status")}))
        check(rc == 0, "every output validates against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def scenario_retry_after(check):
    cap_s = 2
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 20}],
              worker_extra={"http": {"max_retry_after_s": cap_s}, "worker": {"retries": 3}})
    try:
        w = env.start_worker()
        # A year on a 200 (the normal answer, one extra header): before the fix the
        # tenant's Observation searches waited for it (7 days, the parser's clamp),
        # past every job's deadline.
        started = time.time()
        run_case(check, env, 0, "ra-on-200",
                 {"target": "fhir", "path": "Observation", "count": 2,
                  "headers": {"Retry-After": "31536000"}}, set(), 4)
        ignored = env.metric(w, "fhirx_retry_after_ignored_total")
        check(ignored >= 1, "a 200's Retry-After was ignored and counted (%d)" % ignored)
        # A day on a 429: honoured, but only for http.max_retry_after_s.
        run_case(check, env, 1, "ra-capped",
                 {"target": "fhir", "path": "Condition", "retry_after": 86400, "count": 2},
                 set(), 4)
        capped = env.metric(w, "fhirx_retry_after_capped_total")
        check(capped >= 1, "a 429's day-long Retry-After was cut to %d s and counted (%d)" % (
            cap_s, capped))
        log("both cases took %.1f s" % (time.time() - started))
        rc, out = env.validate(len({m.key for m in env.read("fhirx.status")}))
        check(rc == 0, "every output validates against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def cooldowns_within(span_ms, first_ms, max_ms):
    """How many breaker cool-downs (first_ms, doubling up to max_ms) end within span_ms:
    the most probes a tenant whose jobs lived span_ms can have been sent."""
    n, total, c = 0, 0, first_ms
    while total + c <= span_ms:
        total += c
        n += 1
        c = min(c * 2, max_ms)
    return n


def scenario_isolation(check):
    # The breaker and backpressure settings the bounds below are derived from.
    W, C, COOL, COOL_MAX, DEADLINE_S, JOBS_IN_FLIGHT = 20, 16, 2000, 120000, 20, 8
    env = Env(tenants=[{"id": "healthy", "patients": 60}, {"id": "failing", "patients": 60}],
              worker_extra={"worker": {"job_deadline_s": DEADLINE_S, "breaker_window": W,
                                       "breaker_percent": 50, "breaker_cooldown_ms": COOL,
                                       "breaker_cooldown_max_ms": COOL_MAX,
                                       "max_requests_in_flight": 16,
                                       # Fewer than the failing tenant's jobs per thread:
                                       # were its parked jobs counted, they would fill
                                       # every slot and stall the healthy tenant's jobs.
                                       "max_jobs_in_flight": JOBS_IN_FLIGHT},
                            "http": {"timeout_ms": 5000}})
    try:
        with open(env.config) as f:
            cfg = json.load(f)
        for t in cfg["tenants"]:
            t["max_concurrency"] = C
        with open(env.config, "w") as f:
            json.dump(cfg, f)
        w = env.start_worker()

        def jobs(tenant, prefix, n=30):
            return [{"job_id": "%s-%02d" % (prefix, i), "tenant": tenant,
                     "patients": ["%d" % (20000001 + (2 * i + k) % 60) for k in range(2)],
                     "resources": TYPES} for i in range(n)]
        warm = jobs("healthy", "warm", 10)  # token, connections, caches
        env.enqueue(warm)
        env.wait_statuses([j["job_id"] for j in warm])
        post(faults_url(env, "failing"), {"target": "fhir", "status": 503, "count": -1})
        bad, good = jobs("failing", "bad"), jobs("healthy", "side", 60)
        env.enqueue([x for pair in zip(bad, good) for x in pair] + good[len(bad):])

        # The healthy tenant is not held up: all its jobs end while every job of the
        # failing tenant is still parked behind the breaker (they end only at their
        # deadline, DEADLINE_S after they started).
        early = {m.key: m.json() for m in env.wait_statuses([j["job_id"] for j in good])}
        check(not [k for k in early if k.startswith("bad-")],
              "all %d healthy jobs finished while every failing job was still parked behind "
              "the breaker (none had ended)" % len(good))
        check(all(early[j["job_id"]]["state"] == "completed" for j in good),
              "the healthy tenant completes every job next to a failing one")
        results = collections.defaultdict(set)
        for m in env.read("fhirx.results"):
            results[m.headers.get("fhirx-job-id")].add(m.key.split("/", 1)[1])
        wrong = [j["job_id"] for j in good if results[j["job_id"]] != set().union(
            *(expected(env, "healthy", p, TYPES) for p in j["patients"]))]
        check(not wrong, "each healthy job published exactly its patients' resources %s" % wrong)

        statuses = {m.key: m.json() for m in env.wait_statuses([j["job_id"] for j in bad],
                                                               timeout=300)}
        s_bad = [statuses[j["job_id"]] for j in bad]
        check(all(s["state"] == "failed" and s["error_class"] in ("transient", "throttled")
                  for s in s_bad),
              "the failing tenant's jobs end as transient failures: %s" %
              collections.Counter((s["state"], s["error_class"]) for s in s_bad))
        dlq = {m.key for m in env.read("fhirx.dlq")}
        check(all(j["job_id"] in dlq for j in bad), "and each is dead-lettered for replay")

        counters = env.sim_get("/_sim/counters")["tenants"]
        check(set(counters["healthy"]["fhir_by_status"]) == {"200"},
              "every request to the healthy tenant was answered 200 (%d requests)" %
              counters["healthy"]["fhir_requests"])
        # What the breaker allows: the window's worth of requests before it opens, those
        # already in flight then (fewer than the tenant's concurrency limit), then one
        # probe per cool-down; the cool-downs double, so only a few end before the
        # failing jobs' deadlines.
        reqs = counters["failing"]["fhir_requests"]
        opened = env.metric(w, "fhirx_breaker_opened_total", tenant="failing")

        def ms(x):
            from datetime import datetime, timezone
            return datetime.strptime(x, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=timezone.utc).timestamp() * 1000
        lived = max(ms(s["finished_at"]) for s in s_bad) - min(ms(s["started_at"]) for s in s_bad)
        probes = cooldowns_within(lived, COOL, COOL_MAX)
        check(1 <= opened <= 1 + probes,
              "the breaker opened %d times: once, then after each failed probe (at most %d "
              "cool-downs of %d ms doubling end within the %.1f s the failing jobs lived)" %
              (opened, probes, COOL, lived / 1000))
        tasks = len(bad) * 2 * len(TYPES)
        bound = W + (C - 1) + int(opened)
        check(W <= reqs <= bound,
              "the breaker held back: %d requests to the failing tenant for %d tasks, within "
              "breaker_window %d + fewer than max_concurrency %d in flight when it opened + one "
              "probe per opening (%d) = %d (retries alone would be %d)" %
              (reqs, tasks, W, C, opened, bound, tasks * 4))
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def collect_refs(v, origin, out):
    """Every reference value in a resource that points at origin."""
    if isinstance(v, dict):
        for k, c in v.items():
            if k == "reference" and isinstance(c, str):
                if c.startswith(origin + "/"):
                    out.add(c)
            else:
                collect_refs(c, origin, out)
    elif isinstance(v, list):
        for c in v:
            collect_refs(c, origin, out)


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
            check(all(f["error_class"] == "foreign_reference" for f in failures),
                  "every failure is a refused foreign URL")
            # Per job: one refused next link (Observation), and one refused reference per
            # distinct foreign URL in the Encounters it published (what the worker saw).
            results = collections.defaultdict(list)
            for m in env.read("fhirx.results"):
                results[m.headers.get("fhirx-job-id")].append(m.json())
            for j in jobs:
                fl = [f for f in failures if f["job_id"] == j["job_id"]]
                nexts = [f for f in fl if "next page link" in f["message"]]
                refs = {f["url"] for f in fl if f not in nexts}
                seen = set()
                for r in results[j["job_id"]]:
                    collect_refs(r, canary.url, seen)
                if len(nexts) != 1 or nexts[0]["resource_type"] != "Observation" or \
                        refs != seen or len(fl) != 1 + len(seen):
                    check(False, "job %s: %d failures: %d for next links, %d distinct references "
                          "refused, %d foreign references published (missing %s, extra %s)" % (
                              j["job_id"], len(fl), len(nexts), len(refs), len(seen),
                              sorted(seen - refs)[:3], sorted(refs - seen)[:3]))
            check(True, "each job: exactly one refused next link and one failure per distinct "
                  "foreign reference (%d failures)" % len(failures))
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


SCENARIOS = {"faults": scenario_faults, "isolation": scenario_isolation, "canary": scenario_canary,
             "retry_after": scenario_retry_after}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))

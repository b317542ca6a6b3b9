#!/usr/bin/python3
"""The worker pool end to end, on the embedded Kafka and the Cerner simulator.

  test_pipeline.py SCENARIO     (many | malformed | kill | overtaken | outage | references |
                                 since | foreign_and_large)

Every scenario checks that each job ends with a status record, and that what
was published for a job is exactly what the simulator holds for it."""
import collections
import json
import signal
import sys
import time

from e2e import SANDBOX, Check, Env, log, wait_until

TYPES = ["Patient", "Observation", "Condition", "Encounter"]


def expected_keys(env, tenant, patients, types, since=None):
    """What a correct extraction publishes for these patients: Type/id set."""
    keys = set()
    for p in patients:
        q = "/_sim/tenants/%s/expected?patient=%s&types=%s" % (tenant, p, ",".join(types))
        if since:
            q += "&since=" + since
        keys.update(env.sim_get(q)["resources"])
    return keys


def results_by_job(env, min_count=0):
    by_job = collections.defaultdict(list)
    for m in env.read("fhirx.results", min_count):
        by_job[m.headers.get("fhirx-job-id")].append(m)
    return by_job


def check_jobs_complete(check, env, jobs, allow_duplicates=False):
    """Each job: a completed status; its results are exactly the expected set."""
    statuses = env.wait_status(len(jobs))
    last = {}
    for m in statuses:
        last[m.key] = m.json()
    check(set(last) == {j["job_id"] for j in jobs},
          "every job has a status record (%d jobs)" % len(jobs))
    check(all(s["state"] == "completed" for s in last.values()),
          "every job completed: %s" % collections.Counter(s["state"] for s in last.values()))
    by_job = results_by_job(env)
    for j in jobs:
        want = expected_keys(env, j["tenant"], j["patients"], j.get("resources", TYPES))
        msgs = by_job[j["job_id"]]
        got = [m.key.split("/", 1)[1] for m in msgs]
        for m in msgs:
            v = m.json()
            assert m.key == "%s/%s/%s" % (j["tenant"], v["resourceType"], v["id"]), m.key
        if not allow_duplicates and len(got) != len(set(got)):
            check(False, "job %s published a resource twice" % j["job_id"])
        if set(got) != want:
            check(False, "job %s: published %d, expected %d; missing %s; extra %s" % (
                j["job_id"], len(set(got)), len(want), sorted(want - set(got))[:5],
                sorted(set(got) - want)[:5]))
        counts = last[j["job_id"]]["counts"]
        if sum(counts.values()) != len(want):
            check(False, "job %s: status counts %s but %d expected" % (j["job_id"], counts, len(want)))
    check(True, "every job published exactly the simulator's resources for it")
    return last


def after_jobs(env, prefix):
    """One job on each partition of the jobs topic, waited for: once each has a status,
    whoever consumes the topic has read past everything enqueued before them."""
    jobs = [{"job_id": "%s-p%d" % (prefix, p), "tenant": env.tenants[0]["id"],
             "patients": ["%d" % (20000001 + p)], "resources": TYPES}
            for p in range(env.partitions)]
    for p, j in enumerate(jobs):
        env.enqueue([j], partition=p)
    env.wait_statuses([j["job_id"] for j in jobs])
    return jobs


def make_jobs(env, n, per_job=3, types=TYPES, prefix="job"):
    jobs, tenants = [], env.tenants
    for i in range(n):
        t = tenants[i % len(tenants)]
        pats = ["%d" % (20000001 + (i * per_job + k) % t["patients"]) for k in range(per_job)]
        jobs.append({"job_id": "%s-%03d" % (prefix, i), "tenant": t["id"], "patients": pats,
                     "resources": types})
    return jobs


def scenario_many(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 30},
                       {"id": "hospital-b", "patients": 40}])
    try:
        w = env.start_worker()
        jobs = make_jobs(env, 40)
        env.enqueue(jobs)
        check_jobs_complete(check, env, jobs)
        rc, out = env.validate(len(jobs))
        check(rc == 0, "results, failures, dead letters and statuses validate against schemas/:\n" + out)
        check(env.stop(w) == 0, "SIGTERM: the worker drains and exits 0")
        committed, ends = env.committed()
        check(committed == ends, "offsets committed up to the end: %s vs %s" % (committed, ends))
        # A restart has nothing left to do: no job is processed twice. One more job per
        # partition shows when the restarted worker has read past the old ones.
        w2 = env.start_worker("worker2")
        env.wait_assigned([w2])
        markers = after_jobs(env, "restart")
        check(env.metric(w2, "fhirx_jobs_consumed_total") == len(markers) and
              len(env.read("fhirx.status")) == len(jobs) + len(markers),
              "a restart re-processes nothing: it consumed only the %d jobs enqueued after it "
              "started" % len(markers))
        check(env.stop(w2) == 0, "second worker exits 0")
        log_text = env.logs("worker") + env.logs("worker2")
        check("Bearer" not in log_text and "access_token" not in log_text,
              "no token in the logs")
    finally:
        env.close()


def scenario_malformed(check):
    # One partition, so one worker thread: a second consumer would sit idle in the group, and
    # on a loaded machine its late join keeps the group rebalancing (commits fail meanwhile).
    env = Env(partitions=1, worker_extra={"worker": {"threads": 1}})
    try:
        w = env.start_worker()
        good1 = {"job_id": "good-1", "tenant": SANDBOX, "patients": ["12724065"], "resources": TYPES}
        good2 = {"job_id": "good-2", "tenant": SANDBOX, "patients": ["12724066"], "resources": TYPES}
        # The mock keeps at most ~5 MiB per partition, so the oversized job is
        # 4 MB against the worker's 1 MiB max_job_bytes (the unit test of the
        # job parser covers 10 MB); the code path does not depend on the size.
        big = {"job_id": "too-big", "tenant": SANDBOX,
               "patients": ["%08d" % i for i in range(350000)]}
        corpus = [
            good1,
            b"this is not json {",
            {"job_id": "wrong-types", "tenant": SANDBOX, "patients": "12724065"},
            {"job_id": "who", "tenant": "no-such-tenant", "patients": ["1"]},
            json.dumps(big).encode(),
            {"job_id": "bad-type", "tenant": SANDBOX, "patients": ["1"], "resources": ["Medication"]},
            good2,
        ]
        check(len(corpus[4]) > 4 * 1000 * 1000, "a job of %d bytes" % len(corpus[4]))
        env.enqueue(corpus, partition=0)
        statuses = {m.key: m.json() for m in env.wait_status(len(corpus))}
        check(statuses["good-1"]["state"] == "completed" and statuses["good-2"]["state"] == "completed",
              "good jobs around the bad ones complete")
        dlq = env.read("fhirx.dlq", 5)
        classes = [m.headers.get("fhirx-error-class") for m in dlq]
        check(classes == ["invalid_job", "invalid_job", "unknown_tenant", "invalid_job", "invalid_job"],
              "every bad job is dead-lettered with its class, in order: %s" % classes)
        check(dlq[0].value == b"this is not json {", "the unparseable job is kept as it was")
        check(dlq[3].headers.get("fhirx-value-omitted") == "original-too-large" and
              dlq[3].headers.get("fhirx-original-offset") == "4",
              "the oversized job is referenced by its offset, not copied")
        check(all(m.headers.get("fhirx-original-topic") == "fhirx.jobs" for m in dlq),
              "dead letters name where the job came from")
        failures = env.read("fhirx.failures", 5)
        check(len(failures) == 5 and all(not json.loads(m.value)["transient"] for m in failures),
              "one permanent failure record per bad job")
        bad = [s for k, s in statuses.items() if not k.startswith("good")]
        check(len(bad) == 5 and all(s["state"] == "failed" for s in bad),
              "bad jobs get a failed status record too")
        rc, out = env.validate(len(corpus))
        check(rc == 0, "every output validates against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
        committed, ends = env.committed()
        check(committed == ends, "the partition moved past every bad job: %s" % committed)
    finally:
        env.close()


def scenario_kill(check):
    env = Env()
    try:
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"target": "fhir", "status": 0, "delay_ms": 300, "count": -1})
        a = env.start_worker("worker-a")
        b = env.start_worker("worker-b")
        jobs = make_jobs(env, 60, per_job=2, prefix="k")
        env.wait_assigned([a, b])  # both own partitions: both take jobs
        env.enqueue(jobs)
        done = len(env.read("fhirx.status", 5, timeout=60))
        a.kill()  # SIGKILL mid-run: no drain, no commit
        check(len(jobs) - done >= 10, "killed worker-a with %d jobs unfinished" % (len(jobs) - done))
        a.wait()
        log("killed worker-a")
        statuses = env.wait_status(len(jobs), timeout=180)
        seen = collections.Counter(m.key for m in statuses)
        check(set(seen) == {j["job_id"] for j in jobs},
              "every job ended with a status record after a worker was killed")
        dup = [k for k, n in seen.items() if n > 1]
        log("jobs processed twice: %d" % len(dup))
        # Only jobs the killed worker had not committed run twice: none that the
        # surviving worker finished, and each duplicate's first run was worker-a's.
        first = {}
        for m in statuses:
            first.setdefault(m.key, m.json()["worker"])
        killed = {w for w in first.values() if w.endswith(":%d" % a.pid)}
        check(all(first[k].endswith(":%d" % a.pid) for k in dup),
              "every job run twice was first run by the killed worker (%d jobs)" % len(dup))
        check(len(killed) == 1, "the killed worker had finished some jobs before it died")
        last = {m.key: m.json() for m in statuses}
        check(all(s["state"] == "completed" for s in last.values()), "all completed")
        # Duplicates are whole jobs done twice, never partial ones: per job, results are complete.
        by_job = results_by_job(env)
        for j in jobs:
            want = expected_keys(env, j["tenant"], j["patients"], TYPES)
            got = {m.key.split("/", 1)[1] for m in by_job[j["job_id"]]}
            if got != want:
                check(False, "job %s incomplete after the kill" % j["job_id"])
        check(True, "every job's results are complete")
        check(env.stop(b) == 0, "the surviving worker exits 0")
    finally:
        env.close()


def scenario_overtaken(check):
    """At-least-once when jobs finish out of order. A slow job at the head of a
    partition is overtaken by fast jobs behind it; the partition's offset must stay
    at the slow job (the lowest unfinished one), not move past the fast ones. The
    worker is killed while the slow job still runs: the next worker runs it again,
    and the fast jobs behind it too."""
    # One worker thread owns both partitions, so one consumer commits for both: once
    # the marker job's offset on partition 1 is committed, whatever the overtaking jobs
    # stored for partition 0 before it was committed too.
    env = Env(partitions=2, worker_extra={
        "worker": {"threads": 1},
        # The slow job's held request must neither time out nor trip the low-speed abort.
        "http": {"timeout_ms": 900000, "low_speed_bytes": 0}})
    try:
        # Only the slow job asks for Condition; the simulator holds that one answer.
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"target": "fhir", "path": "Condition", "delay_ms": 600000, "count": 1})
        slow = {"job_id": "slow", "tenant": SANDBOX, "patients": ["20000001"],
                "resources": ["Patient", "Observation", "Condition"]}
        fast = [{"job_id": "fast-%d" % i, "tenant": SANDBOX, "patients": ["%d" % (20000002 + i)],
                 "resources": ["Patient", "Observation"]} for i in range(5)]
        fast_ids = [j["job_id"] for j in fast]
        w1 = env.start_worker("worker-1")
        env.enqueue([slow] + fast, partition=0)
        offsets = {m.key: m.offset for m in env.read("fhirx.jobs", 1 + len(fast))}
        first = {m.key: m.json() for m in env.wait_statuses(fast_ids)}
        check("slow" not in first and all(offsets[k] > offsets["slow"] for k in fast_ids),
              "the %d jobs behind the slow one (offsets %s) finished while it (offset %d) had not" %
              (len(fast), [offsets[k] for k in fast_ids], offsets["slow"]))
        held = env.sim_get("/_sim/tenants/%s/faults" % SANDBOX)["faults"][0]
        check(held["fired"] == 1, "the slow job's Condition search is held by the simulator")
        # The slow job's other types are published: its first run did real work.
        first_part = expected_keys(env, SANDBOX, slow["patients"], ["Patient", "Observation"])
        wait_until("the slow job's Patient and Observation results", lambda: first_part <= {
            m.key.split("/", 1)[1] for m in env.read("fhirx.results")
            if m.headers.get("fhirx-job-id") == "slow"})
        # A commit after the fast jobs finished: the marker's offset on partition 1.
        env.enqueue([{"job_id": "marker", "tenant": SANDBOX, "patients": ["20000010"],
                      "resources": ["Patient"]}], partition=1)
        env.wait_statuses(["marker"])
        committed = wait_until("the marker's offset to be committed", lambda: (
            lambda c: c[0] if c[0][1] == c[1][1] else None)(env.committed()))
        check(committed[0] <= offsets["slow"],
              "partition 0's committed offset (%d) has not passed the unfinished slow job (%d)" %
              (committed[0], offsets["slow"]))
        w1.kill()  # SIGKILL while the slow job runs: no drain, no final commit
        w1.wait()
        w2 = env.start_worker("worker-2")
        env.wait_statuses(["slow"])
        statuses = wait_until("a second status record for every fast job", lambda: (
            lambda ms: ms if all(sum(m.key == k for m in ms) == 2 for k in fast_ids) else None)(
                env.read("fhirx.status")))
        by_job = collections.defaultdict(list)
        for m in statuses:
            by_job[m.key].append(m.json())
        w1_id, w2_id = ":%d" % w1.pid, ":%d" % w2.pid
        check(len(by_job["slow"]) == 1 and by_job["slow"][0]["worker"].endswith(w2_id) and
              by_job["slow"][0]["state"] == "completed",
              "the slow job ran again on the next worker and completed")
        check(all(by_job[k][0]["worker"].endswith(w1_id) and by_job[k][1]["worker"].endswith(w2_id)
                  for k in fast_ids),
              "the fast jobs behind it ran again too (first on the killed worker, then on the next)")
        check(len(by_job["marker"]) == 1, "the committed marker job did not run again")
        results = collections.Counter(m.key.split("/", 1)[1] for m in env.read("fhirx.results")
                                      if m.headers.get("fhirx-job-id") == "slow")
        conditions = expected_keys(env, SANDBOX, slow["patients"], ["Condition"])
        check(set(results) == first_part | conditions and
              all(results[k] == 2 for k in first_part) and all(results[k] == 1 for k in conditions),
              "the slow job's results: Patient and Observation published by both runs (%d), "
              "Condition once, by the second (%d)" % (len(first_part), len(conditions)))
        check(env.stop(w2) == 0, "the next worker exits 0")
        committed, ends = env.committed()
        check(committed == ends, "offsets committed up to the end: %s vs %s" % (committed, ends))
    finally:
        env.close()


def scenario_outage(check):
    env = Env()
    try:
        # Slow the EHR down so the outage lands in the middle of the run.
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"target": "fhir", "status": 0, "delay_ms": 400, "count": -1})
        w = env.start_worker()
        jobs = make_jobs(env, 60, prefix="o")
        env.enqueue(jobs)
        done_before = len(env.read("fhirx.status", 3, timeout=60))
        check(env.control_post("/cluster/down") == 200,
              "all brokers down mid-run, with %d of %d jobs done" % (done_before, len(jobs)))
        check(len(jobs) - done_before >= 10, "the outage hits the middle of the run")
        wait_until("the worker to see the outage (/readyz)", lambda: not env.readyz(w)["ready"])
        check(env.control_post("/cluster/up") == 200, "brokers back, after the worker saw them gone")
        check_jobs_complete(check, env, jobs, allow_duplicates=True)
        check(env.stop(w) == 0, "worker exits 0 after the outage")
        # Commits may lag after an outage (librdkafka waits for the coordinator);
        # whatever was not committed is redelivered, never lost: a second worker
        # reads past every job (one more per partition shows when) and finishes with
        # every job still complete and every offset committed.
        env.sim_delete("/_sim/tenants/%s/faults" % SANDBOX)
        w2 = env.start_worker("worker2")
        env.wait_assigned([w2])
        markers = after_jobs(env, "after-outage")
        # Its auto-commit covers everything; waited for before SIGTERM, because a final
        # commit can still be lost when one thread leaves the group while another commits.
        committed, ends = wait_until("the restarted worker to commit up to the end", lambda: (
            lambda c: c if c[0] == c[1] else None)(env.committed()))
        log("the restarted worker committed up to the end: %s" % committed)
        rc = env.stop(w2)
        check(rc == 0, "a restarted worker exits 0 (got %s; log tail: %s)" % (
            rc, env.logs("worker2")[-600:] if rc else ""))
        check_jobs_complete(check, env, jobs + markers, allow_duplicates=True)
    finally:
        env.close()


REF_TYPES = "Practitioner,Organization,Location,RelatedPerson,Binary"
CLINICAL = ["Patient", "Observation", "Condition", "Encounter", "DocumentReference",
            "DiagnosticReport", "CareTeam", "Coverage", "Immunization", "Goal"]


def expected_with_refs(env, tenant, patients, types, since=None):
    keys = set()
    for p in patients:
        q = "/_sim/tenants/%s/expected?patient=%s&types=%s&ref_types=%s" % (
            tenant, p, ",".join(types), REF_TYPES)
        if since:
            q += "&since=" + since
        e = env.sim_get(q)
        keys.update(e["resources"])
        keys.update(e["references"])
    return keys


def scenario_references(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 40}])
    try:
        w = env.start_worker()
        jobs = []
        for i in range(20):
            pats = ["%d" % (20000001 + (2 * i + k) % 40) for k in range(2)]
            jobs.append({"job_id": "ref-%02d" % i, "tenant": SANDBOX, "patients": pats,
                         "resources": CLINICAL, "follow_references": True})
        env.enqueue(jobs)
        statuses = {m.key: m.json() for m in env.wait_status(len(jobs))}
        check(all(s["state"] == "completed" for s in statuses.values()),
              "all reference jobs completed: %s" % collections.Counter(
                  s["state"] for s in statuses.values()))
        by_job = results_by_job(env)
        for j in jobs:
            want = expected_with_refs(env, SANDBOX, j["patients"], CLINICAL)
            got = [m.key.split("/", 1)[1] for m in by_job[j["job_id"]]]
            if len(got) != len(set(got)) or set(got) != want:
                check(False, "job %s: missing %s extra %s dup %d" % (
                    j["job_id"], sorted(want - set(got))[:6], sorted(set(got) - want)[:6],
                    len(got) - len(set(got))))
        check(True, "each job published its patients' resources plus every entity they reference")
        refs = [m for ms in by_job.values() for m in ms if m.headers.get("fhirx-via") == "reference"]
        check(refs and all("fhirx-patient" not in m.headers for m in refs),
              "referenced entities carry no patient header (%d published)" % len(refs))
        reads = env.sim_get("/_sim/tenants/%s/reads" % SANDBOX)
        shared = {k: n for k, n in reads.items()
                  if k.split("/")[0] in ("Practitioner", "Organization", "Location")}
        check(shared and max(shared.values()) == 1,
              "each shared Practitioner/Organization/Location was fetched once (%d entities, "
              "max %d reads)" % (len(shared), max(shared.values()) if shared else 0))
        fetched = sum(s["references_fetched"] for s in statuses.values())
        cached = sum(s["references_cached"] for s in statuses.values())
        check(cached > fetched / 2,
              "the reference cache served %d of %d references" % (cached, cached + fetched))
        rc, out = env.validate(len(jobs))
        check(rc == 0, "outputs validate against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def scenario_since(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 5}])
    try:
        w = env.start_worker()
        patient = "20000002"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
        touched = set()
        for t, n in (("Observation", 3), ("Condition", 2)):
            r = json.loads(urlopen_post(env, "/_sim/tenants/%s/touch" % SANDBOX,
                                        {"patient": patient, "type": t, "count": n}))
            touched.update(r["touched"])
        types = ["Observation", "Condition", "CarePlan"]
        job = {"job_id": "since-1", "tenant": SANDBOX, "patients": [patient], "resources": types,
               "since": since}
        env.enqueue([job])
        status = env.wait_status(1)[0].json()
        got = {m.key.split("/", 1)[1] for m in env.read("fhirx.results")}
        careplans = {k for k in got if k.startswith("CarePlan/")}
        check({k for k in got if not k.startswith("CarePlan/")} == touched,
              "a since-extract returns exactly what changed: %s" % sorted(touched))
        want = expected_keys(env, SANDBOX, [patient], types, since=since)
        check(got == want, "and agrees with the simulator (%d resources)" % len(want))
        check(status["full_types"] == ["CarePlan"] and careplans,
              "CarePlan cannot be narrowed by _lastUpdated: fetched in full (%d) and said so" %
              len(careplans))
        check(status["since"] == since, "the status record carries since")
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def scenario_foreign_and_large(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 4}],
              sim_extra={"foreign_references": True, "binary_large_every": 1,
                         "binary_large_bytes": 3000000})
    try:
        w = env.start_worker()
        job = {"job_id": "fl-1", "tenant": SANDBOX, "patients": ["20000001", "20000002"],
               "resources": ["DocumentReference", "DiagnosticReport", "Encounter", "Observation"],
               "follow_references": True}
        env.enqueue([job])
        status = env.wait_status(1)[0].json()
        failures = [m.json() for m in env.read("fhirx.failures", 1)]
        classes = collections.Counter(f["error_class"] for f in failures)
        check(classes["too_large"] > 0 and classes["foreign_reference"] > 0,
              "too-large Binaries and foreign references become failures: %s" % dict(classes))
        big = [f for f in failures if f["error_class"] == "too_large"]
        check(all(f["resource_type"] == "Binary" and f["reference"].startswith("Binary/") and
                  "bytes" in f["message"] for f in big),
              "each too_large failure names the Binary and its size")
        foreign = [f for f in failures if f["error_class"] == "foreign_reference"]
        check(all(not f["transient"] and "outside the tenant" in f["message"] for f in foreign),
              "foreign references are permanent and explained")
        check(status["state"] == "partial", "the job is partial, not failed")
        check(not env.read("fhirx.dlq"), "permanent reference failures are not dead-lettered")
        rc, out = env.validate(1)
        check(rc == 0, "outputs validate:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def urlopen_post(env, path, body):
    import urllib.request
    req = urllib.request.Request(env.sim_url + path, method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.read()


SCENARIOS = {"references": scenario_references, "since": scenario_since,
             "foreign_and_large": scenario_foreign_and_large,"many": scenario_many, "malformed": scenario_malformed, "kill": scenario_kill,
             "outage": scenario_outage, "overtaken": scenario_overtaken}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))

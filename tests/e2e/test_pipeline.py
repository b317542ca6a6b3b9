#!/usr/bin/python3
"""The worker pool end to end, on the embedded Kafka and the Cerner simulator.

  test_pipeline.py SCENARIO     (many | malformed | kill | outage)

Every scenario checks that each job ends with a status record, and that what
was published for a job is exactly what the simulator holds for it."""
import collections
import json
import signal
import sys
import time

from e2e import SANDBOX, Check, Env, log

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
        # A restart has nothing left to do: no job is processed twice.
        w2 = env.start_worker("worker2")
        time.sleep(8)
        check(len(env.read("fhirx.status")) == len(jobs), "a restart re-processes nothing")
        check(env.stop(w2) == 0, "second worker exits 0")
        log_text = env.logs("worker") + env.logs("worker2")
        check("Bearer" not in log_text and "access_token" not in log_text,
              "no token in the logs")
    finally:
        env.close()


def scenario_malformed(check):
    env = Env(partitions=1)
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
        time.sleep(4)  # let both join the group
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
        time.sleep(6)
        check(env.control_post("/cluster/up") == 200, "brokers back")
        check_jobs_complete(check, env, jobs, allow_duplicates=True)
        check(env.stop(w) == 0, "worker exits 0 after the outage")
        # Commits may lag after an outage (librdkafka waits for the coordinator);
        # whatever was not committed is redelivered, never lost: a second worker
        # finishes with every job still complete.
        w2 = env.start_worker("worker2")
        time.sleep(8)
        check(env.stop(w2) == 0, "a restarted worker exits 0")
        check_jobs_complete(check, env, jobs, allow_duplicates=True)
    finally:
        env.close()


SCENARIOS = {"many": scenario_many, "malformed": scenario_malformed, "kill": scenario_kill,
             "outage": scenario_outage}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))

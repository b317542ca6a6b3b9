#!/usr/bin/python3
"""A bulk export's file whose results Kafka refuses is never recorded as done.

  test_bulk_delivery.py

bulk.h promises: "a file counts as done only once every result it produced is acknowledged, so
a resumed export re-downloads at most the files that were in flight". A file recorded done
(files_done in its export's progress records on fhirx.bulk) is never downloaded again, by this
worker or by one that resumes the export: recording it before Kafka took its results loses them.

The fault: every Produce that the broker leading fhirx.results answers fails
(TOPIC_AUTHORIZATION_FAILED, a permanent error: librdkafka fails the message at once), as in
test_claims.py's `delivery` scenario for patient jobs; every other topic, fhirx.bulk included,
is led by broker 1 and is delivered. While it lasts, a Group export is kicked off, polled and
its files downloaded, and Kafka refuses every result:
  - the worker downloads the refused files again (8 times, then the checks; a progress record
    listing a done file, or a status, ends that wait at once), backing off: the waits it logs
    start at bulk.poll_min_ms, never shrink and reach bulk.poll_max_ms;
  - no progress record of the export lists a file as done (files_done stays empty), the export
    has no status record (in particular no completed one), none of its results reached
    fhirx.results, and /metrics counts no file done.
Then, for two exports in turn:
  1. live: the fault ends (fhirx.results' leadership moves to a broker that answers) and the
     same worker, still downloading, completes the export;
  2. resumed: the worker is stopped (SIGTERM) while the fault lasts, which leaves no file
     recorded done either; the fault ends and a new worker resumes the export (no second
     kick-off) and downloads and publishes every one of its files itself.
Each export then has one status, completed, with exactly the Group's resources (the
simulator's groups/{id}/expected) counted once and every file done; its results on
fhirx.results are exactly those; its last progress record lists every file as done. Every
message validates against schemas/.
"""
import re
import time

from e2e import SANDBOX, Check, Env, log, wait_until
from test_bulk import validate
from test_ops import scrape, value

GROUP = "cohort-k"
TYPES = ["Patient", "Condition", "Observation"]
# Every topic the worker writes except fhirx.results is led by broker 1, so that a broker's
# Produce errors hit fhirx.results alone.
OTHER_TOPICS = ("fhirx.jobs", "fhirx.failures", "fhirx.dlq", "fhirx.status", "fhirx.parking",
                "fhirx.bulk")
FILE_DELAY_MS = 300
REDOWNLOADS = 8
POLL_MIN_MS, POLL_MAX_MS = 200, 1000
AGAIN = "a bulk file's results were not all delivered; downloading it again"


def progress(env, job_id):
    """The export's progress records on fhirx.bulk, in the order they were published."""
    return sorted((m.json() for m in env.read("fhirx.bulk") if m.key == job_id),
                  key=lambda r: (r.get("attempt", 1), r["seq"]))


def done_files(rec):
    return sum(b - a + 1 for a, b in rec.get("files_done", []))


def statuses(env, job_id):
    return [m.json() for m in env.read("fhirx.status") if m.key == job_id]


def results(env, job_id):
    return [m for m in env.read("fhirx.results")
            if m.headers.get("fhirx-job-id") == job_id]


def export_counters(env):
    return env.sim_get("/_sim/counters")["tenants"][SANDBOX]["export"]


def fail_results_on(env, broker):
    """From now on every Produce request broker answers fails: 1000 errors, the most the mock
    takes (each download of a file costs one or two: one request per batch); then
    fhirx.results is led by that broker. Its error list cannot be cleared: the fault ends when
    fhirx.results moves to another broker."""
    env.control_post("/errors", {"api": "Produce", "broker": broker,
                             "errors": ["TOPIC_AUTHORIZATION_FAILED"] * 1000})
    env.control_post("/topics/fhirx.results/leader", {"broker": broker})


def refused(check, env, w, job_id):
    """Runs job_id's export on w while Kafka refuses its results: nothing of it is recorded
    done. Returns its number of files."""
    admin = env.admin_url(w)
    again_before = env.logs(w.name).count(AGAIN)
    m = scrape(admin)
    files_before = value(m, "fhirx_bulk_files_total")
    completed_before = value(m, "fhirx_bulk_completed_total")
    env.enqueue([{"kind": "bulk", "job_id": job_id, "tenant": SANDBOX, "group": GROUP,
                  "resources": TYPES}])
    rec = wait_until("%s's manifest (a progress record with files_total)" % job_id,
                   lambda: next((r for r in progress(env, job_id) if r.get("files_total")), None),
                   timeout=120)
    total = rec["files_total"]
    check(total >= 4, "%s: the export has several files (%d)" % (job_id, total))

    # A file Kafka refused is downloaded again, not recorded done: wait until the worker said
    # so REDOWNLOADS times. Backing off from 200 ms to 1 s, that spans 6 s or more, several of
    # the export's PROGRESS_MS (1 s, the most a
    # file recorded done waits for its progress record). A record listing a done file, or a
    # status, ends the wait at once: that is the bug this test is about (and the end of the
    # test, with the Group's resources, catches it too).
    def settled():
        if any(done_files(r) for r in progress(env, job_id)) or statuses(env, job_id):
            return True
        return env.logs(w.name).count(AGAIN) - again_before >= REDOWNLOADS
    wait_until("%s: %d files refused by Kafka to be downloaded again" % (job_id, REDOWNLOADS),
             settled, timeout=180)
    recs = progress(env, job_id)
    log("%s: %d files downloaded again while Kafka refused the results; %d progress records"
        % (job_id, env.logs(w.name).count(AGAIN) - again_before, len(recs)))
    waits = [int(x) for x in re.findall(r'"retry_in_ms":\s*"?(\d+)', env.logs(w.name))]
    waits = waits[again_before:]
    check(waits[:1] == [POLL_MIN_MS] and waits == sorted(waits) and max(waits) == POLL_MAX_MS,
          "%s: each refusal backs the next download off, from bulk.poll_min_ms to "
          "bulk.poll_max_ms: %s" % (job_id, waits))
    check(not [r for r in recs if done_files(r)],
          "%s: no progress record lists a file as done while Kafka refuses its results: %s"
          % (job_id, [(r["seq"], r["state"], r.get("files_done")) for r in recs]))
    check(not statuses(env, job_id),
          "%s: no status record (none completed) while the fault lasts" % job_id)
    check(not results(env, job_id), "%s: none of its results reached fhirx.results" % job_id)
    m = scrape(admin)
    check(value(m, "fhirx_delivery_errors_total") > 0,
          "%s: Kafka refused the results (%d delivery errors)"
          % (job_id, value(m, "fhirx_delivery_errors_total")))
    check(value(m, "fhirx_bulk_completed_total") == completed_before and
          value(m, "fhirx_bulk_files_total") == files_before,
          "%s: /metrics counts none of its files, nor the export, as done" % job_id)
    return total


def completed(check, env, job_id, total, want):
    """job_id's export has completed, once, with exactly want and every file done."""
    st = wait_until("%s's status once Kafka takes the results" % job_id,
                  lambda: statuses(env, job_id), timeout=240)
    check(len(st) == 1 and st[0]["state"] == "completed",
          "%s: the export completes, once: %s" % (job_id, [s["state"] for s in st]))
    got = {m.key.split("/", 1)[1] for m in results(env, job_id)}
    check(got == want, "%s: with exactly the Group's resources on fhirx.results (%d of %d; "
          "missing %s, extra %s)" % (job_id, len(got), len(want), sorted(want - got)[:4],
                                     sorted(got - want)[:4]))
    check(st[0]["resources"] == len(want) and st[0]["bulk"]["files"] == total and
          st[0]["bulk"]["files_done"] == total,
          "%s: the status counts every resource once and every file done (%d resources, %d of "
          "%d files)" % (job_id, st[0]["resources"], st[0]["bulk"]["files_done"], total))
    last = progress(env, job_id)[-1]
    check(last["state"] == "completed" and done_files(last) == total,
          "%s: the last progress record is completed with every file done (%s, %s)"
          % (job_id, last["state"], last.get("files_done")))


def main(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 12,
                        "groups": [{"id": GROUP, "first": 1, "count": 8}],
                        "export": {"duration_ms": 300, "retry_after_s": 1,
                                   "file_max_resources": 20}}],
              partitions=4,
              worker_extra={"worker": {"threads": 1},
                            "bulk": {"poll_min_ms": POLL_MIN_MS, "poll_max_ms": POLL_MAX_MS,
                                     "parallel_downloads": 2}})
    try:
        want = set(env.sim_get("/_sim/tenants/%s/groups/%s/expected?types=%s"
                               % (SANDBOX, GROUP, ",".join(TYPES)))["resources"])
        for t in OTHER_TOPICS:
            env.control_post("/topics/%s/leader" % t, {"broker": 1})
        # Each file's 307 takes FILE_DELAY_MS: with the back-off after each refusal, this keeps
        # the downloads from spending the mock's 1000 errors too soon.
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"name": "slow-files", "target": "fhir", "path": "bulk-export/*/files/*",
                      "delay_ms": FILE_DELAY_MS, "count": -1})

        # 1. The fault ends while the worker is still downloading.
        fail_results_on(env, 3)
        w1 = env.start_worker("w1")
        total = refused(check, env, w1, "bulk-live")
        env.control_post("/topics/fhirx.results/leader", {"broker": 2})
        log("bulk-live: fhirx.results now led by broker 2, which answers")
        completed(check, env, "bulk-live", total, want)

        # 2. The worker stops while the fault lasts; another one resumes the export.
        fail_results_on(env, 2)
        total = refused(check, env, w1, "bulk-resumed")
        check(env.stop(w1) == 0, "w1 exits 0 on SIGTERM while Kafka refuses the results")
        recs = progress(env, "bulk-resumed")
        check(recs[-1]["state"] == "downloading" and not [r for r in recs if done_files(r)],
              "bulk-resumed: w1 stopped with no file of it recorded done: %s"
              % [(r["seq"], r["state"], r.get("files_done")) for r in recs])
        check(not statuses(env, "bulk-resumed") and not results(env, "bulk-resumed"),
              "bulk-resumed: still no status and no result of it")
        env.control_post("/topics/fhirx.results/leader", {"broker": 1})
        log("bulk-resumed: fhirx.results now led by broker 1, which answers; starting w2")
        w2 = env.start_worker("w2")
        completed(check, env, "bulk-resumed", total, want)
        check("resuming a bulk export" in env.logs("w2") and export_counters(env)["kickoffs"] == 2,
              "bulk-resumed: w2 resumed the export (one kick-off per export, %d in all)"
              % export_counters(env)["kickoffs"])
        m = scrape(env.admin_url(w2))
        check(value(m, "fhirx_bulk_resumed_total") == 1 and
              value(m, "fhirx_bulk_files_total") == total,
              "bulk-resumed: w2 downloaded and published all %d files itself (%d)"
              % (total, value(m, "fhirx_bulk_files_total")))

        validate(env, check, 2)
        check(env.stop(w2) == 0, "w2 exits 0")
    finally:
        env.close()


if __name__ == "__main__":
    started = time.time()
    main(Check("bulk_delivery"))
    log("test_bulk_delivery passed in %.1f s" % (time.time() - started))

#!/usr/bin/python3
"""Group bulk $export jobs end to end (worker/bulk/bulk.h says how they run).

  test_bulk.py SCENARIO    (export | resume | resume_download | expire | refused | removed)

export:  a Group export ends with exactly the Group's resources in results
         (compared with the simulator's own answer), several files per type,
         downloads redirected (307) to a storage port that never sees an
         Authorization header, one kick-off and one DELETE per export; a second
         export of the same client waits out the 429 and then succeeds; an
         export whose manifest has an error file ends partial with one failure
         record per OperationOutcome; every message validates against schemas/.
resume:  the worker running an export is killed (SIGKILL) while the server is
         still exporting; another worker takes the bulk partition over and
         resumes the same export: the simulator sees one kick-off, and the
         results are again exactly the Group's.
resume_download: the owner is killed halfway through the downloads (each file's 307
         slowed down by a simulator fault); the worker that takes over downloads only the
         files the last progress record does not list as done, still with one kick-off.
expire:  the server forgets the export while it runs (expired): the job is
         dead-lettered with error class export_expired; `fhirx replay` re-runs
         it as a new export that completes (attempt 2).
refused: a kick-off for a Group the tenant does not have (404) and an export the
         server reports as failed (500 + OperationOutcome on the status URL) are
         classified (not_found, export_failed), dead-lettered and given a failed
         status; the failed export's server side is deleted.
removed: a reload (SIGHUP) removes the tenant while its export runs: the export fails as
         unknown_tenant (its tokens are gone) and is dead-lettered; once the tenant is back
         (another reload) the replayed job completes."""
import json
import os
import signal
import subprocess
import sys
import time

from e2e import FHIRX, SANDBOX, Check, Env, log
from test_ops import scrape, value

TYPES = ["Patient", "Observation", "Condition", "Encounter"]
GROUP = "cohort-a"


def bulk_env(duration_ms=1500, file_max=40, extra_groups=()):
    groups = [{"id": GROUP, "first": 1, "count": 12}] + list(extra_groups)
    return Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 30, "groups": groups,
                         "export": {"duration_ms": duration_ms, "retry_after_s": 1,
                                    "file_max_resources": file_max}}],
               worker_extra={"bulk": {"poll_min_ms": 200, "poll_max_ms": 2000}})


def bulk_job(job_id, group=GROUP, types=TYPES, **kw):
    j = {"kind": "bulk", "job_id": job_id, "tenant": SANDBOX, "group": group, "resources": types}
    j.update(kw)
    return j


def expected(env, group=GROUP, types=TYPES):
    doc = env.sim_get("/_sim/tenants/%s/groups/%s/expected?types=%s" % (SANDBOX, group, ",".join(types)))
    return set(doc["resources"])


def results_of(env, job_id, attempt=None):
    out = []
    for m in env.read("fhirx.results"):
        if m.headers.get("fhirx-job-id") != job_id:
            continue
        if attempt is not None and m.headers.get("fhirx-attempt") != str(attempt):
            continue
        out.append(m)
    return out


def export_counters(env):
    c = env.sim_get("/_sim/counters")
    return c["tenants"][SANDBOX]["export"], c["storage"]


def statuses(env, job_id):
    return [m.json() for m in env.read("fhirx.status") if m.key == job_id]


def wait_for(what, pred, timeout=120, step=0.3):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out waiting for " + what)


def progress(env, job_id):
    return [m.json() for m in env.read("fhirx.bulk") if m.key == job_id]


def validate(env, check, expect_status):
    rc, out = env.validate(expect_status)
    check(rc == 0, "every output message validates against schemas/: " + out[-400:])
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, os.path.join(here, "../schemas/validate_topics.py"),
                        "--bootstrap", env.bootstrap, "--schemas", os.path.join(here, "../../schemas"),
                        "--topics", "bulk", "--timeout", "60"], capture_output=True, text=True,
                       timeout=180)
    check(r.returncode == 0, "every bulk progress record validates: " + (r.stdout + r.stderr)[-400:])


# ---- export ------------------------------------------------------------------------------

def scenario_export(check):
    env = bulk_env(extra_groups=[{"id": "cohort-b", "first": 13, "count": 5}])
    try:
        w = env.start_worker()
        want = expected(env)
        check(len(want) > 12 * 3, "the Group has resources of every type (%d)" % len(want))
        # Two exports of the same client at once: the second is answered 429 and waits.
        env.enqueue([bulk_job("bulk-a"), bulk_job("bulk-b", group="cohort-b")])
        st = {m.key: m.json() for m in env.wait_status(2, timeout=240)}
        a, b = st["bulk-a"], st["bulk-b"]
        check(a["state"] == "completed" and b["state"] == "completed",
              "both exports completed: %s / %s" % (a["state"], b["state"]))
        got = results_of(env, "bulk-a")
        keys = {m.key.split("/", 1)[1] for m in got}
        check(keys == want, "bulk-a published exactly the Group's resources (%d; missing %s, extra %s)"
              % (len(keys), sorted(want - keys)[:5], sorted(keys - want)[:5]))
        check(all(m.headers.get("fhirx-via") == "bulk" for m in got), "results say fhirx-via: bulk")
        check(a["resources"] == len(want) and sum(a["counts"].values()) == len(want),
              "the status counts every resource once (%d)" % a["resources"])
        check(a["bulk"]["group"] == GROUP and a["bulk"]["transaction_time"],
              "the status names the Group and the transactionTime")
        check(a["bulk"]["files"] > len(TYPES), "several files per type (%d files)" % a["bulk"]["files"])
        want_b = expected(env, "cohort-b")
        keys_b = {m.key.split("/", 1)[1] for m in results_of(env, "bulk-b")}
        check(keys_b == want_b, "bulk-b published exactly its Group's resources")
        ex, storage = export_counters(env)
        check(ex["kickoffs"] == 2, "one accepted kick-off per export (%d)" % ex["kickoffs"])
        check(ex["kickoffs_refused"] >= 1, "the second kick-off was answered 429 and waited out (%d)"
              % ex["kickoffs_refused"])
        check(ex["deletes"] == 2, "each export was deleted on the server (%d)" % ex["deletes"])
        check(storage["requests"] >= a["bulk"]["files"], "downloads went to the storage port (%d)"
              % storage["requests"])
        check(storage["authorization_headers"] == 0,
              "the storage endpoint never saw an Authorization header")

        # An export whose manifest has an error file: partial, one failure per OperationOutcome.
        env.sim_post("/_sim/tenants/%s/export" % SANDBOX, {"error_file": True})
        env.enqueue([bulk_job("bulk-c", types=["Patient", "Condition"])])
        st = {m.key: m.json() for m in env.wait_status(3, timeout=120)}
        c = st["bulk-c"]
        fails = [m.json() for m in env.read("fhirx.failures") if m.json()["job_id"] == "bulk-c"]
        check(c["state"] == "partial" and c["bulk"]["error_lines"] >= 1,
              "an error file makes the export partial (%s, %d error lines)"
              % (c["state"], c["bulk"]["error_lines"]))
        check(len(fails) == c["bulk"]["error_lines"] and
              all(f["error_class"] == "export_failed" for f in fails),
              "one export_failed failure record per OperationOutcome (%d)" % len(fails))
        check(not [m for m in env.read("fhirx.dlq") if m.key == "bulk-c"],
              "a partial export is not dead-lettered (its resources are in)")

        # Following references: the entities the exported resources point at come too,
        # each read once.
        env.sim_post("/_sim/tenants/%s/export" % SANDBOX, {"error_file": False})
        env.enqueue([bulk_job("bulk-f", group="cohort-b", types=["Encounter", "Observation"],
                              follow_references=True)])
        st = {m.key: m.json() for m in env.wait_status(4, timeout=120)}
        f = st["bulk-f"]
        got = results_of(env, "bulk-f")
        keys = {m.key.split("/", 1)[1] for m in got}
        exported = [m.json() for m in got if m.headers.get("fhirx-via") == "bulk"]
        pointed = set()
        for res in exported:
            stack = [res]
            while stack:
                v = stack.pop()
                if isinstance(v, dict):
                    for k, c in v.items():
                        if k == "reference" and isinstance(c, str) and \
                                c.split("/")[0] in ("Practitioner", "Organization", "Location"):
                            pointed.add(c)
                        else:
                            stack.append(c)
                elif isinstance(v, list):
                    stack.extend(v)
        check(len(pointed) > 3, "the exported resources reference shared entities (%d)" % len(pointed))
        check(pointed <= keys, "every referenced Practitioner/Organization/Location is published "
              "(missing %s)" % sorted(pointed - keys)[:5])
        refs = [m for m in got if m.headers.get("fhirx-via") == "reference"]
        check(f["state"] == "completed" and f["references_fetched"] == len(refs) > 0,
              "the status counts the references fetched (%d, %d results via reference)"
              % (f["references_fetched"], len(refs)))
        reads = env.sim_get("/_sim/tenants/%s/reads" % SANDBOX)
        check(all(n == 1 for n in reads.values()), "each referenced entity was read once (max %d)"
              % max(reads.values() or [0]))
        check({"%s/%s" % (r["resourceType"], r["id"]) for r in exported} ==
              expected(env, "cohort-b", ["Encounter", "Observation"]),
              "and the export itself is exactly the Group's")
        validate(env, check, 4)
        m = scrape(env.admin_url(w))
        ex, _ = export_counters(env)
        check(value(m, "fhirx_bulk_kickoffs_total") == ex["kickoffs"] == 4 and
              value(m, "fhirx_bulk_completed_total") == 4 and
              value(m, "fhirx_bulk_failed_total") == 0 and
              value(m, "fhirx_bulk_exports_active") == 0,
              "/metrics counts the 4 kick-offs and completed exports, none active")
        files = sum(s["bulk"]["files"] + s["bulk"]["error_files"]
                    for s in (m2.json() for m2 in env.read("fhirx.status")))
        check(value(m, "fhirx_bulk_files_total") == files,
              "/metrics counts every file (%d of %d)" % (value(m, "fhirx_bulk_files_total"), files))
        check(value(m, "fhirx_bulk_status_polls_total") >= ex["status_polls"] > 0,
              "and the status polls (%d)" % value(m, "fhirx_bulk_status_polls_total"))
        check(env.stop(w) == 0, "worker exits 0")
        check("Bearer" not in env.logs("worker") and "access_token" not in env.logs("worker"),
              "no token in the worker's logs")
    finally:
        env.close()


# ---- resume ------------------------------------------------------------------------------

def scenario_resume(check):
    env = bulk_env(duration_ms=9000)
    try:
        w1 = env.start_worker("w1")
        w2 = env.start_worker("w2")
        env.enqueue([bulk_job("bulk-r")])
        rec = wait_for("the export to be kicked off",
                       lambda: next((r for r in progress(env, "bulk-r") if r["state"] == "exporting"), None))
        owner = rec["worker"].rsplit(":", 1)[1]
        victim, survivor = (w1, w2) if str(w1.pid) == owner else (w2, w1)
        check(str(victim.pid) == owner, "the export runs on one of the two workers (pid %s)" % owner)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        log("killed %s while the server exports" % victim.name)
        st = [m.json() for m in env.wait_status(1, timeout=240)]
        check(st[-1]["state"] == "completed", "the export completed after the kill")
        ex, storage = export_counters(env)
        check(ex["kickoffs"] == 1, "the simulator saw one kick-off: the export was resumed, not "
              "started again (%d)" % ex["kickoffs"])
        check("resuming a bulk export" in env.logs(survivor.name),
              "the surviving worker says it resumed the export")
        keys = {m.key.split("/", 1)[1] for m in results_of(env, "bulk-r")}
        want = expected(env)
        check(keys == want, "exactly the Group's resources (%d; missing %d, extra %d)"
              % (len(keys), len(want - keys), len(keys - want)))
        check(storage["authorization_headers"] == 0, "storage never saw an Authorization header")
        validate(env, check, 1)
        check(env.stop(survivor) == 0, "the surviving worker exits 0")
    finally:
        env.close()


# ---- resume_download -----------------------------------------------------------------------

def done_files(rec):
    return sum(b - a + 1 for a, b in rec.get("files_done", []))


def scenario_resume_download(check):
    env = bulk_env(duration_ms=500, file_max=25)
    try:
        # Each file URL answers its 307 after 600 ms: the downloads take several seconds.
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"target": "fhir", "path": "bulk-export/*/files/*", "delay_ms": 600, "count": -1})
        w1 = env.start_worker("w1")
        w2 = env.start_worker("w2")
        env.enqueue([bulk_job("bulk-d")])
        rec = wait_for("some files to be done",
                       lambda: next((r for r in reversed(progress(env, "bulk-d"))
                                     if r["state"] == "downloading" and done_files(r) >= 2), None),
                       step=0.1)
        owner = rec["worker"].rsplit(":", 1)[1]
        victim, survivor = (w1, w2) if str(w1.pid) == owner else (w2, w1)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        # File requests are counted as they arrive (the delay fault fires for each), not when
        # their delayed 307 goes out (the victim's may never be answered): nothing to wait
        # for. The survivor cannot own the partition before the group's session timeout (6 s).
        total = rec["files_total"]

        def files_requested():
            return env.sim_get("/_sim/tenants/%s/faults" % SANDBOX)["faults"][0]["fired"]
        requested_at_kill = files_requested()
        last = max(progress(env, "bulk-d"), key=lambda r: r["seq"])
        done = done_files(last)
        log("killed %s with %d of %d files recorded done" % (victim.name, done, total))
        check(0 < done < total, "the kill landed mid-download (%d of %d files done)" % (done, total))
        st = env.wait_status(1, timeout=240)[-1].json()
        check(st["state"] == "completed", "the export completed after the kill")
        ex, storage = export_counters(env)
        check(ex["kickoffs"] == 1, "one kick-off (%d)" % ex["kickoffs"])
        check(files_requested() - requested_at_kill == total - done,
              "the new owner downloaded only the %d files not recorded done (%d)"
              % (total - done, files_requested() - requested_at_kill))
        keys = {m.key.split("/", 1)[1] for m in results_of(env, "bulk-d")}
        check(keys == expected(env), "exactly the Group's resources")
        check(st["resources"] == len(expected(env)) and st["bulk"]["files_done"] == total,
              "the status counts every resource once, across both workers (%d)" % st["resources"])
        check(storage["authorization_headers"] == 0, "storage never saw an Authorization header")
        validate(env, check, 1)
        check(env.stop(survivor) == 0, "the surviving worker exits 0")
    finally:
        env.close()


# ---- expire ------------------------------------------------------------------------------

def scenario_expire(check):
    env = bulk_env(duration_ms=6000)
    try:
        w = env.start_worker()
        env.enqueue([bulk_job("bulk-x")])
        wait_for("the export to be kicked off",
                 lambda: any(r["state"] == "exporting" for r in progress(env, "bulk-x")))
        env.sim_post("/_sim/tenants/%s/export/expire" % SANDBOX, {})
        st = env.wait_status(1, timeout=120)[-1].json()
        check(st["state"] == "failed" and st["error_class"] == "export_expired",
              "an expired export fails as export_expired (%s, %s)" % (st["state"], st["error_class"]))
        dl = [m for m in env.read("fhirx.dlq", 1) if m.key == "bulk-x"]
        check(len(dl) == 1 and dl[0].headers.get("fhirx-error-class") == "export_expired",
              "and is dead-lettered with its cause")
        check(dl and json.loads(dl[0].value).get("kind") == "bulk", "the dead letter is the bulk job")
        # The cause is gone (a new export will not expire): replay.
        env.sim_post("/_sim/tenants/%s/export" % SANDBOX, {"duration_ms": 1000})
        r = subprocess.run([FHIRX, "replay", "--config", env.config, "--error-class",
                            "export_expired"], capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, "fhirx replay: " + (r.stdout + r.stderr).strip()[-300:])
        final = wait_for("attempt 2's status",
                         lambda: next((s for s in statuses(env, "bulk-x") if s["attempt"] == 2), None))
        check(final["state"] == "completed", "the replayed export completes (attempt 2)")
        keys = {m.key.split("/", 1)[1] for m in results_of(env, "bulk-x", attempt=2)}
        check(keys == expected(env), "with exactly the Group's resources")
        ex, _ = export_counters(env)
        check(ex["kickoffs"] == 2, "a replay is a new export (%d kick-offs)" % ex["kickoffs"])
        validate(env, check, 2)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- refused -----------------------------------------------------------------------------

def scenario_refused(check):
    env = bulk_env(duration_ms=800)
    try:
        w = env.start_worker()
        env.enqueue([bulk_job("bulk-nogroup", group="no-such-group")])
        st = env.wait_status(1, timeout=120)[-1].json()
        check(st["state"] == "failed" and st["error_class"] == "not_found",
              "a kick-off for an unknown Group fails as not_found (%s, %s)" % (st["state"], st["error_class"]))
        env.sim_post("/_sim/tenants/%s/export" % SANDBOX, {"fail_next": True})
        env.enqueue([bulk_job("bulk-broken")])
        st = {m.key: m.json() for m in env.wait_status(2, timeout=120)}["bulk-broken"]
        check(st["state"] == "failed" and st["error_class"] == "export_failed",
              "an export the server reports failed is export_failed (%s, %s)" % (st["state"], st["error_class"]))
        dl = {m.key: m.headers for m in env.read("fhirx.dlq", 2)}
        check(dl.get("bulk-nogroup", {}).get("fhirx-error-class") == "not_found" and
              dl.get("bulk-broken", {}).get("fhirx-error-class") == "export_failed",
              "both are dead-lettered with their class")
        check("Group no-such-group" in dl.get("bulk-nogroup", {}).get("fhirx-reason", ""),
              "the reason names the Group: " + dl.get("bulk-nogroup", {}).get("fhirx-reason", ""))
        ex, _ = export_counters(env)
        check(ex["deletes"] == 1, "the failed export is deleted on the server (%d)" % ex["deletes"])
        check(not results_of(env, "bulk-broken"), "nothing of the failed export is published")
        validate(env, check, 2)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- removed -----------------------------------------------------------------------------

def scenario_removed(check):
    groups = [{"id": GROUP, "first": 1, "count": 12}]
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 30, "groups": groups,
                        "export": {"duration_ms": 5000, "retry_after_s": 1}},
                       {"id": "hospital-b", "patients": 5}],
              worker_extra={"bulk": {"poll_min_ms": 200, "poll_max_ms": 1000}})
    try:
        w = env.start_worker()
        with open(env.config) as f:
            full = json.load(f)
        env.enqueue([bulk_job("bulk-rm")])
        wait_for("the export to be kicked off",
                 lambda: any(r["state"] == "exporting" for r in progress(env, "bulk-rm")))
        without = dict(full, tenants=[t for t in full["tenants"] if t["id"] != SANDBOX])
        with open(env.config, "w") as f:
            json.dump(without, f)
        w.send_signal(signal.SIGHUP)
        st = env.wait_status(1, timeout=120)[-1].json()
        check(st["state"] == "failed" and st["error_class"] == "unknown_tenant",
              "the export of a removed tenant fails as unknown_tenant (%s, %s)"
              % (st["state"], st["error_class"]))
        dl = [m for m in env.read("fhirx.dlq", 1) if m.key == "bulk-rm"]
        check(len(dl) == 1 and "removed from the configuration" in dl[0].headers.get("fhirx-reason", ""),
              "and is dead-lettered saying why")
        with open(env.config, "w") as f:
            json.dump(full, f)
        w.send_signal(signal.SIGHUP)
        wait_for("the reload", lambda: env.logs("worker").count("configuration reloaded") >= 2)
        r = subprocess.run([FHIRX, "replay", "--config", env.config, "--error-class",
                            "unknown_tenant"], capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, "fhirx replay: " + (r.stdout + r.stderr).strip()[-200:])
        final = wait_for("attempt 2's status",
                         lambda: next((s for s in statuses(env, "bulk-rm") if s["attempt"] == 2), None))
        check(final["state"] == "completed", "with the tenant back, the replayed export completes")
        keys = {m.key.split("/", 1)[1] for m in results_of(env, "bulk-rm", attempt=2)}
        check(keys == expected(env), "with exactly the Group's resources")
        validate(env, check, 2)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


SCENARIOS = {"export": scenario_export, "resume": scenario_resume,
             "resume_download": scenario_resume_download, "expire": scenario_expire,
             "refused": scenario_refused, "removed": scenario_removed}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))

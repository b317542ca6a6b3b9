#!/usr/bin/python3
"""Where a worker may go with and without a tenant's token (issue 13, docs/architecture.md
"Where a token may go", docs/operations.md "Refused URLs").

  test_pinning.py SCENARIO    (traversal | private_storage)

traversal:       next links whose path a decoding server or proxy would read as another
                 tenant's ({base}/%2e%2e/other/..., .%2E, ..%2f, ..%5c, a raw backslash,
                 %252e double encoding; simulator fault next_segment) are refused before any
                 request: each job gets one foreign_reference failure naming the next link,
                 and the simulator never sees a request outside the tenant's path.
private_storage: a production tenant (the simulator serving HTTPS with a private CA) whose
                 export files are redirected (307) to storage on 127.0.0.1: downloaded without
                 the token, so only public addresses are allowed: the export fails as
                 foreign_reference with the address, the reason and the option to set, and the
                 storage server sees no request. With tenants[].allow_private_storage the
                 same export completes."""
import os
import shutil
import sys
import tempfile

from e2e import SANDBOX, Check, Env, log
from test_claims import make_pki

# (spelling, what the failure says is wrong with it)
SEGMENTS = [("%2e%2e/other", "dot segment"), ("%2E%2E/other", "dot segment"),
            (".%2e/other", "dot segment"), ("..%2fother", "'/'"), ("..%5Cother", "backslash"),
            ("..\\other", "backslash"), ("%252e%252e/other", "dot segment")]


def failures_of(env, job_id):
    return [f for f in (m.json() for m in env.read("fhirx.failures")) if f.get("job_id") == job_id]


def status_of(env, job_id):
    return {m.key: m.json() for m in env.wait_statuses([job_id])}[job_id]


def scenario_traversal(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 10,
                        "per_patient": {"Observation": 300}}])
    try:
        w = env.start_worker()
        for i, (seg, why) in enumerate(SEGMENTS):
            # The fault applies to every Observation search: one job per spelling.
            env.sim_delete("/_sim/tenants/%s/faults" % SANDBOX)
            env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                         {"target": "fhir", "path": "Observation", "next_segment": seg,
                          "count": -1})
            before = env.sim_get("/_sim/counters")["tenants"][SANDBOX]
            job = {"job_id": "trav-%d" % i, "tenant": SANDBOX,
                   "patients": ["%d" % (20000001 + i)], "resources": ["Observation"]}
            env.enqueue([job])
            st = status_of(env, job["job_id"])
            after = env.sim_get("/_sim/counters")["tenants"][SANDBOX]
            fl = failures_of(env, job["job_id"])
            check(len(fl) == 1 and fl[0]["error_class"] == "foreign_reference" and
                  "next page link" in fl[0]["message"] and why in fl[0]["message"] and
                  not fl[0]["transient"],
                  "next link with '%s': one permanent foreign_reference failure naming the next "
                  "link and what is wrong with it: %s"
                  % (seg, [(f["error_class"], f["message"]) for f in fl]))
            check(st["state"] == "partial", "the job is partial (the first page is published): %s"
                  % st["state"])
            # The first page only: the refused link was never requested.
            sent = after["fhir_requests"] - before["fhir_requests"]
            check(sent == 1, "the simulator saw exactly the first page's request (%d)" % sent)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def scenario_private_storage(check):
    d = tempfile.mkdtemp(prefix="fhirx-pin-")
    try:
        make_pki(d)
        groups = [{"id": "cohort-p", "first": 1, "count": 4}]
        tenant = {"id": SANDBOX, "sandbox": True, "patients": 10, "groups": groups,
                  "export": {"duration_ms": 200, "retry_after_s": 1},
                  "fhirx": {"environment": "production"}}
        bulk = {"bulk": {"poll_min_ms": 200, "poll_max_ms": 1000}}
        job = {"kind": "bulk", "job_id": "pin-1", "tenant": SANDBOX, "group": "cohort-p",
               "resources": ["Patient", "Condition"]}

        env = Env(tenants=[tenant], tls=d, worker_extra=bulk)
        try:
            check(env.sim_url.startswith("https://localhost:"),
                  "the simulator serves HTTPS: the tenant is production (%s)" % env.sim_url)
            w = env.start_worker()
            env.enqueue([job])
            st = status_of(env, "pin-1")
            fl = failures_of(env, "pin-1")
            refused = [f for f in fl if f["error_class"] == "foreign_reference"]
            check(st["state"] == "failed" and refused and not refused[0]["transient"],
                  "the export fails with a permanent foreign_reference failure: %s %s"
                  % (st["state"], [(f["error_class"], f["message"][:300]) for f in fl]))
            msg = refused[0]["message"] if refused else ""
            check("127.0.0.1 (loopback)" in msg and "production tenant" in msg and
                  "tenants[].allow_private_storage" in msg,
                  "the failure names the address, the reason and the option: %s" % msg)
            storage = env.sim_get("/_sim/counters")["storage"]
            check(storage["requests"] == 0, "the storage server saw no request (%d)"
                  % storage["requests"])
            check(env.stop(w) == 0, "worker exits 0")
        finally:
            env.close()

        allowed = dict(tenant, fhirx={"environment": "production",
                                      "allow_private_storage": True})
        env = Env(tenants=[allowed], tls=d, worker_extra=bulk)
        try:
            w = env.start_worker()
            env.enqueue([job])
            st = status_of(env, "pin-1")
            storage = env.sim_get("/_sim/counters")["storage"]
            check(st["state"] == "completed" and st["resources"] > 0 and
                  storage["requests"] > 0 and storage["authorization_headers"] == 0,
                  "with tenants[].allow_private_storage the export completes from storage on "
                  "127.0.0.1, without the token (%s, %d resources, %d storage requests)"
                  % (st["state"], st.get("resources", 0), storage["requests"]))
            check(env.stop(w) == 0, "worker exits 0")
        finally:
            env.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    name = sys.argv[1]
    {"traversal": scenario_traversal, "private_storage": scenario_private_storage}[name](
        Check(name))
    log("scenario %s passed" % name)
